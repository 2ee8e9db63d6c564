"""The benchmark cases: each loss and hot op, with its stableops, Keras and tf.nn forms.

A ``Case`` knows how to make inputs of a given size for the speed run and
which implementations to compare. Its accuracy grid and mpmath reference live
in ``accuracy.py``, keyed by the case name.

Implementations are built lazily (``Impl.build``): a stableops op or loss that
has not landed yet (placeholder raising ``NotImplementedError``, or a class
missing from ``stableops.losses``) makes ``probe`` answer "unavailable" and the
case is reported without that contestant instead of crashing the run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

# Speed-run row length for the losses and the row ops: size = rows * width.
ELEMENTWISE_WIDTH = 64
CLASSES = 128
# Narrow rows: the class count of MNIST and CIFAR-10. XLA on CPU compiles rows narrower
# than its vector loops differently (README, "Why the misses stay"), so one case has them.
NARROW_CLASSES = 10

IMPLS = ("stableops", "keras", "tf.nn")
BASELINE = "keras"


@dataclasses.dataclass(frozen=True)
class Impl:
    """One contestant: ``build(per_sample)`` returns ``fn(*inputs)``.

    ``per_sample=False`` is the speed form (the loss reduced to a scalar the
    way Keras does by default, ``sum_over_batch_size``); ``per_sample=True``
    is the accuracy form (one value per sample, ``reduction=None``). Ops
    ignore it.
    """

    name: str
    api: str
    build: Callable[[bool], Callable]


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmarked loss or op.

    ``make_inputs(size, dtype, rng)`` returns the NumPy inputs of the speed
    run, ``size`` elements in the prediction tensor; ``wrt`` is the index of
    the input differentiated (predictions or logits). ``elementwise`` marks
    the cases whose memory traffic the limits table compares with a copy.
    ``keras_note`` says what the Keras built-in runs: it explains the eager
    and plain ``tf.function`` ratios (a single fused TF kernel leaves XLA
    little to gain).
    """

    name: str
    kind: str  # "loss" or "op"
    elementwise: bool
    make_inputs: Callable[[int, np.dtype, np.random.Generator], tuple]
    wrt: int
    impls: tuple[Impl, ...]
    keras_note: str

    def impl(self, name: str) -> Impl | None:
        return next((i for i in self.impls if i.name == name), None)


# ----------------------------------------------------------------------------
# Implementation builders
# ----------------------------------------------------------------------------


def _loss_class(module_name: str, class_name: str, **kwargs):
    def build(per_sample: bool):
        import importlib

        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)  # AttributeError: not landed yet
        reduction = None if per_sample else "sum_over_batch_size"
        return cls(reduction=reduction, **kwargs)

    return build


def _stableops_loss(class_name: str, **kwargs) -> Impl:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    api = f"stableops.losses.{class_name}({args})"
    return Impl("stableops", api, _loss_class("stableops.losses", class_name, **kwargs))


def _keras_loss(class_name: str, **kwargs) -> Impl:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return Impl(
        "keras",
        f"keras.losses.{class_name}({args})",
        _loss_class("keras.losses", class_name, **kwargs),
    )


def _tf_loss(api: str, elementwise_fn: Callable) -> Impl:
    """A tf.nn per-element loss, averaged over the last axis (per sample) or everything (scalar)."""

    def build(per_sample: bool):
        import tensorflow as tf

        def per_sample_loss(y_true, y_pred):
            value = elementwise_fn(y_true, y_pred)
            return (
                tf.reduce_mean(value, axis=-1) if value.shape.rank == y_pred.shape.rank else value
            )

        if per_sample:
            return per_sample_loss
        return lambda y_true, y_pred: tf.reduce_mean(per_sample_loss(y_true, y_pred))

    return Impl("tf.nn", api, build)


def _op(name: str, api: str, resolve: Callable[[], Callable], **kwargs) -> Impl:
    def build(per_sample: bool):
        fn = resolve()
        return lambda x: fn(x, **kwargs)

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return Impl(name, f"{api}(x, {args})" if args else f"{api}(x)", build)


def _stableops_op(op_name: str, **kwargs) -> Impl:
    def resolve():
        import stableops.ops

        return getattr(stableops.ops, op_name)

    return _op("stableops", f"stableops.ops.{op_name}", resolve, **kwargs)


def _keras_op(op_name: str, **kwargs) -> Impl:
    def resolve():
        import keras

        return getattr(keras.ops, op_name)

    return _op("keras", f"keras.ops.{op_name}", resolve, **kwargs)


def _tf_op(path: str, **kwargs) -> Impl:
    def resolve():
        import tensorflow as tf

        obj = tf
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)
        return obj

    return _op("tf.nn", path, resolve, **kwargs)


def _hand_written_loss(api: str, per_sample_fn: Callable) -> Impl:
    """A loss Keras does not ship, as users write it today (the ``keras`` baseline).

    ``per_sample_fn(y_true, y_pred)`` gives one value per sample; the speed form
    averages it over the batch (Keras's default ``sum_over_batch_size``).
    """

    def build(per_sample: bool):
        import keras

        if per_sample:
            return per_sample_fn
        return lambda y_true, y_pred: keras.ops.mean(per_sample_fn(y_true, y_pred))

    return Impl("keras", api, build)


def _hand_gaussian_nll(y_true, y_pred):
    from keras import ops

    mean, log_variance = ops.split(y_pred, 2, axis=-1)
    return ops.mean(
        0.5 * (log_variance + ops.square(y_true - mean) * ops.exp(-log_variance)), axis=-1
    )


def _hand_gaussian_kl(y_true, y_pred):
    from keras import ops

    mean, log_variance = ops.split(y_pred, 2, axis=-1)
    return -0.5 * ops.sum(1.0 + log_variance - ops.square(mean) - ops.exp(log_variance), axis=-1)


def _hand_poisson_nll(y_true, y_pred):
    from keras import ops

    return ops.mean(ops.exp(y_pred) - y_true * y_pred, axis=-1)


# ----------------------------------------------------------------------------
# Speed inputs (realistic values; the edge cases are accuracy's business)
# ----------------------------------------------------------------------------


def _rows(size: int, width: int) -> tuple[int, int]:
    # Rounded up: at least `size` elements on rows of 10 too.
    return (max(1, -(-size // width)), width)


def _binary_probabilities(size, dtype, rng, width=ELEMENTWISE_WIDTH):
    shape = _rows(size, width)
    y_true = (rng.random(shape) < 0.5).astype(dtype)
    y_pred = (1.0 / (1.0 + np.exp(-rng.normal(0.0, 2.0, shape)))).astype(dtype)
    return y_true, y_pred


def _binary_logits(size, dtype, rng):
    shape = _rows(size, ELEMENTWISE_WIDTH)
    y_true = (rng.random(shape) < 0.5).astype(dtype)
    return y_true, rng.normal(0.0, 3.0, shape).astype(dtype)


def _regression(size, dtype, rng, width=ELEMENTWISE_WIDTH):
    shape = _rows(size, width)
    return rng.normal(0.0, 1.0, shape).astype(dtype), rng.normal(0.0, 1.5, shape).astype(dtype)


# One output per sample: a binary classifier's or a regression's Dense(1).
def _binary_probabilities_one_output(size, dtype, rng):
    return _binary_probabilities(size, dtype, rng, 1)


def _regression_one_output(size, dtype, rng):
    return _regression(size, dtype, rng, 1)


def _one_hot_logits(size, dtype, rng):
    rows, classes = _rows(size, CLASSES)
    labels = rng.integers(0, classes, rows)
    return np.eye(classes, dtype=dtype)[labels], rng.normal(0.0, 3.0, (rows, classes)).astype(dtype)


def _sparse_logits(size, dtype, rng, width=CLASSES):
    rows, classes = _rows(size, width)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    return labels, rng.normal(0.0, 3.0, (rows, classes)).astype(dtype)


def _sparse_logits_narrow(size, dtype, rng):
    return _sparse_logits(size, dtype, rng, NARROW_CLASSES)


def _mean_and_log_variance(size, dtype, rng):
    rows, width = _rows(size, 2 * ELEMENTWISE_WIDTH)
    y_true = rng.normal(0.0, 1.0, (rows, width // 2)).astype(dtype)
    stats = np.concatenate(
        [rng.normal(0.0, 1.0, (rows, width // 2)), rng.normal(0.0, 2.0, (rows, width // 2))], -1
    )
    return y_true, stats.astype(dtype)


def _latent_stats(size, dtype, rng):
    rows, width = _rows(size, 2 * ELEMENTWISE_WIDTH)
    stats = np.concatenate(
        [rng.normal(0.0, 1.0, (rows, width // 2)), rng.normal(-1.0, 2.0, (rows, width // 2))], -1
    )
    return np.zeros((rows, 1), dtype), stats.astype(dtype)


def _counts_and_log_rates(size, dtype, rng):
    shape = _rows(size, ELEMENTWISE_WIDTH)
    log_rate = rng.normal(0.5, 1.0, shape)
    return rng.poisson(np.exp(log_rate)).astype(dtype), log_rate.astype(dtype)


def _softmax_rows(rng, rows, classes):
    logits = rng.normal(0.0, 3.0, (rows, classes))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _one_hot_probabilities(size, dtype, rng):
    rows, classes = _rows(size, CLASSES)
    labels = rng.integers(0, classes, rows)
    return np.eye(classes, dtype=dtype)[labels], _softmax_rows(rng, rows, classes).astype(dtype)


def _two_distributions(size, dtype, rng):
    rows, classes = _rows(size, CLASSES)
    return tuple(_softmax_rows(rng, rows, classes).astype(dtype) for _ in range(2))


def _counts_and_rates(size, dtype, rng):
    counts, log_rates = _counts_and_log_rates(size, np.float64, rng)
    return counts.astype(dtype), np.exp(log_rates).astype(dtype)


def _nonnegative_regression(size, dtype, rng):
    return tuple(np.abs(a) for a in _regression(size, dtype, rng))


def _signed_labels(size, dtype, rng):
    shape = _rows(size, ELEMENTWISE_WIDTH)
    y_true = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)
    return y_true, rng.normal(0.0, 1.5, shape).astype(dtype)


def _row_input(size, dtype, rng):
    return (rng.normal(0.0, 3.0, _rows(size, CLASSES)).astype(dtype),)


def _elementwise_input(size, dtype, rng):
    return (rng.normal(0.0, 2.0, _rows(size, ELEMENTWISE_WIDTH)).astype(dtype),)


# Metric-learning and CTC inputs: pairwise work grows with batch^2 (semi-hard
# mining with batch^3), so the batch is capped at 256 (embeddings of width 256):
# above 2^16 elements the size stops growing.
METRIC_BATCH = 256
METRIC_DIM = 256


def _embeddings(size, dtype, rng):
    # A fixed width: the harness traces each case once with only the batch unknown.
    batch, dim = min(METRIC_BATCH, max(8, size // METRIC_DIM)), METRIC_DIM
    labels = rng.integers(0, max(2, batch // 8), batch).astype(np.int32)  # ~8 per class
    return labels, rng.normal(0.0, 1.0, (batch, dim)).astype(dtype)


def _two_views(size, dtype, rng):
    batch, dim = 2 * min(METRIC_BATCH // 2, max(4, size // (2 * METRIC_DIM))), METRIC_DIM
    return np.zeros(batch, np.float32), rng.normal(0.0, 1.0, (batch, dim)).astype(dtype)


def _ctc_inputs(size, dtype, rng):
    classes, frames = 32, 50
    batch = max(1, min(64, size // (classes * frames)))
    labels = np.zeros((batch, 20), np.int32)
    for b in range(batch):
        length = rng.integers(5, 21)
        labels[b, :length] = rng.integers(1, classes, length)
    return labels, rng.normal(0.0, 1.0, (batch, frames, classes)).astype(dtype)


def _gram_distances(x):
    """TFA's pairwise_distance: the Gram expansion, clamped at 0, then sqrt."""
    import tensorflow as tf

    squared = tf.reduce_sum(x * x, axis=1, keepdims=True)
    d2 = tf.maximum(squared + tf.transpose(squared) - 2.0 * tf.matmul(x, x, transpose_b=True), 0.0)
    return tf.sqrt(d2)


def _hand_written_triplet_hard(y_true, y_pred):
    import tensorflow as tf

    d = _gram_distances(y_pred)
    same = tf.equal(y_true[:, None], y_true[None, :])
    positive = tf.reduce_max(tf.where(same, d, tf.zeros_like(d)), axis=1)
    negative = tf.reduce_min(tf.where(same, tf.fill(tf.shape(d), d.dtype.max), d), axis=1)
    return tf.nn.relu(positive - negative + 1.0)


def _hand_written_contrastive(y_true, y_pred):
    import tensorflow as tf

    # The mean over the other embeddings of the batch (stableops's convention).
    d = _gram_distances(y_pred)
    same = tf.cast(tf.equal(y_true[:, None], y_true[None, :]), d.dtype)
    terms = same * tf.square(d) + (1.0 - same) * tf.square(tf.nn.relu(1.0 - d))
    others = 1.0 - tf.eye(tf.shape(d)[0], dtype=d.dtype)
    return tf.reduce_sum(terms * others, axis=1) / tf.reduce_sum(others, axis=1)


def _hand_written_nt_xent(y_true, y_pred):
    import tensorflow as tf

    unit = tf.math.l2_normalize(y_pred, axis=1)
    batch = tf.shape(unit)[0]
    logits = tf.matmul(unit, unit, transpose_b=True) / 0.1
    logits = logits - tf.eye(batch, dtype=logits.dtype) * 1e9  # the usual "mask"
    partner = (tf.range(batch) + batch // 2) % batch
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=partner, logits=logits)


# ----------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------


def _sigmoid_bce(y_true, y_pred):
    import tensorflow as tf

    return tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)


def _softmax_ce(y_true, y_pred):
    import tensorflow as tf

    return tf.nn.softmax_cross_entropy_with_logits(labels=y_true, logits=y_pred)


def _sparse_softmax_ce(y_true, y_pred):
    import tensorflow as tf

    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_true, logits=y_pred)


_SPARSE_LOGITS_IMPLS = (
    _stableops_loss("SparseCategoricalCrossentropy", from_logits=True),
    _keras_loss("SparseCategoricalCrossentropy", from_logits=True),
    _tf_loss("tf.nn.sparse_softmax_cross_entropy_with_logits", _sparse_softmax_ce),
)

CASES: tuple[Case, ...] = (
    Case(
        "binary_crossentropy",
        "loss",
        True,
        _binary_probabilities,
        1,
        (_stableops_loss("BinaryCrossentropy"), _keras_loss("BinaryCrossentropy")),
        "clip, two logs, three multiplies and adds, mean: ~10 TF kernels",
    ),
    Case(
        "binary_crossentropy_one_output",
        "loss",
        True,
        _binary_probabilities_one_output,
        1,
        (_stableops_loss("BinaryCrossentropy"), _keras_loss("BinaryCrossentropy")),
        "the same ~10 TF kernels, on one probability per sample ([rows, 1])",
    ),
    Case(
        "binary_crossentropy_logits",
        "loss",
        True,
        _binary_logits,
        1,
        (
            _stableops_loss("BinaryCrossentropy", from_logits=True),
            _keras_loss("BinaryCrossentropy", from_logits=True),
            _tf_loss("tf.nn.sigmoid_cross_entropy_with_logits", _sigmoid_bce),
        ),
        "tf.nn.sigmoid_cross_entropy_with_logits (~7 ops) then mean",
    ),
    Case(
        "categorical_crossentropy_logits",
        "loss",
        False,
        _one_hot_logits,
        1,
        (
            _stableops_loss("CategoricalCrossentropy", from_logits=True),
            _keras_loss("CategoricalCrossentropy", from_logits=True),
            _tf_loss("tf.nn.softmax_cross_entropy_with_logits", _softmax_ce),
        ),
        "one fused TF kernel (SoftmaxCrossEntropyWithLogits) that also returns the gradient",
    ),
    Case(
        "sparse_categorical_crossentropy_logits",
        "loss",
        False,
        _sparse_logits,
        1,
        _SPARSE_LOGITS_IMPLS,
        "one fused TF kernel (SparseSoftmaxCrossEntropyWithLogits) that also returns the gradient",
    ),
    Case(
        "sparse_categorical_crossentropy_logits_10_classes",
        "loss",
        False,
        _sparse_logits_narrow,
        1,
        _SPARSE_LOGITS_IMPLS,
        "the same fused TF kernel (SparseSoftmaxCrossEntropyWithLogits), on rows of 10 classes",
    ),
    Case(
        "binary_focal_crossentropy",
        "loss",
        True,
        _binary_probabilities,
        1,
        (_stableops_loss("BinaryFocalCrossentropy"), _keras_loss("BinaryFocalCrossentropy")),
        "clipped BCE plus p_t, (1 - p_t)^gamma and products: ~20 TF kernels",
    ),
    Case(
        "mean_squared_error",
        "loss",
        True,
        _regression,
        1,
        (_stableops_loss("MeanSquaredError"), _keras_loss("MeanSquaredError")),
        "subtract, square, mean: 3 TF kernels",
    ),
    Case(
        "mean_squared_error_one_output",
        "loss",
        True,
        _regression_one_output,
        1,
        (_stableops_loss("MeanSquaredError"), _keras_loss("MeanSquaredError")),
        "the same 3 TF kernels, on one output per sample ([rows, 1])",
    ),
    Case(
        "huber",
        "loss",
        True,
        _regression,
        1,
        (_stableops_loss("Huber"), _keras_loss("Huber")),
        "subtract, abs, square, compare, where and friends: ~10 TF kernels",
    ),
    Case(
        "log_cosh",
        "loss",
        True,
        _regression,
        1,
        (_stableops_loss("LogCosh"), _keras_loss("LogCosh")),
        "x + softplus(-2x) - log 2, mean: ~6 TF kernels",
    ),
    Case(
        "cosine_similarity",
        "loss",
        False,
        _regression,
        1,
        (_stableops_loss("CosineSimilarity"), _keras_loss("CosineSimilarity")),
        "two l2_normalize (square, sum, max, rsqrt, multiply each), product, sum, negate",
    ),
    Case(
        "categorical_crossentropy",
        "loss",
        False,
        _one_hot_probabilities,
        1,
        (_stableops_loss("CategoricalCrossentropy"), _keras_loss("CategoricalCrossentropy")),
        "row sum, divide, clip (2), log, multiply, sum, negate: ~8 TF kernels",
    ),
    Case(
        "categorical_focal_crossentropy",
        "loss",
        False,
        _one_hot_probabilities,
        1,
        (
            _stableops_loss("CategoricalFocalCrossentropy"),
            _keras_loss("CategoricalFocalCrossentropy"),
        ),
        "row sum, divide, clip (2), log, -t log p, (1 - p)^gamma, alpha, products, sum: "
        "~12 TF kernels",
    ),
    Case(
        "kl_divergence",
        "loss",
        False,
        _two_distributions,
        1,
        (_stableops_loss("KLDivergence"), _keras_loss("KLDivergence")),
        "two clips (4), divide, log, multiply, sum: ~8 TF kernels",
    ),
    Case(
        "poisson",
        "loss",
        True,
        _counts_and_rates,
        1,
        (_stableops_loss("Poisson"), _keras_loss("Poisson")),
        "add 1e-7, log, multiply, subtract, mean: 5 TF kernels",
    ),
    Case(
        "mean_absolute_error",
        "loss",
        True,
        _regression,
        1,
        (_stableops_loss("MeanAbsoluteError"), _keras_loss("MeanAbsoluteError")),
        "subtract, abs, mean: 3 TF kernels",
    ),
    Case(
        "mean_absolute_percentage_error",
        "loss",
        True,
        _regression,
        1,
        (
            _stableops_loss("MeanAbsolutePercentageError"),
            _keras_loss("MeanAbsolutePercentageError"),
        ),
        "abs, maximum with 1e-7, subtract, divide, abs, mean, times 100: 7 TF kernels",
    ),
    Case(
        "mean_squared_logarithmic_error",
        "loss",
        True,
        _nonnegative_regression,
        1,
        (
            _stableops_loss("MeanSquaredLogarithmicError"),
            _keras_loss("MeanSquaredLogarithmicError"),
        ),
        "maximum, add 1, log on each input (6), subtract, square, mean: 9 TF kernels",
    ),
    Case(
        "hinge",
        "loss",
        True,
        _signed_labels,
        1,
        (_stableops_loss("Hinge"), _keras_loss("Hinge")),
        "the {0, 1} label check (two equal, or, all, cond), multiply, subtract, maximum, mean: "
        "~9 TF kernels",
    ),
    Case(
        "squared_hinge",
        "loss",
        True,
        _signed_labels,
        1,
        (_stableops_loss("SquaredHinge"), _keras_loss("SquaredHinge")),
        "the {0, 1} label check (two equal, or, all, cond), multiply, subtract, maximum, square, "
        "mean: ~10 TF kernels",
    ),
    Case(
        "categorical_hinge",
        "loss",
        False,
        _one_hot_logits,
        1,
        (_stableops_loss("CategoricalHinge"), _keras_loss("CategoricalHinge")),
        "multiply, sum, 1 - t, multiply, max, subtract, add, maximum: ~8 TF kernels",
    ),
    Case(
        "dice",
        "loss",
        False,
        _binary_probabilities,
        1,
        (_stableops_loss("Dice"), _keras_loss("Dice")),
        "multiply, three sums over the whole batch, times 2, two adds (one of 1e-7), divide, "
        "1 - ratio: 9 TF kernels",
    ),
    Case(
        "tversky",
        "loss",
        False,
        _binary_probabilities,
        1,
        (_stableops_loss("Tversky"), _keras_loss("Tversky")),
        "three products (two of them with 1 - x), three sums over the whole batch, two weights, "
        "three adds (one of 1e-7), divide, 1 - ratio: 15 TF kernels",
    ),
    Case(
        "triplet_loss",
        "loss",
        False,
        _embeddings,
        1,
        (
            _stableops_loss("TripletLoss", strategy="hard"),
            _hand_written_loss(
                "hand-written batch-hard triplet (Gram distances, sqrt; TFA's formula)",
                _hand_written_triplet_hard,
            ),
        ),
        "the hand-written Gram-matrix triplet loss (matmul, sqrt, masked max/min): ~15 TF kernels",
    ),
    Case(
        "contrastive_loss",
        "loss",
        False,
        _embeddings,
        1,
        (
            _stableops_loss("ContrastiveLoss"),
            _hand_written_loss(
                "hand-written all-pairs contrastive (Gram distances, sqrt)",
                _hand_written_contrastive,
            ),
        ),
        "the hand-written Gram-matrix contrastive loss: ~15 TF kernels",
    ),
    Case(
        "nt_xent",
        "loss",
        False,
        _two_views,
        1,
        (
            _stableops_loss("NTXent", temperature=0.1),
            _hand_written_loss(
                "hand-written NT-Xent (l2_normalize, matmul / t, diagonal - 1e9, sparse CE)",
                _hand_written_nt_xent,
            ),
        ),
        "l2_normalize, one matmul and the fused SparseSoftmaxCrossEntropyWithLogits kernel",
    ),
    Case(
        "ctc",
        "loss",
        False,
        _ctc_inputs,
        1,
        (_stableops_loss("CTC"), _keras_loss("CTC")),
        "tf.nn.ctc_loss with dense labels (ctc_loss_dense: a forward-backward tf.scan)",
    ),
    Case(
        "gaussian_nll",
        "loss",
        False,
        _mean_and_log_variance,
        1,
        (
            _stableops_loss("GaussianNLL", variance="log_variance"),
            _hand_written_loss(
                "hand-written 0.5 * (s + (y - mu)**2 * exp(-s))", _hand_gaussian_nll
            ),
        ),
        "no Keras loss: the hand-written formula (split, subtract, square, exp, multiply, add, "
        "mean)",
    ),
    Case(
        "gaussian_kl",
        "loss",
        False,
        _latent_stats,
        1,
        (
            _stableops_loss("GaussianKL"),
            _hand_written_loss(
                "hand-written -0.5 * sum(1 + s - mu**2 - exp(s))", _hand_gaussian_kl
            ),
        ),
        "no Keras loss: the hand-written VAE term (split, square, exp, adds, sum)",
    ),
    Case(
        "poisson_nll",
        "loss",
        True,
        _counts_and_log_rates,
        1,
        (
            _stableops_loss("PoissonNLL"),
            _hand_written_loss("hand-written exp(x) - y * x", _hand_poisson_nll),
        ),
        "no Keras loss from a log-rate: the hand-written exp(x) - y x, mean (~4 TF kernels)",
    ),
    Case(
        "logsumexp",
        "op",
        False,
        _row_input,
        0,
        (
            _stableops_op("logsumexp", axis=-1),
            _keras_op("logsumexp", axis=-1),
            _tf_op("tf.math.reduce_logsumexp", axis=-1),
        ),
        "tf.math.reduce_logsumexp: max, subtract, exp, sum, log, add (~8 kernels)",
    ),
    Case(
        "softmax",
        "op",
        False,
        _row_input,
        0,
        (
            _stableops_op("softmax", axis=-1),
            _keras_op("softmax", axis=-1),
            _tf_op("tf.nn.softmax", axis=-1),
        ),
        "one fused TF kernel (Softmax); its gradient is ~4 kernels",
    ),
    Case(
        "log_softmax",
        "op",
        False,
        _row_input,
        0,
        (
            _stableops_op("log_softmax", axis=-1),
            _keras_op("log_softmax", axis=-1),
            _tf_op("tf.nn.log_softmax", axis=-1),
        ),
        "one fused TF kernel (LogSoftmax); its gradient is ~4 kernels",
    ),
    Case(
        "elu",
        "op",
        True,
        _elementwise_input,
        0,
        (_stableops_op("elu", alpha=1.0), _keras_op("elu", alpha=1.0), _tf_op("tf.nn.elu")),
        "one fused TF kernel (Elu) and one for its gradient (EluGrad)",
    ),
    Case(
        "leaky_relu",
        "op",
        True,
        _elementwise_input,
        0,
        (
            _stableops_op("leaky_relu", negative_slope=0.2),
            _keras_op("leaky_relu", negative_slope=0.2),
            _tf_op("tf.nn.leaky_relu", alpha=0.2),
        ),
        "one fused TF kernel (LeakyRelu) and one for its gradient (LeakyReluGrad)",
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}

# Speed variants of a case: the accuracy and gradient sections measure their base case only,
# whose grids' rows are a few entries wide whatever the speed run's width.
SPEED_VARIANTS = {
    "sparse_categorical_crossentropy_logits_10_classes": "sparse_categorical_crossentropy_logits",
    "binary_crossentropy_one_output": "binary_crossentropy",
    "mean_squared_error_one_output": "mean_squared_error",
}


def select_cases(only: str | None) -> tuple[Case, ...]:
    """The cases named by the comma-separated words of ``only`` (all when empty).

    A word that is a case name selects that case; any other word selects
    every case whose name contains it (``crossentropy``, ``softmax_``).
    """
    if not only:
        return CASES
    chosen = set()
    for word in (w.strip() for w in only.split(",") if w.strip()):
        matches = [word] if word in CASES_BY_NAME else [c.name for c in CASES if word in c.name]
        if not matches:
            raise ValueError(
                f"--only {word!r} matches no case; cases are: {', '.join(CASES_BY_NAME)}"
            )
        chosen.update(matches)
    return tuple(c for c in CASES if c.name in chosen)


# ----------------------------------------------------------------------------
# Availability
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Availability:
    status: str  # "ok", "unavailable" or "error"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self):
        return {"status": self.status, "detail": self.detail}


def probe(case: Case, impl: Impl) -> Availability:
    """Build ``impl`` and run it once, value and gradient, on tiny float32 inputs.

    ``NotImplementedError``, ``ImportError`` and ``AttributeError`` (a
    placeholder, or a class that has not landed) mean "unavailable"; any other
    exception is recorded as "error" with its message. Nothing is raised.
    """
    import tensorflow as tf

    try:
        fn = impl.build(False)
        inputs = [
            tf.convert_to_tensor(a)
            for a in case.make_inputs(4 * CLASSES, np.float32, np.random.default_rng(0))
        ]
        with tf.GradientTape() as tape:
            tape.watch(inputs[case.wrt])
            out = fn(*inputs)
        tape.gradient(out, inputs[case.wrt])
    except (NotImplementedError, ImportError, AttributeError) as error:
        return Availability("unavailable", f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - reported, never raised
        return Availability("error", f"{type(error).__name__}: {error}"[:300])
    return Availability("ok")


def available_impls(case: Case, availability: dict) -> tuple[Impl, ...]:
    return tuple(i for i in case.impls if availability[case.name][i.name].ok)
