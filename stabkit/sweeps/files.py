"""The sweep store's files: checked paths, atomic JSON and the exclusive writer lock.

Every file here is created whole or not at all: a JSON record is written to a temporary file and
renamed over the old one (:func:`_write_atomically`); a marker or a lock is created with
O_CREAT|O_EXCL (:func:`_create_exclusive`) so that of two processes exactly one creates it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import socket
import threading
import time
import uuid
from typing import Any

_LOCK = "stabkit-writer.lock"

#: A held lock is rewritten every this many seconds with its "beat" count raised, so that a lock
#: left on another host (a cluster job resumed on other nodes) can be told stale: its beat has
#: not moved for ``_STALE_BEATS`` periods. No clocks are compared, only the count.
_BEAT_S = 5.0
_STALE_BEATS = 3


def _out_path(out: Any, name: str = "out") -> pathlib.Path:
    """``out`` as a directory path stabkit may create or write: never '', never a file."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(out).__name__}")
    text = os.fspath(out)
    if not isinstance(text, str):  # a bytes path
        raise TypeError(f"{name} must be a str path, got {text!r}")
    if not text.strip():
        # pathlib.Path('') is '.': the working directory. Never guess that.
        raise ValueError(f"{name}={text!r} is not a directory path; give the store's directory")
    if "\0" in text:
        raise ValueError(f"{name}={text!r} holds a NUL character; it is not a usable path")
    path = pathlib.Path(text)
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as e:  # a name too long, ...
        raise ValueError(f"{name}={text!r} is not a usable path: {e}") from None
    if is_file:
        raise ValueError(f"{name}={text!r} is an existing file, not a directory; not touched")
    return path


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read_json(file: pathlib.Path, what: str) -> dict[str, Any]:
    """A JSON object from ``file``; ValueError naming the file if it is damaged."""
    try:
        data = json.loads(file.read_bytes().decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} is missing ({what})") from None
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{file} ({what}) is damaged: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} ({what}) is damaged: not a JSON object")
    return data


def _replace(tmp: pathlib.Path, dst: pathlib.Path) -> None:
    """``os.replace``: readers see the old file or the new one, never half of one."""
    os.replace(tmp, dst)


def _write_atomically(dst: pathlib.Path, data: dict[str, Any]) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(data, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    _replace(tmp, dst)


def _create_exclusive(file: pathlib.Path, data: dict[str, Any]) -> bool:
    """Create ``file`` holding ``data`` unless it exists (O_CREAT|O_EXCL): True if created."""
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(data, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _read_retrying(file: pathlib.Path, what: str, seconds: float = 1.0) -> dict[str, Any] | None:
    """A file another process creates then fills: wait up to ``seconds`` for valid JSON.

    None if the file is gone; ValueError if it stays unreadable."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return _read_json(file, what)
        except FileNotFoundError:
            return None
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------- lock


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:  # a zombie (killed, not yet reaped) holds nothing
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return not (proc_start is not None and now is not None and now != proc_start)


class _WriterLock:
    """One writer per store: a lock file created with O_CREAT|O_EXCL, naming its holder.

    A lock whose holder died on this host is taken over; so is one from another host whose
    holder stopped refreshing it (its ``beat`` did not move for ``_STALE_BEATS * _BEAT_S``
    seconds; a lock without a beat, from an older stabkit, is refused as before). Two processes
    may both find the same stale lock; each must first create ``<lock>.break-<tag>`` (O_EXCL,
    tagged by that lock's token), and removes the lock only if it still holds that token, so at
    most one of them breaks it,
    and the new lock is then won by exactly one O_EXCL create.
    """

    def __init__(self, store: pathlib.Path):
        self.store, self.file = store, store / _LOCK
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop: threading.Event | None = None
        self._beater: threading.Thread | None = None

    def _describe(self, h: dict[str, Any]) -> str:
        return f"pid {h.get('pid')} on host {h.get('host')!r} since {h.get('started')}"

    def acquire(self) -> None:
        host, pid = socket.gethostname(), os.getpid()
        mine = {
            "pid": pid,
            "host": host,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": self.token,
            "proc_start": _proc_start(pid),
            "beat": 0,
        }
        for _ in range(100):
            if _create_exclusive(self.file, mine):
                self.held = True
                self._start_beating(mine)
                return
            try:
                holder = _read_retrying(self.file, "the store's writer lock")
            except ValueError:
                raise ValueError(
                    f"{self.file} is an unreadable writer lock; if no sweep is writing "
                    f"{self.store}, delete {self.file} and resume"
                ) from None
            if holder is None:  # released meanwhile: try again
                continue
            h_pid, h_host = holder.get("pid"), holder.get("host")
            if not isinstance(h_pid, int) or h_pid <= 0 or not isinstance(h_host, str):
                raise ValueError(
                    f"{self.file} is a damaged writer lock ({holder}); if no sweep is writing "
                    f"{self.store}, delete {self.file} and resume"
                )
            if h_host != host and "beat" in holder:
                state = self._watch(holder)
                if state == "alive":
                    raise BlockingIOError(
                        f"{self.store} is being written by {self._describe(holder)} (lock "
                        f"{self.file}, refreshed every {_BEAT_S:g} s); one writer at a time"
                    )
                if state == "stale":
                    self._break(holder)
                continue
            if h_host != host:
                raise BlockingIOError(
                    f"{self.store} is being written by {self._describe(holder)} (lock "
                    f"{self.file}); stabkit cannot check a process on another host: if no sweep "
                    f"is running there, delete {self.file} and resume"
                )
            if _alive(h_pid, holder.get("proc_start")):
                raise BlockingIOError(
                    f"{self.store} is being written by {self._describe(holder)} (lock "
                    f"{self.file}); one writer at a time: wait for it, or stop it "
                    f"(a killed writer's lock is taken over on resume)"
                )
            self._break(holder)
        raise BlockingIOError(f"could not take the writer lock {self.file}: it keeps changing")

    def _watch(self, holder: dict[str, Any]) -> str:
        """'alive' if ``holder``'s lock beats within ``_STALE_BEATS`` periods, 'gone' if it is
        released or replaced meanwhile, else 'stale'."""
        deadline = time.monotonic() + _STALE_BEATS * _BEAT_S
        while time.monotonic() < deadline:
            time.sleep(_BEAT_S / 10)
            try:
                now = _read_retrying(self.file, "the store's writer lock")
            except ValueError:
                continue  # torn mid-replace: look again
            if now is None or now.get("token") != holder.get("token"):
                return "gone"
            if now.get("beat") != holder.get("beat"):
                return "alive"
        return "stale"

    def _start_beating(self, record: dict[str, Any]) -> None:
        """Rewrite the lock every ``_BEAT_S`` seconds (a daemon thread) while it is held."""
        stop = self._stop = threading.Event()

        def beat():
            n = 0
            while not stop.wait(_BEAT_S):
                n += 1
                try:
                    if _read_json(self.file, "the store's writer lock").get("token") != self.token:
                        return  # taken over (it was judged stale): never write it back
                    _write_atomically(self.file, {**record, "beat": n})
                except (OSError, ValueError):
                    pass  # a missed beat; the next one tries again

        self._beater = threading.Thread(target=beat, name="stabkit-lock-beat", daemon=True)
        self._beater.start()

    def _break(self, stale: dict[str, Any]) -> None:
        token = stale.get("token")
        tag = hashlib.sha256(repr(token).encode()).hexdigest()[:16]  # a file name, whatever it is
        breaker = self.file.with_name(f"{_LOCK}.break-{tag}")
        if not _create_exclusive(breaker, {"pid": os.getpid(), "host": socket.gethostname()}):
            try:
                age = time.time() - breaker.stat().st_mtime
            except FileNotFoundError:
                return  # the other breaker finished: look again
            if age > 10:
                raise BlockingIOError(
                    f"a process died while taking over the stale writer lock {self.file}; if no "
                    f"sweep is writing {self.store}, delete {self.file} and {breaker} and resume"
                )
            time.sleep(0.02)  # another process is breaking it right now
            return
        try:
            current = _read_retrying(self.file, "the store's writer lock")
            if current is not None and current.get("token") == token:
                os.unlink(self.file)  # still the stale one: only a breaker can remove it
        finally:
            os.unlink(breaker)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._stop is not None:
            self._stop.set()
            self._beater.join()
        with contextlib.suppress(FileNotFoundError, ValueError):
            if _read_json(self.file, "the store's writer lock").get("token") == self.token:
                os.unlink(self.file)
