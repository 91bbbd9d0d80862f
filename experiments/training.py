"""Study: real training runs that explode, vanish or train, the automatic verdicts, and the fixes.

The note's symptoms, reproduced in training with optax and recognised by ``stabkit.diagnose``:

* :math:`W = 1.5 I` (a deep linear net, the note's first example): the output is
  :math:`1.5^{31} \\approx 2.9 \\cdot 10^5` times the input, the gradient as large, and the first
  SGD step overflows: the loss is NaN from step 1 (**exploding**).
* :math:`W = 0.5 I`: every gradient carries :math:`0.5^{30} \\approx 10^{-9}`; the loss does not
  move (**vanishing**). A deep Glorot sigmoid net: each layer multiplies the backward signal by at
  most 1/4, the first layer's gradient is ~1e-16 of the readout's, only the readout learns and the
  loss stalls at the targets' variance (**vanishing**). He + relu trains (**healthy**).
* The fixes: ``safe_clip_by_global_norm`` + ``skip_nonfinite`` keep the exploding run finite (they
  cure explosion, not vanishing); the note's remedies (an orthogonal, gain-1 initialization instead
  of :math:`aI`; relu with He weights instead of sigmoid) make every run healthy.
* float16 with float32 master weights, on targets of RMS 1e-3: without loss scaling about 98% of
  the gradient entries underflow to exactly 0 and training stalls; dynamic loss scaling
  (``loss_scaling``) brings back float32's zeros (relu's structural ones only) and float32's loss.

Every configuration of one panel is a single compiled, vmapped ``stabkit.train`` call.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "training"
TITLE = "Training runs that explode, vanish or train: automatic verdicts, clipping, loss scaling"
ORDER = 60


@dataclasses.dataclass(frozen=True)
class Config:
    depth: int = 30  # hidden layers of the note's nets
    width: int = 32  # units per hidden layer
    n: int = 64  # examples in the teacher-student regression (in_dim 16, out_dim 4)
    steps: int = 200  # optimizer steps (momentum 0.9)
    log_every: int = 5  # history sampling
    lr: float = 0.005  # momentum SGD learning rate of the note's runs
    seeds: int = 2  # seeds per configuration
    clip_norm: float = 1.0  # the clipping fix
    half_depth: int = 8  # the float16 experiment: He relu net, all weights x half_scale
    half_scale: float = 0.36  # so that the output starts ~1e-3 like the targets
    half_targets: float = 1e-3  # target RMS of the float16 experiment
    half_steps: int = 200  # Adam steps, lr 1e-3
    half_period: int = 50  # loss-scale growth period
    seed: int = 0


# The note's four nets: (label, activation, init, scale, expected verdict, colour)
CASES = [
    ("W = 1.5 I, linear", "linear", "scaled_identity", 1.5, "exploding", "#c0392b"),
    ("W = 0.5 I, linear", "linear", "scaled_identity", 0.5, "vanishing", "#7f8c8d"),
    ("sigmoid, Glorot", "sigmoid", "glorot_normal", 1.0, "vanishing", "#8e44ad"),
    ("relu, He", "relu", "he_normal", 1.0, "healthy", "#1f5fa8"),
]
# The note's remedies: W = aI -> a gain-1 orthogonal init (for both a = 1.5 and a = 0.5); sigmoid
# -> relu with He weights (that is the healthy run of the note's cases, drawn again in panel e).
REMEDIES = [
    ("W = aI → orthogonal (gain 1), linear", "linear", "orthogonal", 1.0, "healthy", "#d35400"),
]
ACTIVATIONS = ("linear", "sigmoid", "relu")
INITS = ("scaled_identity", "glorot_normal", "he_normal", "orthogonal")
VERDICT_STYLE = {"exploding": "#c0392b", "vanishing": "#7f8c8d", "healthy": "#1f8a3b"}


def _runs(spec, cases, cfg):
    rows = [(c, s) for c in cases for s in range(cfg.seeds)]
    return sk.make_runs(
        spec,
        scale=[c[3] for c, _ in rows],
        activation=[c[1] for c, _ in rows],
        init=[c[2] for c, _ in rows],
        seed=[cfg.seed + s for _, s in rows],
        lr=cfg.lr,
        product=False,
    )


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _take(h, rows: slice):
    """The runs ``rows`` of a History (every field has a leading run axis except ``step``)."""
    return jax.tree.map(lambda a: a[rows], h._replace(step=None))._replace(step=h.step)


def _measure(cfg: Config) -> dict:
    key = jax.random.key(cfg.seed)
    task = sk.teacher_student(key, n=cfg.n, in_dim=16, out_dim=4, teacher_depth=1)
    common = dict(
        max_depth=cfg.depth,
        width=cfg.width,
        steps=cfg.steps,
        log_every=cfg.log_every,
        optimizer="momentum",
        activation=ACTIVATIONS,
        init=INITS,
    )
    spec = sk.TrainSpec(task, **common)
    fixed_spec = sk.TrainSpec(task, **common, clip_norm=cfg.clip_norm, max_consecutive_skips=5)
    jobs = {
        # the note's cases and the remedies in one call
        "both": (spec, _runs(spec, CASES + REMEDIES, cfg)),
        "fixed": (fixed_spec, _runs(fixed_spec, CASES, cfg)),
    }
    # float16 / float32 master weights / dynamic loss scaling
    small = sk.teacher_student(
        key, n=cfg.n, in_dim=16, out_dim=4, teacher_depth=1, target_scale=cfg.half_targets
    )
    scaling = sk.DynamicLossScale(initial_scale=2.0**15, period=cfg.half_period)
    for label, kw in (
        ("float32", dict(dtype="float32")),
        ("float16", dict(dtype="float16", master_dtype="float32")),
        (
            "float16 + loss scaling",
            dict(dtype="float16", master_dtype="float32", loss_scale=scaling),
        ),
    ):
        hs = sk.TrainSpec(
            small,
            max_depth=cfg.half_depth,
            width=cfg.width,
            steps=cfg.half_steps,
            log_every=cfg.log_every,
            optimizer="adam",
            **kw,
        )
        seeds = [cfg.seed + s for s in range(cfg.seeds)]
        jobs[label] = (hs, sk.make_runs(hs, scale=cfg.half_scale, lr=1e-3, seed=seeds))
    done = {k: _np(sk.train(*job)) for k, job in jobs.items()}
    k = len(CASES) * cfg.seeds
    half = {label: done[label] for label in ("float32", "float16", "float16 + loss scaling")}
    return {
        "note": _take(done["both"], slice(None, k)),
        "remedy": _take(done["both"], slice(k, None)),
        "fixed": done["fixed"],
        "half": half,
    }


def _diag_rows(d, start: int):
    """A Diagnosis restricted to the runs from ``start`` on."""
    return d._replace(**{f: getattr(d, f)[start:] for f in d._fields})


def _fmt(a, precision: int = 3) -> str:
    return np.array2string(np.asarray(a, np.float64), precision=precision)


def _per_case(values, n_cases, seeds):
    return [values[i * seeds : (i + 1) * seeds] for i in range(n_cases)]


def _curves(ax, h, diag, cases, cfg, title, *, ylim=None, legend="lower left"):
    """Loss curves with the verdict in the legend; a run that turns NaN is annotated."""
    step = h.step
    for i, (label, *_rest, color) in enumerate(cases):
        verdicts = sorted(set(diag.verdict[i * cfg.seeds : (i + 1) * cfg.seeds]))
        for s in range(cfg.seeds):
            r = i * cfg.seeds + s
            loss = h.loss[r]
            ok = np.isfinite(loss)
            lab = f"{label}  →  {' / '.join(verdicts).upper()}" if s == 0 else None
            style = ("--" if "0.5" in label else "-") if ok.sum() > 1 else "o"
            alpha = 1.0 if s == 0 else 0.45
            ax.semilogy(step[ok], loss[ok], style, color=color, lw=2, alpha=alpha, label=lab)
            if ok.all() or s:
                continue
            first = int(diag.first_nonfinite[r])
            ax.annotate(
                f"↑ loss {loss[0]:.1e} at step 0, NaN from step {first} on",
                (0.03, 0.93),
                xycoords="axes fraction",
                color=color,
                fontsize=10,
                weight="bold",
            )
    if ylim:
        ax.set_ylim(*ylim)
    ax.set(xlabel="step", ylabel="training loss (½·MSE)", title=title)
    ax.legend(frameon=False, fontsize=9, loc=legend)


def _figure(out: pathlib.Path, m: dict, d: dict, cfg: Config) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(19, 10.5), constrained_layout=True)
    (ax_a, ax_b, ax_c), (ax_d, ax_e, ax_f) = axes
    h = m["note"]
    title = "(a) the note's cases, momentum SGD, and stabkit.diagnose's verdicts"
    _curves(ax_a, h, d["note"], CASES, cfg, title, ylim=(0.02, 3))

    # (b) gradient per layer at step 0: the vanishing profiles
    layers = np.arange(1, cfg.depth + 2)
    for i, (label, *_rest, color) in enumerate(CASES):
        prof = h.layer_grad_rms[i * cfg.seeds, 0]
        ax_b.semilogy(layers, prof, "o-", ms=3, lw=1.2, color=color, label=label)
    ax_b.set(
        xlabel=f"layer (1 = first, {cfg.depth + 1} = readout)",
        ylabel="RMS gradient of the layer's weights and bias, step 0",
        title="(b) where the gradient goes: the sigmoid net's shrinks ~4x per layer;\n"
        "W = 0.5 I's is tiny in every layer, W = 1.5 I's huge in every layer",
    )
    ax_b.legend(frameon=False, fontsize=9)

    # (c) gradient global norm over training
    for i, (label, *_rest, color) in enumerate(CASES):
        g = h.grad_norm[i * cfg.seeds]
        ok = np.isfinite(g)
        ax_c.semilogy(
            h.step[ok],
            g[ok],
            "-" if ok.sum() > 1 else "o",
            color=color,
            lw=1.8,
            label=label + ("" if ok.all() else " (then NaN)"),
        )
    ax_c.set(
        xlabel="step", ylabel="gradient global norm", title="(c) gradient norm during training"
    )
    ax_c.legend(frameon=False, fontsize=9)

    title = (
        f"(d) the same runs + safe_clip_by_global_norm({cfg.clip_norm:g}) + skip_nonfinite:\n"
        "no NaN (W = 1.5 I's loss falls from 5e10), but clipping cannot cure vanishing"
    )
    _curves(ax_d, m["fixed"], d["fixed"], CASES, cfg, title, legend="upper right")

    relu = _take(h, slice(3 * cfg.seeds, None))
    _curves(ax_e, relu, _diag_rows(d["note"], 3 * cfg.seeds), CASES[3:], cfg, "")
    title = (
        "(e) the note's remedies: gain-1 orthogonal W instead of aI;\n"
        "relu + He instead of sigmoid (the same run as in a)"
    )
    _curves(ax_e, m["remedy"], d["remedy"], REMEDIES, cfg, title, ylim=(0.02, 3))

    # (f) float16
    colors = {"float32": "#1f5fa8", "float16": "#c0392b", "float16 + loss scaling": "#1f8a3b"}
    for label, hh in m["half"].items():
        zeros = hh.grad_census.zero[0, 0] / sum(c[0, 0] for c in hh.grad_census)
        ax_f.semilogy(
            hh.step,
            hh.loss[0],
            color=colors[label],
            lw=2,
            label=f"{label}: {zeros:.0%} of gradient entries = 0 at step 0",
        )
        for s in range(1, cfg.seeds):
            ax_f.semilogy(hh.step, hh.loss[s], color=colors[label], lw=1, alpha=0.45)
    scaled = m["half"]["float16 + loss scaling"]
    ax_f2 = ax_f.twinx()
    ax_f2.semilogy(scaled.step, scaled.loss_scale[0], ":", color="#1f8a3b", lw=1.2)
    ax_f2.set_ylabel("loss scale (dotted)", color="#1f8a3b")
    ax_f.set(
        xlabel="step",
        ylabel="training loss",
        title=f"(f) float16 + float32 master weights, Adam, targets of RMS {cfg.half_targets:g}:"
        "\nthe gradient underflows to 0 without loss scaling",
    )
    ax_f.legend(frameon=False, fontsize=9, loc="lower left")

    fig.suptitle(
        f"Teacher-student regression, {cfg.depth} hidden layers of width {cfg.width} (float16: "
        f"{cfg.half_depth}), {cfg.seeds} seed(s) per net (faint: other seeds). Each panel's "
        "runs are one vmapped, compiled stabkit.train call.",
        fontsize=12,
    )
    fig.savefig(out / f"{NAME}.png", dpi=90)
    plt.close(fig)


def measure(*, quick: bool) -> dict:
    """The numbers of the study: every run's loss and ``stabkit.diagnose``'s evidence.

    ``numbers["histories"]`` and ``numbers["diagnoses"]`` hold the training histories and their
    diagnoses, which the figure draws (not stored in ``NAME.json``); the rest is stored there and
    is all that :func:`claims` reads.
    """
    cfg = Config(steps=120, half_steps=120, seeds=1) if quick else Config()
    m = _measure(cfg)
    d = {k: sk.diagnose(m[k]) for k in ("note", "remedy", "fixed")}
    return {
        "config": dataclasses.asdict(cfg),
        "verdicts": {k: list(v.verdict) for k, v in d.items()},
        "evidence": {k: v._asdict() for k, v in d.items()},
        "note_loss": m["note"].loss,
        "fixed_loss": m["fixed"].loss,
        "remedy_loss": m["remedy"].loss,
        "half": {
            k: {
                "loss": h.loss,
                "loss_scale": h.loss_scale,
                # (runs, 5): normal, subnormal, zero, inf, NaN at step 0
                "grad_census_step0": np.stack([c[:, 0] for c in h.grad_census], axis=-1),
                "final_loss": h.final_loss,
            }
            for k, h in m["half"].items()
        },
        "histories": m,
        "diagnoses": d,
    }


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    seeds = cfg.seeds
    # the evidence as arrays; the losses float32, as trained (NAME.json holds them as float64)
    d = {
        k: {f: v if f == "verdict" else np.asarray(v, np.float64) for f, v in e.items()}
        for k, e in numbers["evidence"].items()
    }
    for k in d:
        d[k]["first_nonfinite"] = d[k]["first_nonfinite"].astype(int)
    loss = {k: np.asarray(numbers[f"{k}_loss"], np.float32) for k in ("note", "fixed")}
    dn = d["note"]
    by_case = _per_case(list(dn["verdict"]), len(CASES), seeds)
    result = []

    first = dn["first_nonfinite"][:seeds]
    result.append(
        sk.Claim(
            claim="W = 1.5 I explodes: the loss becomes NaN, diagnose says 'exploding'",
            theory=f"output and gradient ~1.5^{cfg.depth + 1} = {1.5 ** (cfg.depth + 1):.2g}; the "
            "first SGD step overflows",
            measured=f"loss at step 0: {loss['note'][0, 0]:.3g}; first non-finite step "
            f"{first.tolist()}; verdicts {by_case[0]}",
            passed=all(v == "exploding" for v in by_case[0]) and bool((first >= 0).all()),
        )
    )
    drop = dn["loss_drop"][seeds : 2 * seeds]
    g2l = dn["grad_to_loss"][seeds : 2 * seeds]
    result.append(
        sk.Claim(
            claim="W = 0.5 I vanishes: loss large and unchanged, diagnose says 'vanishing'",
            theory=f"every gradient carries 0.5^{cfg.depth} = {0.5**cfg.depth:.2g}",
            measured=f"loss drop {np.round(drop * 100, 3).tolist()}%; |gradient|/loss "
            f"{np.array2string(g2l, precision=2)}; verdicts {by_case[1]}",
            passed=all(v == "vanishing" for v in by_case[1]) and bool((np.abs(drop) < 0.01).all()),
        )
    )
    ratio = dn["layer_ratio"][2 * seeds : 3 * seeds]
    result.append(
        sk.Claim(
            claim=f"A {cfg.depth}-layer sigmoid net vanishes: layer 1 gets almost no gradient",
            theory=f"backward factor per layer ≤ σ_w·max σ' = 1/4: ~4^-{cfg.depth} = "
            f"{0.25**cfg.depth:.1g} on the backward signal (times O(1) forward factors)",
            measured=f"layer-1/readout gradient RMS {np.array2string(ratio, precision=2)}; loss "
            f"drop {np.round(dn['loss_drop'][2 * seeds : 3 * seeds] * 100, 1).tolist()}% (the "
            f"readout fits the mean); verdicts {by_case[2]}",
            passed=all(v == "vanishing" for v in by_case[2]) and bool((ratio < 1e-10).all()),
        )
    )
    drop = dn["loss_drop"][3 * seeds :]
    result.append(
        sk.Claim(
            claim="He + relu trains at the same depth: diagnose says 'healthy'",
            theory="σ_w² E[relu'²] = 2 · 1/2 = 1: the gradient reaches layer 1 at O(1)",
            measured=f"loss drop {np.round(drop * 100, 1).tolist()}%; layer-1/readout "
            f"{np.array2string(dn['layer_ratio'][3 * seeds :], precision=2)}; verdicts "
            f"{by_case[3]}",
            passed=all(v == "healthy" for v in by_case[3]) and bool((drop > 0.5).all()),
        )
    )
    df = d["fixed"]
    fixed_cases = _per_case(list(df["verdict"]), len(CASES), seeds)
    fl = loss["fixed"][:seeds]
    result.append(
        sk.Claim(
            claim="Clipping by global norm (+ skipping non-finite steps) stops the explosion; it "
            "does not cure vanishing",
            theory="the update norm is at most lr·clip/(1 − momentum); a vanished gradient is left "
            "as it is",
            measured="W = 1.5 I: first non-finite step "
            f"{df['first_nonfinite'][:seeds].tolist()}, loss {fl[0, 0]:.3g} → {fl[0, -1]:.3g}; "
            f"verdicts {fixed_cases}",
            passed=bool((df["first_nonfinite"] == -1).all())
            and bool(np.isfinite(loss["fixed"]).all())
            and all(v != "exploding" for v in df["verdict"])
            and all(v == "vanishing" for v in fixed_cases[1] + fixed_cases[2]),
        )
    )
    dr = d["remedy"]
    result.append(
        sk.Claim(
            claim="The note's remedies train: gain-1 orthogonal weights for the linear nets, "
            "relu + He instead of sigmoid",
            theory="an orthogonal product keeps every singular value at 1 (no growth, no decay)",
            measured=f"verdicts {list(dr['verdict'])}; loss drop "
            f"{np.round(dr['loss_drop'] * 100, 1).tolist()}%",
            passed=all(v == "healthy" for v in dr["verdict"]),
        )
    )
    all_expected = [c[4] for c in CASES for _ in range(seeds)]
    n_ok = sum(v == e for v, e in zip(dn["verdict"], all_expected, strict=True))
    n_ok += sum(v == "healthy" for v in dr["verdict"])
    total = len(all_expected) + len(dr["verdict"])
    result.append(
        sk.Claim(
            claim="diagnose's verdict matches what the loss curve shows for every run",
            theory="exploding: non-finite / growing; vanishing: flat + tiny gradient; else healthy",
            measured=f"{n_ok}/{total} runs as expected",
            passed=n_ok == total,
        )
    )

    half = numbers["half"]

    def zero_frac(h):
        census = np.asarray(h["grad_census_step0"])
        return census[:, 2] / census.sum(-1)

    z = {k: zero_frac(h) for k, h in half.items()}
    final = {k: np.asarray(h["final_loss"], np.float32) for k, h in half.items()}
    f32, f16, f16s = (final[k] for k in ("float32", "float16", "float16 + loss scaling"))
    rel = {k: final[k] / np.asarray(h["loss"], np.float32)[:, 0] for k, h in half.items()}
    result.append(
        sk.Claim(
            claim="float16 (float32 master weights) fails without loss scaling and trains with it",
            theory=f"output gradient ~{cfg.half_targets:g}/256 ≈ 4e-6, shrinking per layer: below "
            "float16's smallest subnormal 6e-8 it is 0; a scale of 2^15+ lifts it into range",
            measured=f"gradient entries exactly 0 at step 0: float32 {_fmt(z['float32'])}, "
            f"float16 {_fmt(z['float16'])}, scaled {_fmt(z['float16 + loss scaling'])}; final "
            f"loss / initial: float32 {_fmt(rel['float32'])}, float16 {_fmt(rel['float16'])}, "
            f"scaled {_fmt(rel['float16 + loss scaling'])}",
            passed=bool((z["float16"] > 0.9).all())
            and bool((np.abs(z["float16 + loss scaling"] - z["float32"]) < 0.05).all())
            # float16 ends at least twice float32's loss (seeds 0, 1 of the seed rule: 2.6x, 2.8x)
            and bool((f16 > 2 * f32).all())
            and bool((f16s < 2 * f32).all()),
        )
    )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png`` from the histories and diagnoses of :func:`measure`."""
    cfg = Config(**numbers["config"])
    _figure(pathlib.Path(out_dir), numbers["histories"], numbers["diagnoses"], cfg)


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    stored = {k: v for k, v in numbers.items() if k not in ("histories", "diagnoses")}
    sk.save_json(out / f"{NAME}.json", stored)
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
