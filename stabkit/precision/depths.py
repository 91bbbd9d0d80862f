"""The exact step at which ``x0 * scale**k``, rounded after every multiply, overflows or underflows,
beside the closed-form prediction (a host simulation of the dtype's rounding)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

from stabkit._checks import bounded_int, finite_float
from stabkit.precision.behaviour import probe
from stabkit.precision.formats import _Format, _format, _np_dtype
from stabkit.precision.ranges import _limits


class Depth(NamedTuple):
    """When the chain ``x_k = round(x_{k-1} * scale)`` leaves the range, simulated and predicted."""

    kind: str  #: ``"overflow"`` (first non-finite x_k) or ``"underflow"`` (first x_k == 0)
    dtype: str
    #: exact first step k (host simulation, rounding after every multiply); None if the chain
    #: reaches a fixed point first (possible only among subnormals, whose spacing is absolute)
    step: int | None
    #: closed form: the first integer k with ``|x0| |scale|^k`` beyond the threshold (``max`` for
    #: overflow; ``smallest_subnormal``, or ``tiny`` when flushing, for underflow)
    predicted: int
    k: float  #: the real solution ``log(threshold / |x0|) / log|scale|``
    value: float  #: x_step (inf, -inf, NaN or 0.0); the fixed point when ``step`` is None
    scale: float  #: scale rounded to the dtype: what the chain multiplies by
    x0: float  #: x0 rounded to the dtype
    flush: bool  #: whether subnormals were flushed to zero (inputs and results)


def _chain_args(scale: Any, x0: Any, fmt: _Format) -> tuple[float, float]:
    dt = _np_dtype(fmt)
    out = []
    for value, name in ((scale, "scale"), (x0, "x0")):
        v = finite_float(value, name, nonzero=True)
        with np.errstate(over="ignore"):
            r = float(np.asarray(v).astype(dt).astype(np.float64))
        if r == 0 or not math.isfinite(r):
            raise ValueError(
                f"{name}={v} rounds to {r} in {fmt.name}; it must be finite and non-zero"
            )
        out.append(r)
    return out[0], out[1]


def _check_flush(flush: Any) -> bool | None:
    if flush is None or isinstance(flush, (bool, np.bool_)):
        return None if flush is None else bool(flush)
    raise TypeError(f"flush must be True, False or None, got {type(flush).__name__} {flush!r}")


def _resolve_flush(flush: bool | None, fmt: _Format) -> bool:
    flush = _check_flush(flush)
    return probe()[fmt.name].flushes if flush is None else flush


#: The most steps :func:`overflow_depth` / :func:`underflow_depth` simulate on the host (one Python
#: multiply and rounding a step, about 0.3 to 3 microseconds: minutes at this bound).
_MAX_SIMULATED_STEPS = 10**8


def _simulate(
    x0: float, scale: float, fmt: _Format, flush: bool, overflow: bool, max_steps: int
) -> tuple[int | None, float]:
    """Run the chain on the host with the dtype's rounding after every multiplication.

    The product of two values of a format with at most 24 significant bits is exact in float64,
    so rounding it once into the dtype is the correctly rounded product; float64 products are
    rounded by the host's IEEE multiply (the host keeps subnormals). Flushing follows what XLA:CPU
    does (the tests check it on the device): subnormal inputs are read as 0, and a result whose
    exact value is below ``tiny`` is 0 even where it would round up to ``tiny`` (tininess is
    detected before rounding).
    """
    dt = _np_dtype(fmt)
    tiny = _limits(fmt.name).tiny

    def flushed(v: float) -> float:
        return math.copysign(0.0, v) if fmt.has_negative_zero else 0.0  # fnuz: no -0

    def times(x: float) -> float:
        p = x * scale  # exact, except for float64 where it is the rounded IEEE product
        if flush and abs(p) <= tiny:
            if fmt.bits != 64 and abs(p) < tiny:
                return flushed(p)
            if fmt.bits == 64 and Fraction(x) * Fraction(scale) < tiny:  # exact, rare
                return flushed(p)
        return p if fmt.bits == 64 else float(np.asarray(p).astype(dt).astype(np.float64))

    x = flushed(x0) if flush and abs(x0) < tiny else x0  # denormals-are-zero on input
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, max_steps + 1):
            y = times(x)
            if (not math.isfinite(y)) if overflow else (y == 0):
                return k, y
            if abs(y) == abs(x):  # a fixed point: the chain never gets there
                return None, y
            x = y
    raise ValueError(
        f"the {fmt.name} chain x0={x0}, scale={scale} did not "
        f"{'overflow' if overflow else 'underflow'} within max_steps={max_steps} steps; "
        "pass a larger max_steps"
    )


def _first_step_beyond(x0: float, scale: float, threshold: float, grow: bool) -> tuple[int, float]:
    """First integer k with |x0| |scale|^k > threshold (grow) or < threshold, and the real k."""
    a, s = abs(x0), abs(scale)
    k = (math.log(threshold) - math.log(a)) / math.log(s)
    n = math.floor(k) + 1
    if abs(k) <= 4096 and abs(k - round(k)) <= 1e-9 * max(1.0, abs(k)):
        # On (or within float error of) an integer, decide exactly: every value involved is a
        # dyadic rational, so Fraction arithmetic is exact. (k is exactly integral mostly for
        # power-of-two scales, whose k is at most a few thousand; a huge k, from a scale next to
        # 1, is far beyond float resolution and would make the exact power too costly.)
        m = round(k)
        v = Fraction(a) * Fraction(s) ** m if m >= 0 else Fraction(a) / Fraction(s) ** -m
        beyond = v > Fraction(threshold) if grow else v < Fraction(threshold)
        n = m if beyond else m + 1
    return max(n, 1), k


def _depth(kind, scale, dtype, x0, flush, max_steps) -> Depth:
    fmt = _format(dtype)
    s, x = _chain_args(scale, x0, fmt)
    scale = finite_float(scale, "scale")
    overflow = kind == "overflow"
    if overflow and not abs(scale) > 1:
        raise ValueError(
            f"overflow_depth needs |scale| > 1, got scale={scale}: |x0 * scale**k| never grows "
            "(use underflow_depth for |scale| < 1)"
        )
    if not overflow and not abs(scale) < 1:
        raise ValueError(
            f"underflow_depth needs 0 < |scale| < 1, got scale={scale}: |x0 * scale**k| never "
            "shrinks (use overflow_depth for |scale| > 1)"
        )
    if abs(s) == 1:
        raise ValueError(f"scale={scale} rounds to {s} in {fmt.name}, so the chain never moves")
    max_steps = bounded_int(
        max_steps,
        "max_steps",
        1,
        _MAX_SIMULATED_STEPS,
        "the host simulation runs about a million steps a second; beyond that, use the closed "
        "form k = log(threshold / |x0|) / log|scale|",
    )
    _check_flush(flush)
    lim = _limits(fmt.name)
    if abs(x) >= lim.tiny:
        # Decide before simulating whether the chain can end within max_steps. From a normal x0
        # no rounded step is a fixed point before the value leaves the normal range (overflow:
        # each step grows by at least one ulp; underflow: shrinks by at least half an ulp, which
        # rounds to one), and the rounded chain takes between about 0.7 and 1.2 times the closed
        # form's steps (the tests measure the worst case, scale one ulp from 1): beyond twice
        # max_steps the simulation could only give up, after running max_steps steps for nothing.
        # A scale next to 1 (1 + 2**-52 in float64: about 3.2e18 steps) is refused at once.
        needed, k = _first_step_beyond(x, s, lim.max if overflow else lim.tiny, grow=overflow)
        if needed > 2 * max_steps + 64:
            raise ValueError(
                f"the {fmt.name} chain x0={x}, scale={scale} needs about {k:.4g} steps to "
                f"{'overflow' if overflow else 'leave the normal range'} (the closed form "
                f"k = log(threshold / |x0|) / log|scale|), far more than max_steps={max_steps}; "
                f"the simulation could not finish. Use that closed form, or pass a larger "
                f"max_steps (at most {_MAX_SIMULATED_STEPS})"
            )
    flush = _resolve_flush(flush, fmt)
    threshold = lim.max if overflow else (lim.tiny if flush else lim.smallest_subnormal)
    predicted, k = _first_step_beyond(x, s, threshold, grow=overflow)
    step, value = _simulate(x, s, fmt, flush, overflow, max_steps)
    return Depth(kind, fmt.name, step, predicted, k, value, s, x, flush)


def overflow_depth(
    scale: float,
    dtype: Any,
    x0: float = 1.0,
    *,
    flush: bool | None = None,
    max_steps: int = 1_000_000,
) -> Depth:
    """The first step k at which ``x0 * scale**k``, rounded after every multiply, is not finite.

    This is the note's deep linear network with ``W = scale * I``: after ``k`` layers the signal
    is ``scale**k * x0``. The chain ``x_k = round(x_{k-1} * scale)`` is simulated exactly on the
    host (NumPy/ml_dtypes rounding to nearest even after every multiplication), and the closed
    form ``k = log(max / |x0|) / log|scale|`` from :func:`limits` is returned beside it; they can
    differ by a step because the rounded chain drifts from the exact power.

    Args:
        scale: the factor, ``|scale| > 1``; it is rounded to ``dtype`` first, as on a device.
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`).
        x0: starting value, finite and non-zero in ``dtype`` (negative values are fine).
        flush: only matters for a subnormal ``x0``: ``True`` reads it as 0 (then the chain never
            overflows), ``False`` keeps it; ``None`` follows :func:`probe` of the default device.
        max_steps: give up (ValueError) after this many simulated steps.

    Returns:
        A :class:`Depth` with ``kind="overflow"``; ``step`` is where the value becomes inf (NaN for
        formats without inf), ``predicted`` the closed-form step, ``k`` the real-valued solution.

    Raises:
        ValueError: unknown dtype; ``scale`` or ``x0`` zero, non-finite, or rounding to 0 or inf
            in ``dtype``; ``|scale| <= 1`` (including ``scale == 1``, which never overflows) or a
            scale that rounds to ±1 in ``dtype``; the chain is longer than ``max_steps``;
            ``max_steps`` above 10**8 (the simulation runs about a million steps a second). From
            a normal ``x0``, a chain whose closed form needs more than twice ``max_steps`` steps is
            refused at once, before simulating (``1 + 2**-52`` in float64: about 3.2e18 steps).
        TypeError: an integer dtype, or a non-numeric argument.

    Examples:
        >>> d = overflow_depth(1.5, "float16")
        >>> d.step, d.predicted, round(d.k, 2), d.value
        (28, 28, 27.35, inf)
        >>> d = overflow_depth(1.5, "bfloat16")  # W = 1.5 I: after how many layers?
        >>> d.step, d.predicted
        (220, 219)
        >>> overflow_depth(1.5, "float8_e4m3fn").value  # no inf in this format
        nan
    """
    return _depth("overflow", scale, dtype, x0, flush, max_steps)


def underflow_depth(
    scale: float,
    dtype: Any,
    x0: float = 1.0,
    *,
    flush: bool | None = None,
    max_steps: int = 1_000_000,
) -> Depth:
    """The first step k at which ``x0 * scale**k``, rounded after every multiply, is exactly 0.

    With IEEE subnormals the chain creeps down through the subnormal range and reaches 0 below half
    the smallest subnormal; when the backend flushes subnormals to zero it drops to 0 as soon as
    it leaves the normal range. The closed form is
    ``k = log(threshold / |x0|) / log|scale|`` with ``threshold = smallest_subnormal``, or
    ``tiny`` when flushing.

    Args:
        scale: the factor, ``0 < |scale| < 1``; rounded to ``dtype`` first, as on a device.
        dtype: a supported dtype (see :data:`SUPPORTED_DTYPES`).
        x0: starting value, finite and non-zero in ``dtype`` (negative values are fine).
        flush: ``True`` flushes subnormal inputs and results to zero as XLA:CPU does for
            float32, bfloat16 and float64 (a result is flushed when its exact value is below
            ``tiny``); ``False`` keeps IEEE subnormals; ``None`` (default) follows :func:`probe`
            of the default device.
        max_steps: give up (ValueError) after this many simulated steps.

    Returns:
        A :class:`Depth` with ``kind="underflow"``. ``step`` is None when the chain gets stuck at a
        subnormal fixed point (for a scale close to 1, ``x * scale`` rounds back to ``x``), which
        can only happen with subnormals kept.

    Raises:
        ValueError: as :func:`overflow_depth`, with ``|scale| >= 1`` invalid.
        TypeError: an integer dtype, a non-bool ``flush``, or a non-numeric argument.

    Examples:
        >>> underflow_depth(0.5, "float32", flush=False).step  # 2**-149 survives, 2**-150 is 0
        150
        >>> underflow_depth(0.5, "float32", flush=True).step  # 2**-127 is subnormal: flushed
        127
        >>> d = underflow_depth(0.5, "float16")  # XLA:CPU keeps float16 subnormals
        >>> d.step, d.predicted, d.flush
        (25, 25, False)
    """
    return _depth("underflow", scale, dtype, x0, flush, max_steps)
