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

from stabkit._numerics import classify, compute_dtype, exponent, pow2
from stabkit.activations import value_and_derivative
from stabkit.init import init_rule, initializer_names
from stabkit.losses import LOSSES
from stabkit.sweeps.spec import LAYER_VARS

#: Counts how many times the sweep kernel has been traced (= compiled); tests read it.
_KERNEL_TRACES = 0

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


#: Per-config reductions over at least this many entries use XLA's batched reduction (see mean12).
_BATCHED_REDUCTION_MIN = 4096


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


def _chunk_fn(st: _Static) -> Callable:
    """The kernel body for one device's slice of a chunk, explicitly batched over configs.

    Per-chunk (replicated) arguments: activation index, init-kind index, trip count (the chunk's
    largest depth), saturation threshold and the table of the chunk's distinct seeds. Per-config
    (sharded) arguments: depth, multiplier, bias std and the index of the config's seed in the
    table. Unit weight draws are made once per (distinct seed, layer) and scaled per config.
    """
    dtype = jnp.dtype(st.dtype)
    sdt = compute_dtype(dtype)
    w, batch, n_layers = st.width, st.batch, st.n_layers
    max_depth = n_layers - 2
    phis = [value_and_derivative(a) for a in st.activations]
    units = [functools.partial(_unit, k, width=w, sdt=sdt) for k in st.kinds]
    entries = batch * w
    nan = jnp.asarray(jnp.nan, sdt)

    def mm(spec, a, b):
        return jnp.einsum(spec, a, b, precision=_PRECISION)

    def absmax(v):
        return jnp.max(jnp.abs(v), axis=(1, 2)).astype(sdt)

    sinfo = jnp.finfo(sdt)
    s_bias = sinfo.maxexp - 1

    def scales(m):
        """Powers of two ``(2^-e, 2^e)`` with ``2^e <= m < 2^(e+1)`` (1 where m is 0 or not finite).

        Scaling by an exact power of two rounds nothing, so however XLA arranges the arithmetic
        (it rewrites ``v / b`` as ``v * (1 / b)`` in some programs and not in others, e.g. after
        the SPMD partitioner) the result is the same bit for bit. ``e`` is clamped two short of
        the exponent range so both factors are normal numbers.
        """
        e = jnp.where((m > 0) & jnp.isfinite(m), jnp.clip(exponent(m), 2 - s_bias, s_bias - 2), 0)
        return pow2(-e, sdt), pow2(e, sdt)

    def mean12(v, reduce=jnp.mean):
        """Mean (or ``reduce``) of each config's (rows, units) block, the same whatever the chunk.

        XLA:CPU's reduction emitter picks its summation order from the whole shape: for blocks
        of fewer than about 2048 entries, a chunk of 4 or more configs sums each config in
        another order than a chunk of 3 (measured: 128 x 8, 64 x 16, 16 x 32, 31 x 64), so a
        config's statistics would depend on its chunk-mates' count. Small blocks are therefore
        reduced one config at a time under ``lax.map`` (the same compiled reduction for every
        chunk of 2 or more configs); from 4096 entries on, no chunk of 2 to 512 configs changed
        the order, and the batched reduction (about 2x faster) is kept.
        """
        if v.shape[1] * v.shape[2] >= _BATCHED_REDUCTION_MIN:
            return reduce(v, axis=(1, 2))
        return jax.lax.map(reduce, v)

    def rms(v, m=None):
        """RMS over (batch, units) that cannot overflow; ``m``: max|v| if known.

        The entries are scaled by a power of two near 1/max|v| (exact), so the squares are at
        most 4 and the sum cannot overflow; a non-finite max leaves inf/NaN entries to show
        through. The statistics cost more than the matrix products on CPU, so each pass over the
        data counts: the max that post_max needs is reused here.
        """
        v = v.astype(sdt)
        m = absmax(v) if m is None else m
        down, up = scales(m)
        return jnp.sqrt(mean12(jnp.square(v * down[:, None, None]))) * up

    # A scaled sum of squares within 2^+-window cannot have overflowed, and the squares flushed
    # to zero (below 2^-126 in float32) add up to less than 2^-52 of it: no pass for the max needed.
    window = sinfo.maxexp // 2 - 14

    def rms_guess(v, e):
        """``(rms(v), exponent)``: one pass over ``v``, scaled by the guess ``2^-e`` per config.

        ``e`` is the exponent of the same statistic one layer before (a net's RMS changes by
        far less than 2^25 a layer). Where the scaled sum of squares leaves the window the guess
        was wrong, or an entry is inf/NaN, or every entry is 0: those configs take :func:`rms`
        (max, then sum), in a ``cond`` that runs only when a config of the chunk needs it. Either
        way the result depends on the config alone, never on its chunk-mates.
        """
        v = v.astype(sdt)
        e = jnp.clip(e, 2 - s_bias, s_bias - 2)
        ss = mean12(jnp.square(v * pow2(-e, sdt)[:, None, None]))
        ok = (ss >= 2.0**-window) & (ss <= 2.0**window)
        r = jnp.where(ok, jnp.sqrt(ss) * pow2(e, sdt), 0)
        r = jax.lax.cond(jnp.all(ok), lambda: r, lambda: jnp.where(ok, r, rms(v)))
        fine = (r > 0) & jnp.isfinite(r)
        return r, jnp.where(fine, exponent(jnp.where(fine, r, 1)), e)

    # Census by bit pattern (XLA:CPU reads float32 subnormals as 0 in comparisons), the classes of
    # stabkit.census (_numerics.classify). Two classes are packed in 16-bit halves of one int32 sum
    # where the counts fit, so four counts take two passes over the data instead of four.
    info = jnp.finfo(dtype)
    nbits = 8 * dtype.itemsize
    ubits = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[nbits]
    magnitude = (1 << (nbits - 1)) - 1
    packed = entries < 2**15
    i32 = jnp.int32

    def counts(v, prefix, finite=None):
        """The census of ``v``; ``finite``: per config, whether ``v`` is known to hold no inf or
        NaN (its RMS is finite): then the inf/NaN pass runs only if a chunk-mate needs it."""

        def classes(v):  # computed inside each pass: XLA fuses it there instead of storing it
            return classify(jax.lax.bitcast_convert_type(v, ubits), nbits, info.nexp, info.nmant)

        def nonfinite(v):
            *_, inf, nan = classes(v)
            if packed:
                hi = jnp.sum(inf.astype(i32) | (nan.astype(i32) << 16), axis=(1, 2), dtype=i32)
                return hi & 0xFFFF, hi >> 16
            return tuple(jnp.sum(c, axis=(1, 2), dtype=i32) for c in (inf, nan))

        _, sub, zero, _, _ = classes(v)
        if packed:
            lo = jnp.sum(zero.astype(i32) | (sub.astype(i32) << 16), axis=(1, 2), dtype=i32)
            zero, sub = lo & 0xFFFF, lo >> 16
        else:
            zero, sub = (jnp.sum(c, axis=(1, 2), dtype=i32) for c in (zero, sub))
        if finite is None:
            inf, nan = nonfinite(v)
        else:
            none = jnp.zeros(v.shape[0], i32)
            inf, nan = jax.lax.cond(jnp.all(finite), lambda v: (none, none), nonfinite, v)
        return {
            f"{prefix}_subnormal": sub,
            f"{prefix}_zero": zero,
            f"{prefix}_inf": inf,
            f"{prefix}_nan": nan,
        }

    def dead(dphi):
        """Fraction of units whose phi' is exactly 0 (+0 or -0, by bit pattern) on every example."""
        a = jax.lax.bitcast_convert_type(dphi, ubits) & magnitude
        return jnp.mean(jnp.sum(a == 0, axis=1, dtype=jnp.int32) == batch, axis=1, dtype=sdt)

    def body(act, kind, trip, threshold, seeds, depth, mult, bias_std, sidx, hs, dps):
        global _KERNEL_TRACES
        _KERNEL_TRACES += 1
        c = depth.shape[0]
        keys = jax.vmap(jax.random.key)(seeds)
        wkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, 0)
        bkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
        xs = jax.vmap(lambda k: _input(k, batch, w, dtype, st.input))(keys)
        x = xs[sidx]
        cfg = jnp.arange(c)
        layers = jnp.arange(n_layers)

        def draw(layer):
            """Unit weights (seeds, w, w) and unit biases (seeds, w) of one layer."""
            lw = jax.vmap(jax.random.fold_in, (0, None))(wkeys, layer)
            lb = jax.vmap(jax.random.fold_in, (0, None))(bkeys, layer)
            uw = jax.lax.switch(kind, [jax.vmap(u) for u in units], lw)
            ub = jax.vmap(lambda k: jax.random.normal(k, (w,), sdt))(lb)
            return uw, ub

        def scaled(uw, ub):
            wt = (mult[:, None, None] * uw[sidx]).astype(dtype)
            # Zero biases are +0 exactly, as stabkit.init.zeros() makes them.
            b = jnp.where(bias_std[:, None] == 0, 0, bias_std[:, None] * ub[sidx]).astype(dtype)
            return wt, b

        def put(stats, layer, active, **vals):
            # Only active configs write: a config's readout (layer depth + 1) may sit inside a
            # deeper chunk-mate's loop range, and must not be overwritten there.
            out = dict(stats)
            for k, v in vals.items():
                row = jnp.where(active, v.astype(sdt), stats[k][layer])
                out[k] = jax.lax.dynamic_update_index_in_dim(stats[k], row, layer, 0)
            return out

        stats = {k: jnp.full((n_layers, c), nan) for k in LAYER_VARS}
        stats = put(
            stats, 0, True, pre_rms=rms(x), post_rms=rms(x), post_max=absmax(x), **counts(x, "post")
        )

        # Forward, layers 1..trip; configs shallower than the chunk's deepest pass through.
        def fwd(i, carry):
            h, hs, dps, uws, ubs, stats, (e_pre, e_dphi) = carry
            layer = i + 1
            active = layer <= depth
            uw, ub = draw(layer)
            wt, b = scaled(uw, ub)
            z = mm("cbi,cij->cbj", h, wt) + b[:, None, :]
            hn, dphi = jax.lax.switch(act, phis, z)
            hmax = absmax(hn)
            pre_rms, e_pre = rms_guess(z, e_pre)
            dphi_rms, e_dphi = rms_guess(dphi, e_dphi)
            stats = put(
                stats,
                layer,
                active,
                pre_rms=pre_rms,
                post_rms=rms(hn, hmax),
                post_max=hmax,
                dphi_rms=dphi_rms,
                saturated=jnp.mean(jnp.abs(dphi).astype(sdt) < threshold, axis=(1, 2), dtype=sdt),
                # By bit pattern: XLA on CPU reads subnormals as 0 in comparisons.
                dead=dead(dphi),
                **counts(hn, "post", jnp.isfinite(hmax)),
            )
            hs = jax.lax.dynamic_update_index_in_dim(hs, jnp.swapaxes(h, 1, 2), i, 0)
            dps = jax.lax.dynamic_update_index_in_dim(dps, dphi, i, 0)
            uws = jax.lax.dynamic_update_index_in_dim(uws, uw, i, 0)
            ubs = jax.lax.dynamic_update_index_in_dim(ubs, ub, i, 0)
            h = jnp.where(active[:, None, None], hn, h)
            return h, hs, dps, uws, ubs, stats, (e_pre, e_dphi)

        s = seeds.shape[0]
        e0 = jnp.zeros(c, jnp.int32)
        carry = (
            x,
            hs,
            dps,
            jnp.zeros((max_depth, s, w, w), sdt),
            jnp.zeros((max_depth, s, w), sdt),
        )
        h, hs, dps, uws, ubs, stats, _ = jax.lax.fori_loop(0, trip, fwd, (*carry, stats, (e0, e0)))
        w0, b0 = scaled(*draw(0))
        y = mm("cbi,cij->cbj", h, w0) + b0[:, None, :]
        yf = y.astype(sdt)
        # The formulas are the losses registry's, reduced per config by the chunk's own means.
        fn = LOSSES[st.loss]
        loss = fn.value(yf, mean12, lambda v: mean12(v, jnp.sum))
        gy = fn.output_grad(yf, entries).astype(dtype)
        top = depth + 1
        readout = {
            "pre_rms": rms(y),
            "post_rms": rms(y),
            "post_max": absmax(y),
            "grad_post_rms": rms(gy),
            "grad_pre_rms": rms(gy),
            "grad_w_rms": rms(mm("cbi,cbj->cij", h, gy)),
            **counts(y, "post"),
            **counts(gy, "grad"),
        }
        stats = {
            **stats,
            **{k: stats[k].at[top, cfg].set(v.astype(sdt)) for k, v in readout.items()},
        }
        g = mm("cbj,cij->cbi", gy, w0)

        # Backward by hand, layers trip..1: dL/dz = dL/dh * phi'(z), dL/dW = h_in^T dL/dz,
        # dL/dh_in = dL/dz W^T.
        def bwd(j, carry):
            g, stats, (e_post, e_pre, e_w) = carry
            i = trip - 1 - j
            layer = i + 1
            active = layer <= depth
            dphi = jax.lax.dynamic_index_in_dim(dps, i, 0, keepdims=False)
            h_in = jax.lax.dynamic_index_in_dim(hs, i, 0, keepdims=False)
            uw = jax.lax.dynamic_index_in_dim(uws, i, 0, keepdims=False)
            ub = jax.lax.dynamic_index_in_dim(ubs, i, 0, keepdims=False)
            wt, _ = scaled(uw, ub)
            gz = g * dphi
            grad_post_rms, e_post = rms_guess(g, e_post)
            grad_pre_rms, e_pre = rms_guess(gz, e_pre)
            grad_w_rms, e_w = rms_guess(mm("cib,cbj->cij", h_in, gz), e_w)
            stats = put(
                stats,
                layer,
                active,
                grad_post_rms=grad_post_rms,
                grad_pre_rms=grad_pre_rms,
                grad_w_rms=grad_w_rms,
                **counts(g, "grad", jnp.isfinite(grad_post_rms)),
            )
            g = jnp.where(active[:, None, None], mm("cbj,cij->cbi", gz, wt), g)
            return g, stats, (e_post, e_pre, e_w)

        e_g = exponent(jnp.maximum(readout["grad_post_rms"], sinfo.tiny))
        g, stats, _ = jax.lax.fori_loop(0, trip, bwd, (g, stats, (e_g, e_g, e_g)))
        stats = put(stats, 0, True, grad_post_rms=rms(g), grad_pre_rms=rms(g), **counts(g, "grad"))
        stats = {k: v.T for k, v in stats.items()}  # (config, layer)
        valid = layers[None, :] <= top[:, None]

        def first(mask):
            hit = jnp.min(jnp.where(mask & valid, layers, n_layers), axis=1)
            return jnp.where(hit >= n_layers, -1, hit).astype(jnp.int32)

        def last(mask):
            return jnp.max(jnp.where(mask & valid, layers, -1), axis=1).astype(jnp.int32)

        t = stats
        out_rms = t["post_rms"][cfg, top]
        out = dict(stats)
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
        return out, hs, dps

    return body


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
