"""The low_precision study's claims on hand-made numbers: all pass, each spoiler fails its own
claim only, and the claims are the same on the numbers read back from the study's JSON. (The
study itself is run by ``stabkit reproduce``; its training is four compilations of
``stabkit.train``, too slow for the test suite.)"""

import copy
import dataclasses
import json

import numpy as np
import pytest

import stabkit
from stabkit.reproduce import experiment_dir, find_experiments


@pytest.fixture(scope="module")
def study():
    return find_experiments(experiment_dir())["low_precision"]


def _numbers(study):
    """Numbers shaped like measure()'s, with the values of a real run (rounded)."""
    cfg = study.Config()
    seeds, records, layers = cfg.seeds, cfg.steps // cfg.log_every, cfg.depth + 1
    step = np.arange(records) * cfg.log_every
    initial = np.array([1.0, 1.1, 0.9])

    def case(final_over_initial, lost, ratio=4e-4):
        curve = initial[:, None] * np.exp(np.log(final_over_initial)[:, None] * step / step[-1])
        return {
            "loss": curve.tolist(),
            "final_loss": (initial * final_over_initial).tolist(),
            "lost": np.broadcast_to(lost, (seeds, records, layers)).tolist(),
            "update_ratio": np.full((seeds, records), ratio).tolist(),
        }

    pred = study._predicted_lost(cfg)
    f32 = np.array([0.31, 0.31, 0.13])
    cases = {
        study.F32: case(f32, 0.0),
        study.BF16: case(np.array([0.80, 0.77, 0.73]), np.array(pred) + 0.005),
        study.KAHAN: case(f32 * 1.04, np.array(pred) + 0.01),
        study.SR: case(f32 * 1.05, np.array(pred) + 0.01),
    }
    f8_records = cfg.f8_steps // cfg.log_every
    f8_step = np.arange(f8_records) * cfg.log_every
    f8_initial = np.array([9e-4, 1.4e-3, 7.5e-4])

    blocks = cfg.f8_depth

    def per_block(first, later):
        """(seeds, records, blocks): ``first`` at record 0, ``later`` after, every block."""
        a = np.full((3, f8_records, blocks), float(later))
        a[:, 0] = first
        return a.tolist()

    def f8_case(final, zero_first, zero_later, census=None):
        curve = f8_initial[:, None] * (final / f8_initial)[:, None] ** (f8_step / f8_step[-1])
        zero = np.repeat(np.asarray(zero_later, np.float64)[:, None], f8_records, axis=1)
        zero[:, 0] = zero_first
        g_first, g_later, o_first, o_later = census or (np.nan,) * 4
        overflow = np.asarray(per_block(o_first, o_later))
        if census:  # the deep blocks overflow at step 0, the first does not
            overflow[:, 0, 0] = 0.0
        return {
            "loss": curve.tolist(),
            "final_loss": final.tolist(),
            "grad_zero": zero.tolist(),
            "grad_underflow": per_block(g_first, g_later),
            "underflow": per_block(0.01, 0.01),
            "overflow_big": overflow.tolist(),
        }

    base = np.array([2.9e-6, 2.5e-6, 1.0e-6])
    first = [0.32, 0.15, 0.32]  # no amax history at step 0: delayed scaling is no scaling
    float8 = {
        study.F8_BASE: f8_case(base, [0.03, 0.026, 0.04], [0.1, 0.06, 0.09]),
        study.F8_NONE: f8_case(
            base * np.array([6.5, 5.9, 4.5]), first, [0.9, 0.89, 0.93], (0.6, 0.9, 0.3, 0.3)
        ),
        study.F8_DELAYED: f8_case(
            base * np.array([0.92, 0.93, 0.92]), first, [0.1, 0.06, 0.09], (0.6, 0.0, 0.3, 0.0)
        ),
    }
    return {
        "config": dataclasses.asdict(cfg),
        "step": step.tolist(),
        "cases": cases,
        "threshold": study._ulp_threshold(cfg.lr),
        "predicted_lost": pred,
        "float8_step": f8_step.tolist(),
        "float8": float8,
    }


def test_prediction_is_the_closed_form(study):
    cfg = study.Config()
    assert study._ulp_threshold(1e-4) == 2.0**-5  # half an ulp of 2**-5 is 2**-13 > 1e-4
    assert study._ulp_threshold(2.0**-14 * 1.01) == 2.0**-5
    assert study._ulp_threshold(2.0**-13 * 1.01) == 2.0**-4
    pred = study._predicted_lost(cfg)
    assert len(pred) == cfg.depth + 1
    # first layer: P(|N(0, 2/8)| >= 2**-5) of 256 weights, out of 256 weights + 32 biases
    np.testing.assert_allclose(pred[0], 0.9502 * 256 / 288, atol=2e-4)
    np.testing.assert_allclose(pred[1], 0.9005 * 1024 / 1056, atol=2e-4)  # erfc(2**-5 * 2**0.5 * 2)


def test_claims_pass_and_fail_when_spoiled(study, tmp_path):
    numbers = _numbers(study)
    claims = study.claims(numbers)
    assert claims and all(c.passed for c in claims), [c for c in claims if not c.passed]
    stored = json.loads(stabkit.save_json(tmp_path / "n.json", numbers).read_text())
    assert study.claims(stored) == claims
    assert len(study.SPOILERS) == len(claims)  # one per claim
    for spoil in study.SPOILERS:
        bad = copy.deepcopy(stored)
        which = spoil(bad)
        verdicts = study.claims(bad)
        assert not verdicts[which].passed, (which, verdicts[which])
        assert all(c.passed for i, c in enumerate(verdicts) if i != which), which


def test_figure_draws_from_stored_numbers(study, tmp_path):
    numbers = json.loads(stabkit.save_json(tmp_path / "n.json", _numbers(study)).read_text())
    study.figure(numbers, tmp_path)
    assert (tmp_path / "low_precision.png").stat().st_size > 10_000
