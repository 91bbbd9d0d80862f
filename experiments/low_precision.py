"""Study: bfloat16 training stalls on lost updates (Kahan sums, stochastic rounding train); float8.

**The arithmetic.** bfloat16 keeps 8 significant bits, so a weight ``w`` with
:math:`2^e \\le |w| < 2^{e+1}` is spaced :math:`2^{e-7}` from its neighbours and an update smaller
than half that, :math:`2^{e-8}`, is rounded away: ``w + u == w`` (``1 + 2**-8 == 1``). Relative
to the weight, an update is always lost when :math:`|u| / |w| < 2^{-9}` and never when it
exceeds :math:`2^{-8}`. Adam makes the arithmetic exact: its first step is
:math:`u = -\\mathrm{lr} \\, g / (|g| + \\epsilon) \\approx \\mp\\mathrm{lr}` for every
entry, and with a full batch its steps stay near ``lr``. With ``lr = 1e-4``, between
:math:`2^{-14}` and :math:`2^{-13}`, every weight with :math:`|w| \\ge 2^{-5}` (half an ulp
:math:`\\ge 2^{-13}`) loses every update, every smaller one keeps it. He-initialised weights
:math:`w \\sim N(0, 2/n_{in})` have :math:`|w| \\ge 2^{-5}` with probability
:math:`\\mathrm{erfc}(2^{-5} \\sqrt{n_{in}} / 2)`: 95% in the first layer (:math:`n_{in} = 8`),
90% in the hidden layers and the readout (:math:`n_{in} = 32`); the zero-initialised biases
always move. So about 84-87% of each layer's nonzero updates are lost from the first step on
(the update/weight RMS ratio is ~4e-4, below :math:`2^{-9} \\approx 2\\cdot10^{-3}`): the
bfloat16 network trains only through its smallest weights and its biases, and makes a fifth of
float32's progress (in log loss).

**The fixes**, each an optax transformation applied to the update before it reaches the
bfloat16 weights (``TrainSpec(rounding=...)``): Kahan summation keeps what rounding dropped in a
bfloat16 compensation buffer and adds it back next step, so the stored ``w + c`` follows the
exact sum; stochastic rounding rounds ``w + u`` up with probability proportional to the distance,
so the weight is right on average. Both train like float32 (Zamirai et al. 2020, "Revisiting
BFloat16 Training", report pure-bfloat16 ResNets and BERT within -0.1 to +0.2 accuracy points of
float32 with them) although the updates they receive are lost just as often: what changes is the
rule that applies them. The optimizer state stays bfloat16 (optax builds it in the params'
dtype), which is why the rules end a few percent above float32, not on it.

**float8.** The same network made of ``stabkit.block("dense", float8=...)`` blocks computes each
block's product in float8 (e4m3 forward, e5m2 gradients, the other arithmetic bfloat16). With
targets of RMS 1e-3 (the weights scaled so that the output starts there too) the output
gradient is ~ ``1e-3 / (n * out_dim)`` ~ 1e-6, below e5m2's smallest normal number
:math:`2^{-14} \\approx 6\\cdot10^{-5}` (subnormal :math:`2^{-16}`), the same range as float16's:
without scaling ~90% of the gradient entries are exactly 0 after the first steps and the loss
stalls at ~5 times bfloat16's; Transformer Engine's delayed scaling (the scale from an amax
history, :func:`stabkit.precision.float8_recipe`) multiplies them into range from the second
step on (the first has no history) and trains like bfloat16.

Task: ``stabkit.teacher_student`` regression, a relu MLP with He weights, full-batch Adam; every
configuration (seeds) of a panel is one vmapped ``stabkit.train`` call, the lost fraction per
layer and logged step is ``History.lost_updates`` (``stabkit.lost_updates`` on the optimizer's
update, before the rounding rule).

Run alone: ``python experiments/low_precision.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "low_precision"
TITLE = "Low precision that trains: bfloat16 lost updates, Kahan, stochastic rounding; float8"
ORDER = 81


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 256  # examples of the teacher-student regression (full batch)
    in_dim: int = 8  # input features: the first layer's fan-in
    out_dim: int = 4  # regression targets
    depth: int = 3  # hidden layers of the student (relu, He normal)
    width: int = 32  # units per hidden layer: the hidden layers' and readout's fan-in
    lr: float = 1e-4  # Adam's step: between 2**-14 and 2**-13, lost on |w| >= 2**-5 in bfloat16
    steps: int = 400  # full-batch Adam steps
    log_every: int = 20  # history sampling
    seeds: int = 3  # initial networks per configuration (the spread)
    seed: int = 0  # the task's key and the first network seed
    # float8 (e4m3 forward, e5m2 gradients) dense blocks, bfloat16 elsewhere
    f8_depth: int = 4  # dense relu blocks between the embedding and the readout
    f8_in_dim: int = 16  # input features of the float8 task
    f8_targets: float = 1e-3  # target RMS: the output gradients are ~1e-6, below e5m2's range
    f8_scale: float = 0.4  # every weight x 0.4, so that the output starts ~1e-3 like the targets
    f8_big: float = 12.0  # and runs with every weight x 12: the deep blocks' inputs pass e4m3's 448
    f8_lr: float = 1e-3  # Adam
    f8_steps: int = 200


# (label, TrainSpec keywords, colour)
CASES = (
    ("float32", dict(dtype="float32"), "#1f5fa8"),
    ("bfloat16 (round to nearest)", dict(dtype="bfloat16"), "#c0392b"),
    ("bfloat16 + Kahan summation", dict(dtype="bfloat16", rounding="kahan"), "#1f8a3b"),
    ("bfloat16 + stochastic rounding", dict(dtype="bfloat16", rounding="stochastic"), "#d35400"),
)
F32, BF16, KAHAN, SR = (c[0] for c in CASES)
# (label, the dense blocks' float8 option, colour)
FLOAT8_CASES = (
    ("bfloat16 products", None, "#c0392b"),
    ("float8, no scaling", "none", "#7f8c8d"),
    ("float8, delayed scaling", "delayed", "#8e44ad"),
)
F8_BASE, F8_NONE, F8_DELAYED = (c[0] for c in FLOAT8_CASES)


def _ulp_threshold(lr: float) -> float:
    """The smallest power of two ``t`` with half a bfloat16 ulp of ``t`` (``t * 2**-8``) above
    ``lr``: an update of size ``lr`` is lost on every weight with ``|w| >= t``."""
    return 2.0 ** (math.floor(math.log2(lr)) + 9)


def _predicted_lost(cfg: Config) -> list[float]:
    """Per weight layer, the expected fraction of nonzero updates lost at the first Adam step:
    weights ``N(0, 2 / fan_in)`` beyond the threshold, out of the layer's weights and (zero,
    never lost) biases."""
    t = _ulp_threshold(cfg.lr)
    shapes = [(cfg.in_dim, cfg.width)] + [(cfg.width, cfg.width)] * (cfg.depth - 1)
    shapes.append((cfg.width, cfg.out_dim))
    out = []
    for fan_in, fan_out in shapes:
        beyond = math.erfc(t * math.sqrt(fan_in) / 2)  # P(|w| >= t), w ~ N(0, 2 / fan_in)
        out.append(beyond * fan_in * fan_out / (fan_in * fan_out + fan_out))
    return out


def _measure(cfg: Config) -> dict:
    task = sk.teacher_student(
        jax.random.key(cfg.seed), n=cfg.n, in_dim=cfg.in_dim, out_dim=cfg.out_dim
    )
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    out = {}
    for label, kw, _ in CASES:
        spec = sk.TrainSpec(
            task,
            max_depth=cfg.depth,
            width=cfg.width,
            steps=cfg.steps,
            log_every=cfg.log_every,
            optimizer="adam",
            **kw,
        )
        h = jax.tree.map(np.asarray, sk.train(spec, sk.make_runs(spec, lr=cfg.lr, seed=seeds)))
        out[label] = {
            "loss": h.loss,
            "final_loss": h.final_loss,
            "lost": h.lost_updates,  # (seeds, records, layers)
            "update_ratio": h.update_norm / h.param_norm,  # RMS(update) / RMS(weights)
        }
        out["step"] = h.step
    return out


def _measure_float8(cfg: Config) -> dict:
    task = sk.teacher_student(
        jax.random.key(cfg.seed),
        n=cfg.n,
        in_dim=cfg.f8_in_dim,
        out_dim=cfg.out_dim,
        teacher_depth=1,
        target_scale=cfg.f8_targets,
    )
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    out = {}
    for label, float8, _ in FLOAT8_CASES:
        spec = sk.TrainSpec(
            task,
            max_depth=cfg.f8_depth,
            width=cfg.width,
            steps=cfg.f8_steps,
            log_every=cfg.log_every,
            optimizer="adam",
            dtype="bfloat16",
            block=sk.block("dense", float8=float8),
        )
        # scale-major: the seeds at f8_scale, then at f8_big (one compilation: scale is data)
        runs = sk.make_runs(spec, lr=cfg.f8_lr, scale=[cfg.f8_scale, cfg.f8_big], seed=seeds)
        h = jax.tree.map(np.asarray, sk.train(spec, runs))
        small, big = slice(0, len(seeds)), slice(len(seeds), None)
        total = sum(np.asarray(c, np.float64) for c in h.grad_census)
        out[label] = {
            "loss": h.loss[small],
            "final_loss": h.final_loss[small],
            # (seeds, records): the fraction of gradient entries exactly 0 (stabkit.census)
            "grad_zero": (h.grad_census.zero / total)[small],
            # per block (seeds, records, blocks), NaN for bfloat16 products: the fraction of the
            # output gradients e5m2 flushed to 0, of the forward operands e4m3 flushed to 0 /
            # saturated (at f8_big)
            "grad_underflow": h.float8_grad_underflow[small],
            "underflow": h.float8_underflow[small],
            "overflow_big": h.float8_overflow[big],
        }
        out["step"] = h.step
    return out


def measure(*, quick: bool = False) -> dict:
    """The study's numbers: per case the loss curves, final losses, lost fractions per layer and
    step, and the update/weight ratio; the predicted lost fraction per layer."""
    cfg = Config(steps=200, log_every=20) if quick else Config()
    m = _measure(cfg)
    f8 = _measure_float8(cfg)
    return {
        "config": dataclasses.asdict(cfg),
        "step": m.pop("step"),
        "cases": m,
        "threshold": _ulp_threshold(cfg.lr),
        "predicted_lost": _predicted_lost(cfg),
        "float8_step": f8.pop("step"),
        "float8": f8,
    }


def _fmt(a, precision: int = 3) -> str:
    return np.array2string(np.asarray(a, np.float64), precision=precision, separator=", ")


def _spread(a) -> str:
    a = np.asarray(a, np.float64)
    return f"{a.mean():.3g} ± {a.std():.2g}"


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure` or its ``NAME.json``)."""
    cfg = Config(**numbers["config"])
    cases = numbers["cases"]
    final = {k: np.asarray(c["final_loss"], np.float64) for k, c in cases.items()}
    initial = {k: np.asarray(c["loss"], np.float64)[:, 0] for k, c in cases.items()}
    lost = {k: np.asarray(c["lost"], np.float64) for k, c in cases.items()}
    ratio = {k: np.asarray(c["update_ratio"], np.float64) for k, c in cases.items()}
    pred = np.asarray(numbers["predicted_lost"], np.float64)
    rel = {k: final[k] / final[F32] for k in final}
    result = []

    # progress as the decrease of log(loss): float32's, and the fraction of it each run made
    log_drop = {k: np.log(initial[k] / final[k]) for k in final}
    frac = {k: log_drop[k] / log_drop[F32] for k in final}
    result.append(
        sk.Claim(
            claim="Pure-bfloat16 Adam stalls where float32 trains",
            theory=f"Adam's step ~lr = {cfg.lr:g} is below half an ulp of every |w| ≥ "
            f"{numbers['threshold']:g} (~90% of the weights): only the rest and the biases move",
            measured=f"log(initial/final loss): float32 {_fmt(log_drop[F32], 2)}; bfloat16 makes "
            f"{_fmt(frac[BF16], 2)} of it (final loss {_fmt(rel[BF16], 2)} × float32's)",
            passed=bool((log_drop[F32] > 0.5).all()) and bool((frac[BF16] < 1 / 3).all()),
        )
    )
    first = lost[BF16][:, 0, :]  # (seeds, layers) at the first step
    n_entries = np.asarray([cfg.in_dim] + [cfg.width] * cfg.depth) * np.asarray(
        [cfg.width] * cfg.depth + [cfg.out_dim]
    )
    sigma = np.sqrt(pred * (1 - pred) / n_entries)
    result.append(
        sk.Claim(
            claim="The lost fraction of the first bfloat16 step, per layer, is the fraction of "
            "weights whose half-ulp exceeds the step",
            theory=f"erfc({numbers['threshold']:g}·√fan_in / 2) of the weights (He normal), "
            f"biases never: {_fmt(pred)}",
            measured=f"mean over seeds {_fmt(first.mean(0))} (float32: max "
            f"{lost[F32][:, 0, :].max():.2g})",
            passed=bool((np.abs(first - pred) < 0.02 + 4 * sigma).all())
            and bool((lost[F32][:, 0, :] < 0.01).all()),
        )
    )
    stalled = lost[BF16]
    result.append(
        sk.Claim(
            claim="The updates stay lost through training: most of every layer's updates, at "
            "every logged step",
            theory="full-batch Adam's step stays ~lr; the update/weight RMS ratio stays below "
            "2^-9 ≈ 1.95e-3",
            measured=f"bfloat16 lost fraction min over steps {stalled.min():.2f}, mean "
            f"{stalled.mean():.2f}; update/weight RMS ratio max {ratio[BF16].max():.2g}",
            passed=bool((stalled > 0.5).all()) and bool((ratio[BF16] < 2.0**-9).all()),
        )
    )
    for label, name in ((KAHAN, "Kahan summation"), (SR, "stochastic rounding")):
        result.append(
            sk.Claim(
                claim=f"bfloat16 + {name} trains like float32, although its updates are lost "
                "as often",
                theory="the rule keeps (Kahan) or restores on average (stochastic) what "
                "rounding drops; Zamirai et al. 2020: within -0.1..+0.2 accuracy points",
                measured=f"final loss / float32's {_spread(rel[label])} (bfloat16: "
                f"{_spread(rel[BF16])}); lost fraction before the rule {lost[label].mean():.2f}",
                passed=bool((np.abs(rel[label] - 1) < 0.1).all())
                and bool(lost[label].mean() > 0.5),
            )
        )

    f8 = numbers["float8"]
    f8_final = {k: np.asarray(c["final_loss"], np.float64) for k, c in f8.items()}
    zero_curve = {k: np.asarray(c["grad_zero"], np.float64) for k, c in f8.items()}
    zeros = {k: z[:, 0] for k, z in zero_curve.items()}  # at step 0
    later = {k: z[:, 1:].mean(1) for k, z in zero_curve.items()}  # after the first record
    vs_base = {k: f8_final[k] / f8_final[F8_BASE] for k in f8_final}
    e5m2 = sk.limits("float8_e5m2")
    result.append(
        sk.Claim(
            claim="float8 without scaling underflows: gradients are lost and training stalls",
            theory=f"output gradients ~ target RMS {cfg.f8_targets:g} / (n·out) ≈ "
            f"{cfg.f8_targets / (cfg.n * cfg.out_dim):.0e}, below e5m2's smallest normal "
            f"{e5m2.tiny:.1e} (subnormal {e5m2.smallest_subnormal:.1e}): rounded to 0",
            measured=f"gradient entries exactly 0 after step 0: {_fmt(later[F8_NONE], 2)} "
            f"(bfloat16 products {_fmt(later[F8_BASE], 2)}; at step 0 {_fmt(zeros[F8_NONE], 2)}"
            f" vs {_fmt(zeros[F8_BASE], 2)}); final loss {_fmt(vs_base[F8_NONE], 2)} × "
            "bfloat16's",
            passed=bool((later[F8_NONE] > 0.5).all())
            and bool((later[F8_NONE] > 3 * later[F8_BASE]).all())
            and bool((zeros[F8_NONE] > 2 * zeros[F8_BASE]).all())
            and bool((vs_base[F8_NONE] > 3).all()),
        )
    )
    g_none = np.asarray(f8[F8_NONE]["grad_underflow"], np.float64)
    g_del = np.asarray(f8[F8_DELAYED]["grad_underflow"], np.float64)
    o_none = np.asarray(f8[F8_NONE]["overflow_big"], np.float64)
    o_del = np.asarray(f8[F8_DELAYED]["overflow_big"], np.float64)
    e4m3 = sk.limits("float8_e4m3fn")
    result.append(
        sk.Claim(
            claim="The per-block float8 census: without scaling e5m2 flushes the nonzero output "
            "gradients of the blocks nearest the loss (the blocks before them receive exact "
            f"zeros), and with weights × {cfg.f8_big:g} the deep blocks' inputs overflow e4m3 "
            "(saturate); delayed scaling removes both from its second step",
            theory=f"unscaled, a gradient below e5m2's subnormal {e5m2.smallest_subnormal:.1e} "
            f"is 0 and an input above e4m3's largest {e4m3.max:g} saturates; the block inputs "
            f"grow like {cfg.f8_big:g}^l; delayed scaling divides by the last steps' amax",
            measured="nonzero gradients flushed per block after step 0, no scaling: "
            f"{_fmt(np.nanmean(g_none[:, 1:], axis=(0, 1)), 2)}, delayed: "
            f"{_fmt(np.nanmean(g_del[:, 1:], axis=(0, 1)), 2)}; forward overflow per block at "
            f"step 0, no scaling: {_fmt(np.nanmean(o_none[:, 0], axis=0), 2)}, delayed after "
            f"step 0: {_fmt(np.nanmean(o_del[:, 1:], axis=(0, 1)), 2)}",
            passed=bool(np.nanmean(g_none[:, 1:], axis=(0, 1))[-1] > 0.1)
            and bool((np.nanmean(g_del[:, 1:], axis=(0, 1)) < 0.02).all())
            and bool(np.nanmean(o_none[:, 0], axis=0)[-1] > 0.05)
            and bool(np.nanmax(o_del[:, 1:]) < 0.01),
        )
    )
    result.append(
        sk.Claim(
            claim="float8 with delayed scaling (amax history) trains close to bfloat16",
            theory="Transformer Engine's recipe: scale = 57344 / max(amax history), the "
            "gradients are multiplied into e5m2's range from the second step on (the first has "
            "no history: scale 1)",
            measured=f"final loss {_spread(vs_base[F8_DELAYED])} × bfloat16's (no scaling: "
            f"{_spread(vs_base[F8_NONE])}); zero gradient entries after step 0: delayed "
            f"{_fmt(later[F8_DELAYED], 2)}, bfloat16 {_fmt(later[F8_BASE], 2)}, no scaling "
            f"{_fmt(later[F8_NONE], 2)}",
            passed=bool((np.abs(vs_base[F8_DELAYED] - 1) < 0.25).all())
            and bool((later[F8_DELAYED] < later[F8_BASE] + 0.05).all()),
        )
    )
    return result


def _spoil_stall(n):
    c = n["cases"]
    c[BF16]["final_loss"] = list(np.asarray(c[F32]["final_loss"], np.float64) * 1.2)
    return 0


def _spoil_prediction(n):
    n["predicted_lost"] = [p * 0.8 for p in n["predicted_lost"]]
    return 1


def _spoil_through_training(n):
    lost = np.asarray(n["cases"][BF16]["lost"], np.float64)
    lost[:, -1, :] = 0.1
    n["cases"][BF16]["lost"] = lost.tolist()
    return 2


def _spoil_kahan(n):
    c = n["cases"]
    c[KAHAN]["final_loss"] = list(np.asarray(c[F32]["final_loss"], np.float64) * 1.5)
    return 3


def _spoil_stochastic(n):
    c = n["cases"]
    c[SR]["final_loss"] = list(np.asarray(c[F32]["final_loss"], np.float64) * 0.5)
    return 4


def _spoil_float8_none(n):
    f8 = n["float8"]
    f8[F8_NONE]["final_loss"] = list(np.asarray(f8[F8_BASE]["final_loss"], np.float64) * 1.1)
    return 5


def _spoil_float8_census(n):
    f8 = n["float8"]
    f8[F8_DELAYED]["overflow_big"] = np.asarray(f8[F8_NONE]["overflow_big"]).tolist()
    return 6


def _spoil_float8_delayed(n):
    f8 = n["float8"]
    f8[F8_DELAYED]["final_loss"] = list(np.asarray(f8[F8_BASE]["final_loss"], np.float64) * 2)
    return 7


SPOILERS = (
    _spoil_stall,
    _spoil_prediction,
    _spoil_through_training,
    _spoil_kahan,
    _spoil_stochastic,
    _spoil_float8_none,
    _spoil_float8_census,
    _spoil_float8_delayed,
)


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png``: loss curves, lost fractions over steps and per layer, finals."""
    cfg = Config(**numbers["config"])
    cases = numbers["cases"]
    step = np.asarray(numbers["step"])
    colours = {c[0]: c[2] for c in CASES}
    fig, axes = plt.subplots(3, 3, figsize=(21, 17), layout="constrained")
    (ax_a, ax_b, ax_c), (ax_d, ax_e, ax_f), (ax_g, ax_h, ax_i) = axes

    for label, c in cases.items():
        loss = np.asarray(c["loss"], np.float64)
        loss = loss / loss[:, :1]  # the seeds start from different losses
        ax_a.semilogy(step, loss.mean(0), color=colours[label], lw=2, label=label)
        ax_a.fill_between(step, loss.min(0), loss.max(0), color=colours[label], alpha=0.2)
    ax_a.set(
        xlabel="Adam step",
        ylabel="training loss / initial loss (band: min..max over seeds)",
        title=f"(a) Adam, lr = {cfg.lr:g}: pure bfloat16 stalls;\nKahan and stochastic "
        "rounding train like float32",
    )
    ax_a.legend(frameon=False, fontsize=9)

    names = [f"layer {i}" for i in range(1, cfg.depth + 1)] + ["readout"]
    lost = np.asarray(cases[BF16]["lost"], np.float64)
    shades = plt.cm.Reds(np.linspace(0.45, 0.95, len(names)))
    for j, name in enumerate(names):
        ax_b.plot(step, lost[:, :, j].mean(0), color=shades[j], lw=2, label=name)
    lost_k = np.asarray(cases[KAHAN]["lost"], np.float64).mean((0, 2))
    ax_b.plot(step, lost_k, "--", color=colours[KAHAN], lw=1.5, label="Kahan run, all layers")
    lost_f = np.asarray(cases[F32]["lost"], np.float64).mean((0, 2))
    ax_b.plot(step, lost_f, color=colours[F32], lw=1.5, label="float32 run, all layers")
    ax_b.set_ylim(-0.03, 1.03)
    ax_b.set(
        xlabel="Adam step",
        ylabel="fraction of nonzero updates lost to rounding",
        title="(b) weight-update stagnation per layer (bfloat16, mean over seeds):\n"
        "most updates are below half an ulp of their weight, all along",
    )
    ax_b.legend(frameon=False, fontsize=9, loc="center right")

    x = np.arange(len(names))
    pred = np.asarray(numbers["predicted_lost"])
    first = lost[:, 0, :]
    ax_c.bar(x - 0.2, pred, 0.4, color="#bbbbbb", label="predicted: P(|w| ≥ 2^-5), biases 0")
    ax_c.bar(x + 0.2, first.mean(0), 0.4, color=colours[BF16], label="measured, step 0")
    ax_c.errorbar(x + 0.2, first.mean(0), yerr=first.std(0), fmt="none", color="k", capsize=3)
    ax_c.set_xticks(x, names)
    ax_c.set_ylim(0, 1.25)
    ax_c.set(
        ylabel="lost fraction at the first step",
        title=f"(c) the arithmetic: Adam's first step is ±lr = {cfg.lr:g} per entry,\nlost "
        f"where half an ulp of w exceeds it: |w| ≥ {numbers['threshold']:g}",
    )
    ax_c.legend(frameon=False, fontsize=9, loc="upper left", ncols=2)

    f32 = np.asarray(cases[F32]["final_loss"], np.float64)
    for i, (label, c) in enumerate(cases.items()):
        rel = np.asarray(c["final_loss"], np.float64) / f32
        ax_d.plot(np.full(rel.shape, i), rel, "o", color=colours[label], ms=8)
        ax_d.annotate(f"{rel.mean():.3f}", (i + 0.12, rel.mean()), fontsize=10)
    ax_d.axhline(1, color=colours[F32], lw=1, ls=":")
    ax_d.set_xticks(
        range(len(cases)), [c.replace(" (", "\n(").replace(" + ", "\n+ ") for c in cases]
    )
    ax_d.set(
        ylabel="final loss / float32's (same seed)",
        title=f"(d) final loss after {cfg.steps} steps, {cfg.seeds} seeds",
    )
    f8 = numbers["float8"]
    f8_step = np.asarray(numbers["float8_step"])
    f8_colours = {c[0]: c[2] for c in FLOAT8_CASES}
    for label, c in f8.items():
        loss = np.asarray(c["loss"], np.float64)
        ax_e.semilogy(f8_step, loss.mean(0), color=f8_colours[label], lw=2, label=label)
        ax_e.fill_between(f8_step, loss.min(0), loss.max(0), color=f8_colours[label], alpha=0.2)
    ax_e.axhline(
        0.5 * cfg.f8_targets**2, color="k", lw=1, ls=":", label="predicting 0 (½·target RMS²)"
    )
    ax_e.set(
        xlabel="Adam step",
        ylabel="training loss (½·MSE; band: min..max over seeds)",
        title=f"(e) float8 products (e4m3 forward, e5m2 gradients) in {cfg.f8_depth} dense "
        f"blocks,\ntargets of RMS {cfg.f8_targets:g}: no scaling stalls, delayed scaling trains",
    )
    ax_e.legend(frameon=False, fontsize=9)

    for label, c in f8.items():
        zero = np.asarray(c["grad_zero"], np.float64)
        ax_f.plot(f8_step, zero.mean(0), "o-", color=f8_colours[label], lw=2, ms=4, label=label)
        ax_f.fill_between(f8_step, zero.min(0), zero.max(0), color=f8_colours[label], alpha=0.2)
    base = np.asarray(f8[F8_BASE]["final_loss"], np.float64)
    finals = ", ".join(
        f"{k.split(',')[-1].strip()} {np.mean(np.asarray(c['final_loss']) / base):.2f}×"
        for k, c in f8.items()
        if k != F8_BASE
    )
    ax_f.set(
        xlabel="Adam step",
        ylabel="fraction of gradient entries exactly 0 (stabkit.census)",
        title="(f) gradient census: without scaling e5m2 flushes small gradients to 0;\n"
        "delayed scaling (no amax history at step 0) scales them into range",
    )
    ax_f.legend(frameon=False, fontsize=9, title=f"final loss / bfloat16's: {finals}")
    blocks = np.arange(1, cfg.f8_depth + 1)
    census = (
        (
            ax_g,
            "grad_underflow",
            slice(1, None),
            "e5m2 gradient underflow after step 0",
            "(g) per block: the fraction of nonzero output gradients e5m2 flushes to 0\n"
            "(the blocks before the flushed ones receive exact zeros)",
        ),
        (
            ax_h,
            "overflow_big",
            slice(0, 1),
            "e4m3 input/weight overflow",
            f"(h) per block, weights × {cfg.f8_big:g}: the fraction of operands e4m3 saturates\n"
            "(delayed scaling: its first step has no history, it is no scaling)",
        ),
        (
            ax_i,
            "underflow",
            slice(1, None),
            "e4m3 input/weight underflow after step 0",
            "(i) per block: the fraction of nonzero operands e4m3 flushes to 0",
        ),
    )
    for ax, key, records, ylabel, title in census:
        for k, (label, c) in enumerate((k, f8[k]) for k in (F8_NONE, F8_DELAYED)):
            v = np.nanmean(np.asarray(c[key], np.float64)[:, records], axis=(0, 1))
            ax.bar(blocks + (k - 0.5) * 0.4, v, 0.4, color=f8_colours[label], label=label)
        if key == "overflow_big":  # delayed scaling after its first step: the scale has adapted
            v = np.nanmean(np.asarray(f8[F8_DELAYED][key], np.float64)[:, 1:], axis=(0, 1))
            ax.bar(blocks + 0.5 * 0.4, v, 0.4, color="k", label="delayed, after step 0")
            ax.legend(frameon=False, fontsize=9, title="step 0 unless said")
        ax.set_xticks(blocks, [f"block {b}" for b in blocks])
        ax.set(ylabel=ylabel, title=title)
        if key != "overflow_big":
            ax.legend(frameon=False, fontsize=9)
    fig.suptitle(
        f"(a-d): teacher-student regression ({cfg.n} examples), relu MLP {cfg.in_dim}→"
        f"{cfg.width}×{cfg.depth}→{cfg.out_dim}, He init, full-batch Adam, {cfg.seeds} seeds. "
        f"(e-i): a bfloat16 network of {cfg.f8_depth} dense relu blocks, weights × "
        f"{cfg.f8_scale:g} (h: × {cfg.f8_big:g}).\nEach configuration's seeds are one vmapped "
        "stabkit.train call.",
        fontsize=12,
    )
    fig.savefig(pathlib.Path(out_dir) / f"{NAME}.png", dpi=90)
    plt.close(fig)


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    sk.save_json(out / f"{NAME}.json", numbers)
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
