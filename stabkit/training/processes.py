"""A training grid in chunks of runs, and over many processes.

:func:`stabkit.train` compiles one kernel for ``K`` runs (``chunk_size``) and calls it on chunks
of ``K`` consecutive runs, the last padded with copies of the grid's last run. On XLA:CPU a run's
numbers depend on how many runs the kernel batches (the vmapped matrix products are blocked by
batch size), but not on which runs share its batch nor where it sits in it (measured: a run gives
the same bits beside any companions at equal ``K``). So a grid gives the same bits for the same
``K`` whether its chunks run in one process or many.

On ``N`` processes the chunks are split into ``N`` contiguous runs of about ``C/N`` chunks, each
process trains its own, and every process gathers the whole :class:`History`
(``multihost_utils.process_allgather``: gloo collectives between CPU processes).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from stabkit.training.history import History


def _chunk_runs(runs: Any, start: int, size: int, n_runs: int) -> Any:
    """Runs ``start .. start + size - 1``, indices past the grid repeating its last run."""
    idx = np.minimum(np.arange(start, start + size), n_runs - 1)
    return type(runs)(*(None if v is None else v[idx] for v in runs))


def _mine(n_chunks: int, index: int, count: int) -> range:
    """Process ``index``'s chunks of ``n_chunks``: contiguous, at most ``ceil(C / N)``."""
    per = -(-n_chunks // count)
    return range(min(n_chunks, index * per), min(n_chunks, (index + 1) * per))


def _rows(history: History) -> dict[str, Any]:
    """The fields of ``history`` with a leading run axis (all but ``step`` and ``runs``), on the
    host."""
    rows = {k: v for k, v in history._asdict().items() if k not in ("step", "runs")}
    return jax.tree.map(np.asarray, rows)


def _train_grid(train_chunk, runs: Any, n_runs: int, size: int, procs, step) -> History:
    """Every chunk of ``size`` runs through ``train_chunk`` (one compiled call each): this
    process's share, gathered from every process when there are several. ``step``: the
    History's record steps."""
    n_chunks = -(-n_runs // size)
    mine = _mine(n_chunks, procs.index, procs.count)
    parts = [_rows(train_chunk(_chunk_runs(runs, c * size, size, n_runs))) for c in mine]
    if procs.count == 1:
        rows = jax.tree.map(lambda *a: np.concatenate(a), *parts)
    else:
        from jax.experimental import multihost_utils

        if not parts:
            # More processes than chunks: this one computes chunk 0 only for its shapes (no
            # later than the others finish theirs) and sends zeros.
            like = _rows(train_chunk(_chunk_runs(runs, 0, size, n_runs)))
        else:
            like = parts[0]
        cap = -(-n_chunks // procs.count) * size  # every process sends as many rows

        def padded(first, *have):
            out = np.zeros((cap, *first.shape[1:]), first.dtype)
            if have:
                out[: size * len(have)] = np.concatenate(have)
            return out

        local = jax.tree.map(padded, like, *parts)
        rows = jax.tree.map(np.asarray, multihost_utils.process_allgather(local, tiled=True))
    rows = jax.tree.map(lambda a: a[:n_runs], rows)
    return History(step=step, runs=runs, **rows)
