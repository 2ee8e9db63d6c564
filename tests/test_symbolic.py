"""Public functions called on ``keras.Input``s build functional models, as Keras's do.

``keras.activations.elu(keras.Input((4,)))`` is a node of a functional graph; a TensorFlow
function given the symbolic tensor raised "A KerasTensor cannot be used as input to a
TensorFlow function". Every public function of ``activations`` and ``losses`` (the
Keras-facing parts; ``ops`` stays pure TF) now returns the output of a ``StableopsCall``
node there: the model computes what the function
computes on the same arrays (its value and its gradient), and it is rebuilt from its config,
saved to ``.keras`` and exported.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import stableops
from stableops._internal.symbolic import _PUBLIC_FUNCTIONS, StableopsCall
from tests._public_cases import CASES, inputs

LOSS_CASES = sorted(name for name in CASES if name.startswith("losses."))
# One of each argument pattern (labels and predictions, logits, label sequences, embeddings,
# stacked mean and variance, a loss over the whole batch) for the regimes; every loss case is
# rebuilt from its config below. (The node calls the function, whose own regimes are tested
# with it.)
REGIME_CASES = [
    "losses.binary_crossentropy/logits", "losses.ctc", "losses.dice", "losses.gaussian_nll",
    "losses.sparse_categorical_crossentropy/logits", "losses.triplet_loss",
]


def _symbolic_inputs(arrays):
    return [keras.Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]


def _model_of(fn, arrays):
    symbolic = _symbolic_inputs(arrays)
    return keras.Model(symbolic, fn(*symbolic))


@pytest.mark.parametrize("name", REGIME_CASES)
def test_a_model_of_the_function_computes_it(name, regime):
    fn, _, wrt = CASES[name]
    arrays = inputs(name, np.float32)
    model = _model_of(fn, arrays)
    assert any(isinstance(op, StableopsCall) for op in model.operations)
    expected, (expected_grad,) = regime.value_and_grad(fn, *arrays, wrt=(wrt,))
    value, (grad,) = regime.value_and_grad(lambda *xs: model(list(xs)), *arrays, wrt=(wrt,))
    np.testing.assert_array_equal(value, expected)
    np.testing.assert_array_equal(grad, expected_grad)


@pytest.mark.parametrize("name", LOSS_CASES)
def test_a_model_of_the_function_is_rebuilt_from_its_config(name):
    fn, _, _ = CASES[name]
    arrays = inputs(name, np.float32)
    model = _model_of(fn, arrays)
    rebuilt = keras.Model.from_config(model.get_config())
    np.testing.assert_array_equal(model(arrays), fn(*arrays))
    np.testing.assert_array_equal(rebuilt(arrays), fn(*arrays))


@pytest.mark.parametrize("name", stableops.activations.__all__)
def test_an_activation_on_a_keras_input_is_a_node_of_its_own(name, regime):
    activation = getattr(stableops.activations, name)
    x = np.random.default_rng(0).normal(0.0, 3.0, (4, 6)).astype(np.float32)
    model = _model_of(activation, [x])
    (node,) = [op for op in model.operations if isinstance(op, StableopsCall)]
    assert node.function == f"activations.{name}"
    assert node.name.startswith(f"stableops_{name}")  # apart from Keras's own names
    expected, (expected_grad,) = regime.value_and_grad(activation, x)
    value, (grad,) = regime.value_and_grad(lambda x: model([x]), x)
    np.testing.assert_array_equal(value, expected)
    np.testing.assert_array_equal(grad, expected_grad)


def test_settings_are_kept_and_tensors_are_inputs():
    labels, logits = keras.Input((3,)), keras.Input((3,))
    loss = stableops.losses.categorical_crossentropy(labels, logits, True, axis=-1)
    model = keras.Model([labels, logits], loss)
    (node,) = [op for op in model.operations if isinstance(op, StableopsCall)]
    assert node.function == "losses.categorical_crossentropy"
    assert node.settings == {"from_logits": True, "axis": -1}
    a = np.float32([[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(model([a, np.zeros_like(a)]), [np.log(3.0)], rtol=1e-7)


def test_a_saved_and_exported_model_with_nodes_trains_loads_and_serves(tmp_path):
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    inputs = keras.Input((x.shape[1],))
    hidden = stableops.activations.elu(keras.layers.Dense(16)(inputs), alpha=0.5)
    outputs = stableops.activations.softmax(keras.layers.Dense(3)(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=stableops.losses.SparseCategoricalCrossentropy())
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    expected = model.predict(x, verbose=0)

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    (elu_node,) = [op for op in loaded.operations
                   if isinstance(op, StableopsCall) and op.function == "activations.elu"]
    assert elu_node.settings == {"alpha": 0.5}

    model.export(tmp_path / "served", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(x).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_a_node_names_only_public_functions():
    with pytest.raises(ValueError, match="public stableops function"):
        StableopsCall("ops.softmax")  # pure TF: not a node
    with pytest.raises((TypeError, ValueError), match="public stableops function"):
        StableopsCall.from_config({"function": "os.system", "settings": {}})


def test_a_plain_call_is_the_function_itself():
    softmax = stableops.activations.softmax
    x = tf.constant([[1.0, 2.0]])
    np.testing.assert_array_equal(softmax(x), _PUBLIC_FUNCTIONS["activations.softmax"](x))
