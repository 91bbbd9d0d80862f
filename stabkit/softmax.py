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
* **+inf**: the limit of a row whose ``k`` largest entries grow together. ``logsumexp = +inf``; the
  ``+inf`` entries share the mass, ``softmax = 1/k`` and ``log_softmax = -log k`` there, and the
  rest get 0 and ``-inf`` (``jax.nn`` returns NaN for the whole row). Gradients with respect to
  ``+inf`` entries are 0.
* **Half precision** (float16, bfloat16 and the float8 formats) is computed in float32 and rounded
  once to the input dtype, so a sum of tens of thousands of terms cannot overflow and the result is
  within one ulp of the correctly rounded value.

Gradients come from ordinary JAX autodiff through "double ``where``" guards (every branch that a
``where`` discards is itself finite), so ``jit``, ``vmap``, ``grad``, ``jvp`` and higher derivatives
all work.

References:
    Blanchard, Higham & Higham, "Accurately computing the log-sum-exp and softmax functions",
    IMA J. Numer. Anal. 41 (2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from stabkit._checks import floating_array, normalize_axis

__all__ = [
    "log_softmax",
    "logsumexp",
    "naive_log_softmax",
    "naive_softmax",
    "softmax",
    "softmax_cross_entropy",
]

Axis = int | Sequence[int]


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for formats narrower than 32 bits, the dtype itself otherwise."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


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
    x = floating_array(x, name)
    axes = _axes(axis, x.ndim)
    mask = _mask(where, x.shape)
    return x, axes, mask


def _core(x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None):
    """The shared computation, in the compute dtype, keepdims along ``axes``.

    Returns ``(valid, z, s, m)``: which entries take part, the shifted inputs ``z`` (-inf where not
    valid), the row sums ``s = sum(exp(z))`` and the row maxima ``m`` (not shifted).
    """
    x = x.astype(_compute_dtype(x.dtype))
    neg_inf = jnp.array(-jnp.inf, x.dtype)
    # An entry takes part unless it is masked out or -inf. NaN != -inf, so NaN takes part and
    # propagates into the row's max and sum.
    valid = x != neg_inf
    if mask is not None:
        valid = valid & mask
    # Gradients reach x only through valid entries: this where is what makes d/dx exactly 0 for
    # -inf and masked entries.
    xv = jnp.where(valid, x, neg_inf)
    m = lax.stop_gradient(jnp.max(xv, axis=axes, keepdims=True))
    # Shift by a finite value: the max if finite; 0 for an empty row (m = -inf) or a row with +inf.
    shift = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    z = xv - shift
    # A row with +inf entries: the limit of those entries growing together. They become 0 and every
    # other entry -inf, so the +inf entries share the mass equally. No NaN from inf - inf.
    pos_inf_row = m == jnp.inf
    z = jnp.where(pos_inf_row, jnp.where(xv == jnp.inf, jnp.zeros_like(z), neg_inf), z)
    s = jnp.sum(jnp.exp(z), axis=axes, keepdims=True)
    return valid, z, s, m


def _safe_log(s: jax.Array) -> jax.Array:
    """log(s) with log(0) = -inf whose gradient is 0 there, not 0 * inf = NaN (double where).

    ``s`` is a sum of exponentials: never negative; NaN stays NaN.
    """
    empty = s == 0
    return jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, jnp.ones_like(s), s)))


def logsumexp(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, keepdims: bool = False
) -> jax.Array:
    r"""Stable :math:`\log \sum_i e^{x_i}` along ``axis``, over the entries where ``where`` is True.

    Computed as :math:`m + \log \sum_i e^{x_i - m}` with :math:`m = \max_i x_i` (finite rows), so
    ``n`` equal inputs ``c`` give ``c + log n`` rounded in the dtype for every finite ``c``.

    Args:
        x: floating-point array, any dtype; float16/bfloat16/float8 are computed in float32.
        axis: the axis (or tuple of axes) to reduce.
        where: optional boolean mask broadcastable to ``x.shape``; False entries are left out.
        keepdims: keep the reduced axes with size 1.

    Returns:
        An array of ``x``'s dtype. ``-inf`` for a row with no valid entry (gradient 0), ``+inf``
        if the row has a ``+inf`` entry, NaN if it has a NaN.

    Raises:
        TypeError: ``x`` is not floating point, or ``where`` is not boolean.
        ValueError: ``axis`` is out of range, or ``where`` does not broadcast to ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(logsumexp(jnp.array([1000.0, 1000.0])))  # naive: inf
        1000.693...
        >>> float(logsumexp(jnp.array([-jnp.inf, -jnp.inf])))
        -inf
        >>> float(logsumexp(jnp.array([1.0, 5.0]), where=jnp.array([True, False])))
        1.0
    """
    x, axes, mask = _prepare(x, axis, where)
    _, _, s, m = _core(x, axes, mask)
    shift = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    out = jnp.where(m == jnp.inf, m, shift + _safe_log(s))
    if not keepdims:
        out = jnp.squeeze(out, axis=axes)
    return out.astype(x.dtype)


def log_softmax(x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Stable :math:`\log \operatorname{softmax}(x)_i = x_i - \operatorname{logsumexp}(x)`.

    Args:
        x: floating-point array, any dtype; float16/bfloat16/float8 are computed in float32.
        axis: the axis (or tuple of axes) to normalize over.
        where: optional boolean mask broadcastable to ``x.shape``; False entries give ``-inf``.

    Returns:
        An array of ``x``'s shape and dtype. ``-inf`` at -inf and masked entries (gradient 0);
        all ``-inf`` for a row with no valid entry; NaN for a row containing NaN; for a row with
        ``k`` entries equal to ``+inf``, ``-log k`` there and ``-inf`` elsewhere.

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
    valid, z, s, _ = _core(x, axes, mask)
    # A NaN row stays NaN everywhere, its -inf and masked entries included.
    out = jnp.where(valid | jnp.isnan(s), z - _safe_log(s), -jnp.inf)
    return out.astype(x.dtype)


def softmax(x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Stable :math:`\operatorname{softmax}(x)_i = e^{x_i - m} / \sum_j e^{x_j - m}`, m = max x.

    Args:
        x: floating-point array, any dtype; float16/bfloat16/float8 are computed in float32.
        axis: the axis (or tuple of axes) to normalize over.
        where: optional boolean mask broadcastable to ``x.shape``; False entries give 0.

    Returns:
        An array of ``x``'s shape and dtype: 0 at -inf and masked entries (gradient 0), all 0 for
        a row with no valid entry, NaN for a row containing NaN, ``1/k`` at each of ``k`` entries
        equal to ``+inf``.

    Raises:
        TypeError: ``x`` is not floating point, or ``where`` is not boolean.
        ValueError: ``axis`` is out of range, or ``where`` does not broadcast to ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> softmax(jnp.full(4, 1e4, jnp.float16))  # naive_softmax: all NaN
        Array([0.25, 0.25, 0.25, 0.25], dtype=float16)
    """
    x, axes, mask = _prepare(x, axis, where)
    _, z, s, _ = _core(x, axes, mask)
    # Invalid entries have z = -inf, so exp(z) = 0; an empty row has s = 0 and is divided by 1.
    out = jnp.exp(z) / jnp.where(s == 0, jnp.ones_like(s), s)
    return out.astype(x.dtype)


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Cross-entropy :math:`-\sum_i y_i \log \operatorname{softmax}(x)_i` along ``axis``.

    Args:
        logits: floating-point array of shape ``(..., n, ...)``.
        labels: either integer class indices with ``logits``' shape minus ``axis``, or
            probabilities (floating point) with ``logits``' shape. Terms with probability 0 count
            as 0 even where the log-probability is ``-inf``.
        axis: the class axis.
        where: optional boolean mask over classes, broadcastable to ``logits.shape``.

    Returns:
        The loss, shape ``logits.shape`` minus ``axis``, in the logits' dtype. Finite (with a
        finite gradient) when a non-target logit is ``-inf`` or masked; ``+inf`` when the
        target's logit is ``-inf`` or masked, with the finite limit of the gradient (softmax of
        the other valid logits, 0 at the target); NaN for a row with a NaN logit, and
        (under ``jit``, where labels cannot be checked) for an out-of-range integer label.

    Raises:
        TypeError: non-floating logits, labels neither integer nor floating, non-boolean ``where``.
        ValueError: ``axis`` out of range, ``labels`` or ``where`` of the wrong shape, or concrete
            integer labels outside ``[0, n)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> logits = jnp.array([2.0, -jnp.inf, 0.0])
        >>> float(softmax_cross_entropy(logits, jnp.array(0)))  # optax: nan
        0.126928...
        >>> float(softmax_cross_entropy(logits, jnp.array(1)))
        inf
    """
    logits = floating_array(logits, "logits")
    (ax,) = _axes(axis, logits.ndim)
    mask = _mask(where, logits.shape)
    n = logits.shape[ax]
    try:
        y = jnp.asarray(labels)
    except TypeError as err:
        raise TypeError(f"labels must be an array, got {type(labels).__name__}") from err
    if jnp.issubdtype(y.dtype, jnp.floating):
        if y.shape != logits.shape:
            raise ValueError(
                f"probability labels must have the logits' shape {logits.shape}, got {y.shape}"
            )
        logp = log_softmax(logits, ax, where=mask).astype(_compute_dtype(logits.dtype))
        y = y.astype(logp.dtype)
        # 0 * log 0 counts as 0; the inner where keeps the discarded branch's gradient finite.
        has_mass = y != 0
        terms = jnp.where(has_mass, y * jnp.where(has_mass, logp, jnp.zeros_like(logp)), 0)
        return (-jnp.sum(terms, axis=ax)).astype(logits.dtype)
    if not jnp.issubdtype(y.dtype, jnp.integer) or y.dtype == jnp.bool_:
        raise TypeError(
            f"labels must be integer class indices or floating probabilities, got dtype {y.dtype}"
        )
    expected = logits.shape[:ax] + logits.shape[ax + 1 :]
    if y.shape != expected:
        raise ValueError(
            f"integer labels must have shape {expected} (the logits' shape {logits.shape} "
            f"without axis {ax}), got {y.shape}"
        )
    if not isinstance(y, jax.core.Tracer):
        bad = (y < 0) | (y >= n)
        if bool(jnp.any(bad)):
            raise ValueError(
                f"integer labels must lie in [0, {n}); got {y[bad][:5].tolist()} "
                f"({int(jnp.sum(bad))} out of range)"
            )
    x, axes, mask = _prepare(logits, ax, mask, "logits")
    valid, z, s, m = _core(x, axes, mask)
    lse = jnp.squeeze(_safe_log(s), axis=ax)  # log-sum-exp of the shifted row
    idx = jnp.expand_dims(jnp.clip(y, 0, n - 1), ax)
    z_t = jnp.squeeze(jnp.take_along_axis(z, idx, axis=ax), axis=ax)
    valid_t = jnp.squeeze(jnp.take_along_axis(valid, idx, axis=ax), axis=ax)
    # loss = lse - z_t, with gradient softmax - onehot on the valid entries. A target without
    # mass (-inf or masked) gives +inf, and the gradient's limit there: softmax on the other valid
    # entries, 0 at the target (no gradient ever reaches a -inf or masked entry). An empty row
    # (-inf - -inf) gives +inf with gradient 0.
    loss = lse - jnp.where(valid_t, z_t, -jnp.inf)
    loss = jnp.where(jnp.squeeze(s == 0, axis=ax), jnp.inf, loss)
    nan_row = jnp.squeeze(jnp.isnan(m), axis=ax)
    in_range = (y >= 0) & (y < n)
    loss = jnp.where(nan_row | ~in_range, jnp.nan, loss)
    return loss.astype(logits.dtype)


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
