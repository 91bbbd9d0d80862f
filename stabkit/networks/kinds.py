"""Blocks by name, :func:`block`, and the user's own, :func:`user_block`.

The kinds:

* ``"dense"``: ``phi(h W + b)``, today's MLP layer;
* ``"residual"``: ``h + alpha * F(h)`` with ``F`` the MLP ``phi(h W1 + b1) W2 + b2``
  (``branch="mlp"``, the default) or one dense layer (``branch="dense"``); ``alpha`` is data
  (1, ``1/sqrt(depth)``, 0 for ReZero/SkipInit with ``learnable_alpha=True``), ``fixup=True``
  zeroes the branch's last layer;
* ``"attention"``: multi-head softmax self-attention over a sequence axis
  (:mod:`stabkit.networks.attention`), residual by default;
* ``"conv1d"``, ``"conv2d"``: circular convolutions (:mod:`stabkit.networks.conv`).

Each takes ``norm`` (``None``, ``"layer"``, ``"rms"``, ``"batch"``) and ``norm_position``
(``"pre"``, ``"post"``; ``"inner"`` for single-layer branches), ``residual`` to override the
kind's default, ``fixup`` and ``learnable_alpha``. ``dense``, ``residual`` and ``attention``
take ``float8`` (``"none"``, ``"current"``, ``"delayed"`` or a
:class:`stabkit.precision.Float8Recipe`): their weight matrices' products in float8
(:mod:`stabkit.precision.float8`); convolutions and user blocks refuse it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from stabkit._checks import _short, choice, strict_bool
from stabkit.activations import get_activation
from stabkit.networks.blocks import BASE_HYPER, NORM_POSITIONS, Block, Branch
from stabkit.networks.dense import dense_branch
from stabkit.networks.norms import NORMS
from stabkit.precision.float8 import Float8Recipe, as_float8_recipe

__all__ = ["block", "block_names", "user_block"]

#: The kinds whose branch has matrix products that float8 applies to.
FLOAT8_KINDS = ("attention", "dense", "residual")

_DEFAULT_RESIDUAL = {
    "dense": False,
    "residual": True,
    "attention": True,
    "conv1d": False,
    "conv2d": False,
}


def block_names() -> tuple[str, ...]:
    """The built-in block kinds.

    Examples:
        >>> block_names()
        ('attention', 'conv1d', 'conv2d', 'dense', 'residual')
    """
    return tuple(sorted(_DEFAULT_RESIDUAL))


def _check_float8(kind: str, float8: Any) -> Float8Recipe | None:
    """``float8`` as a validated recipe (None stays None); ValueError on a kind without one."""
    if float8 is None:
        return None
    if kind not in FLOAT8_KINDS:
        what = "a convolution" if kind.startswith("conv") else "the user's own function"
        raise ValueError(
            f"float8={float8!r} does not apply to a {kind!r} block: its branch is {what}, not "
            f"a matrix product that float8 routes through float8_matmul; float8 is for the "
            f"kinds {', '.join(FLOAT8_KINDS)} (use float8=None here)"
        )
    return as_float8_recipe(float8, "float8")


def _branch(kind: str, activation: Any, options: dict, float8: Float8Recipe | None) -> Branch:
    phi = get_activation(activation)
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "phi")
    if kind == "dense":
        _no_options(kind, options)
        return dense_branch(phi, name, float8=float8)
    if kind == "residual":
        branch = choice(options.pop("branch", "mlp"), "branch", ("mlp", "dense"))
        expansion = options.pop("expansion", 1)
        _no_options(kind, options)
        layers = 2 if branch == "mlp" else 1
        return dense_branch(phi, name, layers=layers, expansion=expansion, float8=float8)
    if kind == "attention":
        from stabkit.networks.attention import attention_branch

        return _call(
            attention_branch, kind, phi=phi, activation_name=name, float8=float8, **options
        )
    from stabkit.networks.conv import conv_branch

    return _call(conv_branch, kind, phi=phi, activation_name=name, ndim=int(kind[-2]), **options)


def _call(factory: Callable, kind: str, **options) -> Branch:
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = sorted(set(params) - {"phi", "activation_name", "ndim", "float8"})
        raise TypeError(f"block {kind!r} has no option {unknown[0]!r}; its options: {valid}")
    return factory(**options)


def _no_options(kind: str, options: dict) -> None:
    if options:
        raise TypeError(f"block {kind!r} has no option {sorted(options)[0]!r}")


def _wrap(
    kind: str,
    branch: Branch,
    norm: Any,
    norm_position: Any,
    residual: bool,
    fixup: Any,
    learnable_alpha: Any,
) -> Block:
    if norm is not None:
        norm = choice(norm, "norm", tuple(NORMS))
    norm_position = choice(norm_position, "norm_position", NORM_POSITIONS)
    if norm_position == "inner" and norm is not None and not branch.inner:
        raise ValueError(
            f"norm_position='inner' needs a branch of one linear map and an activation; the "
            f"{kind!r} block's branch ({branch.name}) has no such place; use 'pre' or 'post'"
        )
    residual = strict_bool(residual, "residual")
    fixup = strict_bool(fixup, "fixup")
    learnable_alpha = strict_bool(learnable_alpha, "learnable_alpha")
    if learnable_alpha and not residual:
        raise ValueError("learnable_alpha=True needs residual=True (alpha scales the branch)")
    return Block(kind, branch, norm, norm_position, residual, fixup, learnable_alpha)


def block(
    kind: str,
    *,
    activation: Any = "relu",
    norm: str | None = None,
    norm_position: str = "pre",
    residual: bool | None = None,
    fixup: bool = False,
    learnable_alpha: bool = False,
    float8: Float8Recipe | str | None = None,
    **options: Any,
) -> Block:
    """A built-in block by kind (see the module docstring), ready for :func:`stabkit.net_init`.

    Args:
        kind: one of :func:`block_names`.
        activation: a name or an elementwise callable (attention uses it in its MLP, if any).
        norm: ``None`` (default), ``"layer"``, ``"rms"`` or ``"batch"``.
        norm_position: ``"pre"`` (default), ``"post"`` or ``"inner"``.
        residual: a skip connection ``h + alpha * F``; default: True for ``residual`` and
            ``attention``, False otherwise.
        fixup: zero the branch's last layer at initialization.
        learnable_alpha: make ``alpha`` a trained parameter per block.
        float8: ``None`` (default: plain products), ``"none"``, ``"current"``, ``"delayed"`` or a
            :class:`stabkit.precision.Float8Recipe` (a name means ``float8_recipe(name)``): each
            weight matrix's product through :func:`stabkit.precision.float8_matmul`, its state
            at ``params["branch"]["float8"][<weight name>]``, and the taps
            ``float8_underflow``/``float8_overflow``. ``dense``, ``residual`` and ``attention``
            only.
        **options: the kind's own (``residual``: ``branch``, ``expansion``; ``attention``:
            ``heads``, ``qk_norm``, ``causal``, ``mlp``, ``expansion``; ``conv1d``/``conv2d``:
            ``kernel_size``, ``delta_orthogonal``). Equal arguments give the same Block object,
            so its compilations are shared.

    Raises:
        ValueError: an unknown kind, norm or position; ``learnable_alpha`` without a skip;
            ``float8`` on a convolution or an unknown scaling name.
        TypeError: an option the kind does not have; a non-bool flag; a ``float8`` that is not
            a name or a recipe.

    Examples:
        >>> b = block("residual", activation="tanh", norm="layer")
        >>> b.describe()
        'mlp tanh (x1), residual, layer norm (pre)'
        >>> block("dense", float8="delayed").describe()
        'dense relu, float8 delayed'
    """
    kind = choice(kind, "kind", block_names())
    residual = _DEFAULT_RESIDUAL[kind] if residual is None else residual
    float8 = _check_float8(kind, float8)
    args = (kind, activation, norm, norm_position, residual, fixup, learnable_alpha, float8)
    try:
        key = (*args, tuple(sorted(options.items())))
        hash(key)
    except TypeError:  # an unhashable option or activation: a new Block (it compiles anew)
        return _make(*args, options)
    return _cached_block(key)


def _make(kind, activation, norm, norm_position, residual, fixup, learnable_alpha, float8, options):
    branch = _branch(kind, activation, dict(options), float8)
    return _wrap(kind, branch, norm, norm_position, residual, fixup, learnable_alpha)


@functools.lru_cache(maxsize=256)
def _cached_block(key: tuple) -> Block:
    # The same Block object for the same arguments: jit caches keyed on it (net_init, net_apply,
    # trace, the sweep's kernels) hit instead of compiling again.
    return _make(*key[:-1], dict(key[-1]))


def user_block(
    init: Callable[..., Any],
    apply: Callable[..., Any],
    *,
    spatial: int | Sequence[int] = 0,
    hyper: dict[str, float] | None = None,
    norm: str | None = None,
    norm_position: str = "pre",
    residual: bool = False,
    fixup: bool = False,
    learnable_alpha: bool = False,
    float8: Any = None,
) -> Block:
    """The user's own block from a pure-JAX pair.

    ``init(key, width, dtype, **hyper) -> params`` (any pytree of arrays) and
    ``apply(params, h, **hyper) -> h'`` (or ``(h', taps)`` with ``taps`` a dict of scalars) with
    ``h`` and ``h'`` of shape ``(batch, *spatial, width)`` and the same dtype. The numeric
    hyper-parameters named in ``hyper`` (with their defaults) are traced as data: one compilation
    serves every value. The stabkit wrapper adds ``norm``, ``residual`` etc. around it as for a
    built-in block. :func:`stabkit.net_apply` checks (with ``jax.eval_shape``, before compiling)
    that ``apply`` keeps its input's shape and dtype.

    Args:
        init, apply: the pair.
        spatial: the number (or numbers) of axes between batch and width it accepts; default 0.
        hyper: the hyper-parameter names ``init``/``apply`` take as keywords, with defaults.
        float8: must be ``None``: the user's products are not routed through
            :func:`stabkit.precision.float8_matmul` (call it inside ``apply`` instead).

    Raises:
        TypeError: a non-callable ``init``/``apply``, a non-numeric default.
        ValueError: ``float8`` other than ``None``.
        ValueError: a hyper name that shadows a base one with another meaning is allowed only
            if it is a base hyper-parameter (``scale``, ``bias_std``, ``alpha``, ``eps``).

    Examples:
        >>> def init(key, width, dtype, scale):
        ...     return {"w": scale * jax.random.normal(key, (width, width), dtype) / width**0.5}
        >>> def apply(params, h, scale):
        ...     return jnp.tanh(h @ params["w"])
        >>> b = user_block(init, apply, hyper={"scale": 1.0}, residual=True)
        >>> b.kind, b.residual
        ('user', True)
    """
    _check_float8("user", float8)
    for fn, name in ((init, "init"), (apply, "apply")):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__} {_short(fn)}")
    spatial = (spatial,) if isinstance(spatial, int) else tuple(spatial)
    if not spatial or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in spatial):
        raise ValueError(f"spatial must be a non-negative int or ints, got {spatial!r}")
    hyper = {} if hyper is None else dict(hyper)
    for name, value in hyper.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"hyper names must be identifiers, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"hyper[{name!r}] must be a number (it is traced), got {value!r}")
    base = dict(BASE_HYPER)
    extra = tuple((k, float(v)) for k, v in hyper.items() if k not in base)
    names = tuple(hyper)

    def branch_init(key, width, dtype, init_name, h):
        del init_name
        return init(key, width, dtype, **{k: h[k] for k in names})

    def branch_apply(params, u, h, inner):
        del inner
        out = apply(params, u, **{k: h[k] for k in names})
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            return out[0], {k: jax.numpy.asarray(v, "float32") for k, v in out[1].items()}
        return out, {}

    label = f"user {getattr(apply, '__name__', 'apply')}"
    branch = Branch(branch_init, branch_apply, spatial=spatial, hyper=extra, name=label)
    return _wrap("user", branch, norm, norm_position, residual, fixup, learnable_alpha)
