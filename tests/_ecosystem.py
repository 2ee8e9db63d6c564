"""Shared cases for the ecosystem tests (distribute, mixed precision, saving, Keras-native).

One row per stableops loss class: the head that feeds it (units, activation),
targets in that loss's domain, and the constructor arguments the tests use.
Rows are plain data so every test builds its own model from them.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import stableops


@dataclasses.dataclass(frozen=True)
class LossCase:
    """One loss's training case: head ``Dense(units, activation)``, ``targets(rng, n)``."""

    name: str
    units: int
    activation: str | None
    targets: object  # callable (numpy Generator, batch size) -> numpy array
    kwargs: dict = dataclasses.field(default_factory=dict)

    def make(self, **overrides):
        """A fresh instance of the stableops loss class with this case's arguments."""
        return getattr(stableops.losses, self.name)(**{**self.kwargs, **overrides})


def _binary(rng, n, width=1):
    return rng.integers(0, 2, (n, width)).astype("float32")


def _one_hot(rng, n, classes=3):
    return np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]


def _signs(rng, n):
    return rng.choice(np.array([-1.0, 1.0], "float32"), (n, 1))


LOSS_CASES = [
    LossCase("BinaryCrossentropy", 1, "sigmoid", _binary),
    LossCase("BinaryFocalCrossentropy", 1, "sigmoid", _binary),
    LossCase("CategoricalCrossentropy", 3, "softmax", _one_hot),
    LossCase("CategoricalFocalCrossentropy", 3, "softmax", _one_hot),
    LossCase(
        "SparseCategoricalCrossentropy",
        3,
        "softmax",
        lambda rng, n: rng.integers(0, 3, (n, 1)).astype("int32"),
    ),
    LossCase(
        "KLDivergence",
        3,
        "softmax",
        lambda rng, n: rng.dirichlet(np.ones(3), n).astype("float32"),
    ),
    LossCase("Poisson", 2, "softplus", lambda rng, n: rng.poisson(2.0, (n, 2)).astype("float32")),
    LossCase("MeanSquaredError", 2, None, lambda rng, n: rng.normal(size=(n, 2)).astype("float32")),
    LossCase(
        "MeanAbsoluteError", 2, None, lambda rng, n: rng.normal(size=(n, 2)).astype("float32")
    ),
    LossCase(
        "MeanAbsolutePercentageError",
        2,
        None,
        lambda rng, n: rng.uniform(1.0, 2.0, (n, 2)).astype("float32"),
    ),
    LossCase(
        "MeanSquaredLogarithmicError",
        2,
        "softplus",
        lambda rng, n: rng.uniform(0.0, 3.0, (n, 2)).astype("float32"),
    ),
    LossCase("Huber", 2, None, lambda rng, n: (2.0 * rng.normal(size=(n, 2))).astype("float32")),
    LossCase("LogCosh", 2, None, lambda rng, n: rng.normal(size=(n, 2)).astype("float32")),
    LossCase("CosineSimilarity", 3, None, lambda rng, n: rng.normal(size=(n, 3)).astype("float32")),
    # axis=-1: one Dice/Tversky value per sample. With Keras's default
    # axis=None the loss is one number for the whole batch, which no
    # per-replica computation can reproduce (see docs/guide.md).
    LossCase("Dice", 4, "sigmoid", lambda rng, n: _binary(rng, n, 4), {"axis": -1}),
    LossCase(
        "Tversky",
        4,
        "sigmoid",
        lambda rng, n: _binary(rng, n, 4),
        {"axis": -1, "alpha": 0.3, "beta": 0.7},
    ),
    LossCase("Hinge", 1, "tanh", _signs),
    LossCase("SquaredHinge", 1, "tanh", _signs),
    LossCase("CategoricalHinge", 3, None, _one_hot),
    # Issue 15's likelihood losses. GaussianNLL's head stacks a mean and a
    # log-variance; GaussianKL's stacks a mean and a log-variance and ignores y_true.
    LossCase(
        "GaussianNLL",
        2,
        None,
        lambda rng, n: rng.normal(size=(n, 1)).astype("float32"),
        {"variance": "log_variance"},
    ),
    LossCase("GaussianKL", 4, None, lambda rng, n: np.zeros((n, 1), "float32")),
    LossCase("PoissonNLL", 2, None, lambda rng, n: rng.poisson(2.0, (n, 2)).astype("float32")),
]

LOSS_NAMES = [case.name for case in LOSS_CASES]
CASES_BY_NAME = {case.name: case for case in LOSS_CASES}

# Every reduction keras.losses.Loss accepts (None is the same as "none").
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none"]


def multi_head_model(cases, features, *, seed=0, head_names=None):
    """A functional model: one ``Dense`` head per case on a shared input, no shared weights.

    Heads share no trainable variables, so each head's weights are trained by
    its own loss only and can be compared head by head.
    """
    inputs = keras.Input((features,), name="features")
    names = head_names or [case.name for case in cases]
    outputs = {
        name: keras.layers.Dense(
            case.units,
            activation=case.activation,
            name=name,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed + i),
            bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=1000 + seed + i),
        )(inputs)
        for i, (name, case) in enumerate(zip(names, cases))
    }
    return keras.Model(inputs, outputs)


def targets_for(cases, batch, *, seed=0, head_names=None):
    """``{head name: targets}`` for ``multi_head_model`` (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    names = head_names or [case.name for case in cases]
    return {name: case.targets(rng, batch) for name, case in zip(names, cases)}
