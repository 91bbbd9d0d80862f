"""Tests for stabkit.precision: census, limits, probe, overflow/underflow depth, chain, CLI.

References are independent of the implementation: NumPy/ml_dtypes value classification on the host,
a host simulation written here with ml_dtypes rounding, and mpmath for the exp thresholds.
"""

import contextlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import np_dtype
from hypothesis import given
from hypothesis import strategies as st

from stabkit import precision
from stabkit.precision import SUPPORTED_DTYPES, Census, census

FLOAT8 = tuple(n for n in SUPPORTED_DTYPES if n.startswith("float8"))
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def x64(name):
    """The context a dtype needs: float64 only exists inside ``jax.enable_x64``."""
    return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# census


def reference_census(values: np.ndarray) -> tuple[int, int, int, int, int]:
    """Classify by value on the host (NumPy keeps subnormals), through float64 for ml_dtypes."""
    fi = ml_dtypes.finfo(values.dtype)
    with np.errstate(invalid="ignore"):  # casting a signalling NaN warns
        v = values.astype(np.float64)
    nan = np.isnan(v)
    inf = np.isinf(v)
    zero = v == 0
    sub = ~nan & ~inf & ~zero & (np.abs(v) < float(fi.tiny))
    normal = ~nan & ~inf & ~zero & ~sub
    return tuple(int(m.sum()) for m in (normal, sub, zero, inf, nan))


def crafted(name: str) -> np.ndarray:
    """An array of ``name`` with every class present: all bit patterns for 8/16-bit formats,
    the special values plus random bit patterns for float32/float64."""
    dt = np_dtype(name)
    u = UINT[dt.itemsize]
    if dt.itemsize <= 2:
        return np.arange(2 ** (8 * dt.itemsize), dtype=np.uint64).astype(u).view(dt)
    fi = ml_dtypes.finfo(dt)
    specials = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, fi.max, -fi.max, fi.tiny, -fi.tiny],
        dtype=np.float64,
    ).astype(dt)
    subs = np.array(
        [fi.smallest_subnormal, -fi.smallest_subnormal, fi.tiny - fi.smallest_subnormal], dtype=dt
    )
    # A negative quiet NaN and a signalling NaN payload.
    nbits = 8 * dt.itemsize
    exp_ones = ((1 << fi.nexp) - 1) << fi.nmant
    nan_bits = np.array(
        [(1 << (nbits - 1)) | exp_ones | 1, exp_ones | 1, exp_ones | (1 << (fi.nmant - 1))],
        dtype=u,
    ).view(dt)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2**nbits - 1, size=4000, dtype=u, endpoint=True).view(dt)
    return np.concatenate([specials, subs, nan_bits, rand])


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_census_matches_numpy_classification(name):
    values = crafted(name)
    expected = reference_census(values)
    assert all(n > 0 for i, n in enumerate(expected) if i != 3 or "fn" not in name)
    with x64(name):
        got = jax.jit(census)(jnp.asarray(values))
        assert got.normal.dtype == jnp.int32
        assert tuple(int(v) for v in got) == expected
        assert sum(int(v) for v in got) == values.size


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_census_axis_and_vmap(name):
    values = crafted(name)
    values = values[: values.size // 4 * 4].reshape(4, -1)
    with x64(name):
        x = jnp.asarray(values)
        by_row = census(x, axis=1)
        vmapped = jax.vmap(census)(x)
        for i, row in enumerate(values):
            expected = reference_census(row)
            assert tuple(int(v[i]) for v in by_row) == expected
            assert tuple(int(v[i]) for v in vmapped) == expected
        by_col = census(x, axis=(0,))
        assert by_col.nan.shape == (values.shape[1],)
        assert int(sum(v.sum() for v in by_col)) == values.size
        assert tuple(int(v) for v in census(x, axis=(0, -1))) == reference_census(values)


def test_census_special_formats():
    # e4m3fn: no inf; 0x7f and 0xff are the only NaNs; 0x7e is the largest finite value (448).
    e4m3fn = np.array([0x7E, 0x7F, 0xFF, 0x78, 0x80], np.uint8).view(ml_dtypes.float8_e4m3fn)
    c = census(jnp.asarray(e4m3fn))
    assert (int(c.normal), int(c.inf), int(c.nan), int(c.zero)) == (2, 0, 2, 1)
    # fnuz: 0x80 is NaN, not -0.
    for name in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz"):
        x = np.array([0x80, 0x00, 0x7F, 0xFF], np.uint8).view(np_dtype(name))
        c = census(jnp.asarray(x))
        assert (int(c.nan), int(c.zero), int(c.normal), int(c.inf)) == (1, 1, 2, 0), name
    # e5m2 has inf: 0x7c.
    x = np.array([0x7C, 0xFC, 0x7D], np.uint8).view(ml_dtypes.float8_e5m2)
    c = census(jnp.asarray(x))
    assert (int(c.inf), int(c.nan)) == (2, 1)


@pytest.mark.parametrize("name", ("float32", "bfloat16"))
def test_census_sees_subnormals_that_comparisons_miss(name):
    # XLA:CPU reads these subnormals as zero in comparisons; the bit pattern does not lie.
    fi = ml_dtypes.finfo(np_dtype(name))
    x = jnp.asarray(np.array([fi.smallest_subnormal, fi.tiny / 2], np_dtype(name)))
    assert int(jax.jit(census)(x).subnormal) == 2


_jit_census = jax.jit(census)


@given(st.integers(0, 2**32 - 1))
def test_census_counts_sum_to_size(seed):
    bits = np.random.default_rng(seed).integers(0, 2**32, size=64, dtype=np.uint32)
    for name, view in (("float32", bits), ("bfloat16", bits.view(np.uint16))):
        x = view.view(np_dtype(name))
        c = _jit_census(jnp.asarray(x))
        assert sum(int(v) for v in c) == x.size
        assert tuple(int(v) for v in c) == reference_census(x)


def test_census_inside_scan_compiles_once():
    traces = []

    @jax.jit
    def count_nonfinite(xs):
        traces.append(1)

        def body(carry, x):
            c = census(x)
            return carry + c.inf + c.nan, c.subnormal

        return jax.lax.scan(body, jnp.int32(0), xs)

    xs = jnp.array([[1.0, jnp.inf], [jnp.nan, 1e-40]], jnp.float32)
    total, subs = count_nonfinite(xs)
    count_nonfinite(xs * 2)
    assert int(total) == 2 and subs.tolist() == [0, 1]
    assert len(traces) == 1
    assert isinstance(census(xs), Census)


def test_census_bad_input():
    with pytest.raises(TypeError, match="int32"):
        census(jnp.arange(3))
    with pytest.raises(ValueError, match="axis=2"):
        census(jnp.ones((2, 2)), axis=2)
    with pytest.raises(ValueError, match="repeats"):
        census(jnp.ones((2, 2)), axis=(0, 0))
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        census(jnp.ones(2, ml_dtypes.float8_e8m0fnu))


def test_formats_agree_with_ml_dtypes():
    for name in SUPPORTED_DTYPES:
        fmt = precision._FORMATS[name]
        fi = ml_dtypes.finfo(np_dtype(name))
        assert (fmt.bits, fmt.exponent_bits, fmt.mantissa_bits) == (fi.bits, fi.nexp, fi.nmant)
