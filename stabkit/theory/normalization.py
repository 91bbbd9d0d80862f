"""Normalization at initialization: batch norm's gradient explosion, layer norm's gradient scales.

**Batch norm** (Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019). In a deep fully
connected net :math:`h^l = \\phi(\\mathrm{BN}(h^{l-1} W^l))` on a batch of :math:`B` examples
(``stabkit.networks.block("dense", norm="batch", norm_position="inner")``), each feature's
pre-activations over the batch, :math:`y \\in \\mathbb{R}^B`, are Gaussian at infinite width with
covariance :math:`\\sigma_w^2 K` (:math:`K = h h^T / N`, the batch's Gram matrix), and batch norm
maps them to :math:`z = \\sqrt{B}\\, G y / |G y|` (:math:`G = I - 11^T/B`, the centring
projection). Its Jacobian is

.. math::

    \\frac{\\partial z}{\\partial y} = \\frac{\\sqrt B}{|G y|}\\,(G - u u^T),
    \\qquad u = \\frac{G y}{|G y|},

so with the gradient-independence assumption (the backward weights independent of the forward
ones) the gradient's ``B x B`` covariance :math:`\\Pi^l` over the batch obeys the linear map

.. math::

    \\Pi^{l-1} = \\sigma_w^2\\,
        E\\Big[\\frac{B}{|G y|^2}\\,P D \\Pi^l D P\\Big],
    \\qquad P = G - u u^T,\\ D = \\mathrm{diag}\\,\\phi'(z).

Two facts make it computable. (i) At the batch-symmetric fixed point :math:`K^* = a G + b 11^T`
(the paper's BSB1 fixed point, which the forward map reaches from generic inputs), :math:`G y` is
isotropic in the :math:`(B - 1)`-dimensional space orthogonal to :math:`1`: :math:`u` is uniform
on its unit sphere, independent of :math:`|G y|^2 \\sim \\sigma_w^2 a\\, \\chi^2_{B-1}`, and
:math:`E[1/\\chi^2_{B-1}] = 1/(B - 3)`. :math:`\\sigma_w^2` cancels: **no weight scale changes the
rate**. (ii) The map commutes with permutations of the batch, and :math:`\\Pi \\propto G` is its
leading eigenvector (checked against the full ``B^2 x B^2`` operator). Hence the growth of the
squared gradient norm per layer, going backward,

.. math::

    \\lambda_G(B) = \\frac{B}{B - 3}\\,
        \\frac{E_u[\\operatorname{tr}(P D G D P)] / (B - 1)}
             {E_u[\\phi(z_1)^2 - \\phi(z_1)\\phi(z_2)]},
    \\qquad z = \\sqrt{B}\\,u,

the denominator being :math:`a = K^*_{11} - K^*_{12}`, from the forward fixed point
:math:`K^* = E[\\phi(z)\\phi(z)^T]`. :func:`batchnorm_gradient_rate` evaluates it by float64 Monte
Carlo over :math:`u` (with its standard error), exactly for ``linear``:
:math:`\\lambda_G = (B - 2)/(B - 3)`. As :math:`B \\to \\infty` the coordinates of :math:`z` become
independent standard normals and

.. math::

    \\lambda_G(\\infty) = \\frac{E[\\phi'(z)^2]}{\\operatorname{Var} \\phi(z)} \\ge 1,
    \\qquad z \\sim N(0, 1),

by the Gaussian Poincare inequality (equality only for linear :math:`\\phi`): batch norm explodes
the gradient for every nonlinearity. For relu, :math:`E[\\phi'^2] = 1/2` and
:math:`\\operatorname{Var}\\phi = 1/2 - 1/(2\\pi)`: :math:`\\lambda_G(\\infty) = \\pi/(\\pi - 1)
\\approx 1.467` (:func:`batchnorm_gradient_rate_limit`). At :math:`B \\le 3` the expectation of
:math:`1/|Gy|^2` is infinite: no finite rate.

**Layer norm** in residual stacks (Xiong et al. 2020, Theorem 1 and Lemma 2). A block with an
MLP branch :math:`F(u) = \\phi(u W_1) W_2` (Gaussian weights of variance ``scale**2 / fan_in``)
on an input of unit second moment adds a branch of second moment
:math:`q_F = s^2 E[\\phi(s z)^2]` and multiplies squared gradient norms by
:math:`1 + \\chi_F` along the branch, :math:`\\chi_F = s^4 E[\\phi'(s z)^2]`
(:func:`mlp_branch_moments`; relu: :math:`q_F = \\chi_F = s^4/2`). With :math:`q_l` the second
moment of :math:`x_l` (the embedding's :math:`q_0`):

* **pre-LN**, :math:`x_l = x_{l-1} + F(\\mathrm{LN}(x_{l-1}))` and a final LN before the readout:
  the branches add up, :math:`q_l = q_0 + l\\,q_F` (Xiong's Lemma 2 bounds it between
  :math:`1 + L/2` and :math:`1 + 3L/2` with attention; without attention it is exact). The final
  LN's Jacobian scales the output gradient by :math:`q_L^{-1/2}`, and each block multiplies the
  squared gradient by :math:`1 + \\chi_F / q_{l-1}` (the LN in front of the branch divides by
  :math:`\\sqrt{q_{l-1}}`). So the gradient of block :math:`l`'s weights has RMS
  :math:`\\propto (q_L^{-1} \\prod_{k=l}^{L-1} (1 + \\chi_F/q_k))^{1/2}`, which for
  :math:`\\chi_F = q_F` telescopes to :math:`q_l^{-1/2}`: **the last block's gradient falls
  like** :math:`(q_0 + L q_F)^{-1/2} \\sim L^{-1/2}` (Xiong's :math:`O(d\\sqrt{\\ln d / L})`).
* **post-LN**, :math:`x_l = \\mathrm{LN}(x_{l-1} + F(x_{l-1}))`: every :math:`q_l = 1`; each
  block's LN divides the squared gradient by :math:`1 + q_F` and its skip-plus-branch multiplies
  it by :math:`1 + \\chi_F`. The last block's gradient does not depend on :math:`L` (Xiong's
  :math:`O(d\\sqrt{\\ln d})`), and block :math:`l`'s is
  :math:`\\propto ((1 + \\chi_F)/(1 + q_F))^{(L - l)/2} (1 + q_F)^{-1/2}`: flat when
  :math:`\\chi_F = q_F` (relu), growing towards the output when :math:`\\chi_F < q_F`.

:func:`layernorm_gradient_profile` returns these per-block predictions (relative, the common
factor of the loss and the readout left out: the same for pre- and post-LN, so their ratio is a
prediction too), :func:`loglog_slope` the least-squares slope of one against depth.

Everything is float64 NumPy; activations' Gaussian moments come from
:mod:`stabkit.theory.quadrature` (closed forms for ``linear`` and ``relu``).

References:
    G. Yang, J. Pennington, V. Rao, J. Sohl-Dickstein, S. S. Schoenholz, "A mean field theory of
    batch normalization", ICLR 2019, arXiv:1902.08129 (the BSB1 fixed point, gradient explosion
    at rate lambda_G, pi/(pi - 1) for relu at large batch).
    R. Xiong, Y. Yang, D. He, K. Zheng, S. Zheng, C. Xing, H. Zhang, Y. Lan, L. Wang, T.-Y. Liu,
    "On layer normalization in the transformer architecture", ICML 2020, arXiv:2002.04745
    (Theorem 1: the last layer's gradient is O(d sqrt(ln d)) post-LN and O(d sqrt(ln d / L))
    pre-LN; Lemma 2: the pre-LN activations' second moment grows linearly in L).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import _short, choice, finite_float, positive_int
from stabkit.activations import get_activation, value_and_derivative
from stabkit.theory.quadrature import DEFAULT_ORDER, _cross_jit, _diag_jit, _kernel

__all__ = [
    "BatchNormRate",
    "batchnorm_gradient_rate",
    "batchnorm_gradient_rate_limit",
    "layernorm_gradient_profile",
    "loglog_slope",
    "mlp_branch_moments",
]

#: Rows of Monte Carlo samples drawn at once (times B float64 entries, a few arrays of them).
_CHUNK_ENTRIES = 1 << 20


class BatchNormRate(NamedTuple):
    """A batch-norm gradient explosion rate and how it was obtained.

    Attributes:
        rate: :math:`\\lambda_G`, the factor by which the squared gradient norm grows per layer
            going backward.
        stderr: its Monte Carlo standard error (0 for a closed form).
        batch: ``B`` (``math.inf`` for the large-batch limit).
        samples: Monte Carlo samples used (0 for a closed form).
    """

    rate: float
    stderr: float
    batch: float
    samples: int


def _moments(activation: Any, q: float, order: int) -> tuple[float, float, float]:
    """(E[phi]^2, E[phi^2], E[phi'^2]) at ``u ~ N(0, q)`` in float64 (closed forms or quadrature).

    ``E[phi]^2`` is the kernel at correlation 0, ``E[phi(u1) phi(u2)] = E[phi(u1)] E[phi(u2)]``.
    """
    k = _kernel(activation, order, "auto")
    with jax.enable_x64(True):
        qq = jnp.asarray([q], jnp.float64)
        e2, d2 = (float(v[0]) for v in _diag_jit(k, qq)[:2])
        _, cross0 = _cross_jit(k, qq, jnp.zeros_like(qq))
    return float(cross0[0]), e2, d2


def batchnorm_gradient_rate_limit(activation: Any = "relu", *, order: int = DEFAULT_ORDER) -> float:
    """The large-batch rate :math:`\\lambda_G(\\infty) = E[\\phi'(z)^2] / \\mathrm{Var}\\,\\phi(z)`.

    ``z ~ N(0, 1)``; see the module docstring. ``pi / (pi - 1)`` for relu, 1 for linear.

    Args:
        activation: a registered name or an elementwise callable.
        order: quadrature nodes (activations without a closed form).

    Returns:
        The rate, a float.

    Raises:
        ValueError: an activation whose variance under ``N(0, 1)`` is 0 (a constant).
        TypeError: a bad activation or order.

    Examples:
        >>> round(batchnorm_gradient_rate_limit("relu"), 12) == round(math.pi / (math.pi - 1), 12)
        True
        >>> batchnorm_gradient_rate_limit("linear")
        1.0
    """
    mean_sq, e2, d2 = _moments(activation, 1.0, order)
    var = e2 - mean_sq
    if not var > 1e-12 * max(e2, 1e-300):
        raise ValueError(
            f"activation {_short(activation)} is constant under N(0, 1) (variance {var:.3g}); "
            "batch norm's rate needs a non-constant activation"
        )
    return d2 / var


def _check_batch(batch: Any) -> float:
    if isinstance(batch, float) and math.isinf(batch) and batch > 0:
        return math.inf
    b = positive_int(batch, "batch (the batch size B, or math.inf)", 1)
    if b <= 3:
        raise ValueError(
            f"batch must be >= 4 (or math.inf), got {b}: at B <= 3 the expected 1/|G y|^2 of "
            "batch norm's Jacobian is infinite (chi-square with B - 1 <= 2 degrees of freedom), "
            "so the mean-field gradient explodes at no finite rate"
        )
    return float(b)


def batchnorm_gradient_rate(
    activation: Any = "relu",
    batch: int | float = math.inf,
    *,
    samples: int = 100_000,
    seed: int = 0,
) -> BatchNormRate:
    """The mean-field rate :math:`\\lambda_G(B)` of batch norm's gradient explosion at batch ``B``.

    The squared gradient norm of a deep ``phi(BN(h W))`` net grows by this factor per layer going
    backward, at infinite width, whatever the weights' scale (formula in the module docstring).
    Computed by float64 Monte Carlo over the uniform direction ``u`` of the centred
    pre-activations (the ratio of two sample means; ``stderr`` by the delta method), exactly for
    ``"linear"`` (``(B - 2) / (B - 3)``) and, at ``batch=math.inf``, by
    :func:`batchnorm_gradient_rate_limit`.

    Args:
        activation: a registered name or an elementwise callable (evaluated in float64).
        batch: ``B >= 4``, or ``math.inf`` (the large-batch limit).
        samples: Monte Carlo samples (>= 100); the standard error falls like
            ``1 / sqrt(samples)`` (about 1e-3 relative at 1e5 for relu).
        seed: the NumPy generator's seed.

    Returns:
        A :class:`BatchNormRate`.

    Raises:
        ValueError: ``batch`` <= 3 (no finite rate) or not an int / inf; ``samples`` < 100.
        TypeError: a bad activation, a non-int ``samples`` or ``seed``.

    Examples:
        >>> batchnorm_gradient_rate("linear", 8).rate  # (B - 2) / (B - 3)
        1.2
        >>> r = batchnorm_gradient_rate("relu", 32, samples=20_000)
        >>> abs(r.rate - 1.522) < 5 * r.stderr + 0.005, r.rate > math.pi / (math.pi - 1)
        (True, True)
    """
    b = _check_batch(batch)
    samples = positive_int(samples, "samples", 100)
    seed = positive_int(seed, "seed", 0)
    phi = get_activation(activation)
    if math.isinf(b):
        return BatchNormRate(batchnorm_gradient_rate_limit(activation), 0.0, math.inf, 0)
    B = int(b)
    if phi is get_activation("linear"):
        return BatchNormRate((B - 2) / (B - 3), 0.0, b, 0)
    vd = value_and_derivative(phi)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // B)
    a_parts, c_parts = [], []
    for start in range(0, samples, rows):
        m = min(rows, samples - start)
        y = rng.standard_normal((m, B))
        g = y - y.mean(axis=1, keepdims=True)
        u = g / np.sqrt(np.sum(g * g, axis=1, keepdims=True))
        z = math.sqrt(B) * u
        with jax.enable_x64(True):
            f, d = (np.asarray(v, np.float64) for v in vd(jnp.asarray(z, jnp.float64)))
        # a = K11 - K12 of the forward fixed point, averaged over the batch's entries and pairs.
        sf2, sf = np.sum(f * f, axis=1), np.sum(f, axis=1)
        a_parts.append(sf2 / B - (sf * sf - sf2) / (B * (B - 1)))
        # tr(P M) with M = D G D = diag(d^2) - d d^T / B and P = G - u u^T.
        sd2, sd = np.sum(d * d, axis=1), np.sum(d, axis=1)
        tr_gm = sd2 * (1 - 1 / B) - (sd2 - sd * sd / B) / B
        umu = np.sum(u * u * d * d, axis=1) - np.sum(u * d, axis=1) ** 2 / B
        c_parts.append((tr_gm - umu) / (B - 1))
    a, c = np.concatenate(a_parts), np.concatenate(c_parts)
    ma, mc = float(a.mean()), float(c.mean())
    if not ma > 0:
        raise ValueError(
            f"activation {_short(activation)} is constant on batch-normalized inputs; batch "
            "norm's rate needs a non-constant activation"
        )
    rate = B / (B - 3) * mc / ma
    rel_var = (np.var(c) / mc**2 + np.var(a) / ma**2 - 2 * np.cov(a, c)[0, 1] / (ma * mc)) / a.size
    return BatchNormRate(float(rate), float(rate * math.sqrt(max(rel_var, 0.0))), b, samples)


def mlp_branch_moments(
    activation: Any = "relu", scale: float = 1.0, *, order: int = DEFAULT_ORDER
) -> tuple[float, float]:
    """``(q_F, chi_F)`` of an MLP branch ``phi(u W1) W2`` on an input of unit second moment.

    Weights ``N(0, scale**2 / fan_in)`` (stabkit's ``"gaussian"`` initializer with multiplier
    ``scale``), biases 0: the branch's output has second moment
    :math:`q_F = s^2 E[\\phi(s z)^2]` and its transposed Jacobian multiplies squared gradient
    norms by :math:`\\chi_F = s^4 E[\\phi'(s z)^2]`, ``z ~ N(0, 1)``.

    Examples:
        >>> mlp_branch_moments("relu", 1.0)
        (0.5, 0.5)
        >>> mlp_branch_moments("linear", 2.0)
        (16.0, 16.0)
    """
    s = finite_float(scale, "scale (the branch's weight multiplier)", positive=True)
    _, e2, d2 = _moments(activation, s * s, order)
    return s * s * e2, s**4 * d2


def layernorm_gradient_profile(
    depth: int,
    position: str,
    *,
    q0: float = 1.0,
    branch_q: float = 0.5,
    branch_chi: float | None = None,
) -> np.ndarray:
    """Predicted RMS of each block's weight gradient in a residual LN stack, blocks 1..depth.

    Relative to a factor common to pre- and post-LN (the loss's gradient at the output of the
    final LN, the branch's hidden activations): ``pre`` is
    :math:`(q_L^{-1} \\prod_{k=l}^{L-1} (1 + \\chi_F/q_k))^{1/2}` with :math:`q_k = q_0 + k q_F`,
    ``post`` :math:`((1 + \\chi_F)/(1 + q_F))^{(L-l)/2} (1 + q_F)^{-1/2}` (module docstring).

    Args:
        depth: the number of blocks L >= 1.
        position: ``"pre"`` or ``"post"``.
        q0: the second moment of the stack's input (the embedding's output), > 0 (pre-LN only).
        branch_q: :math:`q_F` (>= 0), from :func:`mlp_branch_moments`.
        branch_chi: :math:`\\chi_F` (>= 0); default ``branch_q`` (relu, linear).

    Returns:
        float64 ``(depth,)``.

    Raises:
        ValueError: depth < 1, an unknown position, a negative or non-finite moment.

    Examples:
        >>> p = layernorm_gradient_profile(4, "pre")  # (1 + l / 2) ** -0.5
        >>> np.allclose(p, (1 + np.arange(1, 5) / 2) ** -0.5)
        True
        >>> layernorm_gradient_profile(3, "post")  # flat for relu
        array([0.81649658, 0.81649658, 0.81649658])
    """
    depth = positive_int(depth, "depth")
    position = choice(position, "position", ("pre", "post"))
    q0 = finite_float(q0, "q0 (the input's second moment)", positive=True)
    qf = finite_float(branch_q, "branch_q (the branch's second moment q_F)")
    chi = qf if branch_chi is None else finite_float(branch_chi, "branch_chi (chi_F)")
    for name, v in (("branch_q", qf), ("branch_chi", chi)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    layers = np.arange(1, depth + 1, dtype=np.float64)
    if position == "post":
        return ((1 + chi) / (1 + qf)) ** ((depth - layers) / 2) / math.sqrt(1 + qf)
    q = q0 + qf * np.arange(depth + 1, dtype=np.float64)  # q_0 .. q_L
    gains = 1 + chi / q[1:depth]  # crossing blocks k + 1 = 2..L backward divides by q_k
    # block l's gradient: q_L^{-1} times the gains of the blocks above it, l + 1 .. L
    above = np.concatenate([np.cumprod(gains[::-1])[::-1], [1.0]])
    return np.sqrt(above / q[depth])


def loglog_slope(x: Any, y: Any) -> float:
    """The least-squares slope of ``log y`` against ``log x`` (both positive, >= 2 points).

    Examples:
        >>> round(loglog_slope([4, 16, 64], [0.5, 0.25, 0.125]), 12)
        -0.5
    """
    xa = np.asarray(x, np.float64).ravel()
    ya = np.asarray(y, np.float64).ravel()
    if xa.size != ya.size or xa.size < 2:
        raise ValueError(
            f"x and y must hold the same number (>= 2) of values, got {xa.size}, {ya.size}"
        )
    if not (
        np.all(np.isfinite(xa)) and np.all(np.isfinite(ya)) and np.all(xa > 0) and np.all(ya > 0)
    ):
        raise ValueError(f"x and y must be finite and > 0, got x={_short(x)}, y={_short(y)}")
    lx, ly = np.log(xa), np.log(ya)
    lx = lx - lx.mean()
    return float(lx @ (ly - ly.mean()) / (lx @ lx))
