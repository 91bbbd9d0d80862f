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
sums after the max (see ``_softmax_core._stats``). Over the last axis of a large array, softmax and
log_softmax run block of rows by block, so that ``x - m`` and the sums' weights stay in cache
(``_softmax_core._row_blocks`` and ``benchmarks/bench_softmax.py``).

References:
    Blanchard, Higham & Higham, "Accurately computing the log-sum-exp and softmax functions",
    IMA J. Numer. Anal. 41 (2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import floating_array, is_floating_dtype, normalize_axis, strict_bool
from stabkit._numerics import compute_dtype
from stabkit._softmax_core import _ce_index, _ce_prob, _log_softmax, _lse, _softmax

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
