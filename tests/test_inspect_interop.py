"""stabkit.inspect on real models: flax nnx and equinox (an optax step and stabkit's own MLP
against trace: tests/test_inspect_mlp.py).

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
import pytest
from flax import nnx

import stabkit
from tests.inspect_helpers import brief, marker_lines, rows

HERE = os.path.realpath(__file__)


MARKERS = marker_lines(HERE)


def at(marker: str) -> str:
    """``'path:LINE'`` of the line of this file marked ``# <- marker``."""
    return f"{HERE}:{MARKERS[marker]}"


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
