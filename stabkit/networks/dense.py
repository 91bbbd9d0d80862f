"""Dense branches: one layer ``phi(u W + b)``, or the MLP ``phi(u W1 + b1) W2 + b2``.

Both act on the last axis. Weights are drawn with :func:`stabkit.init.scaled_draw` (the named
initializer times the traced multiplier ``hyper["scale"]``), biases from
:math:`N(0, \\mathrm{bias\\_std}^2)` (exactly +0 when ``bias_std`` is 0, as
:func:`stabkit.mlp_init` makes them).

With ``float8`` (a :class:`stabkit.precision.Float8Recipe`) each weight matrix's product goes
through :func:`stabkit.precision.float8_matmul`, its state at ``params["float8"][<weight name>]``
(``"w_last"``, and ``"w"`` in the MLP), and the branch taps ``float8_underflow`` and
``float8_overflow``: the mean over its products of the forward fractions of ``x`` and of ``w``.
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
from stabkit.precision.float8 import Float8Recipe, float8_matmul, float8_meta

__all__ = ["bias_draw", "bias_draws", "dense_branch", "float8_taps", "matmul"]

_PRECISION = jax.lax.Precision.HIGHEST


def matmul(u: jax.Array, w: jax.Array) -> jax.Array:
    """``u @ w`` over the last axis of ``u``, at full precision (float32 means float32 on TPU)."""
    return jnp.einsum("...i,ij->...j", u, w, precision=_PRECISION)


def float8_taps(stats: list[dict]) -> dict[str, jax.Array]:
    """A block's float8 taps: the mean over its products' ``stats`` (from
    :func:`stabkit.precision.float8_matmul`) of the ``x`` and ``w`` underflow and overflow
    fractions."""
    taps = {}
    for kind in ("underflow", "overflow"):
        values = [s[f"{op}_{kind}"] for s in stats for op in ("x", "w")]
        taps[f"float8_{kind}"] = sum(values) / len(values)
    return taps


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


def dense_branch(
    phi: Activation,
    name: str,
    *,
    layers: int = 1,
    expansion: int = 1,
    float8: Float8Recipe | None = None,
) -> Branch:
    """A dense branch of one layer (``layers=1``) or two (``layers=2``: the hidden layer is
    ``expansion * width`` wide and the activation sits between the two maps); ``float8``: a
    validated recipe for its products (see the module docstring), ``None`` for plain ones."""
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
            params = {"w_last": ws[0], "b_last": bs[0]}
        else:
            params = {"w": ws[0], "b": bs[0], "w_last": ws[1], "b_last": bs[1]}
        if float8 is not None:
            params["float8"] = {k: float8_meta(float8) for k in params if k.startswith("w")}
        return params

    def apply(params, u, hyper, inner):
        del hyper
        if float8 is not None:
            return _apply_float8(params, u, inner)
        if layers == 1:
            return phi(inner(matmul(u, params["w_last"]) + params["b_last"])), {}
        a = phi(inner(matmul(u, params["w"]) + params["b"]))
        return matmul(a, params["w_last"]) + params["b_last"], {}

    def _apply_float8(params, u, inner):
        stats = []

        def product(v, key):
            y, s = float8_matmul(v, params[key], params["float8"][key], float8)
            stats.append(s)
            return y

        if layers == 1:
            f = phi(inner(product(u, "w_last") + params["b_last"]))
        else:
            a = phi(inner(product(u, "w") + params["b"]))
            f = product(a, "w_last") + params["b_last"]
        return f, float8_taps(stats)

    label = f"dense {name}" if layers == 1 else f"mlp {name} (x{expansion})"
    if float8 is not None:
        label += f", float8 {float8.scaling}"
    return Branch(init, apply, spatial=(0,), inner=layers == 1 or expansion == 1, name=label)
