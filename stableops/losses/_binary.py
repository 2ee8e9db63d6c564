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
  before ``pow``: finite with a finite gradient for every ``gamma >= 0``; the
  focal loss is formed in float64 and rounded once (3 ULP).

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
from stableops._internal.dtypes import dtype_limits
from stableops._internal.elementary import atanh_series_tail
from stableops._internal.gradients import custom_gradient
from stableops._internal.keras_compat import recover_logits
from stableops._internal.reductions import float64_sum, sum_over
from stableops._internal.where import safe_where, weight_times
from stableops.losses._base import REDUCTION, RawInputLoss, loss_class, public_function
from stableops.losses._inputs import (
    from_probabilities,
    graph_code,
    in_compute_dtype,
    loss_kernel,
    prepare,
    with_mask,
)
from stableops.losses._shared import (
    check_gamma,
    check_ignore_class,
    check_label_smoothing,
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


def _smoothed_binary_crossentropy(target, output, from_logits, pos_weight, label_smoothing):
    """Elementwise cross-entropy at the smoothed target ``y (1 - s) + s / 2``, without rounding
    that target: ``(1 - s) L(y) + s L(1/2)``.

    The loss is linear in its target, so this is exact algebra; both terms are
    non-negative (no cancellation), and the two calls share their logarithms (XLA forms
    them once). Rounded to the input's precision first, the smoothed target's ``1 - t``
    carried that rounding relative to ``1 - t``: 14.7 ULP at ``y = 0.9941``, logit 9,
    ``s = 0.1``.
    """
    half = tf.fill(tf.shape(target), tf.constant(0.5, target.dtype))
    own = _weighted_binary_crossentropy(target, output, from_logits, pos_weight)
    symmetric = _weighted_binary_crossentropy(half, output, from_logits, pos_weight)
    return (1.0 - label_smoothing) * own + label_smoothing * symmetric


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


def _focal_terms_from_logits(target, logits, gamma, pos_weight):
    """Elementwise focal loss ``(1 - p_t)^gamma * bce`` from logits, in float64.

    With ``e = exp(-|x|)`` (one float64 exponential) everything is formed in
    float64, where it rounds no further:
    ``1 - p_t = t sigmoid(-x) + (1 - t) sigmoid(x) = (a + (1 - a) e) / (1 + e)``
    (``a = 1 - t`` for ``x >= 0``, ``t`` below: a sum of non-negative terms) and
    ``bce = w1 relu(-x) + w0 relu(x) + (w1 + w0) log1p(e)`` with the weights
    ``w1 = pos_weight t`` and ``w0 = 1 - t``. A float32 ``exp`` (about an ULP)
    would be amplified up to ``gamma + 1`` times (hard targets, a confident
    prediction: ``(1 - p_t)^gamma bce ~ e^(gamma + 1)``; 3.4 ULP measured), so
    it is float64's. In float32 the roundings of the two
    sigmoids, their sum, ``log1p`` and the products added up to 8.5 ULP of the
    loss with soft targets. ``target`` is float64 (smoothed there), ``1 - p_t`` is
    clipped to ``[0, 1]`` in the focal factor only.

    Gradient (custom, in the input's precision, from the same ``e``):
    ``F' B_x bce + F bce_x`` and ``F' B_t bce + F bce_t``, ``F = max(B, tiny)^gamma``
    and ``F' = gamma max(B, tiny)^(gamma - 1)`` (0 below ``tiny``).
    """
    narrow = logits.dtype
    tiny = dtype_limits(narrow).tiny

    @custom_gradient
    def core(t, x):
        positive = x >= 0
        wide_x = tf.cast(x, tf.float64)
        # exp(-|x|) in [0, 1]; -|x| as a select, whose slope at 0 is -1 (abs's is 0: the
        # second derivative at x = 0 was 0, for 0.399)
        e = tf.exp(tf.where(positive, -wide_x, wide_x))
        clipped = clip(t, 0.0, 1.0)
        complement = 1.0 - t
        weight = pos_weight * t if pos_weight != 1.0 else t
        x_positive = tf.where(positive, wide_x, tf.zeros_like(wide_x))
        x_negative = tf.where(positive, tf.zeros_like(wide_x), wide_x)
        linear = tf.where(
            positive, weight_times(complement, x_positive), weight_times(weight, -x_negative)
        )
        # One division for 1 / (1 + e) and log1p(e) = 2 atanh(s), s = e / (2 + e)
        # (the series to the narrow precision's eps / 8).
        shared = 1.0 / ((1.0 + e) * (2.0 + e))
        inverse = (2.0 + e) * shared
        quotient = (2.0 * e) * ((1.0 + e) * shared)  # 2 s
        s2 = 0.25 * (quotient * quotient)
        log_term = quotient + quotient * atanh_series_tail(s2, narrow)
        if pos_weight != 1.0:
            log_term = (weight + complement) * log_term
        crossentropy = linear + log_term
        near = tf.where(positive, 1.0 - clipped, clipped)  # the weight of the larger sigmoid
        base = (near + (1.0 - near) * e) * inverse
        floored = clip(base, tiny)  # the factor is tiny^gamma below, with a zero slope
        factor = tf.pow(floored, gamma)
        value = factor * crossentropy

        def grad(upstream):
            t_n = tf.cast(t, narrow)
            clipped_n = tf.cast(clipped, narrow)
            large = tf.cast(inverse, narrow)  # sigmoid(|x|)
            small = tf.cast(e * inverse, narrow)  # sigmoid(-|x|)
            sig_pos = tf.where(positive, large, small)  # sigmoid(x)
            sig_neg = tf.where(positive, small, large)  # sigmoid(-x)
            # d(1 - p_t)/dx and /dt (1 inside [0, 1]: the clip's slope)
            base_x = (1.0 - 2.0 * clipped_n) * (sig_pos * sig_neg)
            inside = tf.logical_and(t_n >= 0.0, t_n <= 1.0)
            base_t = tf.where(inside, sig_neg - sig_pos, tf.zeros_like(x))
            w1 = pos_weight * t_n if pos_weight != 1.0 else t_n
            bce_x = (1.0 - t_n) * sig_pos - w1 * sig_neg
            if pos_weight != 1.0:
                log_n = tf.cast(log_term / (weight + complement), narrow)
                bce_t = pos_weight * (tf.nn.relu(-x) + log_n) - (tf.nn.relu(x) + log_n)
            else:
                agrees = tf.logical_and(
                    tf.math.is_inf(x), tf.equal(t_n, tf.cast(positive, narrow))
                )
                bce_t = tf.where(agrees, tf.zeros_like(x), -x)
            return _chain(upstream, crossentropy, floored, gamma, tiny, (base_t, base_x),
                          (bce_t, bce_x))

        return value, grad

    return core(target, logits)


def _focal_terms_from_probabilities(target, probabilities, gamma, pos_weight):
    """Elementwise focal loss ``(1 - p_t)^gamma * bce`` from probabilities, in float64.

    ``1 - p_t = t (1 - p) + (1 - t) p`` is formed in float64 (no rounding to
    speak of), and so is ``bce = -(w1 log p + w0 log(1 - p))`` (``w1 = pos_weight
    t``, ``w0 = 1 - t``) from the input precision's ``log p`` and ``log`` of
    ``1 - p`` rounded there, plus that rounding to first order (a float64 ``log``
    per element cost more time). The clip of ``ops.binary_crossentropy``:
    ``log`` at ``clip(p, tiny, 1)``, ``log(1 - p)`` at ``clip(p, 0, 1 - eps/2)``, with
    straight-through slopes at 0 and 1 (a probability outside ``[0, 1]`` costs what
    the nearest end costs). In float32 the roundings of ``1 - p_t`` (amplified
    ``gamma`` times) and of the cross-entropy added up to 6.5 ULP of the loss.

    Gradient (custom): as from logits, with the cross-entropy's value formed
    again in the input's precision from the same logs (the float64 one made
    XLA form the float64 cross-entropy a second time in the gradient's loop;
    10% of the forward and backward time at 2^20, the worst of 20000 random
    rows' gradients unchanged at 3.7 ULP).
    """
    narrow = probabilities.dtype
    limits = dtype_limits(narrow)

    @custom_gradient
    def core(t, p):
        wide_p = tf.cast(p, tf.float64)
        narrow_log_p = tf.math.log(clip(p, limits.tiny, 1.0))
        # log(1 - p) = log(w) + log1p(d / w), w = fl(1 - p) in the narrow precision
        # and d = (1 - w) - p, exact there (Sterbenz: 1 - w is 0 or within a factor
        # of 2 of p): log1p(d / w) to second order (|d / w| <= eps / 2).
        below_one = clip(p, 0.0, limits.largest_below_one)
        rest = 1.0 - below_one
        rounding = (1.0 - rest) - below_one
        inverse_rest = tf.math.reciprocal(rest)
        narrow_log_w = tf.math.log(rest)
        ratio = tf.cast(rounding, tf.float64) * tf.cast(inverse_rest, tf.float64)
        log_p = tf.cast(narrow_log_p, tf.float64)
        log_rest = tf.cast(narrow_log_w, tf.float64) + ratio * (1.0 - 0.5 * ratio)
        complement = 1.0 - t
        weight = pos_weight * t if pos_weight != 1.0 else t
        crossentropy = -(weight * log_p + complement * log_rest)
        valid = tf.logical_and(tf.math.is_finite(wide_p), tf.math.is_finite(t))
        crossentropy = tf.where(valid, crossentropy, tf.constant(math.nan, tf.float64))
        clipped = clip(t, 0.0, 1.0)
        probability = clip(wide_p, 0.0, 1.0)  # outside [0, 1]: the nearest end's loss
        base = clipped * (1.0 - probability) + (1.0 - clipped) * probability
        floored = clip(base, limits.tiny)  # as from logits
        factor = tf.pow(floored, gamma)
        value = factor * crossentropy

        def grad(upstream):
            t_n = tf.cast(t, narrow)
            clipped_n = tf.cast(clipped, narrow)
            w1 = pos_weight * t_n if pos_weight != 1.0 else t_n
            narrow_log_rest = narrow_log_w + rounding * inverse_rest
            narrow_bce = -(w1 * narrow_log_p + (1.0 - t_n) * narrow_log_rest)
            narrow_bce = tf.where(valid, narrow_bce, tf.constant(math.nan, narrow))
            base_p = 1.0 - 2.0 * clipped_n
            inside = tf.logical_and(t_n >= 0.0, t_n <= 1.0)
            base_t = tf.where(inside, 1.0 - 2.0 * clip(p, 0.0, 1.0), tf.zeros_like(p))
            # The clips' slopes (ops.binary_crossentropy's): straight-through at 0 and 1,
            # 0 beyond them on the side each log is at its optimum.
            zero = tf.zeros_like(p)
            bce_p = (tf.where(p < 0.0, zero, (1.0 - t_n) / rest)
                     - tf.where(p > 1.0, zero, w1 / clip(p, limits.tiny)))
            # Saturated: pos_weight / tiny overflows from pos_weight = 4 (float32), and so
            # does a weight's product with it (xla_kernel's saturating).
            bce_p = clip(bce_p, -limits.max, limits.max)
            bce_t = narrow_log_rest - pos_weight * narrow_log_p
            to_t, to_p = _chain(upstream, narrow_bce, floored, gamma, limits.tiny,
                                (base_t, base_p), (bce_t, bce_p))
            return to_t, clip(to_p, -limits.max, limits.max)

        return value, grad

    return core(target, probabilities)


def _chain(upstream, crossentropy, floored, gamma, tiny, base_slopes, crossentropy_slopes):
    """The gradients ``(d/dt, d/dy)`` of ``max(B, tiny)^gamma * bce`` in ``y``'s precision, from
    the slopes of the base ``B`` and of ``bce`` with respect to ``(t, y)``; the factor's
    slope ``gamma max(B, tiny)^(gamma - 1)`` is 0 below ``tiny``.

    A base slope of exactly 0 contributes 0, also where ``bce`` overflowed the precision
    (logits of -2e38 with ``pos_weight = 2``: ``bce = 4e38``, ``dB/dx <= exp(-|x|) = 0``),
    which ``inf * 0`` made NaN."""
    narrow = base_slopes[1].dtype
    up, bce, base = (tf.cast(v, narrow) for v in (upstream, crossentropy, floored))
    factor = tf.pow(base, gamma)
    slope = tf.where(floored > tiny, gamma * tf.pow(base, gamma - 1.0), tf.zeros_like(base))
    focal = (up * bce) * slope
    to_t, to_y = (
        tf.where(tf.equal(b, 0.0), tf.zeros_like(b), focal * b) + (up * factor) * c
        for b, c in zip(base_slopes, crossentropy_slopes)
    )
    return tf.cast(to_t, tf.float64), to_y


def _terms_per_element(ignore_class, **_):
    """Whether a call's loss averages one term per element (``xla_kernel``'s
    ``terms_per_element``): without ``ignore_class``; with it the mean is over a row's
    valid entries, whose count is a row's value."""
    return ignore_class is None


@loss_kernel(saturating=from_probabilities, terms_per_element=_terms_per_element)
def _binary_crossentropy_kernel(
    y_true, y_pred, apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis,
    pos_weight, ignore_class,
):
    target, output, valid = _binary_setup(y_true, y_pred, ignore_class)
    if gamma:
        # The focal loss in float64 from one float64 exp (logits) or the input
        # precision's logs (probabilities), rounded once (see the functions' docstrings).
        target = tf.cast(target, tf.float64)
        target = target * tf.where(tf.math.is_finite(target), tf.ones_like(target),
                                   tf.fill(tf.shape(target), tf.constant(math.nan, tf.float64)))
        target = _smooth_binary(target, label_smoothing)
        focal = _focal_terms_from_logits if from_logits else _focal_terms_from_probabilities
        values = focal(target, output, gamma, pos_weight)
    elif label_smoothing:  # gamma == 0 is plain cross-entropy
        values = _smoothed_binary_crossentropy(target, output, from_logits, pos_weight,
                                               label_smoothing)
    else:
        values = _weighted_binary_crossentropy(target, output, from_logits, pos_weight)
    if apply_class_balancing:
        # The weight alpha t + (1 - alpha)(1 - t) in float64 and one rounding of the product
        # (with gamma = 0 the float32 weight's two roundings more made 3.5 ULP of the loss).
        # (Without gamma ``target`` is still the unsmoothed one, in the input's precision.)
        wide = target if gamma else _smooth_binary(tf.cast(target, tf.float64), label_smoothing)
        weight = wide * alpha + (1.0 - wide) * (1.0 - alpha)
        values = tf.cast(tf.cast(values, tf.float64) * weight, values.dtype)
    if gamma and valid is None:
        count = tf.cast(tf.shape(values)[axis], tf.float64)
        return tf.cast(float64_sum(values, axis, rounded=False) / count, output.dtype)
    return _binary_reduce(tf.cast(values, output.dtype), valid, axis)


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


@public_function
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
        computing dtype with a straight-through gradient (one outside ``[0, 1]``
        costs what the nearest of 0 and 1 costs, never a negative loss), instead of Keras's
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
        With ``label_smoothing`` ``s`` the loss is ``(1 - s) L(y_true) +
        s L(1/2)`` (it is linear in ``t``): the smoothed target is never
        rounded (rounded first, its ``1 - t`` was 14.7 ULP off).
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


@public_function
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
        finite input. The focal factor multiplies the relative error of
        ``1 - p_t`` by ``gamma``, so for float32 input the smoothed target,
        ``1 - p_t``, the cross-entropy, their product and the mean over
        ``axis`` are formed in float64 and rounded once: from logits from
        one float64 ``exp(-|z|)`` (``log1p`` of it by a float64 series), from
        probabilities from float32 ``log p`` and ``log`` of ``1 - p`` rounded
        to float32, plus that rounding. The gradient is float32's.
        ``gamma = 0`` is exactly binary cross-entropy. Targets outside
        ``[0, 1]`` are clipped to it in the focal factor only. The
        cross-entropy's clip and conventions are :func:`binary_crossentropy`'s.
        A sigmoid output's logits are used (a softmax output's are not).
        Error budget: 3 ULP of the float32 result per element (hard and soft
        targets, with class balancing and label smoothing; measured on 5e6
        random rows with gamma 2: 0.5 from logits, 2.3 from probabilities;
        the float32 forms were 8.5 and 6.5). Under XLA, 2^20 elements, value
        and gradient, one core: 1.1-1.3x the time of the float32 forms.

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
        >>> binary_focal_crossentropy(y_true, y_pred, gamma=2.0).numpy().round(6)
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
            binary_crossentropy, reduction, name, dtype,
            from_logits=flag(from_logits, "from_logits"),
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
            from_logits=flag(from_logits, "from_logits"),
            label_smoothing=check_label_smoothing(label_smoothing),
            axis=axis_argument(axis), pos_weight=_check_pos_weight(pos_weight),
            ignore_class=check_ignore_class(ignore_class, integer=False),
        )
