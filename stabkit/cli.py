"""The ``stabkit`` command line: ``stabkit reproduce``, ``stabkit probe`` and friends."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from stabkit.reproduce import find_experiments, reproduce

    if args.list:
        for name, module in find_experiments().items():
            print(f"{name:24s} {getattr(module, 'TITLE', '')}")
        return 0
    only = None if args.only is None else [s for s in args.only.split(",") if s]
    results = reproduce(args.out, only=only, quick=args.quick)
    return 0 if all(r.passed for r in results) else 1


def _cmd_probe(args: argparse.Namespace) -> int:
    from stabkit import precision

    return precision._cli_probe(args)


def _ints(text: str) -> list[int]:
    """``"1:64"`` (inclusive), ``"4:64:4"`` (with a step) or ``"2,4,8"``."""
    try:
        if ":" in text:
            parts = [int(v) for v in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            return list(range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1))
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a:b, a:b:step or a,b,c of ints, got {text!r}"
        ) from None


def _floats(text: str) -> list[float]:
    """``"0.5:2.0:16"`` (16 values from 0.5 to 2.0, both included) or ``"0.5,1,2"``."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            n = int(n)
            if n < 1:
                raise ValueError
            return [
                lo_ + (float(hi) - lo_) * i / max(n - 1, 1) for lo_ in [float(lo)] for i in range(n)
            ]
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected lo:hi:count or a,b,c of numbers, got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def _bytes(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        if text[-1:].upper() in units:
            return int(float(text[:-1]) * units[text[-1].upper()])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected bytes such as 512M or 2G, got {text!r}"
        ) from None


def _cmd_sweep(args: argparse.Namespace) -> int:
    import time

    import stabkit as sk

    seeds = list(range(args.seeds)) if args.seed is None else args.seed
    spec = sk.SweepSpec(
        depth=args.depth,
        width=args.width,
        activation=args.activation,
        init=args.init,
        scale=args.scale,
        bias_std=args.bias_std,
        dtype=args.dtype,
        seed=seeds,
        batch=args.batch,
        input=args.input,
        loss=args.loss,
        saturation_threshold=args.threshold,
    )
    start = time.perf_counter()
    ds = sk.sweep(
        spec,
        out=args.out,
        resume=args.resume,
        chunk_size=args.chunk_size,
        memory_budget=args.memory_budget,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    if not args.quiet:
        where = f", written to {args.out}" if args.out else ""
        print(f"{spec.n_configs} configs in {seconds:.1f} s{where}")
        nonfinite = int((ds.first_nonfinite_forward >= 0).sum())
        vanished = int((ds.first_zero_backward >= 0).sum())
        print(f"{nonfinite} with an inf/NaN signal, {vanished} with a gradient that became 0")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import stabkit as sk
    from stabkit.plot import plot

    out = args.out if args.out is not None else f"{str(args.path).rstrip('/')}-{args.kind}"
    for path in plot(sk.load(args.path), out, kind=args.kind, max_figures=args.max_figures):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stabkit",
        description="Numerical-stability research toolkit for JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "reproduce",
        help="run every study, write figures, numbers and report.md",
        description="Run the registered studies (experiments/) and write DIR/report.md with a "
        "PASS/FAIL line for each claim. Exit status 1 if any claim fails.",
    )
    p.add_argument(
        "--out", default="stabkit-results", help="output directory (default: %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="reduced grids, for a smoke test")
    p.add_argument("--only", metavar="NAMES", help="comma-separated study names to run")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "probe",
        help="floating-point limits and measured backend behaviour (subnormals, overflow)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_probe)
    p = sub.add_parser(
        "sweep",
        help="trace a grid of networks (depth x activation x init x scale x dtype x seed)",
        description="Trace every configuration of the grid in a few compiled kernels and write "
        "the per-layer statistics to a zarr store (stabkit.sweep).",
    )
    p.add_argument("--depth", type=_ints, required=True, help="e.g. 1:64, 4:64:4 or 2,8,32")
    p.add_argument("--width", type=_ints, default=[64], help="default: %(default)s")
    p.add_argument("--activation", type=_names, default=["relu"], help="e.g. relu,tanh")
    p.add_argument("--init", type=_names, default=["gaussian"], help="e.g. gaussian,orthogonal")
    p.add_argument("--scale", type=_floats, default=[1.0], help="e.g. 0.5:2.0:16 or 0.5,1,2")
    p.add_argument("--bias-std", type=_floats, default=[0.0], help="default: %(default)s")
    p.add_argument("--dtype", type=_names, default=["float32"], help="e.g. float16,float32")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--seed", type=_ints, help="explicit seeds instead of --seeds, e.g. 3,17")
    p.add_argument("--batch", type=int, default=128, help="default: %(default)s")
    p.add_argument("--input", default="normal", choices=["normal", "uniform", "ones"])
    p.add_argument("--loss", default="mse", choices=["mse", "sum"])
    p.add_argument("--threshold", type=float, default=1e-2, help="saturation threshold")
    p.add_argument("--out", help="zarr store to write (default: keep in memory, print a summary)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out store")
    p.add_argument("--chunk-size", type=int, help="configs per kernel call (default: automatic)")
    p.add_argument("--memory-budget", type=_bytes, default=2**30, help="e.g. 512M (default 1G)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "plot",
        help="PNG heatmaps (depth x scale) or per-layer profiles of a sweep store",
    )
    p.add_argument("path", help="a store written by stabkit sweep --out")
    p.add_argument("--kind", default="heatmap", choices=["heatmap", "profile"])
    p.add_argument("--out", help="directory for the PNGs (default: PATH-KIND)")
    p.add_argument(
        "--max-figures", type=int, default=32, help="at most N PNGs (default: %(default)s)"
    )
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
