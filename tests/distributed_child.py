"""One process of a multi-process ``stabkit sweep`` or ``train`` for tests/test_distributed.py.

``python -m tests.distributed_child FLUSH PAUSE -- ARGS...`` runs ``stabkit ARGS`` with zarr
chunks of ``FLUSH`` bytes of results (small stores of many chunks) and, if ``PAUSE`` > 0, prints
``WROTE <chunk>`` and sleeps ``PAUSE`` seconds after each chunk it writes, so that the test can
kill it between two chunks. A process that stops sending heartbeats is counted dead after 5 s.

``python -m tests.distributed_child train PORT INDEX OUT.npz`` joins a two-process job on
127.0.0.1:PORT, trains :func:`train_grid` and saves its History's arrays to ``OUT.npz``.
"""

from __future__ import annotations

import sys
import time


def train_grid():
    """A small training grid of 7 runs (two chunks on two processes, the second padded)."""
    import jax

    from stabkit.training import TrainSpec, make_runs, teacher_student

    spec = TrainSpec(
        teacher_student(jax.random.key(0), n=32), max_depth=2, steps=6, log_every=2,
        activation=("relu", "tanh"),
    )  # fmt: skip
    runs = make_runs(spec, depth=[1, 2], lr=[1e-3, 1e-2], activation=["relu", "tanh"])
    return spec, type(runs)(*(None if v is None else v[:7] for v in runs))


def flat(history) -> dict:
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves_with_path(history._replace(runs=None))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def train(port: str, index: str, out: str) -> int:
    import numpy as np

    from stabkit import distributed
    from stabkit.training import train as run

    distributed._HEARTBEAT_S = 5
    procs = distributed.initialize(f"127.0.0.1:{port}", 2, int(index))
    spec, runs = train_grid()
    history = run(spec, runs)  # chunks of ceil(7 / 2) = 4 runs
    np.savez(out, processes=np.asarray(procs), **flat(history))
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "train":
        return train(*argv[1:])
    flush, pause, sep, *args = argv
    assert sep == "--", argv
    from stabkit import distributed
    from stabkit.sweeps import driver, store

    distributed._HEARTBEAT_S = 5  # a killed process is found dead in 5 s, not 100
    driver._FLUSH_BYTES = int(flush)
    if float(pause) > 0:
        write = store._Store._write_chunk

        def write_and_pause(self, c, data):
            write(self, c, data)
            print(f"WROTE {c}", flush=True)
            time.sleep(float(pause))

        store._Store._write_chunk = write_and_pause
    from stabkit.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
