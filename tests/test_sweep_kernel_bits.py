"""The sweep kernel's fused per-layer counts (ChunkStats.layer_counts) against NumPy and against
the separate statistics they replace (counts, dead, the saturated mean), bit for bit.

One small jit per (dtype, batch): blocks of 3 configs x batch x 4 units holding every class of
stabkit.census (+-0, subnormals, +-inf, NaN, normals), dead units and saturated entries.
"""

import contextlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from stabkit.sweeps.chunk_stats import ChunkStats

DTYPES = ("float16", "bfloat16", "float32", "float64")
THRESHOLD = 0.01


def _blocks(dtype, batch, rng):
    """(hn, dphi) as NumPy arrays of ``dtype``: config 0 all normal, config 1 every class,
    config 2 all zeros (every unit dead, every entry saturated)."""
    info = ml_dtypes.finfo(dtype)
    npdt = np.dtype(dtype)
    specials = np.array(
        [0.0, -0.0, float(info.smallest_subnormal), -float(info.smallest_subnormal),
         np.inf, -np.inf, np.nan, 1.5, float(info.max)],
        npdt,
    )  # fmt: skip
    hn = rng.normal(size=(3, batch, 4)).astype(npdt)
    hn[1] = rng.choice(specials, size=(batch, 4))
    hn[2] = 0
    dphi = rng.uniform(-1, 1, size=(3, batch, 4)).astype(npdt)
    dphi[0, :, 1] = 0  # a dead unit (+0 and -0 alike)
    dphi[0, ::2, 1] = -0.0
    dphi[1, : batch // 2] = rng.uniform(-THRESHOLD / 2, THRESHOLD / 2, size=(batch // 2, 4))
    dphi[1, :, 3] = info.smallest_subnormal  # not dead: subnormal, not zero
    dphi[2] = 0
    return hn, dphi


def _numpy_reference(hn, dphi):
    a = np.abs(hn.astype(np.float64))
    tiny = float(ml_dtypes.finfo(hn.dtype).tiny)
    d = dphi.astype(np.float64)
    return {
        "post_zero": (a == 0).sum(axis=(1, 2)),
        "post_subnormal": ((a > 0) & (a < tiny)).sum(axis=(1, 2)),
        "post_inf": np.isinf(a).sum(axis=(1, 2)),
        "post_nan": np.isnan(a).sum(axis=(1, 2)),
        "saturated": (np.abs(d) < THRESHOLD).mean(axis=(1, 2)),
        "dead": (d == 0).all(axis=1).mean(axis=1),
    }


@pytest.mark.parametrize("batch", [8, 256])  # 256: the unpacked path
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_counts_match_numpy_and_the_separate_statistics(dtype, batch):
    rng = np.random.default_rng(0)
    hn, dphi = _blocks(dtype, batch, rng)
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with x64:
        ops = ChunkStats(dtype, 4, batch)
        thr = jnp.asarray(THRESHOLD, ops.sdt)

        @jax.jit
        def both(hn, dphi):
            finite = jnp.isfinite(ops.absmax(hn))
            fused = ops.layer_counts(hn, dphi, thr, finite)
            sat = jnp.abs(dphi).astype(ops.sdt) < thr
            apart = {
                **ops.counts(hn, "post", finite),
                "saturated": jnp.mean(sat, axis=(1, 2), dtype=ops.sdt),
                "dead": ops.dead(dphi),
            }
            return fused, apart

        fused, apart = jax.tree.map(np.asarray, both(jnp.asarray(hn), jnp.asarray(dphi)))
    assert set(fused) == set(apart)
    for k in fused:  # bit for bit, dtype included
        assert fused[k].dtype == apart[k].dtype and np.array_equal(fused[k], apart[k]), k
    want = _numpy_reference(hn, dphi)
    for k, v in want.items():
        # saturated and dead are fractions of at most 2^13 entries: exact in float32.
        np.testing.assert_array_equal(fused[k], v.astype(fused[k].dtype), err_msg=k)
    assert fused["dead"][2] == 1 and fused["saturated"][2] == 1 and fused["post_zero"][2] > 0
    assert fused["post_inf"][1] > 0 and fused["post_nan"][1] > 0 and fused["post_subnormal"][1] > 0
