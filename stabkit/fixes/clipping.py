"""Clipping by global norm that neither overflows nor turns an infinite entry into NaN.

References:
    R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty of training recurrent neural
    networks", ICML 2013 (sec. 3.2, gradient norm clipping).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from stabkit._checks import finite_float
from stabkit._numerics import compute_dtype
from stabkit.fixes.norms import _finite_norm, _floating_leaves


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
