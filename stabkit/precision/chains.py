"""The chain ``x_k = x_{k-1} * scale`` run on the device, step by step, under ``jit``."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import bounded_int, check_memory, format_bytes, memory_limit
from stabkit.precision.depths import (
    _chain_args,
    _first_step_beyond,
)
from stabkit.precision.formats import _format, _np_dtype, _x64
from stabkit.precision.ranges import _limits

#: The most steps :func:`chain` runs: ``lax.scan``'s step counter is an int32. A derived step
#: count beyond it (``1 + 2**-52`` in float64 needs about 3.2e18 steps) would otherwise reach XLA,
#: which aborts the interpreter ("overflow in static extent product").
_MAX_CHAIN_STEPS = 2**31 - 2

# Bytes per step of chain(): the scan's stacked output, the concatenated trajectory and the copy
# to the host, each one value of the dtype per step.
_CHAIN_COPIES = 3


@functools.partial(jax.jit, static_argnames="steps")
def _chain_kernel(x0: jax.Array, scale: jax.Array, steps: int) -> jax.Array:
    def body(x, _):
        y = x * scale
        return y, y

    _, ys = jax.lax.scan(body, x0, None, length=steps)
    return jnp.concatenate([x0[None], ys])


def chain(
    scale: float,
    dtype: Any,
    x0: float = 1.0,
    *,
    steps: int | None = None,
    device: jax.Device | None = None,
) -> np.ndarray:
    """Run ``x_k = x_{k-1} * scale`` in ``dtype`` on the device under ``jit``; return every x_k.

    The device's own arithmetic decides the rounding, overflow and flushing, so comparing this
    trajectory with :func:`overflow_depth` / :func:`underflow_depth` checks the host simulation
    against the hardware. ``scale`` and ``x0`` are jit arguments: one compilation serves every
    scale and start value of a given dtype and length.

    Args:
        scale: the factor (non-zero, finite); rounded to ``dtype``. Negative scales alternate sign.
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`).
        x0: starting value, finite and non-zero in ``dtype``.
        steps: number of multiplications. ``None`` runs a few steps past the closed-form overflow
            (``|scale| > 1``) or IEEE underflow (``|scale| < 1``) step; required when the rounded
            ``|scale| == 1``.
        device: where to run; ``None`` means the default device.

    Returns:
        A NumPy array of shape ``(steps + 1,)`` and dtype ``dtype``: ``x_0, ..., x_steps``, copied
        to the host (so a float64 trajectory stays float64 outside ``enable_x64``).

    Raises:
        ValueError: unknown dtype; a bad ``scale`` or ``x0`` (as in :func:`overflow_depth`);
            ``steps < 1``; ``steps=None`` with ``|scale|`` rounding to 1; a number of steps,
            given or derived, beyond ``2**31 - 2`` (lax.scan counts in int32) or beyond memory
            (three values of the dtype a step). A derived count is refused naming ``scale`` and
            the closed-form step: ``1 + 2**-52`` in float64 needs about 3.2e18 steps, which used to
            reach XLA and abort the interpreter.
        TypeError: an integer dtype, or ``device`` that is not a ``jax.Device``.

    Examples:
        >>> xs = chain(1.5, "float16", steps=29)
        >>> xs.dtype, float(xs[27]), float(xs[28]), float(xs[29])
        (dtype('float16'), 56832.0, inf, inf)
        >>> from stabkit.precision import underflow_depth
        >>> xs = chain(0.5, "float32", steps=160)  # 0 at 127 on XLA:CPU (flushes), else 150
        >>> int(np.argmax(xs == 0)) == underflow_depth(0.5, "float32").step
        True
    """
    fmt = _format(dtype)
    s, x = _chain_args(scale, x0, fmt)
    itemsize = _np_dtype(fmt).itemsize
    # Every step count is bounded here, before it becomes a static scan length: XLA aborts the
    # interpreter on a length whose buffer size overflows, and allocates late on a merely huge one.
    memory = memory_limit()
    limit = min(_MAX_CHAIN_STEPS, memory // (_CHAIN_COPIES * itemsize) - 1)
    if steps is None:
        if abs(s) == 1:
            raise ValueError(f"scale={scale} is {s} in {fmt.name}: pass steps explicitly")
        lim = _limits(fmt.name)
        grow = abs(s) > 1
        threshold = lim.max if grow else lim.smallest_subnormal
        needed, k = _first_step_beyond(x, s, threshold, grow)
        if needed + 4 > limit:
            raise ValueError(
                f"scale={scale} needs {needed} steps to {'overflow' if grow else 'underflow'} "
                f"from x0={x} in {fmt.name} (the closed form k = log(threshold / |x0|) / "
                f"log|scale| = {k:.6g}), more than the {limit} steps chain can run (lax.scan "
                f"counts in int32; {format_bytes(_CHAIN_COPIES * itemsize)} a step of the "
                f"{format_bytes(memory)} available); that closed form is the answer "
                "(overflow_depth / underflow_depth refuse such chains too), or pass steps=N to "
                "run the first N steps"
            )
        steps = needed + 4
    steps = bounded_int(steps, "steps", 1, _MAX_CHAIN_STEPS, "lax.scan counts steps in int32")
    check_memory(_CHAIN_COPIES * (steps + 1) * itemsize, "steps", steps, f"a {fmt.name} chain")
    if device is None:
        device = jax.devices()[0]
    if not isinstance(device, jax.Device):
        raise TypeError(f"device must be a jax.Device or None, got {type(device).__name__}")
    dt = _np_dtype(fmt)
    with _x64(fmt):
        x_dev = jax.device_put(np.asarray(x, dt), device)
        s_dev = jax.device_put(np.asarray(s, dt), device)
        return np.asarray(_chain_kernel(x_dev, s_dev, steps))
