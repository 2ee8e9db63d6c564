"""Binary cross-entropy and binary focal cross-entropy: drop-ins for Keras 3.15 that stay finite.

Each as a function form (one value per sample) and a ``keras.losses.Loss``
class with Keras's name, constructor signature and defaults. On ordinary
inputs the results are Keras's; where Keras returns ``inf``/``nan``, a silently
clipped value or a zero gradient, these stay finite and accurate:

* the elementwise math is ``ops.binary_crossentropy``: ``softplus`` forms from
  logits; from probabilities a clip at the dtype's smallest normal and largest
  value below 1 with a straight-through gradient, instead of Keras's ``1e-7``
  clip with gradient 0; half precision is computed in float32;
* a sigmoid output carries its logits (Keras's ``_keras_logits``); the classes
  read them before Keras's cast of ``y_pred`` to the loss dtype (which drops
  them under ``mixed_float16``), see :class:`~stableops.losses._base.RawInputLoss`;
* focal factors ``(1 - p_t)**gamma`` take ``1 - p_t`` without cancellation
  (from the logits' sigmoids) and floor it at the dtype's smallest normal
  before ``pow``: finite with a finite gradient for every ``gamma >= 0``.

Keyword-only extras (default off, i.e. Keras behaviour): ``pos_weight`` and
``ignore_class``. Arguments are validated outside the XLA-compiled kernel
(``losses._inputs.prepare``).
"""

from __future__ import annotations

import math

import tensorflow as tf

from stableops import ops
from stableops._internal.checks import axis_argument, flag, number
from stableops._internal.clip import clip
from stableops._internal.keras_compat import recover_logits
from stableops._internal.reductions import sum_over
from stableops._internal.where import safe_where
from stableops.losses._base import REDUCTION, RawInputLoss, loss_class
from stableops.losses._inputs import graph_code, in_compute_dtype, loss_kernel, prepare, with_mask
from stableops.losses._shared import (
    check_gamma,
    check_ignore_class,
    check_label_smoothing,
    power,
)

__all__ = [
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "binary_crossentropy",
    "binary_focal_crossentropy",
]


def _check_pos_weight(value):
    return number(value, "pos_weight", 0.0, low_open=True)


def _mean(values, axis):
    """Mean over ``axis``, dividing before summing: the sum of large finite
    terms (a loss of 1e38 per element) must not overflow when the mean does not."""
    count = tf.cast(tf.shape(values)[axis], values.dtype)
    return sum_over(values / count, axis=axis)


def _mean_over_valid(values, valid, axis):
    """Mean over ``axis`` of the ``valid`` entries, and whether there was any (0 if none)."""
    count = sum_over(tf.cast(valid, values.dtype), axis=axis, keepdims=True)
    values = tf.where(valid, values / tf.maximum(count, 1.0), tf.zeros_like(values))
    return tf.reduce_sum(values, axis=axis), tf.squeeze(count, axis) > 0


def _smooth_binary(target, label_smoothing):
    if label_smoothing:
        return target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return target


# ----------------------------------------------------------------------------
# Binary cross-entropy
# ----------------------------------------------------------------------------


def _weighted_binary_crossentropy(target, output, from_logits, pos_weight):
    """Elementwise ``-(pos_weight t log p + (1 - t) log(1 - p))`` (``ops.binary_crossentropy``)."""
    if pos_weight == 1.0:
        return ops.binary_crossentropy(target, output, from_logits=from_logits)

    def term(label, weighted):
        # Evaluated only where its target weight is nonzero (double where):
        # 0 * (-log 0) must count as 0, with a zero gradient.
        def crossentropy(o):
            return ops.binary_crossentropy(label, o, from_logits=from_logits)

        return safe_where(weighted, output, crossentropy, 0.0, safe_true=0.5)

    positive = term(tf.ones_like(output), tf.not_equal(target, 0.0))
    negative = term(tf.zeros_like(output), tf.not_equal(target, 1.0))
    loss = pos_weight * target * positive + (1.0 - target) * negative
    # An infinite target is not a label: NaN (the op's rule), never inf - inf.
    nan = tf.fill(tf.shape(loss), tf.constant(math.nan, loss.dtype))
    return tf.where(tf.math.is_finite(target), loss, nan)


def _binary_setup(y_true, y_pred, ignore_class):
    """Targets and predictions in the computing dtype; ignored entries made harmless."""
    target, output = in_compute_dtype(y_true, y_pred, saturate=True)
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


def _focal_factor_from_logits(target, logits, gamma):
    """``(1 - p_t) ** gamma`` from logits, finite in value and gradient for every ``gamma >= 0``.

    ``1 - p_t = t * sigmoid(-z) + (1 - t) * sigmoid(z)``: two sigmoids of the
    exact logit (each about 1 ULP, also where one saturates) and a sum of
    non-negative terms, so no cancellation however large ``|z|`` is.
    """
    target = clip(target, 0.0, 1.0)
    base = target * tf.math.sigmoid(-logits) + (1.0 - target) * tf.math.sigmoid(logits)
    return power(base, gamma)


def _focal_factor_from_probabilities(target, probabilities, gamma):
    """``(1 - p_t) ** gamma`` with ``1 - p_t = t * (1 - p) + (1 - t) * p``.

    ``1 - p_t`` is floored at the smallest normal ``tiny`` (only an exact 0,
    a saturated ``p``, is below it), so the factor there is ``tiny ** gamma``
    with a zero gradient instead of Keras's NaN ``pow(0, gamma)`` gradient.
    """
    target = clip(target, 0.0, 1.0)
    base = target * (1.0 - probabilities) + (1.0 - target) * probabilities
    return power(base, gamma)


@loss_kernel
def _binary_crossentropy_kernel(
    y_true, y_pred, apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis,
    pos_weight, ignore_class,
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


def _binary_loss(y_true, y_pred, fn_name, from_logits, label_smoothing, axis, pos_weight,
                 ignore_class, apply_class_balancing=False, alpha=0.0, gamma=0.0):
    """Both binary losses: the focal one, or plain cross-entropy with ``gamma = 0``."""
    # stacklevel 4: the warning names the caller of the public function.
    y_pred, from_logits = recover_logits(
        y_pred, from_logits, "Sigmoid", fn_name, argument="y_pred", stacklevel=4
    )
    y_true, y_pred = prepare(y_true, y_pred, fn_name, axis_argument(axis))
    return with_mask(
        _binary_crossentropy_kernel(
            y_true,
            y_pred,
            apply_class_balancing=flag(apply_class_balancing, "apply_class_balancing"),
            alpha=number(alpha, "alpha", 0.0, 1.0),
            gamma=check_gamma(gamma),
            from_logits=from_logits,
            label_smoothing=check_label_smoothing(label_smoothing),
            axis=axis_argument(axis),
            pos_weight=_check_pos_weight(pos_weight),
            ignore_class=check_ignore_class(ignore_class, integer=False),
        )
    )


@graph_code
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *,
                        pos_weight=1.0, ignore_class=None):
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
        >>> binary_crossentropy([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]]).numpy()
        array([0.916291, 0.713558 ], dtype=float32)
    """
    return _binary_loss(y_true, y_pred, "binary_crossentropy", from_logits, label_smoothing, axis,
                        pos_weight, ignore_class)


@graph_code
def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25, gamma=2.0,
                              from_logits=False, label_smoothing=0.0, axis=-1, *, pos_weight=1.0,
                              ignore_class=None):
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
        >>> y_true, y_pred = [[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]]
        >>> binary_focal_crossentropy(y_true, y_pred, gamma=2.0).numpy()
        array([0.329865, 0.205798], dtype=float32)
    """
    return _binary_loss(y_true, y_pred, "binary_focal_crossentropy", from_logits, label_smoothing,
                        axis, pos_weight, ignore_class, apply_class_balancing, alpha, gamma)


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------


@loss_class
class BinaryCrossentropy(RawInputLoss):
    """Binary cross-entropy; Keras's ``BinaryCrossentropy``, finite where it is not.

    See :func:`binary_crossentropy` for the formula and the numerics. A
    sigmoid output's logits are used even under ``mixed_float16`` (Keras
    loses them in its float32 cast and returns a clipped loss with gradient 0).

    Args:
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the axis averaged over.
        {common}
        pos_weight: keyword-only, ``> 0``; 1 is Keras's loss.
        ignore_class: keyword-only target value to ignore, or ``None``.
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction=REDUCTION,
                 name="binary_crossentropy", dtype=None, *, pos_weight=1.0, ignore_class=None):
        super().__init__(
            binary_crossentropy, reduction, name, dtype, from_logits=from_logits,
            label_smoothing=check_label_smoothing(label_smoothing), axis=axis_argument(axis),
            pos_weight=_check_pos_weight(pos_weight),
            ignore_class=check_ignore_class(ignore_class, integer=False),
        )


@loss_class
class BinaryFocalCrossentropy(RawInputLoss):
    """Binary focal cross-entropy; Keras's ``BinaryFocalCrossentropy``, finite where it is not.

    See :func:`binary_focal_crossentropy`.

    Args:
        apply_class_balancing: weight class 1 by ``alpha`` and class 0 by ``1 - alpha``.
        alpha: float in ``[0, 1]``.
        gamma: float ``>= 0``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the axis averaged over.
        {common}
        pos_weight: keyword-only, ``> 0``.
        ignore_class: keyword-only target value to ignore, or ``None``.
    """

    def __init__(self, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, reduction=REDUCTION,
                 name="binary_focal_crossentropy", dtype=None, *, pos_weight=1.0,
                 ignore_class=None):
        super().__init__(
            binary_focal_crossentropy, reduction, name, dtype,
            apply_class_balancing=flag(apply_class_balancing, "apply_class_balancing"),
            alpha=number(alpha, "alpha", 0.0, 1.0), gamma=check_gamma(gamma),
            from_logits=from_logits, label_smoothing=check_label_smoothing(label_smoothing),
            axis=axis_argument(axis), pos_weight=_check_pos_weight(pos_weight),
            ignore_class=check_ignore_class(ignore_class, integer=False),
        )
