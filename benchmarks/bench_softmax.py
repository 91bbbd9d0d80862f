"""Benchmark: stabkit.log_softmax against jax.nn.log_softmax and the memory roofline (a copy).

Forward and forward+backward (a VJP with a fixed random cotangent) of log_softmax over the last axis
of a (4096, 8192) array, float32 and float16. Each function is jitted; compile time is measured
apart; after a warm-up the median of repeated runs is reported, with ratios against
``jax.nn.log_softmax`` and against a jitted elementwise copy (``-x``, one read and one write: the
least any elementwise op can cost) measured in the same run.

Targets (issue 2): forward and forward+backward at most 1.05x jax.nn.log_softmax; forward at most
1.10x the copy in float32.

Usage::

    python benchmarks/bench_softmax.py [--rows 4096] [--cols 8192] [--repeats 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import stabkit


def timed(fn, *args, repeats: int):
    """(compile seconds, median run seconds, all run seconds) of a jitted ``fn``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(3):  # warm-up
        jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs), runs


def fwd_bwd(f):
    def run(x, g):
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/bench_softmax.json")
    args = parser.parse_args()

    key_x, key_g = jax.random.split(jax.random.key(0))
    shape = (args.rows, args.cols)
    candidates = {
        "stabkit": stabkit.log_softmax,
        "jax.nn": jax.nn.log_softmax,
    }
    rows = []
    for dtype in (jnp.float32, jnp.float16):
        x = (jax.random.normal(key_x, shape, jnp.float32) * 4).astype(dtype)
        g = jax.random.normal(key_g, shape, jnp.float32).astype(dtype)
        res = {}
        res["copy", "fwd"] = timed(lambda x: -x, x, repeats=args.repeats)
        for name, f in candidates.items():
            res[name, "fwd"] = timed(f, x, repeats=args.repeats)
            res[name, "fwd+bwd"] = timed(fwd_bwd(f), x, g, repeats=args.repeats)
        for (name, mode), (comp, med, runs) in res.items():
            base = res["jax.nn", mode][1] if ("jax.nn", mode) in res else None
            rows.append(
                {
                    "dtype": jnp.dtype(dtype).name,
                    "impl": name,
                    "mode": mode,
                    "compile_s": comp,
                    "median_s": med,
                    "min_s": min(runs),
                    "vs_jax_nn": med / base if base else None,
                    "vs_copy": med / res["copy", "fwd"][1],
                    "GB_per_s_read": x.nbytes / med / 1e9,
                }
            )

    header = f"{'dtype':8s} {'impl':8s} {'mode':8s} {'compile':>8s} {'median':>9s} "
    header += f"{'vs jax.nn':>9s} {'vs copy':>8s}"
    print(header)
    for r in rows:
        vs = f"{r['vs_jax_nn']:.3f}x" if r["vs_jax_nn"] else "-"
        print(
            f"{r['dtype']:8s} {r['impl']:8s} {r['mode']:8s} {r['compile_s']:7.2f}s "
            f"{r['median_s'] * 1e3:7.2f}ms {vs:>9s} {r['vs_copy']:7.2f}x"
        )
    record = {
        "benchmark": "log_softmax",
        "shape": shape,
        "repeats": args.repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
        },
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "stabkit": stabkit.__version__,
        "results": rows,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
