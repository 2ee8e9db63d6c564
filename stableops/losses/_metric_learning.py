"""Metric-learning losses: triplet (batch-hard, semi-hard), contrastive and NT-Xent.

The losses TensorFlow Addons provided (``TripletHardLoss``,
``TripletSemiHardLoss``, ``contrastive_loss``) and SimCLR's NT-Xent, for Keras
3, keeping the numerics contract where the usual formulas do not:

* the Euclidean distance of an embedding to itself or to a duplicate has
  gradient 0 (``sqrt`` of a zero squared distance has an infinite slope, and
  its gradient is NaN);
* the distances batch-hard triplet uses come from differences of exactly
  rescaled embeddings, not the Gram expansion: accurate for near-duplicates,
  finite for embeddings of ``1e30``. The Gram form (one matrix product) only
  chooses the batch-hard partners, and gives semi-hard triplet and the
  contrastive loss their distances when no pair of the batch cancels in it;
* NT-Xent divides cosine similarities by the temperature in float32 (float16
  overflows at ``1 / 0.01`` times a similarity of 7) and leaves out the
  self-similarity with a masked log-sum-exp, not a ``-inf`` fill.

Conventions (one for every loss here, as a Keras model outputs one tensor):

* ``TripletLoss`` and ``ContrastiveLoss`` take a batch of embeddings
  ``y_pred`` ``[batch, dim]`` and integer class labels ``y_true`` ``[batch]``
  (or ``[batch, 1]``), as TFA's triplet losses did: every pair in the batch is
  used, and two rows are similar when their labels are equal. The loss is one
  value per row (anchor), so Keras's reduction, ``sample_weight`` and masks
  apply per anchor; the default mean is TFA's value.
* ``ContrastiveLoss`` also takes explicit pairs (a Siamese network's two
  towers stacked): ``y_pred`` ``[batch, 2, dim]`` with ``y_true`` ``[batch]``
  1 for a similar pair, 0 for a dissimilar one (TFA's ``contrastive_loss`` on
  the pair's distance).
* ``NTXent`` takes two views, ``y_pred`` ``[2n, dim]`` (the first ``n`` rows
  one view, the last ``n`` the other) or ``[n, 2, dim]``; ``y_true`` is
  ignored (pass any tensor, e.g. zeros).

Labels are compared after Keras's cast of ``y_true`` to the loss dtype (exact
for integers below ``2**24`` in float32); a NaN label gives its anchor a NaN
loss.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from stableops._internal.checks import as_float_tensor, choice, number, real_tensor
from stableops._internal.dtypes import dtype_limits
from stableops.losses._base import REDUCTION, SaturatingInputLoss, loss_class, public_function
from stableops.losses._inputs import graph_code
from stableops.losses._metric_kernels import (
    DISTANCES,
    STRATEGIES,
    contrastive_batch_kernel,
    contrastive_pairs_kernel,
    nt_xent_kernel,
    triplet_kernel,
)

__all__ = [
    "ContrastiveLoss",
    "NTXent",
    "TripletLoss",
    "contrastive_loss",
    "nt_xent",
    "triplet_loss",
]



# ----------------------------------------------------------------------------
# Argument checks (static, outside the compiled kernels)
# ----------------------------------------------------------------------------


def _margin(value):
    return number(value, "margin", 0.0)


def _temperature(value):
    # 1 / temperature must be finite in float32, where the logits are formed.
    return number(value, "temperature", dtype_limits("float32").tiny)


def _embeddings(y_pred, ranks=(2,), batch="batch"):
    """Embeddings ``[batch, dim]``, or with 3 in ``ranks`` also pairs ``[batch, 2, dim]``."""
    y_pred = as_float_tensor(y_pred, "y_pred", keras.config.floatx())
    if len(y_pred.shape) not in ranks:
        expected = " or ".join({2: "[batch, dim]", 3: "[batch, 2, dim]"}[r] for r in ranks)
        raise ValueError(
            f"`y_pred` must be embeddings of shape {expected}, got shape {y_pred.shape}"
        )
    if len(y_pred.shape) == 3 and y_pred.shape[1] not in (None, 2):
        raise ValueError(
            f"`y_pred` pairs must have shape [{batch}, 2, dim], got shape {y_pred.shape}"
        )
    return y_pred


def _labels(y_true, y_pred):
    """Class labels ``[batch]`` (a trailing size-1 axis squeezed), checked against ``y_pred``."""
    labels = real_tensor(y_true, "y_true")
    if labels.dtype == tf.bool:
        labels = tf.cast(labels, tf.int32)
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = tf.squeeze(labels, axis=1)
    if len(labels.shape) != 1 or not labels.shape[:1].is_compatible_with(y_pred.shape[:1]):
        raise ValueError(
            "`y_true` must hold one label per row of `y_pred` (shape [batch] or [batch, 1]), "
            f"got {labels.shape} and {y_pred.shape}"
        )
    return labels


# ----------------------------------------------------------------------------
# Function forms
# ----------------------------------------------------------------------------


@public_function
@graph_code
def triplet_loss(y_true, y_pred, margin=1.0, strategy="hard", distance="euclidean"):
    """Triplet loss with in-batch mining (batch-hard or semi-hard), one value per anchor.

    Formula:
        ``hard``: ``max(d(a, p*) - d(a, n*) + margin, 0)`` with ``p*`` the
        farthest positive and ``n*`` the nearest negative of anchor ``a``
        (Hermans et al. 2017; TFA's ``triplet_hard_loss``).
        ``semi_hard``: for each positive pair ``(a, p)``, ``n*`` is the
        nearest negative farther from ``a`` than ``p`` (or the farthest
        negative if none is), and anchor ``a`` gets
        ``batch / pairs * sum_p max(d(a, p) - d(a, n*) + margin, 0)``, so the
        batch mean is TFA's ``triplet_semihard_loss`` (Schroff et al. 2015), the
        mean over all positive pairs.
        ``d``: ``euclidean`` ``||x_i - x_j||`` (TFA's ``"L2"``), ``squared``
        ``||x_i - x_j||^2`` (``"squared-L2"``), ``cosine`` ``1 - cos(x_i, x_j)``
        (``"angular"``).

    Numerical stability:
        The distance of an embedding to itself or a duplicate is 0 with
        gradient 0 (the ``sqrt`` of a hand-written distance has a NaN
        gradient there). Distances are formed from differences of the
        embeddings divided by a power of two near the batch's largest entry
        (exact), and the loss from differences of those scaled distances,
        scaled back once: for ``hard`` accurate for near-duplicates (no
        Gram-matrix cancellation), and finite for embeddings up to ``1e38`` in float32, as
        long as the loss itself is (with ``squared``, up to about ``1e19``).
        ``hard`` chooses each anchor's partners with the Gram form (one matrix
        product) and then computes only the two chosen distances from
        differences: a near-tie chosen differently changes the loss by at most
        the Gram form's rounding of the squared distance.
        Half precision is computed in float32. Degenerate anchors follow TFA:
        without a positive, the anchor is its own positive (distance 0);
        without a negative, ``hard`` takes the farthest embedding and
        ``semi_hard`` contributes nothing to pairs it does not have. A batch
        without any positive pair gives 0 for ``semi_hard`` (TFA: NaN), an
        empty batch an empty ``[0]`` loss for every strategy. A NaN
        embedding gives NaN for every anchor whose distances it enters, a NaN
        label NaN for its anchor.
        Error budget: a few ULP of the distances for ``hard`` with ``euclidean``
        or ``squared`` (difference form). ``semi_hard`` takes its distances from
        the Gram form, or from differences for the whole batch where a pair
        cancels in it: up to about 25 ULP of the distances (14-23 measured
        against mpmath). ``cosine`` distances are ``1 - u_i . u_j`` from one
        matrix product, which cancels for near-duplicates (about ``eps / d``
        relative to a distance ``d``: 3% at ``d = 1.5e-6`` in float32).

    Args:
        y_true: integer class labels, shape ``[batch]`` or ``[batch, 1]``.
        y_pred: embeddings ``[batch, dim]`` (TFA recommends L2-normalized ones;
            not required).
        margin: non-negative float. Defaults to 1.0.
        strategy: ``"hard"`` (default) or ``"semi_hard"``.
        distance: ``"euclidean"`` (default), ``"squared"`` or ``"cosine"``.

    Returns:
        One loss per anchor, ``[batch]``, in ``y_pred``'s computing dtype.

    Example:
        >>> triplet_loss([0, 0], [[0.0, 1.0], [1.0, 0.0]]).numpy()  # TFA: 1.0 (the mean)
        array([1., 1.], dtype=float32)
    """
    margin = _margin(margin)
    strategy = choice(strategy, "strategy", STRATEGIES)
    distance = choice(distance, "distance", DISTANCES)
    y_pred = _embeddings(y_pred)
    labels = _labels(y_true, y_pred)
    return triplet_kernel(labels, y_pred, margin=margin, strategy=strategy, distance=distance)


@public_function
@graph_code
def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss (Hadsell, Chopra and LeCun 2006) with Euclidean distances.

    Formula:
        For a pair at distance ``d``: ``d^2`` if similar, ``max(margin - d, 0)^2``
        if not (TFA's ``contrastive_loss``).
        Batch form (``y_pred`` ``[batch, dim]``, class labels ``y_true``
        ``[batch]``): anchor ``i`` gets the mean over the other rows ``j`` of
        the pair ``(i, j)``'s term, similar when ``y_true[i] == y_true[j]``;
        the batch mean is the mean over all pairs.
        Pair form (``y_pred`` ``[batch, 2, dim]``, 0/1 ``y_true`` ``[batch]``):
        pair ``k``'s term for ``d = ||y_pred[k, 0] - y_pred[k, 1]||``, similar
        where ``y_true[k] == 1``.

    Numerical stability:
        ``d`` is 0 with gradient 0 for identical embeddings (a hand-written
        ``sqrt(sum(square(a - b)))`` has a NaN gradient there: ``inf * 0``);
        no overflow or underflow in forming ``d`` (exact power-of-two
        scaling). ``d^2`` overflows to ``inf`` only where it exceeds the
        dtype's range; the gradient stays finite. Half precision is computed
        in float32. NaN in ``y_pred`` or ``y_true`` gives NaN.
        The batch form takes its distances from the Gram form (one matrix
        product; relative error at most ``dim * eps / 2^-5``) when every pair's
        ``d^2`` exceeds ``2^-5 (|x_i|^2 + |x_j|^2)``, and from differences
        (exact for near-duplicates) for the whole batch otherwise.

    Args:
        y_true: class labels ``[batch]`` / ``[batch, 1]`` (batch form) or 0/1
            pair labels ``[batch]`` (pair form).
        y_pred: embeddings ``[batch, dim]`` or pairs ``[batch, 2, dim]``.
        margin: non-negative float. Defaults to 1.0.

    Returns:
        One loss per row ``[batch]``, in ``y_pred``'s computing dtype.

    Example:
        >>> contrastive_loss([1, 0], [[[0., 0.], [0., 0.]], [[0., 0.], [0.6, 0.8]]]).numpy()
        array([0., 0.], dtype=float32)
    """
    margin = _margin(margin)
    y_pred = _embeddings(y_pred, ranks=(2, 3))
    if len(y_pred.shape) == 3:
        similar = _labels(y_true, y_pred)
        return contrastive_pairs_kernel(similar, y_pred, margin=margin)
    return contrastive_batch_kernel(_labels(y_true, y_pred), y_pred, margin=margin)


@public_function
@graph_code
def nt_xent(y_true, y_pred, temperature=0.1):
    """NT-Xent / InfoNCE over two views (SimCLR's normalized temperature-scaled cross-entropy).

    Formula:
        With the two views' embeddings stacked as ``z`` ``[2n, dim]`` (row
        ``i``'s positive is row ``i + n`` mod ``2n``) and ``s_ij`` their cosine
        similarities: ``-log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))``,
        all other ``2n - 2`` rows being negatives (Chen et al. 2020).

    Numerical stability:
        Similarities and logits are float32 for half precision (in float16,
        ``s / 0.01`` reaches 100 and ``exp`` of it overflows; the logits of a
        temperature of 1e-3 would too); the row's log-softmax leaves the
        self-similarity out with a mask, not a ``-inf`` fill, and gives the
        positive's ``-log1p(sum_k exp(l_k - l_p))`` without the cancellation
        of ``logsumexp - l_p`` when the positive dominates. A zero
        embedding has similarity 0 to everything, with gradient 0.
        NaN in an embedding gives NaN for every row.
        Error budget: 1 ULP of the float32 loss for exact float32 logits
        (0.5 measured against mpmath on embeddings whose similarities are
        exact; the row's log-sum-exp is formed in float64: 4.5 in float32);
        the rounding of the cosine similarities, a few ULP of 1/t each, comes
        on top.

    Args:
        y_true: ignored (Keras needs a target: pass e.g. zeros).
        y_pred: ``[2n, dim]`` (views stacked along the batch) or ``[n, 2, dim]``.
        temperature: float, at least the float32 ``tiny``. Defaults to 0.1.

    Returns:
        ``[2n]`` per row, or ``[n]`` per pair for ``[n, 2, dim]`` input (the mean
        of its two rows), in ``y_pred``'s computing dtype.

    Raises:
        ValueError: a ``[2n, dim]`` input with an odd (static) batch size.
        tf.errors.InvalidArgumentError: an odd batch size known only when the
            graph runs; inside XLA, where asserts are dropped, every row's
            loss is NaN instead, never a finite meaningless value.

    Example:
        >>> views = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]
        >>> nt_xent(None, views, temperature=0.5).numpy()
        array([0.26502794, 0.26502794, 0.31472796, 0.31472796], dtype=float32)
    """
    del y_true
    temperature = _temperature(temperature)
    y_pred = _embeddings(y_pred, ranks=(2, 3), batch="n")
    if len(y_pred.shape) == 3:
        stacked = tf.concat([y_pred[:, 0], y_pred[:, 1]], axis=0)
        per_row = nt_xent_kernel(stacked, temperature=temperature)
        n = tf.shape(y_pred)[0]
        return (per_row[:n] + per_row[n:]) / 2.0
    batch = y_pred.shape[0]
    if batch is not None and batch % 2:
        raise ValueError(
            "`y_pred` must stack two views ([2n, dim]): its batch size must be even, "
            f"got shape {y_pred.shape}"
        )
    if batch is None:  # the kernel's NaN where XLA drops the assert
        tf.debugging.assert_equal(
            tf.shape(y_pred)[0] % 2, 0,
            message="`y_pred` must stack two views ([2n, dim]): odd batch size",
        )
    return nt_xent_kernel(y_pred, temperature=temperature)


# ----------------------------------------------------------------------------
# Classes
# ----------------------------------------------------------------------------


@loss_class
class TripletLoss(SaturatingInputLoss):
    """Triplet loss, batch-hard or semi-hard; TFA's ``TripletHardLoss``/``TripletSemiHardLoss``.

    ``y_true``: integer labels ``[batch]``; ``y_pred``: embeddings
    ``[batch, dim]``. See :func:`triplet_loss`. Gradient 0, not NaN, where an
    embedding meets a duplicate.

    Args:
        margin: non-negative float. Defaults to 1.0.
        strategy: ``"hard"`` (TFA's ``TripletHardLoss``) or ``"semi_hard"``
            (``TripletSemiHardLoss``).
        distance: ``"euclidean"``, ``"squared"`` or ``"cosine"``.
        {common}

    Raises:
        ValueError: naming the argument for a negative or NaN ``margin`` or an
            unknown ``strategy``/``distance``.
    """

    def __init__(self, margin=1.0, strategy="hard", distance="euclidean", reduction=REDUCTION,
                 name="triplet_loss", dtype=None):
        super().__init__(
            triplet_loss, reduction, name, dtype, margin=_margin(margin),
            strategy=choice(strategy, "strategy", STRATEGIES),
            distance=choice(distance, "distance", DISTANCES),
        )


@loss_class
class ContrastiveLoss(SaturatingInputLoss):
    """Contrastive loss over a labelled batch or explicit pairs; TFA's ``ContrastiveLoss``.

    See :func:`contrastive_loss` for both input conventions. Gradient 0, not
    NaN, for identical embeddings.

    Args:
        margin: non-negative float. Defaults to 1.0.
        {common}
    """

    def __init__(self, margin=1.0, reduction=REDUCTION, name="contrastive_loss", dtype=None):
        super().__init__(contrastive_loss, reduction, name, dtype, margin=_margin(margin))


@loss_class
class NTXent(SaturatingInputLoss):
    """NT-Xent (InfoNCE, SimCLR) over two views; ``y_true`` is ignored.

    See :func:`nt_xent`. Finite in float16 at temperature 0.01.

    Args:
        temperature: positive float. Defaults to 0.1.
        {common}
    """

    def __init__(self, temperature=0.1, reduction=REDUCTION, name="nt_xent", dtype=None):
        super().__init__(nt_xent, reduction, name, dtype, temperature=_temperature(temperature))

    def __call__(self, y_true, y_pred, sample_weight=None):
        if y_true is None:  # self-supervised: no target at all
            y_true = tf.zeros([], self.dtype)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)
