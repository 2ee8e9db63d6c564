"""Regression, overlap and hinge losses: drop-in replacements for Keras 3.15.

Each loss comes as a function form (``mean_squared_error(y_true, y_pred)``,
one value per sample) and a ``keras.losses.Loss`` class with Keras's name,
constructor signature and defaults. On ordinary inputs the results are Keras's;
where Keras returns ``inf``/``nan``, a silently clipped value, an exploding or a
zero gradient, these stay finite and accurate:

* everything computes half precision in float32 and returns float32 (Keras's
  function forms compute float16 in float16: ``mean_squared_error`` of an error
  of 300 is ``inf``);
* ``mean_squared_logarithmic_error`` extends ``log1p`` below 0 by its tangent
  line instead of clipping predictions at ``1e-7`` (Keras: negative predictions
  get a zero gradient), and is accurate when ``y_pred`` is close to ``y_true``;
* ``mean_absolute_percentage_error`` leaves zero targets out of the mean
  (Keras divides by ``1e-7``: a 1e9-scale loss);
* ``cosine_similarity`` of a zero vector is 0 with gradient 0 (Keras: 1e7,
  ``nan`` in float16);
* ``dice``/``tversky`` score two empty masks as a perfect match (loss 0;
  Keras: 1) and take a keyword-only ``smooth`` term;
* ``log_cosh`` and ``huber`` are accurate for tiny and finite for huge errors.

Per-sample means over the last axis are Keras's (sum, then divide): with
float32/bfloat16 inputs near the float32 range a sample overflows to ``inf``
when the sum of its per-element terms exceeds the float32 max; half-precision
inputs, computed in float32, stay far from it.

Every function validates its arguments (``losses._base.prepare``): integer and
boolean predictions are cast to ``keras.config.floatx()`` as Keras does; strings
and complex numbers are a ``TypeError`` naming the argument; a ``ValueError``
names both shapes, an axis out of range or the bad hyperparameter. Then it runs
an XLA-compiled kernel, in every regime (``ops._kernel.xla_kernel``). The
losses that average per-element terms over the last axis (MSE, MAE, MSLE,
Huber, log-cosh, the hinges, Poisson) take two ``tf.RaggedTensor`` as Keras's
do; the others refuse ragged input with a ``TypeError`` naming the loss.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from stableops import ops
from stableops._internal.checks import axis_argument, number
from stableops._internal.compensated import two_difference
from stableops._internal.dtypes import compute_dtype, dtype_limits
from stableops._internal.kernel import xla_kernel
from stableops.losses._base import FunctionLoss, prepare, ragged_rows

__all__ = [
    "CategoricalHinge",
    "CosineSimilarity",
    "Dice",
    "Hinge",
    "Huber",
    "LogCosh",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredError",
    "MeanSquaredLogarithmicError",
    "SquaredHinge",
    "Tversky",
    "categorical_hinge",
    "cosine_similarity",
    "dice",
    "hinge",
    "huber",
    "log_cosh",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "mean_squared_logarithmic_error",
    "squared_hinge",
    "tversky",
]

_REDUCTION = "sum_over_batch_size"


# ----------------------------------------------------------------------------
# Argument checks (static, outside the compiled kernels)
# ----------------------------------------------------------------------------


def _hyperparameter(value, name, low=None, *, low_open=False):
    """``value`` as a Python float (infinity allowed: ``Huber(delta=inf)``), see ``number``."""
    return number(value, name, low, low_open=low_open, allow_inf=True)


def _axis_argument(axis, *, allow_many):
    """An int axis, or (``allow_many``) ``None`` or a tuple of ints."""
    return axis_argument(axis, allow_many=allow_many, allow_none=allow_many)


def _kernel(fn):
    """``xla_kernel``, with AutoGraph off for the traced path as well.

    The kernels are straight-line TensorFlow (no Python control flow on
    tensors). Called inside a user's ``tf.function`` or ``model.fit`` (where
    AutoGraph is on), AutoGraph would otherwise convert them and the ops'
    custom-gradient closures they call, which is slower to trace and has
    failed with ``NameError`` on those closures.

    Every kernel here reduces each sample over ``axis`` (the last axis without
    the argument), so each is ``row_local``: the forward call also returns the
    per-element gradient, and the backward pass is one multiplication.
    """
    return xla_kernel(tf.autograph.experimental.do_not_convert(fn), row_local=True)


def _in_compute_dtype(y_true, y_pred):
    """Both tensors in ``y_pred``'s computing dtype (float32 for half precision)."""
    dtype = compute_dtype(y_pred.dtype)
    return tf.cast(y_true, dtype), tf.cast(y_pred, dtype)


def _mean_of_squares(x):
    """``mean(x^2, axis=-1)``, with a gradient that is finite wherever ``2 x / n`` is.

    The square is written ``x * x``: autodiff then forms ``g * x + x * g``
    with ``g = upstream / n`` (each term at most ``|x| / n``). ``tf.square``'s
    gradient ``upstream * (2 x)`` forms ``2 x`` first, which overflows for
    ``|x| > max / 2`` under XLA (3 errors of 3e38: ``inf`` instead of the
    mean's gradient 2e38 eagerly), so the regimes disagreed.
    """
    return tf.reduce_mean(x * x, axis=-1)


# ----------------------------------------------------------------------------
# Mean squared / absolute error
# ----------------------------------------------------------------------------


@_kernel
def _mean_squared_error_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    return _mean_of_squares(y_true - y_pred)


@ragged_rows
def mean_squared_error(y_true, y_pred):
    """Mean squared error over the last axis.

    Formula:
        ``mean((y_true - y_pred)^2, axis=-1)``

    Numerical stability:
        Half precision is computed in float32 (Keras's function form squares
        in float16: an error of 300 gives ``inf``). The result overflows to
        ``inf`` only when the sum of the squared errors over the last axis
        exceeds the float32 max (errors beyond about 1.8e19, possible only
        for float32/bfloat16 inputs); the gradient ``2 (y_pred - y_true) / n``
        stays finite while it is representable, in every regime (the square
        is ``e * e``: ``tf.square``'s gradient formed ``2 e`` first, ``inf``
        under XLA for ``|e| > max / 2``). NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype (float32
        for float16/bfloat16/float32, float64 for float64).

    Example:
        >>> mean_squared_error([[1.0, 0.0, 1.0]], [[0.9, 0.1, 0.8]])  # [0.02]
    """
    return _mean_squared_error_kernel(*prepare(y_true, y_pred, "mean_squared_error"))


@_kernel
def _mean_absolute_error_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    return tf.reduce_mean(tf.abs(y_true - y_pred), axis=-1)


@ragged_rows
def mean_absolute_error(y_true, y_pred):
    """Mean absolute error over the last axis.

    Formula:
        ``mean(|y_true - y_pred|, axis=-1)``

    Numerical stability:
        Half precision is computed in float32. Finite while the sum of the
        absolute errors over the last axis is below the float32 max; the
        gradient is ``sign(y_pred - y_true) / n`` (0 at a zero error, as in
        Keras). NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> mean_absolute_error([[1.0, 0.3, 1.0]], [[1.9, 0.3, 1.8]])  # [0.5666667]
    """
    return _mean_absolute_error_kernel(*prepare(y_true, y_pred, "mean_absolute_error"))


# ----------------------------------------------------------------------------
# Mean absolute percentage error
# ----------------------------------------------------------------------------


@_kernel
def _mean_absolute_percentage_error_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    # A percentage of a zero target is undefined: safe_divide gives those
    # terms 0 with a zero gradient, and they are left out of the count.
    # |(t - p) / |t||, the absolute value taken last: at p == t its zero slope
    # reaches the division's gradient first (0 / |t| = 0), where |t - p| / |t|
    # formed upstream / |t| = inf for |t| near the smallest normal, then inf * 0.
    relative = tf.abs(ops.safe_divide(y_true - y_pred, tf.abs(y_true)))
    defined = tf.cast(tf.not_equal(y_true, 0.0), y_true.dtype)
    # A sample whose targets are all zero has nothing to measure: 0 / 0 -> 0.
    mean = ops.safe_divide(
        tf.reduce_sum(relative, axis=-1), tf.reduce_sum(defined, axis=-1)
    )
    return 100.0 * mean


def mean_absolute_percentage_error(y_true, y_pred):
    """Mean absolute percentage error over the nonzero targets of the last axis.

    Formula:
        ``100 * sum(|y_true - y_pred| / |y_true|) / count(y_true != 0)``,
        both over ``y_true != 0`` along the last axis; 0 for a sample whose
        targets are all zero.

    Numerical stability:
        The relative error of a zero target is undefined, so zero targets are
        left out of the mean, with a zero gradient (``ops.safe_divide``); with
        no zero target this is Keras's ``100 * mean(|y_true - y_pred| /
        |y_true|)``. Keras divides by ``max(|y_true|, 1e-7)`` instead:
        ``y_true = [0, 1], y_pred = [0.5, 1.5]`` gives 2.5e8 there (gradient
        5e8) and 50 here (the 1 -> 1.5 term alone; gradient 0 for the
        zero-target prediction). Half precision is computed in float32, where
        every finite float16 input gives a finite result (at most about
        2e11). In float32/bfloat16 the result overflows only when the sum of
        the relative errors does (``|y_pred| / |y_true|`` beyond about 3e36).
        NaN in ``y_true`` or ``y_pred`` (at a nonzero target) gives NaN.
        Error budget: 4 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> mean_absolute_percentage_error([[100.0, 200.0, 300.0]], [[90.0, 210.0, 310.0]])
        ... # [6.111111]
        >>> mean_absolute_percentage_error([[0.0, 1.0]], [[0.5, 1.5]])  # [50.0]; Keras 2.5e8
    """
    return _mean_absolute_percentage_error_kernel(*prepare(y_true, y_pred, "mean_absolute_percentage_error"))


# ----------------------------------------------------------------------------
# Mean squared logarithmic error
# ----------------------------------------------------------------------------


def _log1p_tangent(x):
    """``log1p(x)`` for ``x >= 0``, continued below 0 by its tangent line ``x``."""
    return ops.safe_where(x >= 0.0, x, tf.math.log1p, lambda v: v)


def _log_error(y_true, y_pred):
    """``f(y_pred) - f(y_true)`` with ``f`` = log1p extended by its tangent below 0.

    When both are >= 0 it is computed as ``±log1p(|y_pred - y_true| / (1 +
    min))`` (exact identity): no cancellation when ``y_pred ≈ y_true``, and no
    overflow since ``|y_pred - y_true| <= max(y_pred, y_true)``. Otherwise the
    two terms of ``f(y_pred) - f(y_true)`` have opposite signs or are both
    linear, so the plain difference loses nothing.
    """
    both_nonnegative = tf.logical_and(y_true >= 0.0, y_pred >= 0.0)
    # Inputs of the log-ratio branch are clamped at 0, so its unselected
    # elements (and their gradients) stay finite: the double-where rule.
    true_clamped = tf.maximum(y_true, 0.0)
    pred_clamped = tf.maximum(y_pred, 0.0)
    gap = tf.math.log1p(
        tf.abs(pred_clamped - true_clamped) / (1.0 + tf.minimum(pred_clamped, true_clamped))
    )
    log_ratio = tf.where(pred_clamped >= true_clamped, gap, -gap)
    tangent_difference = _log1p_tangent(y_pred) - _log1p_tangent(y_true)
    return tf.where(both_nonnegative, log_ratio, tangent_difference)


@_kernel
def _mean_squared_logarithmic_error_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    # Targets follow Keras: clipped at 0 (gradient 0 below; NaN stays NaN).
    y_true = tf.where(y_true < 0.0, tf.zeros_like(y_true), y_true)
    return _mean_of_squares(_log_error(y_true, y_pred))


@ragged_rows
def mean_squared_logarithmic_error(y_true, y_pred):
    """Mean squared logarithmic error over the last axis.

    Formula:
        ``mean((f(y_pred) - f(y_true))^2, axis=-1)`` with ``f(x) = log1p(x)``
        for ``x >= 0`` and ``f(x) = x`` (the tangent of ``log1p`` at 0) below.

    Numerical stability:
        For non-negative inputs this is Keras's ``log(y + 1)`` formula
        (Keras clips both at ``1e-7``; the difference is below 1e-7 in the
        result). Targets follow Keras: clipped at 0 (gradient 0 below).
        Keras clips negative predictions to ``1e-7``: their value is
        that of a zero prediction and their gradient is 0, so a model that
        outputs negatives never recovers. Here ``f`` continues ``log1p`` by
        its tangent line (C1 at 0), so ``y_pred = -0.5, y_true = 1`` gives
        ``(-0.5 - log 2)^2 = 1.4236`` with gradient ``2 (-0.5 - log 2) =
        -2.386`` (Keras: 0.4805, gradient 0); every ``y_pred <= -1`` is finite
        too (log1p itself would give ``-inf``/NaN there). When ``y_pred ≈
        y_true`` the log difference is ``log1p(|y_pred - y_true| / (1 +
        min))``, accurate to a few ULP (Keras's ``log(y_pred + 1) - log(y_true
        + 1)`` cancels: 0.3% off at 1e-5 vs 2e-5). Half precision is computed
        in float32; the result overflows only when the sum of the squared
        log errors exceeds the float32 max (negative inputs beyond about
        -1.8e19, float32/bfloat16 only). NaN gives NaN.
        Error budget: 6 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> mean_squared_logarithmic_error([[1.0]], [[-0.5]])  # [1.4236]; Keras 0.4805
    """
    return _mean_squared_logarithmic_error_kernel(*prepare(y_true, y_pred, "mean_squared_logarithmic_error"))


# ----------------------------------------------------------------------------
# Huber and log-cosh
# ----------------------------------------------------------------------------


@_kernel
def _huber_kernel(y_true, y_pred, delta):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    delta = tf.cast(delta, y_pred.dtype)
    error = y_pred - y_true

    def quadratic(e):
        return 0.5 * tf.square(e)

    def linear(e):
        # delta * (|e| - delta / 2): never squares delta, so a huge delta
        # cannot overflow where the linear branch is selected.
        return delta * (tf.abs(e) - 0.5 * delta)

    # Each branch sees only its own elements (0 elsewhere): a huge error never
    # reaches the square, so no inf/nan leaks through the unselected branch.
    per_element = ops.safe_where(tf.abs(error) <= delta, error, quadratic, linear)
    return tf.reduce_mean(per_element, axis=-1)


@ragged_rows
def huber(y_true, y_pred, delta=1.0):
    """Huber loss over the last axis: quadratic below ``delta``, linear above.

    Formula:
        ``e = y_pred - y_true``; ``0.5 e^2`` if ``|e| <= delta``, else
        ``delta (|e| - delta / 2)``; then ``mean(..., axis=-1)``.

    Numerical stability:
        The branches are guarded with ``safe_where``, so the square of a huge
        error is never formed where the linear branch applies, and the linear
        branch never forms ``delta^2``. Half precision is computed in float32:
        float16 errors up to the full range (``y_true = -60000, y_pred = 60000``)
        give finite values and gradients (Keras's function form: ``inf`` and a
        NaN gradient). Gradient: ``clip(e, -delta, delta) / n``. In
        float32/bfloat16 the result is finite while the sum of the
        per-element losses over the last axis is. NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).
        delta: positive float, where the loss changes from quadratic to
            linear (``float("inf")`` gives half the squared error).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Raises:
        ValueError: if ``delta <= 0`` or NaN.

    Example:
        >>> huber([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])  # [0.18, 0.13]
    """
    delta = _hyperparameter(delta, "delta", 0.0, low_open=True)
    return _huber_kernel(*prepare(y_true, y_pred, "huber"), delta=delta)


@_kernel
def _log_cosh_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    # The error is carried as d + d_low (TwoSum): near 0, log cosh d ~ d^2/2
    # would double the relative rounding error of y_pred - y_true. First
    # order: log cosh(d + d_low) = log cosh(d) + tanh(d) d_low.
    error, error_low = two_difference(y_pred, y_true)
    return tf.reduce_mean(ops.log_cosh(error) + tf.tanh(error) * error_low, axis=-1)


@ragged_rows
def log_cosh(y_true, y_pred):
    """Mean of the log of the hyperbolic cosine of the error, over the last axis.

    Formula:
        ``mean(log(cosh(y_pred - y_true)), axis=-1)``

    Numerical stability:
        Uses ``ops.log_cosh``: accurate for tiny errors (``1e-6`` gives
        ``5e-13``; Keras's ``x + softplus(-2x) - log 2`` gives 0) and finite
        for huge ones (float16 ``-40000`` gives ``39999.3``; Keras's float16
        function form gives ``inf``). The error ``e`` is carried with its
        rounding error (TwoSum) and corrected to first order, so its rounding
        is not doubled near 0. Gradient ``tanh(e) / n``. Half precision is
        computed in float32. Finite while the sum over the last
        axis (about ``sum |e|``) is below the float32 max. NaN gives NaN.
        Error budget: 4 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> log_cosh([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]])  # [0.2169, 0.0]
    """
    return _log_cosh_kernel(*prepare(y_true, y_pred, "log_cosh"))


# ----------------------------------------------------------------------------
# Cosine similarity
# ----------------------------------------------------------------------------


@_kernel
def _cosine_similarity_kernel(y_true, y_pred, axis):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    unit_true = ops.l2_normalize(y_true, axis=axis)
    unit_pred = ops.l2_normalize(y_pred, axis=axis)
    return -tf.reduce_sum(unit_true * unit_pred, axis=axis)


def cosine_similarity(y_true, y_pred, axis=-1):
    """Negative cosine similarity along ``axis`` (-1: same direction, 1: opposite).

    Formula:
        ``-sum(y_true / ||y_true|| * y_pred / ||y_pred||, axis)``

    Numerical stability:
        Uses ``ops.l2_normalize``: a zero vector normalizes to zero with
        gradient 0, so the loss of a zero vector is 0 with gradient 0 (Keras
        clamps the inverse norm at ``1e7``: gradient ``1e7 * y_true_unit``,
        and ``nan``/``-inf`` in float16). Vectors with norms near the
        float32 limits (``1e-30`` or ``1e30``) normalize exactly, where
        Keras's ``rsqrt(sum(x^2))`` under- or overflows. Half precision is
        computed in float32. NaN gives NaN.
        Error budget: 4 ULP of the float32 result, plus 1 ULP of 1 in
        absolute terms (cancellation near orthogonality).

    Args:
        y_true: targets; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).
        axis: the feature axis (an int). Defaults to -1.

    Returns:
        The input shape without ``axis``, in ``y_pred``'s computing dtype,
        values in ``[-1, 1]``.

    Example:
        >>> cosine_similarity([[0., 1.], [1., 1.], [1., 1.]], [[1., 0.], [1., 1.], [-1., -1.]])
        ... # [0., -0.99999994, 0.99999994]
    """
    axis = _axis_argument(axis, allow_many=False)
    return _cosine_similarity_kernel(*prepare(y_true, y_pred, "cosine_similarity", axis), axis=axis)


# ----------------------------------------------------------------------------
# Dice and Tversky (overlap losses)
# ----------------------------------------------------------------------------


def _overflow_scale(y_pred, axis, weight):
    """Per sample, 1, or ``1 / (weight * n)`` when its sums over ``axis`` could overflow.

    ``n`` is the number of entries reduced and ``weight`` the number of
    ``n``-term sums added in the loss's denominator (2 for Dice: ``sum(y_true)
    + sum(y_pred)``; ``1 + alpha + beta`` for Tversky). With targets in
    ``[0, 1]`` every summed term is at most ``1 + |y_pred|``, so a sample
    whose largest ``|y_pred|`` is below ``max / (2 weight n)`` cannot
    overflow and keeps scale 1 (its results are bit for bit unchanged);
    beyond it (predictions of ``±3e38``) each term is divided by ``weight *
    n`` before it is summed, so every sum stays finite. The loss is a ratio
    of such sums, so the scale cancels (``smooth`` is scaled with them).

    Returns:
        ``(scale, scale_reduced)``: broadcastable against ``y_pred``, and the
        same with ``axis`` reduced.
    """
    count = tf.reduce_sum(tf.ones_like(y_pred), axis=axis, keepdims=True)
    largest = tf.reduce_max(tf.abs(y_pred), axis=axis, keepdims=True)
    # max / (2 weight n): the 2 leaves room for the 1 in |1 - y_pred|.
    limit = dtype_limits(y_pred.dtype).max / (2.0 * weight * count)
    scale = tf.where(largest < limit, tf.ones_like(count), 1.0 / (weight * count))
    return scale, tf.reduce_max(scale, axis=axis)


def _overlap_terms(y_true, y_pred, axis, scale):
    """Soft true positives, missed positives and false alarms, summed over ``axis``.

    ``missed = sum(y_true (1 - y_pred))`` and ``false_alarm = sum(y_pred (1 -
    y_true))`` are summed directly, so a near-perfect prediction gives a small,
    accurate loss instead of ``1 - ratio`` cancelling to 0. Each term is
    multiplied by ``scale`` (:func:`_overflow_scale`) before it is summed.
    """
    true_positive = tf.reduce_sum(y_true * y_pred * scale, axis=axis)
    missed = tf.reduce_sum(y_true * (1.0 - y_pred) * scale, axis=axis)
    false_alarm = tf.reduce_sum(y_pred * (1.0 - y_true) * scale, axis=axis)
    return true_positive, missed, false_alarm


@_kernel
def _dice_kernel(y_true, y_pred, axis, smooth):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    scale, scale_reduced = _overflow_scale(y_pred, axis, 2.0)
    _, missed, false_alarm = _overlap_terms(y_true, y_pred, axis, scale)
    total = tf.reduce_sum(y_true * scale, axis=axis) + tf.reduce_sum(y_pred * scale, axis=axis)
    # 1 - (2 TP + s) / (sum(y_true) + sum(y_pred) + s), written as
    # (missed + false alarms) / (...). Two empty masks (0 / 0 with s = 0)
    # agree perfectly: safe_divide's fill gives loss 0 with a zero gradient.
    return ops.safe_divide(missed + false_alarm, total + smooth * scale_reduced)


def dice(y_true, y_pred, axis=None, *, smooth=0.0):
    """Dice loss: one minus the (soft) Dice coefficient over ``axis``.

    Formula:
        ``1 - (2 sum(y_true y_pred) + smooth) / (sum(y_true) + sum(y_pred) + smooth)``,
        computed as ``(sum(y_true (1 - y_pred)) + sum(y_pred (1 - y_true))) /
        (sum(y_true) + sum(y_pred) + smooth)``; two empty masks give 0.

    Numerical stability:
        Keras adds ``1e-7`` to the denominator only, so a perfect empty
        prediction (``y_true = y_pred = 0``) scores loss 1. Here ``0 / 0``
        (both empty, ``smooth = 0``) is a perfect match, loss 0 with gradient
        0 (``ops.safe_divide``); with ``smooth > 0`` (Laplace smoothing, often
        1) the loss is continuous there. On ordinary inputs the results equal
        Keras's to about ``1e-7 / (sum(y_true) + sum(y_pred))`` relative. The
        loss is formed from the summed misses and false alarms, not as ``1 -
        ratio``, so it keeps its accuracy when it is small. Meant for values
        in [0, 1]; other values follow the formula: with targets in [0, 1]
        and predictions up to the float range (``±3e38``) the sums are scaled
        before they could overflow (``_overflow_scale``), so value and
        gradient are never NaN (a ratio beyond the range is ``±inf``). Half
        precision is computed in float32. NaN gives NaN.
        Error budget: 4 ULP of the float32 result for 8 summed values in [0, 1].

    Args:
        y_true: targets in [0, 1]; any real dtype.
        y_pred: predictions in [0, 1], same shape; real (integers and booleans are cast).
        axis: an int or tuple of axes to reduce; ``None`` (default, as in
            Keras) reduces every axis, giving one value for the whole batch.
        smooth: keyword-only, non-negative; added to numerator and denominator.

    Returns:
        The input shape without ``axis`` (a scalar for ``axis=None``), in
        ``y_pred``'s computing dtype.

    Raises:
        ValueError: if ``smooth`` is negative or NaN.

    Example:
        >>> dice([[1.0, 0.0, 1.0]], [[0.8, 0.1, 0.7]])  # 0.1666667
        >>> dice([[0.0, 0.0]], [[0.0, 0.0]])  # 0.0; Keras 1.0
    """
    axis = _axis_argument(axis, allow_many=True)
    smooth = _hyperparameter(smooth, "smooth", 0.0)
    return _dice_kernel(*prepare(y_true, y_pred, "dice", axis), axis=axis, smooth=smooth)


@_kernel
def _tversky_kernel(y_true, y_pred, alpha, beta, axis, smooth):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    scale, scale_reduced = _overflow_scale(y_pred, axis, 1.0 + alpha + beta)
    true_positive, missed, false_alarm = _overlap_terms(y_true, y_pred, axis, scale)
    # Keras's weighting: alpha multiplies sum(y_true (1 - y_pred)) (its `fp`),
    # beta multiplies sum(y_pred (1 - y_true)) (its `fn`).
    penalty = alpha * missed + beta * false_alarm
    # 1 - (TP + s) / (TP + penalty + s) = penalty / (TP + penalty + s);
    # 0 / 0 (nothing to score, s = 0) is a perfect match: loss 0.
    return ops.safe_divide(penalty, true_positive + penalty + smooth * scale_reduced)


def tversky(y_true, y_pred, alpha=0.5, beta=0.5, axis=None, *, smooth=0.0):
    """Tversky loss: one minus the (soft) Tversky index over ``axis``.

    Formula:
        ``1 - (TP + smooth) / (TP + alpha A + beta B + smooth)`` with ``TP =
        sum(y_true y_pred)``, ``A = sum(y_true (1 - y_pred))``, ``B =
        sum(y_pred (1 - y_true))``; computed as ``(alpha A + beta B) / (TP +
        alpha A + beta B + smooth)``; ``0 / 0`` gives 0.

    Numerical stability:
        As in Keras 3.15, ``alpha`` weights ``A`` (what Keras's code calls
        ``fp``; Keras's docstring says false positives) and ``beta`` weights
        ``B``, so results match Keras. ``alpha = beta = 0.5`` is the Dice
        loss. Two empty masks (``0 / 0``, ``smooth = 0``) are a perfect match:
        loss 0 with gradient 0 (Keras: 1). On ordinary inputs the results
        equal Keras's to about ``1e-7 / denominator`` relative. The loss is
        formed from the summed penalties, not as ``1 - ratio``, so it keeps
        its accuracy when it is small. Meant for values in [0, 1]; with
        targets there, predictions up to the float range keep value and
        gradient free of NaN (sums scaled as in :func:`dice`). Half
        precision is computed in float32. NaN gives NaN.
        Error budget: 4 ULP of the float32 result for 8 summed values in [0, 1].

    Args:
        y_true: targets in [0, 1]; any real dtype.
        y_pred: predictions in [0, 1], same shape; real (integers and booleans are cast).
        alpha: non-negative weight of ``sum(y_true (1 - y_pred))``.
        beta: non-negative weight of ``sum(y_pred (1 - y_true))``.
        axis: an int or tuple of axes to reduce; ``None`` reduces every axis.
        smooth: keyword-only, non-negative; added to numerator and denominator
            of the index.

    Returns:
        The input shape without ``axis`` (a scalar for ``axis=None``), in
        ``y_pred``'s computing dtype.

    Raises:
        ValueError: if ``alpha``, ``beta`` or ``smooth`` is negative or NaN.

    Example:
        >>> tversky([[1.0, 0.0, 1.0]], [[0.8, 0.1, 0.7]], alpha=0.7, beta=0.3)  # 0.2021277
    """
    alpha = _hyperparameter(alpha, "alpha", 0.0)
    beta = _hyperparameter(beta, "beta", 0.0)
    axis = _axis_argument(axis, allow_many=True)
    smooth = _hyperparameter(smooth, "smooth", 0.0)
    return _tversky_kernel(
        *prepare(y_true, y_pred, "tversky", axis), alpha=alpha, beta=beta, axis=axis, smooth=smooth
    )


# ----------------------------------------------------------------------------
# Hinge losses
# ----------------------------------------------------------------------------


def _signed_labels(y_true):
    """Keras's rule: if every label is 0 or 1 (in the whole tensor), map to -1/1."""
    is_binary = tf.reduce_all(tf.logical_or(tf.equal(y_true, 0.0), tf.equal(y_true, 1.0)))
    return tf.where(is_binary, 2.0 * y_true - 1.0, y_true)


def _margin_violation(y_true, y_pred):
    return tf.maximum(1.0 - _signed_labels(y_true) * y_pred, 0.0)


@_kernel
def _hinge_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    return tf.reduce_mean(_margin_violation(y_true, y_pred), axis=-1)


@ragged_rows
def hinge(y_true, y_pred):
    """Hinge loss over the last axis.

    Formula:
        ``mean(max(1 - y_true * y_pred, 0), axis=-1)``; labels that are all
        0 or 1 are first mapped to -1 or 1 (as in Keras).

    Numerical stability:
        Piecewise linear; half precision is computed in float32. Gradient
        ``-y_true / n`` where the margin is violated (at the kink, as in
        Keras), 0 elsewhere. Finite while the sum of the violations over the
        last axis is below the float32 max. NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: labels in {-1, 1} or {0, 1}, ``[batch, d0, ..., dN]``.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> hinge([[0.0, 1.0]], [[0.6, 0.4]])  # [1.1]
    """
    return _hinge_kernel(*prepare(y_true, y_pred, "hinge"))


@_kernel
def _squared_hinge_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    return _mean_of_squares(_margin_violation(y_true, y_pred))


@ragged_rows
def squared_hinge(y_true, y_pred):
    """Squared hinge loss over the last axis.

    Formula:
        ``mean(max(1 - y_true * y_pred, 0)^2, axis=-1)``; labels that are all
        0 or 1 are first mapped to -1 or 1 (as in Keras).

    Numerical stability:
        Half precision is computed in float32 (Keras's float16 function form
        gives ``inf`` for a margin violation of 300). The result overflows
        only when the sum of the squared violations over the last axis
        exceeds the float32 max (violations beyond about 1.8e19, float32/
        bfloat16 only); the gradient stays finite. NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: labels in {-1, 1} or {0, 1}.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> squared_hinge([[0.0, 1.0]], [[0.6, 0.4]])  # [1.46]
    """
    return _squared_hinge_kernel(*prepare(y_true, y_pred, "hinge"))


@tf.custom_gradient
def _max_last_axis(x):
    """``reduce_max(x, -1)``; the gradient is split evenly among tied maxima.

    TF's own gradient of ``reduce_max`` is the same on rows without NaN, but on
    a row with NaN, XLA and the TF kernels disagree about where the gradient
    is NaN (NaN comparisons). Here a row with a NaN has a NaN gradient
    everywhere, stated explicitly, so every regime agrees.
    """
    largest = tf.reduce_max(x, axis=-1)

    def grad(upstream):
        is_largest = tf.cast(x >= largest[..., None], x.dtype)
        count = tf.maximum(tf.reduce_sum(is_largest, axis=-1, keepdims=True), 1.0)
        has_nan = tf.reduce_any(tf.math.is_nan(x), axis=-1, keepdims=True)
        share = tf.where(has_nan, tf.constant(math.nan, x.dtype), is_largest / count)
        return upstream[..., None] * share

    return largest, grad


@_kernel
def _categorical_hinge_kernel(y_true, y_pred):
    y_true, y_pred = _in_compute_dtype(y_true, y_pred)
    positive = tf.reduce_sum(y_true * y_pred, axis=-1)
    negative = _max_last_axis((1.0 - y_true) * y_pred)
    return tf.maximum(negative - positive + 1.0, 0.0)


def categorical_hinge(y_true, y_pred):
    """Categorical hinge loss over the last (class) axis.

    Formula:
        ``max(max((1 - y_true) y_pred) - sum(y_true y_pred) + 1, 0)``

    Numerical stability:
        Piecewise linear; half precision is computed in float32. The
        gradient goes to the true class and the largest other score, as in
        Keras. Finite while ``|y_pred|`` stays below half the range. NaN gives NaN.
        Error budget: 3 ULP of the float32 result.

    Args:
        y_true: one-hot (or {-1, 1}) labels, ``[batch, d0, ..., classes]``.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> categorical_hinge([[0.0, 1.0, 0.0]], [[0.2, 0.5, 0.4]])  # [0.9]
    """
    return _categorical_hinge_kernel(*prepare(y_true, y_pred, "hinge"))


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------

_REDUCTION_DOC = """reduction: how per-sample losses are combined, as in Keras:
            ``"sum_over_batch_size"`` (default), ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or ``None``.
        name: the loss name.
        dtype: the dtype of the result; defaults to ``keras.config.floatx()``."""


def _register(cls):
    cls.__doc__ = cls.__doc__.replace("{common}", _REDUCTION_DOC)
    return keras.saving.register_keras_serializable(package="stableops")(cls)


@_register
class MeanSquaredError(FunctionLoss):
    """Mean squared error; drop-in for ``keras.losses.MeanSquaredError``.

    See :func:`mean_squared_error` for the formula and its numerical behaviour.

    Args:
        {common}

    Example:
        >>> MeanSquaredError()([[1.0, 0.0, 1.0]], [[0.9, 0.1, 0.8]])  # 0.02
    """

    def __init__(self, reduction=_REDUCTION, name="mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, reduction=reduction, name=name, dtype=dtype)


@_register
class MeanAbsoluteError(FunctionLoss):
    """Mean absolute error; drop-in for ``keras.losses.MeanAbsoluteError``.

    See :func:`mean_absolute_error`.

    Args:
        {common}

    Example:
        >>> MeanAbsoluteError()([[1.0, 0.3, 1.0]], [[1.9, 0.3, 1.8]])  # 0.5666667
    """

    def __init__(self, reduction=_REDUCTION, name="mean_absolute_error", dtype=None):
        super().__init__(mean_absolute_error, reduction=reduction, name=name, dtype=dtype)


@_register
class MeanAbsolutePercentageError(FunctionLoss):
    """Mean absolute percentage error; drop-in for ``keras.losses.MeanAbsolutePercentageError``.

    Zero targets are left out of the mean instead of being divided by ``1e-7``
    (see :func:`mean_absolute_percentage_error`).

    Args:
        {common}

    Example:
        >>> MeanAbsolutePercentageError()([[100.0, 200.0, 300.0]], [[90.0, 210.0, 310.0]])
        ... # 6.111111
    """

    def __init__(
        self, reduction=_REDUCTION, name="mean_absolute_percentage_error", dtype=None
    ):
        super().__init__(
            mean_absolute_percentage_error, reduction=reduction, name=name, dtype=dtype
        )


@_register
class MeanSquaredLogarithmicError(FunctionLoss):
    """Mean squared logarithmic error; drop-in for ``keras.losses.MeanSquaredLogarithmicError``.

    Negative predictions keep a gradient instead of being clipped to ``1e-7``
    (see :func:`mean_squared_logarithmic_error`).

    Args:
        {common}

    Example:
        >>> MeanSquaredLogarithmicError()([[1.0]], [[-0.5]])  # 1.4236; Keras 0.4805
    """

    def __init__(
        self, reduction=_REDUCTION, name="mean_squared_logarithmic_error", dtype=None
    ):
        super().__init__(
            mean_squared_logarithmic_error, reduction=reduction, name=name, dtype=dtype
        )


@_register
class Huber(FunctionLoss):
    """Huber loss; drop-in for ``keras.losses.Huber``.

    See :func:`huber`.

    Args:
        delta: positive float, where the loss changes from quadratic to linear.
        {common}

    Raises:
        ValueError: if ``delta <= 0`` or NaN.

    Example:
        >>> Huber()([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])  # 0.155
    """

    def __init__(self, delta=1.0, reduction=_REDUCTION, name="huber_loss", dtype=None):
        delta = _hyperparameter(delta, "delta", 0.0, low_open=True)
        super().__init__(huber, reduction=reduction, name=name, dtype=dtype, delta=delta)


@_register
class LogCosh(FunctionLoss):
    """Log-cosh loss; drop-in for ``keras.losses.LogCosh``.

    Accurate for tiny errors and finite for huge ones (see :func:`log_cosh`).

    Args:
        {common}

    Example:
        >>> LogCosh()([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]])  # 0.1084
    """

    def __init__(self, reduction=_REDUCTION, name="log_cosh", dtype=None):
        super().__init__(log_cosh, reduction=reduction, name=name, dtype=dtype)


@_register
class CosineSimilarity(FunctionLoss):
    """Negative cosine similarity; drop-in for ``keras.losses.CosineSimilarity``.

    A zero vector gives loss 0 with gradient 0 (see :func:`cosine_similarity`).

    Args:
        axis: the feature axis. Defaults to -1.
        {common}

    Example:
        >>> CosineSimilarity()([[0., 1.], [1., 1.]], [[1., 0.], [1., 1.]])  # -0.5
    """

    def __init__(self, axis=-1, reduction=_REDUCTION, name="cosine_similarity", dtype=None):
        axis = _axis_argument(axis, allow_many=False)
        super().__init__(
            cosine_similarity, reduction=reduction, name=name, dtype=dtype, axis=axis
        )


@_register
class Dice(FunctionLoss):
    """Dice loss; drop-in for ``keras.losses.Dice``, with a keyword-only ``smooth``.

    Two empty masks score 0, not 1 (see :func:`dice`).

    Args:
        {common}
        axis: an int or tuple of axes to reduce; ``None`` (default) reduces
            every axis (one value for the whole batch, as in Keras).
        smooth: keyword-only, non-negative; added to the numerator and the
            denominator of the Dice coefficient. Defaults to 0.

    Raises:
        ValueError: if ``smooth`` is negative or NaN.

    Example:
        >>> Dice()([[1.0, 0.0, 1.0]], [[0.8, 0.1, 0.7]])  # 0.1666667
    """

    def __init__(self, reduction=_REDUCTION, name="dice", axis=None, dtype=None, *, smooth=0.0):
        # A list axis (as JSON gives back) is stored as a tuple: configs round trip.
        axis = _axis_argument(axis, allow_many=True)
        smooth = _hyperparameter(smooth, "smooth", 0.0)
        super().__init__(
            dice, reduction=reduction, name=name, dtype=dtype, axis=axis, smooth=smooth
        )


@_register
class Tversky(FunctionLoss):
    """Tversky loss; drop-in for ``keras.losses.Tversky``, with a keyword-only ``smooth``.

    Two empty masks score 0, not 1; ``alpha``/``beta`` weight the same terms
    as in Keras (see :func:`tversky`).

    Args:
        alpha: non-negative weight of ``sum(y_true (1 - y_pred))``. Defaults to 0.5.
        beta: non-negative weight of ``sum(y_pred (1 - y_true))``. Defaults to 0.5.
        {common}
        axis: an int or tuple of axes to reduce; ``None`` reduces every axis.
        smooth: keyword-only, non-negative; added to the numerator and the
            denominator of the Tversky index. Defaults to 0.

    Raises:
        ValueError: if ``alpha``, ``beta`` or ``smooth`` is negative or NaN.

    Example:
        >>> Tversky(alpha=0.7, beta=0.3)([[1.0, 0.0, 1.0]], [[0.8, 0.1, 0.7]])  # 0.2021277
    """

    def __init__(
        self,
        alpha=0.5,
        beta=0.5,
        reduction=_REDUCTION,
        name="tversky",
        axis=None,
        dtype=None,
        *,
        smooth=0.0,
    ):
        alpha = _hyperparameter(alpha, "alpha", 0.0)
        beta = _hyperparameter(beta, "beta", 0.0)
        axis = _axis_argument(axis, allow_many=True)  # a list is stored as a tuple
        smooth = _hyperparameter(smooth, "smooth", 0.0)
        super().__init__(
            tversky,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=alpha,
            beta=beta,
            axis=axis,
            smooth=smooth,
        )


@_register
class Hinge(FunctionLoss):
    """Hinge loss; drop-in for ``keras.losses.Hinge`` (see :func:`hinge`).

    Args:
        {common}

    Example:
        >>> Hinge()([[0.0, 1.0]], [[0.6, 0.4]])  # 1.1
    """

    def __init__(self, reduction=_REDUCTION, name="hinge", dtype=None):
        super().__init__(hinge, reduction=reduction, name=name, dtype=dtype)


@_register
class SquaredHinge(FunctionLoss):
    """Squared hinge loss; drop-in for ``keras.losses.SquaredHinge`` (see :func:`squared_hinge`).

    Args:
        {common}

    Example:
        >>> SquaredHinge()([[0.0, 1.0]], [[0.6, 0.4]])  # 1.46
    """

    def __init__(self, reduction=_REDUCTION, name="squared_hinge", dtype=None):
        super().__init__(squared_hinge, reduction=reduction, name=name, dtype=dtype)


@_register
class CategoricalHinge(FunctionLoss):
    """Categorical hinge loss; drop-in for ``keras.losses.CategoricalHinge``.

    See :func:`categorical_hinge`.

    Args:
        {common}

    Example:
        >>> CategoricalHinge()([[0.0, 1.0, 0.0]], [[0.2, 0.5, 0.4]])  # 0.9
    """

    def __init__(self, reduction=_REDUCTION, name="categorical_hinge", dtype=None):
        super().__init__(categorical_hinge, reduction=reduction, name=name, dtype=dtype)
