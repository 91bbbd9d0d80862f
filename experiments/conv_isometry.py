"""Study: dynamical isometry of deep convolutional nets, delta-orthogonal vs Gaussian kernels.

Xiao et al. (2018) train 10,000-layer vanilla CNNs by initializing every kernel as a
*delta-orthogonal* kernel (zero but for the centre tap, an orthogonal matrix). The reason is the
input-output Jacobian :math:`J = \\partial h^L / \\partial x`:

* **Circular convolutions are diagonal in frequency.** With wrap-around padding a convolution is
  a block-circulant map; the discrete Fourier transform over the spatial axes turns it into one
  ``c x c`` matrix per frequency, :math:`\\hat K(\\omega) = \\sum_t K_t e^{i\\omega\\cdot d_t}`
  (taps ``t`` at offsets ``d_t`` from the centre). A linear stack's :math:`J` has as singular
  values those of the products :math:`\\hat K_1(\\omega) \\cdots \\hat K_L(\\omega)` over the
  ``n`` frequencies: ``n`` products of ``c x c`` matrices instead of one ``nc x nc`` Jacobian.
  Checked here against ``jax.jacfwd`` on small 1-D and 2-D nets.
* **Delta-orthogonal: an exact isometry.** :math:`\\hat K(\\omega) = Q` at every frequency, so
  every singular value of a linear stack is 1 at any depth.
* **Gaussian kernels spread as the MLP.** Each :math:`\\hat K(\\omega)` has independent entries
  of variance :math:`1/c` (at :math:`\\sigma_w = 1`), complex with a pseudo-variance
  :math:`E z^2 = \\rho(\\omega)/c`, :math:`\\rho = k^{-1}\\sum_t e^{2i\\omega\\cdot d_t}`. The
  squared singular values :math:`\\lambda` have mean exactly 1 and, in the wide limit, the
  Fuss-Catalan second moment :math:`L + 1` of the Gaussian MLP (``jacobian_spectrum_moments``:
  variance :math:`L`). At finite width Wick's theorem gives :math:`E\\,\\mathrm{tr}(A^2)` exactly
  for :math:`A = P^*P`, :math:`P` the product: with :math:`t_1 = E(\\mathrm{tr} A)^2`,
  :math:`t_2 = E\\,\\mathrm{tr} A^2`, :math:`t_3 = E\\,\\mathrm{tr} A\\bar A`, one layer maps
  :math:`(t_1, t_2, t_3)` to :math:`(t_1 + t_2/c + |\\rho|^2 t_3/c,\\ t_2 + t_1/c +
  |\\rho|^2 t_3/c,\\ |\\rho|^2 t_3 + (t_1 + t_2)/c)` from :math:`(c^2, c, c)`; the mean of
  :math:`\\lambda^2` is the average of :math:`t_2/c` over the frequencies (:math:`\\rho = 1`, the
  real Gaussian MLP, gives :math:`2 + 1/c` for one layer; :math:`c \\to \\infty` gives
  :math:`L + 1`).
* **tanh at criticality.** A delta-orthogonal CNN acts on each position alone: it *is* an
  orthogonal MLP per position, and inherits its near-isometry, spread
  :math:`L(\\mu_2/\\mu_1^2 - 1)`; Gaussian kernels give :math:`L\\mu_2/\\mu_1^2` as the Gaussian
  MLP (Pennington et al. 2017's free probability, ``jacobian_spectrum_moments``). Measured with
  ``jax.jacfwd`` of :func:`stabkit.net_apply` at an input of the fixed-point length, at
  :math:`\\sigma_b^2 = 10^{-3}` on the critical line (:math:`\\sigma_w^2 = 1.19`,
  :math:`q^* = 0.107`; the ``jacobian_spectra`` study takes the MLP at 0.01). Tolerance: 3
  standard errors (jackknife over nets) plus that study's finite-width allowance
  :math:`(L + 1)/c` relative (corrections are :math:`O(L/c)`: the linear Gaussian net's exact
  :math:`E\\lambda^2` is 35% above the wide limit at :math:`L = c = 32`), so at
  :math:`L \\gtrsim c` the sharp test is the ratio of the two spreads.

Every net is a :func:`stabkit.net_init` stack of ``stabkit.block("conv1d"|"conv2d",
kernel_size=3, delta_orthogonal=...)`` blocks, without embedding (``embed=False``) and with the
readout replaced by the identity (``dataclasses.replace(params, readout=...)``), so that
:math:`J` is the block stack's Jacobian: ``L`` kernels and ``L`` activations.

Run alone: ``python experiments/conv_isometry.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import stabkit as sk
from stabkit.reproduce import run_alone

NAME = "conv_isometry"
TITLE = (
    "Convolutions: delta-orthogonal kernels give dynamical isometry, Gaussian ones spread "
    "(Xiao et al. 2018)"
)
ORDER = 78


KERNEL = 3  # k: taps per spatial axis of every kernel


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 32  # c: channels of every net
    lin_n: int = 16  # linear nets: 1-D, n positions (the frequency route: n products of c x c)
    lin_depths: tuple[int, ...] = (4, 8, 16, 32)  # linear Gaussian nets
    lin_seeds: int = 96  # independent linear Gaussian nets
    iso_depth: int = 64  # linear delta-orthogonal nets
    iso_seeds: int = 4
    tanh_n: int = 4  # tanh nets: Jacobian by jax.jacfwd, n * c inputs and outputs
    tanh_depths: tuple[int, ...] = (16, 32, 64)
    tanh_seeds: int = 4
    tanh_sigma_b2: float = 1e-3  # on the critical line: sigma_w^2 = 1.19, q* = 0.107
    exact_2d: bool = True  # check the frequency route on a 2-D net too (one more compilation)
    n_se: float = 3.0  # tolerance: n_se standard errors (+ the finite-width allowance for tanh)
    seed: int = 0


QUICK = Config(
    lin_depths=(4, 8, 16),
    lin_seeds=48,
    iso_seeds=2,
    tanh_depths=(16, 32),
    tanh_seeds=3,
    exact_2d=False,
)

#: The frequency route is checked against jax.jacfwd on the first linear Gaussian net at this
#: depth (on tanh_n positions), and on a 2-D net of its own: (image size, channels, depth).
EXACT_1D_DEPTH = 6
EXACT_2D = ((4, 3), 3, 4)

#: The blocks, built once (a block is static: each new one compiles net_init again). A block's
#: parameters depend on its kernel law only and its apply on its activation only, so the 1-D nets
#: are drawn with the two tanh blocks and differentiated with the tanh or the linear one
#: (``dataclasses.replace(params, block=...)``): four compilations instead of eight.
_BLOCKS = {
    f"{act}/{law}/{nd}d": sk.block(
        f"conv{nd}d",
        activation=act,
        kernel_size=KERNEL,
        delta_orthogonal=law == "delta_orthogonal",
    )
    for act, law, nd in (
        ("tanh", "gaussian", 1),
        ("tanh", "delta_orthogonal", 1),
        ("linear", "gaussian", 1),
        ("linear", "gaussian", 2),
    )
}


def _top(cfg: Config) -> int:
    """The depth of every 1-D net (one net_init compilation per kernel law); depth is data."""
    return max(cfg.iso_depth, *cfg.tanh_depths, *cfg.lin_depths)


def _with_block(nets: sk.NetParams, key: str) -> sk.NetParams:
    return dataclasses.replace(nets, block=_BLOCKS[key])


# ----------------------------------------------------------------------- the frequency route


def _offsets(k: int) -> np.ndarray:
    return np.arange(k) - (k - 1) // 2


def _phases(sizes: tuple[int, ...], k: int, mult: int = 1) -> list[np.ndarray]:
    """Per spatial axis, ``exp(i * mult * omega_j * d_t)``: (n_axis, k)."""
    return [np.exp(1j * mult * np.outer(2 * np.pi * np.arange(n) / n, _offsets(k))) for n in sizes]


def frequency_matrices(kernels: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """``K_hat[l, f] = sum_t K_l[t] exp(i omega_f . d_t)``: (L, prod(sizes), c, c) complex128."""
    kernels = np.asarray(kernels, np.float64)
    k = kernels.shape[1]
    e = _phases(sizes, k)
    if len(sizes) == 1:
        out = np.einsum("ltab,jt->ljab", kernels, e[0])
    else:
        out = np.einsum("lstab,js,kt->ljkab", kernels, e[0], e[1])
    return out.reshape(kernels.shape[0], math.prod(sizes), *kernels.shape[-2:])


def product_spectra(kmat: np.ndarray, depths) -> dict[int, np.ndarray]:
    """Singular values of ``K_hat_1 ... K_hat_L`` at every frequency, per depth: (F * c,)."""
    c = kmat.shape[-1]
    prod = np.broadcast_to(np.eye(c, dtype=complex), kmat.shape[1:]).copy()
    out = {}
    for layer in range(max(depths)):
        prod = prod @ kmat[layer]
        if layer + 1 in depths:
            out[layer + 1] = np.linalg.svd(prod, compute_uv=False).ravel()
    return out


def gaussian_m2(c: int, depth: int, sizes: tuple[int, ...], k: int) -> float:
    """The exact mean of lambda^2 over a linear Gaussian CNN's spectrum (module docstring)."""
    rho2 = np.ones(1)
    for e in _phases(sizes, k, mult=2):
        rho2 = np.multiply.outer(rho2, np.abs(e.mean(axis=1)) ** 2).ravel()
    t1, t2, t3 = np.full_like(rho2, c * c), np.full_like(rho2, c), np.full_like(rho2, c)
    for _ in range(depth):
        t1, t2, t3 = (
            t1 + t2 / c + rho2 * t3 / c,
            t2 + t1 / c + rho2 * t3 / c,
            rho2 * t3 + (t1 + t2) / c,
        )
    return float(np.mean(t2 / c))


# ------------------------------------------------------------------------- the Jacobian route


def _identity_readout(p: sk.NetParams) -> sk.NetParams:
    eye = {"w": jnp.eye(p.width, dtype=p.dtype), "b": jnp.zeros(p.width, p.dtype)}
    return dataclasses.replace(p, readout=eye)


def _nets(
    blk,
    seeds: int,
    cfg: Config,
    *,
    depth: int,
    width: int | None = None,
    scale=1.0,
    bias_std=0.0,
    salt=0,
):
    """``seeds`` nets (stacked) from keys fold_in(seed key, salt + s), identity readout."""
    base = jax.random.fold_in(jax.random.key(cfg.seed), salt)
    nets = [
        # One at a time: XLA:CPU runs dispatched-but-unfinished calls concurrently, and on a busy
        # 2-core machine that thrashes its thread pool.
        jax.block_until_ready(
            _identity_readout(
                sk.net_init(
                    jax.random.fold_in(base, s),
                    blk,
                    depth=depth,
                    width=cfg.width if width is None else width,
                    embed=False,
                    scale=scale,
                    bias_std=bias_std,
                )
            )
        )
        for s in range(seeds)
    ]
    return jax.tree.map(lambda *a: jnp.stack(a), *nets)


@jax.jit
def _jacobian_sv(nets: sk.NetParams, x: jax.Array, depths: jax.Array) -> jax.Array:
    """Singular values of d net_apply / dx per net (vmap) and depth (vmap; depth is data)."""

    def one(p, v):
        def at(d):
            f = lambda u: sk.net_apply(p, u[None], depth=d)[0]
            jac = jax.jacfwd(f)(v).reshape(v.size, v.size)
            return jnp.linalg.svd(jac, compute_uv=False)

        return jax.vmap(at)(depths)

    return jax.vmap(one)(nets, x)


def _kernels(nets: sk.NetParams, s: int) -> np.ndarray:
    return np.asarray(nets.blocks["branch"]["w_last"][s], np.float64)


# ------------------------------------------------------------------------------ measurements


def _exactness(cfg: Config, lin_nets: sk.NetParams) -> dict:
    """The frequency route against jax.jacfwd of net_apply on small linear Gaussian nets.

    1-D: the first of the linear Gaussian nets on a short input (a kernel does not depend on the
    spatial size), at a small depth (depth is data); 2-D (``cfg.exact_2d``): a small net of its
    own.
    """
    nets = {"1d": _with_block(jax.tree.map(lambda a: a[:1], lin_nets), "linear/gaussian/1d")}
    setups = {"1d": ((cfg.tanh_n,), cfg.width, EXACT_1D_DEPTH)}
    if cfg.exact_2d:
        sizes, c, depth = setups["2d"] = EXACT_2D
        nets["2d"] = _nets(_BLOCKS["linear/gaussian/2d"], 1, cfg, depth=depth, width=c, salt=100)
    out = {}
    for label, (sizes, c, depth) in setups.items():
        x = jnp.ones((1, *sizes, c))
        sv_jac = np.asarray(_jacobian_sv(nets[label], x, jnp.asarray([depth]))[0, 0], np.float64)
        kernels = _kernels(nets[label], 0)[:depth]
        sv_fft = product_spectra(frequency_matrices(kernels, sizes), [depth])[depth]
        sv_jac, sv_fft = np.sort(sv_jac), np.sort(sv_fft)
        out[label] = {
            "sizes": list(sizes),
            "width": c,
            "depth": depth,
            "singular_values": int(sv_fft.size),
            "max_rel_dev": float(np.max(np.abs(sv_jac - sv_fft)) / sv_fft.max()),
        }
    return out


def _isometry(cfg: Config, delta_nets: sk.NetParams) -> dict:
    """Delta-orthogonal kernels drawn at scale 1: every singular value of the linear stack."""
    sizes = (cfg.lin_n,)
    dev = [
        np.max(
            np.abs(
                product_spectra(
                    frequency_matrices(_kernels(delta_nets, s), sizes), [cfg.iso_depth]
                )[cfg.iso_depth]
                - 1
            )
        )
        for s in range(cfg.iso_seeds)
    ]
    return {
        "sizes": list(sizes),
        "width": cfg.width,
        "depth": cfg.iso_depth,
        "nets": cfg.iso_seeds,
        "singular_values": cfg.iso_seeds * math.prod(sizes) * cfg.width,
        "max_abs_dev": float(max(dev)),
    }


def _seed_moments(lam: np.ndarray) -> dict:
    """Pooled moments of lam (nets x values) with jackknife standard errors over the nets."""
    m1, m2 = lam.mean(axis=1), (lam**2).mean(axis=1)
    k = m1.size

    def stats(p1, p2):
        var = p2 - p1**2
        return np.stack([p1, p2, var, var / p1**2])

    full = stats(m1.mean(), m2.mean())
    loo = stats((m1.sum() - m1) / (k - 1), (m2.sum() - m2) / (k - 1))
    se = np.sqrt((k - 1) / k * np.sum((loo - loo.mean(axis=1, keepdims=True)) ** 2, axis=1))
    names = ("mean", "m2", "var", "nvar")
    return {
        **{n: float(v) for n, v in zip(names, full, strict=True)},
        **{f"se_{n}": float(v) for n, v in zip(names, se, strict=True)},
        "nets": k,
    }


def _linear_gaussian(cfg: Config) -> tuple[dict, dict, sk.NetParams]:
    """Moments of lambda over linear Gaussian nets by the frequency route, with theory."""
    nets = _nets(_BLOCKS["tanh/gaussian/1d"], cfg.lin_seeds, cfg, depth=_top(cfg), salt=300)
    per_net = [
        product_spectra(frequency_matrices(_kernels(nets, s), (cfg.lin_n,)), cfg.lin_depths)
        for s in range(cfg.lin_seeds)
    ]
    lam = {d: np.stack([p[d] for p in per_net]) ** 2 for d in cfg.lin_depths}
    stats = {}
    for d in cfg.lin_depths:
        mlp = sk.jacobian_spectrum_moments("linear", 1.0, 0.0, d)
        stats[str(d)] = {
            **_seed_moments(lam[d]),
            "theory_m2": gaussian_m2(cfg.width, d, (cfg.lin_n,), KERNEL),
            "mlp_wide_m2": float(mlp.variance + mlp.mean**2),
            "mlp_wide_var": float(mlp.variance),
        }
    return stats, lam, nets


def _tanh(cfg: Config, sw2: float, delta_nets: sk.NetParams) -> tuple[dict, dict, float]:
    """Jacobian spectra of tanh nets at an input of the fixed-point length (jax.jacfwd)."""
    sb2 = cfg.tanh_sigma_b2
    theory = {
        (w, d): sk.jacobian_spectrum_moments("tanh", sw2, sb2, d, weights=w)
        for w in ("orthogonal", "gaussian")
        for d in cfg.tanh_depths
    }
    qs = float(theory[("orthogonal", cfg.tanh_depths[0])].q[0])  # every q^l = q*
    shape = (cfg.tanh_seeds, cfg.tanh_n, cfg.width)
    g = jax.random.normal(jax.random.key(cfg.seed + 1), shape)
    x = g / jnp.sqrt(jnp.mean(g**2, axis=(1, 2), keepdims=True)) * math.sqrt((qs - sb2) / sw2)
    depths = jnp.asarray(cfg.tanh_depths, jnp.int32)
    nets = {
        "delta_orthogonal": jax.tree.map(lambda a: a[: cfg.tanh_seeds], delta_nets),
        "gaussian": _nets(
            _BLOCKS["tanh/gaussian/1d"],
            cfg.tanh_seeds,
            cfg,
            depth=_top(cfg),
            scale=math.sqrt(sw2),
            bias_std=math.sqrt(sb2),
            salt=400,
        ),
    }
    # Both kernel laws in one call: the tanh block's apply does not depend on the kernel law.
    pair = [_with_block(nets[k], "tanh/gaussian/1d") for k in ("delta_orthogonal", "gaussian")]
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *pair)
    sv_both = np.asarray(_jacobian_sv(both, jnp.concatenate([x, x]), depths), np.float64)
    stats, lam = {}, {}
    for i, (init, weights) in enumerate(
        (("delta_orthogonal", "orthogonal"), ("gaussian", "gaussian"))
    ):
        sv = sv_both[i * cfg.tanh_seeds : (i + 1) * cfg.tanh_seeds]  # (seeds, depths, n c)
        stats[init] = {}
        for j, d in enumerate(cfg.tanh_depths):
            s = sv[:, j]
            lam[(init, d)] = s**2
            th = theory[(weights, d)]
            stats[init][str(d)] = {
                **_seed_moments(s**2),
                "s_ratio_90_10": float(np.quantile(s, 0.9) / np.quantile(s, 0.1)),
                "theory_mean": float(th.mean),
                "theory_nvar": float(th.variance / th.mean**2),
            }
    return stats, lam, qs


def measure(*, quick: bool) -> dict:
    """The study's numbers; ``numbers["figure_data"]`` (spectra) is not stored in ``NAME.json``."""
    cfg = QUICK if quick else Config()
    sb2 = cfg.tanh_sigma_b2
    t0 = time.perf_counter()
    sw2 = float(sk.critical_line("tanh", sb2))
    timings = {"critical_line": time.perf_counter() - t0}
    t0 = time.perf_counter()
    lin, lin_lam, lin_nets = _linear_gaussian(cfg)
    timings["linear_gaussian"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = _exactness(cfg, lin_nets)
    timings["exactness"] = time.perf_counter() - t0
    # Delta-orthogonal kernels: a kernel does not depend on the activation, so one compilation of
    # net_init draws the isometry's nets (scale 1) and the tanh nets (scale sigma_w).
    t0 = time.perf_counter()
    top = _top(cfg)
    delta = _BLOCKS["tanh/delta_orthogonal/1d"]
    iso = _isometry(cfg, _nets(delta, cfg.iso_seeds, cfg, depth=top, salt=200))
    timings["isometry"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    delta_nets = _nets(
        delta,
        cfg.tanh_seeds,
        cfg,
        depth=top,
        scale=math.sqrt(sw2),
        bias_std=math.sqrt(sb2),
        salt=201,
    )
    tanh, tanh_lam, qs = _tanh(cfg, sw2, delta_nets)
    timings["tanh"] = time.perf_counter() - t0
    return {
        "config": dataclasses.asdict(cfg),
        "exactness": exact,
        "isometry": iso,
        "linear_gaussian": lin,
        "tanh": tanh,
        "tanh_point": {
            "sigma_w2": sw2,
            "sigma_b2": sb2,
            "q_star": qs,
        },
        "timings_s": timings,
        "figure_data": {"linear": lin_lam, "tanh": tanh_lam},
    }


# ------------------------------------------------------------------------------------ claims


def _tanh_tolerance(cfg: Config, depth: int, se: float, theory: float) -> float:
    """n_se standard errors + the finite-width allowance (L + 1)/c relative."""
    return cfg.n_se * se + (depth + 1) / cfg.width * abs(theory)


def claims(numbers: dict) -> list[sk.Claim]:
    """The study's claims, read off ``numbers`` (from :func:`measure`, or its ``NAME.json``)."""
    cfg = Config(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in numbers["config"].items()}
    )
    result = []

    ex = numbers["exactness"]
    worst = max(e["max_rel_dev"] for e in ex.values())
    result.append(
        sk.Claim(
            claim="A circular convolution stack's Jacobian is block-circulant: its singular values "
            "are those of the per-frequency products of the kernels' Fourier transforms",
            theory="exact (the DFT diagonalizes circulant maps); tolerance 1e-4 × s_max (float32 "
            "Jacobian)",
            measured="max |Δs| / s_max against jax.jacfwd of net_apply: "
            + ", ".join(
                f"{k} {e['sizes']}×{e['width']} L={e['depth']}: {e['max_rel_dev']:.1e}"
                for k, e in ex.items()
            ),
            passed=worst < 1e-4,
        )
    )

    iso = numbers["isometry"]
    result.append(
        sk.Claim(
            claim=f"Linear CNN with delta-orthogonal kernels: every singular value of J is 1 at "
            f"depth {iso['depth']}",
            theory="K̂(ω) = Q at every frequency: J is orthogonal; |s − 1| < 1e-4 (float32 kernels)",
            measured=f"max |s − 1| over {iso['singular_values']} singular values ({iso['nets']} "
            f"nets, n = {iso['sizes']}, c = {iso['width']}): {iso['max_abs_dev']:.1e}",
            passed=iso["depth"] >= 32 and iso["max_abs_dev"] < 1e-4,
        )
    )

    lin = numbers["linear_gaussian"]
    depths = cfg.lin_depths
    mean_ok = [abs(lin[str(d)]["mean"] - 1) <= cfg.n_se * lin[str(d)]["se_mean"] for d in depths]
    result.append(
        sk.Claim(
            claim="Linear CNN with Gaussian kernels (σ_w = 1, critical): the mean squared singular "
            "value is 1 at every depth",
            theory=f"E λ = 1 exactly (each layer preserves E|x|²); tolerance {cfg.n_se:g} SE",
            measured=", ".join(
                f"L={d}: {lin[str(d)]['mean']:.3f} ± {lin[str(d)]['se_mean']:.3f}" for d in depths
            ),
            passed=all(mean_ok),
        )
    )
    m2_ok = [
        abs(lin[str(d)]["m2"] - lin[str(d)]["theory_m2"]) <= cfg.n_se * lin[str(d)]["se_m2"]
        for d in depths
    ]
    grows = all(lin[str(a)]["var"] < lin[str(b)]["var"] for a, b in itertools.pairwise(depths))
    result.append(
        sk.Claim(
            claim="Gaussian kernels spread the spectrum with depth as the Gaussian MLP: E λ² "
            "matches the product of Gaussian matrices at every depth",
            theory=f"exact at c = {cfg.width} (Wick recursion per frequency): "
            + ", ".join(f"{lin[str(d)]['theory_m2']:.1f}" for d in depths)
            + f"; wide limit = MLP's L + 1 (var λ = L); tolerance {cfg.n_se:g} SE",
            measured="E λ²: "
            + ", ".join(
                f"L={d}: {lin[str(d)]['m2']:.1f} ± {lin[str(d)]['se_m2']:.1f}" for d in depths
            )
            + "; var λ / L: "
            + ", ".join(f"{lin[str(d)]['var'] / d:.2f}" for d in depths),
            passed=all(m2_ok) and grows,
        )
    )

    tanh = numbers["tanh"]
    tdepths = cfg.tanh_depths
    ratios = [
        tanh["delta_orthogonal"][str(d)]["nvar"] / tanh["gaussian"][str(d)]["nvar"] for d in tdepths
    ]
    th_ratio = [
        tanh["delta_orthogonal"][str(d)]["theory_nvar"] / tanh["gaussian"][str(d)]["theory_nvar"]
        for d in tdepths
    ]
    result.append(
        sk.Claim(
            claim="tanh CNN at criticality: delta-orthogonal kernels keep the spectrum far "
            "narrower than Gaussian ones (spread var λ / mean² below a third)",
            theory="free probability (the MLP's, per position): ratio (μ₂/μ₁² − 1)/(μ₂/μ₁²) = "
            + ", ".join(f"{r:.2f}" for r in th_ratio),
            measured="ratio "
            + ", ".join(f"L={d}: {r:.2f}" for d, r in zip(tdepths, ratios, strict=True))
            + "; s₉₀/s₁₀ delta-orthogonal "
            + ", ".join(f"{tanh['delta_orthogonal'][str(d)]['s_ratio_90_10']:.1f}" for d in tdepths)
            + " vs Gaussian "
            + ", ".join(f"{tanh['gaussian'][str(d)]['s_ratio_90_10']:.1e}" for d in tdepths),
            passed=all(r < 1 / 3 for r in ratios),
        )
    )
    within, worst = [], 0.0
    for init in ("delta_orthogonal", "gaussian"):
        for d in tdepths:
            st = tanh[init][str(d)]
            tol = _tanh_tolerance(cfg, d, st["se_nvar"], st["theory_nvar"])
            within.append(abs(st["nvar"] - st["theory_nvar"]) <= tol)
            worst = max(worst, abs(st["nvar"] - st["theory_nvar"]) / tol)
    result.append(
        sk.Claim(
            claim="tanh CNN at criticality: the spread matches the MLP's free probability, "
            "orthogonal for delta-orthogonal kernels, Gaussian for Gaussian ones",
            theory="L(μ₂/μ₁² − 1) and Lμ₂/μ₁²: "
            + ", ".join(
                f"{tanh['delta_orthogonal'][str(d)]['theory_nvar']:.1f}/"
                f"{tanh['gaussian'][str(d)]['theory_nvar']:.1f}"
                for d in tdepths
            )
            + f"; tolerance {cfg.n_se:g} SE + (L+1)/c relative",
            measured="var λ / mean²: "
            + ", ".join(
                f"L={d}: {tanh['delta_orthogonal'][str(d)]['nvar']:.1f}/"
                f"{tanh['gaussian'][str(d)]['nvar']:.1f}"
                for d in tdepths
            )
            + f"; largest |Δ|/tolerance {worst:.2f}",
            passed=all(within),
        )
    )
    return result


# ------------------------------------------------------------------------------------ figure


def figure(numbers: dict, out_dir: pathlib.Path) -> None:
    """Draw ``out_dir/NAME.png`` from ``numbers`` (the spectra from ``figure_data``)."""
    cfg = Config(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in numbers["config"].items()}
    )
    f = numbers["figure_data"]
    fig, axs = plt.subplots(1, 4, figsize=(22, 5.6), layout="constrained")
    cmap = plt.get_cmap("viridis")
    edges = np.arange(-6.0625, 3.07, 0.125)  # log10 lambda; lambda = 1 is a bin centre
    floor = 1e-6

    def hist(ax, v, **kw):
        v = np.ravel(v)
        keep = v >= floor
        ax.hist(
            np.log10(v[keep]),
            bins=edges,
            histtype="step",
            lw=1.6,
            weights=np.full(int(keep.sum()), 1.0 / v.size),
            **kw,
        )

    ax = axs[0]
    for i, d in enumerate(cfg.lin_depths):
        hist(
            ax,
            f["linear"][d],
            color=cmap(i / max(1, len(cfg.lin_depths) - 1) * 0.9),
            label=f"Gaussian, L = {d}",
        )
    dev = numbers["isometry"]["max_abs_dev"]
    ax.axvline(
        0.0,
        color="black",
        lw=2.5,
        label=f"delta-orthogonal, L = {cfg.iso_depth}:\nall λ = 1 (max |s−1| = {dev:.0e})",
    )
    ax.set(
        xlabel=r"$\log_{10} \lambda$ (λ: squared singular value of $J$; λ < 1e-6 not drawn)",
        ylabel="fraction of singular values per bin",
        title=f"linear CNN (1-D, n = {cfg.lin_n}, c = {cfg.width}, k = {KERNEL})",
    )
    ax.legend(fontsize=8, loc="upper left")

    ax = axs[1]
    lin = numbers["linear_gaussian"]
    d = np.asarray(cfg.lin_depths)
    dense = np.arange(1, max(d) + 1)
    ax.plot(
        dense,
        [gaussian_m2(cfg.width, int(x), (cfg.lin_n,), KERNEL) for x in dense],
        color="#2e8b57",
        lw=1.5,
        label=f"exact at c = {cfg.width} (Wick, per frequency)",
    )
    ax.plot(
        dense,
        dense + 1.0,
        color="gray",
        ls="--",
        lw=1.5,
        label="wide limit L + 1 = the Gaussian MLP's\n(jacobian_spectrum_moments)",
    )
    ax.errorbar(
        d,
        [lin[str(x)]["m2"] for x in d],
        yerr=[cfg.n_se * lin[str(x)]["se_m2"] for x in d],
        fmt="s",
        color="#2e8b57",
        ms=7,
        capsize=3,
        label=f"measured (± {cfg.n_se:g} SE)",
    )
    ax.errorbar(
        d,
        [lin[str(x)]["mean"] for x in d],
        yerr=[cfg.n_se * lin[str(x)]["se_mean"] for x in d],
        fmt="o",
        color="#c0392b",
        ms=6,
        capsize=3,
        label="measured E λ (theory: 1)",
    )
    ax.axhline(1.0, color="#c0392b", lw=0.8, ls=":")
    ax.set(
        xlabel="depth L",
        ylabel=r"moments of $\lambda$",
        xscale="log",
        yscale="log",
        title=r"linear CNN, Gaussian kernels: $E\,\lambda = 1$, $E\,\lambda^2$ grows as L",
    )
    ax.set_xticks(d, [str(x) for x in d])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")

    ax = axs[2]
    top = max(cfg.tanh_depths)
    for init, color in (("delta_orthogonal", "#7b3294"), ("gaussian", "#e08214")):
        for d, ls in zip(cfg.tanh_depths, ("-", "--", ":"), strict=False):
            hist(
                ax,
                f["tanh"][(init, d)],
                color=color,
                ls=ls,
                label=f"{init.replace('_', '-')}, L = {d}",
            )
    ax.axvline(0.0, color="black", lw=0.8, ls=":")
    pt = numbers["tanh_point"]
    ax.set(
        xlabel=r"$\log_{10} \lambda$ ($\lambda < 10^{-6}$ not drawn)",
        ylabel="fraction of singular values per bin",
        title=rf"tanh CNN at criticality ($\sigma_w^2$ = {pt['sigma_w2']:.3f}, "
        rf"$\sigma_b^2$ = {pt['sigma_b2']:g}, n = {cfg.tanh_n}, c = {cfg.width})",
    )
    ax.legend(fontsize=8, loc="upper left")

    ax = axs[3]
    tanh = numbers["tanh"]
    d = np.asarray(cfg.tanh_depths)
    for init, color, marker in (("delta_orthogonal", "#7b3294", "o"), ("gaussian", "#e08214", "s")):
        st = [tanh[init][str(x)] for x in d]
        ax.plot(
            d,
            [s["theory_nvar"] for s in st],
            color=color,
            lw=1.5,
            label=f"free probability ({'orthogonal' if init != 'gaussian' else 'Gaussian'} MLP)",
        )
        ax.errorbar(
            d,
            [s["nvar"] for s in st],
            yerr=[cfg.n_se * s["se_nvar"] for s in st],
            fmt=marker,
            color=color,
            ms=7,
            capsize=3,
            label=f"measured, {init.replace('_', '-')}",
        )
    ax.set(
        xlabel="depth L",
        ylabel=r"spread $\mathrm{var}(\lambda)/\mathrm{mean}(\lambda)^2$",
        xscale="log",
        yscale="log",
        title="tanh CNN: spread vs depth (± 3 SE)",
    )
    ax.set_xticks(d, [str(x) for x in d])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "Input-output Jacobian of deep circular CNNs (Xiao et al. 2018): delta-orthogonal "
        "kernels are an exact isometry when linear and near one with tanh; Gaussian kernels "
        f"spread as the MLP (top depth {top})",
        fontsize=12,
    )
    fig.savefig(pathlib.Path(out_dir) / f"{NAME}.png", dpi=80)
    plt.close(fig)


def run(out: pathlib.Path, *, quick: bool) -> list[sk.Claim]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = measure(quick=quick)
    figure(numbers, out)
    result = claims(numbers)
    sk.save_json(out / f"{NAME}.json", {k: v for k, v in numbers.items() if k != "figure_data"})
    return result


if __name__ == "__main__":
    run_alone(run, TITLE)
