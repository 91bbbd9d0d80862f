"""Benchmark: the network sweep (``stabkit.sweep(NetSweepSpec)``) against the loops a JAX user
writes for the same grid and the same statistics, and the MLP's hand-written kernel against the
general path.

Three grids, float32, gaussian init, forward and backward statistics at every block boundary:

* ``residual_ln``: residual MLP blocks (relu) with a layer norm before or after the branch
  (``norm_position`` pre/post), depths 1..24, scale 0.5/1/2, alpha 1 and 0.5, 4 seeds; width 32,
  batch 16 (1,152 configs);
* ``attention``: residual 4-head softmax attention with a pre/post layer norm, sequence 8, depths
  1..16, scale 0.5/1/2, alpha 1 and 0.5, 2 seeds; width 32, batch 4 (384 configs);
* ``mlp``: the plain dense relu MLP, depths 4..64 step 4, 8 scales, 4 seeds; width 64, batch 128
  (512 configs): ``stabkit.sweep(SweepSpec)`` (the hand-written kernel) against
  ``stabkit.sweep(NetSweepSpec(block="dense", ...))`` (the general path: one ``jax.vjp`` per
  block under a reverse loop).

Baselines, measured in the same run:

* ``loop_trace``: per (depth, block variant) one ``jax.jit(jax.vmap(...))`` of
  ``stabkit.trace(stabkit.net_init(...))`` over the configs of that depth: the same statistics
  exactly; what a user of stabkit's trace writes without the sweep;
* ``loop_plain``: per (depth, variant) one ``jax.jit(jax.vmap(...))`` of a plain-JAX network
  written the way a user writes it (Python loop over layers, ``jax.grad`` with respect to a zero
  perturbation of every boundary for the gradients), computing only RMS forward and backward and
  max |h|: fewer statistics than the sweep, so the ratio against it is conservative.

End to end, compile included (the sweep's kernel cache cleared first). Target (issue 14): the sweep
at least 10x faster than the per-(depth, block) loop. Run: ``python benchmarks/bench_blocks.py
[--grids residual_ln,attention,mlp] [--fraction F]``; ``--fraction`` times that share of the
baselines' depths and extrapolates (their cost is linear in the number of depths). Prints a table
and writes ``benchmarks/results/bench_blocks.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import stabkit as sk


@dataclasses.dataclass(frozen=True)
class Grid:
    name: str
    block: str
    depths: tuple
    positions: tuple = ("pre", "post")
    scales: tuple = (0.5, 1.0, 2.0)
    alphas: tuple = (1.0, 0.5)
    seeds: int = 4
    width: int = 32
    batch: int = 16
    seq_len: int = 8
    options: tuple = ()


GRIDS = {
    "residual_ln": Grid("residual_ln", "residual", tuple(range(1, 25))),
    "attention": Grid(
        "attention", "attention", tuple(range(1, 17)), seeds=2, batch=4, options=(("heads", 4),)
    ),
}


def _spec(g: Grid) -> sk.NetSweepSpec:
    return sk.NetSweepSpec(
        depth=list(g.depths),
        width=g.width,
        block=g.block,
        norm="layer",
        norm_position=list(g.positions),
        scale=list(g.scales),
        alpha=list(g.alphas),
        seed=list(range(g.seeds)),
        batch=g.batch,
        seq_len=g.seq_len,
        block_options=dict(g.options),
    )


def _clear():
    jax.clear_caches()
    from stabkit.sweeps import net_driver

    net_driver._kernel.cache_clear()


def bench_sweep(g: Grid) -> dict:
    _clear()
    spec = _spec(g)
    t0 = time.perf_counter()
    ds = sk.sweep(spec, progress=False)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    sk.sweep(spec, progress=False)
    warm = time.perf_counter() - t0
    return {"seconds": total, "warm_seconds": warm, "configs": spec.n_configs, "dataset": ds}


def _configs(g: Grid):
    # The spec stores numeric axes sorted: the same order here.
    s, a, k = np.meshgrid(sorted(g.scales), sorted(g.alphas), np.arange(g.seeds), indexing="ij")
    return (
        jnp.asarray(s.ravel(), jnp.float32),
        jnp.asarray(a.ravel(), jnp.float32),
        jnp.asarray(k.ravel(), jnp.uint32),
    )


def _input(g: Grid, blk, seed):
    return sk.net_sweep_input(seed, g.batch, (g.seq_len,) * blk.spatial[0], g.width, "float32")


def bench_loop_trace(g: Grid, depths) -> dict:
    """One jit(vmap(trace(net_init))) per (depth, variant): the sweep's statistics exactly."""
    _clear()
    scales, alphas, seeds = _configs(g)
    t0 = time.perf_counter()
    out = {}
    for pos in g.positions:
        blk = sk.block(g.block, norm="layer", norm_position=pos, **dict(g.options))
        for d in depths:

            def one(scale, alpha, seed, blk=blk, d=d):
                key = jax.random.key(seed)
                p = sk.net_init(
                    key, blk, depth=d, width=g.width, scale=scale, alpha=alpha, embed=False
                )
                x = sk.net_sweep_input(seed, g.batch, (g.seq_len,) * blk.spatial[0], g.width, "f4")
                return sk.trace(p, x)

            t = jax.jit(jax.vmap(one))(scales, alphas, seeds)
            out[(pos, d)] = jax.block_until_ready(t.rms)
    return {"seconds": time.perf_counter() - t0, "results": out}


def _plain_block(g: Grid, pos: str):
    """A user's residual block with a layer norm, in plain JAX."""
    heads = dict(g.options).get("heads", 1)

    def ln(u):
        m = u.mean(-1, keepdims=True)
        return (u - m) / jnp.sqrt(((u - m) ** 2).mean(-1, keepdims=True) + 1e-6)

    def init(key, scale):
        k = jax.random.split(key, 4)
        w = g.width
        return [scale * jax.random.normal(k[i], (w, w)) / jnp.sqrt(w) for i in range(4)]

    def branch(p, u):
        if g.block == "residual":
            return jax.nn.relu(u @ p[0]) @ p[1]
        b, n, w = u.shape
        q, kk, v = (
            (u @ p[i]).reshape(b, n, heads, w // heads).transpose(0, 2, 1, 3) for i in range(3)
        )
        a = jax.nn.softmax(q @ kk.transpose(0, 1, 3, 2) / jnp.sqrt(w // heads), axis=-1)
        return (a @ v).transpose(0, 2, 1, 3).reshape(b, n, w) @ p[3]

    def apply(p, h, alpha):
        if pos == "pre":
            return h + alpha * branch(p, ln(h))
        return ln(h + alpha * branch(p, h))

    return init, apply


def bench_loop_plain(g: Grid, depths) -> dict:
    scales, alphas, seeds = _configs(g)
    _clear()
    t0 = time.perf_counter()
    for pos in g.positions:
        init, apply = _plain_block(g, pos)
        spatial = (g.seq_len,) if g.block == "attention" else ()
        for d in depths:

            def one(scale, alpha, seed, d=d, init=init, apply=apply, spatial=spatial):
                keys = jax.random.split(jax.random.key(seed), d + 1)
                params = [init(keys[i], scale) for i in range(d)]
                readout = jax.random.normal(keys[d], (g.width, g.width)) / jnp.sqrt(g.width)
                x = jax.random.normal(jax.random.key(7), (g.batch, *spatial, g.width))

                def loss(dh):
                    h, hs = x + dh[0], [x]
                    for i in range(d):
                        h = apply(params[i], h, alpha) + dh[i + 1]
                        hs.append(h)
                    return 0.5 * jnp.mean((h @ readout) ** 2), hs

                dh = jnp.zeros((d + 1, *x.shape))
                grads, hs = jax.grad(loss, has_aux=True)(dh)
                rms = jnp.stack([jnp.sqrt(jnp.mean(h**2)) for h in hs])
                mx = jnp.stack([jnp.max(jnp.abs(h)) for h in hs])
                return rms, mx, jnp.sqrt(jnp.mean(grads**2, axis=tuple(range(1, grads.ndim))))

            jax.block_until_ready(jax.jit(jax.vmap(one))(scales, alphas, seeds))
    return {"seconds": time.perf_counter() - t0}


def bench_mlp() -> dict:
    """The hand-written MLP kernel against the general path on the same dense grid."""
    depths = list(range(4, 65, 4))
    common = dict(
        depth=depths,
        width=64,
        scale=list(np.linspace(0.5, 2.0, 8).tolist()),
        seed=[0, 1, 2, 3],
        batch=128,
        activation="relu",
    )
    out = {}
    for name, spec in (
        ("hand_written", sk.SweepSpec(**common)),
        ("general", sk.NetSweepSpec(block="dense", **common)),
    ):
        _clear()
        t0 = time.perf_counter()
        sk.sweep(spec, progress=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        sk.sweep(spec, progress=False)
        out[name] = {"seconds": first, "warm_seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", default="residual_ln,attention,mlp")
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument(
        "--out", default=str(pathlib.Path(__file__).parent / "results/bench_blocks.json")
    )
    args = ap.parse_args()
    rows, record = [], {}
    for name in args.grids.split(","):
        if name == "mlp":
            r = bench_mlp()
            hw, gen = r["hand_written"], r["general"]
            record["mlp"] = {
                k: {"seconds": v["seconds"], "warm_seconds": v["warm_seconds"]}
                for k, v in r.items()
            }
            record["mlp"]["general_over_hand_written_warm"] = (
                gen["warm_seconds"] / hw["warm_seconds"]
            )
            record["mlp"]["general_over_hand_written_e2e"] = gen["seconds"] / hw["seconds"]
            rows.append(
                (
                    "mlp: general path / hand-written kernel",
                    f"{gen['seconds']:.1f} s / {hw['seconds']:.1f} s",
                    f"e2e {gen['seconds'] / hw['seconds']:.2f}x, warm "
                    f"{gen['warm_seconds'] / hw['warm_seconds']:.2f}x slower",
                )
            )
            continue
        g = GRIDS[name]
        n_depths = max(1, round(len(g.depths) * args.fraction))
        depths = g.depths[:: max(1, len(g.depths) // n_depths)][:n_depths]
        scale_up = len(g.depths) / len(depths)
        s = bench_sweep(g)
        lt = bench_loop_trace(g, depths)
        lp = bench_loop_plain(g, depths)
        ds = s.pop("dataset")
        # The sweep's numbers are the loop's, config for config.
        worst = 0.0
        for (pos, d), rms in lt.pop("results").items():
            got = ds.rms.sel(norm_position=pos, depth=d).squeeze().values
            ref = np.asarray(rms).reshape((*got.shape[:-1], -1))[..., : d + 2]
            worst = max(worst, float(np.nanmax(np.abs(got[..., : d + 2] - ref) / np.abs(ref))))
        lt_s, lp_s = lt["seconds"] * scale_up, lp["seconds"] * scale_up
        record[name] = {
            "configs": s["configs"],
            "sweep_seconds": s["seconds"],
            "sweep_warm_seconds": s["warm_seconds"],
            "loop_trace_seconds": lt_s,
            "loop_plain_seconds": lp_s,
            "speedup_vs_loop_trace": lt_s / s["seconds"],
            "speedup_vs_loop_plain": lp_s / s["seconds"],
            "max_relative_difference_vs_loop_trace": worst,
            "baseline_fraction_timed": len(depths) / len(g.depths),
        }
        rows.append(
            (
                f"{name}: sweep vs jit(vmap(trace)) per (depth, block)",
                f"{s['seconds']:.1f} s vs {lt_s:.1f} s",
                f"{lt_s / s['seconds']:.1f}x (max rel. diff {worst:.1e})",
            )
        )
        rows.append(
            (
                f"{name}: sweep vs plain-JAX jit(vmap) per (depth, block)",
                f"{s['seconds']:.1f} s vs {lp_s:.1f} s",
                f"{lp_s / s['seconds']:.1f}x",
            )
        )
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>22}  {r[2]}")
    record["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
