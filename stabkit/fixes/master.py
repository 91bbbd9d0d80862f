"""Master weights: the optimizer runs on a wide copy of the parameters, the model on a narrow one.

Mixed-precision training (Micikevicius et al. 2018) keeps a float32 copy of every weight: the
update is added to the copy, where a small update is not lost, and the model's float16/bfloat16
weights are the copy rounded. :func:`master_weights` does it as one optax transformation around
any optimizer, with the copy in its state, for params of any floating dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from stabkit._checks import is_floating_dtype
from stabkit._numerics import compute_dtype
from stabkit.fixes.kahan import _check_params, _narrow
from stabkit.fixes.norms import _floating_leaves
from stabkit.fixes.skipping import _check_state


class MasterWeightsState(NamedTuple):
    """State of :func:`master_weights`.

    Attributes:
        master: the master weights, a pytree like the params in the master dtype.
        inner_state: the wrapped optimizer's state (built on the master weights).
    """

    master: Any
    inner_state: Any


def master_weights(
    inner: optax.GradientTransformation, dtype: DTypeLike = jnp.float32
) -> optax.GradientTransformation:
    """Run ``inner`` on a ``dtype`` copy of the params; return the update to the rounded copy.

    ``init(params)`` stores ``params.astype(dtype)`` (the master weights) and ``inner``'s state
    built on them. ``update(grads, state, params)``: the gradients are cast to ``dtype``,
    ``inner.update`` runs on the master weights (its ``params`` are the master, so weight decay
    sees the precise values), the master weights take the update (``optax.apply_updates``), and
    the returned ``d`` makes ``optax.apply_updates(params, d) == master.astype(params.dtype)``
    bit for bit: ``d = master' - p`` computed in the wider of ``dtype`` and the params' dtype,
    exact whenever the two are within 2^15 in magnitude for bfloat16 params (2^12 for float16),
    that is for every step short of a weight cancelled to a tiny fraction of itself. Where the
    params already have ``dtype``, ``d`` is the inner update itself (adding it is what the master
    did). A weight that is already inf keeps its value (``d = 0`` where nothing changed).

    Use it instead of :class:`stabkit.TrainSpec`'s ``master_dtype`` when the model's params must
    stay narrow (one stored copy of them, e.g. inside another library's training loop).

    Args:
        inner: the optimizer (or chain) to run on the master weights.
        dtype: the master weights' floating dtype, default float32. float64 needs JAX's 64-bit
            mode (``with jax.enable_x64(True):``), checked at ``init``.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`MasterWeightsState`;
        ``update`` requires ``params``.

    Raises:
        TypeError: ``inner`` not a GradientTransformation; ``dtype`` not floating; later, a
            non-floating leaf or a state that is not a :class:`MasterWeightsState`.
        ValueError: a float64 ``dtype`` outside ``enable_x64``; ``update`` without ``params``.

    References:
        P. Micikevicius et al., "Mixed Precision Training", ICLR 2018 (sec. 3.1).

    Examples:
        An update of 2**-10 (an eighth of an ulp) is lost on a bfloat16 weight of 1 but not on
        its float32 master:

        >>> opt = master_weights(optax.sgd(2.0**-10))
        >>> p = jnp.ones(1, jnp.bfloat16)
        >>> s = opt.init(p)
        >>> for _ in range(8):
        ...     d, s = opt.update(-jnp.ones(1, jnp.bfloat16), s, p)
        ...     p = optax.apply_updates(p, d)
        >>> float(s.master[0]), float(p[0])  # 1 + 8 * 2**-10 = 1 + 2**-7, one bfloat16 ulp
        (1.0078125, 1.0078125)
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"inner must be an optax.GradientTransformation, got {type(inner).__name__}"
        )
    if dtype is None or not is_floating_dtype(dtype):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}")
    dtype = jnp.dtype(dtype)

    def init_fn(params):
        if jax.dtypes.canonicalize_dtype(dtype) != dtype:
            raise ValueError(
                f"master_weights(dtype={dtype.name}) needs JAX's 64-bit mode: init and update "
                "inside `with jax.enable_x64(True):`, otherwise the master weights would be "
                f"{jax.dtypes.canonicalize_dtype(dtype).name}"
            )
        _floating_leaves(params, "params")
        master = jax.tree.map(lambda p: jnp.asarray(p).astype(dtype), params)
        return MasterWeightsState(master, inner.init(master))

    def update_fn(updates, state, params=None, **extra):
        _check_state(state, MasterWeightsState, "master_weights")
        g_leaves, p_leaves, treedef = _check_params(params, updates, "master_weights")
        grads = treedef.unflatten([g.astype(dtype) for g in g_leaves])
        step, inner_state = inner.update(grads, state.inner_state, state.master, **extra)
        # Materialized before it is added: under jit XLA on CPU would fuse, say, sgd's -lr * g
        # with the addition into one FMA, and the master weights would differ from eager runs.
        step = jax.lax.optimization_barrier(step)
        master = optax.apply_updates(state.master, step)
        m_leaves = treedef.flatten_up_to(master)
        s_leaves = treedef.flatten_up_to(step)
        out = []
        for p, m, u in zip(p_leaves, m_leaves, s_leaves, strict=True):
            if p.dtype == dtype:
                out.append(u)
                continue
            w = jnp.promote_types(compute_dtype(p.dtype), compute_dtype(dtype))
            target = _narrow(m, p.dtype)
            d = target.astype(w) - p.astype(w)
            out.append(jnp.where(target == p, jnp.zeros_like(d), d))
        return treedef.unflatten(out), MasterWeightsState(master, inner_state)

    return optax.GradientTransformation(init_fn, update_fn)
