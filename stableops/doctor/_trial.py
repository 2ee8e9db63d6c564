"""The trial run: train a throwaway copy of the model for a few steps and watch its loss.

A model that goes NaN in its first epoch usually does so within a handful of
steps: unscaled inputs or targets, or a learning rate too large for them, make
the first updates overshoot. Training a copy (same architecture, weights,
optimizer settings and loss; the user's model, optimizer and metrics are not
touched) on the user's data shows it directly, and copies at lower learning
rates (a decade at a time) tell whether the rate alone is to blame.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from stableops.doctor import _data
from stableops.doctor import _thresholds as th
from stableops.doctor._divergence import LossMonitor
from stableops.doctor._model_checks import all_layers
from stableops.doctor._quiet import quiet_native_stderr
from stableops.ops import dtype_limits

#: Steps of the trial when ``diagnose(..., trial_steps=None)`` is given labels.
#: Divergence from unscaled data or a too-large learning rate shows within a
#: few updates (each overshooting step multiplies the loss); 20 steps leave
#: room for a slow climb past LOSS_EXPLOSION and cost well under a second
#: for a small model (the steps run eagerly: no tracing or compilation).
DEFAULT_TRIAL_STEPS = 20

#: The lower-rate trials go down a decade at a time (10x, 100x, ... lower), at
#: least MIN_LOWER_RATE_DECADES of them, and on to the optimizer's Keras default
#: rate when the rate is further above it (SGD(1000) is 5 decades above SGD's
#: 0.01; a rate that only a 10x or 100x cut could fix would go unnamed), but
#: never more than MAX_LOWER_RATE_DECADES: a diverging trial stops within a step
#: or two, so each costs little, and a million-fold cut is far past any rate a
#: user would choose.
MIN_LOWER_RATE_DECADES = 2
MAX_LOWER_RATE_DECADES = 6


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


def copy_model(model, learning_rate_factor=1.0, loss=None, check_inputs=None):
    """A compiled copy of ``model``: its weights and state, a fresh optimizer of the same config.

    The copy keeps what changes the loss: the loss (or ``loss``) and, with the
    model's own loss, its ``loss_weights``. ``check_inputs`` (a batch): the
    copy must predict what the model predicts on it, else ``TrialUnavailable``.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise TrialUnavailable("the model has no optimizer (compile it to get a trial run)")
    try:
        clone = _clone_architecture(model)
    except Exception as error:  # noqa: BLE001 - subclassed models without get_config, ...
        raise TrialUnavailable(f"the model cannot be copied ({type(error).__name__})") from None
    clone.set_weights(model.get_weights())
    _load_layer_state(model, clone)
    if check_inputs is not None:
        _check_same_predictions(model, clone, check_inputs)
    fresh = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    rate = None
    if learning_rate_factor != 1.0:
        rate = float(np.asarray(fresh.learning_rate)) * learning_rate_factor
        schedule = learning_rate_schedule(fresh)
        fresh.learning_rate = (
            rate if schedule is None else _ScaledSchedule(schedule, learning_rate_factor)
        )
    loss_weights = None
    if loss is None:
        loss, loss_weights = getattr(model, "loss", None), _compiled_loss_weights(model)
    if loss is None:
        raise TrialUnavailable("the model has no loss (compile it, or pass loss=)")
    # Eager steps: no tracing or XLA compilation for a few steps.
    clone.compile(optimizer=fresh, loss=loss, loss_weights=loss_weights, run_eagerly=True)
    return clone, rate


def learning_rate_schedule(optimizer):
    """The optimizer's ``LearningRateSchedule`` (a wrapper's: the wrapped one's), or ``None``.

    >>> decay = keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.9)
    >>> type(learning_rate_schedule(keras.optimizers.SGD(decay))).__name__
    'ExponentialDecay'
    >>> learning_rate_schedule(keras.optimizers.SGD(0.1)) is None
    True
    """
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    config = optimizer.get_config().get("learning_rate")
    return keras.optimizers.schedules.deserialize(config) if isinstance(config, dict) else None


class _ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule's rates times a constant ``factor`` (a lower-rate trial of a scheduled
    optimizer; NaNGuard's ``ScaledSchedule`` holds a variable scale, in a part the doctor
    does not import)."""

    def __init__(self, schedule, factor):
        self.schedule, self.factor = schedule, factor

    def __call__(self, step):
        return self.schedule(step) * self.factor


def _clone_architecture(model):
    """``keras.models.clone_model(model)`` without compiling the copy.

    ``clone_model`` compiles the copy of a compiled model from its compile
    config, which fails to look up a custom loss, metric or optimizer that is
    not registered (``TypeError``). The copy is compiled by ``copy_model`` with
    the loss object itself, so the model counts as uncompiled while it is
    copied; its ``compiled`` flag is restored afterwards.
    """
    compiled = getattr(model, "compiled", False)
    if compiled:
        model.compiled = False
    try:
        return keras.models.clone_model(model)
    finally:
        if compiled:
            model.compiled = True


def _load_layer_state(model, clone):
    """Each layer's state as loading a saved model restores it, not only its variables.

    ``set_weights`` assigns variables; a layer may derive more from them when it
    is loaded: ``Normalization`` builds the mean and variance it divides by in
    ``finalize_state``, which its ``load_own_variables`` calls. So each layer of
    the copy loads its original's ``save_own_variables`` store, as
    ``keras.saving.load_model`` does.
    """
    originals, copies = all_layers(model), all_layers(clone)
    if len(originals) != len(copies):
        return  # left to the prediction check
    for original, copy in zip(originals, copies):
        if type(original) is not type(copy) or getattr(original, "layers", None):
            continue
        store = {}
        try:
            original.save_own_variables(store)
            copy.load_own_variables(store)
        except Exception:  # noqa: BLE001 - unbuilt or custom state: the prediction check decides
            continue


def _check_same_predictions(model, clone, x):
    """``TrialUnavailable`` unless the copy computes what the model computes on ``x``.

    Inference mode (no dropout or noise), the same weights: the outputs agree to
    the last bits. A difference beyond sqrt(eps) of the outputs' scale is no
    rounding but state the copy lacks (an adapted layer's vocabulary, ...),
    and a trial of such a copy would report a divergence of its own.
    """
    with quiet_native_stderr():
        expected = tf.nest.flatten(model(x, training=False))
        got = tf.nest.flatten(clone(x, training=False))
    for want, have in zip(expected, got):
        dtype = tf.as_dtype(want.dtype)
        want = np.asarray(want, dtype=np.float64)
        have = np.asarray(have, dtype=np.float64)
        scale = np.max(np.abs(want[np.isfinite(want)]), initial=1.0)
        tolerance = np.sqrt(dtype_limits(dtype.name).eps) * scale if dtype.is_floating else 0.0
        if want.shape != have.shape or not np.allclose(
            want, have, rtol=0.0, atol=tolerance, equal_nan=True
        ):
            raise TrialUnavailable(
                "a copy of the model does not compute what the model computes (a layer's state "
                "that copying its weights does not carry)"
            )


def _compiled_loss_weights(model):
    """The ``loss_weights`` the model was compiled with (``None`` without)."""
    try:
        return (model.get_compile_config() or {}).get("loss_weights")
    except Exception:  # noqa: BLE001 - a model that cannot describe its compile settings
        return None


def lower_rate_factors(optimizer, rate) -> tuple:
    """Factors for the lower-rate trials: 0.1, 0.01, ... down to the optimizer's default rate.

    >>> lower_rate_factors(keras.optimizers.SGD(1000.0), 1000.0)  # SGD's default: 0.01
    (0.1, 0.01, 0.001, 0.0001, 1e-05)
    >>> lower_rate_factors(keras.optimizers.Adam(0.01), 0.01)  # at least two decades
    (0.1, 0.01)
    """
    default = keras_default_learning_rate(optimizer)
    decades = MIN_LOWER_RATE_DECADES
    if rate > 0 and default > 0:
        # Rounded to 6 places first: 1000 -> 0.01 is 5 decades, not 6 (log10 gives
        # 5.000000000000001 there).
        decades = max(decades, math.ceil(round(math.log10(rate / default), 6)))
    return tuple(10.0**-k for k in range(1, min(decades, MAX_LOWER_RATE_DECADES) + 1))


def keras_default_learning_rate(optimizer) -> float:
    """The ``learning_rate`` default of the optimizer's class (the wrapped one's for a wrapper).

    Keras's own: 0.01 for SGD, 0.001 for Adam, RMSprop and the other adaptive
    ones; ``DEFAULT_LEARNING_RATE`` (0.001) for a class without a numeric default.
    """
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    try:
        default = inspect.signature(type(optimizer)).parameters["learning_rate"].default
    except (KeyError, TypeError, ValueError):  # no such argument, no signature
        return th.DEFAULT_LEARNING_RATE
    return float(default) if isinstance(default, (int, float)) else th.DEFAULT_LEARNING_RATE


def run_trial(
    model, x, y, *, steps, batch_size, loss=None, learning_rate_factor=1.0
) -> TrialResult:
    """Train a copy for ``steps`` steps over ``(x, y)``, cycling through it; stop if it diverges."""
    batches = list(_data.batches(x, y, batch_size))
    clone, rate = copy_model(model, learning_rate_factor, loss, check_inputs=batches[0][1])
    monitor = LossMonitor()
    result = TrialResult(steps=0, losses=[], learning_rate=rate)
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
