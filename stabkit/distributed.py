"""Many processes, one sweep: JAX's multi-controller runtime set up for stabkit.

:func:`stabkit.sweep` and :func:`stabkit.train` run on ``N`` processes (one per host, or one per
GPU) when JAX's distributed runtime is initialized: each process computes its own part of the
grid on its own devices, and the processes exchange only a few small messages through the
runtime's coordination service (who opened the store, who finished). :func:`initialize` starts
the runtime, or finds it started:

* explicitly, with ``coordinator="HOST:PORT"`` (process 0's address, where it listens),
  ``num_processes=N`` and ``process_id=I`` (the CLI's ``--coordinator``, ``--num-processes``,
  ``--process-id``);
* automatically under SLURM (``srun``), Open MPI (``mpirun``), Kubernetes (JobSet) and Cloud TPU
  when the job has more than one process (JAX's own cluster detection);
* or as the user started it with ``jax.distributed.initialize`` before calling stabkit.

``num_processes=1`` says "one process" even inside a cluster job (for example one independent
sweep per SLURM task).

When stabkit starts the runtime it selects the gloo collectives for CPU devices (so that
:func:`stabkit.train` can gather its runs across CPU processes) and JAX's recoverable mode, in
which a process that dies does not abort the others: they finish their own part, keep it on
disk, and then report which process stopped (:class:`ProcessFailure`); rerunning every process
with ``resume=True`` finishes the job. Started by the user without that mode, JAX aborts every
process when one dies; the stored parts are kept all the same.
"""

from __future__ import annotations

import atexit
import collections
import json
import time
from typing import Any, NamedTuple

import jax

__all__ = ["MAX_PROCESSES", "ProcessFailure", "Processes", "initialize"]

#: The most processes stabkit accepts (a sweep's store records one file per process).
MAX_PROCESSES = 65536


class ProcessFailure(RuntimeError):
    """Another process of a multi-process run stopped or failed before finishing its part.

    What every process completed is kept (a sweep's store holds its chunks); rerun every process
    with ``resume=True`` to finish."""


class Processes(NamedTuple):
    """This process's place in the job: ``index`` (0..count-1) of ``count`` processes."""

    index: int
    count: int


def _check_coordinator(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"coordinator must be a 'HOST:PORT' string (process 0's address), got "
            f"{type(value).__name__} {value!r}"
        )
    host, sep, port = value.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if (
        not sep
        or not bare.strip()
        or any(c.isspace() for c in value)
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
    ):
        raise ValueError(
            f"coordinator={value!r} is not HOST:PORT (a host name or IP address, then a port "
            "1..65535, e.g. 'node001:12345' or '[::1]:12345')"
        )
    return value


def _check_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; valid: {low}..{high}")
    return int(value)


def _detected() -> tuple[str, int] | None:
    """The cluster JAX detects (SLURM, Open MPI, Kubernetes, Cloud TPU) and its process count."""
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - a JAX without its cluster registry
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env.name, int(env.get_process_count())
        except Exception:  # a half-configured cluster: JAX reports it if it is used
            continue
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Processes:
    """Join (or find) the multi-process job this process belongs to.

    Idempotent: once the runtime is up (started here or by ``jax.distributed.initialize``),
    later calls return its :class:`Processes` and check any value given against it. It must
    run before this process's first JAX computation (JAX's rule).

    Args:
        coordinator: ``"HOST:PORT"`` where process 0 listens; with ``num_processes`` and
            ``process_id``. All three ``None``: detect a cluster job of several processes
            (SLURM, Open MPI, Kubernetes, Cloud TPU), else one process.
        num_processes: processes in the job, 1..:data:`MAX_PROCESSES`; 1 is one process
            (no runtime, whatever the environment).
        process_id: this process's index, 0..num_processes-1.

    Returns:
        :class:`Processes` ``(index, count)``.

    Raises:
        TypeError, ValueError: a malformed address, a count or index out of range, some of the
            three given without the others, or values that differ from the running job's.
        RuntimeError: JAX has already computed something in this process (start the runtime
            first), or the coordinator cannot be reached (JAX's message).

    Examples:
        >>> initialize(num_processes=1)
        Processes(index=0, count=1)
        >>> initialize("node001", 2, 0)
        Traceback (most recent call last):
        ...
        ValueError: coordinator='node001' is not HOST:PORT (a host name or IP address, ...
    """
    if coordinator is not None:
        coordinator = _check_coordinator(coordinator)
    if num_processes is not None:
        num_processes = _check_int(num_processes, "num_processes", 1, MAX_PROCESSES)
    if process_id is not None:
        high = (num_processes or MAX_PROCESSES) - 1
        process_id = _check_int(process_id, "process_id", 0, high)
    if jax.distributed.is_initialized():
        return _running(coordinator, num_processes, process_id)
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if num_processes == 1:
        if coordinator is not None:
            raise ValueError(
                f"coordinator={coordinator!r} with num_processes=1: one process needs no "
                "coordinator"
            )
        return Processes(0, 1)
    if all(v is None for v in given.values()):
        found = _detected()
        if found is None or found[1] <= 1:
            return Processes(0, 1)
        _start()
        return Processes(jax.process_index(), jax.process_count())
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} missing: coordinator, num_processes and process_id go "
            f"together (got {', '.join(f'{k}={v!r}' for k, v in given.items() if v is not None)}"
            "), or give none of them to detect a SLURM/MPI/Kubernetes/TPU job"
        )
    _start(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return Processes(jax.process_index(), jax.process_count())


def _current() -> Processes:
    """The job this process runs in: the running ``jax.distributed`` one, else this alone."""
    if jax.distributed.is_initialized():
        return Processes(jax.process_index(), jax.process_count())
    return Processes(0, 1)


def _running(coordinator, num_processes, process_id) -> Processes:
    """The job already running; ValueError if a given value contradicts it."""
    from jax._src import distributed

    have = {
        "coordinator": distributed.global_state.coordinator_address,
        "num_processes": jax.process_count(),
        "process_id": jax.process_index(),
    }
    for name, value in zip(have, (coordinator, num_processes, process_id), strict=True):
        if value is not None and value != have[name]:
            raise ValueError(
                f"{name}={value!r}, but this process already runs in a job with {name}="
                f"{have[name]!r} (jax.distributed is initialized; one job per process)"
            )
    return Processes(jax.process_index(), jax.process_count())


#: How long process 0, at exit, waits for the others to leave (it hosts the coordination
#: service, whose end would abort them).
_EXIT_WAIT_S = 600.0


#: Seconds without a heartbeat after which the runtime counts a process dead (JAX's default).
_HEARTBEAT_S = 100


def _start(**kwargs) -> None:
    jax.config.update("jax_enable_recoverability", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=_HEARTBEAT_S)
    except RuntimeError as e:
        if "before" in str(e):
            raise RuntimeError(
                "the multi-process runtime must start before this process's first JAX "
                "computation: call stabkit.distributed.initialize(...) first (or pass "
                f"coordinator= etc. to the first stabkit call). JAX said: {e}"
            ) from None
        raise
    if jax.process_index() == 0:
        # Recoverable mode drops JAX's shutdown barrier: without this, process 0 leaving first
        # takes the coordination service with it and aborts the processes still finishing.
        # (Registered after JAX's own exit hook, so it runs before it.)
        atexit.register(_outlive_others)


def _live(client, processes) -> dict:
    """The processes of ``processes`` still in the job (the caller must be one of the asked)."""
    index = jax.process_index()
    try:
        return client.get_live_nodes(sorted({*processes, index}))
    except Exception:  # the service cannot tell: count them alive (keep waiting)
        return dict.fromkeys(processes, 0)


def _outlive_others() -> None:
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        return
    others = [p for p in range(jax.process_count()) if p != 0]
    deadline = time.monotonic() + _EXIT_WAIT_S
    while time.monotonic() < deadline and any(p in _live(client, others) for p in others):
        time.sleep(0.05)


# ------------------------------------------------------------------------------- the messages


#: How many runs of each kind this process has joined: the n-th sweep of every process is the
#: same sweep (each process calls stabkit in the same order), and its messages are keyed by n.
_CALLS: collections.Counter = collections.Counter()


class _Group:
    """The processes of one multi-process call, exchanging small JSON messages.

    Keys live in the coordination service's key-value store under ``stabkit/<kind>/<n>/``.
    A wait for another process's message fails with :class:`ProcessFailure` as soon as that
    process has left the job without sending it (the runtime's list of live processes)."""

    def __init__(self, kind: str):
        from jax._src import distributed

        self.client = distributed.global_state.client
        if self.client is None:
            raise RuntimeError("stabkit bug: a process group without jax.distributed")
        self.index, self.count = jax.process_index(), jax.process_count()
        self.prefix = f"stabkit/{kind}/{_CALLS[kind]}"
        _CALLS[kind] += 1

    def send(self, key: str, value: dict) -> None:
        self.client.key_value_set(f"{self.prefix}/{key}/{self.index}", json.dumps(value))

    def _get(self, key: str, sender: int) -> dict | None:
        try:
            text = self.client.key_value_try_get(f"{self.prefix}/{key}/{sender}")
        except Exception:  # NOT_FOUND (JAX raises its runtime error)
            return None
        return json.loads(text)

    def receive(self, key: str, senders=None, what: str = "its part") -> dict[int, dict]:
        """Every sender's message ``key`` (default: every other process), waiting for them."""
        senders = [p for p in range(self.count) if p != self.index] if senders is None else senders
        got: dict[int, dict] = {}
        pause = 0.01
        while True:
            for p in senders:
                if p not in got and (msg := self._get(key, p)) is not None:
                    got[p] = msg
            if len(got) == len(senders):
                return got
            waiting = [p for p in senders if p not in got]
            live = _live(self.client, waiting)
            dead = []
            for p in waiting:
                if p in live:
                    continue
                # Its message may have arrived just before it left: look once more.
                msg = self._get(key, p)
                if msg is None:
                    dead.append(p)
                else:
                    got[p] = msg
            if dead:
                raise ProcessFailure(
                    f"process {dead[0]} of {self.count} stopped before finishing {what}"
                    + (f" (and processes {dead[1:]})" if len(dead) > 1 else "")
                )
            time.sleep(pause)
            pause = min(2 * pause, 1.0)
