"""Bounded-time differential fuzz of the softmax family against a 60-digit mpmath reference.

The engine is ``benchmarks/fuzz_softmax.py`` (run it with ``--cases 9000`` for the full table);
here a small, fixed-seed share of it runs in the suite: every function (values and gradients),
every dtype (float16, bfloat16, float32, float64 inside ``jax.enable_x64``, float8_e4m3fn,
float8_e5m2), every kind of adversarial row (ties, huge spreads, -inf, masked and all-masked rows,
near-overflow +-max, subnormal-producing tails, cancellation), rows of 8 through ``where=``, and
one 100,000-entry row per dtype whose reference has a closed form. Tolerances, flush handling and
conditioning allowances are the engine's (see its docstring): 1 ulp in float16, bfloat16 and
float8, 2 ulp in float32 and float64, on the same rounded inputs.
"""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_softmax.py"
_spec = importlib.util.spec_from_file_location("fuzz_softmax", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("fuzz_softmax", fuzz)  # dataclasses look their module up
_spec.loader.exec_module(fuzz)

CASES = 27  # three of each kind


@pytest.mark.parametrize("dtype", fuzz.DTYPES)
def test_fuzz_within_tolerance(dtype):
    rng = np.random.default_rng(11)
    stats = fuzz.check_dtype(dtype, CASES, rng, sizes=(8,), long_rows=1, always_mask=True)
    beyond = {f: s for f, s in stats.items() if s["beyond"]}
    assert not beyond, f"{dtype}: cases beyond {fuzz.tolerance(dtype)} ulp: {beyond}"
    assert all(s["cases"] == CASES + 1 for s in stats.values())


def test_fuzz_engine_finds_a_known_error():
    """The engine itself: a 1-ulp-off output is 1, a flushed subnormal is 0, -0.0 vs 0 is 0."""
    one = np.float16(1.0)
    up = np.nextafter(one, np.float16(2))
    ulps, nonfinite, _ = fuzz.errors(np.array([up]), np.array([1.0]), "float16", False)
    assert ulps[0] == 1 and not nonfinite.any()
    ulps, _, _ = fuzz.errors(np.array([0.0], np.float32), np.array([1e-40]), "float32", True)
    assert ulps[0] == 0
    ulps, _, _ = fuzz.errors(np.array([0.0], np.float32), np.array([1e-40]), "float32", False)
    assert ulps[0] > 1
    _, nonfinite, _ = fuzz.errors(np.array([np.inf], np.float32), np.array([3e38]), "float32", True)
    assert nonfinite[0]
    # correct rounding without double rounding through float32 (bfloat16 midpoint + 2^-30)
    v = np.array([1 + 2**-8 + 2**-30])
    assert float(fuzz.round_to(v, "bfloat16", False)[0]) == 1 + 2**-7
