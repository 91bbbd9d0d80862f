"""Tests for stabkit.theory: closed forms vs quadrature, fixed points, criticality, Monte Carlo.

Tolerances (float64 throughout the theory):

* closed form vs Gauss-Hermite quadrature: linear exact (1e-12); erf, smooth, 1e-9 at order 128
  for q <= 3; relu's kink limits the 2-D rule to ~1/order (4e-3 at order 128 is asserted).
* fixed points by substitution: 1e-12 relative (Newton converges to rounding).
* Monte Carlo (fixed keys): the mean over S nets within 4 standard errors of the maps at every
  layer (the standard error from the spread over the S nets).
* Jacobian moments: pooled over spectra, within 3 standard errors plus a finite-width allowance
  of (L + 1)/N relative (corrections to free probability are O(L/N)).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stabkit as sk
from stabkit import theory as th

# ------------------------------------------------------------------------- closed forms, quadrature

Q = np.array([0.05, 0.5, 1.0, 3.0])[:, None]
C = np.linspace(-1.0, 1.0, 11)


@pytest.mark.parametrize(
    ("activation", "rtol_q", "atol_c"),
    [("linear", 1e-12, 1e-12), ("erf", 1e-9, 1e-9), ("relu", 1e-12, 4e-3)],
)
def test_closed_forms_match_quadrature(activation, rtol_q, atol_c):
    for sw, sb in [(0.7, 0.0), (1.5, 0.1), (2.5, 0.3)]:
        qa = th.q_map(activation, Q, sw, sb, method="closed")
        qb = th.q_map(activation, Q, sw, sb, method="quadrature")
        np.testing.assert_allclose(qa, qb, rtol=rtol_q)
        ca = th.c_map(activation, C, Q, sw, sb, method="closed")
        cb = th.c_map(activation, C, Q, sw, sb, method="quadrature")
        np.testing.assert_allclose(ca, cb, atol=atol_c)


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
    # The default order 128 against 256: exact to rounding for q <= 1, ~1e-7 at q = 3 (tanh's
    # integrand narrows as 1/sqrt(q) while the nodes stay put).
    a = th.c_map("tanh", C, Q, 1.8, 0.05)
    b = th.c_map("tanh", C, Q, 1.8, 0.05, order=256)
    np.testing.assert_allclose(a[:3], b[:3], atol=1e-12)
    np.testing.assert_allclose(a[3], b[3], atol=2e-7)
    a = th.q_map("tanh", Q, 1.8, 0.05)
    np.testing.assert_allclose(a, th.q_map("tanh", Q, 1.8, 0.05, order=256), rtol=2e-7)


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
    size = th._solve._cache_size()
    th.mean_field("tanh", np.linspace(2, 3, 5), 0.1, order=40)
    assert th._solve._cache_size() == size


def test_x64_stays_contained():
    before = jax.config.jax_enable_x64
    assert isinstance(th.chi_1("tanh", 1.5, 0.05), np.float64)
    assert jax.config.jax_enable_x64 == before


@settings(max_examples=15)
@given(
    sw=st.floats(0.3, 4.0),
    sb=st.floats(0.0, 0.5),
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

    for sw, sb in [(1.2, 0.05), (1.7609546, 0.05), (3.0, 0.05)]:
        z = np.asarray(measure(sw, sb), np.float64)
        q = np.mean(z**2, axis=-1)
        c = np.mean(z[..., 0, :] * z[..., 1, :], axis=-1) / np.sqrt(q[..., 0] * q[..., 1])
        it = th.iterate_maps("tanh", sw, sb, q_in=1.0, c_in=c_in, depth=depth + 1)
        for measured, theory in ((q.mean(-1), it.q[1:]), (c, it.c[1:])):
            se = measured.std(axis=0, ddof=1) / math.sqrt(seeds)
            assert np.all(np.abs(measured.mean(0) - theory) <= 4 * se), (sw, measured, theory)
    assert measure._cache_size() == 1  # one compilation for every point


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
        (lambda: th.mean_field("tanh", [1.0, np.nan], 0.0), ValueError, "sigma_w2.*nan"),
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
