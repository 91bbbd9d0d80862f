"""``stabkit.inspect(fn, *args, **kwargs)``: where inf, NaN and underflow come from, in any JAX
function.

The function is traced to a jaxpr once; :func:`stabkit.inspection.program.flatten` lists its
equations; :class:`stabkit.inspection.evaluate.Evaluator` evaluates them one by one inside one
``jax.jit``-compiled program that records the statistics of every floating value (no host round
trip per operation, no halting at the first NaN, no re-run); the :class:`Report` reads the origins
off the records. The function is traced on every call (so a closure sees its current weights); the
compiled program is cached by the traced program's text and the argument types, so inspecting
the same function again costs one trace and one compiled call.

What ``jax_debug_nans`` and ``checkify`` do instead, and why this is different: see the study
``inspect`` (``experiments/nan_origins.py``).
"""

from __future__ import annotations

import functools
import hashlib
import types
import weakref
from typing import Any

import jax
import numpy as np

from stabkit._checks import INT32_MAX, _short, is_floating_dtype, memory_limit
from stabkit.inspection.evaluate import Evaluator
from stabkit.inspection.program import flatten, has_floating
from stabkit.inspection.report import Report

#: Loop iterations whose statistics are kept one by one (the product of the trip counts of the
#: scans around an equation); beyond it only the record combined over iterations is kept.
MAX_ITERATIONS = 1024
# The per-iteration statistics of one equation's output take about this many bytes.
_RECORD_BYTES = 64

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


def _argument_name(path: tuple, n_args: int) -> str:
    """``args[1]['w']`` or ``kwargs['x'][0]`` for a key path into ``(args, kwargs)``."""
    head, *rest = path
    which = "args" if getattr(head, "idx", None) == 0 else "kwargs"
    return which + jax.tree_util.keystr(tuple(rest))


def _check_arguments(args: tuple, kwargs: dict) -> None:
    leaves = jax.tree_util.tree_leaves_with_path((args, kwargs))
    for path, leaf in leaves:
        if isinstance(leaf, _ARRAY_TYPES) or hasattr(leaf, "__jax_array__"):
            continue
        name = _argument_name(path, len(args))
        raise TypeError(
            f"{name}={_short(repr(leaf))} is a {type(leaf).__name__}, not an array: inspect's "
            "arguments must be pytrees of arrays (jax or NumPy arrays, Python numbers); close "
            "over anything else, e.g. inspect(lambda x: fn(x, option), x), or split an equinox "
            "model with equinox.partition"
        )


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


# Compiled evaluators by (argument structure and types, program text, nested constants), least
# recently used first.
_COMPILED: dict = {}
_CACHE_SIZE = 32


def _inner_consts(jaxpr: Any, out: list) -> list:
    """The constants of every jaxpr nested in ``jaxpr`` (a call's closed-over arrays)."""
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for v in value if isinstance(value, tuple) else (value,):
                if hasattr(v, "jaxpr") and hasattr(v, "consts"):
                    out.extend(v.consts)
                    _inner_consts(v.jaxpr, out)
                elif hasattr(v, "eqns"):
                    _inner_consts(v, out)
    return out


def _fingerprint(closed: Any) -> tuple:
    """What a compiled inspection depends on besides its arguments: the program's text and the
    values of the constants nested in it (the top-level constants are passed as arguments)."""
    digest = hashlib.sha256()
    for c in _inner_consts(closed.jaxpr, []):
        a = np.asarray(c)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return str(closed.jaxpr), digest.hexdigest()


# Modules whose globals are libraries' (not the user's mutable state): a function of theirs is not
# walked, and a reference to the module itself is no state.
_LIBRARY_MODULES = (
    "jax", "jaxlib", "numpy", "math", "functools", "operator", "builtins", "typing", "flax",
    "equinox", "optax", "chex", "haiku", "stabkit", "ml_dtypes", "scipy", "collections",
    "dataclasses", "itertools", "contextlib", "abc", "enum", "warnings", "jaxtyping",
)  # fmt: skip
_SCALARS = (str, bytes, bool, int, float, complex, type(None), type(Ellipsis))


class _Same:
    """An array in a signature: equal to another only if it is the very same object (held, so
    that its id cannot be reused by a new array while the signature is cached)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    __hash__ = None  # type: ignore[assignment]


class _Opaque(Exception):
    """The function reaches state whose change cannot be seen without tracing it again."""


def _library(obj: Any) -> bool:
    name = getattr(obj, "__module__", None) or getattr(obj, "__name__", "") or ""
    return name.split(".")[0] in _LIBRARY_MODULES


def _state(obj: Any, out: list, seen: set, depth: int = 0) -> None:
    """Append to ``out`` what the traced program of a function could have captured from
    ``obj``: the identity of every array and the value of every scalar reachable through
    closures, ``functools.partial`` arguments, bound methods, referenced globals and pytrees.
    Raises :class:`_Opaque` on anything else (a user's module or object that is no pytree, a
    NumPy array, which can change in place)."""
    if isinstance(obj, _SCALARS):
        out.append(obj)
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if depth > 12:
        raise _Opaque
    if isinstance(obj, jax.Array):
        out.append(_Same(obj))
        return
    if isinstance(obj, types.ModuleType) or isinstance(obj, type):
        if _library(obj):
            return
        raise _Opaque
    if isinstance(obj, functools.partial):
        _state(obj.func, out, seen, depth + 1)
        for a in (*obj.args, *obj.keywords.values()):
            _state(a, out, seen, depth + 1)
        return
    if isinstance(obj, types.MethodType):
        _state(obj.__func__, out, seen, depth + 1)
        _state(obj.__self__, out, seen, depth + 1)
        return
    if isinstance(obj, types.FunctionType):
        if _library(obj) and not obj.__closure__:
            return
        for cell in obj.__closure__ or ():
            try:
                _state(cell.cell_contents, out, seen, depth + 1)
            except ValueError:  # an empty cell
                pass
        for name in obj.__code__.co_names:
            if name in obj.__globals__:
                _state(obj.__globals__[name], out, seen, depth + 1)
        for d in obj.__defaults__ or ():
            _state(d, out, seen, depth + 1)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            _state(wrapped, out, seen, depth + 1)
        return
    if isinstance(obj, (types.BuiltinFunctionType, np.ufunc)) or type(obj).__name__ in (
        "PjitFunction",
        "CompiledFunction",
    ):
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            _state(wrapped, out, seen, depth + 1)
        return
    if isinstance(obj, (tuple, list, dict)):
        items = obj.values() if isinstance(obj, dict) else obj
        out.append(("container", type(obj).__name__, len(obj)))
        for v in items:
            _state(v, out, seen, depth + 1)
        return
    leaves, treedef = jax.tree_util.tree_flatten(obj)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # a leaf: not a pytree
        if _library(type(obj)) and callable(obj) and not hasattr(obj, "__dict__"):
            return  # a library's stateless callable (a jnp ufunc object, say)
        raise _Opaque
    out.append(("tree", str(treedef)))
    for leaf in leaves:
        _state(leaf, out, seen, depth + 1)


def _signature(fn: Any) -> tuple | None:
    """What ``fn``'s traced program depends on besides its arguments, or None if that cannot be
    known without tracing it (then it is traced again)."""
    out: list = []
    try:
        _state(fn, out, set())
    except (_Opaque, RecursionError, TypeError):
        return None
    return tuple(out)


# The last trace of each function, by function identity: (weak ref, signature, argument key,
# entry). A hit skips tracing when nothing the function could have captured has changed.
_TRACED: dict = {}


def _prepare(fn: Any, args: tuple, kwargs: dict):
    """The traced program of ``fn``, from the last trace when ``fn`` is the same object, called
    with the same argument types, and every array it reaches is the same object as then
    (:func:`_signature`); traced again otherwise."""
    flat, in_tree = jax.tree.flatten((args, kwargs))
    arg_key = (
        in_tree,
        tuple((np.shape(x), str(jax.numpy.result_type(x)), getattr(x, "weak_type", False))
              for x in flat),
        bool(jax.config.jax_enable_x64),
    )  # fmt: skip
    signature = _signature(fn)
    hit = _TRACED.get(id(fn))
    if (
        hit is not None
        and hit[0]() is fn
        and signature is not None
        and hit[1:3]
        == (
            signature,
            arg_key,
        )
    ):
        return hit[3]
    entry = _trace_and_compile(fn, args, kwargs)
    if signature is not None:
        try:
            ref = weakref.ref(fn)
        except TypeError:
            ref = None
        if ref is not None:
            if len(_TRACED) >= _CACHE_SIZE:
                _TRACED.pop(next(iter(_TRACED)))
            _TRACED[id(fn)] = (ref, signature, arg_key, entry)
    return entry


def _trace_and_compile(fn: Any, args: tuple, kwargs: dict):
    """(closed jaxpr, program, jitted evaluator, output treedef, meta) of a fresh trace.

    A closure over a model that changed since (``nnx.update``, a training step) must be
    inspected with its current weights, which a cache by function alone would not see (jax.jit's
    own cache has that pitfall): the compiled evaluator is cached by the traced program's text,
    nested constants and argument types, and takes the traced constants as arguments.
    """
    flat, in_tree = jax.tree.flatten((args, kwargs))
    avals = tuple(
        (np.shape(x), str(jax.numpy.result_type(x)), getattr(x, "weak_type", False)) for x in flat
    )

    def call(a, k):
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(call, return_shape=True)(args, kwargs)
    if not has_floating(out_shape):
        shapes = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", out_shape)
        raise ValueError(
            f"fn={_fn_name(fn)} returns no floating-point array (it returns {_short(str(shapes))}):"
            " inspect follows inf, NaN and underflow, which only floating values hold"
        )
    key = (in_tree, avals, bool(jax.config.jax_enable_x64), *_fingerprint(closed))
    program = flatten(closed)  # rebuilt each time: source lines may differ for the same text
    if key in _COMPILED:
        run, level_values = _COMPILED.pop(key)
        _COMPILED[key] = (run, level_values)  # most recently used last
    else:
        for node in program.nodes:
            for shape in node.shapes:
                if int(np.prod(shape, dtype=np.int64)) > INT32_MAX:
                    raise ValueError(
                        f"fn={_fn_name(fn)} computes an array of shape {shape} at {node.source}: "
                        f"more than {INT32_MAX} entries, which inspect cannot index"
                    )
        in_loops = sum(len(n.shapes) for n in program.nodes if n.loops)
        budget = MAX_ITERATIONS
        if in_loops:
            # per-iteration statistics bounded to an eighth of the memory
            budget = int(min(budget, memory_limit() // 8 // (_RECORD_BYTES * in_loops)))
        evaluator = Evaluator(closed, program, max(budget, 0))
        run, level_values = jax.jit(evaluator), evaluator.level_values
        if len(_COMPILED) >= _CACHE_SIZE:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = (run, level_values)
    leaves = jax.tree_util.tree_leaves_with_path((args, kwargs))
    floating = [i for i, a in enumerate(avals) if is_floating_dtype(a[1])]
    meta = {
        # the floating arguments, whose statistics come first in report.stats
        "input_names": [_argument_name(leaves[i][0], len(args)) for i in floating],
        "input_avals": [(list(avals[i][0]), jax.numpy.dtype(avals[i][1]).name) for i in floating],
        "fn": _fn_name(fn),
        "level_values": level_values,  # filled when the program is first traced
    }
    return closed, program, run, jax.tree.structure(out_shape), meta


def inspect(fn: Any, /, *args: Any, **kwargs: Any) -> Report:
    """Evaluate ``fn(*args, **kwargs)`` and report where every inf, NaN and underflow comes from.

    The jaxpr of ``fn`` is evaluated equation by equation inside one compiled program, into
    ``jit``, ``custom_jvp``/``custom_vjp`` functions, ``remat``, ``scan``, ``while`` and
    ``cond``. Pass ``jax.grad(loss)`` or ``jax.value_and_grad(loss)`` to inspect the backward pass
    too. Works on float16, bfloat16, float32, float64 and the float8 formats, on jitted and
    vmapped functions, and under ``jax.vmap`` (a batched report: ``report[i]``).

    Args:
        fn: any JAX-traceable callable (a flax or equinox model, a loss, an optax update).
        *args, **kwargs: its arguments, pytrees of arrays.

    Returns:
        A :class:`Report`: ``.origins`` (every equation whose output holds an inf, a NaN or an
        underflow while its inputs hold none), ``.stats`` (per-equation statistics),
        ``.summary()``, ``.plot()``, and ``.outputs`` (what ``fn`` returned).

    Raises:
        TypeError: ``fn`` is not callable, or an argument leaf is not an array.
        ValueError: ``fn`` returns no floating-point array.

    Examples:
        >>> import jax.numpy as jnp
        >>> import stabkit
        >>> r = stabkit.inspect(lambda x: jnp.log(x) * 2, jnp.array([1.0, 0.0]))
        >>> [(o.kind, o.primitive, o.index) for o in r.origins]
        [('inf', 'log', (1,))]
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__} {_short(repr(fn))}")
    _check_arguments(args, kwargs)
    closed, program, run, out_tree, meta = _prepare(fn, args, kwargs)
    flat = jax.tree.leaves((args, kwargs))
    outs, inputs, records, iters = run(list(closed.consts), flat)
    return Report(program, out_tree, (outs, inputs, records, iters), dict(meta))
