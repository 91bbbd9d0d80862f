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

One concept a file: :mod:`~stabkit.fixes.norms` (:func:`all_finite`, :func:`safe_global_norm`),
:mod:`~stabkit.fixes.clipping` (:func:`safe_clip_by_global_norm`),
:mod:`~stabkit.fixes.skipping` (:func:`skip_nonfinite`, :class:`SkipState`) and
:mod:`~stabkit.fixes.loss_scale` (:class:`DynamicLossScale`, :class:`LossScaleState`,
:class:`LossScalingState`, :func:`loss_scaling`, :func:`loss_scale_of`). The overflow-free norm's
power-of-two scaling is :func:`stabkit._numerics.pow2`.

References:
    P. Micikevicius et al., "Mixed Precision Training", ICLR 2018 (sec. 3.2, loss scaling).
    R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty of training recurrent neural
    networks", ICML 2013 (sec. 3.2, gradient norm clipping).
"""

from stabkit.fixes.clipping import safe_clip_by_global_norm
from stabkit.fixes.loss_scale import (
    DynamicLossScale,
    LossScaleState,
    LossScalingState,
    loss_scale_of,
    loss_scaling,
)
from stabkit.fixes.norms import all_finite, safe_global_norm
from stabkit.fixes.skipping import SkipState, skip_nonfinite

__all__ = [
    "DynamicLossScale",
    "LossScaleState",
    "LossScalingState",
    "SkipState",
    "all_finite",
    "loss_scale_of",
    "loss_scaling",
    "safe_clip_by_global_norm",
    "safe_global_norm",
    "skip_nonfinite",
]
