"""What the losses take (contract rule 6, issue 11): Keras's inputs, clear errors, ignore_class.

* integer and boolean predictions are cast to the loss dtype, as Keras does;
  strings and complex numbers (also numeric strings in ``y_true``) are a
  ``TypeError`` naming the argument and the dtype;
* ragged rows for the losses Keras takes them for, a clear error elsewhere;
* hyperparameters: strings refused, converted floats stored;
* bad shapes, axes and dtypes: a ``ValueError`` naming the argument and value;
* ``ignore_class``: the loss equals the loss of the same data without the
  ignored entries, for every loss that takes it.
"""

from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
import stableops.ops as O
from stableops.ops import dtype_limits
from tests import _reference as R

F32 = dtype_limits("float32")  # the losses return float32: tolerances in its eps
F32_EPS = F32.eps

# Class name -> (function name, y_true) for a (2, 3) batch of {0, 1} predictions.
_ONE_HOT = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
_LOSSES = {
    "BinaryCrossentropy": ("binary_crossentropy", _ONE_HOT),
    "BinaryFocalCrossentropy": ("binary_focal_crossentropy", _ONE_HOT),
    "CategoricalCrossentropy": ("categorical_crossentropy", _ONE_HOT),
    "CategoricalFocalCrossentropy": ("categorical_focal_crossentropy", _ONE_HOT),
    "SparseCategoricalCrossentropy": ("sparse_categorical_crossentropy", np.array([1, 0])),
    "KLDivergence": ("kl_divergence", _ONE_HOT),
    "Poisson": ("poisson", _ONE_HOT),
    "PoissonNLL": ("poisson_nll", _ONE_HOT),
    "MeanSquaredError": ("mean_squared_error", _ONE_HOT),
    "MeanAbsoluteError": ("mean_absolute_error", _ONE_HOT),
    "MeanAbsolutePercentageError": ("mean_absolute_percentage_error", _ONE_HOT),
    "MeanSquaredLogarithmicError": ("mean_squared_logarithmic_error", _ONE_HOT),
    "Huber": ("huber", _ONE_HOT),
    "LogCosh": ("log_cosh", _ONE_HOT),
    "CosineSimilarity": ("cosine_similarity", _ONE_HOT),
    "Dice": ("dice", _ONE_HOT),
    "Tversky": ("tversky", _ONE_HOT),
    "Hinge": ("hinge", _ONE_HOT),
    "SquaredHinge": ("squared_hinge", _ONE_HOT),
    "CategoricalHinge": ("categorical_hinge", _ONE_HOT),
}
_INT_PREDICTIONS = np.array([[0, 1, 1], [1, 0, 0]], np.int64)
# Losses whose y_pred is not y_true's shape (means and variances stacked on the
# last axis) cannot share the (2, 3) batches above; tests/test_losses_gaussian.py
# checks their inputs (integer casts, TypeError, shapes, ragged, hyperparameters).
_OWN_INPUT_TESTS = {"GaussianKL", "GaussianNLL"}
# Losses whose inputs are not a (y_true, y_pred) pair of one shape (labels and
# embeddings, label sequences and logits): their inputs and errors are tested
# in test_losses_metric.py and test_losses_ctc.py.
_OTHER_INPUTS = {"CTC", "ContrastiveLoss", "NTXent", "TripletLoss"}


def test_every_loss_is_covered():
    own_tests = _OWN_INPUT_TESTS | _OTHER_INPUTS
    assert sorted(_LOSSES) == sorted(n for n in S.__all__ if n[0].isupper() and n not in own_tests)


# ----------------------------------------------------------------------------
# Item 3: integer and boolean predictions are cast, as Keras does
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_integer_and_boolean_predictions_are_cast_like_keras(name, regime):
    # Casting {0, 1} to float32 is exact, so the loss must equal the loss of
    # the float32 predictions bit for bit (the reference is that exact cast).
    fn_name, y_true = _LOSSES[name]
    loss, fn = getattr(S, name)(), getattr(S, fn_name)
    expected_loss = regime.run(loss, y_true, _INT_PREDICTIONS.astype(np.float32))
    expected_fn = regime.run(fn, y_true, _INT_PREDICTIONS.astype(np.float32))
    for predictions in (
        _INT_PREDICTIONS,
        _INT_PREDICTIONS.astype(np.int32),
        _INT_PREDICTIONS.astype(bool),
    ):
        value = regime.run(loss, y_true, predictions)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected_loss, err_msg=f"{name} {predictions.dtype}")
        np.testing.assert_array_equal(regime.run(fn, y_true, predictions), expected_fn)


def test_integer_predictions_take_the_loss_dtype():
    value = S.MeanSquaredError(dtype="float64")(_ONE_HOT, _INT_PREDICTIONS)
    assert value.dtype == tf.float64
    value = S.BinaryCrossentropy(dtype="float64")(_ONE_HOT, _INT_PREDICTIONS)
    assert value.dtype == tf.float64


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_string_and_complex_inputs_are_a_type_error_naming_them(name):
    fn_name, y_true = _LOSSES[name]
    strings = np.array([["0", "1", "1"], ["1", "0", "0"]])
    for call in (getattr(S, name)(), getattr(S, fn_name)):
        for bad in (strings, tf.constant(strings)):
            with pytest.raises(TypeError, match=r"`y_pred`.*(string|<U1)"):
                call(y_true, bad)
        with pytest.raises(TypeError, match=r"`y_pred`.*complex64"):
            call(y_true, _INT_PREDICTIONS.astype(np.complex64))
        # Numeric strings in y_true: Keras fails with UnimplementedError (or,
        # given a float dtype hint, TF parses them silently).
        for bad in (y_true.astype(str), tf.constant(y_true.astype(str))):
            with pytest.raises(TypeError, match=r"`y_true`.*(string|<U)"):
                call(bad, _INT_PREDICTIONS.astype(np.float32))


def test_msle_targets_are_clipped_at_zero_as_in_keras(regime):
    # y_true = -2 counts as 0 (Keras clips targets); y_pred = -0.25 keeps the
    # tangent continuation log1p(x) ~ x below 0.
    t = np.array([[-2.0, 0.5]], np.float32)
    p = np.array([[0.5, -0.25]], np.float32)
    log15 = mpmath.log1p(mpmath.mpf(0.5))
    expected = (log15**2 + (mpmath.mpf(-0.25) - log15) ** 2) / 2
    value, (grad_true,) = regime.value_and_grad(S.mean_squared_logarithmic_error, t, p, wrt=(0,))
    R.assert_ulp_within(value, np.array([float(expected)]), "float32", 6)
    assert grad_true[0, 0] == 0.0  # the clipped target has no gradient, as in Keras
    assert grad_true[0, 1] != 0.0


_RAGGED_TRUE = [[1.0, 2.0], [3.0], [0.5, -1.0, 2.0]]
_RAGGED_PRED = [[1.0, 1.0], [2.0], [1.5, 1.0, -2.0]]
# Exact per-row values: MSE [0.5, 1, (1 + 4 + 16) / 3], MAE [0.5, 1, (1 + 2 + 4) / 3],
# Huber (delta 1) [0.25, 0.5, (0.5 + 1.5 + 3.5) / 3].
_RAGGED_EXACT = {
    "mean_squared_error": ([0.5, 1.0, 7.0], {}),
    "mean_absolute_error": ([0.5, 1.0, 7.0 / 3.0], {}),
    "huber": ([0.25, 0.5, 5.5 / 3.0], {}),
}
_RAGGED_MPMATH = {
    "log_cosh": (R.mp_log_cosh_row, ()),
    "mean_squared_logarithmic_error": (R.mp_mean_squared_logarithmic_error_row, ()),
    "poisson": (lambda t, p: R.mp_poisson_row(t, p, R.mpf(F32.tiny)), ()),
}


@pytest.mark.parametrize("fn_name", sorted(_RAGGED_EXACT) + sorted(_RAGGED_MPMATH))
def test_ragged_rows_are_averaged_row_by_row_as_in_keras(fn_name):
    t, p = tf.ragged.constant(_RAGGED_TRUE), tf.ragged.constant(_RAGGED_PRED)
    if fn_name in _RAGGED_EXACT:
        expected, _ = _RAGGED_EXACT[fn_name]
    else:
        reference, args = _RAGGED_MPMATH[fn_name]
        expected = [
            float(reference([R.mpf(v) for v in a], [R.mpf(v) for v in b], *args))
            for a, b in zip(_RAGGED_TRUE, _RAGGED_PRED)
        ]
    value = getattr(S, fn_name)(t, p).numpy()
    R.assert_ulp_within(value, np.array(expected), "float32", 6, context=fn_name)
    class_name = {"huber": "Huber", "log_cosh": "LogCosh", "poisson": "Poisson"}.get(
        fn_name, "".join(w.title() for w in fn_name.split("_"))
    )
    total = getattr(S, class_name)()(t, p).numpy()
    assert total == pytest.approx(np.mean(expected), rel=4 * F32_EPS)


def test_ragged_hinges_take_ragged_rows():
    t, p = tf.ragged.constant([[1.0, -1.0], [1.0]]), tf.ragged.constant([[0.5, 0.5], [-1.0]])
    # Hinge rows: [(0.5 + 1.5) / 2, 2]; squared: [(0.25 + 2.25) / 2, 4].
    np.testing.assert_allclose(S.hinge(t, p).numpy(), [1.0, 2.0], rtol=F32_EPS)
    np.testing.assert_allclose(S.squared_hinge(t, p).numpy(), [1.25, 4.0], rtol=F32_EPS)


@pytest.mark.parametrize(
    "fn_name, target, prediction, expected",
    [
        # Each term 2.25e38 (below float32's 3.4e38): their mean is too.
        ("mean_squared_error", 0.0, 1.5e19, 2.25e38),
        ("mean_absolute_error", 0.0, 2e38, 2e38),
        ("huber", 0.0, 2e38, 2e38 - 0.5),
        ("hinge", -1.0, 2e38, 2e38 + 1.0),
        ("log_cosh", 0.0, 2e38, 2e38 - math.log(2.0)),
    ],
)
def test_ragged_rows_near_the_range_keep_a_finite_mean(fn_name, target, prediction, expected):
    """The ragged rows' mean was a float32 ``reduce_mean``, which overflowed where the dense
    rows' float64 sum keeps the mean finite (MSE of 1.5e19: ``inf`` for 2.25e38)."""
    lengths = [4, 3]
    t = tf.RaggedTensor.from_row_lengths(np.full(7, target, np.float32), lengths)
    p = tf.RaggedTensor.from_row_lengths(np.full(7, prediction, np.float32), lengths)
    value = getattr(S, fn_name)(t, p).numpy()
    np.testing.assert_allclose(value, np.float32([expected, expected]), rtol=F32_EPS)


@pytest.mark.parametrize(
    "name",
    [
        "Dice",
        "BinaryCrossentropy",
        "KLDivergence",
        "CategoricalCrossentropy",
        "MeanAbsolutePercentageError",
    ],
)
def test_ragged_input_elsewhere_is_a_clear_error(name):
    fn_name, _ = _LOSSES[name]
    t, p = tf.ragged.constant([[1.0, 0.0], [1.0]]), tf.ragged.constant([[0.5, 0.5], [1.0]])
    for call in (getattr(S, name)(), getattr(S, fn_name)):
        with pytest.raises(TypeError, match=rf"`{fn_name}` does not support ragged"):
            call(t, p)


def test_ragged_and_dense_together_is_a_clear_error():
    with pytest.raises(TypeError, match="both be ragged or both dense"):
        S.mean_squared_error(tf.ragged.constant([[1.0, 2.0], [3.0]]), np.ones((2, 2), np.float32))


# ----------------------------------------------------------------------------
# Item 3: hyperparameters are numbers, stored as Python floats
# ----------------------------------------------------------------------------

_STRING_HYPERPARAMETERS = [
    (lambda v: S.BinaryCrossentropy(pos_weight=v), "pos_weight"),
    (lambda v: S.BinaryFocalCrossentropy(pos_weight=v), "pos_weight"),
    (lambda v: S.BinaryCrossentropy(label_smoothing=v), "label_smoothing"),
    (lambda v: S.CategoricalCrossentropy(label_smoothing=v), "label_smoothing"),
    (lambda v: S.SparseCategoricalCrossentropy(label_smoothing=v), "label_smoothing"),
    (lambda v: S.BinaryFocalCrossentropy(gamma=v), "gamma"),
    (lambda v: S.CategoricalFocalCrossentropy(alpha=v), "alpha"),
    (lambda v: S.Huber(delta=v), "delta"),
    (lambda v: S.Tversky(alpha=v), "alpha"),
    (lambda v: S.Dice(smooth=v), "smooth"),
]


@pytest.mark.parametrize(
    "make, argument", _STRING_HYPERPARAMETERS, ids=lambda x: x if isinstance(x, str) else ""
)
def test_string_hyperparameters_are_refused_and_numbers_stored_as_floats(make, argument):
    with pytest.raises(ValueError, match=rf"`{argument}` must be a number, got {argument}='0.1'"):
        make("0.1")
    config = make(np.float32(0.5)).get_config()
    assert type(config[argument]) is float and config[argument] == 0.5


_FROM_LOGITS = {  # class -> function form
    "BinaryCrossentropy": S.binary_crossentropy,
    "BinaryFocalCrossentropy": S.binary_focal_crossentropy,
    "CategoricalCrossentropy": S.categorical_crossentropy,
    "CategoricalFocalCrossentropy": S.categorical_focal_crossentropy,
    "SparseCategoricalCrossentropy": S.sparse_categorical_crossentropy,
}


@pytest.mark.parametrize("name", sorted(_FROM_LOGITS))
@pytest.mark.parametrize("value", ["False", 2, None], ids=["string", "int", "none"])
def test_from_logits_is_true_or_false(name, value):
    # `from_logits="False"` was stored as the string and meant True: probabilities taken as
    # logits, a wrong loss and no error (Keras does the same; contract rule 6 refuses it).
    loss_cls = getattr(S, name)
    message = rf"`from_logits` must be True or False, got from_logits={value!r}"
    with pytest.raises(ValueError, match=message):
        loss_cls(from_logits=value)
    fn = _FROM_LOGITS[name]
    labels = np.int32([1]) if name.startswith("Sparse") else np.float32([[1.0, 0.0]])
    with pytest.raises(ValueError, match=message):
        fn(labels, np.float32([[0.9, 0.1]]), from_logits=value)
    assert loss_cls(from_logits=np.True_).get_config()["from_logits"] is True
    # 0 and 1 are unambiguous, and Keras takes them: a drop-in does too.
    assert loss_cls(from_logits=1).get_config()["from_logits"] is True
    assert loss_cls(from_logits=np.int64(0)).get_config()["from_logits"] is False


def test_the_ops_check_from_logits_too():
    with pytest.raises(ValueError, match="`from_logits` must be True or False"):
        O.binary_crossentropy(np.float32([1.0]), np.float32([0.9]), from_logits="False")


@pytest.mark.parametrize(
    "make", [S.CategoricalCrossentropy, S.CategoricalFocalCrossentropy],
    ids=["categorical", "categorical_focal"],
)
def test_one_class_warns_as_keras_does(make):
    # A 1-unit output: its softmax is 1, the loss 0 and the gradient 0 (a model that never
    # learns). Keras warns; stableops said nothing. Two classes: no warning.
    loss = make()
    with pytest.warns(SyntaxWarning, match=r"num_classes > 1. Received: y_pred.shape=\(4, 1\)"):
        value = loss(np.ones((4, 1), np.float32), np.full((4, 1), 0.7, np.float32))
    assert float(value) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(np.float32([[0.0, 1.0]]), np.float32([[0.3, 0.7]]))


def test_pos_weight_messages_show_the_right_range():
    with pytest.raises(
        ValueError,
        match=r"`pos_weight` must be a finite number, got "
        r"pos_weight=inf",
    ):
        S.BinaryCrossentropy(pos_weight=math.inf)
    with pytest.raises(
        ValueError,
        match=r"`pos_weight` must be in \(0\.0, inf\), got "
        r"pos_weight=-1",
    ):
        S.BinaryCrossentropy(pos_weight=-1.0)
    # Huber's delta may be infinite (half the squared error): its range is closed at inf.
    with pytest.raises(ValueError, match=r"`delta` must be in \(0\.0, inf\], got delta=-1"):
        S.Huber(delta=-1.0)


# ----------------------------------------------------------------------------
# Item 5: clear errors naming the argument and value
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["BinaryCrossentropy", "Poisson", "MeanSquaredError", "KLDivergence"]
)
def test_scalar_input_names_y_pred_and_the_axis(name):
    fn_name, _ = _LOSSES[name]
    for call in (getattr(S, name)(), getattr(S, fn_name)):
        with pytest.raises(ValueError, match=r"`y_pred` must have rank >= 1 to reduce `axis=-1`"):
            call(1.0, 0.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: S.Dice(axis=5),
        lambda: S.CosineSimilarity(axis=5),
        lambda: S.BinaryCrossentropy(axis=5),
        lambda: S.BinaryFocalCrossentropy(axis=5),
        lambda: S.Tversky(axis=(0, 5)),
        lambda: S.CategoricalCrossentropy(axis=5),
    ],
)
def test_axis_out_of_range_names_the_axis(make):
    with pytest.raises(ValueError, match=r"`axis` is out of range for a rank-2 `y_pred`.*axis=5"):
        make()(_ONE_HOT, _ONE_HOT)


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_non_floating_loss_dtype_names_dtype(name):
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype, got dtype='int32'"):
        getattr(S, name)(dtype="int32")


# ----------------------------------------------------------------------------
# Item 7: ignore_class leaves the ignored entries out, for every loss that takes it
# ----------------------------------------------------------------------------

_RNG = np.random.default_rng(11)
_IGNORED = -1


def _binary_data():
    """Targets in [0, 1] with some entries -1 (ignored) and one sample all ignored."""
    t = _RNG.uniform(0.0, 1.0, (5, 4)).astype(np.float32)
    t[t < 0.2] = 0.0
    t[0, 1] = t[2, 0] = t[2, 3] = _IGNORED
    t[3, :] = _IGNORED  # nothing left: the sample leaves the batch mean
    p = _RNG.uniform(0.05, 0.95, (5, 4)).astype(np.float32)
    p[0, 1] = np.nan  # an ignored entry's NaN is ignored too
    return t, p


_BINARY_IGNORING = [
    ("BinaryCrossentropy", {}),
    ("BinaryCrossentropy", {"from_logits": True, "pos_weight": 2.0, "label_smoothing": 0.1}),
    ("BinaryFocalCrossentropy", {}),
    ("BinaryFocalCrossentropy", {"from_logits": True, "apply_class_balancing": True, "gamma": 1.5}),
    ("BinaryFocalCrossentropy", {"pos_weight": 3.0}),
]


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
@pytest.mark.parametrize("name, kwargs", _BINARY_IGNORING)
def test_binary_ignore_class_equals_the_loss_without_those_entries(name, kwargs, reduction, regime):
    t, p = _binary_data()
    ignoring = getattr(S, name)(ignore_class=_IGNORED, reduction=reduction, **kwargs)
    plain = getattr(S, name)(reduction="none", **kwargs)
    kept_rows = [(t[i][t[i] != _IGNORED], p[i][t[i] != _IGNORED]) for i in range(len(t))]
    per_sample = [float(plain(a[None], b[None])[0]) for a, b in kept_rows if a.size]
    expected = sum(per_sample) / (len(per_sample) if reduction == "sum_over_batch_size" else 1)
    value = regime.run(ignoring, t, p)
    assert value == pytest.approx(expected, rel=8 * F32_EPS), (name, kwargs, reduction)
    # The function form: the same per-sample values, the empty sample masked out.
    fn_name, _ = _LOSSES[name]
    rows = getattr(S, fn_name)(t, p, ignore_class=_IGNORED, **kwargs)
    kept = [i for i, (a, _) in enumerate(kept_rows) if a.size]
    np.testing.assert_allclose(rows.numpy()[kept], per_sample, rtol=8 * F32_EPS)
    np.testing.assert_array_equal(rows._keras_mask.numpy(), [bool(a.size) for a, _ in kept_rows])


def _categorical_data(num_classes=4):
    labels = np.array([[0, 2, 1], [3, 2, 2], [1, 0, 3]])  # class 2 is ignored
    logits = _RNG.normal(0.0, 2.0, labels.shape + (num_classes,)).astype(np.float32)
    logits[0, 1, 0] = np.nan  # in an ignored position
    return labels, logits


_CATEGORICAL_IGNORING = [
    ("CategoricalCrossentropy", {"from_logits": True}),
    ("CategoricalCrossentropy", {"label_smoothing": 0.2}),
    ("CategoricalFocalCrossentropy", {"from_logits": True}),
    ("CategoricalFocalCrossentropy", {"alpha": [0.1, 0.2, 0.3, 0.4], "gamma": 1.0}),
    ("SparseCategoricalCrossentropy", {"from_logits": True}),
    ("SparseCategoricalCrossentropy", {"label_smoothing": 0.1}),
]


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
@pytest.mark.parametrize("name, kwargs", _CATEGORICAL_IGNORING)
def test_categorical_ignore_class_equals_the_loss_without_those_entries(
    name, kwargs, reduction, regime
):
    labels, logits = _categorical_data()
    if not kwargs.get("from_logits"):
        logits = tf.nn.softmax(np.nan_to_num(logits)).numpy()
        logits[0, 1, 0] = np.nan
    sparse = name.startswith("Sparse")
    targets = labels if sparse else np.eye(4, dtype=np.float32)[labels]
    ignoring = getattr(S, name)(ignore_class=2, reduction=reduction, **kwargs)
    kept = labels != 2
    # The kept positions as one batch of rows: "sum_over_batch_size" is then
    # the mean over them, as ignore_class's mask makes it.
    expected = getattr(S, name)(reduction=reduction, **kwargs)(targets[kept], logits[kept]).numpy()
    value = regime.run(ignoring, targets, logits)
    assert value == pytest.approx(float(expected), rel=8 * F32_EPS), (name, kwargs, reduction)


@pytest.mark.parametrize(
    "name", ["kl_divergence", "poisson", "hinge", "mean_squared_error", "categorical_hinge"]
)
@pytest.mark.parametrize("unknown", ["both", "y_pred"])
def test_a_loss_of_inputs_of_unknown_rank_says_the_rank_must_be_known(name, unknown):
    # TF said "Cannot take the length of shape with unknown rank" from deep inside the rank
    # matching (Keras computes some of these losses there). Each input is checked: with
    # both unknown, y_true's is the one named.
    spec = tf.TensorSpec(None, tf.float32)
    first = spec if unknown == "both" else tf.TensorSpec([None, 3], tf.float32)
    traced = tf.function(getattr(S, name), input_signature=[first, spec])
    named = "y_true" if unknown == "both" else "y_pred"
    with pytest.raises(ValueError, match=rf"`{named}` has an unknown rank .*\(\[None, 8\]\)"):
        traced(tf.ones((2, 3)), tf.fill((2, 3), 0.5))
