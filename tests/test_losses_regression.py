"""Regression, overlap and hinge losses (stableops/losses/_regression.py).

Drop-in parity with Keras 3.15 on well-conditioned inputs; the cases where
Keras fails, each compared with what Keras does; hypothesis properties (finite
value and gradient, accuracy against mpmath); the three execution regimes; bad
input errors.
"""

import functools
import inspect
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
from tests import _reference as R
from tests._helpers import nan_through_the_clamp_as_one
from tests._regimes import Regime
from tests._strategies import FLOAT_DTYPES, finite_arrays

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "none")
SHAPE = (8, 5)
F32_EPS = float(np.finfo(np.float32).eps)
# MSLE's documented budget, in ULPs of the result (float32 and float64): the square doubles
# the log difference's relative error, now the log's alone (float32: 3.5 measured, 10.1 with
# XLA's log1p of the rounded quotient; float64: 3.1, 5.6 without the quotient's correction).
MSLE_BUDGET = 4
NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------
# Input generators (well-conditioned float32 inputs for parity)
# ----------------------------------------------------------------------------


def _regression(rng):
    return rng.normal(size=SHAPE), rng.normal(size=SHAPE)


def _nonzero_targets(rng):
    magnitude = rng.uniform(0.5, 2.0, size=SHAPE)
    return magnitude * rng.choice([-1.0, 1.0], size=SHAPE), rng.normal(size=SHAPE)


def _nonnegative(rng):
    # Keras computes log(y + 1) (not log1p), accurate only away from 0: keep
    # both well above 0 and apart, so Keras's own rounding stays below 1e-7.
    t = rng.uniform(0.5, 3.0, size=SHAPE)
    return t, t + rng.choice([-1.0, 1.0], size=SHAPE) * rng.uniform(0.2, 0.4, size=SHAPE)


def _mask(rng):
    return (rng.uniform(size=SHAPE) < 0.5).astype(float), rng.uniform(size=SHAPE)


def _signed(rng):
    return rng.choice([-1.0, 1.0], size=SHAPE), rng.normal(size=SHAPE)


def _binary(rng):
    return rng.choice([0.0, 1.0], size=SHAPE), rng.normal(size=SHAPE)


def _one_hot(rng):
    return np.eye(SHAPE[1])[rng.integers(0, SHAPE[1], size=SHAPE[0])], rng.normal(size=SHAPE)


# (class name, function name, constructor kwargs, function kwargs, generator)
PARITY_CASES = [
    ("MeanSquaredError", "mean_squared_error", {}, {}, _regression),
    ("MeanAbsoluteError", "mean_absolute_error", {}, {}, _regression),
    ("MeanAbsolutePercentageError", "mean_absolute_percentage_error", {}, {}, _nonzero_targets),
    ("MeanSquaredLogarithmicError", "mean_squared_logarithmic_error", {}, {}, _nonnegative),
    ("Huber", "huber", {}, {}, _regression),
    ("Huber", "huber", {"delta": 0.5}, {"delta": 0.5}, _regression),
    ("LogCosh", "log_cosh", {}, {}, _regression),
    ("CosineSimilarity", "cosine_similarity", {}, {}, _regression),
    ("Dice", "dice", {}, {}, _mask),
    ("Dice", "dice", {"axis": (1,)}, {"axis": (1,)}, _mask),
    ("Tversky", "tversky", {}, {}, _mask),
    (
        "Tversky",
        "tversky",
        {"alpha": 0.7, "beta": 0.3, "axis": (1,)},
        {"alpha": 0.7, "beta": 0.3, "axis": (1,)},
        _mask,
    ),
    ("Hinge", "hinge", {}, {}, _signed),
    ("Hinge", "hinge", {}, {}, _binary),
    ("SquaredHinge", "squared_hinge", {}, {}, _signed),
    ("SquaredHinge", "squared_hinge", {}, {}, _binary),
    ("CategoricalHinge", "categorical_hinge", {}, {}, _one_hot),
]


def _case_id(case):
    cls, _, kwargs, _, generator = case
    extra = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{cls}({extra})-{generator.__name__.strip('_')}"


def _inputs(case, seed=0):
    rng = np.random.default_rng(seed)
    t, p = case[4](rng)
    return t.astype(np.float32), p.astype(np.float32)


# ----------------------------------------------------------------------------
# Drop-in parity with Keras (float32, every reduction, with/without weights)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", PARITY_CASES, ids=_case_id)
def test_matches_keras_for_every_reduction_with_and_without_weights(case):
    cls_name, fn_name, kwargs, fn_kwargs, _ = case
    t, p = _inputs(case)
    weights = np.random.default_rng(1).uniform(0.1, 2.0, size=SHAPE[0]).astype(np.float32)
    for reduction in REDUCTIONS:
        for sample_weight in (None, weights):
            ours = getattr(S, cls_name)(reduction=reduction, **kwargs)(
                t, p, sample_weight=sample_weight
            )
            theirs = getattr(keras.losses, cls_name)(reduction=reduction, **kwargs)(
                t, p, sample_weight=sample_weight
            )
            context = f"reduction={reduction}, weighted={sample_weight is not None}"
            assert ours.dtype == tf.float32, context
            assert ours.shape == theirs.shape, context
            np.testing.assert_allclose(
                ours.numpy(), np.asarray(theirs), rtol=1e-6, atol=0, err_msg=context
            )
    t, p = _inputs(case, seed=2)
    ours = getattr(S, fn_name)(t, p, **fn_kwargs)
    assert ours.dtype == tf.float32
    np.testing.assert_allclose(
        ours.numpy(), np.asarray(getattr(keras.losses, fn_name)(t, p, **fn_kwargs)), rtol=1e-6
    )


def test_rank_alignment_matches_keras():
    # y_true (batch,) against y_pred (batch, 1): Keras expands the labels.
    t = np.array([0.5, 1.0, 2.0], np.float32)
    p = np.array([[0.7], [0.4], [2.5]], np.float32)
    np.testing.assert_allclose(
        S.mean_squared_error(t, p), keras.losses.mean_squared_error(t, p), rtol=1e-6
    )
    np.testing.assert_allclose(
        S.MeanSquaredError()(t, p), keras.losses.MeanSquaredError()(t, p), rtol=1e-6
    )


def test_keras_masks_are_honoured():
    t, p = _regression(np.random.default_rng(3))
    p = tf.constant(p, tf.float32)
    p._keras_mask = tf.constant([True, False] * 4)
    ours = S.MeanSquaredError()(t.astype(np.float32), p)
    theirs = keras.losses.MeanSquaredError()(t.astype(np.float32), p)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


# ----------------------------------------------------------------------------
# Where Keras fails: named regression tests, each against Keras's value
# ----------------------------------------------------------------------------


def _value_and_grad(fn, t, p, **kwargs):
    """Eager value and gradient with respect to ``p``, in float64."""
    value, (grad,) = Regime("eager").value_and_grad(lambda a, b: fn(a, b, **kwargs), t, p, wrt=(1,))
    return value.astype(np.float64), grad.astype(np.float64)


def test_msle_negative_prediction_keeps_its_gradient():
    t, p = np.float32([[1.0, 1.0, 0.0]]), np.float32([[-0.5, -2.0, -5.0]])
    keras_value, keras_grad = _value_and_grad(keras.losses.mean_squared_logarithmic_error, t, p)
    assert np.all(keras_grad == 0)  # Keras clips at 1e-7: a dead gradient
    value, grad = _value_and_grad(S.mean_squared_logarithmic_error, t, p)
    # Tangent extension f(x) = x below 0: closed forms (f(p) - log1p(t))^2.
    log2 = math.log(2.0)
    expected = ((-0.5 - log2) ** 2 + (-2.0 - log2) ** 2 + 25.0) / 3
    np.testing.assert_allclose(value, [expected], rtol=1e-6)
    np.testing.assert_allclose(
        grad, [[2 * (-0.5 - log2) / 3, 2 * (-2.0 - log2) / 3, -10.0 / 3]], rtol=1e-6
    )
    assert keras_value[0] != pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_msle_prediction_at_or_below_minus_one_is_finite(dtype):
    np_dtype = R.to_numpy_dtype(dtype)
    t = np.array([[2.0, 0.0, 3.0]], np_dtype)
    p = np.array([[-1.0, -1.5, -60000.0]], np_dtype)
    value, grad = _value_and_grad(S.mean_squared_logarithmic_error, t, p)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    assert np.all(grad < 0)  # every prediction is pushed up towards its target


def test_msle_is_accurate_when_prediction_is_close_to_target():
    t, p = np.float32([[1e-5], [1.0], [1000.0]]), np.float32([[2e-5], [1.0001], [1000.5]])
    reference = R.reference_rows(R.mp_mean_squared_logarithmic_error_row, t, p)
    R.assert_ulp_within(
        S.mean_squared_logarithmic_error(t, p).numpy(), reference, "float32", MSLE_BUDGET
    )
    keras_errors = R.ulp_error(
        keras.losses.mean_squared_logarithmic_error(t, p).numpy(), reference, "float32"
    )
    assert keras_errors.max() > 1000  # log(y + 1) - log(x + 1) cancels


# The worst one-entry rows of a random search (6e7 rows, quotients |a - t| / (1 + min) in
# [0.05, 1.5]), 9.7-10.1 ULP with XLA's log1p of the rounded quotient (about 3 now): inputs
# only, the expected values come from mpmath.
MSLE_WORST_ROWS = [(0.3681573, 0.9422647), (1.0898398, 1.9700831), (0.74827623, 0.2340379)]


def test_msle_worst_one_entry_rows_are_within_the_budget(regime):
    t = np.float32([[row[0]] for row in MSLE_WORST_ROWS])
    p = np.float32([[row[1]] for row in MSLE_WORST_ROWS])
    reference = R.reference_rows(R.mp_mean_squared_logarithmic_error_row, t, p)
    errors = R.ulp_error(regime.run(S.mean_squared_logarithmic_error, t, p), reference, "float32")
    # Only the budget: the error at these rows depends on how XLA's log1p rounds on the CPU.
    assert errors.max() <= MSLE_BUDGET, errors


def test_msle_past_two_to_the_126_is_accurate(regime):
    # 1 / (1 + min(a, t)) is below float32's smallest normal there, and TF flushes it to 0:
    # a quotient formed with it was 0 (a loss of 0 for the first row, 1.5e-5 from mpmath).
    t = np.float32([[8.57352e37], [3.0e38], [1.0e38], [3.4e38]])
    p = np.float32([[8.63998e37], [1.0e38], [3.4e38], [0.0]])
    reference = R.reference_rows(R.mp_mean_squared_logarithmic_error_row, t, p)
    errors = R.ulp_error(regime.run(S.mean_squared_logarithmic_error, t, p), reference, "float32")
    assert errors.max() <= MSLE_BUDGET, errors



def _msle_float64_rows():
    """Edge rows past float32's range, the worst rows of a random search without the
    quotient's correction (5.2-5.6 ULP; inputs only), and random rows of quotients
    |a - t| / (1 + min) from 6e-6 to 7.4, in float64."""
    t = [0.0, 0.0, 1e300, 8e307, 2.0**1022, 3.0, 1.0421180627485327, 0.001036489630354635,
         0.09926851630089492, 0.0033174554702487236]  # fmt: skip
    p = [4.4942328371557893e307, 1.7976931348623157e308, 1.0000001e300, 9e307,
         1.5 * 2.0**1022, 3.0000000001, 1.0417871044024427, 0.0016569593592605145,
         0.10002498885069012, 0.025590916474831627]  # fmt: skip
    rng = np.random.default_rng(32)
    target = np.exp(rng.uniform(-8, 8, 400)) * (rng.uniform(size=400) > 0.05)
    gap = np.exp(rng.uniform(-12, 2, 400)) * (1 + target)
    prediction = np.where(rng.uniform(size=400) < 0.5, target + gap, np.maximum(target - gap, 0))
    return np.concatenate([t, target])[:, None], np.concatenate([p, prediction])[:, None]


def test_msle_float64_is_computed_in_float64_within_the_budget(regime):
    # float64 inputs crashed (a float32 constant in the 2^126 scale's select), and the float32
    # path's w log(w) overflowed past max / 710: inf for a prediction of 4.5e307.
    t, p = _msle_float64_rows()
    value, (grad,) = regime.value_and_grad(S.mean_squared_logarithmic_error, t, p, wrt=(1,))
    assert value.dtype == np.float64
    assert np.all(np.isfinite(grad))
    reference = R.reference_rows(R.mp_mean_squared_logarithmic_error_row, t, p)
    errors = R.ulp_error(value, reference, "float64")
    assert errors.max() <= MSLE_BUDGET, (errors.max(), t[errors.argmax()], p[errors.argmax()])

def test_mape_zero_target_does_not_explode():
    t, p = np.float32([[0.0, 1.0]]), np.float32([[0.5, 1.5]])
    keras_value, keras_grad = _value_and_grad(keras.losses.mean_absolute_percentage_error, t, p)
    np.testing.assert_allclose(keras_value, [2.5e8], rtol=1e-5)  # 0.5 / 1e-7 * 100 / 2
    assert abs(keras_grad[0, 0]) > 1e8
    value, grad = _value_and_grad(S.mean_absolute_percentage_error, t, p)
    np.testing.assert_allclose(value, [50.0], rtol=1e-6)  # the defined term alone
    np.testing.assert_allclose(grad, [[0.0, 100.0]], rtol=1e-6)


def test_mape_all_zero_targets_give_zero_and_nan_propagates():
    t = np.float32([[0.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    p = np.float32([[3.0, -1.0], [np.nan, 1.0], [1.0, np.nan]])
    value, grad = _value_and_grad(S.mean_absolute_percentage_error, t, p)
    assert value[0] == 0 and np.all(grad[0] == 0)
    assert np.isnan(value[1]) and np.isnan(value[2])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cosine_similarity_zero_vector_has_finite_gradient(dtype):
    np_dtype = R.to_numpy_dtype(dtype)
    t, p = np.array([[1.0, 2.0]], np_dtype), np.array([[0.0, 0.0]], np_dtype)
    keras_value, keras_grad = _value_and_grad(keras.losses.cosine_similarity, t, p)
    if dtype == "float16":
        assert not np.all(np.isfinite(keras_grad))  # 1e7 clamp is beyond float16
    else:
        assert np.abs(keras_grad).max() > 1e6  # inverse norm clamped at 1e7
    value, grad = _value_and_grad(S.cosine_similarity, t, p)
    assert value.tolist() == [0.0]
    assert np.all(grad == 0)


@pytest.mark.parametrize(
    "scale, dtype",
    [(1e-30, "float32"), (1e30, "float32"), (1e-30, "float64"), (1e30, "float64"),
     (1e-200, "float64"), (1e200, "float64")],
)
def test_cosine_similarity_of_tiny_and_huge_vectors_is_exact(scale, dtype):
    # float32 rows are summed in float64; float64 rows take the plain sums and their gradient
    # where their squares stay in range (1e+-30), the normalized form beyond (1e+-200).
    t = np.array([[1.0, 2.0, 2.0]], dtype) * scale
    p = np.array([[2.0, 1.0, 2.0]], dtype) * scale
    reference = R.reference_rows(R.mp_cosine_similarity_row, t, p)  # -8/9
    value, grad = _value_and_grad(S.cosine_similarity, t, p)
    R.assert_ulp_within(value, reference, dtype, 4)
    if dtype == "float32":
        keras_value = keras.losses.cosine_similarity(t, p).numpy()
        assert R.ulp_error(keras_value, reference, "float32").max() > 1000
    # d(-cos)/dp = -(t/|t| - cos p/|p|) / |p|, in mpmath from the float32 inputs.
    tm, pm = [mpmath.matrix([R.mpf(float(v)) for v in row[0]]) for row in (t, p)]
    norm_t, norm_p = mpmath.norm(tm), mpmath.norm(pm)
    cos = sum(a * b for a, b in zip(tm, pm)) / (norm_t * norm_p)
    expected = [-(a / norm_t - cos * b / norm_p) / norm_p for a, b in zip(tm, pm)]
    # A few roundings of terms within a factor 4 of the result (-7/27, 10/27, 2/27 of
    # 1/|p|): about 10 eps relative, 64 eps allowed; float32 keeps the older, looser bound.
    rtol = {"float32": 1e-6, "float64": 64 * np.finfo(np.float64).eps}[dtype]
    np.testing.assert_allclose(grad[0], np.array(expected, dtype=np.float64), rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cosine_similarity_of_infinite_rows_takes_the_limit_direction(dtype, regime):
    # A row holding +-inf points along sign(x) at its infinite entries, as
    # ops.l2_normalize makes it, and its gradient is 0: float32 rows reach it through
    # the 2^300 stand-in, float64 rows through l2_normalize. The other row's gradient is
    # -(u_inf - c u) / |x| (mpmath, from the limit direction u_inf).
    t = np.array([[INF, -INF, 3.0], [1.0, 2.0, 2.0], [INF, 0.0, 0.0]], dtype)
    p = np.array([[1.0, 2.0, 2.0], [-INF, 5.0, 1.0], [INF, 7.0, 0.0]], dtype)
    directions = {0: ([1, -1, 0], None), 1: (None, [-1, 0, 0]), 2: ([1, 0, 0], [1, 0, 0])}
    value, (grad_t, grad_p) = regime.value_and_grad(S.cosine_similarity, t, p, wrt=(0, 1))
    for row, (dir_t, dir_p) in directions.items():
        unit_t, unit_p = (
            mpmath.matrix(d if d is not None else [R.mpf(float(v)) for v in x[row]])
            for d, x in ((dir_t, t), (dir_p, p))
        )
        norms = mpmath.norm(unit_t) * mpmath.norm(unit_p)
        cos = sum(a * b for a, b in zip(unit_t, unit_p)) / norms
        R.assert_ulp_within(value[row:row + 1], np.array([-cos], np.float64), dtype, 4)
        sides = ((grad_t, dir_t, unit_t, unit_p), (grad_p, dir_p, unit_p, unit_t))
        for grad, direction, u, v in sides:
            if direction is not None:  # the infinite row: gradient 0
                np.testing.assert_array_equal(grad[row], 0.0)
                continue
            norm = mpmath.norm(u)
            expected = [-(b / mpmath.norm(v) - cos * a / norm) / norm for a, b in zip(u, v)]
            np.testing.assert_allclose(
                grad[row], np.array(expected, np.float64), rtol=1e-6, atol=1e-7
            )


def test_cosine_similarity_nan_does_not_rest_on_the_clamp(monkeypatch, regime):
    # Float32 rows widen through a clamp, which returns a bound for a NaN on some CPUs
    # (_internal/clip.py): with such a clamp, the NaN still reaches the value and both
    # gradients of its row (the select in the products). The other row stays finite.
    from stableops.losses import _similarity

    nan_through_the_clamp_as_one(monkeypatch, _similarity)
    t, p = np.float32([[1.0, NAN, 2.0], [1.0, 2.0, 2.0]]), np.float32([[3.0, 1.0, 1.0]] * 2)
    for a, b in ((t, p), (p, t)):
        value, grads = regime.value_and_grad(
            lambda a, b: _similarity._cosine_of_float32(a, b, -1), a, b, wrt=(0, 1)
        )
        assert np.isnan(value[0]) and np.all(np.isfinite(value[1]))
        for grad in grads:
            assert np.all(np.isnan(grad[0])) and np.all(np.isfinite(grad[1]))


@pytest.mark.parametrize("loss_fn", [S.dice, S.tversky], ids=["dice", "tversky"])
def test_perfect_empty_prediction_scores_zero(loss_fn):
    keras_fn = getattr(keras.losses, loss_fn.__name__)
    t = p = np.zeros((2, 3), np.float32)
    keras_value, _ = _value_and_grad(keras_fn, t, p)
    assert keras_value == 1.0
    value, grad = _value_and_grad(loss_fn, t, p)
    assert value == 0.0 and np.all(grad == 0)
    smooth_value, smooth_grad = _value_and_grad(loss_fn, t, p, smooth=1.0)
    assert smooth_value == 0.0
    assert np.all(smooth_grad > 0)  # with smoothing, spurious positives are pushed down


def test_dice_smooth_matches_its_formula():
    t = np.float32([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    p = np.float32([[0.9, 0.2, 0.6, 0.0], [0.1, 0.0, 0.3, 0.0]])
    for smooth in (0.0, 1.0):
        value = S.dice(t, p, axis=1, smooth=smooth).numpy()
        reference = R.reference_rows(R.mp_dice_loss, t, p, smooth)
        R.assert_ulp_within(value, reference, "float32", 4, context=f"smooth={smooth}")
        tversky_value = S.tversky(t, p, 0.5, 0.5, axis=1, smooth=smooth / 2).numpy()
        R.assert_ulp_within(
            tversky_value, reference, "float32", 4, context=f"tversky smooth={smooth}"
        )


def test_dice_near_perfect_prediction_keeps_its_accuracy():
    t = np.ones((1, 8), np.float32)
    p = np.full((1, 8), 1.0 - 2.0**-24, np.float32)  # the largest float32 below 1
    reference = R.reference_rows(R.mp_dice_loss, t, p, 0.0)  # about 3e-8
    R.assert_ulp_within(S.dice(t, p, axis=1).numpy(), reference, "float32", 4)
    keras_value = keras.losses.dice(t, p, axis=1).numpy()
    assert R.ulp_error(keras_value, reference, "float32").max() > 1000  # 1 - ratio cancels


def test_tversky_weights_the_same_terms_as_keras():
    # Only y_true (1 - y_pred) is nonzero here: alpha must weight it, as in Keras.
    t, p = np.float32([[1.0, 1.0]]), np.float32([[0.5, 0.5]])
    ours = S.tversky(t, p, alpha=0.9, beta=0.1).numpy()
    theirs = keras.losses.tversky(t, p, alpha=0.9, beta=0.1).numpy()
    np.testing.assert_allclose(ours, 0.9 / 1.9, rtol=1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_tversky_of_misses_near_the_smallest_normal_keeps_them():
    # One hit, and false alarms of the smallest normal each: a loss of about 1.8e-37, normal.
    # Weighting each false alarm before the sum (0.5 * tiny, subnormal) would flush it to 0.
    t = np.zeros((1, 32), np.float32)
    t[0, 1] = 1.0
    p = np.full((1, 32), np.finfo(np.float32).tiny, np.float32)
    p[0, 1] = 1.0
    reference = R.reference_rows(R.mp_tversky_loss, t, p, 0.5, 0.5, 0.0)
    R.assert_ulp_within(S.tversky(t, p, axis=1).numpy(), reference, "float32", 4)



def test_tversky_weighted_sums_near_the_smallest_normal_are_kept(regime):
    # Found by the thorough profile: false alarms summing to the smallest normal, weighted by
    # 0.3 in float32, were subnormal and flushed to 0 (1.3e6 ULP). Losses of 3.6e-38 and
    # 3.3e-38, both normal, within 4 ULP of mpmath.
    tiny = np.finfo(np.float32).tiny
    t = np.full((2, 4), tiny, np.float32)
    p = np.zeros((2, 4), np.float32)
    p[0, 0] = tiny
    fn = functools.partial(S.tversky, alpha=0.7, beta=0.3, axis=1, smooth=1.0)
    reference = R.reference_rows(R.mp_tversky_loss, t, p, 0.7, 0.3, 1.0)
    value, _ = regime.value_and_grad(fn, t, p, wrt=(1,))
    R.assert_ulp_within(value, reference, "float32", 4)


def test_dice_gradient_beside_a_prediction_past_half_the_range(regime):
    # One prediction of 3e38 among 1023 of 1/2, every target 1: the sums are rescaled (2p
    # overflows). The other entries' gradient (2I/D - 2t)/D is about -1e-74, 0 in float32;
    # the rescaled form must not leave the 1/2 of the complement unscaled (1.4e-35 then).
    # Reference: the closed form of the derivative of 1 - 2I/D in mpmath.
    n = 1024
    t = np.ones((1, n), np.float32)
    p = np.full((1, n), 0.5, np.float32)
    p[0, 0] = 3e38
    _, (grad,) = regime.value_and_grad(lambda a, b: S.dice(a, b, axis=1), t, p, wrt=(1,))
    mp_ = [R.mpf(float(v)) for v in p[0]]
    overlap, denominator = mpmath.fsum(mp_), n + mpmath.fsum(mp_)
    want = (2 * overlap / denominator - 2) / denominator
    assert abs(want) < np.finfo(np.float32).tiny  # flushed to 0 in float32
    assert np.abs(grad[0, 1:]).max() <= np.finfo(np.float32).tiny, grad[0, 1:4]


@pytest.mark.parametrize(
    "hit, elsewhere", [(1e-5, 0.05), (1e-20, 1e-20)], ids=["overlap-4e-7", "overlap-1e-20"]
)
@pytest.mark.parametrize("loss", ["dice", "tversky"])
def test_overlap_gradient_outside_the_target_near_a_loss_of_one(loss, hit, elsewhere, regime):
    # A small structure the prediction barely touches (early segmentation training):
    # overlap 2I/D of 4e-7 (or 1e-20). The gradient of every entry outside the target is
    # I beta / D^2 (Dice: 2I / D^2); formed as (1 - L) / D from the float32 loss it
    # cancelled: 9% off at 4e-7, exactly 0 below 6e-8 (and from the float64 difference of
    # Dice's sums, 0 below 1e-16). Reference: the closed form of the definition's
    # derivative, in mpmath (L = 1 - I / D, D = I + alpha M + beta F).
    n, hits = 2**14, 16
    t = np.zeros((1, n), np.float32)
    t[0, :hits] = 1.0
    p = np.full((1, n), elsewhere, np.float32)
    p[0, :hits] = hit
    alpha, beta = (1.0, 1.0) if loss == "dice" else (0.3, 0.7)
    fn = S.dice if loss == "dice" else functools.partial(S.tversky, alpha=alpha, beta=beta)
    _, (grad,) = regime.value_and_grad(lambda a, b: fn(a, b, axis=1), t, p, wrt=(1,))
    mt, mp_ = [R.mpf(float(v)) for v in t[0]], [R.mpf(float(v)) for v in p[0]]
    overlap = mpmath.fsum(a * b for a, b in zip(mt, mp_))
    misses = mpmath.fsum(a * (1 - b) for a, b in zip(mt, mp_))
    false_alarms = mpmath.fsum(b * (1 - a) for a, b in zip(mt, mp_))
    if loss == "dice":  # 1 - 2I / (sum t + sum p): the same form with I -> 2I
        overlap = 2 * overlap
    denominator = overlap + alpha * misses + beta * false_alarms
    scale = 2 if loss == "dice" else 1  # d(2I)/dp = 2t for Dice
    want = [
        -(scale * a * denominator - overlap * (scale * a - alpha * a + beta * (1 - a)))
        / denominator**2
        for a in (mt[0], mt[-1])
    ]
    errors = R.ulp_error(grad[0, [0, -1]], np.array(want, dtype=object), "float32")
    # 4 ULP: a few float32 roundings of the terms (0.1-1.5 ULP measured).
    assert errors.max() <= 4, (errors, grad[0, [0, -1]], want)


def _mp_overlap_losses(loss_row, t, p, axis):
    """``loss_row`` of each sample: the entries of ``t``, ``p`` (object arrays) over ``axis``."""
    reduced = (
        list(range(t.ndim))
        if axis is None
        else sorted(int(a) % t.ndim for a in np.atleast_1d(axis))
    )
    kept = [i for i in range(t.ndim) if i not in reduced]

    def rows(x):
        return np.transpose(x, kept + reduced).reshape(int(np.prod([x.shape[i] for i in kept])), -1)

    return [loss_row(list(a), list(b)) for a, b in zip(rows(t), rows(p))]


@pytest.mark.parametrize("axis", [None, 1, (1, 2)], ids=["all", "1", "(1,2)"])
@pytest.mark.parametrize("alpha, beta", [(None, None), (0.7, 0.2)], ids=["dice", "tversky"])
def test_overlap_gradients_match_mpmath_for_every_axis(regime, alpha, beta, axis):
    # Soft targets and predictions in (0, 1); each sample's loss weighted differently, so
    # the upstream gradient must reach the entries of its own sample (axis None, int, tuple).
    rng = np.random.default_rng(7)
    t = rng.uniform(0.0, 1.0, (2, 3, 2)).astype(np.float32)
    p = rng.uniform(0.0, 1.0, (2, 3, 2)).astype(np.float32)
    smooth = 0.5
    if alpha is None:
        loss = functools.partial(S.dice, axis=axis, smooth=smooth)
        row = functools.partial(R.mp_dice_loss, smooth=smooth)
    else:
        loss = functools.partial(S.tversky, alpha=alpha, beta=beta, axis=axis, smooth=smooth)
        row = functools.partial(R.mp_tversky_loss, alpha=alpha, beta=beta, smooth=smooth)
    shape = np.shape(loss(t, p))
    weights = np.arange(1.0, 1.0 + np.prod(shape), dtype=np.float32).reshape(shape)
    value, grads = regime.value_and_grad(loss, t, p, wrt=(0, 1), weights=weights)
    with mpmath.workdps(40):
        exact = [
            np.array([R.mpf(float(v)) for v in x.ravel()], object).reshape(x.shape) for x in (t, p)
        ]

        def objective(inputs):
            losses = _mp_overlap_losses(row, *inputs, axis)
            return mpmath.fsum(w * v for w, v in zip(weights.ravel(), losses))

        R.assert_ulp_within(
            value,
            np.array(_mp_overlap_losses(row, *exact, axis), object).reshape(value.shape),
            "float32",
            4,
        )
        for which, grad in enumerate(grads):
            expected = _mp_partial_derivatives(objective, exact, which)
            np.testing.assert_allclose(
                grad, expected, rtol=1e-5, atol=1e-6, err_msg=f"input {which}"
            )


def _mp_partial_derivatives(objective, exact, which, where=None):
    """d objective / d exact[which][i] at every entry i (or where ``where``; 0 elsewhere):
    mpmath's numerical derivative at the working precision, exact to float64 for an
    ``objective`` of mpf arrays that is smooth there."""
    expected = np.zeros(exact[which].shape)
    for index in np.ndindex(expected.shape):
        if where is not None and not where[index]:
            continue

        def moved(x, index=index):
            inputs = [e.copy() for e in exact]
            inputs[which][index] = x
            return objective(inputs)

        expected[index] = float(mpmath.diff(moved, exact[which][index]))
    return expected


def test_mape_gradients_match_mpmath(regime):
    # Positive and negative targets (the target's slope is sign(q) p / (t |t|)), a prediction
    # on its target (slope 0), zero targets (left out of the mean: both slopes 0 there).
    t = np.float32([[0.0, 1.0, -2.0, 3.0, 0.5], [-0.25, 1.0, 0.0, 2.0, 4.0]])
    p = np.float32([[0.5, 1.5, -1.0, 3.0, 0.75], [0.25, 3.0, 1.0, 2.5, -1.0]])
    weights = np.float32([1.0, 2.0])
    value, grads = regime.value_and_grad(
        S.mean_absolute_percentage_error, t, p, wrt=(0, 1), weights=weights
    )
    reference = R.reference_rows(R.mp_mean_absolute_percentage_error_row, t, p)
    R.assert_ulp_within(value, reference, "float32", 4)
    with mpmath.workdps(40):
        exact = [np.array([[R.mpf(float(v)) for v in row] for row in x], object) for x in (t, p)]

        def objective(inputs):
            rows = [R.mp_mean_absolute_percentage_error_row(a, b) for a, b in zip(*inputs)]
            return mpmath.fsum(w * v for w, v in zip(weights, rows))

        for which, grad in enumerate(grads):
            # A zero target's own slope is 0 by definition (its term is left out).
            expected = _mp_partial_derivatives(objective, exact, which, where=t != 0)
            np.testing.assert_allclose(
                grad, expected, rtol=1e-6, atol=1e-12, err_msg=f"input {which}"
            )


def test_log_cosh_tiny_error_is_not_zero():
    t, p = np.float32([[0.0]]), np.float32([[1e-6]])
    assert keras.losses.log_cosh(t, p).numpy()[0] == 0.0
    reference = R.reference_rows(R.mp_log_cosh_row, t, p)  # 5e-13
    R.assert_ulp_within(S.log_cosh(t, p).numpy(), reference, "float32", 4)


def test_log_cosh_keeps_the_rounding_of_the_error():
    # y_pred - y_true rounds (targets of 1e-3..1e-2 under predictions of 0.01..1.5), and
    # log cosh e ~ e^2/2 doubles the relative rounding of e: without the first-order
    # correction the worst of these rows is 2.3 ULP off, with it 1.6 (the op's own error).
    rng = np.random.default_rng(1)
    t = (rng.uniform(1e-3, 1e-2, 400) * rng.choice([-1.0, 1.0], 400)).astype(np.float32)
    p = rng.uniform(0.01, 1.5, 400).astype(np.float32)
    t, p = t[:, None], p[:, None]
    reference = R.reference_rows(R.mp_log_cosh_row, t, p)
    R.assert_ulp_within(S.log_cosh(t, p).numpy(), reference, "float32", 2)


def test_log_cosh_huge_float16_error_is_finite():
    t, p = np.float16([[0.0]]), np.float16([[-40000.0]])
    keras_value, _ = _value_and_grad(keras.losses.log_cosh, t, p)
    assert np.isinf(keras_value[0])
    value, grad = _value_and_grad(S.log_cosh, t, p)
    R.assert_ulp_within(value, R.reference_rows(R.mp_log_cosh_row, t, p), "float32", 4)
    assert grad.tolist() == [[-1.0]]


def test_huber_huge_float16_error_is_finite():
    t, p = np.float16([[-60000.0, 0.0]]), np.float16([[60000.0, 300.0]])
    keras_value, keras_grad = _value_and_grad(keras.losses.huber, t, p)
    assert np.isinf(keras_value[0]) and np.isnan(keras_grad).any()
    value, grad = _value_and_grad(S.huber, t, p)
    R.assert_ulp_within(value, R.reference_rows(R.mp_huber_row, t, p, 1.0), "float32", 3)
    assert grad.tolist() == [[0.5, 0.5]]


@pytest.mark.parametrize(
    "fn_name, reference",
    [
        ("mean_squared_error", R.mp_mean_squared_error_row),
        ("squared_hinge", R.mp_squared_hinge_row),
    ],
)
def test_squared_losses_of_float16_compute_in_float32(fn_name, reference):
    t, p = np.float16([[-1.0, 1.0]]), np.float16([[300.0, -300.0]])
    keras_value = getattr(keras.losses, fn_name)(t, p).numpy()
    assert np.isinf(keras_value[0])
    value = getattr(S, fn_name)(t, p)
    assert value.dtype == tf.float32
    R.assert_ulp_within(value.numpy(), R.reference_rows(reference, t, p), "float32", 3)


@pytest.mark.parametrize(
    "dtype, expected", [("float16", tf.float32), ("bfloat16", tf.float32), ("float64", tf.float64)]
)
def test_functions_return_the_computing_dtype(dtype, expected):
    t, p = _regression(np.random.default_rng(4))
    np_dtype = R.to_numpy_dtype(dtype)
    for name in ("huber", "dice"):
        assert getattr(S, name)(t.astype(np_dtype), p.astype(np_dtype)).dtype == expected


def test_integer_targets_are_not_rounded_through_float16():
    t = np.array([[3001]], np.int32)
    p = np.float16([[3000.0]])
    assert S.mean_absolute_error(t, p).numpy()[0] == 1.0  # float16 would round 3001 to 3000
    assert S.mean_absolute_error([[3001]], p).numpy()[0] == 1.0


# ----------------------------------------------------------------------------
# Accuracy against mpmath on edge grids (every pair of grid values)
# ----------------------------------------------------------------------------


def _pairs(values_true, values_pred):
    t, p = np.meshgrid(np.float32(values_true), np.float32(values_pred), indexing="ij")
    return t.reshape(-1, 1), p.reshape(-1, 1)


LOG_GRID = [
    0.0,
    1e-30,
    1e-7,
    1e-5,
    2e-5,
    0.5,
    1.0,
    1.0001,
    3.0,
    1e10,
    1e18,
    3e38,
    -1e-7,
    -0.5,
    -1.0,
    -2.0,
    -1e10,
]
SIGNED_GRID = [0.0, 1e-30, -1e-7, 1e-3, 0.999, 1.0, -1.0, 1.001, 7.5, -300.0, 65504.0, -1e18, 1e38]
EDGE_GRIDS = [
    ("mean_squared_error", {}, R.mp_mean_squared_error_row, (), SIGNED_GRID, SIGNED_GRID, 3),
    ("mean_absolute_error", {}, R.mp_mean_absolute_error_row, (), SIGNED_GRID, SIGNED_GRID, 3),
    (
        "mean_absolute_percentage_error",
        {},
        R.mp_mean_absolute_percentage_error_row,
        (),
        SIGNED_GRID,
        SIGNED_GRID,
        4,
    ),
    (
        "mean_squared_logarithmic_error",
        {},
        R.mp_mean_squared_logarithmic_error_row,
        (),
        LOG_GRID,
        LOG_GRID,
        MSLE_BUDGET,
    ),
    ("huber", {}, R.mp_huber_row, (1.0,), SIGNED_GRID, SIGNED_GRID, 3),
    ("huber", {"delta": 0.25}, R.mp_huber_row, (0.25,), SIGNED_GRID, SIGNED_GRID, 3),
    ("log_cosh", {}, R.mp_log_cosh_row, (), SIGNED_GRID, SIGNED_GRID, 4),
    ("hinge", {}, R.mp_hinge_row, (), [-1.0, 1.0, 0.5], SIGNED_GRID, 3),
    ("squared_hinge", {}, R.mp_squared_hinge_row, (), [-1.0, 1.0, 0.5], SIGNED_GRID, 3),
]


def test_elementwise_losses_on_edge_grids():
    for fn_name, kwargs, reference, args, grid_true, grid_pred, budget in EDGE_GRIDS:
        t, p = _pairs(grid_true, grid_pred)
        value = getattr(S, fn_name)(t, p, **kwargs).numpy()
        expected = R.reference_rows(reference, t, p, *args)
        R.assert_ulp_within(value, expected, "float32", budget, context=f"{fn_name}{kwargs}")


def test_row_losses_on_edge_rows():
    t = np.float32(
        [[1.0, 2.0, 2.0], [1e-30, 0.0, 0.0], [1.0, 0.0, 0.0], [3e37, 4e37, 0.0], [1.0, 1e-8, 0.0]]
    )
    p = np.float32(
        [
            [2.0, 1.0, 2.0],
            [0.0, 1e-30, 0.0],
            [1.0, 1e-4, 0.0],
            [-4e37, 3e37, 1.0],
            [1e-8, -1.0, 5.0],
        ]
    )
    value = S.cosine_similarity(t, p).numpy()
    reference = R.reference_rows(R.mp_cosine_similarity_row, t, p)
    # 4 ULP, plus 1 ULP of 1 in absolute terms (cancellation near orthogonality).
    errors = np.abs(value.astype(np.float64) - reference.astype(np.float64))
    ulps = R.ulp_error(value, reference, "float32")
    assert np.all((ulps <= 4) | (errors <= F32_EPS)), (value, reference)
    one_hot = np.float32([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    scores = np.float32([[0.2, 0.5, 0.4], [1e30, -1e30, 3.0], [1e-30, 2e-30, 1.0 + 2**-23]])
    R.assert_ulp_within(
        S.categorical_hinge(one_hot, scores).numpy(),
        R.reference_rows(R.mp_categorical_hinge_row, one_hot, scores),
        "float32",
        3,
    )


def test_categorical_hinge_is_accurate_at_the_margin(regime):
    # The true score exceeds the largest other one by nearly 1: the loss is a small
    # difference of terms near 1 (formed in float32, 8.9e-8 came out 1.2e-7: 4e6 ULP).
    rng = np.random.default_rng(7)
    other = rng.uniform(0.0, 2.0, 64).astype(np.float32)  # above the true class's (1 - t) p = 0
    gap = (1.0 - 2.0 ** -rng.uniform(3, 22, 64)).astype(np.float32)
    true = (other.astype(np.float64) + gap).astype(np.float32)  # inputs only
    scores = np.stack([other, true, other - np.float32(0.5)], axis=1)
    scores = np.vstack([scores, np.float32([[0.45657334, 1.4565732, 0.0]])])
    one_hot = np.float32([[0, 1, 0]] * len(scores))
    reference = R.reference_rows(R.mp_categorical_hinge_row, one_hot, scores)
    assert np.all(reference > 0) and np.median(reference) < 1e-3  # near the margin, above it
    value = regime.run(S.categorical_hinge, one_hot, scores)
    R.assert_ulp_within(value, reference, "float32", 3)


def test_categorical_hinge_from_float64_is_accurate_at_the_margin(regime):
    """Float64 inputs have nothing wider to form the hinge in: ``negative - positive + 1``
    rounded twice, 7.48868e-12 for 7.48873e-12 (3e10 ULP). Both roundings are carried
    (TwoSum)."""
    rng = np.random.default_rng(8)
    true = rng.uniform(1.1, 3.0, 64)
    other = true - 1.0 + rng.uniform(1e-14, 1e-10, 64)  # just above the margin
    scores = np.stack([other, true], axis=1)
    one_hot = np.float64([[0, 1]] * len(scores))
    reference = R.reference_rows(R.mp_categorical_hinge_row, one_hot, scores)
    assert np.all(reference > 0) and np.max(reference) < 1e-9
    value = regime.run(S.categorical_hinge, one_hot, scores)
    R.assert_ulp_within(value, reference, "float64", 3)


def test_categorical_hinge_gradient_splits_ties_and_is_nan_on_a_nan_row(regime):
    # The wrong classes' maximum: ties share its gradient evenly (-1 for the
    # true class, as d/dp of -sum(t p)); a row holding a NaN is NaN everywhere
    # in value and gradient, whichever entry each CPU's max kernel returns.
    one_hot = np.float32([[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    scores = np.float32([[0.7, 0.2, 0.7, 0.1], [np.nan, 0.2, 0.5, 0.1], [0.3, 0.9, 0.1, 0.2]])
    value, (grad,) = regime.value_and_grad(S.categorical_hinge, one_hot, scores, wrt=(1,))
    np.testing.assert_allclose(value[[0, 2]], [1.5, 1.6], rtol=1e-6)
    np.testing.assert_array_equal(grad[0], np.float32([0.5, -1.0, 0.5, 0.0]))
    np.testing.assert_array_equal(grad[2], np.float32([-1.0, 1.0, 0.0, 0.0]))
    assert np.isnan(value[1]) and np.isnan(grad[1]).all()


@pytest.mark.parametrize(
    "name, y_true, y_pred, term",
    [
        ("mean_squared_error", 0.0, 1.5e19, 1.5e19**2),  # squares of 2.25e38
        ("mean_absolute_error", 0.0, 2e38, 2e38),
        ("huber", 0.0, 2e38, 2e38 - 0.5),  # the linear branch, delta = 1: |e| - 1/2
        ("hinge", -1.0, 2e38, 2e38 + 1.0),  # max(1 - t p, 0)
        ("squared_hinge", -1.0, 1.5e19, (1.5e19 + 1.0) ** 2),
        ("log_cosh", 0.0, 2e38, 2e38 - math.log(2.0)),  # log cosh e = |e| - log 2 + 2^-(2|e|)
    ],
)
def test_a_mean_is_finite_where_only_its_sum_overflows(regime, name, y_true, y_pred, term):
    # Four equal terms, each finite in float32, whose float32 sum overflows (> 3.4e38): the
    # mean is the term itself. Summed in float32 these were inf (Keras's too); the row sum
    # is taken in float64 (rule 1: finite where the result is).
    y_true = np.full((2, 4), y_true, np.float32)
    y_pred = np.full((2, 4), y_pred, np.float32)
    value, (grad,) = regime.value_and_grad(getattr(S, name), y_true, y_pred, wrt=(1,))
    np.testing.assert_allclose(value, float(np.float32(term)), rtol=4 * 2.0**-23)
    assert np.isfinite(grad).all()


# ----------------------------------------------------------------------------
# Properties: finite value and gradient, accuracy, in float16/bfloat16/float32
# ----------------------------------------------------------------------------

PROPERTY_SHAPE = (2, 4)


def _max(dtype):
    return float(ml_dtypes.finfo(R.to_numpy_dtype(dtype)).max)


def _linear_range(dtype):
    # Errors stay representable and a mean of 4 of them cannot overflow its sum.
    return dict(min_value=-_max(dtype) / 16, max_value=_max(dtype) / 16)


_SQUARE_BOUND = 2.0**60  # about 1.15e18: a mean of squared errors up to 2**61 stays finite


def _square_range(dtype):
    return dict(min_value=-_SQUARE_BOUND, max_value=_SQUARE_BOUND)


def _labels(values, dtype):
    return st.lists(st.sampled_from(values), min_size=8, max_size=8).map(
        lambda v: np.array(v, np.float64).reshape(PROPERTY_SHAPE).astype(R.to_numpy_dtype(dtype))
    )


def _targets_with_zeros(dtype):
    # Targets below 1e-3 become 0 (left out of the mean), and so do those whose gradient,
    # 100 / (|t| n), can exceed the dtype's range: docs/design.md lets an exact float16
    # gradient past 65504 overflow (the thorough profile drew t = 0.001: 1e5), so |t| must
    # be at least 100 / max (1.5e-3 in float16).
    smallest = max(1e-3, 100.0 / _max(dtype))
    return finite_arrays(dtype, PROPERTY_SHAPE, -(2.0**20), 2.0**20).map(
        lambda a: np.where(
            np.abs(a.astype(np.float64)) < smallest, np.zeros_like(a), a
        ).astype(a.dtype)
    )


def _one_hot_labels(dtype):
    return st.lists(st.integers(0, PROPERTY_SHAPE[1] - 1), min_size=2, max_size=2).map(
        lambda i: np.eye(PROPERTY_SHAPE[1])[i].astype(R.to_numpy_dtype(dtype))
    )


# name -> (function kwargs, y_true strategy(dtype), y_pred strategy(dtype), reference, args, budget)
PROPERTIES = {
    "mean_squared_error": (
        {},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_square_range(d)),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_square_range(d)),
        R.mp_mean_squared_error_row,
        (),
        3,
    ),
    "mean_absolute_error": (
        {},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        R.mp_mean_absolute_error_row,
        (),
        3,
    ),
    "mean_absolute_percentage_error": (
        {},
        _targets_with_zeros,
        lambda d: finite_arrays(d, PROPERTY_SHAPE, -(2.0**100), 2.0**100),
        R.mp_mean_absolute_percentage_error_row,
        (),
        4,
    ),
    "mean_squared_logarithmic_error": (
        {},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, -_SQUARE_BOUND, None),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, -_SQUARE_BOUND, None),
        R.mp_mean_squared_logarithmic_error_row,
        (),
        MSLE_BUDGET,
    ),
    "huber": (
        {"delta": 1.5},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        R.mp_huber_row,
        (1.5,),
        3,
    ),
    "log_cosh": (
        {},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        R.mp_log_cosh_row,
        (),
        4,
    ),
    "cosine_similarity": (
        {},
        lambda d: finite_arrays(d, PROPERTY_SHAPE),
        lambda d: finite_arrays(d, PROPERTY_SHAPE),
        R.mp_cosine_similarity_row,
        (),
        None,
    ),
    "dice": (
        {"axis": 1},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, 0.0, 1.0),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, 0.0, 1.0),
        R.mp_dice_loss,
        (0.0,),
        4,
    ),
    "tversky": (
        {"alpha": 0.7, "beta": 0.3, "axis": 1, "smooth": 1.0},
        lambda d: finite_arrays(d, PROPERTY_SHAPE, 0.0, 1.0),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, 0.0, 1.0),
        R.mp_tversky_loss,
        (0.7, 0.3, 1.0),
        4,
    ),
    "hinge": (
        {},
        lambda d: _labels([-1.0, 1.0], d),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        R.mp_hinge_row,
        (),
        3,
    ),
    "squared_hinge": (
        {},
        lambda d: _labels([-1.0, 1.0], d),
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_square_range(d)),
        R.mp_squared_hinge_row,
        (),
        3,
    ),
    "categorical_hinge": (
        {},
        _one_hot_labels,
        lambda d: finite_arrays(d, PROPERTY_SHAPE, **_linear_range(d)),
        R.mp_categorical_hinge_row,
        (),
        3,
    ),
}


def _check_property(name, dtype, t, p):
    kwargs, _, _, reference, args, budget = PROPERTIES[name]
    fn = getattr(S, name)
    t_tensor, p_tensor = tf.constant(t), tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(p_tensor)
        value = fn(t_tensor, p_tensor, **kwargs)
        total = tf.reduce_sum(value)
    # The gradient that trains a model. (The gradient with respect to y_true
    # is returned in y_true's dtype and, for float16 targets, can exceed the
    # float16 range where its exact value does: MAPE's -100 y_pred / y_true^2.)
    grad_pred = tape.gradient(total, p_tensor)
    assert value.dtype == tf.float32
    value = value.numpy()
    assert np.all(np.isfinite(value)), (t, p, value)
    assert np.all(np.isfinite(grad_pred.numpy().astype(np.float64))), (t, p, grad_pred)
    expected = R.reference_rows(reference, t, p, *args)
    if budget is None:  # cosine: 4 ULP plus 1 ULP of 1 absolute (cancellation)
        errors = np.abs(value.astype(np.float64) - expected.astype(np.float64))
        assert np.all((R.ulp_error(value, expected, "float32") <= 4) | (errors <= F32_EPS)), (
            t,
            p,
            value,
        )
    else:
        R.assert_ulp_within(
            value, expected, "float32", budget, context=f"{name} {dtype} t={t!r} p={p!r}"
        )


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_finite_and_accurate_for_every_finite_input(name):
    _, true_strategy, pred_strategy, _, _, _ = PROPERTIES[name]
    for dtype in FLOAT_DTYPES:

        @given(t=true_strategy(dtype), p=pred_strategy(dtype))
        def check(t, p):
            _check_property(name, dtype, t, p)

        check()


# ----------------------------------------------------------------------------
# The three regimes: eager, tf.function, XLA (unknown batch, NaN positions)
# ----------------------------------------------------------------------------

REGIME_CASES = [
    ("mean_squared_error", {}, _regression),
    ("mean_absolute_error", {}, _regression),
    ("mean_absolute_percentage_error", {}, _regression),
    ("mean_squared_logarithmic_error", {}, _regression),
    ("huber", {"delta": 0.5}, _regression),
    ("log_cosh", {}, _regression),
    ("cosine_similarity", {}, _regression),
    ("dice", {"axis": 1, "smooth": 1.0}, _mask),
    ("tversky", {"alpha": 0.3, "beta": 0.7, "axis": 1}, _mask),
    ("hinge", {}, _binary),
    ("squared_hinge", {}, _signed),
    ("categorical_hinge", {}, _one_hot),
]


def test_same_answer_in_every_regime(regime):
    for index in range(len(REGIME_CASES)):
        _check_regime(regime, index)


def _regime_inputs(generator):
    t, p = generator(np.random.default_rng(5))
    t, p = t.astype(np.float32), p.astype(np.float32)
    t[1, 0] = 0.0  # a zero target (MAPE)
    p[2, 1] = np.nan  # NaN in one sample stays in that sample
    p[3, :] = 0.0  # a zero vector (cosine), an empty prediction (dice)
    return t, p


def _regime_loss(index):
    fn_name, kwargs, _ = REGIME_CASES[index]
    return lambda y_true, y_pred: getattr(S, fn_name)(y_true, y_pred, **kwargs)


@functools.lru_cache(maxsize=None)
def _eager_result(index):
    t, p = _regime_inputs(REGIME_CASES[index][2])
    return Regime("eager").value_and_grad(_regime_loss(index), t, p, wrt=(0, 1))


def _check_regime(regime, index):
    expected, expected_grads = _eager_result(index)
    if regime.name == "eager":  # the reference itself: check its NaN and finite positions
        value, grads = expected, expected_grads
    else:
        t, p = _regime_inputs(REGIME_CASES[index][2])
        value, grads = regime.value_and_grad(
            _regime_loss(index), t, p, wrt=(0, 1), unknown_batch=True
        )
    context = f"{REGIME_CASES[index][0]} in {regime.name}"
    others = np.arange(len(value)) != 2
    assert np.isnan(value[2]) and np.all(np.isfinite(value[others])), context
    np.testing.assert_allclose(
        value, expected, rtol=1e-6, atol=1e-7, err_msg=context
    )  # NaN where NaN
    for grad, expected_grad in zip(grads, expected_grads):
        assert np.all(np.isfinite(grad[others])), context
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected_grad), err_msg=context)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-7, err_msg=context)


# ----------------------------------------------------------------------------
# Bad input: clear errors
# ----------------------------------------------------------------------------

FUNCTION_OF = {case[0]: case[1] for case in PARITY_CASES}


def test_static_shape_mismatch_names_both_shapes():
    t, p = np.zeros((8, 5), np.float32), np.zeros((8, 4), np.float32)
    for cls_name, fn_name in FUNCTION_OF.items():
        with pytest.raises(ValueError, match=r"\(8, 5\).*\(8, 4\)"):
            getattr(S, cls_name)()(t, p)
        with pytest.raises(ValueError, match=r"\(8, 5\).*\(8, 4\)"):
            getattr(S, fn_name)(t, p)


INVALID_HYPERPARAMETERS = [
    (lambda: S.Huber(delta=0.0), "delta", "0.0"),
    (lambda: S.Huber(delta=-1.0), "delta", "-1.0"),
    (lambda: S.huber([[0.0]], [[1.0]], delta=float("nan")), "delta", "nan"),
    (lambda: S.Tversky(alpha=-0.1), "alpha", "-0.1"),
    (lambda: S.Tversky(beta=-2), "beta", "-2"),
    (lambda: S.tversky([[0.0]], [[1.0]], alpha=0.5, beta=-0.5), "beta", "-0.5"),
    (lambda: S.Dice(smooth=-1.0), "smooth", "-1.0"),
    (lambda: S.dice([[0.0]], [[1.0]], smooth=float("nan")), "smooth", "nan"),
    (lambda: S.Huber(delta=float("nan")), "delta", "nan"),
    (lambda: S.Dice(smooth=float("inf")), "smooth", "inf"),
]

# An axis of the wrong type is a TypeError, as in the ops (one axis validator).
INVALID_AXIS_TYPES = [
    (lambda: S.Dice(axis="rows"), "axis", "rows"),
    (lambda: S.CosineSimilarity(axis=None), "axis", "None"),
]


def test_invalid_hyperparameters_name_the_argument_and_value():
    for make, argument, shown in INVALID_HYPERPARAMETERS:
        with pytest.raises(ValueError, match=rf"`{argument}`.*{shown}"):
            make()
    for make, argument, shown in INVALID_AXIS_TYPES:
        with pytest.raises(TypeError, match=rf"`{argument}`.*{shown}"):
            make()


def test_smooth_is_keyword_only():
    with pytest.raises(TypeError):
        S.Dice("sum", "dice", None, None, 1.0)
    with pytest.raises(TypeError):
        S.dice([[0.0]], [[0.0]], None, 1.0)


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------

CONFIG_CASES = [
    ("MeanSquaredError", {"reduction": "sum", "name": "mse", "dtype": "float64"}),
    ("Huber", {"delta": 0.25, "reduction": "none"}),
    ("CosineSimilarity", {"axis": 0}),
    ("Dice", {"axis": (1,), "smooth": 1.0}),
    ("Tversky", {"alpha": 0.2, "beta": 0.8, "axis": (1,), "smooth": 0.5}),
    ("CategoricalHinge", {"name": "ch"}),
]


def test_config_lists_every_argument_and_round_trips():
    for cls_name, kwargs in CONFIG_CASES:
        _check_config(cls_name, kwargs)


def _check_config(cls_name, kwargs):
    cls = getattr(S, cls_name)
    loss = cls(**kwargs)
    config = loss.get_config()
    assert set(config) == set(inspect.signature(cls).parameters)
    for key, value in kwargs.items():
        assert config[key] == value
    rebuilt = cls.from_config(config)
    assert rebuilt.get_config() == config
    t, p = _mask(np.random.default_rng(6))
    np.testing.assert_array_equal(rebuilt(t, p), loss(t, p))


@pytest.mark.parametrize("dtype, big", [("float32", 3e38), ("float64", 1.7e308)])
def test_dice_target_gradient_at_predictions_past_half_the_range(regime, dtype, big):
    """The target's gradient ``((1 - 2 p_j) - L) / D`` took ``2 p``, which overflows from
    ``p = max/2`` (NaN once the rescaled slope's ``1/D`` rounds to 0 under it): it is formed
    halved now. Reference: the closed form in mpmath (``L = 1 - 2I/D``, smooth 0)."""
    t, p = np.array([[1.0, 1.0]], dtype), np.array([[big, big]], dtype)
    _, (grad,) = regime.value_and_grad(lambda t, p: S.dice(t, p), t, p, wrt=(0,))
    tm, pm = [mpmath.mpf(1.0)] * 2, [mpmath.mpf(float(big))] * 2
    denominator = sum(tm) + sum(pm)
    loss = 1 - 2 * sum(a * b for a, b in zip(tm, pm)) / denominator
    expected = [float(((1 - 2 * b) - loss) / denominator) for b in pm]
    np.testing.assert_allclose(grad[0], expected, rtol=4 * np.finfo(dtype).eps)
