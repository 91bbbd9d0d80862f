"""The training kernel: :func:`train` runs every configuration in one compiled, vmapped call.

``vmap`` over the runs, ``lax.scan`` over the steps; the :class:`History` is sampled every
``log_every`` steps (loss, gradient and update norms, per-layer gradient RMS computed without
overflow, the census of gradient entries, the loss scale, non-finite events). The initial
parameters are drawn outside the kernel (``_initial_params``); ``_init_params`` gives one run's.

The seed rule is the sweep's (:mod:`stabkit.sweeps`): a run's seed is the key ``key(seed)``, its
weights are :func:`stabkit.mlp_init`'s for that key (layer ``l`` from ``fold_in(fold_in(key, 0),
l)``, its bias from ``fold_in(fold_in(key, 1), l)``; ``fold_in(key, 2)`` is the sweep's input),
and its batches come from ``fold_in(key, 3)``. So a configuration picked from a sweep trains the
network the sweep traced.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stabkit._numerics import rms_rows
from stabkit.activations import select_activation
from stabkit.fixes import all_finite, loss_scale_of, safe_global_norm
from stabkit.nets import MLPParams, mlp_apply, mlp_init
from stabkit.networks.network import NetParams, net_init
from stabkit.networks.network import forward as net_forward
from stabkit.precision import Census, census
from stabkit.stable_softmax import softmax_cross_entropy
from stabkit.training.optimizers import _build_optimizer
from stabkit.training.runs import _RUN_DTYPES, Runs, _check_runs
from stabkit.training.spec import TrainSpec, _needs_x64, _wide, _x64

__all__ = [
    "History",
    "train",
]


class History(NamedTuple):
    """What :func:`train` records, every ``log_every`` steps (``R`` runs, ``T`` records).

    Values at record ``t`` are measured at step ``step[t]``, before that step's update. Norms and
    RMS are float32, unscaled (divided by the loss scale), computed without overflow.

    Attributes:
        step: ``(T,)`` int32.
        loss: ``(R, T)`` training loss (of the step's batch).
        grad_norm: ``(R, T)`` global norm of the gradient.
        update_norm: ``(R, T)`` global norm of the update the optimizer (and fixes) applied.
        layer_grad_rms: ``(R, T, L)`` RMS of each weight layer's gradient (weights and bias
            together), ``L = max_depth + 1``: hidden layers 1..max_depth, then the readout. Layers
            beyond a run's depth are unused and read 0. For a network of blocks ``L = max_depth +
            2``: the embedding, each block (all its arrays, norm gains included), the readout.
        grad_census: a :class:`stabkit.Census` of ``(R, T)`` int32 counts (normal, subnormal,
            zero, inf, NaN) of the gradient's entries as computed, in the compute dtype and
            scaled (:func:`stabkit.census`).
        loss_scale: ``(R, T)`` the loss scale in use (1 without loss scaling).
        nonfinite_grads: ``(R, T)`` steps in ``[step[t], step[t] + log_every)`` whose gradient
            had an inf or NaN entry.
        absorbed: ``(R, T)`` of those, the steps whose applied update was nevertheless finite (a
            fix skipped or clipped them).
        first_nonfinite: ``(R,)`` the first step whose loss was non-finite or whose non-finite
            gradient reached the parameters; -1 if none.
        final_loss: ``(R,)`` loss on the whole data set after the last step.
        final_accuracy: ``(R,)`` for classification, the fraction of the whole data set whose
            arg-max output is the label after the last step (training accuracy; a non-finite
            output row counts as wrong); NaN for regression.
        runs: the :class:`Runs` trained.
    """

    step: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    update_norm: jax.Array
    layer_grad_rms: jax.Array
    grad_census: Census
    loss_scale: jax.Array
    nonfinite_grads: jax.Array
    absorbed: jax.Array
    first_nonfinite: jax.Array
    final_loss: jax.Array
    final_accuracy: jax.Array
    runs: Runs


def _grad_stats(g: MLPParams, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """RMS of each layer's weight and bias gradient ``(max_depth + 1,)``, and the global norm,
    in ``dtype`` (float32, or float64 for a float64 run)."""
    g = jax.tree.map(lambda v: v.astype(dtype), g)
    d = g.w_hidden.shape[0]
    rows = [
        jnp.concatenate([g.w_in.ravel(), g.b_in])[None],
        jnp.concatenate([g.w_hidden.reshape(d, -1), g.b_hidden], axis=1),
        jnp.concatenate([g.w_out.ravel(), g.b_out])[None],
    ]
    rms = jnp.concatenate([rms_rows(r) for r in rows])
    sizes = np.array([rows[0].shape[1]] + [rows[1].shape[1]] * d + [rows[2].shape[1]])
    weights = np.sqrt(sizes / sizes.sum()).astype(dtype)
    norm = rms_rows((rms * weights)[None])[0]
    return rms, norm * np.asarray(np.sqrt(sizes.sum() * len(sizes)), dtype)


def _net_grad_stats(g: tuple, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """:func:`_grad_stats` for a network of blocks, ``g = (embed, blocks, readout)``: rows
    are the embedding, each block (every leaf of its parameters together) and the readout."""
    embed, blocks, readout = jax.tree.map(lambda v: v.astype(dtype), g)
    d = jax.tree.leaves(blocks)[0].shape[0]
    rows = [
        jnp.concatenate([v.ravel() for v in jax.tree.leaves(embed)])[None],
        jnp.concatenate([v.reshape(d, -1) for v in jax.tree.leaves(blocks)], axis=1),
        jnp.concatenate([v.ravel() for v in jax.tree.leaves(readout)])[None],
    ]
    rms = jnp.concatenate([rms_rows(r) for r in rows])
    sizes = np.array([rows[0].shape[1]] + [rows[1].shape[1]] * d + [rows[2].shape[1]])
    weights = np.sqrt(sizes / sizes.sum()).astype(dtype)
    norm = rms_rows((rms * weights)[None])[0]
    return rms, norm * np.asarray(np.sqrt(sizes.sum() * len(sizes)), dtype)


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
            )

        return f

    params = jax.lax.switch(run.init, [draw(name) for name in spec.init])
    trainable = (params.embed, params.blocks, params.readout)
    return dataclasses.replace(
        params,
        **dict(
            zip(
                ("embed", "blocks", "readout"),
                jax.tree.map(lambda v: v.astype(dtype), trainable),
                strict=True,
            )
        ),
    )


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


def _loss(spec: TrainSpec, out: jax.Array, y: jax.Array) -> jax.Array:
    # The loss is computed in float32 (mixed precision practice), in float64 for a float64 run.
    out = out.astype(_wide(spec))
    if spec.task.kind == "classification":
        return jnp.mean(softmax_cross_entropy(out, y))
    return 0.5 * jnp.mean(jnp.square(out - y))


def _summarise(raw: tuple, wide: jnp.dtype) -> tuple:
    """The record of one step: loss, norms, per-layer gradient RMS, census, loss scale."""
    loss, g_c, updates, scale = raw
    stats = _grad_stats if isinstance(g_c, MLPParams) else _net_grad_stats
    layer_rms, grad_norm = stats(jax.tree.map(lambda g: g.astype(wide) / scale, g_c), wide)
    c = census(jnp.concatenate([g.ravel() for g in jax.tree.leaves(g_c)]))
    return (
        loss,
        grad_norm,
        safe_global_norm(updates).astype(wide),
        layer_rms,
        c,
        scale,
    )


def _final(spec: TrainSpec, out: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The loss and (classification) accuracy of the whole data set's outputs after training."""
    wide = _wide(spec)
    final = _loss(spec, out, y)
    if spec.task.kind == "classification":
        # a row with inf/NaN outputs is wrong, whatever arg-max would pick among its NaNs
        right = (jnp.argmax(out, axis=-1) == y) & jnp.all(jnp.isfinite(out), axis=-1)
        accuracy = jnp.mean(right.astype(wide))
    else:
        accuracy = jnp.asarray(jnp.nan, wide)
    return final, accuracy


def _one_run(
    spec: TrainSpec, run: Runs, unit_params: MLPParams, x: jax.Array, y: jax.Array
) -> History:
    compute = spec.dtype
    store = spec.master_dtype or compute
    wide = _wide(spec)  # the records' dtype: float32, or float64 for a float64 run
    scale_dtype = (
        wide if spec.loss_scale is None else jnp.promote_types(wide, spec.loss_scale.dtype)
    )
    if spec.block is None:
        params = _scaled(unit_params, run.scale, store)
        phi = select_activation(spec.activation, run.activation)

        def apply(p, xb):
            return mlp_apply(p, xb, activation=phi, depth=run.depth)

    else:
        # Train the arrays, not the hyper-parameters (scale, eps... are data of the network):
        # the optimizer sees (embed, blocks, readout).
        net = _net_params(spec, run, store)
        params = (net.embed, net.blocks, net.readout)

        def apply(p, xb):
            def with_block(block):
                def f(p, xb):
                    n = dataclasses.replace(net, embed=p[0], blocks=p[1], readout=p[2], block=block)
                    return net_forward(n, xb, run.depth)

                return f

            return jax.lax.switch(run.activation, [with_block(b) for b in spec.blocks], p, xb)

    opt = _build_optimizer(spec, run.lr)
    opt_state = opt.init(params)

    def loss_fn(p, xb, yb, scale):
        out = apply(p, xb)
        loss = _loss(spec, out, yb)
        return loss * scale, loss

    def batch(i):
        if spec.batch_size is None:
            return x, y
        k_batch = jax.random.fold_in(jax.random.key(run.seed), _BATCH_STREAM)
        idx = jax.random.choice(
            jax.random.fold_in(k_batch, i), spec.task.n, (spec.batch_size,), replace=False
        )
        return x[idx], y[idx]

    def step(carry, i):
        params, opt_state, first_bad = carry
        scale = (
            loss_scale_of(opt_state).astype(scale_dtype)
            if spec.loss_scale is not None
            else jnp.ones((), scale_dtype)
        )
        xb, yb = batch(i)
        p_c = jax.tree.map(lambda v: v.astype(compute), params)
        (_, loss), g_c = jax.value_and_grad(loss_fn, has_aux=True)(p_c, xb, yb, scale)
        grads = jax.tree.map(lambda g: g.astype(store), g_c)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        grads_ok = all_finite(g_c)
        update_ok = all_finite(updates)
        failed = ~jnp.isfinite(loss) | (~grads_ok & ~update_ok)
        first_bad = jnp.where((first_bad < 0) & failed, i, first_bad).astype(jnp.int32)
        events = ((~grads_ok).astype(jnp.int32), (~grads_ok & update_ok).astype(jnp.int32))
        return (params, opt_state, first_bad), (loss, g_c, updates, scale), events

    k = spec.log_every

    def window(carry, t):
        # One step body serves logged and unlogged steps (one copy to compile): the window keeps
        # the record of its first step and sums the non-finite events of all its steps. The
        # record's statistics are computed on that first step only: `j` is not batched by the
        # vmap over runs, so the `cond` stays a branch and the other steps skip them.
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
        (carry, record, events), _ = jax.lax.scan(
            body, (carry, *zeros), jnp.arange(k, dtype=jnp.int32)
        )
        return carry, (*record, *events)

    n_logs = spec.steps // k
    carry = (params, opt_state, jnp.int32(-1))
    carry, records = jax.lax.scan(window, carry, jnp.arange(n_logs, dtype=jnp.int32))
    params, _, first_bad = carry
    p_c = jax.tree.map(lambda v: v.astype(compute), params)
    out = apply(p_c, x)
    final, accuracy = _final(spec, out, y)
    loss, gnorm, unorm, layers, cens, scales, bad, absorbed = records
    return History(
        step=jnp.arange(n_logs, dtype=jnp.int32) * k,
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
        runs=run,
    )


class _Holder:
    """Carries the spec into the kernel as a static argument hashed by its static fields only."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self._key = spec._static()

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Holder) and self._key == other._key


def train(spec: TrainSpec, runs: Runs) -> History:
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
    _check_runs(spec, runs)
    with _x64(spec):
        runs = Runs(*(jnp.asarray(v, dt) for v, dt in zip(runs, _RUN_DTYPES, strict=True)))
        unit = _initial_params(spec, runs) if spec.block is None else ()
        history = _train_jit(_Holder(spec), runs, unit, spec.task.x, spec.task.y)
        if _needs_x64(spec):
            # On the host, so that float64 records stay float64 outside ``enable_x64`` too.
            history = jax.tree.map(np.asarray, history)
    return history


@partial(jax.jit, static_argnums=0)
def _train_jit(holder: _Holder, runs: Runs, unit: MLPParams, x: jax.Array, y: jax.Array) -> History:
    history = jax.vmap(partial(_one_run, holder.spec), in_axes=(0, 0, None, None))(runs, unit, x, y)
    return history._replace(step=history.step[0])
