"""Normalization layers as pure functions: layer norm, RMS norm and batch norm.

Each computes its statistics in :func:`stabkit._numerics.compute_dtype` (float32 for the 16- and
8-bit formats: a float16 sum of squares overflows above a norm of 256) and casts the result back
to the input's dtype. The variance is the mean of the squared deviations (not ``E[u^2] - E[u]^2``,
which cancels catastrophically when the mean is large).

* :func:`layer_norm` (Ba et al. 2016) and :func:`rms_norm` (Zhang & Sennrich 2019) normalize
  each example's feature vector, the last axis;
* :func:`batch_norm` (Ioffe & Szegedy 2015) normalizes each feature over every other axis (the
  batch, and the sequence or image axes), with the batch's own statistics as at training time.
  Its gradient couples the examples of a batch: Yang et al. (2019) show it explodes with depth at
  initialization.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stabkit._numerics import compute_dtype

__all__ = ["NORMS", "batch_norm", "layer_norm", "rms_norm"]


def _scaled(u32: jax.Array, inv: jax.Array, gain, bias, dtype) -> jax.Array:
    out = u32 * inv * jnp.asarray(gain, u32.dtype)
    if bias is not None:
        out = out + jnp.asarray(bias, u32.dtype)
    return out.astype(dtype)


def layer_norm(u: ArrayLike, gain: ArrayLike, bias: ArrayLike, eps: ArrayLike = 1e-6) -> jax.Array:
    """``gain * (u - mean) / sqrt(var + eps) + bias`` over the last axis.

    Args:
        u: ``(..., width)``.
        gain, bias: ``(width,)`` (or broadcastable).
        eps: added to the variance; may be traced.

    Examples:
        >>> layer_norm(jnp.array([1.0, 2.0, 3.0]), 1.0, 0.0, 0.0)
        Array([-1.2247449,  0.       ,  1.2247449], dtype=float32)
    """
    u = jnp.asarray(u)
    v = u.astype(compute_dtype(u.dtype))
    c = v - jnp.mean(v, axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(c), axis=-1, keepdims=True) + eps)
    return _scaled(c, inv, gain, bias, u.dtype)


def rms_norm(u: ArrayLike, gain: ArrayLike, eps: ArrayLike = 1e-6) -> jax.Array:
    """``gain * u / sqrt(mean(u^2) + eps)`` over the last axis (no centring, no bias).

    Examples:
        >>> rms_norm(jnp.array([3.0, 4.0]), 1.0, 0.0)  # (3, 4) / sqrt(12.5)
        Array([0.84852815, 1.1313709 ], dtype=float32)
    """
    u = jnp.asarray(u)
    v = u.astype(compute_dtype(u.dtype))
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(v), axis=-1, keepdims=True) + eps)
    return _scaled(v, inv, gain, None, u.dtype)


def batch_norm(u: ArrayLike, gain: ArrayLike, bias: ArrayLike, eps: ArrayLike = 1e-6) -> jax.Array:
    """``gain * (u - mean) / sqrt(var + eps) + bias``, each feature over all axes but the last.

    The batch's own statistics (training mode; no running averages): the function the theory of
    batch norm at initialization describes. A batch of one normalizes every feature to ``bias``;
    :func:`stabkit.net_apply` refuses it.

    Examples:
        >>> batch_norm(jnp.array([[1.0], [3.0]]), 1.0, 0.0, 0.0)
        Array([[-1.],
               [ 1.]], dtype=float32)
    """
    u = jnp.asarray(u)
    v = u.astype(compute_dtype(u.dtype))
    axes = tuple(range(v.ndim - 1))
    c = v - jnp.mean(v, axis=axes, keepdims=True)
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(c), axis=axes, keepdims=True) + eps)
    return _scaled(c, inv, gain, bias, u.dtype)


#: The norms a block may hold: name -> whether it has a bias.
NORMS = {"layer": True, "rms": False, "batch": True}
