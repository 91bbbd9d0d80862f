"""One seed rule: a sweep's configuration is exactly the initial network of the same run in train.

A researcher sweeps (activation, init, depth, width, scale, bias_std, seed), picks a configuration
and trains it: ``train`` must start from the network the sweep traced. Checked three ways, on one
float32 sweep of square layers (in_dim = out_dim = width, as the sweep's nets are; the parameters
in float16 too):

* the sweep's sampler (its unit draws, the init rules, the scaling, its layer numbering: readout
  0, first layer 1, hidden 2..depth) draws :func:`stabkit.mlp_init`'s parameters, and the
  parameters ``train`` starts from are the same;
* the sweep's stored per-layer statistics equal :func:`stabkit.trace` of train's initial
  parameters on :func:`stabkit.sweep_input` (to the rounding of the kernel's own arithmetic,
  the tolerances of ``test_sweep``);
* train's first recorded loss is the loss of ``mlp_init``'s network on the task (public names
  only).

The parameters agree to one rounding (2 eps in float32, one ulp in float16), not bit for bit:
the same keys give the same draws, but not always the same last bit. Train scales its unit draw
(already multiplied by ``sqrt(variance)``) by ``scale``, rounding twice where the sweep rounds
``scale * sqrt(variance)`` once; and one formula is not bit-stable across compiled programs
either (measured: ``mlp_init``'s biases and an eager draw of the same formula differ in one
float32 ulp, XLA fusing the multiply into the normal sampler's arithmetic differently).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import stabkit as sk
from stabkit.sweeps import kernel as kern
from stabkit.training.loop import _initial_params, _scaled

WIDTH, BATCH = 8, 5
AXES = dict(
    depth=(3, 5),
    width=WIDTH,
    activation=("tanh", "relu", "linear"),
    init=("gaussian", "orthogonal", "scaled_identity", "he_uniform"),
    scale=(1.0, 1.5),
    bias_std=(0.0, 0.1),
    seed=(0, 3),
    batch=BATCH,
)
# (activation, init, depth, scale, bias_std, seed)
CONFIGS = [
    ("tanh", "gaussian", 5, 1.5, 0.1, 3),
    ("tanh", "gaussian", 3, 1.0, 0.0, 0),
    ("relu", "orthogonal", 5, 1.5, 0.0, 0),
    ("linear", "scaled_identity", 3, 1.5, 0.1, 3),
    ("relu", "he_uniform", 5, 1.5, 0.1, 0),
]
# one rounding apart (see the module docstring): relative 2 eps in float32, one float16 ulp
PARAM_RTOL = {"float32": 2 * float(ml_dtypes.finfo(np.float32).eps), "float16": 2.0**-10}


@pytest.fixture(scope="module")
def swept():
    return sk.sweep(sk.SweepSpec(**AXES, dtype="float32"), progress=False)


def _task(seed):
    return sk.teacher_student(jax.random.key(seed), n=16, in_dim=WIDTH, out_dim=WIDTH)


def _spec(bias_std, dtype="float32", steps=2):
    return sk.TrainSpec(
        _task(0),
        max_depth=max(AXES["depth"]),
        width=WIDTH,
        activation=AXES["activation"],
        init=AXES["init"],
        steps=steps,
        bias_std=bias_std,
        dtype=dtype,
    )


def _train_start(act, init, depth, scale, bias_std, seed, dtype="float32"):
    """The parameters train starts from for this run, truncated to ``depth`` hidden layers."""
    spec = _spec(bias_std, dtype)
    runs = sk.make_runs(spec, depth=depth, scale=scale, activation=act, init=init, seed=seed)
    unit = jax.tree.map(lambda a: a[0], _initial_params(spec, runs))
    return _truncate(_scaled(unit, runs.scale[0], jnp.dtype(dtype)), depth)


def _truncate(p, depth):
    return p._replace(w_hidden=p.w_hidden[: depth - 1], b_hidden=p.b_hidden[: depth - 1])


def _sweep_params(init, depth, scale, bias_std, seed, dtype):
    """The sweep kernel's weights, drawn as its body draws them (see kernel._chunk_fn)."""
    dtype = jnp.dtype(dtype)
    sdt = jnp.float32
    key = jax.random.key(seed)
    kind = kern._INIT_KIND[init][0]
    mult = np.float32(kern._multiplier(init, scale, WIDTH))
    ws, bs = [], []
    for layer in range(depth + 1):  # 0 is the readout, 1..depth the hidden layers
        uw = kern._unit(kind, jax.random.fold_in(jax.random.fold_in(key, 0), layer), WIDTH, sdt)
        ub = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 1), layer), (WIDTH,))
        ws.append((mult * uw).astype(dtype))
        b = jnp.zeros_like(ub) if bias_std == 0 else np.float32(bias_std) * ub
        bs.append(b.astype(dtype))
    return sk.MLPParams(
        w_in=ws[1],
        b_in=bs[1],
        w_hidden=jnp.stack(ws[2:]).reshape(depth - 1, WIDTH, WIDTH),
        b_hidden=jnp.stack(bs[2:]).reshape(depth - 1, WIDTH),
        w_out=ws[0],
        b_out=bs[0],
    )


def _assert_params(got, want, rtol):
    for name, a, b in zip(sk.MLPParams._fields, got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("act, init, depth, scale, bias_std, seed", CONFIGS)
def test_sweep_network_is_mlp_init_and_trains_start(act, init, depth, scale, bias_std, seed, dtype):
    sweep_net = _sweep_params(init, depth, scale, bias_std, seed, dtype)
    mlp = sk.mlp_init(
        jax.random.key(seed),
        depth=depth,
        width=WIDTH,
        init=init,
        scale=scale,
        bias_std=bias_std,
        dtype=dtype,
    )
    _assert_params(mlp, sweep_net, PARAM_RTOL[dtype])
    start = _train_start(act, init, depth, scale, bias_std, seed, dtype)
    _assert_params(start, sweep_net, PARAM_RTOL[dtype])


@pytest.mark.parametrize("act, init, depth, scale, bias_std, seed", CONFIGS)
def test_sweep_statistics_are_the_trace_of_trains_start(
    swept, act, init, depth, scale, bias_std, seed
):
    c = swept.sel(
        dtype="float32",
        width=WIDTH,
        activation=act,
        init=init,
        depth=depth,
        scale=scale,
        bias_std=bias_std,
        seed=seed,
    )
    p = _train_start(act, init, depth, scale, bias_std, seed)
    t = sk.trace(p, sk.sweep_input(seed, BATCH, WIDTH, "float32"), activation=act)
    # float32: the forward pass agrees to rounding; the backward pass's sums cancel
    for name, rtol in [
        ("pre_rms", 2e-6),
        ("post_rms", 2e-6),
        ("post_max", 2e-6),
        ("grad_post_rms", 1e-4),
        ("grad_pre_rms", 1e-4),
        ("grad_w_rms", 1e-4),
    ]:
        np.testing.assert_allclose(
            c[name].values[: depth + 2], np.asarray(getattr(t, name)), rtol=rtol, err_msg=name
        )
    for name in ("inf", "nan", "zero", "subnormal"):
        np.testing.assert_array_equal(
            c[f"post_{name}"].values[: depth + 2], getattr(t.post_census, name)
        )
    np.testing.assert_allclose(float(c.loss), float(t.loss), rtol=2e-6)


def test_trains_first_loss_is_the_sweep_networks_loss():
    """Public path only: train's loss at step 0 is the loss of the sweep's network on the task."""
    rows = [cfg for cfg in CONFIGS if cfg[4] == 0.1]
    spec = _spec(0.1, steps=1)
    runs = sk.make_runs(
        spec,
        depth=[r[2] for r in rows],
        scale=[r[3] for r in rows],
        activation=[r[0] for r in rows],
        init=[r[1] for r in rows],
        seed=[r[5] for r in rows],
        product=False,
    )
    h = sk.train(spec, runs)
    task = spec.task
    for i, (act, init, depth, scale, bias_std, seed) in enumerate(rows):
        p = sk.mlp_init(
            jax.random.key(seed),
            depth=depth,
            width=WIDTH,
            init=init,
            scale=scale,
            bias_std=bias_std,
        )
        out = sk.mlp_apply(p, task.x, activation=act)
        want = 0.5 * float(jnp.mean(jnp.square(out - task.y)))
        np.testing.assert_allclose(float(h.loss[i, 0]), want, rtol=1e-5, err_msg=str(rows[i]))
