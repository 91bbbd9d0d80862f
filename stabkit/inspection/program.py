"""A traced program as :func:`stabkit.inspect` sees it: every primitive equation, flattened.

:func:`flatten` walks a ``ClosedJaxpr`` into the calls it makes (``jit``, ``closed_call``,
``custom_jvp_call``, ``custom_vjp_call``, ``remat``) and the loops and branches it runs (``scan``,
``while``, ``cond``), and gives each first-order equation a :class:`Node`: its primitive, the user's
source line, its scope, whether differentiation made it, the loops around it, the shapes and
dtypes of its floating outputs. The interpreter (:mod:`stabkit.inspection.evaluate`) finds a node
by its ``path``, the equation's position in the nesting of jaxprs.

The walk also records how values flow: each variable gets a global id, each node reads some ids
and writes others, and ``edges`` say where a value passes unchanged (into a call's body, around a
loop's carry, out of a branch). :func:`stabkit.inspection.report` follows them to tell whether an
inf or NaN reached the program's outputs, and which equations exist only for a gradient.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax._src import source_info_util

from stabkit._checks import is_floating_dtype

#: Call-like primitives and the parameter holding the jaxpr they run (evaluated inline: the
#: body of a custom_jvp/custom_vjp function is what runs forward; a gradient's jaxpr already holds
#: the custom rule's equations).
CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}
LOOPS = ("scan", "while")

#: Primitives that map each entry of their inputs to the same entry of the output (operands of
#: the output's shape, or scalars): their origins are judged entry by entry, so that ``0 * inf``
#: is found even where another entry of an input is already NaN.
ELEMENTWISE = frozenset(
    {
        "add",
        "add_any",
        "sub",
        "mul",
        "div",
        "rem",
        "pow",
        "max",
        "min",
        "neg",
        "sign",
        "floor",
        "ceil",
        "round",
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "tanh",
        "logistic",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "atan2",
        "sqrt",
        "rsqrt",
        "cbrt",
        "integer_pow",
        "square",
        "abs",
        "erf",
        "erfc",
        "erf_inv",
        "lgamma",
        "digamma",
        "convert_element_type",
        "reduce_precision",
        "select_n",
        "clamp",
        "nextafter",
        "copy",
        "copy_p",
        "polygamma",
        "igamma",
        "igammac",
        "bessel_i0e",
        "bessel_i1e",
    }
)
#: Primitives that move or repeat values without computing any: their output holds exactly the
#: values (and so the classes) of their input. They are not recorded (they cannot be an origin,
#: and half a model's equations are reshapes and transposes); their output carries the input's
#: flags.
PASSTHROUGH = frozenset(
    {"reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "copy", "copy_p", "rev"}
)
#: Primitives whose rounding can turn normal inputs into a zero or subnormal, entry by entry.
#: Not add/sub (under gradual underflow a difference that is subnormal is exact, and ``x - x = 0``
#: is no underflow), nor max/min/select, whose zeros were chosen, not rounded.
ELEMENTWISE_UNDERFLOW = frozenset(
    {
        "mul",
        "div",
        "exp",
        "exp2",
        "pow",
        "integer_pow",
        "square",
        "rsqrt",
        "logistic",
        "erfc",
        "convert_element_type",
        "reduce_precision",
        "tan",
        "expm1",
        "sinh",
    }
)
#: Primitives that can underflow, judged for the whole output: it holds a zero or subnormal while
#: no input holds one (an entry cannot be traced to its inputs cheaply).
WHOLE_UNDERFLOW = frozenset({"dot_general", "conv_general_dilated", "reduce_prod", "cumprod"})

# Libraries whose frames are not "the user's line": the first frame outside them is the source.
_LIBRARIES = tuple(
    os.sep + name + os.sep for name in ("flax", "equinox", "optax", "haiku", "chex", "inspection")
)


@dataclasses.dataclass(frozen=True)
class Node:
    """One first-order equation of the program (static facts only; numbers live in the report).

    ``shapes``/``dtypes`` are those of its floating outputs (empty: nothing is recorded for it, as
    for a comparison); ``outputs`` are all its variables' ids, ``floating`` the floating ones'.
    """

    id: int
    primitive: str
    path: tuple
    source: str
    frames: tuple[str, ...]
    scope: str
    transposed: bool
    differentiated: bool
    loops: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    floating: tuple[int, ...]
    underflow_rule: str  # "elementwise", "whole" or ""
    elementwise: bool = False
    passthrough: bool = False

    @property
    def recorded(self) -> bool:
        """Whether the equation has a floating output (only those are recorded)."""
        return bool(self.shapes)


@dataclasses.dataclass
class Program:
    """All nodes of a flattened program, and how values flow between them."""

    nodes: list[Node]
    by_path: dict[tuple, Node]
    edges: dict[int, list[int]]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    consts: tuple[int, ...]
    n_vars: int = 0

    def __post_init__(self) -> None:
        self.readers: dict[int, list[int]] = {}
        for node in self.nodes:
            for v in node.inputs:
                self.readers.setdefault(v, []).append(node.id)
        self.output_set = frozenset(self.outputs)

    def downstream(self, var: int) -> tuple[set[int], bool]:
        """The nodes that read ``var`` or a value passed on from it unchanged (through calls,
        loops and branches), and whether it reaches the program's outputs so."""
        seen, todo, nodes, out = {var}, [var], set(), False
        while todo:
            v = todo.pop()
            out |= v in self.output_set
            nodes.update(self.readers.get(v, ()))
            for w in self.edges.get(v, ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return nodes, out

    def directions(self) -> list[str]:
        """'forward' or 'backward' for each node.

        Backward: the equations a transpose made (the backward pass proper), and those of the
        forward pass of a differentiated function whose values only the backward pass reads
        (``1 - tanh(x)**2`` for the gradient of tanh), found as a fixed point from the end. A
        value the program returns is read forward.
        """
        backward = [n.transposed for n in self.nodes]
        reads = [self._reads(n) for n in self.nodes]
        changed = True
        while changed:
            changed = False
            for n in reversed(self.nodes):
                if backward[n.id] or not n.differentiated:
                    continue
                nodes, out = reads[n.id]
                if nodes and not out and all(backward[m] for m in nodes):
                    backward[n.id] = changed = True
        return ["backward" if b else "forward" for b in backward]

    def _reads(self, node: Node) -> tuple[set[int], bool]:
        nodes, out = set(), False
        for v in node.outputs:
            n, o = self.downstream(v)
            nodes |= n
            out |= o
        return nodes, out

    def reaches(self, node: Node, bad: dict[int, bool]) -> bool:
        """Whether a bad value of ``node``'s output can reach the program's outputs: along a path
        on which every equation's output holds a bad value too (``bad``: var id -> holds one).
        A ``where`` that discards it cuts the path."""
        seen: set[int] = set()
        todo = [v for v in node.floating if bad.get(v, False)]
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in self.output_set:
                return True
            todo.extend(self.edges.get(v, ()))
            for m in self.readers.get(v, ()):
                reader = self.nodes[m]
                todo.extend(w for w in reader.floating if reader.passthrough or bad.get(w, False))
        return False


def _floating(aval: Any) -> bool:
    return hasattr(aval, "dtype") and is_floating_dtype(aval.dtype)


def _parts(name_stack: Any) -> tuple[list[str], list[str]]:
    """(scope names, transform names) of a jax NameStack."""
    scopes, transforms = [], []
    for elem in getattr(name_stack, "stack", ()):
        if type(elem).__name__ == "Transform":
            transforms.append(elem.name)
        else:
            scopes.append(elem.name)
    return scopes, transforms


def _frames(source_info: Any) -> tuple[str, ...]:
    """``file:line (function)`` of the frames outside JAX, innermost first."""
    tb = getattr(source_info, "traceback", None)
    if tb is None:
        return ()
    return tuple(
        f"{f.file_name}:{f.start_line} ({f.function_name})"
        for f in source_info_util.user_frames(tb)
    )


def _source(frames: tuple[str, ...]) -> str:
    """The user's own frame: the first outside flax, equinox, optax, haiku (and stabkit.inspect)."""
    for frame in frames:
        if not any(lib in frame for lib in _LIBRARIES):
            return frame.rsplit(" (", 1)[0]
    return frames[0].rsplit(" (", 1)[0] if frames else ""


def _class_scope(frames: tuple[str, ...]) -> str:
    """``Outer/Inner`` from the ``Class.__call__`` frames (flax nnx modules name no scope); a
    private class (equinox's ``_ValueAndGradWrapper``, ``_JitWrapper``) is a wrapper, not a
    module."""
    names = []
    for frame in reversed(frames):
        func = frame.rsplit(" (", 1)[-1].rstrip(")")
        if func.endswith(".__call__") and "<locals>" not in func and not func.startswith("_"):
            names.append(func[: -len(".__call__")])
    return "/".join(names)


def _user_scopes(scopes: list[str]) -> list[str]:
    """The name-stack scopes a user or a library's module gave, without the ones JAX names after
    an operation (``jnp.einsum`` names its scope after its subscripts, ``BTNH,BSNH->BNTS``)."""
    return [s for s in scopes if "->" not in s]


def _jaxpr_of(value: Any) -> tuple[Any, list]:
    """(jaxpr, consts) of a ClosedJaxpr or an open Jaxpr."""
    if hasattr(value, "jaxpr") and hasattr(value, "consts"):
        return value.jaxpr, list(value.consts)
    return value, []


class _Walker:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.by_path: dict[tuple, Node] = {}
        self.edges: dict[int, list[int]] = {}
        self.n_vars = 0

    def new_var(self) -> int:
        self.n_vars += 1
        return self.n_vars - 1

    def edge(self, src: int | None, dst: int) -> None:
        if src is not None:
            self.edges.setdefault(src, []).append(dst)

    def walk(self, jaxpr, in_ids, path, ctx) -> list[int | None]:
        """Walk ``jaxpr`` whose invars (constvars first) have ids ``in_ids``; its outvars' ids."""
        env: dict[Any, int] = {}
        for var, vid in zip([*jaxpr.constvars, *jaxpr.invars], in_ids, strict=True):
            env[var] = vid

        def read(v):
            return env.get(v) if not hasattr(v, "val") else None

        for i, eqn in enumerate(jaxpr.eqns):
            key = (*path, i)
            scopes, transforms = _parts(eqn.source_info.name_stack)
            frames = _frames(eqn.source_info) or ctx["frames"]
            sub = {
                "scopes": ctx["scopes"] + scopes,
                "transforms": ctx["transforms"] + transforms,
                "frames": frames,
                "loops": ctx["loops"],
            }
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            outs = [self.new_var() for _ in eqn.outvars]
            if name in CALLS and CALLS[name] in eqn.params:
                inner, consts = _jaxpr_of(eqn.params[CALLS[name]])
                inner_ids = [self.new_var() for _ in consts] + [self.new_var() for _ in ins]
                for src, dst in zip(ins, inner_ids[len(consts) :], strict=True):
                    self.edge(src, dst)
                res = self.walk(inner, inner_ids, key, sub)
                for src, dst in zip(res, outs, strict=True):
                    self.edge(src, dst)
            elif name == "scan":
                self._scan(eqn, ins, outs, key, sub)
            elif name == "while":
                self._while(eqn, ins, outs, key, sub)
            elif name == "cond":
                for b, branch in enumerate(eqn.params["branches"]):
                    inner, consts = _jaxpr_of(branch)
                    inner_ids = [self.new_var() for _ in consts] + [self.new_var() for _ in ins[1:]]
                    for src, dst in zip(ins[1:], inner_ids[len(consts) :], strict=True):
                        self.edge(src, dst)
                    res = self.walk(inner, inner_ids, (*key, b), sub)
                    for src, dst in zip(res, outs, strict=True):
                        self.edge(src, dst)
            else:
                self._node(eqn, ins, outs, key, sub)
            for var, vid in zip(eqn.outvars, outs, strict=True):
                env[var] = vid
        return [read(v) for v in jaxpr.outvars]

    def _node(self, eqn, ins, outs, key, ctx) -> None:
        floats = [v.aval for v in eqn.outvars if _floating(v.aval)]
        name = eqn.primitive.name
        in_floats = [v.aval for v in eqn.invars if _floating(v.aval)]
        passthrough = (
            name in PASSTHROUGH
            and len(floats) == 1
            and len(in_floats) == 1
            and np.dtype(in_floats[0].dtype) == np.dtype(floats[0].dtype)
        )
        elementwise = (
            len(floats) == 1
            and bool(in_floats)
            and name in ELEMENTWISE
            and all(a.shape in (floats[0].shape, ()) for a in in_floats)
        )
        rule = ""
        if elementwise and name in ELEMENTWISE_UNDERFLOW:
            rule = "elementwise"
        elif floats and in_floats and name in WHOLE_UNDERFLOW:
            rule = "whole"
        node = Node(
            id=len(self.nodes),
            primitive=name,
            path=key,
            source=_source(ctx["frames"]),
            frames=ctx["frames"],
            scope="/".join(_user_scopes(ctx["scopes"])) or _class_scope(ctx["frames"]),
            transposed="transpose" in ctx["transforms"],
            differentiated=any(t in ("jvp", "transpose") for t in ctx["transforms"]),
            loops=ctx["loops"],
            shapes=() if passthrough else tuple(tuple(int(d) for d in a.shape) for a in floats),
            dtypes=() if passthrough else tuple(np.dtype(a.dtype).name for a in floats),
            inputs=tuple(v for v in ins if v is not None),
            outputs=tuple(outs),
            floating=tuple(o for o, v in zip(outs, eqn.outvars, strict=True) if _floating(v.aval)),
            underflow_rule=rule,
            elementwise=elementwise,
            passthrough=passthrough,
        )
        self.nodes.append(node)
        self.by_path[key] = node

    def _loop_body(self, kind, key, ctx, jaxpr, consts, n_in):
        ids = [self.new_var() for _ in consts] + [self.new_var() for _ in range(n_in)]
        sub = {**ctx, "loops": (*ctx["loops"], kind)}
        res = self.walk(jaxpr, ids, (*key, "body"), sub)
        return ids[len(consts) :], res

    def _scan(self, eqn, ins, outs, key, ctx) -> None:
        p = eqn.params
        jaxpr, consts = _jaxpr_of(p["jaxpr"])
        n_consts, n_carry = p["num_consts"], p["num_carry"]
        body_in, res = self._loop_body("scan", key, ctx, jaxpr, consts, len(ins))
        for src, dst in zip(ins, body_in, strict=True):
            self.edge(src, dst)
        for j in range(n_carry):
            self.edge(res[j], body_in[n_consts + j])  # around the loop
        for src, dst in zip(res, outs, strict=True):
            self.edge(src, dst)

    def _while(self, eqn, ins, outs, key, ctx) -> None:
        p = eqn.params
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        jaxpr, consts = _jaxpr_of(p["body_jaxpr"])
        body_ins = ins[nc:]
        body_in, res = self._loop_body("while", key, ctx, jaxpr, consts, len(body_ins))
        for src, dst in zip(body_ins, body_in, strict=True):
            self.edge(src, dst)
        for j, r in enumerate(res):
            self.edge(r, body_in[nb + j])
            self.edge(r, outs[j])
        for src, dst in zip(body_ins[nb:], outs, strict=True):
            self.edge(src, dst)  # zero iterations


def flatten(closed: Any) -> Program:
    """The :class:`Program` of a ``ClosedJaxpr``."""
    w = _Walker()
    n_const = len(closed.jaxpr.constvars)
    in_ids = [w.new_var() for _ in range(n_const + len(closed.jaxpr.invars))]
    ctx = {"scopes": [], "transforms": [], "frames": (), "loops": ()}
    out_ids = w.walk(closed.jaxpr, in_ids, (), ctx)
    return Program(
        nodes=w.nodes,
        by_path=w.by_path,
        edges=w.edges,
        inputs=tuple(in_ids[n_const:]),
        outputs=tuple(v for v in out_ids if v is not None),
        consts=tuple(in_ids[:n_const]),
        n_vars=w.n_vars,
    )


def has_floating(avals: Any) -> bool:
    """Whether any of ``avals`` is a floating array."""
    return any(_floating(a) for a in jax.tree_util.tree_leaves(avals))
