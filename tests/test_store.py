"""Tests for the sweep store (stabkit.sweeps.store): nothing of the user's is touched, every chunk
is verified on load and repaired on resume, one writer at a time, kill -9 anywhere then resume.

One tiny sweep (24 configs, zarr chunks of 5 configs: 5 chunks that line up neither with the
kernel's chunks of 4 nor with the blocks of 12) is computed in memory once (``ref``) and written
once as a complete store (``good``) that the fault tests copy. Subprocesses only where a process
must die or run beside this one; they share a JAX compilation cache, so only the first compiles.
"""

import importlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr

import stabkit as sk
from stabkit.sweeps import driver as sw
from stabkit.sweeps import files as fl
from stabkit.sweeps import store as st
from stabkit.sweeps.spec import LAYER_VARS
from tests import faults

SPEC = dict(
    depth=(2, 3), width=4, activation=("tanh", "relu"), scale=(0.5, 1.0, 1.5), seed=(0, 1), batch=2
)
CHUNK = 4  # configs per kernel call
ROWS = 5  # configs per zarr chunk
N = 24
FLUSH = ROWS * st._config_bytes(("float32",), sk.SweepSpec(**SPEC).n_layers)


def spec():
    return sk.SweepSpec(**SPEC)


@pytest.fixture(autouse=True)
def rows(monkeypatch):
    monkeypatch.setattr(sw, "_FLUSH_BYTES", FLUSH)


@pytest.fixture(scope="module")
def ref():
    return sk.sweep(spec(), chunk_size=CHUNK, progress=False)


@pytest.fixture(scope="module")
def good(tmp_path_factory, ref):
    path = tmp_path_factory.mktemp("good") / "s.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sw, "_FLUSH_BYTES", FLUSH)
        sk.sweep(spec(), out=path, chunk_size=CHUNK, progress=False, load_result=False)
    assert len(list((path / st._RECORDS).glob("*.json"))) == 5
    return path


@pytest.fixture
def store(good, tmp_path):
    """A fresh copy of the complete store."""
    path = tmp_path / "s.zarr"
    shutil.copytree(good, path)
    return path


def assert_bits(ds, ref):
    """Bit for bit (0.0 vs -0.0 and NaN payloads count), attributes aside."""
    for name in ref.data_vars:
        a, b = ds[name].values, ref[name].values
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")), name
    xr.testing.assert_identical(ds.drop_attrs(), ref.drop_attrs())


def snapshot(path):
    """Every file under ``path``: its bytes."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def foreign_dir(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("\\section{Results}\n")
    (path / "figs").mkdir()
    (path / "figs" / "a.png").write_bytes(b"\x89PNG" + bytes(range(256)))
    return snapshot(path)


# ------------------------------------------------------------------------- nothing of yours lost


@pytest.mark.parametrize("resume", [True, False])
def test_foreign_directory_is_refused_and_intact(tmp_path, resume):
    d = tmp_path / "work"
    before = foreign_dir(d)
    error = ValueError if resume else FileExistsError
    with pytest.raises(error, match="not a stabkit store") as e:
        sk.sweep(spec(), out=d, resume=resume, progress=False)
    assert str(d) in str(e.value) and "nothing in it was touched" in str(e.value)
    assert snapshot(d) == before


def test_cli_resume_into_a_foreign_directory_is_refused_and_intact(tmp_path):
    from stabkit import cli

    d = tmp_path / "work"
    before = foreign_dir(d)
    argv = ["sweep", "--depth", "2", "--width", "4", "--batch", "2", "--out", str(d), "--resume"]
    try:
        rc = cli.main(argv)
    except (ValueError, SystemExit) as e:  # however the CLI reports it: never success
        rc = e.code if isinstance(e, SystemExit) else e
    assert rc != 0
    assert snapshot(d) == before


def test_empty_out_is_refused_and_the_working_directory_intact(tmp_path, monkeypatch):
    from stabkit import cli

    before = foreign_dir(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    for resume in (True, False):
        with pytest.raises(ValueError, match="out=''"):
            sk.sweep(spec(), out="", resume=resume, progress=False)
    try:
        rc = cli.main(["sweep", "--depth", "2", "--width", "4", "--out", "", "--resume"])
    except (ValueError, SystemExit) as e:
        rc = e.code if isinstance(e, SystemExit) else e
    assert rc != 0
    assert snapshot(tmp_path / "cwd") == before


def test_out_that_is_a_file_or_not_a_path_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    for resume in (True, False):
        with pytest.raises(ValueError, match="existing file"):
            sk.sweep(spec(), out=f, resume=resume, progress=False)
        with pytest.raises(ValueError, match="out="):  # a directory inside a file
            sk.sweep(spec(), out=f / "sub", resume=resume, progress=False)
    assert f.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [f]
    with pytest.raises(TypeError, match="out must be a path"):
        sk.sweep(spec(), out=3, progress=False)
    with pytest.raises(ValueError, match="NUL"):
        sk.sweep(spec(), out="a\0b", progress=False)
    with pytest.raises(TypeError, match="resume must be True or False"):
        sk.sweep(spec(), out=tmp_path / "x", resume="yes", progress=False)


def test_existing_store_without_resume_is_refused_untouched(store):
    before = snapshot(store)
    with pytest.raises(FileExistsError, match="resume=True"):
        sk.sweep(spec(), out=store, progress=False)
    with pytest.raises(ValueError, match="different sweep"):
        sk.sweep(sk.SweepSpec(**dict(SPEC, seed=(0, 2))), out=store, resume=True, progress=False)
    assert snapshot(store) == before


# --------------------------------------------------------------------------------- chunk faults


def _chunk_file(path, name, c):
    return path / name / "c" / str(c) / ("0" if name in LAYER_VARS else "")


def _damage(path, how, name, c):
    f = _chunk_file(path, name, c)
    f = f if f.is_file() else f.parent  # CONFIG_VARS: c/<c> is the file
    data = f.read_bytes()
    if how == "deleted":
        f.unlink()
    elif how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0x10
        f.write_bytes(bytes(flipped))
    elif how == "rewritten":  # other values, a valid crc32c: only the record's sha256 tells
        import zarr

        arr = zarr.open_group(str(path), mode="r+")[name]
        arr[c * ROWS : (c + 1) * ROWS] = 0
    return f


@pytest.mark.parametrize(
    "how, name",
    [
        ("deleted", "post_rms"),
        ("truncated", "first_inf_forward"),  # -1 everywhere: the fill value, stored anyway
        ("flipped", "loss"),
        ("rewritten", "grad_w_rms"),
    ],
)
def test_damaged_chunk_is_named_by_load_and_repaired_by_resume(store, ref, how, name, capsys):
    c = 2  # configs 10..14
    f = _damage(store, how, name, c)
    with pytest.raises(ValueError) as e:
        sk.load(store)
    msg = str(e.value)
    assert type(e.value) is ValueError
    assert str(store) in msg and f"variable {name!r}" in msg and "chunk 2 of 5" in msg, msg
    assert "configs 10..14 of 24" in msg and "activation=tanh" in msg, msg
    assert "resume=True" in msg
    others = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and p != f}
    time.sleep(0.01)
    ds = sk.sweep(spec(), out=store, resume=True, chunk_size=CHUNK, progress=True)
    assert_bits(ds, ref)
    assert_bits(sk.load(store), ref)
    # Exactly chunk 2 was rewritten: every other chunk file is as it was.
    changed = {p for p, t in others.items() if p.stat().st_mtime_ns != t}
    assert all(re.search(rf"[/\\]c[/\\]{c}([/\\]0)?$|[/\\]{c}\.json$", str(p)) for p in changed), (
        changed
    )
    err = capsys.readouterr().err
    assert "recomputing 1 damaged or missing chunk" in err and name in err
    counts = [int(k) for k in re.findall(r"(\d+)/24 \[", err)]  # tqdm: "sweep: 79%|..| 19/24 ["
    percents = [int(p) for p in re.findall(r"sweep: +(\d+)%", err)]
    # 19 configs were done (the resumed bar starts there); the kernel chunks [8, 12) and [12, 16)
    # hold the 5 to recompute, and the bar ends at 24 of 24, not beyond.
    assert counts[0] == 19 and counts[-1] == 24 and max(counts) == 24, err
    assert percents[-1] == 100 and max(percents) == 100, err
    assert not (store / fl._LOCK).exists()


def test_load_keeps_the_spec_and_the_attributes(good, ref):
    """One spec end to end: the store keeps it, load's dataset rebuilds it (and matches memory)."""
    ds = sk.load(good)
    assert_bits(ds, ref)
    assert ds.attrs == ref.attrs | {"devices": ds.attrs["devices"]}
    assert sk.SweepSpec.from_dataset(ds) == spec() == sk.SweepSpec.from_dataset(ref)
    assert ds.sizes["layer"] == spec().n_layers


def test_resume_of_a_complete_store_computes_nothing(store, capsys):
    before = snapshot(store)
    sk.sweep(spec(), out=store, resume=True, chunk_size=CHUNK, progress=True, load_result=False)
    assert "configs" not in capsys.readouterr().err
    assert snapshot(store) == before


def test_resume_after_an_exception_releases_the_lock_and_finishes(tmp_path, ref, monkeypatch):
    out = tmp_path / "s.zarr"
    write, calls = st._Store._write_chunk, [0]

    def write_then_fail(self, c, data):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        write(self, c, data)

    monkeypatch.setattr(st._Store, "_write_chunk", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        sk.sweep(spec(), out=out, chunk_size=CHUNK, progress=False)
    monkeypatch.setattr(st._Store, "_write_chunk", write)
    assert not (out / fl._LOCK).exists()
    with pytest.raises(ValueError, match=r"incomplete \(10 of 24 configs"):
        sk.load(out)
    assert_bits(sk.sweep(spec(), out=out, resume=True, chunk_size=CHUNK, progress=False), ref)


def test_marker_only_store_is_resumable(tmp_path, ref):
    """Killed right after writing its marker: nothing else there; load says so, resume runs."""
    out = tmp_path / "s.zarr"
    out.mkdir()
    marker = {"stabkit": "sweep store", "format": st._FORMAT, "spec": spec().to_dict()}
    assert fl._create_exclusive(out / st._MARKER, marker)
    with pytest.raises(ValueError, match="incomplete"):
        sk.load(out)
    with pytest.raises(FileExistsError):  # still a store: no resume, no write
        sk.sweep(spec(), out=out, progress=False)
    assert_bits(sk.sweep(spec(), out=out, resume=True, chunk_size=CHUNK, progress=False), ref)


# ------------------------------------------------------------------------------- load's errors


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: (p / st._MARKER).write_text('{"stabkit": "sw'), "stabkit-store.json"),
        (lambda p: (p / st._MARKER).write_text('{"stabkit": "x"}'), "not a stabkit store marker"),
        (lambda p: (p / "zarr.json").write_text("{garbled"), "zarr.json"),
        (lambda p: (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}'),
         "without stabkit's attributes"),
        (lambda p: (p / "loss" / "zarr.json").write_text("[1, 2"), "'loss'"),
        (lambda p: shutil.rmtree(p / "post_max"), "missing variable 'post_max'"),
        (lambda p: (p / st._RECORDS / "3.json").write_text("{"), "chunk 3 of 5"),
        (lambda p: (p / st._RECORDS / "3.json").write_text("{}"), "chunk 3 of 5"),
        (lambda p: (p / st._RECORDS / "4.json").unlink(), r"incomplete \(20 of 24"),
        (lambda p: shutil.rmtree(p / st._RECORDS), "incomplete"),
    ],
)  # fmt: skip
def test_damaged_metadata_gives_a_clear_error(store, damage, match):
    damage(store)
    with pytest.raises(ValueError, match=match) as e:
        sk.load(store)
    assert type(e.value) is ValueError and str(store) in str(e.value)


def test_what_is_not_a_sweep_store(tmp_path):
    import zarr

    with pytest.raises(FileNotFoundError, match="no stabkit sweep"):
        sk.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no stabkit sweep"):
        sk.load(tmp_path / "empty")
    zarr.open_group(str(tmp_path / "z"), mode="w").attrs["x"] = 1
    with pytest.raises(ValueError, match="not a stabkit sweep"):
        sk.load(tmp_path / "z")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "z", old)
    (old / "progress.json").write_text('{"done": 3}')
    with pytest.raises(ValueError, match="format 1"):
        sk.load(old)
    with pytest.raises(ValueError, match="format 1"):  # and never written into
        sk.sweep(spec(), out=old, resume=True, progress=False)
    with pytest.raises(ValueError, match="path=''"):
        sk.load("")


def test_resume_refuses_damaged_metadata_once_chunks_exist(store):
    (store / "zarr.json").write_text("{garbled")
    with pytest.raises(ValueError, match=r"zarr\.json"):
        sk.sweep(spec(), out=store, resume=True, chunk_size=CHUNK, progress=False)
    assert not (store / fl._LOCK).exists()


# ----------------------------------------------------------------------------------------- lock


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock(path, pid, host=None, token="t0"):
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "x", "token": token}
    (path / fl._LOCK).write_text(json.dumps(holder))


def test_live_lock_refuses_a_second_writer_naming_it(store):
    (store / st._RECORDS / "2.json").unlink()
    _lock(store, os.getpid())
    t = time.perf_counter()
    with pytest.raises(BlockingIOError) as e:
        sk.sweep(spec(), out=store, resume=True, chunk_size=CHUNK, progress=False)
    assert time.perf_counter() - t < 30  # at once: no waiting for the holder (probe aside)
    assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value)
    assert (store / fl._LOCK).exists()  # someone else's lock: left alone
    assert not (store / st._RECORDS / "2.json").exists()


def test_lock_from_another_host_is_refused_with_how_to_clear_it(store):
    _lock(store, 12345, host="elsewhere.example")
    with pytest.raises(BlockingIOError, match="another host") as e:
        sk.sweep(spec(), out=store, resume=True, progress=False)
    assert "elsewhere.example" in str(e.value) and f"delete {store / fl._LOCK}" in str(e.value)
    (store / fl._LOCK).write_text("garbage")
    with pytest.raises(ValueError, match="unreadable writer lock"):
        sk.sweep(spec(), out=store, resume=True, progress=False)


def test_stale_lock_is_taken_over(store, ref):
    (store / st._RECORDS / "1.json").unlink()
    _lock(store, _dead_pid())
    assert_bits(sk.sweep(spec(), out=store, resume=True, chunk_size=CHUNK, progress=False), ref)
    assert not (store / fl._LOCK).exists()


def test_stale_lock_has_exactly_one_taker(tmp_path):
    """Four threads find the same stale lock at once: one takes it, the others are refused."""
    dead = _dead_pid()
    for trial in range(10):
        d = tmp_path / str(trial)
        d.mkdir()
        _lock(d, dead, token=f"stale{trial}")
        barrier, results = threading.Barrier(4), []

        def take(d=d, barrier=barrier, results=results):
            lock = fl._WriterLock(d)
            barrier.wait()
            try:
                lock.acquire()
                results.append(lock)
            except BlockingIOError as e:
                results.append(e)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [r for r in results if isinstance(r, fl._WriterLock)]
        assert len(won) == 1, results
        assert all(f"pid {os.getpid()}" in str(r) for r in results if r not in won)
        assert json.loads((d / fl._LOCK).read_text())["token"] == won[0].token
        assert sorted(p.name for p in d.iterdir()) == [fl._LOCK]  # no breaker left behind
        won[0].release()
        assert not (d / fl._LOCK).exists()


# ------------------------------------------------------------------------ memory and disk bounds


def test_memory_and_disk_are_checked_before_allocating(tmp_path, monkeypatch):
    checks = importlib.import_module("stabkit._checks")
    monkeypatch.setattr(checks, "memory_limit", lambda: 2**30)
    big = sk.SweepSpec(depth=4096, width=1, batch=1, scale=[1 + i / 100 for i in range(100)],
                       seed=range(100))  # fmt: skip
    with pytest.raises(ValueError, match=r"spec.n_configs=10000 needs about 2.6 GiB") as e:
        sk.sweep(big, progress=False)
    assert "out=" in str(e.value)
    with pytest.raises(ValueError, match="load_result=False"):
        sk.sweep(big, out=tmp_path / "big", progress=False)
    monkeypatch.setattr(st, "_free_bytes", lambda path: 10**6)
    with pytest.raises(ValueError, match=r"free on its disk") as e:
        sk.sweep(big, out=tmp_path / "big", progress=False, load_result=False)
    assert str(tmp_path / "big") in str(e.value) and "10000 configs" in str(e.value)
    assert not (tmp_path / "big").exists()


# -------------------------------------------------------------------------- processes and kills


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A persistent compilation cache for the subprocesses (this process's config untouched)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def _fault(name, out, env, **kwargs):
    return faults.start(name, out, env=env, spec=SPEC, chunk=CHUNK, flush=FLUSH, **kwargs)


def test_two_writers_then_kill_then_resume(tmp_path, ref, jax_cache):
    """A writer runs (two chunks written, then waiting); a second one is refused at once naming
    it; the first is killed -9; resume takes its stale lock over and finishes bit-identically."""
    out = tmp_path / "s.zarr"
    proc = _fault("writer_then_wait", out, jax_cache)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        assert ready and proc.stdout.readline().strip() == "READY", proc.stderr.read()
        t = time.perf_counter()
        with pytest.raises(BlockingIOError) as e:
            sk.sweep(spec(), out=out, resume=True, chunk_size=CHUNK, progress=False)
        assert time.perf_counter() - t < 30
        assert f"pid {proc.pid}" in str(e.value) and socket.gethostname() in str(e.value)
        with pytest.raises(ValueError, match=r"incomplete \(10 of 24 configs"):
            sk.load(out)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / fl._LOCK).read_text())["pid"] == proc.pid  # left by the dead
    assert_bits(sk.sweep(spec(), out=out, resume=True, chunk_size=CHUNK, progress=False), ref)
    assert not (out / fl._LOCK).exists()


def _count_events(tmp_path, monkeypatch):
    """How many files a whole sweep writes through zarr or replaces (the kill points)."""
    local = importlib.import_module("zarr.storage._local")
    put, replace, n = local._put, fl._replace, [0]

    def count(f):
        def counted(*args, **kw):
            n[0] += 1
            return f(*args, **kw)

        return counted

    monkeypatch.setattr(local, "_put", count(put))
    monkeypatch.setattr(fl, "_replace", count(replace))
    sk.sweep(spec(), out=tmp_path / "count", chunk_size=CHUNK, progress=False, load_result=False)
    monkeypatch.setattr(local, "_put", put)
    monkeypatch.setattr(fl, "_replace", replace)
    return n[0]


@pytest.mark.parametrize("where", ["first write", "random write"])
def test_kill_at_a_torn_write_then_resume_is_bit_identical(
    tmp_path, ref, jax_cache, monkeypatch, where
):
    total = _count_events(tmp_path, monkeypatch)
    assert total > 5 * 30  # zarr metadata, then 5 x (29 chunk files and a record)
    kill_at = 1 if where == "first write" else int(np.random.default_rng().integers(2, total + 1))
    out = tmp_path / "s.zarr"
    proc = _fault("torn_at", out, jax_cache, kill_at=kill_at)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, (kill_at, err)
    assert (out / st._MARKER).exists() and (out / fl._LOCK).exists(), kill_at
    with pytest.raises(ValueError, match=r"incomplete|chunk"):
        sk.load(out)
    resumed = sk.sweep(spec(), out=out, resume=True, chunk_size=CHUNK, progress=False)
    assert_bits(resumed, ref)
    assert not (out / fl._LOCK).exists(), kill_at
