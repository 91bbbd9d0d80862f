"""float8 matrix products with per-tensor scaling: Transformer Engine's recipes, in plain JAX.

A float8 matrix product :func:`float8_matmul` computes ``x @ w`` from ``x`` and ``w`` rounded to
a float8 format after multiplying each by a per-tensor *scale* ``s``,

.. math::

    q(v, s) = \\operatorname{round}_8\\big(\\operatorname{clip}(s v, -f_{\\max}, f_{\\max})\\big),
    \\qquad y = \\frac{q(x, s_x)\\, q(w, s_w)}{s_x s_w},

accumulated in float32 (the products of two float8 numbers are exact in float32), and, in the
backward pass, rounds the output gradient ``g`` to the backward format with its own scale:
``dx = q(g, s_g) q(w, s_w)^T / (s_g s_w)``, ``dw = q(x, s_x)^T q(g, s_g) / (s_x s_g)``. The
default formats are the "hybrid" pair: e4m3 (``float8_e4m3fn``, 3 mantissa bits, largest 448)
forward, e5m2 (``float8_e5m2``, 2 bits, largest 57344) for gradients. Values beyond ``f_max``
saturate to ``+-f_max`` (as Transformer Engine does; casting them would give NaN in e4m3fn).

**Scaling** (:func:`float8_recipe`), ``s = f_max / amax / 2**margin``:

* ``"none"``: ``s = 1``, the raw format; activations below the smallest subnormal (``2**-9`` in
  e4m3) underflow to 0 and those above ``f_max`` saturate;
* ``"current"``: ``amax`` is this tensor's largest magnitude (one extra reduction per operand);
* ``"delayed"``: Transformer Engine's ``DelayedScaling`` recipe: the scale used at a step comes
  from the *previous* steps' amaxes, an ``amax`` history of ``history`` steps (1024 by
  default) reduced by ``amax_compute`` (``"max"`` or ``"most_recent"``), so that a step needs no
  reduction before its product.

**State.** Each product has a *meta* (:func:`float8_meta`), a dict of float32 arrays:
``{x,w,g}_history`` ``(history,)`` (index 0 the newest), ``{x,w,g}_scale`` ``()`` (the scale
the next step uses), and the last backward pass's ``g_underflow``, ``g_overflow``,
``g_nonfinite`` ``()``. :func:`float8_matmul` is a ``custom_vjp`` whose cotangent for the meta is
the **new meta** (flax's "overwrite with gradient" pattern): ``jax.grad`` of a loss returns,
where the meta sits in the parameters, the meta after this step (histories rolled with this
step's amaxes of ``x`` and ``w`` from the forward pass and ``g`` from the backward pass, scales
recomputed). It is *not* a gradient: it must replace the meta, never be fed to an optimizer.

**The training loop's contract.** A block with ``float8`` holds its metas at
``params["float8"][<weight name>]`` (:func:`stabkit.networks.block`). Per step:

1. ``trainable, meta = float8_partition(params)``; the optimizer is built and updated on
   ``trainable`` only (``None`` where the metas are: optax sees no meta leaf, so no weight decay,
   clipping or moment touches them);
2. ``grads = jax.grad(loss)(params)`` (the *whole* params); ``g_trainable, new_meta =
   float8_partition(grads)``;
3. keep the *old* meta of every product that did not run ("a layer that did not run must not
   roll its history"): select per block, ``jnp.where(block_index <= depth, new, old)`` on the
   leading depth axis of the stacked metas. :func:`float8_matmul` already returns its meta
   unchanged when its output gradient is zero everywhere (a block beyond the run's depth
   computes on zeros and its output is discarded, so nothing flows back), but a product whose
   output does not reach the loss at all gets a zero cotangent: zero histories and scales
   (a zero scale is then used as 1, but the history is lost);
4. ``params = float8_combine(optax.apply_updates(trainable, updates), meta_after_step3)``.

Each meta must be used by exactly one product per differentiated function: two uses would add
their new metas (cotangents sum). A step that is skipped (a NaN loss) keeps its old meta too.

**Robustness** (where Transformer Engine had bugs): an ``amax`` of 0 (an all-zero tensor, an
empty history) keeps the previous scale; a tiny ``amax`` cannot give an infinite scale: every
scale is clamped to ``[2**-126, 2**126]`` (float32's smallest normal and its inverse, so that
``s`` and ``1/s`` are normal float32 numbers), and ``y = acc / (s_x s_w)`` is computed without
the product of the scales overflowing. A meta's scale that is 0, negative or not finite (that
of a meta taken from a zero cotangent) is used as 1. NaN and inf entries of ``x``, ``w`` or
``g`` are results: they enter the product unquantized and propagate to ``y`` (or ``dx``,
``dw``) as IEEE arithmetic says (``inf * 0`` is NaN); the amax recorded in the history is the
largest *finite* magnitude, so the history and scales stay finite, and the stats count the
non-finite entries (``x_nonfinite``...): a poisoned step is visible, not silent.

**Statistics** (``stats``, float32 scalars reduced over every entry): for ``x`` and ``w``, the
fraction of nonzero finite entries quantized to 0 (``*_underflow``), of finite entries that
saturated, ``|s v| > f_max`` (``*_overflow``), and of non-finite entries (``*_nonfinite``).

:func:`float8_matmul` is reverse-mode only (a ``custom_vjp``: ``jax.jvp`` and ``jax.jacfwd``
raise). Inputs are rounded to float32 before scaling (a float64 ``x`` under x64 is rounded
twice, which can change a float8 result only at an exact float8 tie).

References:
    Micikevicius et al. (2022), "FP8 formats for deep learning".
    NVIDIA Transformer Engine, ``transformer_engine.common.recipe.DelayedScaling``.
    flax, ``flax.linen.fp8_ops`` (the "overwrite with gradient" meta update).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import _short, bounded_int, choice, floating_array
from stabkit.precision.formats import SUPPORTED_DTYPES, _format

__all__ = [
    "FLOAT8_FORMATS",
    "Float8Recipe",
    "float8_combine",
    "float8_matmul",
    "float8_meta",
    "float8_partition",
    "float8_recipe",
]

#: The float8 formats a recipe may use (every 8-bit format of :data:`SUPPORTED_DTYPES`).
FLOAT8_FORMATS: tuple[str, ...] = tuple(n for n in SUPPORTED_DTYPES if n.startswith("float8"))

SCALINGS = ("none", "current", "delayed")
AMAX_COMPUTE = ("max", "most_recent")
#: The key under which a block holds its metas, the one :func:`float8_partition` splits on.
META_KEY = "float8"
_MAX_HISTORY = 2**16
_MAX_MARGIN = 64
_OPERANDS = ("x", "w", "g")
_STATS = ("underflow", "overflow", "nonfinite")
_F32 = jnp.float32
# Every scale lies in [tiny, 1/tiny] of float32: it and its inverse are normal (a tiny amax
# would otherwise give fmax/amax = inf, Transformer Engine's bug, and an inf scale NaN results).
_TINY = float(np.finfo(np.float32).tiny)
_SCALE_MIN, _SCALE_MAX = _TINY, 1.0 / _TINY
_PRECISION = jax.lax.Precision.HIGHEST


class Float8Recipe(NamedTuple):
    """How a float8 product scales its operands (static, hashable); see :func:`float8_recipe`.

    Attributes:
        scaling: ``"none"``, ``"current"`` or ``"delayed"``.
        forward: the format of ``x`` and ``w`` (a :data:`FLOAT8_FORMATS` name).
        backward: the format of the output gradient.
        history: the amax history's length (steps).
        margin: the scale is ``f_max / amax / 2**margin``.
        amax_compute: ``"max"`` or ``"most_recent"`` over the history (delayed scaling).
    """

    scaling: str = "delayed"
    forward: str = "float8_e4m3fn"
    backward: str = "float8_e5m2"
    history: int = 1024
    margin: int = 0
    amax_compute: str = "max"


def _format_name(value: Any, name: str) -> str:
    if isinstance(value, str) and value not in FLOAT8_FORMATS and value in SUPPORTED_DTYPES:
        raise ValueError(f"{name}={value!r} is not a float8 format; valid: {FLOAT8_FORMATS}")
    fmt = _format(value, name)
    if fmt.name not in FLOAT8_FORMATS:
        raise ValueError(f"{name}={fmt.name!r} is not a float8 format; valid: {FLOAT8_FORMATS}")
    return fmt.name


def float8_recipe(
    scaling: str = "delayed",
    *,
    forward: Any = "float8_e4m3fn",
    backward: Any = "float8_e5m2",
    history: int = 1024,
    margin: int = 0,
    amax_compute: str = "max",
) -> Float8Recipe:
    """A validated :class:`Float8Recipe` (defaults: Transformer Engine's ``DelayedScaling``).

    Args:
        scaling: ``"delayed"`` (default: the scale from the amax history of previous steps),
            ``"current"`` (from this tensor's amax) or ``"none"`` (scale 1, the raw format).
        forward: the format of ``x`` and ``w``: a name or dtype of :data:`FLOAT8_FORMATS`
            (default ``float8_e4m3fn``).
        backward: the output gradient's format (default ``float8_e5m2``: with ``forward``, the
            "hybrid" format).
        history: the amax history's length, 1..65536 (default 1024, as Transformer Engine).
        margin: an int 0..64; scales are divided by ``2**margin`` (headroom; default 0).
        amax_compute: ``"max"`` (default) or ``"most_recent"``: how delayed scaling reduces the
            history.

    Returns:
        A :class:`Float8Recipe`, hashable (blocks are cached by their options).

    Raises:
        ValueError: an unknown scaling or amax_compute, a non-float8 format, a history or margin
            out of range.
        TypeError: a non-string scaling, a non-int history or margin, a non-dtype format.

    Examples:
        >>> float8_recipe("current")
        Float8Recipe(scaling='current', forward='float8_e4m3fn', backward='float8_e5m2', \
history=1024, margin=0, amax_compute='max')
        >>> float8_recipe(history=16) == float8_recipe("delayed", history=16)
        True
    """
    scaling = choice(scaling, "scaling", SCALINGS)
    forward = _format_name(forward, "forward")
    backward = _format_name(backward, "backward")
    history = bounded_int(history, "history", 1, _MAX_HISTORY, "steps of amax history")
    margin = bounded_int(margin, "margin", 0, _MAX_MARGIN, "scales are divided by 2**margin")
    amax_compute = choice(amax_compute, "amax_compute", AMAX_COMPUTE)
    return Float8Recipe(scaling, forward, backward, history, margin, amax_compute)


def as_float8_recipe(value: Any, name: str = "recipe") -> Float8Recipe:
    """``value`` as a validated recipe: a :class:`Float8Recipe` or a scaling name."""
    if isinstance(value, Float8Recipe):
        return float8_recipe(**value._asdict())
    if isinstance(value, str):
        if value not in SCALINGS:
            raise ValueError(
                f"unknown {name} {value!r}; valid: a Float8Recipe or one of {', '.join(SCALINGS)}"
            )
        return float8_recipe(value)
    raise TypeError(
        f"{name} must be a Float8Recipe (stabkit.precision.float8_recipe(...)) or one of "
        f"{', '.join(SCALINGS)}, got {type(value).__name__} {_short(value)}"
    )


def float8_meta(recipe: Float8Recipe | str = "delayed") -> dict[str, jax.Array]:
    """The initial state of one float8 product: zero histories, unit scales, zero statistics.

    Args:
        recipe: a :class:`Float8Recipe` or a scaling name (``"delayed"``...).

    Returns:
        ``{"x_history", "w_history", "g_history": (history,), "x_scale", "w_scale", "g_scale",
        "g_underflow", "g_overflow", "g_nonfinite": ()}``, all float32. The histories' index 0
        is the newest amax; the scales are those the next step uses (1 before any step:
        Transformer Engine's start, and the scale an empty history keeps). The histories are
        recorded for every scaling (a census of the amaxes); only ``"delayed"`` reads them.

    Examples:
        >>> m = float8_meta(float8_recipe(history=4))
        >>> sorted(m), m["x_history"].shape, float(m["g_scale"])
        (['g_history', 'g_nonfinite', 'g_overflow', 'g_scale', 'g_underflow', 'w_history', \
'w_scale', 'x_history', 'x_scale'], (4,), 1.0)
    """
    recipe = as_float8_recipe(recipe)
    meta = {}
    for op in _OPERANDS:
        meta[f"{op}_history"] = jnp.zeros((recipe.history,), _F32)
        meta[f"{op}_scale"] = jnp.ones((), _F32)
    for stat in _STATS:
        meta[f"g_{stat}"] = jnp.zeros((), _F32)
    return dict(sorted(meta.items()))


def _check_meta(meta: Any, recipe: Float8Recipe) -> dict:
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (from float8_meta), got {type(meta).__name__}")
    keys = sorted(
        [f"{op}_{part}" for op in _OPERANDS for part in ("history", "scale")]
        + [f"g_{stat}" for stat in _STATS]
    )
    if sorted(meta) != keys:
        raise ValueError(f"meta must have the keys {keys} (from float8_meta), got {sorted(meta)}")
    for key in keys:
        shape = (recipe.history,) if key.endswith("history") else ()
        leaf = meta[key]
        got = (tuple(getattr(leaf, "shape", ())), jnp.asarray(leaf).dtype)
        if got != (shape, jnp.dtype(_F32)):
            raise ValueError(
                f"meta[{key!r}] must be float32 of shape {shape} for a recipe of history="
                f"{recipe.history}, got {got[1]} of shape {got[0]}"
            )
    return meta


def _fmax(fmt: str) -> float:
    return float(ml_dtypes.finfo(getattr(ml_dtypes, fmt)).max)


def _scale(amax: jax.Array, previous: jax.Array, fmax: float, margin: int) -> jax.Array:
    """``fmax / amax / 2**margin`` clamped to ``[2**-126, 2**126]``; ``previous`` where
    ``amax == 0``."""
    ok = amax > 0
    # Double where: fmax / 0 is never computed.
    safe = jnp.where(ok, amax, jnp.ones_like(amax))
    s = jnp.asarray(fmax, _F32) / safe
    if margin:
        s = s / jnp.asarray(2.0**margin, _F32)
    s = jnp.clip(s, _SCALE_MIN, _SCALE_MAX)
    return jnp.where(ok, s, previous)


class _Quantized(NamedTuple):
    q: jax.Array  # float32 holding float8 values (non-finite inputs kept as they are)
    scale: jax.Array  # the scale used, ()
    amax: jax.Array  # the largest finite magnitude, ()
    stats: dict  # underflow, overflow, nonfinite fractions, ()


def _usable(scale: jax.Array) -> jax.Array:
    """A meta's scale as a usable one: clamped to the scales' range, 1 where it is not a positive
    number (a meta taken from a zero cotangent has scale 0: it would divide by 0)."""
    ok = jnp.isfinite(scale) & (scale > 0)
    return jnp.where(ok, jnp.clip(scale, _SCALE_MIN, _SCALE_MAX), jnp.ones_like(scale))


def _quantize(a: jax.Array, previous: jax.Array, fmt: str, recipe: Float8Recipe) -> _Quantized:
    """Scale and round ``a`` to ``fmt`` by the recipe; ``previous``: the meta's scale."""
    fmax = _fmax(fmt)
    previous = _usable(previous)
    a32 = a.astype(_F32)
    finite = jnp.isfinite(a32)
    amax = jnp.max(jnp.where(finite, jnp.abs(a32), 0), initial=0.0)
    if recipe.scaling == "none":
        scale = jnp.ones((), _F32)
    elif recipe.scaling == "current":
        scale = _scale(amax, previous, fmax, recipe.margin)
    else:  # delayed: the scale the previous steps left
        scale = previous
    v = a32 * scale
    # Saturate (Transformer Engine's choice) rather than cast an out-of-range value: e4m3fn has no
    # inf, a plain cast of 500 gives NaN.
    q = jnp.clip(v, -fmax, fmax).astype(getattr(jnp, fmt)).astype(_F32)
    q = jnp.where(finite, q, v)  # NaN and inf are results: they go on unquantized
    masks = (finite & (v != 0) & (q == 0), finite & (jnp.abs(v) > fmax), ~finite)
    # The three counts in one variadic reduction: each reduction is a compiled loop of its own
    # (three sums, or a sum over their stack, compile measurably slower on CPU).
    zero = jnp.zeros((), _F32)
    counts = jax.lax.reduce(
        tuple(m.astype(_F32) for m in masks),
        (zero, zero, zero),
        lambda c, d: tuple(ci + di for ci, di in zip(c, d, strict=True)),
        tuple(range(a.ndim)),
    )
    stats = {k: c / max(a.size, 1) for k, c in zip(_STATS, counts, strict=True)}
    return _Quantized(q, scale, amax, stats)


def _roll(history: jax.Array, amax: jax.Array) -> jax.Array:
    return jnp.concatenate([amax[None], history[:-1]])


def _next_scale(
    history: jax.Array, used: jax.Array, previous: jax.Array, fmt: str, recipe: Float8Recipe
) -> jax.Array:
    """The scale the next step uses: from the rolled ``history`` (delayed), this step's
    (current), 1 (none)."""
    if recipe.scaling == "none":
        return jnp.ones((), _F32)
    if recipe.scaling == "current":
        return used
    previous = _usable(previous)
    amax = jnp.max(history) if recipe.amax_compute == "max" else history[0]
    return _scale(amax, previous, _fmax(fmt), recipe.margin)


def _unscale(acc: jax.Array, sa: jax.Array, sb: jax.Array) -> jax.Array:
    """``acc / (sa * sb)`` without a spurious overflow or underflow of the scales' product.

    ``sa * sb`` overflows float32 when both operands are tiny (``2**126 * 400`` is inf: ``y``
    would be 0; XLA folds ``acc / sa / sb`` into ``acc / (sa * sb)``, so dividing twice does not
    help). Where the product is a normal float32, ``acc * (1 / (sa sb))``; elsewhere (both
    scales above 1, or both below) ``acc * (1 / far) * (1 / near)``, ``far`` the scale farther
    from 1: the intermediate then lies between ``acc`` and the result, so it leaves the range
    only if the result does. The reciprocals are scalars (normal: every scale is in
    ``[2**-126, 2**126]``); XLA keeps the two multiplications apart.
    """
    c = sa * sb
    ok = (c >= _SCALE_MIN) & (c <= _SCALE_MAX)
    far = jnp.where(c > 1, jnp.maximum(sa, sb), jnp.minimum(sa, sb))
    near = jnp.where(far == sa, sb, sa)
    first = jnp.where(ok, c, far)
    second = jnp.where(ok, jnp.ones_like(c), near)
    return acc * (1 / first) * (1 / second)


def _product(a: jax.Array, b: jax.Array, spec: str, sa: jax.Array, sb: jax.Array) -> jax.Array:
    """The float32 accumulation of the float8 products (exact in float32), unscaled."""
    acc = jnp.einsum(spec, a, b, precision=_PRECISION, preferred_element_type=_F32)
    return _unscale(acc, sa, sb)


def _forward(x, w, meta, recipe):
    qx = _quantize(x, meta["x_scale"], recipe.forward, recipe)
    qw = _quantize(w, meta["w_scale"], recipe.forward, recipe)
    y = _product(qx.q, qw.q, "...k,kn->...n", qx.scale, qw.scale).astype(x.dtype)
    stats = {f"{op}_{k}": v for op, q in (("x", qx), ("w", qw)) for k, v in q.stats.items()}
    return y, stats, qx, qw


def _make_matmul(recipe: Float8Recipe):
    """The custom_vjp product for one (static) recipe."""

    @jax.custom_vjp
    def f(x, w, meta):
        y, stats, _, _ = _forward(x, w, meta, recipe)
        return y, stats

    def fwd(x, w, meta):
        y, stats, qx, qw = _forward(x, w, meta, recipe)
        # Zero-size arrays carry the operands' dtypes to the backward pass.
        protos = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))
        return (y, stats), (qx, qw, meta, protos)

    def bwd(res, cts):
        qx, qw, meta, (x_proto, w_proto) = res
        gy, _ = cts  # the stats' cotangent is ignored: they are statistics, not results
        qg = _quantize(gy, meta["g_scale"], recipe.backward, recipe)
        dx = _product(qg.q, qw.q, "...n,kn->...k", qg.scale, qw.scale).astype(x_proto.dtype)
        dw = _product(qx.q, qg.q, "...k,...n->kn", qx.scale, qg.scale).astype(w_proto.dtype)
        new = {}
        for op, q, fmt in (
            ("x", qx, recipe.forward),
            ("w", qw, recipe.forward),
            ("g", qg, recipe.backward),
        ):
            history = _roll(meta[f"{op}_history"], q.amax)
            new[f"{op}_history"] = history
            new[f"{op}_scale"] = _next_scale(history, q.scale, meta[f"{op}_scale"], fmt, recipe)
        for k, v in qg.stats.items():
            new[f"g_{k}"] = v
        # Nothing flowed back (an all-zero output gradient: a block beyond the run's depth, whose
        # output is discarded): the product did not take part in the step, its meta stays.
        ran = jnp.any(gy != 0)
        new = {k: jnp.where(ran, v, meta[k]) for k, v in sorted(new.items())}
        return dx, dw, new

    f.defvjp(fwd, bwd)
    return f


@functools.lru_cache(maxsize=64)
def _matmul_for(recipe: Float8Recipe):
    # One custom_vjp function per recipe: the traces of equal recipes are shared.
    return _make_matmul(recipe)


def float8_matmul(
    x: ArrayLike, w: ArrayLike, meta: dict, recipe: Float8Recipe | str = "delayed"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``x @ w`` over ``x``'s last axis from float8 operands (see the module docstring).

    Args:
        x: ``(..., k)``, a floating array.
        w: ``(k, n)``, a floating array.
        meta: this product's state (:func:`float8_meta` of the same recipe); under ``jax.grad``
            its cotangent is the new meta.
        recipe: a :class:`Float8Recipe` or a scaling name.

    Returns:
        ``(y, stats)``: ``y`` ``(..., n)`` in ``x``'s dtype, the float32 accumulation of the
        products of the quantized operands divided by the two scales; ``stats`` a dict of
        float32 scalars ``{x,w}_{underflow,overflow,nonfinite}`` (fractions of all entries).

    Raises:
        TypeError: non-floating ``x`` or ``w``, a meta that is not a dict, a bad recipe.
        ValueError: shapes that do not multiply, a meta of the wrong keys or shapes.

    Examples:
        >>> r = float8_recipe("current")
        >>> f = jax.jit(float8_matmul, static_argnums=3)  # one compilation, not one per op
        >>> y, stats = f(jnp.full((2, 3), 0.1), jnp.eye(3, 2), float8_meta(r), r)
        >>> y
        Array([[0.1, 0.1],
               [0.1, 0.1]], dtype=float32)
        >>> float(stats["x_underflow"]), float(stats["w_overflow"])
        (0.0, 0.0)
    """
    recipe = as_float8_recipe(recipe)
    x = floating_array(x, "x")
    w = floating_array(w, "w")
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"float8_matmul needs x of shape (..., k) and w of shape (k, n), got x {x.shape} "
            f"and w {w.shape}"
        )
    meta = _check_meta(meta, recipe)
    return _matmul_for(recipe)(x, w, meta)


# ----------------------------------------------------------------------- the parameters' split


def _is_meta_path(path: tuple) -> bool:
    return any(isinstance(k, jax.tree_util.DictKey) and k.key == META_KEY for k in path)


def float8_partition(tree: Any) -> tuple[Any, Any]:
    """Split a parameter pytree into its trainable part and its float8 metas.

    Args:
        tree: any pytree (a :class:`stabkit.NetParams`, a dict...), or its gradient.

    Returns:
        ``(trainable, meta)``, both of ``tree``'s structure: ``meta`` holds the leaves under a
        dict key ``"float8"`` (at any depth) and ``None`` elsewhere; ``trainable`` the others
        and ``None`` there. An optax optimizer initialized and updated on ``trainable`` sees
        only the trainable leaves. :func:`float8_combine` joins them back.

    Examples:
        >>> p = {"w": jnp.ones(2), "float8": {"w": float8_meta(float8_recipe(history=2))}}
        >>> trainable, meta = float8_partition(p)
        >>> trainable["float8"]["w"]["x_scale"] is None, meta["w"] is None
        (True, True)
        >>> jax.tree.structure(float8_combine(trainable, meta)) == jax.tree.structure(p)
        True
    """
    trainable = jax.tree_util.tree_map_with_path(lambda p, v: None if _is_meta_path(p) else v, tree)
    meta = jax.tree_util.tree_map_with_path(lambda p, v: v if _is_meta_path(p) else None, tree)
    return trainable, meta


def float8_combine(trainable: Any, meta: Any) -> Any:
    """The inverse of :func:`float8_partition`: each leaf from whichever part holds it.

    Raises:
        ValueError: two parts of different structures.
    """
    try:
        return jax.tree.map(
            lambda a, b: b if a is None else a, trainable, meta, is_leaf=lambda v: v is None
        )
    except ValueError as err:
        raise ValueError(
            f"trainable and meta must come from float8_partition of one tree: {err}"
        ) from None
