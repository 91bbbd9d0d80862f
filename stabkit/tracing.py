"""Per-layer forward and backward statistics: where a net's signal explodes, vanishes, saturates.

:func:`trace` runs one forward and one backward pass of an :mod:`stabkit.nets` MLP in the
parameters' own dtype and returns a :class:`Trace`: for every layer the RMS and max of the pre- and
post-activations, the RMS of the loss gradient with respect to them and to the layer's weights, a
census (by bit pattern, :func:`stabkit.census`) of the normal/subnormal/zero/inf/NaN entries, the
fractions of saturated and dead units, and the first layers where inf, NaN or all-zero values
appear going forward and going backward.

Layers are numbered as in the note: layer 0 is the input ``x``; layer ``l`` in 1..depth is the
output of the ``l``-th weight matrix and its activation; layer ``depth + 1`` is the readout (the
network's output). The readout and the input have no activation, so their pre- and post-activation
statistics coincide, and their saturation statistics are NaN. Every per-layer field has a leading
axis of ``max_depth + 2`` entries (``max_depth`` the number of hidden layers the parameters hold);
entries beyond ``depth + 1`` are padding, ``valid`` is False there, float statistics are NaN and
counts are 0.

Depth is data: ``trace`` compiles once per (shapes, dtype, activation, loss) and serves every
``depth <= max_depth``, concrete or traced, so ``jax.vmap(trace)`` runs a batch of configurations
(depth, scale, seed, ... as arrays) in one kernel and returns ``(config, layer)`` arrays
(:func:`stabkit.select_activation` makes the activation data too). The losses are
:mod:`stabkit.losses`'s; the deep linear closed forms to check a trace against are
:mod:`stabkit.deep_linear`'s.

Examples:
    Three lines to see where a deep sigmoid net's gradient vanishes (``print(t.summary())`` shows
    every layer):

    >>> import stabkit as sk
    >>> params = sk.mlp_init(jax.random.key(0), depth=50, width=64, init="glorot_normal")
    >>> t = sk.trace(params, jax.random.normal(jax.random.key(1), (128, 64)), activation="sigmoid")
    >>> bool(t.grad_pre_rms[1] / t.grad_pre_rms[51] < 1e-25), bool(t.dphi_max[1:51].max() <= 0.25)
    (True, True)

    Many depths and scales at once, one compilation:

    >>> def one(s, depth):
    ...     p = sk.mlp_init(jax.random.key(0), depth=8, width=2, init="scaled_identity", scale=s)
    ...     return sk.trace(p, jnp.ones(2), activation="linear", depth=depth)
    >>> ts = jax.vmap(one)(jnp.array([0.5, 1.5]), jnp.array([3, 8]))
    >>> ts.post_rms.shape, [round(float(v), 4) for v in ts.output_rms]  # 0.5**4, 1.5**9
    ((2, 10), [0.0625, 38.4434])
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import check_memory, finite_float, positive_int
from stabkit._numerics import compute_dtype, rms_by_sqrt_max
from stabkit.activations import Activation, get_activation
from stabkit.losses import check_loss_callable, whole_array_loss
from stabkit.nets import (
    MLPParams,
    _check_depth,
    _check_elementwise,
    _check_params,
    _check_x,
    _forward,
)
from stabkit.precision import Census, census

__all__ = ["Trace", "trace"]


class Trace(NamedTuple):
    """Per-layer statistics of one forward and backward pass (see the module docstring).

    Shapes are for one network; under ``vmap`` every field gains the leading batch axes. ``L =
    max_depth + 2``. Float statistics are float32 (float64 for float64 networks) and computed
    without intermediate overflow (an RMS is inf only if an entry is inf).

    Attributes:
        depth: int32 ``()``, the hidden layers used.
        valid: bool ``(L,)``, True for layers 0..depth+1.
        units: int32 ``(L,)``, entries per example in each layer (in_dim, width..., out_dim).
        pre_rms: ``(L,)`` RMS of the pre-activations :math:`z^l` over batch and units.
        pre_max: ``(L,)`` max :math:`|z^l|`.
        post_rms: ``(L,)`` RMS of the post-activations :math:`h^l = \\phi(z^l)`.
        post_max: ``(L,)`` max :math:`|h^l|`.
        grad_pre_rms: ``(L,)`` RMS of :math:`\\partial \\mathcal{L} / \\partial z^l`.
        grad_post_rms: ``(L,)`` RMS of :math:`\\partial \\mathcal{L} / \\partial h^l` (layer 0:
            the gradient with respect to the input).
        grad_post_max: ``(L,)`` max :math:`|\\partial \\mathcal{L} / \\partial h^l|`.
        grad_w_rms: ``(L,)`` RMS of :math:`\\partial \\mathcal{L} / \\partial W^l`; NaN at layer 0.
        dphi_rms: ``(L,)`` RMS of :math:`\\phi'(z^l)`; NaN at layer 0 and the readout. In the
            mean-field picture the backward pass scales the gradient's RMS by about
            :math:`\\sigma_w \\cdot` ``dphi_rms`` per layer (Schoenholz et al. 2017, eq. 7).
        dphi_max: ``(L,)`` max :math:`|\\phi'(z^l)|` (at most 1/4 for the sigmoid).
        saturated: ``(L,)`` fraction of entries with :math:`|\\phi'(z^l)|` below the threshold
            (relu's negative half counts: for relu this is about 0.5 by design).
        dead: ``(L,)`` fraction of units whose :math:`\\phi'(z^l)` is exactly 0 for every example.
        pre_census: :class:`stabkit.Census` of ``(L,)`` counts of :math:`z^l`'s entries.
        post_census: :class:`stabkit.Census` of :math:`h^l`'s entries.
        grad_census: :class:`stabkit.Census` of :math:`\\partial \\mathcal{L} / \\partial h^l`.
        loss: ``()`` the loss.
        first_inf_forward: int32 ``()``, the lowest layer whose :math:`h^l` holds an inf; -1 if
            none.
        first_nan_forward: the lowest layer whose :math:`h^l` holds a NaN; -1 if none.
        first_zero_forward: the lowest layer whose :math:`h^l` is all zeros (+0 or -0, by bit
            pattern); -1 if none.
        first_inf_backward: the first layer the backward pass (which runs from layer depth+1
            down to 0) meets with an inf in :math:`\\partial \\mathcal{L} / \\partial h^l`, i.e. the
            highest such layer; -1 if none.
        first_nan_backward: likewise for NaN.
        first_zero_backward: likewise for an all-zero gradient (the gradient has vanished).
    """

    depth: jax.Array
    valid: jax.Array
    units: jax.Array
    pre_rms: jax.Array
    pre_max: jax.Array
    post_rms: jax.Array
    post_max: jax.Array
    grad_pre_rms: jax.Array
    grad_post_rms: jax.Array
    grad_post_max: jax.Array
    grad_w_rms: jax.Array
    dphi_rms: jax.Array
    dphi_max: jax.Array
    saturated: jax.Array
    dead: jax.Array
    pre_census: Census
    post_census: Census
    grad_census: Census
    loss: jax.Array
    first_inf_forward: jax.Array
    first_nan_forward: jax.Array
    first_zero_forward: jax.Array
    first_inf_backward: jax.Array
    first_nan_backward: jax.Array
    first_zero_backward: jax.Array

    @property
    def first_nonfinite_forward(self) -> jax.Array:
        """The lowest layer holding an inf or a NaN going forward; -1 if none."""
        a, b = self.first_inf_forward, self.first_nan_forward
        return jnp.where(a < 0, b, jnp.where(b < 0, a, jnp.minimum(a, b)))

    @property
    def first_nonfinite_backward(self) -> jax.Array:
        """The first layer the backward pass meets holding an inf or NaN gradient; -1 if none."""
        return jnp.maximum(self.first_inf_backward, self.first_nan_backward)

    @property
    def output_rms(self) -> jax.Array:
        """RMS of the network's output (``post_rms`` at layer ``depth + 1``)."""
        index = jnp.asarray(self.depth)[..., None] + 1
        return jnp.take_along_axis(self.post_rms, index, axis=-1)[..., 0]

    def summary(self, max_rows: int = 40) -> str:
        """A text table of one network's trace (the middle rows elided beyond ``max_rows``)."""
        max_rows = positive_int(max_rows, "max_rows")
        if np.ndim(self.depth) != 0:
            raise ValueError(
                "summary() describes one network; index a batched trace first, e.g. "
                "jax.tree.map(lambda a: a[0], t)"
            )
        return _summary(jax.tree.map(np.asarray, self), max_rows)


def _summary(t: Trace, max_rows: int) -> str:
    n = int(t.depth) + 2
    head = (
        f"{'layer':>5} {'units':>5} {'post_rms':>10} {'post_max':>10} {'grad_rms':>10} "
        f"{'grad_w_rms':>10} {'saturated':>9} {'dead':>5}  census of h (grad)"
    )
    lines = [head]
    shown = list(range(n)) if n <= max_rows else [*range(max_rows // 2), -1]
    if n > max_rows:
        shown += list(range(n - (max_rows - max_rows // 2), n))
    for i in shown:
        if i < 0:
            lines.append(f"{'...':>5}")
            continue
        flags = []
        for name, c in (("", t.post_census), ("d", t.grad_census)):
            for field in ("subnormal", "zero", "inf", "nan"):
                count = int(getattr(c, field)[i])
                if count:
                    flags.append(f"{name}{field}={count}")
        lines.append(
            f"{i:>5} {int(t.units[i]):>5} {t.post_rms[i]:>10.3g} {t.post_max[i]:>10.3g} "
            f"{t.grad_post_rms[i]:>10.3g} {t.grad_w_rms[i]:>10.3g} {t.saturated[i]:>9.3f} "
            f"{t.dead[i]:>5.2f}  {' '.join(flags)}"
        )

    def where(v: Any) -> str:
        return "never" if int(v) < 0 else f"layer {int(v)}"

    lines.append(
        f"forward: first inf {where(t.first_inf_forward)}, first NaN {where(t.first_nan_forward)}"
        f", first all-zero {where(t.first_zero_forward)}; backward (from layer {n - 1} down): "
        f"first inf {where(t.first_inf_backward)}, first NaN {where(t.first_nan_backward)}, first "
        f"all-zero {where(t.first_zero_backward)}; loss {float(t.loss):.4g}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- statistics


def first_layer_where(mask: jax.Array) -> jax.Array:
    """The lowest layer (last axis of ``mask``) where ``mask`` holds, -1 where it never does.

    The first inf, NaN or all-zero layer going forward, in :func:`trace` and in the sweep."""
    n = mask.shape[-1]
    hit = jnp.min(jnp.where(mask, jnp.arange(n), n), axis=-1)
    return jnp.where(hit >= n, -1, hit).astype(jnp.int32)


def last_layer_where(mask: jax.Array) -> jax.Array:
    """The highest layer where ``mask`` holds, -1 where it never does (the first bad layer going
    backward, from the readout down)."""
    return jnp.max(jnp.where(mask, jnp.arange(mask.shape[-1]), -1), axis=-1).astype(jnp.int32)


def _rms(v: jax.Array, axis: Any = None) -> jax.Array:
    """RMS over ``axis`` in the compute dtype, without overflow (see :func:`rms_by_sqrt_max`)."""
    return rms_by_sqrt_max(v.astype(compute_dtype(v.dtype)), axis)


def _absmax(v: jax.Array, axis: Any = None) -> jax.Array:
    return jnp.max(jnp.abs(v), axis=axis).astype(compute_dtype(v.dtype))


class _LayerStats(NamedTuple):
    pre_rms: jax.Array
    pre_max: jax.Array
    post_rms: jax.Array
    post_max: jax.Array
    dphi_rms: jax.Array
    dphi_max: jax.Array
    saturated: jax.Array
    dead: jax.Array
    pre_census: Census
    post_census: Census


@partial(jax.jit, static_argnames=("phi", "loss_fn"))
def _trace_jit(
    params: MLPParams,
    x: jax.Array,
    depth: jax.Array,
    threshold: jax.Array,
    phi: Activation,
    loss_fn: Callable[[jax.Array], jax.Array],
) -> Trace:
    d_max, batch, width, dtype = params.max_depth, x.shape[0], params.width, params.dtype
    sdt = compute_dtype(dtype)

    def layer_stats(z, h):
        z, h = jax.lax.stop_gradient(z), jax.lax.stop_gradient(h)
        _, dphi = jax.jvp(phi, (z,), (jnp.ones_like(z),))
        return _LayerStats(
            pre_rms=_rms(z),
            pre_max=_absmax(z),
            post_rms=_rms(h),
            post_max=_absmax(h),
            dphi_rms=_rms(dphi),
            dphi_max=_absmax(dphi),
            saturated=jnp.mean(jnp.abs(dphi).astype(sdt) < threshold, dtype=sdt),
            # By bit pattern: XLA on CPU reads subnormals as 0 in comparisons.
            dead=jnp.mean(census(dphi, axis=0).zero == batch, dtype=sdt),
            pre_census=census(z),
            post_census=census(h),
        )

    # The gradient with respect to a zero added to an intermediate is the gradient with respect to
    # that intermediate. -0.0, not +0.0: x + (-0) is x for every x, -0 included.
    perturb = (
        jnp.full((d_max, batch, width), -0.0, dtype),
        jnp.full((d_max, batch, width), -0.0, dtype),
        jnp.full((batch, params.out_dim), -0.0, dtype),
    )

    def objective(params, x, dz, dh, dy):
        out, stats = _forward(params, x, depth, phi, perturb=(dz, dh, dy), layer_stats=layer_stats)
        return loss_fn(out), (out, stats)

    (loss, (out, hs)), (gp, gx, gz, gh, gy) = jax.value_and_grad(
        objective, argnums=(0, 1, 2, 3, 4), has_aux=True
    )(params, x, *perturb)

    layers = jnp.arange(d_max + 2)
    valid = layers <= depth + 1
    nan = jnp.asarray(jnp.nan, sdt)

    def place(first, hidden, last, fill):
        """Input value, ``max_depth`` hidden values and the readout value as one (L,) array."""
        first, last = jnp.asarray(first), jnp.asarray(last)
        fill = jnp.asarray(fill, hidden.dtype)
        base = jnp.concatenate([first[None].astype(hidden.dtype), hidden, fill[None]])
        return jnp.where(layers == depth + 1, last, jnp.where(layers <= depth, base, fill))

    def place_census(first, hidden, last):
        return Census(*(place(a, b, c, 0) for a, b, c in zip(first, hidden, last, strict=True)))

    x_census, out_census = census(x), census(out)
    grad_census = place_census(census(gx), census(gh, axis=(1, 2)), census(gy))
    post_census = place_census(x_census, hs.post_census, out_census)
    w_hidden_rms = jnp.concatenate([_rms(gp.w_in)[None], _rms(gp.w_hidden, axis=(1, 2))])
    units = place(params.in_dim, jnp.full((d_max,), width, jnp.int32), params.out_dim, 0)
    entries = units * batch

    def first_layer(mask):
        return first_layer_where(mask & valid)

    def last_layer(mask):
        return last_layer_where(mask & valid)

    return Trace(
        depth=depth,
        valid=valid,
        units=units,
        pre_rms=place(_rms(x), hs.pre_rms, _rms(out), nan),
        pre_max=place(_absmax(x), hs.pre_max, _absmax(out), nan),
        post_rms=place(_rms(x), hs.post_rms, _rms(out), nan),
        post_max=place(_absmax(x), hs.post_max, _absmax(out), nan),
        grad_pre_rms=place(_rms(gx), _rms(gz, axis=(1, 2)), _rms(gy), nan),
        grad_post_rms=place(_rms(gx), _rms(gh, axis=(1, 2)), _rms(gy), nan),
        grad_post_max=place(_absmax(gx), _absmax(gh, axis=(1, 2)), _absmax(gy), nan),
        grad_w_rms=place(nan, w_hidden_rms, _rms(gp.w_out), nan),
        dphi_rms=place(nan, hs.dphi_rms, nan, nan),
        dphi_max=place(nan, hs.dphi_max, nan, nan),
        saturated=place(nan, hs.saturated, nan, nan),
        dead=place(nan, hs.dead, nan, nan),
        pre_census=place_census(x_census, hs.pre_census, out_census),
        post_census=post_census,
        grad_census=grad_census,
        loss=loss,
        first_inf_forward=first_layer(post_census.inf > 0),
        first_nan_forward=first_layer(post_census.nan > 0),
        first_zero_forward=first_layer(post_census.zero == entries),
        first_inf_backward=last_layer(grad_census.inf > 0),
        first_nan_backward=last_layer(grad_census.nan > 0),
        first_zero_backward=last_layer(grad_census.zero == entries),
    )


def trace(
    params: MLPParams | Any,
    x: ArrayLike,
    *,
    activation: str | Activation | None = None,
    loss: str | Callable[[jax.Array], jax.Array] = "mse",
    depth: int | jax.Array | None = None,
    saturation_threshold: float | jax.Array = 1e-2,
) -> Trace:
    """Per-layer forward and backward statistics of the MLP ``params`` on the batch ``x``.

    One forward pass and one backward pass, both in the parameters' dtype, for the loss ``loss``
    of the output. The backward statistics are exact gradients of that loss (``jax.grad``), taken
    with respect to every layer's pre-activations, post-activations and weights.

    For a :class:`stabkit.NetParams` (a network of blocks, :func:`stabkit.net_init`) this is
    :func:`stabkit.networks.trace_net` (no ``activation``: the block holds it) and returns a
    :class:`stabkit.networks.NetTrace`.

    Compiled once per (parameter shapes, dtype, batch size, activation, loss); ``depth`` and
    ``saturation_threshold`` are data. Works under ``jit``, ``vmap`` and ``grad`` (``loss`` is
    differentiable; the statistics are not). Pass the same callable objects (or names) to reuse a
    compilation.

    Args:
        params: an :class:`stabkit.MLPParams` from :func:`stabkit.mlp_init`.
        x: ``(batch, in_dim)`` or ``(in_dim,)`` (a batch of one); cast to the parameters' dtype.
        activation: a name (:func:`stabkit.activation_names`) or an elementwise callable.
        loss: ``"mse"`` (default): :math:`\\tfrac12 \\operatorname{mean}(\\hat y^2)` over all
            output entries; ``"sum"``: :math:`\\sum \\hat y` (its gradient at the output is all
            ones); or a callable ``loss(y) -> scalar`` of the ``(batch, out_dim)`` output.
        depth: hidden layers to use, 1..``params.max_depth`` (default all); may be traced (then
            clipped to that range, not checked). Deeper layers pass their input through and are
            marked invalid.
        saturation_threshold: a unit counts as saturated where :math:`|\\phi'(z)|` is below it.

    Returns:
        A :class:`Trace`.

    Raises:
        ValueError: bad shapes, a concrete ``depth`` out of range, an unknown activation or loss
            name, a negative threshold; an activation that changes the shape or a loss that does
            not return a scalar; per-layer buffers (``max_depth x batch x width``) beyond memory.
        TypeError: non-floating ``x``, parameters that are not :class:`stabkit.MLPParams`; an
            activation or loss callable that fails, returns no array, or the wrong dtype (the
            activation must keep the parameters' dtype, the loss return a real float). Both are
            checked with ``jax.eval_shape`` on the layer's and the output's shapes before
            anything is compiled.

    Examples:
        The note's example: width 2, :math:`W = 1.5 I`, zero biases, linear activation, float16.
        The signal :math:`1.5^l` overflows at layer 28; at layer 29 the matrix product computes
        :math:`1.5 \\cdot \\infty + 0 \\cdot \\infty` = NaN.

        >>> from stabkit.nets import mlp_init
        >>> p = mlp_init(jax.random.key(0), depth=40, width=2, init="scaled_identity", scale=1.5,
        ...              dtype=jnp.float16)
        >>> t = trace(p, jnp.ones(2), activation="linear")
        >>> int(t.first_inf_forward), int(t.first_nan_forward)
        (28, 29)
        >>> t.post_rms[26:29]
        Array([37888., 56832.,    inf], dtype=float32)
        >>> int(trace(p, jnp.ones(2), activation="linear", depth=20).first_inf_forward)
        -1
    """
    from stabkit.networks import NetParams, trace_net  # networks import this module's helpers

    if isinstance(params, NetParams):
        if activation is not None:
            raise TypeError(
                "activation is part of a network's block (stabkit.block(kind, activation=...)); "
                f"trace takes none for a NetParams, got {activation!r}"
            )
        return trace_net(params, x, loss=loss, depth=depth)
    params = _check_params(params)
    if activation is None:
        raise TypeError("trace of an MLPParams needs activation= (a name or a callable)")
    phi = get_activation(activation)
    if isinstance(loss, str):
        loss_fn = whole_array_loss(loss)
    elif callable(loss):
        loss_fn = loss
    else:
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__} {loss!r}")
    x2, _ = _check_x(x, params)
    depth = _check_depth(depth, params.max_depth)
    if isinstance(saturation_threshold, jax.core.Tracer):
        if saturation_threshold.ndim != 0:
            raise TypeError(
                f"saturation_threshold must be a scalar, got shape {saturation_threshold.shape}"
            )
        threshold = saturation_threshold
    else:
        threshold = finite_float(saturation_threshold, "saturation_threshold")
        if threshold < 0:
            raise ValueError(f"saturation_threshold must be >= 0, got {threshold}")
    threshold = jnp.asarray(threshold, compute_dtype(params.dtype))
    batch, width, d_max = x2.shape[0], params.width, params.max_depth
    # What the user's callables return is checked on the layer's and the output's shapes before
    # anything is traced for real (jax.eval_shape: nothing compiled, nothing run).
    _check_elementwise(phi, "activation", (batch, width), params.dtype, derivative=True)
    if not isinstance(loss, str):
        check_loss_callable(loss_fn, (batch, params.out_dim), params.dtype)
    # The per-layer buffers: the zero perturbations of z and h, the forward residuals the
    # backward pass keeps, their gradients (in the dtype) and the gradients' float32 copies.
    itemsize = params.dtype.itemsize
    nbytes = d_max * batch * width * (6 * itemsize + 2 * compute_dtype(params.dtype).itemsize)
    check_memory(
        nbytes,
        "x.shape",
        tuple(jnp.shape(x)),
        f"trace's per-layer buffers (max_depth {d_max} x batch {batch} x width {width}, "
        f"{params.dtype.name})",
    )
    return _trace_jit(params, x2, depth, threshold, phi, loss_fn)
