"""``stableops.callbacks``: NaNGuard, which catches the first non-finite batch and explains it."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

__all__ = ["NaNGuard", "NonFiniteTrainingError"]

_ACTIONS = ("stop", "raise", "continue")
# Findings that name where values first went non-finite, in data-flow order.
_ORIGIN_CHECKS = (
    "input.non_finite",
    "input.float16_overflow",
    "activation.non_finite",
    "loss.non_finite",
    "loss.raised",
    "gradient.non_finite",
)


class NonFiniteTrainingError(RuntimeError):
    """Raised by ``NaNGuard(action="raise")``; carries the event and the report."""

    def __init__(self, message, *, event=None, report=None):
        super().__init__(message)
        self.event = event
        self.report = report


class NaNGuard(keras.callbacks.Callback):
    """Stop a NaN at the first batch, restore the last good weights, and say why.

    After every training batch the guard checks the batch's loss and every
    weight (one fused ``all(isfinite)`` reduction). While they are finite it
    keeps a copy of the weights and the optimizer state. On the first
    non-finite loss or weight it:

    1. restores the last good weights and optimizer state (from before the
       offending batch);
    2. re-runs the offending batch eagerly, outside XLA, with
       ``stableops.diagnose``: the first layer and op that went non-finite
       and the likely cause (bad labels, unscaled inputs, fully masked rows,
       float16 overflow, exploding gradients, ...);
    3. reports it (``verbose``) and records it in ``events``/``report``;
    4. acts: ``"stop"`` ends training (``model.stop_training``), ``"raise"``
       raises :class:`NonFiniteTrainingError`, ``"continue"`` multiplies the
       learning rate by ``lr_factor``, restarts the epoch's running metrics
       (so the NaN batch does not poison them) and carries on, at most
       ``max_recoveries`` times before it stops.

    It works with ``jit_compile=True``: the check runs between compiled steps,
    and the re-run is eager. Keras's ``logs["loss"]`` in a batch callback is
    the running mean of the epoch's batch losses; it becomes non-finite exactly
    at the first non-finite batch loss, so this detects that batch (not the
    epoch's end, unlike checking epoch logs), and the batch loss itself is
    recomputed by the re-run.

    Cost: one reduction over all weights per batch, plus one on-device copy of
    all weights and optimizer slots every ``snapshot_every`` batches (about
    three times the model's size in memory with Adam). For large models set
    ``snapshot_every`` higher: the restore then goes back up to that many
    batches. To re-run the offending batch the guard keeps a reference to the
    current batch (no copy); this needs ``steps_per_execution=1`` and a
    non-distributed ``fit``, otherwise the report says the batch was
    unavailable.

    Args:
        action: ``"stop"`` (default), ``"raise"`` or ``"continue"``.
        lr_factor: learning-rate multiplier on ``"continue"``, in ``(0, 1]``.
        max_recoveries: how many times ``"continue"`` may recover before the
            guard stops training (``None``: no limit).
        snapshot_every: copy the good weights every this many batches.
        diagnose: re-run the offending batch through ``stableops.diagnose``.
        max_diagnoses: how many events get their own diagnosis (each is an
            eager pass over the batch); later events repeat the first one's.
        verbose: 1 prints each event (first one with the full report), 0 is
            silent.

    Attributes:
        events: one dict per non-finite batch: ``epoch``, ``batch``, ``step``,
            ``trigger`` (``"loss"`` or ``"weights"``), ``loss``,
            ``nonfinite_weights``, ``restored_step``, ``layer``, ``op``,
            ``cause``, ``action``.
        report: the :class:`stableops.Report` of the first event (or ``None``).
        recoveries: how many times ``"continue"`` recovered.

    Example:
        >>> guard = NaNGuard(action="continue", lr_factor=0.5)
        >>> model.fit(x, y, callbacks=[guard])
        >>> guard.events[0]["cause"]
        'labels.range: 3 labels are outside the valid class range [0, 10) ...'
    """

    def __init__(
        self,
        action="stop",
        *,
        lr_factor=0.5,
        max_recoveries=5,
        snapshot_every=1,
        diagnose=True,
        max_diagnoses=1,
        verbose=1,
    ):
        super().__init__()
        if action not in _ACTIONS:
            raise ValueError(f"`action` must be one of {_ACTIONS}, got action={action!r}")
        if not (isinstance(lr_factor, (int, float)) and 0 < lr_factor <= 1):
            raise ValueError(f"`lr_factor` must be in (0, 1], got lr_factor={lr_factor!r}")
        if max_recoveries is not None and (not isinstance(max_recoveries, int) or max_recoveries < 0):
            raise ValueError(
                f"`max_recoveries` must be a non-negative int or None, got max_recoveries={max_recoveries!r}"
            )
        if not isinstance(max_diagnoses, int) or max_diagnoses < 0:
            raise ValueError(
                f"`max_diagnoses` must be a non-negative int, got max_diagnoses={max_diagnoses!r}"
            )
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(
                f"`snapshot_every` must be a positive int, got snapshot_every={snapshot_every!r}"
            )
        self.action = action
        self.lr_factor = float(lr_factor)
        self.max_recoveries = max_recoveries
        self.snapshot_every = snapshot_every
        self.run_diagnosis = bool(diagnose)
        self.max_diagnoses = max_diagnoses
        self.verbose = verbose
        self.events = []
        self.report = None
        self.recoveries = 0
        self._last_batch = None
        self._original_train_function = None
        self._diagnose_error = None

    # ------------------------------------------------------------------ setup
    def on_train_begin(self, logs=None):
        self.events, self.report, self.recoveries = [], None, 0
        self._step = 0
        self._epoch = 0
        self._epoch_start_step = 0
        self._good_step = 0
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._variables = list(self.model.weights) + (
            list(optimizer.variables) if optimizer is not None else []
        )
        self._float_variables = [v for v in self._variables if tf.as_dtype(v.dtype).is_floating]
        self._shadows = [tf.Variable(v.value, trainable=False) for v in self._variables]
        self._check_and_save = tf.function(self._check_and_save_fn, autograph=False)
        self._install_batch_stash()

    def on_train_end(self, logs=None):
        self._uninstall_batch_stash()
        self._shadows = []
        self._last_batch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start_step = self._step

    # -------------------------------------------------------------- per batch
    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the index of the last batch run (several per call with
        # steps_per_execution > 1): count training steps, not calls.
        self._step = self._epoch_start_step + int(batch) + 1
        loss = _as_float((logs or {}).get("loss"))
        loss_finite = loss is None or math.isfinite(loss)
        save = loss_finite and self._step - self._good_step >= self.snapshot_every
        weights_finite = bool(self._check_and_save(tf.constant(save)))
        if loss_finite and weights_finite:
            if save:
                self._good_step = self._step
            return
        self._handle(batch, "loss" if not loss_finite else "weights", loss)

    def _check_and_save_fn(self, save):
        checks = [tf.reduce_all(tf.math.is_finite(v.value)) for v in self._float_variables]
        finite = tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)

        def copy():
            for shadow, variable in zip(self._shadows, self._variables):
                shadow.assign(variable.value)
            return tf.constant(True)

        tf.cond(tf.logical_and(finite, save), copy, lambda: tf.constant(False))
        return finite

    # ----------------------------------------------------------- the incident
    def _handle(self, batch, trigger, loss):
        bad_weights = [v.path for v in self._float_variables if not np.isfinite(v.numpy()).all()]
        for shadow, variable in zip(self._shadows, self._variables):
            variable.assign(shadow)
        event = {
            "epoch": self._epoch,
            "batch": int(batch),
            "step": self._step,
            "trigger": trigger,
            "loss": loss,
            "nonfinite_weights": bad_weights[:8],
            "restored_step": self._good_step,
            "layer": None,
            "op": None,
            "cause": None,
            "action": self.action,
        }
        first = not self.events
        report = None
        if self.run_diagnosis and len(self.events) < self.max_diagnoses:
            report = self._diagnose_batch()
        if first:
            self.report = report
        if report is None and self.events and self.events[0]["cause"]:
            # Not re-diagnosed (an eager pass per event is costly): the first
            # event's diagnosis stands, marked as such.
            for key in ("layer", "op", "cause"):
                event[key] = self.events[0][key]
            event["cause"] = f"{event['cause']} (as diagnosed at step {self.events[0]['step']})"
        else:
            self._fill_origin(event, report, bad_weights, trigger)
        action = self.action
        if (
            action == "continue"
            and self.max_recoveries is not None
            and self.recoveries >= self.max_recoveries
        ):
            action = "stop"
        event["action"] = action
        self.events.append(event)
        message = self._message(event, report)
        if action == "raise":
            self._uninstall_batch_stash()
            if self.verbose:
                print(message, flush=True)
            raise NonFiniteTrainingError(message, event=event, report=report)
        if action == "stop":
            self.model.stop_training = True
        else:
            self.recoveries += 1
            self._reduce_learning_rate(event)
            self.model.reset_metrics()
        if self.verbose:
            print(message, flush=True)

    def _diagnose_batch(self):
        from stableops.doctor import diagnose  # late: the doctor imports heavier modules

        data = self._last_batch
        if data is None:
            return None
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        try:
            size = int(np.shape(tf.nest.flatten(x)[0])[0])
            return diagnose(self.model, x, y, batch_size=max(size, 1), max_batches=1)
        except Exception as error:  # noqa: BLE001 - the guard must not crash the run
            self._diagnose_error = error
            return None

    def _fill_origin(self, event, report, bad_weights, trigger):
        if report is not None:
            for check in _ORIGIN_CHECKS:
                found = report.find(check)
                if found:
                    evidence = found[0].evidence
                    event["layer"] = evidence.get("layer") or found[0].location
                    event["op"] = evidence.get("op")
                    break
            cause = report.likely_cause
            if cause is not None:
                event["cause"] = f"{cause.check}: {cause.message}"
        if trigger == "weights" and event["layer"] is None and bad_weights:
            event["layer"] = self._owner(bad_weights[0])
            event["op"] = "optimizer update"
            if event["cause"] is None:
                event["cause"] = "the optimizer step made these weights non-finite"

    def _owner(self, path):
        """The layer that owns the variable at ``path`` (or the path itself)."""
        for layer in self.model.layers:
            if any(v.path == path for v in layer.weights):
                return f"layer '{layer.name}'"
        return path

    def _reduce_learning_rate(self, event):
        optimizer = self.model.optimizer
        if self.lr_factor == 1.0:
            return
        try:
            old = float(np.asarray(optimizer.learning_rate))
            optimizer.learning_rate = old * self.lr_factor
            event["learning_rate"] = old * self.lr_factor
        except (TypeError, ValueError):
            event["learning_rate"] = "unchanged (a LearningRateSchedule cannot be set)"

    def _message(self, event, report):
        where = f"epoch {event['epoch'] + 1}, batch {event['batch']} (step {event['step']})"
        lines = [
            f"NaNGuard: non-finite {event['trigger']} at {where}; restored the weights from "
            f"step {event['restored_step']}."
        ]
        if event["layer"]:
            op = f", op {event['op']}" if event["op"] else ""
            lines.append(f"  first non-finite: {event['layer']}{op}")
        if event["cause"]:
            lines.append(f"  likely cause: {event['cause']}")
        if report is not None and self.verbose and len(self.events) == 1:
            lines.append("  " + str(report).replace("\n", "\n  "))
        elif self.run_diagnosis and self._last_batch is None and len(self.events) == 1:
            lines.append(
                "  (the offending batch was not available to re-run: steps_per_execution > 1 "
                "or a distributed fit)"
            )
        actions = {
            "stop": "stopping training.",
            "raise": "raising NonFiniteTrainingError.",
            "continue": f"continuing (recovery {self.recoveries + 1}"
            + (f" of {self.max_recoveries}" if self.max_recoveries is not None else "")
            + (f", learning rate x{self.lr_factor:g}" if self.lr_factor != 1.0 else "")
            + ").",
        }
        lines.append("  action: " + actions[event["action"]])
        return "\n".join(lines)

    # --------------------------------------------------- keeping the batch
    def _install_batch_stash(self):
        """Wrap ``model.train_function`` to keep a reference to the current batch.

        The wrapper pulls the batch from Keras's iterator itself, remembers it,
        and hands the compiled step a one-element iterator of the same batch,
        so the step (XLA or not) is unchanged.
        """
        model = self.model
        original = getattr(model, "train_function", None)
        self._last_batch = None
        if (
            original is None
            or getattr(original, "_stableops_nan_guard", False)
            or getattr(model, "steps_per_execution", 1) != 1
            or tf.distribute.has_strategy()
        ):
            return
        guard = self
        # Keras >= 3.5 dispatches in Python: a plain iterator of batches goes
        # straight to the compiled one-step function (no retracing). Older
        # versions trace the whole train function, so they get a tf.data
        # iterator of the one batch instead (correct, but slower per step).
        python_dispatch = not isinstance(original, tf.types.experimental.PolymorphicFunction)

        def train_function(iterator):
            if not isinstance(iterator, tf.data.Iterator):
                return original(iterator)
            data = next(iterator)
            guard._last_batch = data
            if python_dispatch:
                return original(iter([data]))
            return original(iter(tf.data.Dataset.from_tensors(data)))

        train_function._stableops_nan_guard = True
        self._original_train_function = original
        model.train_function = train_function

    def _uninstall_batch_stash(self):
        if self._original_train_function is not None:
            if getattr(self.model, "train_function", None) is not None:
                self.model.train_function = self._original_train_function
            self._original_train_function = None


def _as_float(value):
    if value is None:
        return None
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None
