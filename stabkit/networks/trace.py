"""Statistics at every block boundary and tap of a network, forward and backward: :func:`trace_net`.

Boundaries are numbered like :func:`stabkit.trace`'s layers: boundary 0 is the input of the first
block (the embedding's output, or ``x`` without embedding), boundary ``l`` in 1..depth is block
``l``'s output, boundary ``depth + 1`` is the readout (the network's output). Every per-boundary
field has a leading axis of ``max_depth + 2`` entries; entries beyond ``depth + 1`` are padding
(``valid`` False, NaN statistics, zero counts).

The backward pass is the general one the issue asks for: the forward scan keeps each block's
input, and a reverse scan takes one ``jax.vjp`` per block, so the gradient at every boundary and
the gradient of every block's parameters cost one block's residuals at a time, whatever the
block is (a user's included).

Depth is data: one compilation per (block, shapes, dtype, loss) serves every ``depth``, and
``jax.vmap`` over parameters (scales, seeds) and depths runs a grid in one kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import check_memory, positive_int
from stabkit._numerics import compute_dtype, rms_by_sqrt_max
from stabkit.losses import check_loss_callable, whole_array_loss
from stabkit.networks.network import (
    NetParams,
    Stack,
    check_block_shapes,
    check_depth,
    check_params,
    check_x,
    linear,
    readout,
    stack_of,
)
from stabkit.precision import Census, census
from stabkit.precision.float8 import float8_partition
from stabkit.tracing import first_layer_where, last_layer_where

__all__ = ["NetTrace", "trace_net"]


class NetTrace(NamedTuple):
    """Per-boundary statistics of one forward and backward pass (``L = max_depth + 2`` rows).

    Attributes:
        depth: int32 ``()``, the blocks used.
        valid: bool ``(L,)``, True for boundaries 0..depth+1.
        rms: ``(L,)`` RMS of the activations at each boundary (over batch, positions, features).
        max_abs: ``(L,)`` their max |h|.
        census: :class:`stabkit.Census` of ``(L,)`` counts of the activations' entries.
        grad_rms: ``(L,)`` RMS of dL/dh at each boundary (row depth+1: dL/dy).
        grad_max_abs: ``(L,)`` max |dL/dh|.
        grad_census: :class:`stabkit.Census` of dL/dh.
        param_grad_rms: ``(L,)`` RMS of the gradient of each block's parameters (row 0: the
            embedding's, NaN without one; row depth+1: the readout's).
        taps: dict of name -> ``(L, ...)`` statistics from inside each block (rows 1..depth;
            NaN elsewhere): ``branch_rms``, ``normalized_rms`` (with a norm), ``pre_norm_rms``
            (post-norm), attention's ``logit_max`` and ``entropy`` per head and
            ``rank_residual`` (Dong et al.'s res of the block's input), the user's own.
        loss: ``()`` the loss.
        first_nonfinite_forward: int32 ``()``, the lowest boundary holding an inf or NaN; -1 if
            none.
        first_nonfinite_backward: the first boundary the backward pass meets (the highest) with
            an inf or NaN gradient; -1 if none.
        first_zero_backward: likewise for an all-zero gradient.
    """

    depth: jax.Array
    valid: jax.Array
    rms: jax.Array
    max_abs: jax.Array
    census: Census
    grad_rms: jax.Array
    grad_max_abs: jax.Array
    grad_census: Census
    param_grad_rms: jax.Array
    taps: dict
    loss: jax.Array
    first_nonfinite_forward: jax.Array
    first_nonfinite_backward: jax.Array
    first_zero_backward: jax.Array

    @property
    def output_rms(self) -> jax.Array:
        """RMS of the network's output (row ``depth + 1`` of ``rms``)."""
        index = jnp.asarray(self.depth)[..., None] + 1
        return jnp.take_along_axis(self.rms, index, axis=-1)[..., 0]

    def summary(self, max_rows: int = 40) -> str:
        """A text table of one network's trace (the middle rows elided beyond ``max_rows``)."""
        max_rows = positive_int(max_rows, "max_rows")
        if np.ndim(self.depth) != 0:
            raise ValueError("summary() describes one network; index a batched trace first")
        t = jax.tree.map(np.asarray, self)
        rows = np.flatnonzero(t.valid)
        if len(rows) > max_rows:
            half = max_rows // 2
            rows = np.concatenate([rows[:half], [-1], rows[-half:]])
        names = sorted(k for k, v in t.taps.items() if v.ndim == 1)
        head = ["boundary", "rms", "max|h|", "grad rms", "param grad", "inf/nan", *names]
        lines = ["  ".join(f"{h:>11}" for h in head)]
        for r in rows:
            if r < 0:
                lines.append("  ...")
                continue
            bad = (
                int(t.census.inf[r] + t.census.nan[r]),
                int(t.grad_census.inf[r] + t.grad_census.nan[r]),
            )
            vals = [t.rms[r], t.max_abs[r], t.grad_rms[r], t.param_grad_rms[r]]
            cells = [f"{r:>11d}", *(f"{v:>11.4g}" for v in vals), f"{bad[0]:>5d}/{bad[1]:<5d}"]
            cells += [f"{t.taps[k][r]:>11.4g}" for k in names]
            lines.append("  ".join(cells))
        lines.append(
            f"loss {float(t.loss):.6g}; first non-finite forward {int(t.first_nonfinite_forward)}, "
            f"backward {int(t.first_nonfinite_backward)}; first all-zero gradient "
            f"{int(t.first_zero_backward)}"
        )
        return "\n".join(lines)


def _stats(v: jax.Array) -> tuple:
    sdt = compute_dtype(v.dtype)
    w = v.astype(sdt)
    return rms_by_sqrt_max(w), jnp.max(jnp.abs(w)), census(v)


def tree_rms(tree: Any) -> jax.Array:
    """The RMS of every entry of a pytree's floating leaves, without overflow (NaN if none)."""
    leaves = [jnp.asarray(a) for a in jax.tree.leaves(tree) if jnp.size(a)]
    if not leaves:
        return jnp.asarray(jnp.nan, jnp.float32)
    sdt = compute_dtype(leaves[0].dtype)
    r = jnp.stack([rms_by_sqrt_max(a.astype(sdt)) for a in leaves])
    n = jnp.asarray([a.size for a in leaves], sdt)
    return rms_by_sqrt_max(r * jnp.sqrt(n / jnp.sum(n))) * jnp.sqrt(jnp.asarray(len(leaves), sdt))


def _put(rows: dict, layer, values: dict) -> dict:
    out = dict(rows)
    for k, v in values.items():
        out[k] = jax.lax.dynamic_update_index_in_dim(rows[k], v.astype(rows[k].dtype), layer, 0)
    return out


def _stat_rows(v: jax.Array, prefix: str) -> dict:
    rms, max_abs, cen = _stats(v)
    out = {f"{prefix}rms": rms, f"{prefix}max_abs": max_abs}
    out.update({f"{prefix}{k}": c for k, c in cen._asdict().items()})
    return out


def trace_core(
    stack: Stack,
    embed_params: Any,
    readout_params: dict,
    x: jax.Array,
    depth: jax.Array,
    loss_fn: Callable,
    final_norm: str | None = None,
) -> NetTrace:
    """The traced computation (no validation): what :func:`trace_net` and the sweep run.

    Blocks 1..depth run in a ``fori_loop`` (a traced depth runs only its own blocks; under
    ``vmap`` the loop runs to the batch's deepest and keeps each config's own result). The
    forward loop keeps each block's input; the backward loop takes one ``jax.vjp`` per block."""
    block, hyper, n = stack.block, stack.hyper, stack.max_depth
    sdt = compute_dtype(x.dtype)
    h0 = x if embed_params is None else linear(embed_params, x)
    one = stack.params_of(jnp.asarray(1, jnp.int32))
    tap_shapes = jax.eval_shape(lambda p, h: block.apply(p, h, hyper)[1], one, h0)
    L = n + 2

    def rows_like(names, fill, dtype):
        return {k: jnp.full((L,), fill, dtype) for k in names}

    stat_names = ["rms", "max_abs", *Census._fields]
    count = set(Census._fields)
    fwd_rows = {
        k: jnp.full((L,), 0 if k in count else jnp.nan, jnp.int32 if k in count else sdt)
        for k in stat_names
    }
    fwd_rows.update(
        {f"tap_{k}": jnp.full((L, *v.shape), jnp.nan, sdt) for k, v in tap_shapes.items()}
    )
    fwd_rows = _put(fwd_rows, 0, _stat_rows(h0, ""))
    hs = jnp.zeros((n, *h0.shape), h0.dtype)

    def fwd(i, carry):
        h, hs, rows = carry
        layer = i + 1
        out, taps = block.apply(stack.params_of(layer), h, hyper)
        hs = jax.lax.dynamic_update_index_in_dim(hs, h, i, 0)
        rows = _put(
            rows, layer, {**_stat_rows(out, ""), **{f"tap_{k}": v for k, v in taps.items()}}
        )
        return out.astype(h.dtype), hs, rows

    h, hs, fwd_rows = jax.lax.fori_loop(0, depth, fwd, (h0, hs, fwd_rows))

    def head(r, h):
        y = readout(r, h, final_norm, hyper["eps"])
        return loss_fn(y), y

    loss, head_vjp, y = jax.vjp(head, readout_params, h, has_aux=True)
    g_readout, g_h = head_vjp(jnp.ones_like(loss))
    g_y = jax.grad(lambda y: loss_fn(y))(y)
    fwd_rows = _put(fwd_rows, depth + 1, _stat_rows(y, ""))

    bwd_rows = {
        f"grad_{k}": jnp.full((L,), 0 if k in count else jnp.nan, jnp.int32 if k in count else sdt)
        for k in stat_names
    }
    bwd_rows["param_grad_rms"] = jnp.full((L,), jnp.nan, sdt)
    bwd_rows = _put(
        bwd_rows, depth + 1, {**_stat_rows(g_y, "grad_"), "param_grad_rms": tree_rms(g_readout)}
    )

    def bwd(j, carry):
        g, rows = carry
        layer = depth - j
        h_in = jax.lax.dynamic_index_in_dim(hs, layer - 1, keepdims=False)

        def f(bp, h):
            return block.apply(bp, h, hyper)[0].astype(h.dtype)

        _, vjp = jax.vjp(f, stack.params_of(layer), h_in)
        g_bp, g_in = vjp(g)
        # a float8 meta's cotangent is its next value, not a gradient: left out
        g_rms = tree_rms(float8_partition(g_bp)[0])
        rows = _put(rows, layer, {**_stat_rows(g, "grad_"), "param_grad_rms": g_rms})
        return g_in, rows

    g0, bwd_rows = jax.lax.fori_loop(0, depth, bwd, (g_h, bwd_rows))
    if embed_params is not None:
        _, embed_vjp = jax.vjp(lambda e: linear(e, x), embed_params)
        g_embed = tree_rms(embed_vjp(g0))
    else:
        g_embed = jnp.asarray(jnp.nan, sdt)
    bwd_rows = _put(bwd_rows, 0, {**_stat_rows(g0, "grad_"), "param_grad_rms": g_embed})

    valid = jnp.arange(L) <= depth + 1
    cen = Census(*(fwd_rows[k] for k in Census._fields))
    gcen = Census(*(bwd_rows[f"grad_{k}"] for k in Census._fields))
    bad_f = (cen.inf > 0) | (cen.nan > 0)
    bad_b = (gcen.inf > 0) | (gcen.nan > 0)
    zero_b = gcen.zero == sum(gcen)  # every entry of the gradient is +0 or -0
    return NetTrace(
        depth=depth,
        valid=valid,
        rms=fwd_rows["rms"],
        max_abs=fwd_rows["max_abs"],
        census=cen,
        grad_rms=bwd_rows["grad_rms"],
        grad_max_abs=bwd_rows["grad_max_abs"],
        grad_census=gcen,
        param_grad_rms=bwd_rows["param_grad_rms"],
        taps={k: fwd_rows[f"tap_{k}"] for k in tap_shapes},
        loss=loss.astype(sdt),
        first_nonfinite_forward=first_layer_where(bad_f & valid),
        first_nonfinite_backward=last_layer_where(bad_b & valid),
        first_zero_backward=last_layer_where(zero_b & valid),
    )


@partial(jax.jit, static_argnames=("loss_fn",))
def _trace_jit(params, x, depth, loss_fn):
    return trace_core(
        stack_of(params), params.embed, params.readout, x, depth, loss_fn, params.final_norm
    )


def trace_net(
    params: NetParams,
    x: ArrayLike,
    *,
    loss: str | Callable[[jax.Array], jax.Array] = "mse",
    depth: int | jax.Array | None = None,
) -> NetTrace:
    """Forward and backward statistics of the network ``params`` on the batch ``x``.

    Also reached as ``stabkit.trace(params, x)`` for a :class:`stabkit.NetParams`.

    Args:
        params: from :func:`stabkit.net_init`.
        x: ``(batch, *spatial, in_dim)``.
        loss: ``"mse"`` (0.5 mean(y^2)), ``"sum"``, or a callable ``loss(y) -> scalar``.
        depth: blocks to use (default all); may be traced.

    Returns:
        A :class:`NetTrace`.

    Raises:
        ValueError/TypeError: as :func:`stabkit.net_apply`, plus a bad loss; the per-block
            buffers (``max_depth`` block inputs) beyond memory.

    Examples:
        Batch norm at initialization: the gradient grows going backward whatever the weights.

        >>> import stabkit as sk
        >>> b = sk.networks.block("dense", norm="batch", norm_position="inner")
        >>> p = sk.net_init(jax.random.key(0), b, depth=20, width=64)
        >>> t = sk.trace(p, jax.random.normal(jax.random.key(1), (32, 64)))
        >>> bool(t.grad_rms[1] > 10 * t.grad_rms[20])
        True
    """
    params = check_params(params)
    if isinstance(loss, str):
        loss_fn = whole_array_loss(loss)
    elif callable(loss):
        loss_fn = loss
    else:
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__} {loss!r}")
    x = check_x(x, params)
    depth = check_depth(depth, params.max_depth)
    check_block_shapes(params, x)
    out_shape = (*x.shape[:-1], params.out_dim)
    if not isinstance(loss, str):
        check_loss_callable(loss_fn, out_shape, params.dtype)
    entries = x.size // params.in_dim * params.width
    nbytes = (params.max_depth + 4) * entries * 4 * params.dtype.itemsize
    check_memory(
        nbytes, "x.shape", x.shape, f"trace's per-block buffers ({params.max_depth} blocks)"
    )
    return _trace_jit(params, x, depth, loss_fn)
