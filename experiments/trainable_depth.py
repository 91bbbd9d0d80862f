"""Study: how deep a tanh network trains, over depth x sigma_w^2, against 6 xi_c.

Schoenholz et al. (2017, "Deep Information Propagation", section 5) found that random networks
with weights :math:`N(0, \\sigma_w^2/n)` and biases :math:`N(0, \\sigma_b^2)` train only up to
about :math:`6 \\xi_c` layers, where :math:`\\xi_c` is the depth over which the correlation of two
inputs forgets where it started. :math:`\\xi_c` diverges on the critical line (at
:math:`\\sigma_b^2 = 0.05`, :math:`\\sigma_w^2 \\approx 1.76`), so the trainable region is a ridge
centred on criticality; beyond about :math:`12 \\xi_c` nothing trains.

Here ``stabkit.trainability_grid`` trains every (depth, :math:`\\sigma_w^2`) tanh net of a grid in
one compiled, vmapped ``stabkit.train`` call, on ``teacher_classification`` (inputs
:math:`N(0, I_8)`, 4 classes from a random relu teacher's arg-max; no download), and measures the
final **training accuracy** after a fixed budget of Adam steps. **Trainable** means a score
``(accuracy - majority-class baseline) / (1 - baseline)`` of at least 0.5, i.e. at least half-way
from always answering the commonest class to every example right. The measured boundary per
:math:`\\sigma_w^2` is where that score first falls through 0.5, interpolated in log depth.
``stabkit.xi_c`` and ``stabkit.critical_line`` give the theory curves.

**Scaled down** for two shared CPU cores: Schoenholz et al. trained width-300 nets up to depth 300
on MNIST for many thousands of steps; here width 32, depths 3-64, 300 Adam steps of batch 16 on
256 examples, one seed per cell (``--quick``: 4 x 3 cells, 200 steps). The learning rate falls
with depth, :math:`3 \\cdot 10^{-3} (8/L)^{1.5}` (one rate for all depths either stalls the deep
nets or destabilises the shallow ones in so few steps). Every run pays for the deepest net of the
grid (depth is data, the layers beyond a run's depth compute on zeros), so the grid is kept small:
49 nets in one compilation, about 40 s here (``--quick``: about 20 s, mostly compilation).

What agrees and what does not (default grid, task seeds 0-2): the trainable depth is a ridge on
the critical :math:`\\sigma_w^2`, nothing deeper than :math:`12 \\xi_c` trains, and the measured
boundary is within a factor 2 of :math:`6 \\xi_c` on both sides (seed 1: 2.07 at
:math:`\\sigma_w^2 = 0.5`). It is not symmetric: deep in the ordered phase
(:math:`\\sigma_w^2 \\le 1`) nets train to 1.0-2.1 times :math:`6 \\xi_c` (probably because Adam
rescales each weight's gradient, so a vanishing gradient matters less than for Schoenholz et al.'s
SGD); near criticality (1.3) and in the chaotic phase (3, 7) to 0.55-0.85 times (probably: 300
steps are too few for long :math:`\\xi_c` and rough chaotic loss surfaces), and at criticality,
where theory has no limit, the step budget stops them near 40 layers.

Run alone: ``python experiments/trainable_depth.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone
from stabkit.training import trainability_grid  # public; re-exported as sk.trainability_grid

NAME = "trainable_depth"
TITLE = "Trainable depth of tanh nets over depth x sigma_w^2, against 6 xi_c"
ORDER = 72


@dataclasses.dataclass(frozen=True)
class Config:
    sigma_b2: float = 0.05  # bias variance, as in Schoenholz et al.'s figure
    sigma_w2: tuple[float, ...] = (0.5, 0.7, 1.0, 1.3, 1.76, 3.0, 7.0)  # 1.76: critical
    depths: tuple[int, ...] = (3, 6, 10, 16, 24, 40, 64)  # hidden layers
    width: int = 32  # units per hidden layer
    n: int = 256  # training examples (in_dim 8, 4 classes)
    in_dim: int = 8
    n_classes: int = 4
    steps: int = 300  # the fixed budget of Adam steps
    batch_size: int = 16
    lr0: float = 3e-3  # Adam learning rate at depth 8 ...
    lr_power: float = 1.5  # ... times (8 / depth) ** lr_power
    seeds: int = 1  # initialisations (and batch orders) per cell; accuracy is their mean
    threshold: float = 0.5  # score (accuracy above the baseline, as a fraction) that is "trained"
    factor: float = 2.0  # claim: the boundary is within this factor of 6 xi_c
    peak_tol: float = 0.1  # claim: the critical point's boundary within 10% of the deepest
    seed: int = 0  # the task's key


QUICK = Config(sigma_w2=(0.5, 1.76, 7.0), depths=(4, 12, 24, 64), steps=200)


def _lr(cfg: Config):
    return lambda depth: cfg.lr0 * (8 / depth) ** cfg.lr_power


def _edges(v: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges for pcolormesh: midpoints (geometric if ``log``) and the ends mirrored."""
    t = np.log(v) if log else np.asarray(v, float)
    mid = (t[1:] + t[:-1]) / 2
    e = np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]])
    return np.exp(e) if log else e


def _figure(out: pathlib.Path, r: dict, cfg: Config) -> None:
    g = r["grid"]
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(14.5, 6.2), gridspec_kw={"width_ratios": [1.35, 1]}, layout="constrained"
    )
    # (a) the heatmap: x = sigma_w^2 (log), y = depth (log), colour = final accuracy
    cmap = plt.get_cmap("magma")
    norm = mcolors.Normalize(vmin=0.0, vmax=1.0)
    mesh = ax.pcolormesh(
        _edges(g.sigma_w2, True),
        _edges(g.depth, True),
        g.accuracy,
        cmap=cmap,
        norm=norm,
        shading="flat",
    )
    for i, d in enumerate(g.depth):
        for j, s in enumerate(g.sigma_w2):
            a = g.accuracy[i, j]
            ax.text(
                s,
                d,
                f"{a:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if a > 0.6 else "white",
            )
    sw, xi = r["theory_sw2"], r["theory_xi_c"]
    ax.plot(sw, 6 * xi, color="#37c8f0", lw=2.6, label="6 ξ_c (Schoenholz et al.)")
    ax.plot(sw, 12 * xi, color="#37c8f0", lw=2.0, ls=":", label="12 ξ_c")
    ax.plot(sw, xi, color="#9fe8ff", lw=1.4, ls="--", label="ξ_c")
    ax.axvline(r["critical"], color="white", lw=1, ls="-.", alpha=0.8)
    ax.text(
        r["critical"],
        _edges(g.depth, True)[0] * 1.04,
        f"critical σ_w² = {r['critical']:.3f}",
        color="white",
        fontsize=8,
        ha="center",
        va="bottom",
        bbox=dict(boxstyle="round,pad=0.2", fc="black", ec="none", alpha=0.6),
    )
    b = g.boundary
    ok = b > 0
    ax.plot(
        g.sigma_w2[ok],
        b[ok],
        color="#7CFC00",
        lw=1.6,
        marker="o",
        ms=9,
        mfc="none",
        mew=2,
        label=f"measured boundary (score = {g.threshold:g})",
    )
    if g.censored.any():
        ax.plot(
            g.sigma_w2[g.censored],
            b[g.censored],
            ls="none",
            marker="^",
            ms=11,
            color="#7CFC00",
            mec="black",
            label="every depth trained (lower bound)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*_edges(g.sigma_w2, True)[[0, -1]])
    ax.set_ylim(*_edges(g.depth, True)[[0, -1]])
    ax.set_xticks(g.sigma_w2, [f"{s:g}" for s in g.sigma_w2])
    ax.set_yticks(g.depth, [str(d) for d in g.depth])
    ax.minorticks_off()
    ax.set_xlabel("weight variance σ_w²")
    ax.set_ylabel("depth L (hidden layers)")
    ax.set_title("(a) final training accuracy: trainability is a ridge along criticality")
    cb = fig.colorbar(mesh, ax=ax, pad=0.01)
    cb.set_label("final training accuracy")
    cut = g.baseline + g.threshold * (1 - g.baseline)
    cb.ax.axhline(g.baseline, color="#e0e0e0", lw=2.5)
    cb.ax.axhline(cut, color="#7CFC00", lw=2.5)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        plt.Line2D(
            [],
            [],
            color="#e0e0e0",
            lw=2.5,
            label=f"colour bar: majority-class baseline {g.baseline:.2f}",
        ),
        plt.Line2D(
            [], [], color="#7CFC00", lw=2.5, label=f"colour bar: trainable threshold {cut:.2f}"
        ),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.09),
        ncol=3,
        fontsize=8,
        frameon=False,
    )

    # (b) the collapse: score against depth / xi_c, one curve per sigma_w^2
    xi_grid = r["xi_c"]
    # ordered points in blues, chaotic in reds, darker further from criticality
    n_ord = int(np.sum(g.sigma_w2 < r["critical"]))
    colors = list(plt.get_cmap("Blues")(np.linspace(0.95, 0.5, max(n_ord, 1)))[:n_ord])
    colors += list(plt.get_cmap("Reds")(np.linspace(0.5, 0.95, len(g.sigma_w2) - n_ord)))
    hidden = []
    for j, s in enumerate(g.sigma_w2):
        x = g.depth / xi_grid[j]
        if x[-1] < 1:  # next to criticality the whole column is at L << xi_c: off this axis
            hidden.append(f"{s:g}")
            continue
        phase = "ordered" if s < r["critical"] else "chaotic"
        bx.plot(
            x,
            g.score[:, j],
            marker="o",
            ms=4,
            color=colors[j],
            lw=1.4,
            label=f"σ_w² = {s:g} ({phase}, ξ_c = {xi_grid[j]:.3g})",
        )
    bx.axvline(6, color="#1f8fb0", lw=2.2, label="L = 6 ξ_c")
    bx.axvline(12, color="#1f8fb0", lw=1.2, ls=":", label="L = 12 ξ_c")
    bx.axhline(g.threshold, color="#3a9a1a", lw=1.2, ls="--", label="trainable threshold")
    bx.axhline(0, color="gray", lw=0.8)
    bx.set_xscale("log")
    bx.set_xlim(0.3, None)
    bx.set_xlabel("depth in units of the correlation depth scale, L / ξ_c")
    bx.set_ylabel("score = (accuracy − baseline) / (1 − baseline)")
    bx.set_ylim(min(-0.35, float(np.min(g.score)) - 0.05), 1.05)
    bx.set_title("(b) every σ_w² on one axis: L / ξ_c decides trainability")
    if hidden:
        bx.text(
            0.98,
            0.98,
            f"σ_w² = {', '.join(hidden)}: L ≤ {g.depth[-1]} < ξ_c, off this axis",
            transform=bx.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    bx.legend(fontsize=7, loc="lower left", framealpha=0.85)
    bx.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Trainable depth of tanh MLPs, σ_b² = {cfg.sigma_b2:g}: width {cfg.width}, "
        f"{cfg.steps} Adam steps (batch {cfg.batch_size}, lr ∝ L^-{cfg.lr_power:g}), "
        f"{cfg.n} examples, {cfg.n_classes} classes, {cfg.seeds} seed(s) per cell",
        fontsize=12,
    )
    fig.savefig(out / f"{NAME}.png", dpi=90)
    plt.close(fig)


def measure(*, quick: bool) -> dict:
    """The numbers of the study: the trainability grid beside 6 ξ_c.

    ``numbers["figure_data"]`` holds the grid and the theory curve the figure draws (not stored
    in ``NAME.json``); the rest is stored there and is all that :func:`claims` reads.
    """
    cfg = QUICK if quick else Config()
    timings = {}

    t0 = time.perf_counter()
    critical = float(sk.critical_line("tanh", cfg.sigma_b2))
    sw2 = np.asarray(cfg.sigma_w2, float)
    theory_sw2 = np.geomspace(sw2[0] * 0.85, sw2[-1] * 1.15, 300)
    both_xi = np.asarray(sk.xi_c("tanh", np.r_[sw2, theory_sw2], cfg.sigma_b2), float)
    xi, theory_xi = both_xi[: len(sw2)], both_xi[len(sw2) :]
    timings["theory"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    task = sk.teacher_classification(
        jax.random.key(cfg.seed), n=cfg.n, in_dim=cfg.in_dim, n_classes=cfg.n_classes
    )
    g = trainability_grid(
        task,
        depth=cfg.depths,
        sigma_w2=sw2,
        sigma_b2=cfg.sigma_b2,
        activation="tanh",
        width=cfg.width,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        optimizer="adam",
        lr=_lr(cfg),
        seeds=cfg.seeds,
        threshold=cfg.threshold,
    )
    timings["train (one compilation)"] = time.perf_counter() - t0

    six = 6 * xi
    # 6 xi_c beyond the grid: theory says every grid depth trains (the boundary is censored)
    censored_theory = six > cfg.depths[-1]
    r = {
        "grid": g,
        "xi_c": xi,
        "theory_sw2": theory_sw2,
        "theory_xi_c": theory_xi,
        "critical": critical,
        "censored_theory": censored_theory,
    }
    numbers = {
        "config": dataclasses.asdict(cfg),
        "timings_s": timings,
        "critical_sigma_w2": critical,
        "sigma_w2": sw2,
        "depth": g.depth,
        "lr": g.lr,
        "xi_c": xi,
        "six_xi_c": six,
        "accuracy": g.accuracy,
        "loss": g.loss,
        "score": g.score,
        "trainable": g.trainable,
        "baseline": g.baseline,
        "threshold": g.threshold,
        "boundary": g.boundary,
        "boundary_censored": g.censored,
    }
    numbers["boundary_over_six_xi_c"] = _ratio(numbers)[0]
    numbers["figure_data"] = r
    return numbers


def _ratio(numbers: dict) -> tuple[np.ndarray, np.ndarray]:
    """The measured boundary over 6 ξ_c where both lie inside the grid (NaN elsewhere), and
    that mask."""
    six = np.asarray(numbers["six_xi_c"], np.float64)
    boundary = np.asarray(numbers["boundary"], np.float64)
    censored_theory = six > numbers["depth"][-1]
    both = ~np.asarray(numbers["boundary_censored"], bool) & ~censored_theory & (boundary > 0)
    return np.where(both, boundary / six, np.nan), both


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    critical = numbers["critical_sigma_w2"]
    sw2, xi = np.asarray(numbers["sigma_w2"], float), np.asarray(numbers["xi_c"], float)
    six = np.asarray(numbers["six_xi_c"], float)
    depth = np.asarray(numbers["depth"])
    boundary = np.asarray(numbers["boundary"], float)
    censored = np.asarray(numbers["boundary_censored"], bool)
    score, accuracy = np.asarray(numbers["score"], float), np.asarray(numbers["accuracy"], float)
    trainable = np.asarray(numbers["trainable"], bool)
    max_depth = cfg.depths[-1]
    result = []
    # 1. the boundary within a factor of 6 xi_c where both are inside the grid
    ratio, both = _ratio(numbers)
    sides = {
        "ordered": both & (sw2 < critical),
        "chaotic": both & (sw2 > critical),
    }
    within = np.abs(np.log(ratio[both])) <= np.log(cfg.factor)
    detail = "; ".join(
        f"σ_w² = {s:g}: {b:.1f} vs {x:.1f} (×{b / x:.2f})"
        for s, b, x, m in zip(sw2, boundary, six, both, strict=True)
        if m
    )
    result.append(
        sk.Claim(
            claim=f"The measured trainable depth lies within a factor {cfg.factor:g} of 6 ξ_c on "
            "both sides of criticality",
            theory="Schoenholz et al. 2017: networks train up to ≈ 6 ξ_c layers (long training, "
            "MNIST, width 300); agreement here: within the factor, both sides",
            measured=f"boundary vs 6 ξ_c where both lie inside depths {cfg.depths[0]}–{max_depth}: "
            f"{detail}; ordered points {int(sides['ordered'].sum())}, chaotic "
            f"{int(sides['chaotic'].sum())}",
            passed=bool(
                sides["ordered"].any() and sides["chaotic"].any() and within.all() and both.any()
            ),
        )
    )
    # 2. the deepest trainable nets sit at the critical sigma_w^2. Near criticality 6 xi_c is far
    # beyond what the step budget can train, so near-critical points tie up to the noise of one
    # seed and an interpolated boundary: "at the peak" means within `peak_tol` of the deepest.
    nearest = int(np.argmin(np.abs(np.log(sw2 / critical))))
    best = int(np.argmax(boundary))
    at_peak = boundary[nearest] >= (1 - cfg.peak_tol) * boundary[best]
    result.append(
        sk.Claim(
            claim="The deepest trainable nets are at the critical σ_w²",
            theory=f"ξ_c diverges at σ_w² = {critical:.3f} (σ_b² = {cfg.sigma_b2:g}), so the "
            f"trainable depth peaks there (agreement: the critical point's boundary within "
            f"{cfg.peak_tol:.0%} of the deepest)",
            measured=f"critical σ_w² = {sw2[nearest]:g}: boundary {boundary[nearest]:.1f}"
            + (" (every grid depth trained)" if censored[nearest] else "")
            + f"; deepest {boundary[best]:.1f} at σ_w² = {sw2[best]:g}; boundaries by σ_w² "
            + ", ".join(f"{s:g}: {b:.0f}" for s, b in zip(sw2, boundary, strict=True)),
            passed=bool(at_peak),
        )
    )
    # 3. beyond 12 xi_c nothing trains
    deep = depth[:, None] > 12 * xi[None, :]
    n_deep = int(deep.sum())
    worst = float(np.max(score[deep])) if n_deep else float("nan")
    trained_deep = int((trainable & deep).sum())
    result.append(
        sk.Claim(
            claim="Networks deeper than 12 ξ_c do not train",
            theory="beyond ≈ 12 ξ_c the inputs' correlations have relaxed to their fixed point "
            "(ordered: all inputs alike; chaotic: all equally decorrelated), so the labels "
            "cannot be learnt from them",
            measured=f"{n_deep} grid cells deeper than 12 ξ_c, {trained_deep} of them trainable; "
            f"best score there {worst:.2f} (threshold {numbers['threshold']:g}); σ_w² with such "
            "cells: "
            + ", ".join(f"{s:g}" for s, m in zip(sw2, deep.any(axis=0), strict=True) if m),
            passed=n_deep > 0 and trained_deep == 0,
        )
    )
    # 4. the task: a shallow critical net learns it, a net far past 12 xi_c keeps nothing of it
    crit_col = nearest
    shallow = float(score[0, crit_col])
    far = np.unravel_index(np.argmax(np.where(deep, depth[:, None] / xi[None, :], -1)), deep.shape)
    far_score = float(score[far]) if n_deep else float("nan")
    result.append(
        sk.Claim(
            claim="The task has structure to learn: a shallow critical net fits it (score ≥ 0.9), "
            "a net that has lost its inputs' correlations cannot (score ≤ 0.1)",
            theory="trainability is the ability to use the inputs' correlation structure: a "
            "net far deeper than ξ_c keeps only the class frequencies (the majority-class "
            "baseline, score 0)",
            measured=f"depth {depth[0]}, σ_w² = {sw2[crit_col]:g}: accuracy "
            f"{accuracy[0, crit_col]:.3f} (score {shallow:.2f}); depth {depth[far[0]]}, "
            f"σ_w² = {sw2[far[1]]:g} (L = {depth[far[0]] / xi[far[1]]:.1f} ξ_c): accuracy "
            f"{accuracy[far]:.3f} (score {far_score:.2f}); baseline {numbers['baseline']:.3f}",
            passed=bool(shallow >= 0.9 and n_deep and far_score <= 0.1),
        )
    )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png`` from ``numbers["figure_data"]`` (from :func:`measure`)."""
    _figure(pathlib.Path(out_dir), numbers["figure_data"], Config(**numbers["config"]))


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = measure(quick=quick)
    t0 = time.perf_counter()
    figure(numbers, out)
    numbers["timings_s"]["figure"] = time.perf_counter() - t0
    result = claims(numbers)
    sk.save_json(out / f"{NAME}.json", {k: v for k, v in numbers.items() if k != "figure_data"})
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
