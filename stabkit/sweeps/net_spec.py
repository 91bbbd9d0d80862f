"""A sweep of networks of blocks: :class:`NetSweepSpec` (validated when built) and its variables.

The block-network counterpart of :class:`stabkit.SweepSpec`: the same depth x width x activation
x init x scale x bias x dtype x seed axes, plus the block kind, the norm, its placement and the
residual scale ``alpha``. :func:`stabkit.sweep` runs it (see :mod:`stabkit.sweeps.net_driver`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp

from stabkit._checks import (
    _short,
    choice,
    format_bytes,
    int_values,
    is_scalar,
    memory_limit,
    real_values,
)
from stabkit.losses import loss_names
from stabkit.networks.blocks import NORM_POSITIONS, Block
from stabkit.networks.kinds import block as make_block
from stabkit.networks.kinds import block_names
from stabkit.networks.norms import NORMS
from stabkit.sweeps.spec import MAX_CONFIGS, SweepSpec, _activation, _axis, _dtype, _init, _name

__all__ = ["NET_CONFIG_VARS", "NET_LAYER_VARS", "NetSweepSpec"]

NET_AXES = (
    "dtype",
    "width",
    "block",
    "norm",
    "norm_position",
    "activation",
    "init",
    "depth",
    "scale",
    "alpha",
    "bias_std",
    "seed",
)
#: The axes a kernel is compiled for (the others are data).
STATIC_AXES = NET_AXES[:7]

#: Per-boundary variables (config..., layer); boundary 0 is the first block's input, l its
#: output, depth + 1 the readout.
NET_LAYER_VARS = {
    "rms": "RMS of the activations",
    "max_abs": "max |h|",
    "subnormal": "subnormal entries of h",
    "zero": "zero entries of h",
    "inf": "inf entries of h",
    "nan": "NaN entries of h",
    "grad_rms": "RMS of dL/dh (layer depth+1: dL/dy)",
    "grad_max_abs": "max |dL/dh|",
    "grad_subnormal": "subnormal entries of dL/dh",
    "grad_zero": "zero entries of dL/dh",
    "grad_inf": "inf entries of dL/dh",
    "grad_nan": "NaN entries of dL/dh",
    "param_grad_rms": "RMS of the gradient of the block's (readout's) parameters",
    "branch_rms": "tap: RMS of the branch output F (blocks only)",
    "normalized_rms": "tap: RMS of the norm's output (blocks with a norm)",
    "pre_norm_rms": "tap: RMS of h + alpha F before a post-norm",
}
#: Per-head taps (config..., layer, head).
NET_HEAD_VARS = {
    "logit_max": "tap: max |attention logit| per head",
    "entropy": "tap: mean entropy (nats) of the attention distribution per head",
}
NET_CONFIG_VARS = {
    "output_rms": "RMS of the network's output",
    "loss": "the loss",
    "grad_ratio": "RMS of dL/dh at boundary 0 over RMS of dL/dy",
    "first_nonfinite_forward": "lowest boundary holding an inf or NaN; -1 if none",
    "first_nonfinite_backward": "first boundary the backward pass meets with an inf or NaN "
    "gradient; -1 if none",
    "first_zero_backward": "likewise for an all-zero gradient",
}
NET_INT_VARS = tuple(k for k in NET_CONFIG_VARS if k.startswith("first_")) + tuple(
    k for k in NET_LAYER_VARS if k.split("_")[-1] in ("subnormal", "zero", "inf", "nan")
)


def _block_value(v: Any) -> Any:
    if isinstance(v, Block):
        return v
    if not isinstance(v, str):
        raise TypeError(
            f"block values must be kind names ({', '.join(block_names())}) or Blocks "
            f"(stabkit.block(...), stabkit.user_block(...)), got {type(v).__name__} {_short(v)}"
        )
    return str(choice(v, "block", block_names()))


def _norm_value(v: Any) -> str:
    return str(choice(v, "norm", ("none", *NORMS)))


def _position_value(v: Any) -> str:
    return str(choice(v, "norm_position", NORM_POSITIONS))


def block_label(b: Any) -> str:
    return b if isinstance(b, str) else b.describe()


@dataclasses.dataclass(frozen=True)
class NetSweepSpec:
    """What to sweep: the product of the axes (each a value or a sequence of distinct values).

    Attributes:
        depth: blocks, each in 1..4096.
        width: features per position.
        block: kind names (:func:`stabkit.block_names`), built as ``stabkit.block(kind,
            activation=..., norm=..., norm_position=..., **block_options)`` for each value of the
            activation, norm and placement axes, or :class:`stabkit.Block` objects (used as
            they are: the activation, norm and placement axes must then be single values, the
            defaults).
        norm: ``"none"``, ``"layer"``, ``"rms"``, ``"batch"``.
        norm_position: ``"pre"``, ``"post"``, ``"inner"`` (``inner`` only for blocks whose branch
            is one linear map and an activation: ``dense``, ``residual`` with ``branch="dense"``,
            the convolutions).
        activation, init, scale, bias_std, dtype, seed: as in :class:`stabkit.SweepSpec` (the
            blocks' weights are ``scale`` times the named initializer; the readout is the
            initializer at multiplier 1).
        alpha: the residual scale (blocks with a skip connection); with
            ``alpha_scaling="inv_sqrt_depth"`` each value is divided by ``sqrt(depth)``.
        batch: examples; seq_len: positions of each spatial axis (attention and ``conv1d``: a
            sequence of ``seq_len``; ``conv2d``: ``seq_len x seq_len`` images).
        loss: ``mse`` or ``sum``.
        block_options: options passed to every :func:`stabkit.block` built by kind (``heads``,
            ``qk_norm``, ``branch``, ``kernel_size``...).
        hyper: the branches' own numeric hyper-parameters, fixed for the sweep (``softcap``...).
        alpha_scaling: ``"constant"`` or ``"inv_sqrt_depth"``.

    Raises:
        ValueError / TypeError: as :class:`stabkit.SweepSpec`; an unknown block kind, norm or
            placement; a placement the block cannot take; batch norm with a batch of one; axes of
            Block objects with several activations or norms; buffers beyond memory.

    Examples:
        >>> s = NetSweepSpec(depth=[4, 16], norm=["none", "layer"], alpha=[1.0, 0.5])
        >>> s.shape, s.n_configs
        ((1, 1, 1, 2, 1, 1, 1, 2, 1, 2, 1, 1), 8)
    """

    DTYPES: ClassVar[tuple[str, ...]] = SweepSpec.DTYPES

    depth: Any
    width: Any = 32
    block: Any = "residual"
    norm: Any = "none"
    norm_position: Any = "pre"
    activation: Any = "relu"
    init: Any = "gaussian"
    scale: Any = 1.0
    alpha: Any = 1.0
    bias_std: Any = 0.0
    dtype: Any = "float32"
    seed: Any = 0
    batch: int = 32
    seq_len: int = 8
    loss: str = "mse"
    block_options: Any = None
    hyper: Any = None
    alpha_scaling: str = "constant"

    def __post_init__(self):
        fix = functools.partial(object.__setattr__, self)
        fix("depth", tuple(sorted(_axis(self.depth, "depth", int_values("depth", 1, 4096)))))
        fix("width", tuple(sorted(_axis(self.width, "width", int_values("width", 1, 8192)))))
        # A Block is a NamedTuple, a sequence: one Block is one value, not an axis of its fields.
        blocks = (self.block,) if isinstance(self.block, Block) else self.block
        fix("block", _axis(blocks, "block", _block_value))
        fix("norm", _axis(self.norm, "norm", _norm_value))
        fix("norm_position", _axis(self.norm_position, "norm_position", _position_value))
        fix("activation", _axis(self.activation, "activation", _activation))
        fix("init", _axis(self.init, "init", _init))
        fix("scale", tuple(sorted(_axis(self.scale, "scale", real_values("scale", False)))))
        fix("alpha", tuple(sorted(_axis(self.alpha, "alpha", real_values("alpha", False)))))
        fix(
            "bias_std",
            tuple(sorted(_axis(self.bias_std, "bias_std", real_values("bias_std", True)))),
        )
        fix("dtype", _axis(self.dtype, "dtype", _dtype))
        fix("seed", tuple(sorted(_axis(self.seed, "seed", int_values("seed", 0)))))
        for name in ("batch", "seq_len"):
            value = getattr(self, name)
            if not is_scalar(value) or isinstance(value, str):
                raise TypeError(
                    f"{name} must be an int, got {type(value).__name__} {_short(value)}"
                )
        fix("batch", int_values("batch", 1, 2**16)(self.batch))
        fix("seq_len", int_values("seq_len", 1, 4096)(self.seq_len))
        fix("loss", choice(self.loss, "loss", tuple(loss_names())))
        fix(
            "alpha_scaling",
            choice(self.alpha_scaling, "alpha_scaling", ("constant", "inv_sqrt_depth")),
        )
        fix("block_options", _options(self.block_options, "block_options"))
        fix("hyper", _options(self.hyper, "hyper", numeric=True))
        labels = [block_label(b) for b in self.block]
        if len(set(labels)) != len(labels):
            raise ValueError(f"the block axis repeats {labels}; values must be distinct")
        if self.n_configs > MAX_CONFIGS:
            raise ValueError(f"the spec has {self.n_configs} configs, more than {MAX_CONFIGS}")
        self._check_blocks()
        self._check_sizes()

    # ----------------------------------------------------------------------------- checks

    def _check_blocks(self) -> None:
        objects = [b for b in self.block if isinstance(b, Block)]
        if objects and (
            len(self.activation) > 1 or self.norm != ("none",) or self.norm_position != ("pre",)
        ):
            raise ValueError(
                "Block objects on the block axis carry their own activation and norm: the "
                "activation, norm and norm_position axes must then be single values (and norm "
                "'none', norm_position 'pre'); got activation="
                f"{[_name(a) for a in self.activation]}, "
                f"norm={list(self.norm)}, norm_position={list(self.norm_position)}"
            )
        for variant in self.variants():
            blk = self.build(*variant[2:6])
            if blk.norm == "batch" and self.batch < 2:
                raise ValueError(
                    "batch norm needs batch >= 2 (it normalizes each feature over the batch), got "
                    f"batch={self.batch}"
                )
            unknown = sorted(set(self.hyper) - set(blk.hyper_defaults))
            if unknown:
                raise ValueError(
                    f"hyper {unknown[0]!r} is not a hyper-parameter of the {blk.describe()} block; "
                    f"valid: {sorted(blk.hyper_defaults)}"
                )

    def _check_sizes(self) -> None:
        need = 2 * self.config_bytes(
            max(self.dtype, key=lambda d: jnp.dtype(d).itemsize), max(self.width)
        )
        if need > memory_limit():
            raise ValueError(
                f"depth={max(self.depth)}, batch={self.batch}, seq_len={self.seq_len}, width="
                f"{max(self.width)} needs about {format_bytes(need)} for two configs' block "
                f"inputs, more than the {format_bytes(memory_limit())} available"
            )

    # ------------------------------------------------------------------------------ views

    def build(self, blk: Any, norm: str, position: str, activation: Any) -> Block:
        """The :class:`stabkit.Block` of one (block, norm, norm_position, activation)."""
        if isinstance(blk, Block):
            return blk
        try:
            return _build(blk, norm, position, activation, self.block_options)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"block {blk!r} with norm={norm!r}, norm_position={position!r}: {err}"
            ) from None

    def spatial(self, blk: Block) -> tuple[int, ...]:
        """The spatial axes of a config's input: ``seq_len`` for each axis the block takes."""
        return (self.seq_len,) * blk.spatial[0]

    def variants(self):
        """Each compiled kernel's (dtype, width, block, norm, norm_position, activation, init)."""
        import itertools

        return itertools.product(*(getattr(self, a) for a in STATIC_AXES))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, a)) for a in NET_AXES)

    @property
    def n_configs(self) -> int:
        return math.prod(self.shape)

    @property
    def n_layers(self) -> int:
        return max(self.depth) + 2

    @property
    def max_heads(self) -> int:
        return int(dict(self.block_options).get("heads", 1))

    def config_bytes(self, dtype: str, width: int) -> int:
        """Device bytes one config needs: every block's input at the deepest depth, a block's
        temporaries (attention's logits included) and the statistics."""
        spatial = self.seq_len ** max(
            (self.build(*v[2:6]).spatial[0] for v in self.variants()), default=0
        )
        act = self.batch * spatial * width
        item = jnp.dtype(dtype).itemsize
        logits = 6 * self.batch * self.max_heads * self.seq_len**2 * 4
        return (max(self.depth) + 12) * act * max(item, 4) + logits + 64 * self.n_layers * 8

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d["activation"] = [_name(a) for a in self.activation]
        d["block"] = [block_label(b) for b in self.block]
        d["block_options"] = dict(self.block_options)
        d["hyper"] = dict(self.hyper)
        return d

    def coords(self) -> dict[str, list]:
        out = {a: list(getattr(self, a)) for a in NET_AXES}
        out["activation"] = [_name(a) for a in self.activation]
        out["block"] = [block_label(b) for b in self.block]
        return out


@functools.lru_cache(maxsize=256)
def _build(kind: str, norm: str, position: str, activation: Any, options: Any) -> Block:
    # One Block object per combination: the kernels are cached by block.
    return make_block(
        kind,
        activation=activation,
        norm=None if norm == "none" else norm,
        norm_position=position,
        **dict(options),
    )


def _options(value: Any, name: str, numeric: bool = False) -> tuple:
    """A dict of options as sorted (name, value) pairs: hashable, since the options key the
    kernels."""
    if value is None:
        return ()
    if isinstance(value, tuple):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of option names to values, got {_short(value)}")
    out = []
    for k, v in sorted(value.items()):
        if not isinstance(k, str):
            raise TypeError(f"{name} keys must be strings, got {k!r}")
        if numeric:
            v = real_values(f"{name}[{k!r}]", False)(v)
        elif not isinstance(v, (bool, int, float, str)):
            raise TypeError(f"{name}[{k!r}] must be a bool, number or string, got {_short(v)}")
        out.append((k, v))
    return tuple(out)
