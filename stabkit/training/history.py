"""What :func:`~stabkit.training.loop.train` records: the :class:`History`, and the statistics of
one logged step (``_summarise``).

A record is taken every ``log_every`` steps, before that step's update: the loss, the gradient's
and the update's global norms, each weight layer's gradient RMS (without overflow), the census of
the gradient's entries, the loss scale, the parameters' norm, the fraction of each layer's updates
lost to rounding (weight-update stagnation), and for networks of blocks the attention logits'
maximum and entropy per block and the output logits' log-partition. The weight layers are the
rows of ``_layer_rows``: for the MLP its input layer, hidden layers and readout; for a network of
blocks its embedding, each block (all its arrays) and its readout.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._numerics import rms_rows
from stabkit.fixes import lost_updates, safe_global_norm
from stabkit.nets import MLPParams
from stabkit.precision import Census, census

__all__ = [
    "History",
]


class History(NamedTuple):
    """What :func:`train` records, every ``log_every`` steps (``R`` runs, ``T`` records).

    Values at record ``t`` are measured at step ``step[t]``, before that step's update. Norms and
    RMS are float32 (float64 for a float64 run), unscaled (divided by the loss scale), computed
    without overflow.

    Attributes:
        step: ``(T,)`` int32.
        loss: ``(R, T)`` training loss (of the step's batch; with a run's z-loss term).
        grad_norm: ``(R, T)`` global norm of the gradient.
        update_norm: ``(R, T)`` global norm of the update the optimizer (and the fixes, schedule
            and weight decay) produced, before the spec's ``rounding`` rule.
        layer_grad_rms: ``(R, T, L)`` RMS of each weight layer's gradient (weights and bias
            together), ``L = max_depth + 1``: hidden layers 1..max_depth, then the readout. Layers
            beyond a run's depth are unused and read 0. For a network of blocks ``L = max_depth +
            2``: the embedding, each block (all its arrays, norm gains included), the readout.
        grad_census: a :class:`stabkit.Census` of ``(R, T)`` int32 counts (normal, subnormal,
            zero, inf, NaN) of the gradient's entries as computed, in the compute dtype and
            scaled (:func:`stabkit.census`).
        loss_scale: ``(R, T)`` the loss scale in use (1 without loss scaling).
        nonfinite_grads: ``(R, T)`` steps in ``[step[t], step[t] + log_every)`` whose gradient
            had an inf or NaN entry.
        absorbed: ``(R, T)`` of those, the steps whose applied update was nevertheless finite (a
            fix skipped or clipped them).
        first_nonfinite: ``(R,)`` the first step whose loss was non-finite or whose non-finite
            gradient reached the parameters; -1 if none.
        final_loss: ``(R,)`` loss on the whole data set after the last step (without z-loss).
        final_accuracy: ``(R,)`` for classification, the fraction of the whole data set (every
            position of a sequence task) whose arg-max output is the label after the last step
            (training accuracy; a non-finite output row counts as wrong); NaN for regression.
        runs: the :class:`Runs` trained.
        param_norm: ``(R, T)`` global norm of the stored parameters.
        lost_updates: ``(R, T, L)`` per weight layer (the rows of ``layer_grad_rms``), the
            fraction of its entries with a nonzero update whose stored value the update,
            rounded to nearest, would leave unchanged (:func:`stabkit.lost_updates`: smaller
            than half an ulp of the weight; weight-update stagnation). 0 where no entry moved.
        log_z: ``(R, T)`` for classification, the mean over examples (and positions) of the
            output logits' log-partition ``logsumexp(logits)``; NaN for regression. The softmax
            is invariant to it, so nothing but a z-loss holds it: its drift is Wortsman et al.
            (2023)'s output-logit divergence.
        attn_logit_max: ``(R, T, max_depth)`` per block, the largest ``|attention logit|`` over
            its heads, the batch and the positions; NaN for blocks without attention and beyond
            a run's depth.
        attn_entropy: ``(R, T, max_depth)`` per block, the mean over heads of the attention
            probabilities' entropy (nats; averaged over batch and queries); NaN likewise. Its
            collapse towards 0 with growing logits is the attention-logit-growth instability.
        float8_underflow: ``(R, T, max_depth)`` for blocks with ``float8`` products, per block
            the fraction of the products' inputs and weights (mean over its products) whose
            nonzero entries the forward format rounded to 0; NaN for other blocks and beyond a
            run's depth.
        float8_overflow: ``(R, T, max_depth)`` likewise, the fraction that exceeded the format's
            largest finite value after scaling (saturated to it).
        float8_grad_underflow: ``(R, T, max_depth)`` likewise for the output gradients the
            backward format (e5m2) rounded, from the step's backward pass.
        float8_grad_overflow: ``(R, T, max_depth)`` likewise, the gradients that saturated.
    """

    step: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    update_norm: jax.Array
    layer_grad_rms: jax.Array
    grad_census: Census
    loss_scale: jax.Array
    nonfinite_grads: jax.Array
    absorbed: jax.Array
    first_nonfinite: jax.Array
    final_loss: jax.Array
    final_accuracy: jax.Array
    runs: Any
    param_norm: jax.Array | None = None
    lost_updates: jax.Array | None = None
    log_z: jax.Array | None = None
    attn_logit_max: jax.Array | None = None
    attn_entropy: jax.Array | None = None
    float8_underflow: jax.Array | None = None
    float8_overflow: jax.Array | None = None
    float8_grad_underflow: jax.Array | None = None
    float8_grad_overflow: jax.Array | None = None


def _layer_rows(tree: Any) -> list[jax.Array]:
    """The weight layers of a parameter-shaped pytree as three 2-D arrays of rows: the first
    layer ``(1, n0)``, the stacked middle layers ``(depth, n1)``, the last ``(1, n2)``.

    ``tree`` is an :class:`MLPParams` (input layer, hidden layers, readout) or a network's
    ``(embed, blocks, readout)`` (every leaf of a block together); float8 scaling state is not
    part of it.
    """
    if isinstance(tree, MLPParams):
        d = tree.w_hidden.shape[0]
        return [
            jnp.concatenate([tree.w_in.ravel(), tree.b_in])[None],
            jnp.concatenate(
                [tree.w_hidden.reshape(d, math.prod(tree.w_hidden.shape[1:])), tree.b_hidden],
                axis=1,
            ),
            jnp.concatenate([tree.w_out.ravel(), tree.b_out])[None],
        ]
    embed, blocks, readout = tree
    d = jax.tree.leaves(blocks)[0].shape[0]
    return [
        jnp.concatenate([v.ravel() for v in jax.tree.leaves(embed)])[None],
        jnp.concatenate(
            [v.reshape(d, math.prod(v.shape[1:])) for v in jax.tree.leaves(blocks)], axis=1
        ),
        jnp.concatenate([v.ravel() for v in jax.tree.leaves(readout)])[None],
    ]


def _layer_stats(g: Any, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """RMS of each weight layer's gradient ``(L,)`` and the global norm, in ``dtype`` (float32,
    float64 for a float64 run), neither overflowing."""
    rows = _layer_rows(jax.tree.map(lambda v: v.astype(dtype), g))
    rms = jnp.concatenate([rms_rows(r) for r in rows])
    sizes = np.array(
        [rows[0].shape[1]] + [rows[1].shape[1]] * rows[1].shape[0] + [rows[2].shape[1]]
    )
    weights = np.sqrt(sizes / sizes.sum()).astype(dtype)
    norm = rms_rows((rms * weights)[None])[0]
    return rms, norm * np.asarray(np.sqrt(sizes.sum() * len(sizes)), dtype)


def _lost_fraction(params: Any, updates: Any) -> jax.Array:
    """Per weight layer ``(L,)``: of the entries with a nonzero update, the fraction whose stored
    value ``p + u`` rounded to nearest leaves unchanged (float32)."""
    p_rows, u_rows = _layer_rows(params), _layer_rows(updates)
    lost, moved = [], []
    for p, u in zip(p_rows, u_rows, strict=True):
        n_lost, n_moved = jax.vmap(lost_updates)(p, u)
        lost.append(n_lost)
        moved.append(n_moved)
    lost, moved = jnp.concatenate(lost), jnp.concatenate(moved)
    return jnp.where(moved > 0, lost / jnp.maximum(moved, 1), 0).astype(jnp.float32)


class Raw(NamedTuple):
    """One step's values from which a record is summarised (only on logged steps)."""

    loss: jax.Array
    grads: Any  # in the compute dtype, scaled by the loss scale
    updates: Any  # the optimizer's, before the rounding rule
    scale: jax.Array
    params: Any  # stored, before the update
    log_z: jax.Array
    taps: Any  # the blocks' taps, stacked (max_depth, ...), None for the MLP
    active: jax.Array  # (max_depth,) bool: the blocks a run uses
    float8: Any  # the float8 metas after the step (their backward statistics), None leaves if none


def _attention(taps: Any, active: jax.Array, wide: Any) -> tuple[jax.Array, jax.Array]:
    """Per block, the max over heads of the logit maximum and the mean over heads of the
    entropy; NaN where a block has no attention or is beyond the run's depth."""
    n = active.shape[0]
    if not taps or "logit_max" not in taps:
        nan = jnp.full((n,), jnp.nan, wide)
        return nan, nan
    logit_max = jnp.max(taps["logit_max"].reshape(n, -1), axis=1).astype(wide)
    entropy = jnp.mean(taps["entropy"].reshape(n, -1), axis=1).astype(wide)
    return (
        jnp.where(active, logit_max, jnp.nan),
        jnp.where(active, entropy, jnp.nan),
    )


def _per_block(taps: Any, name: str, active: jax.Array, wide: Any) -> jax.Array:
    """A scalar tap per block ``(max_depth,)``; NaN where a block has none or did not run."""
    n = active.shape[0]
    if not taps or name not in taps:
        return jnp.full((n,), jnp.nan, wide)
    return jnp.where(active, taps[name].reshape(n).astype(wide), jnp.nan)


def _float8_grads(meta: Any, name: str, active: jax.Array, wide: Any) -> jax.Array:
    """Per block, the mean over its float8 products of a backward statistic of their metas
    (``g_underflow``...), stacked ``(max_depth,)``; NaN without float8 blocks."""
    n = active.shape[0]
    values = [
        v
        for path, v in jax.tree_util.tree_leaves_with_path(meta)
        if getattr(path[-1], "key", None) == name and v.shape[:1] == (n,)
    ]
    if not values:
        return jnp.full((n,), jnp.nan, wide)
    mean = jnp.mean(jnp.stack([v.reshape(n) for v in values]), axis=0).astype(wide)
    return jnp.where(active, mean, jnp.nan)


def _summarise(raw: Raw, wide: Any) -> tuple:
    """The record of one step, in ``History``'s order after ``step``: loss, gradient norm,
    update norm, layer gradient RMS, census, loss scale, then param norm, lost updates, log Z,
    attention logit max and entropy, float8 underflow and overflow."""
    layer_rms, grad_norm = _layer_stats(
        jax.tree.map(lambda g: g.astype(wide) / raw.scale, raw.grads), wide
    )
    c = census(jnp.concatenate([g.ravel() for g in jax.tree.leaves(raw.grads)]))
    logit_max, entropy = _attention(raw.taps, raw.active, wide)
    return (
        raw.loss,
        grad_norm,
        safe_global_norm(raw.updates).astype(wide),
        layer_rms,
        c,
        raw.scale,
        safe_global_norm(raw.params).astype(wide),
        _lost_fraction(raw.params, raw.updates),
        raw.log_z.astype(wide),
        logit_max,
        entropy,
        _per_block(raw.taps, "float8_underflow", raw.active, wide),
        _per_block(raw.taps, "float8_overflow", raw.active, wide),
        _float8_grads(raw.float8, "g_underflow", raw.active, wide),
        _float8_grads(raw.float8, "g_overflow", raw.active, wide),
    )
