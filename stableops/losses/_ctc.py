"""CTC loss: a drop-in for ``keras.losses.CTC`` with PyTorch's ``zero_infinity``.

Keras 3.15's CTC (TensorFlow backend) returns about 707 for a label that
cannot be aligned with the input (longer than the input allows), with a
gradient that pushes the model somewhere meaningless, stops at ~707 for
feasible labels whose loss is larger, and is NaN for logits more than ``3.4e38``
apart. Here an impossible alignment is ``+inf`` (its probability is 0) with
gradient exactly 0, or 0 with ``zero_infinity=True``, and every feasible loss
and gradient is the definition's, from a forward-backward pass of its own in
float64; see ``stableops.losses._ctc_kernel``. Ordinary inputs give Keras's values.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from stableops._internal.checks import (
    as_float_tensor,
    flag,
    raise_on_invalid_labels,
    real_tensor,
)
from stableops.losses._base import REDUCTION, FunctionLoss, loss_class, public_function
from stableops.losses._ctc_kernel import ctc_kernel, invalid_labels
from stableops.losses._inputs import graph_code

__all__ = ["CTC", "ctc"]


@public_function
@graph_code
def ctc(y_true, y_pred, *, zero_infinity=False):
    """CTC (Connectionist Temporal Classification) loss, one value per sample.

    Formula:
        ``-log p(y_true | y_pred)``, the sum over every alignment of the
        label sequence with the ``T`` frames (Graves et al. 2006): class 0 is
        the blank and the padding of ``y_true``; ``label_length`` is the number
        of non-zero labels and every sample uses all ``T`` frames (Keras's
        ``keras.losses.ctc``).

    Numerical stability:
        The forward-backward recursion over the extended label (Graves et al.
        2006) in log space, in float64, on ``ops.log_softmax`` of the logits
        (float64), floored at ``-max / (4 (T + 1))`` so no loss overflows, with
        ``log 0 = -inf`` (Keras stands in ``-707``, so its loss stops at about
        707 and its gradient is wrong past it: a blank's -1.0 for 0, found
        against mpmath with logits of 600 and more). The gradient is the
        alignments' posterior mass from the backward recursion. A label needing
        more frames than ``T`` (its length plus one per adjacent repeat) gives
        ``+inf`` (Keras: about 707) with gradient 0, or 0 with gradient 0 when
        ``zero_infinity`` (as PyTorch's ``CTCLoss(zero_infinity=True)``).
        Logits ``3.4e38`` apart give a large finite loss (Keras: NaN). NaN
        logits give NaN, also with ``zero_infinity``. A 0 inside the first
        ``label_length`` labels is a label of class 0, as Keras's. A label
        outside ``[0, num_classes)`` (every non-zero entry is a label; the
        0 padding never is) raises an error naming the label and the number
        of classes eagerly and in a graph; inside XLA, where asserts are
        dropped, that sample's loss is NaN, never a finite wrong value (the
        class read would be the nearest one). ``y_true`` of shape
        ``[batch, 0]`` gives every sample the empty label's loss (all blanks).
        Error budget: an ULP of the loss (float32, or float64 for float64
        logits) plus 1e-16 (float64's rounding of log-probabilities near 0,
        which a loss near 0, ``-log(1 - e)``, inherits; Keras's float32 left
        1e-9 there); the gradient 2 ULP of its larger term (0.5 measured over
        the benchmark's grid, logits up to 2^30 apart). Under XLA 0.3-0.6x Keras's time
        (three predecessors a state where its transition matrix has
        ``states^2``). Compilation: each new input shape compiles the kernel
        (value and gradient, a batch of 16 with 20 classes, ``T`` near 40: 1.1-2.6 s
        on 2 CPU cores, where Keras's ``tf.nn.ctc_loss`` compiles nothing; a
        repeated shape then takes 2 ms against Keras's 9), also in a ``tf.function``
        generalized to unknown lengths. So the kernel gets the frames and the
        labels padded to eight lengths an octave (at most 1/8 more: ``T`` 30-41
        compile 5 programs, not 12): frames that it skips, labels of class 0 (the
        padding); neither changes a value or a gradient. The kernel is traced once for
        every length: a new one costs XLA's compile alone (0.9-1.2 s, not 1.1-2.4).

    Args:
        y_true: integer labels ``[batch, max_label_length]`` in ``[0, num_classes)``,
            0-padded (``max_label_length`` may be 0).
        y_pred: logits ``[batch, T, num_classes]`` (not softmax-normalized).
        zero_infinity: keyword-only; replace infinite losses (and their
            gradients) by 0. Defaults to False.

    Returns:
        ``[batch]`` losses, float32 (float64 for float64 logits).

    Raises:
        ValueError: for ranks other than 2 (``y_true``) and 3 (``y_pred``) or
            different batch sizes.
        tf.errors.InvalidArgumentError: a label outside ``[0, num_classes)``
            (eager/graph).

    Example:
        >>> import tensorflow as tf
        >>> ctc([[1, 1, 1]], tf.zeros([1, 4, 3]), zero_infinity=True).numpy()  # needs 5 frames
        array([0.], dtype=float32)
    """
    zero_infinity = flag(zero_infinity, "zero_infinity")
    y_pred = as_float_tensor(y_pred, "y_pred", keras.config.floatx())
    labels = real_tensor(y_true, "y_true")
    if len(labels.shape) != 2:
        raise ValueError(
            "Targets `y_true` are expected to be a tensor of shape `(batch_size, max_length)` "
            f"in integer format. Received: y_true.shape={labels.shape}"
        )
    if len(y_pred.shape) != 3:
        raise ValueError(
            "Logits `y_pred` are expected to be a tensor of shape `(batch_size, max_length, "
            f"num_classes)`. Received: y_pred.shape={y_pred.shape}"
        )
    if not labels.shape[:1].is_compatible_with(y_pred.shape[:1]):
        raise ValueError(
            "`y_true` and `y_pred` must have the same batch size, "
            f"got {labels.shape} and {y_pred.shape}"
        )
    labels = tf.cast(labels, tf.int32)
    num_classes = y_pred.shape[2]
    if num_classes is None:
        num_classes = tf.shape(y_pred)[2]
    # Outside the kernel: inside XLA the assert would be dropped (the kernel
    # then gives NaN for that sample, never a finite loss).
    labels = raise_on_invalid_labels(
        labels, invalid_labels(labels, num_classes), num_classes, loss="ctc"
    )
    # Padded to a few lengths (at most 1/8 more), one compiled program serves many: frames
    # that the kernel skips, and labels of class 0, the padding. The padding's gradient is
    # sliced off.
    frames, width = _length(y_pred, 1), _length(labels, 1)
    y_pred = tf.pad(y_pred, [[0, 0], [0, padded_length(frames) - frames], [0, 0]])
    labels = tf.pad(labels, [[0, 0], [0, padded_length(width) - width]])
    return ctc_kernel(labels, y_pred, tf.convert_to_tensor(frames, tf.int32),
                      zero_infinity=zero_infinity)


def _length(tensor, axis):
    """The static size of ``axis`` (a Python int: no op eagerly), or its size when run."""
    size = tensor.shape[axis]
    return tf.shape(tensor)[axis] if size is None else size


def padded_length(length):
    """The length that ``length`` (a Python int or an int32 scalar tensor) is padded to: the
    next multiple of ``2^k / 8``, ``2^k <= length < 2^(k+1)``, so eight lengths an octave and
    at most 1/8 more (17 -> 18, 33 -> 36, 1000 -> 1024); a length up to 16 stays."""
    if isinstance(length, int):
        step = max((1 << max(length.bit_length() - 1, 0)) // 8, 1)
    else:
        # Any step gives a length >= `length`; a log2 rounded down at a power of two only
        # halves the step.
        octave = tf.math.floor(
            tf.math.log(tf.cast(tf.maximum(length, 1), tf.float64)) / math.log(2)
        )
        step = tf.maximum(tf.pow(tf.constant(2.0, tf.float64), octave) / 8.0, 1.0)
        step = tf.cast(step, tf.int32)
    return (length + step - 1) // step * step


@loss_class
class CTC(FunctionLoss):
    """CTC loss; drop-in for ``keras.losses.CTC`` with a keyword-only ``zero_infinity``.

    See :func:`ctc`. ``y_true``: 0-padded integer labels ``[batch, L]`` (0 is
    the blank); ``y_pred``: logits ``[batch, T, num_classes]``.

    Args:
        {common}
        zero_infinity: keyword-only; impossible alignments give loss 0 and
            gradient 0 instead of ``inf`` (gradient 0). Defaults to False.
    """

    def __init__(self, reduction=REDUCTION, name="ctc", dtype=None, *, zero_infinity=False):
        super().__init__(
            ctc, reduction, name, dtype, zero_infinity=flag(zero_infinity, "zero_infinity")
        )
