"""The standard fixes for exploding gradients and float16 underflow, as optax transformations.

Each fix is an ``optax.GradientTransformation`` (an ``init``/``update`` pair of pure functions with
a NamedTuple state) that composes with any optimizer, under ``jit`` and ``vmap``:

* :func:`safe_clip_by_global_norm`: clip the update to a maximum global norm. Unlike
  ``optax.clip_by_global_norm`` the norm never overflows (it is computed in at least float32 and
  scaled by the largest entry, so float16 updates of norm above 256 are clipped, not zeroed), a
  zero norm gives no NaN, and an infinite entry does not turn into NaN (see the function for what
  happens to inf and NaN).
* :func:`skip_nonfinite`: wrap an optimizer so that a step whose gradient (or whose update) holds
  an inf or NaN is skipped, the inner state untouched, at most ``max_consecutive_skips`` times in
  a row. ``optax.apply_if_finite`` checks only the update; ``optax.zero_nans`` zeroes NaN but
  lets inf through and counts nothing.
* :func:`loss_scaling` with a :class:`DynamicLossScale` rule: dynamic loss scaling for float16 and
  bfloat16 training. Multiply the loss by :func:`loss_scale_of` the optimizer state before
  differentiating; the transformation divides the gradient by the scale (in float32), skips the
  step on a non-finite gradient and adjusts the scale: multiplied by ``factor`` after ``period``
  consecutive finite steps, divided by ``factor`` on a non-finite gradient, never below
  ``min_scale`` (which may be below 1) and never grown to inf. These are jmp's
  ``DynamicLossScale.adjust`` and PyTorch's ``GradScaler.update`` rules (the tests replay both).
  The rule's constants live in the transformation, the state holds only arrays, so the state
  survives ``jax.tree`` flatten/unflatten whole (jmp's loses ``min_loss_scale`` there); the scale
  may have any floating dtype, float16 included.

References:
    P. Micikevicius et al., "Mixed Precision Training", ICLR 2018 (sec. 3.2, loss scaling).
    R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty of training recurrent neural
    networks", ICML 2013 (sec. 3.2, gradient norm clipping).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from jax.typing import DTypeLike

from stabkit._checks import bounded_int, finite_float, is_floating_dtype
from stabkit._numerics import compute_dtype, exponent, pow2, safe_sqrt

__all__ = [
    "DynamicLossScale",
    "LossScaleState",
    "SkipState",
    "all_finite",
    "loss_scale_of",
    "loss_scaling",
    "safe_clip_by_global_norm",
    "safe_global_norm",
    "skip_nonfinite",
]


#: The loss scale's and the skip counter's counters are int32.
_INT32_MAX = int(np.iinfo(np.int32).max)


def _floating_leaves(tree: Any, name: str = "updates") -> list[jax.Array]:
    """The leaves of ``tree`` as floating arrays; TypeError naming ``name`` and the leaf otherwise.

    Strings and other non-arrays are refused here (``"abc"`` is a pytree leaf, and JAX would
    fail on it deep inside); Python floats and NumPy scalars are accepted.
    """
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    except Exception as err:  # a broken pytree node
        raise TypeError(f"{name} must be a pytree of floating-point arrays: {err}") from err
    leaves = []
    for path, x in flat:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if isinstance(x, (bool, np.bool_, str, bytes)) or not (
            isinstance(x, (jax.Array, np.ndarray, np.generic, float, int))
            or hasattr(x, "__jax_array__")
        ):
            raise TypeError(
                f"{name} must be a pytree of floating-point arrays, got {where} = "
                f"{type(x).__name__} {x!r:.80}"
            )
        # the dtype is read before JAX sees the leaf: an int beyond int64 would overflow there
        dtype = np.dtype(np.float32) if isinstance(x, float) else getattr(x, "dtype", None)
        if dtype is None or not is_floating_dtype(dtype):
            kind = f"dtype {dtype}" if dtype is not None else type(x).__name__
            raise TypeError(
                f"{name} must be floating-point arrays, got {where} of {kind} {x!r:.80}"
            )
        leaves.append(x)
    return [jnp.asarray(x) for x in leaves]  # converted once every leaf has passed


def all_finite(tree: Any) -> jax.Array:
    """A boolean scalar: True when every entry of every leaf is finite (no inf, no NaN).

    Raises:
        TypeError: a leaf that is not a floating-point array (named by its path in ``tree``).

    Examples:
        >>> all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])})
        Array(False, dtype=bool)
        >>> all_finite({})
        Array(True, dtype=bool)
    """
    leaves = _floating_leaves(tree, "tree")
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def _finite_norm(leaves: list[jax.Array]) -> jax.Array:
    """The global norm of the finite entries, scaled by the largest so that it cannot overflow.

    The scale is a power of two applied as two multiplications by normal numbers: dividing by the
    largest entry would be a multiplication by its reciprocal (XLA's rewrite), and above 2**126
    that reciprocal is subnormal and flushed to 0 on CPU.
    """
    dtype = compute_dtype(jnp.result_type(*leaves)) if leaves else jnp.dtype(jnp.float32)
    if not leaves:
        return jnp.zeros((), dtype)
    finite = [jnp.where(jnp.isfinite(x), x, 0).astype(dtype) for x in leaves]
    big = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0) for x in finite]))
    # big = m * 2**e with m in [0.5, 1); the sum of squares of x * 2**-e is at most the size.
    # At big == 0 (or a subnormal big that reads as 0) e is 0 and the norm is 0: no 0/0 anywhere.
    # (zero and subnormals give the smallest normal exponent, minexp).
    e = jnp.maximum(exponent(big) + 1, jnp.finfo(dtype).minexp)
    lo, hi = e // 2, e - e // 2
    down = [pow2(-lo, dtype), pow2(-hi, dtype)]
    sq = sum(jnp.sum(jnp.square(x * down[0] * down[1])) for x in finite)
    return safe_sqrt(sq) * pow2(lo, dtype) * pow2(hi, dtype)


def safe_global_norm(tree: Any) -> jax.Array:
    """The global 2-norm :math:`\\sqrt{\\sum_i g_i^2}` of a pytree, without overflow.

    Computed in ``compute_dtype(dtype)`` as :math:`m \\sqrt{\\sum_i (g_i/m)^2}` with
    :math:`m = \\max_i |g_i|`, so it is finite whenever it is representable in that dtype (float16
    leaves of norm up to float32's max; ``optax.global_norm`` overflows to inf above 256 for
    float16). Returns inf if any entry is infinite, NaN if any is NaN (and no entry is inf).

    Args:
        tree: a pytree of floating arrays.

    Returns:
        A scalar of dtype ``compute_dtype(leaf dtype)``: float32, float64 for float64 leaves.

    Raises:
        TypeError: a leaf that is not a floating-point array (a string, an int, a bool, a PRNG
            key...), named by its path: ``tree['w']``.

    Examples:
        >>> safe_global_norm({"w": "abc"})
        Traceback (most recent call last):
        ...
        TypeError: tree must be a pytree of floating-point arrays, got tree['w'] = str 'abc'

        >>> g = {"w": jnp.full((4,), 300.0, jnp.float16)}
        >>> safe_global_norm(g), optax.tree.norm(g)
        (Array(600., dtype=float32), Array(inf, dtype=float16))
    """
    leaves = _floating_leaves(tree, "tree")
    norm = _finite_norm(leaves)
    if not leaves:
        return norm
    any_inf = jnp.any(jnp.asarray([jnp.any(jnp.isinf(x)) for x in leaves]))
    any_nan = jnp.any(jnp.asarray([jnp.any(jnp.isnan(x)) for x in leaves]))
    return jnp.where(any_inf, jnp.inf, jnp.where(any_nan, jnp.nan, norm)).astype(norm.dtype)


def safe_clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the update down to global norm ``max_norm`` when it is larger; overflow-free.

    For a finite update :math:`g` with norm :math:`\\|g\\| > c` the result is
    :math:`g \\cdot c / \\|g\\|`, computed in float32 (at least) and rounded once to each leaf's
    dtype; a smaller update is returned unchanged. Non-finite input, documented and tested:

    * **inf entries** (and no NaN): the update becomes the limit of the clipped update as those
      entries grow, the direction of the infinite entries only: each becomes
      :math:`\\pm c/\\sqrt{k}` (:math:`k` infinite entries in all) and every finite entry 0. Its
      norm is exactly ``max_norm``, and no NaN appears (``optax.clip_by_global_norm`` gives
      ``inf * 0 = NaN`` there).
    * **NaN entries** stay NaN, nothing can be said about them; the other entries are clipped as if
      the NaN entries were absent. Chain :func:`skip_nonfinite` (or :func:`loss_scaling`) to drop
      such a step.

    Args:
        max_norm: the largest global norm allowed, > 0.

    Returns:
        An ``optax.GradientTransformation`` with an empty state.

    Raises:
        ValueError: ``max_norm`` is not a finite number > 0.

    Examples:
        >>> clip = safe_clip_by_global_norm(1.0)
        >>> g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([jnp.inf, 1.0])}
        >>> clip.update({"a": g["a"]}, clip.init(g))[0]["a"]
        Array([0.6, 0.8], dtype=float32)
        >>> clip.update(g, clip.init(g))[0]
        {'a': Array([0., 0.], dtype=float32), 'b': Array([1., 0.], dtype=float32)}
        >>> g16 = {"w": jnp.full((4,), 300.0, jnp.float16)}  # norm 600 overflows float16
        >>> clip.update(g16, clip.init(g16))[0]["w"]
        Array([0.5, 0.5, 0.5, 0.5], dtype=float16)
    """
    max_norm = finite_float(max_norm, "max_norm", positive=True)

    def init_fn(params):
        del params  # stateless
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        leaves = _floating_leaves(updates, "updates")
        if not leaves:
            return updates, state
        dtype = compute_dtype(jnp.result_type(*leaves))
        norm = _finite_norm(leaves)
        n_inf = sum(jnp.sum(jnp.isinf(x), dtype=jnp.int32) for x in leaves)
        # Double `where` again: scale = c/norm only where it is needed, so norm = 0 never divides.
        over = norm > max_norm
        scale = jnp.where(over, max_norm / jnp.where(over, norm, 1), 1).astype(dtype)
        inf_value = (max_norm / jnp.sqrt(jnp.maximum(n_inf, 1))).astype(dtype)

        def clip(x):
            wide = x.astype(dtype)
            finite_part = jnp.where(n_inf > 0, jnp.zeros_like(wide), wide * scale)
            out = jnp.where(jnp.isinf(wide), jnp.sign(wide) * inf_value, finite_part)
            return jnp.where(jnp.isnan(wide), wide, out).astype(x.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


class SkipState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
        inner_state: the wrapped optimizer's state (unchanged by a skipped step).
        consecutive: int32, non-finite steps in a row so far (0 after a finite step).
        total: int32, non-finite steps so far (skipped or let through).
        last_finite: bool, whether the last step was finite.
    """

    inner_state: Any
    consecutive: jax.Array
    total: jax.Array
    last_finite: jax.Array


def _check_state(state: Any, kind: type, owner: str) -> None:
    if not isinstance(state, kind):
        raise TypeError(
            f"state must be the {kind.__name__} that {owner}'s init returned, got "
            f"{type(state).__name__}"
        )


def _tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def skip_nonfinite(
    inner: optax.GradientTransformation, max_consecutive_skips: int
) -> optax.GradientTransformation:
    """Wrap ``inner`` so that steps with an inf or NaN gradient or update are skipped.

    A step is non-finite when the incoming gradient or ``inner``'s update has an inf or NaN entry.
    A non-finite step returns zero updates and keeps ``inner``'s state (an Adam moment never sees
    the NaN), up to ``max_consecutive_skips`` such steps in a row. The next non-finite step after
    that is let through, NaN and all, as ``optax.apply_if_finite`` does: skipping for ever would
    hide a run that has died (its loss stays frozen); letting it through makes the failure show as
    a non-finite loss that :func:`stabkit.diagnose` reports. A finite step resets the count.

    Args:
        inner: the optimizer (or chain) to protect.
        max_consecutive_skips: how many non-finite steps in a row to skip, >= 0.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`SkipState`.

    Raises:
        ValueError: ``max_consecutive_skips`` < 0 or above 2**31 - 1 (the counter is int32).
        TypeError: ``inner`` is not a GradientTransformation; later, ``update`` given a pytree
            that is not floating arrays or a state that is not a :class:`SkipState`.

    Examples:
        >>> opt = skip_nonfinite(optax.sgd(0.1), max_consecutive_skips=2)
        >>> p = jnp.ones(2)
        >>> s = opt.init(p)
        >>> u, s = opt.update(jnp.array([jnp.nan, 1.0]), s, p)
        >>> u, int(s.consecutive), int(s.total)
        (Array([0., 0.], dtype=float32), 1, 1)
        >>> u, s = opt.update(jnp.array([1.0, 1.0]), s, p)
        >>> u, int(s.consecutive)
        (Array([-0.1, -0.1], dtype=float32), 0)
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"inner must be an optax.GradientTransformation, got {type(inner).__name__}"
        )
    max_skips = bounded_int(
        max_consecutive_skips, "max_consecutive_skips", 0, _INT32_MAX, "the counter is int32"
    )

    def init_fn(params):
        zero = jnp.zeros((), jnp.int32)
        return SkipState(inner.init(params), zero, zero, jnp.ones((), bool))

    def update_fn(updates, state, params=None, **extra):
        _floating_leaves(updates, "updates")
        _check_state(state, SkipState, "skip_nonfinite")
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        finite = all_finite(updates) & all_finite(new_updates)
        skip = ~finite & (state.consecutive < max_skips)
        out = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
        inner_state = _tree_select(skip, state.inner_state, new_inner)
        consecutive = jnp.where(finite, 0, state.consecutive + 1).astype(jnp.int32)
        total = (state.total + (~finite).astype(jnp.int32)).astype(jnp.int32)
        return out, SkipState(inner_state, consecutive, total, finite)

    return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------------------- loss scaling


@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """The rule of dynamic loss scaling (constants only; the running values are a state).

    After ``period`` consecutive steps with finite gradients the scale is multiplied by ``factor``
    (unless that would overflow the scale's dtype to inf: then it stays); a step with a non-finite
    gradient divides it by ``factor``, but not below ``min_scale``, and restarts the count. The
    defaults are jmp's ``DynamicLossScale`` (period 2000, factor 2, minimum 1) with PyTorch's
    initial scale :math:`2^{16}` (``GradScaler``: growth 2, backoff 1/2, interval 2000, no minimum,
    which is ``min_scale`` = the dtype's smallest normal number).

    Attributes:
        initial_scale: the first scale, finite and > 0 in ``dtype``.
        period: finite steps in a row before the scale grows, 1..2**31 - 1 (an int32 count).
        factor: the growth factor, > 1 and finite once rounded to ``dtype`` (1 + 1e-5 is 1 in
            float16); the backoff divides by it.
        min_scale: the smallest scale, > 0 (below 1 is allowed: a loss whose gradients overflow
            even unscaled can then be scaled *down*).
        dtype: the scale's floating dtype (float16, bfloat16, float32, float64, float8). A
            float64 rule is made and used inside ``jax.enable_x64(True)`` (:func:`stabkit.train`
            enters it itself): :meth:`init` and :meth:`adjust` refuse to run without it, since
            JAX would silently compute the scale in float32.

    Raises:
        ValueError: a value out of range (named in the message).
        TypeError: a non-floating ``dtype`` (None included: it is NumPy's float64).

    Examples:
        >>> rule = DynamicLossScale(initial_scale=8.0, period=2, min_scale=0.5)
        >>> s = rule.init()
        >>> for finite in (True, True, False, False, False, False, False):
        ...     s = rule.adjust(s, finite)
        ...     print(float(s.scale), int(s.counter), end="; ")
        8.0 1; 16.0 0; 8.0 0; 4.0 0; 2.0 0; 1.0 0; 0.5 0;
    """

    initial_scale: float = 2.0**16
    period: int = 2000
    factor: float = 2.0
    min_scale: float = 1.0
    dtype: DTypeLike = jnp.float32

    def __post_init__(self):
        # None is NumPy's float64, not "no dtype"
        if self.dtype is None or not is_floating_dtype(self.dtype):
            raise TypeError(f"dtype must be a floating-point dtype, got {self.dtype!r}")
        dtype = jnp.dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype)
        period = bounded_int(self.period, "period", 1, _INT32_MAX, "the counter is int32")
        object.__setattr__(self, "period", period)
        factor = finite_float(self.factor, "factor", positive=True)
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        fmax = float(ml_dtypes.finfo(dtype).max)
        # The rule multiplies and divides in ``dtype``: a factor that rounds to 1 there would
        # freeze the scale, one that overflows would send it to min_scale at the first backoff.
        rounded = float(np.asarray(factor, dtype=dtype)) if factor <= fmax else np.inf
        if not 1 < rounded <= fmax:
            raise ValueError(
                f"factor={factor} rounds to {rounded} in {dtype.name}: it must be > 1 and finite "
                f"there (at most {fmax:.6g})"
            )
        object.__setattr__(self, "factor", factor)
        for name in ("initial_scale", "min_scale"):
            value = finite_float(getattr(self, name), name, positive=True)
            if value > fmax or float(np.asarray(value, dtype=dtype)) == 0:
                raise ValueError(f"{name}={value} is not a positive finite {dtype.name} number")
            object.__setattr__(self, name, value)
        if self.min_scale > self.initial_scale:
            raise ValueError(
                f"min_scale={self.min_scale} exceeds initial_scale={self.initial_scale}"
            )

    def _check_x64(self) -> None:
        # Outside ``enable_x64`` JAX would silently make a float64 scale float32.
        if jax.dtypes.canonicalize_dtype(self.dtype) != self.dtype:
            raise ValueError(
                f"DynamicLossScale(dtype={self.dtype.name}) needs JAX's 64-bit mode: use it inside "
                "`with jax.enable_x64(True):` (stabkit.train enters it itself for a float64 "
                f"rule), otherwise JAX would compute the scale in "
                f"{jax.dtypes.canonicalize_dtype(self.dtype).name}"
            )

    def init(self) -> LossScaleState:
        """The state before the first step: ``initial_scale`` and a zero count."""
        self._check_x64()
        return LossScaleState(
            jnp.asarray(self.initial_scale, self.dtype),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )

    def adjust(self, state: LossScaleState, finite: Any) -> LossScaleState:
        """The state after a step whose gradients were ``finite`` (a boolean scalar).

        ``counter`` counts consecutive finite steps modulo ``period`` (jmp's ``counter``,
        PyTorch's ``growth_tracker``); ``skipped`` counts non-finite steps.
        """
        self._check_x64()
        _check_state(state, LossScaleState, "DynamicLossScale")
        if not isinstance(finite, (bool, np.bool_, jax.Array, np.ndarray)):
            raise TypeError(
                f"finite must be a boolean scalar, got {type(finite).__name__} {finite!r:.80}"
            )
        if not isinstance(finite, (bool, np.bool_)):  # an array: read before JAX sees it
            dtype, shape = finite.dtype, tuple(finite.shape)
            boolean = jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.integer)
            if shape != () or not boolean:
                raise TypeError(
                    f"finite must be a boolean (or 0/1 integer) scalar, got {dtype}{list(shape)}"
                )
        finite = jnp.asarray(finite).astype(bool)
        scale = state.scale
        if scale.dtype != self.dtype:
            raise TypeError(
                f"state.scale has dtype {scale.dtype.name}, the rule's is {self.dtype.name}: use "
                "the state this rule's init made"
            )
        grown = scale * jnp.asarray(self.factor, scale.dtype)
        # PyTorch keeps the scale when growth would overflow it; jmp would store inf.
        grown = jnp.where(jnp.isfinite(grown), grown, scale)
        due = state.counter == self.period - 1
        shrunk = jnp.maximum(
            scale / jnp.asarray(self.factor, scale.dtype), jnp.asarray(self.min_scale, scale.dtype)
        )
        new_scale = jnp.where(finite, jnp.where(due, grown, scale), shrunk)
        counter = jnp.where(finite & ~due, state.counter + 1, 0).astype(jnp.int32)
        skipped = (state.skipped + (~finite).astype(jnp.int32)).astype(jnp.int32)
        return LossScaleState(new_scale.astype(scale.dtype), counter, skipped)


class LossScaleState(NamedTuple):
    """The running values of a :class:`DynamicLossScale` (arrays only: a plain pytree).

    Attributes:
        scale: the current loss scale, a scalar of the rule's dtype.
        counter: int32, consecutive finite steps since the scale last changed (mod ``period``).
        skipped: int32, steps skipped for a non-finite gradient so far.
    """

    scale: jax.Array
    counter: jax.Array
    skipped: jax.Array


class LossScalingState(NamedTuple):
    """State of :func:`loss_scaling`: the loss scale's state and the wrapped optimizer's."""

    loss_scale: LossScaleState
    inner_state: Any


def loss_scaling(
    inner: optax.GradientTransformation, rule: DynamicLossScale | None = None
) -> optax.GradientTransformation:
    """Dynamic loss scaling around ``inner``: unscale, skip non-finite steps, adjust the scale.

    Usage: multiply the loss by ``loss_scale_of(opt_state)`` before differentiating and pass the
    (scaled) gradient to ``update``. The gradient is divided by the scale in
    ``compute_dtype(dtype)`` and cast back to its own dtype: keep float32 master weights
    (differentiate through a cast to float16) so that the unscaled gradient is float32, since a
    float16 gradient would underflow again once divided by the scale. If any entry of it is inf
    or NaN, the step is skipped (zero updates, ``inner``'s state kept) and the scale backs off;
    otherwise ``inner`` runs on the unscaled gradient. Either way
    :meth:`DynamicLossScale.adjust` updates the scale.

    Args:
        inner: the optimizer (or chain) that receives unscaled gradients.
        rule: the scaling rule; default ``DynamicLossScale()``.

    Returns:
        An ``optax.GradientTransformation`` whose state is a ``LossScalingState``.

    Examples:
        float32 master weights, a float16 forward pass whose gradient (1e-8) underflows:

        >>> opt = loss_scaling(optax.sgd(1.0), DynamicLossScale(initial_scale=1024.0, period=1))
        >>> p = jnp.zeros(2)
        >>> s = opt.init(p)
        >>> c = jnp.float16(1e-4)
        >>> loss = lambda p: jnp.sum(p.astype(jnp.float16) * c) * c
        >>> jax.grad(loss)(p)
        Array([0., 0.], dtype=float32)
        >>> g = jax.grad(lambda p: loss(p) * loss_scale_of(s).astype(jnp.float16))(p)
        >>> u, s = opt.update(g, s, p)
        >>> u, float(loss_scale_of(s))  # the scale grew after period = 1 finite step
        (Array([-1.0011718e-08, -1.0011718e-08], dtype=float32), 2048.0)
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"inner must be an optax.GradientTransformation, got {type(inner).__name__}"
        )
    rule = DynamicLossScale() if rule is None else rule
    if not isinstance(rule, DynamicLossScale):
        raise TypeError(f"rule must be a DynamicLossScale, got {type(rule).__name__}")

    def init_fn(params):
        return LossScalingState(rule.init(), inner.init(params))

    def update_fn(updates, state, params=None, **extra):
        _floating_leaves(updates, "updates")
        _check_state(state, LossScalingState, "loss_scaling")
        scale = state.loss_scale.scale

        def unscale(g):
            wide = compute_dtype(g.dtype)
            return (g.astype(wide) / scale.astype(wide)).astype(g.dtype)

        grads = jax.tree.map(unscale, updates)
        finite = all_finite(updates) & all_finite(grads)
        # A skipped step still runs `inner` (under jit both branches run anyway); feed it zeros
        # so its discarded result cannot raise floating-point traps in debug modes.
        safe = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        new_updates, new_inner = inner.update(safe, state.inner_state, params, **extra)
        out = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        inner_state = _tree_select(finite, new_inner, state.inner_state)
        return out, LossScalingState(rule.adjust(state.loss_scale, finite), inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def loss_scale_of(opt_state: Any) -> jax.Array:
    """The current loss scale inside an optimizer state that holds one :func:`loss_scaling`.

    Searches nested states (``optax.chain`` tuples, wrappers); the first ``LossScaleState``
    found wins.

    Raises:
        ValueError: no loss scale in ``opt_state``.

    Examples:
        >>> opt = optax.chain(optax.add_decayed_weights(1e-4), loss_scaling(optax.adam(1e-3)))
        >>> float(loss_scale_of(opt.init(jnp.zeros(3))))
        65536.0
    """
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, LossScaleState))
        if isinstance(x, LossScaleState)
    ]
    if not found:
        raise ValueError(
            "opt_state holds no LossScaleState: build the optimizer with stabkit.loss_scaling"
        )
    return found[0].scale
