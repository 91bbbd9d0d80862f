"""The statistics :func:`stabkit.inspect` records of every floating array a program computes.

One :class:`ArrayStats` per array: the census of its classes, read from the bits (XLA on CPU reads
float32/bfloat16/float64 subnormals as 0 in comparisons, so a class must come from the bits), the
largest finite and smallest nonzero ``|x|`` (compared as bit patterns: the bits of a non-negative
float order as its value does, and integer comparisons know no denormals-are-zero), the mean square
of the finite entries scaled by an exact power of two (no overflow, no underflow), and the flat
index of the first inf, NaN and underflowed entry. Records of the same array over the iterations
of a loop :func:`combine` into one of the same shape, so a 1,000-step loop keeps one record.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._numerics import exponent, pow2
from stabkit.precision.formats import _UINT, _classify, _format

#: The census fields, in the order of :attr:`ArrayStats.counts`.
CLASSES = ("normal", "subnormal", "zero", "inf", "nan")
#: The kinds of origin, in the order of :attr:`ArrayStats.first` and of a node's flags.
KINDS = ("inf", "nan", "underflow")
# The exponent of a record with no nonzero finite entry: below any real one, so that combining it
# with another record keeps the other's scale (2**(2 * (_NO_SCALE - e)) is 0).
_NO_SCALE = -(1 << 20)


def stat_dtype() -> jnp.dtype:
    """float64 where JAX has it enabled (a float64 array's max needs it), float32 otherwise."""
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


class ArrayStats(NamedTuple):
    """What one floating array held (JAX arrays; stacked along leading axes for many arrays).

    Attributes:
        counts: int32 ``(5,)``: normal, subnormal, zero, inf, NaN entries.
        maxabs: largest finite ``|x|`` (0 where none is finite), in :func:`stat_dtype`.
        minabs: smallest nonzero finite ``|x|`` (inf where there is none).
        exponent: int32 ``e``: the mean square below is of ``x * 2**-e`` (a large negative
            number where no finite entry is nonzero).
        meansq: mean of ``(x * 2**-e)**2`` over the finite entries, in ``[0, 1]``.
        first: int32 ``(3,)``: flat index of the first inf, NaN and underflowed entry, -1 if none.
        underflow: int32: how many entries underflowed (see :func:`stats`).
    """

    counts: jax.Array
    maxabs: jax.Array
    minabs: jax.Array
    exponent: jax.Array
    meansq: jax.Array
    first: jax.Array
    underflow: jax.Array


def _first(mask: jax.Array) -> jax.Array:
    """Flat index of the first True of ``mask``, -1 if none (computed only where there is one)."""
    flat = mask.reshape(-1)
    return jax.lax.cond(
        jnp.any(flat),
        lambda m: jnp.argmax(m).astype(jnp.int32),
        lambda m: jnp.int32(-1),
        flat,
    )


def classes(x: jax.Array):
    """The (normal, subnormal, zero, inf, nan) masks of ``x`` and its unsigned bit patterns."""
    fmt = _format(x.dtype, "x.dtype")
    bits = jax.lax.bitcast_convert_type(x, _UINT[fmt.bits])
    return _classify(bits, fmt), bits, fmt


def flags(x: jax.Array) -> jax.Array:
    """bool ``(3,)``: does ``x`` hold an inf, a NaN, an entry that is zero or subnormal."""
    (_, subnormal, zero, inf, nan), _, _ = classes(x)
    return jnp.stack([jnp.any(inf), jnp.any(nan), jnp.any(subnormal | zero)])


def normal_mask(x: jax.Array) -> jax.Array:
    """True where ``x`` is a normal number (finite, nonzero, not subnormal), by its bits."""
    return classes(x)[0][0]


def stats(x: jax.Array, underflowed: jax.Array | None = None) -> ArrayStats:
    """The :class:`ArrayStats` of a floating array ``x`` (any shape, any supported format).

    Args:
        x: the array.
        underflowed: boolean mask (``x``'s shape or broadcastable) of the entries that are zero or
            subnormal although computed from normal inputs; None: no entry underflowed.
    """
    (normal, subnormal, zero, inf, nan), bits, fmt = classes(x)
    counts = jnp.stack([jnp.sum(m, dtype=jnp.int32) for m in (normal, subnormal, zero, inf, nan)])
    sign_off = np.array((1 << (fmt.bits - 1)) - 1, bits.dtype)
    mag = bits & sign_off
    finite = normal | subnormal | zero
    big = jnp.max(jnp.where(finite, mag, jnp.zeros_like(mag)))
    small = jnp.min(
        jnp.where(normal | subnormal, mag, np.array(np.iinfo(mag.dtype).max, mag.dtype))
    )
    fdt = stat_dtype()
    dtype = x.dtype
    maxabs = jax.lax.bitcast_convert_type(big, dtype).astype(fdt)
    has_small = jnp.any(normal | subnormal)
    minabs = jnp.where(
        has_small, jax.lax.bitcast_convert_type(small, dtype).astype(fdt), jnp.array(jnp.inf, fdt)
    )
    # e with maxabs < 2**e; two exact multiplications by normal powers of two bring every finite
    # entry into [0, 1) without a reciprocal that could be flushed to 0.
    e = jnp.where(maxabs > 0, exponent(maxabs) + 1, 0)
    lo, hi = e // 2, e - e // 2
    a = jnp.where(finite, x, jnp.zeros_like(x)).astype(fdt) * pow2(-lo, fdt) * pow2(-hi, fdt)
    n_finite = jnp.maximum(counts[0] + counts[1] + counts[2], 1)
    meansq = jnp.sum(jnp.square(a)) / n_finite.astype(fdt)
    if underflowed is None:
        uf_first, uf_count = jnp.int32(-1), jnp.int32(0)
    else:
        underflowed = jnp.broadcast_to(underflowed, x.shape) & (subnormal | zero)
        uf_first, uf_count = _first(underflowed), jnp.sum(underflowed, dtype=jnp.int32)
    first = jnp.stack([_first(inf), _first(nan), uf_first])
    e = jnp.where(maxabs > 0, e, _NO_SCALE).astype(jnp.int32)
    return ArrayStats(counts, maxabs, minabs, e, meansq, first, uf_count)


def empty() -> ArrayStats:
    """The record of no entries: what :func:`combine` starts from."""
    fdt = stat_dtype()
    return ArrayStats(
        jnp.zeros(5, jnp.int32),
        jnp.zeros((), fdt),
        jnp.array(jnp.inf, fdt),
        jnp.array(_NO_SCALE, jnp.int32),
        jnp.zeros((), fdt),
        jnp.full(3, -1, jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def combine(a: ArrayStats, b: ArrayStats) -> ArrayStats:
    """One record of the entries of ``a`` and ``b`` (``a`` first: its first indices win)."""
    fdt = stat_dtype()
    e = jnp.maximum(a.exponent, b.exponent)
    na = jnp.sum(a.counts[..., :3], axis=-1).astype(fdt)
    nb = jnp.sum(b.counts[..., :3], axis=-1).astype(fdt)
    # 2**(2 (e_a - e)) as a float: far below 1 it rounds to 0, which is what it weighs
    wa = jnp.exp2((2 * (a.exponent - e)).astype(fdt))
    wb = jnp.exp2((2 * (b.exponent - e)).astype(fdt))
    meansq = (na * a.meansq * wa + nb * b.meansq * wb) / jnp.maximum(na + nb, 1)
    return ArrayStats(
        a.counts + b.counts,
        jnp.maximum(a.maxabs, b.maxabs),
        jnp.minimum(a.minabs, b.minabs),
        e,
        meansq,
        jnp.where(a.first >= 0, a.first, b.first),
        a.underflow + b.underflow,
    )
