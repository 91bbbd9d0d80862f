"""Dense branches: one layer ``phi(u W + b)``, or the MLP ``phi(u W1 + b1) W2 + b2``.

Both act on the last axis. Weights are drawn with :func:`stabkit.init.scaled_draw` (the named
initializer times the traced multiplier ``hyper["scale"]``), biases from
:math:`N(0, \\mathrm{bias\\_std}^2)` (exactly +0 when ``bias_std`` is 0, as
:func:`stabkit.mlp_init` makes them).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from stabkit._checks import positive_int
from stabkit._numerics import compute_dtype
from stabkit.activations import Activation
from stabkit.init import scaled_draws
from stabkit.networks.blocks import Branch

__all__ = ["bias_draw", "bias_draws", "dense_branch", "matmul"]

_PRECISION = jax.lax.Precision.HIGHEST


def matmul(u: jax.Array, w: jax.Array) -> jax.Array:
    """``u @ w`` over the last axis of ``u``, at full precision (float32 means float32 on TPU)."""
    return jnp.einsum("...i,ij->...j", u, w, precision=_PRECISION)


def bias_draw(key: jax.Array, n: int, dtype: Any, bias_std: Any) -> jax.Array:
    """``n`` biases from N(0, bias_std^2), exactly +0 where ``bias_std`` is 0 (may be traced)."""
    return bias_draws(key, [n], dtype, bias_std)[0]


def bias_draws(key: jax.Array, sizes: list[int], dtype: Any, bias_std: Any) -> list[jax.Array]:
    """Biases of several sizes in one random-number call (see :func:`stabkit.init.scaled_draws`)."""
    sdt = compute_dtype(dtype)
    std = jnp.asarray(bias_std, sdt)
    flat = jnp.where(std == 0, 0, std * jax.random.normal(key, (sum(sizes),), sdt)).astype(dtype)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [flat[a : a + n] for a, n in zip(starts, sizes, strict=True)]


def dense_branch(phi: Activation, name: str, *, layers: int = 1, expansion: int = 1) -> Branch:
    """A dense branch of one layer (``layers=1``) or two (``layers=2``: the hidden layer is
    ``expansion * width`` wide and the activation sits between the two maps)."""
    layers = positive_int(layers, "layers")
    expansion = positive_int(expansion, "expansion")
    if layers > 2:
        raise ValueError(f"layers must be 1 or 2, got {layers}")

    def init(key, width, dtype, init, hyper):
        # One random-number call for the weights and one for the biases: each call site costs
        # compile time (see stabkit.init.scaled_draws).
        kw, kb = jax.random.split(key)
        if layers == 1:
            shapes, sizes = [(width, width)], [width]
        else:
            hidden = expansion * width
            shapes, sizes = [(width, hidden), (hidden, width)], [hidden, width]
        ws = scaled_draws(kw, shapes, dtype, init=init, scale=hyper["scale"])
        bs = bias_draws(kb, sizes, dtype, hyper["bias_std"])
        if layers == 1:
            return {"w_last": ws[0], "b_last": bs[0]}
        return {"w": ws[0], "b": bs[0], "w_last": ws[1], "b_last": bs[1]}

    def apply(params, u, hyper, inner):
        del hyper
        if layers == 1:
            return phi(inner(matmul(u, params["w_last"]) + params["b_last"])), {}
        a = phi(inner(matmul(u, params["w"]) + params["b"]))
        return matmul(a, params["w_last"]) + params["b_last"], {}

    label = f"dense {name}" if layers == 1 else f"mlp {name} (x{expansion})"
    return Branch(init, apply, spatial=(0,), inner=layers == 1 or expansion == 1, name=label)
