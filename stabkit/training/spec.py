"""What one compiled :func:`~stabkit.training.loop.train` call serves: the :class:`TrainSpec`.

The spec fixes the task, the widths, the activations and initializers to choose from, the
optimizer, the steps, the dtypes and the fixes; it validates itself when built (compiling
nothing) and bounds one run's memory. The dtype helpers (``_x64``, ``_wide``) and the memory
estimate of a run (``_run_bytes``, ``_check_run_count``) live here because the spec decides them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from jax.typing import DTypeLike

from stabkit._checks import (
    INT32_MAX,
    bounded_int,
    check_elementwise,
    check_initializer,
    check_memory,
    choice,
    finite_float,
    format_bytes,
    is_floating_dtype,
    positive_int,
)
from stabkit._numerics import compute_dtype
from stabkit.activations import get_activation
from stabkit.fixes import DynamicLossScale
from stabkit.init import get_initializer
from stabkit.networks.blocks import Block
from stabkit.networks.kinds import block as make_block
from stabkit.networks.kinds import block_names
from stabkit.training.optimizers import _OPTIMIZERS, _probe_optimizer, optimizer_names
from stabkit.training.tasks import Task, _first_too_large

__all__ = [
    "TrainSpec",
]


#: The learning-rate schedules after warm-up (:class:`TrainSpec` ``schedule``).
SCHEDULES = ("constant", "cosine", "linear")

#: How an update reaches the stored parameters (:class:`TrainSpec` ``rounding``).
ROUNDINGS = ("nearest", "kahan", "stochastic")


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


def _check_block(block: Any, activation: tuple, init: tuple, task: Task) -> Any:
    """``block`` as None, a kind name or a :class:`Block` that a training task can feed."""
    spatial = task.x.ndim - 2
    if block is None:
        if spatial:
            raise ValueError(
                f"the task's inputs have a sequence axis {task.x.shape}: the MLP takes "
                "(examples, features); train a network of blocks (block='attention', "
                "'conv1d'...)"
            )
        return None
    if isinstance(block, str):
        block = choice(block, "block", block_names())
        blocks = [make_block(block, activation=a) for a in activation]
    elif isinstance(block, Block):
        if len(activation) != 1:
            raise ValueError(
                "a Block holds its activation: TrainSpec(block=Block) takes a single activation "
                f"value (unused), got {len(activation)}"
            )
        blocks = [block]
    else:
        raise TypeError(
            "block must be None, a block kind name or a Block, got "
            f"{type(block).__name__} {block!r}"
        )
    names = {0: "(examples, features)", 1: "(examples, sequence, features)"}
    for b in blocks:
        if spatial not in b.spatial:
            raise ValueError(
                f"a {b.describe()} block takes inputs with {b.spatial[0]} spatial axes, and this "
                f"task's inputs are {names[spatial]}, shape {task.x.shape}"
            )
    bad = [i for i in init if not isinstance(i, str)]
    if bad:
        raise TypeError(f"a network of blocks takes initializer names, got {bad[0]!r}")
    return block


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
    return compute_dtype(jnp.promote_types(spec.dtype, store))


def _run_bytes(spec: TrainSpec, width: int, max_depth: int, records: int) -> int:
    """An upper estimate of the memory one run takes in the training kernel."""
    t = spec.task
    store = jnp.dtype(spec.master_dtype or spec.dtype).itemsize
    comp = jnp.dtype(spec.dtype).itemsize
    n_params = (t.in_dim + 1) * width + max_depth * (width + 1) * width + (width + 1) * t.out_dim
    if spec.block is not None:  # a block's parameters, by shape (nothing runs)
        n_params += max_depth * max(_block_entries(b, width) for b in spec.blocks)
    # the float32 draw; master weights, gradient, update and two optimizer moments; the compute
    # copy, its gradient and the cotangents
    per_param = 4 + 6 * store + 3 * comp
    rows = spec.batch_size or t.n
    seq = t.seq_len or 1
    # pre- and post-activations kept for the backward pass, and the final pass over the data;
    # a block's intermediates (an MLP's expansion, attention's q, k, v and its (seq, seq)
    # logits and probabilities) bounded by 8 widths and 8 seq per position
    per_position = 3 * width + (0 if spec.block is None else 8 * (width + seq))
    activations = (rows * (max_depth + 2) * per_position + 2 * t.n * width) * seq * comp
    activations += t.n * seq * t.out_dim * 4  # the final logits, float32
    history = records * (3 * max_depth + 2 + 20) * _wide(spec).itemsize
    return n_params * per_param + activations + history


def _block_entries(block: Block, width: int) -> int:
    shapes = jax.eval_shape(
        lambda k: block.init(k, width, jnp.float32, "gaussian", dict(block.hyper_defaults)),
        jax.random.key(0),
    )
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


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

    Validation runs on the host and compiles nothing: callable ``activation``, ``init`` and
    ``optimizer`` are traced once (:func:`jax.eval_shape`) on small inputs, so a callable of the
    wrong kind is named here rather than failing inside the training kernel; one run's memory
    (parameters, gradients, optimizer state, activations, history) is estimated and refused,
    naming ``width``, ``max_depth`` or ``steps``, where it exceeds the memory available.

    Attributes:
        task: the data (:func:`teacher_student`, :func:`teacher_classification` or a :class:`Task`).
        max_depth: hidden layers the parameters hold; each run uses ``depth <= max_depth``.
        width: units per hidden layer.
        activation: the activations a run chooses from: a name (or callable) or a tuple of them
            (the spelling of :class:`stabkit.SweepSpec`); :func:`make_runs` picks by name.
        init: the initializers a run chooses from: a name (or ``init(key, shape, dtype)``
            callable) or a tuple of them; a run's ``scale`` multiplies the
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
        block: None (default) trains the MLP; a block kind name (``"residual"``, ``"dense"``...,
            built for each of ``activation``'s names: ``stabkit.block(kind, activation=a)``) or a
            :class:`stabkit.Block` (then ``activation`` must be a single value; the block holds
            it) trains the network of blocks ``stabkit.net_init(key(seed), block,
            depth=max_depth, width=width, in_dim=..., out_dim=..., init=..., scale=scale,
            bias_std=bias_std, alpha=alpha)`` with an embedding and a readout. Every array of its
            parameters is trained, norm gains and a ``learnable_alpha``'s alpha included; its
            hyper-parameters (scale, alpha, eps...) are not. The task's inputs have no sequence
            axis: a block must take ``(batch, width)`` inputs.
            A task whose inputs have a sequence axis ``(n, seq, in_dim)`` (a next-token task,
            :func:`stabkit.training.markov_sequences`) needs a block that takes one
            (``"attention"``, ``"conv1d"``): a small decoder-only transformer is
            ``block=stabkit.block("attention", heads=2, causal=True, mlp=True, norm="layer")``
            with ``final_norm="layer"``; its records add the attention logits' maximum and
            entropy per block and the output log-partition.
        alpha: the blocks' residual scale (a ``learnable_alpha`` block starts from it).
        final_norm: ``None``, ``"layer"`` or ``"rms"``: the network's norm before the readout
            (a pre-norm transformer's final layer norm); only with ``block``.
        schedule: the learning-rate multiplier after each run's warm-up (:class:`Runs`
            ``warmup``): ``"constant"``, ``"cosine"`` (to 0 at the last step) or ``"linear"``
            (to 0 at the last step). It multiplies the optimizer's update, and a run's
            independent weight decay.
        rounding: how an update reaches parameters stored in a low-precision dtype:
            ``"nearest"`` (round to nearest, what ``optax.apply_updates`` does),
            ``"kahan"`` (:func:`stabkit.kahan_summation`: a compensation buffer keeps what
            rounding lost) or ``"stochastic"`` (:func:`stabkit.stochastic_rounding`, keyed by
            ``fold_in(key(seed), 4)``). Applied last, after the schedule and weight decay.
        bias_std: standard deviation of the initial biases, >= 0 and at most the largest
            finite value of the run's dtypes. With ``init="gaussian"``
            and a run's ``scale = sigma_w`` the weights are :math:`N(0, \\sigma_w^2/n_{in})` and the
            biases :math:`N(0, \\sigma_b^2)` for ``bias_std = sigma_b``: the mean-field
            parametrisation of :mod:`stabkit.theory` (see :func:`trainability_grid`).
    """

    task: Task
    max_depth: int
    width: int = 32
    activation: tuple = ("relu",)
    init: tuple = ("he_normal",)
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
    block: Any = None
    alpha: float = 1.0
    final_norm: str | None = None
    schedule: str = "constant"
    rounding: str = "nearest"

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
        set_("activation", _names(self.activation, "activation", get_activation))
        set_("init", _names(self.init, "init", get_initializer))
        for i, init in enumerate(self.init):
            if not isinstance(init, str):
                check_initializer(init, f"init[{i}]", jax.random.key(0), (3, 4), jnp.float32)
        if isinstance(self.optimizer, str):
            if self.optimizer not in _OPTIMIZERS:
                raise ValueError(
                    f"unknown optimizer {self.optimizer!r}; valid names: "
                    f"{', '.join(optimizer_names())} (or pass lr -> GradientTransformation)"
                )
        elif not callable(self.optimizer):
            raise TypeError(f"optimizer must be a name or a callable, got {self.optimizer!r}")
        set_("steps", bounded_int(self.steps, "steps", 1, INT32_MAX, "the step counter is int32"))
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
                    INT32_MAX,
                    "the skip counter is int32",
                ),
            )
        if self.loss_scale is not None and not isinstance(self.loss_scale, DynamicLossScale):
            raise TypeError(f"loss_scale must be a DynamicLossScale, got {self.loss_scale!r}")
        set_("alpha", finite_float(self.alpha, "alpha"))
        set_("block", _check_block(self.block, self.activation, self.init, self.task))
        if self.final_norm is not None:
            if self.block is None:
                raise ValueError(
                    f"final_norm={self.final_norm!r} needs a network of blocks (block=...); the "
                    "MLP has no final norm"
                )
            set_("final_norm", choice(self.final_norm, "final_norm", ("layer", "rms")))
        set_("schedule", choice(self.schedule, "schedule", SCHEDULES))
        set_("rounding", choice(self.rounding, "rounding", ROUNDINGS))
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
            for i, phi in enumerate(self.activation):
                if not isinstance(phi, str):
                    check_elementwise(phi, f"activation[{i}]", self.dtype)
            if not isinstance(self.optimizer, str):
                _probe_optimizer(self.optimizer, self.master_dtype or self.dtype)

    @property
    def n_weights(self) -> int:
        """Rows of ``History.layer_grad_rms``: for the MLP its weight matrices, ``max_depth``
        hidden layers and the readout (a sweep's ``n_layers`` counts layer slots, input
        included: ``max_depth + 2``); for a network of blocks the embedding, ``max_depth``
        blocks and the readout."""
        return self.max_depth + (1 if self.block is None else 2)

    @property
    def blocks(self) -> tuple:
        """The network's block for each activation (empty for the MLP)."""
        if self.block is None:
            return ()
        if isinstance(self.block, Block):
            return (self.block,)
        return tuple(make_block(self.block, activation=a) for a in self.activation)

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
