"""Tell explode from vanish in a run's :class:`~stabkit.training.loop.History`: :func:`diagnose`.

The note names what a researcher sees: **exploding** gradients make the loss unstable and then
NaN; **vanishing** gradients leave the loss large and nearly unchanged. :func:`diagnose` returns
a :class:`Diagnosis`, a verdict per run with its evidence.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from stabkit._checks import finite_float, is_floating_dtype, positive_int
from stabkit.training.loop import History

__all__ = [
    "Diagnosis",
    "diagnose",
]


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
