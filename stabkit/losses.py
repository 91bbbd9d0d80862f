"""The built-in losses of a network's output, by name: one registry for ``trace`` and the sweep.

Both regress the output ``y`` to a target of 0 and are computed in float32 (float64 for float64
nets) from the output; the gradient enters the network in its own dtype:

* ``mse`` = 0.5 mean(y^2) over all entries: its gradient ``y / N`` also carries the forward
  signal's scale;
* ``sum`` = sum(y): its gradient is all ones, so the backward statistics show the network's
  Jacobian alone.

:func:`stabkit.trace` differentiates :func:`whole_array_loss` with ``jax.grad``; the sweep kernel
reduces per configuration with its own (chunk-independent) reductions and writes the output
gradient from :attr:`Loss.output_grad`: both read the formulas from :data:`LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from stabkit._checks import _first_line
from stabkit._numerics import compute_dtype

__all__ = ["LOSSES", "Loss", "check_loss_callable", "get_loss", "loss_names", "whole_array_loss"]

Reduce = Callable[[jax.Array], jax.Array]


class Loss(NamedTuple):
    """One loss: its value and its gradient with respect to the output ``y``.

    Attributes:
        value: ``value(y, mean, total)``, the loss of ``y`` (in the compute dtype) given the
            reductions to use, a mean and a sum over the entries of one network's output.
        output_grad: ``output_grad(y, n)``, the gradient ``dL/dy`` for ``n`` output entries.
    """

    value: Callable[[jax.Array, Reduce, Reduce], jax.Array]
    output_grad: Callable[[jax.Array, int], jax.Array]


def _mse(y, mean, total):
    del total
    return 0.5 * mean(jnp.square(y))


def _sum(y, mean, total):
    del mean
    return total(y)


LOSSES: dict[str, Loss] = {
    "mse": Loss(_mse, lambda y, n: y * (1.0 / n)),
    "sum": Loss(_sum, lambda y, n: jnp.ones_like(y)),
}


def loss_names() -> tuple[str, ...]:
    """The built-in losses: ``mse`` = 0.5 mean(y^2) over all entries, ``sum`` = sum(y)."""
    return tuple(sorted(LOSSES))


def get_loss(name: str) -> Loss:
    """The :class:`Loss` called ``name``.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: an unknown name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name, got {type(name).__name__} {name!r}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(loss_names())}")
    return LOSSES[name]


def _whole(loss: Loss) -> Callable[[jax.Array], jax.Array]:
    def fn(y: jax.Array) -> jax.Array:
        return loss.value(y.astype(compute_dtype(y.dtype)), jnp.mean, jnp.sum)

    return fn


# One function object per loss, built once: trace's kernel is compiled per loss function.
_WHOLE = {name: _whole(loss) for name, loss in LOSSES.items()}


def whole_array_loss(name: str) -> Callable[[jax.Array], jax.Array]:
    """The loss ``name`` of a whole output array, in the compute dtype (what ``trace`` uses)."""
    get_loss(name)
    return _WHOLE[name]


def check_loss_callable(loss_fn: Callable, shape: tuple[int, ...], dtype: Any) -> None:
    """A loss callable must map the ``(batch, out_dim)`` output to a real floating scalar.

    Traced once with ``jax.eval_shape`` (nothing compiles, nothing runs).

    Raises:
        TypeError: the callable fails when traced, or returns no array or a non-floating one.
        ValueError: it returns an array that is not a scalar.
    """
    arg = jax.ShapeDtypeStruct(shape, dtype)
    try:
        out = jax.eval_shape(lambda y: loss_fn(y), arg)  # a lambda: eval_shape keeps weak refs
    except Exception as err:  # whatever the user's callable raises while traced
        raise TypeError(
            f"loss {loss_fn!r} failed on the network's output (shape {shape}, {dtype}): "
            f"{_first_line(err)} (it must be a JAX-traceable loss(y) -> scalar)"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"loss {loss_fn!r} must return a scalar array; on the output (shape {shape}, "
            f"{dtype}) it returned {type(out).__name__}"
        )
    if out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise (ValueError if out.shape != () else TypeError)(
            f"loss {loss_fn!r} must return a real floating-point scalar (shape ()), the value "
            f"jax.grad differentiates; on the output (shape {shape}, {dtype}) it returned shape "
            f"{tuple(out.shape)} dtype {out.dtype}"
        )
