"""The length and correlation maps and their iterates over depth: q_map, c_map, iterate_maps.

The public face is :mod:`stabkit.theory` (its docstring states the conventions and accuracy).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import _check_grid, _check_int, check_memory
from stabkit.theory.quadrature import (
    DEFAULT_ORDER,
    _cross_jit,
    _diag_jit,
    _one_d,
    _out,
    _prepare,
    _two_d,
    _variances,
)


def q_map(
    activation: Any,
    q: ArrayLike,
    sigma_w2: ArrayLike,
    sigma_b2: ArrayLike,
    *,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> np.ndarray:
    """The length map :math:`\\mathcal{Q}(q) = \\sigma_w^2 E_{u \\sim N(0, q)}[\\phi(u)^2] +
    \\sigma_b^2`: the next layer's pre-activation variance.

    Args:
        activation: a registered name (:func:`stabkit.activation_names`) or a JAX-traceable
            elementwise callable.
        q: this layer's pre-activation variance(s), >= 0.
        sigma_w2: weight variance(s) :math:`\\sigma_w^2 > 0` (weights :math:`N(0, \\sigma_w^2/n)`).
        sigma_b2: bias variance(s) :math:`\\sigma_b^2 \\ge 0`.
        order: quadrature nodes, >= 2 (ignored by a closed form).
        method: ``"auto"`` (closed form for linear, relu, erf; quadrature otherwise),
            ``"closed"`` or ``"quadrature"``.

    Returns:
        float64, the broadcast shape of ``q``, ``sigma_w2``, ``sigma_b2``.

    Raises:
        ValueError: a negative, NaN or inf variance, an empty grid, arrays that do not broadcast
            (both named, with their shapes), ``order < 2``, an unknown name or method, an
            activation callable that changes the shape, a call that would not fit in memory.
        TypeError: an activation that is neither a name nor a callable (or cannot be traced, or
            changes the dtype); a non-int ``order``; a non-numeric variance.

    Examples:
        >>> float(q_map("relu", 3.0, 2.0, 0.1))  # sigma_w^2 q / 2 + sigma_b^2
        3.1
        >>> round(float(q_map("tanh", 1.0, 1.0, 0.0)), 6)
        0.394294
    """
    sw, sb = _variances(sigma_w2, sigma_b2)
    q = _check_grid(q, "q (a variance)", lo=0.0)
    grids = {"q": q, "sigma_w2": sw, "sigma_b2": sb}
    k, shape, (q, sw, sb) = _prepare(
        activation, order, method, grids, per_point=_one_d, what="the q-map"
    )
    with jax.enable_x64(True):
        e2 = _diag_jit(k, jnp.asarray(q))[0]
        out = sw * np.asarray(e2) + sb
    return _out(out, shape)


def c_map(
    activation: Any,
    c: ArrayLike,
    q: ArrayLike,
    sigma_w2: ArrayLike,
    sigma_b2: ArrayLike,
    *,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> np.ndarray:
    """The correlation map :math:`\\mathcal{C}(c) = (\\sigma_w^2 E[\\phi(u_1)\\phi(u_2)] +
    \\sigma_b^2) / \\mathcal{Q}(q)`, for two inputs whose pre-activations have equal variance ``q``.

    :math:`(u_1, u_2)` are Gaussian with variances ``q`` and correlation ``c``; the quadrature is
    the ``order x order`` tensor product with :math:`u_1 = \\sqrt q z_1`,
    :math:`u_2 = \\sqrt q (c z_1 + \\sqrt{1 - c^2} z_2)`.

    Args:
        activation, sigma_w2, sigma_b2, order, method: as for :func:`q_map`.
        c: correlation(s) in [-1, 1].
        q: this layer's pre-activation variance(s), > 0.

    Returns:
        The next layer's correlation, float64, the broadcast shape.

    Examples:
        >>> round(float(c_map("relu", 0.0, 1.0, 2.0, 0.0)), 6)  # arc-cosine kernel: 1/pi
        0.31831
        >>> float(c_map("tanh", 1.0, 0.7, 1.5, 0.1))  # c = 1 is always a fixed point
        1.0
    """
    sw, sb = _variances(sigma_w2, sigma_b2)
    c = _check_grid(c, "c (a correlation)", lo=-1.0, hi=1.0)
    q = _check_grid(q, "q (a variance)", lo=0.0, closed=False)
    grids = {"c": c, "q": q, "sigma_w2": sw, "sigma_b2": sb}
    k, shape, (c, q, sw, sb) = _prepare(
        activation, order, method, grids, per_point=_two_d, what="the c-map"
    )
    with jax.enable_x64(True):
        e2, e12 = (np.asarray(a) for a in _cross_jit(k, jnp.asarray(q), jnp.asarray(c)))
    # |C(c)| <= 1 exactly; the 2-D and 1-D quadratures may round it just past 1.
    return _out(np.clip((sw * e12 + sb) / (sw * e2 + sb), -1.0, 1.0), shape)


#: Bytes per point and layer of iterate_maps' result: q and c, stacked by scan, copied to NumPy.
_ITERATE_BYTES = 48


class MapIterates(NamedTuple):
    """The maps iterated over depth: ``q[..., l-1]`` and ``c[..., l-1]`` describe layer ``l``."""

    q: np.ndarray
    c: np.ndarray


@functools.partial(jax.jit, static_argnames=("k", "depth"))
def _iterate(k, sw, sb, q_in, c_in, *, depth):
    def one(sw, sb, q_in, c_in):
        q1 = sw * q_in + sb
        c1 = jnp.where(q1 > 0, (sw * q_in * c_in + sb) / jnp.where(q1 > 0, q1, 1.0), 1.0)

        def step(carry, _):
            q, c = carry
            big_q = sw * k.diag(q)[0] + sb
            c_new = (sw * k.cross(q, c)[0] + sb) / big_q
            return (big_q, c_new), (q, c)

        _, (qs, cs) = jax.lax.scan(step, (q1, c1), None, length=depth)
        return qs, cs

    return jax.vmap(one)(sw, sb, q_in, c_in)


def iterate_maps(
    activation: Any,
    sigma_w2: ArrayLike,
    sigma_b2: ArrayLike,
    *,
    q_in: ArrayLike,
    c_in: ArrayLike = 1.0,
    depth: int,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> MapIterates:
    """Layer-by-layer :math:`q^l, c^l` (:math:`l = 1..` ``depth``) for two inputs of equal length.

    The inputs have mean square :math:`q_{in} = |x|^2/n` each and cosine similarity
    :math:`c_{in}`; the first layer is linear in them, :math:`q^1 = \\sigma_w^2 q_{in} +
    \\sigma_b^2`, :math:`c^1 = (\\sigma_w^2 q_{in} c_{in} + \\sigma_b^2)/q^1`, and then
    :math:`q^{l+1} = \\mathcal{Q}(q^l)`, :math:`c^{l+1} = \\mathcal{C}(c^l)` at :math:`q^l`. This is
    what a stabkit MLP (:func:`stabkit.mlp_init` with ``init="gaussian", scale=sigma_w,
    bias_std=sigma_b``) measures in the infinite-width limit.

    Args:
        activation, sigma_w2, sigma_b2, order, method: as for :func:`q_map`.
        q_in: the inputs' mean square, >= 0.
        c_in: their cosine similarity in [-1, 1] (default 1: one input).
        depth: layers, >= 1.

    Returns:
        :class:`MapIterates` of float64 arrays shaped ``broadcast + (depth,)``.

    Examples:
        >>> it = iterate_maps("relu", 2.0, 0.0, q_in=1.0, c_in=0.0, depth=3)
        >>> it.q.tolist(), [round(v, 4) for v in it.c.tolist()]
        ([2.0, 2.0, 2.0], [0.0, 0.3183, 0.4937])
    """
    sw, sb = _variances(sigma_w2, sigma_b2)
    q_in = _check_grid(q_in, "q_in (a mean square)", lo=0.0)
    c_in = _check_grid(c_in, "c_in (a correlation)", lo=-1.0, hi=1.0)
    depth = _check_int(depth, "depth", "lax.scan counts layers in int32")
    grids = {"sigma_w2": sw, "sigma_b2": sb, "q_in": q_in, "c_in": c_in}
    k, shape, arrays = _prepare(
        activation, order, method, grids, per_point=_two_d, what="one step of the maps"
    )
    n = math.prod(shape)
    check_memory(
        _ITERATE_BYTES * n * depth,
        "depth",
        depth,
        f"the q and c iterates of {n} point(s) (two float64 a layer, on the device and the host)",
    )
    with jax.enable_x64(True):
        qs, cs = _iterate(k, *(jnp.asarray(a) for a in arrays), depth=int(depth))
        qs, cs = np.asarray(qs), np.asarray(cs)
    return MapIterates(qs.reshape((*shape, depth)), cs.reshape((*shape, depth)))
