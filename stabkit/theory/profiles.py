"""Per-layer mean-field predictions of a network's statistics (:func:`predict_profile`).

The public face is :mod:`stabkit.theory`. The adapter that applies them to a sweep dataset
(``predict_sweep``, ``compare_sweep``) is :mod:`stabkit.sweeps.theory_comparison`: the theory does
not import the sweep engine.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import _check_grid, _check_int, _short, check_memory
from stabkit.init import init_rule
from stabkit.theory import closed_forms
from stabkit.theory.closed_forms import AFFINE
from stabkit.theory.fixed_points import _Q_MAX
from stabkit.theory.quadrature import (
    DEFAULT_ORDER,
    _Kernel,
    _out,
    _prepare,
    _quad_bytes,
    _sinh_rule,
    _variances,
)

# ------------------------------------------------------------------ public: per-layer profiles

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
    rule = init_rule(init)  # TypeError/ValueError naming a bad init
    per_unit = 1.0 if rule.variance is None else rule.variance(1, 1)  # square layer: n Var(W_ij)
    s = _check_grid(scale, "scale", lo=-math.inf)  # any finite number: its square enters
    return _out(s * s * per_unit, s.shape)


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
    if k.kind in AFFINE:
        return (*k.diag(q), *closed_forms.fourth_moments(k.kind, q))
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


#: Bytes per config and layer of a profile: the forward pass's 8 float64 fields on the device
#: and gathered on the host, the backward pass's 3, the Profile's 8 and NumPy's temporaries.
_PROFILE_BYTES = 320


def _profile_point(k: _Kernel) -> int:
    """Working bytes of one config's forward step: the full and the half quadrature rule."""
    return 2 * _quad_bytes(k, 1)


def _check_depth(depth: Any) -> int:
    return _check_int(depth, "depth", "lax.scan counts layers in int32")


def _check_profile_memory(n: int, n_layers: int, name: str, value: Any) -> None:
    check_memory(
        _PROFILE_BYTES * n * n_layers,
        name,
        value,
        f"the per-layer profiles of {n} config(s) x {n_layers} layers (float64)",
    )


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
    if not isinstance(weights, str) or weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', got {_short(weights)}")
    if not isinstance(loss, str) or loss not in _PROFILE_LOSSES:
        raise ValueError(f"loss must be one of {_PROFILE_LOSSES}, got {_short(loss)}")
    grids = {"sigma_w2": sw, "sigma_b2": sb, "q0": q0}
    k, shape, (sw, sb, q0) = _prepare(
        activation, order, method, grids, per_point=_profile_point, what="the forward pass"
    )
    n = sw.shape[0]
    _check_profile_memory(n, depth + 2, "depth", depth)
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
