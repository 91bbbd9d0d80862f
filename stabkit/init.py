"""Weight and bias initializers as ``jax.nn.initializers`` define them: ``init(key, shape, dtype)``.

The note's first cause of exploding and vanishing signals is the initial weights: with
:math:`W = aI` every layer multiplies the signal by :math:`a`, so :math:`a = 1.5` explodes as
:math:`1.5^{l}` and :math:`a = 0.5` vanishes as :math:`0.5^{l}`. The random initializers below set
the weight variance from the fan-in (and fan-out) so that a chosen activation keeps the signal's
scale: LeCun (variance :math:`1/n_{in}`, for tanh/selu), Glorot/Xavier (:math:`2/(n_{in}+n_{out})`,
for tanh/sigmoid), He (:math:`2/n_{in}`, for relu), and an orthogonal matrix (all singular values
equal to the gain).

Every factory takes one multiplier (``a``, ``sigma_w`` or ``gain``) and returns
``init(key, shape, dtype)``. A weight matrix has shape ``(fan_in, fan_out)`` (a layer computes
``h @ W``); bias initializers accept any shape. Samples are drawn in float32 (float64 for float64),
scaled, and rounded once to ``dtype`` (the float8 formats included). ``dtype`` is one of
:data:`stabkit.SUPPORTED_DTYPES`; float64 needs x64 (``with jax.enable_x64(True):``) and is refused
without it, since JAX would silently make float32. Shapes are bounded by memory before drawing.
The multiplier may be a traced scalar (under ``jit`` or ``vmap``), in which case it is not
validated; the result is then ``multiplier * unit draw``.

Unlike ``jax.nn.initializers.he_normal`` and friends (a truncated normal rescaled to the same
variance), the ``*_normal`` initializers here draw a plain normal, so the variances below hold
exactly in distribution.

Names (:func:`initializer_names`) and what the multiplier means:

==================  ==========  ==========================================================
name                multiplier  distribution of each entry (``n`` = fan_in, ``m`` = fan_out)
==================  ==========  ==========================================================
``scaled_identity`` ``a``       ``a`` on the diagonal, 0 elsewhere (rectangular: scaled eye)
``gaussian``        ``sigma_w`` :math:`N(0, \\sigma_w^2 / n)`
``orthogonal``      ``gain``    ``gain`` times a Haar-random matrix with orthonormal rows/cols
``glorot_normal``   ``gain``    :math:`N(0, g^2 \\cdot 2/(n+m))`; alias ``xavier_normal``
``glorot_uniform``  ``gain``    :math:`U[\\pm g\\sqrt{6/(n+m)}]`; alias ``xavier_uniform``
``he_normal``       ``gain``    :math:`N(0, g^2 \\cdot 2/n)`
``he_uniform``      ``gain``    :math:`U[\\pm g\\sqrt{6/n}]`
``lecun_normal``    ``gain``    :math:`N(0, g^2/n)`
``lecun_uniform``   ``gain``    :math:`U[\\pm g\\sqrt{3/n}]`
``standard``        ``gain``    :math:`U[\\pm g/\\sqrt{n}]`, variance :math:`g^2/(3n)`
==================  ==========  ==========================================================

References:
    X. Glorot and Y. Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010 (eq. 1: the "standard" initialization; eq. 16: normalized/Xavier).
    K. He et al., "Delving Deep into Rectifiers", ICCV 2015 (sec. 2.2). A. Saxe et al., "Exact
    solutions to the nonlinear dynamics of learning in deep linear neural networks", ICLR 2014
    (orthogonal initialization).

One file (about 520 lines) on purpose: the table of initializers and their variance rules
(``init_rule``, which the sweep kernel and the theory read), their samplers and the argument checks
they share.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from stabkit._checks import check_memory, finite_float, is_floating_dtype
from stabkit._numerics import compute_dtype
from stabkit.precision import SUPPORTED_DTYPES

__all__ = [
    "InitRule",
    "Initializer",
    "bias_normal",
    "get_initializer",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "init_rule",
    "initializer_names",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
    "scaled_draw",
    "scaled_draws",
    "scaled_identity",
    "standard",
    "zeros",
]

Initializer = Callable[..., jax.Array]


# ---------------------------------------------------------------------------------------- helpers


def _multiplier(value: Any, name: str, *, nonnegative: bool) -> Any:
    """A finite float, or a traced scalar passed through unchecked (a sweep's data)."""
    if isinstance(value, jax.core.Tracer):
        return value
    out = finite_float(value, name)
    if nonnegative and out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def x64_enabled() -> bool:
    """Whether JAX makes float64 arrays here (``jax_enable_x64``, or inside ``enable_x64``)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


def _dtype(dtype: Any, name: str = "dtype") -> jnp.dtype:
    """``dtype`` as a JAX dtype a network can hold: one of :data:`stabkit.SUPPORTED_DTYPES`.

    float64 needs x64: without it JAX silently makes float32 arrays, so a float64 request would
    come back as float32 (or fail later, blaming whatever first noticed). It is refused here with
    the reason instead; stabkit never flips the global flag itself.
    """
    valid = ", ".join(SUPPORTED_DTYPES)
    if dtype is None:  # jnp.dtype(None) is the default float: a missing dtype is not a dtype
        raise TypeError(f"{name} must be a floating-point dtype, got None; valid: {valid}")
    if not is_floating_dtype(dtype):
        raise TypeError(f"{name} must be a floating-point dtype, got {dtype!r}; valid: {valid}")
    out = jnp.dtype(dtype)
    if out.name not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}={out.name} is not supported; valid: {valid}")
    if out == jnp.float64 and not x64_enabled():
        raise ValueError(
            f"{name}=float64 needs x64: run inside `with jax.enable_x64(True):` or set "
            "jax_enable_x64 (without it JAX makes float32 arrays)"
        )
    return out


def check_key(key: Any, name: str = "key") -> None:
    """Raise ``TypeError`` unless ``key`` is one PRNG key (typed, or legacy ``uint32[2]``)."""
    if isinstance(key, jax.Array) and (
        (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return
    shape = getattr(key, "shape", None)
    raise TypeError(
        f"{name} must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got "
        f"{type(key).__name__}{'' if shape is None else f' of shape {tuple(shape)}'} {key!r}"
    )


def _dims(shape: Any, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of Python ints (NumPy integers accepted); TypeError otherwise."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(
            f"shape must be a tuple of ints for {what}, got {type(shape).__name__} {shape!r}"
        )
    dims = []
    for s in shape:
        if isinstance(s, (bool, np.bool_)):
            raise TypeError(f"shape must hold ints, got the bool {s!r} in {tuple(shape)!r}")
        try:
            dims.append(operator.index(s))
        except TypeError:
            raise TypeError(
                f"shape must hold ints for {what}, got {type(s).__name__} {s!r} in {tuple(shape)!r}"
            ) from None
    return tuple(dims)


def _check_size(dims: tuple[int, ...], dtype: jnp.dtype) -> None:
    """Bound the memory a draw of ``dims`` takes: the sample, its scaled copy and the result."""
    per_entry = 2 * compute_dtype(dtype).itemsize + dtype.itemsize
    check_memory(math.prod(dims) * per_entry, "shape", dims, f"a {dtype.name} draw")


def _matrix_shape(shape: Sequence[int], dtype: jnp.dtype) -> tuple[int, int]:
    dims = _dims(shape, "a weight matrix")
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(
            f"a weight initializer needs a 2-D shape (fan_in, fan_out) of positive ints, got "
            f"{dims!r}"
        )
    _check_size(dims, dtype)
    return dims


def _bias_shape(shape: Any, dtype: jnp.dtype) -> tuple[int, ...]:
    dims = _dims(shape, "a bias")
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must hold non-negative ints, got {dims!r}")
    _check_size(dims, dtype)
    return dims


# The samplers draw in compute_dtype (float32, float64 for float64) and round once: sampling
# directly in float16 would quantize the uniform bits and the normal's tails before scaling.
def _normal(key, shape, dtype, std):
    sdt = compute_dtype(dtype)
    return (std * jax.random.normal(key, shape, sdt)).astype(dtype)


def _uniform(key, shape, dtype, limit):
    sdt = compute_dtype(dtype)
    return (limit * jax.random.uniform(key, shape, sdt, minval=-1.0, maxval=1.0)).astype(dtype)


def _fan_init(param: str, value: Any, name: str):
    """An init drawing N(0, v) or U with variance v, v = value^2 * variance(fan_in, fan_out)."""
    mult = _multiplier(value, param, nonnegative=True)
    kind, variance = _INITIALIZERS[name].rule

    def init(key, shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        dtype = _dtype(dtype)
        n, m = _matrix_shape(shape, dtype)
        check_key(key)
        std = mult * math.sqrt(variance(n, m))
        if kind == "normal":
            return _normal(key, (n, m), dtype, std)
        return _uniform(key, (n, m), dtype, std * math.sqrt(3.0))  # U[-L, L] has variance L^2/3

    return init


# ---------------------------------------------------------------------------------------- rules


class InitRule(NamedTuple):
    """What a named initializer draws, per unit multiplier (see :func:`init_rule`).

    Attributes:
        distribution: ``"normal"``, ``"uniform"`` (entries of the stated variance), ``"orthogonal"``
            (singular values all equal to the multiplier) or ``"identity"`` (deterministic).
        variance: ``variance(fan_in, fan_out)``, the variance of each entry at multiplier 1, for
            ``normal`` and ``uniform``; ``None`` otherwise. It is homogeneous of degree -1, so
            ``variance(1, 1)`` is the mean-field :math:`\\sigma_w^2` of a square layer.
    """

    distribution: str
    variance: Callable[[int, int], float] | None


def init_rule(name: str) -> InitRule:
    """The distribution and entry variance of a named initializer (the one table every sampler,
    the sweep engine and the mean-field predictions read).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: an unknown name (the message lists the valid ones).

    Examples:
        >>> r = init_rule("he_uniform")
        >>> r.distribution, r.variance(100, 50)
        ('uniform', 0.02)
        >>> init_rule("orthogonal").variance is None
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"init must be an initializer name, got {type(name).__name__} {name!r}")
    if name not in _INITIALIZERS:
        raise ValueError(f"unknown init {name!r}; valid names: {', '.join(sorted(_INITIALIZERS))}")
    return _INITIALIZERS[name].rule


def scaled_draw(
    key: jax.Array, shape: Sequence[int], dtype: DTypeLike, *, init: str, scale: Any = 1.0
) -> jax.Array:
    """The named initializer ``init``'s draw of ``shape`` with a multiplier that may be traced.

    One home for "a unit draw times a multiplier" (the network blocks and the sweep use it): the
    entries are the same as ``get_initializer(init, scale)(key, shape, dtype)`` for a matrix, but
    ``scale`` may be a traced scalar (a sweep's or a training grid's data). For ``shape`` of rank
    above 2 (a convolution kernel ``(*window, fan_in, fan_out)``), the fans are
    ``prod(window) * shape[-2]`` and ``prod(window) * shape[-1]``, as in ``jax.nn.initializers``;
    ``orthogonal`` and ``scaled_identity`` then apply to the last two axes at every window offset.

    Args:
        key: a PRNG key.
        shape: the array's shape, rank >= 2.
        dtype: the result's floating dtype (drawn in :func:`stabkit._numerics.compute_dtype` and
            rounded once).
        init: a name from :func:`initializer_names`.
        scale: the multiplier (``sigma_w``, ``gain`` or ``a``); a float or a traced scalar.

    Examples:
        >>> w = scaled_draw(jax.random.key(0), (4, 4), jnp.float32, init="orthogonal", scale=2.0)
        >>> bool(jnp.allclose(w.T @ w, 4 * jnp.eye(4), atol=1e-5))
        True
    """
    kind, variance = init_rule(init)
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must have rank >= 2 and positive sizes, got {shape}")
    dtype = _dtype(dtype)
    sdt = compute_dtype(dtype)
    window = math.prod(shape[:-2])
    n, m = shape[-2], shape[-1]
    if kind == "normal":
        unit = jax.random.normal(key, shape, sdt) * math.sqrt(variance(window * n, window * m))
    elif kind == "uniform":
        limit = math.sqrt(3.0 * variance(window * n, window * m))
        unit = limit * jax.random.uniform(key, shape, sdt, minval=-1.0, maxval=1.0)
    elif kind == "orthogonal":
        tall = (max(n, m), min(n, m))
        a = jax.random.normal(key, (window, *tall), sdt)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
        unit = (q if n >= m else jnp.swapaxes(q, -1, -2)).reshape(shape)
    else:
        unit = jnp.broadcast_to(jnp.eye(n, m, dtype=sdt), shape)
    return (jnp.asarray(scale, sdt) * unit).astype(dtype)


def scaled_draws(
    key: jax.Array,
    shapes: Sequence[Sequence[int]],
    dtype: DTypeLike,
    *,
    init: str,
    scale: Any = 1.0,
) -> list[jax.Array]:
    """:func:`scaled_draw` of several shapes from one key, in one random-number call.

    Each random-number call site costs XLA about a quarter of a second to compile on CPU (a
    block's four weight matrices drawn apart took 2.5 s, together 0.8 s), so a block draws all of
    its weights at once: for the ``normal`` and ``uniform`` initializers one flat draw is split and
    each piece scaled by its own fans; ``orthogonal`` and ``scaled_identity`` draw each shape from
    ``fold_in(key, i)``.

    Examples:
        >>> a, b = scaled_draws(jax.random.key(0), [(4, 8), (8, 2)], jnp.float32, init="gaussian")
        >>> a.shape, b.shape
        ((4, 8), (8, 2))
    """
    kind, variance = init_rule(init)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if kind not in ("normal", "uniform") or len(shapes) == 1:
        if len(shapes) == 1:
            return [scaled_draw(key, shapes[0], dtype, init=init, scale=scale)]
        return [
            scaled_draw(jax.random.fold_in(key, i), s, dtype, init=init, scale=scale)
            for i, s in enumerate(shapes)
        ]
    for s in shapes:
        if len(s) < 2 or min(s) < 1:
            raise ValueError(f"shape must have rank >= 2 and positive sizes, got {s}")
    dtype = _dtype(dtype)
    sdt = compute_dtype(dtype)
    sizes = [math.prod(s) for s in shapes]
    if kind == "normal":
        flat = jax.random.normal(key, (sum(sizes),), sdt)
    else:
        flat = jax.random.uniform(key, (sum(sizes),), sdt, minval=-1.0, maxval=1.0)
    out, start = [], 0
    for s, n in zip(shapes, sizes, strict=True):
        window = math.prod(s[:-2])
        std = math.sqrt(variance(window * s[-2], window * s[-1]))
        mult = std if kind == "normal" else std * math.sqrt(3.0)
        piece = flat[start : start + n].reshape(s) * mult
        out.append((jnp.asarray(scale, sdt) * piece).astype(dtype))
        start += n
    return out


# ----------------------------------------------------------------------------------- initializers


def scaled_identity(a: float = 1.0) -> Initializer:
    """``W = a I``: the note's example (``a`` = 1.5 explodes, 0.5 vanishes); rectangular: ``a`` eye.

    The key is ignored: the matrix is deterministic.

    Args:
        a: the diagonal value, any finite real (or a traced scalar).

    Examples:
        >>> scaled_identity(1.5)(jax.random.key(0), (2, 3), jnp.float16)
        Array([[1.5, 0. , 0. ],
               [0. , 1.5, 0. ]], dtype=float16)
    """
    a = _multiplier(a, "a", nonnegative=False)

    def init(key, shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        del key  # deterministic
        dtype = _dtype(dtype)
        n, m = _matrix_shape(shape, dtype)
        return (a * jnp.eye(n, m, dtype=compute_dtype(dtype))).astype(dtype)

    return init


def gaussian(sigma_w: float = 1.0) -> Initializer:
    """Entries i.i.d. :math:`N(0, \\sigma_w^2 / n_{in})`, the mean-field parametrization.

    ``sigma_w = 1`` is LeCun's variance, ``sqrt(2)`` is He's; for tanh the order-to-chaos
    transition sits near ``sigma_w = 1`` (Poole et al. 2016, Schoenholz et al. 2017).

    Examples:
        >>> w = gaussian(2.0)(jax.random.key(0), (1000, 200))
        >>> round(float(w.var() * 1000), 1)  # sigma_w^2 = 4
        4.0
    """
    return _fan_init("sigma_w", sigma_w, "gaussian")


def orthogonal(gain: float = 1.0) -> Initializer:
    """``gain`` times a Haar-random matrix with orthonormal columns (or rows, if wider than tall).

    Drawn as the Q of a QR factorization of a Gaussian matrix, with the signs of R's diagonal
    folded in so that the distribution is uniform (Mezzadri 2007). Every singular value equals
    ``gain``, so a deep linear orthogonal net preserves norms exactly (Saxe et al. 2014).

    Examples:
        >>> w = orthogonal(2.0)(jax.random.key(0), (4, 4))
        >>> bool(jnp.allclose(w.T @ w, 4.0 * jnp.eye(4), atol=1e-5))
        True
    """
    gain = _multiplier(gain, "gain", nonnegative=True)

    def init(key, shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        dtype = _dtype(dtype)
        n, m = _matrix_shape(shape, dtype)
        check_key(key)
        tall = (max(n, m), min(n, m))
        a = jax.random.normal(key, tall, compute_dtype(dtype))
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))  # sign(0) = 0 has probability zero
        q = q if n >= m else q.T
        return (gain * q).astype(dtype)

    return init


def glorot_normal(gain: float = 1.0) -> Initializer:
    """Glorot/Xavier normal: :math:`N(0, g^2 \\cdot 2 / (n_{in} + n_{out}))` (their eq. 16)."""
    return _fan_init("gain", gain, "glorot_normal")


def glorot_uniform(gain: float = 1.0) -> Initializer:
    """Glorot/Xavier uniform: :math:`U[\\pm g\\sqrt{6 / (n_{in} + n_{out})}]` (their eq. 16)."""
    return _fan_init("gain", gain, "glorot_uniform")


def he_normal(gain: float = 1.0) -> Initializer:
    """He/Kaiming normal for relu: :math:`N(0, g^2 \\cdot 2 / n_{in})` (plain, not truncated)."""
    return _fan_init("gain", gain, "he_normal")


def he_uniform(gain: float = 1.0) -> Initializer:
    """He/Kaiming uniform for relu: :math:`U[\\pm g\\sqrt{6 / n_{in}}]`."""
    return _fan_init("gain", gain, "he_uniform")


def lecun_normal(gain: float = 1.0) -> Initializer:
    """LeCun normal: :math:`N(0, g^2 / n_{in})` (plain, not truncated); same as ``gaussian``."""
    return _fan_init("gain", gain, "lecun_normal")


def lecun_uniform(gain: float = 1.0) -> Initializer:
    """LeCun uniform: :math:`U[\\pm g\\sqrt{3 / n_{in}}]`."""
    return _fan_init("gain", gain, "lecun_uniform")


def standard(gain: float = 1.0) -> Initializer:
    """Glorot & Bengio's "standard" :math:`U[\\pm g / \\sqrt{n_{in}}]` (their eq. 1).

    Its variance :math:`g^2 / (3 n_{in})` is a third of LeCun's, so a deep tanh net initialized
    this way sees its signal shrink layer by layer (Glorot & Bengio 2010, sec. 4.2.1).

    Examples:
        >>> w = standard()(jax.random.key(0), (100, 1000))
        >>> bool(jnp.abs(w).max() <= 0.1)
        True
    """
    return _fan_init("gain", gain, "standard")


# ----------------------------------------------------------------------------------------- biases


@functools.cache
def zeros() -> Initializer:
    """Zero biases (the note's :math:`b^{[i]} = 0`).

    Examples:
        >>> zeros()(jax.random.key(0), (3,), jnp.bfloat16)
        Array([0, 0, 0], dtype=bfloat16)
    """

    def init(key, shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        del key
        dtype = _dtype(dtype)
        return jnp.zeros(_bias_shape(shape, dtype), dtype)

    return init


def bias_normal(sigma_b: float) -> Initializer:
    """Biases i.i.d. :math:`N(0, \\sigma_b^2)` (no fan scaling); ``sigma_b = 0`` gives zeros.

    Examples:
        >>> b = bias_normal(0.5)(jax.random.key(1), (10000,))
        >>> round(float(b.std()), 1)
        0.5
    """
    sigma_b = _multiplier(sigma_b, "sigma_b", nonnegative=True)
    if not isinstance(sigma_b, jax.core.Tracer):
        return _bias_normal_cached(sigma_b)
    return _bias_normal(sigma_b)


@functools.lru_cache(maxsize=256)
def _bias_normal_cached(sigma_b: float) -> Initializer:
    return zeros() if sigma_b == 0 else _bias_normal(sigma_b)


def _bias_normal(sigma_b: Any) -> Initializer:
    def init(key, shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        dtype = _dtype(dtype)
        shape = _bias_shape(shape, dtype)
        check_key(key)
        return _normal(key, shape, dtype, sigma_b)

    return init


# --------------------------------------------------------------------------------------- registry


class _Entry(NamedTuple):
    """One named initializer: its factory, the name of the factory's multiplier, its rule."""

    factory: Callable[..., Initializer]
    param: str
    rule: InitRule


#: The one table of named initializers: what get_initializer builds and init_rule reports (the
#: samplers, the sweep kernel and the mean-field theory all read it).
_INITIALIZERS: dict[str, _Entry] = {
    "scaled_identity": _Entry(scaled_identity, "a", InitRule("identity", None)),
    "gaussian": _Entry(gaussian, "sigma_w", InitRule("normal", lambda n, m: 1.0 / n)),
    "orthogonal": _Entry(orthogonal, "gain", InitRule("orthogonal", None)),
    "glorot_normal": _Entry(glorot_normal, "gain", InitRule("normal", lambda n, m: 2.0 / (n + m))),
    "glorot_uniform": _Entry(
        glorot_uniform, "gain", InitRule("uniform", lambda n, m: 2.0 / (n + m))
    ),
    "he_normal": _Entry(he_normal, "gain", InitRule("normal", lambda n, m: 2.0 / n)),
    "he_uniform": _Entry(he_uniform, "gain", InitRule("uniform", lambda n, m: 2.0 / n)),
    "lecun_normal": _Entry(lecun_normal, "gain", InitRule("normal", lambda n, m: 1.0 / n)),
    "lecun_uniform": _Entry(lecun_uniform, "gain", InitRule("uniform", lambda n, m: 1.0 / n)),
    "standard": _Entry(standard, "gain", InitRule("uniform", lambda n, m: 1.0 / (3.0 * n))),
}
_INITIALIZERS["xavier_normal"] = _INITIALIZERS["glorot_normal"]
_INITIALIZERS["xavier_uniform"] = _INITIALIZERS["glorot_uniform"]


@functools.lru_cache(maxsize=256)
def _cached(factory: Callable[..., Initializer], scale: float | None) -> Initializer:
    # The same object for the same (name, scale), so that jit caches keyed on it hit.
    return factory() if scale is None else factory(scale)


def initializer_names() -> tuple[str, ...]:
    """The registered weight-initializer names, sorted (aliases included).

    Examples:
        >>> "scaled_identity" in initializer_names()
        True
    """
    return tuple(sorted(_INITIALIZERS))


def get_initializer(init: str | Initializer, scale: float | None = None) -> Initializer:
    """A weight initializer by name (with an optional multiplier), or a callable unchanged.

    Args:
        init: a name from :func:`initializer_names`, or any ``init(key, shape, dtype)`` callable,
            e.g. one from ``jax.nn.initializers``.
        scale: the named factory's multiplier (``a``, ``sigma_w`` or ``gain``, see the module
            table); ``None`` keeps its default of 1. Only with a name.

    Returns:
        The initializer ``init(key, shape, dtype)``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), a bad multiplier, or a
            ``scale`` given with a callable.
        TypeError: ``init`` is neither a string nor a callable.

    Examples:
        >>> w = get_initializer("scaled_identity", 0.5)(jax.random.key(0), (2, 2), jnp.float32)
        >>> w
        Array([[0.5, 0. ],
               [0. , 0.5]], dtype=float32)
        >>> w = get_initializer(jax.nn.initializers.he_normal())(jax.random.key(0), (3, 2))
        >>> get_initializer("kaiming")
        Traceback (most recent call last):
        ...
        ValueError: unknown initializer 'kaiming'; valid names: gaussian, glorot_normal, ...
    """
    if isinstance(init, str):
        try:
            factory, param, _ = _INITIALIZERS[init]
        except KeyError:
            raise ValueError(
                f"unknown initializer {init!r}; valid names: {', '.join(initializer_names())} "
                "(or pass any init(key, shape, dtype) callable)"
            ) from None
        if isinstance(scale, jax.core.Tracer):
            return factory(scale)
        if scale is not None:
            scale = finite_float(scale, "scale")
            if scale < 0 and param != "a":
                raise ValueError(
                    f"scale={scale} is the {param} of {init!r} and must be >= 0 (only "
                    "scaled_identity takes a negative multiplier)"
                )
        return _cached(factory, scale)
    if callable(init):
        if scale is not None:
            raise ValueError(
                f"scale={scale!r} applies only to a named initializer; a callable carries its own"
            )
        return init
    raise TypeError(
        f"init must be a name ({', '.join(initializer_names())}) or an init(key, shape, dtype) "
        f"callable, got {type(init).__name__} {init!r}"
    )
