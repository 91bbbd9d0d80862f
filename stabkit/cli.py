"""The ``stabkit`` command line: ``stabkit reproduce``, ``stabkit probe`` and friends.

Every user error, argparse's own and the ``ValueError``/``TypeError``/``OSError`` that stabkit's
validation raises underneath, is one line on stderr, ``stabkit <command>: error: <message>``, and
exit status 2. A traceback is printed only for a bug (any other exception, or a ``ValueError`` or
``TypeError`` raised outside stabkit's own checks), followed by a line saying so, and exit status
1. Ctrl-C is one line and exit status 130. Everything a user types is checked before anything
compiles.

One file (about 590 lines) on purpose: each command's options sit beside the code that reads them,
and the error handling that wraps them all is here once.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence

from stabkit.distributed import MAX_PROCESSES, ProcessFailure

#: The most values one ``--depth``/``--width``/``--scale``/``--bias-std``/``--seed`` range may
#: hold, and the most ``--seeds``. Checked before any list is built: ``--scale 0:1:100000000``
#: used to run for 84 s into a MemoryError.
MAX_AXIS_VALUES = 10_000

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- value parsers


def _too_many(text: str, count: int) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(
        f"{text!r} gives {count:,} values, more than the {MAX_AXIS_VALUES:,} an axis may hold"
    )


def _int_token(token: str, text: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a:b, a:b:step or a,b,c of ints, got {text!r} ({token.strip()!r} is not an "
            "int)"
        ) from None


def _ints(text: str) -> list[int]:
    """``"1:64"`` (inclusive), ``"4:64:4"`` (with a step) or ``"2,4,8"``.

    The count is checked (at most :data:`MAX_AXIS_VALUES`) before the list is built; a zero step
    and a range that gives no values are errors.
    """
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise argparse.ArgumentTypeError(f"expected a:b or a:b:step (b included), got {text!r}")
        start, stop, *rest = (_int_token(p, text) for p in parts)
        step = rest[0] if rest else 1
        if step == 0:
            raise argparse.ArgumentTypeError(f"the step of {text!r} is 0; it must be non-zero")
        values = range(start, stop + (1 if step > 0 else -1), step)  # stop included
        if not values:
            raise argparse.ArgumentTypeError(
                f"{text!r} gives no values ({start} {'>' if step > 0 else '<'} {stop} with step "
                f"{step})"
            )
        if len(values) > MAX_AXIS_VALUES:
            raise _too_many(text, len(values))
        return list(values)
    tokens = [t for t in text.split(",") if t.strip()]
    if not tokens:
        raise argparse.ArgumentTypeError(f"expected a:b, a:b:step or a,b,c of ints, got {text!r}")
    if len(tokens) > MAX_AXIS_VALUES:
        raise _too_many(text if len(text) < 40 else text[:37] + "...", len(tokens))
    return [_int_token(t, text) for t in tokens]


def _float_token(token: str, text: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected lo:hi:count or a,b,c of numbers, got {text!r} ({token.strip()!r} is not a "
            "number)"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"values must be finite, got {token.strip()!r} in {text!r}"
        )
    return value


def _floats(text: str) -> list[float]:
    """``"0.5:2.0:16"`` (16 values from 0.5 to 2.0, both included) or ``"0.5,1,2"``.

    Every value must be finite; a count above :data:`MAX_AXIS_VALUES` is refused before the list
    is built; ``lo == hi`` with a count above 1 (a zero step) and a count of 1 with ``lo != hi``
    (it would drop ``hi``) are errors.
    """
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(
                f"expected lo:hi:count (count values, both ends included) or a,b,c, got {text!r}"
            )
        lo, hi = (_float_token(p, text) for p in parts[:2])
        try:
            n = int(parts[2])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"the count of {text!r} must be an int, got {parts[2].strip()!r}"
            ) from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"the count of {text!r} must be >= 1, got {n}")
        if n > MAX_AXIS_VALUES:
            raise _too_many(text, n)
        if n > 1 and lo == hi:
            raise argparse.ArgumentTypeError(
                f"{text!r} has a zero step (lo == hi); give lo != hi or a single value"
            )
        if n == 1 and lo != hi:
            raise argparse.ArgumentTypeError(
                f"{text!r} asks for 1 value between {lo} and {hi}; give count >= 2 or one value"
            )
        if n == 1:
            return [lo]
        width = hi - lo
        if math.isfinite(width):
            values = [lo + width * i / (n - 1) for i in range(n)]
        else:  # hi - lo overflows (-1e308:1e308:3): interpolate without forming it
            values = [lo * (1 - i / (n - 1)) + hi * (i / (n - 1)) for i in range(n)]
        values[-1] = hi
        return values
    tokens = [t for t in text.split(",") if t.strip()]
    if not tokens:
        raise argparse.ArgumentTypeError(f"expected lo:hi:count or a,b,c of numbers, got {text!r}")
    if len(tokens) > MAX_AXIS_VALUES:
        raise _too_many(text if len(text) < 40 else text[:37] + "...", len(tokens))
    return [_float_token(t, text) for t in tokens]


def _valid_names(kind: str) -> tuple[str, ...]:
    """The names the sweep's spec accepts for ``kind`` (:meth:`stabkit.SweepSpec.choices`,
    imported on first use)."""
    from stabkit.sweeps.spec import SweepSpec

    return SweepSpec.choices(kind)


def _names(kind: str, many: bool = True) -> Callable[[str], list[str] | str]:
    """A parser for a comma-separated list (``many``) or one of the names :func:`_valid_names`
    gives for ``kind``; an unknown name's error lists the valid ones."""

    def parse(text: str) -> list[str] | str:
        names = [v.strip() for v in text.split(",") if v.strip()] if many else [text.strip()]
        valid = _valid_names(kind)
        if not names or not names[0]:
            what = f"comma-separated {kind} names" if many else f"one {kind} name"
            raise argparse.ArgumentTypeError(
                f"expected {what}, got {text!r}; valid: {', '.join(valid)}"
            )
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {name!r}; valid: {', '.join(valid)}"
                )
        return names if many else names[0]

    parse.__name__ = kind
    return parse


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:,}, got {value:,}")
        return value

    return parse


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text!r}")
    return value


def _bytes(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5G"`` (K, M, G, T: powers of 1024) or a plain byte count."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    hint = "expected bytes such as 512M or 2G"
    body, unit = (text[:-1], units[text[-1].upper()]) if text[-1:].upper() in units else (text, 1)
    try:
        value = float(body) * unit if unit > 1 else int(body)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{hint}, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{hint} (at least 1 byte), got {text!r}")
    return int(value)


def _path(text: str) -> str:
    """A path as typed; an empty one ("" is the current directory to the OS) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


# --------------------------------------------------------------------------------- commands


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from stabkit.reproduce import find_experiments, reproduce

    if args.list:
        for name, module in find_experiments().items():
            print(f"{name:24s} {getattr(module, 'TITLE', '')}")
        return 0
    only = None
    if args.only is not None:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if not only:
            valid = ", ".join(find_experiments())
            raise ValueError(f"--only={args.only!r} names no study; valid: {valid}")
    results = reproduce(args.out, only=only, quick=args.quick)
    return 0 if all(r.passed for r in results) else 1


def _cmd_probe(args: argparse.Namespace) -> int:
    from stabkit.precision import report

    return report._cli_probe(args)


def _check_budget(spec, chunk_size: int | None, memory_budget: int) -> None:
    """Refuse a ``--memory-budget`` too small for two configs of the grid's largest (dtype,
    width), and a ``--chunk-size`` whose buffers exceed it, before anything compiles.

    ``stabkit.sweep`` finds a budget too small only when it reaches that (dtype, width), after
    the smaller ones have run; an explicit chunk size was allocated as given
    (``--chunk-size 100000000`` ran 60 s into a MemoryError).
    """
    import jax

    from stabkit._checks import format_bytes

    per, dtype, width = max((spec.config_bytes(d, w), d, w) for d in spec.dtype for w in spec.width)
    least = 2 * len(jax.local_devices())  # two configs a device, as stabkit.sweep plans chunks
    if memory_budget < least * per:
        raise ValueError(
            f"--memory-budget={format_bytes(memory_budget)} is below the "
            f"{format_bytes(least * per)} that {least} {dtype} configs of width {width} and "
            f"depth {max(spec.depth)} need"
        )
    if chunk_size is None:
        return
    need = max(chunk_size, least) * per
    if need > memory_budget:
        raise ValueError(
            f"--chunk-size={chunk_size} needs about {format_bytes(need)} a chunk "
            f"({format_bytes(per)} a config), more than --memory-budget="
            f"{format_bytes(memory_budget)}; at most {max(memory_budget // per, 1):,} configs fit"
        )


def _cmd_sweep(args: argparse.Namespace) -> int:
    import time

    import stabkit as sk
    from stabkit._checks import check_memory

    if args.resume and args.out is None:
        raise ValueError("--resume continues a store: give its path with --out")
    # Before anything computes (JAX's rule); a user error in the flags is named by its flag.
    procs = _processes(args)
    check_memory(args.memory_budget, "--memory-budget", args.memory_budget, "a sweep chunk")
    seeds = list(range(1 if args.seeds is None else args.seeds)) if args.seed is None else args.seed
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
    _check_budget(spec, args.chunk_size, args.memory_budget)
    start = time.perf_counter()
    # With --out the sweep streams to disk and need never fit in memory; the summary reads the
    # store back only where it does.
    ds = sk.sweep(
        spec,
        out=args.out,
        resume=args.resume,
        chunk_size=args.chunk_size,
        memory_budget=args.memory_budget,
        progress=not args.quiet,
        load_result=False,
    )
    seconds = time.perf_counter() - start
    if not args.quiet and procs.index > 0:
        print(f"process {procs.index} of {procs.count}: done in {seconds:.1f} s")
    elif not args.quiet:
        where = f", written to {args.out}" if args.out else ""
        print(f"{spec.n_configs} configs in {seconds:.1f} s{where}")
        if args.out is not None:
            try:
                ds = sk.load(args.out)
            except ValueError as err:  # larger than memory: the store is complete all the same
                print(f"(no summary: {err})")
                return 0
        nonfinite = int((ds.first_nonfinite_forward >= 0).sum())
        vanished = int((ds.first_zero_backward >= 0).sum())
        print(f"{nonfinite} with an inf/NaN signal, {vanished} with a gradient that became 0")
    return 0


def _processes(args: argparse.Namespace):
    """Join the multi-process job of ``--coordinator/--num-processes/--process-id`` (or the one
    the cluster's environment describes), naming the flag of a bad value."""
    from stabkit import distributed

    given = (args.coordinator, args.num_processes, args.process_id)
    flags = ("--coordinator", "--num-processes", "--process-id")
    alone = args.num_processes == 1 and args.coordinator is None and not args.process_id
    if any(v is not None for v in given) and None in given and not alone:
        missing = [f for f, v in zip(flags, given, strict=True) if v is None]
        raise ValueError(
            f"{' and '.join(missing)} missing: --coordinator HOST:PORT, --num-processes N and "
            "--process-id I go together (or give none of them under SLURM, mpirun, Kubernetes "
            "or a Cloud TPU job)"
        )
    if args.process_id is not None and args.process_id >= args.num_processes:
        raise ValueError(
            f"--process-id={args.process_id} is out of range for --num-processes="
            f"{args.num_processes}; valid: 0..{args.num_processes - 1}"
        )
    if args.coordinator is not None:
        try:
            distributed._check_coordinator(args.coordinator)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
    if (args.num_processes or 1) > 1 and args.out is None:
        raise ValueError(
            f"--num-processes={args.num_processes}: a sweep on several processes writes one "
            "store; give --out (a directory every process sees)"
        )
    procs = distributed.initialize(*given)
    if procs.count > 1 and args.out is None:  # a cluster job, detected
        raise ValueError(
            f"this is process {procs.index} of a {procs.count}-process job: a sweep on several "
            "processes writes one store; give --out (a directory every process sees), or "
            "--num-processes 1 for a sweep of this process alone"
        )
    return procs


def _cmd_plot(args: argparse.Namespace) -> int:
    import stabkit as sk
    from stabkit.reproduce import _output_dir
    from stabkit.sweeps.plots import _PLOT_MARKER, _old_plots, plot

    out = args.out if args.out is not None else f"{str(args.path).rstrip('/')}-{args.kind}"
    # Checked before the store is read (a large one takes a while to open).
    _output_dir(out, "--out", _PLOT_MARKER, _old_plots, create=False)
    for path in plot(sk.load(args.path), out, kind=args.kind, max_figures=args.max_figures):
        print(path)
    return 0


# ----------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``, exit status 2
    (no usage block: ``--help`` shows it). Subcommands inherit it (``parser_class``)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {_one_line(message)}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stabkit",
        description="Numerical-stability research toolkit for JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "reproduce",
        help="run every study, write figures, numbers and report.md",
        description="Run the registered studies (experiments/) and write DIR/report.md with a "
        "PASS/FAIL line for each claim. Exit status 1 if any claim fails.",
    )
    p.add_argument(
        "--out",
        type=_path,
        default="stabkit-results",
        help="output directory (default: %(default)s)",
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
        "the per-layer statistics to a zarr store (stabkit.sweep). Ranges hold at most "
        f"{MAX_AXIS_VALUES:,} values.",
    )
    p.add_argument("--depth", type=_ints, required=True, help="e.g. 1:64, 4:64:4 or 2,8,32")
    p.add_argument("--width", type=_ints, default=[64], help="default: %(default)s")
    p.add_argument(
        "--activation", type=_names("activation"), default=["relu"], help="e.g. relu,tanh"
    )
    p.add_argument(
        "--init", type=_names("init"), default=["gaussian"], help="e.g. gaussian,orthogonal"
    )
    p.add_argument("--scale", type=_floats, default=[1.0], help="e.g. 0.5:2.0:16 or 0.5,1,2")
    p.add_argument("--bias-std", type=_floats, default=[0.0], help="default: %(default)s")
    p.add_argument(
        "--dtype", type=_names("dtype"), default=["float32"], help="e.g. float16,float32"
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=_int_at_least(1, MAX_AXIS_VALUES),
        help="seeds 0..N-1 (default: 1)",
    )
    seeds.add_argument("--seed", type=_ints, help="explicit seeds instead of --seeds, e.g. 3,17")
    p.add_argument("--batch", type=_int_at_least(1), default=128, help="default: %(default)s")
    p.add_argument(
        "--input", type=_names("input", many=False), default="normal", help="default: normal"
    )
    p.add_argument("--loss", type=_names("loss", many=False), default="mse", help="default: mse")
    p.add_argument(
        "--threshold", type=_nonnegative_float, default=1e-2, help="saturation threshold"
    )
    p.add_argument(
        "--out", type=_path, help="zarr store to write (default: keep in memory, print a summary)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out store")
    p.add_argument(
        "--chunk-size", type=_int_at_least(1), help="configs per kernel call (default: automatic)"
    )
    p.add_argument("--memory-budget", type=_bytes, default=2**30, help="e.g. 512M (default 1G)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    procs = p.add_argument_group(
        "several processes",
        "run one sweep on N processes (hosts or GPUs) writing one --out store; each process runs "
        "the same command with its own --process-id. Under SLURM (srun), mpirun, Kubernetes or "
        "a Cloud TPU job these are detected: give none of them.",
    )
    procs.add_argument(
        "--coordinator", metavar="HOST:PORT", help="process 0's host and a free port on it"
    )
    procs.add_argument(
        "--num-processes",
        type=_int_at_least(1, MAX_PROCESSES),
        metavar="N",
        help="processes in the job (1: this process alone, even under SLURM)",
    )
    procs.add_argument(
        "--process-id", type=_int_at_least(0, MAX_PROCESSES - 1), metavar="I", help="0..N-1"
    )
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "plot",
        help="PNG heatmaps (depth x scale) or per-layer profiles of a sweep store",
    )
    p.add_argument("path", type=_path, help="a store written by stabkit sweep --out")
    p.add_argument("--kind", default="heatmap", choices=["heatmap", "profile"])
    p.add_argument("--out", type=_path, help="directory for the PNGs (default: PATH-KIND)")
    p.add_argument(
        "--max-figures",
        type=_int_at_least(1),
        default=32,
        help="at most N PNGs (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_plot)
    return parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _glue_dash_values(argv: list[str], commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``--opt -x`` as ``--opt=-x`` for the options that take a value.

    argparse reads a token that starts with ``-`` as an option, so ``--depth -3:2`` said
    "expected one argument" instead of reaching the check that names depth and -3. Only tokens
    with a single leading dash are glued: ``--out --resume`` stays a missing value.
    """
    pos = next((i for i, tok in enumerate(argv) if not tok.startswith("-")), None)
    if pos is None or argv[pos] not in commands:
        return argv
    sub = commands[argv[pos]]
    takes_value = {
        opt for a in sub._actions if a.option_strings and a.nargs != 0 for opt in a.option_strings
    }
    longs = [o for o in takes_value if o.startswith("--")]
    flags = {opt for a in sub._actions for opt in a.option_strings}
    out, i = argv[: pos + 1], pos + 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out += argv[i:]
            break
        name = tok
        if tok.startswith("--") and tok not in flags:  # an abbreviation argparse will expand
            matches = [o for o in longs if o.startswith(tok)]
            name = matches[0] if len(matches) == 1 else tok
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (
            name in takes_value
            and nxt is not None
            and nxt.startswith("-")
            and not nxt.startswith("--")
            and nxt not in flags
        ):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


# ------------------------------------------------------------------------------------ errors


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "(no message)"


def _raised_by_stabkit_check(err: BaseException) -> bool:
    """True where ``err`` comes from a ``raise`` statement in stabkit's own code.

    A ``ValueError``/``TypeError`` raised inside jax, NumPy, zarr or json, or by a bad call in
    stabkit's code (``f() got an unexpected keyword``, ``'int' object is not subscriptable``), is a
    bug to report, not a user error.
    """
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    try:
        if not pathlib.Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
            return False
    except (OSError, ValueError):
        return False
    return _is_raise_statement(filename, tb.tb_lineno)


def _is_raise_statement(filename: str, lineno: int) -> bool:
    """Whether the innermost statement holding line ``lineno`` of ``filename`` is a ``raise``
    (by its syntax tree: a ``raise`` spans several lines, and where a traceback points inside
    it differs between Python versions)."""
    import ast
    import linecache

    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return False
    holding = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.stmt) and node.lineno <= lineno <= (node.end_lineno or node.lineno)
    ]
    if not holding:
        return False
    innermost = max(holding, key=lambda n: (n.lineno, -(n.end_lineno or n.lineno)))
    return isinstance(innermost, ast.Raise)


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, OSError):  # the file system's answer: missing, exists, not a directory
        return True
    return isinstance(err, (ValueError, TypeError)) and _raised_by_stabkit_check(err)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stabkit ARGV``; returns the exit status (0 ok, 1 failed claims or a bug, 2 a user
    error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = _commands(parser)
    prog, args = "stabkit", None
    try:
        args, extra = parser.parse_known_args(_glue_dash_values(argv, commands))
        prog = f"stabkit {args.command}"
        if extra:
            commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        return int(args.func(args))
    except SystemExit as e:  # argparse: --help (0) or an error already printed (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except ProcessFailure as e:  # another process of the job stopped: not this one's fault
        sys.stderr.write(f"{prog}: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt:
        hint = ""
        if prog == "stabkit sweep" and getattr(args, "out", None):
            hint = f"; rerun with --resume to continue {args.out}"
        sys.stderr.write(f"{prog}: interrupted{hint}\n")
        return 130
    except Exception as e:
        if _is_user_error(e):
            sys.stderr.write(f"{prog}: error: {_one_line(e)}\n")
            return 2
        traceback.print_exc()
        sys.stderr.write(
            f"{prog}: internal error ({type(e).__name__}): this is a bug in stabkit; please "
            "report it with the command line and the traceback above\n"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
