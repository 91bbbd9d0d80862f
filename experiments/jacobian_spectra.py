"""Study: the input-output Jacobian's singular values at criticality, orthogonal vs Gaussian.

Backpropagation multiplies the gradient by the transposed input-output Jacobian
:math:`J = \\partial h^L / \\partial x = W^1 D^1 \\cdots W^L D^L` (:math:`D^l = \\mathrm{diag}\\,
\\phi'(z^l)`). Criticality (:math:`\\chi_1 = \\sigma_w^2 E[\\phi'^2] = 1`) fixes the *mean* squared
singular value at 1, but not the spread: free probability (Pennington, Schoenholz & Ganguli 2017)
gives the variance of the squared singular values :math:`\\lambda` of an L-layer net at
criticality as :math:`\\sigma^2_{JJ^T} = L(\\mu_2/\\mu_1^2 - 1 - s_1)`, with
:math:`\\mu_k = E[\\phi'(\\sqrt{q^*} z)^{2k}]` and :math:`s_1 = -1` for Gaussian weights, 0 for
orthogonal ones. So

* linear: Gaussian :math:`L`, orthogonal 0 (an exact isometry);
* relu (:math:`\\mu_1 = \\mu_2 = 1/2`): Gaussian :math:`2L`, orthogonal :math:`L`: relu cannot be
  made isometric, whatever the weights;
* tanh with a small :math:`q^*` (here :math:`\\sigma_b^2 = 0.01`, :math:`q^* = 0.27`):
  orthogonal :math:`L(\\mu_2/\\mu_1^2 - 1) = 0.15 L`, near isometry ("dynamical isometry", and
  :math:`\\to 0` as :math:`q^* \\to 0`); Gaussian :math:`1.15 L`.

Finite width shifts the tanh nets: with Gaussian weights the layer variances :math:`q^l`
fluctuate by :math:`\\sim\\sqrt{2/N}` and, the q-map being concave, drift below :math:`q^*` (Jensen;
measured 3-4% at width 256), which raises :math:`\\mu_1` by ~1% per layer and the mean
:math:`\\lambda` to ~1.2 at L = 16; orthogonal weights preserve :math:`|h|` and barely drift. The
normalized spread is insensitive to that common gain.

Every spectrum is measured with ``stabkit.jacobian_singular_values`` (``jax.jacfwd`` of
``stabkit.mlp_apply`` with the readout replaced by the identity, batched, one compilation per
activation: depth is data) on ``stabkit.mlp_init`` nets whose input has the fixed-point length
(:math:`q^1 = q^*`), and compared with ``stabkit.jacobian_spectrum_moments``. Moments are pooled
over all spectra (one per net); the spread is compared as :math:`\\mathrm{var}(\\lambda) /
\\mathrm{mean}(\\lambda)^2`, the quantity free probability adds layer by layer (equal to the
variance at criticality, where the mean is 1). The tolerance is 3 standard errors (jackknife over
the spectra) plus a finite-width allowance :math:`(L + 1)/N` relative (corrections to the
infinite-width limit are :math:`O(L/N)`).

Run alone: ``python experiments/jacobian_spectra.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "jacobian_spectra"
TITLE = "Jacobian spectra at criticality: orthogonal vs Gaussian weights, linear/tanh vs relu"
ORDER = 71


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 256  # N: every layer is N x N
    depths: tuple[int, ...] = (2, 4, 8, 16)  # L: hidden layers (= weight matrices in J)
    seeds: int = 10  # independent nets per configuration
    inputs: int = 1  # inputs per net (J depends on the input through the D^l)
    tanh_sigma_b2: float = 0.01  # small bias variance: small q* = 0.27, near-linear tanh
    n_se: float = 3.0  # tolerance: n_se standard errors + (L + 1) / N relative
    seed: int = 0


QUICK = Config(width=128, depths=(2, 4, 8), seeds=8)

ACTIVATIONS = ("linear", "tanh", "relu")
INITS = ("orthogonal", "gaussian")
COLORS = {"linear": "#2e8b57", "tanh": "#7b3294", "relu": "#c0392b"}


def _critical_point(activation: str, cfg: Config) -> tuple[float, float]:
    if activation == "linear":
        return 1.0, 0.0
    if activation == "relu":
        return 2.0, 0.0
    return float(sk.critical_line("tanh", cfg.tanh_sigma_b2)), cfg.tanh_sigma_b2


def _measure(cfg: Config) -> dict:
    """Squared singular values lam[(act, init)][depth]: (seeds * inputs, N) arrays."""
    n, top = cfg.width, max(cfg.depths)
    # Unit draws (sigma_w = sigma_b = 1), stacked over seeds; each configuration scales them (the
    # initializers draw multiplier x unit sample). A Python loop, not vmap, over seeds: XLA:CPU's
    # QR (the orthogonal initializer) is far slower batched under vmap than one call at a time.
    t0 = time.perf_counter()
    keys = [jax.random.fold_in(jax.random.key(cfg.seed), s) for s in range(cfg.seeds)]
    units = {
        init: jax.tree.map(
            lambda *a: jnp.stack(a),
            # One at a time: XLA:CPU runs dispatched-but-unfinished calls concurrently, and on a
            # busy 2-core machine that thrashes its thread pool.
            *[
                jax.block_until_ready(sk.mlp_init(k, depth=top, width=n, init=init, bias_std=1.0))
                for k in keys
            ],
        )
        for init in INITS
    }
    jax.block_until_ready(units)
    timings = {"init": time.perf_counter() - t0, "spectra": {}}
    g = jax.random.normal(jax.random.key(cfg.seed + 1), (cfg.seeds, cfg.inputs, n))
    directions = g / jnp.sqrt(jnp.mean(g**2, axis=-1, keepdims=True))  # mean square 1
    depths = jnp.asarray(cfg.depths, jnp.int32)
    out, points = {}, {}
    for act in ACTIVATIONS:
        sw2, sb2 = _critical_point(act, cfg)
        q_star = float(sk.q_star(act, sw2, sb2))  # relu at (2, 0) keeps q0 = 1
        points[act] = {"sigma_w2": sw2, "sigma_b2": sb2, "q_star": q_star}
        x = directions * math.sqrt((q_star - sb2) / sw2)  # q^1 = sigma_w^2 |x|^2/n + sigma_b^2

        # Every seed and depth in one compiled call per activation (depth is data).
        @jax.jit
        def spectra(unit, x, w, b, act=act):
            def one(p, xs):
                p = p._replace(
                    w_in=w * p.w_in,
                    w_hidden=w * p.w_hidden,
                    b_in=b * p.b_in,
                    b_hidden=b * p.b_hidden,
                )
                per_depth = lambda d: sk.jacobian_singular_values(p, xs, act, depth=d)
                return jax.vmap(per_depth)(depths)  # (depths, inputs, N)

            return jax.vmap(one)(unit, x)  # (seeds, depths, inputs, N)

        for init in INITS:
            t0 = time.perf_counter()
            sv = np.asarray(spectra(units[init], x, math.sqrt(sw2), math.sqrt(sb2)), np.float64)
            timings["spectra"][f"{act}/{init}"] = time.perf_counter() - t0
            lam = np.moveaxis(sv**2, 1, 0).reshape(len(cfg.depths), -1, n)
            out[(act, init)] = dict(zip(cfg.depths, lam, strict=True))
    return {"lam": out, "points": points, "timings": timings}


def _moments(lam: np.ndarray) -> dict:
    """Pooled moments of lam (spectra x N), with jackknife standard errors over the spectra.

    ``nvar = var / mean^2`` is what free probability adds layer by layer; it is also immune to a
    common drift of the overall gain, which finite width causes (see the module docstring).
    """
    m1, m2 = lam.mean(axis=1), (lam**2).mean(axis=1)
    k = m1.size

    def stats(p1, p2):  # pooled first and second moments -> (mean, var, var / mean^2)
        var = p2 - p1**2
        return np.stack([p1, var, var / p1**2])

    full = stats(m1.mean(), m2.mean())
    loo = stats((m1.sum() - m1) / (k - 1), (m2.sum() - m2) / (k - 1))  # leave one spectrum out
    se = np.sqrt((k - 1) / k * np.sum((loo - loo.mean(axis=1, keepdims=True)) ** 2, axis=1))
    return {
        "mean": float(full[0]),
        "var": float(full[1]),
        "nvar": float(full[2]),
        "se_mean": float(se[0]),
        "se_var": float(se[1]),
        "se_nvar": float(se[2]),
        "spectra": k,
        "min": float(lam.min()),
        "max": float(lam.max()),
    }


def _tolerance(cfg: Config, depth: int, se: float, theory: float) -> float:
    """n_se standard errors + the finite-width allowance (L + 1)/N relative + float32 rounding."""
    return cfg.n_se * se + (depth + 1) / cfg.width * abs(theory) + 1e-5 * depth


def _slope(cfg: Config, stats: dict, theory: dict) -> dict:
    """Least-squares slope of var against L through the origin, its tolerance and verdict."""
    depths = np.asarray(cfg.depths, float)
    var = np.array([stats[d]["nvar"] for d in cfg.depths])
    th = np.array([theory[d]["nvar"] for d in cfg.depths])
    se = np.array([stats[d]["se_nvar"] for d in cfg.depths])
    norm = depths @ depths
    measured, predicted = float(var @ depths / norm), float(th @ depths / norm)
    # The slope is linear in the per-depth estimates: its standard error and allowance follow.
    tol = cfg.n_se * float(np.sqrt(np.sum((depths * se) ** 2)) / norm)
    tol += float(np.sum(depths * (depths + 1) / cfg.width * th) / norm) + 1e-5
    return {
        "measured": measured,
        "theory": predicted,
        "tolerance": tol,
        "passed": abs(measured - predicted) <= tol,
    }


def _figure(out: pathlib.Path, lam: dict, stats: dict, theory: dict, cfg: Config) -> None:
    fig = plt.figure(figsize=(19, 9), layout="constrained")
    axs = fig.subplot_mosaic(
        [[*(f"{a}/{init}" for a in ACTIVATIONS), "var"] for init in INITS],
        width_ratios=[1, 1, 1, 1.2],
    )
    cmap = plt.get_cmap("viridis")
    floor = 1e-6  # below this, lambda is (numerically) zero: counted, not drawn
    edges = np.arange(-6.0625, 3.07, 0.125)  # log10 lambda; lambda = 1 is a bin centre
    for act in ACTIVATIONS:
        for init in INITS:
            ax = axs[f"{act}/{init}"]
            lines = ["  L    mean  var/mean² (theory) λ<1e-6"]
            for i, d in enumerate(cfg.depths):
                color = cmap(i / max(1, len(cfg.depths) - 1) * 0.9)
                v = lam[(act, init)][d].ravel()
                tiny = float(np.mean(v < floor))
                ax.hist(
                    np.log10(v[v >= floor]),
                    bins=edges,
                    histtype="step",
                    lw=1.6,
                    color=color,
                    weights=np.full(int(np.sum(v >= floor)), 1.0 / v.size),
                    label=f"L = {d}",
                )
                st, th = stats[(act, init)][d], theory[(act, init)][d]
                lines.append(
                    f"{d:>3} {st['mean']:7.3f} {st['nvar']:7.2f} ({th['nvar']:5.2f})    {tiny:4.0%}"
                )
            ax.axvline(0.0, color="black", lw=0.8, ls=":")
            ax.set_xlim(edges[0], edges[-1])
            ax.text(
                0.02,
                0.97,
                "\n".join(lines),
                transform=ax.transAxes,
                va="top",
                fontsize=7.5,
                family="monospace",
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85, "ec": "#cccccc"},
            )
            pt = theory[(act, init)]["point"]
            ax.set_title(
                rf"{act}, {init} weights ($\sigma_w^2$ = {pt['sigma_w2']:.4g}, "
                rf"$\sigma_b^2$ = {pt['sigma_b2']:g})",
                fontsize=10,
            )
            if init == "gaussian":
                ax.set_xlabel(r"$\log_{10} \lambda$ (squared singular value of $J$)")
            if act == "linear":
                ax.set_ylabel("fraction of singular values per bin")
            if act == "tanh" and init == "orthogonal":
                ax.legend(fontsize=8, loc="center left")
            ax.set_ylim(0, None)

    ax = axs["var"]
    depths = np.asarray(cfg.depths)
    for act in ACTIVATIONS:
        for init, marker, ls in (("orthogonal", "o", "-"), ("gaussian", "s", "--")):
            if act == "linear" and init == "orthogonal":
                continue  # exactly 0: stated in the legend
            var = np.array([stats[(act, init)][d]["nvar"] for d in cfg.depths])
            se = np.array([stats[(act, init)][d]["se_nvar"] for d in cfg.depths])
            th = np.array([theory[(act, init)][d]["nvar"] for d in cfg.depths])
            ax.plot(depths, th, ls=ls, color=COLORS[act], lw=1.5)
            ax.errorbar(
                depths,
                var,
                yerr=cfg.n_se * se,
                fmt=marker,
                color=COLORS[act],
                ms=7,
                capsize=3,
                mfc="white" if init == "orthogonal" else COLORS[act],
                label=f"{act}, {init}",
            )
    iso = max(stats[("linear", "orthogonal")][d]["nvar"] for d in cfg.depths)
    ax.plot([], [], " ", label=f"linear, orthogonal: 0 (measured ≤ {iso:.0e})")
    ax.set(
        xlabel="depth L (hidden layers)",
        ylabel=r"spread: $\mathrm{var}(\lambda) / \mathrm{mean}(\lambda)^2$ over the spectrum",
        title="spread vs depth: measured (± 3 SE) and free probability\n"
        r"$L(\mu_2/\mu_1^2 - 1 - s_1)$; solid: orthogonal, dashed: Gaussian",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8.5, loc="upper left")
    fig.suptitle(
        f"Input-output Jacobian of width-{cfg.width} nets at criticality (mean λ = 1): orthogonal "
        "weights keep linear and small-q* tanh nets near isometry; Gaussian weights and relu "
        "spread as L",
        fontsize=12,
    )
    fig.savefig(out / f"{NAME}.png", dpi=85)
    plt.close(fig)


def measure(*, quick: bool) -> dict:
    """The numbers of the study: the spectra's moments beside free probability's, per net.

    ``numbers["figure_data"]`` holds the spectra and moments the figure draws (not stored in
    ``NAME.json``); the rest is stored there and is all that :func:`claims` reads.
    """
    cfg = QUICK if quick else Config()
    t0 = time.perf_counter()
    m = _measure(cfg)
    seconds_measure = time.perf_counter() - t0
    lam, points = m["lam"], m["points"]
    stats, theory = {}, {}
    for (act, init), by_depth in lam.items():
        pt = points[act]
        stats[(act, init)] = {d: _moments(v) for d, v in by_depth.items()}
        theory[(act, init)] = {"point": pt}
        for d in cfg.depths:
            th = sk.jacobian_spectrum_moments(act, pt["sigma_w2"], pt["sigma_b2"], d, weights=init)
            theory[(act, init)][d] = {**th._asdict(), "nvar": th.variance / th.mean**2}
    iso = lam[("linear", "orthogonal")]
    return {
        "config": dataclasses.asdict(cfg),
        "points": points,
        "measured": {f"{a}/{i}": {str(d): s for d, s in v.items()} for (a, i), v in stats.items()},
        "theory": {
            f"{a}/{i}": {
                str(d): {
                    "mean": t[d]["mean"],
                    "variance": t[d]["variance"],
                    "mu1": t[d]["mu1"][0],
                    "mu2": t[d]["mu2"][0],
                    "s1": t[d]["s1"],
                }
                for d in cfg.depths
            }
            for (a, i), t in theory.items()
        },
        "seconds_measure": seconds_measure,
        "timings_s": m["timings"],
        # orthogonal + linear: the largest |s - 1| over every singular value, and their number
        "isometry": {
            "max_abs_dev": max(float(np.max(np.abs(np.sqrt(v) - 1))) for v in iso.values()),
            "singular_values": sum(v.size for v in iso.values()),
        },
        "figure_data": {"lam": lam, "stats": stats, "theory": theory},
    }


def _by_net(numbers: dict) -> tuple[dict, dict]:
    """The measured and predicted moments as ``{(activation, init): {depth: {...}}}``."""
    depths = numbers["config"]["depths"]
    stats, theory = {}, {}
    for net, by_depth in numbers["measured"].items():
        key = tuple(net.split("/"))
        stats[key] = {d: by_depth[str(d)] for d in depths}
        theory[key] = {}
        for d in depths:
            th = numbers["theory"][net][str(d)]
            theory[key][d] = {**th, "nvar": th["variance"] / th["mean"] ** 2}
    return stats, theory


def _within(numbers: dict) -> dict:
    """Per (activation, init, depth): (mean within tolerance, var/mean² within tolerance)."""
    cfg = Config(**numbers["config"])
    stats, theory = _by_net(numbers)
    verdicts = {}
    for key in stats:
        for d in cfg.depths:
            st, th = stats[key][d], theory[key][d]
            verdicts[(*key, d)] = (
                abs(st["mean"] - th["mean"]) <= _tolerance(cfg, d, st["se_mean"], th["mean"]),
                abs(st["nvar"] - th["nvar"]) <= _tolerance(cfg, d, st["se_nvar"], th["nvar"]),
            )
    return verdicts


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    stats, theory = _by_net(numbers)
    verdicts = _within(numbers)
    top = max(cfg.depths)
    result = []
    dev = numbers["isometry"]["max_abs_dev"]
    result.append(
        sk.Claim(
            claim="Orthogonal weights + linear activation: J is an isometry, every singular "
            "value is 1",
            theory="J is a product of orthogonal matrices: σ²_JJᵀ = 0 at every depth",
            measured=f"max |s − 1| over {numbers['isometry']['singular_values']} singular values, "
            f"depths {list(cfg.depths)} (float32): {dev:.1e}",
            passed=dev < 1e-4,
        )
    )

    means = {k: [stats[k][d]["mean"] for d in cfg.depths] for k in stats}
    result.append(
        sk.Claim(
            claim="At criticality the mean squared singular value is 1 for all six nets",
            theory="m₁ = (σ_w² μ₁)^L = χ₁^L = 1; tolerance 3 SE + (L+1)/N relative",
            measured="measured means: "
            + ", ".join(f"{a}/{i[:5]} {min(v):.3f}–{max(v):.3f}" for (a, i), v in means.items()),
            passed=all(ok for ok, _ in verdicts.values()),
        )
    )
    bad = [f"{a}/{i}/L={d}" for (a, i, d), (_, ok) in verdicts.items() if not ok]
    ratio = max(
        abs(stats[k][d]["nvar"] - theory[k][d]["nvar"])
        / _tolerance(cfg, d, stats[k][d]["se_nvar"], theory[k][d]["nvar"])
        for k in stats
        for d in cfg.depths
    )
    result.append(
        sk.Claim(
            claim="The spread var(λ)/mean(λ)² matches free probability for every activation, "
            "weight law and depth",
            theory="L(μ₂/μ₁² − 1 − s₁), s₁ = −1 Gaussian, 0 orthogonal (Pennington et al. 2017; "
            "= σ²_JJᵀ at criticality); tolerance 3 SE + (L+1)/N relative",
            measured=f"{len(verdicts) - len(bad)}/{len(verdicts)} within tolerance; largest "
            f"|Δ|/tolerance {ratio:.2f}" + (f"; outside: {', '.join(bad)}" if bad else ""),
            passed=not bad,
        )
    )

    slopes = {k: _slope(cfg, stats[k], theory[k]) for k in stats}

    def slope_text(k):
        sl = slopes[k]
        return f"{sl['measured']:.3f} ± {sl['tolerance']:.3f} (theory {sl['theory']:.3f})"

    k = ("linear", "gaussian")
    result.append(
        sk.Claim(
            claim="Gaussian weights: the spread grows linearly with depth even for a linear net",
            theory="σ²_JJᵀ = L (Fuss-Catalan m₂ = L + 1): slope 1 per layer",
            measured=f"fitted slope of var/mean² against L: {slope_text(k)}; var at L = {top}: "
            f"{stats[k][top]['var']:.2f}",
            passed=slopes[k]["passed"],
        )
    )
    ro, rg = ("relu", "orthogonal"), ("relu", "gaussian")
    result.append(
        sk.Claim(
            claim="relu cannot achieve dynamical isometry: even orthogonal weights spread as L",
            theory="μ₁ = μ₂ = 1/2: σ²_JJᵀ = L (orthogonal), 2L (Gaussian)",
            measured=f"fitted slopes of var/mean²: orthogonal {slope_text(ro)}, Gaussian "
            f"{slope_text(rg)}; orthogonal var at L = {top}: {stats[ro][top]['var']:.1f}",
            passed=slopes[ro]["passed"] and slopes[rg]["passed"],
        )
    )
    to, tg = ("tanh", "orthogonal"), ("tanh", "gaussian")
    result.append(
        sk.Claim(
            claim=f"tanh at small q* (σ_b² = {cfg.tanh_sigma_b2:g}) with orthogonal weights stays "
            "near isometry; with Gaussian weights it does not",
            theory=f"slopes μ₂/μ₁² − 1 = {slopes[to]['theory']:.3f} (orthogonal) vs μ₂/μ₁² = "
            f"{slopes[tg]['theory']:.3f} (Gaussian)",
            measured=f"fitted slopes of var/mean²: orthogonal {slope_text(to)}, Gaussian "
            f"{slope_text(tg)} "
            f"({slopes[tg]['measured'] / slopes[to]['measured']:.1f}x)",
            passed=slopes[to]["passed"] and slopes[tg]["passed"],
        )
    )

    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png`` from ``numbers["figure_data"]`` (from :func:`measure`)."""
    f = numbers["figure_data"]
    _figure(pathlib.Path(out_dir), f["lam"], f["stats"], f["theory"], Config(**numbers["config"]))


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    stored = {k: v for k, v in numbers.items() if k != "figure_data"}
    within = {f"{a}/{i}/{d}": v for (a, i, d), v in _within(numbers).items()}
    keys = ("config", "points", "measured", "theory")
    record = {**{k: stored.pop(k) for k in keys}, "within_tolerance": within, **stored}
    sk.save_json(out / f"{NAME}.json", record)
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
