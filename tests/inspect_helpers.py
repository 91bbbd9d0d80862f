"""Helpers of the stabkit.inspect model tests: marked source lines, stats rows, origin digests."""

import numpy as np


def marker_lines(path: str) -> dict[str, int]:
    """Line numbers of the lines of ``path`` that carry a ``# <- name`` marker, by name."""
    lines = {}
    with open(path) as f:
        for n, text in enumerate(f, start=1):
            if "# <- " in text and not text.lstrip().startswith("#"):
                lines[text.rsplit("# <- ", 1)[1].strip()] = n
    return lines


def brief(origins) -> list[tuple]:
    """What must agree between two inspections of the same failure."""
    return [(o.kind, o.primitive, o.source, o.scope, o.direction, o.index) for o in origins]


def rows(report, **where):
    """The rows of ``report.stats`` whose coordinates equal ``where`` (inputs excluded)."""
    ds = report.stats
    mask = ds.node.values >= 0
    for key, value in where.items():
        mask &= ds[key].values == value
    return ds.isel(value=np.flatnonzero(mask))
