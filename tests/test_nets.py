"""The functional MLP: init shapes, scan vs an unrolled loop vs NumPy float64, depth as data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import stabkit
from stabkit.nets import MLPParams, mlp_apply, mlp_init
from stabkit.tracecount import count_traces
from tests.conftest import DTYPES, eps, jdtype

KEY = jax.random.key(7)
NP_ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "sigmoid": special.expit}


def np_forward(params, x, activation, depth=None):
    """Plain NumPy float64 forward pass: the reference."""
    p = [np.asarray(a, np.float64) for a in params]
    w_in, b_in, w_hidden, b_hidden, w_out, b_out = p
    depth = len(w_hidden) + 1 if depth is None else depth
    h = NP_ACT[activation](np.asarray(x, np.float64) @ w_in + b_in)
    for w, b in zip(w_hidden[: depth - 1], b_hidden[: depth - 1], strict=True):
        h = NP_ACT[activation](h @ w + b)
    return h @ w_out + b_out


def unrolled(params, x, activation, depth):
    """A Python loop over the layers, op by op: the same arithmetic without lax.scan."""
    phi = stabkit.get_activation(activation)
    dot = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    h = phi(dot(x, params.w_in) + params.b_in)
    for i in range(depth - 1):
        h = phi(dot(h, params.w_hidden[i]) + params.b_hidden[i])
    return dot(h, params.w_out) + params.b_out


@pytest.fixture(scope="module")
def net():
    p = mlp_init(
        KEY, depth=6, width=8, in_dim=3, out_dim=2, init="gaussian", scale=1.5, bias_std=0.2
    )
    x = jax.random.normal(jax.random.key(1), (5, 3))
    return p, x


def test_init_shapes_and_defaults():
    p = mlp_init(KEY, depth=4, width=5, in_dim=3, out_dim=2, dtype=jnp.bfloat16)
    assert isinstance(p, MLPParams)
    assert [a.shape for a in p] == [(3, 5), (5,), (3, 5, 5), (3, 5), (5, 2), (2,)]
    assert all(a.dtype == jnp.bfloat16 for a in p)
    assert (p.max_depth, p.width, p.in_dim, p.out_dim) == (4, 5, 3, 2)
    assert not bool(jnp.any(p.b_in != 0))  # bias_std = 0: zeros
    q = mlp_init(KEY, depth=1, width=4)  # a single hidden layer: an empty stack, a square net
    assert q.w_hidden.shape == (0, 4, 4) and q.w_in.shape == (4, 4) and q.w_out.shape == (4, 4)
    assert mlp_apply(q, jnp.ones(4), activation="relu").shape == (4,)


def test_a_shallower_net_is_a_prefix_of_a_deeper_one():
    deep = mlp_init(KEY, depth=7, width=4, bias_std=0.5)
    shallow = mlp_init(KEY, depth=3, width=4, bias_std=0.5)
    for field in MLPParams._fields:
        a, b = getattr(shallow, field), getattr(deep, field)
        np.testing.assert_array_equal(a, b[:2] if field.endswith("hidden") else b)
    assert not np.array_equal(deep.w_hidden[0], deep.w_hidden[1])  # layers differ


def test_jax_nn_initializer_in_mlp_init():
    p = mlp_init(KEY, depth=3, width=16, init=jax.nn.initializers.orthogonal())
    np.testing.assert_allclose(p.w_hidden[1].T @ p.w_hidden[1], np.eye(16), atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_scan_equals_unrolled_and_numpy(net, activation):
    p, x = net
    out = mlp_apply(p, x, activation=activation)
    np.testing.assert_allclose(out, unrolled(p, x, activation, p.max_depth), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(out, np_forward(p, x, activation), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_equals_unrolled_in_every_dtype(dtype):
    with jax.enable_x64(dtype == "float64"):
        p = mlp_init(KEY, depth=5, width=4, init="orthogonal", bias_std=0.1, dtype=jdtype(dtype))
        x = jax.random.normal(jax.random.key(2), (3, 4), jdtype(dtype))
        out = mlp_apply(p, x, activation="tanh")
        assert out.dtype == jdtype(dtype)
        ref = np_forward(p, x, "tanh")
        # Every layer rounds; a tanh net with orthogonal weights does not amplify errors much.
        tol = 40 * eps(dtype)
        np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(
            np.asarray(out, np.float64),
            np.asarray(unrolled(p, x, "tanh", 5), np.float64),
            rtol=4 * eps(dtype),
            atol=4 * eps(dtype),
        )


def test_depth_is_data_one_compilation(net):
    """A trace compiled for max_depth serves every depth; masking equals building shallower."""
    p, x = net
    with count_traces() as c:
        outs = [mlp_apply(p, x, activation="tanh", depth=d) for d in range(1, p.max_depth + 1)]
    assert c.traces("_apply_jit") <= 1  # 0 where an earlier test compiled it for these shapes
    for d, out in enumerate(outs, start=1):
        np.testing.assert_allclose(out, np_forward(p, x, "tanh", d), rtol=1e-5, atol=1e-6)
    for d in (1, 2):  # bit for bit (each new depth compiles a new shallow net: keep it short)
        shallow = mlp_init(
            KEY, depth=d, width=8, in_dim=3, out_dim=2, init="gaussian", scale=1.5, bias_std=0.2
        )
        np.testing.assert_array_equal(outs[d - 1], mlp_apply(shallow, x, activation="tanh"))


def test_vmap_over_depth_and_seed(net):
    p, x = net
    depths = jnp.array([1, 3, 6])
    out = jax.jit(jax.vmap(lambda d: mlp_apply(p, x, activation="relu", depth=d)))(depths)
    for i, d in enumerate([1, 3, 6]):
        np.testing.assert_allclose(out[i], np_forward(p, x, "relu", d), rtol=1e-5, atol=1e-6)
    keys = jax.random.split(KEY, 3)
    ps = jax.vmap(lambda k: mlp_init(k, depth=4, width=8, in_dim=3, out_dim=2))(keys)
    outs = jax.vmap(lambda q: mlp_apply(q, x, activation="relu"))(ps)
    for i in range(3):
        q = jax.tree.map(lambda a, i=i: a[i], ps)
        np.testing.assert_allclose(outs[i], np_forward(q, x, "relu"), rtol=1e-5, atol=1e-6)


def test_grad_matches_numpy_backward(net):
    """d/dW of 0.5 * sum(y^2), against a hand-written float64 backward pass."""
    p, x = net
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p)
        x64 = jnp.asarray(x, jnp.float64)

        def loss(q):
            return 0.5 * jnp.sum(mlp_apply(q, x64, activation="tanh") ** 2)

        g = jax.jit(jax.grad(loss))(p64)  # one compilation; eagerly, the jitted apply's two
    w_in, b_in, w_hid, b_hid, w_out, b_out = (np.asarray(a, np.float64) for a in p64)
    hs = [np.tanh(np.asarray(x64) @ w_in + b_in)]
    for w, b in zip(w_hid, b_hid, strict=True):
        hs.append(np.tanh(hs[-1] @ w + b))
    y = hs[-1] @ w_out + b_out
    gy = y
    np.testing.assert_allclose(g.w_out, hs[-1].T @ gy, rtol=1e-12)
    gh = gy @ w_out.T
    for i in range(len(w_hid) - 1, -1, -1):
        gz = gh * (1 - hs[i + 1] ** 2)
        np.testing.assert_allclose(g.w_hidden[i], hs[i].T @ gz, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(g.b_hidden[i], gz.sum(0), rtol=1e-11, atol=1e-14)
        gh = gz @ w_hid[i].T
    gz = gh * (1 - hs[0] ** 2)
    np.testing.assert_allclose(g.w_in, np.asarray(x64).T @ gz, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a", [0.5, 1.0, 1.5])
def test_the_notes_output_is_a_to_the_l_times_x(dtype, a):
    """Width 2, W = a I, zero biases, linear: y = a^l x with l = depth + 1 matrices."""
    depth = 12
    x = np.array([[0.75, -1.25], [2.0, 0.5]])
    with jax.enable_x64(dtype == "float64"):
        p = mlp_init(
            KEY, depth=depth, width=2, init="scaled_identity", scale=a, dtype=jdtype(dtype)
        )
        out = jax.vmap(lambda d: mlp_apply(p, x, activation="linear", depth=d))(jnp.arange(1, 13))
        out = np.asarray(out, np.float64)
    for d in range(1, depth + 1):
        expected = stabkit.deep_linear_gain(a, d + 1) * x
        # One rounding per layer (the zero off-diagonal terms add exactly), and x's own rounding.
        tol = (d + 3) * eps(dtype)
        np.testing.assert_allclose(out[d - 1], expected, rtol=tol, atol=0)


def test_bad_input():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        mlp_init(KEY, depth=0, width=2)
    with pytest.raises(ValueError, match="width must be >= 1"):
        mlp_init(KEY, depth=2, width=0)
    with pytest.raises(ValueError, match="in_dim must be >= 1"):
        mlp_init(KEY, depth=2, width=2, in_dim=-1)
    with pytest.raises(TypeError, match="depth must be an int"):
        mlp_init(KEY, depth=2.5, width=2)
    with pytest.raises(ValueError, match="unknown initializer 'xavier'"):
        mlp_init(KEY, depth=2, width=2, init="xavier")
    with pytest.raises(TypeError, match="floating-point dtype"):
        mlp_init(KEY, depth=2, width=2, dtype=jnp.int8)
    with pytest.raises(TypeError, match="PRNG key"):
        mlp_init(0, depth=2, width=2)
    with pytest.raises(ValueError, match=r"initializer returned shape \(3, 3\)"):
        mlp_init(KEY, depth=2, width=2, init=lambda k, s, d: jnp.zeros((3, 3), d))
    # the shallow net of test_a_shallower_net_is_a_prefix_of_a_deeper_one (its compilation)
    p = mlp_init(KEY, depth=3, width=4, bias_std=0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\) or \(4,\), got \(4, 3\)"):
        mlp_apply(p, jnp.ones((4, 3)), activation="relu")
    with pytest.raises(TypeError, match="floating-point dtype"):
        mlp_apply(p, jnp.ones((4, 4), jnp.int32), activation="relu")
    with pytest.raises(ValueError, match="unknown activation 'rleu'"):
        mlp_apply(p, jnp.ones(4), activation="rleu")
    with pytest.raises(ValueError, match="depth=4 exceeds the 3 hidden layers"):
        mlp_apply(p, jnp.ones(4), activation="relu", depth=4)
    with pytest.raises(TypeError, match="depth must be an int, got the bool"):
        mlp_apply(p, jnp.ones(4), activation="relu", depth=True)
    with pytest.raises(TypeError, match="params must be an MLPParams"):
        mlp_apply(tuple(p), jnp.ones(4), activation="relu")
    with pytest.raises(ValueError, match="inconsistent shapes"):
        mlp_apply(p._replace(b_out=jnp.ones(3)), jnp.ones(4), activation="relu")
    with pytest.raises(TypeError, match="share one floating dtype"):
        mlp_apply(p._replace(b_out=p.b_out.astype(jnp.float16)), jnp.ones(4), activation="relu")
