"""Categorical, categorical focal and sparse categorical cross-entropy: finite drop-ins for Keras.

Each as a function form (one value per sample) and a ``keras.losses.Loss``
class with Keras's name, constructor signature and defaults. On ordinary
inputs the results are Keras's; where Keras returns ``inf``/``nan``, a silently
clipped value or a zero gradient, these stay finite and accurate:

* the row math is ``ops.categorical_crossentropy`` /
  ``ops.sparse_categorical_crossentropy`` (max-shifted log-softmax, ``0 * log 0
  = 0``, no ``1e-7`` clip); half precision is computed in float32;
* a softmax output carries its logits (Keras's ``_keras_logits``); the classes
  read them before Keras's cast of ``y_pred`` to the loss dtype (which drops
  them under ``mixed_float16``), see :class:`~stableops.losses._base.RawInputLoss`;
* integer labels are read before that cast too, so ``dtype="float16"`` never
  rounds label 3001 to 3000; an out-of-range label is an error naming it;
* the categorical focal factor ``(1 - p)**gamma`` takes ``1 - p`` as the sum
  of the other classes' probabilities for the most probable class (no
  cancellation) and floors it at the dtype's smallest normal before ``pow``.

Keyword-only extras (default off, i.e. Keras behaviour): ``ignore_class`` on
every cross-entropy, ``label_smoothing`` on the sparse one.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from stableops import ops
from stableops._internal.checks import (
    as_float_tensor,
    axis_argument,
    canonical_axis,
    flag,
    number,
    raise_on_invalid_labels,
)
from stableops._internal.clip import clip
from stableops._internal.compensated import (
    fraction_of_one_plus,
    two_difference,
)
from stableops._internal.dtypes import dtype_limits, to_compute_saturating
from stableops._internal.elementary import split_exp_of_negative
from stableops._internal.gradients import custom_gradient
from stableops._internal.keras_compat import recover_logits
from stableops._internal.reductions import (
    empty_rows,
    float64_sum,
    log1p_once,
    max_shift,
    shrunk_rows,
    split_sum_of_fractions,
    top_and_rest,
    with_softmax_slope,
    written_once,
)
from stableops._internal.where import safe_where
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
    finish_rows,
    floor_at_tiny,
    power,
)

__all__ = [
    "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalCrossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "sparse_categorical_crossentropy",
]


def _check_class_alpha(alpha):
    """Categorical focal ``alpha``: a non-negative number or a sequence of them (one per class)."""
    if isinstance(alpha, (list, tuple, np.ndarray)):
        values = tuple(number(a, "alpha", 0.0) for a in np.ravel(np.asarray(alpha, dtype=object)))
        if not values:
            raise ValueError(f"`alpha` must not be empty, got alpha={alpha!r}")
        return values
    return number(alpha, "alpha", 0.0)


# ----------------------------------------------------------------------------
# Categorical cross-entropy
# ----------------------------------------------------------------------------


def _categorical_setup(y_true, y_pred, from_logits, axis, ignore_class):
    """Targets/predictions in the computing dtype; ignored rows made harmless."""
    target, output = in_compute_dtype(y_true, y_pred, saturate=True)
    if ignore_class is None:
        return target, output, None
    # A row is ignored when its target class (argmax of the target) is ignore_class.
    valid = tf.not_equal(tf.argmax(target, axis=axis, output_type=tf.int32), ignore_class)
    row_valid = tf.expand_dims(valid, axis)
    # Stand-ins for ignored rows (their NaN too): zero target, uniform prediction.
    target = tf.where(row_valid, target, tf.zeros_like(target))
    uniform = tf.constant(0.0 if from_logits else 1.0, output.dtype)
    output = tf.where(row_valid, output, tf.fill(tf.shape(output), uniform))
    return target, output, valid


def _warn_if_one_class(y_pred, axis, fn_name):
    """Keras's warning for a class axis of size 1 (a 1-unit output): the softmax of one class is
    1, so the loss is 0 and its gradient 0, and the model never learns."""
    if y_pred.shape[canonical_axis(axis, len(y_pred.shape))] == 1:
        warnings.warn(
            f"In loss {fn_name}, expected y_pred.shape to be (batch_size, num_classes) with "
            f"num_classes > 1. Received: y_pred.shape={y_pred.shape}. Consider using "
            "'binary_crossentropy' if you only have 2 classes.",
            SyntaxWarning,
            stacklevel=2,
        )


def _smooth_categorical(target, label_smoothing, axis):
    if not label_smoothing:
        return target
    num_classes = tf.cast(tf.shape(target)[axis], target.dtype)
    return target * (1.0 - label_smoothing) + label_smoothing / num_classes


@loss_kernel(saturating=from_probabilities)
def _categorical_crossentropy_kernel(
    y_true, y_pred, from_logits, label_smoothing, axis, ignore_class
):
    axis = canonical_axis(axis, len(y_pred.shape))
    target, output, valid = _categorical_setup(y_true, y_pred, from_logits, axis, ignore_class)
    target = _smooth_categorical(target, label_smoothing, axis)
    loss = ops.categorical_crossentropy(target, output, from_logits=from_logits, axis=axis)
    return finish_rows(loss, valid)


@public_function
@graph_code
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
        Error budget: 4 ULP of the float32 result (rows of up to 8 classes); from
        probabilities plus ``(n + 2)/2 * eps * sum(t)`` absolute for ``n`` classes
        on the classes below half their row's sum (the rounding of the
        normalizing sum; the class above it is ``log1p(rest / p)``: 4 ULP
        however close ``p`` is to the sum); both plus up to ``tiny`` per class
        where a term ``t_i log p_i`` falls below the smallest normal ``tiny``
        and is flushed to zero (as TF's CPU kernels do; targets near ``tiny``).

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
        >>> y_true, y_pred = [[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
        >>> categorical_crossentropy(y_true, y_pred).numpy()
        array([0.0512933, 2.30259 ], dtype=float32)
    """
    y_pred, from_logits = recover_logits(
        y_pred, from_logits, "Softmax", "categorical_crossentropy", axis=axis, argument="y_pred"
    )
    axis = axis_argument(axis)
    y_true, y_pred = prepare(y_true, y_pred, "categorical_crossentropy", axis)
    _warn_if_one_class(y_pred, axis, "categorical_crossentropy")
    return with_mask(
        _categorical_crossentropy_kernel(
            y_true,
            y_pred,
            from_logits=from_logits,
            label_smoothing=check_label_smoothing(label_smoothing),
            axis=axis,
            ignore_class=check_ignore_class(ignore_class, integer=True),
        )
    )


# ----------------------------------------------------------------------------
# Categorical focal cross-entropy
# ----------------------------------------------------------------------------


def _log_and_complement_from_logits(x, axis):
    """``log q`` and ``1 - q`` for ``q = softmax(x)`` along ``axis``, in float64.

    With ``x - m = z + z_low`` (``_internal.reductions.max_shift``), ``e = exp(z) (1 + z_low)``
    formed in float64 and ``s`` the sum of the terms below the maximum plus the number
    of other maxima (in float64): ``log q = (z + z_low) - log1p(s)``; ``1 - q`` is
    ``s / (1 + s)`` at the maxima (the others' sum: accurate however close ``q`` is to
    1) and ``1 - e / (1 + s)`` elsewhere (``q < 1/2``: no cancellation). Both carry
    float32 ``exp``'s error (about an ULP) and no rounding of their own. The focal
    factor ``(1 - q)^gamma`` multiplies the relative error of ``1 - q`` by ``gamma``: a
    float32 softmax and its ``1 - q`` gave 15.2 ULP of the loss, this 3.7; float64
    ``exp`` (0.5 ULP) cost 1.12 -> 1.35x Keras's time under XLA (one core, 2^20).
    float64 logits have no wider type: ``exp(z)`` is split into two parts
    (``split_exp_of_negative``, 0.3 ULP; XLA's float64 ``exp`` is 1.7 off), ``s`` summed
    exactly (``split_sum_of_fractions``) and kept with its rounding, which corrects
    ``log1p(s)`` and ``s / (1 + s)`` (``fraction_of_one_plus``): 5.7 -> 3.6 ULP of the loss
    at worst in 4800 random rows of 8.
    A row with a maximum of ``-inf`` (all ``-inf``, or masked) has ``log q = -inf``
    and ``q = 0``.

    Gradient: ``g_log - q (g_complement + sum(g_log - g_complement q))``
    (``d log q_i / dx_j = [i = j] - q_j``, ``d(1 - q_i)/dx_j = -q_i ([i = j] - q_j)``);
    a ``-inf`` ``log q`` is a constant, whose upstream is dropped (as in
    :func:`stableops.ops.log_softmax`).
    """

    @custom_gradient
    def pieces(x):
        m, is_max, z, z_low = max_shift(x, axis)
        ties = float64_sum(tf.cast(is_max, x.dtype), axis, keepdims=True, rounded=False) - 1.0
        if x.dtype == tf.float64:
            high, low = split_exp_of_negative(-z)
            below = tf.where(is_max, tf.zeros_like(z), high + (low + high * z_low))
            s_high, s_low = split_sum_of_fractions(below, axis)
            s_high = s_high + ties  # exact: multiples of 2^-26 below 2^26
            s, s_error = two_difference(s_high, -s_low)  # s + s_error == s_high + s_low
        else:
            exponential = tf.cast(tf.exp(z), tf.float64)
            z, z_low = tf.cast(z, tf.float64), tf.cast(z_low, tf.float64)
            below = tf.where(is_max, tf.zeros_like(z), exponential * (1.0 + z_low))
            s = float64_sum(below, axis, keepdims=True, rounded=False) + ties
        empty = empty_rows(m, s)
        inverse = tf.where(empty, tf.zeros_like(s), 1.0 / (1.0 + s))
        log_total = log1p_once(s)
        if x.dtype == tf.float64:
            log_total = log_total + s_error * inverse  # d log1p(s) = ds / (1 + s)
            top = fraction_of_one_plus(s, s_error)
        else:
            top = s * inverse
        # Every entry of an empty row is a maximum: its 1 - q is 1. Selected per row: a
        # row's boolean broadcast along it keeps XLA from vectorizing the loop (see
        # stableops.ops._crossentropy._upstream_unless).
        top = tf.where(empty, tf.ones_like(top), top)
        log_total = tf.where(empty, tf.constant(math.inf, tf.float64), log_total)
        q = tf.where(is_max, tf.ones_like(below), below) * inverse
        log_q = tf.where(is_max, 0.0 - log_total, (z + z_low) - log_total)
        complement = tf.where(is_max, top, 1.0 - q)

        def grad(to_log, to_complement):
            to_log = tf.where(tf.equal(log_q, -math.inf), tf.zeros_like(to_log), to_log)
            # q with softmax's slope declared: q's pieces hold the maxima's x - m and
            # their count as constants, and a second-order gradient (nested tapes) was
            # wrong where the maximum is tied (see _internal.reductions.with_softmax_slope).
            q_of_x = with_softmax_slope(x, q, axis)
            row = tf.reduce_sum(to_log - to_complement * q_of_x, axis=axis, keepdims=True)
            return tf.cast(to_log - q_of_x * (to_complement + row), x.dtype)

        return (log_q, complement), grad

    return pieces(x)


@custom_gradient
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


def _normalized_log_and_complement(probabilities, axis):
    """``log q`` and ``1 - q`` for ``q = p / sum(p)`` along ``axis``, ``p`` floored at ``tiny``.

    The row's one entry above half its sum (if any) takes both from the sum of
    the others, ``rest`` (:func:`top_and_rest`): ``log q = -log1p(rest / p)``
    and ``1 - q = rest / S``, accurate however close ``q`` is to 1, with
    ``p = S - rest`` (rounded: a relative error of ``eps/2`` in ``rest / p``)
    and one ``log1p`` per row. Every other entry has ``q <= 1/2``:
    ``log(q)`` of the rounded quotient is within an ULP or so, clipped at
    ``tiny`` as ``categorical_crossentropy`` clips ``p / S`` (a quotient
    below the smallest normal costs ``-log(tiny)``), and ``1 - q`` does not
    cancel. One reciprocal per row where ``log_softmax(log p)`` and
    ``softmax(log p)`` took a ``log`` and an ``exp`` per element and two
    stable row reductions: with the written-out gradient below, under XLA,
    one core, 2^20, 1.81 -> 0.75x Keras's time. An infinite probability is
    invalid input: NaN, as in ``categorical_crossentropy`` (floored, ``-inf``
    was a finite loss).
    """
    # Added, not selected: a NaN or infinite entry's gradient is NaN too (the select gave
    # it 0, the other entries NaN). p + 0 is p (but for -0, which becomes +0).
    zero, nan = tf.constant(0.0, probabilities.dtype), tf.constant(math.nan, probabilities.dtype)
    checked = probabilities + tf.where(tf.math.is_inf(probabilities), nan, zero)
    below_tiny = checked < dtype_limits(checked.dtype).tiny
    return _log_and_complement_of_floored(_floored_straight_through(checked), axis, below_tiny)


@custom_gradient
def _floored_straight_through(p):
    """``p`` floored at ``tiny``, with slope 1 below it too: a target class at probability 0
    gets the largest gradient its dtype holds, as in ``categorical_crossentropy`` (the floor's
    slope 0 left it none: the most wrong prediction did not learn)."""
    return floor_at_tiny(p), lambda upstream: upstream


def _float32_near_quotient(p, inverse, total, tiny):
    """``max(p / total, tiny)`` within two float32 roundings (``p`` float32, ``inverse = 1 /
    total`` in float64), from float32 products: the loop that takes its ``log`` holds no
    float64 arithmetic (rounding the float64 quotient to float32 there, XLA's loop took 1.8x a
    plain float32 ``log``'s time: categorical focal cross-entropy under XLA, one core,
    ``[2048, 128]``, 1.47 -> 1.36x Keras's). Its rest ``q - r`` is then below ``2^-22 r``, so
    ``log r + (q - r) / r`` is ``log q`` to well under an ULP. A row summing past ``2^100`` is
    scaled by ``2^-40`` first (exact), so that the reciprocal is a normal float32 (above
    ``2^126`` it would flush to 0); an entry that the scaling flushes is below ``tiny`` of
    the row anyway."""
    scale = tf.where(total > 2.0**100, tf.constant(2.0**-40, tf.float64), tf.ones_like(total))
    inverse = tf.cast(inverse / scale, p.dtype)  # per row: from 2^-91 to 1 / tiny
    return clip((p * tf.cast(scale, p.dtype)) * inverse, tiny)


def _log_and_complement_of_floored(p, axis, below_tiny):
    """:func:`_normalized_log_and_complement` of ``p >= tiny``, with its gradient written out.

    Gradient: ``g_log / p - sum(g_log) / S + (sum(g_complement q) - g_complement) / S``
    (``log q = log p - log S``, ``1 - q = 1 - p / S``, for the top entry too). Autodiff of
    ``p * (1 / S)`` formed ``1 / S**2``, which overflows for a row summing to 3.7e-25
    (NaN gradients on ordinary targets). The floor passes the gradient straight through,
    as ``categorical_crossentropy``'s clip does: an entry ``below_tiny`` keeps its log's
    slope ``g_log / tiny`` and the row sum's part (a class at probability 0 moves every
    ``q``; dropped there, a zero non-target entry had gradient 0 where its derivative is
    ``alpha ((1 - q)^gamma - gamma q (1 - q)^(gamma - 1) log q) / S``). A row floored
    whole (all zero: ``S = n tiny``) has no row sum's part, as ``categorical_crossentropy``'s
    all-zero row.
    """

    tiny = dtype_limits(p.dtype).tiny

    @custom_gradient
    def pieces(narrow):
        p, shrink = tf.cast(narrow, tf.float64), 1.0
        if narrow.dtype == tf.float64:
            # A row summing past 2^1022 (its reciprocal subnormal, flushed: 177 for 0.043)
            # is shrunk first; float32 entries cannot sum that far in float64.
            p, shrink, _ = shrunk_rows(p, axis)
        total = float64_sum(p, axis, keepdims=True)
        is_top, rest = top_and_rest(p, total, axis)
        # q as p times the row's reciprocal (one more rounding): a quotient with
        # two users would be a full-size pass of its own under XLA.
        inverse = tf.math.reciprocal(total)
        q = p * inverse
        if narrow.dtype == tf.float64:
            # No wider type to hide roundings in: the top entry is the row's maximum,
            # exact (total - rest rounds), and 1 - q = rest / (top + rest) rounds twice
            # where rest times the rounded total's reciprocal rounded three times,
            # doubled by gamma = 2: 7 -> 3 ULP of the loss.
            largest = tf.reduce_max(p, axis=axis, keepdims=True)
            top_complement = rest / (largest + rest)
        else:
            # float32 entries: the float64 sums' roundings are below float32's resolution
            largest = total - rest
            top_complement = rest * inverse
        # Per row; a row without a top entry has largest = 0: divide by 1 there.
        largest = tf.where(largest > 0.0, largest, tf.ones_like(largest))
        top_log = -tf.math.log1p(rest / largest)
        # log q from the input precision's log of a float32 number r near q, plus the rest
        # q - r to first order: a float64 log per element took 2.2x Keras's time under XLA.
        clipped = clip(q, tiny)
        if narrow.dtype == tf.float64:
            log_q = tf.math.log(clipped)
        else:
            rounded = _float32_near_quotient(narrow, inverse, total, tiny)
            low = clipped - tf.cast(rounded, tf.float64)
            log_q = tf.cast(tf.math.log(rounded), tf.float64) + low * tf.cast(
                tf.math.reciprocal(rounded), tf.float64
            )
        log_q = tf.where(is_top, top_log, log_q)
        complement = tf.where(is_top, top_complement, 1.0 - q)

        def grad(to_log, to_complement):
            # In the input's precision (a float64 division per element cost).
            to_log, to_complement, q_narrow, inverse_narrow = (
                tf.cast(v, narrow.dtype) for v in (to_log, to_complement, q, inverse * shrink)
            )
            # Written once (an exact division by a per-row 1): the focal factor's chain that
            # forms it from the float64 log q and 1 - q runs in one loop; ending in a product,
            # it ran again in the row sum's and the gradient's loops (one core, [2048, 128],
            # under XLA: 1.33-1.36 -> 1.23-1.32x Keras's time; peak memory unchanged).
            to_complement = written_once(to_complement, inverse_narrow)
            # float64_sum: formed and summed in one loop (a float32 sum of the computed
            # terms was written out for YNNPACK under XLA).
            row = float64_sum(to_complement * q_narrow - to_log, axis, keepdims=True)
            # A row floored whole has no row sum's part: its reciprocal taken as 0 (per row).
            floored_row = tf.reduce_all(below_tiny, axis=axis, keepdims=True)
            inverse_narrow = tf.where(floored_row, tf.zeros_like(inverse_narrow), inverse_narrow)
            through_sum = (row - to_complement) * inverse_narrow
            gradient = to_log / narrow + through_sum
            # Saturated: alpha / tiny overflows from alpha = 4 (float32).
            largest = dtype_limits(narrow.dtype).max
            return clip(gradient, -largest, largest)

        return (log_q, complement), grad

    return pieces(p)


@loss_kernel(saturating=from_probabilities)
def _categorical_focal_crossentropy_kernel(
    y_true, y_pred, alpha, gamma, from_logits, label_smoothing, axis, ignore_class
):
    axis = canonical_axis(axis, len(y_pred.shape))
    target, output, valid = _categorical_setup(y_true, y_pred, from_logits, axis, ignore_class)
    target = _smooth_categorical(target, label_smoothing, axis)
    # log p and 1 - p in float64, and the loss from them, rounded once (see the
    # functions' docstrings: in float32 the focal factor amplified their roundings).
    if from_logits:
        log_p, complement = _log_and_complement_from_logits(output, axis)
    else:
        # Keras normalizes the row; zero and negative probabilities are floored
        # at the smallest normal first (an all-zero row counts as uniform).
        log_p, complement = _normalized_log_and_complement(output, axis)
    target = tf.cast(target, tf.float64)
    # -t * log p per class, 0 where t = 0 (also at log p = -inf, a masked logit).
    cross_entropy = safe_where(
        tf.not_equal(target, 0.0), log_p, lambda v: -target * v, 0.0, safe_true=-1.0
    )
    if gamma:  # gamma == 0: no focal factor (and no 0 * log 0)
        cross_entropy = _focal_product(power(complement, gamma), cross_entropy)
    values = _categorical_alpha(alpha, log_p, axis) * cross_entropy
    return finish_rows(tf.cast(float64_sum(values, axis), output.dtype), valid)


@public_function
@graph_code
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
        (an all-zero row counts as uniform; Keras: NaN), and ``log q`` and
        ``1 - q`` of the normalized ``q = p / sum(p)`` come from ``p`` directly:
        for the entry above half its row's sum from the others' sum
        (``-log1p(rest / p)``, ``rest / sum``), accurate however close ``q``
        is to 1; a ``q`` below ``tiny`` costs ``-log(tiny)``, as in
        :func:`categorical_crossentropy`. The floor passes the gradient
        straight through: a class at probability 0 keeps its derivative
        (a target's ``-alpha / tiny``; another class's share through the
        row's sum). Where the
        cross-entropy exceeds ``-log(tiny)`` the focal factor's share of the
        gradient is below the dtype's resolution and is left out
        (``_focal_product``): logits ``[-3e38, 3e38, 0]`` have a finite
        gradient, as in :func:`categorical_crossentropy`. A softmax output's
        logits are used.
        Error budget: 4 ULP of the result from logits and 2 from
        probabilities in float32, 4 in float64 (rows of up to 8 classes,
        ``gamma = 2``). The factor ``(1 - q)^gamma`` multiplies the relative
        error of ``1 - q`` by ``gamma``, so ``log q`` and ``1 - q`` are formed
        in float64 for float32 input (a float32 softmax and its ``1 - q``:
        15.2 ULP from logits, 11.6 from probabilities), and float64 input
        corrects their roundings (7 ULP uncorrected). Measured against
        mpmath: 3.7 and 1.8 ULP in float32, 3.6 in float64 both ways. A
        larger ``gamma`` amplifies float32 ``exp``'s error in ``1 - q`` from
        logits ``gamma`` times (6.2 ULP measured at ``gamma = 8``).

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
        >>> y_true, y_pred = [[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
        >>> categorical_focal_crossentropy(y_true, y_pred).numpy()
        array([3.20583e-05, 0.466273], dtype=float32)
    """
    y_pred, from_logits = recover_logits(
        y_pred, from_logits, "Softmax", "categorical_focal_crossentropy", axis=axis,
        argument="y_pred",
    )
    axis = axis_argument(axis)
    y_true, y_pred = prepare(y_true, y_pred, "categorical_focal_crossentropy", axis)
    _warn_if_one_class(y_pred, axis, "categorical_focal_crossentropy")
    alpha = _check_class_alpha(alpha)
    num_classes = y_pred.shape[canonical_axis(axis, len(y_pred.shape))]
    if isinstance(alpha, tuple) and num_classes is not None and len(alpha) != num_classes:
        raise ValueError(
            f"`alpha` must have one weight per class ({num_classes}), got alpha={alpha!r}"
        )
    return with_mask(
        _categorical_focal_crossentropy_kernel(
            y_true,
            y_pred,
            alpha=alpha,
            gamma=check_gamma(gamma),
            from_logits=from_logits,
            label_smoothing=check_label_smoothing(label_smoothing),
            axis=axis,
            ignore_class=check_ignore_class(ignore_class, integer=True),
        )
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


@loss_kernel(saturating=from_probabilities)
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
    return finish_rows(loss, valid)


@public_function
@graph_code
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
        Error budget: 4 ULP of the float32 result (rows of up to 8 classes);
        from logits plus up to ``tiny`` per class where terms below the
        smallest normal ``tiny`` are flushed to zero (as TF's CPU kernels do).

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
        >>> sparse_categorical_crossentropy([1, 2], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]).numpy()
        array([0.0512933, 2.30259 ], dtype=float32)
    """
    y_pred, from_logits = recover_logits(
        y_pred, from_logits, "Softmax", "sparse_categorical_crossentropy", axis=axis,
        argument="y_pred",
    )
    axis = axis_argument(axis)
    ignore_class = check_ignore_class(ignore_class, integer=True)
    label_smoothing = check_label_smoothing(label_smoothing)
    labels, y_pred, num_classes = _prepare_sparse(y_true, y_pred, axis)
    # Outside the kernel: inside XLA the assert would be dropped (the kernel
    # then gives NaN for that sample, never a finite loss).
    labels = raise_on_invalid_labels(
        labels, _invalid_labels(labels, num_classes, ignore_class), num_classes
    )
    return with_mask(
        _sparse_categorical_crossentropy_kernel(
            labels,
            y_pred,
            from_logits=from_logits,
            ignore_class=ignore_class,
            axis=axis,
            label_smoothing=label_smoothing,
        )
    )


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------


@loss_class
class CategoricalCrossentropy(RawInputLoss):
    """Categorical cross-entropy; Keras's ``CategoricalCrossentropy``, finite where it is not.

    See :func:`categorical_crossentropy`. A softmax output's logits are used
    even under ``mixed_float16``.

    Args:
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the class axis.
        {common}
        ignore_class: keyword-only int: rows whose target class is this are ignored.
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction=REDUCTION,
                 name="categorical_crossentropy", dtype=None, *, ignore_class=None):
        super().__init__(
            categorical_crossentropy, reduction, name, dtype,
            from_logits=flag(from_logits, "from_logits"),
            label_smoothing=check_label_smoothing(label_smoothing), axis=axis_argument(axis),
            ignore_class=check_ignore_class(ignore_class, integer=True),
        )


@loss_class
class CategoricalFocalCrossentropy(RawInputLoss):
    """Categorical focal cross-entropy; Keras's ``CategoricalFocalCrossentropy``, finite.

    See :func:`categorical_focal_crossentropy`.

    Args:
        alpha: a float ``>= 0`` or one per class.
        gamma: float ``>= 0``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: float in ``[0, 1]``.
        axis: the class axis.
        {common}
        ignore_class: keyword-only int: rows whose target class is this are ignored.
    """

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction=REDUCTION, name="categorical_focal_crossentropy", dtype=None, *,
                 ignore_class=None):
        alpha = _check_class_alpha(alpha)
        super().__init__(
            categorical_focal_crossentropy, reduction, name, dtype,
            # A list (JSON-friendly config) for one weight per class.
            alpha=list(alpha) if isinstance(alpha, tuple) else alpha, gamma=check_gamma(gamma),
            from_logits=flag(from_logits, "from_logits"),
            label_smoothing=check_label_smoothing(label_smoothing),
            axis=axis_argument(axis), ignore_class=check_ignore_class(ignore_class, integer=True),
        )


@loss_class
class SparseCategoricalCrossentropy(RawInputLoss):
    """Sparse categorical cross-entropy; Keras's ``SparseCategoricalCrossentropy``, finite.

    See :func:`sparse_categorical_crossentropy`. Integer labels are read as
    passed (Keras casts them to the loss dtype first: label 3001 becomes 3000
    with ``dtype="float16"``).

    Args:
        from_logits: whether ``y_pred`` holds logits.
        ignore_class: an int label to leave out, or ``None``.
        axis: the class axis.
        {common}
        label_smoothing: keyword-only float in ``[0, 1]``.
    """

    def __init__(self, from_logits=False, ignore_class=None, reduction=REDUCTION, axis=-1,
                 name="sparse_categorical_crossentropy", dtype=None, *, label_smoothing=0.0):
        super().__init__(
            sparse_categorical_crossentropy, reduction, name, dtype,
            from_logits=flag(from_logits, "from_logits"),
            ignore_class=check_ignore_class(ignore_class, integer=True), axis=axis_argument(axis),
            label_smoothing=check_label_smoothing(label_smoothing),
        )
