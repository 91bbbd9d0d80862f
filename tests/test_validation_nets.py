"""Issue 11 for precision, nets, tracing, activations and init: no abort, no late out-of-memory,
no silent clamp, no error from deep inside jax; bad arguments raise ValueError/TypeError naming
them, and NumPy scalars are accepted wherever Python scalars are."""

import math
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stabkit
from stabkit import init as sinit
from stabkit import precision
from stabkit.activations import derivative, get_activation, select_activation, value_and_derivative
from stabkit.deep_linear import deep_linear_gain, deep_linear_theory
from stabkit.nets import mlp_apply, mlp_init
from stabkit.tracing import trace

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def small():
    """A small float32 net and a batch: every check below runs before anything compiles."""
    return mlp_init(KEY, depth=3, width=2, bias_std=0.1), jnp.ones((2, 2))


@pytest.fixture
def memory(fake_memory):
    """Pretend the machine has 64 MiB, so that the memory bounds are tested with small sizes."""
    return fake_memory(64 * 2**20)


# ------------------------------------------------------------------------------ precision bounds


def test_chain_next_to_one_is_refused_not_aborted():
    # Before: SIGABRT inside XLA ("overflow in static extent product"), which kills the process.
    # A subprocess, so that a regression aborts a child, not pytest's worker.
    code = (
        "import stabkit\n"
        "for s in (1 + 2**-52, 1 - 2**-53):\n"
        "    try:\n"
        "        stabkit.chain(s, 'float64')\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ValueError: scale=") for line in lines)
    assert "3196577161300664321 steps to overflow" in lines[0]
    assert "steps to underflow" in lines[1] and "closed form" in lines[1]


def test_chain_step_counts_are_bounded_before_xla(memory):
    with pytest.raises(ValueError, match=r"scale=1\.0000000000000002 needs 3196577161300664321"):
        precision.chain(1 + 2**-52, "float64")
    with pytest.raises(ValueError, match=r"steps=1099511627776 is too large: at most 2147483646"):
        precision.chain(1.5, "float16", steps=2**40)
    # 12 million float16 steps: 3 copies x 2 bytes each is 69 MiB, more than the 64 MiB here.
    with pytest.raises(ValueError, match=r"steps=12000000 needs about 68\.7 MiB .*64\.0 MiB"):
        precision.chain(1.5, "float16", steps=12_000_000)
    # A derived count beyond the memory: bfloat16 with scale 1 + 2**-7 needs 11,401 steps (fine),
    # float32 with 1 + 2**-23 about 7.4e8: refused, naming scale and the closed form.
    with pytest.raises(ValueError, match=r"scale=1\.0000001192092896 needs 744261162 steps"):
        precision.chain(1 + 2**-23, "float32")
    assert precision.chain(1 + 2**-7, "bfloat16").shape == (11402 + 4,)


def test_depth_refuses_a_chain_it_cannot_finish_at_once():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"needs about 3\.197e\+18 steps .*max_steps=1000000"):
        precision.overflow_depth(1 + 2**-52, "float64")
    with pytest.raises(ValueError, match=r"needs about 7\.443e\+08 steps to overflow"):
        precision.overflow_depth(1 + 2**-23, "float32")
    with pytest.raises(ValueError, match="leave the normal range"):
        precision.underflow_depth(1 - 2**-24, "float32", flush=False)
    assert time.perf_counter() - t0 < 2  # before: 1e6 simulated steps (3 s), then the same error
    with pytest.raises(ValueError, match=r"max_steps=1000000000000000000 is too large"):
        precision.overflow_depth(1 + 2**-52, "float64", max_steps=10**18)  # before: a hang


@pytest.mark.parametrize("name", ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"))
def test_the_early_refusal_never_refuses_a_chain_that_would_finish(name):
    # The refusal fires beyond twice max_steps; the rounded chain takes 0.7-1.2x the closed form's
    # steps even at the worst scale, one ulp from 1 (measured here), so it never fires wrongly.
    lim = precision.limits(name)
    for scale, fn in ((1 + lim.eps, precision.overflow_depth), (1 - lim.eps / 2, None)):
        fn = fn or precision.underflow_depth
        d = fn(scale, name, flush=True)
        assert 0.5 <= d.step / d.predicted <= 2, (name, scale, d)
        # just fits: still simulated
        assert fn(scale, name, flush=True, max_steps=d.step).step == d.step


def test_dtype_arguments_refuse_none():
    # Before: np.dtype(None) is float64, so limits(None) returned float64's limits.
    for call in (
        lambda: precision.limits(None),
        lambda: precision.overflow_depth(1.5, None),
        lambda: precision.underflow_depth(0.5, None, flush=False),
        lambda: precision.chain(1.5, None, steps=3),
        lambda: precision.probe()[None],
    ):
        with pytest.raises(TypeError, match="dtype must be a dtype, got None"):
            call()
    with pytest.raises(TypeError, match=r"dtype=1 is not a dtype"):
        precision.limits(1)
    with pytest.raises(TypeError, match="scale must be a real number, got str"):
        precision.overflow_depth("1.5", "float16")
    with pytest.raises(TypeError, match="flush must be True, False or None, got int 1"):
        precision.overflow_depth(1.5, "float16", flush=1)


def test_precision_accepts_numpy_scalars():
    a = precision.overflow_depth(1.5, "float16", 1.0, flush=False, max_steps=100)
    b = precision.overflow_depth(
        np.float32(1.5), "float16", np.float64(1.0), flush=np.bool_(False), max_steps=np.int64(100)
    )
    assert a == b
    np.testing.assert_array_equal(
        precision.chain(np.float16(1.5), np.dtype("float16"), np.int32(1), steps=np.int64(5)),
        precision.chain(1.5, "float16", 1.0, steps=5),
    )
    assert int(precision.census(jnp.ones((2, 3)), axis=np.int64(1)).normal[0]) == 3


# ----------------------------------------------------------------------------------- nets bounds


def test_mlp_init_bounds_the_parameters_memory():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"depth=1000000000 needs about .* GiB .*width=4"):
        mlp_init(KEY, depth=10**9, width=4)  # before: returned at once, then 64 GB allocated
    with pytest.raises(ValueError, match=r"depth=2 needs about .* TiB .*width=1000000"):
        mlp_init(KEY, depth=2, width=10**6)
    assert time.perf_counter() - t0 < 2


def test_mlp_apply_and_trace_bound_their_buffers(memory):
    # depth 1: no width x width stack is drawn, so a wide shallow net is not refused for one
    wide = mlp_init(KEY, depth=1, width=4096, in_dim=1, out_dim=1)
    assert wide.w_hidden.shape == (0, 4096, 4096)
    x = jnp.ones((4096, 1))  # 16 KiB of input; 4096 x 4096 x 3 float32 in the layers: 192 MiB
    with pytest.raises(ValueError, match=r"x\.shape=\(4096, 1\) needs about .* MiB for mlp_apply"):
        mlp_apply(wide, x, activation="relu")
    deep = mlp_init(KEY, depth=64, width=64)
    xs = jnp.ones((1024, 64))  # 64 layers x 1024 x 64 x (6 x 4 + 2 x 4) bytes: 128 MiB
    with pytest.raises(ValueError, match=r"x\.shape=\(1024, 64\) .*trace's per-layer buffers"):
        trace(deep, xs, activation="relu")
    with pytest.raises(ValueError, match=r"shape=\(4096, 4096\) needs about 192\.0 MiB"):
        sinit.gaussian()(KEY, (4096, 4096))
    with pytest.raises(ValueError, match=r"depth=100000000 needs about .* closed forms"):
        deep_linear_theory(1.5, 10**8, [1.0])


def test_float64_needs_x64_and_says_so():
    # Before: "the weight initializer returned ... float32, expected float64" (blaming init), and
    # gaussian()(key, shape, float64) silently returned float32.
    with pytest.raises(ValueError, match=r"float64 needs x64: run inside `with jax\.enable_x64"):
        mlp_init(KEY, depth=2, width=2, dtype="float64")
    with pytest.raises(ValueError, match="float64 needs x64"):
        sinit.gaussian()(KEY, (2, 2), jnp.float64)
    with jax.enable_x64(True):
        p = mlp_init(KEY, depth=2, width=2, dtype="float64")
        assert p.dtype == jnp.float64
        assert mlp_apply(p, jnp.ones(2), activation="tanh").dtype == jnp.float64
    with pytest.raises(ValueError, match=r"params\.dtype=float64 needs x64"):
        mlp_apply(p, jnp.ones(2), activation="tanh")


def test_mlp_init_refuses_none_and_unsupported_dtypes():
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype, got None"):
        mlp_init(KEY, depth=2, width=2, dtype=None)
    with pytest.raises(ValueError, match=r"bias_std must be >= 0, got -1\.0"):
        mlp_init(KEY, depth=2, width=2, bias_std=-1.0)  # before: named bias_normal's sigma_b
    with pytest.raises(ValueError, match="dtype=float4_e2m1fn is not supported; valid: float16"):
        mlp_init(KEY, depth=2, width=2, dtype=ml_dtypes.float4_e2m1fn)


@pytest.mark.parametrize("name", ("float8_e4m3fn", "float8_e5m2"))
def test_float8_networks(name):
    # Before: a TypePromotionError (float8 promotes with nothing). Drawn in float32, cast once;
    # XLA:CPU computes the matrix products and the activations in the float8 format.
    dt = jnp.dtype(getattr(ml_dtypes, name))
    p = mlp_init(KEY, depth=3, width=4, init="orthogonal", bias_std=0.1, dtype=dt)
    assert all(a.dtype == dt for a in p)
    p32 = mlp_init(KEY, depth=3, width=4, init="orthogonal", bias_std=0.1)
    np.testing.assert_array_equal(p.w_hidden, p32.w_hidden.astype(dt))  # rounded once
    x = jnp.linspace(-1, 1, 8).reshape(2, 4)
    for act in ("tanh", "gelu", "relu"):  # gelu: erfc has no float8 lowering; float32 inside
        y = mlp_apply(p, x, activation=act)
        assert y.dtype == dt and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
        phi = get_activation(act)
        h = phi(jnp.matmul(x.astype(dt), p.w_in) + p.b_in)
        for w, b in zip(p.w_hidden, p.b_hidden, strict=True):
            h = phi(jnp.matmul(h, w) + b)
        np.testing.assert_array_equal(y, jnp.matmul(h, p.w_out) + p.b_out)
    t = trace(p, x, activation="tanh")
    assert int(sum(t.post_census)[4]) == 2 * 4 and bool(jnp.isfinite(t.loss))


def test_activation_callables_are_checked_on_the_layers_shape(small):
    params, x = small
    cases = [
        (lambda z: z.sum(), ValueError, r"must act elementwise .*shape \(2, 2\).* shape \(\)"),
        (lambda z: z[:, :1], ValueError, r"returned shape \(2, 1\)"),
        (lambda z: z.astype(jnp.int32), TypeError, "keep the parameters' dtype.* int32"),
        (lambda z: z.astype(jnp.float16), TypeError, "returned dtype float16"),
        (lambda z: None, TypeError, "must return an array .* NoneType"),
        (lambda z: 1 / 0, TypeError, "failed on the layer's pre-activations.*ZeroDivisionError"),
    ]
    for fn, err, match in cases:  # before: silently zeros (int32), float16 (!), or jax errors
        with pytest.raises(err, match="activation .*" + match):
            mlp_apply(params, x, activation=fn)
        with pytest.raises(err, match="activation .*" + match):
            trace(params, x, activation=fn)


def test_loss_callables_are_checked_on_the_outputs_shape(small):
    params, x = small
    with pytest.raises(ValueError, match=r"loss .*scalar .*shape \(2, 2\).* shape \(2, 2\)"):
        trace(params, x, activation="tanh", loss=lambda y: y)
    with pytest.raises(TypeError, match=r"loss .* returned shape \(\) dtype int32"):
        trace(params, x, activation="tanh", loss=lambda y: jnp.sum(y).astype(jnp.int32))
    with pytest.raises(TypeError, match=r"loss .*must return a scalar array.*NoneType"):
        trace(params, x, activation="tanh", loss=lambda y: None)
    with pytest.raises(TypeError, match=r"loss .*failed on the network's output.*KeyError"):
        trace(params, x, activation="tanh", loss=lambda y: {}["a"])
    t = trace(params, x, activation="tanh", loss=lambda y: jnp.sum(y**2))
    assert t.loss.dtype == jnp.float32


def test_trace_depth_concrete_is_checked_traced_is_clamped_as_documented(small):
    params, x = small
    for bad in (4, np.int64(4), jnp.asarray(4)):
        with pytest.raises(ValueError, match="depth=4 exceeds the 3 hidden layers"):
            trace(params, x, activation="relu", depth=bad)
    # Traced depths cannot be checked on the host: clipped to 1..max_depth, as the docs say.
    t = jax.jit(lambda d: trace(params, x, activation="relu", depth=d))(jnp.int32(9))
    assert int(t.depth) == 3


def test_initializer_callables_are_checked_before_jit():
    with pytest.raises(TypeError, match=r"init .*failed on init\(key, \(2, 2\), float32\)"):
        mlp_init(KEY, depth=2, width=2, init=lambda k, s, d: 1 / 0)
    with pytest.raises(ValueError, match=r"returned shape \(\) dtype int32, expected \(2, 2\)"):
        mlp_init(KEY, depth=2, width=2, init=lambda k, s, d: 5)


def test_nets_and_trace_accept_numpy_scalars(small):
    a = mlp_init(KEY, depth=3, width=2, in_dim=2, scale=1.5, bias_std=0.1)
    b = mlp_init(
        KEY,
        depth=np.int64(3),
        width=np.int32(2),
        in_dim=np.int64(2),
        scale=np.float32(1.5),
        bias_std=np.float64(0.1),
    )
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    params, x = small
    np.testing.assert_array_equal(
        mlp_apply(params, x, activation="tanh", depth=np.int64(2)),
        mlp_apply(params, x, activation="tanh", depth=2),
    )
    t1 = trace(params, x, activation="tanh", saturation_threshold=np.float32(0.5), depth=np.int8(2))
    t2 = trace(params, x, activation="tanh", saturation_threshold=0.5, depth=2)
    np.testing.assert_array_equal(t1.saturated, t2.saturated)
    np.testing.assert_array_equal(deep_linear_gain(np.float32(1.5), np.int64(3)), 1.5**3)


# ------------------------------------------------------------------------- activations and init


def test_derivative_names_z_and_its_dtype():
    # Before: "primal and tangent arguments to jax.jvp do not match" from inside jax.
    with pytest.raises(
        TypeError, match=r"z must have a real floating-point dtype.*got dtype int32"
    ):
        derivative("relu")(jnp.arange(3))
    with pytest.raises(TypeError, match="z must be a floating-point array, got str"):
        value_and_derivative("tanh")("abc")
    assert derivative("relu")(2.0) == 1.0  # Python numbers become floats, as before


def test_select_activation_checks_a_concrete_index():
    # Before: clamped silently by lax.switch (5 -> the last choice), or not looked at (1 choice).
    with pytest.raises(
        ValueError, match=r"index=5 is out of range for 2 choices \(valid: 0\.\.1\)"
    ):
        select_activation(["relu", "tanh"], 5)
    with pytest.raises(ValueError, match="index=-1 is out of range"):
        select_activation(["relu", "tanh"], -1)
    with pytest.raises(ValueError, match="index=7 is out of range for 1 choices"):
        select_activation(["relu"], 7)
    with pytest.raises(TypeError, match=r"choices must be a non-empty sequence.*got str"):
        select_activation("relu", 0)
    with pytest.raises(TypeError, match="the bool"):
        select_activation(["relu", "tanh"], np.bool_(True))
    z = jnp.array([-1.0])
    np.testing.assert_array_equal(select_activation(["relu", "tanh"], np.int64(1))(z), jnp.tanh(z))
    # A traced index is clamped (lax.switch's rule), as documented.
    out = jax.jit(lambda i: select_activation(["relu", "tanh"], i)(z))(jnp.int32(5))
    np.testing.assert_array_equal(out, jnp.tanh(z))


def test_initializers_check_shape_key_and_multiplier():
    with pytest.raises(
        TypeError, match="shape must be a tuple of ints for a weight matrix, got int"
    ):
        sinit.gaussian()(KEY, 5)
    with pytest.raises(TypeError, match=r"shape must be a tuple of ints .*got str"):
        sinit.he_uniform()(KEY, "23")
    with pytest.raises(ValueError, match=r"shape must hold non-negative ints, got \(-1,\)"):
        sinit.zeros()(KEY, (-1,))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sinit.gaussian()(5, (2, 2))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sinit.bias_normal(1.0)(jax.random.split(KEY, 3), (2,))
    with pytest.raises(TypeError, match="sigma_w must be a real number, got str '2'"):
        sinit.gaussian("2")
    with pytest.raises(
        ValueError, match=r"scale=-1\.0 is the gain of 'he_normal' and must be >= 0"
    ):
        sinit.get_initializer("he_normal", -1.0)
    np.testing.assert_array_equal(
        sinit.get_initializer("he_normal", np.float32(2.0))(KEY, (np.int64(3), np.int32(2))),
        sinit.get_initializer("he_normal", 2.0)(KEY, (3, 2)),
    )
    for name in sinit.initializer_names():  # every initializer in float8: drawn in float32
        w = sinit.get_initializer(name)(KEY, (3, 2), ml_dtypes.float8_e4m3fn)
        assert w.dtype == jnp.dtype(ml_dtypes.float8_e4m3fn) and w.shape == (3, 2)


# ------------------------------------------------------ property tests: bad arguments, clean errors

JUNK = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.binary(max_size=2),
    st.booleans(),
    st.complex_numbers(allow_nan=True, allow_infinity=True).filter(lambda c: c.imag != 0),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
    st.sampled_from([object(), np.bool_(True), np.str_("1"), np.array([1.0, 2.0]), type]),
)
BAD_COUNT = st.one_of(
    JUNK.filter(lambda v: v is not None),
    st.integers(max_value=0),
    st.integers(min_value=10**30),
    st.sampled_from([np.int64(-3), np.int8(0), 2.0, 2.5, np.float32(3.0), jnp.asarray(2.0)]),
)
BAD_REAL = st.one_of(
    JUNK.filter(lambda v: v is not None),
    st.sampled_from([math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("-inf")]),
)


def _supported_dtype(value):
    """Decided without the code under test: NumPy's parse, named in SUPPORTED_DTYPES."""
    if value is None:
        return False
    if isinstance(value, str) and hasattr(ml_dtypes, value):
        value = getattr(ml_dtypes, value)
    try:
        return np.dtype(value).name in precision.SUPPORTED_DTYPES
    except Exception:  # anything NumPy cannot read as a dtype
        return False


# Random text can spell a dtype ("f", "e", "<f4") or a name; those are valid, so left out.
BAD_DTYPE = st.one_of(
    JUNK,
    st.integers(),
    st.sampled_from(["int32", "float17", "float8_e8m0fnu", np.int8, jnp.int32, bool, complex]),
).filter(lambda v: not _supported_dtype(v))


def not_a_name(names):
    return lambda v: not (isinstance(v, str) and v in names)


BAD_KEY = st.one_of(
    JUNK, st.integers(), st.sampled_from([jnp.zeros(3, jnp.uint32), jnp.ones(2), np.ones(2)])
)


def raises_cleanly(call):
    with pytest.raises((ValueError, TypeError)):
        call()


@settings(max_examples=60)
@given(data=st.data())
def test_property_precision_bad_arguments(data):
    which = data.draw(st.sampled_from(["limits", "over", "under", "chain", "census", "probe"]))
    if which == "limits":
        bad = data.draw(BAD_DTYPE)
        call = lambda: precision.limits(bad)
    elif which == "probe":
        if data.draw(st.booleans()):
            bad = data.draw(BAD_DTYPE)
            call = lambda: precision.probe()[bad]
        else:
            bad = data.draw(JUNK.filter(lambda v: v is not None) | st.sampled_from(["cpu", 0]))
            call = lambda: precision.probe(bad)
    elif which == "census":
        arg = data.draw(st.sampled_from(["x", "axis"]))
        bad = data.draw(
            JUNK.filter(lambda v: v is not None)
            if arg == "axis"
            else JUNK.filter(lambda v: not isinstance(v, (list, np.ndarray)))
        )
        if arg == "x":
            call = lambda: precision.census(bad)
        else:
            call = lambda: precision.census(jnp.ones((2, 2)), axis=bad)
    else:
        good = {"scale": 0.5 if which == "under" else 1.5, "dtype": "float16", "x0": 1.0}
        fn = {
            "over": precision.overflow_depth,
            "under": precision.underflow_depth,
            "chain": precision.chain,
        }[which]
        count = "steps" if which == "chain" else "max_steps"
        kw = {count: 8}
        if which != "chain":
            kw["flush"] = False
        arg = data.draw(st.sampled_from(["scale", "dtype", "x0", count]))
        bad = {
            "scale": BAD_REAL  # |scale| = 1 is valid for chain with steps given
            | st.sampled_from([0.0, 1e-30, 1e30] + ([] if which == "chain" else [1.0, -1.0])),
            "x0": BAD_REAL | st.sampled_from([0.0, 1e-30, 1e30]),
            "dtype": BAD_DTYPE,
            count: BAD_COUNT,
        }[arg]
        bad = data.draw(bad)
        if arg in kw:
            kw[arg] = bad
        else:
            good[arg] = bad
        call = lambda: fn(good["scale"], good["dtype"], good["x0"], **kw)
    raises_cleanly(call)


@settings(max_examples=60)
@given(data=st.data())
def test_property_nets_bad_arguments(small, data):
    params, x = small
    if data.draw(st.booleans()):
        kw = {"depth": 2, "width": 2, "in_dim": None, "out_dim": None, "init": "gaussian"}
        kw |= {"scale": None, "bias_std": 0.0, "dtype": jnp.float32}
        arg = data.draw(st.sampled_from(["key", *kw]))
        bad = {
            "key": BAD_KEY,
            "depth": BAD_COUNT,
            "width": BAD_COUNT,
            "in_dim": BAD_COUNT,
            "out_dim": BAD_COUNT,
            "init": JUNK.filter(lambda v: v is not None and v is not type).filter(
                not_a_name(stabkit.initializer_names())
            )
            | st.sampled_from(["kaiming", "", lambda k, s, d: None, lambda k, s, d: jnp.ones(3)]),
            "scale": BAD_REAL,
            "bias_std": BAD_REAL | st.sampled_from([-1.0]),
            "dtype": BAD_DTYPE,
        }[arg]
        bad = data.draw(bad)
        key = bad if arg == "key" else KEY
        if arg != "key":
            kw[arg] = bad
        raises_cleanly(lambda: mlp_init(key, **kw))
    else:
        kw = {"params": params, "x": x, "activation": "tanh", "depth": None}
        arg = data.draw(st.sampled_from(list(kw)))
        bad = {
            "params": JUNK | st.just(tuple(params)) | st.just(params._replace(b_out=jnp.ones(3))),
            "x": JUNK.filter(lambda v: not isinstance(v, np.ndarray))
            | st.sampled_from([jnp.ones((2, 3)), jnp.ones((2, 2), jnp.int32), jnp.ones((0, 2))]),
            "activation": JUNK.filter(lambda v: v is not type).filter(
                not_a_name(stabkit.activation_names())
            )
            | st.sampled_from(["rleu", lambda z: z.sum(), lambda z: z.astype(jnp.int8)]),
            "depth": BAD_COUNT | st.sampled_from([4, 10**12, jnp.asarray(9)]),
        }[arg]
        kw[arg] = data.draw(bad)
        raises_cleanly(lambda: mlp_apply(kw.pop("params"), kw.pop("x"), **kw))


@settings(max_examples=60)
@given(data=st.data())
def test_property_trace_bad_arguments(small, data):
    params, x = small
    which = data.draw(st.sampled_from(["trace", "trace", "gain", "theory"]))
    if which == "trace":
        kw = {"activation": "tanh", "loss": "mse", "depth": None, "saturation_threshold": 0.01}
        arg = data.draw(st.sampled_from(["x", *kw]))
        bad = {
            "x": JUNK.filter(lambda v: not isinstance(v, np.ndarray))
            | st.sampled_from([jnp.ones((2, 5)), jnp.ones(3), jnp.ones((2, 2, 2))]),
            "activation": JUNK.filter(lambda v: v is not type).filter(
                not_a_name(stabkit.activation_names())
            )
            | st.sampled_from(["swish", lambda z: z[:, :1], lambda z: z.astype(jnp.float16)]),
            "loss": JUNK.filter(lambda v: v is not type).filter(not_a_name(("mse", "sum")))
            | st.sampled_from(["l1", lambda y: y, lambda y: jnp.sum(y).astype(jnp.int32)]),
            "depth": BAD_COUNT | st.sampled_from([4, np.int64(5)]),
            "saturation_threshold": BAD_REAL | st.sampled_from([-1.0, np.float32(-0.5)]),
        }[arg]
        bad = data.draw(bad)
        xx = bad if arg == "x" else x
        if arg != "x":
            kw[arg] = bad
        raises_cleanly(lambda: trace(params, xx, **kw))
    elif which == "gain":
        if data.draw(st.booleans()):
            bad = data.draw(BAD_REAL)
            raises_cleanly(lambda: deep_linear_gain(bad, 3))
        else:
            bad = data.draw(
                JUNK.filter(lambda v: not isinstance(v, (list, np.ndarray)))
                | st.sampled_from([-1, 2.5, [1, -2], ["a"], math.nan])
            )
            raises_cleanly(lambda: deep_linear_gain(1.5, bad))
    else:
        args = {"a": 1.5, "depth": 3, "x": [1.0, 1.0], "loss": "mse"}
        arg = data.draw(st.sampled_from(list(args)))
        bad = {
            "a": BAD_REAL,
            "depth": BAD_COUNT,
            "x": JUNK.filter(lambda v: not isinstance(v, (list, np.ndarray, bool)))
            | st.sampled_from([[], [[[1.0]]], ["a"]]),
            "loss": JUNK.filter(not_a_name(("mse", "sum"))) | st.just("l1"),
        }[arg]
        args[arg] = data.draw(bad)
        raises_cleanly(
            lambda: deep_linear_theory(args["a"], args["depth"], args["x"], loss=args["loss"])
        )


@settings(max_examples=60)
@given(data=st.data())
def test_property_activations_bad_arguments(data):
    which = data.draw(st.sampled_from(["get", "derivative", "select_choices", "select_index"]))
    if which == "get":
        bad = data.draw(
            JUNK.filter(lambda v: v is not type).filter(not_a_name(stabkit.activation_names()))
            | st.sampled_from(["", "swish"])
        )
        raises_cleanly(lambda: get_activation(bad))
    elif which == "derivative":
        bad = data.draw(
            JUNK.filter(lambda v: not isinstance(v, (bool, list, np.ndarray)))
            | st.sampled_from([jnp.arange(3), np.arange(3), np.array(["a"]), jnp.ones(2, bool)])
        )
        raises_cleanly(lambda: derivative("relu")(bad))
    elif which == "select_choices":
        bad = data.draw(
            JUNK.filter(lambda v: v is not type and not (isinstance(v, list) and v))
            | st.sampled_from([[], ["relu", 3], ("relu", "nope")])
        )
        raises_cleanly(lambda: select_activation(bad, 0))
    else:
        bad = data.draw(
            JUNK.filter(lambda v: not isinstance(v, np.ndarray))
            | st.integers(min_value=2)
            | st.integers(max_value=-1)
            | st.sampled_from([np.int64(2), jnp.asarray(1.0), jnp.arange(2), 1.0])
        )
        raises_cleanly(lambda: select_activation(["relu", "tanh"], bad))


@settings(max_examples=60)
@given(data=st.data())
def test_property_init_bad_arguments(data):
    which = data.draw(st.sampled_from(["get", "factory", "call", "bias", "rule"]))
    if which == "get":
        if data.draw(st.booleans()):
            bad = data.draw(
                JUNK.filter(lambda v: v is not type).filter(not_a_name(stabkit.initializer_names()))
                | st.just("kaiming")
            )
            raises_cleanly(lambda: stabkit.get_initializer(bad))
        else:
            bad = data.draw(BAD_REAL | st.just(-1.0))
            raises_cleanly(lambda: stabkit.get_initializer("he_normal", bad))
    elif which == "factory":
        name = data.draw(st.sampled_from(["gaussian", "orthogonal", "glorot_uniform", "standard"]))
        bad = data.draw(BAD_REAL | st.just(-2.0))
        raises_cleanly(lambda: getattr(sinit, name)(bad))
    elif which in ("call", "bias"):
        init = sinit.he_normal() if which == "call" else sinit.bias_normal(0.5)
        args = {"key": KEY, "shape": (2, 3), "dtype": jnp.float32}
        arg = data.draw(st.sampled_from(list(args)))
        bad = {
            "key": BAD_KEY,
            "shape": JUNK.filter(lambda v: not (isinstance(v, list) and which == "bias"))
            | st.sampled_from([(-1, 2), (2.5, 2), (10**9, 10**9), ("a",)]),
            "dtype": BAD_DTYPE,
        }[arg]
        args[arg] = data.draw(bad)
        if which == "call" and arg == "shape" and isinstance(args["shape"], list):
            args["shape"] = [*args["shape"], 1, 1, 1]  # a list is a shape: make it a bad one
        raises_cleanly(lambda: init(args["key"], args["shape"], args["dtype"]))
    else:
        bad = data.draw(JUNK | st.just("kaiming"))
        raises_cleanly(lambda: sinit.init_rule(bad))


def test_a_dtype_string_numpy_cannot_parse_is_a_value_error():
    # np.dtype(b",") raises SyntaxError; found by the property test above (hypothesis draw b",")
    with pytest.raises(TypeError, match="is not a dtype"):
        precision.limits(b",")
    with pytest.raises(ValueError, match="is not a dtype"):
        precision.limits(",")


def test_a_dtype_numpy_cannot_parse_is_refused_by_the_nets():
    with pytest.raises(TypeError, match="floating-point dtype"):
        stabkit.mlp_init(jax.random.key(0), depth=2, width=4, dtype=b",")
