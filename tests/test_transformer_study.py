"""The transformer_instability study's claims on small hand-made numbers: they pass on numbers
shaped like the measured ones, give the same claims on numbers read back from JSON, and each
spoiler makes its claim (and only it) fail. The sensitivity measure is checked by hand.

The study itself is not run here (``stabkit reproduce --only transformer_instability`` does).
"""

import copy
import dataclasses
import json

import numpy as np
import pytest

import stabkit
from stabkit.reproduce import experiment_dir, find_experiments


@pytest.fixture(scope="module")
def study():
    return find_experiments(experiment_dir())["transformer_instability"]


def _numbers(study):
    """Numbers like a measured run: the baseline diverges above LR 3e-2 (logits ~1e4, entropy
    ~0), qk-layernorm keeps its logits < 50 and trains up to 1e-1; z-loss 1e-2 holds log Z."""
    cfg = study.Config()
    t = cfg.steps // cfg.log_every
    bounds = {"optimum": 0.74, "bigram": 1.70, "unigram": 2.0, "uniform": float(np.log(8))}
    runs = {}
    for fix in study.FIXES:
        rows = study._rows(cfg, fix)
        cols = {k: [] for k in ("depth", "z_loss", "lr", "seed")}
        series = {k: [] for k in ("loss", "logit_max", "entropy", "log_z")}
        final, verdict = [], []
        for d, z, lr, s in rows:
            for k, v in zip(cols, (d, z, lr, s), strict=True):
                cols[k].append(v)
            best = 1.2 - 0.1 * d - (0.02 if fix == "qk-layernorm" else 0.0)
            limit = 3e-2 if fix == "baseline" else 1e-1
            good = lr <= limit
            loss = best + 0.3 * abs(np.log10(lr / 3e-2)) + 0.01 * s
            loss = loss if good else 1.9 + 0.01 * s
            final.append(loss)
            peak = (20.0 if good else 1e4) if fix == "baseline" else (10.0 if good else 40.0)
            grow = np.linspace(5.0, peak, t)
            ent = np.linspace(1.3, 1.0 if good or fix != "baseline" else 0.01, t)
            end_z = {0.0: 3.5, 1e-4: 3.4, 1e-2: 0.3}[z]
            series["loss"].append(np.linspace(2.6, loss, t).tolist())
            series["logit_max"].append(grow.tolist())
            series["entropy"].append(ent.tolist())
            series["log_z"].append(np.linspace(2.1, end_z, t).tolist())
            bad = fix == "baseline" and not good
            verdict.append("attention_logit_growth" if bad else "healthy")
        runs[fix] = {**cols, "final_loss": final, **series, "verdict": verdict}
    return {
        "config": dataclasses.asdict(cfg),
        "bounds": bounds,
        "step": list(range(0, cfg.steps, cfg.log_every)),
        "runs": runs,
    }


def test_sensitivity_is_wortsmans_measure(study):
    # mean of the capped curve minus its minimum
    assert study.sensitivity(np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert study.sensitivity(np.array([0.5, 0.5])) == 0.0


def test_claims_pass_and_read_back_from_json(study, tmp_path):
    numbers = _numbers(study)
    claims = study.claims(numbers)
    assert claims and all(c.passed for c in claims), [c for c in claims if not c.passed]
    stored = json.loads(stabkit.save_json(tmp_path / "n.json", numbers).read_text())
    assert study.claims(stored) == claims
    assert "0.740" in claims[0].theory and "1.700" in claims[0].theory  # the exact bounds


def test_each_spoiler_fails_its_claim_only(study):
    numbers = _numbers(study)
    n_claims = len(study.claims(numbers))
    assert len(study.SPOILERS) == n_claims  # one per claim
    for spoil in study.SPOILERS:
        bad = copy.deepcopy(numbers)
        which = spoil(bad)
        verdicts = study.claims(bad)
        assert not verdicts[which].passed, (which, verdicts[which])
        assert all(c.passed for i, c in enumerate(verdicts) if i != which), which


def test_a_nan_run_counts_as_diverged_at_the_initial_loss(study):
    numbers = _numbers(study)
    r = numbers["runs"]["baseline"]
    first_div = r["lr"].index(1.0)  # depth 1, z-loss 0, LR 1, seed 0
    r["final_loss"][first_div] = float("nan")
    r["logit_max"][first_div][-1] = float("inf")
    claims = study.claims(numbers)
    assert all(c.passed for c in claims)
    assert "inf" in claims[2].measured  # an overflowed logit is the largest, not dropped
    curve, loss0 = study._curve(study._arrays(r), 1, 0.0, np.asarray(study.Config().lrs))
    assert curve[-1] == pytest.approx((loss0 + r["final_loss"][first_div + 1]) / 2)
