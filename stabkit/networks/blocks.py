"""A network's repeated unit: a :class:`Block` wraps a :class:`Branch` with a skip and a norm.

Every block computes, on activations ``h`` of shape ``(batch, *spatial, width)``,

.. math::

    u = N(h)\\ (\\text{pre-norm}),\\qquad f = F(u),\\qquad
    h' = h + \\alpha f\\ (\\text{residual})\\ \\text{or}\\ f,\\qquad h' \\leftarrow N(h')\\
    (\\text{post-norm}),

where ``F`` is the branch (a dense layer, a dense-activation-dense MLP, multi-head attention, a
convolution or the user's own function) and ``N`` is a layer, RMS or batch norm
(:mod:`stabkit.networks.norms`). ``norm_position="inner"`` puts the norm inside a single-layer
branch, between its linear map and its activation: ``phi(N(u W))``, the placement whose gradient
explosion Yang et al. (2019) derive for batch norm.

A block is static (hashable, compiled into the program); its numeric hyper-parameters (the
weight multiplier ``scale``, ``bias_std``, the residual scale ``alpha``, the norm's ``eps`` and the
branch's own, such as attention's ``softcap``) are *data*, a dict of scalars carried by the
network's parameters, so one compilation serves a sweep over them. Besides its output a block
returns *taps*: statistics from inside it, reduced over the batch (``branch_rms``, the RMS of
``f``; ``normalized_rms``, the RMS of the norm's output; attention adds per-head logit maxima
and entropies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from stabkit._numerics import compute_dtype, rms_by_sqrt_max
from stabkit.networks.norms import NORMS, batch_norm, layer_norm, rms_norm

__all__ = ["NORM_POSITIONS", "Block", "Branch", "tap_rms"]

NORM_POSITIONS = ("pre", "post", "inner")

#: The hyper-parameters every block has, and their defaults.
BASE_HYPER = (("scale", 1.0), ("bias_std", 0.0), ("alpha", 1.0), ("eps", 1e-6))


class Branch(NamedTuple):
    """The function ``F`` of a block, as an init/apply pair.

    Attributes:
        init: ``init(key, width, dtype, init, hyper) -> params``: ``init`` a stabkit initializer
            name (static), ``hyper`` the dict of numeric hyper-parameters (traced scalars:
            ``hyper["scale"]`` multiplies the named initializer's draw, see
            :func:`stabkit.init.scaled_draw`). The last linear map's weights are named ``w_last``
            (its bias ``b_last``): Fixup zeroes them.
        apply: ``apply(params, u, hyper, inner) -> (f, taps)`` with ``u`` and ``f`` of shape
            ``(batch, *spatial, width)``; ``inner`` is a function to apply between the first
            linear map and the activation (the identity unless the block's norm is ``"inner"``);
            ``taps`` a dict of float32 statistics already reduced over the batch.
        spatial: the numbers of axes between batch and width it accepts, e.g. ``(0,)``.
        hyper: its own numeric hyper-parameters and their defaults.
        inner: whether it supports ``norm_position="inner"``.
        name: a short description, for errors and reprs.
    """

    init: Callable[..., Any]
    apply: Callable[..., tuple[jax.Array, dict]]
    spatial: tuple[int, ...]
    hyper: tuple[tuple[str, float], ...] = ()
    inner: bool = False
    name: str = "branch"


def tap_rms(v: jax.Array) -> jax.Array:
    """The RMS of all of ``v``'s entries in its compute dtype: a tap's usual statistic."""
    v = jnp.asarray(v)
    return rms_by_sqrt_max(v.astype(compute_dtype(v.dtype)))


def _normalize(norm: str, p: dict, u: jax.Array, eps) -> jax.Array:
    if norm == "layer":
        return layer_norm(u, p["gain"], p["bias"], eps)
    if norm == "rms":
        return rms_norm(u, p["gain"], eps)
    return batch_norm(u, p["gain"], p["bias"], eps)


class Block(NamedTuple):
    """A branch with its skip connection and norm (see the module docstring); static.

    Build one with :func:`stabkit.networks.block` (or :func:`stabkit.networks.user_block`).

    Attributes:
        kind: ``"dense"``, ``"residual"``, ``"attention"``, ``"conv1d"``, ``"conv2d"`` or
            ``"user"``.
        branch: the :class:`Branch` ``F``.
        norm: ``None``, ``"layer"``, ``"rms"`` or ``"batch"``.
        norm_position: ``"pre"``, ``"post"`` or ``"inner"``.
        residual: ``h + alpha * F`` when True, ``F`` alone otherwise.
        fixup: zero the branch's last layer at initialization (Zhang et al. 2019's Fixup; with
            ``residual`` every block starts as the identity).
        learnable_alpha: ``alpha`` is a parameter of each block (initialized to the hyper
            ``alpha``: 0 gives ReZero/SkipInit), trained like the weights; otherwise it is data.
    """

    kind: str
    branch: Branch
    norm: str | None = None
    norm_position: str = "pre"
    residual: bool = False
    fixup: bool = False
    learnable_alpha: bool = False

    @property
    def hyper_defaults(self) -> dict[str, float]:
        return dict(BASE_HYPER + tuple(self.branch.hyper))

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.branch.spatial

    def describe(self) -> str:
        parts = [self.branch.name]
        if self.residual:
            parts.append("residual" + (" (learnable alpha)" if self.learnable_alpha else ""))
        if self.norm is not None:
            parts.append(f"{self.norm} norm ({self.norm_position})")
        if self.fixup:
            parts.append("fixup")
        return ", ".join(parts)

    def init(self, key: jax.Array, width: int, dtype: Any, init: str, hyper: dict) -> dict:
        """One block's parameters: ``{"branch": ..., "norm": {...}?, "alpha": ()?}``."""
        params = {"branch": self.branch.init(key, width, dtype, init, hyper)}
        if self.fixup:
            params["branch"] = {
                k: (jnp.zeros_like(v) if k in ("w_last", "b_last") else v)
                for k, v in params["branch"].items()
            }
        if self.norm is not None:
            norm = {"gain": jnp.ones((width,), dtype)}
            if NORMS[self.norm]:
                norm["bias"] = jnp.zeros((width,), dtype)
            params["norm"] = norm
        if self.residual and self.learnable_alpha:
            params["alpha"] = jnp.asarray(hyper["alpha"], dtype)
        return params

    def apply(self, params: dict, h: jax.Array, hyper: dict) -> tuple[jax.Array, dict]:
        """The block's output for ``h`` and its taps (under ``jax.named_scope(kind)``, so that
        :func:`stabkit.inspect` names the block and its parts: ``norm``, ``branch``)."""
        with jax.named_scope(self.kind):
            return self._apply(params, h, hyper)

    def _apply(self, params: dict, h: jax.Array, hyper: dict) -> tuple[jax.Array, dict]:
        norm, taps = self.norm, {}
        eps = hyper["eps"]

        def normalize(v):
            with jax.named_scope(f"{norm}_norm"):
                out = _normalize(norm, params["norm"], v, eps)
            taps["normalized_rms"] = tap_rms(out)
            return out

        u = normalize(h) if norm is not None and self.norm_position == "pre" else h
        inner = normalize if norm is not None and self.norm_position == "inner" else _identity
        with jax.named_scope("branch"):
            f, branch_taps = self.branch.apply(params["branch"], u, hyper, inner)
        taps["branch_rms"] = tap_rms(f)
        taps.update(branch_taps)
        if self.residual:
            alpha = params["alpha"] if self.learnable_alpha else hyper["alpha"]
            out = h + jnp.asarray(alpha, h.dtype) * f
        else:
            out = f
        if norm is not None and self.norm_position == "post":
            taps["pre_norm_rms"] = tap_rms(out)
            out = normalize(out)
        return out.astype(h.dtype), taps


def _identity(v):
    return v
