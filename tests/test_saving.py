"""Saving: one model with every stableops loss, layer, activation and the optimizer wrapper.

* ``model.save("m.keras")`` / ``keras.saving.load_model`` with no
  ``custom_objects``: the same predictions, the same loss classes,
  configurations and values, the optimizer wrapper around its
  inner optimizer; and (on a small model) the optimizer state: skip count,
  iterations, Adam's moments (the next step after loading is the same).
* ``model.export`` (SavedModel) reloaded with ``tf.saved_model.load``, with no
  stableops code involved in the call, gives the model's predictions.

Per-loss save/load of a compiled model is in ``test_losses_integration.py``;
this file checks that everything works *together* in one file.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import stableops
from tests._ecosystem import LOSS_CASES, targets_for

FEATURES = 6
BATCH = 8
ACTIVATIONS = ["elu", "leaky_relu", "softplus", "log_sigmoid", "softmax", "log_softmax"]
LAYERS = ["LeakyReLU", "ELU", "Softmax", "RobustScaler"]


def _features(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, FEATURES)).astype("float32")
    x[0, 0] = 40.0  # an outlier for RobustScaler to clip
    return x


def _trunk(inputs):
    """Every stableops layer and every stableops activation, in one chain."""
    scaler = stableops.layers.RobustScaler(clip=3.0, name="scaler")
    scaler.adapt(_features(seed=1))
    h = scaler(inputs)
    for i, name in enumerate(ACTIVATIONS):
        h = keras.layers.Dense(
            FEATURES,
            activation=getattr(stableops.activations, name),
            kernel_initializer=keras.initializers.GlorotUniform(seed=i),
            name=f"dense_{name}",
        )(h)
    h = stableops.layers.LeakyReLU(negative_slope=0.1, name="leaky")(h)
    h = stableops.layers.ELU(alpha=0.5, name="elu")(h)
    return stableops.layers.Softmax(name="softmax")(h)


def _everything_model():
    inputs = keras.Input((FEATURES,), name="features")
    trunk = _trunk(inputs)
    outputs = {
        case.name: keras.layers.Dense(
            case.units,
            activation=case.activation,
            kernel_initializer=keras.initializers.GlorotUniform(seed=100 + i),
            name=case.name,
        )(trunk)
        for i, case in enumerate(LOSS_CASES)
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=stableops.optimizers.SkipNonFinite(keras.optimizers.Adam(1e-2)),
        loss={case.name: case.make() for case in LOSS_CASES},
    )
    return model


def _layer_classes(model):
    return {
        type(layer).__name__
        for layer in model.layers
        if type(layer).__module__.startswith("stableops")
    }


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    x, y = _features(), targets_for(LOSS_CASES, BATCH)
    model = _everything_model()
    model.optimizer.build(model.trainable_variables)
    assert _layer_classes(model) == set(LAYERS)

    path = tmp_path / "everything.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects

    # The layers and activations came back as stableops objects.
    assert _layer_classes(loaded) == set(LAYERS)
    for name in ACTIVATIONS:
        assert loaded.get_layer(f"dense_{name}").activation is getattr(stableops.activations, name)
    scaler, loaded_scaler = model.get_layer("scaler"), loaded.get_layer("scaler")
    for original, restored in zip(scaler.weights, loaded_scaler.weights):
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(original))

    # The same predictions, bit for bit.
    want, got = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    # Every loss came back as the same stableops class with the same config,
    # and gives the original's value on the model's predictions.
    for case in LOSS_CASES:
        original, restored = model.loss[case.name], loaded.loss[case.name]
        assert type(restored) is getattr(stableops.losses, case.name)
        assert restored.get_config() == original.get_config()
        value = float(original(y[case.name], want[case.name]))
        assert np.isfinite(value), case.name
        assert float(restored(y[case.name], got[case.name])) == value, case.name

    # The optimizer wrapper came back around its inner optimizer.
    assert isinstance(loaded.optimizer, stableops.optimizers.SkipNonFinite)
    assert isinstance(loaded.optimizer.inner_optimizer, keras.optimizers.Adam)
    assert float(np.asarray(loaded.optimizer.learning_rate)) == pytest.approx(1e-2)


def test_optimizer_wrapper_state_survives_saving(tmp_path):
    """Skip count, iterations and Adam's moments: the next step after loading is the same."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile(
        optimizer=stableops.optimizers.SkipNonFinite(keras.optimizers.Adam(0.1)),
        loss=stableops.losses.MeanSquaredError(),
    )
    x = np.array([[1.0, 2.0], [np.nan, 1.0], [0.5, -1.0]], "float32")
    y = np.array([[1.0], [1.0], [-2.0]], "float32")
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.skipped_steps) == 1
    assert int(model.optimizer.iterations) == 2
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.skipped_steps) == 1
    assert int(loaded.optimizer.iterations) == 2

    # One more Adam step from each: the same weights. A fresh Adam (no
    # moments) from the same weights takes a different step.
    step_x, step_y = np.array([[2.0, -1.0]], "float32"), np.array([[3.0]], "float32")
    fresh = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    fresh.set_weights(loaded.get_weights())
    fresh.compile(optimizer=keras.optimizers.Adam(0.1), loss=stableops.losses.MeanSquaredError())
    for m in (model, loaded, fresh):
        m.fit(step_x, step_y, batch_size=1, epochs=1, verbose=0)
    for original, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(restored, original, rtol=1e-6, atol=1e-7)
    assert not np.allclose(fresh.get_weights()[0], model.get_weights()[0], rtol=1e-4)


def test_export_saved_model_for_inference(tmp_path):
    inputs = keras.Input((FEATURES,), name="features")
    outputs = keras.layers.Dense(3, activation=stableops.activations.log_softmax, name="head")(
        _trunk(inputs)
    )
    model = keras.Model(inputs, outputs)
    x = _features()
    want = model.predict(x, verbose=0)

    path = str(tmp_path / "exported")
    model.export(path, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(path)
    got = reloaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # Log-probabilities of a 3-class softmax: each row's probabilities sum to 1.
    np.testing.assert_allclose(np.exp(got).sum(axis=-1), 1.0, rtol=1e-5)
    # The serving signature takes any batch size.
    assert reloaded.serve(tf.constant(x[:3])).shape == (3, 3)


@pytest.mark.parametrize("name", ["BinaryCrossentropy", "Tversky"])
def test_compiled_loss_config_round_trips_in_keras_file(tmp_path, name):
    """Non-default constructor arguments survive the .keras file (not just the defaults)."""
    loss_cls = getattr(stableops.losses, name)
    loss = (
        loss_cls(from_logits=True, label_smoothing=0.1, reduction="sum", name="custom")
        if name == "BinaryCrossentropy"
        else loss_cls(alpha=0.2, beta=0.8, axis=-1, reduction="sum", name="custom")
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=loss)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").loss
    assert type(restored) is loss_cls
    assert restored.get_config() == loss.get_config()
    assert restored.reduction == "sum" and restored.name == "custom"


LOSS_FUNCTIONS = [n for n in stableops.losses.__all__ if n[0].islower()]


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
def test_a_loss_function_serializes_as_itself(name):
    # Unregistered, a loss function serialized as its bare name, which Keras resolved to its
    # own namesake (the clipped binary_crossentropy), or failed to find (gaussian_nll).
    fn = getattr(stableops.losses, name)
    config = keras.saving.serialize_keras_object(fn)
    assert config["config"] == f"stableops>{name}"
    assert keras.saving.deserialize_keras_object(config) is fn


def test_a_model_compiled_with_loss_functions_loads_them_back(tmp_path):
    x, y = _features(), np.ones((BATCH, 1), np.float32)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=stableops.losses.binary_crossentropy,
                  metrics=[stableops.losses.mean_squared_error])
    model.fit(x, y, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss is stableops.losses.binary_crossentropy
    y_true, y_pred = np.float32([[1.0]]), np.float32([[1e-9]])
    # -log(1e-9) = 20.7, where Keras's clipped function gives -log(1e-7) = 16.1.
    np.testing.assert_allclose(loaded.loss(y_true, y_pred), [-np.log(1e-9)], rtol=1e-6)
    assert loaded.evaluate(x, y, verbose=0, return_dict=True).keys() == {
        "loss", "mean_squared_error"}
