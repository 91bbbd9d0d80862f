"""The network sweep: every configuration of a :class:`NetSweepSpec` as a few compiled kernels.

One kernel per (dtype, width, block, norm, placement, activation, init): depth, the weight
multiplier ``scale``, the residual scale ``alpha``, ``bias_std`` and the seed are data. A chunk of
configs runs as ``jit(shard_map(vmap(trace)))`` over the devices: each config draws its blocks'
parameters on the fly from its own seed (block ``l`` from ``fold_in(split(key(seed))[1], l)``,
as :func:`stabkit.net_init` does) and runs :func:`stabkit.networks.trace_net`'s computation, the
general path (a ``fori_loop`` to the config's own depth forward, one ``jax.vjp`` per block
backward). Configs are ordered depth-major within a kernel, so a chunk holds few depths and its
loop runs to the deepest of them.

Every config's network is ``net_init(jax.random.key(seed), block, depth=depth, width=width,
init=init, scale=scale, alpha=alpha, bias_std=bias_std, dtype=dtype, embed=False, **hyper)`` and
its input :func:`net_sweep_input`: its randomness comes from its own seed and coordinates, never
from its position, so the result does not depend on the chunk size or the device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from stabkit._checks import check_memory
from stabkit._numerics import compute_dtype
from stabkit.losses import whole_array_loss
from stabkit.networks.blocks import Block
from stabkit.networks.network import Stack, block_keys, head_params
from stabkit.networks.trace import trace_core
from stabkit.sweeps.dataset import _versions
from stabkit.sweeps.net_spec import (
    NET_AXES,
    NET_CONFIG_VARS,
    NET_HEAD_VARS,
    NET_INT_VARS,
    NET_LAYER_VARS,
    NetSweepSpec,
    block_label,
)
from stabkit.sweeps.spec import _spec_json

__all__ = ["net_sweep", "net_sweep_input"]

_INNER = NET_AXES[7:]  # depth, scale, alpha, bias_std, seed: data


def net_sweep_input(seed: int, batch: int, spatial: tuple[int, ...], width: int, dtype: Any):
    """The input ``(batch, *spatial, width)`` a network-sweep config with this seed sees:
    N(0, 1) from ``fold_in(key(seed), 3)``, drawn in the compute dtype and rounded once.

    Examples:
        >>> net_sweep_input(0, 2, (3,), 4, "float32").shape
        (2, 3, 4)
    """
    return _input(jax.random.key(seed), batch, tuple(spatial), width, jnp.dtype(dtype))


def _input(key, batch, spatial, width, dtype):
    x = jax.random.normal(
        jax.random.fold_in(key, 3), (batch, *spatial, width), compute_dtype(dtype)
    )
    return x.astype(dtype)


@dataclasses.dataclass(frozen=True)
class _Static:
    dtype: str
    width: int
    block: Block
    init: str
    spatial: tuple
    batch: int
    loss: str
    hyper: tuple  # the fixed extra hyper-parameters
    max_depth: int
    devices: tuple


def _one(st: _Static):
    dtype, width, block = jnp.dtype(st.dtype), st.width, st.block
    sdt = compute_dtype(dtype)
    loss_fn = whole_array_loss(st.loss)
    defaults = {**block.hyper_defaults, **dict(st.hyper)}

    def run(depth, scale, alpha, bias_std, seed):
        key = jax.random.key(seed)
        k_heads, k_blocks = block_keys(key)
        hyper = {k: jnp.asarray(v, sdt) for k, v in defaults.items()}
        hyper.update(scale=scale, alpha=alpha, bias_std=bias_std)

        def params_of(layer):
            return block.init(jax.random.fold_in(k_blocks, layer), width, dtype, st.init, hyper)

        stack = Stack(block, hyper, st.max_depth, params_of)
        x = _input(key, st.batch, st.spatial, width, dtype)
        (r,) = head_params(k_heads, [(width, width)], dtype, st.init)
        t = trace_core(stack, None, r, x, depth, loss_fn)
        out = {
            k: getattr(t, k)
            for k in ("rms", "max_abs", "grad_rms", "grad_max_abs", "param_grad_rms")
        }
        for k in ("subnormal", "zero", "inf", "nan"):
            out[k] = getattr(t.census, k)
            out[f"grad_{k}"] = getattr(t.grad_census, k)
        out.update({f"tap:{k}": v for k, v in t.taps.items()})
        out["output_rms"] = t.output_rms
        out["loss"] = t.loss
        top = jnp.take(t.grad_rms, depth + 1)
        out["grad_ratio"] = t.grad_rms[0] / top
        for k in ("first_nonfinite_forward", "first_nonfinite_backward", "first_zero_backward"):
            out[k] = getattr(t, k)
        return out

    return run


@functools.lru_cache(maxsize=32)
def _kernel(st: _Static):
    mesh = Mesh(np.array(st.devices), ("config",))
    cfg = PartitionSpec("config")
    body = jax.shard_map(
        jax.vmap(_one(st)), mesh=mesh, in_specs=(cfg,) * 5, out_specs=cfg, check_vma=False
    )
    return jax.jit(body), NamedSharding(mesh, cfg)


def _block_taps(blk: Block, spec: NetSweepSpec, dtype: Any, width: int, init: str) -> dict:
    """The shapes of a block's taps (``jax.eval_shape``: nothing runs)."""
    defaults = {**blk.hyper_defaults, **dict(spec.hyper)}
    hyper = {k: jnp.asarray(x, jnp.float32) for k, x in defaults.items()}
    h = jax.ShapeDtypeStruct((spec.batch, *spec.spatial(blk), width), dtype)
    p = jax.eval_shape(lambda k: blk.init(k, width, dtype, init, hyper), jax.random.key(0))
    return jax.eval_shape(lambda p, h: blk.apply(p, h, hyper)[1], p, h)


def _tap_vars(spec: NetSweepSpec) -> dict[str, tuple[str, int]]:
    """The taps of every variant: name -> (``"layer"`` or ``"head"``, heads)."""
    taps: dict[str, tuple[str, int]] = {}
    for dtype, width, *built, init in spec.variants():
        with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
            shapes = _block_taps(spec.build(*built), spec, jnp.dtype(dtype), width, init)
        for name, s in shapes.items():
            heads = s.shape[0] if s.ndim else 0
            old = taps.get(name, ("", 0))[1]
            taps[name] = ("head" if heads else "layer", max(heads, old))
    return taps


def net_sweep(
    spec: NetSweepSpec, *, chunk_size=None, memory_budget=2**30, progress=True, devices=None
):
    """Run a :class:`NetSweepSpec` (called by :func:`stabkit.sweep`); an ``xarray.Dataset``."""
    import xarray as xr

    n, n_layers = spec.n_configs, spec.n_layers
    taps = _tap_vars(spec)
    heads = max([h for _, h in taps.values()] + [1])
    sdt = np.dtype(np.float64 if "float64" in spec.dtype else np.float32)
    layer_names = [*NET_LAYER_VARS] + [
        k for k, (kind, _) in taps.items() if kind == "layer" and k not in NET_LAYER_VARS
    ]
    head_names = [k for k, (kind, _) in taps.items() if kind == "head"]
    per_config = 8 * (
        n_layers * (len(layer_names) + heads * len(head_names)) + len(NET_CONFIG_VARS)
    )
    check_memory(
        n * per_config,
        "spec.n_configs",
        n,
        f"the network sweep's results ({per_config} bytes a config)",
    )

    def dtype_of(k):
        return np.dtype(np.int32) if k in NET_INT_VARS else sdt

    flat = {
        k: np.full((n, n_layers), 0 if k in NET_INT_VARS else np.nan, dtype_of(k))
        for k in layer_names
    }
    flat.update({k: np.full((n, n_layers, heads), np.nan, sdt) for k in head_names})
    flat.update(
        {
            k: np.full((n,), -1 if k in NET_INT_VARS else np.nan, dtype_of(k))
            for k in NET_CONFIG_VARS
        }
    )
    ndev = len(devices)
    shape = spec.shape
    inner_shape = shape[7:]
    n_inner = math.prod(inner_shape)
    di, si, ai, bi, ki = (a.ravel() for a in np.indices(inner_shape))
    bar = tqdm(
        total=n,
        disable=not progress,
        desc="sweep",
        unit="config",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        for vi, v in enumerate(spec.variants()):
            dtype, width, blk_value, norm, position, act, init = v
            blk = spec.build(blk_value, norm, position, act)
            static_idx = np.unravel_index(vi, shape[:7])
            start = int(np.ravel_multi_index((*static_idx, 0, 0, 0, 0, 0), shape))
            per = spec.config_bytes(dtype, width)
            if chunk_size is not None:
                chunk = max(2 * ndev, -(-chunk_size // ndev) * ndev)
            else:
                chunk = max(2 * ndev, min(256 * ndev, memory_budget // per) // ndev * ndev)
                chunk = min(chunk, max(2 * ndev, -(-n_inner // ndev) * ndev))
            st = _Static(
                dtype,
                width,
                blk,
                init,
                spec.spatial(blk),
                spec.batch,
                spec.loss,
                spec.hyper,
                max(spec.depth),
                tuple(devices),
            )
            x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
            with x64:
                kernel, sharding = _kernel(st)
                csdt = np.dtype(compute_dtype(dtype))
                depth_all = np.asarray(spec.depth, np.int32)[di]
                alpha_all = np.asarray(spec.alpha, np.float64)[ai]
                if spec.alpha_scaling == "inv_sqrt_depth":
                    alpha_all = alpha_all / np.sqrt(depth_all)
                cols = [
                    depth_all,
                    np.asarray(spec.scale, np.float64)[si].astype(csdt),
                    alpha_all.astype(csdt),
                    np.asarray(spec.bias_std, np.float64)[bi].astype(csdt),
                    np.asarray(spec.seed, np.uint32)[ki],
                ]
                for s in range(0, n_inner, chunk):
                    idx = np.arange(s, s + chunk).clip(max=n_inner - 1)
                    count = min(chunk, n_inner - s)
                    args = [jax.device_put(c[idx], sharding) for c in cols]
                    res = kernel(*args)
                    rows = slice(start + s, start + s + count)
                    for k, val in res.items():
                        name = k[4:] if k.startswith("tap:") else k
                        a = np.asarray(val)[:count]
                        if name in head_names:
                            flat[name][rows, :, : a.shape[-1]] = a
                        else:
                            flat[name][rows] = a
                    bar.update(count)
    coords = spec.coords()
    coords["layer"] = np.arange(n_layers)
    coords["head"] = np.arange(heads)
    data = {}
    descriptions = {**NET_LAYER_VARS, **NET_HEAD_VARS, **NET_CONFIG_VARS}
    for name, a in flat.items():
        extra = ("layer", "head") if name in head_names else ("layer",) if a.ndim == 2 else ()
        desc = descriptions.get(name, "tap: the block's own statistic")
        data[name] = ((*NET_AXES, *extra), a.reshape(shape + a.shape[1:]), {"description": desc})
    attrs = {
        "spec": _spec_json(spec.to_dict()),
        "versions": json.dumps(_versions(), sort_keys=True),
        "devices": json.dumps([str(d) for d in devices]),
        "blocks": json.dumps(
            {
                block_label(b): spec.build(b, "none", "pre", spec.activation[0]).describe()
                if isinstance(b, str)
                else b.describe()
                for b in spec.block
            }
        ),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
