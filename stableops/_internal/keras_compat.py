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
    for name, tensor in (("y_true", y_true), ("y_pred", y_pred)):
        if tensor.shape.rank is None:
            raise ValueError(
                f"`{name}` has an unknown rank (a tf.function traced with tf.TensorSpec(None)); "
                "a loss needs its inputs' rank: give the input signature one, such as "
                "tf.TensorSpec([None, 8])"
            )
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


# The activations whose logits a cross-entropy recovers, by the TF op that computes them
# (TF's Softmax op normalizes over the last axis).
_ACTIVATIONS = {"Sigmoid": tf.nn.sigmoid, "Softmax": tf.nn.softmax}


def _axis_index(axis, rank):
    """``axis`` (an int or a tuple of one) as a non-negative index, or ``None`` if it is not one."""
    if isinstance(axis, (tuple, list)) and len(axis) == 1:
        axis = axis[0]
    if rank is None or isinstance(axis, bool) or not isinstance(axis, int):
        return None
    return axis % rank if -rank <= axis < rank else None


def _producing_op(output):
    """The graph op that computed ``output`` (through ``Identity`` ops), or ``None`` eagerly."""
    if not isinstance(output, tf.Tensor) or isinstance(output, tf.Variable):
        return None
    try:
        op = output.op  # graph tensors only; an EagerTensor raises AttributeError
    except AttributeError:
        return None
    while op is not None and op.type == "Identity" and len(op.inputs) == 1:
        op = op.inputs[0].op
    return op


def _recomputes(output, logits, op_type):
    """Whether ``op_type``'s activation of ``logits`` is ``output`` bit for bit (eager values)."""
    try:
        again = _ACTIVATIONS[op_type](logits)
    except (TypeError, ValueError, tf.errors.OpError):
        return False
    return (again.dtype == output.dtype and again.shape == output.shape
            and bool(tf.reduce_all(tf.equal(again, output))))


def _carried_logits(output, op_type, axis):
    """The logits an ``op_type`` activation over ``axis`` computed ``output`` from, or ``None``.

    Keras's sigmoid and softmax both leave ``_keras_logits`` on their output,
    so the attribute alone does not say which made it, and Keras's own
    cross-entropies take a softmax's logits for a sigmoid's (a 2-class softmax
    head under ``BinaryCrossentropy``: 0.305 where the loss of its probabilities
    is 0.674). So the logits count only when the output is the activation's:
    ``stableops.activations.softmax`` marks its axis on the output; in a graph
    the producing op is ``op_type`` (a softmax over another axis than the last
    ends in a ``Transpose``); eagerly, the activation of the logits is the output.
    A softmax must also be over the loss's class ``axis``.
    """
    if getattr(output, "_stableops_recovered_logits", False):
        return None  # logits recover_logits returned: not a second time
    rank = output.shape.rank if isinstance(output, tf.Tensor) else None
    class_axis = _axis_index(axis, rank)
    logits = getattr(output, "_keras_logits", None)
    marked_axis = getattr(output, "_stableops_softmax_axis", None)
    if logits is not None and marked_axis is not None:  # stableops.activations.softmax
        over_class_axis = class_axis is not None and _axis_index(marked_axis, rank) == class_axis
        return logits if op_type == "Softmax" and over_class_axis else None
    if op_type == "Softmax" and (class_axis is None or class_axis != rank - 1):
        return None  # Keras's and TF's softmax here normalize over the last axis
    op = _producing_op(output)
    if op is not None:
        if op.type != op_type:
            return None
        return logits if logits is not None else (op.inputs[0] if len(op.inputs) == 1 else None)
    if logits is not None and tf.executing_eagerly() and _recomputes(output, logits, op_type):
        return logits
    return None  # (an eager output captured by a graph: its values are not known there)


def recover_logits(output, from_logits, op_type, fn_name, *, axis=-1, argument="output",
                   stacklevel=3):
    """``(output, from_logits)``, or the logits behind a Keras sigmoid/softmax output and ``True``.

    Keras's TF backend's rules (``_get_logits``), for the matching activation only:
    ``keras.activations.sigmoid``/``softmax`` leave their input on their output
    as ``_keras_logits``; in a graph, a tensor made by a ``Sigmoid``/``Softmax``
    op (``op_type``) has it as ``output.op.inputs[0]``. Computing the loss from
    those logits instead of the rounded probabilities is what Keras does, and is
    exact where the probabilities have saturated. Unlike Keras, the logits of
    another activation (a softmax output under a binary loss), or of a softmax
    over another axis than the loss's, are not used (see :func:`_carried_logits`).
    ``from_logits=True`` with such an output warns (Keras's warning) and uses
    the logits.

    Args:
        output: the prediction (tensor, array or list).
        from_logits: the caller's ``from_logits``.
        op_type: ``"Sigmoid"`` or ``"Softmax"``.
        fn_name: the function named in the warning.
        axis: the loss's class axis (a softmax's logits count only over it).
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
    logits = _carried_logits(output, op_type, axis)
    if logits is None:
        return output, from_logits
    if from_logits:
        warnings.warn(
            f"`{fn_name}` received `from_logits=True`, but the `{argument}` argument was "
            f"produced by a {op_type} activation and thus does not represent logits. "
            "Its logits are used. Was this intended?",
            stacklevel=stacklevel,
        )
    # Marked as recovered (on a copy: the logits may be a user's tensor), for a loss that
    # hands them on to an op inside its kernel, inlined under XLA: recovered again,
    # sigmoid(sigmoid(h)) was scored against h.
    recovered = tf.identity(logits)
    recovered._stableops_recovered_logits = True
    return recovered, True
