"""Input-output Jacobian spectra of sampled networks against free probability.

The public face is :mod:`stabkit.theory`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import (
    _check_int,
    _check_scalar,
    _short,
    check_elementwise,
    check_memory,
    floating_array,
    strict_bool,
)
from stabkit._numerics import compute_dtype
from stabkit.activations import get_activation, is_registered
from stabkit.nets import MLPParams, mlp_apply
from stabkit.theory.fixed_points import q_star
from stabkit.theory.maps import iterate_maps
from stabkit.theory.quadrature import _POINT_BYTES, DEFAULT_ORDER, _diag_jit, _kernel, _quad_bytes

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
    sdt = compute_dtype(params.dtype)  # no SVD in float16/bfloat16
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
    readout = strict_bool(readout, "readout")
    phi = get_activation(activation)
    if not is_registered(phi):
        with jax.enable_x64(params.dtype == jnp.float64):
            check_elementwise(phi, "activation", params.dtype, derivatives=1)
    arr = floating_array(x, "x")
    if arr.ndim not in (1, 2) or arr.shape[-1] != params.in_dim or arr.size == 0:
        raise ValueError(
            f"x must have shape (batch, {params.in_dim}) or ({params.in_dim},), got {arr.shape}"
        )
    # Every input's Jacobian (in_dim x out) is formed at once under vmap, with the forward
    # pass's tangents and the SVD's workspace: about four copies in the SVD's dtype.
    out_dim = params.width if not readout else params.out_dim
    sdt = compute_dtype(params.dtype)
    batch = 1 if arr.ndim == 1 else arr.shape[0]
    check_memory(
        4 * batch * params.in_dim * out_dim * sdt.itemsize,
        "x.shape",
        arr.shape,
        f"{batch} Jacobian(s) of {params.in_dim} x {out_dim} in {sdt}",
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
    if not isinstance(weights, str) or weights not in _S1:
        raise ValueError(f"weights must be one of {sorted(_S1)}, got {_short(weights)}")
    sw = _check_scalar(sigma_w2, "sigma_w2 (the weight variance)", lo=0.0, closed=False)
    sb = _check_scalar(sigma_b2, "sigma_b2 (the bias variance)", lo=0.0)
    depth = _check_int(depth, "depth", "one S-transform factor a layer, counted in int32")
    readout = strict_bool(readout, "readout")
    if q_in is not None:
        q_in = _check_scalar(q_in, "q_in (a mean square)", lo=0.0)
    k = _kernel(activation, order, method)
    # The moments of every layer's q at once (vmap): one 1-D rule per layer.
    check_memory(
        (_quad_bytes(k, 1) + _POINT_BYTES) * depth, "depth", depth, "the per-layer moments"
    )
    if q_in is None:
        qs = float(q_star(activation, sw, sb, order=order, method=method))
        if not math.isfinite(qs):
            raise ValueError(
                f"q* is infinite at sigma_w2={sw}, sigma_b2={sb}: give q_in to follow the q-map"
            )
        q = np.full(depth, qs)
    else:
        q = iterate_maps(activation, sw, sb, q_in=q_in, depth=depth, order=order, method=method).q
    with jax.enable_x64(True):
        _, mu1, mu2, _ = (np.asarray(a) for a in _diag_jit(k, jnp.asarray(q)))
    s1 = _S1[weights]
    n_w = depth + 1 if readout else depth
    mean = sw**n_w * float(np.prod(mu1))
    v = -n_w * s1 + float(np.sum(mu2 / mu1**2 - 1.0))
    return JacobianMoments(mean, v * mean**2, mu1, mu2, s1, q)
