"""Tests of the optax fixes: safe clipping, skipping non-finite steps, dynamic loss scaling."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stabkit.fixes import (
    DynamicLossScale,
    LossScaleState,
    all_finite,
    loss_scale_of,
    loss_scaling,
    safe_clip_by_global_norm,
    safe_global_norm,
    skip_nonfinite,
)
from tests.conftest import ULPS, eps, jdtype


def _x64(name):
    return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()


# ------------------------------------------------------------------------------ safe global norm


def test_global_norm_matches_float64(dtype):
    with _x64(dtype):
        rng = np.random.default_rng(0)
        tree = {
            "a": jnp.asarray(rng.normal(size=(5, 3)), jdtype(dtype)),
            "b": [jnp.asarray(rng.normal(size=7) * 100, jdtype(dtype))],
        }
        ref = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
        got = safe_global_norm(tree)
        assert got.dtype == jnp.promote_types(jdtype(dtype), jnp.float32)
        tol = 8 * max(eps(dtype) if dtype == "float64" else eps("float32"), 0)
        np.testing.assert_allclose(float(got), ref, rtol=tol)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_global_norm_does_not_overflow(dtype):
    big = float(jnp.finfo(jdtype(dtype)).max) / 2
    tree = {"w": jnp.full((4,), big, jdtype(dtype))}
    norm = float(safe_global_norm(tree))
    np.testing.assert_allclose(norm, 2 * float(jnp.asarray(big, jdtype(dtype))), rtol=1e-6)
    assert np.isfinite(norm) or dtype == "float32"  # float32 max * 2 is beyond float32 itself


def test_global_norm_non_finite_and_empty():
    assert float(safe_global_norm({"a": jnp.array([1.0, jnp.inf, jnp.nan])})) == np.inf
    assert np.isnan(float(safe_global_norm({"a": jnp.array([1.0, jnp.nan])})))
    assert float(safe_global_norm({})) == 0.0
    assert float(safe_global_norm(jnp.zeros(3))) == 0.0
    # The gradient at 0 is finite (double where), not NaN.
    g = jax.grad(lambda x: safe_global_norm({"x": x}))(jnp.zeros(3))
    assert bool(jnp.all(jnp.isfinite(g)))


# ----------------------------------------------------------------------------------- clipping


def test_peer_clip_holes_and_ours():
    """optax: inf leaf -> NaN; float16 norm overflow -> silently zero update. Ours: neither."""
    g_inf = {"a": jnp.array([jnp.inf, 1.0]), "b": jnp.array([-jnp.inf])}
    g16 = {"w": jnp.full((4,), 300.0, jnp.float16)}
    peer = optax.clip_by_global_norm(1.0)
    assert bool(jnp.isnan(peer.update(g_inf, peer.init(g_inf))[0]["a"][0]))
    assert bool(jnp.all(peer.update(g16, peer.init(g16))[0]["w"] == 0))

    ours = safe_clip_by_global_norm(1.0)
    out = ours.update(g_inf, ours.init(g_inf))[0]
    assert all_finite(out)
    s = 1 / np.sqrt(2)  # two infinite entries share the norm
    np.testing.assert_allclose(np.asarray(out["a"]), [s, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), [-s], rtol=1e-6)
    np.testing.assert_allclose(float(safe_global_norm(out)), 1.0, rtol=1e-6)
    out16 = ours.update(g16, ours.init(g16))[0]["w"]
    assert out16.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(out16, np.float32), 0.5)


def test_clip_matches_formula(dtype):
    with _x64(dtype):
        rng = np.random.default_rng(1)
        tree = {"a": rng.normal(size=(4, 4)) * 10, "b": rng.normal(size=3)}
        ref_norm = np.sqrt(sum(np.sum(x**2) for x in tree.values()))
        tree = jax.tree.map(lambda x: jnp.asarray(x, jdtype(dtype)), tree)
        for c in (0.5 * ref_norm, 2 * ref_norm):
            clip = safe_clip_by_global_norm(c)
            out = jax.jit(clip.update)(tree, clip.init(tree))[0]
            for k in tree:
                assert out[k].dtype == tree[k].dtype
                x = np.asarray(tree[k], np.float64)
                norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values()))
                ref = x * min(1.0, c / norm)
                tol = (ULPS[dtype] + 2) * eps(dtype)
                np.testing.assert_allclose(np.asarray(out[k], np.float64), ref, rtol=tol, atol=0)


def test_clip_zero_and_nan_and_grad():
    clip = safe_clip_by_global_norm(1.0)
    z = {"a": jnp.zeros(3)}
    assert bool(jnp.all(clip.update(z, clip.init(z))[0]["a"] == 0))
    g = jax.grad(lambda x: jnp.sum(clip.update({"a": x}, optax.EmptyState())[0]["a"]))(jnp.zeros(3))
    assert bool(jnp.all(jnp.isfinite(g)))
    # NaN stays NaN; the rest is clipped as if it were absent.
    out = clip.update({"a": jnp.array([jnp.nan, 3.0, 4.0])}, optax.EmptyState())[0]["a"]
    assert bool(jnp.isnan(out[0]))
    np.testing.assert_allclose(np.asarray(out[1:]), [0.6, 0.8], rtol=1e-6)


def test_clip_under_vmap_and_chain():
    clip = optax.chain(safe_clip_by_global_norm(1.0), optax.sgd(1.0))
    p = jnp.zeros(2)
    g = jnp.array([[3.0, 4.0], [0.3, 0.4], [jnp.inf, 0.0]])
    out = jax.vmap(lambda gi: clip.update(gi, clip.init(p), p)[0])(g)
    np.testing.assert_allclose(np.asarray(out), [[-0.6, -0.8], [-0.3, -0.4], [-1.0, 0.0]], 1e-6)


# ------------------------------------------------------------------------------- skip non-finite


class _DivideByZero:
    """An inner transformation that turns a finite gradient into NaN (0/0), as Adam can in fp16."""

    @staticmethod
    def make():
        def update(u, s, p=None):
            del p
            return jax.tree.map(lambda x: x / jnp.zeros_like(x), u), s

        return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def test_skip_sequence_and_bound():
    opt = skip_nonfinite(optax.adam(0.1), max_consecutive_skips=2)
    p = jnp.ones(2)
    s = opt.init(p)
    u, s = opt.update(jnp.ones(2), s, p)
    mu = s.inner_state[0].mu
    bad = jnp.array([jnp.inf, 1.0])
    for k in (1, 2):
        u, s = opt.update(bad, s, p)
        assert bool(jnp.all(u == 0)) and int(s.consecutive) == k and int(s.total) == k
        np.testing.assert_array_equal(s.inner_state[0].mu, mu)  # moments untouched
        assert not bool(s.last_finite)
    u, s = opt.update(bad, s, p)  # the third in a row is let through
    assert not all_finite(u) and int(s.consecutive) == 3
    # Adam's moments now hold the inf: the run has visibly died, every later step is non-finite.
    u, s = opt.update(jnp.ones(2), s, p)
    assert not all_finite(u) and int(s.consecutive) == 4


def test_skip_finite_step_resets_the_count():
    opt = skip_nonfinite(optax.sgd(1.0), max_consecutive_skips=3)
    p = jnp.ones(2)
    s = opt.init(p)
    for g in (jnp.array([jnp.nan, 0.0]), jnp.array([jnp.nan, 0.0]), jnp.ones(2)):
        u, s = opt.update(g, s, p)
    np.testing.assert_array_equal(u, [-1.0, -1.0])
    assert int(s.consecutive) == 0 and int(s.total) == 2 and bool(s.last_finite)


def test_skip_checks_the_inner_update_too():
    """optax.apply_if_finite checks only the incoming gradient; zero_nans lets inf through."""
    g, p = jnp.ones(2), jnp.ones(2)
    peer = optax.apply_if_finite(_DivideByZero.make(), max_consecutive_errors=5)
    assert not all_finite(peer.update(g, peer.init(p), p)[0])
    zn = optax.zero_nans()
    assert not all_finite(zn.update(jnp.array([jnp.inf, 1.0]), zn.init(p))[0])
    ours = skip_nonfinite(_DivideByZero.make(), max_consecutive_skips=5)
    u, s = ours.update(g, ours.init(p), p)
    assert bool(jnp.all(u == 0)) and int(s.total) == 1


def test_skip_zero_bound_lets_everything_through():
    opt = skip_nonfinite(optax.sgd(1.0), max_consecutive_skips=0)
    p = jnp.ones(1)
    u, s = opt.update(jnp.array([jnp.nan]), opt.init(p), p)
    assert bool(jnp.isnan(u[0])) and int(s.total) == 1


# ---------------------------------------------------------------------------------- loss scale
#
# The documented rules, written step by step as references:
#
# jmp.DynamicLossScale.adjust(grads_finite) (jmp/_src/loss_scale.py):
#     loss_scale = where(grads_finite,
#                        where(counter == period - 1, loss_scale * factor, loss_scale),
#                        maximum(min_loss_scale, loss_scale / factor))
#     counter = ((counter + 1) % period) * grads_finite
#
# torch.amp.GradScaler.update() (_amp_update_scale_), defaults init_scale 2**16,
# growth_factor 2.0, backoff_factor 0.5, growth_interval 2000:
#     if found_inf: scale *= backoff_factor; growth_tracker = 0
#     else:
#         successful = growth_tracker + 1
#         if successful == growth_interval:
#             new_scale = scale * growth_factor
#             if isfinite(new_scale): scale = new_scale
#             growth_tracker = 0
#         else: growth_tracker = successful


def _jmp_reference(scale, counter, finite_seq, *, period, factor, min_scale):
    out = []
    for finite in finite_seq:
        if finite:
            scale = scale * factor if counter == period - 1 else scale
        else:
            scale = max(min_scale, scale / factor)
        counter = ((counter + 1) % period) * int(finite)
        out.append((scale, counter))
    return out


def _torch_reference(scale, tracker, finite_seq, *, interval, growth, backoff, dtype):
    out = []
    for finite in finite_seq:
        if not finite:
            scale = float(np.asarray(scale * backoff, dtype))
            tracker = 0
        else:
            successful = tracker + 1
            if successful == interval:
                with np.errstate(over="ignore"):
                    new = float(np.asarray(scale * growth, dtype))
                if np.isfinite(new):
                    scale = new
                tracker = 0
            else:
                tracker = successful
        out.append((scale, tracker))
    return out


def _replay(rule, finite_seq):
    adjust = jax.jit(rule.adjust)
    s = rule.init()
    out = []
    for finite in finite_seq:
        s = adjust(s, finite)
        out.append((float(s.scale), int(s.counter)))
    return out


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(1, 4), st.sampled_from([2, 3]))
def test_scale_matches_jmp(seq, period, factor):
    rule = DynamicLossScale(initial_scale=2.0**5, period=period, factor=factor, min_scale=0.25)
    ref = _jmp_reference(2.0**5, 0, seq, period=period, factor=float(factor), min_scale=0.25)
    got = _replay(rule, seq)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(1, 4))
def test_scale_matches_torch(seq, interval):
    # torch has no minimum: the smallest float32 normal plays that part (never reached here).
    rule = DynamicLossScale(initial_scale=2.0**16, period=interval, factor=2.0, min_scale=2.0**-126)
    ref = _torch_reference(
        2.0**16, 0, seq, interval=interval, growth=2.0, backoff=0.5, dtype=np.float32
    )
    assert _replay(rule, seq) == ref


def test_scale_stays_finite_and_respects_min_in_float16():
    rule = DynamicLossScale(initial_scale=2.0**14, period=1, min_scale=2.0**-10, dtype="float16")
    up = _replay(rule, [True] * 5)
    assert [s for s, _ in up] == [2.0**15, 2.0**15, 2.0**15, 2.0**15, 2.0**15]  # 2**16 is inf
    assert rule.init().scale.dtype == jnp.float16
    down = _replay(rule, [False] * 40)
    assert down[-1][0] == 2.0**-10 and down[23][0] == 2.0**-10 and down[22][0] == 2.0**-9
    # torch's reference agrees on the float16 growth guard
    ref = _torch_reference(2.0**14, 0, [True] * 5, interval=1, growth=2, backoff=0.5, dtype="f2")
    assert ref == up


def test_scale_state_survives_pytree_round_trip():
    rule = DynamicLossScale(initial_scale=4.0, period=3, min_scale=0.5, dtype="bfloat16")
    s = rule.adjust(rule.init(), True)
    leaves, treedef = jax.tree.flatten(s)
    s2 = jax.tree.unflatten(treedef, leaves)
    assert isinstance(s2, LossScaleState) and s2 == s
    # the minimum lives in the rule, not in the state, so it cannot be lost (jmp's bug)
    for _ in range(10):
        s2 = jax.jit(rule.adjust)(jax.tree.unflatten(treedef, jax.tree.leaves(s2)), False)
    assert float(s2.scale) == 0.5 and s2.scale.dtype == jnp.bfloat16
    # and vmap over a batch of states works
    batch = jax.vmap(rule.adjust)(jax.tree.map(lambda x: jnp.stack([x, x]), s), jnp.array([1, 0]))
    np.testing.assert_array_equal(np.asarray(batch.scale, np.float32), [4.0, 2.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"period": 0}, "period"),
        ({"period": -3}, "period"),
        ({"factor": 1.0}, "factor"),
        ({"min_scale": 0.0}, "min_scale"),
        ({"initial_scale": -1.0}, "initial_scale"),
        ({"initial_scale": 1e6, "dtype": "float16"}, "initial_scale"),
        ({"initial_scale": 1.0, "min_scale": 2.0}, "min_scale"),
    ],
)
def test_scale_rule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicLossScale(**kwargs)
    with pytest.raises(TypeError, match="dtype"):
        DynamicLossScale(dtype="int32")


def test_loss_scaling_unscales_skips_and_backs_off():
    rule = DynamicLossScale(initial_scale=8.0, period=2)
    opt = optax.chain(safe_clip_by_global_norm(100.0), loss_scaling(optax.adam(0.1), rule))
    p = jnp.ones(2)
    s = opt.init(p)
    assert float(loss_scale_of(s)) == 8.0
    u1, s = opt.update(8.0 * jnp.array([1.0, -1.0]), s, p)
    ref = optax.adam(0.1)
    u_ref, _ = ref.update(jnp.array([1.0, -1.0]), ref.init(p), p)
    np.testing.assert_allclose(np.asarray(u1), np.asarray(u_ref), rtol=1e-6)
    inner_before = s[1].inner_state
    u2, s = opt.update(jnp.array([jnp.nan, 1.0]), s, p)
    assert bool(jnp.all(u2 == 0)) and float(loss_scale_of(s)) == 4.0
    assert int(s[1].loss_scale.skipped) == 1
    for a, b in zip(jax.tree.leaves(inner_before), jax.tree.leaves(s[1].inner_state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_loss_scaling_errors():
    with pytest.raises(TypeError, match="inner"):
        loss_scaling(lambda g: g)
    with pytest.raises(TypeError, match="rule"):
        loss_scaling(optax.sgd(1.0), rule=2.0)
    with pytest.raises(ValueError, match="LossScaleState"):
        loss_scale_of(optax.sgd(1.0).init(jnp.ones(1)))
    with pytest.raises(ValueError, match="max_norm"):
        safe_clip_by_global_norm(0.0)
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        skip_nonfinite(optax.sgd(1.0), -1)
    with pytest.raises(TypeError, match="dtype int32"):
        safe_global_norm({"a": jnp.ones(2, jnp.int32)})


_CLIP = {c: safe_clip_by_global_norm(c) for c in (1e-3, 1.0, 1e3)}


@given(
    st.sampled_from(["float16", "bfloat16", "float32"]),
    st.sampled_from(sorted(_CLIP)),
    st.floats(-30, 30),
    st.integers(0, 2**31 - 1),
)
def test_clip_properties(dtype, c, log_mag, seed):
    """Clipped norm <= c, direction kept, small updates untouched, dtype kept, never NaN."""
    rng = np.random.default_rng(seed)
    fmax = float(jnp.finfo(jdtype(dtype)).max)
    mag = min(2.0**log_mag, fmax / 8)
    tree = {
        "a": jnp.asarray(rng.normal(size=(3, 4)) * mag, jdtype(dtype)),
        "b": jnp.asarray(rng.normal(size=5) * mag, jdtype(dtype)),
    }
    out = jax.jit(_CLIP[c].update)(tree, optax.EmptyState())[0]
    assert all(out[k].dtype == tree[k].dtype for k in tree) and all_finite(out)
    norm_in = float(safe_global_norm(tree))
    norm_out = float(safe_global_norm(out))
    slack = 1 + 4 * eps(dtype)
    assert norm_out <= c * slack + float(jnp.finfo(jdtype(dtype)).tiny)
    if norm_in <= c:
        for k in tree:
            np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(tree[k]))
    elif norm_out > 0:
        # same direction: out = tree * (c / norm) up to one rounding per entry
        x = np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in tree])
        y = np.concatenate([np.asarray(out[k], np.float64).ravel() for k in tree])
        np.testing.assert_allclose(
            y,
            x * (c / norm_in),
            rtol=2 * eps(dtype),
            atol=4 * float(jnp.finfo(jdtype(dtype)).smallest_subnormal),
        )


# ------------------------------------------------------------------- issue 11: bad arguments


@pytest.mark.parametrize(
    "tree, match",
    [
        ("abc", r"{t} must be a pytree of floating-point arrays, got {t} = str 'abc'"),
        ({"w": [1.0, "x"]}, r"{t}\['w'\]\[1\] = str"),
        ({"w": jnp.ones(2, jnp.int32)}, r"{t}\['w'\] of dtype int32"),
        ([2**70], r"{t}\[0\] of int"),  # refused before JAX (it would overflow there)
        ({"b": True}, r"{t}\['b'\] = bool"),
        ({"k": jax.random.key(0)}, r"{t}\['k'\] of dtype key"),
    ],
)
def test_trees_that_are_not_float_arrays_are_named(tree, match):
    for fn in (safe_global_norm, all_finite):
        with pytest.raises(TypeError, match=match.format(t="tree")):
            fn(tree)
    clip = safe_clip_by_global_norm(1.0)
    with pytest.raises(TypeError, match=match.format(t="updates")):
        clip.update(tree, clip.init(tree))


def test_update_functions_check_their_state():
    p = {"w": jnp.ones(2)}
    skip = skip_nonfinite(optax.sgd(0.1), 2)
    scaled = loss_scaling(optax.sgd(0.1))
    with pytest.raises(TypeError, match="updates must be a pytree"):
        skip.update("abc", skip.init(p), p)
    with pytest.raises(TypeError, match="state must be the SkipState that skip_nonfinite"):
        skip.update(p, optax.EmptyState(), p)
    with pytest.raises(TypeError, match="state must be the LossScalingState that loss_scaling"):
        scaled.update(p, skip.init(p), p)
    rule = DynamicLossScale()
    with pytest.raises(TypeError, match="state must be the LossScaleState"):
        rule.adjust((1.0, 0, 0), True)
    for finite in ("yes", 1.0, jnp.ones(2, bool), jnp.float32(1)):
        with pytest.raises(TypeError, match="finite must be a boolean"):
            rule.adjust(rule.init(), finite)
    with pytest.raises(TypeError, match=r"state\.scale has dtype float16, the rule's is float32"):
        rule.adjust(DynamicLossScale(initial_scale=1024.0, dtype="float16").init(), True)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: skip_nonfinite(optax.sgd(0.1), 2**40), "max_consecutive_skips=1099511627776 is"),
        (lambda: skip_nonfinite(optax.sgd(0.1), True), "max_consecutive_skips must be an int"),
        (lambda: DynamicLossScale(period=2**40), "period=1099511627776 is too large"),
        (lambda: DynamicLossScale(period=np.int64(0)), "period must be >= 1"),
        (lambda: DynamicLossScale(factor=1 + 1e-5, dtype="float16"), r"rounds to 1\.0 in float16"),
        (
            lambda: DynamicLossScale(factor=1e6, dtype="float16", initial_scale=1.0),
            r"factor=1000000\.0 rounds to inf in float16",
        ),
        (lambda: DynamicLossScale(factor=np.nan), "factor must be finite, got nan"),
        (lambda: DynamicLossScale(dtype=None), "dtype must be a floating-point dtype"),
        (lambda: DynamicLossScale(dtype="int8"), "dtype must be a floating-point dtype"),
        (lambda: safe_clip_by_global_norm(np.float32(np.inf)), "max_norm must be finite"),
        (lambda: safe_clip_by_global_norm([1.0]), "max_norm must be a real number"),
    ],
)
def test_fix_constructors_validate(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_float64_loss_scale_needs_x64_and_works_inside_it():
    """DynamicLossScale(dtype="float64") was silently float32 with x64 off; now it says why."""
    rule = DynamicLossScale(initial_scale=2.0**100, period=1, dtype="float64")
    assert rule.dtype == jnp.float64
    with pytest.raises(ValueError, match=r"needs JAX's 64-bit mode: use it inside `with jax"):
        rule.init()
    opt = loss_scaling(optax.sgd(1.0), rule)
    with pytest.raises(ValueError, match="64-bit mode"):
        opt.init(jnp.zeros(2))
    with jax.enable_x64(True):
        s = opt.init(jnp.zeros(2, jnp.float64))
        u, s = opt.update(jnp.full(2, 2.0**100, jnp.float64), s)
        assert loss_scale_of(s).dtype == jnp.float64 and float(loss_scale_of(s)) == 2.0**101
        np.testing.assert_array_equal(np.asarray(u), [-1.0, -1.0])
    assert not jax.config.jax_enable_x64
