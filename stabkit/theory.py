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
Gauss-Hermite quadrature of a stated ``order`` (``order`` nodes in 1-D, ``order**2`` for the 2-D
c-map), or by a closed form where one exists (``method="auto"``):

* ``linear``: :math:`E[\\phi^2] = q`, :math:`E[\\phi_1\\phi_2] = qc`, :math:`\\chi_1 = \\sigma_w^2`.
* ``relu``: :math:`E[\\phi^2] = q/2`; the arc-cosine kernel (Cho & Saul 2009)
  :math:`E[\\phi_1\\phi_2] = \\frac{q}{2\\pi}(\\sin\\theta + (\\pi - \\theta)\\cos\\theta)`,
  :math:`E[\\phi'_1\\phi'_2] = \\frac{\\pi - \\theta}{2\\pi}`, :math:`\\theta = \\arccos c`; so
  :math:`\\chi_1 = \\sigma_w^2/2` and the only critical point is :math:`(2, 0)`.
* ``erf``: Williams' kernel (Williams 1997) :math:`E[\\phi_1\\phi_2] = \\frac{2}{\\pi}
  \\arcsin \\frac{2qc}{1 + 2q}`, :math:`E[\\phi'_1\\phi'_2] = \\frac{4}{\\pi}((1+2q)^2 -
  4q^2c^2)^{-1/2}`.

Accuracy of the quadrature (default ``order=128``, nodes and weights by Golub-Welsch): for tanh
and erf, agreement with ``order=256`` and with the erf closed forms to ~1e-12 for
:math:`q \\le 1` and ~1e-7 at :math:`q = 3`; the error grows with :math:`q`, because the
integrand's features narrow as :math:`1/\\sqrt q` while the nodes stay put (raise ``order`` for
:math:`q^* \\gg 3`). Activations with a kink (relu-like) converge only like ``1/order`` in the
2-D c-map (4e-3 for relu at 128, which is why relu uses its closed form). :math:`\\phi''` is taken
by autodiff, so :math:`\\phi\\phi''` must have no point mass where :math:`\\phi \\ne 0` (true for
every registered activation).

Every function takes an activation (a registered name or a JAX-traceable elementwise callable) and
variances that broadcast against each other (grids welcome: a 200 x 200 phase diagram is one
compiled, vectorized call), and returns NumPy float64 arrays of the broadcast shape (NumPy scalars
for scalar input). Fixed points are found by safeguarded Newton iterations written here (no SciPy);
the critical line by bisection in :math:`\\log \\sigma_w^2`.

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
    "c_map",
    "c_star",
    "chi_1",
    "critical_line",
    "iterate_maps",
    "jacobian_singular_values",
    "jacobian_spectrum_moments",
    "mean_field",
    "phase",
    "q_map",
    "q_star",
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
            f"order (Gauss-Hermite nodes) must be an int >= 2, got {type(order).__name__} {order!r}"
        ) from None
    if order < 2:
        raise ValueError(f"order (Gauss-Hermite nodes) must be >= 2, got {order}")
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


@functools.lru_cache(maxsize=32)
def _gauss_hermite(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with sum_i w_i f(x_i) ~ E[f(z)], z ~ N(0, 1), by Golub-Welsch.

    The nodes are the eigenvalues of the Jacobi matrix of the probabilists' Hermite polynomials
    (zero diagonal, off-diagonal sqrt(1..n-1)), the weights the squared first components of its
    eigenvectors: stable at any order (NumPy's hermegauss overflows beyond about 360 nodes).
    """
    off = np.sqrt(np.arange(1, order, dtype=np.float64))
    x, v = np.linalg.eigh(np.diag(off, 1) + np.diag(off, -1))
    w = v[0] ** 2
    x = (x - x[::-1]) / 2  # exact symmetry: odd integrands vanish, even orders skip z = 0
    w = (w + w[::-1]) / 2
    return x, w / w.sum()


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """The Gaussian expectations of one activation, closed-form or by quadrature (static, hashable).

    Methods take float64 scalars (they run under ``vmap``); ``u ~ N(0, q)`` and ``(u1, u2)`` have
    variances ``q`` and correlation ``c``.
    """

    phi: Callable
    kind: str  # "linear", "relu", "erf" or "quadrature"
    order: int

    def _nodes(self):
        x, w = _gauss_hermite(self.order)
        return jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)

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
        x, w = self._nodes()
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
        x, w = self._nodes()
        s = jnp.sqrt(q)
        u1 = s * x[:, None]
        u2 = s * (c * x[:, None] + jnp.sqrt(1 - c * c) * x[None, :])
        y1, d1, _ = self._derivs(u1)
        y2, d2, _ = self._derivs(u2)
        return w @ (y1 * y2) @ w, w @ (d1 * d2) @ w


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
        order: Gauss-Hermite nodes, >= 2 (ignored by a closed form).
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
