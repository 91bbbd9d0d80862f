"""``stabkit probe``: the limits and the measured behaviour of every dtype, as a table or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax

from stabkit.precision.behaviour import probe
from stabkit.precision.formats import SUPPORTED_DTYPES
from stabkit.precision.ranges import _limits


def _report(device: jax.Device | None = None) -> dict[str, Any]:
    p = probe(device)
    rows = {}
    for name in SUPPORTED_DTYPES:
        rows[name] = {
            "limits": _limits(name)._asdict(),
            "measured": p.dtypes[name]._asdict() if name in p.dtypes else None,
        }
    return {
        "device": p.device,
        "platform": p.platform,
        "jax": jax.__version__,
        "dtypes": rows,
        "unsupported": dict(p.unsupported),
    }


def _cli_probe(args: argparse.Namespace) -> int:
    """``stabkit probe``: table of limits and measured behaviour (``--json``: the same as JSON)."""
    report = _report()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, allow_nan=False))
        return 0
    print(f"stabkit probe: {report['device']} ({report['platform']}), jax {report['jax']}")
    print()
    print("Limits (exp_max: largest x with finite exp(x); exp_min: smallest x with exp(x) != 0,")
    print("with subnormals / flushed)")
    head = (
        f"{'dtype':<19}{'bits':>4}{'e':>3}{'m':>3}  {'max':>10}  {'tiny':>10}  {'subnormal':>10}"
        f"  {'eps':>9}  {'inf':>3}  {'exp_max':>9}  {'exp_min':>9}  {'(flushed)':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, row in report["dtypes"].items():
        lim = row["limits"]
        print(
            f"{name:<19}{lim['bits']:>4}{lim['exponent_bits']:>3}{lim['mantissa_bits']:>3}"
            f"  {lim['max']:>10.4g}  {lim['tiny']:>10.4g}  {lim['smallest_subnormal']:>10.4g}"
            f"  {lim['eps']:>9.3g}  {'yes' if lim['has_inf'] else 'no':>3}"
            f"  {lim['exp_max']:>9.6g}  {lim['exp_min']:>9.6g}  {lim['exp_min_normal']:>9.6g}"
        )
    print()
    print(f"Measured on {report['device']} under jit (operands passed as arguments):")
    head = (
        f"{'dtype':<19}{'tiny*0.5':>10}{'sub+tiny':>12}{'sub>0':>7}{'max*2':>7}{'0*inf':>7}"
        f"{'inf-inf':>9}{'sub*0.25':>10}{'a*b-c':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, row in report["dtypes"].items():
        m = row["measured"]
        if m is None:
            print(f"{name:<19}not computable here: {report['unsupported'][name]}")
            continue
        print(
            f"{name:<19}{'subnormal' if m['keeps_subnormal_results'] else '0 (FTZ)':>10}"
            f"{'sum' if not m['subnormal_inputs_as_zero'] else 'tiny (DAZ)':>12}"
            f"{'False' if m['subnormal_compares_as_zero'] else 'True':>7}{m['overflow']:>7}"
            f"{m['zero_times_inf'] or 'n/a':>7}{m['inf_minus_inf'] or 'n/a':>9}"
            f"{m['underflow']:>10}{'1 round' if m['multiply_add_rounds_once'] else '2 round':>9}"
        )
    print(
        "sub = smallest subnormal. FTZ: subnormal results flushed to 0; DAZ: subnormal inputs "
        "read as 0;\na*b-c '1 round': fused multiply-add (or wider arithmetic), so results can "
        "differ from NumPy."
    )
    measured = {n: r["measured"] for n, r in report["dtypes"].items() if r["measured"]}
    flushed = [n for n, m in measured.items() if not m["keeps_subnormal_results"]]
    kept = [n for n, m in measured.items() if m["keeps_subnormal_results"]]
    print()
    print(f"Subnormal results flushed to zero (not IEEE): {', '.join(flushed) or 'none'}")
    print(f"Subnormal results kept (IEEE):                {', '.join(kept) or 'none'}")
    return 0
