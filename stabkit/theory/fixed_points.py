"""Fixed points and the mean-field quantities: q*, c*, chi_1, the depth scales and the phase.

:func:`mean_field` returns them all (:class:`MeanField`); :func:`q_star`, :func:`c_star`,
:func:`chi_1`, :func:`xi_q`, :func:`xi_c` and :func:`phase` one each. Found by safeguarded Newton
iterations written here (no SciPy). The public face is :mod:`stabkit.theory`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import _TINY, _check_grid, _check_scalar
from stabkit.theory.closed_forms import AFFINE, affine_slope
from stabkit.theory.quadrature import DEFAULT_ORDER, _Kernel, _out, _prepare, _two_d, _variances

#: Phase codes returned by :func:`phase` and :attr:`MeanField.phase`.
PHASE_NAMES = {-1: "ordered", 0: "critical", 1: "chaotic", 2: "unbounded"}
_Q_MAX = 1e30  # a q-map iterate beyond this is taken to diverge (q* = inf)
_MAX_ITER = 100  # Newton / fixed-point steps for q*
_C_ITER = 60  # Newton steps for c*


def _q_star_1(k: _Kernel, sw, sb, q0):
    """The limit of q -> Q(q) from q0: Newton where Q'(q) < 1, plain iteration elsewhere.

    Q'(q) = sigma_w^2 E[phi'^2 + phi phi''] (Price's theorem). For a concave Q (tanh, erf) the
    Newton iterates approach q* monotonically; a Q with slope >= 1 is iterated as the network
    would, and an iterate above 1e30 is declared divergent (q* = inf).
    """

    def body(state):
        q, _, i = state
        e2, _, _, slope = k.diag(q)
        big_q, dq = sw * e2 + sb, sw * slope
        newton = q - (big_q - q) / (dq - 1.0)
        q_new = jnp.where((dq < 1.0) & jnp.isfinite(newton), jnp.maximum(newton, 0.0), big_q)
        q_new = jnp.where(q_new > _Q_MAX, jnp.inf, q_new)
        return q_new, q, i + 1

    def cond(state):
        q, prev, i = state
        moving = jnp.abs(q - prev) > 1e-15 * q + _TINY  # q* may be as small as sigma_b^2: 1e-222
        return (i < _MAX_ITER) & jnp.isfinite(q) & moving

    if k.kind in AFFINE:  # an affine map: Q(q) = a q + sigma_b^2
        a = affine_slope(k.kind, sw)
        fixed = sb / jnp.where(a < 1.0, 1.0 - a, 1.0)
        stays = jnp.where(sb == 0.0, q0 * (a == 1.0), jnp.inf)  # q = 0 with no bias stays 0
        stays = jnp.where((sb == 0.0) & (q0 == 0.0), 0.0, jnp.where(a == 1.0, stays, jnp.inf))
        return jnp.where(a < 1.0, fixed, stays)
    q, prev, _ = jax.lax.while_loop(cond, body, (q0, jnp.full_like(q0, -1.0), 0))
    # Still rising where the map expands after _MAX_ITER steps: a slow divergence.
    rising = (q > prev * (1 + 1e-9)) & (k.diag(jnp.where(jnp.isfinite(q), q, 1.0))[3] * sw >= 1)
    return jnp.where(rising, jnp.inf, q)


def _c_star_1(k: _Kernel, sw, sb, q, chaotic):
    """The stable fixed point of the c-map at q: 1 unless chaotic; else Newton from c = 0.

    C(c) is a power series in c with non-negative coefficients (the Hermite expansion of the
    kernel), so C(c) - c is convex on [0, 1] with C(0) - 0 >= 0: Newton from 0 rises monotonically
    to the smallest root c* <= 1 (a root-finding step never moves down, never past 1).
    """
    big_q = sw * k.diag(q)[0] + sb

    def body(state):
        c, _, i, _ = state
        e12, d12 = k.cross(q, c)
        f = (sw * e12 + sb) / big_q - c
        df = sw * q * d12 / big_q - 1.0
        step = jnp.where(df < 0, -f / df, jnp.inf)
        c_new = jnp.clip(c + jnp.where(jnp.isfinite(step), step, jnp.inf), c, 1.0)
        return c_new, c, i + 1, d12

    def cond(state):
        c, prev, i, _ = state
        return chaotic & (i < _C_ITER) & (jnp.abs(c - prev) > 1e-14)

    start = jnp.where(chaotic, 0.0, 1.0)
    init = (start, jnp.full_like(start, -1.0), 0, jnp.full_like(start, jnp.nan))
    c, _, _, d12 = jax.lax.while_loop(cond, body, init)
    # E[phi'(u1) phi'(u2)] at the last step's c (within 1e-14 of c*): chi_c without another 2-D
    # quadrature, so that points that skip the loop cost nothing.
    return c, d12


def _xi(chi):
    """-1/log(chi) for chi < 1, inf at chi = 1, NaN above (no attracting fixed point)."""
    safe = jnp.where(chi < 1.0, chi, 0.5)
    return jnp.where(chi < 1.0, -1.0 / jnp.log(safe), jnp.where(chi == 1.0, jnp.inf, jnp.nan))


def _phase_code(chi1, atol):
    code = jnp.where(chi1 < 1.0 - atol, -1, jnp.where(chi1 > 1.0 + atol, 1, 0))
    return jnp.where(jnp.isnan(chi1), 2, code).astype(jnp.int8)


def _solve_q(k: _Kernel, sw, sb, q0, atol):
    """q*, chi_1, chi_q and the phase code at one point."""
    q = _q_star_1(k, sw, sb, q0)
    finite = jnp.isfinite(q)
    _, d2, _, slope = k.diag(jnp.where(finite, q, 1.0))  # a placeholder where q* = inf
    chi1, chiq = sw * d2, sw * slope
    if k.kind not in AFFINE:  # only these have a q-independent chi_1 at q* = inf
        chi1 = jnp.where(finite, chi1, jnp.nan)
    return q, chi1, jnp.where(finite, chiq, jnp.nan), _phase_code(chi1, atol)


def _solve_c(k: _Kernel, sw, sb, q, chi1, code, with_c):
    """c* and chi_c at one point, given its q* and phase (NaN unless ``with_c``)."""
    finite = jnp.isfinite(q)
    qs = jnp.where(finite, q, 1.0)
    chaotic = (code == 1) & finite & with_c
    c, d12 = _c_star_1(k, sw, sb, qs, chaotic)
    chic = jnp.where(chaotic, sw * d12, chi1)
    keep = finite & with_c
    return jnp.where(keep, c, jnp.nan), jnp.where(keep, chic, jnp.nan)


@functools.partial(jax.jit, static_argnames=("k",))
def _solve(k, sw, sb, q0, atol, with_c):
    # with_c is data, not static: one compilation per kernel serves chi_1/phase (the c* loops
    # then exit at once) and mean_field.
    # lax.map in batches: a 2-D quadrature holds order**2 values per point, and the while loops of
    # a batch run until its slowest point converges.
    q, chi1, chiq, code = jax.lax.map(
        lambda a: _solve_q(k, *a, atol), jnp.stack([sw, sb, q0], axis=-1), batch_size=256
    )
    # Newton for c* slows down as chi_1 -> 1 (c* -> 1 becomes a double root): sorting by chi_1
    # puts the slow points in the same batches and lets the others stop early.
    perm = jnp.argsort(chi1)
    c, chic = jax.lax.map(
        lambda a: _solve_c(k, *a, with_c),
        tuple(v[perm] for v in (sw, sb, q, chi1, code)),
        batch_size=256,
    )
    inv = jnp.argsort(perm)
    c, chic = c[inv], chic[inv]
    return q, c, chi1, chic, chiq, _xi(chiq), _xi(chic), code


# -------------------------------------------------------------------------- public: fixed points


class MeanField(NamedTuple):
    """The mean-field description of a (sigma_w^2, sigma_b^2) point, or of a grid of them.

    Attributes:
        q_star: the limit of the q-map from ``q0``; ``inf`` where it diverges.
        c_star: the stable fixed point of the c-map (1 unless chaotic).
        chi_1: :math:`\\sigma_w^2 E[\\phi'(u)^2]` at :math:`q^*`.
        chi_c: :math:`\\sigma_w^2 E[\\phi'(u_1)\\phi'(u_2)]` at :math:`c^*` (= chi_1 unless
            chaotic).
        chi_q: :math:`\\sigma_w^2 E[\\phi''(u)\\phi(u) + \\phi'(u)^2]` at :math:`q^*`, the slope of
            the q-map.
        xi_q: :math:`-1/\\log \\chi_q`; inf where chi_q = 1, NaN where chi_q > 1.
        xi_c: :math:`-1/\\log \\chi_c`; inf at criticality.
        phase: int8 codes, :data:`PHASE_NAMES`: -1 ordered, 0 critical (``|chi_1 - 1| <= atol``),
            1 chaotic, 2 unbounded (q* = inf and no closed form for chi_1 there).
    """

    q_star: np.ndarray
    c_star: np.ndarray
    chi_1: np.ndarray
    chi_c: np.ndarray
    chi_q: np.ndarray
    xi_q: np.ndarray
    xi_c: np.ndarray
    phase: np.ndarray


def _mean_field(activation, sigma_w2, sigma_b2, q0, order, method, atol, with_c) -> MeanField:
    sw, sb = _variances(sigma_w2, sigma_b2)
    q0 = _check_grid(q0, "q0 (the starting variance)", lo=0.0)
    atol = _check_scalar(atol, "atol", lo=0.0)
    grids = {"sigma_w2": sw, "sigma_b2": sb, "q0": q0}
    k, shape, (sw, sb, q0) = _prepare(
        activation, order, method, grids, per_point=_two_d, at_once=256, what="the fixed points"
    )
    with jax.enable_x64(True):
        res = _solve(k, *(jnp.asarray(a) for a in (sw, sb, q0)), atol, bool(with_c))
        res = [np.asarray(a) for a in res]
    fields = [_out(a, shape) for a in res[:-1]] + [_out(res[-1], shape, np.int8)]
    return MeanField(*fields)


def mean_field(
    activation: Any,
    sigma_w2: ArrayLike,
    sigma_b2: ArrayLike,
    *,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
    atol: float = 1e-9,
) -> MeanField:
    """Fixed points, slopes, depth scales and phase for every (sigma_w^2, sigma_b^2).

    Args:
        activation, sigma_w2, sigma_b2, order, method: as for :func:`q_map`.
        q0: where the q-map iteration starts (matters only where q* is not unique: relu at
            (2, 0) keeps any q, and q = 0 is a fixed point of tanh without biases).
        atol: ``|chi_1 - 1| <= atol`` counts as critical.

    Returns:
        A :class:`MeanField` of float64 arrays (int8 ``phase``) of the broadcast shape.

    Examples:
        >>> mf = mean_field("tanh", 1.5, 0.05)
        >>> round(float(mf.q_star), 4), round(float(mf.c_star), 4), round(float(mf.chi_1), 4)
        (0.418, 1.0, 0.9386)
        >>> PHASE_NAMES[int(mf.phase)], round(float(mf.xi_c), 2)
        ('ordered', 15.79)
    """
    return _mean_field(activation, sigma_w2, sigma_b2, q0, order, method, atol, True)


def q_star(activation: Any, sigma_w2: ArrayLike, sigma_b2: ArrayLike, **kwargs) -> np.ndarray:
    """The fixed point :math:`q^* = \\mathcal{Q}(q^*)` reached from ``q0`` (inf if none).

    The limit of iterating the q-map from ``q0`` (default 1), found by Newton steps where the map
    contracts. Relu's and linear's maps are affine: :math:`q^* = \\sigma_b^2 / (1 - a)` for a
    slope :math:`a < 1` (:math:`a = \\sigma_w^2/2`, resp. :math:`\\sigma_w^2`), ``q0`` itself at
    :math:`a = 1, \\sigma_b^2 = 0`, inf otherwise. Keyword arguments as for :func:`mean_field`.

    Examples:
        >>> float(q_star("relu", 1.0, 0.5))  # sigma_b^2 / (1 - sigma_w^2 / 2)
        1.0
        >>> float(q_star("relu", 3.0, 0.5))
        inf
    """
    return _mean_field(activation, sigma_w2, sigma_b2, *_kw(kwargs), False).q_star


def c_star(activation: Any, sigma_w2: ArrayLike, sigma_b2: ArrayLike, **kwargs) -> np.ndarray:
    """The stable fixed point :math:`c^*` of the c-map at :math:`q^*` (1 unless chaotic).

    Examples:
        >>> round(float(c_star("tanh", 3.0, 0.05)), 4)
        0.2993
    """
    return _mean_field(activation, sigma_w2, sigma_b2, *_kw(kwargs), True).c_star


def chi_1(activation: Any, sigma_w2: ArrayLike, sigma_b2: ArrayLike, **kwargs) -> np.ndarray:
    """:math:`\\chi_1 = \\sigma_w^2 E[\\phi'(\\sqrt{q^*} z)^2]`, the per-layer gradient gain.

    Examples:
        >>> float(chi_1("relu", 1.5, 0.3))  # sigma_w^2 / 2
        0.75
    """
    return _mean_field(activation, sigma_w2, sigma_b2, *_kw(kwargs), False).chi_1


def xi_q(activation: Any, sigma_w2: ArrayLike, sigma_b2: ArrayLike, **kwargs) -> np.ndarray:
    """:math:`\\xi_q = -1/\\log(\\sigma_w^2 E[\\phi''\\phi + \\phi'^2])` at :math:`q^*`.

    Examples:
        >>> round(float(xi_q("relu", 1.0, 0.1)), 4)  # -1 / log(1/2)
        1.4427
    """
    return _mean_field(activation, sigma_w2, sigma_b2, *_kw(kwargs), False).xi_q


def xi_c(activation: Any, sigma_w2: ArrayLike, sigma_b2: ArrayLike, **kwargs) -> np.ndarray:
    """:math:`\\xi_c = -1/\\log \\chi_c` at :math:`c^*`; inf at criticality.

    Examples:
        >>> float(xi_c("relu", 2.0, 0.0))
        inf
    """
    return _mean_field(activation, sigma_w2, sigma_b2, *_kw(kwargs), True).xi_c


def phase(activation: Any, sigma_w2: ArrayLike, sigma_b2: ArrayLike, **kwargs) -> np.ndarray:
    """The phase code of every point: -1 ordered, 0 critical, 1 chaotic (:data:`PHASE_NAMES`).

    Decided by :math:`\\chi_1` alone (critical when ``|chi_1 - 1| <= atol``, default 1e-9); 2
    ("unbounded") where :math:`q^* = \\infty` and :math:`\\chi_1` has no closed form there.
    Keyword arguments as for :func:`mean_field`.

    Examples:
        >>> phase("tanh", [0.5, 1.0, 4.0], 0.0).tolist()
        [-1, 0, 1]
    """
    return _mean_field(activation, sigma_w2, sigma_b2, *_kw(kwargs), False).phase


def _kw(kwargs: dict) -> tuple:
    allowed = {"q0": 1.0, "order": DEFAULT_ORDER, "method": "auto", "atol": 1e-9}
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; valid: {list(allowed)}")
    allowed.update(kwargs)
    return allowed["q0"], allowed["order"], allowed["method"], allowed["atol"]
