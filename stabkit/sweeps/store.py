"""The sweep's store: the streamed, resumable zarr directory and :func:`load`.

A store is a directory that stabkit owns from its first file on (format 2)::

    stabkit-store.json      the marker, created first (O_CREAT|O_EXCL, before any zarr file):
                            {"stabkit": "sweep store", "format": 2, "spec": {...}}
    stabkit-writer.lock     while a sweep writes: {"pid", "host", "started", "token", ...},
                            created with O_CREAT|O_EXCL, removed when the sweep ends (held by
                            process 0 of a multi-process sweep until every process is done)
    zarr.json               the zarr v3 group; attribute "stabkit": format, spec, versions,
                            probe (the backend's floating-point behaviour), devices
    <variable>/             one flat config-major zarr array per variable (LAYER_VARS: configs x
                            layers, CONFIG_VARS: configs), chunks of ``rows`` configs, codecs
                            bytes -> zstd -> crc32c (every chunk file carries its checksum)
    stabkit-chunks/<c>.json the completion record of zarr chunk ``c`` (configs c*rows...):
                            {"chunk", "configs": [start, stop], "sha256": {variable: hex digest
                            of the decoded chunk}}, written (tmp file + atomic rename) after all
                            of the chunk's files
    stabkit-processes/<i>-of-<N>.json
                            a multi-process sweep's record that process ``i`` of ``N`` wrote all
                            its chunks: {"process", "processes", "chunks": [first, stop],
                            "configs", "host", "pid", "finished"} (see
                            :mod:`stabkit.sweeps.processes`; :func:`load` needs only the chunks)

A chunk is complete when its record exists and every variable's chunk file is there, passes its
crc32c and hashes to the recorded digest. :func:`load` checks every chunk of every variable each
time; ``sweep(..., resume=True)`` checks them too and recomputes exactly the configs of the
chunks that are missing or fail, so a repaired store is bit-identical to one never interrupted.

Nothing outside these names is ever written, and nothing is deleted but stabkit's own temporary
files, lock (and ``<lock>.break-<tag>`` while a stale lock is taken over), records, and, before
the first record exists, a zarr metadata file a crash left torn: a directory that is not empty
and holds no marker is refused before anything is touched. Nothing is pickled. The lock and the
atomic files: :mod:`stabkit.sweeps.files`; the arrays and their chunks:
:mod:`stabkit.sweeps.chunks`; the dataset and its metadata: :mod:`stabkit.sweeps.dataset`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import pathlib
import shutil
import socket

import numpy as np

from stabkit._checks import check_memory, format_bytes
from stabkit.sweeps.chunks import _RECORDS, _Arrays, _digest
from stabkit.sweeps.dataset import (
    _FORMAT,
    _VARS,
    _config_bytes,
    _dataset,
    _grid,
    _var_dtype,
    _var_shape,
)
from stabkit.sweeps.files import (
    _create_exclusive,
    _existing_ancestor,
    _out_path,
    _read_json,
    _read_retrying,
    _write_atomically,
    _WriterLock,
)
from stabkit.sweeps.spec import CONFIG_VARS, LAYER_VARS, SweepSpec, _layer_slots

_MARKER = "stabkit-store.json"
_PROCESSES = "stabkit-processes"  # a multi-process sweep's per-process completion records


# ---------------------------------------------------------------------------------------- store


def _has_records(path: pathlib.Path) -> bool:
    """Whether any chunk of the store at ``path`` was ever recorded complete."""
    try:
        return any((path / _RECORDS).glob("*.json"))
    except OSError:
        return False


class _Store:
    """The zarr store of a streamed sweep: opened (or checked for creation), locked, verified.

    :meth:`verify` takes this process's chunks (all of them in a one-process sweep) and finds
    the complete ones; ``done`` counts their configs; :meth:`needed` says which of a range are
    still to compute; :meth:`add` buffers results until a zarr chunk is whole, then
    writes it and its completion record. Use as a context manager: the lock is released on exit.
    """

    def __init__(
        self,
        out,
        spec: SweepSpec,
        meta: dict,
        resume: bool,
        rows: int,
        *,
        member: str | None = None,
    ):
        """``rows``: configs per zarr chunk of a new store (an existing one keeps its own).
        ``member``: the writer lock's token, for a process > 0 of a multi-process sweep: it
        joins the store process 0 holds (which must hold that lock) instead of opening it."""
        self.path = path = _out_path(out)
        self.spec, self.meta, self.rows = spec, meta, rows
        self.n = spec.n_configs
        self.lock = _WriterLock(path)
        self.arrays: _Arrays | None = None
        self.own: range | None = None  # the chunks this process computes; None: all
        self.complete: set[int] = set()
        self.repaired: list[str] = []
        self.buffers: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        self.new = True
        if member is not None:
            self._join(member)
            return
        try:
            nonempty = path.is_dir() and any(path.iterdir())
        except OSError as e:
            raise ValueError(f"out={str(out)!r} is not a usable directory: {e}") from None
        if nonempty:
            if not (path / _MARKER).exists():
                what = (
                    "a stabkit store written by an older stabkit (format 1, no checksums): "
                    "rerun the sweep into a new directory"
                    if (path / "progress.json").exists() and (path / "zarr.json").exists()
                    else f"not a stabkit store (it holds no {_MARKER})"
                )
                if not resume:
                    raise FileExistsError(
                        f"out={str(out)!r} exists and is not empty ({what}); nothing in it was "
                        "touched"
                    )
                raise ValueError(
                    f"cannot resume into out={str(out)!r}: the directory is {what}; "
                    "nothing in it was touched"
                )
            if not resume:
                raise FileExistsError(
                    f"{path} exists; pass resume=True to continue it, or remove it"
                )
            self.new = False
            self.lock.acquire()
            try:
                self._open()
            except BaseException:
                self.lock.release()
                raise

    # -- opening

    def _check_marker(self) -> None:
        marker = _read_retrying(self.path / _MARKER, "the stabkit store marker")
        if marker is None or marker.get("stabkit") != "sweep store":
            raise ValueError(f"{self.path / _MARKER} is not a stabkit store marker")
        if marker.get("format") != _FORMAT:
            raise ValueError(
                f"{self.path} has store format {marker.get('format')}; this stabkit reads and "
                f"resumes format {_FORMAT}"
            )
        if marker.get("spec") != self.meta["spec"]:
            raise ValueError(
                f"{self.path} holds a different sweep ({marker.get('spec')}); cannot resume "
                f"{self.meta['spec']}"
            )

    def _open(self) -> None:
        """An existing store (locked): finish its creation if it was cut short."""
        self._check_marker()
        self._initialise()

    def _join(self, token: str) -> None:
        """Join the store process 0 opened and locked (token: its lock's), to write chunks."""
        holder = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            holder = _read_retrying(self.lock.file, "the store's writer lock")
        if holder is None or holder.get("token") != token:
            raise ValueError(
                f"out={str(self.path)!r}: this process does not see the store that process 0 "
                f"opened there (its writer lock {self.lock.file} is "
                + ("missing" if holder is None else "another sweep's")
                + "): every process must see out= on a file system they share"
            )
        self.new = False
        self._check_marker()
        arrays = _Arrays(self.path, self.meta["spec"], "a")
        for name in _VARS:
            arrays.arrays[name] = arrays.open(name).with_config({"write_empty_chunks": True})
        self.arrays, self.rows = arrays, arrays.rows

    def _initialise(self) -> None:
        """Create whatever of the zarr group is missing (all of it right after the marker).

        Before the first completion record nothing here holds a result, and every zarr file is
        stabkit's own (the marker came first): a metadata file torn by a crash is then rewritten.
        Once a record exists, damaged metadata is an error naming the file."""
        fresh = not _has_records(self.path)
        try:
            arrays = _Arrays(self.path, self.meta["spec"], "a")
        except ValueError:
            if not fresh:
                raise
            (self.path / "zarr.json").unlink()
            arrays = _Arrays(self.path, self.meta["spec"], "a")
        if "stabkit" not in arrays.group.attrs or fresh:
            arrays.group.attrs["stabkit"] = self.meta
        arrays.meta()
        missing = []
        for name in _VARS:
            file = self.path / name / "zarr.json"
            if file.exists():
                try:
                    arrays.open(name)
                    continue
                except ValueError:
                    if not fresh:
                        raise
                    file.unlink()
            missing.append(name)
        for name in missing:
            arrays.create(name, arrays.rows or self.rows)
        for name, arr in arrays.arrays.items():
            # A chunk of fill values (-1 everywhere, say) is written too: a missing file is then
            # always a lost chunk, never "all fill".
            arrays.arrays[name] = arr.with_config({"write_empty_chunks": True})
        (self.path / _RECORDS).mkdir(exist_ok=True)
        self.arrays, self.rows = arrays, arrays.rows

    def verify(self, own: range | None = None) -> None:
        """Take the chunks ``own`` (default: all) as this process's, and find which of them are
        complete (verified: present, checksummed, hashed as recorded); a damaged one's record
        is removed (it must never vouch for a bad chunk) and the chunk is recomputed."""
        arrays = self.arrays
        self.own = range(arrays.n_chunks) if own is None else own
        for c in self.own:
            if not arrays.record_file(c).exists():
                continue
            problem = arrays.read_chunk(c)
            if problem is None:
                self.complete.add(c)
            else:
                self.repaired.append(problem)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(arrays.record_file(c))

    def start(self) -> None:
        """Create a new store: the marker first, then the lock, then the zarr group."""
        if not self.new:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"out={str(self.path)!r} cannot be created: {e}") from None
        marker = {"stabkit": "sweep store", "format": _FORMAT, "spec": self.meta["spec"]}
        try:
            created = _create_exclusive(self.path / _MARKER, marker)
        except OSError as e:
            raise ValueError(f"out={str(self.path)!r} is not writable: {e}") from None
        if not created:  # another sweep created a store here a moment ago
            raise FileExistsError(f"{self.path} was just created by another sweep; not touched")
        self.lock.acquire()
        self.new = False
        self._initialise()

    @property
    def done(self) -> int:
        """Configs of this process's chunks that are complete."""
        if self.arrays is None:
            return 0
        return sum(b - a for a, b in map(self.arrays.bounds, self.complete))

    @property
    def total(self) -> int:
        """Configs of this process's chunks (every config in a one-process sweep)."""
        if self.own is None:
            return self.n
        if not self.own:
            return 0
        return self.arrays.bounds(self.own[-1])[1] - self.arrays.bounds(self.own[0])[0]

    def needed(self, start: int, stop: int) -> int:
        """How many of configs ``start:stop`` belong to this process's chunks not yet complete."""
        rows = self.rows
        n = 0
        for c in range(start // rows, (stop - 1) // rows + 1):
            if c not in self.complete and (self.own is None or c in self.own):
                n += min(stop, (c + 1) * rows) - max(start, c * rows)
        return n

    # -- writing

    def add(self, start: int, results: dict[str, np.ndarray]) -> None:
        """Take a kernel chunk's results (configs ``start...``); write every zarr chunk that
        they complete. Rows of chunks already complete are dropped."""
        stop = start + len(next(iter(results.values())))
        rows = self.rows
        for c in range(start // rows, (stop - 1) // rows + 1):
            if c in self.complete or (self.own is not None and c not in self.own):
                continue
            a, b = self.arrays.bounds(c)
            if c not in self.buffers:
                self.buffers[c] = (
                    {k: np.empty((b - a, *v.shape[1:]), v.dtype) for k, v in results.items()},
                    np.zeros(b - a, bool),
                )
            buf, filled = self.buffers[c]
            lo, hi = max(a, start), min(b, stop)
            for k, v in results.items():
                buf[k][lo - a : hi - a] = v[lo - start : hi - start]
            filled[lo - a : hi - a] = True
            if filled.all():
                self._write_chunk(c, buf)
                del self.buffers[c]

    def _write_chunk(self, c: int, data: dict[str, np.ndarray]) -> None:
        """Every variable's chunk file, then (atomically) the chunk's completion record."""
        a, b = self.arrays.bounds(c)
        for name in _VARS:
            self.arrays.arrays[name][a:b] = data[name]
        record = {
            "chunk": c,
            "configs": [a, b],
            "sha256": {name: _digest(data[name]) for name in _VARS},
        }
        _write_atomically(self.arrays.record_file(c), record)
        self.complete.add(c)

    def finish_part(self, index: int, count: int) -> None:
        """Record that process ``index`` of ``count`` has written its chunks (every one)."""
        (self.path / _PROCESSES).mkdir(exist_ok=True)
        record = {
            "process": index,
            "processes": count,
            "chunks": [self.own.start, self.own.stop],
            "configs": self.done,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        _write_atomically(self.path / _PROCESSES / f"{index}-of-{count}.json", record)

    def close(self) -> None:
        self.buffers.clear()
        self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _store_bytes(spec: SweepSpec, configs: int) -> int:
    """About how many bytes ``configs`` of ``spec`` take on disk: every per-config value and the
    layers each config runs (a config's layers beyond its depth are NaN and compress away)."""
    per_layer = sum(_var_dtype(k, spec.dtype).itemsize for k in LAYER_VARS)
    per_config = sum(_var_dtype(k, spec.dtype).itemsize for k in CONFIG_VARS)
    mean_layers = sum(_layer_slots(d) for d in spec.depth) / len(spec.depth)
    return math.ceil(configs * (per_config + per_layer * mean_layers))


def _check_disk(store: _Store) -> None:
    """ValueError if the configs still to compute would not fit in the free disk space."""
    todo = store.total - store.done
    need = _store_bytes(store.spec, todo)
    free = _free_bytes(store.path)
    if free is not None and need > free:
        raise ValueError(
            f"out={str(store.path)!r}: the store needs about {format_bytes(need)} for "
            f"{todo} configs, more than the {format_bytes(free)} free on its disk"
        )


def _free_bytes(path: pathlib.Path) -> int | None:
    try:
        return shutil.disk_usage(_existing_ancestor(path)).free
    except OSError:
        return None


# ----------------------------------------------------------------------------------------- load


def load(path: str | os.PathLike):
    """Read a sweep written by ``sweep(spec, out=path)`` back as the same ``xarray.Dataset``
    (its ``spec`` attribute rebuilt by ``SweepSpec.from_dataset(load(path))``).

    Reads zarr arrays and JSON only (never pickle), and verifies every chunk of every variable
    on every load: its file is there, passes its crc32c checksum and hashes to the sha256 its
    completion record holds.

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: ``path`` is not a stabkit sweep, a store of another format, incomplete
            (rerun the sweep with ``resume=True``), or damaged: a missing, truncated or altered
            chunk (the message names the store, the variable, the chunk and its configs;
            ``resume=True`` recomputes it), a damaged metadata file or a missing variable
            (named).
    """
    path = _out_path(path, "path")
    if not path.is_dir():
        raise FileNotFoundError(f"no stabkit sweep at {path} (no such directory)")
    if not (path / _MARKER).exists():
        if (path / "progress.json").exists() and (path / "zarr.json").exists():
            raise ValueError(
                f"{path} is a format 1 store (an older stabkit, no checksums); this stabkit "
                f"reads format {_FORMAT}: rerun the sweep"
            )
        if (path / "zarr.json").exists():
            raise ValueError(f"{path} is a zarr store but not a stabkit sweep (no {_MARKER})")
        raise FileNotFoundError(f"no stabkit sweep at {path} (no {path / _MARKER})")
    marker = _read_json(path / _MARKER, "the stabkit store marker")
    if marker.get("stabkit") != "sweep store":
        raise ValueError(f"{path / _MARKER} is not a stabkit store marker")
    if marker.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {marker.get('format')}, this stabkit reads {_FORMAT}")
    if not _has_records(path):
        raise ValueError(
            f"{path} is incomplete (its sweep stopped before completing a chunk); rerun "
            "sweep(..., resume=True)"
        )
    arrays = _Arrays(path, marker.get("spec") or {}, "r")
    meta = arrays.meta()
    if meta["format"] != _FORMAT:
        raise ValueError(f"{path} has format {meta['format']}, this stabkit reads {_FORMAT}")
    if meta["spec"] != marker.get("spec"):
        raise ValueError(f"{path}: the spec in zarr.json differs from {path / _MARKER}")
    spec = meta["spec"]
    try:
        shape, n_layers = _grid(spec)
        n = math.prod(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / _MARKER}: the spec is damaged ({e!r})") from None
    check_memory(
        n * _config_bytes(spec["dtype"], n_layers), "path", str(path), "the dataset read back"
    )
    for name in _VARS:
        arrays.open(name)
    flat = {k: np.empty(_var_shape(k, n, n_layers), _var_dtype(k, spec["dtype"])) for k in _VARS}
    missing = []
    for c in range(arrays.n_chunks):
        if not arrays.record_file(c).exists():
            missing.append(c)
            continue
        problem = arrays.read_chunk(c, flat)
        if problem is not None:
            raise ValueError(f"{problem}; rerun sweep(..., resume=True) to recompute it")
    if missing:
        done = n - sum(b - a for a, b in map(arrays.bounds, missing))
        raise ValueError(
            f"{path} is incomplete ({done} of {n} configs; {len(missing)} of {arrays.n_chunks} "
            "chunks not written); rerun sweep(..., resume=True)"
        )
    return _dataset(meta, flat)
