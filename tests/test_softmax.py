"""stabkit.stable_softmax against float64 / mpmath references, every dtype, masks, non-finites.

Tolerances (stated once, used throughout):

* float16 / bfloat16: computed in float32 and rounded once, so within 1 ulp of the correctly rounded
  reference (``ULPS`` in conftest), plus float32's own error scaled to the row,
  ``4 * eps32 * max|x|``, which matters only where the result is near 0.
* float32 / float64: within ``ULPS`` (4) ulps of the dtype, measured against the larger of the
  result and the row's magnitude where the result is near 0 (log_softmax of a dominant entry).
* A result whose reference lies in the dtype's subnormal range may be 0 where the backend flushes
  subnormals (XLA:CPU does for float32, bfloat16 and float64).
"""

import contextlib

import jax
import jax.numpy as jnp
import ml_dtypes
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stabkit as sk
from tests.conftest import DTYPES, ULPS, eps, np_dtype

INF = np.inf
FUNCS = ("logsumexp", "log_softmax", "softmax")


def x64(dtype):
    """float64 needs x64; every other dtype runs in the default mode."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def arr(values, dtype):
    return jnp.asarray(np.asarray(values, dtype=np.float64).astype(np_dtype(dtype)))


# ---------------------------------------------------------------- references (float64 / mpmath)


def ref_rows(x, where=None, prec=80):
    """(logsumexp, log_softmax, softmax) of each row of a 2-D float64 array, with mpmath.

    Masked or -inf entries are left out; they get -inf / 0. Used for small arrays only.
    """
    x = np.asarray(x, np.float64)
    mask = np.ones_like(x, bool) if where is None else np.broadcast_to(where, x.shape)
    lse = np.empty(x.shape[0])
    logp = np.full(x.shape, -INF)
    p = np.zeros(x.shape)
    with mpmath.workprec(prec):
        for i, row in enumerate(x):
            vals = [
                mpmath.mpf(float(v)) for v, m in zip(row, mask[i], strict=True) if m and v != -INF
            ]
            if not vals:
                lse[i] = -INF
                continue
            total = mpmath.fsum(mpmath.exp(v) for v in vals)
            lse_i = mpmath.log(total)
            lse[i] = float(lse_i)
            for j, v in enumerate(row):
                if mask[i, j] and v != -INF:
                    logp[i, j] = float(mpmath.mpf(float(v)) - lse_i)
                    p[i, j] = float(mpmath.exp(mpmath.mpf(float(v)) - lse_i))
    return lse, logp, p


def assert_close(out, ref, dtype, scale=None, ulps=None):
    """|out - ref| <= ulps * ulp(ref in dtype) (+ float32 error at ``scale`` for half formats)."""
    out = np.asarray(out).astype(np.float64)
    ref = np.asarray(ref, np.float64)
    ulps = ULPS[dtype] if ulps is None else ulps
    same_nonfinite = (out == ref) | (np.isnan(out) & np.isnan(ref))
    finite = np.isfinite(ref)
    assert np.array_equal(np.isfinite(out), finite), (out, ref)
    assert np.all(same_nonfinite | finite), (out, ref)
    ref_d = ref.astype(np_dtype(dtype))
    with np.errstate(over="ignore"):  # spacing of a value near max is inf: no constraint
        tol = ulps * np.spacing(np.abs(ref_d)).astype(np.float64)
    if scale is not None:
        scale = np.asarray(scale, np.float64)
        if dtype in ("float32", "float64"):
            tol = np.maximum(tol, ulps * eps(dtype) * scale)
        else:
            tol = tol + 4 * eps("float32") * scale
    err = np.where(finite, np.abs(out - ref), 0.0)
    # A result in the dtype's subnormal range may be flushed to 0: XLA on CPU flushes float32,
    # bfloat16 and float64 subnormals (stabkit.probe measures it). Anything else must be close.
    flushed = (out == 0) & (np.abs(ref) < float(ml_dtypes.finfo(np_dtype(dtype)).smallest_normal))
    bad = (err > tol) & ~flushed
    assert not bad.any(), f"{dtype}: max err {err.max()} vs tol at {np.argwhere(bad)[:5]}"


# ------------------------------------------------------------------------------ ordinary inputs


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_ordinary_inputs_match_mpmath(dtype, scale):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((12, 9)) * scale).astype(np_dtype(dtype)).astype(np.float64)
    lse_r, logp_r, p_r = ref_rows(x)
    rowmax = np.max(np.abs(x), axis=1, keepdims=True)
    with x64(dtype):
        xj = arr(x, dtype)
        lse, logp, p = sk.logsumexp(xj), sk.log_softmax(xj), sk.softmax(xj)
        for out in (lse, logp, p):
            assert out.dtype == jnp.dtype(np_dtype(dtype))
    assert_close(lse, lse_r, dtype, scale=rowmax[:, 0])
    assert_close(logp, logp_r, dtype, scale=rowmax)
    # exp(x - m) carries the relative error of its argument: eps * |x - m|.
    spread = np.abs(x - x.max(axis=1, keepdims=True))
    assert_close(p, p_r, dtype, scale=p_r * (1 + spread))


def test_reduces_over_other_axes_and_keepdims(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4)).astype(np_dtype(dtype))
    with x64(dtype):
        xj = jnp.asarray(x)
        for axis in (0, 1, -1, (0, 2)):
            out = sk.logsumexp(xj, axis=axis, keepdims=True)
            moved = np.moveaxis(
                x.astype(np.float64), np.atleast_1d(axis), -1 - np.arange(np.size(axis))
            )
            flat = moved.reshape(-1, int(np.prod([x.shape[a] for a in np.atleast_1d(axis)])))
            ref = ref_rows(flat)[0]
            assert_close(np.asarray(out).reshape(-1), ref, dtype, scale=np.abs(flat).max(1))
            p = sk.softmax(xj, axis=axis)
            np.testing.assert_allclose(
                np.asarray(p, np.float64).sum(axis=axis), 1.0, atol=8 * eps(dtype)
            )


# ------------------------------------------------------------------------- n equal inputs c


def all_finite_values(dtype):
    """Every finite value of a 16-bit format, or a log-spaced sample of wider ones with the ends."""
    nd = np_dtype(dtype)
    if nd.itemsize == 2:
        values = np.arange(2**16, dtype=np.uint16).view(nd)
        with np.errstate(invalid="ignore"):
            return values[np.isfinite(values.astype(np.float32))]
    fi = np.finfo(nd) if dtype != "bfloat16" else None
    pos = np.concatenate(
        [
            np.exp2(
                np.linspace(np.log2(float(fi.smallest_subnormal)), np.log2(float(fi.max)), 4000)[
                    :-1
                ]
            ),
            [fi.smallest_subnormal, fi.smallest_normal, fi.eps, 1.0, fi.max],
            [np.nextafter(fi.max, 0, dtype=nd)],
        ]
    ).astype(nd)
    return np.concatenate([pos, -pos, [0.0]]).astype(nd)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_equal_inputs_every_finite_c(dtype, n):
    """softmax = 1/n, log_softmax = -log n, logsumexp = c + log n, rounded in the dtype."""
    nd = np_dtype(dtype)
    c = all_finite_values(dtype)
    with x64(dtype):
        x = jnp.asarray(np.repeat(c[:, None], n, axis=1))
        p, logp, lse = sk.softmax(x), sk.log_softmax(x), sk.logsumexp(x)
    p, logp, lse = (np.asarray(a) for a in (p, logp, lse))
    assert np.all(p == np.asarray(1 / n).astype(nd)), "softmax of equal inputs must be 1/n"
    # -log n: exact after rounding for the half formats; float32/float64 within XLA's log error
    # (XLA:CPU's float32 log(7) is 1 ulp from the correctly rounded value).
    if dtype in ("float16", "bfloat16"):
        assert np.all(logp == np.asarray(-np.log(n)).astype(nd)), "log_softmax must be -log n"
    assert_close(logp, np.full(logp.shape, -np.log(n)), dtype)
    # c + log n with mpmath for float64 near its max; float64 reference suffices otherwise.
    if dtype == "float64":
        with mpmath.workprec(120):
            ref = np.array([float(mpmath.mpf(float(v)) + mpmath.log(n)) for v in c])
    else:
        ref = c.astype(np.float64) + np.log(n)
    # Near c = -log n the sum cancels: the error is then measured against |c| (the row's scale).
    assert_close(lse, ref, dtype, scale=np.abs(c.astype(np.float64)))


def test_naive_fails_where_the_note_says():
    """Naive softmax of equal c: NaN in float16 for c >= 12 and c <= -20, float32 at +-1000."""
    c16 = np.array([12, 15, 100, 65504, -20, -30, -65504], np.float16)
    x = jnp.asarray(np.repeat(c16[:, None], 4, axis=1))
    assert np.all(np.isnan(np.asarray(sk.naive_softmax(x), np.float64)))
    assert np.all(np.isnan(np.asarray(sk.naive_log_softmax(x), np.float64)))
    assert np.all(np.asarray(sk.softmax(x)) == np.float16(0.25))
    ok16 = jnp.asarray(np.repeat(np.array([-10, 0, 5], np.float16)[:, None], 4, axis=1))
    assert np.allclose(np.asarray(sk.naive_softmax(ok16), np.float64), 0.25, atol=1e-3)
    # Before exp(c) itself overflows, the sum of n terms does: 4 e^10 > 65504, so 0 instead of 1/4.
    assert np.all(np.asarray(sk.naive_softmax(jnp.full(4, 10.0, jnp.float16))) == 0)
    x32 = jnp.full((2, 4), 1000.0).at[1].set(-1000.0)
    assert np.all(np.isnan(np.asarray(sk.naive_softmax(x32))))
    assert np.all(np.asarray(sk.softmax(x32)) == np.float32(0.25))
    assert np.all(np.asarray(sk.log_softmax(x32)) == np.float32(-np.log(4)))


# --------------------------------------------------------------- -inf, masks, empty rows, NaN


def grads(fn_name, x, where=None, cot=None):
    """Gradient of sum(cot * f(x)) for each function; cot skips -inf outputs."""
    f = getattr(sk, fn_name)

    def loss(x):
        out = f(x, where=where)
        c = jnp.ones_like(out) if cot is None else cot
        return jnp.sum(jnp.where(c != 0, c * out, 0.0))

    return jax.grad(loss)(x)


def test_neg_inf_and_masked_entries(dtype):
    with x64(dtype):
        base = arr([[0.5, -INF, 2.0, -1.0], [3.0, 1.0, -INF, -INF]], dtype)
        mask = jnp.array([[True, True, True, False], [True, True, True, True]])
        cot = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4))).astype(base.dtype)
        for fn in FUNCS:
            out = np.asarray(getattr(sk, fn)(base, where=mask), np.float64)
            g = np.asarray(grads(fn, base, mask, cot if fn != "logsumexp" else None), np.float64)
            excluded = ~np.asarray(mask) | np.isneginf(np.asarray(base, np.float64))
            assert np.all(g[excluded] == 0), f"{fn}: gradient at excluded entries must be 0"
            assert np.all(np.isfinite(g)), f"{fn}: gradients must be finite"
            if fn == "softmax":
                assert np.all(out[excluded] == 0)
            if fn == "log_softmax":
                assert np.all(np.isneginf(out[excluded]))
        # the valid entries match the same functions on the sliced rows
        for i in range(2):
            keep = ~excluded[i]
            sliced = base[i][jnp.asarray(keep)]
            np.testing.assert_array_equal(
                np.asarray(sk.log_softmax(base, where=mask)[i][jnp.asarray(keep)]),
                np.asarray(sk.log_softmax(sliced)),
            )
            np.testing.assert_array_equal(
                np.asarray(sk.logsumexp(base, where=mask)[i]), np.asarray(sk.logsumexp(sliced))
            )
            g_full = grads("log_softmax", base, mask, cot)[i][jnp.asarray(keep)]
            c_i = cot[i][jnp.asarray(keep)]
            g_sliced = jax.grad(lambda s, c_i=c_i: jnp.sum(c_i * sk.log_softmax(s)))(sliced)
            np.testing.assert_allclose(
                np.asarray(g_full, np.float64), np.asarray(g_sliced, np.float64), rtol=0, atol=0
            )


@pytest.mark.parametrize("how", ["neg_inf", "masked"])
def test_empty_rows_give_neg_inf_zero_and_zero_gradients(dtype, how):
    with x64(dtype):
        x = arr([[-INF, -INF, -INF], [1.0, 2.0, 3.0]], dtype)
        mask = None
        if how == "masked":
            x = arr([[1.0, 5.0, -2.0], [1.0, 2.0, 3.0]], dtype)
            mask = jnp.array([[False] * 3, [True] * 3])
        lse = np.asarray(sk.logsumexp(x, where=mask), np.float64)
        assert np.isneginf(lse[0]) and np.isfinite(lse[1])
        assert np.all(np.asarray(sk.softmax(x, where=mask), np.float64)[0] == 0)
        assert np.all(np.isneginf(np.asarray(sk.log_softmax(x, where=mask), np.float64)[0]))
        cot = jnp.ones_like(x).at[0].set(0)  # log_softmax's -inf outputs are not summed
        for fn in FUNCS:
            g = np.asarray(grads(fn, x, mask, cot if fn == "log_softmax" else None), np.float64)
            assert np.all(g[0] == 0), f"{fn} gradient on an empty row must be 0, got {g[0]}"
            assert np.all(np.isfinite(g))
        # gradient of the values themselves (not only of a masked sum) in the empty row
        for fn in ("softmax", "logsumexp"):
            jac = jax.jacobian(lambda x, fn=fn: getattr(sk, fn)(x, where=mask))(x)
            assert np.all(np.asarray(jac, np.float64)[0] == 0)
        # second derivatives stay clean too
        hess = jax.hessian(lambda r: sk.logsumexp(r, where=None if mask is None else mask[0]))(x[0])
        assert np.all(np.asarray(hess, np.float64) == 0)


def test_nan_propagates_to_its_row_only(dtype):
    with x64(dtype):
        x = arr([[1.0, np.nan, -INF], [1.0, 2.0, 3.0]], dtype)
        mask = jnp.array([True, True, False])
        for fn in FUNCS:
            for m in (None, mask):
                out = np.asarray(getattr(sk, fn)(x, where=m), np.float64)
                assert np.all(np.isnan(out[0])), f"{fn}: NaN must not be hidden: {out[0]}"
                assert np.all(np.isfinite(out[1]) | np.isneginf(out[1]))
        g = np.asarray(jax.grad(lambda x: sk.logsumexp(x).sum())(x), np.float64)
        assert np.isnan(g[0]).any() and np.all(np.isfinite(g[1]))


def test_pos_inf_gives_inf_logsumexp_and_nan_probabilities(dtype):
    """+inf: logsumexp is +inf (its value); softmax/log_softmax rows are NaN (inf/inf), reported."""
    with x64(dtype):
        x = arr([[INF, 1.0, INF, -INF], [INF, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, -INF]], dtype)
        lse = np.asarray(sk.logsumexp(x), np.float64)
        assert lse[0] == INF and lse[1] == INF and np.isfinite(lse[2])
        for fn in ("softmax", "log_softmax"):
            out = np.asarray(getattr(sk, fn)(x), np.float64)
            assert np.all(np.isnan(out[:2])), f"{fn} of a +inf row must be NaN, got {out[:2]}"
            assert not np.isnan(out[2]).any()
        mask = jnp.array([False, True, True, True])  # masking the +inf out gives a valid row
        out = np.asarray(sk.softmax(x, where=mask), np.float64)
        assert np.all(np.isnan(out[0])) and np.allclose(out[1], [0, 1 / 3, 1 / 3, 1 / 3], atol=1e-3)
        # The gradient of logsumexp is the softmax: NaN on a row holding +inf (the README's
        # table), reporting the upstream overflow, as jax.grad(logsumexp)([1, inf]) now does.
        g = np.asarray(jax.grad(lambda x: sk.logsumexp(x).sum())(x), np.float64)
        assert np.all(np.isnan(g[:2])) and np.all(np.isfinite(g[2]))
        g = np.asarray(jax.grad(sk.logsumexp)(arr([1.0, INF], dtype)), np.float64)
        assert np.all(np.isnan(g)), g
        # the same through the cross-entropy and log_softmax
        for f in (
            lambda x: sk.softmax_cross_entropy(x, jnp.array([0, 1, 2])).sum(),
            lambda x: sk.log_softmax(x)[:, 1].sum(),
        ):
            g = np.asarray(jax.grad(f)(x), np.float64)
            assert np.all(np.isnan(g[:2])) and np.all(np.isfinite(g[2]))


# ------------------------------------------------------------------------ transformations


def test_jit_vmap_match_eager():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((5, 6)), jnp.float32)
    mask = jnp.asarray(np.random.default_rng(4).random((5, 6)) > 0.3)
    for fn in FUNCS:
        f = getattr(sk, fn)
        eager = f(x, where=mask)
        np.testing.assert_array_equal(jax.jit(lambda x, m, f=f: f(x, where=m))(x, mask), eager)
        np.testing.assert_array_equal(jax.vmap(lambda r, m, f=f: f(r, where=m))(x, mask), eager)


def test_gradients_match_float64_closed_form_and_finite_differences():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((4, 5)) * 3)
        c = jnp.asarray(rng.standard_normal((4, 5)))
        p = np.exp(np.asarray(x) - np.log(np.exp(np.asarray(x)).sum(1, keepdims=True)))
        # closed forms: d lse = p; d <c, log_softmax> = c - p sum(c); d <c, softmax> = p(c - <p,c>)
        g = jax.grad(lambda x: sk.logsumexp(x).sum())(x)
        np.testing.assert_allclose(g, p, rtol=1e-14, atol=1e-15)
        g = jax.grad(lambda x: jnp.sum(c * sk.log_softmax(x)))(x)
        np.testing.assert_allclose(g, c - p * np.asarray(c).sum(1, keepdims=True), atol=1e-14)
        g = jax.grad(lambda x: jnp.sum(c * sk.softmax(x)))(x)
        ref = p * (np.asarray(c) - (p * np.asarray(c)).sum(1, keepdims=True))
        np.testing.assert_allclose(g, ref, atol=1e-14)
        # Hessian of logsumexp: diag(p) - p p^T
        h = jax.hessian(sk.logsumexp)(x[0])
        np.testing.assert_allclose(h, np.diag(p[0]) - np.outer(p[0], p[0]), atol=1e-14)
        # finite differences, forward and reverse, to second order, with a mask
        mask = jnp.array([True, False, True, True, True])
        from jax.test_util import check_grads

        row = x[0].at[1].set(-1.0)
        for fn, order in (("logsumexp", 2), ("log_softmax", 1), ("softmax", 1)):
            f = getattr(sk, fn)
            check_grads(lambda x, f=f: f(x, where=mask), (row,), order=order, atol=1e-6, rtol=1e-6)
        check_grads(
            lambda x: sk.softmax_cross_entropy(x, jnp.array([0, 2, 4, 1])),
            (x,),
            order=1,
            atol=1e-6,
            rtol=1e-6,
        )


def test_jvp_shift_invariance():
    x = jnp.array([1.0, 2.0, -jnp.inf, 0.5])
    _, tangent = jax.jvp(sk.log_softmax, (x,), (jnp.ones_like(x),))
    # 1 - sum(p): zero up to the rounding of sum(p), and exactly 0 at the -inf entry
    assert np.all(np.abs(np.asarray(tangent)) <= 4 * eps("float32")) and tangent[2] == 0
    _, t = jax.jvp(sk.logsumexp, (x,), (jnp.ones_like(x),))
    assert float(t) == pytest.approx(1.0, abs=1e-6)


def test_float16_gradient_at_scale_matches_float32():
    """grad of log_softmax(x).sum() over 50,000 float16 entries in [-30, 5]: finite, 1 ulp."""
    x16 = jnp.linspace(-30, 5, 50_000).astype(jnp.float16)
    g16 = jax.grad(lambda x: sk.log_softmax(x).sum().astype(jnp.float32))(x16)
    g32 = jax.grad(lambda x: sk.log_softmax(x).sum())(x16.astype(jnp.float32))
    assert g16.dtype == jnp.float16
    assert bool(jnp.all(jnp.isfinite(g16)))
    assert_close(g16, np.asarray(g32, np.float64), "float16", ulps=1)
    # 2-D, reduced over a long axis, where float16 sums would overflow
    x2 = jnp.tile(jnp.linspace(-30, 5, 40_000), (3, 1)).astype(jnp.float16)
    lse = sk.logsumexp(x2)
    assert bool(jnp.all(jnp.isfinite(lse)))
    ref = np.log(np.exp(np.asarray(x2[0], np.float64)).sum())
    assert abs(float(lse[0]) - ref) <= float(np.spacing(np.float16(ref)))


# ---------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_matches_reference(dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 5)).astype(np_dtype(dtype)).astype(np.float64)
    labels = rng.integers(0, 5, 6)
    _, logp, _ = ref_rows(x)
    ref = -logp[np.arange(6), labels]
    probs = rng.dirichlet(np.ones(5), 6)
    with x64(dtype):
        xj = arr(x, dtype)
        out = sk.softmax_cross_entropy(xj, jnp.asarray(labels))
        out_soft = sk.softmax_cross_entropy(xj, jnp.asarray(probs, xj.dtype))
        onehot = sk.softmax_cross_entropy(xj, jax.nn.one_hot(labels, 5, dtype=xj.dtype))
    assert out.dtype == xj.dtype
    assert_close(out, ref, dtype, scale=np.abs(x).max(1) + 1, ulps=2 * ULPS[dtype])
    # soft labels are rounded to the dtype first: compare with the reference on those labels
    probs_d = probs.astype(np_dtype(dtype)).astype(np.float64)
    ref_soft = -(probs_d * logp).sum(1)
    assert_close(out_soft, ref_soft, dtype, scale=np.abs(x).max(1) + 1, ulps=2 * ULPS[dtype])
    np.testing.assert_array_equal(np.asarray(onehot), np.asarray(out))


def test_cross_entropy_neg_inf_logits():
    x = jnp.array([[2.0, -jnp.inf, 0.0], [2.0, -jnp.inf, 0.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
    y = jnp.array([0, 1, 0])
    loss = sk.softmax_cross_entropy(x, y)
    assert float(loss[0]) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
    assert float(loss[1]) == INF and float(loss[2]) == INF
    g = np.asarray(jax.grad(lambda x: sk.softmax_cross_entropy(x, y)[0])(x))
    p = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    np.testing.assert_allclose(g[0], [p[0] - 1, 0, p[1]], rtol=1e-6)
    g1 = np.asarray(jax.grad(lambda x: sk.softmax_cross_entropy(x, y)[1])(x))
    assert np.all(np.isfinite(g1)) and g1[1, 1] == 0
    np.testing.assert_allclose(g1[1], [p[0], 0, p[1]], rtol=1e-6)  # the limit of the gradient
    g2 = np.asarray(jax.grad(lambda x: sk.softmax_cross_entropy(x, y)[2])(x))
    assert np.all(g2 == 0)
    # the same through a mask, and with probability labels
    mask = jnp.array([True, False, True])
    xm = jnp.array([2.0, 7.0, 0.0])
    assert float(sk.softmax_cross_entropy(xm, jnp.array(0), where=mask)) == pytest.approx(
        float(loss[0]), rel=1e-6
    )
    soft = jnp.array([0.5, 0.0, 0.5])
    val, gs = jax.value_and_grad(sk.softmax_cross_entropy)(x[0], soft)
    assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(gs))) and gs[1] == 0
    assert np.isnan(float(sk.softmax_cross_entropy(jnp.array([1.0, jnp.nan]), jnp.array(0))))


def test_cross_entropy_label_out_of_range_under_jit_is_nan():
    f = jax.jit(sk.softmax_cross_entropy)
    out = np.asarray(f(jnp.zeros((3, 4)), jnp.array([0, 4, -1])))
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", FUNCS)
def test_bad_input_raises_naming_the_value(fn):
    f = getattr(sk, fn)
    with pytest.raises(TypeError, match="int32"):
        f(jnp.arange(3))
    with pytest.raises(TypeError, match="bool"):
        f(True)
    with pytest.raises(ValueError, match="axis=2"):
        f(jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        f(jnp.ones((2, 3)), where=jnp.ones(4, bool))
    with pytest.raises(TypeError, match="float32"):
        f(jnp.ones((2, 3)), where=jnp.ones(3))
    with pytest.raises(TypeError, match="axis"):
        f(jnp.ones(3), axis=1.5)


def test_cross_entropy_bad_labels():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        sk.softmax_cross_entropy(x, jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        sk.softmax_cross_entropy(x, jnp.array([-1, 0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sk.softmax_cross_entropy(x, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        sk.softmax_cross_entropy(x, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="bool"):
        sk.softmax_cross_entropy(x, jnp.array([True, False]))
    with pytest.raises(TypeError, match="int32"):
        sk.softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.array([0, 1]))


# ------------------------------------------------------------------------ property tests


# Each new shape compiles softmax and log_softmax afresh (most of a property test's time), so the
# sizes come from a few that cover the cases: one entry, a pair, and rows shorter and longer than
# XLA:CPU's 8-lane float32 vectors (a remainder loop at 9).
ROWS, COLS, LENGTHS = (1, 4), (1, 2, 7, 9), (1, 2, 5, 8)


def float_rows(dtype, min_value=-1e4, max_value=1e4):
    nd = np_dtype(dtype)
    lim = min(max_value, float(np.finfo(nd).max) if dtype != "bfloat16" else max_value)
    return hnp.arrays(
        nd,
        st.tuples(st.sampled_from(ROWS), st.sampled_from(COLS)),
        elements=st.floats(-lim, lim, width=32 if dtype == "bfloat16" else nd.itemsize * 8),
    )


@pytest.mark.parametrize("dtype_", ["float16", "bfloat16", "float32"])
@given(data=st.data())
def test_property_sums_to_one_dtype_preserved_shift_invariant(dtype_, data):
    x = data.draw(float_rows(dtype_, -300, 300))
    xj = jnp.asarray(x)
    p = sk.softmax(xj)
    assert p.dtype == xj.dtype and sk.log_softmax(xj).dtype == xj.dtype
    total = np.asarray(p, np.float64).sum(-1)
    np.testing.assert_allclose(total, 1.0, atol=x.shape[-1] * eps(dtype_))
    # shift invariance, with a shift that is exact in float32 (a power of two)
    shift = data.draw(st.sampled_from([-64.0, -1.0, 0.5, 8.0, 256.0]))
    a = sk.log_softmax(xj.astype(jnp.float32))
    b = sk.log_softmax(xj.astype(jnp.float32) + shift)
    scale = np.abs(np.asarray(xj, np.float64)).max() + abs(shift)
    np.testing.assert_allclose(a, b, atol=4 * eps("float32") * scale)


@given(data=st.data())
def test_property_masked_equals_sliced(data):
    x = data.draw(
        hnp.arrays(np.float32, st.sampled_from(COLS[1:]), elements=st.floats(-50, 50, width=32))
    )
    mask = data.draw(hnp.arrays(np.bool_, x.shape))
    keep = np.flatnonzero(mask)
    xj, mj = jnp.asarray(x), jnp.asarray(mask)
    if keep.size == 0:
        assert float(sk.logsumexp(xj, where=mj)) == -INF
        return
    np.testing.assert_array_equal(
        np.asarray(sk.log_softmax(xj, where=mj))[keep], np.asarray(sk.log_softmax(xj[keep]))
    )
    # exp may be vectorized differently for the two shapes: equal up to 2 ulps.
    np.testing.assert_allclose(
        np.asarray(sk.softmax(xj, where=mj))[keep],
        np.asarray(sk.softmax(xj[keep])),
        rtol=2 * eps("float32"),
        atol=0,
    )
    assert np.all(np.asarray(sk.softmax(xj, where=mj))[~mask] == 0)


@pytest.mark.parametrize("dtype_", DTYPES)
@given(data=st.data())
def test_property_finite_at_finfo_max(dtype_, data):
    nd = np_dtype(dtype_)
    big = float(np.finfo(nd).max) if dtype_ != "bfloat16" else float(np.float64(3.3895314e38))
    n = data.draw(st.sampled_from(LENGTHS))
    signs = data.draw(hnp.arrays(np.int8, n, elements=st.sampled_from([-1, 1])))
    with x64(dtype_):
        x = jnp.asarray((signs * big).astype(nd))
        for fn in ("log_softmax", "softmax", "logsumexp"):
            out = np.asarray(getattr(sk, fn)(x), np.float64)
            # +max - (-max) overflows to -inf, a correctly rounded log-probability
            assert not np.isnan(out).any()
        assert np.all(np.isfinite(np.asarray(sk.logsumexp(x), np.float64)))
        p = np.asarray(sk.softmax(x), np.float64)
        assert np.all(np.isfinite(p)) and abs(p.sum() - 1) <= n * eps(dtype_)


# ------------------------------------------------------------- issue 11: regression tests


def _spacing(value, dtype):
    return float(np.spacing(np.abs(np.asarray(value, np.float64).astype(np_dtype(dtype)))))


def test_dominant_entry_log_softmax_is_minus_log1p_of_the_rest():
    """log_softmax([1.5, -27.25]) in bfloat16 was [0, -28.75]; exact first entry: -3.27e-13."""
    out = np.asarray(sk.log_softmax(jnp.array([1.5, -27.25], jnp.bfloat16)), np.float64)
    exact = -np.log1p(np.exp(-28.75))
    assert abs(out[0] - exact) <= _spacing(exact, "bfloat16"), out
    assert out[1] == -28.75


def test_logsumexp_keeps_tiny_terms():
    """logsumexp([0, -18.25]) in float32 was 0.0 (exact 1.19e-8)."""
    out = float(sk.logsumexp(jnp.array([0.0, -18.25])))
    exact = np.log1p(np.exp(-18.25))
    assert abs(out - exact) <= 2 * _spacing(exact, "float32"), out


def test_cross_entropy_is_never_negative_zero():
    """softmax_cross_entropy([10, -10], 0) was -0.0 (exact 2.06e-9)."""
    out = float(sk.softmax_cross_entropy(jnp.array([10.0, -10.0]), 0))
    exact = np.log1p(np.exp(-20.0))
    assert abs(out - exact) <= 2 * _spacing(exact, "float32"), out
    zero = sk.softmax_cross_entropy(jnp.array([0.0, -jnp.inf]), 0)
    assert float(zero) == 0 and not np.signbit(np.asarray(zero))
    soft = sk.softmax_cross_entropy(jnp.array([0.0, -jnp.inf]), jnp.array([1.0, 0.0]))
    assert float(soft) == 0 and not np.signbit(np.asarray(soft))


def test_many_tiny_terms_are_not_absorbed_float16():
    """One 0 and 1,000 entries -16.75 in float16: logsumexp was 34 ulp off."""
    x = jnp.concatenate([jnp.zeros(1), jnp.full(1000, -16.75)]).astype(jnp.float16)
    with mpmath.workprec(200):
        exact = float(mpmath.log1p(1000 * mpmath.exp(mpmath.mpf(-16.75))))
    assert abs(float(sk.logsumexp(x)) - exact) <= _spacing(exact, "float16")
    logp0 = float(sk.log_softmax(x)[0])
    assert abs(logp0 + exact) <= _spacing(exact, "float16")
    # float32 too: 3.8% relative before. What is left is XLA:CPU's summation order over 1,000
    # equal terms (up to ~12 * 2^-24 relative, measured), documented in stabkit.stable_softmax.
    out32 = float(sk.logsumexp(x.astype(jnp.float32)))
    assert abs(out32 - exact) <= 16 * _spacing(exact, "float32")


def test_long_row_float32_closed_form():
    """100,000 entries, k copies of -3 and one 0: logsumexp = log(1 + k e^-3) to 2 ulp."""
    k = 99_999
    x = np.full(k + 1, -3.0, np.float32)
    x[np.random.default_rng(7).integers(0, k + 1)] = 0.0
    with mpmath.workprec(200):
        exact = float(mpmath.log(1 + k * mpmath.exp(mpmath.mpf(-3))))
        p0 = float(1 / (1 + k * mpmath.exp(mpmath.mpf(-3))))
    xj = jnp.asarray(x)
    assert abs(float(sk.logsumexp(xj)) - exact) <= 2 * _spacing(exact, "float32")
    p = np.asarray(sk.softmax(xj), np.float64)
    assert abs(p.max() - p0) <= 2 * _spacing(p0, "float32")


def test_probability_cross_entropy_near_overflow_is_finite():
    """x = [3e38, -3e38], y = [0.75, 0.25]: the loss is 1.5e38 with gradient [0.25, -0.25]."""
    x, y = jnp.array([3e38, -3e38]), jnp.array([0.75, 0.25])
    loss, g = jax.value_and_grad(sk.softmax_cross_entropy)(x, y)
    assert float(loss) == pytest.approx(1.5e38, rel=1e-6)
    np.testing.assert_array_equal(np.asarray(g), [0.25, -0.25])
    # the gradient with respect to the labels is -log p = [0, 6e38 -> inf]
    gy = np.asarray(jax.grad(sk.softmax_cross_entropy, argnums=1)(x, y))
    assert gy[0] == 0 and gy[1] == np.inf


def test_integer_cross_entropy_overflowing_loss_keeps_its_gradient():
    """The loss 6e38 overflows float32 to inf (its correct rounding); the gradient is [1, -1]."""
    loss, g = jax.value_and_grad(sk.softmax_cross_entropy)(jnp.array([3e38, -3e38]), 1)
    assert float(loss) == np.inf
    np.testing.assert_array_equal(np.asarray(g), [1.0, -1.0])
    # a dominant target's gradient is -(the others' mass), not 0 by cancellation
    g = jax.grad(sk.softmax_cross_entropy)(jnp.array([1.5, -27.25], jnp.bfloat16), 0)
    exact = np.exp(-28.75) / (1 + np.exp(-28.75))
    assert abs(float(g[0]) + exact) <= _spacing(exact, "bfloat16")


def test_empty_axis():
    for dtype in (jnp.float32, jnp.float16):
        x = jnp.zeros((2, 0), dtype)
        lse = sk.logsumexp(x)
        assert lse.shape == (2,) and lse.dtype == dtype and np.all(np.isneginf(np.asarray(lse)))
        assert sk.logsumexp(x, keepdims=True).shape == (2, 1)
        assert sk.logsumexp(jnp.zeros((0, 3)), axis=0).shape == (3,)
        for fn in ("softmax", "log_softmax"):
            out = getattr(sk, fn)(x)
            assert out.shape == (2, 0) and out.dtype == dtype
        assert np.all(np.asarray(jax.grad(lambda x: sk.logsumexp(x).sum())(x)) == 0)
    soft = sk.softmax_cross_entropy(jnp.zeros((2, 0)), jnp.zeros((2, 0)))
    assert soft.shape == (2,) and np.all(np.asarray(soft) == 0)
    with pytest.raises(ValueError, match="labels"):
        sk.softmax_cross_entropy(jnp.zeros((2, 0)), jnp.array([0, 0]))


def test_keepdims_must_be_a_bool():
    with pytest.raises(TypeError, match="keepdims"):
        sk.logsumexp(jnp.zeros(3), keepdims="no")
    with pytest.raises(TypeError, match="keepdims"):
        sk.logsumexp(jnp.zeros(3), keepdims=1)
    assert sk.logsumexp(jnp.zeros((2, 3)), keepdims=np.bool_(True)).shape == (2, 1)


def test_probability_labels_are_checked():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = -0.5"):
        sk.softmax_cross_entropy(x, jnp.array([[0.5, 0.5, 0.0], [0.5, 1.0, -0.5]]))
    with pytest.raises(ValueError, match="labels"):
        sk.softmax_cross_entropy(x, np.array([[-np.inf, 1, 0], [0, 1, 0]], np.float32))
    # labels need not sum to 1: -sum(y log p) for any y >= 0
    out = sk.softmax_cross_entropy(jnp.zeros(2), jnp.array([1.0, 1.0]))
    assert float(out) == pytest.approx(2 * np.log(2), rel=1e-6)
    # a NaN label is data: a NaN loss, not an error
    assert np.isnan(float(sk.softmax_cross_entropy(jnp.zeros(2), jnp.array([np.nan, 1.0]))))
    # under jit the values cannot be checked: a row with a negative label gets a NaN loss and
    # NaN gradients, the other rows are untouched
    f = jax.jit(jax.value_and_grad(lambda x, y: sk.softmax_cross_entropy(x, y).sum()))
    y = jnp.array([[0.5, 0.5, 0.0], [1.5, -0.5, 0.0]])
    _, g = f(x, y)
    loss = jax.jit(sk.softmax_cross_entropy)(x, y)
    assert np.isfinite(float(loss[0])) and np.isnan(float(loss[1]))
    assert np.all(np.isnan(np.asarray(g[1])))
    g0 = jax.grad(lambda x: sk.softmax_cross_entropy(x, y[:1]).sum())(x[:1])
    np.testing.assert_allclose(np.asarray(g[0]), np.asarray(g0[0]), rtol=1e-6)


def test_integer_labels_are_checked_before_any_wrap():
    x = jnp.zeros((2, 3))
    # int64 2**40 would wrap to class 0 in int32: it is out of range, and said so
    with pytest.raises(ValueError, match=r"labels\[0\] = 1099511627776"):
        sk.softmax_cross_entropy(x, np.array([2**40, 0], np.int64))
    with pytest.raises(ValueError, match=r"labels\[\] = 3"):
        sk.softmax_cross_entropy(jnp.zeros(3), np.int64(3))
    assert np.isfinite(float(sk.softmax_cross_entropy(jnp.zeros(3), np.int64(2))))
    # traced: NaN loss and NaN gradient for that row
    g = jax.jit(jax.grad(lambda x, y: sk.softmax_cross_entropy(x, y).sum()))(x, jnp.array([0, 3]))
    assert np.all(np.isfinite(np.asarray(g[0]))) and np.all(np.isnan(np.asarray(g[1])))


def test_unsupported_formats_are_refused_by_name():
    for name in ("float8_e8m0fnu", "float4_e2m1fn"):
        x = jnp.zeros(3, getattr(jnp, name))
        for fn in FUNCS:
            with pytest.raises(TypeError, match=f"x has dtype {name}"):
                getattr(sk, fn)(x)
        with pytest.raises(TypeError, match=f"logits has dtype {name}"):
            sk.softmax_cross_entropy(x, 0)


def test_float8_formats():
    """float8 results are within 1 ulp; e4m3fn has no inf, so -inf results are its NaN."""
    x = jnp.array([1.5, -3.0, 0.25], jnp.float8_e5m2)
    lse = float(sk.logsumexp(x))
    exact = np.log(np.exp([1.5, -3.0, 0.25]).sum())
    assert abs(lse - exact) <= _spacing(exact, "float8_e5m2")
    out = sk.log_softmax(jnp.array([1.0, 2.0], jnp.float8_e4m3fn), where=jnp.array([True, False]))
    assert float(out[0]) == 0 and np.isnan(float(out[1]))


@given(data=st.data())
def test_property_bad_arguments_raise_value_or_type_error(data):
    """Random bad arguments: ValueError or TypeError naming the argument, nothing else."""
    fn = data.draw(st.sampled_from((*FUNCS, "softmax_cross_entropy")))
    ce = fn == "softmax_cross_entropy"
    first = "logits" if ce else "x"
    good_x = jnp.zeros((2, 3))
    bad = data.draw(
        st.sampled_from(
            ["x", "axis", "where", "keepdims", "labels"]
            if ce or fn == "logsumexp"
            else ["x", "axis", "where"]
        )
    )
    if bad == "keepdims" and ce:
        bad = "labels"
    if bad == "labels" and not ce:
        bad = "keepdims"
    kwargs = {}
    args = [good_x]
    if ce:
        args.append(jnp.array([0, 1]))
    if bad == "x":
        args[0] = data.draw(
            st.sampled_from(
                [
                    jnp.arange(3),
                    np.arange(3, dtype=np.int64),
                    True,
                    "abc",
                    None,
                    [["a"]],
                    jnp.zeros(3, bool),
                    {"a": 1},
                    jnp.zeros(2, jnp.complex64),
                ]
            )
        )
        if ce:
            args[1] = jnp.array(0)
    elif bad == "axis":
        kwargs["axis"] = data.draw(
            st.one_of(
                st.integers(2, 10**6),
                st.integers(-(10**6), -3),
                st.sampled_from(
                    [1.5, "0", None, True, np.float32(1.0)] + ([] if ce else [(0, 0), ()])
                ),
            )
        )
    elif bad == "where":
        kwargs["where"] = data.draw(
            st.sampled_from(
                [
                    jnp.ones(4, bool),
                    jnp.ones((2, 3)),
                    "yes",
                    jnp.ones((3, 3), bool),
                    np.ones((2, 3), np.int8),
                ]
            )
        )
    elif bad == "keepdims":
        kwargs["keepdims"] = data.draw(st.sampled_from(["no", 0, 1, None, 1.0, "True"]))
    elif bad == "labels":
        args[1] = data.draw(
            st.sampled_from(
                [
                    jnp.array([0, 3]),
                    jnp.array([-1, 0]),
                    np.array([2**40, 0]),
                    jnp.array([0]),
                    jnp.array([True, False]),
                    "a",
                    jnp.ones((2, 4)),
                    -jnp.ones((2, 3)),
                    np.array([[0.5, -1e-30, 0], [1, 0, 0]]),
                    None,
                ]
            )
        )
    name = {"x": first}.get(bad, bad)
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(sk, fn)(*args, **kwargs)
    assert name in str(info.value), (fn, bad, str(info.value))


def test_row_blocks_agree_with_whole_rows(monkeypatch):
    """The forward over blocks of rows (large arrays, last axis) agrees with the unblocked sweep
    to the sums' rounding, values and gradients, and exactly on the special rows (-inf, empty,
    NaN, +inf, ties, masked). The half formats are computed in float32 and float64 takes the
    same code, so float32 stands for all."""
    from stabkit import _softmax_core as core

    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 136)) * 8
    x[1, 3] = -INF
    x[2] = -INF
    x[3, 7] = np.nan
    x[4, 9] = INF
    x[5, :5] = x[5].max() + 1  # ties at the max
    mask = rng.random((64, 136)) < 0.9
    mask[6] = False

    xj = jnp.asarray(x, jnp.float32)
    cot = jnp.asarray(rng.standard_normal((64, 136)), jnp.float32)

    def run(block_bytes, fn, m):
        monkeypatch.setattr(core, "_BLOCK_BYTES", block_bytes)
        f = core._log_softmax if fn == "log_softmax" else core._softmax

        def fwd_bwd(x, cot):
            out, vjp = jax.vjp(lambda x: f(x, m, (1,), True), x)
            return out, vjp(cot)[0]

        return "scan" in str(jax.make_jaxpr(fwd_bwd)(xj, cot)), jax.jit(fwd_bwd)(xj, cot)

    for fn, m in [("log_softmax", None), ("softmax", None), ("log_softmax", mask)]:
        m = None if m is None else jnp.asarray(m)
        blocked, (out_b, g_b) = run(4096, fn, m)  # 16 blocks of 4 rows
        whole, (out_w, g_w) = run(0, fn, m)
        assert blocked and not whole
        # gradients: 4x, for the cancellation in ct - sum(p * ct) that amplifies p's rounding
        for b, w, k in ((out_b, out_w, 1), (g_b, g_w, 4)):
            b, w = np.asarray(b, np.float64), np.asarray(w, np.float64)
            finite = np.isfinite(w)
            np.testing.assert_array_equal(np.isfinite(b), finite)
            np.testing.assert_array_equal(b[~finite], w[~finite])
            # A block's sums may add a row's terms in another order than the whole array's
            # (the reduction vectorizes differently): ULPS of float32 at the row's scale.
            row = np.max(np.where(finite, np.abs(w), 0), axis=1, keepdims=True)
            tol = k * ULPS["float32"] * eps("float32") * np.maximum(np.abs(w), row)
            with np.errstate(invalid="ignore"):  # inf - inf off the finite entries
                bad = (np.abs(b - w) > tol) & finite
            assert not bad.any(), (fn, np.argwhere(bad)[:4], b[bad][:4], w[bad][:4])
