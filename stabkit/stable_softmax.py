r"""Numerically stable softmax primitives, masks included, correct in every floating dtype.

The founding note's example: with every input equal to ``c``, the textbook
:math:`\operatorname{softmax}(x)_i = e^{x_i} / \sum_j e^{x_j}` is ``inf/inf = NaN`` once
:math:`e^c` overflows and ``0/0 = NaN`` once it underflows, although the answer is ``1/n``. Shifting
by the row maximum, :math:`z_i = x_i - \max_j x_j`, bounds every :math:`e^{z_i}` by 1 and puts at
least one 1 in the denominator, so neither can happen. That fix alone is not enough for real inputs;
this module also gets right what :mod:`jax.nn` and :mod:`optax` get wrong:

* **-inf and masked entries** (``where=False``) have probability 0, log-probability ``-inf`` and a
  gradient of exactly 0, and the gradients of the other entries stay finite and correct.
* **Rows with nothing in them** (all ``-inf`` or all masked): ``logsumexp = -inf``, ``softmax = 0``,
  ``log_softmax = -inf``, and every gradient is 0, never NaN (``jax.nn.logsumexp`` gives NaN
  gradients, ``jax.nn.log_softmax`` NaN values).
* **NaN** anywhere in a row makes that row's outputs NaN: a NaN is a result to report, not to hide.
* **+inf**: ``logsumexp = +inf`` (its true value); ``softmax`` and ``log_softmax`` of that row are
  NaN, as ``inf / inf`` is, and so are the gradients of all four functions on that row (the
  gradient of logsumexp *is* the softmax): an infinite logit means an overflow already happened
  upstream, and a NaN reports it where a zero gradient would let training carry on silently. As
  in jax.nn, reverse mode multiplies that row's NaN by its cotangent, so a +inf (or NaN) row
  gives NaN gradients even where the loss does not use it: mask or slice it off first.
* **Half precision** (float16, bfloat16 and the float8 formats) is computed in float32 and rounded
  once to the input dtype, so a sum of tens of thousands of terms cannot overflow.

Accuracy, against the exact value on the same (rounded) inputs:

* ``logsumexp = m + log1p(t)`` with ``t`` the sum of ``e^(x_i - m)`` over the entries below the
  max plus the ties at the max less one, so tiny terms are not absorbed into a leading 1
  (Blanchard, Higham & Higham); ``log_softmax = (x_i - m) - log1p(t)`` (two terms <= 0, no
  cancellation); cross-entropy as sums of non-negative terms (never -0.0, finite wherever its
  exact value is).
* float16, bfloat16, float8: within 1 ulp of the correctly rounded value.
* float32, float64: within 2 ulp, plus what the problem's conditioning allows: the rounding of
  ``x_i - m`` costs up to ``eps/2 * sum_j p_j |x_j - m|`` (absolute in log space, relative for
  probabilities; 0 where ``x_i - m`` is exact); a ``logsumexp`` that is small by cancellation
  (``m < 0 < log1p(t)``) is within about 2 ulp of ``|m|``; softmax puts the rounding of
  ``x_i - m`` back into its numerator (TwoSum), so far tails keep their relative accuracy.
  Long rows add XLA's summation error: on XLA:CPU a row of about 1,000 equal terms loses up to
  ~12 * 2^-24 relative in the sum (rows beyond ~8,192 are split into a tree by XLA and lose
  ~1 * 2^-24); a pairwise or compensated sum costs 5-8x the sum pass on XLA:CPU and is not used.
* Where the backend flushes subnormal results (XLA:CPU: float32, float64 and, through float32,
  bfloat16), results and the terms ``e^(x_i - m)`` below the smallest normal are flushed.
* float8_e4m3fn and the other ``fn``/``fnuz`` formats have no inf: a ``-inf`` result (a masked
  entry's log-probability, an empty row's logsumexp) is their NaN. float8_e8m0fnu and
  float4_e2m1fn cannot hold these results and are refused.

``benchmarks/fuzz_softmax.py`` checks all of this against a 60-digit mpmath reference.

Derivatives come from ``custom_jvp`` rules (exact on valid entries, exactly 0 on -inf or masked
ones, no ``0 * inf`` on empty rows) written with differentiable operations, so ``jit``, ``vmap``,
``grad``, ``jvp`` and higher derivatives all work, and reverse mode keeps only the output as a
residual. The forward pass is the same max / sum-exp / output sweep as :mod:`jax.nn`'s, with the
special cases repaired per row: the sum below the max and the number of ties at the max are two
sums in the one fused loop after the max (see ``_stats`` and ``benchmarks/bench_softmax.py``).

References:
    Blanchard, Higham & Higham, "Accurately computing the log-sum-exp and softmax functions",
    IMA J. Numer. Anal. 41 (2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from stabkit._checks import floating_array, is_floating_dtype, normalize_axis, strict_bool
from stabkit._numerics import compute_dtype

__all__ = [
    "log_softmax",
    "logsumexp",
    "naive_log_softmax",
    "naive_softmax",
    "softmax",
    "softmax_cross_entropy",
]

Axis = int | Sequence[int]

# Formats that cannot hold these results at all; every other real floating dtype is accepted.
_REFUSED = {
    "float8_e8m0fnu": "it has no zero and no sign, so neither p = 0 nor log p < 0",
    "float4_e2m1fn": "it has no inf and no NaN, so masked entries and NaN rows cannot be reported",
}

# log1p(t) uses XLA's log1p below this and log(u) + c/u above: XLA:CPU's float32 log1p is up to
# 2.4 ulp off for t in [0.37, 1], log(1 + t) with the rounding of 1 + t put back is 1.4.
_LOG1P_SWITCH = 0.375

# Rows up to this many entries take the fused sums of ``_stats``; longer ones XLA's own reduction.
_FUSED_ROWS = 8192


def _input(x: ArrayLike, name: str) -> jax.Array:
    x = floating_array(x, name)
    why = _REFUSED.get(jnp.dtype(x.dtype).name)
    if why is not None:
        raise TypeError(f"{name} has dtype {x.dtype}, which cannot hold a softmax result: {why}")
    return x


def _axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    if isinstance(axis, (tuple, list)):
        if not axis:
            raise ValueError("axis must name at least one axis, got an empty sequence")
        axes = tuple(normalize_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis={tuple(axis)} names the same axis twice")
        return tuple(sorted(axes))
    return (normalize_axis(axis, ndim),)


def _mask(where: ArrayLike | None, shape: tuple[int, ...]) -> jax.Array | None:
    if where is None:
        return None
    try:
        w = jnp.asarray(where)
    except TypeError as err:
        raise TypeError(f"where must be a boolean array, got {type(where).__name__}") from err
    if w.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean array, got dtype {w.dtype}")
    try:
        broadcast = jnp.broadcast_shapes(w.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(
            f"where has shape {w.shape}, which does not broadcast to the input's shape {shape}"
        )
    return w


def _prepare(x: ArrayLike, axis: Axis, where: ArrayLike | None, name: str = "x"):
    x = _input(x, name)
    axes = _axes(axis, x.ndim)
    mask = _mask(where, x.shape)
    return x, axes, mask


def _empty(shape: tuple[int, ...], axes: tuple[int, ...]) -> bool:
    return any(shape[a] == 0 for a in axes)


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


def _live(x):
    """1 where ``x > -inf``, 0 where ``x == -inf``, NaN where ``x`` is NaN or ``+inf``: the weight
    of an entry's derivative, from max, subtract and exp only (see ``_log_softmax_jvp``)."""
    return jnp.exp(x - jnp.maximum(x, jnp.finfo(x.dtype).min))


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
    ``c = sum(1 - below)`` are two sums over ``d``. No compare or select: XLA:CPU does not fuse
    those into its reductions (a ``where(d == 0, 0, e)`` sum, or a ``lax.cond`` that skips it,
    cost 1.4-1.9x jax.nn's forward time on the benchmark; this costs 1.2x, most of it the two
    sums sharing one loop). Where ``d`` is subnormal (rows of numbers below ~2^-100, and only
    where the backend keeps subnormals) an entry is split between the two sums, ``e * below +
    (1 - below)``, which is ``e`` to within rounding: ``t`` is the same.
    """
    m = jnp.max(x, axis=axes, keepdims=True)
    finite = jnp.isfinite(m)
    # x - m as jax.nn has it, with the max of an empty row taken as the most negative finite
    # number: its d is -inf, not NaN (-inf - -inf), its t = -1 and k = 0 (see _log_norm).
    d = x - jnp.maximum(m, jnp.finfo(x.dtype).min)
    e = jnp.exp(d)
    # A 0/1 weight: constant under differentiation (the JVP rules differentiate t and k for
    # higher derivatives; the slope -2^emax at d = 0 would meet the tie tangents there).
    if math.prod(x.shape[a] for a in axes) > _FUSED_ROWS:
        # Long rows: XLA:CPU's fused loop adds a row's terms one after another (2836 ulp in
        # float32 on 100,000 terms of 8e-9), its own reduction splits the row into a tree.
        u = _sum(jnp.where(d == 0, 0, e), axes)
        c = _sum(jnp.where(d == 0, 1, 0).astype(d.dtype), axes)
    else:
        below = lax.stop_gradient(_positive(-d))
        u = _sum(e * below, axes)
        c = _sum(1 - below, axes)
    return m, finite, d, e, u + (c - 1), u + c


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
    xm = _masked(x, mask)
    m, _, _, e, _, k = _stats(xm, axes)
    if compensate:  # float32/float64: the tails keep their relative accuracy
        e = _compensated_exp(xm, jnp.maximum(m, jnp.finfo(m.dtype).min))
    # An empty row: e = 0 and k = 0, so 0 everywhere. A +inf or NaN row: NaN (k is NaN there).
    return e / jnp.maximum(k, 1)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_softmax(x, mask, axes, compensate):
    del compensate  # fl(x - m) is within half an ulp of the result already
    # d is -inf on an empty row and the norm 0; NaN on +inf and NaN rows: no select, so that
    # XLA:CPU fuses the output into the sums (one loop over memory, as in jax.nn).
    _, _, d, _, t, _ = _stats(_masked(x, mask), axes)
    return d - _log_norm(t)


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


def logsumexp(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, keepdims: bool = False
) -> jax.Array:
    r"""Stable :math:`\log \sum_i e^{x_i}` along ``axis``, over the entries where ``where`` is True.

    Computed as :math:`m + \operatorname{log1p}(t)` with :math:`m = \max_i x_i` and :math:`t` the
    sum of :math:`e^{x_i - m}` over the entries below the max plus the number of ties at the max
    less one, so tiny terms are not absorbed into a leading 1 and ``n`` equal inputs ``c`` give
    ``c + log n`` rounded in the dtype for every finite ``c``.

    Accuracy (against the exact value on the same inputs): within 1 ulp in float16, bfloat16 and
    float8; within 2 ulp in float32/float64 plus the conditioning terms of the module docstring
    (the rounding of ``x_i - m``; about 2 ulp of ``|m|`` where the result is small by
    cancellation, ``m < 0 < log1p(t)``, for example ``c + log n`` near 0 with ``c ~ -log n``).

    Args:
        x: floating-point array, any dtype; float16/bfloat16/float8 are computed in float32.
        axis: the axis (or tuple of axes) to reduce.
        where: optional boolean mask broadcastable to ``x.shape``; False entries are left out.
        keepdims: keep the reduced axes with size 1 (``True`` or ``False``).

    Returns:
        An array of ``x``'s dtype. ``-inf`` for a row with no valid entry (gradient 0) and for an
        empty axis, ``+inf`` if the row has a ``+inf`` entry (gradient NaN: it is that row's
        softmax, ``inf / inf``), NaN if it has a NaN.

    Raises:
        TypeError: ``x`` is not floating point, ``where`` is not boolean, ``keepdims`` is not a
            bool.
        ValueError: ``axis`` is out of range, or ``where`` does not broadcast to ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(logsumexp(jnp.array([1000.0, 1000.0])))  # naive: inf
        1000.693...
        >>> float(logsumexp(jnp.array([-jnp.inf, -jnp.inf])))
        -inf
        >>> float(logsumexp(jnp.array([1.0, 5.0]), where=jnp.array([True, False])))
        1.0
        >>> float(logsumexp(jnp.array([0.0, -18.25])))  # log(1 + e^-18.25); jax.nn: 0.0
        1.186...e-08
    """
    keepdims = strict_bool(keepdims, "keepdims")
    x, axes, mask = _prepare(x, axis, where)
    return _logsumexp_jit(x, mask, axes, keepdims)


# The public functions validate on the host, then run one jitted core (as jax.nn's do): an eager
# call is one dispatch, not one per operation, and compiles once per shape and dtype.


@partial(jax.jit, static_argnames=("axes", "keepdims"))
def _logsumexp_jit(x, mask, axes, keepdims):
    if _empty(x.shape, axes):
        out = jnp.full(tuple(1 if a in axes else s for a, s in enumerate(x.shape)), -jnp.inf)
    else:
        c = compute_dtype(x.dtype)
        out = _lse(x.astype(c), mask, axes, c == x.dtype)
    if not keepdims:
        out = jnp.squeeze(out, axis=axes)
    return out.astype(x.dtype)


def log_softmax(x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Stable :math:`\log \operatorname{softmax}(x)_i = (x_i - m) - \operatorname{log1p}(t)`.

    ``m`` and ``t`` as in :func:`logsumexp`: the entry at the max of ``[1.5, -27.25]`` is
    ``-log1p(e^{-28.75}) = -3.3e-13``, not 0. Both terms are <= 0, so there is no cancellation:
    within 1 ulp in float16, bfloat16 and float8, 2 ulp in float32/float64 (plus the conditioning
    terms of the module docstring).

    Args:
        x: floating-point array, any dtype; float16/bfloat16/float8 are computed in float32.
        axis: the axis (or tuple of axes) to normalize over.
        where: optional boolean mask broadcastable to ``x.shape``; False entries give ``-inf``.

    Returns:
        An array of ``x``'s shape and dtype. ``-inf`` at -inf and masked entries (gradient 0);
        all ``-inf`` for a row with no valid entry; all NaN (and NaN gradients) for a row
        containing NaN or ``+inf``; an empty array for an empty axis.

    Raises:
        TypeError: ``x`` is not floating point, or ``where`` is not boolean.
        ValueError: ``axis`` is out of range, or ``where`` does not broadcast to ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> log_softmax(jnp.array([-jnp.inf, -jnp.inf]))  # jax.nn.log_softmax: [nan, nan]
        Array([-inf, -inf], dtype=float32)
        >>> log_softmax(jnp.array([0.0, 0.0, -jnp.inf]))
        Array([-0.6931472, -0.6931472,       -inf], dtype=float32)
    """
    x, axes, mask = _prepare(x, axis, where)
    return _normalized_jit(x, mask, axes, log=True)


@partial(jax.jit, static_argnames=("axes", "log"))
def _normalized_jit(x, mask, axes, log):
    """softmax (``log=False``) or log_softmax of a validated ``x``."""
    if _empty(x.shape, axes):
        return jnp.zeros(x.shape, x.dtype)
    c = compute_dtype(x.dtype)
    f = _log_softmax if log else _softmax
    return f(x.astype(c), mask, axes, c == x.dtype).astype(x.dtype)


def softmax(x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Stable :math:`\operatorname{softmax}(x)_i = e^{x_i - m} / \sum_j e^{x_j - m}`, m = max x.

    Within 1 ulp in float16, bfloat16 and float8, 2 ulp in float32/float64 plus the conditioning
    terms of the module docstring (the rounding error of ``x_i - m`` is carried into the numerator
    ``e^{x_i - m}``, so far tails keep their relative accuracy).

    Args:
        x: floating-point array, any dtype; float16/bfloat16/float8 are computed in float32.
        axis: the axis (or tuple of axes) to normalize over.
        where: optional boolean mask broadcastable to ``x.shape``; False entries give 0.

    Returns:
        An array of ``x``'s shape and dtype: 0 at -inf and masked entries (gradient 0), all 0 for
        a row with no valid entry, all NaN (and NaN gradients) for a row containing NaN or
        ``+inf``; an empty array for an empty axis.

    Raises:
        TypeError: ``x`` is not floating point, or ``where`` is not boolean.
        ValueError: ``axis`` is out of range, or ``where`` does not broadcast to ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> softmax(jnp.full(4, 1e4, jnp.float16))  # naive_softmax: all NaN
        Array([0.25, 0.25, 0.25, 0.25], dtype=float16)
    """
    x, axes, mask = _prepare(x, axis, where)
    return _normalized_jit(x, mask, axes, log=False)


def _check_labels(labels: ArrayLike, logits_shape: tuple[int, ...], ax: int):
    """``labels`` as an array, with its values checked when they are concrete (not traced)."""
    n = logits_shape[ax]
    if isinstance(labels, jax.core.Tracer):
        y, concrete = labels, None
    else:
        try:
            concrete = np.asarray(labels)
        except (TypeError, ValueError) as err:
            raise TypeError(f"labels must be an array, got {type(labels).__name__}") from err
        y = concrete
    dtype = np.dtype(y.dtype)
    floating = is_floating_dtype(dtype)
    if not floating and (not np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise TypeError(
            f"labels must be integer class indices or floating probabilities, got dtype {dtype}"
        )
    if floating:
        if tuple(y.shape) != logits_shape:
            raise ValueError(
                f"probability labels must have the logits' shape {logits_shape}, got {y.shape}"
            )
        if concrete is not None:
            with np.errstate(invalid="ignore"):
                bad = concrete.astype(np.float64) < 0
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"labels must be probabilities (>= 0); labels{list(first)} = "
                    f"{concrete[first]} ({int(bad.sum())} negative)"
                )
        return jnp.asarray(y), True
    expected = logits_shape[:ax] + logits_shape[ax + 1 :]
    if tuple(y.shape) != expected:
        raise ValueError(
            f"integer labels must have shape {expected} (the logits' shape {logits_shape} "
            f"without axis {ax}), got {y.shape}"
        )
    if concrete is not None:
        bad = (concrete < 0) | (concrete >= n)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"integer labels must lie in [0, {n}) (the {n} classes along axis {ax}); "
                f"labels{list(first)} = {concrete[first]} ({int(bad.sum())} out of range)"
            )
    return jnp.asarray(y), False


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Cross-entropy :math:`-\sum_i y_i \log \operatorname{softmax}(x)_i` along ``axis``.

    Computed as a sum of non-negative terms,
    :math:`\sum_i y_i (m - x_i) + Y \operatorname{log1p}(t)`
    (:math:`Y = \sum_i y_i`, ``m`` and ``t`` as in :func:`logsumexp`), so the loss is accurate
    to the dtype (1 ulp in half formats, 2 in float32/float64), never ``-0.0``, and finite
    wherever its exact value is (``x = [3e38, -3e38]``, ``y = [0.75, 0.25]`` gives 1.5e38, not
    inf). The gradient, ``Y softmax(x) - y`` (``softmax(x) - onehot`` for integer labels), is
    written by hand, so it stays exact even where the loss overflows the dtype.

    Args:
        logits: floating-point array of shape ``(..., n, ...)``.
        labels: either integer class indices with ``logits``' shape minus ``axis``, or
            probabilities (floating point, ``>= 0``) with ``logits``' shape. Probabilities need
            not sum to 1 (label smoothing, weighted targets): the loss is the formula above for
            any non-negative ``y``. Terms with probability 0 count as 0 even where the
            log-probability is ``-inf``. Labels are checked when they are concrete; under
            ``jit`` they cannot be, and a row with a label out of ``[0, n)`` or a negative
            probability gets a NaN loss and NaN gradient (reported, not hidden).
        axis: the class axis.
        where: optional boolean mask over classes, broadcastable to ``logits.shape``.

    Returns:
        The loss, shape ``logits.shape`` minus ``axis``, in the logits' dtype. Finite (with a
        finite gradient) when a non-target logit is ``-inf`` or masked; ``+inf`` when the
        target's logit is ``-inf`` or masked, with the finite limit of the gradient (softmax of
        the other valid logits, 0 at the target); NaN (NaN gradient) for a row with a NaN or
        ``+inf`` logit. With ``n = 0`` classes, probability labels give 0 (an empty sum).

    Raises:
        TypeError: non-floating logits, labels neither integer nor floating, non-boolean ``where``.
        ValueError: ``axis`` out of range, ``labels`` or ``where`` of the wrong shape, concrete
            integer labels outside ``[0, n)``, or concrete negative probabilities; the message
            names the first bad index.

    Examples:
        >>> import jax.numpy as jnp
        >>> logits = jnp.array([2.0, -jnp.inf, 0.0])
        >>> float(softmax_cross_entropy(logits, jnp.array(0)))  # optax: nan
        0.126928...
        >>> float(softmax_cross_entropy(logits, jnp.array(1)))
        inf
        >>> float(softmax_cross_entropy(jnp.array([10.0, -10.0]), 0))  # not -0.0
        2.06...e-09
    """
    logits = _input(logits, "logits")
    ax = normalize_axis(axis, logits.ndim)
    mask = _mask(where, logits.shape)
    y, probabilities = _check_labels(labels, logits.shape, ax)
    return _cross_entropy_jit(logits, mask, y, ax, probabilities)


@partial(jax.jit, static_argnames=("ax", "probabilities"))
def _cross_entropy_jit(logits, mask, y, ax, probabilities):
    c = compute_dtype(logits.dtype)
    batch = logits.shape[:ax] + logits.shape[ax + 1 :]
    if logits.shape[ax] == 0:  # no class: an empty sum, or no valid label (NaN under jit)
        return jnp.full(batch, 0 if probabilities else jnp.nan, logits.dtype)
    x = logits.astype(c)
    if probabilities:
        loss = _ce_prob(x, mask, y.astype(c), ax, c == logits.dtype)
    else:
        loss = _ce_index(x, mask, jnp.expand_dims(y, ax), ax, c == logits.dtype)
    return jnp.squeeze(loss, ax).astype(logits.dtype)


def naive_softmax(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""The textbook :math:`e^{x_i} / \sum_j e^{x_j}`, in ``x``'s own dtype, exactly as the note.

    Kept to demonstrate the failure: with ``n`` equal inputs ``c`` it is ``inf/inf = NaN`` once
    :math:`e^c` overflows (float16: ``c >= 12``) and ``0/0 = NaN`` once it underflows. Use
    :func:`softmax` instead.

    Examples:
        >>> import jax.numpy as jnp
        >>> naive_softmax(jnp.full(2, 12.0, jnp.float16))
        Array([nan, nan], dtype=float16)
    """
    x = floating_array(x)
    (ax,) = _axes(axis, x.ndim)
    e = jnp.exp(x)
    return e / jnp.sum(e, axis=ax, keepdims=True)


def naive_log_softmax(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""The textbook :math:`\log(e^{x_i} / \sum_j e^{x_j})`, in ``x``'s own dtype.

    Kept to demonstrate the failure; use :func:`log_softmax` instead.

    Examples:
        >>> import jax.numpy as jnp
        >>> naive_log_softmax(jnp.full(2, -1000.0))
        Array([nan, nan], dtype=float32)
    """
    return jnp.log(naive_softmax(x, axis))
