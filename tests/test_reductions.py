"""``_internal/reductions``: the kernels' sums of products, quotients and casts.

``sum_over`` and ``mean_over`` must be exactly ``tf.reduce_sum`` and
``tf.reduce_mean`` (the added ``-0.0`` changes no value, ``-0.0`` included),
and under XLA they must reduce a product the way XLA reduces a sum of terms
(on TF 2.21's CPU backend: YNNPACK instead of a tree of ``reduce-window``
loops, 1.5x slower). The tests that read XLA's optimized program run on that
release only (``measured_xla_only``): other releases compile these forms differently.
``per_sample_sum`` must be ``tf.reduce_sum`` over the last axis too, and under
XLA stay a reduction of its own when a batch sum follows it. ``folded_row_sum``
must be that sum too (in another order), over rows of any width, and under XLA
write out a quarter of the summed expression rather than all of it; ``float64_sum``
the sum in float64, rounded once, over the last axis, trailing axes or all of them.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import tensorflow as tf

import stableops.losses
from stableops import losses, ops
from stableops._internal.reductions import (
    ROW_FOLDS,
    float64_sum,
    folded_row_sum,
    mean_over,
    per_sample_sum,
    sum_over,
    written_once,
)
from tests._helpers import full_size_arrays, measured_xla_only, optimized_hlo

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_same_values_as_tf_reductions(dtype, regime):
    rows = np.array(
        [[-0.0, -0.0, -0.0], [1.0, -1.0, 0.5], [INF, 1.0, 2.0], [INF, -INF, 0.0], [NAN, 1.0, 0.0]]
    )
    x = tf.constant(rows, dtype=dtype)

    def both(x):
        return (
            sum_over(x, axis=-1), tf.reduce_sum(x, axis=-1),
            mean_over(x, axis=0, keepdims=True), tf.reduce_mean(x, axis=0, keepdims=True),
            per_sample_sum(x), tf.reduce_sum(x, axis=-1),
        )

    results = [t.numpy().astype(np.float64) for t in regime.wrap(both, x)(x)]
    for ours, theirs in (results[:2], results[2:4], results[4:]):
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(np.signbit(ours), np.signbit(theirs))  # zeros keep their sign


def test_integer_sums_are_plain_sums():
    x = tf.constant([[1, 2, 3], [4, 5, 6]])
    assert sum_over(x, axis=1).dtype == tf.int32
    np.testing.assert_array_equal(sum_over(x, axis=1).numpy(), [6, 15])


def _reductions(fn, x):
    """The kinds of reductions in ``fn``'s optimized XLA program (their counts)."""
    entry = optimized_hlo(fn, x)
    return {
        "reduce-window": len(re.findall(r"reduce-window[.\d]* = ", entry)),
        "ynn": entry.count("__ynn_fusion"),
    }


@measured_xla_only
def test_a_summed_product_is_reduced_like_a_summed_sum():
    x = tf.constant(np.random.default_rng(0).normal(size=(512, 128)).astype(np.float32))
    like_a_sum = _reductions(lambda x: tf.reduce_sum(tf.exp(x) + 0.5, axis=-1), x)
    product = _reductions(lambda x: sum_over(tf.exp(x) * 0.5, axis=-1), x)
    cast = _reductions(lambda x: sum_over(tf.cast(x > 0, x.dtype), axis=-1), x)
    assert product == like_a_sum
    assert cast == like_a_sum


@measured_xla_only
def test_a_per_sample_sum_is_not_merged_with_the_batch_sum():
    # Reference: a per-sample sum that something else (a scaling) keeps apart
    # from the batch sum, as the hand-written losses' mean over the last axis.
    x = tf.constant(np.random.default_rng(0).normal(size=(512, 128)).astype(np.float32))
    apart = _reductions(lambda x: tf.reduce_sum(tf.reduce_sum(tf.exp(x) + 0.5, axis=-1) * 0.5), x)
    ours = _reductions(lambda x: tf.reduce_sum(per_sample_sum(tf.exp(x) + 0.5)), x)
    assert ours == apart


@pytest.mark.parametrize("width", [1, 3, 4, 5, 8, 11, 31, 32, 37, 128])
def test_folded_row_sum_is_the_row_sum(width, regime):
    # Integers (exact in any order) mark each entry: a dropped or repeated part of the
    # row, or a lost remainder column, changes the sum. Traced with the batch and the
    # width unknown (the kernels' signatures generalize every dimension).
    rows = np.arange(3 * width, dtype=np.float64).reshape(3, width) ** 2
    fn = folded_row_sum
    if regime.name != "eager":
        signature = [tf.TensorSpec([None, None], tf.float64)]
        fn = tf.function(fn, jit_compile=regime.name == "xla", input_signature=signature)
    ours = fn(tf.constant(rows))
    np.testing.assert_array_equal(ours.numpy(), rows.sum(axis=-1))
    nan_row = np.where(np.arange(width) == width - 1, NAN, rows[0])[None]  # NaN in the last entry
    assert np.isnan(folded_row_sum(tf.constant(nan_row)).numpy()).all()


@pytest.mark.parametrize("width", [5, 37])
def test_folded_row_sum_gradient_is_the_upstream_along_the_row(width, regime):
    # d sum_j x_ij / d x_ik = 1: the gradient is each row's upstream, broadcast.
    x = tf.constant(np.random.default_rng(1).normal(size=(3, width)))
    upstream = tf.constant([1.0, -2.0, 0.5], tf.float64)

    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(upstream * folded_row_sum(x))
        return tape.gradient(total, x)

    ours = regime.run(gradient, x.numpy())
    np.testing.assert_array_equal(ours, np.broadcast_to(upstream.numpy()[:, None], (3, width)))


@measured_xla_only
def test_folded_row_sum_gradient_writes_no_buffer_of_its_own():
    # Autodiff of the parts' slices padded each part's gradient back to a full-size float64
    # buffer, four of them written out in categorical focal cross-entropy's program (its
    # float64 row sums; 5.9 against 3.2 ms under XLA at 2^20). Traced with an unknown batch
    # dimension, as model.fit and the kernels' signatures trace.
    rng = np.random.default_rng(0)
    t = tf.constant(np.eye(128, dtype=np.float32)[rng.integers(0, 128, 512)])
    x = tf.constant(rng.uniform(size=(512, 128)).astype(np.float32))

    def value_and_gradient(t, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(stableops.losses.categorical_focal_crossentropy(t, x))
        return total, tape.gradient(total, x)

    signature = [tf.TensorSpec([None, 128], tf.float32)] * 2
    compiled = tf.function(value_and_gradient, jit_compile=True, input_signature=signature)
    program = compiled.experimental_get_compiler_ir(t, x)(stage="optimized_hlo")
    entry = program[program.index("ENTRY"):]
    assert not re.findall(r"= f64\[512,128\][^=]* fusion\(", entry)


def _largest_buffer(fn, x):
    """Elements of the largest array ``fn``'s optimized XLA program writes out (inputs aside)."""
    entry = optimized_hlo(fn, x)
    shapes = re.findall(r"= f(?:32|64)\[([\d,]*)\][^=]* fusion\(", entry)
    return max(math.prod(int(d) for d in shape.split(",") if d) for shape in shapes)


@measured_xla_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_folded_row_sum_writes_out_at_most_a_part_of_the_row(dtype):
    x = tf.constant(np.random.default_rng(0).normal(size=(512, 128)).astype(dtype))
    plain = _largest_buffer(lambda x: tf.reduce_sum(tf.exp(x) * x, axis=-1), x)
    folded = _largest_buffer(lambda x: folded_row_sum(tf.exp(x) * x), x)
    assert plain == 512 * 128  # the whole expression, as the module says
    assert folded <= 512 * 128 // ROW_FOLDS  # float64: none (one loop forms and sums the parts)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_float64_sum_rounds_once(dtype, regime):
    # Each row's exact sum is a small power of two that a sum in the row's own dtype
    # loses: 1 + tiny - 1 cancels to 0 once 1 + tiny has rounded. float64 rows have
    # nothing wider to sum in. A NaN or an infinity stays one; a non-last axis takes the
    # plain sum.
    small = {"float16": 2.0**-14, "bfloat16": 2.0**-30, "float32": 2.0**-30, "float64": 2.0**-60}
    tiny = small[dtype]
    rows = np.array([[1.0, tiny, -1.0, 0.0], [tiny, 1.0, 0.0, -1.0], [1.0, NAN, 0.0, 0.0],
                     [INF, 1.0, 2.0, 3.0]])
    x = tf.constant(rows, dtype=dtype)

    def sums(x):
        return float64_sum(x, -1), float64_sum(x, 1, keepdims=True), float64_sum(x, 0)

    last, kept, first = (t.numpy().astype(np.float64) for t in regime.wrap(sums, x)(x))
    want = np.array([tiny, tiny, NAN, INF])
    if dtype == "float64":
        # Nothing wider to sum in: 1 + tiny rounds to 1 where it is added first (XLA's
        # order), and a row this narrow is summed as it is, in the regime's own order.
        want[:2] = last[:2] if np.all(last[:2] == 0.0) else tiny
    np.testing.assert_array_equal(last, want)
    np.testing.assert_array_equal(kept, want[:, None])
    np.testing.assert_array_equal(first, tf.reduce_sum(x, axis=0).numpy().astype(np.float64))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_float64_sum_over_trailing_axes_rounds_once(dtype, regime):
    # The same cancellation spread over the last two axes, and over all of them: summed as
    # rows of the last axis, then the rows' sums, all in float64. A middle axis takes the
    # plain sum.
    tiny = 2.0**-14 if dtype == "float16" else 2.0**-30
    samples = np.array([[[1.0, tiny], [-1.0, 0.0]], [[tiny, 1.0], [0.0, -1.0]],
                        [[1.0, NAN], [0.0, 0.0]], [[INF, 1.0], [2.0, 3.0]]])
    x = tf.constant(samples, dtype=dtype)

    def sums(x):
        return (float64_sum(x, (1, 2)), float64_sum(x, (-1, 1), keepdims=True),
                float64_sum(x[:2], None), float64_sum(x[:2], None, keepdims=True),
                float64_sum(x, (0, 2)))

    trailing, kept, whole, whole_kept, middle = (
        t.numpy().astype(np.float64) for t in regime.wrap(sums, x)(x)
    )
    np.testing.assert_array_equal(trailing, [tiny, tiny, NAN, INF])
    np.testing.assert_array_equal(kept, np.array([tiny, tiny, NAN, INF])[:, None, None])
    assert whole.shape == () and whole == 2 * tiny
    assert whole_kept.shape == (1, 1, 1) and whole_kept.item() == 2 * tiny
    np.testing.assert_array_equal(middle, tf.reduce_sum(x, axis=(0, 2)).numpy().astype(np.float64))


@pytest.mark.parametrize("shape", [(2, 3, 0), (2, 0, 4), (0, 3, 4)])
def test_float64_sum_over_trailing_axes_of_an_empty_tensor(shape, regime):
    # Zero-size tensors: the rows (of width 0, or none of them) sum to 0.
    x = tf.zeros(shape)

    def sums(x):
        return float64_sum(x, (1, 2)), float64_sum(x, None, keepdims=True)

    trailing, whole = regime.wrap(sums, x)(x)
    np.testing.assert_array_equal(trailing.numpy(), np.zeros(shape[0]))
    np.testing.assert_array_equal(whole.numpy(), np.zeros((1, 1, 1)))


@measured_xla_only
def test_a_whole_tensor_float64_sum_writes_no_buffer():
    # Rows of the last axis summed in one loop each, then their sums: the largest array
    # written is the rows' sums. Summed whole (one fold of the flattened tensor) XLA wrote
    # out a quarter of it; a float32 sum, all of it.
    x = tf.constant(np.random.default_rng(0).normal(size=(512, 128)).astype(np.float32))
    assert _largest_buffer(lambda x: tf.reduce_sum(tf.exp(x) * x), x) == 512 * 128
    assert _largest_buffer(lambda x: float64_sum(tf.exp(x) * x, None), x) <= 512


def _value_and_gradient(fn):
    """``fn(*args)`` and its gradient with respect to the last argument."""

    def value_and_gradient(*args):
        with tf.GradientTape() as tape:
            tape.watch(args[-1])
            y = fn(*args)
        return y, tape.gradient(y, args[-1])

    return value_and_gradient


def _normal(seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(512, 128)).astype(np.float32))


@measured_xla_only
def test_the_row_reduction_writes_no_buffer_for_its_sums():
    # logsumexp's value and gradient under XLA: the exponentials (which become the
    # gradient) and the gradient are full-size; its two row sums (the terms below the
    # maximum, the count of maxima) go through float64_sum and add none. With float32
    # sums XLA wrote both summed expressions out for YNNPACK (the terms below the
    # maximum are the exponentials): three.
    assert full_size_arrays(_value_and_gradient(ops.logsumexp), _normal()) == 2


def test_written_once_is_the_value_itself(regime):
    # A division by a per-row 1: every value comes back bit for bit (zeros, infinities and
    # NaN included; TF flushes subnormals) where the row's value is a number; a row whose
    # value is NaN is NaN or infinite (its values over 0), never a number.
    values = np.array([[0.0, -0.0, 1.5e-38, 3.0, -INF, NAN], [2.5, INF, 0.5, -1.0, 7.0, 1.0],
                       [1.0, 0.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    row_values = np.array([[1.0], [-INF], [NAN]], np.float32)
    out = regime.run(written_once, values, row_values)
    np.testing.assert_array_equal(out[:2].view(np.uint32)[:, :5], values[:2].view(np.uint32)[:, :5])
    assert np.isnan(out[0, 5]) and out[1, 5] == 1.0
    assert not np.isfinite(out[2]).any()


@measured_xla_only
@pytest.mark.parametrize("name", ["softmax", "logsumexp"])
def test_exponentials_are_formed_in_one_loop(name):
    # The corrected exponentials exp(z)(1 + z_low) end in written_once's division, so XLA
    # forms them (the exp and the TwoSum of x - max) in one loop, and the row sums, the value
    # and the gradient read them. Ending in a multiplication, they were formed again from x
    # in each of those loops: softmax's x had five readers besides the maximum's (one core,
    # 2^20, forward and backward: 1.63 -> 1.10x Keras's time). logsumexp's array holds -1 at
    # the maxima, so its count of maxima and its gradient need not compare x with the
    # maximum again (1.45-1.56 -> 1.33-1.41x).
    entry = optimized_hlo(_value_and_gradient(getattr(ops, name)), _normal())
    (x,) = re.findall(r"%(\S+) = f32\[512,128\]\S* parameter\(0\)", entry)
    readers = re.findall(rf"fusion\([^)]*%{re.escape(x)}[,)]", entry)
    assert len(readers) == 2, readers  # the maximum's and the exponentials'


def _distributions(seed):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.dirichlet(np.ones(128), 512).astype(np.float32))


@measured_xla_only
def test_kl_divergence_writes_only_its_gradient():
    # Its ratio t/p is t times the reciprocal of p (one user: formed in the sum's loop) and
    # its gradient's -t/p a quotient of its own. As a quotient read by the log and by the
    # rounding's correction, the ratio was written out (one core, 2^20, against Keras under
    # XLA: 1.36-1.42 -> 1.23x).
    value_and_gradient = _value_and_gradient(losses.kl_divergence)
    assert full_size_arrays(value_and_gradient, _distributions(0), _distributions(1)) == 1


@measured_xla_only
def test_categorical_focal_backward_forms_its_chain_once():
    # The upstream gradient of 1 - q (the focal factor's chain, from the float64 log q and
    # 1 - q) ends in written_once's division: XLA forms the chain in one loop, which reads
    # log q's float32 log and reciprocal, and the gradient's row sum and the gradient read
    # its result. Ending in a multiplication, the chain was formed again in both of them
    # (one core, [2048, 128], against Keras under XLA: 1.33-1.36 -> 1.23-1.32; peak memory
    # at 2^24 unchanged, 320 MiB). The gradient's row sum is a float64 sum (one loop); as a
    # float32 sum XLA wrote its terms out for YNNPACK. Written: the floored input, the log
    # and the reciprocal, the upstream gradient of 1 - q, and the gradient.
    labels = np.random.default_rng(2).integers(0, 128, 512)
    one_hot = tf.constant(np.eye(128, dtype=np.float32)[labels])
    value_and_gradient = _value_and_gradient(losses.categorical_focal_crossentropy)
    assert full_size_arrays(value_and_gradient, one_hot, _distributions(1)) == 5
    entry = optimized_hlo(value_and_gradient, one_hot, _distributions(1))
    (log,) = re.findall(r"%(\S+) = f32\[512,128\][^=]* fusion\([^\n]*op_type=\"Log\"", entry)
    # The loss's row sum and the chain's loop; not the gradient's row sum nor the gradient.
    assert len(re.findall(rf"fusion\([^)]*%{re.escape(log)}[,)]", entry)) == 2


@measured_xla_only
def test_narrow_rows_are_read_by_the_row_sums_and_the_gradient_alone():
    # Sparse cross-entropy from logits over 4 classes: the exponentials (the one array of
    # that shape written besides the gradient, -1 at the maxima) feed the two row sums (of
    # the terms below the maximum, and the count of maxima) and the gradient. Folded
    # into parts one entry wide, the sum lost its size-1 reductions and XLA formed it again
    # in each of its consumers' loops: seven readers of the exponentials.
    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, 4, 512).astype(np.int32))
    logits = tf.constant(rng.normal(size=(512, 4)).astype(np.float32))
    crossentropy = functools.partial(losses.sparse_categorical_crossentropy, from_logits=True)
    entry = optimized_hlo(_value_and_gradient(crossentropy), labels, logits)
    (exponentials,) = re.findall(
        r"%(\S+) = f32\[512,4\][^=]* fusion\([^\n]*op_name=\"written_once\"", entry
    )
    readers = re.findall(rf"fusion\([^)]*%{re.escape(exponentials)}[,)]", entry)
    assert len(readers) == 3


@measured_xla_only
def test_categorical_crossentropy_from_logits_writes_only_its_exponentials_and_gradient():
    # Its gradient reads the row sums' exponentials (written once) and its target-weighted
    # sum is a float64 sum. The float32 product for YNNPACK was written out too (three
    # full-size arrays; peak memory at 2^24 134 -> 71 MiB in a plain tf.function, 133 -> 67
    # under XLA). The exponentials' buffer takes the gradient (the same peak); formed again in
    # the gradient's loop instead, they made it 2-4x slower on rows of 8 classes.
    labels = np.random.default_rng(1).integers(0, 128, 512)
    one_hot = tf.constant(np.eye(128, dtype=np.float32)[labels])
    value_and_gradient = _value_and_gradient(
        functools.partial(losses.categorical_crossentropy, from_logits=True)
    )
    assert full_size_arrays(value_and_gradient, one_hot, _normal()) == 2
    entry = optimized_hlo(value_and_gradient, one_hot, _normal())
    exponentials = r"= f32\[512,128\][^=]* fusion\([^\n]*op_name=\"written_once\""
    assert len(re.findall(exponentials, entry)) == 1


@measured_xla_only
def test_log_softmax_writes_only_its_value_and_gradient():
    # Its value is its own expression of x, and its gradient's sum(g) a float64 sum: with
    # the value formed from z = x - max (which the row sums also read) and a float32 sum,
    # XLA wrote z and the masked upstream gradient out too (four full-size arrays).
    assert full_size_arrays(_value_and_gradient(ops.log_softmax), _normal()) == 2


@measured_xla_only
def test_cosine_similarity_writes_only_its_gradient():
    # Its three sums of products (a^2, b^2, a b) go through float64_sum; with float32 sums
    # XLA wrote each product out for YNNPACK. Its float64 entries are clamps, which XLA
    # forms again in each loop (a select for the infinities was written out in float64,
    # one per input), and no tf.cond picks a scaled form: the normalized rows of that
    # branch were allocated on every call (102 MiB at 2^24, beside a 64 MiB gradient).
    value_and_gradient = _value_and_gradient(losses.cosine_similarity)
    assert full_size_arrays(value_and_gradient, _normal(0), _normal(1), everywhere=True) == 1


@measured_xla_only
def test_categorical_hinge_writes_no_buffer_for_its_sums():
    # The sum of y_true y_pred (value) and the count of tied maxima (gradient) go through
    # float64_sum; with float32 sums XLA wrote both summed expressions out for YNNPACK
    # (four full-size arrays). Left: the scores the maximum is taken of, and the gradient.
    labels = np.random.default_rng(0).integers(0, 128, 512)
    one_hot = tf.constant(np.eye(128, dtype=np.float32)[labels])
    value_and_gradient = _value_and_gradient(losses.CategoricalHinge())
    assert full_size_arrays(value_and_gradient, one_hot, _normal()) == 2


@measured_xla_only
@pytest.mark.parametrize("loss", [losses.Tversky(), losses.Dice()], ids=["tversky", "dice"])
def test_overlap_losses_write_no_buffer_for_their_sums(loss):
    # Their sums of computed terms over the whole batch (Tversky: misses, false alarms,
    # true positives; Dice: misses plus false alarms) go through float64_sum, in the
    # overflow branch too, whose buffers XLA allocates even where the tf.cond takes the
    # other; with float32 sums XLA wrote each term out for YNNPACK, and |y_pred| for the
    # overflow test's maximum. What is left full-size is the gradient.
    rng = np.random.default_rng(0)
    mask = tf.constant((rng.uniform(size=(512, 128)) > 0.5).astype(np.float32))
    scores = tf.constant(rng.uniform(size=(512, 128)).astype(np.float32))
    value_and_gradient = _value_and_gradient(loss)
    assert full_size_arrays(value_and_gradient, mask, scores, everywhere=True) == 1


@measured_xla_only
def test_l2_normalize_writes_no_buffer_for_its_sums():
    # Its sums (x * x for the norm, g * y for the gradient's projection) go through
    # float64_sum; with float32 sums XLA wrote both products out for YNNPACK (seven
    # full-size arrays). Left: the unit rows (the value) and the gradient. (Four while
    # float32 rows were scaled: |x| for the scale's maximum and x / scale; five while a
    # zero row's unit was selected by the row.)
    assert full_size_arrays(_value_and_gradient(ops.l2_normalize), _normal()) == 2
