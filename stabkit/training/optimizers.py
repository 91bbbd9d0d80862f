"""The optimizers a :class:`~stabkit.training.spec.TrainSpec` names, and the chain it builds.

* :func:`optimizer_names`: the registry's names (any ``lr -> GradientTransformation`` works too).
* ``_probe_optimizer`` checks a user's factory when the spec is built (nothing compiles);
  ``_build_optimizer`` wraps the optimizer in the spec's fixes (clipping, the learning-rate
  schedule with the run's warm-up, the run's independent weight decay, skipping non-finite
  steps, loss scaling) inside the training kernel, and ``_build_rounding`` the rule that applies
  the update to low-precision parameters (round to nearest, Kahan, stochastic).
* ``schedule_multiplier``: the learning-rate multiplier ``m(t)`` of a warm-up and a schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from stabkit.fixes import (
    independent_weight_decay,
    loss_scaling,
    safe_clip_by_global_norm,
    skip_nonfinite,
)

if TYPE_CHECKING:  # only an annotation: spec.py imports this module
    from stabkit.training.spec import TrainSpec

__all__ = [
    "optimizer_names",
]


_OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
    "lion": optax.lion,
}


def optimizer_names() -> tuple[str, ...]:
    """The optimizer names :class:`TrainSpec` accepts (any ``lr -> GradientTransformation`` too).

    Examples:
        >>> optimizer_names()
        ('adagrad', 'adam', 'adamw', 'lion', 'momentum', 'nesterov', 'rmsprop', 'sgd')
    """
    return tuple(sorted(_OPTIMIZERS))


def _probe_optimizer(make: Callable, store: jnp.dtype) -> None:
    """``optimizer`` must map a traced learning rate to a working GradientTransformation.

    It is called the way :func:`train` calls it, with a traced float32 scalar, and its ``init``
    and ``update`` traced on a small parameter pytree (:func:`jax.eval_shape`: nothing compiles).
    """
    made = []

    def probe(lr):
        made.append(make(lr))
        return lr

    try:
        jax.eval_shape(probe, jax.ShapeDtypeStruct((), jnp.float32))
    except Exception as err:  # the user's factory
        raise TypeError(
            f"optimizer({make!r}) failed on a traced float32 learning rate: "
            f"{type(err).__name__}: {err}"
        ) from err
    opt = made[0]
    if not isinstance(opt, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be a name or a function lr -> optax.GradientTransformation; "
            f"optimizer(lr) returned {type(opt).__name__} {opt!r}"
        )
    params = {"w": jax.ShapeDtypeStruct((2, 3), store), "b": jax.ShapeDtypeStruct((3,), store)}

    def step(p):
        state = opt.init(p)
        return opt.update(p, state, p)

    try:
        jax.eval_shape(step, params)
    except Exception as err:
        raise TypeError(
            f"optimizer(lr) returned a GradientTransformation whose init/update failed on "
            f"{store.name} parameters: {type(err).__name__}: {err}"
        ) from err


def schedule_multiplier(
    schedule: str, warmup: jax.Array, steps: int
) -> Callable[[jax.Array], jax.Array]:
    """``count -> m(count)``: linear warm-up over ``warmup`` steps (0: none), then ``schedule``.

    ``m = min(1, (t + 1) / warmup)`` during warm-up; after it ``1`` (``"constant"``),
    ``(1 + cos(pi p)) / 2`` (``"cosine"``) or ``1 - p`` (``"linear"``) with ``p`` the fraction of
    the steps after warm-up done (0 at the end of warm-up, 1 at the last step: the last step's
    multiplier is 0). ``warmup`` may be traced (a run's data); float32.
    """
    warmup = jnp.asarray(warmup, jnp.int32)

    def m(count):
        t = jnp.asarray(count, jnp.float32)
        w = warmup.astype(jnp.float32)
        warm = jnp.where(warmup > 0, jnp.minimum(1.0, (t + 1) / jnp.maximum(w, 1.0)), 1.0)
        if schedule == "constant":
            return warm
        span = jnp.maximum(jnp.float32(steps - 1) - w, 1.0)
        p = jnp.clip((t - w) / span, 0.0, 1.0)
        decay = 0.5 * (1 + jnp.cos(jnp.pi * p)) if schedule == "cosine" else 1 - p
        return warm * decay

    return m


def _build_optimizer(spec: TrainSpec, run: Any, features: Any) -> optax.GradientTransformation:
    """The run's optimizer: its learning rate, the spec's fixes and schedule, the run's warm-up
    and independent weight decay (every run value traced; ``features`` says which fixes the
    grid uses, :class:`~stabkit.training.runs._Features`)."""
    make = _OPTIMIZERS[spec.optimizer] if isinstance(spec.optimizer, str) else spec.optimizer
    opt = make(run.lr)
    m = schedule_multiplier(spec.schedule, run.warmup, spec.steps)
    # The schedule multiplies the learning-rate-scaled update (every optimizer is linear in its
    # learning rate); the independent decay is added after it, scaled by m(t) but not by lr.
    parts = [opt]
    if features.schedule:
        parts.append(optax.scale_by_schedule(m))
    if features.weight_decay:
        parts.append(independent_weight_decay(run.weight_decay, m if features.schedule else None))
    opt = parts[0] if len(parts) == 1 else optax.chain(*parts)
    if spec.clip_norm is not None:
        opt = optax.chain(safe_clip_by_global_norm(spec.clip_norm), opt)
    if spec.max_consecutive_skips is not None:
        opt = skip_nonfinite(opt, spec.max_consecutive_skips)
    if spec.loss_scale is not None:
        opt = loss_scaling(opt, spec.loss_scale)
    return opt


def _build_rounding(spec: TrainSpec, run: Any) -> optax.GradientTransformation | None:
    """The spec's rule for applying an update to the stored parameters, None for round to
    nearest (``optax.apply_updates``)."""
    if spec.rounding == "nearest":
        return None
    from stabkit.fixes import kahan_summation, stochastic_rounding

    if spec.rounding == "kahan":
        return kahan_summation()
    key = jax.random.fold_in(jax.random.key(run.seed), _ROUNDING_STREAM)
    return stochastic_rounding(key)


#: ``fold_in(key(seed), 4)`` keys stochastic rounding (0: weights, 1: biases, 2: a sweep's
#: input, 3: the batches).
_ROUNDING_STREAM = 4
