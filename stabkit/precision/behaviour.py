"""What a device really does with subnormals, overflow and ``0 * inf``, measured under ``jit``."""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from stabkit.precision.formats import _FORMATS, _UINT, _classify, _Format, _format, _np_dtype, _x64
from stabkit.precision.ranges import _limits

_CLASSES = ("normal", "subnormal", "zero", "inf", "nan")


def _class_of(value: np.ndarray, fmt: _Format) -> str:
    """The class name of a single host value, read from its bits like :func:`census` does."""
    bits = np.asarray(value).reshape(()).view(_UINT[fmt.bits])
    masks = _classify(bits, fmt)
    return _CLASSES[[bool(m) for m in masks].index(True)]


class Behaviour(NamedTuple):
    """What one device does with one dtype, measured under ``jit`` (see :func:`probe`)."""

    dtype: str
    #: ``tiny * 0.5`` gives the subnormal ``tiny/2`` (False: the result is flushed to 0).
    keeps_subnormal_results: bool
    #: ``smallest_subnormal + tiny == tiny``: subnormal inputs are read as zero.
    subnormal_inputs_as_zero: bool
    #: ``smallest_subnormal > 0`` is False: comparisons see subnormals as zero.
    subnormal_compares_as_zero: bool
    #: class of ``max * 2``: ``"inf"`` for IEEE formats, ``"nan"`` for formats without inf.
    overflow: str
    #: class of ``0 * inf`` (``None`` for formats without inf).
    zero_times_inf: str | None
    #: class of ``inf - inf`` (``None`` for formats without inf).
    inf_minus_inf: str | None
    #: class of ``smallest_subnormal * 0.25``: ``"zero"`` when underflow rounds to 0.
    underflow: str
    #: ``a * b - c`` is rounded once (fused multiply-add, or computed in a wider type), not twice.
    multiply_add_rounds_once: bool

    @property
    def flushes(self) -> bool:
        """True where subnormal results are flushed to zero (the backend is not IEEE here)."""
        return not self.keeps_subnormal_results


@dataclasses.dataclass(frozen=True)
class Probe:
    """The measured behaviour of one device: ``probe()["float32"]`` is a :class:`Behaviour`."""

    device: str
    platform: str
    dtypes: Mapping[str, Behaviour]  #: by dtype name, for every dtype the device computes with
    unsupported: Mapping[str, str]  #: dtype name -> the error the device raised

    def __getitem__(self, dtype: Any) -> Behaviour:
        name = _format(dtype).name
        if name not in self.dtypes:
            raise ValueError(
                f"{name} could not be measured on {self.device}: {self.unsupported.get(name)}"
            )
        return self.dtypes[name]


@jax.jit
def _probe_kernel(tiny, half, quarter, sub, big, two, zero, inf, a, b, c):
    # Every operand is a jit argument, so XLA cannot constant-fold the operations measured here.
    # inf is passed in rather than made by overflow: XLA:CPU contracts max*2 - max*3 into one
    # fused multiply-add, whose exact intermediate never overflows (inf - 3*max = inf, not NaN).
    return {
        "subnormal_result": tiny * half,
        "subnormal_input": sub + tiny,
        "subnormal_compare": sub > zero,
        "overflow": big * two,
        "zero_times_inf": zero * inf,
        "inf_minus_inf": inf - inf,
        "underflow": sub * quarter,
        "multiply_add": a * b - c,
    }


def _measure(fmt: _Format, device: jax.Device) -> Behaviour:
    dt = _np_dtype(fmt)
    lim = _limits(fmt.name)
    one_eps = 1.0 + lim.eps
    # (1 + eps)**2 - (1 + 2 eps) is eps**2 exactly; rounding the product first gives 0.
    values = (lim.tiny, 0.5, 0.25, lim.smallest_subnormal, lim.max, 2.0, 0.0)
    values += (math.inf if fmt.has_inf else math.nan, one_eps, one_eps, 1.0 + 2 * lim.eps)
    with _x64(fmt):
        args = [jax.device_put(np.asarray(v, dt), device) for v in values]
        out = {k: np.asarray(v) for k, v in _probe_kernel(*args).items()}
    cls = {k: _class_of(v, fmt) for k, v in out.items() if k != "subnormal_compare"}
    return Behaviour(
        dtype=fmt.name,
        keeps_subnormal_results=cls["subnormal_result"] == "subnormal",
        subnormal_inputs_as_zero=bool(out["subnormal_input"].astype(np.float64) == lim.tiny),
        subnormal_compares_as_zero=not bool(out["subnormal_compare"]),
        overflow=cls["overflow"],
        zero_times_inf=cls["zero_times_inf"] if fmt.has_inf else None,
        inf_minus_inf=cls["inf_minus_inf"] if fmt.has_inf else None,
        underflow=cls["underflow"],
        multiply_add_rounds_once=cls["multiply_add"] != "zero",
    )


_PROBES: dict[jax.Device, Probe] = {}


def probe(device: jax.Device | None = None) -> Probe:
    """Measure what ``device`` does with subnormals, overflow and ``0 * inf``, for every dtype.

    Each operation runs on the device under ``jit`` with its operands passed as arguments (so
    nothing is constant-folded at compile time), and its result is classified from its bits on the
    host. The result is cached per device: the first call compiles one small kernel per dtype.

    Args:
        device: a ``jax.Device``; ``None`` (default) means ``jax.devices()[0]``.

    Returns:
        A :class:`Probe`; ``probe()[dtype]`` is the :class:`Behaviour` of that dtype. A dtype the
        device cannot compute with is listed in ``Probe.unsupported`` with the error it raised.

    Raises:
        TypeError: ``device`` is not a ``jax.Device``.

    Examples:
        >>> p = probe()
        >>> p["float16"].keeps_subnormal_results  # XLA:CPU and GPUs keep float16 subnormals
        True
        >>> p["float32"].overflow, p["float32"].zero_times_inf, p["float32"].inf_minus_inf
        ('inf', 'nan', 'nan')
        >>> p["float8_e4m3fn"].overflow  # no inf in this format
        'nan'
    """
    if device is None:
        device = jax.devices()[0]
    if not isinstance(device, jax.Device):
        raise TypeError(f"device must be a jax.Device or None, got {type(device).__name__}")
    if device not in _PROBES:
        measured, unsupported = {}, {}
        for name, fmt in _FORMATS.items():
            try:
                measured[name] = _measure(fmt, device)
            except Exception as err:  # a device without this dtype: recorded, not fatal
                unsupported[name] = f"{type(err).__name__}: {err}".splitlines()[0]
        _PROBES[device] = Probe(
            device=str(device),
            platform=device.platform,
            dtypes=types.MappingProxyType(measured),
            unsupported=types.MappingProxyType(unsupported),
        )
    return _PROBES[device]
