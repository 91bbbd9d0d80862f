"""Study: the note's second cause, the activation. Sigmoid gradients vanish; relu fixes it.

Backpropagation multiplies the gradient, at every layer, by the activation's derivative and by
the transposed weights. In the mean-field picture (Schoenholz et al. 2017, eq. 7) each layer scales
the gradient's RMS by about :math:`\\sigma_w \\cdot \\mathrm{rms}(\\phi'(z))`. The sigmoid's
derivative :math:`\\sigma(1 - \\sigma)` is at most 1/4 (and almost 0 once :math:`|z|` is large), so
with Glorot weights (:math:`\\sigma_w = 1` for a square layer) a 50-layer sigmoid net shrinks its
gradient by about :math:`4^{-50}`; relu's derivative is 1 on half its inputs, and He weights
(:math:`\\sigma_w = \\sqrt 2`) make the factor :math:`\\sqrt{2 \\cdot 1/2} = 1`.

Every number is measured with ``stabkit.trace`` on ``stabkit.mlp_init`` nets, in float32 (and in
float16, where the vanished gradient rounds to exactly 0). Depth is data: one compiled trace per
activation serves every depth from 1 to 50.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone


@dataclasses.dataclass(frozen=True)
class Config:
    depth: int = 50  # hidden layers, as in the issue
    width: int = 64  # units per layer (square layers, so Glorot's sigma_w is 1)
    batch: int = 128  # examples in x ~ N(0, 1)
    threshold: float = 1e-2  # a unit is saturated where |phi'(z)| < threshold
    big_sigma_w: float = 8.0  # "bad" large weights, to show saturation
    seed: int = 0


NAME = "activations"
TITLE = "Sigmoid vs tanh vs relu at depth 50: vanishing gradients, saturation, the relu fix"
ORDER = 40

# activation -> (initializer, sigma_w of a square layer under it, colour)
NETS = {
    "sigmoid": ("glorot_normal", 1.0, "#c0392b"),
    "tanh": ("glorot_normal", 1.0, "#8e44ad"),
    "relu": ("he_normal", math.sqrt(2.0), "#1f5fa8"),
}


def _measure(cfg: Config) -> dict:
    key = jax.random.key(cfg.seed)
    x = jax.random.normal(jax.random.fold_in(key, 1), (cfg.batch, cfg.width))
    out = {}
    for act, (init, sigma_w, _) in NETS.items():
        params = sk.mlp_init(key, depth=cfg.depth, width=cfg.width, init=init)
        full = sk.trace(params, x, activation=act, saturation_threshold=cfg.threshold)
        # The same compiled trace for every depth (depth is data).
        ratios = []
        for d in range(1, cfg.depth + 1):
            t = sk.trace(params, x, activation=act, depth=d)
            ratios.append(float(t.grad_pre_rms[1] / t.grad_pre_rms[d + 1]))
        out[act] = {
            "trace": jax.tree.map(np.asarray, full),
            "ratios": np.asarray(ratios),
            "sigma_w": sigma_w,
        }
        if act != "tanh":  # float16 for the underflow claim: sigmoid against relu
            half = sk.mlp_init(key, depth=cfg.depth, width=cfg.width, init=init, dtype=jnp.float16)
            out[act]["float16"] = jax.tree.map(np.asarray, sk.trace(half, x, activation=act))
    big = jax.tree.map(
        lambda w: cfg.big_sigma_w * w,
        sk.mlp_init(key, depth=cfg.depth, width=cfg.width, init="glorot_normal"),
    )
    out["sigmoid_big"] = jax.tree.map(
        np.asarray, sk.trace(big, x, activation="sigmoid", saturation_threshold=cfg.threshold)
    )
    z = np.linspace(-20, 20, 400001)
    with jax.enable_x64(True):
        out["dphi"] = {a: np.asarray(sk.derivative(a)(jnp.asarray(z))) for a in NETS}
    out["z"] = z
    return out


def _relative(t) -> tuple[np.ndarray, np.ndarray]:
    """|dL/dz^l| relative to the output layer's, for layers 1..depth+1."""
    n = int(t.depth) + 1
    g = t.grad_pre_rms.astype(np.float64)
    return np.arange(1, n + 1), g[1 : n + 1] / g[n]


def _mean_field(t, sigma_w: float) -> np.ndarray:
    """prod_{k=l}^{depth} sigma_w rms(phi'(z^k)), for l = 1..depth+1 (1 at the output)."""
    n = int(t.depth)
    factors = sigma_w * t.dphi_rms[1 : n + 1].astype(np.float64)
    return np.append(np.cumprod(factors[::-1])[::-1], 1.0)


def _figure(out: pathlib.Path, m: dict, cfg: Config) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(14, 10), constrained_layout=True)
    (ax_d, ax_g), (ax_r, ax_s) = axes

    # (a) the derivatives and the 1/4 bound
    z = m["z"]
    window = np.abs(z) <= 8
    for act, (_, _, color) in NETS.items():
        ax_d.plot(z[window], m["dphi"][act][window], color=color, lw=1.8, label=f"{act}'(z)")
    ax_d.axhline(0.25, color=NETS["sigmoid"][2], ls=":", lw=1)
    ax_d.annotate("σ'(z) = σ(z)(1 − σ(z)) ≤ 1/4", (-7.8, 0.27), color=NETS["sigmoid"][2])
    sat = np.abs(m["dphi"]["sigmoid"]) < cfg.threshold
    edge = float(np.min(np.abs(z[sat])))
    for side in (-1, 1):
        ax_d.axvspan(*sorted((side * edge, side * 8)), color=NETS["sigmoid"][2], alpha=0.07)
    ax_d.annotate(
        f"sigmoid\nsaturated:\n|σ'| < {cfg.threshold:g}\nfor |z| > {edge:.2f}",
        (edge + 0.2, 0.55),
        color=NETS["sigmoid"][2],
        fontsize=9,
    )
    ax_d.set(xlabel="z", ylabel="φ'(z)", title="(a) derivatives: the sigmoid's never exceeds 1/4")
    ax_d.set_xlim(-8, 8)
    ax_d.legend(loc="upper left", frameon=False)

    # (b) per-layer gradient, depth 50, float32 points, mean-field lines, float16 sigmoid
    for act, (init, sigma_w, color) in NETS.items():
        t = m[act]["trace"]
        layers, rel = _relative(t)
        ax_g.semilogy(layers, rel, "o", ms=3.5, color=color, label=f"{act} ({init}), float32")
        ax_g.semilogy(layers, _mean_field(t, sigma_w), "--", color=color, lw=1, alpha=0.8)
    layers = np.arange(1, cfg.depth + 2)
    ax_g.semilogy(
        layers,
        0.25 ** (cfg.depth + 1 - layers),
        ":",
        color="0.3",
        lw=1.2,
        label="bound 4^-(L-l): σ_w·max σ' = 1/4",
    )
    t16 = m["sigmoid"]["float16"]
    layers16, rel16 = _relative(t16)
    pos = rel16 > 0
    ax_g.semilogy(
        layers16[pos],
        rel16[pos],
        "o",
        mfc="none",
        ms=5,
        color=NETS["sigmoid"][2],
        label="sigmoid, float16",
    )
    floor = 1e-40
    zero_layer = int(t16.first_zero_backward)
    ax_g.semilogy(
        layers16[~pos],
        np.full((~pos).sum(), floor),
        "v",
        mfc="none",
        ms=5,
        color=NETS["sigmoid"][2],
    )
    ax_g.annotate(
        f"float16: exactly 0 from layer {zero_layer} down (▼)",
        (zero_layer, floor),
        xytext=(0, 8),
        textcoords="offset points",
        ha="right",
        fontsize=9,
        color=NETS["sigmoid"][2],
    )
    ax_g.set_ylim(floor / 10, 1e3)
    ax_g.set(
        xlabel=f"layer l (1 = first hidden, {cfg.depth + 1} = output)",
        ylabel="RMS ∂L/∂z^l  relative to the output layer",
        title=f"(b) per-layer gradient at depth {cfg.depth}\n"
        "(dashed: mean field ∏ σ_w·rms φ'(z^k))",
    )
    ax_g.legend(loc="center right", frameon=False, fontsize=9)

    # (c) first-to-last gradient ratio against depth
    depths = np.arange(1, cfg.depth + 1)
    for act, (_, _, color) in NETS.items():
        ax_r.semilogy(depths, m[act]["ratios"], "o-", ms=3, lw=1, color=color, label=act)
    ax_r.semilogy(depths, 0.25 ** (depths + 1.0), ":", color="0.3", label="4^-(depth+1)")
    ax_r.axhspan(0.1, 10, color=NETS["relu"][2], alpha=0.06)
    ax_r.annotate("within 10x of 1", (cfg.depth * 0.6, 12), color=NETS["relu"][2], fontsize=9)
    ax_r.set(
        xlabel="depth (hidden layers)",
        ylabel="RMS ∂L/∂z¹ / RMS ∂L/∂ŷ",
        title="(c) gradient reaching layer 1, relative to the output, against depth\n"
        "(one compiled trace per activation serves every depth)",
    )
    ax_r.legend(frameon=False)

    # (d) saturation per layer
    for act, (init, _, color) in NETS.items():
        t = m[act]["trace"]
        layers = np.arange(1, cfg.depth + 1)
        ax_s.plot(
            layers,
            t.saturated[1 : cfg.depth + 1],
            "o-",
            ms=3,
            lw=1,
            color=color,
            label=f"{act} ({init})",
        )
    tb = m["sigmoid_big"]
    ax_s.plot(
        layers,
        tb.saturated[1 : cfg.depth + 1],
        "s--",
        ms=3,
        lw=1,
        color=NETS["sigmoid"][2],
        mfc="none",
        label=f"sigmoid, σ_w = {cfg.big_sigma_w:g} (large weights)",
    )
    tr = m["relu"]["trace"]
    ax_s.plot(
        layers,
        tr.dead[1 : cfg.depth + 1],
        "x",
        color=NETS["relu"][2],
        label="relu: dead units (φ' = 0 for every example)",
    )
    ax_s.set_ylim(-0.03, 1.03)
    ax_s.set(
        xlabel="layer l",
        ylabel=f"fraction of units with |φ'(z)| < {cfg.threshold:g}",
        title="(d) saturated units per layer. relu's φ' is 0 on its negative half;\n"
        "deeper, more relu units are off for the whole batch (✕: inputs correlate)",
    )
    ax_s.legend(frameon=False, fontsize=9, loc="upper left", ncol=2)

    fig.suptitle(
        f"Width {cfg.width}, batch {cfg.batch}, x ~ N(0, 1), loss ½·mean(ŷ²), zero biases. Sigmoid "
        "gradients shrink about 4x per layer (σ' ≤ 1/4) with no unit saturated;\nlarge weights "
        "saturate the sigmoid; relu with He weights keeps the gradient near 1 at every depth.",
        fontsize=11,
    )
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def measure(*, quick: bool) -> dict:
    """The numbers of the study: the traces' per-layer statistics and the claims' summaries.

    ``numbers["traces"]`` holds what :func:`_measure` returns, which the figure draws (not stored
    in ``NAME.json``); the rest is stored there, and ``claims_numbers`` with ``config`` is all
    that :func:`claims` reads.
    """
    cfg = Config(width=32, batch=64) if quick else Config()
    m = _measure(cfg)
    z, d = m["z"], m["dphi"]["sigmoid"]
    t = m["sigmoid"]["trace"]
    n = cfg.depth + 1
    big = m["sigmoid_big"]
    record = {
        "config": dataclasses.asdict(cfg),
        "claims_numbers": {
            "sigmoid_dphi_max": float(d.max()),
            "ratio_sigmoid": float(t.grad_pre_rms[1] / t.grad_pre_rms[n]),
            "mean_field_sigmoid": float(_mean_field(t, NETS["sigmoid"][1])[0]),
            "ratios": {a: m[a]["ratios"] for a in NETS},
            "first_zero_backward_float16": {
                a: int(m[a]["float16"].first_zero_backward) for a in ("sigmoid", "relu")
            },
            "z_points": z.size,
            "sigmoid_dphi_argmax": float(z[np.argmax(d)]),
            "sigmoid_dphi_at_0": float(sk.derivative("sigmoid")(0.0)),
            "sigmoid_dphi_max_beyond_10": float(np.max(d[np.abs(z) >= 10])),
            # saturated units, mean over the hidden layers: Glorot (sigma_w = 1) and big_sigma_w
            "saturated_sigmoid": float(np.mean(t.saturated[1 : cfg.depth + 1])),
            "saturated_sigmoid_big": float(np.mean(big.saturated[1 : cfg.depth + 1])),
        },
        "per_layer": {
            a: {
                f: getattr(m[a]["trace"], f)
                for f in (
                    "grad_pre_rms",
                    "grad_post_rms",
                    "grad_w_rms",
                    "post_rms",
                    "dphi_rms",
                    "saturated",
                    "dead",
                )
            }
            for a in NETS
        },
    }
    record["per_layer"]["sigmoid_big_saturated"] = big.saturated
    record["traces"] = m
    return record


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    c = numbers["claims_numbers"]
    result = []

    peak = c["sigmoid_dphi_max"]
    result.append(
        sk.Claim(
            claim="The sigmoid's derivative σ'(z) = σ(z)(1 − σ(z)) is at most 1/4",
            theory="maximum 1/4 at z = 0",
            measured=f"max over {c['z_points']} points in [-20, 20] (float64): {peak!r} at z = "
            f"{c['sigmoid_dphi_argmax']:.3g}",
            passed=peak <= 0.25 and c["sigmoid_dphi_at_0"] == 0.25,
        )
    )
    far = c["sigmoid_dphi_max_beyond_10"]
    sat_big, sat_std = c["saturated_sigmoid_big"], c["saturated_sigmoid"]
    result.append(
        sk.Claim(
            claim="The sigmoid's gradient is almost 0 when |z| is large: large weights saturate it",
            theory=f"σ'(z) < 1e-4 for |z| ≥ 10; more units with |σ'| < {cfg.threshold:g} as σ_w "
            "grows",
            measured=f"max σ' for |z| ≥ 10: {far:.2e}; saturated units, mean over layers: "
            f"{sat_std:.1%} (Glorot, σ_w = 1), {sat_big:.1%} (σ_w = {cfg.big_sigma_w:g})",
            passed=far < 1e-4 and sat_big > 0.25 > sat_std,
        )
    )
    ratio, mean_field = c["ratio_sigmoid"], c["mean_field_sigmoid"]
    bound = 0.25**cfg.depth
    result.append(
        sk.Claim(
            claim=f"Deep sigmoid nets' gradients vanish (depth {cfg.depth}, Glorot weights)",
            theory=f"mean field ∏ σ_w·rms σ'(z^l) = {mean_field:.2e} ≤ (1/4)^{cfg.depth} = "
            f"{bound:.1e}; measured within 10x of the mean field",
            measured=f"RMS ∂L/∂z¹ / RMS ∂L/∂ŷ = {ratio:.2e}",
            passed=ratio < 1e-10 and mean_field <= bound and 0.1 < ratio / mean_field < 10,
        )
    )
    ratios = {a: np.asarray(v, np.float64) for a, v in c["ratios"].items()}
    relu, tanh = ratios["relu"], ratios["tanh"]
    result.append(
        sk.Claim(
            claim="relu (with He weights) fixes it: the gradient reaching layer 1 stays O(1) at "
            f"every depth up to {cfg.depth}",
            theory="mean field: σ_w² E[relu'(z)²] = 2 · 1/2 = 1 per layer",
            measured=f"ratio at depth {cfg.depth}: relu {relu[-1]:.3g} (range {relu.min():.3g}–"
            f"{relu.max():.3g} over depths 1–{cfg.depth}); sigmoid "
            f"{ratios['sigmoid'][-1]:.2e}; tanh (Glorot) {tanh[-1]:.3g}",
            passed=bool(np.all((relu > 0.1) & (relu < 10))),
        )
    )
    z16_sig = c["first_zero_backward_float16"]["sigmoid"]
    z16_relu = c["first_zero_backward_float16"]["relu"]
    result.append(
        sk.Claim(
            claim="In float16 the vanished sigmoid gradient underflows to exactly 0; relu's does "
            "not",
            theory="RMS shrinks about 4x per layer and float16's smallest subnormal is 6e-8",
            measured="first all-zero gradient (backward from the output): sigmoid layer "
            f"{z16_sig}; relu {'never' if z16_relu < 0 else z16_relu}",
            passed=z16_sig >= 1 and z16_relu == -1,
        )
    )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png`` from ``numbers["traces"]`` (from :func:`measure`)."""
    _figure(pathlib.Path(out_dir), numbers["traces"], Config(**numbers["config"]))


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    sk.save_json(out / f"{NAME}.json", {k: v for k, v in numbers.items() if k != "traces"})
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
