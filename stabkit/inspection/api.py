"""``stabkit.inspect(fn, *args, **kwargs)``: where inf, NaN and underflow come from, in any JAX
function.

The function is traced to a jaxpr once; :func:`stabkit.inspection.program.flatten` lists its
equations; :class:`stabkit.inspection.evaluate.Evaluator` evaluates them one by one inside one
``jax.jit``-compiled program that records the statistics of every floating value (no host round
trip per operation, no halting at the first NaN, no re-run); the :class:`Report` reads the origins
off the records. Compiled programs are cached per (function, argument shapes and dtypes), so
inspecting the same function again runs at the speed of one compiled call.

What ``jax_debug_nans`` and ``checkify`` do instead, and why this is different: see the study
``inspect`` (``experiments/nan_origins.py``).
"""

from __future__ import annotations

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


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STRONG_CACHE: dict = {}
_CACHE_SIZE = 32


def _prepare(fn: Any, args: tuple, kwargs: dict):
    """(closed jaxpr, program, jitted evaluator, output treedef, input names and avals)."""
    flat, in_tree = jax.tree.flatten((args, kwargs))
    avals = tuple(
        (np.shape(x), str(jax.numpy.result_type(x)), getattr(x, "weak_type", False)) for x in flat
    )
    key = (in_tree, avals, bool(jax.config.jax_enable_x64))
    try:
        per_fn = _CACHE.setdefault(fn, {})
    except TypeError:  # not weak-referenceable (a functools.partial of a builtin, say)
        per_fn = _STRONG_CACHE.setdefault(id(fn), {})
    if key in per_fn:
        return per_fn[key]

    def call(a, k):
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(call, return_shape=True)(args, kwargs)
    if not has_floating(out_shape):
        shapes = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", out_shape)
        raise ValueError(
            f"fn={_fn_name(fn)} returns no floating-point array (it returns {_short(str(shapes))}):"
            " inspect follows inf, NaN and underflow, which only floating values hold"
        )
    program = flatten(closed)
    for node in program.nodes:
        for shape in node.shapes:
            if int(np.prod(shape, dtype=np.int64)) > INT32_MAX:
                raise ValueError(
                    f"fn={_fn_name(fn)} computes an array of shape {shape} at {node.source}: more "
                    f"than {INT32_MAX} entries, which inspect cannot index"
                )
    in_loops = sum(len(n.shapes) for n in program.nodes if n.loops)
    budget = MAX_ITERATIONS
    if in_loops:
        # per-iteration statistics bounded to an eighth of the memory
        budget = int(min(budget, memory_limit() // 8 // (_RECORD_BYTES * in_loops)))
    evaluator = Evaluator(closed, program, max(budget, 0))
    leaves = jax.tree_util.tree_leaves_with_path((args, kwargs))
    floating = [i for i, a in enumerate(avals) if is_floating_dtype(a[1])]
    meta = {
        # the floating arguments, whose statistics come first in report.stats
        "input_names": [_argument_name(leaves[i][0], len(args)) for i in floating],
        "input_avals": [(list(avals[i][0]), jax.numpy.dtype(avals[i][1]).name) for i in floating],
        "fn": _fn_name(fn),
        "level_values": evaluator.level_values,  # filled when the program is traced
    }
    entry = (closed, program, jax.jit(evaluator), jax.tree.structure(out_shape), meta)
    if len(per_fn) >= _CACHE_SIZE:
        per_fn.pop(next(iter(per_fn)))
    per_fn[key] = entry
    return entry


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
