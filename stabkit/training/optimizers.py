"""The optimizers a :class:`~stabkit.training.spec.TrainSpec` names, and the chain it builds.

* :func:`optimizer_names`: the registry's names (any ``lr -> GradientTransformation`` works too).
* ``_probe_optimizer`` checks a user's factory when the spec is built (nothing compiles);
  ``_build_optimizer`` wraps the optimizer in the spec's fixes (clipping, skipping non-finite
  steps, loss scaling) inside the training kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from stabkit.fixes import loss_scaling, safe_clip_by_global_norm, skip_nonfinite

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


def _build_optimizer(spec: TrainSpec, lr: jax.Array) -> optax.GradientTransformation:
    make = _OPTIMIZERS[spec.optimizer] if isinstance(spec.optimizer, str) else spec.optimizer
    opt = make(lr)
    if spec.clip_norm is not None:
        opt = optax.chain(safe_clip_by_global_norm(spec.clip_norm), opt)
    if spec.max_consecutive_skips is not None:
        opt = skip_nonfinite(opt, spec.max_consecutive_skips)
    if spec.loss_scale is not None:
        opt = loss_scaling(opt, spec.loss_scale)
    return opt
