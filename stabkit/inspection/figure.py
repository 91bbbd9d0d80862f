"""The figure of a :class:`~stabkit.inspection.report.Report`.

Top: every equation's RMS and max |x| in program order (forward pass blue, backward orange), with
the largest finite and the smallest normal number of each dtype as dashed lines and each origin
marked (red: inf, magenta: NaN, grey: underflow) and labelled with its primitive and line. Bottom:
per scope, forward and backward, the bits of headroom left to overflow (up) and to underflow
(down).
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import numpy as np

from stabkit.inspection.report import _finfo

_COLORS = {"forward": "#1f77b4", "backward": "#ff7f0e"}
_KIND_COLORS = {"inf": "red", "nan": "magenta", "underflow": "#666666"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _checked_path(path: Any) -> pathlib.Path | None:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)).strip():
        raise TypeError(f"path must be a file path (str or os.PathLike), got {path!r}")
    p = pathlib.Path(path)
    if p.exists():
        raise FileExistsError(f"path={str(p)!r} exists; stabkit does not overwrite files")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"path={str(p)!r}: its directory {str(p.parent)!r} does not exist")
    return p


def plot(report: Any, path: Any = None):
    """Draw the report's figure; save it to ``path`` (a new file) when given."""
    target = _checked_path(path)
    ds = report.stats
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    n = ds.sizes.get("value", 0)
    x = np.arange(n)
    rms = np.asarray(ds.rms.values, float)
    big = np.asarray(ds.max_abs.values, float)
    direction = np.asarray(ds.direction.values).astype(str)
    for d, color in _COLORS.items():
        m = direction == d
        if m.any():
            ax.semilogy(
                x[m],
                np.where(rms[m] > 0, rms[m], np.nan),
                "o",
                ms=3,
                color=color,
                label=f"RMS ({d})",
            )
            ax.semilogy(
                x[m],
                np.where(big[m] > 0, big[m], np.nan),
                "^",
                ms=3,
                color=color,
                alpha=0.4,
                label=f"max |x| ({d})",
            )
    for dtype in sorted(set(np.asarray(ds.dtype.values).astype(str))):
        info = _finfo(dtype)
        ax.axhline(float(info.max), ls="--", lw=0.8, color="black")
        ax.axhline(float(info.smallest_normal), ls=":", lw=0.8, color="black")
        ax.text(0, float(info.max), f" {dtype} max", va="bottom", fontsize=7)
        ax.text(0, float(info.smallest_normal), f" {dtype} smallest normal", va="top", fontsize=7)
    row_of = {int(v): i for i, v in enumerate(ds.node.values) if int(v) >= 0}
    for o in report.origins:
        i = row_of.get(o.node)
        if i is None:
            continue
        c = _KIND_COLORS[o.kind]
        ax.axvline(i, color=c, lw=1, alpha=0.6)
        line = o.source.rsplit(":", 1)[-1] if o.source else "?"
        ax.annotate(
            f"{o.kind}: {o.primitive} (line {line})",
            (i, 0.98),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color=c,
        )
    ax.set_xlabel("floating value, in program order (inputs first)")
    ax.set_ylabel("|x|")
    ax.set_title(f"stabkit.inspect: {report._meta.get('fn', 'fn')} ({len(report.origins)} origins)")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    scopes = report.scope_stats()
    k = scopes.sizes.get("scope_direction", 0)
    labels = [
        f"{s or '(none)'} [{'bwd' if d == 'backward' else 'fwd'}]"
        for s, d in zip(scopes.scope.values, scopes.direction.values, strict=True)
    ]
    up = np.asarray(scopes.headroom_max.values, float)
    down = np.asarray(scopes.headroom_normal.values, float)
    colors = [_COLORS[str(d)] for d in scopes.direction.values]
    cap = 300.0
    bx.bar(np.arange(k), np.clip(np.where(np.isfinite(up), up, cap), -cap, cap), color=colors)
    bx.bar(
        np.arange(k),
        -np.clip(np.where(np.isfinite(down), down, cap), -cap, cap),
        color=colors,
        alpha=0.5,
    )
    bx.axhline(0, color="black", lw=0.8)
    bx.set_xticks(np.arange(k), labels, rotation=30, ha="right", fontsize=7)
    bx.set_ylabel("bits of headroom\n(up: to overflow, down: to underflow)")
    if k and math.isfinite(float(np.nanmin(np.abs(np.r_[up, down])))):
        bx.set_title("per scope: the least headroom of any value in it", fontsize=9)
    fig.tight_layout()
    if target is not None:
        fig.savefig(target, dpi=90)
    return fig
