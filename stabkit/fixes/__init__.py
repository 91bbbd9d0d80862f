"""The standard fixes for exploding gradients and float16 underflow, as optax transformations.

Each fix is an ``optax.GradientTransformation`` (an ``init``/``update`` pair of pure functions with
a NamedTuple state) that composes with any optimizer, under ``jit`` and ``vmap``:

* :func:`safe_clip_by_global_norm`: clip the update to a maximum global norm. Unlike
  ``optax.clip_by_global_norm`` the norm never overflows (it is computed in at least float32 and
  scaled by the largest entry, so float16 updates of norm above 256 are clipped, not zeroed), a
  zero norm gives no NaN, and an infinite entry does not turn into NaN (see the function for what
  happens to inf and NaN).
* :func:`skip_nonfinite`: wrap an optimizer so that a step whose gradient (or whose update) holds
  an inf or NaN is skipped, the inner state untouched, at most ``max_consecutive_skips`` times in
  a row. ``optax.apply_if_finite`` checks only the update; ``optax.zero_nans`` zeroes NaN but
  lets inf through and counts nothing.
* :func:`loss_scaling` with a :class:`DynamicLossScale` rule: dynamic loss scaling for float16 and
  bfloat16 training. Multiply the loss by :func:`loss_scale_of` the optimizer state before
  differentiating; the transformation divides the gradient by the scale (in float32), skips the
  step on a non-finite gradient and adjusts the scale: multiplied by ``factor`` after ``period``
  consecutive finite steps, divided by ``factor`` on a non-finite gradient, never below
  ``min_scale`` (which may be below 1) and never grown to inf. These are jmp's
  ``DynamicLossScale.adjust`` and PyTorch's ``GradScaler.update`` rules (the tests replay both).
  The rule's constants live in the transformation, the state holds only arrays, so the state
  survives ``jax.tree`` flatten/unflatten whole (jmp's loses ``min_loss_scale`` there); the scale
  may have any floating dtype, float16 included.

* :func:`kahan_summation`: Kahan-compensated parameter updates, the last step of a chain: the
  rounding error of each step is kept in a compensation buffer of the params' own (narrow) dtype
  and added back at the next, so updates below half an ulp of their weight are not lost.
* :func:`stochastic_rounding`: ``p + u`` rounded to float16/bfloat16 stochastically (up with
  probability proportional to the distance: unbiased), the PRNG key in the state, deterministic
  given the key; :func:`stochastic_round` is the rounding itself.
* :func:`master_weights`: wrap an optimizer so that it runs on a float32 (or any ``dtype``) copy
  of the params held in its state; the returned update makes the params the copy rounded.
* :func:`lost_updates` and :func:`update_stagnation`: weight-update stagnation, the count (per
  array) and the fraction (per leaf) of nonzero updates that rounding to the weight's dtype
  loses.
* :func:`independent_weight_decay`: weight decay scaled by the schedule's multiplier but not by
  the learning rate (Wortsman et al. 2023), chained after any optimizer.

One concept a file: :mod:`~stabkit.fixes.norms` (:func:`all_finite`, :func:`safe_global_norm`),
:mod:`~stabkit.fixes.clipping` (:func:`safe_clip_by_global_norm`),
:mod:`~stabkit.fixes.skipping` (:func:`skip_nonfinite`, :class:`SkipState`),
:mod:`~stabkit.fixes.loss_scale` (:class:`DynamicLossScale`, :class:`LossScaleState`,
:class:`LossScalingState`, :func:`loss_scaling`, :func:`loss_scale_of`),
:mod:`~stabkit.fixes.kahan` (:func:`kahan_summation`, :class:`KahanState`),
:mod:`~stabkit.fixes.stochastic` (:func:`stochastic_rounding`,
:func:`stochastic_round`, :class:`StochasticRoundingState`),
:mod:`~stabkit.fixes.master` (:func:`master_weights`, :class:`MasterWeightsState`),
:mod:`~stabkit.fixes.stagnation` (:func:`lost_updates`, :func:`update_stagnation`) and
:mod:`~stabkit.fixes.weight_decay` (:func:`independent_weight_decay`). The
overflow-free norm's power-of-two scaling is :func:`stabkit._numerics.pow2`.

References:
    P. Micikevicius et al., "Mixed Precision Training", ICLR 2018 (sec. 3.2, loss scaling).
    R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty of training recurrent neural
    networks", ICML 2013 (sec. 3.2, gradient norm clipping).
"""

from stabkit.fixes.clipping import safe_clip_by_global_norm
from stabkit.fixes.kahan import KahanState, kahan_summation
from stabkit.fixes.loss_scale import (
    DynamicLossScale,
    LossScaleState,
    LossScalingState,
    loss_scale_of,
    loss_scaling,
)
from stabkit.fixes.master import MasterWeightsState, master_weights
from stabkit.fixes.norms import all_finite, safe_global_norm
from stabkit.fixes.skipping import SkipState, skip_nonfinite
from stabkit.fixes.stagnation import lost_updates, update_stagnation
from stabkit.fixes.stochastic import (
    StochasticRoundingState,
    stochastic_round,
    stochastic_rounding,
)
from stabkit.fixes.weight_decay import IndependentWeightDecayState, independent_weight_decay

__all__ = [
    "DynamicLossScale",
    "IndependentWeightDecayState",
    "KahanState",
    "LossScaleState",
    "LossScalingState",
    "MasterWeightsState",
    "SkipState",
    "StochasticRoundingState",
    "all_finite",
    "independent_weight_decay",
    "kahan_summation",
    "loss_scale_of",
    "loss_scaling",
    "lost_updates",
    "master_weights",
    "safe_clip_by_global_norm",
    "safe_global_norm",
    "skip_nonfinite",
    "stochastic_round",
    "stochastic_rounding",
    "update_stagnation",
]
