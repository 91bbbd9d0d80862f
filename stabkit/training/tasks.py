"""Tasks that need no download: a checked :class:`Task`, and teacher networks that make one.

* :class:`Task` holds a full data set, checked on the host before JAX sees it (finite inputs and
  targets, integer labels in range).
* :func:`teacher_student`: regression onto a random relu teacher.
* :func:`teacher_classification`: the teacher's arg-max as the label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import (
    check_memory,
    finite_float,
    is_floating_dtype,
    memory_limit,
    positive_int,
)
from stabkit.nets import mlp_apply, mlp_init

__all__ = [
    "Task",
    "teacher_classification",
    "teacher_student",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A full data set: inputs ``x`` ``(n, in_dim)`` or ``(n, seq, in_dim)`` and targets ``y``.

    With a sequence axis (a network of attention or ``conv1d`` blocks) the targets are per
    position: ``(n, seq, out_dim)`` for regression, ``(n, seq)`` labels for classification (a
    next-token task: the loss is the mean over examples and positions).

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
        if x.ndim not in (2, 3) or 0 in x.shape:
            raise ValueError(
                f"x must be a non-empty floating (n, in_dim) or (n, seq, in_dim) array, got "
                f"{x.shape}"
            )
        x = _canonical(x, "x", "inputs")
        y = _data_array(self.y, "y")
        rows = x.shape[:-1]  # (n,) or (n, seq): one target per example and position
        want = rows if classify else (*rows, out_dim)
        if classify:
            # Checked on the host, before JAX sees them: int64 labels beyond int32 would wrap
            # (2**40 becomes 0) and a label >= out_dim gives a NaN loss at every step.
            if not np.issubdtype(y.dtype, np.integer):
                raise TypeError(f"classification labels y must be integers, got dtype {y.dtype}")
            if y.shape != want:
                raise ValueError(f"y must have shape {want} for {self.kind}, got {y.shape}")
            bad = np.argwhere((y < 0) | (y >= out_dim))
            if bad.size:
                first = tuple(int(i) for i in bad[0])
                at = first[0] if len(first) == 1 else first
                raise ValueError(
                    f"labels y must be class indices in [0, out_dim={out_dim}), got {y[first]} "
                    f"at index {at} ({len(bad)} out of range)"
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
        return int(self.x.shape[-1])

    @property
    def seq_len(self) -> int | None:
        """Positions per example, None without a sequence axis."""
        return int(self.x.shape[1]) if self.x.ndim == 3 else None

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
