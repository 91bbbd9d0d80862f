"""Study: residual networks at initialization beside their mean field (Yang & Schoenholz 2017).

A stabkit residual block maps ``h -> h + alpha F(h)``, ``F`` the MLP ``phi(h W1) W2`` (the paper's
*full* residual network, :math:`\\sigma_v = \\alpha\\sigma_w`) or one dense layer ``phi(h W)``
(the *reduced* one). The mean field (:func:`stabkit.theory.residual.residual_mean_field`)
predicts the per-unit second moment :math:`q^l` of :math:`h^l` and the gradient ratio
:math:`G^l = |\\partial L/\\partial h^l|^2 / |\\partial L/\\partial h^L|^2`:

* tanh: the skip turns the plain MLP's exponential dynamics into a **linear** growth of
  :math:`q^l` (:math:`\\approx \\alpha^2\\sigma_w^2 l`), while the gradient grows like
  :math:`\\exp(2c\\sqrt L)`, :math:`c = \\tfrac43\\alpha\\sigma_w^2/\\sqrt{2\\pi}`: faster than any
  polynomial, slower than the plain net's :math:`\\chi_1^L` only beyond the depth where
  :math:`2c\\sqrt L = L\\log\\chi_1` (about 390 blocks at :math:`\\sigma_w = 1.5`);
* relu, MLP branch: **exponential** both ways at exactly :math:`1 + \\alpha^2\\sigma_w^4/2` per
  block; with :math:`\\alpha = 1/\\sqrt L` the whole network multiplies both by
  :math:`(1 + \\sigma_w^4/(2L))^L < e^{\\sigma_w^4/2}`: bounded whatever the depth.

Every net is ``stabkit.net_init(key, stabkit.networks.block(...), init="gaussian", scale=sigma_w,
alpha=alpha, embed=False)`` (biases 0), traced with ``stabkit.trace`` under a fixed random linear
loss (its gradient at the output does not depend on the weights, as the mean field's gradient
independence assumes): one compilation per block serves every seed, ``sigma_w`` and ``alpha``
(data). The inputs are rows of mean square 1 (:math:`q^0 = 1`). Tolerances: :math:`q^l` (the mean
over seeds) within 5% at every layer; :math:`\\log G^l` within 10% (relative) at every layer;
exponential rates (geometric means over seeds and blocks) within 1.5%.

Not in the study: the reduced relu network. Its forward mean field holds on average, but relu's
non-zero mean builds a common mode (:math:`m^l` grows like :math:`\\sqrt{q^l}`) that correlates
each layer's derivative mask with its weights, breaking gradient independence: at
:math:`\\sigma_w = 1` the measured per-block gradient gain is about 2.0 against the predicted 1.5.

Run alone: ``python experiments/residual.py [--out DIR] [--quick]``.
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
from stabkit.theory.residual import residual_mean_field

NAME = "residual"
TITLE = "Residual networks: polynomial forward, exp(sqrt L) or exponential backward (mean field)"
ORDER = 74


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 256  # features of every block
    depth: int = 100  # blocks L
    batch: int = 8  # inputs per net, mean square 1 each
    seeds: int = 6  # independent nets per configuration
    tanh_sigma_w: float = 1.5  # tanh nets: chaotic as a plain MLP (chi_1 = 1.14)
    relu_sigma_w: float = 1.0  # relu nets: 1.5x per block at alpha = 1 (1.5^100 fits float32)
    n_se: float = 3.0  # every tolerance: n_se standard errors over seeds plus an allowance
    q_allow: float = 0.02  # q^l: relative allowance, every layer (mean over seeds)
    log_grad_allow: float = 0.05  # log G^l: allowance, times max(|log G^l|, 1), every layer
    rate_allow: float = 0.005  # per-block growth rates: relative allowance
    slope_tol: float = 0.05  # log-log slope of q^l (tanh residual): absolute
    share_allow: float = 0.02  # top-half share of log G^0: absolute allowance
    seed: int = 0


QUICK = Config(width=128, depth=64)

#: The nets: (activation, block kind, branch, sigma_w field of Config, alpha as "1" or "1/sqrt(L)").
NETS = {
    "tanh_residual": ("tanh", "residual", "mlp", "tanh_sigma_w", "1"),
    "tanh_plain": ("tanh", "dense", "dense", "tanh_sigma_w", "1"),
    "relu_residual": ("relu", "residual", "mlp", "relu_sigma_w", "1"),
    "relu_scaled": ("relu", "residual", "mlp", "relu_sigma_w", "1/sqrt(L)"),
}
LABELS = {
    "tanh_residual": "tanh, residual MLP branch",
    "tanh_plain": "tanh, plain MLP (no skip)",
    "relu_residual": "relu, residual MLP, α = 1",
    "relu_scaled": "relu, residual MLP, α = 1/√L",
}
COLORS = {
    "tanh_residual": "#7b3294",
    "tanh_plain": "#2e8b57",
    "relu_residual": "#c0392b",
    "relu_scaled": "#e67e22",
}


def _probe_loss(y):
    """A fixed random linear loss: dL/dy is the same Gaussian array whatever the weights."""
    g = jax.random.normal(jax.random.key(12345), y.shape, y.dtype)
    return jnp.sum(y * g)


def _alpha(spec: str, depth: int) -> float:
    return 1.0 if spec == "1" else 1.0 / math.sqrt(depth)


def _measure(cfg: Config) -> tuple[dict, dict]:
    """Per net: q[s, l] and G[s, l] (seeds x boundaries 0..L), and the time each part took."""
    n, top = cfg.width, cfg.depth
    g = jax.random.normal(jax.random.key(cfg.seed + 1), (cfg.batch, n))
    x = g / jnp.sqrt(jnp.mean(g**2, axis=-1, keepdims=True))  # q^0 = 1 for every input
    keys = [jax.random.fold_in(jax.random.key(cfg.seed), s) for s in range(cfg.seeds)]
    # One Block object per kind (a block built anew is a new static argument: a compile). The
    # relu residual nets take the tanh residual block's parameters with the relu block swapped
    # in (NetParams.block is static metadata): one init compilation serves both activations.
    blocks = {
        "tanh_residual": sk.networks.block("residual", activation="tanh", branch="mlp"),
        "tanh_plain": sk.networks.block("dense", activation="tanh"),
        "relu_residual": sk.networks.block("residual", activation="relu", branch="mlp"),
    }
    blocks["relu_scaled"] = blocks["relu_residual"]
    init_block = {**blocks, "relu_residual": blocks["tanh_residual"]}
    init_block["relu_scaled"] = blocks["tanh_residual"]
    out, seconds = {}, {}
    for name, (_, _, _, sw_field, alpha_spec) in NETS.items():
        t0 = time.perf_counter()
        sw, alpha = getattr(cfg, sw_field), _alpha(alpha_spec, top)
        q, grad = [], []
        for key in keys:  # one at a time: concurrent dispatches thrash a busy 2-core machine
            params = sk.net_init(
                key, init_block[name], depth=top, width=n, scale=sw, alpha=alpha, embed=False
            )
            params = dataclasses.replace(params, block=blocks[name])
            t = jax.block_until_ready(sk.trace(params, x, loss=_probe_loss))
            rms = np.asarray(t.rms, np.float64)[: top + 1]
            grms = np.asarray(t.grad_rms, np.float64)[: top + 1]
            q.append(rms**2)
            grad.append((grms / grms[top]) ** 2)
        out[name] = {"q": np.stack(q), "grad": np.stack(grad)}
        seconds[name] = time.perf_counter() - t0
    return out, seconds


def _theory(cfg: Config) -> dict:
    th = {}
    for name, (act, kind, branch, sw_field, alpha_spec) in NETS.items():
        sw, alpha = getattr(cfg, sw_field), _alpha(alpha_spec, cfg.depth)
        mf = residual_mean_field(
            act, cfg.depth, sigma_w=sw, alpha=alpha, branch=branch, residual=kind == "residual"
        )
        th[name] = {"q": mf.q, "grad": mf.grad, "chi": mf.chi, "sigma_w": sw, "alpha": alpha}
    # The plain tanh MLP has converged to its fixed point q* (post-activation second moment) and
    # its gradient gain to chi_1 long before the last block (depth scale xi_q = 1.46 at
    # sigma_w = 1.5): the last block's values are theirs (the tests check them against
    # stabkit.q_star and stabkit.chi_1).
    th["tanh_plain"]["q_star"] = float(th["tanh_plain"]["q"][-1])
    th["tanh_plain"]["chi_1"] = float(th["tanh_plain"]["chi"][-1])
    sw = cfg.relu_sigma_w
    th["relu_residual"]["rate"] = 1 + sw**4 / 2
    th["relu_scaled"]["total"] = (1 + sw**4 / (2 * cfg.depth)) ** cfg.depth
    th["relu_scaled"]["bound"] = math.exp(sw**4 / 2)
    c = 4 / 3 * cfg.tanh_sigma_w**2 / math.sqrt(2 * math.pi)
    th["tanh_residual"]["log_grad_asymptotic"] = 2 * c * math.sqrt(cfg.depth)
    return th


def measure(*, quick: bool = False) -> dict:
    """The numbers of the study (everything :func:`claims` and :func:`figure` read)."""
    cfg = QUICK if quick else Config()
    t0 = time.perf_counter()
    theory = _theory(cfg)
    seconds_theory = time.perf_counter() - t0
    measured, seconds = _measure(cfg)
    return {
        "config": dataclasses.asdict(cfg),
        "measured": measured,
        "theory": theory,
        "seconds": {"theory": seconds_theory, **seconds},
    }


# ------------------------------------------------------------------------------------- claims


def _arr(v) -> np.ndarray:
    return np.asarray(v, np.float64)


def _q_check(cfg: Config, numbers: dict, name: str) -> tuple[float, float]:
    """(largest |q̄^l / q^l_pred - 1| / tolerance_l over l = 1..L, that deviation), q̄ the mean over
    seeds and tolerance_l = n_se standard errors + q_allow (relative)."""
    q = _arr(numbers["measured"][name]["q"])[:, 1:]
    th = _arr(numbers["theory"][name]["q"])[1:]
    mean = q.mean(axis=0)
    dev = np.abs(mean / th - 1)
    tol = cfg.n_se * q.std(axis=0, ddof=1) / np.sqrt(q.shape[0]) / mean + cfg.q_allow
    worst = int(np.argmax(dev / tol))
    return float(dev[worst] / tol[worst]), float(np.max(dev))


def _grad_check(cfg: Config, numbers: dict, name: str) -> tuple[float, float, float, float]:
    """(largest |log Ḡ^l - log G^l_pred| / tolerance_l over l = 0..L-1, the largest absolute
    deviation, measured and predicted log G^0); Ḡ the mean over seeds, tolerance_l = n_se
    standard errors of log G^l + log_grad_allow max(|log G^l_pred|, 1)."""
    g = _arr(numbers["measured"][name]["grad"])[:, :-1]
    th = np.log(_arr(numbers["theory"][name]["grad"])[:-1])
    log_mean = np.log(g.mean(axis=0))
    dev = np.abs(log_mean - th)
    se = np.log(g).std(axis=0, ddof=1) / np.sqrt(g.shape[0])
    tol = cfg.n_se * se + cfg.log_grad_allow * np.maximum(np.abs(th), 1.0)
    return float(np.max(dev / tol)), float(np.max(dev)), float(log_mean[0]), float(th[0])


def _rate(cfg: Config, values: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """Per-block geometric-mean growth of ``values[s, l]`` from ``lo`` to ``hi`` pooled over seeds
    in the log (the products are log-normal: their arithmetic mean is noisy), and its tolerance
    (relative): n_se standard errors + rate_allow."""
    logs = np.log(values[:, hi] / values[:, lo]) / (hi - lo)
    se = logs.std(ddof=1) / np.sqrt(logs.size)
    return float(np.exp(logs.mean())), float(cfg.n_se * se + cfg.rate_allow)


def _top_half_share(cfg: Config, numbers: dict, name: str) -> tuple[float, float, float]:
    """(measured, predicted log G^(L/2) / log G^0, tolerance): the share of the gradient's log
    growth made by the top half of the blocks (one half for an exponential, 1 - 1/sqrt(2) for
    exp(c sqrt L), about log 2 / log L for a power of L). Measured on the mean over seeds; the
    tolerance is n_se standard errors of the per-seed shares + share_allow."""
    half = cfg.depth // 2
    g = _arr(numbers["measured"][name]["grad"])
    th = _arr(numbers["theory"][name]["grad"])
    mean = g.mean(axis=0)
    per_seed = np.log(g[:, half]) / np.log(g[:, 0])
    tol = cfg.n_se * per_seed.std(ddof=1) / np.sqrt(per_seed.size) + cfg.share_allow
    return float(np.log(mean[half]) / np.log(mean[0])), float(np.log(th[half]) / np.log(th[0])), tol


def _slope(q: np.ndarray, lo: int, hi: int) -> float:
    return float(np.log(q[hi] / q[lo]) / np.log(hi / lo))


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    m, th = numbers["measured"], numbers["theory"]
    top, lo = cfg.depth, 10
    tol_q = f"tolerance {cfg.n_se:g} SE over seeds + {cfg.q_allow:.0%} at each l = 1..{top}"
    out = []

    def q_claim(name, extra=""):
        ratio, dev = _q_check(cfg, numbers, name)
        return sk.Claim(
            claim=f"{LABELS[name]} (σ_w = {th[name]['sigma_w']:g}): q^l matches the mean field "
            f"at every layer{extra}",
            theory=f"residual_mean_field: q^L = {th[name]['q'][top]:.4g}; {tol_q}",
            measured=f"largest deviation {dev:.1%}, largest deviation/tolerance {ratio:.2f} "
            f"(width {cfg.width}, {cfg.seeds} seeds)",
            passed=ratio <= 1,
        )

    def grad_claim(name, extra=""):
        ratio, dev, g0, t0 = _grad_check(cfg, numbers, name)
        return sk.Claim(
            claim=f"{LABELS[name]}: the gradient ratio G^l matches the mean field at every "
            f"layer{extra}",
            theory=f"log G^0 = {t0:.2f}; tolerance {cfg.n_se:g} SE + {cfg.log_grad_allow:.0%} "
            "of max(|log G^l|, 1)",
            measured=f"log G^0 = {g0:.2f}; largest |Δ log G^l| {dev:.2f}, largest "
            f"deviation/tolerance {ratio:.2f}",
            passed=ratio <= 1,
        )

    # tanh, residual MLP branch: linear forward, exp(sqrt L) backward.
    out.append(q_claim("tanh_residual"))
    q_mean = _arr(m["tanh_residual"]["q"]).mean(axis=0)
    slope, slope_th = _slope(q_mean, lo, top), _slope(_arr(th["tanh_residual"]["q"]), lo, top)
    relu_slope = _slope(_arr(m["relu_residual"]["q"]).mean(axis=0), lo, top)
    out.append(
        sk.Claim(
            claim="tanh residual: q^l grows polynomially (linearly), not exponentially",
            theory=f"q^l ≈ α²σ_w² l: log-log slope over l = {lo}..{top} {slope_th:.3f} "
            f"(→ 1 as l → ∞); tolerance ± {cfg.slope_tol}",
            measured=f"slope {slope:.3f} (relu α = 1, exponential: {relu_slope:.1f})",
            passed=abs(slope - slope_th) <= cfg.slope_tol,
        )
    )
    asym = th["tanh_residual"]["log_grad_asymptotic"]
    out.append(grad_claim("tanh_residual", f", growing like exp(2c√L) (2c√L = {asym:.1f})"))
    shares = {name: _top_half_share(cfg, numbers, name) for name in ("tanh_residual", "tanh_plain")}
    (s_res, t_res, tol_res), (s_pl, t_pl, tol_pl) = shares.values()
    out.append(
        sk.Claim(
            claim="tanh residual: the gradient's growth is sub-exponential: the top half of the "
            "blocks makes a smaller share of log G^0 than in the (exponential) plain MLP",
            theory=f"share log G^(L/2) / log G^0: residual {t_res:.3f} (exp(2c√L) law: 1 − 1/√2 "
            f"= 0.293), plain {t_pl:.3f} (exponential: 0.5); tolerance {cfg.n_se:g} SE + "
            f"{cfg.share_allow}",
            measured=f"residual {s_res:.3f} (± {tol_res:.3f}), plain {s_pl:.3f} (± {tol_pl:.3f})",
            passed=abs(s_res - t_res) <= tol_res and abs(s_pl - t_pl) <= tol_pl and s_res < s_pl,
        )
    )

    # tanh, plain MLP: exponential approach to q*, exponential gradient at chi_1.
    tp = th["tanh_plain"]
    out.append(q_claim("tanh_plain", f", settling at its fixed point q* = {tp['q_star']:.4f}"))
    rate, tol = _rate(cfg, _arr(m["tanh_plain"]["grad"])[:, ::-1], 0, top - lo)
    out.append(
        sk.Claim(
            claim="tanh plain MLP: the gradient grows exponentially, by χ₁ per layer",
            theory=f"χ₁ = σ_w² E[φ'²] at q*: {tp['chi_1']:.4f}; tolerance {cfg.n_se:g} SE + "
            f"{cfg.rate_allow:.1%}",
            measured=f"per-layer gain over layers {lo + 1}..{top}: {rate:.4f} (± {tol:.2%})",
            passed=abs(rate / tp["chi_1"] - 1) <= tol,
        )
    )
    out.append(grad_claim("tanh_plain"))

    # relu, alpha = 1: exponential at 1 + sigma_w^4 / 2, both ways.
    pred = th["relu_residual"]["rate"]
    q_rate, q_tol = _rate(cfg, _arr(m["relu_residual"]["q"]), 0, top)
    g_rate, g_tol = _rate(cfg, _arr(m["relu_residual"]["grad"])[:, ::-1], 0, top)
    out.append(
        sk.Claim(
            claim="relu residual, α = 1: q^l and the gradient grow exponentially at the "
            "predicted rate",
            theory=f"1 + α²σ_w⁴/2 = {pred:.4f} per block, both ways; tolerance {cfg.n_se:g} SE "
            f"+ {cfg.rate_allow:.1%}",
            measured=f"forward {q_rate:.4f} (± {q_tol:.2%}), backward {g_rate:.4f} "
            f"(± {g_tol:.2%}) per block",
            passed=abs(q_rate / pred - 1) <= q_tol and abs(g_rate / pred - 1) <= g_tol,
        )
    )

    # relu, alpha = 1/sqrt(L): bounded.
    rs = th["relu_scaled"]
    q_end = _arr(m["relu_scaled"]["q"])[:, top]
    g_end = _arr(m["relu_scaled"]["grad"])[:, 0]
    ok = []
    for v in (q_end, g_end):
        tol = cfg.n_se * v.std(ddof=1) / np.sqrt(v.size) / v.mean() + cfg.q_allow
        ok.append(abs(v.mean() / rs["total"] - 1) <= tol)
    out.append(
        sk.Claim(
            claim=f"relu residual, α = 1/√L: q^L/q^0 and G^0 stay bounded (L = {top})",
            theory=f"(1 + σ_w⁴/(2L))^L = {rs['total']:.4f} < e^(σ_w⁴/2) = {rs['bound']:.4f} "
            f"for every L; tolerance {cfg.n_se:g} SE + {cfg.q_allow:.0%}",
            measured=f"q^L/q^0 = {q_end.mean():.4f}, G^0 = {g_end.mean():.4f}",
            passed=all(ok),
        )
    )
    out.append(q_claim("relu_scaled"))
    out.append(grad_claim("relu_scaled"))
    return out


# ------------------------------------------------------------------------------------- figure


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png``: q^l and G^l, measured (dots, seed range) beside theory."""
    cfg = Config(**numbers["config"])
    m, th = numbers["measured"], numbers["theory"]
    top = cfg.depth
    layers = np.arange(top + 1)
    fig, axs = plt.subplots(2, 2, figsize=(14, 10.5), layout="constrained")
    (a_ll, a_lin), (a_g, a_sq) = axs
    every = max(1, top // 25)

    def draw(ax, name, key, x=layers, transform=lambda v: v, with_label=True):
        raw = _arr(m[name][key])
        v, mean = transform(raw), transform(raw.mean(axis=0))  # the claims' mean over seeds
        t = transform(_arr(th[name][key]))
        color = COLORS[name]
        ax.plot(x, t, color=color, lw=1.6, label=LABELS[name] if with_label else None)
        sel = slice(0, None, every)
        ax.fill_between(x, v.min(axis=0), v.max(axis=0), color=color, alpha=0.15, lw=0)
        ax.plot(x[sel], mean[sel], "o", color=color, ms=4, mfc="white")

    for name in ("tanh_residual", "tanh_plain", "relu_scaled"):
        draw(a_ll, name, "q")
    a_ll.plot(layers[1:], cfg.tanh_sigma_w**2 * layers[1:], "k:", lw=1, label=r"$\sigma_w^2\,l$")
    a_ll.set(
        xscale="log",
        yscale="log",
        xlabel="block l",
        ylabel=r"$q^l$ (per-unit mean square of $h^l$)",
    )
    a_ll.set_title(
        "forward, log-log: tanh residual grows linearly (polynomial);\n"
        r"plain tanh settles at $q^*$; relu with $\alpha = 1/\sqrt{L}$ stays bounded"
    )
    for name in ("relu_residual", "relu_scaled", "tanh_residual"):
        draw(a_lin, name, "q")
    a_lin.set(yscale="log", xlabel="block l", ylabel=r"$q^l$")
    rate = th["relu_residual"]["rate"]
    a_lin.set_title(
        f"forward, log-linear: relu residual α = 1 is exponential,\n"
        rf"$q^l = (1 + \alpha^2\sigma_w^4/2)^l$ = {rate:g}$^l$"
    )
    for name in ("tanh_residual", "tanh_plain", "relu_residual", "relu_scaled"):
        draw(a_g, name, "grad")
    a_g.set(
        yscale="log",
        xlabel="block l",
        ylabel=r"$G^l = |\partial L/\partial h^l|^2 / |\partial L/\partial h^L|^2$",
    )
    a_g.set_title(
        "backward: exponential for plain tanh ($\\chi_1^{L-l}$) and relu α = 1,\n"
        r"$\exp(2c(\sqrt{L} - \sqrt{l}))$ for tanh residual, bounded for $\alpha = 1/\sqrt{L}$"
    )
    # The exp(sqrt) law: log G^l against sqrt(L) - sqrt(l) is a straight line for tanh residual.
    s = np.sqrt(top) - np.sqrt(layers)
    for name in ("tanh_residual", "tanh_plain"):
        draw(a_sq, name, "grad", x=s, transform=np.log)
    c2 = th["tanh_residual"]["log_grad_asymptotic"] / math.sqrt(top)
    a_sq.plot(s, c2 * s, "k:", lw=1, label=rf"$2c(\sqrt{{L}} - \sqrt{{l}})$, $2c$ = {c2:.2f}")
    a_sq.set(xlabel=r"$\sqrt{L} - \sqrt{l}$", ylabel=r"$\log G^l$")
    a_sq.set_title(
        r"backward against $s = \sqrt{L} - \sqrt{l}$: tanh residual is a line, slope $2c$"
        "\n(sub-exponential); plain tanh is not: "
        r"$(L - l)\log\chi_1 = s(2\sqrt{L} - s)\log\chi_1$"
    )
    for ax in axs.flat:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8.5, loc="best")
    fig.suptitle(
        f"Residual nets at initialization, width {cfg.width}, {cfg.seeds} seeds: mean field "
        "(lines) vs measured (dots: mean over seeds; band: seed range); tanh σ_w = "
        f"{cfg.tanh_sigma_w:g}, relu σ_w = {cfg.relu_sigma_w:g}, no biases",
        fontsize=12,
    )
    fig.savefig(pathlib.Path(out_dir) / f"{NAME}.png", dpi=85)
    plt.close(fig)


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    sk.save_json(out / f"{NAME}.json", numbers)
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
