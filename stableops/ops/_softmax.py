"""The max-shifted row reductions: ``logsumexp``, ``softmax``, ``log_softmax``.

Each checks ``axis`` and ``where`` in Python and then calls its ``@xla_kernel``.
The row maximum is subtracted before ``exp`` (no overflow), the rounding of
``x - max`` is carried as a second term (``two_difference``), and the sum's
``1 + s`` is kept apart so that ``log(1 + s)`` is ``accurate_log1p(s)``.
Budgets are enforced by tests/test_ops_logexp.py.
"""

from __future__ import annotations

import math
import typing

import tensorflow as tf

from stableops._internal.checks import axis_argument, float_tensor_with_axis
from stableops._internal.dtypes import to_compute
from stableops._internal.gradients import custom_gradient
from stableops._internal.kernel import xla_kernel
from stableops._internal.reductions import (
    empty_rows,
    float64_sum,
    log1p_once,
    log_softmax_gradient,
    max_shift,
    softmax_gradient,
    split_sum_of_fractions,
    with_log_softmax_slope,
    with_shift_slope,
    with_softmax_slope,
    written_once,
)

# ----------------------------------------------------------------------------
# Argument checks (static, outside the compiled kernels)
# ----------------------------------------------------------------------------


def _normalize_axis(axis):
    """``axis`` as ``None``, an int or a tuple of ints (static, hashable: one compile each)."""
    return axis_argument(axis, allow_many=True, allow_none=True)


def _as_mask(where):
    """The ``where`` mask as a boolean tensor (``None`` stays ``None``)."""
    if where is None:
        return None
    where = tf.convert_to_tensor(where)
    if where.dtype != tf.bool:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype.name}")
    return where


def _mask_to(x, where):
    """``where`` broadcast to ``x``'s shape; ``ValueError`` naming both shapes where it would
    widen ``x`` (a ``[2, 2]`` mask of a ``[2]`` row broadcast the value, and the gradient
    summed the copies: a wrong number, or one of the mask's shape). Dimensions unknown
    until run time are checked by the broadcast."""
    x_dims, mask_dims = x.shape, where.shape
    if x_dims.rank is not None and mask_dims.rank is not None:
        pairs = zip(reversed(mask_dims.as_list()), reversed(x_dims.as_list()))
        if mask_dims.rank > x_dims.rank or any(
            m not in (None, 1) and d is not None and m != d for m, d in pairs
        ):
            raise ValueError(
                f"`where` must broadcast to the shape of `x`, got shapes {mask_dims} and {x_dims}"
            )
    return tf.broadcast_to(where, tf.shape(x))


def _mask_out(x, where):
    # Masked entries become -inf: they contribute exp(-inf) = 0 to every sum,
    # and tf.where gives them a zero gradient.
    if where is None:
        return x
    return tf.where(_mask_to(x, where), x, tf.constant(-math.inf, x.dtype))


# ----------------------------------------------------------------------------
# logsumexp, softmax, log_softmax
# ----------------------------------------------------------------------------


class _Shifted(typing.NamedTuple):
    """Max-shifted pieces of a row (all with ``keepdims=True`` reductions)."""

    x: tf.Tensor  # the input
    m: tf.Tensor  # the row maximum
    z: tf.Tensor  # x - m rounded; exactly 0 at the maxima
    z_low: tf.Tensor  # the rounding error: z + z_low == x - m exactly
    p: tf.Tensor  # exp(x - m) from (z, z_low); exactly 1 at the maxima
    total: tf.Tensor  # sum(p) >= 1 (the softmax denominator)
    s: tf.Tensor  # sum(p) - 1 without the cancellation
    s_wide: tf.Tensor  # s in float64, before its rounding
    empty: tf.Tensor  # rows whose maximum is -inf (all -inf or fully masked)
    axis: typing.Any  # the reduced axis (an int, a tuple of ints or None)


def _shifted_exponentials(x, axis, read_again=False):
    """The pieces the log-domain reductions need (see :class:`_Shifted`).

    ``p = exp(z) * (1 + z_low)`` from ``_internal.reductions.max_shift`` (``z_low <= ulp(z)/2``:
    first order is exact enough), and ``s = sum(p) - 1``, which skips the maxima
    and adds ``(number of maxima - 1)``, so ``log1p(s)`` stays accurate when one
    logit dominates (``logsumexp([0, -30]) = 9.4e-14``, not 0).
    NaN anywhere in a row makes ``total`` (and ``s``) NaN for that row.
    ``read_again``: the caller's gradient reads ``p`` too (``logsumexp``, sparse and
    categorical cross-entropy from logits), so the terms are written once (``written_once``), the
    maxima as -1: the two sums and the gradient read that array alone (``p`` is its
    absolute value), and only it and the maximum read ``x``. Formed again, with their
    TwoSum, in the gradient's loop, and the maxima found again from ``x`` in the count's
    and the gradient's, they took longer (under XLA, one core, 2^20, against Keras:
    sparse 0.98-1.03 -> 0.80-0.82x, ``logsumexp`` 1.45-1.56 -> 1.33-1.41x; at 2^22 and 2^24,
    where the memory traffic dominates, ``logsumexp`` measured 1.63-1.64 -> 1.59-1.77x and
    1.64 -> 1.70-1.73x). Where only the sums read the terms, writing them was slower
    (``log_softmax`` 1.32 -> 1.41x).
    The count of maxima is a pass of its own (0.2-0.3 ms of ``logsumexp``'s 1.9, 0.5 of
    ``log_softmax``'s 3.1, one core, 2^20), but it cannot join the sum of the terms below the
    maximum: in one float64 sum the maxima's 1s round away the low bits of a small ``s``.
    Tried and slower (under XLA, one core, 2^20, against Keras, AMD EPYC): both sums as one
    over ``tf.stack([below, maxima])``, which XLA wrote out (``logsumexp`` 1.38 -> 2.48x),
    and the count as an int32 or float32 sum (1.53 -> 1.80x).
    """
    m, is_max, z, z_low = max_shift(x, axis)
    p = tf.exp(z) * (1.0 + z_low)
    # The terms below the maximum are summed as they are, and p is formed
    # back from them (the maxima's terms are exactly 1): the same values,
    # one full-size buffer where p and p without the maxima were two (1.9-2.0
    # -> 1.5-1.6x Keras's logsumexp under XLA, one core, 2^20). Both sums in
    # float64 (``float64_sum``): over the last axis XLA forms and sums them in
    # one loop, where the terms and the count's indicator were each written
    # out for YNNPACK (time and peak memory; see there).
    if read_again:
        terms = written_once(tf.where(is_max, -tf.ones_like(x), p), m)
        marked = terms < 0.0  # is_max read back; NaN is no maximum: its row sums are NaN
        maxima = tf.cast(marked, x.dtype)
        below = tf.where(marked, tf.zeros_like(x), terms)
    else:
        maxima = tf.cast(is_max, x.dtype)
        below = tf.where(is_max, tf.zeros_like(x), p)
    # The maxima's terms are counted as constants (1s); their slope is exp(x - m)'s
    # (with_shift_slope), so that s and p keep their dependence on tied maxima in a
    # second-order gradient (log1p(s) - z is -log softmax: categorical cross-entropy's
    # gradient with respect to its targets). An identity: the same XLA computation.
    maxima = with_shift_slope(maxima, x, m, axis, exponential=True)
    s_wide = float64_sum(below, axis, keepdims=True, rounded=False) + (
        float64_sum(maxima, axis, keepdims=True, rounded=False) - 1.0
    )
    s = tf.cast(s_wide, x.dtype)
    total = 1.0 + s
    return _Shifted(
        x, m, z, z_low, below + maxima, total, s, s_wide, empty_rows(m, total), axis
    )


def _reciprocal_total(pieces):
    # p <= 1 and sum(p) >= 1 for a non-empty row: no overflow, no 0/0.
    # Empty rows give zeros: their p is 1 (every entry is a maximum) and their
    # denominator +inf (a select per row, not per entry). One division
    # per row and a multiplication per entry, as TF's Softmax kernel: half an
    # ULP more than dividing each entry, and a division per entry measured
    # 0.1x of Keras's time more in a plain tf.function at 2^20 (8192 x 128,
    # one core).
    denominator = tf.where(pieces.empty, tf.constant(math.inf, pieces.total.dtype), pieces.total)
    return 1.0 / denominator


def _softmax_from_pieces(pieces):
    """``softmax(x)`` from the pieces, for a gradient function (its slope: see
    ``_internal.reductions.with_softmax_slope``)."""
    return with_softmax_slope(pieces.x, pieces.p * _reciprocal_total(pieces), pieces.axis)


def _softmax_value(x, axis):
    """``p / sum(p)`` with ``p = exp(x - m) = exp(z) (1 + z_low)``.

    float32: ``p`` is rounded to float32 once (``written_once``: formed in one loop
    that the sum, the output and the gradient read), then summed (``float64_sum``: one
    loop) and normalized in float64, so the result carries ``exp``'s error and two
    roundings (2.4 ULP against mpmath at worst in 28,000 rows of 64, random and built to
    round ``x - m``; 2.1 with ``p`` in float64, formed again in each loop: 1.63 -> 1.10x
    Keras's time under XLA, one core, 2^20; a float32 row sum had 11.8 on rows of 64).
    float64: with the sum as ``total + total_low`` (:func:`split_sum_of_fractions`,
    then Fast2Sum), ``exp(z) / total`` is corrected by ``1 + z_low - total_low / total``
    to first order (the rest is below 2^-100): one division and one addition after
    ``exp``, where forming ``p``, the total, its reciprocal and the product rounded four
    times (7.4 ULP on rows of 64).
    Empty rows (maximum ``-inf``) get the denominator ``+inf`` (a select per row):
    zeros.
    """
    m, _, z, z_low = max_shift(x, axis)
    exponential = tf.exp(z)
    if x.dtype == tf.float64:
        high, low = split_sum_of_fractions(exponential * (1.0 + z_low), axis)
        total = high + low
        total_low = (high - total) + low  # total + total_low == high + low (Fast2Sum)
        total = tf.where(empty_rows(m, total), tf.constant(math.inf, x.dtype), total)
        quotient = exponential / total
        return quotient + quotient * (z_low - total_low / total)
    # exp(z) z_low is far below exp(z)'s ULP: the sum rounds once. Written once (one
    # exp and one TwoSum per entry, read by the sum, the output and, under XLA, the
    # gradient).
    p = tf.cast(written_once(exponential + exponential * z_low, m), tf.float64)
    total = float64_sum(p, axis, keepdims=True, rounded=False)
    total = tf.where(empty_rows(m, total), tf.constant(math.inf, tf.float64), total)
    return tf.cast(p * (1.0 / total), x.dtype)


def _logsumexp_core(x, axis, keepdims):
    @custom_gradient
    def core(x):
        pieces = _shifted_exponentials(x, axis, read_again=True)
        # m + log1p(s) in float64 (per row), rounded once: in float32 the roundings of s,
        # of its log1p and of the sum reached 4.9 ULP of max(|value|, |m|) where m < 0
        # cancels part of the log1p. -inf for empty rows, +inf with a +inf entry.
        wide = tf.cast(pieces.m, tf.float64) + log1p_once(pieces.s_wide)
        value = tf.cast(wide, x.dtype)
        if not keepdims:
            value = tf.reshape(value, tf.shape(tf.reduce_max(x, axis=axis)))

        def grad(upstream):
            # d logsumexp / dx = softmax(x); zero for empty rows.
            upstream = tf.reshape(upstream, tf.shape(pieces.m))
            return upstream * _softmax_from_pieces(pieces)

        return value, grad

    return core(x)


def _softmax_core(x, axis):
    @custom_gradient
    def core(x):
        # y's slope declared (with_softmax_slope), for the gradient below to read: a
        # second-order gradient is right at tied maxima too; first order runs the same
        # computation. (Declared in the gradient function, it made TF's gradient of the
        # compiled call, eagerly under one tape, return a second copy of x.)
        y = with_softmax_slope(x, _softmax_value(x, axis), axis)

        def grad(upstream):
            return softmax_gradient(y, upstream, axis, where=None)

        return y, grad

    return core(x)


def _log_softmax_core(x, axis):
    @custom_gradient
    def core(x):
        pieces = _shifted_exponentials(x, axis)
        # (x - m) - log1p(s): exactly -log1p(s) at the maximum, and elsewhere two
        # terms of one sign (z <= 0, log1p(s) >= 0), so z's rounding (z_low, which
        # the sum needs) costs at most half an ULP of the result. An empty row's
        # log1p(s) is +inf (one select per row, not per entry): -inf everywhere.
        # The value is written as its own expression of x (not pieces.z): XLA
        # then forms it in the loop that writes it, where z shared with the sums
        # was a full-size buffer of its own (one core, 2^20, alternating with
        # Keras under XLA: 1.76 -> 1.37x with the backward sum below in float64).
        # 0 - log_total keeps +0 at the maximum.
        log_total = log1p_once(pieces.s)
        log_total = tf.where(pieces.empty, tf.constant(math.inf, x.dtype), log_total)
        value = tf.where(tf.equal(x, pieces.m), 0.0 - log_total, (x - pieces.m) - log_total)
        # Its slope declared (with_log_softmax_slope), for the gradient below to read:
        # right at tied maxima in a second-order gradient (see _softmax_core).
        value = with_log_softmax_slope(x, value, axis)

        def grad(upstream):
            # The same formula as the compiled call's from the output (one answer
            # in every regime); a softmax from the pieces kept p, a full-size
            # buffer, alive for the backward pass.
            return log_softmax_gradient(value, upstream, axis, where=None)

        return value, grad

    return core(x)


@xla_kernel(row_local=True)
def _logsumexp_kernel(x, axis, keepdims, where):
    x = float_tensor_with_axis(x, axis)
    value = _logsumexp_core(_mask_out(to_compute(x), where), axis, keepdims)
    return tf.cast(value, x.dtype)


def _fill_masked(value, where, fill):
    # A NaN in a row's unmasked part makes the whole row NaN inside the core;
    # masked entries keep their fixed value all the same (as in JAX).
    if where is None:
        return value
    return tf.where(where, value, tf.constant(fill, value.dtype))


@xla_kernel(gradient_from_output=softmax_gradient)
def _softmax_kernel(x, axis, where):
    x = float_tensor_with_axis(x, axis)
    value = _softmax_core(_mask_out(to_compute(x), where), axis)
    return tf.cast(_fill_masked(value, where, 0.0), x.dtype)


@xla_kernel(gradient_from_output=log_softmax_gradient)
def _log_softmax_kernel(x, axis, where):
    x = float_tensor_with_axis(x, axis)
    value = _log_softmax_core(_mask_out(to_compute(x), where), axis)
    return tf.cast(_fill_masked(value, where, -math.inf), x.dtype)


def logsumexp(x, axis=-1, keepdims=False, where=None):
    """``log(sum(exp(x)))`` along ``axis``, without overflow or underflow.

    Formula:
        ``m + log1p(sum_{x_i != m} exp(x_i - m) + (k - 1))`` with ``m = max(x)``
        and ``k`` the number of entries equal to ``m``.

    Numerical stability:
        Shifting by the row maximum keeps every ``exp`` in ``[0, 1]`` (no
        overflow, at least one term is exactly 1). Leaving the maxima out of the
        sum and using ``log1p`` keeps the result accurate when one entry
        dominates: ``logsumexp([0., -30.])`` is ``9.36e-14`` (the naive
        ``log(1 + 9.36e-14)`` rounds to 0). float16/bfloat16 are computed in
        float32, so 100,000 float16 classes cannot overflow the sum.
        A row of only ``-inf`` (or fully masked) gives ``-inf`` with gradient 0;
        a ``+inf`` entry gives ``+inf``; a NaN entry (not masked) gives NaN.
        Gradient (custom): ``softmax(x)`` with zeros for masked entries and
        empty rows; with ``k`` entries at ``+inf`` each of them gets ``1/k``.
        Error budget: 4 ULP of ``max(|result|, |max(x)|)`` in float32/float64
        (the result itself when the maximum is 0 or dominates; cancellation
        between ``m < 0`` and the ``log1p`` term is the input's conditioning;
        ``m + log1p(s)`` is formed in float64 per row and rounded once),
        and 1 ULP of the float32 result for float16/bfloat16.

    Args:
        x: floating tensor (float16, bfloat16, float32, float64).
        axis: int, tuple of ints or ``None`` (all axes) to reduce over.
        keepdims: keep the reduced axes with length 1.
        where: optional boolean mask broadcastable to ``x``'s shape (a mask
            that would widen ``x`` is a ``ValueError``); ``True`` entries
            take part, ``False`` entries are ignored (their NaN too).

    Returns:
        A tensor of ``x``'s dtype with ``axis`` reduced.

    Example:
        >>> float(logsumexp(tf.constant([1000.0, 1000.0])))  # not inf
        1000.6931...
    """
    return _logsumexp_kernel(
        x, axis=_normalize_axis(axis), keepdims=bool(keepdims), where=_as_mask(where)
    )


def softmax(x, axis=-1, where=None):
    """``exp(x) / sum(exp(x))`` along ``axis``, mask-safe.

    Formula:
        ``exp(x - m) / sum(exp(x - m))`` with ``m = max(x)``.

    Numerical stability:
        Max-shifted (every ``exp`` in ``[0, 1]``, denominator ``>= 1``), with
        ``x - m`` carried exactly (TwoSum), so entries far below the maximum
        keep their relative accuracy (``tf.nn.softmax`` loses
        ``|x - m| * eps / 2``: 60 ULP at ``x - m = -100`` in float32).
        Masked entries are exactly 0 (even in a row with a NaN); a fully
        masked (or all ``-inf``) row is all zeros with zero gradient, not
        ``0/0 = nan``. ``-inf`` entries give
        0; ``k`` entries at ``+inf`` share probability ``1/k``; a NaN entry
        (not masked) makes its row NaN.
        Gradient (custom): ``y * (g - sum(g * y))``, zero wherever ``y`` is 0.
        Error budget: 3 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16. float32 entries round once after ``exp`` and
        once more after a float64 sum and normalization, float64 rows are
        summed exactly (see ``_softmax_value``): 2.4 ULP (float32) and 2.5
        (float64) at worst measured; a row sum in the input's precision had
        11.8 on rows of 64.

    Args:
        x: floating tensor.
        axis: int or tuple of ints to normalize over.
        where: optional boolean mask broadcastable to ``x``'s shape (``True`` =
            include; a mask that would widen ``x`` is a ``ValueError``).

    Returns:
        A tensor of ``x``'s dtype and shape; each unmasked row sums to 1.

    Example:
        >>> mask = tf.constant([[True, True], [False, False]])
        >>> softmax(tf.constant([[1.0, 2.0], [3.0, 4.0]]), where=mask).numpy()
        array([[0.26894143, 0.7310586 ],
               [0.        , 0.        ]], dtype=float32)
    """
    return _softmax_kernel(x, axis=_normalize_axis(axis), where=_as_mask(where))


def log_softmax(x, axis=-1, where=None):
    """``x - logsumexp(x)`` along ``axis``, mask-safe.

    Formula:
        ``(x - m) - log1p(s)`` with ``m = max(x)`` and ``1 + s = sum(exp(x - m))``.

    Numerical stability:
        Exactly ``-log1p(s)`` at the maximum (no cancellation), so the
        cross-entropy of a confident correct prediction stays accurate.
        Masked entries give ``-inf`` (``log`` of their softmax probability 0,
        as in JAX), even in a row with a NaN; multiply them by targets with a
        ``where``, never directly.
        A fully masked or all ``-inf`` row gives ``-inf`` everywhere with zero
        gradient. ``k`` entries at ``+inf`` give ``-log(k)`` there and ``-inf``
        elsewhere; a NaN entry (not masked) makes its row NaN. Entries more
        than the dtype's ``max`` below the row maximum give ``-inf`` (the true
        value rounds there).
        Gradient (custom): ``g - softmax(x) * sum(g)``, where outputs at
        ``-inf`` (masked or ``-inf`` entries, empty rows) count as constants:
        they neither receive nor pass gradient, so empty rows get 0. The
        softmax is ``exp`` of the output, as TF's ``LogSoftmaxGrad`` takes it:
        the output's rounding makes it ``|y| eps / 2`` off relatively, which
        shows only where ``g`` is 0 at an entry far below the maximum (22 ULP
        at ``y = -50`` in float32; within 3 ULP of ``|g|`` elsewhere).
        Error budget: 4 ULP in float32/float64 (``x - m`` is carried exactly
        in the sum; ``x - m`` and ``-log1p(s)`` have one sign), 1 ULP of the
        float32 result for float16/bfloat16; plus up to ``tiny``
        per entry where tail terms below ``tiny`` are flushed to zero.

    Args:
        x: floating tensor.
        axis: int or tuple of ints to normalize over.
        where: optional boolean mask broadcastable to ``x``'s shape (``True`` =
            include; a mask that would widen ``x`` is a ``ValueError``).

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> log_softmax(tf.constant([0.0, -30.0])).numpy()
        array([-9.357623e-14, -3.000000e+01], dtype=float32)
    """
    return _log_softmax_kernel(x, axis=_normalize_axis(axis), where=_as_mask(where))
