"""Study: after how many layers does W = scale * I overflow or underflow, in each dtype, here?

The founding note's deep linear network with ``W = 1.5 I`` multiplies the signal by 1.5 per layer
until it "rounds to inf, and further arithmetic turns it into NaN"; with ``W = 0.5 I`` it shrinks
until it "rounds to 0". This study runs both chains on the default device under ``jit``
(``stabkit.chain``), finds the step at which each leaves the range, and puts it beside the exact
host simulation (``stabkit.overflow_depth`` / ``underflow_depth``, flushing as the device was
measured to flush by ``stabkit.probe``) and the closed form ``log(max / x0) / log(scale)``.
"""

from __future__ import annotations

import contextlib
import math
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import ml_dtypes

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "precision"
TITLE = "Overflow and underflow of x0 * scale**k (W = 1.5 I and 0.5 I) in each dtype"
ORDER = 20

GROW, SHRINK = 1.5, 0.5  # the note's two weight matrices, W = scale * I
PLOTTED = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")
EXTRA = 3  # steps run past the first non-finite / zero value
CASES = ("overflow", "underflow", "underflow_ieee", "underflow_flushed")  # the depths simulated
DEVICE = (  # what the device's chains give
    "device_overflow_step",
    "device_overflow_value",
    "device_underflow_step",
    "device_zero_census",
)


def _first(xs: np.ndarray, overflow: bool) -> int | None:
    """First index where the device trajectory is non-finite (overflow) or exactly 0."""
    v = xs.astype(np.float64)
    hit = ~np.isfinite(v) if overflow else v == 0
    return int(np.argmax(hit)) if hit.any() else None


def _measure(name: str) -> dict:
    """Device trajectories and simulated / predicted depths of one dtype."""
    over = sk.overflow_depth(GROW, name)
    under = sk.underflow_depth(SHRINK, name)  # flush follows the probe of this device
    ieee = sk.underflow_depth(SHRINK, name, flush=False)
    ftz = sk.underflow_depth(SHRINK, name, flush=True)
    up = sk.chain(GROW, name, steps=over.step + EXTRA)
    down = sk.chain(SHRINK, name, steps=max(under.step, ieee.step) + EXTRA)
    return {
        "dtype": name,
        "overflow": over,
        "underflow": under,
        "underflow_ieee": ieee,
        "underflow_flushed": ftz,
        "up": up,
        "down": down,
        "device_overflow_step": _first(up, True),
        "device_overflow_value": float(up[over.step].astype(np.float64)),
        "device_underflow_step": _first(down, False),
        "device_zero_census": int(sk.census(jnp.asarray(down[under.step : under.step + 1])).zero),
    }


def _w_identity_network(name: str, layers: int) -> np.ndarray:
    """Activations of the note's network a_l = W a_{l-1}, W = 1.5 I (2x2), a_0 = (1, 1)."""
    dtype = jnp.dtype(getattr(ml_dtypes, name, name))
    with jax.enable_x64(True) if name == "float64" else contextlib.nullcontext():
        w = jnp.asarray(np.eye(2) * GROW, dtype)

        @jax.jit
        def run(a):
            def layer(a, _):
                a = w @ a
                return a, a

            return jax.lax.scan(layer, a, None, length=layers)[1]

        return np.asarray(run(jnp.ones(2, dtype))).astype(np.float64)


def _log10(v) -> np.ndarray:
    """log10|v| in float64 (a log-scale axis that float64's 1e-324..1e308 cannot break)."""
    return np.log10(np.abs(np.asarray(v, dtype=np.float64)))


def _edge(ax, k: int, top: bool, text: str, color: str, hollow: bool = False, **kw) -> None:
    """A marker on the top (inf/NaN) or bottom (zero) edge of the panel at step k."""
    y = 0.965 if top else 0.035
    tr = ax.get_xaxis_transform()
    ax.plot(
        [k],
        [y],
        marker=kw.pop("marker", "^" if top else "v"),
        ms=9,
        color=color,
        mfc="white" if hollow else color,
        transform=tr,
        clip_on=False,
        zorder=5,
    )
    left = kw.pop("left", True)
    ax.annotate(
        text,
        (k, y),
        xycoords=tr,
        xytext=(-7 if left else 7, -3 if top else 3),
        textcoords="offset points",
        ha="right" if left else "left",
        va="top" if top else "bottom",
        fontsize=8,
        color=color,
        **kw,
    )


def _panel(ax, m: dict, lim: sk.Limits, flushes: bool, platform: str) -> None:
    over, under, ieee = m["overflow"], m["underflow"], m["underflow_ieee"]
    up = m["up"].astype(np.float64)
    down = m["down"].astype(np.float64)
    k_up, k_down = np.arange(len(up)), np.arange(len(down))
    style = {"marker": "o", "ms": 3} if max(len(up), len(down)) < 80 else {}
    red, blue = "#c0392b", "#1f5fa8"
    lo, hi = math.log10(lim.smallest_subnormal), math.log10(lim.max)

    # The representable range: normal numbers white, subnormals shaded.
    ax.axhspan(lo, math.log10(lim.tiny), color="0.92", zorder=0)
    for y, label, above in (
        (hi, "max", True),
        (math.log10(lim.tiny), "tiny (smallest normal)", True),
        (lo, "smallest subnormal", False),
    ):
        ax.axhline(y, color="0.55", lw=0.8, ls=":", zorder=1)
        ax.annotate(
            label,
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(-3, 2 if above else -2),
            textcoords="offset points",
            ha="right",
            va="bottom" if above else "top",
            fontsize=7,
            color="0.4",
        )

    # x1.5 on the device: the finite values, then inf (or NaN) at the top edge.
    fin = np.isfinite(up)
    ax.plot(
        k_up[fin],
        _log10(up[fin]),
        color=red,
        lw=1.7,
        label=f"W = {GROW} I (device)",
        zorder=3,
        **style,
    )
    word = "inf" if math.isinf(over.value) else "NaN"
    _edge(
        ax, over.step, True, f"{word} at k={over.step}", red, marker="^" if word == "inf" else "X"
    )

    # x0.5 on the device: the non-zero values, then exactly 0 at the bottom edge.
    nz = down != 0
    ax.plot(
        k_down[nz],
        _log10(down[nz]),
        color=blue,
        lw=1.7,
        label=f"W = {SHRINK} I (device)",
        zorder=3,
        **style,
    )
    _edge(ax, under.step, False, f"0 at k={under.step}", blue)
    if flushes:
        # What IEEE subnormals would have kept: 0.5**k is exact down to the smallest subnormal.
        ks = np.arange(under.step - 1, ieee.step)
        ax.plot(
            ks,
            ks * math.log10(SHRINK),
            color=blue,
            lw=1.3,
            ls=(0, (3, 2)),
            alpha=0.55,
            label="IEEE subnormals (host simulation)",
            zorder=2,
        )
        _edge(ax, ieee.step, False, f"IEEE: {ieee.step}", blue, hollow=True, left=False, alpha=0.8)

    pad = 0.14 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"1e{v:.0f}"))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6, integer=True))
    ax.set_xlim(-0.02 * len(up), 1.12 * max(len(up), len(down)))
    mode = f"subnormals flushed to 0 on {platform}" if flushes else f"subnormals kept on {platform}"
    ax.set_title(f"{lim.name}   ({mode})", fontsize=10)
    ax.text(
        0.03,
        0.95,
        f"×{GROW}: {word} at k = {over.step}\n       predicted {over.predicted}\n"
        f"×{SHRINK}: 0 at k = {under.step}\n       predicted {under.predicted}",
        transform=ax.transAxes,
        fontsize=8,
        va="top",
        family="monospace",
        bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": "0.8", "alpha": 0.92},
    )
    ax.grid(True, axis="x", color="0.92", lw=0.6)


def _figure(
    out: pathlib.Path, measured: dict, flushes: dict, platform: str, device: str
) -> pathlib.Path:
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.2), constrained_layout=True)
    for ax, name in zip(axes.flat, PLOTTED, strict=True):
        _panel(ax, measured[name], sk.limits(name), flushes[name], platform)
    for ax in axes[:, 0]:
        ax.set_ylabel("|x_k|  (log scale)")
    for ax in axes[-1]:
        ax.set_xlabel("layer k  (x_k = x_{k-1} · scale, rounded, on the device)")
    handles, labels = axes.flat[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, fontsize=9)
    fig.suptitle(
        f"W = {GROW} I overflows to inf (▲; ✖ NaN where the format has no inf), W = {SHRINK} I "
        f"underflows to exactly 0 (▼) — measured on {device} under jit\n"
        "predicted: closed form, first k with |x0·scale^k| > max, or < smallest subnormal "
        "(< tiny when flushed); the rounded chain can drift from it (bfloat16, e5m2)",
        fontsize=11,
    )
    path = out / f"{NAME}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measure(*, quick: bool) -> dict:
    """The numbers of the study: per dtype the simulated depths and the device's steps.

    ``numbers["trajectories"]`` holds the per-dtype records with the device chains, which the
    figure draws (not stored in ``NAME.json``); the rest is stored there and is all that
    :func:`claims` reads.
    """
    del quick  # the whole study takes seconds
    probe = sk.probe()
    measured = {name: _measure(name) for name in sk.SUPPORTED_DTYPES}
    network = {}
    for name in ("float16", "bfloat16", "float32", "float64"):
        step = measured[name]["overflow"].step
        acts = _w_identity_network(name, step + 1)
        network[name] = {
            "inf_layer": step,
            "inf_at_layer": bool(np.isinf(acts[step - 1]).all()),
            "nan_next_layer": bool(np.isnan(acts[step]).all()),
            "finite_before": bool(np.isfinite(acts[: step - 1]).all()),
        }
    return {
        "device": probe.device,
        "platform": probe.platform,
        "probe": {n: b._asdict() for n, b in probe.dtypes.items()},
        "flushes": {n: probe[n].flushes for n in probe.dtypes},
        "limits": {n: sk.limits(n)._asdict() for n in sk.SUPPORTED_DTYPES},
        "depths": {n: {k: m[k]._asdict() for k in CASES} for n, m in measured.items()},
        "device_steps": {n: {k: m[k] for k in DEVICE} for n, m in measured.items()},
        "w_identity_network": network,
        "trajectories": measured,
    }


def _rows(numbers: dict) -> list[dict]:
    """The closed form beside the exact chain and the device, one row per (dtype, case)."""
    rows = []
    for n, cases in numbers["depths"].items():
        dev = numbers["device_steps"][n]
        for key in CASES:
            d = cases[key]
            eps = numbers["limits"][n]["eps"]
            bound = 1 + d["predicted"] * math.log1p(eps / 2) / abs(math.log(abs(d["scale"])))
            rows.append(
                {
                    "dtype": n,
                    "case": key,
                    "scale": d["scale"],
                    "flush": d["flush"],
                    "simulated": d["step"],
                    "device": (
                        dev["device_overflow_step"]
                        if key == "overflow"
                        else dev["device_underflow_step"]
                        if key == "underflow"
                        else None
                    ),
                    "predicted": d["predicted"],
                    "k_star": d["k"],
                    "drift_bound": bound,
                    "within_bound": d["step"] is not None
                    and abs(d["step"] - d["predicted"]) <= bound,
                }
            )
    return rows


def _zero_ok(numbers: dict) -> dict[str, bool]:
    """Per dtype: the device's chain is exactly 0 (bit pattern zero) at the simulated step."""
    return {
        n: dev["device_underflow_step"] == numbers["depths"][n]["underflow"]["step"]
        and dev["device_zero_census"] == 1
        for n, dev in numbers["device_steps"].items()
    }


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    limits, dev, depths = numbers["limits"], numbers["device_steps"], numbers["depths"]
    dtypes = list(dev)
    with_inf = [n for n in dtypes if limits[n]["has_inf"]]
    without_inf = [n for n in dtypes if not limits[n]["has_inf"]]

    def fmt_steps(names, key):
        return ", ".join(f"{n.replace('float8_', 'f8_')} {dev[n][key]}" for n in names)

    result = []
    # 1. Overflow rounds to inf (or NaN where the format has no inf).
    # float(): NAME.json stores inf and NaN as strings
    vals = {n: float(dev[n]["device_overflow_value"]) for n in dtypes}
    result.append(
        sk.Claim(
            claim=f"Overflow: x·{GROW}^k rounds to +inf on the device (formats with inf)",
            theory="first k with 1.5^k > max gives +inf",
            measured=fmt_steps(with_inf, "device_overflow_step")
            + f"; values: {sorted({str(vals[n]) for n in with_inf})}",
            passed=all(vals[n] == math.inf for n in with_inf),
        )
    )
    result.append(
        sk.Claim(
            claim="Formats without inf (e4m3fn, fnuz) overflow to NaN, not inf",
            theory="no inf encoding: overflow gives the NaN pattern",
            measured=fmt_steps(without_inf, "device_overflow_step")
            + f"; values: {sorted({str(vals[n]) for n in without_inf})}",
            passed=all(math.isnan(vals[n]) for n in without_inf),
        )
    )
    # 2. Further arithmetic turns inf into NaN.
    probe = numbers["probe"]
    arith = {n: (probe[n]["inf_minus_inf"], probe[n]["zero_times_inf"]) for n in with_inf}
    result.append(
        sk.Claim(
            claim="Further arithmetic on inf gives NaN: inf - inf and 0 * inf (every format "
            "with inf)",
            theory="IEEE 754: invalid operations return NaN",
            measured=f"{sum(a == ('nan', 'nan') for a in arith.values())}/{len(arith)} formats "
            f"give NaN for both on {numbers['device']}",
            passed=all(a == ("nan", "nan") for a in arith.values()),
        )
    )
    network = numbers["w_identity_network"]
    result.append(
        sk.Claim(
            claim="The network W = 1.5 I (2x2): activations are inf at the overflow layer and "
            "NaN one layer later",
            theory="next layer computes 1.5·inf + 0·inf = inf + NaN = NaN",
            measured=", ".join(
                f"{n}: inf at {v['inf_layer']}, NaN at {v['inf_layer'] + 1}"
                for n, v in network.items()
            ),
            passed=all(
                v["inf_at_layer"] and v["nan_next_layer"] and v["finite_before"]
                for v in network.values()
            ),
        )
    )
    # 3. Underflow rounds to exactly 0.
    zero_ok = _zero_ok(numbers)
    bad = [n for n, ok in zero_ok.items() if not ok]
    result.append(
        sk.Claim(
            claim=f"Underflow: x·{SHRINK}^k becomes exactly 0 (bit pattern zero) on the device, "
            "at the simulated step",
            theory="below half the smallest subnormal (or below tiny when flushing) rounds to 0",
            measured=f"plotted dtypes: {fmt_steps(PLOTTED, 'device_underflow_step')}"
            + (f"; deviates: {', '.join(bad)} (see JSON)" if bad else "; every format agrees"),
            passed=all(zero_ok[n] for n in PLOTTED),
        )
    )
    # 4. Closed form against the exact chain.
    rows = _rows(numbers)
    over_rows = [r for r in rows if r["case"] == "overflow"]
    exact = [r for r in over_rows if r["simulated"] == r["predicted"]]
    result.append(
        sk.Claim(
            claim=f"Closed form log(max)/log({GROW}) predicts the overflow step within the "
            "rounding-drift bound",
            theory="|k - k_pred| <= 1 + k·log(1+eps/2)/log(scale): each rounding moves x by at "
            "most eps/2",
            measured=f"exact in {len(exact)}/{len(over_rows)} formats; off: "
            + ", ".join(
                f"{r['dtype']} {r['simulated']} vs {r['predicted']}"
                for r in over_rows
                if r["simulated"] != r["predicted"]
            ),
            passed=all(r["within_bound"] for r in over_rows),
        )
    )
    under_rows = [r for r in rows if r["case"] != "overflow"]
    result.append(
        sk.Claim(
            claim=f"Closed form predicts the underflow step of x·{SHRINK}^k exactly (powers of "
            "two are exact), flushed and IEEE",
            theory="first k with 0.5^k < smallest_subnormal (IEEE) or < tiny (flushed)",
            measured=f"{sum(r['simulated'] == r['predicted'] for r in under_rows)}/"
            f"{len(under_rows)} cases equal",
            passed=all(r["simulated"] == r["predicted"] for r in under_rows),
        )
    )
    # 5. The public examples.
    f16 = depths["float16"]["overflow"]
    result.append(
        sk.Claim(
            claim="float16 with scale 1.5 overflows at k = 28",
            theory="log(65504)/log(1.5) = 27.35 -> 28",
            measured=f"simulated {f16['step']}, device {dev['float16']['device_overflow_step']}",
            passed=f16["step"] == 28 == dev["float16"]["device_overflow_step"],
        )
    )
    f32, f32_dev = depths["float32"], dev["float32"]
    result.append(
        sk.Claim(
            claim="float32 with scale 0.5 reaches 0 at k = 150 with subnormals, earlier when "
            "flushing",
            theory="2^-150 is half the smallest subnormal 2^-149; flushed: 2^-127 < tiny",
            measured=f"IEEE {f32['underflow_ieee']['step']}, flushed "
            f"{f32['underflow_flushed']['step']}"
            f", device ({'flushes' if numbers['flushes']['float32'] else 'keeps'}) "
            f"{f32_dev['device_underflow_step']}",
            passed=f32["underflow_ieee"]["step"] == 150
            and f32["underflow_flushed"]["step"] < 150
            and f32_dev["device_underflow_step"] == f32["underflow"]["step"],
        )
    )
    bf = depths["bfloat16"]["overflow"]
    result.append(
        sk.Claim(
            claim="After how many layers does W = 1.5 I overflow in bfloat16?",
            theory=f"closed form: {bf['predicted']} (k* = {bf['k']:.2f})",
            measured=f"{bf['step']} layers (exact simulation), device "
            f"{dev['bfloat16']['device_overflow_step']}",
            passed=bf["step"] == dev["bfloat16"]["device_overflow_step"]
            and abs(bf["step"] - bf["predicted"]) <= 1,
        )
    )
    return result


def figure(numbers: dict, out_dir: pathlib.Path) -> pathlib.Path:
    """Draw ``out_dir/NAME.png`` from ``numbers`` (from :func:`measure`, with its trajectories)."""
    return _figure(
        pathlib.Path(out_dir),
        numbers["trajectories"],
        numbers["flushes"],
        numbers["platform"],
        numbers["device"],
    )


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    stored = {k: v for k, v in numbers.items() if k != "trajectories"}
    sk.save_json(
        out / f"{NAME}.json",
        {
            **{k: stored.pop(k) for k in ("device", "platform", "probe", "limits")},
            "predicted_vs_measured": _rows(numbers),
            "device_underflow_agrees": _zero_ok(numbers),
            "w_identity_network": stored.pop("w_identity_network"),
            "claims": result,
            **stored,
        },
    )
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
