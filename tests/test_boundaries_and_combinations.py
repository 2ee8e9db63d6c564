"""Boundary values and combinations of options that the other test files left unpinned.

Each test here pins one boundary (a label equal to the class count, a snapshot
cadence hit exactly, a tie between snapshots) or one combination of options
(class balancing with label smoothing at ``gamma = 0``, ``ignore_class`` with a
Keras mask, a loss scaler with a non-finite loss), found by mutation testing:
a one-token change to the code at that spot left every other test passing.
References are mpmath values or exact closed forms computed here; tolerances
are ULP budgets of the result's dtype, named where they are used.
"""

import math
import re
from fractions import Fraction

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
from stableops import ops
from stableops.callbacks import NaNGuard
from stableops.doctor import _thresholds as th
from stableops.doctor import diagnose
from stableops.optimizers import SkipNonFinite
from tests._helpers import is_finite

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
# The cross-entropies' documented error budget (ops and losses docstrings): 4 ULP of the
# result per element; a mean of such elements adds at most one rounding more.
ULP = 4


def _mp(x):
    """The exact value of a binary float, as an mpmath number."""
    return mpmath.mpf(float(x))


# ----------------------------------------------------------------------------
# Sparse labels: label == num_classes is the first invalid label
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("label_dtype", ["int64", "float32"])
def test_sparse_label_equal_to_the_class_count_is_invalid(regime, label_dtype):
    """Guards ``_label_validity``'s strict ``labels < num_classes``: label 3 of 3 classes
    raises (eager, tf.function) or is NaN under XLA, where asserts are dropped (as in
    test_ops_crossentropy's ``_check_bad_labels``, whose label sets hold no boundary
    label, so its logic is mirrored here). With ``<=`` the label read a clamped class."""
    labels = np.array([0, 3], label_dtype)
    probabilities = np.float32([[0.2, 0.3, 0.5]] * 2)
    fn = lambda t, o: ops.sparse_categorical_crossentropy(t, o)  # noqa: E731
    if regime.name == "xla":
        value, (grad,) = regime.value_and_grad(
            fn, labels, probabilities, wrt=(1,), unknown_batch=True
        )
        assert np.isnan(value[1]) and np.all(np.isnan(grad[1])), (value, grad)
        assert np.all(is_finite(grad[0])), grad
        # Row 0 is untouched: -log 0.2 (float32's 0.2) within the 4-ULP budget.
        with mpmath.workdps(40):
            expected = float(-mpmath.log(_mp(np.float32(0.2))))
        np.testing.assert_allclose(value[0], expected, rtol=ULP * EPS32)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            regime.run(fn, labels, probabilities, unknown_batch=True)
        message = str(error.value)
        # Eagerly "label 3 is out of ...", in a graph tf.Assert's "[...label] [3] [is out ...]".
        plain = message.replace("[", "").replace("]", "")
        assert re.search(r"label 3(\.0)? is out of range for 3 classes", plain), message


# ----------------------------------------------------------------------------
# Binary focal loss: class balancing + label smoothing at gamma = 0
# ----------------------------------------------------------------------------


def test_class_balancing_weight_uses_the_smoothed_target_at_gamma_zero(regime):
    """Guards the gamma = 0 path of ``binary_focal_crossentropy``: the class-balancing
    weight ``alpha t + (1 - alpha)(1 - t)`` takes the *smoothed* target ``t`` (as the
    docstring's formula and the gamma > 0 path do), not ``y_true``: for y = 1, s = 0.2,
    t = 0.9 and the weight is 0.3, not alpha = 0.25."""
    y, p, alpha, smoothing = 1.0, 0.9, 0.25, 0.2
    value = regime.run(
        lambda t, o: S.binary_focal_crossentropy(
            t, o, apply_class_balancing=True, alpha=alpha, gamma=0.0, label_smoothing=smoothing
        ),
        np.float64([[y]]),
        np.float64([[p]]),
    )
    with mpmath.workdps(40):
        t = _mp(y) * (1 - _mp(smoothing)) + _mp(smoothing) / 2
        weight = t * _mp(alpha) + (1 - t) * (1 - _mp(alpha))
        bce = -(t * mpmath.log(_mp(p)) + (1 - t) * mpmath.log(1 - _mp(p)))
        expected = float(weight * bce)
    # float64 result: the 4-ULP budget, plus one rounding of the weight's product.
    np.testing.assert_allclose(value, [expected], rtol=(ULP + 1) * EPS64)


# ----------------------------------------------------------------------------
# Loss classes: ignore_class and y_pred's Keras mask both apply
# ----------------------------------------------------------------------------


def _masked_call(loss, mask):
    """``loss(y_true, y_pred)`` with ``mask`` set as ``y_pred``'s Keras mask."""

    def call(y_true, y_pred):
        y_pred = tf.identity(y_pred)
        y_pred._keras_mask = tf.constant(mask)
        return loss(y_true, y_pred)

    return call


def test_ignore_class_and_keras_mask_both_apply_sparse(regime):
    """Guards ``_merged_mask``: with ``ignore_class`` set, the loss's mask of ignored
    labels is ANDed with y_pred's Keras mask (Keras's rule), not put in its place: row 1
    (ignored class 0) and row 3 (masked by the model) are both left out of the mean."""
    logits = np.float64([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [2.0, -1.0, 0.0], [0.0, 0.0, 4.0]])
    labels = np.int64([1, 0, 2, 1])
    loss = S.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0, dtype="float64")
    value = regime.run(_masked_call(loss, [True, True, True, False]), labels, logits)

    def ce(row, k):
        return mpmath.log(mpmath.fsum(mpmath.exp(_mp(v)) for v in row)) - _mp(row[k])

    with mpmath.workdps(40):
        expected = float((ce(logits[0], 1) + ce(logits[2], 2)) / 2)  # rows 0 and 2 only
    # float64: the 4-ULP budget per row, plus the mean's rounding.
    np.testing.assert_allclose(value, expected, rtol=(ULP + 1) * EPS64)


def test_ignore_class_and_keras_mask_both_apply_binary(regime):
    """Guards ``_merged_mask`` for a binary loss: ``ignore_class=-1`` leaves out entry
    (0, 1), y_pred's Keras mask leaves out row 2; the loss is the mean of rows 0 and 1."""
    y_true = np.float64([[1.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
    y_pred = np.float64([[0.8, 0.5], [0.3, 0.6], [0.1, 0.9]])
    loss = S.BinaryCrossentropy(ignore_class=-1.0, dtype="float64")
    value = regime.run(_masked_call(loss, [True, True, False]), y_true, y_pred)
    with mpmath.workdps(40):
        row0 = -mpmath.log(_mp(0.8))  # its one valid entry
        row1 = (-mpmath.log(1 - _mp(0.3)) - mpmath.log(_mp(0.6))) / 2
        expected = float((row0 + row1) / 2)
    # float64: the 4-ULP budget per element, plus the two means' roundings.
    np.testing.assert_allclose(value, expected, rtol=(ULP + 2) * EPS64)


# ----------------------------------------------------------------------------
# safe_where: each branch sees its own safe value
# ----------------------------------------------------------------------------


def test_safe_where_feeds_each_branch_its_own_safe_value(regime):
    """Guards ``safe_where``: at the elements the false branch does not select, it sees
    ``safe_false`` (not ``safe_true``). A branch that sums its input tells them apart:
    the false branch sums [safe_false = 1, 7] = 8 (with safe_true = 0 it was 7)."""
    value = regime.run(
        lambda c, x: ops.safe_where(
            c,
            x,
            lambda t: t,
            lambda t: tf.fill(tf.shape(t), tf.reduce_sum(t)),
            safe_true=0.0,
            safe_false=1.0,
        ),
        np.array([True, False]),
        np.float32([5.0, 7.0]),
    )
    np.testing.assert_array_equal(value, [5.0, 8.0])  # exact: small integers


# ----------------------------------------------------------------------------
# NaNGuard: snapshot cadence and the choice among equal losses
# ----------------------------------------------------------------------------


def test_nanguard_snapshots_every_n_steps_exactly_and_restores_the_newest_of_equals():
    """Guards NaNGuard's cadence (a snapshot when ``snapshot_every`` steps have passed,
    ``>=``: steps 0, 3, 6 for 3) and its choice among kept snapshots with equal losses
    (the newest, ``min`` over ``reversed``). The model's loss is exactly 1 at every
    healthy step (zero weights and inputs, targets 1, zero gradients); step 8 is NaN.
    With 2 snapshots kept (3 and 6), the rollback goes to step 6: a ``>`` cadence gave
    snapshots 0, 4, 8 (restored 4), the oldest of equals gave 3."""
    keras.utils.set_random_seed(0)
    x = np.zeros((12, 2), np.float32)
    y = np.ones((12, 1), np.float32)
    x[7, 0] = np.nan  # batch size 1: step 8 is the bad one
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    guard = NaNGuard(action="stop", snapshot_every=3, snapshots=2, diagnose=False, verbose=0)
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    event = guard.events[0]
    assert (event["step"], event["restored_step"]) == (8, 6), event


# ----------------------------------------------------------------------------
# SkipNonFinite around a LossScaleOptimizer: a non-finite loss, finite gradients
# ----------------------------------------------------------------------------


def test_non_finite_loss_with_finite_gradients_is_skipped_under_a_loss_scaler():
    """Guards SkipNonFinite's loss check when it wraps a LossScaleOptimizer: an infinite
    (unscaled) loss whose scaled gradients are finite is skipped and counted, without
    touching the scale (a lower scale cannot help it). Handing the step to the scaler
    unchecked applied it (the scaler sees only finite gradients). Mirrors
    test_optimizers.py::test_the_loss_check_needs_the_loss_of_the_same_step."""
    inner = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0), initial_scale=2.0**10)
    optimizer = SkipNonFinite(inner)
    variable = keras.Variable(np.ones((2,), np.float32))
    optimizer.scale_loss(tf.constant(np.inf))
    optimizer.apply([tf.constant([2.0**10, 2.0**10])], [variable])  # finite scaled gradients
    np.testing.assert_array_equal(variable.numpy(), [1.0, 1.0])
    assert int(optimizer.skipped_steps.numpy()) == 1
    assert int(optimizer.iterations.numpy()) == 0
    assert float(np.asarray(inner.dynamic_scale)) == 2.0**10


# ----------------------------------------------------------------------------
# doctor: the robust z-score's scale
# ----------------------------------------------------------------------------


def test_outliers_robust_z_is_mad_to_sd_times_deviation_over_mad():
    """Guards the doctor's robust z-score ``|x - median| / (MAD / 0.6745)``: one feature
    -100..100 plus +-1000 (median 0, MAD 51 exactly) has 2 outliers, the worst at
    z = 0.6745 * 1000 / 51 = 13.2 (dividing the MAD by the constant instead of
    multiplying: 29.1). The statistics are float64: two roundings, rel 1e-12 is ample."""
    values = np.concatenate([np.arange(-100.0, 101.0), [1000.0, -1000.0]]).astype(np.float32)
    x = values[:, None]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    [outliers] = diagnose(model, x, np.zeros((len(x), 1), np.float32), trial_steps=0).find(
        "input.outliers"
    )
    assert outliers.evidence["outlier_values"] == 2
    # th.MAD_TO_SD = 0.6745: the standard normal's 75th percentile (MAD / SD of normal data).
    expected = float(Fraction(th.MAD_TO_SD) * Fraction(1000, 51))
    assert math.isclose(outliers.evidence["max_robust_z"], expected, rel_tol=1e-12)
