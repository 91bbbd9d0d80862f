"""The configurations one :func:`~stabkit.training.loop.train` call trains: :class:`Runs`.

Depth, weight scale, activation, initializer, learning rate and seed are data, one entry per run:
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
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"{label}={value} is out of range: seeds are int32, valid 0..{INT32_MAX}")


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
    product: bool = True,
) -> Runs:
    """The runs to train: every combination of the values given (``product=True``), or zipped.

    Each argument is a value or a list; ``activation`` and ``init`` take names from the spec's
    choices (or the callables given there) and default to its first choice; ``depth`` defaults
    to ``spec.max_depth``. With ``product=False`` the lists
    are broadcast against each other (lists of one length, or single values).

    Raises:
        TypeError: a value of the wrong type (a float depth, a non-numeric scale), a non-bool
            ``product``; an ``activation`` or ``init`` that is not a name (an index).
        ValueError: a depth outside 1..max_depth; a scale that is not finite, larger than the
            largest finite value of the run's dtypes or flushed to 0 in float32; a learning rate
            that is not > 0 or out of float32's normal range; a seed outside 0..2**31 - 1; an
            activation/initializer the spec does not offer; an empty list; lists of
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
    for name, choices in (("activation", spec.activation), ("init", spec.init)):
        for i, v in enumerate(host[name].tolist()):
            _check_index(v, choices, name, f"runs.{name}[{i}]")
    for i, v in enumerate(host["seed"].tolist()):
        _check_seed(v, f"runs.seed[{i}]")
    _check_run_count(spec, len(host["depth"]), "len(runs.depth)", len(host["depth"]))
