"""The per-config statistics of the sweep kernel: RMS, max, census, dead units, chunk-independent.

Every statistic of a chunk's ``(config, rows, units)`` block depends on the config alone, never on
how many chunk-mates it has or how the devices split the chunk (see :mod:`stabkit.sweeps.driver`):
RMS scales by exact powers of two, small blocks are reduced one config at a time, and the census
reads bit patterns (XLA:CPU reads float32 subnormals as 0 in comparisons).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stabkit._numerics import classify, compute_dtype, exponent, pow2

#: Per-config reductions over at least this many entries use XLA's batched reduction (see mean12).
_BATCHED_REDUCTION_MIN = 4096


class ChunkStats:
    """The statistics of ``(config, batch, width)`` blocks of one dtype, computed in at least
    float32 (:func:`stabkit._numerics.compute_dtype`)."""

    def __init__(self, dtype, width: int, batch: int):
        self.dtype = jnp.dtype(dtype)
        self.sdt = compute_dtype(self.dtype)
        self.batch = batch
        self.entries = batch * width
        self.sinfo = jnp.finfo(self.sdt)
        self.s_bias = self.sinfo.maxexp - 1
        # A scaled sum of squares within 2^+-window cannot have overflowed, and the squares
        # flushed to zero (below 2^-126 in float32) add up to less than 2^-52 of it: no pass for
        # the max needed.
        self.window = self.sinfo.maxexp // 2 - 14
        # The census by bit pattern, the classes of stabkit.census (_numerics.classify). Two
        # classes are packed in 16-bit halves of one int32 sum where the counts fit, so four
        # counts take two passes over the data instead of four.
        self.info = jnp.finfo(self.dtype)
        self.nbits = 8 * self.dtype.itemsize
        self.ubits = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[self.nbits]
        self.magnitude = (1 << (self.nbits - 1)) - 1
        self.packed = self.entries < 2**15

    def absmax(self, v):
        return jnp.max(jnp.abs(v), axis=(1, 2)).astype(self.sdt)

    def scales(self, m):
        """Powers of two ``(2^-e, 2^e)`` with ``2^e <= m < 2^(e+1)`` (1 where m is 0 or not finite).

        Scaling by an exact power of two rounds nothing, so however XLA arranges the arithmetic
        (it rewrites ``v / b`` as ``v * (1 / b)`` in some programs and not in others, e.g. after
        the SPMD partitioner) the result is the same bit for bit. ``e`` is clamped two short of
        the exponent range so both factors are normal numbers.
        """
        s_bias = self.s_bias
        e = jnp.where((m > 0) & jnp.isfinite(m), jnp.clip(exponent(m), 2 - s_bias, s_bias - 2), 0)
        return pow2(-e, self.sdt), pow2(e, self.sdt)

    def mean12(self, v, reduce=jnp.mean):
        """Mean (or ``reduce``) of each config's (rows, units) block, the same whatever the chunk.

        XLA:CPU's reduction emitter picks its summation order from the whole shape: for blocks
        of fewer than about 2048 entries, a chunk of 4 or more configs sums each config in
        another order than a chunk of 3 (measured: 128 x 8, 64 x 16, 16 x 32, 31 x 64), so a
        config's statistics would depend on its chunk-mates' count. Small blocks are therefore
        reduced one config at a time under ``lax.map`` (the same compiled reduction for every
        chunk of 2 or more configs); from 4096 entries on, no chunk of 2 to 512 configs changed
        the order, and the batched reduction (about 2x faster) is kept.
        """
        if v.shape[1] * v.shape[2] >= _BATCHED_REDUCTION_MIN:
            return reduce(v, axis=(1, 2))
        return jax.lax.map(reduce, v)

    def rms(self, v, m=None):
        """RMS over (batch, units) that cannot overflow; ``m``: max|v| if known.

        The entries are scaled by a power of two near 1/max|v| (exact), so the squares are at
        most 4 and the sum cannot overflow; a non-finite max leaves inf/NaN entries to show
        through. The statistics cost more than the matrix products on CPU, so each pass over the
        data counts: the max that post_max needs is reused here.
        """
        v = v.astype(self.sdt)
        m = self.absmax(v) if m is None else m
        down, up = self.scales(m)
        return jnp.sqrt(self.mean12(jnp.square(v * down[:, None, None]))) * up

    def rms_guess(self, v, e):
        """``(rms(v), exponent)``: one pass over ``v``, scaled by the guess ``2^-e`` per config.

        ``e`` is the exponent of the same statistic one layer before (a net's RMS changes by
        far less than 2^25 a layer). Where the scaled sum of squares leaves the window the guess
        was wrong, or an entry is inf/NaN, or every entry is 0: those configs take :meth:`rms`
        (max, then sum), in a ``cond`` that runs only when a config of the chunk needs it. Either
        way the result depends on the config alone, never on its chunk-mates.
        """
        sdt, s_bias, window = self.sdt, self.s_bias, self.window
        v = v.astype(sdt)
        e = jnp.clip(e, 2 - s_bias, s_bias - 2)
        ss = self.mean12(jnp.square(v * pow2(-e, sdt)[:, None, None]))
        ok = (ss >= 2.0**-window) & (ss <= 2.0**window)
        r = jnp.where(ok, jnp.sqrt(ss) * pow2(e, sdt), 0)
        r = jax.lax.cond(jnp.all(ok), lambda: r, lambda: jnp.where(ok, r, self.rms(v)))
        fine = (r > 0) & jnp.isfinite(r)
        return r, jnp.where(fine, exponent(jnp.where(fine, r, 1)), e)

    def counts(self, v, prefix, finite=None):
        """The census of ``v``; ``finite``: per config, whether ``v`` is known to hold no inf or
        NaN (its RMS is finite): then the inf/NaN pass runs only if a chunk-mate needs it."""
        i32, packed, info = jnp.int32, self.packed, self.info

        def classes(v):  # computed inside each pass: XLA fuses it there instead of storing it
            bits = jax.lax.bitcast_convert_type(v, self.ubits)
            return classify(bits, self.nbits, info.nexp, info.nmant)

        def nonfinite(v):
            *_, inf, nan = classes(v)
            if packed:
                hi = jnp.sum(inf.astype(i32) | (nan.astype(i32) << 16), axis=(1, 2), dtype=i32)
                return hi & 0xFFFF, hi >> 16
            return tuple(jnp.sum(c, axis=(1, 2), dtype=i32) for c in (inf, nan))

        _, sub, zero, _, _ = classes(v)
        if packed:
            lo = jnp.sum(zero.astype(i32) | (sub.astype(i32) << 16), axis=(1, 2), dtype=i32)
            zero, sub = lo & 0xFFFF, lo >> 16
        else:
            zero, sub = (jnp.sum(c, axis=(1, 2), dtype=i32) for c in (zero, sub))
        if finite is None:
            inf, nan = nonfinite(v)
        else:
            none = jnp.zeros(v.shape[0], i32)
            inf, nan = jax.lax.cond(jnp.all(finite), lambda v: (none, none), nonfinite, v)
        return {
            f"{prefix}_subnormal": sub,
            f"{prefix}_zero": zero,
            f"{prefix}_inf": inf,
            f"{prefix}_nan": nan,
        }

    def layer_counts(self, hn, dphi, threshold, finite):
        """A hidden layer's integer statistics in one pass over ``hn`` and ``phi'(z)``: the
        census of ``hn`` (``post_*``; inf/NaN as in :meth:`counts`), ``saturated`` (the fraction
        of entries with ``|phi'| < threshold``) and ``dead`` (:meth:`dead`).

        Four per-unit counts over the batch (each at most ``batch``) are packed in 8-bit fields
        of one uint32 sum along the batch axis, where ``batch < 256``: one pass and one
        temporary instead of three of each. Every count is an exact integer, so the statistics
        are the same bit for bit as :meth:`counts`, :meth:`dead` and the float mean of the
        saturated mask (a sum of 0s and 1s below 2^24 is exact; it is divided the same way).
        """
        sat = jnp.abs(dphi).astype(self.sdt) < threshold
        if self.batch >= 256:
            return {
                **self.counts(hn, "post", finite),
                "saturated": jnp.mean(sat, axis=(1, 2), dtype=self.sdt),
                "dead": self.dead(dphi),
            }
        u32, i32, info = jnp.uint32, jnp.int32, self.info

        def classes(v):
            bits = jax.lax.bitcast_convert_type(v, self.ubits)
            return classify(bits, self.nbits, info.nexp, info.nmant)

        _, sub, zero, _, _ = classes(hn)
        # Exponent and mantissa fields apart, as the census tests them: fused with the rest,
        # ``bits & magnitude == 0`` was compiled (by LLVM) into a float compare with 0, which
        # reads float32 subnormals as 0 (measured: a unit of phi' = 2^-149 counted dead).
        off = classes(dphi)[2]
        packed = (
            zero.astype(u32)
            | (sub.astype(u32) << 8)
            | (off.astype(u32) << 16)
            | (sat.astype(u32) << 24)
        )
        per_unit = jnp.sum(packed, axis=1, dtype=u32)  # (config, units)

        def total(shift):
            return jnp.sum(((per_unit >> shift) & 0xFF).astype(i32), axis=1, dtype=i32)

        none = jnp.zeros(hn.shape[0], i32)

        def nonfinite(v):
            out = self.counts(v, "post")
            return out["post_inf"], out["post_nan"]

        inf, nan = jax.lax.cond(jnp.all(finite), lambda v: (none, none), nonfinite, hn)
        dead = ((per_unit >> 16) & 0xFF) == self.batch
        return {
            "post_subnormal": total(8),
            "post_zero": total(0),
            "post_inf": inf,
            "post_nan": nan,
            # jnp.mean's own steps: the (exact) sum in sdt divided by the entry count.
            "saturated": jax.lax.div(total(24).astype(self.sdt), self.sdt.type(self.entries)),
            "dead": jnp.mean(dead, axis=1, dtype=self.sdt),
        }

    def dead(self, dphi):
        """Fraction of units whose phi' is exactly 0 (+0 or -0, by bit pattern) on every example."""
        a = jax.lax.bitcast_convert_type(dphi, self.ubits) & self.magnitude
        per_unit = jnp.sum(a == 0, axis=1, dtype=jnp.int32) == self.batch
        return jnp.mean(per_unit, axis=1, dtype=self.sdt)
