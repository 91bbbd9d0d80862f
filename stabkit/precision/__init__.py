"""Floating-point overflow and underflow: limits, what the backend really does, depth of a chain.

The founding note says in words that a huge value rounds to ``inf`` (overflow, after which further
arithmetic such as ``inf - inf`` or ``0 * inf`` gives NaN) and that a tiny value rounds to 0
(underflow). This module puts numbers on it:

* :func:`limits`: the range of each dtype, with the thresholds of ``exp``.
* :func:`probe`: what the device really does with subnormals, overflow and ``0 * inf``, measured
  under ``jit`` (XLA on CPU flushes float32, bfloat16 and float64 subnormals to zero; float16 and
  the float8 formats keep them).
* :func:`overflow_depth`, :func:`underflow_depth`: the exact step at which ``x0 * scale**k``,
  rounded after every multiplication, leaves the range, beside the closed-form prediction.
* :func:`chain`: the same chain run on the device, step by step.
* :func:`float8_matmul`: float8 matrix products with none, current or delayed scaling
  (:func:`float8_recipe`, :func:`float8_meta`; :mod:`~stabkit.precision.float8`).
* :func:`census`: counts of normal, subnormal, zero, inf and NaN entries, by bit pattern, under
  ``jit`` and ``vmap``.

Supported dtypes: ``float16``, ``bfloat16``, ``float32``, ``float64`` and the ``ml_dtypes`` float8
formats that XLA computes with (``float8_e4m3fn``, ``float8_e5m2``, ``float8_e4m3``,
``float8_e3m4``, ``float8_e4m3fnuz``, ``float8_e5m2fnuz``, ``float8_e4m3b11fnuz``). The ``fn``
formats have no inf and one NaN pattern per sign, so overflow gives NaN; the ``fnuz`` formats have
no inf, no negative zero, and their only NaN is the bit pattern of "-0" (``0x80``). float64 work
runs inside ``jax.enable_x64(True)``; the global flag is never changed. ``float4_e2m1fn`` (no inf,
no NaN: nothing to detect) and ``float8_e8m0fnu`` (a scale format with no zero) are left out.

One concept a file: :mod:`~stabkit.precision.formats` (the formats, :data:`SUPPORTED_DTYPES`),
:mod:`~stabkit.precision.classes` (:func:`census`), :mod:`~stabkit.precision.ranges`
(:func:`limits`), :mod:`~stabkit.precision.behaviour` (:func:`probe`),
:mod:`~stabkit.precision.depths` (:func:`overflow_depth`, :func:`underflow_depth`),
:mod:`~stabkit.precision.chains` (:func:`chain`) and :mod:`~stabkit.precision.report` (the
``stabkit probe`` command). Classification by bit pattern is :func:`stabkit._numerics.classify`.
"""

from stabkit.precision.behaviour import Behaviour, Probe, probe
from stabkit.precision.chains import chain
from stabkit.precision.classes import Census, census
from stabkit.precision.depths import Depth, overflow_depth, underflow_depth
from stabkit.precision.float8 import (
    FLOAT8_FORMATS,
    Float8Recipe,
    float8_combine,
    float8_matmul,
    float8_meta,
    float8_partition,
    float8_recipe,
)
from stabkit.precision.formats import SUPPORTED_DTYPES
from stabkit.precision.ranges import Limits, limits

__all__ = [
    "FLOAT8_FORMATS",
    "SUPPORTED_DTYPES",
    "Behaviour",
    "Census",
    "Depth",
    "Float8Recipe",
    "Limits",
    "Probe",
    "census",
    "chain",
    "float8_combine",
    "float8_matmul",
    "float8_meta",
    "float8_partition",
    "float8_recipe",
    "limits",
    "overflow_depth",
    "probe",
    "underflow_depth",
]
