"""A sweep's results in memory: the variables, their shapes and dtypes, the metadata recorded
with them (format, spec, versions, the backend's probe, devices) and the N-D ``xarray.Dataset``
that :func:`stabkit.sweep` and :func:`stabkit.load` return."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from stabkit.sweeps.spec import (
    _AXES,
    _INT_VARS,
    CONFIG_VARS,
    LAYER_VARS,
    SweepSpec,
    _layer_slots,
    _spec_json,
)

_FORMAT = 2  # on-disk layout version (1: progress.json, no marker, no checksums)
_VARS = (*LAYER_VARS, *CONFIG_VARS)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("stabkit", "jax", "jaxlib", "numpy", "xarray", "zarr"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


def _probe_json() -> dict[str, Any]:
    from stabkit.precision import probe

    p = probe()
    return {
        "device": p.device,
        "platform": p.platform,
        "dtypes": {k: dict(v._asdict()) for k, v in p.dtypes.items()},
        "unsupported": dict(p.unsupported),
    }


def _meta(spec: SweepSpec, devices: Sequence[jax.Device]) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "spec": spec.to_dict(),
        "versions": _versions(),
        "probe": _probe_json(),
        "devices": [str(d) for d in devices],
    }


def _stat_dtype(spec_dtypes: Sequence[str]) -> np.dtype:
    return np.dtype(np.float64 if "float64" in spec_dtypes else np.float32)


def _var_shape(name: str, n: int, n_layers: int) -> tuple[int, ...]:
    return (n, n_layers) if name in LAYER_VARS else (n,)


def _var_dtype(name: str, spec_dtypes: Sequence[str]) -> np.dtype:
    return np.dtype(np.int32) if name in _INT_VARS else _stat_dtype(spec_dtypes)


def _config_bytes(spec_dtypes: Sequence[str], n_layers: int) -> int:
    """Bytes of results one config holds, every variable together."""
    return sum(
        _var_dtype(k, spec_dtypes).itemsize * (n_layers if k in LAYER_VARS else 1) for k in _VARS
    )


def _grid(spec: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """The grid's shape and the layer slots (:attr:`SweepSpec.n_layers`) of a stored spec.

    A store keeps :meth:`SweepSpec.to_dict`'s dict, which is read without rebuilding the
    :class:`SweepSpec`: a sweep of activation callables stores their names only."""
    return tuple(len(spec[a]) for a in _AXES), _layer_slots(max(spec["depth"]))


def _dataset(meta: dict[str, Any], flat: dict[str, np.ndarray]):
    """The N-D dataset from the flat (config-major) arrays, as sweep and load return it."""
    import xarray as xr

    d = meta["spec"]
    shape, n_layers = _grid(d)
    coords = {a: list(d[a]) for a in _AXES}
    coords["layer"] = np.arange(n_layers)
    data = {}
    for name, desc in {**LAYER_VARS, **CONFIG_VARS}.items():
        a = flat[name]
        dims = (*_AXES, "layer") if name in LAYER_VARS else _AXES
        data[name] = (dims, a.reshape(shape + a.shape[1:]), {"description": desc})
    attrs = {"spec": _spec_json(d)}  # read back by SweepSpec.from_dataset
    attrs.update({k: json.dumps(meta[k], sort_keys=True) for k in ("versions", "probe")})
    attrs["devices"] = json.dumps(meta["devices"])
    attrs["stabkit_format"] = meta["format"]
    return xr.Dataset(data, coords=coords, attrs=attrs)
