"""Benchmark: the overhead of stabkit.inspect against the plain jitted function, and against
jax_debug_nans on a failing input.

Two models, plain JAX, float32: a 12-layer tanh MLP (width 256, batch 128) and a small
transformer (2 pre-layernorm blocks of 4-head softmax attention and a 4x MLP with residuals,
sequence 64, width 64, batch 4), each with a linear head and the loss ``sqrt(mean((y - t)**2))``.
Each is measured forward (``fn = loss``) and backward (``fn = jax.value_and_grad(loss)``),
every ratio against a baseline measured in the same run, repeats interleaved so that both sides
see the same load on shared cores:

* warm: ``inspect(fn, *args)`` called again with the same ``fn`` object (its compiled program
  is cached per (fn, shapes)), blocked on the whole report, vs ``jax.jit(fn)(*args)`` blocked on
  its outputs; apart, the host time of reading ``r.origins`` and ``r.stats`` once (a report
  builds them lazily, on first read);
* compile: the first call of ``inspect`` on a fresh function object (tracing, flattening,
  compiling the interpreter and one run) vs the first call of ``jax.jit`` of it (tracing,
  lowering, compiling and one run); fresh ``functools.partial`` objects, so no cache is hit
  (``--compile-repeats N``: N more fresh objects, the median);
* debug_nans: a failing input (backward: the head zeroed and the target 0, so the loss is
  ``sqrt(0)``, finite, and its gradient ``0.5 / sqrt(0) * 0`` NaN; forward: the head's bias +inf
  in one output against a +inf label, ``inf - inf``) under ``jax_debug_nans=True``: the time
  until ``jax.jit(fn)(*args)`` raises (it runs the compiled function, sees the NaN and re-runs it
  op by op), already compiled, vs a warm ``inspect(fn)`` of the same input and reading its
  origins (the flag is restored afterwards).

Targets (issue 13): warm at most 3x the jitted function, compile at most 2x.

Usage::

    python benchmarks/bench_inspect.py [--repeats 7] [--compile-repeats 0] [--nan-repeats 3]
        [--models mlp,transformer] [--out benchmarks/results/bench_inspect.json]

Its length is mostly inspect's first calls (one per model and mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import stabkit


@dataclasses.dataclass(frozen=True)
class Config:
    mlp_depth: int = 12  # hidden tanh layers
    mlp_width: int = 256
    mlp_batch: int = 128
    tf_blocks: int = 2
    tf_seq: int = 64
    tf_width: int = 64
    tf_heads: int = 4
    tf_batch: int = 4
    repeats: int = 7  # warm calls timed, interleaved (median)
    # first calls on more fresh function objects (median with the warm run's own first call);
    # 0: inspect's first call takes 10 s to minutes here, the run's length is mostly that
    compile_repeats: int = 0
    nan_repeats: int = 3  # debug_nans runs until it raises (median)


# -- models ---------------------------------------------------------------------------------------


def _dense(key, n_in, n_out):
    return {
        "w": jax.random.normal(key, (n_in, n_out), jnp.float32) / math.sqrt(n_in),
        "b": jnp.zeros(n_out, jnp.float32),
    }


def mlp_init(key, cfg: Config):
    keys = jax.random.split(key, cfg.mlp_depth + 1)
    layers = [_dense(k, cfg.mlp_width, cfg.mlp_width) for k in keys[:-1]]
    return {"layers": layers, "head": _dense(keys[-1], cfg.mlp_width, cfg.mlp_width)}


def mlp_apply(params, x):
    for layer in params["layers"]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params["head"]["w"] + params["head"]["b"]


def _layernorm(p, x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def tf_init(key, cfg: Config):
    d = cfg.tf_width

    def ln():
        return {"scale": jnp.ones(d, jnp.float32), "bias": jnp.zeros(d, jnp.float32)}

    blocks = []
    keys = jax.random.split(key, cfg.tf_blocks + 1)
    for k in keys[:-1]:
        kq, kk, kv, ko, k1, k2 = jax.random.split(k, 6)
        blocks.append({
            "ln1": ln(), "q": _dense(kq, d, d), "k": _dense(kk, d, d), "v": _dense(kv, d, d),
            "o": _dense(ko, d, d), "ln2": ln(), "up": _dense(k1, d, 4 * d),
            "down": _dense(k2, 4 * d, d),
        })  # fmt: skip
    return {"blocks": blocks, "ln": ln(), "head": _dense(keys[-1], d, d)}


def tf_apply(params, x, heads: int):
    b, s, d = x.shape

    def split(h):  # (b, s, d) -> (b, heads, s, d / heads)
        return h.reshape(b, s, heads, d // heads).transpose(0, 2, 1, 3)

    def lin(p, h):
        return h @ p["w"] + p["b"]

    for p in params["blocks"]:
        h = _layernorm(p["ln1"], x)
        q, k, v = split(lin(p["q"], h)), split(lin(p["k"], h)), split(lin(p["v"], h))
        att = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads), axis=-1)
        h = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
        x = x + lin(p["o"], h)
        x = x + lin(p["down"], jax.nn.gelu(lin(p["up"], _layernorm(p["ln2"], x))))
    return lin(params["head"], _layernorm(params["ln"], x))


def loss(apply, params, x, t):
    """RMS error: ``sqrt(0)`` forward is fine, its gradient is NaN (the failing input)."""
    return jnp.sqrt(jnp.mean(jnp.square(apply(params, x) - t)))


def models(cfg: Config, names: list[str]) -> dict:
    """name -> (apply, good args, failing forward args, failing backward args)."""
    kp, kx, kt = jax.random.split(jax.random.key(0), 3)
    out = {}
    for name in names:
        if name == "mlp":
            apply = mlp_apply
            params = mlp_init(kp, cfg)
            shape = (cfg.mlp_batch, cfg.mlp_width)
        elif name == "transformer":
            apply = functools.partial(tf_apply, heads=cfg.tf_heads)
            params = tf_init(kp, cfg)
            shape = (cfg.tf_batch, cfg.tf_seq, cfg.tf_width)
        else:
            raise ValueError(f"unknown model {name!r}: mlp or transformer")
        x = jax.random.normal(kx, shape, jnp.float32)
        t = jax.random.normal(kt, shape, jnp.float32)
        # The head zeroed and the target 0: y == t exactly, the loss sqrt(0), its gradient NaN.
        zero_head = dict(params, head=jax.tree.map(jnp.zeros_like, params["head"]))
        # An overflowed prediction (the head's bias +inf in one output) against an inf label:
        # inf - inf, a NaN at the end of the forward pass.
        inf_head = dict(params, head=dict(params["head"], b=params["head"]["b"].at[0].set(jnp.inf)))
        inf_t = t.at[(0,) * t.ndim].set(jnp.inf)
        out[name] = (apply, (params, x, t), (inf_head, x, inf_t), (zero_head, x, jnp.zeros_like(t)))
    return out


# -- measurements ---------------------------------------------------------------------------------


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return time.perf_counter() - start, result


def fresh(apply, mode: str):
    """A new function object each call (no cache of jit or inspect knows it)."""
    f = functools.partial(loss, apply)
    return jax.value_and_grad(f) if mode == "bwd" else f


def bench_first(fn, args) -> dict:
    """The first calls of ``jax.jit(fn)`` and of ``inspect(fn)`` on a fresh ``fn``; for the jit
    also its split (trace + lower, XLA compile) on another fresh object."""
    jit_s = _timed(lambda: jax.jit(fn)(*args))[0]
    insp_s = _timed(lambda: stabkit.inspect(fn, *args))[0]
    other = functools.partial(fn)
    lower_s, lowered = _timed(lambda: jax.jit(other).lower(*args))
    xla_s = _timed(lambda: lowered.compile())[0]
    return {"jit_first_s": jit_s, "inspect_first_s": insp_s, "jit_lower_s": lower_s,
            "jit_xla_compile_s": xla_s}  # fmt: skip


def bench_compile(apply, mode, args, first: dict, extra: int) -> dict:
    """First-call times: the one of ``bench_warm``'s function, and ``extra`` more fresh ones."""
    runs = [first]
    for _ in range(extra):
        runs.append(bench_first(fresh(apply, mode), args))
    out = {k: statistics.median(r[k] for r in runs) for k in first}
    out["ratio"] = out["inspect_first_s"] / out["jit_first_s"]
    out["runs"] = len(runs)
    out["inspect_all_s"] = [r["inspect_first_s"] for r in runs]
    return out


def bench_warm(fn, args, repeats) -> tuple[dict, dict]:
    """Warm calls of ``inspect(fn)`` and ``jax.jit(fn)`` (interleaved), and the first calls."""
    first = bench_first(fn, args)  # compiles both
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))  # a warm run of each before timing
    jax.block_until_ready(stabkit.inspect(fn, *args))  # a Report is a pytree of its arrays
    t_jit, t_insp, t_orig, t_stats = [], [], [], []
    for _ in range(repeats):
        t_jit.append(_timed(lambda: jitted(*args))[0])
        dt, report = _timed(lambda: stabkit.inspect(fn, *args))
        t_insp.append(dt)
        t_orig.append(_timed(lambda report=report: report.origins)[0])
        t_stats.append(_timed(lambda report=report: report.stats)[0])
    jit_s, insp_s = statistics.median(t_jit), statistics.median(t_insp)
    warm = {
        "jit_s": jit_s, "inspect_s": insp_s, "ratio": insp_s / jit_s,
        "origins_s": statistics.median(t_orig), "stats_s": statistics.median(t_stats),
        "equations": len(report.program.nodes), "stats_rows": int(report.stats.sizes["value"]),
        "jit_all_s": t_jit, "inspect_all_s": t_insp,
    }  # fmt: skip
    return warm, first


def _until_raises(fn, args) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        jax.block_until_ready(jax.jit(fn)(*args))
    except FloatingPointError as e:
        return time.perf_counter() - start, str(e).splitlines()[0][:100]
    raise RuntimeError("jax_debug_nans did not raise on the failing input")


def bench_debug_nans(fn, args, repeats, inspect_first_s: float) -> dict:
    """Time until ``jax.jit(fn)`` raises under jax_debug_nans vs ``inspect(fn)`` of the same
    input (same shapes as ``bench_warm``'s: its compiled program is reused) and its first call."""
    report = stabkit.inspect(fn, *args)
    nan_origins = [o for o in report.origins if o.kind == "nan"]
    if not nan_origins:
        raise RuntimeError("the failing input produced no NaN origin")
    t_nans, t_insp = [], []
    previous = jax.config.jax_debug_nans
    try:
        jax.config.update("jax_debug_nans", True)
        # one untimed run: the jit's compile under the flag and the op-by-op kernels
        _, message = _until_raises(fn, args)
        for _ in range(repeats):
            t_nans.append(_until_raises(fn, args)[0])
    finally:
        jax.config.update("jax_debug_nans", previous)
    for _ in range(repeats):
        t_insp.append(_timed(lambda: stabkit.inspect(fn, *args).origins)[0])
    nans_s, insp_s = statistics.median(t_nans), statistics.median(t_insp)
    first = nan_origins[0]
    return {
        "debug_nans_s": nans_s, "inspect_warm_s": insp_s,
        "inspect_warm_over_debug_nans": insp_s / nans_s,
        "inspect_first_over_debug_nans": inspect_first_s / nans_s,
        "debug_nans_message": message,
        "inspect_origin": f"{first.primitive} ({first.direction}) {first.source}",
        "nan_origins": len(nan_origins), "debug_nans_all_s": t_nans,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    parser.add_argument("--compile-repeats", type=int, default=Config.compile_repeats)
    parser.add_argument("--nan-repeats", type=int, default=Config.nan_repeats)
    parser.add_argument("--models", default="mlp,transformer")
    parser.add_argument("--out", default="benchmarks/results/bench_inspect.json")
    args = parser.parse_args()
    cfg = Config(
        repeats=args.repeats, compile_repeats=args.compile_repeats, nan_repeats=args.nan_repeats
    )

    rows = []
    for name, (apply, good, bad_fwd, bad_bwd) in models(cfg, args.models.split(",")).items():
        for mode, bad in (("fwd", bad_fwd), ("bwd", bad_bwd)):
            row = {"model": name, "mode": mode}
            fn = fresh(apply, mode)
            row["warm"], first = bench_warm(fn, good, cfg.repeats)
            row["compile"] = bench_compile(apply, mode, good, first, cfg.compile_repeats)
            insp_first = row["compile"]["inspect_first_s"]
            row["debug_nans"] = bench_debug_nans(fn, bad, cfg.nan_repeats, insp_first)
            rows.append(row)
            print(f"  {name} {mode}: first inspect {insp_first:.1f} s", flush=True)

    print()
    print(f"{'model':11s} {'mode':4s} {'eqns':>4s} | {'jit':>7s} {'inspect':>7s} {'ratio':>6s} |"
          f" {'origins':>7s} {'stats':>7s} | {'jit 1st':>7s} {'insp 1st':>8s} {'ratio':>7s} |"
          f" {'dbg_nans':>8s} {'insp':>7s} {'ratio':>5s}")  # fmt: skip
    for r in rows:
        w, c, d = r["warm"], r["compile"], r["debug_nans"]
        print(
            f"{r['model']:11s} {r['mode']:4s} {w['equations']:4d} | {w['jit_s'] * 1e3:5.1f}ms "
            f"{w['inspect_s'] * 1e3:5.1f}ms {w['ratio']:5.2f}x | {w['origins_s'] * 1e3:5.1f}ms "
            f"{w['stats_s'] * 1e3:5.1f}ms | {c['jit_first_s']:6.2f}s {c['inspect_first_s']:7.2f}s "
            f"{c['ratio']:6.1f}x | {d['debug_nans_s'] * 1e3:6.1f}ms "
            f"{d['inspect_warm_s'] * 1e3:5.1f}ms {d['inspect_warm_over_debug_nans']:4.2f}x"
        )
    print("warm: a call on the same fn (report blocked), ratio inspect / jit; origins, stats: host "
          "time of reading them once;\n1st: first call on a fresh fn (trace, compile, one run); "
          "dbg_nans: jax.jit(fn) under jax_debug_nans on a failing\ninput until it raises, insp: "
          "warm inspect(fn) of that input and reading its origins, ratio insp / dbg_nans.\n"
          "targets (issue 13): warm ratio <= 3x, 1st ratio <= 2x")  # fmt: skip

    record = {
        "benchmark": "inspect",
        "config": dataclasses.asdict(cfg),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "stabkit": stabkit.__version__,
        "results": rows,
    }  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
