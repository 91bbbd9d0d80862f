"""Low precision in `train`: the rounding rules (Kahan, stochastic) recover the updates that pure
bfloat16 loses, and float8 blocks train with their scaling state replaced, not optimized, and
kept where a block did not run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit as sk
from stabkit.training import make_runs, train

TASK = sk.teacher_student(jax.random.key(0), n=32, in_dim=4, out_dim=2)


def _spec(rounding, **kw):
    return sk.TrainSpec(
        TASK,
        max_depth=2,
        width=8,
        steps=40,
        log_every=20,
        dtype="bfloat16",
        optimizer="sgd",
        rounding=rounding,
        **kw,
    )


@pytest.fixture(scope="module")
def histories():
    out = {}
    for rounding in ("nearest", "kahan", "stochastic"):
        spec = _spec(rounding)
        out[rounding] = (spec, train(spec, make_runs(spec, lr=[1e-4], seed=[0, 1])))
    return out


def test_rounding_rules_recover_the_lost_updates(histories):
    _, h = histories["nearest"]
    # the stored weights of pure bfloat16 SGD at lr 1e-4 hardly move: their updates are below
    # half an ulp (the biases, starting at 0, do move)
    assert float(np.min(h.lost_updates[:, :, :2])) > 0.7
    nearest_drop = float(h.loss[0, 0] - h.final_loss[0])
    for rule in ("kahan", "stochastic"):
        _, g = histories[rule]
        # the same first record (same network, same data), more progress by the end
        np.testing.assert_array_equal(np.asarray(g.loss[:, 0]), np.asarray(h.loss[:, 0]))
        assert float(g.loss[0, 0] - g.final_loss[0]) > 2 * nearest_drop, rule
        # the optimizer's updates are as small as before: still "lost" to round-to-nearest
        assert float(np.min(g.lost_updates[:, :, :2])) > 0.7
    # stochastic rounding is keyed by the run's seed: another seed, another path; rerun: same bits
    _, again = histories["stochastic"]
    spec_sr = _spec("stochastic")
    rerun = train(spec_sr, again.runs)
    np.testing.assert_array_equal(np.asarray(rerun.final_loss), np.asarray(again.final_loss))


def test_float8_block_trains_and_keeps_the_metas_of_blocks_that_did_not_run():
    blk = sk.block("residual", float8="delayed")
    spec = sk.TrainSpec(
        TASK, max_depth=2, width=8, steps=6, log_every=3, block=blk, optimizer="adam"
    )
    runs = make_runs(spec, depth=[1, 2], lr=[1e-2])
    h = train(spec, runs)
    assert np.isfinite(np.asarray(h.loss)).all()
    assert (np.asarray(h.final_loss) < np.asarray(h.loss[:, 0])).all()
    # the per-layer gradient rows hold the trainable arrays only
    assert h.layer_grad_rms.shape == (2, 2, 4)
    # the per-block float8 census: fractions where a block ran, NaN beyond the run's depth
    for name in ("float8_underflow", "float8_overflow", "float8_grad_underflow"):
        v = np.asarray(getattr(h, name))
        assert v.shape == (2, 2, 2) and np.isnan(v[0, :, 1]).all(), name
        assert ((v[1] >= 0) & (v[1] <= 1)).all() and (v[0, :, 0] >= 0).all(), name

    # One logging window of the run of depth 1, through the kernel's own functions: block 2
    # did not run and keeps its meta; block 1's histories rolled in this window's amaxes.
    from stabkit.training.loop import _start, _window

    run = jax.tree.map(lambda a: a[0], runs)
    carry = _start(spec, run, ())
    meta0 = carry[0][1]["branch"]["float8"]
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(meta0))
    after, _ = jax.jit(lambda c: _window(spec, c, run, jnp.int32(0), TASK.x, TASK.y))(carry)
    meta1 = after[0][1]["branch"]["float8"]
    for name in meta0:
        for k in meta0[name]:
            np.testing.assert_array_equal(meta1[name][k][1], meta0[name][k][1])
        # three steps: three amaxes rolled in, newest first
        assert (np.asarray(meta1[name]["x_history"][0, :3]) > 0).all()
        assert float(meta1[name]["x_history"][0, 3]) == 0
        assert float(meta0[name]["x_history"][0, 0]) == 0
