"""Input validation shared by every public function.

Every check raises ``TypeError`` or ``ValueError`` whose message names the argument, the bad value
and what would have been valid. Checks run on static information only (shapes, dtypes, Python
values), so they cost nothing under ``jit`` and never force a device-to-host transfer.
"""

from __future__ import annotations

import operator
import os
import warnings
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
    except TypeError:
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
