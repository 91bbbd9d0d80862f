"""Networks of blocks: init/apply against float64 NumPy references, depth as data, the trace
against jax.grad, the user's blocks, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit as sk
from stabkit.networks import batch_norm, layer_norm, rms_norm

KEY = jax.random.key(0)
# Per-dtype tolerances (relative) for a few blocks against a float64 reference.
TOL = {"float32": 2e-5, "bfloat16": 3e-2, "float16": 4e-3}


def _np(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def _ref_ln(u, g, b, eps):
    m = u.mean(-1, keepdims=True)
    v = ((u - m) ** 2).mean(-1, keepdims=True)
    return g * (u - m) / np.sqrt(v + eps) + b


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_norms_match_float64(dtype):
    u = jax.random.normal(KEY, (6, 5, 16), jnp.float32) * 3 + 1
    g = jnp.linspace(0.5, 1.5, 16)
    b = jnp.linspace(-1, 1, 16)
    ud = u.astype(dtype)
    uf = _np(ud)
    tol = TOL[dtype]
    got = _np(layer_norm(ud, g.astype(dtype), b.astype(dtype), 1e-6))
    np.testing.assert_allclose(
        got, _ref_ln(uf, _np(g.astype(dtype)), _np(b.astype(dtype)), 1e-6), rtol=tol, atol=tol
    )
    ms = (uf**2).mean(-1, keepdims=True)
    got = _np(rms_norm(ud, g.astype(dtype), 1e-6))
    np.testing.assert_allclose(
        got, _np(g.astype(dtype)) * uf / np.sqrt(ms + 1e-6), rtol=tol, atol=tol
    )
    m = uf.mean((0, 1), keepdims=True)
    v = ((uf - m) ** 2).mean((0, 1), keepdims=True)
    got = _np(batch_norm(ud, 1.0, 0.0, 1e-6))
    np.testing.assert_allclose(got, (uf - m) / np.sqrt(v + 1e-6), rtol=tol, atol=tol)
    assert layer_norm(ud, 1.0, 0.0).dtype == ud.dtype


def test_float16_norm_does_not_overflow():
    # A float16 sum of squares overflows above 256; the norms compute in float32.
    u = jnp.full((2, 64), 1000.0, jnp.float16).at[:, 0].set(-1000.0)
    assert bool(jnp.all(jnp.isfinite(layer_norm(u, 1.0, 0.0))))
    assert bool(jnp.all(jnp.isfinite(rms_norm(u, 1.0))))


def _dense_ref(params, x, depth, phi):
    h = _np(x)
    if params.embed is not None:
        h = h @ _np(params.embed["w"]) + _np(params.embed["b"])
    for layer in range(depth):
        w = _np(params.blocks["branch"]["w_last"][layer])
        b = _np(params.blocks["branch"]["b_last"][layer])
        h = phi(h @ w + b)
    return h @ _np(params.readout["w"]) + _np(params.readout["b"])


def _residual5():
    """Residual MLP, 5 blocks of width 8, no embedding: one compilation of net_init serves the
    tests below that check it against NumPy and those that need a network, any network."""
    return sk.net_init(KEY, "residual", depth=5, width=8, alpha=0.5, embed=False)


def test_dense_and_residual_match_numpy_and_depth_is_data():
    x = jax.random.normal(jax.random.key(1), (5, 3))
    p = sk.net_init(
        KEY,
        sk.block("dense", activation="tanh"),
        depth=6,
        width=8,
        in_dim=3,
        out_dim=2,
        bias_std=0.1,
    )
    for d in (1, 4, 6):
        np.testing.assert_allclose(
            _np(sk.net_apply(p, x, depth=d)), _dense_ref(p, x, d, np.tanh), rtol=2e-5, atol=2e-6
        )
    # A shallower net's parameters are a prefix of a deeper one's.
    q = sk.net_init(
        KEY,
        sk.block("dense", activation="tanh"),
        depth=4,
        width=8,
        in_dim=3,
        out_dim=2,
        bias_std=0.1,
    )
    np.testing.assert_array_equal(sk.net_apply(q, x), sk.net_apply(p, x, depth=4))
    # Residual MLP: h + alpha * (relu(h W1 + b1) W2 + b2). The same network shapes as the next
    # test's (alpha is data): one compilation serves both.
    r = _residual5()
    x8 = jax.random.normal(jax.random.key(2), (4, 8))
    h = _np(x8)
    for layer in range(5):
        bp = jax.tree.map(lambda a, i=layer: _np(a[i]), r.blocks["branch"])
        h = h + 0.5 * (np.maximum(h @ bp["w"] + bp["b"], 0) @ bp["w_last"] + bp["b_last"])
    ref = h @ _np(r.readout["w"])
    np.testing.assert_allclose(_np(sk.net_apply(r, x8)), ref, rtol=2e-5, atol=1e-6)


def test_alpha_zero_fixup_and_learnable_alpha():
    x = jax.random.normal(jax.random.key(2), (4, 8))
    zero = sk.net_init(KEY, "residual", depth=5, width=8, alpha=0.0, embed=False)
    ident = _np(x) @ _np(zero.readout["w"])
    np.testing.assert_allclose(_np(sk.net_apply(zero, x)), ident, rtol=1e-6)
    fix = sk.net_init(KEY, sk.block("residual", fixup=True), depth=5, width=8, embed=False)
    np.testing.assert_allclose(_np(sk.net_apply(fix, x)), _np(x) @ _np(fix.readout["w"]), rtol=1e-6)
    rz = sk.net_init(KEY, sk.block("residual", learnable_alpha=True), depth=3, width=8, alpha=0.0)
    assert rz.blocks["alpha"].shape == (3,)
    g = jax.jit(jax.grad(lambda p: jnp.sum(sk.net_apply(p, x) ** 2)))(rz)  # one compilation
    assert bool(jnp.all(g.blocks["alpha"] != 0))  # ReZero: alpha is trained, from 0


# One network traced by several tests (one compilation of net_init and of trace for all): a
# post-norm residual block with an RMS norm, an embedding and a readout of other widths.
TRACED_BLOCK = sk.block("residual", activation="tanh", norm="rms", norm_position="post")


def _traced_net(scale=1.0):
    return sk.net_init(KEY, TRACED_BLOCK, depth=4, width=8, in_dim=3, out_dim=2, scale=scale)


@pytest.fixture(scope="module")
def traced():
    p = _traced_net()
    x = jax.random.normal(jax.random.key(3), (6, 3))
    return p, x, sk.trace(p, x)


def test_trace_matches_jax_grad(traced):
    """grad_rms at every boundary and param_grad_rms per block equal jax.grad's."""
    p, x, t = traced
    blk = TRACED_BLOCK

    def loss_of(dh, params):
        h = x @ params.embed["w"] + params.embed["b"] + dh[0]
        hs = [h]
        for layer in range(4):
            bp = jax.tree.map(lambda a, i=layer: a[i], params.blocks)
            h = blk.apply(bp, h, params.hyper)[0] + dh[layer + 1]
            hs.append(h)
        y = h @ params.readout["w"] + params.readout["b"]
        return 0.5 * jnp.mean(y**2), hs

    dh = jnp.zeros((5, 6, 8))
    # dL/dh at every boundary and dL/dparams from one compiled gradient
    (g, gp), hs = jax.jit(jax.grad(loss_of, argnums=(0, 1), has_aux=True))(dh, p)
    rms = np.sqrt(np.mean(np.asarray(g) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(np.asarray(t.grad_rms[:5]), rms, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(t.rms[:5]), [np.sqrt(np.mean(np.asarray(h) ** 2)) for h in hs], rtol=1e-5
    )
    for layer in range(4):
        leaves = [np.asarray(a[layer]).ravel() for a in jax.tree.leaves(gp.blocks)]
        ref = np.sqrt(np.mean(np.concatenate(leaves) ** 2))
        np.testing.assert_allclose(float(t.param_grad_rms[layer + 1]), ref, rtol=1e-5)
    assert t.rms.shape == (6,) and bool(t.valid.all())
    t3 = sk.trace(p, x, depth=3)  # depth is data: the same compilation
    assert np.isnan(t3.rms[5]) and not t3.valid[5] and t3.valid[4]
    assert set(t.taps) == {"branch_rms", "normalized_rms", "pre_norm_rms"}
    np.testing.assert_allclose(np.asarray(t.taps["normalized_rms"][1:5]), 1.0, rtol=1e-3)
    assert "boundary" in t.summary()


def test_trace_vmaps_over_depth_and_scale_with_one_compilation(traced):
    _, x, single = traced  # scale 1, every block: the vmapped row 1

    def one(scale, depth):
        return sk.trace(_traced_net(scale), x, depth=depth)

    with sk.count_traces() as counts:
        ts = jax.vmap(one)(jnp.array([0.5, 1.0, 2.0]), jnp.array([2, 4, 3]))
    assert ts.rms.shape == (3, 6)
    assert list(np.asarray(ts.valid).sum(1)) == [4, 6, 5]
    np.testing.assert_allclose(np.asarray(ts.grad_rms[1]), np.asarray(single.grad_rms), rtol=1e-5)
    del counts


def test_nonfinite_inputs_are_results():
    p = _residual5()
    x = jnp.ones((2, 8)).at[0, 1].set(jnp.nan)
    t = sk.trace(p, x)
    assert int(t.first_nonfinite_forward) == 0 and int(t.census.nan[0]) > 0
    assert int(t.first_nonfinite_backward) == 6  # the backward pass meets it at once
    # float16 overflow (the first inf boundary): tests/test_net_sweep.py, through trace and sweep.


def test_user_block_hyper_is_data():
    def init(key, width, dtype, gain):
        return {"w": jax.random.normal(key, (width, width), dtype) / width**0.5}

    def apply(params, h, gain):
        out = jnp.tanh(gain * (h @ params["w"]))
        return out, {"mean_abs": jnp.mean(jnp.abs(out))}

    ub = sk.user_block(init, apply, hyper={"gain": 1.0}, residual=True, norm="layer")
    x = jnp.ones((3, 8))
    with sk.count_traces() as counts:
        ts = jax.vmap(lambda g: sk.trace(sk.net_init(KEY, ub, depth=4, width=8, gain=g), x))(
            jnp.array([0.1, 3.0])
        )
    outs = ts.rms
    assert outs.shape == (2, 6) and not np.allclose(outs[0], outs[1])
    del counts
    # the user's own taps, per block, in each config's trace
    assert "mean_abs" in ts.taps and np.isfinite(ts.taps["mean_abs"][:, 1:5]).all()


def test_bad_input_is_refused_before_compiling():
    with pytest.raises(ValueError, match="kind"):
        sk.block("transformer")
    with pytest.raises(TypeError, match="no option 'heads'"):
        sk.block("dense", heads=2)
    with pytest.raises(ValueError, match="inner"):
        # a widened MLP's hidden layer has no place for a width-sized norm
        sk.block("residual", norm="layer", norm_position="inner", expansion=4)
    with pytest.raises(ValueError, match="learnable_alpha"):
        sk.block("dense", learnable_alpha=True)
    p = _residual5()  # (batch, 8) inputs, 5 blocks
    with pytest.raises(ValueError, match="sequence axis"):
        sk.net_apply(p, jnp.ones((2, 5, 8)))
    # the batch's size is checked from the block alone, before the parameters are read
    bn = dataclasses.replace(p, block=sk.block("residual", norm="batch"))
    with pytest.raises(ValueError, match="batch norm needs a batch of at least 2"):
        sk.trace(bn, jnp.ones((1, 8)))
    with pytest.raises(ValueError, match="depth=6 exceeds"):
        sk.net_apply(p, jnp.ones((2, 8)), depth=6)
    with pytest.raises(ValueError, match="unknown hyper-parameter 'softcap'"):
        sk.net_init(KEY, "dense", depth=2, width=4, softcap=1.0)
    with pytest.raises(ValueError, match="alpha must be a finite real"):
        sk.net_init(KEY, "residual", depth=2, width=4, alpha=float("nan"))
    with pytest.raises(ValueError, match="embed=False needs in_dim == width"):
        sk.net_init(KEY, "dense", depth=2, width=4, in_dim=3, embed=False)
    with pytest.raises(TypeError, match="NetParams"):
        sk.net_apply({"w": 1}, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="activation is part of a network's block"):
        sk.trace(p, jnp.ones((2, 8)), activation="relu")

    def init(key, width, dtype):
        return {"w": jnp.ones((width, 2 * width), dtype)}

    def apply(params, h):
        return h @ params["w"]  # doubles the width: not a block

    wide = sk.net_init(KEY, sk.user_block(init, apply), depth=2, width=4)
    with pytest.raises(ValueError, match="must keep its input's shape"):
        sk.net_apply(wide, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="init failed"):
        sk.net_init(KEY, sk.user_block(lambda k, w, d: 1 / 0, apply), depth=2, width=4)


def test_final_norm_before_the_readout():
    blk = sk.block("residual", norm="layer")
    p = sk.net_init(KEY, blk, depth=3, width=8, final_norm="layer", embed=False)
    x = jax.random.normal(jax.random.key(5), (4, 8)) * 3
    eye = {"w": jnp.eye(8), "b": jnp.zeros(8)}
    h = sk.net_apply(dataclasses.replace(p, final_norm=None, readout=eye), x)
    ref = _ref_ln(_np(h), 1.0, 0.0, 1e-6) @ _np(p.readout["w"])
    np.testing.assert_allclose(_np(sk.net_apply(p, x)), ref, rtol=1e-5, atol=1e-6)
    t = sk.trace(p, x)
    assert np.isfinite(float(t.param_grad_rms[4]))
    with pytest.raises(ValueError, match="final_norm"):
        sk.net_init(KEY, blk, depth=3, width=8, final_norm="batch")
