"""Finite checks and an overflow-free global norm, the measurements the other fixes act on.

* :func:`all_finite`: whether a pytree holds no inf and no NaN.
* :func:`safe_global_norm`: the global 2-norm of a pytree, computed in at least float32 and scaled
  by a power of two near its largest entry, so that it overflows only where the result is not
  representable (``optax.global_norm`` overflows float16 updates of norm above 256).

``_floating_leaves`` checks every leaf before JAX sees any (a string or an int leaf is refused
with its path); ``_finite_norm`` is the norm of the finite entries that clipping scales by.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import is_floating_dtype
from stabkit._numerics import compute_dtype, exponent, pow2, safe_sqrt


def _floating_leaves(tree: Any, name: str = "updates") -> list[jax.Array]:
    """The leaves of ``tree`` as floating arrays; TypeError naming ``name`` and the leaf otherwise.

    Strings and other non-arrays are refused here (``"abc"`` is a pytree leaf, and JAX would
    fail on it deep inside); Python floats and NumPy scalars are accepted.
    """
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    except Exception as err:  # a broken pytree node
        raise TypeError(f"{name} must be a pytree of floating-point arrays: {err}") from err
    leaves = []
    for path, x in flat:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if isinstance(x, (bool, np.bool_, str, bytes)) or not (
            isinstance(x, (jax.Array, np.ndarray, np.generic, float, int))
            or hasattr(x, "__jax_array__")
        ):
            raise TypeError(
                f"{name} must be a pytree of floating-point arrays, got {where} = "
                f"{type(x).__name__} {x!r:.80}"
            )
        # the dtype is read before JAX sees the leaf: an int beyond int64 would overflow there
        dtype = np.dtype(np.float32) if isinstance(x, float) else getattr(x, "dtype", None)
        if dtype is None or not is_floating_dtype(dtype):
            kind = f"dtype {dtype}" if dtype is not None else type(x).__name__
            raise TypeError(
                f"{name} must be floating-point arrays, got {where} of {kind} {x!r:.80}"
            )
        leaves.append(x)
    return [jnp.asarray(x) for x in leaves]  # converted once every leaf has passed


def all_finite(tree: Any) -> jax.Array:
    """A boolean scalar: True when every entry of every leaf is finite (no inf, no NaN).

    Raises:
        TypeError: a leaf that is not a floating-point array (named by its path in ``tree``).

    Examples:
        >>> all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])})
        Array(False, dtype=bool)
        >>> all_finite({})
        Array(True, dtype=bool)
    """
    leaves = _floating_leaves(tree, "tree")
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def _finite_norm(leaves: list[jax.Array]) -> jax.Array:
    """The global norm of the finite entries, scaled by the largest so that it cannot overflow.

    The scale is a power of two applied as two multiplications by normal numbers: dividing by the
    largest entry would be a multiplication by its reciprocal (XLA's rewrite), and above 2**126
    that reciprocal is subnormal and flushed to 0 on CPU.
    """
    dtype = compute_dtype(jnp.result_type(*leaves)) if leaves else jnp.dtype(jnp.float32)
    if not leaves:
        return jnp.zeros((), dtype)
    finite = [jnp.where(jnp.isfinite(x), x, 0).astype(dtype) for x in leaves]
    big = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0) for x in finite]))
    # big = m * 2**e with m in [0.5, 1); the sum of squares of x * 2**-e is at most the size.
    # At big == 0 (or a subnormal big that reads as 0) e is 0 and the norm is 0: no 0/0 anywhere.
    # (zero and subnormals give the smallest normal exponent, minexp).
    e = jnp.maximum(exponent(big) + 1, jnp.finfo(dtype).minexp)
    lo, hi = e // 2, e - e // 2
    down = [pow2(-lo, dtype), pow2(-hi, dtype)]
    sq = sum(jnp.sum(jnp.square(x * down[0] * down[1])) for x in finite)
    return safe_sqrt(sq) * pow2(lo, dtype) * pow2(hi, dtype)


def safe_global_norm(tree: Any) -> jax.Array:
    """The global 2-norm :math:`\\sqrt{\\sum_i g_i^2}` of a pytree, without overflow.

    Computed in ``compute_dtype(dtype)`` as :math:`m \\sqrt{\\sum_i (g_i/m)^2}` with
    :math:`m = \\max_i |g_i|`, so it is finite whenever it is representable in that dtype (float16
    leaves of norm up to float32's max; ``optax.global_norm`` overflows to inf above 256 for
    float16). Returns inf if any entry is infinite, NaN if any is NaN (and no entry is inf).

    Args:
        tree: a pytree of floating arrays.

    Returns:
        A scalar of dtype ``compute_dtype(leaf dtype)``: float32, float64 for float64 leaves.

    Raises:
        TypeError: a leaf that is not a floating-point array (a string, an int, a bool, a PRNG
            key...), named by its path: ``tree['w']``.

    Examples:
        >>> safe_global_norm({"w": "abc"})
        Traceback (most recent call last):
        ...
        TypeError: tree must be a pytree of floating-point arrays, got tree['w'] = str 'abc'

        >>> import optax
        >>> g = {"w": jnp.full((4,), 300.0, jnp.float16)}
        >>> safe_global_norm(g), optax.tree.norm(g)
        (Array(600., dtype=float32), Array(inf, dtype=float16))
    """
    leaves = _floating_leaves(tree, "tree")
    norm = _finite_norm(leaves)
    if not leaves:
        return norm
    any_inf = jnp.any(jnp.asarray([jnp.any(jnp.isinf(x)) for x in leaves]))
    any_nan = jnp.any(jnp.asarray([jnp.any(jnp.isnan(x)) for x in leaves]))
    return jnp.where(any_inf, jnp.inf, jnp.where(any_nan, jnp.nan, norm)).astype(norm.dtype)
