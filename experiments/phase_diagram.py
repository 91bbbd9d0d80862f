"""Study: the order-to-chaos phase diagram, and wide random networks measured against the maps.

Mean-field theory (Poole et al. 2016, Schoenholz et al. 2017) describes a deep random network with
weights :math:`N(0, \\sigma_w^2/n)` and biases :math:`N(0, \\sigma_b^2)` by two maps: the
pre-activation variance :math:`q^{l+1} = \\sigma_w^2 E[\\phi(\\sqrt{q^l} z)^2] + \\sigma_b^2` and
the correlation :math:`c^l` of two inputs. The slope :math:`\\chi_1 = \\sigma_w^2
E[\\phi'(\\sqrt{q^*} z)^2]` of the c-map at :math:`c = 1` splits the
:math:`(\\sigma_w^2, \\sigma_b^2)` plane into an ordered phase (:math:`\\chi_1 < 1`: all inputs
converge to one point, gradients vanish) and a chaotic phase (:math:`\\chi_1 > 1`: nearby inputs
decorrelate, gradients explode); on the critical line between them the correlation depth scale
:math:`\\xi_c` diverges, and networks train up to about :math:`6 \\xi_c` layers.

Everything here is ``stabkit.theory`` (float64, q-adapted quadrature, closed forms for relu)
against ``stabkit.mlp_init``/``mlp_apply`` networks of width 512 (float32): for three tanh points
(ordered, critical, chaotic) the measured mean square pre-activation :math:`q^l` and the cosine
:math:`c^l` of two inputs' pre-activations at every layer are compared with the iterated maps.
The readout of a depth-``d`` net is one more random layer, so its output is :math:`z^{d+1}`; depth
is data, so one compiled function serves every layer, point and seed.

Run alone: ``python experiments/phase_diagram.py [--out DIR] [--quick]``.
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
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "phase_diagram"
TITLE = "Order to chaos: the mean-field phase diagram, xi_c, and wide tanh nets against the maps"
ORDER = 70


@dataclasses.dataclass(frozen=True)
class Config:
    grid: int = 200  # the phase diagram is grid x grid points
    sw_range: tuple[float, float] = (0.5, 4.0)  # sigma_w^2 axis
    sb_range: tuple[float, float] = (0.0, 0.3)  # sigma_b^2 axis, as in Schoenholz et al. 2017
    order: int = 40  # quadrature nodes for the grid (40^2 for the c-map); lines use 128
    width: int = 512  # Monte Carlo network width (the maps are its n -> infinity limit)
    depth: int = 24  # hidden layers of the Monte Carlo nets
    seeds: int = 12  # independent nets per point; the standard error comes from their spread
    q_in: float = 2.0  # inputs' mean square |x|^2 / n (q^1 = sigma_w^2 q_in + sigma_b^2)
    c_in: float = 0.8  # the two inputs' cosine similarity
    sigma_b2: float = 0.05  # the Monte Carlo points' bias variance
    n_se: float = 4.0  # agreement: |mean - theory| <= n_se standard errors at every layer
    seed: int = 0


QUICK = Config(grid=60, width=256, depth=16, seeds=12)

# Monte Carlo points (name, sigma_w^2 or None for the critical value, colour, marker)
POINTS = (
    ("ordered", 1.2, "#1f5fa8", "D"),
    ("critical", None, "#2e8b57", "o"),
    ("chaotic", 3.0, "#c0392b", "s"),
)


def _pair(key, n: int, c_in: float) -> jax.Array:
    """Two inputs of mean square 1 and cosine similarity exactly c_in."""
    g = jax.random.normal(key, (2, n), jnp.float32)
    u = g[0] / jnp.linalg.norm(g[0])
    v = g[1] - jnp.dot(g[1], u) * u
    v = v / jnp.linalg.norm(v)
    return jnp.stack([u, c_in * u + math.sqrt(1 - c_in**2) * v]) * math.sqrt(n)


def _monte_carlo(cfg: Config, points: list[tuple[str, float]]) -> dict:
    """Measured q^l and c^l for l = 2..depth+1 at every point: (seeds, depth) arrays."""
    x = _pair(jax.random.key(cfg.seed + 1), cfg.width, cfg.c_in) * math.sqrt(cfg.q_in)

    # Unit draws (sigma_w = sigma_b = 1) once per seed; every point scales the same nets
    # (the initializers draw multiplier x unit sample), so the points share their randomness.
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(cfg.seed), s))(
        jnp.arange(cfg.seeds)
    )
    unit = jax.jit(
        jax.vmap(lambda k: sk.mlp_init(k, depth=cfg.depth, width=cfg.width, bias_std=1.0))
    )(keys)

    @jax.jit
    def measure(unit, sw, sb):
        def one(p):
            w, b = jnp.sqrt(sw), jnp.sqrt(sb)
            p = p._replace(
                w_in=w * p.w_in,
                w_hidden=w * p.w_hidden,
                w_out=w * p.w_out,
                b_in=b * p.b_in,
                b_hidden=b * p.b_hidden,
                b_out=b * p.b_out,
            )
            z = jax.vmap(lambda d: sk.mlp_apply(p, x, activation="tanh", depth=d))(
                jnp.arange(1, cfg.depth + 1)
            )  # (depth, 2, width): z^{d+1} of both inputs
            q = jnp.mean(z**2, axis=-1)
            c = jnp.mean(z[:, 0] * z[:, 1], axis=-1) / jnp.sqrt(q[:, 0] * q[:, 1])
            return q.mean(-1), c

        return jax.vmap(one)(unit)

    out = {}
    with sk.count_traces() as count:
        for name, sw in points:
            q, c = measure(unit, sw, cfg.sigma_b2)
            out[name] = {"q": np.asarray(q, np.float64), "c": np.asarray(c, np.float64)}
    out["compilations"] = count.compiles("measure")
    return out


def _agreement(measured: np.ndarray, theory: np.ndarray, n_se: float) -> dict:
    mean = measured.mean(0)
    se = measured.std(0, ddof=1) / math.sqrt(measured.shape[0])
    z = np.abs(mean - theory) / se
    return {
        "mean": mean,
        "se": se,
        "max_z": float(z.max()),
        "max_abs_err": float(np.abs(mean - theory).max()),
        "max_rel_err": float(np.max(np.abs(mean - theory) / np.abs(theory))),
        "passed": bool(np.all(z <= n_se)),
    }


def _figure(out: pathlib.Path, r: dict, cfg: Config) -> None:
    fig = plt.figure(figsize=(17, 10.5), layout="constrained")
    axs = fig.subplot_mosaic([["tanh", "relu", "slice"], ["q", "c", "cmap"]])
    sw, sb = r["sw"], r["sb"]
    sw_lab, sb_lab = r"$\sigma_w^2$", r"$\sigma_b^2$"
    box = {"boxstyle": "round", "fc": "black", "alpha": 0.6, "ec": "none"}

    # (a) tanh: log xi_c, the critical line, contours, the Monte Carlo points
    ax = axs["tanh"]
    xi = np.where(np.isfinite(r["xi_c"]), r["xi_c"], np.nan)
    norm = mcolors.LogNorm(vmin=0.5, vmax=200)
    mesh = ax.pcolormesh(sw, sb, np.clip(xi, 0.5, 200), norm=norm, cmap="magma", shading="auto")
    cs = ax.contour(sw, sb, xi, levels=[2, 5, 10, 20, 50], colors="white", linewidths=0.7)
    ax.clabel(cs, fmt=lambda v: f"{v:g}", fontsize=8)
    ax.plot(r["crit_line"], r["crit_sb"], color="#7fffd4", lw=2.5, label=r"critical: $\chi_1 = 1$")
    for name, swp, color, marker in r["points"]:
        ax.plot(swp, cfg.sigma_b2, marker, color=color, mec="white", ms=9, label=f"MC: {name}")
    ax.text(
        0.58,
        0.215,
        "ORDERED\n" r"$\chi_1 < 1$, $c^* = 1$" "\nvanishing gradients",
        color="white",
        fontsize=9,
        bbox=box,
    )
    ax.text(
        3.0,
        0.16,
        "CHAOTIC\n" r"$\chi_1 > 1$, $c^* < 1$" "\nexploding gradients",
        color="white",
        fontsize=9,
        bbox=box,
    )
    ax.set(
        xlabel=sw_lab,
        ylabel=sb_lab,
        title=r"(a) tanh: depth scale $\xi_c$ (colour, contours in layers)",
    )
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    fig.colorbar(mesh, ax=ax, label=r"$\xi_c$ (layers)")

    # (b) relu: only a critical point
    ax = axs["relu"]
    xi_r = np.where(np.isfinite(r["relu_xi_c"]), r["relu_xi_c"], np.nan)
    ax.pcolormesh(sw, sb, np.clip(xi_r, 0.5, 200), norm=norm, cmap="magma", shading="auto")
    ax.fill_betweenx([sb[0], sb[-1]], 2.0, sw[-1], color="#bbbbbb", alpha=0.95)
    ax.text(
        2.3,
        0.15,
        r"$q^* = \infty$: the signal grows"
        "\nwithout bound, "
        r"$\chi_1 = \sigma_w^2/2 > 1$",
        fontsize=10,
    )
    ax.text(
        0.58,
        0.15,
        "ordered, $q^*$ finite\n" r"$\xi_c = -1/\log(\sigma_w^2/2)$",
        color="white",
        fontsize=10,
        bbox=box,
    )
    ax.axvline(2.0, color="#7fffd4", lw=1.5, ls="--")
    ax.plot(2.0, 0.0, "*", color="#7fffd4", ms=24, mec="black", clip_on=False, zorder=5)
    ax.annotate(
        "the only critical point:\n" r"$(\sigma_w^2, \sigma_b^2) = (2, 0)$, He init",
        (2.0, 0.0),
        xytext=(2.3, 0.05),
        fontsize=10,
        arrowprops={"arrowstyle": "->"},
    )
    ax.set(
        xlabel=sw_lab,
        ylabel=sb_lab,
        title=r"(b) relu: $\xi_c$ (same colours); $\chi_1 = \sigma_w^2 / 2$ exactly",
    )

    # (c) the depth scales along sigma_b^2 = 0.05
    ax = axs["slice"]
    ax.semilogy(r["slice_sw"], r["slice_xi_c"], color="#7b3294", lw=2, label=r"$\xi_c$")
    ax.semilogy(
        r["slice_sw"],
        6 * r["slice_xi_c"],
        color="#7b3294",
        lw=1,
        ls=":",
        label=r"$6\,\xi_c$: trainable depth (Schoenholz et al.)",
    )
    ax.semilogy(r["slice_sw"], r["slice_xi_q"], color="#e08214", lw=2, label=r"$\xi_q$")
    ax.axvline(
        r["crit_005"],
        color="#2e8b57",
        ls="--",
        lw=1.2,
        label=rf"critical $\sigma_w^2$ = {r['crit_005']:.4f}",
    )
    ax.set(
        xlabel=sw_lab,
        ylabel="layers",
        ylim=(0.3, 3e3),
        title=rf"(c) tanh, $\sigma_b^2$ = {cfg.sigma_b2}: $\xi_c \to \infty$ at $\chi_1 = 1$",
    )
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")

    # (d), (e) Monte Carlo against the maps
    layers = np.arange(2, cfg.depth + 2)
    panels = (
        ("q", axs["q"], "$q^l$: mean square pre-activation"),
        ("c", axs["c"], "$c^l$: cosine of the two inputs' pre-activations"),
    )
    for key, ax, label in panels:
        for name, _, color, marker in r["points"]:
            a = r["mc"][name][key]
            ax.plot(r["theory_layers"], r["theory"][name][key], color=color, lw=1.6, alpha=0.9)
            ax.errorbar(
                layers,
                a["mean"],
                yerr=cfg.n_se * a["se"],
                fmt=marker,
                color=color,
                ms=4,
                capsize=2,
                lw=0.8,
                label=f"{name}: largest gap {a['max_z']:.1f} SE",
            )
        ax.set(xlabel="layer $l$", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=8,
            title_fontsize=8,
            title=f"lines: the map; points: width-{cfg.width} nets\n"
            f"(mean ± {cfg.n_se:g} SE over {cfg.seeds} nets)",
        )
    axs["q"].set_title(r"(d) measured $q^l$ vs the q-map (tanh, $\sigma_b^2$ = 0.05)")
    axs["c"].set_title(r"(e) measured $c^l$ vs the c-map")

    # (f) the c-maps at q*: C(c) - c, whose zeros are the fixed points
    ax = axs["cmap"]
    cc = r["cmap_c"]
    ax.axhline(0.0, color="black", lw=0.8)
    for name, _, color, _ in r["points"]:
        ax.plot(
            cc,
            r["cmap"][name] - cc,
            color=color,
            lw=2,
            label=rf"{name}: $\chi_1$ = {r['chi_1'][name]:.3f}, $c^*$ = {r['c_star'][name]:.3f}",
        )
        ax.plot(r["c_star"][name], 0.0, "o", color=color, ms=9, mec="white", zorder=5)
    ax.set(
        xlabel="$c$",
        ylabel=r"$\mathcal{C}(c) - c$ at $q^*$",
        xlim=(0, 1.0),
        title=r"(f) the c-map: fixed points (dots), slope $\chi_1 - 1$ at $c = 1$",
    )
    ax.legend(fontsize=9, loc="upper right")
    ax.grid(alpha=0.3)

    fig.suptitle(
        "Signal propagation in deep random networks: mean-field theory (float64 quadrature) "
        f"and width-{cfg.width} tanh nets (float32) agree layer by layer",
        fontsize=13,
    )
    fig.savefig(out / f"{NAME}.png", dpi=90)
    plt.close(fig)


def measure(*, quick: bool) -> dict:
    """The numbers of the study: the maps over the grid, the critical line, the Monte Carlo nets.

    ``numbers["figure_data"]`` holds the grids the figure draws (not stored in ``NAME.json``);
    the rest is stored there, and ``claims_numbers`` with ``config``, ``points`` and
    ``monte_carlo`` is all that :func:`claims` reads.
    """
    cfg = QUICK if quick else Config()
    timings = {}
    t0 = time.perf_counter()
    sw = np.linspace(*cfg.sw_range, cfg.grid)
    sb = np.linspace(*cfg.sb_range, cfg.grid)
    mf = sk.mean_field("tanh", sw[None, :], sb[:, None], order=cfg.order)
    relu = sk.mean_field("relu", sw[None, :], sb[:, None])
    timings["grids"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    crit = sk.critical_line("tanh", sb)  # default order 128
    chi_on_line = sk.mean_field("tanh", crit, sb).chi_1  # shares the slice's compilation
    crit_005 = float(sk.critical_line("tanh", cfg.sigma_b2))
    slice_sw = np.linspace(*cfg.sw_range, 200)
    sl = sk.mean_field("tanh", slice_sw, cfg.sigma_b2)
    timings["lines"] = time.perf_counter() - t0

    points = [(name, crit_005 if v is None else v, color, m) for name, v, color, m in POINTS]
    t0 = time.perf_counter()
    mc = _monte_carlo(cfg, [(name, v) for name, v, _, _ in points])
    timings["monte_carlo"] = time.perf_counter() - t0

    theory, agreement, chi1, cstar, cmap = {}, {}, {}, {}, {}
    cmap_c = np.linspace(0.0, 1.0, 101)
    for name, v, _, _ in points:
        it = sk.iterate_maps(
            "tanh", v, cfg.sigma_b2, q_in=cfg.q_in, c_in=cfg.c_in, depth=cfg.depth + 1
        )
        theory[name] = {"q": it.q, "c": it.c}
        agreement[name] = {
            "q": _agreement(mc[name]["q"], it.q[1:], cfg.n_se),
            "c": _agreement(mc[name]["c"], it.c[1:], cfg.n_se),
        }
        m = sk.mean_field("tanh", v, cfg.sigma_b2)
        chi1[name], cstar[name] = float(m.chi_1), float(m.c_star)
        cmap[name] = sk.c_map("tanh", cmap_c, float(m.q_star), v, cfg.sigma_b2)

    r = {
        "sw": sw,
        "sb": sb,
        "xi_c": mf.xi_c,
        "relu_xi_c": relu.xi_c,
        "crit_line": crit,
        "crit_sb": sb,
        "crit_005": crit_005,
        "points": points,
        "slice_sw": slice_sw,
        "slice_xi_c": sl.xi_c,
        "slice_xi_q": sl.xi_q,
        "mc": agreement,
        "theory": theory,
        "theory_layers": np.arange(1, cfg.depth + 2),
        "chi_1": chi1,
        "c_star": cstar,
        "cmap": cmap,
        "cmap_c": cmap_c,
    }

    # What the claims read off the grids, which NAME.json does not hold.
    rows = slice(1, None)  # sigma_b^2 > 0
    peak = sw[np.argmax(np.where(np.isfinite(mf.xi_c), mf.xi_c, np.inf)[rows], axis=1)]
    claims_numbers = {
        "relu_critical_sigma_w2_at_0": float(sk.critical_line("relu", 0.0)),
        "relu_phase_at_2_0": sk.PHASE_NAMES[int(sk.phase("relu", 2.0, 0.0))],
        "relu_chi_1_is_half_sigma_w2": np.array_equal(
            relu.chi_1, np.broadcast_to(sw[None, :] / 2, relu.chi_1.shape)
        ),
        "critical_sigma_w2_at_0": float(crit[0]),
        "chi_1_on_line_max_dev": float(np.max(np.abs(chi_on_line[1:] - 1))),
        "chi_1_on_line_dev_at_0": abs(float(chi_on_line[0]) - 1),
        "xi_c_peak_max_distance": float(np.max(np.abs(peak - crit[rows]))),
        "grid_step": float(sw[1] - sw[0]),
        "xi_c_min": float(np.nanmin(mf.xi_c)),
        "xi_c_max": float(np.max(mf.xi_c[np.isfinite(mf.xi_c)])),
    }
    return {
        "config": dataclasses.asdict(cfg),
        "timings_s": timings,
        "critical_line": {"sigma_b2": sb, "sigma_w2": crit, "chi_1": chi_on_line},
        "critical_sigma_w2_at_0.05": crit_005,
        "points": {
            n: {"sigma_w2": v, "sigma_b2": cfg.sigma_b2, "chi_1": chi1[n], "c_star": cstar[n]}
            for n, v, *_ in points
        },
        "monte_carlo": {
            n: {k: {kk: vv for kk, vv in a.items()} for k, a in agreement[n].items()}
            for n, *_ in points
        },
        "theory": theory,
        "monte_carlo_compilations": mc["compilations"],
        "xi_c_slice": {"sigma_w2": slice_sw, "xi_c": sl.xi_c, "xi_q": sl.xi_q},
        "claims_numbers": claims_numbers,
        "figure_data": r,
    }


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    c = numbers["claims_numbers"]
    crit_005 = numbers["critical_sigma_w2_at_0.05"]
    agreement, names = numbers["monte_carlo"], list(numbers["points"])
    result = []
    relu_crit, relu_phase = c["relu_critical_sigma_w2_at_0"], c["relu_phase_at_2_0"]
    relu_exact = c["relu_chi_1_is_half_sigma_w2"]
    result.append(
        sk.Claim(
            claim="relu's only critical point is (σ_w², σ_b²) = (2, 0), with χ₁ = σ_w²/2",
            theory="χ₁ = σ_w² E[relu'(z)²] = σ_w²/2 for every σ_b² (closed form); "
            "q* = ∞ for σ_w² > 2",
            measured=f"critical_line('relu', 0) = {relu_crit}; χ₁ = σ_w²/2 exactly on the "
            f"{cfg.grid}×{cfg.grid} grid: {relu_exact}; phase(2, 0) = {relu_phase}",
            passed=relu_exact and relu_crit == 2.0 and relu_phase == "critical",
        )
    )
    crit0 = c["critical_sigma_w2_at_0"]
    result.append(
        sk.Claim(
            claim="tanh's critical line starts at (σ_b², σ_w²) = (0, 1) and passes σ_w² ≈ 1.76 "
            "at σ_b² = 0.05",
            theory="Schoenholz et al. 2017 (phase diagram; their tanh experiments use σ_b² = "
            "0.05): σ_w² = 1 at σ_b² = 0 (tanh'(0) = 1), ≈ 1.76 at σ_b² = 0.05",
            measured=f"bisection on χ₁ (128-node quadrature): σ_w² = {crit0:.8f} at σ_b² = 0, "
            f"{crit_005:.7f} at 0.05",
            passed=abs(crit0 - 1) < 1e-6 and abs(crit_005 - 1.76) < 0.005,
        )
    )
    dev, dev0 = c["chi_1_on_line_max_dev"], c["chi_1_on_line_dev_at_0"]
    result.append(
        sk.Claim(
            claim="χ₁ = 1 all along the computed critical line",
            theory="the line is the root of χ₁(σ_w²; σ_b²) = 1",
            measured=f"max |χ₁ − 1| over {cfg.grid - 1} points with σ_b² > 0: {dev:.1e}; "
            f"at σ_b² = 0 (a tangency): {dev0:.1e}",
            passed=dev < 1e-10 and dev0 < 1e-7,
        )
    )
    off, step = c["xi_c_peak_max_distance"], c["grid_step"]
    # float(): NAME.json stores inf and NaN as strings
    xi_min, xi_max = float(c["xi_c_min"]), float(c["xi_c_max"])
    result.append(
        sk.Claim(
            claim="The depth scale ξ_c diverges on the critical line: its maximum along every "
            "row of the phase diagram sits on the line",
            theory="ξ_c = −1/log χ_c(c*) → ∞ as χ₁ → 1 from either side",
            measured=f"largest distance of a row's argmax ξ_c from the line: {off:.4f} (grid "
            f"step {step:.4f}); finite ξ_c on the grid: {xi_min:.2f}–{xi_max:.3g}",
            passed=off <= 1.5 * step,
        )
    )
    for key, what in (("q", "mean square pre-activation q^l"), ("c", "correlation c^l")):
        ok = all(agreement[n][key]["passed"] for n in names)
        err = "rel err {:.1%}" if key == "q" else "|Δc| {:.3f}"
        field = "max_rel_err" if key == "q" else "max_abs_err"
        detail = "; ".join(
            f"{n}: max {agreement[n][key]['max_z']:.1f} SE, max "
            + err.format(agreement[n][key][field])
            for n in names
        )
        result.append(
            sk.Claim(
                claim=f"Width-{cfg.width} tanh nets follow the {key}-map: {what}, layers "
                f"2–{cfg.depth + 1}, ordered/critical/chaotic points",
                theory=f"the iterated {key}-map from q_in = {cfg.q_in}, c_in = {cfg.c_in}; "
                f"agreement: within {cfg.n_se:g} standard errors ({cfg.seeds} nets) at every "
                "layer",
                measured=detail,
                passed=ok,
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
    stored = {k: v for k, v in numbers.items() if k != "figure_data"}
    sk.save_json(out / f"{NAME}.json", stored)
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
