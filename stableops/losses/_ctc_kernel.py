"""The CTC kernel behind ``stableops.losses.CTC``: the forward-backward algorithm in log space.

Keras 3.15's ``keras.losses.CTC`` (TensorFlow backend) calls ``tf.nn.ctc_loss``
with dense labels, which runs ``ctc_loss_dense``: a forward-backward pass over
a dense ``[states, states]`` transition matrix per sample, in float32, with
``log 0`` stood in for by ``log(1e-307)`` (about -707). Where the true loss is
above about 707 the stand-in is larger than the alignments' own probability,
and the loss stops at ~707 with a gradient that points nowhere useful. This
kernel runs the textbook recursion instead (Graves et al. 2006), with four
guards:

* **Real log 0, in float64.** The states of the extended label ``blank, l1,
  blank, ..., lL, blank`` start at ``log 1 = 0`` (the first two) and ``-inf``
  (the rest), and each frame's log-sum-exp of (at most) three predecessors is
  their maximum plus ``log1p`` of the others' share, shifted by 0 when all
  three are ``-inf`` (so ``-inf`` stays ``-inf``, never ``-inf - (-inf)``).
  The log-probabilities and the recursion are float64's (three predecessors a
  state, where Keras's transition matrix has ``states^2``): a loss is within
  an ULP of float32 of the definition, down to losses of 1e-37 made of
  alternatives ``exp(-87)`` as likely; a loss near 0 that cancels inside the
  log-probabilities themselves (``-log(p + q)``, ``p + q = 1 - e``) within
  1e-16 of it, where float32 log-probabilities left 1e-9. The gradient is the
  alignments' posterior mass ``exp(alpha + beta - emission - log p)`` per
  state (normalized over the states at each frame, so within ``[0, 1]``
  whatever the rounding), from a backward recursion of the same form
  (``tf.custom_gradient``): nothing differentiates through the log-sum-exps.
  Against mpmath, 0.5 ULP of its larger term (``softmax`` or the posterior
  mass) over the benchmark's grid while logits are within 2^30 of each other;
  beyond, float64 rounds a log-probability by more than a float32 ULP of the
  posterior, and alignments tied to within their fractions are split by that
  rounding (finite, each frame's masses summing to 1).
* **Impossible alignments are found from the labels.** A label sequence of
  length ``L`` with ``R`` adjacent repeats needs ``L + R`` frames (a blank
  between repeats). Where ``T < L + R`` the probability of the label is 0 and
  the loss is ``+inf``. Those rows run on an empty label (double where: a
  feasible input, finite in value and gradient), and the result is replaced by
  ``+inf``, or by 0 with ``zero_infinity=True`` (PyTorch's option); either way
  their gradient is exactly 0, never NaN.
* **Log-probabilities have a floor.** They are ``ops.log_softmax`` of the
  logits, floored at ``-max / (4 (T + 1))`` (the maximum of the result's
  dtype), so that a loss, a sum over the ``T`` frames, cannot overflow it
  (Keras's loss is NaN for logits more than ``3.4e38`` apart). Above the
  floor the values are the definition's.
* **NaN in, NaN out.** A NaN logit makes its row's loss NaN, also with
  ``zero_infinity`` (only infinite losses are zeroed, as in PyTorch), whatever
  the CPU's maximum does with NaN; so does a label outside ``[0, classes)``,
  which the gather would otherwise clamp to the nearest class (inside XLA,
  where the caller's check is dropped).
"""

from __future__ import annotations

import tensorflow as tf

from stableops._internal.dtypes import compute_dtype, dtype_limits
from stableops._internal.gradients import custom_gradient
from stableops._internal.kernel import xla_kernel
from stableops.losses._categorical import _invalid_labels
from stableops.ops import log_softmax


def invalid_labels(labels, num_classes):
    """Entries of ``labels`` outside ``[0, num_classes)``: every non-zero entry is a label
    (it counts in ``label_length``); the padding, 0, is the blank and always valid."""
    return _invalid_labels(labels, num_classes, ignore_class=None)


def required_frames(labels, label_length):
    """Frames a label sequence needs: its length plus one blank between adjacent repeats."""
    position = tf.range(tf.shape(labels)[1] - 1)
    inside = position[None, :] < (label_length[:, None] - 1)
    repeat = tf.logical_and(tf.equal(labels[:, 1:], labels[:, :-1]), inside)
    return label_length + tf.reduce_sum(tf.cast(repeat, label_length.dtype), axis=1)


def extended_labels(labels):
    """``[batch, 2 L + 1]``: ``blank, l1, blank, l2, ..., lL, blank`` (blank = class 0)."""
    batch, length = tf.shape(labels)[0], tf.shape(labels)[1]
    interleaved = tf.reshape(tf.stack([tf.zeros_like(labels), labels], axis=2), [batch, 2 * length])
    return tf.concat([interleaved, tf.zeros_like(labels[:, :1])], axis=1)


def _shifted(states, by, fill=-float("inf")):
    """``states[..., s - by]``, ``fill`` (``log 0``) where ``s - by`` is out of range."""
    pad = tf.fill(tf.concat([tf.shape(states)[:-1], [abs(by)]], 0), tf.constant(fill, states.dtype))
    if by > 0:
        return tf.concat([pad, states[..., :-by]], axis=-1)
    return tf.concat([states[..., -by:], pad], axis=-1)


def _log_add3(a, b, c):
    """``log(e^a + e^b + e^c)`` as ``m + log1p(s)``: ``m`` the maximum, ``s`` the other two's
    ``exp(x - m)`` (the maximum's is exactly 1; a tie's counts 1 in ``s``). ``log(1 + s)``
    would lose an ``s`` below float64's 1e-16: a loss of 1e-37 takes alternatives of
    ``exp(-87)`` relative weight. Shifted by 0 where all are ``-inf``, which stays ``-inf``;
    NaN stays NaN whatever the CPU's maximum does with it."""
    top = tf.maximum(tf.maximum(a, b), c)
    shift = tf.where(tf.math.is_finite(top), top, tf.zeros_like(top))
    exp_a, exp_b, exp_c = tf.exp(a - shift), tf.exp(b - shift), tf.exp(c - shift)
    others = tf.where(tf.equal(a, top), exp_b + exp_c,
                      tf.where(tf.equal(b, top), exp_a + exp_c, exp_a + exp_b))
    return tf.where(tf.equal(top, -float("inf")), top, shift + tf.math.log1p(others))


def _alignment_log_likelihood(emissions, skips, finals, real):
    """``log p(label)`` per sample and its gradient with respect to ``emissions``.

    ``emissions`` ``[T, batch, S]`` (float64): the log-probability of each
    extended-label state's class at each frame. ``skips`` ``[batch, S]``: state
    ``s`` may be entered from ``s - 2`` (a label unlike the one before it).
    ``finals`` ``[batch, S]``: the states an alignment may end in (the last
    label and the blank after it). ``real`` ``[T]``: the frames that count, the
    first ones; the others (padding) leave ``alpha`` as it was, and get no
    gradient.

    ``alpha_t(s) = logadd(alpha_{t-1}(s), alpha_{t-1}(s - 1), alpha_{t-1}(s - 2)
    if skips[s]) + emissions_t(s)``, from ``alpha_{-1} = (0, -inf, ...)``;
    ``beta`` the same backwards from the final states; the gradient of
    ``log p`` is ``exp(alpha + beta - emissions - log p)``, the posterior mass of the state,
    taken as ``alpha + beta - emissions`` normalized over the states at each frame (each
    frame's masses sum to 1): the same in exact arithmetic, and in ``[0, 1]`` also where
    float64 cannot resolve it (logits of 1e32).
    """
    never = tf.fill(tf.shape(skips), tf.constant(-float("inf"), emissions.dtype))
    zero = tf.zeros_like(never)

    def forward_step(previous, frame):
        emission, counts = frame
        skipped = tf.where(skips, _shifted(previous, 2), never)
        following = _log_add3(previous, _shifted(previous, 1), skipped) + emission
        return tf.where(counts, following, previous)

    start = tf.concat([zero[:, :1], never[:, 1:]], axis=1)
    alpha = tf.scan(forward_step, (emissions, real), initializer=start)
    last_states = tf.where(finals, alpha[-1], never)
    # The last label's state and the blank after it (none and the first blank for an empty label).
    log_likelihood = _log_add3(tf.reduce_max(last_states[:, 1::2], axis=1),
                               tf.reduce_max(last_states[:, ::2], axis=1), never[:, 0])

    def grad(upstream):
        def backward_step(following, frame):
            emission, is_last = frame
            skipped = tf.where(_shifted(skips, -2, False), _shifted(following, -2), never)
            successors = _log_add3(following, _shifted(following, -1), skipped)
            return tf.where(is_last, tf.where(finals, zero, never), successors) + emission

        # The last frame that counts; the padding after it keeps beta at -inf (no successor).
        last = tf.reduce_sum(tf.cast(real, tf.int32)) - 1
        is_last = tf.equal(tf.range(tf.shape(emissions)[0]), last)
        beta = tf.scan(backward_step, (emissions, is_last), initializer=never, reverse=True)
        # Normalized over the states at each frame, where each sums to p exactly: the same
        # mass, and never above 1 where logits of 1e32 leave alpha + beta - emissions - log p
        # (a cancellation of four such numbers) with rounding errors of 1e16.
        posterior = alpha + beta - emissions
        mass = tf.exp(posterior - tf.reduce_logsumexp(posterior, axis=-1, keepdims=True))
        # A padding frame's states are all -inf (-inf - -inf: NaN): no mass.
        mass = tf.where(real[:, None, None], mass, tf.zeros_like(mass))
        return upstream[None, :, None] * mass, None, None, None

    return log_likelihood, grad


_alignment_log_likelihood = custom_gradient(_alignment_log_likelihood)


@xla_kernel(any_length=True)
def ctc_kernel(labels, logits, frames, zero_infinity):
    """Per-sample CTC loss of ``logits`` ``[batch, T, classes]``, int32 ``labels`` ``[batch, L]``.

    Class 0 is the blank and the padding (Keras's ``mask_index``); every
    sample uses the first ``frames`` frames (an int32 scalar tensor, at most ``T``:
    the others are padding, which the caller adds so that a few padded lengths share
    one compiled program). The log-probabilities and the recursion are
    float64's; the result is float32 (float64 for float64). A row holding a label
    outside ``[0, classes)`` gets NaN (the caller's check raises outside XLA); an
    empty ``[batch, 0]`` label tensor is the empty label of every row.
    """
    # [batch, 0] labels: one column of padding gives the recursion its states.
    labels = tf.pad(labels, [[0, 0], [0, tf.maximum(1 - tf.shape(labels)[1], 0)]])
    bad = tf.reduce_any(invalid_labels(labels, tf.shape(logits)[2]), axis=1)
    dtype = logits.dtype
    narrow = compute_dtype(dtype)
    label_length = tf.reduce_sum(tf.cast(tf.not_equal(labels, 0), tf.int32), axis=1)
    feasible = required_frames(labels, label_length) <= frames
    log_probs = log_softmax(tf.cast(logits, tf.float64), axis=-1)
    # Floor: T frames of it stay finite in the result's dtype.
    floor = -dtype_limits(narrow).max / (4.0 * (tf.cast(frames, tf.float64) + 1.0))
    # NaN kept
    log_probs = tf.where(log_probs < floor, tf.fill(tf.shape(log_probs), floor), log_probs)
    # Double where: an impossible row is computed on the empty label (always
    # feasible), so neither its value nor its gradient is inf or NaN.
    labels = tf.where(feasible[:, None], labels, tf.zeros_like(labels))
    label_length = tf.where(feasible, label_length, tf.zeros_like(label_length))
    extended = extended_labels(labels)
    state = tf.range(tf.shape(extended)[1])
    # A label state (odd) may be entered from the label before it unless the two are
    # equal; a 0 inside the first label_length labels is a label of class 0 (as TF's).
    skips = tf.logical_and(tf.equal(state % 2, 1)[None, :],
                           tf.not_equal(extended, _shifted(extended, 2, -1)))
    finals = tf.logical_and(state[None, :] >= 2 * label_length[:, None] - 1,
                            state[None, :] <= 2 * label_length[:, None])
    emissions = tf.transpose(tf.gather(log_probs, extended, axis=2, batch_dims=1), [1, 0, 2])
    # A first frame that keeps the start (log 1 in the first blank, log 0 elsewhere): the
    # recursion always has a frame, where XLA cannot compile a scan over none (T = 0: the
    # empty label's loss is 0, any other's +inf). Its gradient is sliced off by the concat's.
    keep_start = tf.cast(tf.where(tf.equal(state, 0), 0.0, -float("inf")), emissions.dtype)
    keep_start = tf.broadcast_to(keep_start, tf.concat([[1], tf.shape(emissions)[1:]], 0))
    emissions = tf.concat([keep_start, emissions], axis=0)
    real = tf.range(tf.shape(emissions)[0]) <= frames  # the kept start and the frames
    log_likelihood = _alignment_log_likelihood(emissions, skips, finals, real)
    loss = tf.cast(0.0 - log_likelihood, narrow)  # +0, not -0, for a sure label
    fill = tf.constant(0.0 if zero_infinity else float("inf"), narrow)
    loss = tf.where(feasible, loss, tf.fill(tf.shape(loss), fill))
    nan = tf.logical_or(tf.reduce_any(tf.math.is_nan(logits), axis=[1, 2]), bad)
    return tf.where(nan, tf.fill(tf.shape(loss), tf.constant(float("nan"), narrow)), loss)

