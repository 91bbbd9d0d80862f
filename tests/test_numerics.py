"""Tests for stabkit._numerics against float64 NumPy references: compute dtype, exact powers of
two, RMS without overflow, classification by bit pattern."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from stabkit import _numerics as nm
from stabkit.precision import SUPPORTED_DTYPES
from stabkit.precision.formats import _FORMATS
from tests.conftest import np_dtype

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
WIDE = ("float32", "float64")


def _x64(name):
    return jax.enable_x64(name == "float64")


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_compute_dtype_is_float32_below_32_bits(name):
    want = "float32" if np_dtype(name).itemsize < 4 else name
    assert nm.compute_dtype(name) == jnp.dtype(want)
    assert nm.compute_dtype(np_dtype(name)) == jnp.dtype(want)
    if not name.startswith("float8"):  # where promote_types is defined, the two agree
        with jax.enable_x64(True):
            assert nm.compute_dtype(name) == jnp.promote_types(name, jnp.float32)


@pytest.mark.parametrize("name", WIDE)
def test_pow2_and_exponent_are_exact_over_the_normal_range(name):
    with _x64(name):
        fi = np.finfo(name)
        k = np.arange(fi.minexp, fi.maxexp, dtype=np.int32)
        got = np.asarray(nm.pow2(jnp.asarray(k), name))
        assert got.dtype == np.dtype(name)
        np.testing.assert_array_equal(got, np.ldexp(np.ones((), name), k))
        np.testing.assert_array_equal(np.asarray(nm.exponent(jnp.asarray(got))), k)
        x = np.random.default_rng(0).uniform(1, 2, k.size).astype(name) * got
        want = np.frexp(x)[1] - 1
        np.testing.assert_array_equal(np.asarray(nm.exponent(jnp.asarray(x))), want)


def _ulps(got, want, name):
    """Distance in ulps of ``got`` (the dtype) from the float64 (or exact) reference ``want``."""
    got = np.asarray(got, np.longdouble)
    spacing = np.spacing(np.abs(want).astype(name)).astype(np.longdouble)
    return np.abs(got - want) / spacing


def _reference_rms(a):
    """RMS in long double (80-bit on x86), scaled by the max so that 1e+-300 neither overflows nor
    underflows."""
    a = np.asarray(a, np.longdouble)
    m = np.max(np.abs(a), axis=-1, keepdims=True)
    return (np.sqrt(np.mean(np.square(a / m), axis=-1, keepdims=True)) * m)[..., 0]


@pytest.mark.parametrize("name", WIDE)
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1.0])
# rms_rows scales by a power of two (exact): only the sum and the sqrt round, within 1 ulp of the
# exact RMS. rms_by_sqrt_max divides by sqrt(max) twice and multiplies back twice, each rounding:
# within 3 ulps (2.7 measured in float64).
@pytest.mark.parametrize(
    "rms, ulps", [(nm.rms_rows, 1), (lambda a: jax.vmap(nm.rms_by_sqrt_max)(a), 3)]
)
def test_rms_without_overflow_within_ulps(name, scale, rms, ulps):
    if name == "float64":
        scale = scale**10  # 1e300, 1e-300
    with _x64(name):
        a = np.random.default_rng(1).standard_normal((6, 8)).astype(name) * np.asarray(scale, name)
        with np.errstate(over="ignore", under="ignore"):
            naive = np.sqrt(np.mean(np.square(a), axis=1))  # overflows to inf or underflows to 0
        if scale != 1.0:
            assert not np.all(np.isfinite(naive) & (naive > 0))
        got = np.asarray(jax.jit(rms)(jnp.asarray(a)))
        assert got.dtype == np.dtype(name)
        assert _ulps(got, _reference_rms(a), name).max() <= ulps


@pytest.mark.parametrize("name", WIDE)
def test_rms_rows_commutes_with_powers_of_two_exactly(name):
    with _x64(name):
        a = jnp.asarray(np.random.default_rng(2).standard_normal((4, 16)).astype(name))
        base = nm.rms_rows(a)
        for k in (-100, -1, 1, 100):
            two = nm.pow2(jnp.asarray(k), name)
            np.testing.assert_array_equal(nm.rms_rows(a * two), base * two)


def test_rms_rows_shows_inf_and_nan_and_zero_rows():
    a = jnp.array([[1.0, jnp.inf], [jnp.nan, 1.0], [0.0, 0.0], [3e38, 3e38]], jnp.float32)
    got = np.asarray(nm.rms_rows(a))
    assert np.isinf(got[0]) and np.isnan(got[1]) and got[2] == 0
    assert got[3] == np.float32(3e38)


def test_safe_sqrt_has_gradient_zero_at_zero():
    assert float(jax.grad(nm.safe_sqrt)(0.0)) == 0.0
    assert float(jax.grad(nm.safe_sqrt)(4.0)) == 0.25


def _all_patterns(name):
    """Every bit pattern of an 8- or 16-bit format; the special values and neighbours otherwise."""
    dt = np_dtype(name)
    uint = UINT[dt.itemsize]
    if dt.itemsize <= 2:
        return np.arange(2 ** (8 * dt.itemsize), dtype=np.uint64).astype(uint)
    fi = ml_dtypes.finfo(dt)
    values = [0.0, fi.smallest_subnormal, fi.tiny, fi.max, np.inf, np.nan, 1.0]
    values.append(float(fi.tiny) - float(fi.smallest_subnormal))  # largest subnormal
    v = np.array(values, dt)
    bits = np.concatenate([v, -v]).view(uint)
    nan_payloads = bits[np.isnan(np.concatenate([v, -v]))][:1] | uint(1)  # another NaN pattern
    return np.concatenate([bits, nan_payloads])


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_classify_every_special_value_in_every_dtype(name):
    fmt = _FORMATS[name]
    dt = np_dtype(name)
    bits = _all_patterns(name)
    with np.errstate(invalid="ignore"):
        x = bits.view(dt).astype(np.float64)
    tiny = float(ml_dtypes.finfo(dt).tiny)
    nan, inf, zero = np.isnan(x), np.isinf(x), x == 0
    sub = ~nan & ~zero & (np.abs(x) < tiny)
    normal = ~nan & ~inf & ~zero & ~sub
    want = (normal, sub, zero, inf, nan)
    host = nm.classify(bits, fmt.bits, fmt.exponent_bits, fmt.mantissa_bits, fmt.kind)
    with _x64(name):
        device = nm.classify(
            jnp.asarray(bits), fmt.bits, fmt.exponent_bits, fmt.mantissa_bits, fmt.kind
        )
        device = [np.asarray(m) for m in device]
    for cls, w, h, d in zip(
        ("normal", "subnormal", "zero", "inf", "nan"), want, host, device, strict=True
    ):
        np.testing.assert_array_equal(h, w, err_msg=f"{name} {cls} (host)")
        np.testing.assert_array_equal(d, w, err_msg=f"{name} {cls} (device)")
    assert (np.sum(want, axis=0) == 1).all()  # every pattern in exactly one class
    assert inf.any() == fmt.has_inf and zero.any() and sub.any() and nan.any()
