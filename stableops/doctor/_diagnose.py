"""``stableops.diagnose``: why does (or will) this model's loss go NaN?"""

from __future__ import annotations

import dataclasses
import random

import keras
import numpy as np
import tensorflow as tf

from stableops.doctor import _data, _data_checks, _model_checks, _training_checks
from stableops.doctor import _registry as checks
from stableops.doctor import _thresholds as th
from stableops.doctor._forward import Probe, first_non_finite_op, trace_forward
from stableops.doctor._loss import (
    output_pairs,
    per_output_losses,
    resolve_loss,
    single_output_labels,
)
from stableops.doctor._quiet import quiet_native_stderr
from stableops.doctor._report import Report, finding, format_number, in_user_rows
from stableops.doctor._trial import (
    DEFAULT_TRIAL_STEPS,
    TrialUnavailable,
    learning_rate_schedule,
    lower_rate_factors,
    run_trial,
)


def diagnose(
    model, x, y=None, *, loss=None, batch_size=32, max_batches=8, training=True, trial_steps=None
) -> Report:
    """Examine a model on a sample of its data and explain what would make its loss non-finite.

    The model runs eagerly, outside XLA, on at most ``batch_size *
    max_batches`` samples; the data checks (which need no model) see up to
    100,000 rows (2 million values), and non-finite inputs are counted on
    every row. Samples are fixed-seed, so repeated calls agree; the model's
    sample holds the rows whose inputs or labels the data checks find NaN/inf.
    It checks:

    - inputs: NaN/inf values; values that overflow a float16 first layer;
      per-feature scale (typical magnitude above sqrt(float16 max) = 256, or
      feature scales more than 1/sqrt(eps(float16)) = 32x apart by their standard
      deviations, ranges and interquartile ranges alike; from 8 rows) and outliers
      (robust z-score above 10 and a deviation above 10x a typical sample's
      size; from 102 values of a feature); the fix is
      ``stableops.layers.RobustScaler`` or ``keras.layers.Normalization``.
      Inputs that feed a normalisation layer directly are not checked for scale
      or outliers; for those a ``Rescaling`` layer reads, its output is checked.
    - labels, for the loss in use (per output for a loss dict or list):
      class indices in ``[0, num_classes)``, one-hot rows summing to 1, binary
      labels in ``[0, 1]``, finite values.
    - activations, layer by layer (Functional and Sequential models): the first
      layer whose outputs go non-finite from finite inputs, the op that did it
      (found with ``tf.debugging.enable_check_numerics``) and the likely
      cause (fully masked rows, float16 overflow, log/divide/sqrt domain);
      float16 overflow headroom; saturated sigmoid/tanh units; dead ReLUs
      (from 8 samples).
    - the loss: non-finite or raising values, probabilities at 0/1 fed to a
      log (a clipped constant with zero gradient), and a Keras loss that has a
      ``stableops.losses`` drop-in. One loss for a model with several outputs
      applies to each output, as in Keras.
    - gradients, per layer: non-finite (under a dynamic loss scaler, at the
      scale it settles on: halved from its current scale while the scaled
      gradients overflow, down to 1, as Keras's ``LossScaleOptimizer`` does);
      exploding (one SGD step at the
      optimizer's learning rate would move the weights by more than their own
      norm; not judged for an adaptive optimizer such as Adam, whose step does
      not scale with the gradient: the trial run shows whether its rate is too
      large); vanishing (SGD's step is below the weights' rounding unit; for an
      adaptive optimizer, a gradient of 0).

    - the model itself: weights or non-trainable state (BatchNormalization
      moving statistics) already NaN/inf; Layer/Group/BatchNormalization in
      float16 with an epsilon float16 cannot hold; an optimizer epsilon below
      its variables' smallest normal number; a last batch of one sample
      feeding BatchNormalization (a dataset's own batches); unscaled regression
      targets for the loss.
    - a trial run (``trial_steps``): a throwaway copy of the model (same
      weights and layer state, optimizer settings, loss and loss weights; fresh
      optimizer state; it must predict what the model predicts) trains for
      a few steps on the sample. When its loss goes non-finite or explodes
      (``LossMonitor``), the report gets a ``trial.diverged`` error, the
      findings that explain it become errors (so the first error is the
      cause), and copies at 10x, 100x, ... lower learning rates (down to the
      optimizer's Keras default rate, at most 6 decades) tell whether the
      rate alone is to blame (``optimizer.learning_rate``; then the step's
      size, ``gradient.exploding``, stays a warning).

    The thresholds and their derivations are in ``stableops/doctor/_thresholds.py``,
    the checks (id, stage, severity, fix) in ``stableops/doctor/_registry.py``.
    The model is not changed: its weights are untouched, and its non-trainable
    state (batch-norm statistics, RNG seeds) and metrics are restored
    afterwards; the trial trains a copy. Python's and NumPy's global random
    states are restored too (copying a model draws seeds from them), so the
    layers built after ``diagnose`` get the weights they would get without it.

    Args:
        model: a built (or buildable) Keras model.
        x: inputs: a NumPy array, tensor, list/dict of them, or a
            ``tf.data.Dataset`` yielding ``(x, y)`` batches.
        y: labels (``None`` when ``x`` is a dataset or there are none; label,
            loss and gradient checks then need the dataset to carry them).
        loss: the loss to check (a ``keras.losses.Loss``, function or name);
            defaults to the one the model was compiled with.
        batch_size: batch size for the forward and gradient passes.
        max_batches: keyword-only; how many batches the sample holds.
        training: keyword-only; call the model in training mode (as ``fit``
            does; default) or inference mode.
        trial_steps: keyword-only; steps of the trial run. ``None`` (default):
            ``DEFAULT_TRIAL_STEPS`` (20) when ``y`` is given and the model is
            compiled with an optimizer, else none; ``0``: no trial.

    Returns:
        A :class:`Report`. ``print(report)`` shows a table, ``report.to_dict()``
        JSON-ready data, ``report.likely_cause`` the root cause.

    Example (``print(report)`` shows every finding as a table):
        >>> import numpy as np
        >>> import stableops
        >>> keras.utils.set_random_seed(0)
        >>> x = np.random.default_rng(0).normal(size=(256, 4)) * [1.0, 10.0, 1e3, 1e5]
        >>> y = x[:, :1] / 100.0
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
        ... )
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> report = stableops.diagnose(model, x, y, trial_steps=0)
        >>> report.likely_cause.check
        'input.scale'
    """
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got batch_size={batch_size!r}")
    if int(max_batches) < 1:
        raise ValueError(
            f"`max_batches` must be a positive integer, got max_batches={max_batches!r}"
        )
    batch_size = int(batch_size)
    # Data checks (non-finite values, scale, outliers, labels) need no model
    # and are cheap: they see up to DATA_CHECK_ROWS rows, so a single NaN in
    # a large array is not missed. Model checks run on a few batches.
    model_rows = batch_size * int(max_batches)
    nonfinite_counts = None
    if not isinstance(x, tf.data.Dataset):
        x = tf.nest.map_structure(_data.to_numpy, x)
        nonfinite_counts = _data.count_nonfinite(x)
    data_rows = (
        min(th.DATA_CHECK_ROWS, th.DATA_CHECK_VALUES // _data.values_per_row(x))
        if (not isinstance(x, tf.data.Dataset))
        else model_rows
    )
    if isinstance(x, tf.data.Dataset):
        # fit() trains on the dataset's own batches, whatever batch_size says.
        data_x, data_y, n_total, batching = _data.sample_dataset(
            x, y, max_samples=max(data_rows, model_rows)
        )
        data_sample_rows = None  # the dataset's first rows, in order
    else:
        data_x, data_y, n_total, data_sample_rows = _data.take_sample(
            x, y, max_samples=max(data_rows, model_rows), return_rows=True
        )
        batching = (batch_size, n_total % batch_size or batch_size, n_total)
    # The rows with NaN/inf inputs or labels the data checks report go into the
    # model sample too, so that the loss and the trial run see what they do.
    flagged = _data.nonfinite_rows((data_x, data_y))
    x, y, _, model_sample_rows = _data.take_sample(
        data_x, data_y, max_samples=model_rows, keep=flagged, return_rows=True
    )
    _ensure_built(model, x, batch_size)
    if trial_steps is None:
        compiled = y is not None and getattr(model, "optimizer", None)
        trial_steps = DEFAULT_TRIAL_STEPS if compiled else 0
    if int(trial_steps) < 0:
        raise ValueError(
            f"`trial_steps` must be a non-negative integer, got trial_steps={trial_steps!r}"
        )
    # Restored afterwards: batch-norm statistics, RNG seeds, and the metrics
    # (compute_loss updates the compiled loss trackers).
    state = list(model.non_trainable_variables) + list(getattr(model, "metrics_variables", []))
    saved_state = [np.array(v.numpy()) for v in state]
    # And the global random states: the trial's copies draw a default seed from
    # Python's `random` for each unseeded initializer and SeedGenerator, which
    # would change the weights of every layer the user builds after diagnose
    # (keras.utils.set_random_seed seeds Python's and NumPy's generators too).
    python_random_state, numpy_random_state = random.getstate(), np.random.get_state()
    try:
        report = _diagnose(
            model,
            x,
            y,
            loss=loss,
            batch_size=batch_size,
            training=training,
            n_total=n_total,
            data=(data_x, data_y),
            nonfinite_counts=nonfinite_counts,
            trial_steps=int(trial_steps),
            batching=batching,
        )
        return in_user_rows(report, data_sample_rows, model_sample_rows)
    finally:
        for variable, value in zip(state, saved_state):
            variable.assign(value)
        random.setstate(python_random_state)
        np.random.set_state(numpy_random_state)


def _ensure_built(model, x, batch_size):
    if not model.built:
        first = next(_data.batches(x, None, batch_size))[1]
        model(first, training=False)


def _diagnose(
    model, x, y, *, loss, batch_size, training, n_total, data, nonfinite_counts, trial_steps,
    batching,
) -> Report:
    notes = []
    loss_info = resolve_loss(model, loss)
    data_x, data_y = data
    probe = Probe(model)
    names, consumers = _input_consumers(model, data_x, probe)
    inputs = _data.flatten(data_x)
    unreadable = _data_checks.check_indices(inputs, names=names, consumers=consumers)
    if unreadable:  # the forward pass would raise (CPU) or read zeros (GPU)
        notes.append(
            "the model, label, loss, gradient and trial checks were skipped: the model cannot "
            "read these inputs"
        )
        findings = unreadable + _data_checks.check_inputs(
            inputs, names=names, consumers=consumers, nonfinite_counts=nonfinite_counts
        )
        context = _context(model, x, data_x, n_total, loss_info)
        return Report(findings, context=context, notes=notes)
    probe, layer_stats, y_pred = trace_forward(
        model, x, batch_size=batch_size, training=training, probe=probe
    )
    if not probe.available:
        notes.append(
            "per-layer checks need a Functional or Sequential model; only the model's "
            "outputs were examined"
        )

    y, data_y = single_output_labels(y, y_pred), single_output_labels(data_y, y_pred)
    labels_fit = True  # the labels match the outputs' structure
    if y is not None and loss_info is not None:
        try:
            output_pairs(y, y_pred)
        except ValueError as error:
            notes.append(f"label, loss, gradient and trial checks were skipped: {error}")
            loss_info, labels_fit = None, False

    origin = next((s for s in layer_stats if s.nonfinite and not s.input_nonfinite), None)
    first_op = None
    if origin is not None:
        xb = _batch_containing(x, origin.nonfinite_rows[0], batch_size)
        first_op = first_non_finite_op(lambda: model(xb, training=training))

    by_name = {s.name: s for s in layer_stats}
    findings = _data_checks.check_inputs(
        inputs,
        names=names,
        consumers=consumers,
        layer_stats=by_name,
        nonfinite_counts=nonfinite_counts,
    )
    findings += _model_checks.check_weights(model)
    findings += _model_checks.check_normalization_epsilon(model)
    findings += _training_checks.check_optimizer_epsilon(model)
    findings += _model_checks.check_single_sample_batch(model, *batching)
    findings += _data_checks.check_labels(data_y, y_pred, loss_info)
    output_losses = per_output_losses(model, loss, data_y, y_pred) if loss_info is None else []
    output_label_findings = _data_checks.check_output_labels(output_losses)
    findings += output_label_findings
    findings += _model_checks.check_activations(
        layer_stats, op=first_op, samples=_data.num_samples(x)
    )

    prediction_bad_rows = _data.nonfinite_rows((y_pred, y))  # NaN in, NaN out: not the loss's
    per_sample, loss_error, loss_op = None, None, None
    if y is None:
        notes.append("no labels given: label, loss and gradient checks were skipped")
    elif loss_info is None and labels_fit:
        notes.append(
            "a loss per output: the labels were checked per output, the loss checks were skipped"
            if output_losses
            else "no single loss (pass loss= or compile the model): label and loss checks were "
            "skipped"
        )
    elif loss_info is not None:
        per_sample, loss_error = _per_sample_loss(loss_info, y, y_pred, batch_size)
        if per_sample is not None:
            own = np.setdiff1d(np.flatnonzero(~np.isfinite(per_sample)), prediction_bad_rows)
            if own.size:
                row = int(own[0])
                yb = _batch_containing(y, row, batch_size)
                pb = _batch_containing(y_pred, row, batch_size)
                loss_op = first_non_finite_op(
                    lambda: loss_info.per_sample(yb, tf.nest.map_structure(tf.constant, pb))
                )
    findings += _training_checks.check_loss(
        loss_info,
        y,
        y_pred,
        per_sample,
        error=loss_error,
        op=loss_op,
        prediction_nonfinite_rows=prediction_bad_rows,
        stuck_samples_learn=_stuck_samples_learn(model, x, y, y_pred, loss_info, training),
    )

    learning_rate = _learning_rate(model)
    upstream_broken = (
        bool(prediction_bad_rows.size)
        or loss_error is not None
        or (per_sample is not None and not np.isfinite(per_sample).all())
        # A loss per output is not computed per sample: a NaN label makes it NaN.
        or any(f.check == "labels.non_finite" for f in output_label_findings)
    )
    can_differentiate = (
        y is not None and labels_fit and (loss_info is not None or _compiled(model))
    )
    if can_differentiate and not upstream_broken and model.trainable_variables:
        inputs_scaled = not any(f.check in _UNSCALED_INPUT_CHECKS for f in findings)
        gradient_findings, gradient_error = _gradient_findings(
            model, x, y, loss_info, batch_size, training, learning_rate, inputs_scaled
        )
        findings += gradient_findings
        if gradient_error is not None:
            upstream_broken = True  # a trial would raise the same error
            what = loss_info.display if loss_info else "the model's compiled loss"
            findings.append(_training_checks.loss_raised(what, gradient_error))
    elif can_differentiate and upstream_broken:
        notes.append(
            "gradients were not checked: the forward pass or the loss is already non-finite"
        )

    if trial_steps and y is not None and labels_fit and not upstream_broken:
        findings = _trial_findings(model, x, y, loss, findings, notes, trial_steps, batch_size)

    return Report(findings, context=_context(model, x, data_x, n_total, loss_info), notes=notes)


def _context(model, x, data_x, n_total, loss_info) -> dict:
    """The report's header: the model, the samples each stage saw, the loss and the rate."""
    return {
        "model": model.name,
        "samples": _data.num_samples(x),
        "data_rows": _data.num_samples(data_x),
        "of": n_total,
        "loss": loss_info.display if loss_info else "none",
        "dtype_policy": getattr(getattr(model, "dtype_policy", None), "name", "float32"),
        "learning_rate": _learning_rate(model),
    }


#: Input findings that say the inputs need scaling: without them, no advice to scale them.
_UNSCALED_INPUT_CHECKS = {
    checks.INPUT_SCALE.id,
    checks.INPUT_OUTLIERS.id,
    checks.INPUT_FLOAT16_OVERFLOW.id,
}


def _batch_containing(structure, row, batch_size):
    start = (row // batch_size) * batch_size
    rows = slice(start, start + batch_size)
    return tf.nest.map_structure(lambda leaf: np.asarray(leaf)[rows], structure)


def _input_consumers(model, x, probe):
    """Names of the flattened inputs and, per input, the layers reading it directly."""
    leaves = _data.flatten(x)
    try:
        model_inputs = list(model.inputs)
    except (AttributeError, ValueError):
        model_inputs = []
    if isinstance(x, dict):
        keys = sorted(x)
        by_name = {t.name: t for t in model_inputs}
        ordered = [by_name.get(k) for k in keys]
        names = keys
    else:
        ordered = model_inputs if len(model_inputs) == len(leaves) else [None] * len(leaves)
        names = [getattr(t, "name", None) for t in ordered]
    consumers = []
    for tensor in ordered:
        readers = []
        if tensor is not None and probe.available:
            for layer, layer_inputs in zip(probe.layers, probe.layer_inputs):
                if any(t is tensor for t in layer_inputs):
                    readers.append(layer)
        consumers.append(readers)
    return names, consumers


def _per_sample_loss(loss_info, y, y_pred, batch_size):
    values = []
    try:
        with quiet_native_stderr():  # an invalid label logs the whole batch natively
            for start, yb, pb in _data.batches(y, y_pred, batch_size):
                pb = tf.nest.map_structure(tf.constant, pb)
                values.append(np.asarray(loss_info.per_sample(yb, pb), dtype=np.float64))
    except Exception as error:  # noqa: BLE001 - reported as a finding
        return None, error
    return np.concatenate(values), None


def _compiled(model) -> bool:
    return getattr(model, "compiled", False) or getattr(model, "loss", None) is not None


def _learning_rate(model) -> float:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return th.DEFAULT_LEARNING_RATE
    try:
        return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))
    except Exception:  # noqa: BLE001 - a callable schedule that needs a step, etc.
        return th.DEFAULT_LEARNING_RATE


def _step_scales_with_gradient(model) -> bool:
    """Whether the optimizer's step is ``lr * g`` (SGD, with or without momentum).

    Adaptive optimizers (Adam, RMSprop, Adagrad, Lion, ...) divide by a running
    size of the gradient (or take its sign): their step is about ``lr`` per weight
    whatever ``|g|``, so ``lr * |g|`` says nothing about it. Unknown or missing
    optimizers count as adaptive: no claim rests on a step they may not take.
    """
    optimizer = getattr(model, "optimizer", None)
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return isinstance(optimizer, keras.optimizers.SGD)


def _skips_non_finite(model) -> bool:
    """Whether the model's optimizer skips non-finite steps itself: no advice to add SkipNonFinite.

    Recognised by ``skipped_steps``, the counter ``stableops.optimizers.SkipNonFinite``
    documents, on the optimizer or one it wraps (``inner_optimizer``): the doctor
    sits below the optimizers and does not import them.
    """
    optimizer = getattr(model, "optimizer", None)
    while optimizer is not None:
        if getattr(optimizer, "skipped_steps", None) is not None:
            return True
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return False


def _loss_scale(model) -> float:
    """The loss scale Keras's mixed-precision training starts from (1 without one)."""
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        if optimizer.built:
            return float(np.asarray(optimizer.dynamic_scale))
        return float(optimizer.initial_scale)
    return 1.0


def _gradients_at_a_working_scale(model, xb, yb, loss_info, training, scale):
    """``(gradients, scale)``: the gradients at the loss scale dynamic loss scaling settles on.

    Keras's ``LossScaleOptimizer`` (always dynamic in Keras 3) starts high
    (2**15): when the scaled gradients overflow float16 it skips the step and
    halves the scale, so an overflow at the initial scale is how it finds its
    scale, not a failure. The same here: the scale is halved until the
    gradients are finite, but not below 1 (no scaling): gradients that are
    still non-finite at scale 1 are non-finite in training too. Without a
    scaler ``scale`` is 1 and the gradients are computed once.
    """
    grads = _gradients(model, xb, yb, loss_info, training, scale)
    while scale > 1.0 and not _all_finite(grads):
        scale = max(scale / 2.0, 1.0)
        grads = _gradients(model, xb, yb, loss_info, training, scale)
    return grads, scale


def _all_finite(grads) -> bool:
    for grad in grads:
        if isinstance(grad, tf.IndexedSlices):
            grad = grad.values
        if grad is not None and not bool(tf.reduce_all(tf.math.is_finite(grad))):
            return False
    return True


def _stuck_samples_learn(model, x, y, y_pred, loss_info, training):
    """For ``loss.clipped_probabilities``: whether the loss's gradient from the samples whose
    probability is clipped at 0 or 1 reaches the weights, in a graph as ``fit`` runs it.

    Keras 3's cross-entropies and stableops's read the logits that a sigmoid or softmax
    leaves on its output (or, in a graph, its op), so a probability of exactly 1 is no
    clipped constant for them; a cast (a float16 output under a Keras loss) or an op after
    the activation loses the logits. The gradient is taken twice, with the stuck entries'
    labels as given and moved to the side they predict: a stuck entry adds 0 to both, so
    they are equal (bit for bit: the other entries' terms are the same computation), and
    an entry that learns adds its slope to one. Up to ``STUCK_SAMPLES_PROBED`` samples.
    """

    def learn(stuck):
        rows = np.flatnonzero(stuck.reshape(len(stuck), -1).any(axis=1))
        rows = rows[: th.STUCK_SAMPLES_PROBED]
        labels = np.asarray(y)
        moved = _labels_on_the_predicted_side(labels, np.asarray(y_pred), stuck, loss_info.kind)
        xb = tf.nest.map_structure(lambda leaf: tf.constant(np.asarray(leaf)[rows]), x)

        @tf.function
        def gradients(yb):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(loss_info.per_sample(yb, model(xb, training=training)))
            return [_dense(g) for g in tape.gradient(total, model.trainable_variables)]

        try:
            given = gradients(tf.constant(labels[rows]))
            on_their_side = gradients(tf.constant(moved[rows]))
        except Exception:  # noqa: BLE001 - cannot tell: the warning stands, as before the probe
            return False
        return any(
            a is not None and bool(tf.reduce_any(tf.not_equal(a, b)))
            for a, b in zip(given, on_their_side)
        )

    return learn


def _labels_on_the_predicted_side(y, p, stuck, kind):
    """``y`` with each stuck entry (binary) or row (categorical, sparse) labelled with the
    class it predicts, in ``y``'s layout."""
    if kind == "binary":
        side = np.where(stuck, np.round(p), y.reshape(p.shape))
    elif kind == "sparse":
        side = np.where(stuck, np.argmax(p, axis=-1), y.reshape(stuck.shape))
    else:
        one_hot = np.eye(p.shape[-1])[np.argmax(p, axis=-1)]
        side = np.where(stuck[..., None], one_hot, y)
    return side.reshape(y.shape).astype(y.dtype)


def _dense(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _total_loss(model, loss_info, xb, yb, y_pred):
    if loss_info is not None:
        total = tf.reduce_mean(loss_info.per_sample(yb, y_pred))
        if model.losses:
            total = total + tf.add_n([tf.cast(term, total.dtype) for term in model.losses])
        return total
    return model.compute_loss(x=xb, y=yb, y_pred=y_pred, training=True)


def _gradients(model, xb, yb, loss_info, training, scale):
    # The same loss scaling as Keras's mixed-precision train step, so that
    # float16 gradients do not underflow here when they would not in fit().
    with tf.GradientTape() as tape:
        y_pred = model(xb, training=training)
        total = _total_loss(model, loss_info, xb, yb, y_pred) * scale
    grads = tape.gradient(total, model.trainable_variables)
    if scale != 1.0:
        grads = [None if g is None else _unscale(g, scale) for g in grads]
    return grads


def _unscale(gradient, scale):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values / scale, gradient.indices, gradient.dense_shape)
    return gradient / scale


def _gradient_findings(model, x, y, loss_info, batch_size, training, learning_rate, inputs_scaled):
    """The gradient checks' findings, and the error computing the loss raised (else ``None``).

    Labels the label checks cannot see (one output's of a loss dict, ...) can
    make the loss raise here: that is reported as a finding, not raised.
    """
    try:
        with quiet_native_stderr():  # an invalid label logs the whole batch natively
            norms, bad_batch = _gradient_norms(model, x, y, loss_info, batch_size, training)
    except Exception as error:  # noqa: BLE001 - reported as a loss.raised finding
        return [], error
    grad_op = None
    if bad_batch is not None:
        xb, yb, scale = bad_batch
        grad_op = first_non_finite_op(
            lambda: _gradients(model, xb, yb, loss_info, training, scale)
        )
    findings = _training_checks.check_gradients(
        norms,
        learning_rate=learning_rate,
        op=grad_op,
        skips_non_finite=_skips_non_finite(model),
        step_scales_with_gradient=_step_scales_with_gradient(model),
        inputs_scaled=inputs_scaled,
    )
    return findings, None


def _gradient_norms(model, x, y, loss_info, batch_size, training):
    """Per-layer gradient norm for each batch, and the first batch with a non-finite gradient."""
    owner = {}
    for layer in model.layers:
        for variable in layer.trainable_weights:
            owner.setdefault(id(variable), layer.name)
    variables = model.trainable_variables
    norms = {}
    for variable in variables:
        name = owner.get(id(variable), variable.path.split("/")[0])
        entry = norms.setdefault(name, {"grad": [], "weight_sq": 0.0, "dtype": str(variable.dtype)})
        entry["weight_sq"] += _training_checks.tensor_norm(variable.numpy()) ** 2
    bad_batch = None
    # The loss scale carries over from batch to batch, as in training.
    scale = _loss_scale(model)
    for _, xb, yb in _data.batches(x, y, batch_size):
        grads, scale = _gradients_at_a_working_scale(model, xb, yb, loss_info, training, scale)
        batch_sq = {name: 0.0 for name in norms}
        for variable, grad in zip(variables, grads):
            if grad is None:
                continue
            name = owner.get(id(variable), variable.path.split("/")[0])
            batch_sq[name] += _training_checks.tensor_norm(grad) ** 2
        for name, value in batch_sq.items():
            norms[name]["grad"].append(float(np.sqrt(value)))
        if bad_batch is None and not all(np.isfinite(v) for v in batch_sq.values()):
            bad_batch = (xb, yb, scale)
    for entry in norms.values():
        entry["weight"] = float(np.sqrt(entry.pop("weight_sq")))
    return norms, bad_batch


def _trial_findings(model, x, y, loss, findings, notes, steps, batch_size):
    """Run the trial; when it diverges, say so and promote the findings that explain it."""
    try:
        trial = run_trial(model, x, y, steps=steps, batch_size=batch_size, loss=loss)
    except TrialUnavailable as reason:
        notes.append(f"no trial run: {reason}")
        return findings
    except Exception as error:  # noqa: BLE001 - the diagnosis stands without it
        reason = f"{type(error).__name__}: {_training_checks.first_line(error)}"
        notes.append(f"the trial run failed: {reason}")
        return findings
    if not trial.diverged:
        notes.append(_finite_trial_note(trial, findings))
        return findings
    rate = _learning_rate(model)
    what = (
        "went NaN/inf"
        if trial.verdict == "non_finite"
        else f"exploded to {format_number(trial.losses[-1])} "
        f"({format_number(trial.losses[-1] / trial.reference)}x its level "
        f"{format_number(trial.reference)})"
    )
    lower = _lower_rate_trial(model, x, y, loss, steps, batch_size)
    # An exploding gradient is measured as the step lr * |g|: when a copy at a lower
    # rate trains, the rate is the cause (optimizer.learning_rate) and the step's size
    # only its symptom, so it stays a warning and the rate comes first.
    explains = checks.EXPLAINS_DIVERGENCE - (
        {checks.GRADIENT_EXPLODING.id} if lower is not None else set()
    )
    promoted = [f.check for f in findings if f.check in explains and f.severity == "warning"]
    findings = [
        dataclasses.replace(f, severity="error", message=f.message + " (the trial run diverged)")
        if f.check in promoted
        else f
        for f in findings
    ]
    if lower is not None:
        factor, lower_trial = lower
        lower_rate = format_number(rate * factor)
        if learning_rate_schedule(model.optimizer) is None:
            at, lower_at = f"at learning rate {format_number(rate)}", f"at {lower_rate}"
            lower_it = f"lower the learning rate to {lower_rate} or less"
        else:  # the trials scale the whole schedule: name it and its factor
            cut = format_number(1 / factor)
            at = f"at its schedule's learning rate {format_number(rate)}"
            lower_at = f"with every rate of the schedule {cut}x lower ({lower_rate} now)"
            lower_it = f"lower the schedule's rates {cut}x or more"
        findings.append(
            finding(
                checks.OPTIMIZER_LEARNING_RATE,
                location=f"optimizer {type(model.optimizer).__name__}",
                message=f"{at} the trial diverged at step {trial.diverged_at}; {lower_at} it "
                f"trained {lower_trial.steps} steps with a finite loss",
                evidence={
                    "learning_rate": rate,
                    "stable_learning_rate": rate * factor,
                    "diverged_at": trial.diverged_at,
                },
                fix=f"{lower_it} (or scale the inputs and targets, which lets a larger rate "
                "work); to rescue runs that diverge anyway, "
                "stableops.callbacks.NaNGuard(action='continue') rolls back and cuts the rate",
            )
        )
    explained = promoted or lower is not None
    findings.append(
        finding(
            checks.TRIAL_DIVERGED,
            location="trial run",
            message=f"a copy of the model trained on this data with its optimizer settings "
            f"(learning rate {format_number(rate)}) {what} at step {trial.diverged_at} of {steps}",
            evidence={
                "diverged_at": trial.diverged_at,
                "losses": [format_number(v) for v in trial.losses[-4:]],
                "learning_rate": rate,
            },
            fix="the errors above explain it"
            if explained
            else "run fit with stableops.callbacks.NaNGuard(action='stop') to catch the step and "
            "name the layer; lower the learning rate",
        )
    )
    return findings


def _finite_trial_note(trial, findings) -> str:
    """The note for a trial whose loss stayed finite, qualified when errors were found."""
    note = f"trial run: {trial.steps} training steps on a copy, loss stayed finite"
    if any(f.severity == "error" for f in findings):
        note += " on the rows it trained on; the errors above stand (a sample may miss their rows)"
    return note


def _lower_rate_trial(model, x, y, loss, steps, batch_size):
    "(factor, trial) for the first lower learning rate at which the trial stays finite, or None."
    for factor in lower_rate_factors(model.optimizer, _learning_rate(model)):
        try:
            trial = run_trial(
                model, x, y, steps=steps, batch_size=batch_size, loss=loss,
                learning_rate_factor=factor,
            )
        except Exception:  # noqa: BLE001 - a schedule cannot be scaled here, ...
            return None
        if not trial.diverged:
            return factor, trial
    return None
