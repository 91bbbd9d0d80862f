"""Elementwise activation functions by name, and their derivatives by automatic differentiation.

The note's second cause of vanishing gradients is the activation: backpropagation multiplies the
gradient by :math:`\\phi'(z)` at every layer, and the sigmoid's derivative
:math:`\\sigma'(z) = \\sigma(z)(1 - \\sigma(z)) \\le 1/4` is close to 0 once :math:`|z|` is large,
so a deep sigmoid network's early layers receive almost no gradient; relu's derivative is exactly
1 on its active side.

Every registered activation computes in the input's own dtype (float16 stays float16), as a network
written with ``jax.nn`` would. :func:`derivative` never uses a hand-written formula: it is the
forward-mode derivative of the function itself (a ``jvp`` with a tangent of ones, which for an
elementwise function is the diagonal of the Jacobian), so it holds for any user callable too.

Names (:func:`activation_names`): ``linear``, ``relu``, ``leaky_relu`` (slope 0.01), ``elu``,
``selu``, ``gelu`` (the exact erf form), ``gelu_tanh`` (the tanh approximation), ``tanh``,
``sigmoid``, ``softplus``, ``silu``, ``erf``. One exception to "its own dtype": ``gelu`` of a
float8 input is computed in float32 and rounded once, because XLA:CPU cannot lower ``erfc`` in
the float8 formats.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stabkit._checks import floating_array

__all__ = [
    "activation_names",
    "derivative",
    "get_activation",
    "select_activation",
    "value_and_derivative",
]

Activation = Callable[[jax.Array], jax.Array]


def linear(z: ArrayLike) -> jax.Array:
    """The identity :math:`\\phi(z) = z` (the note's deep linear network)."""
    return jnp.asarray(z)


def _leaky_relu(z: ArrayLike) -> jax.Array:
    return jax.nn.leaky_relu(z, negative_slope=0.01)


def _gelu(z: ArrayLike) -> jax.Array:
    z = jnp.asarray(z)
    if z.dtype.itemsize == 1:
        # XLA:CPU cannot lower erfc in the float8 formats ("failed to legalize chlo.erfc"), so a
        # float8 gelu is computed in float32 and rounded once (the derivative likewise).
        return jax.nn.gelu(z.astype(jnp.float32), approximate=False).astype(z.dtype)
    return jax.nn.gelu(z, approximate=False)


def _gelu_tanh(z: ArrayLike) -> jax.Array:
    return jax.nn.gelu(z, approximate=True)


_REGISTRY: dict[str, Activation] = {
    "linear": linear,
    "relu": jax.nn.relu,
    "leaky_relu": _leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
    "erf": jax.scipy.special.erf,
}


def is_registered(fn: object) -> bool:
    """True if ``fn`` is one of the registered activation functions (not a user callable)."""
    return any(fn is f for f in _REGISTRY.values())


def activation_names() -> tuple[str, ...]:
    """The registered activation names, sorted.

    Examples:
        >>> "sigmoid" in activation_names() and "relu" in activation_names()
        True
    """
    return tuple(sorted(_REGISTRY))


def get_activation(activation: str | Activation) -> Activation:
    """The activation function for a registered name, or a user callable returned unchanged.

    Args:
        activation: a name from :func:`activation_names` or a callable ``phi(z) -> array`` that
            acts elementwise and preserves shape and dtype (not checked: a non-elementwise
            callable makes :func:`derivative` meaningless).

    Returns:
        The callable.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
        TypeError: for anything that is neither a string nor a callable.

    Examples:
        >>> get_activation("relu")(jnp.array([-1.0, 2.0]))
        Array([0., 2.], dtype=float32)
        >>> get_activation("swish")
        Traceback (most recent call last):
        ...
        ValueError: unknown activation 'swish'; valid names: elu, erf, gelu, ...
    """
    if isinstance(activation, str):
        try:
            return _REGISTRY[activation]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; valid names: {', '.join(activation_names())}"
                " (or pass any elementwise callable)"
            ) from None
    if callable(activation):
        return activation
    raise TypeError(
        f"activation must be a name ({', '.join(activation_names())}) or a callable, "
        f"got {type(activation).__name__} {activation!r}"
    )


def value_and_derivative(activation: str | Activation) -> Callable[[ArrayLike], tuple]:
    """A function ``z -> (phi(z), phi'(z))``, the derivative taken elementwise by ``jax.jvp``.

    For an elementwise :math:`\\phi` the Jacobian is diagonal, so one forward-mode product with a
    tangent of ones gives every :math:`\\phi'(z_i)` at the cost of one extra evaluation. Where
    ``jax.nn`` defines the derivative by hand (relu at 0 is 0) that definition is what you get.

    Args:
        activation: a name or an elementwise callable (see :func:`get_activation`).

    Returns:
        A function of a floating array ``z`` of any shape returning two arrays shaped and typed
        like ``z``.

    Examples:
        >>> f = value_and_derivative("tanh")
        >>> y, dy = f(jnp.array([0.0, 1.0]))
        >>> dy
        Array([1.       , 0.4199743], dtype=float32)
    """
    fn = get_activation(activation)

    def value_and_grad_fn(z: ArrayLike) -> tuple[jax.Array, jax.Array]:
        # A derivative needs a floating z: an int32 z would fail inside jax.jvp (its tangent must
        # be float0), naming neither z nor its dtype. Python numbers become floats, as in jnp.
        z = floating_array(z, "z")
        return jax.jvp(fn, (z,), (jnp.ones_like(z),))

    return value_and_grad_fn


def derivative(activation: str | Activation) -> Callable[[ArrayLike], jax.Array]:
    """The elementwise derivative :math:`z \\mapsto \\phi'(z)` of an activation, via ``jax.jvp``.

    Args:
        activation: a name or an elementwise callable (see :func:`get_activation`).

    Returns:
        A function of a floating array ``z`` returning an array of the same shape and dtype;
        an integer or bool ``z`` raises ``TypeError`` naming ``z`` and its dtype (Python numbers
        and lists of floats become float32, as in ``jnp``).

    Examples:
        The sigmoid's derivative peaks at 1/4, at z = 0 (the note's bound):

        >>> derivative("sigmoid")(jnp.array([0.0, 4.0]))
        Array([0.25      , 0.01766273], dtype=float32)
        >>> derivative(lambda z: z**3)(jnp.array([2.0]))
        Array([12.], dtype=float32)
    """
    f = value_and_derivative(activation)
    return lambda z: f(z)[1]


def select_activation(choices: Sequence[str | Activation], index: ArrayLike) -> Activation:
    """An activation chosen among ``choices`` by an integer ``index`` that may be traced data.

    This lets one compiled function serve several activations (a sweep ``vmap`` s over ``index``):
    the choice is a ``lax.switch``, so under ``vmap`` every branch is evaluated and selected, which
    is cheap next to the matrix products. A concrete ``index`` (a Python or NumPy int, or a
    concrete array) is checked on the host; a *traced* index cannot be, and one out of range is
    clamped to ``0..len(choices) - 1`` (``lax.switch``'s rule).

    Args:
        choices: names or callables (see :func:`get_activation`); at least one.
        index: an integer scalar, concrete or traced.

    Returns:
        An elementwise callable ``z -> choices[index](z)``, differentiable like its branches.

    Raises:
        ValueError: ``choices`` is empty or holds an unknown name; a concrete ``index`` outside
            ``0..len(choices) - 1``.
        TypeError: ``choices`` is not a sequence (a single name is not: pass ``[name]``), holds a
            non-callable, or ``index`` is not an integer scalar.

    Examples:
        >>> phi = select_activation(["relu", "tanh"], 1)
        >>> phi(jnp.array([-1.0]))
        Array([-0.7615942], dtype=float32)
        >>> jax.vmap(lambda i: select_activation(["relu", "linear"], i)(-2.0))(jnp.arange(2))
        Array([ 0., -2.], dtype=float32, weak_type=True)
    """
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise TypeError(
            f"choices must be a non-empty sequence of activations (a list of names or callables), "
            f"got {type(choices).__name__} {choices!r}"
        )
    if len(choices) == 0:
        raise ValueError(f"choices must be a non-empty sequence of activations, got {choices!r}")
    fns = tuple(get_activation(c) for c in choices)
    index = _check_index(index, len(fns))
    if len(fns) == 1:
        return fns[0]

    def selected(z: ArrayLike) -> jax.Array:
        return jax.lax.switch(index, fns, jnp.asarray(z))

    return selected


def _check_index(index: Any, n: int) -> jax.Array | int:
    """``index`` as an int32 scalar; a concrete one must lie in ``0..n-1`` (no silent clamp)."""
    if isinstance(index, jax.core.Tracer):
        if index.ndim != 0 or not jnp.issubdtype(index.dtype, jnp.integer):
            raise TypeError(
                f"index must be an integer scalar, got {index.dtype}{list(index.shape)}"
            )
        return index
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(f"index must be an integer scalar, got the bool {index!r}")
    try:
        value = operator.index(index)
    except TypeError:
        arr = np.asarray(index) if isinstance(index, (np.ndarray, jax.Array)) else None
        if arr is None or arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
            described = f"{arr.dtype}{list(arr.shape)}" if arr is not None else type(index).__name__
            raise TypeError(f"index must be an integer scalar, got {described} {index!r}") from None
        value = int(arr)
    if not 0 <= value < n:
        raise ValueError(f"index={value} is out of range for {n} choices (valid: 0..{n - 1})")
    return jnp.asarray(value, jnp.int32)
