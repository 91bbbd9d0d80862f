"""Benchmark: stabkit.log_softmax against jax.nn.log_softmax and the memory roofline (a copy).

Forward and forward+backward (a VJP with a fixed random cotangent) of log_softmax over the last axis
of a (2048, 8192) array, float32 (and float16 with ``--float16``). Every function is jitted and
compiled apart (compile time reported separately); after a warm-up, the candidates run
round-robin, one call each per round, so that every round's ratios compare calls made back to
back under the same load (the cores are shared). Reported per ratio: the median over rounds and
the interquartile range of the per-round ratios, against ``jax.nn.log_softmax`` and against a
jitted elementwise copy (``-x``: one read and one write, the least any elementwise op costs).

Targets (issue 16, float32 2048 x 8192): forward at most 1.00x jax.nn and at most 1.15x the copy;
forward+backward at most 0.90x jax.nn.

Usage::

    python benchmarks/bench_softmax.py [--rows 2048] [--cols 8192] [--rounds 25] [--float16]
        [--out benchmarks/results/bench_softmax.json]
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

TARGETS = {  # (mode, baseline): at most this ratio (issue 16)
    ("fwd", "jax.nn"): 1.00,
    ("fwd", "copy"): 1.15,
    ("fwd+bwd", "jax.nn"): 0.90,
}

_KEY = {"jax.nn": "vs_jax_nn", "copy": "vs_copy"}


def fwd_bwd(f):
    def run(x, g):
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return run


def race(fns: dict, args: dict, rounds: int) -> tuple[dict, dict]:
    """(compile seconds, per-round run seconds) of each jitted fn, run round-robin."""
    compiled, compile_s = {}, {}
    for k, f in fns.items():
        start = time.perf_counter()
        compiled[k] = jax.jit(f).lower(*args[k]).compile()
        compile_s[k] = time.perf_counter() - start
        for _ in range(3):  # warm-up
            jax.block_until_ready(compiled[k](*args[k]))
    runs = {k: [] for k in fns}
    for _ in range(rounds):
        for k, c in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(c(*args[k]))
            runs[k].append(time.perf_counter() - start)
    return compile_s, runs


def spread(a: list, b: list) -> dict:
    """Median and quartiles of the per-round ratios a / b."""
    r = sorted(x / y for x, y in zip(a, b, strict=True))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2]}


def bench(dtype, shape, rounds: int) -> list[dict]:
    key_x, key_g = jax.random.split(jax.random.key(0))
    x = (jax.random.normal(key_x, shape, jnp.float32) * 4).astype(dtype)
    g = jax.random.normal(key_g, shape, jnp.float32).astype(dtype)
    impls = {"stabkit": stabkit.log_softmax, "jax.nn": jax.nn.log_softmax}
    fns, args = {("copy", "fwd"): lambda x: -x}, {("copy", "fwd"): (x,)}
    for name, f in impls.items():
        fns[name, "fwd"], args[name, "fwd"] = f, (x,)
        fns[name, "fwd+bwd"], args[name, "fwd+bwd"] = fwd_bwd(f), (x, g)
    compile_s, runs = race(fns, args, rounds)
    rows = []
    for (name, mode), t in runs.items():
        row = {
            "dtype": jnp.dtype(dtype).name,
            "impl": name,
            "mode": mode,
            "compile_s": compile_s[name, mode],
            "median_s": statistics.median(t),
            "min_s": min(t),
            "vs_jax_nn": spread(t, runs["jax.nn", mode]) if name != "copy" else None,
            "vs_copy": spread(t, runs["copy", "fwd"]),
            "GB_per_s_read_write": 2 * x.nbytes / statistics.median(t) / 1e9,
        }
        if name == "stabkit" and jnp.dtype(dtype) == jnp.float32:
            row["targets"] = {
                base: {
                    "at_most": limit,
                    "met": row[f"vs_{base.replace('.', '_')}"]["median"] <= limit,
                }
                for (m, base), limit in TARGETS.items()
                if m == mode
            }
        rows.append(row)
    return rows


def _fmt(s) -> str:
    return "-" if s is None else f"{s['median']:.3f}x [{s['q1']:.2f}-{s['q3']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--float16", action="store_true", help="also measure float16")
    parser.add_argument("--out", default="benchmarks/results/bench_softmax.json")
    args = parser.parse_args()
    shape = (args.rows, args.cols)
    dtypes = (jnp.float32, jnp.float16) if args.float16 else (jnp.float32,)
    rows = [r for dtype in dtypes for r in bench(dtype, shape, args.rounds)]

    print(f"log_softmax {shape}, {args.rounds} rounds; ratio: median [interquartile range]")
    print(f"{'dtype':8s} {'impl':8s} {'mode':8s} {'compile':>8s} {'median':>9s} "
          f"{'vs jax.nn':>22s} {'vs copy':>22s}  target")  # fmt: skip
    for r in rows:
        target = ", ".join(
            f"{b} <= {t['at_most']:.2f}x {'met' if t['met'] else 'MISSED'}"
            for b, t in r.get("targets", {}).items()
        )
        print(
            f"{r['dtype']:8s} {r['impl']:8s} {r['mode']:8s} {r['compile_s']:7.2f}s "
            f"{r['median_s'] * 1e3:7.2f}ms {_fmt(r['vs_jax_nn']):>22s} {_fmt(r['vs_copy']):>22s}"
            f"  {target}"
        )
    record = {
        "benchmark": "log_softmax",
        "shape": shape,
        "rounds": args.rounds,
        "targets": {f"{m} vs {b}": t for (m, b), t in TARGETS.items()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
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
