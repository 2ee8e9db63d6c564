"""stableops.diagnose: each finding triggered by a crafted model and data, absent when healthy."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.preprocessing import StandardScaler

import stableops
from stableops.doctor import Finding, Report, diagnose
from stableops.doctor import _registry as registry
from stableops.doctor import _thresholds as th
from stableops.doctor._data import take_sample
from stableops.doctor._report import in_user_rows

N, F = 128, 6
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, F)).astype(np.float32)  # well scaled: unit normal features
Y_REG = (np.tanh(X) @ RNG.normal(size=(F, 1)) / np.sqrt(F)).astype(np.float32)
Y_BIN = (X[:, :1] + X[:, 1:2] > 0).astype(np.float32)
Y_CLS = (np.argmax(X[:, :4], axis=1)).astype(np.int32)  # 4 classes


def mlp(outputs=1, activation=None, hidden="relu", inputs=F, name=None, **dense):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(16, activation=hidden, name="hidden", **dense),
            keras.layers.Dense(outputs, activation=activation, name="out"),
        ],
        name=name,
    )


def checks(report):
    return {f.check for f in report.findings}


def only(report, check):
    found = report.find(check)
    assert len(found) == 1, report
    return found[0]


# ---------------------------------------------------------------- healthy models


def _healthy_regression():
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    return model, X, Y_REG


def _healthy_tanh_classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((F,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy())
    return model, X, keras.utils.to_categorical(Y_CLS, 4)


def _healthy_sequences():
    keras.utils.set_random_seed(0)
    tokens = RNG.integers(1, 20, size=(N, 8))
    tokens[:, 5:] = 0  # padded, but no row is empty
    model = keras.Sequential(
        [
            keras.Input((8,), dtype="int32"),
            keras.layers.Embedding(20, 4, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model, tokens, Y_BIN


def _healthy_scaled_raw_features():
    # Raw unscaled features are fine once a normalisation layer reads them.
    raw = X * np.array([1, 10, 1e3, 1e4, 1e5, 1], dtype=np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(raw)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((F,)), norm, keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model, raw, Y_REG


@pytest.mark.parametrize(
    "build",
    [
        _healthy_regression,
        _healthy_tanh_classifier,
        _healthy_sequences,
        _healthy_scaled_raw_features,
    ],
)
def test_no_false_alarms_on_healthy_models(build):
    model, x, y = build()
    report = diagnose(model, x, y)
    assert report.ok, report
    assert report.problems == []
    assert report.likely_cause is None


# ---------------------------------------------------------------- inputs


def test_non_finite_inputs():
    x = X.copy()
    x[3, 2] = np.nan
    x[7, 2] = np.inf
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, x, Y_REG)
    finding = only(report, "input.non_finite")
    assert finding.severity == "error"
    assert finding.location == "input feature 2"
    assert finding.evidence["nonfinite_values"] == 2
    assert report.likely_cause is finding


def test_unscaled_features():
    x = X.copy()
    x[:, 4] *= 5e4
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, x, Y_REG)
    finding = only(report, "input.scale")
    assert finding.severity == "warning"
    assert finding.location == "input feature 4"
    assert finding.evidence["unscaled_features"] == [4]
    assert finding.evidence["spread"] > th.SCALE_SPREAD
    assert "RobustScaler" in finding.fix and "Normalization" in finding.fix


def test_outliers():
    x = X.copy()
    x[[5, 40], 1] = 300.0  # 300 robust SDs out
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, x, Y_REG)
    finding = only(report, "input.outliers")
    assert finding.location == "input feature 1"
    assert finding.evidence["outlier_values"] == 2
    assert finding.evidence["max_robust_z"] > 100
    assert "input.scale" not in checks(report)  # typical magnitudes are unchanged


def test_float16_input_overflow(mixed_precision_policy):
    mixed_precision_policy("mixed_float16")
    x = X.copy()
    x[:, 0] = 7e4 + np.abs(x[:, 0])  # above float16's 65504
    model = mlp(activation="sigmoid")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    report = diagnose(model, x, Y_BIN)
    overflow = only(report, "input.float16_overflow")
    assert overflow.severity == "error" and overflow.location == "input feature 0"
    first = only(report, "activation.non_finite")
    assert first.location == "layer 'hidden'"
    assert first.evidence["op"] == "Cast"
    assert "float16 overflow" in first.message


# ---------------------------------------------------------------- labels


def _classifier(loss, outputs=4, activation="softmax"):
    model = mlp(outputs=outputs, activation=activation)
    model.compile(optimizer="adam", loss=loss)
    return model


def test_sparse_labels_out_of_range():
    y = Y_CLS.copy()
    y[[2, 9]] = 4
    report = diagnose(_classifier(keras.losses.SparseCategoricalCrossentropy()), X, y)
    finding = only(report, "labels.range")
    assert finding.severity == "error"
    assert finding.evidence["num_classes"] == 4
    assert finding.evidence["bad_labels"] == 2
    assert finding.evidence["bad_values"] == ["4"]
    assert report.likely_cause is finding
    # Keras raises on these labels eagerly: reported, not crashed.
    assert "Received a label value of 4" in only(report, "loss.raised").message


def test_sparse_labels_that_are_one_hot():
    report = diagnose(
        _classifier("sparse_categorical_crossentropy"), X, keras.utils.to_categorical(Y_CLS, 4)
    )
    assert only(report, "labels.shape").severity == "error"


def test_ignore_class_is_not_out_of_range():
    y = Y_CLS.copy()
    y[[2, 9]] = 7
    loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=7)
    report = diagnose(_classifier(loss), X, y)
    assert "labels.range" not in checks(report)


def test_one_hot_rows_must_sum_to_one():
    y = keras.utils.to_categorical(Y_CLS, 4)
    y[[0, 1, 2]] = 0.0  # missing class
    y[5] = [1, 1, 0, 0]
    report = diagnose(_classifier(keras.losses.CategoricalCrossentropy()), X, y)
    finding = only(report, "labels.one_hot_sum")
    assert finding.evidence["bad_rows"] == 4
    assert finding.evidence["min_sum"] == 0 and finding.evidence["max_sum"] == 2


def test_binary_labels_outside_unit_interval():
    y = np.where(Y_BIN > 0, 1.0, -1.0).astype(np.float32)  # SVM-style labels
    report = diagnose(
        _classifier(keras.losses.BinaryCrossentropy(), outputs=1, activation="sigmoid"), X, y
    )
    finding = only(report, "labels.range")
    assert finding.evidence["label_min"] == -1


def test_non_finite_labels():
    y = Y_REG.copy()
    y[4] = np.nan
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, X, y)
    assert only(report, "labels.non_finite").evidence["samples"] == [4]


# ---------------------------------------------------------------- activations


def _empty_rows_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(10, 3, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(name="pool"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def test_fully_masked_rows_are_named_as_the_cause():
    tokens = RNG.integers(1, 10, size=(64, 6))
    tokens[[3, 30, 50]] = 0  # empty documents
    report = diagnose(_empty_rows_model(), tokens, Y_BIN[:64], batch_size=16)
    finding = only(report, "activation.non_finite")
    assert finding.location == "layer 'pool'"
    assert finding.evidence["op"] in ("RealDiv", "Div", "DivNoNan")
    assert finding.evidence["samples"] == [3, 30, 50]
    assert finding.evidence["fully_masked_rows"] == [3, 30, 50]
    assert "fully masked" in finding.message
    assert "safe_divide" in finding.fix
    assert "gradient.non_finite" not in checks(report)  # not checked downstream of a NaN forward


def test_saturated_tanh_units():
    model = mlp(hidden="tanh", kernel_initializer=keras.initializers.RandomNormal(stddev=30.0))
    model.compile(optimizer="adam", loss="mse")
    finding = only(diagnose(model, X, Y_REG), "activation.saturated")
    assert finding.location == "layer 'hidden'"
    assert finding.evidence["saturated_fraction"] > th.SATURATED_FRACTION


def test_dead_relu_units():
    model = mlp(bias_initializer=keras.initializers.Constant(-100.0))
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, X, Y_REG)
    finding = only(report, "activation.dead_relu")
    assert finding.severity == "error"  # every unit is dead
    assert finding.evidence["dead_units"] == finding.evidence["units"] == 16
    # ... so the hidden layer gets no gradient at all.
    assert only(report, "gradient.vanishing").evidence["layers"] == ["hidden"]


def test_float16_headroom(mixed_precision_policy):
    mixed_precision_policy("mixed_float16")
    model = mlp(kernel_initializer="ones")
    model.compile(optimizer="adam", loss="mse")
    x = np.abs(X) * 1000.0  # hidden activations ~ 6 * 1000 * |x|: under 65504, within 16x
    finding = only(diagnose(model, x, Y_REG), "activation.float16_headroom")
    assert finding.severity == "warning"
    assert 1.0 < finding.evidence["headroom"] < th.FLOAT16_MIN_HEADROOM


# ---------------------------------------------------------------- gradients


def test_exploding_gradients_at_a_huge_learning_rate():
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(1e4), loss="mse")
    report = diagnose(model, X, Y_REG)
    finding = only(report, "gradient.exploding")
    assert finding.evidence["learning_rate"] == pytest.approx(1e4)
    assert finding.evidence["step_ratio"] > th.EXPLODING_STEP_RATIO
    assert not report.find("input")  # the data is fine


def test_exploding_gradients_are_judged_only_for_a_step_that_scales_with_them():
    prices = (Y_REG * 2e5 + 1e6).astype(np.float32)  # unscaled targets: |g| ~ 1e6
    sgd = mlp()
    sgd.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    assert diagnose(sgd, X, prices, trial_steps=0).find("gradient.exploding")
    adam = mlp()
    adam.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    report = diagnose(adam, X, prices, trial_steps=0)
    assert report.find("labels.scale") and not report.find("gradient.exploding"), report
    # The premise: Adam's step is ~lr per weight, far below the weights' norm.
    before = adam.get_layer("out").kernel.numpy().copy()
    adam.train_on_batch(X[:32], prices[:32])
    step = np.linalg.norm(adam.get_layer("out").kernel.numpy() - before)
    assert step < 0.1 * np.linalg.norm(before)


def test_non_finite_gradient_with_finite_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((F,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Lambda(lambda t: keras.ops.sqrt(t), name="root"),  # d sqrt(0) = inf
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, X, Y_REG)
    finding = only(report, "gradient.non_finite")
    assert finding.severity == "error"
    assert finding.evidence["layer"] == "hidden"
    assert finding.evidence["op"] != "unknown"
    assert "activation.non_finite" not in checks(report) and "loss.non_finite" not in checks(report)


# ---------------------------------------------------------------- the loss


def test_log_of_a_negative_prediction_in_a_custom_loss():
    def log_loss(y_true, y_pred):
        return -keras.ops.mean(keras.ops.log(y_pred), axis=-1)

    model = mlp()  # linear output: some predictions are negative
    model.compile(optimizer="adam", loss=log_loss)
    report = diagnose(model, X, Y_REG)
    finding = only(report, "loss.non_finite")
    assert finding.evidence["op"] == "Log"
    assert finding.evidence["nonfinite_samples"] > 0
    assert "loss.drop_in" not in checks(report)  # not a Keras loss


def _saturated_classifier(after=(), dtype=None):
    """A sigmoid classifier whose logit is 40 for every sample: sigmoid is exactly 1.0 in
    float32 and float16, so the samples labelled 0 predict probability 1 for the wrong class."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((F,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(
                1,
                activation="sigmoid",
                kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(40.0),
                dtype=dtype,
            ),
            *after,
        ]
    )


@pytest.mark.parametrize(
    "where", ["an op after the sigmoid", "a float16 output under a Keras loss"]
)
def test_probabilities_at_zero_or_one_fed_to_a_log(where):
    # The logits are lost on the way to the loss: Keras clips the probability 1.0 to
    # 1 - 1e-7, a constant loss with gradient 0.
    if where == "an op after the sigmoid":
        model = _saturated_classifier(after=[keras.layers.Lambda(lambda p: p * 1.0)])
    else:
        model = _saturated_classifier(dtype="mixed_float16")
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy())
    finding = only(diagnose(model, X, Y_BIN, trial_steps=0), "loss.clipped_probabilities")
    # Every sample predicts exactly 1.0; the ones labelled 0 are stuck.
    assert finding.evidence["clipped_predictions"] == N
    assert finding.evidence["stuck_samples"] == int((Y_BIN == 0).sum())
    assert "from_logits=True" in finding.fix
    assert ("float16" in finding.fix) == ("float16" in where)


@pytest.mark.parametrize(
    "loss", [keras.losses.BinaryCrossentropy(), stableops.losses.BinaryCrossentropy()],
    ids=["keras", "stableops"],
)
def test_a_loss_that_reads_the_logits_behind_a_sigmoid_is_not_stuck(loss):
    # Keras 3's cross-entropy and stableops's read the logits a sigmoid layer leaves on its
    # output: a sample at logit 40 labelled 0 has loss 40 and slope 1, not a clipped
    # constant. The doctor said it was stuck (found on breast cancer's raw features).
    model = _saturated_classifier()
    model.compile(optimizer="adam", loss=loss)
    probabilities = model(X)
    assert (probabilities.numpy() == 1.0).all()
    np.testing.assert_allclose(loss(np.zeros((N, 1), np.float32), probabilities), 40.0, rtol=1e-6)
    assert "loss.clipped_probabilities" not in checks(diagnose(model, X, Y_BIN, trial_steps=0))


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "categorical"])
@pytest.mark.parametrize("logits_lost", [True, False], ids=["op after softmax", "softmax"])
def test_a_softmax_at_one_is_stuck_only_where_the_logits_are_lost(sparse, logits_lost):
    # Class 0's logit is 200 above the others: softmax is exactly [1, 0, 0] in float32.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((F,)),
            keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant([200.0, 0.0, 0.0])),
            *([keras.layers.Lambda(lambda p: p * 1.0)] if logits_lost else []),
        ]
    )
    classes = (np.arange(N) % 3).astype(np.int32)
    labels = classes if sparse else np.eye(3, dtype=np.float32)[classes]
    loss = (keras.losses.SparseCategoricalCrossentropy() if sparse
            else keras.losses.CategoricalCrossentropy())
    model.compile(optimizer="adam", loss=loss)
    report = diagnose(model, X, labels, trial_steps=0)
    if logits_lost:
        finding = only(report, "loss.clipped_probabilities")
        assert finding.evidence["stuck_samples"] == int((classes != 0).sum())
    else:
        assert "loss.clipped_probabilities" not in checks(report)


def test_only_the_stuck_outputs_count_in_a_multi_label_row():
    # Three sigmoid outputs; the first is saturated at logit 40 behind an op that loses the
    # logits, the others are not. Their labels are set to their predictions for the probe,
    # so the samples' healthy outputs do not hide the stuck one.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((F,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    stuck = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(40.0))(hidden)
    stuck = keras.layers.Lambda(lambda p: p * 1.0)(stuck)
    healthy = keras.layers.Dense(2, activation="sigmoid")(hidden)
    model = keras.Model(inputs, keras.layers.Concatenate()([stuck, healthy]))
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy())
    labels = np.concatenate([Y_BIN, 1.0 - Y_BIN, Y_BIN], axis=1)
    finding = only(diagnose(model, X, labels, trial_steps=0), "loss.clipped_probabilities")
    assert finding.evidence["stuck_samples"] == int((Y_BIN == 0).sum())


def test_keras_loss_with_a_stableops_drop_in():
    model = mlp(activation="sigmoid")
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy())
    finding = only(diagnose(model, X, Y_BIN), "loss.drop_in")
    assert finding.severity == "info"
    assert finding.evidence["drop_in"] == "stableops.losses.BinaryCrossentropy()"


def test_explicit_loss_overrides_the_compiled_one():
    model = mlp(activation="sigmoid")  # not compiled
    y = Y_BIN.copy()
    y[0] = 2.0
    report = diagnose(model, X, y, loss="binary_crossentropy")
    assert only(report, "labels.range").evidence["label_max"] == 2
    assert report.context["loss"] == "keras.losses.binary_crossentropy"


# ---------------------------------------------------------------- the report and the API


def test_report_table_and_json():
    x = X.copy()
    x[:, 4] *= 5e4
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(1e4), loss="mse")
    report = diagnose(model, x, Y_REG)
    text = str(report)
    assert "SEVERITY" in text and "LOCATION" in text
    for finding in report.findings:
        assert finding.check in text and finding.fix.split()[0] in text
    data = json.loads(json.dumps(report.to_dict()))
    # SGD at 1e4 on a feature of scale 5e4: the trial run diverges, so the
    # findings that explain it are errors, the trial's own finding last.
    assert data["counts"]["error"] == len(report.errors) >= 3
    assert data["likely_cause"]["check"] == "input.scale"  # earliest in the data flow
    assert report.errors[-1].check == "trial.diverged"
    assert {f["check"] for f in data["findings"]} == checks(report)
    assert all(
        {"severity", "location", "evidence", "fix", "message"} <= set(f) for f in data["findings"]
    )


def test_report_orders_by_severity_and_serialises_non_finite_numbers():
    findings = [
        Finding("gradient.exploding", "warning", "layer 'a'", "m", {"x": float("inf")}, "f"),
        Finding("loss.drop_in", "info", "loss", "m", {}, "f"),
        Finding("labels.range", "error", "labels", "m", {"v": np.float32(np.nan)}, "f"),
    ]
    report = Report(findings)
    assert [f.severity for f in report] == ["error", "warning", "info"]
    data = json.loads(report.to_json())
    assert data["findings"][0]["evidence"]["v"] == "nan"
    assert data["findings"][1]["evidence"]["x"] == "inf"
    with pytest.raises(ValueError, match="severity"):
        Finding("x", "fatal", "here", "m", {}, "f")


def test_dataset_input_and_state_is_left_untouched():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((F,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices((X, Y_REG)).batch(32)
    report = diagnose(model, dataset)
    assert report.ok and report.context["samples"] == N
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # BN moving stats restored, weights untouched


def test_sampling_is_bounded_and_deterministic():
    x = np.repeat(X, 4, axis=0)
    y = np.repeat(Y_REG, 4, axis=0)
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    first = diagnose(model, x, y, batch_size=16, max_batches=2)
    assert (
        first.context["samples"] == 32
        and first.context["of"] == first.context["data_rows"] == 4 * N
    )
    assert first.to_dict() == diagnose(model, x, y, batch_size=16, max_batches=2).to_dict()


def test_data_checks_see_more_rows_than_the_model_sample():
    x = np.repeat(X, 40, axis=0)  # 5120 rows, the model sees 32 of them
    x[4321, 3] = np.nan
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    report = diagnose(model, x, np.repeat(Y_REG, 40, axis=0), batch_size=16, max_batches=2)
    assert report.context["samples"] == 32
    assert only(report, "input.non_finite").location == "input feature 3"


def test_bad_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="batch_size"):
        diagnose(model, X, Y_REG, batch_size=0)
    with pytest.raises(ValueError, match="128 samples but y has 10"):
        diagnose(model, X, Y_REG[:10])


@pytest.mark.parametrize(
    "dataset",
    [
        tf.data.Dataset.from_tensor_slices((X, Y_BIN[:, 0])),  # labels of shape ()
        tf.data.Dataset.from_tensor_slices((X, Y_BIN)),  # 6 features, 1 label: rows disagree
    ],
)
def test_a_dataset_of_single_samples_must_be_batched(dataset):
    model = mlp(activation="sigmoid")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(ValueError, match=r"yields single samples.*\.batch\(32\)"):
        diagnose(model, dataset)
    with pytest.raises(ValueError, match="shape"):  # fit does not batch it either
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)


def test_exported_from_the_package():
    assert stableops.diagnose is diagnose and stableops.Report is Report


# ---------------------------------------------------------------- evidence in the user's rows

def _breast_cancer():
    x, y = load_breast_cancer(return_X_y=True)  # 569 rows: the model sample holds 256
    return StandardScaler().fit_transform(x).astype(np.float32), y.astype(np.float32)[:, None]


def test_take_sample_returns_the_rows_it_took():
    x, y = _breast_cancer()
    xs, ys, total, rows = take_sample(x, y, max_samples=256, keep=[400], return_rows=True)
    assert total == 569 and len(rows) == 256 and 400 in rows
    np.testing.assert_array_equal(xs, x[rows])
    np.testing.assert_array_equal(ys, y[rows])
    # All rows fit: the sample is the data, row for row.
    *_, rows = take_sample(x, y, max_samples=1000, return_rows=True)
    np.testing.assert_array_equal(rows, np.arange(569))
    # A dataset's sample is its first rows, in order.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    *_, rows = take_sample(dataset, None, max_samples=256, return_rows=True)
    np.testing.assert_array_equal(rows, np.arange(256))


def test_in_user_rows_maps_each_stage_through_the_sample_it_saw():
    def with_evidence(check, evidence):
        return Finding(check.id, check.severity, "here", "", evidence, check.fix)

    report = Report(
        [
            # The data checks saw the data sample: rows 0, 10, 20, ... of the user's data.
            with_evidence(registry.LABELS_NON_FINITE, {"samples": [3]}),
            with_evidence(registry.INPUT_SINGLE_SAMPLE_BATCH, {"samples": 569}),  # a count
            # The model saw rows 5, 7 and 9 of the data sample.
            with_evidence(
                registry.ACTIVATION_NON_FINITE, {"samples": [0, 2], "fully_masked_rows": [2]}
            ),
            with_evidence(registry.LOSS_NON_FINITE, {"samples": [1]}),
        ],
        context={"model": "m"},
        notes=["a note"],
    )
    mapped = in_user_rows(report, np.arange(0, 1000, 10), np.array([5, 7, 9]))
    evidence = {f.check: f.evidence for f in mapped}
    assert evidence["labels.non_finite"] == {"samples": [30]}
    assert evidence["input.single_sample_batch"] == {"samples": 569}
    assert evidence["activation.non_finite"] == {"samples": [50, 90], "fully_masked_rows": [90]}
    assert evidence["loss.non_finite"] == {"samples": [70]}
    assert mapped.context == report.context and mapped.notes == report.notes
    # A sample that is the rows in order changes nothing.
    assert in_user_rows(report).to_dict() == report.to_dict()


class _SqrtLayer(keras.layers.Layer):
    def call(self, x):
        return tf.sqrt(x)


def _sqrt_target_mse(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(keras.ops.sqrt(y_true) - y_pred), axis=-1)


def test_evidence_names_the_users_rows_not_places_in_the_sample():
    x, y = _breast_cancer()
    x = np.abs(x)
    *_, sampled = take_sample(x, y, max_samples=256, return_rows=True)  # diagnose's sample
    negative_input, negative_label = int(sampled[200]), int(sampled[220])
    x[negative_input, 2] = -1.0  # sqrt(-1) in the layer
    y[negative_label] = -1.0  # sqrt(-1) in the loss
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],))
    outputs = keras.layers.Dense(1)(_SqrtLayer(name="sqrt")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=_sqrt_target_mse)
    report = diagnose(model, x, y, batch_size=32, max_batches=8)
    assert only(report, "activation.non_finite").evidence["samples"] == [negative_input]
    assert only(report, "loss.non_finite").evidence["samples"] == [negative_label]


def test_a_nan_label_is_not_blamed_on_the_loss_too():
    x, y = _breast_cancer()
    y[300] = np.nan
    model = mlp(activation="sigmoid", inputs=x.shape[1])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    report = diagnose(model, x, y)
    # NaN in, NaN out: no loss can help, so no loss.non_finite advising another loss.
    assert [f.check for f in report.errors] == ["labels.non_finite"], report
    assert report.errors[0].evidence["samples"] == [300]
    assert any("gradients were not checked" in note for note in report.notes), report.notes


# ---------------------------------------------------------------- inputs read as indices


class _TokenAndPositionEmbedding(keras.layers.Layer):
    """keras.io's text-classification transformer's embedding: token plus position."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = keras.layers.Embedding(vocab_size, embed_dim)
        self.pos_emb = keras.layers.Embedding(maxlen, embed_dim)

    def call(self, x):
        positions = keras.ops.arange(0, keras.ops.shape(x)[-1])
        return self.token_emb(x) + self.pos_emb(positions)


def test_token_ids_read_by_a_custom_embedding_layer_are_not_judged_as_scales():
    digits = load_digits()
    # One token per (pixel, intensity): ids up to 64 * 17, far above any "unscaled" magnitude.
    tokens = (np.arange(64) * 17 + digits.data.astype(np.int32)).astype(np.int32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), dtype="int32")
    hidden = _TokenAndPositionEmbedding(64, 64 * 17, 8)(inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    report = diagnose(model, tokens, (digits.target % 2).astype(np.float32), trial_steps=0)
    assert not report.find("input"), report


# ---------------------------------------------------------------- labels: more losses


def _wine():
    x, y = load_wine(return_X_y=True)  # classes 0, 1, 2
    return StandardScaler().fit_transform(x).astype(np.float32), y


def test_one_loss_for_several_outputs_checks_the_labels_of_each():
    x, y = _wine()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    heads = {name: keras.layers.Dense(3, name=name)(hidden) for name in ("c1", "c2")}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for outputs, labels, where in (
        ([heads["c1"], heads["c2"]], [y, y + 1], "labels '1'"),
        (heads, {"c1": y + 1, "c2": y}, "labels 'c1'"),
    ):
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss=loss)  # Keras applies it to each output
        report = diagnose(model, x, labels, trial_steps=0)
        found = only(report, "labels.range")
        assert found.location == where and found.evidence["bad_values"] == ["3"], report
        assert report.likely_cause is found  # and loss.raised's "see the labels findings" holds


def _diabetes_targets():
    x, y = load_diabetes(return_X_y=True)  # targets 25 .. 346
    return StandardScaler().fit_transform(x).astype(np.float32), y.astype(np.float32)[:, None]


@pytest.mark.parametrize(
    "loss",
    [
        "msle",
        stableops.losses.MeanSquaredLogarithmicError(),
        stableops.losses.Poisson(),
        stableops.losses.PoissonNLL(),
        keras.losses.KLDivergence(),
    ],
)
def test_negative_targets_for_a_loss_that_needs_them_non_negative(loss):
    x, y = _diabetes_targets()
    standardized = (y - y.mean()) / y.std() - 2.0  # most below 0
    model = mlp(inputs=x.shape[1])
    model.compile(optimizer="adam", loss=loss)
    found = only(diagnose(model, x, standardized, trial_steps=0), "labels.range")
    assert found.severity == "error"
    assert found.evidence["negative_targets"] == int((standardized < 0).sum())
    assert found.evidence["target_min"] == pytest.approx(float(standardized.min()))
    assert "needs non-negative targets" in found.message and "MeanSquaredError" in found.fix
    # The raw targets (counts of a sort, all positive) are fine.
    assert not diagnose(model, x, y, trial_steps=0).find("labels.range")


def test_sparse_labels_that_are_not_whole_numbers_get_advice_of_their_own():
    x, y = load_digits(return_X_y=True)
    model = mlp(outputs=10, activation="softmax", inputs=x.shape[1])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    found = only(diagnose(model, x / 16.0, y + 0.5, trial_steps=0), "labels.range")
    assert "not whole numbers" in found.message
    assert found.evidence["non_integer_labels"] == len(y)
    # The model has its 10 outputs: no advice to give it more.
    assert "outputs" not in found.fix and "class indices 0..9" in found.fix
