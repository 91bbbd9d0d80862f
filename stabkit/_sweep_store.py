"""The sweep's storage: the in-memory dataset, the streamed zarr store (resume) and :func:`load`.

A store is flat config-major zarr arrays, one per variable, plus JSON attributes (the spec,
versions, the backend probe, the devices) and ``progress.json``, replaced atomically after each
write, which says how many configs are done. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from stabkit._sweep_spec import _AXES, _INT_VARS, CONFIG_VARS, LAYER_VARS, SweepSpec

_FORMAT = 1  # on-disk layout version


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


def _meta(spec: SweepSpec) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "spec": spec.to_dict(),
        "versions": _versions(),
        "probe": _probe_json(),
        "devices": [str(d) for d in jax.devices()],
    }


def _stat_dtype(spec_dtypes: Sequence[str]) -> np.dtype:
    return np.dtype(np.float64 if "float64" in spec_dtypes else np.float32)


def _var_shape(name: str, n: int, n_layers: int) -> tuple[int, ...]:
    return (n, n_layers) if name in LAYER_VARS else (n,)


def _var_dtype(name: str, spec_dtypes: Sequence[str]) -> np.dtype:
    return np.dtype(np.int32) if name in _INT_VARS else _stat_dtype(spec_dtypes)


def _dataset(meta: dict[str, Any], flat: dict[str, np.ndarray]):
    """The N-D dataset from the flat (config-major) arrays, as sweep and load return it."""
    import xarray as xr

    d = meta["spec"]
    shape = tuple(len(d[a]) for a in _AXES)
    n_layers = max(d["depth"]) + 2
    coords = {a: list(d[a]) for a in _AXES}
    coords["layer"] = np.arange(n_layers)
    data = {}
    for name, desc in {**LAYER_VARS, **CONFIG_VARS}.items():
        a = flat[name]
        dims = (*_AXES, "layer") if name in LAYER_VARS else _AXES
        data[name] = (dims, a.reshape(shape + a.shape[1:]), {"description": desc})
    attrs = {k: json.dumps(meta[k], sort_keys=True) for k in ("spec", "versions", "probe")}
    attrs["devices"] = json.dumps(meta["devices"])
    attrs["stabkit_format"] = meta["format"]
    return xr.Dataset(data, coords=coords, attrs=attrs)


class _Store:
    """The zarr store of a streamed sweep: flat config-major arrays and an atomic progress file."""

    def __init__(self, path, spec: SweepSpec, meta: dict, resume: bool, write: bool, rows: int):
        """``rows``: configs per zarr chunk, and per write (results are buffered up to a chunk
        boundary: one file per variable and chunk, written whole, whatever the kernel chunk)."""
        import zarr

        self.path, self.write, self.rows, n = path, write, rows, spec.n_configs
        self.buffer: list[tuple[int, dict[str, np.ndarray]]] = []
        progress = path / "progress.json"
        if path.exists() and resume and progress.exists():
            self.group = zarr.open_group(str(path), mode="r+" if write else "r")
            old = dict(self.group.attrs["stabkit"])
            if old["spec"] != meta["spec"]:
                raise ValueError(
                    f"{path} holds a different sweep ({old['spec']}); cannot resume {meta['spec']}"
                )
            self.done = json.loads(progress.read_text())["done"]
            return
        if path.exists() and any(path.iterdir()) and not resume:
            raise FileExistsError(f"{path} exists; pass resume=True to continue it, or remove it")
        self.done = 0
        if not write:
            return
        self.group = zarr.open_group(str(path), mode="w")
        self.group.attrs["stabkit"] = meta
        for name in {**LAYER_VARS, **CONFIG_VARS}:
            shape = _var_shape(name, n, spec.n_layers)
            dt = _var_dtype(name, spec.dtype)
            self.group.create_array(
                name,
                shape=shape,
                chunks=(min(rows, n), *shape[1:]),
                dtype=dt,
                fill_value=-1 if dt.kind == "i" else np.nan,
            )
        self._mark(0)

    def _mark(self, done: int) -> None:
        tmp = self.path / "progress.json.tmp"
        tmp.write_text(json.dumps({"done": done}))
        os.replace(tmp, self.path / "progress.json")  # atomic: the old or the new, never half
        self.done = done

    def add(self, start: int, results: dict[str, np.ndarray]) -> None:
        """Buffer a kernel chunk's results; write every zarr chunk they complete."""
        if self.buffer and start != self._end():
            self.flush()
        self.buffer.append((start, results))
        first = self.buffer[0][0]
        boundary = (first // self.rows + 1) * self.rows
        if self._end() >= boundary:
            merged = self._merged()
            cut = boundary - first + (self._end() - boundary) // self.rows * self.rows
            self.put(first, {k: v[:cut] for k, v in merged.items()})
            rest = {k: v[cut:] for k, v in merged.items()}
            self.buffer = [(first + cut, rest)] if len(next(iter(rest.values()))) else []

    def flush(self) -> None:
        """Write whatever is buffered."""
        if self.buffer:
            self.put(self.buffer[0][0], self._merged())
            self.buffer = []

    def _end(self) -> int:
        start, results = self.buffer[-1]
        return start + len(next(iter(results.values())))

    def _merged(self) -> dict[str, np.ndarray]:
        if len(self.buffer) == 1:
            return self.buffer[0][1]
        return {k: np.concatenate([r[k] for _, r in self.buffer]) for k in self.buffer[0][1]}

    def put(self, start: int, results: dict[str, np.ndarray]) -> None:
        """Write rows ``start...`` of every variable, then mark them done (atomically)."""
        if self.write:
            stop = start + len(next(iter(results.values())))
            for name, a in results.items():
                self.group[name][start:stop] = a
            self._mark(stop)


def load(path: str | os.PathLike):
    """Read a sweep written by ``sweep(spec, out=path)`` back as the same ``xarray.Dataset``.

    Reads zarr arrays and JSON attributes only (never pickle).

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: the sweep is incomplete (rerun it with ``resume=True``) or of an unknown format.
    """
    import zarr

    path = pathlib.Path(path)
    if not (path / "progress.json").exists():
        raise FileNotFoundError(f"no stabkit sweep at {path}")
    group = zarr.open_group(str(path), mode="r")
    meta = dict(group.attrs["stabkit"])
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')}, this stabkit reads {_FORMAT}")
    n = math.prod(len(meta["spec"][a]) for a in _AXES)
    done = json.loads((path / "progress.json").read_text())["done"]
    if done < n:
        raise ValueError(
            f"{path} is incomplete ({done} of {n} configs); rerun sweep(..., resume=True)"
        )
    flat = {k: np.asarray(group[k][:]) for k in {**LAYER_VARS, **CONFIG_VARS}}
    return _dataset(meta, flat)
