"""The statistics :func:`stabkit.inspect` records of every floating array a program computes.

One :class:`ArrayStats` per array: the census of its classes, read from the bits (XLA on CPU reads
float32/bfloat16/float64 subnormals as 0 in comparisons, so a class must come from the bits), the
largest finite and smallest nonzero ``|x|`` (compared as bit patterns: the bits of a non-negative
float order as its value does, and integer comparisons know no denormals-are-zero), the mean
square of the finite entries scaled by an exact power of two (no overflow, no underflow), and the
flat index of the first inf, NaN and underflowed entry.

On the device, arrays of one shape and dtype are reduced together (:func:`stats_group`); values
known at trace time on the host (:func:`stats_np`). Records of the same array over the iterations
of a loop :func:`combine` into one of the same shape, so a 1,000-step loop keeps one record.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._numerics import exponent, pow2
from stabkit.precision.formats import _UINT, _format

#: The census fields, in the order of :attr:`ArrayStats.counts`.
CLASSES = ("normal", "subnormal", "zero", "inf", "nan")
#: The kinds of origin, in the order of :attr:`ArrayStats.first` and of the origin flags.
KINDS = ("inf", "nan", "underflow")
#: Bits of the int32 flags a value carries: it holds an inf, a NaN, a zero or subnormal.
INF, NAN, TINY = 1, 2, 4
# The exponent of a record with no nonzero finite entry: below any real one, so that combining it
# with another record keeps the other's scale (2**(2 * (_NO_SCALE - e)) is 0).
_NO_SCALE = -(1 << 20)


def stat_dtype() -> jnp.dtype:
    """float64 where JAX has it enabled (a float64 array's max needs it), float32 otherwise."""
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


class ArrayStats(NamedTuple):
    """What one floating array held (arrays; stacked along leading axes for many arrays).

    Attributes:
        counts: int32 ``(5,)``: normal, subnormal, zero, inf, NaN entries.
        maxabs: largest finite ``|x|`` (0 where none is finite), in :func:`stat_dtype`.
        minabs: smallest nonzero finite ``|x|`` (inf where there is none).
        exponent: int32 ``e``: the mean square below is of ``x * 2**-e`` (a large negative
            number where no finite entry is nonzero).
        meansq: mean of ``(x * 2**-e)**2`` over the finite entries, in ``[0, 1]``.
        first: int32 ``(3,)``: flat index of the first inf, NaN and underflowed entry, -1 if none.
        underflow: int32: how many entries underflowed (see :func:`raw`).
    """

    counts: Any
    maxabs: Any
    minabs: Any
    exponent: Any
    meansq: Any
    first: Any
    underflow: Any


@functools.cache
def _layout(dtype: Any) -> tuple:
    """(unsigned type, |x| mask, smallest normal's bits, inf's bits or None, kind, sign bit) of a
    format: its classes are integer comparisons of the magnitude bits."""
    fmt = _format(dtype, "x.dtype")
    sign = 1 << (fmt.bits - 1)
    inf = ((1 << fmt.exponent_bits) - 1) << fmt.mantissa_bits if fmt.kind == "ieee" else None
    return _UINT[fmt.bits], sign - 1, 1 << fmt.mantissa_bits, inf, fmt.kind, sign


def _classes(xp: Any, bits: Any, dtype: Any) -> tuple:
    uint, mask, min_normal, inf_bits, kind, sign = _layout(jnp.dtype(dtype))
    mag = bits & np.array(mask, uint)
    if kind == "ieee":
        inf = mag == np.array(inf_bits, uint)
        nan = mag > np.array(inf_bits, uint)
    elif kind == "fn":  # no inf; all ones is NaN
        inf = xp.zeros(bits.shape, bool)
        nan = mag == np.array(mask, uint)
    else:  # fnuz: no inf, no -0; the sign bit alone is the NaN
        inf = xp.zeros(bits.shape, bool)
        nan = bits == np.array(sign, uint)
    zero = (mag == np.array(0, uint)) & ~nan
    subnormal = (mag < np.array(min_normal, uint)) & ~zero & ~nan
    return mag, zero, subnormal, inf, nan


def classes(x: jax.Array) -> tuple[jax.Array, ...]:
    """(magnitude bits, zero, subnormal, inf, nan) of a JAX array, read from its bits."""
    uint = _layout(jnp.dtype(x.dtype))[0]
    return _classes(jnp, jax.lax.bitcast_convert_type(x, uint), x.dtype)


def classes_np(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`classes` of a host array, with NumPy."""
    uint = _layout(jnp.dtype(x.dtype))[0]
    return _classes(np, np.ascontiguousarray(x).view(uint).reshape(x.shape), x.dtype)


def flags(x: jax.Array) -> jax.Array:
    """int32 bit mask (:data:`INF`, :data:`NAN`, :data:`TINY`) of what ``x`` holds: one
    reduction (bitwise or)."""
    _, zero, subnormal, inf, nan = classes(x)
    code = (
        inf.astype(jnp.int32) * INF
        + nan.astype(jnp.int32) * NAN
        + (zero | subnormal).astype(jnp.int32) * TINY
    )
    return jax.lax.reduce(code, np.int32(0), jax.lax.bitwise_or, tuple(range(x.ndim)))


def flags_of_counts(counts: Any) -> Any:
    """The flags of values from their counts (``(..., 5)``, NumPy or JAX)."""
    c = counts
    return (
        (c[..., 3] > 0).astype(np.int32) * INF
        + (c[..., 4] > 0).astype(np.int32) * NAN
        + ((c[..., 1] + c[..., 2]) > 0).astype(np.int32) * TINY
    )


#: Bits of the int8 code of an entry (:func:`code`): an inf there would be made by the equation
#: (no input entry there is inf), a NaN would be, and a zero or subnormal there would be an
#: underflow (every input entry there is normal).
FRESH_INF, FRESH_NAN, UNDERFLOW = 1, 2, 4


def code(underflowed: Any = None, fresh: Any = None) -> Any:
    """The int8 :data:`FRESH_INF` / :data:`FRESH_NAN` / :data:`UNDERFLOW` code of each entry from
    the masks (one array to stack per value instead of three); None: the default (inf and NaN
    fresh everywhere, no underflow)."""
    if underflowed is None and fresh is None:
        return None
    inf_ok, nan_ok = fresh if fresh is not None else (True, True)
    uf = underflowed if underflowed is not None else False
    return (
        jnp.asarray(inf_ok).astype(jnp.int8) * np.int8(FRESH_INF)
        + jnp.asarray(nan_ok).astype(jnp.int8) * np.int8(FRESH_NAN)
        + jnp.asarray(uf).astype(jnp.int8) * np.int8(UNDERFLOW)
    )


def stats_group(x: jax.Array, codes: jax.Array | None = None) -> ArrayStats:
    """The :class:`ArrayStats` (leading axis ``k``) of ``k`` arrays of one shape and dtype
    stacked along axis 0 of ``x``.

    Three reductions for all ``k``: one variadic reduction for the counts and the largest and
    smallest magnitudes, the mean square scaled by the power of two the largest gives, and, only
    where some entry is inf, NaN or underflowed (a ``cond``: in a healthy program it never runs),
    the first such indices. One reduction per group, not per array: XLA compiles each reduction
    in tens of milliseconds, and a variadic reducer's cost per entry grows with its operands.

    Args:
        x: ``(k, ...)``, the stacked arrays.
        codes: int8, ``x``'s shape: each entry's :func:`code` (None: the default everywhere).
            Underflowed entries are zero or subnormal ones coded :data:`UNDERFLOW`; the first
            inf and NaN indices are those of the first coded fresh, not the first passed on.
    """
    underflowed = None if codes is None else (codes & np.int8(UNDERFLOW)) != 0
    fresh = (
        None
        if codes is None
        else ((codes & np.int8(FRESH_INF)) != 0, (codes & np.int8(FRESH_NAN)) != 0)
    )
    mag, zero, subnormal, inf, nan = classes(x)
    k, member = x.shape[0], x.shape[1:]
    axes = tuple(range(1, x.ndim))
    n = int(np.prod(member, dtype=np.int64))
    top = np.array(np.iinfo(mag.dtype).max, mag.dtype)
    finite = ~(inf | nan)
    uf = None if underflowed is None else underflowed & (zero | subnormal)
    operands = [
        subnormal.astype(jnp.int32),
        zero.astype(jnp.int32),
        inf.astype(jnp.int32),
        nan.astype(jnp.int32),
        jax.lax.select(finite, mag, jnp.zeros_like(mag)),
        jax.lax.select(finite & ~zero, mag, jnp.full_like(mag, top)),
    ]
    inits = [np.int32(0)] * 4 + [np.array(0, mag.dtype), top]
    if uf is not None:
        operands.append(uf.astype(jnp.int32))
        inits.append(np.int32(0))
    n_ops = len(operands)

    def reducer(p, q):
        out = [p[0] + q[0], p[1] + q[1], p[2] + q[2], p[3] + q[3]]
        out += [jax.lax.max(p[4], q[4]), jax.lax.min(p[5], q[5])]
        return tuple(out + ([p[6] + q[6]] if n_ops > 6 else []))

    r = jax.lax.reduce(tuple(operands), tuple(inits), reducer, axes)
    n_sub, n_zero, n_inf, n_nan, big, small = r[:6]
    n_uf = r[6] if uf is not None else jnp.zeros(k, jnp.int32)
    counts = jnp.stack([n - n_sub - n_zero - n_inf - n_nan, n_sub, n_zero, n_inf, n_nan], axis=1)
    fdt = stat_dtype()
    maxabs = jax.lax.bitcast_convert_type(big, x.dtype).astype(fdt)
    smallest = jax.lax.bitcast_convert_type(small, x.dtype).astype(fdt)
    minabs = jnp.where(small == top, np.array(np.inf, fdt), smallest)
    # e with maxabs < 2**e; two exact multiplications by normal powers of two bring every finite
    # entry into [0, 1) without a reciprocal that could be flushed to 0.
    has = big > np.array(0, big.dtype)
    e = jnp.where(has, exponent(maxabs) + 1, 0)
    lo = jax.lax.shift_right_arithmetic(e, np.int32(1))  # floor(e / 2)
    hi = e - lo
    column = (k,) + (1,) * len(member)
    # two factors, applied one after the other: their product can be subnormal (2^-128)
    a = jax.lax.select(finite, x, jnp.zeros_like(x)).astype(fdt)
    a = a * pow2(-lo, fdt).reshape(column) * pow2(-hi, fdt).reshape(column)
    n_finite = jnp.maximum(n - n_inf - n_nan, 1)
    meansq = jnp.sum(jnp.square(a), axis=axes) / n_finite.astype(fdt)
    has_fresh = fresh is not None and not all(isinstance(f, np.bool_) and f for f in fresh)
    first = jax.lax.cond(
        jnp.any((n_inf + n_nan + n_uf) > 0),
        functools.partial(_first_indices, has_uf=uf is not None, has_fresh=has_fresh),
        lambda *_: jnp.full((k, 3), -1, jnp.int32),
        x,
        uf if uf is not None else np.bool_(False),
        fresh if has_fresh else (np.bool_(True), np.bool_(True)),
    )
    e = jnp.where(has, e, _NO_SCALE).astype(jnp.int32)
    return ArrayStats(counts, maxabs, minabs, e, meansq, first, n_uf)


def _first_indices(x, uf, fresh, *, has_uf: bool, has_fresh: bool) -> jax.Array:
    """int32 ``(k, 3)``: flat index in each stacked array of its first (fresh) inf, (fresh) NaN
    and underflowed entry, -1 if none."""
    _, _, _, inf, nan = classes(x)
    if has_fresh:
        inf, nan = inf & fresh[0], nan & fresh[1]
    member = x.shape[1:]
    n = int(np.prod(member, dtype=np.int64))
    idx = jnp.broadcast_to(
        jax.lax.iota(jnp.int32, n).reshape(member) if n else jnp.zeros(member, jnp.int32), x.shape
    )
    none = np.int32(n)
    masks_ = [inf, nan] + ([uf] if has_uf else [])
    operands = tuple(jax.lax.select(m, idx, jnp.full_like(idx, none)) for m in masks_)
    r = jax.lax.reduce(
        operands,
        (none,) * len(operands),
        lambda p, q: tuple(jax.lax.min(a, b) for a, b in zip(p, q, strict=True)),
        tuple(range(1, x.ndim)),
    )
    r = list(r) + ([] if has_uf else [jnp.full(x.shape[0], none)])
    first = jnp.stack(r, axis=1)
    return jnp.where(first < none, first, -1).astype(jnp.int32)


def stats(
    x: jax.Array,
    underflowed: jax.Array | None = None,
    fresh: tuple[jax.Array, jax.Array] | None = None,
) -> ArrayStats:
    """The :class:`ArrayStats` of one JAX array (:func:`stats_group` of a group of one)."""

    c = code(underflowed, fresh)
    s = stats_group(x[None], None if c is None else jnp.broadcast_to(c, x.shape)[None])
    return ArrayStats(*(f[0] for f in s))


def stats_np(
    x: np.ndarray,
    underflowed: np.ndarray | None = None,
    fresh: tuple[np.ndarray, np.ndarray] | None = None,
) -> ArrayStats:
    """:func:`stats` of a value known when the program is traced (computed from literals and
    constants only: a broadcast ``1.0``, the zeros of a ``where``), with NumPy on the host.

    XLA would fold such a reduction of a constant at compile time, taking seconds for one array.
    """
    x = np.asarray(x)
    _, zero, subnormal, inf, nan = classes_np(x)
    n = x.size
    inf_new, nan_new = (inf & fresh[0], nan & fresh[1]) if fresh is not None else (inf, nan)
    uf = (
        np.broadcast_to(underflowed, x.shape) & (zero | subnormal)
        if underflowed is not None
        else np.zeros(x.shape, bool)
    )
    finite = ~(inf | nan)

    def first(m):
        flat = np.flatnonzero(m)
        return int(flat[0]) if flat.size else -1

    counts = [int(m.sum()) for m in (subnormal, zero, inf, nan)]
    fdt = stat_dtype()
    a = np.abs(np.where(finite, x.astype(np.float64), 0.0))
    nonzero = a[finite & ~zero]
    big = float(a.max()) if n else 0.0
    if big > 0:
        e = int(np.frexp(big)[1])  # big = m 2**e with m in [0.5, 1)
        meansq = float(np.sum(np.square(np.ldexp(a, -e)))) / max(n - counts[2] - counts[3], 1)
    else:
        e, meansq = _NO_SCALE, 0.0
    return ArrayStats(
        np.array([n - sum(counts), *counts], np.int32),
        np.array(big, fdt),
        np.array(nonzero.min() if nonzero.size else np.inf, fdt),
        np.int32(e),
        np.array(meansq, fdt),
        np.array([first(inf_new), first(nan_new), first(uf)], np.int32),
        np.int32(uf.sum()),
    )


def empty(lead: tuple[int, ...] = ()) -> ArrayStats:
    """The record of no entries (``lead``: leading axes): what :func:`combine` starts from."""
    fdt = stat_dtype()
    return ArrayStats(
        jnp.zeros((*lead, 5), jnp.int32),
        jnp.zeros(lead, fdt),
        jnp.full(lead, jnp.inf, fdt),
        jnp.full(lead, _NO_SCALE, jnp.int32),
        jnp.zeros(lead, fdt),
        jnp.full((*lead, 3), -1, jnp.int32),
        jnp.zeros(lead, jnp.int32),
    )


def combine(a: ArrayStats, b: ArrayStats) -> ArrayStats:
    """One record of the entries of ``a`` and ``b`` (``a`` first: its first indices win)."""
    fdt = stat_dtype()
    e = jnp.maximum(a.exponent, b.exponent)
    na = jnp.sum(a.counts[..., :3], axis=-1).astype(fdt)
    nb = jnp.sum(b.counts[..., :3], axis=-1).astype(fdt)
    # 2**(2 (e_a - e)) as a float: far below 1 it rounds to 0, which is what it weighs
    wa = jnp.exp2((2 * jnp.maximum(a.exponent - e, -4096)).astype(fdt))
    wb = jnp.exp2((2 * jnp.maximum(b.exponent - e, -4096)).astype(fdt))
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


def rms(s: ArrayStats) -> np.ndarray:
    """The RMS of the finite entries (float64, on the host); NaN where none is finite."""
    e = np.maximum(np.asarray(s.exponent, np.float64), -4096.0)
    n_finite = np.asarray(s.counts)[..., :3].sum(-1)
    with np.errstate(under="ignore", over="ignore"):
        out = np.sqrt(np.asarray(s.meansq, np.float64)) * np.exp2(e)
    return np.where(n_finite > 0, out, np.nan)
