"""The range of each format: max, tiny, smallest subnormal, eps, and the exact thresholds of exp."""

from __future__ import annotations

import decimal
import functools
import math
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from stabkit.precision.formats import _FORMATS, _format, _np_dtype


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
        >>> import jax.numpy as jnp
        >>> limits(jnp.float32).exp_max, limits("float64").exp_max
        (88.72283172607422, 709.782712893384)
        >>> limits("float8_e4m3fn").has_inf, limits("float8_e4m3fn").max
        (False, 448.0)
    """
    return _limits(_format(dtype).name)
