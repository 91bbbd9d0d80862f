"""A network as a stack of blocks: :class:`NetParams`, :func:`net_init`, :func:`net_apply`.

.. math::

    h^0 = x E + e\\ (\\text{or } x \\text{ without embedding}),\\quad
    h^l = B_l(h^{l-1})\\ (l = 1..D),\\quad \\hat y = h^D R + r,

with ``B_l`` the ``l``-th copy of one :class:`stabkit.networks.Block`, its parameters stacked along
a leading axis and run under ``lax.scan``: compile time does not grow with depth, and **depth is
data** (blocks beyond ``depth`` pass their input through; a traced depth serves a sweep). Block
``l``'s parameters depend only on the key and ``l`` (``fold_in(split(key)[1], l)``), so a
shallower net's parameters are a prefix of a deeper one's. The embedding and the readout are
drawn together from ``split(key)[0]`` with the same initializer (multiplier 1).

Activations have shape ``(batch, *spatial, width)``: ``spatial`` is empty for dense blocks, a
sequence axis for attention and ``conv1d``, two image axes for ``conv2d``.
"""

from __future__ import annotations

import dataclasses
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
    _first_line,
    _short,
    check_memory,
    choice,
    floating_array,
    positive_int,
)
from stabkit._numerics import compute_dtype
from stabkit.init import _dtype, check_key, init_rule, scaled_draws
from stabkit.networks.blocks import Block
from stabkit.networks.dense import matmul
from stabkit.networks.kinds import block as make_block
from stabkit.networks.norms import NORMS, layer_norm, rms_norm
from stabkit.precision.float8 import float8_partition

__all__ = ["NetParams", "net_apply", "net_init"]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["embed", "blocks", "readout", "hyper"],
    meta_fields=["block", "max_depth", "final_norm"],
)
@dataclasses.dataclass(frozen=True)
class NetParams:
    """A network's parameters (a pytree; ``block`` and ``max_depth`` are static).

    Attributes:
        embed: ``{"w": (in_dim, width), "b": (width,)}``, or ``None`` (no embedding: ``x`` has
            ``width`` features and enters the first block as is).
        blocks: one block's parameters with a leading ``max_depth`` axis on every leaf.
        readout: ``{"w": (width, out_dim), "b": (out_dim,)}``, and the final norm's
            ``"norm_gain"``/``"norm_bias"`` ``(width,)`` when there is one.
        hyper: the numeric hyper-parameters (``scale``, ``bias_std``, ``alpha``, ``eps`` and the
            branch's own) as scalars in the compute dtype: data, not compiled in.
        block: the :class:`stabkit.networks.Block`.
        max_depth: the number of blocks held.
        final_norm: ``None``, or the norm applied to the last block's output before the
            readout (``"layer"``, ``"rms"``; a pre-norm transformer's final layer norm).
    """

    embed: dict | None
    blocks: Any
    readout: dict
    hyper: dict
    block: Block
    max_depth: int
    final_norm: str | None = None

    @property
    def width(self) -> int:
        return self.readout["w"].shape[-2]

    @property
    def out_dim(self) -> int:
        return self.readout["w"].shape[-1]

    @property
    def in_dim(self) -> int:
        return self.width if self.embed is None else self.embed["w"].shape[-2]

    @property
    def dtype(self) -> jnp.dtype:
        return self.readout["w"].dtype


def _scalar(value: Any, name: str, *, nonnegative: bool = False) -> Any:
    """A finite real (checked) or a traced scalar (passed through: a sweep's data)."""
    if isinstance(value, jax.core.Tracer):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        if getattr(value, "ndim", None) == 0 and jnp.issubdtype(
            jnp.asarray(value).dtype, jnp.number
        ):
            value = float(value)
        else:
            raise TypeError(
                f"{name} must be a real number, got {type(value).__name__} {_short(value)}"
            )
    value = float(value)
    if not math.isfinite(value) or (nonnegative and value < 0):
        what = "a finite real >= 0" if nonnegative else "a finite real"
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def _check_block(block: Any) -> Block:
    if isinstance(block, str):
        return make_block(block)
    if not isinstance(block, Block):
        raise TypeError(
            "block must be a Block (stabkit.networks.block(...) or user_block(...)) or a kind "
            f"name, got {type(block).__name__} {_short(block)}"
        )
    return block


def net_init(
    key: jax.Array,
    block: Block | str,
    *,
    depth: int,
    width: int,
    in_dim: int | None = None,
    out_dim: int | None = None,
    init: str = "gaussian",
    scale: float | jax.Array = 1.0,
    bias_std: float | jax.Array = 0.0,
    alpha: float | jax.Array = 1.0,
    eps: float | jax.Array = 1e-6,
    dtype: DTypeLike = jnp.float32,
    embed: bool = True,
    final_norm: str | None = None,
    **hyper: float | jax.Array,
) -> NetParams:
    """Parameters of a network of ``depth`` copies of ``block`` at ``width`` features.

    Args:
        key: a PRNG key.
        block: a :class:`stabkit.networks.Block` or a kind name (``"dense"``, ``"residual"``...,
            with its default options).
        depth: the number of blocks, >= 1.
        width: features per position, >= 1.
        in_dim: input features (default ``width``); out_dim: outputs (default ``width``).
        init: the initializer name of every weight (:func:`stabkit.initializer_names`).
        scale: the blocks' weight multiplier; bias_std: their biases' std; alpha: the residual
            scale; eps: the norms' epsilon. Each may be a traced scalar (a sweep's data).
        dtype: the parameters' dtype (:data:`stabkit.SUPPORTED_DTYPES`).
        embed: a linear embedding ``in_dim -> width`` first (default). Without it ``in_dim``
            must equal ``width``.
        final_norm: ``None`` (default), ``"layer"`` or ``"rms"``: a norm on the last block's output
            before the readout, as pre-norm transformers have (without it a pre-LN stack's
            output grows like ``sqrt(depth)``).
        **hyper: the branch's own numeric hyper-parameters (attention's ``softcap``...).

    Returns:
        A :class:`NetParams`.

    Raises:
        ValueError: a size < 1, non-finite or negative hyper-parameters, ``embed=False`` with
            ``in_dim != width``, parameters beyond memory, an unknown hyper-parameter name.
        TypeError: a bad key, block or dtype; the user block's ``init`` failing when traced.

    Examples:
        >>> p = net_init(jax.random.key(0), "residual", depth=4, width=8)
        >>> p.max_depth, p.blocks["branch"]["w"].shape
        (4, (4, 8, 8))
    """
    check_key(key)
    block = _check_block(block)
    depth = positive_int(depth, "depth")
    width = positive_int(width, "width")
    in_dim = width if in_dim is None else positive_int(in_dim, "in_dim")
    out_dim = width if out_dim is None else positive_int(out_dim, "out_dim")
    if not isinstance(embed, bool):
        raise TypeError(f"embed must be a bool, got {embed!r}")
    if not embed and in_dim != width:
        raise ValueError(f"embed=False needs in_dim == width, got in_dim={in_dim}, width={width}")
    init_rule(init)
    dtype = _dtype(dtype)
    if final_norm is not None:
        final_norm = choice(final_norm, "final_norm", ("layer", "rms"))
    defaults = block.hyper_defaults
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter {unknown[0]!r} for a {block.describe()} block; valid: "
            f"{sorted(defaults)}"
        )
    values = {**defaults, **hyper, "scale": scale, "bias_std": bias_std, "alpha": alpha, "eps": eps}
    sdt = compute_dtype(dtype)
    hyper_arrays = {
        k: jnp.asarray(_scalar(v, k, nonnegative=k in ("bias_std", "eps")), sdt)
        for k, v in values.items()
    }
    # One block's parameters, by shape only (a user's init is traced here, not run).
    one = _eval_block_init(block, key, width, dtype, init, hyper_arrays)
    per_block = sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(one))
    nbytes = 3 * depth * per_block + 3 * (in_dim + out_dim + 2) * width * dtype.itemsize
    check_memory(nbytes, "depth", depth, f"the parameters of {depth} blocks at width={width}")
    return _init_jit(
        key, block, depth, width, in_dim, out_dim, init, dtype, embed, final_norm, hyper_arrays
    )


def _eval_block_init(block: Block, key, width, dtype, init, hyper) -> Any:
    try:
        return jax.eval_shape(lambda k, h: block.init(k, width, dtype, init, h), key, hyper)
    except Exception as err:  # a user's init that fails when traced
        if block.kind != "user" and isinstance(err, ValueError):
            raise  # a built-in branch refusing the width (attention: heads must divide it)
        raise TypeError(
            f"the block's init failed for width={width}, dtype={dtype.name}: {_first_line(err)}"
        ) from err


def head_params(key: jax.Array, shapes: list, dtype: Any, init: str) -> list[dict]:
    """The embedding's and the readout's ``{"w": shape, "b": zeros}`` (the readout alone
    without an embedding): the named initializer at multiplier 1, in one random-number call
    (one home: :func:`net_init` and the network sweep draw them alike)."""
    ws = scaled_draws(key, shapes, dtype, init=init)
    return [{"w": w, "b": jnp.zeros((w.shape[-1],), dtype)} for w in ws]


def block_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The embedding's and readout's key, and the blocks' base key: block ``l`` draws from
    ``fold_in(blocks_key, l)``."""
    k = jax.random.split(key)
    return k[0], k[1]


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7, 8, 9))
def _init_jit(
    key, block, depth, width, in_dim, out_dim, init, dtype, embed, final_norm, hyper
) -> NetParams:
    k_heads, k_blocks = block_keys(key)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(k_blocks, jnp.arange(1, depth + 1))
    blocks = jax.vmap(lambda k: block.init(k, width, dtype, init, hyper))(keys)
    shapes = ([(in_dim, width)] if embed else []) + [(width, out_dim)]
    *e, r = head_params(k_heads, shapes, dtype, init)
    if final_norm is not None:
        r["norm_gain"] = jnp.ones((width,), dtype)
        if NORMS[final_norm]:
            r["norm_bias"] = jnp.zeros((width,), dtype)
    return NetParams(
        embed=e[0] if embed else None,
        blocks=blocks,
        readout=r,
        hyper=hyper,
        block=block,
        max_depth=depth,
        final_norm=final_norm,
    )


# ------------------------------------------------------------------------------ shared internals


def check_params(params: Any) -> NetParams:
    """``params`` if it is a :class:`NetParams` whose leaves share one supported dtype."""
    if not isinstance(params, NetParams):
        raise TypeError(f"params must be a NetParams (from net_init), got {type(params).__name__}")
    # float8 scaling state is float32 whatever the parameters' dtype
    arrays = float8_partition((params.embed, params.blocks, params.readout))[0]
    dtypes = {jnp.asarray(a).dtype for a in jax.tree.leaves(arrays)}
    if len(dtypes) != 1:
        raise TypeError(
            f"params must share one floating dtype, got {sorted(d.name for d in dtypes)}"
        )
    _dtype(params.dtype, "params.dtype")
    return params


def check_x(x: Any, params: NetParams, batch_axes: int = 0) -> jax.Array:
    """``x`` as ``(batch, *spatial, in_dim)`` in the parameters' dtype, checked against the block.

    ``batch_axes``: leading axes the caller vmaps over (not counted).
    """
    x = floating_array(x, "x")
    block = params.block
    spatial = x.ndim - 2
    if x.ndim < 2 or x.shape[-1] != params.in_dim or x.size == 0:
        raise ValueError(
            f"x must have shape (batch, *spatial, {params.in_dim}) with batch >= 1, got {x.shape}"
        )
    if spatial not in block.spatial:
        names = {
            0: "(batch, width)",
            1: "(batch, sequence, width)",
            2: "(batch, height, width, channels)",
        }
        want = " or ".join(names.get(s, f"{s} spatial axes") for s in block.spatial)
        has = "a sequence axis" if spatial == 1 else f"{spatial} spatial axes"
        raise ValueError(
            f"x has shape {x.shape}: {has if spatial else 'no spatial axis'}, but a "
            f"{block.describe()} block takes inputs {want}"
        )
    if block.norm == "batch" and x.shape[0] < 2:
        raise ValueError(
            f"batch norm needs a batch of at least 2 examples (it normalizes each feature over "
            f"the batch; one example normalizes to the bias), got x of shape {x.shape}"
        )
    return x.astype(params.dtype)


def check_depth(depth: Any, max_depth: int) -> jax.Array:
    """``depth`` as an int32 scalar in 1..max_depth; a traced value is clipped, not checked."""
    if depth is None:
        return jnp.asarray(max_depth, jnp.int32)
    if isinstance(depth, jax.core.Tracer):
        if depth.ndim != 0 or not jnp.issubdtype(depth.dtype, jnp.integer):
            raise TypeError(f"depth must be an integer scalar, got {depth.dtype}{depth.shape}")
        return jnp.clip(depth, 1, max_depth).astype(jnp.int32)
    if isinstance(depth, (bool, np.bool_)):
        raise TypeError(f"depth must be an int, got the bool {depth!r}")
    try:
        value = operator.index(depth)
    except TypeError:
        raise TypeError(
            f"depth must be an int, got {type(depth).__name__} {_short(depth)}"
        ) from None
    value = positive_int(value, "depth")
    if value > max_depth:
        raise ValueError(f"depth={value} exceeds the {max_depth} blocks the params hold")
    return jnp.asarray(value, jnp.int32)


def check_block_shapes(params: NetParams, x: jax.Array) -> None:
    """The block must map ``(batch, *spatial, width)`` to itself, same dtype (``eval_shape``)."""
    h = jax.ShapeDtypeStruct((*x.shape[:-1], params.width), params.dtype)
    one = jax.tree.map(lambda a: a[0], params.blocks)
    try:
        out = jax.eval_shape(lambda p, h, hy: params.block.apply(p, h, hy), one, h, params.hyper)
    except Exception as err:
        raise TypeError(
            f"the {params.block.describe()} block failed on activations of shape {h.shape} "
            f"({h.dtype}): {_first_line(err)}"
        ) from err
    got = out[0]
    if not isinstance(got, jax.ShapeDtypeStruct) or got.shape != h.shape or got.dtype != h.dtype:
        desc = f"shape {got.shape} {got.dtype}" if hasattr(got, "shape") else type(got).__name__
        raise ValueError(
            f"the {params.block.describe()} block returned {desc} for an input of shape "
            f"{h.shape} {h.dtype}; a block must keep its input's shape and dtype"
        )


def embed(params: NetParams, x: jax.Array) -> jax.Array:
    if params.embed is None:
        return x
    return linear(params.embed, x)


def linear(p: dict, h: jax.Array) -> jax.Array:
    return matmul(h, p["w"]) + p["b"]


def readout(r: dict, h: jax.Array, final_norm: str | None = None, eps=1e-6) -> jax.Array:
    """The readout of the last block's output ``h``, after the final norm if there is one."""
    if final_norm == "layer":
        h = layer_norm(h, r["norm_gain"], r["norm_bias"], eps)
    elif final_norm == "rms":
        h = rms_norm(h, r["norm_gain"], eps)
    return linear(r, h)


class Stack(NamedTuple):
    """A stack of blocks as :func:`trace_core` reads it: the block, its hyper-parameters, the
    most blocks it may run, and ``params_of(l)``: block ``l``'s parameters (1-based, traced).
    A :class:`NetParams` indexes its stacked parameters; the sweep draws them on the fly, from
    the same keys, so that both run the same network."""

    block: Any
    hyper: dict
    max_depth: int
    params_of: Callable[[jax.Array], Any]


def stack_of(params: NetParams) -> Stack:
    def params_of(layer):
        return jax.tree.map(
            lambda a: jax.lax.dynamic_index_in_dim(a, layer - 1, keepdims=False), params.blocks
        )

    return Stack(params.block, params.hyper, params.max_depth, params_of)


def forward(
    params: NetParams, x: jax.Array, depth: jax.Array, *, with_taps: bool = False
) -> jax.Array | tuple[jax.Array, dict]:
    """The network's output on ``x``: every block under ``lax.scan``, those beyond ``depth``
    passing their input through, so that ``jax.grad`` differentiates it (a ``fori_loop`` to a
    traced depth cannot be reverse-differentiated). A skipped block computes on zeros, the
    double ``where``: its discarded values and their zero-weighted gradients stay finite, so no
    0 * inf NaN reaches the blocks that count. ``with_taps``: also return the blocks' taps,
    stacked ``(max_depth, ...)`` (a skipped block's are those of zeros: mask them by depth)."""
    block, hyper = params.block, params.hyper

    def step(h, inputs):
        index, bp = inputs
        active = index <= depth
        out, taps = block.apply(bp, jnp.where(active, h, jnp.zeros_like(h)), hyper)
        return jnp.where(active, out.astype(h.dtype), h), (taps if with_taps else None)

    index = jnp.arange(1, params.max_depth + 1, dtype=jnp.int32)
    h, taps = jax.lax.scan(step, embed(params, x), (index, params.blocks))
    out = readout(params.readout, h, params.final_norm, hyper["eps"])
    return (out, taps) if with_taps else out


@jax.jit
def _apply_jit(params: NetParams, x: jax.Array, depth: jax.Array) -> jax.Array:
    return forward(params, x, depth)


def net_apply(
    params: NetParams, x: ArrayLike, *, depth: int | jax.Array | None = None
) -> jax.Array:
    """The network's output for ``x``; one compilation per (block, shapes, dtype), depth is data.

    Args:
        params: from :func:`net_init`.
        x: ``(batch, *spatial, in_dim)``, cast to the parameters' dtype.
        depth: blocks to use, 1..``params.max_depth`` (default all); may be traced (clipped).

    Returns:
        ``(batch, *spatial, out_dim)`` in the parameters' dtype.

    Raises:
        ValueError: ``x`` of the wrong shape (a sequence axis on a block that has none, a batch
            of one with batch norm), a concrete depth out of range, a user block that changes
            the shape; buffers beyond memory.
        TypeError: parameters that are not a :class:`NetParams`, non-floating ``x``, a user block
            that fails when traced.

    Examples:
        >>> p = net_init(jax.random.key(0), "dense", depth=3, width=4, out_dim=2)
        >>> net_apply(p, jnp.ones((5, 4))).shape
        (5, 2)
    """
    params = check_params(params)
    x = check_x(x, params)
    depth = check_depth(depth, params.max_depth)
    check_block_shapes(params, x)
    nbytes = 4 * x.size // params.in_dim * max(params.width, params.in_dim, params.out_dim)
    check_memory(nbytes * params.dtype.itemsize, "x.shape", x.shape, "net_apply's activations")
    return _apply_jit(params, x, depth)
