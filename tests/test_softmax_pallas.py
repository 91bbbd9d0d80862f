"""stabkit._softmax_pallas (the opt-in GPU log_softmax kernel), run in Pallas' interpreter on CPU.

Checked against the XLA path (:func:`stabkit.log_softmax`) bit for bit, and against a float64
reference to the tolerance of ``tests/test_softmax.py`` (``ULPS`` ulp of float32, measured against
the row's magnitude where the result is near 0; the dominant entry's tiny result to ``ULPS`` ulp of
itself), on ordinary and adversarial rows: -inf
entries, all -inf rows, NaN, +inf, ties at the max, a dominant entry whose log-probability is
``-log1p(tiny)``, and a bfloat16 input (computed in float32, rounded once).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import stabkit as sk
from stabkit import _softmax_pallas
from tests.conftest import ULPS

INF = np.inf


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 64)) * 6).astype(np.float32)
    x[1, 3] = -INF
    x[2] = -INF
    x[3, 7] = np.nan
    x[4, 9] = INF
    x[5, :5] = 30.0  # ties at the max
    x[6] = -20.0
    x[6, 0] = 1.5  # a dominant entry: -log1p(63 e^-21.5) = -2.9e-8, not 0
    return x


def reference(x):
    """float64 log_softmax per row; -inf rows -inf, NaN or +inf rows NaN."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    for i, r in enumerate(x):
        if np.isnan(r).any() or (r == INF).any():
            out[i] = np.nan
        elif np.all(r == -INF):
            out[i] = -INF
        else:
            m = r.max()
            out[i] = (r - m) - np.log(np.sum(np.exp(r - m)))
    return out


def test_kernel_matches_the_xla_path_bit_for_bit(rows):
    x = jnp.asarray(rows)
    out = _softmax_pallas.log_softmax(x, interpret=True)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), np.asarray(sk.log_softmax(x)))


def test_kernel_within_tolerance_of_float64(rows):
    out = np.asarray(_softmax_pallas.log_softmax(jnp.asarray(rows), interpret=True), np.float64)
    ref = reference(rows)
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(np.isneginf(out), np.isneginf(ref))
    finite = np.isfinite(ref)
    eps = float(np.finfo(np.float32).eps)
    # ulps of the result, or of the row's magnitude where the result is near 0 (the rounding
    # of x - m), as in tests/test_softmax.py
    row = np.max(np.where(np.isfinite(rows), np.abs(rows), 0), axis=1, keepdims=True)
    tol = ULPS["float32"] * eps * np.maximum(np.abs(ref), row)
    with np.errstate(invalid="ignore"):  # inf - inf off the finite entries
        err = np.abs(out - ref)
    assert np.all(err[finite] <= tol[finite])
    # the dominant entry keeps its tiny log-probability (relative accuracy, not 0)
    assert out[6, 0] < 0 and abs(out[6, 0] - ref[6, 0]) <= ULPS["float32"] * eps * abs(ref[6, 0])


def test_kernel_bfloat16_rounds_once():
    rng = np.random.default_rng(4)
    x = jnp.asarray((rng.standard_normal((4, 32)) * 5).astype(ml_dtypes.bfloat16))
    out = _softmax_pallas.log_softmax(x.astype(jnp.float32), interpret=True).astype(x.dtype)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(sk.log_softmax(x)))


def test_fits_only_gpu_opt_in_power_of_two_last_axis(monkeypatch):
    x = jnp.zeros((4, 64), jnp.float32)
    monkeypatch.setenv("STABKIT_PALLAS_SOFTMAX", "1")
    on_gpu = jax.default_backend() == "gpu"
    assert _softmax_pallas.fits(x, None, (1,)) == on_gpu
    assert not _softmax_pallas.fits(jnp.zeros((4, 48), jnp.float32), None, (1,))
    assert not _softmax_pallas.fits(x, None, (0,))
    assert not _softmax_pallas.fits(x, jnp.ones((4, 64), bool), (1,))
    assert not _softmax_pallas.fits(jnp.zeros((4, 2 * _softmax_pallas.MAX_COLS)), None, (1,))
    monkeypatch.setenv("STABKIT_PALLAS_SOFTMAX", "0")
    assert not _softmax_pallas.fits(x, None, (1,))
