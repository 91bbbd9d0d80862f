"""Tests of vmapped training, its history, diagnose() and mixed precision with loss scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stabkit.fixes import DynamicLossScale
from stabkit.nets import mlp_apply
from stabkit.precision import Census
from stabkit.tracecount import count_traces
from stabkit.training import (
    History,
    Runs,
    Task,
    TrainSpec,
    diagnose,
    make_runs,
    optimizer_names,
    teacher_classification,
    teacher_student,
    train,
    trainability_grid,
)
from stabkit.training.loop import _init_key, _init_params
from stabkit.training.trainability import _boundary

# The note's cases, exactly as in the module docstring (so the doctest reuses the compilation).
NOTE_TASK = dict(n=64, in_dim=16, teacher_depth=1)
NOTE_SPEC = dict(
    max_depth=30,
    width=32,
    steps=150,
    log_every=5,
    optimizer="momentum",
    activation=("linear", "sigmoid", "relu"),
    init=("scaled_identity", "glorot_normal", "he_normal"),
)
NOTE_RUNS = dict(
    scale=[1.5, 0.5, 1, 1],
    activation=["linear", "linear", "sigmoid", "relu"],
    init=["scaled_identity", "scaled_identity", "glorot_normal", "he_normal"],
    lr=0.005,
)


@pytest.fixture(scope="module")
def note():
    task = teacher_student(jax.random.key(0), **NOTE_TASK)
    spec = TrainSpec(task, **NOTE_SPEC)
    history = train(spec, make_runs(spec, **NOTE_RUNS, product=False))
    return spec, jax.tree.map(np.asarray, history)


def test_note_cases_verdicts_and_evidence(note):
    _, h = note
    d = diagnose(h)
    assert d.verdict == ("exploding", "vanishing", "vanishing", "healthy")
    # W = 1.5 I: the first SGD step overflows; the loss is NaN from then on.
    assert d.first_nonfinite[0] == 1 and np.isnan(h.loss[0, 1:]).all()
    assert h.loss[0, 0] > 1e9
    # W = 0.5 I: the loss does not move, every layer's gradient carries 0.5**30 (so the total
    # gradient, not the layer ratio, shows it).
    assert d.plateau[1] and d.plateau_start[1] == 0 and abs(d.loss_drop[1]) < 1e-3
    assert d.grad_to_loss[1] < 1e-6 and d.layer_ratio[1] > 1e-3
    # deep sigmoid: the first layer's gradient is > 1e10 times smaller than the readout's.
    assert d.plateau[2] and d.layer_ratio[2] < 1e-10
    # He + relu trains: the loss falls by more than half and the gradient reaches layer 1.
    assert d.loss_drop[3] > 0.5 and 0.1 < d.layer_ratio[3] < 10 and not d.plateau[3]
    for i in range(4):
        assert d.verdict[i] in d.explain(i)
    assert d.summary().splitlines() == [d.explain(i) for i in range(4)]


def test_history_fields(note):
    spec, h = note
    r, t, layers = 4, spec.steps // spec.log_every, spec.max_depth + 1
    assert h.step.tolist() == list(range(0, spec.steps, spec.log_every))
    for f in ("loss", "grad_norm", "update_norm", "loss_scale", "nonfinite_grads", "absorbed"):
        assert getattr(h, f).shape == (r, t), f
    assert h.layer_grad_rms.shape == (r, t, layers)
    assert h.final_accuracy.shape == (r,) and np.isnan(h.final_accuracy).all()  # regression
    assert isinstance(h.grad_census, Census) and h.grad_census.zero.shape == (r, t)
    n_params = sum(
        x.size
        for x in jax.tree.leaves(
            _init_params(spec, jax.random.key(0), jax.tree.map(lambda a: a[0], h.runs), jnp.float32)
        )
    )
    np.testing.assert_array_equal(sum(h.grad_census), n_params)
    assert (h.loss_scale == 1).all()
    # the exploding run: non-finite gradients counted in every window after the blow-up
    assert h.nonfinite_grads[0, 1:].min() == spec.log_every and h.absorbed.sum() == 0
    assert (h.nonfinite_grads[1:] == 0).all() and (h.first_nonfinite[1:] == -1).all()
    assert h.final_loss[3] < h.loss[3, 0] / 2


def test_fixes_keep_the_exploding_run_finite():
    """Clipping (with skipping) keeps W = 1.5 I finite where plain SGD with momentum hits NaN."""
    task = teacher_student(jax.random.key(0), **NOTE_TASK)
    spec = TrainSpec(task, **{**NOTE_SPEC, "steps": 50}, clip_norm=1.0, max_consecutive_skips=3)
    h = train(spec, make_runs(spec, **NOTE_RUNS, product=False))
    assert (np.asarray(h.first_nonfinite) == -1).all()
    assert np.isfinite(np.asarray(h.loss)).all()
    # every update is clipped to norm <= 1 (the momentum trace stays bounded by it too)
    assert float(np.max(h.update_norm)) <= 1.0 * 0.005 / (1 - 0.9) * (1 + 1e-5)
    assert float(h.loss[0, -1]) < float(h.loss[0, 0])  # and the loss goes down


# ------------------------------------------------------------------------- one compilation


SMALL_SPEC = dict(max_depth=4, width=8, steps=12, log_every=3, optimizer="sgd")


def _small(seed=0):
    task = teacher_student(jax.random.key(seed), n=32, in_dim=4, out_dim=2)
    return TrainSpec(task, **SMALL_SPEC, activation=("relu", "tanh"), init="he_normal")


def test_64_configurations_compile_once():
    spec = _small()
    runs = make_runs(
        spec,
        depth=[1, 2, 3, 4],
        activation=["relu", "tanh"],
        lr=[0.01, 0.1],
        scale=[0.5, 1.0],
        seed=[0, 1],
    )
    assert runs.depth.shape == (64,)
    with count_traces() as c:
        h = train(spec, runs)
    assert h.loss.shape == (64, 4) and c.traces("_train_jit") == 1
    # new values of every data axis and a new data set of the same shapes: no recompilation
    runs2 = runs._replace(lr=runs.lr * 2, seed=runs.seed + 7, depth=5 - runs.depth)
    with count_traces() as c:
        h2 = train(_small(seed=1), runs2)
    assert c.traces("_train_jit") == 0
    assert not np.allclose(h.loss, h2.loss)


def test_matches_a_hand_written_loop():
    """Run 5 of a vmapped batch equals plain Python SGD on mlp_apply (no vmap, no scan)."""
    spec = _small()
    runs = make_runs(
        spec,
        depth=[1, 2, 3, 4],
        activation=["relu", "tanh"],
        lr=[0.01, 0.1],
        scale=[0.5, 1.0],
        seed=[0, 1],
    )
    h = train(spec, runs)
    i = 45
    run = jax.tree.map(lambda a: a[i], runs)
    params = _init_params(spec, _init_key(int(run.seed)), run, jnp.float32)
    act = spec.activation[int(run.activation)]
    x, y = spec.task.x, spec.task.y

    def loss_fn(p):
        return 0.5 * jnp.mean((mlp_apply(p, x, activation=act, depth=int(run.depth)) - y) ** 2)

    losses, norms = [], []
    for _ in range(spec.steps):
        loss, g = jax.value_and_grad(loss_fn)(params)
        losses.append(float(loss))
        norms.append(float(optax.tree.norm(g)))
        params = jax.tree.map(lambda p, g: p - run.lr * g, params, g)
    k = spec.log_every
    np.testing.assert_allclose(h.loss[i], losses[::k], rtol=2e-5)
    np.testing.assert_allclose(h.grad_norm[i], norms[::k], rtol=2e-5)
    np.testing.assert_allclose(h.final_loss[i], float(loss_fn(params)), rtol=2e-5)


# ------------------------------------------------------------------ mixed precision, scaling


def _tiny_targets(runs, **kw):
    """Targets of RMS 1e-3 and a student whose output starts that small: float16 gradients
    (about 1e-3 / 256 at the output, shrinking by ~0.5 per layer) underflow without scaling."""
    task = teacher_student(jax.random.key(0), n=64, in_dim=16, teacher_depth=1, target_scale=1e-3)
    spec = TrainSpec(
        task,
        max_depth=8,
        width=32,
        steps=100,
        log_every=10,
        optimizer="adam",
        dtype="float16",
        master_dtype="float32",
        **kw,
    )
    return train(spec, make_runs(spec, **runs, lr=1e-3, product=False))


def test_float16_gradients_underflow_without_loss_scaling():
    """Also: a run whose scaled gradient overflows makes the scaler back off (run 2)."""
    plain = _tiny_targets(dict(scale=0.36, seed=[0, 1]))
    rule = DynamicLossScale(initial_scale=2.0**15, period=20, min_scale=2.0**-4)
    scaled = _tiny_targets(dict(scale=[0.36, 0.36, 2.0], seed=[0, 1, 0]), loss_scale=rule)
    plain, scaled = (jax.tree.map(np.asarray, h) for h in (plain, scaled))
    zeros = lambda h: h.grad_census.zero / sum(h.grad_census)
    assert zeros(plain)[:, 0].min() > 0.9  # most entries are exactly 0 from the first step
    assert zeros(scaled)[:2, 0].max() < 0.2  # only relu's structural zeros remain
    # seed-specific: seeds 0..7 give plain / scaled final loss 1.5..3.0 (seeds 0, 1: 1.8, 2.1)
    assert (scaled.final_loss[:2] < plain.final_loss / 1.5).all()
    # the scale grows every 20 finite steps (no overflow here): 2**15 * 2**4 at step 90
    np.testing.assert_array_equal(scaled.loss_scale[:2, -1], 2.0**19)
    assert (scaled.first_nonfinite == -1).all() and (scaled.nonfinite_grads[:2] == 0).all()
    # run 2: weights 2x He give a gradient ~2**9 times larger; times 2**15 it overflows float16.
    # Those steps are skipped (absorbed), the scale halves each time until the gradient fits.
    assert scaled.loss_scale[2, 0] == 2.0**15 and scaled.loss_scale[2, -1] < 2.0**12
    assert scaled.absorbed[2].sum() == scaled.nonfinite_grads[2].sum() > 0


def test_classification_trains_in_bfloat16_with_minibatches_and_a_custom_optimizer():
    task = teacher_classification(jax.random.key(3), n=256, n_classes=3)
    spec = TrainSpec(
        task,
        max_depth=3,
        width=32,
        steps=60,
        log_every=20,
        batch_size=64,
        dtype="bfloat16",
        master_dtype="float32",
        optimizer=lambda lr: optax.chain(optax.scale_by_adam(), optax.scale(-lr)),
    )
    h = train(spec, make_runs(spec, lr=3e-3))
    assert float(h.final_loss[0]) < 0.6 * float(np.log(3))
    assert diagnose(h).verdict == ("healthy",)
    n_params = (8 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 3 + 3)  # in_dim 8
    np.testing.assert_array_equal(np.asarray(sum(h.grad_census)), n_params)


# ------------------------------------------------------------------------------ diagnose


def _history(loss, grad=None, layers=None, first=-1):
    loss = np.atleast_2d(np.asarray(loss, float))
    r, t = loss.shape
    grad = np.ones_like(loss) if grad is None else np.atleast_2d(np.asarray(grad, float))
    layers = np.ones((r, t, 3)) if layers is None else layers
    z = np.zeros((r, t))
    return History(
        np.arange(t) * 10,
        loss,
        grad,
        z,
        layers,
        Census(*(np.zeros((r, t), np.int32),) * 5),
        z + 1,
        z,
        z,
        np.full(r, first),
        loss[:, -1],
        np.full(r, np.nan),
        runs=None,
    )


def test_diagnose_rules_one_by_one():
    flat = np.full(20, 1.0)
    falling = np.geomspace(1, 1e-3, 20)
    tiny_first = np.ones((1, 20, 3))
    tiny_first[..., 0] = 1e-6
    assert diagnose(_history(falling)).verdict == ("healthy",)
    assert diagnose(_history(falling, first=7)).verdict == ("exploding",)
    assert diagnose(_history(np.r_[1.0, 20.0, flat[2:]])).verdict == ("exploding",)  # loss x20
    assert diagnose(_history(falling, grad=np.geomspace(1, 1e4, 20))).verdict == ("exploding",)
    assert diagnose(_history(falling, grad=np.geomspace(1, 1e2, 20))).verdict == ("healthy",)
    assert diagnose(_history(flat, layers=tiny_first)).verdict == ("vanishing",)
    assert diagnose(_history(flat, grad=np.full(20, 1e-6))).verdict == ("vanishing",)
    d = diagnose(_history(flat))  # flat but the gradient is fine: not vanishing (lr too small)
    assert d.verdict == ("healthy",) and d.plateau[0]
    # thresholds are parameters
    assert diagnose(_history(flat, layers=tiny_first), vanishing_ratio=1e-7).verdict == ("healthy",)
    assert diagnose(
        _history(falling, grad=np.geomspace(1, 1e2, 20)), explode_growth=10
    ).verdict == ("exploding",)
    late = np.r_[np.geomspace(1, 0.5, 8), np.full(12, 0.5)]  # plateau covers 13/20 < 0.75
    assert not diagnose(_history(late, layers=tiny_first)).plateau[0]
    assert diagnose(_history(late, layers=tiny_first), plateau_fraction=0.6).verdict == (
        "vanishing",
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda h: h._replace(loss=h.loss[0]), "history.loss"),
        (lambda h: h._replace(grad_norm=h.grad_norm[:, :3]), "history.grad_norm"),
        (lambda h: h._replace(step=h.step[:-1]), "history.step"),
        (lambda h: h._replace(layer_grad_rms=h.layer_grad_rms[..., 0]), "layer_grad_rms"),
        (lambda h: h._replace(first_nonfinite=np.zeros(5)), "first_nonfinite"),
    ],
)
def test_diagnose_refuses_bad_history(bad, match):
    h = _history(np.ones((2, 6)))
    with pytest.raises(ValueError, match=match):
        diagnose(bad(h))


def test_diagnose_refuses_bad_thresholds():
    h = _history(np.ones(4))
    with pytest.raises(TypeError, match="History"):
        diagnose({"loss": np.ones((1, 3))})
    for kw in (
        {"explode_growth": 1.0},
        {"plateau_tol": 0},
        {"plateau_fraction": 1.5},
        {"vanishing_ratio": -1},
        {"loss_growth_limit": float("nan")},
    ):
        with pytest.raises(ValueError, match=next(iter(kw))):
            diagnose(h, **kw)


# ---------------------------------------------------------------------------- bad input


def test_bad_input_is_named():
    task = teacher_student(jax.random.key(0), n=16, in_dim=4, out_dim=2)
    spec = TrainSpec(task, max_depth=3, width=4)
    with pytest.raises(ValueError, match=r"lr must be > 0, got -0\.1"):
        make_runs(spec, lr=-0.1)
    with pytest.raises(ValueError, match=r"lr must be > 0, got 0\.0"):
        make_runs(spec, lr=[0.1, 0.0])
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'.*adam"):
        TrainSpec(task, max_depth=3, optimizer="adamm")
    with pytest.raises(TypeError, match="optimizer"):
        TrainSpec(task, max_depth=3, optimizer=3)
    with pytest.raises(ValueError, match="period must be >= 1, got 0"):
        TrainSpec(task, max_depth=3, loss_scale=DynamicLossScale(period=0))
    with pytest.raises(ValueError, match="depth=4 exceeds"):
        make_runs(spec, depth=4)
    with pytest.raises(ValueError, match="activation 'tanh' is not among"):
        make_runs(spec, activation="tanh")
    with pytest.raises(ValueError, match="unknown activation"):
        TrainSpec(task, max_depth=3, activation=("swish",))
    with pytest.raises(ValueError, match="multiple of log_every"):
        TrainSpec(task, max_depth=3, steps=10, log_every=3)
    with pytest.raises(ValueError, match="batch_size=17 exceeds"):
        TrainSpec(task, max_depth=3, batch_size=17)
    with pytest.raises(TypeError, match="master_dtype"):
        TrainSpec(task, max_depth=3, master_dtype="int32")
    with pytest.raises(ValueError, match="clip_norm"):
        TrainSpec(task, max_depth=3, clip_norm=0)
    with pytest.raises(ValueError, match="one length"):
        make_runs(spec, lr=[0.1, 0.2], seed=[0, 1, 2], product=False)
    with pytest.raises(ValueError, match="every field of runs"):
        train(spec, Runs(*(jnp.zeros(2),) * 5, jnp.zeros(3)))
    with pytest.raises(TypeError, match="runs must be a Runs"):
        train(spec, {"lr": 0.1})
    with pytest.raises(ValueError, match="y must have shape"):
        Task(task.x, task.y[:, 0], "regression", 2)
    with pytest.raises(TypeError, match="labels y must be integers"):
        Task(task.x, task.y[:, 0], "classification", 2)
    with pytest.raises(ValueError, match="kind must be"):
        Task(task.x, task.y, "ranking", 2)
    assert "adam" in optimizer_names() and "sgd" in optimizer_names()


# ------------------------------------------------------------------------ trainable depth

# Exactly the docstring example of trainability_grid, so that the doctest reuses the compilation.
TD_TASK = dict(n=128, n_classes=2)
TD_GRID = dict(
    depth=[2, 64], sigma_w2=[0.5, 1.76, 8.0], width=16, steps=100, batch_size=16, lr=0.01
)


def _td_spec(task):
    """The TrainSpec trainability_grid builds for TD_GRID (sigma_b^2 = 0.05)."""
    return TrainSpec(
        task,
        max_depth=64,
        width=16,
        activation="tanh",
        init="gaussian",
        optimizer="adam",
        steps=100,
        log_every=100,
        batch_size=16,
        bias_std=float(np.sqrt(0.05)),
    )


@pytest.fixture(scope="module")
def grid():
    task = teacher_classification(jax.random.key(0), **TD_TASK)
    with count_traces() as c:
        g = trainability_grid(task, **TD_GRID)
    return task, g, c.traces("_train_jit")


def test_trainability_grid_shallow_trains_past_12_xi_c_does_not(grid):
    task, g, compilations = grid
    assert compilations <= 1  # one kernel for the whole grid (0 if the doctest compiled it)
    assert g.accuracy.shape == g.score.shape == g.trainable.shape == (2, 3)
    assert g.history.final_accuracy.shape == (6,) and g.lr.tolist() == [0.01, 0.01]
    counts = np.bincount(np.asarray(task.y))
    assert g.baseline == counts.max() / task.n
    n_right = g.accuracy * task.n  # accuracies are counts of examples
    np.testing.assert_allclose(n_right, np.round(n_right), atol=1e-4)
    np.testing.assert_allclose(g.score, (g.accuracy - g.baseline) / (1 - g.baseline))
    assert np.array_equal(g.trainable, g.score >= g.threshold)
    # depth 2: every phase fits the teacher's labels well above the majority class (scores
    # 0.60, 0.88, 0.88 for seed 0)
    assert (g.score[0] > 0.5).all()
    # depth 64, ordered and chaotic: past 12 xi_c (xi_c = 1.19 at sigma_w^2 = 0.5 and 4.7 at 8.0,
    # sigma_b^2 = 0.05; stabkit.xi_c), only the class frequencies are left
    assert (g.score[1, [0, 2]] <= 0.1).all()
    # the boundary falls between the two depths, none reached the end of the grid
    assert ((g.boundary > 2) & (g.boundary < 64)).all() and not g.censored.any()


def test_trainability_grid_initialises_the_mean_field_way_and_reports_its_accuracy(grid):
    """W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2); final_accuracy is the net's accuracy."""
    task, g, _ = grid
    spec = _td_spec(task)
    runs = g.history.runs
    for i in (1, 5):  # sigma_w^2 = 1.76 at depth 2, 8.0 at depth 64
        row = Runs(*(v[i] for v in runs))
        p = _init_params(spec, _init_key(int(row.seed)), row, jnp.float32)
        sw2 = float(row.scale) ** 2
        w, b = np.asarray(p.w_hidden, np.float64), np.asarray(p.b_hidden, np.float64)
        # 4 standard errors of a sample variance (2 / n relative variance)
        assert abs(w.var() * 16 / sw2 - 1) < 4 * np.sqrt(2 / w.size)
        assert abs(b.var() / 0.05 - 1) < 4 * np.sqrt(2 / b.size)
        assert abs(np.asarray(p.w_in).var() * task.in_dim / sw2 - 1) < 4 * np.sqrt(2 / 128)
    # a learning rate too small to move a float32 weight: final = initial parameters, and the
    # same spec and run count reuse the grid's compilation
    with count_traces() as c:
        h = train(spec, runs._replace(lr=jnp.full_like(runs.lr, 1e-30)))
    assert c.traces("_train_jit") == 0
    for i in range(6):
        row = Runs(*(v[i] for v in runs))
        p = _init_params(spec, _init_key(int(row.seed)), row, jnp.float32)
        out = mlp_apply(p, task.x, activation="tanh", depth=int(row.depth))
        acc = float(jnp.mean(jnp.argmax(out, axis=1) == task.y))
        assert abs(float(h.final_accuracy[i]) - acc) <= 1 / task.n, i


def test_boundary_interpolates_in_log_depth():
    depths = np.array([4, 16, 64])
    score = np.array(
        [
            [1.0, 0.9, 0.2, 1.0],
            [0.9, 0.0, 0.9, 0.0],
            [0.8, 0.9, 0.9, 0.9],  # a pass after a failure does not extend the boundary
        ]
    )
    b, censored = _boundary(depths, score, 0.5)
    np.testing.assert_allclose(b, [64, np.exp(np.log(4) + 0.4 / 0.9 * np.log(4)), 0, 8])
    assert censored.tolist() == [True, False, False, False]


def test_trainability_grid_bad_input(grid):
    cls = grid[0]
    reg = Task(np.ones((4, 2), np.float32), np.ones((4, 1), np.float32), "regression", 1)
    ok = dict(depth=[1, 2], sigma_w2=[1.0, 2.0])
    with pytest.raises(TypeError, match="task must be a Task"):
        trainability_grid("digits", **ok)
    with pytest.raises(ValueError, match="classification task, got 'regression'"):
        trainability_grid(reg, **ok)
    for kw, err, match in (
        ({"depth": [4, 2]}, ValueError, r"depth must be strictly increasing, got \[4, 2\]"),
        ({"depth": []}, ValueError, "depth must be a non-empty"),
        ({"depth": [0, 2]}, ValueError, "depth must be >= 1, got 0"),
        ({"depth": [1.5]}, TypeError, "depth must be an int"),
        ({"sigma_w2": [0.0, 1.0]}, ValueError, "sigma_w2 must be > 0"),
        ({"sigma_w2": [[1.0, 2.0]]}, ValueError, "1-D"),
        ({"sigma_b2": -0.1}, ValueError, r"sigma_b2 must be >= 0, got -0\.1"),
        ({"threshold": 0.0}, ValueError, r"threshold must be in \(0, 1\]"),
        ({"threshold": 1.5}, ValueError, "threshold"),
        ({"seeds": 0}, ValueError, "seeds must be >= 1"),
        ({"lr": lambda d: 1.5 - d}, ValueError, r"lr must be > 0, got -0\.5 at depth 2"),
        ({"lr": "fast"}, TypeError, "lr must be a real number"),
        ({"activation": "swish"}, ValueError, "unknown activation"),
    ):
        with pytest.raises(err, match=match):
            trainability_grid(cls, **{**ok, **kw})
    with pytest.raises(ValueError, match=r"bias_std must be >= 0, got -1\.0"):
        TrainSpec(cls, max_depth=2, bias_std=-1)
