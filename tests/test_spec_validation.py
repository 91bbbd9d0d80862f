"""SweepSpec validation (issue 11): NumPy scalars and arrays accepted, the rest refused by name.

Nothing here compiles: a spec validates itself when built (activation callables are traced by
``jax.eval_shape``, never compiled), and the tests check that the sweep kernel was not traced.
"""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import stabkit as sk
from stabkit.sweeps import spec as spec_mod

TINY = dict(depth=2, width=2, batch=2)


@pytest.fixture(autouse=True)
def no_kernel_traced():
    with sk.count_traces() as c:
        yield
    assert c.traces("sweep_chunk") == 0


# ------------------------------------------------------------------------ NumPy values accepted


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        (dict(depth=np.int64(4)), "depth", (4,)),
        (dict(depth=np.int32(4)), "depth", (4,)),
        (dict(depth=np.uint8(4)), "depth", (4,)),
        (dict(depth=np.array(4)), "depth", (4,)),
        (dict(depth=np.array([8, 4])), "depth", (4, 8)),
        (dict(depth=range(3, 0, -1)), "depth", (1, 2, 3)),
        (dict(depth=jnp.array([2, 3])), "depth", (2, 3)),
        (dict(depth=2, scale=np.float32(1.0)), "scale", (1.0,)),
        (dict(depth=2, scale=np.float16(0.5)), "scale", (0.5,)),
        (dict(depth=2, scale=ml_dtypes.bfloat16(1.5)), "scale", (1.5,)),
        (dict(depth=2, scale=np.array(2.0)), "scale", (2.0,)),
        (dict(depth=2, scale=np.linspace(0.5, 1.0, 3)), "scale", (0.5, 0.75, 1.0)),
        (dict(depth=2, scale=np.int64(2)), "scale", (2.0,)),
        (dict(depth=2, bias_std=np.float32(0.25)), "bias_std", (0.25,)),
        (dict(depth=2, seed=np.arange(3)), "seed", (0, 1, 2)),
        (dict(depth=2, width=np.int16(8)), "width", (8,)),
        (dict(depth=2, batch=np.int64(4)), "batch", 4),
        (dict(depth=2, saturation_threshold=np.float32(0.5)), "saturation_threshold", 0.5),
        (dict(depth=2, dtype=np.dtype("float16")), "dtype", ("float16",)),
        (dict(depth=2, dtype=jnp.bfloat16), "dtype", ("bfloat16",)),
        (dict(depth=2, dtype=np.array(["float32", "float16"])), "dtype", ("float32", "float16")),
        (dict(depth=2, activation=np.str_("tanh")), "activation", ("tanh",)),
        (dict(depth=2, init=np.array(["he_normal"])), "init", ("he_normal",)),
    ],
)
def test_numpy_scalars_and_arrays_are_accepted(kwargs, field, expected):
    s = sk.SweepSpec(**kwargs)
    value = getattr(s, field)
    assert value == expected
    # stored as plain Python values: the spec's JSON round-trips
    leaves = value if isinstance(value, tuple) else (value,)
    assert all(type(v) in (int, float, str) for v in leaves)
    assert sk.SweepSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@given(
    st.sampled_from([int, np.int64, np.int32, np.array]),
    st.sampled_from([float, np.float64, np.float32, np.float16, np.array]),
    st.sampled_from([list, tuple, np.array]),
)
def test_numpy_spellings_give_the_same_spec(as_int, as_float, as_seq):
    # 0.5, 1.5 and 2.0 are exact in every float type: the specs must be equal
    plain = sk.SweepSpec(depth=[3, 5], scale=[0.5, 1.5, 2.0], bias_std=0.5, seed=[1, 2], batch=4)
    other = sk.SweepSpec(
        depth=as_seq([as_int(3), as_int(5)]) if as_seq is not np.array else np.array([3, 5]),
        scale=as_seq([as_float(v) for v in (0.5, 1.5, 2.0)]),
        bias_std=as_float(0.5),
        seed=as_seq([as_int(1), as_int(2)]),
        batch=as_int(4),
    )
    assert other == plain and json.dumps(other.to_dict()) == json.dumps(plain.to_dict())


# ------------------------------------------------------------------------------- refused by name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # containers: ordered sequences only
        (dict(depth={4: 1}), TypeError, "depth .*unordered dict"),
        (dict(depth={4}), TypeError, "depth .*unordered set"),
        (dict(depth=frozenset([4])), TypeError, "depth .*unordered frozenset"),
        (dict(depth=iter([4])), TypeError, "depth must be a value or a sequence"),
        (dict(depth=[[1, 2]]), TypeError, "depth values must be ints, got list"),
        (dict(depth=np.ones((2, 2), int)), ValueError, r"depth .*1-d.*\(2, 2\)"),
        # strings, bools, floats where ints are expected
        (dict(depth="4"), TypeError, "depth values must be ints, got str '4'"),
        (dict(depth=np.bool_(True)), TypeError, "depth values must be ints, got bool"),
        (dict(depth=np.float64(4.0)), TypeError, "depth values must be ints, got float64"),
        (dict(depth=2, width=[4, "8"]), TypeError, "width values must be ints, got str"),
        (dict(depth=2, seed=[0, 1.5]), TypeError, "seed values must be ints"),
        (dict(depth=2, batch=[4]), TypeError, "batch must be an int, got list"),
        (dict(depth=2, batch=4.0), TypeError, "batch values must be ints"),
        (dict(depth=2, batch=True), TypeError, "batch values must be ints, got bool"),
        # numbers where real numbers are expected
        (dict(depth=2, scale="1.0"), TypeError, "scale values must be real numbers, got str"),
        (dict(depth=2, scale=True), TypeError, "scale values must be real numbers, got bool"),
        (dict(depth=2, scale=1 + 0j), TypeError, "scale values must be real numbers, got complex"),
        (dict(depth=2, scale=None), TypeError, "scale values must be real numbers, got NoneType"),
        (dict(depth=2, bias_std=[0.0, None]), TypeError, "bias_std values must be real numbers"),
        # NaN and inf say so
        (dict(depth=2, scale=float("nan")), ValueError, "scale values must be finite, got NaN"),
        (
            dict(depth=2, scale=np.float32("nan")),
            ValueError,
            "scale values must be finite, got NaN",
        ),
        (dict(depth=2, scale=[1.0, np.inf]), ValueError, "scale values must be finite, got inf"),
        (dict(depth=2, bias_std=-np.inf), ValueError, "bias_std .*finite and >= 0, got -inf"),
        (dict(depth=2, bias_std=np.nan), ValueError, "bias_std .*got NaN"),
        (dict(depth=2, scale=10**400), ValueError, "scale values must be finite, got inf"),
        # duplicates: the dataset's coordinates must be unique
        (dict(depth=[3, np.int64(3)]), ValueError, "depth axis repeats 3"),
        (dict(depth=2, scale=[0.5, np.float32(0.5)]), ValueError, "scale axis repeats 0.5"),
        (
            dict(depth=2, scale=[0.0, -0.0]),
            ValueError,
            "scale axis repeats 0.0",
        ),  # equal coordinates
        (dict(depth=2, dtype=["float32", np.dtype("float32")]), ValueError, "repeats float32"),
        (dict(depth=2, seed=np.array([1, 1])), ValueError, "seed axis repeats 1"),
        # ranges
        (dict(depth=4097), ValueError, r"depth values must be in \[1, 4096\], got 4097"),
        (dict(depth=2, width=8193), ValueError, "width values must be in"),
        (dict(depth=2, seed=2**31), ValueError, r"seed values must be in \[0, 2147483647\]"),
        (dict(depth=2, batch=2**20 + 1), ValueError, "batch values must be in"),
        # the other fields
        (dict(depth=2, dtype="int32"), ValueError, "unsupported dtype 'int32'; valid: float16"),
        (dict(depth=2, dtype="float8_e4m3fn"), ValueError, "valid: float16, bfloat16, float32"),
        (dict(depth=2, dtype=5), TypeError, "dtype values must be dtype names"),
        (dict(depth=2, dtype=None), TypeError, "dtype values must be dtype names"),
        (dict(depth=2, dtype=True), TypeError, "dtype values must be dtype names"),
        (dict(depth=2, input=5), TypeError, "input must be one of normal, uniform, ones"),
        (dict(depth=2, input="cauchy"), ValueError, "unknown input 'cauchy'; valid: normal"),
        (dict(depth=2, loss=None), TypeError, "loss must be one of mse, sum"),
        (dict(depth=2, loss=["mse"]), TypeError, "loss must be one of"),
        (dict(depth=2, saturation_threshold=np.nan), ValueError, r"threshold .*\[0, 1\], got NaN"),
        (dict(depth=2, saturation_threshold=1.5), ValueError, r"threshold .*\[0, 1\], got 1.5"),
        (dict(depth=2, saturation_threshold=-0.1), ValueError, "saturation_threshold"),
        (dict(depth=2, saturation_threshold="0.1"), TypeError, "saturation_threshold"),
        (dict(depth=2, saturation_threshold=[0.1]), TypeError, "saturation_threshold"),
        (dict(depth=2, init=3), TypeError, "init values must be initializer names"),
        (dict(depth=2, activation=None), TypeError, "activation must be a name"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        sk.SweepSpec(**kwargs)


def test_axis_length_and_config_count_are_bounded():
    # the CLI's --scale 0:1:100000000 ran 84 s into a MemoryError; now refused before any value
    # is converted (a range of 10**9 costs nothing)
    n = spec_mod.MAX_AXIS_LENGTH
    with pytest.raises(ValueError, match=f"scale axis has 1000000000 values, more than the {n}"):
        sk.SweepSpec(depth=2, scale=range(10**9))
    with pytest.raises(ValueError, match=f"seed axis has {n + 1} values"):
        sk.SweepSpec(depth=2, seed=np.arange(n + 1))
    assert len(sk.SweepSpec(depth=2, seed=range(n)).seed) == n  # the limit itself is fine
    big = dict(depth=2, scale=np.arange(1, 101), bias_std=np.arange(10**4), seed=range(10**4))
    with pytest.raises(ValueError, match=r"10000000000 configs .*scale 100.*2147483647"):
        sk.SweepSpec(**big)


def test_layer_buffers_must_fit(monkeypatch):
    # two configs' h and phi'(z) for every layer: 4096 x 2048 x 8192 float32 is 1 TiB
    with pytest.raises(ValueError, match=r"depth=4096, batch=2048, width=8192 .*1\.0 TiB"):
        sk.SweepSpec(depth=4096, width=8192, batch=2048)
    fits = sk.SweepSpec(depth=64, width=64, batch=64, dtype="float64")
    need = 2 * fits.config_bytes("float64", 64)
    monkeypatch.setattr(spec_mod, "memory_limit", lambda: need)
    sk.SweepSpec(depth=64, width=64, batch=64, dtype="float64")  # exactly fits
    with pytest.raises(ValueError, match=r"depth=65, batch=64, width=64 .*8-byte dtype"):
        sk.SweepSpec(depth=65, width=64, batch=64, dtype=["float16", "float64"])


def test_multipliers_must_fit_float32_below_float64():
    # gaussian: multiplier sigma_w / sqrt(width); scaled_identity: sigma_w itself
    sk.SweepSpec(depth=2, width=64, scale=1e39)  # 1.25e38: representable
    with pytest.raises(ValueError, match=r"scale=1e\+39 gives init 'scaled_identity' .*float32"):
        sk.SweepSpec(depth=2, width=64, scale=1e39, init=["gaussian", "scaled_identity"])
    with pytest.raises(ValueError, match=r"scale=-1e\+300 .*float16 sweeps"):
        sk.SweepSpec(depth=2, scale=[-1e300, 1.0], dtype=["float64", "float16"])
    assert sk.SweepSpec(depth=2, scale=1e300, dtype="float64").scale == (1e300,)
    with pytest.raises(ValueError, match="bias_std=1e\\+39 is beyond float32's range"):
        sk.SweepSpec(depth=2, bias_std=[0.0, 1e39])


def test_activation_callables_are_traced_in_every_dtype():
    def keeps(z):
        return z * jax.nn.sigmoid(z)

    assert sk.SweepSpec(depth=2, activation=keeps, dtype=["float16", "float64"]).activation == (
        keeps,
    )
    cases = [
        (lambda z: jnp.sum(z), ValueError, r"elementwise.*returned shape \(\)"),
        (lambda z: z[:1], ValueError, r"returned shape \(1, 3\)"),
        (lambda z: z.astype(jnp.float32), TypeError, "on a float16 array it returned .*float32"),
        (lambda z: (z, z), TypeError, "must return an array"),
        (lambda: 0.0, TypeError, "failed on a float16 array"),
        (np.sin, TypeError, "ufunc 'sin'.*JAX-traceable"),  # NumPy cannot trace: never sweepable
    ]
    for fn, error, match in cases:
        with pytest.raises(error, match=match):
            sk.SweepSpec(depth=2, activation=["relu", fn], dtype="float16")


def test_choices_are_the_spec_s():
    """The names the CLI offers: the spec's (dtypes from stabkit.precision's one list)."""
    assert sk.SweepSpec.DTYPES == ("float16", "bfloat16", "float32", "float64")
    assert set(sk.SweepSpec.DTYPES) < set(sk.SUPPORTED_DTYPES)
    assert sk.SweepSpec.choices("dtype") == sk.SweepSpec.DTYPES
    assert sk.SweepSpec.choices("input") == sk.SweepSpec.INPUTS == ("normal", "uniform", "ones")
    assert sk.SweepSpec.choices("activation") == tuple(sk.activation_names())
    assert sk.SweepSpec.choices("init") == tuple(sk.initializer_names())
    assert sk.SweepSpec.choices("loss") == tuple(sk.loss_names())
    with pytest.raises(ValueError, match="unknown field 'depth'"):
        sk.SweepSpec.choices("depth")
    for dtype in sk.SweepSpec.DTYPES:
        assert sk.SweepSpec(**TINY, dtype=dtype).dtype == (dtype,)
    with pytest.raises(ValueError, match=r"float8_e4m3fn.*valid: float16, bfloat16"):
        sk.SweepSpec(**TINY, dtype="float8_e4m3fn")


def test_from_dataset_rebuilds_the_spec():
    import xarray as xr

    def ds(spec):
        return xr.Dataset(attrs={"spec": json.dumps(spec)})

    s = sk.SweepSpec(**TINY, activation=["tanh", "relu"], scale=[0.5, 2.0], loss="sum")
    assert sk.SweepSpec.from_dataset(ds(s.to_dict())) == s
    # layer slots: input, 2 hidden, readout; bytes: h and phi' of 2 layers, 16 float32
    # temporaries, two float64 of each of the 17 statistics per slot
    assert (
        s.n_layers == 4
        and s.config_bytes("float32", 2) == 2 * 2 * 4 * 4 + 16 * 4 * 4 + 2 * 8 * 4 * 17
    )
    with pytest.raises(TypeError, match=r"xarray\.Dataset, got dict"):
        sk.SweepSpec.from_dataset(s.to_dict())
    with pytest.raises(ValueError, match="'spec' attribute is missing or unreadable"):
        sk.SweepSpec.from_dataset(xr.Dataset())
    with pytest.raises(ValueError, match="'spec' attribute is missing or unreadable"):
        sk.SweepSpec.from_dataset(xr.Dataset(attrs={"spec": "[1]"}))
    # every field: a default would silently stand in for what the sweep ran (batch, loss, ...)
    partial = {k: v for k, v in s.to_dict().items() if k not in ("batch", "seed")}
    with pytest.raises(ValueError, match=r"lacks batch, seed$"):
        sk.SweepSpec.from_dataset(ds(partial))
    with pytest.raises(ValueError, match="depth values must be in"):
        sk.SweepSpec.from_dataset(ds({**s.to_dict(), "depth": [0]}))
    # a sweep of callables names them: they are given again, under the name the dataset knows
    custom = sk.SweepSpec(**TINY, activation=[jnp.sin, "relu"])
    with pytest.raises(ValueError, match=r"'sin' is not registered; pass activations="):
        sk.SweepSpec.from_dataset(ds(custom.to_dict()))
    assert sk.SweepSpec.from_dataset(ds(custom.to_dict()), {"sin": jnp.sin}) == custom
    again = sk.SweepSpec.from_dataset(ds(custom.to_dict()), {"sin": lambda x: jnp.sin(x)})
    assert again.coords() == custom.coords() and again.to_dict() == custom.to_dict()
    with pytest.raises(TypeError, match="activations must be a dict"):
        sk.SweepSpec.from_dataset(ds(custom.to_dict()), [jnp.sin])


def test_from_dict_is_validated():
    with pytest.raises(TypeError, match="from_dict needs a dict"):
        sk.SweepSpec.from_dict([("depth", 2)])
    with pytest.raises(ValueError, match=r"unknown SweepSpec field\(s\) \['dept'\]"):
        sk.SweepSpec.from_dict({"dept": 2})
    with pytest.raises(ValueError, match="no depth"):
        sk.SweepSpec.from_dict({"width": 2})


# ---------------------------------------------------------------- property: bad in, clean error out

BAD_ANY = [None, {1: 2}, {1}, iter([1]), object(), [[1], [1, 2]], np.ones((2, 2)), []]
BAD = {
    "depth": [*BAD_ANY, 0, -1, 4097, 2.5, "3", True, np.float64(2.0), [2, 2], 1j],
    "width": [*BAD_ANY, 0, 8193, 2.0, "2", np.bool_(False), [2, 2]],
    "activation": [*BAD_ANY, "swish", 3, ["relu", "relu"], lambda z: z.sum(), np.sin],
    "init": [*BAD_ANY, "kaiming", 3, ["gaussian", "gaussian"], jax.nn.initializers.zeros],
    "scale": [*BAD_ANY, np.nan, np.inf, "1", True, 1j, [1.0, 1.0], 1e300, np.float32("nan")],
    "bias_std": [*BAD_ANY, -1.0, np.nan, -np.inf, "0", True, 1e39, [0.0, -0.0]],
    "dtype": [*BAD_ANY, "int32", 5, "float8_e4m3fn", np.int8, True, ["float32", "float32"]],
    "seed": [*BAD_ANY, -1, 2**31, 1.5, "0", np.bool_(True), [0, 0]],
    "batch": [None, {1: 2}, [4], 0, 2**20 + 1, 4.0, "4", True, np.ones(2, int)],
    "input": [None, 5, "cauchy", ["normal"], b"normal"],
    "loss": [None, 5, "l1", ["mse"]],
    "saturation_threshold": [None, -0.1, 1.5, np.nan, np.inf, "0.1", [0.1], True, 1j],
}


@given(st.data())
def test_random_bad_arguments_raise_type_or_value_error(data):
    fields = data.draw(st.lists(st.sampled_from(sorted(BAD)), min_size=1, max_size=3, unique=True))
    kwargs = dict(TINY)
    for f in fields:
        bad = data.draw(st.sampled_from(BAD[f]), label=f)
        kwargs[f] = iter([1]) if isinstance(bad, type(iter([]))) else bad  # a fresh iterator
    with pytest.raises((TypeError, ValueError)):
        sk.SweepSpec(**kwargs)
