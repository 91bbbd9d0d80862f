"""stabkit.inspect on an optax update step and on stabkit's own MLP, against trace.

Split from tests/test_inspect_interop.py (flax nnx, equinox) so that the two files compile on
two workers at once. Each inspected function is compiled once per module (a module fixture).
Sources are checked against the lines of this file that carry a ``# <- name`` marker.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stabkit
from stabkit.losses import whole_array_loss
from tests.inspect_helpers import marker_lines, rows

HERE = os.path.realpath(__file__)
MARKERS = marker_lines(HERE)


def at(marker: str) -> str:
    """``'path:LINE'`` of the line of this file marked ``# <- marker``."""
    return f"{HERE}:{MARKERS[marker]}"


# -------------------------------------------------------------------------------------- optax

# eps=0: adam's update m / (sqrt(v) + eps) is 0 / 0 where a gradient has always been 0
ADAM_NO_EPS = optax.adam(1e-2, eps=0.0)


def quadratic(params, x):
    return jnp.mean((x @ params["w"] + params["b"]) ** 2)


def adam_step(params, opt_state, x):
    grads = jax.grad(quadratic)(params, x)
    updates, opt_state = ADAM_NO_EPS.update(grads, opt_state, params)  # <- optax update
    return optax.apply_updates(params, updates), opt_state


@pytest.fixture(scope="module")
def optax_step():
    params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
    opt_state = ADAM_NO_EPS.init(params)
    x = jax.random.normal(jax.random.key(2), (3, 4))
    zeros = jnp.zeros((3, 4))  # the prediction is b = 0 whatever w is: every gradient is 0
    no_grad = jax.tree.map(jnp.zeros_like, params)
    return {
        "args": (params, opt_state, x),
        "zero_args": (params, opt_state, zeros),
        "clean": stabkit.inspect(adam_step, params, opt_state, x),
        "zero": stabkit.inspect(adam_step, params, opt_state, zeros),
        "update": stabkit.inspect(ADAM_NO_EPS.update, no_grad, opt_state, params),
    }


def test_optax_adam_step_clean(optax_step):
    r = optax_step["clean"]
    assert r.origins == ()
    ours, ref = r.outputs, jax.jit(adam_step)(*optax_step["args"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
    assert int(ours[1][0].count) == 1
    # the gradient is the backward pass, adam's update is forward (it differentiates nothing)
    assert rows(r, direction="backward").sizes["value"] > 0
    assert set(rows(r, source=at("optax update")).direction.values) == {"forward"}
    # the optimizer state's leaves are named inputs
    names = set(r.stats.scope.values[r.stats.node.values < 0])
    assert {"args[1][0].mu['w']", "args[1][0].nu['b']"} <= names


def test_optax_zero_gradient_nan(optax_step):
    r = optax_step["zero"]
    new, _ = r.outputs
    assert all(np.isnan(a).all() for a in jax.tree.leaves(new))
    # one 0/0 per parameter leaf (b and w), in adam's update; nothing before it: zero gradients
    # of zero inputs are no underflow
    assert [(o.kind, o.primitive, o.direction, o.shape) for o in r.origins] == [
        ("nan", "div", "forward", (2,)),
        ("nan", "div", "forward", (4, 2)),
    ]
    for o in r.origins:
        # the division is in optax (transform.py), called from this file: the user's frame
        frames = r.program.nodes[o.node].frames
        assert os.sep + "optax" + os.sep in frames[0]
        assert o.source == at("optax update") and "ADAM_NO_EPS.update" in o.line
        assert o.scope == "" and o.reaches_output  # optax names no scopes, no modules


def test_optax_update_alone_falls_back_to_optax_frame(optax_step):
    """inspect(optimizer.update, ...): every frame is optax's, so the source is optax's own."""
    r = optax_step["update"]
    updates, _ = r.outputs
    assert all(np.isnan(a).all() for a in jax.tree.leaves(updates))
    assert {(o.kind, o.primitive) for o in r.origins} == {("nan", "div")}
    for o in r.origins:
        assert os.sep + "optax" + os.sep in o.source and "transform.py" in o.source, o.source


# --------------------------------------------------------------------------- stabkit's own MLP

SUM = whole_array_loss("sum")  # the loss trace(loss="sum") uses: its gradient at the output is 1


def mlp_forward(params, x):
    return stabkit.mlp_apply(params, x, activation="tanh")


def mlp_objective(params, x):
    return SUM(mlp_forward(params, x))


MLP_GRAD = jax.grad(mlp_objective, argnums=(0, 1))
DEPTH, WIDTH, BATCH, IN, OUT = 4, 8, 5, 3, 2


@pytest.fixture(scope="module")
def mlp():
    params = stabkit.mlp_init(jax.random.key(0), depth=DEPTH, width=WIDTH, in_dim=IN, out_dim=OUT)
    x = jax.random.normal(jax.random.key(1), (BATCH, IN))
    return {
        "params": params,
        "x": x,
        "trace": jax.tree.map(np.asarray, stabkit.trace(params, x, activation="tanh", loss="sum")),
    }


@pytest.fixture(scope="module")
def mlp_backward_report(mlp):
    """inspect of jax.grad of the loss: its forward (primal) half is the forward pass, layer by
    layer, its transposed half the backward pass (one compilation for both tests)."""
    return stabkit.inspect(MLP_GRAD, mlp["params"], mlp["x"])


def only_node(report, primitive, direction, shape, in_scan):
    """The one node of ``report`` with that primitive, direction and output shape, inside the
    scan or outside it."""
    directions = report.program.directions()
    found = [
        n
        for n in report.program.nodes
        if n.primitive == primitive
        and directions[n.id] == direction
        and n.shapes[:1] == (shape,)
        and bool(n.loops) == in_scan
    ]
    assert len(found) == 1, [(n.id, n.source) for n in found]
    if in_scan:
        assert found[0].loops == ("scan",)
    return found[0]


def producer(report, node):
    """The one node whose output ``node`` reads (its other inputs are no node's outputs)."""
    found = [m for m in report.program.nodes if set(m.outputs) & set(node.inputs)]
    assert len(found) == 1, [(m.id, m.primitive) for m in found]
    return found[0]


CENSUS = ("normal", "subnormal", "zero", "inf", "nan")


def layer_stats(report, outside, inside=None):
    """Per-layer statistics: the nodes ``outside`` the scan (one layer each) and, spliced in
    after the first of them, the scan node ``inside`` iteration by iteration (one layer each)."""
    parts = []
    for k, node in enumerate(outside):
        parts.append(report.stats.isel(value=np.flatnonzero(report.stats.node.values == node.id)))
        if k == 0 and inside is not None:
            it = report.iterations(inside.id).isel(output=0).rename(iteration="value")
            parts.append(it)
    keys = ("rms", "max_abs", *CENSUS)
    return {k: np.concatenate([np.atleast_1d(p[k].values) for p in parts]) for k in keys}


def assert_layers(ours, rms, top, census, layers, where):
    """inspect's per-layer numbers against trace's at ``layers``: RMS to 1e-6 (trace divides by
    sqrt(max) twice, inspect scales by a power of two), max and census exactly."""
    np.testing.assert_allclose(ours["rms"], rms[layers], rtol=1e-6, err_msg=where)
    np.testing.assert_array_equal(ours["max_abs"], top[layers], err_msg=where)
    for field in CENSUS:
        np.testing.assert_array_equal(
            ours[field], getattr(census, field)[layers], err_msg=f"{where} {field}"
        )


def test_mlp_forward_matches_trace(mlp, mlp_backward_report):
    """The forward equations of jax.grad's program, layer by layer, against trace's forward
    statistics (the scan's iteration i is layer i + 2)."""
    r, t = mlp_backward_report, mlp["trace"]
    assert r.origins == ()
    hidden = (BATCH, WIDTH)
    z1 = only_node(r, "add", "forward", hidden, in_scan=False)
    z = only_node(r, "add", "forward", hidden, in_scan=True)
    h1 = only_node(r, "tanh", "forward", hidden, in_scan=False)
    h = only_node(r, "tanh", "forward", hidden, in_scan=True)
    y = only_node(r, "add", "forward", (BATCH, OUT), in_scan=False)
    layers = np.arange(1, DEPTH + 2)  # 1..depth hidden, depth + 1 the readout
    assert r.iterations(z.id).sizes["iteration"] == DEPTH - 1
    pre = layer_stats(r, [z1, y], z)
    post = layer_stats(r, [h1, y], h)
    assert_layers(pre, t.pre_rms, t.pre_max, t.pre_census, layers, "pre-activations")
    assert_layers(post, t.post_rms, t.post_max, t.post_census, layers, "post-activations")
    # layer 0 is the input x, inspect's input row args[1]
    x_row = r.stats.isel(value=np.flatnonzero(r.stats.scope.values == "args[1]"))
    np.testing.assert_allclose(x_row.rms.values, t.post_rms[:1], rtol=1e-6)
    np.testing.assert_array_equal(x_row.max_abs.values, t.post_max[:1])


def test_mlp_backward_matches_trace(mlp, mlp_backward_report):
    """jax.grad of the same loss: the gradients by layer, in the transposed (reverse) scan,
    whose iteration i is layer i + 2 (the position in the scan's xs)."""
    r, t = mlp_backward_report, mlp["trace"]
    assert r.origins == ()
    # dL/dW: (width, width) in the scan, W_in's and W_out's (transposed) outside
    dw_in = only_node(r, "dot_general", "backward", (WIDTH, IN), in_scan=False)
    dw = only_node(r, "dot_general", "backward", (WIDTH, WIDTH), in_scan=True)
    dw_out = only_node(r, "dot_general", "backward", (OUT, WIDTH), in_scan=False)
    ours = layer_stats(r, [dw_in, dw_out], dw)
    np.testing.assert_allclose(ours["rms"], t.grad_w_rms[1 : DEPTH + 2], rtol=1e-6)
    # dL/dz: what the dW products read besides the residual h
    dz = layer_stats(r, [producer(r, dw_in)], producer(r, dw))
    np.testing.assert_allclose(dz["rms"], t.grad_pre_rms[1 : DEPTH + 1], rtol=1e-6)
    # dL/dh: dL/dx (layer 0), the scan's dL/dh^(l-1) = dL/dz^l W^T (layers 1..depth-1), then
    # dL/dh^depth from the readout
    dx = only_node(r, "dot_general", "backward", (BATCH, IN), in_scan=False)
    dh = only_node(r, "dot_general", "backward", (BATCH, WIDTH), in_scan=True)
    dh_top = only_node(r, "dot_general", "backward", (BATCH, WIDTH), in_scan=False)
    ours = layer_stats(r, [dx, dh_top], dh)
    layers = np.arange(0, DEPTH + 1)
    assert_layers(ours, t.grad_post_rms, t.grad_post_max, t.grad_census, layers, "dL/dh")
    ref = jax.jit(MLP_GRAD)(mlp["params"], mlp["x"])  # one compilation, not one per operation
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), r.outputs, ref
    )


def linear_forward(params, x):
    return stabkit.mlp_apply(params, x, activation="linear")


@pytest.fixture(scope="module")
def mlp16():
    """The note's example: width 2, W = 1.5 I, float16, depth 40: inf at layer 28, NaN at 29
    (a 1-unit readout, so that no layer outside the scan has the hidden layers' shape)."""
    params = stabkit.mlp_init(
        jax.random.key(0),
        depth=40,
        width=2,
        out_dim=1,
        init="scaled_identity",
        scale=1.5,
        dtype=jnp.float16,
    )
    x = jnp.ones((1, 2), jnp.float16)
    return {
        "trace": jax.tree.map(np.asarray, stabkit.trace(params, x, activation="linear")),
        "report": stabkit.inspect(linear_forward, params, x),
    }


def test_mlp_float16_overflow_matches_trace(mlp16):
    r, t = mlp16["report"], mlp16["trace"]
    assert (int(t.first_inf_forward), int(t.first_nan_forward)) == (28, 29)
    # the scan's iteration i is layer i + 2
    assert [(o.kind, o.primitive, o.iteration) for o in r.origins] == [
        ("inf", "dot_general", (28 - 2,)),
        ("nan", "dot_general", (29 - 2,)),
    ]
    assert all(o.reaches_output and o.dtype == "float16" for o in r.origins)
    nets = os.path.join("stabkit", "nets.py")
    assert all(o.source.rpartition(":")[0].endswith(nets) for o in r.origins)
    z1 = only_node(r, "add", "forward", (1, 2), in_scan=False)
    z = only_node(r, "add", "forward", (1, 2), in_scan=True)
    ours = layer_stats(r, [z1], z)
    layers = np.arange(1, 41)
    for field in CENSUS:
        np.testing.assert_array_equal(ours[field], getattr(t.pre_census, field)[layers], field)
    # trace's RMS and max count inf entries (inf); inspect's are over the finite entries: equal
    # on the layers before the overflow
    finite = slice(0, 28 - 1)
    np.testing.assert_allclose(ours["rms"][finite], t.pre_rms[1:28], rtol=1e-6)
    np.testing.assert_array_equal(ours["max_abs"][finite], t.pre_max[1:28])


def test_mlp_vmap_of_inspect_per_example_iterations(mlp16):
    """jax.vmap of inspect over the weights' scale: each example's origins at its own layer,
    as inspecting that example alone says (which reuses mlp16's compilation)."""
    base = stabkit.mlp_init(
        jax.random.key(0),
        depth=40,
        width=2,
        out_dim=1,
        init="scaled_identity",
        scale=1.0,
        dtype=jnp.float16,
    )
    x = jnp.ones((1, 2), jnp.float16)

    def scaled_params(s):
        return jax.tree.map(lambda a: (a * s).astype(a.dtype), base)

    scales = jnp.array([1.0, 1.5, 1.75], jnp.float16)
    alone = [stabkit.inspect(linear_forward, scaled_params(s), x) for s in scales]
    batched = jax.vmap(lambda s: stabkit.inspect(linear_forward, scaled_params(s), x))(scales)
    assert alone[0].origins == ()
    assert [o.iteration for o in alone[1].origins] == [(26,), (27,)]  # layers 28 and 29
    # 1.75**l overflows sooner: at the layer trace finds, iteration layer - 2
    t = stabkit.trace(scaled_params(scales[2]), x, activation="linear")
    assert alone[2].origins[0].iteration == (int(t.first_inf_forward) - 2,)
    assert int(t.first_inf_forward) < 28
    for i in range(3):
        assert [(o.kind, o.iteration, o.index) for o in batched[i].origins] == [
            (o.kind, o.iteration, o.index) for o in alone[i].origins
        ]
    # combined over the batch: each origin once, with the first example it happened in
    assert {(o.kind, o.example) for o in batched.origins} == {("inf", 1), ("nan", 1)}
