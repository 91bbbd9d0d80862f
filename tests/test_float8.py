"""float8 matrix products (stabkit.precision.float8) and the blocks' float8 option.

References: ml_dtypes casts (bitwise) for the quantization, float64 NumPy products of the
quantized operands for ``y``, ``dx`` and ``dw``, Transformer Engine's delayed-scaling rule
``scale = fmax / max(history)`` in float32 (one correctly rounded division) for the meta.
Every product shares one shape set, so each recipe compiles once (a module-level jit).
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from stabkit.networks import block, net_apply, net_init, user_block
from stabkit.networks.network import embed
from stabkit.precision import (
    FLOAT8_FORMATS,
    Float8Recipe,
    float8_combine,
    float8_matmul,
    float8_meta,
    float8_partition,
    float8_recipe,
)
from stabkit.precision.float8 import _quantize

EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)
H = 4  # history length of the unit tests' recipes
X_SHAPE, W_SHAPE, G_SHAPE = (3, 4, 5), (5, 3), (3, 4, 3)
KEY = jax.random.key(0)
K = 5  # x @ w sums over 5 terms; dw over the 12 batch entries


def fmax(fmt):
    return np.float32(ml_dtypes.finfo(getattr(ml_dtypes, fmt)).max)


def np_quantize(a, scale, fmt):
    """The float8 value (as float32) of ``a * scale``, saturated; non-finite entries kept."""
    a32 = np.asarray(a, np.float32)
    v = a32 * np.float32(scale)
    m = fmax(fmt)
    q = np.clip(v, -m, m).astype(getattr(ml_dtypes, fmt)).astype(np.float32)
    return np.where(np.isfinite(a32), q, v)


def np_scale(amax, previous, fmt):
    """Transformer Engine's scale with stabkit's guards (margin 0)."""
    if amax == 0:
        return np.float32(previous)
    s = np.float32(fmax(fmt)) / np.float32(amax)
    return np.float32(np.clip(s, np.float32(TINY32), np.float32(1 / TINY32)))


def np_bound(a, b, sa, sb, k):
    """float32 accumulation of k exact products, then two divisions: k + 2 roundings."""
    return (k + 2) * EPS32 * (np.abs(a) @ np.abs(b)) / sa / sb + 1e-300


def assert_fraction(fraction, mask):
    """A stat is the fraction of ``mask``'s entries (to float32 rounding: XLA multiplies by
    ``1 / size``)."""
    mask = np.asarray(mask)
    assert round(float(fraction) * mask.size) == mask.sum()
    assert abs(float(fraction) - mask.mean()) <= EPS32 * mask.mean()


@functools.partial(jax.jit, static_argnums=4)
def step(x, w, meta, gy, recipe):
    """y, stats, dx, dw and the meta cotangent of one product, for one recipe (one compile)."""
    (y, stats), vjp = jax.vjp(lambda x, w, m: float8_matmul(x, w, m, recipe), x, w, meta)
    dx, dw, new = vjp((gy, jax.tree.map(jnp.zeros_like, stats)))
    return y, stats, dx, dw, new


def recipe_of(scaling, **kw):
    return float8_recipe(scaling, history=H, **kw)


def meta_with(recipe, *, x_history=(3.0, 7.0, 2.0, 0.0), x_scale=37.5, w_scale=1.5, g_scale=300.0):
    m = dict(float8_meta(recipe))
    m["x_history"] = jnp.asarray(x_history, jnp.float32)
    m["x_scale"] = jnp.asarray(x_scale, jnp.float32)
    m["w_scale"] = jnp.asarray(w_scale, jnp.float32)
    m["g_scale"] = jnp.asarray(g_scale, jnp.float32)
    return m


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(X_SHAPE) * 0.8).astype(np.float32)
    w = (rng.standard_normal(W_SHAPE) * 0.5).astype(np.float32)
    gy = (rng.standard_normal(G_SHAPE) * 0.01).astype(np.float32)
    return x, w, gy


# ------------------------------------------------------------------------------ quantization


@pytest.fixture(scope="module")
def quantized():
    """Every float8 format's quantization of one array at two scales, in one compilation."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(4096) * 10.0 ** rng.integers(-12, 8, 4096)
    a = np.concatenate([a, [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30]]).astype(np.float32)
    scales = np.asarray([1.0, 37.5], np.float32)

    @jax.jit
    def run(a, scales):
        return {
            fmt: jax.vmap(lambda s, f=fmt: _quantize(a, s, f, float8_recipe(forward=f)))(scales)
            for fmt in FLOAT8_FORMATS
        }

    out = jax.device_get(run(a, scales))
    per_scale = {
        f: [jax.tree.map(lambda v, i=i: v[i], q) for i in range(2)] for f, q in out.items()
    }
    return a, scales, per_scale


@pytest.mark.parametrize("fmt", FLOAT8_FORMATS)
def test_quantization_is_the_ml_dtypes_cast_bit_for_bit(fmt, quantized):
    a, scales, out = quantized
    finite = np.isfinite(a)
    dt = getattr(ml_dtypes, fmt)
    for scale, got in zip(scales, out[fmt], strict=True):  # delayed: the given scale is used
        want = np_quantize(a, scale, fmt)
        q = np.asarray(got.q)
        # Bitwise: the float8 patterns of the finite entries, the float32 ones of the rest.
        assert (q[finite].astype(dt).view(np.uint8) == want[finite].astype(dt).view(np.uint8)).all()
        assert (q[~finite].view(np.uint32) == want[~finite].view(np.uint32)).all()
        assert float(got.scale) == scale
        v = a * np.float32(scale)
        assert_fraction(got.stats["underflow"], finite & (v != 0) & (want == 0))
        assert_fraction(got.stats["overflow"], finite & (np.abs(v) > fmax(fmt)))
        assert_fraction(got.stats["nonfinite"], ~finite)
        assert float(got.amax) == np.abs(a[finite]).max()


# ---------------------------------------------------------------- the product and its gradients


@pytest.mark.parametrize(
    "recipe",
    [recipe_of("delayed"), recipe_of("delayed", amax_compute="most_recent"), recipe_of("current")],
    ids=["delayed-max", "delayed-most-recent", "current"],
)
def test_product_gradients_and_new_meta_against_float64(recipe, data):
    x, w, gy = data
    meta = meta_with(recipe)
    y, stats, dx, dw, new = jax.device_get(step(x, w, meta, gy, recipe))
    f, b = recipe.forward, recipe.backward
    ax, aw, ag = (np.float32(np.abs(v).max()) for v in (x, w, gy))
    if recipe.scaling == "delayed":  # the scales the previous steps left
        sx, sw, sg = np.float32(37.5), np.float32(1.5), np.float32(300.0)
    else:  # this tensor's own
        sx, sw, sg = np_scale(ax, 37.5, f), np_scale(aw, 1.5, f), np_scale(ag, 300.0, b)
    qx, qw, qg = np_quantize(x, sx, f), np_quantize(w, sw, f), np_quantize(gy, sg, b)
    with jax.enable_x64(True):
        x2, w2, g2 = (v.astype(np.float64).reshape(-1, v.shape[-1]) for v in (qx, qw, qg))
        y_ref = (x2 @ w2 / sx / sw).reshape(y.shape)
        dx_ref = (g2 @ w2.T / sg / sw).reshape(dx.shape)
        dw_ref = x2.T @ g2 / sx / sg
    assert y.dtype == np.float32 and dx.dtype == np.float32 and dw.dtype == np.float32
    assert (np.abs(y - y_ref) <= np_bound(x2, w2, sx, sw, K).reshape(y.shape)).all()
    assert (np.abs(dx - dx_ref) <= np_bound(g2, w2.T, sg, sw, 3).reshape(dx.shape)).all()
    assert (np.abs(dw - dw_ref) <= np_bound(x2.T, g2, sx, sg, 12)).all()
    # The history rolls: this step's amax at index 0, the rest shifted by one.
    np.testing.assert_array_equal(new["x_history"], [ax, 3.0, 7.0, 2.0])
    np.testing.assert_array_equal(new["w_history"], [aw, 0, 0, 0])
    np.testing.assert_array_equal(new["g_history"], [ag, 0, 0, 0])
    if recipe.scaling == "current":
        want = {"x": sx, "w": sw, "g": sg}  # the scale this step used
    elif recipe.amax_compute == "max":  # scale = fmax / max(history), exactly
        want = {"x": fmax(f) / max(ax, np.float32(7.0)), "w": fmax(f) / aw, "g": fmax(b) / ag}
    else:
        want = {"x": fmax(f) / ax, "w": fmax(f) / aw, "g": fmax(b) / ag}
    for op, s in want.items():
        assert new[f"{op}_scale"] == np.float32(s), op
    # The gradient's statistics of this backward pass, the operands' of this forward pass.
    v = gy * sg
    assert_fraction(new["g_underflow"], (v != 0) & (qg == 0))
    assert_fraction(new["g_overflow"], np.abs(v) > fmax(b))
    assert new["g_nonfinite"] == 0
    assert_fraction(stats["x_underflow"], (x != 0) & (qx == 0))
    assert_fraction(stats["x_overflow"], np.abs(x * sx) > fmax(f))
    assert_fraction(stats["w_underflow"], (w != 0) & (qw == 0))


def test_zero_amax_keeps_the_scale_and_a_tiny_amax_gives_a_finite_one(data):
    _, w, gy = data
    recipe = recipe_of("delayed")
    zero = meta_with(recipe, x_history=(0.0,) * H, x_scale=5.0)
    _, _, _, _, new = step(np.zeros(X_SHAPE, np.float32), w, zero, gy, recipe)
    assert float(new["x_scale"]) == 5.0  # max(history) == 0: the previous scale, not inf
    # A meta's scale of 0 or NaN (a meta taken from a zero cotangent) is used as 1.
    x = data[0]
    one = step(x, w, meta_with(recipe, x_scale=1.0), gy, recipe)
    for bad in (0.0, np.nan):
        got = step(x, w, meta_with(recipe, x_scale=bad), gy, recipe)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(a, b)
    # A tiny (normal) amax: fmax / amax is inf in float32; the scale is clamped to 2**126.
    tiny = np.full(X_SHAPE, 1e-37, np.float32)
    w = np.abs(w) + 0.5  # positive: every y is a normal float32 (no cancellation to subnormals)
    fresh = meta_with(recipe, x_history=(0.0,) * H, x_scale=1.0)
    _, _, _, _, new = step(tiny, w, fresh, gy, recipe)
    assert float(new["x_scale"]) == 2.0**126
    # The next step uses it; sx * sw overflows float32, y must not become 0 or NaN.
    y, stats, dx, dw, _ = step(tiny, w, new, gy, recipe)
    assert np.isfinite(y).all() and np.isfinite(dx).all() and np.isfinite(dw).all()
    assert float(stats["x_underflow"]) == 0.0
    with jax.enable_x64(True):
        ref = tiny.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(y, ref, rtol=2 * 2.0**-4)  # both operands rounded to e4m3
    # Current scaling of an all-zero tensor keeps the meta's scale (no 0 / 0).
    cur = recipe_of("current")
    y, stats, _, _, new = step(np.zeros(X_SHAPE, np.float32), w, meta_with(cur), gy, cur)
    assert float(new["x_scale"]) == 37.5 and (np.asarray(y) == 0).all()


def test_no_scaling_underflows_and_saturates_and_the_stats_count_it(data):
    _, _, gy = data
    recipe = recipe_of("none")
    ones = np.ones(W_SHAPE, np.float32)
    y, stats, _, _, new = step(
        np.full(X_SHAPE, 1e-4, np.float32), ones, float8_meta(recipe), gy, recipe
    )
    assert float(stats["x_underflow"]) == 1.0  # 1e-4 < 2**-10, half e4m3's smallest subnormal
    assert (np.asarray(y) == 0).all()
    assert float(new["x_scale"]) == 1.0 and float(new["w_scale"]) == 1.0
    y, stats, _, _, _ = step(
        np.full(X_SHAPE, 1e3, np.float32), ones, float8_meta(recipe), gy, recipe
    )
    assert float(stats["x_overflow"]) == 1.0 and float(stats["x_underflow"]) == 0.0
    np.testing.assert_array_equal(y, np.full((3, 4, 3), 448.0 * K, np.float32))  # saturated


def test_current_scaling_of_a_tiny_tensor_keeps_relative_error_within_2_to_the_minus_4():
    rng = np.random.default_rng(2)
    # Entries in [0.5, 1] * 1e-30: far below e4m3's range, all normal once scaled.
    x = (rng.uniform(0.5, 1.0, X_SHAPE) * 1e-30).astype(np.float32)
    eye = np.eye(*W_SHAPE, dtype=np.float32)
    gy = np.zeros(G_SHAPE, np.float32)
    current, none = recipe_of("current"), recipe_of("none")
    y, stats, *_ = step(x, eye, float8_meta(current), gy, current)
    want = x[..., :3].astype(np.float64)
    assert (np.abs(np.asarray(y, np.float64) - want) <= 2.0**-4 * want).all()
    assert float(stats["x_underflow"]) == 0.0
    y, stats, *_ = step(x, eye, float8_meta(none), gy, none)  # without scaling: all lost
    assert (np.asarray(y) == 0).all() and float(stats["x_underflow"]) == 1.0


def test_nan_and_inf_propagate_to_y_and_leave_the_history_finite(data):
    x, w, gy = data
    x = x.copy()
    x[0, 0, 0], x[1, 2, 3] = np.inf, np.nan
    recipe = recipe_of("delayed")
    y, stats, _, _, new = jax.device_get(step(x, w, meta_with(recipe), gy, recipe))
    assert np.isnan(y[1, 2]).all()  # NaN * w
    assert np.isinf(y[0, 0]).any() or np.isnan(y[0, 0]).all()  # inf * w: +-inf (NaN where w = 0)
    assert np.isfinite(np.delete(y.reshape(12, 3), [0, 6], axis=0)).all()
    assert_fraction(stats["x_nonfinite"], ~np.isfinite(x))
    finite_max = np.float32(np.abs(x[np.isfinite(x)]).max())
    assert new["x_history"][0] == finite_max and np.isfinite(new["x_scale"])


def test_under_jit_and_vmap_the_runs_are_independent(data):
    x, w, gy = data
    recipe = recipe_of("delayed")
    metas = [meta_with(recipe, x_scale=s) for s in (37.5, 3.0)]
    xs, ws, gys = np.stack([x, 2 * x]), np.stack([w, -w]), np.stack([gy, gy])
    batched = jax.tree.map(lambda *a: jnp.stack(a), *metas)
    out = jax.jit(jax.vmap(lambda *a: step(*a, recipe)))(xs, ws, batched, gys)
    for i in range(2):
        one = step(xs[i], ws[i], metas[i], gys[i], recipe)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(out), strict=True):
            np.testing.assert_allclose(b[i], a, rtol=4 * EPS32, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_results_and_gradients_keep_the_operands_dtypes(dtype):
    recipe = recipe_of("delayed")
    with jax.enable_x64(dtype == "float64"):  # shapes and dtypes only: nothing compiles
        x = jax.ShapeDtypeStruct(X_SHAPE, jnp.dtype(dtype))
        w = jax.ShapeDtypeStruct(W_SHAPE, jnp.dtype(dtype))

        def run(x, w):
            (y, stats), vjp = jax.vjp(
                lambda x, w: float8_matmul(x, w, float8_meta(recipe), recipe), x, w
            )
            return y, stats, vjp((jnp.ones_like(y), jax.tree.map(jnp.zeros_like, stats)))

        y, stats, (dx, dw) = jax.eval_shape(run, x, w)
    assert (y.dtype, dx.dtype, dw.dtype) == (x.dtype, x.dtype, w.dtype)
    assert y.shape == G_SHAPE and {s.dtype for s in stats.values()} == {jnp.dtype("float32")}


# -------------------------------------------------------------------------------------- blocks


@pytest.fixture(scope="module")
def dense_net():
    recipe = float8_recipe("delayed", history=8)
    b = block("residual", float8=recipe)
    p = net_init(jax.random.key(0), b, depth=2, width=8, in_dim=4, out_dim=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    t = rng.standard_normal((16, 2)).astype(np.float32)

    @jax.jit
    def loss_and_grad(p, depth):
        return jax.value_and_grad(lambda p: jnp.mean((net_apply(p, x, depth=depth) - t) ** 2))(p)

    return recipe, p, x, loss_and_grad


def test_a_float8_block_trains_one_sgd_step_with_the_new_meta_as_cotangent(dense_net):
    recipe, p, x, loss_and_grad = dense_net
    two = jnp.asarray(2, jnp.int32)
    loss0, grads = loss_and_grad(p, two)
    trainable, _ = float8_partition(p)
    g_trainable, new_meta = float8_partition(grads)
    n_meta = sum(a.size for a in jax.tree.leaves(new_meta))
    assert n_meta == 2 * 2 * (3 * 8 + 6)  # 2 blocks x 2 weights x (3 histories + 6 scalars)
    assert len(jax.tree.leaves(trainable)) == len(jax.tree.leaves(p)) - 2 * 9
    m = new_meta.blocks["branch"]["float8"]
    # Block 1's first product: x is the embedding's output, w its first weight matrix.
    h0 = np.asarray(jax.jit(embed)(p, x))
    assert float(m["w"]["x_history"][0, 0]) == np.float32(np.abs(h0).max())
    w1 = np.asarray(p.blocks["branch"]["w"][0])
    assert float(m["w"]["w_history"][0, 0]) == np.float32(np.abs(w1).max())
    e4, e5 = fmax(recipe.forward), fmax(recipe.backward)
    for name in ("w", "w_last"):
        mm = jax.device_get(m[name])
        assert (mm["x_history"][:, 1:] == 0).all() and (mm["x_history"][:, 0] > 0).all()
        np.testing.assert_array_equal(mm["x_scale"], e4 / mm["x_history"][:, 0])
        np.testing.assert_array_equal(mm["g_scale"], e5 / mm["g_history"][:, 0])
    # One SGD step on the trainable leaves, the new meta in place: the loss goes down.
    updated = jax.tree.map(
        lambda a, g: None if a is None else a - 0.05 * g,
        trainable,
        g_trainable,
        is_leaf=lambda v: v is None,
    )
    p1 = float8_combine(updated, new_meta)
    loss1, _ = loss_and_grad(p1, two)
    assert np.isfinite(float(loss0)) and float(loss1) < float(loss0)
    # A block beyond the run's depth computes on zeros, nothing flows back through it: its
    # meta comes back unchanged (its history does not roll), the run's blocks' roll.
    _, g1 = loss_and_grad(p1, jnp.asarray(1, jnp.int32))
    before, after = (float8_partition(q)[1].blocks["branch"]["float8"] for q in (p1, g1))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(b[1], a[1])  # block 2 did not run
    h = jax.device_get(after["w"]["x_history"][0])
    assert h[0] > 0 and h[1] == before["w"]["x_history"][0, 0]  # block 1 rolled


def test_attention_block_routes_its_linear_maps_through_float8():
    b = block("attention", heads=2, mlp=True, float8="current")
    plain = block("attention", heads=2, mlp=True)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 8)), jnp.float32)
    hyper = {"scale": 1.0, "bias_std": 0.0, "alpha": 1.0, "eps": 1e-6, "softcap": 0.0}

    def init(key):
        return b.init(key, 8, jnp.float32, "gaussian", hyper)

    def loss(bp):
        return jnp.sum(b.apply(bp, x, hyper)[0] ** 2)

    # Which products carry a meta, from the gradient's shapes (no compilation).
    grads = jax.eval_shape(lambda k: jax.grad(loss)(init(k)), KEY)
    meta = float8_partition(grads)[1]["branch"]["float8"]
    assert sorted(meta) == ["w", "w_last", "wk", "wq", "wv"]

    @jax.jit
    def run(key):  # the float8 block and the same parameters' plain block, one compilation
        bp = init(key)
        plain_params = {**bp, "branch": {k: v for k, v in bp["branch"].items() if k != "float8"}}
        return b.apply(bp, x, hyper), plain.apply(plain_params, x, hyper)[0]

    (out, taps), ref = jax.device_get(run(KEY))
    # Five products, each operand rounded to e4m3 (relative 2**-4): close, not equal.
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.25
    for k in ("float8_underflow", "float8_overflow"):
        assert taps[k].shape == () and 0 <= float(taps[k]) <= 1
    assert "logit_max" in taps


def test_the_default_block_has_no_float8_state():
    hyper = {"scale": 1.0, "bias_std": 0.0, "alpha": 1.0, "eps": 1e-6}
    for kind in ("residual", "attention"):
        init = functools.partial(block(kind).init, width=4, dtype=jnp.float32, init="gaussian")
        shapes = jax.eval_shape(lambda k, init=init: init(k, hyper=hyper), KEY)
        assert "float8" not in shapes["branch"], kind
    assert block("residual") is block("residual", float8=None)
    assert block("dense", float8="delayed") is block("dense", float8=float8_recipe())


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scaling": "fast"}, ValueError, "scaling"),
        ({"scaling": 1}, TypeError, "scaling"),
        ({"history": 0}, ValueError, "history"),
        ({"history": 2**20}, ValueError, "history"),
        ({"history": 2.5}, TypeError, "history"),
        ({"margin": -1}, ValueError, "margin"),
        ({"amax_compute": "mean"}, ValueError, "amax_compute"),
        ({"forward": "float16"}, ValueError, "forward"),
        ({"backward": "int8"}, TypeError, "backward"),
        ({"forward": "float8_e9"}, ValueError, "forward"),
    ],
)
def test_bad_recipes_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        float8_recipe(**kwargs)


def test_bad_products_and_blocks_are_refused_before_compiling():
    recipe = recipe_of("delayed")
    meta = float8_meta(recipe)
    with pytest.raises(ValueError, match=r"\(k, n\)"):
        float8_matmul(np.ones((2, 3)), np.ones((4, 2)), meta, recipe)
    with pytest.raises(TypeError, match="x must"):
        float8_matmul(np.ones((2, 3), np.int32), np.ones((3, 2)), meta, recipe)
    with pytest.raises(ValueError, match="history=1024"):
        float8_matmul(np.ones((2, 3)), np.ones((3, 2)), meta, "delayed")
    with pytest.raises(ValueError, match="keys"):
        float8_matmul(np.ones((2, 3)), np.ones((3, 2)), {"x_scale": 1.0}, recipe)
    with pytest.raises(TypeError, match="meta must be a dict"):
        float8_matmul(np.ones((2, 3)), np.ones((3, 2)), [1.0], recipe)
    with pytest.raises(TypeError, match="recipe must be a Float8Recipe"):
        float8_meta(0.5)
    with pytest.raises(ValueError, match="history"):
        float8_meta(Float8Recipe(history=0))  # a hand-built recipe is validated too
    for kind in ("conv1d", "conv2d"):
        with pytest.raises(ValueError, match=r"float8.*convolution"):
            block(kind, float8="delayed")
    with pytest.raises(ValueError, match=r"float8.*user"):
        user_block(lambda k, w, d: {}, lambda p, h: h, float8="current")
    with pytest.raises(ValueError, match="unknown float8 'fast'"):
        block("dense", float8="fast")
    with pytest.raises(TypeError, match="float8 must be"):
        block("attention", float8=8)
    with pytest.raises(ValueError, match="float8_partition"):
        float8_combine({"a": None}, {"b": 1.0})
