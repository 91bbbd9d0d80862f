"""The sweep's specification: :class:`SweepSpec` (validated when built) and its variables.

:data:`LAYER_VARS` and :data:`CONFIG_VARS` name the dataset variables :func:`stabkit.sweep`
returns; both are re-exported by :mod:`stabkit.sweeps`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import (
    _short,
    check_elementwise,
    choice,
    format_bytes,
    int_values,
    is_scalar,
    memory_limit,
    real_values,
)
from stabkit.activations import activation_names, get_activation, is_registered
from stabkit.init import initializer_names
from stabkit.losses import loss_names
from stabkit.precision import SUPPORTED_DTYPES

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

#: Values one axis may hold: the spec travels as JSON in every store's attributes and the
#: dataset's coordinates, so it stays small (16384 floats are about 400 KB of JSON).
MAX_AXIS_LENGTH = 2**14
#: Configurations one sweep may hold: the sweep indexes them with int32 and allocates NumPy arrays
#: of the flat config count.
MAX_CONFIGS = 2**31 - 1
#: The fewest configs a kernel call holds (two a device: see stabkit.sweeps.driver._plan_chunk).
_MIN_CHUNK = 2


def _axis(value: Any, name: str, convert: Callable[[Any], Any]) -> tuple:
    """An axis's values: one value, or a list, tuple, range or 1-d array of distinct ones.

    Unordered containers (sets, dicts) are refused: an axis's order is its coordinates'. The
    length is checked before any value is converted (``range(10**9)`` costs nothing here).
    """
    if isinstance(value, (set, frozenset, Mapping)):
        raise TypeError(
            f"{name} must be a value or an ordered sequence (list, tuple, range, 1-d array), got "
            f"the unordered {type(value).__name__} {_short(value)}"
        )
    if is_scalar(value):
        values = (value,)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        try:
            arr = np.asarray(value)
        except Exception as err:
            raise TypeError(
                f"{name}: cannot read {type(value).__name__} as an array: {err}"
            ) from None
        if arr.ndim > 1:
            raise ValueError(f"{name} must be a value or a 1-d sequence, got shape {arr.shape}")
        values = arr.reshape(-1)
    elif isinstance(value, Sequence):
        values = value
    else:
        raise TypeError(
            f"{name} must be a value or a sequence (list, tuple, range, 1-d array), got "
            f"{type(value).__name__} {_short(value)}"
        )
    if len(values) > MAX_AXIS_LENGTH:
        raise ValueError(
            f"the {name} axis has {len(values)} values, more than the {MAX_AXIS_LENGTH} an axis "
            "may hold (the spec is stored as JSON with every sweep)"
        )
    if not len(values):
        raise ValueError(f"the {name} axis is empty; give at least one value")
    out = tuple(convert(v) for v in values)
    keys = [_name(v) if callable(v) else v for v in out]
    dupes = sorted(str(k) for k, n in collections.Counter(keys).items() if n > 1)
    if dupes:
        raise ValueError(
            f"the {name} axis repeats {', '.join(dupes)}; values must be distinct (they are the "
            "dataset's coordinates)"
        )
    return out


def _name(fn: Any) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


def _activation(v: Any) -> Any:
    get_activation(v)  # raises for an unknown name or a non-callable
    if isinstance(v, str):
        return str(v)
    try:
        hash(v)
    except TypeError:
        raise TypeError(f"activation {_short(v)} must be hashable (it keys the kernels)") from None
    return v


def _init(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"init values must be initializer names, got {type(v).__name__} {v!r}")
    if v not in initializer_names():
        raise ValueError(f"unknown init {v!r}; valid names: {', '.join(initializer_names())}")
    return str(v)


def _dtype(v: Any) -> str:
    valid = SweepSpec.DTYPES
    if isinstance(v, (bool, np.bool_)) or v is None:
        raise TypeError(f"dtype values must be dtype names ({', '.join(valid)}), got {v!r}")
    if isinstance(v, str):
        name = v
    else:
        try:
            name = jnp.dtype(v).name
        except TypeError:
            raise TypeError(
                f"dtype values must be dtype names ({', '.join(valid)}), got "
                f"{type(v).__name__} {_short(v)}"
            ) from None
    if name not in valid:
        raise ValueError(f"unsupported dtype {v!r}; valid: {', '.join(valid)}")
    return str(name)


def _layer_slots(depth: int) -> int:
    """Slots of the ``layer`` axis a depth-``depth`` net fills: the input (layer 0), ``depth``
    hidden layers and the readout (layer ``depth + 1``), as in :func:`stabkit.trace`."""
    return depth + 2


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What to sweep: the product of the axes, each a value or a sequence of distinct values.

    Numeric axes (depth, width, scale, bias_std, seed) are stored sorted; activation, init and
    dtype keep their order. Everything is validated here, before anything compiles.

    A value may be a Python or NumPy scalar or a 0-d array; a sequence a list, tuple, range or
    1-d array (dicts and sets are refused: an axis is ordered; so are generators, nested
    sequences, strings or bools where numbers belong). Values of an axis must be distinct (they
    are the dataset's coordinates). Sizes are bounded: at most :data:`MAX_AXIS_LENGTH` values an
    axis, :data:`MAX_CONFIGS` configs, and the layer buffers of two configs (the smallest chunk)
    must fit in memory. Below float64 the weight multipliers and bias stds must be finite in
    float32 (the kernel scales in float32). Activation callables are traced (never compiled) in
    every dtype of the sweep and must keep shape and dtype.

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
        saturation_threshold: a unit is saturated where ``|phi'(z)|`` is below it; in [0, 1].

    Raises:
        ValueError: an empty or too long axis, a repeated value, depth < 1, an unknown name, a
            NaN/inf or out-of-range number, too many configs, layer buffers beyond memory.
        TypeError: a value of the wrong type (a string, bool, dict, set, generator, ...).

    Examples:
        >>> s = SweepSpec(depth=[8, 4], activation=["relu", "tanh"], scale=[1.0, 0.5], seed=2)
        >>> s.depth, s.scale, s.n_configs
        ((4, 8), (0.5, 1.0), 8)
        >>> SweepSpec(depth=[0])
        Traceback (most recent call last):
        ...
        ValueError: depth values must be in [1, 4096], got 0
    """

    #: The dtypes a sweep runs in: the 16-, 32- and 64-bit formats of
    #: :data:`stabkit.SUPPORTED_DTYPES` (the kernel reads 16, 32 and 64-bit patterns and computes in
    #: float32 at least), not float8.
    DTYPES: ClassVar[tuple[str, ...]] = tuple(
        n for n in SUPPORTED_DTYPES if not n.startswith("float8")
    )
    #: The input distributions (``input``).
    INPUTS: ClassVar[tuple[str, ...]] = ("normal", "uniform", "ones")

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
        fix("depth", tuple(sorted(_axis(self.depth, "depth", int_values("depth", 1, 4096)))))
        fix("width", tuple(sorted(_axis(self.width, "width", int_values("width", 1, 8192)))))
        fix("activation", _axis(self.activation, "activation", _activation))
        fix("init", _axis(self.init, "init", _init))
        fix("scale", tuple(sorted(_axis(self.scale, "scale", real_values("scale", False)))))
        fix(
            "bias_std",
            tuple(sorted(_axis(self.bias_std, "bias_std", real_values("bias_std", True)))),
        )
        fix("dtype", _axis(self.dtype, "dtype", _dtype))
        fix("seed", tuple(sorted(_axis(self.seed, "seed", int_values("seed", 0)))))
        if self.n_configs > MAX_CONFIGS:
            lengths = ", ".join(f"{a} {n}" for a, n in zip(_AXES, self.shape, strict=True))
            raise ValueError(
                f"the spec has {self.n_configs} configs ({lengths}), more than the {MAX_CONFIGS} "
                "a sweep may hold (configs are indexed with int32)"
            )
        if not is_scalar(self.batch) or isinstance(self.batch, str):
            raise TypeError(
                f"batch must be an int, got {type(self.batch).__name__} {_short(self.batch)}"
            )
        fix("batch", int_values("batch", 1, 2**20)(self.batch))
        fix("input", choice(self.input, "input", self.choices("input")))
        fix("loss", choice(self.loss, "loss", self.choices("loss")))
        if not is_scalar(self.saturation_threshold) or callable(self.saturation_threshold):
            raise TypeError(
                "saturation_threshold must be a number in [0, 1], got "
                f"{type(self.saturation_threshold).__name__} {_short(self.saturation_threshold)}"
            )
        # |phi'(z)| below it counts as saturated: above 1 every tanh or sigmoid unit would be.
        threshold = real_values("saturation_threshold", True, 1.0)(self.saturation_threshold)
        fix("saturation_threshold", threshold)
        if self.batch * max(self.width) > 2**24:
            raise ValueError(
                f"batch * width = {self.batch * max(self.width)} exceeds 2^24: census counts would "
                "not be exact in float32"
            )
        self._check_sizes()
        self._check_ranges()
        self._check_callables()

    def _check_sizes(self) -> None:
        """The layer buffers of the smallest chunk (two configs) must fit in memory at all."""
        dtype = max(self.dtype, key=lambda d: jnp.dtype(d).itemsize)
        item = jnp.dtype(dtype).itemsize
        depth, width = max(self.depth), max(self.width)
        need = _MIN_CHUNK * self.config_bytes(dtype, width)
        limit = memory_limit()
        if need > limit:
            raise ValueError(
                f"depth={depth}, batch={self.batch}, width={width} ({item}-byte dtype) needs about "
                f"{format_bytes(need)} for the layer buffers of the {_MIN_CHUNK} configs a sweep "
                f"kernel holds at least ({depth} layers x {self.batch} x {width}, h and phi'(z)), "
                f"more than the {format_bytes(limit)} available"
            )

    def _check_ranges(self) -> None:
        """Weight multipliers and bias stds must be finite in the dtype the kernel scales in.

        Below float64 the kernel scales its unit draws in float32: a multiplier beyond float32's
        range would silently become inf (and 0 * inf = NaN where a draw is exactly 0)."""
        if all(d == "float64" for d in self.dtype):
            return
        from stabkit.sweeps.kernel import _multiplier  # (it imports this module)

        big = float(jnp.finfo(jnp.float32).max)
        for v in (max(self.scale), min(self.scale)):
            for init in self.init:
                for width in self.width:
                    m = _multiplier(init, v, width)
                    if not abs(m) <= big:
                        raise ValueError(
                            f"scale={v!r} gives init {init!r} (width {width}) the multiplier "
                            f"{m:.4g}, beyond float32's range ({big:.4g}), in which "
                            f"{', '.join(d for d in self.dtype if d != 'float64')} sweeps scale "
                            "their weights; use dtype='float64' or a smaller scale"
                        )
        if max(self.bias_std) > big:
            raise ValueError(
                f"bias_std={max(self.bias_std)!r} is beyond float32's range ({big:.4g}), in "
                "which sweeps below float64 draw their biases"
            )

    def _check_callables(self) -> None:
        """Activation callables are traced (never compiled) in every dtype of the sweep."""
        for fn in self.activation:
            if isinstance(fn, str) or is_registered(fn):
                continue
            for dtype in self.dtype:
                x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
                with x64:
                    check_elementwise(fn, "activation", dtype, derivatives=1)

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's shape, in the dataset's axis order (dtype, width, ..., seed)."""
        return tuple(len(getattr(self, a)) for a in _AXES)

    @property
    def n_configs(self) -> int:
        return math.prod(self.shape)

    @property
    def n_layers(self) -> int:
        """Slots of the dataset's ``layer`` axis: input, hidden layers and readout of the
        deepest net (its depth + 2; shallower nets leave the slots above their readout NaN)."""
        return _layer_slots(max(self.depth))

    def config_bytes(self, dtype: str, width: int) -> int:
        """Device bytes one config of the sweep kernel for (``dtype``, ``width``) needs: every
        layer's h and phi'(z) at the deepest depth, the temporaries of a layer (z, h, phi',
        gradients and their float32 statistics) and the per-layer statistics (the estimate
        :func:`stabkit.sweep` plans its chunks by)."""
        act = self.batch * width
        depth = max(self.depth)
        itemsize = jnp.dtype(dtype).itemsize
        return depth * 2 * act * itemsize + 16 * act * 4 + 2 * 8 * self.n_layers * len(LAYER_VARS)

    @classmethod
    def choices(cls, field: str) -> tuple[str, ...]:
        """The names a field given by name accepts: ``activation`` (the registered ones; a
        callable is accepted too), ``init``, ``dtype``, ``input`` or ``loss``.

        Examples:
            >>> SweepSpec.choices("input")
            ('normal', 'uniform', 'ones')
        """
        if field == "activation":
            return tuple(activation_names())
        if field == "init":
            return tuple(initializer_names())
        if field == "loss":
            return tuple(loss_names())
        if field == "dtype":
            return cls.DTYPES
        if field == "input":
            return cls.INPUTS
        raise ValueError(
            f"unknown field {field!r}; the fields given by name: activation, init, dtype, input, "
            "loss"
        )

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
        if not isinstance(d, Mapping):
            raise TypeError(f"from_dict needs a dict (from to_dict), got {type(d).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in fields)
        if unknown:
            raise ValueError(f"unknown SweepSpec field(s) {unknown}; valid: {', '.join(fields)}")
        if "depth" not in d:
            raise ValueError("the spec has no depth (the one field without a default)")
        return cls(**d)

    @classmethod
    def from_dataset(cls, ds, activations: Mapping[str, Callable] | None = None) -> SweepSpec:
        """The spec of a sweep dataset (:func:`stabkit.sweep`, :func:`stabkit.load`), rebuilt
        from its ``spec`` attribute (the JSON of :meth:`to_dict`) and validated again.

        A selection (``ds.sel(...)``) keeps the whole sweep's spec. A dataset names its
        activations: callables that are not registered must be given again as ``activations``
        (name -> callable; a callable whose ``__name__`` differs is wrapped under the name).

        Raises:
            TypeError: ``ds`` is not an ``xarray.Dataset``; ``activations`` is not a dict from
                names to callables.
            ValueError: the attribute is missing, unreadable or lacks a field; an activation is
                neither registered nor in ``activations``; the spec is not valid here.

        Examples:
            >>> import xarray as xr
            >>> s = SweepSpec(depth=[2, 3], width=4, batch=2)
            >>> SweepSpec.from_dataset(xr.Dataset(attrs={"spec": _spec_json(s.to_dict())})) == s
            True
        """
        import xarray as xr

        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"from_dataset needs an xarray.Dataset, got {type(ds).__name__}")
        if activations is None:
            activations = {}
        if not isinstance(activations, Mapping) or not all(isinstance(a, str) for a in activations):
            raise TypeError(
                "activations must be a dict from activation names to callables, got "
                f"{_short(activations)}"
            )
        try:
            d = json.loads(ds.attrs["spec"])
        except (KeyError, TypeError, ValueError):
            d = None
        if not isinstance(d, dict):
            raise ValueError(
                "the dataset's 'spec' attribute is missing or unreadable (a dataset from "
                "stabkit.sweep or stabkit.load holds its SweepSpec there)"
            )
        # The settings first: the axes are also the dataset's coordinates, these only the spec's.
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in (*(f for f in fields if f not in _AXES), *_AXES) if k not in d]
        if missing:
            raise ValueError(f"the dataset's 'spec' attribute lacks {', '.join(missing)}")
        names = d["activation"] if isinstance(d["activation"], list) else [d["activation"]]
        acts = []
        for name in names:
            if isinstance(name, str) and name in activations:
                fn = activations[name]
                try:
                    hash(fn)
                except TypeError:
                    raise TypeError(
                        f"activations[{name!r}] must be a hashable callable (it keys the "
                        f"kernels), got {_short(fn)}"
                    ) from None
                acts.append(fn if _name(fn) == name else _renamed(fn, name))
            elif isinstance(name, str) and name not in activation_names():
                raise ValueError(
                    f"activation {name!r} is not registered; pass activations={{{name!r}: "
                    "callable}"
                )
            else:
                acts.append(name)
        return cls.from_dict({**d, "activation": acts})


@functools.lru_cache(maxsize=64)
def _renamed(fn: Callable, name: str) -> Callable:
    """``fn`` under the name a dataset knows it by (a spec names its callables by __name__).

    One wrapper per (fn, name): the kernels are cached by activation, so a fresh wrapper each
    time the spec is rebuilt would compile them again."""

    def phi(x):
        return fn(x)

    phi.__name__ = phi.__qualname__ = name
    return phi


def _spec_json(d: Mapping[str, Any]) -> str:
    """The ``spec`` attribute of a sweep dataset: :meth:`SweepSpec.to_dict`'s dict as JSON
    (read back by :meth:`SweepSpec.from_dataset`)."""
    return json.dumps(d, sort_keys=True)
