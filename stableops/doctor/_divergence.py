"""Is a run diverging? One rule for ``NaNGuard`` (during training) and ``diagnose``'s trial run."""

from __future__ import annotations

import collections
import math

import numpy as np

from stableops.doctor import _thresholds as th

NON_FINITE, EXPLODED, HIGH, HEALTHY = "non_finite", "exploded", "high", "healthy"


class LossMonitor:
    """Classify each batch loss against the run's own history.

    ``observe(loss)`` returns:

    - ``"non_finite"``: NaN or inf;
    - ``"exploded"``: above ``LOSS_EXPLOSION`` x the reference level, above
      the run's first loss (a loss still below where training started is not a
      divergence, however small the reference has become), and either a jump
      (above ``LOSS_EXPLOSION`` x every loss of the last ``LOSS_WINDOW``
      batches) or a climb (the last ``LOSS_WINDOW`` losses, this one included,
      all above ``LOSS_EXPLOSION`` x the reference). A hard batch in a run
      that started low (resumed training, fine-tuning: its first loss is no
      ceiling for the noise) is neither: it stands out from the median, not
      from the recent batches, and the batches around it are ordinary;
    - ``"high"``: above ``LOSS_HEALTHY`` x the reference: not a divergence yet,
      but not evidence that the weights are good either;
    - ``"healthy"``.

    The reference level is the lowest median of ``LOSS_WINDOW`` consecutive
    finite, non-exploded batch losses seen so far: a slow geometric climb is
    measured against where the run was, not against its own recent past.
    Losses that are not positive (a cosine similarity, a log-likelihood) have
    no scale to explode against: only non-finite values count then.
    """

    NON_FINITE, EXPLODED, HIGH, HEALTHY = NON_FINITE, EXPLODED, HIGH, HEALTHY

    def __init__(self):
        self.first = None
        self.reference = None
        self._recent = collections.deque(maxlen=th.LOSS_WINDOW)

    def observe(self, loss) -> str:
        if loss is None:
            return HEALTHY
        loss = float(loss)
        if not math.isfinite(loss):
            return NON_FINITE
        verdict = HEALTHY
        if self.reference is not None and self.reference > 0:
            if self._exploded(loss):
                return EXPLODED  # not part of the history
            if loss > th.LOSS_HEALTHY * self.reference:
                verdict = HIGH
        if self.first is None:
            self.first = loss
        self._recent.append(loss)
        median = float(np.median(self._recent))
        self.reference = median if self.reference is None else min(self.reference, median)
        return verdict

    def _exploded(self, loss) -> bool:
        limit = th.LOSS_EXPLOSION
        if loss <= limit * self.reference or loss <= self.first:
            return False
        jump = loss > limit * max(self._recent)
        climb = min([*self._recent, loss][-th.LOSS_WINDOW :]) > limit * self.reference
        return jump or climb

    def ratio(self, loss) -> float | None:
        """``loss`` over the reference level (None without a positive reference)."""
        if self.reference is None or self.reference <= 0 or loss is None:
            return None
        return float(loss) / self.reference
