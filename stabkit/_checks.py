"""Input validation shared by every public function.

Every check raises ``TypeError`` or ``ValueError`` whose message names the argument, the bad value
and what would have been valid. Checks run on static information only (shapes, dtypes, Python
values), so they cost nothing under ``jit`` and never force a device-to-host transfer.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_floating_dtype(dtype: Any) -> bool:
    """True for every inexact real dtype JAX knows, the ml_dtypes float8 formats included.

    ``None`` is not a dtype here (NumPy reads it as float64).
    """
    if dtype is None or isinstance(dtype, (np.ndarray, jax.Array)):  # an array is not a dtype
        return False
    try:
        return bool(jnp.issubdtype(dtype, jnp.floating))
    except (TypeError, ValueError, SyntaxError):  # np.dtype(b",") raises SyntaxError
        return False


def floating_array(x: Any, name: str = "x") -> jax.Array:
    """``x`` as a JAX array of a real floating dtype; TypeError names the dtype otherwise.

    Python scalars and lists become the default float dtype; NumPy float64 input stays float64 only
    where x64 is enabled (JAX's usual rule).
    """
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a floating-point array, got the bool {x!r}")
    if isinstance(x, (complex, np.complexfloating, str, bytes)):  # before jnp.asarray casts it
        raise TypeError(f"{name} must be a floating-point array, got {type(x).__name__} {x!r}")
    if isinstance(x, (int, float)):
        x = float(x)
    try:
        with warnings.catch_warnings():  # NumPy's deprecation of the 'a' alias for [["a"]]
            warnings.simplefilter("ignore", DeprecationWarning)
            arr = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a floating-point array, got {type(x).__name__}: {err}"
        ) from err
    if not is_floating_dtype(arr.dtype):
        raise TypeError(
            f"{name} must have a real floating-point dtype (float16, bfloat16, float32, float64, "
            f"...), got dtype {arr.dtype}"
        )
    return arr


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """A single axis as a non-negative int; ValueError if it is out of range for ``ndim``."""
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got the bool {axis!r}")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(axis).__name__} {axis!r}") from None
    if ndim == 0:
        raise ValueError(f"{name}={axis} is out of range: the input is a scalar (0 dimensions)")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is out of range for an input with {ndim} dimensions "
            f"(valid: {-ndim}..{ndim - 1})"
        )
    return axis % ndim


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; TypeError/ValueError naming it otherwise."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got the bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def finite_float(value: Any, name: str, *, positive: bool = False, nonzero: bool = False) -> float:
    """``value`` as a finite Python float (optionally > 0 or != 0); raises naming it otherwise.

    Python and NumPy real scalars and 0-d arrays are accepted; bools and strings are not
    (``float("2")`` would otherwise take ``"2"`` for a number).
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got the bool {value!r}")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
        ) from None
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    if positive and out <= 0:
        raise ValueError(f"{name} must be > 0, got {out}")
    if nonzero and out == 0:
        raise ValueError(f"{name} must be non-zero, got {out}")
    return out


def strict_bool(value: Any, name: str) -> bool:
    """``value`` as a bool; only ``True``/``False`` (and NumPy's bools) are accepted.

    ``keepdims="no"`` or ``resume=0`` would otherwise be taken by their truthiness.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def bounded_int(value: Any, name: str, minimum: int, maximum: int, why: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]``; NumPy integers accepted.

    ``why`` says where the upper bound comes from (for instance the memory it would take); it is
    appended to the message.
    """
    out = positive_int(value, name, minimum)
    if out > maximum:
        raise ValueError(
            f"{name}={out} is too large: at most {maximum}{f' ({why})' if why else ''}"
        )
    return out


def format_bytes(n: float) -> str:
    """``n`` bytes for a person: ``'1.5 GiB'``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def memory_limit() -> int:
    """Bytes one allocation derived from user input may take: the host's physical memory.

    A bound checked before anything reaches NumPy or XLA turns a late out-of-memory (or an
    aborted interpreter) into a ``ValueError`` naming the argument. The default device's own
    limit is used where it is smaller and known (GPU/TPU ``memory_stats``).
    """
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        limit = 2**40
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            limit = min(limit, int(stats["bytes_limit"]))
    except Exception:  # a backend without memory statistics
        pass
    return int(limit)


def check_memory(nbytes: float, name: str, value: Any, what: str = "", limit: int | None = None):
    """Raise ``ValueError`` if ``nbytes`` (derived from argument ``name`` = ``value``) exceeds
    the memory limit (:func:`memory_limit` unless ``limit`` is given)."""
    limit = memory_limit() if limit is None else limit
    if not nbytes <= limit:
        raise ValueError(
            f"{name}={value!r} needs about {format_bytes(nbytes)}{f' for {what}' if what else ''}, "
            f"more than the {format_bytes(limit)} available"
        )


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def check_elementwise(
    fn: Any,
    name: str,
    dtype: Any,
    derivatives: int = 0,
    *,
    shape: tuple[int, ...] = (2, 3),
    on: str | None = None,
    keep: str = "the input's",
) -> None:
    """Raise unless ``fn`` maps a ``dtype`` array to one of the same shape and dtype.

    The probe is ``jax.eval_shape`` on a ``shape`` array (traced, never compiled or run), of
    ``fn`` and then of its first ``derivatives`` forward-mode derivatives (``jax.jvp`` with a
    tangent of ones, as :func:`stabkit.derivative` takes them): a callable that returns a scalar
    or another shape, changes the dtype, cannot be traced or differentiated would otherwise fail
    deep inside jax (``dot_general``, ``scan``) without naming ``name``, or worse, run (an int32
    activation was read as zeros). ``on`` says what the probe stands for in the messages (for
    example the layer's pre-activations), ``keep`` whose dtype must be kept. Call it inside
    ``jax.enable_x64`` for float64. Elementwise-ness itself is not checked (that needs values).

    Raises:
        ValueError: the output's shape differs from the input's.
        TypeError: the output's dtype differs, is not an array, or tracing ``fn`` raised.
    """
    dtype = jnp.dtype(dtype)
    shape = tuple(shape)
    probe = jax.ShapeDtypeStruct(shape, dtype)
    on = f"a {dtype} array of shape {shape}" if on is None else on
    f = lambda v: fn(v)  # a lambda: eval_shape needs a weak reference (ufuncs)
    for order in range(derivatives + 1):
        what = "it" if order == 0 else f"its derivative of order {order}"
        try:
            out = jax.eval_shape(f, probe)
        except Exception as err:  # whatever the user's callable raises while traced
            raise TypeError(
                f"{name} {fn!r} failed on {on}"
                f"{' in its forward-mode derivative' if order else ''}: {_first_line(err)} (it "
                "must be a JAX-traceable elementwise function)"
            ) from err
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise TypeError(
                f"{name} {fn!r} must return an array shaped like its input; on {on} {what} "
                f"returned {type(out).__name__}"
            )
        if out.shape != shape:
            raise ValueError(
                f"{name} {fn!r} must act elementwise (the output shaped like the input): on "
                f"{on} {what} returned shape {tuple(out.shape)}"
            )
        if out.dtype != dtype:
            raise TypeError(
                f"{name} {fn!r} must keep {keep} dtype: on a {dtype} array {what} returned "
                f"dtype {out.dtype}"
            )
        f = (lambda g: lambda v: jax.jvp(g, (v,), (jnp.ones_like(v),))[1])(f)


def check_initializer(init: Any, name: str, key: Any, shape: tuple[int, ...], dtype: Any) -> None:
    """Raise unless ``init(key, shape, dtype)`` gives an array of that shape and dtype.

    Traced with ``jax.eval_shape`` (nothing compiled or run), so a wrong initializer callable is
    named here, not deep inside a vmapped draw.

    Raises:
        TypeError: calling it raised, or it returned something that is not an array.
        ValueError: it returned another shape or dtype.
    """
    dtype, shape = jnp.dtype(dtype), tuple(shape)
    call = f"init(key, {shape}, {dtype.name})"
    try:
        out = jax.eval_shape(lambda k: init(k, shape, dtype), key)
    except Exception as err:  # whatever the user's callable raises while traced
        raise TypeError(
            f"{name} {init!r} failed on {call}: {_first_line(err)} (it must be an init(key, "
            "shape, dtype) callable like jax.nn.initializers')"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"{name} {init!r} must return an array; {call} returned {type(out).__name__}"
        )
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(
            f"{name}: the initializer returned shape {tuple(out.shape)} dtype {out.dtype}, "
            f"expected {shape} {dtype.name} ({call})"
        )


# ------------------------------------------------------------------------ real parameters and grids
#
# The theory's validators (stabkit.theory and stabkit.sweeps.theory_comparison):
# types (real numbers; no strings, bools, None, complex or ragged lists), values (a NaN or inf
# parameter is a user error, never a result: ValueError saying NaN / inf) and broadcasting (the
# error names every argument and its shape).

#: Lengths and depths are bounded by lax.scan / lax.map's int32 trip counts.
#: The largest int32: the bound of every int32 counter, seed and step (one home).
INT32_MAX = 2**31 - 1
#: The smallest normal float64: the absolute floor of the fixed-point step test, and the smallest
#: non-zero parameter (XLA:CPU reads subnormal float64 inputs as 0).
_TINY = float(np.finfo(np.float64).tiny)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(x: float) -> str:
    """A value for an error message: NaN and inf spelled out."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def _check_int(value: Any, name: str, why: str) -> int:
    """An int in [1, 2^31 - 1] (NumPy integers welcome); ``why`` explains the upper bound."""
    return bounded_int(value, name, 1, INT32_MAX, why)


def _real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array; TypeError for anything that is not real numbers."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or array, got the bool {value!r}")
    if value is None or isinstance(value, (str, bytes, dict, set, frozenset)):
        raise TypeError(
            f"{name} must be a real number or array, got {type(value).__name__} {_short(value)}"
        )
    if isinstance(value, int):  # beyond float64 NumPy would make an object array
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{name} must be finite, got the int {_short(value)}") from None
    try:
        raw = np.asarray(value)
    except Exception as err:  # ragged lists, a traced array, an object refusing conversion
        raise TypeError(
            f"{name} must be a real number or a rectangular array of them, got "
            f"{type(value).__name__} {_short(value)} ({type(err).__name__}: {err})"
        ) from None
    if raw.dtype.kind not in "iuf" and not is_floating_dtype(raw.dtype):
        kind = {"b": "bools", "c": "complex numbers", "U": "strings", "S": "bytes"}
        raise TypeError(
            f"{name} must hold real numbers, got an array of dtype {raw.dtype}"
            f" ({kind.get(raw.dtype.kind, 'not numbers')}): {_short(value)}"
        )
    return raw.astype(np.float64)


def _check_grid(value: Any, name: str, *, lo: float, closed: bool = True, hi=None) -> np.ndarray:
    """``value`` as a non-empty float64 array in [lo, hi] (or (lo, hi] if not closed).

    NaN and inf are refused (a parameter, not a result): the message says which and where.
    """
    arr = _real_array(value, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); give at least one value")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (arr < lo if closed else arr <= lo)
        if hi is not None:
            bad |= arr > hi
    if bad.any():
        flat = np.flatnonzero(bad.ravel())
        first = float(arr.flat[int(flat[0])])
        where = ""
        if arr.ndim:
            index = tuple(int(i) for i in np.unravel_index(int(flat[0]), arr.shape))
            where = f" at index {index} ({flat.size} bad of {arr.size} entries, shape {arr.shape})"
        if hi is not None:
            rng = f" and in [{lo:g}, {hi:g}]"
        elif lo == -math.inf:
            rng = ""
        else:
            rng = f" and >= {lo:g}" if closed else f" and > {lo:g}"
        raise ValueError(f"{name} must be finite{rng}, got {_describe(first)}{where}")
    subnormal = (arr != 0) & (np.abs(arr) < _TINY)
    if subnormal.any():  # XLA:CPU reads subnormal float64 inputs as 0: a silently wrong answer
        first = float(arr.flat[int(np.flatnonzero(subnormal.ravel())[0])])
        raise ValueError(
            f"{name} must be 0 or at least {_TINY:.4g} in magnitude (the smallest normal "
            f"float64; XLA:CPU reads subnormal inputs as 0), got {first!r}"
        )
    return arr


def _check_scalar(value: Any, name: str, **kwargs) -> float:
    """A single finite real number (a 0-d array or NumPy scalar included); see _check_grid."""
    arr = _check_grid(value, name, **kwargs)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a single number, got an array of shape {arr.shape}")
    return float(arr)


def _broadcast_shape(grids: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The broadcast shape of the named arrays; a ValueError naming the two that clash."""
    try:
        return tuple(int(n) for n in np.broadcast_shapes(*(a.shape for a in grids.values())))
    except ValueError:
        pass
    items = list(grids.items())
    shapes = ", ".join(f"{n} {a.shape}" for n, a in items)
    for i, (n1, a1) in enumerate(items):
        for n2, a2 in items[i + 1 :]:
            try:
                np.broadcast_shapes(a1.shape, a2.shape)
            except ValueError:
                raise ValueError(
                    f"{n1} (shape {a1.shape}) and {n2} (shape {a2.shape}) do not broadcast "
                    f"against each other (NumPy rules: trailing dimensions equal or 1); "
                    f"shapes: {shapes}"
                ) from None
    raise AssertionError(f"no clashing pair among {shapes}")  # pragma: no cover


# ------------------------------------------------ list values (a sweep's axes)


def is_scalar(value: Any) -> bool:
    """One value (not a container of values): a number, string, dtype, callable or 0-d array."""
    return (
        value is None
        or isinstance(value, (str, bytes, numbers.Number, np.generic, np.dtype))
        or callable(value)
        or (isinstance(value, np.ndarray) and value.ndim == 0)
    )


def _scalar_value(v: Any) -> Any:
    """A NumPy scalar or 0-d array as its NumPy scalar; anything else unchanged."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v[()]
    return v


def int_values(name: str, minimum: int, maximum: int = INT32_MAX) -> Callable[[Any], int]:
    """A converter of one value of a list ``name`` (an axis) to an int in [minimum, maximum]."""

    def convert(v: Any) -> int:
        v = _scalar_value(v)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} values must be ints, got {type(v).__name__} {_short(v)}")
        if not minimum <= int(v) <= maximum:
            raise ValueError(f"{name} values must be in [{minimum}, {maximum}], got {v}")
        return int(v)

    return convert


def real_values(name: str, nonnegative: bool, maximum: float = math.inf) -> Callable[[Any], float]:
    """A converter of one value of a list ``name`` to a finite float (>= 0, <= maximum)."""

    def convert(v: Any) -> float:
        v = _scalar_value(v)
        real = isinstance(v, (int, float, np.integer, np.floating)) or (
            isinstance(v, np.generic) and is_floating_dtype(v.dtype)  # bfloat16, float8
        )
        if isinstance(v, (bool, np.bool_)) or not real:
            raise TypeError(
                f"{name} values must be real numbers, got {type(v).__name__} {_short(v)}"
            )
        try:
            f = float(v)
        except OverflowError:  # an int beyond float64
            f = math.inf
        if not math.isfinite(f) or (nonnegative and f < 0) or f > maximum:
            kind = "finite and >= 0" if nonnegative else "finite"
            if maximum < math.inf:
                kind = f"finite and in [0, {maximum:g}]"
            raise ValueError(f"{name} values must be {kind}, got {_describe(f)}")
        return f

    return convert


def choice(value: Any, name: str, valid: tuple) -> str:
    """``value`` if it is one of the names ``valid``."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be one of {', '.join(valid)}, got {type(value).__name__} {_short(value)}"
        )
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return str(value)
