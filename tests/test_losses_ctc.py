"""CTC (stableops/losses/_ctc.py): Keras's ``keras.losses.CTC`` plus PyTorch's ``zero_infinity``.

* the reference is the definition PyTorch's ``CTCLoss`` documents,
  ``-log`` of the summed probability of every frame path that collapses
  (merge repeats, drop blanks) to the label, enumerated path by path in
  float64 here: ``inf`` for an impossible alignment;
* Keras 3.15's CTC on ordinary inputs (same values and gradients);
* the motivating case: a label that needs more frames than the input has
  gives Keras ~707 with a meaningless gradient; ours ``inf`` with gradient
  0, or 0 and 0 with ``zero_infinity=True``;
* losses past Keras's log-0 floor (~707) and near 0, and their gradients, against the
  definition (path by path, or mpmath's forward pass), where Keras stops at ~707;
* hypothesis: values against the definition, finite values and gradients in
  float32/float16/bfloat16; three regimes; NaN in, NaN out; errors; config and saving.
"""

from __future__ import annotations

import inspect
import itertools
import math

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import stableops.losses as S
import stableops.losses._ctc as ctc_module
from benchmarks.accuracy import mp_ctc
from stableops.losses._ctc import padded_length
from stableops.losses._ctc_kernel import ctc_kernel
from tests._regimes import Regime
from tests._strategies import FLOAT_DTYPES, finite_arrays


def _collapse(path):
    merged = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
    return tuple(k for k in merged if k != 0)


def _paths(label, frames):
    """The frame paths that collapse to ``label`` (its non-zero entries), each with its
    log-probability, and the frames' log-probabilities (``frames``: logits ``[T, C]``)."""
    label = tuple(int(k) for k in label if k != 0)
    shifted = frames - frames.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    paths = [
        path
        for path in itertools.product(range(frames.shape[1]), repeat=frames.shape[0])
        if _collapse(path) == label
    ]
    return paths, np.array([sum(log_p[t, k] for t, k in enumerate(path)) for path in paths]), log_p


def _reference(labels, logits):
    """``-log sum_{paths -> label} prod_t softmax(logits)[t, path_t]`` per sample, float64."""
    out = []
    for label, frames in zip(labels, np.asarray(logits, np.float64)):
        _, terms, _ = _paths(label, frames)
        out.append(-np.logaddexp.reduce(terms) if len(terms) else math.inf)
    return np.array(out)


def _reference_gradient(labels, logits):
    """The gradient of ``_reference`` with respect to the logits, from its paths:
    ``softmax(logits) - sum_paths w_path onehot(path)``, ``w`` the paths' posterior
    weights (``exp(log p_path - log p_label)``), float64."""
    out = []
    for label, frames in zip(labels, np.asarray(logits, np.float64)):
        paths, terms, log_p = _paths(label, frames)
        weights = np.exp(terms - np.logaddexp.reduce(terms))
        occupancy = np.zeros_like(frames)
        for weight, path in zip(weights, paths):
            occupancy[np.arange(len(path)), path] += weight
        out.append(np.exp(log_p) - occupancy)
    return np.array(out)


def _ordinary(seed=0, batch=4, frames=5, classes=4, max_label=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, frames, classes)).astype(np.float32)
    labels = np.zeros((batch, max_label), np.int32)
    for b in range(batch):
        length = rng.integers(1, max_label + 1)
        labels[b, :length] = rng.integers(1, classes, size=length)
    return labels, logits


def _value_and_gradient(fn, labels, logits):
    """Eager value and gradient of its sum with respect to the logits."""
    value, (gradient,) = Regime("eager").value_and_grad(fn, labels, logits, wrt=(1,))
    return value, gradient


# ----------------------------------------------------------------------------
# Parity: the definition and Keras
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_definition(seed):
    labels, logits = _ordinary(seed)
    np.testing.assert_allclose(S.ctc(labels, logits).numpy(), _reference(labels, logits), rtol=2e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_keras_on_ordinary_inputs(seed):
    labels, logits = _ordinary(seed, batch=6, frames=12, classes=6, max_label=5)
    ours = S.CTC()
    theirs = keras.losses.CTC()
    np.testing.assert_allclose(
        float(ours(labels, logits)), float(theirs(labels, logits)), rtol=1e-6
    )
    value, gradient = _value_and_gradient(S.CTC(reduction="none"), labels, logits)
    keras_value, keras_gradient = _value_and_gradient(
        keras.losses.CTC(reduction="none"), labels, logits
    )
    np.testing.assert_allclose(value, keras_value, rtol=1e-6)
    np.testing.assert_allclose(gradient, keras_gradient, rtol=1e-5, atol=1e-6)


# Labels the blank is predicted against by 100 to 1e30 a frame: losses from 200 to 4e30.
FAR_LABELS = np.array([[1, 2, 0], [1, 1, 0], [2, 0, 0], [1, 2, 1]], np.int32)


def _far_logits(scale, seed=0):
    logits = np.random.default_rng(seed).normal(size=(4, 5, 3)) * scale
    logits[:, :, 0] = np.abs(logits[:, :, 0]) + scale
    return logits.astype(np.float32)


def test_keras_stops_at_its_log_0_floor():
    logits = _far_logits(1000.0)
    value, gradient = _value_and_gradient(keras.losses.CTC(reduction="none"), FAR_LABELS, logits)
    reference = _reference(FAR_LABELS, logits)
    far = [0, 1, 3]  # losses of 2000 and more: Keras's ~707 floor, or short of the loss
    assert (reference[far] > 1500).all() and (value[far] < 0.7 * reference[far]).all()
    assert np.abs(gradient - _reference_gradient(FAR_LABELS, logits)).max() > 0.9


@pytest.mark.parametrize("scale", [100.0, 600.0, 1e4, 1e30])
def test_losses_past_keras_floor_match_the_definition(scale, regime):
    logits = _far_logits(scale)
    value, (gradient,) = regime.value_and_grad(
        lambda x, y: S.ctc(y, x), logits, FAR_LABELS
    )
    # Each log-probability is within an ULP or two of float32 (ops.log_softmax) and
    # the recursion is float64's: the loss within 4 float32 ULP (the contract's ceiling).
    np.testing.assert_allclose(
        value, _reference(FAR_LABELS, logits), rtol=4 * np.finfo(np.float32).eps
    )
    # Its entries are differences of probabilities in [0, 1]: 4 ULP of 1.
    np.testing.assert_allclose(
        gradient, _reference_gradient(FAR_LABELS, logits), rtol=0,
        atol=4 * np.finfo(np.float32).eps,
    )


@pytest.mark.parametrize("gap", [87.72283935546875, 40.0, 20.0])
def test_losses_near_zero_keep_their_alternatives(gap, regime):
    # One alignment of [1, 2, 3] predicted by `gap` in each of its 5 frames: a loss of about
    # 1e-37, 1e-17, 1e-8, most of it from the alignments that are exp(-gap) as likely
    # (log(1 + s) in the recursion rounded them away below 1e-16; mpmath's forward pass).
    logits = np.zeros((1, 5, 4), np.float32)
    logits[0, np.arange(5), [1, 0, 2, 0, 3]] = gap
    labels = np.array([[1, 2, 3]], np.int32)
    with mpmath.workprec(200):
        want = float(mp_ctc(labels[0], logits[0].astype(np.float64)))
    value = regime.run(lambda x, y: S.ctc(y, x), logits, labels)
    # The contract's 4 float32 ULP.
    np.testing.assert_allclose(value, [want], rtol=4 * np.finfo(np.float32).eps)


def test_float64_is_computed_in_float64():
    labels, logits = _ordinary(6)
    logits = logits.astype(np.float64) + 1e-9 * np.arange(logits.size).reshape(logits.shape)
    value = S.ctc(labels, logits).numpy()
    assert value.dtype == np.float64
    # The path sums of _reference round to about 1e-15 of the loss; float32 would be 1e-7.
    np.testing.assert_allclose(value, _reference(labels, logits), rtol=1e-13)


def test_keras_test_case_value():
    # keras/src/losses/losses_test.py CTCTest.test_correctness
    logits = (np.arange(24).reshape((2, 4, 3)).astype("float32") - 12) / 100
    y_true = np.array([[1, 2, 1, 0], [1, 2, 0, 2]])
    assert float(S.CTC()(y_true, logits)) == pytest.approx(2.448645, rel=1e-6)


def test_constructor_matches_keras():
    ours = inspect.signature(S.CTC).parameters
    theirs = inspect.signature(keras.losses.CTC).parameters
    positional = [(p.name, p.default) for p in ours.values() if p.kind != p.KEYWORD_ONLY]
    assert positional == [(p.name, p.default) for p in theirs.values()]
    assert ours["zero_infinity"].kind == inspect.Parameter.KEYWORD_ONLY
    assert ours["zero_infinity"].default is False


# ----------------------------------------------------------------------------
# Impossible alignments: the motivating case
# ----------------------------------------------------------------------------

# T = 4 frames; [1, 1, 1] needs 5 (a blank between repeats), [1, 2, 3, 1, 2] needs 5.
IMPOSSIBLE = np.array(
    [[1, 2, 0, 0, 0], [1, 1, 1, 0, 0], [1, 2, 3, 1, 2], [3, 3, 0, 0, 0]], np.int32
)


def _impossible_logits(seed=0):
    return np.random.default_rng(seed).normal(size=(4, 4, 4)).astype(np.float32)


def test_the_reference_calls_these_impossible():
    reference = _reference(IMPOSSIBLE, _impossible_logits())
    assert np.isfinite(reference[[0, 3]]).all() and np.isinf(reference[[1, 2]]).all()


def test_keras_gives_a_finite_wrong_loss_for_an_impossible_alignment():
    value, _ = _value_and_gradient(
        keras.losses.CTC(reduction="none"), IMPOSSIBLE, _impossible_logits()
    )
    assert np.isfinite(value).all() and (value[[1, 2]] > 700).all()  # -log(1e-307) floor, not inf


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignment_gives_inf_or_zero_with_zero_gradient(zero_infinity, regime):
    logits = _impossible_logits()
    loss = S.CTC(reduction="none", zero_infinity=zero_infinity)
    value, (gradient,) = regime.value_and_grad(lambda x, y: loss(y, x), logits, IMPOSSIBLE)
    expected = _reference(IMPOSSIBLE, logits)
    np.testing.assert_allclose(value[[0, 3]], expected[[0, 3]], rtol=2e-6)
    np.testing.assert_array_equal(value[[1, 2]], [0.0, 0.0] if zero_infinity else [np.inf, np.inf])
    np.testing.assert_array_equal(gradient[[1, 2]], np.zeros((2, 4, 4), np.float32))
    assert np.isfinite(gradient).all() and np.any(gradient[[0, 3]] != 0)


def test_zero_infinity_mean_trains_on_the_feasible_samples():
    logits = _impossible_logits()
    value, gradient = _value_and_gradient(
        lambda y, x: S.CTC(zero_infinity=True)(y, x), IMPOSSIBLE, logits
    )
    feasible = _reference(IMPOSSIBLE, logits)[[0, 3]]
    assert value == pytest.approx(feasible.sum() / 4, rel=2e-6)  # PyTorch: 'mean' over the batch
    assert np.isfinite(gradient).all()
    # Without zero_infinity the mean is inf (honest), and the gradient still not NaN.
    value, gradient = _value_and_gradient(lambda y, x: S.CTC()(y, x), IMPOSSIBLE, logits)
    assert value == np.inf and not np.isnan(gradient).any()


# ----------------------------------------------------------------------------
# Properties, regimes, NaN
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_the_definition_on_random_inputs(dtype):
    draw_dtype = "float32" if dtype == "bfloat16" else dtype

    @given(
        logits=finite_arrays(draw_dtype, (2, 4, 3), -1e4, 1e4),  # gaps past Keras's floor
        labels=st.lists(st.integers(0, 2), min_size=6, max_size=6),
    )
    def check(logits, labels):
        labels = np.sort(np.array(labels, np.int32).reshape(2, 3), axis=1)[:, ::-1].copy()
        x = tf.cast(tf.constant(np.asarray(logits, np.float32)), dtype)
        exact_inputs = np.asarray(tf.cast(x, tf.float64))
        value = S.ctc(labels, x).numpy()
        # 4 float32 ULP (the contract's ceiling), plus 1e-15 for a loss near 0 that cancels
        # inside the log-probabilities: float64 rounds them to 1e-16, here and in the reference.
        np.testing.assert_allclose(
            value, _reference(labels, exact_inputs), rtol=4 * np.finfo(np.float32).eps,
            atol=1e-15,
        )

    check()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_finite_values_and_gradients(dtype):
    draw_dtype = "float32" if dtype == "bfloat16" else dtype

    @given(
        logits=finite_arrays(draw_dtype, (2, 4, 3)),
        labels=st.lists(st.integers(0, 2), min_size=6, max_size=6),
    )
    def check(logits, labels):
        labels = np.sort(np.array(labels, np.int32).reshape(2, 3), axis=1)[
            :, ::-1
        ].copy()  # 0-padded at the end
        x = tf.cast(tf.constant(np.asarray(logits, np.float32)), dtype)
        for zero_infinity in (False, True):
            value, gradient = _value_and_gradient(
                lambda y, v: S.ctc(y, v, zero_infinity=zero_infinity), labels, x
            )
            feasible = np.isfinite(_reference(labels, np.zeros((2, 4, 3))))
            assert np.isfinite(value[feasible]).all(), (value, labels)
            assert (value[~feasible] == (0.0 if zero_infinity else np.inf)).all()
            assert np.isfinite(np.asarray(gradient, np.float32)).all(), (logits, labels)

    check()


def test_same_answer_in_every_regime(graph_regime):
    labels, logits = _ordinary(3, batch=4, frames=6)
    labels[0] = [2, 2, 2]  # impossible in 6 frames? needs 5: feasible; make one that is not:
    labels[1] = [1, 1, 1]
    logits = logits[:, :4]  # 4 frames: [2, 2, 2] and [1, 1, 1] impossible
    expected = _value_and_gradient(lambda y, x: S.ctc(y, x, zero_infinity=True), labels, logits)
    for unknown_batch in (False, True):
        value, (gradient,) = graph_regime.value_and_grad(
            lambda x, y: S.ctc(y, x, zero_infinity=True),
            logits,
            labels,
            unknown_batch=unknown_batch,
        )
        np.testing.assert_allclose(value, expected[0], rtol=1e-6)
        np.testing.assert_allclose(gradient, expected[1], rtol=1e-5, atol=1e-7)


def test_nan_in_nan_out(regime):
    labels, logits = _ordinary(4)
    logits[2, 1, 0] = np.nan
    labels[0], labels[1], labels[3] = [2, 2, 2], [1, 2, 0], [1, 1, 1]  # 5, 2, 5 frames needed
    logits = logits[:, :4].copy()  # 4 frames
    logits[0, 0, 1] = np.nan  # an impossible label's NaN is NaN too, not inf or 0
    for zero_infinity in (False, True):
        value = regime.run(lambda x, y: S.ctc(y, x, zero_infinity=zero_infinity), logits, labels)
        assert np.isnan(value[[0, 2]]).all() and np.isfinite(value[[1]]).all()
        assert value[3] == (0.0 if zero_infinity else np.inf)


def test_logits_far_apart_stay_finite():
    labels, logits = _ordinary(5)
    logits = np.where(logits > 0, 3e38, -3e38).astype(np.float32)  # gaps beyond the float32 range
    keras_value = keras.losses.CTC(reduction="none")(labels, logits).numpy()
    value, gradient = _value_and_gradient(S.CTC(reduction="none"), labels, logits)
    assert np.isnan(keras_value).any()
    assert np.isfinite(value).all() and np.isfinite(gradient).all()


# ----------------------------------------------------------------------------
# Errors, config, saving
# ----------------------------------------------------------------------------


def test_gradient_stays_finite_where_float64_cannot_resolve_it(regime):
    # Hypothesis found it: at logits of 1.6e32, alpha + beta - emission - log p cancels four
    # such numbers and float64 leaves 1e16 of rounding, whose exp was inf. The empty label's
    # path is all blanks: the gradient of frame 0 is softmax [0, 1, 0] less the blank's 1.
    logits = np.zeros((2, 4, 3), np.float32)
    logits[0, 0, 1], logits[0, 1, 0] = 1.6225928e32, -3.6169535e16
    value, (gradient,) = regime.value_and_grad(
        lambda x, y: S.ctc(y, x), logits, np.zeros((2, 3), np.int32)
    )
    assert np.isfinite(value).all() and np.isfinite(gradient).all()
    np.testing.assert_array_equal(gradient[0, 0], [-1.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "labels,bad",
    [
        ([[5, 1, 0], [1, 0, 0]], "5"),  # 4 classes: the gather read class 3
        ([[-1, 1, 0], [1, 0, 0]], "-1"),
        ([[1, 0, 4], [1, 0, 0]], "4"),  # non-zero: a label (label_length 2), not padding
    ],
)
def test_out_of_range_label_errors_or_is_nan(regime, labels, bad):
    """Contract rule 6: an error naming the label eagerly and in graphs, NaN under XLA;
    never the finite loss of a clamped class. The 0 padding and the blank label 0 of
    the valid row are not flagged."""
    logits = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    labels = np.array(labels, np.int32)
    fn = S.CTC(reduction="none")
    expected = _reference(labels[1:], logits[1:])
    for unknown_batch in (False, True):
        if regime.name == "xla":
            value = regime.run(lambda y, x: fn(y, x), labels, logits, unknown_batch=unknown_batch)
            assert np.isnan(value[0])
            np.testing.assert_allclose(value[1:], expected, rtol=2e-6)
        else:
            with pytest.raises(
                tf.errors.InvalidArgumentError,
                match=rf"ctc: label\D*{bad}\D*out of range for\D*4\D",
            ):
                regime.run(lambda y, x: fn(y, x), labels, logits, unknown_batch=unknown_batch)


def test_labels_of_width_zero_are_the_empty_label(regime):
    """``y_true`` ``[batch, 0]``: every sample's label is empty (all blanks), as for
    ``[batch, 1]`` zeros; the recursion had no states for it (tf.range(-1) failed)."""
    logits = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for unknown_batch in (False, True):
        value, (gradient,) = regime.value_and_grad(
            lambda x, y: S.ctc(y, x), logits, np.zeros((2, 0), np.int32),
            unknown_batch=unknown_batch,
        )
        expected, expected_gradient = _value_and_gradient(
            S.ctc, np.zeros((2, 1), np.int32), logits
        )
        np.testing.assert_allclose(value, _reference(np.zeros((2, 0)), logits), rtol=2e-6)
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_zero_frames(zero_infinity, regime):
    """``T = 0``: by the definition the empty label has probability 1 (loss 0) and any other
    probability 0 (loss +inf, 0 with ``zero_infinity``). XLA could not compile the recursion's
    scan over no frames, and the last frame's states were read as ``alpha[-1]``."""
    labels = np.array([[0, 0], [1, 0], [1, 2]], np.int32)
    logits = np.zeros((3, 0, 4), np.float32)
    loss = S.CTC(reduction="none", zero_infinity=zero_infinity)
    impossible = 0.0 if zero_infinity else np.inf
    for unknown_batch in (False, True):
        value, (gradient,) = regime.value_and_grad(
            lambda x, y: loss(y, x), logits, labels, unknown_batch=unknown_batch
        )
        np.testing.assert_array_equal(value, [0.0, impossible, impossible])
        assert not np.signbit(value[0])
        assert gradient.shape == (3, 0, 4)


@pytest.mark.parametrize("frames", [17, 33])
def test_padded_frames_and_labels_change_nothing(frames, regime):
    """The kernel gets the frames padded to a few lengths (17 -> 18, 33 -> 36) and
    the labels too (17 -> 18): the loss is still the definition's
    (mpmath's forward pass), and the gradient the unpadded kernel's, in the input's shape.
    A padding frame that moved ``alpha`` or kept a mass fails it."""
    rng = np.random.default_rng(frames)
    logits = rng.normal(size=(2, frames, 4)).astype(np.float32)
    labels = np.zeros((2, 17), np.int32)
    labels[0, :3], labels[1, :2] = [1, 2, 2], [3, 1]
    value, (gradient,) = regime.value_and_grad(lambda x, y: S.ctc(y, x), logits, labels)
    with mpmath.workprec(200):
        want = [float(mp_ctc(label, x.astype(np.float64))) for label, x in zip(labels, logits)]
    # The contract's 4 float32 ULP.
    np.testing.assert_allclose(value, want, rtol=4 * np.finfo(np.float32).eps)
    _, (unpadded,) = regime.value_and_grad(
        lambda x, y: ctc_kernel(y, x, tf.shape(x)[1], zero_infinity=False), logits, labels
    )
    assert gradient.shape == logits.shape
    # Differences of probabilities in [0, 1], summed in another order over more states: 2
    # float32 ULP of 1.
    np.testing.assert_allclose(gradient, unpadded, rtol=0, atol=2 * np.finfo(np.float32).eps)


def test_the_kernels_padding_frames_get_a_zero_gradient(regime):
    """The kernel's own gradient for the frames past ``frames`` is 0, not NaN (their states
    are all ``-inf``): sliced off by ``ctc``, a NaN there would still trip
    ``tf.debugging.enable_check_numerics``."""
    logits = np.random.default_rng(0).normal(size=(2, 20, 4)).astype(np.float32)
    labels = np.array([[1, 2, 2, 0], [3, 1, 0, 0]], np.int32)
    _, (gradient,) = regime.value_and_grad(
        lambda x, y: ctc_kernel(y, x, tf.constant(17), zero_infinity=False), logits, labels
    )
    np.testing.assert_array_equal(gradient[:, 17:], 0.0)
    assert np.isfinite(gradient).all()


def test_padded_length_closed_form():
    """``2^k <= n < 2^(k+1)``: the next multiple of ``max(2^k // 8, 1)``, for a length known
    when traced (a Python int) and one known only when run (a tensor) alike."""
    steps = [max((1 << max(n.bit_length() - 1, 0)) // 8, 1) for n in range(5000)]
    want = [-(-n // s) * s for n, s in enumerate(steps)]
    got = padded_length(tf.constant(np.arange(5000), tf.int32)).numpy()
    np.testing.assert_array_equal(got, want)
    assert [padded_length(n) for n in range(5000)] == want


def test_a_few_padded_lengths_serve_every_length(monkeypatch):
    """Each new input shape compiles the kernel again (1.1-2.6 s on 2 cores), also in a
    ``tf.function`` generalized to unknown lengths: frames 30-41 reach it as 5 lengths,
    label widths 20-31 as 7, each call with its own number of frames."""
    calls = set()

    def recording(labels, logits, frames, zero_infinity):
        calls.add((int(frames), logits.shape[1], labels.shape[1]))
        return tf.zeros(tf.shape(logits)[:1])

    monkeypatch.setattr(ctc_module, "ctc_kernel", recording)
    for frames, width in itertools.product(range(30, 42), range(20, 32)):
        S.ctc(np.ones((2, width), np.int32), np.zeros((2, frames, 20), np.float32))
    assert {(frames, padded) for frames, padded, _ in calls} == {
        (t, 30 if t == 30 else 32 if t <= 32 else 36 if t <= 36 else 40 if t <= 40 else 44)
        for t in range(30, 42)
    }
    assert {width for _, _, width in calls} == {20, 22, 24, 26, 28, 30, 32}


def test_lengths_known_only_when_run_are_padded_alike():
    """In a graph traced with unknown frames and label width, the padding is computed when
    the graph runs (tensor lengths): the same losses and gradients as the static ones."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 19, 4)).astype(np.float32)
    labels = np.zeros((2, 17), np.int32)
    labels[0, :3], labels[1, :2] = [1, 2, 2], [3, 1]

    def value_and_gradient(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = S.ctc(y, x)
        return value, tape.gradient(value, x)

    unknown = tf.function(value_and_gradient, input_signature=[
        tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)
    ])
    got = unknown(tf.constant(logits), tf.constant(labels))
    want = value_and_gradient(tf.constant(logits), tf.constant(labels))
    for g, w in zip(got, want):
        # The same program at the same padded shapes: equal up to XLA's summation order.
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2 * np.finfo(np.float32).eps,
                                   atol=2 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("name", ["eager", "function"])
def test_new_lengths_reuse_the_kernels_trace(name):
    """The kernel is traced for its arguments' ranks alone (``any_length``): after two
    lengths have generalized the trace, new frame counts and label widths trace nothing
    (XLA still compiles each new shape). Traced for every shape, a new length took 1.1-2.4 s,
    not 0.9-1.2.
    (Seven classes and a batch of 3: shapes no other test traces.)"""
    regime, rng = Regime(name), np.random.default_rng(2)
    counts = []
    for frames, width in [(20, 3), (24, 5), (28, 7)]:
        logits = rng.normal(size=(3, frames, 7)).astype(np.float32)
        labels = rng.integers(1, 7, size=(3, width)).astype(np.int32)
        regime.value_and_grad(lambda x, y: S.ctc(y, x), logits, labels)
        counts.append(ctc_kernel.tracing_count())
    assert counts[1] == counts[2], counts


def test_errors_name_the_shapes_and_arguments():
    with pytest.raises(ValueError, match=r"y_true.shape=\(2,\)"):
        S.ctc(np.zeros(2), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"y_pred.shape=\(2, 3\)"):
        S.ctc(np.zeros((2, 3)), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 3, 4\)"):
        S.ctc(np.zeros((2, 3)), np.zeros((3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="zero_infinity='yes'"):
        S.CTC(zero_infinity="yes")


def test_config_and_saved_model(tmp_path):
    loss = S.CTC(name="my_ctc", zero_infinity=True)
    assert loss.get_config() == {
        "name": "my_ctc",
        "reduction": "sum_over_batch_size",
        "dtype": "float32",
        "zero_infinity": True,
    }
    rebuilt = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(rebuilt) is S.CTC and rebuilt.get_config() == loss.get_config()

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "ctc.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is S.CTC and loaded.loss.get_config() == loss.get_config()
    x = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        float(loaded.compute_loss(x=x, y=IMPOSSIBLE, y_pred=loaded(x))),
        float(model.compute_loss(x=x, y=IMPOSSIBLE, y_pred=model(x))),
        rtol=1e-6,
    )
    history = model.fit(x, IMPOSSIBLE, epochs=2, verbose=0)
    assert all(math.isfinite(v) for v in history.history["loss"])
    assert all(np.isfinite(w).all() for w in model.get_weights())
