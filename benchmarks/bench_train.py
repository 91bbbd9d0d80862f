"""Benchmark: N small transformers trained in one vmapped kernel (``stabkit.train``) against a
Python loop over one jitted training of a single run (the same ``train`` with one run: the same
steps and the same statistics, compiled once and called N times).

The grid: decoder-only transformers (``stabkit.block("attention", heads=2, causal=True,
mlp=True, norm="layer")``, pre-LN, final layer norm), width 16 (the ``transformer_instability``
study's), on ``markov_sequences`` (vocab 8, 16 positions, 256 sequences, batches of 16), Adam,
100 steps logged every 10; runs = 8
learning rates x depth 1, 2 x z-loss 0, 1e-4 x 2 seeds = 64 (``--runs`` scales the seeds).
Every record of ``History`` is computed by both (attention logit max and entropy per block, log
Z, norms, lost updates, census).

Timed end to end (compilation included: JAX's caches cleared first, no persistent cache) and
warm (a second call). Target (issue 15): at least 10x end to end for N >= 64 on 2 CPU cores.
Run: ``python benchmarks/bench_train.py [--runs 64] [--steps 100] [--width 16] [--seq-len 16]
[--batch 16]``; prints a table and writes
``benchmarks/results/bench_train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

import stabkit as sk
from stabkit.training import make_runs, markov_sequences, train

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def _spec(steps: int, width: int = 16, seq_len: int = 16, batch: int = 16) -> sk.TrainSpec:
    task = markov_sequences(jax.random.key(0), n=256, seq_len=seq_len, vocab=8)
    return sk.TrainSpec(
        task,
        max_depth=2,
        width=width,
        block=sk.block("attention", heads=2, causal=True, mlp=True, norm="layer"),
        final_norm="layer",
        optimizer="adam",
        steps=steps,
        log_every=10,
        batch_size=batch,
    )


def _runs(spec: sk.TrainSpec, n: int):
    seeds = max(1, n // (len(LRS) * 4))
    return make_runs(spec, lr=list(LRS), depth=[1, 2], z_loss=[0.0, 1e-4], seed=list(range(seeds)))


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--out", default=str(pathlib.Path(__file__).parent / "results/bench_train.json")
    )
    args = ap.parse_args()
    spec = _spec(args.steps, args.width, args.seq_len, args.batch)
    runs = _runs(spec, args.runs)
    n = int(runs.lr.shape[0])

    jax.clear_caches()
    grid, grid_e2e = _timed(lambda: train(spec, runs, progress=False))
    _, grid_warm = _timed(lambda: train(spec, runs, progress=False))

    jax.clear_caches()

    def loop():
        return [
            train(spec, jax.tree.map(lambda a, i=i: a[i : i + 1], runs), progress=False)
            for i in range(n)
        ]

    each, loop_e2e = _timed(loop)
    _, loop_warm = _timed(loop)

    # the same numbers, run for run (vmapped and unbatched kernels may round differently)
    final = np.asarray(grid.final_loss)
    single = np.array([float(h.final_loss[0]) for h in each])
    ok = np.isfinite(final) & np.isfinite(single)
    worst = float(np.max(np.abs(final[ok] - single[ok]) / np.abs(single[ok]))) if ok.any() else 0
    same_nan = bool((np.isfinite(final) == np.isfinite(single)).all())

    rows = [
        ("vmapped grid, end to end", f"{grid_e2e:.1f} s"),
        ("loop over jitted single runs, end to end", f"{loop_e2e:.1f} s"),
        ("speed-up end to end", f"{loop_e2e / grid_e2e:.1f}x"),
        ("vmapped grid, warm", f"{grid_warm:.2f} s"),
        ("loop, warm", f"{loop_warm:.2f} s"),
        ("speed-up warm", f"{loop_warm / grid_warm:.1f}x"),
        ("max rel. difference of final losses", f"{worst:.1e} (same non-finite runs: {same_nan})"),
    ]
    print(
        f"{n} transformers (width {args.width}, {args.seq_len} positions, batches of "
        f"{args.batch}), {args.steps} steps each"
    )
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]}")
    record = {
        "runs": n,
        "steps": args.steps,
        "width": args.width,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "grid_seconds": grid_e2e,
        "grid_warm_seconds": grid_warm,
        "loop_seconds": loop_e2e,
        "loop_warm_seconds": loop_warm,
        "speedup_e2e": loop_e2e / grid_e2e,
        "speedup_warm": loop_warm / grid_warm,
        "max_relative_difference_final_loss": worst,
        "same_nonfinite_runs": same_nan,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
