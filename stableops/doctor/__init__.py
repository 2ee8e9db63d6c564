"""The NaN doctor: find why a loss goes NaN, and keep the run alive.

- :func:`diagnose` examines a model on a sample of its data and returns a
  :class:`Report` of findings (severity, location, evidence, fix).
- ``stableops.callbacks.NaNGuard`` watches training and calls it on the batch
  that went non-finite; ``stableops.optimizers.SkipNonFinite`` skips such steps.
- ``checks`` is the registry of every check (id, stage, severity, fix):
  ``report.find(checks.INPUT_SCALE.id)``.
- ``stableops doctor`` (``python -m stableops doctor``) runs an embedded demo,
  or diagnoses a saved model and data; it lives on top of the doctor, in
  ``stableops.cli``.
"""

from stableops.doctor import _registry as checks
from stableops.doctor._diagnose import diagnose
from stableops.doctor._divergence import LossMonitor
from stableops.doctor._quiet import quiet_native_stderr
from stableops.doctor._report import Finding, Report

__all__ = ["Finding", "LossMonitor", "Report", "checks", "diagnose", "quiet_native_stderr"]
