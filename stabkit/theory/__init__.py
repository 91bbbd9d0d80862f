"""Signal-propagation theory: mean field (q-map, c-map, chi_1, depth scales) and Jacobian spectra.

A wide random network with weights :math:`W^l_{ij} \\sim N(0, \\sigma_w^2 / n)` and biases
:math:`b^l_i \\sim N(0, \\sigma_b^2)` has Gaussian pre-activations :math:`z^l = h^{l-1} W^l + b^l`
whose variance :math:`q^l` and the correlation :math:`c^l` between two inputs follow two maps
(Poole et al. 2016, eqs. 3 and 5; Schoenholz et al. 2017, eqs. 2-4), with
:math:`u \\sim N(0, q)` and :math:`(u_1, u_2)` Gaussian of variances :math:`q` and correlation
:math:`c`:

.. math::

    q^{l+1} = \\mathcal{Q}(q^l) = \\sigma_w^2 E[\\phi(u)^2] + \\sigma_b^2, \\qquad
    c^{l+1} = \\mathcal{C}(c^l) = \\frac{\\sigma_w^2 E[\\phi(u_1)\\phi(u_2)] + \\sigma_b^2}
                                        {\\mathcal{Q}(q^l)}.

The first layer sees the input itself: :math:`q^1 = \\sigma_w^2 |x|^2/n + \\sigma_b^2`. At the
fixed point :math:`q^*` the slope of the c-map at :math:`c = 1`,
:math:`\\chi_1 = \\sigma_w^2 E[\\phi'(u)^2]`, separates the **ordered** phase (:math:`\\chi_1 < 1`:
every pair of inputs becomes identical, :math:`c^* = 1`, gradients vanish) from the **chaotic** one
(:math:`\\chi_1 > 1`: :math:`c^* < 1`, gradients explode); :math:`\\chi_1 = 1` is **critical**.
Perturbations of the fixed points decay as :math:`e^{-l/\\xi}` with depth scales (Schoenholz et al.
2017, eqs. 6 and 9-10)

.. math::

    \\xi_q^{-1} = -\\log \\big(\\sigma_w^2 E[\\phi''(u)\\phi(u) + \\phi'(u)^2]\\big), \\qquad
    \\xi_c^{-1} = -\\log \\chi_c, \\quad \\chi_c = \\sigma_w^2 E[\\phi'(u_1)\\phi'(u_2)]
    \\text{ at } c^*,

so :math:`\\xi_c = -1/\\log \\chi_1` in the ordered phase and :math:`\\xi_c \\to \\infty` at
criticality: networks train up to about :math:`6 \\xi_c` layers.

Every expectation is computed in float64 (inside ``jax.enable_x64``, whatever the global flag) by
quadrature of a stated ``order`` (``order`` nodes in 1-D, ``order**2`` for the 2-D c-map), or by
a closed form where one exists (``method="auto"``):

* ``linear``: :math:`E[\\phi^2] = q`, :math:`E[\\phi_1\\phi_2] = qc`, :math:`\\chi_1 = \\sigma_w^2`.
* ``relu``: :math:`E[\\phi^2] = q/2`; the arc-cosine kernel (Cho & Saul 2009)
  :math:`E[\\phi_1\\phi_2] = \\frac{q}{2\\pi}(\\sin\\theta + (\\pi - \\theta)\\cos\\theta)`,
  :math:`E[\\phi'_1\\phi'_2] = \\frac{\\pi - \\theta}{2\\pi}`, :math:`\\theta = \\arccos c`; so
  :math:`\\chi_1 = \\sigma_w^2/2` and the only critical point is :math:`(2, 0)`.
* ``erf``: Williams' kernel (Williams 1997) :math:`E[\\phi_1\\phi_2] = \\frac{2}{\\pi}
  \\arcsin \\frac{2qc}{1 + 2q}`, :math:`E[\\phi'_1\\phi'_2] = \\frac{4}{\\pi}((1+2q)^2 -
  4q^2c^2)^{-1/2}`.

Accuracy of the quadrature (default ``order=128``): the rule is the trapezoidal rule after the
substitution :math:`z = \\sinh(t)/\\sqrt{\\max(q, 1)}`, so its nodes crowd where
:math:`\\phi(\\sqrt q z)` changes (on the scale :math:`1/\\sqrt q`) and widen geometrically in the
Gaussian's tails; for analytic integrands it converges exponentially (Trefethen & Weideman 2014).
Against mpmath, tanh's :math:`E[\\phi'^2]` is right to 1e-15 for :math:`q \\le 10^4` and 1e-13 at
:math:`q = 10^6` (Gauss-Hermite with 128 fixed nodes, used before, was 5% off at :math:`q = 16` and
90% at 144); erf agrees with its closed forms to ~1e-15, in the 2-D c-map too. Activations with
a kink in :math:`\\phi'` (elu, selu) converge like ``1/order**2`` (~1e-3 at 128).
:math:`\\phi''` is taken by autodiff, so :math:`\\phi\\phi''` must have no point mass where
:math:`\\phi \\ne 0` (true for every registered activation).

**Validation.** Every public function checks all of its arguments before anything is traced or
compiled, and raises ``TypeError``/``ValueError`` naming the argument and the value: parameters must
be real numbers or arrays of them (strings, bools, None, complex numbers and ragged lists are
refused); a NaN or inf parameter is a user error, not a result, and the message says ``NaN`` or
``inf`` and where in the array it sits; arrays that do not broadcast are named with their shapes;
an activation callable is traced once (``jax.eval_shape``, nothing runs) and must return an array
of its input's shape and dtype, twice differentiable by ``jax.jvp``; and the memory a call would
take (its broadcast shape, quadrature ``order``, ``depth``) is estimated and refused beyond the
machine's (``stabkit._checks.memory_limit``), with the estimate in the message.

Every function takes an activation (a registered name or a JAX-traceable elementwise callable) and
variances that broadcast against each other (grids welcome: a 200 x 200 phase diagram is one
compiled, vectorized call), and returns NumPy float64 arrays of the broadcast shape (NumPy scalars
for scalar input). Fixed points are found by safeguarded Newton iterations written here (no SciPy);
the critical line by bisection in :math:`\\log \\sigma_w^2`.

:func:`predict_profile` follows the maps layer by layer for a whole network (pre- and
post-activation RMS, and the gradient RMS with the correction a mean-square loss needs), with the
finite-width spread of a measurement; :func:`predict_sweep` does it for every configuration of a
:func:`stabkit.sweep` and :func:`compare_sweep` judges the sweep against it at a tolerance that
shrinks like :math:`1/\\sqrt{n}`.

The second half is the spectrum of the input-output Jacobian :math:`J = \\partial h^L /
\\partial x` (:func:`jacobian_singular_values` measures it on sampled nets;
:func:`jacobian_spectrum_moments` predicts the mean and variance of its squared singular values by
free probability, Pennington, Schoenholz & Ganguli 2017).

Where each part lives (one concept a file; the functions above are re-exported here):

* :mod:`stabkit.theory.quadrature`: the q-adapted sinh rule and the kernel of an activation's
  Gaussian expectations (``_kernel``, ``_Kernel``), argument preparation and the memory bounds.
* :mod:`stabkit.theory.closed_forms`: the linear, relu and erf expectations (their one home).
* :mod:`stabkit.theory.maps`: :func:`q_map`, :func:`c_map`, :func:`iterate_maps`.
* :mod:`stabkit.theory.fixed_points`: :func:`mean_field` and :func:`q_star`, :func:`c_star`,
  :func:`chi_1`, :func:`xi_q`, :func:`xi_c`, :func:`phase` (the Newton solvers).
* :mod:`stabkit.theory.critical`: :func:`critical_line`.
* :mod:`stabkit.theory.profiles`: :func:`weight_variance`, :func:`predict_profile`.
* :mod:`stabkit.theory.jacobian`: the Jacobian spectrum (``jacobian_singular_values`` of
  sampled nets, ``jacobian_spectrum_moments`` from free probability).
* :mod:`stabkit.theory.residual`: :func:`residual_mean_field`, the mean field of residual
  stacks (Yang & Schoenholz 2017), forward q^l and the gradient per block.
* :mod:`stabkit.theory.normalization`: batch norm's gradient explosion rate at initialization
  (:func:`batchnorm_gradient_rate`, Yang et al. 2019) and the pre-/post-LN gradient scales
  (:func:`layernorm_gradient_profile`, Xiong et al. 2020).
* :mod:`stabkit.sweeps.theory_comparison`: :func:`predict_sweep`, :func:`compare_sweep` (with the
  sweeps, so that the theory imports nothing of the sweep engine; loaded here at first use).
* ``stabkit._checks``: the argument validators shared with the rest of stabkit.

References:
    B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein, S. Ganguli, "Exponential expressivity in deep
    neural networks through transient chaos", NeurIPS 2016.
    S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep information propagation",
    ICLR 2017 (the maps, chi_1, the depth scales and the tanh phase diagram).
    J. Pennington, S. S. Schoenholz, S. Ganguli, "Resurrecting the sigmoid in deep learning through
    dynamical isometry: theory and practice", NeurIPS 2017 (sec. 2: moments of the spectrum of
    JJ^T from the S-transform).
    Y. Cho, L. K. Saul, "Kernel methods for deep learning", NeurIPS 2009 (arc-cosine kernel, n=1).
    C. K. I. Williams, "Computing with infinite networks", NeurIPS 1997 (the erf kernel).
"""

from __future__ import annotations

from stabkit.theory.critical import critical_line
from stabkit.theory.fixed_points import (
    PHASE_NAMES,
    MeanField,
    c_star,
    chi_1,
    mean_field,
    phase,
    q_star,
    xi_c,
    xi_q,
)
from stabkit.theory.jacobian import (
    JacobianMoments,
    jacobian_singular_values,
    jacobian_spectrum_moments,
)
from stabkit.theory.maps import MapIterates, c_map, iterate_maps, q_map
from stabkit.theory.normalization import (
    BatchNormRate,
    batchnorm_gradient_rate,
    batchnorm_gradient_rate_limit,
    layernorm_gradient_profile,
    loglog_slope,
    mlp_branch_moments,
)
from stabkit.theory.profiles import Profile, predict_profile, weight_variance
from stabkit.theory.quadrature import DEFAULT_ORDER
from stabkit.theory.residual import ResidualMeanField, residual_mean_field


def __getattr__(name: str):
    # predict_sweep and compare_sweep live with the sweeps (stabkit.sweeps.theory_comparison),
    # which import this package's modules; importing them here, at first use, keeps the import
    # graph acyclic (the sweeps package may be imported before this one).
    if name in ("compare_sweep", "predict_sweep"):
        from stabkit.sweeps import theory_comparison

        return getattr(theory_comparison, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_ORDER",
    "PHASE_NAMES",
    "BatchNormRate",
    "JacobianMoments",
    "MapIterates",
    "MeanField",
    "Profile",
    "ResidualMeanField",
    "batchnorm_gradient_rate",
    "batchnorm_gradient_rate_limit",
    "c_map",
    "c_star",
    "chi_1",
    "compare_sweep",
    "critical_line",
    "iterate_maps",
    "jacobian_singular_values",
    "jacobian_spectrum_moments",
    "layernorm_gradient_profile",
    "loglog_slope",
    "mean_field",
    "mlp_branch_moments",
    "phase",
    "predict_profile",
    "predict_sweep",
    "q_map",
    "q_star",
    "residual_mean_field",
    "weight_variance",
    "xi_c",
    "xi_q",
]
