"""Cosine similarity: a drop-in replacement for Keras 3.15 that stays finite.

``cosine_similarity`` of a zero vector is 0 with gradient 0 (Keras: 1e7,
``nan`` in float16), and vectors with norms near the float limits normalize
exactly (``ops.l2_normalize``).
"""

from __future__ import annotations

import tensorflow as tf

from stableops import ops
from stableops._internal.checks import axis_argument
from stableops.losses._base import REDUCTION, FunctionLoss, loss_class
from stableops.losses._inputs import in_compute_dtype, loss_kernel, prepare

__all__ = ["CosineSimilarity", "cosine_similarity"]


# ----------------------------------------------------------------------------
# Cosine similarity
# ----------------------------------------------------------------------------


@loss_kernel
def _cosine_similarity_kernel(y_true, y_pred, axis):
    y_true, y_pred = in_compute_dtype(y_true, y_pred, saturate=False)
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
        >>> y_true = [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
        >>> cosine_similarity(y_true, [[1.0, 0.0], [1.0, 1.0], [-1.0, -1.0]]).numpy()
        array([-0.        , -1.,  1.], dtype=float32)
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
