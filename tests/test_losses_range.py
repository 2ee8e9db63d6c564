"""Never a wrong number (issue 11, item 4): NaN in, NaN out; invalid input is NaN; the
three regimes agree up to the edge of the float range.

The property test draws inputs over each dtype's whole finite range (to its
max, not a range chosen so that the results stay finite) and checks contract
rules 1 and 5 in all three regimes: no NaN in the value or the gradient, and
``tf.function``/XLA agree with eager calls (the same non-finite positions,
the same finite values to a few ULP).
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stableops.losses as S
from stableops.ops import dtype_limits
from tests import _reference as R
from tests._reference import to_numpy_dtype
from tests._strategies import FLOAT_DTYPES, finite_arrays

F32 = dtype_limits("float32")
NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------
# NaN in, NaN out; infinite probabilities and targets are invalid
# ----------------------------------------------------------------------------


def test_kl_divergence_nan_in_nan_out(regime):
    # 0 * log 0 = 0 is for a zero target only: a NaN target, or a NaN
    # prediction where the target is 0, gives NaN (Keras: NaN too).
    t = np.array([[NAN, 1.0], [0.0, NAN], [0.0, 1.0], [0.3, 0.7]], np.float32)
    p = np.array([[0.3, 0.7], [0.4, 0.6], [NAN, 0.7], [0.3, 0.7]], np.float32)
    value, (grad,) = regime.value_and_grad(S.kl_divergence, t, p, wrt=(1,))
    np.testing.assert_array_equal(np.isnan(value), [True, True, True, False])
    assert value[3] == 0.0  # t == p: exactly 0
    assert np.isnan(grad[:3]).any(axis=1).all()


def test_poisson_nan_rate_gives_nan_value_and_gradient_at_it(regime):
    # A zero count makes the log term vanish (xlogy), but a NaN rate is still NaN
    # in the value and in its own gradient entry; the row's other entries keep theirs.
    t = np.array([[0.0, 1.0], [2.0, 1.0], [1.0, 3.0]], np.float32)
    p = np.array([[NAN, 1.0], [NAN, 2.0], [0.5, 2.0]], np.float32)
    value, (grad,) = regime.value_and_grad(S.poisson, t, p, wrt=(1,))
    np.testing.assert_array_equal(np.isnan(value), [True, True, False])
    np.testing.assert_array_equal(np.isnan(grad[:, 0]), [True, True, False])
    np.testing.assert_allclose(grad[:, 1], [0.0, 0.25, -0.25], rtol=1e-6)  # (1 - t/p) / 2


@pytest.mark.parametrize(
    "call, t, p",
    [
        (S.binary_crossentropy, [[1.0, 0.0]], [[INF, 0.3]]),
        (S.binary_crossentropy, [[0.0, 0.0]], [[-INF, 0.3]]),
        (S.binary_crossentropy, [[INF, 0.0]], [[0.5, 0.3]]),
        (lambda t, p: S.binary_crossentropy(t, p, pos_weight=2.0), [[1.0, 0.0]], [[INF, 0.3]]),
        (lambda t, p: S.binary_crossentropy(t, p, from_logits=True), [[-INF, 0.0]], [[1.0, 0.3]]),
        (
            lambda t, p: S.binary_crossentropy(t, p, from_logits=True, pos_weight=2.0),
            [[INF, 0.0]],
            [[1.0, 0.3]],
        ),
        (
            lambda t, p: S.binary_focal_crossentropy(t, p, from_logits=True),
            [[INF, 0.0]],
            [[1.0, 0.3]],
        ),
        (
            lambda t, p: S.binary_focal_crossentropy(t, p, from_logits=True),
            [[-INF, 0.0]],
            [[1.0, 0.3]],
        ),
        (S.BinaryFocalCrossentropy(from_logits=True), [[INF, 0.0]], [[1.0, 0.3]]),
        (S.BinaryCrossentropy(), [[1.0, 0.0]], [[INF, 0.3]]),
    ],
    ids=lambda x: "" if callable(x) else str(x),
)
def test_infinite_probability_or_target_is_nan_not_a_negative_loss(call, t, p, regime):
    # Keras: 0.178 for the first (inf clipped to 1 - 1e-7); here -inf before:
    # a negative loss. Invalid input gives NaN.
    value = regime.run(call, np.array(t, np.float32), np.array(p, np.float32))
    assert np.isnan(value).all(), value


def test_infinite_logits_stay_valid(regime):
    # From logits, +-inf is a limit, not invalid: 0 where the target agrees.
    value = regime.run(
        lambda t, p: S.binary_crossentropy(t, p, from_logits=True),
        np.array([[1.0, 0.0]], np.float32),
        np.array([[INF, -INF]], np.float32),
    )
    np.testing.assert_array_equal(value, [0.0])


# ----------------------------------------------------------------------------
# The edge of the range: every regime agrees
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mean_squared_error", "squared_hinge", "mean_squared_logarithmic_error"]
)
def test_mean_of_squares_gradient_agrees_at_the_range_edge(name, regime):
    # Three errors of 3e38: the mean square (9e76) is beyond float32 (inf,
    # documented), its gradient 2 e / 3 = 2e38 is not, in every regime
    # (under XLA tf.square's gradient formed 2 e = inf first).
    error = np.float32(3e38)
    t = np.zeros((1, 3), np.float32)
    p = np.full((1, 3), -error, np.float32)
    if name == "squared_hinge":  # labels 0 -> -1: violation 1 + y_pred
        p = np.full((1, 3), error, np.float32)
    value, (grad,) = regime.value_and_grad(getattr(S, name), t, p, wrt=(1,))
    assert np.isinf(value).all()
    # 2 * (+-3e38 (+1 for the hinge)) / 3 in exact arithmetic, rounded once.
    violation = mpmath.mpf(float(error)) + (1 if name == "squared_hinge" else 0)
    expected = float(2 * violation / 3) * (1 if name == "squared_hinge" else -1)
    R.assert_ulp_within(grad, np.full((1, 3), expected), "float32", 2, context=f"{name} {regime}")


@pytest.mark.parametrize("label", [0, 1, 2])
def test_categorical_focal_gradient_is_finite_for_huge_logit_gaps(label, regime):
    # Logits [-3e38, 3e38, 0]: NaN gradient before (inf * 0 in the focal
    # factor's chain) where CategoricalCrossentropy's is finite.
    t = np.eye(3, dtype=np.float32)[[label]]
    z = np.array([[-3e38, 3e38, 0.0]], np.float32)
    loss = S.CategoricalFocalCrossentropy(from_logits=True)
    value, (grad,) = regime.value_and_grad(loss, t, z, wrt=(1,))
    _, (plain_grad,) = regime.value_and_grad(
        S.CategoricalCrossentropy(from_logits=True), t, z, wrt=(1,)
    )
    assert not np.isnan(value) and np.isfinite(grad).all() and np.isfinite(plain_grad).all()
    if label == 1:  # p = 1 - 2 exp(-3e38) = 1: loss 0, gradient 0
        assert value == 0.0 and (grad == 0.0).all()
    if label == 2:  # p = exp(-3e38): alpha * 1**gamma * 3e38, gradient alpha * (p - t) / batch
        R.assert_ulp_within(
            np.array([value]), np.array([0.25 * float(np.float32(3e38))]), "float32", 1
        )
        np.testing.assert_array_equal(grad, [[0.0, 0.25, -0.25]])


_EDGE = (F32.max * 0.9, -F32.max * 0.9, 0.0, 0.5)


@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_losses_are_not_nan_at_the_range_edge(name, regime):
    rows_true, rows_pred = [], []
    for t in itertools.product((0.0, 1.0), repeat=2):
        for p in itertools.product(_EDGE, repeat=2):
            rows_true.append(t)
            rows_pred.append(p)
    t, p = np.array(rows_true, np.float32), np.array(rows_pred, np.float32)
    value, (grad,) = regime.value_and_grad(
        lambda a, b: getattr(S, name)(a, b, axis=1), t, p, wrt=(1,)
    )
    assert not np.isnan(value).any(), t[np.isnan(value)]
    assert not np.isnan(grad).any()
    # Closed forms. Two empty targets, two huge predictions: every term is a
    # false alarm, loss 1. Two full targets, predictions h: (2 (1 - h)) /
    # (2 + 2 h) = (1 - h) / (1 + h), -1 to within the float32 rounding of h.
    huge = np.float32(F32.max * 0.9)
    empty = np.flatnonzero((t == 0).all(1) & (p == huge).all(1))
    full = np.flatnonzero((t == 1).all(1) & (p == huge).all(1))
    np.testing.assert_array_equal(value[empty], [1.0])
    R.assert_ulp_within(
        value[full],
        np.array([float((1 - mpmath.mpf(float(huge))) / (1 + mpmath.mpf(float(huge))))]),
        "float32",
        2,
    )


# ----------------------------------------------------------------------------
# Property: the whole finite range, three regimes, float32/float16/bfloat16
# ----------------------------------------------------------------------------

SHAPE = (3, 4)


def _full(dtype):
    return finite_arrays(dtype, SHAPE)  # to the dtype's max


def _unit(dtype):
    return finite_arrays(dtype, SHAPE, 0.0, 1.0)


def _signs(dtype):
    return hnp.arrays(np.float32, SHAPE, elements=st.sampled_from([-1.0, 1.0])).map(
        lambda a: a.astype(to_numpy_dtype(dtype))
    )


def _one_hot(dtype):
    return hnp.arrays(np.int64, SHAPE[:1], elements=st.integers(0, SHAPE[1] - 1)).map(
        lambda labels: np.eye(SHAPE[1])[labels].astype(to_numpy_dtype(dtype))
    )


def _labels(dtype):
    return hnp.arrays(np.int32, SHAPE[:1], elements=st.integers(0, SHAPE[1] - 1))


# name -> (function, keyword arguments, y_true strategy, y_pred strategy)
PROPERTIES = {
    "mean_squared_error": (S.mean_squared_error, {}, _full, _full),
    "mean_absolute_error": (S.mean_absolute_error, {}, _full, _full),
    "mean_absolute_percentage_error": (S.mean_absolute_percentage_error, {}, _full, _full),
    "mean_squared_logarithmic_error": (S.mean_squared_logarithmic_error, {}, _full, _full),
    "huber": (S.huber, {"delta": 1.5}, _full, _full),
    "log_cosh": (S.log_cosh, {}, _full, _full),
    "cosine_similarity": (S.cosine_similarity, {}, _full, _full),
    "dice": (S.dice, {"axis": 1}, _unit, _full),
    "tversky": (S.tversky, {"alpha": 0.7, "beta": 0.3, "axis": 1, "smooth": 1.0}, _unit, _full),
    "hinge": (S.hinge, {}, _signs, _full),
    "squared_hinge": (S.squared_hinge, {}, _signs, _full),
    "categorical_hinge": (S.categorical_hinge, {}, _one_hot, _full),
    "binary_crossentropy": (S.binary_crossentropy, {}, _unit, _unit),
    "binary_crossentropy_logits": (S.binary_crossentropy, {"from_logits": True}, _unit, _full),
    "binary_focal_crossentropy_logits": (
        S.binary_focal_crossentropy,
        {"from_logits": True},
        _unit,
        _full,
    ),
    "categorical_crossentropy_logits": (
        S.categorical_crossentropy,
        {"from_logits": True},
        _one_hot,
        _full,
    ),
    "categorical_focal_crossentropy_logits": (
        S.categorical_focal_crossentropy,
        {"from_logits": True},
        _one_hot,
        _full,
    ),
    "sparse_categorical_crossentropy_logits": (
        S.sparse_categorical_crossentropy,
        {"from_logits": True},
        _labels,
        _full,
    ),
    "kl_divergence": (S.kl_divergence, {}, _unit, _full),
    "poisson": (S.poisson, {}, _full, _full),
}


def _value_and_grad(fn, kwargs, regime_name):
    """``(value, d sum(value) / d y_pred)``, traced once per regime (not once per example)."""

    def value_and_grad(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = fn(t, p, **kwargs)
        return value, tape.gradient(value, p)

    if regime_name == "eager":
        return value_and_grad
    return tf.function(value_and_grad, jit_compile=regime_name == "xla", reduce_retracing=True)


def _row_norm_inverse(p):
    """``1 / ||p||`` for the smallest non-zero row of ``p``: the size of each term of the cosine
    similarity's gradient (``t/(|t||p|) - cos p/|p|^2``), which cancel where ``p`` is parallel
    to ``t``: the regimes' roundings then differ by ULPs of the terms, not of the result."""
    norms = np.linalg.norm(np.asarray(p, np.float64), axis=-1)
    return 1.0 / norms[norms > 0].min() if (norms > 0).any() else 0.0


def _overlap_term_scale(alpha, beta, smooth):
    """The size of the terms of an overlap loss's gradient, ``d(N/D)/dp = dN/D - (N/D) dD/D``:
    at most ``max(1, alpha, beta) (1 + |N/D|) / |D|`` per sample (``t`` in [0, 1]). Where the
    two terms cancel (the gradient is small beside them), the regimes' roundings differ by
    ULPs of the terms (Dice at t = 1/8, p = 6: terms 0.03, gradient 2e-4)."""

    def scale(t, p):
        t, p = np.asarray(t, np.float64), np.asarray(p, np.float64)
        true_positive = (t * p).sum(axis=1)
        missed, false_alarm = (t * (1 - p)).sum(axis=1), (p * (1 - t)).sum(axis=1)
        numerator = alpha * false_alarm + beta * missed
        denominator = np.abs(true_positive + numerator + smooth)
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero denominator: left out
            size = max(1.0, alpha, beta) * (1 + np.abs(numerator) / denominator) / denominator
        size = size[np.isfinite(size)]
        return size.max() if size.size else 0.0

    return scale


# name -> the magnitude of the terms of the gradient, where it is larger than the result's.
GRADIENT_TERM_SCALE = {
    "cosine_similarity": lambda t, p: _row_norm_inverse(p),
    # Dice is Tversky with alpha = beta = 1/2 (N: (F + M) / 2, D: TP + (F + M) / 2).
    "dice": _overlap_term_scale(0.5, 0.5, 0.0),
    "tversky": _overlap_term_scale(0.7, 0.3, 1.0),
}


def _assert_agree(actual, expected, what, term_scale=0.0):
    """The same NaN and inf positions; finite entries within a few float32 ULP of the largest
    magnitude involved: the largest entry, or ``term_scale`` for a result that cancels."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    np.testing.assert_array_equal(
        actual[np.isinf(actual)], expected[np.isinf(actual)], err_msg=what
    )
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=what)
    if finite.any():
        # Graph and XLA may sum in another order: a few ULP of float32 (the
        # computing dtype) of the largest magnitude involved; and near the
        # smallest normal, flush-to-zero happens at different steps: 2 tiny.
        scale = max(np.max(np.abs(expected[finite])), term_scale)
        atol = max(16 * F32.eps * scale, 2 * F32.tiny)
        np.testing.assert_allclose(
            actual[finite], expected[finite], rtol=16 * F32.eps, atol=atol, err_msg=what
        )


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_no_nan_and_regimes_agree_over_the_whole_range(name, graph_regime):
    # Eager calls are the reference: the graph regime has no NaN and eager has
    # NaN where it has, so eager has none either (rule 1 in all three regimes).
    fn, kwargs, true_strategy, pred_strategy = PROPERTIES[name]
    eager = _value_and_grad(fn, kwargs, "eager")
    compiled = _value_and_grad(fn, kwargs, graph_regime.name)
    for dtype in FLOAT_DTYPES:

        @given(t=true_strategy(dtype), p=pred_strategy(dtype))
        def check(t, p):
            t, p = tf.constant(t), tf.constant(p)
            value, grad = (x.numpy().astype(np.float64) for x in compiled(t, p))
            context = f"{name} {dtype} {graph_regime.name} t={t.numpy()!r} p={p.numpy()!r}"
            # Rule 1: never NaN for finite input (an overflowed result is inf, documented).
            assert not np.isnan(value).any(), context
            assert not np.isnan(grad).any(), context
            # Rule 5: the same answer in every regime.
            expected_value, expected_grad = (x.numpy() for x in eager(t, p))
            _assert_agree(value, expected_value, "value " + context)
            term_scale = GRADIENT_TERM_SCALE.get(name, lambda *_: 0.0)(t.numpy(), p.numpy())
            _assert_agree(grad, expected_grad, "gradient " + context, term_scale)

        check()
