"""Shared test settings: the dtypes under test, one tolerance table, hypothesis profile, and one
compilation cache for the whole run."""

import os
import shutil
import tempfile

# The suite is compile-bound: its two xdist workers and its CLI subprocesses compile many of the
# same XLA programs (the same small nets, traces and sweep kernels in several files). One
# persistent compilation cache for the run, created here in the controlling process before the
# workers start (they inherit the environment), lets each program compile once; a compiled
# executable is the same program, so no result changes (a warm cache ran tests/test_networks.py
# in 19 s instead of 95 s). A cache the user set up is used as it is; ours is removed at the end.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="stabkit-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ["STABKIT_TESTS_OWN_CACHE"] = _OWN_CACHE


def pytest_unconfigure(config):
    # Only the process that created the directory removes it, and only that directory.
    own = os.environ.get("STABKIT_TESTS_OWN_CACHE")
    if own and own == _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(own, ignore_errors=True)


import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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
# tail of minutes on CI's 2 cores). Rough CPU seconds on 2 shared cores, 2026-12 (user CPU of one
# cold single-process run of the file where given as "CPU", 2026-12-01).
_LONGEST_FIRST = (  # per-file worker seconds of a run on a loaded machine (2026-12-01)
    "tests/test_train.py",  # ~505 s (loaded)
    "tests/test_theory.py",  # ~350 s
    "tests/test_trace.py",  # ~340 s
    "tests/test_sweep.py",  # ~335 s
    "tests/test_softmax.py",  # ~250 s
    "tests/test_inspect_interop.py",  # ~230 s
    "tests/test_networks.py",  # ~190 s
    "tests/test_nets.py",  # ~180 s
    "tests/test_seed_rule.py",  # ~180 s
    "tests/test_inspect_mlp.py",  # ~165 s
    "tests/test_validation_nets.py",  # ~160 s
    "tests/test_net_sweep.py",  # ~150 s
    "tests/test_store.py",  # ~145 s
    "tests/test_train_precision.py",  # ~140 s
    "tests/test_train_transformer.py",  # ~140 s
    "tests/test_attention_block.py",  # ~135 s
    "tests/test_distributed.py",  # ~130 s: two-process sweeps and training in subprocesses
    "tests/test_inspect.py",
    "tests/test_train_validation.py",  # ~65 s
    "tests/test_low_precision_updates.py",
    "tests/test_float8.py",
    "tests/test_normalization.py",
    "tests/test_conv_block.py",
    "tests/test_train_blocks.py",
    "tests/test_residual_theory.py",
    "tests/test_sweep_kernel_bits.py",
    "stabkit/training/__init__.py",  # doctests that train (~17 s)
    "tests/test_softmax_fuzz.py",
    "stabkit/tracing.py",
)


def pytest_collection_modifyitems(config, items):
    """Schedule the longest files first (a stable sort: the order within a file is kept)."""
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(rank))

    items.sort(key=key)
