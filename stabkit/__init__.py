"""stabkit: see why deep networks explode, vanish, overflow and underflow, in JAX.

Public API (each module's docstring has the details):

* :mod:`stabkit.softmax`: stable ``logsumexp``, ``log_softmax``, ``softmax``,
  ``softmax_cross_entropy`` (masks included) and the textbook ``naive_*`` versions.
* :mod:`stabkit.precision`: dtype ``limits``, the backend ``probe`` (subnormals flushed or kept,
  overflow, ``0 * inf``), exact ``overflow_depth``/``underflow_depth`` of ``x0 * scale**k`` beside
  the closed form, the device ``chain``, and a ``census`` of normal/subnormal/zero/inf/NaN entries.
* :mod:`stabkit.reproduce`: the registry behind ``stabkit reproduce``.
"""

from stabkit.precision import (
    SUPPORTED_DTYPES,
    Behaviour,
    Census,
    Depth,
    Limits,
    Probe,
    census,
    chain,
    limits,
    overflow_depth,
    probe,
    underflow_depth,
)
from stabkit.reproduce import Claim, reproduce, save_json
from stabkit.softmax import (
    log_softmax,
    logsumexp,
    naive_log_softmax,
    naive_softmax,
    softmax,
    softmax_cross_entropy,
)

__version__ = "0.1.0"
