"""Cross-entropies: elementwise binary, categorical, sparse categorical.

The same functions as ``keras.ops.binary_crossentropy`` & co. (same arguments,
same results on ordinary inputs, same recovery of the logits behind a Keras
sigmoid/softmax output), without their failure modes:

* from logits: ``softplus``-style and log-softmax forms that never overflow,
  with ``-inf`` (masked) logits allowed where the target is 0, exact even for
  logits far outside the float16 range, and accurate for confident predictions;
* from probabilities: a clip whose bounds come from ``dtype_limits`` (so
  float16/bfloat16 never give ``inf`` and no probability the dtype can hold
  is moved) and whose gradient is straight-through (so a confidently wrong
  prediction still gets a gradient), and a finite loss for an all-zero
  probability row;
* sparse labels: integer labels are gathered, never cast through a float;
  an out-of-range label raises an error naming it (eager and graph) and gives
  NaN under XLA, never a finite wrong loss.

Half precision is computed in float32; results have the dtype of ``output``.
Data-dependent checks run in the public functions, outside the XLA kernels.
"""

from __future__ import annotations

import math

import tensorflow as tf

from stableops._internal.checks import (
    as_float_tensor,
    axis_argument,
    canonical_axis,
    check_same_shape,
    raise_on_invalid_labels,
    real_tensor,
)
from stableops._internal.clip import clip
from stableops._internal.compensated import one_minus, two_difference
from stableops._internal.dtypes import compute_dtype, dtype_limits, to_compute
from stableops._internal.elementary import log1p_in_range
from stableops._internal.gradients import custom_gradient
from stableops._internal.keras_compat import recover_logits
from stableops._internal.kernel import xla_kernel
from stableops._internal.reductions import (
    float64_sum,
    log1p_once,
    shrunk_rows,
    sum_over,
    top_and_rest,
)
from stableops._internal.where import weight_times
from stableops.ops._softmax import (
    _shifted_exponentials,
    _softmax_from_pieces,
)

# ----------------------------------------------------------------------------
# Arguments (static, outside the kernels)
# ----------------------------------------------------------------------------


def _class_axis(axis, rank):
    """``axis`` as a non-negative int for an ``output`` of rank ``rank`` (which must be known)."""
    axis = axis_argument(axis)
    if rank is None:
        raise ValueError(f"a class axis (axis={axis}) needs `output` of known rank")
    return canonical_axis(axis, rank, of="output")


def _dense_arguments(target, output, from_logits, op_type, fn_name, axis=-1):
    output, from_logits = recover_logits(output, from_logits, op_type, fn_name, axis=axis)
    output = as_float_tensor(output, "output")
    target = real_tensor(target, "target")  # strings and complex numbers: a TypeError
    check_same_shape(target, output, "target", "output")
    return target, output, from_logits


# ----------------------------------------------------------------------------
# Shared numerics (compute dtype, inside the kernels)
# ----------------------------------------------------------------------------


def _log1m(p):
    """``log(1 - p)`` for ``p`` in ``[0, 1)``: one ``log``, its argument's rounding corrected.

    ``1 - p = w + d`` exactly, with ``w = fl(1 - p)`` and ``d = (1 - w) - p``
    (Fast2Sum: ``|p| <= 1``), so ``log(1 - p) = log(w) + log1p(d / w)``, and
    ``log1p(d / w)`` is ``d (2 - w)`` to well under an ULP: ``|d| <= eps/4``,
    and ``2 - w`` is ``1/w`` within ``(1 - w)^2 / w``. Where ``log(1 - p)``
    would lose ``p``'s low digits to the rounding of ``1 - p`` (small ``p``),
    ``d`` keeps them; from ``p = 1/2`` up ``1 - p`` is exact and ``d = 0``.
    Measured against mpmath on ``[1e-30, 1)``: float32 1.6 ULP under XLA and
    2.9 eagerly (TF's eager float32 ``log`` is the larger part), float64 1.0.
    The compensated series it replaces (``accurate_log1p(-p)``, 0.6 ULP) took
    a series, a division and a second ``log`` per element: under XLA, one
    core, 2^20, binary cross-entropy 1.69 -> 1.23x Keras's time and binary
    focal 1.78 -> 1.16x (one process, alternating).
    """
    w = 1.0 - p
    rounding = (1.0 - w) - p
    return tf.math.log(w) + rounding * (2.0 - w)


class _ClipBounds:
    """Clip bounds for a probability: value bounds and slope bounds.

    Value: ``log(p)`` is taken at ``max(p, tiny)`` and ``log(1 - p)`` at
    ``min(p, largest_below_one)``, both of the *compute* dtype (float32 for
    half precision): the smallest normal number and the largest number below
    1 that the computation holds. Every input probability, including a
    float16 subnormal, keeps its exact loss; only a 0 under ``log(p)`` and a
    1 under ``log(1 - p)`` are moved, to the nearest point where the log is
    finite (``-log(tiny) = 87.3`` and ``-log(2**-24) = 16.6`` in float32).

    Slope: the derivative ``1/p`` (``1/(1 - p)``) is taken at ``p`` clipped
    to ``[tiny, largest_below_one]`` of the *input* dtype, because the
    gradient is returned in that dtype: ``1/tiny`` (16384 in float16) and
    ``1/(1 - largest_below_one) = 2/eps`` (2048 in float16) are finite there,
    where ``1/tiny`` of float32 would overflow float16.
    """

    def __init__(self, input_dtype):
        value = dtype_limits(compute_dtype(input_dtype))
        slope = dtype_limits(input_dtype)
        self.low, self.high = value.tiny, value.largest_below_one
        self.slope_low, self.slope_high = slope.tiny, slope.largest_below_one
        self.largest = slope.max  # the largest gradient the input dtype holds


def _log_probability(p, bounds):
    """``log(p)`` at ``p`` clipped to ``[bounds.low, 1]``; slope ``1/max(p, bounds.slope_low)``.

    The clip at ``bounds.low`` is straight-through: the derivative does not
    drop to 0 below the bound (``tf.clip_by_value``'s does), so a confidently
    wrong prediction still gets a gradient, the largest the input dtype holds:
    the product with the upstream gradient saturates there (a class weight of 4
    times ``1/tiny`` overflowed float32 to ``-inf``).
    Above 1, which no probability reaches, the value is ``log(1) = 0`` (never
    the negative loss ``log(p) > 0`` would give) and the slope 0: the term is
    at its optimum there, and a slope ``1/p`` would push ``p`` further out.
    """

    @custom_gradient
    def log_fn(q):
        def grad(upstream):
            slope = tf.where(q > 1.0, tf.zeros_like(q), 1.0 / clip(q, bounds.slope_low))
            return clip(upstream * slope, -bounds.largest, bounds.largest)

        return tf.math.log(clip(q, bounds.low, 1.0)), grad

    return log_fn(p)


def _log_complement(p, bounds):
    """``log(1 - p)`` at ``p`` clipped to ``[0, bounds.high]``, with slope
    ``-1/(1 - min(p, bounds.slope_high))``.

    The clip at ``bounds.high`` is straight-through, as in :func:`_log_probability`;
    below 0 the value is ``log(1) = 0`` and the slope 0.
    """

    @custom_gradient
    def log1m_fn(q):
        def grad(upstream):
            inside = -1.0 / (1.0 - clip(q, 0.0, bounds.slope_high))
            slope = tf.where(q < 0.0, tf.zeros_like(q), inside)
            return upstream * slope

        return _log1m(clip(q, 0.0, bounds.high)), grad

    return log1m_fn(p)


def _upstream_unless(dead, upstream):
    """A row's upstream gradient, times 0 where the row is ``dead`` (a NaN upstream stays NaN).

    Selected per row, then broadcast along it: XLA on CPU (TF 2.21) does not vectorize a loop
    that broadcasts a row's boolean along rows narrower than 32 entries, and selecting the
    gradient there made its loop scalar (categorical cross-entropy from logits, ``[2^17, 8]``,
    one core, under XLA: that loop 1.08 -> 0.30 ms, the loss and gradient 3.4 -> 2.3 ms).
    """
    return tf.where(dead, upstream * 0.0, upstream)


def _nan_unless(valid, like):
    """1 where ``valid``, NaN elsewhere: makes an invalid example's loss and gradient NaN."""
    nan = tf.fill(tf.shape(like), tf.constant(math.nan, like.dtype))
    return tf.where(valid, tf.ones_like(like), nan)


# ----------------------------------------------------------------------------
# Binary
# ----------------------------------------------------------------------------


def _sigmoid_cross_entropy(z, x):
    """``softplus(x) - x z`` with its gradient ``(sigmoid(x) - z, -x)`` written out.

    Split at ``x = 0`` into two non-negative terms:
    ``x >= 0``: ``x (1 - z) + log1p(exp(-x))``; ``x < 0``: ``-x z + log1p(exp(x))``.
    ``exp`` of a non-positive number cannot overflow, and no term cancels
    another (the naive ``max(x, 0) - x z`` loses digits when ``z`` is close
    to 1). Double where: each branch sees only its own sign of ``x`` (0
    elsewhere), so an unselected infinite logit cannot leak ``inf * 0``.
    The gradient comes from the same ``exp`` (``sigmoid`` is ``1/(1 + e)`` or
    ``e/(1 + e)``), the exact ``sigmoid(0) - z`` at ``x = 0``; a target that
    agrees with an infinite logit (loss 0) gets gradient 0, not ``-x``. Written
    out rather than differentiated through the double where, whose selects and
    products cost a tenth more time under XLA (single core at 2^20: 1.08-1.15
    -> 1.00-1.06x Keras's).
    """

    @custom_gradient
    def core(z, x):
        positive = x >= 0
        x_positive = tf.where(positive, x, tf.zeros_like(x))
        x_negative = tf.where(positive, tf.zeros_like(x), x)
        linear = tf.where(positive, weight_times(1.0 - z, x_positive), weight_times(z, -x_negative))
        exp = tf.exp(tf.where(positive, -x, x))  # in [0, 1]
        loss = linear + log1p_in_range(exp, elementwise=True)

        def grad(upstream):
            sigmoid = tf.where(positive, tf.ones_like(exp), exp) / (1.0 + exp)
            agrees = tf.logical_and(tf.math.is_inf(x), tf.equal(z, tf.cast(positive, z.dtype)))
            target_slope = tf.where(agrees, tf.zeros_like(x), -x)
            return upstream * target_slope, upstream * (sigmoid - z)

        return loss, grad

    return core(z, x)


@xla_kernel(row_local=True)
def _binary_from_logits(target, logits):
    x = to_compute(logits)
    z = tf.cast(target, x.dtype)
    # An infinite target is not a label: NaN, never the -inf of the formula.
    # Masked on the target, not on the loss: the mask on the loss cost a fifth
    # of this kernel's time under XLA (single core at 2^20, forward and
    # backward: 1.36 -> 1.10-1.18x Keras's).
    z = z * _nan_unless(tf.math.is_finite(z), z)
    return tf.cast(_sigmoid_cross_entropy(z, x), logits.dtype)


@xla_kernel(row_local=True, saturating=True)
def _binary_from_probabilities(target, probabilities):
    bounds = _ClipBounds(probabilities.dtype)
    p = to_compute(probabilities)
    z = tf.cast(target, p.dtype)
    # Both terms are >= 0 for z in [0, 1] (no cancellation); the clip keeps
    # them finite (see _ClipBounds), so 0 * log(0) never arises.
    # Each log is clipped only on the side where it is infinite: p = 1 with
    # z = 1 costs exactly 0, p = 0 with z = 0 too.
    # 1 - z is carried with its rounding error (exact for |z| <= 1): a soft label such
    # as z = 0.48 would otherwise lose half an ULP of its weight to 1 - z (2.1 against
    # 1.7 ULP of the loss at worst on random soft labels below 1/2). An invalid z
    # makes the pair NaN, and the loss NaN below.
    complement, complement_low = one_minus(z)
    log_complement = _log_complement(p, bounds)
    loss = -(z * _log_probability(p, bounds)
             + (complement * log_complement + complement_low * log_complement))
    # An infinite probability or target is invalid input: NaN in value and
    # gradient, never the negative loss log(inf) would give.
    valid = tf.logical_and(tf.math.is_finite(p), tf.math.is_finite(z))
    loss = loss * _nan_unless(valid, loss)
    return tf.cast(loss, probabilities.dtype)


def binary_crossentropy(target, output, from_logits=False):
    """Elementwise binary cross-entropy between targets and probabilities or logits.

    Formula:
        From logits ``x``: ``softplus(x) - x z``, computed as
        ``x (1 - z) + log1p(exp(-x))`` for ``x >= 0`` and
        ``-x z + log1p(exp(x))`` for ``x < 0``.
        From probabilities ``p``:
        ``-(z log(clip(p, tiny, 1)) + (1 - z) log(1 - clip(p, 0, 1 - eps/2)))``
        with ``tiny`` and ``eps`` of the compute dtype (float32 for half precision).

    Numerical stability:
        From logits: no overflow for any finite logit (1e30 is fine), the two
        terms are non-negative so nothing cancels, the gradient
        ``sigmoid(x) - z`` is exact (also at ``x = 0``). ``±inf`` logits give
        the limit: 0 when the target agrees (``z = 1`` for ``+inf``), ``inf``
        otherwise. NaN in ``target`` or ``output`` gives NaN, and so does an
        infinite target (from probabilities also an infinite probability):
        invalid input, never a negative loss.
        From probabilities: the clip bounds come from ``dtype_limits``, not a
        global 1e-7. Values: ``tiny`` and ``largest_below_one`` of the compute
        dtype (1.2e-38 and ``1 - 2**-24`` in float32), so float16/bfloat16
        never give ``inf`` (Keras's ``1 - 1e-7`` rounds to 1 in float16) and
        every representable probability keeps its exact loss (Keras caps
        ``p < 1e-7`` at 16.1). Only ``p = 0`` and ``p = 1`` are moved: a
        confidently wrong 0 or 1 costs ``-log(tiny) = 87.3`` or ``16.6`` in
        float32. The clip is straight-through, with the slope taken at the
        input dtype's ``tiny``/``largest_below_one`` so the gradient is finite
        in that dtype: ``p = 0`` with ``z = 1`` has gradient ``-1/tiny``
        (-8.5e37 in float32, -16384 in float16) where Keras's is 0; times a
        weight (an upstream gradient) it saturates at the dtype's largest number.
        A probability outside ``[0, 1]`` costs what the nearest of 0 and 1
        costs, never a negative loss (``log(p) > 0`` for ``p > 1``); its
        gradient is that of the side that points back into ``[0, 1]``
        (``p = 1.5`` with ``z = 1``: loss 0, gradient 0).
        Like Keras's TF backend, if ``output`` came from a sigmoid
        (``output._keras_logits``, or a ``Sigmoid`` op in a graph), the loss is
        computed from its logits; the logits of another activation (a
        softmax's) are not used.
        Error budget: 3 ULP in float32/float64 (from logits and from
        probabilities); 1 ULP (of the float32 result, rounded once) in
        float16/bfloat16.

    Args:
        target: targets ``z``, any real dtype, same shape as ``output``.
        output: probabilities, or logits if ``from_logits``; floating.
        from_logits: whether ``output`` holds logits.

    Returns:
        The elementwise loss, shape and dtype of ``output``.

    Raises:
        TypeError: if ``output`` is not floating.
        ValueError: if the shapes of ``target`` and ``output`` differ.

    Example:
        >>> import tensorflow as tf
        >>> target, logits = tf.constant([1.0, 0.0]), tf.constant([30.0, -30.0])
        >>> binary_crossentropy(target, logits, from_logits=True).numpy()
        array([9.35762e-14, 9.35762e-14], dtype=float32)
    """
    target, output, from_logits = _dense_arguments(
        target, output, from_logits, "Sigmoid", "binary_crossentropy"
    )
    if from_logits:
        return _binary_from_logits(target, output)
    return _binary_from_probabilities(target, output)


# ----------------------------------------------------------------------------
# Categorical
# ----------------------------------------------------------------------------


def _weighted_gap_sum(z, x, m, axis):
    """``sum(z * (x - m))`` along ``axis``, formed and summed in float64, rounded once; a
    zero target and a maximum contribute 0 (``0 * -inf`` and ``inf - inf`` never occur).

    ``x - m`` of two float32 numbers and its product with ``z`` are exact or within
    2^-53 in float64, where a float32 product of ``z`` and the TwoSum pair rounded each
    term. The float32 selects choose the operands (0 and 0 for the left-out terms), and
    the float64 expression is one subtraction and one product: with the TwoSum and
    ``weight_times`` in float32 in the summing loop, under XLA, one core, 2^20, the
    loss took 3.55-3.71 ms, 3.28-3.39 this way (Keras 2.19-2.69; AMD EPYC, AVX2).
    """
    kept = tf.logical_and(tf.not_equal(z, 0.0), tf.not_equal(x, m))  # NaN is kept
    zero = tf.zeros_like(x)
    wide = tf.float64
    gap = tf.cast(tf.where(kept, x, zero), wide) - tf.cast(tf.where(kept, m, zero), wide)
    return tf.cast(float64_sum(tf.cast(z, wide) * gap, axis, keepdims=True), x.dtype)


def _categorical_logits_core(z, x, axis):
    @custom_gradient
    def core(z, x):
        # -sum_i z_i log_softmax(x)_i = sum(z) log1p(s) - sum_i z_i (x_i - m),
        # with x_i - m exact in float64 in the weighted sum (_weighted_gap_sum) and carried
        # as z + z_low (0 at the maxima) in the exponentials, as in log_softmax: both
        # terms are >= 0 for z >= 0 (no cancellation), neither huge logits nor a
        # confident correct prediction lose accuracy, and no row of log-probabilities
        # is formed. A masked (-inf) logit counts 0 where its target is 0. (Single
        # core at 2^20 under XLA: 1.98 -> 1.60-1.68x Keras's time against reducing
        # z log_softmax(x).)
        pieces = _shifted_exponentials(x, axis, read_again=True)
        log_sum = log1p_once(pieces.s)
        mass = tf.reduce_sum(z, axis=axis, keepdims=True)
        loss = mass * log_sum - _weighted_gap_sum(z, x, pieces.m, axis)
        # A row of only -inf logits has every probability 0: loss inf under any
        # target mass, 0 without one.
        inf = tf.constant(math.inf, x.dtype)
        # sign(mass) * inf, not mass * inf: where a transformation drops the custom gradient
        # (tf.vectorized_map's), the unselected mass * inf sent 0 * inf = NaN to every target.
        empty_loss = tf.where(tf.equal(mass, 0), tf.zeros_like(mass), tf.sign(mass) * inf)
        loss = tf.where(pieces.empty, empty_loss, loss)

        def grad(upstream):
            upstream = tf.expand_dims(upstream, axis)
            # softmax sum(z) - z; a row whose loss is inf (a target on a -inf
            # logit, or a target mass past the float range) is a constant: no gradient,
            # as in the sparse loss. Its mass taken as 0 too: 0 times an infinite mass is NaN.
            dead = tf.equal(loss, inf)
            row_upstream = _upstream_unless(dead, upstream)
            row_mass = tf.where(dead, tf.zeros_like(mass), mass)
            # The exponentials written once (read_again above) and read here: formed
            # again in this loop with their TwoSum, they made the gradient's loop the slow
            # part on narrow rows (8 classes: 4.5 -> 2.3x Keras's time under XLA). XLA
            # writes the gradient into their buffer, so the peak memory is the same.
            x_grad = row_upstream * (_softmax_from_pieces(pieces) * row_mass - z)
            # d/dz_i = -log p_i, with 0 * log 0 = 0 (no gradient to a 0 target there).
            shifted = pieces.z + pieces.z_low
            minus_log_p = tf.where(pieces.empty, tf.fill(tf.shape(x), inf), log_sum - shifted)
            drop = tf.logical_and(tf.equal(z, 0), tf.math.is_inf(minus_log_p))
            z_grad = upstream * tf.where(drop, tf.zeros_like(minus_log_p), minus_log_p)
            return z_grad, x_grad

        return tf.squeeze(loss, axis), grad

    return core(z, x)


@xla_kernel(row_local=True)
def _categorical_from_logits(target, logits, axis):
    x = to_compute(logits)
    loss = _categorical_logits_core(tf.cast(target, x.dtype), x, axis)
    return tf.cast(loss, logits.dtype)


def _unclipped_fraction(o, low):
    """``o / max(o, low)``: 1 above ``low``, ``o / low`` below, computed without a division.

    ``low`` is a power of two, so ``o * (1 / low)`` is exact; and with no
    division here XLA has nothing to fold into a following one.
    """
    return tf.where(o >= low, tf.ones_like(o), o * (1.0 / low))


def _row_divisor(total):
    """The row sum, or 1 for an all-zero row (which is left unnormalized: 0/0 read as 0)."""
    return tf.where(tf.equal(total, 0), tf.ones_like(total), total)


def _normalized_crossentropy(z, o, axis, bounds):
    """``-sum(z * log(clip(o / sum(o))))`` along ``axis`` with a closed-form gradient.

    Gradient with respect to ``o_j``: ``-z_j / o_j + sum(z) / S`` (the second
    term absent for an all-zero row), with every ``1 / o_i`` taken at
    ``max(o_i, tiny)`` of the input dtype (the straight-through clip, so it is
    finite). Written out instead of left to autodiff because XLA rewrites the
    autodiff chain ``(g / p) / S`` as ``g / (p * S)``, and ``p * S`` underflows
    to 0 for a clipped ``p``: NaN or -inf where the gradient should be finite.
    With respect to ``z``: ``-log(clip(o / S))``.
    """

    @custom_gradient
    def loss_fn(z, o):
        # Rows summing past the float range are shrunk first (the fractions o / S are kept).
        shrunk, shrink, largest = shrunk_rows(o, axis)
        total = tf.reduce_sum(shrunk, axis=axis, keepdims=True)
        divisor = _row_divisor(total)
        top, rest = top_and_rest(shrunk, total, axis)
        # Per row (one log1p): the top entry is the row's maximum.
        top_log_q = -tf.math.log1p(rest / largest)
        log_q = tf.where(top, top_log_q, tf.math.log(clip(shrunk / divisor, bounds.low, 1.0)))
        loss = -sum_over(z * log_q, axis=axis)

        def grad(upstream):
            upstream = tf.expand_dims(upstream, axis)
            slope_point = clip(o, bounds.slope_low)
            fraction = _unclipped_fraction(o, bounds.slope_low)
            # 1 / S = shrink / divisor.
            normalizing = sum_over(z * fraction, axis=axis, keepdims=True) * shrink / divisor
            normalizing = tf.where(tf.equal(total, 0), tf.zeros_like(normalizing), normalizing)
            to_o = upstream * (normalizing - z / slope_point)
            # Saturated: a weight of 4 times the slope 1/tiny overflows (xla_kernel's saturating).
            return -upstream * log_q, clip(to_o, -bounds.largest, bounds.largest)

        return loss, grad

    return loss_fn(z, o)


@xla_kernel(row_local=True, saturating=True)
def _categorical_from_probabilities(target, probabilities, axis):
    p = to_compute(probabilities)
    z = tf.cast(target, p.dtype)
    # Keras normalizes each row to sum 1. The clip's upper bound is 1 (only
    # log(p) appears), so a perfect prediction costs exactly 0; its lower
    # bound and the slope bound are those of _ClipBounds.
    loss = _normalized_crossentropy(z, p, axis, _ClipBounds(probabilities.dtype))
    return tf.cast(loss, probabilities.dtype)


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Categorical cross-entropy between target distributions and probabilities or logits.

    Formula:
        From logits ``x``: ``-sum_i z_i log_softmax(x)_i``.
        From probabilities ``p``: ``-sum_i z_i log(p'_i)`` with
        ``p' = clip(p / sum(p), tiny, 1)``.

    Numerical stability:
        From logits: max-shifted log-softmax, exact for logits far outside the
        float16 range (1e5 in float32) and accurate for confident correct
        predictions (``-log1p(s)`` at the maximum, e.g. ``[0, -30]`` against
        class 0 gives 9.36e-14, not 0). A masked ``-inf`` logit is allowed
        where its target is 0 (``0 * log 0 = 0``; Keras gives NaN); a target on
        a ``-inf`` logit gives ``+inf`` and no gradient to that row's logits
        (a constant, not NaN); a row of only
        ``-inf`` logits counts as all probabilities 0. ``+inf`` logits follow
        ``log_softmax``. NaN anywhere in a row gives NaN. Logits spanning more
        than the dtype's range (``max(x) - min(x) > 3.4e38`` in float32)
        overflow ``log_softmax`` to ``-inf`` and the loss to ``inf`` even where
        the weighted sum would be finite.
        Gradient ``softmax(x) sum(z) - z``.
        From probabilities: rows are normalized by their sum as Keras does (a
        row whose largest entry is above ``max / 2^40`` is scaled by ``2^-40``
        first, so its sum does not overflow: the fractions are the same); an
        all-zero row is not divided (Keras: NaN), so every class has
        probability 0, clipped to ``tiny``: loss ``-sum(z) log(tiny)`` (87.3
        per unit of target in float32). The clip moves only probability 0
        (value bounds ``[tiny, 1]`` of the compute dtype); its upper bound 1
        makes a perfect prediction cost exactly 0 (Keras clips at
        ``1 - 1e-7``: 1.2e-7). The gradient is the exact
        ``-z_j/p_j + sum(z)/S`` with each ``1/p_j`` taken at ``max(p_j, tiny)``
        of the input dtype (straight-through, so finite whatever the row sum;
        ``-z/tiny`` for an all-zero row; Keras's clip gives 0 there), saturated
        at the dtype's largest number where a weight multiplies it past the range.
        If ``output`` came from a Keras softmax (``_keras_logits`` or a
        ``Softmax`` op in a graph), the loss is computed from its logits.
        Half precision computes in float32, so float16 sums over 100,000
        classes cannot overflow.
        Error budget: from logits 4 ULP in float32/float64 for up to 16
        classes; from probabilities 4 ULP plus ``(n + 2)/2 * eps * sum(z)``
        absolute for ``n`` classes (the rounding of the normalizing sum),
        where the entry above half its row's sum is 4 ULP alone
        (``log1p(rest / p)``, however close ``p`` is to the sum); both plus up
        to ``tiny`` per class where a term ``z_i log p_i`` falls below the
        smallest normal ``tiny`` and is flushed to zero (as TF's CPU kernels
        do; targets near ``tiny``); 1 ULP (of the float32 result) in
        float16/bfloat16.

    Args:
        target: target distributions ``z`` (any real dtype), same shape as ``output``.
        output: probabilities, or logits if ``from_logits``; floating.
        from_logits: whether ``output`` holds logits.
        axis: the class axis.

    Returns:
        The loss with ``axis`` reduced, dtype of ``output``.

    Raises:
        TypeError: if ``output`` is not floating.
        ValueError: if the shapes of ``target`` and ``output`` differ.

    Example:
        >>> import math
        >>> import tensorflow as tf
        >>> logits = tf.constant([[0.0, -math.inf, 2.0]])  # class 1 masked
        >>> target = tf.constant([[0.0, 0.0, 1.0]])
        >>> categorical_crossentropy(target, logits, from_logits=True).numpy()
        array([0.126928], dtype=float32)
        >>> categorical_crossentropy(tf.constant([[0.0, 0.0, 1.0]]), logits, from_logits=True)
        <tf.Tensor: ... numpy=array([0.126928], dtype=float32)>
    """
    target, output, from_logits = _dense_arguments(
        target, output, from_logits, "Softmax", "categorical_crossentropy", axis
    )
    axis = _class_axis(axis, output.shape.rank)
    if from_logits:
        return _categorical_from_logits(target, output, axis=axis)
    return _categorical_from_probabilities(target, output, axis=axis)


# ----------------------------------------------------------------------------
# Sparse categorical
# ----------------------------------------------------------------------------


def _label_validity(labels, num_classes):
    """Boolean tensor: label is an integer in ``[0, num_classes)``.

    Compared in int64 or float64, where every label and class count is exact: in the
    labels' own dtype 256 classes wrapped to 0 in uint8 (every label invalid) and 257
    rounded to 256 in bfloat16.
    """
    if labels.dtype.is_floating:
        labels = tf.cast(labels, tf.float64)
        integral = tf.equal(labels, tf.math.floor(labels))
        in_range = tf.logical_and(labels >= 0, labels < tf.cast(num_classes, tf.float64))
        return tf.logical_and(integral, in_range)
    labels = tf.cast(labels, tf.int64)
    return tf.logical_and(labels >= 0, labels < tf.cast(num_classes, tf.int64))


def _as_indices(labels, valid):
    """Valid labels as int64 indices; invalid ones replaced by class 0 (their loss is made NaN)."""
    if labels.dtype.is_floating:
        return tf.cast(tf.where(valid, labels, tf.zeros_like(labels)), tf.int64)
    return tf.where(valid, tf.cast(labels, tf.int64), tf.zeros_like(labels, tf.int64))


def _gather_class(values, indices):
    """``values[n, indices[n]]`` for ``[N, C]`` values and ``[N]`` indices: no one-hot."""
    return tf.gather(values, indices, axis=1, batch_dims=1)


def _flat_examples(labels, output):
    """Labels as ``[N]`` and the class-last output as ``[N, C]``.

    The kernels see tensors of unknown rank (``reduce_retracing`` generalizes
    the rank too), so they work on this flat view and reshape the loss back
    to ``labels``' shape.
    """
    return tf.reshape(labels, [-1]), tf.reshape(output, [-1, tf.shape(output)[-1]])


def _sparse_logits_core(x, indices):
    @custom_gradient
    def core(x):
        # -log_softmax(x)[y] = log1p(s) - (x_y - m), with x_y - m carried as
        # z + z_low as in log_softmax, from the label's logit alone: no row of
        # log-probabilities is formed (and gathered from), and the gradient
        # softmax - onehot(y) comes from the same pieces.
        pieces = _shifted_exponentials(x, axis=-1, read_again=True)
        m = pieces.m[:, 0]
        x_label = _gather_class(x, indices)
        at_max = tf.equal(x_label, m)  # z = 0 there, also for an infinite maximum
        z, z_low = two_difference(x_label, m)
        z = tf.where(at_max, tf.zeros_like(z), z)
        z_low = tf.where(at_max, tf.zeros_like(z_low), z_low)
        loss = (log1p_once(pieces.s[:, 0]) - z_low) - z
        # An empty row (every logit -inf) has no probability to put on y.
        infinite = tf.fill(tf.shape(loss), tf.constant(math.inf, loss.dtype))
        loss = tf.where(pieces.empty[:, 0], infinite, loss)

        def grad(upstream):
            # A label on a -inf logit (or an empty row) has loss +inf, a constant:
            # no gradient for the row, as in the dense loss.
            one_hot = tf.one_hot(indices, tf.shape(x)[-1], dtype=x.dtype)
            row_upstream = _upstream_unless(tf.equal(loss, math.inf), upstream)
            return row_upstream[:, None] * (_softmax_from_pieces(pieces) - one_hot)

        return loss, grad

    return core(x)


@xla_kernel(row_local=True)
def _sparse_from_logits(labels, logits):
    flat_labels, x = _flat_examples(labels, to_compute(logits))
    valid = _label_validity(flat_labels, tf.shape(x, out_type=tf.int64)[-1])
    loss = _sparse_logits_core(x, _as_indices(flat_labels, valid))
    # An invalid label (only reachable under XLA, where the assert is dropped)
    # gives NaN in value and gradient, never the loss of class 0.
    loss = loss * _nan_unless(valid, loss)
    return tf.cast(tf.reshape(loss, tf.shape(labels)), logits.dtype)


def _sparse_normalized_crossentropy(indices, o, bounds):
    """``-log(clip(o[n, y_n] / sum(o[n])))`` for ``[N, C]`` ``o``.

    The gradient is ``_normalized_crossentropy``'s with ``z = one_hot(y)``.
    """

    @custom_gradient
    def loss_fn(o):
        # Rows summing past the float range are shrunk first (the fractions o / S are kept).
        shrunk, shrink, _ = shrunk_rows(o, -1)
        shrink = shrink[:, 0]
        total = tf.reduce_sum(shrunk, axis=-1)
        divisor = _row_divisor(total)
        picked = _gather_class(shrunk, indices)
        _, rest = top_and_rest(shrunk, total[:, None], -1)
        rest = rest[:, 0]
        # Above half the sum, the picked entry is the one the rest leaves out.
        top = tf.logical_and(picked > 0.5 * total, rest >= 0)
        top_loss = tf.math.log1p(rest / tf.where(top, picked, tf.ones_like(picked)))
        loss = tf.where(top, top_loss, -tf.math.log(clip(picked / divisor, bounds.low, 1.0)))

        def grad(upstream):
            unshrunk = _gather_class(o, indices)
            slope_point = clip(unshrunk, bounds.slope_low)
            fraction = _unclipped_fraction(unshrunk, bounds.slope_low)
            # 1 / S = shrink / divisor.
            normalizing = tf.where(
                tf.equal(total, 0), tf.zeros_like(total), fraction * shrink / divisor
            )
            # The one-hot exists only in the (dense) gradient, never in the loss.
            one_hot = tf.one_hot(indices, tf.shape(o)[-1], dtype=o.dtype)
            to_o = upstream[:, None] * (normalizing[:, None] - one_hot / slope_point[:, None])
            # Saturated: a weight of 4 times the slope 1/tiny overflows (xla_kernel's saturating).
            return clip(to_o, -bounds.largest, bounds.largest)

        return loss, grad

    return loss_fn(o)


@xla_kernel(row_local=True, saturating=True)
def _sparse_from_probabilities(labels, probabilities):
    flat_labels, o = _flat_examples(labels, to_compute(probabilities))
    valid = _label_validity(flat_labels, tf.shape(o, out_type=tf.int64)[-1])
    # The normalization and clip of the dense loss, on the one probability
    # the label selects.
    indices = _as_indices(flat_labels, valid)
    loss = _sparse_normalized_crossentropy(indices, o, _ClipBounds(probabilities.dtype))
    loss = loss * _nan_unless(valid, loss)
    return tf.cast(tf.reshape(loss, tf.shape(labels)), probabilities.dtype)


def _sparse_labels(target, output, axis):
    """Labels as a tensor whose shape is ``output``'s without the class axis."""
    target = tf.convert_to_tensor(target)
    if not (target.dtype.is_integer or target.dtype.is_floating):
        raise TypeError(f"`target` must hold integer class labels, got dtype {target.dtype.name}")
    rank = output.shape.rank
    if target.shape.rank == rank and target.shape[-1] == 1:
        target = tf.squeeze(target, axis=-1)  # Keras accepts labels of shape (batch, 1)
    expected = output.shape[:axis].concatenate(output.shape[axis + 1 :])
    if not target.shape.is_compatible_with(expected):
        raise ValueError(
            "`target` must have the shape of `output` without its class axis, "
            f"got target shape {target.shape} and output shape {output.shape} (axis={axis})"
        )
    return target


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Categorical cross-entropy against integer class labels.

    Formula:
        From logits ``x``: ``-log_softmax(x)[y]``.
        From probabilities ``p``: ``-log(clip(p[y] / sum(p), tiny, 1))``.

    Numerical stability:
        The label's log-probability is gathered (no one-hot). Integer labels
        are used as integers (int64), never cast through a float, so labels
        above 2**24 stay exact. A float label tensor is accepted when its
        values are integral (and exactly representable: float16 labels above
        2048 are not); a non-integral float label is treated as out of range.
        Labels of shape ``output.shape[:-1] + (1,)`` are squeezed, as in Keras.
        Out-of-range labels: eagerly and in a ``tf.function`` an
        ``InvalidArgumentError`` names the first bad label and the number of
        classes; under XLA (asserts are dropped) that example's loss and
        gradient are NaN, never the finite loss of some other class. (Keras
        raises only where TensorFlow's CPU kernel checks, gives NaN on GPU and
        under XLA, and truncates a float label such as 1.5 to class 1.)
        From logits the numerics are those of ``categorical_crossentropy``
        (masked ``-inf`` logits allowed off the label; a label on a ``-inf``
        logit gives ``+inf`` and no gradient to that row). From probabilities
        the row is normalized as in Keras; an all-zero row gives
        ``-log(tiny)``; the clip is that of
        ``categorical_crossentropy`` (straight-through, exact loss for every
        representable probability).
        If ``output`` came from a Keras softmax, its logits are used.
        Error budget: from logits 4 ULP in float32/float64 for up to 16
        classes, plus up to ``tiny`` per class where terms below the smallest
        normal ``tiny`` are flushed to zero (as TF's CPU kernels do); from
        probabilities 4 ULP plus ``(n + 2)/2 * eps`` absolute
        (4 ULP alone where the label's probability is above half its row's
        sum); 1 ULP (of the float32 result) in float16/bfloat16.

    Args:
        target: integer class labels (any integer dtype, or an integral
            float tensor), shape of ``output`` without the class axis.
        output: probabilities, or logits if ``from_logits``; floating.
        from_logits: whether ``output`` holds logits.
        axis: the class axis of ``output``.

    Returns:
        The loss per example, shape of ``target``, dtype of ``output``.

    Raises:
        TypeError: if ``output`` is not floating or ``target`` is not numeric.
        ValueError: if the shapes do not match.
        tf.errors.InvalidArgumentError: on an out-of-range label (not under XLA).

    Example:
        >>> import tensorflow as tf
        >>> logits = tf.constant([[1e5, 0.0, -1e5]])  # float16 logits would overflow
        >>> sparse_categorical_crossentropy(tf.constant([1]), logits, from_logits=True).numpy()
        array([100000.], dtype=float32)
    """
    output, from_logits = recover_logits(
        output, from_logits, "Softmax", "sparse_categorical_crossentropy", axis=axis
    )
    output = as_float_tensor(output, "output")
    axis = _class_axis(axis, output.shape.rank)
    labels = _sparse_labels(target, output, axis)
    last = output.shape.rank - 1
    if axis != last:
        permutation = [i for i in range(output.shape.rank) if i != axis] + [axis]
        output = tf.transpose(output, permutation)
    num_classes = tf.shape(output, out_type=tf.int64)[-1]
    labels = raise_on_invalid_labels(
        labels, tf.logical_not(_label_validity(labels, num_classes)), num_classes
    )
    if from_logits:
        return _sparse_from_logits(labels, output)
    return _sparse_from_probabilities(labels, output)
