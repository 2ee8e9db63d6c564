"""The CTC kernel behind ``stableops.losses.CTC``: Keras's CTC plus ``zero_infinity``.

Keras 3.15's ``keras.losses.CTC`` (TensorFlow backend) calls ``tf.nn.ctc_loss``
with dense labels, which runs ``ctc_loss_dense`` (a forward-backward pass in
plain TensorFlow, XLA-compilable on CPU). This kernel runs the same function,
with three guards around it:

* **Impossible alignments are found from the labels.** A label sequence of
  length ``L`` with ``R`` adjacent repeats needs ``L + R`` frames (a blank
  between repeats). Where ``T < L + R`` the probability of the label is 0 and
  the loss is ``+inf``. ``ctc_loss_dense`` instead returns about 707
  (``-log(1e-307)``, the floor it uses for ``log 0``) with a meaningless
  gradient. Here those rows run on an empty label (double where: a feasible
  input, finite in value and gradient), and the result is replaced by
  ``+inf``, or by 0 with ``zero_infinity=True`` (PyTorch's option); either
  way their gradient is exactly 0, never NaN.
* **Log-probabilities have a floor.** They are ``ops.log_softmax`` of the
  logits in float32, floored at ``-max / (4 (T + 1))`` (the float32 maximum),
  so that sums over the ``T`` frames of the forward and backward passes
  cannot reach ``-inf`` (logits more than ``3.4e38`` apart give a ``-inf``
  log-probability, and ``-inf * 0`` is NaN inside ``ctc_loss_dense``). Above
  the floor the values are Keras's.
* **NaN in, NaN out.** A NaN logit makes its row's loss NaN, also with
  ``zero_infinity`` (only infinite losses are zeroed, as in PyTorch).
"""

from __future__ import annotations

import tensorflow as tf

from stableops._internal.dtypes import dtype_limits, to_compute
from stableops._internal.kernel import xla_kernel
from stableops.ops import log_softmax


def required_frames(labels, label_length):
    """Frames a label sequence needs: its length plus one blank between adjacent repeats."""
    position = tf.range(tf.shape(labels)[1] - 1)
    inside = position[None, :] < (label_length[:, None] - 1)
    repeat = tf.logical_and(tf.equal(labels[:, 1:], labels[:, :-1]), inside)
    return label_length + tf.reduce_sum(tf.cast(repeat, label_length.dtype), axis=1)


@xla_kernel
def ctc_kernel(labels, logits, zero_infinity):
    """Per-sample CTC loss of ``logits`` ``[batch, T, classes]``, int32 ``labels`` ``[batch, L]``.

    Class 0 is the blank and the padding (Keras's ``mask_index``); every
    sample uses all ``T`` frames. float16/bfloat16 and float64 compute in
    float32 (as Keras: ``tf.nn.ctc_loss`` has no float64 kernel) and return
    float32/float64.
    """
    dtype = logits.dtype
    logits = tf.cast(to_compute(logits), tf.float32)
    frames = tf.shape(logits)[1]
    batch = tf.shape(logits)[0]
    label_length = tf.reduce_sum(tf.cast(tf.not_equal(labels, 0), tf.int32), axis=1)
    feasible = required_frames(labels, label_length) <= frames
    log_probs = log_softmax(logits, axis=-1)
    # Floor: T frames of it (and the forward plus backward sums) stay finite.
    floor = -dtype_limits(tf.float32).max / (4.0 * (tf.cast(frames, tf.float32) + 1.0))
    # NaN kept
    log_probs = tf.where(log_probs < floor, tf.fill(tf.shape(log_probs), floor), log_probs)
    # Double where: an impossible row is computed on the empty label (always
    # feasible), so neither its value nor its gradient is inf or NaN.
    safe_length = tf.where(feasible, label_length, tf.zeros_like(label_length))
    loss = tf.nn.ctc_loss(
        labels=labels,
        logits=log_probs,
        label_length=safe_length,
        logit_length=tf.fill([batch], frames),
        logits_time_major=False,
        blank_index=0,
    )
    infinite = tf.logical_or(tf.logical_not(feasible), tf.math.is_inf(loss))
    fill = tf.constant(0.0 if zero_infinity else float("inf"), loss.dtype)
    loss = tf.where(infinite, fill, loss)
    return tf.cast(loss, tf.float64 if dtype == tf.float64 else tf.float32)
