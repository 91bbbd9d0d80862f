"""Shared test settings: the dtypes under test, one tolerance table, hypothesis profile."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# JAX compiles on first call, so the first example of a property test can be slow.
settings.register_profile(
    "stabkit",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("stabkit")

DTYPES = ("float16", "bfloat16", "float32", "float64")

# Unit roundoff-based tolerances, in units of the dtype's eps, for results compared against a
# float64 / mpmath reference. float16/bfloat16 are computed in float32 and rounded once, so they
# must be within 1 ulp of the correctly rounded reference; float32/float64 within a few ulps.
ULPS = {"float16": 1, "bfloat16": 1, "float32": 4, "float64": 4}


def np_dtype(name):
    """The NumPy dtype object for a name, bfloat16 and float8 included."""
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def eps(name):
    return float(ml_dtypes.finfo(np_dtype(name)).eps)


@pytest.fixture(params=DTYPES)
def dtype(request):
    """Each dtype under test, by name. float64 tests enter ``jax.enable_x64`` themselves."""
    return request.param


def jdtype(name):
    return jnp.dtype(np_dtype(name))


@pytest.fixture
def fake_memory(monkeypatch):
    """``fake_memory(nbytes)``: pretend the machine has ``nbytes`` of memory, for every bound.

    Patches ``stabkit._checks.memory_limit`` and every stabkit module that imported it by name,
    so that a test needs no list of the modules that check memory.
    """
    import sys

    from stabkit import _checks

    real = _checks.memory_limit

    def set_limit(nbytes: int) -> int:
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if name.startswith("stabkit") and getattr(module, "memory_limit", None) is real:
                monkeypatch.setattr(module, "memory_limit", lambda: nbytes)
        return nbytes

    return set_limit


# The files that take longest, longest first: `--dist loadfile` hands whole files to the workers
# in collection order, and collected alphabetically these came last and ran alone at the end (a
# tail of minutes on CI's 2 cores). Rough CPU seconds on 2 shared cores, 2026-12.
_LONGEST_FIRST = (
    "tests/test_sweep.py",  # ~250 s
    "tests/test_train.py",  # ~130 s
    "tests/test_softmax.py",
    "tests/test_theory.py",
    "tests/test_inspect_interop.py",
    "tests/test_inspect_mlp.py",
    "tests/test_store.py",
    "tests/test_seed_rule.py",
    "tests/test_validation_nets.py",
    "tests/test_trace.py",
    "tests/test_inspect.py",
)


def pytest_collection_modifyitems(config, items):
    """Schedule the longest files first (a stable sort: the order within a file is kept)."""
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(rank))

    items.sort(key=key)
