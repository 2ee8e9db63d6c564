"""Cosine similarity: a drop-in replacement for Keras 3.15 that stays finite.

``cosine_similarity`` of a zero vector is 0 with gradient 0 (Keras: 1e7,
``nan`` in float16), and vectors with norms near the float limits normalize
exactly (float32 rows in float64 arithmetic, float64 rows through ``ops.l2_normalize``).
"""

from __future__ import annotations

import tensorflow as tf

from stableops import ops
from stableops._internal.checks import axis_argument
from stableops._internal.dtypes import dtype_limits, float64_with_stand_ins
from stableops._internal.gradients import custom_gradient
from stableops._internal.reductions import float64_sum, sum_over
from stableops.losses._base import REDUCTION, FunctionLoss, loss_class, public_function
from stableops.losses._inputs import in_compute_dtype, loss_kernel, prepare

__all__ = ["CosineSimilarity", "cosine_similarity"]


# ----------------------------------------------------------------------------
# Cosine similarity
# ----------------------------------------------------------------------------


def _normalized_cosine(a, b, axis):
    """``sum(a/||a|| * b/||b||)`` with ``ops.l2_normalize``: exact scaling, any norm."""
    return sum_over(ops.l2_normalize(a, axis=axis) * ops.l2_normalize(b, axis=axis), axis=axis)


def _inverse_norm(x, axis):
    """``1/|x|`` along ``axis`` (kept), 0 for a zero vector; ``ops.safe_norm`` scales exactly."""
    norm = ops.safe_norm(x, axis=axis, keepdims=True)
    nonzero = norm > 0
    return tf.where(nonzero, 1.0 / tf.where(nonzero, norm, tf.ones_like(norm)), tf.zeros_like(norm))


def _plain_sums_are_safe(x, squares, axis):
    """Whether every row of ``x`` is zero or has ``sum(x^2)`` in ``[tiny / eps^2, max / 4]``.

    Then ``sum(a b) / (sqrt(sum(a^2)) sqrt(sum(b^2)))`` is as accurate as the
    normalized form: no square overflows, the squares lost to underflow
    (each below ``tiny``) are below ``eps^2`` of the sum, and the product of
    the two roots stays below the largest float. A zero sum of squares is
    only safe for a row that is exactly zero (``sum |x| = 0``): entries below
    ``1e-19`` square to 0 in float32. ``inf`` and NaN rows fail. A scalar bool.
    That last check is a pass over ``x``, made only when a sum of squares is 0
    (a ``tf.cond``). Made for every call, it was two more reductions, each of
    an expression XLA writes out in full: 1.41 -> 1.02x Keras's time at 2^20
    and 3.68 -> 2.12x at 2^22 under XLA, 1.04 -> 0.70x and 1.29 -> 0.67x in a
    plain ``tf.function`` (one core).
    """
    limits = dtype_limits(x.dtype)
    in_range = tf.logical_and(
        squares >= limits.tiny / limits.eps**2, squares <= limits.max / 4.0
    )
    zero_sum = tf.equal(squares, 0.0)

    def zero_sums_are_zero_rows():
        zero_row = tf.equal(tf.reduce_sum(tf.abs(x), axis=axis, keepdims=True), 0.0)
        return tf.reduce_all(tf.logical_or(tf.logical_not(zero_sum), zero_row))

    return tf.logical_and(
        tf.reduce_all(tf.logical_or(in_range, zero_sum)),
        tf.cond(tf.reduce_any(zero_sum), zero_sums_are_zero_rows, lambda: tf.constant(True)),
    )


def _cosine_gradients(upstream, unit_a, unit_b, inverse_a, inverse_b, cos):
    """The gradients of ``cos = sum(a b) / (|a| |b|)``: ``(b/|b| - cos a/|a|) / |a|`` for
    ``a``, likewise for ``b``, from the unit vectors (``unit_a = a/|a|``) and ``inverse_a =
    1/|a|`` (0 for a zero vector, which makes both of a zero row's gradients 0), times
    ``upstream``."""
    return (
        upstream * ((unit_b - cos * unit_a) * inverse_a),
        upstream * ((unit_a - cos * unit_b) * inverse_b),
    )


def _cosine(a, b, axis):
    """``cos(a, b)`` along ``axis`` for float64 rows: three sums of products, or the
    normalized form (float32 rows: :func:`_cosine_of_float32`).

    Where every row's sums of squares are safe (:func:`_plain_sums_are_safe`:
    all but vectors above ``9e18`` or below ``9e-13`` in norm, in float32),
    ``c = sum(a b) / (|a| |b|)`` from ``sum(a^2)``, ``sum(b^2)``, ``sum(a b)``: one
    pass (each sum in float64 through ``float64_sum``: XLA forms and sums the products in
    one loop, where it wrote each out for YNNPACK: 0.63 -> 0.37x Keras's time under XLA at
    2^20, one core), and the gradient ``(a/|a| - c b/|b|) / |b|`` (likewise for ``a``)
    from those sums; a zero vector gives 0 with gradient 0. Otherwise the
    whole batch takes ``ops.l2_normalize`` (exact power-of-two scaling, limit
    directions for infinite rows, NaN rows). The branch is chosen once per
    call, for the value and the gradient alike.
    """

    @custom_gradient
    def cosine(a, b):
        sum_a = float64_sum(a * a, axis, keepdims=True)
        sum_b = float64_sum(b * b, axis, keepdims=True)
        plain = tf.logical_and(
            _plain_sums_are_safe(a, sum_a, axis), _plain_sums_are_safe(b, sum_b, axis)
        )
        # Double where (per row): on the normalized form a graph's tf.cond gradient still
        # sends zeros back through the plain sums, and an overflowed sum made inf * 0 = NaN
        # (a gradient penalty's second order).
        sum_a, sum_b = (tf.where(plain, v, tf.ones_like(v)) for v in (sum_a, sum_b))
        norm_a, norm_b = tf.sqrt(sum_a), tf.sqrt(sum_b)
        # 1/|a| (0 for the zero vector); the root of a safe sum is a normal number.
        inverse_a = tf.where(sum_a > 0, 1.0 / norm_a, tf.zeros_like(sum_a))
        inverse_b = tf.where(sum_b > 0, 1.0 / norm_b, tf.zeros_like(sum_b))
        dot = float64_sum(a * b, axis, keepdims=True)
        dot = tf.where(plain, dot, tf.zeros_like(dot))
        norm_product = norm_a * norm_b
        nonzero = norm_product > 0
        safe_product = tf.where(nonzero, norm_product, tf.ones_like(norm_product))
        fast = tf.where(nonzero, dot / safe_product, tf.zeros_like(dot))

        def normalized():
            return tf.expand_dims(_normalized_cosine(a, b, axis), axis)

        value = tf.squeeze(tf.cond(plain, lambda: fast, normalized), axis)

        def grad(upstream):
            upstream = tf.expand_dims(upstream, axis)

            def from_sums():
                return _cosine_gradients(
                    upstream, a * inverse_a, b * inverse_b, inverse_a, inverse_b, fast
                )

            def from_normalized():
                # The same closed form from the exactly scaled unit vectors and norms (a
                # gradient tape here, in a tf.cond, failed a second-order gradient in a graph).
                unit_a, unit_b = ops.l2_normalize(a, axis=axis), ops.l2_normalize(b, axis=axis)
                cos = sum_over(unit_a * unit_b, axis=axis, keepdims=True)
                return _cosine_gradients(
                    upstream, unit_a, unit_b, _inverse_norm(a, axis), _inverse_norm(b, axis), cos
                )

            return tf.cond(plain, from_sums, from_normalized)

        return value, grad

    return cosine(a, b)


def _cosine_of_float32(a, b, axis):
    """``cos(a, b)`` along ``axis`` for float32 ``a``, ``b``, in float64 arithmetic.

    ``c = sum(a b) / (|a| |b|)`` from the float64 sums of exact products (``float64_sum``:
    formed and summed in one XLA loop), with the gradient ``(a/|a| - c b/|b|) / |b|``
    (likewise for ``a``) formed elementwise in float64: no float32 row overflows or
    underflows there, so no test of the sums and no scaled second form (a ``tf.cond``
    whose branch XLA allocates even where it is not taken: 102 MiB at 2^24). Infinite
    entries take ``float64_with_stand_ins``'s stand-in, which gives ``ops.l2_normalize``'s
    limit direction and a gradient below float32's range (0) for that row; a zero vector
    gives 0 with gradient 0; NaN gives NaN.
    """

    @custom_gradient
    def cosine(a, b):
        wide_a, wide_b = float64_with_stand_ins(a), float64_with_stand_ins(b)
        # NaN where either entry is NaN, whatever the clamp made of it: the value and,
        # through it, both gradients are NaN in that row. In the sum of a^2 alone: in the
        # sum of a b (or in both sums of squares), XLA split the heavier loop into two
        # tasks on two cores (2^14 under XLA: 0.93 -> 1.08-1.14x Keras's time).
        nan = tf.logical_or(tf.math.is_nan(a), tf.math.is_nan(b))
        squares_a = tf.where(nan, tf.constant(float("nan"), tf.float64), wide_a * wide_a)
        sum_a = float64_sum(squares_a, axis, keepdims=True)
        sum_b = float64_sum(wide_b * wide_b, axis, keepdims=True)
        dot = float64_sum(wide_a * wide_b, axis, keepdims=True)
        # 1/|a|, 0 for the zero vector (NaN stays NaN).
        inverse_a = tf.where(tf.equal(sum_a, 0), tf.zeros_like(sum_a), 1.0 / tf.sqrt(sum_a))
        inverse_b = tf.where(tf.equal(sum_b, 0), tf.zeros_like(sum_b), 1.0 / tf.sqrt(sum_b))
        cos = dot * inverse_a * inverse_b

        def grad(upstream):
            upstream = tf.cast(tf.expand_dims(upstream, axis), tf.float64)
            grad_a, grad_b = _cosine_gradients(
                upstream, wide_a * inverse_a, wide_b * inverse_b, inverse_a, inverse_b, cos
            )
            return tf.cast(grad_a, a.dtype), tf.cast(grad_b, b.dtype)

        return tf.cast(tf.squeeze(cos, axis), a.dtype), grad

    return cosine(a, b)


@loss_kernel
def _cosine_similarity_kernel(y_true, y_pred, axis):
    y_true, y_pred = in_compute_dtype(y_true, y_pred, saturate=False)
    if y_pred.dtype == tf.float32:
        return -_cosine_of_float32(y_true, y_pred, axis)
    return -_cosine(y_true, y_pred, axis)


@public_function
def cosine_similarity(y_true, y_pred, axis=-1):
    """Negative cosine similarity along ``axis`` (-1: same direction, 1: opposite).

    Formula:
        ``-sum(y_true / ||y_true|| * y_pred / ||y_pred||, axis)``

    Numerical stability:
        A zero vector counts as normalized to zero, so its loss is 0 with
        gradient 0 (Keras clamps the inverse norm at ``1e7``: gradient
        ``1e7 * y_true_unit``, and ``nan``/``-inf`` in float16). Float32 rows
        (half precision is computed in float32) are summed and normalized in
        float64, where no float32 row's squares overflow or underflow; float64
        rows take ``ops.l2_normalize``'s exact power-of-two scaling where their
        squares would. So vectors with norms near the limits (``1e-30`` or
        ``1e30`` in float32) normalize exactly, where Keras's ``rsqrt(sum(x^2))``
        under- or overflows. A row holding ``±inf`` takes its limit direction,
        as in ``ops.l2_normalize``. NaN gives NaN.
        Error budget: 4 ULP of the float32 result, plus, near orthogonality,
        an absolute error of ``n 2^-53`` for float32 rows of ``n`` entries
        (their float64 sums of exact products) and 1 ULP of 1 for float64 rows.

    Args:
        y_true: targets; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).
        axis: the feature axis (an int). Defaults to -1.

    Returns:
        The input shape without ``axis``, in ``y_pred``'s computing dtype,
        values in ``[-1, 1]``.

    Example:
        >>> y_true = [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
        >>> cosine_similarity(y_true, [[1.0, 0.0], [1.0, 1.0], [-1.0, -1.0]]).numpy()
        array([-0., -1.,  1.], dtype=float32)
    """
    axis = axis_argument(axis)
    return _cosine_similarity_kernel(*prepare(y_true, y_pred, "cosine_similarity", axis), axis=axis)


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------


@loss_class
class CosineSimilarity(FunctionLoss):
    """Negative cosine similarity; drop-in for ``keras.losses.CosineSimilarity``.

    A zero vector gives loss 0 with gradient 0 (see :func:`cosine_similarity`).

    Args:
        axis: the feature axis. Defaults to -1.
        {common}

    Example:
        >>> float(CosineSimilarity()([[0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]))
        -0.5
    """

    def __init__(self, axis=-1, reduction=REDUCTION, name="cosine_similarity", dtype=None):
        axis = axis_argument(axis)
        super().__init__(cosine_similarity, reduction, name, dtype, axis=axis)
