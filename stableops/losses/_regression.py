"""Regression losses: drop-in replacements for Keras 3.15 that stay finite.

Mean squared, absolute, absolute percentage and squared logarithmic error,
Huber and log-cosh, each as a function form (one value per sample, averaged
over the last axis) and a ``keras.losses.Loss`` class with Keras's name,
constructor signature and defaults. On ordinary inputs the results are
Keras's; where Keras returns ``inf``/``nan``, a silently clipped value, an
exploding or a zero gradient, these stay finite and accurate:

* everything computes half precision in float32 and returns float32 (Keras's
  function forms compute float16 in float16: ``mean_squared_error`` of an error
  of 300 is ``inf``);
* ``mean_squared_logarithmic_error`` extends ``log1p`` below 0 by its tangent
  line instead of clipping predictions at ``1e-7`` (Keras: negative predictions
  get a zero gradient), and is accurate when ``y_pred`` is close to ``y_true``;
* ``mean_absolute_percentage_error`` leaves zero targets out of the mean
  (Keras divides by ``1e-7``: a 1e9-scale loss);
* ``log_cosh`` and ``huber`` are accurate for tiny and finite for huge errors.

Per-sample means over the last axis are Keras's (sum, then divide); the
squared, absolute, Huber and log-cosh errors are summed in float64
(``float64_mean``: one XLA loop, no buffer, faster than the float32 sum), so their
mean overflows only where it or an error itself (formed in the input's precision)
exceeds the float32 max, not where the sum of its terms does
(Keras: ``inf`` for four errors of 1.5e19 in MSE). The percentage error's
quotients are summed in float64 too, for accuracy (and faster under XLA), and so
are MSLE's squared log errors, formed in float64 for its budget with a written-out
gradient. (A float64 sum of transcendental terms that the gradient needs too makes
XLA compute them twice; log-cosh's gradient is ``tanh`` of the error, not its terms.)

Every function validates its arguments (``losses._inputs.prepare``), then runs
an XLA-compiled kernel (``losses._inputs.loss_kernel``). All but the percentage
error take two ``tf.RaggedTensor`` as Keras's do.
"""

from __future__ import annotations

import tensorflow as tf

from stableops import ops
from stableops._internal.checks import number
from stableops._internal.clip import clip
from stableops._internal.compensated import two_difference, two_product
from stableops._internal.dtypes import dtype_limits, in_dtype
from stableops._internal.gradients import custom_gradient
from stableops._internal.reductions import float64_mean, float64_sum, sum_over
from stableops.losses._base import REDUCTION, FunctionLoss, loss_class, plain_loss, public_function
from stableops.losses._inputs import (
    in_compute_dtype,
    loss_function,
    loss_kernel,
    prepare,
    ragged_rows,
)
from stableops.losses._shared import mean_of_squares

__all__ = [
    "Huber",
    "LogCosh",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredError",
    "MeanSquaredLogarithmicError",
    "huber",
    "log_cosh",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "mean_squared_logarithmic_error",
]


# ----------------------------------------------------------------------------
# Mean squared / absolute error
# ----------------------------------------------------------------------------


@public_function
@loss_function(ragged=True, terms_per_element=True)
def mean_squared_error(y_true, y_pred):
    """Mean squared error over the last axis.

    Formula:
        ``mean((y_true - y_pred)^2, axis=-1)``

    Numerical stability:
        Half precision is computed in float32 (Keras's function form squares
        in float16: an error of 300 gives ``inf``). The squares are summed in
        float64, so the result overflows to ``inf`` only where the mean of the
        squared errors exceeds the float32 max (a squared error beyond it, an
        error beyond about 1.8e19, possible only for float32/bfloat16 inputs;
        Keras: where their sum does); the gradient ``2 (y_pred - y_true) / n``
        stays finite while it is representable, in every regime (the square
        is ``e * e``: ``tf.square``'s gradient formed ``2 e`` first, ``inf``
        under XLA for ``|e| > max / 2``). NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    {inputs}

    Example:
        >>> mean_squared_error([[1.0, 0.0, 1.0]], [[0.9, 0.1, 0.8]]).numpy()
        array([0.02], dtype=float32)
    """
    return mean_of_squares(y_true - y_pred)


@public_function
@loss_function(ragged=True, terms_per_element=True)
def mean_absolute_error(y_true, y_pred):
    """Mean absolute error over the last axis.

    Formula:
        ``mean(|y_true - y_pred|, axis=-1)``

    Numerical stability:
        Half precision is computed in float32. Finite while each absolute
        error and their mean are below the float32 max (summed in float64; an
        error is formed in the input's precision: ``3e38 - (-3e38)`` is
        ``inf`` in float32); the
        gradient is ``sign(y_pred - y_true) / n`` (0 at a zero error, as in
        Keras). NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    {inputs}

    Example:
        >>> mean_absolute_error([[1.0, 0.3, 1.0]], [[1.9, 0.3, 1.8]]).numpy()
        array([0.566667], dtype=float32)
    """
    return float64_mean(tf.abs(y_true - y_pred))


# ----------------------------------------------------------------------------
# Mean absolute percentage error
# ----------------------------------------------------------------------------


@public_function
@loss_function()
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
        2e11). In float32/bfloat16 the result overflows only where an error
        ``|y_true - y_pred|`` (``2e38 - (-2e38)``), a relative error or the
        percentage exceeds the float32 max (``|y_pred| / |y_true|`` beyond
        about 3e36; the sum is taken in float64).
        NaN in ``y_true`` or ``y_pred`` (at a nonzero target) gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8): the
        terms, rounded twice each in float32, are summed and averaged in
        float64 and rounded once (2.2 ULP measured against mpmath at worst in
        3e5 random rows; 4.1 with the float32 sum).

    {inputs}

    Example:
        >>> y_true, y_pred = [[100.0, 200.0, 300.0]], [[90.0, 210.0, 310.0]]
        >>> mean_absolute_percentage_error(y_true, y_pred).numpy()
        array([6.11111], dtype=float32)
        >>> mean_absolute_percentage_error([[0.0, 1.0]], [[0.5, 1.5]]).numpy()  # Keras: 2.5e8
        array([50.], dtype=float32)
    """
    defined = tf.cast(tf.not_equal(y_true, 0.0), y_true.dtype)
    # The float32 terms (two roundings each) are summed, averaged and scaled in
    # float64 and rounded once: a float32 sum, mean and percentage added up to
    # three more roundings (3.5-4.1 ULP at worst, 2.2 now; see the docstring).
    # Under XLA the float64 sum (one loop, no buffer) is also faster: 1.28 ->
    # 1.18x Keras's time, 0.83 -> 0.78x in a plain tf.function (one core, 2^20).
    total = float64_sum(_relative_errors(y_true, y_pred), axis=-1, rounded=False)
    count = tf.cast(sum_over(defined, axis=-1), tf.float64)
    # A sample whose targets are all zero has nothing to measure: 0 / 0 -> 0.
    return tf.cast(100.0 * ops.safe_divide(total, count), y_true.dtype)


@custom_gradient
def _relative_errors(y_true, y_pred):
    """``|y_true - y_pred| / |y_true|``; 0 with a zero gradient at a zero target (unless NaN).

    A percentage of a zero target is undefined: its term is 0 (NaN for a NaN
    prediction), and the caller leaves it out of the count. Gradient (custom,
    from the signed quotient ``q = (t - p) / |t|``): ``-sign(q) / |t|`` for
    the prediction (0 at ``p == t``) and ``sign(q) p / (t |t|)`` for the
    target; autodiff through ``ops.safe_divide`` took 1.3-1.5x this kernel's
    time (2^20 elements, two cores). Each quotient has one user (the NaN test
    reads the prediction, not the quotient): XLA keeps a divide with two users
    out of the fused loops, a pass of its own (1.75 -> 1.2x Keras's time under
    XLA, one core, 2^20).
    """
    zero = tf.equal(y_true, 0.0)
    magnitude = tf.where(zero, tf.ones_like(y_true), tf.abs(y_true))
    difference = y_true - y_pred
    # A NaN prediction at a zero target is NaN (|difference| / 1 there).
    undefined = tf.logical_and(zero, tf.equal(y_pred, y_pred))
    value = tf.where(undefined, tf.zeros_like(difference), tf.abs(difference) / magnitude)

    def grad(upstream):
        # 0 * difference: 0 at a zero target, NaN for a NaN prediction there.
        slope = tf.where(zero, 0.0 * difference, tf.sign(difference) / magnitude)
        target_slope = slope * (y_pred / magnitude) * tf.sign(y_true)  # 0 at a zero target
        return upstream * target_slope, -upstream * slope

    return value, grad


# ----------------------------------------------------------------------------
# Mean squared logarithmic error
# ----------------------------------------------------------------------------


def _log_error(y_true, clamped):
    """``f(clamped) - f(y_true)`` in float64 for ``clamped, y_true >= 0``, ``f = log1p``.

    ``±log1p(q)``, ``q = |a - y_true| / (1 + min(a, y_true))`` (exact identity): no
    cancellation when ``a ≈ y_true``, no overflow since ``|a - y_true| <= max(a,
    y_true)``. The float32 quotient rounds three times and XLA's float32 ``log1p`` is
    2.4 ULP off on ``[0.1, 1)``; squared, that was 10.1 ULP. Here ``log1p(q) = (w log(w) +
    r) / w`` with ``w = fl(1 + q)`` and ``r = (1 + q) - w`` its rounding (XLA's ``log``:
    1.2 ULP), and ``q`` (formed as ``|a - y_true|`` times the reciprocal of ``1 + min``) is
    corrected in float64, where ``a - y_true``, ``1 + min`` and the product ``q (1 + min)``
    are exact, so the residual ``|a - y_true| - q (1 + min)`` is too: ``log``'s error alone
    is left (3.5 ULP of the squared error measured).

    Speed: the float64 division is the last operation, so XLA writes the log error out once
    (8 bytes an element) and fuses every step before it into that loop. With the division
    split, ``log(w) + r / w``, the last operation was cheap: XLA repeated it in the loops of
    the sum and of the gradient and wrote out each costly operation before it (the quotient,
    ``log(w)``, two reciprocals: four float32 buffers). One core, 2^20, value and gradient,
    against Keras under XLA: 1.80 -> 1.26-1.41x.
    """
    wide = tf.float64
    low = tf.minimum(clamped, y_true)
    # 1 / (1 + low) is below the smallest normal past 1 / tiny (2^126 in float32) and
    # flushed: taken of (1 + low) / 4 there (exact) and scaled back after the product,
    # which is then at most 16.
    past_range = low > 0.5 / dtype_limits(low.dtype).tiny
    scale = tf.where(past_range, tf.constant(0.25, low.dtype), tf.constant(1.0, low.dtype))
    scaled_inverse = tf.math.reciprocal((1.0 + low) * scale)
    quotient = tf.abs(clamped - y_true) * scaled_inverse * scale
    whole = quotient - (-1.0)  # 1 + q; as a sum, a graph's optimizer made log(whole) log1p(q)
    rounded = tf.cast(quotient, wide)
    residual = tf.abs(tf.cast(clamped, wide) - tf.cast(y_true, wide)) - rounded * (
        1.0 + tf.cast(low, wide)
    )
    inverse = tf.cast(scaled_inverse, wide) * tf.cast(scale, wide)  # 1 / (1 + low)
    exact = rounded + residual * inverse  # q, to 2^-46
    wide_whole = tf.cast(whole, wide)
    rounding = (1.0 - wide_whole) + exact  # (1 + q) - w
    gap = (tf.cast(tf.math.log(whole), wide) * wide_whole + rounding) / wide_whole
    return tf.where(clamped >= y_true, gap, -gap)


def _log_error_float64(y_true, clamped):
    """``_log_error`` for float64 inputs, where no wider type holds the corrections.

    ``q = d / s`` with ``d = |a - y_true|`` and ``s = 1 + min(a, y_true)`` carried as exact
    pairs (TwoSum); the quotient's rounding is ``q_low = ((d - q s) + d_low - q s_low) / s``,
    ``q s`` exact by Dekker's product. Then ``log1p(q) = log(w) + (w_low + q_low) / w`` with
    ``w + w_low = 1 + q`` (TwoSum): ``log``'s rounding alone is left (3.1 ULP of the squared
    error at worst in 1e5 random rows, quotients from 6e-6 to 7.4; 5.3 with the float32 path's
    corrections, not exact in float64). The float32 path's ``w log(w)`` overflows past
    ``max / 710`` (a loss of ``inf`` for a prediction of 4.5e307). Past 2^900
    ``d`` and ``s`` are scaled by 2^-200 (exact; the quotient is the same) so that Dekker's
    splits stay in range; a quotient past 2^900 keeps no correction (``log(q)`` has no use
    for it). NaN stays NaN, an infinite prediction gives ``inf``.
    """
    larger = clamped >= y_true
    high = tf.where(larger, clamped, y_true)
    low = tf.where(larger, y_true, clamped)
    one = tf.ones_like(low)
    difference, difference_low = two_difference(high, low)
    whole_low, whole_low_low = two_difference(one, -low)  # 1 + low
    scale = tf.where(whole_low > 2.0**900, 2.0**-200 * one, one)
    difference, difference_low = difference * scale, difference_low * scale
    whole_low, whole_low_low = whole_low * scale, whole_low_low * scale
    quotient = difference / whole_low
    product, product_low = two_product(quotient, whole_low)
    remainder = ((difference - product) - product_low) + difference_low
    quotient_low = (remainder - quotient * whole_low_low) / whole_low
    quotient_low = tf.where(quotient < 2.0**900, quotient_low, tf.zeros_like(quotient_low))
    # 1 + q; with a negation (-q), a graph's optimizer made 1 - (-q) a sum, log(whole) log1p(q)
    whole, whole_rounding = two_difference(one, quotient * -1.0)
    gap = tf.math.log(whole) + (whole_rounding + quotient_low) / whole
    return tf.where(larger, gap, -gap)


@custom_gradient
def _squared_log_error_rows(y_true, y_pred):
    """``mean((f(y_pred) - f(y_true))^2, axis=-1)``, ``f`` = log1p extended by its tangent
    below 0, for ``y_true >= 0``.

    With ``a = max(y_pred, 0)`` the log error is ``(f(a) - f(y_true)) + min(y_pred, 0)``
    (``f(y_pred) - f(a)`` is ``y_pred`` below 0, else 0): below 0 the sum adds terms of one
    sign, or is ``y_pred - 0``, so nothing cancels. The errors are squared and averaged in
    float64 (``float64_mean``: the squares in the sum's loop, from the log errors XLA wrote
    out once) and rounded once. The clamp is a select, so NaN stays NaN. Gradient (custom):
    ``2 e / n`` times ``f'(y_pred) = 1 / (1 + a)`` (1 below 0) and ``-1 / (1 + y_true)``;
    autodiff through the float64 corrections would cost more than they do.
    """
    clamped = tf.where(y_pred < 0.0, tf.zeros_like(y_pred), y_pred)
    tangent = tf.where(y_pred < 0.0, y_pred, tf.zeros_like(y_pred))
    log_error = _log_error_float64 if y_pred.dtype == tf.float64 else _log_error
    error = log_error(y_true, clamped) + tf.cast(tangent, tf.float64)
    count = tf.cast(tf.shape(y_pred)[-1], y_pred.dtype)
    mean = float64_mean(error * error)
    slope = (2.0 / count) * tf.cast(error, y_pred.dtype)

    def grad(upstream):
        scaled = upstream[..., None] * slope
        return -scaled / (1.0 + y_true), scaled / (1.0 + clamped)

    return tf.cast(mean, y_pred.dtype), grad


@public_function
@loss_function(ragged=True, terms_per_element=True)
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
        in float32; the squared log errors are summed in float64, so the
        result overflows only when their mean exceeds the float32 max
        (negative inputs beyond about -1.8e19, float32/bfloat16 only). NaN
        gives NaN.
        Error budget: 4 ULP of the float32 result (last axis of up to 8).
        The square doubles the log difference's relative error; the
        quotient's roundings are corrected in float64 and ``log1p(q)`` is
        ``log(w)`` plus the rounding of ``w = 1 + q`` over ``w`` (see
        ``_log_error``), so XLA's float32 ``log`` (1.2 ULP) is what is left.
        Measured against mpmath: 3.5 ULP for one entry per row (6e5 random rows,
        quotients in ``[0.05, 1.5]``; 10.1 with XLA's ``log1p`` of the
        float32 quotient), at 1.26-1.41x Keras's time under XLA (one core,
        2^20; 1.27 with XLA's ``log1p``; see the benchmark's Trades).
        float64 inputs are computed in float64, the quotient's roundings
        corrected by error-free transformations (``_log_error_float64``):
        4 ULP of the float64 result, 3.1 measured. An infinite input gives
        ``inf`` in float64 and NaN in float32 and half precision (their
        corrections meet ``inf - inf``; a select for the limit cost 9-16% in
        a plain ``tf.function``).

    {inputs}

    Example:
        >>> mean_squared_logarithmic_error([[1.0]], [[-0.5]]).numpy()  # Keras: 0.4805
        array([1.4236], dtype=float32)
    """
    # Targets follow Keras: clipped at 0 (gradient 0 below; NaN stays NaN).
    y_true = tf.where(y_true < 0.0, tf.zeros_like(y_true), y_true)
    return _squared_log_error_rows(y_true, y_pred)


# ----------------------------------------------------------------------------
# Huber and log-cosh
# ----------------------------------------------------------------------------


@loss_kernel(terms_per_element=True)
def _huber_kernel(y_true, y_pred, delta):
    y_true, y_pred = in_compute_dtype(y_true, y_pred, saturate=False)
    delta = in_dtype(delta, y_pred.dtype)
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
    return float64_mean(per_element)


@public_function
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
        float32/bfloat16 the result is finite while each error and the mean
        of the per-element losses are (summed in float64; an error is formed
        in the input's precision). NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8),
        plus the smallest normal per element: a quadratic term below it
        (``0.5 e^2 / delta`` for a tiny ``delta``) is flushed to 0.

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
        >>> huber([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]]).numpy()
        array([0.18      , 0.13], dtype=float32)
    """
    delta = number(delta, "delta", 0.0, low_open=True, allow_inf=True)
    return _huber_kernel(*prepare(y_true, y_pred, "huber"), delta=delta)


@public_function
@loss_function(ragged=True, terms_per_element=True)
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
        is not doubled near 0. The non-negative terms are summed in float64
        (``float64_mean``), so the mean is finite while it is below the float32
        max (two errors of 2e38: 2e38, where a float32 sum gave ``inf``), and
        rounded once. Gradient ``tanh(e) / n``. Half precision is computed in
        float32. NaN gives NaN. Error budget: 4 ULP of the float32 result, any
        row length (each term within 3, the sum and the mean rounded once; 2.6
        measured on 80000 random rows of 5, where the float32 sum gave 3.4).

    {inputs}

    Example:
        >>> log_cosh([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]).numpy()
        array([0.21689, 0.        ], dtype=float32)
    """
    error, error_low = two_difference(y_pred, y_true)
    return float64_mean(_log_cosh_of_pair(error, error_low))


@custom_gradient
def _log_cosh_of_pair(error, error_low):
    """``log cosh(d + d_low)`` for the TwoSum pair of ``y_pred - y_true``, to first order.

    Near 0, ``log cosh d ~ d^2/2`` would double the relative rounding error of
    ``y_pred - y_true``; ``log cosh d + tanh(d) d_low`` keeps it. The correction is
    at most half an ULP of the result, so its factor needs few digits: ``clip(d, -1, 1)``
    is within 0.24 of ``tanh d`` (worst at ``|d| = 1``: 0.48 ULP of ``log cosh 1``), and
    ``tanh`` stays in the gradient alone, where XLA fuses it; a ``tanh`` shared by the
    value and the gradient was written out as a full-size pass. Under XLA at 2^22, one
    core: 2.67 -> 1.99x Keras's time, and 0.96x with ``ops.log_cosh``'s ``exp`` fused too.
    Gradient (custom): ``tanh(d)`` for ``d``, none through the pair's rounding error.
    """

    def grad(upstream):
        return upstream * tf.tanh(error), tf.zeros_like(error_low)

    return ops.log_cosh(error) + clip(error, -1.0, 1.0) * error_low, grad


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------


@loss_class
class MeanSquaredError(plain_loss(mean_squared_error, "mean_squared_error")):
    """Mean squared error; drop-in for ``keras.losses.MeanSquaredError``.

    See :func:`mean_squared_error` for the formula and its numerical behaviour.

    Args:
        {common}

    Example:
        >>> float(MeanSquaredError()([[1.0, 0.0, 1.0]], [[0.9, 0.1, 0.8]]))
        0.02
    """


@loss_class
class MeanAbsoluteError(plain_loss(mean_absolute_error, "mean_absolute_error")):
    """Mean absolute error; drop-in for ``keras.losses.MeanAbsoluteError``.

    See :func:`mean_absolute_error`.

    Args:
        {common}

    Example:
        >>> float(MeanAbsoluteError()([[1.0, 0.3, 1.0]], [[1.9, 0.3, 1.8]]))
        0.566667
    """


@loss_class
class MeanAbsolutePercentageError(
    plain_loss(mean_absolute_percentage_error, "mean_absolute_percentage_error")
):
    """Mean absolute percentage error; drop-in for ``keras.losses.MeanAbsolutePercentageError``.

    Zero targets are left out of the mean instead of being divided by ``1e-7``
    (see :func:`mean_absolute_percentage_error`).

    Args:
        {common}

    Example:
        >>> y_true, y_pred = [[100.0, 200.0, 300.0]], [[90.0, 210.0, 310.0]]
        >>> float(MeanAbsolutePercentageError()(y_true, y_pred))
        6.11111
    """


@loss_class
class MeanSquaredLogarithmicError(
    plain_loss(mean_squared_logarithmic_error, "mean_squared_logarithmic_error")
):
    """Mean squared logarithmic error; drop-in for ``keras.losses.MeanSquaredLogarithmicError``.

    Negative predictions keep a gradient instead of being clipped to ``1e-7``
    (see :func:`mean_squared_logarithmic_error`).

    Args:
        {common}

    Example:
        >>> float(MeanSquaredLogarithmicError()([[1.0]], [[-0.5]]))  # Keras: 0.4805
        1.4236
    """


@loss_class
class Huber(FunctionLoss):
    """Huber loss; drop-in for ``keras.losses.Huber``.

    See :func:`huber`.

    Args:
        delta: positive float, where the loss changes from quadratic to linear.
        {common}

    Raises:
        ValueError: if ``delta <= 0`` or NaN.

    Example:
        >>> float(Huber()([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]]))
        0.155
    """

    def __init__(self, delta=1.0, reduction=REDUCTION, name="huber_loss", dtype=None):
        delta = number(delta, "delta", 0.0, low_open=True, allow_inf=True)
        super().__init__(huber, reduction, name, dtype, delta=delta)


@loss_class
class LogCosh(plain_loss(log_cosh, "log_cosh")):
    """Log-cosh loss; drop-in for ``keras.losses.LogCosh``.

    Accurate for tiny errors and finite for huge ones (see :func:`log_cosh`).

    Args:
        {common}

    Example:
        >>> float(LogCosh()([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]))
        0.108445
    """
