"""Study: the note's two causes over a grid, with one sweep (stabkit.sweep).

Cause 1, the weights: a deep linear net with :math:`W = aI` scales its signal and its gradient by
:math:`a^{\\mathrm{depth}+1}`, so :math:`a > 1` overflows and :math:`a < 1` underflows, at a
layer the dtype's range fixes. With :math:`a = 2` and :math:`a = 1/2` every product is exact, so
the layer is predicted exactly: the first inf where :math:`\\max|x| \\cdot 2^l` passes the largest
finite value, the first all-zero layer where :math:`\\max|x| \\cdot 2^{-l}` rounds to zero, which
depends on whether the backend keeps subnormal results (:func:`stabkit.probe`).

Cause 2, the activation: with Glorot weights the sigmoid multiplies the gradient by about
:math:`\\mathrm{rms}(\\sigma') \\approx 0.2` per layer, so it vanishes with depth; relu with He
weights keeps it (Schoenholz et al. 2017, eq. 7). In float16 the vanished gradient rounds to
exactly 0.

One :class:`stabkit.SweepSpec` covers both: 11 depths (5..160) x 4 activations x 3 inits x 9
scales x 3 dtypes x 2 seeds = 7,128 networks, one compiled kernel per dtype. The heatmaps go to
``sweep_grid_linear/`` (the scaled identity, every dtype) and ``sweep_grid_activations/`` (Glorot
weights, float32, one row per activation).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import ml_dtypes
import numpy as np

import stabkit as sk
from stabkit.reproduce import run_alone
from stabkit.sweeps.plots import heatmaps

NAME = "sweep_grid"
TITLE = "The two causes over a grid: scale x depth x dtype (linear) and activation x depth"
ORDER = 50


@dataclasses.dataclass(frozen=True)
class Config:
    depth: tuple = (5, 10, 15, 20, 30, 40, 50, 64, 100, 128, 160)  # 160 > float32's 150 halvings
    activation: tuple = ("linear", "sigmoid", "tanh", "relu")
    init: tuple = ("scaled_identity", "glorot_normal", "he_normal")
    # a of the identity, or the gain; 0.5, 1 and 2 make every product exact
    scale: tuple = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)
    dtype: tuple = ("float16", "bfloat16", "float32")
    seeds: int = 2
    width: int = 16
    batch: int = 16
    deep: int = 50  # the depth of the activation claims, as in the activations study


def _spec(cfg: Config) -> sk.SweepSpec:
    return sk.SweepSpec(
        depth=cfg.depth,
        width=cfg.width,
        activation=cfg.activation,
        init=cfg.init,
        scale=cfg.scale,
        dtype=cfg.dtype,
        seed=range(cfg.seeds),
        batch=cfg.batch,
        loss="sum",  # dL/dy = 1: the backward gain is the network's alone
    )


def _xmax(seed: int, cfg: Config, dtype: str) -> float:
    x = np.asarray(sk.sweep_input(seed, cfg.batch, cfg.width, dtype), np.float64)
    return float(np.abs(x).max())


def _first(pred, limit: int = 400) -> int:
    return next(layer for layer in range(1, limit) if pred(layer))


def _config(quick: bool) -> Config:
    quick_grid = dict(depth=(5, 10, 20, 50, 64, 160), scale=(0.5, 0.9, 1.0, 1.5, 2.0))
    return Config(dtype=("float16", "float32"), seeds=1, **quick_grid) if quick else Config()


def measure(*, quick: bool) -> dict:
    """The numbers of the study: one sweep, and what the claims read off it.

    ``numbers["dataset"]`` is the sweep's Dataset, which the heatmaps draw (not stored in
    ``NAME.json``); the rest is stored there and is all :func:`claims` reads.
    """
    cfg = _config(quick)
    ds = sk.sweep(_spec(cfg), progress=False).sel(width=cfg.width, bias_std=0.0)
    lin = ds.sel(activation="linear", init="scaled_identity")
    deepest = max(cfg.depth)

    # 1. The gains of W = aI in float32, per (scale, depth, seed), for the closed form.
    f32 = lin.sel(dtype="float32")
    gains = {
        "scale": list(cfg.scale),
        "depth": list(cfg.depth),
        # (scale, depth, seed), float32 as measured
        "output_gain": f32.output_gain.transpose("scale", "depth", "seed").values,
        "grad_ratio": f32.grad_ratio.transpose("scale", "depth", "seed").values,
    }

    # 2. a = 2 overflows where the dtype's max says; a = 1/2 underflows where the probe says.
    probe = sk.probe()
    over, under = [], []
    for dtype in cfg.dtype:
        info = ml_dtypes.finfo(dtype)
        big, tiny = float(info.max), float(info.smallest_normal)
        keeps = probe[dtype].keeps_subnormal_results
        # A result rounds to 0 at or below half the smallest subnormal, or is flushed below tiny.
        zero_at = float(info.smallest_subnormal) / 2 if keeps else tiny
        for seed in range(cfg.seeds):
            xmax = _xmax(seed, cfg, dtype)
            c = lin.sel(dtype=dtype, depth=deepest, seed=seed)
            want_inf = _first(lambda layer, xmax=xmax, big=big: xmax * 2.0**layer > big)
            got_inf = int(c.first_inf_forward.sel(scale=2.0))
            over.append((dtype, seed, want_inf, got_inf))
            if keeps:
                want_zero = _first(lambda layer, x=xmax, z=zero_at: x * 2.0**-layer <= z)
            else:
                want_zero = _first(lambda layer, x=xmax, z=zero_at: x * 2.0**-layer < z)
            got_zero = int(c.first_zero_forward.sel(scale=0.5))
            under.append((dtype, seed, want_zero, got_zero, keeps))

    # 3. The activation: sigmoid (Glorot) vanishes, relu (He) does not, tanh in between.
    def ratio(act, init, dtype="float32"):
        r = ds.grad_ratio.sel(activation=act, init=init, scale=1.0, depth=cfg.deep, dtype=dtype)
        return float(np.exp(np.median(np.log(np.abs(r.values)))))

    sig = ratio("sigmoid", "glorot_normal")
    tanh = ratio("tanh", "glorot_normal")
    relu = ratio("relu", "he_normal")
    zero16 = None
    if "float16" in cfg.dtype:
        zb = ds.first_zero_backward.sel(dtype="float16", depth=cfg.deep, scale=1.0)
        zero16 = {
            "sigmoid": zb.sel(activation="sigmoid", init="glorot_normal").values,
            "relu": zb.sel(activation="relu", init="he_normal").values,
        }
    return {
        "spec": _spec(cfg).to_dict(),
        "overflow": over,
        "underflow": under,
        "grad_ratio_depth": {"sigmoid": sig, "tanh": tanh, "relu": relu},
        "configs": math.prod(_spec(cfg).shape),
        "seeds": cfg.seeds,
        "width": cfg.width,
        "deep": cfg.deep,
        "identity_gains_float32": gains,
        "first_zero_backward_float16": zero16,
        "dataset": ds,
    }


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    seeds, deep = numbers["seeds"], numbers["deep"]
    result = []

    # 1. The closed form in float32, wherever the signal stays in range.
    gains = numbers["identity_gains_float32"]
    worst, checked = 0.0, 0
    for i, a in enumerate(gains["scale"]):
        for j, d in enumerate(gains["depth"]):
            theory = sk.deep_linear_gain(a, d + 1)
            if not 1e-30 < theory < 1e30:
                continue
            for name in ("output_gain", "grad_ratio"):
                got = np.asarray(gains[name], np.float32)[i, j]
                worst = max(worst, float(np.max(np.abs(got / theory - 1))))
                checked += got.size
    result.append(
        sk.Claim(
            claim="A deep linear net with W = aI scales its signal and its gradient by a^(depth+1)",
            theory="output RMS / input RMS = |dL/dx| / |dL/dy| = a^(depth+1) (deep_linear_gain)",
            measured=f"float32, {checked} (config, quantity) pairs with a^(depth+1) in "
            f"[1e-30, 1e30]: worst relative error {worst:.1e}",
            passed=checked > 0 and worst < 1e-4,
        )
    )

    # 2. a = 2 overflows where the dtype's max says; a = 1/2 underflows where the probe says.
    over, under = numbers["overflow"], numbers["underflow"]
    result.append(
        sk.Claim(
            claim="With a = 2 the signal overflows exactly where max|x| 2^l passes the dtype's max",
            theory="first inf layer = min l with max|x| 2^l > finfo.max (products by 2 are exact)",
            measured="; ".join(
                f"{d} seed {s}: predicted {w}, measured {g}" for d, s, w, g in over[::seeds]
            )
            + f" ({len(over)} cases)",
            passed=all(w == g for _, _, w, g in over),
        )
    )
    result.append(
        sk.Claim(
            claim="With a = 1/2 the whole signal becomes 0 where the backend's subnormal handling "
            "says",
            theory="first all-zero layer: max|x| 2^-l <= smallest subnormal / 2 if the backend "
            "keeps subnormal results (probe), else max|x| 2^-l < smallest normal (flushed)",
            measured="; ".join(
                f"{d} ({'keeps' if k else 'flushes'}) seed {s}: predicted {w}, measured {g}"
                for d, s, w, g, k in under[::seeds]
            )
            + f" ({len(under)} cases)",
            passed=all(w == g for _, _, w, g, _ in under),
        )
    )

    # 3. The activation: sigmoid (Glorot) vanishes, relu (He) does not, tanh in between.
    ratios = numbers["grad_ratio_depth"]
    sig, tanh, relu = ratios["sigmoid"], ratios["tanh"], ratios["relu"]
    result.append(
        sk.Claim(
            claim=f"At depth {deep} the sigmoid's gradient vanishes, relu's (He init) does not",
            theory="per layer the gradient's RMS scales by about sigma_w rms(phi'): ~0.2 for the "
            "sigmoid with Glorot weights, ~1 for relu with He weights; tanh in between",
            measured=f"|dL/dx| / |dL/dy|, float32, median over seeds: sigmoid {sig:.1e}, tanh "
            f"{tanh:.1e}, relu {relu:.1e}",
            passed=sig < 1e-20 and 1e-4 < relu < 1e4 and sig < tanh < 1e4,
        )
    )
    zero16 = numbers["first_zero_backward_float16"]
    if zero16 is not None:
        sig16, relu16 = np.asarray(zero16["sigmoid"]), np.asarray(zero16["relu"])
        result.append(
            sk.Claim(
                claim="In float16 the sigmoid's vanished gradient is exactly 0; relu's is not",
                theory=f"0.2^{deep} ~ 1e-35 is far below float16's smallest subnormal 6e-8",
                measured=f"first all-zero gradient layer at depth {deep}, per seed: sigmoid "
                f"{sig16.tolist()}, relu {relu16.tolist()} (-1: never)",
                passed=bool((sig16 >= 0).all() and (relu16 == -1).all()),
            )
        )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Draw the heatmaps from ``numbers["dataset"]`` (from :func:`measure`); returns their paths."""
    out_dir, ds = pathlib.Path(out_dir), numbers["dataset"]
    width = numbers["width"]
    # Subfolders named after the study: other studies are called "activations" and "deep_linear".
    figs = heatmaps(ds.sel(activation=["linear"], init=["scaled_identity"]).expand_dims(
        width=[width], bias_std=[0.0]), out_dir / f"{NAME}_linear")  # fmt: skip
    figs += heatmaps(
        ds.sel(init=["glorot_normal"], dtype=["float32"]).expand_dims(
            width=[width], bias_std=[0.0]
        ),
        out_dir / f"{NAME}_activations",
    )
    return figs


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figs = figure(numbers, out)
    result = claims(numbers)
    stored = {k: v for k, v in numbers.items() if k != "dataset"}
    sk.save_json(out / "sweep_grid.json", {**stored, "figures": [str(f) for f in figs]})
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
