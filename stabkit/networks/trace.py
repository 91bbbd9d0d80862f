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

import dataclasses
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
    block_step,
    check_block_shapes,
    check_depth,
    check_params,
    check_x,
    embed,
    readout,
)
from stabkit.precision import Census, census

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
            NaN elsewhere): ``branch_rms``, ``normalized_rms`` (with a norm), ``logit_max`` and
            ``entropy`` per head (attention), the user's own.
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
            bad = int(t.census.inf[r] + t.census.nan[r]), int(t.grad_census.inf[r] + t.grad_census.nan[r])
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


def _place(first, blocks, last, depth, fill):
    """Rows: 0 <- first, 1..max_depth <- blocks, depth+1 <- last, beyond: fill."""
    n = blocks.shape[0]
    rows = jnp.concatenate([first[None], blocks, jnp.full_like(first, fill)[None]])
    rows = rows.at[depth + 1].set(last)
    keep = (jnp.arange(n + 2) <= depth + 1).reshape((-1,) + (1,) * first.ndim)
    return jnp.where(keep, rows, jnp.full_like(rows, fill))


def trace_core(params: NetParams, x: jax.Array, depth: jax.Array, loss_fn: Callable) -> NetTrace:
    """The traced computation (no validation): what :func:`trace_net` and the sweep run."""
    block, hyper, n = params.block, params.hyper, params.max_depth
    index = jnp.arange(1, n + 1, dtype=jnp.int32)
    h0 = embed(params, x)
    step = block_step(params, depth)

    def fwd(h, inputs):
        out, taps = step(h, inputs)
        return out, (h, _stats(out), taps)

    h, (inputs, fstats, taps) = jax.lax.scan(fwd, h0, (index, params.blocks))

    def head(r, h):
        y = readout(r, h)
        return loss_fn(y), y

    loss, head_vjp, y = jax.vjp(head, params.readout, h, has_aux=True)
    g_readout, g_h = head_vjp(jnp.ones_like(loss))
    g_y = jax.grad(lambda y: loss_fn(y))(y)

    def bwd(g, inputs):
        i, bp, h_in = inputs
        active = i <= depth

        def f(bp, h):
            return block.apply(bp, jnp.where(active, h, jnp.zeros_like(h)), hyper)[0]

        _, vjp = jax.vjp(f, bp, h_in)
        g_bp, g_in = vjp(g)
        return jnp.where(active, g_in, g), (_stats(g), tree_rms(g_bp))

    g0, (bstats, pgrad) = jax.lax.scan(bwd, g_h, (index, params.blocks, inputs), reverse=True)
    if params.embed is not None:
        _, embed_vjp = jax.vjp(lambda e: embed(dataclasses.replace(params, embed=e), x), params.embed)
        g_embed = tree_rms(embed_vjp(g0))
    else:
        g_embed = jnp.asarray(jnp.nan, pgrad.dtype)

    nan = jnp.nan
    f0, fl = _stats(h0), _stats(y)
    b0, bl = _stats(g0), _stats(g_y)
    rms = _place(f0[0], fstats[0], fl[0], depth, nan)
    max_abs = _place(f0[1], fstats[1], fl[1], depth, nan)
    cen = Census(*(_place(a, b, c, depth, 0) for a, b, c in zip(f0[2], fstats[2], fl[2])))
    grad_rms = _place(b0[0], bstats[0], bl[0], depth, nan)
    grad_max = _place(b0[1], bstats[1], bl[1], depth, nan)
    gcen = Census(*(_place(a, b, c, depth, 0) for a, b, c in zip(b0[2], bstats[2], bl[2])))
    param_grad = _place(g_embed.astype(pgrad.dtype), pgrad, tree_rms(g_readout).astype(pgrad.dtype), depth, nan)
    tap_rows = {
        k: _place(jnp.full_like(v[0], nan), v, jnp.full_like(v[0], nan), depth, nan)
        for k, v in taps.items()
    }
    rows = jnp.arange(n + 2)
    valid = rows <= depth + 1
    bad_f = (cen.inf > 0) | (cen.nan > 0)
    bad_b = (gcen.inf > 0) | (gcen.nan > 0)
    zero_b = gcen.zero == sum(gcen)  # every entry of the gradient is +0 or -0
    return NetTrace(
        depth=depth,
        valid=valid,
        rms=rms,
        max_abs=max_abs,
        census=cen,
        grad_rms=grad_rms,
        grad_max_abs=grad_max,
        grad_census=gcen,
        param_grad_rms=param_grad,
        taps=tap_rows,
        loss=loss,
        first_nonfinite_forward=_first(bad_f & valid),
        first_nonfinite_backward=_last(bad_b & valid),
        first_zero_backward=_last(zero_b & valid),
    )


def _first(mask):
    return jnp.where(jnp.any(mask), jnp.argmax(mask), -1).astype(jnp.int32)


def _last(mask):
    n = mask.shape[0]
    return jnp.where(jnp.any(mask), n - 1 - jnp.argmax(mask[::-1]), -1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("loss_fn",))
def _trace_jit(params, x, depth, loss_fn):
    return trace_core(params, x, depth, loss_fn)


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
    check_memory(nbytes, "x.shape", x.shape, f"trace's per-block buffers ({params.max_depth} blocks)")
    return _trace_jit(params, x, depth, loss_fn)
