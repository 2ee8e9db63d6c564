"""``stableops.callbacks``: NaNGuard, which catches the first non-finite batch and explains it."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from stableops._internal.checks import number
from stableops.ops import dtype_limits

__all__ = ["NaNGuard", "NonFiniteTrainingError", "ScaledSchedule"]

_ACTIONS = ("stop", "raise", "continue")


class NonFiniteTrainingError(RuntimeError):
    """Raised by ``NaNGuard(action="raise")``; carries the event and the report."""

    def __init__(self, message, *, event=None, report=None):
        super().__init__(message)
        self.event = event
        self.report = report


class NaNGuard(keras.callbacks.Callback):
    """Catch a diverging run early, roll it back to good weights, say why, and rescue it.

    After every training batch the guard looks at the batch's own loss and
    every weight (one fused ``all(isfinite)`` reduction). It keeps a few
    snapshots of the weights and the optimizer's slots (moments; never the
    learning rate or counters such as ``iterations`` and
    ``SkipNonFinite.skipped_steps``). A snapshot counts as *good* once the
    next batch loss, computed with those weights, is healthy (within
    ``LOSS_HEALTHY`` x the run's reference level): the last finite weights
    are not necessarily good ones.

    The run is diverging when a batch loss is non-finite, when it explodes
    (above ``LOSS_EXPLOSION`` x the run's reference level and above its first
    loss, in a jump above ``LOSS_EXPLOSION`` x every recent batch loss or at
    the end of a climb of ``LOSS_WINDOW`` batches above that level; a hard
    batch in a resumed or fine-tuned run is no explosion: see
    ``stableops/doctor/_thresholds.py``), when a weight is
    non-finite, or when a trainable weight heads for overflow (``|w|`` above
    the square root of its dtype's maximum, where its products overflow; a
    layer's statistics, such as a moving variance, and the optimizer's state
    only when non-finite). Then the guard:

    1. rolls back to the good snapshot with the lowest loss after it among
       the ``snapshots`` newest good ones (in a slow climb, the newest good
       snapshot is already on the climb; older ones are dropped as newer ones
       are confirmed, so while the losses stay healthy a rollback goes back
       at most about ``(snapshots + 1) * snapshot_every`` steps);
    2. re-runs the offending batch eagerly, outside XLA, with
       ``stableops.diagnose``: the first layer and op that went non-finite
       and the likely cause (bad labels, unscaled inputs, fully masked rows,
       float16 overflow, exploding gradients, ...);
    3. reports it (``verbose``) and records it in ``events``/``report``;
    4. acts: ``"stop"`` ends training (``model.stop_training``), ``"raise"``
       raises :class:`NonFiniteTrainingError`, ``"continue"`` skips the
       offending batch, multiplies the learning rate by ``lr_factor`` and
       carries on. The running metrics (the epoch's loss and metrics, which
       Keras logs) go back to their state before the offending batch, and the
       batch's ``logs`` get those values, so the callbacks after the guard
       (``TerminateOnNaN``, ``EarlyStopping``) do not see the skipped batch.
       The cut persists and compounds across recoveries (the snapshots do not
       hold the learning rate; a callable learning rate is left unchanged); a
       ``LearningRateSchedule`` is scaled, not replaced (the guard wraps it
       in :class:`ScaledSchedule` when training begins). After
       ``max_recoveries`` recoveries the next divergence stops training and
       the message says why.

    It works with ``jit_compile=True`` (the check runs between compiled
    steps, the re-run is eager), ``SkipNonFinite``, ``LossScaleOptimizer``
    (its loss scale is the scaler's own business: not rolled back) and
    ``tf.distribute``. The batch loss is read from the model's loss tracker
    (``model.metrics``, the running mean Keras logs), so nothing is recomputed.

    Cost: one reduction over all weights per batch, and ``snapshots + 1``
    on-device copies of the weights and optimizer slots (with Adam and the
    default ``snapshots=2``: about 9 times the model's size), refreshed every
    ``snapshot_every`` batches (a copy per step by default). To re-run the
    offending batch the guard keeps a reference to the current batch (no
    copy); this needs ``steps_per_execution=1`` and a non-distributed ``fit``,
    otherwise the report says the batch was unavailable. With
    ``steps_per_execution > 1`` the guard sees one loss per execution, the
    first of which sets the reference level: an explosion inside the first
    execution is taken as the level (a run's first steps are then best with
    ``steps_per_execution=1``). One guard per ``fit``. A model that is not
    built when training begins (a subclassed model not called before ``fit``)
    is built by its first step: the guard
    starts watching after it, with the weights after that step as the first
    good snapshot (a divergence in that very step has nothing to roll back to;
    ``restored_step`` is then ``None``).

    Args:
        action: ``"stop"`` (default), ``"raise"`` or ``"continue"``.
        lr_factor: learning-rate multiplier on ``"continue"``, in ``(0, 1]``.
        max_recoveries: how many times ``"continue"`` may recover before the
            guard stops training (``None``: no limit).
        snapshot_every: take a snapshot every this many batches.
        snapshots: how many good snapshots to keep: the newest ones; the
            rollback restores the one among them with the lowest loss after it.
        diagnose: re-run the offending batch through ``stableops.diagnose``.
        max_diagnoses: how many events get their own diagnosis (each is an
            eager pass over the batch); later events repeat the first one's.
        verbose: 1 prints each event (first one with the full report), 0 is
            silent.

    Attributes:
        events: one dict per divergence: ``epoch``, ``batch``, ``step``,
            ``trigger`` (``"loss"``, ``"loss explosion"``, ``"weights"`` or
            ``"weight overflow"``), ``loss`` (the batch's own loss),
            ``reference_loss``, ``nonfinite_weights``, ``restored_step`` (the
            step whose weights were restored; ``None`` if none were),
            ``layer``, ``op``, ``cause``, ``action`` and, on ``"continue"``,
            ``learning_rate`` (the new rate, or the schedule's new scale).
        report: the :class:`stableops.Report` of the first event (or ``None``).
        recoveries: how many times ``"continue"`` recovered.

    Example (a NaN in the second batch's inputs):
        >>> x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
        >>> x[5, 0] = np.nan
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> guard = NaNGuard(action="stop", verbose=0)
        >>> _ = model.fit(x, y, batch_size=4, shuffle=False, callbacks=[guard], verbose=0)
        >>> guard.events[0]["step"], guard.events[0]["trigger"]
        (2, 'loss')
        >>> guard.events[0]["cause"]
        'input.non_finite: 1 input value NaN or inf'
    """

    def __init__(
        self,
        action="stop",
        *,
        lr_factor=0.5,
        max_recoveries=5,
        snapshot_every=1,
        snapshots=2,
        diagnose=True,
        max_diagnoses=1,
        verbose=1,
    ):
        super().__init__()
        if action not in _ACTIONS:
            raise ValueError(f"`action` must be one of {_ACTIONS}, got action={action!r}")
        lr_factor = number(lr_factor, "lr_factor", 0.0, 1.0, low_open=True)
        bad_count = not isinstance(max_recoveries, int) or max_recoveries < 0
        if max_recoveries is not None and bad_count:
            raise ValueError(
                "`max_recoveries` must be a non-negative int or None, got "
                f"max_recoveries={max_recoveries!r}"
            )
        if not isinstance(max_diagnoses, int) or max_diagnoses < 0:
            raise ValueError(
                f"`max_diagnoses` must be a non-negative int, got max_diagnoses={max_diagnoses!r}"
            )
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(
                f"`snapshot_every` must be a positive int, got snapshot_every={snapshot_every!r}"
            )
        if not isinstance(snapshots, int) or snapshots < 1:
            raise ValueError(f"`snapshots` must be a positive int, got snapshots={snapshots!r}")
        self.action = action
        self.lr_factor = float(lr_factor)
        self.max_recoveries = max_recoveries
        self.snapshot_every = snapshot_every
        self.snapshots = snapshots
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
        from stableops.doctor import (
            LossMonitor,  # late: the doctor imports heavier modules
        )

        self.events, self.report, self.recoveries = [], None, 0
        self._step = 0
        self._epoch = 0
        self._epoch_start_step = 0
        self._reports_first_batch = False
        self._monitor = LossMonitor()
        self._tracker_seen = (0.0, 0.0)
        self._watching = False
        # The metrics' variables and their copy after the last healthy batch (made when
        # the first batch ends: Keras builds the compiled metrics in the first step).
        self._metrics, self._metrics_copy, self._metrics_kept = None, None, False
        optimizer = getattr(self.model, "optimizer", None)
        if self.model.built and optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        if optimizer is not None and self.action == "continue" and self.lr_factor != 1.0:
            if _scale_schedule(optimizer):
                # The compiled step read the old schedule when it was traced.
                self.model.make_train_function(force=True)
        if self.model.built:
            self._watch(initial_step=0)
        # Otherwise (a subclassed model not called before fit) Keras builds the model
        # and the optimizer in the first step: the guard starts watching after it.
        self._install_batch_stash()

    def _watch(self, initial_step=None):
        """Collect the variables to check and snapshot; allocate the snapshots.

        With ``initial_step``, the current weights are the first good snapshot
        (the initial weights; their loss is not known yet: they rank last).
        Without (the model was built by the step that just ran), the first
        snapshot that passes the checks is taken as good at once.
        """
        optimizer = getattr(self.model, "optimizer", None)
        trainable = [v for v in self.model.trainable_weights if _is_float(v)]
        statistics = [v for v in self.model.non_trainable_weights if _is_float(v)]
        self._variables = trainable + statistics + _optimizer_state(optimizer)
        # Trainable weights heading for overflow: |w| above sqrt(max) of their dtype,
        # where w * w (a product with a similar activation, an L2 penalty) overflows.
        # Not the layers' statistics nor the optimizer's state: a variance is a square
        # already (a Normalization layer adapted to millisecond timestamps holds 8e19, past
        # float32's 1.8e19; a float16 BatchNormalization's moving variance passes 256), as
        # is Adam's second moment (a gradient of 16 puts it at float16's 256 in healthy
        # training); they are caught when non-finite.
        self._overflow_at = [math.sqrt(dtype_limits(v.dtype).max) for v in trainable]
        # snapshots + 1 slots: the good ones and the one awaiting confirmation.
        self._slots = [
            [tf.Variable(v.value, trainable=False) for v in self._variables]
            for _ in range(self.snapshots + 1)
        ]
        self._check_and_save = [
            tf.function(
                lambda save, keep, slot=slot: self._check_and_save_fn(save, keep, slot),
                autograph=False,
            )
            for slot in self._slots
        ]
        # (slot, step, loss after it), oldest first.
        self._good = [] if initial_step is None else [(0, initial_step, math.inf)]
        self._pending = None
        self._last_snapshot_step = (
            self._step - self.snapshot_every if initial_step is None else initial_step
        )
        self._watching = True

    def on_train_end(self, logs=None):
        self._uninstall_batch_stash()
        self._slots = []
        self._check_and_save = []
        self._metrics, self._metrics_copy, self._metrics_kept = None, None, False
        self._watching = False
        self._last_batch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start_step = self._step
        if self._metrics_copy is not None:  # Keras has just reset the metrics: keep that
            for copy, variable in zip(self._metrics_copy, self._metrics):
                copy.assign(variable.value)
            self._metrics_kept = True

    # -------------------------------------------------------------- per batch
    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the index of the last batch run (several per call with
        # steps_per_execution > 1): count training steps, not calls. An epoch's last,
        # partial execution gets the index a full one would have (9 for a ninth batch
        # 8, with steps_per_execution=2): no further than the epoch's steps.
        steps = (self.params or {}).get("steps")
        batch = self._last_batch_index(int(batch))
        batch = batch if not steps else min(batch, steps - 1)
        self._step = self._epoch_start_step + batch + 1
        loss = self._batch_loss(logs)
        verdict = self._monitor.observe(loss)
        monitor = self._monitor
        diverging = verdict in (monitor.NON_FINITE, monitor.EXPLODED)
        if not self._watching:  # the model was built by this step
            self._watch()
        if self._metrics is None:
            self._metrics = [v for metric in self.model.metrics for v in metric.variables]
            self._metrics_copy = [tf.Variable(v.value, trainable=False) for v in self._metrics]
        if self._pending is not None and not diverging:
            # This batch's loss was computed with the pending snapshot's weights.
            if verdict == monitor.HEALTHY:
                self._confirm(*self._pending, loss)
            self._pending = None
        save = not diverging and self._step - self._last_snapshot_step >= self.snapshot_every
        slot = self._free_slot() if save else 0
        check = self._check_and_save[slot](tf.constant(save), tf.constant(not diverging))
        finite, overflow = (bool(t) for t in check)
        if not diverging and finite and not overflow:
            if save:
                if self._good:
                    self._pending = (slot, self._step)
                else:  # the first weights of a model built by its first step
                    self._good.append((slot, self._step, math.inf))
                self._last_snapshot_step = self._step
            self._metrics_kept = True  # the check copied the metrics' state
            return
        if verdict == monitor.NON_FINITE:
            trigger = "loss"
        elif verdict == monitor.EXPLODED:
            trigger = "loss explosion"
        elif not finite:
            trigger = "weights"
        else:
            trigger = "weight overflow"
        self._handle(batch, trigger, loss, logs)

    def _last_batch_index(self, reported):
        """The index of the last batch of the execution Keras reports as ``reported``.

        Keras 3.15 reports an execution of ``steps_per_execution`` batches by its
        last batch's index, older releases (3.10) by its first: the first report of
        an epoch, 0 where it would be ``steps_per_execution - 1``, tells which.
        """
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if self._step == self._epoch_start_step:  # the epoch's first report
            self._reports_first_batch = per_execution > 1 and reported == 0
        return reported + per_execution - 1 if self._reports_first_batch else reported

    def _tracker_state(self):
        """The loss tracker's running ``(total, count)``, or None without one."""
        tracker = next((m for m in self.model.metrics if m.name == "loss"), None)
        total, count = getattr(tracker, "total", None), getattr(tracker, "count", None)
        if total is None or count is None:
            return None
        return float(np.asarray(total)), float(np.asarray(count))

    def _batch_loss(self, logs):
        """This batch's own loss, from the loss tracker's running total and count."""
        state = self._tracker_state()
        if state is None:
            return _as_float((logs or {}).get("loss"))  # Keras's running mean
        total, count = state
        seen_total, seen_count = self._tracker_seen
        self._tracker_seen = (total, count)
        if count > seen_count:
            return (total - seen_total) / (count - seen_count)
        # The tracker was reset since (a new epoch, a callback): all it holds is new.
        return total / count if count else None

    def _free_slot(self):
        used = {good[0] for good in self._good} | ({self._pending[0]} if self._pending else set())
        return next(i for i in range(len(self._slots)) if i not in used)

    def _confirm(self, slot, step, loss):
        """Keep the snapshot as good; when more than ``snapshots``, drop the oldest."""
        self._good.append((slot, step, math.inf if loss is None else loss))
        if len(self._good) > self.snapshots:
            self._good.pop(0)

    def _best(self):
        """Of the kept good snapshots, the one with the lowest loss after it (newest among equals).

        In a slow climb every recent snapshot was followed by a loss within
        the healthy band; the one with the lowest loss is the earliest on the
        climb. Only the ``snapshots`` newest are kept, so the rollback goes
        back at most ``snapshots`` snapshots (``snapshot_every`` steps apart).
        """
        return min(reversed(self._good), key=lambda good: good[2])

    def _restore_metrics(self, logs):
        """Put the metrics back as they were before the offending batch.

        That is their state after the last healthy batch of the epoch (with
        ``steps_per_execution > 1``: the last healthy execution), or as reset
        at the start of the epoch. ``logs`` (the batch's, which the callbacks
        after this one see) get the restored running values.
        """
        if self._metrics_kept:
            for variable, copy in zip(self._metrics, self._metrics_copy):
                variable.assign(copy)
        else:  # no healthy batch yet: they were as reset
            self.model.reset_metrics()
        self._tracker_seen = self._tracker_state() or (0.0, 0.0)
        if logs is not None:
            results = self.model.get_metrics_result()
            logs.update({key: _as_float(results[key]) for key in logs if key in results})

    def _check_and_save_fn(self, save, keep, shadows):
        """Check the variables; copy them to ``shadows`` if ``save`` and all finite.

        Also copy the metrics' state if ``keep`` (the batch loss did not
        diverge) and the variables are finite and not heading for overflow.
        """
        checks = [tf.reduce_all(tf.math.is_finite(v.value)) for v in self._variables]
        finite = tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)
        overflow = [  # the trainable weights, the first variables (see _overflow_at)
            tf.reduce_any(tf.abs(v.value) > tf.cast(limit, v.dtype))
            for v, limit in zip(self._variables, self._overflow_at)
        ]
        overflow = tf.reduce_any(tf.stack(overflow)) if overflow else tf.constant(False)

        def copy():
            for shadow, variable in zip(shadows, self._variables):
                shadow.assign(variable.value)
            return tf.constant(True)

        def copy_metrics():
            for metric_copy, variable in zip(self._metrics_copy, self._metrics):
                metric_copy.assign(variable.value)
            return tf.constant(True)

        tf.cond(tf.logical_and(finite, save), copy, lambda: tf.constant(False))
        healthy = tf.logical_and(tf.logical_and(finite, keep), tf.logical_not(overflow))
        tf.cond(healthy, copy_metrics, lambda: tf.constant(False))
        return finite, overflow

    # ----------------------------------------------------------- the incident
    def _handle(self, batch, trigger, loss, logs=None):
        bad_weights = [
            v.path for v in self._variables if not np.isfinite(np.asarray(v.value)).all()
        ]
        restored_step = None  # no good snapshot yet: the model was built by this step
        if self._good:
            slot, restored_step, _ = self._best()
            for shadow, variable in zip(self._slots[slot], self._variables):
                variable.assign(shadow)
        self._pending = None
        event = {
            "epoch": self._epoch,
            "batch": int(batch),
            "step": self._step,
            "trigger": trigger,
            "loss": loss,
            "reference_loss": self._monitor.reference,
            "nonfinite_weights": bad_weights[:8],
            "restored_step": restored_step,
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
        gave_up = (
            action == "continue"
            and self.max_recoveries is not None
            and self.recoveries >= self.max_recoveries
        )
        if gave_up:
            action = "stop"
        event["action"] = action
        self.events.append(event)
        if action == "continue":
            self.recoveries += 1
            event["learning_rate"] = self._reduce_learning_rate()
        message = self._message(event, report, gave_up)
        if action == "raise":
            self._uninstall_batch_stash()
            if self.verbose:
                print(message, flush=True)
            raise NonFiniteTrainingError(message, event=event, report=report)
        if action == "stop":
            self.model.stop_training = True
        else:
            # The epoch's running metrics hold the offending batch: take it out.
            self._restore_metrics(logs)
        if self.verbose:
            print(message, flush=True)

    def _diagnose_batch(self):
        from stableops.doctor import (
            diagnose,  # late: the doctor imports heavier modules
        )

        data = self._last_batch
        if data is None:
            return None
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        try:
            size = int(np.shape(tf.nest.flatten(x)[0])[0])
            # No trial run: the guard has just watched the real one diverge.
            return diagnose(self.model, x, y, batch_size=max(size, 1), max_batches=1, trial_steps=0)
        except Exception as error:  # noqa: BLE001 - the guard must not crash the run
            self._diagnose_error = error
            return None

    def _fill_origin(self, event, report, bad_weights, trigger):
        if report is not None:
            origin = report.first_non_finite
            if origin is not None:
                event["layer"] = origin.evidence.get("layer") or origin.location
                event["op"] = origin.evidence.get("op")
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

    def _reduce_learning_rate(self):
        """Multiply the learning rate (or the schedule's scale) by ``lr_factor``; the new value."""
        if self.lr_factor == 1.0:
            return None
        optimizer = _innermost(self.model.optimizer)
        rate = getattr(optimizer, "_learning_rate", None)  # Keras keeps the rate or schedule here
        if isinstance(rate, ScaledSchedule):
            rate.scale.assign(rate.scale * self.lr_factor)
            return f"schedule x{float(rate.scale.numpy()):.3g}"
        if callable(rate):  # a function, or a schedule the guard did not wrap
            return "unchanged (a callable learning rate cannot be scaled)"
        new = float(np.asarray(optimizer.learning_rate)) * self.lr_factor
        optimizer.learning_rate = new
        return new

    def _message(self, event, report, gave_up=False):
        where = f"epoch {event['epoch'] + 1}, batch {event['batch']} (step {event['step']})"
        what = {
            "loss": "non-finite loss",
            "loss explosion": "loss explosion",
            "weights": "non-finite weights",
            "weight overflow": "weights heading for overflow",
        }[event["trigger"]]
        if event["trigger"] == "loss explosion" and event["reference_loss"]:
            what += (
                f" (batch loss {event['loss']:.3g}, "
                f"{event['loss'] / event['reference_loss']:.3g}x the run's level "
                f"{event['reference_loss']:.3g})"
            )
        if event["restored_step"] is None:
            restored = "no weights to roll back to yet (the model was built by this step)."
        else:
            restored = (
                f"rolled back to the weights of step {event['restored_step']} "
                "(the best recent ones followed by a healthy loss)."
            )
        lines = [f"NaNGuard: {what} at {where}; {restored}"]
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
        rate = event.get("learning_rate")
        actions = {
            "stop": "stopping training.",
            "raise": "raising NonFiniteTrainingError.",
            "continue": f"skipping the batch and continuing (recovery {self.recoveries}"
            + (f" of {self.max_recoveries}" if self.max_recoveries is not None else "")
            + (f", learning rate now {rate:.3g}" if isinstance(rate, float) else "")
            + (f", learning rate {rate}" if isinstance(rate, str) else "")
            + ").",
        }
        action = actions[event["action"]]
        if gave_up:
            action = (
                f"stopping training: {self.max_recoveries} recoveries (rollback and learning-rate "
                "cut) did not stop the divergence; fix the cause above."
            )
        lines.append("  action: " + action)
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
        while getattr(original, "_stableops_nan_guard", False):
            # A guard's wrapper left behind by a fit that raised (Keras then
            # skips on_train_end): unwrap it, or its guard would get the batches.
            original = original._stableops_original
            model.train_function = original
        self._last_batch = None
        if (
            original is None
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
        train_function._stableops_original = original
        self._original_train_function = original
        model.train_function = train_function

    def _uninstall_batch_stash(self):
        if self._original_train_function is not None:
            if getattr(self.model, "train_function", None) is not None:
                self.model.train_function = self._original_train_function
            self._original_train_function = None


def _is_float(variable) -> bool:
    return tf.as_dtype(variable.dtype).is_floating


def _innermost(optimizer):
    """The optimizer that holds the learning rate (inside SkipNonFinite, LossScaleOptimizer)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


def _optimizer_state(optimizer) -> list:
    """The optimizer's float slots (moments, accumulators) a rollback restores.

    Not the learning rate (a cut must survive the rollback), not the counters
    (``iterations``, ``skipped_steps``: integers) and not a loss scaler's
    scale, which tracks overflow itself.
    """
    if optimizer is None:
        return []
    excluded = set()
    current = optimizer
    while current is not None:
        excluded.add(id(getattr(current, "_learning_rate", None)))  # Keras's rate variable
        if isinstance(current, keras.optimizers.LossScaleOptimizer):
            excluded.add(id(getattr(current, "dynamic_scale", None)))
        current = getattr(current, "inner_optimizer", None)
    return [v for v in optimizer.variables if _is_float(v) and id(v) not in excluded]


def _scale_schedule(optimizer) -> bool:
    """Wrap a ``LearningRateSchedule`` in a :class:`ScaledSchedule`; True if it was replaced."""
    optimizer = _innermost(optimizer)
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) and not isinstance(
        rate, ScaledSchedule
    ):
        optimizer.learning_rate = ScaledSchedule(rate)
        return True
    return False


@keras.saving.register_keras_serializable(package="stableops")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a scale that ``NaNGuard`` lowers at each recovery.

    ``ScaledSchedule(schedule, scale=1.0)(step) == scale * schedule(step)``.
    The scale is a variable read inside the compiled train step, so a cut
    takes effect at the next step without retracing, and the schedule's shape
    (warm-up, decay) is kept.
    """

    def __init__(self, schedule, scale=1.0):
        self.schedule = schedule
        self.scale = tf.Variable(float(scale), trainable=False, dtype=tf.float32, name="lr_scale")

    def __call__(self, step):
        rate = self.schedule(step)
        return rate * tf.cast(self.scale, tf.as_dtype(getattr(rate, "dtype", tf.float32)))

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "scale": float(self.scale.numpy()),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = keras.saving.deserialize_keras_object(config.pop("schedule"))
        return cls(schedule, **config)


def _as_float(value):
    if value is None:
        return None
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None
