"""The kernels behind :mod:`stabkit.stable_softmax`: one forward sweep and five custom_jvp rules.

Private: the public functions validate their arguments on the host and call these inside one
jitted core. Everything here takes ``(x, mask)`` in the compute dtype (float32 for narrower
formats), with the reduced axes kept (``keepdims``); the module docstring of
:mod:`stabkit.stable_softmax` states the accuracy they reach and ``benchmarks/bench_softmax.py``
what they cost.
"""

from __future__ import annotations

import math
import os
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

# log1p(t) uses XLA's log1p below this and log(u) + c/u above: XLA:CPU's float32 log1p is up to
# 2.4 ulp off for t in [0.37, 1], log(1 + t) with the rounding of 1 + t put back is 1.4.
_LOG1P_SWITCH = 0.375

# Rows up to this many entries take the fused sums of ``_stats``; longer ones XLA's own reduction.
_FUSED_ROWS = 8192

# The forward of softmax / log_softmax over the last axis runs over blocks of about this many bytes
# of rows (see ``_row_blocks``).
_BLOCK_BYTES = 1 << 20


def _masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return x if mask is None else jnp.where(mask, x, -jnp.inf)


def _sum(a, axes):
    return jnp.sum(a, axis=axes, keepdims=True)


def _log1p(t):
    """``log(1 + t)`` for ``t >= 0`` to about 1.4 ulp (see ``_LOG1P_SWITCH``); NaN stays NaN."""
    u = 1 + t
    # Fast2Sum: 1 + t == u + c exactly. Written (1 - u) + t, not t - (u - 1), which XLA
    # simplifies to t - t = 0.
    c = jnp.where(t <= 1, (1 - u) + t, 1 - (u - t))
    return jnp.where(t < _LOG1P_SWITCH, jnp.log1p(t), jnp.log(u) + c / u)


def _positive(v):
    """For ``v >= 0``: 0 where ``v == 0``, 1 where ``v > 0`` is normal (``v * 2^emax >= 2``)."""
    return jnp.minimum(v * _pow2_emax(v.dtype), 1)


def _pow2_emax(dtype) -> float:
    """The largest power of two of ``dtype``: 2^127 for float32, 2^1023 for float64."""
    return 2.0 ** (int(jnp.finfo(dtype).maxexp) - 1)


def _floor(v):
    """``v``, with -inf raised to the most negative finite number (NaN stays NaN)."""
    return jnp.maximum(v, jnp.finfo(v.dtype).min)


def _live(x):
    """1 where ``x > -inf``, 0 where ``x == -inf``, NaN where ``x`` is NaN or ``+inf``: the weight
    of an entry's derivative, from max, subtract and exp only (see ``_log_softmax_jvp``)."""
    return jnp.exp(x - _floor(x))


def _stats(x, axes):
    """The shared forward sweep over a masked ``x`` (-inf at excluded entries), keepdims.

    Returns ``(m, finite, d, e, t, k)``:

    * ``m`` the row max and ``finite = isfinite(m)``; rows with a non-finite max are repaired by
      the callers (an empty row has ``m = -inf``, a row with ``+inf`` has ``m = inf``, a NaN row
      ``m = NaN``: XLA's max propagates NaN);
    * ``d = x - m`` and ``e = exp(d)`` per entry;
    * ``t = sum(e) - 1``, the sum over the entries below the max plus the number of ties at the
      max less one, so that ``log1p(t)`` keeps the tiny terms that a sum starting at 1 absorbs
      one by one (Blanchard, Higham & Higham, Algorithm 2), and ``k = 1 + t`` (the softmax
      denominator).

    One pass after the max, as in :mod:`jax.nn`: ``below = min(-d * 2^emax, 1)`` is exactly 0
    at the max (``d = 0``) and 1 below it (``-d >=`` the smallest normal, so ``-d * 2^emax >=
    2``; -inf entries give ``min(inf, 1) = 1``), and ``u = sum(e * below)`` and the tie count
    ``c = sum(1 - below)`` are two sums over ``d``. No compare or select: XLA:CPU's classic
    emitter did not fuse those into its reductions (1.4-1.9x jax.nn's forward then, against
    1.2x). Since jax 0.10 XLA:CPU hands reductions to YNNPACK, which fuses neither: ``d`` and
    ``below`` are written out as full arrays (2.8x jax.nn on 2048 x 8192 float32), hence the
    blocks of rows of ``_row_blocks`` (1.1-1.2x). Where ``d`` is subnormal (rows of numbers below ~2^-100, and only
    where the backend keeps subnormals) an entry is split between the two sums, ``e * below +
    (1 - below)``, which is ``e`` to within rounding: ``t`` is the same.
    """
    m = jnp.max(x, axis=axes, keepdims=True)
    finite = jnp.isfinite(m)
    # x - m as jax.nn has it, with the max of an empty row taken as the most negative finite
    # number: its d is -inf, not NaN (-inf - -inf), its t = -1 and k = 0 (see _log_norm).
    d = x - _floor(m)
    e = jnp.exp(d)
    if math.prod(x.shape[a] for a in axes) > _FUSED_ROWS:
        # Long rows: XLA:CPU's fused loop adds a row's terms one after another (2836 ulp in
        # float32 on 100,000 terms of 8e-9), its own reduction splits the row into a tree.
        u = _sum(jnp.where(d == 0, 0, e), axes)
        c = _sum(jnp.where(d == 0, 1, 0).astype(d.dtype), axes)
    else:
        # A 0/1 weight: constant under differentiation (the JVP rules differentiate t and k for
        # higher derivatives; the slope -2^emax at d = 0 would meet the tie tangents there).
        below = lax.stop_gradient(_positive(-d))
        u = _sum(e * below, axes)
        c = _sum(1 - below, axes)
    return m, finite, d, e, u + (c - 1), u + c


def _block_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows per block for ``_row_blocks`` over the last axis of ``shape``, or 0 for no blocks.

    The largest divisor of the row count whose rows take at most ``_BLOCK_BYTES``, if that is
    at least a quarter of it. Arrays under ``8 * _BLOCK_BYTES`` stay whole: they are in cache
    anyway, and the loop costs more than it saves (256 x 1024 float32: 1.2x slower blocked).
    """
    n = shape[-1] if shape else 0
    rows = math.prod(shape[:-1])
    if n == 0 or n > _FUSED_ROWS or rows * n * itemsize < 8 * _BLOCK_BYTES:
        return 0
    fit = min(rows // 2, _BLOCK_BYTES // (n * itemsize))
    for b in range(fit, 0, -1):
        if rows % b == 0:
            return b if 4 * b * n * itemsize >= _BLOCK_BYTES else 0
    return 0


def _row_blocks(f, x, mask, axes):
    """``f(x, mask)`` (a per-row map over the last axis, keepdims) computed block of rows by block.

    XLA:CPU (with its YNNPACK reductions) writes ``x - m`` and the sums' weights to memory as
    full arrays between the max, the sums and the output: five to ten passes over a large ``x``.
    ``lax.map`` over blocks of about ``_BLOCK_BYTES`` keeps those in cache, so memory sees one
    read of ``x`` and one write of the result (``benchmarks/bench_softmax.py``). Each row is
    reduced on its own, as in ``f(x, mask)``, though not always in the same order (the reduction
    vectorizes a block as it likes): a sum may differ in its last bits, within the accuracy the
    module docstring of :mod:`stabkit.stable_softmax` states.
    """
    b = _block_rows(x.shape, x.dtype.itemsize) if axes == (x.ndim - 1,) else 0
    if b == 0 or (mask is not None and mask.shape != x.shape):
        return f(x, mask)
    shape = x.shape
    blocks = (-1, b, shape[-1])
    if mask is None:
        out = lax.map(lambda xb: f(xb, None), x.reshape(blocks))
    else:
        out = lax.map(lambda a: f(*a), (x.reshape(blocks), mask.reshape(blocks)))
    return out.reshape(shape)


def _compensated_exp(x, m0):
    """``exp(x - m0)`` with the rounding error of the subtraction put back (Knuth's TwoSum).

    ``fl(x - m0)`` is off by up to half an ulp of ``x - m0``, so ``exp`` of it by a relative
    ``|x - m0| * eps / 2`` (64 ulp at ``x - m0 = -128``): the softmax of a far tail would lose
    its relative accuracy in float32/float64. With ``d + delta == x - m0`` exactly,
    ``exp(d) * (1 + delta)`` is as accurate as ``exp`` itself.
    """
    d = x - m0
    b = d - x
    delta = (x - (d - b)) + (-m0 - b)
    # -inf (excluded) entries and an overflowing x - m0 give inf - inf: no correction there.
    delta = jnp.where(jnp.isfinite(d), delta, 0)
    e = jnp.exp(d)
    return e + e * delta


def _log_norm(t):
    """``log(sum(exp(x - m)))`` per row from ``_stats``'s ``t``; 0 for an empty row (``t = -1``:
    its log-probabilities are -inf already), NaN for a row holding +inf or NaN (``t`` is NaN)."""
    return _log1p(jnp.maximum(t, 0))


# Three custom_jvp primitives of (x, mask) in the compute dtype, keepdims along ``axes``. Their
# JVP rules give the exact derivative on valid entries, exactly 0 on -inf or masked ones, and no NaN
# from 0 * inf on empty rows; they call the primitives themselves and use only differentiable ops,
# so grad-of-grad, jacfwd/jacrev and hessian work. Reverse mode is JAX's transpose of the rules and
# keeps only the output as a residual, like jax.nn. A row holding +inf has NaN derivatives: the
# gradient of logsumexp is the softmax, and the softmax of that row is NaN (inf / inf).


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _lse(x, mask, axes, compensate):
    m, finite, _, _, t, _ = _stats(_masked(x, mask), axes)
    # -inf for an empty row, +inf for a row with +inf, NaN for a NaN row: m itself.
    return jnp.where(finite, m + _log1p(t), m)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _softmax(x, mask, axes, compensate):
    def rows(x, mask):
        xm = _masked(x, mask)
        m, _, _, e, _, k = _stats(xm, axes)
        if compensate:  # float32/float64: the tails keep their relative accuracy
            e = _compensated_exp(xm, _floor(m))
        # An empty row: e = 0 and k = 0, so 0 everywhere. A +inf or NaN row: NaN (k is NaN).
        return e / jnp.maximum(k, 1)

    return _row_blocks(rows, x, mask, axes)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_softmax(x, mask, axes, compensate):
    del compensate  # fl(x - m) is within half an ulp of the result already
    if os.environ.get("STABKIT_PALLAS_SOFTMAX") == "1":  # opt-in GPU kernel (_softmax_pallas)
        from stabkit import _softmax_pallas

        if _softmax_pallas.fits(x, mask, axes):
            return _softmax_pallas.log_softmax(x)

    def rows(x, mask):
        # d is -inf on an empty row and the norm 0; NaN on +inf and NaN rows: no select.
        _, _, d, _, t, _ = _stats(_masked(x, mask), axes)
        return d - _log_norm(t)

    return _row_blocks(rows, x, mask, axes)


@_lse.defjvp
def _lse_jvp(axes, compensate, primals, tangents):
    x, mask = primals
    t, _ = tangents
    # d lse = <p, t>. Entries with p = 0 contribute nothing; the where drops a non-finite tangent
    # there (0 * inf) and transposes to nothing in reverse mode, where the gradient is p * ct.
    # A row holding +inf has p = NaN: its derivative is NaN, as the README's table says.
    p = _softmax(x, mask, axes, compensate)
    return _lse(x, mask, axes, compensate), _sum(p * jnp.where(p != 0, t, 0), axes)


@_softmax.defjvp
def _softmax_jvp(axes, compensate, primals, tangents):
    x, mask = primals
    t, _ = tangents
    p = _softmax(x, mask, axes, compensate)
    t = jnp.where(p != 0, t, 0)
    return p, p * (t - _sum(p * t, axes))


@_log_softmax.defjvp
def _log_softmax_jvp(axes, compensate, primals, tangents):
    x, mask = primals
    t, _ = tangents
    logp = _log_softmax(x, mask, axes, compensate)
    p = jnp.exp(logp)
    # Outputs at -inf or masked inputs are constants (-inf): tangent 0. NaN counts as live, so
    # NaN rows have NaN derivatives. A tangent at such an input meets p = 0 there and drops out
    # of the sum. The 0/1 weight is read off the input, not off logp (a finite input whose logp
    # overflows to -inf, x = -3e38 beside 3e38, keeps its exact derivative 1 - p = 1), and is a
    # product, not a select, so that reverse mode is one fused loop (a select on the cotangent
    # costs a pass over memory on XLA:CPU).
    return logp, _live(_masked(x, mask)) * (t - _sum(p * t, axes))


# Cross-entropy, as two custom_jvp primitives in the compute dtype, keepdims along ``ax``. Both
# compute the loss as a sum of non-negative terms, so it is accurate (no cancellation between the
# loss's parts), never -0.0, and finite wherever its exact value is; their derivatives are written
# from the softmax, so they stay exact where the loss itself overflows the dtype.


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _ce_index(x, mask, y, ax, compensate):
    """``-log softmax(x)[y] = (m - x_y) + log1p(t)``; ``y`` integer, keepdims along ``ax``."""
    xm = _masked(x, mask)
    m, finite, _, _, t, _ = _stats(xm, (ax,))
    in_range = (y >= 0) & (y < x.shape[ax])
    x_y = jnp.take_along_axis(xm, jnp.clip(y, 0, x.shape[ax] - 1), axis=ax)
    # A target with mass: (m - x_y) + L, two non-negative terms. A target without (-inf or
    # masked) or an empty row: +inf. A row with +inf or NaN, or a label out of range: NaN.
    loss = jnp.where(x_y > -jnp.inf, (m - x_y) + _log_norm(t), jnp.inf)
    return jnp.where(in_range & (finite | (m == -jnp.inf)), loss, jnp.nan)


@_ce_index.defjvp
def _ce_index_jvp(ax, compensate, primals, tangents):
    x, mask, y = primals
    tx = tangents[0]
    loss = _ce_index(x, mask, y, ax, compensate)
    p = _softmax(x, mask, (ax,), compensate)
    xm = _masked(x, mask)
    hit = (lax.broadcasted_iota(y.dtype, x.shape, ax) == y) & (xm > -jnp.inf)
    # d loss = <p - onehot(y), dx>: exact even where the loss overflows to inf. A target without
    # mass contributes no -1 (it is a constant), so the gradient is the limit softmax(others).
    # At the target, p_y - 1 = -(sum of the other e_i) / k = -(t - expm1(x_y - m)) / k: two
    # non-negative terms, where p_y - 1 would cancel to 0 for a dominant target (-3e-13 in
    # bfloat16 is 0 in float32's p_y - 1).
    m, finite, _, _, t, k = _stats(xm, (ax,))
    x_y = jnp.take_along_axis(xm, jnp.clip(y, 0, x.shape[ax] - 1), axis=ax)
    g_y = -(t - jnp.expm1(x_y - jnp.where(finite, m, 0))) / k
    g = jnp.where(hit, g_y, p)
    g = jnp.where((y >= 0) & (y < x.shape[ax]), g, jnp.nan)
    return loss, _sum(g * jnp.where(g != 0, tx, 0), (ax,))


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _ce_prob(x, mask, y, ax, compensate):
    """``-sum(y * log softmax(x)) = 2 * sum(y * h) + Y * log1p(t)`` with ``h = (m - x) / 2``.

    Every term is >= 0. ``h`` is halved so that ``m - x`` cannot overflow for finite inputs
    (``x = [3e38, -3e38]`` has ``m - x = 6e38``); halving is exact but where ``x / 2`` is
    subnormal, an error far below the ``Y * log(2)`` that such a term comes with.
    """
    xm = _masked(x, mask)
    m, finite, _, _, t, _ = _stats(xm, (ax,))
    # A negative label (possible only under jit, where labels cannot be checked) makes Y NaN.
    y_ok = jnp.where(y >= 0, y, jnp.nan)
    total = _sum(y_ok, (ax,))
    h = 0.5 * jnp.where(finite, m, 0) - 0.5 * xm
    loss = 2 * _sum(jnp.where(y == 0, 0, y_ok * h), (ax,)) + total * _log_norm(t)
    # An empty row: 0 if it has no label mass, +inf if it has some (on classes of probability 0).
    empty = jnp.where(total == 0, 0, jnp.where(total > 0, jnp.inf, jnp.nan))
    return jnp.where(m == -jnp.inf, empty, loss)


@_ce_prob.defjvp
def _ce_prob_jvp(ax, compensate, primals, tangents):
    x, mask, y = primals
    tx, _, ty = tangents
    loss = _ce_prob(x, mask, y, ax, compensate)
    xm = _masked(x, mask)
    valid = xm > -jnp.inf
    m, finite, _, _, t, _ = _stats(xm, (ax,))
    p = _softmax(x, mask, (ax,), compensate)
    y_ok = jnp.where(y >= 0, y, jnp.nan)
    # d loss / dx = Y p - y, d loss / dy = -log p = 2h + L, on valid entries; excluded entries
    # (-inf or masked) are constants: 0. 2 * (h * ty) keeps a zero tangent zero where 2h = inf.
    g = jnp.where(valid, _sum(y_ok, (ax,)) * p - y_ok, 0)
    h = 0.5 * jnp.where(finite, m, 0) - 0.5 * xm
    dy = 2 * (jnp.where(valid, h, 0) * ty) + jnp.where(valid, _log_norm(t), 0) * ty
    return loss, _sum(g * jnp.where(valid, tx, 0) + dy, (ax,))
