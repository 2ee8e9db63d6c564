"""A loss's inputs, from the caller to a compiled kernel and back.

Validation outside the kernels (:func:`prepare`, :func:`ragged_rows`, contract
rule 6), the kernel decorator (:func:`loss_kernel`), the computing dtype inside
a kernel (:func:`in_compute_dtype`) and the Keras mask of a result
(:func:`with_mask`).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from stableops._internal.checks import (
    as_float_tensor,
    canonical_axis,
    check_same_shape,
    real_tensor,
)
from stableops._internal.dtypes import compute_dtype, to_compute_saturating
from stableops._internal.keras_compat import match_rank
from stableops._internal.kernel import xla_kernel
from stableops._internal.wrapping import wraps_public

# The losses that take two ``tf.RaggedTensor`` (as Keras's do): per-element
# terms averaged over the last axis. Listed in the error for the others.
RAGGED_LOSSES = (
    "Hinge", "Huber", "LogCosh", "MeanAbsoluteError", "MeanSquaredError",
    "MeanSquaredLogarithmicError", "Poisson", "SquaredHinge",
)

# Entry points are plain graph code (Python control flow on static values
# only): AutoGraph must not convert them (and, through them, all of
# stableops.ops) inside a user's tf.function, which costs seconds per trace.
graph_code = tf.autograph.experimental.do_not_convert


def loss_kernel(fn=None, *, saturating=False, terms_per_element=False):
    """``xla_kernel(row_local=True, saturating=..., terms_per_element=...)``, with AutoGraph
    off for the traced path as well.

    The kernels are straight-line TensorFlow (no Python control flow on
    tensors). Called inside a user's ``tf.function`` or ``model.fit`` (where
    AutoGraph is on), AutoGraph would otherwise convert them and the ops'
    custom-gradient closures they call, which is slower to trace and has
    failed with ``NameError`` on those closures.

    Every loss kernel reduces each sample over ``axis`` (the last axis without
    the argument), so each is ``row_local``: the forward call also returns the
    per-element gradient, and the backward pass is one multiplication.
    """
    if fn is None:
        return functools.partial(
            loss_kernel, saturating=saturating, terms_per_element=terms_per_element
        )
    return xla_kernel(
        graph_code(fn), row_local=True, saturating=saturating,
        terms_per_element=terms_per_element,
    )


def from_probabilities(from_logits, **_):
    """Whether a cross-entropy call is from probabilities: its slope at a probability
    floored at ``tiny`` is ``1/tiny`` (``xla_kernel``'s ``saturating``)."""
    return not from_logits


_INPUTS_DOC = """Args:
        y_true: targets, ``[batch, d0, ..., dN]``; any real dtype.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype (float32
        for float16/bfloat16/float32, float64 for float64)."""


def loss_function(*, ragged=False, saturate=False, terms_per_element=False):
    """The function form of a loss without arguments, from its formula.

    The decorated ``formula(y_true, y_pred)`` receives both inputs in
    ``y_pred``'s computing dtype (:func:`in_compute_dtype`, ``saturate`` as
    there) and returns one value per sample; it runs as one compiled kernel
    (:func:`loss_kernel`, named ``_<name>_kernel``). The function form
    validates and aligns the inputs first (:func:`prepare`, errors naming the
    loss) and, with ``ragged``, also takes two ``tf.RaggedTensor``
    (:func:`ragged_rows`); ``terms_per_element`` as :func:`loss_kernel`'s (the formula
    averages one term per element). It keeps the formula's name, signature and docstring,
    where ``{inputs}`` becomes the ``Args:`` and ``Returns:`` of a loss of
    ``y_true`` and ``y_pred`` of the same shape, reduced over the last axis.
    """

    def decorate(formula):
        name = formula.__name__

        def kernel(y_true, y_pred):
            return formula(*in_compute_dtype(y_true, y_pred, saturate=saturate))

        kernel.__name__ = kernel.__qualname__ = f"_{name}_kernel"
        kernel = loss_kernel(kernel, terms_per_element=terms_per_element)

        @wraps_public(formula)
        def function(y_true, y_pred):
            return kernel(*prepare(y_true, y_pred, name))

        function.__doc__ = formula.__doc__.replace("{inputs}", _INPUTS_DOC)
        return graph_code(ragged_rows(function) if ragged else function)

    return decorate


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
    one-entry last axis, and a float64 ``tf.reduce_mean`` over the ragged last axis
    averages each row: the numbers of ``fn`` on the dense rows, to the rounding of the mean.
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
        for true_lengths, pred_lengths in zip(
            y_true.nested_row_lengths(), y_pred.nested_row_lengths()
        ):
            tf.debugging.assert_equal(
                true_lengths, pred_lengths,
                message="`y_true` and `y_pred` must have the same row lengths",
            )
        per_element = fn(
            y_true.flat_values[..., None], y_pred.flat_values[..., None], *args, **kwargs
        )
        # Averaged in float64, as the dense rows are summed (float64_mean): a float32 mean of
        # terms near the range overflowed where the mean is finite (MSE of 1.5e19: inf).
        wide = y_pred.with_flat_values(tf.cast(per_element, tf.float64))
        return tf.cast(tf.reduce_mean(wide, axis=-1), per_element.dtype)

    return wrapper


def in_compute_dtype(y_true, y_pred, *, saturate):
    """Both tensors in ``y_pred``'s computing dtype (float32 for half precision), in a kernel.

    With ``saturate`` the casts of half-precision inputs are
    ``to_compute_saturating``: the gradient returned to a float16 input
    saturates at 65504 instead of overflowing to ``inf`` (the cross-entropy
    family documents it); without it they are plain casts (the regression,
    overlap, similarity and hinge losses).
    """
    dtype = compute_dtype(y_pred.dtype)
    if not saturate:
        return tf.cast(y_true, dtype), tf.cast(y_pred, dtype)
    if y_true.dtype.is_floating and compute_dtype(y_true.dtype) == dtype:
        y_true = to_compute_saturating(y_true)
    else:
        y_true = tf.cast(y_true, dtype)
    return y_true, to_compute_saturating(y_pred)


def with_mask(result):
    """A kernel's ``(loss, valid)`` pair as a loss carrying its Keras mask (a loss as is)."""
    if not isinstance(result, tuple):
        return result
    loss, valid = result
    # Keras's reduction reads the mask from this attribute (as its own
    # sparse_categorical_crossentropy with ignore_class sets it): ignored
    # samples count neither in the sum nor in the "sum_over_batch_size" divisor.
    loss._keras_mask = valid
    return loss
