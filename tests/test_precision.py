"""Tests for stabkit.precision: census, limits, probe, overflow/underflow depth, chain, CLI.

References are independent of the implementation: NumPy/ml_dtypes value classification on the host,
a host simulation written here with ml_dtypes rounding, and mpmath for the exp thresholds.
"""

import contextlib
import json
import math
import subprocess
import sys
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stabkit import precision
from stabkit.precision import SUPPORTED_DTYPES, Census, census, formats
from stabkit.tracecount import count_traces
from tests.conftest import np_dtype

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
        fmt = formats._FORMATS[name]
        fi = ml_dtypes.finfo(np_dtype(name))
        assert (fmt.bits, fmt.exponent_bits, fmt.mantissa_bits) == (fi.bits, fi.nexp, fi.nmant)


# ----------------------------------------------------------------------------------------------
# An independent reference: exact rational arithmetic and a rounding function written from the
# format's parameters alone (precision, minimum exponent, max), not from ml_dtypes' casts.


class Ref:
    """Round-to-nearest-even into a binary format, with or without subnormals."""

    def __init__(self, name):
        fi = ml_dtypes.finfo(np_dtype(name))
        self.m = int(fi.nmant)
        self.emin = int(fi.minexp)  # exponent of the smallest normal
        self.max = Fraction(float(fi.max))
        self.has_inf = "fn" not in name

    def round(self, v: Fraction, flush: bool):
        """The value of ``v`` in the format: a Fraction, or a float inf/NaN on overflow."""
        if v == 0:
            return Fraction(0)
        a = abs(v)
        e = a.numerator.bit_length() - a.denominator.bit_length()
        if Fraction(2) ** e > a:  # now 2**e <= a < 2**(e+1)
            e -= 1
        quantum = Fraction(2) ** (max(e, self.emin) - self.m)
        r = round(a / quantum) * quantum  # Fraction.__round__ rounds half to even
        if r > self.max:
            return (math.inf if v > 0 else -math.inf) if self.has_inf else math.nan
        if flush and a < Fraction(2) ** self.emin:  # tininess before rounding, as on XLA:CPU
            r = Fraction(0)
        return r if v > 0 else -r

    def chain(self, scale, x0, flush, steps):
        """x_0..x_steps of x_k = round(x_{k-1} * scale) (subnormal inputs read as 0 if flush)."""
        s = self.round(Fraction(scale), False)
        x = self.round(Fraction(x0), flush)
        out = [x]
        for _ in range(steps):
            if isinstance(x, float):  # inf or NaN stays non-finite
                x = x * float(s)
            else:
                x = self.round(x * s, flush)
            out.append(x)
        return out

    def depth(self, scale, x0, flush, overflow, limit=20000):
        s = self.round(Fraction(scale), False)
        x = self.round(Fraction(x0), flush)
        for k in range(1, limit):
            y = self.round(x * s, flush)
            if isinstance(y, float) if overflow else y == 0:
                return k
            if abs(y) == abs(x):
                return None
            x = y
        raise AssertionError("reference chain too long")


OVERFLOW_SCALES = (1.5, 1.1, 1.3, 3.0, -1.5, 2.0)
UNDERFLOW_SCALES = (0.5, 0.9, 0.8, 0.3, -0.7)


def scales_for(name, scales):
    """The scales that do not round to +-1 in the dtype (1.1 is 1.0 in float8_e5m2)."""
    ref = Ref(name)
    return [s for s in scales if abs(ref.round(Fraction(s), False)) != 1]


def drift_tolerance(name, d):
    """How far the rounded chain may land from the closed form, in steps.

    Each rounding multiplies the value by (1 + delta) with |delta| <= eps/2, so after k steps it
    is within a factor (1 + eps/2)**k of x0 * scale**k, which moves the crossing by at most
    k * log1p(eps/2) / log|scale| steps, plus one for landing on either side of the threshold.
    """
    eps = float(ml_dtypes.finfo(np_dtype(name)).eps)
    return 1 + d.predicted * math.log1p(eps / 2) / abs(math.log(abs(d.scale)))


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_overflow_depth_matches_exact_reference(name):
    ref = Ref(name)
    for scale in scales_for(name, OVERFLOW_SCALES):
        for x0 in (1.0, -3.7):
            d = precision.overflow_depth(scale, name, x0, flush=False)
            assert d.step == ref.depth(scale, x0, False, True), (scale, x0)
            assert d.kind == "overflow" and d.dtype == name
            assert abs(d.step - d.predicted) <= drift_tolerance(name, d), d
            if scale == 2.0 and x0 == 1.0:  # exact powers of two: no drift at all
                assert d.step == d.predicted
            assert math.isinf(d.value) if ref.has_inf else math.isnan(d.value)


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
@pytest.mark.parametrize("flush", (False, True))
def test_underflow_depth_matches_exact_reference(name, flush):
    ref = Ref(name)
    sub = float(ml_dtypes.finfo(np_dtype(name)).smallest_subnormal)
    for scale in scales_for(name, UNDERFLOW_SCALES):
        for x0 in (1.0, -3.7, 3 * sub):
            d = precision.underflow_depth(scale, name, x0, flush=flush)
            assert d.step == ref.depth(scale, x0, flush, False), (scale, x0)
            assert d.flush is flush
            # With subnormals and a scale near 1 the chain can stall at a fixed point (None).
            assert d.value == 0 if d.step is not None else d.value != 0
            if scale == 0.5 and x0 == 1.0:
                assert d.step == d.predicted
            elif flush and x0 != 3 * sub:  # only normal numbers: relative rounding error
                assert abs(d.step - d.predicted) <= drift_tolerance(name, d), d


# Public examples of issue 3.


def test_float16_times_1p5_overflows_at_28():
    d = precision.overflow_depth(1.5, "float16")
    assert (d.step, d.predicted, d.value) == (28, 28, math.inf)
    assert d.k == pytest.approx(math.log(65504) / math.log(1.5), rel=1e-12)


def test_float32_times_0p5_underflows_at_150_or_127():
    assert precision.underflow_depth(0.5, "float32", flush=False).step == 150
    assert precision.underflow_depth(0.5, "float32", flush=False).predicted == 150
    # Flushing: 2**-126 is the smallest normal, so 2**-127 is already 0. Computed, not assumed:
    ref = Ref("float32")
    assert precision.underflow_depth(0.5, "float32", flush=True).step == ref.depth(
        0.5, 1.0, True, False
    )
    assert precision.underflow_depth(0.5, "float32", flush=True).step == 127
    assert precision.underflow_depth(0.5, "float32", flush=True).predicted == 127


def test_how_many_layers_until_w_1p5_identity_overflows_in_bfloat16():
    """Issue 3: "after how many layers does W = 1.5 I overflow in bfloat16?" 220; predicted 219."""
    d = precision.overflow_depth(1.5, "bfloat16")
    assert (d.step, d.predicted) == (220, 219)
    assert d.k == pytest.approx(
        math.log(float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)) / math.log(1.5)
    )
    # The network itself, on the device: a_l = W a_{l-1} with a 2x2 bfloat16 W = 1.5 I.
    w = jnp.eye(2, dtype=jnp.bfloat16) * 1.5

    @jax.jit
    def layers(a):
        def body(a, _):
            a = w @ a
            return a, a

        return jax.lax.scan(body, a, None, length=222)[1]

    acts = np.asarray(layers(jnp.ones(2, jnp.bfloat16))).astype(np.float64)
    finite = np.isfinite(acts).all(axis=1)
    assert finite[: d.step - 1].all() and not finite[d.step - 1]  # layer 220 is acts[219]
    assert np.isinf(acts[d.step - 1]).all()
    # One layer later the zero off-diagonal meets inf: 1.5 * inf + 0 * inf = NaN.
    assert np.isnan(acts[d.step]).all()


XLA_CPU_E5M2FNUZ_LOOP_BUG = pytest.mark.xfail(
    jax.default_backend() == "cpu",
    reason="XLA:CPU inside a loop rounds float8_e5m2fnuz 2**-14 * 0.5 up to 2**-14 (it is "
    "2**-15, a normal e5m2fnuz number, computed in float16 where it is subnormal); one multiply "
    "alone is right",
)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=XLA_CPU_E5M2FNUZ_LOOP_BUG) if n == "float8_e5m2fnuz" else n
        for n in SUPPORTED_DTYPES
    ],
)
def test_chain_on_device_matches_reference_with_probed_flush(name):
    ref = Ref(name)
    flush = precision.probe()[name].flushes
    for scale in scales_for(name, (1.5, 0.5, 1.1, 0.9, -1.5, 0.3)):
        grow = abs(scale) > 1
        d = (precision.overflow_depth if grow else precision.underflow_depth)(scale, name)
        assert d.flush is flush
        steps = (d.step or d.predicted) + 2  # a stalled chain (None) runs past the prediction
        xs = precision.chain(scale, name, steps=steps)
        assert xs.shape == (steps + 1,) and xs.dtype == np_dtype(name)
        got = xs.astype(np.float64)
        want = np.array([float(v) for v in ref.chain(scale, 1.0, flush, steps)])
        np.testing.assert_array_equal(got, want, err_msg=f"{name} scale={scale}")
        if d.step is None:
            assert np.isfinite(got).all() and got[-1] == got[-2] != 0
        elif grow:
            assert np.isfinite(got[: d.step]).all() and not np.isfinite(got[d.step])
        else:
            assert (got[: d.step] != 0).all() and got[d.step] == 0


def test_chain_default_steps_and_compiles_once():
    xs = precision.chain(1.5, "float16")
    assert not np.isfinite(xs[-1].astype(np.float64))
    assert len(xs) == 28 + 1 + 4
    with count_traces() as c:
        for scale in (1.25, 1.75, 2.0, -1.5):
            precision.chain(scale, "float32", 3.0, steps=50)
    assert c.compiles("_chain_kernel") == 1
    xs = precision.chain(0.5, "float64", steps=3)  # float64 even outside enable_x64
    assert xs.dtype == np.float64 and xs.tolist() == [1.0, 0.5, 0.25, 0.125]


# ----------------------------------------------------------------------------------------------
# probe


def test_probe_is_measured_and_consistent_with_the_device():
    p = precision.probe()
    assert p is precision.probe(jax.devices()[0])  # cached per device
    assert p.platform == jax.devices()[0].platform and not p.unsupported
    for name in SUPPORTED_DTYPES:
        b = p[name]
        fi = ml_dtypes.finfo(np_dtype(name))
        dt = np_dtype(name)
        with x64(name):
            # Cross-check with an independent computation on the device: tiny / 4.
            half_tiny = jax.jit(lambda a, b: a / b)(
                jnp.asarray(np.asarray(fi.tiny, dt)), jnp.asarray(np.asarray(4.0, dt))
            )
        kept = float(np.asarray(half_tiny).astype(np.float64)) == float(fi.tiny) / 4
        assert b.keeps_subnormal_results is kept, name
        assert b.flushes is not kept
        assert b.overflow == ("inf" if "fn" not in name else "nan")
        assert b.underflow == "zero"
        if "fn" in name:
            assert b.zero_times_inf is None and b.inf_minus_inf is None
        else:
            assert b.zero_times_inf == "nan" and b.inf_minus_inf == "nan"
    with pytest.raises(TypeError, match=r"jax\.Device"):
        precision.probe("cpu")
    assert p[jnp.float16] is p["float16"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU behaviour")
def test_probe_on_xla_cpu():
    p = precision.probe()
    # float32, bfloat16 and float64 flush (and read subnormal inputs as 0); float16 keeps them.
    assert [n for n in SUPPORTED_DTYPES if p[n].flushes] == ["bfloat16", "float32", "float64"]
    assert p["float32"].subnormal_inputs_as_zero and p["float32"].subnormal_compares_as_zero
    assert not p["float16"].subnormal_inputs_as_zero
    assert precision.underflow_depth(0.5, "float32").step == 127  # flush=None follows the probe
    assert precision.underflow_depth(0.5, "float16").step == 25


def test_cli_probe_json_in_a_subprocess():
    code = "import sys; from stabkit.cli import main; sys.exit(main(['probe', '--json']))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout)
    assert set(report["dtypes"]) == set(SUPPORTED_DTYPES)
    here = precision.probe()
    for name, row in report["dtypes"].items():
        assert row["measured"] == here[name]._asdict()
        assert row["limits"] == precision.limits(name)._asdict()
    assert report["platform"] == jax.default_backend()


def test_cli_probe_table(capsys):
    from stabkit.cli import main

    assert main(["probe"]) == 0
    text = capsys.readouterr().out
    for name in SUPPORTED_DTYPES:
        assert name in text
    assert "Subnormal results flushed to zero" in text


# ----------------------------------------------------------------------------------------------
# limits


def next_value(v, name, up):
    """The neighbouring value of the dtype, by stepping the bit pattern (v != 0, finite)."""
    dt = np_dtype(name)
    u = UINT[dt.itemsize]
    bits = np.asarray(v, dt).view(u)
    step = 1 if (v > 0) == up else -1
    return float((bits + u(step)).astype(u).view(dt).astype(np.float64))


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_limits_against_mpmath(name):
    lim = precision.limits(name)
    fi = ml_dtypes.finfo(np_dtype(name))
    assert (lim.max, lim.tiny, lim.smallest_subnormal, lim.eps) == tuple(
        float(v) for v in (fi.max, fi.tiny, fi.smallest_subnormal, fi.eps)
    )
    assert (lim.bits, lim.exponent_bits, lim.mantissa_bits) == (fi.bits, fi.nexp, fi.nmant)
    assert lim.has_inf is ("fn" not in name) and lim.has_nan
    assert lim.has_negative_zero is ("fnuz" not in name)
    mp = mpmath.mp
    with mpmath.workprec(200):
        exp = lambda x: mp.exp(mp.mpf(x))
        # Overflow threshold: max + half an ulp of max (the spacing above max's binade).
        ulp = 2.0 ** (math.frexp(lim.max)[1] - 1 - lim.mantissa_bits)
        over = mp.mpf(lim.max) + mp.mpf(ulp) / 2
        assert exp(lim.exp_max) < over <= exp(next_value(lim.exp_max, name, up=True))
        half_sub = mp.mpf(lim.smallest_subnormal) / 2
        assert exp(next_value(lim.exp_min, name, up=False)) <= half_sub < exp(lim.exp_min)
        tiny = mp.mpf(lim.tiny)
        assert exp(next_value(lim.exp_min_normal, name, up=False)) < tiny <= exp(lim.exp_min_normal)


def test_limits_golden_values():
    # float32: 0x1.62e42ep6 is the largest float whose expf is finite (musl, glibc).
    assert precision.limits("float32").exp_max == float.fromhex("0x1.62e42ep6")
    assert precision.limits("float64").exp_max == 709.782712893384
    assert precision.limits("float64").exp_min_normal == -708.3964185322641
    assert precision.limits("float16").max == 65504.0
    assert (
        precision.limits("float8_e4m3fn").max == 448.0
        and precision.limits("float8_e5m2").max == 57344.0
    )


def test_limits_accepts_names_dtypes_and_types():
    a = precision.limits("bfloat16")
    assert precision.limits(jnp.bfloat16) == a == precision.limits(np.dtype(ml_dtypes.bfloat16))
    assert precision.limits(np.float32) == precision.limits(jnp.dtype("float32"))
    assert precision.limits(ml_dtypes.float8_e4m3fn).name == "float8_e4m3fn"


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("fn", ("limits", "overflow_depth", "underflow_depth", "chain"))
def test_bad_dtypes(fn):
    call = {
        "limits": lambda d: precision.limits(d),
        "overflow_depth": lambda d: precision.overflow_depth(1.5, d),
        "underflow_depth": lambda d: precision.underflow_depth(0.5, d, flush=False),
        "chain": lambda d: precision.chain(1.5, d, steps=3),
    }[fn]
    with pytest.raises(ValueError, match="supported: float16, bfloat16, float32, float64"):
        call("float17")
    with pytest.raises(ValueError, match="float8_e8m0fnu is not supported"):
        call("float8_e8m0fnu")
    with pytest.raises(TypeError, match="int32"):
        call("int32")
    with pytest.raises(TypeError, match="int8"):
        call(np.int8)


@pytest.mark.parametrize("fn", ("overflow_depth", "underflow_depth", "chain"))
def test_bad_scale_and_x0(fn):
    f = getattr(precision, fn)
    good = 0.5 if fn == "underflow_depth" else 1.5
    kw = {"flush": False} if fn != "chain" else {"steps": 3}
    for bad in (0.0, math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            f(bad, "float32", **kw)
        with pytest.raises(ValueError, match="x0"):
            f(good, "float32", bad, **kw)
    with pytest.raises(ValueError, match=r"x0=1e-10 rounds to 0\.0 in float16"):
        f(good, "float16", 1e-10, **kw)
    with pytest.raises(ValueError, match="rounds to inf in float16"):
        f(good, "float16", 1e10, **kw)
    with pytest.raises(TypeError, match="scale"):
        f(None, "float32", **kw)
    with pytest.raises(TypeError, match="x0"):
        f(good, "float32", [1.0], **kw)


def test_scale_on_the_wrong_side_of_one():
    # scale == 1 never overflows or underflows: documented as a ValueError, not a hang.
    for scale in (1.0, -1.0, 0.5):
        with pytest.raises(ValueError, match="overflow_depth needs \\|scale\\| > 1"):
            precision.overflow_depth(scale, "float32")
    for scale in (1.0, 1.5):
        with pytest.raises(ValueError, match="underflow_depth needs 0 < \\|scale\\| < 1"):
            precision.underflow_depth(scale, "float32", flush=False)
    # 1.0001 is > 1 but rounds to 1 in float16.
    with pytest.raises(ValueError, match=r"rounds to 1\.0 in float16"):
        precision.overflow_depth(1.0001, "float16")
    with pytest.raises(ValueError, match="pass steps"):
        precision.chain(1.0, "float32")
    assert precision.chain(1.0, "float32", steps=2).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(TypeError, match="flush"):
        precision.underflow_depth(0.5, "float32", flush="yes")
    with pytest.raises(ValueError, match="steps"):
        precision.chain(1.5, "float32", steps=0)
    with pytest.raises(ValueError, match="max_steps=10"):
        precision.overflow_depth(1.01, "float32", max_steps=10)


def test_fixed_point_among_subnormals_returns_none():
    # Close to 1, x * scale rounds back to x once the spacing (absolute among subnormals) is
    # larger than x * (1 - scale): the chain stalls and never reaches 0.
    sub = float(ml_dtypes.finfo(np.float16).smallest_subnormal)
    d = precision.underflow_depth(0.999, "float16", x0=100 * sub, flush=False)
    assert d.step is None and d.value > 0
    assert Ref("float16").depth(0.999, 100 * sub, False, False) is None
    # With flushing the same chain does reach 0.
    assert precision.underflow_depth(0.999, "float16", x0=100 * sub, flush=True).step == 1


def test_overflow_without_inf_is_nan_not_inf():
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz"):
        d = precision.overflow_depth(1.5, name)
        xs = precision.chain(1.5, name, steps=d.step)
        assert math.isnan(d.value) and np.isnan(xs[-1].astype(np.float64))
        c = census(jnp.asarray(xs))
        assert int(c.inf) == 0 and int(c.nan) == 1


@pytest.mark.parametrize("name", ("bfloat16", "float32", "float64"))
def test_flush_decides_before_rounding_like_the_device(name):
    # tiny * (1 - eps/2) is exactly halfway between tiny and the largest subnormal; to nearest
    # even it rounds up to tiny, but a flushing backend that detects tininess before rounding
    # returns 0. The simulation models that; the device decides which is right.
    if not precision.probe()[name].flushes:
        pytest.skip(f"{name} keeps subnormals on this device")
    lim = precision.limits(name)
    scale = 1 - lim.eps / 2
    on_device = float(precision.chain(scale, name, lim.tiny, steps=1)[1].astype(np.float64))
    d = precision.underflow_depth(scale, name, lim.tiny, flush=True)
    assert on_device == 0.0 and d.step == 1
    # With subnormals kept the same product rounds (to even) back to tiny: a fixed point.
    ieee = precision.underflow_depth(scale, name, lim.tiny, flush=False)
    assert ieee.step is None and ieee.value == lim.tiny
    # Regression: a closed-form k near 1e17 (float64) must not trigger an exact power check.
    assert ieee.predicted > 1 / lim.eps
