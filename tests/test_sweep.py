"""Tests for stabkit.sweep: spec validation, agreement with trace, one compilation per (dtype,
width), bit-identical results across chunk sizes / axis order / devices, save, load, kill and
resume.

Compiling the sweep kernel takes a few seconds, so the tests share a handful of sweeps: ``MAIN``
(two dtypes, computed once per module) and ``REV`` (the same float32 grid with its categorical axes
reversed and a chunk of 3, reused by the store tests, the killed subprocess and the sharded one).
"""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import stabkit as sk
from stabkit.sweeps import driver as sw
from stabkit.sweeps import kernel as kern
from stabkit.sweeps.spec import LAYER_VARS
from tests import faults

MAIN = dict(
    depth=(2, 5, 30),
    width=3,
    activation=("linear", "relu", "tanh"),
    init=("gaussian", "orthogonal", "scaled_identity", "he_uniform"),
    scale=(0.5, 1.0, 1.5, 4.0),
    bias_std=(0.0, 0.2),
    seed=(0, 7),
    batch=5,
)
F32 = dict(MAIN, dtype="float32")
# The same float32 grid, categorical axes reversed, numeric axes given in another order.
REV = dict(
    F32,
    activation=MAIN["activation"][::-1],
    init=MAIN["init"][::-1],
    scale=MAIN["scale"][::-1],
    seed=(7, 0),
)
REV_CHUNK = 3


@pytest.fixture(scope="module")
def main():
    """The MAIN sweep in float32 and float16, and how many kernels it compiled."""
    kern._kernel.cache_clear()  # compiled afresh whatever ran before in this worker
    with sk.count_traces() as c:
        ds = sk.sweep(sk.SweepSpec(**MAIN, dtype=("float32", "float16")), progress=False)
    return ds, c.traces("sweep_chunk")


@pytest.fixture(scope="module")
def rev():
    return sk.sweep(sk.SweepSpec(**REV), chunk_size=REV_CHUNK, progress=False)


def f32(ds):
    return ds.sel(dtype=["float32"])


# ------------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(depth=[]), ValueError, "depth axis is empty"),
        (dict(depth=[0]), ValueError, "depth values must be in"),
        (dict(depth=[3, 3]), ValueError, "repeats 3"),
        (dict(depth=2.5), TypeError, "depth values must be ints"),
        (dict(depth=True), TypeError, "ints"),
        (dict(depth=2, width=0), ValueError, "width"),
        (dict(depth=2, activation="swish"), ValueError, "unknown activation 'swish'"),
        (dict(depth=2, activation=["relu", "relu"]), ValueError, "repeats relu"),
        (dict(depth=2, init="kaiming"), ValueError, "unknown init 'kaiming'"),
        (dict(depth=2, init=jax.nn.initializers.zeros), TypeError, "initializer names"),
        (dict(depth=2, scale=float("nan")), ValueError, "scale values must be finite"),
        (dict(depth=2, bias_std=-1.0), ValueError, "bias_std values must be finite and >= 0"),
        (dict(depth=2, dtype="int32"), ValueError, "unsupported dtype"),
        (dict(depth=2, seed=-1), ValueError, "seed values"),
        (dict(depth=2, input="cauchy"), ValueError, "unknown input"),
        (dict(depth=2, loss="l1"), ValueError, "unknown loss"),
        (dict(depth=2, batch=2**20, width=64), ValueError, "2\\^24"),
    ],
)
def test_spec_rejects_bad_values_before_compiling(kwargs, error, match):
    with sk.count_traces() as c, pytest.raises(error, match=match):
        sk.SweepSpec(**kwargs)
    assert c.traces("sweep_chunk") == 0


def test_spec_is_frozen_canonical_and_round_trips():
    s = sk.SweepSpec(**REV)
    assert s.scale == (0.5, 1.0, 1.5, 4.0) and s.seed == (0, 7)  # numeric axes sorted
    assert s.activation == ("tanh", "relu", "linear")  # categorical order kept
    assert s.shape == (1, 1, 3, 4, 3, 4, 2, 2) and s.n_configs == 576 and s.n_layers == 32
    assert sk.SweepSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.depth = (1,)
    custom = sk.SweepSpec(depth=1, activation=[jnp.sin, "relu"])
    assert custom.coords()["activation"] == ["sin", "relu"]


# ------------------------------------------------------------------------------------ the results


def test_one_compilation_per_dtype_and_width(main):
    ds, compiled = main
    assert compiled == 2  # float32 and float16, width 3: 576 configs each
    assert dict(ds.sizes) == dict(
        dtype=2, width=1, activation=3, init=4, depth=3, scale=4, bias_std=2, seed=2, layer=32
    )


TRACE_DEPTHS = (2, 5)
TRACE_CASES = [
    (init, scale, bias, seed)
    for init in ("gaussian", "orthogonal", "he_uniform")
    for scale, bias, seed in [(0.5, 0.2, 0), (1.5, 0.0, 7), (4.0, 0.2, 7)]
]


@pytest.fixture(scope="module")
def deep_params():
    """mlp_init at the deepest checked depth for each (init, scale, bias_std, seed) case.

    Called with Python floats, mlp_init compiles once per (init, scale, bias_std, depth), about
    2 s each; here the 9 cases are one compilation (scale, bias_std and seed as data under one
    jit, as the sweep has them), checked bit for bit against a plain call. A shallower net is a
    prefix of a deeper one (tests/test_nets.py), and trace's depth argument masks the deeper
    layers (tests/test_trace.py), so depth 2 uses the same parameters and trace compilation.
    """
    inits = sorted({case[0] for case in TRACE_CASES})
    cases = sorted({case[1:] for case in TRACE_CASES})
    scale, bias, seed = (jnp.array(v) for v in zip(*cases, strict=True))
    net = dict(depth=max(TRACE_DEPTHS), width=3)

    def one(init, scale, bias, seed):
        return sk.mlp_init(jax.random.key(seed), init=init, scale=scale, bias_std=bias, **net)

    @jax.jit
    def draw(scale, bias, seed):
        return {init: jax.vmap(functools.partial(one, init))(scale, bias, seed) for init in inits}

    drawn = draw(scale, bias, seed)
    out = {
        (init, *case): jax.tree.map(lambda a, i=i: a[i], drawn[init])
        for init in inits
        for i, case in enumerate(cases)
    }
    for a, b in zip(one(*TRACE_CASES[0]), out[TRACE_CASES[0]], strict=True):  # Python floats
        np.testing.assert_array_equal(a, b)
    return out


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("depth", TRACE_DEPTHS)
def test_matches_trace_of_mlp_init(main, deep_params, act, depth):
    """Each config is trace(mlp_init(key(seed), ...), sweep_input(seed, ...)) to rounding."""
    ds = main[0].sel(dtype="float32", width=3, activation=act, depth=depth)
    for init, scale, bias, seed in TRACE_CASES:
        p = deep_params[init, scale, bias, seed]  # mlp_init(key(seed), depth=5, ...)
        t = sk.trace(p, kern.sweep_input(seed, 5, 3, "float32"), activation=act, depth=depth)
        c = ds.sel(init=init, scale=scale, bias_std=bias, seed=seed)
        # The forward pass agrees to rounding; the backward pass's sums cancel (a gradient is
        # a difference of products), so rounding differences grow relative to the result.
        for name, rtol in [
            ("pre_rms", 2e-6),
            ("post_rms", 2e-6),
            ("grad_post_rms", 1e-4),
            ("grad_pre_rms", 1e-4),
            ("grad_w_rms", 1e-4),
        ]:
            want = np.asarray(getattr(t, name))[: depth + 2]
            np.testing.assert_allclose(c[name].values[: depth + 2], want, rtol=rtol)
        for name in ("dphi_rms", "saturated", "dead"):
            want = np.asarray(getattr(t, name))[: depth + 2]
            np.testing.assert_allclose(c[name].values[: depth + 2], want, rtol=1e-6)
        for name in ("inf", "nan", "zero", "subnormal"):
            np.testing.assert_array_equal(
                c[f"post_{name}"].values[: depth + 2], getattr(t.post_census, name)[: depth + 2]
            )
            np.testing.assert_array_equal(
                c[f"grad_{name}"].values[: depth + 2], getattr(t.grad_census, name)[: depth + 2]
            )
        np.testing.assert_allclose(float(c.loss), float(t.loss), rtol=2e-6)
        for name in ("first_inf_forward", "first_zero_backward", "first_nonfinite_backward"):
            assert int(c[name]) == int(getattr(t, name))


def test_layers_beyond_depth_are_missing(main):
    ds = main[0]
    for d in MAIN["depth"]:
        sub = ds.sel(depth=d)
        for name in LAYER_VARS:
            assert np.isnan(sub[name].isel(layer=slice(d + 2, None))).all(), name
        assert np.isfinite(sub.post_rms.sel(dtype="float32", scale=1.0, layer=d + 1)).all()
        assert np.isfinite(sub.grad_w_rms.sel(dtype="float32", scale=1.0, layer=d + 1)).all()
    assert np.isnan(ds.grad_w_rms.isel(layer=0)).all() and np.isnan(ds.dphi_rms.isel(layer=0)).all()


def test_deep_linear_closed_form_and_float16_overflow(main):
    ds = main[0].sel(width=3, activation="linear", init="scaled_identity", bias_std=0.0)
    for d in MAIN["depth"]:
        for a in (0.5, 1.5):
            gain = ds.output_gain.sel(dtype="float32", depth=d, scale=a)
            np.testing.assert_allclose(gain, sk.deep_linear_gain(a, d + 1), rtol=1e-5)
    # float16, a = 4: h^l = 4^l x exactly (a power of 2) until the largest |x| passes 65504.
    for seed in MAIN["seed"]:
        xmax = float(np.abs(np.asarray(kern.sweep_input(seed, 5, 3, "float16"), np.float64)).max())
        expect = next(layer for layer in range(1, 40) if xmax * 4.0**layer > 65504)
        got = ds.first_inf_forward.sel(dtype="float16", depth=30, scale=4.0, seed=seed)
        assert int(got) == expect
        assert int(ds.first_inf_forward.sel(dtype="float16", depth=2, scale=4.0, seed=seed)) == -1


def test_attributes(main):
    ds = main[0]
    assert sk.SweepSpec.from_dataset(ds) == sk.SweepSpec(**MAIN, dtype=("float32", "float16"))
    assert sk.SweepSpec.from_dataset(ds.sel(depth=2)) == sk.SweepSpec.from_dataset(ds)
    assert json.loads(ds.attrs["versions"])["jax"] == jax.__version__
    probe = json.loads(ds.attrs["probe"])
    assert probe["dtypes"]["float16"]["overflow"] == "inf"
    assert ds.output_rms.dtype == np.float32 and ds.first_inf_forward.dtype == np.int32


def test_identical_across_chunk_size_and_axis_order(main, rev):
    """REV: other chunk size, reversed categorical axes, numeric axes given in another order."""
    xr.testing.assert_identical(rev.drop_attrs(), f32(main[0]).drop_attrs().reindex_like(rev))


def test_identical_across_chunk_size_small_layers():
    """128 x 8 entries a layer: XLA:CPU's batched reduction sums such a block in an order that
    depends on how many configs share the chunk (>= 4 vs <= 3); the kernel reduces small blocks
    one config at a time so that it does not.

    A chunk of 2 (<= 3) against one of 7 (>= 4, and 8 configs do not fill two of them, so the
    padded last chunk is covered too): one sweep compilation (~8 s) a chunk size, so no third.
    """
    spec = sk.SweepSpec(
        depth=(2, 3), width=8, activation=("tanh",), scale=(0.9,), seed=(0, 1, 2, 3), batch=128
    )
    a = sk.sweep(spec, chunk_size=2, progress=False)
    b = sk.sweep(spec, chunk_size=7, progress=False)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_progress_bar(capsys):
    sk.sweep(sk.SweepSpec(**REV), chunk_size=REV_CHUNK, progress=True)
    err = capsys.readouterr().err
    # tqdm's bar: "sweep: 100%|...| 576/576 [00:01<00:00, 400.00config/s]" (elapsed<remaining)
    assert "sweep: 100%" in err and "576/576" in err and "config/s" in err and "<00:00" in err


def test_float64_stays_contained():
    ds = sk.sweep(
        sk.SweepSpec(depth=3, width=2, dtype="float64", init="scaled_identity", scale=1e10),
        progress=False,
    )
    assert not jax.config.jax_enable_x64
    assert ds.output_rms.dtype == np.float64
    # 1e10^4 * rms(x) is far above float32's max; float64 holds it.
    assert 1e39 < float(ds.output_rms.squeeze() / ds.post_rms.squeeze()[0]) < 1e41


# ----------------------------------------------------------------------------- store and resume


def test_save_load_round_trip(tmp_path, rev):
    out = tmp_path / "s.zarr"
    ds = sk.sweep(sk.SweepSpec(**REV), out=out, chunk_size=REV_CHUNK, progress=False)
    xr.testing.assert_identical(ds, rev)
    xr.testing.assert_identical(sk.load(out), rev)
    with pytest.raises(FileExistsError, match="resume=True"):
        sk.sweep(sk.SweepSpec(**REV), out=out, progress=False)
    with pytest.raises(ValueError, match="different sweep"):
        sk.sweep(sk.SweepSpec(**dict(REV, seed=1)), out=out, resume=True, progress=False)
    again = sk.sweep(sk.SweepSpec(**REV), out=out, resume=True, progress=False)  # nothing to do
    xr.testing.assert_identical(again, rev)
    with pytest.raises(FileNotFoundError):
        sk.load(tmp_path / "nothing")
    path = sk.sweep(
        sk.SweepSpec(**REV),
        out=tmp_path / "p",
        chunk_size=REV_CHUNK,
        progress=False,
        load_result=False,
    )
    assert path == tmp_path / "p"
    xr.testing.assert_identical(sk.load(path), rev)


def _python(code, *args, env=None):
    env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigkill_then_resume_is_bit_identical(tmp_path, rev):
    out = tmp_path / "killed.zarr"
    proc = faults.start("killed_in_fifth_write", out, spec=REV, chunk=REV_CHUNK, flush=100_000)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    records = sorted(int(p.stem) for p in (out / "stabkit-chunks").glob("*.json"))
    assert records == [0, 1, 2, 3]  # the 5th chunk's record was never written
    assert json.loads((out / "stabkit-writer.lock").read_text())["pid"] > 0  # left by the dead
    with pytest.raises(ValueError, match=r"incomplete \(176 of 576 configs"):
        sk.load(out)
    resumed = sk.sweep(sk.SweepSpec(**REV), out=out, resume=True, progress=False)
    xr.testing.assert_identical(resumed, rev)
    assert not (out / "stabkit-writer.lock").exists()


def test_four_devices_match_one(tmp_path, rev):
    """The config axis sharded over 4 forced host devices: bit-identical to one device.

    A chunk of 5 (not a multiple of 4: rounded up to 8, two configs a device) against REV's
    chunk of 3 on one device, so the per-device shapes differ too. Every statistic scales by
    an exact power of two, never divides by a broadcast value, whose rounding XLA changes when
    it partitions a program for several devices (it rewrites ``v / b`` as ``v * (1 / b)``).
    """
    out = tmp_path / "four.zarr"
    code = f"""
    import sys, jax
    import stabkit as sk
    assert len(jax.devices()) == 4, jax.devices()
    sk.sweep(sk.SweepSpec(**{REV}), out=sys.argv[1], chunk_size=5, progress=False)
    """
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    proc = _python(code, out, env={"XLA_FLAGS": flags})
    assert proc.returncode == 0, proc.stderr
    four = sk.load(out)
    assert len(json.loads(four.attrs["devices"])) == 4
    for name in four.data_vars:  # bit for bit (0.0 vs -0.0 would count), NaN where NaN
        a, b = four[name].values, rev[name].values
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
        bits = f"u{a.itemsize}"
        assert np.array_equal(a.view(bits)[a == a], b.view(bits)[b == b]), name
    xr.testing.assert_identical(four.drop_attrs(), rev.drop_attrs())


def test_memory_budget_sets_the_chunk():
    spec = sk.SweepSpec(depth=64, width=64, batch=128)
    per = spec.config_bytes("float32", 64)
    assert sw._plan_chunk(spec, "float32", 64, 1000, 1, None, 10 * per) == 10
    assert sw._plan_chunk(spec, "float32", 64, 1000, 4, None, 10 * per) == 8
    assert sw._plan_chunk(spec, "float32", 64, 1000, 4, 1, 10 * per) == 8  # two a device
    with pytest.raises(ValueError, match="memory_budget"):
        sw._plan_chunk(spec, "float32", 64, 1000, 1, None, per)


# ------------------------------------------------------------------------------------ CLI, plots


def test_cli_sweep_and_plot(tmp_path, rev, capsys):
    from stabkit import cli

    out = tmp_path / "cli.zarr"
    argv = [
        "sweep", "--depth", "2,5,30", "--width", "3", "--activation", "tanh,relu,linear",
        "--init", "he_uniform,scaled_identity,orthogonal,gaussian", "--scale", "0.5,1,1.5,4",
        "--bias-std", "0,0.2", "--seed", "0,7", "--batch", "5", "--chunk-size", "3",
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    xr.testing.assert_identical(sk.load(out), rev)
    for kind in ("heatmap", "profile"):
        argv = ["plot", str(out), "--kind", kind, "--out", str(tmp_path / kind)]
        assert cli.main([*argv, "--max-figures", "2"]) == 0
        pngs = sorted((tmp_path / kind).glob("*.png"))
        assert len(pngs) == 2  # of 8: (float32, width 3) x 4 inits x 2 bias values
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert str(tmp_path / "heatmap") in capsys.readouterr().out


def test_cli_parses_ranges():
    from stabkit import cli

    assert cli._ints("1:4") == [1, 2, 3, 4] and cli._ints("4:16:4") == [4, 8, 12, 16]
    assert cli._floats("0.5:2.0:4") == [0.5, 1.0, 1.5, 2.0] and cli._floats("1,2") == [1.0, 2.0]
    assert cli._bytes("512M") == 2**29 and cli._bytes("2G") == 2**31
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sweep", "--depth", "1:x"])
    args = cli.build_parser().parse_args(["sweep", "--depth", "1:64", "--scale", "0.5:2.0:16"])
    assert len(args.depth) == 64 and len(args.scale) == 16 and args.scale[-1] == 2.0


def test_devices_argument(rev):
    """devices= picks the devices (here the first one alone): the same bits, named in the attrs."""
    one = sk.sweep(
        sk.SweepSpec(**REV), chunk_size=REV_CHUNK, progress=False, devices=jax.devices()[:1]
    )
    xr.testing.assert_identical(one.drop_attrs(), rev.drop_attrs())
    assert json.loads(one.attrs["devices"]) == [str(jax.devices()[0])]
    spec = sk.SweepSpec(depth=2, width=2, batch=2)
    for bad, error, match in [
        ([], ValueError, "devices is empty"),
        ("cpu", TypeError, "sequence of jax devices"),
        ([0], TypeError, "must be jax devices"),
        (jax.devices()[:1] * 2, ValueError, "distinct"),
    ]:
        with sk.count_traces() as c, pytest.raises(error, match=match):
            sk.sweep(spec, progress=False, devices=bad)
        assert c.traces("sweep_chunk") == 0
