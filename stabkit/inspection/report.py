"""What :func:`stabkit.inspect` found: the :class:`Report` and its :class:`Origin` entries.

A report holds the raw records of one compiled evaluation (JAX arrays) and the static table of
the program's equations; everything else is read off them on the host, on demand: the origins,
the per-equation and per-scope statistics as ``xarray`` Datasets, the text summary. A report is a
pytree of its arrays, so ``jax.vmap`` of a function that calls :func:`stabkit.inspect` returns a
report with a leading batch axis, and ``report[i]`` is example ``i``'s own report.
"""

from __future__ import annotations

import dataclasses
import linecache
import math
from typing import Any

import jax
import ml_dtypes
import numpy as np
import xarray as xr

from stabkit.inspection.array_stats import CLASSES, KINDS, rms
from stabkit.inspection.program import Program


@dataclasses.dataclass(frozen=True)
class Origin:
    """An equation whose output holds an inf, a NaN or an underflow while its inputs hold none.

    Attributes:
        kind: ``'inf'``, ``'nan'`` or ``'underflow'`` (an exact zero or a subnormal computed from
            normal inputs: ``exp(-200)`` in float32, ``1e-30 * 1e-30``, a cast to float16).
        primitive: the JAX primitive (``'exp'``, ``'log'``, ``'div'``, ``'dot_general'``...).
        source: ``'path/file.py:LINE'`` of the user's frame ('' where JAX kept none).
        scope: the ``jax.named_scope`` path (equinox modules name theirs), else the chain of
            ``Module.__call__`` classes (flax nnx), else ''.
        direction: ``'forward'``, or ``'backward'`` for equations that exist only because of
            differentiation.
        iteration: the loop indices (outermost first) of the first iteration where it happened,
            inside ``scan``/``while``; None outside loops. A scan's index is the position in its
            ``xs`` (a reverse scan runs them from the end).
        index: the first offending entry's index in that equation's output.
        reaches_output: whether such values reach the program's outputs (False where a
            ``select``/``where`` discarded them, as in ``jnp.where(x > 0, jnp.sqrt(x), 0)``).
        line: the text of the source line.
        shape, dtype: of the equation's offending output.
        iterations: in how many (innermost) loop iterations the equation was this origin.
        node: the equation's number in :attr:`Report.stats` (program order).
        example: under ``jax.vmap``, the first example it happened in; None otherwise.
    """

    kind: str
    primitive: str
    source: str
    scope: str
    direction: str
    iteration: tuple[int, ...] | None
    index: tuple[int, ...]
    reaches_output: bool
    line: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = ""
    iterations: int = 1
    node: int = -1
    example: int | None = None

    def __str__(self) -> str:
        where = f" in scope {self.scope!r}" if self.scope else ""
        it = f" at iteration {self.iteration}" if self.iteration is not None else ""
        reach = "reaches the output" if self.reaches_output else "discarded before the output"
        return (
            f"{self.kind} from {self.primitive} ({self.direction}){where}{it}, "
            f"{self.dtype}{list(self.shape)} entry {self.index}, {reach}: {self.source}"
        )


def _finfo(dtype: str) -> Any:
    return ml_dtypes.finfo(np.dtype(getattr(ml_dtypes, dtype, None) or dtype))


def _host(tree: Any) -> Any:
    try:
        return jax.tree.map(np.asarray, tree)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            "this report holds traced values (stabkit.inspect was called under jit or vmap): "
            "return it from the transformed function and read it outside"
        ) from None


def _source_line(source: str) -> str:
    path, _, line = source.rpartition(":")
    if not path or not line.isdigit():
        return ""
    return linecache.getline(path, int(line)).strip()


# What a report computes once and keeps in its meta dict (per example: not shared with report[i]).
_CACHED = ("origins", "stats")


@jax.tree_util.register_pytree_node_class
class Report:
    """The result of :func:`stabkit.inspect`.

    Attributes:
        outputs: what the function returned (the values of this very evaluation).
        origins: every :class:`Origin`, in program order.
        stats: an ``xarray.Dataset`` with one row per floating value an equation computed.
    """

    def __init__(self, program: Program, treedef: Any, arrays: tuple, meta: dict) -> None:
        self._program = program
        self._treedef = treedef
        self._arrays = arrays  # (outputs, input stats, records, per-iteration stats)
        self._meta = meta
        self._host_cache: Any = None

    # -- pytree --------------------------------------------------------------------------------
    def tree_flatten(self):
        meta = {k: v for k, v in self._meta.items() if k not in _CACHED}
        return (self._arrays,), (self._program, self._treedef, meta)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0], aux[2])

    # -- batching ------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading axes ``jax.vmap`` added (``()`` for a plain call)."""
        recs = self._arrays[2]
        if not recs:
            return ()
        first = next(iter(recs.values()))
        return tuple(first.origin.shape[:-2])

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("len() of a report that is not batched (no jax.vmap around inspect)")
        return self.batch_shape[0]

    def __getitem__(self, i: int) -> Report:
        """Example ``i`` of a batched report."""
        if not self.batch_shape:
            raise TypeError("this report is not batched: index it only under jax.vmap")
        n = self.batch_shape[0]
        if not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"example index {i!r} out of range for a batch of {n}")
        meta = {k: v for k, v in self._meta.items() if k not in _CACHED}
        return Report(
            self._program, self._treedef, jax.tree.map(lambda a: a[i], self._arrays), meta
        )

    # -- values --------------------------------------------------------------------------------
    @property
    def outputs(self) -> Any:
        return jax.tree.unflatten(self._treedef, self._arrays[0])

    @property
    def program(self) -> Program:
        return self._program

    def _host(self):
        if self._host_cache is None:
            self._host_cache = _host(self._arrays)
        return self._host_cache

    def _value_rows(self) -> dict[tuple[int, int], tuple[str, int]]:
        """(node id, output) -> (level, row) of its record."""
        if "value_rows" not in self._meta:
            self._meta["value_rows"] = {
                v: (level, row)
                for level, values in self._meta["level_values"].items()
                for row, v in enumerate(values)
            }
        return self._meta["value_rows"]

    def _value(self, records: dict, node_id: int, j: int):
        """The host record (LevelRecord of NumPy arrays, without the value axis) of a value."""
        where = self._value_rows().get((node_id, j))
        if where is None:
            return None
        level, row = where
        return jax.tree.map(lambda a: a[row], records[level])

    def _directions(self) -> list[str]:
        if "directions" not in self._meta:
            self._meta["directions"] = self._program.directions()
        return self._meta["directions"]

    def _bad_vars(self, kind: str, records: dict) -> dict[int, bool]:
        """var id -> holds a value that carries an origin of ``kind`` onward."""
        bad = {}
        for node in self._program.nodes:
            for j, var in enumerate(node.floating):
                rec = self._value(records, node.id, j)
                if rec is None:
                    continue
                c = rec.stats.counts
                if kind == "nan":
                    holds = c[4] > 0
                elif kind == "inf":
                    holds = c[3] + c[4] > 0
                else:
                    holds = c[1:].sum() > 0
                bad[var] = bool(holds)
        return bad

    @property
    def origins(self) -> tuple[Origin, ...]:
        if "origins" in self._meta:
            return self._meta["origins"]
        if self.batch_shape:
            found: dict[tuple, Origin] = {}
            for i in range(len(self)):
                for o in self[i].origins:
                    found.setdefault((o.node, o.kind), dataclasses.replace(o, example=i))
            result = tuple(sorted(found.values(), key=lambda o: (o.node, KINDS.index(o.kind))))
        else:
            result = self._origins()
        self._meta["origins"] = result
        return result

    def _origins(self) -> tuple[Origin, ...]:
        _, _, records, _ = self._host()
        directions = self._directions()
        out, bad = [], {}
        for node in self._program.nodes:
            for j in range(len(node.shapes)):
                rec = self._value(records, node.id, j)
                if rec is None:
                    continue
                for k, kind in enumerate(KINDS):
                    if not rec.origin[k]:
                        continue
                    if kind not in bad:
                        bad[kind] = self._bad_vars(kind, records)
                    shape = node.shapes[j]
                    flat = int(rec.index[k])
                    index = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
                    iteration = tuple(int(t) for t in rec.iteration[k]) if node.loops else None
                    out.append(
                        Origin(
                            kind=kind,
                            primitive=node.primitive,
                            source=node.source,
                            scope=node.scope,
                            direction=directions[node.id],
                            iteration=iteration,
                            index=index,
                            reaches_output=self._program.reaches(node, bad[kind]),
                            line=_source_line(node.source),
                            shape=shape,
                            dtype=node.dtypes[j],
                            iterations=int(rec.count[k]),
                            node=node.id,
                        )
                    )
        return tuple(out)

    # -- statistics ----------------------------------------------------------------------------
    def _rows(self):
        """One row per recorded floating value: (node or None, output j, ArrayStats arrays)."""
        _, inputs, records, _ = self._host()
        rows = []
        if inputs is not None:
            for k in range(inputs.counts.shape[0]):
                rows.append((None, k, jax.tree.map(lambda a, k=k: a[k], inputs)))
        for node in self._program.nodes:
            for j in range(len(node.shapes)):
                rec = self._value(records, node.id, j)
                if rec is not None:
                    rows.append((node, j, rec.stats))
        return rows

    @property
    def stats(self) -> xr.Dataset:
        """Per equation output: census, RMS, max/min |x| and headroom (in bits), as a Dataset.

        Dimension ``value`` (one row per floating output of an equation, after the function's
        inputs, which come first with primitive ``'input'``); coordinates ``node``, ``primitive``,
        ``scope``, ``direction``, ``source``, ``dtype``, ``shape``, ``loops``. Inside loops the
        numbers are over all iterations (:meth:`iterations` has them one by one).
        """
        if self.batch_shape:
            raise TypeError("a batched report has per-example stats: use report[i].stats")
        if "stats" not in self._meta:
            self._meta["stats"] = _dataset(self, self._rows())
        return self._meta["stats"]

    def scope_stats(self) -> xr.Dataset:
        """:attr:`stats` combined per (scope, direction): counts summed, RMS over every entry,
        max |x| the largest, headroom the least."""
        return _by_scope(self.stats)

    def iterations(self, node: int) -> xr.Dataset:
        """Per-iteration statistics of equation ``node`` inside scans (dimensions: one per scan
        around it, outermost first, then ``output``). Kept for scans whose trip counts multiply
        to at most the inspection's ``max_iterations``; a ``while`` keeps only the combined
        record."""
        _, _, _, iters = self._host()
        rows = self._value_rows()
        n = (
            self._program.nodes[node]
            if isinstance(node, (int, np.integer)) and 0 <= node < len(self._program.nodes)
            else None
        )
        where = [rows.get((node, j)) for j in range(len(n.shapes))] if n is not None else []
        if not where or any(w is None or w[0] not in iters for w in where):
            kept = sorted({i for (i, _), (lv, _) in rows.items() if lv in iters})
            raise ValueError(
                f"node={node!r} has no per-iteration statistics; the nodes inside scans that kept "
                f"them are {kept[:20]}{' ...' if len(kept) > 20 else ''}"
            )
        level = where[0][0]
        s = iters[level]
        axes = s.counts.shape[:-2]
        d = len(axes)
        picked = jax.tree.map(lambda a: np.stack([np.take(a, r, axis=d) for _, r in where], d), s)
        dims = [f"iteration{i}" if len(axes) > 1 else "iteration" for i in range(len(axes))]
        return _stats_vars(picked, n.dtypes, [*dims, "output"])

    # -- text ----------------------------------------------------------------------------------
    def table(self, max_rows: int = 60) -> str:
        """The per-equation statistics as a text table (the rows with the least headroom first
        when there are more than ``max_rows``)."""
        from stabkit.inspection.summary import table

        return table(self, max_rows)

    def summary(self) -> str:
        """A readable report: each origin with its source line, the scopes closest to overflow
        and to underflow."""
        from stabkit.inspection.summary import summary

        return summary(self)

    def plot(self, path: Any = None):
        """A figure: per-scope RMS and headroom, forward and backward, origins marked; saved to
        ``path`` if given. Returns the matplotlib Figure."""
        from stabkit.inspection.figure import plot

        return plot(self, path)

    def __repr__(self) -> str:
        if self.batch_shape:
            return f"<stabkit.inspect Report, batch of {self.batch_shape}>"
        try:
            n = len(self.origins)
        except TypeError:
            return "<stabkit.inspect Report of traced values>"
        return f"<stabkit.inspect Report: {len(self._program.nodes)} equations, {n} origins>"


def _stats_vars(s: Any, dtypes: Any, dims: list[str]) -> xr.Dataset:
    """Dataset variables of stacked ArrayStats ``s`` whose last dimension has dtypes ``dtypes``."""
    counts = np.asarray(s.counts, np.int64)
    data = {name: (dims, counts[..., i]) for i, name in enumerate(CLASSES)}
    size = counts.sum(-1)
    data["size"] = (dims, size)
    maxabs = np.asarray(s.maxabs, np.float64)
    minabs = np.asarray(s.minabs, np.float64)
    data["rms"] = (dims, rms(s))
    data["max_abs"] = (dims, maxabs)
    data["min_abs"] = (dims, minabs)
    top = np.array([_finfo(d).max for d in dtypes], np.float64)
    tiny = np.array([_finfo(d).smallest_normal for d in dtypes], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        data["headroom_max"] = (dims, np.log2(top) - np.log2(maxabs))
        data["headroom_normal"] = (dims, np.log2(minabs) - np.log2(tiny))
    data["underflowed"] = (dims, np.asarray(s.underflow, np.int64))
    return xr.Dataset(data)


def _dataset(report: Report, rows: list) -> xr.Dataset:
    if not rows:
        return xr.Dataset()
    directions = report._directions()
    stacked = jax.tree.map(lambda *a: np.stack(a), *[r[2] for r in rows])
    dtypes, coords = (
        [],
        {
            k: []
            for k in (
                "node",
                "primitive",
                "scope",
                "direction",
                "source",
                "dtype",
                "shape",
                "loops",
                "output",
            )
        },
    )
    for node, j, _ in rows:
        if node is None:
            name = report._meta["input_names"][j]
            info = report._meta["input_avals"][j]
            vals = (-1, "input", name, "forward", "", info[1], str(info[0]), "", j)
        else:
            vals = (
                node.id,
                node.primitive,
                node.scope,
                directions[node.id],
                node.source,
                node.dtypes[j],
                str(list(node.shapes[j])),
                "/".join(node.loops),
                j,
            )
        for k, v in zip(coords, vals, strict=True):
            coords[k].append(v)
        dtypes.append(vals[5])
    ds = _stats_vars(stacked, dtypes, ["value"])
    return ds.assign_coords({k: ("value", v) for k, v in coords.items()})


def _by_scope(ds: xr.Dataset) -> xr.Dataset:
    rows: dict[tuple[str, str], dict] = {}
    for i in range(ds.sizes.get("value", 0)):
        key = (str(ds.scope.values[i]), str(ds.direction.values[i]))
        r = rows.setdefault(
            key,
            {
                "n": 0,
                "ss": 0.0,
                **{c: 0 for c in CLASSES},
                "max_abs": 0.0,
                "min_abs": math.inf,
                "headroom_max": math.inf,
                "headroom_normal": math.inf,
                "values": 0,
            },
        )
        finite = int(ds.normal[i] + ds.subnormal[i] + ds.zero[i])
        rms = float(ds.rms[i])
        if finite and np.isfinite(rms):
            r["n"] += finite
            r["ss"] += finite * rms * rms
        for c in CLASSES:
            r[c] += int(ds[c][i])
        r["max_abs"] = max(r["max_abs"], float(ds.max_abs[i]))
        r["min_abs"] = min(r["min_abs"], float(ds.min_abs[i]))
        r["headroom_max"] = min(r["headroom_max"], float(ds.headroom_max[i]))
        r["headroom_normal"] = min(r["headroom_normal"], float(ds.headroom_normal[i]))
        r["values"] += 1
    keys = list(rows)
    data = {
        name: ("scope_direction", [rows[k][name] for k in keys])
        for name in (*CLASSES, "max_abs", "min_abs", "headroom_max", "headroom_normal", "values")
    }
    data["rms"] = (
        "scope_direction",
        [math.sqrt(rows[k]["ss"] / rows[k]["n"]) if rows[k]["n"] else math.nan for k in keys],
    )
    return xr.Dataset(data).assign_coords(
        scope=("scope_direction", [k[0] for k in keys]),
        direction=("scope_direction", [k[1] for k in keys]),
    )
