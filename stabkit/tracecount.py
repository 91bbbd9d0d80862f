"""Count what JAX traces and compiles: ``with count_traces() as c: ...; c.traces("f")``.

A sweep, a training run or a theory grid is meant to be a few compiled kernels whatever its size
and values; this is how the tests (and a researcher) check it. It listens to JAX's public
``jax.monitoring`` events, which carry the traced function's name: a trace of a Python function
to a jaxpr (``/jax/core/compile/jaxpr_trace_duration``, once per new signature of a ``jit``) and a
backend compilation (``/jax/core/compile/backend_compile_duration``). It replaces hand-kept
counters inside the package and JAX's private ``_cache_size()``.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> @jax.jit
    ... def double(x):
    ...     return 2 * x
    >>> x, y = jnp.ones(3), jnp.ones(4)
    >>> with count_traces() as c:
    ...     _ = double(x), double(x), double(y)
    >>> c.traces("double"), c.compiles("double")
    (2, 2)
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator

import jax

__all__ = ["TraceCount", "count_traces"]

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"

_LOCK = threading.Lock()
_ACTIVE: list[TraceCount] = []
_LISTENING = False


class TraceCount:
    """Traces and compilations seen while its ``count_traces`` block ran, by function name."""

    def __init__(self) -> None:
        self._traces: collections.Counter[str] = collections.Counter()
        self._compiles: collections.Counter[str] = collections.Counter()

    def traces(self, name: str | None = None) -> int:
        """Jaxpr traces of functions called ``name`` (``fn.__name__``), or of all functions."""
        return _count(self._traces, name)

    def compiles(self, name: str | None = None) -> int:
        """Backend compilations of ``jit``-ed functions called ``name``, or of all of them."""
        return _count(self._compiles, name)

    def __repr__(self) -> str:
        return f"TraceCount(traces={dict(self._traces)}, compiles={dict(self._compiles)})"


def _count(counter: collections.Counter, name: str | None) -> int:
    if name is None:
        return sum(counter.values())
    if not isinstance(name, str):
        raise TypeError(f"name must be a function name (str) or None, got {name!r}")
    return counter[name]


def _on_event(event: str, duration: float, **kwargs) -> None:
    del duration
    if event not in (_TRACE, _COMPILE):
        return
    name = str(kwargs.get("fun_name", "?"))
    if event == _COMPILE and name.startswith("jit(") and name.endswith(")"):
        name = name[4:-1]  # "jit(f)": the function's own name, as for traces
    with _LOCK:
        for count in _ACTIVE:
            (count._traces if event == _TRACE else count._compiles)[name] += 1


@contextlib.contextmanager
def count_traces() -> Iterator[TraceCount]:
    """Count the traces and compilations inside the block (nested blocks each count theirs).

    Yields:
        A :class:`TraceCount`; read it inside or after the block.
    """
    global _LISTENING
    count = TraceCount()
    with _LOCK:
        if not _LISTENING:  # one listener for the process (jax.monitoring cannot remove one)
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _LISTENING = True
        _ACTIVE.append(count)
    try:
        yield count
    finally:
        with _LOCK:
            _ACTIVE.remove(count)
