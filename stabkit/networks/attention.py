"""Multi-head softmax self-attention as a block branch, optionally with a parallel MLP.

On a sequence ``u`` of shape ``(batch, seq, width)`` with ``heads`` heads of ``d = width / heads``
features, per head ``h``:

.. math::

    Q = u W_Q,\\quad K = u W_K,\\quad V = u W_V,\\qquad
    S_{ij} = \\frac{Q_i \\cdot K_j}{\\sqrt d}\\ \\to\\ c \\tanh(S_{ij} / c)\\ (c > 0),\\qquad
    A = \\operatorname{softmax}_j(S),\\qquad F(u) = [A_1 V_1, \\dots, A_H V_H]\\, W_{\\text{last}},

with the causal mask (``j <= i``) if asked for. Options:

* ``qk_norm``: a layer norm of each head's queries and keys over its ``d`` features, with gains
  ``q_gain``/``k_gain`` (ones, shared by the heads, no bias), before the logits (Dehghani et al.
  2023, ViT-22B: it keeps the logits from growing, the training instability it was made for);
* the hyper-parameter ``softcap`` ``c`` (traced, 0 = off): the logits become ``c tanh(S / c)``,
  bounded by ``c`` (Gemma 2);
* ``mlp=True``: the *parallel* transformer layer of GPT-J, PaLM and ViT-22B,
  ``F(u) = Attn(u) + phi(u W + b) W_2 + b_last`` (hidden width ``expansion * width``). The two
  output maps are one matmul of the concatenation ``[attention output, phi(u W + b)]`` with
  ``w_last = [[W_O], [W_2]]`` (PaLM's fused form): ``w_last``'s first ``width`` rows are the
  attention's output projection, the next ``expansion * width`` the MLP's second map, each drawn
  with its own fan-in, so Fixup (which zeroes ``w_last`` and ``b_last``) zeroes both branches.

With ``float8`` (a :class:`stabkit.precision.Float8Recipe`) the linear maps (``wq``, ``wk``,
``wv``, ``w_last`` and the MLP's ``w``) go through :func:`stabkit.precision.float8_matmul`, their
states at ``params["float8"][<weight name>]``; the logits and the probabilities-times-values
products stay in the compute dtype, as Transformer Engine keeps them. The branch then taps
``float8_underflow`` and ``float8_overflow`` (the mean over its products of the forward
fractions of ``x`` and ``w``).

There are no biases in the attention's projections (as in PaLM and most recent models). Weights
are drawn with :func:`stabkit.init.scaled_draw` (the named initializer times the traced
multiplier ``hyper["scale"]``).

**Dtypes.** The projections, the logits and the output are computed in the parameters' dtype:
``1/sqrt(d)`` multiplies the queries before the product (as flax's ``dot_product_attention``
does), so in float16 a logit overflows to ``inf`` when its value passes ``finfo.max`` (65504),
the overflow researchers study. The softmax is stabkit's (:func:`stabkit.softmax`, its mask for
the causal one): it is computed in float32 and rounded once, so it never overflows itself; a
``+inf`` or NaN logit makes its row NaN, reported rather than hidden.

**Taps** (in the compute dtype, float32 for 16- and 8-bit formats; reduced over the batch),
besides the block's own:

* ``logit_max`` ``(heads,)``: the largest ``|S_ij|`` (after capping) over batch, queries and the
  unmasked keys; ``inf``/NaN when a logit is;
* ``entropy`` ``(heads,)``: the mean over batch and queries of the attention distribution's
  entropy :math:`-\\sum_j A_{ij} \\log A_{ij}` in nats (``0 log 0 = 0``: masked keys add nothing,
  a NaN logit gives NaN); uniform attention gives ``log(seq)``, ``log(i + 1)`` per query when
  causal; collapsed attention (one key) 0;
* ``rank_residual`` ``()``: Dong et al.'s ``res(u) = ||u - 1 ubar^T||_F / ||u||_F`` of the
  branch's input over the sequence (``ubar`` the token mean, the minimizer over ``x`` of
  ``||u - 1 x^T||_F``), averaged over the batch: 1 for orthogonal zero-mean tokens, 0 once every
  token is the same (rank collapse); 0 for an all-zero input.

References:
    Vaswani et al. (2017), "Attention is all you need".
    Dong, Cordonnier & Loukas (2021), "Attention is not all you need: pure attention loses rank
    doubly exponentially with depth".
    Dehghani et al. (2023), "Scaling vision transformers to 22 billion parameters".
    Gemma Team (2024), "Gemma 2: improving open language models at a practical size".
    Chowdhery et al. (2022), "PaLM: scaling language modeling with pathways".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import positive_int, strict_bool
from stabkit._numerics import compute_dtype
from stabkit.activations import Activation
from stabkit.init import scaled_draws
from stabkit.networks.blocks import Branch
from stabkit.networks.dense import bias_draws, float8_taps, matmul
from stabkit.networks.norms import layer_norm
from stabkit.precision.float8 import Float8Recipe, float8_matmul, float8_meta
from stabkit.stable_softmax import log_softmax, softmax

__all__ = ["attention_branch", "head_size", "rank_residual"]

_PRECISION = jax.lax.Precision.HIGHEST


def head_size(width: int, heads: int) -> int:
    """``width // heads``; ValueError naming both when ``heads`` does not divide ``width``.

    Examples:
        >>> head_size(32, 4)
        8
    """
    if width % heads:
        divisors = [h for h in range(1, width + 1) if width % h == 0]
        raise ValueError(
            f"heads={heads} does not divide width={width}: each head takes width / heads "
            f"features; heads must be one of {divisors} for width={width}"
        )
    return width // heads


def rank_residual(u: jax.Array) -> jax.Array:
    """``||u - 1 ubar^T||_F / ||u||_F`` per example over the sequence axis, in float32 or float64.

    Args:
        u: ``(batch, seq, width)``.

    Returns:
        ``(batch,)`` in ``u``'s compute dtype: 0 for an all-zero example; inf or NaN entries give
        NaN (evidence, not noise). The entries are divided by their largest magnitude first, so
        the squares cannot overflow or underflow while the entries are finite.

    Examples:
        >>> u = jnp.array([[[1.0, 0.0], [-1.0, 0.0]], [[2.0, 3.0], [2.0, 3.0]]])
        >>> rank_residual(u)
        Array([1., 0.], dtype=float32)
    """
    v = u.astype(compute_dtype(u.dtype))
    m = jnp.max(jnp.abs(v), axis=(1, 2), keepdims=True)
    # Divided by sqrt(max) twice, not by max once: XLA computes v / m as v * (1 / m), and 1 / m is
    # subnormal, flushed to 0 on CPU, for m above 2^126 in float32 (see rms_by_sqrt_max).
    r = jnp.sqrt(jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m)))
    v = v / r / r
    centred = v - jnp.mean(v, axis=1, keepdims=True)
    num = jnp.sum(jnp.square(centred), axis=(1, 2))
    den = jnp.sum(jnp.square(v), axis=(1, 2))
    # Double where: 0 / 0 (an all-zero example) is 0, with a zero gradient.
    safe = jnp.where(den > 0, den, jnp.ones_like(den))
    return jnp.where(den > 0, jnp.sqrt(num / safe), jnp.zeros_like(den))


def _softcap(logits: jax.Array, cap: jax.Array) -> jax.Array:
    """``cap * tanh(logits / cap)`` where ``cap > 0``, ``logits`` where ``cap == 0`` (traced)."""
    cap = jnp.asarray(cap, logits.dtype)
    on = cap > 0
    # Double where: logits / 0 is never computed, so the unused branch has no inf or NaN gradient.
    safe = jnp.where(on, cap, jnp.ones_like(cap))
    return jnp.where(on, safe * jnp.tanh(logits / safe), logits)


def _taps(logits: jax.Array, mask: np.ndarray | None, u: jax.Array) -> dict[str, jax.Array]:
    """``logit_max``, ``entropy`` (per head), ``rank_residual``; ``logits``: ``(b, h, q, k)``."""
    s = logits.astype(compute_dtype(logits.dtype))
    valid = np.ones(s.shape[-2:], bool) if mask is None else mask
    logit_max = jnp.max(jnp.where(valid, jnp.abs(s), 0), axis=(0, 2, 3))
    logp = log_softmax(s, axis=-1, where=None if mask is None else mask)
    p = jnp.exp(logp)
    # 0 log 0 = 0 (masked keys, underflowed probabilities); p == 0 is False for NaN, so NaN stays.
    plogp = jnp.where(p == 0, 0.0, p * logp)
    entropy = jnp.mean(-jnp.sum(plogp, axis=-1), axis=(0, 2))
    res = jnp.mean(rank_residual(u)).astype(s.dtype)
    return {"logit_max": logit_max, "entropy": entropy, "rank_residual": res}


def attention_branch(
    phi: Activation,
    activation_name: str,
    *,
    heads: int = 1,
    qk_norm: bool = False,
    causal: bool = False,
    mlp: bool = False,
    expansion: int = 4,
    float8: Float8Recipe | None = None,
) -> Branch:
    """The self-attention branch (see the module docstring) for ``stabkit.networks.block``.

    Reached as ``block("attention", heads=4, qk_norm=True, causal=True, mlp=False)``; the
    hyper-parameter ``softcap`` (default 0, off) is data: ``net_init(..., softcap=30.0)``.

    Args:
        phi: the MLP's activation (used only with ``mlp=True``); activation_name: its name.
        heads: the number of heads; must divide the width (checked when the width is known, at
            :func:`stabkit.net_init`).
        qk_norm: layer-normalize each head's queries and keys (Dehghani et al. 2023).
        causal: position ``i`` attends to positions ``j <= i`` only.
        mlp: add an MLP in parallel (the parallel transformer layer), hidden width
            ``expansion * width``.
        expansion: the MLP's hidden width over ``width`` (only with ``mlp=True``).
        float8: a validated :class:`stabkit.precision.Float8Recipe` for the linear maps, or
            ``None`` (default: plain products); reached as ``block("attention", float8=...)``.

    Returns:
        A :class:`stabkit.networks.Branch` on ``(batch, seq, width)``.

    Raises:
        TypeError: a non-int ``heads``/``expansion``, a non-bool flag.
        ValueError: ``heads`` or ``expansion`` < 1; at init, ``heads`` not dividing ``width``.

    Examples:
        >>> from stabkit.activations import get_activation
        >>> b = attention_branch(get_activation("relu"), "relu", heads=2, causal=True)
        >>> b.name, b.spatial, b.hyper
        ('attention (2 heads, causal)', (1,), (('softcap', 0.0),))
    """
    heads = positive_int(heads, "heads")
    qk_norm = strict_bool(qk_norm, "qk_norm")
    causal = strict_bool(causal, "causal")
    mlp = strict_bool(mlp, "mlp")
    expansion = positive_int(expansion, "expansion")

    def init(key, width, dtype, init, hyper):
        d = head_size(width, heads)
        # One random-number call for every weight, one for the biases (compile time).
        kw, kb = jax.random.split(key)
        hidden = expansion * width
        shapes = [(width, width)] * 4 + ([(width, hidden), (hidden, width)] if mlp else [])
        ws = scaled_draws(kw, shapes, dtype, init=init, scale=hyper["scale"])
        params = {"wq": ws[0], "wk": ws[1], "wv": ws[2]}
        if qk_norm:
            params["q_gain"] = jnp.ones((d,), dtype)
            params["k_gain"] = jnp.ones((d,), dtype)
        if not mlp:
            params["w_last"] = ws[3]
            return with_float8(params)
        b, b_last = bias_draws(kb, [hidden, width], dtype, hyper["bias_std"])
        params["w"], params["b"] = ws[4], b
        # PaLM's fused output: [attention out, phi(u W + b)] @ [[W_O], [W_2]]; each block drawn
        # with its own fan-in, as two separate maps would be.
        params["w_last"] = jnp.concatenate([ws[3], ws[5]], axis=0)
        params["b_last"] = b_last
        return with_float8(params)

    def with_float8(params):
        if float8 is not None:
            names = [k for k in params if k.startswith("w")]
            params["float8"] = {k: float8_meta(float8) for k in names}
        return params

    def apply(params, u, hyper, inner):
        del inner  # no single-layer place for an inner norm (Branch.inner is False)
        if u.ndim != 3:
            raise ValueError(f"attention takes (batch, seq, width) inputs, got shape {u.shape}")
        b, n, width = u.shape
        d = head_size(width, heads)
        stats = []

        def linear(v, key):
            if float8 is None:
                return matmul(v, params[key])
            y, s = float8_matmul(v, params[key], params["float8"][key], float8)
            stats.append(s)
            return y

        def project(key):
            return linear(u, key).reshape(b, n, heads, d)

        q, k, v = project("wq"), project("wk"), project("wv")
        if qk_norm:
            q = layer_norm(q, params["q_gain"], None, hyper["eps"])
            k = layer_norm(k, params["k_gain"], None, hyper["eps"])
        q = q * jnp.asarray(1 / math.sqrt(d), q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION)
        logits = _softcap(logits, hyper["softcap"])
        mask = np.tril(np.ones((n, n), bool)) if causal else None
        p = softmax(logits, axis=-1, where=mask)
        out = jnp.einsum("bhqk,bkhd->bqhd", p, v, precision=_PRECISION).reshape(b, n, width)
        if mlp:
            hidden = phi(linear(u, "w") + params["b"])
            f = linear(jnp.concatenate([out, hidden.astype(out.dtype)], axis=-1), "w_last")
            f = f + params["b_last"]
        else:
            f = linear(out, "w_last")
        taps = _taps(logits, mask, u)
        if float8 is not None:
            taps.update(float8_taps(stats))
        return f.astype(u.dtype), taps

    parts = [f"{heads} head{'s' if heads > 1 else ''}"]
    if causal:
        parts.append("causal")
    if qk_norm:
        parts.append("qk norm")
    if mlp:
        parts.append(f"parallel mlp {activation_name} (x{expansion})")
    if float8 is not None:
        parts.append(f"float8 {float8.scaling}")
    name = f"attention ({', '.join(parts)})"
    return Branch(init, apply, spatial=(1,), hyper=(("softcap", 0.0),), inner=False, name=name)
