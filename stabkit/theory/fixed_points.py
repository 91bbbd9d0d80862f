"""Mean-field signal propagation: kernels, solvers, the maps, fixed points and critical line.

The public face is :mod:`stabkit.theory` (its docstring states the conventions and accuracy).
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

from stabkit._checks import (
    bounded_int,
    check_elementwise,
    check_memory,
    is_floating_dtype,
    memory_limit,
)
from stabkit.activations import get_activation, is_registered

DEFAULT_ORDER = 128
#: Phase codes returned by :func:`phase` and :attr:`MeanField.phase`.
PHASE_NAMES = {-1: "ordered", 0: "critical", 1: "chaotic", 2: "unbounded"}
_CLOSED = ("linear", "relu", "erf")
_Q_MAX = 1e30  # a q-map iterate beyond this is taken to diverge (q* = inf)
_MAX_ITER = 100  # Newton / fixed-point steps for q*
_C_ITER = 60  # Newton steps for c*
_BISECT = 64  # bisection steps for the critical line: 2^-64 of the log-bracket width
_TINY = float(np.finfo(np.float64).tiny)  # the absolute floor of the fixed-point step test


# ------------------------------------------------------------------------------------ validation
#
# Every public function validates all of its arguments here, before anything is traced or compiled:
# types (real numbers; no strings, bools, None, complex or ragged lists), values (a NaN or inf
# parameter is a user error, never a result: ValueError saying NaN / inf), broadcasting (the error
# names every argument and its shape) and sizes (the memory a call would take, estimated from the
# broadcast shape, the quadrature order and the depth, against stabkit._checks.memory_limit()).

#: Lengths and depths are bounded by lax.scan / lax.map's int32 trip counts.
_MAX_INT = 2**31 - 1
#: Bytes of working memory a quadrature node takes, per point (measured with XLA's
#: memory_analysis on CPU: 48 bytes per node of the 1-D rule, 25 per node of the 2-D one; the
#: while loops of the solvers hold two copies).
_NODE_BYTES_1D = 64
_NODE_BYTES_2D = 64
#: Bytes per point of a closed form or of the per-point bookkeeping (inputs, outputs, copies).
_POINT_BYTES = 256


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(x: float) -> str:
    """A value for an error message: NaN and inf spelled out."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def _check_order(order: Any) -> int:
    if isinstance(order, (bool, np.bool_)):
        raise TypeError(f"order must be an int >= 2, got the bool {order!r}")
    try:
        order = operator.index(order)
    except TypeError:
        raise TypeError(
            f"order (quadrature nodes) must be an int >= 2, got {type(order).__name__} "
            f"{_short(order)}"
        ) from None
    if order < 2:
        raise ValueError(f"order (quadrature nodes) must be >= 2, got {order}")
    return order


def _check_int(value: Any, name: str, why: str) -> int:
    """An int in [1, 2^31 - 1] (NumPy integers welcome); ``why`` explains the upper bound."""
    return bounded_int(value, name, 1, _MAX_INT, why)


def _real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array; TypeError for anything that is not real numbers."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or array, got the bool {value!r}")
    if value is None or isinstance(value, (str, bytes, dict, set, frozenset)):
        raise TypeError(
            f"{name} must be a real number or array, got {type(value).__name__} {_short(value)}"
        )
    if isinstance(value, int):  # beyond float64 NumPy would make an object array
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{name} must be finite, got the int {_short(value)}") from None
    try:
        raw = np.asarray(value)
    except Exception as err:  # ragged lists, a traced array, an object refusing conversion
        raise TypeError(
            f"{name} must be a real number or a rectangular array of them, got "
            f"{type(value).__name__} {_short(value)} ({type(err).__name__}: {err})"
        ) from None
    if raw.dtype.kind not in "iuf" and not is_floating_dtype(raw.dtype):
        kind = {"b": "bools", "c": "complex numbers", "U": "strings", "S": "bytes"}
        raise TypeError(
            f"{name} must hold real numbers, got an array of dtype {raw.dtype}"
            f" ({kind.get(raw.dtype.kind, 'not numbers')}): {_short(value)}"
        )
    return raw.astype(np.float64)


def _check_grid(value: Any, name: str, *, lo: float, closed: bool = True, hi=None) -> np.ndarray:
    """``value`` as a non-empty float64 array in [lo, hi] (or (lo, hi] if not closed).

    NaN and inf are refused (a parameter, not a result): the message says which and where.
    """
    arr = _real_array(value, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); give at least one value")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (arr < lo if closed else arr <= lo)
        if hi is not None:
            bad |= arr > hi
    if bad.any():
        flat = np.flatnonzero(bad.ravel())
        first = float(arr.flat[int(flat[0])])
        where = ""
        if arr.ndim:
            index = tuple(int(i) for i in np.unravel_index(int(flat[0]), arr.shape))
            where = f" at index {index} ({flat.size} bad of {arr.size} entries, shape {arr.shape})"
        if hi is not None:
            rng = f" and in [{lo:g}, {hi:g}]"
        elif lo == -math.inf:
            rng = ""
        else:
            rng = f" and >= {lo:g}" if closed else f" and > {lo:g}"
        raise ValueError(f"{name} must be finite{rng}, got {_describe(first)}{where}")
    subnormal = (arr != 0) & (np.abs(arr) < _TINY)
    if subnormal.any():  # XLA:CPU reads subnormal float64 inputs as 0: a silently wrong answer
        first = float(arr.flat[int(np.flatnonzero(subnormal.ravel())[0])])
        raise ValueError(
            f"{name} must be 0 or at least {_TINY:.4g} in magnitude (the smallest normal "
            f"float64; XLA:CPU reads subnormal inputs as 0), got {first!r}"
        )
    return arr


def _check_scalar(value: Any, name: str, **kwargs) -> float:
    """A single finite real number (a 0-d array or NumPy scalar included); see _check_grid."""
    arr = _check_grid(value, name, **kwargs)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a single number, got an array of shape {arr.shape}")
    return float(arr)


def _variances(sigma_w2: Any, sigma_b2: Any) -> tuple[np.ndarray, np.ndarray]:
    sw = _check_grid(sigma_w2, "sigma_w2 (the weight variance)", lo=0.0, closed=False)
    sb = _check_grid(sigma_b2, "sigma_b2 (the bias variance)", lo=0.0)
    return sw, sb


def _broadcast_shape(grids: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The broadcast shape of the named arrays; a ValueError naming the two that clash."""
    try:
        return tuple(int(n) for n in np.broadcast_shapes(*(a.shape for a in grids.values())))
    except ValueError:
        pass
    items = list(grids.items())
    shapes = ", ".join(f"{n} {a.shape}" for n, a in items)
    for i, (n1, a1) in enumerate(items):
        for n2, a2 in items[i + 1 :]:
            try:
                np.broadcast_shapes(a1.shape, a2.shape)
            except ValueError:
                raise ValueError(
                    f"{n1} (shape {a1.shape}) and {n2} (shape {a2.shape}) do not broadcast "
                    f"against each other (NumPy rules: trailing dimensions equal or 1); "
                    f"shapes: {shapes}"
                ) from None
    raise AssertionError(f"no clashing pair among {shapes}")  # pragma: no cover


def _quad_bytes(k: _Kernel, dims: int) -> int:
    """Working bytes of one point's expectation (the 1-D or 2-D rule; a closed form: little)."""
    if k.kind != "quadrature":
        return _POINT_BYTES
    return _NODE_BYTES_1D * k.order if dims == 1 else _NODE_BYTES_2D * k.order**2


def _check_work(k: _Kernel, shape, names, per_point: int, at_once: int, what: str) -> None:
    """Refuse a call whose working set would not fit: ``per_point`` bytes for each of
    ``at_once`` points evaluated together (all of them under vmap, a batch under lax.map) plus
    ``_POINT_BYTES`` of bookkeeping for each of the ``prod(shape)`` points."""
    n = math.prod(shape)
    limit = memory_limit()
    if k.kind == "quadrature":
        check_memory(per_point, "order", k.order, f"one point of {what}", limit)
    nbytes = per_point * min(n, at_once) + _POINT_BYTES * n
    check_memory(
        nbytes,
        f"the broadcast shape of ({', '.join(names)})",
        shape,
        f"{n} points of {what}",
        limit,
    )


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


@functools.lru_cache(maxsize=256)
def _check_phi(phi: Callable) -> None:
    """A user callable must map float64 arrays elementwise, twice differentiable by jvp (the
    quadrature takes phi, phi' and phi''); checked by tracing only, once per callable."""
    with jax.enable_x64(True):
        check_elementwise(phi, "activation", jnp.float64, derivatives=2)


def _kernel(activation: Any, order: Any, method: Any) -> _Kernel:
    order = _check_order(order)
    phi = get_activation(activation)  # TypeError/ValueError naming a bad activation
    try:
        hash(phi)
    except TypeError:
        raise TypeError(
            f"activation {_short(activation)} must be hashable (it keys the compiled kernels)"
        ) from None
    if not is_registered(phi):
        _check_phi(phi)
    name = None
    if isinstance(activation, str):
        name = activation
    else:
        name = next((n for n in _CLOSED if get_activation(n) is phi), None)
    if not isinstance(method, str) or method not in ("auto", "closed", "quadrature"):
        raise ValueError(f"method must be 'auto', 'closed' or 'quadrature', got {_short(method)}")
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
        moving = jnp.abs(q - prev) > 1e-15 * q + _TINY  # q* may be as small as sigma_b^2: 1e-222
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


def _prepare(
    activation, order, method, grids: dict[str, np.ndarray], *, per_point, what, at_once=None
):
    """The kernel, the broadcast shape and the flattened ``grids``, every argument validated and
    the call's memory bounded before anything compiles.

    ``per_point(k)``: working bytes of one point; ``at_once``: how many points are evaluated
    together (None: all of them, under vmap; a lax.map batch size otherwise).
    """
    k = _kernel(activation, order, method)
    shape = _broadcast_shape(grids)
    n = math.prod(shape)
    _check_work(k, shape, list(grids), per_point(k), n if at_once is None else at_once, what)
    arrays = np.broadcast_arrays(*grids.values())
    return k, shape, [np.ravel(a) for a in arrays]


def _one_d(k):
    return _quad_bytes(k, 1)


def _two_d(k):
    return _quad_bytes(k, 1) + _quad_bytes(k, 2)


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
    if k.kind in ("linear", "relu"):  # chi_1 = sigma_w^2 or sigma_w^2 / 2 whatever q* is
        crit = 1.0 if k.kind == "linear" else 2.0
        return _out(np.where((lo < crit) & (crit <= hi), crit, np.nan) + 0 * sb, shape)
    with jax.enable_x64(True):
        out = np.asarray(_critical(k, jnp.asarray(sb), lo, hi, rungs=rungs))
    return _out(out, shape)
