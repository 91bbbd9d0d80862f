"""Circular convolution blocks (stabkit.networks.conv) and the conv_isometry study's claims.

References are float64 NumPy: a circular convolution by ``np.roll`` per tap, the network by
hand, singular values by ``np.linalg.svd``. Nets are small and built once per module.
"""

import copy
import dataclasses
import importlib.util
import json
import math
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import stabkit
from stabkit.networks import block
from stabkit.networks.conv import circular_conv, conv_branch, delta_orthogonal_kernel
from stabkit.reproduce import experiment_dir, save_json

DTYPES = ("float16", "bfloat16", "float32", "float64")


def _eps(dtype: str) -> float:
    return float(ml_dtypes.finfo(dtype).eps)


def _np_conv(u: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """out[i] = sum_t u[(i + d_t) mod n] K_t, d_t = t - (k - 1)/2, per spatial axis (float64)."""
    ndim = kernel.ndim - 2
    out = np.zeros((*u.shape[:-1], kernel.shape[-1]))
    for taps in np.ndindex(*kernel.shape[:ndim]):
        shifted = u
        for axis, (t, k) in enumerate(zip(taps, kernel.shape[:ndim], strict=True)):
            shifted = np.roll(shifted, -(t - (k - 1) // 2), axis=1 + axis)
        out += shifted @ kernel[taps]
    return out


@pytest.fixture(scope="module")
def study():
    path = experiment_dir() / "conv_isometry.py"
    spec = importlib.util.spec_from_file_location("conv_isometry_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


# ------------------------------------------------------------------------ the convolution itself

# (spatial sizes, kernel size, channels in, channels out): sizes below the kernel's included.
CONV_CASES = [
    ((5,), 3, 3, 2),
    ((2,), 5, 2, 2),
    ((1,), 3, 2, 3),
    ((4, 3), 3, 2, 2),
    ((2, 1), 3, 1, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_circular_conv_matches_numpy(dtype):
    """Error bound: (taps * c_in + 1) eps times the sum of |u| |K| (the dtype's rounding)."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == "float64"):
        for sizes, k, cin, cout in CONV_CASES:
            u = rng.standard_normal((2, *sizes, cin)).astype(dtype)
            kernel = rng.standard_normal((*(k,) * len(sizes), cin, cout)).astype(dtype)
            out = circular_conv(jnp.asarray(u), jnp.asarray(kernel))
            assert out.dtype == jnp.dtype(dtype) and out.shape == (2, *sizes, cout)
            u64, k64 = u.astype(np.float64), kernel.astype(np.float64)
            ref, bound = _np_conv(u64, k64), _np_conv(np.abs(u64), np.abs(k64))
            terms = k ** len(sizes) * cin + 1
            err = np.abs(np.asarray(out, np.float64) - ref)
            assert np.all(err <= terms * _eps(dtype) * bound + 1e-300), (sizes, k, err.max())


def test_conv_branch_rejects_bad_options():
    phi = stabkit.get_activation("tanh")
    with pytest.raises(ValueError, match=r"kernel_size must be odd.*got 4"):
        block("conv1d", kernel_size=4)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        block("conv2d", kernel_size=0)
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        block("conv1d", kernel_size=3.0)
    with pytest.raises(TypeError, match="delta_orthogonal"):
        block("conv1d", delta_orthogonal=1)
    with pytest.raises(ValueError, match="ndim"):
        conv_branch(phi, "tanh", 3)


def test_delta_orthogonal_kernel_is_zero_but_an_orthogonal_centre():
    for window in ((5, 3), (1,)):
        k = np.asarray(delta_orthogonal_kernel(jax.random.key(1), window, 6, jnp.float32, 2.0))
        centre = tuple(w // 2 for w in window)
        q = k[centre].astype(np.float64)
        np.testing.assert_allclose(q.T @ q, 4 * np.eye(6), atol=30 * _eps("float32"))
        rest = k.copy()
        rest[centre] = 0
        assert k.shape == (*window, 6, 6) and not rest.any()


# ------------------------------------------------------------------------------ through the net


@pytest.fixture(scope="module")
def gaussian_net():
    """A tanh conv1d stack with biases; depth 64 for the variance test (depth is data)."""
    b = block("conv1d", activation="tanh", kernel_size=3)
    return stabkit.net_init(
        jax.random.key(7), b, depth=64, width=8, embed=False, scale=1.5, bias_std=0.5
    )


def test_net_apply_matches_numpy(gaussian_net):
    p = gaussian_net
    x = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
    h = x.astype(np.float64)
    for layer in range(3):
        kernel = np.asarray(p.blocks["branch"]["w_last"][layer], np.float64)
        bias = np.asarray(p.blocks["branch"]["b_last"][layer], np.float64)
        h = np.tanh(_np_conv(h, kernel) + bias)
    ref = h @ np.asarray(p.readout["w"], np.float64) + np.asarray(p.readout["b"], np.float64)
    out = np.asarray(stabkit.net_apply(p, x, depth=3), np.float64)
    np.testing.assert_allclose(out, ref, atol=200 * _eps("float32"))
    assert p.blocks["branch"]["w_last"].shape == (64, 3, 8, 8)
    assert p.block.branch.inner and p.block.spatial == (1,)


def test_conv2d_rejects_a_sequence_input_and_conv1d_an_image(gaussian_net):
    b2 = block("conv2d", kernel_size=3, delta_orthogonal=True, activation="tanh")
    p2 = stabkit.net_init(jax.random.key(4), b2, depth=2, width=4, embed=False)
    assert stabkit.net_apply(p2, jnp.ones((1, 3, 2, 4))).shape == (1, 3, 2, 4)
    with pytest.raises(ValueError, match=r"conv2d.*\(batch, height, width, channels\)"):
        stabkit.net_apply(p2, jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"2 spatial axes.*conv1d.*\(batch, sequence, width\)"):
        stabkit.net_apply(gaussian_net, jnp.ones((1, 3, 2, 8)))


@pytest.fixture(scope="module")
def delta_net():
    """Linear delta-orthogonal stack, orthogonal readout (init="orthogonal"): an isometry."""
    b = block("conv1d", activation="linear", kernel_size=5, delta_orthogonal=True)
    return stabkit.net_init(jax.random.key(5), b, depth=32, width=8, embed=False, init="orthogonal")


def test_linear_delta_orthogonal_net_preserves_the_norm(delta_net):
    x = jax.random.normal(jax.random.key(6), (3, 7, 8))
    y = stabkit.net_apply(delta_net, x)
    ratio = np.linalg.norm(np.asarray(y).reshape(3, -1), axis=1) / np.linalg.norm(
        np.asarray(x).reshape(3, -1), axis=1
    )
    # 33 orthogonal maps in float32: the norm is kept to ~33 * sqrt(8) eps.
    np.testing.assert_allclose(ratio, 1.0, atol=33 * 8 * _eps("float32"))
    kernels = np.asarray(delta_net.blocks["branch"]["w_last"])
    assert not np.delete(kernels, 2, axis=1).any()  # only the centre tap (of 5) is non-zero


def test_gaussian_kernel_variance_is_scale2_over_fan_in(gaussian_net):
    w = np.asarray(gaussian_net.blocks["branch"]["w_last"], np.float64)  # 12,288 entries
    var = np.mean(w**2) * 3 * 8 / 1.5**2
    assert abs(var - 1) < 5 * math.sqrt(2 / w.size)  # 5 standard errors, fixed key


def test_frequency_route_equals_jacfwd(study, gaussian_net):
    """The study's singular values by per-frequency products equal jax.jacfwd's (1-D)."""
    # The linear block's apply on the same parameters (biases do not change a Jacobian).
    linear = block("conv1d", activation="linear", kernel_size=3)
    p = dataclasses.replace(study._identity_readout(gaussian_net), block=linear)
    depth, sizes = 3, (5,)
    f = lambda v: stabkit.net_apply(p, v[None], depth=depth)[0]
    jac = jax.jit(jax.jacfwd(f))(jnp.ones((*sizes, 8))).reshape(40, 40)  # one compilation
    sv_jac = np.sort(np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False))
    kernels = np.asarray(p.blocks["branch"]["w_last"][:depth], np.float64)
    spectra = study.product_spectra(study.frequency_matrices(kernels, sizes), [depth])
    sv_fft = np.sort(spectra[depth])
    np.testing.assert_allclose(sv_fft, sv_jac, atol=50 * _eps("float32") * sv_jac.max())


def test_frequency_matrices_2d_equal_the_dense_circulant(study):
    """2-D: the dense matrix of one circular conv (column by column) has the frequency route's
    singular values."""
    rng = np.random.default_rng(8)
    kernel = rng.standard_normal((3, 3, 2, 2))
    sizes = (4, 3)
    eye = np.eye(24).reshape(24, *sizes, 2)
    dense = _np_conv(eye, kernel).reshape(24, 24)
    sv = np.sort(np.linalg.svd(dense, compute_uv=False))
    sv_fft = np.sort(study.product_spectra(study.frequency_matrices(kernel[None], sizes), [1])[1])
    np.testing.assert_allclose(sv_fft, sv, rtol=1e-12, atol=1e-12)


def test_gaussian_m2_closed_form(study):
    """One real Gaussian layer: E lambda^2 = 2 + 1/c; a wide net: the Fuss-Catalan L + 1."""
    # A 1x1 kernel: rho = 1 at every frequency, the real Gaussian matrix.
    assert study.gaussian_m2(5, 1, (4,), 1) == pytest.approx(2 + 1 / 5, rel=1e-14)
    for depth in (1, 4, 16):
        assert study.gaussian_m2(10**6, depth, (8,), 3) == pytest.approx(depth + 1, rel=1e-3)
    # By Monte Carlo (float64, fixed seed): 2 layers of 3-tap kernels, c = 4, n = 6.
    rng = np.random.default_rng(9)
    kernels = rng.standard_normal((2000, 2, 3, 4, 4)) / math.sqrt(12)
    lam = [study.product_spectra(study.frequency_matrices(k, (6,)), [2])[2] ** 2 for k in kernels]
    m2 = np.mean([np.mean(v**2) for v in lam])
    se = np.std([np.mean(v**2) for v in lam]) / math.sqrt(2000)
    assert abs(m2 - study.gaussian_m2(4, 2, (6,), 3)) < 4 * se


# ------------------------------------------------------------------------------ study claims


def _numbers() -> dict:
    """Hand-made numbers in the shape measure() stores (quick config)."""
    lin = {}
    for d, m2, th in ((4, 5.0, 5.1), (8, 9.3, 9.4), (16, 20.8, 19.6)):
        lin[str(d)] = {
            "mean": 1.0,
            "se_mean": 0.02,
            "m2": m2,
            "se_m2": 0.1 * d,
            "var": m2 - 1,
            "theory_m2": th,
            "mlp_wide_m2": d + 1.0,
            "mlp_wide_var": float(d),
        }
    tanh = {
        init: {
            str(d): {
                "nvar": v * d / 16,
                "se_nvar": 0.05 * v,
                "theory_nvar": t * d / 16,
                "s_ratio_90_10": 4.0,
                "mean": 1.0,
            }
            for d in (16, 32)
        }
        for init, v, t in (("delta_orthogonal", 0.7, 0.7), ("gaussian", 18.0, 16.7))
    }
    return {
        "config": {
            "lin_depths": [4, 8, 16],
            "tanh_depths": [16, 32],
            "lin_seeds": 48,
            "iso_seeds": 2,
            "tanh_seeds": 3,
            "exact_2d": False,
        },
        "exactness": {"1d": {"sizes": [4], "width": 32, "depth": 6, "max_rel_dev": 2e-7}},
        "isometry": {
            "sizes": [16],
            "width": 32,
            "depth": 64,
            "nets": 2,
            "singular_values": 1024,
            "max_abs_dev": 3e-6,
        },
        "linear_gaussian": lin,
        "tanh": tanh,
        "tanh_point": {"sigma_w2": 1.19, "sigma_b2": 1e-3, "q_star": 0.107},
    }


# (what is spoiled, the index of the claim that must then fail, how)
SPOILERS = [
    ("exactness", 0, lambda n: n["exactness"]["1d"].update(max_rel_dev=3e-3)),
    ("isometry", 1, lambda n: n["isometry"].update(max_abs_dev=2e-4)),
    ("isometry depth", 1, lambda n: n["isometry"].update(depth=16)),
    ("mean", 2, lambda n: n["linear_gaussian"]["8"].update(mean=1.2)),
    ("m2", 3, lambda n: n["linear_gaussian"]["16"].update(m2=30.0)),
    ("m2 grows", 3, lambda n: n["linear_gaussian"]["16"].update(var=5.0)),
    ("ratio", 4, lambda n: n["tanh"]["gaussian"]["32"].update(nvar=3.0)),
    ("theory", 5, lambda n: n["tanh"]["delta_orthogonal"]["16"].update(nvar=1.2)),
]


def test_claims_pass_on_good_numbers_and_survive_json(study, tmp_path):
    numbers = _numbers()
    claims = study.claims(numbers)
    assert len(claims) == 6 and all(c.passed for c in claims), [c for c in claims if not c.passed]
    stored = json.loads(save_json(tmp_path / "n.json", numbers).read_text())
    assert study.claims(stored) == claims


@pytest.mark.parametrize("name,index,spoil", SPOILERS, ids=[s[0] for s in SPOILERS])
def test_each_claim_fails_on_a_spoiled_number(study, name, index, spoil):
    numbers = copy.deepcopy(_numbers())
    spoil(numbers)
    verdicts = [c.passed for c in study.claims(numbers)]
    assert not verdicts[index], (name, verdicts)


def test_study_config_defaults(study):
    """The full study's claims need depth >= 32 for the isometry (the brief's claim (1))."""
    cfg = study.Config()
    assert cfg.iso_depth >= 32 and max(cfg.tanh_depths) >= 32
    assert dataclasses.asdict(study.QUICK)["exact_2d"] is False


def test_inner_layer_norm_sits_between_the_conv_and_the_activation():
    """norm_position="inner": phi(LN(u * K + b)), checked on one block."""
    b = block("conv1d", activation="tanh", norm="layer", norm_position="inner")
    hyper = {k: jnp.float32(v) for k, v in {**b.hyper_defaults, "bias_std": 0.3}.items()}
    u = np.random.default_rng(11).standard_normal((2, 5, 4)).astype(np.float32)

    @jax.jit  # one compilation, not one per eager op
    def run(key, u, hyper):
        params = b.init(key, 4, jnp.float32, "gaussian", hyper)
        return params, *b.apply(params, u, hyper)

    params, out, taps = run(jax.random.key(10), jnp.asarray(u), hyper)
    kernel = np.asarray(params["branch"]["w_last"], np.float64)
    z = _np_conv(u.astype(np.float64), kernel) + np.asarray(params["branch"]["b_last"], np.float64)
    z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(out, np.float64), np.tanh(z), atol=100 * _eps("float32"))
    assert {"branch_rms", "normalized_rms"} <= set(taps)
