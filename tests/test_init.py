"""Initializers: shapes and dtypes, variances at fixed keys, orthogonality, scaled identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit
from stabkit import init as sinit
from stabkit.init import get_initializer, initializer_names
from tests.conftest import DTYPES, jdtype

KEY = jax.random.key(20260101)

# Theoretical variance of one entry, for fan_in n and fan_out m, with the multiplier at 1.
VARIANCE = {
    "gaussian": lambda n, m: 1 / n,
    "glorot_normal": lambda n, m: 2 / (n + m),
    "glorot_uniform": lambda n, m: 2 / (n + m),
    "xavier_normal": lambda n, m: 2 / (n + m),
    "xavier_uniform": lambda n, m: 2 / (n + m),
    "he_normal": lambda n, m: 2 / n,
    "he_uniform": lambda n, m: 2 / n,
    "lecun_normal": lambda n, m: 1 / n,
    "lecun_uniform": lambda n, m: 1 / n,
    "standard": lambda n, m: 1 / (3 * n),
}
RANDOM = sorted(VARIANCE)


def test_registry_matches_the_issue():
    names = set(initializer_names())
    assert {"scaled_identity", "gaussian", "orthogonal", "standard"} <= names
    assert {"glorot_normal", "glorot_uniform", "xavier_normal", "xavier_uniform"} <= names
    assert {"he_normal", "lecun_normal"} <= names
    assert set(RANDOM) | {"scaled_identity", "orthogonal"} == names
    assert stabkit.initializer_names() == initializer_names()


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_initializer_gives_the_requested_shape_and_dtype(dtype):
    with jax.enable_x64(dtype == "float64"):
        for name in initializer_names():
            w = get_initializer(name)(KEY, (5, 3), jdtype(dtype))
            assert w.shape == (5, 3) and w.dtype == jdtype(dtype), name
            assert bool(jnp.all(jnp.isfinite(w))), name


# 240 x 400 = 96,000 draws: the sample variance of a normal has relative standard error
# sqrt(2 / N) = 0.46% (uniform: sqrt(0.8 / N) = 0.29%), so 3% is more than 6 standard errors.
# fan_in != fan_out, so a fan_in rule and a fan_avg rule give variances 25% apart.
SHAPE = (240, 400)
VAR_RTOL = 0.03


@pytest.mark.parametrize("name", RANDOM)
def test_variance_matches_the_fan_rule(name):
    n, m = SHAPE
    for gain in (1.0, 2.5):
        w = np.asarray(get_initializer(name, gain)(KEY, SHAPE, jnp.float32), np.float64)
        expected = gain**2 * VARIANCE[name](n, m)
        assert abs(w.var() / expected - 1) < VAR_RTOL, (name, gain, w.var(), expected)
        assert abs(w.mean()) < 4 * np.sqrt(expected / w.size)  # mean 0, 4 standard errors
    if "uniform" in name or name == "standard":
        limit = np.sqrt(3 * VARIANCE[name](n, m))
        assert np.abs(w).max() <= 2.5 * limit
        w1 = np.asarray(get_initializer(name)(KEY, SHAPE), np.float64)
        assert np.abs(w1).max() <= limit
        assert np.abs(w1).max() > 0.99 * limit  # fills the interval
    else:
        # a plain normal (not truncated): 96,000 draws reach beyond 3.5 standard deviations
        std = np.sqrt(VARIANCE[name](n, m))
        w1 = np.asarray(get_initializer(name)(KEY, SHAPE), np.float64)
        assert np.abs(w1).max() > 3.5 * std


def test_fan_in_versus_fan_avg_on_a_transposed_shape():
    """He uses fan_in only: transposing the shape changes its variance; Glorot's does not."""
    he_a = get_initializer("he_normal")(KEY, (100, 900)).var()
    he_b = get_initializer("he_normal")(KEY, (900, 100)).var()
    assert abs(float(he_a) / (2 / 100) - 1) < VAR_RTOL
    assert abs(float(he_b) / (2 / 900) - 1) < VAR_RTOL
    g_a = get_initializer("glorot_normal")(KEY, (100, 900)).var()
    g_b = get_initializer("glorot_normal")(KEY, (900, 100)).var()
    assert abs(float(g_a) / float(g_b) - 1) < VAR_RTOL


def test_standard_is_glorot_bengio_eq1():
    n = 256
    w = np.asarray(sinit.standard()(KEY, (n, 512)), np.float64)
    assert np.abs(w).max() <= 1 / np.sqrt(n)
    assert abs(w.var() * 3 * n - 1) < VAR_RTOL


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_orthogonal(shape, dtype):
    gain = 1.7
    with jax.enable_x64(dtype == "float64"):
        w = np.asarray(sinit.orthogonal(gain)(KEY, shape, jdtype(dtype)), np.float64)
    n, m = shape
    gram = w.T @ w if n >= m else w @ w.T
    tol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(n, m)), atol=tol * gain**2)
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), gain, rtol=tol)


def test_orthogonal_is_random_and_deterministic():
    a = sinit.orthogonal()(KEY, (8, 8))
    np.testing.assert_array_equal(a, sinit.orthogonal()(KEY, (8, 8)))
    b = sinit.orthogonal()(jax.random.key(1), (8, 8))
    assert not np.allclose(a, b)
    # Haar: the signs of R's diagonal are folded in, so the diagonal of Q has no sign bias.
    ws = jax.vmap(lambda k: sinit.orthogonal()(k, (4, 4)))(jax.random.split(KEY, 2000))
    assert abs(float(jnp.mean(jnp.diagonal(ws, axis1=1, axis2=2)))) < 0.05


def test_orthogonal_in_half_precision():
    for dtype in (jnp.float16, jnp.bfloat16):
        w = sinit.orthogonal()(KEY, (16, 16), dtype).astype(jnp.float32)
        assert w.dtype == jnp.float32
        np.testing.assert_allclose(w.T @ w, np.eye(16), atol=0.05)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_identity(dtype):
    with jax.enable_x64(dtype == "float64"):
        w = sinit.scaled_identity(1.5)(KEY, (2, 2), jdtype(dtype))
        np.testing.assert_array_equal(np.asarray(w, np.float64), [[1.5, 0], [0, 1.5]])
        r = sinit.scaled_identity(-0.5)(None, (2, 3), jdtype(dtype))  # the key is unused
        np.testing.assert_array_equal(np.asarray(r, np.float64), [[-0.5, 0, 0], [0, -0.5, 0]])


def test_biases():
    np.testing.assert_array_equal(sinit.zeros()(KEY, (3,)), np.zeros(3))
    assert sinit.bias_normal(0.0)(KEY, (3,), jnp.float16).dtype == jnp.float16
    b = np.asarray(sinit.bias_normal(0.3)(KEY, (50000,)), np.float64)
    assert abs(b.std() / 0.3 - 1) < VAR_RTOL / 2


def test_jax_nn_initializers_are_accepted():
    init = jax.nn.initializers.he_normal()
    assert get_initializer(init) is init
    w = get_initializer(jax.nn.initializers.orthogonal())(KEY, (4, 4), jnp.float32)
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)


def test_multiplier_may_be_traced():
    """A sweep vmaps over the scale: the result is the scale times the unit draw."""
    scales = jnp.array([0.5, 1.0, 2.0])
    ws = jax.vmap(lambda s: sinit.gaussian(s)(KEY, (8, 8)))(scales)
    unit = sinit.gaussian(1.0)(KEY, (8, 8))
    np.testing.assert_allclose(ws, scales[:, None, None] * unit[None], rtol=1e-6)
    eyes = jax.jit(jax.vmap(lambda a: sinit.scaled_identity(a)(None, (2, 2))))(scales)
    np.testing.assert_array_equal(eyes[:, 0, 0], scales)


def test_bad_input():
    with pytest.raises(ValueError, match=r"unknown initializer 'kaiming'.*he_normal"):
        get_initializer("kaiming")
    with pytest.raises(TypeError, match="init must be a name"):
        get_initializer(3)
    with pytest.raises(ValueError, match=r"scale=2\.0 applies only to a named"):
        get_initializer(jax.nn.initializers.he_normal(), 2.0)
    with pytest.raises(ValueError, match="sigma_w must be >= 0"):
        sinit.gaussian(-1.0)
    with pytest.raises(ValueError, match="gain must be finite"):
        sinit.orthogonal(float("nan"))
    with pytest.raises(TypeError, match="a must be a real number"):
        sinit.scaled_identity("big")
    with pytest.raises(ValueError, match=r"2-D shape.*\(2, 3, 4\)"):
        sinit.he_normal()(KEY, (2, 3, 4))
    with pytest.raises(ValueError, match="2-D shape"):
        sinit.lecun_uniform()(KEY, (0, 3))
    with pytest.raises(TypeError, match="floating-point dtype, got"):
        sinit.gaussian()(KEY, (2, 2), jnp.int32)


def test_init_rule_is_the_samplers_table():
    # One table: every registered name has a rule, and the sampler draws the variance it states.
    from stabkit.init import _INITIALIZERS, init_rule

    assert set(_INITIALIZERS) == set(initializer_names())
    for name in initializer_names():
        rule = init_rule(name)
        if rule.variance is None:
            continue
        w = get_initializer(name)(jax.random.key(1), (400, 300))
        # variance of 120,000 entries: relative standard error sqrt(2 / 120000) = 0.4%.
        assert float(w.var()) == pytest.approx(rule.variance(400, 300), rel=0.02), name
    with pytest.raises(ValueError, match="unknown init 'kaiming'"):
        init_rule("kaiming")
    with pytest.raises(TypeError, match="initializer name"):
        init_rule(3)
