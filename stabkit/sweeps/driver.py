"""The sweep driver, :func:`sweep`: thousands of network configurations as a few compiled
kernels, as an xarray Dataset.

A :class:`SweepSpec` names the axes (depth, width, activation, init, scale, bias_std, dtype,
seed) and :func:`sweep` traces every configuration of their product, returning an
``xarray.Dataset`` with one dimension per axis plus ``layer`` (the per-layer statistics of
:func:`stabkit.trace`: forward and backward RMS, census counts, saturation, dead units) and the
per-config results (output RMS, loss, first inf/NaN/zero layer forward and backward).

How it is fast:

* **One compilation per (dtype, width).** Depth, scale, bias_std, seed, activation and init are
  data. The configs of one (dtype, width) are processed in chunks by one ``jit(shard_map(vmap))``
  kernel.
* **Little wasted arithmetic.** The configs are ordered (activation, init, depth, scale, bias_std,
  seed), so a chunk holds one activation and one init and a narrow range of depths. The forward
  and the (hand-written) backward pass are ``while_loop`` s whose trip count is the chunk's
  largest depth, a runtime value: a depth-4 chunk runs 4 layers, not 64. The activation and the
  initializer are ``lax.switch`` es on a per-chunk index, so only the chosen branch runs.
* **Cheap weights.** A layer's unit draw (normal, uniform, orthogonal or identity) is made inside
  the loop once per distinct seed in the chunk, not once per config, and scaled per config; the
  draws are kept for the backward pass. Every layer's activations live in a workspace donated from
  one call to the next.
* **Few passes over the data.** On CPU the per-layer statistics, not the matrix products, are
  the cost. Each RMS is one pass, scaled by an exact power of two guessed from the layer before
  (two passes, max then sum, only for the configs whose guess failed); ``post_max`` is the one max;
  census classes come from the bit pattern, two counts packed in one int32 sum (a hidden layer's
  census of h, its dead units and its saturated entries are one pass: four per-unit counts in
  8-bit fields of one uint32 sum, for batches under 256), and the inf/NaN
  pass runs only in chunks where an RMS is not finite; dL/dW's product reads the layer input
  stored transposed, the form XLA:CPU's fast dot library takes.

Every config's network is exactly ``mlp_init(jax.random.key(seed), depth=depth, width=width,
init=init, scale=scale, bias_std=bias_std, dtype=dtype)`` (in_dim = out_dim = width) and its input
is ``x`` drawn from ``fold_in(key(seed), 2)`` (:func:`sweep_input`): its randomness comes from its
own seed and coordinates, never from its position, so the result is bit-identical whatever the
chunk size, the device count, the process count or the order of the axis values. Configs that
differ only in depth, scale, bias or activation share their unit draws (common random numbers: a
depth-8 net is a prefix of a depth-16 one), which makes depth x scale maps smooth.

Layers follow :func:`stabkit.trace`: layer 0 is the input, 1..depth the hidden layers,
``depth + 1`` the readout; layers beyond a config's ``depth + 1`` are NaN.

With ``out=``, finished chunks are written to a zarr store as they complete, so a sweep killed
at any point and rerun with ``resume=True`` finishes with an identical dataset, and memory stays
bounded by the chunk size. The store is stabkit's own from its first file (a marker; any other
non-empty directory is refused untouched), one sweep writes it at a time (a lock naming its
pid and host), every chunk carries a crc32c checksum and a completion record with its sha256,
and :func:`load` verifies them all (zarr arrays and JSON; no pickle). A chunk lost or damaged
later is named by :func:`load` and recomputed, exactly, by ``resume=True``. The layout:
:mod:`stabkit.sweeps.store`.

Modules: :mod:`stabkit.sweeps.spec` (the spec and the variables), :mod:`stabkit.sweeps.kernel`
(the compiled chunk kernel), :mod:`stabkit.sweeps.store` (dataset, zarr store, :func:`load`);
this module plans the chunks and drives them.

Devices: each chunk's config axis is split over ``jax.devices()`` (``shard_map`` over a
one-axis mesh, no communication between devices), and results are bit-identical whatever the
device count. That needs care: XLA rewrites ``v / b`` (``b`` broadcast) as ``v * (1 / b)`` in
some programs and not in others (a program partitioned for several devices is simplified in
another order), so no statistic divides by a broadcast value; the RMS scales by an exact power of
two instead.

Processes: on ``N`` processes (``jax.distributed``; :mod:`stabkit.distributed`) each computes
whole zarr chunks of the store on its own devices, about ``1/N`` of the work, and writes them
into the one store (:mod:`stabkit.sweeps.processes`); nothing is gathered.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from stabkit._checks import check_memory, int_values, strict_bool
from stabkit.distributed import _Group
from stabkit.sweeps.dataset import _config_bytes, _dataset, _meta, _var_dtype, _var_shape
from stabkit.sweeps.files import _out_path
from stabkit.sweeps.kernel import _INIT_KIND, _kernel, _multiplier, _Static
from stabkit.sweeps.processes import _agree, _end, _shared_store, _split
from stabkit.sweeps.spec import _INT_VARS, CONFIG_VARS, LAYER_VARS, SweepSpec
from stabkit.sweeps.store import _check_disk, _Store, load

__all__ = ["sweep"]


#: Host bytes of results buffered before a write to the store (and a zarr chunk's size).
_FLUSH_BYTES = 16 * 2**20


def _store_rows(spec: SweepSpec) -> int:
    """Configs per zarr chunk and per write: ``_FLUSH_BYTES`` of results, at least one config.

    Many small files cost more than the sweep: a kernel chunk of 3 configs per file made a
    576-config sweep write 5,568 files."""
    return max(1, min(spec.n_configs, _FLUSH_BYTES // _config_bytes(spec.dtype, spec.n_layers)))


#: A layer of a kernel call costs about as much as this many more entries of work (measured on
#: CPU: dispatch is cheap next to a chunk's data, even for width-16 nets).
_LAYER_OVERHEAD = 4096


def _rows_per_chunk(depths: Sequence[int], row_entries: int, most: int) -> int:
    """How many depth rows a chunk takes: the fewest layer-entries run, all chunks together.

    Every config of a chunk runs to the chunk's deepest row, so mixing depths 5 and 160 runs the
    depth-5 nets 160 layers: for the sweep_grid study one chunk of every depth was 3x slower than
    chunks of two rows. ``depths`` is sorted; a chunk of ``k`` rows takes ``k`` consecutive ones.
    """

    def cost(k):
        trips = [depths[min(i + k, len(depths)) - 1] for i in range(0, len(depths), k)]
        return sum(trips) * (k * row_entries + _LAYER_OVERHEAD)

    return min(range(1, max(1, most) + 1), key=lambda k: (cost(k), -k))


def _plan_chunk(spec, dtype, width, block, ndev, chunk_size, memory_budget) -> int:
    """Configs per kernel call: the budget's worth, whole depth rows where possible."""
    per = spec.config_bytes(dtype, width)
    # At least two configs a device: XLA compiles a batch of one differently (the batch dimension
    # is simplified away), which changes the rounding of the matrix products.
    if chunk_size is not None:
        return max(2 * ndev, -(-chunk_size // ndev) * ndev)
    chunk = min(1024 * ndev, memory_budget // per)
    if jax.devices()[0].platform == "cpu":
        # On CPU a layer's activations should stay in cache (about 2 MiB a device): measured, a
        # chunk of 224 width-64 configs runs 3x slower than one of 32.
        act = spec.batch * width * jnp.dtype(dtype).itemsize
        chunk = min(chunk, max(1, 2**21 // act) * ndev)
    if chunk < 2 * ndev:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is below the {2 * per * ndev} that two {dtype} "
            f"configs of width {width} and depth {max(spec.depth)} per device need"
        )
    # A chunk of whole depth rows (every scale, bias and seed of a few depths) wastes no layers
    # on a deeper row's last configs; the loop runs to the chunk's largest depth.
    row = block // len(spec.depth)
    if chunk >= row:
        chunk = _rows_per_chunk(spec.depth, row * spec.batch * width, chunk // row) * row
    chunk = min(chunk, -(-block // ndev) * ndev)
    return max(2 * ndev, chunk // ndev * ndev)


def _work(spec: SweepSpec):
    """Per (dtype, width): the (flat start, activation, init) of each block of configs."""
    shape = spec.shape
    inner = shape[4:]  # depth, scale, bias_std, seed
    block = math.prod(inner)
    for di, dtype in enumerate(spec.dtype):
        for wi, width in enumerate(spec.width):
            blocks = []
            for ai in range(shape[2]):
                for ii in range(shape[3]):
                    start = int(np.ravel_multi_index((di, wi, ai, ii, 0, 0, 0, 0), shape))
                    blocks.append((start, ai, ii))
            yield dtype, width, block, blocks


def _check_devices(devices: Any) -> tuple[jax.Device, ...]:
    """The devices this process splits its chunks over: its own (all of them by default)."""
    if devices is None:
        return tuple(jax.local_devices())
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
        raise TypeError(
            f"devices must be a sequence of jax devices (e.g. jax.devices()[:2]) or None, got "
            f"{type(devices).__name__} {devices!r}"
        )
    out = tuple(devices)
    bad = [d for d in out if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be jax devices (from jax.devices()), got {bad[0]!r}")
    if not out:
        raise ValueError("devices is empty; give at least one device, or None for all")
    if len(set(out)) != len(out):
        raise ValueError(f"devices must be distinct, got {[str(d) for d in out]}")
    if len({d.platform for d in out}) > 1:
        raise ValueError(f"devices must be of one platform, got {[str(d) for d in out]}")
    foreign = [d for d in out if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(
            f"devices must be this process's own (jax.local_devices()), got {foreign[0]} of "
            f"process {foreign[0].process_index}: each process of a sweep uses its own devices"
        )
    return out


def sweep(
    spec: SweepSpec,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = 2**30,
    progress: bool = True,
    load_result: bool = True,
    devices: Sequence[jax.Device] | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
):
    """Trace every configuration of ``spec``; one compiled kernel per (dtype, width).

    A :class:`stabkit.NetSweepSpec` (networks of blocks: residual, normalized, attention,
    convolutional, the user's) runs on the general path of :mod:`stabkit.sweeps.net_driver`,
    one kernel per (dtype, width, block, norm, placement, activation, init), and returns its
    dataset in memory (``out``/``resume`` are refused for it).

    Args:
        spec: a :class:`SweepSpec` or a :class:`stabkit.NetSweepSpec`.
        out: a directory for a zarr store written chunk by chunk as the sweep runs; ``None``
            keeps everything in memory.
        resume: continue the store at ``out`` where it stopped (a killed sweep loses at most the
            chunk in flight), recomputing any chunk found missing or damaged. Without it an
            existing non-empty ``out`` is an error; with it, so is a non-empty directory that is
            not a stabkit store (nothing in it is touched).
        chunk_size: configs per kernel call (rounded up to a multiple of the device count, at
            least two a device);
            default: as many as ``memory_budget`` allows, at most 1024. Results do not depend on
            it.
        memory_budget: bytes of device memory a chunk may use (its loop buffers and temporaries;
            with ``out`` the host buffers at most 16 MiB of results before each write).
        progress: a progress bar (configs/s, ETA) on stderr.
        load_result: with ``out``, return the dataset read back (True) or only the path (False:
            a sweep larger than memory streams to disk without ever being held whole).
        devices: the devices to split each chunk's configs over, distinct, of one platform and
            this process's own; default every device of this process (``jax.local_devices()``).
            The results are the same bit for bit whatever the devices (the dataset's
            ``devices`` attribute names them).
        coordinator, num_processes, process_id: run on several processes (see
            :mod:`stabkit.distributed`): process 0's ``"HOST:PORT"``, the process count and this
            process's index; all ``None``: a SLURM, Open MPI, Kubernetes or Cloud TPU job of
            several processes is detected, or ``jax.distributed`` already initialized is used;
            ``num_processes=1``: this process alone. Every process runs the same call; each
            computes about ``1/N`` of the configs (whole zarr chunks of about equal work) on its
            own devices and writes them into the one store ``out`` (required, on a file system
            every process sees). Every process returns once all have finished (the dataset, with
            ``load_result``). The store is bit-identical to a one-process sweep's on the same
            kind of machine, and a run in which processes were killed is finished by running
            every process again with ``resume=True`` (any process count).

    Returns:
        An ``xarray.Dataset`` with dims ``dtype, width, activation, init, depth, scale, bias_std,
        seed`` (and ``layer`` for the per-layer variables); see :data:`LAYER_VARS` and
        :data:`CONFIG_VARS`. Attributes (JSON strings): ``spec`` (the :class:`SweepSpec`, rebuilt
        by :meth:`SweepSpec.from_dataset`), ``versions``, ``probe`` (the backend's measured
        floating-point behaviour), ``devices``. With ``out``, the dataset read
        back by :func:`load` (or the path, see ``load_result``).

    Raises:
        TypeError: ``spec`` is not a :class:`SweepSpec`; ``out`` is not a path; a flag is not a
            bool.
        FileExistsError: ``out`` exists, is not empty and ``resume`` is False.
        ValueError: ``out`` is '', a file or not usable; ``resume`` into a directory that is not
            a stabkit store, or that holds a different sweep; results larger than memory
            (without ``out``, or with ``load_result``); a store larger than the free disk
            space; a budget too small for one config.
        BlockingIOError: another sweep is writing ``out`` (the message names its pid and host).
        stabkit.distributed.ProcessFailure: (several processes) another process stopped or
            failed before finishing its part; what every process completed is kept.

    Examples:
        The note's net (width 2, :math:`W = aI`, zero biases, linear) in float16, two depths and
        two scales in one kernel: :math:`1.5^{28}` overflows at layer 28, and layer 29 computes
        :math:`1.5 \\cdot \\infty + 0 \\cdot \\infty` = NaN.

        >>> spec = SweepSpec(depth=[6, 40], init="scaled_identity", scale=[0.5, 1.5],
        ...                  activation="linear", dtype="float16", width=2, batch=1, input="ones")
        >>> ds = sweep(spec, progress=False).squeeze()
        >>> ds.output_rms.sel(depth=6).values.tolist()  # a ** (depth + 1), rounded to float16
        [0.0078, 17.09375]
        >>> ds.first_inf_forward.sel(scale=1.5).values, ds.first_nan_forward.sel(scale=1.5).values
        (array([-1, 28], dtype=int32), array([-1, 29], dtype=int32))
    """
    from stabkit.distributed import initialize
    from stabkit.sweeps.net_spec import NetSweepSpec  # (it imports this package's spec)

    if not isinstance(spec, (SweepSpec, NetSweepSpec)):
        raise TypeError(f"spec must be a SweepSpec or a NetSweepSpec, got {type(spec).__name__}")
    if chunk_size is not None:
        chunk_size = int_values("chunk_size", 1)(chunk_size)
    memory_budget = int_values("memory_budget", 1, 2**62)(memory_budget)
    resume = strict_bool(resume, "resume")
    progress = strict_bool(progress, "progress")
    load_result = strict_bool(load_result, "load_result")
    if out is not None:
        _out_path(out)  # a bad path is refused before any process joins the job
    elif num_processes not in (None, 1):
        raise ValueError(
            f"num_processes={num_processes}: a sweep on several processes writes one zarr store; "
            "give out= (a directory every process sees)"
        )
    procs = initialize(coordinator, num_processes, process_id)  # before JAX's first computation
    devices = _check_devices(devices)
    if procs.count > 1 and (out is None or isinstance(spec, NetSweepSpec)):
        raise ValueError(
            f"a sweep on {procs.count} processes writes one zarr store: "
            + (
                "give out= (a directory every process sees)"
                if out is None
                else "not supported for a NetSweepSpec yet (its dataset is returned in memory; "
                "give each process a slice of the grid)"
            )
        )
    if isinstance(spec, NetSweepSpec):
        if out is not None or resume:
            raise ValueError(
                "out=/resume= (the resumable zarr store) are not supported for a NetSweepSpec "
                "yet: its dataset is returned in memory (save it with ds.to_zarr or ds.to_netcdf)"
            )
        from stabkit.sweeps.net_driver import net_sweep

        return net_sweep(
            spec,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            progress=progress,
            devices=devices,
        )
    n, n_layers = spec.n_configs, spec.n_layers
    if out is None or load_result:
        # The results are held whole (or read back whole): refuse before computing any of them.
        per = _config_bytes(spec.dtype, n_layers)
        hint = (
            "pass out= to stream them to a store"
            if out is None
            else "pass load_result=False to stream them to the store without reading them back"
        )
        check_memory(n * per, "spec.n_configs", n, f"the results ({per} bytes a config; {hint})")
    meta = _meta(spec, devices)
    if out is None:
        flat = {
            k: np.full(
                _var_shape(k, n, n_layers),
                -1 if k in _INT_VARS else np.nan,
                _var_dtype(k, spec.dtype),
            )
            for k in {**LAYER_VARS, **CONFIG_VARS}
        }
        _run(spec, devices, chunk_size, memory_budget, progress, None, flat, "sweep")
        return _dataset(meta, flat)
    group = None
    if procs.count > 1:
        group = _Group("sweep")
        meta["devices"] = _agree(group, spec, devices)
        # Process 0 opens (or creates) and locks it; the others join once it is ready.
        store = _shared_store(out, spec, meta, resume, _store_rows(spec), group)
    else:
        # Refuses a directory that is not its own before touching it; takes the writer lock.
        store = _Store(out, spec, meta, resume, _store_rows(spec))
    with store:
        if group is None:
            _stream(spec, devices, chunk_size, memory_budget, progress, store, None)
        else:
            try:
                _stream(spec, devices, chunk_size, memory_budget, progress, store, procs)
            except BaseException as e:
                _end(group, e)  # the others learn why at once
                raise
            _end(group, None)  # process 0 keeps the writer lock until every process is done
    return load(store.path) if load_result else store.path


def _stream(spec, devices, chunk_size, memory_budget, progress, store, procs) -> None:
    """This process's chunks (``procs``: its place in a multi-process sweep, or None) into the
    open ``store``: verified, then the missing ones computed and written."""
    if procs is None and store.new:
        _check_disk(store)
        store.start()  # a new store: the marker, the lock, the zarr arrays
    store.verify(None if procs is None else _split(spec, store.rows, procs.count)[procs.index])
    _check_disk(store)
    if store.repaired and progress:
        sys.stderr.write(
            f"sweep: recomputing {len(store.repaired)} damaged or missing chunk(s); "
            f"first: {store.repaired[0]}\n"
        )
    desc = "sweep" if procs is None else f"sweep (process {procs.index} of {procs.count})"
    _run(spec, devices, chunk_size, memory_budget, progress, store, None, desc)
    if procs is not None:
        store.finish_part(procs.index, procs.count)


def _run(spec, devices, chunk_size, memory_budget, progress, store, flat, desc):
    """Every kernel chunk holding a config that ``store`` still needs (this process's part), or
    every chunk into ``flat`` (``store`` None)."""
    if store is None:
        needed, total, done = (lambda a, b: b - a), spec.n_configs, 0
    else:
        needed, total, done = store.needed, store.total, store.done
    # tqdm.auto: a text bar on stderr, a widget in a notebook.
    bar = tqdm(
        total=total,
        initial=done,
        disable=not progress,
        desc=desc,
        unit="config",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        _run_chunks(spec, devices, chunk_size, memory_budget, needed, store, flat, bar)


def _run_chunks(spec, devices, chunk_size, memory_budget, needed, store, flat, bar):
    """The kernel chunks of ``_run``, one (dtype, width) block after another."""
    n_layers, ndev = spec.n_layers, len(devices)
    inner = spec.shape[4:]
    acts = tuple(spec.activation)

    def finish(pending):
        start, count, res = pending
        host = {k: np.asarray(v)[:count].astype(_var_dtype(k, spec.dtype)) for k, v in res.items()}
        # Only the configs not already done: a kernel chunk may straddle a complete zarr chunk
        # (counting those too made a resumed sweep's bar end at 100.9%).
        new = needed(start, start + count)
        if flat is None:
            store.add(start, host)
        else:
            for k, v in host.items():
                flat[k][start : start + count] = v
        bar.update(new)

    for dtype, width, block, blocks in _work(spec):
        chunk = _plan_chunk(spec, dtype, width, block, ndev, chunk_size, memory_budget)
        kinds = tuple(dict.fromkeys(_INIT_KIND[i][0] for i in spec.init))
        n_seeds = min(len(spec.seed), chunk)
        st = _Static(
            dtype,
            width,
            chunk,
            n_seeds,
            n_layers,
            spec.batch,
            spec.input,
            spec.loss,
            acts,
            kinds,
            devices,
        )
        todo = [
            (start + s, ai, ii, s)
            for start, ai, ii in blocks
            for s in range(0, block, chunk)
            if needed(start + s, start + min(s + chunk, block)) > 0
        ]
        if not todo:
            continue
        x64 = jax.enable_x64(True) if dtype == "float64" else _null()
        with x64:
            kernel, cfg_sharding, rep_sharding, buf_sharding = _kernel(st)
            shape = (max(spec.depth), chunk, spec.batch, width)  # the hidden layers
            tshape = (max(spec.depth), chunk, width, spec.batch)
            work = [jnp.zeros(sh, dtype, device=buf_sharding) for sh in (tshape, shape)]
            sdt = np.dtype(np.float64 if dtype == "float64" else np.float32)
            pending = None
            for flat_start, ai, ii, s in todo:
                idx = np.arange(s, s + chunk).clip(max=block - 1)  # pad with the last config
                count = min(chunk, block - s)
                di, si, bi, ki = np.unravel_index(idx, inner)
                depth = np.asarray(spec.depth, np.int32)[di]
                init = spec.init[ii]
                mult = np.asarray([_multiplier(init, v, width) for v in spec.scale], sdt)[si]
                table, sidx = np.unique(ki, return_inverse=True)
                table = np.asarray(spec.seed, np.uint32)[table]
                table = np.concatenate([table, np.full(n_seeds - len(table), table[0], np.uint32)])
                rep = functools.partial(jax.device_put, device=rep_sharding)
                cfg = functools.partial(jax.device_put, device=cfg_sharding)
                args = [
                    rep(np.int32(ai)),
                    rep(np.int32(kinds.index(_INIT_KIND[init][0]))),
                    rep(np.int32(depth.max())),
                    rep(sdt.type(spec.saturation_threshold)),
                    rep(table),
                    cfg(depth),
                    cfg(mult),
                    cfg(np.asarray(spec.bias_std, sdt)[bi]),
                    cfg(sidx.astype(np.int32)),
                ]
                # Dispatched asynchronously: the host copies the last chunk's results meanwhile.
                res, *work = kernel(*args, *work)
                if pending is not None:
                    finish(pending)
                pending = (flat_start, count, res)
            finish(pending)
    if flat is None and store.done != store.total:
        raise RuntimeError(  # a bug, not a user error: every chunk should now be written
            f"stabkit bug: the sweep ended with {store.done} of {store.total} configs stored"
        )


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
