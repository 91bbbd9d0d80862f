"""The closed-form Gaussian expectations of ``linear``, ``relu`` and ``erf``: their one home.

The quadrature kernel (:mod:`stabkit.theory.quadrature`), the fixed points, the critical line and
the profiles all read them from here (formulas in :mod:`stabkit.theory`'s docstring). Functions
take jnp float64 values (they run under ``vmap``); ``u ~ N(0, q)`` and ``(u1, u2)`` have variances
``q`` and correlation ``c``.
"""

from __future__ import annotations

import jax.numpy as jnp

#: The activations with closed forms (``method="auto"`` uses them).
CLOSED = ("linear", "relu", "erf")
#: The activations whose q-map is affine, ``Q(q) = a q + sigma_b^2`` (:func:`affine_slope`), so
#: that chi_1 does not depend on q* (finite even where q* = inf).
AFFINE = ("linear", "relu")
#: Where chi_1 = 1 for an affine map, whatever sigma_b^2: sigma_w^2 = 1 (linear), 2 (relu).
CRITICAL_SIGMA_W2 = {"linear": 1.0, "relu": 2.0}


def diag(kind: str, q):
    """(E[phi^2], E[phi'^2], E[phi'^4], E[phi'^2 + phi phi'']) at ``u ~ N(0, q)``."""
    if kind == "linear":
        one = jnp.ones_like(q)
        return q, one, one, one
    if kind == "relu":
        half = jnp.full_like(q, 0.5)
        return q / 2, half, half, half
    s4 = jnp.sqrt(1 + 4 * q)
    return (
        2 / jnp.pi * jnp.arcsin(2 * q / (1 + 2 * q)),
        4 / jnp.pi / s4,
        16 / jnp.pi**2 / jnp.sqrt(1 + 8 * q),
        4 / jnp.pi / ((1 + 2 * q) * s4),
    )


def cross(kind: str, q, c):
    """(E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)]) for ``c`` in [-1, 1]: the arc-cosine kernel
    (relu, Cho & Saul 2009) and Williams' kernel (erf, Williams 1997)."""
    if kind == "linear":
        return q * c, jnp.ones_like(q)
    if kind == "relu":
        theta = jnp.arccos(c)
        k0 = (jnp.pi - theta) / (2 * jnp.pi)
        return q / (2 * jnp.pi) * (jnp.sqrt(1 - c * c) + (jnp.pi - theta) * c), k0
    a = 1 + 2 * q
    return (
        2 / jnp.pi * jnp.arcsin(2 * q * c / a),
        4 / jnp.pi / jnp.sqrt(a * a - 4 * q * q * c * c),
    )


def fourth_moments(kind: str, q):
    """(E[phi^2 phi'^2], E[phi^4]) of an ``AFFINE`` activation, for the finite-width spreads."""
    if kind == "linear":
        return q, 3 * q * q
    return q / 2, 1.5 * q * q


def affine_slope(kind: str, sw):
    """The slope ``a`` of an ``AFFINE`` q-map: sigma_w^2 (linear) or sigma_w^2 / 2 (relu)."""
    return sw if kind == "linear" else sw / 2
