"""The residual mean field (stabkit.theory.residual) and the claims of experiments/residual.py.

References are float64 NumPy: the closed forms of relu, a dense trapezoidal rule for tanh, the
MLP theory's own maps (iterate_maps, q_star, chi_1), the asymptotic laws, one NumPy simulation of
wide random residual nets, and one stabkit network (exact in expectation for relu).
"""

import importlib.util
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit as sk
from stabkit.reproduce import experiment_dir, save_json
from stabkit.theory.residual import ResidualMeanField, residual_mean_field

#: Relative tolerance against float64 references computed the same way (closed forms).
EXACT = 1e-13
#: Against a different float64 quadrature of the same expectations.
QUAD = 1e-9


def _relu_reference(depth, sw, sb, alpha, q0, branch, residual):
    """The recursions of the module docstring with relu's closed forms, in plain Python."""
    q, m, chi = [q0], [0.0], []
    for _ in range(depth):
        p = sw**2 * q[-1] + sb**2
        mean, e2, d2 = math.sqrt(p / (2 * math.pi)), p / 2, 0.5
        if branch == "mlp":
            f_mean, f_sq, gain = 0.0, sw**2 * e2 + sb**2, sw**4 * d2
        else:
            f_mean, f_sq, gain = mean, e2, sw**2 * d2
        if residual:
            q.append(q[-1] + 2 * alpha * m[-1] * f_mean + alpha**2 * f_sq)
            m.append(m[-1] + alpha * f_mean)
            chi.append(1 + alpha**2 * gain)
        else:
            q.append(f_sq)
            m.append(f_mean)
            chi.append(gain)
    grad = [math.prod(chi[k:]) for k in range(depth + 1)]
    return np.array(q), np.array(m), np.array(chi), np.array(grad)


@pytest.mark.parametrize(
    "branch,residual,alpha", [("mlp", True, 0.7), ("dense", True, 1.3), ("dense", False, 1.0)]
)
def test_relu_matches_closed_form_recursion(branch, residual, alpha):
    mf = residual_mean_field(
        "relu", 6, sigma_w=0.8, sigma_b=0.3, alpha=alpha, branch=branch, residual=residual, q0=1.3
    )
    assert isinstance(mf, ResidualMeanField)
    q, m, chi, grad = _relu_reference(6, 0.8, 0.3, alpha, 1.3, branch, residual)
    for got, want in ((mf.q, q), (mf.mean, m), (mf.chi, chi), (mf.grad, grad)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=EXACT)
    np.testing.assert_allclose(mf.p, 0.8**2 * q[:-1] + 0.3**2, rtol=EXACT)


@pytest.mark.parametrize("depth", [10, 100, 1000])
def test_relu_mlp_exponential_unless_scaled(depth):
    """alpha = 1: (1 + sigma_w^4 / 2)^L both ways; alpha = 1/sqrt(L): (1 + sigma_w^4/(2L))^L,
    below e^(sigma_w^4 / 2) at every depth."""
    sw = 1.1  # 1.605^1000 = 1e205: within float64
    full = residual_mean_field("relu", depth, sigma_w=sw)
    rate = 1 + sw**4 / 2
    np.testing.assert_allclose(full.q[1:] / full.q[:-1], rate, rtol=EXACT)
    np.testing.assert_allclose(full.chi, rate, rtol=EXACT)
    scaled = residual_mean_field("relu", depth, sigma_w=sw, alpha=depth**-0.5)
    total = (1 + sw**4 / (2 * depth)) ** depth
    np.testing.assert_allclose([scaled.q[-1], scaled.grad[0]], total, rtol=1e-12)
    assert scaled.q[-1] < math.exp(sw**4 / 2) and scaled.grad[0] < math.exp(sw**4 / 2)


def test_overflow_is_inf_not_an_error():
    mf = residual_mean_field("relu", 1000, sigma_w=1.3)  # 2.43^1000 overflows float64
    assert np.isinf(mf.q[-1]) and np.isinf(mf.grad[0]) and np.isfinite(mf.q[100])


def _gauss(f, p, n=40001, zmax=12.0):
    """E[f(u)], u ~ N(0, p), by the trapezoidal rule on n points of z in [-zmax, zmax] (float64;
    exponentially accurate for the smooth tanh integrands here)."""
    z = np.linspace(-zmax, zmax, n)
    w = np.exp(-0.5 * z * z)
    return float(np.sum(w * f(math.sqrt(p) * z)) / np.sum(w))


def _tanh_reference(depth, sw, sb, alpha, branch, residual, q0=1.0):
    q, chi = [q0], []
    for _ in range(depth):
        p = sw**2 * q[-1] + sb**2
        e2 = _gauss(lambda u: np.tanh(u) ** 2, p)
        d2 = _gauss(lambda u: np.cosh(u) ** -4, p)
        f_sq, gain = (sw**2 * e2 + sb**2, sw**4 * d2) if branch == "mlp" else (e2, sw**2 * d2)
        q.append(q[-1] + alpha**2 * f_sq if residual else f_sq)
        chi.append(1 + alpha**2 * gain if residual else gain)
    return np.array(q), np.array(chi)


@pytest.mark.parametrize(
    "branch,residual,alpha", [("mlp", True, 0.6), ("dense", True, 1.0), ("dense", False, 1.0)]
)
def test_tanh_matches_trapezoid_reference(branch, residual, alpha):
    mf = residual_mean_field(
        "tanh", 12, sigma_w=1.4, sigma_b=0.2, alpha=alpha, branch=branch, residual=residual
    )
    q, chi = _tanh_reference(12, 1.4, 0.2, alpha, branch, residual)
    np.testing.assert_allclose(mf.q, q, rtol=QUAD)
    np.testing.assert_allclose(mf.chi, chi, rtol=QUAD)
    np.testing.assert_allclose(mf.mean, 0.0, atol=1e-15)  # tanh is odd


def test_plain_stack_is_the_mlp_mean_field():
    """residual=False, branch="dense": the pre-activation variances are iterate_maps' q^l, and
    the stack settles at q* with gradient gain chi_1 (stabkit.q_star, stabkit.chi_1)."""
    sw2, sb2 = 2.25, 0.04
    mf = residual_mean_field("tanh", 12, sigma_w=1.5, sigma_b=0.2, branch="dense", residual=False)
    it = sk.iterate_maps("tanh", sw2, sb2, q_in=1.0, depth=12)
    np.testing.assert_allclose(mf.p, it.q, rtol=1e-12)
    np.testing.assert_allclose(mf.q[1:-1], (it.q[1:] - sb2) / sw2, rtol=1e-12)
    # 12 layers from q^1 = 2.29 to q* = 0.87: within e^(-12 / xi_q) ~ 3e-4 (xi_q = 1.5).
    np.testing.assert_allclose(mf.p[-1], float(sk.q_star("tanh", sw2, sb2)), rtol=1e-3)
    np.testing.assert_allclose(mf.chi[-1], float(sk.chi_1("tanh", sw2, sb2)), rtol=1e-3)


def test_tanh_asymptotics_linear_forward_exp_sqrt_backward():
    """q^L / L -> alpha^2 sigma_w^2 (polynomial, degree 1: local log-log slope -> 1) while the
    per-block log gradient gain falls like c / sqrt(l), c = (4/3) alpha sigma_w^2 / sqrt(2 pi):
    log G^0 ~ 2c sqrt(L), faster than any polynomial, slower than exponential."""
    depth, sw, alpha = 4000, 1.2, 0.8
    mf = residual_mean_field("tanh", depth, sigma_w=sw, alpha=alpha)
    assert abs(mf.q[depth] / (alpha**2 * sw**2 * depth) - 1) < 0.03
    slope = math.log(mf.q[depth] / mf.q[depth // 2]) / math.log(2)
    assert abs(slope - 1) < 0.02
    c = 4 / 3 * alpha * sw**2 / math.sqrt(2 * math.pi)
    assert abs(math.sqrt(depth) * math.log(mf.chi[-1]) / c - 1) < 0.02
    assert abs(math.log(mf.grad[0]) / (2 * c * math.sqrt(depth)) - 1) < 0.03
    # Neither exponential nor polynomial: the top half of the blocks holds 1 - 1/sqrt(2) = 29%
    # of log G^0 (exponential: 50%; a power L^k: log 2 / log L = 8%).
    share = math.log(mf.grad[depth // 2]) / math.log(mf.grad[0])  # G^(L/2): blocks L/2+1..L
    assert abs(share - (1 - 2**-0.5)) < 0.02


def test_simulated_wide_nets_match():
    """NumPy float64 nets of width 512 (4 seeds x 4 inputs): q^l within 4% for the tanh MLP
    branch and for the relu dense branch (whose mean m^l enters q^l), G^l within 10% for tanh."""
    n, depth, rng = 512, 6, np.random.default_rng(0)
    sw, alpha = 1.5, 0.8
    mlp = residual_mean_field("tanh", depth, sigma_w=sw, alpha=alpha)
    dense = residual_mean_field("relu", depth, sigma_w=1.0, branch="dense")
    q_mlp, q_dense, g_mlp = [], [], []
    for _ in range(4):
        x = rng.standard_normal((4, n))
        x = x - x.mean(axis=1, keepdims=True)
        x = x / np.sqrt(np.mean(x**2, axis=1, keepdims=True))  # q0 = 1, mean 0 over units
        h, hd, qs, qd, tape = x, x, [1.0], [1.0], []
        for _ in range(depth):
            w1, w2, w = (rng.standard_normal((n, n)) / math.sqrt(n) for _ in range(3))
            z = h @ (sw * w1)
            tape.append((z, sw * w1, sw * w2))
            h = h + alpha * np.tanh(z) @ (sw * w2)
            hd = hd + np.maximum(hd @ w, 0.0)
            qs.append(np.mean(h**2))
            qd.append(np.mean(hd**2))
        g = rng.standard_normal((4, n))  # dL/dh^L of a fixed random linear loss
        gs = [np.mean(g**2)]
        for z, a, b in reversed(tape):
            g = g + alpha * ((g @ b.T) * np.cosh(z) ** -2) @ a.T
            gs.append(np.mean(g**2))
        q_mlp.append(qs)
        q_dense.append(qd)
        g_mlp.append(np.array(gs[::-1]) / gs[0])
    np.testing.assert_allclose(np.mean(q_mlp, axis=0), mlp.q, rtol=0.04)
    np.testing.assert_allclose(np.mean(q_dense, axis=0), dense.q, rtol=0.04)
    np.testing.assert_allclose(np.mean(g_mlp, axis=0), mlp.grad, rtol=0.10)


def test_parameter_map_is_stabkits_residual_block():
    """scale = sigma_w, bias_std = sigma_b, alpha = alpha, branch="mlp": for relu, E[q^1] is the
    mean field exactly at any width (z is Gaussian given h, relu's E[phi^2] is linear in p)."""
    width, seeds, sw, sb, alpha = 64, 16, 1.3, 0.4, 0.6
    block = sk.networks.block("residual", activation="relu")
    g = jax.random.normal(jax.random.key(1), (8, width))
    x = g / jnp.sqrt(jnp.mean(g**2, axis=1, keepdims=True))
    q1 = []
    for s in range(seeds):
        p = sk.net_init(
            jax.random.key(s),
            block,
            depth=1,
            width=width,
            scale=sw,
            bias_std=sb,
            alpha=alpha,
            embed=False,
        )
        q1.append(float(sk.trace(p, x, loss="sum").rms[1]) ** 2)
    q1 = np.array(q1)
    want = residual_mean_field("relu", 1, sigma_w=sw, sigma_b=sb, alpha=alpha).q[1]
    assert abs(q1.mean() - want) <= 4 * q1.std(ddof=1) / math.sqrt(seeds)
    # and the test has power: 16 seeds pin the mean to a few percent (4 SE is about 5% here)
    assert abs(q1.mean() / want - 1) < 0.05


@pytest.mark.parametrize(
    "kwargs,err,text",
    [
        ({"activation": "nope"}, ValueError, "nope"),
        ({"activation": 3}, TypeError, "activation"),
        ({"depth": 0}, ValueError, "depth"),
        ({"depth": 2.5}, TypeError, "depth"),
        ({"depth": True}, TypeError, "depth"),
        ({"depth": 2**31 - 1}, ValueError, "depth"),
        ({"sigma_w": 0.0}, ValueError, "sigma_w"),
        ({"sigma_w": -1.0}, ValueError, "sigma_w"),
        ({"sigma_w": math.nan}, ValueError, "sigma_w"),
        ({"sigma_w": "1"}, TypeError, "sigma_w"),
        ({"sigma_b": -0.1}, ValueError, "sigma_b"),
        ({"alpha": math.inf}, ValueError, "alpha"),
        ({"alpha": None}, TypeError, "alpha"),
        ({"branch": "conv"}, ValueError, "branch"),
        ({"branch": 3}, TypeError, "branch"),
        ({"residual": "yes"}, TypeError, "residual"),
        ({"residual": False, "alpha": 0.5}, ValueError, "alpha"),
        ({"q0": -1.0}, ValueError, "q0"),
        ({"order": 1}, ValueError, "order"),
        ({"method": "exact"}, ValueError, "method"),
        ({"activation": "tanh", "method": "closed"}, ValueError, "closed form"),
    ],
)
def test_bad_arguments_are_named(kwargs, err, text):
    args = {"activation": "relu", "depth": 3, "sigma_w": 1.0, **kwargs}
    with pytest.raises(err, match=text):
        residual_mean_field(args.pop("activation"), args.pop("depth"), **args)


# --------------------------------------------------------------------- the study's claims


@pytest.fixture(scope="module")
def study():
    path = experiment_dir() / "residual.py"
    spec = importlib.util.spec_from_file_location("residual_study_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def good_numbers(study):
    """The theory at depth 12 with measured values within ~1% of it (hand-made, no nets run)."""
    cfg = study.Config(depth=12, width=64, seeds=4)
    theory = study._theory(cfg)
    rng = np.random.default_rng(0)
    measured = {}
    for name, th in theory.items():
        q = np.asarray(th["q"]) * (1 + 0.005 * rng.standard_normal((cfg.seeds, cfg.depth + 1)))
        q[:, 0] = 1.0
        g = np.asarray(th["grad"]) * np.exp(0.01 * rng.standard_normal((cfg.seeds, cfg.depth + 1)))
        g[:, -1] = 1.0
        measured[name] = {"q": q, "grad": g}
    import dataclasses

    return {"config": dataclasses.asdict(cfg), "measured": measured, "theory": theory}


def _spoiled(numbers, name, key, index, factor):
    out = json.loads(json.dumps(numbers, default=lambda a: np.asarray(a).tolist()))
    arr = np.asarray(out["measured"][name][key])
    arr[:, index] *= factor
    out["measured"][name][key] = arr.tolist()
    return out


def test_claims_pass_on_good_numbers_and_survive_json(study, good_numbers, tmp_path):
    claims = study.claims(good_numbers)
    assert len(claims) == 11 and all(c.passed for c in claims), [c for c in claims if not c.passed]
    stored = json.loads(save_json(tmp_path / "residual.json", good_numbers).read_text())
    assert study.claims(stored) == claims


@pytest.mark.parametrize(
    "name,key,index,factor,failing",
    [
        ("tanh_residual", "q", 5, 1.3, "tanh, residual MLP branch (σ_w"),
        ("tanh_residual", "q", 12, 1.3, "grows polynomially"),
        ("tanh_residual", "grad", 0, 3.0, "tanh, residual MLP branch: the gradient"),
        ("tanh_residual", "grad", 6, 2.0, "sub-exponential"),
        ("tanh_plain", "grad", 6, 0.7, "sub-exponential"),
        ("tanh_plain", "q", 7, 0.8, "tanh, plain MLP (no skip) (σ_w"),
        ("tanh_plain", "grad", 10, 1.5, "by χ₁ per layer"),
        ("tanh_plain", "grad", 3, 1.5, "tanh, plain MLP (no skip): the gradient"),
        ("relu_residual", "q", 12, 1.5, "exponentially at the predicted rate"),
        ("relu_residual", "grad", 0, 0.5, "exponentially at the predicted rate"),
        ("relu_scaled", "q", 12, 1.2, "stay bounded"),
        ("relu_scaled", "grad", 0, 1.2, "stay bounded"),
        ("relu_scaled", "grad", 6, 1.3, "α = 1/√L: the gradient"),
        ("relu_scaled", "q", 6, 1.1, "α = 1/√L (σ_w = 1): q^l"),
    ],
)
def test_a_spoiled_number_fails_its_claim(study, good_numbers, name, key, index, factor, failing):
    claims = study.claims(_spoiled(good_numbers, name, key, index, factor))
    hit = [c for c in claims if failing in c.claim]
    assert hit, [c.claim for c in claims]
    assert not all(c.passed for c in hit), hit
