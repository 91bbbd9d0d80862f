"""Study: small-scale proxies of large-scale transformer training instabilities.

Wortsman et al. (2023) reproduce the instabilities of large transformer runs in small models by
raising the learning rate, and measure a fix by the **learning-rate sensitivity**: over a range of
learning rates :math:`\\eta \\in [a, b]`,

.. math::

    S = \\mathbb E_{\\eta}\\big[\\min(\\ell(\\eta), \\ell_0)\\big] - \\min_{\\eta} \\ell(\\eta),

with :math:`\\ell(\\eta)` the final loss at :math:`\\eta` and :math:`\\ell_0` the initial loss (a
diverged run counts as :math:`\\ell_0`); low :math:`S` means the loss hardly depends on the
learning rate. Two instabilities and their fixes:

* **Attention-logit growth** (Dehghani et al. 2023): the logits :math:`q \\cdot k / \\sqrt d`
  grow with the product of the query and key weights' norms, the attention becomes one-hot (its
  entropy collapses) and the loss degrades. **qk-layernorm** normalizes each head's queries and
  keys, so a logit is at most :math:`g_q g_k \\sqrt d` (the gains): it lowers :math:`S`.
* **Output-logit divergence**: the softmax does not see a shift of all output logits, so nothing
  holds their log-partition :math:`\\log Z`; it drifts. The **z-loss**
  :math:`c \\cdot \\mathrm{mean}(\\log^2 Z)` (PaLM's :math:`c = 10^{-4}`) pulls it to 0.

Setting: next-token prediction on sequences of a random sparse order-2 Markov chain
(``stabkit.markov_sequences``), whose Bayes-optimal loss ``stabkit.markov_entropy`` gives exactly,
with the bound of a model that sees only the current token (the bigram bound, ``context=1``) in
between: a model below the bigram bound uses the previous position through attention. Pre-LN
decoder-only transformers of ``stabkit.block("attention", causal=True, mlp=True, norm="layer")``
blocks (parallel MLP, final layer norm), trained with Adam after a linear warm-up, over learning
rates spanning three decades, depths, seeds and z-loss coefficients, every configuration of one
network kind a single vmapped ``stabkit.train`` call (the qk-layernorm network is a second).

What this scale shows (width 16, 200 steps): a deeper model ends closer to the optimum; without
qk-layernorm every learning rate above the best one (3e-2) grows the attention logits by two to
five orders of magnitude, collapses the attention entropy to ~0 and sends the loss back towards
the bigram bound, and qk-layernorm keeps those logits ~100x smaller and lowers the sensitivity.
The output logits do *not* diverge here: log Z stays near its initial ~3 nats without z-loss
(bursting transiently only at the largest learning rate, with any coefficient), a z-loss of 1e-2
pulls it to ~0, and PaLM's 1e-4 is too weak to move it within 200 steps (its pull is tiny beside
the cross-entropy's gradient noise); the claims say so rather than tune until it moves. The
``quick`` run is the full one: its time is mostly the two compilations.

Run alone: ``python experiments/transformer_instability.py [--out DIR] [--quick]``.

References:
    Wortsman et al. (2023), "Small-scale proxies for large-scale Transformer training
    instabilities".
    Dehghani et al. (2023), "Scaling vision transformers to 22 billion parameters".
    Chowdhery et al. (2022), "PaLM: scaling language modeling with pathways" (z-loss).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import warnings

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "transformer_instability"
TITLE = "Transformer instabilities at small scale: attention-logit growth, qk-layernorm, z-loss"
ORDER = 79


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 8  # tokens of the Markov chain (the classes)
    seq_len: int = 16  # positions per sequence
    n: int = 512  # training sequences
    order: int = 2  # the chain's context: a model must attend to the previous position
    concentration: float = 0.1  # Dirichlet concentration of the chain's rows (sparse)
    width: int = 16  # features per position
    heads: int = 2  # attention heads per block
    depths: tuple = (1, 2)  # the model sizes (blocks)
    steps: int = 200  # Adam steps
    batch_size: int = 16  # sequences per step
    warmup: int = 20  # linear warm-up steps, then a constant learning rate
    log_every: int = 10  # history sampling
    lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # three decades
    z_losses: tuple = (1e-4, 1e-2)  # z-loss coefficients besides 0 (at the largest depth)
    z_lr_min: float = 1e-2  # z-loss claims: the learning rates at which log Z moves in `steps`
    seeds: int = 2  # seeds per configuration
    seed: int = 0  # the task's key


QUICK: dict = {}
FIXES = ("baseline", "qk-layernorm")


def _rows(cfg: Config, fix: str) -> list[tuple[int, float, float, int]]:
    """(depth, z_loss, lr, seed) of every run of one network kind."""
    zs = [(d, 0.0) for d in cfg.depths]
    if fix == "baseline":
        zs += [(max(cfg.depths), z) for z in cfg.z_losses]
    return [(d, z, lr, s) for d, z in zs for lr in cfg.lrs for s in range(cfg.seeds)]


def _train(cfg: Config, task: sk.Task, fix: str) -> dict:
    block = sk.block(
        "attention",
        heads=cfg.heads,
        causal=True,
        mlp=True,
        norm="layer",
        qk_norm=fix == "qk-layernorm",
    )
    spec = sk.TrainSpec(
        task,
        max_depth=max(cfg.depths),
        width=cfg.width,
        block=block,
        final_norm="layer",
        optimizer="adam",
        steps=cfg.steps,
        log_every=cfg.log_every,
        batch_size=cfg.batch_size,
        schedule="constant",
    )
    rows = _rows(cfg, fix)
    depth, z_loss, lr, seed = (list(c) for c in zip(*rows, strict=True))
    runs = sk.make_runs(
        spec,
        depth=depth,
        z_loss=z_loss,
        lr=lr,
        seed=seed,
        warmup=cfg.warmup,
        product=False,
    )
    h = jax.tree.map(np.asarray, sk.train(spec, runs, progress=False))
    d = sk.diagnose(h)
    lmax = h.attn_logit_max.astype(np.float64)  # (R, T, blocks), NaN beyond a run's depth
    ent = h.attn_entropy.astype(np.float64)
    with warnings.catch_warnings():  # a record whose blocks are all NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        logit_max = np.nanmax(lmax, axis=-1)
        entropy = np.nanmin(ent, axis=-1)
    return h.step, {
        "depth": depth,
        "z_loss": z_loss,
        "lr": lr,
        "seed": seed,
        "final_loss": h.final_loss,
        "loss": h.loss,  # (R, T)
        "logit_max": logit_max,  # (R, T): the largest over blocks
        "entropy": entropy,  # (R, T): the smallest over blocks
        "log_z": h.log_z,  # (R, T)
        "verdict": list(d.verdict),
    }


def measure(*, quick: bool = False) -> dict:
    """Train every configuration; the bounds of the task; everything :func:`claims` reads."""
    cfg = Config(**QUICK) if quick else Config()
    key = jax.random.key(cfg.seed)
    chain = dict(
        seq_len=cfg.seq_len, vocab=cfg.vocab, order=cfg.order, concentration=cfg.concentration
    )
    task = sk.markov_sequences(key, n=cfg.n, **chain)
    bounds = {
        "optimum": sk.markov_entropy(key, **chain),
        "bigram": sk.markov_entropy(key, **chain, context=1),
        "unigram": sk.markov_entropy(key, **chain, context=0),
        "uniform": math.log(cfg.vocab),
    }
    trained = {fix: _train(cfg, task, fix) for fix in FIXES}
    step = trained["baseline"][0]
    runs = {fix: r for fix, (_, r) in trained.items()}
    return {"config": dataclasses.asdict(cfg), "bounds": bounds, "step": step, "runs": runs}


# ------------------------------------------------------------------------------------- claims


def _arrays(r: dict) -> dict:
    """One network kind's numbers as float64 arrays (NAME.json holds NaN as "nan")."""
    out = {k: np.asarray(v, np.float64) for k, v in r.items() if k != "verdict"}
    out["verdict"] = np.asarray(r["verdict"])
    return out


def _select(r: dict, depth: int, z: float) -> np.ndarray:
    return np.flatnonzero((r["depth"] == depth) & (r["z_loss"] == z))


def _curve(r: dict, depth: int, z: float, lrs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per learning rate, the seed mean of ``min(final loss, initial loss)`` (a NaN final loss
    counts as the initial loss), and the initial loss (the mean first record of these runs)."""
    idx = _select(r, depth, z)
    loss0 = float(np.nanmean(r["loss"][idx, 0]))
    final = np.where(np.isfinite(r["final_loss"][idx]), r["final_loss"][idx], np.inf)
    capped = np.minimum(final, loss0)
    return np.array([capped[r["lr"][idx] == lr].mean() for lr in lrs]), loss0


def sensitivity(curve: np.ndarray) -> float:
    """Wortsman et al.'s learning-rate sensitivity of a capped loss-vs-LR curve."""
    return float(np.mean(curve) - np.min(curve))


def _peak(r: dict, idx: np.ndarray) -> np.ndarray:
    """The largest attention logit of each run over the records (NaN records skipped, an
    overflowed logit counted as inf)."""
    lm = r["logit_max"][idx]
    return np.max(np.where(np.isnan(lm), -np.inf, lm), axis=1)


def _split(r: dict, depth: int, lrs: np.ndarray, bounds: dict):
    """Baseline runs at ``depth`` (z-loss off): the best learning rate, the stable runs (at or
    below it) and the diverged ones (above it, having lost more than half of what the context
    gives the best run: final loss above the midpoint of the best loss and the bigram bound)."""
    curve, _ = _curve(r, depth, 0.0, lrs)
    best_lr = lrs[int(np.argmin(curve))]
    idx = _select(r, depth, 0.0)
    lr, final = r["lr"][idx], r["final_loss"][idx]
    cut = 0.5 * (np.min(curve) + bounds["bigram"])
    lost = ~(final <= cut)  # NaN counts as lost
    stable = idx[lr <= best_lr]
    diverged = idx[(lr > best_lr) & lost]
    return best_lr, stable, diverged, cut


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    bounds = {k: float(v) for k, v in numbers["bounds"].items()}
    runs = {fix: _arrays(numbers["runs"][fix]) for fix in FIXES}
    base, qk = runs["baseline"], runs["qk-layernorm"]
    lrs = np.asarray(cfg.lrs, np.float64)
    depths = list(cfg.depths)
    big = max(depths)
    result = []

    # 1. a bigger model gets closer to the optimum
    best = {
        (fix, d): float(np.min(_curve(runs[fix], d, 0.0, lrs)[0])) for fix in FIXES for d in depths
    }
    ordered = all(
        best[(fix, a)] > best[(fix, b)] for fix in FIXES for a, b in itertools.pairwise(depths)
    )
    text = "; ".join(
        f"{fix}: " + ", ".join(f"depth {d} {best[(fix, d)]:.3f}" for d in depths) for fix in FIXES
    )
    result.append(
        sk.Claim(
            claim="A deeper model gets closer to the task's optimum (best final loss over the "
            "learning rates) and below the bigram bound: it uses the previous position",
            theory=f"order-{cfg.order} chain over {cfg.vocab} tokens: Bayes optimum "
            f"{bounds['optimum']:.3f} nats (exact), bigram bound {bounds['bigram']:.3f}, "
            f"uniform {bounds['uniform']:.3f}",
            measured=f"best final loss {text}",
            passed=ordered and best[("baseline", big)] < bounds["bigram"],
        )
    )

    # 2. qk-layernorm lowers the learning-rate sensitivity
    sens = {
        (fix, d): sensitivity(_curve(runs[fix], d, 0.0, lrs)[0]) for fix in FIXES for d in depths
    }
    result.append(
        sk.Claim(
            claim="qk-layernorm lowers the learning-rate sensitivity at every depth",
            theory="Wortsman et al.: S = mean over LR of min(loss, initial) - best; normalized "
            "queries and keys bound the logits, so high learning rates still train",
            measured="S over LR "
            f"{lrs.min():g}..{lrs.max():g}: "
            + ", ".join(
                f"depth {d}: baseline {sens[('baseline', d)]:.3f}, qk-layernorm "
                f"{sens[('qk-layernorm', d)]:.3f}"
                for d in depths
            ),
            passed=all(sens[("qk-layernorm", d)] < sens[("baseline", d)] for d in depths),
        )
    )

    # 3. attention logits grow where training diverges; the entropy collapses
    parts, ok = [], True
    diverged_all = []
    for d in depths:
        best_lr, stable, diverged, cut = _split(base, d, lrs, bounds)
        diverged_all.append(diverged)
        if not diverged.size:
            parts.append(f"depth {d}: no run diverged above the best LR {best_lr:g}")
            ok = False
            continue
        pk_s, pk_d = _peak(base, stable), _peak(base, diverged)
        ent_d = base["entropy"][diverged, -1]
        flagged = base["verdict"][diverged]
        false = base["verdict"][stable]
        parts.append(
            f"depth {d}: best LR {best_lr:g}; diverged (loss > {cut:.2f}) at LR "
            f"{sorted(set(base['lr'][diverged].tolist()))}: logit max {pk_d.min():.3g}.."
            f"{pk_d.max():.3g}, final entropy {np.nanmax(ent_d):.2g} nats or less, "
            f"{int((flagged == 'attention_logit_growth').sum())}/{diverged.size} diagnosed "
            f"attention_logit_growth; stable: logit max <= {pk_s.max():.3g}, "
            f"{int((false == 'attention_logit_growth').sum())}/{stable.size} diagnosed so"
        )
        ok = (
            ok
            and bool(pk_d.min() > 10 * pk_s.max())
            and bool(np.all(ent_d < 0.1))
            and bool(np.all(flagged == "attention_logit_growth"))
            and not np.any(false == "attention_logit_growth")
        )
    result.append(
        sk.Claim(
            claim="Without qk-layernorm the attention logits grow where training diverges: the "
            "attention becomes one-hot and diagnose says attention_logit_growth",
            theory="a logit q.k/sqrt(d) grows with |W_Q||W_K|; a one-hot softmax carries one "
            "position, so the loss climbs back towards the bigram bound",
            measured="; ".join(parts),
            passed=ok,
        )
    )

    # 4. qk-layernorm holds the logits at those learning rates
    pairs = []
    for diverged in diverged_all:
        for i in diverged:
            same = np.flatnonzero(
                (qk["depth"] == base["depth"][i])
                & (qk["z_loss"] == 0)
                & (qk["lr"] == base["lr"][i])
                & (qk["seed"] == base["seed"][i])
            )
            pairs.append((float(_peak(base, np.array([i]))[0]), float(_peak(qk, same)[0])))
    ratio = np.array([q / b for b, q in pairs]) if pairs else np.array([np.inf])
    qk_peak = max(q for _, q in pairs) if pairs else float("nan")
    result.append(
        sk.Claim(
            claim="qk-layernorm keeps the attention logits bounded at the learning rates where "
            "the baseline's diverge",
            theory="|logit| <= g_q g_k sqrt(d) after the norms: only the gains can grow it",
            measured=f"{len(pairs)} diverged baseline runs: the same run with qk-layernorm "
            f"reaches logit max <= {qk_peak:.3g}, {ratio.max():.2g}x the baseline's or less",
            passed=bool(pairs) and bool(ratio.max() < 0.1),
        )
    )

    # 5. z-loss holds log Z near 0, nothing else does; 6. the default coefficient is weak here
    def end_log_z(z, lo, hi):
        """log Z at the last record of the depth-``big`` runs with LR in [lo, hi], ordered by
        (LR, seed) so that runs of two coefficients pair up; and their first record."""
        idx = _select(base, big, z)
        idx = idx[(base["lr"][idx] >= lo) & (base["lr"][idx] <= hi)]
        idx = idx[np.lexsort((base["seed"][idx], base["lr"][idx]))]
        return base["log_z"][idx, -1], base["log_z"][idx, 0]

    strong, weak = max(cfg.z_losses), min(cfg.z_losses)
    (off, start), (on, _) = (end_log_z(z, cfg.z_lr_min, np.inf) for z in (0.0, strong))
    result.append(
        sk.Claim(
            claim=f"A z-loss of {strong:g} pulls log Z to near 0; without it nothing does, and "
            f"log Z stays far from 0 (depth {big}, LR >= {cfg.z_lr_min:g})",
            theory="the softmax is blind to a common shift of the output logits; only the "
            "z-loss c mean(log^2 Z) pulls log Z to 0",
            measured=f"log Z at the first record {start.min():.2f}..{start.max():.2f}; at the "
            f"end without z-loss {off.min():.2f}..{off.max():.2f}, with z-loss {strong:g} "
            f"{on.min():.2f}..{on.max():.2f}",
            passed=bool(off.size)
            and bool(np.all(np.abs(on) < 1.0))
            and bool(np.all(np.abs(off) > 2.0)),
        )
    )
    _, stable, _, _ = _split(base, big, lrs, bounds)
    best_lr = float(np.max(base["lr"][stable]))
    (off, _), (faint, _) = (end_log_z(z, cfg.z_lr_min, best_lr) for z in (0.0, weak))
    delta = np.abs(faint - off)
    idx0 = _select(base, big, 0.0)
    calm = idx0[base["lr"][idx0] <= best_lr]
    peak = np.nanmax(np.abs(base["log_z"][calm]))
    top = base["lr"] == lrs.max()
    burst = {
        z: np.nanmax(np.abs(base["log_z"][_select(base, big, z)[top[_select(base, big, z)]]]))
        for z in (0.0, *cfg.z_losses)
    }
    result.append(
        sk.Claim(
            claim=f"At this scale the default z-loss {weak:g} is too weak to act within "
            f"{cfg.steps} steps, and below the diverging learning rates there is no output-logit "
            "divergence for it to remove",
            theory=f"its gradient 2c log Z p_j ~ {2 * weak * 3 / cfg.vocab:.0e} per output "
            "logit is far below the cross-entropy's gradient noise, which Adam divides by; "
            "diagnose calls |log Z| > 20 a divergence",
            measured=f"log Z at the end, z-loss {weak:g} vs none, same LR and seed (LR "
            f"{cfg.z_lr_min:g}..{best_lr:g}): differ by <= {delta.max():.2f}; |log Z| without "
            f"z-loss <= {peak:.2f} at LR <= {best_lr:g}; at LR {lrs.max():g}, where the "
            "attention collapses, |log Z| bursts to "
            + ", ".join(f"{v:.1f} (z-loss {z:g})" for z, v in burst.items())
            + " and comes back",
            passed=bool(delta.size) and bool(delta.max() < 0.5) and bool(peak < 20.0),
        )
    )
    return result


def _spoil_size(n):
    r = n["runs"]["baseline"]
    big = max(n["config"]["depths"])
    r["final_loss"] = [
        f + 0.3 if d == big else f for d, f in zip(r["depth"], r["final_loss"], strict=True)
    ]
    return 0


def _spoil_sensitivity(n):
    r = n["runs"]["qk-layernorm"]
    r["final_loss"] = [
        f if lr <= 1e-2 else "nan" for lr, f in zip(r["lr"], r["final_loss"], strict=True)
    ]
    return 1


def _spoil_growth(n):
    # the stable runs at the smallest learning rate get the diverged runs' logits
    r = n["runs"]["baseline"]
    low = min(r["lr"])
    r["logit_max"] = [
        [1e9 for _ in row] if lr == low else row
        for lr, row in zip(r["lr"], r["logit_max"], strict=True)
    ]
    return 2


def _spoil_qk_bound(n):
    r = n["runs"]["qk-layernorm"]
    r["logit_max"] = [[1e9 for v in row] for row in r["logit_max"]]
    return 3


def _spoil_z(n):
    r = n["runs"]["baseline"]
    strong = max(n["config"]["z_losses"])
    r["log_z"] = [
        [v + 3 if z == strong else v for v in row]
        for z, row in zip(r["z_loss"], r["log_z"], strict=True)
    ]
    return 4


def _spoil_weak_z(n):
    r = n["runs"]["baseline"]
    weak = min(n["config"]["z_losses"])
    r["log_z"] = [
        [0.0 if z == weak else v for v in row]
        for z, row in zip(r["z_loss"], r["log_z"], strict=True)
    ]
    return 5


SPOILERS = (
    _spoil_size,
    _spoil_sensitivity,
    _spoil_growth,
    _spoil_qk_bound,
    _spoil_z,
    _spoil_weak_z,
)


# ------------------------------------------------------------------------------------- figure

DEPTH_COLORS = ("#8e44ad", "#d35400", "#16a085", "#2c3e50")  # loss vs LR, per depth
LR_COLORS = ("#c0392b", "#1f5fa8")  # trajectories: a diverging LR, the best one


def _trajectories(ax, r, idx, key, step, style, color, label):
    """One line per run of ``idx`` (the first seed bold, the others faint)."""
    for j, i in enumerate(idx):
        ax.plot(
            step,
            r[key][i],
            style,
            color=color,
            lw=2 if j == 0 else 1,
            alpha=1 if j == 0 else 0.45,
            label=label if j == 0 else None,
        )


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png``: loss vs LR per size and fix, the attention logits and entropy
    at a diverging learning rate, log Z with and without z-loss."""
    cfg = Config(**numbers["config"])
    bounds = {k: float(v) for k, v in numbers["bounds"].items()}
    runs = {fix: _arrays(numbers["runs"][fix]) for fix in FIXES}
    base, qk = runs["baseline"], runs["qk-layernorm"]
    step = np.asarray(numbers["step"], np.float64)
    lrs = np.asarray(cfg.lrs, np.float64)
    big = max(cfg.depths)
    fig, axs = plt.subplots(2, 2, figsize=(16, 11.5), layout="constrained")
    (ax_a, ax_b), (ax_c, ax_d) = axs

    for d, color in zip(cfg.depths, DEPTH_COLORS, strict=False):
        for fix, style in (("baseline", "o-"), ("qk-layernorm", "s--")):
            curve, _ = _curve(runs[fix], d, 0.0, lrs)
            label = f"depth {d}, {fix}: S = {sensitivity(curve):.2f}"
            ax_a.semilogx(lrs, curve, style, color=color, lw=2, ms=6, label=label)
    for z, style in zip(sorted(cfg.z_losses), ("^:", "v-."), strict=False):
        curve, _ = _curve(base, big, z, lrs)
        ax_a.semilogx(
            lrs, curve, style, color="#7f7f7f", lw=1.5, label=f"depth {big}, z-loss {z:g}"
        )
    for k, color, label in (
        ("uniform", "#bbbbbb", "uniform guess"),
        ("bigram", "#555555", "bigram bound (the current token only)"),
        ("optimum", "#1f8a3b", "Bayes optimum (exact)"),
    ):
        ax_a.axhline(bounds[k], color=color, lw=1.2, ls=":", label=f"{label}: {bounds[k]:.2f}")
    ax_a.set(
        xlabel="learning rate (Adam; linear warm-up, then constant)",
        ylabel="final loss (nats; min(loss, initial loss), seed mean)",
        title="(a) final loss vs learning rate per model size and fix\n"
        "S: Wortsman et al.'s learning-rate sensitivity (lower: less sensitive)",
    )
    ax_a.legend(frameon=False, fontsize=9, loc="upper center", ncol=2)
    ax_a.set_ylim(bottom=min(bounds["optimum"], 0.7) - 0.05, top=bounds["uniform"] + 0.55)

    _, stable, diverged, _ = _split(base, big, lrs, bounds)
    lr_div = float(np.min(base["lr"][diverged])) if diverged.size else float(lrs.max())
    best_lr = float(np.max(base["lr"][stable])) if stable.size else float(lrs.min())
    for ax, key, label in (
        (ax_b, "logit_max", "largest |attention logit| (over blocks)"),
        (ax_c, "entropy", "smallest attention entropy (nats, over blocks)"),
    ):
        for fix, r, style in (("baseline", base, "-"), ("qk-layernorm", qk, "--")):
            for lr, color in zip((lr_div, best_lr), LR_COLORS, strict=True):
                idx = np.flatnonzero((r["depth"] == big) & (r["z_loss"] == 0) & (r["lr"] == lr))
                _trajectories(ax, r, idx, key, step, style, color, f"{fix}, LR {lr:g}")
        ax.set(xlabel="step", ylabel=label)
        ax.legend(frameon=False, fontsize=10)
    ax_b.set_yscale("log")
    ax_b.set_title(
        f"(b) attention logits at a diverging LR ({lr_div:g}) and at the best ({best_lr:g}), "
        f"depth {big}:\nwithout qk-layernorm they grow; with it they stay bounded"
    )
    ax_c.set_title(
        "(c) attention entropy: it collapses to 0 (one-hot attention) where the logits grow"
    )

    for lr, color in zip((lr_div, best_lr), LR_COLORS, strict=True):
        for z, style in zip((0.0, *sorted(cfg.z_losses)), ("-", ":", "--"), strict=False):
            idx = np.flatnonzero(
                (base["depth"] == big) & (base["z_loss"] == z) & (base["lr"] == lr)
            )
            _trajectories(ax_d, base, idx, "log_z", step, style, color, f"LR {lr:g}, z-loss {z:g}")
    ax_d.axhline(0, color="k", lw=0.8)
    ax_d.set(
        xlabel="step",
        ylabel="log Z (mean logsumexp of the output logits)",
        title=f"(d) the output log-partition, depth {big}: nothing holds it without z-loss;\n"
        f"z-loss {max(cfg.z_losses):g} pulls it to 0, the default {min(cfg.z_losses):g} is too "
        f"weak in {cfg.steps} steps",
    )
    ax_d.legend(frameon=False, fontsize=10, ncol=2)
    fig.suptitle(
        f"Next-token prediction on a random order-{cfg.order} Markov chain ({cfg.vocab} tokens, "
        f"{cfg.seq_len} positions, {cfg.n} sequences); pre-LN transformers of width "
        f"{cfg.width}, {cfg.heads} heads;\n{cfg.steps} Adam steps of {cfg.batch_size} "
        f"sequences after {cfg.warmup} warm-up steps; {cfg.seeds} seeds (faint lines: the other "
        "seeds)",
        fontsize=13,
    )
    fig.savefig(pathlib.Path(out_dir) / f"{NAME}.png", dpi=80)
    plt.close(fig)


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    sk.save_json(out / f"{NAME}.json", numbers)
    figure(numbers, out)
    return claims(numbers)


if __name__ == "__main__":
    run_alone(run, TITLE)
