"""The sweep engine: every configuration of a grid traced by a few compiled kernels.

One concept per file:

* ``spec.py``: :class:`SweepSpec` (the grid, validated when built), :data:`LAYER_VARS` and
  :data:`CONFIG_VARS` (the dataset's variables), the memory estimate of a config.
* ``kernel.py``: the compiled chunk kernel (``jit(shard_map(vmap))`` per (dtype, width)) and
  :func:`sweep_input`, the input batch every config sees; ``chunk_stats.py``: its per-config
  statistics (RMS, max, census, dead units), the same whatever the chunk.
* ``driver.py``: :func:`sweep`, which plans the chunks and drives them; its docstring explains
  how the engine is fast and why its results are bit-identical whatever the chunking and devices.
* ``dataset.py``: the results in memory (variables, shapes, dtypes, metadata) and the N-D
  ``xarray.Dataset``; ``chunks.py``: a store's zarr arrays and the verification of each chunk;
  ``store.py``: the streamed, resumable zarr store and :func:`load`.
* ``net_spec.py``, ``net_driver.py``: the sweep of networks of blocks (:class:`NetSweepSpec`,
  block kind, norm, placement and residual scale as axes) on the general path: one
  ``jit(shard_map(vmap(trace)))`` per (dtype, width, block, norm, placement, activation, init).
* ``files.py``: the store's files: checked paths, atomic JSON, the exclusive writer lock.
* ``processes.py``: a sweep over many processes: which zarr chunks each computes (split by
  work), the store process 0 opens and the others join, the end of every part (the runtime is
  :mod:`stabkit.distributed`).
* ``theory_comparison.py``: a sweep against the mean field, :func:`predict_sweep` and
  :func:`compare_sweep`. It imports the theory; the theory imports nothing of the engine
  (:mod:`stabkit.theory` re-exports the two functions, loading this module at first use).
* ``plots.py``: figures of a sweep (``heatmaps``, ``profiles``, ``plot``), with the theory
  overlaid. Not imported here: ``import stabkit.sweeps.plots`` (it draws with matplotlib).
"""

from stabkit.sweeps.driver import sweep
from stabkit.sweeps.kernel import sweep_input
from stabkit.sweeps.net_driver import net_sweep_input
from stabkit.sweeps.net_spec import NetSweepSpec
from stabkit.sweeps.spec import CONFIG_VARS, LAYER_VARS, SweepSpec
from stabkit.sweeps.store import load
from stabkit.sweeps.theory_comparison import compare_sweep, predict_sweep

__all__ = [
    "CONFIG_VARS",
    "LAYER_VARS",
    "NetSweepSpec",
    "SweepSpec",
    "compare_sweep",
    "load",
    "net_sweep_input",
    "predict_sweep",
    "sweep",
    "sweep_input",
]
