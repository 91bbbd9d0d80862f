"""A sweep against the mean field: :func:`predict_sweep` and :func:`compare_sweep`.

The adapter between the sweep engine and the theory: it reads a sweep dataset (its coordinates
and its ``spec``), rebuilds each configuration's input batch (:func:`stabkit.sweep_input`) and
weight variance, and runs :func:`stabkit.theory.predict_profile`'s core on all of them. It lives
with the sweeps so that the theory (``stabkit.theory.profiles``, ``.fixed_points``) imports nothing
of the sweep engine; :mod:`stabkit.theory` re-exports both functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stabkit._checks import _check_scalar
from stabkit.init import init_rule
from stabkit.sweeps.kernel import sweep_input
from stabkit.sweeps.spec import _AXES, SweepSpec
from stabkit.theory.profiles import Profile, _check_profile_memory, _profile, weight_variance
from stabkit.theory.quadrature import DEFAULT_ORDER, _check_order, _kernel

#: How each initializer's draw (stabkit.init.init_rule) enters the backward recursion.
_WEIGHT_KIND = {
    "normal": "gaussian",
    "uniform": "gaussian",
    "orthogonal": "orthogonal",
    "identity": "identity",
}


def _sweep_spec(
    ds, name: str = "ds", variables: tuple[str, ...] = (), activations=None, spec: bool = True
) -> SweepSpec | None:
    """The spec of a sweep dataset (:meth:`SweepSpec.from_dataset`, with ``activations``; None
    without ``spec``: :func:`compare_sweep` reads none, and a sweep of callables has only their
    names); ValueError naming what is missing if ``ds`` is not a sweep dataset."""
    import xarray as xr

    what = f"{name} must be a dataset from stabkit.sweep or stabkit.load"
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{what}, got {type(ds).__name__}")
    rebuilt = SweepSpec.from_dataset(ds, activations) if spec else None
    missing = [d for d in (*_AXES, "layer") if d not in ds.coords]
    if missing:
        raise ValueError(f"{what}: coordinate(s) {', '.join(missing)} missing")
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise ValueError(f"{what}: variable(s) {', '.join(missing)} missing")
    unknown = [str(d) for d in ds.dtype.values if str(d) not in _ROUNDING]
    if unknown:
        raise ValueError(f"{what}: its dtype coordinate holds {unknown}; valid: {list(_ROUNDING)}")
    return rebuilt


def predict_sweep(
    ds, *, activations: dict[str, Callable] | None = None, order: int = DEFAULT_ORDER
):
    """The mean-field prediction of every configuration of a sweep, aligned with it.

    Each config's :math:`\\sigma_w^2` is :func:`weight_variance` of its ``init`` and ``scale``
    (exactly the weight variance the sweep draws), :math:`\\sigma_b^2 = \\) ``bias_std**2``, and
    :math:`q_0` the mean square of the very input batch it saw (:func:`stabkit.sweep_input` of
    its seed, rounded to its dtype); :func:`predict_profile` then follows the sweep's loss
    (``mse``: :math:`\\partial L/\\partial y = y/N`, :math:`N` = batch x width entries, so the
    predicted top gradient RMS is :math:`\\sqrt{q^{L+1}}/N`; ``sum``: 1).

    Where the theory applies (NaN elsewhere, and where the quadrature is unresolved, see
    :func:`predict_profile`): i.i.d. weights (every normal and uniform initializer) and
    orthogonal ones, any activation; the scaled identity only with the linear activation (then
    :math:`z^l = a z^{l-1} + b^l` follows the linear maps exactly in expectation; with a
    nonlinearity its pre-activations are not Gaussian and the prediction is NaN).

    Args:
        ds: a dataset from :func:`stabkit.sweep` or :func:`stabkit.load`.
        activations: callables for activation names that are not registered (a sweep of
            callables stores only their names).
        order: quadrature nodes (as for :func:`q_map`).

    Returns:
        An ``xarray.Dataset`` with the sweep's coordinates: ``pre_rms``, ``post_rms``,
        ``grad_post_rms`` (the sweep's own units), ``grad_gain`` (``grad_post_rms`` over its
        value at the readout), ``chi`` and the ``*_spread`` fields of :class:`Profile` over
        (config..., layer), NaN above a config's readout; ``output_rms``, ``grad_ratio``
        (as the sweep defines them), ``sigma_w2`` and ``sigma_b2`` per config.

    Raises:
        ValueError: ``ds`` is not a sweep, or names an activation that is neither registered
            nor in ``activations``.

    Examples:
        (Not run as a doctest: compiling a sweep takes seconds; ``tests/test_theory.py`` runs
        it.) ::

            ds = sk.sweep(sk.SweepSpec(depth=32, width=256, activation="tanh", scale=1.3))
            pred = predict_sweep(ds)
            np.log10(ds.pre_rms / pred.pre_rms)  # within compare_sweep's tolerance
    """
    import xarray as xr

    spec = _sweep_spec(ds, activations=activations)
    order = _check_order(order)
    activations = dict(activations or {})
    dims = _AXES
    c = {d: ds[d].values.tolist() for d in dims}
    n_layers = int(ds.sizes["layer"])
    n_configs = math.prod(len(v) for v in c.values())
    _check_profile_memory(n_configs, n_layers, "ds (configs, layers)", (n_configs, n_layers))
    # q0 of each (dtype, width, seed): the batch the sweep fed in, in float64.
    q0 = np.empty((len(c["dtype"]), len(c["width"]), len(c["seed"])))
    for i, dt in enumerate(c["dtype"]):
        for j, w in enumerate(c["width"]):
            for s, seed in enumerate(c["seed"]):
                with jax.enable_x64(dt == "float64"):
                    x = sweep_input(int(seed), spec.batch, int(w), dt, spec.input)
                    x = np.asarray(x.astype(jnp.float32 if dt != "float64" else jnp.float64))
                q0[i, j, s] = np.mean(np.square(x.astype(np.float64)))
    sw = np.stack([weight_variance(i, np.asarray(c["scale"], np.float64)) for i in c["init"]])
    sb = np.square(np.asarray(c["bias_std"], np.float64))
    depth = np.asarray(c["depth"])
    kind = np.array([_WEIGHT_KIND[init_rule(i).distribution] for i in c["init"]])
    # Broadcast to (dtype, width, init, depth, scale, bias, seed); activation handled per slice.
    shp = tuple(len(c[d]) for d in dims if d != "activation")
    b = np.broadcast_to
    full = {
        "sw": b(sw[None, None, :, None, :, None, None], shp),
        "sb": b(sb[None, None, None, None, None, :, None], shp),
        "q0": b(q0[:, :, None, None, None, None, :], shp),
        "depth": b(depth[None, None, None, :, None, None, None], shp),
        "kind": b(kind[None, None, :, None, None, None, None], shp),
        "width": b(np.asarray(c["width"])[None, :, None, None, None, None, None], shp),
    }
    flat = {k: np.ascontiguousarray(v).ravel() for k, v in full.items()}
    mse = spec.loss == "mse"
    names = list(Profile._fields[1:])
    out = {f: np.full((len(c["activation"]), *shp, n_layers), np.nan) for f in names}
    for ai, act in enumerate(c["activation"]):
        k = _kernel(activations.get(act, act), order, "auto")
        ok = (flat["kind"] != "identity") | (k.kind == "linear")
        if not ok.any():
            continue
        prof = _profile(
            k,
            flat["sw"][ok],
            flat["sb"][ok],
            flat["q0"][ok],
            flat["depth"][ok],
            n_layers,
            flat["kind"][ok] != "gaussian",
            np.full(int(ok.sum()), mse),
        )
        for f in names:
            a = np.full((flat["sw"].size, n_layers), np.nan)
            a[ok] = getattr(prof, f)
            out[f][ai] = a.reshape(*shp, n_layers)
    # activation goes third: (dtype, width, activation, init, ...)
    out = {f: np.moveaxis(v, 0, 2) for f, v in out.items()}
    entries = float(spec.batch) * b(np.asarray(c["width"], np.float64)[None, :], shp[:2])
    top_idx = depth + 1
    pre = out["pre_rms"]
    # The readout's RMS, picked per depth: (dtype, width, activation, init, depth, scale, ...)
    idx = b(top_idx[None, None, None, None, :, None, None, None, None], (*pre.shape[:-1], 1))
    y_rms = np.take_along_axis(pre, idx, axis=-1)[..., 0]
    if mse:
        scale_top = y_rms / entries[:, :, None, None, None, None, None, None]
    else:
        scale_top = np.ones_like(y_rms)
    grad = out["grad_rms"] * scale_top[..., None]
    lay = ("layer",)
    data = {
        "pre_rms": (dims + lay, out["pre_rms"]),
        "post_rms": (dims + lay, out["post_rms"]),
        "grad_post_rms": (dims + lay, grad),
        "grad_gain": (dims + lay, out["grad_rms"]),
        "chi": (dims + lay, out["chi"]),
        "pre_spread": (dims + lay, out["pre_spread"]),
        "post_spread": (dims + lay, out["post_spread"]),
        "grad_spread": (dims + lay, out["grad_spread"]),
        "output_rms": (dims, y_rms),
        "grad_ratio": (dims, out["grad_rms"][..., 0]),
        "sigma_w2": (("init", "scale"), sw),
        "sigma_b2": (("bias_std",), sb),
    }
    coords = {d: ds[d].values for d in (*dims, "layer")}
    attrs = {"spec": ds.attrs["spec"], "order": order}
    return xr.Dataset(data, coords=coords, attrs=attrs)


#: Relative rounding a layer may add to a measured RMS, per dtype: the unit roundoff eps/2 of
#: the matrix product's output and of the activation, twice (z and h), so eps per layer. It
#: matters only for the half formats (bfloat16: 0.8% a layer); float32/float64 rounding is far
#: below the finite-width spread.
_ROUNDING = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
#: The statistics themselves are sums of N squares in float32 (float64 for float64 sweeps):
#: pairwise summation keeps their relative error within about log2(N) eps; 64 eps covers it.
_STAT_ROUNDING = {
    "float16": 2.0**-17,
    "bfloat16": 2.0**-17,
    "float32": 2.0**-17,
    "float64": 2.0**-46,
}
DEFAULT_N_SIGMA = 4.0


def compare_sweep(ds, prediction=None, *, n_sigma: float = DEFAULT_N_SIGMA, **kwargs):
    """Log-ratio errors of a sweep's per-layer RMS against the mean field, with a tolerance.

    For ``pre_rms``, ``post_rms`` and ``grad_gain`` (the gradient RMS over its value at the
    readout, which takes the forward pass's error at the output out of the backward comparison)
    the error is :math:`\\log_{10}(\\text{measured}/\\text{predicted})` and the tolerance

    .. math::

        \\text{tol} = \\frac{n_\\sigma}{\\ln 10} \\frac{\\text{spread}}{\\sqrt{n}} +
        \\frac{k \\, \\epsilon_{\\text{dtype}}}{\\ln 10},

    with ``spread`` from :class:`Profile` (about :math:`\\sqrt{\\kappa l}/2` after :math:`l`
    layers: :math:`c\\sqrt{l/n}` with :math:`c = n_\\sigma \\sqrt{\\kappa}/(2 \\ln 10)`, 1.23
    for linear and tanh near 0 (:math:`\\kappa = 2`), 1.94 for relu (:math:`\\kappa = 5`) at the
    default :math:`n_\\sigma = 4`, less where the map contracts), :math:`k` the layers the
    statistic went through (:math:`l` forward, :math:`L + 1 - l` backward) and
    :math:`\\epsilon` the dtype's rounding (:math:`2^{-10}` float16, :math:`2^{-7}` bfloat16,
    negligible in float32/float64). The spread is a single-example bound (a batch of
    decorrelated inputs fluctuates less), so the tolerance shrinks like :math:`1/\\sqrt n` and is
    met with room at any width. Entries whose measured or predicted value is not finite or lies
    outside the dtype's normal range (overflow, underflow: the theory is for real arithmetic)
    get a NaN tolerance and are not judged.

    Args:
        ds: a sweep dataset (:func:`stabkit.sweep`, :func:`stabkit.load`).
        prediction: :func:`predict_sweep` of ``ds`` (computed if None, with ``kwargs``).
        n_sigma: standard deviations of allowance, > 0.

    Returns:
        An ``xarray.Dataset`` aligned with ``ds``: errors ``pre_rms``, ``post_rms``,
        ``grad_gain`` and their ``tol_*`` (config..., layer), and ``passed`` per config (every
        judged entry within tolerance; True where nothing could be judged).

    Raises:
        ValueError: ``n_sigma`` not finite and positive; ``ds`` not a sweep.
    """
    import ml_dtypes
    import xarray as xr

    n_sigma = _check_scalar(n_sigma, "n_sigma", lo=0.0, closed=False)
    _sweep_spec(ds, "ds", ("pre_rms", "post_rms", "grad_post_rms"), spec=False)
    if prediction is None:
        pred = predict_sweep(ds, **kwargs)
    else:
        if kwargs:
            raise TypeError(
                f"compare_sweep got {sorted(kwargs)} with a prediction: they are predict_sweep's "
                "arguments and would be ignored"
            )
        need = ("pre_rms", "post_rms", "grad_post_rms", "grad_gain")
        more = ("pre_spread", "post_spread", "grad_spread")
        _sweep_spec(prediction, "prediction", (*need, *more), spec=False)
        pred = prediction
    depth = ds.depth
    layer = ds.layer
    top = depth + 1
    meas_gain = ds.grad_post_rms / ds.grad_post_rms.sel(layer=top)
    width = ds.width.astype(np.float64)
    walked = {
        "pre_rms": layer.astype(np.float64),
        "post_rms": layer.astype(np.float64),
        "grad_gain": (top - layer).clip(min=0).astype(np.float64),
    }
    eps = xr.DataArray([_ROUNDING[str(d)] for d in ds.dtype.values], coords={"dtype": ds.dtype})
    eps_stat = xr.DataArray(
        [_STAT_ROUNDING[str(d)] for d in ds.dtype.values], coords={"dtype": ds.dtype}
    )
    info = {str(d): ml_dtypes.finfo(str(d)) for d in ds.dtype.values}
    lo = xr.DataArray(
        [float(info[str(d)].tiny) for d in ds.dtype.values], coords={"dtype": ds.dtype}
    )
    hi = xr.DataArray(
        [float(info[str(d)].max) for d in ds.dtype.values], coords={"dtype": ds.dtype}
    )
    out = {}
    judged_ok = []
    for name, measured, predicted, spread in (
        ("pre_rms", ds.pre_rms, pred.pre_rms, pred.pre_spread),
        ("post_rms", ds.post_rms, pred.post_rms, pred.post_spread),
        ("grad_gain", meas_gain, pred.grad_gain, pred.grad_spread),
    ):
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.log10(measured / predicted)
        rounding = walked[name] * eps + 2 * eps_stat
        tol = (n_sigma * spread / np.sqrt(width) + rounding) / math.log(10)
        absolute = ds.grad_post_rms if name == "grad_gain" else measured
        abs_pred = pred.grad_post_rms if name == "grad_gain" else predicted
        inside = (
            np.isfinite(err)
            & (absolute >= lo)
            & (absolute <= hi)
            & (abs_pred >= lo)
            & (abs_pred <= hi)
            & (layer <= top)
        )
        tol = tol.where(inside)
        out[name] = err.where(layer <= top)
        out[f"tol_{name}"] = tol
        judged_ok.append(((np.abs(err) <= tol) | tol.isnull()).all("layer"))
    passed = judged_ok[0] & judged_ok[1] & judged_ok[2]
    dims = _AXES
    result = xr.Dataset(
        {k: v.transpose(*dims, "layer") for k, v in out.items()},
        attrs={"n_sigma": n_sigma},
    )
    result["passed"] = passed.transpose(*dims)
    return result
