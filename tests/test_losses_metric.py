"""Metric-learning losses (stableops/losses/_metric_learning.py): triplet, contrastive, NT-Xent.

* parity with TensorFlow Addons' published formulas, re-implemented here in
  NumPy float64 (``_tfa_*``: TFA's masked maximum/minimum and tiling logic,
  written as loops), and with SimCLR's NT-Xent written as a loop;
* the motivating failures: a hand-written ``sqrt`` distance has a NaN
  gradient at a duplicate embedding (ours: 0); a hand-written NT-Xent at
  temperature 0.01 in float16 overflows (ours: finite);
* hypothesis properties: finite values and gradients in float32, float16 and
  bfloat16; the three regimes (static and unknown batch); NaN in, NaN out;
* hyperparameter and shape errors; ``get_config``, serialization and a saved
  model; a short ``model.fit`` under mixed precision.
"""

from __future__ import annotations

import itertools
import math

import keras
import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import stableops.losses as S
from benchmarks.accuracy import mp_nt_xent
from tests._helpers import compiled_calls, compiled_function_names
from tests._regimes import Regime
from tests._strategies import FLOAT_DTYPES, finite_arrays

DISTANCES = ("euclidean", "squared", "cosine")
STRATEGIES = ("hard", "semi_hard")
TFA_METRIC = {"euclidean": "L2", "squared": "squared-L2", "cosine": "angular"}


# ----------------------------------------------------------------------------
# References: TFA's semantics in NumPy float64
# ----------------------------------------------------------------------------


def _tfa_distances(x, distance):
    """TFA's ``pairwise_distance`` / ``angular_distance`` (exact, float64)."""
    x = np.asarray(x, np.float64)
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        return np.maximum(1.0 - unit @ unit.T, 0.0)
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(squared, 0.0)
    return squared if distance == "squared" else np.sqrt(squared)


def _masked_maximum(row, mask):
    """TFA's ``_masked_maximum``: max over ``mask``; the row's minimum if the mask is empty."""
    low = row.min()
    return ((row - low) * mask).max() + low


def _masked_minimum(row, mask):
    high = row.max()
    return ((row - high) * mask).min() + high


def _tfa_hard(labels, x, margin, distance):
    d = _tfa_distances(x, distance)
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    losses = []
    for a in range(n):
        positives = (labels == labels[a]).astype(float)
        positives[a] = 0.0
        negatives = (labels != labels[a]).astype(float)
        hardest_positive = _masked_maximum(d[a], positives)
        hardest_negative = _masked_minimum(d[a], negatives)
        losses.append(max(hardest_positive - hardest_negative + margin, 0.0))
    return float(np.mean(losses))


def _tfa_semi_hard(labels, x, margin, distance):
    d = _tfa_distances(x, distance)
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    total, pairs = 0.0, 0
    for a, p in itertools.product(range(n), range(n)):
        if a == p or labels[a] != labels[p]:
            continue
        pairs += 1
        negatives = labels != labels[a]
        outside = [d[a, k] for k in range(n) if negatives[k] and d[a, k] > d[a, p]]
        chosen = min(outside) if outside else _masked_maximum(d[a], negatives.astype(float))
        total += max(margin + d[a, p] - chosen, 0.0)
    return total / pairs


def _tfa_contrastive(labels, x, margin):
    """TFA's ``contrastive_loss`` on every pair's distance, averaged over the pairs."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels).reshape(-1)
    terms = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        d = np.linalg.norm(x[i] - x[j])
        y = float(labels[i] == labels[j])
        terms.append(y * d**2 + (1 - y) * max(margin - d, 0.0) ** 2)
    return float(np.mean(terms))


def _tfa_contrastive_gradient(labels, x, margin):
    """The gradient of :func:`_tfa_contrastive` with respect to ``x``, from differences in float64.

    ``d t(d_ij) / d x_i = t'(d_ij) (x_i - x_j) / d_ij``, ``t'(d) = 2 d`` for a similar pair and
    ``-2 max(margin - d, 0)`` otherwise (every ``d_ij > 0``).
    """
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels).reshape(-1)
    pairs = list(itertools.combinations(range(len(labels)), 2))
    gradient = np.zeros_like(x)
    for i, j in pairs:
        difference = x[i] - x[j]
        d = np.linalg.norm(difference)
        slope = 2 * d if labels[i] == labels[j] else -2 * max(margin - d, 0.0)
        gradient[i] += slope * difference / d
        gradient[j] -= slope * difference / d
    return gradient / len(pairs)


def _simclr_nt_xent(z, temperature):
    """SimCLR's NT-Xent (Chen et al. 2020, Algorithm 1): per row, views stacked [2n, dim]."""
    z = np.asarray(z, np.float64)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    two_n = len(z)
    n = two_n // 2
    out = []
    for i in range(two_n):
        s = unit @ unit[i] / temperature
        p = (i + n) % two_n
        others = [k for k in range(two_n) if k != i]
        out.append(-(s[p] - np.log(np.sum(np.exp(s[others])))))
    return np.array(out)


def _batch(seed=0, n=12, dim=5, classes=3):
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(classes), n // classes + 1)[:n]
    rng.shuffle(labels)
    return labels, rng.normal(size=(n, dim)).astype(np.float32)


# ----------------------------------------------------------------------------
# Parity with TFA's formulas
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_tfa(strategy, distance, seed):
    labels, x = _batch(seed)
    margin = 0.5 if distance == "cosine" else 1.0
    reference = (_tfa_hard if strategy == "hard" else _tfa_semi_hard)(labels, x, margin, distance)
    loss = S.TripletLoss(margin=margin, strategy=strategy, distance=distance)(labels, x)
    np.testing.assert_allclose(float(loss), reference, rtol=2e-6, atol=1e-6)


def _central_difference(fn, x, step=1e-6):
    """``d fn / d x`` of a float64 function by central differences (error ~ step^2)."""
    x = np.asarray(x, np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (fn(up) - fn(down)) / (2 * step)
    return gradient


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_triplet_gradient_matches_tfa(strategy, distance):
    # The gradient of TFA's formula (float64 differences, central differences: the mining is
    # piecewise constant and no choice is within the step of a tie on this batch).
    labels, x = _batch(1)
    tfa = _tfa_hard if strategy == "hard" else _tfa_semi_hard
    reference = _central_difference(lambda e: tfa(labels, e, 1.0, distance), x)
    _, gradient = _value_and_gradient(
        lambda e: S.triplet_loss(labels, e, 1.0, strategy=strategy, distance=distance), x
    )
    np.testing.assert_allclose(gradient, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_triplet_matches_tfa_with_singletons_and_a_label_column(strategy):
    # Random labels: some classes have one member (no positive), as in a
    # plain shuffled batch; [batch, 1] labels are squeezed.
    rng = np.random.default_rng(7)
    labels = np.array([0, 1, 1, 2, 3, 3, 3, 4, 0, 5])
    x = rng.normal(size=(10, 4)).astype(np.float32)
    reference = (_tfa_hard if strategy == "hard" else _tfa_semi_hard)(labels, x, 1.0, "euclidean")
    loss = S.TripletLoss(strategy=strategy)(labels[:, None], x)
    np.testing.assert_allclose(float(loss), reference, rtol=2e-6)


def test_tfa_docstring_examples():
    y_true, y_pred = [0, 0], [[0.0, 1.0], [1.0, 0.0]]
    assert float(S.TripletLoss(strategy="semi_hard")(y_true, y_pred)) == pytest.approx(
        2.4142137, rel=1e-6
    )
    assert float(S.TripletLoss(strategy="hard")(y_true, y_pred)) == pytest.approx(1.0, rel=1e-6)


def test_hard_with_all_labels_equal_follows_tfa():
    # No negatives: TFA's hardest negative is the row's largest distance.
    _, x = _batch(3, n=5)
    labels = np.zeros(5, int)
    loss = S.TripletLoss(strategy="hard")(labels, x)
    np.testing.assert_allclose(float(loss), _tfa_hard(labels, x, 1.0, "euclidean"), rtol=1e-6)


def test_semi_hard_without_positive_pairs_is_zero_not_nan():
    _, x = _batch(4, n=4)
    value = S.triplet_loss(np.arange(4), x, strategy="semi_hard")
    np.testing.assert_array_equal(value.numpy(), np.zeros(4, np.float32))  # TFA: 0 / 0 = nan


@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_batch_form_matches_tfa(seed):
    labels, x = _batch(seed)
    for margin in (0.5, 2.0, 4.0):
        loss = S.ContrastiveLoss(margin=margin)(labels, x)
        np.testing.assert_allclose(float(loss), _tfa_contrastive(labels, x, margin), rtol=2e-6)


def test_contrastive_pair_form_matches_tfa():
    rng = np.random.default_rng(5)
    pairs = rng.normal(size=(6, 2, 3)).astype(np.float32)
    similar = np.array([1, 0, 1, 0, 0, 1])
    d = np.linalg.norm(pairs[:, 0].astype(np.float64) - pairs[:, 1], axis=-1)
    expected = similar * d**2 + (1 - similar) * np.maximum(1.5 - d, 0.0) ** 2
    value = S.contrastive_loss(similar, pairs, margin=1.5)
    np.testing.assert_allclose(value.numpy(), expected, rtol=2e-6)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_simclr(temperature):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8, 6)).astype(np.float32)
    np.testing.assert_allclose(
        S.nt_xent(None, z, temperature=temperature).numpy(),
        _simclr_nt_xent(z, temperature),
        rtol=5e-6,
    )
    # The [n, 2, dim] form: one value per pair, the mean of its two rows.
    paired = np.stack([z[:4], z[4:]], axis=1)
    per_row = _simclr_nt_xent(z, temperature)
    np.testing.assert_allclose(
        S.NTXent(temperature=temperature, reduction="none")(np.zeros(4), paired).numpy(),
        (per_row[:4] + per_row[4:]) / 2,
        rtol=5e-6,
    )


def test_nt_xent_gradient_where_the_positive_is_the_most_similar_row(regime):
    # Second views near the first (noise 0.3), so each row's positive is its most similar:
    # the common case in training. The gradient lost the pull towards the positive there
    # (2e6 ULP off: [-1.153, 0.997, 0.238, 1.185] for [0.408, 1.523, 0.425, -1.163]).
    # Reference: mpmath's derivative of the summed loss, element by element, at 200 bits.
    # Budget: each entry is (w - y <w, y>) / ||x|| of logit sensitivities of size 1/t; their
    # float32 roundings are a few float32 eps of 1/(t ||x_i||): 4 (1.3 here, 3.2 at most
    # over batches with noise 1e-3 to 5).
    rng = np.random.default_rng(0)
    first = rng.normal(size=(4, 4))
    x = np.concatenate([first, first + 0.3 * rng.normal(size=(4, 4))]).astype(np.float32)
    temperature = 0.1
    _, (gradient,) = regime.value_and_grad(lambda e: S.nt_xent(None, e, temperature), x)
    with mpmath.workprec(200):
        rows = [[mpmath.mpf(float(v)) for v in row] for row in x]

        def summed_loss_at(i, j, v):
            moved = [list(row) for row in rows]
            moved[i][j] = v
            return mpmath.fsum(mp_nt_xent(moved, temperature))

        want = np.array(
            [[float(mpmath.diff(lambda v: summed_loss_at(i, j, v), rows[i][j]))
              for j in range(x.shape[1])] for i in range(x.shape[0])]
        )
    scale = 1.0 / (temperature * np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True))
    errors = np.abs(gradient - want) / (scale * np.finfo(np.float32).eps)
    assert errors.max() <= 4, (errors.max(), gradient, want)


def test_nt_xent_backward_pass_in_a_plain_tf_function_does_not_run_the_loss_again():
    # The loss is row-local in its logits: its forward call returns the loss and its
    # gradient for the logits, and the backward pass is a product with the upstream and
    # the logits' own backward call (one matmul's gradient), not the whole loss again.
    @tf.function
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(S.nt_xent(None, x, temperature=0.1))
        return loss, tape.gradient(loss, x)

    graph = value_and_grad.get_concrete_function(tf.TensorSpec([None, 4])).graph
    calls = {
        name: len(op.outputs)
        for name, op in zip(compiled_function_names(graph), compiled_calls(graph))
    }
    assert calls == {
        "__inference__nt_xent_logits_forward": 1,
        "__inference__nt_xent_logits_backward": 1,
        "__inference__nt_xent_rows_forward": 2,  # the loss and its local gradient
    }, calls
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    loss, gradient = value_and_grad(x)
    want_loss, (want_gradient,) = Regime("xla").value_and_grad(  # the kernels inlined
        lambda e: tf.reduce_mean(S.nt_xent(None, e, temperature=0.1)), x
    )
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    np.testing.assert_allclose(gradient.numpy(), want_gradient, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "strategy,distance,partners,loss",
    [
        ("hard", "euclidean", "_batch_hard_partners", "_triplet_of_partners"),
        ("hard", "squared", "_batch_hard_partners", "_triplet_of_partners"),
        ("semi_hard", "euclidean", "_semi_hard_negatives", "_semi_hard_triplet"),
        ("semi_hard", "cosine", "_semi_hard_negatives", "_semi_hard_triplet"),
    ],
)
def test_triplet_backward_pass_in_a_plain_tf_function_does_not_mine_again(
    strategy, distance, partners, loss
):
    # The partners are chosen in a call of their own, on embeddings no tape watches; the
    # backward pass forms the distances again (batch-hard: only the two chosen distances
    # of each anchor), not the mining (semi-hard's is a pass over [batch, batch, batch]).
    def loss_fn(e, y):
        return tf.reduce_mean(S.triplet_loss(y, e, strategy=strategy, distance=distance))

    @tf.function
    def value_and_grad(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(x, labels)
        return loss, tape.gradient(loss, x)

    graph = value_and_grad.get_concrete_function(
        tf.TensorSpec([None, 5]), tf.TensorSpec([None], tf.int32)
    ).graph
    calls = sorted(compiled_function_names(graph))
    assert calls == [
        f"__inference_{partners}_forward",
        f"__inference_{loss}_backward",
        f"__inference_{loss}_forward",
    ], calls
    labels, x = _batch(3, n=9)
    labels = labels.astype(np.int32)
    loss, gradient = value_and_grad(x, labels)
    want_loss, (want_gradient,) = Regime("xla").value_and_grad(loss_fn, x, labels)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    np.testing.assert_allclose(gradient.numpy(), want_gradient, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------
# The motivating failures
# ----------------------------------------------------------------------------


def _value_and_gradient(fn, x):
    """Eager value of the mean loss and its gradient with respect to ``x``."""
    value, (gradient,) = Regime("eager").value_and_grad(lambda e: tf.reduce_mean(fn(e)), x)
    return value, gradient


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_duplicate_embeddings_gradient_is_zero_not_nan(strategy):
    labels = np.array([0, 0, 1, 1])
    x = np.array(
        [[1.0, 2.0], [1.0, 2.0], [3.0, 0.5], [-1.0, 0.0]], np.float32
    )  # rows 0 and 1 coincide

    def hand_written(e):  # the Euclidean distance users write
        d = tf.sqrt(tf.reduce_sum(tf.square(e[:, None] - e[None]), axis=-1))
        same = tf.equal(labels[:, None], labels[None])
        positive = tf.reduce_max(tf.where(same, d, 0.0), axis=1)
        negative = tf.reduce_min(tf.where(same, 1e9, d), axis=1)
        return tf.nn.relu(positive - negative + 5.0)  # active: the zero distance gets a gradient

    naive_value, naive_gradient = _value_and_gradient(hand_written, x)
    assert np.isfinite(naive_value) and np.isnan(naive_gradient).any()
    value, gradient = _value_and_gradient(
        lambda e: S.triplet_loss(labels, e, 5.0, strategy=strategy), x
    )
    assert np.isfinite(value) and np.isfinite(gradient).all()
    # Only the duplicate pair's own distance is at 0; its gradient there is 0:
    # a batch of two identical embeddings gives loss = margin and gradient 0.
    value, gradient = _value_and_gradient(
        lambda e: S.triplet_loss([0, 0], e, strategy=strategy), x[:2]
    )
    assert value == pytest.approx(1.0)
    np.testing.assert_array_equal(gradient, np.zeros_like(gradient))


def test_contrastive_identical_pair_gradient_is_zero_not_nan():
    # A dissimilar pair whose embeddings collapsed onto each other: the loss
    # pushes them apart (margin^2), through the distance's slope at 0.
    pairs = np.array([[[0.3, -0.2], [0.3, -0.2]], [[1.0, 0.0], [0.0, 1.0]]], np.float32)
    similar = np.array([0.0, 1.0], np.float32)

    def hand_written(p):  # TFA's recipe: the user computes the distance, with tf.norm
        d = tf.norm(p[:, 0] - p[:, 1], axis=-1)
        return similar * d**2 + (1 - similar) * tf.nn.relu(1.0 - d) ** 2

    _, naive_gradient = _value_and_gradient(hand_written, pairs)
    assert np.isnan(naive_gradient[0]).all()
    value, gradient = _value_and_gradient(lambda p: S.contrastive_loss(similar, p), pairs)
    assert value == pytest.approx((1.0 + 2.0) / 2)  # margin^2 and d^2 = 2
    np.testing.assert_array_equal(gradient[0], np.zeros((2, 2), np.float32))
    assert np.isfinite(gradient).all() and np.any(gradient[1] != 0)
    # Batch form with a duplicate row.
    labels, x = _batch(0, n=6)
    x[1] = x[0]
    value, gradient = _value_and_gradient(lambda e: S.contrastive_loss(labels, e), x)
    assert np.isfinite(value) and np.isfinite(gradient).all()


def test_nt_xent_float16_at_temperature_0_01():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(16, 8)).astype(np.float16)

    def hand_written(e):  # cosine / temperature, self-similarity masked, in float16
        unit = e / tf.norm(e, axis=-1, keepdims=True)
        logits = tf.matmul(unit, unit, transpose_b=True) / tf.constant(0.01, tf.float16)
        exp = tf.exp(logits) * tf.cast(1 - tf.eye(16), tf.float16)
        positive = tf.concat([tf.range(8, 16), tf.range(8)], 0)
        numerator = tf.gather(exp, positive[:, None], batch_dims=1)[:, 0]
        return -tf.math.log(numerator / tf.reduce_sum(exp, axis=-1))

    naive_value, _ = _value_and_gradient(hand_written, z)
    assert not np.isfinite(naive_value)
    value, gradient = _value_and_gradient(lambda e: S.nt_xent(None, e, temperature=0.01), z)
    assert np.isfinite(value) and np.isfinite(gradient.astype(np.float32)).all()
    np.testing.assert_allclose(value, _simclr_nt_xent(z, 0.01).mean(), rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_nt_xent_gradient_finite_for_an_embedding_at_the_smallest_normal(dtype):
    # Found by the thorough hypothesis profile: the normalization's 1/||x|| (8.5e37) times
    # 1/t = 100 exceeds the largest float32, and the gradient was inf; it saturates now.
    tiny = float(np.finfo(dtype).tiny)
    x = np.zeros((6, 3), dtype)
    x[0, 0], x[1, 1] = tiny, 1.0
    value, gradient = _value_and_gradient(
        lambda e: S.nt_xent(np.zeros(6), e, temperature=0.01), x
    )
    assert np.isfinite(value) and np.isfinite(gradient.astype(np.float32)).all(), gradient
    assert np.abs(gradient[0].astype(np.float32)).max() == np.finfo(dtype).max


def test_nt_xent_single_pair_has_no_negatives_and_is_zero():
    # Each row's only other row is its positive: loss 0 (to an ULP of the logit), not NaN.
    np.testing.assert_allclose(
        S.nt_xent(None, [[1.0, 2.0], [-3.0, 0.5]]).numpy(), [0.0, 0.0], atol=4e-7
    )


def test_huge_and_tiny_embeddings():
    labels, x = _batch(0, n=8)
    reference = _tfa_hard(labels, x, 0.0, "euclidean")
    for scale in (2.0**100, 2.0**-100):
        # margin 0: the loss scales with the embeddings (power of two: exactly representable)
        value = S.TripletLoss(margin=0.0)(labels, x * np.float32(scale))
        np.testing.assert_allclose(float(value), reference * scale, rtol=2e-6)
        naive = tf.reduce_sum(tf.square(x * np.float32(scale)), axis=-1)  # the Gram diagonal
        assert not np.all(np.isfinite(naive.numpy()) & (naive.numpy() > 0))


# ----------------------------------------------------------------------------
# Properties: finite values and gradients (hypothesis)
# ----------------------------------------------------------------------------


def _cast(x, dtype):
    return tf.cast(tf.constant(np.asarray(x, np.float32)), dtype)


CASES = [
    ("triplet_hard", lambda y, e: S.triplet_loss(y, e, strategy="hard")),
    ("triplet_semi_hard", lambda y, e: S.triplet_loss(y, e, strategy="semi_hard")),
    (
        "triplet_squared",
        lambda y, e: S.triplet_loss(y, e, strategy="semi_hard", distance="squared"),
    ),
    ("triplet_cosine", lambda y, e: S.triplet_loss(y, e, distance="cosine")),
    ("contrastive", lambda y, e: S.contrastive_loss(y, e)),
    ("nt_xent", lambda y, e: S.nt_xent(y, e, temperature=0.01)),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name,fn", CASES, ids=[c[0] for c in CASES])
def test_finite_values_and_gradients(name, fn, dtype):
    # bfloat16 and float32 are drawn up to 1e9 (squared distances stay below
    # the float32 maximum); float16 over its whole range (computed in float32).
    bound = None if dtype == "float16" else 1e9
    draw_dtype = "float32" if dtype == "bfloat16" else dtype

    @given(
        x=finite_arrays(draw_dtype, (6, 3), -bound if bound else None, bound),
        labels=st.lists(st.integers(0, 2), min_size=6, max_size=6),
        duplicate=st.booleans(),
    )
    def check(x, labels, duplicate):
        x = np.array(x, np.float32)
        if duplicate:
            x[1] = x[0]
        e = _cast(x, dtype)
        value, gradient = _value_and_gradient(lambda v: fn(np.array(labels), v), e)
        assert np.isfinite(value), (name, x, labels)
        assert np.isfinite(np.asarray(gradient, np.float32)).all(), (name, x, labels)

    check()


# ----------------------------------------------------------------------------
# Regimes, NaN, errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,fn", CASES, ids=[c[0] for c in CASES])
def test_same_answer_in_every_regime(name, fn, graph_regime):
    labels, x = _batch(1, n=8)
    x[3] = x[2]  # a duplicate
    expected_value, (expected_grads,) = Regime("eager").value_and_grad(fn, labels, x, wrt=(1,))
    for unknown_batch in (False, True):
        value, grads = graph_regime.value_and_grad(
            lambda e, y: fn(y, e), x, labels.astype(np.int32), unknown_batch=unknown_batch
        )
        np.testing.assert_allclose(value, expected_value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grads[0], expected_grads, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,fn", CASES, ids=[c[0] for c in CASES])
def test_nan_in_nan_out(name, fn, regime):
    labels, x = _batch(2, n=6)
    x[4, 1] = np.nan
    value = regime.run(lambda e, y: fn(y, e), x, labels.astype(np.int32))
    assert np.isnan(value).any() and not np.isfinite(value).all()
    if name.startswith(("triplet", "contrastive")):
        # The NaN embedding enters every anchor's distances, not only its own anchor's
        # (batch-hard triplet: also where no anchor chose it as a partner).
        assert np.isnan(value).all(), value


@pytest.mark.parametrize("name,fn", CASES[:-1], ids=[c[0] for c in CASES[:-1]])
def test_nan_in_nan_out_where_relu_drops_nan(name, fn, monkeypatch):
    """The NaN is set explicitly, not left to relu: how a max passes NaN depends on the CPU
    (docs/design.md). A relu that maps NaN to 0, traced into the kernels (inlined under
    XLA), must not give a finite loss."""
    monkeypatch.setattr(tf.nn, "relu", lambda v: tf.where(v > 0, v, tf.zeros_like(v)))
    labels, x = _batch(2, n=6)
    x[4, 1] = np.nan
    value = Regime("xla").run(lambda e, y: fn(y, e), x, labels.astype(np.int32))
    assert np.isnan(value).all(), value


@pytest.mark.parametrize(
    "strategy,distance",
    [
        ("hard", "euclidean"),
        ("semi_hard", "euclidean"),
        ("hard", "cosine"),
        ("semi_hard", "squared"),
    ],
)
def test_nan_label_gives_nan_for_its_anchor(strategy, distance):
    """Each path of the triplet kernel (hard Euclidean has its own) carries a NaN label:
    a NaN never equals a label, so its anchor would otherwise look like one without
    positives and get a finite loss."""
    labels, x = _batch(2, n=6)
    labels = labels.astype(np.float32)
    labels[2] = np.nan
    value = S.triplet_loss(labels, x, strategy=strategy, distance=distance).numpy()
    assert np.isnan(value[2]) and np.isfinite(np.delete(value, 2)).all()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: S.TripletLoss(margin=-1.0), "margin=-1.0"),
        (lambda: S.TripletLoss(margin=float("nan")), "margin"),
        (lambda: S.TripletLoss(strategy="hardest"), "strategy='hardest'"),
        (lambda: S.TripletLoss(distance="L2"), "distance='L2'"),
        (lambda: S.ContrastiveLoss(margin="1"), "margin='1'"),
        (lambda: S.NTXent(temperature=0.0), "temperature=0.0"),
        (lambda: S.NTXent(temperature=-0.1), "temperature=-0.1"),
    ],
)
def test_bad_hyperparameters_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_triplet_empty_batch_gives_an_empty_loss(strategy, distance, regime):
    """As the other metric losses; semi-hard and hard cosine took argmax/argmin over an
    empty axis ("Reduction axis 1 is empty")."""
    labels, x = np.zeros([0], np.int32), np.zeros([0, 3], np.float32)
    for unknown_batch in (False, True):
        value, (gradient,) = regime.value_and_grad(
            lambda e, y: S.triplet_loss(y, e, strategy=strategy, distance=distance),
            x, labels, unknown_batch=unknown_batch,
        )
        assert value.shape == (0,) and gradient.shape == (0, 3)


def test_nt_xent_odd_batch_of_unknown_size_errors_or_is_nan(regime):
    """Contract rule 6: an odd batch is not two views. A static one is a ValueError;
    one known only when the graph runs an error, and NaN under XLA, where the assert
    is dropped (a finite meaningless loss before)."""
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    fn = S.NTXent(reduction="none")
    if regime.name == "xla":
        value = regime.run(lambda e: fn(None, e), x, unknown_batch=True)
        assert value.shape == (5,) and np.isnan(value).all()
    else:
        error = ValueError if regime.name == "eager" else tf.errors.InvalidArgumentError
        with pytest.raises(error, match="two views"):
            regime.run(lambda e: fn(None, e), x, unknown_batch=True)
    # An even batch of unknown size is unaffected.
    even = regime.run(lambda e: fn(None, e), x[:4], unknown_batch=True)
    np.testing.assert_allclose(even, fn(None, x[:4]).numpy(), rtol=1e-6)


def test_bad_shapes_name_both():
    with pytest.raises(ValueError, match=r"\(4,\) and \(3, 2\)"):
        S.triplet_loss(np.zeros(4), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[batch, dim\].*\(3,\)"):
        S.triplet_loss(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"even.*\(3, 2\)"):
        S.nt_xent(None, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, 2, dim\].*\(3, 3, 2\)"):
        S.contrastive_loss(np.zeros(3), np.zeros((3, 3, 2), np.float32))
    with pytest.raises(TypeError, match="y_pred"):
        S.triplet_loss(np.zeros(2), np.array([["a", "b"], ["c", "d"]]))


# ----------------------------------------------------------------------------
# Keras integration: config, serialization, saving, fit
# ----------------------------------------------------------------------------

LOSSES = [
    (
        lambda: S.TripletLoss(margin=0.3, strategy="semi_hard", distance="cosine"),
        {"margin": 0.3, "strategy": "semi_hard", "distance": "cosine"},
    ),
    (lambda: S.ContrastiveLoss(margin=2.0), {"margin": 2.0}),
    (lambda: S.NTXent(temperature=0.2), {"temperature": 0.2}),
]


@pytest.mark.parametrize("make,arguments", LOSSES, ids=["triplet", "contrastive", "nt_xent"])
def test_config_lists_every_argument_and_round_trips(make, arguments):
    loss = make()
    config = loss.get_config()
    assert config == {
        "name": loss.name,
        "reduction": "sum_over_batch_size",
        "dtype": "float32",
        **arguments,
    }
    serialized = keras.losses.serialize(loss)
    assert serialized["registered_name"] == f"stableops>{type(loss).__name__}"
    rebuilt = keras.losses.deserialize(serialized)
    assert type(rebuilt) is type(loss) and rebuilt.get_config() == config
    labels, x = _batch(0, n=8)
    np.testing.assert_array_equal(rebuilt(labels, x).numpy(), loss(labels, x).numpy())


def _embedding_model(dim=4):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(dim)]
    )


@pytest.mark.parametrize("make,arguments", LOSSES, ids=["triplet", "contrastive", "nt_xent"])
def test_save_load_and_fit_under_mixed_precision(make, arguments, tmp_path, mixed_precision_policy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = np.tile(np.arange(4), 8)
    model = _embedding_model()
    model.compile(optimizer="sgd", loss=make())
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert (
        type(loaded.loss) is type(model.loss)
        and loaded.loss.get_config() == model.loss.get_config()
    )
    np.testing.assert_allclose(
        float(loaded.compute_loss(x=x, y=y, y_pred=loaded(x))),
        float(model.compute_loss(x=x, y=y, y_pred=model(x))),
        rtol=1e-6,
    )
    for policy, jit in (("float32", True), ("mixed_float16", False)):
        mixed_precision_policy(policy)
        model = _embedding_model()
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=make(), jit_compile=jit)
        history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert math.isfinite(history.history["loss"][-1]), policy
        assert all(np.isfinite(w).all() for w in model.get_weights())


def test_ml_dtypes_bfloat16_input_is_accepted():
    labels, x = _batch(0, n=6)
    value = S.triplet_loss(labels, x.astype(ml_dtypes.bfloat16))
    assert value.dtype == tf.float32 and np.isfinite(value.numpy()).all()


# ----------------------------------------------------------------------------
# Gram-form selection and the contrastive fast path
# ----------------------------------------------------------------------------


def _float64_value_and_gradient(fn, x):
    """A float64 reference: the exact-difference distances, autodiff in float64."""
    return _value_and_gradient(fn, np.asarray(x, np.float64))


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_batch_hard_near_duplicates_far_from_the_origin(distance):
    # Rows 1e4 from the origin and 1e-3 apart: the Gram form's d^2 is noise
    # there (rounding ~ 1e8 * eps ~ 10), but the chosen distances are
    # recomputed from differences, so value and gradient match float64.
    rng = np.random.default_rng(5)
    labels = np.array([0, 0, 0, 1, 1, 1])
    x = 1e4 + rng.normal(size=(6, 4)) * 1e-3
    x[3:] += 5e-3  # the classes well apart relative to their spread
    x32 = x.astype(np.float32)

    def loss(e):
        return S.triplet_loss(labels, e, 0.0, strategy="hard", distance=distance)

    value, gradient = _value_and_gradient(loss, x32)
    reference = _tfa_hard(labels, x32, 0.0, distance)
    np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-12)
    assert np.isfinite(gradient).all()


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_batch_hard_chooses_partners_exactly_where_the_gram_form_cancels(distance):
    # Rows 2^23 from the origin, 1 apart (float32's spacing there): the Gram
    # form's d^2 is rounding noise, and partners chosen by it gave a loss of 0
    # where the exact one is 1.82 (the benchmark's accuracy grid). The batch
    # then chooses with differences: TFA's loss on exact float64 distances.
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    base = np.array([2.0**23, 2.0**23, -(2.0**23), 2.0**22])
    x = base + np.array([[i, 0.0, i % 3, 0.0] for i in range(8)])
    x32 = x.astype(np.float32)
    assert np.array_equal(x32, x)  # exact in float32
    value = S.triplet_loss(labels, x32, 1.0, strategy="hard", distance=distance).numpy().mean()
    np.testing.assert_allclose(value, _tfa_hard(labels, x, 1.0, distance), rtol=1e-6)


_PAIRWISE_LOSSES = {
    "contrastive": lambda y, e: S.contrastive_loss(y, e),
    "triplet_hard": lambda y, e: S.triplet_loss(y, e, strategy="hard"),
    "triplet_hard_squared": lambda y, e: S.triplet_loss(y, e, strategy="hard", distance="squared"),
    "triplet_semi_hard": lambda y, e: S.triplet_loss(y, e, strategy="semi_hard"),
    "triplet_semi_hard_squared": lambda y, e: S.triplet_loss(
        y, e, strategy="semi_hard", distance="squared"
    ),
}


def _compiled_value_and_gradient_hlo(fn, labels, x):
    """The HLO XLA compiles for the mean loss and its gradient."""

    @tf.function(jit_compile=True)
    def run(e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = tf.reduce_mean(fn(labels, e))
        return value, tape.gradient(value, e)

    return run.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")


@pytest.mark.parametrize("name", sorted(_PAIRWISE_LOSSES))
def test_no_batch_by_batch_by_width_tensor_is_allocated(name):
    # XLA allocates the buffers of both branches of a conditional: the exact (differences)
    # path must hold [batch, dim] at a time, or a batch of 1024 x 512 needs 2 GB.
    labels, x = _batch(0, n=12, dim=5)
    hlo = _compiled_value_and_gradient_hlo(_PAIRWISE_LOSSES[name], labels, x)
    assert "f32[12,12,5]" not in hlo
    # The check can fail: all pairwise differences at once are such a tensor.
    naive = _compiled_value_and_gradient_hlo(
        lambda y, e: tf.norm(e[:, None, :] - e[None, :, :] + 1.0, axis=-1), labels, x
    )
    assert "f32[12,12,5]" in naive


def test_contrastive_fast_path_matches_float64():
    # Well-separated random embeddings: the Gram form is used; value and
    # gradient agree with the float64 computation.
    labels, x = _batch(3, n=16, dim=32, classes=4)
    value, gradient = _value_and_gradient(lambda e: S.contrastive_loss(labels, e, margin=8.0), x)
    ref_value, ref_gradient = _float64_value_and_gradient(
        lambda e: S.contrastive_loss(labels, e, margin=8.0), x
    )
    np.testing.assert_allclose(value, ref_value, rtol=2e-6)
    np.testing.assert_allclose(
        gradient, ref_gradient, rtol=2e-5, atol=1e-6 * np.abs(ref_gradient).max()
    )
    np.testing.assert_allclose(value, _tfa_contrastive(labels, x, 8.0), rtol=2e-6)


@pytest.mark.parametrize("gap", [1e-3, 0.0])
def test_contrastive_near_duplicates_use_differences(gap):
    # Two rows 1e3 from the origin, gap apart: the Gram form would cancel to
    # noise (or 0, with an infinite sqrt gradient); the batch takes the
    # distances from differences: value matches float64, gradient finite
    # (0 for the duplicate pair's own term at gap 0).
    labels, x = _batch(4, n=8, dim=6)
    x = x.astype(np.float64) + 1e3
    x[1] = x[0] + gap
    x32 = x.astype(np.float32)
    value, gradient = _value_and_gradient(lambda e: S.contrastive_loss(labels, e), x32)
    assert np.isfinite(value) and np.isfinite(gradient).all()
    np.testing.assert_allclose(value, _tfa_contrastive(labels, x32, 1.0), rtol=2e-6)
    if gap:
        reference = _tfa_contrastive_gradient(labels, x32, 1.0)
        # Differences of float32 rows this close are exact (Sterbenz): what is left is the
        # rounding of norms and sums, a few float32 eps (1.2e-7) over 8 rows.
        scale = np.abs(reference).max()
        np.testing.assert_allclose(gradient, reference, rtol=1e-5, atol=1e-5 * scale)
    for regime_fn in (tf.function, tf.function(jit_compile=True)):

        def run(e):
            with tf.GradientTape() as tape:
                tape.watch(e)
                v = tf.reduce_mean(S.contrastive_loss(labels, e))
            return v, tape.gradient(v, e)

        v, g = regime_fn(run)(tf.constant(x32))
        np.testing.assert_allclose(v.numpy(), value, rtol=1e-6)
        np.testing.assert_allclose(g.numpy(), gradient, rtol=1e-5, atol=1e-7)


# name: (loss of (labels, x, margin), the loss's and the margin's powers of the embeddings' scale)
_HOMOGENEOUS = {
    "triplet euclidean hard": (lambda y, x, m: S.triplet_loss(y, x, margin=m), 1, 1),
    "triplet squared semi_hard": (
        lambda y, x, m: S.triplet_loss(y, x, margin=m, strategy="semi_hard", distance="squared"),
        2, 2,
    ),
    "contrastive batch": (lambda y, x, m: S.contrastive_loss(y, x, margin=m), 2, 1),
    "contrastive pairs": (
        lambda y, x, m: S.contrastive_loss(y[:4] % 2, tf.reshape(x, [4, 2, 4]), margin=m), 2, 1
    ),
}


@pytest.mark.parametrize("exponent", [-20, 7, 19])
@pytest.mark.parametrize("name", sorted(_HOMOGENEOUS))
def test_a_gradient_penalty_scales_with_the_embeddings(name, exponent):
    """With the margin scaled alike, ``L(c x) = c^p L(x)`` for a power of two ``c`` (exact), so
    a gradient penalty ``P = |dL/dx|^2`` has ``dP/dx (c x) = c^(2p - 3) dP/dx (x)``. The
    scaling's gradients moved ``1 / scale`` from the input's side to the output's, which a
    second tape does not see: the second order was off by the batch's power of two (exact only
    for embeddings whose largest entry lies in [1, 2), as ``x`` here)."""
    loss, power, margin_power = _HOMOGENEOUS[name]
    labels = tf.constant([0, 0, 1, 1, 0, 1, 2, 2])
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, (8, 4)).astype(np.float32)
    x[0, 0] = 1.5  # the largest entry: the batch's scale is 1

    def penalty_gradient(embeddings, margin):
        embeddings = tf.constant(embeddings)
        with tf.GradientTape() as outer:
            outer.watch(embeddings)
            with tf.GradientTape() as inner:
                inner.watch(embeddings)
                total = tf.reduce_sum(loss(labels, embeddings, margin))
            gradient = inner.gradient(total, embeddings)
            penalty = tf.reduce_sum(gradient * gradient)
        return outer.gradient(penalty, embeddings).numpy()

    c = 2.0**exponent
    want = penalty_gradient(x, 0.5) * np.float32(c ** (2 * power - 3))
    got = penalty_gradient(x * np.float32(c), np.float32(0.5 * c**margin_power))
    assert np.any(want != 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype, big", [("float32", 1e38), ("float64", 5e307)])
def test_triplet_loss_past_the_top_power_of_two_keeps_its_distances(regime, dtype, big):
    """Embeddings of 2^127 or more (float32; 2^1023 in float64) made the batch's scale
    2^127, whose reciprocal flushes to 0: every distance was 0 and the loss its margin,
    [1, 1, 1] with gradient 0. Anchors 0 and 1 (label 0) are 2 big apart and their
    negative is big from each: 2 big - big + margin = big (the margin of 1 is below an ULP
    of big); anchor 2 has no positive. The gradients are the unit directions."""
    x = np.array([[2 * big, 0.0], [0.0, 0.0], [big, 0.0]], dtype)
    labels = np.int32([0, 0, 1])
    value, (grad,) = regime.value_and_grad(lambda x: S.triplet_loss(labels, x), x)
    np.testing.assert_allclose(value, [big, big, 0.0], rtol=np.finfo(dtype).eps)
    np.testing.assert_array_equal(grad, [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])


def test_contrastive_loss_of_pairs_far_past_the_margin_is_zero(regime):
    """A dissimilar pair costs max(margin - d, 0)^2 = 0 however far apart; its d^2 past the
    range (d = 1e20) times the 0 of its similarity was NaN in the pair form, and past
    2^127 (2e38) the scale's flushed reciprocal made d = 0 and the loss 1 in both forms."""
    pairs = np.float32(
        [[[1e20, 0.0], [0.0, 0.0]], [[2e38, 0.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]]
    )
    value = regime.run(lambda x: S.contrastive_loss(np.int32([0, 0, 1]), x), pairs)
    np.testing.assert_array_equal(value, [0.0, 0.0, 9.0])  # the similar pair: d^2 = 9
    batch = regime.run(lambda x: S.contrastive_loss(np.int32([0, 1]), x), pairs[1])
    np.testing.assert_array_equal(batch, [0.0, 0.0])
