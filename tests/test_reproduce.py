"""The study registry behind `stabkit reproduce`, on toy studies in a temporary folder."""

import importlib
import json
import math
import textwrap

import numpy as np
import pytest

import stabkit
from stabkit import cli
from stabkit.reproduce import Claim, experiment_dir, find_experiments, reproduce, save_json

GOOD = """
NAME = "good"
TITLE = "A study that passes"
ORDER = 2
from stabkit.reproduce import Claim
def run(out, *, quick=False):
    (out / "good.png").write_bytes(b"png")
    (out / "good_panels").mkdir(exist_ok=True)
    (out / "good_panels" / "a.png").write_bytes(b"png")
    return [Claim("one plus one", "2", str(1 + 1), True)]
"""
BAD = """
NAME = "bad"
TITLE = "A study that raises"
ORDER = 1
def run(out, *, quick=False):
    raise RuntimeError("boom")
"""
FAILING = """
NAME = "failing"
TITLE = "A study with a failing claim"
from stabkit.reproduce import Claim
def run(out, *, quick=False):
    return [Claim("pipes | are escaped", "x", "quick" if quick else "full", False)]
"""


@pytest.fixture
def studies(tmp_path):
    d = tmp_path / "experiments"
    d.mkdir()
    for name, text in (("good", GOOD), ("bad", BAD), ("failing", FAILING)):
        (d / f"{name}.py").write_text(textwrap.dedent(text))
    (d / "_helper.py").write_text("raise RuntimeError('never imported')")
    (d / "not_a_study.py").write_text("X = 1")
    return d


def test_find_orders_by_order_then_name(studies):
    assert list(find_experiments(studies)) == ["bad", "good", "failing"]


def test_report_lists_every_claim_and_error(studies, tmp_path):
    out = tmp_path / "out"
    results = reproduce(out, directory=studies, echo=False)
    by_name = {r.name: r for r in results}
    assert by_name["good"].passed
    assert by_name["good"].figures == ("good.png", "good_panels/a.png")
    assert by_name["bad"].figures == () and by_name["failing"].figures == ()
    assert not by_name["bad"].passed and "boom" in by_name["bad"].error
    assert not by_name["failing"].passed
    report = (out / "report.md").read_text()
    assert "1/2 claims PASS in 3 studies" in report
    assert "| one plus one | 2 | 2 | PASS |" in report
    assert "pipes \\| are escaped" in report and "| FAIL |" in report
    assert "RuntimeError: boom" in report
    assert "![good](good.png)" in report


def test_only_and_quick(studies, tmp_path):
    results = reproduce(tmp_path / "o", only=["failing"], quick=True, directory=studies, echo=False)
    assert [r.name for r in results] == ["failing"]
    assert results[0].claims[0].measured == "quick"
    with pytest.raises(ValueError, match=r"unknown experiment\(s\) \['nope'\]; valid: "):
        reproduce(tmp_path / "o", only=["nope"], directory=studies, echo=False)


def test_duplicate_names_are_an_error(studies):
    (studies / "again.py").write_text(textwrap.dedent(GOOD))
    with pytest.raises(ValueError, match="duplicate experiment NAME"):
        find_experiments(studies)


def test_stabkit_reproduce_is_the_module():
    import stabkit.reproduce as registry

    assert stabkit.reproduce is registry and callable(registry.reproduce)


def test_claim_validates():
    with pytest.raises(TypeError, match=r"Claim\.theory"):
        Claim("c", 2, "m", True)
    assert Claim("c", "t", "m", np.bool_(True)).passed is True


def test_save_json_writes_non_finite_as_strings(tmp_path):
    path = save_json(
        tmp_path / "a" / "x.json",
        {"inf": math.inf, "arr": np.array([1.0, -np.inf, np.nan]), "n": np.int32(3), "c": None},
    )
    data = json.loads(path.read_text())
    assert data == {"inf": "inf", "arr": [1.0, "-inf", "nan"], "n": 3, "c": None}


def test_the_real_studies_are_found():
    names = list(find_experiments(experiment_dir()))
    assert {"softmax", "precision", "deep_linear", "activations"} <= set(names)


def test_cli_list_and_exit_status(studies, tmp_path, monkeypatch, capsys):
    registry = importlib.import_module("stabkit.reproduce")
    monkeypatch.setattr(registry, "experiment_dir", lambda: studies)
    assert cli.main(["reproduce", "--list"]) == 0
    assert "good" in capsys.readouterr().out
    assert cli.main(["reproduce", "--out", str(tmp_path / "a"), "--only", "good"]) == 0
    assert cli.main(["reproduce", "--out", str(tmp_path / "b"), "--only", "good,bad"]) == 1


def test_run_alone_prints_each_claim(tmp_path, capsys):
    from stabkit.reproduce import run_alone

    def run(out, *, quick):
        assert out.is_dir() and quick
        return [Claim("a holds", "t", "m1", True), Claim("b holds", "t", "m2", False)]

    claims = run_alone(run, "a study", ["--out", str(tmp_path / "o"), "--quick"])
    lines = capsys.readouterr().out.splitlines()
    assert [c.passed for c in claims] == [True, False]
    assert lines[:2] == ["PASS  a holds: m1", "FAIL  b holds: m2"]
