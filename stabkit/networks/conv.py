"""Convolution branches: ``phi(u * K + b)`` with circular padding, 1-D or 2-D.

The convolution keeps the spatial size and the channels (stride 1, ``width`` channels in and
out) and wraps around at the borders ("periodic" padding): with offsets
:math:`d = t - (k - 1)/2` over the ``k`` taps of each axis,

.. math::

    (u * K)[i] = \\sum_{t} u[(i + d_t) \\bmod n]\\, K_t,

the cross-correlation that :func:`jax.lax.conv_general_dilated` computes, on an input padded by
wrapping. Any spatial size works, even one smaller than the kernel (several taps then land on
the same position). Wrapping makes the map *circulant*: the discrete Fourier transform over the
spatial axes diagonalizes it into one ``width x width`` matrix per frequency,
:math:`\\hat K(\\omega) = \\sum_t K_t e^{i \\omega \\cdot d_t}`, so the input-output Jacobian of a
linear stack is block-circulant and its singular values are those of the products
:math:`\\hat K_1(\\omega) \\cdots \\hat K_L(\\omega)` (Xiao et al. 2018; the ``conv_isometry``
study computes them that way).

Kernels ``(*window, width, width)`` are drawn with :func:`stabkit.init.scaled_draw` (fan-in
``prod(window) * width``, as in ``jax.nn.initializers``), or, with ``delta_orthogonal=True``, as
Xiao et al.'s *delta-orthogonal* kernel: zero except the centre tap, an orthogonal matrix times
``hyper["scale"]``. A delta-orthogonal convolution acts on each position alone, so a linear
stack of them is an exact isometry at any depth, whatever the spatial size.

References:
    Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington (2018), "Dynamical isometry and a mean
    field theory of CNNs: how to train 10,000-layer vanilla convolutional neural networks".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from stabkit._checks import positive_int, strict_bool
from stabkit.activations import Activation
from stabkit.init import scaled_draw
from stabkit.networks.blocks import Branch
from stabkit.networks.dense import bias_draw

__all__ = ["circular_conv", "conv_branch", "delta_orthogonal_kernel"]

_PRECISION = jax.lax.Precision.HIGHEST
_DIMENSIONS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def circular_conv(u: jax.Array, kernel: jax.Array) -> jax.Array:
    """The circular convolution of ``u`` with ``kernel`` (see the module docstring).

    Args:
        u: ``(batch, *spatial, c_in)`` with one or two spatial axes.
        kernel: ``(*window, c_in, c_out)``, each window size odd, as many window axes as ``u``
            has spatial axes.

    Returns:
        ``(batch, *spatial, c_out)`` in the promoted dtype of ``u`` and ``kernel``, at full
        precision (``Precision.HIGHEST``: float32 means float32 on accelerators too).

    Examples:
        >>> u = jnp.arange(4.0).reshape(1, 4, 1)
        >>> k = jnp.array([1.0, 0.0, 0.0]).reshape(3, 1, 1)  # the tap at offset -1
        >>> circular_conv(u, k)[0, :, 0].tolist()
        [3.0, 0.0, 1.0, 2.0]
    """
    ndim = kernel.ndim - 2
    # Wrap-pad (k - 1)/2 on each side of each spatial axis: the output keeps the input's size.
    # jnp.pad's "wrap" repeats the axis as often as needed, so a pad wider than it is fine.
    pad = [(0, 0)] + [((k - 1) // 2, (k - 1) // 2) for k in kernel.shape[:ndim]] + [(0, 0)]
    padded = jnp.pad(u, pad, mode="wrap")
    return jax.lax.conv_general_dilated(
        padded,
        kernel,
        window_strides=(1,) * ndim,
        padding="VALID",
        dimension_numbers=_DIMENSIONS[ndim],
        precision=_PRECISION,
    )


def delta_orthogonal_kernel(
    key: jax.Array, window: tuple[int, ...], width: int, dtype: Any, scale: Any = 1.0
) -> jax.Array:
    """Xiao et al.'s delta-orthogonal kernel: ``scale`` times a Haar orthogonal centre tap.

    Args:
        key: a PRNG key.
        window: the odd window sizes, e.g. ``(3,)`` or ``(3, 3)``.
        width: channels in and out.
        dtype: the kernel's dtype.
        scale: the multiplier (a float or a traced scalar).

    Returns:
        ``(*window, width, width)``: zeros except ``kernel[centre] = scale * Q``, ``Q``
        orthogonal.

    Examples:
        >>> k = delta_orthogonal_kernel(jax.random.key(0), (3,), 4, jnp.float32)
        >>> bool(jnp.allclose(k[1].T @ k[1], jnp.eye(4), atol=1e-6)), float(abs(k[0]).max())
        (True, 0.0)
    """
    centre = tuple(k // 2 for k in window)
    q = scaled_draw(key, (width, width), dtype, init="orthogonal", scale=scale)
    return jnp.zeros((*window, width, width), dtype).at[centre].set(q)


def conv_branch(
    phi: Activation,
    activation_name: str,
    ndim: int,
    *,
    kernel_size: int = 3,
    delta_orthogonal: bool = False,
) -> Branch:
    """A circular convolution branch ``phi(inner(u * K + b))`` over ``ndim`` spatial axes.

    Reached through ``stabkit.networks.block("conv1d" | "conv2d", kernel_size=...,
    delta_orthogonal=...)``. Activations are ``(batch, n, width)`` (1-D) or
    ``(batch, h, w, width)`` (2-D); stride 1, ``width`` channels in and out, any spatial size.

    Args:
        phi: the activation.
        activation_name: its name, for the description.
        ndim: 1 or 2 spatial axes.
        kernel_size: the window's size along each spatial axis, odd, >= 1.
        delta_orthogonal: draw the kernel as Xiao et al.'s delta-orthogonal kernel (the centre
            tap ``scale`` times an orthogonal matrix, every other tap 0) whatever the network's
            ``init``; otherwise the ``init`` named at :func:`stabkit.net_init` draws every tap
            (fan-in ``kernel_size**ndim * width``).

    Returns:
        A :class:`stabkit.networks.Branch` with parameters ``{"w_last": (*window, width,
        width), "b_last": (width,)}`` that supports ``norm_position="inner"``.

    Raises:
        ValueError: ``ndim`` not 1 or 2; ``kernel_size`` not a positive odd int.
        TypeError: a non-int ``kernel_size``, a non-bool ``delta_orthogonal``.

    Examples:
        >>> from stabkit.activations import get_activation
        >>> b = conv_branch(get_activation("tanh"), "tanh", 2, kernel_size=5)
        >>> b.name, b.spatial
        ('conv2d tanh (5x5)', (2,))
    """
    if ndim not in (1, 2):
        raise ValueError(f"ndim (spatial axes of a convolution) must be 1 or 2, got {ndim!r}")
    kernel_size = positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (a centred window keeps the spatial size and has a centre "
            f"tap), got {kernel_size}; use {kernel_size - 1} or {kernel_size + 1}"
        )
    delta_orthogonal = strict_bool(delta_orthogonal, "delta_orthogonal")
    window = (kernel_size,) * ndim

    def init(key, width, dtype, init, hyper):
        kw, kb = jax.random.split(key)
        if delta_orthogonal:
            kernel = delta_orthogonal_kernel(kw, window, width, dtype, hyper["scale"])
        else:
            kernel = scaled_draw(
                kw, (*window, width, width), dtype, init=init, scale=hyper["scale"]
            )
        return {"w_last": kernel, "b_last": bias_draw(kb, width, dtype, hyper["bias_std"])}

    def apply(params, u, hyper, inner):
        del hyper
        return phi(inner(circular_conv(u, params["w_last"]) + params["b_last"])), {}

    label = f"conv{ndim}d {activation_name} ({'x'.join(map(str, window))}"
    label += ", delta-orthogonal)" if delta_orthogonal else ")"
    return Branch(init, apply, spatial=(ndim,), inner=True, name=label)
