"""The sweep's specification: :class:`SweepSpec` (validated when built) and its variables.

:data:`LAYER_VARS` and :data:`CONFIG_VARS` name the dataset variables :func:`stabkit.sweep`
returns; both are re-exported by :mod:`stabkit.sweep`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from stabkit.activations import get_activation
from stabkit.init import initializer_names
from stabkit.tracing import loss_names

_DTYPES = ("float16", "bfloat16", "float32", "float64")
_INPUTS = ("normal", "uniform", "ones")
_AXES = ("dtype", "width", "activation", "init", "depth", "scale", "bias_std", "seed")

#: Per-layer variables (config..., layer) and what they hold.
LAYER_VARS = {
    "pre_rms": "RMS of the pre-activations z",
    "post_rms": "RMS of the post-activations h = phi(z)",
    "post_max": "max |h|",
    "grad_post_rms": "RMS of dL/dh (layer 0: the input gradient)",
    "grad_pre_rms": "RMS of dL/dz",
    "grad_w_rms": "RMS of dL/dW (NaN at layer 0)",
    "dphi_rms": "RMS of phi'(z) (hidden layers only)",
    "saturated": "fraction of entries with |phi'(z)| < saturation_threshold",
    "dead": "fraction of units with phi'(z) == 0 for every example",
    "post_subnormal": "subnormal entries of h",
    "post_zero": "zero entries of h",
    "post_inf": "inf entries of h",
    "post_nan": "NaN entries of h",
    "grad_subnormal": "subnormal entries of dL/dh",
    "grad_zero": "zero entries of dL/dh",
    "grad_inf": "inf entries of dL/dh",
    "grad_nan": "NaN entries of dL/dh",
}
#: Per-config variables (config...) and what they hold.
CONFIG_VARS = {
    "output_rms": "RMS of the network's output",
    "loss": "the loss",
    "output_gain": "output RMS / input RMS",
    "grad_ratio": "RMS of dL/dx over RMS of dL/dy (the backward pass's gain)",
    "first_inf_forward": "lowest layer whose h holds an inf; -1 if none",
    "first_nan_forward": "lowest layer whose h holds a NaN; -1 if none",
    "first_nonfinite_forward": "lowest layer whose h holds an inf or NaN; -1 if none",
    "first_zero_forward": "lowest layer whose h is all zeros; -1 if none",
    "first_inf_backward": "first layer the backward pass meets with an inf in dL/dh; -1 if none",
    "first_nan_backward": "likewise for NaN",
    "first_nonfinite_backward": "likewise for inf or NaN",
    "first_zero_backward": "likewise for an all-zero dL/dh (the gradient vanished)",
}
_INT_VARS = tuple(k for k in CONFIG_VARS if k.startswith("first_"))


# ------------------------------------------------------------------------------------------ spec


def _axis(value: Any, name: str, convert: Callable[[Any], Any]) -> tuple:
    values = (value,) if isinstance(value, (str, int, float)) or callable(value) else value
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a value or a sequence of values, got {value!r}") from None
    if not values:
        raise ValueError(f"the {name} axis is empty; give at least one value")
    out = tuple(convert(v) for v in values)
    keys = [_name(v) if callable(v) else v for v in out]
    dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"the {name} axis repeats {', '.join(dupes)}; values must be distinct")
    return out


def _int(name: str, minimum: int, maximum: int = 2**31 - 1) -> Callable[[Any], int]:
    def convert(v: Any) -> int:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} values must be ints, got {type(v).__name__} {v!r}")
        if not minimum <= int(v) <= maximum:
            raise ValueError(f"{name} values must be in [{minimum}, {maximum}], got {v}")
        return int(v)

    return convert


def _float(name: str, nonnegative: bool) -> Callable[[Any], float]:
    def convert(v: Any) -> float:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise TypeError(f"{name} values must be numbers, got {type(v).__name__} {v!r}")
        f = float(v)
        if not math.isfinite(f) or (nonnegative and f < 0):
            kind = "finite and >= 0" if nonnegative else "finite"
            raise ValueError(f"{name} values must be {kind}, got {v!r}")
        return f

    return convert


def _name(fn: Any) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


def _activation(v: Any) -> Any:
    get_activation(v)  # raises for an unknown name or a non-callable
    return v


def _init(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"init values must be initializer names, got {type(v).__name__} {v!r}")
    if v not in initializer_names():
        raise ValueError(f"unknown init {v!r}; valid names: {', '.join(initializer_names())}")
    return v


def _dtype(v: Any) -> str:
    name = v if isinstance(v, str) else getattr(jnp.dtype(v), "name", str(v))
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {v!r}; valid: {', '.join(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What to sweep: the product of the axes, each a value or a sequence of distinct values.

    Numeric axes (depth, width, scale, bias_std, seed) are stored sorted; activation, init and
    dtype keep their order. Everything is validated here, before anything compiles.

    Attributes:
        depth: hidden layers, each >= 1.
        width: units per layer (in_dim = out_dim = width, square layers).
        activation: names (:func:`stabkit.activation_names`) or elementwise callables (named by
            their ``__name__``, which must be distinct).
        init: initializer names (:func:`stabkit.initializer_names`).
        scale: the initializer's multiplier (``sigma_w``, ``gain``, or ``a`` for the scaled
            identity).
        bias_std: standard deviations of the biases (0: zero biases).
        dtype: ``float16``, ``bfloat16``, ``float32``, ``float64``.
        seed: integer seeds in [0, 2^31).
        batch: examples in the input batch.
        input: the input distribution: ``normal`` N(0, 1), ``uniform`` U(-sqrt 3, sqrt 3) (unit
            variance) or ``ones``.
        loss: ``mse`` or ``sum`` (see :func:`stabkit.loss_names`).
        saturation_threshold: a unit is saturated where ``|phi'(z)|`` is below it.

    Raises:
        ValueError: an empty axis, a repeated value, depth < 1, an unknown name, a bad number.
        TypeError: a value of the wrong type.

    Examples:
        >>> s = SweepSpec(depth=[8, 4], activation=["relu", "tanh"], scale=[1.0, 0.5], seed=2)
        >>> s.depth, s.scale, s.n_configs
        ((4, 8), (0.5, 1.0), 8)
        >>> SweepSpec(depth=[0])
        Traceback (most recent call last):
        ...
        ValueError: depth values must be in [1, 4096], got 0
    """

    depth: Any
    width: Any = 64
    activation: Any = "relu"
    init: Any = "gaussian"
    scale: Any = 1.0
    bias_std: Any = 0.0
    dtype: Any = "float32"
    seed: Any = 0
    batch: int = 128
    input: str = "normal"
    loss: str = "mse"
    saturation_threshold: float = 1e-2

    def __post_init__(self):
        fix = functools.partial(object.__setattr__, self)
        fix("depth", tuple(sorted(_axis(self.depth, "depth", _int("depth", 1, 4096)))))
        fix("width", tuple(sorted(_axis(self.width, "width", _int("width", 1, 8192)))))
        fix("activation", _axis(self.activation, "activation", _activation))
        fix("init", _axis(self.init, "init", _init))
        fix("scale", tuple(sorted(_axis(self.scale, "scale", _float("scale", False)))))
        fix("bias_std", tuple(sorted(_axis(self.bias_std, "bias_std", _float("bias_std", True)))))
        fix("dtype", _axis(self.dtype, "dtype", _dtype))
        fix("seed", tuple(sorted(_axis(self.seed, "seed", _int("seed", 0)))))
        fix("batch", _int("batch", 1, 2**20)(self.batch))
        if self.input not in _INPUTS:
            raise ValueError(f"unknown input {self.input!r}; valid: {', '.join(_INPUTS)}")
        if self.loss not in loss_names():
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(loss_names())}")
        fix("saturation_threshold", _float("saturation_threshold", True)(self.saturation_threshold))
        if self.batch * max(self.width) > 2**24:
            raise ValueError(
                f"batch * width = {self.batch * max(self.width)} exceeds 2^24: census counts would "
                "not be exact in float32"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's shape, in the dataset's axis order (dtype, width, ..., seed)."""
        return tuple(len(getattr(self, a)) for a in _AXES)

    @property
    def n_configs(self) -> int:
        return math.prod(self.shape)

    @property
    def n_layers(self) -> int:
        """Length of the ``layer`` dimension: the largest depth + 2."""
        return max(self.depth) + 2

    def coords(self) -> dict[str, list]:
        """Each axis's coordinate values (activation callables by name)."""
        out = {a: list(getattr(self, a)) for a in _AXES}
        out["activation"] = [_name(a) for a in self.activation]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (activation callables by name)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d["activation"] = [_name(a) for a in self.activation]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        """The inverse of :meth:`to_dict` (activations must then be registered names)."""
        return cls(**d)
