"""Study: a sweep's measured per-layer statistics against the mean-field prediction, layer by layer.

Mean-field theory predicts every per-layer statistic that ``stabkit.sweep`` measures on a wide
random MLP (Poole et al. 2016, Schoenholz et al. 2017): the pre-activation second moment
:math:`q^l` follows the q-map from the input's actual mean square, the post-activation RMS is
:math:`\\sqrt{E[\\phi(z)^2]}` under :math:`N(0, q^l)`, and the gradient shrinks or grows by
:math:`\\chi^l = \\sigma_w^2 E[\\phi'(z^l)^2]` a layer, i.e. by :math:`\\chi_1` once
:math:`q^l = q^*`. The sweep's loss is the mean square of the output (a regression to 0), whose
gradient :math:`y/N` depends on the very weights it flows back through, so the plain
:math:`\\chi` product (the gradient independence assumption) is not enough:
``stabkit.theory.predict_profile`` adds the wide-limit correction (Yang 2019), without which a
deep relu net's input gradient is mispredicted by :math:`\\sqrt{2(L + 1)}`.

One sweep at width 256 (float32, Gaussian weights :math:`\\sigma_w^2 = \\text{scale}^2`,
:math:`\\sigma_b^2 = 0.05`): tanh, relu and sigmoid x 14 scales (:math:`\\sigma_w^2` 0.25 to
64) x 5 depths x 2 seeds, one compilation. ``stabkit.theory.compare_sweep`` judges every (config,
layer) against a tolerance that shrinks like :math:`1/\\sqrt{n}`: four predicted standard
deviations of the log of a width-:math:`n` measurement (:math:`c\\sqrt{l/n}`, :math:`c` = 1.2
for tanh near 0 and linear, 1.9 for relu, less where the q-map contracts); entries that overflow
float32 (chaotic relu) or that the quadrature cannot resolve (none at these scales) are not
judged.

Run alone: ``python experiments/signal_theory.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
import warnings

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone
from stabkit.theory import compare_sweep, predict_profile, predict_sweep

NAME = "signal_theory"
TITLE = "Mean-field theory against a sweep: per-layer signal and gradient RMS, layer by layer"
ORDER = 75

ACTS = ("tanh", "relu", "sigmoid")
COLORS = {"ordered": "#1f5fa8", "near-critical": "#2e8b57", "chaotic": "#c0392b"}


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 256  # the maps are the n -> infinity limit; the tolerance shrinks like 1/sqrt(n)
    depth: tuple = (4, 8, 16, 32)  # the profiles are drawn at the deepest
    scales: int = (
        10  # sigma_w = scale, log-spaced over scale_range, plus tanh's and relu's critical
    )
    # tanh's critical scale is 1.33, relu's 1.41, the sigmoid's 10.3 (beyond the range: the
    # sigmoid stays ordered here)
    scale_range: tuple = (0.5, 8.0)
    sigma_b2: float = 0.05  # Schoenholz et al.'s tanh bias variance
    seeds: int = 2
    batch: int = 16  # examples per net (the statistics average over batch x width entries)
    n_sigma: float = 4.0  # compare_sweep's allowance in predicted standard deviations
    rate_layers: tuple = (6, 26)  # layers of the depth-32 nets where the decay rate is fitted
    rate_tol: float = 0.1  # relative agreement of the fitted per-layer rate with chi_1


QUICK = Config(depth=(8, 32), scales=8, seeds=1)


def _scales(cfg: Config) -> tuple[float, ...]:
    """Log-spaced scales plus the critical ones of tanh (sigma_w^2 = 1.761) and relu (He, 2)."""
    grid = np.round(np.geomspace(*cfg.scale_range, cfg.scales), 4)
    crit = [math.sqrt(float(sk.critical_line(a, cfg.sigma_b2))) for a in ("tanh", "relu")]
    return tuple(sorted({float(s) for s in grid} | set(crit)))


def _pick(chi: np.ndarray) -> dict[str, int]:
    """Scale indices of an ordered (chi_1 ~ 0.55), a near-critical and a chaotic (~1.6) net.

    The near-critical one has the chi_1 closest to 1 among the resolved scales (the sigmoid's
    critical sigma_w^2 = 107 is beyond them: its "near-critical" net is still ordered).

    ``chi`` is NaN where the prediction is unresolved (those scales are never picked).
    """

    def dist(target):
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(chi), np.abs(np.log(chi / target)), np.inf)

    out = {"ordered": int(np.argmin(dist(0.55))), "near-critical": int(np.argmin(dist(1.0)))}
    if out["ordered"] == out["near-critical"]:  # nothing closer to 1: a deeper-ordered net
        out["ordered"] = int(np.argmin(dist(0.25)))
    if np.nanmax(chi) > 1.3:
        out["chaotic"] = int(np.argmin(dist(1.6)))
    return out


def _nanmedian(a, axis=-1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN where nothing is predicted
        return np.nanmedian(a, axis=axis)


def _median(a) -> np.ndarray:
    return np.exp(_nanmedian(np.log(np.abs(np.asarray(a, np.float64)))))


def _profiles_figure(out, ds, pred, picks, chi, cfg) -> pathlib.Path:
    deep = max(cfg.depth)
    layers = ds.layer.values  # every slot of the deepest net: input, hidden layers, readout
    fig, axes = plt.subplots(len(ACTS), 3, figsize=(15, 3.6 * len(ACTS)), squeeze=False)
    panels = (
        ("pre_rms", "pre-activation RMS  √q^l"),
        ("post_rms", "post-activation RMS  √E[φ(z)²]"),
        ("grad_gain", "gradient RMS |∂L/∂h^l| / |∂L/∂y|"),
    )
    meas_gain = ds.grad_post_rms / ds.grad_post_rms.sel(layer=ds.depth + 1)
    for row, act in enumerate(ACTS):
        for col, (name, label) in enumerate(panels):
            ax = axes[row, col]
            measured = meas_gain if name == "grad_gain" else ds[name]
            for phase, i in picks[act].items():
                s = ds.scale.values[i]
                sel = dict(activation=act, depth=deep, scale=s)
                m = _median(measured.sel(sel).sel(layer=layers).transpose("layer", "seed"))
                p = _median(pred[name].sel(sel).sel(layer=layers).transpose("layer", "seed"))
                tag = f"{phase}: σ_w²={s * s:.3g}, χ₁={chi[act][i]:.2f}"
                ax.semilogy(layers, m, "o", ms=3, color=COLORS[phase], label=f"measured, {tag}")
                ax.semilogy(layers, p, "--", lw=1.4, color=COLORS[phase])
            ax.set_xlabel("layer l (0: input, 33: readout)")
            ax.set_title(f"{act}: {label}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        axes[row, 0].plot([], [], "k--", label="mean field (dashed)")
        axes[row, 0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"Depth-{deep} Gaussian MLPs, width {cfg.width}, σ_b² = {cfg.sigma_b2}, float32, mse loss: "
        f"measured (dots, median of {cfg.seeds} seeds) vs mean field (dashed)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out / f"{NAME}_profiles.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _heatmap_figure(out, ds, pred, crit, cfg) -> pathlib.Path:
    """Per activation and quantity: measured with predicted contours, and the log10 error."""
    scales = ds.scale.values
    depths = ds.depth.values
    fig, axes = plt.subplots(len(ACTS), 4, figsize=(18, 3.4 * len(ACTS)), squeeze=False)
    quantities = (
        ("output_rms", "log10 output RMS"),
        ("grad_ratio", "log10 |∂L/∂x| / |∂L/∂y|"),
    )
    xe, ye = np.arange(len(depths) + 1) - 0.5, np.arange(len(scales) + 1) - 0.5
    for row, act in enumerate(ACTS):
        for q, (name, label) in enumerate(quantities):
            m = ds[name].sel(activation=act).transpose("scale", "depth", "seed").values
            p = pred[name].sel(activation=act).transpose("scale", "depth", "seed").values
            with np.errstate(divide="ignore", invalid="ignore"):
                lm = _nanmedian(np.log10(np.abs(m)))
                lp = _nanmedian(np.log10(p))
            lm = np.where(np.isfinite(lm), lm, np.nan)
            finite = lm[np.isfinite(lm)]
            lim = min(max(1.0, float(np.max(np.abs(finite))) if finite.size else 1.0), 40.0)
            ax, ax_err = axes[row, 2 * q], axes[row, 2 * q + 1]
            mesh = ax.pcolormesh(
                xe, ye, np.ma.masked_invalid(lm), cmap="RdBu_r", vmin=-lim, vmax=lim
            )
            fig.colorbar(mesh, ax=ax)
            if np.isfinite(lp).sum() > 3:
                cs = ax.contour(
                    np.arange(len(depths)),
                    np.arange(len(scales)),
                    np.ma.masked_invalid(lp),
                    levels=np.linspace(-lim, lim, 9),
                    colors="k",
                    linestyles="dashed",
                    linewidths=0.8,
                )
                ax.clabel(cs, fontsize=6, fmt="%.2g")
            err = np.ma.masked_invalid(lm - lp)
            mesh = ax_err.pcolormesh(xe, ye, err, cmap="PuOr", vmin=-0.3, vmax=0.3)
            fig.colorbar(mesh, ax=ax_err)
            ys, xs = np.nonzero(np.ma.getmaskarray(err))
            if xs.size:
                ax_err.scatter(xs, ys, marker="x", s=14, c="k", lw=0.8, label="not judged")
            y = np.interp(crit[act], scales, np.arange(len(scales)), left=np.nan, right=np.nan)
            for a_, title in ((ax, f"{label}: measured, mean field dashed"), (ax_err, "error")):
                if np.isfinite(y):
                    a_.axhline(y, color="#00b050", ls="-.", lw=1.5, label="mean field: χ₁ = 1")
                a_.set_xticks(range(len(depths)), [str(d) for d in depths], fontsize=7)
                a_.set_yticks(range(len(scales)), [f"{v * v:.3g}" for v in scales], fontsize=7)
                a_.set_xlabel("depth")
                a_.set_ylabel("σ_w²")
                full = f"{label}, log10 measured / predicted" if a_ is ax_err else title
                a_.set_title(f"{act}: {full}", fontsize=9)
    ax.plot([], [], "k--", lw=0.8, label="mean field: log10 contours")
    handles = {}
    for a_ in axes.ravel():
        for h, lab in zip(*a_.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    handles["not judged (overflow, or q beyond the quadrature)"] = handles.pop("not judged", None)
    handles = {k: v for k, v in handles.items() if v is not None}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(
        f"Width-{cfg.width} Gaussian MLPs (float32, σ_b² = {cfg.sigma_b2}, median of {cfg.seeds} "
        "seeds) over depth x σ_w²: measured colours, mean-field contours, and their log10 ratio",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = out / f"{NAME}_heatmap.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def _tolerance_figure(out, cmp, pred, cfg) -> pathlib.Path:
    """|error| per layer for every config and seed at the deepest depth, with the tolerance."""
    deep = max(cfg.depth)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, name in zip(axes, ("pre_rms", "post_rms", "grad_gain"), strict=True):
        for act, color in zip(ACTS, ("#c0392b", "#1f5fa8", "#8e44ad"), strict=True):
            e = np.abs(cmp[name].sel(activation=act, depth=deep)).squeeze()
            t = cmp[f"tol_{name}"].sel(activation=act, depth=deep).squeeze()
            layers = cmp.layer.values  # the deepest net's slots: input, hidden layers, readout
            e = e.transpose(..., "layer").values.reshape(-1, len(layers))
            t = t.transpose(..., "layer").values.reshape(-1, len(layers))
            ax.plot(layers, e.T, ".", ms=2, color=color, alpha=0.5)
            ax.plot([], [], ".", color=color, label=f"{act}: |log10 measured/predicted|")
            ax.plot(layers, np.nanmax(t, axis=0), "-", color=color, lw=1.2)
        ax.plot([], [], "k-", label=f"tolerance ({cfg.n_sigma:g} predicted s.d., largest)")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 3)
        ax.set_xlabel("layer")
        ax.set_title(f"{name}: depth {deep}, width {cfg.width}, every scale and seed", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{NAME}_errors.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _rate(gain: np.ndarray, lo: int, hi: int) -> float:
    """Least-squares slope of ln(gain) over layers lo..hi, per layer (gain: layers x seeds)."""
    layers = np.arange(lo, hi + 1)
    y = np.log(gain[lo : hi + 1]).mean(axis=-1)
    return float(np.polyfit(layers, y, 1)[0])


def measure(*, quick: bool) -> dict:
    """The numbers of the study: one sweep, its predictions, and their comparison.

    ``numbers["figure_data"]`` holds the sweep, predictions and comparison the figures draw (not
    stored in ``NAME.json``); the rest is stored there and is all that :func:`claims` reads.
    """
    cfg = QUICK if quick else Config()
    timings = {}
    spec = sk.SweepSpec(
        depth=cfg.depth,
        width=cfg.width,
        activation=ACTS,
        init="gaussian",
        scale=_scales(cfg),
        bias_std=math.sqrt(cfg.sigma_b2),
        seed=tuple(range(cfg.seeds)),
        batch=cfg.batch,
    )
    t0 = time.perf_counter()
    full = sk.sweep(spec, progress=False)
    timings["sweep"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_pred = predict_sweep(full)
    full_cmp = compare_sweep(full, full_pred, n_sigma=cfg.n_sigma)
    timings["predict_compare"] = time.perf_counter() - t0
    # One dtype, width, init and bias: drop those axes for indexing.
    ds, pred, cmp = (
        x.squeeze(["dtype", "width", "init", "bias_std"], drop=True)
        for x in (full, full_pred, full_cmp)
    )

    scales = np.asarray(ds.scale.values)
    sw = scales**2
    # chi_1 = chi^l in the bulk of the deepest nets, where q^l = q* (geometric mean over the
    # fitted layers and seeds); NaN where the prediction is unresolved (predict_profile's
    # accuracy note: mean_field's quadrature has the same limit).
    deep = max(cfg.depth)
    lo, hi = cfg.rate_layers
    bulk = np.log(pred.chi.sel(depth=deep, layer=slice(lo, hi)))
    chi = {
        a: np.exp(bulk.sel(activation=a).mean(["layer", "seed"], skipna=False).values) for a in ACTS
    }
    crit = {a: math.sqrt(float(sk.critical_line(a, cfg.sigma_b2))) for a in ACTS}
    picks = {a: _pick(chi[a]) for a in ACTS}

    summary = {}
    for name in ("pre_rms", "post_rms", "grad_gain"):
        e, t = np.abs(cmp[name]), cmp[f"tol_{name}"]
        judged = t.notnull()
        ratio = (e / t).where(judged)
        summary[name] = {
            "judged": int(judged.sum()),
            "entries": int(cmp[name].notnull().sum()),
            "max_abs_err": float(e.where(judged).max()),
            "mean_abs_err": float(e.where(judged).mean()),
            "max_err_over_tol": float(ratio.max()),
            "within": bool((ratio <= 1).where(judged, True).all()),
        }
    tol_line = {
        a: float(cmp.tol_pre_rms.sel(activation=a, depth=deep, layer=deep).max()) for a in ACTS
    }
    naive = []
    measured_gain = ds.grad_post_rms / ds.grad_post_rms.sel(layer=ds.depth + 1)
    for act in ACTS:
        for i, s in enumerate(scales):
            sel = dict(activation=act, scale=s, depth=deep)
            q0 = np.asarray(pred.pre_rms.sel(sel).sel(layer=0)) ** 2  # (seed,)
            chi_product = predict_profile(act, sw[i], cfg.sigma_b2, deep, q0).grad_rms
            meas = np.asarray(measured_gain.sel(sel).transpose("seed", "layer"))
            judged = np.isfinite(np.asarray(cmp.tol_grad_gain.sel(sel).transpose("seed", "layer")))
            if judged.any():
                err = np.abs(np.log10(meas / chi_product))[judged]
                naive.append((act, float(s * s), float(err.max())))
    rates = []
    for act, phase in (("tanh", "ordered"), ("tanh", "chaotic"), ("sigmoid", "ordered")):
        i = picks[act].get(phase)
        if i is None:
            continue
        s = scales[i]
        gain = ds.grad_post_rms.sel(activation=act, scale=s, depth=deep) / ds.grad_post_rms.sel(
            activation=act, scale=s, depth=deep, layer=deep + 1
        )
        gain = np.asarray(gain.transpose("layer", "seed"))
        measured = -_rate(gain, lo, hi)  # per layer toward the input: ln of the RMS gain
        predicted = 0.5 * math.log(chi[act][i])
        rates.append((act, phase, sw[i], chi[act][i], measured, predicted))
    return {
        "config": dataclasses.asdict(cfg),
        "spec": spec.to_dict(),
        "timings_s": timings,
        "summary": summary,
        "tolerance_at_deepest_layer": tol_line,
        "critical_scale": crit,
        "picks": {a: {ph: float(scales[i]) for ph, i in p.items()} for a, p in picks.items()},
        "chi_product_error": naive,
        "rates": rates,
        "figure_data": {"ds": ds, "pred": pred, "cmp": cmp, "picks": picks, "chi": chi},
    }


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    deep = max(cfg.depth)
    lo, hi = cfg.rate_layers
    summary, tol_line = numbers["summary"], numbers["tolerance_at_deepest_layer"]
    naive, rates = numbers["chi_product_error"], numbers["rates"]
    result = []
    fwd = [summary["pre_rms"], summary["post_rms"]]
    result.append(
        sk.Claim(
            claim=f"Width-{cfg.width} tanh/relu/sigmoid nets follow the q-map: pre- and "
            "post-activation RMS at every layer of every (scale, depth, seed)",
            theory=f"q^(l+1) = σ_w² E[φ(z)²] + σ_b² from the input's own q0; tolerance "
            f"{cfg.n_sigma:g} predicted s.d. (c·sqrt(l/n)): at layer {deep} "
            + ", ".join(f"{a} {tol_line[a]:.2f}" for a in ACTS)
            + " (log10)",
            measured="; ".join(
                f"{n}: max |log10 meas/pred| {s['max_abs_err']:.3f} (mean {s['mean_abs_err']:.4f}),"
                f" max err/tol {s['max_err_over_tol']:.2f}, {s['judged']}/{s['entries']} judged"
                for n, s in zip(("pre_rms", "post_rms"), fwd, strict=True)
            ),
            passed=all(s["within"] and s["judged"] > 0.8 * s["entries"] for s in fwd),
        )
    )

    # The gradient: the corrected recursion vs the plain chi product (loss="sum" profile).
    g = summary["grad_gain"]
    worst_naive = max(naive, key=lambda t: t[2])
    result.append(
        sk.Claim(
            claim="The mse gradient follows the mean-field backward recursion at every layer; "
            "the plain χ product (gradient independence) does not",
            theory="|∂L/∂h^l|: χ^l = σ_w² E[φ'(z^l)²] a layer, plus the correction for "
            "∂L/∂y = y/N depending on the weights (Yang 2019); same tolerance, "
            "backward over L + 1 − l layers",
            measured=f"corrected: max |log10 meas/pred| {g['max_abs_err']:.3f}, max err/tol "
            f"{g['max_err_over_tol']:.2f} over {g['judged']} judged; χ product alone at depth "
            f"{deep}: up to {worst_naive[2]:.2f} ({worst_naive[0]}, σ_w² {worst_naive[1]:.3g}), "
            f"a factor {10 ** worst_naive[2]:.1f}",
            passed=g["within"] and worst_naive[2] > 2 * g["max_abs_err"],
        )
    )

    # Decay/growth rate of the gradient in the bulk of a depth-32 net: chi_1 per layer.
    result.append(
        sk.Claim(
            claim=f"In the bulk (layers {lo}–{hi} of depth {deep}) the gradient RMS changes by "
            "√χ₁ a layer: decays in the ordered phase, grows in the chaotic one",
            theory=f"|∂L/∂h^(l−1)| / |∂L/∂h^l| → √χ₁ once q^l = q* (χ₁: the predicted χ^l "
            f"over those layers); agreement within {cfg.rate_tol:.0%} in ln",
            measured="; ".join(
                f"{a} {ph} (σ_w² {w:.3g}, χ₁ {c:.3f}): ln rate {m:+.4f} vs ½ ln χ₁ {p:+.4f}"
                for a, ph, w, c, m, p in rates
            ),
            passed=len(rates) >= 2
            and all(abs(m - p) <= cfg.rate_tol * abs(p) for *_, m, p in rates),
        )
    )

    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Draw the three figures from ``numbers["figure_data"]`` (from :func:`measure`)."""
    out, cfg, f = pathlib.Path(out_dir), Config(**numbers["config"]), numbers["figure_data"]
    ds, pred, cmp, picks, chi = f["ds"], f["pred"], f["cmp"], f["picks"], f["chi"]
    crit = numbers["critical_scale"]
    return [
        _profiles_figure(out, ds, pred, picks, chi, cfg),
        _heatmap_figure(out, ds, pred, crit, cfg),
        _tolerance_figure(out, cmp, pred, cfg),
    ]


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = measure(quick=quick)
    t0 = time.perf_counter()
    figs = figure(numbers, out)
    numbers["timings_s"]["figures"] = time.perf_counter() - t0
    result = claims(numbers)
    stored = {k: v for k, v in numbers.items() if k != "figure_data"}
    sk.save_json(out / f"{NAME}.json", {**stored, "figures": [str(f) for f in figs]})
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
