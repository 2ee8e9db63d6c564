"""Diverging runs, on real data (scikit-learn's bundled sets) and synthetic data.

For each: stock Keras goes NaN or stalls; the same model with
``NaNGuard(action="continue")`` and ``SkipNonFinite`` ends with finite weights
and loss and a test metric better than a constant prediction (the training
mean, or the majority class); ``diagnose`` names the cause as its first error.
"""

import dataclasses

import keras
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine

import stableops
from stableops.callbacks import NaNGuard
from stableops.optimizers import SkipNonFinite


@dataclasses.dataclass
class Scenario:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    layers: list  # builds the model's layers (fresh each time)
    optimizer: callable
    loss: object
    task: str  # "binary", "classes" or "regression"
    causes: tuple  # the check ids diagnose may name first
    epochs: int = 3
    guard: dict = dataclasses.field(default_factory=dict)
    jit_compile: bool = False

    def model(self, wrap):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input(self.x.shape[1:], dtype=self.x.dtype), *self.layers()]
        )
        optimizer = self.optimizer()
        model.compile(
            optimizer=SkipNonFinite(optimizer) if wrap else optimizer,
            loss=self.loss,
            jit_compile=self.jit_compile,
        )
        return model

    def chance_loss(self):
        """The training loss of the best constant prediction (derived here, not from the code)."""
        if self.task == "regression":
            return float(np.var(self.y))
        counts = np.bincount(self.y.reshape(-1).astype(int))
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def better_than_constant(self, model) -> bool:
        prediction = np.asarray(model.predict(self.x_test, verbose=0), np.float64)
        if self.task == "regression":
            return np.mean((prediction - self.y_test) ** 2) < np.mean(
                (self.y.mean() - self.y_test) ** 2
            )
        if self.task == "binary":
            accuracy = np.mean((prediction > 0.5) == self.y_test)
        else:
            accuracy = np.mean(np.argmax(prediction, -1) == self.y_test.reshape(-1))
        majority = np.bincount(self.y.reshape(-1).astype(int)).max() / self.y.size
        return accuracy > majority


def _split(x, y, seed=0):
    rows = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.75 * len(x))
    return x[rows[:cut]], y[rows[:cut]], x[rows[cut:]], y[rows[cut:]]


def _mlp(units, outputs, activation=None):
    return lambda: [
        keras.layers.Dense(units, activation="relu"),
        keras.layers.Dense(outputs, activation=activation),
    ]


def breast_cancer():
    # Raw features (areas up to 4254, smoothness ~0.1), SGD at 0.1.
    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)[:, None]
    return Scenario(
        *_split(x, y),
        _mlp(16, 1, "sigmoid"),
        lambda: keras.optimizers.SGD(0.1),
        "binary_crossentropy",
        "binary",
        causes=("input.scale",),
        epochs=5,
    )


def digits():
    # Raw 0..16 pixel intensities, 10 classes, SGD at 1.0.
    data = load_digits()
    x, y = data.data.astype(np.float32), data.target.astype(np.int32)
    return Scenario(
        *_split(x, y),
        _mlp(32, 10),
        lambda: keras.optimizers.SGD(1.0),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "classes",
        # Pixels of 0..16 are neither large nor far out for the input as a whole (the rare
        # ink of mostly-blank edge pixels was called an outlier); a copy at a 10x lower rate
        # trains, so the rate is the cause.
        causes=("optimizer.learning_rate",),
    )


def wine():
    # Raw chemistry (proline 278..1680, hue ~1), 3 classes, SGD at 0.01.
    data = load_wine()
    x, y = data.data.astype(np.float32), data.target.astype(np.int32)
    return Scenario(
        *_split(x, y),
        _mlp(32, 3),
        lambda: keras.optimizers.SGD(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "classes",
        causes=("input.scale",),
        epochs=10,
    )


def huge_learning_rate():
    # Well-scaled data, a learning rate 400x too large for it.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [1.5]]) + 0.1 * rng.normal(size=(512, 1))).astype(
        np.float32
    )
    return Scenario(
        *_split(x, y),
        lambda: [keras.layers.Dense(1)],
        lambda: keras.optimizers.SGD(300.0),
        "mse",
        "regression",
        causes=("gradient.exploding", "optimizer.learning_rate"),
        guard={"lr_factor": 0.1},
    )


def empty_sequences():
    # Two of 256 documents are all padding: the masked mean is 0/0 there.
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 20, size=(320, 8)).astype(np.int32)
    lengths = rng.integers(1, 9, size=320)
    tokens[np.arange(8)[None, :] >= lengths[:, None]] = 0
    y = (((tokens > 0) & (tokens < 10)).sum(1) * 2 > lengths).astype(np.float32)[:, None]
    x, y, x_test, y_test = tokens[:256], y[:256], tokens[256:], y[256:]
    x[[37, 200]] = 0
    layers = lambda: [  # noqa: E731
        keras.layers.Embedding(20, 8, mask_zero=True),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(1, activation="sigmoid"),
    ]
    return Scenario(
        x,
        y,
        x_test,
        y_test,
        layers,
        lambda: keras.optimizers.Adam(0.02),
        "binary_crossentropy",
        "binary",
        causes=("activation.non_finite",),
        epochs=6,
        guard={"lr_factor": 1.0, "max_recoveries": None},
    )


def labels_out_of_range_under_xla():
    # 4 classes, two rows labelled 4, jit_compile=True: XLA's loss is NaN there.
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 8)).astype(np.float32) * 3
    y = rng.integers(0, 4, size=320).astype(np.int32)
    x = (centers[y] + rng.normal(size=(320, 8))).astype(np.float32)
    x, y, x_test, y_test = x[:256], y[:256].copy(), x[256:], y[256:]
    y[[11, 150]] = 4
    return Scenario(
        x,
        y,
        x_test,
        y_test,
        _mlp(16, 4),
        lambda: keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "classes",
        causes=("labels.range",),
        guard={"lr_factor": 1.0, "max_recoveries": None},
        jit_compile=True,
    )


SCENARIOS = [
    breast_cancer,
    digits,
    wine,
    huge_learning_rate,
    empty_sequences,
    labels_out_of_range_under_xla,
]


@pytest.mark.parametrize("make", SCENARIOS, ids=lambda make: make.__name__)
def test_stock_keras_fails_the_guard_rescues_and_diagnose_names_the_cause(make):
    scenario = make()
    fit = dict(batch_size=32, epochs=scenario.epochs, verbose=0)

    stock = scenario.model(wrap=False)
    history = stock.fit(scenario.x, scenario.y, **fit)
    final = history.history["loss"][-1]
    # Stock Keras goes NaN, or stalls at (or above) the loss of a constant prediction.
    assert not np.isfinite(final) or final > 0.9 * scenario.chance_loss(), history.history["loss"]

    model = scenario.model(wrap=True)
    guard = NaNGuard(action="continue", **{"lr_factor": 0.1, "verbose": 0, **scenario.guard})
    history = model.fit(scenario.x, scenario.y, callbacks=[guard], **fit)
    assert guard.events and not model.stop_training  # it did have to rescue the run
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert scenario.better_than_constant(model)

    report = stableops.diagnose(scenario.model(wrap=False), scenario.x, scenario.y)
    assert report.errors and report.errors[0].check in scenario.causes, report


def test_raw_diabetes_rolls_back_to_weights_from_before_the_divergence():
    # Raw features (ages, blood values up to 300) and targets (25 .. 346), MSE, SGD at 1e-3:
    # the first update already overshoots, so the last *finite* weights (after it) are
    # not good ones: activations of ~1e10 that make every later batch diverge again.
    data = load_diabetes(scaled=False)
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)[:, None]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=SkipNonFinite(keras.optimizers.SGD(1e-3)), loss="mse")
    guard = NaNGuard(action="continue", lr_factor=0.1, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[guard])

    assert guard.events and not model.stop_training  # rescued, within max_recoveries
    assert (
        guard.events[0]["restored_step"] < guard.events[0]["step"] - 1
    )  # not the last finite weights
    prediction = model.predict(x, verbose=0)
    assert np.isfinite(prediction).all() and np.abs(prediction).max() < 10 * y.max()
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
