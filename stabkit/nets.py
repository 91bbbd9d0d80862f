"""A functional MLP as an ``init``/``apply`` pair whose hidden layers run under ``lax.scan``.

The network is the note's: ``depth`` hidden layers, each a weight matrix and an activation, then a
linear readout,

.. math::

    h^{0} = x,\\quad z^{l} = h^{l-1} W^{l} + b^{l},\\quad h^{l} = \\phi(z^{l})
    \\ (l = 1..D),\\quad \\hat y = h^{D+1} = h^{D} W^{D+1} + b^{D+1},\\quad D = \\mathrm{depth}.

So the net has ``depth + 1`` weight matrices and the note's :math:`l` (its count of matrices, the
last one being the output layer) is ``depth + 1``: with :math:`W = aI`, zero biases and the linear
activation, :math:`\\hat y = a^{\\mathrm{depth}+1} x`. Rows are examples (``x`` has shape
``(batch, in_dim)``), so a layer computes ``h @ W``; for the note's symmetric :math:`aI` this is
the same as its :math:`W x`.

The parameters are a plain pytree, :class:`MLPParams`, with the ``depth - 1`` square
hidden-to-hidden layers stacked along a leading axis: compile time does not grow with depth. **Depth
is data**: :func:`mlp_apply` (and :func:`stabkit.trace`) take an optional ``depth`` no larger than
the depth the parameters were built for, possibly a traced integer; layers beyond it pass their
input through unchanged, so one compiled function serves every depth, and ``vmap`` runs several
depths at once. Layer ``l``'s weights depend only on the key and ``l`` (``jax.random.fold_in``), so
the parameters of a shallower net are a prefix of a deeper one's: masking a deep net equals building
a shallow one.

Matrix products use ``Precision.HIGHEST``, so that float32 means float32 on accelerators whose
default would round float32 inputs to TF32 or bfloat16.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from stabkit._checks import (
    check_elementwise,
    check_initializer,
    check_memory,
    floating_array,
    is_floating_dtype,
    positive_int,
)
from stabkit._numerics import compute_dtype
from stabkit.activations import Activation, get_activation, is_registered
from stabkit.init import (
    Initializer,
    _dtype,
    _multiplier,
    bias_normal,
    check_key,
    get_initializer,
    init_rule,
)

__all__ = ["MLPParams", "mlp_apply", "mlp_init"]

_PRECISION = jax.lax.Precision.HIGHEST


class MLPParams(NamedTuple):
    """The parameters of an MLP with ``depth`` hidden layers (a pytree of arrays, one dtype).

    Attributes:
        w_in: ``(in_dim, width)``, the first hidden layer's weights (layer 1).
        b_in: ``(width,)``.
        w_hidden: ``(depth - 1, width, width)``, layers 2..depth stacked (empty when depth is 1).
        b_hidden: ``(depth - 1, width)``.
        w_out: ``(width, out_dim)``, the linear readout (layer depth + 1).
        b_out: ``(out_dim,)``.
    """

    w_in: jax.Array
    b_in: jax.Array
    w_hidden: jax.Array
    b_hidden: jax.Array
    w_out: jax.Array
    b_out: jax.Array

    @property
    def max_depth(self) -> int:
        """The number of hidden layers the parameters hold."""
        return self.w_hidden.shape[-3] + 1

    @property
    def width(self) -> int:
        return self.w_in.shape[-1]

    @property
    def in_dim(self) -> int:
        return self.w_in.shape[-2]

    @property
    def out_dim(self) -> int:
        return self.w_out.shape[-1]

    @property
    def dtype(self) -> jnp.dtype:
        return self.w_in.dtype


def _draw(init: Initializer, key, shape: tuple[int, ...], dtype: jnp.dtype, what: str):
    w = init(key, shape, dtype)
    if not (hasattr(w, "shape") and hasattr(w, "dtype")):
        raise TypeError(
            f"the {what} initializer {init!r} must return an array of shape {shape} and dtype "
            f"{dtype}, got {type(w).__name__} {w!r}"
        )
    if tuple(w.shape) != shape or w.dtype != dtype:
        raise ValueError(
            f"the {what} initializer returned shape {tuple(w.shape)} dtype {w.dtype}, expected "
            f"{shape} {dtype}"
        )
    return w


def mlp_init(
    key: jax.Array,
    *,
    depth: int,
    width: int,
    in_dim: int | None = None,
    out_dim: int | None = None,
    init: str | Initializer = "gaussian",
    scale: float | None = None,
    bias_std: float = 0.0,
    dtype: DTypeLike = jnp.float32,
) -> MLPParams:
    """Parameters of an MLP with ``depth`` hidden layers of ``width`` units and a linear readout.

    Every weight matrix (the first layer, the hidden stack and the readout) is drawn with the same
    initializer; biases are zero or :math:`N(0, \\mathrm{bias\\_std}^2)`. Layer ``l`` (1..depth,
    readout 0) draws from ``fold_in(fold_in(key, 0), l)``, its bias from ``fold_in(fold_in(key,
    1), l)``: a deeper net extends a shallower one with the same key. Works under ``jit`` and
    ``vmap`` (over keys, and over ``scale``/``bias_std`` as traced scalars).

    Args:
        key: a PRNG key.
        depth: the number of hidden layers, >= 1 (``depth + 1`` weight matrices in all).
        width: units per hidden layer, >= 1.
        in_dim: input features; default ``width``.
        out_dim: outputs; default ``width`` (a square net, as in the note).
        init: a name from :func:`stabkit.init.initializer_names` or an ``init(key, shape, dtype)``
            callable (``jax.nn.initializers`` included).
        scale: the named initializer's multiplier (``a``, ``sigma_w`` or ``gain``); default 1.
        bias_std: standard deviation of the biases; 0 (default) gives zeros.
        dtype: the parameters' floating dtype, one of :data:`stabkit.SUPPORTED_DTYPES`. float64
            needs x64 (``with jax.enable_x64(True):``); the float8 formats are drawn in float32
            and rounded once, and XLA:CPU runs their networks (matrix products included).

    Returns:
        An :class:`MLPParams`.

    Raises:
        ValueError: a size < 1, an unknown initializer name, a bad multiplier; parameters (and
            the float32 draws they are rounded from) that would not fit in memory, naming
            ``depth`` and ``width`` and the bytes; float64 without x64; an unsupported dtype.
        TypeError: a non-floating dtype or a bad key; an ``init`` callable that fails or does not
            return an array (checked with ``jax.eval_shape`` before anything is compiled).

    Examples:
        The note's network: width 2, :math:`W = 1.5 I`, zero biases.

        >>> p = mlp_init(jax.random.key(0), depth=3, width=2, init="scaled_identity", scale=1.5)
        >>> p.w_hidden.shape, p.max_depth
        ((2, 2, 2), 3)
        >>> mlp_apply(p, jnp.array([1.0, 2.0]), activation="linear")  # 1.5**4 * x
        Array([ 5.0625, 10.125 ], dtype=float32)
    """
    check_key(key)
    depth = positive_int(depth, "depth")
    width = positive_int(width, "width")
    in_dim = width if in_dim is None else positive_int(in_dim, "in_dim")
    out_dim = width if out_dim is None else positive_int(out_dim, "out_dim")
    dtype = _dtype(dtype)
    # The parameters, and the float32 (float64) draws they are rounded from, before jit
    # allocates them: depth=10**9 would otherwise return at once and fail later, out of memory.
    entries = (in_dim + 1 + (depth - 1) * (width + 1)) * width + (width + 1) * out_dim
    per_entry = dtype.itemsize + 2 * compute_dtype(dtype).itemsize
    check_memory(
        entries * per_entry + 16 * (depth + 1),
        "depth",
        depth,
        f"the parameters at width={width}, in_dim={in_dim}, out_dim={out_dim} ({entries:.3g} "
        f"{dtype.name} entries)",
    )
    w_init = get_initializer(init, scale)
    bias_std = _multiplier(bias_std, "bias_std", nonnegative=True)
    if isinstance(init, str):
        # A named initializer is a unit draw times a multiplier per shape: the multipliers (and
        # the bias std) are data, so one compilation serves every scale and bias_std.
        shapes = ((in_dim, width), (width, width), (width, out_dim))
        mults = jnp.stack([_named_multiplier(init, scale, sh, dtype) for sh in shapes])
        sdt = compute_dtype(dtype)
        b_std = bias_std if isinstance(bias_std, jax.core.Tracer) else np.asarray(bias_std, sdt)
        return _init_named_jit(key, init, mults, b_std, depth, width, in_dim, out_dim, dtype)
    for shape in {(in_dim, width), (width, out_dim)} | ({(width, width)} if depth > 1 else set()):
        check_initializer(w_init, "init", key, shape, dtype)  # a user's callable, before jit
    b_init = bias_normal(bias_std)
    return _init_jit(key, w_init, b_init, depth, width, in_dim, out_dim, dtype)


def _named_multiplier(init: str, scale: Any, shape: tuple[int, int], dtype: jnp.dtype) -> Any:
    """What the named initializer multiplies its unit draw of ``shape`` by, computed in the same
    steps as :mod:`stabkit.init` (float64 on the host for a concrete ``scale``, rounded once to
    the compute dtype; the same float32 operations for a traced one), so the weights are the
    same bits as ``get_initializer(init, scale)(key, shape, dtype)``'s."""
    kind, variance = init_rule(init)
    mult = 1.0 if scale is None else scale
    if kind in ("normal", "uniform"):
        mult = mult * math.sqrt(variance(*shape))
        if kind == "uniform":
            mult = mult * math.sqrt(3.0)  # U[-L, L] has variance L^2/3
    if isinstance(mult, jax.core.Tracer):
        return mult.astype(compute_dtype(dtype))
    return jnp.asarray(mult, compute_dtype(dtype))


def _unit_draw(kind: str, key, shape: tuple[int, int], sdt) -> jax.Array:
    """A named initializer's draw at multiplier 1 (stabkit.init's samplers, before scaling)."""
    n, m = shape
    if kind == "normal":
        return jax.random.normal(key, shape, sdt)
    if kind == "uniform":
        return jax.random.uniform(key, shape, sdt, minval=-1.0, maxval=1.0)
    if kind == "orthogonal":
        q, r = jnp.linalg.qr(jax.random.normal(key, (max(n, m), min(n, m)), sdt))
        q = q * jnp.sign(jnp.diagonal(r))
        return q if n >= m else q.T
    return jnp.eye(n, m, dtype=sdt)


@partial(jax.jit, static_argnums=(1, 4, 5, 6, 7, 8))
def _init_named_jit(key, init, mults, b_std, depth, width, in_dim, out_dim, dtype) -> MLPParams:
    """:func:`_init_jit` for a named initializer, its multipliers and bias std as data."""
    kind = init_rule(init).distribution
    sdt = compute_dtype(dtype)
    bases = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(2))
    keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (0, None))(
        bases, jnp.arange(depth + 1)
    )

    def weight(k, shape, mult):
        return (mult * _unit_draw(kind, k, shape, sdt)).astype(dtype)

    def bias(k, n):
        # bias_std = 0 gives +0 exactly (stabkit.init.zeros()), without a draw that could be -0.
        std = jnp.asarray(b_std, sdt)
        return jnp.where(std == 0, 0, std * jax.random.normal(k, (n,), sdt)).astype(dtype)

    if depth > 1:
        w_hidden = jax.vmap(lambda k: weight(k, (width, width), mults[1]))(keys[0, 2:])
        b_hidden = jax.vmap(lambda k: bias(k, width))(keys[1, 2:])
    else:
        w_hidden, b_hidden = jnp.zeros((0, width, width), dtype), jnp.zeros((0, width), dtype)
    return MLPParams(
        w_in=weight(keys[0, 1], (in_dim, width), mults[0]),
        b_in=bias(keys[1, 1], width),
        w_hidden=w_hidden,
        b_hidden=b_hidden,
        w_out=weight(keys[0, 0], (width, out_dim), mults[2]),
        b_out=bias(keys[1, 0], out_dim),
    )


# One compiled kernel per (initializers, sizes, dtype); named initializers are cached objects, so
# building many nets of one shape compiles once.
@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7))
def _init_jit(key, w_init, b_init, depth, width, in_dim, out_dim, dtype) -> MLPParams:
    # Every key in one vmapped fold_in (each threefry call costs compile time, not run time):
    # keys[0, l] = fold_in(fold_in(key, 0), l) for the weights, keys[1, l] likewise for biases.
    bases = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(2))
    keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (0, None))(
        bases, jnp.arange(depth + 1)
    )

    def hidden(kw, kb):
        w = _draw(w_init, kw, (width, width), dtype, "weight")
        return w, _draw(b_init, kb, (width,), dtype, "bias")

    if depth > 1:
        w_hidden, b_hidden = jax.vmap(hidden)(keys[0, 2:], keys[1, 2:])
    else:  # no hidden-to-hidden layer: nothing to draw (and no width x width draw to bound)
        w_hidden, b_hidden = jnp.zeros((0, width, width), dtype), jnp.zeros((0, width), dtype)
    return MLPParams(
        w_in=_draw(w_init, keys[0, 1], (in_dim, width), dtype, "weight"),
        b_in=_draw(b_init, keys[1, 1], (width,), dtype, "bias"),
        w_hidden=w_hidden,
        b_hidden=b_hidden,
        w_out=_draw(w_init, keys[0, 0], (width, out_dim), dtype, "weight"),
        b_out=_draw(b_init, keys[1, 0], (out_dim,), dtype, "bias"),
    )


# ------------------------------------------------------------------------------ shared internals


def _check_params(params: Any) -> MLPParams:
    """``params`` if it is a consistent :class:`MLPParams` (shapes and one floating dtype)."""
    if not isinstance(params, MLPParams):
        raise TypeError(f"params must be an MLPParams (from mlp_init), got {type(params).__name__}")
    shapes = {f: tuple(getattr(jnp.asarray(a), "shape", ())) for f, a in params._asdict().items()}
    dtypes = {f: jnp.asarray(a).dtype for f, a in params._asdict().items()}
    if len(set(dtypes.values())) != 1 or not is_floating_dtype(params.dtype):
        raise TypeError(f"params must share one floating dtype, got {dtypes}")
    _dtype(params.dtype, "params.dtype")  # a supported format; float64 only with x64
    if len(shapes["w_in"]) != 2 or len(shapes["w_hidden"]) != 3 or len(shapes["w_out"]) != 2:
        raise ValueError(f"params have the wrong ranks: {shapes}")
    n_in, w = shapes["w_in"]
    d, out = shapes["w_hidden"][0], shapes["w_out"][1]
    expected = {
        "w_in": (n_in, w),
        "b_in": (w,),
        "w_hidden": (d, w, w),
        "b_hidden": (d, w),
        "w_out": (w, out),
        "b_out": (out,),
    }
    if shapes != expected:
        raise ValueError(f"params have inconsistent shapes {shapes}; expected {expected}")
    return params


def _check_x(x: Any, params: MLPParams) -> tuple[jax.Array, bool]:
    """``x`` as a ``(batch, in_dim)`` array of the parameters' dtype, and whether it was 1-D."""
    x = floating_array(x, "x")
    if x.ndim not in (1, 2) or x.shape[-1] != params.in_dim or x.size == 0:
        raise ValueError(
            f"x must have shape (batch, {params.in_dim}) or ({params.in_dim},), got {x.shape}"
        )
    return jnp.atleast_2d(x).astype(params.dtype), x.ndim == 1


def _check_elementwise(fn: Any, name: str, shape: tuple[int, ...], dtype, derivative: bool):
    """:func:`stabkit._checks.check_elementwise` on the layer's own shape and dtype (an int32
    result was silently read as zeros, a float16 one ran a float32 net in float16); registered
    activations are known to pass and are skipped."""
    if not is_registered(fn):
        check_elementwise(
            fn,
            name,
            dtype,
            int(derivative),
            shape=shape,
            on=f"the layer's pre-activations (shape {tuple(shape)}, {jnp.dtype(dtype)})",
            keep="the parameters'",
        )


def _check_depth(depth: Any, max_depth: int) -> jax.Array:
    """``depth`` as an int32 scalar in 1..max_depth; a traced value is clipped, not checked."""
    if depth is None:
        return jnp.asarray(max_depth, jnp.int32)
    if isinstance(depth, (bool, np.bool_)):
        raise TypeError(f"depth must be an int, got the bool {depth!r}")
    if isinstance(depth, jax.core.Tracer):
        if depth.ndim != 0 or not jnp.issubdtype(depth.dtype, jnp.integer):
            raise TypeError(f"depth must be an integer scalar, got {depth.dtype}{depth.shape}")
        return jnp.clip(depth, 1, max_depth).astype(jnp.int32)
    try:
        value = operator.index(depth)
    except TypeError:
        if getattr(depth, "ndim", None) == 0 and jnp.issubdtype(depth.dtype, jnp.integer):
            value = int(depth)
        else:
            raise TypeError(f"depth must be an int, got {type(depth).__name__} {depth!r}") from None
    value = positive_int(value, "depth")
    if value > max_depth:
        raise ValueError(f"depth={value} exceeds the {max_depth} hidden layers the params hold")
    return jnp.asarray(value, jnp.int32)


def _dense(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(h, w, precision=_PRECISION) + b


def _forward(
    params: MLPParams,
    x: jax.Array,
    depth: jax.Array,
    phi: Activation,
    *,
    perturb: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    layer_stats: Callable[[jax.Array, jax.Array], Any] | None = None,
):
    """Run the net on ``x`` ``(batch, in_dim)``; returns the output and the stacked layer stats.

    ``perturb = (dz, dh, dy)`` are added to every pre-activation ``(depth_max, batch, width)``,
    post-activation (same shape) and the output: the gradient of the loss with respect to them is
    the gradient with respect to those intermediates. ``layer_stats(z, h)`` is evaluated for each
    hidden layer and its results stacked along a leading layer axis (``max_depth`` long; entries
    beyond ``depth`` describe discarded computations and must be masked by the caller).
    """
    dz, dh, dy = perturb if perturb is not None else (None, None, None)

    def layer(h_in, w, b, dz_l, dh_l):
        z = _dense(h_in, w, b)
        z = z if dz_l is None else z + dz_l
        h = phi(z)
        h = h if dh_l is None else h + dh_l
        stats = None if layer_stats is None else layer_stats(z, h)
        return h, stats

    # Layer 1 always exists (depth >= 1) and changes the width, so it runs outside the scan.
    h, stats1 = layer(x, params.w_in, params.b_in, *(None if d is None else d[0] for d in (dz, dh)))

    def body(h, inputs):
        index, w, b, dz_l, dh_l = inputs
        active = index <= depth
        # The double `where`: an inactive layer computes on zeros, so that its discarded branch and
        # that branch's (zero-weighted) gradient stay finite and cannot turn 0 * inf into a NaN in
        # the layers that count.
        h_in = jnp.where(active, h, jnp.zeros_like(h))
        h_new, stats = layer(h_in, w, b, dz_l, dh_l)
        return jnp.where(active, h_new, h), stats

    n = params.max_depth - 1
    xs = (
        jnp.arange(2, n + 2, dtype=jnp.int32),
        params.w_hidden,
        params.b_hidden,
        None if dz is None else dz[1:],
        None if dh is None else dh[1:],
    )
    h, stats = jax.lax.scan(body, h, xs, length=n)
    out = _dense(h, params.w_out, params.b_out)
    out = out if dy is None else out + dy
    if layer_stats is not None:
        stats = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), stats1, stats)
    return out, stats


@partial(jax.jit, static_argnames=("phi",))
def _apply_jit(params: MLPParams, x: jax.Array, depth: jax.Array, phi: Activation) -> jax.Array:
    return _forward(params, x, depth, phi)[0]


def mlp_apply(
    params: MLPParams,
    x: ArrayLike,
    *,
    activation: str | Activation,
    depth: int | jax.Array | None = None,
) -> jax.Array:
    """The MLP's output for ``x``, running the hidden layers with ``lax.scan``.

    Compiled once per (shapes, dtype, activation); ``depth`` is data. Pass the same callable object
    (or a name) to reuse a compilation: a new lambda at every call compiles at every call.

    Args:
        params: from :func:`mlp_init`.
        x: ``(batch, in_dim)`` or ``(in_dim,)``; cast to the parameters' dtype.
        activation: a name from :func:`stabkit.activations.activation_names` or an elementwise
            callable, applied after every hidden layer (not after the readout).
        depth: hidden layers to use, 1..``params.max_depth``; default all. May be a traced int32
            scalar (then clipped to that range, not checked); deeper layers are skipped.

    Returns:
        ``(batch, out_dim)``, or ``(out_dim,)`` for a 1-D ``x``, in the parameters' dtype.

    Raises:
        ValueError: ``x`` has the wrong shape, a concrete ``depth`` is out of range, an unknown
            activation, an activation callable that changes the shape, buffers (``batch x
            width``) beyond memory.
        TypeError: non-floating ``x``, parameters that are not an :class:`MLPParams` (or float64
            ones outside x64), an activation callable that fails, changes the dtype or returns
            no array (checked with ``jax.eval_shape`` on the layer's shape before compiling).

    Examples:
        >>> p = mlp_init(jax.random.key(0), depth=8, width=2, init="scaled_identity", scale=0.5)
        >>> x = jnp.ones(2)
        >>> mlp_apply(p, x, activation="linear", depth=3)  # 0.5 ** (3 + 1)
        Array([0.0625, 0.0625], dtype=float32)
    """
    params = _check_params(params)
    phi = get_activation(activation)
    x2, was_1d = _check_x(x, params)
    depth = _check_depth(depth, params.max_depth)
    batch, width = x2.shape[0], params.width
    _check_elementwise(phi, "activation", (batch, width), params.dtype, derivative=False)
    # x cast to the dtype, the scan's carry and layer, the output: no per-layer buffers.
    nbytes = batch * (params.in_dim + 3 * width + params.out_dim) * params.dtype.itemsize
    check_memory(nbytes, "x.shape", tuple(jnp.shape(x)), f"mlp_apply at width={width}")
    out = _apply_jit(params, x2, depth, phi)
    return out[0] if was_1d else out
