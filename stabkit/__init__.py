"""stabkit: see why deep networks explode, vanish, overflow and underflow, in JAX.

Public API (each module's docstring has the details):

* :mod:`stabkit.stable_softmax`: stable ``logsumexp``, ``log_softmax``, ``softmax``,
  ``softmax_cross_entropy`` (masks included) and the textbook ``naive_*`` versions.
* :mod:`stabkit.precision`: dtype ``limits``, the backend ``probe`` (subnormals flushed or kept,
  overflow, ``0 * inf``), exact ``overflow_depth``/``underflow_depth`` of ``x0 * scale**k`` beside
  the closed form, the device ``chain``, and a ``census`` of normal/subnormal/zero/inf/NaN entries.
* :mod:`stabkit.activations`, :mod:`stabkit.init`: activations by name (``get_activation``, their
  ``derivative`` by ``jax.jvp``) and initializers by name (``get_initializer``: scaled identity,
  gaussian, orthogonal, glorot, he, lecun, standard).
* :mod:`stabkit.nets`, :mod:`stabkit.tracing`: a functional MLP (``mlp_init``/``mlp_apply``,
  hidden layers under ``lax.scan``) and its per-layer forward/backward ``trace`` (RMS, census,
  saturation, first inf/NaN/zero layer; depth is data), with the losses of
  :mod:`stabkit.losses` (``loss_names``); :mod:`stabkit.deep_linear`: the deep-linear closed
  forms ``deep_linear_gain`` and ``deep_linear_theory``.
* :mod:`stabkit.networks`: networks as stacks of blocks (``block``: dense, residual, attention,
  conv1d/conv2d, with layer/RMS/batch norm pre/post/inner, Fixup, learnable alpha; ``user_block``
  for the user's own init/apply pair): ``net_init``/``net_apply`` (depth is data), and
  ``trace`` (``trace_net``) at every block boundary and tap, backward by one ``jax.vjp`` per block.
* :mod:`stabkit.theory`: mean-field signal propagation in float64 (``q_map``, ``c_map``,
  ``iterate_maps``, ``mean_field`` with ``q_star``/``c_star``/``chi_1``/``xi_q``/``xi_c``/``phase``,
  the ``critical_line``) and Jacobian spectra (``jacobian_singular_values`` of sampled nets,
  ``jacobian_spectrum_moments`` from free probability).
* :mod:`stabkit.training`, :mod:`stabkit.fixes`: many MLPs trained at once with any optax optimizer
  (``TrainSpec``, ``make_runs``, ``train`` -> ``History``; depth, scale, activation, init, learning
  rate and seed are data; float16/bfloat16 with float32 master weights), ``diagnose`` (exploding /
  vanishing / healthy, with evidence) and the fixes as optax transformations:
  ``safe_clip_by_global_norm``, ``skip_nonfinite``, ``loss_scaling`` with a ``DynamicLossScale``.
* :mod:`stabkit.sweeps`: ``sweep`` a ``SweepSpec`` (depth x width x activation x init x scale x
  bias x dtype x seed) in one compiled kernel per (dtype, width), sharded over the devices, into
  an ``xarray.Dataset``; streamed to zarr and resumable (``out=``, ``resume=True``); ``load``;
  its plots (``stabkit.sweeps.plots``) and its comparison with the theory.
* :mod:`stabkit.distributed`: several processes (hosts, GPUs) running one ``sweep`` or ``train``
  grid: ``initialize`` (explicit, or a SLURM, Open MPI, Kubernetes or Cloud TPU job detected),
  ``ProcessFailure`` when another process stopped.
* :mod:`stabkit.inspection`: ``inspect(fn, *args)`` evaluates any JAX function's jaxpr equation
  by equation in one compiled program and returns a ``Report``: every ``Origin`` of an inf, a
  NaN or an underflow (primitive, source line, scope, forward/backward, loop iteration, entry,
  whether it reaches the output) and per-equation statistics.
* :mod:`stabkit.tracecount`: ``count_traces``, how many times JAX traced and compiled each
  function inside a block (a sweep or a training grid is meant to be a few kernels).
* :mod:`stabkit.reproduce`: the registry behind ``stabkit reproduce``.
"""

from stabkit import distributed
from stabkit.activations import (
    activation_names,
    derivative,
    get_activation,
    select_activation,
    value_and_derivative,
)
from stabkit.deep_linear import DeepLinearTheory, deep_linear_gain, deep_linear_theory
from stabkit.fixes import (
    DynamicLossScale,
    KahanState,
    LossScaleState,
    MasterWeightsState,
    SkipState,
    StochasticRoundingState,
    all_finite,
    independent_weight_decay,
    kahan_summation,
    loss_scale_of,
    loss_scaling,
    lost_updates,
    master_weights,
    safe_clip_by_global_norm,
    safe_global_norm,
    skip_nonfinite,
    stochastic_round,
    stochastic_rounding,
    update_stagnation,
)
from stabkit.init import InitRule, get_initializer, init_rule, initializer_names
from stabkit.inspection import Origin, Report, inspect
from stabkit.losses import loss_names
from stabkit.nets import MLPParams, mlp_apply, mlp_init
from stabkit.networks import (
    Block,
    NetParams,
    NetTrace,
    block,
    block_names,
    net_apply,
    net_init,
    trace_net,
    user_block,
)
from stabkit.precision import (
    FLOAT8_FORMATS,
    SUPPORTED_DTYPES,
    Behaviour,
    Census,
    Depth,
    Float8Recipe,
    Limits,
    Probe,
    census,
    chain,
    float8_combine,
    float8_matmul,
    float8_meta,
    float8_partition,
    float8_recipe,
    limits,
    overflow_depth,
    probe,
    underflow_depth,
)
from stabkit.reproduce import Claim, save_json
from stabkit.stable_softmax import (
    log_softmax,
    logsumexp,
    naive_log_softmax,
    naive_softmax,
    softmax,
    softmax_cross_entropy,
)
from stabkit.sweeps import NetSweepSpec, SweepSpec, load, net_sweep_input, sweep, sweep_input
from stabkit.theory import (
    PHASE_NAMES,
    JacobianMoments,
    MapIterates,
    MeanField,
    Profile,
    c_map,
    c_star,
    chi_1,
    compare_sweep,
    critical_line,
    iterate_maps,
    jacobian_singular_values,
    jacobian_spectrum_moments,
    mean_field,
    phase,
    predict_profile,
    predict_sweep,
    q_map,
    q_star,
    weight_variance,
    xi_c,
    xi_q,
)
from stabkit.tracecount import TraceCount, count_traces
from stabkit.tracing import Trace, trace
from stabkit.training import (
    Diagnosis,
    History,
    Runs,
    Task,
    Trainability,
    TrainSpec,
    diagnose,
    make_runs,
    markov_entropy,
    markov_sequences,
    markov_table,
    optimizer_names,
    teacher_classification,
    teacher_student,
    train,
    trainability_grid,
)

__version__ = "0.1.0"
