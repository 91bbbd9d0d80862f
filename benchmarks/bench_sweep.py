"""Benchmark: stabkit.sweep against the loop a user would write, on the issue's standard grid.

Standard grid: activations linear, relu, tanh, sigmoid x 16 depths (4..64) x 8 scales
(0.5..2.0) x 4 seeds = 2048 configs, width 64, batch 128, float32, gaussian init, forward and
backward statistics. Measured in one run, each against a baseline measured in the same run:

* against the loop a JAX user writes for the same grid: one ``jit(vmap(...))`` per
  (activation, depth), vmapped over its 32 (scale, seed) configs, in two forms: plain JAX
  (forward RMS and max per layer, one ``jax.grad`` for the RMS of dL/dh and dL/dW) and
  ``trace(mlp_init(...))`` (every statistic the sweep computes); end to end (compile included)
  and warm (every jit compiled; the fastest of ``repeats`` runs, interleaved with the sweep's
  warm runs so all see the same load);
* against the naive loop: one ``jit`` of ``trace(mlp_init(...))`` per (activation, depth) and a
  Python loop over scales and seeds, end to end;
* useful FLOP/s (the three matrix products of each config's own depth + 1 layers: forward,
  backward to the input, backward to the weights) vs the dense matmul peak and vs the batched
  matmul ``(chunk, 128, 64) @ (chunk, 64, 64)`` that the sweep runs;
* where the time goes: the sweep's own matrix products alone (the same three forms, shapes and
  loop trip counts, nothing else) against the warm sweep: the rest is the per-layer statistics,
  the activation, the workspace of every layer's input and phi'(z), and the weight draws;
* compile time of a sweep over 64 depths (1..64) vs 1 depth (64);
* resident memory of a 1,000,000-config streamed sweep (tiny nets, ``out=``) in a subprocess,
  sampled every 50 ms: its growth over the warmed-up runtime, against ``memory_budget``.

Run: ``python benchmarks/bench_sweep.py [--loop-fraction F] [--skip-million] [--skip-extra]``
(``--skip-extra``: only the ratios against the two loops and the matmul share). Prints a table
and writes ``benchmarks/results/bench_sweep.json``.

On a GPU or TPU it runs unchanged: every kernel goes to ``jax.devices()`` (the sweep shards its
configs over all of them), the chunk is planned for the device (the cache-sized cap applies on
CPU only) and the matmul baselines are measured on the same device. The sweep's results there are
still bit-identical across chunk sizes and axis order; across device counts they are as
deterministic as the backend's batched matrix products (cuBLAS may pick another algorithm for
another batch count). Not measured yet: no accelerator was available when it was written.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import stabkit as sk
from stabkit.sweeps.driver import _plan_chunk


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple = ("linear", "relu", "tanh", "sigmoid")  # the four
    depths: tuple = tuple(range(4, 65, 4))  # 16 depths, 4..64
    scales: tuple = tuple(np.linspace(0.5, 2.0, 8).tolist())  # sigma_w
    seeds: int = 4
    width: int = 64
    batch: int = 128
    init: str = "gaussian"
    repeats: int = 3  # timed warm runs (median)
    million_budget: int = 256 * 2**20  # memory_budget of the streamed 1M-config sweep


def _spec(cfg: Config, **over) -> sk.SweepSpec:
    kw = dict(
        depth=cfg.depths,
        width=cfg.width,
        activation=cfg.activations,
        init=cfg.init,
        scale=cfg.scales,
        seed=range(cfg.seeds),
        batch=cfg.batch,
    )
    return sk.SweepSpec(**{**kw, **over})


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def useful_flops(cfg: Config) -> float:
    """3 matrix products of 2 * batch * width^2 for each of a config's depth + 1 layers."""
    layers = sum(d + 1 for d in cfg.depths) * len(cfg.activations) * len(cfg.scales) * cfg.seeds
    return 3.0 * layers * 2.0 * cfg.batch * cfg.width**2


def _subset(cfg: Config, pairs: list, fraction: float) -> tuple[list, float]:
    """Every ``step``-th depth of each activation, the offset turning with the activation so the
    depths run cover the grid's evenly; and the factor that scales their time up."""
    step = max(1, round(1 / fraction))
    n = len(cfg.depths)
    keep = [f for i, f in enumerate(pairs) if (i % n) % step == (i // n) % step]
    return keep, len(pairs) / len(keep)


def bench_sweep(cfg: Config, fraction: float = 1.0) -> dict:
    """The sweep and the two jit(vmap)-per-(activation, depth) loops (plain JAX, and trace):
    first run (compile included), then warm runs of each, interleaved (shared cores: all see the
    same load). With ``fraction`` < 1 the loops run a subset of the depths, scaled up."""
    spec = _spec(cfg)
    first = _timed(lambda: sk.sweep(spec, progress=False))
    peers = {}
    for name, make in (("plain", _plain_pairs), ("trace", _vmap_pairs)):
        fns, factor = _subset(cfg, make(cfg), fraction)
        peers[name] = (fns, factor, _timed(lambda fns=fns: _run_all(fns)) * factor)
    warm = []
    peer_warm = {name: [] for name in peers}
    for _ in range(cfg.repeats):
        warm.append(_timed(lambda: sk.sweep(spec, progress=False)))
        for name, (fns, factor, _) in peers.items():
            peer_warm[name].append(_timed(lambda fns=fns: _run_all(fns)) * factor)
    out = {"configs": spec.n_configs, "first_s": first, "warm_s": min(warm),
           "warm_median_s": statistics.median(warm), "warm_all_s": warm,
           "peer_fraction": 1 / peers["plain"][1]}  # fmt: skip
    for name, (_, _, peer_first) in peers.items():
        w = peer_warm[name]
        out[name] = {"first_s": peer_first, "warm_s": min(w), "warm_all_s": w,
                     "end_to_end_ratio": peer_first / first,
                     "warm_ratio": min(w) / min(warm),
                     "warm_ratio_each_run": [a / b for a, b in zip(w, warm, strict=True)],
                     }  # fmt: skip
    return out


def bench_loop(cfg: Config, fraction: float) -> dict:
    """One jit per (depth, activation), a Python loop over scales and seeds: the naive sweep."""
    x = sk.sweep_input(0, cfg.batch, cfg.width, "float32")
    pairs, factor = _subset(cfg, [(d, a) for a in cfg.activations for d in cfg.depths], fraction)

    def run():
        for depth, act in pairs:

            def one(key, scale, depth=depth, act=act):
                p = sk.mlp_init(key, depth=depth, width=cfg.width, init=cfg.init, scale=scale)
                return sk.trace(p, x, activation=act)

            f = jax.jit(one)
            for scale in cfg.scales:
                for seed in range(cfg.seeds):
                    jax.block_until_ready(f(jax.random.key(seed), jnp.float32(scale)))

    seconds = _timed(run)
    return {"pairs_run": len(pairs), "fraction": 1 / factor,
            "seconds_measured": seconds, "seconds": seconds * factor}  # fmt: skip


def _vmap_pairs(cfg: Config) -> list:
    """One ``jit(vmap(trace(mlp_init)))`` per (activation, depth), over the (scale, seed) grid."""
    x = sk.sweep_input(0, cfg.batch, cfg.width, "float32")
    scale, seed = np.meshgrid(np.asarray(cfg.scales, np.float32), np.arange(cfg.seeds))
    scale = jnp.asarray(scale.ravel())
    keys = jax.vmap(jax.random.key)(jnp.asarray(seed.ravel(), jnp.uint32))
    out = []
    for act in cfg.activations:
        for depth in cfg.depths:

            def one(key, scale, depth=depth, act=act):
                p = sk.mlp_init(key, depth=depth, width=cfg.width, init=cfg.init, scale=scale)
                return sk.trace(p, x, activation=act)

            out.append(functools.partial(jax.jit(jax.vmap(one)), keys, scale))
    return out


_PLAIN_ACTIVATIONS = {"linear": lambda z: z, "relu": jax.nn.relu, "tanh": jnp.tanh,
                      "sigmoid": jax.nn.sigmoid}  # fmt: skip


def _plain_pairs(cfg: Config) -> list:
    """The loop a JAX user writes: per (activation, depth) one ``jit(vmap(...))`` over the
    (scale, seed) grid of the same networks (``mlp_init``) and input, computing per layer in
    plain JAX the forward RMS of z and h, max|h|, the non-finite count, and by one ``jax.grad``
    the RMS of dL/dh and dL/dW (the sweep computes these and more)."""
    x = sk.sweep_input(0, cfg.batch, cfg.width, "float32")
    scale, seed = np.meshgrid(np.asarray(cfg.scales, np.float32), np.arange(cfg.seeds))
    scale = jnp.asarray(scale.ravel())
    keys = jax.vmap(jax.random.key)(jnp.asarray(seed.ravel(), jnp.uint32))

    def rms(v):
        return jnp.sqrt(jnp.mean(jnp.square(v)))

    out = []
    for act in cfg.activations:
        phi = _PLAIN_ACTIVATIONS[act]
        for depth in cfg.depths:

            def one(key, scale, depth=depth, phi=phi):
                p = sk.mlp_init(key, depth=depth, width=cfg.width, init=cfg.init, scale=scale)
                ws = [p.w_in, *p.w_hidden, p.w_out]
                bs = [p.b_in, *p.b_hidden, p.b_out]

                def loss(ws, dh):
                    h, fwd = x + dh[0], []
                    for i, (w, b) in enumerate(zip(ws[:-1], bs[:-1], strict=True)):
                        z = h @ w + b
                        h = phi(z) + dh[i + 1]
                        fwd.append((rms(z), rms(h), jnp.max(jnp.abs(h)),
                                    jnp.sum(~jnp.isfinite(h))))  # fmt: skip
                    y = h @ ws[-1] + bs[-1]
                    return 0.5 * jnp.mean(jnp.square(y)), fwd

                dh = jnp.zeros((len(ws), *x.shape), x.dtype)
                (gw, gh), fwd = jax.grad(loss, argnums=(0, 1), has_aux=True)(ws, dh)
                grad_h = jnp.sqrt(jnp.mean(jnp.square(gh), axis=(1, 2)))
                return fwd, grad_h, [rms(g) for g in gw]

            out.append(functools.partial(jax.jit(jax.vmap(one)), keys, scale))
    return out


def _run_all(fns) -> None:
    for f in fns:
        jax.block_until_ready(f())


def _rate(fn, args, flops: float, repeats: int = 10) -> float:
    """FLOP/s of the fastest of ``repeats`` warm calls (as the sweep's warm time is taken)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return flops / min(times)


def bench_matmul(cfg: Config, chunk: int) -> dict:
    hi = jax.lax.Precision.HIGHEST
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    dense = _rate(jax.jit(lambda a: jnp.matmul(a, a, precision=hi)), (a,), 2.0 * n**3)
    h = jnp.ones((chunk, cfg.batch, cfg.width), jnp.float32)
    w = jnp.ones((chunk, cfg.width, cfg.width), jnp.float32)
    batched = _rate(
        jax.jit(lambda h, w: jnp.einsum("cbi,cij->cbj", h, w, precision=hi)),
        (h, w),
        2.0 * chunk * cfg.batch * cfg.width**2,
    )
    return {"dense_flops": dense, "batched_flops": batched, "batched_chunk": chunk}


def _chunk_trips(cfg: Config, chunk: int) -> list[int]:
    """The loop trip count (largest depth) of each kernel chunk of the standard grid."""
    per_depth = len(cfg.scales) * cfg.seeds  # configs are depth-major within an activation
    block = per_depth * len(cfg.depths)
    trips = []
    for start in range(0, block, chunk):
        last = min(start + chunk, block) - 1
        trips.append(cfg.depths[last // per_depth])
    return trips * len(cfg.activations)


def bench_dots(cfg: Config, chunk: int) -> dict:
    """The sweep's matrix products alone: per layer h W (forward), dL/dz W^T (backward) and
    h^T dL/dz (dL/dW, from h stored transposed), on the chunk's shapes, in a ``fori_loop`` run
    for every chunk's trip count. Their share of the warm sweep says what the rest costs."""
    hi = jax.lax.Precision.HIGHEST
    c, b, w = chunk // len(jax.devices()) * len(jax.devices()), cfg.batch, cfg.width
    trip = max(cfg.depths)

    @jax.jit
    def layers(h, ht, g, wt):
        def body(_, carry):
            h, g, gw = carry
            z = jnp.einsum("cbi,cij->cbj", h, wt, precision=hi)
            gw = jnp.einsum("cib,cbj->cij", ht, g, precision=hi)
            g = jnp.einsum("cbj,cij->cbi", g, wt, precision=hi)
            return z, g, gw

        return jax.lax.fori_loop(0, trip, body, (h, g, jnp.zeros((c, w, w), h.dtype)))

    # W = I / 1 keeps every value 1: no growth, no subnormals, nothing data-dependent.
    wt = jnp.broadcast_to(jnp.eye(w, dtype=jnp.float32), (c, w, w))
    h = jnp.ones((c, b, w), jnp.float32)
    ht = jnp.ones((c, w, b), jnp.float32)
    # Interleaved with warm sweeps, so that both see the same load on shared cores.
    spec, dots, sweeps = _spec(cfg), [], []
    for _ in range(cfg.repeats):
        dots.append(1.0 / _rate(layers, (h, ht, h, wt), 1.0, repeats=3))  # trip layers a call
        sweeps.append(_timed(lambda: sk.sweep(spec, progress=False)))
    trips = _chunk_trips(cfg, chunk)
    total = min(dots) / trip * sum(trips)
    return {"seconds": total, "per_layer_s": min(dots) / trip, "layer_trips": sum(trips),
            "sweep_warm_s": min(sweeps), "share_of_warm_sweep": total / min(sweeps)}  # fmt: skip


def bench_compile(cfg: Config) -> dict:
    """First call minus a warm call: the compile time, for 64 depths and for 1."""
    out = {}
    for name, depths in (("depths_64", tuple(range(1, 65))), ("depths_1", (64,))):
        # A batch no other measurement uses, so the kernel is compiled here.
        spec = _spec(cfg, depth=depths, activation="relu", scale=1.0, seed=0, batch=96)
        first = _timed(lambda spec=spec: sk.sweep(spec, progress=False))
        warm = _timed(lambda spec=spec: sk.sweep(spec, progress=False))
        out[name] = first - warm
    out["ratio"] = out["depths_64"] / out["depths_1"]
    return out


_MILLION = """
import json, sys, threading, time
import stabkit as sk
from stabkit.sweeps.driver import _plan_chunk

def rss():  # current resident set, bytes (ru_maxrss would include the compiler's peak)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

spec = sk.SweepSpec(depth=range(1, 11), width=8, batch=8, activation=["relu", "tanh"],
                    init=["gaussian", "orthogonal"], scale=[0.5 + 0.01 * i for i in range(250)],
                    seed=range(100))
assert spec.n_configs == 1_000_000
# Warm up with a small sweep of the same kernel (same chunk, seeds, activations, inits), so that
# the compiler's memory is not counted as the sweep's.
warm = dict(spec.to_dict(), scale=spec.scale[:11])
sk.sweep(sk.SweepSpec(**warm), memory_budget=int(sys.argv[2]), progress=False)
base, peak, done = rss(), [0], []

def poll():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.05)

threading.Thread(target=poll, daemon=True).start()
start = time.perf_counter()
sk.sweep(spec, out=sys.argv[1], memory_budget=int(sys.argv[2]), progress=False, load_result=False)
seconds = time.perf_counter() - start
done.append(1)
time.sleep(0.1)
print(json.dumps({"configs": spec.n_configs, "seconds": seconds, "baseline_rss": base,
                  "peak_rss": peak[0]}))
"""


def bench_million(cfg: Config) -> dict:
    """Peak RSS of a streamed 1M-config sweep; the final load is not part of it."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", _MILLION, os.path.join(tmp, "m.zarr"), str(cfg.million_budget)],
            capture_output=True,
            text=True,
            check=True,
        )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["budget"] = cfg.million_budget
    r["growth"] = r["peak_rss"] - r["baseline_rss"]
    return r


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=pathlib.Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-fraction", type=float, default=1.0,
                        help="run this fraction of the naive loop's (depth, activation) jits and "
                        "scale its time up (1.0: all 64)")  # fmt: skip
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument(
        "--skip-extra",
        action="store_true",
        help="only the ratios against the two loops and the matmul share",
    )
    parser.add_argument("--only-million", action="store_true")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "bench_sweep.json",
    )
    args = parser.parse_args()
    cfg = Config()
    sk.probe()  # measured once, outside every timing
    if args.only_million:
        print(json.dumps(bench_million(cfg), indent=1))
        return

    load_before = os.getloadavg()
    sweep = bench_sweep(cfg, args.loop_fraction)
    loop = bench_loop(cfg, args.loop_fraction)
    spec = _spec(cfg)
    block = spec.n_configs // len(cfg.activations)
    chunk = _plan_chunk(spec, "float32", cfg.width, block, len(jax.devices()), None, 2**30)
    dots = bench_dots(cfg, chunk)
    extra = not args.skip_extra
    mm = bench_matmul(cfg, chunk) if extra else None
    flops = useful_flops(cfg)
    rate = flops / sweep["warm_s"]
    compile_ = bench_compile(cfg) if extra else None
    million = None if args.skip_million or not extra else bench_million(cfg)
    plain, trace = sweep["plain"], sweep["trace"]
    ratios = {
        "plain_loop_end_to_end": plain["end_to_end_ratio"],
        "plain_loop_warm": plain["warm_ratio"],
        "plain_loop_warm_each_run": plain["warm_ratio_each_run"],
        "trace_loop_end_to_end": trace["end_to_end_ratio"],
        "trace_loop_warm": trace["warm_ratio"],
        "config_loop_end_to_end": loop["seconds"] / sweep["first_s"],
        "matmul_share_of_warm_sweep": dots["share_of_warm_sweep"],
    }
    each = ", ".join(f"{r:.2f}" for r in plain["warm_ratio_each_run"])
    scaled = "" if sweep["peer_fraction"] == 1 else f" (scaled from {sweep['peer_fraction']:.2f})"
    rows = [
        ("configs", f"{sweep['configs']}"),
        ("sweep, compile included", f"{sweep['first_s']:.2f} s"),
        ("sweep, warm (fastest run)", f"{sweep['warm_s']:.2f} s"),
        ("plain-JAX jit(vmap) per (act, depth), compile incl.",
         f"{plain['first_s']:.2f} s{scaled}"),
        ("plain-JAX jit(vmap) per (act, depth), warm", f"{plain['warm_s']:.2f} s"),
        ("jit(vmap(trace)) per (act, depth), compile incl.", f"{trace['first_s']:.2f} s"),
        ("jit(vmap(trace)) per (act, depth), warm", f"{trace['warm_s']:.2f} s"),
        ("jit(trace) per (act, depth), loop over configs", f"{loop['seconds']:.2f} s"
         + ("" if loop["fraction"] == 1 else f" (scaled from {loop['fraction']:.2f})")),
        ("speedup vs plain jit(vmap), compile included",
         f"{ratios['plain_loop_end_to_end']:.1f}x (target 20x)"),
        ("speedup vs plain jit(vmap), warm",
         f"{ratios['plain_loop_warm']:.2f}x (runs: {each}; target 2x)"),
        ("speedup vs jit(vmap(trace)), compile incl. / warm",
         f"{ratios['trace_loop_end_to_end']:.1f}x / {ratios['trace_loop_warm']:.2f}x"),
        ("speedup vs per-config loop, compile included",
         f"{ratios['config_loop_end_to_end']:.1f}x (target 20x)"),
        ("useful FLOP/s of the sweep", f"{rate / 1e9:.1f} GFLOP/s"),
        ("its matrix products alone (same shapes, trips)", f"{dots['seconds']:.2f} s"),
        ("  share of the warm sweep", f"{dots['share_of_warm_sweep']:.0%} (target 50%; the rest: "
         "statistics, activation, workspace, weights)"),
    ]  # fmt: skip
    if mm is not None:
        rows += [
            ("dense matmul peak", f"{mm['dense_flops'] / 1e9:.1f} GFLOP/s"),
            (f"batched matmul, chunk {chunk}", f"{mm['batched_flops'] / 1e9:.1f} GFLOP/s"),
            ("sweep / dense peak", f"{rate / mm['dense_flops']:.0%}"),
            ("sweep / batched matmul", f"{rate / mm['batched_flops']:.0%}"),
        ]
    if compile_ is not None:
        rows += [
            ("compile, 64 depths", f"{compile_['depths_64']:.2f} s"),
            ("compile, 1 depth", f"{compile_['depths_1']:.2f} s"),
            ("compile ratio 64 / 1", f"{compile_['ratio']:.2f}"),
        ]
    if million is not None:
        rows += [
            ("1M-config streamed sweep", f"{million['seconds']:.1f} s"),
            ("  peak RSS growth / budget", f"{million['growth'] / 2**20:.0f} MiB / "
             f"{million['budget'] / 2**20:.0f} MiB"),
            ("  peak RSS (runtime included)", f"{million['peak_rss'] / 2**20:.0f} MiB"),
            ("  configs/s", f"{million['configs'] / million['seconds']:.0f}"),
        ]  # fmt: skip
    rows.append(("load average before / after", f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    record = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average": os.getloadavg()},
        "jax": jax.__version__,
        "commit": _commit(),
        "devices": [str(d) for d in jax.devices()],
        "config": dataclasses.asdict(cfg),
        "ratios": ratios,
        "sweep": sweep, "loop": loop, "matmul": mm, "useful_flops": flops, "dots_alone": dots,
        "useful_flops_per_s": rate, "compile": compile_, "million": million,
        "max_rss_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
