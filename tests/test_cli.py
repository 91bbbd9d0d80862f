"""The command line's error contract: every user error is one line and exit status 2.

``stabkit <command>: error: <message>`` on stderr, nothing else, for argparse's own errors and for
the ValueError/TypeError/OSError of stabkit's validation underneath; a traceback and a line
saying it is a bug (exit status 1) for anything else; Ctrl-C is exit status 130. Every case here
fails before anything compiles (an autouse fixture turns a compilation into a test failure), so
the whole file runs in seconds.
"""

import importlib
import pathlib
import subprocess
import sys

import pytest

from stabkit import cli
from stabkit.activations import activation_names
from stabkit.init import initializer_names
from stabkit.losses import loss_names
from stabkit.sweeps.spec import SweepSpec


@pytest.fixture(autouse=True)
def _no_compilation(monkeypatch):
    """A case that reaches the sweep kernel would compile: make that a bug (exit 1), not slow."""
    sweep_module = importlib.import_module("stabkit.sweeps.driver")

    def kernel(*args, **kwargs):
        raise AssertionError("the sweep kernel was built: the error came too late")

    monkeypatch.setattr(sweep_module, "_kernel", kernel)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A scratch working directory with a file, a foreign non-empty folder and an empty one."""
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("\\documentclass{article}")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_error(capsys, argv, command, *needles):
    """Run ``stabkit ARGV`` in-process; assert exit 2 and one stderr line naming the needles."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    prefix = f"stabkit {command}: error: " if command else "stabkit: error: "
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


S = ["sweep", "--quiet"]

# (argv, command, needles): one case per class of user error.
CASES = {
    # argparse's own errors, on every subcommand
    "no command": ([], "", "COMMAND"),
    "unknown command": (["nope"], "", "'nope'"),
    "missing required option": ([*S], "sweep", "--depth"),
    "unknown option": ([*S, "--depth", "2", "--bogus"], "sweep", "--bogus"),
    "stray positional": (["probe", "extra"], "probe", "extra"),
    "flag given a value": (["probe", "--json=1"], "probe", "--json"),
    "option without its value": (["reproduce", "--out"], "reproduce", "--out"),
    "missing positional": (["plot"], "plot", "path"),
    "unknown choice": (["plot", "x.zarr", "--kind", "nope"], "plot", "--kind", "nope"),
    "two exclusive options": (
        [*S, "--depth", "2", "--seed", "1", "--seeds", "3"],
        "sweep",
        "--seed",
        "--seeds",
    ),
    # numbers that are not numbers, or out of range
    "not an int": ([*S, "--depth", "2", "--batch", "x"], "sweep", "--batch", "'x'"),
    "not a float": ([*S, "--depth", "2", "--threshold", "x"], "sweep", "--threshold", "'x'"),
    "zero count": (["plot", "x.zarr", "--max-figures", "0"], "plot", "--max-figures", "0"),
    "negative count": (["plot", "x.zarr", "--max-figures", "-1"], "plot", "--max-figures", "-1"),
    "zero seeds": ([*S, "--depth", "2", "--seeds", "0"], "sweep", "--seeds", "0"),
    "zero chunk size": ([*S, "--depth", "2", "--chunk-size", "0"], "sweep", "--chunk-size"),
    "negative batch": ([*S, "--depth", "2", "--batch", "-5"], "sweep", "--batch", "-5"),
    "NaN": ([*S, "--depth", "2", "--scale", "nan"], "sweep", "--scale", "nan"),
    "inf": ([*S, "--depth", "2", "--threshold", "inf"], "sweep", "--threshold", "inf"),
    "negative threshold": ([*S, "--depth", "2", "--threshold", "-1"], "sweep", "--threshold"),
    "bytes not a size": ([*S, "--depth", "2", "--memory-budget", "xG"], "sweep", "--memory-budget"),
    "infinite bytes": ([*S, "--depth", "2", "--memory-budget", "infG"], "sweep", "infG"),
    "negative bytes": ([*S, "--depth", "2", "--memory-budget", "-1G"], "sweep", "-1G"),
    # ranges
    "range syntax": ([*S, "--depth", "1:2:3:4"], "sweep", "--depth", "1:2:3:4"),
    "zero step": ([*S, "--depth", "1:4:0"], "sweep", "--depth", "1:4:0", "step"),
    "empty range": ([*S, "--depth", "5:1"], "sweep", "--depth", "no values"),
    "float range without count": ([*S, "--depth", "2", "--scale", "0:1"], "sweep", "--scale"),
    "float range of zero step": ([*S, "--depth", "2", "--scale", "1:1:3"], "sweep", "zero step"),
    "float range of count 0": ([*S, "--depth", "2", "--scale", "0:1:0"], "sweep", "count"),
    "huge int range": (
        [*S, "--depth", "1:10000000000"],
        "sweep",
        "--depth",
        "10,000,000,000",
        f"{cli.MAX_AXIS_VALUES:,}",
    ),
    "huge float range": (
        [*S, "--depth", "2", "--scale", "0:1:100000000"],
        "sweep",
        "--scale",
        "100,000,000",
        f"{cli.MAX_AXIS_VALUES:,}",
    ),
    "huge list": ([*S, "--depth", ",".join(["1"] * 50_000)], "sweep", "--depth", "50,000"),
    "huge seed count": ([*S, "--depth", "2", "--seeds", "10000000000"], "sweep", "--seeds"),
    "empty list": ([*S, "--depth", ""], "sweep", "--depth", "''"),
    "only commas": ([*S, "--depth", ","], "sweep", "--depth", "','"),
    # values starting with '-' reach the option and its validation
    "negative range": ([*S, "--depth", "-3:2"], "sweep", "depth", "-3"),
    "negative float range": (
        [*S, "--depth", "2", "--bias-std", "-1:1:3"],
        "sweep",
        "bias_std",
        "-1",
    ),
    "abbreviated option, negative value": ([*S, "--dep", "-3:2"], "sweep", "depth", "-3"),
    # the library's own checks (SweepSpec), reported in one line
    "value out of the spec's range": ([*S, "--depth", "5000"], "sweep", "depth", "5000"),
    "zero width": ([*S, "--depth", "2", "--width", "0"], "sweep", "width", "0"),
    "repeated value": ([*S, "--depth", "2,2"], "sweep", "depth", "repeats 2"),
    "seed out of range": ([*S, "--depth", "2", "--seed", "2147483648"], "sweep", "seed"),
    "huge batch": ([*S, "--depth", "2", "--batch", "10000000"], "sweep", "batch", "10000000"),
    # combinations
    "resume without out": ([*S, "--depth", "2", "--resume"], "sweep", "--resume", "--out"),
    "empty out with resume": ([*S, "--depth", "2", "--out", "", "--resume"], "sweep", "--out"),
    "memory budget beyond memory": (
        [*S, "--depth", "2", "--memory-budget", "100000G"],
        "sweep",
        "--memory-budget",
    ),
    "memory budget below one config": (
        [*S, "--depth", "2", "--memory-budget", "10"],
        "sweep",
        "--memory-budget=10 B",
    ),
    "chunk beyond the budget": (
        [*S, "--depth", "2", "--chunk-size", "100000000"],
        "sweep",
        "--chunk-size=100000000",
        "--memory-budget",
    ),
    # the file system
    "out is a file": ([*S, "--depth", "2", "--out", "afile"], "sweep", "afile"),
    "out is a foreign folder": (
        [*S, "--depth", "2", "--out", "thesis", "--resume"],
        "sweep",
        "thesis",
    ),
    "store missing": (["plot", "missing.zarr"], "plot", "missing.zarr"),
    "store is a file": (["plot", "afile"], "plot", "afile"),
    "store is an empty folder": (["plot", "empty"], "plot", "empty"),
    "empty store path": (["plot", ""], "plot", "path", "''"),
    "plot into a file": (["plot", "missing.zarr", "--out", "afile"], "plot", "--out", "afile"),
    "plot into a foreign folder": (["plot", "x.zarr", "--out", "thesis"], "plot", "thesis"),
    "reproduce into a file": (
        ["reproduce", "--out", "afile", "--only", "softmax"],
        "reproduce",
        "afile",
    ),
    "reproduce into a foreign folder": (["reproduce", "--out", "thesis"], "reproduce", "thesis"),
    "reproduce into ''": (["reproduce", "--out", ""], "reproduce", "--out", "''"),
    # names
    "unknown study": (["reproduce", "--only", "nope", "--out", "o"], "reproduce", "nope"),
    "no study": (["reproduce", "--only", ",", "--out", "o"], "reproduce", "--only", "softmax"),
    "empty name list": ([*S, "--depth", "2", "--activation", ""], "sweep", "--activation"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_2(case, place, capsys):
    argv, command, *needles = CASES[case]
    _one_error(capsys, argv, command, *needles)
    # Nothing was written: not in the foreign folder, not a store, not a report.
    assert sorted(p.name for p in place.iterdir()) == ["afile", "empty", "thesis"]
    assert [p.name for p in (place / "thesis").iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize(
    ("option", "names"),
    [
        ("--activation", activation_names()),
        ("--init", initializer_names()),
        ("--loss", loss_names()),
        ("--dtype", ("float16", "bfloat16", "float32", "float64")),
        ("--input", ("normal", "uniform", "ones")),
    ],
)
def test_unknown_name_lists_what_the_library_accepts(option, names, capsys):
    line = _one_error(capsys, [*S, "--depth", "2", option, "nope"], "sweep", option, "'nope'")
    assert all(name in line for name in names), line
    # the CLI offers what the spec validates, from the spec
    assert cli._valid_names(option[2:]) == SweepSpec.choices(option[2:]) == tuple(names)


def test_float8_is_refused_with_the_valid_dtypes(capsys):
    _one_error(capsys, [*S, "--depth", "2", "--dtype", "float8_e4m3fn"], "sweep", "float8_e4m3fn")


def test_ranges():
    assert cli._ints("1:4") == [1, 2, 3, 4] and cli._ints("4:16:4") == [4, 8, 12, 16]
    assert cli._ints("5:1:-2") == [5, 3, 1]  # a decreasing range includes its end too
    assert cli._ints(" 2, 8 ,") == [2, 8]
    assert cli._floats("0.1:0.3:3")[-1] == 0.3  # both ends exactly as typed
    assert cli._floats("2:2:1") == [2.0]
    assert cli._floats("-1e308:1e308:3") == [-1e308, 0.0, 1e308]  # hi - lo overflows
    assert len(cli._ints(f"1:{cli.MAX_AXIS_VALUES}")) == cli.MAX_AXIS_VALUES
    assert cli._bytes("1.5K") == 1536 and cli._bytes("1T") == 2**40
    for text in ("1:x", "1:4:0", "5:1", f"0:{cli.MAX_AXIS_VALUES}", ""):
        with pytest.raises(cli.argparse.ArgumentTypeError):
            cli._ints(text)
    for text in ("0:1:1", "nan", "0:inf:3", "1e400", f"0:1:{cli.MAX_AXIS_VALUES + 1}"):
        with pytest.raises(cli.argparse.ArgumentTypeError):
            cli._floats(text)


def test_dash_values_are_glued_only_to_options_that_take_one():
    commands = cli._commands(cli.build_parser())
    glue = lambda *argv: cli._glue_dash_values(list(argv), commands)
    assert glue("sweep", "--depth", "-3:2") == ["sweep", "--depth=-3:2"]
    assert glue("sweep", "--dep", "-3:2") == ["sweep", "--dep=-3:2"]
    assert glue("sweep", "--depth", "2", "--quiet", "-3") == [
        "sweep",
        "--depth",
        "2",
        "--quiet",
        "-3",
    ]
    assert glue("sweep", "--out", "--resume") == ["sweep", "--out", "--resume"]  # a missing value
    assert glue("sweep", "--depth", "-h") == ["sweep", "--depth", "-h"]
    assert glue("sweep", "--", "--depth", "-3") == ["sweep", "--", "--depth", "-3"]


def _boom(args):
    raise RuntimeError("boom")


def _foreign_value_error(args):
    return int("not a number")  # a ValueError raised outside stabkit's checks: a bug


@pytest.mark.parametrize("fail", [_boom, _foreign_value_error])
def test_a_bug_prints_the_traceback_and_says_so(fail, monkeypatch, capsys):
    report = importlib.import_module("stabkit.precision.report")
    monkeypatch.setattr(report, "_cli_probe", fail)
    assert cli.main(["probe"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("stabkit probe: internal error (")
    assert "this is a bug in stabkit; please report it" in err.splitlines()[-1]


def test_only_stabkit_raise_statements_are_user_errors():
    import stabkit as sk

    with pytest.raises(ValueError) as spec_error:  # a check: a multi-line raise in _sweep_spec
        sk.SweepSpec(depth=[0])
    assert cli._is_user_error(spec_error.value)
    with pytest.raises(TypeError) as slip:  # not a check: `text[-1:]` on an int, inside cli.py
        cli._bytes(5)
    assert not cli._is_user_error(slip.value)
    assert cli._is_user_error(FileNotFoundError(2, "No such file", "x"))  # never raised: no frame
    assert not cli._is_user_error(ValueError("never raised"))
    assert not cli._is_user_error(KeyError("x"))


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        importlib.import_module("stabkit.precision.report"), "_cli_probe", interrupted
    )
    assert cli.main(["probe"]) == 130
    assert capsys.readouterr().err.splitlines() == ["stabkit probe: interrupted"]


def test_parse_errors_exit_2_through_argparse_too(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["sweep", "--depth", "1:x"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "stabkit sweep: error: argument --depth: expected a:b, a:b:step or a,b,c of ints, got "
        "'1:x' ('x' is not an int)"
    ]


def test_help_still_shows_usage(capsys):
    assert cli.main(["sweep", "--help"]) == 0
    assert "usage: stabkit sweep" in capsys.readouterr().out


def test_run_alone_errors_are_one_line(tmp_path, capsys):
    from stabkit.reproduce import run_alone

    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        run_alone(lambda out, quick: [], "a study", ["--out", str(tmp_path)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "error: --out=" in lines[0] and "did not write" in lines[0]


_SCRIPTS = pathlib.Path(sys.executable).parent


@pytest.mark.parametrize(
    ("argv", "command", "needle"),
    [
        ([str(_SCRIPTS / "stabkit"), "sweep", "--depth", "-3:2", "--quiet"], "sweep", "-3"),
        ([sys.executable, "-m", "stabkit", "plot", "x.zarr", "--max-figures", "-1"], "plot", "-1"),
    ],
)
def test_real_process_exit_status(argv, command, needle, tmp_path):
    p = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stabkit {command}: error: "), p.stderr
    assert needle in lines[0] and p.stdout == ""
    assert list(tmp_path.iterdir()) == []
