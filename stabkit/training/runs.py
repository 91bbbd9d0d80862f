"""The configurations one :func:`~stabkit.training.loop.train` call trains: :class:`Runs`.

Depth, weight scale, activation, initializer, learning rate, seed and the training fixes' values
(warm-up steps, z-loss coefficient, independent weight decay, attention-logit soft cap) are data,
one entry per run:
:func:`make_runs` lists them (every combination, or zipped), and ``_check_runs`` checks a
:class:`Runs` on the host against its spec before the kernel sees it (no silent clamps).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from stabkit._checks import INT32_MAX, finite_float, is_floating_dtype, positive_int, strict_bool
from stabkit.training.spec import TrainSpec, _check_run_count, _dtype_max

__all__ = [
    "Runs",
    "make_runs",
]


class Runs(NamedTuple):
    """The configurations of one :func:`train` call, one entry per run (all shape ``(R,)``).

    :func:`train` checks every field on the host before the kernel sees it (an index out of range
    would otherwise be clamped silently by ``lax.switch`` or JAX's indexing).

    Attributes:
        depth: int32 hidden layers used, 1..``max_depth``.
        scale: float32 multiplier of the initial weights, ``|scale|`` at most the largest finite
            value of the run's dtypes (and 0 or at least float32's smallest normal number).
        activation: int32 index into ``TrainSpec.activation`` (the internal encoding of the
            names :func:`make_runs` takes).
        init: int32 index into ``TrainSpec.init``.
        lr: float32 learning rate, > 0, a normal float32 number.
        seed: int32 seed of the initial weights and the batches, 0..2**31 - 1.
        warmup: int32 steps of linear learning-rate warm-up, 0..steps (0: none); the learning
            rate is ``lr * min(1, (t + 1) / warmup) * decay(t)`` with the spec's ``schedule``.
        z_loss: float32 coefficient of the z-loss ``z_loss * mean(log Z ** 2)`` added to a
            classification loss (``log Z`` the logsumexp of the output logits; Chowdhery et al.
            2022 use 1e-4), >= 0; 0 is off (the loss is then bit-identical to no z-loss).
        weight_decay: float32 independent weight decay ``theta -= m(t) * weight_decay * theta``
            (``m(t)`` the schedule's multiplier, *not* times the learning rate: Wortsman et al.
            2023's "independent" decay; AdamW's is times the learning rate), >= 0.
        softcap: float32 soft cap of the attention logits ``c * tanh(logits / c)`` (0: off);
            only for a network of attention blocks.

    The last four default to ``None`` when a ``Runs`` is built by hand: :func:`train` reads
    ``None`` as 0 for every run.
    """

    depth: jax.Array
    scale: jax.Array
    activation: jax.Array
    init: jax.Array
    lr: jax.Array
    seed: jax.Array
    warmup: jax.Array | None = None
    z_loss: jax.Array | None = None
    weight_decay: jax.Array | None = None
    softcap: jax.Array | None = None


_RUN_DTYPES = (
    jnp.int32,
    jnp.float32,
    jnp.int32,
    jnp.int32,
    jnp.float32,
    jnp.int32,
    jnp.int32,
    jnp.float32,
    jnp.float32,
    jnp.float32,
)

#: The fixes' fields, 0 (off) where a hand-built Runs leaves them None.
_FIX_FIELDS = ("warmup", "z_loss", "weight_decay", "softcap")


class _Features(NamedTuple):
    """Which of the per-run fixes a grid uses (static: the kernel computes only those). A grid
    that uses none compiles the program of a plain run, whose arithmetic a multiplier of 1 or a
    decay of 0 would perturb (XLA contracts ``p - lr * g`` into one fused multiply-add, a
    schedule's extra multiplication rounds it differently); a grid that uses one computes it
    for all of its runs (a run's 0 is then exact: the decay and the z-loss are selected away)."""

    schedule: bool = True
    weight_decay: bool = True
    z_loss: bool = True


def _features(spec: TrainSpec, runs: Runs) -> _Features:
    """The fixes the runs (checked, host values) use: a warm-up or a decaying schedule, a
    weight decay, a z-loss."""
    return _Features(
        schedule=spec.schedule != "constant" or bool(np.any(np.asarray(runs.warmup) > 0)),
        weight_decay=bool(np.any(np.asarray(runs.weight_decay) > 0)),
        z_loss=bool(np.any(np.asarray(runs.z_loss) > 0)),
    )


def _filled(runs: Runs) -> Runs:
    """``runs`` with the fixes' fields that are None set to zeros of the runs' length."""
    missing = {f: getattr(runs, f) is None for f in _FIX_FIELDS}
    if not any(missing.values()):
        return runs
    n = np.shape(runs.depth)[0] if np.ndim(runs.depth) == 1 else 0
    return runs._replace(
        **{
            f: np.zeros(n, _RUN_DTYPES[Runs._fields.index(f)])
            for f, none in missing.items()
            if none
        }
    )


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
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"{label}={value} is out of range: seeds are int32, valid 0..{INT32_MAX}")


def _check_index(value: int, choices: tuple, what: str, label: str) -> None:
    if not 0 <= value < len(choices):
        raise ValueError(
            f"{label} index {value} is out of range for {len(choices)} {what}s "
            f"(valid 0..{len(choices) - 1}: {choices})"
        )


def _check_fix(spec: TrainSpec, name: str, value: float, label: str) -> None:
    """A training fix's value: warm-up steps in 0..steps, the others finite and >= 0 (float32)."""
    if name == "warmup":
        if not 0 <= value <= spec.steps:
            raise ValueError(
                f"{label}={value} is out of range: warm-up steps, valid 0..steps={spec.steps}"
            )
        return
    what = {
        "z_loss": "a z-loss coefficient",
        "weight_decay": "a weight decay",
        "softcap": "an attention-logit soft cap (0: off)",
    }[name]
    if not value >= 0:
        raise ValueError(f"{label}={value} is invalid: {what} must be >= 0")
    if value > float(_F32.max):
        raise ValueError(f"{label}={value} is too large: the runs hold it in float32")
    if name == "z_loss" and value and spec.task.kind != "classification":
        raise ValueError(
            f"{label}={value}: the z-loss penalises the log-partition of classification "
            f"logits; this task is {spec.task.kind}"
        )
    if name == "softcap" and value and not any("softcap" in b.hyper_defaults for b in spec.blocks):
        raise ValueError(
            f"{label}={value}: the soft cap applies to attention logits, and this spec's network "
            f"has no attention block ({spec.blocks[0].describe() if spec.blocks else 'an MLP'})"
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
    """The indices (the internal encoding of :class:`Runs`) of the named choices ``values``."""
    out = []
    for v in _values(values, what):
        if not isinstance(v, str) and not callable(v):
            raise TypeError(
                f"{what} takes names from the spec's {what} {choices} (or the callables given "
                f"there), got {type(v).__name__} {v!r}"
            )
        if v not in choices:
            raise ValueError(f"{what} {v!r} is not among the spec's {what} {choices}")
        out.append(choices.index(v))
    return out


def make_runs(
    spec: TrainSpec,
    *,
    depth: Any = None,
    scale: Any = 1.0,
    activation: Any = None,
    init: Any = None,
    lr: Any = 0.01,
    seed: Any = 0,
    warmup: Any = 0,
    z_loss: Any = 0.0,
    weight_decay: Any = 0.0,
    softcap: Any = 0.0,
    product: bool = True,
    **unknown: Any,
) -> Runs:
    """The runs to train: every combination of the values given (``product=True``), or zipped.

    Each argument is a value or a list; ``activation`` and ``init`` take names from the spec's
    choices (or the callables given there) and default to its first choice; ``depth`` defaults
    to ``spec.max_depth``. ``warmup``, ``z_loss``, ``weight_decay`` and ``softcap`` are the
    training fixes' values per run (see :class:`Runs`; 0 is off). With ``product=False`` the lists
    are broadcast against each other (lists of one length, or single values).

    Raises:
        TypeError: an unknown keyword (a fix stabkit does not have, a misspelt field); a value
            of the wrong type (a float depth, a non-numeric scale), a non-bool ``product``; an
            ``activation`` or ``init`` that is not a name (an index).
        ValueError: a depth outside 1..max_depth; a scale that is not finite, larger than the
            largest finite value of the run's dtypes or flushed to 0 in float32; a learning rate
            that is not > 0 or out of float32's normal range; a seed outside 0..2**31 - 1; an
            activation/initializer the spec does not offer; a warm-up outside 0..steps; a
            negative or non-finite z-loss coefficient, weight decay or soft cap; a soft cap on
            a network without attention; an empty list; lists of
            mismatched lengths; more runs than fit in memory (all train at once).

    Examples:
        >>> from stabkit.training import teacher_student
        >>> spec = TrainSpec(teacher_student(jax.random.key(0), n=32), max_depth=8,
        ...                  activation=("relu", "tanh"))
        >>> runs = make_runs(spec, depth=[2, 8], activation=["relu", "tanh"], lr=[0.1, 0.01],
        ...                  seed=[0, 1])
        >>> runs.depth.shape, runs.activation[:4].tolist()
        ((16,), [0, 0, 0, 0])
        >>> make_runs(spec, seed=2**40)
        Traceback (most recent call last):
        ...
        ValueError: seed=1099511627776 is out of range: seeds are int32, valid 0..2147483647
    """
    if unknown:
        name = sorted(unknown)[0]
        raise TypeError(
            f"make_runs has no run field or fix {name!r}; valid: {', '.join(Runs._fields)}, "
            "product (qk-layernorm is the block's: block('attention', qk_norm=True); the "
            "schedule and the rounding rule are the spec's: TrainSpec(schedule=, rounding=))"
        )
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"spec must be a TrainSpec, got {type(spec).__name__}")
    product = strict_bool(product, "product")
    depth = spec.max_depth if depth is None else depth
    axes = {
        "depth": [positive_int(d, "depth") for d in _values(depth, "depth")],
        "scale": [finite_float(v, "scale") for v in _values(scale, "scale")],
        "activation": _index(
            spec.activation[0] if activation is None else activation, spec.activation, "activation"
        ),
        "init": _index(spec.init[0] if init is None else init, spec.init, "init"),
        "lr": [finite_float(v, "lr") for v in _values(lr, "lr")],
        "seed": [positive_int(v, "seed", minimum=0) for v in _values(seed, "seed")],
        "warmup": [positive_int(v, "warmup", minimum=0) for v in _values(warmup, "warmup")],
        **{
            name: [finite_float(v, name) for v in _values(value, name)]
            for name, value in (
                ("z_loss", z_loss),
                ("weight_decay", weight_decay),
                ("softcap", softcap),
            )
        },
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
    for name in _FIX_FIELDS:
        for v in axes[name]:
            _check_fix(spec, name, v, name)
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


def _check_runs(spec: TrainSpec, runs: Runs) -> Runs:
    """Every field of ``runs`` on the host: shape ``(R,)``, dtype and range (no silent clamps).
    Returns ``runs`` with the fixes' None fields filled with zeros."""
    runs = _filled(runs)
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
    for name in ("scale", "lr", "z_loss", "weight_decay", "softcap"):
        values = host[name].astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"runs.{name}[{bad[0]}] must be finite, got {values[bad[0]]}")
        for i, v in enumerate(values.tolist()):
            if name == "lr":
                _check_lr(v, f"runs.lr[{i}]")
            elif name == "scale":
                _check_scale(v, spec, f"runs.scale[{i}]")
            else:
                _check_fix(spec, name, v, f"runs.{name}[{i}]")
    for i, d in enumerate(host["depth"].tolist()):
        if not 1 <= d <= spec.max_depth:
            raise ValueError(
                f"runs.depth[{i}]={d} is out of range: valid 1..max_depth={spec.max_depth}"
            )
    for name, choices in (("activation", spec.activation), ("init", spec.init)):
        for i, v in enumerate(host[name].tolist()):
            _check_index(v, choices, name, f"runs.{name}[{i}]")
    for i, v in enumerate(host["seed"].tolist()):
        _check_seed(v, f"runs.seed[{i}]")
    for i, v in enumerate(host["warmup"].tolist()):
        _check_fix(spec, "warmup", v, f"runs.warmup[{i}]")
    _check_run_count(spec, len(host["depth"]), "len(runs.depth)", len(host["depth"]))
    return runs
