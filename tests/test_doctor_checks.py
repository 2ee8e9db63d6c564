"""diagnose: the trial run, the model-state checks, and advice that fits the model it is for."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
)
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


@pytest.mark.parametrize(
    "loss, bounded",
    [
        (keras.losses.MeanSquaredError(), False),
        (keras.losses.MeanAbsoluteError(), True),
        (keras.losses.Huber(), True),
        (keras.losses.LogCosh(), True),
    ],
)
def test_unscaled_targets_are_said_to_scale_the_gradient_only_where_they_do(loss, bounded):
    x, y = load_diabetes(return_X_y=True)  # scaled features, raw targets 25 .. 346
    x, y = x.astype(np.float32), y.astype(np.float32)[:, None]
    [scale] = diagnose(mlp(inputs=x.shape[1], loss=loss), x, y, trial_steps=0).find("labels.scale")
    assert ("errors and gradients are" in scale.message) is not bounded, scale.message
    assert ("gradient is bounded" in scale.message) is bounded
    assert ("lower the learning rate" in scale.fix) is not bounded
    # The premise: the gradient at an output of 0 grows with the targets only for MSE.
    standardised = (y - y.mean()) / y.std()

    def gradient_norm(targets):
        outputs = tf.Variable(tf.zeros_like(targets))
        with tf.GradientTape() as tape:
            value = loss(targets, outputs)
        return float(tf.norm(tape.gradient(value, outputs)))

    ratio = gradient_norm(y) / gradient_norm(standardised)
    assert ratio > 10 if not bounded else ratio < 2, ratio


def test_no_trial_without_labels_or_when_asked_and_no_false_alarm_on_a_healthy_run():
    model = mlp()
    assert any("trial run: 20 training steps" in note for note in diagnose(model, X, Y).notes)
    assert not any("trial" in note for note in diagnose(model, X, Y, trial_steps=0).notes)
    assert diagnose(model, X, Y).ok
    with pytest.raises(ValueError, match="trial_steps"):
        diagnose(model, X, Y, trial_steps=-1)


def _a_row_left_out_of_the_model_sample(n, model_rows):
    from stableops.doctor._data import take_sample

    _, sampled, _ = take_sample(np.zeros((n, 1)), np.arange(n), max_samples=model_rows)
    return int(np.setdiff1d(np.arange(n), sampled)[0])


def test_rows_with_a_non_finite_label_are_in_the_model_sample():
    x, y = load_diabetes(return_X_y=True)  # 442 rows; the model sample holds 256
    x, y = x.astype(np.float32), ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
    y[_a_row_left_out_of_the_model_sample(len(y), 256)] = np.nan
    report = diagnose(mlp(inputs=x.shape[1]), x, y)
    assert report.find("labels.non_finite"), report
    assert any("gradients were not checked" in note for note in report.notes), report.notes
    assert not any("stayed finite" in note for note in report.notes), report.notes


def test_a_finite_trial_does_not_speak_for_rows_it_did_not_see():
    x, y = load_iris(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    y = y.copy()
    y[_a_row_left_out_of_the_model_sample(len(y), 16)] = 3  # out of range: 3 classes
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    report = diagnose(model, x, y, batch_size=8, max_batches=2)
    assert report.errors[0].check == "labels.range", report
    [note] = [note for note in report.notes if "stayed finite" in note]
    assert "the errors above stand" in note


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


def test_the_trial_copy_computes_what_the_model_computes():
    # Raw breast-cancer features, normalised by an adapted Normalization layer: it
    # divides by a mean and variance built from its variables when it is adapted or
    # loaded, which copying the variables alone does not rebuild.
    from stableops.doctor._trial import copy_model

    x, y = load_breast_cancer(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.float32)[:, None]
    norm = keras.layers.Normalization()
    norm.adapt(x)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([  # fresh layers: Keras 3.10 cannot trace another model's
        keras.Input((x.shape[1],)),
        norm,
        keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(1, name="out"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    copy, _ = copy_model(model)
    np.testing.assert_allclose(copy.predict(x[:64], verbose=0), model.predict(x[:64], verbose=0))
    report = diagnose(model, x, y)
    assert not report.find("trial.diverged"), report
    assert any("trial run: 20 training steps" in note for note in report.notes)


class _UnregisteredMSE(keras.losses.Loss):
    """A Loss subclass that Keras cannot look up by name (not registered)."""

    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


def _unregistered_mse(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


def _unregistered_mae(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)


@pytest.mark.parametrize("loss", [_UnregisteredMSE(), _unregistered_mse])
def test_a_model_with_a_custom_loss_and_metric_gets_a_trial_run(loss):
    # Keras's clone_model would compile the copy from the compile config: TypeError.
    model = mlp(optimizer=keras.optimizers.SGD(5.0), loss=loss, metrics=[_unregistered_mae])
    report = diagnose(model, X, Y)
    assert not any("no trial run" in note for note in report.notes), report.notes
    assert report.find("trial.diverged") and report.find("optimizer.learning_rate"), report
    assert model.compiled and model.get_compile_config()["loss"] is not None


class _Shift(keras.layers.Layer):
    """State outside the config and the variables: a copy does not get it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shift = 0.0

    def call(self, inputs):
        return inputs + self.shift


def test_no_trial_of_a_copy_that_computes_something_else():
    shift = _Shift()
    shift.shift = 1e3
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((F,)), shift, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    report = diagnose(model, X, Y)
    assert not report.find("trial.diverged")
    assert any("does not compute what the model computes" in note for note in report.notes)


def test_the_trial_copy_keeps_the_loss_weights():
    # A target in raw units (~1e5) whose loss the model down-weights by 1e-10.
    x, target = load_diabetes(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    targets = {
        "label": (target > np.median(target)).astype(np.float32)[:, None],
        "amount": (target * 1000).astype(np.float32)[:, None],
    }
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(
        inputs,
        {
            "label": keras.layers.Dense(1, activation="sigmoid", name="label")(hidden),
            "amount": keras.layers.Dense(1, name="amount")(hidden),
        },
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss={"label": "binary_crossentropy", "amount": "mse"},
        loss_weights={"label": 1.0, "amount": 1e-10},
    )
    report = diagnose(model, x, targets)
    assert not report.find("trial.diverged"), report
    assert any("trial run: 20 training steps" in note for note in report.notes)


def test_one_loss_for_several_outputs_is_applied_to_each():
    x, y = load_diabetes(return_X_y=True)
    x, y = x.astype(np.float32), ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    heads = [keras.layers.Dense(1, name=name)(hidden) for name in ("a", "b")]
    for outputs, targets in (
        (dict(zip("ab", heads)), {"a": y, "b": -y}),
        (heads, [y, -y]),
    ):
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss="mse")  # Keras applies it to every output
        report = diagnose(model, x, targets)
        assert report.ok and not report.find("loss.raised"), report
        assert not any("not checked" in note for note in report.notes), report.notes
        assert any("trial run: 20 training steps" in note for note in report.notes)
    # Labels that do not match the outputs: said in a note, not a loss error.
    report = diagnose(model, x, y, trial_steps=0)
    assert report.ok and any("do not match the model's outputs" in note for note in report.notes)


def _two_heads(inputs, classes):
    """A model with a softmax head 'cls' and a regression head 'reg'."""
    keras.utils.set_random_seed(0)
    x = keras.Input((inputs,))
    hidden = keras.layers.Dense(8, activation="relu")(x)
    cls = keras.layers.Dense(classes, activation="softmax", name="cls")(hidden)
    return x, hidden, cls, keras.layers.Dense(1, name="reg")(hidden)


def test_labels_out_of_range_for_one_output_of_a_loss_dict_are_found_per_output():
    x, y = load_wine(return_X_y=True)  # classes 0, 1, 2
    x = StandardScaler().fit_transform(x).astype(np.float32)
    inputs, _, cls, reg = _two_heads(x.shape[1], classes=2)  # one class too few
    model = keras.Model(inputs, {"cls": cls, "reg": reg})
    model.compile("adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    targets = {"cls": y, "reg": x[:, :1]}
    report = diagnose(model, x, targets)  # eagerly, the loss raises on label 2
    assert report.errors[0].check == "labels.range", report
    assert report.errors[0].location == "labels 'cls'"
    assert report.find("loss.raised") and not report.find("trial.diverged")
    # A NaN label of one output: the loss is not finite, so no gradient "from a finite loss".
    targets = {"cls": np.minimum(y, 1), "reg": x[:, :1].copy()}
    targets["reg"][5] = np.nan
    report = diagnose(model, x, targets)
    assert [f.check for f in report.errors] == ["labels.non_finite"], report
    assert report.errors[0].location == "labels 'reg'"


def test_a_per_output_loss_that_raises_is_a_finding_not_a_crash():
    def non_negative_mse(y_true, y_pred):
        tf.debugging.assert_non_negative(y_true, message="targets must be non-negative")
        return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    inputs, _, cls, reg = _two_heads(F, classes=2)
    model = keras.Model(inputs, [cls, reg])
    model.compile("adam", loss=["sparse_categorical_crossentropy", non_negative_mse])
    report = diagnose(model, X, [(Y[:, 0] > 0).astype(np.int32), Y])
    [raised] = report.find("loss.raised")
    assert raised.severity == "error" and "non-negative" in raised.message, report
    assert not report.find("labels.range")


def test_vanishing_gradients_need_a_step_that_scales_with_the_gradient():
    def tiny_mse(y_true, y_pred):  # gradients ~1e-6: SGD's step lr * g is rounded away
        return 1e-6 * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    sgd = mlp(optimizer=keras.optimizers.SGD(1e-3), loss=tiny_mse)
    assert diagnose(sgd, X, Y, trial_steps=0).find("gradient.vanishing")
    adam = mlp(optimizer=keras.optimizers.Adam(1e-3), loss=tiny_mse)
    assert not diagnose(adam, X, Y, trial_steps=0).find("gradient.vanishing")
    # The premise: Adam's step is ~lr per weight, whatever the gradient's size.
    before = adam.get_layer("hidden").kernel.numpy().copy()
    adam.train_on_batch(X[:32], Y[:32])
    assert np.abs(adam.get_layer("hidden").kernel.numpy() - before).max() > 1e-4


def _batch_norm_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((F,)), keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.mark.parametrize(
    "rows, batch, pipeline, flagged",
    [
        (49, 16, "batch", True),
        (33, 11, "batch", False),
        (1001, 20, "batch", True),  # read at its last index: tf.data has random access to it
        (1001, 20, "map", False),  # no random access: not read through for this
        (49, 16, "repeat", False),  # no last batch
    ],
    ids=["last_of_1", "even", "longer_than_the_sample", "mapped", "repeated"],
)
def test_a_datasets_own_batches_decide_the_single_sample_batch(rows, batch, pipeline, flagged):
    dataset = tf.data.Dataset.from_tensor_slices((np.resize(X, (rows, F)), np.resize(Y, (rows, 1))))
    if pipeline == "map":
        dataset = dataset.map(lambda x, y: (2.0 * x, y))
    dataset = dataset.batch(batch)
    dataset = dataset.repeat() if pipeline == "repeat" else dataset
    found = diagnose(_batch_norm_model(), dataset, trial_steps=0).find(
        "input.single_sample_batch"
    )
    assert bool(found) == flagged
    if flagged:
        assert found[0].evidence["batch_size"] == batch and found[0].evidence["last_batch"] == 1


@pytest.mark.parametrize(
    "features",
    [
        lambda: (load_digits().data / 16.0).astype(np.float32),  # mostly-zero pixels: MAD 0
        lambda: (load_digits().data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1),
        lambda: _scaled(StandardScaler(), load_digits().data),  # sparse pixels up to 42 SDs
        lambda: _scaled(StandardScaler(), load_breast_cancer().data),  # skewed, up to 12 SDs
        lambda: _scaled(MinMaxScaler(), load_wine().data),
        lambda: _scaled(RobustScaler(), load_breast_cancer().data),
    ],
    ids=["unit_pixels", "unit_images", "standardized_digits", "standardized_cancer", "min_max",
         "robust"],
)
def test_ordinary_scaled_data_has_no_outliers(features):
    x = features()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(x.shape[1:]), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    assert not diagnose(model, x, np.zeros((len(x), 1), np.float32), trial_steps=0).find(
        "input.outliers"
    )


def test_values_far_out_of_standardized_data_are_outliers():
    x = _scaled(StandardScaler(), load_wine().data)
    x[[3, 50], 2] = 1e4
    [outliers] = diagnose(
        mlp(inputs=x.shape[1]), x, np.zeros((len(x), 1), np.float32), trial_steps=0
    ).find("input.outliers")
    assert outliers.location == "input feature 2" and outliers.evidence["outlier_values"] == 2


def test_a_learning_rate_too_large_for_healthy_data_is_the_likely_cause():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(50.0),
        loss=stableops.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    report = diagnose(model, x, y)
    assert report.find("trial.diverged") and report.find("optimizer.learning_rate")
    assert report.likely_cause.check == "optimizer.learning_rate", report


def test_a_handful_of_rows_gives_no_statistical_verdict():
    x = _scaled(StandardScaler(), load_wine().data)
    model = mlp(inputs=x.shape[1])
    for rows in (2, 3, 5):
        report = diagnose(model, x[:rows], np.zeros((rows, 1), np.float32), trial_steps=0)
        assert not report.find("input"), (rows, report)
    # A magnitude needs no statistics: three rows of values ~1e5 are unscaled.
    assert diagnose(model, x[:3] * 1e5, np.zeros((3, 1), np.float32), trial_steps=0).find(
        "input.scale"
    )
    with pytest.raises(ValueError, match="empty"):
        diagnose(model, x[:0], np.zeros((0, 1), np.float32))


def test_the_minimum_row_counts_follow_from_their_derivations():
    from scipy import stats

    from stableops.doctor import _thresholds as th

    samuelson = lambda n: (n - 1) / np.sqrt(n)  # noqa: E731 - the largest possible z in n values
    assert samuelson(th.MIN_OUTLIER_VALUES) > th.OUTLIER_Z >= samuelson(th.MIN_OUTLIER_VALUES - 1)
    pairs = 1000 * 999 / 2
    chance = lambda n: stats.f.sf(th.SCALE_SPREAD**2, n - 1, n - 1) * pairs  # noqa: E731
    assert chance(th.MIN_SPREAD_ROWS) < 1e-3 <= chance(th.MIN_SPREAD_ROWS - 1)


def test_rescaling_first_counts_as_scaling_the_inputs():
    pixels = (load_digits().data * 16).astype(np.float32)  # 0 .. 256, like 8-bit pixels
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Rescaling(1 / 255.0), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    zeros = np.zeros((len(pixels), 1), np.float32)
    assert not diagnose(model, pixels, zeros, trial_steps=0).find("input")
    # A common factor does not bring features of different scales together.
    raw = load_breast_cancer().data.astype(np.float32)
    model = keras.Sequential(
        [keras.Input((30,)), keras.layers.Rescaling(1 / 1000.0), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    assert diagnose(model, raw, np.zeros((len(raw), 1), np.float32), trial_steps=0).find(
        "input.scale"
    )


# ------------------------------------------- loss scaling, random state, rates, sample size


def _diabetes_mixed_float16():
    x, y = load_diabetes(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model, x, (y / 10.0).astype(np.float32)


def test_gradients_overflowing_only_at_the_initial_loss_scale_are_not_non_finite(
    mixed_precision_policy,
):
    mixed_precision_policy("mixed_float16")
    model, x, y = _diabetes_mixed_float16()
    report = diagnose(model, x, y, trial_steps=0)
    assert not report.find("gradient.non_finite"), report
    # The premise: at the scaler's initial scale (2**15) these gradients overflow
    # float16, and fit trains anyway: the dynamic scaler halves its scale.
    with tf.GradientTape() as tape:
        scaled = model.compute_loss(x=x[:32], y=y[:32], y_pred=model(x[:32])) * 2.0**15
    grads = tape.gradient(scaled, model.trainable_variables)
    assert not all(np.isfinite(g.numpy()).all() for g in grads)
    losses = model.fit(x, y, epochs=3, batch_size=32, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_a_gradient_non_finite_at_every_loss_scale_is_still_reported(mixed_precision_policy):
    mixed_precision_policy("mixed_float16")
    x = _scaled(StandardScaler(), load_wine().data)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Lambda(lambda t: keras.ops.sqrt(t), name="root"),  # d sqrt(0) = inf
            keras.layers.Dense(1, dtype="float32", name="out"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, x, np.zeros((len(x), 1), np.float32), trial_steps=0)
    [finding] = report.find("gradient.non_finite")
    assert finding.evidence["layer"] == "hidden" and finding.evidence["op"] != "unknown"


def test_diagnose_leaves_the_global_random_state_as_it_found_it():
    x = _scaled(StandardScaler(), load_breast_cancer().data)
    y = load_breast_cancer().target.astype(np.float32)[:, None]

    def weights_of_a_layer_built_after(call_diagnose):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((30,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(optimizer="adam", loss="binary_crossentropy")
        if call_diagnose:
            diagnose(model, x, y, trial_steps=2)  # the trial copies the model
        later = keras.layers.Dense(4)
        later.build((None, 30))
        return later.kernel.numpy(), np.random.random()

    (kernel, numpy_draw), (expected, numpy_expected) = (
        weights_of_a_layer_built_after(True),
        weights_of_a_layer_built_after(False),
    )
    np.testing.assert_array_equal(kernel, expected)
    assert numpy_draw == numpy_expected


def _breast_cancer_classifier(optimizer):
    """Standardized breast-cancer data and a small ReLU classifier compiled with ``optimizer``."""
    data = load_breast_cancer()
    x = _scaled(StandardScaler(), data.data)
    y = data.target.astype(np.float32)[:, None]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model, x, y


@pytest.mark.parametrize(
    "optimizer, rate",
    [
        (lambda: keras.optimizers.SGD(1000.0), 1000.0),
        (lambda: keras.optimizers.Adam(50.0), 50.0),
        # A schedule's rates are scaled as a whole (its trials raised TypeError, unnamed).
        (
            lambda: keras.optimizers.SGD(
                keras.optimizers.schedules.ExponentialDecay(1000.0, 100, 0.9)
            ),
            1000.0,
        ),
    ],
    ids=["sgd", "adam", "sgd_schedule"],
)
def test_a_learning_rate_far_above_the_default_is_named(optimizer, rate):
    model, x, y = _breast_cancer_classifier(optimizer())
    report = diagnose(model, x, y)
    assert not report.find("input"), report
    assert report.likely_cause.check == "optimizer.learning_rate", report
    scheduled = isinstance(model.optimizer.get_config()["learning_rate"], dict)
    assert ("schedule's rates" in report.likely_cause.fix) == scheduled, report
    # The first rate a decade at a time below the set one at which a copy trains (which one
    # depends on the release: Adam's copy trained at 0.05 on Keras 3.15, at 0.5 on 3.10);
    # below 10x and 100x lower, the only rates tried before.
    stable = report.likely_cause.evidence["stable_learning_rate"]
    decades = np.log10(rate / stable)
    assert decades == pytest.approx(round(decades)) and 1 <= decades <= 6, stable
    # The inputs are scaled: the exploding step (SGD's) is not blamed on them.
    for exploding in report.find("gradient.exploding"):
        assert exploding.severity == "warning" and "scale the inputs" not in exploding.fix


def test_lower_rate_trials_reach_the_optimizers_default_rate():
    from stableops.doctor._trial import lower_rate_factors

    assert lower_rate_factors(keras.optimizers.SGD(1000.0), 1000.0)[-1] == pytest.approx(1e-5)
    assert lower_rate_factors(keras.optimizers.Adam(50.0), 50.0)[-1] == pytest.approx(1e-5)
    # Near the default, 10x and 100x lower as before; never more than 6 decades.
    assert lower_rate_factors(keras.optimizers.SGD(0.1), 0.1) == pytest.approx((0.1, 0.01))
    assert len(lower_rate_factors(keras.optimizers.Adam(1e9), 1e9)) == 6


def test_relu_units_are_not_called_dead_from_a_single_sample():
    model, x, y = _breast_cancer_classifier("adam")
    for rows in (1, 7):
        assert not diagnose(model, x[:rows], y[:rows], trial_steps=0).find("activation.dead_relu")
    # Really dead units are still found on enough samples.
    model.layers[0].bias.assign(np.full(16, -50.0, np.float32))
    [dead] = diagnose(model, x[:8], y[:8], trial_steps=0).find("activation.dead_relu")
    assert dead.evidence["dead_units"] == 16


@pytest.mark.parametrize(
    "wrap", [lambda y: [y], lambda y: (y,), lambda y: {"out": y}], ids=["list", "tuple", "dict"]
)
def test_labels_of_a_single_output_model_in_a_one_element_structure(wrap):
    """``fit`` takes ``[y]`` for a model with one output. The doctor compared the list with the
    output, and Keras's loss raised on the shapes: a false ``loss.raised`` error. Wrapped
    labels now give the findings that the bare labels give."""
    model, x, y = _breast_cancer_classifier("adam")
    healthy = diagnose(model, x, wrap(y), trial_steps=0)
    assert not healthy.errors, healthy
    bad = y.copy()
    bad[:5] = 3.0  # outside binary cross-entropy's [0, 1]
    expected = {f.check for f in diagnose(model, x, bad, trial_steps=0).findings}
    assert "labels.range" in expected
    assert {f.check for f in diagnose(model, x, wrap(bad), trial_steps=0).findings} == expected


def test_ids_outside_an_embeddings_table():
    """Token ids past an Embedding's ``input_dim`` (or negative): TF's CPU gather raised from
    inside ``diagnose`` (a GPU's reads zeros). They are now an ``input.index_range`` error
    naming the input, the layer and the user's rows, and the model is not run on them."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(64, 6)).astype(np.int32)
    numbers = rng.normal(size=(64, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=(64, 1)).astype(np.float32)
    token_input = keras.Input((6,), dtype="int32", name="tokens")
    number_input = keras.Input((3,), name="numbers")
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(50, 4, name="vocab")(token_input)
    )
    merged = keras.layers.Concatenate()([pooled, keras.layers.Dense(4)(number_input)])
    outputs = keras.layers.Dense(1, activation="sigmoid")(merged)
    model = keras.Model({"tokens": token_input, "numbers": number_input}, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = {"tokens": tokens, "numbers": numbers}
    assert not diagnose(model, x, y, trial_steps=0).find("input.index_range")

    tokens[17, 2], tokens[3, 0], tokens[3, 5] = 50, -1, 70
    [found] = diagnose(model, x, y).find("input.index_range")
    assert found.severity == "error" and found.location == "input 'tokens' -> layer 'vocab'"
    assert found.evidence["samples"] == [3, 17] and found.evidence["ids_outside"] == 3
    assert (found.evidence["id_min"], found.evidence["id_max"]) == (-1, 70)
