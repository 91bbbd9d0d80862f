"""Train many networks at once with any optax optimizer, record the history, diagnose the run.

The note names what a researcher sees while training: **exploding** gradients make the loss
unstable and then NaN (overflow); **vanishing** gradients leave the loss large and nearly unchanged
(the early layers receive almost no gradient). This package reproduces both in real training runs
and recognises them from the run's history. Where each part lives:

========================= ==================================================================
``tasks.py``              :class:`Task` and the tasks that need no download,
                          :func:`teacher_student` and :func:`teacher_classification`
``sequences.py``          the next-token task :func:`markov_sequences` and its exact optimum
                          :func:`markov_entropy`
``optimizers.py``         the optimizer registry (:func:`optimizer_names`), the chain of
                          fixes a spec wraps around the optimizer (schedule, independent
                          weight decay, clipping, skipping, loss scaling) and its rounding
                          rule
``spec.py``               :class:`TrainSpec`, what one compilation serves
``runs.py``               :class:`Runs` and :func:`make_runs`, the configurations trained
``history.py``            the :class:`History` :func:`train` records and one record's statistics
``loop.py``               the training kernel :func:`train`
``processes.py``          a grid in chunks of runs (``chunk_size``), split over processes
                          and gathered
``diagnosis.py``          :func:`diagnose` and its :class:`Diagnosis`
``trainability.py``       the trainable-depth study :func:`trainability_grid`, :class:`Trainability`
========================= ==================================================================

* Tasks that need no download: :func:`teacher_student` (regression onto a random relu teacher) and
  :func:`teacher_classification` (the teacher's arg-max as the label).
* :class:`TrainSpec` fixes what one compilation serves (task, widths, the activations and
  initializers to choose from, optimizer, steps, dtypes, fixes); :func:`make_runs` lists the
  configurations, where **depth, weight scale, activation, initializer, learning rate and seed are
  data**. :func:`train` runs all of them in one ``jit``: ``vmap`` over the configurations,
  ``lax.scan`` over the steps, and returns a :class:`History` sampled every ``log_every`` steps:
  loss, gradient and update global norms, per-layer gradient RMS, the :class:`stabkit.Census` of
  gradient entries (normal/subnormal/zero/inf/NaN, by bit pattern), the loss scale and
  non-finite events.
* One seed rule with :func:`stabkit.sweep`: a run's initial network is the sweep's network of
  the same (activation, init, depth, width, scale, bias_std, seed), drawn from ``key(seed)``.
* Mixed precision: ``dtype="float16"`` or ``"bfloat16"`` runs parameters and activations in that
  format; ``master_dtype="float32"`` keeps float32 master weights (the forward pass casts them
  down, the gradient comes back up through the cast). The loss is always computed in float32.
  ``dtype="float64"`` (or a float64 ``master_dtype`` or loss scale) really trains in float64:
  :func:`train` enters ``jax.enable_x64(True)`` itself, leaving the global flag as it was, and
  the loss and the records are then float64 too.
* The fixes of :mod:`stabkit.fixes` are switches: ``clip_norm``, ``max_consecutive_skips`` and
  ``loss_scale``; any other optax transformation goes in through ``optimizer``.
* Small transformers: a task with a sequence axis (:func:`markov_sequences`) and
  ``block=stabkit.block("attention", causal=True, ...)``; the transformer fixes are per-run data
  (``make_runs(warmup=, z_loss=, weight_decay=, softcap=)``), qk-layernorm is the block's, and
  the records add the attention logits' maximum and entropy per block and the output
  log-partition. Low precision: ``TrainSpec(rounding="kahan" | "stochastic")``,
  ``History.lost_updates`` and, for ``float8`` blocks, the per-block float8 census.
* :func:`diagnose` returns a verdict per run, ``"exploding"``, ``"vanishing"``, ``"healthy"``
  (and for transformers ``"attention_logit_growth"``, ``"output_logit_divergence"``,
  ``"loss_spike"``), with its evidence.

Examples:
    The note's cases in one call, 30 hidden layers each: :math:`W = 1.5 I` and :math:`W = 0.5 I`
    deep linear nets, a Glorot sigmoid net and a He relu net.

    >>> import jax
    >>> task = teacher_student(jax.random.key(0), n=64, in_dim=16, teacher_depth=1)
    >>> spec = TrainSpec(task, max_depth=30, width=32, steps=150, log_every=5,
    ...                  optimizer="momentum", activation=("linear", "sigmoid", "relu"),
    ...                  init=("scaled_identity", "glorot_normal", "he_normal"))
    >>> runs = make_runs(spec, scale=[1.5, 0.5, 1, 1],
    ...                  activation=["linear", "linear", "sigmoid", "relu"],
    ...                  init=["scaled_identity", "scaled_identity", "glorot_normal", "he_normal"],
    ...                  lr=0.005, product=False)
    >>> history = train(spec, runs)
    >>> history.loss.shape, history.layer_grad_rms.shape  # (runs, records[, layers])
    ((4, 30), (4, 30, 31))
    >>> d = diagnose(history)
    >>> d.verdict
    ('exploding', 'vanishing', 'vanishing', 'healthy')
    >>> print(d.explain(0))
    run 0: exploding; first non-finite loss/gradient at step 1; gradient non-finite; ...
"""

from stabkit.training.diagnosis import Diagnosis, diagnose
from stabkit.training.history import History
from stabkit.training.loop import train
from stabkit.training.optimizers import optimizer_names
from stabkit.training.runs import Runs, make_runs
from stabkit.training.sequences import markov_entropy, markov_sequences, markov_table
from stabkit.training.spec import TrainSpec
from stabkit.training.tasks import Task, teacher_classification, teacher_student
from stabkit.training.trainability import Trainability, trainability_grid

__all__ = [
    "Diagnosis",
    "History",
    "Runs",
    "Task",
    "TrainSpec",
    "Trainability",
    "diagnose",
    "make_runs",
    "markov_entropy",
    "markov_sequences",
    "markov_table",
    "optimizer_names",
    "teacher_classification",
    "teacher_student",
    "train",
    "trainability_grid",
]
