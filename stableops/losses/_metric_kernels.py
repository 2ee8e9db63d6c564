"""Metric-learning kernels: pairwise distances, triplet mining, contrastive and NT-Xent losses.

Private kernels behind ``stableops.losses.TripletLoss``, ``ContrastiveLoss`` and
``NTXent`` (no public ``stableops.ops`` names). Each takes a batch of
embeddings ``x`` of shape ``[batch, dim]`` and returns one loss per row.

The tricks, each used once:

* **Exact batch scaling.** ``x = s * u`` with ``s`` a power of two close to the
  batch's largest ``|x|`` (exact division), so differences and squares of ``u``
  can neither overflow (embeddings of ``1e30``) nor underflow (``1e-30``). The
  losses are formed from *differences* of scaled distances and scaled back
  once, ``s**p * (r_ap - r_an)``: no ``inf - inf`` when two distances are each
  near the dtype's range. The scaling's gradients are each op's own (``g / s``
  and ``s**p g``) for ``s`` from 2^-20 to 2^20 (:func:`_batch_scaling`), so a second
  tape (a gradient penalty) differentiates the right function; beyond,
  ``u = x / s`` has gradient ``g`` and ``s**p * v`` gradient ``s**(p-1) g``, the same
  product with the power of ``s`` cancelled before it is formed, so no gradient
  overflows where the true one is finite (the second order is then off by ``s``).
* **Select with the Gram matrix, compute from differences.** The Gram
  expansion ``|u_i|^2 + |u_j|^2 - 2 u_i.u_j`` (one matmul) is cheap but
  cancels to noise (or a negative number) for near-duplicates, where
  ``||u_i - u_j||`` from differences is accurate. Batch-hard triplet mining
  *chooses* partners with the Gram form and recomputes only the chosen
  distances from differences (``[batch, dim]`` gathers). The all-pairs
  contrastive loss and semi-hard mining use the Gram form where it cannot
  cancel much (``d^2 > 2^-5 (|u_i|^2 + |u_j|^2)`` for every pair) and, for a
  batch with any closer pair, the distances from differences one row at a
  time (a ``[batch, dim]`` tensor alive, never ``[batch, batch, dim]``), with
  the gradient formed the same way.
* **Zero gradient at zero distance.** ``ops.safe_norm`` has gradient 0 at the
  zero vector, so an embedding meeting itself or a duplicate gives gradient 0,
  where ``sqrt`` of a zero squared distance gives ``inf * 0 = nan``.
* **Mining by index.** Hardest/semi-hard partners are chosen as the first
  column reaching a max/min (as ``argmax``/``argmin``, also for an empty batch)
  over masked copies (the fill is only compared, never
  used in arithmetic) and read with a gather, so the gradient reaches exactly
  the chosen distance.
* **NaN in, NaN out.** A row whose distances hold NaN gets a NaN loss
  explicitly (how ``max``/``min`` kernels pass NaN depends on the CPU); a NaN
  embedding, which enters every row's distances, makes the batch's scale NaN.
* **Masked log-sum-exp.** NT-Xent leaves out each row's self-similarity with
  ``ops.log_softmax(where=...)`` instead of a ``-inf`` fill (NaN when a row is
  fully masked, and ``inf - inf`` in autodiff).
"""

from __future__ import annotations

import typing

import tensorflow as tf

from stableops._internal.dtypes import dtype_limits, to_compute_saturating
from stableops._internal.elementary import accurate_log1p
from stableops._internal.gradients import custom_gradient
from stableops._internal.kernel import xla_kernel
from stableops._internal.reductions import sum_over
from stableops.ops import l2_normalize, safe_norm

DISTANCES = ("euclidean", "squared", "cosine")
STRATEGIES = ("hard", "semi_hard")

# The exponent field of IEEE binary32/binary64: clearing the mantissa of a
# positive normal number rounds it down to a power of two, exactly.
_EXPONENT_MASK = {
    tf.float32: (tf.int32, 0x7F800000),
    tf.float64: (tf.int64, 0x7FF0000000000000),
}


# ----------------------------------------------------------------------------
# Scaling and pairwise distances
# ----------------------------------------------------------------------------


class _Scaling(typing.NamedTuple):
    """``x = scale * u`` (:func:`_batch_scaling`); ``power``: the distances' power of ``scale``."""

    scale: tf.Tensor  # a power of two
    power: int
    plain: tf.Tensor  # a scalar bool: the scaling's gradients are each op's own


# The scales whose gradients are each scaling op's own (_batch_scaling): from 2^-20 to 2^20.
# Beyond, the loss's extra power of the scale in an intermediate gradient (s**p before the
# 1 / s) could overflow, or underflow: entries of the smallest normal number had contrastive
# gradients of 0 (s^2 r g flushed, where the true 2 s r g is normal).
_PLAIN_SCALES = (2.0**-20, 2.0**20)


def _batch_scaling(x, power, nan_batch=False):
    """``scale``: the largest power of two not above the batch's largest finite ``|x|``
    (``tiny`` at least, ``1/tiny`` at most: from ``2^127`` in float32 its reciprocal flushed
    to 0, and every distance was 0). ``plain`` where ``scale`` is within ``_PLAIN_SCALES``: then
    :func:`_scaled_down` and :func:`_scaled_up` take their own gradients. With ``nan_batch``,
    NaN for a batch holding NaN (every distance, every anchor's loss NaN): NaN counts as
    ``inf`` in the same maximum, where a reduction of its own was a pass over the batch."""
    tiny = dtype_limits(x.dtype).tiny
    magnitude = tf.where(tf.math.is_finite(x), tf.abs(x), tf.zeros_like(x))
    if nan_batch:
        magnitude = tf.where(tf.math.is_nan(x), tf.constant(float("inf"), x.dtype), magnitude)
    largest = tf.reduce_max(magnitude)
    int_dtype, mask = _EXPONENT_MASK[x.dtype]
    # tiny at least: an all-zero batch keeps a positive scale.
    bits = tf.bitcast(tf.maximum(largest, tiny), int_dtype)
    bits = tf.bitwise.bitwise_and(bits, tf.constant(mask, int_dtype))
    scale = tf.minimum(tf.bitcast(bits, x.dtype), 1.0 / tiny)  # |x| / scale below 4
    if nan_batch:
        scale = tf.where(tf.math.is_inf(largest), tf.constant(float("nan"), x.dtype), scale)
    scale = tf.stop_gradient(scale)
    low, high = _PLAIN_SCALES
    return _Scaling(scale, power, tf.logical_and(scale >= low, scale <= high))


def _scaled_down(x, scaling):
    """``x / scale`` (exact); gradient ``g / scale``, or ``g`` where the ``1 / scale`` moves
    to :func:`_scaled_up` (where ``scaling.plain`` is false).

    Formed as ``x * (1 / scale)``: the reciprocal of a power of two between
    ``tiny`` and ``max`` is exact, and a product is cheaper than a quotient.
    """
    reciprocal = 1.0 / scaling.scale
    factor = tf.where(scaling.plain, reciprocal, tf.ones_like(reciprocal))

    @custom_gradient
    def down(v):
        return v * reciprocal, lambda upstream: upstream * factor

    return down(x)


def _scaled_up(value, scaling):
    """``scale**power * value`` (as repeated products); gradient ``scale**power * g``, or
    ``scale**(power - 1) * g`` where :func:`_scaled_down` moved its ``1 / scale`` here."""
    scale, power = scaling.scale, scaling.power
    if power == 0:
        return value
    last = tf.where(scaling.plain, scale, tf.ones_like(scale))

    @custom_gradient
    def up(v):
        result = v
        for _ in range(power):
            result = result * scale

        def grad(upstream):
            for _ in range(power - 1):
                upstream = upstream * scale
            return upstream * last

        return result, grad

    return up(value)


def _cosine_distances(u):
    """``[batch, batch]`` ``1 - cos(u_i, u_j)``, clamped at 0, diagonal exactly 0.

    A zero vector is at distance 1 from everything but itself.
    """
    unit = l2_normalize(u, axis=-1)
    d = 1.0 - tf.matmul(unit, unit, transpose_b=True)
    d = tf.where(d < 0, tf.zeros_like(d), d)  # rounding below 0; NaN kept
    return tf.where(tf.eye(tf.shape(u)[0], dtype=tf.bool), tf.zeros_like(d), d)


# The Gram form's rounding error in d^2 is at most about dim * eps *
# (|u_i|^2 + |u_j|^2) (a dot product's bound; typically sqrt(dim) * eps); where
# d^2 exceeds _CANCELS times that sum its relative error is at most
# dim * eps / _CANCELS.
_CANCELS = 2.0**-5


def _gram_squared(u):
    """``max(|u_i|^2 + |u_j|^2 - 2 u_i.u_j, 0)`` ``[batch, batch]``: one matmul ``G``, the
    squared norms its diagonal (``G_ii + G_jj - 2 G_ij``: no row sum of ``u * u`` of their
    own, a pass over the batch; contrastive at ``[64, 256]``, with the NaN test in the
    scale's maximum (:func:`_batch_scaling`), one core, a plain ``tf.function``, 1.07 ->
    1.00x the hand-written loss).

    NaN is kept; the diagonal is not forced to 0.
    """
    gram = tf.matmul(u, u, transpose_b=True)
    norms = tf.linalg.diag_part(gram)
    raw = norms[:, None] + norms[None, :] - 2.0 * gram
    return tf.where(raw < 0, tf.zeros_like(raw), raw), norms


def _some_pair_cancels(d2, norms, eye):
    """Whether the Gram form cancels for some pair (see :func:`_distances`); a scalar bool.

    A pair closer than ``sqrt(_CANCELS)`` times its norms, or two tiny rows
    whose squares lose bits to flushing. NaN compares false: a NaN batch keeps
    the Gram form (and stays NaN).
    """
    limits = dtype_limits(d2.dtype)
    floor = tf.constant(limits.tiny / limits.eps, d2.dtype)
    bound = _CANCELS * (norms[:, None] + norms[None, :]) + floor
    return tf.reduce_any(tf.logical_and(tf.logical_not(eye), d2 <= bound))


def _by_rows(fn, *rows):
    """``fn(rows[0][i], rows[1][i], ...)`` for each ``i``, stacked (``tf.map_fn``).

    One row at a time: the callers' ``[batch, dim]`` difference ``u - u_i`` is
    the largest tensor alive, never a ``[batch, batch, dim]`` one (2 GB at
    batch 1024, width 512). The rows get one zero row more, dropped from the
    result: XLA compiles the loop's read of a row as a slice of one row, which
    an empty batch cannot give (a compile error in every regime, also where
    the branch holding the loop is not taken).
    """
    padded = [tf.pad(r, [[0, 1]] + [[0, 0]] * (len(r.shape) - 1)) for r in rows]
    return tf.map_fn(lambda row: fn(*row), padded, fn_output_signature=rows[0].dtype)[:-1]


def _distances(u, squared):
    """``[batch, batch]`` Euclidean (or squared) distances, diagonal 0, with their gradient.

    The Gram form (one matmul) unless it cancels for some pair (a pair closer
    than ``sqrt(_CANCELS)`` times the pair's norms, or two tiny rows whose
    squares lose bits to flushing); then every distance from its difference
    ``u_i - u_j``, one row at a time (:func:`_by_rows`): the accurate form for
    near-duplicates, with ``safe_norm``'s zero gradient at a duplicate. In the
    Gram form every off-diagonal ``d^2`` is positive with relative error at
    most about ``dim * eps / _CANCELS`` (typically ``sqrt(dim) * eps /
    _CANCELS``). The branch is chosen once per call, for the value and the
    gradient alike.

    Gradient (custom): ``sum_j c_ij (u_i - u_j)`` with ``c = (g + g^T) / d``
    (0 where ``d = 0``; ``2 (g + g^T)`` for squared distances): in the Gram form
    one matmul, ``rowsum(c) u - c u``; from differences, row by row.
    """

    def from_differences(v):
        def row(anchor):
            difference = v - anchor
            if squared:
                return sum_over(difference * difference, axis=-1)
            return safe_norm(difference, axis=-1)

        return _by_rows(row, v)

    @custom_gradient
    def distances(v):
        eye = tf.eye(tf.shape(v)[0], dtype=tf.bool)
        d2, norms = _gram_squared(v)
        exact = _some_pair_cancels(d2, norms, eye)
        from_gram = d2 if squared else tf.sqrt(d2)
        d = tf.cond(exact, lambda: from_differences(v), lambda: from_gram)
        d = tf.where(eye, tf.zeros_like(d), d)  # the Gram form's diagonal is rounding noise

        def grad(upstream):
            both = upstream + tf.transpose(upstream)
            if squared:
                c = tf.where(eye, tf.zeros_like(d), 2.0 * both)
            else:
                zero = tf.equal(d, 0.0)  # the diagonal, and duplicates in the exact branch
                c = tf.where(zero, tf.zeros_like(d), both / tf.where(zero, tf.ones_like(d), d))
            return tf.cond(
                exact,
                lambda: _by_rows(
                    lambda anchor, weights: tf.linalg.matvec(anchor - v, weights, transpose_a=True),
                    v,
                    c,
                ),
                lambda: tf.reduce_sum(c, axis=1, keepdims=True) * v - tf.matmul(c, v),
            )

        return d, grad

    return distances(u)


def _selection_distances(u, distance):
    """Distances that only *choose* partners (no gradient), diagonal 0.

    Squared distances as :func:`_distances` forms them (the Gram form unless
    some pair cancels in it: near-duplicates at a large scale, ``2^23 + 1`` and
    ``2^23``, would otherwise be chosen by rounding noise), or cosine
    distances. Squared and Euclidean distances choose the same partners.
    """
    u = tf.stop_gradient(u)
    if distance == "cosine":
        return _cosine_distances(u)
    return _distances(u, squared=True)


def _distances_to(u, index, distance):
    """``d(u_i, u_index[i])`` ``[batch]`` from differences, as :func:`_distances` forms them."""
    difference = u - tf.gather(u, index)
    if distance == "squared":
        return sum_over(difference * difference, axis=-1)
    return safe_norm(difference, axis=-1)  # gradient 0 at a duplicate (or the anchor itself)


def _prepared(labels, x, distance):
    """``(labels [batch], d [batch, batch], scaling, row_is_nan)`` in the compute dtype."""
    x = to_compute_saturating(x)
    if distance == "cosine":
        scaling = _Scaling(tf.ones([], x.dtype), 0, tf.constant(True))
        d = _cosine_distances(x)
    else:
        scaling = _batch_scaling(x, 2 if distance == "squared" else 1)
        d = _distances(_scaled_down(x, scaling), squared=distance == "squared")
    row_is_nan = tf.reduce_any(tf.math.is_nan(d), axis=1)
    if labels.dtype.is_floating:
        row_is_nan = tf.logical_or(row_is_nan, tf.math.is_nan(labels))
    return labels, d, scaling, row_is_nan


def _nan_where(condition, loss):
    return tf.where(condition, tf.constant(float("nan"), loss.dtype), loss)


# ----------------------------------------------------------------------------
# Triplet loss
# ----------------------------------------------------------------------------


def _pick(d, index):
    """``d[i, index[i, ...]]`` for each row ``i``; the gradient reaches exactly those entries."""
    return tf.gather(d, index, batch_dims=1)


def _first_extreme(values, reduce):
    """The first index along the last axis of ``values``'s ``reduce`` (max/min) there.

    ``argmax``/``argmin`` as two plain reductions (XLA's CPU argmax, a
    variadic reduction, is several times slower, and fails on an empty
    batch, where these give an empty result); a row holding NaN gets an
    arbitrary valid index (its loss is set to NaN anyway).
    """
    batch = tf.shape(values)[-1]
    extreme = reduce(values, axis=-1, keepdims=True)
    columns = tf.range(batch)
    index = tf.reduce_min(tf.where(tf.equal(values, extreme), columns, batch), axis=-1)
    return tf.minimum(index, batch - 1)


def _hardest_partners(labels, d):
    """Each anchor's hardest positive and nearest negative in ``d`` (``[batch]`` indices,
    the first column reaching the max/min).

    An anchor without positives pairs with itself (the diagonal's 0, with ``d >= 0``). One
    without negatives takes, as TFA, the row's maximum: all others are then positives, so
    that is the hardest positive (loss = margin).
    """
    same = tf.equal(labels[:, None], labels[None, :])  # the diagonal included
    negative = tf.logical_not(same)  # never the diagonal
    hardest_positive = _first_extreme(tf.where(same, d, tf.constant(-1.0, d.dtype)), tf.reduce_max)
    nearest_negative = tf.where(
        tf.reduce_any(negative, axis=1),
        _first_extreme(tf.where(negative, d, tf.constant(float("inf"), d.dtype)), tf.reduce_min),
        hardest_positive,
    )
    return hardest_positive, nearest_negative


@xla_kernel
def _batch_hard_partners(labels, x, distance):
    """Each anchor's hardest positive and nearest negative (``[batch]`` indices), and the
    batch's scale (:func:`_batch_scaling`; NaN for a batch holding NaN). No gradient: the
    caller passes ``x`` through ``tf.stop_gradient``.

    Chosen with the selection distances (:func:`_selection_distances`).
    """
    x = to_compute_saturating(x)
    # NaN in, NaN out: a NaN embedding enters every anchor's distances, so every loss is NaN.
    scale = _batch_scaling(x, 1, nan_batch=True).scale
    d = _selection_distances(x * (1.0 / scale), distance)  # exact: a power of two
    return (*_hardest_partners(labels, d), scale)


@xla_kernel
def _triplet_of_partners(labels, x, positive, negative, scale, margin, distance):
    """``max(d(a, p) - d(a, n) + margin, 0)`` for each anchor ``a`` of ``x`` with its partners'
    indices, the distances from differences of the embeddings divided by ``scale``."""
    x = to_compute_saturating(x)
    low, high = _PLAIN_SCALES
    plain = tf.logical_and(scale >= low, scale <= high)
    scaling = _Scaling(scale, 2 if distance == "squared" else 1, plain)
    u = _scaled_down(x, scaling)
    gap = _distances_to(u, positive, distance) - _distances_to(u, negative, distance)
    loss = tf.nn.relu(_scaled_up(gap, scaling) + margin)
    # Explicitly: how relu (a max) passes NaN depends on the CPU. A NaN scale makes every
    # gap NaN.
    row_is_nan = tf.math.is_nan(gap)
    if labels.dtype.is_floating:
        row_is_nan = tf.logical_or(row_is_nan, tf.math.is_nan(labels))
    return _nan_where(row_is_nan, loss)


def _triplet_hard(labels, x, margin, distance):
    """Batch-hard triplet loss, Euclidean or squared: chosen with the Gram form, from differences.

    The hardest positive and nearest negative of each anchor are chosen with
    Gram-matrix squared distances (one matmul, no gradient); the two chosen
    distances are then computed from differences, so the value and gradient
    are those of the exact distances and the gradient reaches exactly the
    chosen pairs (0 at a duplicate). Partners whose squared distances differ
    by less than the Gram form's rounding (about ``dim * eps * (|u_a|^2 +
    |u_j|^2)``, scaled) may be chosen differently from exact mining: the loss
    then changes by at most that rounding in ``d^2`` (its square root in
    ``d`` for Euclidean distances near 0).

    Two kernels: the partners (no gradient), then the loss of each anchor from them, so
    the backward pass forms the two chosen distances again, not the Gram form and the
    mining, which one kernel's backward call ran again. Forward and backward in a plain
    ``tf.function``, one core, against the hand-written loss (with ``safe_norm``'s float64
    squares): ``[64, 256]`` 1.23 -> 1.07x, ``[256, 256]`` 1.03 -> 0.69x; under XLA (the
    kernels inlined) 1.09 -> 1.08x and 0.71 -> 0.70x; eagerly 0.25 -> 0.34x and 0.32 ->
    0.38x (the second compiled call).
    """
    positive, negative, scale = _batch_hard_partners(
        labels, tf.stop_gradient(x), distance=distance
    )
    return _triplet_of_partners(
        labels, x, positive, negative, scale, margin=margin, distance=distance
    )


def triplet_kernel(labels, x, margin, strategy, distance):
    """Per-anchor triplet losses of ``x`` ``[batch, dim]`` with class ``labels`` ``[batch]``.

    TensorFlow Addons' semantics (``triplet_hard_loss``/``triplet_semihard_loss``):

    * ``hard``: ``max(d(a, p*) - d(a, n*) + margin, 0)`` with ``p*`` the
      farthest positive and ``n*`` the nearest negative; an anchor without a
      positive takes itself (distance 0), one without a negative the farthest
      embedding in the batch. The batch mean is TFA's loss.
    * ``semi_hard``: for each positive pair ``(a, p)``, ``n*`` is the nearest
      negative farther than ``p``, or the farthest negative if there is none;
      the pair's loss is ``max(d(a, p) - d(a, n*) + margin, 0)``. Anchor
      ``a``'s value is the sum over its pairs times ``batch / pairs`` (all
      pairs in the batch), so the batch mean is TFA's mean over pairs; a batch
      without positive pairs gives 0 (TFA: ``0/0 = nan``).
    """
    if strategy == "hard" and distance != "cosine":
        return _triplet_hard(labels, x, margin=margin, distance=distance)
    if strategy == "hard":
        return _batch_hard_cosine(labels, x, margin=margin)
    # The partners in a call of their own (no gradient), as for batch-hard above: the
    # backward pass forms the distances again, not the mining, a pass over [batch, batch,
    # batch]. (Batch-hard cosine's mining is two passes over [batch, batch]: one call with
    # it is faster than two without.)
    negatives = _semi_hard_negatives(labels, tf.stop_gradient(x), distance=distance)
    return _semi_hard_triplet(labels, x, negatives, margin=margin, distance=distance)


def _pair_masks(labels, d):
    """``(positive, negative)`` ``[batch, batch]`` masks of a labelled batch: the other rows
    of the anchor's class, and those of other classes."""
    other = tf.logical_not(tf.eye(tf.shape(d)[0], dtype=tf.bool))
    same = tf.equal(labels[:, None], labels[None, :])
    return tf.logical_and(same, other), tf.logical_and(tf.logical_not(same), other)


@xla_kernel
def _batch_hard_cosine(labels, x, margin):
    """Batch-hard :func:`triplet_kernel` with cosine distances (from one matmul)."""
    labels, d, scaling, row_is_nan = _prepared(labels, x, "cosine")
    hardest_positive, nearest_negative = _hardest_partners(labels, d)
    gap = _pick(d, hardest_positive) - _pick(d, nearest_negative)
    loss = tf.nn.relu(_scaled_up(gap, scaling) + margin)
    return _nan_where(row_is_nan, loss)


@xla_kernel
def _semi_hard_negatives(labels, x, distance):
    """The negative of each pair ``(a, p)`` of :func:`triplet_kernel`'s semi-hard mining,
    ``[batch, batch]`` (no gradient: the caller passes ``x`` through ``tf.stop_gradient``).

    The loss's call forms the same distances again, as a separate XLA computation: a
    negative within a rounding of its positive's distance may count as farther here and
    not there, where the definition itself jumps (a tie is not semi-hard).
    """
    labels, d, _, _ = _prepared(labels, x, distance)
    batch = tf.shape(d)[0]
    _, negative = _pair_masks(labels, d)
    below, above = tf.constant(-1.0, d.dtype), tf.constant(float("inf"), d.dtype)  # d >= 0
    # The farthest negative (TFA's fallback "negatives_inside"); the anchor
    # itself (distance 0, TFA's masked maximum of an empty set) if none.
    farthest_negative = tf.where(
        tf.reduce_any(negative, axis=1),
        _first_extreme(tf.where(negative, d, below), tf.reduce_max),
        tf.range(batch),
    )
    # candidates[a, p, n] = n is a negative of a farther than p. XLA fuses the comparison
    # into the two reductions (no [batch]^3 buffer): the nearest candidate's distance (inf
    # where there is none: no third reduction for whether there is one), then its first
    # column.
    d_an = d[:, None, :]
    candidates = tf.logical_and(negative[:, None, :], d_an > d[:, :, None])
    distances = tf.where(candidates, tf.broadcast_to(d_an, tf.shape(candidates)), above)
    nearest = tf.reduce_min(distances, axis=2, keepdims=True)
    columns = tf.where(tf.equal(distances, nearest), tf.range(batch), batch)
    semi_hard = tf.minimum(tf.reduce_min(columns, axis=2), batch - 1)
    return tf.where(nearest[..., 0] < above, semi_hard, farthest_negative[:, None])


@xla_kernel
def _semi_hard_triplet(labels, x, negatives, margin, distance):
    """Semi-hard :func:`triplet_kernel` from every pair's distance and the negative of each
    pair that :func:`_semi_hard_negatives` chose."""
    labels, d, scaling, row_is_nan = _prepared(labels, x, distance)
    positive, _ = _pair_masks(labels, d)
    gap = d - _pick(d, negatives)
    pair_loss = tf.nn.relu(_scaled_up(gap, scaling) + margin)
    pair_loss = tf.where(positive, pair_loss, tf.zeros_like(pair_loss))
    pairs = sum_over(tf.cast(positive, d.dtype))
    # batch / pairs: the Keras mean over anchors is then the mean over pairs.
    share = tf.cast(tf.shape(d)[0], d.dtype) / tf.maximum(pairs, 1.0)
    weight = tf.where(pairs > 0, share, tf.zeros_like(pairs))
    loss = tf.reduce_sum(pair_loss, axis=1) * weight
    return _nan_where(row_is_nan, loss)


# ----------------------------------------------------------------------------
# Contrastive loss
# ----------------------------------------------------------------------------


def _contrastive_terms(similar, d, margin):
    """``similar d^2 + (1 - similar) max(margin - d, 0)^2`` (Hadsell et al.), as products."""
    push = tf.nn.relu(margin - d)
    # d * d: autodiff forms g * d + d * g, not g * (2 d), which overflows first.
    return tf.where(similar, d * d, push * push)


@xla_kernel
def contrastive_batch_kernel(labels, x, margin):
    """Per-anchor contrastive loss over all pairs of a labelled batch (mean over the others)."""
    x = to_compute_saturating(x)
    scaling = _batch_scaling(x, 1, nan_batch=True)
    u = _scaled_down(x, scaling)
    batch = tf.shape(u)[0]
    eye = tf.eye(batch, dtype=tf.bool)
    d = _distances(u, squared=False)
    # A NaN embedding puts a NaN in every row of d (its row and column).
    row_is_nan = tf.broadcast_to(tf.math.is_nan(scaling.scale), [batch])
    if labels.dtype.is_floating:
        row_is_nan = tf.logical_or(row_is_nan, tf.math.is_nan(labels))
    similar = tf.equal(labels[:, None], labels[None, :])
    terms = _contrastive_terms(similar, _scaled_up(d, scaling), margin)
    terms = tf.where(eye, tf.zeros_like(terms), terms)
    others = tf.maximum(tf.cast(batch - 1, d.dtype), 1.0)
    # Divide before summing: a sum of large finite terms must not overflow first.
    loss = sum_over(terms / others, axis=1)
    return _nan_where(row_is_nan, loss)


@xla_kernel
def contrastive_pairs_kernel(similar, x, margin):
    """Contrastive loss of explicit pairs ``x`` ``[batch, 2, dim]``, 0/1 ``similar`` ``[batch]``."""
    x = to_compute_saturating(x)
    similar = tf.cast(similar, x.dtype)
    scaling = _batch_scaling(x, 1)
    u = _scaled_down(x, scaling)
    d = _scaled_up(safe_norm(u[:, 0] - u[:, 1], axis=-1), scaling)
    push = tf.nn.relu(margin - d)
    # TFA's contrastive_loss on the pair distance: y d^2 + (1 - y) max(m - d, 0)^2; a
    # dissimilar pair's d^2 past the range is not used (0 * inf: NaN).
    pulled = tf.where(tf.equal(similar, 0.0), tf.zeros_like(d), similar * (d * d))
    return pulled + (1.0 - similar) * (push * push)


# ----------------------------------------------------------------------------
# NT-Xent (InfoNCE)
# ----------------------------------------------------------------------------


def nt_xent_kernel(x, temperature):
    """NT-Xent of ``x`` ``[2n, dim]``: rows ``i`` and ``i + n`` (mod ``2n``) are positives.

    ``-log(exp(l_ip) / sum_{k != i} exp(l_ik))`` with ``l = s / t`` and ``s``
    the cosine similarity, as in SimCLR; computed in float32 (float64 for
    float64). With ``m`` the row's maximum over ``k != i`` (self-similarity
    left out by a mask, not a ``-inf`` fill) and ``S`` the sum of
    ``exp(l_ik - m)`` over the negatives: ``log1p(S)`` when the positive is the
    maximum (accurate when it dominates, where ``logsumexp - l_ip`` would
    cancel), ``(m - l_ip) + log(exp(l_ip - m) + S)`` otherwise (two positive
    terms). One maximum and one sum per row, as a fused softmax cross-entropy.

    Two kernels: the logits (one matmul), and the loss, row-local in them (row ``i``'s
    loss reads only row ``i`` of the logits), so its forward call also returns its
    gradient and the backward pass recomputes only the logits. As one kernel the
    backward call ran the whole loss again: in a plain ``tf.function``, one core,
    forward and backward against the hand-written loss, 1.30-1.36 -> 1.15x at
    ``[256, 256]``; at ``[64, 256]``, where a call's dispatch is most of its time, the
    third compiled call costs 2% (1.36 -> 1.44x).
    """
    return _nt_xent_rows(_nt_xent_logits(x, temperature=temperature))


@xla_kernel
def _nt_xent_logits(x, temperature):
    """``s / t`` with ``s`` the cosine similarities of ``x``'s rows, ``[2n, 2n]``."""
    unit = l2_normalize(to_compute_saturating(x), axis=-1)
    return tf.matmul(unit, unit, transpose_b=True) / temperature


@xla_kernel(row_local=True)
def _nt_xent_rows(logits):
    """The loss of each row of the NT-Xent ``logits`` (see :func:`nt_xent_kernel`)."""
    batch = tf.shape(logits)[0]
    rows = tf.range(batch)
    partner = (rows + batch // 2) % batch
    columns = rows[None, :]
    negative = tf.logical_and(columns != rows[:, None], columns != partner[:, None])
    positive_logit = tf.gather(logits, partner[:, None], batch_dims=1)[:, 0]
    # m over k != i (the diagonal's place taken by the positive). The second form does
    # not depend on the shift m: no gradient through it.
    shift = tf.stop_gradient(
        tf.reduce_max(tf.where(negative, logits, positive_logit[:, None]), axis=-1)
    )
    # From the logits on in float64 (a no-op for float64 input), rounded once: in float32
    # the roundings of l - m, of exp and of the sum reached 5.2 ULP at t = 2^-5.
    dtype = logits.dtype
    logits, shift, positive_logit = (
        tf.cast(v, tf.float64) for v in (logits, shift, positive_logit)
    )
    gap = shift - positive_logit  # >= 0; NaN (the other branch) for a NaN positive
    # The first form, log1p(sum exp(l_k - l_p)), depends on its shift: there it is the
    # positive logit itself, with its gradient (the pull towards the positive view,
    # -S / (1 + S), was lost where the positive was the row's maximum).
    shift = tf.where(tf.equal(gap, 0.0), positive_logit, shift)
    exponent = tf.where(negative, logits - shift[:, None], tf.zeros_like(logits))
    total = tf.reduce_sum(tf.where(negative, tf.exp(exponent), tf.zeros_like(logits)), axis=-1)
    loss = tf.where(
        tf.equal(gap, 0.0), accurate_log1p(total), gap + tf.math.log(tf.exp(-gap) + total)
    )
    # An odd batch is not two views: NaN, where XLA drops the caller's assert.
    return tf.cast(_nan_where(tf.equal(batch % 2, 1), loss), dtype)
