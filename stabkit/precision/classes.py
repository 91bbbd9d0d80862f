"""Counts of normal, subnormal, zero, inf and NaN entries, read from the bits."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stabkit._checks import floating_array, normalize_axis
from stabkit.precision.formats import _UINT, _classify, _format


class Census(NamedTuple):
    """How many entries of an array fall into each floating-point class (int32 counts).

    The five counts sum to the number of entries counted.
    """

    normal: jax.Array
    subnormal: jax.Array
    zero: jax.Array
    inf: jax.Array
    nan: jax.Array


def census(x: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Census:
    """Count normal, subnormal, zero, inf and NaN entries of ``x``, by bit pattern.

    The class of each entry is read from its bits (``lax.bitcast_convert_type`` to the unsigned
    integer of the same width), never from comparisons: XLA on CPU reads float32, bfloat16 and
    float64 subnormals as zero in comparisons (denormals-are-zero), so ``0 < |x| < tiny`` would
    miss exactly the values this function exists to find. Pure and shape-static: use it under
    ``jit``, ``vmap`` and inside ``lax.scan``.

    Args:
        x: array of a supported floating dtype (see :data:`SUPPORTED_DTYPES`), any shape.
        axis: axis or tuple of axes to count over; ``None`` (default) counts over all of them.

    Returns:
        A :class:`Census` of int32 arrays of shape ``x.shape`` without ``axis``; ``inf`` counts
        both signs, ``zero`` counts +0 and -0.

    Raises:
        TypeError: ``x`` is not a floating-point array.
        ValueError: the dtype is not supported, or an axis is out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([1.0, 1e-40, 0.0, -jnp.inf, jnp.nan, 3.0], jnp.float32)
        >>> c = census(x)
        >>> [int(v) for v in c]
        [2, 1, 1, 1, 1]
        >>> c._fields
        ('normal', 'subnormal', 'zero', 'inf', 'nan')
        >>> census(jnp.ones((2, 3), jnp.bfloat16), axis=1).normal
        Array([3, 3], dtype=int32)
    """
    x = floating_array(x)
    fmt = _format(x.dtype, "x.dtype")
    if axis is not None:
        axes = axis if isinstance(axis, tuple) else (axis,)
        axis = tuple(normalize_axis(a, x.ndim) for a in axes)
        if len(set(axis)) != len(axis):
            raise ValueError(f"axis={axes} repeats an axis")
    bits = jax.lax.bitcast_convert_type(x, _UINT[fmt.bits])
    masks = _classify(bits, fmt)
    return Census(*(jnp.sum(m, axis=axis, dtype=jnp.int32) for m in masks))
