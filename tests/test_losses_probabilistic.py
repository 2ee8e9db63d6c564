"""Cross-entropy family losses (stableops/losses/_probabilistic.py).

Drop-in parity with Keras 3.15 on well-conditioned inputs (every reduction,
with and without sample weights, logits and probabilities); the cases where
Keras fails, each a named test comparing with what Keras does; the extras
(``pos_weight``, ``ignore_class``, sparse ``label_smoothing``); hypothesis
properties (finite value and gradient, accuracy against mpmath); the three
execution regimes; bad-input errors; config round trips.
"""

import functools
import inspect
import math
import zlib

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import stableops.losses as S
import stableops.ops
from benchmarks.accuracy import mp_categorical_focal_probabilities
from tests import _reference as R
from tests._regimes import Regime
from tests._strategies import FLOAT_DTYPES, finite_arrays

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "none")
N, C = 6, 5
F32_TINY = float(np.finfo(np.float32).tiny)
F32_BELOW_ONE = 1.0 - float(np.finfo(np.float32).eps) / 2
# ULP budgets of the float32 result, as stated in the docstrings.
ULP = 4  # binary, categorical and sparse cross-entropy, KL divergence, Poisson
BINARY_FOCAL_ULP = 16
CATEGORICAL_FOCAL_ULP = 8
# The Keras behaviour these tests document is that of Keras 3.15; other
# versions may have fixed it, so it is only asserted there.
KERAS_3_15 = keras.version().startswith("3.15.")


def keras_shows(condition, what):
    """Assert a documented Keras 3.15 failure (skipped on other Keras versions)."""
    if KERAS_3_15:
        assert condition, f"Keras 3.15 was expected to show: {what}"


def value_and_grad(fn, y_true, y_pred):
    """Eager value of ``fn(y_true, y_pred)`` and the gradient of its sum w.r.t. ``y_pred``."""
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        value = fn(y_true, y_pred)
        total = tf.reduce_sum(tf.cast(value, tf.float32))
    grad = tape.gradient(total, y_pred)
    return value.numpy(), (np.zeros(y_pred.shape) if grad is None else grad.numpy())


def as_f64(x):
    return np.asarray(x, dtype=np.float64)


@pytest.fixture
def eager_ops():
    """Run the loss kernels op by op instead of XLA-compiling each one.

    For the named tests' many small one-off inputs (each new shape would be
    a new XLA compile, forward and backward): they test the math, not the
    compiler. The XLA path is covered by the parity, property, accuracy and
    regime tests, whose regime inputs repeat these edge cases.
    """
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


# ----------------------------------------------------------------------------
# Drop-in parity with Keras (float32, well-conditioned)
# ----------------------------------------------------------------------------


# "Well-conditioned" is Keras's condition: its focal losses round p = sigmoid(z)
# or softmax(z) and then form 1 - p, which loses |p / (1 - p)| ULPs; these
# ranges keep p <= 0.89 so that Keras itself is within 1e-6.


def _binary(rng):
    y = rng.choice([0.0, 1.0], size=(N, C))
    return y, rng.uniform(0.05, 0.95, size=(N, C)), rng.uniform(-2.0, 2.0, size=(N, C))


def _soft_binary(rng):
    y = rng.uniform(0.0, 1.0, size=(N, C))
    return y, rng.uniform(0.05, 0.95, size=(N, C)), rng.uniform(-2.0, 2.0, size=(N, C))


def _probability_rows(rng):
    p = rng.uniform(0.05, 1.0, size=(N, C))
    return p / p.sum(axis=-1, keepdims=True)


def _categorical(rng):
    y = np.eye(C)[rng.integers(0, C, size=N)]
    return y, _probability_rows(rng), rng.uniform(-1.5, 1.5, size=(N, C))


def _sparse(rng):
    labels = rng.integers(0, C, size=N)
    return labels, _probability_rows(rng), rng.uniform(-1.5, 1.5, size=(N, C))


def _distributions(rng):
    return _probability_rows(rng), _probability_rows(rng), None


def _counts(rng):
    return rng.poisson(2.0, size=(N, C)).astype(float), rng.uniform(0.5, 4.0, size=(N, C)), None


BOTH, PROBABILITIES, LOGITS, NEITHER = (False, True), (False,), (True,), (None,)
# (class, function, kwargs, generator, from_logits values): each loss both
# ways, its variants one way each (None: the loss has no from_logits).
PARITY_CASES = [
    ("BinaryCrossentropy", "binary_crossentropy", {}, _binary, BOTH),
    (
        "BinaryCrossentropy",
        "binary_crossentropy",
        {"label_smoothing": 0.2},
        _soft_binary,
        PROBABILITIES,
    ),
    ("BinaryFocalCrossentropy", "binary_focal_crossentropy", {}, _binary, BOTH),
    (
        "BinaryFocalCrossentropy",
        "binary_focal_crossentropy",
        {"apply_class_balancing": True, "alpha": 0.4, "gamma": 0.5, "label_smoothing": 0.1},
        _soft_binary,
        LOGITS,
    ),
    ("CategoricalCrossentropy", "categorical_crossentropy", {}, _categorical, BOTH),
    (
        "CategoricalCrossentropy",
        "categorical_crossentropy",
        {"label_smoothing": 0.1},
        _categorical,
        PROBABILITIES,
    ),
    ("CategoricalFocalCrossentropy", "categorical_focal_crossentropy", {}, _categorical, BOTH),
    (
        "CategoricalFocalCrossentropy",
        "categorical_focal_crossentropy",
        {"alpha": [0.1, 0.2, 0.3, 0.4, 0.5], "gamma": 3.0, "label_smoothing": 0.1},
        _categorical,
        LOGITS,
    ),
    ("SparseCategoricalCrossentropy", "sparse_categorical_crossentropy", {}, _sparse, BOTH),
    (
        "SparseCategoricalCrossentropy",
        "sparse_categorical_crossentropy",
        {"ignore_class": 2},
        _sparse,
        PROBABILITIES,
    ),
    ("KLDivergence", "kl_divergence", {}, _distributions, NEITHER),
    ("Poisson", "poisson", {}, _counts, NEITHER),
]


def _parity_params():
    for cls, fn, kwargs, make, ways in PARITY_CASES:
        for from_logits in ways:
            yield pytest.param(
                cls, fn, kwargs, make, from_logits, id=f"{cls}-{kwargs}-logits={from_logits}"
            )


@pytest.mark.parametrize("cls, fn, kwargs, make, from_logits", list(_parity_params()))
def test_parity_with_keras(cls, fn, kwargs, make, from_logits):
    rng = np.random.default_rng(zlib.crc32(f"{cls}{kwargs}".encode()))  # reproducible per case
    y_true, probabilities, logits = make(rng)
    y_pred = (logits if from_logits else probabilities).astype(np.float32)
    y_true = y_true.astype(np.int64 if cls.startswith("Sparse") else np.float32)
    if "ignore_class" in kwargs:
        y_true[1] = kwargs["ignore_class"]
    weights = rng.uniform(0.5, 2.0, size=N).astype(np.float32)
    extra = {} if from_logits is None else {"from_logits": from_logits}
    for reduction in REDUCTIONS:
        ours = getattr(S, cls)(reduction=reduction, **kwargs, **extra)
        theirs = getattr(keras.losses, cls)(reduction=reduction, **kwargs, **extra)
        for sample_weight in (None, weights):
            got = ours(y_true, y_pred, sample_weight=sample_weight)
            want = theirs(y_true, y_pred, sample_weight=sample_weight)
            assert got.dtype == want.dtype
            np.testing.assert_allclose(
                got,
                want,
                rtol=1e-6,
                atol=0,
                err_msg=f"{reduction}, weighted={sample_weight is not None}",
            )
    got = getattr(S, fn)(y_true, y_pred, **kwargs, **extra)
    want = getattr(keras.losses, fn)(y_true, y_pred, **kwargs, **extra)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg="function form")


LOSS_NAMES = [
    ("BinaryCrossentropy", "binary_crossentropy"),
    ("BinaryFocalCrossentropy", "binary_focal_crossentropy"),
    ("CategoricalCrossentropy", "categorical_crossentropy"),
    ("CategoricalFocalCrossentropy", "categorical_focal_crossentropy"),
    ("SparseCategoricalCrossentropy", "sparse_categorical_crossentropy"),
    ("KLDivergence", "kl_divergence"),
    ("Poisson", "poisson"),
]
EXTRAS = {"pos_weight", "ignore_class", "label_smoothing"}


def _positional_part(fn):
    """Parameters before the keyword-only extras: (name, kind, default)."""
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.kind != inspect.Parameter.KEYWORD_ONLY
    ]


def test_signatures_match_keras():
    for cls, fn in LOSS_NAMES:
        pairs = (
            (getattr(S, cls).__init__, getattr(keras.losses, cls).__init__),
            (getattr(S, fn), getattr(keras.losses, fn)),
        )
        for ours, theirs in pairs:
            assert _positional_part(ours) == _positional_part(theirs), ours
            extras = [
                p
                for p in inspect.signature(ours).parameters.values()
                if p.kind == inspect.Parameter.KEYWORD_ONLY
            ]
            assert {p.name for p in extras} <= EXTRAS, ours
        assert getattr(S, cls)().name == getattr(keras.losses, cls)().name


# ----------------------------------------------------------------------------
# Where Keras 3.15 fails: binary cross-entropy
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.usefixtures("eager_ops")
def test_bce_half_precision_probabilities_finite_where_keras_is_inf(dtype):
    y_true = tf.constant([[0.0], [1.0]], dtype)
    y_pred = tf.constant([[1.0], [0.0]], dtype)  # confidently wrong, exactly saturated
    keras_value, _ = value_and_grad(keras.losses.binary_crossentropy, y_true, y_pred)
    keras_shows(np.isinf(as_f64(keras_value)).any(), f"inf from {dtype} probabilities")
    value, grad = value_and_grad(S.binary_crossentropy, y_true, y_pred)
    assert value.dtype == np.float32
    # Half precision computes in float32: the same values as float32 inputs,
    # i.e. the probabilities clipped to [tiny, 1 - eps/2] of float32.
    reference = R.reference_array(
        lambda z, p: R.mp_binary_crossentropy_probabilities(z, p, F32_TINY, F32_BELOW_ONE),
        [0.0, 1.0],
        [1.0, 0.0],
    )
    R.assert_ulp_within(value, reference, "float32", ULP)
    grad = as_f64(grad)
    assert np.isfinite(grad).all() and grad[0, 0] > 0 and grad[1, 0] < 0


@pytest.mark.usefixtures("eager_ops")
def test_bce_confidently_wrong_prediction_keeps_its_gradient():
    y_true, y_pred = [[1.0]], [[1e-9]]
    keras_value, keras_grad = value_and_grad(keras.losses.binary_crossentropy, y_true, y_pred)
    keras_shows(
        abs(keras_value[0] - 16.118) < 1e-3 and keras_grad[0, 0] == 0,
        "loss capped at 16.1, gradient 0",
    )
    value, grad = value_and_grad(S.binary_crossentropy, y_true, y_pred)
    p = float(np.float32(1e-9))
    R.assert_ulp_within(value, [-mpmath.log(R.mpf(p))], "float32", ULP)
    np.testing.assert_allclose(grad[0, 0], -1.0 / p, rtol=1e-6)


def _saturated_model(activation, units):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(units, activation=activation)])
    kernel = np.array([[30.0] * units, [-30.0] * units]) * (
        np.arange(units) - (units - 1) / 2 if units > 1 else 1.0
    )
    model.layers[0].set_weights([kernel.astype(np.float32), np.zeros(units, np.float32)])
    return model


def _model_loss_and_grads(model, loss, x, y):
    with tf.GradientTape() as tape:
        value = loss(y, model(x))
    return float(value), [g.numpy() for g in tape.gradient(value, model.trainable_variables)]


@pytest.mark.usefixtures("eager_ops")
def test_bce_sigmoid_output_under_mixed_float16_uses_logits(mixed_precision_policy):
    mixed_precision_policy("mixed_float16")
    model = _saturated_model("sigmoid", 1)
    x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # logits +30 and -30
    y = np.array([[0.0], [1.0]], np.float32)  # both confidently wrong
    keras_value, keras_grads = _model_loss_and_grads(model, keras.losses.BinaryCrossentropy(), x, y)
    keras_shows(
        abs(keras_value - 16.0) < 0.2 and all(np.all(g == 0) for g in keras_grads),
        "clipped loss, zero gradient",
    )
    value, grads = _model_loss_and_grads(model, S.BinaryCrossentropy(), x, y)
    # mean(softplus(30), softplus(30)) from the logits
    np.testing.assert_allclose(value, float(R.mp_softplus(R.mpf(30.0))), rtol=1e-6)
    # d/dkernel = mean((sigmoid(z) - y) x): (1 * [1, 0] + (-1) * [0, 1]) / 2
    np.testing.assert_allclose(grads[0].ravel(), [0.5, -0.5], rtol=1e-3)


def test_bce_sigmoid_output_in_a_graph_uses_the_sigmoid_input():
    # A raw tf.nn.sigmoid (no `_keras_logits`) traced in a graph: the Sigmoid op's input is used.
    y = tf.constant([[1.0]])

    @tf.function
    def loss_and_grad(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = S.BinaryCrossentropy()(y, tf.nn.sigmoid(z))
        return value, tape.gradient(value, z)

    value, grad = loss_and_grad(tf.constant([[-40.0]]))
    np.testing.assert_allclose(value, 40.0, rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1.0]], rtol=1e-6)


@pytest.mark.parametrize(
    "loss, activation, target",
    [
        (S.binary_crossentropy, tf.sigmoid, [[0.0], [1.0]]),
        (S.categorical_crossentropy, tf.nn.softmax, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
        (S.sparse_categorical_crossentropy, tf.nn.softmax, [2, 0]),
    ],
    ids=["binary", "categorical", "sparse"],
)
def test_logits_are_recovered_once(regime, loss, activation, target):
    """``activation(activation(h))`` is scored against the logits ``activation(h)``, as by
    Keras. Under XLA the loss's kernel, inlined, handed the recovered logits to the op, which
    recovered them again and scored the prediction against ``h`` (3.05 for 1.28)."""
    h = np.array([[3.0, 0.5, -2.0], [-1.0, 2.0, 0.25]], np.float32)
    if loss is S.binary_crossentropy:
        h = h[:, :1]
    z = tf.constant(target)
    value = regime.run(lambda hh: loss(z, activation(activation(hh))), tf.constant(h))
    logits = activation(tf.constant(h)).numpy()
    rows = np.eye(3)[target] if loss is S.sparse_categorical_crossentropy else np.array(target)
    if loss is S.binary_crossentropy:
        want = [R.mp_binary_crossentropy_logits(r[0], x[0]) for r, x in zip(rows, logits)]
    else:
        want = [R.mp_categorical_crossentropy_logits(r, x) for r, x in zip(rows, logits)]
    R.assert_ulp_within(np.ravel(value), want, "float32", 4)


# ----------------------------------------------------------------------------
# Where Keras 3.15 fails: categorical cross-entropy
# ----------------------------------------------------------------------------


@pytest.mark.usefixtures("eager_ops")
def test_cce_softmax_output_under_mixed_float16_uses_logits(mixed_precision_policy):
    mixed_precision_policy("mixed_float16")
    model = _saturated_model("softmax", 3)
    x = np.array([[1.0, 0.0]], np.float32)  # logits [-30, 0, 30]
    y = np.array([[1.0, 0.0, 0.0]], np.float32)  # the least likely class
    keras_value, keras_grads = _model_loss_and_grads(
        model, keras.losses.CategoricalCrossentropy(), x, y
    )
    keras_shows(
        abs(keras_value - 16.0) < 0.2 and all(np.all(g == 0) for g in keras_grads),
        "clipped loss, zero gradient",
    )
    value, grads = _model_loss_and_grads(model, S.CategoricalCrossentropy(), x, y)
    expected = R.mp_categorical_crossentropy_logits(
        [1, 0, 0], [R.mpf(-30.0), R.mpf(0.0), R.mpf(30.0)]
    )
    np.testing.assert_allclose(value, float(expected), rtol=1e-6)
    # d/dbias = softmax(z) - y = [-1, 0, 1] (to float16 gradient precision)
    np.testing.assert_allclose(grads[1], [-1.0, 0.0, 1.0], atol=2e-3)


@pytest.mark.usefixtures("eager_ops")
def test_cce_masked_minus_inf_logits_are_finite_where_keras_is_nan():
    y_true = [[1.0, 0.0, 0.0]]
    y_pred = [[0.0, -math.inf, 1.0]]
    fn = lambda t, p: keras.losses.categorical_crossentropy(t, p, from_logits=True)  # noqa: E731
    keras_value, _ = value_and_grad(fn, y_true, y_pred)
    keras_shows(np.isnan(keras_value).all(), "nan")
    value, grad = value_and_grad(
        lambda t, p: S.categorical_crossentropy(t, p, from_logits=True), y_true, y_pred
    )
    R.assert_ulp_within(value, [R.mp_softplus(R.mpf(1.0))], "float32", ULP)  # log(1 + e)
    assert np.isfinite(grad).all() and grad[0, 1] == 0.0


@pytest.mark.usefixtures("eager_ops")
def test_cce_all_zero_probability_row_is_finite_where_keras_is_nan():
    y_true, y_pred = [[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]
    keras_value, keras_grad = value_and_grad(keras.losses.categorical_crossentropy, y_true, y_pred)
    keras_shows(
        np.isnan(keras_value).all() and np.isnan(keras_grad).all(), "nan value and gradient"
    )
    value, grad = value_and_grad(S.categorical_crossentropy, y_true, y_pred)
    # Not divided by its zero sum: every class at the clip floor tiny.
    R.assert_ulp_within(value, [-mpmath.log(R.mpf(F32_TINY))], "float32", ULP)
    assert np.isfinite(grad).all() and grad[0, 1] < 0


@pytest.mark.usefixtures("eager_ops")
def test_cce_logits_beyond_float16_range_computed_in_float32():
    y_true = np.array([[0.0, 1.0, 0.0]], np.float32)
    y_pred = tf.constant([[7e4, 7e4 - 3.0, 0.0]])  # float32 logits, beyond float16's 65504
    keras_value = keras.losses.CategoricalCrossentropy(from_logits=True, dtype="float16")(
        y_true, y_pred
    )
    keras_shows(np.isnan(keras_value.numpy()), "nan (logits cast to float16 overflow)")
    value = S.CategoricalCrossentropy(from_logits=True, dtype="float16")(y_true, y_pred)
    assert value.dtype == tf.float16
    expected = R.mp_categorical_crossentropy_logits(
        [0, 1, 0], [R.mpf(7e4), R.mpf(7e4 - 3.0), R.mpf(0.0)]
    )
    R.assert_ulp_within([value.numpy()], [expected], "float16", 0.5)


# ----------------------------------------------------------------------------
# Where Keras 3.15 fails: sparse categorical cross-entropy
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels,bad", [([1, 5, 0], "5"), ([1.0, 1.5, 0.0], "1.5"), ([1.0, math.nan, 0.0], "nan")]
)
def test_scce_out_of_range_label_errors_or_is_nan(regime, labels, bad):
    """An integer beyond the classes, a float label that is not an integer, a NaN label."""
    labels = tf.constant(labels)
    logits = tf.zeros([3, 3])
    loss = S.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    if regime.name == "xla":
        value = regime.run(loss, labels, logits)
        assert np.isnan(value[1]) and np.isfinite(value[[0, 2]]).all()  # never a finite wrong loss
    else:
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"label.*{bad}.*out of range "
            r"for.*3.*classes",
        ):
            regime.run(loss, labels, logits)


@pytest.mark.usefixtures("eager_ops")
def test_scce_out_of_range_label_error_from_function_form():
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="label -2 is out of range for 4 classes"
    ):
        S.sparse_categorical_crossentropy([0, -2], tf.zeros([2, 4]))
    # ignore_class labels are not out of range
    value = S.sparse_categorical_crossentropy(
        [0, -1], tf.zeros([2, 4]), from_logits=True, ignore_class=-1
    )
    np.testing.assert_allclose(value, [math.log(4.0), 0.0], rtol=1e-6)


@pytest.mark.usefixtures("eager_ops")
def test_scce_integer_labels_never_pass_through_float16():
    num_classes = 3002
    logits = np.zeros((1, num_classes), np.float32)
    logits[0, 3001] = 5.0
    labels = np.array([3001])
    keras_value = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float16")(
        labels, logits
    )
    value = S.SparseCategoricalCrossentropy(from_logits=True, dtype="float16")(labels, logits)
    exact = mpmath.log(3001 + mpmath.exp(5)) - 5  # 3.055
    keras_shows(
        abs(float(keras_value) - float(exact + 5)) < 1e-2, "label 3001 read as 3000 (loss 8.055)"
    )
    assert value.dtype == tf.float16
    R.assert_ulp_within([value.numpy()], [exact], "float16", 0.5)


@pytest.mark.usefixtures("eager_ops")
def _mp_smoothed_binary(y, v, smoothing, from_logits, pos_weight):
    """-(pos_weight t log p + (1 - t) log(1 - p)) at t = y (1 - s) + s / 2, exact."""
    t = mpmath.mpf(y) * (1 - mpmath.mpf(smoothing)) + mpmath.mpf(smoothing) / 2
    v = mpmath.mpf(v)
    log_p, log_q = (
        (-mpmath.log1p(mpmath.exp(-v)), -mpmath.log1p(mpmath.exp(v))) if from_logits
        else (mpmath.log(v), mpmath.log1p(-v))
    )
    return -(mpmath.mpf(pos_weight) * t * log_p + (1 - t) * log_q)


@pytest.mark.parametrize("pos_weight", [1.0, 2.0])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probabilities"])
def test_binary_label_smoothing_keeps_the_4_ulp_budget(from_logits, pos_weight, regime):
    # The smoothed target rounded to float32 first: 1 - t carried its rounding relative to
    # 1 - t, 14.7 ULP at y = 0.9941, logit 9 (12.6 from the probability 0.9994084).
    y = np.float32([[0.9941, 0.944875, 1.0, 0.003, 0.5, 0.37]])
    v = np.float32([[9.0, 9.0, 4.383676, -8.0, 0.3, -2.5]])
    if not from_logits:
        v = np.float32([[0.9994084, 0.9998766, 0.98767, 3.4e-4, 0.57, 0.076]])
    for smoothing in (0.1, 0.125):
        got = regime.run(
            lambda a, b: S.binary_crossentropy(
                a, b, from_logits=from_logits, label_smoothing=smoothing, pos_weight=pos_weight,
                axis=0,
            ),
            y, v,
        )
        want = [_mp_smoothed_binary(a, b, smoothing, from_logits, pos_weight)
                for a, b in zip(y[0].tolist(), v[0].tolist())]
        R.assert_ulp_within(got, np.array(want, dtype=object), "float32", 4,
                            context=f"label_smoothing={smoothing}")


def test_scce_label_smoothing_matches_keras_one_hot():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, size=N)
    logits = rng.uniform(-3, 3, size=(N, C)).astype(np.float32)
    value = S.SparseCategoricalCrossentropy(
        from_logits=True, label_smoothing=0.2, reduction="none"
    )(labels, logits)
    want = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.2, reduction="none"
    )(np.eye(C)[labels], logits)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    reference = [
        R.mp_sparse_smoothed_logits(lab, [R.mpf(v) for v in row], 0.2)
        for lab, row in zip(labels, logits)
    ]
    R.assert_ulp_within(value.numpy(), reference, "float32", ULP)


def test_scce_label_smoothing_builds_no_one_hot():
    graph = tf.function(
        lambda t, p: S.sparse_categorical_crossentropy(t, p, from_logits=True, label_smoothing=0.2)
    )
    concrete = graph.get_concrete_function(
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 1000], tf.float32)
    )
    op_types = {op.type for op in concrete.graph.get_operations()}
    assert "OneHot" not in op_types and "SparseSoftmaxCrossEntropyWithLogits" not in op_types
    assert "GatherV2" in op_types  # the label's log-probability is gathered


# ----------------------------------------------------------------------------
# Where Keras 3.15 fails: focal losses
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.usefixtures("eager_ops")
def test_binary_focal_gradient_finite_at_saturated_logits(gamma):
    y_true = [[1.0], [0.0], [1.0], [0.0]]
    y_pred = [[100.0], [-100.0], [-100.0], [100.0]]  # confidently right, then confidently wrong

    def keras_fn(t, p):
        return keras.losses.binary_focal_crossentropy(t, p, gamma=gamma, from_logits=True)

    _, keras_grad = value_and_grad(keras_fn, y_true, y_pred)
    if gamma < 1:
        keras_shows(np.isnan(keras_grad).any(), f"NaN gradient for gamma={gamma}")
    fn = lambda t, p: S.binary_focal_crossentropy(t, p, gamma=gamma, from_logits=True)  # noqa: E731
    value, grad = value_and_grad(fn, y_true, y_pred)
    reference = R.reference_array(
        lambda z, x: R.mp_binary_focal_logits(z, x, gamma),
        as_f64(y_true)[:, 0],
        as_f64(y_pred)[:, 0],
    )
    R.assert_ulp_within(value, reference, "float32", BINARY_FOCAL_ULP)
    assert np.isfinite(grad).all()
    # confidently wrong: d/dx of ~|x| is -1 (positive target), +1 (negative)
    np.testing.assert_allclose(grad[2:, 0], [-1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_binary_focal_gradient_stays_finite_where_the_loss_overflows(gamma, regime):
    # A positive target at a logit of -2e38 with pos_weight 2: the loss, 4e38, overflows
    # float32 (inf, the correctly rounded value) and the focal factor's slope there is
    # below exp(-2e38) = 0; inf * 0 made the gradient NaN. The exact gradient is the
    # cross-entropy's, -pos_weight (and +1 for a negative target at 2e38).
    fn = lambda t, p: S.binary_focal_crossentropy(  # noqa: E731
        t, p, gamma=gamma, from_logits=True, pos_weight=2.0
    )
    value, (grad,) = regime.value_and_grad(
        fn, np.float32([[1.0], [0.0]]), np.float32([[-2e38], [2e38]]), wrt=(1,)
    )
    assert value[0] == np.inf and value[1] == np.float32(2e38)
    np.testing.assert_array_equal(grad[:, 0], [-2.0, 1.0])


@pytest.mark.parametrize("gamma", [0.0, 0.5])
@pytest.mark.usefixtures("eager_ops")
def test_binary_focal_gradient_finite_at_saturated_probabilities(gamma):
    y_true, y_pred = [[1.0], [0.0]], [[1.0], [0.0]]
    keras_fn = lambda t, p: keras.losses.binary_focal_crossentropy(t, p, gamma=gamma)  # noqa: E731
    _, keras_grad = value_and_grad(keras_fn, y_true, y_pred)
    keras_shows(np.isnan(keras_grad).any(), f"NaN gradient for gamma={gamma}")
    value, grad = value_and_grad(
        lambda t, p: S.binary_focal_crossentropy(t, p, gamma=gamma), y_true, y_pred
    )
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    assert (value < 1e-6).all()


@pytest.mark.usefixtures("eager_ops")
def test_categorical_focal_from_logits_keeps_gradient_of_confident_mistake():
    y_true, y_pred = [[1.0, 0.0, 0.0]], [[0.0, 30.0, 0.0]]
    keras_fn = lambda t, p: keras.losses.categorical_focal_crossentropy(t, p, from_logits=True)  # noqa: E731
    keras_value, keras_grad = value_and_grad(keras_fn, y_true, y_pred)
    keras_shows(np.all(keras_grad == 0), "zero gradient (p clipped at 1e-7)")
    fn = lambda t, p: S.categorical_focal_crossentropy(t, p, from_logits=True)  # noqa: E731
    value, grad = value_and_grad(fn, y_true, y_pred)
    reference = R.reference_cross_entropy_rows(
        R.mp_categorical_focal_logits, y_true, y_pred, 2.0, 0.25
    )
    R.assert_ulp_within(value, reference, "float32", CATEGORICAL_FOCAL_ULP)
    assert abs(value[0] - keras_value[0]) > 3.0  # 7.5, Keras 4.03
    assert np.isfinite(grad).all() and grad[0, 0] < -0.2 and grad[0, 1] > 0.2


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_categorical_focal_from_probabilities_with_a_sliver_outside_the_top_class(gamma, regime):
    # The top class holds all but ~1e-7 of its row: q rounds to 1 in float32, so
    # 1 - q (the focal factor's base) and log q must come from the others' sum.
    y_true = np.float32([[1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0, 1]])
    y_pred = np.float32(
        [[0.9999999, 3e-8, 7e-8], [0.9999999, 3e-8, 7e-8], [2e-8, 5e-8, 0.9999999], [0.2, 0.3, 0.5]]
    )
    value = regime.run(
        lambda t, p: S.categorical_focal_crossentropy(t, p, gamma=gamma), y_true, y_pred
    )
    # The benchmark's reference: Keras's documented formula on the floored, normalized row.
    reference = R.reference_cross_entropy_rows(
        mp_categorical_focal_probabilities, y_true, y_pred, F32_TINY, 0.25, gamma
    )
    R.assert_ulp_within(value, reference, "float32", CATEGORICAL_FOCAL_ULP)


def test_categorical_focal_float64_rows_summing_past_2_to_the_1022(regime):
    # A float64 row summing past 2^1022 (finite) has a subnormal reciprocal, which TF
    # flushes: q = 0, floored, and the loss 177.1 for 0.0433. Such rows are shrunk first.
    y_true = np.float64([[1, 0, 0], [0, 0, 1]])
    y_pred = np.float64([[3e307, 3e307, 0], [1e308, 5e307, 2.5e307]])
    value, (grad,) = regime.value_and_grad(
        S.categorical_focal_crossentropy, y_true, y_pred, wrt=(1,)
    )
    reference = R.reference_cross_entropy_rows(
        mp_categorical_focal_probabilities, y_true, y_pred, np.finfo(np.float64).tiny, 0.25, 2.0
    )
    R.assert_ulp_within(value, reference, "float64", CATEGORICAL_FOCAL_ULP)
    assert np.isfinite(grad).all()


def test_categorical_focal_from_tiny_probabilities_has_the_scaled_rows_gradient(regime):
    # q = p / sum(p) ignores the row's scale: the loss of p * 2^80 is the loss of p, and its
    # gradient the gradient at p over 2^80 (exact powers of two). Rows summing to ~1e-25,
    # where autodiff of p * (1 / S) formed 1 / S^2 = inf (NaN gradients).
    y_true = np.float32([[0, 0, 0, 1], [0.4, 0.05, 0.47, 0.08]])
    tiny_rows = np.float32(
        [[2.8e-27, 3.7e-25, 6.2e-33, 8.5e-30], [2.1e-28, 6.2e-20, 2e-25, 1.8e-28]]
    )
    scale = np.float32(2.0**80)
    value, (grad,) = regime.value_and_grad(
        S.categorical_focal_crossentropy, y_true, tiny_rows, wrt=(1,)
    )
    scaled_value, (scaled_grad,) = regime.value_and_grad(
        S.categorical_focal_crossentropy, y_true, tiny_rows * scale, wrt=(1,)
    )
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(value, scaled_value, rtol=1e-6)
    np.testing.assert_allclose(grad, scaled_grad * scale, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.usefixtures("eager_ops")
def test_categorical_focal_finite_gradient_when_softmax_saturates(gamma):
    # p of the true class rounds to 1 (1 - p to 0): 1 - p is the sum of the other classes.
    y_true, y_pred = (
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        [[200.0, 0.0, -50.0], [0.0, 20.0, -math.inf]],
    )
    fn = lambda t, p: S.categorical_focal_crossentropy(t, p, gamma=gamma, from_logits=True)  # noqa: E731
    value, grad = value_and_grad(fn, y_true, y_pred)
    reference = R.reference_cross_entropy_rows(
        R.mp_categorical_focal_logits, y_true, y_pred, gamma, 0.25
    )
    R.assert_ulp_within(value, reference, "float32", CATEGORICAL_FOCAL_ULP)
    assert np.isfinite(grad).all()


# ----------------------------------------------------------------------------
# Where Keras 3.15 fails or clips: KL divergence and Poisson
# ----------------------------------------------------------------------------


@pytest.mark.usefixtures("eager_ops")
def test_kld_zero_targets_follow_xlogy():
    y_true, y_pred = [[0.0, 1.0], [0.0, 1.0]], [[0.5, 0.5], [0.0, 1.0]]
    keras_value, keras_grad = value_and_grad(keras.losses.kl_divergence, y_true, y_pred)
    keras_shows(
        abs(keras_value[0] - math.log(2.0)) > 1e-6, "a zero target clipped to 1e-7 contributes"
    )
    value, grad = value_and_grad(S.kl_divergence, y_true, y_pred)
    R.assert_ulp_within(value, [mpmath.log(2), 0], "float32", ULP)
    assert (
        grad[0, 0] == 0.0 and grad[1, 0] == 0.0
    )  # zero targets: zero gradient (Keras: -2e-7 and 0)
    np.testing.assert_allclose(grad[:, 1], [-2.0, -1.0], rtol=1e-6)


def test_kld_gradients_for_target_and_prediction(regime):
    """Both slopes against mpmath, with an upstream of other than ones (a distilled target
    is trained too): ``log(t/p) + 1`` for the target (0 where it is 0), ``-t/p`` for the
    prediction, on ratios near 1 (the series' range), far from it, and on a prediction of
    1e-30. Each slope is two or three roundings (the ratio, the log, the + 1; the
    reciprocal, the product, the upstream's product): within the loss's 4 ULP, away from
    ``t/p = 1/e``, where the + 1 cancels (no such ratio here)."""
    t = np.array(
        [[0.2, 0.3, 0.5, 0.0], [1e-6, 0.999999, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], np.float32
    )
    p = np.array(
        [[0.25, 0.25, 0.4999, 1e-4], [0.5, 0.3, 0.1, 0.1], [1e-30, 0.5, 0.25, 0.25]], np.float32
    )
    weights = np.array([1.0, 2.0, 3.0], np.float32)
    value, (grad_t, grad_p) = regime.value_and_grad(
        S.kl_divergence, t, p, wrt=(0, 1), weights=weights
    )
    R.assert_ulp_within(
        value,
        R.reference_cross_entropy_rows(R.mp_kl_divergence_row, t, p, F32_TINY),
        "float32",
        ULP,
    )
    w = weights[:, None]
    want_t = R.reference_array(lambda a, b, c: c * (mpmath.log(a / b) + 1) if a else 0, t, p, w)
    want_p = R.reference_array(lambda a, b, c: -c * a / b, t, p, w)
    R.assert_ulp_within(grad_t, want_t, "float32", ULP, context="d/dt")
    R.assert_ulp_within(grad_p, want_p, "float32", ULP, context="d/dp")


@pytest.mark.usefixtures("eager_ops")
def test_kld_zero_prediction_is_finite():
    value, grad = value_and_grad(S.kl_divergence, [[0.5, 0.5]], [[0.0, 1.0]])
    reference = R.reference_cross_entropy_rows(
        R.mp_kl_divergence_row, [[0.5, 0.5]], [[0.0, 1.0]], F32_TINY
    )
    R.assert_ulp_within(value, reference, "float32", ULP)
    assert np.isfinite(grad).all()


@pytest.mark.usefixtures("eager_ops")
def test_poisson_negative_rate_is_finite_where_keras_is_nan():
    y_true, y_pred = [[1.0]], [[-0.5]]
    keras_value, _ = value_and_grad(keras.losses.poisson, y_true, y_pred)
    keras_shows(np.isnan(keras_value).all(), "nan")
    value, grad = value_and_grad(S.poisson, y_true, y_pred)
    R.assert_ulp_within(
        value, [R.mp_poisson_row([R.mpf(1.0)], [R.mpf(-0.5)], F32_TINY)], "float32", ULP
    )
    np.testing.assert_array_equal(grad, [[1.0]])


@pytest.mark.usefixtures("eager_ops")
def test_poisson_small_rate_is_not_shifted():
    y_true, y_pred = [[1.0, 3.0]], [[1e-7, 1e-30]]
    keras_value, _ = value_and_grad(keras.losses.poisson, y_true, y_pred)
    value, grad = value_and_grad(S.poisson, y_true, y_pred)
    reference = R.reference_cross_entropy_rows(R.mp_poisson_row, y_true, y_pred, F32_TINY)
    keras_shows(
        abs(float(keras_value[0]) - float(reference[0])) > 10, "log(p + 1e-7) shifts small rates"
    )
    R.assert_ulp_within(value, reference, "float32", ULP)
    np.testing.assert_allclose(
        grad, [[0.5 * (1 - 1 / np.float32(1e-7)), 0.5 * (1 - 3 / np.float32(1e-30))]], rtol=1e-6
    )


def test_poisson_gradient_near_the_optimum(regime):
    """``1 - t/v`` cancelled the quotient's rounding where the rate nears the count, where
    training converges: 412 ULP at t = 9, v = 9.0071. Against mpmath's ``1 - t/v`` on the
    float32 inputs, counts and rates on both sides, a negative count too."""
    # (The largest rate: 1 / v is subnormal there, and a product with it was flushed to 0.)
    t = np.array([[9.0], [9.0], [1e6], [3.0], [-2.0], [1.0]], np.float32)
    v = np.array([[9.007089614868164], [8.99], [1000001.0], [30.0], [0.5], [3.4e38]], np.float32)
    _, (grad,) = regime.value_and_grad(lambda a, b: S.poisson(a, b), t, v, wrt=(1,))
    want = [1 - R.mpf(a) / R.mpf(b) for a, b in zip(t[:, 0], v[:, 0])]
    R.assert_ulp_within(grad[:, 0], want, "float32", 2)


# ----------------------------------------------------------------------------
# Extras: pos_weight, ignore_class
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.usefixtures("eager_ops")
def test_pos_weight_weights_the_positive_term(from_logits):
    y_true = np.array([[1.0, 0.0, 0.3]], np.float32)
    y_pred = np.array([[-2.0, 1.5, 0.5]] if from_logits else [[0.2, 0.7, 0.6]], np.float32)
    value = S.binary_crossentropy(y_true, y_pred, from_logits=from_logits, pos_weight=3.0)

    def term(z, x):
        if from_logits:
            return 3 * z * R.mp_softplus(-x) + (1 - z) * R.mp_softplus(x)
        return -(3 * z * mpmath.log(x) + (1 - z) * mpmath.log1p(-x))

    reference = [mpmath.fsum(R.reference_array(term, y_true[0], y_pred[0])) / 3]
    R.assert_ulp_within(value.numpy(), reference, "float32", ULP)
    default = S.binary_crossentropy(y_true, y_pred, from_logits=from_logits, pos_weight=1.0)
    np.testing.assert_allclose(
        default,
        keras.losses.binary_crossentropy(y_true, y_pred, from_logits=from_logits),
        rtol=1e-6,
    )


@pytest.mark.usefixtures("eager_ops")
def test_pos_weight_with_focal_loss():
    y_true, y_pred = np.array([[1.0, 0.0]], np.float32), np.array([[0.5, -0.5]], np.float32)
    weighted = S.binary_focal_crossentropy(y_true, y_pred, from_logits=True, pos_weight=2.0)
    # the positive element's focal term doubles, the negative one stays
    terms = R.reference_array(
        lambda z, x: R.mp_binary_focal_logits(z, x, 2.0), y_true[0], y_pred[0]
    )
    R.assert_ulp_within(
        weighted.numpy(), [(2 * terms[0] + terms[1]) / 2], "float32", BINARY_FOCAL_ULP
    )


@pytest.mark.usefixtures("eager_ops")
def test_ignore_class_binary():
    y_true = np.array([[1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]], np.float32)
    y_pred = np.array([[0.8, np.nan, 0.4], [np.nan, 0.3, 0.3]], np.float32)
    per_sample = S.binary_crossentropy(y_true, y_pred, ignore_class=-1)
    expected = (
        -math.log(np.float32(0.8)) - math.log1p(-np.float32(0.4))
    ) / 2  # mean over the valid entries
    np.testing.assert_allclose(per_sample, [expected, 0.0], rtol=1e-6)
    loss = S.BinaryCrossentropy(ignore_class=-1)
    value, grad = value_and_grad(loss, y_true, y_pred)
    np.testing.assert_allclose(
        value, expected, rtol=1e-6
    )  # the fully ignored sample leaves the mean
    assert np.isfinite(grad).all() and (grad[0, 1] == 0) and (grad[1] == 0).all()


@pytest.mark.usefixtures("eager_ops")
def test_ignore_class_categorical():
    rng = np.random.default_rng(5)
    y_true = np.eye(C, dtype=np.float32)[[0, 3, 3, 1, 2, 4]]
    y_pred = rng.uniform(-2, 2, size=(N, C)).astype(np.float32)
    y_pred[1, 2] = np.nan  # an ignored row: its NaN is ignored too
    keep = [0, 3, 4, 5]
    for cls in ("CategoricalCrossentropy", "CategoricalFocalCrossentropy"):
        value, grad = value_and_grad(
            getattr(S, cls)(from_logits=True, ignore_class=3), y_true, y_pred
        )
        want = getattr(keras.losses, cls)(from_logits=True)(y_true[keep], y_pred[keep])
        np.testing.assert_allclose(value, want, rtol=1e-6)
        assert np.isfinite(grad).all() and (grad[[1, 2]] == 0).all()


@pytest.mark.usefixtures("eager_ops")
def test_ignore_class_sparse_drops_nan_rows():
    labels = np.array([1, 255, 0])
    logits = np.array([[0.5, 1.0], [np.nan, 0.0], [2.0, -1.0]], np.float32)
    value, grad = value_and_grad(
        S.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255, label_smoothing=0.1),
        labels,
        logits,
    )
    assert np.isfinite(value) and np.isfinite(grad).all() and (grad[1] == 0).all()


@pytest.mark.usefixtures("eager_ops")
def test_subclass_call_sees_its_own_inputs():
    class Doubled(S.BinaryCrossentropy):
        def call(self, y_true, y_pred):
            return super().call(y_true, 2.0 * y_pred)

    y_true, logits = np.array([[1.0, 0.0]], np.float32), np.array([[0.5, 1.5]], np.float32)
    value = Doubled(from_logits=True)(y_true, logits)
    np.testing.assert_allclose(
        value, S.BinaryCrossentropy(from_logits=True)(y_true, 2.0 * logits), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.usefixtures("eager_ops")
def test_keras_mask_on_predictions_is_honoured(dtype):
    y_true = np.array([[1.0], [0.0], [1.0]], np.float32)
    y_pred = tf.constant([[0.3], [0.6], [0.9]], dtype)
    y_pred._keras_mask = tf.constant([True, False, True])
    got = S.BinaryCrossentropy()(y_true, y_pred)
    want = keras.losses.BinaryCrossentropy()(y_true, y_pred)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    expected = (
        -(math.log(float(np.asarray(0.3, dtype))) + math.log(float(np.asarray(0.9, dtype)))) / 2
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # the masked sample is left out


# ----------------------------------------------------------------------------
# Properties: finite value and gradient for every finite input
# ----------------------------------------------------------------------------

SHAPE = (4, 3)
# Beyond this the exact loss itself leaves the float32 range (a logit
# difference above 3.4e38 times a target): overflow to inf is then correct.
LOGIT_BOUND = float(np.float32(1e30))


# Each property runs every loss of its family in one XLA-compiled function
# (value and gradient w.r.t. y_pred), compiled once per dtype, as inside
# `model.fit(jit_compile=True)`; eager XLA kernels are checked by the regime tests.
PROPERTY_LOSSES = {
    "binary": lambda from_logits: [
        lambda t, p: S.binary_crossentropy(t, p, from_logits=from_logits, label_smoothing=0.1),
        # gamma < 1: where Keras's pow(0, gamma) has a NaN gradient
        lambda t, p: S.binary_focal_crossentropy(
            t, p, gamma=0.5, from_logits=from_logits, pos_weight=2.0
        ),
    ],
    "categorical": lambda from_logits: [
        lambda t, p: S.categorical_crossentropy(t, p, from_logits=from_logits),
        lambda t, p: S.categorical_focal_crossentropy(
            t, p, gamma=0.5, from_logits=from_logits, label_smoothing=0.1
        ),
        lambda t, p: S.sparse_categorical_crossentropy(
            tf.argmax(t, axis=-1), p, from_logits=from_logits, label_smoothing=0.1
        ),
    ],
    "kl_divergence": lambda _: [S.kl_divergence],
    "poisson": lambda _: [S.poisson],
}


@functools.lru_cache(maxsize=None)
def _compiled_property(kind, from_logits):
    losses = PROPERTY_LOSSES[kind](from_logits)

    @tf.function(jit_compile=True, autograph=False)
    def values_and_grads(y_true, y_pred):
        results = []
        for loss in losses:
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                value = loss(y_true, y_pred)
            results.append((value, tape.gradient(value, y_pred)))
        return results

    return values_and_grads


def _assert_property_finite(kind, from_logits, y_true, y_pred):
    results = _compiled_property(kind, from_logits)(tf.constant(y_true), tf.constant(y_pred))
    for i, (value, grad) in enumerate(results):
        assert np.isfinite(as_f64(value.numpy())).all(), (i, value.numpy())
        assert np.isfinite(as_f64(grad.numpy())).all(), (i, grad.numpy())


hard_targets = st.lists(st.sampled_from([0.0, 1.0]), min_size=12, max_size=12).map(
    lambda v: np.reshape(v, SHAPE)
)
binary_targets = st.one_of(hard_targets, finite_arrays("float32", SHAPE, 0.0, 1.0))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("from_logits", [True, False])
@given(data=st.data())
def test_binary_losses_finite(dtype, from_logits, data):
    y_pred = data.draw(
        finite_arrays(dtype, SHAPE) if from_logits else finite_arrays(dtype, SHAPE, 0.0, 1.0)
    )
    # With pos_weight 2 a logit of -2**127 has the elementwise loss 2**128,
    # beyond float32 (the mean is finite, the loss per element is not).
    y_pred = np.clip(y_pred.astype(np.float32), -LOGIT_BOUND, LOGIT_BOUND).astype(y_pred.dtype)
    y_true = data.draw(binary_targets).astype(np.float32)
    _assert_property_finite("binary", from_logits, y_true, y_pred)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("from_logits", [True, False])
@given(data=st.data())
def test_categorical_losses_finite(dtype, from_logits, data):
    if from_logits:
        y_pred = data.draw(finite_arrays(dtype, SHAPE, -LOGIT_BOUND, LOGIT_BOUND))
    else:  # zero entries, all-zero rows and rows of tiny sum included
        y_pred = data.draw(finite_arrays(dtype, SHAPE, 0.0, 1.0))
    labels = data.draw(st.lists(st.integers(0, SHAPE[1] - 1), min_size=SHAPE[0], max_size=SHAPE[0]))
    _assert_property_finite(
        "categorical", from_logits, np.eye(SHAPE[1], dtype=np.float32)[labels], y_pred
    )


def test_binary_crossentropy_mean_does_not_overflow():
    # 3 elements of loss 2**127: their sum overflows, their mean does not.
    value = S.binary_crossentropy(
        np.zeros((1, 3), np.float32), np.full((1, 3), 2.0**127, np.float32), from_logits=True
    )
    np.testing.assert_allclose(value, [2.0**127], rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_kld_and_poisson_finite(dtype, data):
    _assert_property_finite(
        "kl_divergence",
        None,
        data.draw(finite_arrays(dtype, SHAPE, 0.0, 1.0)),
        data.draw(finite_arrays(dtype, SHAPE)),
    )
    # The gradient 1 - t/p is exact; it leaves the float32 range (as it should)
    # once t/p > 3.4e38, so counts stay below 1e4 and rates are 0 or >= 1e-30 in size.
    counts = data.draw(finite_arrays(dtype, SHAPE, 0.0, 1e4))
    rates = data.draw(finite_arrays(dtype, SHAPE, -LOGIT_BOUND, LOGIT_BOUND))
    rates = np.where(np.abs(rates.astype(np.float32)) < 1e-30, np.zeros_like(rates), rates)
    _assert_property_finite("poisson", None, counts, rates)


# ----------------------------------------------------------------------------
# Accuracy against mpmath on edge grids
# ----------------------------------------------------------------------------

LOGIT_GRID = [
    -1e4,
    -100.0,
    -30.0,
    -17.0,
    -5.0,
    -1.0,
    -1e-3,
    -1e-7,
    0.0,
    1e-7,
    1e-3,
    1.0,
    5.0,
    17.0,
    30.0,
    100.0,
    1e4,
]
PROBABILITY_GRID = [1e-30, 1e-7, 1e-3, 0.1, 0.25, 0.5, 0.75, 0.9, 1 - 1e-3, 1 - 1e-6]
TARGET_GRID = [0.0, 1.0, 0.3]


def _grid(dtype, values):
    """``values`` rounded to ``dtype`` (finite, normal or zero), deduplicated."""
    np_dtype = R.to_numpy_dtype(dtype)
    tiny = float(np.finfo(np.float32).tiny) if dtype != "float16" else 6.103515625e-05
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf, dropped below
        rounded = {float(np.asarray(v, np.float64).astype(np_dtype)) for v in values}
    return sorted(v for v in rounded if math.isfinite(v) and (v == 0 or abs(v) >= tiny))


def _pairs(targets, outputs):
    t, o = np.meshgrid(targets, outputs, indexing="ij")
    return t.reshape(-1, 1), o.reshape(-1, 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_binary_crossentropy_accuracy(dtype):
    t, x = _pairs(TARGET_GRID, _grid(dtype, LOGIT_GRID))
    value = S.binary_crossentropy(
        t.astype(np.float32), x.astype(R.to_numpy_dtype(dtype)), from_logits=True
    )
    R.assert_ulp_within(
        value.numpy(),
        R.reference_array(R.mp_binary_crossentropy_logits, t[:, 0], x[:, 0]),
        "float32",
        ULP,
    )
    t, p = _pairs(TARGET_GRID, [v for v in _grid(dtype, PROBABILITY_GRID) if 0 < v < 1])
    value = S.binary_crossentropy(t.astype(np.float32), p.astype(R.to_numpy_dtype(dtype)))
    reference = R.reference_array(
        lambda z, q: R.mp_binary_crossentropy_probabilities(z, q, F32_TINY, F32_BELOW_ONE),
        t[:, 0],
        p[:, 0],
    )
    R.assert_ulp_within(value.numpy(), reference, "float32", ULP)


# gamma = 0 is plain cross-entropy; gamma < 1 and the default 2 in each dtype
FOCAL_ACCURACY = [("float32", 2.0), ("float16", 0.5), ("bfloat16", 2.0)]


@pytest.mark.parametrize("dtype, gamma", FOCAL_ACCURACY)
def test_binary_focal_accuracy(dtype, gamma):
    t, x = _pairs(TARGET_GRID, _grid(dtype, LOGIT_GRID))
    value = S.binary_focal_crossentropy(
        t.astype(np.float32),
        x.astype(R.to_numpy_dtype(dtype)),
        gamma=gamma,
        from_logits=True,
        apply_class_balancing=True,
    )
    reference = R.reference_array(
        lambda z, v: R.mp_binary_focal_logits(z, v, gamma, 0.25), t[:, 0], x[:, 0]
    )
    R.assert_ulp_within(
        value.numpy(), reference, "float32", BINARY_FOCAL_ULP, context=f"logits gamma={gamma}"
    )
    t, p = _pairs(TARGET_GRID, [v for v in _grid(dtype, PROBABILITY_GRID) if 0 < v < 1])
    value = S.binary_focal_crossentropy(
        t.astype(np.float32), p.astype(R.to_numpy_dtype(dtype)), gamma=gamma
    )
    reference = R.reference_array(
        lambda z, q: R.mp_binary_focal_probabilities(z, q, gamma), t[:, 0], p[:, 0]
    )
    R.assert_ulp_within(
        value.numpy(),
        reference,
        "float32",
        BINARY_FOCAL_ULP,
        context=f"probabilities gamma={gamma}",
    )


CATEGORICAL_ROWS = [
    [0.0, 0.0, 0.0],
    [1e-3, 0.0, -1e-3],
    [30.0, 0.0, -30.0],
    [100.0, 0.0, -100.0],
    [0.0, -17.0, 17.0],
    [1e4, 1e4, -1e4],
    [-5.0, 5.0, 2.0],
]


@pytest.mark.parametrize("dtype, gamma", FOCAL_ACCURACY)
def test_categorical_focal_accuracy(dtype, gamma):
    rows = np.array(CATEGORICAL_ROWS, np.float64).astype(R.to_numpy_dtype(dtype))
    rows = np.repeat(rows, 3, axis=0)
    targets = np.tile(np.eye(3), (len(CATEGORICAL_ROWS), 1)) * 0.9 + 0.1 / 3  # smoothed one-hot
    value = S.categorical_focal_crossentropy(
        targets.astype(np.float32), rows, gamma=gamma, from_logits=True
    )
    reference = R.reference_cross_entropy_rows(
        R.mp_categorical_focal_logits,
        targets.astype(np.float32),
        rows.astype(np.float64),
        gamma,
        0.25,
    )
    R.assert_ulp_within(value.numpy(), reference, "float32", CATEGORICAL_FOCAL_ULP)


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
def test_kl_divergence_terms_near_and_far_from_a_ratio_of_one(np_dtype, regime):
    # One term per row (last axis 1), so the budget is per term: log(t/p) near
    # t = p is where log of a rounded ratio loses the relative accuracy, and
    # 1/2 and 2 are where the near-one form hands over to the plain ratio.
    rng = np.random.default_rng(7)
    t = rng.uniform(0.01, 1.0, 240).astype(np_dtype)
    ratios = np.concatenate(
        [
            np.exp(rng.uniform(-11.0, 11.0, 60)),
            1.0 + rng.uniform(-1e-4, 1e-4, 60),
            1.0 + rng.uniform(-0.5, 1.0, 60),
            np.repeat([0.5, 2.0], 30) * (1.0 + rng.uniform(-1e-3, 1e-3, 60)),
        ]
    )
    p = np.clip(t / ratios, 1e-30, 1.0).astype(np_dtype)
    value = regime.run(S.kl_divergence, t[:, None], p[:, None])
    reference = R.reference_cross_entropy_rows(R.mp_kl_divergence_row, t[:, None], p[:, None], 0)
    R.assert_ulp_within(np.asarray(value), reference, np.dtype(np_dtype).name, ULP)


def _nearly_equal_distribution_rows():
    """Rows where KL's terms cancel: ``p`` a perturbation of ``t`` (relative sizes 1e-1
    to 1e-6, so ratios near 1), and rows with one ratio swept across the series' ends
    (1/2 and 2) while the others take up the difference of the masses."""
    rng = np.random.default_rng(11)
    rows = []
    for scale in (1e-1, 1e-3, 1e-6):
        for classes in (2, 5, 16):
            for _ in range(4):
                t = rng.dirichlet(np.ones(classes)).astype(np.float32)
                p = t * (1.0 + scale * rng.standard_normal(classes))
                rows.append((t, (p / p.sum()).astype(np.float32)))
    ends = [0.5, 2.0, 0.4999, 0.5001, 1.9999, 2.0001]
    for ratio in np.concatenate([np.linspace(0.3, 4.0, 24), ends]):
        t = rng.dirichlet(np.ones(3)).astype(np.float32)
        p = t.copy()
        p[0] = t[0] / ratio
        p[1:] = t[1:] / t[1:].sum() * max(1.0 - p[0], 0.01)
        rows.append((t, p.astype(np.float32)))
    # The benchmark's worst row before the split: 6.7e2 ULP of a 4.8e-7 result (Keras: 2.5e7).
    rows.append(([0.25] * 4, [0.25034525990486145, 0.24965474009513855, 0.25, 0.25]))
    return zip(*rows)


def _pad_rows(rows):
    width = max(len(row) for row in rows)
    return np.array([np.pad(np.float32(row), (0, width - len(row))) for row in rows])


def _mp_kl_budget_scale(t_row, p_row):
    """The documented budget's unit: ``sum p phi(t/p) + |sum (t - p)|`` over the nonzero
    targets, ``p phi(t/p) = t log(t/p) - (t - p) >= 0``. It is the divergence itself where
    the masses of the two rows agree or the target's is larger; where the prediction's
    mass is larger, the exact ``sum(t - p)`` cancels part of the non-negative sum."""
    pairs = [(t, p) for t, p in zip(t_row, p_row) if t != 0]
    excess = mpmath.fsum(t * mpmath.log(t / p) - (t - p) for t, p in pairs)
    return excess + abs(mpmath.fsum(t - p for t, p in pairs))


def _assert_kl_within_budget(value, targets, predictions):
    reference = R.reference_cross_entropy_rows(R.mp_kl_divergence_row, targets, predictions, 0)
    scales = R.reference_cross_entropy_rows(_mp_kl_budget_scale, targets, predictions)
    for got, want, scale in zip(np.asarray(value, np.float64), reference, scales):
        error = abs(mpmath.mpf(float(got)) - want) / R.ulp_of(scale, "float32")
        assert error <= ULP, f"{float(error):.3g} ULP: got {got!r}, want {want}, unit {scale}"


def test_kl_divergence_row_sums_of_nearly_equal_distributions(regime):
    # The divergence is second order in t - p, each term first order: a plain row sum
    # cancels (the run before this test: 6.7e2 ULP). The budget is for the row's result.
    targets, predictions = map(_pad_rows, _nearly_equal_distribution_rows())
    value = regime.run(S.kl_divergence, targets, predictions, unknown_batch=True)
    _assert_kl_within_budget(value, targets, predictions)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(
    t=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=12),
    noise=st.lists(st.floats(-1.0, 1.0), min_size=12, max_size=12),
    scale=st.sampled_from([1e-1, 1e-2, 1e-4, 1e-6]),
)
def test_kl_divergence_row_sums_property(dtype, t, noise, scale):
    # Drawn in float32, cast to the dtype (half precision computes in float32 and
    # returns float32): the reference takes the cast values, so the budget is in
    # float32 ULPs whatever the input precision rounded away. The casts leave the two
    # rows' masses apart by up to an ULP of the dtype, which the budget's unit counts.
    np_dtype = R.to_numpy_dtype(dtype)
    target = np.array(t, np.float64) / np.sum(t)
    prediction = target * (1.0 + scale * np.array(noise[: len(t)]))
    target = target.astype(np.float32).astype(np_dtype)[None]
    prediction = (prediction / prediction.sum()).astype(np.float32).astype(np_dtype)[None]
    value = S.kl_divergence(target, prediction).numpy()
    _assert_kl_within_budget(value, target.astype(np.float64), prediction.astype(np.float64))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kld_and_poisson_accuracy(dtype):
    np_dtype = R.to_numpy_dtype(dtype)
    t, p = _pairs(
        _grid(dtype, [0.0, 1e-30, 1e-5, 0.3, 0.5, 1.0]),
        _grid(dtype, [0.0, 1e-30, 1e-5, 0.3, 0.5000001, 0.7, 1.0]),
    )
    value = S.kl_divergence(t.astype(np_dtype), p.astype(np_dtype))
    reference = R.reference_cross_entropy_rows(R.mp_kl_divergence_row, t, p, F32_TINY)
    R.assert_ulp_within(value.numpy(), reference, "float32", ULP)
    t, p = _pairs(
        _grid(dtype, [0.0, 1.0, 3.0, 1e4]),
        _grid(dtype, [0.0, 1e-30, 1e-3, 0.5, 1.0, 2.5, 1e4, 1e30]),
    )
    value = S.poisson(t.astype(np_dtype), p.astype(np_dtype))
    reference = R.reference_cross_entropy_rows(R.mp_poisson_row, t, p, F32_TINY)
    # Budget in ULPs of max(|p|, |t log p|): the difference cancels near p = t log p.
    scale = np.maximum(np.abs(p[:, 0]), np.abs(t[:, 0] * np.log(np.maximum(p[:, 0], F32_TINY))))
    scale = np.maximum(scale, F32_TINY)
    errors = np.abs(as_f64(value.numpy()) - np.array([float(r) for r in reference])) / (
        scale * np.finfo(np.float32).eps
    )
    assert errors.max() <= ULP, errors.max()


# ----------------------------------------------------------------------------
# The three regimes (eager, tf.function, XLA) with an unknown batch dimension
# ----------------------------------------------------------------------------


# The edge cases of the named tests, checked under XLA too (NaN last).
REGIME_INPUTS = {
    # probabilities at 0 and 1 (clipped), a confidently wrong one
    "binary_probabilities": (
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
        [[0.0, 1.0], [1e-9, 0.5], [np.nan, 0.3]],
    ),
    # saturated logits, both right and wrong
    "binary_logits": (
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
        [[100.0, -100.0], [100.0, -100.0], [np.nan, 3.0]],
    ),
    # an all-zero probability row
    "categorical_probabilities": (
        np.eye(3)[[0, 2, 1]],
        [[0.2, 0.3, 0.5], [0.0, 0.0, 0.0], [np.nan, 0.5, 0.5]],
    ),
    # a saturated softmax, a masked -inf logit, a confident mistake
    "categorical_logits": (
        np.eye(3)[[0, 2, 1]],
        [[200.0, 0.0, -50.0], [30.0, -np.inf, 0.0], [np.nan, 0.0, 1.0]],
    ),
    "sparse_logits": ([0, 2, 1], [[100.0, 0.0, -100.0], [0.0, -1e30, 3.0], [np.nan, 0.0, 1.0]]),
    # zero targets, a zero prediction, a negative rate
    "distributions": (
        [[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]],
        [[0.5, 0.5], [0.0, 1.0], [np.nan, 0.5]],
    ),
    "counts": ([[0.0, 1.0], [3.0, 1.0], [1.0, 1.0]], [[0.5, -0.5], [1e-30, 1e-7], [np.nan, 2.0]]),
}

REGIME_CASES = [
    ("binary_probabilities", lambda: S.BinaryCrossentropy(reduction="none", pos_weight=2.0)),
    (
        "binary_logits",
        lambda: S.BinaryFocalCrossentropy(
            from_logits=True, gamma=0.5, reduction="none", apply_class_balancing=True
        ),
    ),
    ("categorical_probabilities", lambda: S.CategoricalCrossentropy(reduction="none")),
    (
        "categorical_logits",
        lambda: S.CategoricalFocalCrossentropy(from_logits=True, reduction="none", gamma=0.5),
    ),
    (
        "sparse_logits",
        lambda: S.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none", label_smoothing=0.1
        ),
    ),
    ("distributions", lambda: S.KLDivergence(reduction="none")),
    ("counts", lambda: S.Poisson(reduction="none")),
]


@pytest.mark.parametrize("kind, make", REGIME_CASES, ids=[kind for kind, _ in REGIME_CASES])
def test_regimes_agree(regime, kind, make):
    loss = make()
    y_true, y_pred = (np.asarray(a, np.float32) for a in REGIME_INPUTS[kind])
    if kind.startswith("sparse"):
        y_true = y_true.astype(np.int32)
    value, (grad,) = regime.value_and_grad(loss, y_true, y_pred, wrt=(1,), unknown_batch=True)
    want_value, (want_grad,) = Regime("eager").value_and_grad(loss, y_true, y_pred, wrt=(1,))
    np.testing.assert_array_equal(np.isnan(value), np.isnan(want_value))
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-30)
    assert np.isnan(value[2]) and np.isfinite(value[:2]).all()  # NaN in, NaN out, per sample
    assert np.isfinite(grad[:2]).all()


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

BAD_HYPERPARAMETERS = [
    (lambda: S.BinaryFocalCrossentropy(gamma=-1.0), "gamma", "-1.0"),
    (lambda: S.CategoricalFocalCrossentropy(gamma=-0.5), "gamma", "-0.5"),
    (lambda: S.BinaryCrossentropy(label_smoothing=1.5), "label_smoothing", "1.5"),
    (lambda: S.CategoricalCrossentropy(label_smoothing=-0.1), "label_smoothing", "-0.1"),
    (lambda: S.SparseCategoricalCrossentropy(label_smoothing=2.0), "label_smoothing", "2.0"),
    (lambda: S.BinaryFocalCrossentropy(alpha=1.5), "alpha", "1.5"),
    (lambda: S.CategoricalFocalCrossentropy(alpha=[0.5, -1.0]), "alpha", "-1.0"),
    (lambda: S.BinaryCrossentropy(pos_weight=0.0), "pos_weight", "0.0"),
    (lambda: S.BinaryFocalCrossentropy(pos_weight=-2.0), "pos_weight", "-2.0"),
    (lambda: S.BinaryCrossentropy(pos_weight=math.nan), "pos_weight", "nan"),
    (lambda: S.SparseCategoricalCrossentropy(ignore_class=1.5), "ignore_class", "1.5"),
    (
        lambda: S.binary_crossentropy([[1.0]], [[0.5]], label_smoothing=-1.0),
        "label_smoothing",
        "-1.0",
    ),
    (lambda: S.binary_focal_crossentropy([[1.0]], [[0.5]], gamma=-3.0), "gamma", "-3.0"),
    (
        lambda: S.categorical_focal_crossentropy([[1.0, 0.0]], [[0.5, 0.5]], alpha=[1.0, 1.0, 1.0]),
        "alpha",
        "1.0",
    ),
]


# An axis of the wrong type is a TypeError, as in the ops (one axis validator).
BAD_AXIS_TYPES = [
    (lambda: S.CategoricalCrossentropy(axis=True), "axis", "True"),
]


def test_invalid_hyperparameters_name_the_argument():
    for cases, error in ((BAD_HYPERPARAMETERS, ValueError), (BAD_AXIS_TYPES, TypeError)):
        for make, name, value in cases:
            with pytest.raises(error) as info:
                make()
            assert name in str(info.value) and value in str(info.value), str(info.value)


def test_shape_mismatch_names_both_shapes():
    y_true, y_pred = np.zeros((4, 3), np.float32), np.full((4, 2), 0.5, np.float32)
    for cls, fn in LOSS_NAMES:
        if cls.startswith("Sparse"):
            continue
        for call in (getattr(S, fn), getattr(S, cls)()):
            with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
                call(y_true, y_pred)
    for call in (S.sparse_categorical_crossentropy, S.SparseCategoricalCrossentropy()):
        with pytest.raises(ValueError, match=r"\(3,\).*\(4, 5\)"):
            call(np.zeros(3, np.int32), np.zeros((4, 5), np.float32))


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------

CONFIG_CASES = [
    S.BinaryCrossentropy(
        from_logits=True,
        label_smoothing=0.1,
        axis=-1,
        reduction="sum",
        name="b",
        dtype="float16",
        pos_weight=2.0,
        ignore_class=-1,
    ),
    S.BinaryFocalCrossentropy(
        True, 0.4, 1.5, True, 0.2, -1, "none", "bf", "float64", pos_weight=0.5, ignore_class=-1
    ),
    S.CategoricalCrossentropy(True, 0.1, 1, "mean", "c", "float32", ignore_class=0),
    S.CategoricalFocalCrossentropy(
        [0.1, 0.9], 0.0, True, 0.3, -1, "sum", "cf", None, ignore_class=1
    ),
    S.SparseCategoricalCrossentropy(True, 255, "sum", -1, "s", "bfloat16", label_smoothing=0.25),
    S.KLDivergence("sum", "k", "float64"),
    S.Poisson(None, "p", "float32"),
]


def test_get_config_round_trip():
    for loss in CONFIG_CASES:
        config = loss.get_config()
        parameters = set(inspect.signature(type(loss).__init__).parameters) - {"self"}
        assert set(config) == parameters
        clone = type(loss).from_config(config)
        assert clone.get_config() == config
        assert clone.dtype == loss.dtype and clone.reduction == loss.reduction
        registered = keras.saving.get_registered_object(f"stableops>{type(loss).__name__}")
        assert registered is type(loss)


@pytest.mark.parametrize(
    "focal, activation",
    [(S.BinaryFocalCrossentropy, keras.activations.sigmoid),
     (S.CategoricalFocalCrossentropy, keras.activations.softmax)],
    ids=["binary", "categorical"],
)
def test_focal_from_logits_on_a_keras_activation_output_takes_its_logits(focal, activation):
    # As the cross-entropies (and Keras's): the output carries its logits, which are used, with
    # a warning. Keras's focal losses apply the sigmoid/softmax a second time (README table).
    z = tf.constant([[1.0, 2.0, 0.5]])
    y = np.float32([[0.0, 1.0, 0.0]])
    with pytest.warns(UserWarning, match="received `from_logits=True`"):
        value = focal(from_logits=True)(y, activation(z))
    np.testing.assert_array_equal(value, focal(from_logits=True)(y, z))


@pytest.mark.parametrize(
    "loss, alpha_times_focal_weight",
    [(S.CategoricalCrossentropy, 1.0), (S.CategoricalFocalCrossentropy, 0.25 * (2 / 3) ** 2)],
    ids=["categorical", "categorical_focal"],
)
def test_label_smoothing_spreads_over_the_class_axis(loss, alpha_times_focal_weight):
    # Classes on axis 0 (3 of them, 5 samples): the smoothed targets sum to 1 only when the
    # smoothing divides by the class axis's size. With uniform predictions the loss is then
    # log 3 times the focal weight, whatever the smoothing. Keras divides by the last axis's
    # size (5): 0.88 log 3 (README table).
    y_true = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]].T
    y_pred = np.full((3, 5), 1 / 3, np.float32)
    value = loss(axis=0, label_smoothing=0.3)(y_true, y_pred)
    np.testing.assert_allclose(value, alpha_times_focal_weight * np.log(3.0), rtol=1e-6)


# ----------------------------------------------------------------------------
# The logits behind an activation: the matching activation's only
# ----------------------------------------------------------------------------

_LOGITS = np.float32([[2.0, -1.0, 0.5], [0.25, 3.0, -2.0]])
_TARGETS = np.float32([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _mp_binary_mean(gamma):
    """Row mean of the binary (focal) cross-entropy of probabilities (gamma 0: plain)."""
    def row(t_row, p_row):
        return mpmath.fsum(
            R.mp_binary_focal_probabilities(t, p, gamma) for t, p in zip(t_row, p_row)
        ) / len(p_row)

    return row


def _mp_categorical(t_row, p_row):
    return R.mp_categorical_crossentropy_probabilities(t_row, p_row, F32_TINY)


def _mp_categorical_focal(t_row, p_row):
    return mp_categorical_focal_probabilities(t_row, p_row, F32_TINY)


def _mp_activation(name, row):
    """The exact sigmoid or softmax (over the row) of a row of logits."""
    return R.mp_softmax(row) if name == "softmax" else [R.mp_sigmoid(x) for x in row]


# (loss, activation, its module, the exact loss of the activation's probabilities, the ULP
# budget: the probabilities are rounded to float32 before the loss, an ULP of each moves
# the loss by ~2 ULP, and the focal factors amplify that gamma-fold; the losses' own
# budgets are in the module's header).
# Keras's sigmoid and softmax both attach `_keras_logits`; a binary loss on a softmax
# output took the softmax's logits as sigmoid logits (and a categorical one a sigmoid's as
# softmax logits): 0.305 for 0.674 in the first row, as Keras's own losses still do.
MISMATCHED_ACTIVATIONS = [
    ("binary_crossentropy", "softmax", keras.activations, _mp_binary_mean(0), ULP + 2),
    ("binary_crossentropy", "softmax", "stableops", _mp_binary_mean(0), ULP + 2),
    ("binary_focal_crossentropy", "softmax", keras.activations, _mp_binary_mean(2),
     BINARY_FOCAL_ULP),
    ("categorical_crossentropy", "sigmoid", keras.activations, _mp_categorical, ULP + 2),
    ("categorical_focal_crossentropy", "sigmoid", keras.activations, _mp_categorical_focal,
     CATEGORICAL_FOCAL_ULP),
]


@pytest.mark.parametrize(
    "loss_name, activation, module, reference, budget", MISMATCHED_ACTIVATIONS,
    ids=[f"{c[0]}-{c[1]}-{'stableops' if c[2] == 'stableops' else 'keras'}"
         for c in MISMATCHED_ACTIVATIONS],
)
def test_another_activations_logits_are_not_used(loss_name, activation, module, reference,
                                                   budget, regime):
    import stableops.activations

    activate = getattr(stableops.activations if module == "stableops" else module, activation)
    loss = getattr(S, loss_name)
    value = regime.run(lambda t, x: loss(t, activate(x)), _TARGETS, _LOGITS)
    probabilities = [_mp_activation(activation, [R.mpf(v) for v in row]) for row in _LOGITS]
    expected = np.array(
        [reference([R.mpf(v) for v in t], p) for t, p in zip(_TARGETS, probabilities)],
        dtype=object,
    )
    R.assert_ulp_within(value, expected, tf.float32, budget, context=loss_name)


@pytest.mark.parametrize("softmax_axis, loss_axis", [(0, -1), (-1, 0)])
@pytest.mark.parametrize("module", ["keras", "stableops"])
def test_a_softmax_over_another_axis_is_not_taken_for_the_loss_axis(softmax_axis, loss_axis,
                                                                     module, regime):
    import stableops.activations

    activations = stableops.activations if module == "stableops" else keras.activations
    value = regime.run(
        lambda t, x: S.categorical_crossentropy(
            t, activations.softmax(x, axis=softmax_axis), axis=loss_axis
        ),
        _TARGETS, _LOGITS,
    )
    # The exact softmax over `softmax_axis`, then the loss's normalization over `loss_axis`.
    columns = softmax_axis == 0
    logits = _LOGITS.T if columns else _LOGITS
    probabilities = np.array(
        [_mp_activation("softmax", [R.mpf(v) for v in row]) for row in logits], dtype=object
    )
    if columns:
        probabilities = probabilities.T
    targets = _TARGETS.T if loss_axis == 0 else _TARGETS
    probabilities = probabilities.T if loss_axis == 0 else probabilities
    expected = np.array(
        [_mp_categorical([R.mpf(v) for v in t], list(p)) for t, p in zip(targets, probabilities)],
        dtype=object,
    )
    R.assert_ulp_within(value, expected, tf.float32, ULP + 2)


def test_a_stableops_softmax_over_the_loss_axis_gives_its_logits(regime):
    import stableops.activations

    # Saturated: the probabilities round to [0, 1, 0], the logits give the exact 250.
    logits = np.float32([[-200.0], [50.0], [0.0]])
    target = np.float32([[1.0], [0.0], [0.0]])
    value = regime.run(
        lambda t, x: S.categorical_crossentropy(
            t, stableops.activations.softmax(x, axis=0), axis=0
        ),
        target, logits,
    )
    np.testing.assert_allclose(value, [250.0], rtol=1e-6)


# (target, probability above 1 or below 0): the loss is that of the nearest of 1 and 0.
OUT_OF_RANGE = [(1.0, 1.0000001), (1.0, 1.5), (1.0, 1e30), (0.0, 2.0), (0.3, 1.5),
                (0.0, -0.5), (1.0, -0.5), (0.7, -1e30)]


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_a_probability_outside_0_1_costs_the_nearest_ends_loss(gamma, regime):
    targets = np.float32([[t] for t, _ in OUT_OF_RANGE])
    probabilities = np.float32([[p] for _, p in OUT_OF_RANGE])
    value, (grad,) = regime.value_and_grad(
        lambda t, p: S.binary_focal_crossentropy(t, p, gamma=gamma),
        targets, probabilities, wrt=(1,),
    )
    # The exact loss at p clipped to [0, 1], with the logs clipped at infinity as documented
    # (log 0 at tiny, log(1 - 1) at 1 - eps/2).
    nearest_ends = [(R.mpf(t), R.mpf(min(max(p, 0.0), 1.0))) for t, p in OUT_OF_RANGE]
    expected = np.array([
        R.mp_binary_crossentropy_probabilities(t, p, F32_TINY, F32_BELOW_ONE)
        * (t * (1 - p) + (1 - t) * p) ** int(gamma)
        for t, p in nearest_ends
    ], dtype=object)
    assert (value >= 0).all(), value  # was log(p) > 0: -0.41 at p = 1.5, -69 at 1e30
    R.assert_ulp_within(value, expected, tf.float32, BINARY_FOCAL_ULP)
    # The gradient never pushes a probability further out of [0, 1]: 0 where the term
    # beyond the end is at its optimum (a positive target above 1, a negative one below 0).
    direction = np.sign(grad[:, 0])
    for (t, p), d in zip(OUT_OF_RANGE, direction):
        assert d == (0 if (p > 1 and t == 1) or (p < 0 and t == 0) else (1 if p > 1 else -1)), (
            t, p, d)


@pytest.mark.parametrize("loss_name", ["categorical_crossentropy",
                                       "categorical_focal_crossentropy"])
@pytest.mark.parametrize("bad", [-np.inf, np.inf])
def test_an_infinite_probability_gives_a_nan_row(loss_name, bad, regime):
    # Invalid input, as in binary cross-entropy: NaN for that row, never a finite loss
    # (the focal loss floored -inf at the smallest normal: 21.8).
    targets = np.float32([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    probabilities = np.float32([[0.3, bad, 0.3, 0.4], [0.3, 0.2, 0.1, 0.4]])
    value = regime.run(getattr(S, loss_name), targets, probabilities)
    assert np.isnan(value[0]) and np.isfinite(value[1]), value


@pytest.mark.parametrize(
    "loss, target, prediction",
    [
        (functools.partial(S.binary_crossentropy, pos_weight=5.0), [[1.0]], [[0.0]]),
        (functools.partial(S.binary_focal_crossentropy, pos_weight=5.0), [[1.0]], [[0.0]]),
        (
            functools.partial(S.categorical_focal_crossentropy, alpha=100.0),
            [[1.0, 0.0]],
            [[0.0, 1.0]],
        ),
    ],
    ids=["binary", "binary_focal", "categorical_focal"],
)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_a_class_weight_times_the_largest_slope_saturates(regime, loss, target, prediction, dtype):
    """A confidently wrong prediction's slope is the largest the dtype holds (1/tiny at
    p = 0); a class weight from 4 up (pos_weight, alpha: ordinary for imbalanced data)
    multiplied it past float32's range, to -inf. The exact gradient, -w/p, is beyond the
    range: it saturates at the dtype's largest number."""
    _, (grad,) = regime.value_and_grad(
        lambda t, p: loss(t, p), np.array(target, dtype), np.array(prediction, dtype), wrt=(1,)
    )
    assert np.all(np.isfinite(grad)), grad
    assert grad[0, 0] == -np.finfo(dtype).max


def _one_wrong_row(dtype, classes):
    """A row whose target (class 0) has probability exactly 0: its slope is -1/tiny."""
    prediction = np.array([[0.0, 1.0]], dtype)
    if classes == "sparse":
        return np.array([0], np.int32), prediction
    if classes == "binary":
        return np.array([[1.0]], dtype), np.array([[0.0]], dtype)
    return np.array([[1.0, 0.0]], dtype), prediction


_FROM_PROBABILITIES = [
    (S.binary_crossentropy, "binary"),
    (S.binary_focal_crossentropy, "binary"),
    (S.categorical_crossentropy, "categorical"),
    (S.categorical_focal_crossentropy, "categorical"),
    (S.sparse_categorical_crossentropy, "sparse"),
    (stableops.ops.binary_crossentropy, "binary"),
    (stableops.ops.categorical_crossentropy, "categorical"),
    (stableops.ops.sparse_categorical_crossentropy, "sparse"),
]


@pytest.mark.parametrize(
    "loss, classes", _FROM_PROBABILITIES,
    ids=[f"{f.__module__.split('.')[1]}.{f.__name__}" for f, _ in _FROM_PROBABILITIES],
)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_a_sample_weight_times_the_largest_slope_saturates(regime, loss, classes, dtype):
    """A sample weight (an upstream gradient) of 1000 times the slope -1/tiny at a target
    probability of 0 is beyond the range: it saturates at the dtype's largest number in
    every regime, and at its negative for a weight of -1000 (both ends of the clip).
    Outside XLA the weight multiplies the kernel's local gradient outside the kernel, and
    that product overflowed to -inf (categorical and sparse under XLA too). (The focal
    slope is -alpha/tiny, alpha = 0.25: 1000 passes the range as well.)"""
    target, prediction = (np.concatenate([a, a]) for a in _one_wrong_row(dtype, classes))
    weights = np.array([1000.0, -1000.0])
    if loss is stableops.ops.binary_crossentropy:  # elementwise: a value per entry
        weights = weights[:, None]
    _, (grad,) = regime.value_and_grad(loss, target, prediction, wrt=(1,), weights=weights)
    assert np.all(np.isfinite(grad)), grad
    largest = np.finfo(dtype).max
    assert grad[0, 0] == -largest and grad[1, 0] == largest, grad


def test_an_overflowing_product_from_logits_is_inf_in_every_regime(regime):
    """From logits the slope is exact (-4 (1 - sigmoid(-100)) = -4 with pos_weight 4), and
    so is its product with the upstream gradient: 3e38 times it is beyond the range, IEEE
    overflow, -inf, in every regime (docs/design.md: only the straight-through slope from a
    probability of 0, a convention, saturates)."""
    _, (grad,) = regime.value_and_grad(
        lambda t, x: S.binary_crossentropy(t, x, from_logits=True, pos_weight=4.0),
        np.float32([[1.0]]), np.float32([[-100.0]]), wrt=(1,), weights=[3e38],
    )
    assert grad[0, 0] == -np.inf, grad


@pytest.mark.parametrize(
    "loss, classes", _FROM_PROBABILITIES,
    ids=[f"{f.__module__.split('.')[1]}.{f.__name__}" for f, _ in _FROM_PROBABILITIES],
)
def test_a_nan_sample_weight_at_the_largest_slope_gives_nan(regime, loss, classes):
    """The saturating product keeps NaN: a NaN upstream is never clipped to a bound."""
    target, prediction = _one_wrong_row("float32", classes)
    _, (grad,) = regime.value_and_grad(loss, target, prediction, wrt=(1,), weights=[np.nan])
    assert np.all(np.isnan(grad)), grad


@pytest.mark.parametrize(
    "make_loss, squash",
    [
        (S.BinaryCrossentropy, tf.math.sigmoid),
        (S.BinaryFocalCrossentropy, tf.math.sigmoid),
        (S.CategoricalCrossentropy, tf.nn.softmax),
        (S.CategoricalFocalCrossentropy, tf.nn.softmax),
    ],
    ids=["binary", "binary_focal", "categorical", "categorical_focal"],
)
def test_a_class_weight_on_a_saturated_raw_output_keeps_the_logits_gradient_finite(
    regime, make_loss, squash
):
    """A model whose output is a raw TF sigmoid/softmax (not a Keras activation, so no
    logits to recover: a scale follows it) saturated to exactly 0 for the target, with a
    class weight of 8 (ordinary for imbalanced data): the probability's gradient
    overflowed to -inf, and the squashing function's slope 0 times -inf made the logits'
    gradient NaN (eagerly and in a plain tf.function). Saturated, it is 0 there (nothing
    learns through a slope of exactly 0), as Keras's is."""
    logits = np.float32([[-200.0, 0.3]])  # sigmoid(-200) and softmax's first entry: 0
    target = np.float32([[1.0, 0.0]])
    loss = make_loss()

    def weighted_loss(x):
        return loss(target, squash(x) * 1.0, sample_weight=tf.constant([8.0]))

    _, (grad,) = regime.value_and_grad(weighted_loss, logits)
    assert np.all(np.isfinite(grad)), grad
    assert grad[0, 0] == 0.0, grad


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_categorical_focal_from_a_zero_probability_of_the_target_learns(regime, dtype):
    """The target class at probability 0, the most wrong prediction, had no gradient: the
    floor at tiny had slope 0. Straight through, as in ``categorical_crossentropy``: the
    slope -alpha / tiny (alpha = 0.25), saturated at float16's largest number (its loss is
    computed in float32)."""
    _, (grad,) = regime.value_and_grad(
        S.categorical_focal_crossentropy,
        np.array([[1.0, 0.0]], dtype),
        np.array([[0.0, 1.0]], dtype),
        wrt=(1,),
    )
    limits = np.finfo(dtype)
    want = -limits.max if dtype == "float16" else -0.25 / limits.smallest_normal
    assert grad[0, 0] == want, grad


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_a_zero_probability_of_another_class_has_its_focal_derivative(regime, gamma):
    """A class at probability 0 that is not the target still moves ``q = p_t / S``: its
    derivative is ``alpha ((1 - q)^gamma - gamma q (1 - q)^(gamma - 1) log q) / S``, against
    mpmath's derivative of the formula (the floor at ``tiny`` straight through). It was 0:
    the row sum's part of a floored entry was dropped, where ``categorical_crossentropy``
    keeps its ``1 / S``."""
    y_true = np.float32([[0, 1, 0], [0, 1, 0]])
    y_pred = np.float32([[0, 0.5, 0.5], [0, 0.875, 0.125]])
    _, (grad,) = regime.value_and_grad(
        lambda t, p: S.categorical_focal_crossentropy(t, p, alpha=0.25, gamma=gamma),
        y_true, y_pred, wrt=(1,),
    )
    with mpmath.workdps(40):
        for row in range(len(y_pred)):
            def loss(p0, row=row):
                others = [mpmath.mpf(float(p)) for p in y_pred[row]]
                q = others[1] / (p0 + mpmath.fsum(others))
                return -0.25 * (1 - q) ** gamma * mpmath.log(q)

            want = float(mpmath.diff(loss, mpmath.mpf(float(np.finfo(np.float32).tiny))))
            # The written-out gradient rounds q, the row sum and two products in float32.
            assert grad[row, 0] == pytest.approx(want, rel=8 * float(np.finfo(np.float32).eps))


@pytest.mark.parametrize("axis", [-1, 0])
def test_focal_with_gamma_0_and_alpha_1_has_the_gradient_of_categorical_crossentropy(
    regime, axis
):
    """``gamma = 0``, ``alpha = 1`` make the focal loss ``categorical_crossentropy``: the same
    value and gradient, also where a class outside the target (one-hot or soft) is at
    probability 0; for an all-zero row the same gradient (``-z / tiny``, no row sum's part),
    where the values differ as documented (the focal loss reads the row as uniform: log 3).
    A target class at probability 0 differs by definition: ``categorical_crossentropy`` clips
    ``q`` after normalizing (a constant ``-log(tiny)`` that the row sum does not move), the
    focal loss floors ``p`` before. Along axis 0 too (the rows transposed): the test for a
    row floored whole must reduce along the class axis."""
    y_true = np.float32([[0, 1, 0], [0.25, 0.75, 0], [1, 0, 0]])
    y_pred = np.float32([[0, 0.25, 0.75], [0.5, 0.5, 0], [0, 0, 0]])
    if axis == 0:
        y_true, y_pred = y_true.T.copy(), y_pred.T.copy()
    focal, (focal_grad,) = regime.value_and_grad(
        lambda t, p: S.categorical_focal_crossentropy(t, p, alpha=1.0, gamma=0.0, axis=axis),
        y_true, y_pred, wrt=(1,),
    )
    plain, (plain_grad,) = regime.value_and_grad(
        lambda t, p: S.categorical_crossentropy(t, p, axis=axis), y_true, y_pred, wrt=(1,)
    )
    # Both round a few operations in float32 (the focal loss sums its terms in float64).
    rtol = 4 * np.finfo(np.float32).eps
    np.testing.assert_allclose(focal[:2], plain[:2], rtol=rtol)
    np.testing.assert_allclose(focal[2], np.log(3.0), rtol=rtol)
    np.testing.assert_allclose(focal_grad, plain_grad, rtol=rtol)


# ----------------------------------------------------------------------------
# From a mutation review: branches no test reached
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("nan_at", [0, 1], ids=["target", "other"])
def test_a_nan_probability_gives_a_nan_focal_gradient_everywhere(regime, nan_at):
    # NaN in, NaN out, in the gradient too: the NaN entry's own gradient was 0 (a select
    # replaced invalid entries, and its unused branch took their gradient).
    row = [0.5, 0.5, 0.5]
    row[nan_at] = np.nan
    value, (grad,) = regime.value_and_grad(
        S.categorical_focal_crossentropy, np.float32([[1.0, 0.0, 0.0]]), np.float32([row]),
        wrt=(1,),
    )
    assert np.isnan(value).all() and np.isnan(grad).all(), (value, grad)


def test_ignore_class_along_the_first_axis(regime):
    # Classes along axis 0 (three samples in the columns); column 1's class, 2, is ignored.
    # Reference: -log softmax of each column at its class, in mpmath.
    logits = np.float32([[1, 0, 2], [2, 1, 0], [0, 3, 1]])
    classes = [1, 2, 0]
    target = np.eye(3, dtype=np.float32)[classes].T
    value = regime.run(
        lambda t, x: S.categorical_crossentropy(t, x, from_logits=True, axis=0, ignore_class=2),
        target, logits,
    )
    want = [
        0 if k == 2 else -(R.mpf(float(logits[k, j])) - mpmath.log(
            mpmath.fsum(mpmath.exp(R.mpf(float(v))) for v in logits[:, j])))
        for j, k in enumerate(classes)
    ]
    R.assert_ulp_within(value, want, "float32", 4)


def test_sparse_label_smoothing_along_the_first_axis(regime):
    # Three classes along axis 0, five samples: a uniform prediction's loss is log 3 whatever
    # the smoothing, if the smoothing spreads over the three classes (not over five).
    value = regime.run(
        lambda x: S.sparse_categorical_crossentropy(
            np.int32([0, 1, 2, 0, 1]), x, from_logits=True, axis=0, label_smoothing=0.3
        ),
        np.zeros((3, 5), np.float32),
    )
    R.assert_ulp_within(value, [mpmath.log(3)] * 5, "float32", 1)


def test_focal_loss_of_a_row_of_minus_infinities_is_inf(regime):
    # Every logit -inf: no class has probability, the loss is +inf as categorical
    # cross-entropy's (the focal factor (1 - q)^gamma is 1 there, not NaN; gamma = 2 reaches
    # the empty row's complement, gamma = 0.5 does not).
    value = regime.run(
        lambda x: S.categorical_focal_crossentropy(
            np.float32([[1.0, 0.0, 0.0]]), x, from_logits=True, gamma=2.0
        ),
        np.full((1, 3), -np.inf, np.float32),
    )
    np.testing.assert_array_equal(value, [np.inf])
