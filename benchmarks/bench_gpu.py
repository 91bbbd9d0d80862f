"""GPU benchmark (issue 16 B): the sweep's matrix-product rate and log_softmax's bandwidth.

One short script that runs unchanged on any CUDA machine in a few minutes (and on CPU with
``--quick``, at tiny sizes, to show that it works). It measures, in one run, on
``jax.devices()[0]``:

* **dense matmul peak**: a large square ``jnp.matmul`` in float32 at the default precision
  (TF32 on Ampere and later) and at ``precision="highest"`` (true FP32), next to the datasheet's
  dense peak where the device is known (H200/H100/A100);
* **sweep**: ``stabkit.sweep`` warm on a spec that fills the device (width 2048, batch 1024,
  float32), its useful FLOP/s (three matrix products of ``2 * batch * width^2`` for each of a
  config's depth + 1 layers, as ``benchmarks/bench_sweep.py`` counts them) against the measured
  matmul rate at the precision the sweep computes in (``Precision.HIGHEST``, true float32: see
  ``stabkit/sweeps/kernel.py``), and against the TF32 rate. Target: at least 50% of the former;
* **log_softmax**: ``stabkit.log_softmax`` (the XLA path), the opt-in Pallas kernel
  (``stabkit._softmax_pallas``; interpret mode on CPU) and ``jax.nn.log_softmax`` against a copy
  (``-x``), float32 (16384, 32768): bandwidth (one read + one write) and its fraction of the
  copy's. Target: at least 80% of the copy's bandwidth.

Every number is printed with its ratio to the target; the script reports, it does not assert
(exit status 0 when a target is missed; a section that fails records its error and the others
still run). Writes ``benchmarks/results/bench_gpu.json`` with the device, jax version and every
timing.

Usage::

    python benchmarks/bench_gpu.py            # on a GPU: about 2-4 minutes
    python benchmarks/bench_gpu.py --quick    # tiny sizes, any backend (CPU: ~1 minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp

import stabkit as sk


@dataclasses.dataclass(frozen=True)
class Config:
    matmul_n: int = 8192  # square matmul for the peak: 1.1 TFLOP a call
    width: int = 2048  # sweep: square layers, large enough to fill a GPU's SMs
    batch: int = 1024
    depths: tuple = (8, 16)
    scales: tuple = (0.5, 1.0, 1.5, 2.0)
    seeds: int = 2
    activation: str = "tanh"
    softmax_shape: tuple = (16384, 32768)  # float32: 2 GiB in, 2 GiB out
    repeats: int = 10  # timed runs after warm-up (median reported)
    sweep_repeats: int = 3


QUICK = Config(
    matmul_n=512,
    width=64,
    batch=64,
    depths=(2, 4),
    scales=(0.5, 1.0),
    seeds=1,
    softmax_shape=(256, 1024),
    repeats=3,
    sweep_repeats=2,
)

# Datasheet dense peaks (TFLOP/s, no sparsity) and memory bandwidth (TB/s), matched by substring
# of device_kind, most specific first.
DATASHEET = [
    ("H200", {"tf32": 494.7, "fp32": 66.9, "hbm_TBps": 4.8}),
    ("H100 PCIe", {"tf32": 378.0, "fp32": 51.2, "hbm_TBps": 2.0}),
    ("H100", {"tf32": 494.7, "fp32": 66.9, "hbm_TBps": 3.35}),
    ("A100", {"tf32": 156.0, "fp32": 19.5, "hbm_TBps": 2.0}),
]

TARGET_SWEEP = 0.50  # of the dense float32 (TF32) matmul rate
TARGET_SOFTMAX = 0.80  # of the copy's bandwidth


def datasheet(kind: str) -> dict | None:
    for name, numbers in DATASHEET:
        if name.lower() in kind.lower():
            return {"matched": name, **numbers}
    return None


def timed(fn, *args, repeats: int) -> dict:
    """Compile apart, warm up, then the median (and min) of ``repeats`` timed calls."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "median_s": statistics.median(runs), "min_s": min(runs)}


def bench_matmul(cfg: Config) -> dict:
    n = cfg.matmul_n
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    flops = 2.0 * n**3
    out = {"n": n}
    for name, precision in (("default", None), ("highest", jax.lax.Precision.HIGHEST)):
        t = timed(
            lambda a, b, p=precision: jnp.matmul(a, b, precision=p), a, b, repeats=cfg.repeats
        )
        out[name] = {**t, "TFLOPs": flops / t["median_s"] / 1e12}
    return out


def useful_flops(cfg: Config) -> float:
    """3 matrix products of 2 * batch * width^2 for each of a config's depth + 1 layers."""
    layers = sum(d + 1 for d in cfg.depths) * len(cfg.scales) * cfg.seeds
    return 3.0 * layers * 2.0 * cfg.batch * cfg.width**2


def bench_sweep(cfg: Config, peak_tflops: float, tf32_tflops: float) -> dict:
    spec = sk.SweepSpec(
        depth=cfg.depths,
        width=cfg.width,
        activation=cfg.activation,
        scale=cfg.scales,
        seed=range(cfg.seeds),
        batch=cfg.batch,
        dtype="float32",
    )
    start = time.perf_counter()
    sk.sweep(spec, progress=False)
    first = time.perf_counter() - start
    warm = []
    for _ in range(cfg.sweep_repeats):
        start = time.perf_counter()
        sk.sweep(spec, progress=False)
        warm.append(time.perf_counter() - start)
    flops = useful_flops(cfg)
    rate = flops / min(warm) / 1e12
    return {
        "configs": spec.n_configs,
        "width": cfg.width,
        "batch": cfg.batch,
        "depths": cfg.depths,
        "useful_TFLOP": flops / 1e12,
        "first_s": first,
        "warm_s": min(warm),
        "warm_all_s": warm,
        "TFLOPs": rate,
        "of_matmul_peak": rate / peak_tflops,
        "of_tf32_matmul": rate / tf32_tflops,
        "target": TARGET_SWEEP,
        "of_target": rate / peak_tflops / TARGET_SWEEP,
    }


def bench_softmax(cfg: Config) -> dict:
    from stabkit import _softmax_pallas

    x = jax.random.normal(jax.random.key(3), cfg.softmax_shape, jnp.float32) * 4
    moved = 2 * x.nbytes  # one read, one write
    on_gpu = jax.default_backend() == "gpu"
    fns = {
        "copy": lambda x: -x,
        "stabkit": sk.log_softmax,
        "jax.nn": jax.nn.log_softmax,
        "pallas": lambda x: _softmax_pallas.log_softmax(x, interpret=not on_gpu),
    }
    out = {"shape": cfg.softmax_shape, "pallas_interpret": not on_gpu}
    for name, f in fns.items():
        try:
            t = timed(f, x, repeats=cfg.repeats)
            out[name] = {**t, "GBps": moved / t["median_s"] / 1e9}
        except Exception as err:  # a kernel that does not build on this device: reported
            out[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    copy = out["copy"].get("median_s")
    ref = jax.jit(sk.log_softmax)(x)
    for name in ("stabkit", "jax.nn", "pallas"):
        if "median_s" in out[name] and copy:
            frac = copy / out[name]["median_s"]
            out[name].update(of_copy=frac, target=TARGET_SOFTMAX, of_target=frac / TARGET_SOFTMAX)
    if "median_s" in out["pallas"]:
        y = jax.jit(fns["pallas"])(x)
        out["pallas"]["max_abs_diff_vs_stabkit"] = float(jnp.max(jnp.abs(y - ref)))
    return out


def _section(results: dict, name: str, fn, *args) -> None:
    try:
        results[name] = fn(*args)
    except Exception as err:
        results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        traceback.print_exc()


def report(results: dict) -> None:
    dev = results["device"]
    print(f"device: {dev['device_kind']} ({dev['platform']}, {dev['count']} device(s)), "
          f"jax {results['jax']}")  # fmt: skip
    sheet = dev["datasheet"]
    if sheet:
        print(f"datasheet ({sheet['matched']}): TF32 dense {sheet['tf32']} TFLOP/s, FP32 "
              f"{sheet['fp32']} TFLOP/s, HBM {sheet['hbm_TBps']} TB/s")  # fmt: skip
    print(f"{'measure':44s} {'value':>14s} {'ratio':>10s} {'target':>8s} {'of target':>10s}")
    mm = results.get("matmul", {})
    for p in ("default", "highest"):
        if p in mm:
            note = ""
            if sheet:
                peak = sheet["tf32"] if p == "default" else sheet["fp32"]
                note = f"{mm[p]['TFLOPs'] / peak:9.2f}x of datasheet"
            label = f"matmul {mm['n']}^3 float32 ({p})"
            print(f"{label:44s} "
                  f"{mm[p]['TFLOPs']:9.2f} TF/s {note}")  # fmt: skip
    sw = results.get("sweep", {})
    if "TFLOPs" in sw:
        label = f"sweep {sw['configs']} configs w{sw['width']} b{sw['batch']} (warm)"
        print(f"{label:44s} "
              f"{sw['TFLOPs']:9.2f} TF/s {sw['of_matmul_peak']:9.2f}x {sw['target']:7.2f}x "
              f"{sw['of_target']:9.2f}x  (of highest; "
              f"{sw['of_tf32_matmul']:.2f}x of TF32)")  # fmt: skip
    elif sw:
        print(f"sweep: {sw.get('error')}")
    sm = results.get("softmax", {})
    for name in ("copy", "stabkit", "jax.nn", "pallas"):
        r = sm.get(name)
        if r is None:
            continue
        label = f"log_softmax {name} {tuple(sm['shape'])}" if name != "copy" else "copy -x"
        if name == "pallas" and sm.get("pallas_interpret"):
            label += " (interpret)"
        if "error" in r:
            print(f"{label:44s} error: {r['error'][:80]}")
        elif name == "copy":
            print(f"{label:44s} {r['GBps']:9.1f} GB/s")
        else:
            print(f"{label:44s} {r['GBps']:9.1f} GB/s {r['of_copy']:9.2f}x {r['target']:7.2f}x "
                  f"{r['of_target']:9.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU check)")
    parser.add_argument("--out", default="benchmarks/results/bench_gpu.json")
    args = parser.parse_args()
    cfg = QUICK if args.quick else Config()
    dev = jax.devices()[0]
    results = {
        "benchmark": "gpu",
        "quick": args.quick,
        "config": dataclasses.asdict(cfg),
        "device": {
            "device_kind": dev.device_kind,
            "platform": dev.platform,
            "count": jax.device_count(),
            "datasheet": datasheet(dev.device_kind),
        },
        "jax": jax.__version__,
        "stabkit": sk.__version__,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "targets": {"sweep_of_matmul": TARGET_SWEEP, "log_softmax_of_copy": TARGET_SOFTMAX},
    }
    start = time.perf_counter()
    _section(results, "matmul", bench_matmul, cfg)
    peak = results["matmul"].get("highest", {}).get("TFLOPs")
    tf32 = results["matmul"].get("default", {}).get("TFLOPs")
    if peak and tf32:
        _section(results, "sweep", bench_sweep, cfg, peak, tf32)
    _section(results, "softmax", bench_softmax, cfg)
    results["total_s"] = time.perf_counter() - start
    report(results)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"total {results['total_s']:.1f}s; wrote {out}")
    sys.exit(0)


if __name__ == "__main__":
    main()
