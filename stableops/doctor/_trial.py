"""The trial run: train a throwaway copy of the model for a few steps and watch its loss.

A model that goes NaN in its first epoch usually does so within a handful of
steps: unscaled inputs or targets, or a learning rate too large for them, make
the first updates overshoot. Training a copy (same architecture, weights,
optimizer settings and loss; the user's model, optimizer and metrics are not
touched) on the user's data shows it directly, and a second copy at a lower
learning rate tells whether the rate alone is to blame.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np

from stableops.doctor import _data
from stableops.doctor._divergence import LossMonitor
from stableops.doctor._quiet import quiet_native_stderr

#: Steps of the trial when ``diagnose(..., trial_steps=None)`` is given labels.
#: Divergence from unscaled data or a too-large learning rate shows within a
#: few updates (each overshooting step multiplies the loss); 20 steps leave
#: room for a slow climb past LOSS_EXPLOSION and cost well under a second
#: for a small model (the steps run eagerly: no tracing or compilation).
DEFAULT_TRIAL_STEPS = 20

#: How much lower a learning rate the second trial tries: one decade, then two.
LOWER_RATES = (0.1, 0.01)


@dataclasses.dataclass
class TrialResult:
    steps: int  # steps run
    losses: list
    diverged_at: int | None = None  # 1-based step of the first non-finite or exploded loss
    verdict: str | None = None  # LossMonitor.NON_FINITE or EXPLODED
    reference: float | None = None  # the run's loss level before it diverged
    learning_rate: float | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


class TrialUnavailable(Exception):
    """The model cannot be copied or compiled for a trial; the reason is the message."""


def copy_model(model, learning_rate_factor=1.0, loss=None):
    """A compiled copy of ``model`` with its weights, a fresh optimizer of the same config."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise TrialUnavailable("the model has no optimizer (compile it to get a trial run)")
    try:
        clone = keras.models.clone_model(model)
    except Exception as error:  # noqa: BLE001 - subclassed models without get_config, ...
        raise TrialUnavailable(f"the model cannot be copied ({type(error).__name__})") from None
    clone.set_weights(model.get_weights())
    fresh = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    rate = None
    if learning_rate_factor != 1.0:
        rate = float(np.asarray(fresh.learning_rate)) * learning_rate_factor
        fresh.learning_rate = rate  # TypeError for a schedule: the caller skips it
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise TrialUnavailable("the model has no loss (compile it, or pass loss=)")
    # Eager steps: no tracing or XLA compilation for a few steps.
    clone.compile(optimizer=fresh, loss=loss, run_eagerly=True)
    return clone, rate


def run_trial(
    model, x, y, *, steps, batch_size, loss=None, learning_rate_factor=1.0
) -> TrialResult:
    """Train a copy for ``steps`` steps over ``(x, y)``, cycling through it; stop if it diverges."""
    clone, rate = copy_model(model, learning_rate_factor, loss)
    monitor = LossMonitor()
    result = TrialResult(steps=0, losses=[], learning_rate=rate)
    batches = list(_data.batches(x, y, batch_size))
    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.simplefilter("ignore")
        for step in range(steps):
            _, xb, yb = batches[step % len(batches)]
            value = float(np.asarray(clone.train_on_batch(xb, yb, return_dict=True)["loss"]))
            result.steps, result.losses = step + 1, result.losses + [value]
            verdict = monitor.observe(value)
            if verdict in (monitor.NON_FINITE, monitor.EXPLODED):
                result.diverged_at, result.verdict = step + 1, verdict
                break
            weights_finite = all(np.isfinite(np.asarray(w)).all() for w in clone.trainable_weights)
            if not weights_finite:
                result.diverged_at, result.verdict = step + 1, monitor.NON_FINITE
                break
    result.reference = monitor.reference
    return result
