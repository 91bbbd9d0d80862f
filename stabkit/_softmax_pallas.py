"""A Pallas (Triton) kernel for the forward of :func:`stabkit.log_softmax` over the last axis.

Private and opt-in: ``stabkit.log_softmax`` runs it only on a GPU backend, for a float32 (or
narrower, computed in float32) array without ``where=`` whose last axis is a power of two of at
most ``MAX_COLS`` entries, and only when the environment variable ``STABKIT_PALLAS_SOFTMAX`` is
``1`` when the function is first traced (``fits``). It has not been timed on a GPU yet:
``benchmarks/bench_gpu.py`` measures it against the XLA path and a copy, and the dispatch becomes
the default once it wins there. On CPU it runs only in interpret mode
(``tests/test_softmax_pallas.py``).

Each program loads ``block_rows`` whole rows once, so memory sees one read and one write, as a
copy does; XLA's fused reductions may read a row up to three times. The arithmetic is
``_softmax_core``'s: the max with NaN rows reported, ``d = x - m``, the sum ``u`` of
``exp(d)`` below the max and the tie count ``c``, ``log_softmax = d - log1p(u + c - 1)``
(Blanchard, Higham & Higham), so the accuracy contract of :mod:`stabkit.stable_softmax` holds.
Derivatives come from ``_softmax_core``'s JVP rule (only the primal is replaced).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from stabkit._softmax_core import _log1p

# Rows of up to this many float32 entries are loaded whole (128 KiB per row).
MAX_COLS = 32768
# Entries per program: a few rows of a short axis, one row of a long one.
_BLOCK_ENTRIES = 16384


def enabled() -> bool:
    """True where ``STABKIT_PALLAS_SOFTMAX=1`` asks for the kernel on GPU."""
    return os.environ.get("STABKIT_PALLAS_SOFTMAX", "0") == "1"


def fits(x: jax.Array, mask, axes: tuple[int, ...]) -> bool:
    """Whether the kernel applies to a log_softmax of ``x`` (in its compute dtype) over ``axes``."""
    n = x.shape[-1] if x.ndim else 0
    return (
        enabled()
        and jax.default_backend() == "gpu"
        and mask is None
        and x.dtype == jnp.float32
        and axes == (x.ndim - 1,)
        and 0 < n <= MAX_COLS
        and n & (n - 1) == 0
    )


def _block_rows(rows: int, n: int) -> int:
    b = max(1, _BLOCK_ENTRIES // n)
    while rows % b:
        b //= 2
    return b


def _triton_params(entries: int):
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=min(16, max(4, entries // 2048)), num_stages=1)


def _kernel(x_ref, o_ref):
    x = x_ref[...].astype(jnp.float32)
    nan = jnp.isnan(x)
    bad = jnp.max(jnp.where(nan, 1.0, 0.0), axis=1, keepdims=True)
    # The max ignoring NaN (a NaN row is reported below, not by the max's NaN semantics).
    m = jnp.max(jnp.where(nan, -jnp.inf, x), axis=1, keepdims=True)
    # An empty row (all -inf): m is raised to the most negative finite number, d = -inf.
    d = x - jnp.maximum(m, jnp.finfo(jnp.float32).min)
    u = jnp.sum(jnp.where(d < 0, jnp.exp(d), 0.0), axis=1, keepdims=True)
    c = jnp.sum(jnp.where(d == 0, 1.0, 0.0), axis=1, keepdims=True)
    t = u + (c - 1)
    out = d - _log1p(jnp.maximum(t, 0.0))
    # A NaN or +inf row: NaN everywhere (inf / inf), as the XLA path gives.
    out = jnp.where((bad > 0) | (m == jnp.inf), jnp.nan, out)
    o_ref[...] = out.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("interpret",))
def log_softmax(x: jax.Array, *, interpret: bool = False) -> jax.Array:
    """log_softmax of ``x`` over its last axis with the kernel (no validation: see ``fits``).

    Args:
        x: floating array whose last axis has a power-of-two length of at most ``MAX_COLS``.
        interpret: run the kernel in Pallas' interpreter (CPU tests).

    Returns:
        An array of ``x``'s shape and dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> log_softmax(jnp.array([[0.0, 0.0, -jnp.inf, 0.0]]), interpret=True)
        Array([[-1.0986123, -1.0986123,       -inf, -1.0986123]], dtype=float32)
    """
    shape = x.shape
    n = shape[-1]
    x2 = x.reshape(-1, n)
    rows = x2.shape[0]
    b = _block_rows(rows, n)
    # Enough warps that a 32768-entry block is 64 values a thread, not 256 (register spills).
    params = {} if interpret else {"compiler_params": _triton_params(b * n)}
    out = pl.pallas_call(
        _kernel,
        out_shape=jax.ShapeDtypeStruct(x2.shape, x.dtype),
        grid=(rows // b,),
        in_specs=[pl.BlockSpec((b, n), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((b, n), lambda i: (i, 0)),
        interpret=interpret,
        **params,
    )(x2)
    return out.reshape(shape)
