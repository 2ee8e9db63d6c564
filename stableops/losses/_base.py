"""The Keras ``Loss`` subclass every stableops loss class is built on.

Keras's own ``LossFunctionWrapper`` is private (``keras.src``), so this is the
same small pattern on the public ``keras.losses.Loss``: the base class keeps
reduction, ``sample_weight``, masks and dtype handling exactly as in Keras; a
loss class only names its per-sample function and that function's arguments.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from stableops.ops._checks import as_float_tensor


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


class FunctionLoss(keras.losses.Loss):
    """A ``keras.losses.Loss`` computed by a per-sample function ``fn(y_true, y_pred, **kwargs)``.

    Subclasses pass their constructor arguments through ``fn_kwargs``; each
    becomes a public attribute (``loss.from_logits``, as on Keras's losses),
    and they, with ``name``, ``reduction`` and ``dtype``, make up
    ``get_config``, so ``cls(**obj.get_config())`` rebuilds the same loss.
    """

    def __init__(self, fn, *, reduction, name, dtype, **fn_kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self._fn_kwargs = fn_kwargs
        for key, value in fn_kwargs.items():
            setattr(self, key, value)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras casts y_pred to the loss dtype before `call`, which would turn
        # integer predictions into floats silently; check first (contract
        # rule 6). Only the dtype is read: y_pred (and its Keras mask) is
        # passed on untouched.
        if not isinstance(y_pred, dict):
            as_float_tensor(y_pred, "y_pred")
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self.dtype
        config.update(self._fn_kwargs)
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
