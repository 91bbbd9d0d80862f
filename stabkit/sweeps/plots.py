"""Figures of a sweep (:func:`stabkit.sweep`): depth x scale heatmaps and per-layer profiles.

* :func:`heatmaps`: for each (dtype, width, init, bias_std), one row per activation and two
  panels: :math:`\\log_{10}` of the output RMS and of the backward gain (RMS of the input gradient
  over RMS of the output gradient, ``grad_ratio``), the median over seeds, depth on the x axis and
  the scale on the y axis. Cells where a seed's output holds an inf are black, NaN magenta. For the
  linear net with the scaled identity the closed form :math:`a^{\\mathrm{depth}+1}` is overlaid
  (dashed contours at the same levels, :func:`stabkit.deep_linear_gain`), with the depth at which
  the dtype's largest finite value is reached.
  Wherever the mean field applies (:func:`stabkit.theory.predict_sweep`: i.i.d. or orthogonal
  weights, any registered activation) the predicted :math:`\\log_{10}` output RMS and backward gain
  are drawn as dashed contours at the same levels, and the critical scale (:math:`\\chi_1 = 1`,
  :func:`stabkit.critical_line` mapped to the initializer's scale by
  :func:`stabkit.theory.weight_variance`) as a horizontal line.
* :func:`profiles`: per-layer RMS of the signal and of its gradient at the deepest depth, one line
  per scale, with the closed form for the deep linear net and the mean-field prediction (dashed,
  :func:`stabkit.theory.predict_sweep`) wherever it applies.

* :func:`net_profiles`: the same for a network sweep (:class:`stabkit.NetSweepSpec`): per block
  boundary, the RMS of h and of dL/dh and the RMS of each block's branch output, one line per
  (scale, alpha), one figure per (dtype, width, block, norm, placement, activation, init).
  :func:`plot` of a network sweep's dataset with ``kind="profile"`` draws these.

They write PNGs and return their paths.
"""

from __future__ import annotations

import math
import pathlib
import warnings
from typing import Any

import numpy as np

from stabkit._checks import positive_int, strict_bool
from stabkit.deep_linear import deep_linear_gain
from stabkit.reproduce import _output_dir
from stabkit.sweeps.spec import _layer_slots
from stabkit.sweeps.theory_comparison import predict_sweep
from stabkit.theory import critical_line, weight_variance

__all__ = ["heatmaps", "net_profiles", "plot", "profiles"]

_GROUPS = ("dtype", "width", "init", "bias_std")
_INF_COLOR, _NAN_COLOR, _ZERO_COLOR = "black", "magenta", "#9a9a9a"
_CRIT_COLOR = "#00b050"


_KINDS = {"heatmap": ("output_rms", "grad_ratio"), "profile": ("post_rms", "grad_post_rms")}


def _checked(ds, out, max_figures, theory, kind: str) -> tuple[pathlib.Path, int, bool]:
    """Validate the plots' arguments before anything is drawn or created.

    A dataset without a sweep's dimensions and the variables the plot reads is refused naming
    what is missing (it used to be a bare KeyError); ``max_figures=-1`` used to slice off the last
    figure and ``0`` to write nothing, silently.
    """
    import xarray as xr

    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"ds must be an xarray.Dataset from stabkit.sweep or stabkit.load, got "
            f"{type(ds).__name__}"
        )
    need_dims = (*_GROUPS, "activation", "depth", "scale", "seed") + (
        ("layer",) if kind == "profile" else ()
    )
    missing = [d for d in need_dims if d not in ds.dims] + [
        v for v in _KINDS[kind] if v not in ds.data_vars
    ]
    if missing:
        raise ValueError(
            f"ds is not a sweep dataset: it lacks {', '.join(missing)} (a {kind} plot needs the "
            f"dimensions {', '.join(need_dims)} and the variables {', '.join(_KINDS[kind])})"
        )
    out = _output_dir(out, "out", _PLOT_MARKER, _old_plots, create=False)
    return out, positive_int(max_figures, "max_figures", 1), strict_bool(theory, "theory")


_PLOT_MARKER = "stabkit-plot.json"


def _old_plots(path: pathlib.Path) -> bool:
    """A folder of a stabkit without the marker: it holds only heatmap/profile PNGs."""
    return all(
        p.is_file() and p.suffix == ".png" and p.name.startswith(("heatmap_", "profile_"))
        for p in path.iterdir()
    )


def _prediction(ds, theory: bool):
    """The mean-field prediction of ``ds``, or None (theory off, or an unregistered activation)."""
    if not theory:
        return None
    try:
        return predict_sweep(ds)
    except (KeyError, TypeError, ValueError) as e:  # e.g. a sweep of callables: names only
        warnings.warn(f"no mean-field overlay: {e}", stacklevel=3)
        return None


def _critical_scale(act: str, init: str, bias_std: float) -> float:
    """The initializer scale where chi_1 = 1 (NaN where undefined or not applicable)."""
    if init == "scaled_identity" and act != "linear":
        return math.nan
    try:
        sw = float(critical_line(act, bias_std**2))
    except (TypeError, ValueError):
        return math.nan
    return math.sqrt(sw / float(weight_variance(init, 1.0))) if math.isfinite(sw) else math.nan


def _seed_median(a) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN where the theory does not apply
        return np.nanmedian(a, axis=-1)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(ds) -> list[dict[str, Any]]:
    out = [{}]
    for dim in _GROUPS:
        out = [{**g, dim: v} for g in out for v in ds[dim].values.tolist()]
    return out


def _tag(group: dict[str, Any]) -> str:
    return "_".join(f"{k}-{v}" for k, v in group.items()).replace(".", "p")


def _log10_median(a: np.ndarray, axis: int) -> np.ndarray:
    """Median over ``axis`` of log10|a| where finite and nonzero (NaN where no value is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log10(np.abs(a))
    v = np.where(np.isfinite(v), v, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected
        return np.nanmedian(v, axis=axis)


def _finfo_max(dtype: str) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).max)


def _thin(n: int, most: int) -> list[int]:
    """At most ``most`` evenly spaced tick positions out of ``n`` cells, the last one included."""
    step = -(-n // most)
    return sorted({*range(0, n, step), n - 1})


def heatmaps(
    ds, out: str | pathlib.Path, *, max_figures: int = 32, theory: bool = True
) -> list[pathlib.Path]:
    """Depth x scale heatmaps of a sweep dataset, one PNG per (dtype, width, init, bias_std).

    Args:
        ds: a dataset from :func:`stabkit.sweep` or :func:`stabkit.load`.
        out: directory for the PNGs (created, with a ``stabkit-plot.json`` marker; a non-empty
            directory stabkit did not write is refused).
        max_figures: at most this many figures (the first groups in axis order), >= 1.
        theory: overlay the mean-field prediction (contours, critical scale) where it applies.

    Returns:
        The paths written.

    Raises:
        TypeError: ``ds`` is not a Dataset; ``out``, ``max_figures`` or ``theory`` of the wrong
            type.
        ValueError: ``ds`` lacks a sweep's dimensions or variables; ``max_figures`` < 1.
        NotADirectoryError: ``out`` is an existing file.
        FileExistsError: ``out`` is a non-empty directory that holds neither a
            ``stabkit-plot.json`` nor only earlier heatmap/profile PNGs (nothing is overwritten
            that stabkit did not write).
    """
    out, max_figures, theory = _checked(ds, out, max_figures, theory, "heatmap")
    plt = _pyplot()
    _output_dir(out, "out", _PLOT_MARKER, _old_plots)
    depth, scale = ds.depth.values, ds.scale.values
    acts = ds.activation.values.tolist()
    pred = _prediction(ds, theory)
    paths = []
    for group in _groups(ds)[:max_figures]:
        sub = ds.sel(group)
        fig, axes = plt.subplots(len(acts), 2, figsize=(10, 3.2 * len(acts)), squeeze=False)
        for row, act in enumerate(acts):
            a = sub.sel(activation=act)
            for col, (name, title) in enumerate(
                [("output_rms", "log10 output RMS"), ("grad_ratio", "log10 |dL/dx| / |dL/dy|")]
            ):
                ax = axes[row, col]
                vals = a[name].transpose("scale", "depth", "seed").values
                img = _log10_median(vals, axis=-1)
                finite = np.isfinite(img)
                lim = max(1.0, float(np.nanmax(np.abs(img))) if finite.any() else 1.0)
                mesh = ax.pcolormesh(
                    np.arange(len(depth) + 1) - 0.5,
                    np.arange(len(scale) + 1) - 0.5,
                    np.ma.masked_invalid(img),
                    cmap="RdBu_r",
                    vmin=-lim,
                    vmax=lim,
                    shading="flat",
                )
                fig.colorbar(mesh, ax=ax)
                # Cells a seed left non-finite or zero, by cause (the colour map cannot show them).
                bad_inf = np.isinf(vals).any(-1)
                bad_nan = np.isnan(vals).any(-1) & ~bad_inf
                bad_zero = (vals == 0).any(-1) & ~bad_inf & ~bad_nan
                for mask, color, label in (
                    (bad_inf, _INF_COLOR, "inf"),
                    (bad_nan, _NAN_COLOR, "NaN"),
                    (bad_zero, _ZERO_COLOR, "0 (underflow)"),
                ):
                    ys, xs = np.nonzero(mask)
                    if xs.size:
                        ax.scatter(xs, ys, marker="s", s=30, c=color, label=label)
                if act == "linear" and group["init"] == "scaled_identity":
                    _linear_theory(ax, sub, depth, scale, name, mesh)
                elif pred is not None:
                    p = pred[name].sel(group).sel(activation=act)
                    _mean_field_theory(ax, p.transpose("scale", "depth", "seed").values, mesh)
                if pred is not None:
                    crit = _critical_scale(act, group["init"], float(group["bias_std"]))
                    y = np.interp(crit, scale, np.arange(len(scale)), left=np.nan, right=np.nan)
                    if np.isfinite(y):
                        ax.axhline(
                            y, color=_CRIT_COLOR, lw=1.5, ls="-.", label="mean field: χ₁ = 1"
                        )
                xs, ys = _thin(len(depth), 16), _thin(len(scale), 20)
                ax.set_xticks(xs, [str(depth[i]) for i in xs], fontsize=7)
                ax.set_yticks(ys, [f"{scale[i]:.3g}" for i in ys], fontsize=7)
                ax.set_xlabel("depth")
                ax.set_ylabel("scale")
                ax.set_title(f"{act}: {title}", fontsize=9)
        handles = {}
        for ax in axes.ravel():
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, h)
        fig.suptitle(", ".join(f"{k}={v}" for k, v in group.items()), fontsize=10)
        fig.tight_layout()
        if handles:  # below the axes (and their labels); the saved image grows to hold it
            fig.legend(
                handles.values(),
                handles.keys(),
                loc="upper center",
                bbox_to_anchor=(0.5, 0.0),
                ncol=3,
                fontsize=8,
            )
        path = out / f"heatmap_{_tag(group)}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _linear_theory(ax, sub, depth, scale, name, mesh) -> None:
    """Dashed contours of a^(depth+1) and the depth where it passes the dtype's max."""
    gain = np.stack([deep_linear_gain(abs(s), np.asarray(depth) + 1) for s in scale])
    # output RMS = gain * rms(x), and rms(x) is about 1 for the built-in inputs; the backward
    # gain of the linear net is the same a^(depth+1).
    with np.errstate(divide="ignore"):
        theory = np.log10(gain)
    levels = np.linspace(*mesh.get_clim(), 9)
    if len(depth) > 1 and len(scale) > 1:
        ax.contour(
            np.arange(len(depth)),
            np.arange(len(scale)),
            theory,
            levels=levels,
            colors="k",
            linestyles="dashed",
            linewidths=0.7,
        )
    if name == "output_rms":
        big = math.log10(_finfo_max(str(sub.dtype.values)))
        # Depth at which a^(d+1) reaches the dtype's max, in the axis's index units.
        xs, ys = [], []
        for j, s in enumerate(scale):
            if abs(s) > 1:
                d = big / math.log10(abs(s)) - 1
                xs.append(np.interp(d, depth, np.arange(len(depth)), left=np.nan, right=np.nan))
                ys.append(j)
        if xs:
            ax.plot(xs, ys, "g-", lw=1.5, label=f"theory: a^(d+1) = max {sub.dtype.values}")
    ax.plot([], [], "k--", lw=0.7, label="theory: log10 a^(d+1) contours")


def _mean_field_theory(ax, predicted: np.ndarray, mesh) -> None:
    """Dashed contours of the predicted log10 value (scale x depth x seed) at the colour levels."""
    img = _seed_median(predicted)
    with np.errstate(divide="ignore", invalid="ignore"):
        img = np.log10(img)
    if img.shape[0] < 2 or img.shape[1] < 2 or not np.isfinite(img).any():
        return
    ax.contour(
        np.arange(img.shape[1]),
        np.arange(img.shape[0]),
        np.ma.masked_invalid(img),
        levels=np.linspace(*mesh.get_clim(), 9),
        colors="k",
        linestyles="dashed",
        linewidths=0.7,
    )
    ax.plot([], [], "k--", lw=0.7, label="mean field: log10 contours")


def profiles(
    ds, out: str | pathlib.Path, *, max_figures: int = 32, theory: bool = True
) -> list[pathlib.Path]:
    """Per-layer RMS of h and of dL/dh at the deepest depth, one line per scale (seed median).

    Args:
        ds: a dataset from :func:`stabkit.sweep` or :func:`stabkit.load`.
        out: directory for the PNGs (created).
        max_figures: at most this many figures.
        theory: overlay the mean-field prediction (dashed, same colour) where it applies.

    Returns:
        The paths written.

    Raises:
        TypeError, ValueError, NotADirectoryError: as :func:`heatmaps`.
    """
    out, max_figures, theory = _checked(ds, out, max_figures, theory, "profile")
    plt = _pyplot()
    _output_dir(out, "out", _PLOT_MARKER, _old_plots)
    d = int(ds.depth.values.max())
    acts = ds.activation.values.tolist()
    layers = np.arange(_layer_slots(d))  # input, hidden layers, readout of the deepest net
    paths = []
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, ds.sizes["scale"]))
    pred = _prediction(ds, theory)
    for group in _groups(ds)[:max_figures]:
        sub = ds.sel(group).sel(depth=d, layer=layers)
        fig, axes = plt.subplots(len(acts), 2, figsize=(10, 3 * len(acts)), squeeze=False)
        for row, act in enumerate(acts):
            a = sub.sel(activation=act)
            for col, name in enumerate(("post_rms", "grad_post_rms")):
                ax = axes[row, col]
                for s, color in zip(a.scale.values, colors, strict=True):
                    v = 10.0 ** _log10_median(
                        a[name].sel(scale=s).transpose("layer", "seed").values, -1
                    )
                    ax.semilogy(layers, v, color=color, label=f"scale {s:.3g}")
                    if pred is not None:
                        p = pred[name].sel(group).sel(activation=act, depth=d, scale=s)
                        pv = _seed_median(p.sel(layer=layers).transpose("layer", "seed").values)
                        if np.isfinite(pv).any():
                            ax.semilogy(layers, pv, color=color, ls="--", lw=0.9)
                    if (
                        act == "linear"
                        and group["init"] == "scaled_identity"
                        and name == "post_rms"
                    ):
                        rms0 = float(np.nanmedian(a.post_rms.sel(scale=s, layer=0)))
                        ax.semilogy(layers, rms0 * deep_linear_gain(abs(s), layers), "k:", lw=0.8)
                ax.set_title(f"{act}: {name} at depth {d}", fontsize=9)
                ax.set_xlabel("layer")
            axes[row, 0].legend(fontsize=6, ncol=2)
        note = " (dotted: a^l" + (", dashed: mean field)" if pred is not None else ")")
        fig.suptitle(", ".join(f"{k}={v}" for k, v in group.items()) + note, fontsize=10)
        fig.tight_layout()
        path = out / f"profile_{_tag(group)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot(
    ds,
    out: str | pathlib.Path,
    kind: str = "heatmap",
    *,
    max_figures: int = 32,
    theory: bool = True,
) -> list[pathlib.Path]:
    """``heatmaps`` (kind ``heatmap``) or ``profiles`` (kind ``profile``) of ``ds`` into ``out``.

    Raises:
        ValueError: an unknown ``kind``; otherwise as :func:`heatmaps`.
    """
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(_KINDS)}")
    if _is_net_sweep(ds):
        if kind != "profile":
            raise ValueError(
                "a network sweep's dataset has profile plots only (kind='profile'); heatmaps are "
                "the MLP sweep's"
            )
        return net_profiles(ds, out, max_figures=max_figures)
    if kind == "heatmap":
        return heatmaps(ds, out, max_figures=max_figures, theory=theory)
    return profiles(ds, out, max_figures=max_figures, theory=theory)


_NET_GROUPS = ("dtype", "width", "block", "norm", "norm_position", "activation", "init")
_NET_PANELS = (
    ("rms", "RMS of h"),
    ("grad_rms", "RMS of dL/dh"),
    ("branch_rms", "RMS of the branch F"),
)


def _is_net_sweep(ds) -> bool:
    return hasattr(ds, "dims") and "block" in ds.dims and "rms" in getattr(ds, "data_vars", {})


def net_profiles(ds, out: str | pathlib.Path, *, max_figures: int = 32) -> list[pathlib.Path]:
    """Per-boundary RMS of h, of dL/dh and of the branch output at the deepest depth of a network
    sweep, one line per (scale, alpha), the median over seeds.

    Args:
        ds: a dataset of :func:`stabkit.sweep` of a :class:`stabkit.NetSweepSpec`.
        out: directory for the PNGs (a new or empty one, or one these plots wrote).
        max_figures: at most this many figures, one per (dtype, width, block, norm, placement,
            activation, init).

    Returns:
        The paths written.

    Raises:
        TypeError: ``ds`` is not an ``xarray.Dataset``.
        ValueError: it is not a network sweep's (the dimensions or variables it lacks are named);
            ``max_figures`` < 1; ``out`` is not a directory these plots may write.
    """
    import xarray as xr

    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset from stabkit.sweep, got {type(ds).__name__}")
    need = (*_NET_GROUPS, "depth", "scale", "alpha", "seed", "layer")
    missing = [d for d in need if d not in ds.dims] + [
        v for v, _ in _NET_PANELS[:2] if v not in ds.data_vars
    ]
    if missing:
        raise ValueError(f"ds is not a network sweep's dataset: it lacks {', '.join(missing)}")
    max_figures = positive_int(max_figures, "max_figures", 1)
    out = _output_dir(out, "out", _PLOT_MARKER, _old_plots, create=False)
    plt = _pyplot()
    _output_dir(out, "out", _PLOT_MARKER, _old_plots)
    d = int(ds.depth.values.max())
    layers = np.arange(d + 2)
    panels = [(v, t) for v, t in _NET_PANELS if v in ds.data_vars]
    groups = [{}]
    for dim in _NET_GROUPS:
        groups = [{**g, dim: v} for g in groups for v in ds[dim].values.tolist()]
    pairs = [(s, a) for s in ds.scale.values.tolist() for a in ds.alpha.values.tolist()]
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, len(pairs)))
    paths = []
    for group in groups[:max_figures]:
        sub = ds.sel(group).sel(depth=d, layer=layers).squeeze("bias_std", drop=True)
        if "bias_std" in sub.dims:  # several biases: the first
            sub = sub.isel(bias_std=0)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for col, (name, title) in enumerate(panels):
            ax = axes[0, col]
            for (s, a), color in zip(pairs, colors, strict=True):
                v = sub[name].sel(scale=s, alpha=a).transpose("layer", "seed").values
                ax.semilogy(
                    layers,
                    10.0 ** _log10_median(v, -1),
                    color=color,
                    label=f"scale {s:.3g}, alpha {a:.3g}",
                )
            ax.set_title(f"{title} at depth {d}", fontsize=9)
            ax.set_xlabel("block boundary (0: input, depth + 1: readout)")
        axes[0, 0].legend(fontsize=6)
        fig.suptitle(
            ", ".join(f"{k}={v}" for k, v in group.items()) + " (median over seeds)", fontsize=9
        )
        fig.tight_layout()
        path = out / f"net_profile_{_tag(group)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
