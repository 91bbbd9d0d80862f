"""Study: the founding note's softmax example, naive vs max-shifted, in every dtype.

With n equal inputs c the answer is 1/n. The textbook ``exp(x) / sum(exp(x))`` breaks in three
places, each predicted from the dtype's limits (``stabkit.limits``) and the backend's measured
subnormal behaviour (``stabkit.probe``):

* ``c > log(max / n)``: the *sum* of n terms overflows first, so the result is ``e^c / inf = 0``;
* ``c > log(max)`` (``limits.exp_max``): ``e^c`` itself is inf, ``inf / inf = NaN``;
* ``c < limits.exp_min`` (subnormals kept) or ``limits.exp_min_normal`` (flushed): ``e^c = 0`` and
  ``0 / 0 = NaN``.

The measured thresholds are the exact first failing values of c on the dtype's own grid near the
prediction. The stable ``stabkit.softmax`` must be exactly 1/n (and ``log_softmax`` -log n) for
every c from -1e5 to 1e5 and at +-max. A table of the peer failures that stabkit fixes is added.

Run alone: ``python experiments/softmax_overflow.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import contextlib
import math
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_dtypes
import numpy as np
import optax

import stabkit
from stabkit.reproduce import Claim, run_alone, save_json

NAME = "softmax"
TITLE = (
    "Softmax of n equal inputs: the naive formula overflows and underflows, the max shift does not"
)
ORDER = 10

DTYPES = ("float16", "bfloat16", "float32", "float64")
N = 8
C_MAX = 1e5


def _np_dtype(name):
    return np.dtype(getattr(ml_dtypes, name)) if name == "bfloat16" else np.dtype(name)


def _x64(name):
    return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()


def _evaluate(c: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Naive and stable softmax / log_softmax of rows of N copies of each c, as float64."""
    with _x64(name):
        x = jnp.asarray(np.repeat(c.astype(_np_dtype(name))[:, None], N, axis=1))
        out = {
            "naive_softmax": stabkit.naive_softmax(x)[:, 0],
            "naive_log_softmax": stabkit.naive_log_softmax(x)[:, 0],
            "softmax": stabkit.softmax(x)[:, 0],
            "log_softmax": stabkit.log_softmax(x)[:, 0],
            "logsumexp": stabkit.logsumexp(x),
        }
        return {k: np.asarray(v).astype(np.float64) for k, v in out.items()}


def _dtype_grid(lo: float, hi: float, name: str, points: int) -> np.ndarray:
    """Values of the dtype in [lo, hi]: all of them for 16-bit formats, a dense sample otherwise."""
    nd = _np_dtype(name)
    if nd.itemsize == 2:
        with np.errstate(invalid="ignore"):
            vals = np.arange(2**16, dtype=np.uint16).view(nd).astype(np.float64)
        vals = np.unique(vals[np.isfinite(vals) & (vals >= lo) & (vals <= hi)])
        return vals
    return np.unique(np.linspace(lo, hi, points).astype(nd).astype(np.float64))


def _first_failure(c: np.ndarray, ok: np.ndarray, direction: int) -> float | None:
    """Going outwards from 0 (direction +1 up, -1 down), the first c where ``ok`` is False."""
    order = np.argsort(c) if direction > 0 else np.argsort(-c)
    c, ok = c[order], ok[order]
    bad = np.flatnonzero(~ok & (np.sign(c) == direction))
    return float(c[bad[0]]) if bad.size else None


def measure(*, quick: bool = False) -> dict:
    """The numbers of the study: per dtype the predicted and measured thresholds, and the peers.

    ``numbers["panels"]`` holds the arrays the figure draws (not stored in ``NAME.json``).
    """
    device = stabkit.probe()
    points = 2001 if quick else 8001
    c_plot = np.concatenate([-np.geomspace(C_MAX, 1e-3, points // 2), [0.0]])
    c_plot = np.concatenate([c_plot, -c_plot[::-1][1:]])
    numbers: dict = {"n": N, "c_range": [-C_MAX, C_MAX], "dtypes": {}}
    panels = {}
    for name in DTYPES:
        lim = stabkit.limits(name)
        keeps = device.dtypes[name].keeps_subnormal_results if name in device.dtypes else True
        expected_p = float(np.asarray(1 / N).astype(_np_dtype(name)))
        expected_logp = float(np.asarray(-math.log(N)).astype(_np_dtype(name)))
        predicted = {
            "sum_overflow": math.log(lim.max / N),
            "exp_overflow": lim.exp_max,
            "exp_underflow": lim.exp_min if keeps else lim.exp_min_normal,
        }
        # Measured: the first failing c going outwards, on the dtype's grid near the predictions.
        up = _dtype_grid(
            predicted["sum_overflow"] - 3, predicted["exp_overflow"] + 0.5, name, 40001
        )
        down = _dtype_grid(predicted["exp_underflow"] - 0.5, -1e-3, name, 40001)
        near = np.concatenate([down, up])
        p_near = _evaluate(near, name)["naive_softmax"]
        # "right" allows the naive formula its own rounding (4 eps); anything else is a failure.
        exact = np.abs(p_near - expected_p) <= 4 * lim.eps * expected_p
        nan = np.isnan(p_near)
        measured = {
            "sum_overflow": _first_failure(near, exact, 1),
            "exp_overflow": _first_failure(near, ~nan, 1),
            "exp_underflow": _first_failure(near, ~nan, -1),
            "first_inexact_below_0": _first_failure(near, exact, -1),
        }
        first_value = {
            k: float(p_near[near == v][0]) if v is not None else None for k, v in measured.items()
        }
        beyond = near > predicted["sum_overflow"] + 1e-3
        always_wrong_beyond = bool(np.all(~exact[beyond] & ((p_near[beyond] == 0) | nan[beyond])))
        # The whole range (clipped to the dtype's max), ends included, for stable and the figure.
        c_dtype = np.clip(c_plot, -lim.max, lim.max)
        extremes = np.array([-lim.max, lim.max, -lim.tiny, lim.tiny, lim.smallest_subnormal])
        c_all = np.concatenate([c_dtype, extremes])
        res = _evaluate(c_all, name)
        stable_exact = bool(  # the stable version must be bit-exact
            np.all(res["softmax"] == expected_p)
            and np.all(np.abs(res["log_softmax"] - expected_logp) <= 4 * lim.eps * math.log(N))
        )
        lse_ref = c_all.astype(_np_dtype(name)).astype(np.float64) + math.log(N)
        lse_err = np.abs(res["logsumexp"] - lse_ref)
        lse_ok = bool(np.all(lse_err <= 4 * lim.eps * np.maximum(np.abs(lse_ref), 1)))
        naive_nan = np.isnan(res["naive_softmax"][: c_dtype.size])
        naive_wrong = ~naive_nan & (res["naive_softmax"][: c_dtype.size] != expected_p)

        tol = {
            k: 2 * float(np.spacing(np.asarray(abs(v)).astype(_np_dtype(name)))) + 1e-4
            for k, v in predicted.items()
        }
        # XLA's exp is not correctly rounded next to the underflow threshold: measured, it still
        # returns a normal number up to ~0.004 below log(tiny) in float32/float64.
        tol["exp_underflow"] += 0.01
        # XLA computes e / sum as e * (1/sum): the reciprocal fails before the textbook division
        # would, once it flushes (1/sum < tiny) or overflows (1/sum > max).
        reciprocal = {
            "reciprocal_flushes_above": -math.log(N) - math.log(lim.tiny) if not keeps else None,
            "reciprocal_overflows_below": -math.log(N) - math.log(lim.max),
        }
        numbers["dtypes"][name] = {
            "predicted": predicted,
            "reciprocal_predictions": reciprocal,
            "measured": measured,
            "naive_value_at_first_failure": first_value,
            "tolerance": tol,
            "subnormal_results_kept": keeps,
            "stable_softmax_exact_everywhere": stable_exact,
            "stable_logsumexp_max_abs_err": float(np.nanmax(lse_err)),
            "naive_nan_fraction": float(naive_nan.mean()),
            "naive_wrong_fraction": float(naive_wrong.mean()),
            "naive_wrong_everywhere_beyond_sum_overflow": always_wrong_beyond,
            "stable_logsumexp_within_4_eps": lse_ok,
        }
        panels[name] = {
            "c": c_dtype,
            "naive": res["naive_softmax"][: c_dtype.size],
            "stable": res["softmax"][: c_dtype.size],
            "predicted": predicted,
            "expected": expected_p,
            "eps": lim.eps,
            "reciprocal": reciprocal,
        }
    numbers["peers"] = _peers()
    numbers["quick"] = quick
    numbers["panels"] = panels
    return numbers


def claims(numbers: dict) -> list[Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    n = numbers["n"]
    result: list[Claim] = []
    for name, d in numbers["dtypes"].items():
        predicted, measured, tol = d["predicted"], d["measured"], d["tolerance"]
        first_value, reciprocal = d["naive_value_at_first_failure"], d["reciprocal_predictions"]
        keeps = d["subnormal_results_kept"]
        always_wrong_beyond = d["naive_wrong_everywhere_beyond_sum_overflow"]
        stable_exact = d["stable_softmax_exact_everywhere"]
        lse_ok = d["stable_logsumexp_within_4_eps"]
        # float(): NAME.json stores inf and NaN as strings
        fmt = lambda v: "none" if v is None else f"{float(v):.6g}"
        sum_ok = (
            measured["sum_overflow"] is not None
            and measured["sum_overflow"] <= predicted["sum_overflow"] + tol["sum_overflow"]
            and always_wrong_beyond
        )
        nan_up_ok = measured["exp_overflow"] is not None and (
            abs(measured["exp_overflow"] - predicted["exp_overflow"]) <= tol["exp_overflow"]
        )
        nan_down_ok = measured["exp_underflow"] is not None and (
            abs(measured["exp_underflow"] - predicted["exp_underflow"]) <= tol["exp_underflow"]
        )
        result += [
            Claim(
                f"{name}: naive softmax of {n} equal c is 0 or NaN once the sum of e^c overflows",
                f"wrong for every c > log(max/{n}) = {predicted['sum_overflow']:.6g}",
                f"wrong from c = {fmt(measured['sum_overflow'])} "
                f"(value {fmt(first_value['sum_overflow'])})"
                + (
                    f", earlier than the sum: XLA multiplies by 1/sum, which flushes to 0 above "
                    f"log(1/({n} tiny)) = {reciprocal['reciprocal_flushes_above']:.6g}"
                    if not keeps
                    else ""
                )
                + f"; 0 or NaN everywhere beyond: {always_wrong_beyond}",
                sum_ok,
            ),
            Claim(
                f"{name}: naive softmax is NaN (inf/inf) once e^c overflows",
                f"c > log(max) = {predicted['exp_overflow']:.6g}",
                f"first NaN at c = {fmt(measured['exp_overflow'])}",
                nan_up_ok,
            ),
            Claim(
                f"{name}: naive softmax is NaN (0/0) once e^c underflows to 0",
                f"c < {predicted['exp_underflow']:.6g} (subnormals {'kept' if keeps else 'flushed'}"
                f" on this device; within {tol['exp_underflow']:.3g})",
                f"first NaN at c = {fmt(measured['exp_underflow'])}; first wrong value at "
                f"c = {fmt(measured['first_inexact_below_0'])} "
                f"(value {fmt(first_value['first_inexact_below_0'])}; 1/sum overflows below "
                f"log(1/({n} max)) = {reciprocal['reciprocal_overflows_below']:.6g})",
                nan_down_ok,
            ),
            Claim(
                f"{name}: the max shift gives exactly 1/{n}, -log {n} and c + log {n}",
                "for every c in [-1e5, 1e5] within the dtype's range; at +-max, tiny, subnormal",
                f"softmax exact: {stable_exact}; logsumexp within 4 eps: {lse_ok}",
                stable_exact and lse_ok,
            ),
        ]
    for what, p in numbers["peers"].items():
        result.append(
            Claim(
                f"stabkit is right where peers fail: {what}",
                "-inf entries have probability 0 and gradient 0; no NaN",
                f"stabkit {'correct' if p['stabkit_correct'] else 'WRONG'}; "
                f"jax.nn/optax {'correct' if p['peer_correct'] else 'wrong (NaN)'}",
                p["stabkit_correct"],
            )
        )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> pathlib.Path:
    """Draw ``out_dir/NAME.png`` from ``numbers["panels"]`` (from :func:`measure`)."""
    path = pathlib.Path(out_dir) / f"{NAME}.png"
    _figure(path, numbers["panels"], numbers["quick"])
    return path


def run(out: pathlib.Path, *, quick: bool = False) -> list[Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    save_json(out / f"{NAME}.json", {k: v for k, v in numbers.items() if k != "panels"})
    return result


# Outcome categories of a softmax value against the exact 1/n, and their colours.
OUTCOMES = ("exact 1/n", "within 4 eps", "0 (wrong)", "other wrong value", "inf", "NaN")
COLOURS = ("#2ca02c", "#98df8a", "#ff7f0e", "#bcbd22", "#000000", "#d62728")


def _outcome(p: np.ndarray, expected: float, eps: float) -> np.ndarray:
    code = np.full(p.shape, 3)
    code[np.abs(p - expected) <= 4 * eps * expected] = 1
    code[p == expected] = 0
    code[p == 0] = 2
    code[np.isinf(p)] = 4
    code[np.isnan(p)] = 5
    return code


def _strips(ax, c, rows, expected, eps, labels):
    """Draw one horizontal strip per row of values, coloured by outcome along c."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    codes = np.stack([_outcome(r, expected, eps) for r in rows])
    edges = np.concatenate([[c[0]], (c[1:] + c[:-1]) / 2, [c[-1]]])
    cmap = ListedColormap(COLOURS)
    ax.pcolormesh(
        edges,
        np.arange(len(rows) + 1),
        codes,
        cmap=cmap,
        norm=BoundaryNorm(np.arange(len(COLOURS) + 1) - 0.5, len(COLOURS)),
    )
    ax.set_yticks(np.arange(len(rows)) + 0.5, labels, fontsize=8)
    ax.set_ylim(len(rows), 0)


def _figure(path: pathlib.Path, panels: dict, quick: bool) -> None:
    fig, axes = plt.subplots(
        len(panels),
        3,
        figsize=(15, 1.6 * len(panels) + 1.6),
        gridspec_kw={"width_ratios": (2.2, 1, 1)},
    )
    marks = (
        ("sum_overflow", "--", "log(max/n)"),
        ("exp_overflow", "-", "log(max)"),
        ("exp_underflow", ":", "e^c -> 0"),
    )
    for row, (name, d) in zip(axes, panels.items(), strict=True):
        c, pred = d["c"], d["predicted"]
        labels = ["naive", "stabkit"]
        rows = [d["naive"], d["stable"]]
        _strips(row[0], c, rows, d["expected"], d["eps"], labels)
        row[0].set_xscale("symlog", linthresh=1.0)
        row[0].set_ylabel(name, fontsize=10, fontweight="bold")
        # zooms around the upper and the lower thresholds, on a linear axis
        hi_lo = min(pred["sum_overflow"], d["reciprocal"]["reciprocal_flushes_above"] or np.inf) - 1
        windows = (
            (hi_lo, pred["exp_overflow"] + 1),
            (
                pred["exp_underflow"] - 1.5,
                max(pred["exp_underflow"] + 6, d["reciprocal"]["reciprocal_overflows_below"] + 1),
            ),
        )
        for ax, (lo, hi) in zip(row[1:], windows, strict=True):
            cz = np.unique(np.linspace(lo, hi, 1500 if quick else 3000).astype(np.float64))
            res = _evaluate(cz, name)
            _strips(ax, cz, [res["naive_softmax"], res["softmax"]], d["expected"], d["eps"], labels)
        limits = [(c[0], c[-1]), *windows]
        recips = [v for v in d["reciprocal"].values() if v is not None]
        for ax, (lo, hi) in zip(row, limits, strict=True):
            for key, style, _ in marks:
                ax.axvline(pred[key], color="white", lw=2.2, ls="-")
                ax.axvline(pred[key], color="#1f3b73", lw=1.2, ls=style)
            for v in recips:
                ax.axvline(v, color="#7f7f7f", lw=1.2, ls="-.")
            ax.set_xlim(lo, hi)
    axes[0, 0].set_title(f"n = {N} equal inputs c, c over [-1e5, 1e5] (symlog)", fontsize=10)
    axes[0, 1].set_title("zoom: overflow side", fontsize=10)
    axes[0, 2].set_title("zoom: underflow side", fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("c")
    from matplotlib.patches import Patch

    handles = [Patch(color=col, label=lab) for col, lab in zip(COLOURS, OUTCOMES, strict=True)]
    handles += [
        plt.Line2D([], [], color="#1f3b73", ls=st, label=f"predicted: {lab}")
        for _, st, lab in marks
    ]
    handles.append(plt.Line2D([], [], color="#7f7f7f", ls="-.", label="1/sum flushes or overflows"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8.5, frameon=False)
    fig.suptitle(
        "softmax(c, ..., c): the textbook exp(x)/sum(exp(x)) returns 0, inf or NaN well inside "
        "each dtype's range; the max-shifted stabkit.softmax returns exactly 1/n everywhere",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _peers() -> dict:
    """Whether the peers and stabkit are right on the inputs of issue 2."""
    ninf = -jnp.inf
    empty = jnp.array([ninf, ninf, ninf])
    logits = jnp.array([2.0, ninf, 0.0])
    x16 = jnp.linspace(-30, 5, 50_000).astype(jnp.float16)

    def finite(a):
        return bool(jnp.all(jnp.isfinite(jnp.asarray(a, jnp.float32))))

    rows = {
        "grad logsumexp, all -inf row": (
            jax.grad(jax.nn.logsumexp)(empty),
            jax.grad(stabkit.logsumexp)(empty),
            lambda a: bool(jnp.all(a == 0)),
        ),
        "log_softmax, all -inf row": (
            jax.nn.log_softmax(empty),
            stabkit.log_softmax(empty),
            lambda a: bool(jnp.all(a == ninf)),
        ),
        "cross-entropy, non-target logit -inf": (
            optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array(0)),
            stabkit.softmax_cross_entropy(logits, jnp.array(0)),
            lambda a: abs(float(a) - math.log1p(math.exp(-2.0))) < 1e-6,
        ),
        "grad cross-entropy, non-target logit -inf": (
            jax.grad(optax.softmax_cross_entropy_with_integer_labels)(logits, jnp.array(0)),
            jax.grad(stabkit.softmax_cross_entropy)(logits, jnp.array(0)),
            finite,
        ),
        "grad sum log_softmax, 50,000 float16 in [-30, 5]": (
            jax.grad(lambda x: jax.nn.log_softmax(x).sum().astype(jnp.float32))(x16),
            jax.grad(lambda x: stabkit.log_softmax(x).sum().astype(jnp.float32))(x16),
            finite,
        ),
    }
    peers = {}
    for what, (peer, ours, check) in rows.items():
        peers[what] = {"peer_correct": check(peer), "stabkit_correct": check(ours)}
    return peers


if __name__ == "__main__":
    run_alone(run, TITLE)
