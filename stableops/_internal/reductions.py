"""Sums and means over an axis, in the form XLA on CPU reduces fastest.

XLA on CPU (TensorFlow 2.21) hands a floating-point sum to YNNPACK's
reduction unless the summed expression ends in a multiplication, a division
or a cast: those it reduces with its own tree of ``reduce-window`` loops, and
when the sum feeds another sum (a loss's per-sample mean feeding Keras's batch
mean) it merges both into one such tree over the whole tensor. Measured on one
core at 2^20 elements, forward and backward: the row sum of ``exp(x) * c``
1.54x the time of ``c`` times the row sum of ``exp(x)``; binary cross-entropy
through its loss class 1.22x -> 0.98x Keras's with the form below.

The form: ``x + (-0.0)`` before the sum, so that every summed expression ends
in an addition. It is exact (``x + (-0.0) == x`` for every ``x``, ``-0.0``,
infinities and NaN included) and costs one addition in the loop that forms
the expression. (A ``+ 0.0`` would be folded away by TF's graph optimizer, and
it would turn ``-0.0`` into ``+0.0``.) Other XLA versions and backends reduce
both forms alike.

Only for such expressions, and where time is what they cost: a tensor
already in memory (an input, an upstream gradient) or an expression ending
in an addition or a select goes to ``tf.reduce_sum`` as it is (the addition
would cost it a full-size copy), and YNNPACK reads its operand from a
full-size buffer where the tree loop computes it on the fly, so a sum whose
slow form costs little time stays plain (softmax's gradient and row sum:
the same speed either way, peak memory under XLA 1.03x Keras's plain, 1.51x
through ``sum_over``).

A float64 sum over the last axis is different again: with the row's parts added
first (``folded_row_sum``) XLA forms and sums the expression in one loop, with no
buffer at all, so a float32 row sum of a computed expression that must not be
written out (or needs the precision) is taken in float64 (``float64_sum``; over
trailing axes, or all, the rows of the last axis that way, then their sums).

A loss's per-sample sum has the opposite concern: under XLA a sum that feeds
another sum (Keras's batch mean) is merged with it into one reduction over
the whole tensor, and on TF 2.21's CPU backend, with two cores, YNNPACK's
reduction of a whole ``[2^16, 64]`` tensor to a scalar takes 1.13-1.16x the
time of its row sums followed by the sum of those (``per_sample_sum``).
"""

from __future__ import annotations

import math

import tensorflow as tf

from stableops._internal.compensated import two_difference
from stableops._internal.elementary import accurate_log1p
from stableops._internal.gradients import custom_gradient


def _summable(x):
    if x.dtype.is_floating:
        return x + tf.constant(-0.0, x.dtype)
    return x


def sum_over(x, axis=None, keepdims=False):
    """``tf.reduce_sum(x, axis, keepdims)``, kept on XLA's fast reduction (see the module)."""
    return tf.reduce_sum(_summable(x), axis=axis, keepdims=keepdims)


def mean_over(x, axis=None, keepdims=False):
    """``tf.reduce_mean(x, axis, keepdims)``, kept on XLA's fast reduction (see the module)."""
    return tf.reduce_mean(_summable(x), axis=axis, keepdims=keepdims)


def per_sample_sum(x):
    """``tf.reduce_sum(x, axis=-1)``, kept apart from a batch reduction that follows it.

    The per-sample result gets the exact ``+ (-0.0)`` (one addition per
    sample, not per element), which XLA cannot merge through: the sum over
    the last axis and the batch's mean stay two reductions (see the module).
    Measured through the loss classes under XLA, two cores, against the
    hand-written formulas, both forms alternating in one process: Poisson
    NLL 1.11-1.15 -> 1.04-1.08x at 2^22 elements and 1.10 -> 1.04x at 2^24,
    Gaussian KL 1.09-1.12 -> 1.02-1.08x at 2^20 and 1.07-1.08 -> 1.04-1.07x
    at 2^22; Gaussian NLL unchanged (0.97-1.02x).
    """
    return _summable(tf.reduce_sum(x, axis=-1))


ROW_FOLDS = 4


def folded_row_sum(x, folds=ROW_FOLDS):
    """``tf.reduce_sum(x, axis=-1)`` of a float64 expression, the row's ``folds`` parts
    added elementwise first.

    XLA on CPU (TF 2.21) writes out a summed expression as a full-size buffer for its
    reduction (YNNPACK's for float32, its own ``reduce-window`` tree for float64). With the
    row's consecutive parts ``x[..., :w]``, ``x[..., w:2w]``, ... (``w = width // folds``)
    added first, a float64 sum becomes one loop that forms the parts and sums them, with no
    buffer; the last ``width % folds`` entries (all of a row narrower than ``folds``) are
    summed apart. The same sum in another order; a row known to be narrower than
    ``8 folds`` is summed as it is (parts of 2-4 entries made XLA's loops slower than the
    plain sum: ``kl_divergence`` at ``[2^17, 8]``, one core, its forward 19 against 2.5 ms;
    width 16 1.24x the plain sum's time, 32 the same). Measured with ``kl_divergence``'s float64
    terms under XLA, one core: 1.27-1.33 -> 0.96-1.04x the time of its float32 sum before
    them (2^20-2^24; 8 parts: the same), peak memory 320 -> 64.5 MiB at 2^24 (2 parts:
    130). A float32 sum goes to YNNPACK from a buffer of one part, slower than the plain
    sum (the same terms in float32: 1.25x at 2^20): float64 only.
    """
    if x.shape[-1] is not None and x.shape[-1] < 8 * folds:
        # Parts one entry wide: XLA drops their size-1 sums and computed the remaining
        # elementwise fold again in every loop that reads the row sum (sparse cross-entropy
        # from logits over 4 classes, [262144, 4] under XLA: 13.5 -> 7.3 ms, one core);
        # parts of 2-4 entries: slower loops (see above).
        return tf.reduce_sum(x, axis=-1)
    return _folded_sum(x, folds)


def _folded_sum(x, folds):
    """The folded sum, with the plain sum's gradient (the upstream broadcast along the row):
    autodiff of the parts' slices padded each part's gradient back to a full-size buffer
    (categorical focal cross-entropy under XLA at 2^20: 5.9 against 3.2 ms)."""

    @custom_gradient
    def summed(x):
        width = tf.shape(x)[-1]
        part = width // folds
        folded = x[..., :part]
        for k in range(1, folds):
            folded = folded + x[..., k * part:(k + 1) * part]
        total = tf.reduce_sum(folded, axis=-1) + tf.reduce_sum(x[..., folds * part:], axis=-1)

        def grad(upstream):
            return tf.broadcast_to(upstream[..., None], tf.shape(x))

        return total, grad

    return summed(x)


def trailing_axes(axis, rank):
    """How many trailing axes ``axis`` reduces in a tensor of ``rank`` (``None``: all of them);
    ``None`` unless they are exactly the last ``k >= 1`` axes."""
    if axis is None:
        return rank or None
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    if not axes or not all(isinstance(a, int) for a in axes):
        return None
    reduced = sorted({a % rank for a in axes}) if rank else []
    k = len(reduced)
    return k if k and reduced == list(range(rank - k, rank)) else None


def float64_sum(x, axis, keepdims=False, rounded=True):
    """``tf.reduce_sum(x, axis, keepdims)`` summed in float64, rounded once to ``x``'s dtype
    (left in float64 with ``rounded=False``, for a caller that goes on in float64).

    Over trailing axes (the last, the last ``k``, or all: ``None``) through
    ``folded_row_sum`` of ``x`` reshaped to rows (free: the reduced entries are contiguous):
    XLA forms the float64 terms and sums them in one loop, where a float32 sum of a computed
    expression went to YNNPACK through a full-size buffer. Other axes take ``tf.reduce_sum``
    in ``x``'s dtype (a float64 buffer there would be twice the float32 one). Measured in the
    stable row reduction's two sums (``ops/_softmax._shifted_exponentials``), one core,
    alternating with Keras: under XLA ``logsumexp`` 1.76 -> 1.23x at 2^22, ``log_softmax``
    2.06 -> 1.71x, sparse cross-entropy from logits 0.96 -> 0.69x; categorical from logits
    1.36 -> 1.11x at 2^20; 2^14 unchanged; cosine similarity's three sums of products 0.63 ->
    0.37x at 2^20; Tversky's three sums over the whole batch 0.95 -> 0.21x under XLA and
    1.43 -> 0.41x in a plain tf.function at 2^20 (the rows' sums added apart, ``+ (-0.0)``:
    merged with them, XLA wrote the fold out, 0.39x). Only for cheap summed expressions: where
    the terms are transcendental and the gradient needs them too, XLA computes them twice,
    in the sum's loop and in the gradient's (MAPE 1.52 -> 3.92x, binary cross-entropy 1.11
    -> 1.27x at 2^20: left on YNNPACK).
    """
    rank = len(x.shape)
    k = trailing_axes(axis, rank)
    if k is None:
        total = tf.reduce_sum(x, axis=axis, keepdims=keepdims)
        return total if rounded else tf.cast(total, tf.float64)
    kept = x.shape[: rank - k]
    if k == 1:
        total = folded_row_sum(tf.cast(x, tf.float64))
    else:  # rows of the last axis, then their sums: a whole-tensor fold was written out
        shape = tf.shape(x)
        rows = tf.reshape(x, tf.concat([shape[: rank - k], [-1], shape[-1:]], 0))
        total = tf.reduce_sum(_summable(folded_row_sum(tf.cast(rows, tf.float64))), axis=-1)
    if keepdims:
        total = tf.reshape(total, tf.concat([tf.shape(total), tf.ones([k], tf.int32)], 0))
        kept = kept.concatenate([1] * k)
    total.set_shape(kept)
    return tf.cast(total, x.dtype) if rounded else total


def split_sum_of_fractions(p, axis):
    """``sum(p)`` over ``axis`` for float64 ``p`` in ``[0, 1]`` as ``(high, low)``, without
    a rounding per entry.

    ``hi``, ``p`` rounded to a multiple of 2^-26 (``round``: XLA folds the shorter
    ``(p + 1.5 * 2^26) - 1.5 * 2^26`` back to ``p``), sums exactly in any order for
    rows of up to 2^26 entries; the rest, ``p - hi`` (exact, at most 2^-27), adds its
    roundings at 2^-27 of the total's scale. A plain sum adds a rounding per entry (in
    float32 that was 11.8 ULP of softmax on rows of 64).
    """
    hi = tf.round(p * 2.0**26) * 2.0**-26
    return (tf.reduce_sum(hi, axis=axis, keepdims=True),
            tf.reduce_sum(p - hi, axis=axis, keepdims=True))


def float64_mean(x):
    """``tf.reduce_mean(x, axis=-1)`` taken in float64 (``folded_row_sum``), rounded once to
    ``x``'s dtype: one XLA loop with no buffer, and a sum that does not overflow where the
    mean does not. For cheap summed expressions only (see :func:`float64_sum`)."""
    count = tf.cast(tf.shape(x)[-1], tf.float64)
    return tf.cast(folded_row_sum(tf.cast(x, tf.float64)) / count, x.dtype)


# Rows whose largest entry is above max / 2^40 are scaled by 2^-40 (shrunk_rows): a sum of
# up to 2^31 entries then stays below max / 2^9, and its reciprocal is a normal number.
_SHRINK = 2.0**-40


def shrunk_rows(x, axis):
    """``(x f, f, max(x) f)`` per row (kept axis), ``f = 2^-40`` where the row's largest entry
    is above ``max / 2^40`` and 1 elsewhere: the row's sum cannot overflow, nor its reciprocal
    flush, and ratios to the sum are unchanged (``f`` is a power of two), except for entries
    below ``tiny / f``, which are then below ``2^-80`` of ``max(x)`` (a row of probabilities
    summing past the float range: 87.3, ``-log(tiny)``, for ``ln 2``)."""
    largest = tf.reduce_max(x, axis=axis, keepdims=True)
    large = largest > x.dtype.max * _SHRINK
    factor = tf.where(large, tf.constant(_SHRINK, x.dtype), tf.constant(1.0, x.dtype))
    return x * factor, factor, largest * factor


def top_and_rest(x, total, axis):
    """Where an entry exceeds half its row's sum ``total``, and per row the sum of the others.

    A row of non-negative entries has at most one such entry, and for it ``1 - x / total`` is
    ``rest / total`` and ``-log(x / total)`` is ``log1p(rest / x)``: ``x / total`` rounds within
    an ULP of 1 once ``x`` holds all but a sliver of the sum, while ``rest``, summed apart from
    ``x``, keeps the sliver. A negative ``rest`` (negative entries, or two entries above half
    the sum) is not such a row: ``top`` is false there. ``rest`` keeps ``axis`` (size 1).

    ``top`` compares each entry with a per-row threshold (``+inf`` in such a row) rather than
    and-ing ``x > total / 2`` with the row's ``rest >= 0``: XLA on CPU (TF 2.21) does not
    vectorize a loop that broadcasts a row's boolean along rows narrower than 32 entries, and
    the loop that takes ``log q`` at ``top`` ran scalar (categorical cross-entropy from
    probabilities, ``[2^17, 8]``, one core: that loop 5.4 ms, Keras's whole loss 2.1 ms).
    """
    half = 0.5 * total
    others = tf.where(x > half, tf.zeros_like(x), x)
    if x.dtype == tf.float64:  # one loop, no buffer (see float64_sum)
        rest = float64_sum(others, axis, keepdims=True)
    else:
        rest = tf.reduce_sum(others, axis=axis, keepdims=True)
    threshold = tf.where(rest >= 0, half, tf.constant(math.inf, x.dtype))
    return x > threshold, rest


def max_shift(x, axis):
    """The row maximum ``m``, where it is reached, and ``x - m`` as ``z + z_low``.

    ``x - m`` is carried as ``z + z_low`` (TwoSum), so ``exp(x - m)`` is
    ``exp(z) * (1 + z_low)`` to full relative accuracy: the rounding of
    ``x - m`` alone would cost ``|x - m| * eps / 2`` relative (60 ULP of
    softmax at ``x - m = -100`` in float32). ``z`` is exactly 0 at the maxima,
    so a ``+inf`` maximum gives 0 there and ``-inf`` elsewhere instead of
    ``inf - inf = nan``. That 0 is a constant, and ``z`` gets ``x - m``'s slope
    (:func:`with_shift_slope`): differentiated again, the tied maxima of a row kept
    their dependence on ``x``.
    """
    m = tf.reduce_max(x, axis=axis, keepdims=True)
    is_max = tf.equal(x, m)
    zero = tf.zeros_like(x)
    difference, error = two_difference(x, m)
    z = with_shift_slope(tf.where(is_max, zero, difference), x, m, axis)
    return m, is_max, z, tf.where(is_max, zero, error)


def with_shift_slope(value, x, m, axis, exponential=False):
    """``value``, a function of ``x - m`` (``m`` the row maximum over ``axis``, kept) that its
    values alone express, with that dependence as its derivative: ``x - m``'s (``value`` is
    ``x - m``, slope 1) or, ``exponential``, ``exp(x - m)``'s (slope ``value`` itself, taken
    through this function again: right at every order).

    For the max-shifted pieces, whose values at the maxima are constants (``x - m`` is 0
    there, ``exp(x - m)`` a count of 1s), as ``inf - inf`` must not be formed: the slope is
    that of the formula, also at ``m = +-inf`` (linear in the upstream, no ``inf - inf``).
    Only a gradient that differentiates the pieces reads it (a second-order gradient:
    the kernels' gradients are their own); a single maximum was right without it (``m``
    moves with it), tied maxima saw their dependence on ``x`` only through
    ``reduce_max``'s ``1/k`` split. The value goes through an identity: no operation in
    the XLA computation (the same HLO as without it).
    """

    @custom_gradient
    def shifted(x, m):
        def grad(upstream):
            if exponential:
                upstream = upstream * with_shift_slope(value, x, m, axis, exponential=True)
            return upstream, -tf.reduce_sum(upstream, axis=axis, keepdims=True)

        return value, grad

    return shifted(x, m)


def softmax_gradient(y, upstream, axis, where):
    """The Jacobian-vector product of softmax from its output ``y``: ``y (g - <g, y>)``."""
    # Masked entries and empty rows have y = 0: no gradient. float64_sum: one
    # loop that forms and sums g y, where a float32 sum wrote it out for YNNPACK.
    gradient = y * (upstream - float64_sum(upstream * y, axis, keepdims=True))
    if where is None:
        return gradient
    # In a row holding a NaN, <g, y> is NaN and a masked entry's 0 * NaN too: 0 there, as
    # the kernel's own gradient gives (which this path replaces from 2^18 entries eagerly).
    return tf.where(where, gradient, tf.zeros_like(gradient))


def log_softmax_gradient(y, upstream, axis, where):
    """The Jacobian-vector product of log-softmax from its output ``y``: ``g - exp(y) sum(g)``."""
    # Outputs at -inf (masked or -inf entries, empty rows) are constants: their upstream
    # is dropped.
    minus_inf = tf.equal(y, tf.constant(-math.inf, y.dtype))
    upstream = tf.where(minus_inf, tf.zeros_like(upstream), upstream)
    # float64_sum: one loop with the select, no buffer of the masked upstream.
    return upstream - tf.exp(y) * float64_sum(upstream, axis, keepdims=True)


def with_softmax_slope(x, y, axis):
    """``y``, the softmax of ``x`` along ``axis`` however a gradient function formed it, as a
    function of ``x`` whose derivative is softmax's: ``y (g - sum(g y))``, cast to ``x``'s dtype.

    A softmax formed from the max-shifted pieces takes the maxima's terms as constants
    (``exp(0)``, a 1), which is what their values need (no ``inf - inf``) but not their
    derivative: differentiated again (nested tapes, a gradient penalty), a row whose
    maximum is tied saw the maxima's dependence on ``x`` only through ``reduce_max``'s
    ``1/k`` split of ``m``'s slope, and the Hessian of ``logsumexp`` at ``[1, 1, 0]`` was
    ``[[.033, .033, -.066], ...]`` where ``diag(p) - p p^T`` is ``[[.244, -.178, -.066],
    ...]`` (a row ``[0, 0, 0, -80]`` got zeros). A single maximum was right (``m`` then
    moves with it). ``max_shift`` and ``_shifted_exponentials`` give their pieces that
    slope (:func:`with_shift_slope`), but not every softmax is formed from
    those (the focal loss's ``q``). The derivative declared here
    is exact whatever ``y`` was formed from, and takes ``y`` through this function again,
    so every further order is right too.

    First-order code pays nothing: the value is ``y`` through an identity (no operation
    at all in the XLA computation, the same HLO), and the slope is formed only where an
    outer tape differentiates the gradient. Rows of ``+inf`` or ``-inf`` keep their
    values (``y`` is finite there: zeros, or ``1/k`` at ``k`` entries of ``+inf``), and a
    NaN row has a NaN slope.
    """
    return _with_output_slope(x, y, axis, softmax_gradient)


def with_log_softmax_slope(x, y, axis):
    """``y``, the log-softmax of ``x`` along ``axis``, as a function of ``x`` whose derivative is
    log-softmax's (``g - exp(y) sum(g)``, outputs at ``-inf`` constants): see
    :func:`with_softmax_slope`, for a gradient function that reads the output it formed from
    the max-shifted pieces (``0 - log1p(s)`` at the maxima, a constant shift)."""
    return _with_output_slope(x, y, axis, log_softmax_gradient)


def _with_output_slope(x, y, axis, gradient_from_output):
    """``y`` as a function of ``x`` whose derivative is ``gradient_from_output(y, g, axis)``,
    reading ``y`` through this function again (right at every order)."""

    @custom_gradient
    def of(x):
        def grad(upstream):
            again = _with_output_slope(x, y, axis, gradient_from_output)
            return tf.cast(gradient_from_output(again, upstream, axis, where=None), x.dtype)

        return y, grad

    return of(x)


def written_once(value, row_value):
    """``value / 1``, the 1 computed per row (where ``row_value`` is a number; 0 where it
    is NaN, whose row is NaN anyway): an exact no-op that makes ``value`` end in a division.

    XLA on CPU repeats a cheap elementwise value in the loop of every fusion that reads it
    (a row sum's, the output's, a backward pass's) and writes out only its costly
    instructions; a division is costly to it, so ``value`` is formed in one loop, written
    once, and every other loop reads it (softmax: the corrected exponentials, whose TwoSum
    was formed in four loops). A constant 1 would be folded away.
    """
    one = tf.cast(tf.equal(row_value, row_value), value.dtype)
    return tf.math.divide(value, one, name="written_once")


def log1p_once(s):
    """``accurate_log1p(s)`` of a value per row (a row's sum), formed once per row.

    The series is cheap instructions only, so XLA on CPU repeated it in every loop that
    broadcasts the result along the rows (the loss's, the gradient's), once per element
    of each: on narrow rows the series was most of those loops' work (categorical focal
    cross-entropy from logits, ``[2^17, 8]``, one core, under XLA: its 25-term float64
    series in three loops). Written once (:func:`written_once`), it is formed in a loop
    over the rows and read from there.
    """
    return written_once(accurate_log1p(s), s)


def empty_rows(m, total):
    """Rows whose maximum ``m`` is ``-inf`` (all ``-inf``, or masked) and whose ``total``
    is not NaN."""
    # reduce_max may skip NaN (XLA does): a row of NaN and -inf has m = -inf
    # but a NaN sum, and must stay NaN, not count as empty.
    return tf.logical_and(tf.equal(m, tf.constant(-math.inf, m.dtype)),
                          tf.logical_not(tf.math.is_nan(total)))
