"""Weight-update stagnation: the updates that rounding to the weight's dtype throws away.

An update ``u`` to a weight ``p`` is lost when ``p + u``, rounded to ``p``'s dtype, is ``p``
again: when :math:`|u|` is below half an ulp of ``p`` (a tie goes to even). bfloat16 has 8
significant bits, so half an ulp of ``p`` is between :math:`2^{-9}|p|` and :math:`2^{-8}|p|`:
an update is always lost when :math:`|u| < 2^{-9}|p|`, never when :math:`|u| > 2^{-8}|p|`
(``1 + 2**-8 == 1``, a tie); float16 has 11, the bounds are :math:`2^{-12}` and
:math:`2^{-11}`. The
optimizer then believes it is moving while the stored weights stand still.
:func:`lost_updates` counts it for one array (jit- and vmap-friendly, no host transfer: a
training loop calls it per layer and per step); :func:`update_stagnation` gives the fraction per
leaf of a pytree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stabkit._checks import floating_array
from stabkit.fixes.kahan import _check_params


def lost_updates(param: ArrayLike, update: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``(lost, nonzero)``: int32 counts of the entries of ``update`` that rounding loses.

    ``nonzero`` counts the entries with ``update != 0``; ``lost`` those of them where the new
    weight equals the old, computed exactly as ``optax.apply_updates`` computes it:
    ``(param + update).astype(param.dtype) == param`` (JAX's promotion: a float32 update on a
    bfloat16 weight is added in float32, then rounded). A NaN or inf update is not lost (it
    changes the weight); an update on an inf weight is lost (inf + finite = inf). On CPU, XLA
    reads float32/bfloat16 subnormal updates as 0, so they count as zero updates there.

    Args:
        param: floating array, the weights before the step.
        update: floating array of the same shape, the additive update (the optimizer's output,
            before any rounding rule).

    Returns:
        Two int32 scalars ``(lost, nonzero)``.

    Raises:
        TypeError: a non-floating input.
        ValueError: shapes differ.

    Examples:
        >>> p = jnp.ones(4, jnp.bfloat16)
        >>> lost, nonzero = lost_updates(p, jnp.array([0.0, 2**-8, 2**-7, 1e-3], jnp.bfloat16))
        >>> int(lost), int(nonzero)  # 2**-8 is half an ulp of 1, a tie: to even, 1
        (2, 3)
    """
    p = floating_array(param, "param")
    u = floating_array(update, "update")
    if p.shape != u.shape:
        raise ValueError(f"param and update must have the same shape, got {p.shape} and {u.shape}")
    p, u = jax.lax.optimization_barrier((p, u))  # as computed in their dtypes (kahan._narrow)
    moved = u != 0
    # the barrier keeps the rounding to p's dtype under jit (see stabkit.fixes.kahan._narrow)
    same = jax.lax.optimization_barrier(jnp.asarray(p + u).astype(p.dtype)) == p
    nonzero = jnp.sum(moved, dtype=jnp.int32)
    lost = jnp.sum(moved & same, dtype=jnp.int32)
    return lost, nonzero


def update_stagnation(params: Any, updates: Any) -> Any:
    """The fraction of nonzero updates lost, per leaf: a pytree of float32 scalars like ``params``.

    ``lost / nonzero`` of :func:`lost_updates` for each leaf, 0 where no entry of the update is
    nonzero.

    Args:
        params: a pytree of floating arrays, the weights before the step.
        updates: the additive updates, the same structure and shapes.

    Returns:
        A pytree with the structure of ``params`` of float32 scalars in [0, 1].

    Raises:
        TypeError: a non-floating leaf.
        ValueError: ``params`` None, or the structures or shapes differ.

    Examples:
        >>> params = {"w": jnp.full(4, 300.0, jnp.bfloat16), "b": jnp.zeros(2, jnp.bfloat16)}
        >>> updates = {"w": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(2, jnp.bfloat16)}
        >>> jax.tree.map(float, update_stagnation(params, updates))  # ulp(300) = 2: 1 is a tie
        {'b': 0.0, 'w': 1.0}
    """
    u_leaves, p_leaves, treedef = _check_params(params, updates, "update_stagnation")
    out = []
    for p, u in zip(p_leaves, u_leaves, strict=True):
        lost, nonzero = lost_updates(p, u)
        frac = lost.astype(jnp.float32) / jnp.maximum(nonzero, 1).astype(jnp.float32)
        out.append(frac)
    return treedef.unflatten(out)
