"""Mean field of residual networks (Yang & Schoenholz 2017): :func:`residual_mean_field`.

A stabkit residual block maps ``h -> h + alpha F(h)`` with the branch ``F`` the MLP
``phi(h W1 + b1) W2 + b2`` (``branch="mlp"``, Yang & Schoenholz's *full* residual network) or one
dense layer ``phi(h W + b)`` (``branch="dense"``, their *reduced* one), weights drawn
:math:`N(0, \\sigma_w^2/\\text{fan-in})` and biases :math:`N(0, \\sigma_b^2)`. In the paper's
notation (:math:`x^l = x^{l-1} + V\\phi(W x^{l-1} + b) + a`) the stabkit block has
:math:`\\sigma_w = \\sigma_w`, :math:`\\sigma_b = \\sigma_b`, :math:`\\sigma_v = \\alpha\\sigma_w`,
:math:`\\sigma_a = \\alpha\\sigma_b`.

With :math:`q^l` the per-unit second moment of :math:`h^l`, :math:`m^l` its per-unit mean and
:math:`p^l = \\sigma_w^2 q^{l-1} + \\sigma_b^2` the variance of block ``l``'s pre-activations
(:math:`u \\sim N(0, p^l)`), the infinite-width recursions are

.. math::

    \\text{mlp:}\\quad q^l = q^{l-1} + \\alpha^2 (\\sigma_w^2 E[\\phi(u)^2] + \\sigma_b^2),\\qquad
    \\text{dense:}\\quad q^l = q^{l-1} + 2\\alpha m^{l-1} E[\\phi(u)] + \\alpha^2 E[\\phi(u)^2],
    \\ m^l = m^{l-1} + \\alpha E[\\phi(u)],

(the branch's output is independent of the skip's, its weights being fresh; the MLP branch has
mean zero, the dense one the activation's mean, zero for odd ones), and backward, for
:math:`r^l = |\\partial L/\\partial h^l|^2` (the gradient independence assumption),

.. math::

    r^{l-1} = r^l \\,(1 + \\alpha^2 \\sigma_w^4 E[\\phi'(u)^2])\\ \\text{(mlp)},\\qquad
    r^{l-1} = r^l \\,(1 + \\alpha^2 \\sigma_w^2 E[\\phi'(u)^2])\\ \\text{(dense)}.

Without the skip (``residual=False``) the dense block is the plain MLP layer:
:math:`q^l = E[\\phi(u)^2]`, :math:`r^{l-1} = \\sigma_w^2 E[\\phi'(u)^2] r^l`, the maps of
:func:`stabkit.theory.iterate_maps` written for the post-activations.

**What is polynomial and what is exponential** (bias-free, :math:`\\sigma_b = 0`, fixed
:math:`\\alpha`; derived here from the recursions above, checked against their large-depth
iterates in the tests; the paper derives laws of this kind for its full and reduced nets):

* tanh (any bounded odd :math:`\\phi` with :math:`E[\\phi^2] \\to 1`): the forward length grows
  **linearly**, :math:`q^l \\approx \\alpha^2\\sigma_w^2 l` (mlp) or :math:`\\alpha^2 l` (dense):
  polynomial of degree 1, against the plain MLP's exponential approach to its fixed point. The
  gradient grows **faster than any polynomial but slower than exponentially**: since
  :math:`E[\\tanh'(u)^2] \\approx \\tfrac{4}{3}/\\sqrt{2\\pi p}`, the per-block log gain falls like
  :math:`1/\\sqrt l` and :math:`\\log(r^l/r^L) \\approx 2c(\\sqrt L - \\sqrt l)` with
  :math:`c = \\tfrac{4}{3}\\alpha\\sigma_w^2/\\sqrt{2\\pi}` (mlp) or
  :math:`\\tfrac{4}{3}\\alpha\\sigma_w/\\sqrt{2\\pi}` (dense): :math:`\\exp(\\Theta(\\sqrt L))`,
  against the plain MLP's :math:`\\chi_1^L`.
* relu, mlp branch: **exponential** both ways, at exactly the same rate,
  :math:`q^l = (1 + \\alpha^2\\sigma_w^4/2)\\, q^{l-1}` and
  :math:`r^{l-1} = (1 + \\alpha^2\\sigma_w^4/2)\\, r^l` (:math:`\\sigma_v^2\\sigma_w^2/2` in the
  paper's terms), since relu's :math:`E[\\phi^2] = p/2` is linear in ``p``. With
  :math:`\\alpha = 1/\\sqrt L` a depth-``L`` network stays **bounded**:
  :math:`q^L/q^0 = (1 + \\sigma_w^4/(2L))^L < e^{\\sigma_w^4/2}`, likewise the gradient.
* relu, dense branch: exponential too, faster (the mean :math:`m^l` grows with
  :math:`\\sqrt{q^l}`: about 2.17 per block at :math:`\\sigma_w = 1`). Only its forward part
  holds: relu's mean builds a common mode that correlates each layer's derivative mask with its
  weights, and the gradient independence behind the backward recursion fails (a stabkit net of
  width 128 gains about 2.0 per block backward against the predicted 1.5).

References:
    G. Yang, S. S. Schoenholz, "Mean field residual networks: on the edge of chaos", NeurIPS
    2017 (arXiv:1712.08969): the reduced and full residual networks, their length and gradient
    recursions and asymptotics.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import _check_int, check_memory, choice, finite_float, strict_bool
from stabkit.theory.closed_forms import CLOSED
from stabkit.theory.quadrature import DEFAULT_ORDER, _Kernel, _kernel, _sinh_rule

__all__ = ["BRANCHES", "ResidualMeanField", "residual_mean_field"]

#: The branches of a stabkit residual block the theory covers.
BRANCHES = ("mlp", "dense")

#: Bytes per block of the result (four float64 series on the device and the host, and copies).
_LAYER_BYTES = 128


class ResidualMeanField(NamedTuple):
    """Per-boundary mean-field statistics of a stack of ``depth`` blocks (float64 arrays).

    Boundary 0 is the stack's input, boundary ``l`` block ``l``'s output (as in
    :func:`stabkit.trace`'s rows 0..depth).

    Attributes:
        q: ``(depth + 1,)`` per-unit second moment :math:`q^l` of :math:`h^l` (``q[0] = q0``).
        mean: ``(depth + 1,)`` per-unit mean :math:`m^l` of :math:`h^l` (zero but for the dense
            branch of an activation with non-zero Gaussian mean, such as relu).
        p: ``(depth,)`` the pre-activation variance inside block ``l`` (``p[l - 1]``).
        chi: ``(depth,)`` the block's gradient gain :math:`r^{l-1}/r^l` (``chi[l - 1]``).
        grad: ``(depth + 1,)`` :math:`r^l / r^{\\text{depth}}`, the squared norm of
            :math:`\\partial L/\\partial h^l` relative to the last block's (``grad[-1] = 1``).
    """

    q: np.ndarray
    mean: np.ndarray
    p: np.ndarray
    chi: np.ndarray
    grad: np.ndarray


def _moments(k: _Kernel, p):
    """(E[phi(u)], E[phi(u)^2], E[phi'(u)^2]) at u ~ N(0, p).

    Closed forms for linear, relu and erf (relu's mean: :math:`\\sqrt{p/(2\\pi)}`; the others are
    odd), the q-adapted sinh rule of :mod:`stabkit.theory.quadrature` otherwise (phi' by
    forward-mode autodiff; the rule's accuracy is the q-map's).
    """
    if k.kind in CLOSED:
        e2, d2 = k.diag(p)[:2]
        mean = jnp.sqrt(p / (2 * jnp.pi)) if k.kind == "relu" else jnp.zeros_like(p)
        return mean, e2, d2
    x, w = _sinh_rule(k.order or DEFAULT_ORDER, p)
    y, dy = jax.jvp(k.phi, (jnp.sqrt(p) * x,), (jnp.ones_like(x),))
    return w @ y, w @ (y * y), w @ (dy * dy)


@functools.partial(jax.jit, static_argnames=("k", "depth"))
def _recurse(k: _Kernel, sw2, sb2, alpha, q0, mlp, skip, *, depth: int):
    """(q, m, p, chi) for blocks 1..depth (each ``(depth,)``), float64.

    The branch (``mlp``) and the skip (``skip``) are data, not static: one compilation per
    activation and depth serves every block the theory covers.
    """

    def step(carry, _):
        q, m = carry
        p = sw2 * q + sb2
        mean, e2, d2 = _moments(k, p)
        # The MLP branch phi(u) W2 + b2 has mean zero and is independent of the skip; the dense
        # branch phi(u) has the activation's mean.
        f_mean = jnp.where(mlp, 0.0, mean)
        f_sq = jnp.where(mlp, sw2 * e2 + sb2, e2)
        gain = jnp.where(mlp, sw2 * sw2 * d2, sw2 * d2)
        q_new = jnp.where(skip, q + 2 * alpha * m * f_mean + alpha * alpha * f_sq, f_sq)
        m_new = jnp.where(skip, m + alpha * f_mean, f_mean)
        chi = jnp.where(skip, 1 + alpha * alpha * gain, gain)
        return (q_new, m_new), (q_new, m_new, p, chi)

    zero = jnp.zeros_like(q0)
    return jax.lax.scan(step, (q0, zero), None, length=depth)[1]


def residual_mean_field(
    activation: Any,
    depth: int,
    *,
    sigma_w: float,
    sigma_b: float = 0.0,
    alpha: float = 1.0,
    branch: str = "mlp",
    residual: bool = True,
    q0: float = 1.0,
    order: int = DEFAULT_ORDER,
    method: str = "auto",
) -> ResidualMeanField:
    """Forward length and backward gradient of a stack of residual blocks at infinite width.

    The recursions, the map onto Yang & Schoenholz's parameters and the asymptotic laws
    (polynomial, :math:`\\exp\\sqrt L`, exponential) are in :mod:`stabkit.theory.residual`'s
    docstring. The network is ``stabkit.net_init(key, block("residual", activation=...,
    branch=branch), init="gaussian", scale=sigma_w, bias_std=sigma_b, alpha=alpha)`` (and
    ``block("dense")`` for ``branch="dense", residual=False``), its stack's input of per-unit
    second moment ``q0`` and mean zero (an embedding's output or a centred ``x``). Expectations
    are float64 (closed forms for linear, relu, erf; the q-adapted quadrature of
    :mod:`stabkit.theory` otherwise); a length or gradient ratio that overflows float64 is
    ``inf``, carried through.

    Args:
        activation: a registered name (:func:`stabkit.activation_names`) or a JAX-traceable
            elementwise callable.
        depth: the number of blocks, >= 1.
        sigma_w: the weight multiplier (``scale``), > 0: weights
            :math:`N(0, \\sigma_w^2/\\text{fan-in})`.
        sigma_b: the biases' standard deviation (``bias_std``), >= 0.
        alpha: the residual scale (1, ``depth ** -0.5``...), any finite real; must be 1 without
            the skip.
        branch: ``"mlp"`` (default, ``phi(h W1 + b1) W2 + b2``) or ``"dense"`` (``phi(h W + b)``).
        residual: the skip connection (default); False gives the plain stack of the branch.
        q0: the per-unit second moment of the stack's input, >= 0.
        order, method: the quadrature, as for :func:`stabkit.theory.q_map`.

    Returns:
        A :class:`ResidualMeanField`.

    Raises:
        ValueError: a non-positive ``sigma_w`` or depth, a negative ``sigma_b`` or ``q0``, a
            non-finite parameter, an unknown branch, activation or method, ``alpha != 1`` with
            ``residual=False``, a depth beyond memory.
        TypeError: a non-numeric parameter, a non-int depth or order, a non-bool ``residual``,
            an activation that is neither a name nor a traceable elementwise callable.

    Examples:
        relu, mlp branch: every block multiplies the length and the gradient by
        :math:`1 + \\alpha^2 \\sigma_w^4/2`.

        >>> mf = residual_mean_field("relu", 3, sigma_w=1.0)
        >>> mf.q.tolist(), mf.grad.tolist()
        ([1.0, 1.5, 2.25, 3.375], [3.375, 2.25, 1.5, 1.0])

        tanh: the length grows by about :math:`\\alpha^2 \\sigma_w^2` a block.

        >>> mf = residual_mean_field("tanh", 100, sigma_w=1.0)
        >>> round(float(mf.q[100] - mf.q[99]), 3)
        0.913
    """
    k = _kernel(activation, order, method)
    depth = _check_int(depth, "depth", "lax.scan counts blocks in int32")
    sigma_w = finite_float(sigma_w, "sigma_w (the weight multiplier)", positive=True)
    sigma_b = finite_float(sigma_b, "sigma_b (the bias std)")
    if sigma_b < 0:
        raise ValueError(f"sigma_b (the bias std) must be >= 0, got {sigma_b}")
    alpha = finite_float(alpha, "alpha (the residual scale)")
    branch = choice(branch, "branch", BRANCHES)
    residual = strict_bool(residual, "residual")
    if not residual and alpha != 1.0:
        raise ValueError(
            f"alpha scales the branch of a residual block; with residual=False it must be 1, "
            f"got {alpha}"
        )
    q0 = finite_float(q0, "q0 (the input's second moment)")
    if q0 < 0:
        raise ValueError(f"q0 (the input's second moment) must be >= 0, got {q0}")
    check_memory(_LAYER_BYTES * depth, "depth", depth, f"the mean field of {depth} blocks")
    with jax.enable_x64(True):
        f64 = functools.partial(jnp.asarray, dtype=jnp.float64)
        q, m, p, chi = _recurse(
            k,
            f64(sigma_w * sigma_w),
            f64(sigma_b * sigma_b),
            f64(alpha),
            f64(q0),
            jnp.asarray(branch == "mlp"),
            jnp.asarray(residual),
            depth=int(depth),
        )
        q, m, p, chi = (np.asarray(a, np.float64) for a in (q, m, p, chi))
    with np.errstate(over="ignore", invalid="ignore"):
        grad = np.append(np.cumprod(chi[::-1])[::-1], 1.0)
    return ResidualMeanField(
        q=np.concatenate([[q0], q]),
        mean=np.concatenate([[0.0], m]),
        p=p,
        chi=chi,
        grad=grad,
    )
