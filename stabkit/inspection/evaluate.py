"""The interpreter of :func:`stabkit.inspect`: a program's jaxpr evaluated equation by equation
inside one compiled function, recording the statistics of every floating value it computes.

Each first-order equation is bound as it is (``primitive.bind(*inputs, **params)``), so the values
are those the program computes; beside them the interpreter records an :class:`NodeRecord`: the
:class:`~stabkit.inspection.array_stats.ArrayStats` of its floating outputs and whether it is an
*origin* of an inf, a NaN or an underflow (its output holds one while its inputs hold none of that
kind). Each value carries three flags (holds an inf, a NaN, a zero or subnormal) so that the test
needs no second pass over the inputs.

Calls are evaluated inline. A ``scan`` or ``while`` becomes a ``lax.scan``/``lax.while_loop`` of
the interpreted body whose carry holds the records combined over the iterations (memory does not
grow with the trip count) and, for scans whose trip counts multiply to at most ``max_iterations``,
the per-iteration statistics as scan outputs. A ``cond`` becomes a ``lax.switch`` of interpreted
branches; the branch not taken reports empty records.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import Literal, jaxpr_as_fun

from stabkit._checks import is_floating_dtype
from stabkit.inspection import array_stats as st
from stabkit.inspection.program import CALLS, Program, _jaxpr_of


class NodeRecord(NamedTuple):
    """What one equation did, over every time it ran.

    Attributes:
        stats: the ArrayStats of its floating outputs, stacked (leading axis: output).
        origin: bool ``(3,)``: it was an origin of an inf, a NaN, an underflow (at least once).
        iteration: int32 ``(3, d)``: the loop indices (outermost first) of the first time it was
            each kind of origin, -1 if never; ``d`` is the number of loops around it.
        count: int32 ``(3,)``: how many (innermost) iterations it was each kind of origin.
        index: int32 ``(3,)``: flat index of the first offending entry at that iteration.
        output: int32 ``(3,)``: which floating output that entry is in.
    """

    stats: st.ArrayStats
    origin: jax.Array
    iteration: jax.Array
    count: jax.Array
    index: jax.Array
    output: jax.Array


def _floating(x: Any) -> bool:
    return hasattr(x, "dtype") and is_floating_dtype(x.dtype)


def _static_flags(value: Any) -> Any:
    """The flags of a literal or constant known on the host (None for non-floating values)."""
    if not _floating(value):
        return None
    return st.flags(jnp.asarray(value))


def _empty_like(tree: Any, loop: bool = False) -> Any:
    """Records of nothing with the shapes of ``tree`` (ShapeDtypeStructs of records/ArrayStats);
    ``loop``: records that a loop aggregates, with one more loop index."""

    def fill(rec):
        if isinstance(rec, NodeRecord):
            rows, depth = rec.iteration.shape
            return NodeRecord(
                fill(rec.stats),
                jnp.zeros(rec.origin.shape, bool),
                jnp.full((rows, depth + loop), -1, jnp.int32),
                jnp.zeros(rec.count.shape, jnp.int32),
                jnp.full(rec.index.shape, -1, jnp.int32),
                jnp.full(rec.output.shape, -1, jnp.int32),
            )
        e = st.empty()
        lead = rec.counts.shape[:-1]
        return st.ArrayStats(*(jnp.broadcast_to(f, (*lead, *f.shape)) for f in e))

    return {k: fill(v) for k, v in tree.items()}


def _stack(stats: list[st.ArrayStats]) -> st.ArrayStats:
    return st.ArrayStats(*(jnp.stack(f) for f in zip(*stats, strict=True)))


def _aggregate(agg: NodeRecord, rec: NodeRecord, t: jax.Array) -> NodeRecord:
    """``agg`` (iterations before ``t``) combined with ``rec`` (iteration ``t``)."""
    seen = agg.count > 0
    now = rec.count > 0
    here = jnp.concatenate([jnp.broadcast_to(t.astype(jnp.int32), (3, 1)), rec.iteration], axis=1)
    return NodeRecord(
        st.combine(agg.stats, rec.stats),
        agg.origin | rec.origin,
        jnp.where(seen[:, None], agg.iteration, jnp.where(now[:, None], here, -1)),
        agg.count + rec.count,
        jnp.where(seen, agg.index, rec.index),
        jnp.where(seen, agg.output, rec.output),
    )


class Evaluator:
    """Evaluates a flattened :class:`Program`; ``__call__`` is pure and meant for ``jax.jit``."""

    def __init__(self, closed: Any, program: Program, max_iterations: int) -> None:
        self.closed = closed
        self.program = program
        self.max_iterations = max_iterations

    def __call__(self, consts: list, args: list):
        ins = [(c, _static_flags(c)) for c in consts]
        inputs = []
        for v in args:
            if _floating(v):
                s = st.stats(v)
                inputs.append(s)
                ins.append((v, self._flags_of(s)))
            else:
                inputs.append(None)
                ins.append((v, None))
        n = len(consts)
        outs, recs, iters = self.jaxpr(self.closed.jaxpr, ins[:n], ins[n:], (), self.max_iterations)
        return [v for v, _ in outs], inputs, recs, iters

    @staticmethod
    def _flags_of(s: st.ArrayStats) -> jax.Array:
        c = s.counts
        return jnp.stack([c[3] > 0, c[4] > 0, (c[1] + c[2]) > 0])

    def jaxpr(self, jaxpr, consts, args, path, budget):
        """Evaluate ``jaxpr``; (outputs, records by node id, per-iteration stats by node id)."""
        env: dict[Any, tuple] = {}
        for var, val in zip([*jaxpr.constvars, *jaxpr.invars], [*consts, *args], strict=True):
            env[var] = val

        def read(v):
            if isinstance(v, Literal):
                return (v.val, _static_flags(v.val))
            return env[v]

        records: dict = {}
        iters: dict = {}
        for i, eqn in enumerate(jaxpr.eqns):
            key = (*path, i)
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in CALLS and CALLS[name] in eqn.params:
                inner, inner_consts = _jaxpr_of(eqn.params[CALLS[name]])
                cs = [(c, _static_flags(c)) for c in inner_consts]
                outs, r, it = self.jaxpr(inner, cs, ins, key, budget)
            elif name == "scan":
                outs, r, it = self._scan(eqn, ins, key, budget)
            elif name == "while":
                outs, r, it = self._while(eqn, ins, key)
            elif name == "cond":
                outs, r, it = self._cond(eqn, ins, key, budget)
            else:
                outs, r, it = self._first_order(eqn, ins, key)
            records.update(r)
            iters.update(it)
            for var, val in zip(eqn.outvars, outs, strict=True):
                env[var] = val
        return [read(v) for v in jaxpr.outvars], records, iters

    def _first_order(self, eqn, ins, key):
        vals = [v for v, _ in ins]
        out = eqn.primitive.bind(*vals, **eqn.params)
        out = list(out) if eqn.primitive.multiple_results else [out]
        node = self.program.by_path[key]
        if not node.recorded:  # no floating output
            return [(o, None) for o in out], {}, {}
        in_flags = [f for (_, f) in ins if f is not None]
        if in_flags:
            any_in = jnp.any(jnp.stack(in_flags), axis=0)
        else:
            any_in = jnp.zeros(3, bool)
        underflowed = None
        if node.underflow_rule == "elementwise":
            masks = [st.normal_mask(v) for v in vals if _floating(v)]
            underflowed = masks[0]
            for m in masks[1:]:
                underflowed = underflowed & m
        elif node.underflow_rule == "whole":
            underflowed = ~jnp.any(any_in)
        results, stats = [], []
        for o in out:
            if _floating(o):
                s = st.stats(o, underflowed)
                stats.append(s)
                results.append((o, self._flags_of(s)))
            else:
                results.append((o, None))
        s = _stack(stats)
        has = jnp.stack(
            [jnp.any(s.counts[:, 3] > 0), jnp.any(s.counts[:, 4] > 0), jnp.any(s.underflow > 0)]
        )
        origin = jnp.stack([has[0] & ~any_in[0], has[1] & ~any_in[1], has[2]])
        # first output holding each kind, and its first offending entry
        present = s.first >= 0  # (n_out, 3)
        output = jnp.argmax(present, axis=0).astype(jnp.int32)
        index = jnp.take_along_axis(s.first, output[None, :], axis=0)[0]
        rec = NodeRecord(
            s,
            origin,
            jnp.zeros((3, 0), jnp.int32),
            origin.astype(jnp.int32),
            jnp.where(origin, index, -1),
            jnp.where(origin, output, -1),
        )
        return results, {node.id: rec}, {}

    def _body_shapes(self, fn, *args):
        """ShapeDtypeStructs of the records ``fn`` returns (a trace, nothing runs)."""
        return jax.eval_shape(fn, *args)

    def _scan(self, eqn, ins, key, budget):
        p = eqn.params
        jaxpr, inner_consts = _jaxpr_of(p["jaxpr"])
        n_consts, n_carry, length = p["num_consts"], p["num_carry"], int(p["length"])
        cs = [(c, _static_flags(c)) for c in inner_consts]
        consts, init, xs = (
            ins[:n_consts],
            ins[n_consts : n_consts + n_carry],
            ins[n_consts + n_carry :],
        )
        retain = 0 < length <= budget
        inner_budget = budget // max(length, 1) if retain else 0
        body_key = (*key, "body")

        def run_body(carry_vals, x_vals):
            cargs = [(v, st.flags(v) if _floating(v) else None) for v in carry_vals]
            xargs = [(v, st.flags(v) if _floating(v) else None) for v in x_vals]
            return self.jaxpr(jaxpr, cs, [*consts, *cargs, *xargs], body_key, inner_budget)

        x_slices = [v[0] for v, _ in xs]
        shapes = self._body_shapes(lambda c, x: run_body(c, x)[1:], [v for v, _ in init], x_slices)
        agg0 = _empty_like(shapes[0], loop=True)

        def body(carry, x):
            vals, agg = carry
            t, x_vals = x
            outs, recs, inner = run_body(vals, x_vals)
            agg = {k: _aggregate(agg[k], recs[k], t) for k in recs}
            per_iter = {k: inner.get(k, recs[k].stats) for k in recs} if retain else {}
            return ([v for v, _ in outs[:n_carry]], agg), ([v for v, _ in outs[n_carry:]], per_iter)

        (carry, agg), (ys, per_iter) = jax.lax.scan(
            body,
            ([v for v, _ in init], agg0),
            (jnp.arange(length, dtype=jnp.int32), [v for v, _ in xs]),
            length=length,
            reverse=p["reverse"],
        )
        outs = [(v, st.flags(v) if _floating(v) else None) for v in [*carry, *ys]]
        return outs, agg, per_iter

    def _while(self, eqn, ins, key):
        p = eqn.params
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        cond_fun = jaxpr_as_fun(p["cond_jaxpr"])
        jaxpr, inner_consts = _jaxpr_of(p["body_jaxpr"])
        cs = [(c, _static_flags(c)) for c in inner_consts]
        cconsts, bconsts, init = ins[:nc], ins[nc : nc + nb], ins[nc + nb :]
        body_key = (*key, "body")

        def run_body(vals):
            args = [(v, st.flags(v) if _floating(v) else None) for v in vals]
            return self.jaxpr(jaxpr, cs, [*bconsts, *args], body_key, 0)

        shapes = self._body_shapes(lambda c: run_body(c)[1], [v for v, _ in init])
        agg0 = _empty_like(shapes, loop=True)

        def cond(state):
            _, vals, _ = state
            return cond_fun(*[v for v, _ in cconsts], *vals)[0]

        def body(state):
            t, vals, agg = state
            outs, recs, _ = run_body(vals)
            agg = {k: _aggregate(agg[k], recs[k], t) for k in recs}
            return t + 1, [v for v, _ in outs], agg

        _, vals, agg = jax.lax.while_loop(cond, body, (jnp.int32(0), [v for v, _ in init], agg0))
        outs = [(v, st.flags(v) if _floating(v) else None) for v in vals]
        return outs, agg, {}

    def _cond(self, eqn, ins, key, budget):
        branches = eqn.params["branches"]
        index, ops = ins[0][0], ins[1:]

        def make(b):
            jaxpr, inner_consts = _jaxpr_of(branches[b])
            cs = [(c, _static_flags(c)) for c in inner_consts]

            def run(op_vals, op_flags):
                args = list(zip(op_vals, op_flags, strict=True))
                outs, recs, it = self.jaxpr(jaxpr, cs, args, (*key, b), budget)
                return [v for v, _ in outs], [f for _, f in outs], recs, it

            return run

        runs = [make(b) for b in range(len(branches))]
        op_vals = [v for v, _ in ops]
        op_flags = [f for _, f in ops]
        shapes = [jax.eval_shape(r, op_vals, op_flags) for r in runs]
        all_recs = {k: v for s in shapes for k, v in s[2].items()}
        all_iters = {k: v for s in shapes for k, v in s[3].items()}
        empty_recs = _empty_like(all_recs)
        empty_iters = _empty_like(all_iters)
        # output flags are None for non-floating outputs in every branch alike
        out_flag_none = [f is None for f in shapes[0][1]]

        def wrap(run):
            def branch(op_vals, op_flags):
                vals, flags, recs, it = run(op_vals, op_flags)
                flags = [jnp.zeros(3, bool) if f is None else f for f in flags]
                return vals, flags, {**empty_recs, **recs}, {**empty_iters, **it}

            return branch

        vals, flags, recs, it = jax.lax.switch(index, [wrap(r) for r in runs], op_vals, op_flags)
        outs = [
            (v, None if none else f) for v, f, none in zip(vals, flags, out_flag_none, strict=True)
        ]
        return outs, recs, it
