"""The sweep's compiled chunk kernel: one ``jit(shard_map(...))`` per (dtype, width, chunk, ...).

A chunk of configs of one activation and one init runs as a ``fori_loop`` forward and a
hand-written backward to the chunk's deepest config, every config's unit weight draws shared by
seed and scaled per config (see :mod:`stabkit.sweeps.driver` for the design and the guarantees).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stabkit._numerics import compute_dtype, exponent
from stabkit.activations import value_and_derivative
from stabkit.init import init_rule, initializer_names
from stabkit.losses import LOSSES
from stabkit.sweeps.chunk_stats import ChunkStats
from stabkit.sweeps.spec import LAYER_VARS
from stabkit.tracing import first_layer_where, last_layer_where

_PRECISION = jax.lax.Precision.HIGHEST


def sweep_input(seed: int, batch: int, width: int, dtype: Any, kind: str = "normal") -> jax.Array:
    """The input batch ``(batch, width)`` every config with this seed sees (``fold_in(key, 2)``).

    Examples:
        >>> sweep_input(0, 2, 3, "float32", "ones")
        Array([[1., 1., 1.],
               [1., 1., 1.]], dtype=float32)
    """
    return _input(jax.random.key(seed), batch, width, jnp.dtype(dtype), kind)


def _input(key, batch, width, dtype, kind):
    sdt = compute_dtype(dtype)
    k = jax.random.fold_in(key, 2)
    if kind == "normal":
        x = jax.random.normal(k, (batch, width), sdt)
    elif kind == "uniform":
        x = jax.random.uniform(k, (batch, width), sdt, -math.sqrt(3.0), math.sqrt(3.0))
    else:
        x = jnp.ones((batch, width), sdt)
    return x.astype(dtype)


# Every named initializer is a unit draw of one of these kinds times a multiplier, for a square
# (width, width) matrix: the multiplier is computed on the host exactly as stabkit.init does,
# from stabkit.init's own table (init_rule).
_KINDS = ("normal", "uniform", "orthogonal", "identity")
_INIT_KIND = {name: tuple(init_rule(name)) for name in initializer_names()}


def _multiplier(init: str, scale: float, width: int) -> float:
    """The factor stabkit.init applies to its unit draw (computed in the same float64 steps)."""
    kind, variance = _INIT_KIND[init]
    if kind == "normal":
        return scale * math.sqrt(variance(width, width))
    if kind == "uniform":
        return scale * math.sqrt(variance(width, width)) * math.sqrt(3.0)
    return scale


def _unit(kind: str, key: jax.Array, width: int, sdt: Any) -> jax.Array:
    """The unit draw of an initializer kind, as stabkit.init makes it before scaling."""
    if kind == "normal":
        return jax.random.normal(key, (width, width), sdt)
    if kind == "uniform":
        return jax.random.uniform(key, (width, width), sdt, minval=-1.0, maxval=1.0)
    if kind == "orthogonal":
        q, r = jnp.linalg.qr(jax.random.normal(key, (width, width), sdt))
        return q * jnp.sign(jnp.diagonal(r))
    return jnp.eye(width, dtype=sdt)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything the kernel is compiled for."""

    dtype: str
    width: int
    chunk: int
    n_seeds: int
    n_layers: int
    batch: int
    input: str
    loss: str
    activations: tuple
    kinds: tuple
    devices: tuple


def _mm(spec, a, b):
    return jnp.einsum(spec, a, b, precision=_PRECISION)


def _put(stats, layer, active, sdt, **vals):
    """``stats`` with ``vals`` written at ``layer``, for the ``active`` configs only.

    A config's readout (layer depth + 1) may sit inside a deeper chunk-mate's loop range, and must
    not be overwritten there.
    """
    out = dict(stats)
    for k, v in vals.items():
        row = jnp.where(active, v.astype(sdt), stats[k][layer])
        out[k] = jax.lax.dynamic_update_index_in_dim(stats[k], row, layer, 0)
    return out


class _Weights:
    """A chunk's weights: unit draws once per (distinct seed, layer), scaled per config.

    Layer ``l`` draws from ``fold_in(fold_in(key(seed), 0), l)``, its bias from ``fold_in(
    fold_in(key(seed), 1), l)``, as :func:`stabkit.mlp_init` does (the readout is layer 0).
    """

    def __init__(self, st: _Static, units, kind, keys, mult, bias_std, sidx):
        self.dtype, self.sdt, self.w = jnp.dtype(st.dtype), compute_dtype(st.dtype), st.width
        self.units, self.kind = units, kind
        self.mult, self.bias_std, self.sidx = mult, bias_std, sidx
        self.wkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, 0)
        self.bkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)

    def draw(self, layer):
        """Unit weights (seeds, w, w) and unit biases (seeds, w) of one layer."""
        lw = jax.vmap(jax.random.fold_in, (0, None))(self.wkeys, layer)
        lb = jax.vmap(jax.random.fold_in, (0, None))(self.bkeys, layer)
        uw = jax.lax.switch(self.kind, [jax.vmap(u) for u in self.units], lw)
        ub = jax.vmap(lambda k: jax.random.normal(k, (self.w,), self.sdt))(lb)
        return uw, ub

    def scaled(self, uw, ub):
        """The configs' weights (config, w, w) and biases (config, w) from the unit draws."""
        mult, bias_std, sidx = self.mult, self.bias_std, self.sidx
        wt = (mult[:, None, None] * uw[sidx]).astype(self.dtype)
        # Zero biases are +0 exactly, as stabkit.init.zeros() makes them.
        b = jnp.where(bias_std[:, None] == 0, 0, bias_std[:, None] * ub[sidx]).astype(self.dtype)
        return wt, b


def _forward(ops: ChunkStats, phis, weights: _Weights, act, trip, threshold, depth, x, bufs, stats):
    """Layers 1..trip; configs shallower than the chunk's deepest pass their signal through.

    ``bufs``: the workspace ``(hs, dps, uws, ubs)`` (each layer's input, phi'(z) and unit
    draws), filled for the backward pass. Returns ``(h, bufs, stats)``.
    """
    sdt = ops.sdt

    def fwd(i, carry):
        h, (hs, dps, uws, ubs), stats, (e_pre, e_dphi) = carry
        layer = i + 1
        active = layer <= depth
        uw, ub = weights.draw(layer)
        wt, b = weights.scaled(uw, ub)
        z = _mm("cbi,cij->cbj", h, wt) + b[:, None, :]
        hn, dphi = jax.lax.switch(act, phis, z)
        hmax = ops.absmax(hn)
        pre_rms, e_pre = ops.rms_guess(z, e_pre)
        dphi_rms, e_dphi = ops.rms_guess(dphi, e_dphi)
        stats = _put(
            stats,
            layer,
            active,
            sdt,
            pre_rms=pre_rms,
            post_rms=ops.rms(hn, hmax),
            post_max=hmax,
            dphi_rms=dphi_rms,
            # By bit pattern: XLA on CPU reads subnormals as 0 in comparisons.
            **ops.layer_counts(hn, dphi, threshold, jnp.isfinite(hmax)),
        )
        hs = jax.lax.dynamic_update_index_in_dim(hs, jnp.swapaxes(h, 1, 2), i, 0)
        dps = jax.lax.dynamic_update_index_in_dim(dps, dphi, i, 0)
        uws = jax.lax.dynamic_update_index_in_dim(uws, uw, i, 0)
        ubs = jax.lax.dynamic_update_index_in_dim(ubs, ub, i, 0)
        h = jnp.where(active[:, None, None], hn, h)
        return h, (hs, dps, uws, ubs), stats, (e_pre, e_dphi)

    e0 = jnp.zeros(depth.shape[0], jnp.int32)
    h, bufs, stats, _ = jax.lax.fori_loop(0, trip, fwd, (x, bufs, stats, (e0, e0)))
    return h, bufs, stats


def _readout(ops: ChunkStats, loss_name: str, weights: _Weights, h, depth, stats):
    """The readout layer (depth + 1), the loss and its gradient: ``(loss, g, stats, e_g)``, with
    ``g`` the gradient entering the last hidden layer and ``e_g`` the exponent guess of its RMS."""
    cfg = jnp.arange(depth.shape[0])
    w0, b0 = weights.scaled(*weights.draw(0))
    y = _mm("cbi,cij->cbj", h, w0) + b0[:, None, :]
    yf = y.astype(ops.sdt)
    # The formulas are the losses registry's, reduced per config by the chunk's own means.
    fn = LOSSES[loss_name]
    loss = fn.value(yf, ops.mean12, lambda v: ops.mean12(v, jnp.sum))
    gy = fn.output_grad(yf, ops.entries).astype(ops.dtype)
    readout = {
        "pre_rms": ops.rms(y),
        "post_rms": ops.rms(y),
        "post_max": ops.absmax(y),
        "grad_post_rms": ops.rms(gy),
        "grad_pre_rms": ops.rms(gy),
        "grad_w_rms": ops.rms(_mm("cbi,cbj->cij", h, gy)),
        **ops.counts(y, "post"),
        **ops.counts(gy, "grad"),
    }
    top = depth + 1
    stats = {
        **stats,
        **{k: stats[k].at[top, cfg].set(v.astype(ops.sdt)) for k, v in readout.items()},
    }
    g = _mm("cbj,cij->cbi", gy, w0)
    e_g = exponent(jnp.maximum(readout["grad_post_rms"], ops.sinfo.tiny))
    return loss, g, stats, e_g


def _backward(ops: ChunkStats, weights: _Weights, trip, depth, bufs, g, stats, e_g):
    """The backward pass by hand, layers trip..1: dL/dz = dL/dh * phi'(z), dL/dW = h_in^T
    dL/dz, dL/dh_in = dL/dz W^T; then the input layer's gradient statistics."""
    hs, dps, uws, ubs = bufs

    def bwd(j, carry):
        g, stats, (e_post, e_pre, e_w) = carry
        i = trip - 1 - j
        layer = i + 1
        active = layer <= depth
        dphi = jax.lax.dynamic_index_in_dim(dps, i, 0, keepdims=False)
        h_in = jax.lax.dynamic_index_in_dim(hs, i, 0, keepdims=False)
        uw = jax.lax.dynamic_index_in_dim(uws, i, 0, keepdims=False)
        ub = jax.lax.dynamic_index_in_dim(ubs, i, 0, keepdims=False)
        wt, _ = weights.scaled(uw, ub)
        gz = g * dphi
        grad_post_rms, e_post = ops.rms_guess(g, e_post)
        grad_pre_rms, e_pre = ops.rms_guess(gz, e_pre)
        grad_w_rms, e_w = ops.rms_guess(_mm("cib,cbj->cij", h_in, gz), e_w)
        stats = _put(
            stats,
            layer,
            active,
            ops.sdt,
            grad_post_rms=grad_post_rms,
            grad_pre_rms=grad_pre_rms,
            grad_w_rms=grad_w_rms,
            **ops.counts(g, "grad", jnp.isfinite(grad_post_rms)),
        )
        g = jnp.where(active[:, None, None], _mm("cbj,cij->cbi", gz, wt), g)
        return g, stats, (e_post, e_pre, e_w)

    g, stats, _ = jax.lax.fori_loop(0, trip, bwd, (g, stats, (e_g, e_g, e_g)))
    rms_g = ops.rms(g)
    return _put(
        stats, 0, True, ops.sdt, grad_post_rms=rms_g, grad_pre_rms=rms_g, **ops.counts(g, "grad")
    )


def _summary(stats, depth, loss, n_layers: int, entries: int) -> dict:
    """The per-config outputs: stats as (config, layer), the gains and the first bad layers."""
    cfg = jnp.arange(depth.shape[0])
    layers = jnp.arange(n_layers)
    top = depth + 1
    t = {k: v.T for k, v in stats.items()}  # (config, layer)
    valid = layers[None, :] <= top[:, None]

    def first(mask):
        return first_layer_where(mask & valid)

    def last(mask):
        return last_layer_where(mask & valid)

    out_rms = t["post_rms"][cfg, top]
    out = dict(t)
    out.update(
        output_rms=out_rms,
        loss=loss,
        output_gain=out_rms / t["post_rms"][:, 0],
        grad_ratio=t["grad_post_rms"][:, 0] / t["grad_post_rms"][cfg, top],
        first_inf_forward=first(t["post_inf"] > 0),
        first_nan_forward=first(t["post_nan"] > 0),
        first_nonfinite_forward=first((t["post_inf"] > 0) | (t["post_nan"] > 0)),
        first_zero_forward=first(t["post_zero"] == entries),
        first_inf_backward=last(t["grad_inf"] > 0),
        first_nan_backward=last(t["grad_nan"] > 0),
        first_nonfinite_backward=last((t["grad_inf"] > 0) | (t["grad_nan"] > 0)),
        first_zero_backward=last(t["grad_zero"] == entries),
    )
    return out


def _chunk_fn(st: _Static) -> Callable:
    """The kernel body for one device's slice of a chunk, explicitly batched over configs.

    Per-chunk (replicated) arguments: activation index, init-kind index, trip count (the chunk's
    largest depth), saturation threshold and the table of the chunk's distinct seeds. Per-config
    (sharded) arguments: depth, multiplier, bias std and the index of the config's seed in the
    table. Unit weight draws are made once per (distinct seed, layer) and scaled per config.
    """
    ops = ChunkStats(st.dtype, st.width, st.batch)
    sdt, w, n_layers = ops.sdt, st.width, st.n_layers
    phis = [value_and_derivative(a) for a in st.activations]
    units = [functools.partial(_unit, k, width=w, sdt=sdt) for k in st.kinds]

    def sweep_chunk(act, kind, trip, threshold, seeds, depth, mult, bias_std, sidx, hs, dps):
        keys = jax.vmap(jax.random.key)(seeds)
        weights = _Weights(st, units, kind, keys, mult, bias_std, sidx)
        x = jax.vmap(lambda k: _input(k, st.batch, w, ops.dtype, st.input))(keys)[sidx]
        stats = {
            k: jnp.full((n_layers, depth.shape[0]), jnp.asarray(jnp.nan, sdt)) for k in LAYER_VARS
        }
        rms_x = ops.rms(x)
        stats = _put(
            stats,
            0,
            True,
            sdt,
            pre_rms=rms_x,
            post_rms=rms_x,
            post_max=ops.absmax(x),
            **ops.counts(x, "post"),
        )
        s = seeds.shape[0]
        draws = (jnp.zeros((n_layers - 2, s, w, w), sdt), jnp.zeros((n_layers - 2, s, w), sdt))
        h, bufs, stats = _forward(
            ops, phis, weights, act, trip, threshold, depth, x, (hs, dps, *draws), stats
        )
        loss, g, stats, e_g = _readout(ops, st.loss, weights, h, depth, stats)
        stats = _backward(ops, weights, trip, depth, bufs, g, stats, e_g)
        return _summary(stats, depth, loss, n_layers, ops.entries), bufs[0], bufs[1]

    return sweep_chunk


@functools.lru_cache(maxsize=64)
def _kernel(st: _Static) -> tuple[Callable, NamedSharding, NamedSharding, NamedSharding]:
    """``jit(shard_map(body))`` over the devices: each device runs its slice of the chunk."""
    mesh = Mesh(np.array(st.devices), ("config",))
    rep, cfg, buf = PartitionSpec(), PartitionSpec("config"), PartitionSpec(None, "config")
    sharded = jax.shard_map(
        _chunk_fn(st),
        mesh=mesh,
        in_specs=(rep,) * 5 + (cfg,) * 4 + (buf,) * 2,
        out_specs=(cfg, buf, buf),
        check_vma=False,
    )
    # The workspace (every layer's h and phi'(z)) is donated and handed back, so each call reuses
    # the last one's memory: a fresh buffer costs more to zero and fault in than to fill.
    kernel = jax.jit(sharded, donate_argnums=(9, 10))
    return kernel, NamedSharding(mesh, cfg), NamedSharding(mesh, rep), NamedSharding(mesh, buf)
