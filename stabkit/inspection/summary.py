"""The text forms of a :class:`~stabkit.inspection.report.Report`: ``summary()`` and ``table()``."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from stabkit.inspection.array_stats import CLASSES


def _short_source(source: str) -> str:
    """``dir/file.py:LINE`` (the last two path components)."""
    if not source:
        return "?"
    parts = source.split(os.sep)
    return os.sep.join(parts[-2:])


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def summary(report: Any) -> str:
    """Each origin with its source line; the scopes closest to overflow and to underflow."""
    prog = report.program
    directions = report._directions()
    n_back = sum(d == "backward" for d, n in zip(directions, prog.nodes, strict=True) if n.recorded)
    n_rec = sum(n.recorded for n in prog.nodes)
    origins = report.origins
    lines = [
        f"stabkit.inspect of {report._meta.get('fn', 'fn')}: {n_rec} equations with floating "
        f"outputs ({n_rec - n_back} forward, {n_back} backward), {len(origins)} origin"
        f"{'s' if len(origins) != 1 else ''}"
    ]
    if report.batch_shape:
        lines.append(f"batched over {report.batch_shape}: origins of every example")
    if origins:
        lines.append("")
        lines.append("origins, in program order:")
    for i, o in enumerate(origins, 1):
        where = f" [{o.scope}]" if o.scope else ""
        it = f", iteration {o.iteration}" if o.iteration is not None else ""
        if o.iterations > 1:
            it += f" (and {o.iterations - 1} more)"
        ex = f", example {o.example}" if o.example is not None else ""
        reach = "reaches the output" if o.reaches_output else "discarded (never reaches the output)"
        lines.append(
            f"  {i}. {o.kind:9s} {o.primitive:<14s} {o.direction:8s} {_short_source(o.source)}"
            f"{where}"
        )
        lines.append(f"       {o.dtype}{list(o.shape)} entry {o.index}{it}{ex}; {reach}")
        if o.line:
            lines.append(f"       > {o.line}")
    if not report.batch_shape:
        lines.extend(_closest(report))
    if not origins:
        lines.append("no inf, NaN or underflow originates anywhere in this evaluation")
    return "\n".join(lines)


def _closest(report: Any, n: int = 3) -> list[str]:
    ds = report.scope_stats()
    if not ds.sizes.get("scope_direction"):
        return []
    out = []
    for what, var in (("overflow", "headroom_max"), ("underflow", "headroom_normal")):
        h = np.asarray(ds[var].values, float)
        order = [i for i in np.argsort(h, kind="stable") if np.isfinite(h[i])][:n]
        if not order:
            continue
        out.append("")
        out.append(
            f"scopes closest to {what} (bits of headroom to the "
            f"{'largest finite' if what == 'overflow' else 'smallest normal'} number):"
        )
        for i in order:
            scope = str(ds.scope.values[i]) or "(no scope)"
            big = _num(float(ds.max_abs.values[i]))
            small = _num(float(ds.min_abs.values[i]))
            out.append(
                f"  {scope:<28s} {ds.direction.values[i]:8s} {h[i]:7.1f} bits   "
                f"max|x| {big}, min|x| {small}, rms {_num(float(ds.rms.values[i]))}"
            )
    return out


def table(report: Any, max_rows: int = 60) -> str:
    """The per-value statistics as aligned text."""
    ds = report.stats
    n = ds.sizes.get("value", 0)
    idx = list(range(n))
    if n > max_rows:
        h = np.minimum(ds.headroom_max.values, ds.headroom_normal.values)
        idx = sorted(np.argsort(h, kind="stable")[:max_rows].tolist())
    head = (
        f"{'node':>5} {'primitive':<18} {'dir':<4} {'scope':<20} {'dtype':<9} {'shape':<14}"
        + "".join(f"{c:>10}" for c in CLASSES)
        + f"{'rms':>10} {'max|x|':>10} {'min|x|':>10} {'hr_max':>7} {'hr_nrm':>7}  source"
    )
    rows = [head]
    for i in idx:
        rows.append(
            f"{int(ds.node.values[i]):>5} {str(ds.primitive.values[i])[:18]:<18} "
            f"{str(ds.direction.values[i])[:4]:<4} {str(ds.scope.values[i])[-20:]:<20} "
            f"{str(ds.dtype.values[i])[:9]:<9} {str(ds.shape.values[i])[:14]:<14}"
            + "".join(f"{int(ds[c].values[i]):>10}" for c in CLASSES)
            + f"{_num(float(ds.rms.values[i])):>10} {_num(float(ds.max_abs.values[i])):>10} "
            f"{_num(float(ds.min_abs.values[i])):>10} {float(ds.headroom_max.values[i]):>7.1f} "
            f"{float(ds.headroom_normal.values[i]):>7.1f}  "
            f"{_short_source(str(ds.source.values[i]))}"
        )
    if n > max_rows:
        rows.append(f"({n - max_rows} more rows with more headroom: report.stats has them all)")
    return "\n".join(rows)
