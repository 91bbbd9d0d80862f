"""The critical line: the sigma_w^2(sigma_b^2) where chi_1 = 1, by bisection in log sigma_w^2.

The public face is :mod:`stabkit.theory`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import _TINY, _check_grid, _check_scalar, _short
from stabkit.theory.closed_forms import AFFINE, CRITICAL_SIGMA_W2
from stabkit.theory.fixed_points import _q_star_1
from stabkit.theory.quadrature import DEFAULT_ORDER, _out, _prepare, _quad_bytes

_BISECT = 64  # bisection steps for the critical line: 2^-64 of the log-bracket width


@functools.partial(jax.jit, static_argnames=("k", "rungs"))
def _critical(k, sb, lo, hi, *, rungs):
    def chi(log_sw, sb):
        sw = jnp.exp(log_sw)
        q = _q_star_1(k, sw, sb, jnp.ones_like(sw))
        return sw * k.diag(jnp.where(jnp.isfinite(q), q, 1.0))[1]

    def one(sb):
        # A ladder lo, 2 lo, 4 lo, ... up to hi; the first rung where chi_1 >= 1 brackets the
        # crossing. Starting low keeps q* small where quadrature is accurate.
        ladder = jnp.minimum(jnp.log(lo) + jnp.log(2.0) * jnp.arange(rungs), jnp.log(hi))
        above = jax.vmap(chi, (0, None))(ladder, sb) >= 1.0
        j = jnp.argmax(above)
        ok = above[j] & (j > 0)
        a, b = ladder[jnp.maximum(j - 1, 0)], ladder[j]

        def step(_, ab):
            a, b = ab
            m = 0.5 * (a + b)
            below = chi(m, sb) < 1.0
            return jnp.where(below, m, a), jnp.where(below, b, m)

        a, b = jax.lax.fori_loop(0, _BISECT, step, (a, b))
        return jnp.where(ok, jnp.exp(0.5 * (a + b)), jnp.nan)

    return jax.lax.map(one, sb, batch_size=64)


def critical_line(
    activation: Any,
    sigma_b2: ArrayLike,
    *,
    bracket: tuple[float, float] = (1e-4, 1e4),
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> np.ndarray:
    """The critical :math:`\\sigma_w^2(\\sigma_b^2)` where :math:`\\chi_1 = 1`, by bisection.

    For each :math:`\\sigma_b^2`, :math:`\\chi_1(\\sigma_w^2)` (at its own :math:`q^*`) is
    evaluated on the ladder ``lo, 2 lo, 4 lo, ... hi``; the first rung where it reaches 1 and the
    one below bracket the crossing, which 64 bisection steps in :math:`\\log \\sigma_w^2` then
    pin down to rounding. Climbing from below finds the crossing nearest the ordered side and keeps
    :math:`q^*` small, where quadrature is accurate. NaN where no rung reaches 1. Where
    :math:`\\chi_1` only touches 1 (odd activations at :math:`\\sigma_b^2 = 0`, where
    :math:`\\chi_1 - 1 = O((\\sigma_w^2 - \\sigma_{w,c}^2)^2)` above the critical point) the root
    is known to about the square root of rounding, ~1e-8. Linear and relu are exact: 1 and 2.

    Args:
        activation, order, method: as for :func:`q_map`.
        sigma_b2: bias variance(s), >= 0.
        bracket: ``(lo, hi)`` with ``0 < lo < hi``: the sigma_w^2 search range.

    Returns:
        float64 :math:`\\sigma_w^2` of the shape of ``sigma_b2``.

    Examples:
        >>> [round(float(v), 4) for v in critical_line("tanh", [0.0, 0.05])]
        [1.0, 1.761]
        >>> float(critical_line("relu", 0.0)), round(float(critical_line("erf", 0.0)), 6)
        (2.0, 0.785398)
    """
    sb = _check_grid(sigma_b2, "sigma_b2 (the bias variance)", lo=0.0)
    if isinstance(bracket, (str, bytes, dict, set, frozenset)) or not hasattr(bracket, "__len__"):
        raise TypeError(f"bracket must be a pair (lo, hi) of numbers, got {_short(bracket)}")
    if len(bracket) != 2:
        raise ValueError(f"bracket must be a pair (lo, hi), got {len(bracket)} values")
    lo = _check_scalar(bracket[0], "bracket[0] (lo)", lo=0.0, closed=False)
    hi = _check_scalar(bracket[1], "bracket[1] (hi)", lo=0.0, closed=False)
    if not lo < hi:
        raise ValueError(f"bracket must satisfy 0 < lo < hi < inf, got ({lo!r}, {hi!r})")
    if lo < _TINY:  # the ladder's exp(log(lo)) and q* lose all precision among subnormals
        raise ValueError(
            f"bracket[0] (lo) must be at least {_TINY:.4g} (the smallest normal float64), "
            f"got {lo!r}"
        )
    # log2(hi) - log2(lo) where hi / lo overflows (a bracket from a subnormal lo).
    ratio = hi / lo
    span = math.log2(ratio) if math.isfinite(ratio) else math.log2(hi) - math.log2(lo)
    rungs = max(2, math.ceil(span) + 1)
    k, shape, (sb,) = _prepare(
        activation,
        order,
        method,
        {"sigma_b2": sb},
        per_point=lambda k: _quad_bytes(k, 1) * (rungs + 1),
        at_once=64,
        what=f"the critical line's ladder of {rungs} rungs",
    )
    if k.kind in AFFINE:  # chi_1 = sigma_w^2 or sigma_w^2 / 2 whatever q* is
        crit = CRITICAL_SIGMA_W2[k.kind]
        return _out(np.where((lo < crit) & (crit <= hi), crit, np.nan) + 0 * sb, shape)
    with jax.enable_x64(True):
        out = np.asarray(_critical(k, jnp.asarray(sb), lo, hi, rungs=rungs))
    return _out(out, shape)
