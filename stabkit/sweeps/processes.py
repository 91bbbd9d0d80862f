"""A sweep over many processes: which zarr chunks each process computes, and the store they share.

The store's chunks are split into ``N`` contiguous runs of about equal work (a config's work is
about ``width^2 (depth + 2)``), one per process, from the spec, the chunk size and ``N`` alone:
every process derives the same split with no message. A process computes the kernel chunks that
hold configs of its own zarr chunks and writes only those zarr chunks (a kernel chunk across a
boundary is computed by both neighbours, each keeping its own rows), so no chunk file is written
by two processes.

Process 0 opens the store exactly as a one-process sweep does (marker, writer lock, zarr
template and metadata) and then tells the others the lock's token; each of them checks that it
sees that lock in the directory (the store must be on a file system every process shares) and
opens the arrays to write its chunks. When a process has written its part it records that in
``stabkit-processes/<i>-of-<N>.json``; process 0 holds the writer lock until every process has
finished or stopped.
"""

from __future__ import annotations

import numpy as np

from stabkit.sweeps.spec import SweepSpec


def _work_before(spec: SweepSpec, k: np.ndarray) -> np.ndarray:
    """The work of configs ``0..k-1`` (float64, ``k`` an array of flat config indices).

    Configs are ordered (dtype, width, activation, init | depth, scale, bias_std, seed): an
    outer block of ``B`` configs has one width, and its depth rows are ``m`` configs each."""
    shape = spec.shape
    m = int(np.prod(shape[5:]))  # scale, bias_std, seed
    depth = np.asarray(spec.depth, np.float64) + 2
    block = m * len(spec.depth)
    rows = np.concatenate([[0.0], np.cumsum(depth)]) * m  # work of the first q rows, width 1
    widths = np.asarray(spec.width, np.float64)
    per_outer = np.broadcast_to(
        (widths**2)[None, :, None, None], (shape[0], shape[1], shape[2], shape[3])
    ).ravel()  # width^2 of every outer block, in flat order
    full = np.concatenate([[0.0], np.cumsum(per_outer * rows[-1])])
    k = np.asarray(k, np.int64)
    outer, r = np.divmod(k, block)
    q, rem = np.divmod(r, m)
    inside = rows[q] + rem * depth[np.minimum(q, len(depth) - 1)]
    w2 = per_outer[np.minimum(outer, len(per_outer) - 1)]
    return full[outer] + np.where(outer < len(per_outer), w2 * inside, 0.0)


def _split(spec: SweepSpec, rows: int, count: int) -> list[range]:
    """The zarr chunks of each of ``count`` processes: contiguous, about equal work."""
    n = spec.n_configs
    n_chunks = -(-n // rows)
    edges = np.minimum(np.arange(n_chunks + 1, dtype=np.int64) * rows, n)
    done = _work_before(spec, edges)  # work before each chunk edge, increasing
    # Process p starts at the first chunk edge with at least p/N of the work before it.
    starts = np.searchsorted(done, done[-1] * np.arange(count) / count, side="left")
    starts = np.minimum(starts, n_chunks)
    bounds = [*starts.tolist(), n_chunks]
    return [range(bounds[p], max(bounds[p], bounds[p + 1])) for p in range(count)]


#: The errors process 0 can meet opening the store, raised again (same type) by the others.
_ERRORS = {e.__name__: e for e in (ValueError, TypeError, FileExistsError, BlockingIOError)}


def _agree(group, spec: SweepSpec, devices) -> list[str]:
    """Every process's devices, once every process has checked that all run this same sweep."""
    mine = {"spec": spec.to_dict(), "devices": [str(d) for d in devices]}
    group.send("spec", mine)
    theirs = {**group.receive("spec", what="starting the sweep"), group.index: mine}
    for p, msg in sorted(theirs.items()):
        if msg["spec"] != mine["spec"]:
            raise ValueError(
                f"process {p} of {group.count} runs a different sweep ({msg['spec']}) from process "
                f"{group.index} ({mine['spec']}): every process must run the same spec"
            )
    return [f"process {p}: {d}" for p, msg in sorted(theirs.items()) for d in msg["devices"]]


def _shared_store(out, spec: SweepSpec, meta: dict, resume: bool, rows: int, group):
    """The store every process writes: opened (or created) and locked by process 0, joined by
    the others once process 0 says it is ready (or raising what process 0 met)."""
    from stabkit.sweeps.store import _check_disk, _Store

    if group.index == 0:
        try:
            store = _Store(out, spec, meta, resume, rows)
            try:
                if store.new:
                    _check_disk(store)
                    store.start()
            except BaseException:
                store.close()
                raise
        except Exception as e:
            group.send("store", {"error": str(e), "type": type(e).__name__})
            raise
        group.send("store", {"token": store.lock.token})
        return store
    msg = group.receive("store", [0], what="opening the store")[0]
    if "error" in msg:
        error = _ERRORS.get(msg["type"], RuntimeError)
        raise error(f"process 0 could not open the store: {msg['error']}")
    try:
        return _Store(out, spec, meta, resume, rows, member=msg["token"])
    except Exception as e:
        _end(group, e)  # process 0 learns why at once
        raise


def _end(group, error: BaseException | None) -> None:
    """Tell the others this process's part is done (or why it failed), and wait for theirs.

    Raises :class:`stabkit.distributed.ProcessFailure` if another process failed or stopped:
    every process's completed chunks stay in the store for ``resume=True``."""
    from stabkit.distributed import ProcessFailure

    hint = "; the completed chunks are kept: rerun every process with resume=True (--resume)"
    group.send("done", {} if error is None else {"error": f"{type(error).__name__}: {error}"})
    if error is not None:
        return
    try:
        done = group.receive("done", what="its part of the sweep")
    except ProcessFailure as e:
        raise ProcessFailure(f"{e}{hint}") from None
    for p, msg in sorted(done.items()):
        if "error" in msg:
            raise ProcessFailure(f"process {p} of {group.count} failed: {msg['error']}{hint}")
