"""stabkit.theory.normalization against float64 references, and the normalization study's claims.

References: closed forms (linear batch norm's (B - 2)/(B - 3), relu's pi/(pi - 1), the pre-LN
telescoping product), NumPy Gauss-Hermite quadrature of smooth activations, the full
``B^2 x B^2`` backward operator of batch norm at small B (its top eigenvalue, by NumPy), and
``stabkit.trace``'s gradients for the study's own gradient helper. The study's claims are tested
on hand-made numbers (its ``measure`` takes ~20 s: ``stabkit reproduce --quick`` runs it).
"""

import copy
import itertools
import json
import math

import jax
import numpy as np
import pytest

import stabkit as sk
from stabkit.reproduce import experiment_dir, find_experiments, save_json
from stabkit.theory.normalization import (
    BatchNormRate,
    batchnorm_gradient_rate,
    batchnorm_gradient_rate_limit,
    layernorm_gradient_profile,
    loglog_slope,
    mlp_branch_moments,
)

PI_RATE = math.pi / (math.pi - 1)


def _gauss(f):
    """E[f(z)], z ~ N(0, 1), by the trapezoidal rule on [-14, 14] at step 1e-3 (float64; for an
    analytic f it converges exponentially: ~1e-15 here)."""
    z = np.linspace(-14.0, 14.0, 28_001)
    w = np.exp(-0.5 * z * z)
    return float(w @ f(z) / w.sum())


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ------------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("batch", [4, 5, 8, 33, 1000])
def test_linear_rate_is_exact(batch):
    r = batchnorm_gradient_rate("linear", batch)
    assert r == BatchNormRate((batch - 2) / (batch - 3), 0.0, float(batch), 0)


def test_limits_closed_forms_and_quadrature():
    assert batchnorm_gradient_rate_limit("relu") == pytest.approx(PI_RATE, rel=1e-13)
    assert batchnorm_gradient_rate_limit("linear") == pytest.approx(1.0, rel=1e-13)
    assert batchnorm_gradient_rate("relu", math.inf) == BatchNormRate(
        batchnorm_gradient_rate_limit("relu"), 0.0, math.inf, 0
    )
    # sigmoid (quadrature; a non-zero mean, which Var phi removes) against the trapezoidal rule
    d2 = _gauss(lambda z: (_sigmoid(z) * (1 - _sigmoid(z))) ** 2)
    var = _gauss(lambda z: _sigmoid(z) ** 2) - _gauss(_sigmoid) ** 2
    got = batchnorm_gradient_rate_limit("sigmoid")
    assert got == pytest.approx(d2 / var, rel=1e-10)
    # the Gaussian Poincare inequality: > 1 for every nonlinearity (erf: a closed form)
    assert got > 1.0 and batchnorm_gradient_rate_limit("erf") > 1.0


def _operator_top_eigenvalue(batch, samples, seed=1):
    """The backward operator Pi -> B/(B-3)/a E[P D Pi D P] as a B^2 x B^2 matrix (NumPy)."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((samples, batch))
    g = y - y.mean(axis=1, keepdims=True)
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    z = math.sqrt(batch) * u
    proj = np.eye(batch) - 1 / batch - u[:, :, None] * u[:, None, :]
    a_mat = proj * (z > 0)[:, None, :]  # P D
    op = np.einsum("mij,mkl->ikjl", a_mat, a_mat).reshape(batch**2, batch**2) / samples
    f = np.maximum(z, 0)
    k = f[:, :, None] * f[:, None, :]
    a = np.mean(k[:, 0, 0] - k[:, 0, 1])
    return float(np.max(np.linalg.eigvals(op).real)) * batch / (batch - 3) / a


def test_relu_rate_is_the_backward_operators_top_eigenvalue():
    # Independent of the trace formula the function uses: the leading eigenvalue of the full
    # operator (so Pi ~ G is the mode that survives), from a separate sample.
    r = batchnorm_gradient_rate("relu", 6, samples=40_000)
    top = _operator_top_eigenvalue(6, 20_000)
    assert abs(r.rate - top) < 4 * r.stderr + 0.02 * top
    assert 0 < r.stderr < 0.01 * r.rate


def test_relu_rate_falls_with_batch_to_the_limit():
    rates = [batchnorm_gradient_rate("relu", b, samples=20_000) for b in (8, 32, 128, 1024)]
    values = [r.rate for r in rates]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(PI_RATE, rel=5e-3)  # O(1/B) above the limit
    assert values[-1] > PI_RATE
    # the same seed gives the same number; another seed agrees within its error
    assert batchnorm_gradient_rate("relu", 8, samples=20_000) == rates[0]
    other = batchnorm_gradient_rate("relu", 8, samples=20_000, seed=5)
    assert abs(other.rate - rates[0].rate) < 5 * rates[0].stderr


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch": 3}, ValueError, "batch must be >= 4"),
        ({"batch": 1}, ValueError, "batch must be >= 4"),
        ({"batch": 2.5}, TypeError, "batch"),
        ({"batch": True}, TypeError, "batch"),
        ({"batch": -math.inf}, TypeError, "batch"),
        ({"batch": 8, "samples": 10}, ValueError, "samples must be >= 100"),
        ({"batch": 8, "seed": -1}, ValueError, "seed"),
        ({"batch": 8, "activation": "nope"}, ValueError, "nope"),
        ({"batch": 8, "activation": 3}, TypeError, "activation"),
        ({"batch": 8, "activation": lambda z: 0 * z}, ValueError, "constant"),
    ],
)
def test_batchnorm_rate_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        batchnorm_gradient_rate(**{"samples": 200, **kwargs})


def test_limit_bad_input():
    with pytest.raises(ValueError, match="order"):
        batchnorm_gradient_rate_limit("tanh", order=1)


# ------------------------------------------------------------------------------- layer norm


def test_mlp_branch_moments():
    for s in (0.5, 1.0, 2.0):
        assert mlp_branch_moments("relu", s) == pytest.approx((s**4 / 2, s**4 / 2), rel=1e-14)
    q, chi = mlp_branch_moments("sigmoid", 1.5)
    assert q == pytest.approx(1.5**2 * _gauss(lambda z: _sigmoid(1.5 * z) ** 2), rel=1e-10)
    d = lambda z: _sigmoid(1.5 * z) * (1 - _sigmoid(1.5 * z))
    assert chi == pytest.approx(1.5**4 * _gauss(lambda z: d(z) ** 2), rel=1e-10)
    with pytest.raises(ValueError, match="scale"):
        mlp_branch_moments("relu", 0.0)


def _pre_reference(depth, q0, qf, chi):
    """Block l's gradient by the backward recursion, one block at a time (plain Python)."""
    q = [q0 + qf * k for k in range(depth + 1)]
    g2 = {depth: 1 / q[depth]}
    for layer in range(depth, 1, -1):  # crossing block `layer` backward: its LN sees q_{l-1}
        g2[layer - 1] = g2[layer] * (1 + chi / q[layer - 1])
    return np.sqrt([g2[block] for block in range(1, depth + 1)])


@pytest.mark.parametrize("q0, qf, chi", [(1.0, 0.5, 0.5), (2.0, 0.3, 0.9), (0.5, 1.0, 0.1)])
def test_pre_ln_profile_matches_the_recursion(q0, qf, chi):
    got = layernorm_gradient_profile(12, "pre", q0=q0, branch_q=qf, branch_chi=chi)
    np.testing.assert_allclose(got, _pre_reference(12, q0, qf, chi), rtol=1e-13)
    if chi == qf:  # telescopes: q_l^{-1/2}
        np.testing.assert_allclose(got, (q0 + qf * np.arange(1, 13)) ** -0.5, rtol=1e-13)


def test_pre_ln_last_block_slope_and_post_ln():
    depths = [4, 8, 16, 32, 64]
    last = [layernorm_gradient_profile(d, "pre")[-1] for d in depths]
    np.testing.assert_allclose(last, (1 + np.asarray(depths) / 2) ** -0.5, rtol=1e-13)
    slope = loglog_slope(depths, last)
    assert -0.5 < slope < -0.4  # -1/2 only asymptotically: (1 + L/2)^(-1/2)
    deep = [layernorm_gradient_profile(d, "pre")[-1] for d in (1000, 2000, 4000)]
    assert loglog_slope([1000, 2000, 4000], deep) == pytest.approx(-0.5, abs=1e-3)
    flat = layernorm_gradient_profile(16, "post")
    np.testing.assert_allclose(flat, 1 / math.sqrt(1.5), rtol=1e-14)
    rising = layernorm_gradient_profile(16, "post", branch_q=0.8, branch_chi=0.2)
    assert np.all(np.diff(rising) > 0)  # chi_F < q_F: grows towards the output
    assert rising[0] / rising[-1] == pytest.approx((1.2 / 1.8) ** 7.5, rel=1e-13)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0, "pre"), {}, ValueError, "depth must be >= 1"),
        ((4, "middle"), {}, ValueError, "position"),
        ((4, "pre"), {"q0": 0.0}, ValueError, "q0"),
        ((4, "pre"), {"branch_q": -1.0}, ValueError, "branch_q must be >= 0"),
        ((4, "pre"), {"branch_chi": math.nan}, ValueError, "branch_chi"),
        ((4, "pre"), {"branch_q": "1"}, TypeError, "branch_q"),
    ],
)
def test_layernorm_profile_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        layernorm_gradient_profile(*args, **kwargs)


def test_loglog_slope():
    assert loglog_slope([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0, rel=1e-14)
    with pytest.raises(ValueError, match="same number"):
        loglog_slope([1, 2], [1])
    with pytest.raises(ValueError, match="> 0"):
        loglog_slope([1, 2], [1, 0])


# --------------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def study():
    return find_experiments(experiment_dir())["normalization"]


def test_gradient_helper_matches_trace(study):
    # The study's helper (one jax.grad through lax.scan, zero bumps at the boundaries) against
    # stabkit.trace's per-boundary gradient RMS, float32: batch norm and a post-LN stack.
    for blk in (study.BN_BLOCK, study.LN_BLOCKS["post"]):
        p = sk.net_init(jax.random.key(3), blk, depth=3, width=8)
        x = jax.random.normal(jax.random.key(4), (6, 8))
        g_h, g_blocks = jax.jit(lambda p, x: study.gradients(p, x, study._mse))(p, x)
        t = sk.trace(p, x)
        np.testing.assert_allclose(
            np.sqrt(np.mean(np.square(g_h), axis=(1, 2))), t.grad_rms[:4], rtol=2e-5
        )
        assert g_blocks["branch"]["w_last"].shape == (3, 8, 8)


def test_batchnorm_gradients_do_not_depend_on_the_weight_scale_at_eps_0(study):
    # The claim's mechanism: with eps = 0 batch norm divides the weights' scale out exactly
    # (0.5 and 2 are powers of 2: the same rounding); eps = 1e-6 is the only scale left.
    x = jax.random.normal(jax.random.key(4), (8, 16))
    run = jax.jit(lambda p: study.gradients(p, x, study._mse)[0])
    grads = {
        s: np.asarray(
            run(sk.net_init(jax.random.key(3), study.BN_BLOCK, depth=4, width=16, scale=s, eps=0.0))
        )
        for s in (0.5, 1.0, 2.0)
    }
    np.testing.assert_allclose(grads[0.5], grads[1.0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(grads[2.0], grads[1.0], rtol=1e-6, atol=0)
    assert np.all(np.isfinite(grads[1.0])) and np.any(grads[1.0] != 0)


def _numbers():
    """Hand-made numbers in the shape of the study's measure(): theory-like, all claims PASS."""
    cfg = {
        "bn_batches": [8, 32, 128],
        "bn_width": 128,
        "bn_check_width": 64,
        "bn_check_batch": 32,
        "bn_depth": 20,
        "bn_skip_in": 3,
        "bn_skip_out": 4,
        "bn_scales": [0.5, 1.0, 2.0],
        "bn_seeds": 4,
        "bn_theory_samples": 20000,
        "ln_width": 32,
        "ln_batch": 16,
        "ln_depths": [4, 8, 16, 32, 64],
        "ln_seeds": 4,
        "n_se": 3.0,
        "seed": 0,
    }
    theory = {"8": 1.794, "32": 1.522, "128": 1.479, "512": 1.470}
    measured = {}
    for b, n in ((8, 128), (32, 128), (128, 128), (32, 64)):
        rate = theory[str(b)] * 0.995
        layers = np.arange(cfg["bn_depth"] + 1)
        prof = [list(rate ** (cfg["bn_depth"] - layers))] * 3
        measured[f"{b}/{n}"] = {
            "batch": b,
            "width": n,
            "rate_by_scale": {
                s: {"mean": rate, "se": 0.005, "seeds": 4} for s in ("0.5", "1", "2")
            },
            "max_scale_deviation": 1e-3,
            "grad_sq_profile": prof,
        }
    bn = {
        "measured": measured,
        "theory": {
            k: {"rate": v, "stderr": 0.002, "batch": float(k), "samples": 20000}
            for k, v in theory.items()
        },
        "limit": PI_RATE,
        "linear_rates": {"8": 1.2, "32": 30 / 29, "128": 126 / 125},
        "timings_s": {},
    }
    depths = cfg["ln_depths"]
    ln_theory, ln_measured = {}, {}
    for pos in ("pre", "post"):
        last = [float(layernorm_gradient_profile(d, pos)[-1]) for d in depths]
        profile = layernorm_gradient_profile(64, pos).tolist()
        ln_theory[pos] = {
            "last_block_grad_rms": last,
            "slope": loglog_slope(depths, last),
            "profile": profile,
        }
        ln_measured[pos] = {
            "last_block_grad_rms": [0.1 * v for v in last],
            "last_block_grad_rms_se_log": [0.02] * len(depths),
            "slope": loglog_slope(depths, last) + 0.01,
            "slope_se": 0.02,
            "profile": [
                0.1 * v * (1.002 if pos == "post" else 1.0) ** i for i, v in enumerate(profile)
            ],
            "profile_se_log": [0.05] * 64,
        }
    ln_theory["q_F"], ln_theory["chi_F"] = 0.5, 0.5
    return {"config": cfg, "bn": bn, "ln": {"measured": ln_measured, "theory": ln_theory}}


def _spoil_profile_flat(n):
    pre = n["ln"]["measured"]["pre"]
    pre["profile"] = [pre["profile"][-1]] * 64


SPOILS = {
    0: lambda n: n["bn"]["measured"]["8/128"]["rate_by_scale"]["1"].update(mean=1.60),
    1: lambda n: n["bn"]["measured"]["128/128"]["rate_by_scale"]["1"].update(mean=1.60),
    2: lambda n: n["bn"]["measured"]["32/128"]["rate_by_scale"]["1"].update(mean=1.80),
    3: lambda n: n["bn"]["measured"]["32/64"].update(max_scale_deviation=0.05),
    4: lambda n: n["ln"]["measured"]["pre"].update(slope=-0.2),
    5: lambda n: n["ln"]["measured"]["post"].update(slope=-0.3),
    6: lambda n: n["ln"]["measured"]["post"].update(
        last_block_grad_rms=[1.5 * v for v in n["ln"]["measured"]["post"]["last_block_grad_rms"]]
    ),
    7: _spoil_profile_flat,
    8: lambda n: n["ln"]["measured"]["post"].update(profile=[0.1 * 1.05**i for i in range(64)]),
}


def test_claims_pass_on_good_numbers_and_survive_json(study, tmp_path):
    numbers = _numbers()
    claims = study.claims(numbers)
    assert len(claims) == len(SPOILS)
    assert [c.passed for c in claims] == [True] * len(claims), [c for c in claims if not c.passed]
    stored = json.loads(save_json(tmp_path / "n.json", numbers).read_text())
    assert study.claims(stored) == claims


@pytest.mark.parametrize("index", sorted(SPOILS))
def test_each_claim_fails_on_spoiled_numbers(study, index):
    numbers = copy.deepcopy(_numbers())
    SPOILS[index](numbers)
    verdicts = [c.passed for c in study.claims(numbers)]
    assert not verdicts[index], study.claims(numbers)[index]


def test_figure_is_written(study, tmp_path):
    numbers = _numbers()
    study.figure(numbers, tmp_path)
    assert (tmp_path / "normalization.png").stat().st_size > 10_000
