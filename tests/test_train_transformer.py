"""Training small decoder-only transformers with `train`: the per-run fixes (z-loss, warm-up and
schedules, independent weight decay, attention soft cap) as data, the new records (attention
logit max and entropy per block, the output log-partition, parameter norm, lost updates) checked
against direct computations, the progress bar, and bad input refused before compiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit as sk
from stabkit.stable_softmax import logsumexp, softmax_cross_entropy
from stabkit.training import Task, make_runs, train
from stabkit.training.loop import _net_params
from stabkit.training.optimizers import schedule_multiplier

V, S, N = 8, 6, 16


def _task():
    tok = np.asarray(jax.random.randint(jax.random.key(5), (N, S + 1), 0, V))
    x = np.concatenate(
        [np.eye(V)[tok[:, :-1]], np.broadcast_to(np.eye(S), (N, S, S))], axis=-1
    ).astype(np.float32)
    return Task(x, tok[:, 1:].astype(np.int32), "classification", V)


TASK = _task()
BLOCK = sk.block("attention", heads=2, causal=True, mlp=True, norm="layer")
STEPS = 8


@pytest.fixture(scope="module")
def spec():
    return sk.TrainSpec(
        TASK,
        max_depth=2,
        width=8,
        block=BLOCK,
        final_norm="layer",
        optimizer="adam",
        steps=STEPS,
        log_every=4,
    )


@pytest.fixture(scope="module")
def runs(spec):
    # (depth, lr, z_loss, warmup, weight_decay, softcap), zipped: one compilation for all
    rows = [
        (2, 1e-2, 0.0, 0, 0.0, 0.0),
        (2, 1e-2, 1e-2, 0, 0.0, 0.0),
        (2, 1e-2, 0.0, 4, 0.0, 0.0),
        (2, 1e-30, 0.0, 0, 0.1, 0.0),
        (2, 1e-2, 0.0, 0, 0.0, 0.5),
        (1, 1e-2, 0.0, 0, 0.0, 0.0),
    ]
    cols = list(zip(*rows, strict=True))
    return make_runs(
        spec,
        depth=list(cols[0]),
        lr=list(cols[1]),
        z_loss=list(cols[2]),
        warmup=list(cols[3]),
        weight_decay=list(cols[4]),
        softcap=list(cols[5]),
        seed=[0, 0, 0, 0, 0, 1],
        product=False,
    )


@pytest.fixture(scope="module")
def history(spec, runs):
    return train(spec, runs, progress=False)


def _initial(spec, runs, i):
    run = jax.tree.map(lambda a: a[i], runs)
    return _net_params(spec, run, jnp.float32), run


def test_first_record_matches_a_direct_computation(spec, runs, history):
    h = history
    assert h.loss.shape == (6, 2) and h.attn_logit_max.shape == (6, 2, 2)
    assert h.lost_updates.shape == (6, 2, spec.n_weights) and h.param_norm.shape == (6, 2)
    for i in (0, 1, 5):
        params, run = _initial(spec, runs, i)
        out = sk.net_apply(params, TASK.x, depth=int(run.depth)).astype(jnp.float32)
        lse = logsumexp(out, axis=-1)
        ce = float(jnp.mean(softmax_cross_entropy(out, TASK.y)))
        want = ce + float(run.z_loss) * float(jnp.mean(lse**2))
        np.testing.assert_allclose(float(h.loss[i, 0]), want, rtol=2e-6)
        np.testing.assert_allclose(float(h.log_z[i, 0]), float(jnp.mean(lse)), rtol=2e-6)
        leaves = jax.tree.leaves((params.embed, params.blocks, params.readout))
        norm = np.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in leaves))
        np.testing.assert_allclose(float(h.param_norm[i, 0]), norm, rtol=1e-5)
        # the attention taps of block 1 at step 0: the trace's, on the same network
        t = sk.trace(params, TASK.x, depth=int(run.depth))
        np.testing.assert_allclose(
            float(h.attn_logit_max[i, 0, 0]), float(np.max(t.taps["logit_max"][1])), rtol=1e-5
        )
        np.testing.assert_allclose(
            float(h.attn_entropy[i, 0, 0]), float(np.mean(t.taps["entropy"][1])), rtol=1e-5
        )
    # a block beyond the run's depth has no attention record
    assert np.isnan(h.attn_logit_max[5, :, 1]).all() and np.isfinite(h.attn_logit_max[0]).all()
    # nothing is lost to rounding in float32 at these learning rates
    assert float(np.max(h.lost_updates[0])) < 0.01


def test_z_loss_holds_log_z_and_the_fixes_change_what_they_should(history):
    h = history
    # z-loss pulls log Z towards 0 (at this learning rate, within 8 Adam steps)
    assert abs(float(h.log_z[1, -1])) < abs(float(h.log_z[0, -1]))
    # warm-up over 4 steps: the first update is m(0) = 1/4 of the same run's without warm-up
    # (same network, same gradient, Adam's first step)
    np.testing.assert_allclose(
        float(h.update_norm[2, 0]) / float(h.update_norm[0, 0]), 0.25, rtol=1e-5
    )
    # soft cap 0.5: every attention logit is at most the cap
    assert float(np.nanmax(h.attn_logit_max[4])) <= 0.5 + 1e-6
    assert float(np.nanmax(h.attn_logit_max[0])) > 0.5
    # another seed, another network
    assert float(h.loss[5, 0]) != float(h.loss[0, 0])


def test_independent_weight_decay_is_not_scaled_by_the_learning_rate(history):
    # lr = 1e-30: the optimizer's step is nothing, the decay theta -= 0.1 theta is everything.
    # The records are taken before steps 0 and 4: four decays of (1 - 0.1) apart.
    n0, n4 = float(history.param_norm[3, 0]), float(history.param_norm[3, 1])
    np.testing.assert_allclose(n4 / n0, 0.9**4, rtol=1e-5)


def test_schedule_multiplier_closed_forms():
    steps = 11
    t = jnp.arange(steps)
    np.testing.assert_allclose(schedule_multiplier("constant", 0, steps)(t), np.ones(steps))
    warm = schedule_multiplier("constant", 4, steps)(t)
    np.testing.assert_allclose(warm[:5], [0.25, 0.5, 0.75, 1, 1])
    cos = np.asarray(schedule_multiplier("cosine", 1, steps)(t))
    p = np.clip((np.arange(steps) - 1) / (steps - 2), 0, 1)
    np.testing.assert_allclose(
        cos, np.minimum(1, np.arange(1, steps + 1)) * 0.5 * (1 + np.cos(np.pi * p)), atol=1e-6
    )
    lin = np.asarray(schedule_multiplier("linear", 0, steps)(t))
    np.testing.assert_allclose(lin, 1 - np.arange(steps) / (steps - 1), atol=1e-6)
    assert lin[-1] == 0


def test_pure_bfloat16_loses_small_updates_and_the_progress_bar(capsys):
    task = sk.teacher_student(jax.random.key(0), n=16, in_dim=4, out_dim=2)
    spec = sk.TrainSpec(task, max_depth=2, width=8, steps=2, dtype="bfloat16", optimizer="sgd")
    runs = make_runs(spec, lr=[1e-6, 1.0])
    h = train(spec, runs, progress=False)
    lost = np.asarray(h.lost_updates)
    # lr 1e-6: every weight's update is far below half an ulp of it (2**-9 relative); only the
    # biases, which start at 0, move: the lost fraction is the weights' share of the entries
    # that moved (some relu units pass no gradient)
    assert lost.shape == (2, 2, 3)
    share = np.array([4 * 8 / (4 * 8 + 8), 8 * 8 / (8 * 8 + 8), 8 * 2 / (8 * 2 + 2)])
    assert (lost[0] > 0.75).all() and (lost[0] <= share + 0.05).all()
    # lr 1: the updates are large, few are lost
    assert float(np.max(lost[1])) < 0.5
    # the progress bar: reported on stderr, nothing else changes
    shown = train(spec, runs, progress=True)
    err = capsys.readouterr().err
    assert "train 2 runs" in err and "2/2" in err
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(shown), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"z_loss": -1e-4}, "z_loss=-0.0001 is invalid"),
        ({"z_loss": float("nan")}, "z_loss"),
        ({"warmup": 9}, "warmup=9 is out of range"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1 is invalid"),
        ({"lr": [1e-3, 0.0]}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
    ],
)
def test_bad_fix_values(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_runs(spec, **kwargs)


def test_unknown_fix_is_named(spec):
    with pytest.raises(TypeError, match=r"no run field or fix 'zloss'.*z_loss"):
        make_runs(spec, zloss=1e-4)
    with pytest.raises(TypeError, match="no option 'qk_layernorm'"):
        sk.block("attention", qk_layernorm=True)
    with pytest.raises(ValueError, match="float8"):
        sk.block("conv1d", float8="delayed")


def test_bad_specs():
    with pytest.raises(ValueError, match="schedule"):
        sk.TrainSpec(TASK, max_depth=1, block=BLOCK, schedule="exponential")
    with pytest.raises(ValueError, match="rounding"):
        sk.TrainSpec(TASK, max_depth=1, block=BLOCK, rounding="up")
    with pytest.raises(ValueError, match="sequence axis"):
        sk.TrainSpec(TASK, max_depth=1)
    with pytest.raises(ValueError, match="spatial axes"):
        sk.TrainSpec(TASK, max_depth=1, block="residual")
    reg = sk.teacher_student(jax.random.key(0), n=8)
    with pytest.raises(ValueError, match="final_norm"):
        sk.TrainSpec(reg, max_depth=1, final_norm="layer")
    s = sk.TrainSpec(reg, max_depth=1, block="residual", steps=4)
    with pytest.raises(ValueError, match="no attention block"):
        make_runs(s, softcap=5.0)
    with pytest.raises(ValueError, match="z-loss penalises"):
        make_runs(s, z_loss=1e-4)
    runs = make_runs(s)
    with pytest.raises(ValueError, match=r"runs.z_loss\[0\]"):
        train(s, runs._replace(z_loss=np.array([-1.0], np.float32)))
    with pytest.raises(TypeError, match="progress"):
        train(s, runs, progress="yes")


def _history(loss, logit_max=None, entropy=None, log_z=None):
    loss = np.asarray(loss, np.float64)[None]
    r, t = loss.shape
    return sk.History(
        step=np.arange(t) * 10,
        loss=loss,
        grad_norm=np.ones((r, t)),
        update_norm=np.ones((r, t)),
        layer_grad_rms=np.ones((r, t, 3)),
        grad_census=None,
        loss_scale=np.ones((r, t)),
        nonfinite_grads=np.zeros((r, t)),
        absorbed=np.zeros((r, t)),
        first_nonfinite=np.full(r, -1),
        final_loss=loss[:, -1],
        final_accuracy=np.full(r, np.nan),
        runs=None,
        log_z=None if log_z is None else np.asarray(log_z, np.float64)[None],
        attn_logit_max=None if logit_max is None else np.asarray(logit_max, np.float64)[None],
        attn_entropy=None if entropy is None else np.asarray(entropy, np.float64)[None],
    )


def test_diagnose_transformer_verdicts_and_evidence():
    falling = np.linspace(2.8, 1.0, 8)
    calm = np.full((8, 2), 3.0), np.full((8, 2), 1.5)
    d = sk.diagnose(_history(falling, *calm, log_z=np.full(8, 2.5)))
    assert d.verdict == ("healthy",) and d.spike_step[0] == -1
    grow = np.outer(np.geomspace(1, 200, 8), [1, 1]) * 3
    collapse = np.outer(np.geomspace(1.5, 0.01, 8), [1, 1])
    d = sk.diagnose(_history(falling[::-1], grow, collapse))
    assert d.verdict == ("attention_logit_growth",)
    assert d.logit_growth[0] == pytest.approx(200) and d.entropy_min[0] == pytest.approx(0.01)
    assert "attention logits up to 600" in d.explain(0)
    # growth without collapse is not logit growth
    assert sk.diagnose(_history(falling, grow, calm[1])).verdict == ("healthy",)
    d = sk.diagnose(_history(falling, *calm, log_z=-np.geomspace(2, 60, 8)))
    assert d.verdict == ("output_logit_divergence",) and d.log_z_peak[0] == pytest.approx(60)
    assert "|log Z| up to 60" in d.explain(0)
    spiky = np.array([2.8, 2.0, 1.2, 1.0, 2.6, 1.1, 1.0, 0.9])
    d = sk.diagnose(_history(spiky, *calm))
    assert d.verdict == ("loss_spike",) and d.spike_step[0] == 40
    assert d.spike_rise[0] == pytest.approx(1.6 / 1.8)
    # the noise of a converged run is not a spike
    noisy = np.array([2.8, 1.0, 0.1, 0.01, 0.03, 0.01, 0.02, 0.01])
    assert sk.diagnose(_history(noisy)).verdict == ("healthy",)
    with pytest.raises(ValueError, match="attn_entropy must have shape"):
        sk.diagnose(_history(falling, calm[0], np.ones((7, 2))))
    with pytest.raises(ValueError, match="spike_fraction"):
        sk.diagnose(_history(falling), spike_fraction=0)
