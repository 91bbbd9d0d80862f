"""A generated next-token task with a known optimum: sequences of a random sparse Markov chain.

:func:`markov_sequences` draws a random order-``k`` Markov chain over ``vocab`` tokens and samples
sequences from it; :func:`markov_entropy` gives, exactly, the lowest mean cross-entropy any model
can reach on them (the Bayes-optimal loss); :func:`markov_table` is the chain itself.

**The chain.** Each of the ``vocab**order`` contexts ``(a_1, ..., a_k)`` has its own next-token
distribution :math:`P(\\cdot \\mid a) \\sim \\mathrm{Dirichlet}(\\alpha \\mathbf 1)`. A small
concentration :math:`\\alpha` makes the rows sparse: for :math:`\\alpha = 0.1` and 16 tokens a row's
expected entropy is :math:`\\psi(16\\alpha + 1) - \\psi(\\alpha + 1) \\approx 1.17` nats against
:math:`\\log 16 \\approx 2.77` for uniform guessing. A sequence :math:`s_0, \\dots, s_L`
(``L = seq_len``) starts with ``order`` tokens drawn uniformly and independently, then follows the
chain. Position ``t`` of an example is the token :math:`s_t` and its label the next token
:math:`s_{t+1}`.

**Why this task** (for studies of training instabilities at small scale):

* Its optimum is known exactly, so a loss is read as a gap to the best possible, not only
  against other runs. By the Markov property the Bayes predictor at position ``t`` is
  :math:`P(\\cdot \\mid s_{t-k+1..t})` for ``t >= k - 1`` and uniform before, and its expected loss
  is :math:`\\sum_a q_{t-k+1}(a) H(P(\\cdot \\mid a))`, where :math:`q_j`, the law of the ``k``
  tokens from position ``j`` on, is propagated exactly from :math:`q_0` (uniform) through the
  table: :math:`q_{j+1}(a_2..a_k, c) = \\sum_{a_1} q_j(a_1..a_k) P(c \\mid a_1..a_k)`. No
  stationarity is assumed (a chain with near-zero entries mixes too slowly to rely on one).
* A model must learn a ``vocab**order x vocab`` table (the **width** of its MLPs matters) reached
  through attention to the ``order`` previous positions (**depth and heads** matter: a single
  token is not enough). :func:`markov_entropy` with ``context=c`` gives the optimum of a
  predictor that sees only the last ``c`` tokens (``c = 1``: a bigram model; ``c = 0``: the
  token frequencies), so a loss below the ``context=order - 1`` bound shows the model uses the
  whole context.
* Its inputs are what a decoder-only transformer takes: the one-hot token concatenated with the
  one-hot position, so that the network's linear embedding is a token embedding plus a learned
  position embedding.

Everything is drawn on the host in float64 by NumPy generators seeded with the key's bits (no
compilation), so the data and the optimum come from the same table, bit for bit; every size is
bounded before memory is allocated.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import finite_float, positive_int
from stabkit.init import check_key
from stabkit.training.tasks import Task, _first_too_large

__all__ = ["markov_entropy", "markov_sequences", "markov_table"]


def _check_chain(vocab: Any, order: Any, concentration: Any) -> tuple[int, int, float]:
    vocab = positive_int(vocab, "vocab", minimum=2)
    order = positive_int(order, "order")
    concentration = finite_float(concentration, "concentration", positive=True)
    # vocab**(order + 1) float64 entries, a few copies (probabilities, cumulative sums, the
    # propagated laws): bounded before any integer power is allocated.
    _first_too_large(
        lambda s: 4 * 8 * float(s["vocab"]) ** (s["order"] + 1),
        {"vocab": vocab, "order": order},
        f"the order-{order} chain's table of {vocab}**{order} contexts x {vocab} tokens (float64)",
    )
    return vocab, order, concentration


def _generators(key: Any) -> tuple[np.random.Generator, np.random.Generator]:
    """The table's and the sequences' NumPy generators, seeded by the key's bits.

    Drawn on the host: ``jax.random``'s Gamma sampler costs ~3 s of XLA compilation per call
    site on CPU, NumPy's costs nothing, and a Task is host data anyway (checked there before JAX
    sees it). Equal keys give equal chains and sequences.
    """
    check_key(key)
    bits = np.asarray(
        jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key,
        np.uint32,
    )
    table, seq = np.random.SeedSequence([int(b) for b in bits.ravel()]).spawn(2)
    return np.random.default_rng(table), np.random.default_rng(seq)


def _table(rng: np.random.Generator, vocab: int, order: int, concentration: float) -> np.ndarray:
    """``(vocab**order, vocab)`` float64 rows, each Dirichlet(concentration) (rows sum to 1).

    Drawn as the softmax of log-Gamma variates: a small concentration's Gamma variates underflow
    (``Gamma(0.01) < 1e-300`` often), their logarithms do not. Below 1 the log-Gamma is
    :math:`\\log G_{\\alpha+1} + \\log(U) / \\alpha` (Marsaglia & Tsang's boost, exact in law).
    """
    shape = (vocab**order, vocab)
    if concentration < 1:
        boost = np.log1p(-rng.uniform(size=shape)) / concentration  # log U, U in (0, 1]
        logg = np.log(rng.standard_gamma(concentration + 1, size=shape)) + boost
    else:
        logg = np.log(rng.standard_gamma(concentration, size=shape))
    p = np.exp(logg - logg.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def markov_table(
    key: jax.Array, *, vocab: int = 16, order: int = 2, concentration: float = 0.1
) -> np.ndarray:
    """The chain of :func:`markov_sequences` with the same key: next-token probabilities.

    Args:
        key: the PRNG key given to :func:`markov_sequences`.
        vocab: tokens, >= 2. order: tokens of context, >= 1.
        concentration: the Dirichlet concentration of every row, > 0 (small: sparse rows).

    Returns:
        ``(vocab**order, vocab)`` float64 NumPy array; row ``sum_i a_i vocab**(order - 1 - i)``
        is :math:`P(\\cdot \\mid a_1, \\dots, a_k)` (``a_k`` the latest token). Rows sum to 1.

    Raises:
        TypeError: a bad key, non-int sizes, a non-number concentration.
        ValueError: ``vocab < 2``, ``order < 1``, a concentration that is not finite and > 0, a
            table beyond memory.

    Examples:
        >>> p = markov_table(jax.random.key(0), vocab=4, order=2)
        >>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0))
        ((16, 4), True)
    """
    vocab, order, concentration = _check_chain(vocab, order, concentration)
    table, _ = _generators(key)
    return _table(table, vocab, order, concentration)


def markov_sequences(
    key: jax.Array,
    *,
    n: int = 512,
    seq_len: int = 32,
    vocab: int = 16,
    order: int = 2,
    concentration: float = 0.1,
) -> Task:
    """Next-token prediction on ``n`` sequences of a random sparse order-``order`` Markov chain.

    See the module docstring for the chain and why the task suits small transformers. The optimum
    loss is :func:`markov_entropy` with the same key and arguments (``n`` aside).

    Args:
        key: a PRNG key; it fixes the chain (:func:`markov_table`) and the sequences.
        n: sequences, >= 1.
        seq_len: positions per sequence, >= ``order`` (``seq_len + 1`` tokens are drawn; the last
            is only a label).
        vocab: tokens, >= 2 (the classes).
        order: tokens of context of the chain, >= 1; the first ``order`` tokens of a sequence are
            uniform and independent.
        concentration: the Dirichlet concentration of every row of the table, > 0 (0.1: about
            2-3 likely next tokens per context with 16 tokens; large: nearly uniform).

    Returns:
        A classification :class:`Task` with ``x`` float32 ``(n, seq_len, vocab + seq_len)``, the
        one-hot token at each position then the one-hot position, ``y`` int32 ``(n, seq_len)``,
        the next token, and ``out_dim = vocab``.

    Raises:
        TypeError: a bad key, non-int sizes, a non-number concentration.
        ValueError: a size below its minimum, ``seq_len < order``, a concentration that is not
            finite and > 0, data or a table beyond memory (the message names the argument).

    Examples:
        >>> task = markov_sequences(jax.random.key(0), n=8, seq_len=5, vocab=4)
        >>> task.x.shape, task.y.shape, task.kind, task.out_dim
        ((8, 5, 9), (8, 5), 'classification', 4)
        >>> bool((jnp.argmax(task.x[:, 1:, :4], axis=-1) == task.y[:, :-1]).all())
        True
    """
    vocab, order, concentration = _check_chain(vocab, order, concentration)
    n = positive_int(n, "n")
    seq_len = positive_int(seq_len, "seq_len")
    if seq_len < order:
        raise ValueError(
            f"seq_len={seq_len} must be >= order={order}: with fewer positions no label depends "
            "on its context (the first order tokens are uniform)"
        )
    _first_too_large(
        # float32 inputs, the float64 uniforms and int64 tokens on the host, int32 labels
        lambda s: s["n"] * (s["seq_len"] + 1) * (4 * (s["vocab"] + s["seq_len"]) + 8 + 8 + 4),
        {"n": n, "seq_len": seq_len, "vocab": vocab},
        "the sequences and their one-hot inputs",
    )
    table, seq = _generators(key)
    p = _table(table, vocab, order, concentration)
    u = seq.uniform(size=(seq_len + 1, n))  # float64 in [0, 1)
    cdf = np.cumsum(p, axis=1)
    # Exactly 1 at the end: u < 1 then never picks past the last token of non-zero probability
    # (a zero-probability token has the cumulative sum of the one before it and is never picked).
    cdf[:, -1] = 1.0
    tokens = np.empty((seq_len + 1, n), np.int64)
    tokens[:order] = np.minimum((u[:order] * vocab).astype(np.int64), vocab - 1)
    ctx = np.zeros(n, np.int64)
    for i in range(order):
        ctx = ctx * vocab + tokens[i]
    width = vocab ** (order - 1)
    for t in range(order, seq_len + 1):
        tokens[t] = np.sum(u[t][:, None] >= cdf[ctx], axis=1)
        ctx = (ctx % width) * vocab + tokens[t]
    tokens = tokens.T  # (n, seq_len + 1)
    x = np.zeros((n, seq_len, vocab + seq_len), np.float32)
    rows = np.arange(n)[:, None]
    pos = np.arange(seq_len)[None, :]
    x[rows, pos, tokens[:, :-1]] = 1.0
    x[:, pos[0], vocab + pos[0]] = 1.0
    return Task(x, tokens[:, 1:].astype(np.int32), "classification", vocab)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (``0 log 0 = 0``)."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logp, axis=axis)


def markov_entropy(
    key: jax.Array,
    *,
    seq_len: int = 32,
    vocab: int = 16,
    order: int = 2,
    concentration: float = 0.1,
    context: int | None = None,
    per_position: bool = False,
) -> float | np.ndarray:
    """The optimal loss of :func:`markov_sequences` (same key and arguments): the conditional
    entropy of the next token, in nats, computed exactly from the chain's table in float64.

    With ``context=None`` (or ``order``) it is the Bayes-optimal mean cross-entropy over the
    ``seq_len`` positions, the lowest expected loss of any model (on fresh sequences: a model that
    memorizes ``n`` training sequences can go below it on those). With ``context=c < order`` it
    is the optimum of a predictor that sees only the last ``c`` tokens,
    :math:`H(s_{t+1} \\mid s_{t-c+1..t})`: ``c = 1`` a bigram model, ``c = 0`` the token
    frequencies. Positions before the ``order``-th predict a uniform, independent token:
    :math:`\\log(\\mathrm{vocab})` for every predictor.

    Args:
        key, seq_len, vocab, order, concentration: as given to :func:`markov_sequences`.
        context: the tokens the predictor sees, ``0..order`` (default ``order``).
        per_position: return the ``(seq_len,)`` optimum at each position instead of the mean.

    Returns:
        A Python float (the mean over positions), or a ``(seq_len,)`` float64 array.

    Raises:
        TypeError: as :func:`markov_sequences`; a non-int ``context``, a non-bool
            ``per_position``.
        ValueError: as :func:`markov_sequences`; ``context`` outside ``0..order``.

    Examples:
        >>> key = jax.random.key(0)
        >>> h = markov_entropy(key, seq_len=16, vocab=8)
        >>> bigram = markov_entropy(key, seq_len=16, vocab=8, context=1)
        >>> bool(h < bigram < np.log(8)), round(h, 4)
        (True, 0.7432)
    """
    vocab, order, concentration = _check_chain(vocab, order, concentration)
    seq_len = positive_int(seq_len, "seq_len")
    if seq_len < order:
        raise ValueError(f"seq_len={seq_len} must be >= order={order} (see markov_sequences)")
    c = order if context is None else positive_int(context, "context", minimum=0)
    if c > order:
        raise ValueError(
            f"context={c} must be in 0..order={order}: the chain's next token depends on the last "
            f"{order} tokens only, so a longer context predicts no better"
        )
    if not isinstance(per_position, (bool, np.bool_)):
        raise TypeError(f"per_position must be True or False, got {per_position!r}")
    table, _ = _generators(key)
    p = _table(table, vocab, order, concentration).reshape((vocab,) * (order + 1))
    out = np.full(seq_len, math.log(vocab))
    q = np.full((vocab,) * order, vocab**-order)  # the law of tokens j..j+order-1, j = 0
    for t in range(order - 1, seq_len):  # position t predicts s_{t+1} from s_{t-order+1..t}
        joint = q[..., None] * p  # (s_{t-order+1}, ..., s_t, s_{t+1})
        last = joint.sum(axis=tuple(range(order - c)))  # (s_{t-c+1}, ..., s_{t+1})
        flat = last.reshape(-1, vocab)
        # H(next | the last c) = H(the last c, next) - H(the last c)
        out[t] = _entropy(flat.ravel(), 0) - _entropy(flat.sum(axis=1), 0)
        q = joint.sum(axis=0)
    return out if per_position else float(out.mean())
