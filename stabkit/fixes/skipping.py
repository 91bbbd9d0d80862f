"""Skipping the steps whose gradient or update holds an inf or NaN, a bounded number in a row.

``_check_state`` (the state is the one this transformation's init made) and ``_tree_select`` (a
step kept or discarded, leaf by leaf) are shared with :mod:`stabkit.fixes.loss_scale`, which
skips the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stabkit._checks import INT32_MAX, bounded_int
from stabkit.fixes.norms import _floating_leaves, all_finite

#: The loss scale's and the skip counter's counters are int32.


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
        max_consecutive_skips, "max_consecutive_skips", 0, INT32_MAX, "the counter is int32"
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
