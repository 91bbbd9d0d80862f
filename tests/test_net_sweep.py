"""The network sweep (NetSweepSpec through stabkit.sweep): every config is trace_net of net_init
with its seed; chunking does not change a bit; bad specs are refused before compiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stabkit as sk

SPEC = sk.NetSweepSpec(
    depth=[2, 5],
    width=8,
    block="residual",
    norm=["none", "layer"],
    activation="tanh",
    scale=[0.5, 1.5],
    alpha=[1.0, 0.25],
    seed=[0, 3],
    batch=4,
)


@pytest.fixture(scope="module")
def ds():
    with sk.count_traces() as counts:
        out = sk.sweep(SPEC, progress=False)
    out.attrs["compiles"] = counts
    return out


def test_each_config_is_trace_net_of_its_network(ds):
    c = dict(norm="layer", depth=5, scale=1.5, alpha=0.25, seed=3)
    row = ds.sel(**c).squeeze()
    blk = sk.block("residual", activation="tanh", norm="layer")
    p = sk.net_init(jax.random.key(3), blk, depth=5, width=8, scale=1.5, alpha=0.25, embed=False)
    t = sk.trace(p, sk.net_sweep_input(3, 4, (), 8, "float32"))
    np.testing.assert_allclose(row.rms.values[:7], np.asarray(t.rms), rtol=1e-6)
    np.testing.assert_allclose(row.grad_rms.values[:7], np.asarray(t.grad_rms), rtol=1e-6)
    np.testing.assert_allclose(
        row.normalized_rms.values[1:6], np.asarray(t.taps["normalized_rms"][1:6]), rtol=1e-6
    )
    assert float(row.loss) == pytest.approx(float(t.loss), rel=1e-6)
    # A shallower config's layers beyond its readout are NaN.
    shallow = ds.sel(norm="none", depth=2, scale=0.5, alpha=1.0, seed=0).squeeze()
    assert np.isnan(shallow.rms.values[4:]).all() and np.isfinite(shallow.rms.values[:4]).all()
    assert np.isnan(shallow.normalized_rms.values).all()  # no norm, no tap


def test_chunk_size_changes_no_bit(ds):
    spec = sk.NetSweepSpec(**{**SPEC.to_dict(), "norm": "none"})
    small = sk.sweep(spec, chunk_size=2, progress=False)
    for k in ("rms", "grad_rms", "param_grad_rms", "loss", "first_nonfinite_forward"):
        np.testing.assert_array_equal(small[k].values, ds[k].sel(norm=["none"]).values, err_msg=k)


def test_alpha_scaling_and_one_kernel_per_variant(ds):
    # The same kernel as the fixture's norm="layer" configs (only data differ): no compilation;
    # and the reference network is the previous test's (one compilation of net_init and trace).
    spec = sk.NetSweepSpec(
        **{
            **SPEC.to_dict(),
            "norm": "layer",
            "alpha": [0.5, 1.0],
            "alpha_scaling": "inv_sqrt_depth",
        }
    )
    with sk.count_traces() as counts:
        a = sk.sweep(spec, progress=False)
    assert counts.compiles() == 0, counts
    # 0.5 / sqrt(depth): alpha 0.25 at depth 4 is not on the fixture's grid, 0.5/sqrt(2) neither,
    # so compare with net_init at the scaled value.
    row = a.sel(depth=5, scale=0.5, alpha=0.5, seed=0).squeeze()
    blk = sk.block("residual", activation="tanh", norm="layer")
    p = sk.net_init(
        jax.random.key(0), blk, depth=5, width=8, scale=0.5, alpha=0.5 / 5**0.5, embed=False
    )
    t = sk.trace(p, sk.net_sweep_input(0, 4, (), 8, "float32"))
    np.testing.assert_allclose(row.rms.values, np.asarray(t.rms), rtol=1e-6)
    assert "residual" in ds.attrs["blocks"]


def test_float16_overflow_is_reported():
    spec = sk.NetSweepSpec(
        depth=[40],
        width=4,
        block="dense",
        activation="linear",
        init="scaled_identity",
        scale=[1.5, 0.5],
        dtype="float16",
        batch=2,
    )
    ds = sk.sweep(spec, progress=False).squeeze()
    x = sk.net_sweep_input(0, 2, (), 4, "float16")
    blk = sk.block("dense", activation="linear")
    p = sk.net_init(
        jax.random.key(0),
        blk,
        depth=40,
        width=4,
        init="scaled_identity",
        scale=1.5,
        dtype=jnp.float16,
        embed=False,
    )
    # h^l = 1.5^l x: the first boundary whose max |x| 1.5^l rounds beyond 65504.
    first = int(np.argmax(float(jnp.max(jnp.abs(x))) * 1.5 ** np.arange(41) > 65519.0))
    assert ds.first_nonfinite_forward.sel(scale=1.5).item() == first
    assert int(sk.trace(p, x).first_nonfinite_forward) == first
    assert ds.first_nonfinite_forward.sel(scale=0.5).item() == -1


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="block"):
        sk.NetSweepSpec(depth=2, block="transformer")
    with pytest.raises(ValueError, match="batch norm needs batch >= 2"):
        sk.NetSweepSpec(depth=2, norm="batch", batch=1)
    with pytest.raises(ValueError, match="inner"):
        sk.NetSweepSpec(
            depth=2, norm="layer", norm_position="inner", block_options={"expansion": 4}
        )
    with pytest.raises(ValueError, match="norm"):
        sk.NetSweepSpec(depth=2, norm="group")
    with pytest.raises(ValueError, match="single values"):
        sk.NetSweepSpec(depth=2, block=sk.block("dense"), activation=["relu", "tanh"])
    with pytest.raises(ValueError, match="alpha"):
        sk.NetSweepSpec(depth=2, alpha=float("inf"))
    with pytest.raises(ValueError, match="not a hyper-parameter"):
        sk.NetSweepSpec(depth=2, hyper={"softcap": 1.0})
    with pytest.raises(ValueError, match="out="):
        sk.sweep(sk.NetSweepSpec(depth=2), out="/tmp/never-written", progress=False)


def test_profile_plots_of_a_network_sweep(ds, tmp_path):
    from stabkit.sweeps import plots

    paths = plots.plot(ds, tmp_path / "figs", kind="profile")
    assert len(paths) == 2 and all(p.stat().st_size > 10_000 for p in paths)  # one per norm
    with pytest.raises(ValueError, match="profile plots only"):
        plots.plot(ds, tmp_path / "other", kind="heatmap")
    with pytest.raises(ValueError, match="lacks"):
        plots.net_profiles(ds.drop_vars("rms"), tmp_path / "third")
