"""Sweeps on several processes: the split, the flags, and two processes over loopback.

The end-to-end test runs ``stabkit sweep`` as two processes joined by ``jax.distributed`` on
127.0.0.1 (gloo CPU collectives), kills one of them between two of its chunks, resumes both, and
compares the store bit for bit with a one-process sweep of the same grid.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import stabkit as sk
from stabkit import distributed
from stabkit.cli import main
from stabkit.sweeps.dataset import _config_bytes
from stabkit.sweeps.processes import _split, _work_before

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ the split


def _work_by_hand(spec: sk.SweepSpec) -> np.ndarray:
    """Every config's work, config by config in flat order: width^2 (depth + 2)."""
    work = []
    for _dt, w, _a, _i, d, _s, _b, _k in itertools.product(
        spec.dtype, spec.width, spec.activation, spec.init, spec.depth, spec.scale,
        spec.bias_std, spec.seed,
    ):  # fmt: skip
        work.append(w * w * (d + 2.0))
    return np.asarray(work)


SPLIT_SPECS = [
    sk.SweepSpec(depth=[1, 5, 40], width=[4, 32], scale=[1.0, 2.0], seed=[0, 1, 2]),
    sk.SweepSpec(
        depth=[3], width=[8], activation=["relu", "tanh"], dtype=["float16", "float32"], seed=[0]
    ),
]


@pytest.mark.parametrize("spec", SPLIT_SPECS)
def test_work_before_matches_a_config_by_config_sum(spec):
    k = np.arange(spec.n_configs + 1)
    expect = np.concatenate([[0.0], np.cumsum(_work_by_hand(spec))])
    np.testing.assert_allclose(_work_before(spec, k), expect, rtol=1e-12)


@pytest.mark.parametrize("spec", SPLIT_SPECS)
@pytest.mark.parametrize("rows", [1, 5, 7])
@pytest.mark.parametrize("count", [1, 2, 3, 8, 200])
def test_split_covers_each_chunk_once_contiguously_with_balanced_work(spec, rows, count):
    parts = _split(spec, rows, count)
    n_chunks = -(-spec.n_configs // rows)
    assert len(parts) == count
    assert [c for part in parts for c in part] == list(range(n_chunks))
    work = _work_by_hand(spec)
    chunk_work = np.add.reduceat(work, np.arange(0, spec.n_configs, rows))
    per = [chunk_work[list(part)].sum() for part in parts]
    # Each process is within one chunk's work of its share.
    assert max(abs(p - work.sum() / count) for p in per) <= chunk_work.max() + 1e-9


# ------------------------------------------------------------------------------------- the flags


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coordinator": 12345, "num_processes": 2, "process_id": 0}, TypeError, "HOST:PORT"),
        ({"coordinator": "node001", "num_processes": 2, "process_id": 0}, ValueError, "HOST:PORT"),
        ({"coordinator": "h:0", "num_processes": 2, "process_id": 0}, ValueError, "1..65535"),
        ({"coordinator": ":123", "num_processes": 2, "process_id": 0}, ValueError, "HOST:PORT"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, ValueError, "num_processes"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, ValueError, r"0\.\.1"),
        ({"coordinator": "h:1", "num_processes": 2.0, "process_id": 0}, TypeError, "int"),
        ({"coordinator": "h:1", "num_processes": True, "process_id": 0}, TypeError, "int"),
        ({"coordinator": "h:1", "num_processes": 2}, ValueError, "process_id missing"),
        ({"num_processes": 2, "process_id": 1}, ValueError, "coordinator missing"),
        ({"coordinator": "h:1", "num_processes": 1}, ValueError, "one process needs no"),
    ],
)
def test_initialize_refuses_bad_arguments_before_joining(kwargs, error, match):
    with pytest.raises(error, match=match):
        distributed.initialize(**kwargs)
    assert not __import__("jax").distributed.is_initialized()


_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def test_one_process_without_a_cluster_and_cluster_detection(monkeypatch):
    for var in (*_SLURM, "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() == distributed.Processes(0, 1)
    assert distributed.initialize(num_processes=1) == distributed.Processes(0, 1)
    env = dict(zip(_SLURM, ("7", "node[001-002]", "1", "0", "0"), strict=True))
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert distributed._detected() == ("slurm", 1)
    assert distributed.initialize() == distributed.Processes(0, 1)  # one task: no runtime
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed._detected() == ("slurm", 4)  # (initialize would now join the job)


def test_sweep_on_several_processes_needs_a_store():
    spec = sk.SweepSpec(depth=[2], width=[4], batch=2)
    with pytest.raises(ValueError, match="give out="):
        sk.sweep(spec, num_processes=2, process_id=0, coordinator="127.0.0.1:1")


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--num-processes", "2"], "--coordinator and --process-id missing"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "out of range"),
        (["--coordinator", "h", "--num-processes", "2", "--process-id", "0"], "--coordinator="),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"], "give --out"),
        (["--num-processes", "0"], "--num-processes"),
    ],
)
def test_cli_refuses_bad_process_flags_in_one_line(flags, match, capsys):
    assert main(["sweep", "--depth", "2", "--width", "4", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


# ------------------------------------------------------------------------ two processes, for real

GRID = [
    "--depth", "1:8", "--width", "8", "--batch", "4", "--scale", "0.5,1,1.5,2", "--seeds", "2",
    "--activation", "relu,tanh", "--chunk-size", "8", "--quiet",
]  # fmt: skip
GRID_SPEC = sk.SweepSpec(
    depth=list(range(1, 9)), width=[8], batch=4, scale=[0.5, 1.0, 1.5, 2.0], seed=[0, 1],
    activation=["relu", "tanh"],
)  # fmt: skip
ROWS = 8  # configs per zarr chunk: 16 chunks, 8 a process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, port: int, index: int, pause: float, *extra) -> subprocess.Popen:
    flush = ROWS * _config_bytes(GRID_SPEC.dtype, GRID_SPEC.n_layers)
    flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    argv = [sys.executable, "-m", "tests.distributed_child", str(flush), str(pause), "--"]
    argv += ["sweep", *GRID, "--out", str(out), *flags, str(index), *extra]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait(proc: subprocess.Popen, seconds: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"a sweep process did not end in {seconds} s:\n{err[-3000:]}")
    return proc.returncode, out, err


def _records(store: pathlib.Path) -> dict[int, dict]:
    files = (store / "stabkit-chunks").glob("*.json")
    return {int(f.stem): json.loads(f.read_text()) for f in files}


def test_two_processes_killed_and_resumed_give_the_one_process_store(tmp_path):
    store, alone = tmp_path / "two", tmp_path / "one"
    # Process 1 pauses after each chunk: it is killed after its first, 7 chunks short.
    port = _free_port()
    p0, p1 = _launch(store, port, 0, 0.0), _launch(store, port, 1, 30.0)
    start = time.monotonic()
    line = p1.stdout.readline()
    assert line.startswith("WROTE "), (line, p1.stderr.read()[-3000:] if p1.poll() else "")
    p1.send_signal(signal.SIGKILL)
    rc, _, err = _wait(p0)
    _wait(p1)
    first = time.monotonic() - start
    # Process 0 wrote its part, then reported the dead process in one line and exit status 1.
    assert rc == 1, err[-3000:]
    assert "process 1 of 2 stopped before finishing its part" in err and "--resume" in err, err
    parts = _split(GRID_SPEC, ROWS, 2)
    assert parts == [range(0, 8), range(8, 16)]  # equal work: every depth row in each half
    assert set(_records(store)) == {*parts[0], int(line.split()[1])}
    with pytest.raises(ValueError, match="incomplete"):
        sk.load(store)

    port = _free_port()
    p0, p1 = _launch(store, port, 0, 0.0, "--resume"), _launch(store, port, 1, 0.0, "--resume")
    (rc0, _, err0), (rc1, out1, err1) = _wait(p0), _wait(p1)
    assert (rc0, rc1) == (0, 0), (err0[-3000:], err1[-3000:])
    assert "process 1 of 2: done" not in out1  # --quiet
    for i, part in enumerate(parts):
        rec = json.loads((store / "stabkit-processes" / f"{i}-of-2.json").read_text())
        assert (rec["process"], rec["processes"], rec["chunks"]) == (i, 2, [part.start, part.stop])
    assert not (store / "stabkit-writer.lock").exists()

    # One process, same grid and chunks: the same arrays and the same recorded digests.
    flush = ROWS * _config_bytes(GRID_SPEC.dtype, GRID_SPEC.n_layers)
    from stabkit.sweeps import driver

    old, driver._FLUSH_BYTES = driver._FLUSH_BYTES, flush
    try:
        ref = sk.sweep(GRID_SPEC, out=alone, chunk_size=8, progress=False)
    finally:
        driver._FLUSH_BYTES = old
    got = sk.load(store)
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
    assert {c: r["sha256"] for c, r in _records(store).items()} == {
        c: r["sha256"] for c, r in _records(alone).items()
    }
    print(f"two processes: killed run {first:.1f} s")


def test_train_on_two_processes_gives_the_one_process_chunks(tmp_path):
    from stabkit.training import train
    from tests.distributed_child import flat, train_grid

    port, path = (
        _free_port(),
        os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.distributed_child",
                "train",
                str(port),
                str(i),
                str(tmp_path / f"{i}.npz"),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in (0, 1)
    ]
    for p in procs:
        rc, _, err = _wait(p)
        assert rc == 0, err[-3000:]
    spec, runs = train_grid()
    ref = flat(train(spec, runs, chunk_size=4))  # what each process computed: chunks of 4 runs
    one = flat(train(spec, type(runs)(*(None if v is None else v[:4] for v in runs))))
    for name, value in ref.items():  # a chunk is one call on its runs
        if name != ".step":
            np.testing.assert_array_equal(value[:4], one[name], err_msg=name)
    for i in (0, 1):
        got = np.load(tmp_path / f"{i}.npz")
        assert got["processes"].tolist() == [i, 2]
        assert set(got.files) == {"processes", *ref}
        for name, value in ref.items():  # every process holds the whole grid, bit for bit
            np.testing.assert_array_equal(got[name], value, err_msg=f"process {i}: {name}")


def test_a_lock_left_on_another_host_is_taken_over_once_it_stops_beating(tmp_path, monkeypatch):
    """A cluster job resumed on other nodes finds process 0's old lock from another host."""
    from stabkit.sweeps import files as fl

    monkeypatch.setattr(fl, "_BEAT_S", 0.2)
    read = lambda: json.loads((tmp_path / fl._LOCK).read_text())
    left = {"pid": 1, "host": "elsewhere.example", "started": "x", "token": "t0", "beat": 7}
    (tmp_path / fl._LOCK).write_text(json.dumps(left))
    lock = fl._WriterLock(tmp_path)
    start = time.monotonic()
    lock.acquire()
    assert time.monotonic() - start >= fl._STALE_BEATS * fl._BEAT_S * 0.9  # watched, then broken
    assert read()["token"] == lock.token and read()["host"] == socket.gethostname()
    beat = read()["beat"]
    time.sleep(5 * fl._BEAT_S)
    assert read()["beat"] > beat  # the holder's thread keeps it beating
    monkeypatch.setattr(fl.socket, "gethostname", lambda: "other.example")
    with pytest.raises(BlockingIOError, match="refreshed every"):  # seen from another host: alive
        fl._WriterLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / fl._LOCK).exists() and not lock._beater.is_alive()
