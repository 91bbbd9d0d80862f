"""Faults injected into a sweep in a child process: ``python -m tests.faults NAME OUT JSON``.

The store tests kill a sweep at chosen points (kill -9 mid-write, a torn file, a writer that waits
holding its lock). The patches of stabkit's private names live here, in a module that linters and
refactorings see, rather than in code strings; :func:`start` runs one in a child process.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def start(name: str, out, env=None, **kwargs) -> subprocess.Popen:
    """Run fault ``name`` on a sweep into ``out`` in a child process (``kwargs``: its arguments)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "tests.faults", name, str(out), json.dumps(kwargs)]
    return subprocess.Popen(
        argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _sweep(out: str, spec: dict, chunk: int) -> None:
    import stabkit as sk

    sk.sweep(sk.SweepSpec(**spec), out=out, chunk_size=chunk, progress=False)


def killed_in_fifth_write(out: str, spec: dict, chunk: int, flush: int) -> None:
    """Die (SIGKILL) in the middle of the 5th zarr chunk write: 5 of its arrays are on disk."""
    from stabkit.sweeps import driver, store

    driver._FLUSH_BYTES = flush
    write, calls = store._Store._write_chunk, [0]

    def write_and_die(self, c, data):
        calls[0] += 1
        if calls[0] == 5:
            start, stop = self.arrays.bounds(c)
            for name in list(data)[:5]:
                self.arrays.arrays[name][start:stop] = data[name]
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, c, data)

    store._Store._write_chunk = write_and_die
    _sweep(out, spec, chunk)


def writer_then_wait(out: str, spec: dict, chunk: int, flush: int) -> None:
    """Write two chunks, print READY and wait (holding the writer lock) to be killed."""
    from stabkit.sweeps import driver, store

    driver._FLUSH_BYTES = flush
    write, calls = store._Store._write_chunk, [0]

    def write_then_wait(self, c, data):
        write(self, c, data)
        calls[0] += 1
        if calls[0] == 2:
            print("READY", flush=True)
            time.sleep(600)

    store._Store._write_chunk = write_then_wait
    _sweep(out, spec, chunk)


def torn_at(out: str, spec: dict, chunk: int, flush: int, kill_at: int) -> None:
    """At the ``kill_at``-th file write (a zarr file or an atomic rename), write half, kill -9."""
    import zarr.storage._local as local

    from stabkit.sweeps import driver, files

    driver._FLUSH_BYTES = flush
    events = [0]
    put, replace = local._put, files._replace

    def event(path, data):
        events[0] += 1
        if events[0] == kill_at:  # a torn write (half the file), then kill -9
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    def torn_put(path, value, exclusive=False):
        event(path, bytes(value.as_buffer_like()))
        return put(path, value, exclusive=exclusive)

    def torn_replace(tmp, dst):
        event(dst, tmp.read_bytes())
        return replace(tmp, dst)

    local._put, files._replace = torn_put, torn_replace
    _sweep(out, spec, chunk)


FAULTS = {f.__name__: f for f in (killed_in_fifth_write, writer_then_wait, torn_at)}

if __name__ == "__main__":
    name, out, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    FAULTS[name](out, **kwargs)
