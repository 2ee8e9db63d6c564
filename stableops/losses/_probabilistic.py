"""Cross-entropy family losses: drop-in replacements for Keras 3.15 that stay finite.

Binary, categorical and sparse categorical cross-entropy, their focal
variants, KL divergence and Poisson, each as a function form (one value per
sample) and a ``keras.losses.Loss`` class with Keras's name, constructor
signature and defaults. On ordinary inputs the results are Keras's; where
Keras returns ``inf``/``nan``, a silently clipped value or a zero gradient,
these stay finite and accurate:

* the elementwise cross-entropy math is ``stableops.ops``: log-space forms
  from logits; from probabilities a clip at the dtype's smallest normal and
  largest value below 1 with a straight-through gradient, instead of Keras's
  ``1e-7`` clip with gradient 0; half precision is computed in float32;
* a sigmoid/softmax output carries its logits (Keras's ``_keras_logits``);
  the classes read them *before* Keras's ``Loss.__call__`` casts ``y_pred``
  to the loss dtype (which drops them under ``mixed_float16`` and leaves
  Keras with a clipped, zero-gradient loss), and compute from the logits;
* integer labels are read before that cast too, so ``dtype="float16"`` never
  rounds label 3001 to 3000;
* focal factors ``(1 - p_t)**gamma`` take ``1 - p_t`` without cancellation
  (from the logits' sigmoids, or as the sum of the other classes' softmax
  probabilities) and floor it at the dtype's smallest normal before ``pow``:
  finite with a finite gradient for every ``gamma >= 0``;
* KL divergence and Poisson use ``xlogy`` semantics (``0 * log 0 = 0``) and
  floor a zero probability/rate at the dtype's smallest normal instead of
  adding ``1e-7``.

Keyword-only extras (default off, i.e. Keras behaviour): ``pos_weight`` on
the binary losses, ``ignore_class`` on every cross-entropy, ``label_smoothing``
on the sparse one.

Every function validates its arguments outside the compiled kernel (integer
and boolean predictions cast to the loss dtype as Keras does; ``TypeError``
naming ``y_pred``/``y_true`` for strings and complex numbers; ``ValueError``
naming both shapes, an axis out of range or the bad hyperparameter; an error
naming an out-of-range label and the number of classes), then runs an
XLA-compiled kernel when called eagerly.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings

import keras
import numpy as np
import tensorflow as tf

from stableops import ops
from stableops._internal.checks import (
    as_float_tensor,
    axis_argument,
    canonical_axis,
    number,
)
from stableops._internal.dtypes import (
    compute_dtype,
    dtype_limits,
    to_compute_saturating,
)
from stableops._internal.kernel import xla_kernel
from stableops._internal.where import safe_where
from stableops.losses._base import (
    FunctionLoss,
    check_loss_inputs,
    dtype_of,
    prepare,
    ragged_rows,
)
from stableops.ops._crossentropy import raise_on_invalid_labels

__all__ = [
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy",
    "KLDivergence",
    "Poisson",
    "SparseCategoricalCrossentropy",
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "kl_divergence",
    "poisson",
    "sparse_categorical_crossentropy",
]

_REDUCTION = "sum_over_batch_size"
_SIGMOID, _SOFTMAX = "Sigmoid", "Softmax"

# Entry points are plain graph code (Python control flow on static values
# only): AutoGraph must not convert them (and, through them, all of
# stableops.ops) inside a user's tf.function, which costs seconds per trace.
_graph_code = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------
# Argument checks (static, outside the compiled kernels)
# ----------------------------------------------------------------------------


def _label_smoothing(value):
    return number(value, "label_smoothing", 0.0, 1.0)


def _gamma(value):
    return number(value, "gamma", 0.0)


def _pos_weight(value):
    return number(value, "pos_weight", 0.0, low_open=True)


def _ignore_class(value, *, integer):
    """``None``, or the ignored class as a Python int (``integer``) or float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`ignore_class` must be None or a number, got ignore_class={value!r}")
    if integer:
        if not isinstance(value, numbers.Integral):
            if not float(value).is_integer():
                raise ValueError(
                    f"`ignore_class` must be None or an integer, got ignore_class={value!r}"
                )
        return int(value)
    return number(value, "ignore_class")


def _class_alpha(alpha):
    """Categorical focal ``alpha``: a non-negative number or a sequence of them (one per class)."""
    if isinstance(alpha, (list, tuple, np.ndarray)):
        values = tuple(number(a, "alpha", 0.0) for a in np.ravel(np.asarray(alpha, dtype=object)))
        if not values:
            raise ValueError(f"`alpha` must not be empty, got alpha={alpha!r}")
        return values
    return number(alpha, "alpha", 0.0)


def _bool(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"`{name}` must be a bool, got {name}={value!r}")


# ----------------------------------------------------------------------------
# Logits carried by sigmoid/softmax outputs
# ----------------------------------------------------------------------------


def _carried_logits(y_pred, op_type):
    """The logits a sigmoid/softmax output was computed from, or ``None``.

    Keras's activations leave them on their output as ``_keras_logits``; a
    graph tensor produced directly by a ``Sigmoid``/``Softmax`` op gives its
    op's input. The same rules as Keras's TF backend (``_get_logits``).
    """
    logits = getattr(y_pred, "_keras_logits", None)
    if logits is not None:
        return logits
    if not tf.is_tensor(y_pred) or isinstance(y_pred, tf.Variable):
        return None
    try:
        op = y_pred.op  # eager tensors have no op
    except AttributeError:
        return None
    if op is not None and op.type == op_type and len(op.inputs) == 1:
        return op.inputs[0]
    return None


def _resolve_prediction(y_pred, from_logits, op_type, fn_name):
    """``(prediction, from_logits)``: the carried logits when ``y_pred`` has them."""
    logits = _carried_logits(y_pred, op_type)
    if logits is None:
        return y_pred, from_logits
    if from_logits:
        warnings.warn(
            f"`{fn_name}` received `from_logits=True`, but the `y_pred` argument "
            f"was produced by a {op_type} activation and thus does not represent "
            "logits. Its logits are used. Was this intended?",
            stacklevel=3,
        )
    return logits, True


# ----------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------


def _in_compute_dtype(y_true, y_pred):
    """Both tensors in ``y_pred``'s computing dtype (float32 for half precision)."""
    dtype = compute_dtype(y_pred.dtype)
    if y_true.dtype.is_floating and y_true.dtype != dtype:
        y_true = to_compute_saturating(y_true) if compute_dtype(y_true.dtype) == dtype else tf.cast(y_true, dtype)
    else:
        y_true = tf.cast(y_true, dtype)
    return y_true, to_compute_saturating(y_pred)


def _with_mask(result):
    """A kernel's ``(loss, valid)`` pair as a loss carrying its Keras mask."""
    if not isinstance(result, tuple):
        return result
    loss, valid = result
    # Keras's reduction reads the mask from this attribute (as its own
    # sparse_categorical_crossentropy with ignore_class sets it): ignored
    # samples count neither in the sum nor in the "sum_over_batch_size" divisor.
    loss._keras_mask = valid
    return loss


def _mean(values, axis):
    """Mean over ``axis``, dividing before summing: the sum of large finite
    terms (a loss of 1e38 per element) must not overflow when the mean does not."""
    count = tf.cast(tf.shape(values)[axis], values.dtype)
    return tf.reduce_sum(values / count, axis=axis)


def _mean_over_valid(values, valid, axis):
    """Mean over ``axis`` of the ``valid`` entries, and whether there was any (0 if none)."""
    count = tf.reduce_sum(tf.cast(valid, values.dtype), axis=axis, keepdims=True)
    values = tf.where(valid, values / tf.maximum(count, 1.0), tf.zeros_like(values))
    return tf.reduce_sum(values, axis=axis), tf.squeeze(count, axis) > 0


def _smooth_binary(target, label_smoothing):
    if label_smoothing:
        return target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return target


def _clip(x, low, high=None):
    """Clip to ``[low, high]`` with ``tf.where``: NaN stays NaN (``tf.maximum``
    drops it under XLA); the gradient is 0 outside the interval, as ``clip_by_value``."""
    low = tf.constant(low, x.dtype)
    x = tf.where(x < low, low, x)
    if high is not None:
        high = tf.constant(high, x.dtype)
        x = tf.where(x > high, high, x)
    return x


def _floor_at_tiny(x):
    # The smallest normal of the computing dtype: TF flushes subnormals, so
    # this changes nothing but zero and negative values (log(0) = -inf).
    return _clip(x, dtype_limits(x.dtype).tiny)


# ----------------------------------------------------------------------------
# Binary cross-entropy
# ----------------------------------------------------------------------------


def _weighted_binary_crossentropy(target, output, from_logits, pos_weight):
    """Elementwise ``-(pos_weight * t log p + (1 - t) log(1 - p))`` via ``ops.binary_crossentropy``."""
    if pos_weight == 1.0:
        return ops.binary_crossentropy(target, output, from_logits=from_logits)
    ones, zeros = tf.ones_like(output), tf.zeros_like(output)
    # Each term is evaluated only where its target weight is nonzero (double
    # where): 0 * (-log 0) must count as 0, with a zero gradient.
    positive = safe_where(
        tf.not_equal(target, 0.0),
        output,
        lambda o: ops.binary_crossentropy(ones, o, from_logits=from_logits),
        0.0,
        safe_true=0.5,
    )
    negative = safe_where(
        tf.not_equal(target, 1.0),
        output,
        lambda o: ops.binary_crossentropy(zeros, o, from_logits=from_logits),
        0.0,
        safe_true=0.5,
    )
    loss = pos_weight * target * positive + (1.0 - target) * negative
    # An infinite target is not a label: NaN (the op's rule), never inf - inf.
    return tf.where(tf.math.is_finite(target), loss, tf.fill(tf.shape(loss), tf.constant(math.nan, loss.dtype)))


def _binary_setup(y_true, y_pred, ignore_class):
    """Targets and predictions in the computing dtype; ignored entries made harmless."""
    target, output = _in_compute_dtype(y_true, y_pred)
    if ignore_class is None:
        return target, output, None
    valid = tf.not_equal(target, ignore_class)
    # Ignored entries are left out (their NaN too): harmless stand-ins keep
    # every branch and gradient finite there.
    target = tf.where(valid, target, tf.zeros_like(target))
    output = tf.where(valid, output, tf.fill(tf.shape(output), tf.constant(0.5, output.dtype)))
    return target, output, valid


def _binary_reduce(values, valid, axis):
    if valid is None:
        return _mean(values, axis)
    return _mean_over_valid(values, valid, axis)


@xla_kernel(row_local=True)
def _binary_crossentropy_kernel(
    y_true, y_pred, from_logits, label_smoothing, axis, pos_weight, ignore_class
):
    target, output, valid = _binary_setup(y_true, y_pred, ignore_class)
    target = _smooth_binary(target, label_smoothing)
    values = _weighted_binary_crossentropy(target, output, from_logits, pos_weight)
    return _binary_reduce(values, valid, axis)


def _binary_crossentropy(
    y_true, y_pred, *, from_logits, label_smoothing, axis, pos_weight, ignore_class
):
    y_true, y_pred = prepare(y_true, y_pred, "binary_crossentropy", axis_argument(axis))
    return _with_mask(
        _binary_crossentropy_kernel(
            y_true,
            y_pred,
            from_logits=bool(from_logits),
            label_smoothing=_label_smoothing(label_smoothing),
            axis=axis_argument(axis),
            pos_weight=_pos_weight(pos_weight),
            ignore_class=_ignore_class(ignore_class, integer=False),
        )
    )


@_graph_code
def binary_crossentropy(
    y_true,
    y_pred,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    pos_weight=1.0,
    ignore_class=None,
):
    """Binary cross-entropy, averaged over ``axis``.

    Formula:
        ``mean(-(pos_weight * t * log(p) + (1 - t) * log(1 - p)), axis)`` with
        ``t = y_true * (1 - label_smoothing) + label_smoothing / 2`` and
        ``p = y_pred`` (probabilities) or ``sigmoid(y_pred)`` (logits).

    Numerical stability:
        Elementwise math is ``ops.binary_crossentropy``, computed in float32
        for half precision (then its clip bounds are float32's). From logits:
        ``softplus`` forms, finite for every finite logit. From probabilities:
        the probabilities are clipped to ``[tiny, 1 - eps/2]`` of the
        computing dtype with a straight-through gradient, instead of Keras's
        ``[1e-7, 1 - 1e-7]`` clip with gradient 0: a confidently wrong
        prediction (``y_true=1, y_pred=1e-9``) costs 20.7 with gradient
        ``-1e9`` (Keras: 16.1, gradient 0); ``y_pred = 0`` costs 87.3; float16
        and bfloat16 ``y_pred = 1`` with ``y_true = 0`` cost 16.6 (Keras:
        ``inf``). A gradient with respect to a float16 prediction saturates
        at 65504 instead of overflowing. A ``y_pred`` produced by a sigmoid
        activation carries its logits, which are used (as Keras does, but
        also under ``mixed_float16``, see :class:`BinaryCrossentropy`).
        ``0 * log(0)`` counts as 0. The mean over ``axis`` divides before it
        sums (terms of 1e38 do not overflow it). NaN in a prediction gives
        NaN; NaN in an ignored entry (``ignore_class``) is ignored. An
        infinite probability or target is invalid input and gives NaN (the
        formula would give ``log(inf)``: a negative loss).
        Error budget: 4 ULP of the float32 result per element (the budget of
        ``ops.binary_crossentropy``).

    Args:
        y_true: targets in ``[0, 1]``, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: probabilities or logits, same shape; real (integers and booleans are cast).
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``: squeeze targets towards 0.5.
        axis: the axis averaged over (default ``-1``).
        pos_weight: keyword-only, ``> 0``: weight of the positive term
            (``tf.nn.weighted_cross_entropy_with_logits``); 1 is Keras's loss.
        ignore_class: keyword-only, a target value (e.g. ``-1``) whose entries
            are left out of the mean over ``axis``; a sample with no other
            entry gets loss 0 and a ``False`` Keras mask, so the classes leave
            it out of the batch mean. ``None`` (default) ignores nothing.

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype (float32 for
        float16/bfloat16/float32, float64 for float64).

    Example:
        >>> binary_crossentropy([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])
        ... # [0.9162908, 0.7135582]
    """
    y_pred, from_logits = _resolve_prediction(y_pred, from_logits, _SIGMOID, "binary_crossentropy")
    return _binary_crossentropy(
        y_true,
        y_pred,
        from_logits=from_logits,
        label_smoothing=label_smoothing,
        axis=axis,
        pos_weight=pos_weight,
        ignore_class=ignore_class,
    )


# ----------------------------------------------------------------------------
# Binary focal cross-entropy
# ----------------------------------------------------------------------------


def _power(base, gamma):
    """``base ** gamma``, with ``base`` floored at the smallest normal ``tiny``.

    ``pow(0, gamma)`` is Keras's NaN gradient (``gamma * 0 ** (gamma - 1)``
    is ``inf`` for ``gamma < 1``, or ``0 * inf`` for ``gamma = 0``). Below
    ``tiny`` (an underflowed ``1 - p_t``) the factor is ``tiny ** gamma`` with
    a zero gradient; the cross-entropy it multiplies is then below ``tiny``
    too (``-log p_t ~ 1 - p_t``), so the product is 0 either way. Above it the
    slope ``gamma * base ** (gamma - 1)`` is at most ``1 / tiny``: finite.
    ``pow`` of an accurate base is about 1 ULP, where
    ``exp(gamma * log(base))`` would lose ``gamma * |log(base)|`` ULPs.
    """
    tiny = dtype_limits(base.dtype).tiny
    return tf.pow(_clip(base, tiny), gamma)


def _focal_factor_from_logits(target, logits, gamma):
    """``(1 - p_t) ** gamma`` from logits, finite in value and gradient for every ``gamma >= 0``.

    ``1 - p_t = t * sigmoid(-z) + (1 - t) * sigmoid(z)``: two sigmoids of the
    exact logit (each about 1 ULP, also where one saturates) and a sum of
    non-negative terms, so no cancellation however large ``|z|`` is.
    """
    target = _clip(target, 0.0, 1.0)
    base = target * tf.math.sigmoid(-logits) + (1.0 - target) * tf.math.sigmoid(logits)
    return _power(base, gamma)


def _focal_factor_from_probabilities(target, probabilities, gamma):
    """``(1 - p_t) ** gamma`` with ``1 - p_t = t * (1 - p) + (1 - t) * p``.

    ``1 - p_t`` is floored at the smallest normal ``tiny`` (only an exact 0,
    a saturated ``p``, is below it), so the factor there is ``tiny ** gamma``
    with a zero gradient instead of Keras's NaN ``pow(0, gamma)`` gradient.
    """
    target = _clip(target, 0.0, 1.0)
    base = target * (1.0 - probabilities) + (1.0 - target) * probabilities
    return _power(base, gamma)


@xla_kernel(row_local=True)
def _binary_focal_crossentropy_kernel(
    y_true,
    y_pred,
    apply_class_balancing,
    alpha,
    gamma,
    from_logits,
    label_smoothing,
    axis,
    pos_weight,
    ignore_class,
):
    target, output, valid = _binary_setup(y_true, y_pred, ignore_class)
    target = _smooth_binary(target, label_smoothing)
    values = _weighted_binary_crossentropy(target, output, from_logits, pos_weight)
    if gamma:  # gamma == 0 is plain cross-entropy
        if from_logits:
            values = _focal_factor_from_logits(target, output, gamma) * values
        else:
            values = _focal_factor_from_probabilities(target, output, gamma) * values
    if apply_class_balancing:
        values = (target * alpha + (1.0 - target) * (1.0 - alpha)) * values
    return _binary_reduce(values, valid, axis)


@_graph_code
def binary_focal_crossentropy(
    y_true,
    y_pred,
    apply_class_balancing=False,
    alpha=0.25,
    gamma=2.0,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    pos_weight=1.0,
    ignore_class=None,
):
    """Binary focal cross-entropy (Lin et al., 2018), averaged over ``axis``.

    Formula:
        ``mean(w * (1 - p_t)^gamma * bce, axis)`` with ``bce`` the (optionally
        ``pos_weight``-ed) binary cross-entropy, ``1 - p_t = t * (1 - p) +
        (1 - t) * p`` and ``w = alpha * t + (1 - alpha) * (1 - t)`` when
        ``apply_class_balancing`` (else 1); ``t`` the smoothed target.

    Numerical stability:
        Keras's ``pow(1 - p_t, gamma)`` has a NaN gradient at a saturated
        prediction for ``gamma`` 0 or 0.5 (``pow(0, gamma)``). Here ``1 - p_t``
        is computed without cancellation (from logits: ``t * sigmoid(-z) +
        (1 - t) * sigmoid(z)``, each sigmoid accurate also where it saturates;
        from probabilities: ``t * (1 - p) + (1 - t) * p``) and floored at the
        smallest normal ``tiny`` before ``pow``: the factor's slope is then at
        most ``1/tiny``, and below ``tiny`` (an underflowed ``1 - p_t``, where
        the cross-entropy it multiplies is below ``tiny`` too, so the loss
        term is 0 either way) it is ``tiny**gamma`` with a zero gradient. So
        value and gradient are finite for every ``gamma >= 0`` and every
        finite input. ``pow`` of an accurate base costs about 1 ULP, where
        the log-space ``exp(gamma * log(1 - p_t))`` loses
        ``gamma * |log(1 - p_t)|`` ULPs. ``gamma = 0`` is exactly binary
        cross-entropy. Targets outside ``[0, 1]`` are clipped to it in the
        focal factor only. The cross-entropy term is
        :func:`binary_crossentropy`'s. A sigmoid output's logits are used.
        Error budget: 16 ULP of the float32 result per element (about 3 with
        hard targets; soft targets add the cross-entropy's 4 ULP to a
        ``gamma``-amplified focal factor).

    Args:
        y_true: targets in ``[0, 1]``, ``[batch, d0, ..., dN]``.
        y_pred: probabilities or logits, same shape; real (integers and booleans are cast).
        apply_class_balancing: weight class 1 by ``alpha``, class 0 by ``1 - alpha``.
        alpha: float in ``[0, 1]``.
        gamma: float ``>= 0``, the focusing parameter.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the axis averaged over.
        pos_weight: keyword-only, ``> 0``, weight of the positive cross-entropy term.
        ignore_class: keyword-only, a target value whose entries are ignored
            (see :func:`binary_crossentropy`).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> binary_focal_crossentropy([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]], gamma=2.0)
        ... # [0.32986, 0.20579]
    """
    y_pred, from_logits = _resolve_prediction(
        y_pred, from_logits, _SIGMOID, "binary_focal_crossentropy"
    )
    return _binary_focal_crossentropy(
        y_true,
        y_pred,
        apply_class_balancing=apply_class_balancing,
        alpha=alpha,
        gamma=gamma,
        from_logits=from_logits,
        label_smoothing=label_smoothing,
        axis=axis,
        pos_weight=pos_weight,
        ignore_class=ignore_class,
    )


def _binary_focal_crossentropy(
    y_true,
    y_pred,
    *,
    apply_class_balancing,
    alpha,
    gamma,
    from_logits,
    label_smoothing,
    axis,
    pos_weight,
    ignore_class,
):
    y_true, y_pred = prepare(y_true, y_pred, "binary_focal_crossentropy", axis_argument(axis))
    return _with_mask(
        _binary_focal_crossentropy_kernel(
            y_true,
            y_pred,
            apply_class_balancing=_bool(apply_class_balancing, "apply_class_balancing"),
            alpha=number(alpha, "alpha", 0.0, 1.0),
            gamma=_gamma(gamma),
            from_logits=bool(from_logits),
            label_smoothing=_label_smoothing(label_smoothing),
            axis=axis_argument(axis),
            pos_weight=_pos_weight(pos_weight),
            ignore_class=_ignore_class(ignore_class, integer=False),
        )
    )


# ----------------------------------------------------------------------------
# Categorical cross-entropy
# ----------------------------------------------------------------------------


def _class_index(shape_like, axis):
    """``0, 1, ..., K-1`` along ``axis``, broadcastable against ``shape_like``."""
    rank = len(shape_like.shape)
    shape = [1] * rank
    shape[axis] = -1
    return tf.reshape(tf.range(tf.shape(shape_like)[axis]), shape)


def _categorical_setup(y_true, y_pred, from_logits, axis, ignore_class):
    """Targets/predictions in the computing dtype; ignored rows made harmless."""
    target, output = _in_compute_dtype(y_true, y_pred)
    if ignore_class is None:
        return target, output, None
    # A row is ignored when its target class (argmax of the target) is ignore_class.
    valid = tf.not_equal(tf.argmax(target, axis=axis, output_type=tf.int32), ignore_class)
    row_valid = tf.expand_dims(valid, axis)
    # Stand-ins for ignored rows (their NaN too): zero target, uniform prediction.
    target = tf.where(row_valid, target, tf.zeros_like(target))
    output = tf.where(row_valid, output, tf.fill(tf.shape(output), tf.constant(0.0 if from_logits else 1.0, output.dtype)))
    return target, output, valid


def _smooth_categorical(target, label_smoothing, axis):
    if not label_smoothing:
        return target
    num_classes = tf.cast(tf.shape(target)[axis], target.dtype)
    return target * (1.0 - label_smoothing) + label_smoothing / num_classes


def _finish_rows(loss, valid):
    if valid is None:
        return loss
    return tf.where(valid, loss, tf.zeros_like(loss)), valid


@xla_kernel(row_local=True)
def _categorical_crossentropy_kernel(y_true, y_pred, from_logits, label_smoothing, axis, ignore_class):
    axis = canonical_axis(axis, len(y_pred.shape))
    target, output, valid = _categorical_setup(y_true, y_pred, from_logits, axis, ignore_class)
    target = _smooth_categorical(target, label_smoothing, axis)
    loss = ops.categorical_crossentropy(target, output, from_logits=from_logits, axis=axis)
    return _finish_rows(loss, valid)


def _categorical_crossentropy(y_true, y_pred, *, from_logits, label_smoothing, axis, ignore_class):
    axis = axis_argument(axis)
    y_true, y_pred = prepare(y_true, y_pred, "categorical_crossentropy", axis)
    return _with_mask(
        _categorical_crossentropy_kernel(
            y_true,
            y_pred,
            from_logits=bool(from_logits),
            label_smoothing=_label_smoothing(label_smoothing),
            axis=axis,
            ignore_class=_ignore_class(ignore_class, integer=True),
        )
    )


@_graph_code
def categorical_crossentropy(
    y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *, ignore_class=None
):
    """Categorical cross-entropy between one-hot (or soft) targets and a distribution.

    Formula:
        ``-sum(t * log_softmax(y_pred), axis)`` from logits,
        ``-sum(t * log(y_pred / sum(y_pred)), axis)`` from probabilities, with
        ``t = y_true * (1 - label_smoothing) + label_smoothing / num_classes``.

    Numerical stability:
        Elementwise math is ``ops.categorical_crossentropy``: max-shifted
        log-softmax (logits beyond the float16 range are fine once computed
        in float32), ``0 * log 0 = 0`` so a masked ``-inf`` logit with a zero
        target costs nothing (Keras: NaN), and an all-zero probability row
        stays finite (Keras: NaN). A target with mass on a ``-inf`` logit is
        ``+inf`` (the exact value; its gradient is not NaN). A softmax
        output's logits are used (as Keras does).
        Error budget: 4 ULP of the float32 result (rows of up to 8 classes).

    Args:
        y_true: targets, ``[batch, ..., num_classes]`` (class axis ``axis``).
        y_pred: probabilities or logits, same shape; real (integers and booleans are cast).
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the class axis.
        ignore_class: keyword-only int: rows whose target class (the argmax
            of ``y_true`` along ``axis``) is ``ignore_class`` get loss 0 and a
            ``False`` Keras mask (left out of the batch mean by the classes).

    Returns:
        The loss with ``axis`` reduced, in ``y_pred``'s computing dtype.

    Example:
        >>> categorical_crossentropy([[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        ... # [0.0513, 2.3026]
    """
    y_pred, from_logits = _resolve_prediction(
        y_pred, from_logits, _SOFTMAX, "categorical_crossentropy"
    )
    return _categorical_crossentropy(
        y_true,
        y_pred,
        from_logits=from_logits,
        label_smoothing=label_smoothing,
        axis=axis,
        ignore_class=ignore_class,
    )


# ----------------------------------------------------------------------------
# Categorical focal cross-entropy
# ----------------------------------------------------------------------------


def _top_class(logits, axis):
    """``True`` at each row's most probable class (the first one on ties)."""
    top = tf.argmax(logits, axis=axis, output_type=tf.int32)
    return tf.equal(_class_index(logits, axis), tf.expand_dims(top, axis))


def _categorical_focal_factor(logits, axis, gamma):
    """``(1 - p) ** gamma`` for every class, finite in value and gradient for every ``gamma >= 0``.

    ``1 - p`` is taken in linear space from the softmax probabilities: as
    ``1 - p`` for all but the row's most probable class (there ``p <= 1/2``:
    no cancellation) and as the sum of the other probabilities for that one,
    accurate however close ``p`` is to 1 (``1 - p`` would round to 0, and
    ``log(1 - p)`` give a NaN gradient). Then :func:`_power`.
    """
    is_top = _top_class(logits, axis)
    probabilities = ops.softmax(logits, axis=axis)
    others = tf.reduce_sum(tf.where(is_top, tf.zeros_like(probabilities), probabilities), axis=axis, keepdims=True)
    base = tf.where(is_top, tf.broadcast_to(others, tf.shape(probabilities)), 1.0 - probabilities)
    return _power(base, gamma)


@tf.custom_gradient
def _focal_product(factor, cross_entropy):
    """``factor * cross_entropy`` (``ce = -t log p``, ``t <= 1``), with the factor's gradient
    left out where it is below the dtype's resolution.

    The factor ``(1 - p)^gamma`` changes with ``p`` at a rate of at most
    ``gamma * p``, so its part of the gradient, ``ce * d factor``, is at most
    ``gamma * t * (-log p) * p``. Where ``ce > -log(tiny)`` (87.3 in float32),
    ``-log p >= ce / t`` puts ``p`` below the smallest normal: that part is 0
    in the dtype, and it is sent as 0. Autodiff would send ``upstream * ce``
    down the factor's chain, where a huge or overflowed ``ce`` (logits
    ``[-3e38, 3e38, 0]`` with target class 0: ``inf``) meets the softmax
    slope ``p = 0`` as ``inf * 0 = NaN``; the plain cross-entropy's gradient
    is finite there. The cross-entropy's own gradient is unchanged.
    """

    def grad(upstream):
        # -log(tiny): beyond it the factor's slope underflows (see above).
        resolved = cross_entropy <= -math.log(dtype_limits(cross_entropy.dtype).tiny)
        to_factor = tf.where(resolved, upstream * cross_entropy, tf.zeros_like(cross_entropy))
        # NaN is never hidden: a NaN cross-entropy still reaches the factor.
        to_factor = tf.where(tf.math.is_nan(cross_entropy), cross_entropy, to_factor)
        return to_factor, upstream * factor

    return factor * cross_entropy, grad


def _categorical_alpha(alpha, log_p, axis):
    if isinstance(alpha, tuple):
        shape = [1] * len(log_p.shape)
        shape[axis] = len(alpha)
        return tf.reshape(tf.constant(alpha, log_p.dtype), shape)
    return alpha


@xla_kernel(row_local=True)
def _categorical_focal_crossentropy_kernel(
    y_true, y_pred, alpha, gamma, from_logits, label_smoothing, axis, ignore_class
):
    axis = canonical_axis(axis, len(y_pred.shape))
    target, output, valid = _categorical_setup(y_true, y_pred, from_logits, axis, ignore_class)
    target = _smooth_categorical(target, label_smoothing, axis)
    if from_logits:
        logits = output
    else:
        # Probabilities as logits: softmax(log p) = p / sum(p), the row
        # normalization Keras does, without overflow of the sum. Zero and
        # negative probabilities are floored at the smallest normal (log finite).
        logits = tf.math.log(_floor_at_tiny(output))
    log_p = ops.log_softmax(logits, axis=axis)
    # -t * log p per class, 0 where t = 0 (also at log p = -inf, a masked logit).
    cross_entropy = safe_where(
        tf.not_equal(target, 0.0), log_p, lambda v: -target * v, 0.0, safe_true=-1.0
    )
    if gamma:  # gamma == 0: no focal factor (and no 0 * log 0)
        cross_entropy = _focal_product(_categorical_focal_factor(logits, axis, gamma), cross_entropy)
    values = _categorical_alpha(alpha, log_p, axis) * cross_entropy
    return _finish_rows(tf.reduce_sum(values, axis=axis), valid)


def _categorical_focal_crossentropy(
    y_true, y_pred, *, alpha, gamma, from_logits, label_smoothing, axis, ignore_class
):
    axis = axis_argument(axis)
    y_true, y_pred = prepare(y_true, y_pred, "categorical_focal_crossentropy", axis)
    canonical = canonical_axis(axis, len(y_pred.shape))
    alpha = _class_alpha(alpha)
    num_classes = y_pred.shape[canonical]
    if isinstance(alpha, tuple) and num_classes is not None and len(alpha) != num_classes:
        raise ValueError(
            f"`alpha` must have one weight per class ({num_classes}), got alpha={alpha!r}"
        )
    return _with_mask(
        _categorical_focal_crossentropy_kernel(
            y_true,
            y_pred,
            alpha=alpha,
            gamma=_gamma(gamma),
            from_logits=bool(from_logits),
            label_smoothing=_label_smoothing(label_smoothing),
            axis=axis,
            ignore_class=_ignore_class(ignore_class, integer=True),
        )
    )


@_graph_code
def categorical_focal_crossentropy(
    y_true,
    y_pred,
    alpha=0.25,
    gamma=2.0,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    ignore_class=None,
):
    """Categorical focal cross-entropy (Lin et al., 2018).

    Formula:
        ``sum(alpha * (1 - p)^gamma * (-t * log p), axis)`` with ``p`` the
        softmax of the logits or the row-normalized probabilities and ``t`` the
        smoothed target.

    Numerical stability:
        Nothing is computed from a clipped ``p``. The cross-entropy term is
        ``-t * log p`` with ``log p = log_softmax(.)`` (0 where ``t = 0``, also
        at a masked ``-inf`` logit). The focal factor is ``pow(1 - p, gamma)``
        with ``1 - p`` from the softmax probabilities: ``1 - p`` for all but
        the row's most probable class (``p <= 1/2``) and the sum of the other
        probabilities for that one, accurate however close ``p`` is to 1;
        floored at the smallest normal ``tiny`` (see
        :func:`binary_focal_crossentropy`). So a confidently wrong prediction
        from logits keeps its gradient (Keras clips ``p`` to
        ``[1e-7, 1 - 1e-7]``: zero gradient beyond), and value and gradient
        are finite for every ``gamma >= 0``. From probabilities, zero and
        negative entries are floored at ``tiny`` before the row is normalized
        (an all-zero row counts as uniform; Keras: NaN). Where the
        cross-entropy exceeds ``-log(tiny)`` the focal factor's share of the
        gradient is below the dtype's resolution and is left out
        (``_focal_product``): logits ``[-3e38, 3e38, 0]`` have a finite
        gradient, as in :func:`categorical_crossentropy`. A softmax output's
        logits are used.
        Error budget: 8 ULP of the float32 result (rows of up to 8 classes;
        a logit difference that is not exact in float32 adds its own
        rounding, ``|dz| * eps / 2``, to every probability).

    Args:
        y_true: one-hot (or soft) targets, ``[batch, ..., num_classes]``.
        y_pred: probabilities or logits, same shape; real (integers and booleans are cast).
        alpha: a float ``>= 0`` or a sequence of them (one per class).
        gamma: float ``>= 0``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the class axis.
        ignore_class: keyword-only int (see :func:`categorical_crossentropy`).

    Returns:
        The loss with ``axis`` reduced, in ``y_pred``'s computing dtype.

    Example:
        >>> categorical_focal_crossentropy([[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
        ... # [3.2058e-05, 0.4663]
    """
    y_pred, from_logits = _resolve_prediction(
        y_pred, from_logits, _SOFTMAX, "categorical_focal_crossentropy"
    )
    return _categorical_focal_crossentropy(
        y_true,
        y_pred,
        alpha=alpha,
        gamma=gamma,
        from_logits=from_logits,
        label_smoothing=label_smoothing,
        axis=axis,
        ignore_class=ignore_class,
    )


# ----------------------------------------------------------------------------
# Sparse categorical cross-entropy
# ----------------------------------------------------------------------------


def _labels(y_true):
    """Class labels as a tensor: int32/int64 as given, other integers and bools as int64,
    floats as given (they must hold integral values); never through a narrower float."""
    labels = tf.convert_to_tensor(y_true)
    if labels.dtype in (tf.int32, tf.int64) or labels.dtype.is_floating:
        return labels
    if labels.dtype.is_integer or labels.dtype == tf.bool:
        return tf.cast(labels, tf.int64)
    raise TypeError(f"`y_true` must hold integer class labels, got dtype {labels.dtype.name}")


def _invalid_labels(labels, num_classes, ignore_class):
    """Labels that are not an integer in ``[0, num_classes)`` (nor ``ignore_class``)."""
    num_classes = tf.cast(num_classes, labels.dtype)
    bad = tf.logical_or(tf.less(labels, 0), tf.greater_equal(labels, num_classes))
    if labels.dtype.is_floating:
        # NaN compares False everywhere: count it as bad explicitly.
        bad = tf.logical_or(bad, tf.logical_not(tf.equal(labels, tf.math.floor(labels))))
    if ignore_class is not None:
        bad = tf.logical_and(bad, tf.not_equal(labels, tf.cast(ignore_class, labels.dtype)))
    return bad


def _check_label_range(labels, num_classes, ignore_class):
    """Error naming the first out-of-range label and the class count (eager and graph).

    Runs outside the kernel: inside XLA the assert would be dropped (the
    kernel then gives NaN for that sample, ``ops.sparse_categorical_crossentropy``,
    never a finite loss). Returns ``labels``, made to depend on the check in graphs.
    """
    invalid = _invalid_labels(labels, num_classes, ignore_class)
    return raise_on_invalid_labels(labels, invalid, num_classes)


def _prepare_sparse(y_true, y_pred, axis):
    if isinstance(y_true, tf.RaggedTensor) or isinstance(y_pred, tf.RaggedTensor):
        prepare(y_true, y_pred, "sparse_categorical_crossentropy")  # the error for ragged input
    y_pred = as_float_tensor(y_pred, "y_pred", keras.config.floatx())
    labels = _labels(y_true)
    rank = len(y_pred.shape)
    canonical = canonical_axis(axis, rank)
    # A trailing (or class-axis) size-1 label axis is squeezed, as in Keras.
    if len(labels.shape) == rank and labels.shape[canonical] == 1:
        labels = tf.squeeze(labels, axis=canonical)
    expected = y_pred.shape[:canonical].concatenate(y_pred.shape[canonical + 1 :])
    if not labels.shape.is_compatible_with(expected):
        raise ValueError(
            "`y_true` must have the shape of `y_pred` without its class axis, "
            f"got {labels.shape} and {y_pred.shape}"
        )
    num_classes = y_pred.shape[canonical]
    if num_classes is None:
        num_classes = tf.shape(y_pred)[canonical]
    return labels, y_pred, num_classes


@xla_kernel(row_local=True)
def _sparse_categorical_crossentropy_kernel(
    labels, y_pred, from_logits, ignore_class, axis, label_smoothing
):
    output = to_compute_saturating(y_pred)
    axis = canonical_axis(axis, len(output.shape))
    valid = None
    if ignore_class is not None:
        valid = tf.not_equal(labels, tf.cast(ignore_class, labels.dtype))
        labels = tf.where(valid, labels, tf.zeros_like(labels))
        safe = tf.constant(0.0 if from_logits else 1.0, output.dtype)
        output = tf.where(tf.expand_dims(valid, axis), output, tf.fill(tf.shape(output), safe))
    loss = ops.sparse_categorical_crossentropy(labels, output, from_logits=from_logits, axis=axis)
    if label_smoothing:
        # Smoothing mixes in the cross-entropy against the uniform target,
        # -mean(log p) over the classes, computed by the categorical op on a
        # broadcast constant (no one-hot of the labels is built).
        num_classes = tf.cast(tf.shape(output)[axis], output.dtype)
        uniform = tf.fill(tf.shape(output), 1.0 / num_classes)
        smooth = ops.categorical_crossentropy(uniform, output, from_logits=from_logits, axis=axis)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    return _finish_rows(loss, valid)


def _sparse_categorical_crossentropy(
    y_true, y_pred, *, from_logits, ignore_class, axis, label_smoothing
):
    axis = axis_argument(axis)
    ignore_class = _ignore_class(ignore_class, integer=True)
    label_smoothing = _label_smoothing(label_smoothing)
    labels, y_pred, num_classes = _prepare_sparse(y_true, y_pred, axis)
    labels = _check_label_range(labels, num_classes, ignore_class)
    return _with_mask(
        _sparse_categorical_crossentropy_kernel(
            labels,
            y_pred,
            from_logits=bool(from_logits),
            ignore_class=ignore_class,
            axis=axis,
            label_smoothing=label_smoothing,
        )
    )


@_graph_code
def sparse_categorical_crossentropy(
    y_true, y_pred, from_logits=False, ignore_class=None, axis=-1, *, label_smoothing=0.0
):
    """Categorical cross-entropy with integer class labels.

    Formula:
        ``(1 - ls) * (-log p[y]) + ls * mean(-log p, axis)`` with ``p`` the
        softmax of the logits (or the row-normalized probabilities) and
        ``ls = label_smoothing``: Keras's ``CategoricalCrossentropy`` with
        ``label_smoothing`` on the one-hot labels, without building the one-hot.

    Numerical stability:
        Elementwise math is ``ops.sparse_categorical_crossentropy`` (log-softmax
        in float32 for half precision; no ``1e-7`` clip). Labels are used as
        integers exactly as given (the class form reads them before Keras's
        cast to the loss dtype, which turns label 3001 into 3000 with
        ``dtype="float16"``). An out-of-range label (other than
        ``ignore_class``) raises an error naming the label and the number of
        classes eagerly and in a graph; inside XLA, where asserts are
        dropped, that sample's loss is NaN, never a finite wrong value.
        A float label tensor must hold integral values (2.5 is out of range;
        Keras truncates it to 2). ``ignore_class`` samples get loss 0, a zero
        gradient (their NaN included) and a ``False`` Keras mask. With
        ``label_smoothing > 0`` a ``-inf`` logit gives ``+inf`` (the smoothed
        target puts mass on an impossible class). A softmax output's logits
        are used.
        Error budget: 4 ULP of the float32 result (rows of up to 8 classes).

    Args:
        y_true: integer labels, ``y_pred``'s shape without the class axis (a
            size-1 class axis is squeezed); integer, bool or (integral) float dtype.
        y_pred: probabilities or logits; real (integers and booleans are cast).
        from_logits: whether ``y_pred`` holds logits.
        ignore_class: an int label (e.g. ``-1`` or 255) to leave out.
        axis: the class axis.
        label_smoothing: keyword-only float in ``[0, 1]``.

    Returns:
        The loss with ``axis`` reduced, in ``y_pred``'s computing dtype.

    Raises:
        tf.errors.InvalidArgumentError: an out-of-range label (eager/graph).

    Example:
        >>> sparse_categorical_crossentropy([1, 2], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        ... # [0.0513, 2.3026]
    """
    y_pred, from_logits = _resolve_prediction(
        y_pred, from_logits, _SOFTMAX, "sparse_categorical_crossentropy"
    )
    return _sparse_categorical_crossentropy(
        y_true,
        y_pred,
        from_logits=from_logits,
        ignore_class=ignore_class,
        axis=axis,
        label_smoothing=label_smoothing,
    )


# ----------------------------------------------------------------------------
# KL divergence and Poisson
# ----------------------------------------------------------------------------


@tf.custom_gradient
def _log_ratio(target, prediction):
    """``log(target / prediction)`` for positive arguments, accurate near a ratio of 1.

    Near 1 (``1/2 <= ratio <= 2``) ``target - prediction`` is exact
    (Sterbenz) and ``log1p((t - p) / p)`` keeps full relative accuracy where
    ``log(t / p)`` would lose it to the rounding of the ratio; elsewhere
    ``log(t / p)`` is accurate (and the log1p form would cancel for tiny
    ratios). Gradient (custom): ``(1/t, -1/p)``; autodiff of ``t / p`` would
    form ``t / p**2``, which overflows for ``p < 1e-19`` in float32.
    """
    ratio = target / prediction
    near_one = tf.logical_and(ratio >= 0.5, ratio <= 2.0)
    close = tf.math.log1p((target - prediction) / prediction)
    far = tf.math.log(tf.where(near_one, tf.ones_like(ratio), ratio))
    value = tf.where(near_one, close, far)

    def grad(upstream):
        return upstream / target, -upstream / prediction

    return value, grad


@xla_kernel(row_local=True)
def _kl_divergence_kernel(y_true, y_pred):
    target, prediction = _in_compute_dtype(y_true, y_pred)
    # Probabilities: targets in [0, 1] (Keras clips them to [1e-7, 1]),
    # predictions in [tiny, 1] (Keras: [1e-7, 1]).
    target = _clip(target, 0.0, 1.0)
    prediction = _clip(prediction, dtype_limits(prediction.dtype).tiny, 1.0)
    # NaN counts as positive: it reaches the result (NaN in, NaN out).
    positive = tf.not_equal(target, 0.0)
    # xlogy semantics: a zero target contributes 0 with a zero gradient; its
    # branch sees 1 in place of the target (finite there). 0 * prediction,
    # not 0, so a NaN prediction at a zero target still gives NaN.
    safe_target = tf.where(positive, target, tf.ones_like(target))
    terms = tf.where(positive, safe_target * _log_ratio(safe_target, prediction), 0.0 * prediction)
    return tf.reduce_sum(terms, axis=-1)


@_graph_code
def kl_divergence(y_true, y_pred):
    """Kullback-Leibler divergence ``sum(t * log(t / p), axis=-1)``.

    Formula:
        ``sum(t * log(t / p), axis=-1)``, ``t = clip(y_true, 0, 1)``,
        ``p = clip(y_pred, tiny, 1)``.

    Numerical stability:
        ``xlogy`` semantics: a zero target contributes exactly 0 with a zero
        gradient (Keras clips it to ``1e-7`` and adds ``1e-7 * log(1e-7 / p)``).
        A zero prediction is floored at the smallest normal of the computing
        dtype (``1.2e-38`` in float32; Keras: ``1e-7``), so the loss stays
        finite: a target of 1 on a zero prediction costs 87.3 (Keras: 16.1).
        ``log(t / p)`` is taken as ``log1p((t - p) / p)`` when ``t/p`` is in
        ``[1/2, 2]``, accurate however close ``p`` is to ``t``, and its
        gradient is written out (``-t/p``; autodiff of ``t / p`` would form
        ``t / p**2``, which overflows for ``p < 1e-19`` in float32). Outside
        ``[0, 1]`` and ``[tiny, 1]`` the clips give a zero gradient, as in
        Keras. Half precision is computed in float32. NaN gives NaN: ``0 *
        log 0 = 0`` is for a zero target only, never for a NaN target, nor
        for a NaN prediction where the target is 0.
        Error budget: 4 ULP of the float32 result per term (last axis of 1).

    Args:
        y_true: target distribution, ``[batch, ..., num_classes]``.
        y_pred: predicted distribution, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, ...]`` in ``y_pred``'s computing dtype.

    Example:
        >>> kl_divergence([[0.0, 1.0]], [[0.4, 0.6]])  # [0.5108256]
    """
    return _kl_divergence_kernel(*prepare(y_true, y_pred, "kl_divergence"))


def _poisson_scale(target, rate):
    """Per row, 1, or a power of 2 that keeps every Poisson term and their sum finite.

    ``|log(rate)|`` is at most ``log_max`` (a floored rate: ``-log(tiny)``,
    a little less), so a term ``rate - t log(rate)`` is at most ``max/4 +
    |t| log_max``. A row whose counts stay below ``max / (4 log_max)`` and
    whose rates stay below ``max / 4`` cannot overflow (its results are bit
    for bit unscaled); another is scaled by ``2**-k <= 1 / (4 log_max)``
    (exact: a power of 2) and scaled back after the sum (counts of 4e36 on a
    floored rate overflowed ``t log(tiny)`` to ``inf``, then ``inf - inf``).
    """
    limits = dtype_limits(rate.dtype)
    down = 2.0 ** -math.ceil(math.log2(4.0 * limits.log_max))
    big = tf.logical_or(
        tf.reduce_max(tf.abs(target), axis=-1) >= limits.max / (4.0 * limits.log_max),
        tf.reduce_max(tf.abs(rate), axis=-1) >= limits.max / 4.0,
    )
    return tf.where(big, tf.constant(down, rate.dtype), tf.constant(1.0, rate.dtype))


@xla_kernel(row_local=True)
def _poisson_kernel(y_true, y_pred):
    target, rate = _in_compute_dtype(y_true, y_pred)
    # The Poisson negative log-likelihood (up to log(t!)): rate - t * log(rate),
    # xlogy semantics (t = 0 gives `rate`, gradient 1). A rate that is zero or
    # negative is floored at the smallest normal inside the log (Keras adds
    # 1e-7 to every rate, shifting the log of small rates). Each term is
    # divided by the count n (and scaled by _poisson_scale) before it is
    # formed, so neither a term nor the sum overflows where the mean does not.
    scale = _poisson_scale(target, rate)
    share = scale[..., None] / tf.cast(tf.shape(rate)[-1], rate.dtype)
    terms = rate * share - ops.xlogy(target * share, _floor_at_tiny(rate))
    return tf.reduce_sum(terms, axis=-1) / scale


@_graph_code
@ragged_rows
def poisson(y_true, y_pred):
    """Poisson loss ``mean(y_pred - y_true * log(y_pred), axis=-1)``.

    Formula:
        ``mean(p - xlogy(t, max(p, tiny)), axis=-1)``.

    Numerical stability:
        ``xlogy`` semantics: a zero count contributes exactly ``p``. The log
        is of the rate itself (Keras's ``log(p + 1e-7)`` shifts small rates:
        ``p = 1e-7`` gives ``log(2e-7)``); a zero or negative rate, outside the
        Poisson domain, is floored at the smallest normal of the computing
        dtype inside the log, so value and gradient stay finite (Keras: NaN
        for ``p < -1e-7``); the floored log term has a zero gradient. The
        gradient ``1 - t/p`` is exact: it overflows only where ``t/p`` itself
        leaves the float range. Each term is divided by the count before it
        is formed, and a row whose counts or rates could overflow a term is
        computed scaled by a power of 2 (``_poisson_scale``), so a mean in
        range is finite (counts of 4e36 on a zero rate gave ``inf - inf``).
        Half precision is computed in float32. NaN gives NaN.
        Error budget: 4 ULP of ``max(|p|, |t log p|)`` in float32 (last axis of 1).

    Args:
        y_true: observed counts, ``[batch, d0, ..., dN]``.
        y_pred: predicted rates, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> poisson([[0.0, 1.0]], [[1.0, 2.0]])  # [1.1534264]
    """
    return _poisson_kernel(*prepare(y_true, y_pred, "poisson"))


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------

# The loss calls in progress, per thread (Keras's MirroredStrategy traces
# replicas in threads): (loss, raw y_true, raw y_pred, what Keras's base gets).
_CALLS = threading.local()


def _calls_in_progress():
    calls = getattr(_CALLS, "stack", None)
    if calls is None:
        calls = _CALLS.stack = []
    return calls


def _in_loss_dtype(x, dtype):
    """``x`` as a tensor of the loss dtype, as Keras's base would make it, keeping its Keras mask.

    What cannot be made one tensor (a ragged list, a symbolic KerasTensor) is
    returned as is, for the Keras base to handle.
    """
    try:
        tensor = tf.convert_to_tensor(x)
    except (TypeError, ValueError):
        return x
    if tensor.dtype != dtype:
        tensor = tf.cast(tensor, dtype)
        mask = getattr(x, "_keras_mask", None)
        if mask is not None:
            tensor._keras_mask = mask
    return tensor


class _ProbabilisticLoss(FunctionLoss):
    """A ``FunctionLoss`` that computes from the inputs as the caller passed them.

    Keras's ``Loss.__call__`` casts ``y_true`` and ``y_pred`` to the loss
    dtype before ``call``. That cast drops the logits a sigmoid/softmax output
    carries when the dtypes differ (``mixed_float16``: Keras then computes
    from clipped float16 probabilities, gradient 0 when saturated), rounds
    integer labels through float16 with ``dtype="float16"``. ``__call__``
    makes that cast itself (keeping the Keras mask), remembers the raw inputs
    (integer and boolean predictions as cast: the loss dtype, as in Keras;
    strings and complex numbers are a ``TypeError``), and hands over to the Keras base
    (reduction, ``sample_weight`` and masks stay Keras's). ``call`` computes
    from the raw inputs when it receives exactly those cast tensors, and from
    what it receives otherwise (a subclass's ``call`` may pass its own).
    """

    _activation = None  # the op whose logits a prediction may carry
    _core = None  # the loss function without logits resolution

    @_graph_code
    def __call__(self, y_true, y_pred, sample_weight=None):
        if isinstance(y_true, dict) or isinstance(y_pred, dict):
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        check_loss_inputs(y_true, y_pred)  # strings, complex numbers: TypeError
        dtype = tf.as_dtype(self.dtype)
        cast_true, cast_pred = _in_loss_dtype(y_true, dtype), _in_loss_dtype(y_pred, dtype)
        pred_dtype = dtype_of(y_pred)
        if pred_dtype is not None and not pred_dtype.is_floating:
            y_pred = cast_pred  # integer and boolean predictions: the loss dtype, as Keras
        calls = _calls_in_progress()
        calls.append((self, y_true, y_pred, cast_true, cast_pred))
        try:
            return super().__call__(cast_true, cast_pred, sample_weight=sample_weight)
        finally:
            calls.pop()

    def _raw_inputs(self, y_true, y_pred):
        calls = _calls_in_progress()
        if calls and calls[-1][0] is self:
            _, raw_true, raw_pred, cast_true, cast_pred = calls[-1]
            if y_true is cast_true and y_pred is cast_pred:
                return raw_true, raw_pred
        return y_true, y_pred

    @_graph_code
    def call(self, y_true, y_pred):
        y_true, y_pred = self._raw_inputs(y_true, y_pred)
        kwargs = dict(self._fn_kwargs)
        if self._activation is not None:
            y_pred, kwargs["from_logits"] = _resolve_prediction(
                y_pred, kwargs["from_logits"], self._activation, self.fn.__name__
            )
        return type(self)._core(y_true, y_pred, **kwargs)


@keras.saving.register_keras_serializable(package="stableops")
class BinaryCrossentropy(_ProbabilisticLoss):
    """Binary cross-entropy; Keras's ``BinaryCrossentropy``, finite where it is not.

    See :func:`binary_crossentropy` for the formula and the numerics. A
    sigmoid output's logits are used even under ``mixed_float16`` (Keras
    loses them in its float32 cast and returns a clipped loss with gradient 0).

    Args:
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the axis averaged over.
        reduction: Keras reduction (``"sum_over_batch_size"``, ``"sum"``,
            ``"mean"``, ``"mean_with_sample_weight"``, ``"none"``/``None``).
        name: the loss name.
        dtype: the loss dtype (default ``keras.config.floatx()``).
        pos_weight: keyword-only, ``> 0``; 1 is Keras's loss.
        ignore_class: keyword-only target value to ignore, or ``None``.
    """

    _activation = _SIGMOID
    _core = staticmethod(_binary_crossentropy)

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        axis=-1,
        reduction=_REDUCTION,
        name="binary_crossentropy",
        dtype=None,
        *,
        pos_weight=1.0,
        ignore_class=None,
    ):
        label_smoothing = _label_smoothing(label_smoothing)
        axis = axis_argument(axis)
        pos_weight = _pos_weight(pos_weight)
        ignore_class = _ignore_class(ignore_class, integer=False)
        super().__init__(
            binary_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
            pos_weight=pos_weight,
            ignore_class=ignore_class,
        )


@keras.saving.register_keras_serializable(package="stableops")
class BinaryFocalCrossentropy(_ProbabilisticLoss):
    """Binary focal cross-entropy; Keras's ``BinaryFocalCrossentropy``, finite where it is not.

    See :func:`binary_focal_crossentropy`.

    Args:
        apply_class_balancing: weight class 1 by ``alpha`` and class 0 by ``1 - alpha``.
        alpha: float in ``[0, 1]``.
        gamma: float ``>= 0``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the axis averaged over.
        reduction: Keras reduction.
        name: the loss name.
        dtype: the loss dtype.
        pos_weight: keyword-only, ``> 0``.
        ignore_class: keyword-only target value to ignore, or ``None``.
    """

    _activation = _SIGMOID
    _core = staticmethod(_binary_focal_crossentropy)

    def __init__(
        self,
        apply_class_balancing=False,
        alpha=0.25,
        gamma=2.0,
        from_logits=False,
        label_smoothing=0.0,
        axis=-1,
        reduction=_REDUCTION,
        name="binary_focal_crossentropy",
        dtype=None,
        *,
        pos_weight=1.0,
        ignore_class=None,
    ):
        apply_class_balancing = _bool(apply_class_balancing, "apply_class_balancing")
        alpha = number(alpha, "alpha", 0.0, 1.0)
        gamma = _gamma(gamma)
        label_smoothing = _label_smoothing(label_smoothing)
        axis = axis_argument(axis)
        pos_weight = _pos_weight(pos_weight)
        ignore_class = _ignore_class(ignore_class, integer=False)
        super().__init__(
            binary_focal_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            apply_class_balancing=apply_class_balancing,
            alpha=alpha,
            gamma=gamma,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
            pos_weight=pos_weight,
            ignore_class=ignore_class,
        )


@keras.saving.register_keras_serializable(package="stableops")
class CategoricalCrossentropy(_ProbabilisticLoss):
    """Categorical cross-entropy; Keras's ``CategoricalCrossentropy``, finite where it is not.

    See :func:`categorical_crossentropy`. A softmax output's logits are used
    even under ``mixed_float16``.

    Args:
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the class axis.
        reduction: Keras reduction.
        name: the loss name.
        dtype: the loss dtype.
        ignore_class: keyword-only int: rows whose target class is this are ignored.
    """

    _activation = _SOFTMAX
    _core = staticmethod(_categorical_crossentropy)

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        axis=-1,
        reduction=_REDUCTION,
        name="categorical_crossentropy",
        dtype=None,
        *,
        ignore_class=None,
    ):
        label_smoothing = _label_smoothing(label_smoothing)
        axis = axis_argument(axis)
        ignore_class = _ignore_class(ignore_class, integer=True)
        super().__init__(
            categorical_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
            ignore_class=ignore_class,
        )


@keras.saving.register_keras_serializable(package="stableops")
class CategoricalFocalCrossentropy(_ProbabilisticLoss):
    """Categorical focal cross-entropy; Keras's ``CategoricalFocalCrossentropy``, finite where it is not.

    See :func:`categorical_focal_crossentropy`.

    Args:
        alpha: a float ``>= 0`` or one per class.
        gamma: float ``>= 0``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the class axis.
        reduction: Keras reduction.
        name: the loss name.
        dtype: the loss dtype.
        ignore_class: keyword-only int: rows whose target class is this are ignored.
    """

    _activation = _SOFTMAX
    _core = staticmethod(_categorical_focal_crossentropy)

    def __init__(
        self,
        alpha=0.25,
        gamma=2.0,
        from_logits=False,
        label_smoothing=0.0,
        axis=-1,
        reduction=_REDUCTION,
        name="categorical_focal_crossentropy",
        dtype=None,
        *,
        ignore_class=None,
    ):
        alpha = _class_alpha(alpha)
        gamma = _gamma(gamma)
        label_smoothing = _label_smoothing(label_smoothing)
        axis = axis_argument(axis)
        ignore_class = _ignore_class(ignore_class, integer=True)
        if isinstance(alpha, tuple):
            alpha = list(alpha)  # JSON-friendly config
        super().__init__(
            categorical_focal_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=alpha,
            gamma=gamma,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
            ignore_class=ignore_class,
        )


@keras.saving.register_keras_serializable(package="stableops")
class SparseCategoricalCrossentropy(_ProbabilisticLoss):
    """Sparse categorical cross-entropy; Keras's ``SparseCategoricalCrossentropy``, finite where it is not.

    See :func:`sparse_categorical_crossentropy`. Integer labels are read as
    passed (Keras casts them to the loss dtype first: label 3001 becomes 3000
    with ``dtype="float16"``).

    Args:
        from_logits: whether ``y_pred`` holds logits.
        ignore_class: an int label to leave out, or ``None``.
        reduction: Keras reduction.
        axis: the class axis.
        name: the loss name.
        dtype: the loss dtype.
        label_smoothing: keyword-only float in ``[0, 1]``.
    """

    _activation = _SOFTMAX
    _core = staticmethod(_sparse_categorical_crossentropy)

    def __init__(
        self,
        from_logits=False,
        ignore_class=None,
        reduction=_REDUCTION,
        axis=-1,
        name="sparse_categorical_crossentropy",
        dtype=None,
        *,
        label_smoothing=0.0,
    ):
        ignore_class = _ignore_class(ignore_class, integer=True)
        axis = axis_argument(axis)
        label_smoothing = _label_smoothing(label_smoothing)
        super().__init__(
            sparse_categorical_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=from_logits,
            ignore_class=ignore_class,
            axis=axis,
            label_smoothing=label_smoothing,
        )


@keras.saving.register_keras_serializable(package="stableops")
class KLDivergence(_ProbabilisticLoss):
    """Kullback-Leibler divergence; Keras's ``KLDivergence`` with ``xlogy`` semantics.

    See :func:`kl_divergence`.

    Args:
        reduction: Keras reduction.
        name: the loss name.
        dtype: the loss dtype.
    """

    _core = staticmethod(lambda y_true, y_pred: kl_divergence(y_true, y_pred))

    def __init__(self, reduction=_REDUCTION, name="kl_divergence", dtype=None):
        super().__init__(kl_divergence, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="stableops")
class Poisson(_ProbabilisticLoss):
    """Poisson loss; Keras's ``Poisson`` without the ``1e-7`` shift or NaN.

    See :func:`poisson`.

    Args:
        reduction: Keras reduction.
        name: the loss name.
        dtype: the loss dtype.
    """

    _core = staticmethod(lambda y_true, y_pred: poisson(y_true, y_pred))

    def __init__(self, reduction=_REDUCTION, name="poisson", dtype=None):
        super().__init__(poisson, reduction=reduction, name=name, dtype=dtype)
