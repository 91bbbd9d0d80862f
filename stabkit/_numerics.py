"""Numerical helpers every module calls: compute dtype, exact powers of two, RMS without overflow,
classification of floating-point values by bit pattern.

One home for each trick (as ``optax/_src/numerics.py``), so that "compute in at least float32" or
"scale by a power of two read from the bits" is written once:

* :func:`compute_dtype`: the dtype to compute in, float32 for the formats narrower than 32 bits.
* :func:`exponent`, :func:`pow2`: the binary exponent of a float read from its bits, and an exact
  ``2**k`` built from bits. Scaling by an exact power of two rounds nothing, so a result scaled
  that way is the same bit for bit however XLA arranges the arithmetic (it rewrites ``v / b`` as
  ``v * (1 / b)`` in some programs and not in others), and no reciprocal is flushed to 0.
* :func:`safe_sqrt`: ``sqrt`` whose gradient at 0 is 0 (the double ``where``).
* :func:`rms_rows`: RMS of each row, scaled by a power of two (exact, overflow-free).
* :func:`rms_by_sqrt_max`: RMS scaled by ``sqrt(max)`` twice (the older method of
  :func:`stabkit.trace`, kept because its results are pinned bit for bit).
* :func:`classify`: masks (normal, subnormal, zero, inf, NaN) of raw bit patterns, on NumPy or JAX
  arrays alike: XLA on CPU reads float32/bfloat16/float64 subnormals as 0 in comparisons, so a
  class must be read from the bits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_UINT = {4: jnp.uint32, 8: jnp.uint64}


def compute_dtype(dtype: Any) -> jnp.dtype:
    """float32 for formats narrower than 32 bits, the dtype itself otherwise.

    float16/bfloat16 sums of squares overflow above a norm of 256, and SVDs, samplers and
    reductions want at least float32. Not ``jnp.promote_types(dtype, float32)``: the float8
    formats promote with nothing, and this gives float32 for them too. For float16, bfloat16,
    float32 and float64 the two agree.

    Examples:
        >>> compute_dtype("bfloat16"), compute_dtype(jnp.float32)
        (dtype('float32'), dtype('float32'))
    """
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def _layout(dtype: Any) -> tuple[Any, int, int]:
    """The unsigned type, mantissa bits and exponent bias of float32 or float64."""
    dtype = jnp.dtype(dtype)
    info = jnp.finfo(dtype)
    return _UINT[dtype.itemsize], info.nmant, info.maxexp - 1


def exponent(x: jax.Array) -> jax.Array:
    """``e`` with ``2**e <= x < 2**(e + 1)`` for a positive normal float32/float64 ``x`` (int32).

    Read from the bits (``jnp.frexp`` compiles to far more); ``x = +0`` and subnormals give
    ``-bias``. ``x`` must not be negative (its sign bit would be read as exponent).
    """
    uint, nmant, bias = _layout(x.dtype)
    return (jax.lax.bitcast_convert_type(x, uint) >> nmant).astype(jnp.int32) - bias


def pow2(k: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """Exactly ``2.0**k`` in float32/float64 for integer ``k`` in the normal range, from bits."""
    dtype = jnp.dtype(dtype)
    uint, nmant, bias = _layout(dtype)
    return jax.lax.bitcast_convert_type((k + bias).astype(uint) << nmant, dtype)


def safe_sqrt(ss: jax.Array) -> jax.Array:
    """``sqrt(ss)`` for ``ss >= 0`` with gradient 0 at 0: the double ``where`` (sqrt'(0) = inf,
    and inf * 0 would make the gradient NaN)."""
    safe = jnp.where(ss > 0, ss, jnp.ones_like(ss))
    return jnp.where(ss > 0, jnp.sqrt(safe), jnp.zeros_like(ss))


def rms_rows(a: jax.Array) -> jax.Array:
    """RMS of each row of a float32 (or float64) ``(k, n)`` array, without overflow or underflow.

    Each row is scaled by a power of two near its largest finite entry (applied as two
    multiplications by normal numbers, so that no reciprocal is flushed to 0), squared, summed
    and scaled back. A row holding inf or NaN gets the plain formula (inf or NaN): that is
    evidence, not noise.
    """
    finite = jnp.isfinite(a)
    big = jnp.max(jnp.where(finite, jnp.abs(a), 0), axis=1, keepdims=True)
    # e with big = m * 2**e, m in [0.5, 1)
    e = exponent(big) + 1
    lo, hi = e // 2, e - e // 2
    ss = jnp.mean(jnp.square(a * pow2(-lo, a.dtype) * pow2(-hi, a.dtype)), axis=1, keepdims=True)
    scaled = safe_sqrt(ss) * pow2(lo, a.dtype) * pow2(hi, a.dtype)
    plain = jnp.sqrt(jnp.mean(jnp.square(a), axis=1, keepdims=True))
    return jnp.where(jnp.all(finite, axis=1, keepdims=True), scaled, plain)[:, 0]


def rms_by_sqrt_max(v: jax.Array, axis: Any = None) -> jax.Array:
    """RMS over ``axis`` that cannot overflow while the entries are finite, for float32/float64.

    The entries are divided by their max in two steps of ``sqrt(max)``, so the squares are at most
    1. One step would not do: XLA computes ``v / s`` as ``v * (1 / s)``, and ``1 / s`` is
    subnormal, flushed to 0 on CPU, once ``s`` exceeds 2^126 in float32: every entry would become
    0. Each ``1 / sqrt(s)`` stays a normal number. Not exact like a power-of-two scale (the two
    divisions round), but :func:`stabkit.trace`'s statistics are pinned to it bit for bit; the
    sweep, whose results must not depend on how XLA arranges the arithmetic, scales by
    :func:`pow2` instead.
    """
    m = jnp.max(jnp.abs(v), axis=axis, keepdims=True)
    # A non-finite max leaves the scale at 1, so inf/NaN entries still give inf/NaN.
    r = jnp.sqrt(jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m)))
    out = jnp.sqrt(jnp.mean(jnp.square(v / r / r), axis=axis, keepdims=True)) * r * r
    return jnp.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def classify(
    bits: Any, nbits: int, exponent_bits: int, mantissa_bits: int, kind: str = "ieee"
) -> tuple[Any, Any, Any, Any, Any]:
    """Boolean masks (normal, subnormal, zero, inf, nan) of raw bit patterns ``bits``.

    Works on NumPy and JAX unsigned integer arrays alike (only ``&``, ``>>``, ``==``, ``~``), so
    the probe can classify on the host exactly what the census classifies on the device.

    Args:
        bits: unsigned integers of width ``nbits``, the bit patterns.
        nbits, exponent_bits, mantissa_bits: the format's layout.
        kind: ``"ieee"``: all-ones exponent is inf (mantissa 0) or NaN; ``"fn"``: no inf, the
            all-ones exponent and mantissa is NaN; ``"fnuz"``: no inf and no -0, the
            sign-bit-only pattern is the one NaN.
    """
    m, e = mantissa_bits, exponent_bits
    exp_mask = (1 << e) - 1
    man_mask = (1 << m) - 1
    expo = (bits >> m) & exp_mask
    mantissa = bits & man_mask
    exp_zero = expo == 0
    man_zero = mantissa == 0
    if kind == "ieee":
        exp_ones = expo == exp_mask
        inf = exp_ones & man_zero
        nan = exp_ones & ~man_zero
        normal = ~exp_zero & ~exp_ones
    elif kind == "fn":
        nan = (expo == exp_mask) & (mantissa == man_mask)
        inf = nan & False
        normal = ~exp_zero & ~nan
    else:  # fnuz: the sign bit alone, the pattern of "-0", is the only NaN
        nan = bits == (1 << (nbits - 1))
        inf = nan & False
        normal = ~exp_zero
    zero = exp_zero & man_zero & ~nan
    subnormal = exp_zero & ~man_zero
    return normal, subnormal, zero, inf, nan
