"""diagnose: the trial run, the model-state checks, and advice that fits the model it is for."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

import stableops
from stableops.doctor import diagnose

N, F = 128, 6
RNG = np.random.default_rng(1)
X = RNG.normal(size=(N, F)).astype(np.float32)
Y = (X @ RNG.normal(size=(F, 1)) / np.sqrt(F)).astype(np.float32)
FLOAT16_MAX = 65504.0  # IEEE binary16's largest finite value
UNSCALED = FLOAT16_MAX**0.5  # 256: the README's "magnitudes above sqrt(65504)"


def mlp(inputs=F, **compile_args):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile(**{"optimizer": "adam", "loss": "mse", **compile_args})
    return model


def report_text(report):
    return str(report) + repr(report.to_dict())


# ---------------------------------------------------------------- model state


def test_weights_already_nan_are_named_as_the_cause():
    model = mlp()
    model.get_layer("hidden").kernel.assign(np.full((F, 8), np.nan, np.float32))
    report = diagnose(model, X, Y)
    cause = report.likely_cause
    assert cause.check == "weights.non_finite" and cause.severity == "error"
    assert cause.location == "layer 'hidden'" and report.errors[0] is cause
    # The layer that outputs NaN is explained by its weights, not "an op produced inf or NaN".
    [activation] = report.find("activation.non_finite")
    assert "weights" in activation.message and "an op produced" not in activation.message


def test_batch_norm_moving_statistics_gone_non_finite():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((F,)), keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    model.get_layer("bn").moving_variance.assign(np.full((F,), np.inf, np.float32))
    report = diagnose(model, X, Y, training=False)
    [state] = report.find("weights.state_non_finite")
    assert state.severity == "error" and state.location == "layer 'bn'"
    assert "moving statistics" in state.message and not report.find("weights.non_finite")


def test_a_last_batch_of_one_sample_feeding_batch_norm():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((F,)), keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    [finding] = diagnose(model, X[:33], Y[:33], batch_size=32).find("input.single_sample_batch")
    assert finding.location == "layer 'bn'" and finding.evidence["samples"] == 33
    assert not diagnose(model, X[:34], Y[:34], batch_size=32).find("input.single_sample_batch")
    assert not diagnose(mlp(), X[:33], Y[:33], batch_size=32).find(
        "input.single_sample_batch"
    )  # no BN


class Float16LayerNorm(keras.layers.LayerNormalization):
    """A layer normalisation that, unlike Keras's, computes in its (float16) compute dtype."""

    def call(self, inputs):
        inputs = tf.cast(inputs, self.compute_dtype)
        mean, variance = tf.nn.moments(inputs, axes=[-1], keepdims=True)
        epsilon = tf.cast(self.epsilon, inputs.dtype)
        return (inputs - mean) * tf.math.rsqrt(variance + epsilon)


def test_a_float16_normalisation_whose_epsilon_float16_cannot_hold(mixed_precision_policy):
    mixed_precision_policy("mixed_float16")
    constant_row = np.ones((4, F), np.float32)  # variance 0: only epsilon keeps rsqrt finite
    for layer, flagged in (
        (Float16LayerNorm(epsilon=1e-8), True),
        (keras.layers.LayerNormalization(epsilon=1e-8), False),
    ):
        model = keras.Sequential([keras.Input((F,)), layer, keras.layers.Dense(1, dtype="float32")])
        model.compile(optimizer="adam", loss="mse")
        # The premise, checked on the layer itself: only the float16 one breaks.
        assert np.isfinite(np.asarray(layer(constant_row), np.float32)).all() != flagged
        found = diagnose(model, X, Y, trial_steps=0).find("activation.norm_epsilon")
        assert bool(found) == flagged, type(layer).__name__


def test_an_optimizer_epsilon_below_the_variables_smallest_normal(mixed_precision_policy):
    mixed_precision_policy("float16")  # float16 variables, not mixed precision
    model = mlp(optimizer=keras.optimizers.Adam(epsilon=1e-7))
    mixed_precision_policy("float32")
    [finding] = diagnose(model, X, Y, trial_steps=0).find("optimizer.epsilon")
    assert finding.evidence["variable_dtype"] == "float16"
    assert not diagnose(
        mlp(optimizer=keras.optimizers.Adam(epsilon=1e-7)), X, Y, trial_steps=0
    ).find("optimizer.epsilon")  # float32 variables hold 1e-7 easily


# ---------------------------------------------------------------- inputs


def test_large_magnitude_alone_makes_features_unscaled():
    # Every feature x1000, all on the same scale: no spread, only magnitude.
    report = diagnose(mlp(), X * 1000.0, Y, trial_steps=0)
    [scale] = report.find("input.scale")
    assert scale.evidence["spread"] < 2
    # Just above and just below sqrt(float16 max): only the first is unscaled.
    noise = RNG.normal(size=(N, F)).astype(np.float32)
    assert diagnose(mlp(), 1.2 * UNSCALED + noise, Y, trial_steps=0).find("input.scale")
    assert not diagnose(mlp(), 0.8 * UNSCALED + noise, Y, trial_steps=0).find("input.scale")


def _scaled(scaler, x):
    return scaler.fit_transform(x).astype(np.float32)


@pytest.mark.parametrize(
    "features",
    [
        # Standardized digits: every standard deviation is 1, but the edge pixels' typical
        # |x| (75th percentile) is 0.03-0.3, 58x below the others'.
        lambda: _scaled(StandardScaler(), load_digits().data),
        # Pixels in [0, 1] on 32 rows: a pixel with one faint stroke has a typical |x| 64x
        # below the others' (its range is 1/16, 16x below).
        lambda: (load_digits().data[:32] / 16.0).astype(np.float32),
        lambda: _scaled(MinMaxScaler(), load_wine().data),
        lambda: _scaled(RobustScaler(), load_breast_cancer().data),
    ],
    ids=["standardized", "unit_pixels", "min_max", "robust"],
)
def test_data_scaled_by_a_usual_scaler_is_not_called_unscaled(features):
    x = features()
    y = np.zeros((len(x), 1), np.float32)
    assert not diagnose(mlp(inputs=x.shape[1]), x, y, trial_steps=0).find("input.scale")


def test_feature_scales_that_differ_by_every_measure_are_unscaled():
    # Breast cancer's raw features: areas up to 4254 beside smoothness near 0.1.
    x = load_breast_cancer().data.astype(np.float32)
    y = np.zeros((len(x), 1), np.float32)
    [scale] = diagnose(mlp(inputs=x.shape[1]), x, y, trial_steps=0).find("input.scale")
    assert scale.evidence["spread"] > 1e3
    assert scale.evidence["spread_measure"] in ("standard deviation", "range",
                                                "interquartile range")


def test_integer_features_fed_to_a_dense_layer_are_checked():
    counts = RNG.integers(0, 1_000_000, size=(N, F)).astype(np.int64)
    model = mlp()
    [scale] = diagnose(model, counts, Y, trial_steps=0).find("input.scale")
    assert scale.evidence["largest_magnitude"] > 1e5


def test_normalization_that_casts_raw_values_to_float16_gets_advice_that_can_work(
    mixed_precision_policy,
):
    mixed_precision_policy("mixed_float16")
    raw = X.copy()
    raw[:, 2] = 1e5 + 1e4 * np.abs(raw[:, 2])  # above float16's 65504
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(raw)
    model = keras.Sequential([keras.Input((F,)), norm, keras.layers.Dense(1, dtype="float32")])
    model.compile(optimizer="adam", loss="mse")
    [overflow] = diagnose(model, raw, Y, trial_steps=0).find("input.float16_overflow")
    assert "norm" in overflow.message
    assert "Normalization()" not in overflow.fix  # the layer that overflows is one
    assert "dtype='float32'" in overflow.fix


# ---------------------------------------------------------------- the trial run and real data


def test_raw_diabetes_with_a_stableops_loss_names_targets_and_learning_rate():
    data = load_diabetes(scaled=False)  # raw features, targets 25 .. 346
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)[:, None]
    model = mlp(
        inputs=x.shape[1],
        optimizer=keras.optimizers.SGD(1e-3),
        loss=stableops.losses.MeanSquaredError(),
    )
    report = diagnose(model, x, y)

    [trial] = report.find("trial.diverged")
    assert trial.severity == "error" and trial.evidence["diverged_at"] <= 5
    errors = [f.check for f in report.errors]
    assert errors[0] in ("input.scale", "labels.scale")  # the cause comes first, the trial last
    assert errors[-1] == "trial.diverged"
    assert {"labels.scale", "optimizer.learning_rate"} <= set(errors)
    rate = report.find("optimizer.learning_rate")[0].evidence["stable_learning_rate"]
    assert rate < 1e-3
    text = report_text(report)
    assert "__inference" not in text  # no traced function's name
    assert "use a stableops loss" not in text and "stableops.losses.MeanSquaredError()" not in text


def test_no_trial_without_labels_or_when_asked_and_no_false_alarm_on_a_healthy_run():
    model = mlp()
    assert any("trial run: 20 training steps" in note for note in diagnose(model, X, Y).notes)
    assert not any("trial" in note for note in diagnose(model, X, Y, trial_steps=0).notes)
    assert diagnose(model, X, Y).ok
    with pytest.raises(ValueError, match="trial_steps"):
        diagnose(model, X, Y, trial_steps=-1)


def test_diagnose_changes_no_state_of_the_model():
    # Two outputs with a loss each: Keras's compute_loss updates a loss tracker per output.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((F,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(1, name="a")(hidden),
            "b": keras.layers.Dense(1, name="b")(hidden),
        },
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss={"a": "mse", "b": "mae"},
        metrics={"a": ["mae"]},
    )
    targets = {"a": Y, "b": Y}
    model.fit(X, targets, batch_size=32, epochs=1, verbose=0)
    model.optimizer.learning_rate = 100.0  # the trial run diverges
    state = model.weights + model.metrics_variables + model.optimizer.variables
    before = [np.array(v.numpy()) for v in state]
    report = diagnose(model, X, targets)
    assert report.find("trial.diverged")
    for variable, value in zip(state, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
