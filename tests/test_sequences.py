"""The generated Markov next-token task: data layout, the chain's law, and its exact optimum.

References are float64 NumPy: the empirical loss of the true table on the sampled data, and a
brute-force enumeration of every sequence of a tiny chain.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabkit.training.sequences import markov_entropy, markov_sequences, markov_table
from stabkit.training.tasks import Task

KEY = jax.random.key(3)


@pytest.fixture(scope="module")
def big():
    """4096 sequences of 16 positions, 8 tokens, order 2: enough for 4-sigma statistics."""
    kw = dict(seq_len=16, vocab=8, order=2, concentration=0.1)
    return kw, markov_sequences(KEY, n=4096, **kw), markov_table(KEY, vocab=8)


def test_layout_one_hot_tokens_positions_and_next_token_labels():
    task = markov_sequences(KEY, n=5, seq_len=6, vocab=4, order=3)
    assert isinstance(task, Task) and task.kind == "classification" and task.out_dim == 4
    x, y = np.asarray(task.x), np.asarray(task.y)
    assert x.shape == (5, 6, 4 + 6) and x.dtype == np.float32 and y.dtype == np.int32
    assert task.seq_len == 6 and task.in_dim == 10
    np.testing.assert_array_equal(x.sum(-1), 2.0)  # one token, one position
    np.testing.assert_array_equal(x[:, :, 4:], np.broadcast_to(np.eye(6), (5, 6, 6)))
    tokens = x[:, :, :4].argmax(-1)
    np.testing.assert_array_equal(tokens[:, 1:], y[:, :-1])  # the label is the next token
    assert ((y >= 0) & (y < 4)).all()


def test_same_key_same_task_other_key_other_chain():
    a = markov_sequences(KEY, n=4, seq_len=5, vocab=5)
    b = markov_sequences(KEY, n=4, seq_len=5, vocab=5)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    legacy = markov_table(jax.random.PRNGKey(3), vocab=5)  # a raw uint32[2] key works too
    assert legacy.shape == (25, 5)
    assert not np.array_equal(markov_table(KEY, vocab=5), markov_table(jax.random.key(4), vocab=5))


def test_table_rows_are_dirichlet_draws():
    """Rows sum to 1 (float64, 4 ulp); the mean row entropy is the Dirichlet expectation
    psi(K alpha + 1) - psi(alpha + 1) within 4 standard errors (256 rows)."""
    for alpha in (0.1, 3.0):  # the boosted log-Gamma path (alpha < 1) and the plain one
        p = markov_table(KEY, vocab=16, order=2, concentration=alpha)
        assert p.shape == (256, 16) and p.dtype == np.float64 and (p >= 0).all()
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=4 * np.finfo(np.float64).eps)
        logp = np.log(np.where(p > 0, p, 1.0))
        h = -(p * logp).sum(1)
        with jax.enable_x64(True):
            psi = jax.scipy.special.digamma
            expected = float(psi(jnp.float64(16 * alpha + 1)) - psi(jnp.float64(alpha + 1)))
        assert abs(h.mean() - expected) < 4 * h.std() / math.sqrt(h.size), (alpha, h.mean())


def test_tiny_concentration_gives_finite_sparse_rows():
    p = markov_table(KEY, vocab=16, order=1, concentration=1e-3)  # Gamma(1e-3) underflows
    assert np.isfinite(p).all()
    assert np.median(p.max(1)) > 0.99  # nearly deterministic rows


def test_optimum_is_the_true_tables_empirical_loss(big):
    """The true table's mean cross-entropy on 4096 sampled sequences equals markov_entropy within
    4 standard errors (per-sequence means are independent); positions before the order-th are
    uniform: log(vocab) exactly."""
    kw, task, p = big
    x, y = np.asarray(task.x), np.asarray(task.y)
    v, length = kw["vocab"], kw["seq_len"]
    tokens = x[:, :, :v].argmax(-1)
    ctx = tokens[:, :-1] * v + tokens[:, 1:]  # (s_{t-1}, s_t) for t >= 1
    nll = np.concatenate([np.full((len(y), 1), math.log(v)), -np.log(p[ctx, y[:, 1:]])], axis=1)
    per_seq = nll.mean(1)
    se = per_seq.std() / math.sqrt(len(per_seq))
    h = markov_entropy(KEY, **kw)
    assert abs(per_seq.mean() - h) < 4 * se, (per_seq.mean(), h, se)
    per_pos = markov_entropy(KEY, **kw, per_position=True)
    assert per_pos.shape == (length,) and per_pos[0] == math.log(v)
    assert h == pytest.approx(per_pos.mean(), rel=4 * np.finfo(np.float64).eps)
    # the first two tokens are uniform and independent: position 0's label frequencies
    freq = np.bincount(y[:, 0], minlength=v) / len(y)
    assert np.abs(freq - 1 / v).max() < 4 * math.sqrt((1 / v) * (1 - 1 / v) / len(y))


def _brute_force(p: np.ndarray, vocab: int, order: int, length: int, c: int) -> np.ndarray:
    """Per-position H(s_{t+1} | s_{t-c+1..t}) by enumerating every sequence s_0..s_length."""
    law = {}
    for seq in itertools.product(range(vocab), repeat=length + 1):
        pr = vocab**-order
        for t in range(order, length + 1):
            row = sum(a * vocab ** (order - 1 - i) for i, a in enumerate(seq[t - order : t]))
            pr *= p[row, seq[t]]
        law[seq] = pr
    out = []
    for t in range(length):
        seen = min(c, t + 1)
        joint, marg = {}, {}
        for seq, pr in law.items():
            ctx = seq[t + 1 - seen : t + 1]
            key = (*ctx, seq[t + 1])
            joint[key] = joint.get(key, 0.0) + pr
            marg[ctx] = marg.get(ctx, 0.0) + pr
        out.append(-sum(q * math.log(q / marg[k[:-1]]) for k, q in joint.items() if q > 0))
    return np.array(out)


@pytest.mark.parametrize("order", [1, 2])
def test_optimum_and_context_bounds_match_enumeration(order):
    """Every context length 0..order, each position, against the enumeration of all 3^6
    sequences of a 3-token chain (float64, 1e-12)."""
    kw = dict(seq_len=5, vocab=3, order=order, concentration=0.5)
    p = markov_table(KEY, vocab=3, order=order, concentration=0.5)
    values = []
    for c in range(order + 1):
        got = markov_entropy(KEY, **kw, context=c, per_position=True)
        np.testing.assert_allclose(got, _brute_force(p, 3, order, 5, c), rtol=0, atol=1e-12)
        values.append(got.mean())
    np.testing.assert_allclose(markov_entropy(KEY, **kw), values[-1], rtol=1e-15)
    assert all(a > b for a, b in itertools.pairwise(values))  # more context helps
    assert values[0] <= math.log(3)


def test_default_task_needs_both_previous_tokens():
    """The default task: the bigram bound is far above the order-2 optimum (a model that does
    not attend to the previous position cannot get close)."""
    h2, h1, h0 = (markov_entropy(KEY, context=c) for c in (2, 1, 0))
    assert h2 + 0.5 < h1 < h0 <= math.log(16)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(vocab=1), ValueError, "vocab must be >= 2"),
        (dict(vocab=2.5), TypeError, "vocab must be an int"),
        (dict(order=0), ValueError, "order must be >= 1"),
        (dict(n=0), ValueError, "n must be >= 1"),
        (dict(seq_len=True), TypeError, "seq_len must be an int"),
        (dict(seq_len=1, order=2), ValueError, "seq_len=1 must be >= order=2"),
        (dict(concentration=0.0), ValueError, "concentration must be > 0"),
        (dict(concentration=math.nan), ValueError, "concentration must be finite"),
        (dict(concentration="0.1"), TypeError, "concentration must be a real number"),
        (dict(vocab=10**6, order=3), ValueError, "vocab=1000000 needs about"),
        (dict(vocab=16, order=40), ValueError, "order=40 needs about"),
        (dict(n=10**12, seq_len=10**3), ValueError, "n=1000000000000 needs about"),
    ],
)
def test_bad_input_is_named_before_any_allocation(kwargs, error, match):
    with pytest.raises(error, match=match):
        markov_sequences(KEY, **kwargs)


def test_bad_key_context_and_flags():
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        markov_sequences(0)
    with pytest.raises(ValueError, match=r"context=3 must be in 0\.\.order=2"):
        markov_entropy(KEY, context=3)
    with pytest.raises(ValueError, match="context must be >= 0"):
        markov_entropy(KEY, context=-1)
    with pytest.raises(TypeError, match="per_position must be True or False"):
        markov_entropy(KEY, per_position=1)
    with pytest.raises(ValueError, match="seq_len=1 must be >= order=2"):
        markov_entropy(KEY, seq_len=1)
