"""Keras-native use: stableops in every way people build and train Keras models.

* Sequential, functional and subclassed models built from stableops layers
  and activations, and a custom ``GradientTape`` loop (XLA-compiled), train
  the same network from the same weights to the same per-step losses.
* stableops losses as metrics: the function form, a ``Loss`` instance and a
  ``keras.metrics.MeanMetricWrapper`` all report the loss value (checked
  against Keras's own metric on ordinary inputs).
* A loss dict (and loss weights and metric dicts) for a multi-output model.
* ``tf.data`` pipelines: map/shuffle/batch/prefetch, sample weights, dict targets.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import stableops

FEATURES = 4
CLASSES = 3
BATCH = 16
STEPS = 4
LEARNING_RATE = 0.2


def _classification_data(n=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (np.argmax(x[:, :CLASSES], axis=-1)).astype("int32")  # learnable labels
    return x, y


def _layers():
    """Hidden layers shared by the model variants (fresh objects each call)."""
    return [
        keras.layers.Dense(8, activation=stableops.activations.elu, name="hidden1"),
        stableops.layers.LeakyReLU(name="leaky"),
        keras.layers.Dense(8, name="hidden2"),
        stableops.layers.ELU(name="elu"),
        keras.layers.Dense(CLASSES, name="logits"),
    ]


def _sequential():
    return keras.Sequential([keras.Input((FEATURES,)), *_layers()])


def _functional():
    inputs = keras.Input((FEATURES,))
    h = inputs
    for layer in _layers():
        h = layer(h)
    return keras.Model(inputs, h)


class SubclassedClassifier(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stack = _layers()

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def _subclassed():
    model = SubclassedClassifier()
    model(np.zeros((1, FEATURES), "float32"))  # build
    return model


@pytest.fixture(scope="module")
def initial_weights():
    keras.utils.set_random_seed(0)
    return _sequential().get_weights()


def _fit_trajectory(model, weights):
    model.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=stableops.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _classification_data()
    history = model.fit(x, y, batch_size=BATCH, epochs=STEPS, verbose=0, shuffle=False)
    return np.array(history.history["loss"]), model.get_weights()


def _gradient_tape_trajectory(weights):
    model = _functional()
    model.set_weights(weights)
    loss_fn = stableops.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(LEARNING_RATE)

    @tf.function(jit_compile=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    x, y = _classification_data()
    losses = [float(train_step(tf.constant(x), tf.constant(y))) for _ in range(STEPS)]
    return np.array(losses), model.get_weights()


def test_every_model_style_and_a_gradient_tape_loop_train_alike(initial_weights):
    runs = {
        "sequential": _fit_trajectory(_sequential(), initial_weights),
        "functional": _fit_trajectory(_functional(), initial_weights),
        "subclassed": _fit_trajectory(_subclassed(), initial_weights),
        "gradient_tape": _gradient_tape_trajectory(initial_weights),
    }
    reference_losses, reference_weights = runs["sequential"]
    assert np.all(np.diff(reference_losses) < 0), reference_losses  # it learns
    for name, (losses, weights) in runs.items():
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, err_msg=name)
        for got, want in zip(weights, reference_weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------
# Losses as metrics
# ----------------------------------------------------------------------------


def test_stableops_losses_are_usable_as_metrics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, FEATURES)).astype("float32")
    y = (x[:, :1] + 0.3 * rng.normal(size=(32, 1)) > 0).astype("float32")
    sample_weight = rng.uniform(0.5, 2.0, 32).astype("float32")
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    wrap = keras.metrics.MeanMetricWrapper
    model.compile(
        optimizer="sgd",
        loss=stableops.losses.BinaryCrossentropy(),
        metrics=[
            stableops.losses.binary_crossentropy,  # a function form
            stableops.losses.BinaryCrossentropy(name="bce_instance"),  # a Loss instance
            wrap(stableops.losses.binary_crossentropy, name="bce_wrapped"),
            keras.metrics.BinaryCrossentropy(name="keras_bce"),  # the reference
            stableops.losses.mean_squared_error,
        ],
        weighted_metrics=[wrap(stableops.losses.binary_crossentropy, name="bce_weighted")],
    )
    result = model.evaluate(
        x, y, sample_weight=sample_weight, batch_size=8, verbose=0, return_dict=True
    )
    reference = result["keras_bce"]
    assert reference > 0.1
    for name in ["binary_crossentropy", "bce_instance", "bce_wrapped"]:
        np.testing.assert_allclose(result[name], reference, rtol=1e-5, err_msg=name)

    # The weighted metric is the sample-weighted mean of the per-sample losses.
    p = model.predict(x, verbose=0)[:, 0]
    per_sample = -(y[:, 0] * np.log(p) + (1 - y[:, 0]) * np.log1p(-p))
    np.testing.assert_allclose(
        result["bce_weighted"],
        np.sum(sample_weight * per_sample) / np.sum(sample_weight),
        rtol=1e-5,
    )
    np.testing.assert_allclose(result["mean_squared_error"], np.mean((p - y[:, 0]) ** 2), rtol=1e-5)


# ----------------------------------------------------------------------------
# Multi-output: a loss dict
# ----------------------------------------------------------------------------


def _two_output_model():
    inputs = keras.Input((FEATURES,), name="x")
    h = keras.layers.Dense(8, activation=stableops.activations.leaky_relu)(inputs)
    h = stableops.layers.ELU()(h)
    return keras.Model(
        inputs,
        {
            "label": keras.layers.Dense(CLASSES, name="label")(h),
            "value": keras.layers.Dense(1, name="value")(h),
        },
    )


def test_loss_dict_for_a_multi_output_model():
    x, labels = _classification_data(32, seed=2)
    values = (x[:, :1] * 2.0).astype("float32")
    model = _two_output_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={
            "label": stableops.losses.SparseCategoricalCrossentropy(from_logits=True),
            "value": stableops.losses.Huber(delta=0.5),
        },
        loss_weights={"label": 1.0, "value": 0.5},
        metrics={"value": [stableops.losses.mean_absolute_error]},
    )
    targets = {"label": labels, "value": values}
    before = model.evaluate(x, targets, batch_size=32, verbose=0, return_dict=True)

    # Per-output losses against Keras's own losses on these ordinary values.
    predictions = model.predict(x, verbose=0)
    keras_sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    label_loss = keras_sparse(labels, predictions["label"])
    value_loss = keras.losses.Huber(delta=0.5)(values, predictions["value"])
    np.testing.assert_allclose(before["label_loss"], float(label_loss), rtol=1e-5)
    np.testing.assert_allclose(before["value_loss"], float(value_loss), rtol=1e-5)
    total = float(label_loss) + 0.5 * float(value_loss)
    np.testing.assert_allclose(before["loss"], total, rtol=1e-5)
    np.testing.assert_allclose(
        before["value_mean_absolute_error"],
        np.mean(np.abs(predictions["value"] - values)),
        rtol=1e-5,
    )

    model.fit(x, targets, batch_size=8, epochs=3, verbose=0)
    after = model.evaluate(x, targets, batch_size=32, verbose=0, return_dict=True)
    assert after["label_loss"] < before["label_loss"]
    assert after["value_loss"] < before["value_loss"]


# ----------------------------------------------------------------------------
# tf.data input pipelines
# ----------------------------------------------------------------------------


def test_tf_data_pipeline_with_dict_targets_and_sample_weights():
    x, labels = _classification_data(64, seed=3)
    values = x[:, 3:].astype("float32")
    weights = np.where(labels == 0, 2.0, 1.0).astype("float32")
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, {"label": labels, "value": values}, weights))
        .shuffle(64, seed=0)
        .map(lambda f, t, w: (f * 0.5, t, w), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(16)
        .prefetch(tf.data.AUTOTUNE)
    )
    model = _two_output_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss={
            "label": stableops.losses.SparseCategoricalCrossentropy(from_logits=True),
            "value": stableops.losses.LogCosh(),
        },
        weighted_metrics={"value": [stableops.losses.mean_absolute_error]},
    )
    history = model.fit(dataset, epochs=4, verbose=0).history
    assert len(history["loss"]) == 4
    for key in ["loss", "label_loss", "value_loss", "value_mean_absolute_error"]:
        assert all(np.isfinite(history[key])), key
        assert history[key][-1] < history[key][0], key
