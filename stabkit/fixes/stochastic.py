"""Stochastic rounding of the parameter update to float16 and bfloat16: unbiased, seeded.

Round-to-nearest drops every update below half an ulp of its weight, always in the same
direction; stochastic rounding rounds ``p + u`` up or down at random, up with probability
proportional to the distance from the value below, so the stored weight is right *on average*
(:math:`E[\\mathrm{SR}(x)] = x`) and small updates move it in proportion (Gupta et al. 2015;
Zamirai et al. 2020).

:func:`stochastic_round` is the rounding itself (any shape, a key); :func:`stochastic_rounding`
the optax transformation that applies it to the update.

References:
    S. Gupta, A. Agrawal, K. Gopalakrishnan and P. Narayanan, "Deep Learning with Limited
    Numerical Precision", ICML 2015.
    P. Zamirai, J. Zhang, C. R. Aberger and C. De Sa, "Revisiting BFloat16 Training",
    arXiv:2010.06192, 2020.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import optax
from jax.typing import ArrayLike, DTypeLike

from stabkit._checks import floating_array, is_floating_dtype
from stabkit.fixes.kahan import _check_params, _narrow, _wide
from stabkit.fixes.skipping import _check_state

#: The narrow formats that stochastic rounding rounds to; wider params pass through.
ROUNDED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`.

    Attributes:
        key: the PRNG key of the next step (a typed key array; split once per step).
    """

    key: jax.Array


def _as_key(key: Any, name: str = "key") -> jax.Array:
    """``key`` as a typed PRNG key scalar (a raw ``uint32[2]`` key is wrapped); static checks."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key (shape ()), got shape {key.shape}")
        return key
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jnp.dtype(dtype) == jnp.uint32 and shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        f"{name} must be a PRNG key (jax.random.key(seed), or a uint32[2] jax.random.PRNGKey), "
        f"got {type(key).__name__} of dtype {dtype} and shape {shape}"
    )


def _check_target(dtype: Any) -> jnp.dtype:
    if dtype is None or not is_floating_dtype(dtype):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}")
    dtype = jnp.dtype(dtype)
    if dtype not in ROUNDED_DTYPES and dtype.itemsize < 4:
        raise TypeError(
            f"stochastic rounding rounds to bfloat16 or float16 (float32 and float64 pass "
            f"through), got {dtype.name}"
        )
    return dtype


def _round_bfloat16(v: jax.Array, key: jax.Array) -> jax.Array:
    # A bfloat16 is the top half of a float32: adding a uniform 16-bit integer to the bit
    # pattern and truncating carries into bit 16 with probability (low 16 bits) / 2**16, the
    # distance of |v| above the bfloat16 below it (the format is sign-magnitude, so this rounds
    # the magnitude, either sign alike).
    bits = jax.lax.bitcast_convert_type(v, jnp.uint32)
    noise = jax.random.bits(key, v.shape, jnp.uint16).astype(jnp.uint32)
    out = (bits + noise) & jnp.uint32(0xFFFF0000)
    return jax.lax.bitcast_convert_type(out, jnp.float32).astype(jnp.bfloat16)


def _round_general(v: jax.Array, key: jax.Array, dtype: jnp.dtype) -> jax.Array:
    # The two neighbours from the bit pattern of the nearest value: one step of the (sign-
    # magnitude) pattern is one ulp, across the subnormal/normal boundary too.
    uint = jnp.uint16
    near = _narrow(v, dtype)
    bits = jax.lax.bitcast_convert_type(near, uint)
    above = jnp.abs(near.astype(v.dtype)) > jnp.abs(v)  # then `near` is the one away from 0
    lo_bits = jnp.where(above, bits - uint(1), bits)
    lo = jax.lax.bitcast_convert_type(lo_bits, dtype)
    hi = jax.lax.bitcast_convert_type(lo_bits + uint(1), dtype)
    lo_w, hi_w = jnp.abs(lo.astype(v.dtype)), jnp.abs(hi.astype(v.dtype))
    # exact in float32: |v| - |lo| is below one ulp of the narrow format, hi - lo is that ulp
    prob = (jnp.abs(v) - lo_w) / (hi_w - lo_w)
    u = jax.random.uniform(key, v.shape, v.dtype)
    return jnp.where(u < prob, hi, lo)


def stochastic_round(x: ArrayLike, key: jax.Array, dtype: DTypeLike) -> jax.Array:
    """``x`` rounded to ``dtype`` stochastically: up with probability equal to the distance.

    For ``x`` between the neighbours :math:`a < x < b` of ``dtype``, the result is ``b`` with
    probability :math:`(x - a) / (b - a)` and ``a`` otherwise, so :math:`E[\\mathrm{SR}(x)] = x`
    (to the precision of the float32 ``x``). A value that ``dtype`` holds exactly is returned
    exactly. ``x`` is first cast to float32 (bfloat16: 16 random bits decide, the float32 bits
    below the bfloat16's; float16: a float32 uniform against the exact fraction).

    Edge semantics (a result, not hidden): NaN stays NaN, inf stays inf; a finite value beyond
    the largest finite number of ``dtype`` is rounded to nearest (the largest finite number up to
    the overflow threshold, inf above it), so stochastic rounding never makes an inf that
    round-to-nearest would not. ``dtype`` float32 or float64: rounding to nearest (``x.astype``),
    an identity for ``x`` already of that dtype.

    Args:
        x: floating array, any shape.
        key: a PRNG key (may be traced, e.g. one per vmapped run).
        dtype: bfloat16 or float16 (stochastic); float32 or float64 (round to nearest).

    Returns:
        An array of ``x``'s shape and of ``dtype``.

    Raises:
        TypeError: ``x`` not floating; ``key`` not a PRNG key; ``dtype`` not one of the above.

    Examples:
        >>> x = jnp.full(10000, 1 + 2**-10, jnp.float32)  # an eighth of an ulp above 1 in bfloat16
        >>> r = stochastic_round(x, jax.random.key(0), jnp.bfloat16)
        >>> sorted(set(r.tolist())), round(float(jnp.mean(r.astype(jnp.float32))), 4)
        ([1.0, 1.0078125], 1.001)
    """
    x = floating_array(x, "x")
    key = _as_key(key)
    dtype = _check_target(dtype)
    if dtype.itemsize >= 4:
        return x.astype(dtype)
    v = x.astype(jnp.float32)
    sr = _round_bfloat16(v, key) if dtype == jnp.bfloat16 else _round_general(v, key, dtype)
    fmax = float(ml_dtypes.finfo(dtype).max)
    ok = jnp.isfinite(v) & (jnp.abs(v) <= fmax)
    return _narrow(jnp.where(ok, sr, v.astype(dtype)), dtype)


def stochastic_rounding(key: jax.Array) -> optax.GradientTransformation:
    """Round ``p + u`` to the params' dtype stochastically: the last step of a chain.

    Put it **last** (``optax.chain(optax.sgd(lr), stochastic_rounding(key))``). For each float16
    or bfloat16 parameter it computes ``p + u`` in float32 (rounded once; exact when ``u`` is
    itself bfloat16 and within 2^16 of ``p`` in magnitude), rounds it with
    :func:`stochastic_round` to ``r`` and returns ``d = r - p`` in float32, so that
    ``optax.apply_updates(p, d)`` (which adds in float32 and casts back) is ``r`` bit for bit;
    ``r - p`` is exact in float32 whenever ``r`` and ``p`` are within 2^15 of each other in
    magnitude (2^12 for float16) or one of them is 0, that is for every update that does not
    cancel a weight to a tiny fraction of itself.

    float32 and float64 params pass through: the update is returned unchanged (rounding the
    float32 sum to float32 is the identity), so one optimizer serves a sweep over dtypes. Other
    formats (float8) are refused.

    The key is in the state, split once per step, so a run is deterministic given ``key``; one
    random draw per step and dtype serves every leaf of that dtype (flattened and concatenated
    in the tree's order, a sub-key per dtype, bfloat16's first: one random-number kernel to
    compile however many layers); ``key`` may be traced (a vmapped key per run). NaN/inf and
    values beyond the largest finite number: see :func:`stochastic_round`.

    Args:
        key: the PRNG key of the first step (``jax.random.key(seed)`` or a ``PRNGKey``).

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`StochasticRoundingState`;
        ``update(updates, state, params)`` requires ``params``.

    Raises:
        TypeError: ``key`` not a PRNG key; later, float8 params, non-floating leaves or a state
            that is not a :class:`StochasticRoundingState`.
        ValueError: ``update`` without ``params`` or with params shaped unlike the updates.

    Examples:
        Updates of an eighth of an ulp, lost by round-to-nearest, move the weight on average:

        >>> opt = stochastic_rounding(jax.random.key(0))
        >>> p = jnp.ones(1000, jnp.bfloat16)
        >>> s = opt.init(p)
        >>> for _ in range(4):
        ...     d, s = opt.update(jnp.full(1000, 2**-10, jnp.float32), s, p)
        ...     p = optax.apply_updates(p, d)
        >>> p.dtype, round(float(jnp.mean(p.astype(jnp.float32))), 3)  # exact: 1 + 2**-8
        (dtype(bfloat16), 1.004)
    """
    first = _as_key(key)

    def init_fn(params):
        for p in jax.tree.leaves(params):
            _check_target(jnp.asarray(p).dtype)
        return StochasticRoundingState(first)

    def update_fn(updates, state, params=None):
        _check_state(state, StochasticRoundingState, "stochastic_rounding")
        u_leaves, p_leaves, treedef = _check_params(params, updates, "stochastic_rounding")
        for p in p_leaves:
            _check_target(p.dtype)
        next_key, step_key = jax.random.split(state.key)
        out = list(u_leaves)  # float32/float64 params: the update unchanged
        # One random draw per narrow dtype over all its leaves, concatenated: a single
        # random-number kernel to compile, whatever the number of layers.
        groups = [
            [i for i, p in enumerate(p_leaves) if p.dtype == dt]
            for dt in ROUNDED_DTYPES
            if any(p.dtype == dt for p in p_leaves)
        ]
        keys = jax.random.split(step_key, len(groups)) if groups else []
        for idx, k in zip(groups, keys, strict=True):
            dt = p_leaves[idx[0]].dtype
            w = _wide(dt)
            p = jnp.concatenate([p_leaves[i].reshape(-1) for i in idx])
            v = jnp.concatenate(
                [(p_leaves[i].astype(w) + u_leaves[i].astype(w)).reshape(-1) for i in idx]
            )
            r = stochastic_round(v, k, dt)
            d = r.astype(w) - p.astype(w)
            # r == p: no change (an inf weight stays inf instead of inf - inf = NaN)
            d = jnp.where(r == p, jnp.zeros_like(d), d)
            start = 0
            for i in idx:
                size = p_leaves[i].size
                out[i] = d[start : start + size].reshape(p_leaves[i].shape)
                start += size
        return treedef.unflatten(out), StochasticRoundingState(next_key)

    return optax.GradientTransformation(init_fn, update_fn)
