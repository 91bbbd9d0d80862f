"""Dynamic loss scaling for float16 and bfloat16 training: the rule, its state, the transformation.

References:
    P. Micikevicius et al., "Mixed Precision Training", ICLR 2018 (sec. 3.2, loss scaling).
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

from stabkit._checks import INT32_MAX, bounded_int, finite_float, is_floating_dtype
from stabkit._numerics import compute_dtype
from stabkit.fixes.norms import _floating_leaves, all_finite
from stabkit.fixes.skipping import _check_state, _tree_select


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
        period = bounded_int(self.period, "period", 1, INT32_MAX, "the counter is int32")
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
