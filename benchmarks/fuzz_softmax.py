"""Differential fuzz: stabkit's softmax family against a 60-digit mpmath reference.

Every case is a row whose entries are already rounded to the dtype under test (the reference is
computed on the *same* rounded inputs, so only the function's own error is measured). Rows are
built from a few distinct values with multiplicities, so a row of 100,000 entries (k copies of one
value and a few others) has a reference that costs as little as a row of three: the sum over the
row is a sum over the distinct values, each times its count. The entries are shuffled before they
reach XLA, so its reduction order is exercised.

For each case, dtype and function the error is the distance, in representable values of the dtype,
between the output and the correctly rounded reference. Where the backend flushes subnormal
results to 0 (measured here, not assumed: XLA:CPU flushes float32, float64 and, through its
float32 compute, bfloat16), the reference is flushed too and the distance counts the flushed
format's values (0 and the normals); that is the backend's behaviour, not the function's error.

Tolerances: 1 ulp in float16, bfloat16 and float8; 2 ulp in float32 and float64. Conditioning
allowances (reported apart, in the ``cond`` column): a ``logsumexp`` whose value is small by
cancellation (``m < 0 < log(sum)``) may be off by 2 ulp of ``|m|`` in the compute dtype; the
gradient of probability-label cross-entropy, ``Y p - y``, by 4 ulp of ``max(Y p, y)``; and where
the backend flushes subnormals, every output may be off by ``n`` times the compute dtype's
smallest normal (the terms ``e^(x - m)`` below it are flushed before they are summed); and the
rounding of ``x_j - m`` to the compute dtype may cost ``eps * sum_j p_j |x_j - m|`` (absolute in
log space, relative in probability space): the problem's conditioning with respect to a rounding
of its inputs, 0 wherever ``x_j - m`` is exact (always, in practice, for the half formats computed
in float32; softmax puts it back into its numerator, not into its denominator's sum).
Besides the ulp count, a case fails if the output is NaN or inf where the reference is finite, or
if a loss is ``-0.0``.

Functions: ``logsumexp``, ``log_softmax``, ``softmax``, ``ce_index`` and ``ce_prob``
(``softmax_cross_entropy`` with integer and probability labels), and the gradients
``grad_logsumexp`` (the softmax), ``grad_ce_index`` (``p - onehot``), ``grad_ce_prob``
(``Y p - y``). Half of the cases use ``where=`` masks.

Usage::

    python benchmarks/fuzz_softmax.py [--cases 9000] [--seed 0] [--out FILE]

``--cases`` is the total over all dtypes. The JSON record holds the table, the machine and the
worst case per function and dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_dtypes
import mpmath
import numpy as np

import stabkit

DTYPES = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")
FUNCS = (
    "logsumexp",
    "log_softmax",
    "softmax",
    "ce_index",
    "ce_prob",
    "grad_logsumexp",
    "grad_ce_index",
    "grad_ce_prob",
)
TOLERANCE = {"float32": 2, "float64": 2}  # every other dtype: 1
SIZES = (1, 2, 3, 7, 64, 1000)
LONG = 100_000
KINDS = (
    "random",
    "ties",
    "spread",
    "tail",
    "neg_inf",
    "masked",
    "extreme",
    "subnormal",
    "cancel",
)
DIGITS = 60


def np_dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def tolerance(dtype: str) -> int:
    return TOLERANCE.get(dtype, 1)


def x64(dtype: str):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def compute_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float32) if np_dtype(dtype).itemsize < 4 else np_dtype(dtype)


def has_inf(dtype: str) -> bool:
    with np.errstate(all="ignore"):
        return bool(np.isinf(np.array(np.inf).astype(np_dtype(dtype)).astype(np.float64)))


def flushes(dtype: str) -> bool:
    """Whether this backend's computation of ``dtype`` flushes subnormal results to 0.

    Measured the way stabkit computes ``dtype`` (float32 for the narrow formats), under ``jit``.
    """
    fi = ml_dtypes.finfo(np_dtype(dtype))
    with x64(dtype):
        c = jnp.asarray(np.asarray(fi.smallest_normal).astype(np_dtype(dtype)))
        half = jax.jit(lambda v: (v.astype(compute_dtype(dtype)) * 0.5).astype(v.dtype))(c)
        return float(np.asarray(half).astype(np.float64)) == 0.0


# ------------------------------------------------------------------ rounding and distances


def _sign_magnitude(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(negative, magnitude bits) of each value, as int64."""
    size = a.dtype.itemsize
    signed = np.ascontiguousarray(a).view(np.dtype(f"i{size}")).astype(np.int64)
    return signed < 0, signed & ((1 << (8 * size - 1)) - 1)


def ordinal(a: np.ndarray, flush: bool) -> np.ndarray:
    """An integer per value, monotone in the value, consecutive for neighbouring values.

    With ``flush``, subnormals map to 0 and the normals follow 0 directly: distances then count
    the values the backend can produce.
    """
    neg, mag = _sign_magnitude(a)
    if flush:
        first_normal = 1 << ml_dtypes.finfo(a.dtype).nmant
        mag = np.where(mag >= first_normal, mag - first_normal + 1, 0)
    return np.where(neg, -mag, mag)


def _neighbour(c: np.ndarray, direction: float) -> np.ndarray:
    """The next representable value of ``c``'s dtype towards ``direction`` (finite ``c``)."""
    size = c.dtype.itemsize
    neg, mag = _sign_magnitude(c)
    o = np.where(neg, -mag, mag) + (1 if direction > 0 else -1)
    bits = np.where(o < 0, (-o) | (1 << (8 * size - 1)), o)
    # the ordinal -0 == +0 is skipped over: -1 -> the smallest negative value, as wanted
    return bits.astype(np.dtype(f"u{size}")).view(c.dtype)


def round_to(values: np.ndarray, dtype: str, flush: bool) -> np.ndarray:
    """float64 ``values`` correctly rounded to ``dtype`` (no double rounding through float32),
    then flushed where the backend flushes."""
    nd = np_dtype(dtype)
    v = np.asarray(values, np.float64)
    with np.errstate(all="ignore"):
        c = v.astype(nd)
        if nd != np.float64:
            # ml_dtypes may round through float32: take the nearest of c and its neighbours.
            finite = np.isfinite(c.astype(np.float64))
            best, best_err = c, np.abs(c.astype(np.float64) - v)
            for direction in (np.inf, -np.inf):
                cand = _neighbour(np.where(finite, c, np.zeros_like(c)).astype(nd), direction)
                err = np.abs(cand.astype(np.float64) - v)
                better = finite & (err < best_err)
                best = np.where(better, cand, best).astype(nd)
                best_err = np.where(better, err, best_err)
            c = best
    if flush:
        tiny = float(ml_dtypes.finfo(nd).smallest_normal)
        c = np.where(np.abs(c.astype(np.float64)) < tiny, np.zeros_like(c), c).astype(nd)
    return c


# --------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """A row: distinct ``values`` (float64, representable in the dtype) with ``counts``, a mask
    flag per value, an integer label (an entry index) and a probability label per value."""

    kind: str
    values: np.ndarray
    counts: np.ndarray
    masked: np.ndarray
    label: int  # index of an entry of the expanded row
    y: np.ndarray  # probability label per distinct value (representable in the dtype)
    order: np.ndarray  # permutation of the expanded row

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def groups(self) -> np.ndarray:
        """Group index of each entry of the expanded (shuffled) row."""
        return np.repeat(np.arange(len(self.values)), self.counts)[self.order]


def _partition(rng, n: int, k: int) -> np.ndarray:
    k = max(1, min(k, n))
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False)) if k > 1 else []
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def make_case(rng, dtype: str, kind: str, n: int) -> Case:
    nd = np_dtype(dtype)
    fi = ml_dtypes.finfo(nd)
    fmax = float(fi.max)
    log_tiny = float(np.log(float(fi.smallest_normal)))
    log_sub = float(np.log(float(fi.smallest_subnormal)))
    eps = float(fi.eps)
    lim = min(fmax, 1e4)
    k = n if n <= 16 else int(rng.integers(1, 6))
    if kind == "ties":
        k = int(rng.integers(1, min(n, 4) + 1))
    counts = _partition(rng, n, k)
    k = len(counts)
    scale = float(np.exp(rng.uniform(np.log(1e-3), np.log(lim))))
    values = rng.standard_normal(k) * scale
    if kind == "spread":
        top = rng.uniform(-lim, lim)
        gaps = np.exp(rng.uniform(0, np.log(2 * lim), k))
        values = top - gaps
        values[0] = top
    elif kind == "tail":
        top = rng.uniform(-30, 30) if rng.random() < 0.5 else 0.0
        lo, hi = 0.3 * np.log(1 / eps), min(-log_tiny, 3 * np.log(1 / eps))
        values = top - rng.uniform(lo, hi, k)
        values[0] = top
        if n > 2 and rng.random() < 0.7:
            counts = np.concatenate([[1], _partition(rng, n - 1, k - 1)]) if k > 1 else counts
            counts = counts[: len(values)]
            values = values[: len(counts)]
    elif kind == "extreme":
        pool = np.array([fmax, -fmax, fmax / 2, -fmax / 2, 0.0, 1.0, -1.0, fmax * 0.999])
        values = rng.choice(pool, k)
    elif kind == "subnormal":
        top = 0.0
        values = top + rng.uniform(log_sub - 2, log_tiny + 2, k)
        values[0] = top
    elif kind == "cancel":
        # c ~ -log n: logsumexp near 0 by cancellation (the conditioning allowance)
        values = -np.log(n) + rng.standard_normal(k) * float(rng.choice([0.0, 1e-3, 0.1]))
    values = np.clip(values, -fmax, fmax)
    masked = np.zeros(k, bool)
    if kind == "neg_inf" and has_inf(dtype):
        masked_inf = rng.random(k) < 0.4
        values = np.where(masked_inf, -np.inf, values)
    if kind == "masked" or rng.random() < 0.5:
        masked = rng.random(k) < (0.3 if rng.random() < 0.8 else 1.0)
    values = round_to(values, dtype, flush=False).astype(np.float64)
    y = rng.random(k) * (rng.random(k) < 0.7)
    y = round_to(y / max(1.0, float((y * counts).sum())), dtype, flush=False).astype(np.float64)
    order = rng.permutation(n)
    label = int(rng.integers(0, n))
    return Case(kind, values, counts, masked, label, y, order)


def long_case(rng, dtype: str) -> Case:
    """100,000 entries: k copies of one value plus a few others (closed-form reference)."""
    fi = ml_dtypes.finfo(np_dtype(dtype))
    spread = min(float(fi.max), 30.0)
    values = np.concatenate([[0.0], -rng.uniform(0, spread, 2)])
    counts = np.array([1, LONG - 2 - int(rng.integers(0, 50)), 0])
    counts[2] = LONG - counts[:2].sum()
    values = round_to(values, dtype, flush=False).astype(np.float64)
    y = round_to(np.array([0.5, 0.5 / counts[1], 0.0]), dtype, flush=False).astype(np.float64)
    return Case("long", values, counts, np.zeros(3, bool), 0, y, rng.permutation(LONG))


# ----------------------------------------------------------------------------- reference


def reference(case: Case) -> dict[str, np.ndarray]:
    """Per-entry (or per-row) float64 references at ``DIGITS`` digits for every function."""
    mpmath.mp.dps = DIGITS
    vals, counts, y = case.values, case.counts, case.y
    valid = ~case.masked & (vals != -np.inf)
    groups = case.groups()
    label_group = groups[case.label]
    out: dict[str, np.ndarray] = {}
    k = len(vals)
    if not valid.any():
        logp = np.full(k, -np.inf)
        p = np.zeros(k)
        out["logsumexp"] = np.array(-np.inf)
        out["ce_index"] = np.array(np.inf)
        mass = float((y * counts).sum())
        out["ce_prob"] = np.array(0.0 if mass == 0 else np.inf)
        out["grad_ce_prob"] = np.zeros(k)
        out["m"] = np.array(-np.inf)
        out["spread"] = np.array(0.0)
    else:
        xs = [mpmath.mpf(float(v)) for v in vals]
        m = max(xs[i] for i in range(k) if valid[i])
        # log(sum) = log1p(rest): the terms below the max plus the ties at the max less one.
        # 60 digits of log(1 + 1e-67) would be 0: the reference takes the same care it checks.
        ties = sum(int(counts[i]) for i in range(k) if valid[i] and xs[i] == m)
        rest = mpmath.fsum(
            int(counts[i]) * mpmath.exp(xs[i] - m) for i in range(k) if valid[i] and xs[i] != m
        )
        log_total = mpmath.log1p(rest + (ties - 1))
        lse = m + log_total
        # (x - m) - log(total), not x - lse: 60 digits relative to 1e308 would lose log(total)
        logp_mp = [(xs[i] - m) - log_total if valid[i] else None for i in range(k)]
        logp = np.array([float(v) if v is not None else -np.inf for v in logp_mp])
        p = np.array([float(mpmath.exp(v)) if v is not None else 0.0 for v in logp_mp])
        out["logsumexp"] = np.array(float(lse))
        out["m"] = np.array(float(m))
        # sum_j p_j |x_j - m|: the error that rounding each x_j - m to the compute dtype causes
        out["spread"] = np.array(
            float(
                mpmath.fsum(
                    int(counts[i]) * mpmath.exp(logp_mp[i]) * abs(xs[i] - m)
                    for i in range(k)
                    if valid[i]
                )
            )
        )
        out["ce_index"] = np.array(float(-logp_mp[label_group]) if valid[label_group] else np.inf)
        ymp = [mpmath.mpf(float(v)) for v in y]
        if any(y[i] > 0 and not valid[i] for i in range(k)):
            out["ce_prob"] = np.array(np.inf)
        else:
            out["ce_prob"] = np.array(
                float(mpmath.fsum(-int(counts[i]) * ymp[i] * logp_mp[i] for i in range(k) if y[i]))
            )
        big_y = mpmath.fsum(int(counts[i]) * ymp[i] for i in range(k))
        out["grad_ce_prob"] = np.array(
            [float(big_y * mpmath.exp(logp_mp[i]) - ymp[i]) if valid[i] else 0.0 for i in range(k)]
        )
        out["grad_scale"] = np.array(
            [
                max(float(big_y * mpmath.exp(logp_mp[i])), float(y[i])) if valid[i] else 0.0
                for i in range(k)
            ]
        )
        if valid[label_group]:
            target = float(mpmath.expm1(logp_mp[label_group]))  # not exp(.) - 1: 60 digits
        else:
            target = 0.0
        out["grad_target"] = np.array(target)
    out["log_softmax"] = logp[groups]
    out["softmax"] = p[groups]
    out["grad_logsumexp"] = p[groups]
    g = p[groups].copy()
    g[case.label] = out.get("grad_target", np.array(0.0))
    out["grad_ce_index"] = g
    out["grad_ce_prob"] = out["grad_ce_prob"][groups]
    if "grad_scale" in out:
        out["grad_scale"] = out["grad_scale"][groups]
    else:
        out["grad_scale"] = np.zeros(case.n)
    return out


# ---------------------------------------------------------------------------- evaluation


def _outputs(x, mask, labels, y):
    sk = stabkit
    lse = sk.logsumexp(x, where=mask)
    logp = sk.log_softmax(x, where=mask)
    p = sk.softmax(x, where=mask)
    ce_i = sk.softmax_cross_entropy(x, labels, where=mask)
    ce_p = sk.softmax_cross_entropy(x, y, where=mask)
    g_lse = jax.grad(lambda x: sk.logsumexp(x, where=mask).astype(jnp.float32).sum())(x)
    g_ci = jax.grad(
        lambda x: sk.softmax_cross_entropy(x, labels, where=mask).astype(jnp.float32).sum()
    )(x)
    g_cp = jax.grad(lambda x: sk.softmax_cross_entropy(x, y, where=mask).astype(jnp.float32).sum())(
        x
    )
    return {
        "logsumexp": lse,
        "log_softmax": logp,
        "softmax": p,
        "ce_index": ce_i,
        "ce_prob": ce_p,
        "grad_logsumexp": g_lse,
        "grad_ce_index": g_ci,
        "grad_ce_prob": g_cp,
    }


_COMPILED: dict = {}


def evaluate(cases: list[Case], dtype: str, use_mask: bool) -> dict[str, np.ndarray]:
    """Run every function on a batch of cases of the same length; outputs as float arrays."""
    nd = np_dtype(dtype)
    n = cases[0].n
    x = np.empty((len(cases), n), nd)
    mask = np.ones((len(cases), n), bool)
    y = np.empty((len(cases), n), nd)
    labels = np.array([c.label for c in cases], np.int32)
    for r, c in enumerate(cases):
        g = c.groups()
        x[r] = c.values[g].astype(nd)
        mask[r] = ~c.masked[g]
        y[r] = c.y[g].astype(nd)
    key = (dtype, n, use_mask, len(cases))
    with x64(dtype):
        if key not in _COMPILED:
            if use_mask:
                _COMPILED[key] = jax.jit(_outputs)
            else:
                _COMPILED[key] = jax.jit(lambda x, labels, y: _outputs(x, None, labels, y))
        f = _COMPILED[key]
        args = (jnp.asarray(x), jnp.asarray(mask)) if use_mask else (jnp.asarray(x),)
        outs = f(*args, jnp.asarray(labels), jnp.asarray(y))
        return {k: np.asarray(v) for k, v in outs.items()}


def errors(out: np.ndarray, ref: np.ndarray, dtype: str, flush: bool, allowance=None):
    """(ulps, nonfinite, conditioned) per element: the distance in representable values of
    ``dtype``; ``nonfinite`` where the output is NaN/inf but the reference is finite;
    ``conditioned`` where the distance exceeds the tolerance but ``|out - ref| <= allowance``."""
    nd = np_dtype(dtype)
    out = np.atleast_1d(np.asarray(out).astype(nd))
    ref = np.atleast_1d(np.asarray(ref, np.float64))
    want = round_to(ref, dtype, flush)
    with np.errstate(all="ignore"):
        o64, w64 = out.astype(np.float64), want.astype(np.float64)
        same = (o64 == w64) | (np.isnan(o64) & np.isnan(w64))
        finite_ref = np.isfinite(np.asarray(ref, np.float64)) & np.isfinite(w64)
        nonfinite = finite_ref & ~np.isfinite(o64)
        both_finite = np.isfinite(o64) & np.isfinite(w64)
        ulps = np.zeros(out.shape, np.float64)
        if both_finite.any():
            d = ordinal(out[both_finite], flush) - ordinal(want[both_finite], flush)
            ulps[both_finite] = np.abs(d.astype(np.float64))
        ulps = np.where(same, 0.0, np.where(both_finite, ulps, np.inf))
        cond = np.zeros(out.shape, bool)
        if allowance is not None:
            close = np.abs(o64 - np.asarray(ref, np.float64)) <= allowance
            cond = (ulps > tolerance(dtype)) & close & both_finite
    return ulps, nonfinite, cond


def check_dtype(
    dtype: str, n_cases: int, rng, sizes=SIZES, long_rows: int = 1, always_mask: bool = False
) -> dict[str, dict]:
    """Fuzz one dtype; per function: cases, cases beyond tolerance, conditioned, max ulp, worst.

    ``always_mask`` runs every short row through ``where=`` (all True where the case has no
    mask): one compilation per size instead of two, for the bounded-time test.
    """
    flush = flushes(dtype)
    cdt = compute_dtype(dtype)
    kinds = [k for k in KINDS if k != "neg_inf" or has_inf(dtype)]
    batches: dict[tuple[int, bool], list[Case]] = {}
    for i in range(n_cases):
        kind = kinds[i % len(kinds)]
        n = int(rng.choice(sizes))
        if kind == "cancel" and n == 1:
            n = 3
        case = make_case(rng, dtype, kind, n)
        use_mask = always_mask or bool(case.masked.any()) or (i % 2 == 0)
        batches.setdefault((n, use_mask), []).append(case)
    for _ in range(long_rows):
        batches.setdefault((LONG, False), []).append(long_case(rng, dtype))
    stats = {f: {"cases": 0, "beyond": 0, "cond": 0, "max_ulp": 0.0, "worst": None} for f in FUNCS}
    for (_, use_mask), cases in sorted(batches.items()):
        outs = evaluate(cases, dtype, use_mask)
        for r, case in enumerate(cases):
            ref = reference(case)
            m = float(ref["m"])
            # A backend that flushes subnormal results flushes the terms e^(x - m) below the
            # smallest normal of the compute dtype before they are summed: up to n of them.
            flush_allowance = case.n * float(ml_dtypes.finfo(cdt).smallest_normal) if flush else 0.0
            for f in FUNCS:
                allowance = flush_allowance
                # the rounding of x_j - m: eps/2 * sum_j p_j |x_j - m| in log space, relative in
                # probability space (exactly 0 when every x_j - m is exact)
                shift = float(ml_dtypes.finfo(cdt).eps) * float(ref["spread"])
                if f in ("softmax", "grad_logsumexp", "grad_ce_index"):
                    allowance = allowance + shift * np.abs(ref["softmax"])
                elif f == "grad_ce_prob":
                    allowance = allowance + shift * np.abs(ref["grad_scale"])
                elif f == "ce_prob":
                    allowance = allowance + shift * float((case.y * case.counts).sum())
                else:
                    allowance = allowance + shift
                if f == "logsumexp" and np.isfinite(m) and m < 0:
                    with np.errstate(over="ignore"):
                        allowance += 2 * float(np.spacing(cdt.type(abs(m))))
                if f == "grad_ce_prob":
                    scale = ref["grad_scale"].astype(cdt)
                    allowance = allowance + 4 * np.spacing(scale).astype(np.float64)
                ulps, nonfinite, cond = errors(outs[f][r], ref[f], dtype, flush, allowance)
                bad = (ulps > tolerance(dtype)) & ~cond | nonfinite
                if f.startswith("ce_"):
                    o = np.asarray(outs[f][r]).astype(np.float64)
                    bad = bad | ((o == 0) & np.signbit(o))  # a loss is never -0.0
                s = stats[f]
                s["cases"] += 1
                s["beyond"] += int(np.any(bad))
                s["cond"] += int(np.any(cond) and not np.any(bad))
                worst = float(np.max(np.where(cond, 0, ulps), initial=0.0))
                if worst > s["max_ulp"] or (np.any(bad) and s["worst"] is None):
                    s["max_ulp"] = max(s["max_ulp"], worst)
                    s["worst"] = {
                        "kind": case.kind,
                        "n": case.n,
                        "values": case.values.tolist()[:8],
                        "counts": case.counts.tolist()[:8],
                        "masked": case.masked.tolist()[:8],
                        "ulps": worst,
                        "nonfinite": bool(nonfinite.any()),
                    }
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=9000, help="total over all dtypes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--out", default="benchmarks/results/fuzz_softmax.json")
    args = parser.parse_args()
    dtypes = [d for d in args.dtypes.split(",") if d]
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    rows = []
    for dtype in dtypes:
        stats = check_dtype(dtype, max(1, args.cases // len(dtypes)), rng)
        for f, s in stats.items():
            rows.append({"dtype": dtype, "function": f, "tolerance_ulp": tolerance(dtype), **s})
    elapsed = time.perf_counter() - start
    print(
        f"{'dtype':14s} {'function':15s} {'cases':>6s} {'beyond':>7s} {'cond':>5s} {'max ulp':>8s}"
    )
    for r in rows:
        print(
            f"{r['dtype']:14s} {r['function']:15s} {r['cases']:6d} {r['beyond']:7d} "
            f"{r['cond']:5d} {r['max_ulp']:8.0f}"
        )
    total = sum(r["beyond"] for r in rows)
    print(f"{sum(r['cases'] for r in rows)} checks, {total} beyond tolerance, {elapsed:.0f} s")
    record = {
        "benchmark": "fuzz_softmax",
        "cases": args.cases,
        "seed": args.seed,
        "digits": DIGITS,
        "flushes": {d: flushes(d) for d in dtypes},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "stabkit": stabkit.__version__,
        "seconds": elapsed,
        "results": rows,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
