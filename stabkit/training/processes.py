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
    """The fields of ``history`` with a leading run axis (all but ``step`` and ``runs``)."""
    return {k: v for k, v in history._asdict().items() if k not in ("step", "runs")}


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *parts)


def _combine(parts, step, runs, n_runs: int, per: int, size: int, shape, count: int) -> History:
    """One History from this process's chunk histories (``parts``, each of ``size`` runs),
    gathered from every process when ``count`` > 1. ``shape``: one chunk's fields (their shapes
    and dtypes), for a process that has no chunk."""
    if count == 1:
        rows = _concat(parts)
    else:
        from jax.experimental import multihost_utils

        cap = per * size

        def padded(like, have=None):
            out = np.zeros((cap, *like.shape[1:]), like.dtype)
            if have is not None:
                out[: len(have)] = have
            return out

        if parts:
            local = jax.tree.map(padded, shape, _concat(parts))
        else:  # more processes than chunks: this one sends zeros
            local = jax.tree.map(padded, shape)
        gathered = multihost_utils.process_allgather(local, tiled=True)
        rows = jax.tree.map(np.asarray, gathered)
    rows = jax.tree.map(lambda a: a[:n_runs], rows)
    return History(step=step, runs=runs, **rows)
