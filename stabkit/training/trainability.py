"""The trainable-depth study: :func:`trainability_grid` trains depth x sigma_w^2 in one call.

Schoenholz et al. (2017): random tanh nets train only up to about :math:`6 \\xi_c` layers. The
grid is one :func:`~stabkit.training.loop.train` call from mean-field initialisation; the result
is a :class:`Trainability` with the measured boundary per :math:`\\sigma_w^2`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import optax

from stabkit._checks import finite_float, positive_int
from stabkit.training.loop import History, train
from stabkit.training.runs import make_runs
from stabkit.training.spec import TrainSpec, _check_run_count
from stabkit.training.tasks import Task

__all__ = [
    "Trainability",
    "trainability_grid",
]


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

        >>> import jax
        >>> from stabkit.training import teacher_classification
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
        activation=activation,
        init="gaussian",
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
