"""Independent weight decay: :func:`independent_weight_decay`.

AdamW (Loshchilov and Hutter 2019) decouples the decay from the gradient but multiplies it by the
learning rate, :math:`\\theta \\leftarrow \\theta - \\eta_t (u_t + \\lambda \\theta)`, so that
sweeping the learning rate also sweeps the decay. Wortsman et al. (2023, sec. 3.2.2) make it
*independent*: :math:`\\theta \\leftarrow \\theta - \\eta_t u_t - m_t \\lambda \\theta`, with
:math:`m_t` the schedule's multiplier (warm-up and decay) but not the learning rate itself,
which keeps the learning-rate sensitivity of small transformers low. ``optax.adamw`` is the
first form; this transformation, chained after any optimizer (already scaled by its learning
rate), gives the second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stabkit._checks import finite_float

__all__ = [
    "IndependentWeightDecayState",
    "independent_weight_decay",
]


class IndependentWeightDecayState(NamedTuple):
    """The step count the schedule multiplier is evaluated at (int32)."""

    count: jax.Array


def independent_weight_decay(
    weight_decay: float | jax.Array,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
) -> optax.GradientTransformation:
    """Add :math:`-m_t \\lambda \\theta` to the updates: a decay not scaled by the learning rate.

    Args:
        weight_decay: :math:`\\lambda >= 0`, a number or a traced scalar (a run's data; a traced
            value is not checked).
        schedule: ``count -> m_t``, the learning-rate schedule's multiplier (1 at the peak); None
            is 1 throughout.

    Returns:
        An ``optax.GradientTransformation`` whose ``update`` needs ``params``; the decay is
        computed in the parameters' dtype.

    Raises:
        ValueError: a negative or non-finite ``weight_decay``; ``update`` without ``params``.
        TypeError: a ``schedule`` that is not callable.

    Examples:
        >>> import optax
        >>> opt = optax.chain(optax.sgd(0.1), independent_weight_decay(0.01))
        >>> p = jnp.array([1.0, -2.0])
        >>> u, _ = opt.update(jnp.zeros(2), opt.init(p), p)
        >>> u.tolist()
        [-0.009999999776482582, 0.019999999552965164]
    """
    if not isinstance(weight_decay, jax.core.Tracer):
        if finite_float(weight_decay, "weight_decay") < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if schedule is not None and not callable(schedule):
        raise TypeError(
            f"schedule must be a callable count -> multiplier or None, got {schedule!r}"
        )

    def init(params: Any) -> IndependentWeightDecayState:
        del params
        return IndependentWeightDecayState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                "independent_weight_decay needs params: call update(updates, state, params)"
            )
        m = jnp.ones((), jnp.float32) if schedule is None else schedule(state.count)
        rate = jnp.asarray(weight_decay, jnp.float32) * m
        # A zero rate leaves the updates as they are (also where a parameter is inf: 0 * inf).
        updates = jax.tree.map(
            lambda u, p: jnp.where(rate > 0, u - (rate.astype(p.dtype) * p).astype(u.dtype), u),
            updates,
            params,
        )
        return updates, IndependentWeightDecayState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)
