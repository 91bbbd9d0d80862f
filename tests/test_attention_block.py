"""The attention branch (stabkit.networks.attention) against a float64 NumPy reference, and the
``attention`` study's claims.

Tolerance (one table, in units of the dtype's eps, relative to the largest reference entry):
``TOL_EPS``. A branch output passes through about six roundings in the parameters' dtype (three
projections, the logits, the softmax rounded once from float32, ``A V`` and the output map), each
a sum of at most 16 terms here: 16 eps covers them in float16/bfloat16 with room for the
accumulation; float32/float64 sum in their own precision (64 eps: XLA:CPU's dot products are not
compensated). The taps are float32 statistics of the rounded logits: compared at 16 eps of
float32 (or of the dtype, whichever is larger) relative to their scale.
"""

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit
from stabkit.activations import get_activation
from stabkit.networks import block, net_apply, net_init
from stabkit.networks.attention import attention_branch, rank_residual
from tests.conftest import eps, jdtype

TOL_EPS = {"float16": 16, "bfloat16": 16, "float32": 64, "float64": 64}
WIDTH, SEQ, BATCH = 16, 5, 3


def x64(dtype):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def hyper(dtype="float32", *, scale=1.0, softcap=0.0, bias_std=0.0, eps_=1e-6):
    c = jnp.float64 if dtype == "float64" else jnp.float32
    values = {"scale": scale, "bias_std": bias_std, "alpha": 1.0, "eps": eps_, "softcap": softcap}
    return {k: jnp.asarray(v, c) for k, v in values.items()}


@functools.cache
def _branch(**options):
    # One branch object per option set: its jitted apply (``_jitted``) compiles once per dtype.
    return attention_branch(get_activation("relu"), "relu", **options)


def make(dtype, *, key=0, scale=1.0, softcap=0.0, bias_std=0.0, **options):
    """(branch, params, u, hyper) for a branch of ``options`` at WIDTH, inputs N(0, 1)."""
    branch = _branch(**options)
    hy = hyper(dtype, scale=scale, softcap=softcap, bias_std=bias_std)
    params = branch.init(jax.random.key(key), WIDTH, jdtype(dtype), "gaussian", hy)
    u = jax.random.normal(jax.random.key(key + 1), (BATCH, SEQ, WIDTH)).astype(jdtype(dtype))
    return branch, params, u, hy


@functools.lru_cache
def _jitted(branch):
    return jax.jit(lambda p, u, h: branch.apply(p, u, h, lambda v: v))


def apply(branch, params, u, hy):
    """The branch's (output, taps), one compilation per branch and shapes."""
    return _jitted(branch)(params, u, hy)


def reference(
    params,
    u,
    *,
    heads,
    qk_norm=False,
    causal=False,
    mlp=False,
    softcap=0.0,
    eps_=1e-6,
    expansion=None,
):
    """Multi-head attention in float64 NumPy on the (rounded) parameters and input."""
    del expansion  # read off the parameters' shapes
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    u = np.asarray(u, np.float64)
    b, n, w = u.shape
    d = w // heads

    def heads_of(m):
        return (u @ m).reshape(b, n, heads, d)

    def ln(v, gain):
        c = v - v.mean(-1, keepdims=True)
        return c / np.sqrt((c**2).mean(-1, keepdims=True) + eps_) * gain

    q, k, v = heads_of(p["wq"]), heads_of(p["wk"]), heads_of(p["wv"])
    if qk_norm:
        q, k = ln(q, p["q_gain"]), ln(k, p["k_gain"])
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    mask = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    z = np.where(mask, s, -np.inf)
    a = np.exp(z - z.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, w)
    if mlp:
        hidden = np.maximum(u @ p["w"] + p["b"], 0)
        f = np.concatenate([out, hidden], -1) @ p["w_last"] + p["b_last"]
    else:
        f = out @ p["w_last"]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log(a), 0.0)
    taps = {
        "logit_max": np.where(mask, np.abs(s), 0).max(axis=(0, 2, 3)),
        "entropy": -plogp.sum(-1).mean(axis=(0, 2)),
    }
    return f, taps


CASES = {
    "plain": {"heads": 1},
    "full": {"heads": 2, "qk_norm": True, "causal": True, "softcap": 2.0},
    "mlp": {"heads": 4, "mlp": True, "expansion": 2, "bias_std": 0.5},
}


@pytest.mark.parametrize(
    "case, dtype",
    [("plain", "float32"), ("mlp", "float16")]
    + [("full", d) for d in ("float16", "bfloat16", "float32", "float64")],
)
def test_matches_float64_reference(case, dtype):
    opts = dict(CASES[case])
    softcap, bias_std = opts.pop("softcap", 0.0), opts.pop("bias_std", 0.0)
    with x64(dtype):
        branch, params, u, hy = make(dtype, softcap=softcap, bias_std=bias_std, **opts)
        f, taps = apply(branch, params, u, hy)
        assert f.shape == u.shape and f.dtype == u.dtype
        assert taps["logit_max"].shape == taps["entropy"].shape == (opts["heads"],)
        ref, ref_taps = reference(params, u, softcap=softcap, **opts)
        tol = TOL_EPS[dtype] * eps(dtype)
        np.testing.assert_allclose(
            np.asarray(f, np.float64), ref, rtol=0, atol=tol * np.abs(ref).max()
        )
        tap_tol = max(tol, 16 * eps("float32"))
        for name, value in ref_taps.items():
            got = np.asarray(taps[name], np.float64)
            np.testing.assert_allclose(
                got, value, rtol=0, atol=tap_tol * max(1.0, np.abs(value).max())
            )
        res = np.asarray(taps["rank_residual"])
        u64 = np.asarray(u, np.float64)
        c = u64 - u64.mean(1, keepdims=True)
        ref_res = np.mean(np.sqrt((c**2).sum((1, 2)) / (u64**2).sum((1, 2))))
        np.testing.assert_allclose(res, ref_res, rtol=16 * eps("float32"))


def test_fixup_zeroes_both_output_maps_of_the_parallel_layer():
    b = block("attention", mlp=True, expansion=2, fixup=True)
    u = jax.random.normal(jax.random.key(1), (BATCH, SEQ, WIDTH))

    @jax.jit
    def init_apply(key, u, hy):
        params = b.init(key, WIDTH, jnp.float32, "gaussian", hy)
        return params, b.apply(params, u, hy)[0]

    params, out = init_apply(jax.random.key(0), u, hyper(bias_std=1.0))
    br = params["branch"]
    assert br["w_last"].shape == (WIDTH + 2 * WIDTH, WIDTH)
    assert not np.any(np.asarray(br["w_last"])) and not np.any(np.asarray(br["b_last"]))
    assert np.all(np.asarray(br["b"]) != 0)  # the hidden layer keeps its draw
    np.testing.assert_array_equal(out, u)  # every block starts as the identity


def test_causal_output_does_not_depend_on_later_positions():
    branch, params, u, hy = make("float32", heads=2, qk_norm=True, causal=True)
    f, _ = apply(branch, params, u, hy)
    for t in range(SEQ - 1):
        noise = jax.random.normal(jax.random.key(100 + t), u.shape)
        later = (jnp.arange(SEQ) > t)[None, :, None]
        g, _ = apply(branch, params, jnp.where(later, noise, u), hy)
        np.testing.assert_array_equal(g[:, : t + 1], f[:, : t + 1])  # masked keys add exactly 0
        assert np.all(np.asarray(g[:, t + 1 :] != f[:, t + 1 :]).any(axis=-1))


def test_softcap_bounds_the_logits():
    branch, params, u, hy = make("float32", heads=1, scale=8.0)
    _, taps = apply(branch, params, u, hy)
    assert float(taps["logit_max"].min()) > 10.0  # uncapped logits far above the cap
    _, capped = apply(branch, params, u, {**hy, "softcap": jnp.float32(3.0)})
    assert np.all(np.asarray(capped["logit_max"]) <= 3.0)
    assert float(capped["logit_max"].max()) > 2.9  # tanh saturates near the cap


def test_qk_norm_bounds_the_logits_whatever_the_scale():
    # |q| = |k| = sqrt(d) after the norm (gain 1, eps -> 0), so |q.k| / sqrt(d) <= sqrt(d).
    branch, params, u, hy = make("float32", heads=2, qk_norm=True, causal=True, scale=100.0)
    _, taps = apply(branch, params, u, hy)
    d = WIDTH // 2
    assert np.all(np.asarray(taps["logit_max"]) <= math.sqrt(d) * (1 + 1e-5))
    plain, pp, _, _ = make("float32", heads=1, scale=100.0)
    assert float(apply(plain, pp, u, hy)[1]["logit_max"].min()) > 1e3


@pytest.mark.parametrize("causal", [False, True])
def test_uniform_attention_entropy(causal):
    options = {"heads": 2, "qk_norm": True, "causal": True} if causal else {"heads": 1}
    branch, params, u, hy = make("float32", **options)
    params = {**params, "wq": jnp.zeros_like(params["wq"])}  # logits 0 (q = 0): uniform attention
    _, taps = apply(branch, params, u, hy)
    n = np.arange(1, SEQ + 1) if causal else np.full(SEQ, SEQ)
    expected = np.mean(np.log(n))  # log(t + 1) for query t, averaged over the queries
    np.testing.assert_allclose(np.asarray(taps["entropy"]), expected, rtol=16 * eps("float32"))
    assert taps["entropy"].shape == (options["heads"],)
    assert np.all(np.asarray(taps["logit_max"]) == 0)


def test_float16_logit_overflow_is_reported_not_raised():
    # q and k entries ~ 300 * N(0, 1): q.k / sqrt(d) ~ 300^2 * sqrt(8) > 65504, so the float16
    # logits overflow to inf; their rows' softmax and entropy are NaN, the taps say so.
    branch, params, u, hy = make("float16", heads=4, mlp=True, expansion=2, scale=300.0)
    f, taps = apply(branch, params, u, hy)
    assert np.isposinf(np.asarray(taps["logit_max"])).all()
    assert np.isnan(np.asarray(taps["entropy"])).all()
    assert np.isnan(np.asarray(f, np.float32)).any()
    # The same weights in float32: finite logits beyond float16's range.
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    _, t32 = apply(branch, p32, u.astype(jnp.float32), hy)
    assert float(t32["logit_max"].max()) > float(jnp.finfo(jnp.float16).max)
    assert np.isfinite(np.asarray(t32["entropy"])).all()


def test_rank_residual_edge_cases():
    u = jnp.stack([jnp.zeros((3, 2)), jnp.ones((3, 2)), jnp.full((3, 2), jnp.inf)])
    res = jax.jit(rank_residual)
    got = np.asarray(res(u))
    assert got[0] == 0 and got[1] == 0 and np.isnan(got[2])
    big = jnp.asarray([[[3e38, 0.0], [-3e38, 0.0]]])  # squares overflow float32 unless scaled
    assert abs(float(res(big)[0]) - 1) <= 4 * eps("float32")


def test_bad_options_and_heads_not_dividing_width():
    with pytest.raises(ValueError, match="heads must be >= 1"):
        block("attention", heads=0)
    with pytest.raises(TypeError, match="causal must be True or False"):
        block("attention", causal="yes")
    with pytest.raises(TypeError, match="no option 'window'"):
        block("attention", window=3)
    branch = attention_branch(get_activation("relu"), "relu", heads=3)
    with pytest.raises(ValueError, match=r"heads=3 does not divide width=16.*\[1, 2, 4, 8, 16\]"):
        branch.init(jax.random.key(0), 16, jnp.float32, "gaussian", hyper())
    # net_init reports it before compiling, naming heads and width.
    with pytest.raises(ValueError, match="heads=3 does not divide width=16"):
        net_init(jax.random.key(0), block("attention", heads=3), depth=2, width=16)
    p = net_init(jax.random.key(0), block("attention", heads=2), depth=1, width=8)
    with pytest.raises(ValueError, match="sequence"):
        net_apply(p, jnp.ones((2, 8)))  # no sequence axis


def test_through_net_init_and_net_apply():
    b = block("attention", heads=4, qk_norm=True, causal=True)
    assert b.describe() == "attention (4 heads, causal, qk norm), residual"
    p = net_init(jax.random.key(3), b, depth=3, width=WIDTH, in_dim=3, out_dim=2, softcap=5.0)
    x = jax.random.normal(jax.random.key(4), (BATCH, SEQ, 3))
    y = net_apply(p, x, depth=1)
    assert y.shape == (BATCH, SEQ, 2)
    h = np.asarray(x, np.float64) @ np.asarray(p.embed["w"], np.float64)
    one = jax.tree.map(lambda a: a[0], p.blocks["branch"])
    f, _ = reference(one, h, heads=4, qk_norm=True, causal=True, softcap=5.0)
    want = (h + f) @ np.asarray(p.readout["w"], np.float64)
    np.testing.assert_allclose(
        np.asarray(y, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max()
    )


def test_inspect_finds_the_float16_logit_overflow():
    # Small: inspect's own program dominates the cost. The block's own apply, not net_apply: the
    # same attention equations without the depth loop and the readout (a quarter less CPU).
    b = block("attention", heads=1, residual=False)
    p = net_init(
        jax.random.key(0), b, depth=1, width=4, dtype=jnp.float16, scale=300.0, embed=False
    )
    x = jax.random.normal(jax.random.key(1), (1, 2, 4)).astype(jnp.float16)
    one = jax.tree.map(lambda a: a[0], p.blocks)  # the first (only) block's parameters
    report = stabkit.inspect(lambda bp, x: b.apply(bp, x, p.hyper)[0], one, x)
    first = report.origins[0]
    assert first.kind == "inf" and first.primitive == "dot_general"
    assert not np.isfinite(np.asarray(report.outputs, np.float32)).all()


# -- the attention study's claims ------------------------------------------------------------


@pytest.fixture(scope="module")
def study():
    path = pathlib.Path(__file__).parents[1] / "experiments" / "attention.py"
    spec = importlib.util.spec_from_file_location("attention_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _numbers(study):
    """Hand-made numbers shaped as ``measure()``'s, following the theory the claims test."""
    cfg = study.QUICK
    L, n_seq = cfg.depth, cfg.seeds * cfg.inputs
    cases, theory = {}, {}
    for name, (_, alpha_of, uniform) in study.CASES.items():
        depth = cfg.pure_depth if alpha_of is None else L
        alpha = 1.0 if alpha_of is None else alpha_of(depth)
        if name == "pure":
            res = np.array([0.97, 0.73, 0.037, 3e-6, 3e-16, 3e-16, 3e-16])
        elif name.startswith("post"):
            res = 0.97 * 0.76 ** np.arange(L + 1)
        else:
            th = study.uniform_theory(np.full((1, 1), 0.968), cfg.width, alpha, L).ravel()
            theory[name] = th.tolist()
            res = th + (0.0 if uniform else 0.03)
        ratio = 0.4 * res[:-1] ** 2
        cases[name] = {
            "depth": depth,
            "alpha": alpha,
            "res_mean": res.tolist(),
            "res_se": np.full(depth + 1, 0.005).tolist(),
            "res_max": (1.5 * res).tolist(),
            "res_min": (0.5 * res).tolist(),
            "qk_grad": ratio.tolist(),
            "v_grad": np.ones(depth).tolist(),
        }
    pairs = {
        name: {"res_in": c["res_mean"][:-1], "ratio": (np.asarray(c["qk_grad"])).tolist()}
        for name, c in cases.items()
    }
    return {
        "config": dataclasses.asdict(cfg),
        "cases": cases,
        "uniform_theory": theory,
        "order": [3.3] * n_seq,
        "pairs": pairs,
    }


def test_study_claims_pass_and_fail_when_spoiled(study, tmp_path):
    numbers = _numbers(study)
    claims = study.claims(numbers)
    assert claims and all(c.passed for c in claims), [c for c in claims if not c.passed]
    stored = json.loads(stabkit.save_json(tmp_path / "n.json", numbers).read_text())
    assert study.claims(stored) == claims
    assert len(study.SPOILERS) == len(claims)  # one per claim
    for spoil in study.SPOILERS:
        bad = copy.deepcopy(numbers)
        which = spoil(bad)
        verdicts = study.claims(bad)
        assert not verdicts[which].passed, (which, verdicts[which])
        assert all(c.passed for i, c in enumerate(verdicts) if i != which), which
