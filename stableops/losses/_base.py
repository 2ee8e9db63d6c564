"""The Keras ``Loss`` subclass every stableops loss class is built on.

Keras's own ``LossFunctionWrapper`` is private (``keras.src``), so this is the
same small pattern on the public ``keras.losses.Loss``: the base class keeps
reduction, ``sample_weight``, masks and dtype handling exactly as in Keras; a
loss class only names its per-sample function and that function's arguments.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from stableops._internal.checks import (
    as_float_tensor,
    canonical_axis,
    check_real_dtype,
    check_same_shape,
    real_tensor,
)
from stableops._internal.dtypes import compute_dtype
from stableops._internal.keras_compat import match_rank

# The losses that take two ``tf.RaggedTensor`` (as Keras's do): per-element
# terms averaged over the last axis. Listed in the error for the others.
RAGGED_LOSSES = (
    "Hinge", "Huber", "LogCosh", "MeanAbsoluteError", "MeanSquaredError",
    "MeanSquaredLogarithmicError", "Poisson", "SquaredHinge",
)


def dtype_of(x):
    """``x``'s ``tf.DType``, read without a copy where it has one (tensors, arrays).

    ``None`` for what cannot be made one tensor (a dict, a ragged list).
    NumPy strings and objects, which have no ``tf.DType``, are converted.
    """
    if isinstance(x, (dict, tf.RaggedTensor)):
        return None
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        try:
            return tf.as_dtype(dtype)
        except TypeError:
            pass
    try:
        return tf.convert_to_tensor(x).dtype
    except (TypeError, ValueError):
        return None


def check_loss_inputs(y_true, y_pred):
    """Contract rule 6 before Keras's cast to the loss dtype: real numbers only.

    ``TypeError`` naming ``y_true``/``y_pred`` and the dtype for strings and
    complex numbers (Keras's own cast would fail later with
    ``UnimplementedError: Cast string to float``). What has no single dtype
    (a dict, a ragged tensor) is left to the caller.
    """
    for x, name in ((y_true, "y_true"), (y_pred, "y_pred")):
        dtype = dtype_of(x)
        if dtype is not None:
            check_real_dtype(dtype, name)


def prepare(y_true, y_pred, loss_name, axis=-1):
    """Validate and align a loss's inputs (not yet cast: the kernels cast).

    ``y_pred`` becomes a floating tensor: integer and boolean predictions are
    cast to ``keras.config.floatx()`` (as Keras does); strings and complex
    numbers are a ``TypeError`` naming ``y_pred``. ``y_true`` may be any real
    or boolean tensor (a ``TypeError`` naming ``y_true`` otherwise); Python
    lists and scalars become ``y_pred``'s computing dtype directly, so integer
    targets are never rounded through float16. Ranks are aligned as Keras
    does; static shapes must then match (``ValueError`` naming both), and
    ``axis`` (the reduced axis or axes) must exist (``ValueError`` naming it,
    also for a scalar input). Ragged input is a ``TypeError`` naming the loss
    (the losses that support it handle it before, see :func:`ragged_rows`).
    """
    if isinstance(y_true, tf.RaggedTensor) or isinstance(y_pred, tf.RaggedTensor):
        raise TypeError(
            f"`{loss_name}` does not support ragged tensors; pass dense tensors "
            f"(`.to_tensor()`), or use one of {', '.join(RAGGED_LOSSES)}"
        )
    y_pred = as_float_tensor(y_pred, "y_pred", keras.config.floatx())
    y_true = real_tensor(y_true, "y_true", dtype_hint=compute_dtype(y_pred.dtype))
    y_true, y_pred = match_rank(y_true, y_pred)
    check_same_shape(y_true, y_pred, "y_true", "y_pred")
    canonical_axis(axis, y_pred.shape.rank)
    return y_true, y_pred


def ragged_rows(fn):
    """Let a loss that averages per-element terms over the last axis take ragged input.

    Keras's ``MeanSquaredError``, ``MeanAbsoluteError``, ``Huber`` (and
    others) accept two ``tf.RaggedTensor`` of the same row lengths. Here the
    per-element term is ``fn`` of the flat values, each element its own
    one-entry last axis, and ``tf.reduce_mean`` over the ragged last axis
    averages each row: the same numbers as ``fn`` on the dense rows.
    """

    @functools.wraps(fn)
    def wrapper(y_true, y_pred, *args, **kwargs):
        ragged = isinstance(y_true, tf.RaggedTensor), isinstance(y_pred, tf.RaggedTensor)
        if not any(ragged):
            return fn(y_true, y_pred, *args, **kwargs)
        if not all(ragged):
            raise TypeError(
                f"`{fn.__name__}`: `y_true` and `y_pred` must both be ragged or both dense, "
                f"got {type(y_true).__name__} and {type(y_pred).__name__}"
            )
        for true_lengths, pred_lengths in zip(y_true.nested_row_lengths(), y_pred.nested_row_lengths()):
            tf.debugging.assert_equal(
                true_lengths, pred_lengths, message="`y_true` and `y_pred` must have the same row lengths"
            )
        per_element = fn(y_true.flat_values[..., None], y_pred.flat_values[..., None], *args, **kwargs)
        return tf.reduce_mean(y_pred.with_flat_values(per_element), axis=-1)

    return wrapper


class FunctionLoss(keras.losses.Loss):
    """A ``keras.losses.Loss`` computed by a per-sample function ``fn(y_true, y_pred, **kwargs)``.

    Subclasses pass their constructor arguments through ``fn_kwargs``; each
    becomes a public attribute (``loss.from_logits``, as on Keras's losses),
    and they, with ``name``, ``reduction`` and ``dtype``, make up
    ``get_config``, so ``cls(**obj.get_config())`` rebuilds the same loss.
    """

    def __init__(self, fn, *, reduction, name, dtype, **fn_kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not tf.as_dtype(self.dtype).is_floating:
            # Keras would cast the predictions to it and fail (or round) later.
            raise ValueError(f"`dtype` must be a floating dtype, got dtype={dtype!r}")
        self.fn = fn
        self._fn_kwargs = fn_kwargs
        for key, value in fn_kwargs.items():
            setattr(self, key, value)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras casts both to the loss dtype before `call` (integer and boolean
        # predictions included, as here); strings and complex numbers get a
        # clear TypeError first (contract rule 6). Only the dtype is read: the
        # inputs (and their Keras masks) are passed on untouched.
        check_loss_inputs(y_true, y_pred)
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
