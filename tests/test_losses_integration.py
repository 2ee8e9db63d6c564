"""Every stableops loss inside Keras: fit (XLA on and off, float32 and mixed
precision), a custom GradientTape loop, model.save/load_model and
keras.losses.serialize/deserialize round trips.

One row per loss: the class with non-default arguments where it has any (so
the round trips carry them), the targets, and a tiny model head that fits the
loss. Kept cheap: 16 samples, batch 8 (2 steps), one Dense layer.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S

N, FEATURES, BATCH = 16, 4, 8


def _binary(rng, units):
    return rng.choice([0.0, 1.0], size=(N, units)).astype(np.float32)


def _one_hot(rng, units):
    return np.eye(units, dtype=np.float32)[rng.integers(0, units, size=N)]


def _sparse(rng, units):
    return rng.integers(0, units, size=N).astype(np.int32)


def _distribution(rng, units):
    logits = rng.normal(size=(N, units))
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)


def _counts(rng, units):
    return rng.poisson(2.0, size=(N, units)).astype(np.float32)


def _real(rng, units):
    return rng.normal(size=(N, units)).astype(np.float32)


def _positive(rng, units):
    return rng.uniform(1.0, 2.0, size=(N, units)).astype(np.float32)


def _nonnegative(rng, units):
    return rng.uniform(0.0, 3.0, size=(N, units)).astype(np.float32)


def _signed(rng, units):
    return rng.choice([-1.0, 1.0], size=(N, units)).astype(np.float32)


def _half_real(rng, units):
    # GaussianNLL: the head stacks a mean and a (log-)variance per target.
    return rng.normal(size=(N, units // 2)).astype(np.float32)


def _ignored(rng, units):
    # GaussianKL ignores y_true; Keras needs a target per output.
    return np.zeros((N, 1), np.float32)


# (id, loss factory, target generator, output units, output activation)
LOSSES = [
    (
        "BinaryCrossentropy",
        lambda: S.BinaryCrossentropy(label_smoothing=0.1),
        _binary,
        1,
        "sigmoid",
    ),
    (
        "BinaryFocalCrossentropy",
        lambda: S.BinaryFocalCrossentropy(apply_class_balancing=True, gamma=1.5),
        _binary,
        1,
        "sigmoid",
    ),
    (
        "CategoricalCrossentropy",
        lambda: S.CategoricalCrossentropy(label_smoothing=0.1),
        _one_hot,
        3,
        "softmax",
    ),
    (
        "CategoricalFocalCrossentropy",
        lambda: S.CategoricalFocalCrossentropy(gamma=1.0),
        _one_hot,
        3,
        "softmax",
    ),
    (
        "SparseCategoricalCrossentropy",
        lambda: S.SparseCategoricalCrossentropy(from_logits=True),
        _sparse,
        3,
        None,
    ),
    ("KLDivergence", lambda: S.KLDivergence(), _distribution, 3, "softmax"),
    ("Poisson", lambda: S.Poisson(), _counts, 1, "softplus"),
    ("MeanSquaredError", lambda: S.MeanSquaredError(), _real, 1, None),
    ("MeanAbsoluteError", lambda: S.MeanAbsoluteError(), _real, 1, None),
    ("MeanAbsolutePercentageError", lambda: S.MeanAbsolutePercentageError(), _positive, 1, None),
    ("MeanSquaredLogarithmicError", lambda: S.MeanSquaredLogarithmicError(), _nonnegative, 1, None),
    ("Huber", lambda: S.Huber(delta=0.5), _real, 1, None),
    ("LogCosh", lambda: S.LogCosh(), _real, 1, None),
    ("CosineSimilarity", lambda: S.CosineSimilarity(axis=-1), _real, 3, None),
    ("Dice", lambda: S.Dice(axis=(1,), smooth=1.0), _binary, 3, "sigmoid"),
    ("Tversky", lambda: S.Tversky(alpha=0.3, beta=0.7, smooth=1.0), _binary, 3, "sigmoid"),
    ("Hinge", lambda: S.Hinge(), _signed, 1, "tanh"),
    ("SquaredHinge", lambda: S.SquaredHinge(), _signed, 1, None),
    ("CategoricalHinge", lambda: S.CategoricalHinge(), _one_hot, 3, None),
    ("GaussianNLL", lambda: S.GaussianNLL(full=True, variance="log_variance"), _half_real, 2, None),
    ("GaussianKL", lambda: S.GaussianKL(prior_log_variance=0.5), _ignored, 4, None),
    ("PoissonNLL", lambda: S.PoissonNLL(full=True), _counts, 1, None),
]
IDS = [row[0] for row in LOSSES]
# Every class in stableops.losses appears in the table.
COVERED = {type(row[1]()).__name__ for row in LOSSES}


# Embedding and sequence losses: fit, mixed precision and saving are tested in
# test_losses_metric.py and test_losses_ctc.py (their targets are labels).
OTHER_INPUTS = {"CTC", "ContrastiveLoss", "NTXent", "TripletLoss"}


def test_the_table_covers_every_stableops_loss():
    classes = {name for name in S.__all__ if name[0].isupper()}
    assert classes == COVERED | OTHER_INPUTS


def _data(row, seed=0):
    _, _, targets, units, _ = row
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, FEATURES)).astype(np.float32), targets(rng, units)


def _model(row):
    _, _, _, units, activation = row
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(units, activation=activation)]
    )


def _compiled(row, jit_compile):
    model = _model(row)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=row[1](), jit_compile=jit_compile)
    return model


# float32 with XLA on and off; each mixed policy once: mixed_float16 with XLA
# (the GPU setting where half-precision outputs meet the loss inside one
# compiled step), mixed_bfloat16 without.
FIT_SETTINGS = [
    ("float32", True),
    ("float32", False),
    ("mixed_float16", True),
    ("mixed_bfloat16", False),
]


@pytest.mark.parametrize("row", LOSSES, ids=IDS)
def test_fit_under_every_policy_with_and_without_xla(row, mixed_precision_policy):
    x, y = _data(row)
    for policy, jit_compile in FIT_SETTINGS:
        mixed_precision_policy(policy)
        model = _compiled(row, jit_compile)
        history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        losses = history.history["loss"]
        assert len(losses) == 1 and math.isfinite(losses[-1]), (policy, jit_compile, losses)
        assert all(np.all(np.isfinite(w)) for w in model.get_weights()), (policy, jit_compile)
        if policy == "mixed_float16":
            # float16 predictions; the loss still returns float32.
            prediction = model(x)
            assert prediction.dtype == tf.float16
            assert model.loss(y, prediction).dtype == tf.float32


@pytest.mark.parametrize("row", LOSSES, ids=IDS)
def test_gradient_tape_loop_and_serialize_round_trip(row):
    x, y = _data(row)
    model = _model(row)
    loss_fn = row[1]()
    optimizer = keras.optimizers.SGD(0.01)
    before = [w.copy() for w in model.get_weights()]
    for step in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        assert loss.dtype == tf.float32 and loss.shape == ()
        assert math.isfinite(float(loss)), step
        assert all(g is not None and np.all(np.isfinite(g)) for g in grads), step
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    after = model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))  # the loss trains the model

    config = keras.losses.serialize(loss_fn)
    assert config["registered_name"] == f"stableops>{type(loss_fn).__name__}"
    rebuilt = keras.losses.deserialize(config)
    assert type(rebuilt) is type(loss_fn)
    assert rebuilt.get_config() == loss_fn.get_config()
    prediction = model(x)
    np.testing.assert_array_equal(rebuilt(y, prediction), loss_fn(y, prediction))


@pytest.mark.parametrize("row", LOSSES, ids=IDS)
def test_save_and_load_a_compiled_model(row, tmp_path):
    x, y = _data(row, seed=1)
    model = _compiled(row, jit_compile=False)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered classes
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()
    # The loss the loaded model trains with (its compiled loss), on the same data.
    expected = model.compute_loss(x=x, y=y, y_pred=model(x))
    actual = loaded.compute_loss(x=x, y=y, y_pred=loaded(x))
    assert math.isfinite(float(expected))
    np.testing.assert_allclose(float(actual), float(expected), rtol=1e-6)
