"""Tests for stabkit.theory: closed forms vs quadrature, fixed points, criticality, Monte Carlo.

Tolerances (float64 throughout the theory):

* closed form vs quadrature (the q-adapted sinh rule), q from 0.05 to 1e4: linear and erf to
  1e-12 (the rule converges exponentially for smooth integrands); relu's kink limits the 2-D
  rule to ~1/order**2 (4e-3 at order 128 is asserted: 3.3e-3 at q = 0.05).
* tanh's E[phi'^2] and the c-map at large q against mpmath / a 4x finer rule: 1e-12.
* fixed points by substitution: 1e-12 relative (Newton converges to rounding).
* Monte Carlo (fixed keys): the mean over S nets within 4 standard errors of the maps at every
  layer (the standard error from the spread over the S nets).
* Jacobian moments: pooled over spectra, within 3 standard errors plus a finite-width allowance
  of (L + 1)/N relative (corrections to free probability are O(L/N)).
"""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import stabkit as sk
from stabkit import theory as th
from stabkit.tracecount import count_traces

# ------------------------------------------------------------------------- closed forms, quadrature

Q = np.array([0.05, 0.5, 1.0, 3.0, 30.0, 1e3, 1e4])[:, None]
C = np.linspace(-1.0, 1.0, 11)


@pytest.mark.parametrize(
    ("activation", "rtol_q", "atol_c"),
    [("linear", 1e-12, 1e-12), ("erf", 1e-12, 1e-12), ("relu", 1e-12, 4e-3)],
)
def test_closed_forms_match_quadrature(activation, rtol_q, atol_c):
    for sw, sb in [(0.7, 0.0), (1.5, 0.1), (2.5, 0.3)]:
        qa = th.q_map(activation, Q, sw, sb, method="closed")
        qb = th.q_map(activation, Q, sw, sb, method="quadrature")
        np.testing.assert_allclose(qa, qb, rtol=rtol_q)
        ca = th.c_map(activation, C, Q, sw, sb, method="closed")
        cb = th.c_map(activation, C, Q, sw, sb, method="quadrature")
        np.testing.assert_allclose(ca / qa, cb / qa, atol=atol_c)


def test_closed_form_values():
    # relu: Q(q) = sigma_w^2 q / 2 + sigma_b^2; arc-cosine kernel at c = 0 is q / (2 pi).
    assert th.q_map("relu", 3.0, 2.0, 0.1) == pytest.approx(3.1, rel=1e-15)
    assert th.c_map("relu", 0.0, 1.0, 2.0, 0.0) == pytest.approx(1 / math.pi, rel=1e-14)
    # erf, Williams: E[erf(u)^2] = 2/pi arcsin(2q / (1 + 2q)); at q = 1/2 that is 2/pi * pi/6.
    assert th.q_map("erf", 0.5, 1.0, 0.0) == pytest.approx(1 / 3, rel=1e-14)
    # linear: the maps are affine and c is carried through.
    assert th.c_map("linear", 0.3, 2.0, 0.5, 0.0) == pytest.approx(0.3, rel=1e-14)


def test_erf_mean_field_closed_vs_quadrature():
    sw = np.array([0.5, 1.5, 3.0])[:, None]
    sb = np.array([0.0, 0.3])
    a = th.mean_field("erf", sw, sb, method="closed")
    b = th.mean_field("erf", sw, sb, method="quadrature")
    for field in ("q_star", "c_star", "chi_1", "chi_c", "chi_q"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(a.phase, b.phase)


def test_quadrature_converges_with_order():
    # The default order 128 against 512, up to q = 1e4: the sinh rule follows phi's features as
    # they narrow like 1/sqrt(q) (Gauss-Hermite's fixed nodes were 5% off at q = 16).
    a = th.c_map("tanh", C, Q, 1.8, 0.05)
    b = th.c_map("tanh", C, Q, 1.8, 0.05, order=512)
    np.testing.assert_allclose(a, b, atol=1e-12)
    a = th.q_map("tanh", Q, 1.8, 0.05)
    np.testing.assert_allclose(a, th.q_map("tanh", Q, 1.8, 0.05, order=512), rtol=1e-12)


def _mp_sech4(mp, q):
    """E[sech(sqrt(q) z)^4], z ~ N(0, 1), by mpmath, split where the integrand narrows."""
    a = 20 / mp.sqrt(q)
    f = lambda z: mp.sech(mp.sqrt(q) * z) ** 4 * mp.npdf(z)
    return mp.quad(f, [-mp.inf, -a, 0, a, mp.inf])


def test_large_q_against_mpmath():
    # E[tanh'(u)^2], u ~ N(0, q), whose integrand narrows like 1/sqrt(q); then chi_1 at
    # sigma_w^2 = 50, where q* = 44 (chaotic).
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    for q in (16.0, 144.0, 1e4):
        got = th.q_map(_sech2, q, 1.0, 0.0)  # E[sech(u)^4] = E[tanh'(u)^2]
        assert float(got) == pytest.approx(float(_mp_sech4(mp, q)), rel=1e-12), q
    mf = th.mean_field("tanh", 50.0, 0.05)
    assert float(mf.chi_1) == pytest.approx(50 * float(_mp_sech4(mp, float(mf.q_star))), rel=1e-12)


def _sech2(u):
    return 1.0 / jnp.cosh(u) ** 2


def test_callable_equals_name_and_closed_form_is_detected():
    mine = lambda z: jnp.tanh(z)
    np.testing.assert_allclose(th.chi_1(mine, 2.0, 0.05), th.chi_1("tanh", 2.0, 0.05), rtol=1e-13)
    np.testing.assert_allclose(
        th.c_map(mine, C, 0.7, 2.0, 0.05), th.c_map("tanh", C, 0.7, 2.0, 0.05), rtol=1e-13
    )
    # jax.nn.relu is the registered relu: the closed form applies (exact 2/2 = 1).
    assert th.chi_1(jax.nn.relu, 2.0, 0.0) == 1.0


# ------------------------------------------------------------------------------------ fixed points

POINTS = [(1.2, 0.05), (1.76, 0.05), (3.0, 0.05), (0.8, 0.0), (2.0, 0.3), (4.0, 0.01)]


@pytest.mark.parametrize("activation", ["tanh", "erf", "sigmoid"])
def test_fixed_points_by_substitution(activation):
    sw = np.array([p[0] for p in POINTS])
    sb = np.array([p[1] for p in POINTS])
    mf = th.mean_field(activation, sw, sb)
    assert np.all(np.isfinite(mf.q_star))  # bounded activations always have a fixed point
    # (tanh and erf at (0.8, 0): q* = 0, reached to ~1e-60.)
    np.testing.assert_allclose(
        th.q_map(activation, mf.q_star, sw, sb), mf.q_star, rtol=1e-12, atol=1e-30
    )
    q = np.maximum(mf.q_star, 1e-300)
    np.testing.assert_allclose(th.c_map(activation, mf.c_star, q, sw, sb), mf.c_star, atol=1e-12)
    # Stability: chi_c < 1 at c* away from the critical line (the fixed point attracts).
    off = np.abs(mf.chi_1 - 1) > 1e-3
    assert np.all(mf.chi_c[off] < 1)


def test_chi_1_and_chi_q_are_the_slopes_of_the_maps():
    sw, sb = np.array([1.2, 1.76, 3.0]), 0.05
    mf = th.mean_field("tanh", sw, sb)
    h = 1e-6
    slope_c = (1 - th.c_map("tanh", 1 - h, mf.q_star, sw, sb)) / h
    np.testing.assert_allclose(slope_c, mf.chi_1, rtol=1e-5)
    q = mf.q_star
    slope_q = (th.q_map("tanh", q + h, sw, sb) - th.q_map("tanh", q - h, sw, sb)) / (2 * h)
    np.testing.assert_allclose(slope_q, mf.chi_q, rtol=1e-7)
    np.testing.assert_allclose(mf.xi_q, -1 / np.log(mf.chi_q), rtol=1e-14)


def test_xi_c_is_the_decay_rate_of_c():
    # Perturbations of c* decay as chi_c^l = exp(-l / xi_c), ordered and chaotic phases alike.
    for sw in (1.2, 3.0):
        mf = th.mean_field("tanh", sw, 0.05)
        c0 = float(mf.c_star) - 1e-4
        q_in = (float(mf.q_star) - 0.05) / sw  # inputs whose q^1 = q*
        c_in = (c0 * float(mf.q_star) - 0.05) / (sw * q_in)
        it = th.iterate_maps("tanh", sw, 0.05, q_in=q_in, c_in=c_in, depth=6)
        gap = np.abs(it.c - mf.c_star)
        rate = np.log(gap[1:] / gap[:-1])
        np.testing.assert_allclose(rate, -1 / mf.xi_c, rtol=2e-3)


# ------------------------------------------------------------------------------------- criticality


def test_relu_critical_point_and_chi_1():
    sw = np.linspace(0.5, 4.0, 8)[:, None]
    sb = np.array([0.0, 0.1, 1.0])
    np.testing.assert_array_equal(th.chi_1("relu", sw, sb), np.broadcast_to(sw / 2, (8, 3)))
    assert th.critical_line("relu", 0.0) == 2.0
    assert th.phase("relu", 2.0, 0.0) == 0
    assert th.phase("relu", 1.9, 0.0) == -1 and th.phase("relu", 2.1, 0.0) == 1
    assert math.isinf(th.xi_c("relu", 2.0, 0.0))
    assert th.q_star("relu", 1.0, 0.5) == 1.0  # sigma_b^2 / (1 - sigma_w^2 / 2)
    assert math.isinf(th.q_star("relu", 2.5, 0.1))


def test_tanh_critical_line_golden_values():
    # Schoenholz et al. 2017's tanh phase diagram: the line starts at (sigma_b^2, sigma_w^2) =
    # (0, 1) and sigma_b^2 = 0.05 is critical near sigma_w^2 = 1.76. Golden float64 values from
    # order 512 (orders 256 and 512 agree to 1e-12 away from sigma_b^2 = 0, where the root is a
    # tangency); the default order 128 is within 1e-8 of them.
    golden = [1.0, 1.7609546396067, 2.5051271896800]
    np.testing.assert_allclose(
        th.critical_line("tanh", [0.0, 0.05, 0.3]), golden, rtol=2e-8, atol=1e-7
    )
    assert th.critical_line("erf", 0.0) == pytest.approx(math.pi / 4, rel=1e-7)


@pytest.mark.parametrize("activation", ["tanh", "erf"])
def test_chi_1_is_one_on_the_critical_line(activation):
    sb = np.linspace(0.0, 0.5, 11)
    crit = th.critical_line(activation, sb)
    chi = th.chi_1(activation, crit, sb)
    np.testing.assert_allclose(chi[1:], 1.0, atol=1e-12)
    assert abs(chi[0] - 1) < 1e-7  # tangency at sigma_b^2 = 0 (see critical_line)
    assert np.all(np.diff(crit) > 0)  # more bias needs more weight variance
    ph = th.phase(activation, np.stack([0.98 * crit, 1.02 * crit]), sb)
    assert np.all(ph[0] == -1) and np.all(ph[1] == 1)


def test_phase_and_depth_scales_on_a_grid():
    sw = np.linspace(0.5, 4.0, 36)[None, :]
    sb = np.linspace(0.0, 0.3, 5)[:, None]
    mf = th.mean_field("tanh", sw, sb)
    assert mf.phase.shape == (5, 36) and mf.phase.dtype == np.int8
    np.testing.assert_array_equal(mf.c_star[mf.phase == -1], 1.0)
    assert np.all(mf.c_star[mf.phase == 1] < 1)
    np.testing.assert_allclose(mf.xi_c[mf.phase == -1], -1 / np.log(mf.chi_1[mf.phase == -1]))
    assert np.all(np.isfinite(mf.xi_c) | (mf.phase == 0))
    # xi_c peaks at the critical line along every row.
    crit = th.critical_line("tanh", sb[:, 0])
    peak = sw[0, np.argmax(mf.xi_c, axis=1)]
    assert np.all(np.abs(peak - crit) <= 0.1)


def test_no_recompilation_for_new_values():
    th.mean_field("tanh", np.linspace(1, 2, 5), 0.05, order=40)
    with count_traces() as c:
        th.mean_field("tanh", np.linspace(2, 3, 5), 0.1, order=40)
    assert c.compiles("_solve") == 0


def test_x64_stays_contained():
    before = jax.config.jax_enable_x64
    assert isinstance(th.chi_1("tanh", 1.5, 0.05), np.float64)
    assert jax.config.jax_enable_x64 == before


@settings(max_examples=15)
@given(
    sw=st.floats(0.3, 4.0),
    sb=st.floats(0.0, 0.5, allow_subnormal=False),
)
def test_property_fixed_point_and_phase(sw, sb):
    mf = th.mean_field("tanh", sw, sb)
    assert mf.q_star >= sb
    assert th.q_map("tanh", mf.q_star, sw, sb) == pytest.approx(mf.q_star, rel=1e-10)
    assert 0 <= mf.c_star <= 1
    expected = -1 if mf.chi_1 < 1 - 1e-9 else (1 if mf.chi_1 > 1 + 1e-9 else 0)
    assert mf.phase == expected


# ---------------------------------------------------------------------------------- Monte Carlo


def _pair(key, n, c_in):
    """Two inputs of mean square 1 and cosine similarity exactly c_in."""
    g = jax.random.normal(key, (2, n), jnp.float32)
    u = g[0] / jnp.linalg.norm(g[0])
    v = g[1] - jnp.dot(g[1], u) * u
    v = v / jnp.linalg.norm(v)
    return jnp.stack([u, c_in * u + math.sqrt(1 - c_in**2) * v]) * math.sqrt(n)


def test_monte_carlo_q_and_c_match_the_maps():
    # S nets of width 256 per point, tanh, sigma_b^2 = 0.05: ordered, critical, chaotic.
    n, depth, seeds, c_in = 256, 8, 12, 0.3
    x = _pair(jax.random.key(7), n, c_in)

    @jax.jit
    def measure(sw, sb):
        def one(seed):
            p = sk.mlp_init(
                jax.random.key(seed),
                depth=depth,
                width=n,
                scale=jnp.sqrt(sw),
                bias_std=jnp.sqrt(sb),
            )
            # The readout of a depth-d net is a fresh layer: its output is z^{d+1}.
            return jax.vmap(lambda d: sk.mlp_apply(p, x, activation="tanh", depth=d))(
                jnp.arange(1, depth + 1)
            )

        return jax.vmap(one)(jnp.arange(seeds))  # (S, depth, 2, n)

    with count_traces() as count:
        zs = [
            np.asarray(measure(sw, sb), np.float64)
            for sw, sb in [(1.2, 0.05), (1.7609546, 0.05), (3.0, 0.05)]
        ]
    assert count.compiles("measure") == 1  # one compilation for every point
    for (sw, sb), z in zip([(1.2, 0.05), (1.7609546, 0.05), (3.0, 0.05)], zs, strict=True):
        q = np.mean(z**2, axis=-1)
        c = np.mean(z[..., 0, :] * z[..., 1, :], axis=-1) / np.sqrt(q[..., 0] * q[..., 1])
        it = th.iterate_maps("tanh", sw, sb, q_in=1.0, c_in=c_in, depth=depth + 1)
        for measured, theory in ((q.mean(-1), it.q[1:]), (c, it.c[1:])):
            se = measured.std(axis=0, ddof=1) / math.sqrt(seeds)
            assert np.all(np.abs(measured.mean(0) - theory) <= 4 * se), (sw, measured, theory)


# ------------------------------------------------------------------------------- Jacobian spectra


def test_jacobian_moments_theory_values():
    for depth in (1, 5, 20):
        lin_g = th.jacobian_spectrum_moments("linear", 1.0, 0.0, depth)
        lin_o = th.jacobian_spectrum_moments("linear", 1.0, 0.0, depth, weights="orthogonal")
        relu_g = th.jacobian_spectrum_moments("relu", 2.0, 0.0, depth)
        relu_o = th.jacobian_spectrum_moments("relu", 2.0, 0.0, depth, weights="orthogonal")
        assert (lin_g.mean, lin_g.variance, lin_o.variance) == (1.0, depth, 0.0)
        assert (relu_g.mean, relu_g.variance, relu_o.variance) == (1.0, 2 * depth, depth)
    # tanh on the critical line: mean 1; orthogonal variance -> 0 as sigma_b^2 -> 0 (isometry).
    prev = math.inf
    for sb in (0.3, 0.05, 1e-3, 1e-5):
        sw = float(th.critical_line("tanh", sb))
        m = th.jacobian_spectrum_moments("tanh", sw, sb, 10, weights="orthogonal")
        g = th.jacobian_spectrum_moments("tanh", sw, sb, 10)
        assert m.mean == pytest.approx(1.0, abs=1e-10)
        assert g.variance == pytest.approx(m.variance + 10, rel=1e-12)  # s1 = -1 vs 0
        assert m.variance < prev
        prev = m.variance
    assert prev < 0.03  # 10 layers at sigma_b^2 = 1e-5: q* = 0.011, mu2/mu1^2 - 1 = 0.0028
    # The readout adds a factor sigma_w^2 to the mean and, Gaussian, one unit of variance / m1^2.
    r = th.jacobian_spectrum_moments("relu", 2.0, 0.0, 4, readout=True)
    assert (r.mean, r.variance) == (2.0, 4.0 * 9)


def test_jacobian_equals_the_explicit_product():
    p = sk.mlp_init(jax.random.key(3), depth=3, width=6, in_dim=4, out_dim=5, bias_std=0.3)
    x = jax.random.normal(jax.random.key(4), (4,))
    with jax.enable_x64(True):
        w = [np.asarray(p.w_in, np.float64), *np.asarray(p.w_hidden, np.float64)]
        b = [np.asarray(p.b_in, np.float64), *np.asarray(p.b_hidden, np.float64)]
    h, jac = np.asarray(x, np.float64), np.eye(4)
    for wl, bl in zip(w, b, strict=True):
        z = h @ wl + bl
        jac = jac @ wl * (1 - np.tanh(z) ** 2)  # J = W1 D1 W2 D2 W3 D3 (row vectors)
        h = np.tanh(z)
    s = th.jacobian_singular_values(p, x, "tanh")
    np.testing.assert_allclose(s, np.linalg.svd(jac, compute_uv=False), rtol=1e-5)
    s_out = th.jacobian_singular_values(p, x, "tanh", readout=True)
    ref = np.linalg.svd(jac @ np.asarray(p.w_out, np.float64), compute_uv=False)
    np.testing.assert_allclose(s_out, ref, rtol=1e-5)
    # A shallower depth is data: the same compilation, and the 1-D result is the batch's row.
    s2 = th.jacobian_singular_values(p, x, "tanh", depth=2)
    assert s2.shape == (4,) and not np.allclose(s2, s)


def test_orthogonal_linear_is_an_isometry():
    # (Orthogonal draws are kept few in the tests: the QR behind them is the slowest kernel on a
    # busy CPU; the jacobian_spectra study checks orthogonal spectra at width 256.)
    p = sk.mlp_init(jax.random.key(0), depth=24, width=32, init="orthogonal")
    s = th.jacobian_singular_values(p, jnp.ones((3, 32)), "linear")
    np.testing.assert_allclose(s, 1.0, atol=5e-5)


@pytest.mark.parametrize(
    ("activation", "sw", "sb"),
    [("linear", 1.0, 0.0), ("relu", 2.0, 0.0), ("tanh", 1.7609546, 0.05)],
)
def test_jacobian_moments_match_free_probability(activation, sw, sb):
    # One spectrum per net (independent samples for the standard errors), input at q^1 = q*;
    # all nets in one compiled, vmapped call (Gaussian draws: no QR under vmap).
    n, depth, seeds = 128, 6, 12
    qs = float(th.q_star(activation, sw, sb))

    def spectra(seed):
        key = jax.random.key(seed)
        p = sk.mlp_init(key, depth=depth, width=n, scale=math.sqrt(sw), bias_std=math.sqrt(sb))
        x = jax.random.normal(jax.random.fold_in(key, 1), (n,))
        x = x / jnp.sqrt(jnp.mean(x**2)) * math.sqrt((qs - sb) / sw)
        return th.jacobian_singular_values(p, x, activation) ** 2

    lam = np.asarray(jax.jit(jax.vmap(spectra))(jnp.arange(seeds)), np.float64)
    m1, m2 = lam.mean(axis=1), (lam**2).mean(axis=1)
    var = m2.mean() - m1.mean() ** 2
    se_var = np.std(m2 - 2 * m1.mean() * m1, ddof=1) / math.sqrt(m1.size)  # delta method
    se_mean = np.std(m1, ddof=1) / math.sqrt(m1.size)
    theory = th.jacobian_spectrum_moments(activation, sw, sb, depth)  # Gaussian weights
    allowance = (depth + 1) / n
    assert abs(m1.mean() - theory.mean) <= 3 * se_mean + allowance * theory.mean
    assert abs(var - theory.variance) <= 3 * se_var + allowance * theory.variance


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: th.q_map("tanh", 1.0, -1.0, 0.0), ValueError, "sigma_w2.*-1.0"),
        (lambda: th.chi_1("tanh", 1.0, -0.1), ValueError, "sigma_b2.*-0.1"),
        (lambda: th.mean_field("tanh", [1.0, np.nan], 0.0), ValueError, "sigma_w2.*NaN at index"),
        (lambda: th.q_map("tanh", -2.0, 1.0, 0.0), ValueError, "q .*-2.0"),
        (lambda: th.c_map("tanh", 1.5, 1.0, 1.0, 0.0), ValueError, "c .*1.5"),
        (lambda: th.chi_1(3, 1.0, 0.0), TypeError, "activation.*3"),
        (lambda: th.chi_1("swish", 1.0, 0.0), ValueError, "swish"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, order=1), ValueError, "order.*1"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, order=2.5), TypeError, "order.*2.5"),
        (lambda: th.mean_field("tanh", [], 0.0), ValueError, "sigma_w2.*empty"),
        (lambda: th.critical_line("tanh", np.zeros((0, 3))), ValueError, "sigma_b2.*empty"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, method="exact"), ValueError, "method.*exact"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, method="closed"), ValueError, "no closed form"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, tol=1), TypeError, "tol"),
        (lambda: th.critical_line("tanh", 0.0, bracket=(2.0, 1.0)), ValueError, "bracket"),
        (lambda: th.iterate_maps("tanh", 1.0, 0.0, q_in=1.0, depth=0), ValueError, "depth.*0"),
        (
            lambda: th.jacobian_spectrum_moments("relu", 2.0, 0.0, 3, weights="haar"),
            ValueError,
            "weights.*haar",
        ),
        (lambda: th.jacobian_spectrum_moments("relu", 3.0, 0.1, 3), ValueError, "q\\* is infinite"),
        (lambda: th.jacobian_singular_values({}, jnp.ones(3), "tanh"), TypeError, "MLPParams"),
        (lambda: th.predict_profile("tanh", 1.0, 0.0, 0), ValueError, "depth.*0"),
        (lambda: th.predict_profile("tanh", 1.0, 0.0, 2.5), TypeError, "depth.*2.5"),
        (lambda: th.predict_profile("tanh", 1.0, 0.0, 3, -1.0), ValueError, "q0.*-1.0"),
        (lambda: th.predict_profile("tanh", 1.0, 0.0, 3, weights="haar"), ValueError, "haar"),
        (lambda: th.predict_profile("tanh", 1.0, 0.0, 3, loss="l1"), ValueError, "loss.*l1"),
        (lambda: th.predict_profile("tanh", -1.0, 0.0, 3), ValueError, "sigma_w2.*-1.0"),
        (lambda: th.predict_profile(None, 1.0, 0.0, 3), TypeError, "activation"),
        (lambda: th.weight_variance("kaiming"), ValueError, "kaiming"),
        (lambda: th.weight_variance(3), TypeError, "init.*3"),
        (lambda: th.weight_variance("gaussian", np.inf), ValueError, "scale.*inf"),
        (lambda: th.predict_sweep(xr.Dataset()), ValueError, "stabkit.sweep"),
        (lambda: th.compare_sweep(xr.Dataset(), n_sigma=0), ValueError, "n_sigma.*0"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_jacobian_input():
    p = sk.mlp_init(jax.random.key(0), depth=2, width=4)
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        th.jacobian_singular_values(p, jnp.ones(3), "tanh")
    with pytest.raises(ValueError, match=r"depth must be in 1\.\.2"):
        th.jacobian_singular_values(p, jnp.ones(4), "tanh", depth=3)
    with pytest.raises(TypeError, match="activation"):
        th.jacobian_singular_values(p, jnp.ones(4), None)


# ------------------------------------------------------------- predicted per-layer profiles
#
# Tolerances:
# * closed forms (linear, relu: every Gaussian moment is a polynomial in q) vs predict_profile:
#   1e-12 relative, float64 rounding over a few dozen layers.
# * the chi_1 power law at the fixed point: 1e-9 relative (q* from Newton to ~1e-15, tanh's
#   quadrature at order 128 to ~1e-12 at q* < 1, compounded over 10 layers).
# * measured sweeps (float32, width 256 and 512): compare_sweep's stated tolerance, 4 predicted
#   single-example standard deviations of the log (c sqrt(l/n), c = 1.2-1.9); float32 rounding
#   (1e-7 a layer) is negligible beside it.
# * initializer variances from draws of 256 x 256 weights: 5 standard errors of the sample
#   variance (sqrt(2/N) normal, sqrt(4/5/N) uniform, N = 2^16 entries); the identity is exact
#   (1e-5 relative, float32 sums). Orthogonal (gain^2 / n per entry by construction) is checked
#   through predict_sweep's sigma_w2 table (a QR draw would add a compilation).


@pytest.mark.parametrize(
    ("init", "scale"),
    [
        ("gaussian", 1.3),
        ("he_normal", 0.8),
        ("he_uniform", 1.0),
        ("glorot_uniform", 1.1),
        ("lecun_normal", 0.7),
        ("standard", 1.0),
        ("scaled_identity", 0.9),
    ],
)
def test_weight_variance_matches_the_initializers(init, scale):
    n = 256
    w = np.asarray(sk.get_initializer(init, scale)(jax.random.key(3), (n, n)), np.float64)
    measured = n * np.mean(w * w)
    expected = float(th.weight_variance(init, scale))
    if init == "scaled_identity":
        np.testing.assert_allclose(measured, expected, rtol=1e-5)
    else:
        se = math.sqrt((2.0 if "normal" in init or init == "gaussian" else 0.8) / n**2)
        assert abs(measured / expected - 1) <= 5 * se


def test_profile_closed_forms_linear_and_relu():
    depth, q0 = 24, 0.7  # as SIGNAL's: the compilations are shared
    for act, sw, sb in (("linear", 1.3, 0.2), ("relu", 2.6, 0.1), ("relu", 1.2, 0.0)):
        p = th.predict_profile(act, sw, sb, depth, q0)
        half = 0.5 if act == "relu" else 1.0
        q = [q0, sw * q0 + sb]
        for _ in range(depth):
            q.append(sw * half * q[-1] + sb)
        q = np.array(q)
        np.testing.assert_allclose(p.q, q, rtol=1e-12)
        post = np.sqrt(np.concatenate([[q0], half * q[1:-1], [q[-1]]]))
        np.testing.assert_allclose(p.post_rms, post, rtol=1e-12)
        np.testing.assert_allclose(p.chi[1:-1], sw * half, rtol=1e-12)
        # sum loss: dL/dh^l = chi^(L-l) times the readout's sigma_w^2, exactly.
        expect = np.sqrt(sw * (sw * half) ** (depth - np.arange(depth + 1)))
        np.testing.assert_allclose(p.grad_rms[:-1], expect, rtol=1e-12)
    # mse, Gaussian weights: the Fuss-Catalan moment of a linear net, (k + 1) for k weight
    # matrices above layer l; orthogonal weights keep every norm: sigma_w^(2k).
    p = th.predict_profile("linear", 1.0, 0.0, depth, 1.0, loss="mse")
    k = depth + 1 - np.arange(depth + 2)
    np.testing.assert_allclose(p.grad_rms**2, k + 1, rtol=1e-12)
    p = th.predict_profile("linear", 1.5, 0.0, depth, 1.0, loss="mse", weights="orthogonal")
    np.testing.assert_allclose(p.grad_rms**2, 1.5**k, rtol=1e-12)
    # relu + He + mse: 2(L + 1 - l) more than the chi product (= 2) at every layer.
    p = th.predict_profile("relu", 2.0, 0.0, depth, 1.0, loss="mse")
    np.testing.assert_allclose(p.grad_rms[:-1] ** 2, 4.0 * k[:-1], rtol=1e-12)


def test_gradient_profile_is_chi_1_power_at_the_fixed_point():
    depth = 24  # as SIGNAL's: one compilation of the tanh profile serves both
    for sw, sb in ((1.2, 0.05), (1.76, 0.05), (3.0, 0.05)):
        mf = th.mean_field("tanh", sw, sb)
        qs, chi1 = float(mf.q_star), float(mf.chi_1)
        p = th.predict_profile("tanh", sw, sb, depth, (qs - sb) / sw)  # q^1 = q*
        np.testing.assert_allclose(p.q[1:], qs, rtol=1e-9)
        np.testing.assert_allclose(p.chi[1:-1], chi1, rtol=1e-9)
        ell = np.arange(depth + 1)
        np.testing.assert_allclose(p.grad_rms[:-1] ** 2, sw * chi1 ** (depth - ell), rtol=1e-9)
        rel = p.grad_rms[: depth + 1] / p.grad_rms[depth]
        np.testing.assert_allclose(rel, chi1 ** ((depth - ell) / 2), rtol=1e-9)


def test_profile_spreads_are_the_linear_response_variances():
    # relu without bias: ln|h|^2 gains kappa = 5 a layer (Hanin & Nica), pre-activations 2.
    p = th.predict_profile("relu", 2.0, 0.0, 24, 1.0)
    ell = np.arange(1, 25)
    np.testing.assert_allclose(p.post_spread[1:-1], np.sqrt(5 * ell) / 2, rtol=1e-3)
    np.testing.assert_allclose(p.pre_spread[1:-1], np.sqrt(5 * (ell - 1) + 2) / 2, rtol=1e-3)
    # tanh contracts toward q*: the spread saturates instead of growing like sqrt(l) (relu's
    # would grow by 2 from layer 6 to 24).
    t = th.predict_profile("tanh", 1.5, 0.05, 24, 1.0)
    assert t.post_spread[24] < 1.01 * t.post_spread[12] < 1.05 * t.post_spread[6]


# -------------------------------------------------------------------- measured sweeps

SIGNAL = dict(
    depth=24,
    activation=("tanh", "relu"),
    init="gaussian",
    scale=tuple(math.sqrt(v) for v in (1.0, 1.76, 2.0, 3.0)),  # sigma_w^2 1, 1.76, 2 (He), 3
    bias_std=math.sqrt(0.05),
    seed=(0, 1, 2),
    batch=8,  # the two compilations dominate; the statistics average over batch x width
)


@pytest.fixture(scope="module")
def signal():
    """float32 sweeps of SIGNAL at widths 256 and 512 with their predictions and comparisons."""
    out = {}
    for width in (256, 512):
        ds = sk.sweep(sk.SweepSpec(**SIGNAL, width=width), progress=False)
        pred = th.predict_sweep(ds)
        out[width] = ds, pred, th.compare_sweep(ds, pred)
    return out


def test_sweep_agrees_with_the_mean_field(signal):
    for width, (ds, pred, cmp) in signal.items():
        assert bool(cmp.passed.all()), width
        for name in ("pre_rms", "post_rms", "grad_gain"):
            judged = cmp[f"tol_{name}"].notnull()
            # every hidden layer and the readout of every config was judged (nothing overflowed)
            assert int(judged.sum()) >= cmp[name].notnull().sum() - 2 * cmp.passed.size
            assert bool((np.abs(cmp[name]) <= cmp[f"tol_{name}"]).where(judged, True).all())
        # Layer 0 is the input itself: q0 from sweep_input is what the sweep measured.
        np.testing.assert_allclose(pred.pre_rms.sel(layer=0), ds.pre_rms.sel(layer=0), rtol=1e-6)
        # The absolute gradient at the readout follows mse's dL/dy = y / N.
        top = ds.grad_post_rms.sel(layer=ds.depth + 1)
        n = SIGNAL["batch"] * width
        np.testing.assert_allclose(top, ds.output_rms / n, rtol=1e-5)
        assert float(np.abs(np.log10(top / pred.grad_post_rms.sel(layer=ds.depth + 1))).max()) < 0.2


def test_sweep_error_shrinks_with_width(signal):
    raw, weighted = {}, {}
    for width, (_, pred, cmp) in signal.items():
        errs = [np.abs(cmp[v]) for v in ("pre_rms", "post_rms", "grad_gain")]
        spreads = [pred.pre_spread, pred.post_spread, pred.grad_spread]
        raw[width] = np.mean([float(e.mean()) for e in errs])
        weighted[width] = np.mean(
            [float((e / s).where(s > 0).mean()) for e, s in zip(errs, spreads, strict=True)]
        )
    # finite-width fluctuations scale like 1/sqrt(width): the mean error halves in variance
    assert raw[512] < raw[256] and weighted[512] < weighted[256]


def test_gradient_independence_product_fails_for_mse(signal):
    """The chi product (loss="sum") mispredicts the sweep's mse gradients beyond tolerance."""
    ds, pred, _ = signal[256]
    relu = ds.sel(activation=["relu"], scale=[math.sqrt(2.0)], seed=[0])
    wrong = pred.sel(activation=["relu"], scale=[math.sqrt(2.0)], seed=[0]).copy()
    p = th.predict_profile("relu", 2.0, 0.05, 24, wrong.pre_rms.sel(layer=0).values.item() ** 2)
    wrong["grad_gain"].values[..., : p.grad_rms.size] = p.grad_rms
    bad = th.compare_sweep(relu, wrong)
    assert not bool(bad.passed.all())
    assert float(np.abs(bad.grad_gain).max()) > 0.6  # sqrt(2 * 25) ~ 7x at the input


def _fake_sweep(**spec):
    """A sweep-shaped dataset (coords and spec only) for predict_sweep's bookkeeping."""
    import json

    import xarray as xr

    s = sk.SweepSpec(**spec)
    coords = s.coords()
    coords["layer"] = np.arange(s.n_layers)
    return xr.Dataset(coords=coords, attrs={"spec": json.dumps(s.to_dict())})


def test_predict_sweep_inits_and_where_the_theory_applies():
    ds = _fake_sweep(
        depth=(2, 24),
        width=64,
        activation=("linear", "tanh"),
        init=("he_uniform", "orthogonal", "scaled_identity", "standard"),
        scale=(0.5, 1.5),
        bias_std=(0.0, 0.3),
        batch=4,
        loss="sum",
    )
    pred = th.predict_sweep(ds)
    np.testing.assert_allclose(
        pred.sigma_w2.values, np.outer([2.0, 1.0, 1.0, 1 / 3], [0.25, 2.25]), rtol=1e-15
    )
    ident = pred.pre_rms.sel(init="scaled_identity")
    assert bool(ident.sel(activation="tanh").isnull().all())
    lin = ident.sel(activation="linear", depth=24, scale=1.5, bias_std=0.3).squeeze()
    q0 = float(lin[0]) ** 2
    np.testing.assert_allclose(lin[1] ** 2, 2.25 * q0 + 0.09, rtol=1e-12)
    # layers above a config's readout are NaN; sum loss: the readout gradient RMS is 1
    assert bool(pred.pre_rms.sel(depth=2, layer=4).isnull().all())
    g = pred.grad_post_rms.sel(init="he_uniform", depth=2, layer=3)
    np.testing.assert_allclose(g, 1.0)
    with pytest.raises(ValueError, match="swish_like"):
        th.predict_sweep(_fake_sweep(depth=2, activation=lambda_named("swish_like"), batch=2))


def lambda_named(name):
    def f(x):
        return x * jax.nn.sigmoid(x)

    f.__name__ = name
    return f


def test_compare_sweep_judges_by_the_tolerance():
    import xarray as xr

    ds = _fake_sweep(depth=24, width=256, activation="tanh", scale=1.2, batch=8, dtype="float16")
    pred = th.predict_sweep(ds)
    tol = th.compare_sweep(pred, pred)  # the prediction as a "measurement": zero error
    assert bool(tol.passed.all()) and float(np.abs(tol.pre_rms).max()) == 0.0
    t = tol.tol_pre_rms
    for factor, ok in ((0.5, True), (1.5, False)):
        fake = pred.copy()
        fake["pre_rms"] = pred.pre_rms * 10 ** (factor * t.fillna(0))
        assert bool(th.compare_sweep(fake, pred).passed.all()) is ok
    # beyond float16's range the theory (real arithmetic) is not judged
    fake = pred.copy()
    fake["pre_rms"] = xr.where(fake.layer == 2, 1e6, fake.pre_rms)
    cmp = th.compare_sweep(fake, pred)
    assert bool(cmp.tol_pre_rms.sel(layer=2).isnull().all()) and bool(cmp.passed.all())


def test_q_star_with_a_tiny_bias_is_not_zero():
    # q* ~ sigma_b^2 / (1 - sigma_w^2) for tiny q (tanh(u)^2 = u^2 to rounding): the fixed-point
    # step test once had an absolute floor of 1e-40 and returned 0 here (found by hypothesis).
    for sb in (8.9e-223, 1e-100, 1e-20):
        assert float(th.q_star("tanh", 0.3, sb)) == pytest.approx(sb / 0.7, rel=1e-12)


# ------------------------------------------------ issue 11: validation before anything compiles

# The jitted cores of the theory, by name: validation must refuse before any of them compiles.
_JITS = ("_diag_jit", "_cross_jit", "_iterate", "_solve", "_critical", "_forward")


# Counting for the whole module: the tests compare the totals before and after a refusal.
_COUNT = contextlib.ExitStack().enter_context(count_traces())


def _compilations() -> int:
    return sum(_COUNT.compiles(name) for name in _JITS)


def test_iterate_maps_depth_is_bounded_before_allocating(fake_memory):
    # depth=10**9 used to allocate 8 GB (and more on the host) before failing
    fake_memory(16 * 2**30)
    before = _compilations()
    with pytest.raises(ValueError, match=r"depth=1000000000 needs about 44\.7 GiB .*16\.0 GiB"):
        th.iterate_maps("tanh", 1.0, 0.0, q_in=1.0, depth=10**9)
    with pytest.raises(ValueError, match=r"depth=2147483648 is too large: at most 2147483647"):
        th.iterate_maps("tanh", 1.0, 0.0, q_in=1.0, depth=2**31)
    with pytest.raises(ValueError, match=r"depth=1000000000 needs about"):
        th.predict_profile("relu", 2.0, 0.0, 10**9)
    with pytest.raises(ValueError, match=r"depth=1000000000 needs about"):
        th.jacobian_spectrum_moments("tanh", 1.0, 0.0, 10**9)
    assert _compilations() == before


def test_points_and_order_are_bounded_before_allocating():
    before = _compilations()
    big = (np.ones((10**5, 1)), np.ones(10**5))  # 10^10 points: 80 GB before the quadrature
    with pytest.raises(ValueError, match=r"broadcast shape of \(q, sigma_w2, sigma_b2\)=\(100000"):
        th.q_map("tanh", 1.0, *big)
    with pytest.raises(ValueError, match=r"sigma_w2, sigma_b2, q0\)=\(100000, 100000\)"):
        th.chi_1("tanh", *big)
    with pytest.raises(ValueError, match=r"order=100000 needs about .* one point of the c-map"):
        th.c_map("tanh", 0.5, 1.0, 1.0, 0.0, order=10**5)
    with pytest.raises(ValueError, match=r"order=1000000000000 needs about"):
        th.critical_line("tanh", 0.0, order=10**12)
    with pytest.raises(ValueError, match=r"order=1000000000000 needs about"):
        th.predict_profile("tanh", 1.0, 0.0, 3, order=10**12)
    with pytest.raises(ValueError, match=r"depth=1000000000 needs about 7\.[0-9] TiB"):
        th.jacobian_spectrum_moments("tanh", 1.0, 0.0, 10**9)  # 10^9 layers' quadrature at once
    assert _compilations() == before


BROADCAST_CLASH = [
    (lambda a, b: th.q_map("tanh", 1.0, a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.q_map("tanh", a, b, 0.0), "q", "sigma_w2"),
    (lambda a, b: th.c_map("tanh", a, b, 1.0, 0.0), "c", "q"),
    (lambda a, b: th.c_map("tanh", 0.5, 1.0, a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.iterate_maps("tanh", a, b, q_in=1.0, depth=2), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.iterate_maps("tanh", 1.0, 0.0, q_in=a, c_in=b, depth=2), "q_in", "c_in"),
    (lambda a, b: th.mean_field("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.mean_field("tanh", a, 0.0, q0=b), "sigma_w2", "q0"),
    (lambda a, b: th.q_star("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.c_star("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.chi_1("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.xi_q("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.xi_c("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.phase("tanh", a, b), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.predict_profile("tanh", a, b, 3), "sigma_w2", "sigma_b2"),
    (lambda a, b: th.predict_profile("tanh", 1.0, a, 3, q0=b), "sigma_b2", "q0"),
]


@pytest.mark.parametrize(("call", "first", "second"), BROADCAST_CLASH)
def test_shape_mismatch_names_both_arguments(call, first, second):
    before = _compilations()
    match = rf"{first} \(shape \(3,\)\) and {second} \(shape \(2,\)\) do not broadcast"
    with pytest.raises(ValueError, match=match):
        call(np.full(3, 0.5), np.full(2, 0.5))
    assert _compilations() == before


def _scalar_out(z):
    return jnp.sum(z)


def _float32_out(z):
    return jnp.tanh(z).astype(jnp.float32)


@pytest.mark.parametrize(
    ("fn", "error", "match"),
    [
        (_scalar_out, ValueError, r"elementwise .*returned shape \(\)"),
        (lambda z: z[..., :1], ValueError, r"returned shape \(2, 1\)"),
        (_float32_out, TypeError, "keep the input's dtype: on a float64 array it returned"),
        (lambda z: (z, z), TypeError, "must return an array"),
        (np.tanh, TypeError, "JAX-traceable"),
        (lambda z: jnp.where(z > 0, z, 0.0) if bool(z[0, 0] > 0) else z, TypeError, "traceable"),
    ],
)
def test_activation_callables_are_checked_before_compiling(fn, error, match):
    before = _compilations()
    calls = [
        lambda: th.q_map(fn, 1.0, 1.0, 0.0),
        lambda: th.c_map(fn, 0.5, 1.0, 1.0, 0.0),
        lambda: th.iterate_maps(fn, 1.0, 0.0, q_in=1.0, depth=2),
        lambda: th.mean_field(fn, 1.0, 0.0),
        lambda: th.chi_1(fn, 1.0, 0.0),
        lambda: th.critical_line(fn, 0.0),
        lambda: th.predict_profile(fn, 1.0, 0.0, 3),
        lambda: th.jacobian_spectrum_moments(fn, 1.0, 0.0, 3),
    ]
    for call in calls:
        with pytest.raises(error, match=match):
            call()
    assert _compilations() == before
    if fn is not _float32_out:  # float32 is right for float32 parameters
        p = sk.mlp_init(jax.random.key(0), depth=2, width=4)
        with pytest.raises(error, match=match):
            th.jacobian_singular_values(p, jnp.ones(4), fn)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: th.q_map("tanh", "1.5", 1.0, 0.0), TypeError, "q .*got str '1.5'"),
        (lambda: th.q_map("tanh", 1.0, [True, False], 0.0), TypeError, "sigma_w2 .*bools"),
        (lambda: th.q_map("tanh", 1.0, 1.0, 1j), TypeError, "sigma_b2 .*complex"),
        (lambda: th.q_map("tanh", 1.0, None, 0.0), TypeError, "sigma_w2 .*NoneType"),
        (lambda: th.q_map("tanh", 1.0, {1.0}, 0.0), TypeError, "sigma_w2 .*set"),
        (lambda: th.q_map("tanh", [[1.0], [1.0, 2.0]], 1.0, 0.0), TypeError, "q .*rectangular"),
        (
            lambda: th.q_map("tanh", 1.0, 10**400, 0.0),
            ValueError,
            r"sigma_w2 \(the weight variance\) must be finite, got the int",
        ),
        (lambda: th.chi_1("tanh", np.inf, 0.0), ValueError, "sigma_w2 .*got inf"),
        (lambda: th.chi_1("tanh", 1.0, [0.0, -np.inf]), ValueError, r"got -inf at index \(1,\)"),
        (lambda: th.c_map("tanh", np.nan, 1.0, 1.0, 0.0), ValueError, "c .*got NaN"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, atol=[1e-9, 1e-8]), ValueError, "atol .*single"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, atol="1e-9"), TypeError, "atol"),
        (lambda: th.chi_1("tanh", 1.0, 0.0, method=["auto"]), ValueError, "method must be"),
        (lambda: th.chi_1([], 1.0, 0.0), TypeError, "activation must be a name"),
        (lambda: th.critical_line("tanh", 0.0, bracket="ab"), TypeError, "bracket must be a pair"),
        (lambda: th.critical_line("tanh", 0.0, bracket={1, 2}), TypeError, "bracket"),
        (lambda: th.critical_line("tanh", 0.0, bracket=(1.0,)), ValueError, "pair .*1 values"),
        (lambda: th.critical_line("tanh", 0.0, bracket=("1", 2)), TypeError, r"bracket\[0\]"),
        (lambda: th.critical_line("tanh", 0.0, bracket=(np.nan, 2)), ValueError, "got NaN"),
        (lambda: th.critical_line("tanh", 0.0, bracket=(5e-324, 1e4)), ValueError, "normal"),
        (lambda: th.critical_line("tanh", 0.0, bracket=(1.0, np.inf)), ValueError, "got inf"),
        (
            lambda: th.iterate_maps("tanh", 1.0, 0.0, q_in=1.0, depth=np.int64(0)),
            ValueError,
            ">= 1",
        ),
        (lambda: th.iterate_maps("tanh", 1.0, 0.0, q_in=1.0, depth=True), TypeError, "bool"),
        (lambda: th.predict_profile("tanh", 1.0, 0.0, 3, weights=["x"]), ValueError, "weights"),
        (lambda: th.jacobian_spectrum_moments("tanh", [1.0, 2.0], 0.0, 3), ValueError, "single"),
        (
            lambda: th.jacobian_spectrum_moments("tanh", 1.0, 0.0, 3, readout=1),
            TypeError,
            "readout",
        ),
        (lambda: th.jacobian_spectrum_moments("tanh", 1.0, 0.0, 3, q_in="1"), TypeError, "q_in"),
        (
            lambda: th.weight_variance("gaussian", np.nan),
            ValueError,
            "scale must be finite, got NaN",
        ),
        (lambda: th.weight_variance("gaussian", "2"), TypeError, "scale .*str"),
        (lambda: th.predict_sweep(3), TypeError, "ds must be a dataset .*int"),
        (lambda: th.predict_sweep(xr.Dataset(attrs={"spec": "{"})), ValueError, "unreadable"),
        (lambda: th.predict_sweep(xr.Dataset(attrs={"spec": "{}"})), ValueError, "lacks batch"),
        (lambda: th.compare_sweep(xr.Dataset(), n_sigma="4"), TypeError, "n_sigma"),
        (lambda: th.compare_sweep(xr.Dataset(), n_sigma=np.nan), ValueError, "n_sigma .*NaN"),
    ],
)
def test_bad_input_issue_11(call, error, match):
    before = _compilations()
    with pytest.raises(error, match=match):
        call()
    assert _compilations() == before


def test_sweep_datasets_are_checked():
    ds = _fake_sweep(depth=2, width=4, batch=2)
    with pytest.raises(TypeError, match="activations must be a dict"):
        th.predict_sweep(ds, activations=[jnp.tanh])
    with pytest.raises(TypeError, match="order"):
        th.predict_sweep(ds, order="128")
    with pytest.raises(ValueError, match=r"coordinate.*seed.*missing"):
        th.predict_sweep(ds.drop_vars("seed"))
    with pytest.raises(ValueError, match=r"ds must be .*variable\(s\) pre_rms, post_rms"):
        th.compare_sweep(ds, ds)
    pred = th.predict_sweep(ds)
    with pytest.raises(ValueError, match=r"prediction must be .*variable\(s\) grad_gain"):
        th.compare_sweep(pred, pred.drop_vars("grad_gain"))
    with pytest.raises(TypeError, match=r"\['order'\] with a prediction"):
        th.compare_sweep(pred, pred, order=64)


# Bad values per kind of argument: each is invalid whatever the other arguments are.
_BAD_ANY = ["1.0", None, True, 1j, {1.0: 2.0}, {1.0}, [[1.0], [1.0, 2.0]], [], object()]
_BAD = {
    "sigma_w2": [*_BAD_ANY, 0.0, -1.0, np.nan, np.inf, [1.0, -np.inf]],
    "sigma_b2": [*_BAD_ANY, -1e-3, np.nan, np.inf],
    "q": [*_BAD_ANY, -2.0, np.nan, np.inf, [0.5, np.nan]],
    "c": [*_BAD_ANY, 1.5, -1.01, np.nan],
    "order": [1, 0, -5, 2.5, "128", True, None, 10**12, [128]],
    "method": ["exact", 3, None, ["auto"]],
    "activation": ["swish", 3, None, _scalar_out, _float32_out, np.tanh, lambda: 0.0],
    "depth": [0, -1, 2.5, "3", True, None, 2**31, np.float64(3.0), [3]],
    "atol": [*_BAD_ANY, -1.0, np.nan, [1e-9, 1e-9]],
    "weights": ["haar", 3, None],
    "loss": ["l1", None, 3],
    "readout": ["yes", 1, None],
    "bracket": [(2.0, 1.0), (0.0, 1.0), ("a", 1.0), (1.0,), {1.0, 2.0}, (np.nan, 1.0), 3],
}
# Each function: a valid call and the arguments that may be corrupted (the argument kinds).
_CALLS = {
    "q_map": (
        lambda a: th.q_map(a["activation"], a["q"], a["sigma_w2"], a["sigma_b2"],
                           order=a["order"], method=a["method"]),
        ("activation", "q", "sigma_w2", "sigma_b2", "order", "method"),
    ),
    "c_map": (
        lambda a: th.c_map(a["activation"], a["c"], a["q"], a["sigma_w2"], a["sigma_b2"],
                           order=a["order"], method=a["method"]),
        ("activation", "c", "sigma_w2", "sigma_b2", "order", "method"),
    ),
    "iterate_maps": (
        lambda a: th.iterate_maps(a["activation"], a["sigma_w2"], a["sigma_b2"], q_in=a["q"],
                                  c_in=a["c"], depth=a["depth"], order=a["order"]),
        ("activation", "sigma_w2", "sigma_b2", "q", "c", "depth", "order"),
    ),
    "mean_field": (
        lambda a: th.mean_field(a["activation"], a["sigma_w2"], a["sigma_b2"], q0=a["q"],
                                order=a["order"], method=a["method"], atol=a["atol"]),
        ("activation", "sigma_w2", "sigma_b2", "q", "order", "method", "atol"),
    ),
    **{
        name: (
            (lambda f: lambda a: f(a["activation"], a["sigma_w2"], a["sigma_b2"],
                                   order=a["order"], atol=a["atol"]))(getattr(th, name)),
            ("activation", "sigma_w2", "sigma_b2", "order", "atol"),
        )
        for name in ("q_star", "c_star", "chi_1", "xi_q", "xi_c", "phase")
    },
    "critical_line": (
        lambda a: th.critical_line(a["activation"], a["sigma_b2"], bracket=a["bracket"],
                                   order=a["order"], method=a["method"]),
        ("activation", "sigma_b2", "bracket", "order", "method"),
    ),
    "predict_profile": (
        lambda a: th.predict_profile(a["activation"], a["sigma_w2"], a["sigma_b2"], a["depth"],
                                     a["q"], weights=a["weights"], loss=a["loss"],
                                     order=a["order"]),
        ("activation", "sigma_w2", "sigma_b2", "depth", "q", "weights", "loss", "order"),
    ),
    "jacobian_spectrum_moments": (
        lambda a: th.jacobian_spectrum_moments(a["activation"], a["sigma_w2"], a["sigma_b2"],
                                               a["depth"], weights=a["weights"],
                                               readout=a["readout"], order=a["order"]),
        ("activation", "sigma_w2", "sigma_b2", "depth", "weights", "readout", "order"),
    ),
}  # fmt: skip
_GOOD = dict(
    activation="tanh", q=1.0, c=0.5, sigma_w2=1.0, sigma_b2=0.0, order=16, method="auto",
    depth=3, atol=1e-9, weights="gaussian", loss="sum", readout=False, bracket=(1e-2, 1e2),
)  # fmt: skip


@given(st.data())
@settings(max_examples=60)
def test_property_bad_arguments_raise_type_or_value_error(data):
    name = data.draw(st.sampled_from(sorted(_CALLS)), label="function")
    call, params = _CALLS[name]
    bad = data.draw(st.lists(st.sampled_from(params), min_size=1, max_size=3, unique=True))
    args = dict(_GOOD)
    for p in bad:
        args[p] = data.draw(st.sampled_from(_BAD[p]), label=p)
    before = _compilations()
    with pytest.raises((TypeError, ValueError)):
        call(args)
    assert _compilations() == before  # refused before anything compiled


def test_subnormal_parameters_are_refused():
    # XLA:CPU reads a subnormal float64 input as 0: q* of tanh with sigma_b^2 = 2.2e-313 came back
    # 0 (found by hypothesis), where the exact value is about sqrt(sigma_b^2 / 2) = 3e-157.
    with pytest.raises(ValueError, match=r"sigma_b2.*smallest normal"):
        th.mean_field("tanh", 1.0, 2.2250738585e-313)
    with pytest.raises(ValueError, match=r"sigma_w2.*smallest normal"):
        th.q_map("tanh", 1.0, 5e-324, 0.0)
    assert th.q_star("tanh", 1.0, 0.0) == 0  # an exact 0 stays allowed
