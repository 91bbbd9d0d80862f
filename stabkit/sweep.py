"""Sweeps: thousands of network configurations as a few compiled kernels, as an xarray Dataset.

A :class:`SweepSpec` names the axes (depth, width, activation, init, scale, bias_std, dtype,
seed) and :func:`sweep` traces every configuration of their product, returning an
``xarray.Dataset`` with one dimension per axis plus ``layer`` (the per-layer statistics of
:func:`stabkit.trace`: forward and backward RMS, census counts, saturation, dead units) and the
per-config results (output RMS, loss, first inf/NaN/zero layer forward and backward).

How it is fast:

* **One compilation per (dtype, width).** Depth, scale, bias_std, seed, activation and init are
  data. The configs of one (dtype, width) are processed in chunks by one ``jit(shard_map(vmap))``
  kernel.
* **Little wasted arithmetic.** The configs are ordered (activation, init, depth, scale, bias_std,
  seed), so a chunk holds one activation and one init and a narrow range of depths. The forward
  and the (hand-written) backward pass are ``while_loop`` s whose trip count is the chunk's
  largest depth, a runtime value: a depth-4 chunk runs 4 layers, not 64. The activation and the
  initializer are ``lax.switch`` es on a per-chunk index, so only the chosen branch runs.
* **Cheap weights.** A layer's unit draw (normal, uniform, orthogonal or identity) is made inside
  the loop once per distinct seed in the chunk, not once per config, and scaled per config; the
  draws are kept for the backward pass. Every layer's activations live in a workspace donated from
  one call to the next.

Every config's network is exactly ``mlp_init(jax.random.key(seed), depth=depth, width=width,
init=init, scale=scale, bias_std=bias_std, dtype=dtype)`` (in_dim = out_dim = width) and its input
is ``x`` drawn from ``fold_in(key(seed), 2)`` (:func:`sweep_input`): its randomness comes from its
own seed and coordinates, never from its position, so the result is bit-identical whatever the
chunk size or the order of the axis values (devices: see below). Configs that differ only in
depth, scale, bias or activation share their unit draws (common random numbers: a depth-8 net is a
prefix of a depth-16 one), which makes depth x scale maps smooth.

Layers follow :func:`stabkit.trace`: layer 0 is the input, 1..depth the hidden layers,
``depth + 1`` the readout; layers beyond a config's ``depth + 1`` are NaN.

With ``out=``, finished chunks are written to a zarr store as they complete (zarr writes each
chunk file atomically, and a small progress file is replaced atomically after each chunk), so a
sweep killed at any point and rerun with ``resume=True`` finishes with an identical dataset, and
memory stays bounded by the chunk size. :func:`load` reads a store back (zarr arrays and JSON
attributes; no pickle).

Devices: each chunk's config axis is split over ``jax.devices()`` (``shard_map`` over a
one-axis mesh, no communication between devices), and results are bit-identical whatever the
device count. That needs care: XLA rewrites ``v / b`` (``b`` broadcast) as ``v * (1 / b)`` in
some programs and not in others (a program partitioned for several devices is simplified in
another order), so no statistic divides by a broadcast value; the RMS scales by an exact power of
two instead. Across hosts (``jax.distributed``) the mesh would span every host, but gathering
results to process 0 is not written yet: run one sweep per host on a slice of the grid instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stabkit.activations import get_activation, value_and_derivative
from stabkit.init import initializer_names
from stabkit.tracing import loss_names

__all__ = ["SweepSpec", "load", "sweep", "sweep_input"]

#: Counts how many times the sweep kernel has been traced (= compiled); tests read it.
_KERNEL_TRACES = 0

_DTYPES = ("float16", "bfloat16", "float32", "float64")
_INPUTS = ("normal", "uniform", "ones")
_AXES = ("dtype", "width", "activation", "init", "depth", "scale", "bias_std", "seed")
_PRECISION = jax.lax.Precision.HIGHEST
_FORMAT = 1  # on-disk layout version

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


# ---------------------------------------------------------------------------------------- kernel


def sweep_input(seed: int, batch: int, width: int, dtype: Any, kind: str = "normal") -> jax.Array:
    """The input batch ``(batch, width)`` every config with this seed sees (``fold_in(key, 2)``).

    Examples:
        >>> sweep_input(0, 2, 3, "float32", "ones")
        Array([[1., 1., 1.],
               [1., 1., 1.]], dtype=float32)
    """
    return _input(jax.random.key(seed), batch, width, jnp.dtype(dtype), kind)


def _input(key, batch, width, dtype, kind):
    sdt = jnp.promote_types(dtype, jnp.float32)
    k = jax.random.fold_in(key, 2)
    if kind == "normal":
        x = jax.random.normal(k, (batch, width), sdt)
    elif kind == "uniform":
        x = jax.random.uniform(k, (batch, width), sdt, -math.sqrt(3.0), math.sqrt(3.0))
    else:
        x = jnp.ones((batch, width), sdt)
    return x.astype(dtype)


# Every named initializer is a unit draw of one of these kinds times a multiplier, for a square
# (width, width) matrix: the multiplier is computed on the host exactly as stabkit.init does.
_KINDS = ("normal", "uniform", "orthogonal", "identity")
_INIT_KIND = {
    "gaussian": ("normal", lambda n: 1.0 / n),
    "lecun_normal": ("normal", lambda n: 1.0 / n),
    "he_normal": ("normal", lambda n: 2.0 / n),
    "glorot_normal": ("normal", lambda n: 2.0 / (n + n)),
    "xavier_normal": ("normal", lambda n: 2.0 / (n + n)),
    "lecun_uniform": ("uniform", lambda n: 1.0 / n),
    "he_uniform": ("uniform", lambda n: 2.0 / n),
    "glorot_uniform": ("uniform", lambda n: 2.0 / (n + n)),
    "xavier_uniform": ("uniform", lambda n: 2.0 / (n + n)),
    "standard": ("uniform", lambda n: 1.0 / (3.0 * n)),
    "orthogonal": ("orthogonal", None),
    "scaled_identity": ("identity", None),
}


def _multiplier(init: str, scale: float, width: int) -> float:
    """The factor stabkit.init applies to its unit draw (computed in the same float64 steps)."""
    kind, variance = _INIT_KIND[init]
    if kind == "normal":
        return scale * math.sqrt(variance(width))
    if kind == "uniform":
        return scale * math.sqrt(variance(width)) * math.sqrt(3.0)
    return scale


def _unit(kind: str, key: jax.Array, width: int, sdt: Any) -> jax.Array:
    """The unit draw of an initializer kind, as stabkit.init makes it before scaling."""
    if kind == "normal":
        return jax.random.normal(key, (width, width), sdt)
    if kind == "uniform":
        return jax.random.uniform(key, (width, width), sdt, minval=-1.0, maxval=1.0)
    if kind == "orthogonal":
        q, r = jnp.linalg.qr(jax.random.normal(key, (width, width), sdt))
        return q * jnp.sign(jnp.diagonal(r))
    return jnp.eye(width, dtype=sdt)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything the kernel is compiled for."""

    dtype: str
    width: int
    chunk: int
    n_seeds: int
    n_layers: int
    batch: int
    input: str
    loss: str
    activations: tuple
    kinds: tuple
    devices: tuple


def _chunk_fn(st: _Static) -> Callable:
    """The kernel body for one device's slice of a chunk, explicitly batched over configs.

    Per-chunk (replicated) arguments: activation index, init-kind index, trip count (the chunk's
    largest depth), saturation threshold and the table of the chunk's distinct seeds. Per-config
    (sharded) arguments: depth, multiplier, bias std and the index of the config's seed in the
    table. Unit weight draws are made once per (distinct seed, layer) and scaled per config.
    """
    dtype = jnp.dtype(st.dtype)
    sdt = jnp.promote_types(dtype, jnp.float32)
    w, batch, n_layers = st.width, st.batch, st.n_layers
    max_depth = n_layers - 2
    phis = [value_and_derivative(a) for a in st.activations]
    units = [functools.partial(_unit, k, width=w, sdt=sdt) for k in st.kinds]
    entries = batch * w
    nan = jnp.asarray(jnp.nan, sdt)

    def mm(spec, a, b):
        return jnp.einsum(spec, a, b, precision=_PRECISION)

    def absmax(v):
        return jnp.max(jnp.abs(v), axis=(1, 2)).astype(sdt)

    sinfo = jnp.finfo(sdt)
    s_uint = {32: jnp.uint32, 64: jnp.uint64}[8 * sdt.itemsize]
    s_bias = (1 << (sinfo.nexp - 1)) - 1

    def pow2(m):
        """Powers of two ``(2^-e, 2^e)`` with ``2^e <= m < 2^(e+1)`` (1 where m is 0 or not finite).

        Scaling by an exact power of two rounds nothing, so however XLA arranges the arithmetic
        (it rewrites ``v / b`` as ``v * (1 / b)`` in some programs and not in others, e.g. after
        the SPMD partitioner) the result is the same bit for bit. ``e`` is clamped two short of
        the exponent range so both factors are normal numbers.
        """
        e = (jax.lax.bitcast_convert_type(m, s_uint) >> sinfo.nmant).astype(jnp.int32) - s_bias
        e = jnp.where((m > 0) & jnp.isfinite(m), jnp.clip(e, 2 - s_bias, s_bias - 2), 0)
        down = jax.lax.bitcast_convert_type(((s_bias - e).astype(s_uint)) << sinfo.nmant, sdt)
        up = jax.lax.bitcast_convert_type(((s_bias + e).astype(s_uint)) << sinfo.nmant, sdt)
        return down, up

    def rms(v, m=None):
        """RMS over (batch, units) that cannot overflow; ``m``: max|v| if known.

        The entries are scaled by a power of two near 1/max|v| (exact), so the squares are at
        most 4 and the sum cannot overflow; a non-finite max leaves inf/NaN entries to show
        through. The statistics cost more than the matrix products on CPU, so each pass over the
        data counts: the max that post_max needs is reused here.
        """
        v = v.astype(sdt)
        m = absmax(v) if m is None else m
        down, up = pow2(m)
        return jnp.sqrt(jnp.mean(jnp.square(v * down[:, None, None]), axis=(1, 2))) * up

    # A scaled sum of squares within 2^+-window cannot have overflowed, and the squares flushed
    # to zero (below 2^-126 in float32) add up to less than 2^-52 of it: no pass for the max needed.
    window = sinfo.maxexp // 2 - 14

    def exponent(m):
        """e with 2^e <= m < 2^(e+1) for a positive normal ``m``."""
        return (jax.lax.bitcast_convert_type(m, s_uint) >> sinfo.nmant).astype(jnp.int32) - s_bias

    def factor(e):
        """2^e, exact, for e within the normal exponent range."""
        return jax.lax.bitcast_convert_type((s_bias + e).astype(s_uint) << sinfo.nmant, sdt)

    def rms_guess(v, e):
        """``(rms(v), exponent)``: one pass over ``v``, scaled by the guess ``2^-e`` per config.

        ``e`` is the exponent of the same statistic one layer before (a net's RMS changes by
        far less than 2^25 a layer). Where the scaled sum of squares leaves the window the guess
        was wrong, or an entry is inf/NaN, or every entry is 0: those configs take :func:`rms`
        (max, then sum), in a ``cond`` that runs only when a config of the chunk needs it. Either
        way the result depends on the config alone, never on its chunk-mates.
        """
        v = v.astype(sdt)
        e = jnp.clip(e, 2 - s_bias, s_bias - 2)
        ss = jnp.mean(jnp.square(v * factor(-e)[:, None, None]), axis=(1, 2))
        ok = (ss >= 2.0**-window) & (ss <= 2.0**window)
        r = jnp.where(ok, jnp.sqrt(ss) * factor(e), 0)
        r = jax.lax.cond(jnp.all(ok), lambda: r, lambda: jnp.where(ok, r, rms(v)))
        fine = (r > 0) & jnp.isfinite(r)
        return r, jnp.where(fine, exponent(jnp.where(fine, r, 1)), e)

    # Census by bit pattern (XLA:CPU reads float32 subnormals as 0 in comparisons): the magnitude
    # bits are 0 for zeros, below the smallest normal's for subnormals, those of inf for inf and
    # above for NaN. Two classes are packed in 16-bit halves of one int32 sum where the counts fit,
    # so four counts take two passes over the data instead of four.
    info = jnp.finfo(dtype)
    nbits = 8 * dtype.itemsize
    ubits = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[nbits]
    magnitude = (1 << (nbits - 1)) - 1
    inf_bits = ((1 << info.nexp) - 1) << info.nmant
    normal_bits = 1 << info.nmant
    packed = entries < 2**15
    i32 = jnp.int32

    def counts(v, prefix, finite=None):
        """The census of ``v``; ``finite``: per config, whether ``v`` is known to hold no inf or
        NaN (its RMS is finite): then the inf/NaN pass runs only if a chunk-mate needs it."""
        a = jax.lax.bitcast_convert_type(v, ubits) & magnitude
        zero, sub = a == 0, (a < normal_bits) & (a != 0)

        def nonfinite():
            if packed:
                inf, nan = (a == inf_bits).astype(i32), (a > inf_bits).astype(i32)
                hi = jnp.sum(inf | (nan << 16), axis=(1, 2), dtype=i32)
                return hi & 0xFFFF, hi >> 16
            return tuple(jnp.sum(c, axis=(1, 2), dtype=i32) for c in (a == inf_bits, a > inf_bits))

        if packed:
            lo = jnp.sum(zero.astype(i32) | (sub.astype(i32) << 16), axis=(1, 2), dtype=i32)
            zero, sub = lo & 0xFFFF, lo >> 16
        else:
            zero, sub = (jnp.sum(c, axis=(1, 2), dtype=i32) for c in (zero, sub))
        if finite is None:
            inf, nan = nonfinite()
        else:
            none = jnp.zeros(a.shape[0], i32)
            inf, nan = jax.lax.cond(jnp.all(finite), lambda: (none, none), nonfinite)
        return {
            f"{prefix}_subnormal": sub,
            f"{prefix}_zero": zero,
            f"{prefix}_inf": inf,
            f"{prefix}_nan": nan,
        }

    def dead(dphi):
        """Fraction of units whose phi' is exactly 0 (+0 or -0, by bit pattern) on every example."""
        a = jax.lax.bitcast_convert_type(dphi, ubits) & magnitude
        return jnp.mean(jnp.sum(a == 0, axis=1, dtype=jnp.int32) == batch, axis=1, dtype=sdt)

    def body(act, kind, trip, threshold, seeds, depth, mult, bias_std, sidx, hs, dps):
        global _KERNEL_TRACES
        _KERNEL_TRACES += 1
        c = depth.shape[0]
        keys = jax.vmap(jax.random.key)(seeds)
        wkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, 0)
        bkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
        xs = jax.vmap(lambda k: _input(k, batch, w, dtype, st.input))(keys)
        x = xs[sidx]
        cfg = jnp.arange(c)
        layers = jnp.arange(n_layers)

        def draw(layer):
            """Unit weights (seeds, w, w) and unit biases (seeds, w) of one layer."""
            lw = jax.vmap(jax.random.fold_in, (0, None))(wkeys, layer)
            lb = jax.vmap(jax.random.fold_in, (0, None))(bkeys, layer)
            uw = jax.lax.switch(kind, [jax.vmap(u) for u in units], lw)
            ub = jax.vmap(lambda k: jax.random.normal(k, (w,), sdt))(lb)
            return uw, ub

        def scaled(uw, ub):
            wt = (mult[:, None, None] * uw[sidx]).astype(dtype)
            # Zero biases are +0 exactly, as stabkit.init.zeros() makes them.
            b = jnp.where(bias_std[:, None] == 0, 0, bias_std[:, None] * ub[sidx]).astype(dtype)
            return wt, b

        def put(stats, layer, active, **vals):
            # Only active configs write: a config's readout (layer depth + 1) may sit inside a
            # deeper chunk-mate's loop range, and must not be overwritten there.
            out = dict(stats)
            for k, v in vals.items():
                row = jnp.where(active, v.astype(sdt), stats[k][layer])
                out[k] = jax.lax.dynamic_update_index_in_dim(stats[k], row, layer, 0)
            return out

        stats = {k: jnp.full((n_layers, c), nan) for k in LAYER_VARS}
        stats = put(
            stats, 0, True, pre_rms=rms(x), post_rms=rms(x), post_max=absmax(x), **counts(x, "post")
        )

        # Forward, layers 1..trip; configs shallower than the chunk's deepest pass through.
        def fwd(i, carry):
            h, hs, dps, uws, ubs, stats, (e_pre, e_dphi) = carry
            layer = i + 1
            active = layer <= depth
            uw, ub = draw(layer)
            wt, b = scaled(uw, ub)
            z = mm("cbi,cij->cbj", h, wt) + b[:, None, :]
            hn, dphi = jax.lax.switch(act, phis, z)
            hmax = absmax(hn)
            pre_rms, e_pre = rms_guess(z, e_pre)
            dphi_rms, e_dphi = rms_guess(dphi, e_dphi)
            stats = put(
                stats,
                layer,
                active,
                pre_rms=pre_rms,
                post_rms=rms(hn, hmax),
                post_max=hmax,
                dphi_rms=dphi_rms,
                saturated=jnp.mean(jnp.abs(dphi).astype(sdt) < threshold, axis=(1, 2), dtype=sdt),
                # By bit pattern: XLA on CPU reads subnormals as 0 in comparisons.
                dead=dead(dphi),
                **counts(hn, "post", jnp.isfinite(hmax)),
            )
            hs = jax.lax.dynamic_update_index_in_dim(hs, jnp.swapaxes(h, 1, 2), i, 0)
            dps = jax.lax.dynamic_update_index_in_dim(dps, dphi, i, 0)
            uws = jax.lax.dynamic_update_index_in_dim(uws, uw, i, 0)
            ubs = jax.lax.dynamic_update_index_in_dim(ubs, ub, i, 0)
            h = jnp.where(active[:, None, None], hn, h)
            return h, hs, dps, uws, ubs, stats, (e_pre, e_dphi)

        s = seeds.shape[0]
        e0 = jnp.zeros(c, jnp.int32)
        carry = (
            x,
            hs,
            dps,
            jnp.zeros((max_depth, s, w, w), sdt),
            jnp.zeros((max_depth, s, w), sdt),
        )
        h, hs, dps, uws, ubs, stats, _ = jax.lax.fori_loop(0, trip, fwd, (*carry, stats, (e0, e0)))
        w0, b0 = scaled(*draw(0))
        y = mm("cbi,cij->cbj", h, w0) + b0[:, None, :]
        yf = y.astype(sdt)
        if st.loss == "mse":
            loss = 0.5 * jnp.mean(jnp.square(yf), axis=(1, 2))
            gy = (yf * (1.0 / entries)).astype(dtype)
        else:
            loss = jnp.sum(yf, axis=(1, 2))
            gy = jnp.ones_like(y)
        top = depth + 1
        readout = {
            "pre_rms": rms(y),
            "post_rms": rms(y),
            "post_max": absmax(y),
            "grad_post_rms": rms(gy),
            "grad_pre_rms": rms(gy),
            "grad_w_rms": rms(mm("cbi,cbj->cij", h, gy)),
            **counts(y, "post"),
            **counts(gy, "grad"),
        }
        stats = {
            **stats,
            **{k: stats[k].at[top, cfg].set(v.astype(sdt)) for k, v in readout.items()},
        }
        g = mm("cbj,cij->cbi", gy, w0)

        # Backward by hand, layers trip..1: dL/dz = dL/dh * phi'(z), dL/dW = h_in^T dL/dz,
        # dL/dh_in = dL/dz W^T.
        def bwd(j, carry):
            g, stats, (e_post, e_pre, e_w) = carry
            i = trip - 1 - j
            layer = i + 1
            active = layer <= depth
            dphi = jax.lax.dynamic_index_in_dim(dps, i, 0, keepdims=False)
            h_in = jax.lax.dynamic_index_in_dim(hs, i, 0, keepdims=False)
            uw = jax.lax.dynamic_index_in_dim(uws, i, 0, keepdims=False)
            ub = jax.lax.dynamic_index_in_dim(ubs, i, 0, keepdims=False)
            wt, _ = scaled(uw, ub)
            gz = g * dphi
            grad_post_rms, e_post = rms_guess(g, e_post)
            grad_pre_rms, e_pre = rms_guess(gz, e_pre)
            grad_w_rms, e_w = rms_guess(mm("cib,cbj->cij", h_in, gz), e_w)
            stats = put(
                stats,
                layer,
                active,
                grad_post_rms=grad_post_rms,
                grad_pre_rms=grad_pre_rms,
                grad_w_rms=grad_w_rms,
                **counts(g, "grad", jnp.isfinite(grad_post_rms)),
            )
            g = jnp.where(active[:, None, None], mm("cbj,cij->cbi", gz, wt), g)
            return g, stats, (e_post, e_pre, e_w)

        e_g = exponent(jnp.maximum(readout["grad_post_rms"], sinfo.tiny))
        g, stats, _ = jax.lax.fori_loop(0, trip, bwd, (g, stats, (e_g, e_g, e_g)))
        stats = put(stats, 0, True, grad_post_rms=rms(g), grad_pre_rms=rms(g), **counts(g, "grad"))
        stats = {k: v.T for k, v in stats.items()}  # (config, layer)
        valid = layers[None, :] <= top[:, None]

        def first(mask):
            hit = jnp.min(jnp.where(mask & valid, layers, n_layers), axis=1)
            return jnp.where(hit >= n_layers, -1, hit).astype(jnp.int32)

        def last(mask):
            return jnp.max(jnp.where(mask & valid, layers, -1), axis=1).astype(jnp.int32)

        t = stats
        out_rms = t["post_rms"][cfg, top]
        out = dict(stats)
        out.update(
            output_rms=out_rms,
            loss=loss,
            output_gain=out_rms / t["post_rms"][:, 0],
            grad_ratio=t["grad_post_rms"][:, 0] / t["grad_post_rms"][cfg, top],
            first_inf_forward=first(t["post_inf"] > 0),
            first_nan_forward=first(t["post_nan"] > 0),
            first_nonfinite_forward=first((t["post_inf"] > 0) | (t["post_nan"] > 0)),
            first_zero_forward=first(t["post_zero"] == entries),
            first_inf_backward=last(t["grad_inf"] > 0),
            first_nan_backward=last(t["grad_nan"] > 0),
            first_nonfinite_backward=last((t["grad_inf"] > 0) | (t["grad_nan"] > 0)),
            first_zero_backward=last(t["grad_zero"] == entries),
        )
        return out, hs, dps

    return body


@functools.lru_cache(maxsize=64)
def _kernel(st: _Static) -> tuple[Callable, NamedSharding, NamedSharding, NamedSharding]:
    """``jit(shard_map(body))`` over the devices: each device runs its slice of the chunk."""
    mesh = Mesh(np.array(st.devices), ("config",))
    rep, cfg, buf = PartitionSpec(), PartitionSpec("config"), PartitionSpec(None, "config")
    sharded = jax.shard_map(
        _chunk_fn(st),
        mesh=mesh,
        in_specs=(rep,) * 5 + (cfg,) * 4 + (buf,) * 2,
        out_specs=(cfg, buf, buf),
        check_vma=False,
    )
    # The workspace (every layer's h and phi'(z)) is donated and handed back, so each call reuses
    # the last one's memory: a fresh buffer costs more to zero and fault in than to fill.
    kernel = jax.jit(sharded, donate_argnums=(9, 10))
    return kernel, NamedSharding(mesh, cfg), NamedSharding(mesh, rep), NamedSharding(mesh, buf)


# ---------------------------------------------------------------------------------------- driver


def _bytes_per_config(spec: SweepSpec, dtype: str, width: int) -> int:
    """Device memory one config of the chunk needs: its loop buffers, temporaries and stats."""
    item = jnp.dtype(dtype).itemsize
    act = spec.batch * width
    buffers = max(spec.depth) * 2 * act * item  # h and phi'(z) of every layer
    temporaries = 16 * act * 4  # z, h, phi', gradients and their float32 statistics copies
    return buffers + temporaries + 2 * 8 * spec.n_layers * len(LAYER_VARS)


def _plan_chunk(spec, dtype, width, block, ndev, chunk_size, memory_budget) -> int:
    """Configs per kernel call: the budget's worth, whole depth rows where possible."""
    per = _bytes_per_config(spec, dtype, width)
    # At least two configs a device: XLA compiles a batch of one differently (the batch dimension
    # is simplified away), which changes the rounding of the matrix products.
    if chunk_size is not None:
        return max(2 * ndev, -(-chunk_size // ndev) * ndev)
    chunk = min(1024 * ndev, memory_budget // per)
    if jax.devices()[0].platform == "cpu":
        # On CPU a layer's activations should stay in cache (about 2 MiB a device): measured, a
        # chunk of 224 width-64 configs runs 3x slower than one of 32.
        act = spec.batch * width * jnp.dtype(dtype).itemsize
        chunk = min(chunk, max(1, 2**21 // act) * ndev)
    if chunk < 2 * ndev:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is below the {2 * per * ndev} that two {dtype} "
            f"configs of width {width} and depth {max(spec.depth)} per device need"
        )
    # A chunk of whole depth rows (every scale, bias and seed of a few depths) wastes no layers
    # on a deeper row's last configs; the loop runs to the chunk's largest depth.
    row = block // len(spec.depth)
    if chunk >= row:
        chunk = chunk // row * row
    chunk = min(chunk, -(-block // ndev) * ndev)
    return max(2 * ndev, chunk // ndev * ndev)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("stabkit", "jax", "jaxlib", "numpy", "xarray", "zarr"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


def _probe_json() -> dict[str, Any]:
    from stabkit.precision import probe

    p = probe()
    return {
        "device": p.device,
        "platform": p.platform,
        "dtypes": {k: dict(v._asdict()) for k, v in p.dtypes.items()},
        "unsupported": dict(p.unsupported),
    }


def _meta(spec: SweepSpec) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "spec": spec.to_dict(),
        "versions": _versions(),
        "probe": _probe_json(),
        "devices": [str(d) for d in jax.devices()],
    }


def _stat_dtype(spec_dtypes: Sequence[str]) -> np.dtype:
    return np.dtype(np.float64 if "float64" in spec_dtypes else np.float32)


def _var_shape(name: str, n: int, n_layers: int) -> tuple[int, ...]:
    return (n, n_layers) if name in LAYER_VARS else (n,)


def _var_dtype(name: str, spec_dtypes: Sequence[str]) -> np.dtype:
    return np.dtype(np.int32) if name in _INT_VARS else _stat_dtype(spec_dtypes)


def _dataset(meta: dict[str, Any], flat: dict[str, np.ndarray]):
    """The N-D dataset from the flat (config-major) arrays, as sweep and load return it."""
    import xarray as xr

    d = meta["spec"]
    shape = tuple(len(d[a]) for a in _AXES)
    n_layers = max(d["depth"]) + 2
    coords = {a: list(d[a]) for a in _AXES}
    coords["layer"] = np.arange(n_layers)
    data = {}
    for name, desc in {**LAYER_VARS, **CONFIG_VARS}.items():
        a = flat[name]
        dims = (*_AXES, "layer") if name in LAYER_VARS else _AXES
        data[name] = (dims, a.reshape(shape + a.shape[1:]), {"description": desc})
    attrs = {k: json.dumps(meta[k], sort_keys=True) for k in ("spec", "versions", "probe")}
    attrs["devices"] = json.dumps(meta["devices"])
    attrs["stabkit_format"] = meta["format"]
    return xr.Dataset(data, coords=coords, attrs=attrs)


class _Progress:
    """A one-line progress bar on stderr: configs done, configs/s, ETA."""

    def __init__(self, total: int, enabled: bool, done: int = 0):
        self.total, self.done, self.enabled = total, done, enabled
        self.start, self.start_done, self.last = time.perf_counter(), done, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.2 and self.done < self.total):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        frac = self.done / self.total
        bar = "#" * int(30 * frac)
        sys.stderr.write(
            f"\rsweep {100 * frac:5.1f}% |{bar:<30}| {self.done}/{self.total} configs "
            f"{rate:8.1f} configs/s ETA {eta:6.1f}s"
        )
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class _Store:
    """The zarr store of a streamed sweep: flat config-major arrays and an atomic progress file."""

    def __init__(self, path, spec: SweepSpec, meta: dict, resume: bool, write: bool, rows: int):
        import zarr

        self.path, self.write, n = path, write, spec.n_configs
        progress = path / "progress.json"
        if path.exists() and resume and progress.exists():
            self.group = zarr.open_group(str(path), mode="r+" if write else "r")
            old = dict(self.group.attrs["stabkit"])
            if old["spec"] != meta["spec"]:
                raise ValueError(
                    f"{path} holds a different sweep ({old['spec']}); cannot resume {meta['spec']}"
                )
            self.done = json.loads(progress.read_text())["done"]
            return
        if path.exists() and any(path.iterdir()) and not resume:
            raise FileExistsError(f"{path} exists; pass resume=True to continue it, or remove it")
        self.done = 0
        if not write:
            return
        self.group = zarr.open_group(str(path), mode="w")
        self.group.attrs["stabkit"] = meta
        # A zarr chunk of a kernel chunk's rows: each write touches at most two zarr chunks.
        for name in {**LAYER_VARS, **CONFIG_VARS}:
            shape = _var_shape(name, n, spec.n_layers)
            dt = _var_dtype(name, spec.dtype)
            self.group.create_array(
                name,
                shape=shape,
                chunks=(min(rows, n), *shape[1:]),
                dtype=dt,
                fill_value=-1 if dt.kind == "i" else np.nan,
            )
        self._mark(0)

    def _mark(self, done: int) -> None:
        tmp = self.path / "progress.json.tmp"
        tmp.write_text(json.dumps({"done": done}))
        os.replace(tmp, self.path / "progress.json")  # atomic: the old or the new, never half
        self.done = done

    def put(self, start: int, results: dict[str, np.ndarray]) -> None:
        if self.write:
            stop = start + len(next(iter(results.values())))
            for name, a in results.items():
                self.group[name][start:stop] = a
            self._mark(stop)


def _work(spec: SweepSpec):
    """Per (dtype, width): the (flat start, activation, init) of each block of configs."""
    shape = spec.shape
    inner = shape[4:]  # depth, scale, bias_std, seed
    block = math.prod(inner)
    for di, dtype in enumerate(spec.dtype):
        for wi, width in enumerate(spec.width):
            blocks = []
            for ai in range(shape[2]):
                for ii in range(shape[3]):
                    start = int(np.ravel_multi_index((di, wi, ai, ii, 0, 0, 0, 0), shape))
                    blocks.append((start, ai, ii))
            yield dtype, width, block, blocks


def sweep(
    spec: SweepSpec,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = 2**30,
    progress: bool = True,
    load_result: bool = True,
):
    """Trace every configuration of ``spec``; one compiled kernel per (dtype, width).

    Args:
        spec: a :class:`SweepSpec`.
        out: a directory for a zarr store written chunk by chunk as the sweep runs; ``None``
            keeps everything in memory.
        resume: continue the store at ``out`` where it stopped (a killed sweep loses at most the
            chunk in flight). Without it an existing non-empty ``out`` is an error.
        chunk_size: configs per kernel call (rounded up to a multiple of the device count, at
            least two a device);
            default: as many as ``memory_budget`` allows, at most 1024. Results do not depend on
            it.
        memory_budget: bytes of device memory a chunk may use (its loop buffers and temporaries;
            the host holds one chunk's results at a time when ``out`` is given).
        progress: a progress bar (configs/s, ETA) on stderr.
        load_result: with ``out``, return the dataset read back (True) or only the path (False:
            a sweep larger than memory streams to disk without ever being held whole).

    Returns:
        An ``xarray.Dataset`` with dims ``dtype, width, activation, init, depth, scale, bias_std,
        seed`` (and ``layer`` for the per-layer variables); see :data:`LAYER_VARS` and
        :data:`CONFIG_VARS`. Attributes (JSON strings): ``spec``, ``versions``, ``probe`` (the
        backend's measured floating-point behaviour), ``devices``. With ``out``, the dataset read
        back by :func:`load` (or the path, see ``load_result``).

    Raises:
        TypeError: ``spec`` is not a :class:`SweepSpec`.
        FileExistsError: ``out`` exists and ``resume`` is False.
        ValueError: ``out`` holds a different sweep; a budget too small for one config.

    Examples:
        The note's net (width 2, :math:`W = aI`, zero biases, linear) in float16, two depths and
        two scales in one kernel: :math:`1.5^{28}` overflows at layer 28, and layer 29 computes
        :math:`1.5 \\cdot \\infty + 0 \\cdot \\infty` = NaN.

        >>> spec = SweepSpec(depth=[6, 40], init="scaled_identity", scale=[0.5, 1.5],
        ...                  activation="linear", dtype="float16", width=2, batch=1, input="ones")
        >>> ds = sweep(spec, progress=False).squeeze()
        >>> ds.output_rms.sel(depth=6).values.tolist()  # a ** (depth + 1), rounded to float16
        [0.0078, 17.09375]
        >>> ds.first_inf_forward.sel(scale=1.5).values, ds.first_nan_forward.sel(scale=1.5).values
        (array([-1, 28], dtype=int32), array([-1, 29], dtype=int32))
    """
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    if chunk_size is not None:
        chunk_size = _int("chunk_size", 1)(chunk_size)
    memory_budget = _int("memory_budget", 1, 2**62)(memory_budget)
    n, n_layers = spec.n_configs, spec.n_layers
    meta = _meta(spec)
    devices = tuple(jax.devices())
    ndev = len(devices)
    store = None
    if out is not None:
        rows = max(
            _plan_chunk(spec, dt, w, block, ndev, chunk_size, memory_budget)
            for dt, w, block, _ in _work(spec)
        )
        store = _Store(pathlib.Path(out), spec, meta, resume, jax.process_index() == 0, rows)
        flat = None
    else:
        flat = {
            k: np.full(
                _var_shape(k, n, n_layers),
                -1 if k in _INT_VARS else np.nan,
                _var_dtype(k, spec.dtype),
            )
            for k in {**LAYER_VARS, **CONFIG_VARS}
        }
    done = store.done if store is not None else 0
    bar = _Progress(n, progress, done)
    inner = spec.shape[4:]
    acts = tuple(spec.activation)

    def finish(pending):
        start, count, res = pending
        host = {k: np.asarray(v)[:count].astype(_var_dtype(k, spec.dtype)) for k, v in res.items()}
        if store is not None:
            store.put(start, host)
        else:
            for k, v in host.items():
                flat[k][start : start + count] = v
        bar.update(count)

    for dtype, width, block, blocks in _work(spec):
        chunk = _plan_chunk(spec, dtype, width, block, ndev, chunk_size, memory_budget)
        kinds = tuple(dict.fromkeys(_INIT_KIND[i][0] for i in spec.init))
        n_seeds = min(len(spec.seed), chunk)
        st = _Static(
            dtype,
            width,
            chunk,
            n_seeds,
            n_layers,
            spec.batch,
            spec.input,
            spec.loss,
            acts,
            kinds,
            devices,
        )
        todo = [
            (start + s, ai, ii, s)
            for start, ai, ii in blocks
            for s in range(0, block, chunk)
            if start + min(s + chunk, block) > done
        ]
        if not todo:
            continue
        x64 = jax.enable_x64(True) if dtype == "float64" else _null()
        with x64:
            kernel, cfg_sharding, rep_sharding, buf_sharding = _kernel(st)
            shape = (n_layers - 2, chunk, spec.batch, width)
            tshape = (n_layers - 2, chunk, width, spec.batch)
            work = [jnp.zeros(sh, dtype, device=buf_sharding) for sh in (tshape, shape)]
            sdt = np.dtype(np.float64 if dtype == "float64" else np.float32)
            pending = None
            for flat_start, ai, ii, s in todo:
                idx = np.arange(s, s + chunk).clip(max=block - 1)  # pad with the last config
                count = min(chunk, block - s)
                di, si, bi, ki = np.unravel_index(idx, inner)
                depth = np.asarray(spec.depth, np.int32)[di]
                init = spec.init[ii]
                mult = np.asarray([_multiplier(init, v, width) for v in spec.scale], sdt)[si]
                table, sidx = np.unique(ki, return_inverse=True)
                table = np.asarray(spec.seed, np.uint32)[table]
                table = np.concatenate([table, np.full(n_seeds - len(table), table[0], np.uint32)])
                rep = functools.partial(jax.device_put, device=rep_sharding)
                cfg = functools.partial(jax.device_put, device=cfg_sharding)
                args = [
                    rep(np.int32(ai)),
                    rep(np.int32(kinds.index(_INIT_KIND[init][0]))),
                    rep(np.int32(depth.max())),
                    rep(sdt.type(spec.saturation_threshold)),
                    rep(table),
                    cfg(depth),
                    cfg(mult),
                    cfg(np.asarray(spec.bias_std, sdt)[bi]),
                    cfg(sidx.astype(np.int32)),
                ]
                # Dispatched asynchronously: the host copies the last chunk's results meanwhile.
                res, *work = kernel(*args, *work)
                if pending is not None:
                    finish(pending)
                pending = (flat_start, count, res)
            finish(pending)
    if store is not None:
        return load(out) if load_result else pathlib.Path(out)
    return _dataset(meta, flat)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load(path: str | os.PathLike):
    """Read a sweep written by ``sweep(spec, out=path)`` back as the same ``xarray.Dataset``.

    Reads zarr arrays and JSON attributes only (never pickle).

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: the sweep is incomplete (rerun it with ``resume=True``) or of an unknown format.
    """
    import zarr

    path = pathlib.Path(path)
    if not (path / "progress.json").exists():
        raise FileNotFoundError(f"no stabkit sweep at {path}")
    group = zarr.open_group(str(path), mode="r")
    meta = dict(group.attrs["stabkit"])
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')}, this stabkit reads {_FORMAT}")
    n = math.prod(len(meta["spec"][a]) for a in _AXES)
    done = json.loads((path / "progress.json").read_text())["done"]
    if done < n:
        raise ValueError(
            f"{path} is incomplete ({done} of {n} configs); rerun sweep(..., resume=True)"
        )
    flat = {k: np.asarray(group[k][:]) for k in {**LAYER_VARS, **CONFIG_VARS}}
    return _dataset(meta, flat)
