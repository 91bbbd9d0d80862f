"""stabkit.inspect: origins of inf, NaN and underflow in any JAX function, and its statistics.

References are float64 NumPy (or stabkit.census, itself checked against NumPy bit patterns) on the
very values the function computes; the origins are checked against cases whose origin is known
by construction (``log(0)``, ``0 / 0``, ``exp(-200)`` in float32, ...).
"""

import inspect as pyinspect

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import stabkit
from stabkit.inspection import array_stats


def _line(marker: str) -> int:
    """Line number in this file of the first line containing ``marker``."""
    src = pyinspect.getsource(pyinspect.getmodule(_line)).splitlines()
    return next(i for i, s in enumerate(src, 1) if marker in s and "_line(" not in s)


def _kinds(report):
    return [(o.kind, o.primitive) for o in report.origins]


# -- origins of single equations ------------------------------------------------------------------


def test_log_of_zero_is_the_one_inf_origin_not_what_it_feeds():
    def f(x):
        y = jnp.log(x)  # MARK-log
        return y * 2 + 1

    r = stabkit.inspect(f, jnp.array([1.0, 2.0, 0.0, 3.0]))
    assert _kinds(r) == [("inf", "log")]
    o = r.origins[0]
    assert o.index == (2,) and o.direction == "forward" and o.iteration is None
    assert o.reaches_output and o.dtype == "float32" and o.shape == (4,)
    assert o.source.endswith(f"test_inspect.py:{_line('MARK-log')}")
    assert "jnp.log(x)" in o.line
    np.testing.assert_array_equal(r.outputs, f(jnp.array([1.0, 2.0, 0.0, 3.0])))


_CASES = {  # one function per case, all inspected in one program: (output, expected origins)
    "inf div": (lambda x: x / (x - x), [("inf", "div")]),
    "nan div": (lambda x: (x - x) / (x - x), [("nan", "div")]),
    "nan sqrt": (lambda x: jnp.sqrt(x - 2.0), [("nan", "sqrt")]),
    "inf exp": (lambda x: jnp.exp(x * 100.0), [("inf", "exp")]),
    "underflow exp": (lambda x: jnp.exp(-x * 200.0), [("underflow", "exp")]),
    "underflow mul": (lambda x: (x * 1e-30) * 1e-20, [("underflow", "mul")]),
    "nan sub": (lambda x: jnp.inf * x - jnp.inf * x, [("nan", "sub")]),
    # chosen zeros are no underflow: max, select, an exact difference
    "none": (lambda x: jax.nn.relu(-x) + (x - x) + jnp.where(x > 5, x, 0.0), []),
}


def test_origin_of_each_kind():
    names = list(_CASES)
    r = stabkit.inspect(lambda x: [_CASES[n][0](x) for n in names], jnp.array([1.0], jnp.float32))
    # each case's origins are the equations that feed its output
    for i, name in enumerate(names):
        got = [(o.kind, o.primitive) for o in r.origins if _feeds(r, o.node, i)]
        assert got == _CASES[name][1], (name, got)


def _feeds(report, node_id, i):
    """Whether node ``node_id``'s value flows, through any equations, into output number ``i``."""
    prog = report.program
    target = prog.outputs[i]
    seen, todo = set(), list(prog.nodes[node_id].outputs)
    while todo:
        v = todo.pop()
        if v == target:
            return True
        if v in seen:
            continue
        seen.add(v)
        todo.extend(prog.edges.get(v, ()))
        for m in prog.readers.get(v, ()):
            todo.extend(prog.nodes[m].outputs)
    return False


def test_a_narrowing_cast_underflows_and_overflows():
    def f(x):
        return x.astype(jnp.float16)

    r = stabkit.inspect(f, jnp.array([1e-9, 1.0, 1e6], jnp.float32))
    assert sorted(_kinds(r)) == [
        ("inf", "convert_element_type"),
        ("underflow", "convert_element_type"),
    ]
    by_kind = {o.kind: o for o in r.origins}
    assert by_kind["underflow"].index == (0,) and by_kind["inf"].index == (2,)


def test_inputs_that_already_hold_inf_make_no_origin():
    r = stabkit.inspect(lambda x: jnp.exp(x) * 2, jnp.array([jnp.inf, 1.0]))
    assert r.origins == ()
    ds = r.stats
    assert int(ds.inf.sel(value=ds.primitive == "input").sum()) == 1


def test_where_discards_the_nan_forward_and_the_gradient_shows_inf_then_nan():
    def f(x):
        return jnp.sum(jnp.where(x > 0, jnp.sqrt(x), 0.0))  # MARK-where

    x = jnp.array([4.0, -1.0, 0.0])
    fwd = stabkit.inspect(f, x)
    assert _kinds(fwd) == [("nan", "sqrt")]
    assert not fwd.origins[0].reaches_output and fwd.origins[0].index == (1,)

    g = stabkit.inspect(jax.grad(f), x)
    kinds = {(o.kind, o.primitive, o.direction): o for o in g.origins}
    # sqrt's derivative 0.5 / sqrt(x) is inf at 0 (computed for the gradient only), and the
    # cotangent 0 that where sends to the discarded branch times inf is NaN
    inf_o = kinds[("inf", "div", "backward")]
    nan_o = kinds[("nan", "mul", "backward")]
    assert inf_o.index == (2,) and nan_o.index in ((1,), (2,))
    assert nan_o.reaches_output
    assert all(o.source.endswith(f":{_line('MARK-where')}") for o in g.origins)
    assert np.isnan(np.asarray(g.outputs)).any()


def test_direction_marks_what_only_the_gradient_needs():
    def f(x):
        return jnp.sum(jnp.tanh(x))

    r = stabkit.inspect(jax.value_and_grad(f), jnp.ones(3))
    ds = r.stats
    rows = {(str(p), str(d)) for p, d in zip(ds.primitive.values, ds.direction.values, strict=True)}
    assert ("tanh", "forward") in rows and ("reduce_sum", "forward") in rows
    # 1 - tanh(x)**2 is computed in the forward pass but read only by the backward pass
    assert ("sub", "backward") in rows or ("mul", "backward") in rows
    assert ("tanh", "backward") not in rows


def test_scope_and_source_from_named_scope():
    def f(x):
        with jax.named_scope("block"):
            with jax.named_scope("inner"):
                return jnp.log(x - 1.0)

    (o,) = stabkit.inspect(f, jnp.ones(2)).origins
    assert o.scope == "block/inner"


# -- loops and branches ---------------------------------------------------------------------------


def test_scan_iteration_and_per_iteration_statistics():
    def f(x):
        def body(c, _):
            c = c * 10.0  # MARK-scan
            return c, jnp.max(c)

        return jax.lax.scan(body, x, None, length=50)

    r = stabkit.inspect(f, jnp.array([1.0, 1e3], jnp.float32))
    (o,) = r.origins
    # 1e3 * 10**k > 3.4e38 first at k = 36: the 36th multiplication, iteration 35
    assert (o.kind, o.primitive, o.iteration, o.index) == ("inf", "mul", (35,), (1,))
    # judged entry by entry: entry 0 (from 1.0) overflows at iteration 38; an inf multiplied again
    # is no new origin
    assert o.iterations == 2
    per = r.iterations(o.node)
    assert per.sizes["iteration"] == 50
    inf = per.inf.values[:, 0]
    assert list(inf[:35]) == [0] * 35 and inf[35] == 1 and inf[40] == 2
    # the statistics of iteration 10 are those of [1e11, 1e14] in float32
    ref = np.array([1.0, 1e3], np.float32)
    for _ in range(11):
        ref = ref * np.float32(10)
    np.testing.assert_allclose(per.max_abs.values[10, 0], ref.max(), rtol=0)
    np.testing.assert_allclose(
        per.rms.values[10, 0], np.sqrt(np.mean(ref.astype(np.float64) ** 2)), rtol=1e-6
    )


def test_reverse_and_nested_scans_report_positions():
    def f(x):
        def inner(c, t):
            return c, jnp.log(c - t)  # log(0) once c == t

        def outer(c, s):
            _, ys = jax.lax.scan(inner, c + s, jnp.arange(4.0))
            return c, ys

        return jax.lax.scan(outer, x, jnp.array([0.0, -1.0, -2.0]), reverse=True)

    r = stabkit.inspect(f, jnp.array(3.0))
    o, nan = r.origins
    # 3 + s == t at (s=0, t=3), (s=-1, t=2), (s=-2, t=1); the reverse scan runs s=-2 first, and
    # log of a negative (NaN) first at (s=-2, t=2)
    assert o.kind == "inf" and o.iteration == (2, 1) and o.iterations == 3
    assert nan.kind == "nan" and nan.iteration == (2, 2) and nan.iterations == 3
    per = r.iterations(o.node)
    assert per.sizes["iteration0"] == 3 and per.sizes["iteration1"] == 4


def test_while_loop_iteration_and_bounded_memory():
    def f(x):
        return jax.lax.while_loop(lambda s: s[0] < 1000, lambda s: (s[0] + 1, s[1] * 0.5), (0, x))

    r = stabkit.inspect(f, jnp.array([1.0], jnp.float32))
    (o,) = r.origins
    # 0.5**k is normal up to k = 126, subnormal to 149, then flushed or 0: the first
    # zero-or-subnormal from a normal input is the 127th halving
    assert o.kind == "underflow" and o.iteration == (126,)
    with pytest.raises(ValueError, match="no per-iteration"):
        r.iterations(o.node)


def test_long_scan_keeps_statistics_not_activations():
    def f(x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c), None), x, None, length=2000)[0]

    r = stabkit.inspect(f, jnp.ones((64, 64)))
    records = jax.tree.leaves(r._arrays[2:])
    # above MAX_ITERATIONS the loop keeps its combined record only: a few numbers per equation
    assert sum(a.size for a in records) < 1000
    ds = r.stats
    tanh = ds.sel(value=ds.primitive == "tanh")
    assert int(tanh["size"].sum()) == 2000 * 64 * 64


def test_cond_records_only_the_branch_taken():
    def f(x):
        return jax.lax.cond(x[0] > 0, lambda a: jnp.log(a), lambda a: jnp.log(-a), x)

    pos = stabkit.inspect(f, jnp.array([1.0, 0.0]))
    assert [(o.kind, o.primitive) for o in pos.origins] == [("inf", "log")]
    ds = pos.stats
    logs = ds.sel(value=ds.primitive == "log")
    assert sorted(int(s) for s in logs["size"].values) == [0, 2]


def test_vmap_of_cond_reports_no_false_positive():
    # jax #9159: under vmap cond becomes select and jax_debug_nans fires on the branch not taken
    def f(x):
        return jax.lax.cond(x > 0, jnp.log, lambda a: a, x)

    r = stabkit.inspect(jax.vmap(f), jnp.array([1.0, -1.0]))
    (o,) = r.origins
    assert o.kind == "nan" and not o.reaches_output


def test_custom_jvp_custom_vjp_remat_and_jit_are_entered():
    @jax.custom_vjp
    def clip_grad(x):
        return jnp.log(x)

    clip_grad.defvjp(lambda x: (jnp.log(x), x), lambda x, g: (g / x,))

    def f(x):
        a = jax.checkpoint(lambda q: jnp.exp(q * 1000.0))(x)
        b = jax.jit(lambda q: q / 0.0)(x)
        return jnp.sum(jax.nn.softplus(x) + a + b + clip_grad(x - 1.0))

    r = stabkit.inspect(f, jnp.array([1.0]))
    # and inf + -inf = NaN in the sum
    assert sorted(_kinds(r)) == [("inf", "div"), ("inf", "exp"), ("inf", "log"), ("nan", "add")]
    g = stabkit.inspect(jax.grad(f), jnp.array([1.0]))
    assert ("inf", "div") in [(o.kind, o.primitive) for o in g.origins if o.direction == "backward"]


# -- transformations ------------------------------------------------------------------------------


def _bad(x):
    return jnp.log(x) + jnp.sqrt(x - 2.0)


def test_jitted_and_vmapped_functions():
    x = jnp.array([0.0, 3.0, 1.0])
    plain = [(o.kind, o.primitive, o.index) for o in stabkit.inspect(_bad, x).origins]
    jitted = [(o.kind, o.primitive, o.index) for o in stabkit.inspect(jax.jit(_bad), x).origins]
    assert plain == jitted == [("inf", "log", (0,)), ("nan", "sqrt", (0,))]
    vm = stabkit.inspect(jax.vmap(_bad), jnp.stack([x, x + 5]))
    assert [(o.kind, o.index) for o in vm.origins] == [("inf", (0, 0)), ("nan", (0, 0))]


def test_inspect_under_vmap_gives_per_example_reports():
    xs = jnp.array([[1.0, 3.0], [0.0, 3.0], [3.0, 1.5]])
    rb = jax.vmap(lambda a: stabkit.inspect(_bad, a))(xs)
    assert rb.batch_shape == (3,) and len(rb) == 3
    assert _kinds(rb[0]) == [("nan", "sqrt")]
    assert _kinds(rb[1]) == [("inf", "log"), ("nan", "sqrt")]
    assert rb[1].origins[0].index == (0,) and rb[2].origins[0].index == (1,)
    assert {(o.kind, o.example) for o in rb.origins} == {("nan", 0), ("inf", 1)}
    for i in range(3):
        np.testing.assert_array_equal(rb[i].outputs, _bad(xs[i]))
    with pytest.raises(TypeError, match="batched"):
        rb.stats  # noqa: B018


# -- statistics against references ----------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    ["float16", "bfloat16", "float32", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz"],
)
def test_census_and_magnitudes_match_numpy(dtype):
    rng = np.random.default_rng(0)
    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    info = ml_dtypes.finfo(dt)
    vals = np.concatenate(
        [
            rng.standard_normal(50),
            [0.0, -0.0, float(info.max), -float(info.max), float(info.smallest_subnormal)],
            [float(info.smallest_normal) * 0.5, np.inf, np.nan],
        ]
    ).astype(dt)
    x = jnp.asarray(vals)
    r = stabkit.inspect(lambda a: a * 1, x)
    ds = r.stats
    row = ds.isel(value=int(np.flatnonzero(ds.primitive.values == "mul")[0]))
    c = stabkit.census(x)
    for name in ("normal", "subnormal", "zero", "inf", "nan"):
        assert int(row[name]) == int(getattr(c, name)), name
    a = np.abs(vals.astype(np.float64))
    finite = np.isfinite(a)
    assert float(row.max_abs) == a[finite].max()
    assert float(row.min_abs) == a[finite & (a > 0)].min()
    np.testing.assert_allclose(float(row.rms), np.sqrt(np.mean(a[finite] ** 2)), rtol=2e-7)


def test_rms_does_not_overflow_or_underflow():
    big = jnp.full(8, 3e38, jnp.float32)
    tiny = jnp.full(8, 1e-40, jnp.float32)  # subnormal
    r = stabkit.inspect(lambda a, b: (a * 1, b * 1), big, tiny)
    ds = r.stats
    rows = ds.sel(value=ds.primitive == "mul")
    np.testing.assert_allclose(rows.rms.values[0], np.float32(3e38), rtol=1e-7)
    assert 0 < rows.rms.values[1] < 1.2e-40 or rows.rms.values[1] == 0  # flushed on some backends
    assert rows.headroom_max.values[0] == pytest.approx(
        np.log2(float(np.finfo(np.float32).max) / float(np.float32(3e38)))
    )


def test_float64_under_x64():
    with jax.enable_x64(True):
        x = jnp.array([1e-300, 1e300], jnp.float64)
        r = stabkit.inspect(lambda a: (a * a, a * 1), x)
        assert sorted(_kinds(r)) == [("inf", "mul"), ("underflow", "mul")]
        ds = r.stats
        row = ds.isel(value=int(np.flatnonzero(ds.primitive.values == "mul")[1]))
        assert float(row.max_abs) == 1e300 and float(row.min_abs) == 1e-300


def test_scope_stats_and_text():
    def f(x):
        with jax.named_scope("enc"):
            h = jnp.tanh(x * 3.0)
        with jax.named_scope("dec"):
            return jnp.log(h - h)

    r = stabkit.inspect(jax.value_and_grad(lambda x: jnp.sum(f(x))), jnp.ones(4))
    sc = r.scope_stats()
    pairs = set(zip(sc.scope.values.tolist(), sc.direction.values.tolist(), strict=True))
    assert {("enc", "forward"), ("dec", "forward")} <= pairs
    text = r.summary()
    assert "jnp.log(h - h)" in text and "closest to overflow" in text
    assert "log" in r.table()
    assert "origins" in repr(r)


def test_plot_writes_a_new_file_and_never_overwrites(tmp_path):
    r = stabkit.inspect(_bad, jnp.array([0.0, 3.0]))
    path = tmp_path / "inspect.png"
    r.plot(path)
    assert path.stat().st_size > 10_000
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        r.plot(path)
    assert path.read_bytes() == before


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="fn must be callable"):
        stabkit.inspect(3.0, jnp.ones(2))
    with pytest.raises(TypeError, match=r"args\[1\]\['w'\].*str"):
        stabkit.inspect(lambda a, p: a, jnp.ones(2), {"w": "weights"})
    with pytest.raises(TypeError, match=r"kwargs\['act'\]"):
        stabkit.inspect(lambda a, act: act(a), jnp.ones(2), act=jnp.tanh)
    with pytest.raises(ValueError, match="no floating-point"):
        stabkit.inspect(lambda a: (a > 0, jnp.arange(3)), jnp.ones(2))


def test_kwargs_and_python_numbers_are_arguments():
    r = stabkit.inspect(lambda x, *, scale: jnp.exp(x * scale), jnp.ones(2), scale=100.0)
    assert _kinds(r) == [("inf", "exp")]
    assert set(r.stats.scope.values[:2].tolist()) == {"args[0]", "kwargs['scale']"}


def test_array_stats_combine_is_the_stats_of_the_concatenation():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal(100).astype(np.float32) * 1e20)
    b = jnp.asarray(rng.standard_normal(50).astype(np.float32) * 1e-20)
    stats, combine = jax.jit(array_stats.stats), jax.jit(array_stats.combine)
    both = stats(jnp.concatenate([a, b]))
    comb = combine(stats(a), stats(b))
    for f in ("counts", "maxabs", "minabs", "exponent"):
        np.testing.assert_array_equal(getattr(both, f), getattr(comb, f))
    np.testing.assert_allclose(both.meansq, comb.meansq, rtol=1e-6)
    empty = combine(array_stats.empty(), stats(b))
    np.testing.assert_allclose(empty.meansq, stats(b).meansq, rtol=1e-7)


# -- the trace cache ------------------------------------------------------------------------------

SCALE = jnp.array(1.0)


def _scaled_log(x):
    _scaled_log.traces += 1
    return jnp.log(x * SCALE)


_scaled_log.traces = 0


def test_a_function_is_traced_again_only_when_what_it_reaches_changed():
    global SCALE
    x = jnp.array([1.0, 2.0])
    before = _scaled_log.traces
    assert stabkit.inspect(_scaled_log, x).origins == ()
    assert stabkit.inspect(_scaled_log, x).origins == ()
    assert _scaled_log.traces == before + 1  # the second call reused the trace
    old = SCALE
    try:
        SCALE = jnp.array(0.0)  # a new global array: the traced constant is stale
        r = stabkit.inspect(_scaled_log, x)
        assert _scaled_log.traces == before + 2
        assert [(o.kind, o.primitive) for o in r.origins] == [("inf", "log")]
    finally:
        SCALE = old


def test_a_numpy_array_in_a_closure_is_traced_every_time():
    w = np.ones(2, np.float32)
    calls = []

    def f(x):
        calls.append(1)
        return jnp.log(x * w)

    x = jnp.array([1.0, 2.0])
    assert stabkit.inspect(f, x).origins == ()
    w[0] = 0.0  # changed in place: only a new trace sees it
    assert [o.index for o in stabkit.inspect(f, x).origins] == [(0,)]
    assert len(calls) == 2
