"""The note's deep linear net in closed form: what :func:`stabkit.trace` should measure on it.

With every weight matrix :math:`aI` (linear activation, zero biases), the signal and the gradient
are powers of :math:`a`: :func:`deep_linear_gain` is :math:`a^\\ell`, :func:`deep_linear_theory`
the per-layer RMS of the forward signal and of both gradients, for the losses of
:mod:`stabkit.losses`. Computed in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import check_memory, finite_float, positive_int
from stabkit.losses import get_loss

__all__ = ["DeepLinearTheory", "deep_linear_gain", "deep_linear_theory"]


def deep_linear_gain(a: float, layers: ArrayLike) -> np.ndarray:
    """:math:`a^{\\ell}`: a deep linear net with :math:`W = aI` scales its input by this.

    With ``layers`` matrices :math:`aI` (linear activation, zero biases) the output is
    :math:`a^{\\ell} x`, and backpropagation through them multiplies a gradient by the same
    :math:`a^{\\ell}` (:math:`(aI)^T = aI`). The note: :math:`a = 1.5` explodes, :math:`a = 0.5`
    vanishes. Computed in float64 (inf once it overflows float64, with no warning).

    Args:
        a: the diagonal value.
        layers: a non-negative integer count, or an array of them.

    Returns:
        A float64 NumPy array shaped like ``layers``.

    Examples:
        >>> deep_linear_gain(1.5, [0, 1, 27, 28])
        array([1.00000000e+00, 1.50000000e+00, 5.68151287e+04, 8.52226930e+04])
    """
    a = finite_float(a, "a")
    if isinstance(layers, (bool, np.bool_, str, bytes)):
        raise TypeError(f"layers must be integers, got {type(layers).__name__} {layers!r}")
    try:
        n = np.asarray(layers)
    except (TypeError, ValueError) as err:
        raise TypeError(f"layers must be integers, got {layers!r}: {err}") from None
    if n.dtype.kind not in "iu" and not (n.dtype.kind == "f" and np.all(n == np.round(n))):
        raise TypeError(f"layers must be integers, got {layers!r}")
    if np.any(n < 0):
        raise ValueError(f"layers must be >= 0, got {layers!r}")
    with np.errstate(over="ignore", under="ignore"):
        return np.power(np.float64(a), n.astype(np.float64))


class DeepLinearTheory(NamedTuple):
    """Closed-form statistics of the note's deep linear net, per layer 0..depth+1 (float64).

    Attributes:
        layer: ``(depth + 2,)`` the layer numbers.
        post_rms: RMS of :math:`h^l = a^l x`.
        grad_post_rms: RMS of :math:`\\partial\\mathcal{L}/\\partial h^l`.
        grad_w_rms: RMS of :math:`\\partial\\mathcal{L}/\\partial W^l` (NaN at layer 0); the same
            for every layer, since :math:`h^{l-1}` carries :math:`a^{l-1}` and the gradient
            :math:`a^{L-l}`.
        output: the output :math:`a^{\\mathrm{depth}+1} x`, shaped like ``x``.
    """

    layer: np.ndarray
    post_rms: np.ndarray
    grad_post_rms: np.ndarray
    grad_w_rms: np.ndarray
    output: np.ndarray


def deep_linear_theory(
    a: float, depth: int, x: ArrayLike, *, loss: str = "mse"
) -> DeepLinearTheory:
    """What :func:`trace` should measure for the note's net, from the closed form, in float64.

    The net: ``depth`` hidden layers and a readout, all :math:`W = aI` (width = in_dim = out_dim =
    ``x.shape[-1]``), zero biases, linear activation; so :math:`L = \\mathrm{depth} + 1` matrices
    and :math:`h^l = a^l x`. With :math:`N` output entries,

    * ``loss="sum"``: :math:`\\partial\\mathcal{L}/\\partial h^l = a^{L-l}\\mathbf 1` and
      :math:`\\partial\\mathcal{L}/\\partial W^l = a^{L-1} X^T \\mathbf 1`;
    * ``loss="mse"``: :math:`\\partial\\mathcal{L}/\\partial h^l = a^{2L-l} x / N` and
      :math:`\\partial\\mathcal{L}/\\partial W^l = a^{2L-1} X^T X / N`.

    Args:
        a: the diagonal value.
        depth: hidden layers, >= 1.
        x: ``(batch, n)`` or ``(n,)`` input.
        loss: ``"mse"`` or ``"sum"``, as in :func:`trace`.

    Returns:
        A :class:`DeepLinearTheory`.

    Examples:
        >>> th = deep_linear_theory(0.5, 2, [1.0, 1.0], loss="sum")
        >>> th.post_rms, th.grad_post_rms
        (array([1.   , 0.5  , 0.25 , 0.125]), array([0.125, 0.25 , 0.5  , 1.   ]))
    """
    a = finite_float(a, "a")
    depth = positive_int(depth, "depth")
    # Five float64 arrays of depth + 2 entries.
    check_memory(5 * 8 * (depth + 2), "depth", depth, "the per-layer closed forms")
    if not isinstance(loss, str):
        raise TypeError(f"loss must be 'mse' or 'sum', got {type(loss).__name__} {loss!r}")
    get_loss(loss)
    if isinstance(x, (str, bytes)):
        raise TypeError(f"x must be a real array, got {type(x).__name__} {x!r}")
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"x must be a real array, got {type(x).__name__}: {err}") from None
    if x.ndim not in (1, 2) or x.size == 0:
        raise ValueError(f"x must have shape (batch, n) or (n,), got {x.shape}")
    x2 = np.atleast_2d(x)
    big_l = depth + 1
    layer = np.arange(big_l + 1)
    rms = lambda v: float(np.sqrt(np.mean(np.square(v))))
    g = lambda n: deep_linear_gain(abs(a), n)
    post_rms = g(layer) * rms(x2)
    if loss == "sum":
        grad_post_rms = g(big_l - layer)
        w = g(big_l - 1) * rms(x2.T @ np.ones_like(x2))
    else:
        n = x2.size
        grad_post_rms = g(2 * big_l - layer) * rms(x2) / n
        w = g(2 * big_l - 1) * rms(x2.T @ x2) / n
    grad_w_rms = np.where(layer == 0, np.nan, w)
    return DeepLinearTheory(
        layer, post_rms, grad_post_rms, grad_w_rms, deep_linear_gain(a, big_l) * x
    )
