"""Bad input at every public boundary: a clear ValueError/TypeError naming the argument.

Two halves:

* ``CASES``: hand-picked bad arguments, one per row, each with the word the message must contain
  (the argument's name). Every row must raise ``ValueError`` or ``TypeError`` (an ``OSError`` for
  paths) *before anything compiles*, and the message must name the argument.
* ``test_random_bad_argument_raises_only_value_or_type_error``: hypothesis puts a value from a pool
  of wrong types and out-of-range numbers into one argument of a public function at a time; the
  call either works (the value happened to be valid) or raises ``ValueError``/``TypeError``:
  never an error from inside jax, NumPy, zarr or json, never a crash.

``python tests/test_bad_input.py`` prints the count of cases rejected cleanly per family (the
numbers in the issue's closing note).
"""

from __future__ import annotations

import sys
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stabkit as sk

# ---------------------------------------------------------------------------------------------
# Valid calls, cheap: each family's baseline keyword arguments. Fixtures are built lazily (once)
# so that collecting this module compiles nothing.


class _Lazy:
    """Cheap valid objects the cases need, built on first use."""

    @property
    def key(self):
        return jax.random.key(0)

    @property
    def params(self):
        if not hasattr(self, "_params"):
            self._params = sk.mlp_init(jax.random.key(0), depth=2, width=4)
        return self._params

    @property
    def net(self):
        if not hasattr(self, "_net"):
            self._net = sk.net_init(jax.random.key(0), "residual", depth=2, width=4)
        return self._net

    @property
    def x(self):
        return jnp.ones((2, 4), jnp.float32)

    @property
    def task(self):
        if not hasattr(self, "_task"):
            self._task = sk.teacher_student(jax.random.key(0), n=8, in_dim=4, out_dim=2)
        return self._task

    @property
    def spec(self):
        if not hasattr(self, "_spec"):
            self._spec = sk.TrainSpec(self.task, max_depth=2, width=4, steps=2)
        return self._spec


L = _Lazy()

# Families: a function and its valid keyword arguments (values may be callables of L, resolved at
# call time).
FAMILIES = {
    "logsumexp": (sk.logsumexp, {"x": lambda: jnp.ones(3)}),
    "log_softmax": (sk.log_softmax, {"x": lambda: jnp.ones(3)}),
    "softmax": (sk.softmax, {"x": lambda: jnp.ones(3)}),
    "softmax_cross_entropy": (
        sk.softmax_cross_entropy,
        {"logits": lambda: jnp.ones(3), "labels": lambda: jnp.array(0)},
    ),
    "naive_softmax": (sk.naive_softmax, {"x": lambda: jnp.ones(3)}),
    "limits": (sk.limits, {"dtype": "float16"}),
    "overflow_depth": (sk.overflow_depth, {"scale": 2.0, "dtype": "float16"}),
    "underflow_depth": (sk.underflow_depth, {"scale": 0.5, "dtype": "float16"}),
    "chain": (sk.chain, {"scale": 2.0, "dtype": "float16", "steps": 4}),
    "chain_auto": (sk.chain, {"scale": 2.0, "dtype": "float64"}),
    "census": (sk.census, {"x": lambda: jnp.ones(3)}),
    "get_activation": (sk.get_activation, {"activation": "relu"}),
    "derivative": (sk.derivative, {"activation": "relu"}),
    "select_activation": (sk.select_activation, {"choices": ("relu", "tanh"), "index": 0}),
    "get_initializer": (sk.get_initializer, {"init": "gaussian"}),
    "init_rule": (sk.init_rule, {"name": "gaussian"}),
    "weight_variance": (sk.weight_variance, {"init": "gaussian", "scale": 1.0}),
    "mlp_init": (sk.mlp_init, {"key": lambda: L.key, "depth": 2, "width": 4}),
    "mlp_apply": (
        sk.mlp_apply,
        {"params": lambda: L.params, "x": lambda: L.x, "activation": "relu"},
    ),
    "trace": (sk.trace, {"params": lambda: L.params, "x": lambda: L.x, "activation": "relu"}),
    "deep_linear_gain": (sk.deep_linear_gain, {"a": 1.5, "layers": [1, 2]}),
    "deep_linear_theory": (sk.deep_linear_theory, {"a": 1.5, "depth": 3, "x": lambda: L.x}),
    "q_map": (sk.q_map, {"activation": "tanh", "q": 1.0, "sigma_w2": 1.0, "sigma_b2": 0.0}),
    "q_map_vector_b": (
        sk.q_map,
        {"activation": "tanh", "q": 1.0, "sigma_w2": 1.0, "sigma_b2": lambda: np.zeros(3)},
    ),
    "c_map": (
        sk.c_map,
        {"activation": "tanh", "c": 0.5, "q": 1.0, "sigma_w2": 1.0, "sigma_b2": 0.0},
    ),
    "q_star": (sk.q_star, {"activation": "tanh", "sigma_w2": 1.0, "sigma_b2": 0.05}),
    "chi_1": (sk.chi_1, {"activation": "tanh", "sigma_w2": 1.0, "sigma_b2": 0.05}),
    "xi_c": (sk.xi_c, {"activation": "tanh", "sigma_w2": 1.0, "sigma_b2": 0.05}),
    "critical_line": (sk.critical_line, {"activation": "tanh", "sigma_b2": [0.05]}),
    "iterate_maps": (
        sk.iterate_maps,
        {"activation": "tanh", "sigma_w2": 1.0, "sigma_b2": 0.0, "q_in": 1.0, "depth": 3},
    ),
    "predict_profile": (
        sk.predict_profile,
        {"activation": "tanh", "sigma_w2": 1.0, "sigma_b2": 0.0, "depth": 3},
    ),
    "jacobian_spectrum_moments": (
        sk.jacobian_spectrum_moments,
        {"activation": "tanh", "sigma_w2": 1.0, "sigma_b2": 0.0, "depth": 3},
    ),
    "SweepSpec": (sk.SweepSpec, {"depth": 2, "width": 2, "batch": 1}),
    "sweep": (sk.sweep, {"spec": lambda: sk.SweepSpec(depth=2, width=2, batch=1)}),
    "load": (sk.load, {"path": "/nonexistent/stabkit-store"}),
    "safe_global_norm": (sk.safe_global_norm, {"tree": lambda: {"a": jnp.ones(2)}}),
    "safe_clip_by_global_norm": (sk.safe_clip_by_global_norm, {"max_norm": 1.0}),
    "skip_nonfinite": (
        sk.skip_nonfinite,
        {"inner": lambda: optax.sgd(0.1), "max_consecutive_skips": 3},
    ),
    "DynamicLossScale": (sk.DynamicLossScale, {}),
    "loss_scaling": (sk.loss_scaling, {"inner": lambda: optax.sgd(0.1)}),
    "teacher_student": (sk.teacher_student, {"key": lambda: L.key, "n": 8, "in_dim": 4}),
    "teacher_classification": (
        sk.teacher_classification,
        {"key": lambda: L.key, "n": 8, "in_dim": 4},
    ),
    "Task": (
        sk.Task,
        {
            "x": lambda: L.x,
            "y": lambda: jnp.array([0, 1]),
            "kind": "classification",
            "out_dim": 3,
        },
    ),
    "TrainSpec": (sk.TrainSpec, {"task": lambda: L.task, "max_depth": 2, "width": 4, "steps": 2}),
    "make_runs": (sk.make_runs, {"spec": lambda: L.spec}),
    "diagnose": (sk.diagnose, {"history": None}),
    "block": (sk.block, {"kind": "residual"}),
    "user_block": (sk.user_block, {"init": lambda: _user_init, "apply": lambda: _user_apply}),
    "net_init": (sk.net_init, {"key": lambda: L.key, "block": "residual", "depth": 2, "width": 4}),
    "net_apply": (sk.net_apply, {"params": lambda: L.net, "x": lambda: L.x}),
    "NetSweepSpec": (sk.NetSweepSpec, {"depth": 2, "width": 4, "batch": 2}),
}


def _user_init(key, width, dtype):
    return {"w": jnp.eye(width, dtype=dtype)}


def _user_apply(params, h):
    return h @ params["w"]


NAN, INF = float("nan"), float("inf")

# (family, argument, bad value, word the message must contain). The word is the argument's name.
CASES = [
    # networks of blocks
    ("block", "kind", "transformer", "kind"),
    ("block", "kind", 3, "kind"),
    ("block", "norm", "group", "norm"),
    ("block", "norm_position", "middle", "norm_position"),
    ("block", "residual", "yes", "residual"),
    ("block", "fixup", 1, "fixup"),
    ("block", "activation", "nope", "activation"),
    ("block", "branch", "conv", "branch"),
    ("block", "expansion", 0, "expansion"),
    ("user_block", "init", 3, "init"),
    ("user_block", "spatial", -1, "spatial"),
    ("user_block", "hyper", {"gain": "big"}, "hyper"),
    ("net_init", "block", 3, "block"),
    ("net_init", "depth", 0, "depth"),
    ("net_init", "depth", 10**9, "depth"),
    ("net_init", "width", 2.5, "width"),
    ("net_init", "scale", NAN, "scale"),
    ("net_init", "alpha", INF, "alpha"),
    ("net_init", "eps", -1.0, "eps"),
    ("net_init", "bias_std", -1.0, "bias_std"),
    ("net_init", "init", "nope", "init"),
    ("net_init", "dtype", "int32", "dtype"),
    ("net_init", "embed", "no", "embed"),
    ("net_init", "final_norm", "batch", "final_norm"),
    ("net_init", "in_dim", 0, "in_dim"),
    ("net_apply", "x", lambda: jnp.ones((2, 3, 4)), "sequence"),
    ("net_apply", "x", lambda: jnp.ones((2, 5)), "x"),
    ("net_apply", "depth", 3, "depth"),
    ("net_apply", "depth", 1.5, "depth"),
    ("net_apply", "params", lambda: L.params, "params"),
    *[
        ("NetSweepSpec", a, v, a)
        for a, v in (
            ("depth", 0),
            ("width", -1),
            ("block", "transformer"),
            ("norm", "group"),
            ("norm_position", "middle"),
            ("alpha", NAN),
            ("scale", INF),
            ("seed", -1),
            ("dtype", "int8"),
            ("batch", 0),
            ("seq_len", 0),
            ("alpha_scaling", "sqrt"),
            ("block_options", 3),
            ("hyper", {"softcap": 1.0}),
        )
    ],
    # primitives
    *[
        (f, "x", v, "x")
        for f in ("logsumexp", "log_softmax", "softmax", "census")
        for v in ("abc", None, object(), [[1.0], [1.0, 2.0]])
    ],
    *[
        (f, "axis", v, "axis")
        for f in ("logsumexp", "log_softmax", "softmax")
        for v in (5, 1.5, "0", True)
    ],
    ("logsumexp", "keepdims", "no", "keepdims"),
    ("logsumexp", "keepdims", None, "keepdims"),
    ("softmax", "where", "abc", "where"),
    ("softmax", "where", lambda: jnp.ones(4, bool), "where"),
    ("softmax_cross_entropy", "labels", lambda: jnp.array(3), "labels"),
    ("softmax_cross_entropy", "labels", lambda: jnp.array(-1), "labels"),
    ("softmax_cross_entropy", "labels", lambda: jnp.array([1.5, -0.5, 0.0]), "labels"),
    ("softmax_cross_entropy", "labels", "abc", "labels"),
    ("softmax_cross_entropy", "logits", "abc", "logits"),
    ("softmax_cross_entropy", "axis", 3, "axis"),
    ("naive_softmax", "x", "abc", "x"),
    # floating-point analysis
    *[("limits", "dtype", v, "dtype") for v in (None, "float128", "int32", 5, "", "abc")],
    *[
        (f, "dtype", v, "dtype")
        for f in ("overflow_depth", "underflow_depth", "chain")
        for v in (None, "int8", "nope")
    ],
    *[
        (f, "scale", v, "scale")
        for f in ("overflow_depth", "underflow_depth", "chain")
        for v in (NAN, INF, "abc", None)
    ],
    ("chain_auto", "scale", 1 + 2**-52, "scale"),  # ~3.2e18 steps: aborted XLA
    ("chain_auto", "scale", 1 - 2**-53, "scale"),
    ("chain", "steps", -1, "steps"),
    ("chain", "steps", 10**15, "steps"),
    ("chain", "steps", 2.5, "steps"),
    ("overflow_depth", "max_steps", 0, "max_steps"),
    ("overflow_depth", "max_steps", 10**15, "max_steps"),
    ("overflow_depth", "x0", NAN, "x0"),
    ("overflow_depth", "flush", "yes", "flush"),
    # activations and initializers
    *[
        (f, "activation", v, "activation")
        for f in ("get_activation", "derivative")
        for v in ("nope", 5, None, "")
    ],
    ("select_activation", "choices", (), "choices"),
    ("select_activation", "choices", ("relu", "nope"), "nope"),
    ("select_activation", "index", 5, "index"),
    ("select_activation", "index", -1, "index"),
    *[("get_initializer", "init", v, "init") for v in ("nope", 5, None)],
    ("get_initializer", "scale", NAN, "scale"),
    ("get_initializer", "scale", "abc", "scale"),
    ("init_rule", "name", "nope", "nope"),
    ("weight_variance", "init", "nope", "nope"),
    ("weight_variance", "scale", NAN, "scale"),
    # networks and trace
    *[("mlp_init", "depth", v, "depth") for v in (-1, 0, 1.5, "3", None, True, 10**9)],
    *[("mlp_init", "width", v, "width") for v in (0, -2, 2.5, None, 10**7)],
    ("mlp_init", "init", "nope", "init"),
    ("mlp_init", "dtype", "int32", "dtype"),
    ("mlp_init", "dtype", "nope", "dtype"),
    ("mlp_init", "bias_std", -1.0, "bias_std"),
    ("mlp_init", "bias_std", NAN, "bias_std"),
    ("mlp_init", "key", "abc", "key"),
    ("mlp_init", "in_dim", 0, "in_dim"),
    ("mlp_apply", "activation", "nope", "activation"),
    ("mlp_apply", "x", lambda: jnp.ones((2, 5)), "x"),
    ("mlp_apply", "x", "abc", "x"),
    ("mlp_apply", "depth", 7, "depth"),
    ("mlp_apply", "depth", -1, "depth"),
    ("mlp_apply", "params", "abc", "params"),
    ("trace", "activation", "nope", "activation"),
    ("trace", "activation", lambda: lambda z: z[:1], "activation"),
    ("trace", "activation", lambda: lambda z: z.astype(jnp.int32), "activation"),
    ("trace", "loss", "nope", "loss"),
    ("trace", "loss", lambda: lambda y: y, "loss"),
    ("trace", "depth", 7, "depth"),
    ("trace", "x", lambda: jnp.ones((2, 5)), "x"),
    ("trace", "saturation_threshold", NAN, "saturation_threshold"),
    ("deep_linear_gain", "a", NAN, "a"),
    ("deep_linear_gain", "layers", "abc", "layers"),
    ("deep_linear_theory", "depth", 0, "depth"),
    ("deep_linear_theory", "loss", "nope", "loss"),
    # theory
    *[(f, "activation", "nope", "nope") for f in ("q_map", "q_star", "chi_1", "critical_line")],
    *[
        (f, "sigma_w2", v, "sigma_w2")
        for f in ("q_map", "q_star", "chi_1", "xi_c")
        for v in (NAN, -1.0, "abc", None)
    ],
    ("q_map", "sigma_b2", -1.0, "sigma_b2"),
    ("q_map", "q", -1.0, "q"),
    ("q_map", "q", "abc", "q"),
    ("c_map", "c", 2.0, "c"),
    ("q_map_vector_b", "sigma_w2", lambda: np.ones(2), "sigma_w2"),  # (2,) against (3,)
    ("q_map_vector_b", "q", lambda: np.ones(2), "q"),
    ("critical_line", "sigma_b2", -1.0, "sigma_b2"),
    *[("iterate_maps", "depth", v, "depth") for v in (0, -1, 2.5, 10**9)],
    ("iterate_maps", "q_in", NAN, "q_in"),
    ("predict_profile", "depth", 10**9, "depth"),
    ("predict_profile", "loss", "nope", "loss"),
    ("predict_profile", "weights", "nope", "weights"),
    ("jacobian_spectrum_moments", "depth", 0, "depth"),
    ("jacobian_spectrum_moments", "weights", "nope", "weights"),
    # sweep spec, sweep, load
    *[("SweepSpec", "depth", v, "depth") for v in (0, -3, 2.5, "4", {4: 1}, {4}, None, True)],
    *[("SweepSpec", "scale", v, "scale") for v in (NAN, INF, "abc", [1.0, NAN], [])],
    ("SweepSpec", "scale", range(10**7), "scale"),  # refused by length, not built
    ("SweepSpec", "width", 0, "width"),
    ("SweepSpec", "width", 10**8, "width"),
    ("SweepSpec", "activation", "nope", "nope"),
    ("SweepSpec", "init", "nope", "nope"),
    ("SweepSpec", "dtype", "float128", "dtype"),
    ("SweepSpec", "bias_std", -1.0, "bias_std"),
    ("SweepSpec", "seed", -1, "seed"),
    ("SweepSpec", "seed", 2**40, "seed"),
    ("SweepSpec", "batch", 0, "batch"),
    ("SweepSpec", "input", "nope", "input"),
    ("SweepSpec", "loss", "nope", "loss"),
    ("SweepSpec", "saturation_threshold", NAN, "saturation_threshold"),
    ("sweep", "spec", "abc", "spec"),
    ("sweep", "chunk_size", 0, "chunk_size"),
    ("sweep", "memory_budget", -1, "memory_budget"),
    ("sweep", "resume", "yes", "resume"),
    ("sweep", "out", "", "out"),
    ("load", "path", "", "path"),
    ("load", "path", None, "path"),
    # training and fixes
    ("safe_global_norm", "tree", "abc", "tree"),
    ("safe_global_norm", "tree", lambda: {"a": "abc"}, "tree"),
    ("safe_clip_by_global_norm", "max_norm", -1.0, "max_norm"),
    ("safe_clip_by_global_norm", "max_norm", NAN, "max_norm"),
    ("safe_clip_by_global_norm", "max_norm", "abc", "max_norm"),
    ("skip_nonfinite", "max_consecutive_skips", -1, "max_consecutive_skips"),
    ("skip_nonfinite", "max_consecutive_skips", 1.5, "max_consecutive_skips"),
    ("skip_nonfinite", "inner", "abc", "inner"),
    ("DynamicLossScale", "initial_scale", -1.0, "initial_scale"),
    ("DynamicLossScale", "initial_scale", NAN, "initial_scale"),
    ("DynamicLossScale", "period", 0, "period"),
    ("DynamicLossScale", "factor", 0.5, "factor"),
    ("DynamicLossScale", "dtype", "int32", "dtype"),
    ("loss_scaling", "inner", "abc", "inner"),
    ("loss_scaling", "rule", "abc", "rule"),
    ("teacher_student", "n", 0, "n"),
    ("teacher_student", "in_dim", -1, "in_dim"),
    ("teacher_student", "n", 10**12, "n"),
    ("teacher_classification", "n_classes", 1, "n_classes"),
    ("Task", "y", lambda: jnp.array([0, 5]), "y"),
    ("Task", "y", lambda: np.array([0, 2**40]), "y"),
    ("Task", "y", lambda: jnp.array([0.5, 1.0]), "y"),
    ("Task", "kind", "nope", "kind"),
    ("Task", "out_dim", 0, "out_dim"),
    ("Task", "x", "abc", "x"),
    ("TrainSpec", "max_depth", 0, "max_depth"),
    ("TrainSpec", "max_depth", 10**9, "max_depth"),
    ("TrainSpec", "width", 0, "width"),
    ("TrainSpec", "steps", 0, "steps"),
    ("TrainSpec", "log_every", 3, "log_every"),
    ("TrainSpec", "optimizer", "nope", "optimizer"),
    ("TrainSpec", "optimizer", lambda: lambda lr: 5, "optimizer"),
    ("TrainSpec", "activation", ("nope",), "nope"),
    ("TrainSpec", "dtype", "int32", "dtype"),
    ("TrainSpec", "task", "abc", "task"),
    ("TrainSpec", "clip_norm", -1.0, "clip_norm"),
    ("make_runs", "activation", [5], "activation"),
    ("make_runs", "activation", ["nope"], "nope"),
    ("make_runs", "depth", [7], "depth"),
    ("make_runs", "depth", [0], "depth"),
    ("make_runs", "seed", 2**40, "seed"),
    ("make_runs", "seed", -1, "seed"),
    ("make_runs", "scale", 1e300, "scale"),
    ("make_runs", "scale", NAN, "scale"),
    ("make_runs", "lr", -0.1, "lr"),
    ("make_runs", "lr", NAN, "lr"),
    ("make_runs", "product", "yes", "product"),
    ("diagnose", "history", "abc", "history"),
]


def _resolve(v):
    return v() if callable(v) and getattr(v, "__name__", "") == "<lambda>" else v


def _call(family, arg, value):
    fn, base = FAMILIES[family]
    kwargs = {k: _resolve(v) for k, v in base.items()}
    kwargs[arg] = _resolve(value)
    return fn(**kwargs)


def _case_id(case):
    family, arg, value, _ = case
    text = getattr(value, "__name__", None) if callable(value) else None
    text = "fn" if text == "<lambda>" else repr(value)
    if " at 0x" in text:  # ids must be the same in every xdist worker
        text = f"<{type(value).__name__}>"
    return f"{family}-{arg}-{text[:24]}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_argument_is_named(case):
    family, arg, value, word = case
    with pytest.raises((ValueError, TypeError, OSError)) as info:
        _call(family, arg, value)
    message = str(info.value)
    assert word.lower() in message.lower(), f"{type(info.value).__name__}: {message}"
    assert type(info.value).__module__ == "builtins", type(info.value)  # not jax's or zarr's


# A pool of wrong values; some happen to be valid for some arguments (then the call just works).
POOL = [
    None,
    "abc",
    "",
    NAN,
    INF,
    -INF,
    -1,
    0,
    10**12,
    2.5,
    -0.5,
    True,
    object(),
    [],
    {},
    1j,
    [[1, 2], [3]],
    np.int64(-3),
    np.float32(NAN),
    (1, "a"),
]

# Arguments whose values would make a valid call expensive (a compilation per example) are left
# to CASES.
FUZZ_ARGS = {
    "limits": ["dtype"],
    "overflow_depth": ["scale", "dtype", "x0", "max_steps"],
    "underflow_depth": ["scale", "dtype", "x0", "max_steps"],
    "get_activation": ["activation"],
    "get_initializer": ["init", "scale"],
    "init_rule": ["name"],
    "weight_variance": ["init", "scale"],
    "q_map": ["activation", "q", "sigma_w2", "sigma_b2"],
    "q_star": ["activation", "sigma_w2", "sigma_b2"],
    "iterate_maps": ["activation", "sigma_w2", "sigma_b2", "q_in", "depth"],
    "SweepSpec": [
        "depth",
        "width",
        "activation",
        "init",
        "scale",
        "bias_std",
        "dtype",
        "seed",
        "batch",
        "input",
        "loss",
        "saturation_threshold",
    ],
    "safe_clip_by_global_norm": ["max_norm"],
    "skip_nonfinite": ["inner", "max_consecutive_skips"],
    "DynamicLossScale": ["initial_scale", "period", "factor", "min_scale", "dtype"],
    "loss_scaling": ["inner", "rule"],
    "Task": ["x", "y", "kind", "out_dim"],
    "TrainSpec": [
        "task",
        "max_depth",
        "width",
        "steps",
        "log_every",
        "optimizer",
        "dtype",
        "clip_norm",
        "bias_std",
    ],
    "make_runs": ["depth", "scale", "activation", "init", "lr", "seed", "product"],
    "load": ["path"],
    "block": ["kind", "activation", "norm", "norm_position", "residual", "fixup"],
    "net_init": ["block", "scale", "alpha", "eps", "bias_std", "init", "embed", "final_norm"],
    "NetSweepSpec": [
        "depth",
        "width",
        "block",
        "norm",
        "norm_position",
        "activation",
        "init",
        "scale",
        "alpha",
        "bias_std",
        "dtype",
        "seed",
        "batch",
        "seq_len",
        "loss",
        "alpha_scaling",
        "block_options",
        "hyper",
    ],
}
_FUZZ = [(f, a) for f, args in FUZZ_ARGS.items() for a in args]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_FUZZ), st.sampled_from(POOL))
def test_random_bad_argument_raises_only_value_or_type_error(target, value):
    family, arg = target
    try:
        _call(family, arg, value)
    except (ValueError, TypeError, OSError) as err:
        assert type(err).__module__ == "builtins", f"{family}({arg}={value!r}): {err!r}"
        assert str(err), f"{family}({arg}={value!r}) raised {type(err).__name__} with no message"


def main() -> int:
    """Print, per family, how many of CASES raise a clean named error."""
    ok, total, bad = Counter(), Counter(), []
    for case in CASES:
        family, arg, value, word = case
        total[family] += 1
        try:
            _call(family, arg, value)
            bad.append(f"{_case_id(case)}: returned")
        except (ValueError, TypeError, OSError) as err:
            if word.lower() in str(err).lower() and type(err).__module__ == "builtins":
                ok[family] += 1
            else:
                bad.append(f"{_case_id(case)}: {type(err).__name__}: {str(err)[:120]}")
        except Exception as err:  # the failures this audit exists to find
            bad.append(f"{_case_id(case)}: {type(err).__name__}: {str(err)[:120]}")
    for family in FAMILIES:
        if total[family]:
            print(f"{family:28s} {ok[family]:4d} / {total[family]:4d}")
    print(f"{'all':28s} {sum(ok.values()):4d} / {sum(total.values()):4d}")
    for line in bad:
        print("  FAIL", line)
    return int(bool(bad))


if __name__ == "__main__":
    sys.exit(main())
