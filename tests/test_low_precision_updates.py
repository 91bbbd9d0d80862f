"""Tests of the low-precision update rules: Kahan summation, stochastic rounding, master weights,
and the count of lost updates (weight-update stagnation).

References are NumPy/ml_dtypes: float64 sums rounded once to the narrow format (correctly
rounded), neighbours of a value read from its bit pattern.
"""

import contextlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from stabkit.fixes import (
    KahanState,
    kahan_summation,
    lost_updates,
    master_weights,
    stochastic_round,
    stochastic_rounding,
    update_stagnation,
)
from tests.conftest import jdtype, np_dtype

NARROW = ("bfloat16", "float16")


def _x64(name):
    return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()


def _bits(x):
    """Bit patterns of an array (for bitwise comparison; NaN == NaN, -0 != +0); a PRNG key's
    data."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    x = np.asarray(x)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _neighbours(v32, name):
    """The two ``name`` values around float32 ``v32`` (a, b with |a| <= |v| <= |b|), NumPy."""
    dt = np_dtype(name)
    near = v32.astype(dt)
    bits = _bits(near).astype(np.int64)
    above = np.abs(near.astype(np.float64)) > np.abs(v32.astype(np.float64))
    lo = np.where(above, bits - 1, bits).astype(np.uint16).view(dt)
    hi = (np.where(above, bits - 1, bits) + 1).astype(np.uint16).view(dt)
    return lo, hi


# --------------------------------------------------------------------------- the facts


def test_the_facts_in_numpy():
    bf16, f16 = ml_dtypes.bfloat16, np.float16
    assert bf16(1) + bf16(2**-8) == bf16(1)  # a tie, to even
    assert bf16(1) + bf16(2**-7) != bf16(1)
    assert bf16(256) + bf16(1) == bf16(256)
    assert f16(2048) + f16(1) == f16(2048)


# One compilation per dtype: N steps of plain, Kahan and stochastic updates of u, side by side.
SUM = {  # dtype: (start, increment, steps)
    "bfloat16": (0.0, 1.0, 10000),
    "float16": (0.0, 1.0, 10000),
    "float32": (1.0, 2.0**-26, 10000),  # an eighth of an ulp of 1
    "float64": (1.0, 2.0**-55, 10000),
}
SEEDS = 256


def _sums(p0, u, steps):
    """``steps`` updates of ``u`` on ``p0`` (pytrees): plain, Kahan and stochastic rounding."""
    kahan, sr = kahan_summation(), stochastic_rounding(jax.random.key(7))

    def step(carry, _):
        plain, pk, sk, ps, ss = carry
        dk, sk = kahan.update(u, sk, pk)
        ds, ss = sr.update(u, ss, ps)
        new = optax.apply_updates
        return (new(plain, u), new(pk, dk), sk, new(ps, ds), ss), None

    init = (p0, p0, kahan.init(p0), p0, sr.init(p0))
    plain, pk, sk, ps, _ = jax.lax.scan(step, init, None, length=steps)[0]
    return plain, pk, sk.compensation, ps


@pytest.fixture(scope="module")
def running_sums():
    """One compilation for the three dtypes of x64-off JAX (a pytree of them), one for float64."""
    steps = SUM["bfloat16"][2]
    assert all(v[2] == steps for v in SUM.values())
    out = {}
    for group in (("bfloat16", "float16", "float32"), ("float64",)):
        with _x64(group[0]):
            p0 = {n: jnp.full(SEEDS, SUM[n][0], jdtype(n)) for n in group}
            u = {n: jnp.full(SEEDS, SUM[n][1], jdtype(n)) for n in group}
            res = jax.jit(_sums, static_argnums=2)(p0, u, steps)
            for n in group:
                out[n] = tuple(np.asarray(r[n], np.float64) for r in res)
    return out


@pytest.mark.parametrize("name, stall", [("bfloat16", 256), ("float16", 2048)])
def test_running_sum_of_ones_stalls_and_kahan_makes_it_exact(running_sums, name, stall):
    plain, pk, comp, _ = running_sums[name]
    n = SUM[name][2]
    assert np.all(plain == stall)
    np.testing.assert_array_equal(pk + comp, n)  # p + c is the exact sum, to N = 10000
    ulp = float(ml_dtypes.finfo(np_dtype(name)).eps) * 2.0 ** np.floor(np.log2(n))
    assert np.all(np.abs(pk - n) <= ulp)  # p itself is within an ulp of it


@pytest.mark.parametrize("name", NARROW)
def test_stochastic_running_sum_is_unbiased(running_sums, name):
    ps = running_sums[name][3]
    n = SUM[name][2]
    assert ps.std() > 0  # the 256 entries took different paths
    assert abs(ps.mean() - n) < 4 * ps.std(ddof=1) / np.sqrt(SEEDS)
    assert np.all(np.abs(ps - n) < 0.25 * n)


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_wide_params_lose_small_updates_kahan_keeps_them(running_sums, name):
    plain, pk, comp, ps = running_sums[name]
    start, inc, steps = SUM[name]
    assert np.all(plain == start)  # an eighth of an ulp, lost every step
    np.testing.assert_array_equal(pk + comp, start + steps * inc)  # exact (both terms exact)
    np.testing.assert_array_equal(ps, plain)  # stochastic rounding passes wide params through


# ---------------------------------------------------------------------- stochastic rounding


KEYS = 1000


def _edges(name):
    """Values that stochastic rounding must round to nearest: representable ones, inf, NaN,
    beyond the largest finite number (below and above the overflow tie)."""
    dt = np_dtype(name)
    fmax = float(ml_dtypes.finfo(dt).max)
    ulp_max = float(ml_dtypes.finfo(dt).eps) * 2.0 ** np.floor(np.log2(fmax))
    exact = [0.0, -0.0, 1.0, -3.5, fmax, -fmax, 2.0**-14]
    edge = [np.inf, -np.inf, np.nan, fmax + 0.25 * ulp_max, fmax + 0.75 * ulp_max]
    with np.errstate(over="ignore"):  # bfloat16's beyond float32's largest: -inf is meant
        return np.array(exact + edge + [-fmax - ulp_max], np.float32)


EIGHTH = 8  # the last entries: 1 + eps / 8, to compare keys


@pytest.fixture(scope="module")
def sr_draws():
    """stochastic_round of float32 values, 1000 keys vmapped, both narrow dtypes in one jit:
    values strictly between neighbours (normal; subnormal for float16), then the edges, then
    EIGHTH copies of 1 + eps/8."""
    rng = np.random.default_rng(0)
    values = {}
    for name in NARROW:
        dt = np_dtype(name)
        tiny = float(ml_dtypes.finfo(dt).smallest_subnormal)
        base = rng.normal(size=24).astype(dt).astype(np.float32)
        frac = rng.uniform(0.05, 0.95, size=24).astype(np.float32)
        _, hi = _neighbours(base, name)
        x = base + frac * (hi.astype(np.float32) - base)  # strictly between two neighbours
        extra = np.array([0.3, -0.7, 0.55, 0.9], np.float32)
        if name == "float16":  # subnormal float16 values are float32 normals
            extra = extra * np.float32(tiny) * 3
        eighth = np.full(EIGHTH, 1 + float(ml_dtypes.finfo(dt).eps) / 8, np.float32)
        values[name] = np.concatenate([x, extra, _edges(name), eighth]).astype(np.float32)
    keys = jax.random.split(jax.random.key(3), KEYS)
    draw = jax.jit(
        jax.vmap(
            lambda k, b, f: (
                stochastic_round(b, k, jnp.bfloat16),
                stochastic_round(f, k, jnp.float16),
            ),
            (0, None, None),
        )
    )
    args = (keys, jnp.asarray(values["bfloat16"]), jnp.asarray(values["float16"]))
    rb, rf = draw(*args)
    again = draw(*args)  # the same keys: the same draws
    assert np.array_equal(_bits(rb), _bits(again[0])) and np.array_equal(_bits(rf), _bits(again[1]))
    return values, {"bfloat16": np.asarray(rb), "float16": np.asarray(rf)}


def _split(values, name):
    n_edges = len(_edges(name))
    return len(values) - n_edges - EIGHTH, n_edges


@pytest.mark.parametrize("name", NARROW)
def test_stochastic_round_picks_a_neighbour_and_is_unbiased(sr_draws, name):
    values, draws = sr_draws
    n, _ = _split(values[name], name)
    x = values[name][:n]
    r = draws[name][:, :n]
    lo, hi = _neighbours(x, name)
    assert np.all((_bits(r) == _bits(lo)) | (_bits(r) == _bits(hi)))
    a, b = lo.astype(np.float64), hi.astype(np.float64)
    q = (x.astype(np.float64) - a) / (b - a)  # the probability of rounding away from 0
    sigma = np.abs(b - a) * np.sqrt(q * (1 - q) / KEYS)
    mean = r.astype(np.float64).mean(axis=0)
    assert np.all(np.abs(mean - x) <= 4 * sigma)
    # different keys differ: every value took both neighbours over 1000 keys
    assert np.all((r == lo).any(axis=0) & (r == hi).any(axis=0))


@pytest.mark.parametrize("name", NARROW)
def test_stochastic_round_exact_values_and_edges(sr_draws, name):
    values, draws = sr_draws
    n, n_edges = _split(values[name], name)
    x = values[name][n : n + n_edges]
    r = draws[name][:, n : n + n_edges]
    with np.errstate(over="ignore"):
        nearest = x.astype(np_dtype(name))
    # representable values, inf, NaN and values past the largest finite: round to nearest
    assert np.all(_bits(r) == _bits(nearest)[None]), (r[0], nearest)
    fmax = float(ml_dtypes.finfo(np_dtype(name)).max)
    assert nearest[-3] == fmax and np.isinf(nearest[-2])  # past max: finite below the tie only
    # 1 + eps/8 under 1000 keys: 1 about 7/8 of the time, the next number 1/8 (unbiased)
    eighth = draws[name][:, n + n_edges :].astype(np.float64)
    up = np.mean(eighth > 1)
    assert abs(up - 1 / 8) < 4 * np.sqrt(1 / 8 * 7 / 8 / eighth.size)
    assert not np.array_equal(_bits(draws[name][0]), _bits(draws[name][1]))  # keys differ


# --------------------------------------------------- apply_updates(p, d) is the rule's value


def _random_case(name, n, seed):
    rng = np.random.default_rng(seed)
    dt = np_dtype(name)
    p = (rng.normal(size=n) * 2.0 ** rng.integers(-6, 6, size=n)).astype(dt)
    ratio = 2.0 ** rng.uniform(-14, 3, size=n)  # updates from far below an ulp to 8x the weight
    u = (np.asarray(p, np.float64) * ratio * rng.choice([-1, 1], size=n)).astype(np.float32)
    u[:4] = -np.asarray(p[:4], np.float32)  # cancels the weight exactly
    return p, u


@pytest.mark.parametrize("name", NARROW)
def test_kahan_steps_match_numpy_bit_for_bit(name):
    dt = np_dtype(name)
    p, _ = _random_case(name, 300, 1)
    opt = kahan_summation()
    state = opt.init(jnp.asarray(p))
    c = np.zeros_like(p)
    step = jax.jit(opt.update)
    pj = jnp.asarray(p)
    for k in range(4):
        _, u = _random_case(name, 300, 10 + k)
        d, state = step(jnp.asarray(u), state, pj)
        pj = optax.apply_updates(pj, d)
        # the definition, in NumPy: y = fl(u + c), t = fl(p + y), c = fl((u + c) - (t - p))
        exact = u.astype(np.float32) + c.astype(np.float32)
        y = exact.astype(dt)
        t = (p.astype(np.float64) + y.astype(np.float64)).astype(dt)
        c = (exact - (t.astype(np.float32) - p.astype(np.float32))).astype(dt)
        p = t
        assert np.array_equal(_bits(pj), _bits(t)), k
        assert np.array_equal(_bits(state.compensation), _bits(c)), k


def test_stochastic_and_master_updates_apply_exactly():
    cases = {name: _random_case(name, 400, 2) for name in NARROW}
    p = {n: jnp.asarray(c[0]) for n, c in cases.items()}
    u = {n: jnp.asarray(c[1]) for n, c in cases.items()}
    key = jax.random.key(5)

    @jax.jit
    def run(p, u):
        sr = stochastic_rounding(key)
        d, _ = sr.update(u, sr.init(p), p)
        step_key = jax.random.split(key)[1]
        dtype_keys = jax.random.split(step_key, 2)  # one per dtype, bfloat16's first
        expected = {
            n: stochastic_round(p[n].astype(jnp.float32) + u[n], dtype_keys[i], p[n].dtype)
            for i, n in enumerate(NARROW)
        }
        mw = master_weights(optax.sgd(1.0))
        e, state = mw.update(jax.tree.map(jnp.negative, u), mw.init(p), p)
        target = jax.tree.map(lambda m, q: m.astype(q.dtype), state.master, p)
        return optax.apply_updates(p, d), expected, optax.apply_updates(p, e), target

    applied, expected, applied_mw, target = run(p, u)
    for name in NARROW:
        assert applied[name].dtype == jdtype(name) == applied_mw[name].dtype
        assert np.array_equal(_bits(applied[name]), _bits(expected[name])), name
        assert np.array_equal(_bits(applied_mw[name]), _bits(target[name])), name
        lo, hi = _neighbours(cases[name][0].astype(np.float32) + cases[name][1], name)
        ok = (_bits(applied[name]) == _bits(lo)) | (_bits(applied[name]) == _bits(hi))
        assert np.all(ok | (cases[name][1] == -cases[name][0].astype(np.float32)))


@pytest.fixture(scope="module")
def sgd_bf16_runs():
    """Five SGD steps on bfloat16 params with given gradients: master_weights vs float32 SGD."""
    rng = np.random.default_rng(4)
    p0 = jnp.asarray(rng.normal(size=(6, 5)), jnp.bfloat16)
    grads = jnp.asarray(rng.normal(size=(5, 6, 5)), jnp.bfloat16)
    lr = 3e-3

    @jax.jit
    def run(p0, grads):
        mw = master_weights(optax.sgd(lr))
        ref = optax.sgd(lr)

        def step(carry, g):
            p, s, q, r = carry
            d, s = mw.update(g, s, p)
            e, r = ref.update(g.astype(jnp.float32), r, q)
            return (optax.apply_updates(p, d), s, optax.apply_updates(q, e), r), None

        q0 = p0.astype(jnp.float32)
        out = jax.lax.scan(step, (p0, mw.init(p0), q0, ref.init(q0)), grads)[0]
        return out[0], out[2]

    return run(p0, grads)


def test_master_weights_sgd_is_float32_sgd_rounded(sgd_bf16_runs):
    p, q = sgd_bf16_runs
    assert p.dtype == jnp.bfloat16
    assert np.array_equal(_bits(p), _bits(q.astype(jnp.bfloat16)))
    assert not np.array_equal(np.asarray(q), np.asarray(p, np.float32))  # the master is finer


# ---------------------------------------------------------------- jit, vmap, composition


TREE_DTYPES = {"w": jnp.bfloat16, "b": jnp.float16, "s": jnp.float32}
RUNS, STEPS = 3, 2


def _run(params, updates, key):
    """STEPS updates of each rule; the given updates are the optimizer's output (the gradient
    for master_weights(sgd)). The rules' outputs are compared, not an optimizer's: XLA on CPU
    contracts sgd's ``p + (-lr * g)`` into an FMA under jit, so plain SGD itself differs."""
    out = []
    for opt in (kahan_summation(), stochastic_rounding(key), master_weights(optax.sgd(0.05))):
        p, state = params, opt.init(params)
        for i in range(STEPS):
            u = jax.tree.map(lambda x, i=i: x[i], updates)
            d, state = opt.update(u, state, p)
            p = optax.apply_updates(p, d)
        out.append((p, state))
    return out


def test_jit_and_vmap_agree_with_plain_calls():
    rng = np.random.default_rng(6)
    sizes = {"w": (4, 3), "b": (3,), "s": (2,)}
    params = {k: jnp.asarray(rng.normal(size=(RUNS, *n)), TREE_DTYPES[k]) for k, n in sizes.items()}

    def draw(x):  # from far below half an ulp of the weight to a tenth of it
        shape = (RUNS, STEPS, *x.shape[1:])
        return jnp.asarray(rng.normal(size=shape) * 10 ** rng.uniform(-5, -1, shape), x.dtype)

    updates = jax.tree.map(draw, params)
    keys = jax.random.split(jax.random.key(9), RUNS)  # traced per-run keys under vmap
    vmapped = jax.jit(jax.vmap(_run))(params, updates, keys)
    jitted_run = jax.jit(_run)
    for r in range(RUNS):
        one = jax.tree.map(lambda x, r=r: x[r], (params, updates))
        jitted = jitted_run(*one, keys[r])
        ref = _run(*one, keys[r]) if r == 0 else jitted  # eager once: op by op is slow
        for got in (jitted, jax.tree.map(lambda x, r=r: x[r], vmapped)):
            for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
                assert a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b)), r
        for p, _ in jitted:
            assert {k: v.dtype for k, v in p.items()} == TREE_DTYPES
    for p, _ in vmapped:  # each rule moved some weights (not all: some updates are tiny)
        assert 0 < np.mean(np.asarray(p["w"]) != np.asarray(params["w"])) < 1


def test_compose_with_adam_in_bfloat16():
    # Adam's steps (~lr = 1e-3) are below half an ulp of a weight near 1 (2**-9 .. 2**-8):
    # plain bfloat16 Adam never moves; each rule tracks float32 Adam.
    lr, steps, n = 1e-3, 200, 256
    p0 = jnp.ones(n, jnp.bfloat16)
    g = jnp.ones(n, jnp.float32)  # float32 gradients: every rule gets float32 Adam's updates

    @jax.jit
    def run(p0):
        adam = optax.adam(lr)
        kahan = optax.chain(adam, kahan_summation())
        sr = optax.chain(adam, stochastic_rounding(jax.random.key(0)))
        master = master_weights(adam)
        p32 = p0.astype(jnp.float32)
        # Adam's moments in float32 (optax would make them bfloat16 from bfloat16 params)
        a32 = adam.init(p32)
        carry = {
            "plain": (adam, p0, a32),
            "kahan": (kahan, p0, (a32, kahan_summation().init(p0))),
            "stochastic": (sr, p0, (a32, sr.init(p0)[1])),
            "master": (master, p0, master.init(p0)),
            "float32": (adam, p32, a32),
        }
        opts = {k: v[0] for k, v in carry.items()}

        def step(carry, _):
            out = {}
            for k, opt in opts.items():
                p, s = carry[k]
                d, s = opt.update(g, s, p)
                out[k] = (optax.apply_updates(p, d), s)
            return out, None

        carry = {k: v[1:] for k, v in carry.items()}
        return jax.lax.scan(step, carry, None, length=steps)[0]

    out = run(p0)
    ref = np.asarray(out["float32"][0], np.float64)
    ulp = float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps)
    assert np.all(np.asarray(out["plain"][0], np.float64) == 1.0)
    pk = np.asarray(out["kahan"][0], np.float64)
    ck = np.asarray(out["kahan"][1][1].compensation, np.float64)
    assert isinstance(out["kahan"][1][1], KahanState)
    ulp_ref = ulp / 2  # ref is near 0.8: an ulp there is 2**-8
    assert np.all(np.abs(ref - (1 - steps * lr)) < 1e-4)
    np.testing.assert_allclose(pk + ck, ref, atol=ulp_ref / 4)
    assert np.all(np.abs(pk - ref) <= ulp_ref)
    ps = np.asarray(out["stochastic"][0], np.float64)
    assert abs(ps.mean() - ref.mean()) < 4 * ps.std(ddof=1) / np.sqrt(n) + 1e-6
    assert np.array_equal(
        _bits(out["master"][0][0]), _bits(out["float32"][0][0].astype(jnp.bfloat16))
    )


# ------------------------------------------------------------------------------ lost updates


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32"])
def test_lost_updates_match_correct_rounding(name):
    dt = np_dtype(name)
    rng = np.random.default_rng(8)
    n = 2000
    p = (rng.normal(size=n) * 4).astype(dt)
    ratio = 2.0 ** rng.uniform(-16, 0, size=n) * float(ml_dtypes.finfo(dt).eps)
    u = (p.astype(np.float64) * ratio * 256 * rng.choice([-1, 1], size=n)).astype(dt)
    u[:50] = 0
    new = (p.astype(np.float64) + u.astype(np.float64)).astype(dt)  # exact sum, rounded once
    lost = int(np.sum((u != 0) & (new == p)))
    got_lost, got_nonzero = jax.jit(lost_updates)(jnp.asarray(p), jnp.asarray(u))
    assert got_lost.dtype == jnp.int32
    assert (int(got_lost), int(got_nonzero)) == (lost, int(np.sum(u != 0)))
    assert 0 < lost < n - 50  # both kinds present
    # vmapped over a run axis: the per-run counts
    pr, ur = jnp.asarray(p).reshape(4, -1), jnp.asarray(u).reshape(4, -1)
    lr_, nr = jax.vmap(lost_updates)(pr, ur)
    assert int(lr_.sum()) == lost and int(nr.sum()) == int(np.sum(u != 0))


def test_update_stagnation_fractions_and_edges():
    p = {"a": jnp.array([1.0, 1.0, 1.0, 1.0], jnp.bfloat16), "z": jnp.ones(3, jnp.bfloat16)}
    u = {
        "a": jnp.array([2**-10, 2**-6, 0.0, jnp.nan], jnp.bfloat16),
        "z": jnp.zeros(3, jnp.bfloat16),
    }
    frac = update_stagnation(p, u)
    assert frac["a"].dtype == jnp.float32
    assert float(frac["a"]) == pytest.approx(1 / 3)  # NaN changes the weight: not lost
    assert float(frac["z"]) == 0.0
    inf = lost_updates(jnp.array([jnp.inf], jnp.bfloat16), jnp.array([1.0], jnp.bfloat16))
    assert tuple(map(int, inf)) == (1, 1)


# ---------------------------------------------------------------------------- bad input


def test_validation_errors():
    p = jnp.ones(3, jnp.bfloat16)
    k = kahan_summation()
    with pytest.raises(ValueError, match="needs params"):
        k.update(p, k.init(p))
    with pytest.raises(TypeError, match="KahanState"):
        k.update(p, (), p)
    with pytest.raises(ValueError, match="same structure"):
        k.update({"a": p}, k.init({"b": p}), {"b": p})
    with pytest.raises(ValueError, match="shape"):
        k.update(jnp.ones(2), k.init(p), p)
    with pytest.raises(TypeError, match="floating"):
        k.update(jnp.ones(3, jnp.int32), k.init(p), p)
    for bad in (0, jnp.zeros(3, jnp.uint32), jnp.zeros(2, jnp.float32), "key"):
        with pytest.raises(TypeError, match="PRNG key"):
            stochastic_rounding(bad)
    with pytest.raises(ValueError, match="single PRNG key"):
        stochastic_rounding(jax.random.split(jax.random.key(0), 2))
    stochastic_rounding(jax.random.PRNGKey(0))  # a raw uint32[2] key is accepted
    sr = stochastic_rounding(jax.random.key(0))
    e4m3 = jnp.ones(2, jnp.float8_e4m3fn)
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        sr.init(e4m3)
    with pytest.raises(TypeError, match="dtype"):
        stochastic_round(jnp.ones(2), jax.random.key(0), jnp.int8)
    with pytest.raises(ValueError, match="needs params"):
        sr.update(p, sr.init(p))
    with pytest.raises(TypeError, match="GradientTransformation"):
        master_weights(optax.sgd)
    with pytest.raises(TypeError, match="floating-point dtype"):
        master_weights(optax.sgd(0.1), dtype=jnp.int32)
    with pytest.raises(TypeError, match="floating-point dtype"):
        master_weights(optax.sgd(0.1), dtype=None)
    with pytest.raises(ValueError, match="64-bit mode"):
        master_weights(optax.sgd(0.1), dtype=jnp.float64).init(p)
    with pytest.raises(ValueError, match="same shape"):
        lost_updates(jnp.ones(3), jnp.ones(2))
    with pytest.raises(TypeError, match="param"):
        lost_updates(jnp.ones(3, jnp.int32), jnp.ones(3))
    with pytest.raises(ValueError, match="needs params"):
        update_stagnation(None, {"a": p})
