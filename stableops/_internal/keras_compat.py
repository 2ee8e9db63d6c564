"""Keras compatibility: the rules Keras applies to a loss's inputs, written once.

Keras's own helpers are private (``keras.src``), so the rules stableops keeps
to be a drop-in live here: the rank matching of a loss's inputs
(:func:`match_rank`) and the recovery of the logits behind a sigmoid/softmax
output (:func:`recover_logits`).
"""

from __future__ import annotations

import warnings

import tensorflow as tf

from stableops._internal.checks import flag


def match_rank(y_true, y_pred):
    """Squeeze or expand a trailing size-1 axis so both tensors have the same rank.

    The same rule as Keras's ``squeeze_or_expand_to_same_rank``: ranks that
    differ by one where the longer tensor ends in a size-1 axis are aligned
    (a rank-1 partner is expanded, otherwise the size-1 axis is squeezed).

    Example:
        >>> import tensorflow as tf
        >>> y_true, y_pred = match_rank(tf.zeros([4, 1]), tf.zeros([4]))
        >>> y_true.shape, y_pred.shape
        (TensorShape([4, 1]), TensorShape([4, 1]))
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


def _carried_logits(output, op_type):
    """The logits ``output`` was computed from by a ``op_type`` activation, or ``None``."""
    logits = getattr(output, "_keras_logits", None)
    if logits is not None:
        return logits
    if not isinstance(output, tf.Tensor) or isinstance(output, tf.Variable):
        return None
    try:
        op = output.op  # graph tensors only; an EagerTensor raises AttributeError
    except AttributeError:
        return None
    if op is not None and op.type == op_type and len(op.inputs) == 1:
        return op.inputs[0]
    return None


def recover_logits(output, from_logits, op_type, fn_name, *, argument="output", stacklevel=3):
    """``(output, from_logits)``, or the logits behind a Keras sigmoid/softmax output and ``True``.

    The same rules as Keras's TF backend (``_get_logits``):
    ``keras.activations.sigmoid``/``softmax`` leave their input on their output
    as ``_keras_logits``; in a graph, a tensor made by a ``Sigmoid``/``Softmax``
    op (``op_type``) has it as ``output.op.inputs[0]``. Computing the loss from
    those logits instead of the rounded probabilities is what Keras does, and is
    exact where the probabilities have saturated. ``from_logits=True`` with such
    an output warns (Keras's warning) and uses the logits.

    Args:
        output: the prediction (tensor, array or list).
        from_logits: the caller's ``from_logits``.
        op_type: ``"Sigmoid"`` or ``"Softmax"``.
        fn_name: the function named in the warning.
        argument: the prediction's argument name in the warning
            (``"output"`` for the ops, ``"y_pred"`` for the losses).
        stacklevel: passed to ``warnings.warn``: the caller's caller by default.

    Example:
        >>> import keras
        >>> probabilities = keras.activations.sigmoid(keras.ops.convert_to_tensor([0.0, 30.0]))
        >>> logits, from_logits = recover_logits(probabilities, False, "Sigmoid", "bce")
        >>> logits.numpy(), from_logits
        (array([ 0., 30.], dtype=float32), True)
    """
    from_logits = flag(from_logits, "from_logits")  # "False" is not False (contract rule 6)
    logits = _carried_logits(output, op_type)
    if logits is None:
        return output, from_logits
    if from_logits:
        warnings.warn(
            f"`{fn_name}` received `from_logits=True`, but the `{argument}` argument was "
            f"produced by a {op_type} activation and thus does not represent logits. "
            "Its logits are used. Was this intended?",
            stacklevel=stacklevel,
        )
    return logits, True
