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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
