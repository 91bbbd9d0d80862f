"""stabkit.inspect on real models: flax nnx, equinox, an optax step, and stabkit's own MLP.

Each model is small and each inspected function is compiled once per module (a module fixture),
its clean and failing inputs sharing that compilation: inspect caches per (function, argument
shapes and dtypes). Sources are checked against the lines of this file that carry a ``# <-
name`` marker, so moving code around does not break the tests.
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import stabkit
from stabkit.losses import whole_array_loss

HERE = os.path.realpath(__file__)


def _marker_lines() -> dict[str, int]:
    lines = {}
    with open(HERE) as f:
        for n, text in enumerate(f, start=1):
            if "# <- " in text and not text.lstrip().startswith("#"):
                lines[text.rsplit("# <- ", 1)[1].strip()] = n
    return lines


MARKERS = _marker_lines()


def at(marker: str) -> str:
    """``'path:LINE'`` of the line of this file marked ``# <- marker``."""
    return f"{HERE}:{MARKERS[marker]}"


def brief(origins) -> list[tuple]:
    """What must agree between two inspections of the same failure."""
    return [(o.kind, o.primitive, o.source, o.scope, o.direction, o.index) for o in origins]


def rows(report, **where):
    """The rows of ``report.stats`` whose coordinates equal ``where`` (inputs excluded)."""
    ds = report.stats
    mask = ds.node.values >= 0
    for key, value in where.items():
        mask &= ds[key].values == value
    return ds.isel(value=np.flatnonzero(mask))


# ------------------------------------------------------------------------------------ flax nnx


class Model(nnx.Module):
    """Linear -> relu -> LayerNorm -> Linear: nnx names no scopes, inspect uses the classes."""

    def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32, norm: bool = True) -> None:
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        self.l1 = nnx.Linear(4, 8, **kw)
        self.norm = nnx.LayerNorm(8, **kw) if norm else None
        self.l2 = nnx.Linear(8, 3, **kw)

    def __call__(self, x):
        h = nnx.relu(self.l1(x))  # <- flax l1
        if self.norm is not None:
            h = self.norm(h)  # <- flax norm
        return self.l2(h)  # <- flax l2


def nll(logits, labels):
    """A cross-entropy written the naive way: softmax, then log (log(0) once softmax underflows)."""
    p = jax.nn.softmax(logits)  # <- flax softmax
    picked = jnp.take_along_axis(p, labels[:, None], axis=1)
    return -jnp.mean(jnp.log(picked))  # <- flax log


def scaled(state, prefix: str, factor: float):
    """``state`` with the leaves whose key path starts with ``prefix`` times ``factor``."""

    def scale(path, a):
        return a * factor if jax.tree_util.keystr(path).startswith(prefix) else a

    return jax.tree_util.tree_map_with_path(scale, state)


SMALL, LARGE = 0.01, 100.0  # inputs: the first layer's output is about 10 (fine) or 1e5 (inf)


@pytest.fixture(scope="module")
def flax_forward():
    """A float16 model, inspected as a closure and with its state as an argument; the same
    compilation inspects a state whose first kernel is 1000 times larger on large inputs."""
    model = Model(nnx.Rngs(0), dtype=jnp.float16)
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float16)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    big = scaled(state, "['l1']['kernel']", 1000)
    return {
        "model": model,
        "x": x,
        "closure": stabkit.inspect(lambda x: model(x), x),
        "by_state": stabkit.inspect(forward, state, x),
        "overflow": stabkit.inspect(forward, big, jnp.full((5, 4), LARGE, jnp.float16)),
    }


@pytest.fixture(scope="module")
def flax_grad():
    """value_and_grad of a float32 model's loss, as a function of its state; logits 1000 times
    larger make softmax underflow to 0 for all but the largest logit."""
    graphdef, state = nnx.split(Model(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (5, 4))
    labels = jnp.array([0, 1, 2, 0, 1])

    def loss(state, x, labels):
        return nll(nnx.merge(graphdef, state)(x), labels)

    vg = jax.value_and_grad(loss)
    big = scaled(state, "['l2']['kernel']", 1000)
    return {
        "args": (state, x, labels),
        "vg": vg,
        "clean": stabkit.inspect(vg, state, x, labels),
        "failing": stabkit.inspect(vg, big, x, labels),
    }


def test_flax_forward_scopes_and_sources(flax_forward):
    r = flax_forward["closure"]
    assert r.origins == ()
    # one compiled program against op-by-op eager: the same values up to XLA's rounding
    ref = flax_forward["model"](flax_forward["x"])
    np.testing.assert_allclose(r.outputs, ref, rtol=2e-3, atol=1e-3)
    ds = r.stats.isel(value=np.flatnonzero(r.stats.node.values >= 0))
    # the class chain of Module.__call__ frames: the Model, then the flax layer it calls
    assert set(ds.scope.values) == {"Model", "Model/Linear", "Model/LayerNorm"}
    # the user's line in this file, not flax's linear.py / normalization.py
    assert set(ds.source.values) == {at("flax l1"), at("flax norm"), at("flax l2")}
    assert set(rows(r, primitive="dot_general").scope.values) == {"Model/Linear"}
    assert set(rows(r, primitive="rsqrt").source.values) == {at("flax norm")}
    # nnx.relu, called in Model.__call__ (LayerNorm has a max of its own)
    assert set(rows(r, primitive="max", source=at("flax l1")).scope.values) == {"Model"}


def test_flax_split_merge_matches_closure(flax_forward):
    """The state as an argument (nnx.split / nnx.merge) gives the same equations and numbers."""
    a, b = flax_forward["closure"], flax_forward["by_state"]
    assert b.origins == ()
    np.testing.assert_array_equal(a.outputs, b.outputs)
    ra, rb = rows(a), rows(b)
    for coord in ("primitive", "scope", "source", "shape"):
        assert list(ra[coord].values) == list(rb[coord].values), coord
    for var in ("rms", "max_abs", "min_abs", "normal", "zero"):
        np.testing.assert_array_equal(ra[var].values, rb[var].values, err_msg=var)
    # the state's leaves are named inputs
    names = set(b.stats.scope.values[b.stats.node.values < 0])
    assert "args[0]['l1']['kernel'].value" in names and "args[1]" in names


def test_flax_value_and_grad_clean(flax_grad):
    r = flax_grad["clean"]
    assert r.origins == ()
    value, grads = r.outputs
    ref_value, ref_grads = jax.jit(flax_grad["vg"])(*flax_grad["args"])
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref_grads
    )
    back = rows(r, direction="backward")
    assert back.sizes["value"] > 0
    # the backward pass of a layer keeps the layer's scope and the user's line
    assert set(rows(r, direction="backward", primitive="dot_general").scope.values) == {
        "Model/Linear"
    }
    assert set(rows(r, direction="backward", scope="Model/Linear").source.values) <= {
        at("flax l1"),
        at("flax l2"),
    }


def test_flax_log_of_zero(flax_grad):
    """Logits scaled by 1000: softmax underflows to 0, the log of it is -inf, its gradient 1/0."""
    r = flax_grad["failing"]
    value, grads = r.outputs
    assert np.isinf(value)
    first = r.origins[0]
    assert (first.kind, first.primitive, first.direction) == ("underflow", "exp", "forward")
    assert first.source == at("flax softmax") and first.scope == ""
    logs = [o for o in r.origins if o.primitive == "log"]
    assert len(logs) == 1
    log = logs[0]
    assert (log.kind, log.direction, log.source, log.reaches_output) == (
        "inf",
        "forward",
        at("flax log"),
        True,
    )
    assert "jnp.log(picked)" in log.line
    # backward: the gradient of log at 0 divides by 0 (on the log's line), and softmax's
    # gradient multiplies that inf by a probability of 0 (on the softmax's line): NaN, which
    # reaches every parameter's gradient
    back = [(o.kind, o.primitive, o.source) for o in r.origins if o.direction == "backward"]
    assert back == [("inf", "div", at("flax log")), ("nan", "mul", at("flax softmax"))]
    assert all(np.isnan(g).any() for g in jax.tree.leaves(grads))
    assert all(o.reaches_output for o in r.origins)


@pytest.fixture(scope="module")
def flax16_small():
    """jit, vmap and vmap of inspect on the float16 model without LayerNorm (a smaller program:
    four compilations) whose first kernel is 1000 times larger: only large inputs overflow."""
    graphdef, state = nnx.split(Model(nnx.Rngs(0), dtype=jnp.float16, norm=False))
    state = scaled(state, "['l1']['kernel']", 1000)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    xs = jnp.array([[SMALL] * 4, [LARGE] * 4, [SMALL] * 4], jnp.float16)
    return {
        "per_example": [stabkit.inspect(forward, state, x) for x in xs],
        "jit": stabkit.inspect(jax.jit(forward), state, xs[1]),
        "vmapped": stabkit.inspect(jax.vmap(forward, in_axes=(None, 0)), state, xs),
        "vmap_of_inspect": jax.vmap(lambda x: stabkit.inspect(forward, state, x))(xs),
    }


def test_flax_float16_overflow(flax_forward):
    bad = flax_forward["overflow"]
    first = bad.origins[0]
    assert (first.kind, first.primitive, first.direction) == ("inf", "dot_general", "forward")
    assert first.scope == "Model/Linear" and first.dtype == "float16"
    assert first.source == at("flax l1")  # the user's frame, not flax/nnx/nn/linear.py
    assert first.reaches_output and first.iteration is None
    # LayerNorm (computed in float32) turns inf - inf into NaN
    assert {(o.kind, o.primitive, o.scope) for o in bad.origins[1:]} == {
        ("nan", "sub", "Model/LayerNorm")
    }


def test_flax_jit_vmap_consistent(flax16_small):
    ref = flax16_small["per_example"]
    assert ref[0].origins == ref[2].origins == ()
    assert (ref[1].origins[0].kind, ref[1].origins[0].source) == ("inf", at("flax l1"))
    assert brief(flax16_small["jit"].origins) == brief(ref[1].origins)
    # vmap of the model: one report over the batch, indices gain the batch axis (example 1)
    vm = flax16_small["vmapped"].origins
    assert [(o.kind, o.primitive, o.scope, o.source) for o in vm] == [
        (o.kind, o.primitive, o.scope, o.source) for o in ref[1].origins
    ]
    assert vm[0].index == (1, *ref[1].origins[0].index)
    # vmap of inspect: per-example reports, equal to inspecting each example alone
    batched = flax16_small["vmap_of_inspect"]
    assert len(batched) == 3
    for i in range(3):
        assert brief(batched[i].origins) == brief(ref[i].origins)
        np.testing.assert_array_equal(batched[i].stats.rms, ref[i].stats.rms)
    assert {o.example for o in batched.origins} == {1}


@pytest.fixture(scope="module")
def attention():
    """nnx.MultiHeadAttention (float32: flax's float16 attention asks CPU for a dot_general
    precision it lacks); inputs of 1e19 make the query-key logits overflow."""
    attn = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0)
    )

    def forward(x):
        return attn(x)  # <- flax attention

    x = jax.random.normal(jax.random.key(0), (1, 4, 8))
    return stabkit.inspect(forward, x), stabkit.inspect(forward, x * 1e19)


def test_flax_attention_logits_overflow(attention):
    clean, bad = attention
    assert clean.origins == ()
    first = bad.origins[0]
    assert (first.kind, first.primitive, first.direction) == ("inf", "dot_general", "forward")
    assert first.source == at("flax attention") and first.reaches_output
    assert set(rows(bad, primitive="dot_general").source.values) == {at("flax attention")}
    assert "MultiHeadAttention/LinearGeneral" in set(rows(bad).scope.values)
    # softmax of the overflowed logits: NaN reaches the output
    assert np.isnan(bad.outputs).any()


def test_flax_attention_scope_names_the_module(attention):
    _, bad = attention
    assert bad.origins[0].scope.startswith("MultiHeadAttention")


def test_flax_closure_sees_updated_weights():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    def f(x):
        return jnp.log(model(x))

    x = jnp.ones((1, 2))
    stabkit.inspect(f, x)
    nnx.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model)))  # log(0) = -inf now
    r = stabkit.inspect(f, x)
    np.testing.assert_array_equal(r.outputs, f(x))
    assert [(o.kind, o.primitive) for o in r.origins] == [("inf", "log")]


# ------------------------------------------------------------------------------------ equinox


class Net(eqx.Module):
    """A Linear, relu, then log: log(0) = -inf wherever relu zeroed a unit."""

    linear: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        self.linear = eqx.nn.Linear(4, 3, key=key)

    def __call__(self, x):
        h = jax.nn.relu(self.linear(x))  # <- eqx linear
        return jnp.log(h)  # <- eqx log


def eqx_sum_loss(params, static, x):
    return jnp.sum(eqx.combine(params, static)(x))  # <- eqx loss


@pytest.fixture(scope="module")
def equinox_models():
    mlp = eqx.nn.MLP(4, 2, 8, 2, key=jax.random.key(0))
    net = Net(jax.random.key(1))
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    params, static = eqx.partition(net, eqx.is_array)
    vg = eqx.filter_value_and_grad(lambda p, x: eqx_sum_loss(p, static, x))
    # an input whose pre-activations are all 2: no log of 0
    fine = jnp.linalg.pinv(net.linear.weight) @ (2 - net.linear.bias)
    xs = jnp.stack([fine, x, fine])
    return {"mlp": mlp, "net": net, "x": x, "xs": xs, "params": params, "static": static, "vg": vg}


@pytest.fixture(scope="module")
def equinox_reports(equinox_models):
    """inspect of the MLP and of the gradient of Net's loss (split from the fixture below so
    that pytest-xdist workers compile only what their tests need)."""
    m = equinox_models
    return {
        "mlp": stabkit.inspect(m["mlp"], m["x"]),
        "vg": stabkit.inspect(m["vg"], m["params"], m["x"]),
    }


@pytest.fixture(scope="module")
def equinox_transformed(equinox_models):
    net, xs = equinox_models["net"], equinox_models["xs"]
    net_fn = lambda x: net(x)
    return {
        "per_example": [stabkit.inspect(net_fn, x) for x in xs],
        "jit": stabkit.inspect(eqx.filter_jit(net_fn), xs[1]),
        "vmapped": stabkit.inspect(jax.vmap(net_fn), xs),
        "vmap_of_inspect": jax.vmap(lambda x: stabkit.inspect(net_fn, x))(xs),
    }


def test_equinox_mlp_scopes(equinox_models, equinox_reports):
    r = equinox_reports["mlp"]
    assert r.origins == ()
    np.testing.assert_allclose(r.outputs, equinox_models["mlp"](equinox_models["x"]), rtol=1e-6)
    assert set(rows(r, primitive="dot_general").scope.values) == {"eqx.nn.MLP/eqx.nn.Linear"}
    assert set(rows(r, primitive="max").scope.values) == {"eqx.nn.MLP"}  # relu between layers
    # inspect(model, x) calls equinox from inspect itself: no frame is the user's, so the source
    # is the innermost library frame, equinox's own file
    sources = set(rows(r).source.values)
    assert all(os.sep + "equinox" + os.sep in s for s in sources), sources
    assert any("_linear.py" in s for s in sources)


def test_equinox_gradient_log_of_zero(equinox_models, equinox_reports):
    r = equinox_reports["vg"]
    value, grads = r.outputs
    net, x = equinox_models["net"], equinox_models["x"]
    assert np.isneginf(value) == np.isneginf(jnp.sum(net(x)))
    ref = jax.grad(eqx_sum_loss)(equinox_models["params"], equinox_models["static"], x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads, ref)
    assert [(o.kind, o.primitive, o.direction) for o in r.origins] == [
        ("inf", "log", "forward"),
        ("inf", "div", "backward"),
    ]
    fwd, bwd = r.origins
    assert fwd.source == bwd.source == at("eqx log")
    assert fwd.reaches_output
    # relu's gradient is a select that puts 0 where the unit was off: the 1/0 never reaches the
    # gradient, which is finite
    assert not bwd.reaches_output
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert fwd.index == bwd.index
    # equinox names its layers' scopes; the backward pass keeps them
    assert set(rows(r, primitive="dot_general").scope.values) == {"eqx.nn.Linear"}
    assert set(rows(r, primitive="dot_general", direction="backward").source.values) == {
        at("eqx linear")
    }


def test_equinox_scope_names_no_wrapper(equinox_reports):
    fwd = equinox_reports["vg"].origins[0]
    assert fwd.scope == "Net"


def test_equinox_jit_vmap_consistent(equinox_transformed):
    ref = equinox_transformed["per_example"]  # inspect of each example alone
    assert ref[0].origins == ref[2].origins == ()
    assert [(o.kind, o.primitive, o.source, o.scope) for o in ref[1].origins] == [
        ("inf", "log", at("eqx log"), "Net")
    ]
    assert brief(equinox_transformed["jit"].origins) == brief(ref[1].origins)
    # vmap of the model: the entry's index gains the batch axis (example 1)
    vm = equinox_transformed["vmapped"].origins
    assert [(o.kind, o.primitive, o.source) for o in vm] == [("inf", "log", at("eqx log"))]
    assert vm[0].index == (1, *ref[1].origins[0].index)
    # vmap of inspect: per-example reports
    batched = equinox_transformed["vmap_of_inspect"]
    for i in range(3):
        assert brief(batched[i].origins) == brief(ref[i].origins)
    assert {o.example for o in batched.origins} == {1}


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
    ours, ref = r.outputs, adam_step(*optax_step["args"])
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
def mlp_forward_report(mlp):
    return stabkit.inspect(mlp_forward, mlp["params"], mlp["x"])


@pytest.fixture(scope="module")
def mlp_backward_report(mlp):
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


def test_mlp_forward_matches_trace(mlp, mlp_forward_report):
    r, t = mlp_forward_report, mlp["trace"]
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
    ref = MLP_GRAD(mlp["params"], mlp["x"])
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
