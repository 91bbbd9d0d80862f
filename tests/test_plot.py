"""Tests for stabkit.sweeps.plots' mean-field overlays (the sweep plots themselves:
tests/test_sweep.py).

The "sweep" drawn here is a mean-field prediction (stabkit.theory.predict_sweep of a sweep-shaped
dataset), which has every variable the plots read: no sweep kernel is compiled.
"""

import json
import math

import matplotlib
import matplotlib.figure
import matplotlib.pyplot
import numpy as np
import pytest
import xarray as xr

import stabkit as sk
from stabkit import theory as th
from stabkit.sweeps import plots as plot


def _fake(**spec):
    s = sk.SweepSpec(**spec)
    coords = s.coords()
    coords["layer"] = np.arange(s.n_layers)
    return th.predict_sweep(xr.Dataset(coords=coords, attrs={"spec": json.dumps(s.to_dict())}))


@pytest.fixture(scope="module")
def data():
    return _fake(
        depth=(2, 8, 24),  # 24 as test_theory's SIGNAL: the tanh profile compiles once
        width=64,
        activation=("tanh", "relu"),
        init=("gaussian", "scaled_identity"),
        scale=(0.8, 1.1, 1.38),
        bias_std=math.sqrt(0.05),
        batch=4,
    )


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plots save, kept open for inspection instead of written."""
    saved = []

    def savefig(fig, path, **kwargs):
        del kwargs
        saved.append((path, fig))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    monkeypatch.setattr(matplotlib.pyplot, "close", lambda fig=None: None)
    return saved


def test_critical_scale():
    # tanh at sigma_b^2 = 0.05: sigma_w^2 = 1.7606 (gaussian scale = sigma_w); He: half of it.
    crit = float(sk.critical_line("tanh", 0.05))
    assert plot._critical_scale("tanh", "gaussian", math.sqrt(0.05)) == pytest.approx(
        math.sqrt(crit), rel=1e-9
    )
    assert plot._critical_scale("tanh", "he_normal", math.sqrt(0.05)) == pytest.approx(
        math.sqrt(crit / 2), rel=1e-9
    )
    assert plot._critical_scale("relu", "he_uniform", 0.3) == 1.0  # chi_1 = sigma_w^2 / 2
    assert plot._critical_scale("linear", "scaled_identity", 0.0) == 1.0
    assert math.isnan(plot._critical_scale("tanh", "scaled_identity", 0.0))


def _dashed(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_profiles_draw_the_mean_field(data, figures, tmp_path):
    plot.profiles(data, tmp_path, max_figures=2)
    (_, gauss), (_, ident) = figures
    for ax in gauss.axes:
        # one dashed prediction per scale on every panel (tanh and relu, h and dL/dh)
        lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(_dashed(ax)) == 3 == len(lines)
        for solid, dashed in zip(lines, _dashed(ax), strict=True):
            # the "measurement" is the prediction itself: the curves coincide
            np.testing.assert_allclose(solid.get_ydata(), dashed.get_ydata(), rtol=1e-12)
    # scaled identity with tanh/relu: no mean field, nothing dashed
    assert all(not _dashed(ax) for ax in ident.axes if ax.get_title())
    figures.clear()
    plot.profiles(data, tmp_path, max_figures=1, theory=False)
    assert all(not _dashed(ax) for ax in figures[0][1].axes)


def test_heatmaps_draw_the_critical_scale_and_contours(data, figures, tmp_path):
    plot.heatmaps(data, tmp_path, max_figures=1)
    (_, fig) = figures[0]
    panels = [ax for ax in fig.axes if ax.get_title()]
    crit = plot._critical_scale("tanh", "gaussian", math.sqrt(0.05))  # 1.327: in 1.1..1.38
    y = np.interp(crit, [0.8, 1.1, 1.38], [0, 1, 2])
    tanh = [ax for ax in panels if ax.get_title().startswith("tanh")]
    for ax in tanh:
        lines = [line for line in ax.get_lines() if "χ₁ = 1" in str(line.get_label())]
        assert len(lines) == 1 and lines[0].get_ydata()[0] == pytest.approx(y)
        assert ax.collections  # the mesh, plus the contour set of the prediction
    relu = [ax for ax in panels if ax.get_title().startswith("relu")]
    # relu's critical scale (gaussian: sqrt 2) lies above 1.38: no line there
    assert all(not any("χ₁" in str(ln.get_label()) for ln in ax.get_lines()) for ax in relu)
    figures.clear()
    plot.heatmaps(data, tmp_path, max_figures=1, theory=False)
    panels = [ax for ax in figures[0][1].axes if ax.get_title()]
    assert all(not any("χ₁" in str(ln.get_label()) for ln in ax.get_lines()) for ax in panels)
