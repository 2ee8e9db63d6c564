"""The NaN doctor: find why a loss goes NaN, and keep the run alive.

- :func:`diagnose` examines a model on a sample of its data and returns a
  :class:`Report` of findings (severity, location, evidence, fix).
- ``stableops.callbacks.NaNGuard`` watches training and calls it on the batch
  that went non-finite; ``stableops.optimizers.SkipNonFinite`` skips such steps.
- ``stableops doctor`` (``python -m stableops doctor``) runs an embedded demo,
  or diagnoses a saved model and data (``stableops.doctor.cli``).
"""

from stableops.doctor._diagnose import diagnose
from stableops.doctor._divergence import LossMonitor
from stableops.doctor._report import Finding, Report

__all__ = ["Finding", "LossMonitor", "Report", "diagnose"]
