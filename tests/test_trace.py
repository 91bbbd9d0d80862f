"""The per-layer trace: against NumPy float64, the note's example in every dtype, compile count."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special

import stabkit
from stabkit.deep_linear import deep_linear_gain, deep_linear_theory
from stabkit.nets import mlp_apply, mlp_init
from stabkit.tracecount import count_traces
from stabkit.tracing import Trace, trace
from tests.conftest import DTYPES, jdtype, np_dtype

KEY = jax.random.key(3)

# --------------------------------------------------------------------------- NumPy reference

NP_ACT = {
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
    "sigmoid": (special.expit, lambda z: special.expit(z) * (1 - special.expit(z))),
}


def rms(v, axis=None):
    return np.sqrt(np.mean(np.square(v), axis=axis))


def np_trace(params, x, activation, loss, depth, threshold=1e-2):
    """A plain float64 forward and backward pass, written out by hand, and its statistics."""
    f, df = NP_ACT[activation]
    w_in, b_in, w_hid, b_hid, w_out, b_out = (np.asarray(a, np.float64) for a in params)
    ws = [w_in, *w_hid[: depth - 1]]
    bs = [b_in, *b_hid[: depth - 1]]
    hs, zs = [np.asarray(x, np.float64)], [np.asarray(x, np.float64)]
    for w, b in zip(ws, bs, strict=True):
        zs.append(hs[-1] @ w + b)
        hs.append(f(zs[-1]))
    y = hs[-1] @ w_out + b_out
    zs.append(y)
    hs.append(y)
    gy = y / y.size if loss == "mse" else np.ones_like(y)
    g_h = [None] * (depth + 2)
    g_z = [None] * (depth + 2)
    g_w = [np.nan] * (depth + 2)
    g_h[depth + 1] = g_z[depth + 1] = gy
    g_w[depth + 1] = rms(hs[depth].T @ gy)
    g_h[depth] = gy @ w_out.T
    for layer in range(depth, 0, -1):
        g_z[layer] = g_h[layer] * df(zs[layer])
        g_w[layer] = rms(hs[layer - 1].T @ g_z[layer])
        g_h[layer - 1] = g_z[layer] @ ws[layer - 1].T
    g_z[0] = g_h[0]
    hidden = slice(1, depth + 1)
    dphi = [np.full(1, np.nan)] + [df(z) for z in zs[hidden]] + [np.full(1, np.nan)]
    return {
        "pre_rms": [rms(z) for z in zs],
        "pre_max": [np.abs(z).max() for z in zs],
        "post_rms": [rms(h) for h in hs],
        "post_max": [np.abs(h).max() for h in hs],
        "grad_pre_rms": [rms(g) for g in g_z],
        "grad_post_rms": [rms(g) for g in g_h],
        "grad_post_max": [np.abs(g).max() for g in g_h],
        "grad_w_rms": g_w,
        "dphi_rms": [rms(d) for d in dphi],
        "dphi_max": [np.abs(d).max() for d in dphi],
        "saturated": [np.nan] + [np.mean(np.abs(d) < threshold) for d in dphi[hidden]] + [np.nan],
        "dead": [np.nan] + [np.mean(np.all(d == 0, axis=0)) for d in dphi[hidden]] + [np.nan],
        "loss": 0.5 * np.mean(y**2) if loss == "mse" else y.sum(),
    }


SMALL = dict(depth=4, width=3, in_dim=2, out_dim=2, init="gaussian", scale=1.6, bias_std=0.4)


@pytest.fixture(scope="module")
def small():
    """A small float32 net with biases and a batch; traces share one compilation per activation."""
    params = mlp_init(KEY, **SMALL)
    x = jax.random.normal(jax.random.key(4), (5, 2)) * 1.5
    return params, x


def assert_matches_reference(t, ref, depth, rtol, atol):
    n = depth + 2
    for field, expected in ref.items():
        got = np.asarray(getattr(t, field), np.float64)
        got = got[:n] if got.ndim else got
        np.testing.assert_allclose(got, np.asarray(expected), rtol=rtol, atol=atol, err_msg=field)


@pytest.mark.parametrize(
    ("activation", "loss"), [("tanh", "mse"), ("relu", "sum"), ("sigmoid", "mse")]
)
def test_trace_matches_numpy_float64(activation, loss):
    with jax.enable_x64(True):
        params = mlp_init(KEY, dtype=jnp.float64, **SMALL)
        x = np.asarray(jax.random.normal(jax.random.key(4), (5, 2), jnp.float64)) * 1.5
        for depth in (4, 2):
            t = trace(params, x, activation=activation, loss=loss, depth=depth)
            ref = np_trace(params, x, activation, loss, depth)
            assert_matches_reference(t, ref, depth, rtol=1e-12, atol=1e-15)
            assert t.pre_rms.dtype == jnp.float64


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_trace_matches_numpy_in_float32(small, activation):
    params, x = small
    t = trace(params, x, activation=activation)
    assert t.pre_rms.dtype == jnp.float32
    ref = np_trace(params, x, activation, "mse", 4)
    assert_matches_reference(t, ref, 4, rtol=2e-5, atol=1e-7)


def test_structure_padding_and_census(small):
    params, x = small
    t = jax.tree.map(np.asarray, trace(params, x, activation="tanh", depth=2))
    assert isinstance(t, Trace)
    layers = params.max_depth + 2
    assert all(np.shape(a) == (layers,) for a in jax.tree.leaves(t) if np.ndim(a))
    np.testing.assert_array_equal(t.valid, [True, True, True, True, False, False])
    np.testing.assert_array_equal(t.units, [2, 3, 3, 2, 0, 0])
    assert np.isnan(t.post_rms[4:]).all() and np.isnan(t.grad_w_rms[[0, 4, 5]]).all()
    assert np.isnan(t.saturated[[0, 3, 4, 5]]).all()  # no activation at the input and readout
    for c in (t.pre_census, t.post_census, t.grad_census):
        total = sum(np.asarray(v) for v in c)
        np.testing.assert_array_equal(total, np.asarray(t.units) * x.shape[0])
    assert int(t.depth) == 2
    np.testing.assert_allclose(t.output_rms, t.post_rms[3])
    np.testing.assert_allclose(
        t.output_rms,
        jnp.sqrt(jnp.mean(mlp_apply(params, x, activation="tanh", depth=2) ** 2)),
        rtol=1e-6,
    )
    for first in ("inf_forward", "nan_forward", "zero_forward", "inf_backward", "zero_backward"):
        assert int(getattr(t, "first_" + first)) == -1
    assert int(t.first_nonfinite_forward) == int(t.first_nonfinite_backward) == -1


def test_masked_equals_sliced(small):
    """A deep net run to depth d is bit-for-bit the net built with d layers (valid layers)."""
    params, x = small
    shallow = mlp_init(KEY, **{**SMALL, "depth": 2})
    a = trace(params, x, activation="tanh", depth=2)
    b = trace(shallow, x, activation="tanh")
    for field in Trace._fields:
        va, vb = getattr(a, field), getattr(b, field)
        for la, lb in zip(jax.tree.leaves(va), jax.tree.leaves(vb), strict=True):
            la, lb = np.asarray(la), np.asarray(lb)
            np.testing.assert_array_equal(la[: lb.shape[0]] if la.ndim else la, lb, err_msg=field)


def test_one_compilation_serves_every_depth(small):
    params, x = small
    with count_traces() as c:
        traces = [trace(params, x, activation="sigmoid", depth=d) for d in range(1, 5)]
        traces.append(trace(params, x, activation="sigmoid", saturation_threshold=0.2))
    assert c.traces("_trace_jit") == 1 and c.compiles("_trace_jit") == 1
    # vmap over depth: one more trace of the same kernel, batched; same numbers.
    batched = jax.jit(jax.vmap(lambda d: trace(params, x, activation="sigmoid", depth=d)))(
        jnp.arange(1, 5)
    )
    assert batched.post_rms.shape == (4, 6)
    for d, t in enumerate(traces[:4]):
        np.testing.assert_allclose(batched.post_rms[d], t.post_rms, rtol=1e-6)
        np.testing.assert_allclose(batched.grad_w_rms[d], t.grad_w_rms, rtol=1e-6)
        np.testing.assert_array_equal(batched.valid[d], t.valid)
    assert not np.array_equal(traces[4].saturated, traces[3].saturated)


def test_vmap_over_seeds_scales_and_activations(small):
    """What a sweep does: configs as data (seed, scale, depth, activation index) in one kernel."""
    _, x = small
    names = ("relu", "tanh", "sigmoid")

    def one(seed, scale, depth, act):
        p = mlp_init(jax.random.key(seed), **{**SMALL, "scale": scale})
        phi = stabkit.select_activation(names, act)
        return p, trace(p, x, activation=phi, depth=depth)

    seeds, scales = jnp.array([0, 1, 2]), jnp.array([0.5, 1.0, 2.0])
    depths, acts = jnp.array([4, 2, 3]), jnp.array([0, 1, 2])
    params, batched = jax.jit(jax.vmap(one))(seeds, scales, depths, acts)
    assert batched.grad_post_rms.shape == (3, 6)
    for i in range(3):
        p = jax.tree.map(lambda a, i=i: a[i], params)
        # the scale is data: the net is the scale times the unit-scale net of the same seed
        unit = mlp_init(jax.random.key(int(seeds[i])), **{**SMALL, "scale": 1.0})
        np.testing.assert_allclose(p.w_hidden, scales[i] * unit.w_hidden, rtol=1e-6)
        t = trace(p, x, activation=names[i], depth=int(depths[i]))
        for field in ("post_rms", "grad_post_rms", "grad_w_rms", "saturated"):
            np.testing.assert_allclose(getattr(batched, field)[i], getattr(t, field), rtol=1e-5)


def test_grad_through_trace(small):
    params, x = small

    def both(params):
        g1 = jax.grad(lambda p: trace(p, x, activation="tanh").loss)(params)
        g2 = jax.grad(lambda p: 0.5 * jnp.mean(mlp_apply(p, x, activation="tanh") ** 2))(params)
        return g1, g2

    # one compiled program for both gradients (eagerly, the gradient through the jitted trace
    # compiles its forward and its transpose apart, each with every statistic trace computes)
    g1, g2 = jax.jit(both)(params)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_dead_and_saturated_units(small):
    """relu units with a very negative bias never fire: dead; the fractions match NumPy."""
    params, x = small
    b = params.b_hidden.at[0, :2].set(-100.0)  # layer 2: units 0 and 1 dead
    p = params._replace(b_hidden=b)
    t = trace(p, x, activation="relu")
    assert float(t.dead[2]) == pytest.approx(2 / 3)
    ref = np_trace(p, x, "relu", "mse", 4)
    np.testing.assert_allclose(t.dead[1:5], ref["dead"][1:5])
    np.testing.assert_allclose(t.saturated[1:5], ref["saturated"][1:5])


# ----------------------------------------------------------------------- the note's example

# Per dtype: a depth past both the overflow of 1.5^l and the underflow of 0.5^l (x = 1).
NOTE_DEPTH = {"float16": 40, "bfloat16": 240, "float32": 240, "float64": 1800}


def simulate_chain(a, x, dtype, layers, flush):
    """h^l = round(a * h^{l-1}) in ``dtype`` with NumPy/ml_dtypes rounding (flush: FTZ/DAZ)."""
    dt = np_dtype(dtype)
    tiny = float(ml_dtypes.finfo(dt).smallest_normal)
    h = np.asarray(x, dt)
    out = [h]
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(layers):
            h = (np.asarray(a, dt) * h).astype(dt)
            if flush:
                h = np.where(np.abs(h.astype(np.float64)) < tiny, np.zeros_like(h), h)
            out.append(h)
    return [np.asarray(v, np.float64) for v in out]


def first(mask):
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else -1


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_notes_example_in_every_dtype(dtype):
    """W = aI, width 2, zero biases, linear: a = 1.5 overflows to inf, then 0 * inf gives NaN."""
    depth = NOTE_DEPTH[dtype]
    n_layers = depth + 2
    x = np.array([[1.0, 1.0]])
    with jax.enable_x64(dtype == "float64"):
        base = mlp_init(KEY, depth=depth, width=2, init="scaled_identity", dtype=jdtype(dtype))
        up = trace(jax.tree.map(lambda w: 1.5 * w, base), x, activation="linear", loss="sum")
        down = trace(jax.tree.map(lambda w: 0.5 * w, base), x, activation="linear", loss="sum")
        up, down = jax.tree.map(np.asarray, (up, down))

    # Forward: the first inf is where the rounded chain 1.5^l overflows; the next layer computes
    # 1.5 * inf + 0 * inf = NaN (the zero off-diagonal entries times inf).
    chain = simulate_chain(1.5, x, dtype, depth + 1, flush=False)
    k = first([np.isinf(h).any() for h in chain])
    assert k == stabkit.overflow_depth(1.5, dtype).step
    assert int(up.first_inf_forward) == k
    assert int(up.first_nan_forward) == k + 1
    assert int(up.first_nonfinite_forward) == k
    assert up.post_census.inf[k] == 2 and up.post_census.nan[k + 1] == 2
    assert (up.post_census.nan[k + 1 :] == 2).all()
    np.testing.assert_array_equal(up.post_max[:k], [np.abs(h).max() for h in chain[:k]])
    # x = (1, 1): the RMS is the max, up to the largest finite values (regression: the RMS once
    # divided by a broadcast max, which XLA computes as a multiply by 1/max, flushed to 0 on CPU).
    stat_eps = float(jnp.finfo(jnp.promote_types(jdtype(dtype), jnp.float32)).eps)
    np.testing.assert_allclose(up.post_rms[:k], up.post_max[:k], rtol=4 * stat_eps)
    # Backward (loss = sum: the output gradient is 1): dL/dh^l = 1.5^(L - l), L = depth + 1.
    big_l = depth + 1
    assert int(up.first_inf_backward) == big_l - k
    assert int(up.first_nan_backward) == big_l - k - 1
    np.testing.assert_array_equal(up.grad_post_max[big_l - k + 1 :][::-1], up.post_max[:k])

    # Underflow: 0.5^l reaches exactly 0; through subnormals (IEEE) or at the normal range's end
    # where the backend flushes subnormals (XLA:CPU for bfloat16, float32 and float64).
    ieee = first([not h.any() for h in simulate_chain(0.5, x, dtype, depth + 1, flush=False)])
    ftz = first([not h.any() for h in simulate_chain(0.5, x, dtype, depth + 1, flush=True)])
    zero = int(down.first_zero_forward)
    assert zero in (ieee, ftz)
    assert zero == stabkit.underflow_depth(0.5, dtype).step
    subnormal_layers = np.flatnonzero(down.post_census.subnormal[:n_layers])
    if zero == ieee:  # every layer between the normal range and zero holds subnormals
        np.testing.assert_array_equal(subnormal_layers, np.arange(ftz, ieee))
    else:
        assert subnormal_layers.size == 0
    assert int(down.first_zero_backward) == big_l - zero
    assert int(down.first_inf_forward) == int(down.first_nan_forward) == -1


@pytest.mark.parametrize(
    ("loss", "dtype"), [("mse", "float32"), ("mse", "float64"), ("sum", "float64")]
)
def test_deep_linear_closed_form(loss, dtype):
    """trace against the closed forms a^l (forward), a^(L-l) or a^(2L-l)/N (backward)."""
    x = np.array([[0.75, -1.25], [2.0, 0.5], [-1.0, 1.0]])
    depth = 20
    with jax.enable_x64(dtype == "float64"):
        base = mlp_init(KEY, depth=depth, width=2, init="scaled_identity", dtype=jdtype(dtype))
        for a in (0.5, 1.0, 1.5):
            p = jax.tree.map(lambda w, a=a: a * w, base)
            t = trace(p, x, activation="linear", loss=loss)
            th = deep_linear_theory(a, depth, x, loss=loss)
            # Each layer rounds once; the mse gradient adds the output's rounding again.
            rtol = 3 * (2 * depth + 4) * float(jnp.finfo(jdtype(dtype)).eps)
            np.testing.assert_allclose(t.post_rms, th.post_rms, rtol=rtol)
            np.testing.assert_allclose(t.grad_post_rms, th.grad_post_rms, rtol=rtol)
            np.testing.assert_allclose(t.grad_w_rms, th.grad_w_rms, rtol=rtol)
            out = mlp_apply(p, x, activation="linear")
            np.testing.assert_allclose(np.asarray(out, np.float64), th.output, rtol=rtol)


@pytest.fixture(scope="module")
def linear64():
    with jax.enable_x64(True):
        base = mlp_init(KEY, depth=20, width=2, init="scaled_identity", dtype=jnp.float64)
    return base


@given(
    a=st.floats(-1.6, 1.6).filter(lambda v: abs(v) > 0.05),
    x=st.lists(st.floats(-4, 4).filter(lambda v: abs(v) > 1e-3), min_size=6, max_size=6),
    depth=st.integers(1, 20),
)
def test_deep_linear_property(linear64, a, x, depth):
    """Any a (negative too), any x, any depth: trace agrees with deep_linear_theory in float64."""
    x = np.reshape(x, (3, 2))  # the shapes of test_deep_linear_closed_form: its compilation
    with jax.enable_x64(True):
        p = jax.tree.map(lambda w: a * w, linear64)
        t = trace(p, jnp.asarray(x, jnp.float64), activation="linear", loss="sum", depth=depth)
        th = deep_linear_theory(a, depth, x, loss="sum")
        n = depth + 2
        np.testing.assert_allclose(t.post_rms[:n], th.post_rms, rtol=1e-13)
        np.testing.assert_allclose(t.grad_post_rms[:n], th.grad_post_rms, rtol=1e-13)
        np.testing.assert_allclose(t.grad_w_rms[:n], th.grad_w_rms, rtol=1e-13)


def test_summary():
    p = mlp_init(KEY, depth=40, width=2, init="scaled_identity", scale=1.5, dtype=jnp.float16)
    t = trace(p, jnp.ones(2), activation="linear", loss="sum")  # the note test's compilation
    text = t.summary(max_rows=10)
    assert "first inf layer 28, first NaN layer 29" in text
    assert "..." in text and len(text.splitlines()) == 1 + 11 + 1
    assert len(t.summary().splitlines()) == 1 + 41 + 1  # 42 layers: 20, '...', 20
    batched = jax.tree.map(lambda a: jnp.stack([a, a]), t)
    with pytest.raises(ValueError, match="one network"):
        batched.summary()
    np.testing.assert_array_equal(batched.first_nonfinite_forward, [28, 28])


def test_deep_linear_gain():
    np.testing.assert_array_equal(deep_linear_gain(0.5, [0, 1, 3]), [1.0, 0.5, 0.125])
    assert deep_linear_gain(-2.0, 3) == -8.0
    assert deep_linear_gain(1.5, 2000) == np.inf  # no overflow warning
    assert stabkit.deep_linear_gain is deep_linear_gain
    with pytest.raises(ValueError, match=">= 0"):
        deep_linear_gain(1.5, -1)
    with pytest.raises(TypeError, match="integers"):
        deep_linear_gain(1.5, 2.5)


def test_bad_input(small):
    params, x = small
    with pytest.raises(ValueError, match="unknown loss 'xent'; valid names: mse, sum"):
        trace(params, x, activation="relu", loss="xent")
    with pytest.raises(TypeError, match="loss must be a name or a callable"):
        trace(params, x, activation="relu", loss=3)
    with pytest.raises(ValueError, match="saturation_threshold must be >= 0"):
        trace(params, x, activation="relu", saturation_threshold=-1)
    with pytest.raises(ValueError, match="saturation_threshold must be finite"):
        trace(params, x, activation="relu", saturation_threshold=float("nan"))
    with pytest.raises(ValueError, match="depth=5 exceeds the 4 hidden layers"):
        trace(params, x, activation="relu", depth=5)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        trace(params, x, activation="relu", depth=0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        trace(params, jnp.ones((3, 3)), activation="relu")
    with pytest.raises(ValueError, match="unknown activation"):
        trace(params, x, activation="sigmoidal")
    with pytest.raises(ValueError, match="unknown loss"):
        deep_linear_theory(1.5, 3, [1.0, 1.0], loss="l1")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        deep_linear_theory(1.5, 0, [1.0, 1.0])
