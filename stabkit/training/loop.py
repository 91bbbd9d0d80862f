"""The training kernel: :func:`train` runs every configuration in one compiled, vmapped call.

``lax.scan`` over the logging windows of ``log_every`` steps, ``vmap`` over the runs inside each
window (so that a progress bar can follow the windows), ``lax.scan`` over a window's steps; the
:class:`~stabkit.training.history.History` is sampled on each window's first step. The MLP's
initial parameters are drawn outside the kernel (``_initial_params``; ``_init_params`` gives one
run's), a network of blocks' inside it (``_net_params``).

The seed rule is the sweep's (:mod:`stabkit.sweeps`): a run's seed is the key ``key(seed)``, its
weights are :func:`stabkit.mlp_init`'s for that key (layer ``l`` from ``fold_in(fold_in(key, 0),
l)``, its bias from ``fold_in(fold_in(key, 1), l)``; ``fold_in(key, 2)`` is the sweep's input),
its batches come from ``fold_in(key, 3)`` and stochastic rounding from ``fold_in(key, 4)``. So a
configuration picked from a sweep trains the network the sweep traced.
"""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from stabkit._checks import int_values, strict_bool
from stabkit.activations import select_activation
from stabkit.distributed import _current, initialize
from stabkit.fixes import all_finite, loss_scale_of
from stabkit.nets import MLPParams, mlp_apply, mlp_init
from stabkit.networks.network import NetParams, net_init
from stabkit.networks.network import forward as net_forward
from stabkit.precision.float8 import float8_combine, float8_partition
from stabkit.stable_softmax import logsumexp, softmax_cross_entropy
from stabkit.training.history import History, Raw, _summarise
from stabkit.training.optimizers import _build_optimizer, _build_rounding
from stabkit.training.processes import _train_grid
from stabkit.training.runs import _RUN_DTYPES, Runs, _check_runs, _Features, _features
from stabkit.training.spec import TrainSpec, _needs_x64, _wide, _x64

__all__ = [
    "History",
    "train",
]

#: Every fix computed (the general kernel; ``train`` compiles only those its grid uses).
_ALL = _Features()


def _net_params(spec: TrainSpec, run: Runs, dtype: jnp.dtype) -> NetParams:
    """A run's network of blocks: ``net_init(key(seed), ...)`` with the run's scale (traced)
    and initializer (a ``lax.switch`` over the spec's names), cast to ``dtype``."""
    block = spec.blocks[0]  # the activation does not change the parameters

    def draw(name):
        def f():
            return net_init(
                _init_key(run.seed),
                block,
                depth=spec.max_depth,
                width=spec.width,
                in_dim=spec.task.in_dim,
                out_dim=spec.task.out_dim,
                init=name,
                scale=run.scale,
                bias_std=spec.bias_std,
                alpha=spec.alpha,
                dtype=jnp.float32,
                final_norm=spec.final_norm,
                **({"softcap": run.softcap} if "softcap" in block.hyper_defaults else {}),
            )

        return f

    params = jax.lax.switch(run.init, [draw(name) for name in spec.init])
    arrays = (params.embed, params.blocks, params.readout)
    return dataclasses.replace(
        params, **dict(zip(("embed", "blocks", "readout"), _cast(arrays, dtype), strict=True))
    )


def _cast(params: Any, dtype: Any) -> Any:
    """``params`` in ``dtype``, float8 scaling state (always float32) excepted."""
    trainable, meta = float8_partition(params)
    return float8_combine(jax.tree.map(lambda v: v.astype(dtype), trainable), meta)


def _ran(new: Any, old: Any, ran: jax.Array) -> Any:
    """The float8 metas after a step: the new one (the meta's cotangent) for the blocks that ran
    (``ran``, ``(max_depth,)``), the old one elsewhere: a block beyond a run's depth computed on
    zeros and must not roll its amax history (Transformer Engine's bug with layers that did not
    run)."""

    def pick(n, o):
        return jnp.where(ran.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


def _unit_params(spec: TrainSpec, key: jax.Array, name: Any) -> MLPParams:
    """float32 parameters from :func:`stabkit.mlp_init` with multiplier 1."""
    return mlp_init(
        key,
        depth=spec.max_depth,
        width=spec.width,
        in_dim=spec.task.in_dim,
        out_dim=spec.task.out_dim,
        init=name,
        bias_std=spec.bias_std,
        dtype=jnp.float32,
    )


def _scaled(params: MLPParams, scale: Any, dtype: jnp.dtype) -> MLPParams:
    # Every named initializer is linear in its multiplier: scale the unit draw (rounded once).
    weights = {"w_in", "w_hidden", "w_out"}
    return MLPParams(
        **{
            k: ((v * scale) if k in weights else v).astype(dtype)
            for k, v in params._asdict().items()
        }
    )


def _init_key(seed: int) -> jax.Array:
    # The sweep's rule: the seed's own key, so that train starts from the network a sweep traced.
    return jax.random.key(seed)


#: ``fold_in(key(seed), _BATCH_STREAM)`` draws the batches (0: weights, 1: biases, 2: the
#: sweep's input). ``split(key)[1]`` would be ``fold_in(key, 1)``, the biases' key.
_BATCH_STREAM = 3


def _init_params(spec: TrainSpec, key: jax.Array, run: Runs, dtype: jnp.dtype) -> MLPParams:
    """One run's initial parameters (what :func:`train` starts from, for tests and users)."""
    return _scaled(_unit_params(spec, key, spec.init[int(run.init)]), run.scale, dtype)


def _initial_params(spec: TrainSpec, runs: Runs) -> MLPParams:
    """The unit-multiplier initial parameters of every run, stacked ``(R, ...)``.

    Drawn outside the training kernel, one :func:`stabkit.mlp_init` call per distinct (seed,
    initializer): that kernel is compiled once per initializer and shapes and cached, whereas
    a vmapped ``lax.switch`` over the initializers inside the training kernel would make every
    training compilation pay for all of their random-number generators again.
    """
    cache: dict[tuple[int, int], MLPParams] = {}
    rows = []
    for seed, index in zip(
        np.asarray(runs.seed).tolist(), np.asarray(runs.init).tolist(), strict=True
    ):
        if (seed, index) not in cache:
            cache[seed, index] = _unit_params(spec, _init_key(seed), spec.init[index])
        rows.append(cache[seed, index])
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *rows)


def _loss(spec: TrainSpec, out: jax.Array, y: jax.Array, z_loss: Any = None) -> tuple:
    """The loss and the mean log-partition of the outputs (NaN for regression).

    Computed in float32 (mixed precision practice), float64 for a float64 run. Classification:
    mean softmax cross-entropy over examples (and positions), plus ``z_loss * mean(log Z ** 2)``
    where ``z_loss > 0`` (where it is 0 the loss is the cross-entropy unchanged; ``None``: no
    z-loss term at all)."""
    out = out.astype(_wide(spec))
    if spec.task.kind == "classification":
        loss = jnp.mean(softmax_cross_entropy(out, y))
        log_z = logsumexp(out, axis=-1)
        if z_loss is not None:
            z = jnp.asarray(z_loss, out.dtype)
            loss = jnp.where(z > 0, loss + z * jnp.mean(jnp.square(log_z)), loss)
        return loss, jnp.mean(log_z)
    return 0.5 * jnp.mean(jnp.square(out - y)), jnp.asarray(jnp.nan, out.dtype)


def _final(spec: TrainSpec, out: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The loss (without z-loss) and (classification) accuracy of the whole data set's outputs
    after training."""
    wide = _wide(spec)
    final = _loss(spec, out, y)[0]
    if spec.task.kind == "classification":
        # a row with inf/NaN outputs is wrong, whatever arg-max would pick among its NaNs
        right = (jnp.argmax(out, axis=-1) == y) & jnp.all(jnp.isfinite(out), axis=-1)
        accuracy = jnp.mean(right.astype(wide))
    else:
        accuracy = jnp.asarray(jnp.nan, wide)
    return final, accuracy


def _start(spec: TrainSpec, run: Runs, unit_params: MLPParams, features=_ALL) -> tuple:
    """One run's initial carry: stored parameters, the network's hyper-parameters (data, not
    trained; empty for the MLP), optimizer state, rounding state, first non-finite step."""
    store = spec.master_dtype or spec.dtype
    if spec.block is None:
        params, hyper = _scaled(unit_params, run.scale, store), {}
    else:
        # Train the arrays, not the hyper-parameters (scale, eps... are data of the network):
        # the optimizer sees (embed, blocks, readout).
        net = _net_params(spec, run, store)
        params, hyper = (net.embed, net.blocks, net.readout), net.hyper
    # The optimizer and the rounding rule see the trainable leaves only (float8 metas are
    # None there): the metas are replaced by their "gradient", never optimized.
    trainable = float8_partition(params)[0]
    opt_state = _build_optimizer(spec, run, features).init(trainable)
    rounding = _build_rounding(spec, run)
    r_state = () if rounding is None else rounding.init(trainable)
    return params, hyper, opt_state, r_state, jnp.int32(-1)


def _apply_fn(spec: TrainSpec, run: Runs, hyper: dict):
    """``apply(params, x) -> (outputs, taps)``: the run's network (depth and activation are the
    run's data); ``taps`` the blocks' stacked taps, None for the MLP."""
    if spec.block is None:
        phi = select_activation(spec.activation, run.activation)

        def apply_mlp(p, xb):
            return mlp_apply(p, xb, activation=phi, depth=run.depth), None

        return apply_mlp

    def with_block(block):
        def f(p, xb):
            net = NetParams(
                embed=p[0],
                blocks=p[1],
                readout=p[2],
                hyper=hyper,
                block=block,
                max_depth=spec.max_depth,
                final_norm=spec.final_norm,
            )
            return net_forward(net, xb, run.depth, with_taps=True)

        return f

    def apply_net(p, xb):
        branches = [with_block(b) for b in spec.blocks]
        if len(branches) == 1:
            return branches[0](p, xb)
        return jax.lax.switch(run.activation, branches, p, xb)

    return apply_net


def _window(spec: TrainSpec, carry: tuple, run: Runs, t: jax.Array, x, y, features=_ALL) -> tuple:
    """One run's ``log_every`` steps from step ``t * log_every``: the new carry and the record
    of the window's first step (with the non-finite events of all its steps)."""
    compute = spec.dtype
    store = spec.master_dtype or compute
    wide = _wide(spec)  # the records' dtype: float32, or float64 for a float64 run
    scale_dtype = (
        wide if spec.loss_scale is None else jnp.promote_types(wide, spec.loss_scale.dtype)
    )
    apply = _apply_fn(spec, run, carry[1])
    opt = _build_optimizer(spec, run, features)
    rounding = _build_rounding(spec, run)
    active = jnp.arange(1, spec.max_depth + 1) <= run.depth

    def loss_fn(p, xb, yb, scale):
        out, taps = apply(p, xb)
        loss, log_z = _loss(spec, out, yb, run.z_loss if features.z_loss else None)
        return loss * scale, (loss, log_z, taps)

    def batch(i):
        if spec.batch_size is None:
            return x, y
        k_batch = jax.random.fold_in(jax.random.key(run.seed), _BATCH_STREAM)
        idx = jax.random.choice(
            jax.random.fold_in(k_batch, i), spec.task.n, (spec.batch_size,), replace=False
        )
        return x[idx], y[idx]

    def step(carry, i):
        params, hyper, opt_state, r_state, first_bad = carry
        scale = (
            loss_scale_of(opt_state).astype(scale_dtype)
            if spec.loss_scale is not None
            else jnp.ones((), scale_dtype)
        )
        xb, yb = batch(i)
        trainable, meta = float8_partition(params)
        (_, (loss, log_z, taps)), g_all = jax.value_and_grad(loss_fn, has_aux=True)(
            _cast(params, compute), xb, yb, scale
        )
        g_c, new_meta = float8_partition(g_all)  # a float8 meta's cotangent is its next value
        grads = jax.tree.map(lambda g: g.astype(store), g_c)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        raw = Raw(loss, g_c, updates, scale, trainable, log_z, taps, active, new_meta)
        applied = updates
        if rounding is not None:
            applied, r_state = rounding.update(updates, r_state, trainable)
        grads_ok = all_finite(g_c)
        update_ok = all_finite(applied)
        # a skipped (non-finite) step keeps its old float8 metas too
        meta = _ran(new_meta, meta, active & grads_ok)
        new_params = float8_combine(optax.apply_updates(trainable, applied), meta)
        failed = ~jnp.isfinite(loss) | (~grads_ok & ~update_ok)
        first_bad = jnp.where((first_bad < 0) & failed, i, first_bad).astype(jnp.int32)
        events = ((~grads_ok).astype(jnp.int32), (~grads_ok & update_ok).astype(jnp.int32))
        return (new_params, hyper, opt_state, r_state, first_bad), raw, events

    k = spec.log_every

    # One step body serves logged and unlogged steps (one copy to compile): the window keeps the
    # record of its first step and sums the non-finite events of all its steps. The record's
    # statistics are computed on that first step only: `j` is not batched by the vmap over
    # runs, so the `cond` stays a branch and the other steps skip them.
    def body(state, j):
        carry, record, events = state
        carry, raw, new_events = step(carry, t * k + j)
        record = jax.lax.cond(j == 0, lambda: _summarise(raw, wide), lambda: record)
        return (carry, record, jax.tree.map(jnp.add, events, new_events)), None

    _, raw, events = jax.eval_shape(step, carry, t * k)
    zeros = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        (jax.eval_shape(partial(_summarise, wide=wide), raw), events),
    )
    (carry, record, events), _ = jax.lax.scan(body, (carry, *zeros), jnp.arange(k, dtype=jnp.int32))
    return carry, (*record, *events)


def _finish(spec: TrainSpec, carry: tuple, run: Runs, x, y) -> tuple:
    """The whole data set's loss and accuracy after the last step, and the first bad step."""
    params, hyper, *_, first_bad = carry
    out, _ = _apply_fn(spec, run, hyper)(_cast(params, spec.dtype), x)
    return (*_final(spec, out, y), first_bad)


class _Holder:
    """Carries the spec into the kernel as a static argument hashed by its static fields only."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self._key = spec._static()

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Holder) and self._key == other._key


#: ``progress=None`` shows a bar when a grid trains at least this many run-steps.
_PROGRESS_RUN_STEPS = 200_000


def train(
    spec: TrainSpec,
    runs: Runs,
    *,
    progress: bool | None = None,
    chunk_size: int | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> History:
    """Train every configuration in ``runs`` under ``spec``, in one compiled, vmapped kernel.

    One compilation serves any values of the runs (depth, scale, activation, initializer,
    learning rate, seed) of the same count, and any task of the same shapes: they are arguments,
    everything in the spec is static. The initial weights are :func:`stabkit.mlp_init`'s for the
    key ``key(seed)`` (the seed rule of :func:`stabkit.sweep`: the run starts from the network
    the sweep traced for the same configuration), times ``scale``, drawn before the kernel runs
    (one call per distinct seed and initializer; that kernel is cached per initializer and
    shapes). Minibatches are drawn from ``fold_in(key(seed), 3)``.

    Every field of ``runs`` is checked on the host first, against the spec: an activation or
    initializer index out of range, a depth above ``max_depth``, a seed outside int32 or a
    learning rate/scale float32 cannot hold is refused, never clamped (``lax.switch`` and JAX's
    indexing would clamp it silently), and so is a run count whose memory exceeds the limit.

    A spec with a float64 ``dtype``, ``master_dtype`` or loss scale trains inside
    ``jax.enable_x64(True)`` whatever the global flag (which is left as it was). Its loss and
    records are computed in float64 and returned as NumPy arrays, which stay float64 outside
    ``enable_x64``; the initial weights are the same float32 draw as for every other dtype,
    rounded once to float64.

    Args:
        spec: a :class:`TrainSpec`.
        runs: from :func:`make_runs` (or a :class:`Runs` of ``(R,)`` arrays; Python lists and
            NumPy arrays are accepted).
        progress: a progress bar on stderr; default: for grids of at least 200k run-steps.
        chunk_size: runs per compiled call (``K``; the last call padded with copies of the last
            run); default all ``R`` runs in one call (``ceil(R / N)`` on ``N`` processes). A
            run's numbers depend on ``K`` (XLA blocks the batched products by batch size) but
            not on the process count: the same ``K`` gives the same bits on 1 or ``N``
            processes (see :mod:`stabkit.training.processes`).
        coordinator, num_processes, process_id: join a multi-process job as
            :func:`stabkit.distributed.initialize` does (which must then run before any JAX
            computation, so in practice call it at the top of the script instead). With the
            runtime up (``jax.distributed``), each process trains its contiguous share of the
            chunks and every process returns the whole :class:`History` (gathered by gloo
            collectives between CPU processes). Nothing here detects a cluster job by itself.

    Returns:
        A :class:`History` of device arrays with a leading run axis (NumPy arrays for a
        float64 spec).

    Raises:
        TypeError: ``spec`` or ``runs`` of the wrong type; a field of the wrong dtype (a float
            depth, a bool index) or a traced array (``train`` compiles its own kernel: call it
            outside ``jit``).
        ValueError: fields of different shapes or empty; a value out of range (the message
            names the field, the run and the valid range); too many runs for the memory.

    Examples:
        >>> from stabkit.training import make_runs, teacher_student
        >>> spec = TrainSpec(teacher_student(jax.random.key(0), n=16), max_depth=2, steps=2)
        >>> runs = make_runs(spec)
        >>> train(spec, runs._replace(activation=jnp.array([5])))
        Traceback (most recent call last):
        ...
        ValueError: runs.activation[0] index 5 is out of range for 1 activations (valid 0..0: ...
    """
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"spec must be a TrainSpec, got {type(spec).__name__}")
    if not isinstance(runs, Runs):
        raise TypeError(f"runs must be a Runs (from make_runs), got {type(runs).__name__}")
    if progress is not None:
        progress = strict_bool(progress, "progress")
    if chunk_size is not None:
        chunk_size = int_values("chunk_size", 1, 2**31 - 1)(chunk_size)
    runs = _check_runs(spec, runs)
    n_runs = int(np.shape(runs.depth)[0])
    given = (coordinator, num_processes, process_id)
    # Never a cluster job detected here: a TrainSpec's task is already a JAX computation, so
    # the runtime must have started before (stabkit.distributed.initialize), if at all.
    procs = initialize(*given) if any(v is not None for v in given) else _current()
    features = _features(spec, runs)
    size = min(n_runs, chunk_size or -(-n_runs // procs.count))
    n_chunks = -(-n_runs // size)
    if progress is None:
        progress = n_runs * spec.steps >= _PROGRESS_RUN_STEPS
    with _x64(spec):
        runs = Runs(*(jnp.asarray(v, dt) for v, dt in zip(runs, _RUN_DTYPES, strict=True)))
        if n_chunks == 1 and procs.count == 1:
            history = _train_chunk(spec, features, runs, progress)
        else:
            step = np.arange(spec.steps // spec.log_every, dtype=np.int32) * spec.log_every
            history = _train_grid(
                partial(_train_chunk, spec, features, progress=progress),
                runs,
                n_runs,
                size,
                procs,
                step,
            )
            if not _needs_x64(spec):
                history = jax.tree.map(jnp.asarray, history)
        if _needs_x64(spec):
            # On the host, so that float64 records stay float64 outside ``enable_x64`` too.
            history = jax.tree.map(np.asarray, history)
    return history


def _train_chunk(spec: TrainSpec, features: _Features, runs: Runs, progress: bool) -> History:
    """One compiled call on ``runs`` (device arrays of the run dtypes)."""
    unit = _initial_params(spec, runs) if spec.block is None else ()
    args = (runs, unit, spec.task.x, spec.task.y)
    n_runs = int(np.shape(runs.depth)[0])
    if progress:
        return _train_with_bar(spec, features, n_runs, args)
    return _train_jit(_Holder(spec), features, False, *args)


def _train_with_bar(spec: TrainSpec, features: _Features, n_runs: int, args: tuple) -> History:
    """:func:`_train_jit` with a progress bar on stderr (steps of every run, steps/s, ETA),
    advanced by a host callback at the end of each logging window."""
    bar = tqdm(
        total=spec.steps,
        desc=f"train {n_runs} run{'s' if n_runs > 1 else ''}",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        _BARS.append((bar, spec.log_every))
        try:
            history = jax.block_until_ready(_train_jit(_Holder(spec), features, True, *args))
        finally:
            _BARS.pop()
    return history


#: The bars being advanced: the compiled callback calls ``_advance``, which reads this list, so
#: that one compilation serves every bar (a closure would be compiled into the program).
_BARS: list = []


def _advance(t: Any) -> None:
    if _BARS:
        bar, step = _BARS[-1]
        if int(t) == 0:  # the first window: the compilation is over, start the clock now
            bar.reset()
        bar.update(step)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _train_jit(
    holder: _Holder, features: _Features, progress: bool, runs: Runs, unit: MLPParams, x, y
) -> History:
    spec = holder.spec
    carry = jax.vmap(partial(_start, spec, features=features))(runs, unit)

    def window(carry, t):
        carry, record = jax.vmap(
            partial(_window, spec, features=features), in_axes=(0, 0, None, None, None)
        )(carry, runs, t, x, y)
        if progress:
            jax.debug.callback(_advance, t)
        return carry, record

    n_logs = spec.steps // spec.log_every
    carry, records = jax.lax.scan(window, carry, jnp.arange(n_logs, dtype=jnp.int32))
    # records: (T, R, ...) -> (R, T, ...)
    records = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), records)
    final, accuracy, first_bad = jax.vmap(partial(_finish, spec), in_axes=(0, 0, None, None))(
        carry, runs, x, y
    )
    *summary, bad, absorbed = records
    loss, gnorm, unorm, layers, cens, scales, pnorm, lost, log_z, lmax, ent, *float8 = summary
    return History(
        step=jnp.arange(n_logs, dtype=jnp.int32) * spec.log_every,
        loss=loss,
        grad_norm=gnorm,
        update_norm=unorm,
        layer_grad_rms=layers,
        grad_census=cens,
        loss_scale=scales,
        nonfinite_grads=bad,
        absorbed=absorbed,
        first_nonfinite=first_bad,
        final_loss=final,
        final_accuracy=accuracy,
        runs=runs,
        param_norm=pnorm,
        lost_updates=lost,
        log_z=log_z,
        attn_logit_max=lmax,
        attn_entropy=ent,
        **dict(zip(History._fields[-4:], float8, strict=True)),
    )
