"""Signal-propagation theory: mean field (q-map, c-map, chi_1, depth scales) and Jacobian spectra.

A wide random network with weights :math:`W^l_{ij} \\sim N(0, \\sigma_w^2 / n)` and biases
:math:`b^l_i \\sim N(0, \\sigma_b^2)` has Gaussian pre-activations :math:`z^l = h^{l-1} W^l + b^l`
whose variance :math:`q^l` and the correlation :math:`c^l` between two inputs follow two maps
(Poole et al. 2016, eqs. 3 and 5; Schoenholz et al. 2017, eqs. 2-4), with
:math:`u \\sim N(0, q)` and :math:`(u_1, u_2)` Gaussian of variances :math:`q` and correlation
:math:`c`:

.. math::

    q^{l+1} = \\mathcal{Q}(q^l) = \\sigma_w^2 E[\\phi(u)^2] + \\sigma_b^2, \\qquad
    c^{l+1} = \\mathcal{C}(c^l) = \\frac{\\sigma_w^2 E[\\phi(u_1)\\phi(u_2)] + \\sigma_b^2}
                                        {\\mathcal{Q}(q^l)}.

The first layer sees the input itself: :math:`q^1 = \\sigma_w^2 |x|^2/n + \\sigma_b^2`. At the
fixed point :math:`q^*` the slope of the c-map at :math:`c = 1`,
:math:`\\chi_1 = \\sigma_w^2 E[\\phi'(u)^2]`, separates the **ordered** phase (:math:`\\chi_1 < 1`:
every pair of inputs becomes identical, :math:`c^* = 1`, gradients vanish) from the **chaotic** one
(:math:`\\chi_1 > 1`: :math:`c^* < 1`, gradients explode); :math:`\\chi_1 = 1` is **critical**.
Perturbations of the fixed points decay as :math:`e^{-l/\\xi}` with depth scales (Schoenholz et al.
2017, eqs. 6 and 9-10)

.. math::

    \\xi_q^{-1} = -\\log \\big(\\sigma_w^2 E[\\phi''(u)\\phi(u) + \\phi'(u)^2]\\big), \\qquad
    \\xi_c^{-1} = -\\log \\chi_c, \\quad \\chi_c = \\sigma_w^2 E[\\phi'(u_1)\\phi'(u_2)]
    \\text{ at } c^*,

so :math:`\\xi_c = -1/\\log \\chi_1` in the ordered phase and :math:`\\xi_c \\to \\infty` at
criticality: networks train up to about :math:`6 \\xi_c` layers.

Every expectation is computed in float64 (inside ``jax.enable_x64``, whatever the global flag) by
quadrature of a stated ``order`` (``order`` nodes in 1-D, ``order**2`` for the 2-D c-map), or by
a closed form where one exists (``method="auto"``):

* ``linear``: :math:`E[\\phi^2] = q`, :math:`E[\\phi_1\\phi_2] = qc`, :math:`\\chi_1 = \\sigma_w^2`.
* ``relu``: :math:`E[\\phi^2] = q/2`; the arc-cosine kernel (Cho & Saul 2009)
  :math:`E[\\phi_1\\phi_2] = \\frac{q}{2\\pi}(\\sin\\theta + (\\pi - \\theta)\\cos\\theta)`,
  :math:`E[\\phi'_1\\phi'_2] = \\frac{\\pi - \\theta}{2\\pi}`, :math:`\\theta = \\arccos c`; so
  :math:`\\chi_1 = \\sigma_w^2/2` and the only critical point is :math:`(2, 0)`.
* ``erf``: Williams' kernel (Williams 1997) :math:`E[\\phi_1\\phi_2] = \\frac{2}{\\pi}
  \\arcsin \\frac{2qc}{1 + 2q}`, :math:`E[\\phi'_1\\phi'_2] = \\frac{4}{\\pi}((1+2q)^2 -
  4q^2c^2)^{-1/2}`.

Accuracy of the quadrature (default ``order=128``): the rule is the trapezoidal rule after the
substitution :math:`z = \\sinh(t)/\\sqrt{\\max(q, 1)}`, so its nodes crowd where
:math:`\\phi(\\sqrt q z)` changes (on the scale :math:`1/\\sqrt q`) and widen geometrically in the
Gaussian's tails; for analytic integrands it converges exponentially (Trefethen & Weideman 2014).
Against mpmath, tanh's :math:`E[\\phi'^2]` is right to 1e-15 for :math:`q \\le 10^4` and 1e-13 at
:math:`q = 10^6` (Gauss-Hermite with 128 fixed nodes, used before, was 5% off at :math:`q = 16` and
90% at 144); erf agrees with its closed forms to ~1e-15, in the 2-D c-map too. Activations with
a kink in :math:`\\phi'` (elu, selu) converge like ``1/order**2`` (~1e-3 at 128).
:math:`\\phi''` is taken by autodiff, so :math:`\\phi\\phi''` must have no point mass where
:math:`\\phi \\ne 0` (true for every registered activation).

Every function takes an activation (a registered name or a JAX-traceable elementwise callable) and
variances that broadcast against each other (grids welcome: a 200 x 200 phase diagram is one
compiled, vectorized call), and returns NumPy float64 arrays of the broadcast shape (NumPy scalars
for scalar input). Fixed points are found by safeguarded Newton iterations written here (no SciPy);
the critical line by bisection in :math:`\\log \\sigma_w^2`.

:func:`predict_profile` follows the maps layer by layer for a whole network (pre- and
post-activation RMS, and the gradient RMS with the correction a mean-square loss needs), with the
finite-width spread of a measurement; :func:`predict_sweep` does it for every configuration of a
:func:`stabkit.sweep` and :func:`compare_sweep` judges the sweep against it at a tolerance that
shrinks like :math:`1/\\sqrt{n}`.

The second half is the spectrum of the input-output Jacobian :math:`J = \\partial h^L /
\\partial x` (:func:`jacobian_singular_values` measures it on sampled nets;
:func:`jacobian_spectrum_moments` predicts the mean and variance of its squared singular values by
free probability, Pennington, Schoenholz & Ganguli 2017).

References:
    B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein, S. Ganguli, "Exponential expressivity in deep
    neural networks through transient chaos", NeurIPS 2016.
    S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep information propagation",
    ICLR 2017 (the maps, chi_1, the depth scales and the tanh phase diagram).
    J. Pennington, S. S. Schoenholz, S. Ganguli, "Resurrecting the sigmoid in deep learning through
    dynamical isometry: theory and practice", NeurIPS 2017 (sec. 2: moments of the spectrum of
    JJ^T from the S-transform).
    Y. Cho, L. K. Saul, "Kernel methods for deep learning", NeurIPS 2009 (arc-cosine kernel, n=1).
    C. K. I. Williams, "Computing with infinite networks", NeurIPS 1997 (the erf kernel).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit.activations import get_activation
from stabkit.nets import MLPParams, mlp_apply

__all__ = [
    "PHASE_NAMES",
    "JacobianMoments",
    "MapIterates",
    "MeanField",
    "Profile",
    "c_map",
    "c_star",
    "chi_1",
    "compare_sweep",
    "critical_line",
    "iterate_maps",
    "jacobian_singular_values",
    "jacobian_spectrum_moments",
    "mean_field",
    "phase",
    "predict_profile",
    "predict_sweep",
    "q_map",
    "q_star",
    "weight_variance",
    "xi_c",
    "xi_q",
]

DEFAULT_ORDER = 128
#: Phase codes returned by :func:`phase` and :attr:`MeanField.phase`.
PHASE_NAMES = {-1: "ordered", 0: "critical", 1: "chaotic", 2: "unbounded"}
_CLOSED = ("linear", "relu", "erf")
_Q_MAX = 1e30  # a q-map iterate beyond this is taken to diverge (q* = inf)
_MAX_ITER = 100  # Newton / fixed-point steps for q*
_C_ITER = 60  # Newton steps for c*
_BISECT = 64  # bisection steps for the critical line: 2^-64 of the log-bracket width


# ------------------------------------------------------------------------------------ validation


def _check_order(order: Any) -> int:
    if isinstance(order, (bool, np.bool_)):
        raise TypeError(f"order must be an int >= 2, got the bool {order!r}")
    try:
        order = operator.index(order)
    except TypeError:
        raise TypeError(
            f"order (quadrature nodes) must be an int >= 2, got {type(order).__name__} {order!r}"
        ) from None
    if order < 2:
        raise ValueError(f"order (quadrature nodes) must be >= 2, got {order}")
    return order


def _check_grid(value: Any, name: str, *, lo: float, closed: bool = True, hi=None) -> np.ndarray:
    """``value`` as a non-empty float64 array in [lo, hi] (or (lo, hi] if not closed)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or array, got the bool {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a real number or array, got {type(value).__name__} {value!r}"
        ) from None
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); give at least one value")
    bad = ~np.isfinite(arr) | (arr < lo if closed else arr <= lo)
    if hi is not None:
        bad |= arr > hi
    if bad.any():
        first = arr.flat[int(np.flatnonzero(bad.ravel())[0])]
        where = "" if arr.ndim == 0 else f" (first bad entry of {arr.size})"
        rng = f"[{lo:g}, {hi:g}]" if hi is not None else (f">= {lo:g}" if closed else f"> {lo:g}")
        raise ValueError(f"{name} must be finite and {rng}, got {first!r}{where}")
    return arr


def _variances(sigma_w2: Any, sigma_b2: Any) -> tuple[np.ndarray, np.ndarray]:
    sw = _check_grid(sigma_w2, "sigma_w2 (the weight variance)", lo=0.0, closed=False)
    sb = _check_grid(sigma_b2, "sigma_b2 (the bias variance)", lo=0.0)
    return sw, sb


def _out(arr: Any, shape: tuple[int, ...], dtype=np.float64):
    out = np.asarray(arr, dtype=dtype).reshape(shape)
    return out[()] if out.ndim == 0 else out


# --------------------------------------------------------------------------------------- kernels


#: The sinh rule covers |z| <= _Z_MAX standard deviations (the Gaussian weight beyond is e^-50).
_Z_MAX = 10.0


def _sinh_rule(order: int, q, center=0.0):
    """Nodes ``z`` and weights ``w`` with ``sum_i w_i f(z_i) ~ E[f(z)]``, ``z ~ N(0, 1)``, for an
    ``f`` whose features sit within ``~1 / sqrt(q)`` of ``center`` (jnp, traceable; ``q`` and
    ``center`` broadcast, nodes along a new last axis).

    The trapezoidal rule in ``t`` after ``z = center + sinh(t) / s``, ``s = sqrt(max(q, 1))``,
    over ``|z| <= _Z_MAX``: the nodes are spaced ``~h / s`` at ``center``, where
    ``phi(sqrt(q) z)`` changes on the scale ``1 / sqrt(q)``, and geometrically wider away from
    it. For analytic integrands the error falls like ``exp(-c / h)`` (Trefethen & Weideman 2014,
    "The exponentially convergent trapezoidal rule", sec. 13). Gauss-Hermite's nodes do not
    follow ``q``: at 128 nodes it misses tanh's E[phi'^2] by 5% at q = 16 and 90% at q = 144;
    this rule at 128 nodes is within 1e-15 of mpmath for q <= 1e4 and 1e-13 at q = 1e6.
    Weights are normalised to sum to 1 (the Gaussian mass beyond ``_Z_MAX`` is e^-50).
    """
    q = jnp.asarray(q, jnp.float64)[..., None]
    center = jnp.asarray(center, jnp.float64)[..., None]
    s = jnp.sqrt(jnp.where(jnp.isfinite(q) & (q > 1.0), q, 1.0))
    lo = jnp.arcsinh(s * (-_Z_MAX - center))
    hi = jnp.arcsinh(s * (_Z_MAX - center))
    t = lo + (hi - lo) * (jnp.arange(order, dtype=jnp.float64) + 0.5) / order
    z = center + jnp.sinh(t) / s
    w = jnp.cosh(t) * jnp.exp(-0.5 * z * z)
    return z, w / jnp.sum(w, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """The Gaussian expectations of one activation, closed-form or by quadrature (static, hashable).

    Methods take float64 scalars (they run under ``vmap``); ``u ~ N(0, q)`` and ``(u1, u2)`` have
    variances ``q`` and correlation ``c``.
    """

    phi: Callable
    kind: str  # "linear", "relu", "erf" or "quadrature"
    order: int

    def _nodes(self, q):
        return _sinh_rule(self.order, q)

    def _derivs(self, u):
        """phi, phi', phi'' at u, by forward-mode autodiff (jax.nn's own relu'(0) = 0)."""
        ones = jnp.ones_like(u)
        vd = lambda v: jax.jvp(self.phi, (v,), (ones,))
        (y, dy), (_, ddy) = jax.jvp(vd, (u,), (ones,))
        return y, dy, ddy

    def diag(self, q):
        """(E[phi^2], E[phi'^2], E[phi'^4], E[phi'^2 + phi phi''])."""
        if self.kind == "linear":
            one = jnp.ones_like(q)
            return q, one, one, one
        if self.kind == "relu":
            half = jnp.full_like(q, 0.5)
            return q / 2, half, half, half
        if self.kind == "erf":
            s4 = jnp.sqrt(1 + 4 * q)
            return (
                2 / jnp.pi * jnp.arcsin(2 * q / (1 + 2 * q)),
                4 / jnp.pi / s4,
                16 / jnp.pi**2 / jnp.sqrt(1 + 8 * q),
                4 / jnp.pi / ((1 + 2 * q) * s4),
            )
        x, w = self._nodes(q)
        y, dy, ddy = self._derivs(jnp.sqrt(q) * x)
        d2 = dy * dy
        return w @ (y * y), w @ d2, w @ (d2 * d2), w @ (d2 + y * ddy)

    def cross(self, q, c):
        """(E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)])."""
        c = jnp.clip(c, -1.0, 1.0)
        if self.kind == "linear":
            return q * c, jnp.ones_like(q)
        if self.kind == "relu":
            theta = jnp.arccos(c)
            k0 = (jnp.pi - theta) / (2 * jnp.pi)
            return q / (2 * jnp.pi) * (jnp.sqrt(1 - c * c) + (jnp.pi - theta) * c), k0
        if self.kind == "erf":
            a = 1 + 2 * q
            return (
                2 / jnp.pi * jnp.arcsin(2 * q * c / a),
                4 / jnp.pi / jnp.sqrt(a * a - 4 * q * q * c * c),
            )
        # u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + r z2): for each z1 node the z2 rule is centred
        # where u2 = 0 and scaled to u2's width there, so phi(u2)'s features are resolved too.
        x1, w1 = self._nodes(q)
        s = jnp.sqrt(q)
        r = jnp.sqrt(1 - c * c)
        center = jnp.where(r > 0, -c * x1 / jnp.where(r > 0, r, 1.0), 0.0)
        x2, w2 = _sinh_rule(self.order, q * r * r, center)
        y1, d1, _ = self._derivs(s * x1)
        y2, d2, _ = self._derivs(s * (c * x1[:, None] + r * x2))
        return w1 @ (y1 * jnp.sum(w2 * y2, axis=1)), w1 @ (d1 * jnp.sum(w2 * d2, axis=1))


@functools.lru_cache(maxsize=64)
def _kernel_cached(phi: Callable, kind: str, order: int) -> _Kernel:
    return _Kernel(phi, kind, order)


def _kernel(activation: Any, order: Any, method: str) -> _Kernel:
    order = _check_order(order)
    phi = get_activation(activation)  # TypeError/ValueError naming a bad activation
    name = None
    if isinstance(activation, str):
        name = activation
    else:
        name = next((n for n in _CLOSED if get_activation(n) is phi), None)
    if method not in ("auto", "closed", "quadrature"):
        raise ValueError(f"method must be 'auto', 'closed' or 'quadrature', got {method!r}")
    if method == "closed" and name not in _CLOSED:
        raise ValueError(
            f"no closed form for activation {activation!r}; closed forms exist for "
            f"{', '.join(_CLOSED)} (use method='quadrature' or 'auto')"
        )
    kind = name if (method != "quadrature" and name in _CLOSED) else "quadrature"
    return _kernel_cached(phi, kind, order if kind == "quadrature" else 0)


@functools.partial(jax.jit, static_argnames=("k",))
def _diag_jit(k: _Kernel, q):
    return jax.vmap(k.diag)(q)


@functools.partial(jax.jit, static_argnames=("k",))
def _cross_jit(k: _Kernel, q, c):
    return jax.vmap(lambda a, b: (k.diag(a)[0], k.cross(a, b)[0]))(q, c)


# ------------------------------------------------------------------------------ scalar solvers


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
        moving = jnp.abs(q - prev) > 1e-15 * q + 1e-40
        return (i < _MAX_ITER) & jnp.isfinite(q) & moving

    if k.kind in ("linear", "relu"):  # an affine map: Q(q) = a q + sigma_b^2
        a = sw if k.kind == "linear" else sw / 2
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
    if k.kind not in ("linear", "relu"):  # only these have a q-independent chi_1 at q* = inf
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


# --------------------------------------------------------------------------------- public: maps


def _prepare(activation, order, method, *grids):
    k = _kernel(activation, order, method)
    arrays = np.broadcast_arrays(*grids)
    shape = arrays[0].shape
    return k, shape, [a.ravel() for a in arrays]


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
        ValueError: a negative or non-finite variance, an empty grid, ``order < 2``, an unknown
            name or method.
        TypeError: an activation that is neither a name nor a callable; a non-int ``order``.

    Examples:
        >>> float(q_map("relu", 3.0, 2.0, 0.1))  # sigma_w^2 q / 2 + sigma_b^2
        3.1
        >>> round(float(q_map("tanh", 1.0, 1.0, 0.0)), 6)
        0.394294
    """
    sw, sb = _variances(sigma_w2, sigma_b2)
    q = _check_grid(q, "q (a variance)", lo=0.0)
    k, shape, (q, sw, sb) = _prepare(activation, order, method, q, sw, sb)
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
    k, shape, (c, q, sw, sb) = _prepare(activation, order, method, c, q, sw, sb)
    with jax.enable_x64(True):
        e2, e12 = (np.asarray(a) for a in _cross_jit(k, jnp.asarray(q), jnp.asarray(c)))
    # |C(c)| <= 1 exactly; the 2-D and 1-D quadratures may round it just past 1.
    return _out(np.clip((sw * e12 + sb) / (sw * e2 + sb), -1.0, 1.0), shape)


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
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth must be an int >= 1, got {type(depth).__name__} {depth!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    k, shape, arrays = _prepare(activation, order, method, sw, sb, q_in, c_in)
    with jax.enable_x64(True):
        qs, cs = _iterate(k, *(jnp.asarray(a) for a in arrays), depth=int(depth))
        qs, cs = np.asarray(qs), np.asarray(cs)
    return MapIterates(qs.reshape((*shape, depth)), cs.reshape((*shape, depth)))


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
    atol = float(_check_grid(atol, "atol", lo=0.0))
    k, shape, (sw, sb, q0) = _prepare(activation, order, method, sw, sb, q0)
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


# -------------------------------------------------------------------------- public: critical line


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
    try:
        lo, hi = (float(v) for v in bracket)
    except (TypeError, ValueError):
        raise TypeError(f"bracket must be a pair of floats (lo, hi), got {bracket!r}") from None
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"bracket must satisfy 0 < lo < hi < inf, got {bracket!r}")
    k, shape, (sb,) = _prepare(activation, order, method, sb)
    if k.kind in ("linear", "relu"):  # chi_1 = sigma_w^2 or sigma_w^2 / 2 whatever q* is
        crit = 1.0 if k.kind == "linear" else 2.0
        return _out(np.where((lo < crit) & (crit <= hi), crit, np.nan) + 0 * sb, shape)
    rungs = max(2, math.ceil(math.log2(hi / lo)) + 1)
    with jax.enable_x64(True):
        out = np.asarray(_critical(k, jnp.asarray(sb), lo, hi, rungs=rungs))
    return _out(out, shape)


# ------------------------------------------------------------------------------ Jacobian spectra


@functools.partial(jax.jit, static_argnames=("phi", "readout"))
def _jacobian_sv(params: MLPParams, x, depth, *, phi, readout: bool):
    if not readout:  # the identity readout: the output is h^L itself
        width = params.width
        params = params._replace(
            w_out=jnp.eye(width, dtype=params.dtype), b_out=jnp.zeros(width, params.dtype)
        )
    f = lambda v: mlp_apply(params, v, activation=phi, depth=depth)
    jac = jax.jacfwd(f) if params.in_dim <= params.out_dim or not readout else jax.jacrev(f)
    sdt = jnp.promote_types(params.dtype, jnp.float32)  # no SVD in float16/bfloat16
    return jax.vmap(lambda v: jnp.linalg.svd(jac(v).astype(sdt), compute_uv=False))(x)


def jacobian_singular_values(
    params: MLPParams,
    x: ArrayLike,
    activation: Any,
    *,
    depth: int | jax.Array | None = None,
    readout: bool = False,
) -> jax.Array:
    """Singular values of the input-output Jacobian of a stabkit MLP at each input (jit, vmap).

    With ``readout=False`` (default) the Jacobian is Pennington et al.'s
    :math:`J = \\partial h^L / \\partial x = W^1 D^1 W^2 D^2 \\cdots W^L D^L` (row-vector
    convention, :math:`D^l = \\mathrm{diag}(\\phi'(z^l))`, :math:`L` = ``depth``): the readout is
    replaced by the identity, so ``L`` weight matrices and ``L`` activations. With
    ``readout=True`` it is the Jacobian of :func:`stabkit.mlp_apply`'s output, one more weight
    matrix (:math:`W^{L+1}`) on the right.

    Args:
        params: from :func:`stabkit.mlp_init`.
        x: ``(in_dim,)`` or ``(batch, in_dim)``; the point(s) where the Jacobian is taken.
        activation: a name or an elementwise callable (as for :func:`stabkit.mlp_apply`).
        depth: hidden layers to use (default all); may be a traced int.
        readout: include the readout layer (see above).

    Returns:
        ``(k,)`` or ``(batch, k)`` singular values in descending order, ``k = min(in_dim,
        out_dim)`` (``width`` for ``readout=False``), float32 (float64 for float64 parameters).

    Raises:
        ValueError, TypeError: as :func:`stabkit.mlp_apply` for bad parameters, ``x`` or depth.

    Examples:
        A deep linear net with orthogonal weights is an isometry: every singular value is 1.

        >>> from stabkit import mlp_init
        >>> p = mlp_init(jax.random.key(0), depth=10, width=8, init="orthogonal")
        >>> s = jacobian_singular_values(p, jnp.ones(8), "linear")
        >>> bool(jnp.allclose(s, 1.0, atol=1e-5))
        True
    """
    if not isinstance(params, MLPParams):
        raise TypeError(f"params must be an MLPParams (from mlp_init), got {type(params).__name__}")
    if not isinstance(readout, (bool, np.bool_)):
        raise TypeError(f"readout must be a bool, got {type(readout).__name__} {readout!r}")
    phi = get_activation(activation)
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] != params.in_dim or arr.size == 0:
        raise ValueError(
            f"x must have shape (batch, {params.in_dim}) or ({params.in_dim},), got {arr.shape}"
        )
    if depth is None:
        depth = params.max_depth
    elif not isinstance(depth, jax.core.Tracer):
        if isinstance(depth, (bool, np.bool_)) or not jnp.issubdtype(
            jnp.asarray(depth).dtype, jnp.integer
        ):
            raise TypeError(f"depth must be an int, got {type(depth).__name__} {depth!r}")
        if not 1 <= int(depth) <= params.max_depth:
            raise ValueError(
                f"depth must be in 1..{params.max_depth} (the params' depth), got {depth}"
            )
    out = _jacobian_sv(
        params,
        jnp.atleast_2d(arr).astype(params.dtype),
        jnp.asarray(depth, jnp.int32),
        phi=phi,
        readout=bool(readout),
    )
    return out[0] if arr.ndim == 1 else out


class JacobianMoments(NamedTuple):
    """Free-probability moments of the squared singular values :math:`\\lambda` of :math:`J`.

    Attributes:
        mean: :math:`m_1 = E[\\lambda]` (the normalized trace of :math:`JJ^T`).
        variance: :math:`m_2 - m_1^2`.
        mu1: ``(depth,)`` :math:`\\mu_1^l = E[\\phi'(u)^2]`, :math:`u \\sim N(0, q^l)`.
        mu2: ``(depth,)`` :math:`\\mu_2^l = E[\\phi'(u)^4]`.
        s1: the weights' first S-transform coefficient: -1 Gaussian, 0 orthogonal.
        q: ``(depth,)`` the pre-activation variances :math:`q^l` used.
    """

    mean: float
    variance: float
    mu1: np.ndarray
    mu2: np.ndarray
    s1: float
    q: np.ndarray


_S1 = {"gaussian": -1.0, "orthogonal": 0.0}


def jacobian_spectrum_moments(
    activation: Any,
    sigma_w2: float,
    sigma_b2: float,
    depth: int,
    *,
    weights: str = "gaussian",
    readout: bool = False,
    q_in: float | None = None,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> JacobianMoments:
    """The mean and variance of the squared singular values of :math:`J`, by free probability.

    In the wide limit the factors of :math:`JJ^T` are asymptotically free, so their S-transforms
    multiply (Pennington et al. 2017, sec. 2). To first order an S-transform is
    :math:`S(z) = m_1^{-1}(1 - v z + O(z^2))` with :math:`v = (m_2 - m_1^2)/m_1^2`, hence for a
    product the means multiply and the normalized variances **add**:

    .. math::

        m_1 = \\sigma_w^{2 n_W} \\prod_{l=1}^{L} \\mu_1^l, \\qquad
        \\frac{m_2 - m_1^2}{m_1^2} = -n_W s_1 + \\sum_{l=1}^{L}
            \\Big(\\frac{\\mu_2^l}{(\\mu_1^l)^2} - 1\\Big),

    with :math:`\\mu_k^l = E[\\phi'(u)^{2k}]`, :math:`u \\sim N(0, q^l)`, :math:`n_W = L` weight
    matrices (:math:`L + 1` with ``readout``), and :math:`s_1` the first coefficient of
    :math:`S_{WW^T}(z) = \\sigma_w^{-2}(1 + s_1 z + \\dots)`: :math:`s_1 = -1` for Gaussian weights
    (Marchenko-Pastur, :math:`S = \\sigma_w^{-2}/(1 + z)`), :math:`s_1 = 0` for orthogonal ones.
    At criticality (:math:`\\sigma_w^2 \\mu_1 = 1`) with every :math:`q^l = q^*` and no readout
    this is their result :math:`m_1 = 1`, :math:`\\sigma^2_{JJ^T} = L(\\mu_2/\\mu_1^2 - 1 - s_1)`:

    * linear: :math:`L` Gaussian (the Fuss-Catalan :math:`m_2 = L + 1`), 0 orthogonal;
    * relu (:math:`\\mu_1 = \\mu_2 = 1/2`): :math:`2L` Gaussian, :math:`L` orthogonal: no
      isometry whatever the weights;
    * tanh: :math:`L \\mu_2/\\mu_1^2` Gaussian; orthogonal :math:`L(\\mu_2/\\mu_1^2 - 1) \\to 0`
      as :math:`q^* \\to 0` (:math:`\\sigma_b^2 \\to 0`): dynamical isometry.

    Args:
        activation, order, method: as for :func:`q_map`.
        sigma_w2, sigma_b2: scalar variances (the weights' :math:`\\sigma_w^2`: Gaussian
            :math:`N(0, \\sigma_w^2/n)` or ``sigma_w`` times an orthogonal matrix).
        depth: hidden layers :math:`L \\ge 1`.
        weights: ``"gaussian"`` or ``"orthogonal"``.
        readout: count the readout matrix, as in :func:`jacobian_singular_values`.
        q_in: the input's mean square :math:`|x|^2/n`; the :math:`q^l` then follow the q-map from
            :math:`q^1 = \\sigma_w^2 q_{in} + \\sigma_b^2`. Default: every :math:`q^l = q^*`.

    Returns:
        :class:`JacobianMoments`.

    Raises:
        ValueError: unknown ``weights``, bad variances or depth; q* infinite with ``q_in=None``.

    Examples:
        >>> m = jacobian_spectrum_moments("relu", 2.0, 0.0, 10, weights="orthogonal")
        >>> float(m.mean), float(m.variance)
        (1.0, 10.0)
        >>> float(jacobian_spectrum_moments("linear", 1.0, 0.0, 10).variance)
        10.0
    """
    if weights not in _S1:
        raise ValueError(f"weights must be one of {sorted(_S1)}, got {weights!r}")
    sw = float(_check_grid(sigma_w2, "sigma_w2 (the weight variance)", lo=0.0, closed=False))
    sb = float(_check_grid(sigma_b2, "sigma_b2 (the bias variance)", lo=0.0))
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth must be an int >= 1, got {type(depth).__name__} {depth!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    k = _kernel(activation, order, method)
    if q_in is None:
        qs = float(q_star(activation, sw, sb, order=order, method=method))
        if not math.isfinite(qs):
            raise ValueError(
                f"q* is infinite at sigma_w2={sw}, sigma_b2={sb}: give q_in to follow the q-map"
            )
        q = np.full(depth, qs)
    else:
        q_in = float(_check_grid(q_in, "q_in (a mean square)", lo=0.0))
        q = iterate_maps(activation, sw, sb, q_in=q_in, depth=depth, order=order, method=method).q
    with jax.enable_x64(True):
        _, mu1, mu2, _ = (np.asarray(a) for a in _diag_jit(k, jnp.asarray(q)))
    s1 = _S1[weights]
    n_w = depth + 1 if readout else depth
    mean = sw**n_w * float(np.prod(mu1))
    v = -n_w * s1 + float(np.sum(mu2 / mu1**2 - 1.0))
    return JacobianMoments(mean, v * mean**2, mu1, mu2, s1, q)


# ------------------------------------------------------------- public: per-layer profiles, sweeps

#: fan_in * Var(W_ij) of each named initializer (stabkit.init's table) for a square layer, per
#: unit multiplier squared: sigma_w^2 = scale^2 * this. Glorot's 2/(n + m) is 1/n when m = n.
_WEIGHT_VARIANCE = {
    "gaussian": 1.0,
    "lecun_normal": 1.0,
    "lecun_uniform": 1.0,
    "he_normal": 2.0,
    "he_uniform": 2.0,
    "glorot_normal": 1.0,
    "glorot_uniform": 1.0,
    "xavier_normal": 1.0,
    "xavier_uniform": 1.0,
    "standard": 1.0 / 3.0,
    "orthogonal": 1.0,
    "scaled_identity": 1.0,
}
#: How each initializer's weights enter the backward recursion (see predict_profile).
_WEIGHT_KIND = {"orthogonal": "orthogonal", "scaled_identity": "identity"}
_PROFILE_LOSSES = ("sum", "mse")


def weight_variance(init: str, scale: ArrayLike = 1.0) -> np.ndarray:
    """The mean-field weight variance :math:`\\sigma_w^2 = n \\operatorname{Var}(W_{ij})` of a
    named initializer's square ``(n, n)`` layer with multiplier ``scale``.

    From :mod:`stabkit.init`'s table: ``scale**2`` times 1 (``gaussian``, ``lecun_*``,
    ``glorot_*``/``xavier_*`` on a square layer, ``orthogonal``: entries of variance 1/n,
    ``scaled_identity``), 2 (``he_*``) or 1/3 (``standard``). Uniform draws have the variance of
    the normal ones, so the same :math:`\\sigma_w^2` enters the maps.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or a non-finite scale.
        TypeError: a non-string ``init``.

    Examples:
        >>> float(weight_variance("he_normal")), float(weight_variance("gaussian", 1.5))
        (2.0, 2.25)
    """
    if not isinstance(init, str):
        raise TypeError(f"init must be an initializer name, got {type(init).__name__} {init!r}")
    if init not in _WEIGHT_VARIANCE:
        raise ValueError(
            f"unknown init {init!r}; valid names: {', '.join(sorted(_WEIGHT_VARIANCE))}"
        )
    s = _check_grid(scale, "scale", lo=-math.inf)
    return _out(s * s * _WEIGHT_VARIANCE[init], s.shape)


class Profile(NamedTuple):
    """Mean-field per-layer statistics of a depth-``L`` MLP, indexed like a sweep's ``layer``.

    Layer 0 is the input, 1..L the hidden layers, L + 1 the linear readout (one more layer of the
    same weight and bias variances). Every field has shape ``broadcast + (L + 2,)``.

    Attributes:
        q: pre-activation second moment :math:`q^l` (layer 0: the input's mean square).
        pre_rms: :math:`\\sqrt{q^l}`.
        post_rms: :math:`\\sqrt{E[\\phi(z)^2]}`, :math:`z \\sim N(0, q^l)` (identity at 0, L + 1).
        chi: the per-layer gradient gain :math:`\\sigma_w^2 E[\\phi'(z^l)^2]` (the readout's is
            :math:`\\sigma_w^2`; NaN at layer 0); at :math:`q^*` it is :math:`\\chi_1`.
        grad_rms: RMS of :math:`\\partial L/\\partial h^l` over RMS of
            :math:`\\partial L/\\partial y` (1 at layer L + 1; see :func:`predict_profile`).
        pre_spread, post_spread, grad_spread: the finite-width standard deviation of
            :math:`\\ln` (measured / predicted) of ``pre_rms``, ``post_rms``, ``grad_rms``, times
            :math:`\\sqrt{n}`, for one example (a batch of correlated examples fluctuates less).
    """

    q: np.ndarray
    pre_rms: np.ndarray
    post_rms: np.ndarray
    chi: np.ndarray
    grad_rms: np.ndarray
    pre_spread: np.ndarray
    post_spread: np.ndarray
    grad_spread: np.ndarray


#: A layer's quadrature is trusted where the rule with half the nodes agrees to this (relative).
#: The rule converges exponentially for smooth activations (then the full rule is far better than
#: this) and like order**-2 for a kink in phi' (elu, selu: halves agree to ~3e-3 at q ~ 1).
_RESOLVED = 1e-2


def _quad_moments(y, dy, ddy, w):
    d2 = dy * dy
    return w @ (y * y), w @ d2, w @ (d2 * d2), w @ (d2 + y * ddy), w @ (y * y * d2), w @ (y**4)


def _moments(k: _Kernel, q):
    """(E[phi^2], E[phi'^2], E[phi'^4], E[phi'^2 + phi phi''], E[phi^2 phi'^2], E[phi^4]) at q.

    Closed forms for linear and relu (and erf's first four). Otherwise the q-adapted sinh rule
    (:func:`_sinh_rule`): where the rule with half the nodes disagrees by more than _RESOLVED,
    every moment is NaN (at order 128 first near q ~ 1e6 for erf, beyond for the others).
    """
    if k.kind == "linear":
        e2, d2, d4, s = k.diag(q)
        return e2, d2, d4, s, q, 3 * q * q
    if k.kind == "relu":
        e2, d2, d4, s = k.diag(q)
        return e2, d2, d4, s, q / 2, 1.5 * q * q
    order = k.order or DEFAULT_ORDER
    xf, wf = _sinh_rule(order, q)
    xh, wh = _sinh_rule(max(2, order // 2), q)
    # Both rules in one evaluation of phi and its derivatives (one trace, one compile).
    y, dy, ddy = k._derivs(jnp.sqrt(q) * jnp.concatenate([xf, xh]))
    n = order
    full = _quad_moments(y[:n], dy[:n], ddy[:n], wf)
    half = _quad_moments(y[n:], dy[n:], ddy[n:], wh)
    size = (full[0], full[1], full[1] + jnp.abs(full[3]), full[4], full[5])
    pairs = zip(full[:2] + full[3:], half[:2] + half[3:], size, strict=True)
    ok = jnp.all(jnp.stack([jnp.abs(a - b) <= _RESOLVED * m for a, b, m in pairs]))
    first = k.diag(q) if k.kind == "erf" else full[:4]
    nan = jnp.full_like(q, jnp.nan)
    return tuple(jnp.where(ok, v, nan) for v in (*first, full[4], full[5]))


@functools.partial(jax.jit, static_argnames=("k", "n_layers"))
def _forward(k: _Kernel, sw, sb, q0, *, n_layers: int):
    """Per layer 0..n_layers-1: q, E[phi^2] and the moments the backward pass and spreads need."""

    def one(sw, sb, q0):
        def step(carry, _):
            m_prev, v_post = carry
            q = sw * m_prev + sb
            q = jnp.where(q > _Q_MAX, jnp.inf, q)
            e2, d2, d4, s, p, e4 = _moments(k, q)
            r = jnp.where(q > 0, sw * m_prev / jnp.where(q > 0, q, 1.0), 0.0)
            # Linear response of ln E[phi^2] to ln q: q E[phi'^2 + phi phi''] / E[phi^2] (Price).
            gain = jnp.where(e2 > 0, q * s / jnp.where(e2 > 0, e2, 1.0), 1.0)
            kappa = jnp.where(e2 > 0, e4 / jnp.where(e2 > 0, e2 * e2, 1.0) - 1.0, 0.0)
            v_pre = r * r * v_post + 2.0
            v_next = (r * gain) ** 2 * v_post + kappa
            kappa_b = jnp.where(d2 > 0, 3.0 * d4 / jnp.where(d2 > 0, d2 * d2, 1.0) - 1.0, 0.0)
            return (e2, v_next), (q, e2, d2, s, p, v_pre, v_next, kappa_b)

        _, per = jax.lax.scan(step, (q0, jnp.zeros_like(q0)), None, length=n_layers - 1)
        first = (q0, q0, jnp.nan, jnp.nan, jnp.nan, 0.0, 0.0, jnp.nan)
        return tuple(
            jnp.concatenate([jnp.reshape(f, (1,)), a]) for f, a in zip(first, per, strict=True)
        )

    return jax.vmap(one)(sw, sb, q0)


def _backward(fwd, sw, top, orth, mse):
    """Gradient RMS ratios and spreads for depths ``top`` (NumPy, vectorized over configs).

    ``fwd`` holds (n, n_layers) arrays from :func:`_forward`; ``sw``, ``top`` (= depth L) and
    ``orth`` are (n,) arrays. Returns (chi, grad_rms, grad_spread), each (n, n_layers), NaN above
    layer L + 1.
    """
    q, m, d2, s, p, _, _, kb = fwd
    n, n_layers = q.shape
    rows = np.arange(n)
    chi = np.full((n, n_layers), np.nan)
    ratio = np.full((n, n_layers), np.nan)
    var = np.full((n, n_layers), np.nan)
    q_top = q[rows, top + 1]
    # The loss's gradient at the output v = dL/dy (per entry, up to the 1/N of the mean): the sum
    # loss gives ones (independent of the weights); mse gives y itself, whose dependence on the
    # weights adds the correction terms below.
    ev2 = np.where(mse, q_top, 1.0)
    edv = np.where(mse, 1.0, 0.0)
    g_top = ev2.copy()
    ratio[rows, top + 1] = 1.0
    var[rows, top + 1] = 0.0
    chi[rows, top + 1] = sw
    acc = np.zeros(n)
    # NaN/inf where a layer's quadrature is unresolved or q diverges: carried through, not raised.
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(n_layers - 2, -1, -1):  # g^j = v^{j+1} W_{j+1}^T
            on = j <= top
            a = sw * edv
            v = sw * ev2 - np.where(orth, a * a * m[:, j], 0.0)
            g = v + a * a * m[:, j]
            ratio[:, j] = np.where(on, np.sqrt(g / g_top), ratio[:, j])
            var[:, j] = np.where(on, acc + 2.0, var[:, j])
            if j >= 1:
                hidden = on & (j < top + 1)
                chi[:, j] = np.where(hidden, sw * d2[:, j], chi[:, j])
                ev2 = np.where(on, v * d2[:, j] + a * a * p[:, j], ev2)
                edv = np.where(on, a * s[:, j], edv)
                acc = np.where(on, acc + kb[:, j], acc)
        return chi, ratio, np.sqrt(var) / 2


def _profile(k, sw, sb, q0, depth, n_layers, orth, mse) -> Profile:
    """The flat-config core of predict_profile / predict_sweep: every array (n,), depth (n,)."""
    # The forward pass depends on (sigma_w^2, sigma_b^2, q0) only: once per distinct triple, padded
    # to a power of two so that few batch shapes (compilations) ever occur.
    rows = np.stack(np.broadcast_arrays(sw, sb, q0), axis=1).astype(np.float64)
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    size = 1 << max(3, int(len(uniq) - 1).bit_length())
    uniq = np.concatenate([uniq, np.repeat(uniq[-1:], size - len(uniq), axis=0)])
    with jax.enable_x64(True):
        fwd = _forward(k, *(jnp.asarray(uniq[:, i]) for i in range(3)), n_layers=n_layers)
        fwd = [np.asarray(a)[inv.ravel()] for a in fwd]
    chi, ratio, g_spread = _backward(fwd, sw, depth, orth, mse)
    q, m, *_, v_pre, v_post, _ = fwd
    layer = np.arange(n_layers)[None, :]
    top = depth[:, None] + 1
    with np.errstate(invalid="ignore"):
        q_out = np.where(layer <= top, q, np.nan)
        post = np.where(layer == top, q, np.where(layer < top, m, np.nan))
        v_post = np.where(layer == top, v_pre, v_post)
        return Profile(
            q_out,
            np.sqrt(q_out),
            np.sqrt(post),
            chi,
            ratio,
            np.where(layer <= top, np.sqrt(v_pre) / 2, np.nan),
            np.where(layer <= top, np.sqrt(v_post) / 2, np.nan),
            g_spread,
        )


def _check_depth(depth: Any) -> int:
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth must be an int >= 1, got {type(depth).__name__} {depth!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return int(depth)


def predict_profile(
    activation: Any,
    sigma_w2: ArrayLike,
    sigma_b2: ArrayLike,
    depth: int,
    q0: ArrayLike = 1.0,
    *,
    weights: str = "gaussian",
    loss: str = "sum",
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> Profile:
    """Mean-field per-layer forward and backward statistics of a random MLP of ``depth`` layers.

    **Forward.** The input's mean square is ``q0``; :math:`q^1 = \\sigma_w^2 q_0 + \\sigma_b^2`
    and :math:`q^{l+1} = \\mathcal{Q}(q^l)` (:func:`q_map`) up to the linear readout
    :math:`q^{L+1}`; the post-activation RMS is :math:`\\sqrt{E[\\phi(z)^2]}`,
    :math:`z \\sim N(0, q^l)`. Orthogonal weights give the same maps (a Haar rotation keeps
    :math:`|h|` and makes the coordinates Gaussian as :math:`n \\to \\infty`; Pennington et al.
    2017).

    **Backward.** With ``loss="sum"`` the output gradient is a constant vector, independent of
    the weights, and the gradient independence assumption gives the classic product
    :math:`|\\partial L/\\partial h^{l-1}|^2 = \\chi^l |\\partial L/\\partial h^l|^2`,
    :math:`\\chi^l = \\sigma_w^2 E[\\phi'(z^l)^2]`, which is :math:`\\chi_1^{L-l}` (times the
    readout's :math:`\\sigma_w^2`) once :math:`q^l = q^*` (Schoenholz et al. 2017, eq. 12).
    With ``loss="mse"`` (a regression to 0: :math:`\\partial L/\\partial y \\propto y`) the output
    gradient depends on the weights it flows back through, and that assumption fails: for a deep
    linear Gaussian net :math:`|J^T J x|^2` grows like the Fuss-Catalan moment
    :math:`(L + 1)|x|^2`, not :math:`|x|^2` (a factor :math:`\\sqrt{L+1}` in RMS). The wide-limit
    recursion (Yang 2019, Tensor Programs: :math:`W^T v = \\hat Z + \\sigma_w^2 h E[\\partial v/
    \\partial z]`) writes :math:`\\partial L/\\partial h^l = \\hat Z^l + a_l h^l` with a Gaussian
    :math:`\\hat Z^l` of variance :math:`V_l` independent of :math:`h^l`; with
    :math:`v = \\partial L/\\partial h^l \\odot \\phi'(z^l)`,

    .. math::

        a_{l-1} = \\sigma_w^2 a_l E[\\phi'^2 + \\phi\\phi''], \\quad
        V_{l-1} = \\sigma_w^2 (V_l E[\\phi'^2] + a_l^2 E[\\phi^2\\phi'^2]) - [\\text{orth}]\\,
        a_{l-1}^2 E[(h^{l-1})^2],

    starting from :math:`v = y` (:math:`E[v^2] = q^{L+1}`, :math:`E[\\partial v/\\partial z] =
    1`); the subtracted term is for orthogonal weights (``weights="orthogonal"``), which preserve
    norms exactly. ``sum`` is the case :math:`a = 0`.

    **Finite width.** The ``*_spread`` fields predict the standard deviation of the log of a
    width-:math:`n` measurement, times :math:`\\sqrt n`, by linear response: each layer adds
    :math:`\\kappa/n` to the variance of :math:`\\ln |h|^2` with :math:`\\kappa =
    \\operatorname{Var}(\\phi^2)/E[\\phi^2]^2` (2 linear, 5 relu) and scales the earlier variance
    by the squared log-slope of the map (1 for relu without bias, < 1 where the map contracts);
    the backward pass adds :math:`3 E[\\phi'^4]/E[\\phi'^2]^2 - 1` a layer and 2 for the
    readout. For relu this is Hanin & Nica's :math:`\\operatorname{Var} \\ln|h^L|^2 \\approx 5L/n`.
    They assume every example of a batch moves together (a bound: decorrelated examples average
    out).

    **Accuracy.** Activations without a closed form are integrated by the q-adapted quadrature of
    ``order`` nodes (see the module docstring): a layer whose moments the rule with half the nodes
    does not reproduce to 1% and every layer after it are NaN (at order 128 this first happens
    near :math:`q = 10^6`, for erf; raise ``order`` for larger :math:`q`).

    Args:
        activation, sigma_w2, sigma_b2, order, method: as for :func:`q_map` (the variances and
            ``q0`` broadcast against each other).
        depth: hidden layers :math:`L \\ge 1`.
        q0: the input's mean square :math:`|x|^2/n`, >= 0.
        weights: ``"gaussian"`` (any i.i.d. weights: Gaussian and uniform have the same limit) or
            ``"orthogonal"`` (also the scaled identity of a linear net).
        loss: ``"sum"`` (constant output gradient) or ``"mse"``.

    Returns:
        A :class:`Profile` of float64 arrays shaped ``broadcast + (depth + 2,)``.

    Raises:
        ValueError: bad variances, ``q0``, depth, ``weights`` or ``loss``.
        TypeError: a non-int depth, a bad activation.

    References:
        G. Yang, "Scaling limits of wide neural networks with weight sharing: Gaussian process
        behavior, gradient independence, and neural tangent kernel derivation", 2019 (sec. on
        the gradient independence assumption). B. Hanin, M. Nica, "Products of many large random
        matrices and gradients in deep neural networks", Commun. Math. Phys. 2019.

    Examples:
        Relu with He weights keeps :math:`q` (and the gradient) fixed; mse adds
        :math:`\\sqrt{2(L - l + 1)}` to the gradient of layer :math:`l`:

        >>> p = predict_profile("relu", 2.0, 0.0, depth=3, q0=1.0)
        >>> p.q.tolist(), p.grad_rms.round(4).tolist()
        ([1.0, 2.0, 2.0, 2.0, 2.0], [1.4142, 1.4142, 1.4142, 1.4142, 1.0])
        >>> predict_profile("relu", 2.0, 0.0, 3, loss="mse").grad_rms.round(4).tolist()
        [4.0, 3.4641, 2.8284, 2.0, 1.0]
    """
    sw, sb = _variances(sigma_w2, sigma_b2)
    q0 = _check_grid(q0, "q0 (the input's mean square)", lo=0.0)
    depth = _check_depth(depth)
    if weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', got {weights!r}")
    if loss not in _PROFILE_LOSSES:
        raise ValueError(f"loss must be one of {_PROFILE_LOSSES}, got {loss!r}")
    k, shape, (sw, sb, q0) = _prepare(activation, order, method, sw, sb, q0)
    n = sw.shape[0]
    prof = _profile(
        k,
        sw,
        sb,
        q0,
        np.full(n, depth),
        depth + 2,
        np.full(n, weights == "orthogonal"),
        np.full(n, loss == "mse"),
    )
    return Profile(*(a.reshape(*shape, depth + 2) for a in prof))


def _sweep_spec(ds) -> dict[str, Any]:
    import json

    try:
        return json.loads(ds.attrs["spec"])
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ValueError(
            "ds must be a dataset from stabkit.sweep or stabkit.load (its 'spec' attribute is "
            "missing or unreadable)"
        ) from None


def predict_sweep(
    ds, *, activations: dict[str, Callable] | None = None, order: int = DEFAULT_ORDER
):
    """The mean-field prediction of every configuration of a sweep, aligned with it.

    Each config's :math:`\\sigma_w^2` is :func:`weight_variance` of its ``init`` and ``scale``
    (exactly the weight variance the sweep draws), :math:`\\sigma_b^2 = \\) ``bias_std**2``, and
    :math:`q_0` the mean square of the very input batch it saw (:func:`stabkit.sweep_input` of
    its seed, rounded to its dtype); :func:`predict_profile` then follows the sweep's loss
    (``mse``: :math:`\\partial L/\\partial y = y/N`, :math:`N` = batch x width entries, so the
    predicted top gradient RMS is :math:`\\sqrt{q^{L+1}}/N`; ``sum``: 1).

    Where the theory applies (NaN elsewhere, and where the quadrature is unresolved, see
    :func:`predict_profile`): i.i.d. weights (every normal and uniform initializer) and
    orthogonal ones, any activation; the scaled identity only with the linear activation (then
    :math:`z^l = a z^{l-1} + b^l` follows the linear maps exactly in expectation; with a
    nonlinearity its pre-activations are not Gaussian and the prediction is NaN).

    Args:
        ds: a dataset from :func:`stabkit.sweep` or :func:`stabkit.load`.
        activations: callables for activation names that are not registered (a sweep of
            callables stores only their names).
        order: quadrature nodes (as for :func:`q_map`).

    Returns:
        An ``xarray.Dataset`` with the sweep's coordinates: ``pre_rms``, ``post_rms``,
        ``grad_post_rms`` (the sweep's own units), ``grad_gain`` (``grad_post_rms`` over its
        value at the readout), ``chi`` and the ``*_spread`` fields of :class:`Profile` over
        (config..., layer), NaN above a config's readout; ``output_rms``, ``grad_ratio``
        (as the sweep defines them), ``sigma_w2`` and ``sigma_b2`` per config.

    Raises:
        ValueError: ``ds`` is not a sweep, or names an activation that is neither registered
            nor in ``activations``.

    Examples:
        (Not run as a doctest: compiling a sweep takes seconds; ``tests/test_theory.py`` runs
        it.) ::

            ds = sk.sweep(sk.SweepSpec(depth=32, width=256, activation="tanh", scale=1.3))
            pred = predict_sweep(ds)
            np.log10(ds.pre_rms / pred.pre_rms)  # within compare_sweep's tolerance
    """
    import xarray as xr

    from stabkit.sweep import sweep_input

    spec = _sweep_spec(ds)
    activations = dict(activations or {})
    dims = ("dtype", "width", "activation", "init", "depth", "scale", "bias_std", "seed")
    c = {d: ds[d].values.tolist() for d in dims}
    n_layers = int(ds.sizes["layer"])
    # q0 of each (dtype, width, seed): the batch the sweep fed in, in float64.
    q0 = np.empty((len(c["dtype"]), len(c["width"]), len(c["seed"])))
    for i, dt in enumerate(c["dtype"]):
        for j, w in enumerate(c["width"]):
            for s, seed in enumerate(c["seed"]):
                with jax.enable_x64(dt == "float64"):
                    x = sweep_input(int(seed), int(spec["batch"]), int(w), dt, spec["input"])
                    x = np.asarray(x.astype(jnp.float32 if dt != "float64" else jnp.float64))
                q0[i, j, s] = np.mean(np.square(x.astype(np.float64)))
    sw = np.stack([weight_variance(i, np.asarray(c["scale"], np.float64)) for i in c["init"]])
    sb = np.square(np.asarray(c["bias_std"], np.float64))
    depth = np.asarray(c["depth"])
    kind = np.array([_WEIGHT_KIND.get(i, "gaussian") for i in c["init"]])
    # Broadcast to (dtype, width, init, depth, scale, bias, seed); activation handled per slice.
    shp = tuple(len(c[d]) for d in dims if d != "activation")
    b = np.broadcast_to
    full = {
        "sw": b(sw[None, None, :, None, :, None, None], shp),
        "sb": b(sb[None, None, None, None, None, :, None], shp),
        "q0": b(q0[:, :, None, None, None, None, :], shp),
        "depth": b(depth[None, None, None, :, None, None, None], shp),
        "kind": b(kind[None, None, :, None, None, None, None], shp),
        "width": b(np.asarray(c["width"])[None, :, None, None, None, None, None], shp),
    }
    flat = {k: np.ascontiguousarray(v).ravel() for k, v in full.items()}
    mse = spec["loss"] == "mse"
    names = list(Profile._fields[1:])
    out = {f: np.full((len(c["activation"]), *shp, n_layers), np.nan) for f in names}
    for ai, act in enumerate(c["activation"]):
        fn = activations.get(act, act)
        try:
            k = _kernel(fn, order, "auto")
        except (TypeError, ValueError):
            raise ValueError(
                f"activation {act!r} is not registered; pass activations={{{act!r}: callable}}"
            ) from None
        ok = (flat["kind"] != "identity") | (k.kind == "linear")
        if not ok.any():
            continue
        prof = _profile(
            k,
            flat["sw"][ok],
            flat["sb"][ok],
            flat["q0"][ok],
            flat["depth"][ok],
            n_layers,
            flat["kind"][ok] != "gaussian",
            np.full(int(ok.sum()), mse),
        )
        for f in names:
            a = np.full((flat["sw"].size, n_layers), np.nan)
            a[ok] = getattr(prof, f)
            out[f][ai] = a.reshape(*shp, n_layers)
    # activation goes third: (dtype, width, activation, init, ...)
    out = {f: np.moveaxis(v, 0, 2) for f, v in out.items()}
    entries = float(spec["batch"]) * b(np.asarray(c["width"], np.float64)[None, :], shp[:2])
    top_idx = depth + 1
    pre = out["pre_rms"]
    # The readout's RMS, picked per depth: (dtype, width, activation, init, depth, scale, ...)
    idx = b(top_idx[None, None, None, None, :, None, None, None, None], (*pre.shape[:-1], 1))
    y_rms = np.take_along_axis(pre, idx, axis=-1)[..., 0]
    if mse:
        scale_top = y_rms / entries[:, :, None, None, None, None, None, None]
    else:
        scale_top = np.ones_like(y_rms)
    grad = out["grad_rms"] * scale_top[..., None]
    lay = ("layer",)
    data = {
        "pre_rms": (dims + lay, out["pre_rms"]),
        "post_rms": (dims + lay, out["post_rms"]),
        "grad_post_rms": (dims + lay, grad),
        "grad_gain": (dims + lay, out["grad_rms"]),
        "chi": (dims + lay, out["chi"]),
        "pre_spread": (dims + lay, out["pre_spread"]),
        "post_spread": (dims + lay, out["post_spread"]),
        "grad_spread": (dims + lay, out["grad_spread"]),
        "output_rms": (dims, y_rms),
        "grad_ratio": (dims, out["grad_rms"][..., 0]),
        "sigma_w2": (("init", "scale"), sw),
        "sigma_b2": (("bias_std",), sb),
    }
    coords = {d: ds[d].values for d in (*dims, "layer")}
    attrs = {"spec": ds.attrs["spec"], "order": order}
    return xr.Dataset(data, coords=coords, attrs=attrs)


#: Relative rounding a layer may add to a measured RMS, per dtype: the unit roundoff eps/2 of
#: the matrix product's output and of the activation, twice (z and h), so eps per layer. It
#: matters only for the half formats (bfloat16: 0.8% a layer); float32/float64 rounding is far
#: below the finite-width spread.
_ROUNDING = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
#: The statistics themselves are sums of N squares in float32 (float64 for float64 sweeps):
#: pairwise summation keeps their relative error within about log2(N) eps; 64 eps covers it.
_STAT_ROUNDING = {
    "float16": 2.0**-17,
    "bfloat16": 2.0**-17,
    "float32": 2.0**-17,
    "float64": 2.0**-46,
}
DEFAULT_N_SIGMA = 4.0


def compare_sweep(ds, prediction=None, *, n_sigma: float = DEFAULT_N_SIGMA, **kwargs):
    """Log-ratio errors of a sweep's per-layer RMS against the mean field, with a tolerance.

    For ``pre_rms``, ``post_rms`` and ``grad_gain`` (the gradient RMS over its value at the
    readout, which takes the forward pass's error at the output out of the backward comparison)
    the error is :math:`\\log_{10}(\\text{measured}/\\text{predicted})` and the tolerance

    .. math::

        \\text{tol} = \\frac{n_\\sigma}{\\ln 10} \\frac{\\text{spread}}{\\sqrt{n}} +
        \\frac{k \\, \\epsilon_{\\text{dtype}}}{\\ln 10},

    with ``spread`` from :class:`Profile` (about :math:`\\sqrt{\\kappa l}/2` after :math:`l`
    layers: :math:`c\\sqrt{l/n}` with :math:`c = n_\\sigma \\sqrt{\\kappa}/(2 \\ln 10)`, 1.23
    for linear and tanh near 0 (:math:`\\kappa = 2`), 1.94 for relu (:math:`\\kappa = 5`) at the
    default :math:`n_\\sigma = 4`, less where the map contracts), :math:`k` the layers the
    statistic went through (:math:`l` forward, :math:`L + 1 - l` backward) and
    :math:`\\epsilon` the dtype's rounding (:math:`2^{-10}` float16, :math:`2^{-7}` bfloat16,
    negligible in float32/float64). The spread is a single-example bound (a batch of
    decorrelated inputs fluctuates less), so the tolerance shrinks like :math:`1/\\sqrt n` and is
    met with room at any width. Entries whose measured or predicted value is not finite or lies
    outside the dtype's normal range (overflow, underflow: the theory is for real arithmetic)
    get a NaN tolerance and are not judged.

    Args:
        ds: a sweep dataset (:func:`stabkit.sweep`, :func:`stabkit.load`).
        prediction: :func:`predict_sweep` of ``ds`` (computed if None, with ``kwargs``).
        n_sigma: standard deviations of allowance, > 0.

    Returns:
        An ``xarray.Dataset`` aligned with ``ds``: errors ``pre_rms``, ``post_rms``,
        ``grad_gain`` and their ``tol_*`` (config..., layer), and ``passed`` per config (every
        judged entry within tolerance; True where nothing could be judged).

    Raises:
        ValueError: ``n_sigma`` not finite and positive; ``ds`` not a sweep.
    """
    import ml_dtypes
    import xarray as xr

    n_sigma = float(_check_grid(n_sigma, "n_sigma", lo=0.0, closed=False))
    pred = predict_sweep(ds, **kwargs) if prediction is None else prediction
    depth = ds.depth
    layer = ds.layer
    top = depth + 1
    meas_gain = ds.grad_post_rms / ds.grad_post_rms.sel(layer=top)
    width = ds.width.astype(np.float64)
    walked = {
        "pre_rms": layer.astype(np.float64),
        "post_rms": layer.astype(np.float64),
        "grad_gain": (top - layer).clip(min=0).astype(np.float64),
    }
    eps = xr.DataArray([_ROUNDING[str(d)] for d in ds.dtype.values], coords={"dtype": ds.dtype})
    eps_stat = xr.DataArray(
        [_STAT_ROUNDING[str(d)] for d in ds.dtype.values], coords={"dtype": ds.dtype}
    )
    info = {str(d): ml_dtypes.finfo(str(d)) for d in ds.dtype.values}
    lo = xr.DataArray(
        [float(info[str(d)].tiny) for d in ds.dtype.values], coords={"dtype": ds.dtype}
    )
    hi = xr.DataArray(
        [float(info[str(d)].max) for d in ds.dtype.values], coords={"dtype": ds.dtype}
    )
    out = {}
    judged_ok = []
    for name, measured, predicted, spread in (
        ("pre_rms", ds.pre_rms, pred.pre_rms, pred.pre_spread),
        ("post_rms", ds.post_rms, pred.post_rms, pred.post_spread),
        ("grad_gain", meas_gain, pred.grad_gain, pred.grad_spread),
    ):
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.log10(measured / predicted)
        rounding = walked[name] * eps + 2 * eps_stat
        tol = (n_sigma * spread / np.sqrt(width) + rounding) / math.log(10)
        absolute = ds.grad_post_rms if name == "grad_gain" else measured
        abs_pred = pred.grad_post_rms if name == "grad_gain" else predicted
        inside = (
            np.isfinite(err)
            & (absolute >= lo)
            & (absolute <= hi)
            & (abs_pred >= lo)
            & (abs_pred <= hi)
            & (layer <= top)
        )
        tol = tol.where(inside)
        out[name] = err.where(layer <= top)
        out[f"tol_{name}"] = tol
        judged_ok.append(((np.abs(err) <= tol) | tol.isnull()).all("layer"))
    passed = judged_ok[0] & judged_ok[1] & judged_ok[2]
    dims = ("dtype", "width", "activation", "init", "depth", "scale", "bias_std", "seed")
    result = xr.Dataset(
        {k: v.transpose(*dims, "layer") for k, v in out.items()},
        attrs={"n_sigma": n_sigma},
    )
    result["passed"] = passed.transpose(*dims)
    return result
