"""``stabkit.inspect``: where inf, NaN and underflow come from, in any JAX function.

* :func:`inspect` (:mod:`~stabkit.inspection.api`): evaluate a function's jaxpr equation by
  equation in one compiled program and return a :class:`Report`.
* :class:`Report`, :class:`Origin` (:mod:`~stabkit.inspection.report`): the origins, the
  per-equation and per-scope statistics, the text summary and the figure.
* :mod:`~stabkit.inspection.program` (the flattened jaxpr), :mod:`~stabkit.inspection.evaluate`
  (the interpreter), :mod:`~stabkit.inspection.array_stats` (what is recorded of each value).
"""

from stabkit.inspection.api import MAX_ITERATIONS, inspect
from stabkit.inspection.report import Origin, Report

__all__ = ["MAX_ITERATIONS", "Origin", "Report", "inspect"]
