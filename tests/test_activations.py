"""Activations by name: shapes and dtypes, derivatives against hand-written float64 formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special

import stabkit
from stabkit.activations import (
    activation_names,
    derivative,
    get_activation,
    select_activation,
    value_and_derivative,
)
from tests.conftest import DTYPES, jdtype

NAMES = activation_names()

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(z):
    return special.expit(z)


# Independent float64 references: each derivative written out by hand (not by autodiff).
REFERENCE = {
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (
        lambda z: np.where(z > 0, z, 0.01 * z),
        lambda z: np.where(z > 0, 1.0, 0.01),
    ),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(z)), lambda z: np.where(z > 0, 1.0, np.exp(z))),
    "selu": (
        lambda z: _SELU_SCALE * np.where(z > 0, z, _SELU_ALPHA * np.expm1(z)),
        lambda z: _SELU_SCALE * np.where(z > 0, 1.0, _SELU_ALPHA * np.exp(z)),
    ),
    "gelu": (
        lambda z: z * special.ndtr(z),
        lambda z: special.ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
    ),
    "gelu_tanh": (
        lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
        lambda z: (
            0.5 * (1 + np.tanh(u := math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
            + 0.5 * z * (1 - np.tanh(u) ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * z**2)
        ),
    ),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1 - _sigmoid(z))),
    "softplus": (lambda z: np.logaddexp(z, 0), _sigmoid),
    "silu": (
        lambda z: z * _sigmoid(z),
        lambda z: _sigmoid(z) + z * _sigmoid(z) * (1 - _sigmoid(z)),
    ),
    "erf": (special.erf, lambda z: 2 / math.sqrt(math.pi) * np.exp(-z * z)),
}

# Away from the kinks at 0, where one-sided derivatives differ.
GRID = np.concatenate([np.linspace(-6, -0.01, 97), np.linspace(0.01, 6, 97)])


def test_registry_matches_the_issue():
    required = {"linear", "relu", "leaky_relu", "elu", "selu", "gelu", "tanh", "sigmoid"}
    required |= {"softplus", "silu", "erf"}
    assert required <= set(NAMES)
    assert set(REFERENCE) == set(NAMES), "every registered activation needs a reference"
    assert stabkit.activation_names() == NAMES


def all_activations(z):
    """Every registered activation and its derivative, in one compiled function."""
    return {name: value_and_derivative(name)(z) for name in NAMES}


@pytest.fixture(scope="module")
def float64_values():
    with jax.enable_x64(True):
        out = jax.jit(all_activations)(jnp.asarray(GRID, jnp.float64))
        derivs = jax.jit(lambda z: {n: derivative(n)(z) for n in NAMES})(GRID)
    return out, derivs


@pytest.mark.parametrize("name", NAMES)
def test_value_and_derivative_match_float64_formulas(float64_values, name):
    f_ref, df_ref = REFERENCE[name]
    out, derivs = float64_values
    y, dy = out[name]
    assert y.dtype == dy.dtype == np.float64
    np.testing.assert_allclose(np.asarray(y), f_ref(GRID), rtol=1e-13, atol=1e-15)
    # atol: the references themselves cancel (gelu_tanh's 1 + tanh(u) for u << 0).
    np.testing.assert_allclose(np.asarray(dy), df_ref(GRID), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(derivs[name]), np.asarray(dy))


@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_and_dtype_preserved(dtype):
    with jax.enable_x64(dtype == "float64"):
        z = jnp.asarray(np.linspace(-3, 3, 12).reshape(3, 4), jdtype(dtype))
        for name, (y, dy) in jax.jit(all_activations)(z).items():
            assert y.shape == dy.shape == (3, 4), name
            assert y.dtype == dy.dtype == jdtype(dtype), name
            assert bool(jnp.all(jnp.isfinite(dy))), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_derivative_is_at_most_a_quarter(dtype):
    """The note's bound sigma'(z) = sigma(z)(1 - sigma(z)) <= 1/4, reached at z = 0."""
    with jax.enable_x64(dtype == "float64"):
        z = jnp.asarray(np.linspace(-40, 40, 80001), jdtype(dtype))
        d = np.asarray(derivative("sigmoid")(z), np.float64)
        assert not np.isnan(d).any()
        assert d.max() <= 0.25
        assert derivative("sigmoid")(jnp.zeros((), jdtype(dtype))) == 0.25
        # "almost 0 when the value has a very large magnitude": below 1e-4 beyond |z| = 10.
        far = np.abs(np.asarray(z, np.float64)) > 10
        assert d[far].max() < 1e-4


def test_relu_derivative_is_one_or_zero():
    d = derivative("relu")(jnp.array([-2.0, -0.0, 0.0, 3.0]))
    np.testing.assert_array_equal(d, [0.0, 0.0, 0.0, 1.0])


SMOOTH = ("tanh", "sigmoid", "gelu", "softplus")
_by_jvp = jax.jit(lambda z: [derivative(n)(z) for n in SMOOTH])
_by_grad = jax.jit(lambda z: [jax.vmap(jax.grad(get_activation(n)))(z) for n in SMOOTH])


@given(st.lists(st.floats(-20, 20, width=32), min_size=16, max_size=16))
def test_jvp_with_ones_equals_elementwise_grad(values):
    """For an elementwise function the jvp with ones is the diagonal of the Jacobian."""
    z = jnp.asarray(values, jnp.float32)
    for name, a, b in zip(SMOOTH, _by_jvp(z), _by_grad(z), strict=True):
        # The same formula compiled differently (fused or not): equal to 2 ulps of 1, the scale of
        # the cancelling 1 - tanh(z)^2.
        np.testing.assert_allclose(a, b, rtol=2.4e-7, atol=2.4e-7, err_msg=name)


def test_user_callable():
    cube = lambda z: z**3
    assert get_activation(cube) is cube
    np.testing.assert_allclose(derivative(cube)(jnp.array([1.0, -2.0])), [3.0, 12.0])


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*relu.*sigmoid"):
        get_activation("swish")


@pytest.mark.parametrize("bad", [3, None, ["relu"]])
def test_non_callable_is_a_type_error(bad):
    with pytest.raises(TypeError, match="activation must be a name"):
        get_activation(bad)


def test_select_activation_is_data():
    choices = ["relu", "tanh", "sigmoid", "linear"]
    z = jnp.linspace(-3, 3, 7)
    stacked = jax.jit(jax.vmap(lambda i: select_activation(choices, i)(z)))(jnp.arange(4))
    for i, name in enumerate(choices):
        np.testing.assert_allclose(stacked[i], get_activation(name)(z), rtol=1e-6)
    # its derivative is the selected branch's
    d = jax.vmap(lambda i: derivative(select_activation(choices, i))(z))(jnp.arange(4))
    np.testing.assert_allclose(d[2], derivative("sigmoid")(z), rtol=1e-6)
    assert select_activation(["tanh"], 0) is jnp.tanh


def test_select_activation_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        select_activation([], 0)
    with pytest.raises(ValueError, match="unknown activation"):
        select_activation(["relu", "nope"], 0)
    with pytest.raises(TypeError, match="integer scalar"):
        select_activation(["relu", "tanh"], 0.5)
