"""The floating-point formats stabkit supports: bit layouts, special values, the one dtype list.

:data:`SUPPORTED_DTYPES` is the only list of dtype names in stabkit; the sweep's and the
networks' lists are read from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import ml_dtypes
import numpy as np

from stabkit._checks import is_floating_dtype
from stabkit._numerics import classify


@dataclasses.dataclass(frozen=True)
class _Format:
    """How a binary floating-point format spends its bits, and which special values it has."""

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    # "ieee": all-ones exponent is inf (mantissa 0) or NaN; "fn": no inf, all-ones exponent and
    # mantissa is NaN; "fnuz": no inf and no -0, the sign-bit-only pattern is the one NaN.
    kind: str

    @property
    def has_inf(self) -> bool:
        return self.kind == "ieee"

    @property
    def has_negative_zero(self) -> bool:
        return self.kind != "fnuz"


# Bit layouts are checked against ml_dtypes.finfo in the tests; the kind is the format's definition
# (the suffixes of the ml_dtypes names: fn = finite, uz = unsigned zero).
_FORMATS: dict[str, _Format] = {
    f.name: f
    for f in (
        _Format("float16", 16, 5, 10, "ieee"),
        _Format("bfloat16", 16, 8, 7, "ieee"),
        _Format("float32", 32, 8, 23, "ieee"),
        _Format("float64", 64, 11, 52, "ieee"),
        _Format("float8_e4m3fn", 8, 4, 3, "fn"),
        _Format("float8_e5m2", 8, 5, 2, "ieee"),
        _Format("float8_e4m3", 8, 4, 3, "ieee"),
        _Format("float8_e3m4", 8, 3, 4, "ieee"),
        _Format("float8_e4m3fnuz", 8, 4, 3, "fnuz"),
        _Format("float8_e5m2fnuz", 8, 5, 2, "fnuz"),
        _Format("float8_e4m3b11fnuz", 8, 4, 3, "fnuz"),
    )
}

#: Names of the dtypes every function in this module accepts, in a fixed order.
SUPPORTED_DTYPES: tuple[str, ...] = tuple(_FORMATS)

_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def _format(dtype: Any, name: str = "dtype") -> _Format:
    """The format of ``dtype`` (a dtype object, scalar type or name); raises naming it otherwise."""
    if dtype is None:  # np.dtype(None) is float64: a missing dtype must not pass as one
        raise TypeError(
            f"{name} must be a dtype, got None; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    if isinstance(dtype, str) and hasattr(ml_dtypes, dtype):  # NumPy does not know "bfloat16"
        dtype = getattr(ml_dtypes, dtype)
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):  # np.dtype(b",") raises SyntaxError
        # A string that names no dtype is a bad value; any other object is the wrong type.
        error = ValueError if isinstance(dtype, str) else TypeError
        raise error(
            f"{name}={dtype!r} is not a dtype; supported: {', '.join(SUPPORTED_DTYPES)}"
        ) from None
    if not is_floating_dtype(dt):
        raise TypeError(
            f"{name} must be a floating-point dtype, got {dt.name}; "
            f"supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    fmt = _FORMATS.get(dt.name)
    if fmt is None:
        raise ValueError(
            f"{name}={dt.name} is not supported; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    return fmt


def _np_dtype(fmt: _Format) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, fmt.name, None) or fmt.name)


def _classify(bits: Any, fmt: _Format) -> tuple[Any, Any, Any, Any, Any]:
    """Boolean masks (normal, subnormal, zero, inf, nan) of raw bit patterns ``bits`` of ``fmt``
    (NumPy or JAX unsigned integers), by :func:`stabkit._numerics.classify`."""
    return classify(bits, fmt.bits, fmt.exponent_bits, fmt.mantissa_bits, fmt.kind)


def _x64(fmt: _Format) -> contextlib.AbstractContextManager:
    """float64 exists in JAX only inside ``enable_x64``; everything else runs as it is."""
    return jax.enable_x64(True) if fmt.bits == 64 else contextlib.nullcontext()
