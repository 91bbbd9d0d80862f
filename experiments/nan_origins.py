"""Study: where an inf or a NaN comes from, by ``stabkit.inspect``, ``jax_debug_nans``,
``jax_debug_infs`` and checkify, side by side on the same jitted functions and inputs.

Two cases of issue 13 and a gallery of failures reported on GitHub:

* a float16 attention block written as a user would (``exp(logits) / sum``) whose logits pass
  ``log(65504) = 11.09``: ``exp`` overflows to inf, ``inf / inf`` is NaN;
* a normalisation with a sqrt behind a ``where`` (``norm = where(ss > 0, sqrt(ss), 0)``),
  differentiated at a zero row: sqrt's derivative ``1 / (2 sqrt(0))`` is inf in the backward pass,
  and the ``where``'s zero cotangent times it is NaN (jax-ml/jax#475 asks how to find such an op);
* jax-ml/jax#347 (#5798), jax-ml/jax#1052, jax-ml/jax#9159, jax-ml/jax#5696, jax-ml/jax#6811,
  google-deepmind/optax#1752 (each cited at its function below).

Every case states where its first inf or NaN is made (the primitives and the line, in this file)
and whether it reaches the output. Each tool's finding is recorded as text with the primitive and
the line it names (for the flags and checkify: the innermost frame of this file in the traceback
they raise or return) and judged against that: the right op and line, the right op but no line,
another op or line, a false alarm on a finite output, silence on a non-finite output.

The flags are run on the jitted function (``jax_debug_infs`` then only checks the outputs, which
hold NaN, not inf) and, for ``jax_debug_infs``, also op by op under ``jax.disable_jit()``. Every
tool gets its own ``jax.jit`` of the case and a cleared JAX cache: measured here (JAX 0.10.2),
after checkify of a vmapped function (jax#9159's case) ``jax_debug_nans`` missed the NaN of the
next case until ``jax.clear_caches()``. jax#9159's own complaint, a ``jax_debug_nans`` error on
a finite output, no longer happens in JAX 0.10.2; checkify's division-by-zero check raises there.

Run alone: ``python experiments/nan_origins.py [--out DIR] [--quick]`` (the study is named
``inspect``; a file of that name would hide the standard library's ``inspect`` when run as a
script).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import pathlib
import re
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from jax.experimental import checkify

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit
from stabkit.reproduce import Claim, run_alone, save_json

NAME = "inspect"
TITLE = "stabkit.inspect names the op and line of every inf and NaN; jax_debug_nans and checkify"
ORDER = 80

TOOLS = ("inspect", "jax_debug_nans", "jax_debug_infs", "jax_debug_infs, disable_jit", "checkify")
#: How a tool's finding compares with the case's known origin; the figure's colours.
OUTCOMES = {
    "line": ("right op and line", "#2ca02c"),
    "op": ("right op, no line", "#bcd66b"),
    "other": ("another op or line", "#ff9f40"),
    "false alarm": ("false alarm (output finite)", "#d62728"),
    "nothing": ("nothing (output not finite)", "#7f7f7f"),
    "silent": ("silent (output finite)", "#c7d7e8"),
}
_FILE = os.path.realpath(__file__)


# -- the cases, written as a user would --------------------------------------------------------


def attention(x, wq, wk, wv):
    """One float16 attention head with the textbook softmax."""
    with jax.named_scope("attention"):
        with jax.named_scope("projections"):
            q, k, v = x @ wq, x @ wk, x @ wv
        with jax.named_scope("scores"):
            logits = q @ k.T / jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype))
        with jax.named_scope("softmax"):
            w = jnp.exp(logits)
            total = jnp.sum(w, axis=-1, keepdims=True)
            p = w / total
        return p @ v


def normalise(x, eps=1e-6):
    """Rows of ``x`` scaled to unit norm; the where keeps the forward pass finite at 0."""
    ss = jnp.sum(x * x, axis=-1, keepdims=True)
    norm = jnp.where(ss > 0, jnp.sqrt(ss), 0.0)
    return x / (norm + eps)


def normalise_loss(x, w):
    return jnp.sum(normalise(x) * w)


def where_sqrt(x):
    """jax-ml/jax#347 (the code of #5798): the branch not taken is still differentiated."""
    root = jnp.sqrt(x)
    return jnp.where(x < 1.0, x, root)


def where_arctan2(a):
    """jax-ml/jax#1052: arctan2(a, a) behind a where; its derivative is 0/0 at a = 0."""
    b = jnp.arctan2(a, a)
    c = jnp.where(jnp.array([0.0, 1.0, 0.0]) > 0.5, 0.0, b)
    return jnp.sum(c)


def safe_norm(x):
    """jax-ml/jax#9159: a norm made 'grad-safe' at 0 by a cond (the issue's code)."""
    is_zero = jnp.all(jnp.isclose(x, 0.0), axis=-1, keepdims=False)
    return jax.lax.cond(
        is_zero,
        lambda x: jnp.array([0.0]),
        lambda x: jnp.linalg.norm(x, keepdims=True),
        x,
    )


def safe_normalize(x):
    is_zero = jnp.allclose(x, 0.0)
    return jax.lax.cond(
        is_zero,
        lambda x: jnp.zeros_like(x),
        lambda x: x / safe_norm(x),
        x,
    )


def safe_normalize_sum(x):
    return jnp.sum(safe_normalize(x))


def scan_log_likelihood(xs):
    """jax-ml/jax#5696: a NaN made inside a scan (here the log of the third, negative term)."""

    def step(total, x):
        term = jnp.log(x)
        return total + term, term

    return jax.lax.scan(step, 0.0, xs)[0]


def log_semiring(x):
    """jax-ml/jax#6811: log(0 + 0 e^x) in the log semiring, the inner step of a CTC loss."""
    return jax.nn.logsumexp(jnp.stack([-jnp.inf, -jnp.inf + x]))


def clipped_update(grads):
    """google-deepmind/optax#1752: clip_by_global_norm(0) of zero gradients is 0/0."""
    clipper = optax.clip_by_global_norm(0.0)
    updates, _ = clipper.update(grads, clipper.init(grads))
    return updates


@dataclasses.dataclass(frozen=True)
class Case:
    """A failing function, its inputs, and where its first inf or NaN is made."""

    name: str
    issue: str  # where it was reported ('' for the study's own cases)
    title: str
    fn: Callable
    args: tuple
    source: tuple[Callable, ...]  # the functions whose lines hold the origin
    marks: tuple[str, ...]  # text of those lines
    ops: tuple[str, ...]  # the primitives that make the first inf or NaN
    finite_output: bool = False  # True: the NaN is discarded before the output


def _attention_inputs(tokens: int, dim: int, gain: float):
    kx, kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(kx, (tokens, dim))
    ws = [jax.random.normal(k, (dim, dim)) * gain / math.sqrt(dim) for k in (kq, kk, kv)]
    return tuple(a.astype(jnp.float16) for a in (x, *ws))


def _cases(quick: bool) -> list[Case]:
    tokens, dim = (8, 16) if quick else (32, 32)
    x = jnp.ones((4, 8)).at[2].set(0.0)  # the third row is zero
    w = jnp.linspace(-1.0, 1.0, 8)
    return [
        Case(
            "attention",
            "",
            f"float16 attention, {tokens} tokens x {dim}: exp(logits) overflows",
            attention,
            _attention_inputs(tokens, dim, gain=2.5),
            (attention,),
            ("jnp.exp(logits)", "jnp.sum(w, axis=-1"),
            ("exp", "reduce_sum"),
        ),
        Case(
            "normalise",
            "",
            "grad of x / where(ss > 0, sqrt(ss), 0) at a zero row",
            jax.grad(normalise_loss),
            (x, w),
            (normalise,),
            ("jnp.sqrt(ss)",),
            ("div", "mul"),
        ),
        Case(
            "where_sqrt",
            "jax-ml/jax#347",
            "grad of where(x < 1, x, sqrt(x)) at 0 is NaN",
            jax.grad(where_sqrt),
            (0.0,),
            (where_sqrt,),
            ("jnp.sqrt(x)",),
            ("div", "mul"),
        ),
        Case(
            "where_arctan2",
            "jax-ml/jax#1052",
            "grad of where(mask, 0, arctan2(a, a)) at a = 0 is NaN",
            jax.grad(where_arctan2),
            (jnp.array([3.0, 0.0, -5.0]),),
            (where_arctan2,),
            ("jnp.arctan2(a, a)",),
            ("div", "mul"),
        ),
        Case(
            "vmap_cond",
            "jax-ml/jax#9159",
            "vmap of grad of a cond-guarded normalize: both branches run, output finite",
            jax.vmap(jax.grad(safe_normalize_sum)),
            (jnp.zeros((4, 3)),),
            (safe_normalize, safe_norm),
            ("x / safe_norm(x)", "jnp.linalg.norm(x, keepdims=True)"),
            ("div", "integer_pow", "sqrt", "rsqrt", "mul"),
            finite_output=True,
        ),
        Case(
            "scan",
            "jax-ml/jax#5696",
            "a NaN made inside lax.scan, at its third step",
            scan_log_likelihood,
            (jnp.array([1.0, 2.0, -1.0, 3.0, 4.0]),),
            (scan_log_likelihood,),
            ("jnp.log(x)",),
            ("log",),
        ),
        Case(
            "logsumexp",
            "jax-ml/jax#6811",
            "grad of logsumexp([-inf, -inf + x]) is NaN",
            jax.grad(log_semiring),
            (1.0,),
            (log_semiring,),
            ("jax.nn.logsumexp(",),
            ("div", "mul"),
        ),
        Case(
            "clip_zero",
            "google-deepmind/optax#1752",
            "clip_by_global_norm(0) of zero gradients is NaN",
            clipped_update,
            ({"w": jnp.zeros(3)},),
            (clipped_update,),
            ("clipper.update(",),
            ("div",),
        ),
    ]


def _lines_of(case: Case) -> list[int]:
    """The line numbers, in this file, of the case's origin (its marks)."""
    import inspect as pyinspect  # the standard library's, not this study

    found = []
    for fn in case.source:
        lines, start = pyinspect.getsourcelines(fn)
        found += [start + i for i, text in enumerate(lines) if any(m in text for m in case.marks)]
    return sorted(found)


# -- running the tools -------------------------------------------------------------------------


def _counted(fn: Callable, counter: list) -> Callable:
    """``fn`` that counts how often its Python runs (a trace, or an op-by-op re-run)."""

    def counted(*args):
        counter.append(1)
        return fn(*args)

    return counted


def _line_in_frames(frames) -> int | None:
    """The innermost frame of this file that is not the tools' runners: the line a tool names."""
    lines = [
        f.lineno
        for f in frames
        if os.path.realpath(f.filename) == _FILE and not f.name.startswith(("_run", "counted"))
    ]
    return lines[-1] if lines else None


def _nonfinite(tree) -> bool:
    leaves = jax.tree.leaves(tree)
    return any(not bool(jnp.all(jnp.isfinite(jnp.asarray(v, jnp.float32)))) for v in leaves)


def _run_inspect(case: Case, counter: list) -> tuple[dict, stabkit.Report]:
    fn = jax.jit(_counted(case.fn, counter))
    start = time.perf_counter()
    report = stabkit.inspect(fn, *case.args)
    origins = [o for o in report.origins if o.kind in ("inf", "nan")]
    seconds = time.perf_counter() - start
    reaching = [o for o in origins if o.reaches_output]
    chosen = (reaching or origins or [None])[0]
    plain = jax.jit(case.fn)(*case.args)
    same = jax.tree.all(
        jax.tree.map(
            lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)),
            report.outputs,
            plain,
        )
    )
    finding = {
        "alarm": bool(reaching),
        "primitive": chosen.primitive if chosen else None,
        "line": _origin_line(chosen),
        "text": _origin_text(chosen) if chosen else "no origin",
        "python_runs": len(counter),
        "seconds": seconds,
        "outputs_equal_plain_call": bool(same),
        "origins": [_origin_record(o) for o in report.origins],
    }
    return finding, report


def _origin_line(o) -> int | None:
    if o is None or not o.source:
        return None
    path, _, line = o.source.rpartition(":")
    return int(line) if os.path.realpath(path) == _FILE and line.isdigit() else None


def _origin_text(o) -> str:
    where = "" if o.reaches_output else ", discarded"
    it = f", iteration {list(o.iteration)}" if o.iteration is not None else ""
    return f"{o.kind} from {o.primitive} ({o.direction}{it}{where}) line {_origin_line(o)}"


def _origin_record(o) -> dict:
    return {
        "kind": o.kind,
        "primitive": o.primitive,
        "line": _origin_line(o),
        "text": o.line,
        "scope": o.scope,
        "direction": o.direction,
        "iteration": None if o.iteration is None else list(o.iteration),
        "index": list(o.index),
        "reaches_output": o.reaches_output,
        "node": o.node,
    }


def _run_flag(flag: str, case: Case, counter: list, *, eager: bool = False) -> dict:
    """``fn`` under ``flag`` (jitted, or op by op under ``jax.disable_jit`` when ``eager``)."""
    fn = jax.jit(_counted(case.fn, counter))
    previous = getattr(jax.config, flag)
    jax.config.update(flag, True)
    start = time.perf_counter()
    printed = io.StringIO()  # under jit the flags print that they call the de-optimized function
    try:
        with contextlib.redirect_stdout(printed):
            with jax.disable_jit() if eager else contextlib.nullcontext():
                jax.block_until_ready(fn(*case.args))
        finding = {"alarm": False, "primitive": None, "line": None, "text": "no error"}
    except FloatingPointError as err:
        text = str(err).splitlines()[0]
        op = re.search(r"encountered in (\S+?)\.?$", text)
        finding = {
            "alarm": True,
            "primitive": op.group(1) if op else None,
            "line": _line_in_frames(traceback.extract_tb(err.__traceback__)),
            "text": text,
        }
    finally:
        jax.config.update(flag, previous)
    finding["printed"] = printed.getvalue().strip()
    finding["seconds"] = time.perf_counter() - start
    finding["python_runs"] = len(counter)
    return finding


def _run_checkify(case: Case, counter: list) -> dict:
    fn = jax.jit(_counted(case.fn, counter))
    start = time.perf_counter()
    err, _ = checkify.checkify(fn, errors=checkify.float_checks)(*case.args)
    message = err.get()
    finding = {"alarm": message is not None, "primitive": None, "line": None}
    finding["text"] = "no error" if message is None else message.splitlines()[0]
    exc = err.get_exception()
    if exc is not None:
        # NaNError names its primitive; DivisionByZeroError is raised by div only
        finding["primitive"] = getattr(exc, "prim", None) or (
            "div" if "division by zero" in finding["text"] else None
        )
        info = getattr(exc, "traceback_info", None)
        if info is not None and hasattr(info, "as_python_traceback"):
            finding["line"] = _line_in_frames(traceback.extract_tb(info.as_python_traceback()))
    finding["seconds"] = time.perf_counter() - start
    finding["python_runs"] = len(counter)
    return finding


def _program(report) -> dict:
    """The per-equation RMS and max |x| in program order, for the figure."""
    ds = report.stats
    return {
        "primitive": [str(p) for p in ds.primitive.values],
        "direction": [str(d) for d in ds.direction.values],
        "scope": [str(s) for s in ds.scope.values],
        "dtype": [str(d) for d in ds.dtype.values],
        "node": [int(n) for n in ds.node.values],
        "rms": [float(v) for v in ds.rms.values],
        "max_abs": [float(v) for v in ds.max_abs.values],
        "inf": [int(v) for v in ds.inf.values],
        "nan": [int(v) for v in ds.nan.values],
    }


def measure(*, quick: bool = False) -> dict:
    """Every case through every tool; the attention and normalisation reports' statistics."""
    numbers: dict = {"quick": quick, "float16_max": float(jnp.finfo(jnp.float16).max)}
    numbers["exp_overflow_float16"] = math.log(numbers["float16_max"])
    cases = {}
    for case in _cases(quick):
        entry = {
            "issue": case.issue,
            "title": case.title,
            "expected": {
                "ops": list(case.ops),
                "lines": _lines_of(case),
                "finite_output": case.finite_output,
            },
        }
        output = jax.jit(case.fn)(*case.args)
        entry["output_nonfinite"] = _nonfinite(output)
        tools = {}
        jax.clear_caches()
        tools["inspect"], report = _run_inspect(case, [])
        for flag in ("jax_debug_nans", "jax_debug_infs"):
            jax.clear_caches()
            tools[flag] = _run_flag(flag, case, [])
        jax.clear_caches()
        tools["jax_debug_infs, disable_jit"] = _run_flag("jax_debug_infs", case, [], eager=True)
        jax.clear_caches()
        tools["checkify"] = _run_checkify(case, [])
        jax.clear_caches()
        entry["tools"] = tools
        if case.name in ("attention", "normalise"):
            entry["program"] = _program(report)
        if case.name == "attention":
            x, wq, wk, _ = (np.asarray(a, np.float32) for a in case.args)
            logits = (x @ wq) @ (x @ wk).T / math.sqrt(x.shape[-1])
            entry["max_logit"] = float(logits.max())
        cases[case.name] = entry
    numbers["cases"] = cases
    return numbers


# -- claims ------------------------------------------------------------------------------------


def outcome(finding: dict, expected: dict) -> str:
    """A tool's finding against the case's known origin: a key of :data:`OUTCOMES`."""
    named = finding.get("primitive") is not None
    if expected["finite_output"]:
        if finding["alarm"]:
            return "false alarm"
        if not named:
            return "silent"
    elif not finding["alarm"]:
        return "nothing"
    if finding.get("primitive") not in expected["ops"]:
        return "other"
    return "line" if finding.get("line") in expected["lines"] else "op"


def _counts(numbers: dict) -> dict[str, dict[str, int]]:
    counts = {t: dict.fromkeys(OUTCOMES, 0) for t in TOOLS}
    for entry in numbers["cases"].values():
        for tool in TOOLS:
            counts[tool][outcome(entry["tools"][tool], entry["expected"])] += 1
    return counts


def _said(entry: dict, tool: str) -> str:
    f = entry["tools"][tool]
    line = f" (line {f['line']})" if f.get("line") is not None else " (no line in the case)"
    return f"{tool}: '{f['text']}'" + (line if f["alarm"] else "")


def claims(numbers: dict) -> list[Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cases = numbers["cases"]
    att, nrm = cases["attention"], cases["normalise"]
    result = []

    # 1. the attention block: the first origin is exp's (or the sum's) overflow, at its line
    origins = att["tools"]["inspect"]["origins"]
    first = next((o for o in origins if o["kind"] in ("inf", "nan")), None)
    nan = next((o for o in origins if o["kind"] == "nan"), None)
    ok = (
        first is not None
        and first["kind"] == "inf"
        and first["primitive"] in att["expected"]["ops"]
        and first["line"] in att["expected"]["lines"]
        and bool(first["text"])
        and first["scope"].startswith("attention")
        and float(att["max_logit"]) > float(numbers["exp_overflow_float16"])
        and nan is not None
        and nan["reaches_output"]
    )
    result.append(
        Claim(
            "float16 attention: inspect names the overflowing exp, its scope and its line",
            f"max logit {float(att['max_logit']):.1f} > log(65504) = "
            f"{float(numbers['exp_overflow_float16']):.2f}: exp is inf, then inf/inf is NaN",
            (
                f"inspect: {first['kind']} from {first['primitive']} in {first['scope']!r} at line "
                f"{first['line']} '{first['text']}', then NaN from "
                f"{nan['primitive'] if nan else '?'} at line {nan['line'] if nan else '?'}; "
                if first
                else "inspect: no origin; "
            )
            + "; ".join(_said(att, t) for t in TOOLS[1:]),
            ok,
        )
    )

    # 2. the normalisation's gradient: inf then NaN, both backward, both reaching the output
    origins = nrm["tools"]["inspect"]["origins"]
    kinds = {o["kind"]: o for o in origins if o["kind"] in ("inf", "nan")}
    ok = (
        set(kinds) == {"inf", "nan"}
        and all(o["direction"] == "backward" and o["reaches_output"] for o in kinds.values())
        and all(o["line"] in nrm["expected"]["lines"] for o in kinds.values())
        and bool(nrm["output_nonfinite"])
    )
    result.append(
        Claim(
            "grad of a where-guarded sqrt at 0: inspect finds sqrt's inf and the 0 * inf NaN",
            "d sqrt(s)/ds = 1/(2 sqrt(0)) = inf in the backward pass; the where's zero "
            "cotangent times it is NaN, and it reaches the gradient",
            "inspect: "
            + ", ".join(
                f"{o['kind']} from {o['primitive']} ({o['direction']}, "
                f"{'reaches' if o['reaches_output'] else 'discarded'}) line {o['line']}"
                for o in kinds.values()
            )
            + "; "
            + "; ".join(_said(nrm, t) for t in TOOLS[1:]),
            ok,
        )
    )

    # 3. every case: inspect names the right op and line
    counts = _counts(numbers)
    n = len(cases)
    missed = [
        k for k, e in cases.items() if outcome(e["tools"]["inspect"], e["expected"]) != "line"
    ]
    result.append(
        Claim(
            f"inspect names the op and line where the first inf/NaN is made in all {n} cases",
            "an origin is an equation whose output holds an inf or NaN while its inputs hold none",
            f"right op and line in {counts['inspect']['line']}/{n}"
            + (f"; missed: {', '.join(missed)}" if missed else ""),
            not missed,
        )
    )

    # 4. the others, measured on the same cases
    others = {t: counts[t]["line"] for t in TOOLS[1:]}
    result.append(
        Claim(
            "on the same jitted cases, how often each other tool names the right op and line",
            "the flags check a jitted function's outputs, then re-run it op by op and name the "
            "first primitive making a NaN (inf), with no user line for one of a backward pass; "
            "checkify checks NaN and division by zero, in discarded branches too",
            "; ".join(
                f"{t}: {counts[t]['line']}/{n} op and line, {counts[t]['op']} op only, "
                f"{counts[t]['other']} another op, {counts[t]['nothing']} nothing, "
                f"{counts[t]['false alarm']} false alarms"
                for t in TOOLS[1:]
            ),
            all(counts["inspect"]["line"] >= v for v in others.values()),
        )
    )

    # 5. a discarded NaN is told apart from one that reaches the output
    discarded = [k for k, e in cases.items() if e["expected"]["finite_output"]]
    right = all(
        not any(o["reaches_output"] for o in cases[k]["tools"]["inspect"]["origins"])
        and not cases[k]["output_nonfinite"]
        and cases[k]["tools"]["inspect"]["origins"]
        for k in discarded
    ) and all(cases[k]["tools"]["inspect"]["alarm"] for k, e in cases.items() if k not in discarded)
    result.append(
        Claim(
            "inspect tells a discarded NaN (jax#9159, vmap of cond) from one reaching the output",
            "vmap turns cond into select: both branches run, the NaN branch is not selected",
            "; ".join(
                f"{k}: {len(cases[k]['tools']['inspect']['origins'])} origins, reaching the output:"
                f" {sum(o['reaches_output'] for o in cases[k]['tools']['inspect']['origins'])}; "
                + "; ".join(_said(cases[k], t) for t in TOOLS[1:])
                for k in discarded
            ),
            bool(discarded) and right,
        )
    )

    # 6. inside a scan: the iteration
    sc = cases["scan"]
    its = [o["iteration"] for o in sc["tools"]["inspect"]["origins"] if o["kind"] == "nan"]
    result.append(
        Claim(
            "a NaN made inside lax.scan: inspect gives its step (jax#5696)",
            "log(-1) at the third element: iteration [2]",
            f"inspect: iteration {its[0] if its else None}; " + _said(sc, "jax_debug_nans"),
            bool(its) and its[0] == [2],
        )
    )

    # 7. one compiled run, no re-run
    runs = {t: [int(e["tools"][t]["python_runs"]) for e in cases.values()] for t in TOOLS}
    same = all(e["tools"]["inspect"]["outputs_equal_plain_call"] for e in cases.values())
    result.append(
        Claim(
            "inspect runs each function once: one trace, one compiled call, no re-run",
            "it evaluates the jaxpr equation by equation inside one jit, recording as it goes",
            f"Python runs per case: inspect {runs['inspect']}, jax_debug_nans "
            f"{runs['jax_debug_nans']} (a trace, then the op-by-op re-run when it sees a NaN); "
            f"inspect's outputs equal the plain jitted call's: {same}",
            all(r == 1 for r in runs["inspect"]) and same,
        )
    )
    return result


# -- figure ------------------------------------------------------------------------------------


def _cell_text(finding: dict, kind: str) -> str:
    if kind in ("nothing", "silent"):
        return "no error"
    op = finding.get("primitive") or "?"
    line = finding.get("line")
    return f"{op}, line {line}" if line is not None else f"{op}, no line"


def _panel_table(ax, numbers: dict) -> None:
    cases = numbers["cases"]
    names = list(cases)
    for i, name in enumerate(names):
        e = cases[name]
        for j, tool in enumerate(TOOLS):
            f = e["tools"][tool]
            kind = outcome(f, e["expected"])
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=OUTCOMES[kind][1], ec="white", lw=2))
            text = _cell_text(f, kind)
            if tool == "inspect" and f["primitive"] and not f["alarm"]:
                text += "\n(discarded)"
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8.5)
    want = [
        f"{e['issue'] or 'this study'}: {'/'.join(e['expected']['ops'][:2])}, line "
        f"{'/'.join(str(v) for v in e['expected']['lines'])}"
        for e in cases.values()
    ]
    ax.set_xlim(0, len(TOOLS))
    ax.set_ylim(len(names), 0)
    ax.set_xticks(np.arange(len(TOOLS)) + 0.5, TOOLS, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(
        np.arange(len(names)) + 0.5,
        [f"{cases[k]['title']}\n{w}" for k, w in zip(names, want, strict=True)],
        fontsize=7.5,
    )
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for _, c in OUTCOMES.values()]
    ax.legend(
        handles,
        [label for label, _ in OUTCOMES.values()],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.01),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(
        "each tool on the same jitted function and inputs (row: case, expected op and line)",
        fontsize=10,
        pad=22,
    )


def _panel_program(ax, numbers: dict, name: str, title: str) -> None:
    entry = numbers["cases"][name]
    p = entry["program"]
    rms = np.asarray(p["rms"], float)
    big = np.asarray(p["max_abs"], float)
    x = np.arange(rms.size)
    direction = np.asarray(p["direction"])
    colours = {"forward": "#1f77b4", "backward": "#ff7f0e"}
    for d, c in colours.items():
        m = direction == d
        if m.any():
            ax.semilogy(
                x[m],
                np.where(big[m] > 0, big[m], np.nan),
                "^",
                color=c,
                ms=6,
                alpha=0.45,
                label=f"max |x| ({d})",
            )
            ax.semilogy(
                x[m], np.where(rms[m] > 0, rms[m], np.nan), "o", color=c, ms=4, label=f"RMS ({d})"
            )
    shown = np.r_[rms[rms > 0], big[big > 0]]
    shown = shown[np.isfinite(shown)]
    lo, hi = float(shown.min()) / 30, float(shown.max()) * 30
    for dtype in sorted(set(p["dtype"])):
        top = float(jnp.finfo(dtype).max)
        if top < hi * 1e6:  # the limits of a dtype far above every value would flatten the plot
            hi = max(hi, top * 30)
            ax.axhline(top, ls="--", color="black", lw=0.9)
            ax.text(x[0], top, f" {dtype} max", ha="left", va="bottom", fontsize=8)
    for kind, marker, c in (("inf", "x", "#d62728"), ("nan", "+", "#9467bd")):
        held = np.flatnonzero(np.asarray(p[kind]) > 0)
        if held.size:
            ax.plot(
                held,
                np.full(held.size, hi / 3),
                marker,
                color=c,
                ms=8,
                mew=2,
                label=f"holds {kind}",
                ls="none",
            )
    ax.set_ylim(lo, hi)
    row_of = {n: i for i, n in enumerate(p["node"]) if n >= 0}
    kind_colours = {"inf": "#d62728", "nan": "#9467bd"}
    for o in entry["tools"]["inspect"]["origins"]:
        if o["kind"] not in kind_colours or o["node"] not in row_of:
            continue
        i = row_of[o["node"]]
        c = kind_colours[o["kind"]]
        ax.axvline(i, color=c, lw=1.5, alpha=0.7)
        ax.annotate(
            f"{o['kind']} from {o['primitive']} ({o['direction']}), line {o['line']}:  {o['text']}",
            (i, 0.9),
            xycoords=("data", "axes fraction"),
            rotation=90,
            ha="right",
            va="top",
            fontsize=7.5,
            color=c,
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )
    labels = [
        pr if not s else f"{pr} [{s.split('/')[-1]}]"
        for pr, s in zip(p["primitive"], p["scope"], strict=True)
    ]
    ax.set_xticks(x, labels, rotation=90, fontsize=6.5)
    ax.set_xlim(-0.7, x[-1] + 0.7)
    ax.set_ylabel("|x|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best", ncol=2)


def figure(numbers: dict, out_dir: pathlib.Path) -> pathlib.Path:
    """``out_dir/inspect.png``: the cases x tools table; the two study cases in program order."""
    path = pathlib.Path(out_dir) / f"{NAME}.png"
    fig = plt.figure(figsize=(16, 14.5))
    top = fig.add_gridspec(1, 1, left=0.25, right=0.99, top=0.91, bottom=0.53)
    _panel_table(fig.add_subplot(top[0, 0]), numbers)
    bottom = fig.add_gridspec(1, 2, left=0.05, right=0.99, top=0.45, bottom=0.13, wspace=0.12)
    _panel_program(
        fig.add_subplot(bottom[0, 0]),
        numbers,
        "attention",
        f"float16 attention (max logit {float(numbers['cases']['attention']['max_logit']):.1f} > "
        f"log(65504) = 11.09): each value in program order [scope]",
    )
    _panel_program(
        fig.add_subplot(bottom[0, 1]),
        numbers,
        "normalise",
        "grad of the where-guarded normalisation at a zero row: forward, then backward",
    )
    fig.suptitle(
        "Where does the inf or NaN come from? stabkit.inspect against jax_debug_nans, "
        "jax_debug_infs and checkify(float_checks)",
        fontsize=13,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(out: pathlib.Path, *, quick: bool = False) -> list[Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    save_json(out / f"{NAME}.json", numbers)
    return claims(numbers)


if __name__ == "__main__":
    run_alone(run, TITLE)
