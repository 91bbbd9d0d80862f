"""Study: the note's deep linear network, W = a I, traced layer by layer in every dtype.

The note's first cause: with width 2, zero biases, the linear activation and every weight matrix
:math:`W = aI`, the output of a net with :math:`l` weight matrices is :math:`a^l x` and the
gradient that reaches the first layer carries :math:`a^{l-1}`: :math:`a = 1.5` explodes,
:math:`a = 0.5` vanishes, :math:`a = 1` keeps the signal. In floating point the explosion ends in
inf, and "further arithmetic" turns it into NaN: the next matrix product computes
:math:`1.5 \\cdot \\infty + 0 \\cdot \\infty`. The vanishing ends in exactly 0.

Everything here is measured by ``stabkit.trace`` on ``stabkit.mlp_init`` nets, with the closed
forms ``stabkit.deep_linear_gain`` as theory and ``stabkit.overflow_depth``/``underflow_depth`` (an
exact host simulation of the rounded chain) for where inf and 0 must appear. One compiled trace per
dtype serves all depths and all three values of a: depth and weights are data (``jax.vmap``).
The loss is ``sum`` (its gradient at the output is all ones), so the backward numbers are the
network's Jacobian alone: the first layer's weight gradient is exactly :math:`a^{l-1}`.
"""

from __future__ import annotations

import contextlib
import math
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import ml_dtypes
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "deep_linear"
TITLE = "The note's deep linear net W = a I: output and gradients vs depth, first inf, NaN and 0"
ORDER = 30

SCALES = (0.5, 1.0, 1.5)  # the note's a
DTYPES = ("float16", "bfloat16", "float32", "float64")
QUICK_DTYPES = ("float16", "float32")
MAX_DEPTH = {"float16": 40, "bfloat16": 240, "float32": 240, "float64": 1800}  # past 1.5^l overflow
X = np.array([[1.0, 1.0]])  # the note's x = (x1, x2); all ones, so |y| = a^l exactly
COLORS = {0.5: "#1f5fa8", 1.0: "#2e8b57", 1.5: "#c0392b"}


def _x64(name: str):
    return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()


def _depths(name: str, quick: bool) -> np.ndarray:
    """Every depth for float16; an even grid (plus the overflow and underflow layers) otherwise."""
    top = MAX_DEPTH[name]
    if name == "float16":
        return np.arange(1, top + 1)
    grid = np.linspace(1, top, 30 if quick else 60).round().astype(int)
    near = []
    for d in (sk.overflow_depth(1.5, name).step, sk.underflow_depth(0.5, name).step):
        near += [d - 2, d - 1, d]  # depth = l - 1: the last finite/non-zero output and the first
    return np.unique(np.clip(np.concatenate([grid, near]), 1, top))


def _measure(name: str, quick: bool) -> dict:
    """Traces of W = a I for every a and depth, in one compiled, vmapped call."""
    dtype = jnp.dtype(getattr(ml_dtypes, name, name))
    depths = _depths(name, quick)
    with _x64(name):
        base = sk.mlp_init(
            jax.random.key(0), depth=MAX_DEPTH[name], width=2, init="scaled_identity", dtype=dtype
        )
        configs = [(a, int(d)) for a in SCALES for d in depths] + [
            (a, MAX_DEPTH[name]) for a in SCALES
        ]
        scale = jnp.asarray([a for a, _ in configs], dtype)
        depth = jnp.asarray([d for _, d in configs], jnp.int32)

        def one(a, d):
            params = jax.tree.map(lambda w: a * w, base)  # a * I exactly (1.5 and 0.5 are exact)
            return sk.trace(params, X, activation="linear", loss="sum", depth=d)

        t = jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(scale, depth))
    rows = np.arange(len(configs))
    n = len(depths)
    out = {"dtype": name, "depths": depths, "per_a": {}, "deep": {}}
    for i, a in enumerate(SCALES):
        sel = rows[i * n : (i + 1) * n]
        out["per_a"][a] = {
            # output RMS (= |a^l| for x = (1, 1)) and the first layer's weight gradient
            "output": t.post_rms[sel, depths + 1].astype(np.float64),
            "grad_w1": t.grad_w_rms[sel, 1].astype(np.float64),
            "output_census_inf": t.post_census.inf[sel, depths + 1],
            "output_census_nan": t.post_census.nan[sel, depths + 1],
        }
        deep = jax.tree.map(lambda v, j=3 * n + i: v[j], t)  # the full-depth trace for this a
        out["deep"][a] = deep
    return out


# ------------------------------------------------------------------------------------- plotting


def _log10(v) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.abs(np.asarray(v, np.float64)))


def _limits(name: str):
    fi = ml_dtypes.finfo(np.dtype(getattr(ml_dtypes, name, name)))
    return (
        math.log10(float(fi.smallest_subnormal)),
        math.log10(float(fi.smallest_normal)),
        math.log10(float(fi.max)),
    )


def _in_frame(log_values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The closed form where it is inside the representable range (NaN, not drawn, elsewhere)."""
    v = np.asarray(log_values, np.float64)
    return np.where((v >= lo) & (v <= hi), v, np.nan)


def _measured(ax, x, y, color, lo, hi, label, marker="o"):
    """Finite non-zero values as points; inf at the top edge (▲), NaN (✖) above it, 0 (▼) below."""
    y = np.asarray(y, np.float64)
    fin = np.isfinite(y) & (y != 0)
    ax.plot(x[fin], _log10(y[fin]), marker, ms=3.2, color=color, label=label, zorder=3)
    pad = 0.07 * (hi - lo)
    for mask, yy, m in ((np.isinf(y), hi + pad, "^"), (np.isnan(y), hi + 2 * pad, "X")):
        if mask.any():
            ax.plot(x[mask], np.full(mask.sum(), yy), m, ms=5, color=color, zorder=3)
    zero = y == 0
    if zero.any():
        ax.plot(x[zero], np.full(zero.sum(), lo - pad), "v", ms=5, color=color, zorder=3)


def _frame(ax, name: str):
    lo, tiny, hi = _limits(name)
    pad = 0.07 * (hi - lo)
    ax.axhspan(lo, tiny, color="0.93", zorder=0)
    for y, text, va in (
        (hi, "max", "bottom"),
        (tiny, "smallest normal", "bottom"),
        (lo, "", "top"),
    ):
        ax.axhline(y, color="0.6", lw=0.7, ls=":", zorder=1)
        if text:
            ax.annotate(
                text,
                (0.99, y),
                xycoords=("axes fraction", "data"),
                ha="right",
                va=va,
                fontsize=7,
                color="0.45",
            )
    for yy, text in ((hi + pad, "inf ▲"), (hi + 2 * pad, "NaN ✖"), (lo - pad, "0 ▼")):
        ax.axhline(yy, color="0.85", lw=0.6, zorder=0)
        ax.annotate(
            text,
            (0.005, yy),
            xycoords=("axes fraction", "data"),
            ha="left",
            va="center",
            fontsize=7,
            color="0.4",
        )
    ax.set_ylim(lo - 2 * pad, hi + 3.6 * pad)
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"1e{v:.0f}"))
    ax.grid(True, color="0.94", lw=0.6)
    return lo, hi


def _figure_depth(out: pathlib.Path, measured: dict) -> None:
    fig, axes = plt.subplots(
        2,
        len(measured),
        figsize=(4.25 * len(measured), 8.4),
        constrained_layout=True,
        squeeze=False,
    )
    for col, name in enumerate(measured):
        m = measured[name]
        ls = m["depths"] + 1  # the note's l: weight matrices, the readout included
        dense = np.arange(0, ls.max() + 1)
        for row, (key, shift, what) in enumerate(
            (("output", 0, "|ŷ| = a^l"), ("grad_w1", 1, "|∂L/∂W¹| = a^(l-1)"))
        ):
            ax = axes[row, col]
            lo, hi = _frame(ax, name)
            for a in SCALES:
                theory = _log10(sk.deep_linear_gain(a, np.maximum(dense - shift, 0)))
                ax.plot(
                    dense,
                    _in_frame(theory, lo, hi),
                    "-",
                    lw=1.1,
                    color=COLORS[a],
                    alpha=0.5,
                    label=f"theory a = {a}" if col == row == 0 else None,
                )
                _measured(
                    ax,
                    ls,
                    m["per_a"][a][key],
                    COLORS[a],
                    lo,
                    hi,
                    f"measured a = {a}" if col == row == 0 else None,
                )
            ax.set_xlim(0, ls.max() * 1.02)
            ax.set_title(f"{name}: {what}", fontsize=10)
            if row == 1:
                ax.set_xlabel("l = weight matrices (depth + 1)")
            if col == 0:
                ax.set_ylabel("output RMS" if row == 0 else "first-layer weight gradient RMS")
    fig.legend(loc="outside lower center", ncol=6, frameon=False, fontsize=9)
    fig.suptitle(
        "The note's net: width 2, W = a I, zero biases, linear, x = (1, 1), loss = sum(ŷ). Lines: "
        "closed form; points: stabkit.trace (one compilation per dtype, depth and a as data).\n"
        "a = 1.5 explodes until it overflows to inf (▲), then NaN (✖); a = 0.5 vanishes into "
        "the subnormals (shaded) and then exactly 0 (▼); a = 1 stays at 1.",
        fontsize=11,
    )
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def _figure_layers(out: pathlib.Path, measured: dict) -> None:
    """float16, depth 40: |h^l| and |∂L/∂h^l| per layer, where inf, NaN, subnormals and 0 appear."""
    name = "float16"
    deep = measured[name]["deep"]
    n = MAX_DEPTH[name] + 2
    layers = np.arange(n)
    big_l = n - 1
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.4), constrained_layout=True)
    panels = (
        (
            "post_max",
            "post_census",
            "forward",
            "|h^l|, layer l = output of the l-th matrix",
            lambda a: sk.deep_linear_gain(a, layers),
        ),
        (
            "grad_post_max",
            "grad_census",
            "backward",
            "|∂L/∂h^l| for L = sum(ŷ)",
            lambda a: sk.deep_linear_gain(a, big_l - layers),
        ),
    )
    for ax, (field, census, direction, title, theory) in zip(axes, panels, strict=True):
        lo, hi = _frame(ax, name)
        pad = 0.07 * (hi - lo)
        for a in (0.5, 1.5):
            t, color = deep[a], COLORS[a]
            ax.plot(
                layers,
                _in_frame(_log10(theory(a)), lo, hi),
                "-",
                lw=1.1,
                color=color,
                alpha=0.5,
                label=f"theory a = {a}",
            )
            _measured(ax, layers, getattr(t, field), color, lo, hi, f"stabkit.trace a = {a}")
            events = (
                ("inf", int(getattr(t, f"first_inf_{direction}")), hi + pad, -16),
                ("NaN", int(getattr(t, f"first_nan_{direction}")), hi + 2 * pad, 10),
                ("all zero", int(getattr(t, f"first_zero_{direction}")), lo - pad, 12),
            )
            for what, layer, y, dy in events:
                if layer >= 0:
                    left = (direction == "forward") == (what == "all zero")
                    ax.annotate(
                        f"first {what}: layer {layer}",
                        (layer, y),
                        xytext=(0, dy),
                        textcoords="offset points",
                        ha="left" if left else "right",
                        fontsize=8,
                        color=color,
                        fontweight="bold",
                    )
            sub = np.flatnonzero(getattr(t, census).subnormal[:n])
            if sub.size:
                ax.axvspan(sub.min() - 0.5, sub.max() + 0.5, color=color, alpha=0.08, lw=0)
                text = f"a = {a}: entries\nsubnormal in\nlayers {sub.min()}–{sub.max()}"
                ax.annotate(
                    text, (sub.mean(), hi - 0.3 * (hi - lo)), ha="center", fontsize=8, color=color
                )
        ax.set_title(f"{direction}: {title}", fontsize=10)
        ax.set_xlabel(f"layer l (0 = input, {big_l} = output)")
        ax.set_xlim(-1, n + 1)
        ax.legend(
            loc="center right" if direction == "forward" else "center left",
            fontsize=8,
            frameon=False,
        )
    fig.suptitle(
        "The note's example in float16: depth 40 (41 matrices W = a I), x = (1, 1). Forward, 1.5^l "
        "overflows to inf and the next product 1.5·inf + 0·inf is NaN;\n0.5^l passes through the "
        "subnormals to exactly 0. Backward (loss sum(ŷ), whose gradient does not depend on the "
        "forward values), a^(L-l) does the same from the output down.",
        fontsize=10.5,
    )
    fig.savefig(out / f"{NAME}_float16_layers.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- claims


def _max_rel_err(measured: np.ndarray, theory: np.ndarray) -> float:
    ok = np.isfinite(theory) & (theory != 0) & (np.abs(theory) < 1e300)
    return float(np.max(np.abs(measured[ok] / theory[ok] - 1))) if ok.any() else 0.0


def measure(*, quick: bool) -> dict:
    """The numbers of the study: per dtype, a and depth the output and first-layer gradient RMS,
    the full-depth trace's first inf / NaN / 0 layers, and the rounded chains' steps.

    ``numbers["traces"]`` holds the traces the figures draw (not stored in ``NAME.json``); the
    rest is stored there and is all that :func:`claims` reads.
    """
    dtypes = QUICK_DTYPES if quick else DTYPES
    measured = {name: _measure(name, quick) for name in dtypes}
    numbers = {"x": X, "loss": "sum", "max_depth": MAX_DEPTH, "dtypes": {}}
    for name in dtypes:
        m = measured[name]
        rec = {"depths": m["depths"], "per_a": {}}
        for a in SCALES:
            pa, deep = m["per_a"][a], m["deep"][a]
            rec["per_a"][str(a)] = {
                "output_rms": pa["output"],
                "grad_w1_rms": pa["grad_w1"],
                "first_inf_forward": int(deep.first_inf_forward),
                "first_nan_forward": int(deep.first_nan_forward),
                "first_zero_forward": int(deep.first_zero_forward),
                "first_inf_backward": int(deep.first_inf_backward),
                "first_nan_backward": int(deep.first_nan_backward),
                "first_zero_backward": int(deep.first_zero_backward),
                "subnormal_forward_layers": int(np.count_nonzero(deep.post_census.subnormal)),
            }
        sim = sk.underflow_depth(0.5, name)  # flushing as the device was measured to flush
        rec["overflow_chain_step"] = sk.overflow_depth(1.5, name).step
        rec["underflow_chain"] = {"step": sim.step, "flush": sim.flush}
        numbers["dtypes"][name] = rec
    numbers["traces"] = measured
    return numbers


def _errors(numbers: dict) -> dict:
    """Per (dtype, a): the largest relative errors of output and gradient against the closed
    form where it is inside the dtype's normal range, the deepest l compared, and eps."""
    errors = {}
    for name, rec in numbers["dtypes"].items():
        ls = np.asarray(rec["depths"]) + 1
        eps = float(ml_dtypes.finfo(np.dtype(getattr(ml_dtypes, name, name))).eps)
        _, tiny, hi = _limits(name)
        for a in SCALES:
            pa = rec["per_a"][str(a)]
            # float64: NAME.json stores inf and NaN as strings
            output = np.asarray(pa["output_rms"], np.float64)
            grad_w1 = np.asarray(pa["grad_w1_rms"], np.float64)
            out_th, grad_th = sk.deep_linear_gain(a, ls), sk.deep_linear_gain(a, ls - 1)
            # Compare where the closed form is inside the dtype's normal range.
            inside = (_log10(out_th) < hi) & (_log10(out_th) > tiny)
            inside_g = (_log10(grad_th) < hi) & (_log10(grad_th) > tiny)
            errors[name, a] = (
                _max_rel_err(output[inside], out_th[inside]),
                _max_rel_err(grad_w1[inside_g], grad_th[inside_g]),
                int(ls[inside].max()) if inside.any() else 0,
                eps,
            )
    return errors


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    dtypes, recs, max_depth = list(numbers["dtypes"]), numbers["dtypes"], numbers["max_depth"]
    errors = _errors(numbers)
    result = []

    def within(a, index):  # relative error <= (l + 2) eps: one rounding per layer, plus slack
        return all(errors[n, a][index] <= (errors[n, a][2] + 2) * errors[n, a][3] for n in dtypes)

    def fmt(a, index):
        return "; ".join(f"{n} {errors[n, a][index]:.1e} (l ≤ {errors[n, a][2]})" for n in dtypes)

    result.append(
        sk.Claim(
            claim="W = 1.5 I explodes: the output is 1.5^l x (l weight matrices)",
            theory="ŷ = a^l x; measured within (l + 2)·eps of the closed form while 1.5^l < max",
            measured="max relative error " + fmt(1.5, 0),
            passed=within(1.5, 0),
        )
    )
    result.append(
        sk.Claim(
            claim="W = 1.5 I: the gradient reaching the first layer grows as 1.5^(l-1)",
            theory="∂L/∂W¹ = a^(l-1) x 1ᵀ for L = sum(ŷ)",
            measured="max relative error " + fmt(1.5, 1),
            passed=within(1.5, 1),
        )
    )
    result.append(
        sk.Claim(
            claim="W = 0.5 I vanishes: output 0.5^l x and first-layer gradient 0.5^(l-1)",
            theory="ŷ = 0.5^l x, ∂L/∂W¹ = 0.5^(l-1) x 1ᵀ (powers of two: the network rounds "
            "nothing while they are normal; the RMS statistic itself is float32/float64)",
            measured=f"max relative error, output: {fmt(0.5, 0)}; gradient: {fmt(0.5, 1)}",
            passed=within(0.5, 0) and within(0.5, 1),
        )
    )
    keeps = all(
        np.all(np.asarray(recs[n]["per_a"]["1.0"]["output_rms"], np.float64) == 1)
        and np.all(np.asarray(recs[n]["per_a"]["1.0"]["grad_w1_rms"], np.float64) == 1)
        for n in dtypes
    )
    result.append(
        sk.Claim(
            claim="W = I keeps the signal: output and gradient stay exactly 1 at every depth",
            theory="1^l = 1",
            measured="exactly 1 in every dtype up to l = "
            + ", ".join(f"{max_depth[n] + 1} ({n})" for n in dtypes)
            if keeps
            else "not exact",
            passed=keeps,
        )
    )

    over = {}
    for n in dtypes:
        d = recs[n]["per_a"]["1.5"]
        over[n] = (
            recs[n]["overflow_chain_step"],
            d["first_inf_forward"],
            d["first_nan_forward"],
            d["first_inf_backward"],
            d["first_nan_backward"],
            max_depth[n] + 1,
        )
    result.append(
        sk.Claim(
            claim="Overflow: the signal rounds to inf where 1.5^l first exceeds max, and the next "
            "layer turns it into NaN (1.5·inf + 0·inf in the matrix product)",
            theory="first inf at the exact rounded-chain step (stabkit.overflow_depth), NaN one "
            "layer later; backward from the output: inf at L - k, NaN at L - k - 1",
            measured="; ".join(
                f"{n}: inf {v[1]}, NaN {v[2]} (chain {v[0]}); backward inf {v[3]}, NaN {v[4]}"
                for n, v in over.items()
            ),
            passed=all(
                v[1] == v[0]
                and v[2] == v[0] + 1
                and v[3] == v[5] - v[0]
                and v[4] == v[5] - v[0] - 1
                for v in over.values()
            ),
        )
    )

    under = {}
    for n in dtypes:
        d, sim = recs[n]["per_a"]["0.5"], recs[n]["underflow_chain"]
        under[n] = (
            sim["step"],
            sim["flush"],
            d["first_zero_forward"],
            d["subnormal_forward_layers"],
        )
    result.append(
        sk.Claim(
            claim="Underflow: 0.5^l rounds to exactly 0 (every entry, by bit pattern) at the layer "
            "where the rounded chain does",
            theory="the exact rounded chain (stabkit.underflow_depth, flushing subnormals where "
            "the device does)",
            measured="; ".join(
                f"{n}: first all-zero layer {v[2]} (chain {v[0]}, "
                f"{'flushed' if v[1] else f'{v[3]} subnormal layers first'})"
                for n, v in under.items()
            ),
            passed=all(v[2] == v[0] for v in under.values()),
        )
    )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME*.png`` from ``numbers["traces"]`` (from :func:`measure`)."""
    out_dir = pathlib.Path(out_dir)
    _figure_depth(out_dir, numbers["traces"])
    _figure_layers(out_dir, numbers["traces"])


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    record = {k: v for k, v in numbers.items() if k != "traces"}
    record["errors"] = {f"{n} a={a}": v for (n, a), v in _errors(numbers).items()}
    sk.save_json(out / f"{NAME}.json", record)
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
