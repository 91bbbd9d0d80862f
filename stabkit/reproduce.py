"""The registry behind ``stabkit reproduce``: run every study, collect its claims, write a report.

A study is a flat script in ``experiments/`` that imports only public ``stabkit`` names and defines

* ``NAME`` (str): a short identifier, also the stem of its output files;
* ``TITLE`` (str): one line for the report;
* ``ORDER`` (int, optional): position in the report (lower first, default 100);
* ``run(out: pathlib.Path, *, quick: bool) -> list[Claim]``: writes ``out/NAME*.png`` figures (the
  report shows every PNG the study writes under ``out``, subfolders included) and ``out/NAME.json``
  numbers (use :func:`save_json`), and returns one :class:`Claim` per statement it checks against
  theory.

Every study is written as three steps that ``run`` calls in turn: ``measure(quick=...)`` computes
the numbers, ``claims(numbers)`` turns them into :class:`Claim` objects and computes nothing new
(it also accepts the numbers read back from ``NAME.json``, so a claim is tested on stored numbers:
``tests/test_study_claims.py`` spoils one number at a time and checks that the claim fails), and
``figure(numbers, out)`` draws them.

``reproduce`` runs them in order and writes ``out/report.md``: per study its figures and a table of
claim, theory, measurement and PASS/FAIL. A study that raises is reported as a FAIL with the error,
and the others still run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import platform
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "Claim",
    "StudyResult",
    "experiment_dir",
    "find_experiments",
    "reproduce",
    "run_alone",
    "save_json",
]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checked statement: what is claimed, what theory predicts, what was measured, verdict."""

    claim: str
    theory: str
    measured: str
    passed: bool

    def __post_init__(self):
        for field in ("claim", "theory", "measured"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"Claim.{field} must be a str, got {getattr(self, field)!r}")
        object.__setattr__(self, "passed", bool(self.passed))


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """The outcome of one study: its claims, the files it wrote, its run time and any error."""

    name: str
    title: str
    claims: tuple[Claim, ...]
    figures: tuple[str, ...]
    seconds: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.claims)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "_asdict"):
        return _jsonable(obj._asdict())
    if isinstance(obj, (np.ndarray, np.generic)) or type(obj).__module__.startswith("jax"):
        arr = np.asarray(obj)
        if arr.dtype.kind in "fc" or arr.dtype.kind == "V" or "float" in str(arr.dtype):
            arr = arr.astype(np.float64)
        return _jsonable(arr.tolist())
    if isinstance(obj, float):
        # JSON has no inf/NaN: write them as strings a reader can map back with float().
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, pathlib.Path):
        return str(obj)
    return str(obj)


def save_json(path: str | pathlib.Path, obj: Any) -> pathlib.Path:
    """Write ``obj`` as indented JSON; arrays become lists and inf/NaN become "inf"/"-inf"/"nan".

    Examples:
        >>> import tempfile, pathlib
        >>> p = save_json(pathlib.Path(tempfile.mkdtemp()) / "x.json", {"a": float("inf")})
        >>> p.read_text()
        '{\\n  "a": "inf"\\n}'
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False))
    return path


def _output_dir(
    out: Any, name: str, marker: str, legacy: Any = None, *, create: bool = True
) -> pathlib.Path:
    """``out`` as a directory stabkit may write into, created with ``marker`` written first.

    stabkit never overwrites a file it did not write: ``out`` must be new, empty, or hold
    ``marker`` (left there by an earlier run), or satisfy ``legacy`` (a predicate recognising the
    output of a stabkit older than the marker). Anything else is refused untouched. The plots
    (:mod:`stabkit.sweeps.plots`) use it too.

    Raises:
        TypeError: ``out`` is not a path.
        ValueError: ``out`` is empty ("" would be the current directory).
        NotADirectoryError: ``out`` is an existing file.
        FileExistsError: ``out`` is a non-empty directory stabkit did not write.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {type(out).__name__} {out!r}")
    if not str(os.fspath(out)).strip():
        raise ValueError(f"{name} must be a directory path, got {os.fspath(out)!r}")
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name}={str(path)!r} exists and is not a directory")
    tag = path / marker
    if path.is_dir() and not tag.is_file() and any(path.iterdir()):
        if legacy is None or not legacy(path):
            raise FileExistsError(
                f"{name}={str(path)!r} is a non-empty directory that stabkit did not write (no "
                f"{marker}); give a new or empty directory"
            )
    if create:
        path.mkdir(parents=True, exist_ok=True)
        if not tag.is_file():
            tag.write_text(json.dumps({"written_by": "stabkit", "marker": marker}) + "\n")
    return path


_REPORT_MARKER = "stabkit-reproduce.json"


def _old_report(path: pathlib.Path) -> bool:
    """An output folder of a stabkit without the marker: its report.md says so."""
    try:
        with open(path / "report.md", encoding="utf-8") as f:
            return f.read(64).startswith("# stabkit reproduce")
    except OSError:
        return False


def experiment_dir() -> pathlib.Path:
    """Where the studies live: the checkout's ``experiments/`` or the copy inside the wheel."""
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here.parent / "experiments", here / "_experiments"):
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    raise FileNotFoundError(
        f"no experiments found next to {here} (looked in ../experiments and _experiments)"
    )


def _load(path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"stabkit_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def find_experiments(directory: str | pathlib.Path | None = None) -> dict[str, ModuleType]:
    """All studies in ``directory`` (default :func:`experiment_dir`), by NAME, in report order."""
    directory = experiment_dir() if directory is None else pathlib.Path(directory)
    found = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _load(path)
        if not (hasattr(module, "NAME") and callable(getattr(module, "run", None))):
            continue
        found.append((getattr(module, "ORDER", 100), module.NAME, module))
    found.sort(key=lambda t: (t[0], t[1]))
    names = [name for _, name, _ in found]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate experiment NAME(s) in {directory}: {sorted(dupes)}")
    return {name: module for _, name, module in found}


def run_alone(run: Any, title: str, argv: Sequence[str] | None = None) -> list[Claim]:
    """Run one study script by itself: ``python experiments/NAME.py [--out DIR] [--quick]``.

    The same as ``stabkit reproduce --only NAME`` without the report: prints a PASS/FAIL line per
    claim and the time taken, and returns the claims. A bad argument, or an ``--out`` that
    ``stabkit reproduce`` would refuse, is one line on stderr and exit status 2.
    """
    from stabkit.cli import _one_line, _Parser, _path

    parser = _Parser(description=title)
    parser.add_argument("--out", type=_path, default="stabkit-results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = _output_dir(args.out, "--out", _REPORT_MARKER, _old_report)
    except (OSError, ValueError) as err:
        parser.error(_one_line(err))
    start = time.perf_counter()
    claims = list(run(out, quick=args.quick))
    for c in claims:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.claim}: {c.measured}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return claims


def _environment() -> dict[str, str]:
    import jax

    return {
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "jax": jax.__version__,
        "devices": ", ".join(str(d) for d in jax.devices()),
    }


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write_report(out: pathlib.Path, results: Sequence[StudyResult], quick: bool) -> pathlib.Path:
    env = _environment()
    n_claims = sum(len(r.claims) for r in results)
    n_pass = sum(c.passed for r in results for c in r.claims)
    lines = [
        "# stabkit reproduce",
        "",
        f"{n_pass}/{n_claims} claims PASS in {len(results)} studies"
        + (" (quick mode)" if quick else "")
        + ".",
        "",
        "Environment: " + "; ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
    ]
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        lines += [f"## {r.title} (`{r.name}`, {verdict}, {r.seconds:.1f} s)", ""]
        lines += [f"![{r.name}]({fig})" for fig in r.figures]
        if r.figures:
            lines.append("")
        if r.error:
            lines += ["**The study raised an error:**", "", "```", r.error.rstrip(), "```", ""]
        if r.claims:
            lines += ["| claim | theory | measured | verdict |", "|---|---|---|---|"]
            lines += [
                f"| {_escape(c.claim)} | {_escape(c.theory)} | {_escape(c.measured)} | "
                f"{'PASS' if c.passed else 'FAIL'} |"
                for c in r.claims
            ]
            lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def reproduce(
    out: str | pathlib.Path = "stabkit-results",
    *,
    only: Iterable[str] | None = None,
    quick: bool = False,
    directory: str | pathlib.Path | None = None,
    echo: bool = True,
) -> list[StudyResult]:
    """Run the studies (all, or those named in ``only``) and write ``out/report.md``.

    Args:
        out: output directory; created if needed.
        only: names of the studies to run; ValueError lists the valid names for an unknown one.
        quick: ask each study for its reduced version (smaller grids, fewer repeats).
        directory: where to look for studies (default :func:`experiment_dir`).
        echo: print one line per study and per claim as they finish.

    Returns:
        One :class:`StudyResult` per study, in report order.

    Raises:
        ValueError: an unknown or empty ``only``; an empty ``out``.
        TypeError: ``only`` is a string (give a list) or holds a non-string; ``quick`` or
            ``echo`` is not a bool.
        NotADirectoryError: ``out`` is an existing file.
        FileExistsError: ``out`` is a non-empty directory that is not an earlier ``reproduce``
            output (it holds no ``stabkit-reproduce.json`` and no stabkit ``report.md``): the
            report and the studies' files would overwrite what is there.
    """
    from stabkit._checks import strict_bool

    quick, echo = strict_bool(quick, "quick"), strict_bool(echo, "echo")
    _output_dir(out, "out", _REPORT_MARKER, _old_report, create=False)
    if isinstance(only, str):
        raise TypeError(f"only must be a list of study names, got the string {only!r}")
    studies = find_experiments(directory)
    if only is not None:
        only = list(only)
        bad = [n for n in only if not isinstance(n, str)]
        if bad:
            raise TypeError(f"only must hold study names (str), got {bad[0]!r}")
        if not only:
            raise ValueError(f"only is empty; give study names or None. valid: {sorted(studies)}")
        unknown = [n for n in only if n not in studies]
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; valid: {sorted(studies)}")
        studies = {n: m for n, m in studies.items() if n in only}
    out = _output_dir(out, "out", _REPORT_MARKER, _old_report)
    results = []
    claimed: set[pathlib.Path] = set()
    for name, module in studies.items():
        title = getattr(module, "TITLE", name)
        if echo:
            print(f"[{name}] {title} ...", flush=True)
        start, started_at = time.perf_counter(), time.time()
        error, claims = None, ()
        try:
            claims = tuple(module.run(out, quick=quick))
            for c in claims:
                if not isinstance(c, Claim):
                    raise TypeError(f"experiment {name} returned {c!r}, not a Claim")
        except Exception:  # a broken study is reported, and the others still run
            error = traceback.format_exc()
        seconds = time.perf_counter() - start
        # The study's figures: every PNG under out (subfolders included) that it wrote.
        written = {
            p for p in out.rglob("*.png") if p.stat().st_mtime >= started_at and p not in claimed
        }
        claimed |= written
        figures = tuple(sorted(p.relative_to(out).as_posix() for p in written))
        result = StudyResult(name, title, claims, figures, seconds, error)
        results.append(result)
        if echo:
            for c in claims:
                print(f"  {'PASS' if c.passed else 'FAIL'}  {c.claim}: {c.measured}", flush=True)
            if error:
                print(f"  FAIL  the study raised:\n{error}", flush=True)
            print(f"  ({seconds:.1f} s)", flush=True)
    report = _write_report(out, results, quick)
    if echo:
        n = sum(len(r.claims) for r in results)
        k = sum(c.passed for r in results for c in r.claims)
        print(f"{k}/{n} claims PASS; report: {report}", flush=True)
    return results
