"""Keras compatibility: the rules Keras applies to a loss's inputs, written once.

Keras's own helpers are private (``keras.src``), so the rules stableops keeps
to be a drop-in live here.
"""

from __future__ import annotations

import tensorflow as tf


def match_rank(y_true, y_pred):
    """Squeeze or expand a trailing size-1 axis so both tensors have the same rank.

    The same rule as Keras's ``squeeze_or_expand_to_same_rank``: ranks that
    differ by one where the longer tensor ends in a size-1 axis are aligned
    (a rank-1 partner is expanded, otherwise the size-1 axis is squeezed).
    """
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = tf.expand_dims(y_pred, -1)
        else:
            y_true = tf.squeeze(y_true, -1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = tf.expand_dims(y_true, -1)
        else:
            y_pred = tf.squeeze(y_pred, -1)
    return y_true, y_pred
