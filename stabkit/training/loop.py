"""Train many MLPs at once with any optax optimizer, record the history, tell explode from vanish.

The note names what a researcher sees while training: **exploding** gradients make the loss
unstable and then NaN (overflow); **vanishing** gradients leave the loss large and nearly unchanged
(the early layers receive almost no gradient). This module reproduces both in real training runs
and recognises them from the run's history:

* Tasks that need no download: :func:`teacher_student` (regression onto a random relu teacher) and
  :func:`teacher_classification` (the teacher's arg-max as the label).
* :class:`TrainSpec` fixes what one compilation serves (task, widths, the activations and
  initializers to choose from, optimizer, steps, dtypes, fixes); :func:`make_runs` lists the
  configurations, where **depth, weight scale, activation, initializer, learning rate and seed are
  data**. :func:`train` runs all of them in one ``jit``: ``vmap`` over the configurations,
  ``lax.scan`` over the steps, and returns a :class:`History` sampled every ``log_every`` steps:
  loss, gradient and update global norms, per-layer gradient RMS, the census of gradient entries
  (normal/subnormal/zero/inf/NaN, by bit pattern), the loss scale and non-finite events.
* Mixed precision: ``dtype="float16"`` or ``"bfloat16"`` runs parameters and activations in that
  format; ``master_dtype="float32"`` keeps float32 master weights (the forward pass casts them
  down, the gradient comes back up through the cast). The loss is always computed in float32.
  ``dtype="float64"`` (or a float64 ``master_dtype`` or loss scale) really trains in float64:
  :func:`train` enters ``jax.enable_x64(True)`` itself, leaving the global flag as it was, and
  the loss and the records are then float64 too.
* The fixes of :mod:`stabkit.fixes` are switches: ``clip_norm``, ``max_consecutive_skips`` and
  ``loss_scale``; any other optax transformation goes in through ``optimizer``.
* :func:`diagnose` returns a verdict per run, ``"exploding"``, ``"vanishing"`` or ``"healthy"``,
  with its evidence.

Examples:
    The note's cases in one call, 30 hidden layers each: :math:`W = 1.5 I` and :math:`W = 0.5 I`
    deep linear nets, a Glorot sigmoid net and a He relu net.

    >>> task = teacher_student(jax.random.key(0), n=64, in_dim=16, teacher_depth=1)
    >>> spec = TrainSpec(task, max_depth=30, width=32, steps=150, log_every=5,
    ...                  optimizer="momentum", activations=("linear", "sigmoid", "relu"),
    ...                  inits=("scaled_identity", "glorot_normal", "he_normal"))
    >>> runs = make_runs(spec, scale=[1.5, 0.5, 1, 1], activation=[0, 0, 1, 2], init=[0, 0, 1, 2],
    ...                  lr=0.005, product=False)
    >>> history = train(spec, runs)
    >>> history.loss.shape, history.layer_grad_rms.shape  # (runs, records[, layers])
    ((4, 30), (4, 30, 31))
    >>> d = diagnose(history)
    >>> d.verdict
    ('exploding', 'vanishing', 'vanishing', 'healthy')
    >>> print(d.explain(0))
    run 0: exploding; first non-finite loss/gradient at step 1; gradient non-finite; ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from jax.typing import DTypeLike

from stabkit._checks import (
    bounded_int,
    check_elementwise,
    check_initializer,
    check_memory,
    finite_float,
    format_bytes,
    is_floating_dtype,
    memory_limit,
    positive_int,
    strict_bool,
)
from stabkit.activations import get_activation, select_activation
from stabkit.fixes import (
    DynamicLossScale,
    all_finite,
    loss_scale_of,
    loss_scaling,
    safe_clip_by_global_norm,
    safe_global_norm,
    skip_nonfinite,
)
from stabkit.init import get_initializer
from stabkit.nets import MLPParams, mlp_apply, mlp_init
from stabkit.precision import census
from stabkit.softmax import softmax_cross_entropy

__all__ = [
    "Diagnosis",
    "History",
    "Runs",
    "Task",
    "TrainSpec",
    "Trainability",
    "diagnose",
    "make_runs",
    "optimizer_names",
    "teacher_classification",
    "teacher_student",
    "train",
    "trainability_grid",
]

# --------------------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A full data set: inputs ``x`` ``(n, in_dim)`` and targets ``y``.

    Checked on the host before JAX sees the data: labels must be integers in ``[0, out_dim)``
    (an int64 label beyond int32 would otherwise wrap, 2**40 becoming class 0, and a label
    ``>= out_dim`` gives a NaN loss at every step), and inputs and regression targets must be
    finite in the dtype JAX holds them in (float64 data is float32 unless x64 is on). NaN or inf
    in a data set is refused with a ``ValueError`` naming the first entry, not trained on: every
    run's loss would be NaN from the first step, which says nothing about the networks.

    Attributes:
        x: float32 inputs.
        y: ``(n, out_dim)`` float32 targets (``kind="regression"``, loss ½·mean squared error) or
            ``(n,)`` int32 labels (``kind="classification"``, mean softmax cross-entropy).
        kind: ``"regression"`` or ``"classification"``.
        out_dim: outputs of the network (classes for classification, >= 2).
    """

    x: jax.Array
    y: jax.Array
    kind: str
    out_dim: int

    def __post_init__(self):
        if not isinstance(self.kind, str) or self.kind not in ("regression", "classification"):
            raise ValueError(f"kind must be 'regression' or 'classification', got {self.kind!r}")
        classify = self.kind == "classification"
        out_dim = positive_int(self.out_dim, "out_dim", minimum=2 if classify else 1)
        x = _data_array(self.x, "x")
        if not is_floating_dtype(x.dtype):
            raise TypeError(f"inputs x must be floating-point, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x must be a non-empty floating (n, in_dim) array, got {x.shape}")
        x = _canonical(x, "x", "inputs")
        y = _data_array(self.y, "y")
        want = (x.shape[0],) if classify else (x.shape[0], out_dim)
        if classify:
            # Checked on the host, before JAX sees them: int64 labels beyond int32 would wrap
            # (2**40 becomes 0) and a label >= out_dim gives a NaN loss at every step.
            if not np.issubdtype(y.dtype, np.integer):
                raise TypeError(f"classification labels y must be integers, got dtype {y.dtype}")
            if y.shape != want:
                raise ValueError(f"y must have shape {want} for {self.kind}, got {y.shape}")
            bad = np.flatnonzero((y < 0) | (y >= out_dim))
            if bad.size:
                raise ValueError(
                    f"labels y must be class indices in [0, out_dim={out_dim}), got {y[bad[0]]} "
                    f"at index {bad[0]} ({bad.size} out of range)"
                )
            y = jnp.asarray(y.astype(np.int32))
        else:
            if not is_floating_dtype(y.dtype):
                raise TypeError(f"regression targets y must be floating-point, got dtype {y.dtype}")
            if y.shape != want:
                raise ValueError(f"y must have shape {want} for {self.kind}, got {y.shape}")
            y = jnp.asarray(_canonical(y, "y", "targets"))
        object.__setattr__(self, "out_dim", out_dim)
        object.__setattr__(self, "x", jnp.asarray(x))
        object.__setattr__(self, "y", y)

    @property
    def in_dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def _data_array(value: Any, name: str) -> np.ndarray:
    """``value`` on the host as a NumPy array (JAX arrays copied), TypeError naming it otherwise."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a concrete array, not a traced value (build the Task outside jit)"
        )
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be an array of numbers, got {type(value).__name__}: {err}"
        ) from err
    if arr.dtype.kind in "OUSVMmc" and not is_floating_dtype(arr.dtype):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    return arr


def _canonical(arr: np.ndarray, name: str, what: str) -> np.ndarray:
    """``arr`` in the dtype JAX will hold it in (float64 is float32 unless x64 is on), checked on
    the host for NaN/inf before anything reaches JAX (nothing compiles for refused input).

    NaN/inf in a data set are refused rather than trained on: every run's loss would be NaN from
    the first step, which says nothing about the network.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported as inf below
        host = arr.astype(jax.dtypes.canonicalize_dtype(arr.dtype), copy=False)
    bad = np.argwhere(~np.isfinite(host))
    if bad.size:
        first = tuple(int(i) for i in bad[0])
        cast = (
            f" ({arr[first]} does not fit in {host.dtype}: JAX holds {arr.dtype} data in "
            f"{host.dtype} unless x64 is enabled)"
            if np.isfinite(arr[first])
            else ""
        )
        raise ValueError(
            f"{name} holds {len(bad)} non-finite {what} (the first, {host[first]}, at index "
            f"{first}){cast}: every run's loss would be NaN from the first step; drop or impute "
            "them"
        )
    return host


def _first_too_large(nbytes: Callable[[dict], float], sizes: dict[str, int], what: str) -> None:
    """Name the first argument of ``sizes`` whose size makes ``nbytes(sizes)`` too large.

    The sizes are taken in one at a time, in order, the later ones held at 1, so the message names
    the argument that crossed the memory limit (:func:`stabkit._checks.check_memory`).
    """
    limit = memory_limit()
    for i, name in enumerate(sizes):
        held = {k: (v if j <= i else 1) for j, (k, v) in enumerate(sizes.items())}
        check_memory(nbytes(held), name, sizes[name], what, limit=limit)


def _split_key(key: Any) -> tuple[jax.Array, jax.Array]:
    try:
        kx, kt = jax.random.split(key)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__} {key!r}"
        ) from err
    return kx, kt


def _teacher(key: jax.Array, n: int, in_dim: int, out_dim: int, depth: int, width: int):
    depth = positive_int(depth, "teacher_depth")
    width = positive_int(width, "teacher_width")
    sizes = {"in_dim": in_dim, "out_dim": out_dim, "teacher_width": width}
    sizes |= {"teacher_depth": depth, "n": n}
    _first_too_large(
        lambda s: (
            4
            * (
                s["teacher_depth"] * (s["teacher_width"] + 1) * s["teacher_width"]
                + (s["in_dim"] + s["out_dim"] + 1) * s["teacher_width"]
                + s["n"] * (2 * s["in_dim"] + 3 * s["out_dim"] + 3 * s["teacher_width"])
            )
        ),
        sizes,
        "the teacher network and its data set (float32)",
    )
    kx, kt = _split_key(key)
    x = jax.random.normal(kx, (n, in_dim), jnp.float32)
    teacher = mlp_init(
        kt, depth=depth, width=width, in_dim=in_dim, out_dim=out_dim, init="he_normal"
    )
    return x, mlp_apply(teacher, x, activation="relu")


def teacher_student(
    key: jax.Array,
    *,
    n: int = 256,
    in_dim: int = 8,
    out_dim: int = 4,
    teacher_depth: int = 2,
    teacher_width: int = 32,
    target_scale: float = 1.0,
) -> Task:
    """Regression onto a random relu teacher: :math:`x \\sim N(0, I)`, :math:`y = c \\, t(x)/s`.

    ``t`` is a He-initialised relu MLP, ``s`` the RMS of its outputs (so the targets have RMS
    ``target_scale`` = ``c``). A student of enough width can fit it exactly.

    Examples:
        >>> task = teacher_student(jax.random.key(0), n=64)
        >>> task.x.shape, task.y.shape, round(float(jnp.sqrt(jnp.mean(task.y**2))), 3)
        ((64, 8), (64, 4), 1.0)
    """
    n, in_dim, out_dim = (
        positive_int(v, k) for v, k in ((n, "n"), (in_dim, "in_dim"), (out_dim, "out_dim"))
    )
    c = finite_float(target_scale, "target_scale", positive=True)
    fmax = float(jnp.finfo(jnp.float32).max)
    if c > fmax:
        raise ValueError(f"target_scale={c} overflows float32 (largest {fmax:.4g})")
    x, t = _teacher(key, n, in_dim, out_dim, teacher_depth, teacher_width)
    t = t - jnp.mean(t, axis=0)
    y = (c * t / jnp.sqrt(jnp.mean(t**2))).astype(jnp.float32)
    if not np.isfinite(np.asarray(y)).all():
        why = (
            f"target_scale={c} overflows float32 (largest {fmax:.4g})"
            if np.isfinite(np.asarray(t)).all() and np.any(np.asarray(t))
            else f"the teacher's outputs are the same for all n={n} examples (nothing to fit)"
        )
        raise ValueError(f"teacher_student: the targets are not finite: {why}")
    return Task(x, y, "regression", out_dim)


def teacher_classification(
    key: jax.Array,
    *,
    n: int = 512,
    in_dim: int = 8,
    n_classes: int = 4,
    teacher_depth: int = 2,
    teacher_width: int = 32,
) -> Task:
    """Classification with a random relu teacher's arg-max as the label (no download needed).

    Examples:
        >>> task = teacher_classification(jax.random.key(0), n=100, n_classes=3)
        >>> task.y.shape, task.y.dtype, task.out_dim
        ((100,), dtype('int32'), 3)
    """
    n, in_dim = positive_int(n, "n"), positive_int(in_dim, "in_dim")
    n_classes = positive_int(n_classes, "n_classes", minimum=2)
    x, t = _teacher(key, n, in_dim, n_classes, teacher_depth, teacher_width)
    t = t - jnp.mean(t, axis=0)  # balance the classes a little
    return Task(x, jnp.argmax(t, axis=1).astype(jnp.int32), "classification", n_classes)


# ---------------------------------------------------------------------------------- optimizers

_OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
    "lion": optax.lion,
}


def optimizer_names() -> tuple[str, ...]:
    """The optimizer names :class:`TrainSpec` accepts (any ``lr -> GradientTransformation`` too).

    Examples:
        >>> optimizer_names()
        ('adagrad', 'adam', 'adamw', 'lion', 'momentum', 'nesterov', 'rmsprop', 'sgd')
    """
    return tuple(sorted(_OPTIMIZERS))


# ----------------------------------------------------------------------------------- the spec


#: Seeds, steps and counters are int32 in the kernel.
_INT32_MAX = int(np.iinfo(np.int32).max)


def _names(value: Any, what: str, check: Callable[[Any], Any]) -> tuple:
    if isinstance(value, str) or callable(value):
        items = (value,)
    elif isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        items = tuple(value.tolist() if isinstance(value, np.ndarray) else value)
    else:
        raise TypeError(f"{what} must be a name, a callable or a list of them, got {value!r}")
    if not items:
        raise ValueError(f"{what} must name at least one choice, got {value!r}")
    for item in items:
        check(item)
    return items


def _probe_optimizer(make: Callable, store: jnp.dtype) -> None:
    """``optimizer`` must map a traced learning rate to a working GradientTransformation.

    It is called the way :func:`train` calls it, with a traced float32 scalar, and its ``init``
    and ``update`` traced on a small parameter pytree (:func:`jax.eval_shape`: nothing compiles).
    """
    made = []

    def probe(lr):
        made.append(make(lr))
        return lr

    try:
        jax.eval_shape(probe, jax.ShapeDtypeStruct((), jnp.float32))
    except Exception as err:  # the user's factory
        raise TypeError(
            f"optimizer({make!r}) failed on a traced float32 learning rate: "
            f"{type(err).__name__}: {err}"
        ) from err
    opt = made[0]
    if not isinstance(opt, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be a name or a function lr -> optax.GradientTransformation; "
            f"optimizer(lr) returned {type(opt).__name__} {opt!r}"
        )
    params = {"w": jax.ShapeDtypeStruct((2, 3), store), "b": jax.ShapeDtypeStruct((3,), store)}

    def step(p):
        state = opt.init(p)
        return opt.update(p, state, p)

    try:
        jax.eval_shape(step, params)
    except Exception as err:
        raise TypeError(
            f"optimizer(lr) returned a GradientTransformation whose init/update failed on "
            f"{store.name} parameters: {type(err).__name__}: {err}"
        ) from err


def _dtype_max(*dtypes: Any) -> tuple[float, str]:
    """The largest finite value all of ``dtypes`` hold, and the name of the narrowest."""
    best = min((float(ml_dtypes.finfo(jnp.dtype(d)).max), jnp.dtype(d).name) for d in dtypes)
    return best


def _needs_x64(spec: TrainSpec) -> bool:
    dtypes = [spec.dtype, spec.master_dtype or spec.dtype]
    if spec.loss_scale is not None:
        dtypes.append(spec.loss_scale.dtype)
    return any(jnp.dtype(d).itemsize == 8 for d in dtypes)


def _x64(spec: TrainSpec) -> contextlib.AbstractContextManager:
    """float64 exists in JAX only inside ``enable_x64``: entered locally, the flag is untouched."""
    return jax.enable_x64(True) if _needs_x64(spec) else contextlib.nullcontext()


def _wide(spec: TrainSpec) -> jnp.dtype:
    """The loss's and the records' dtype: float32, float64 where a run computes in float64."""
    store = spec.master_dtype or spec.dtype
    return jnp.dtype(jnp.promote_types(jnp.promote_types(spec.dtype, store), jnp.float32))


def _run_bytes(spec: TrainSpec, width: int, max_depth: int, records: int) -> int:
    """An upper estimate of the memory one run takes in the training kernel."""
    t = spec.task
    store = jnp.dtype(spec.master_dtype or spec.dtype).itemsize
    comp = jnp.dtype(spec.dtype).itemsize
    n_params = (t.in_dim + 1) * width + max_depth * (width + 1) * width + (width + 1) * t.out_dim
    # the float32 draw; master weights, gradient, update and two optimizer moments; the compute
    # copy, its gradient and the cotangents
    per_param = 4 + 6 * store + 3 * comp
    rows = spec.batch_size or t.n
    # pre- and post-activations kept for the backward pass, and the final pass over the data
    activations = (3 * rows * (max_depth + 2) + 2 * t.n) * width * comp
    history = records * (max_depth + 1 + 16) * _wide(spec).itemsize
    return n_params * per_param + activations + history


def _check_run_count(spec: TrainSpec, count: int, name: str, value: Any, note: str = "") -> None:
    """Refuse ``count`` runs whose kernel (vmapped: all at once) would not fit in memory."""
    per = _run_bytes(spec, spec.width, spec.max_depth, spec.steps // spec.log_every)
    check_memory(
        count * per,
        name,
        value,
        f"{count} runs trained at once{note} ({format_bytes(per)} each: parameters, optimizer "
        "state, activations and history)",
    )


@dataclasses.dataclass(frozen=True, eq=False)
class TrainSpec:
    """What one compiled :func:`train` call serves. Validated when built.

    Validation runs on the host and compiles nothing: callable ``activations``, ``inits`` and
    ``optimizer`` are traced once (:func:`jax.eval_shape`) on small inputs, so a callable of the
    wrong kind is named here rather than failing inside the training kernel; one run's memory
    (parameters, gradients, optimizer state, activations, history) is estimated and refused,
    naming ``width``, ``max_depth`` or ``steps``, where it exceeds the memory available.

    Attributes:
        task: the data (:func:`teacher_student`, :func:`teacher_classification` or a :class:`Task`).
        max_depth: hidden layers the parameters hold; each run uses ``depth <= max_depth``.
        width: units per hidden layer.
        activations: names (or callables) a run chooses from by index.
        inits: initializer names a run chooses from by index; a run's ``scale`` multiplies the
            weights (every named initializer is linear in its multiplier).
        optimizer: a name from :func:`optimizer_names` or ``lr -> optax.GradientTransformation``
            (``lr`` is a traced scalar: each run has its own; checked when the spec is built).
        steps: optimizer steps per run, at most 2**31 - 1 (the step counter is int32).
        log_every: the history keeps every ``log_every``-th step (``steps`` must be a multiple).
        batch_size: examples per step, drawn without replacement per step; None: the full set.
        dtype: parameters' and activations' dtype in the forward and backward pass (any real
            floating dtype, float8 included; float64 works with x64 off, see :func:`train`).
        master_dtype: None (parameters are stored in ``dtype``) or a wider dtype (float32) for the
            master weights that the optimizer updates.
        clip_norm: if set, :func:`stabkit.safe_clip_by_global_norm` before the optimizer.
        max_consecutive_skips: if set, :func:`stabkit.skip_nonfinite` around the optimizer.
        loss_scale: if set, :func:`stabkit.loss_scaling` with this rule around everything.
        bias_std: standard deviation of the initial biases, >= 0 and at most the largest
            finite value of the run's dtypes. With ``inits=("gaussian",)``
            and a run's ``scale = sigma_w`` the weights are :math:`N(0, \\sigma_w^2/n_{in})` and the
            biases :math:`N(0, \\sigma_b^2)` for ``bias_std = sigma_b``: the mean-field
            parametrisation of :mod:`stabkit.theory` (see :func:`trainability_grid`).
    """

    task: Task
    max_depth: int
    width: int = 32
    activations: tuple = ("relu",)
    inits: tuple = ("he_normal",)
    optimizer: str | Callable[[Any], optax.GradientTransformation] = "sgd"
    steps: int = 200
    log_every: int = 1
    batch_size: int | None = None
    dtype: DTypeLike = jnp.float32
    master_dtype: DTypeLike | None = None
    clip_norm: float | None = None
    max_consecutive_skips: int | None = None
    loss_scale: DynamicLossScale | None = None
    bias_std: float = 0.0

    def __post_init__(self):
        set_ = partial(object.__setattr__, self)
        if not isinstance(self.task, Task):
            raise TypeError(f"task must be a Task, got {type(self.task).__name__}")
        set_("max_depth", positive_int(self.max_depth, "max_depth"))
        set_("width", positive_int(self.width, "width"))
        for name in ("dtype", "master_dtype"):
            value = getattr(self, name)
            if value is None and name == "master_dtype":
                continue
            # None is NumPy's float64, not "no dtype": refused where a dtype is required
            if value is None or not is_floating_dtype(value):
                raise TypeError(f"{name} must be a floating-point dtype, got {value!r}")
            set_(name, jnp.dtype(value))
        set_("activations", _names(self.activations, "activations", get_activation))
        set_("inits", _names(self.inits, "inits", get_initializer))
        for i, init in enumerate(self.inits):
            if not isinstance(init, str):
                check_initializer(init, f"inits[{i}]", jax.random.key(0), (3, 4), jnp.float32)
        if isinstance(self.optimizer, str):
            if self.optimizer not in _OPTIMIZERS:
                raise ValueError(
                    f"unknown optimizer {self.optimizer!r}; valid names: "
                    f"{', '.join(optimizer_names())} (or pass lr -> GradientTransformation)"
                )
        elif not callable(self.optimizer):
            raise TypeError(f"optimizer must be a name or a callable, got {self.optimizer!r}")
        set_("steps", bounded_int(self.steps, "steps", 1, _INT32_MAX, "the step counter is int32"))
        set_("log_every", positive_int(self.log_every, "log_every"))
        if self.steps % self.log_every:
            raise ValueError(f"steps={self.steps} must be a multiple of log_every={self.log_every}")
        if self.batch_size is not None:
            set_("batch_size", positive_int(self.batch_size, "batch_size"))
            if self.batch_size > self.task.n:
                raise ValueError(f"batch_size={self.batch_size} exceeds the {self.task.n} examples")
        if self.clip_norm is not None:
            set_("clip_norm", finite_float(self.clip_norm, "clip_norm", positive=True))
        if self.max_consecutive_skips is not None:
            set_(
                "max_consecutive_skips",
                bounded_int(
                    self.max_consecutive_skips,
                    "max_consecutive_skips",
                    0,
                    _INT32_MAX,
                    "the skip counter is int32",
                ),
            )
        if self.loss_scale is not None and not isinstance(self.loss_scale, DynamicLossScale):
            raise TypeError(f"loss_scale must be a DynamicLossScale, got {self.loss_scale!r}")
        set_("bias_std", finite_float(self.bias_std, "bias_std"))
        if self.bias_std < 0:
            raise ValueError(f"bias_std must be >= 0, got {self.bias_std}")
        fmax, narrow = _dtype_max(jnp.float32, self.dtype, self.master_dtype or self.dtype)
        if self.bias_std > fmax:
            raise ValueError(
                f"bias_std={self.bias_std} is too large: at most {fmax:.6g}, the largest finite "
                f"{narrow} (the biases are drawn in float32 and cast to the run's dtypes)"
            )
        # Every size is bounded before anything reaches XLA (max_depth=10**9 would otherwise
        # fail late, allocating); the message names the argument that crossed the limit.
        _first_too_large(
            lambda s: _run_bytes(
                self, s["width"], s["max_depth"], max(1, s["steps"] // self.log_every)
            ),
            {"width": self.width, "max_depth": self.max_depth, "steps": self.steps},
            "one run's parameters, optimizer state, activations and history",
        )
        with _x64(self):
            for i, phi in enumerate(self.activations):
                if not isinstance(phi, str):
                    check_elementwise(phi, f"activations[{i}]", self.dtype)
            if not isinstance(self.optimizer, str):
                _probe_optimizer(self.optimizer, self.master_dtype or self.dtype)

    @property
    def n_layers(self) -> int:
        """Weight layers per network: ``max_depth`` hidden layers and the readout."""
        return self.max_depth + 1

    def _static(self) -> tuple:
        """Everything but the data: the key of the compiled kernel."""
        t = self.task
        return (
            t.kind,
            t.out_dim,
            t.in_dim,
            t.n,
            *(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "task"),
        )


class Runs(NamedTuple):
    """The configurations of one :func:`train` call, one entry per run (all shape ``(R,)``).

    :func:`train` checks every field on the host before the kernel sees it (an index out of range
    would otherwise be clamped silently by ``lax.switch`` or JAX's indexing).

    Attributes:
        depth: int32 hidden layers used, 1..``max_depth``.
        scale: float32 multiplier of the initial weights, ``|scale|`` at most the largest finite
            value of the run's dtypes (and 0 or at least float32's smallest normal number).
        activation: int32 index into ``TrainSpec.activations``.
        init: int32 index into ``TrainSpec.inits``.
        lr: float32 learning rate, > 0, a normal float32 number.
        seed: int32 seed of the initial weights and the batches, 0..2**31 - 1.
    """

    depth: jax.Array
    scale: jax.Array
    activation: jax.Array
    init: jax.Array
    lr: jax.Array
    seed: jax.Array


_RUN_DTYPES = (jnp.int32, jnp.float32, jnp.int32, jnp.int32, jnp.float32, jnp.int32)
_F32 = ml_dtypes.finfo(np.float32)


def _check_scale(value: float, spec: TrainSpec, label: str) -> None:
    fmax, narrow = _dtype_max(jnp.float32, spec.dtype, spec.master_dtype or spec.dtype)
    if abs(value) > fmax:
        raise ValueError(
            f"{label}={value} is too large: |scale| must be at most {fmax:.6g}, the largest finite "
            f"{narrow} (the runs' scale is float32; the weights are cast to the run's dtypes)"
        )
    if 0 < abs(value) < float(_F32.tiny):
        raise ValueError(
            f"{label}={value} is below float32's smallest normal number {float(_F32.tiny):.4g}: "
            "it would be flushed to 0 (pass 0 for zero weights)"
        )


def _check_lr(value: float, label: str) -> None:
    if value <= 0:
        raise ValueError(f"{label} must be > 0, got {value}")
    if not float(_F32.tiny) <= value <= float(_F32.max):
        raise ValueError(
            f"{label}={value} is out of range: the runs hold it in float32, valid "
            f"{float(_F32.tiny):.4g}..{float(_F32.max):.6g} (smaller is flushed to 0, larger "
            "is inf)"
        )


def _check_seed(value: int, label: str) -> None:
    if not 0 <= value <= _INT32_MAX:
        raise ValueError(f"{label}={value} is out of range: seeds are int32, valid 0..{_INT32_MAX}")


def _check_index(value: int, choices: tuple, what: str, label: str) -> None:
    if not 0 <= value < len(choices):
        raise ValueError(
            f"{label} index {value} is out of range for {len(choices)} {what}s "
            f"(valid 0..{len(choices) - 1}: {choices})"
        )


def _values(value: Any, name: str) -> list:
    """A value or a 1-D list/array of values as a list of Python scalars."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if isinstance(value, jax.core.Tracer):
            raise TypeError(f"{name} must be concrete values, not a traced array")
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be numbers, got {type(value).__name__}: {err}") from err
        if arr.ndim > 1:
            raise ValueError(
                f"{name} must be a value or a 1-D list, got an array of shape {arr.shape}"
            )
        items = arr.reshape(-1).tolist()
    elif isinstance(value, (list, tuple, range)):
        items = list(value)
        for v in items:
            if isinstance(v, (list, tuple, range, dict, set)) or np.ndim(v) > 0:
                raise ValueError(f"{name} must be a value or a 1-D list, got {value!r}")
    else:
        items = [value]
    if not items:
        raise ValueError(f"{name} must hold at least one value, got {value!r}")
    return items


def _index(values: Any, choices: tuple, what: str) -> list[int]:
    out = []
    for v in _values(values, what):
        if isinstance(v, str):
            if v not in choices:
                raise ValueError(f"{what} {v!r} is not among the spec's {what}s {choices}")
            out.append(choices.index(v))
        else:
            i = positive_int(v, what, minimum=0)
            _check_index(i, choices, what, what)
            out.append(i)
    return out


def make_runs(
    spec: TrainSpec,
    *,
    depth: Any = None,
    scale: Any = 1.0,
    activation: Any = 0,
    init: Any = 0,
    lr: Any = 0.01,
    seed: Any = 0,
    product: bool = True,
) -> Runs:
    """The runs to train: every combination of the values given (``product=True``), or zipped.

    Each argument is a value or a list; ``activation`` and ``init`` take names or indices into the
    spec's choices; ``depth`` defaults to ``spec.max_depth``. With ``product=False`` the lists
    are broadcast against each other (lists of one length, or single values).

    Raises:
        TypeError: a value of the wrong type (a float depth, a non-numeric scale), a non-bool
            ``product``.
        ValueError: a depth outside 1..max_depth; a scale that is not finite, larger than the
            largest finite value of the run's dtypes or flushed to 0 in float32; a learning rate
            that is not > 0 or out of float32's normal range; a seed outside 0..2**31 - 1; an
            unknown activation/initializer or an index out of range; an empty list; lists of
            mismatched lengths; more runs than fit in memory (all train at once).

    Examples:
        >>> spec = TrainSpec(teacher_student(jax.random.key(0), n=32), max_depth=8,
        ...                  activations=("relu", "tanh"))
        >>> runs = make_runs(spec, depth=[2, 8], activation=["relu", "tanh"], lr=[0.1, 0.01],
        ...                  seed=[0, 1])
        >>> runs.depth.shape, runs.activation[:4].tolist()
        ((16,), [0, 0, 0, 0])
        >>> make_runs(spec, seed=2**40)
        Traceback (most recent call last):
        ...
        ValueError: seed=1099511627776 is out of range: seeds are int32, valid 0..2147483647
    """
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"spec must be a TrainSpec, got {type(spec).__name__}")
    product = strict_bool(product, "product")
    depth = spec.max_depth if depth is None else depth
    axes = {
        "depth": [positive_int(d, "depth") for d in _values(depth, "depth")],
        "scale": [finite_float(v, "scale") for v in _values(scale, "scale")],
        "activation": _index(activation, spec.activations, "activation"),
        "init": _index(init, spec.inits, "init"),
        "lr": [finite_float(v, "lr") for v in _values(lr, "lr")],
        "seed": [positive_int(v, "seed", minimum=0) for v in _values(seed, "seed")],
    }
    for d in axes["depth"]:
        if d > spec.max_depth:
            raise ValueError(f"depth={d} exceeds the spec's max_depth={spec.max_depth}")
    for v in axes["scale"]:
        _check_scale(v, spec, "scale")
    for v in axes["lr"]:
        _check_lr(v, "lr")
    for v in axes["seed"]:
        _check_seed(v, "seed")
    lengths = {k: len(v) for k, v in axes.items()}
    if product:
        count = math.prod(lengths.values())
        _check_run_count(
            spec, count, "runs", count, f" (every combination of the lists' lengths {lengths})"
        )
        rows = list(itertools.product(*axes.values()))
        cols = list(zip(*rows, strict=True))
    else:
        n = max(lengths.values())
        bad = {k: m for k, m in lengths.items() if m not in (1, n)}
        if bad:
            raise ValueError(f"with product=False the lists must have one length ({n}); got {bad}")
        _check_run_count(spec, n, "runs", n)
        cols = [v * n if len(v) == 1 else v for v in axes.values()]
    return Runs(*(jnp.asarray(c, dt) for c, dt in zip(cols, _RUN_DTYPES, strict=True)))


def _check_runs(spec: TrainSpec, runs: Runs) -> None:
    """Every field of ``runs`` on the host: shape ``(R,)``, dtype and range (no silent clamps)."""
    host = {}
    for name, value in runs._asdict().items():
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"runs.{name} is a traced array: call train outside jit/vmap (it compiles and "
                "vmaps its own kernel)"
            )
        try:
            host[name] = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"runs.{name} must be an array of numbers: {err}") from err
    shapes = {f: v.shape for f, v in host.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"every field of runs must have one shape (R,), got {shapes}")
    if next(iter(shapes.values()))[0] == 0:
        raise ValueError("runs is empty: every field has shape (0,); make_runs lists at least one")
    for name, arr in host.items():
        integer = _RUN_DTYPES[Runs._fields.index(name)] == jnp.int32
        kind_ok = np.issubdtype(arr.dtype, np.integer) or (
            not integer and is_floating_dtype(arr.dtype)
        )
        if not kind_ok:
            want = "integers" if integer else "real numbers"
            raise TypeError(f"runs.{name} must hold {want}, got dtype {arr.dtype}")
    for name in ("scale", "lr"):
        values = host[name].astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"runs.{name}[{bad[0]}] must be finite, got {values[bad[0]]}")
        for i, v in enumerate(values.tolist()):
            (
                _check_lr(v, f"runs.lr[{i}]")
                if name == "lr"
                else _check_scale(v, spec, f"runs.scale[{i}]")
            )
    for i, d in enumerate(host["depth"].tolist()):
        if not 1 <= d <= spec.max_depth:
            raise ValueError(
                f"runs.depth[{i}]={d} is out of range: valid 1..max_depth={spec.max_depth}"
            )
    for name, choices in (("activation", spec.activations), ("init", spec.inits)):
        for i, v in enumerate(host[name].tolist()):
            _check_index(v, choices, name, f"runs.{name}[{i}]")
    for i, v in enumerate(host["seed"].tolist()):
        _check_seed(v, f"runs.seed[{i}]")
    _check_run_count(spec, len(host["depth"]), "len(runs.depth)", len(host["depth"]))


# ------------------------------------------------------------------------------------ history


class History(NamedTuple):
    """What :func:`train` records, every ``log_every`` steps (``R`` runs, ``T`` records).

    Values at record ``t`` are measured at step ``step[t]``, before that step's update. Norms and
    RMS are float32, unscaled (divided by the loss scale), computed without overflow.

    Attributes:
        step: ``(T,)`` int32.
        loss: ``(R, T)`` training loss (of the step's batch).
        grad_norm: ``(R, T)`` global norm of the gradient.
        update_norm: ``(R, T)`` global norm of the update the optimizer (and fixes) applied.
        layer_grad_rms: ``(R, T, L)`` RMS of each weight layer's gradient (weights and bias
            together), ``L = max_depth + 1``: hidden layers 1..max_depth, then the readout. Layers
            beyond a run's depth are unused and read 0.
        grad_census: ``(R, T, 5)`` counts of normal, subnormal, zero, inf and NaN entries of the
            gradient as computed, in the compute dtype and scaled (:func:`stabkit.census`).
        loss_scale: ``(R, T)`` the loss scale in use (1 without loss scaling).
        nonfinite_grads: ``(R, T)`` steps in ``[step[t], step[t] + log_every)`` whose gradient
            had an inf or NaN entry.
        absorbed: ``(R, T)`` of those, the steps whose applied update was nevertheless finite (a
            fix skipped or clipped them).
        first_nonfinite: ``(R,)`` the first step whose loss was non-finite or whose non-finite
            gradient reached the parameters; -1 if none.
        final_loss: ``(R,)`` loss on the whole data set after the last step.
        final_accuracy: ``(R,)`` for classification, the fraction of the whole data set whose
            arg-max output is the label after the last step (training accuracy; a non-finite
            output row counts as wrong); NaN for regression.
        runs: the :class:`Runs` trained.
    """

    step: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    update_norm: jax.Array
    layer_grad_rms: jax.Array
    grad_census: jax.Array
    loss_scale: jax.Array
    nonfinite_grads: jax.Array
    absorbed: jax.Array
    first_nonfinite: jax.Array
    final_loss: jax.Array
    final_accuracy: jax.Array
    runs: Runs


# ----------------------------------------------------------------------------------- training


def _bits(dtype: jnp.dtype) -> tuple[Any, int, int]:
    """The unsigned type, mantissa bits and exponent bias of float32 or float64."""
    info = jnp.finfo(dtype)
    return (jnp.uint32 if dtype.itemsize == 4 else jnp.uint64), info.nmant, info.maxexp - 1


def _pow2(k: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """Exactly ``2.0**k`` in float32/float64 for integer ``k`` in the normal range (from bits)."""
    dtype = jnp.dtype(dtype)
    uint, nmant, bias = _bits(dtype)
    return jax.lax.bitcast_convert_type((k + bias).astype(uint) << nmant, dtype)


def _rms_rows(a: jax.Array) -> jax.Array:
    """RMS of each row of a float32 (or float64) ``(k, n)`` array, without overflow or underflow.

    Each row is scaled by a power of two near its largest entry (applied as two multiplications
    by normal numbers, so that no reciprocal is flushed to 0), squared, summed and scaled back. A
    row holding inf or NaN gets the plain formula (inf or NaN): that is evidence, not noise.
    """
    finite = jnp.isfinite(a)
    big = jnp.max(jnp.where(finite, jnp.abs(a), 0), axis=1, keepdims=True)
    # the exponent e of big = m * 2**e, m in [0.5, 1), read from the bits (frexp is costly)
    uint, nmant, bias = _bits(a.dtype)
    e = (jax.lax.bitcast_convert_type(big, uint) >> nmant).astype(jnp.int32) - (bias - 1)
    lo, hi = e // 2, e - e // 2
    ss = jnp.mean(jnp.square(a * _pow2(-lo, a.dtype) * _pow2(-hi, a.dtype)), axis=1, keepdims=True)
    safe = jnp.where(ss > 0, ss, 1)  # double `where`: no sqrt'(0) = inf anywhere
    scaled = jnp.where(ss > 0, jnp.sqrt(safe), 0) * _pow2(lo, a.dtype) * _pow2(hi, a.dtype)
    plain = jnp.sqrt(jnp.mean(jnp.square(a), axis=1, keepdims=True))
    return jnp.where(jnp.all(finite, axis=1, keepdims=True), scaled, plain)[:, 0]


def _grad_stats(g: MLPParams, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """RMS of each layer's weight and bias gradient ``(max_depth + 1,)``, and the global norm,
    in ``dtype`` (float32, or float64 for a float64 run)."""
    g = jax.tree.map(lambda v: v.astype(dtype), g)
    d = g.w_hidden.shape[0]
    rows = [
        jnp.concatenate([g.w_in.ravel(), g.b_in])[None],
        jnp.concatenate([g.w_hidden.reshape(d, -1), g.b_hidden], axis=1),
        jnp.concatenate([g.w_out.ravel(), g.b_out])[None],
    ]
    rms = jnp.concatenate([_rms_rows(r) for r in rows])
    sizes = np.array([rows[0].shape[1]] + [rows[1].shape[1]] * d + [rows[2].shape[1]])
    weights = np.sqrt(sizes / sizes.sum()).astype(dtype)
    norm = _rms_rows((rms * weights)[None])[0]
    return rms, norm * np.asarray(np.sqrt(sizes.sum() * len(sizes)), dtype)


def _build_optimizer(spec: TrainSpec, lr: jax.Array) -> optax.GradientTransformation:
    make = _OPTIMIZERS[spec.optimizer] if isinstance(spec.optimizer, str) else spec.optimizer
    opt = make(lr)
    if spec.clip_norm is not None:
        opt = optax.chain(safe_clip_by_global_norm(spec.clip_norm), opt)
    if spec.max_consecutive_skips is not None:
        opt = skip_nonfinite(opt, spec.max_consecutive_skips)
    if spec.loss_scale is not None:
        opt = loss_scaling(opt, spec.loss_scale)
    return opt


def _unit_params(spec: TrainSpec, key: jax.Array, name: Any) -> MLPParams:
    """float32 parameters from :func:`stabkit.mlp_init` with multiplier 1."""
    return mlp_init(
        key,
        depth=spec.max_depth,
        width=spec.width,
        in_dim=spec.task.in_dim,
        out_dim=spec.task.out_dim,
        init=name,
        bias_std=spec.bias_std,
        dtype=jnp.float32,
    )


def _scaled(params: MLPParams, scale: Any, dtype: jnp.dtype) -> MLPParams:
    # Every named initializer is linear in its multiplier: scale the unit draw (rounded once).
    weights = {"w_in", "w_hidden", "w_out"}
    return MLPParams(
        **{
            k: ((v * scale) if k in weights else v).astype(dtype)
            for k, v in params._asdict().items()
        }
    )


def _init_key(seed: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed))[0]


def _init_params(spec: TrainSpec, key: jax.Array, run: Runs, dtype: jnp.dtype) -> MLPParams:
    """One run's initial parameters (what :func:`train` starts from, for tests and users)."""
    return _scaled(_unit_params(spec, key, spec.inits[int(run.init)]), run.scale, dtype)


def _initial_params(spec: TrainSpec, runs: Runs) -> MLPParams:
    """The unit-multiplier initial parameters of every run, stacked ``(R, ...)``.

    Drawn outside the training kernel, one :func:`stabkit.mlp_init` call per distinct (seed,
    initializer): that kernel is compiled once per initializer and shapes and cached, whereas
    a vmapped ``lax.switch`` over the initializers inside the training kernel would make every
    training compilation pay for all of their random-number generators again.
    """
    cache: dict[tuple[int, int], MLPParams] = {}
    rows = []
    for seed, index in zip(
        np.asarray(runs.seed).tolist(), np.asarray(runs.init).tolist(), strict=True
    ):
        if (seed, index) not in cache:
            cache[seed, index] = _unit_params(spec, _init_key(seed), spec.inits[index])
        rows.append(cache[seed, index])
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *rows)


def _loss(spec: TrainSpec, out: jax.Array, y: jax.Array) -> jax.Array:
    # The loss is computed in float32 (mixed precision practice), in float64 for a float64 run.
    out = out.astype(_wide(spec))
    if spec.task.kind == "classification":
        return jnp.mean(softmax_cross_entropy(out, y))
    return 0.5 * jnp.mean(jnp.square(out - y))


def _one_run(
    spec: TrainSpec, run: Runs, unit_params: MLPParams, x: jax.Array, y: jax.Array
) -> History:
    compute = spec.dtype
    store = spec.master_dtype or compute
    wide = _wide(spec)  # the records' dtype: float32, or float64 for a float64 run
    scale_dtype = (
        wide if spec.loss_scale is None else jnp.promote_types(wide, spec.loss_scale.dtype)
    )
    params = _scaled(unit_params, run.scale, store)
    phi = select_activation(spec.activations, run.activation)
    opt = _build_optimizer(spec, run.lr)
    opt_state = opt.init(params)

    def loss_fn(p, xb, yb, scale):
        out = mlp_apply(p, xb, activation=phi, depth=run.depth)
        loss = _loss(spec, out, yb)
        return loss * scale, loss

    def batch(i):
        if spec.batch_size is None:
            return x, y
        k_batch = jax.random.split(jax.random.key(run.seed))[1]
        idx = jax.random.choice(
            jax.random.fold_in(k_batch, i), spec.task.n, (spec.batch_size,), replace=False
        )
        return x[idx], y[idx]

    def step(carry, i):
        params, opt_state, first_bad = carry
        scale = (
            loss_scale_of(opt_state).astype(scale_dtype)
            if spec.loss_scale is not None
            else jnp.ones((), scale_dtype)
        )
        xb, yb = batch(i)
        p_c = jax.tree.map(lambda v: v.astype(compute), params)
        (_, loss), g_c = jax.value_and_grad(loss_fn, has_aux=True)(p_c, xb, yb, scale)
        grads = jax.tree.map(lambda g: g.astype(store), g_c)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        grads_ok = all_finite(g_c)
        update_ok = all_finite(updates)
        failed = ~jnp.isfinite(loss) | (~grads_ok & ~update_ok)
        first_bad = jnp.where((first_bad < 0) & failed, i, first_bad).astype(jnp.int32)
        events = ((~grads_ok).astype(jnp.int32), (~grads_ok & update_ok).astype(jnp.int32))
        return (params, opt_state, first_bad), (loss, g_c, updates, scale), events

    def summarise(raw):
        """The record of one step: loss, norms, per-layer gradient RMS, census, loss scale."""
        loss, g_c, updates, scale = raw
        layer_rms, grad_norm = _grad_stats(
            jax.tree.map(lambda g: g.astype(wide) / scale, g_c), wide
        )
        c = census(jnp.concatenate([g.ravel() for g in jax.tree.leaves(g_c)]))
        return (
            loss,
            grad_norm,
            safe_global_norm(updates).astype(wide),
            layer_rms,
            jnp.stack(list(c)),
            scale,
        )

    k = spec.log_every

    def window(carry, t):
        # One step body serves logged and unlogged steps (one copy to compile): the window keeps
        # the record of its first step and sums the non-finite events of all its steps. The
        # record's statistics are computed on that first step only: `j` is not batched by the
        # vmap over runs, so the `cond` stays a branch and the other steps skip them.
        def body(state, j):
            carry, record, events = state
            carry, raw, new_events = step(carry, t * k + j)
            record = jax.lax.cond(j == 0, lambda: summarise(raw), lambda: record)
            return (carry, record, jax.tree.map(jnp.add, events, new_events)), None

        _, raw, events = jax.eval_shape(step, carry, t * k)
        zeros = jax.tree.map(
            lambda a: jnp.zeros(a.shape, a.dtype), (jax.eval_shape(summarise, raw), events)
        )
        (carry, record, events), _ = jax.lax.scan(
            body, (carry, *zeros), jnp.arange(k, dtype=jnp.int32)
        )
        return carry, (*record, *events)

    n_logs = spec.steps // k
    carry = (params, opt_state, jnp.int32(-1))
    carry, records = jax.lax.scan(window, carry, jnp.arange(n_logs, dtype=jnp.int32))
    params, _, first_bad = carry
    p_c = jax.tree.map(lambda v: v.astype(compute), params)
    out = mlp_apply(p_c, x, activation=phi, depth=run.depth)
    final = _loss(spec, out, y)
    if spec.task.kind == "classification":
        # a row with inf/NaN outputs is wrong, whatever arg-max would pick among its NaNs
        right = (jnp.argmax(out, axis=-1) == y) & jnp.all(jnp.isfinite(out), axis=-1)
        accuracy = jnp.mean(right.astype(wide))
    else:
        accuracy = jnp.asarray(jnp.nan, wide)
    loss, gnorm, unorm, layers, cens, scales, bad, absorbed = records
    return History(
        step=jnp.arange(n_logs, dtype=jnp.int32) * k,
        loss=loss,
        grad_norm=gnorm,
        update_norm=unorm,
        layer_grad_rms=layers,
        grad_census=cens,
        loss_scale=scales,
        nonfinite_grads=bad,
        absorbed=absorbed,
        first_nonfinite=first_bad,
        final_loss=final,
        final_accuracy=accuracy,
        runs=run,
    )


#: How many times the training kernel has been traced (= compiled); tests read it.
_TRACE_COUNT = 0


class _Holder:
    """Carries the spec into the kernel as a static argument hashed by its static fields only."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self._key = spec._static()

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Holder) and self._key == other._key


def train(spec: TrainSpec, runs: Runs) -> History:
    """Train every configuration in ``runs`` under ``spec``, in one compiled, vmapped kernel.

    One compilation serves any values of the runs (depth, scale, activation, initializer,
    learning rate, seed) of the same count, and any task of the same shapes: they are arguments,
    everything in the spec is static. The initial weights are :func:`stabkit.mlp_init`'s for the
    key ``split(key(seed))[0]``, times ``scale``, drawn before the kernel runs (one call per
    distinct seed and initializer; that kernel is cached per initializer and shapes).

    Every field of ``runs`` is checked on the host first, against the spec: an activation or
    initializer index out of range, a depth above ``max_depth``, a seed outside int32 or a
    learning rate/scale float32 cannot hold is refused, never clamped (``lax.switch`` and JAX's
    indexing would clamp it silently), and so is a run count whose memory exceeds the limit.

    A spec with a float64 ``dtype``, ``master_dtype`` or loss scale trains inside
    ``jax.enable_x64(True)`` whatever the global flag (which is left as it was). Its loss and
    records are computed in float64 and returned as NumPy arrays, which stay float64 outside
    ``enable_x64``; the initial weights are the same float32 draw as for every other dtype,
    rounded once to float64.

    Args:
        spec: a :class:`TrainSpec`.
        runs: from :func:`make_runs` (or a :class:`Runs` of ``(R,)`` arrays; Python lists and
            NumPy arrays are accepted).

    Returns:
        A :class:`History` of device arrays with a leading run axis (NumPy arrays for a
        float64 spec).

    Raises:
        TypeError: ``spec`` or ``runs`` of the wrong type; a field of the wrong dtype (a float
            depth, a bool index) or a traced array (``train`` compiles its own kernel: call it
            outside ``jit``).
        ValueError: fields of different shapes or empty; a value out of range (the message
            names the field, the run and the valid range); too many runs for the memory.

    Examples:
        >>> spec = TrainSpec(teacher_student(jax.random.key(0), n=16), max_depth=2, steps=2)
        >>> runs = make_runs(spec)
        >>> train(spec, runs._replace(activation=jnp.array([5])))
        Traceback (most recent call last):
        ...
        ValueError: runs.activation[0] index 5 is out of range for 1 activations (valid 0..0: ...
    """
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"spec must be a TrainSpec, got {type(spec).__name__}")
    if not isinstance(runs, Runs):
        raise TypeError(f"runs must be a Runs (from make_runs), got {type(runs).__name__}")
    _check_runs(spec, runs)
    with _x64(spec):
        runs = Runs(*(jnp.asarray(v, dt) for v, dt in zip(runs, _RUN_DTYPES, strict=True)))
        unit = _initial_params(spec, runs)
        history = _train_jit(_Holder(spec), runs, unit, spec.task.x, spec.task.y)
        if _needs_x64(spec):
            # On the host, so that float64 records stay float64 outside ``enable_x64`` too.
            history = jax.tree.map(np.asarray, history)
    return history


@partial(jax.jit, static_argnums=0)
def _train_jit(holder: _Holder, runs: Runs, unit: MLPParams, x: jax.Array, y: jax.Array) -> History:
    global _TRACE_COUNT
    _TRACE_COUNT += 1
    history = jax.vmap(partial(_one_run, holder.spec), in_axes=(0, 0, None, None))(runs, unit, x, y)
    return history._replace(step=history.step[0])


# ---------------------------------------------------------------------------------- diagnosis


VERDICTS = ("exploding", "vanishing", "healthy")


class Diagnosis(NamedTuple):
    """A verdict per run and the evidence behind it (NumPy arrays of shape ``(R,)``).

    Attributes:
        verdict: ``"exploding"``, ``"vanishing"`` or ``"healthy"`` for each run.
        first_nonfinite: the first step whose loss was non-finite or whose non-finite gradient
            reached the parameters; -1 if none.
        grad_growth: largest finite gradient norm over the first one (inf once it is non-finite).
        loss_growth: largest finite loss over the first one.
        loss_drop: ``1 - last loss / first loss`` (finite records; NaN if none).
        plateau: whether the loss stayed "large and nearly unchanged": within ``plateau_tol`` of
            itself from ``plateau_start`` to the end, over at least ``plateau_fraction`` of the run.
        plateau_start, plateau_end: steps of the final window in which the loss stayed within
            ``plateau_tol`` (relative) of itself; -1 when the last loss is not finite.
        layer_ratio: median over records of RMS gradient of layer 1 over that of the readout.
        grad_to_loss: median over records of gradient norm over loss.
    """

    verdict: tuple[str, ...]
    first_nonfinite: np.ndarray
    grad_growth: np.ndarray
    loss_growth: np.ndarray
    loss_drop: np.ndarray
    plateau: np.ndarray
    plateau_start: np.ndarray
    plateau_end: np.ndarray
    layer_ratio: np.ndarray
    grad_to_loss: np.ndarray

    def summary(self) -> str:
        """Every run's :meth:`explain` line, one per line."""
        return "\n".join(self.explain(i) for i in range(len(self.verdict)))

    def explain(self, i: int) -> str:
        """One line: run ``i``'s verdict and the evidence that decided it."""
        i = positive_int(i, "i", minimum=0)
        if i >= len(self.verdict):
            raise ValueError(f"i={i} is out of range for {len(self.verdict)} runs")
        v = self.verdict[i]
        parts = [f"run {i}: {v}"]
        if self.first_nonfinite[i] >= 0:
            parts.append(f"first non-finite loss/gradient at step {self.first_nonfinite[i]}")
        growth = self.grad_growth[i]
        parts.append(
            f"gradient norm grew {growth:.3g}x" if np.isfinite(growth) else "gradient non-finite"
        )
        parts.append(f"loss {self.loss_growth[i]:.3g}x at most, dropped {self.loss_drop[i]:.1%}")
        if self.plateau_start[i] >= 0:
            parts.append(f"flat (plateau) steps {self.plateau_start[i]}-{self.plateau_end[i]}")
        parts.append(f"layer-1/readout gradient RMS {self.layer_ratio[i]:.3g}")
        parts.append(f"|g|/loss {self.grad_to_loss[i]:.3g}")
        return "; ".join(parts)


def _history_arrays(history: Any) -> dict[str, np.ndarray]:
    if not isinstance(history, History):
        raise TypeError(f"history must be a History (from train), got {type(history).__name__}")
    h = {}
    for f in ("step", "loss", "grad_norm", "layer_grad_rms", "first_nonfinite"):
        try:
            h[f] = np.asarray(getattr(history, f))
        except (TypeError, ValueError) as err:
            raise TypeError(f"history.{f} must be an array of numbers: {err}") from err
    if h["loss"].ndim != 2 or h["loss"].shape[1] == 0:
        raise ValueError(f"history.loss must have shape (runs, records), got {h['loss'].shape}")
    r, t = h["loss"].shape
    want = {"step": (t,), "grad_norm": (r, t), "first_nonfinite": (r,)}
    for f, shape in want.items():
        if h[f].shape != shape:
            raise ValueError(
                f"history.{f} must have shape {shape} (loss is {(r, t)}), got {h[f].shape}"
            )
    lg = h["layer_grad_rms"]
    if lg.ndim != 3 or lg.shape[:2] != (r, t) or lg.shape[2] < 2:
        raise ValueError(
            f"history.layer_grad_rms must have shape ({r}, {t}, layers >= 2), got {lg.shape}"
        )
    for f, arr in h.items():
        if not (np.issubdtype(arr.dtype, np.integer) or is_floating_dtype(arr.dtype)):
            raise TypeError(f"history.{f} must hold real numbers, got dtype {arr.dtype}")
    first = h["first_nonfinite"]
    if not np.issubdtype(first.dtype, np.integer):
        if not np.all(np.isfinite(first) & (first == np.round(first))):
            raise ValueError(f"history.first_nonfinite must hold integer steps, got {first}")
    if np.any(first < -1):
        raise ValueError(f"history.first_nonfinite must be >= -1 (-1: none), got {first}")
    return h


def _plateau_start(loss: np.ndarray, tol: float) -> int:
    """Index of the earliest record from which max/min of the remaining losses <= 1 + tol."""
    if not np.isfinite(loss[-1]):
        return -1
    hi = lo = loss[-1]
    start = len(loss) - 1
    for i in range(len(loss) - 1, -1, -1):
        v = loss[i]
        if not np.isfinite(v):
            break
        hi, lo = max(hi, v), min(lo, v)
        if hi > (1 + tol) * lo:
            break
        start = i
    return start


def diagnose(
    history: History,
    *,
    explode_growth: float = 1e3,
    loss_growth_limit: float = 10.0,
    plateau_tol: float = 0.05,
    plateau_fraction: float = 0.75,
    vanishing_ratio: float = 1e-3,
    vanishing_grad: float = 1e-4,
) -> Diagnosis:
    """A verdict for each run of a :class:`History`: exploding, vanishing or healthy.

    The rules follow the note's symptoms, in this order:

    1. **exploding** if the loss or a gradient that reached the parameters became inf/NaN
       (``first_nonfinite >= 0``), or the gradient norm grew more than ``explode_growth`` times
       over its first value, or the loss rose above ``loss_growth_limit`` times its first value
       (the note's "unstable loss, then NaN").
    2. **vanishing** if the loss stayed "large and nearly unchanged", i.e. within a relative band
       ``plateau_tol`` over the final ``plateau_fraction`` of the run or more, *and* the gradient
       is small: the first layer's RMS gradient is below ``vanishing_ratio`` times the readout's
       (a deep sigmoid net: each layer multiplies it by at most 1/4), or the whole gradient norm
       is below ``vanishing_grad`` times the loss (:math:`W = 0.5 I`: every layer's gradient
       carries a factor :math:`0.5^{\\mathrm{depth}}`, so the layers shrink together and only the
       total shows it). A plateau with a healthy gradient (a learning rate too small, a task the
       net cannot fit) is *not* called vanishing; ``plateau`` reports it.
    3. **healthy** otherwise.

    Args:
        history: from :func:`train`.
        explode_growth: gradient-norm growth that counts as exploding, > 1.
        loss_growth_limit: loss growth that counts as exploding, > 1.
        plateau_tol: relative width of the band a plateau's loss stays in, > 0.
        plateau_fraction: the least part of the run (0..1] a plateau must cover.
        vanishing_ratio: layer-1/readout gradient RMS below which gradients vanish, > 0.
        vanishing_grad: gradient norm per unit of loss below which gradients vanish, > 0.

    Returns:
        A :class:`Diagnosis`.

    Raises:
        TypeError: ``history`` is not a :class:`History`.
        ValueError: its arrays have inconsistent shapes, or a threshold is out of range.

    Examples:
        See the module docstring; a history of the wrong shape is refused:

        >>> h = History(*([np.zeros(3)] * 12), runs=None)
        >>> diagnose(h)
        Traceback (most recent call last):
        ...
        ValueError: history.loss must have shape (runs, records), got (3,)
    """
    for name, value, low in (
        ("explode_growth", explode_growth, 1),
        ("loss_growth_limit", loss_growth_limit, 1),
    ):
        if finite_float(value, name) <= low:
            raise ValueError(f"{name} must be > {low}, got {value}")
    for name, value in (
        ("plateau_tol", plateau_tol),
        ("vanishing_ratio", vanishing_ratio),
        ("vanishing_grad", vanishing_grad),
    ):
        finite_float(value, name, positive=True)
    if not 0 < finite_float(plateau_fraction, "plateau_fraction") <= 1:
        raise ValueError(f"plateau_fraction must be in (0, 1], got {plateau_fraction}")

    h = _history_arrays(history)
    loss = h["loss"].astype(np.float64)
    gnorm = h["grad_norm"].astype(np.float64)
    layers = h["layer_grad_rms"].astype(np.float64)
    step = h["step"]
    first_bad = h["first_nonfinite"].astype(np.int64)
    r, t = loss.shape
    out = {
        k: np.full(r, np.nan)
        for k in ("grad_growth", "loss_growth", "loss_drop", "layer_ratio", "grad_to_loss")
    }
    p_start = np.full(r, -1, np.int64)
    p_end = np.full(r, -1, np.int64)
    plateau = np.zeros(r, bool)
    verdicts = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(r):
            ok = np.isfinite(loss[i]) & np.isfinite(gnorm[i])
            g0, l0 = gnorm[i, 0], loss[i, 0]
            if ok.any():
                out["grad_growth"][i] = np.max(gnorm[i, ok]) / g0
                out["loss_growth"][i] = np.max(loss[i, ok]) / l0
                out["loss_drop"][i] = 1 - loss[i, ok][-1] / l0
                ratio = layers[i, ok, 0] / layers[i, ok, -1]
                out["layer_ratio"][i] = np.nanmedian(ratio) if np.isfinite(ratio).any() else np.nan
                out["grad_to_loss"][i] = np.median(gnorm[i, ok] / loss[i, ok])
            if not ok.all():
                out["grad_growth"][i] = np.inf
            s = _plateau_start(loss[i], plateau_tol)
            if s >= 0:
                p_start[i], p_end[i] = step[s], step[-1]
                covered = (t - s) / t
                plateau[i] = covered >= plateau_fraction
            exploding = (
                first_bad[i] >= 0
                or not np.all(np.isfinite(loss[i]))
                or out["grad_growth"][i] > explode_growth
                or out["loss_growth"][i] > loss_growth_limit
            )
            small = (out["layer_ratio"][i] < vanishing_ratio) or (
                out["grad_to_loss"][i] < vanishing_grad
            )
            if exploding:
                verdicts.append("exploding")
            elif plateau[i] and small:
                verdicts.append("vanishing")
            else:
                verdicts.append("healthy")
    return Diagnosis(
        verdict=tuple(verdicts),
        first_nonfinite=first_bad,
        grad_growth=out["grad_growth"],
        loss_growth=out["loss_growth"],
        loss_drop=out["loss_drop"],
        plateau=plateau,
        plateau_start=p_start,
        plateau_end=p_end,
        layer_ratio=out["layer_ratio"],
        grad_to_loss=out["grad_to_loss"],
    )


# ------------------------------------------------------------------------------ trainable depth


class Trainability(NamedTuple):
    """What :func:`trainability_grid` measured: final training accuracy over depth x sigma_w^2.

    Attributes:
        depth: ``(D,)`` int hidden-layer counts, increasing.
        sigma_w2: ``(S,)`` weight variances :math:`\\sigma_w^2`, increasing.
        sigma_b2: the bias variance :math:`\\sigma_b^2` shared by every run.
        lr: ``(D,)`` the learning rate each depth trained with.
        accuracy: ``(D, S)`` final training accuracy on the whole data set, mean over seeds.
        loss: ``(D, S)`` final training loss, mean over seeds (inf/NaN where a run diverged).
        baseline: accuracy of always answering the most frequent class.
        score: ``(D, S)`` ``(accuracy - baseline) / (1 - baseline)``: 0 at the baseline, 1 when
            every example is right.
        trainable: ``(D, S)`` ``score >= threshold``.
        threshold: the score that counts as trained.
        boundary: ``(S,)`` float, the measured trainable depth: where the score falls through
            ``threshold`` after the last grid depth that is trainable together with every
            shallower one, interpolated linearly in log depth; 0 if the shallowest depth is not
            trainable, ``depth[-1]`` if every depth is (then a lower bound: see ``censored``).
        censored: ``(S,)`` bool, every grid depth trained: the boundary lies beyond the grid.
        history: the :class:`History` of every run, ``(D * S * seeds)`` runs in depth-major order.
    """

    depth: np.ndarray
    sigma_w2: np.ndarray
    sigma_b2: float
    lr: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    baseline: float
    score: np.ndarray
    trainable: np.ndarray
    threshold: float
    boundary: np.ndarray
    censored: np.ndarray
    history: History


def _increasing(values: Any, name: str, convert: Callable[[Any, str], Any]) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=object))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list, got {values!r}")
    items = [convert(v, name) for v in arr.tolist()]
    if any(b <= a for a, b in itertools.pairwise(items)):
        raise ValueError(f"{name} must be strictly increasing, got {items}")
    return np.asarray(items)


def _boundary(depths: np.ndarray, score: np.ndarray, threshold: float):
    """Per column of ``score`` ``(D, S)``: the depth where it first falls below ``threshold``.

    The crossing between the last depth that passes (with every shallower one) and the next is
    interpolated linearly in log depth. Returns the boundaries ``(S,)`` and whether each column
    passed at every depth (then the boundary is ``depths[-1]``, a lower bound).
    """
    ok = np.asarray(score) >= threshold  # NaN fails
    reached = np.cumprod(ok, axis=0).sum(axis=0)
    log_d = np.log(np.asarray(depths, np.float64))
    out = np.zeros(score.shape[1])
    for j, k in enumerate(reached):
        if k == len(depths):
            out[j] = depths[-1]
        elif k > 0:
            hi, lo = score[k - 1, j], score[k, j]
            t = (hi - threshold) / (hi - lo) if np.isfinite(lo) else 0.0
            out[j] = np.exp(log_d[k - 1] + t * (log_d[k] - log_d[k - 1]))
    return out, reached == len(depths)


def trainability_grid(
    task: Task,
    *,
    depth: Any,
    sigma_w2: Any,
    sigma_b2: float = 0.05,
    activation: str | Callable = "tanh",
    width: int = 32,
    steps: int = 300,
    batch_size: int | None = 32,
    optimizer: str | Callable[[Any], optax.GradientTransformation] = "adam",
    lr: float | Callable[[int], float] = 1e-3,
    seeds: int = 1,
    threshold: float = 0.5,
) -> Trainability:
    """Train a depth x sigma_w^2 grid from mean-field initialisation; measure which nets train.

    Schoenholz et al. (2017) found that random networks with weights :math:`N(0, \\sigma_w^2/n)`
    and biases :math:`N(0, \\sigma_b^2)` train only up to about :math:`6 \\xi_c` layers, where
    :math:`\\xi_c` (:func:`stabkit.xi_c`) is the depth over which two inputs' correlation forgets
    its start; it diverges on the critical line (:func:`stabkit.critical_line`). This trains the
    grid in **one** compiled :func:`train` call (``init="gaussian"`` with ``scale = sigma_w``,
    ``bias_std = sigma_b``; depth is data, so every run pays for the deepest) and reports the
    final training accuracy, a trainable flag and the measured boundary per :math:`\\sigma_w^2`.

    **Trainable** means a final training accuracy at least ``threshold`` of the way from the
    majority-class baseline to 1: ``score = (accuracy - baseline) / (1 - baseline) >= threshold``,
    with the accuracy averaged over seeds. A network that has lost its inputs' correlation
    structure can only learn the class frequencies, so it stays near score 0.

    Args:
        task: a classification :class:`Task` (e.g. :func:`teacher_classification`).
        depth: hidden-layer counts, strictly increasing ints >= 1.
        sigma_w2: weight variances, strictly increasing, > 0.
        sigma_b2: the bias variance, >= 0.
        activation: a name or elementwise callable.
        width: units per hidden layer.
        steps: optimizer steps per run (the fixed budget).
        batch_size: examples per step; None: the full set.
        optimizer: as for :class:`TrainSpec`.
        lr: the learning rate, or a function ``depth -> lr`` (a deeper net usually needs a smaller
            one; the value must be finite and > 0).
        seeds: independent initialisations (and batch orders) per cell, >= 1.
        threshold: the score that counts as trained, in (0, 1].

    Returns:
        A :class:`Trainability`.

    Raises:
        TypeError: ``task`` is not a :class:`Task`, a non-numeric grid value or ``lr``.
        ValueError: a regression task, a grid that is empty or not increasing, a non-positive
            variance, depth or learning rate, a threshold outside (0, 1].

    References:
        S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep Information
        Propagation", ICLR 2017, section 5 (trainability and :math:`6 \\xi_c`).

    Examples:
        Depth 2 trains at every :math:`\\sigma_w^2`; depth 64 is past :math:`12 \\xi_c` in the
        ordered (0.5) and chaotic (8) phases, and too deep for 100 steps at criticality (1.76).

        >>> task = teacher_classification(jax.random.key(0), n=128, n_classes=2)
        >>> g = trainability_grid(task, depth=[2, 64], sigma_w2=[0.5, 1.76, 8.0], width=16,
        ...                       steps=100, batch_size=16, lr=0.01)
        >>> g.trainable  # depth x sigma_w^2
        array([[ True,  True,  True],
               [False, False, False]])
        >>> g.accuracy.shape, g.boundary.shape, g.history.loss.shape
        ((2, 3), (3,), (6, 1))
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    if task.kind != "classification":
        raise ValueError(f"trainability_grid needs a classification task, got {task.kind!r}")
    depths = _increasing(depth, "depth", positive_int)
    sw2 = _increasing(sigma_w2, "sigma_w2", partial(finite_float, positive=True))
    sb2 = finite_float(sigma_b2, "sigma_b2")
    if sb2 < 0:
        raise ValueError(f"sigma_b2 must be >= 0, got {sb2}")
    seeds = positive_int(seeds, "seeds")
    threshold = finite_float(threshold, "threshold")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if callable(lr):
        lrs = [finite_float(lr(int(d)), f"lr({int(d)})") for d in depths]
    else:
        lrs = [finite_float(lr, "lr")] * len(depths)
    for d, v in zip(depths, lrs, strict=True):
        if v <= 0:
            raise ValueError(f"lr must be > 0, got {v} at depth {d}")
    spec = TrainSpec(
        task,
        max_depth=int(depths[-1]),
        width=width,
        activations=(activation,),
        inits=("gaussian",),
        optimizer=optimizer,
        steps=steps,
        log_every=steps,
        batch_size=batch_size,
        bias_std=float(np.sqrt(sb2)),
    )
    _check_run_count(
        spec,
        len(depths) * len(sw2) * seeds,
        "seeds",
        seeds,
        f" ({len(depths)} depths x {len(sw2)} sigma_w2 x {seeds} seeds)",
    )
    rows = list(itertools.product(range(len(depths)), range(len(sw2)), range(seeds)))
    runs = make_runs(
        spec,
        depth=[int(depths[i]) for i, _, _ in rows],
        scale=[float(np.sqrt(sw2[j])) for _, j, _ in rows],
        lr=[lrs[i] for i, _, _ in rows],
        seed=[s for _, _, s in rows],
        product=False,
    )
    history = train(spec, runs)
    shape = (len(depths), len(sw2), seeds)
    accuracy = np.asarray(history.final_accuracy, np.float64).reshape(shape).mean(axis=-1)
    loss = np.asarray(history.final_loss, np.float64).reshape(shape).mean(axis=-1)
    counts = np.bincount(np.asarray(task.y), minlength=task.out_dim)
    baseline = float(counts.max() / counts.sum())
    score = (accuracy - baseline) / (1 - baseline) if baseline < 1 else np.zeros_like(accuracy)
    trainable = score >= threshold
    boundary, censored = _boundary(depths, score, threshold)
    return Trainability(
        depth=depths,
        sigma_w2=sw2,
        sigma_b2=sb2,
        lr=np.asarray(lrs),
        accuracy=accuracy,
        loss=loss,
        baseline=baseline,
        score=score,
        trainable=trainable,
        threshold=threshold,
        boundary=boundary,
        censored=censored,
        history=history,
    )
