"""Floating-point overflow and underflow: limits, what the backend really does, depth of a chain.

The founding note says in words that a huge value rounds to ``inf`` (overflow, after which further
arithmetic such as ``inf - inf`` or ``0 * inf`` gives NaN) and that a tiny value rounds to 0
(underflow). This module puts numbers on it:

* :func:`limits`: the range of each dtype, with the thresholds of ``exp``.
* :func:`probe`: what the device really does with subnormals, overflow and ``0 * inf``, measured
  under ``jit`` (XLA on CPU flushes float32, bfloat16 and float64 subnormals to zero; float16 and
  the float8 formats keep them).
* :func:`overflow_depth`, :func:`underflow_depth`: the exact step at which ``x0 * scale**k``,
  rounded after every multiplication, leaves the range, beside the closed-form prediction.
* :func:`chain`: the same chain run on the device, step by step.
* :func:`census`: counts of normal, subnormal, zero, inf and NaN entries, by bit pattern, under
  ``jit`` and ``vmap``.

Supported dtypes: ``float16``, ``bfloat16``, ``float32``, ``float64`` and the ``ml_dtypes`` float8
formats that XLA computes with (``float8_e4m3fn``, ``float8_e5m2``, ``float8_e4m3``,
``float8_e3m4``, ``float8_e4m3fnuz``, ``float8_e5m2fnuz``, ``float8_e4m3b11fnuz``). The ``fn``
formats have no inf and one NaN pattern per sign, so overflow gives NaN; the ``fnuz`` formats have
no inf, no negative zero, and their only NaN is the bit pattern of "-0" (``0x80``). float64 work
runs inside ``jax.enable_x64(True)``; the global flag is never changed. ``float4_e2m1fn`` (no inf,
no NaN: nothing to detect) and ``float8_e8m0fnu`` (a scale format with no zero) are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import decimal
import functools
import json
import math
import types
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import (
    bounded_int,
    check_memory,
    finite_float,
    floating_array,
    format_bytes,
    is_floating_dtype,
    memory_limit,
    normalize_axis,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "Behaviour",
    "Census",
    "Depth",
    "Limits",
    "Probe",
    "census",
    "chain",
    "limits",
    "overflow_depth",
    "probe",
    "underflow_depth",
]


@dataclasses.dataclass(frozen=True)
class _Format:
    """How a binary floating-point format spends its bits, and which special values it has."""

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    # "ieee": all-ones exponent is inf (mantissa 0) or NaN; "fn": no inf, all-ones exponent and
    # mantissa is NaN; "fnuz": no inf and no -0, the sign-bit-only pattern is the one NaN.
    kind: str

    @property
    def has_inf(self) -> bool:
        return self.kind == "ieee"

    @property
    def has_negative_zero(self) -> bool:
        return self.kind != "fnuz"


# Bit layouts are checked against ml_dtypes.finfo in the tests; the kind is the format's definition
# (the suffixes of the ml_dtypes names: fn = finite, uz = unsigned zero).
_FORMATS: dict[str, _Format] = {
    f.name: f
    for f in (
        _Format("float16", 16, 5, 10, "ieee"),
        _Format("bfloat16", 16, 8, 7, "ieee"),
        _Format("float32", 32, 8, 23, "ieee"),
        _Format("float64", 64, 11, 52, "ieee"),
        _Format("float8_e4m3fn", 8, 4, 3, "fn"),
        _Format("float8_e5m2", 8, 5, 2, "ieee"),
        _Format("float8_e4m3", 8, 4, 3, "ieee"),
        _Format("float8_e3m4", 8, 3, 4, "ieee"),
        _Format("float8_e4m3fnuz", 8, 4, 3, "fnuz"),
        _Format("float8_e5m2fnuz", 8, 5, 2, "fnuz"),
        _Format("float8_e4m3b11fnuz", 8, 4, 3, "fnuz"),
    )
}

#: Names of the dtypes every function in this module accepts, in a fixed order.
SUPPORTED_DTYPES: tuple[str, ...] = tuple(_FORMATS)

_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def _format(dtype: Any, name: str = "dtype") -> _Format:
    """The format of ``dtype`` (a dtype object, scalar type or name); raises naming it otherwise."""
    if dtype is None:  # np.dtype(None) is float64: a missing dtype must not pass as one
        raise TypeError(
            f"{name} must be a dtype, got None; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    if isinstance(dtype, str) and hasattr(ml_dtypes, dtype):  # NumPy does not know "bfloat16"
        dtype = getattr(ml_dtypes, dtype)
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        # A string that names no dtype is a bad value; any other object is the wrong type.
        error = ValueError if isinstance(dtype, str) else TypeError
        raise error(
            f"{name}={dtype!r} is not a dtype; supported: {', '.join(SUPPORTED_DTYPES)}"
        ) from None
    if not is_floating_dtype(dt):
        raise TypeError(
            f"{name} must be a floating-point dtype, got {dt.name}; "
            f"supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    fmt = _FORMATS.get(dt.name)
    if fmt is None:
        raise ValueError(
            f"{name}={dt.name} is not supported; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    return fmt


def _np_dtype(fmt: _Format) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, fmt.name, None) or fmt.name)


def _classify(bits: Any, fmt: _Format) -> tuple[Any, Any, Any, Any, Any]:
    """Boolean masks (normal, subnormal, zero, inf, nan) of raw bit patterns ``bits``.

    Works on NumPy and JAX unsigned integer arrays alike (only ``&``, ``>>``, ``==``, ``~``), so
    the probe can classify on the host exactly what :func:`census` classifies on the device.
    """
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    exp_mask = (1 << e) - 1
    man_mask = (1 << m) - 1
    exponent = (bits >> m) & exp_mask
    mantissa = bits & man_mask
    exp_zero = exponent == 0
    man_zero = mantissa == 0
    if fmt.kind == "ieee":
        exp_ones = exponent == exp_mask
        inf = exp_ones & man_zero
        nan = exp_ones & ~man_zero
        normal = ~exp_zero & ~exp_ones
    elif fmt.kind == "fn":
        nan = (exponent == exp_mask) & (mantissa == man_mask)
        inf = nan & False
        normal = ~exp_zero & ~nan
    else:  # fnuz: the sign bit alone, the pattern of "-0", is the only NaN
        nan = bits == (1 << (fmt.bits - 1))
        inf = nan & False
        normal = ~exp_zero
    zero = exp_zero & man_zero & ~nan
    subnormal = exp_zero & ~man_zero
    return normal, subnormal, zero, inf, nan


class Census(NamedTuple):
    """How many entries of an array fall into each floating-point class (int32 counts).

    The five counts sum to the number of entries counted.
    """

    normal: jax.Array
    subnormal: jax.Array
    zero: jax.Array
    inf: jax.Array
    nan: jax.Array


def census(x: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Census:
    """Count normal, subnormal, zero, inf and NaN entries of ``x``, by bit pattern.

    The class of each entry is read from its bits (``lax.bitcast_convert_type`` to the unsigned
    integer of the same width), never from comparisons: XLA on CPU reads float32, bfloat16 and
    float64 subnormals as zero in comparisons (denormals-are-zero), so ``0 < |x| < tiny`` would
    miss exactly the values this function exists to find. Pure and shape-static: use it under
    ``jit``, ``vmap`` and inside ``lax.scan``.

    Args:
        x: array of a supported floating dtype (see :data:`SUPPORTED_DTYPES`), any shape.
        axis: axis or tuple of axes to count over; ``None`` (default) counts over all of them.

    Returns:
        A :class:`Census` of int32 arrays of shape ``x.shape`` without ``axis``; ``inf`` counts
        both signs, ``zero`` counts +0 and -0.

    Raises:
        TypeError: ``x`` is not a floating-point array.
        ValueError: the dtype is not supported, or an axis is out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([1.0, 1e-40, 0.0, -jnp.inf, jnp.nan, 3.0], jnp.float32)
        >>> c = census(x)
        >>> [int(v) for v in c]
        [2, 1, 1, 1, 1]
        >>> c._fields
        ('normal', 'subnormal', 'zero', 'inf', 'nan')
        >>> census(jnp.ones((2, 3), jnp.bfloat16), axis=1).normal
        Array([3, 3], dtype=int32)
    """
    x = floating_array(x)
    fmt = _format(x.dtype, "x.dtype")
    if axis is not None:
        axes = axis if isinstance(axis, tuple) else (axis,)
        axis = tuple(normalize_axis(a, x.ndim) for a in axes)
        if len(set(axis)) != len(axis):
            raise ValueError(f"axis={axes} repeats an axis")
    bits = jax.lax.bitcast_convert_type(x, _UINT[fmt.bits])
    masks = _classify(bits, fmt)
    return Census(*(jnp.sum(m, axis=axis, dtype=jnp.int32) for m in masks))


def _x64(fmt: _Format) -> contextlib.AbstractContextManager:
    """float64 exists in JAX only inside ``enable_x64``; everything else runs as it is."""
    return jax.enable_x64(True) if fmt.bits == 64 else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# limits


class Limits(NamedTuple):
    """The range of a floating-point format (all values exact Python floats).

    ``exp_max``, ``exp_min`` and ``exp_min_normal`` are values *of the dtype*, assuming ``exp`` is
    correctly rounded (round to nearest, ties to even) into the dtype.
    """

    name: str  #: canonical dtype name, e.g. ``"bfloat16"``
    bits: int  #: storage width
    exponent_bits: int
    mantissa_bits: int  #: stored fraction bits (precision is ``mantissa_bits + 1``)
    max: float  #: largest finite value
    tiny: float  #: smallest positive normal value
    smallest_subnormal: float
    eps: float  #: spacing of the dtype just above 1.0
    has_inf: bool
    has_nan: bool
    has_negative_zero: bool
    exp_max: float  #: largest x whose ``exp(x)`` is finite (not inf, or NaN without inf)
    exp_min: float  #: smallest x whose ``exp(x)`` is not 0, subnormal results kept
    exp_min_normal: float  #: smallest x with ``exp(x) >= tiny``: not 0 when subnormals flush


def _neighbour(v: float, dt: np.dtype, up: bool) -> float:
    # Step toward +-max, not +-inf: the formats without inf would read inf as NaN.
    big = float(ml_dtypes.finfo(dt).max)
    target = big if up else -big
    if v == target:
        return math.inf if up else -math.inf
    a = np.asarray(v, dt)
    return float(np.nextafter(a, np.asarray(target, dt)).astype(np.float64))


def _round_into(d: decimal.Decimal, dt: np.dtype, up: bool) -> float:
    """The smallest dtype value >= ``d`` (``up``) or the largest <= ``d``, decided exactly."""
    v = float(np.asarray(float(d)).astype(dt).astype(np.float64))
    if up:
        while decimal.Decimal(v) < d:
            v = _neighbour(v, dt, up=True)
        while decimal.Decimal(w := _neighbour(v, dt, up=False)) >= d:
            v = w
    else:
        while decimal.Decimal(v) > d:
            v = _neighbour(v, dt, up=False)
        while decimal.Decimal(w := _neighbour(v, dt, up=True)) <= d:
            v = w
    return v


@functools.cache
def _limits(name: str) -> Limits:
    fmt = _FORMATS[name]
    dt = _np_dtype(fmt)
    fi = ml_dtypes.finfo(dt)
    big, tiny, sub = float(fi.max), float(fi.tiny), float(fi.smallest_subnormal)
    with decimal.localcontext() as ctx:
        ctx.prec = 60  # ln to 60 digits: far finer than the float64 spacing near 745
        D = decimal.Decimal
        # A value overflows once it reaches max + ulp(max)/2 (the midpoint to the next step of the
        # grid); exp(x) for x != 0 is never exactly that midpoint, so ties do not arise.
        half_ulp = D(2) ** (math.frexp(big)[1] - 1 - fmt.mantissa_bits) / 2
        exp_max = _round_into((D(big) + half_ulp).ln(), dt, up=False)
        # A value rounds to 0 at or below half the smallest subnormal (the tie goes to even, 0).
        # ln of a dyadic rational other than 1 is irrational, so no dtype value sits on the tie.
        exp_min = _round_into((D(sub) / 2).ln(), dt, up=True)
        exp_min_normal = _round_into(D(tiny).ln(), dt, up=True)
    return Limits(
        name=name,
        bits=fmt.bits,
        exponent_bits=fmt.exponent_bits,
        mantissa_bits=fmt.mantissa_bits,
        max=big,
        tiny=tiny,
        smallest_subnormal=sub,
        eps=float(fi.eps),
        has_inf=fmt.has_inf,
        has_nan=True,
        has_negative_zero=fmt.has_negative_zero,
        exp_max=exp_max,
        exp_min=exp_min,
        exp_min_normal=exp_min_normal,
    )


def limits(dtype: Any) -> Limits:
    """The range of ``dtype``: max, tiny, smallest subnormal, eps, special values, exp thresholds.

    Args:
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`), as a name (``"bfloat16"``), a
            NumPy/JAX dtype or a scalar type (``jnp.float16``, ``ml_dtypes.float8_e4m3fn``).

    Returns:
        A :class:`Limits` record. The exp thresholds are exact: ``exp_max`` is the largest value of
        the dtype whose correctly rounded ``exp`` is finite (``exp(x) < max + ulp(max)/2``);
        ``exp_min`` the smallest whose ``exp`` does not round to 0
        (``exp(x) > smallest_subnormal/2``); ``exp_min_normal`` the smallest with
        ``exp(x) >= tiny``, which is what survives when subnormals are flushed to zero.

    Raises:
        ValueError: ``dtype`` is unknown or unsupported; the message lists the supported names.
        TypeError: ``dtype`` is not a floating-point dtype (``int32``, ``bool``).

    Examples:
        >>> lim = limits("float16")
        >>> lim.max, lim.tiny, lim.smallest_subnormal, lim.eps
        (65504.0, 6.103515625e-05, 5.960464477539063e-08, 0.0009765625)
        >>> lim.exp_max  # exp(11.0859375) = 65376.5 is finite; exp(11.09375) rounds to inf
        11.0859375
        >>> limits(jnp.float32).exp_max, limits("float64").exp_max
        (88.72283172607422, 709.782712893384)
        >>> limits("float8_e4m3fn").has_inf, limits("float8_e4m3fn").max
        (False, 448.0)
    """
    return _limits(_format(dtype).name)


# ----------------------------------------------------------------------------------------------
# probe

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


# ----------------------------------------------------------------------------------------------
# overflow and underflow depth of x0 * scale**k


class Depth(NamedTuple):
    """When the chain ``x_k = round(x_{k-1} * scale)`` leaves the range, simulated and predicted."""

    kind: str  #: ``"overflow"`` (first non-finite x_k) or ``"underflow"`` (first x_k == 0)
    dtype: str
    #: exact first step k (host simulation, rounding after every multiply); None if the chain
    #: reaches a fixed point first (possible only among subnormals, whose spacing is absolute)
    step: int | None
    #: closed form: the first integer k with ``|x0| |scale|^k`` beyond the threshold (``max`` for
    #: overflow; ``smallest_subnormal``, or ``tiny`` when flushing, for underflow)
    predicted: int
    k: float  #: the real solution ``log(threshold / |x0|) / log|scale|``
    value: float  #: x_step (inf, -inf, NaN or 0.0); the fixed point when ``step`` is None
    scale: float  #: scale rounded to the dtype: what the chain multiplies by
    x0: float  #: x0 rounded to the dtype
    flush: bool  #: whether subnormals were flushed to zero (inputs and results)


def _chain_args(scale: Any, x0: Any, fmt: _Format) -> tuple[float, float]:
    dt = _np_dtype(fmt)
    out = []
    for value, name in ((scale, "scale"), (x0, "x0")):
        v = finite_float(value, name, nonzero=True)
        with np.errstate(over="ignore"):
            r = float(np.asarray(v).astype(dt).astype(np.float64))
        if r == 0 or not math.isfinite(r):
            raise ValueError(
                f"{name}={v} rounds to {r} in {fmt.name}; it must be finite and non-zero"
            )
        out.append(r)
    return out[0], out[1]


def _check_flush(flush: Any) -> bool | None:
    if flush is None or isinstance(flush, (bool, np.bool_)):
        return None if flush is None else bool(flush)
    raise TypeError(f"flush must be True, False or None, got {type(flush).__name__} {flush!r}")


def _resolve_flush(flush: bool | None, fmt: _Format) -> bool:
    flush = _check_flush(flush)
    return probe()[fmt.name].flushes if flush is None else flush


#: The most steps :func:`overflow_depth` / :func:`underflow_depth` simulate on the host (one Python
#: multiply and rounding a step, about 0.3 to 3 microseconds: minutes at this bound).
_MAX_SIMULATED_STEPS = 10**8

#: The most steps :func:`chain` runs: ``lax.scan``'s step counter is an int32. A derived step
#: count beyond it (``1 + 2**-52`` in float64 needs about 3.2e18 steps) would otherwise reach XLA,
#: which aborts the interpreter ("overflow in static extent product").
_MAX_CHAIN_STEPS = 2**31 - 2

# Bytes per step of chain(): the scan's stacked output, the concatenated trajectory and the copy
# to the host, each one value of the dtype per step.
_CHAIN_COPIES = 3


def _simulate(
    x0: float, scale: float, fmt: _Format, flush: bool, overflow: bool, max_steps: int
) -> tuple[int | None, float]:
    """Run the chain on the host with the dtype's rounding after every multiplication.

    The product of two values of a format with at most 24 significant bits is exact in float64,
    so rounding it once into the dtype is the correctly rounded product; float64 products are
    rounded by the host's IEEE multiply (the host keeps subnormals). Flushing follows what XLA:CPU
    does (the tests check it on the device): subnormal inputs are read as 0, and a result whose
    exact value is below ``tiny`` is 0 even where it would round up to ``tiny`` (tininess is
    detected before rounding).
    """
    dt = _np_dtype(fmt)
    tiny = _limits(fmt.name).tiny

    def flushed(v: float) -> float:
        return math.copysign(0.0, v) if fmt.has_negative_zero else 0.0  # fnuz: no -0

    def times(x: float) -> float:
        p = x * scale  # exact, except for float64 where it is the rounded IEEE product
        if flush and abs(p) <= tiny:
            if fmt.bits != 64 and abs(p) < tiny:
                return flushed(p)
            if fmt.bits == 64 and Fraction(x) * Fraction(scale) < tiny:  # exact, rare
                return flushed(p)
        return p if fmt.bits == 64 else float(np.asarray(p).astype(dt).astype(np.float64))

    x = flushed(x0) if flush and abs(x0) < tiny else x0  # denormals-are-zero on input
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, max_steps + 1):
            y = times(x)
            if (not math.isfinite(y)) if overflow else (y == 0):
                return k, y
            if abs(y) == abs(x):  # a fixed point: the chain never gets there
                return None, y
            x = y
    raise ValueError(
        f"the {fmt.name} chain x0={x0}, scale={scale} did not "
        f"{'overflow' if overflow else 'underflow'} within max_steps={max_steps} steps; "
        "pass a larger max_steps"
    )


def _first_step_beyond(x0: float, scale: float, threshold: float, grow: bool) -> tuple[int, float]:
    """First integer k with |x0| |scale|^k > threshold (grow) or < threshold, and the real k."""
    a, s = abs(x0), abs(scale)
    k = (math.log(threshold) - math.log(a)) / math.log(s)
    n = math.floor(k) + 1
    if abs(k) <= 4096 and abs(k - round(k)) <= 1e-9 * max(1.0, abs(k)):
        # On (or within float error of) an integer, decide exactly: every value involved is a
        # dyadic rational, so Fraction arithmetic is exact. (k is exactly integral mostly for
        # power-of-two scales, whose k is at most a few thousand; a huge k, from a scale next to
        # 1, is far beyond float resolution and would make the exact power too costly.)
        m = round(k)
        v = Fraction(a) * Fraction(s) ** m if m >= 0 else Fraction(a) / Fraction(s) ** -m
        beyond = v > Fraction(threshold) if grow else v < Fraction(threshold)
        n = m if beyond else m + 1
    return max(n, 1), k


def _depth(kind, scale, dtype, x0, flush, max_steps) -> Depth:
    fmt = _format(dtype)
    s, x = _chain_args(scale, x0, fmt)
    scale = finite_float(scale, "scale")
    overflow = kind == "overflow"
    if overflow and not abs(scale) > 1:
        raise ValueError(
            f"overflow_depth needs |scale| > 1, got scale={scale}: |x0 * scale**k| never grows "
            "(use underflow_depth for |scale| < 1)"
        )
    if not overflow and not abs(scale) < 1:
        raise ValueError(
            f"underflow_depth needs 0 < |scale| < 1, got scale={scale}: |x0 * scale**k| never "
            "shrinks (use overflow_depth for |scale| > 1)"
        )
    if abs(s) == 1:
        raise ValueError(f"scale={scale} rounds to {s} in {fmt.name}, so the chain never moves")
    max_steps = bounded_int(
        max_steps,
        "max_steps",
        1,
        _MAX_SIMULATED_STEPS,
        "the host simulation runs about a million steps a second; beyond that, use the closed "
        "form k = log(threshold / |x0|) / log|scale|",
    )
    _check_flush(flush)
    lim = _limits(fmt.name)
    if abs(x) >= lim.tiny:
        # Decide before simulating whether the chain can end within max_steps. From a normal x0
        # no rounded step is a fixed point before the value leaves the normal range (overflow:
        # each step grows by at least one ulp; underflow: shrinks by at least half an ulp, which
        # rounds to one), and the rounded chain takes between about 0.7 and 1.2 times the closed
        # form's steps (the tests measure the worst case, scale one ulp from 1): beyond twice
        # max_steps the simulation could only give up, after running max_steps steps for nothing.
        # A scale next to 1 (1 + 2**-52 in float64: about 3.2e18 steps) is refused at once.
        needed, k = _first_step_beyond(x, s, lim.max if overflow else lim.tiny, grow=overflow)
        if needed > 2 * max_steps + 64:
            raise ValueError(
                f"the {fmt.name} chain x0={x}, scale={scale} needs about {k:.4g} steps to "
                f"{'overflow' if overflow else 'leave the normal range'} (the closed form "
                f"k = log(threshold / |x0|) / log|scale|), far more than max_steps={max_steps}; "
                f"the simulation could not finish. Use that closed form, or pass a larger "
                f"max_steps (at most {_MAX_SIMULATED_STEPS})"
            )
    flush = _resolve_flush(flush, fmt)
    threshold = lim.max if overflow else (lim.tiny if flush else lim.smallest_subnormal)
    predicted, k = _first_step_beyond(x, s, threshold, grow=overflow)
    step, value = _simulate(x, s, fmt, flush, overflow, max_steps)
    return Depth(kind, fmt.name, step, predicted, k, value, s, x, flush)


def overflow_depth(
    scale: float,
    dtype: Any,
    x0: float = 1.0,
    *,
    flush: bool | None = None,
    max_steps: int = 1_000_000,
) -> Depth:
    """The first step k at which ``x0 * scale**k``, rounded after every multiply, is not finite.

    This is the note's deep linear network with ``W = scale * I``: after ``k`` layers the signal
    is ``scale**k * x0``. The chain ``x_k = round(x_{k-1} * scale)`` is simulated exactly on the
    host (NumPy/ml_dtypes rounding to nearest even after every multiplication), and the closed
    form ``k = log(max / |x0|) / log|scale|`` from :func:`limits` is returned beside it; they can
    differ by a step because the rounded chain drifts from the exact power.

    Args:
        scale: the factor, ``|scale| > 1``; it is rounded to ``dtype`` first, as on a device.
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`).
        x0: starting value, finite and non-zero in ``dtype`` (negative values are fine).
        flush: only matters for a subnormal ``x0``: ``True`` reads it as 0 (then the chain never
            overflows), ``False`` keeps it; ``None`` follows :func:`probe` of the default device.
        max_steps: give up (ValueError) after this many simulated steps.

    Returns:
        A :class:`Depth` with ``kind="overflow"``; ``step`` is where the value becomes inf (NaN for
        formats without inf), ``predicted`` the closed-form step, ``k`` the real-valued solution.

    Raises:
        ValueError: unknown dtype; ``scale`` or ``x0`` zero, non-finite, or rounding to 0 or inf
            in ``dtype``; ``|scale| <= 1`` (including ``scale == 1``, which never overflows) or a
            scale that rounds to ±1 in ``dtype``; the chain is longer than ``max_steps``;
            ``max_steps`` above 10**8 (the simulation runs about a million steps a second). From
            a normal ``x0``, a chain whose closed form needs more than twice ``max_steps`` steps is
            refused at once, before simulating (``1 + 2**-52`` in float64: about 3.2e18 steps).
        TypeError: an integer dtype, or a non-numeric argument.

    Examples:
        >>> d = overflow_depth(1.5, "float16")
        >>> d.step, d.predicted, round(d.k, 2), d.value
        (28, 28, 27.35, inf)
        >>> d = overflow_depth(1.5, "bfloat16")  # W = 1.5 I: after how many layers?
        >>> d.step, d.predicted
        (220, 219)
        >>> overflow_depth(1.5, "float8_e4m3fn").value  # no inf in this format
        nan
    """
    return _depth("overflow", scale, dtype, x0, flush, max_steps)


def underflow_depth(
    scale: float,
    dtype: Any,
    x0: float = 1.0,
    *,
    flush: bool | None = None,
    max_steps: int = 1_000_000,
) -> Depth:
    """The first step k at which ``x0 * scale**k``, rounded after every multiply, is exactly 0.

    With IEEE subnormals the chain creeps down through the subnormal range and reaches 0 below half
    the smallest subnormal; when the backend flushes subnormals to zero it drops to 0 as soon as
    it leaves the normal range. The closed form is
    ``k = log(threshold / |x0|) / log|scale|`` with ``threshold = smallest_subnormal``, or
    ``tiny`` when flushing.

    Args:
        scale: the factor, ``0 < |scale| < 1``; rounded to ``dtype`` first, as on a device.
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`).
        x0: starting value, finite and non-zero in ``dtype`` (negative values are fine).
        flush: ``True`` flushes subnormal inputs and results to zero as XLA:CPU does for
            float32, bfloat16 and float64 (a result is flushed when its exact value is below
            ``tiny``); ``False`` keeps IEEE subnormals; ``None`` (default) follows :func:`probe`
            of the default device.
        max_steps: give up (ValueError) after this many simulated steps.

    Returns:
        A :class:`Depth` with ``kind="underflow"``. ``step`` is None when the chain gets stuck at a
        subnormal fixed point (for a scale close to 1, ``x * scale`` rounds back to ``x``), which
        can only happen with subnormals kept.

    Raises:
        ValueError: as :func:`overflow_depth`, with ``|scale| >= 1`` invalid.
        TypeError: an integer dtype, a non-bool ``flush``, or a non-numeric argument.

    Examples:
        >>> underflow_depth(0.5, "float32", flush=False).step  # 2**-149 survives, 2**-150 is 0
        150
        >>> underflow_depth(0.5, "float32", flush=True).step  # 2**-127 is subnormal: flushed
        127
        >>> d = underflow_depth(0.5, "float16")  # XLA:CPU keeps float16 subnormals
        >>> d.step, d.predicted, d.flush
        (25, 25, False)
    """
    return _depth("underflow", scale, dtype, x0, flush, max_steps)


# ----------------------------------------------------------------------------------------------
# the chain on the device


@functools.partial(jax.jit, static_argnames="steps")
def _chain_kernel(x0: jax.Array, scale: jax.Array, steps: int) -> jax.Array:
    def body(x, _):
        y = x * scale
        return y, y

    _, ys = jax.lax.scan(body, x0, None, length=steps)
    return jnp.concatenate([x0[None], ys])


def chain(
    scale: float,
    dtype: Any,
    x0: float = 1.0,
    *,
    steps: int | None = None,
    device: jax.Device | None = None,
) -> np.ndarray:
    """Run ``x_k = x_{k-1} * scale`` in ``dtype`` on the device under ``jit``; return every x_k.

    The device's own arithmetic decides the rounding, overflow and flushing, so comparing this
    trajectory with :func:`overflow_depth` / :func:`underflow_depth` checks the host simulation
    against the hardware. ``scale`` and ``x0`` are jit arguments: one compilation serves every
    scale and start value of a given dtype and length.

    Args:
        scale: the factor (non-zero, finite); rounded to ``dtype``. Negative scales alternate sign.
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`).
        x0: starting value, finite and non-zero in ``dtype``.
        steps: number of multiplications. ``None`` runs a few steps past the closed-form overflow
            (``|scale| > 1``) or IEEE underflow (``|scale| < 1``) step; required when the rounded
            ``|scale| == 1``.
        device: where to run; ``None`` means the default device.

    Returns:
        A NumPy array of shape ``(steps + 1,)`` and dtype ``dtype``: ``x_0, ..., x_steps``, copied
        to the host (so a float64 trajectory stays float64 outside ``enable_x64``).

    Raises:
        ValueError: unknown dtype; a bad ``scale`` or ``x0`` (as in :func:`overflow_depth`);
            ``steps < 1``; ``steps=None`` with ``|scale|`` rounding to 1; a number of steps,
            given or derived, beyond ``2**31 - 2`` (lax.scan counts in int32) or beyond memory
            (three values of the dtype a step). A derived count is refused naming ``scale`` and
            the closed-form step: ``1 + 2**-52`` in float64 needs about 3.2e18 steps, which used to
            reach XLA and abort the interpreter.
        TypeError: an integer dtype, or ``device`` that is not a ``jax.Device``.

    Examples:
        >>> xs = chain(1.5, "float16", steps=29)
        >>> xs.dtype, float(xs[27]), float(xs[28]), float(xs[29])
        (dtype('float16'), 56832.0, inf, inf)
        >>> xs = chain(0.5, "float32", steps=160)  # 0 at 127 on XLA:CPU (flushes), else 150
        >>> int(np.argmax(xs == 0)) == underflow_depth(0.5, "float32").step
        True
    """
    fmt = _format(dtype)
    s, x = _chain_args(scale, x0, fmt)
    itemsize = _np_dtype(fmt).itemsize
    # Every step count is bounded here, before it becomes a static scan length: XLA aborts the
    # interpreter on a length whose buffer size overflows, and allocates late on a merely huge one.
    memory = memory_limit()
    limit = min(_MAX_CHAIN_STEPS, memory // (_CHAIN_COPIES * itemsize) - 1)
    if steps is None:
        if abs(s) == 1:
            raise ValueError(f"scale={scale} is {s} in {fmt.name}: pass steps explicitly")
        lim = _limits(fmt.name)
        grow = abs(s) > 1
        threshold = lim.max if grow else lim.smallest_subnormal
        needed, k = _first_step_beyond(x, s, threshold, grow)
        if needed + 4 > limit:
            raise ValueError(
                f"scale={scale} needs {needed} steps to {'overflow' if grow else 'underflow'} "
                f"from x0={x} in {fmt.name} (the closed form k = log(threshold / |x0|) / "
                f"log|scale| = {k:.6g}), more than the {limit} steps chain can run (lax.scan "
                f"counts in int32; {format_bytes(_CHAIN_COPIES * itemsize)} a step of the "
                f"{format_bytes(memory)} available); that closed form is the answer "
                "(overflow_depth / underflow_depth refuse such chains too), or pass steps=N to "
                "run the first N steps"
            )
        steps = needed + 4
    steps = bounded_int(steps, "steps", 1, _MAX_CHAIN_STEPS, "lax.scan counts steps in int32")
    check_memory(_CHAIN_COPIES * (steps + 1) * itemsize, "steps", steps, f"a {fmt.name} chain")
    if device is None:
        device = jax.devices()[0]
    if not isinstance(device, jax.Device):
        raise TypeError(f"device must be a jax.Device or None, got {type(device).__name__}")
    dt = _np_dtype(fmt)
    with _x64(fmt):
        x_dev = jax.device_put(np.asarray(x, dt), device)
        s_dev = jax.device_put(np.asarray(s, dt), device)
        return np.asarray(_chain_kernel(x_dev, s_dev, steps))


# ----------------------------------------------------------------------------------------------
# command line: stabkit probe [--json]


def _report(device: jax.Device | None = None) -> dict[str, Any]:
    p = probe(device)
    rows = {}
    for name in SUPPORTED_DTYPES:
        rows[name] = {
            "limits": _limits(name)._asdict(),
            "measured": p.dtypes[name]._asdict() if name in p.dtypes else None,
        }
    return {
        "device": p.device,
        "platform": p.platform,
        "jax": jax.__version__,
        "dtypes": rows,
        "unsupported": dict(p.unsupported),
    }


def _cli_probe(args: argparse.Namespace) -> int:
    """``stabkit probe``: table of limits and measured behaviour (``--json``: the same as JSON)."""
    report = _report()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, allow_nan=False))
        return 0
    print(f"stabkit probe: {report['device']} ({report['platform']}), jax {report['jax']}")
    print()
    print("Limits (exp_max: largest x with finite exp(x); exp_min: smallest x with exp(x) != 0,")
    print("with subnormals / flushed)")
    head = (
        f"{'dtype':<19}{'bits':>4}{'e':>3}{'m':>3}  {'max':>10}  {'tiny':>10}  {'subnormal':>10}"
        f"  {'eps':>9}  {'inf':>3}  {'exp_max':>9}  {'exp_min':>9}  {'(flushed)':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, row in report["dtypes"].items():
        lim = row["limits"]
        print(
            f"{name:<19}{lim['bits']:>4}{lim['exponent_bits']:>3}{lim['mantissa_bits']:>3}"
            f"  {lim['max']:>10.4g}  {lim['tiny']:>10.4g}  {lim['smallest_subnormal']:>10.4g}"
            f"  {lim['eps']:>9.3g}  {'yes' if lim['has_inf'] else 'no':>3}"
            f"  {lim['exp_max']:>9.6g}  {lim['exp_min']:>9.6g}  {lim['exp_min_normal']:>9.6g}"
        )
    print()
    print(f"Measured on {report['device']} under jit (operands passed as arguments):")
    head = (
        f"{'dtype':<19}{'tiny*0.5':>10}{'sub+tiny':>12}{'sub>0':>7}{'max*2':>7}{'0*inf':>7}"
        f"{'inf-inf':>9}{'sub*0.25':>10}{'a*b-c':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, row in report["dtypes"].items():
        m = row["measured"]
        if m is None:
            print(f"{name:<19}not computable here: {report['unsupported'][name]}")
            continue
        print(
            f"{name:<19}{'subnormal' if m['keeps_subnormal_results'] else '0 (FTZ)':>10}"
            f"{'sum' if not m['subnormal_inputs_as_zero'] else 'tiny (DAZ)':>12}"
            f"{'False' if m['subnormal_compares_as_zero'] else 'True':>7}{m['overflow']:>7}"
            f"{m['zero_times_inf'] or 'n/a':>7}{m['inf_minus_inf'] or 'n/a':>9}"
            f"{m['underflow']:>10}{'1 round' if m['multiply_add_rounds_once'] else '2 round':>9}"
        )
    print(
        "sub = smallest subnormal. FTZ: subnormal results flushed to 0; DAZ: subnormal inputs "
        "read as 0;\na*b-c '1 round': fused multiply-add (or wider arithmetic), so results can "
        "differ from NumPy."
    )
    measured = {n: r["measured"] for n, r in report["dtypes"].items() if r["measured"]}
    flushed = [n for n, m in measured.items() if not m["keeps_subnormal_results"]]
    kept = [n for n, m in measured.items() if m["keeps_subnormal_results"]]
    print()
    print(f"Subnormal results flushed to zero (not IEEE): {', '.join(flushed) or 'none'}")
    print(f"Subnormal results kept (IEEE):                {', '.join(kept) or 'none'}")
    return 0
