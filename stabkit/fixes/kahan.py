"""Kahan-compensated parameter updates: the rounding error of each step is carried to the next.

An update smaller than half an ulp of its weight is lost when the weight is stored in a narrow
format (bfloat16 has 8 significant bits: ``1 + 2**-8 == 1``). Kahan summation keeps what the
rounding dropped in a compensation buffer of the same narrow dtype and adds it back at the next
step, so that many small updates add up even when each alone is lost (Zamirai et al. 2020 train
ResNets in pure bfloat16 this way).

``_check_params`` (the update's params are required, floating, shaped like the updates) and
``_wide`` (the dtype the arithmetic runs in) are shared with
:mod:`stabkit.fixes.stochastic`, :mod:`stabkit.fixes.master` and
:mod:`stabkit.fixes.stagnation`.

References:
    W. Kahan, "Further remarks on reducing truncation errors", Communications of the ACM 8(1),
    1965.
    T. J. Dekker, "A floating-point technique for extending the available precision", Numerische
    Mathematik 18, 1971 (Fast2Sum).
    P. Zamirai, J. Zhang, C. R. Aberger and C. De Sa, "Revisiting BFloat16 Training",
    arXiv:2010.06192, 2020.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stabkit._numerics import compute_dtype
from stabkit.fixes.norms import _floating_leaves
from stabkit.fixes.skipping import _check_state


class KahanState(NamedTuple):
    """State of :func:`kahan_summation`.

    Attributes:
        compensation: a pytree like the params, in the params' dtypes: the part of the previous
            updates that rounding dropped, added back at the next step (0 before the first).
    """

    compensation: Any


def _wide(dtype: Any) -> jnp.dtype:
    """The dtype the update arithmetic runs in: float32 for narrow params, their own otherwise."""
    return compute_dtype(dtype)


def _narrow(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` rounded to ``dtype`` (round to nearest even), a rounding that XLA keeps.

    XLA on CPU and GPU computes float16/bfloat16 arithmetic in float32 and, by default
    (``xla_allow_excess_precision``), removes a ``float32 -> bfloat16 -> float32`` conversion
    pair inside a fused computation: ``(p + y).astype(float32) - p`` would then see the sum
    *before* rounding, and a Kahan compensation would always be 0. An optimization barrier around
    the narrow value keeps its rounding (``lax.reduce_precision`` would too, but flushes float16
    subnormals to 0).
    """
    dtype = jnp.dtype(dtype)
    if x.dtype == dtype:
        return x
    return jax.lax.optimization_barrier(x.astype(dtype))


def _check_params(params: Any, updates: Any, owner: str) -> tuple[list, list, Any]:
    """The leaves of ``updates`` and ``params`` (floating, same structure) and the treedef."""
    if params is None:
        raise ValueError(
            f"{owner} needs params, got None: pass the parameters that the updates apply to "
            "(a transformation's update(updates, state, params) computes the rounded new ones)"
        )
    _floating_leaves(updates, "updates")
    _floating_leaves(params, "params")
    u_leaves, u_def = jax.tree.flatten(updates)
    p_leaves, p_def = jax.tree.flatten(params)
    if u_def != p_def:
        raise ValueError(
            f"updates and params must have the same structure, got {u_def} and {p_def}"
        )
    for i, (u, p) in enumerate(zip(u_leaves, p_leaves, strict=True)):
        if jnp.shape(u) != jnp.shape(p):
            raise ValueError(
                f"updates and params differ in shape at leaf {i}: {jnp.shape(u)} vs {jnp.shape(p)}"
            )
    # Materialized in their own dtypes: under jit XLA would otherwise fuse a bfloat16 update
    # (say sgd's -lr * g) into this rule and skip its rounding (see _narrow), so jit would differ
    # from eager execution; the rule must see the update the optimizer's dtype defines.
    u_leaves, p_leaves = jax.lax.optimization_barrier(
        ([jnp.asarray(u) for u in u_leaves], [jnp.asarray(p) for p in p_leaves])
    )
    return u_leaves, p_leaves, p_def


def kahan_summation() -> optax.GradientTransformation:
    """Kahan-compensated parameter updates, with the compensation in the params' own dtype.

    Put it **last** in a chain (``optax.chain(optax.adam(lr), kahan_summation())``): it takes
    the optimizer's update ``u`` and returns the update ``d`` that makes
    ``optax.apply_updates(p, d)`` the compensated sum. For each entry, with ``c`` the
    compensation (in ``p``'s dtype) and the arithmetic in ``w`` = float32 for float16/bfloat16
    params (their own dtype otherwise):

    .. math::

        y = \\mathrm{fl}_p(u + c), \\qquad t = \\mathrm{fl}_p(p + y), \\qquad
        c' = \\mathrm{fl}_p\\bigl((u + c) - (t - p)\\bigr),

    and ``d = y``: ``apply_updates`` computes ``p + y`` rounded to ``p``'s dtype, which is ``t``
    by definition, bit for bit (both are one correctly rounded addition).

    Why it works: when :math:`|p| \\ge |y|` (the usual case: an update is small against its
    weight), Dekker's Fast2Sum says that ``t - p`` is exact and ``y - (t - p)`` is exactly the
    rounding error of ``p + y``; the compensation holds it (to the narrow dtype's precision, a
    relative 2^-8 in bfloat16: the error of the error is second order) and the next step adds it
    back, so the stored ``p + c`` tracks the exact sum of the updates. A run of updates each
    below half an ulp accumulates in ``c`` until it is large enough to move ``p``. When
    :math:`|p| < |y|` (a weight near 0 that a large update crosses) Fast2Sum's hypothesis fails:
    ``t - p`` may round, in float32/float64 params; the compensation then misses at most half an
    ulp of ``y``, which is no worse than plain rounding, and the next steps carry on. For
    float16/bfloat16 params ``t - p`` is computed in float32, exact unless ``t`` and ``p`` are
    more than 2^15 apart in magnitude, where ``p`` is far below half an ulp of ``t`` anyway.

    Non-finite values are results: an inf or NaN update makes ``t`` inf or NaN (the run shows its
    failure); the compensation of such an entry is reset to 0 rather than left non-finite.
    Underflow: XLA on CPU flushes float32 and bfloat16 subnormals to zero, so a compensation below
    the smallest normal number is lost there.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`KahanState`.
        ``update(updates, state, params)`` requires ``params``.

    Raises:
        ValueError: ``update`` called without ``params``, or with params shaped unlike the
            updates.
        TypeError: a leaf that is not a floating-point array; a state that is not a
            :class:`KahanState`.

    References:
        W. Kahan, CACM 8(1), 1965; T. J. Dekker, Numer. Math. 18, 1971; P. Zamirai et al.,
        "Revisiting BFloat16 Training", arXiv:2010.06192, 2020.

    Examples:
        A running sum of ones in bfloat16 stalls at 256 (257 rounds to 256); with the
        compensation every one counts:

        >>> p = jnp.full(2, 256, jnp.bfloat16)
        >>> ones = jnp.ones(2, jnp.bfloat16)
        >>> float(optax.apply_updates(p, ones)[0])
        256.0
        >>> opt = kahan_summation()
        >>> s = opt.init(p)
        >>> for _ in range(3):
        ...     d, s = opt.update(ones, s, p)
        ...     p = optax.apply_updates(p, d)
        >>> float(p[0]), float(s.compensation[0])  # 256 + 3 = 260 - 1
        (260.0, -1.0)
    """

    def init_fn(params):
        leaves = _floating_leaves(params, "params")
        del leaves
        return KahanState(jax.tree.map(lambda p: jnp.zeros_like(jnp.asarray(p)), params))

    def update_fn(updates, state, params=None):
        _check_state(state, KahanState, "kahan_summation")
        u_leaves, p_leaves, treedef = _check_params(params, updates, "kahan_summation")
        c_leaves = treedef.flatten_up_to(state.compensation)
        out_d, out_c = [], []
        for u, p, c in zip(u_leaves, p_leaves, c_leaves, strict=True):
            dt, w = p.dtype, _wide(p.dtype)
            exact = u.astype(w) + c.astype(w)  # u + c, one rounding in w
            y = _narrow(exact, dt)
            # what apply_updates computes: p + y, one rounding to p's dtype
            t = _narrow(p.astype(w) + y.astype(w), dt)
            comp = _narrow(exact - (t.astype(w) - p.astype(w)), dt)
            comp = jnp.where(jnp.isfinite(comp), comp, jnp.zeros_like(comp))
            out_d.append(y)
            out_c.append(comp)
        return treedef.unflatten(out_d), KahanState(treedef.unflatten(out_c))

    return optax.GradientTransformation(init_fn, update_fn)
