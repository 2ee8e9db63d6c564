"""Boundary values and combinations of options that the other test files left unpinned.

Each test here pins one boundary (a label equal to the class count, a snapshot
cadence hit exactly, a tie between snapshots) or one combination of options
(class balancing with label smoothing at ``gamma = 0``, ``ignore_class`` with a
Keras mask, a loss scaler with a non-finite loss), found by mutation testing:
a one-token change to the code at that spot left every other test passing.
References are mpmath values or exact closed forms computed here; tolerances
are ULP budgets of the result's dtype, named where they are used.
"""

import json
import math
import re
from fractions import Fraction

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
from stableops import cli, ops
from stableops.callbacks import NaNGuard
from stableops.doctor import _thresholds as th
from stableops.doctor import diagnose
from stableops.doctor._loss import named_output_pairs
from stableops.layers import RobustScaler
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
    logits = np.float32([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [2.0, -1.0, 0.0], [0.0, 0.0, 4.0]])
    labels = np.int64([1, 0, 2, 1])
    # float32: Keras 3.10's masked mean rounds a float64 loss's mean to float32.
    loss = S.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    value = regime.run(_masked_call(loss, [True, True, True, False]), labels, logits)

    def ce(row, k):
        return mpmath.log(mpmath.fsum(mpmath.exp(_mp(v)) for v in row)) - _mp(row[k])

    with mpmath.workdps(40):
        expected = float((ce(logits[0], 1) + ce(logits[2], 2)) / 2)  # rows 0 and 2 only
    # The 4-ULP budget per row, plus the mean's rounding.
    np.testing.assert_allclose(value, expected, rtol=(ULP + 1) * EPS32)


def test_ignore_class_and_keras_mask_both_apply_binary(regime):
    """Guards ``_merged_mask`` for a binary loss: ``ignore_class=-1`` leaves out entry
    (0, 1), y_pred's Keras mask leaves out row 2; the loss is the mean of rows 0 and 1."""
    y_true = np.float32([[1.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
    y_pred = np.float32([[0.8, 0.5], [0.3, 0.6], [0.1, 0.9]])
    loss = S.BinaryCrossentropy(ignore_class=-1.0)  # float32: see the sparse test
    value = regime.run(_masked_call(loss, [True, True, False]), y_true, y_pred)
    with mpmath.workdps(40):
        row0 = -mpmath.log(_mp(y_pred[0, 0]))  # its one valid entry
        row1 = (-mpmath.log(1 - _mp(y_pred[1, 0])) - mpmath.log(_mp(y_pred[1, 1]))) / 2
        expected = float((row0 + row1) / 2)
    # The 4-ULP budget per element, plus the two means' roundings.
    np.testing.assert_allclose(value, expected, rtol=(ULP + 2) * EPS32)


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


def _nanguard_rollback(y):
    """``(step, restored_step)`` of ``NaNGuard(action="stop", snapshot_every=3, snapshots=2)``
    on a zero-weight, zero-input model trained with batch size 1 (batch i's loss is exactly
    ``y_i**2``, its gradient 0), the input of step 8 NaN."""
    keras.utils.set_random_seed(0)
    x = np.zeros((len(y), 2), np.float32)
    x[7, 0] = np.nan
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    guard = NaNGuard(action="stop", snapshot_every=3, snapshots=2, diagnose=False, verbose=0)
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    event = guard.events[0]
    return event["step"], event["restored_step"]


def test_nanguard_snapshots_every_n_steps_exactly_and_restores_the_newest_of_equals():
    """Guards NaNGuard's cadence (a snapshot when ``snapshot_every`` steps have passed,
    ``>=``: steps 0, 3, 6 for 3) and its choice among kept snapshots with equal losses
    (the newest, ``min`` over ``reversed``). The model's loss is exactly 1 at every
    healthy step (zero weights and inputs, targets 1, zero gradients); step 8 is NaN.
    With 2 snapshots kept (3 and 6), the rollback goes to step 6: a ``>`` cadence gave
    snapshots 0, 4, 8 (restored 4), the oldest of equals gave 3."""
    assert _nanguard_rollback(np.ones((12, 1), np.float32)) == (8, 6)


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


# ----------------------------------------------------------------------------
# KL divergence and Poisson: a NaN prediction gives a NaN gradient
# ----------------------------------------------------------------------------


def test_kl_divergence_nan_prediction_at_a_zero_target_has_a_nan_gradient(regime):
    """Guards the KL gradient's ``0 * upstream * prediction`` at a zero target (contract
    rule 2, NaN in, NaN out): a NaN prediction where ``t = 0`` gets a NaN gradient, not 0,
    while the other entries keep ``-t/p``. A literal zero there hid the NaN."""
    y_true = np.float32([[0.0, 0.5, 0.5]])
    y_pred = np.float32([[np.nan, 0.5, 0.5]])
    value, (grad,) = regime.value_and_grad(S.kl_divergence, y_true, y_pred, wrt=(1,))
    assert np.isnan(value[0]), value
    assert np.isnan(grad[0, 0]), grad
    # -t/p = -0.5/0.5 = -1: a quotient of equal binary floats, exact.
    np.testing.assert_array_equal(grad[0, 1:], [-1.0, -1.0])


def test_poisson_nan_rate_has_a_nan_gradient(regime):
    """Guards poisson's ``where(isnan(rate), rate, slope)``: a NaN rate gets a NaN
    gradient (the floor at ``tiny`` and the ``counted`` select would turn it into a
    finite slope), while a rate equal to its count keeps its gradient ``(1 - t/v) / n``,
    exactly 0 at ``v = t = 3``. Without the select the NaN rate's gradient was 0.5."""
    y_true = np.float32([[2.0, 3.0]])
    y_pred = np.float32([[np.nan, 3.0]])
    value, (grad,) = regime.value_and_grad(S.poisson, y_true, y_pred, wrt=(1,))
    assert np.isnan(value[0]), value
    assert np.isnan(grad[0, 0]), grad
    assert grad[0, 1] == 0.0, grad  # (v - t) / v with v = t: exact zero


# ----------------------------------------------------------------------------
# Semi-hard triplet mining: a negative as far as the positive is not semi-hard
# ----------------------------------------------------------------------------


def _semi_hard_reference(points, labels, margin):
    """TFA's semi-hard triplet loss per anchor, in exact rationals (1-D points)."""
    n = len(points)
    d = [[Fraction(abs(points[i] - points[j])) for j in range(n)] for i in range(n)]
    pairs = sum(1 for a in range(n) for p in range(n) if p != a and labels[p] == labels[a])
    out = []
    for a in range(n):
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        total = Fraction(0)
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d[a][j] for j in negatives if d[a][j] > d[a][p]]  # strict: TFA
            nearest = min(farther) if farther else max(d[a][j] for j in negatives)
            total += max(d[a][p] - nearest + margin, Fraction(0))
        out.append(total * n / pairs)
    return out


def test_semi_hard_triplet_a_tie_with_the_positive_is_not_semi_hard(regime):
    """Guards semi-hard mining's strict ``d_an > d_ap``: for anchor 0 at 0, the positive
    at 1 and the negative at -1 are equally far, so that negative is not semi-hard and
    the farther one at 3 is chosen (loss 0, not 1 as with ``>=``). Integer points: every
    distance, and so the loss, is exact."""
    points = [0, 1, -1, 3]
    labels = np.int32([0, 0, 1, 1])
    x = np.float32(points)[:, None]
    value = regime.run(lambda y, e: S.triplet_loss(y, e, 1.0, strategy="semi_hard"), labels, x)
    expected = _semi_hard_reference(points, labels.tolist(), Fraction(1))
    assert expected == [0, 0, 3, 2]  # the closed form of this batch
    np.testing.assert_array_equal(value, [float(e) for e in expected])  # exact: small integers


# ----------------------------------------------------------------------------
# RobustScaler: the edges of clip and quantile_range
# ----------------------------------------------------------------------------


def test_robust_scaler_argument_edges():
    """Guards RobustScaler's argument checks at their edges: ``clip`` needs
    ``low < 0 < high`` strictly (the median maps to 0: a bound at 0 clips half the data),
    while ``quantile_range`` allows ``0 <= low`` and ``high <= 100`` inclusive (the full
    range is a valid choice)."""
    for clip in ((0.0, 5.0), (-5.0, 0.0)):
        with pytest.raises(ValueError, match="low < 0 < high"):
            RobustScaler(clip=clip)
    RobustScaler(clip=(-1e-30, 5.0))  # just below 0: accepted
    RobustScaler(quantile_range=(0.0, 100.0))  # both inclusive ends
    for quantile_range in ((-1.0, 75.0), (25.0, 100.5)):
        with pytest.raises(ValueError, match="quantile_range"):
            RobustScaler(quantile_range=quantile_range)


# ----------------------------------------------------------------------------
# NaNGuard: exactly `snapshots` snapshots are kept
# ----------------------------------------------------------------------------


def test_nanguard_keeps_exactly_snapshots_snapshots():
    """Guards NaNGuard's pruning ``len(good) > snapshots``: with ``snapshots=2`` both the
    snapshots of steps 3 and 6 are kept, and the rollback goes to the one with the lower
    loss after it. Zero weights and inputs with batch size 1 make batch i's loss exactly
    ``y_i**2``: 0.25 after step 3 (y = 0.5 on batches 4-5), 1 after step 6; step 8 is NaN.
    Pruning at ``>=`` kept only step 6."""
    y = np.ones((12, 1), np.float32)
    y[3:5] = 0.5
    assert _nanguard_rollback(y) == (8, 3)


# ----------------------------------------------------------------------------
# doctor: a zero-norm layer, a dead half, a labels dict with extra keys
# ----------------------------------------------------------------------------


def test_gradient_check_skips_a_layer_whose_weights_are_all_zero():
    """Guards ``check_gradients``'s ``weight <= 0`` skip: a zeros-initialised layer (weight
    norm 0) under SGD has no step-to-weight ratio; it is skipped, not divided by
    (``< 0`` raised ZeroDivisionError, so the doctor crashed on such models)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.ones((4, 1))).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(1, kernel_initializer="zeros", name="out")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    report = diagnose(model, x, y, trial_steps=0)
    assert report.find("gradient.exploding") == []


def _half_dead_relu_model(inputs, dead):
    """Dense(16, relu) with a zero kernel: units below ``dead`` have bias -1 (always 0)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.layers[0].kernel.assign(np.zeros((inputs, 16), np.float32))
    model.layers[0].bias.assign(np.where(np.arange(16) < dead, -1.0, 1.0).astype(np.float32))
    return model


def test_dead_relu_needs_a_strict_majority_of_dead_units():
    """Guards the dead-ReLU check's strict ``dead_fraction > DEAD_FRACTION`` (0.5, "a dead
    majority"): 8 of 16 dead units is no finding, 9 of 16 is one (``>=`` flagged 8)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    assert th.DEAD_FRACTION == 0.5
    model = _half_dead_relu_model(8, dead=8)
    model.compile(optimizer="adam", loss="mse")
    assert diagnose(model, x, y, trial_steps=0).find("activation.dead_relu") == []
    model.layers[0].bias.assign(np.where(np.arange(16) < 9, -1.0, 1.0).astype(np.float32))
    [dead] = diagnose(model, x, y, trial_steps=0).find("activation.dead_relu")
    assert (dead.evidence["dead_units"], dead.evidence["units"]) == (9, 16)


def test_named_output_pairs_ignores_extra_label_keys():
    """Guards ``named_output_pairs``'s ``set(y_true) >= set(y_pred)``: a labels dict with a
    key no output has (sample ids, say) still pairs by the outputs' names (``==`` raised
    ValueError)."""
    pairs = named_output_pairs({"a": 1, "b": 2, "extra": 3}, {"b": 20, "a": 10})
    assert pairs == [("a", 1, 10), ("b", 2, 20)]


# ----------------------------------------------------------------------------
# CLI: warnings alone exit 0
# ----------------------------------------------------------------------------


def test_cli_doctor_exits_0_when_the_findings_are_only_warnings(tmp_path, capsys):
    """Guards ``stableops doctor MODEL DATA``'s exit status: 1 only for error-severity
    findings (``report.errors``). A model with 10 of 16 ReLU units dead gives a warning
    and no error, so the status is 0 (``report.problems`` gave 1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.layers[0].kernel.assign(np.zeros((5, 16), np.float32))
    model.layers[0].bias.assign(np.where(np.arange(16) < 10, -1.0, 1.0).astype(np.float32))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    status = cli.main(["doctor", str(tmp_path / "m.keras"), str(tmp_path / "d.npz"), "--json"])
    report = json.loads(capsys.readouterr().out)
    severities = {f["check"]: f["severity"] for f in report["findings"]}
    assert severities.get("activation.dead_relu") == "warning", severities
    assert "error" not in severities.values(), severities
    assert status == 0
