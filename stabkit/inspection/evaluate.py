"""The interpreter of :func:`stabkit.inspect`: a program's jaxpr evaluated equation by equation
inside one compiled function, recording the statistics of every floating value it computes.

Each first-order equation is bound as it is (``primitive.bind(*inputs, **params)``), so the values
are those the program computes. Beside each floating output the interpreter adds one variadic
reduction (:func:`~stabkit.inspection.array_stats.raw`); everything else is done once per
*level* (the top of the program, a loop body, a branch; calls are evaluated inline in their
caller's level), vectorized over the level's values: the statistics, the flags (holds an inf, a
NaN, a zero or subnormal) and the *origins*: an equation whose output holds an inf, a NaN or an
underflow while its inputs hold none of that kind (entry by entry for elementwise equations).
A level's result is a :class:`LevelRecord`, one row per value.

A ``scan`` or ``while`` becomes a ``lax.scan``/``lax.while_loop`` of the interpreted body whose
carry holds the records combined over the iterations (memory does not grow with the trip count)
and, for scans whose trip counts multiply to at most the budget, the per-iteration statistics as
scan outputs. A ``cond`` becomes a ``lax.switch`` of interpreted branches; the branches not taken
report empty records. Values known at trace time (from literals and constants only) get their
statistics on the host: XLA would spend seconds folding a reduction of a constant.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.extend.core import Literal, jaxpr_as_fun

from stabkit._checks import is_floating_dtype
from stabkit.inspection import array_stats as st
from stabkit.inspection.program import CALLS, Program, _jaxpr_of

#: An equation of literals and constants only is evaluated while tracing, its statistics on the
#: host, up to this many output entries (a larger one, an iota of 10^8, stays on the device rather
#: than become a constant of the program).
_HOST_ENTRIES = 1 << 16


class LevelRecord(NamedTuple):
    """What the values of one level did, over every time the level ran (leading axis: value).

    Attributes:
        stats: their :class:`~stabkit.inspection.array_stats.ArrayStats`.
        origin: bool ``(V, 3)``: the value was an origin of an inf, a NaN, an underflow.
        iteration: int32 ``(V, 3, d)``: the loop indices (outermost first) of the first time it
            was each kind of origin, -1 if never; ``d`` is the number of loops around the level.
        count: int32 ``(V, 3)``: how many (innermost) iterations it was each kind of origin.
        index: int32 ``(V, 3)``: flat index of the first offending entry at that iteration.
    """

    stats: st.ArrayStats
    origin: Any
    iteration: Any
    count: Any
    index: Any


def _floating(x: Any) -> bool:
    return hasattr(x, "dtype") and is_floating_dtype(x.dtype)


def _static_flags(value: Any) -> Any:
    """The flags of a value known on the host (None for non-floating values), with NumPy; of a
    traced value, on the device."""
    if not _floating(value):
        return None
    if isinstance(value, jax.core.Tracer):
        return st.flags(value)
    a = np.asarray(value)
    tiny = float(ml_dtypes.finfo(a.dtype).smallest_normal)
    a = a.astype(np.float64)
    code = (
        st.INF * bool(np.isinf(a).any())
        + st.NAN * bool(np.isnan(a).any())
        + st.TINY * bool((np.abs(a) < tiny).any())
    )
    return np.int32(code)


#: Values of one shape and dtype reduced together, at most this many and this many bytes: one
#: reduction for all of them (XLA compiles a reduction in tens of ms), while holding them alive
#: only until the group is full.
GROUP_VALUES = 16
GROUP_BYTES = 64 << 20


class _Level:
    """Trace-time bookkeeping of one level: its values' raw reductions and where each value's
    inputs' flags come from."""

    def __init__(self) -> None:
        self.raws: list = []  # per value: a host ArrayStats, or None (reduced in a group)
        self.groups: dict = {}  # open groups: key -> list of (slot, value, underflowed, fresh)
        self.reduced: list = []  # closed groups: (ArrayStats with a leading axis, slots)
        self.values: list[tuple[int, int]] = []  # per value: (node id, output)
        self.elementwise: list[bool] = []
        self.whole: list[bool] = []  # underflow judged for the whole output, from the inputs' flags
        self.inputs: list[list[tuple[str, int]]] = []  # per value: flag references
        self.ext: list = []  # flags from outside the level's own values
        self.records: dict = {}  # nested levels' records
        self.iters: dict = {}  # nested scans' per-iteration statistics

    def external(self, flags: Any) -> tuple[str, int] | None:
        if flags is None:
            return None
        self.ext.append(flags)
        return ("e", len(self.ext) - 1)

    def value(self, node, j, raw, inputs) -> tuple[str, int]:
        """Add a value: ``raw`` is its host ArrayStats, or ``(x, underflowed, fresh)`` to reduce
        on the device with others of its shape and dtype."""
        node_id, elementwise = node.id, node.elementwise
        self.whole.append(node.underflow_rule == "whole")
        slot = len(self.values)
        if isinstance(raw, st.ArrayStats):
            self.raws.append(raw)
        else:
            self.raws.append(None)
            x, underflowed, fresh = raw
            raw = (x, st.code(underflowed, fresh))  # one kind of group per shape and dtype
            key = (x.shape, jnp.dtype(x.dtype).name)
            group = self.groups.setdefault(key, [])
            group.append((slot, *raw))
            nbytes = sum(int(np.prod(m[1].shape)) * m[1].dtype.itemsize for m in group)
            if len(group) >= GROUP_VALUES or nbytes >= GROUP_BYTES:
                self.flush(key)
        self.values.append((node_id, j))
        self.elementwise.append(elementwise)
        self.inputs.append(inputs)
        return ("v", len(self.values) - 1)

    def flush(self, key=None) -> None:
        """Reduce the open group ``key`` (all open groups if None) in one stacked reduction."""
        for k in [key] if key is not None else list(self.groups):
            members = self.groups.pop(k)
            xs = [m[1] for m in members]
            shape = xs[0].shape

            codes = None
            if any(m[2] is not None for m in members):
                default = np.int8(st.FRESH_INF | st.FRESH_NAN)
                codes = jnp.stack(
                    [jnp.broadcast_to(default if m[2] is None else m[2], shape) for m in members]
                )
            stats = st.stats_group(jnp.stack(xs), codes)
            self.reduced.append((stats, [m[0] for m in members]))


def _empty_like(tree: Any, loop: bool = False) -> Any:
    """Records of nothing with the shapes of ``tree`` (ShapeDtypeStructs of records/ArrayStats);
    ``loop``: records that a loop aggregates, with one more loop index."""

    def fill(rec):
        if isinstance(rec, LevelRecord):
            v, rows, depth = rec.iteration.shape
            return LevelRecord(
                fill(rec.stats),
                jnp.zeros(rec.origin.shape, bool),
                jnp.full((v, rows, depth + loop), -1, jnp.int32),
                jnp.zeros(rec.count.shape, jnp.int32),
                jnp.full(rec.index.shape, -1, jnp.int32),
            )
        return st.empty(rec.counts.shape[:-1])

    return {k: fill(v) for k, v in tree.items()}


def _aggregate(agg: LevelRecord, rec: LevelRecord, t: jax.Array) -> LevelRecord:
    """``agg`` (iterations before ``t``) combined with ``rec`` (iteration ``t``)."""
    seen = agg.count > 0
    now = rec.count > 0
    v = rec.origin.shape[0]
    here = jnp.concatenate(
        [jnp.broadcast_to(t.astype(jnp.int32), (v, 3, 1)), rec.iteration], axis=2
    )
    return LevelRecord(
        st.combine(agg.stats, rec.stats),
        agg.origin | rec.origin,
        jnp.where(seen[..., None], agg.iteration, jnp.where(now[..., None], here, -1)),
        agg.count + rec.count,
        jnp.where(seen, agg.index, rec.index),
    )


def level_key(path: tuple) -> str:
    """The name of a level's records: its path, ``"3.body"`` (strings: pytree keys must sort)."""
    return ".".join(str(k) for k in path) or "top"


def _input_stats(floats: list) -> st.ArrayStats:
    """The inputs' statistics: one stacked reduction per group of one shape and dtype (at most
    :data:`GROUP_VALUES` arrays and :data:`GROUP_BYTES` bytes), as for the program's values (a
    reduction per input compiled its kernels once per input: 38 of the 52 groups of a 2-block
    transformer's forward), rows put back in input order."""
    groups: dict = {}
    chunks: list[list[int]] = []
    for i, v in enumerate(floats):
        key = (v.shape, jnp.dtype(v.dtype).name)
        group = groups.get(key)
        nbytes = int(np.prod(v.shape)) * jnp.dtype(v.dtype).itemsize
        if group is None or len(group) >= GROUP_VALUES or (len(group) + 1) * nbytes > GROUP_BYTES:
            group = groups[key] = []
            chunks.append(group)
        group.append(i)
    parts = [st.stats_group(jnp.stack([floats[i] for i in idx])) for idx in chunks]  # no codes
    order = np.argsort(np.array([i for idx in chunks for i in idx]))
    return jax.tree.map(lambda *a: jnp.concatenate(a)[order], *parts)


class Evaluator:
    """Evaluates a flattened :class:`Program`; ``__call__`` is pure and meant for ``jax.jit``."""

    def __init__(self, closed: Any, program: Program, max_iterations: int) -> None:
        self.closed = closed
        self.program = program
        self.max_iterations = max_iterations
        #: (node id, output) of each row of each level's record, by level key
        self.level_values: dict[tuple, list[tuple[int, int]]] = {}

    def __call__(self, consts: list, args: list):
        floats = [v for v in args if _floating(v)]
        inputs = _input_stats(floats) if floats else None
        in_flags = iter(st.flags_of_counts(inputs.counts)) if floats else iter(())
        level = _Level()
        ins = [(c, level.external(st.flags(c) if _floating(c) else None)) for c in consts]
        ins += [(v, level.external(next(in_flags)) if _floating(v) else None) for v in args]
        n = len(consts)
        outs = self.jaxpr(self.closed.jaxpr, ins[:n], ins[n:], (), level, self.max_iterations)
        records, iters = self._close(level, ())
        return [v for v, _ in outs], inputs, records, iters

    # -- one level -----------------------------------------------------------------------------
    def _close(self, level: _Level, key: tuple):
        """The level's own record (vectorized over its values) with its nested records."""
        records, iters = dict(level.records), dict(level.iters)
        if not level.values:
            return records, iters
        key = level_key(key)
        level.flush()
        # rows: the groups' values, then those reduced on the host (the report maps them back)
        device = [slot for g in level.reduced for slot in g[1]]
        host = [i for i, r in enumerate(level.raws) if r is not None]
        order = device + host
        self.level_values[key] = [level.values[i] for i in order]
        row = {slot: r for r, slot in enumerate(order)}
        parts = [g[0] for g in level.reduced]
        if host:
            fields = zip(*[level.raws[i] for i in host], strict=True)
            parts.append(st.ArrayStats(*(jnp.asarray(np.stack(f)) for f in fields)))
        stats = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
        v = len(level.values)
        flags = st.flags_of_counts(stats.counts)
        ext = [jnp.asarray(f, jnp.int32) for f in level.ext]
        every = jnp.concatenate(
            [flags, jnp.stack(ext) if ext else jnp.zeros(0, jnp.int32), jnp.zeros(1, jnp.int32)]
        )
        width = max([len(r) for r in level.inputs] + [1])
        pad = v + len(ext)
        table = np.full((v, width), pad, np.int32)
        for i, refs in enumerate(level.inputs):
            for k, (kind, idx) in enumerate(refs):
                table[row[i], k] = row[idx] if kind == "v" else v + idx
        any_in = jax.lax.reduce(every[table], np.int32(0), jax.lax.bitwise_or, (1,))
        # a dot_general's zeros are an underflow only if no input held a zero, inf or NaN
        gate = jnp.where(np.array(level.whole)[order], any_in == 0, True)
        stats = stats._replace(
            first=stats.first.at[:, 2].set(jnp.where(gate, stats.first[:, 2], -1)),
            underflow=jnp.where(gate, stats.underflow, 0),
        )
        elementwise = np.array(level.elementwise)[order]
        new = stats.first >= 0
        whole = jnp.stack(
            [
                (stats.counts[:, 3] > 0) & ((any_in & st.INF) == 0),
                (stats.counts[:, 4] > 0) & ((any_in & st.NAN) == 0),
                new[:, 2],
            ],
            axis=1,
        )
        origin = jnp.where(elementwise[:, None], new, whole)
        records[key] = LevelRecord(
            stats,
            origin,
            jnp.zeros((v, 3, 0), jnp.int32),
            origin.astype(jnp.int32),
            jnp.where(origin, stats.first, -1),
        )
        return records, iters

    def jaxpr(self, jaxpr, consts, args, path, level: _Level, budget: int):
        """Evaluate ``jaxpr`` into ``level``; its outputs as (value, flag reference) pairs."""
        env: dict[Any, tuple] = {}
        for var, val in zip([*jaxpr.constvars, *jaxpr.invars], [*consts, *args], strict=True):
            env[var] = val

        def read(v):
            if isinstance(v, Literal):
                val = np.asarray(v.val, v.aval.dtype) if hasattr(v.aval, "dtype") else v.val
                return (val, level.external(_static_flags(val)))
            return env[v]

        for i, eqn in enumerate(jaxpr.eqns):
            key = (*path, i)
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in CALLS and CALLS[name] in eqn.params:
                inner, inner_consts = _jaxpr_of(eqn.params[CALLS[name]])
                cs = [(c, level.external(_static_flags(c))) for c in inner_consts]
                outs = self.jaxpr(inner, cs, ins, key, level, budget)
            elif name == "scan":
                outs = self._scan(eqn, ins, key, level, budget)
            elif name == "while":
                outs = self._while(eqn, ins, key, level)
            elif name == "cond":
                outs = self._cond(eqn, ins, key, level, budget)
            else:
                outs = self._first_order(eqn, ins, key, level)
            for var, val in zip(eqn.outvars, outs, strict=True):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def _first_order(self, eqn, ins, key, level: _Level):
        vals = [v for v, _ in ins]
        node = self.program.by_path[key]
        concrete = (
            not any(isinstance(v, jax.core.Tracer) for v in vals)
            and sum(int(np.prod(getattr(v.aval, "shape", ()), dtype=np.int64)) for v in eqn.outvars)
            <= _HOST_ENTRIES
        )
        if concrete:  # literals and constants only: evaluated now
            with jax.ensure_compile_time_eval():
                out = eqn.primitive.bind(*vals, **eqn.params)
        else:
            out = eqn.primitive.bind(*vals, **eqn.params)
        out = list(out) if eqn.primitive.multiple_results else [out]
        if concrete:
            out = [np.asarray(o) for o in out]
        refs = [r for (_, r) in ins if r is not None]
        if node.passthrough:  # the same values: the input's flags
            return [(out[0], refs[0])]
        if not node.recorded:  # no floating output
            return [(o, None) for o in out]
        xp = np if concrete else jnp
        underflowed = fresh = None
        if node.elementwise:
            fl = [v for v in vals if _floating(v)]
            cls = [(st.classes_np(np.asarray(v)) if concrete else st.classes(v)) for v in fl]
            normal = functools.reduce(xp.logical_and, [~(c[1] | c[2] | c[3] | c[4]) for c in cls])
            inf = functools.reduce(xp.logical_or, [c[3] for c in cls])
            nan = functools.reduce(xp.logical_or, [c[4] for c in cls])
            fresh = (~inf, ~nan)
            if node.underflow_rule == "elementwise":
                underflowed = normal
        elif node.underflow_rule == "whole":
            if concrete:
                clean = not any(int(_static_flags(np.asarray(v))) for v in vals if _floating(v))
                underflowed = np.bool_(clean)
            else:
                underflowed = None  # judged below, from the inputs' flags
        results, j = [], 0
        for o in out:
            if not _floating(o):
                results.append((o, None))
                continue
            if concrete:
                raw = st.stats_np(o, underflowed, fresh)
            elif node.underflow_rule == "whole":
                raw = (o, jnp.ones((), bool), fresh)
            else:
                raw = (o, underflowed, fresh)
            ref = level.value(node, j, raw, refs)
            results.append((o, ref))
            j += 1
        return results

    # -- loops and branches --------------------------------------------------------------------
    def _body(self, jaxpr, inner_consts, args, key, budget):
        """Evaluate a loop body or branch as its own level: (outputs, records, per-iteration)."""
        level = _Level()
        cs = [(c, level.external(_static_flags(c))) for c in inner_consts]
        ins = [(v, level.external(f)) for v, f in args]
        outs = self.jaxpr(jaxpr, cs, ins, key, level, budget)
        records, iters = self._close(level, key)
        return [v for v, _ in outs], records, iters

    @staticmethod
    def _with_flags(vals):
        return [(v, st.flags(v) if _floating(v) else None) for v in vals]

    def _outputs(self, level: _Level, vals):
        return [(v, level.external(st.flags(v)) if _floating(v) else None) for v in vals]

    def _scan(self, eqn, ins, key, level: _Level, budget):
        p = eqn.params
        jaxpr, inner_consts = _jaxpr_of(p["jaxpr"])
        n_consts, n_carry, length = p["num_consts"], p["num_carry"], int(p["length"])
        consts = [v for v, _ in ins[:n_consts]]
        init = [v for v, _ in ins[n_consts : n_consts + n_carry]]
        xs = [v for v, _ in ins[n_consts + n_carry :]]
        retain = 0 < length <= budget
        inner_budget = budget // max(length, 1) if retain else 0
        body_key = (*key, "body")

        const_args = self._with_flags(consts)  # loop-invariant: once, outside the loop

        def run_body(carry, x):
            args = [*const_args, *self._with_flags([*carry, *x])]
            return self._body(jaxpr, inner_consts, args, body_key, inner_budget)

        shapes = jax.eval_shape(lambda c, x: run_body(c, x)[1:], init, [v[0] for v in xs])
        agg0 = _empty_like(shapes[0], loop=True)

        def body(carry, x):
            vals, agg = carry
            t, x_vals = x
            outs, recs, inner = run_body(vals, x_vals)
            agg = {k: _aggregate(agg[k], recs[k], t) for k in recs}
            per_iter = {k: inner.get(k, recs[k].stats) for k in recs} if retain else {}
            return (outs[:n_carry], agg), (outs[n_carry:], per_iter)

        (carry, agg), (ys, per_iter) = jax.lax.scan(
            body,
            (init, agg0),
            (jnp.arange(length, dtype=jnp.int32), xs),
            length=length,
            reverse=p["reverse"],
        )
        level.records.update(agg)
        level.iters.update(per_iter)
        return self._outputs(level, [*carry, *ys])

    def _while(self, eqn, ins, key, level: _Level):
        p = eqn.params
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        cond_fun = jaxpr_as_fun(p["cond_jaxpr"])
        jaxpr, inner_consts = _jaxpr_of(p["body_jaxpr"])
        cconsts = [v for v, _ in ins[:nc]]
        bconsts = [v for v, _ in ins[nc : nc + nb]]
        init = [v for v, _ in ins[nc + nb :]]
        body_key = (*key, "body")

        const_args = self._with_flags(bconsts)

        def run_body(vals):
            args = [*const_args, *self._with_flags(vals)]
            return self._body(jaxpr, inner_consts, args, body_key, 0)

        agg0 = _empty_like(jax.eval_shape(lambda c: run_body(c)[1], init), loop=True)

        def cond(state):
            return cond_fun(*cconsts, *state[1])[0]

        def body(state):
            t, vals, agg = state
            outs, recs, _ = run_body(vals)
            agg = {k: _aggregate(agg[k], recs[k], t) for k in recs}
            return t + 1, outs, agg

        _, vals, agg = jax.lax.while_loop(cond, body, (jnp.int32(0), init, agg0))
        level.records.update(agg)
        return self._outputs(level, vals)

    def _cond(self, eqn, ins, key, level: _Level, budget):
        branches = eqn.params["branches"]
        index = ins[0][0]
        ops = [v for v, _ in ins[1:]]
        op_flags = [f for _, f in self._with_flags(ops)]

        def make(b):
            jaxpr, inner_consts = _jaxpr_of(branches[b])

            def run(op_vals, flags):
                args = list(zip(op_vals, flags, strict=True))
                return self._body(jaxpr, inner_consts, args, (*key, b), budget)

            return run

        runs = [make(b) for b in range(len(branches))]
        shapes = [jax.eval_shape(r, ops, op_flags) for r in runs]
        empty_recs = _empty_like({k: v for s in shapes for k, v in s[1].items()})
        empty_iters = _empty_like({k: v for s in shapes for k, v in s[2].items()})

        def wrap(run):
            def branch(op_vals, flags):
                vals, recs, it = run(op_vals, flags)
                return vals, {**empty_recs, **recs}, {**empty_iters, **it}

            return branch

        vals, recs, it = jax.lax.switch(index, [wrap(r) for r in runs], ops, op_flags)
        level.records.update(recs)
        level.iters.update(it)
        return self._outputs(level, vals)
