"""Issue 11: training's and the fixes' public boundaries refuse bad input before anything compiles.

Regression tests for each finding (clamped run indices, labels out of range or beyond int32,
seeds/scales/learning rates that overflow, float64 that was silently float32, an optimizer
factory that failed deep inside ``train``, sizes that reached XLA unbounded), and hypothesis
property tests per public family: random bad arguments raise ``ValueError``/``TypeError`` and
nothing else, and nothing is compiled on the way (validation is host-side).
"""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit.fixes import (
    DynamicLossScale,
    all_finite,
    loss_scaling,
    safe_clip_by_global_norm,
    safe_global_norm,
    skip_nonfinite,
)
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
    teacher_classification,
    teacher_student,
    train,
    trainability_grid,
)
from stabkit.training.loop import _init_key, _init_params
from stabkit.training.runs import _FIX_FIELDS

# ------------------------------------------------------------------------ compilation counter


@contextlib.contextmanager
def no_compilation():
    """Fails if XLA compiles anything (or the training kernel is traced) inside the block."""
    with count_traces() as c:
        yield
    assert c.compiles() == 0, f"validation compiled something before refusing: {c}"
    assert c.traces("_train_jit") == 0


def refused(fn, *args, **kwargs):
    """Call ``fn``; return the ValueError/TypeError it raised (None if it returned). Any other
    exception fails the test; a refusal must not have compiled anything."""
    with count_traces() as c:
        try:
            fn(*args, **kwargs)
        except (ValueError, TypeError) as err:
            assert c.compiles() == 0, f"compiled before refusing: {err}"
            return err
    return None


# ----------------------------------------------------------------------------------- fixtures

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 4)).astype(np.float32)
Y = RNG.standard_normal((16, 2)).astype(np.float32)
LABELS = np.arange(16) % 3
SPEC_KW = dict(max_depth=2, width=4, steps=4, log_every=2)


@pytest.fixture(scope="module")
def spec():
    return TrainSpec(Task(X, Y, "regression", 2), **SPEC_KW, activation=("relu", "tanh"))


@pytest.fixture(scope="module")
def runs(spec):
    return make_runs(spec, depth=[1, 2], lr=0.1)


# ------------------------------------------------------------------ regression: silent clamps


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("activation", [5, 0], r"runs\.activation\[0\] index 5 is out of range for 2 activations"),
        ("activation", [0, -1], r"runs\.activation\[1\] index -1"),
        ("init", [0, 1], r"runs\.init\[1\] index 1 is out of range for 1 init"),
        ("depth", [7, 1], r"runs\.depth\[0\]=7 is out of range: valid 1\.\.max_depth=2"),
        ("depth", [0, 1], r"runs\.depth\[0\]=0"),
        ("seed", np.array([0, 2**40]), r"runs\.seed\[1\]=1099511627776 .* 0\.\.2147483647"),
        ("seed", [-1, 0], r"runs\.seed\[0\]=-1"),
        ("lr", [0.1, np.nan], r"runs\.lr\[1\] must be finite, got nan"),
        ("lr", [0.1, 0.0], r"runs\.lr\[1\] must be > 0"),
        ("lr", np.array([0.1, 1e300]), r"runs\.lr\[1\]=1e\+300 is out of range"),
        ("scale", np.array([1.0, 1e300]), r"runs\.scale\[1\]=1e\+300 is too large"),
        ("scale", [1.0, np.inf], r"runs\.scale\[1\] must be finite, got inf"),
        ("depth", [[1], [2]], "every field of runs must have one shape"),
        ("depth", [1.0, 2.0], TypeError),
        ("activation", [True, False], TypeError),
        ("lr", ["a", "b"], TypeError),
    ],
)
def test_train_refuses_bad_runs_before_compiling(spec, runs, field, value, match):
    bad = runs._replace(**{field: value})
    err = (ValueError, match) if isinstance(match, str) else (match, None)
    with no_compilation(), pytest.raises(err[0], match=err[1]):
        train(spec, bad)


def test_empty_and_traced_runs(spec, runs):
    with no_compilation(), pytest.raises(ValueError, match="runs is empty"):
        train(spec, Runs(*(np.zeros(0, np.int32),) * 6))
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda lr: train(spec, runs._replace(lr=lr)))(runs.lr)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"seed": 2**40}, ValueError, r"seed=1099511627776 is out of range: .* 0\.\.2147483647"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"scale": 1e300}, ValueError, r"scale=1e\+300 is too large: .* 3\.40282e\+38.* float32"),
        ({"scale": np.nan}, ValueError, "scale must be finite, got nan"),
        ({"scale": 1e-50}, ValueError, "scale=1e-50 is below float32's smallest normal"),
        ({"lr": np.inf}, ValueError, "lr must be finite"),
        ({"lr": 1e-50}, ValueError, r"lr=1e-50 is out of range"),
        ({"lr": -1.0}, ValueError, "lr must be > 0"),
        ({"depth": []}, ValueError, "depth must hold at least one value"),
        ({"depth": [[1, 2], [1]]}, ValueError, "depth must be a value or a 1-D list"),
        ({"depth": np.ones((2, 2), int)}, ValueError, r"depth .* shape \(2, 2\)"),
        ({"depth": 2.5}, TypeError, "depth must be an int"),
        ({"activation": 2}, TypeError, r"activation takes names from the spec's activation"),
        ({"init": "gaussian"}, ValueError, r"init 'gaussian' is not among the spec's init"),
        ({"product": "no"}, TypeError, "product must be True or False"),
        ({"product": 1}, TypeError, "product"),
    ],
)
def test_make_runs_refuses(spec, kw, err, match):
    with no_compilation(), pytest.raises(err, match=match):
        make_runs(spec, **kw)


def test_make_runs_accepts_numpy_scalars_and_keeps_valid_values(spec):
    runs = make_runs(
        spec, depth=np.int64(2), scale=np.float32(-0.5), lr=np.float64(0.1), seed=np.int32(3)
    )
    assert runs.depth.tolist() == [2] and runs.seed.tolist() == [3]
    assert runs.scale.tolist() == [-0.5] and runs.scale.dtype == jnp.float32
    # the largest seed and a scale of 0 are valid
    assert make_runs(spec, seed=2**31 - 1, scale=0.0).seed.tolist() == [2**31 - 1]


def test_scale_bound_is_the_compute_dtypes_largest_value():
    task = Task(X, Y, "regression", 2)
    half = TrainSpec(task, **SPEC_KW, dtype="float16", master_dtype="float32")
    with pytest.raises(ValueError, match=r"scale=100000\.0 is too large: .* 65504.*float16"):
        make_runs(half, scale=1e5)
    assert make_runs(half, scale=6e4).scale.tolist() == [6e4]
    with pytest.raises(
        ValueError, match=r"bias_std=100000\.0 is too large: at most 65504.*float16"
    ):
        TrainSpec(task, **SPEC_KW, dtype="float16", bias_std=1e5)


# --------------------------------------------------------------------------- regression: Task


@pytest.mark.parametrize(
    "x, y, kind, out_dim, err, match",
    [
        (X, np.r_[5, [0] * 15], "classification", 3, ValueError, r"\[0, out_dim=3\), got 5"),
        (X, np.r_[2**40, [0] * 15].astype(np.int64), "classification", 3, ValueError, "2**40"),
        (X, -LABELS, "classification", 3, ValueError, "got -1 at index 1"),
        (X, LABELS.astype(float), "classification", 3, TypeError, "labels y must be integers"),
        (X, LABELS > 0, "classification", 3, TypeError, "labels y must be integers"),
        (X, LABELS[:4], "classification", 3, ValueError, r"y must have shape \(16,\)"),
        (X, LABELS, "classification", 1, ValueError, "out_dim must be >= 2"),
        (X, LABELS, "classification", 2.0, TypeError, "out_dim must be an int"),
        (X[:0], LABELS[:0], "classification", 3, ValueError, "non-empty"),
        (X[:, :0], LABELS, "classification", 3, ValueError, "non-empty"),
        (X[0], LABELS, "classification", 3, ValueError, r"\(n, in_dim\)"),
        (
            np.where(X == X[1, 1], np.nan, X),
            LABELS,
            "classification",
            3,
            ValueError,
            r"1 non-finite inputs \(the first, nan, at index \(1, 1\)\)",
        ),
        (X.astype(np.float64) * 1e300, Y, "regression", 2, ValueError, "does not fit in float32"),
        (X, np.full_like(Y, np.inf), "regression", 2, ValueError, "non-finite targets"),
        (X, Y.astype(np.int32), "regression", 2, TypeError, "targets y must be floating"),
        (X.astype(np.int32), Y, "regression", 2, TypeError, "inputs x must be floating"),
        ("abc", Y, "regression", 2, TypeError, "x must be an array of real numbers"),
        (X, Y, "ranking", 2, ValueError, "kind must be"),
        (X, Y, ["regression"], 2, ValueError, "kind must be"),
    ],
)
def test_task_refuses(x, y, kind, out_dim, err, match):
    match = match.replace("2**40", str(2**40))
    with no_compilation(), pytest.raises(err, match=match):
        Task(x, y, kind, out_dim)


def test_task_keeps_valid_labels_as_int32():
    task = Task(X, LABELS.astype(np.int64), "classification", 3)
    assert task.y.dtype == jnp.int32 and task.y.tolist() == LABELS.tolist()
    assert Task(X, LABELS.astype(np.uint8), "classification", 3).y.dtype == jnp.int32


def test_teacher_tasks_refuse_bad_sizes_and_keys():
    key = jax.random.key(0)
    with no_compilation():
        with pytest.raises(ValueError, match=r"n=1000000000000 needs about .*TiB"):
            teacher_student(key, n=10**12)
        with pytest.raises(ValueError, match=r"teacher_depth=1000000000 needs about"):
            teacher_classification(key, teacher_depth=10**9)
        with pytest.raises(ValueError, match="teacher_width must be >= 1"):
            teacher_student(key, teacher_width=0)
        with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
            teacher_student("abc")
    with pytest.raises(ValueError, match=r"target_scale=1e\+300 overflows float32"):
        teacher_student(key, n=8, target_scale=1e300)
    with pytest.raises(ValueError, match="the same for all n=1 examples"):
        teacher_student(key, n=1)


# ----------------------------------------------------------------------- regression: TrainSpec


def test_optimizer_factory_is_checked_at_construction():
    task = Task(X, Y, "regression", 2)
    with no_compilation():
        with pytest.raises(TypeError, match=r"optimizer .* returned int 5"):
            TrainSpec(task, **SPEC_KW, optimizer=lambda lr: 5)
        with pytest.raises(TypeError, match=r"optimizer\(.*\) failed on a traced .* ZeroDivision"):
            TrainSpec(task, **SPEC_KW, optimizer=lambda lr: 1 / 0)
        with pytest.raises(TypeError, match=r"optimizer\(lr\) returned a GradientTransformation"):
            TrainSpec(task, **SPEC_KW, optimizer=lambda lr: optax.GradientTransformation(1, 2))
        with pytest.raises(TypeError, match=r"optimizer\(.*\) failed .* ConcretizationTypeError"):
            TrainSpec(task, **SPEC_KW, optimizer=lambda lr: optax.sgd(float(lr)))


def test_activation_callable_is_checked_at_construction():
    task = Task(X, Y, "regression", 2)
    with no_compilation():
        # a shape is a ValueError, a dtype a TypeError, as for every activation callable
        with pytest.raises(ValueError, match=r"activation\[1\] .*must act elementwise.*\(1, 3\)"):
            TrainSpec(task, **SPEC_KW, activation=("relu", lambda z: z[:1]))
        with pytest.raises(
            TypeError, match=r"activation\[0\] .*float32 array it returned dtype float16"
        ):
            TrainSpec(task, **SPEC_KW, activation=(lambda z: z.astype(jnp.float16),))
        with pytest.raises(TypeError, match="activation must be a name, a callable or a list"):
            TrainSpec(task, **SPEC_KW, activation=5)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"max_depth": 10**12}, r"max_depth=1000000000000 needs about .* for one run"),
        ({"width": 10**8}, r"width=100000000 needs about"),
        # 2**31 - 1 records of 1,017 values: about 8 TiB
        ({"steps": 2**31 - 1, "log_every": 1, "max_depth": 1000, "width": 1}, r"steps=2147483647 "),
        (
            {"steps": 2**31, "log_every": 2**31},
            r"steps=2147483648 is too large: at most 2147483647",
        ),
        ({"max_consecutive_skips": 2**40}, "max_consecutive_skips=1099511627776 is too large"),
    ],
)
def test_spec_sizes_are_bounded(kw, match):
    with no_compilation(), pytest.raises(ValueError, match=match):
        TrainSpec(Task(X, Y, "regression", 2), **{**SPEC_KW, **kw})


def test_run_count_is_bounded(spec):
    lots = np.linspace(0.1, 1, 3000)
    with no_compilation(), pytest.raises(ValueError, match=r"runs=27000000000 needs about"):
        make_runs(spec, lr=lots, scale=lots, seed=np.arange(3000))
    task = Task(X, LABELS, "classification", 3)
    with no_compilation(), pytest.raises(ValueError, match=r"seeds=1000000000000 needs about"):
        trainability_grid(task, depth=[1], sigma_w2=[1.0], batch_size=4, seeds=10**12)


# ------------------------------------------------------------------------ regression: float64


def test_float64_spec_trains_in_float64_with_x64_off():
    assert not jax.config.jax_enable_x64
    task = Task(X, Y, "regression", 2)
    s64 = TrainSpec(task, **SPEC_KW, dtype="float64")
    s32 = TrainSpec(task, **SPEC_KW)
    assert s64.dtype == jnp.float64
    r = make_runs(s64, lr=0.1)
    h64, h32 = train(s64, r), train(s32, r)
    assert not jax.config.jax_enable_x64  # entered locally, left as it was
    for f in ("loss", "grad_norm", "update_norm", "layer_grad_rms", "final_loss", "loss_scale"):
        assert getattr(h64, f).dtype == np.float64, f
        assert getattr(h32, f).dtype == np.float32, f
    # the first record is the loss of the initial weights: computed in float64 it is the float64
    # reference; the float32 run differs from it by float32 rounding
    with jax.enable_x64(True):
        row = jax.tree.map(lambda a: a[0], r)
        p = _init_params(s64, _init_key(0), row, jnp.float64)
        out = mlp_apply(p, jnp.asarray(X, jnp.float64), activation="relu", depth=2)
        ref = float(0.5 * jnp.mean(jnp.square(out - jnp.asarray(Y, jnp.float64))))
    assert abs(h64.loss[0, 0] - ref) <= 1e-15 * ref
    assert abs(h32.loss[0, 0] - ref) > 1e-12 * ref


def test_float64_loss_scale_is_float64():
    rule = DynamicLossScale(initial_scale=2.0**200, period=1, min_scale=1.0, dtype="float64")
    with pytest.raises(ValueError, match=r"needs JAX's 64-bit mode.*enable_x64"):
        rule.init()
    with jax.enable_x64(True):
        s = rule.adjust(rule.init(), True)
        assert s.scale.dtype == jnp.float64 and float(s.scale) == 2.0**201
    assert not jax.config.jax_enable_x64
    spec = TrainSpec(Task(X, Y, "regression", 2), **SPEC_KW, dtype="float64", loss_scale=rule)
    h = train(spec, make_runs(spec, lr=0.1))
    # 2**200 is beyond float32: the scale really is float64 (and grows every finite step)
    assert h.loss_scale.dtype == np.float64 and h.loss_scale[0].tolist() == [2.0**200, 2.0**202]
    assert not jax.config.jax_enable_x64


def test_explain_index_is_checked():
    t = 3
    one = np.ones((1, t))
    h = History(
        np.arange(t),
        one,
        one,
        one,
        np.ones((1, t, 2)),
        Census(*(np.zeros((1, t), np.int32),) * 5),
        one,
        0 * one,
        0 * one,
        np.full(1, -1),
        np.ones(1),
        np.full(1, np.nan),
        runs=None,
    )
    d = diagnose(h)
    assert d.explain(np.int64(0)).startswith("run 0: ")
    with pytest.raises(ValueError, match="i=1 is out of range for 1 runs"):
        d.explain(1)
    with pytest.raises(ValueError, match="i must be >= 0, got -1"):
        d.explain(-1)
    with pytest.raises(TypeError, match="i must be an int"):
        d.explain(0.0)
    with pytest.raises(ValueError, match=r"first_nonfinite must be >= -1"):
        diagnose(h._replace(first_nonfinite=np.full(1, -2)))
    with pytest.raises(TypeError, match=r"history\.loss must hold real numbers"):
        diagnose(h._replace(loss=np.full((1, t), "a")))


# ---------------------------------------------------------------------------- property tests

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            np.nan,
            -np.inf,
            np.float32(np.nan),
            np.int64(-3),
            np.int64(2**40),
            np.bool_(True),
            10**12,
            2**31,
            -1,
            0,
            1e300,
            1e-300,
            "relu",
            "float64",
            "int32",
            b"x",
            {},
            {"a": 1},
            (),
            [],
            [1, [2]],
            [[1, 2], [3]],
            object(),
            np.zeros((2, 2)),
            np.array(["a"]),
            jnp.float16,
            lambda *a: None,
            jax.random.key(0),
        ]
    ),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
)

PROPERTY = settings(max_examples=60)


def _check(result):
    """A property example either was accepted or refused with ValueError/TypeError."""
    assert result is None or isinstance(result, (ValueError, TypeError))


@PROPERTY
@given(
    field=st.sampled_from(["x", "y", "kind", "out_dim"]),
    kind=st.sampled_from(["regression", "classification"]),
    value=JUNK,
)
def test_property_task(field, kind, value):
    regression = kind == "regression"
    kw = dict(x=X, y=Y if regression else LABELS, kind=kind, out_dim=2 if regression else 3)
    kw[field] = value
    _check(refused(Task, **kw))


SPEC_FIELDS = {
    "max_depth": 2,
    "width": 4,
    "activation": ("relu",),
    "init": ("he_normal",),
    "optimizer": "sgd",
    "steps": 4,
    "log_every": 2,
    "batch_size": None,
    "dtype": "float32",
    "master_dtype": None,
    "clip_norm": None,
    "max_consecutive_skips": None,
    "loss_scale": None,
    "bias_std": 0.0,
    "final_norm": None,
    "schedule": "constant",
    "rounding": "nearest",
}


@PROPERTY
@given(field=st.sampled_from(["task", *SPEC_FIELDS]), value=JUNK)
def test_property_train_spec(field, value):
    kw = {"task": Task(X, Y, "regression", 2), **SPEC_FIELDS, field: value}
    _check(refused(TrainSpec, **kw))


RUN_ARGS = [
    "depth",
    "scale",
    "activation",
    "init",
    "lr",
    "seed",
    "warmup",
    "z_loss",
    "weight_decay",
    "softcap",
    "product",
]


@PROPERTY
@given(field=st.sampled_from(RUN_ARGS), value=JUNK)
def test_property_make_runs(spec, field, value):
    _check(refused(make_runs, spec, **{field: value}))


def _bad_field(field):
    """Values of one Runs field that are certainly invalid for the spec fixture (R = 2)."""
    ints = {
        "depth": st.one_of(st.integers(max_value=0), st.integers(min_value=3)),
        "activation": st.one_of(st.integers(max_value=-1), st.integers(min_value=2)),
        "init": st.one_of(st.integers(max_value=-1), st.integers(min_value=1)),
        "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)),
        # the spec fixture trains 4 steps: a warm-up of 5 or more is longer than the run
        "warmup": st.one_of(st.integers(max_value=-1), st.integers(min_value=5)),
    }
    floats = {
        "lr": st.one_of(
            st.floats(max_value=0.0), st.floats(min_value=3.5e38), st.just(np.nan), st.just(1e-45)
        ),
        "scale": st.one_of(
            st.floats(min_value=3.5e38), st.floats(max_value=-3.5e38), st.just(np.nan)
        ),
        # a regression spec: a z-loss is refused at any nonzero value
        "z_loss": st.one_of(
            st.floats(max_value=-1e-30), st.floats(min_value=1e-30), st.just(np.nan)
        ),
        "weight_decay": st.one_of(
            st.floats(max_value=-1e-30), st.floats(min_value=3.5e38), st.just(np.nan)
        ),
        # an MLP spec: a soft cap is refused at any nonzero value
        "softcap": st.one_of(
            st.floats(max_value=-1e-30), st.floats(min_value=1e-30), st.just(np.nan)
        ),
    }
    if field in ints:
        bad = ints[field].filter(lambda v: abs(v) < 2**63).map(lambda v: np.array([1, v]))
    else:
        bad = floats[field].map(lambda v: np.array([0.5, v]))
    shapes = st.sampled_from([np.zeros(3), np.zeros((2, 1)), np.array(["a", "b"]), np.zeros(0)])
    # JUNK holds no valid field: no list or array of two numbers
    junk = JUNK.filter(lambda v: not (isinstance(v, list) and len(v) == 2))
    if field in _FIX_FIELDS:  # None is valid there: "0 for every run"
        junk = junk.filter(lambda v: v is not None)
    return st.one_of(bad, shapes, junk)


@PROPERTY
@given(data=st.data(), field=st.sampled_from(Runs._fields))
def test_property_train(spec, runs, data, field):
    value = data.draw(_bad_field(field))
    err = refused(train, spec, runs._replace(**{field: value}))
    assert isinstance(err, (ValueError, TypeError)), (field, value)


@PROPERTY
@given(field=st.sampled_from(["history", *History._fields[:-1]]), value=JUNK)
def test_property_diagnose_history(field, value):
    t = 6
    good = History(
        np.arange(t),
        np.ones((1, t)),
        np.ones((1, t)),
        np.ones((1, t)),
        np.ones((1, t, 3)),
        Census(*(np.zeros((1, t), np.int32),) * 5),
        np.ones((1, t)),
        np.zeros((1, t)),
        np.zeros((1, t)),
        np.full(1, -1),
        np.ones(1),
        np.full(1, np.nan),
        runs=None,
    )
    history = value if field == "history" else good._replace(**{field: value})
    _check(refused(diagnose, history))


@PROPERTY
@given(
    field=st.sampled_from(
        [
            "explode_growth",
            "loss_growth_limit",
            "plateau_tol",
            "plateau_fraction",
            "vanishing_ratio",
            "vanishing_grad",
        ]
    ),
    value=JUNK,
)
def test_property_diagnose_thresholds(field, value):
    h = History(
        np.arange(4),
        np.ones((1, 4)),
        np.ones((1, 4)),
        np.zeros((1, 4)),
        np.ones((1, 4, 2)),
        Census(*(np.zeros((1, 4), np.int32),) * 5),
        np.ones((1, 4)),
        np.zeros((1, 4)),
        np.zeros((1, 4)),
        np.full(1, -1),
        np.ones(1),
        np.full(1, np.nan),
        runs=None,
    )
    _check(refused(diagnose, h, **{field: value}))


BAD_TREES = st.one_of(
    st.text(min_size=1, max_size=3),
    st.booleans(),
    st.integers(),
    st.sampled_from(
        [
            {"w": "abc"},
            {"w": jnp.ones(2, jnp.int32)},
            [np.arange(3)],
            (object(),),
            {"a": {"b": [1.0, "x"]}},
            np.array(["a"]),
            {"k": jax.random.key(0)},
            lambda: None,
        ]
    ),
)


@PROPERTY
@given(tree=BAD_TREES, which=st.sampled_from(["norm", "finite", "clip", "skip", "scaling"]))
def test_property_fixes_trees(tree, which):
    params = {"w": jnp.ones(2)}
    fns = {
        "norm": lambda: safe_global_norm(tree),
        "finite": lambda: all_finite(tree),
        "clip": lambda: safe_clip_by_global_norm(1.0).update(tree, optax.EmptyState()),
        "skip": lambda: skip_nonfinite(optax.sgd(0.1), 1).update(tree, SKIP_STATE, params),
        "scaling": lambda: loss_scaling(optax.sgd(0.1)).update(tree, SCALING_STATE, params),
    }
    err = refused(fns[which])
    assert isinstance(err, TypeError), err
    assert any(name in str(err) for name in ("tree", "updates")), err


SKIP_STATE = skip_nonfinite(optax.sgd(0.1), 1).init({"w": jnp.ones(2)})
SCALING_STATE = loss_scaling(optax.sgd(0.1)).init({"w": jnp.ones(2)})


@PROPERTY
@given(
    which=st.sampled_from(["clip", "skip_inner", "skip_max", "scaling_inner", "scaling_rule"]),
    value=JUNK,
)
def test_property_fixes_factories(which, value):
    fns = {
        "clip": lambda: safe_clip_by_global_norm(value),
        "skip_inner": lambda: skip_nonfinite(value, 1),
        "skip_max": lambda: skip_nonfinite(optax.sgd(0.1), value),
        "scaling_inner": lambda: loss_scaling(value),
        "scaling_rule": lambda: loss_scaling(optax.sgd(0.1), value),
    }
    _check(refused(fns[which]))


@PROPERTY
@given(
    field=st.sampled_from(["initial_scale", "period", "factor", "min_scale", "dtype"]),
    value=JUNK,
)
def test_property_dynamic_loss_scale(field, value):
    _check(refused(DynamicLossScale, **{field: value}))


@PROPERTY
@given(value=JUNK, which=st.sampled_from(["state", "finite"]))
def test_property_dynamic_loss_scale_adjust(value, which):
    rule = DynamicLossScale()
    if which == "state":
        err = refused(rule.adjust, value, True)
    else:
        err = refused(rule.adjust, RULE_STATE, value)
        if isinstance(value, (bool, np.bool_)):  # the valid ones
            return
    assert isinstance(err, TypeError), (which, value)


RULE_STATE = DynamicLossScale().init()


def test_property_tests_see_compilations():
    """The compile counter the property tests rely on does count (the test could fail)."""
    with count_traces() as c:
        jax.jit(lambda v: v * math.pi + 1.2345)(jnp.ones(7))
    assert c.compiles() > 0 and c.traces("<lambda>") == 1
