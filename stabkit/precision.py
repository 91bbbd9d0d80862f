"""Floating-point overflow and underflow: limits, what the backend really does, depth of a chain.

The founding note says in words that a huge value rounds to ``inf`` (overflow, after which further
arithmetic such as ``inf - inf`` or ``0 * inf`` gives NaN) and that a tiny value rounds to 0
(underflow). This module puts numbers on it:

* :func:`census` counts normal, subnormal, zero, inf and NaN entries by bit pattern, under ``jit``
  and ``vmap``, for every supported dtype.

Supported dtypes: ``float16``, ``bfloat16``, ``float32``, ``float64`` and the ``ml_dtypes`` float8
formats that XLA computes with (``float8_e4m3fn``, ``float8_e5m2``, ``float8_e4m3``,
``float8_e3m4``, ``float8_e4m3fnuz``, ``float8_e5m2fnuz``, ``float8_e4m3b11fnuz``). The ``fn``
formats have no inf and one NaN pattern per sign; the ``fnuz`` formats have no inf, no negative
zero, and their only NaN is the bit pattern of "-0" (``0x80``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import floating_array, is_floating_dtype, normalize_axis

__all__ = ["SUPPORTED_DTYPES", "Census", "census"]


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
    if isinstance(dtype, str):
        key = dtype
        if hasattr(ml_dtypes, key) and key not in ("float16", "float32", "float64"):
            dtype = getattr(ml_dtypes, key)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(
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
