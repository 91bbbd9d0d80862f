"""Training networks of blocks: learnable alpha (ReZero) and norm gains are trained, the
hyper-parameters are not, the MLP path is untouched, bad specs are refused."""

import jax
import numpy as np
import pytest

import stabkit as sk
from stabkit.training import make_runs, teacher_student
from stabkit.training.loop import _net_params

TASK = teacher_student(jax.random.key(0), n=32, in_dim=6, out_dim=2)


def test_rezero_trains_alpha_and_gains_from_zero():
    blk = sk.block("residual", norm="layer", learnable_alpha=True)
    spec = sk.TrainSpec(
        TASK, max_depth=4, width=8, steps=20, log_every=5, optimizer="adam", block=blk, alpha=0.0
    )
    runs = make_runs(spec, depth=[1, 4], lr=[3e-3], seed=[0])
    h = sk.train(spec, runs)
    assert h.layer_grad_rms.shape == (2, 4, spec.n_weights) == (2, 4, 6)
    # alpha = 0: every block is the identity at step 0, whatever the depth.
    np.testing.assert_array_equal(h.loss[0, 0], h.loss[1, 0])
    assert (np.asarray(h.final_loss) < np.asarray(h.loss[:, 0])).all()
    # The blocks' gradient at step 0 is that of alpha alone (the branch is multiplied by 0)
    # and not zero: ReZero's alpha learns. Blocks beyond a run's depth get no gradient.
    assert float(h.layer_grad_rms[0, 0, 1]) > 0 and float(h.layer_grad_rms[0, 0, 2]) == 0
    # The initial network is net_init's for the run's seed and scale.
    run0 = jax.tree.map(lambda a: a[0], runs)
    p = _net_params(spec, run0, np.float32)
    q = sk.net_init(
        jax.random.key(0), blk, depth=4, width=8, in_dim=6, out_dim=2, init="he_normal", alpha=0.0
    )
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        np.testing.assert_array_equal(a, b)


def test_activation_index_chooses_the_block_and_bad_specs():
    spec = sk.TrainSpec(
        TASK,
        max_depth=3,
        width=8,
        steps=10,
        log_every=5,
        block="dense",
        activation=("tanh", "linear"),
    )
    h = sk.train(spec, make_runs(spec, activation=["tanh", "linear"], depth=[3], lr=[1e-2]))
    assert h.final_loss.shape == (2,) and float(h.final_loss[0]) != float(h.final_loss[1])
    with pytest.raises(ValueError, match="block"):
        sk.TrainSpec(TASK, max_depth=2, block="transformer")
    with pytest.raises(ValueError, match="spatial axes"):
        sk.TrainSpec(TASK, max_depth=2, block="conv1d")
    with pytest.raises(ValueError, match="single activation"):
        sk.TrainSpec(TASK, max_depth=2, block=sk.block("dense"), activation=("relu", "tanh"))
    with pytest.raises(ValueError, match="alpha"):
        sk.TrainSpec(TASK, max_depth=2, block="residual", alpha=float("nan"))
