"""Tell explode from vanish in a run's :class:`~stabkit.training.history.History`: :func:`diagnose`.

The note names what a researcher sees: **exploding** gradients make the loss unstable and then
NaN; **vanishing** gradients leave the loss large and nearly unchanged. Transformers add the
instabilities of Wortsman et al. (2023): **attention-logit growth** (the attention logits grow
until the softmax is one-hot, its entropy collapses and the loss diverges; qk-layernorm
prevents it), **output-logit divergence** (the output logits' log-partition drifts far from 0,
which the softmax does not see; a z-loss holds it) and **loss spikes**. :func:`diagnose` returns a
:class:`Diagnosis`, a verdict per run with its evidence.
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


VERDICTS = (
    "attention_logit_growth",
    "exploding",
    "output_logit_divergence",
    "loss_spike",
    "vanishing",
    "healthy",
)


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
        logit_growth: the largest attention logit (over blocks and records) over the first
            record's largest; NaN without attention records.
        logit_peak: the largest attention logit over blocks and records; NaN likewise.
        entropy_min: the smallest attention entropy (nats, the mean over heads of a block) over
            blocks and records; NaN likewise.
        log_z_peak: the largest ``|log Z|`` of the output logits over the records (NaN for
            regression or without the record).
        spike_step: the first step whose loss gave back more than ``spike_fraction`` of the
            progress made before it and exceeded ``spike_factor`` times the lowest loss before
            it; -1 if none.
        spike_rise: the largest such give-back, ``(loss - m) / (first loss - m)`` with ``m``
            the lowest loss before (0 if the loss never rose; NaN without finite losses).
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
    logit_growth: np.ndarray | None = None
    logit_peak: np.ndarray | None = None
    entropy_min: np.ndarray | None = None
    log_z_peak: np.ndarray | None = None
    spike_step: np.ndarray | None = None
    spike_rise: np.ndarray | None = None

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
        if self.logit_peak is not None and np.isfinite(self.logit_peak[i]):
            parts.append(
                f"attention logits up to {self.logit_peak[i]:.3g} ({self.logit_growth[i]:.3g}x "
                f"the first), entropy down to {self.entropy_min[i]:.3g} nats"
            )
        if self.log_z_peak is not None and np.isfinite(self.log_z_peak[i]):
            parts.append(f"|log Z| up to {self.log_z_peak[i]:.3g}")
        if self.spike_step is not None and self.spike_step[i] >= 0:
            parts.append(
                f"loss spike at step {self.spike_step[i]} (gave back {self.spike_rise[i]:.0%} "
                "of the progress)"
            )
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
    for f, want_shape in (("log_z", (r, t)), ("attn_logit_max", None), ("attn_entropy", None)):
        value = getattr(history, f, None)
        if value is None:
            continue
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"history.{f} must be an array of numbers: {err}") from err
        ok = arr.shape == want_shape if want_shape else (arr.ndim == 3 and arr.shape[:2] == (r, t))
        if not ok:
            raise ValueError(
                f"history.{f} must have shape {want_shape or (r, t, 'blocks')} (loss is "
                f"{(r, t)}), got {arr.shape}"
            )
        if not is_floating_dtype(arr.dtype):
            raise TypeError(f"history.{f} must hold real numbers, got dtype {arr.dtype}")
        h[f] = arr
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


def _spike(loss: np.ndarray, step: np.ndarray, fraction: float, factor: float) -> tuple[int, float]:
    """The first step whose loss gave back more than ``fraction`` of the progress made before
    it (``loss - m > fraction * (loss[0] - m)``, ``m`` the lowest loss recorded before it) and
    rose above ``factor * m``, and the largest give-back ``(loss - m) / (loss[0] - m)`` (finite
    records only; 0 if the loss never rose, NaN with fewer than two finite records)."""
    ok = np.isfinite(loss)
    if ok.sum() < 2:
        return -1, np.nan
    values, steps = loss[ok], step[ok]
    running = np.minimum.accumulate(values)[:-1]
    gained = values[0] - running
    rise = values[1:] - running
    with np.errstate(divide="ignore", invalid="ignore"):
        back = np.where(gained > 0, rise / np.where(gained > 0, gained, 1.0), 0.0)
    hit = np.flatnonzero((back > fraction) & (values[1:] > factor * running))
    return (int(steps[1:][hit[0]]) if hit.size else -1), float(max(0.0, np.max(back)))


def diagnose(
    history: History,
    *,
    explode_growth: float = 1e3,
    loss_growth_limit: float = 10.0,
    plateau_tol: float = 0.05,
    plateau_fraction: float = 0.75,
    vanishing_ratio: float = 1e-3,
    vanishing_grad: float = 1e-4,
    logit_growth_limit: float = 10.0,
    entropy_floor: float = 0.1,
    log_z_limit: float = 20.0,
    spike_fraction: float = 0.5,
    spike_factor: float = 1.5,
) -> Diagnosis:
    """A verdict for each run of a :class:`History`: exploding, vanishing or healthy.

    The rules follow the note's symptoms and Wortsman et al. (2023)'s, in this order:

    0. **attention_logit_growth** (networks of attention blocks) if the largest attention logit
       grew more than ``logit_growth_limit`` times over its first record and some block's
       attention entropy fell below ``entropy_floor`` nats: the softmax has become one-hot
       (entropy collapse), whatever the loss did next (it often diverges: the cause is named
       rather than the symptom).
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
    3. **output_logit_divergence** (classification) if the output logits' log-partition
       ``|log Z|`` exceeded ``log_z_limit`` nats: the logits drift as a whole, which the softmax
       does not see and which only a z-loss (or weight decay) holds; the loss then degrades.
    4. **loss_spike** if the loss climbed back by more than ``spike_fraction`` of the progress
       made before it and above ``spike_factor`` times the lowest loss recorded before
       (``loss - m > spike_fraction * (first loss - m)`` and ``loss > spike_factor * m``): a
       spike, recovered or not, that neither rule 1 nor 3 explains. The noise of a converged
       run is a small part of its progress, that of a run's first steps a small part of its
       loss.
    5. **healthy** otherwise.

    A History without the transformer records (an older one, or one built by hand with them
    None) skips rules 0 and 3.

    Args:
        history: from :func:`train`.
        explode_growth: gradient-norm growth that counts as exploding, > 1.
        loss_growth_limit: loss growth that counts as exploding, > 1.
        plateau_tol: relative width of the band a plateau's loss stays in, > 0.
        plateau_fraction: the least part of the run (0..1] a plateau must cover.
        vanishing_ratio: layer-1/readout gradient RMS below which gradients vanish, > 0.
        vanishing_grad: gradient norm per unit of loss below which gradients vanish, > 0.
        logit_growth_limit: attention-logit growth that counts as logit growth, > 1.
        entropy_floor: attention entropy (nats) below which it has collapsed, > 0.
        log_z_limit: ``|log Z|`` (nats) beyond which the output logits have diverged, > 0.
        spike_fraction: the part of the progress a loss must give back to be a spike, > 0.
        spike_factor: how many times the lowest earlier loss a spike must reach, > 1.

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
        ("logit_growth_limit", logit_growth_limit, 1),
        ("spike_factor", spike_factor, 1),
    ):
        if finite_float(value, name) <= low:
            raise ValueError(f"{name} must be > {low}, got {value}")
    for name, value in (
        ("plateau_tol", plateau_tol),
        ("vanishing_ratio", vanishing_ratio),
        ("vanishing_grad", vanishing_grad),
        ("entropy_floor", entropy_floor),
        ("log_z_limit", log_z_limit),
        ("spike_fraction", spike_fraction),
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
    extra = {
        k: np.full(r, np.nan)
        for k in ("logit_growth", "logit_peak", "entropy_min", "log_z_peak", "spike_rise")
    }
    spike_step = np.full(r, -1, np.int64)
    verdicts = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(r):
            if "attn_logit_max" in h:
                lmax = h["attn_logit_max"][i].astype(np.float64)
                peaks = np.nanmax(np.where(np.isfinite(lmax), lmax, -np.inf), axis=1)
                if np.isfinite(peaks).any():
                    first = peaks[np.isfinite(peaks)][0]
                    extra["logit_peak"][i] = np.max(peaks[np.isfinite(peaks)])
                    extra["logit_growth"][i] = extra["logit_peak"][i] / first
            if "attn_entropy" in h:
                ent = h["attn_entropy"][i].astype(np.float64)
                if np.isfinite(ent).any():
                    extra["entropy_min"][i] = np.nanmin(np.where(np.isfinite(ent), ent, np.nan))
            if "log_z" in h:
                lz = np.abs(h["log_z"][i].astype(np.float64))
                if np.isfinite(lz).any():
                    extra["log_z_peak"][i] = np.max(lz[np.isfinite(lz)])
            spike_step[i], extra["spike_rise"][i] = _spike(
                loss[i], step, spike_fraction, spike_factor
            )
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
            logit_growth = (
                extra["logit_growth"][i] > logit_growth_limit
                and extra["entropy_min"][i] < entropy_floor
            )
            if logit_growth:
                verdicts.append("attention_logit_growth")
            elif exploding:
                verdicts.append("exploding")
            elif plateau[i] and small:
                verdicts.append("vanishing")
            elif extra["log_z_peak"][i] > log_z_limit:
                verdicts.append("output_logit_divergence")
            elif spike_step[i] >= 0:
                verdicts.append("loss_spike")
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
        spike_step=spike_step,
        **extra,
    )
