"""Mixed precision: stableops models train under mixed_float16/mixed_bfloat16 as in float32.

The problem is the saturated sigmoid + binary cross-entropy case from the
losses issue: a classifier whose output logits start near +12 while half the
labels are 0. In float32 (and with stableops under any policy) the loss
starts at about 6 and falls. Under mixed_float16/mixed_bfloat16 the sigmoid's
float16/bfloat16 output rounds to exactly 1.0; Keras's loss casts it to
float32, which drops the logits the sigmoid left on it, clips 1.0 to 1 - 1e-7
and returns a constant loss with gradient 0: training does not move.

Each run starts from the same weights and takes full-batch SGD steps, so the
per-step losses (``history["loss"]``, one batch per epoch) are comparable
step by step.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import stableops
from tests import _reference as R

BATCH = 16
FEATURES = 4
STEPS = 6
LEARNING_RATE = 0.5
SATURATING_BIAS = 12.0  # sigmoid(12) = 1 - 6e-6: exactly 1.0 in float16 and bfloat16
# Relative tolerance against the float32 trajectory: the hidden layers
# compute in half precision (float16: 11-bit, bfloat16: 8-bit significand),
# so activations carry ~1e-3 (float16) / ~8e-3 (bfloat16) relative rounding.
TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 3e-2}


def _data():
    rng = np.random.default_rng(0)
    x = (10.0 * rng.normal(size=(BATCH, FEATURES)) + 3.0).astype("float32")  # unscaled
    y = (np.arange(BATCH) % 2).astype("float32")[:, None]  # half the labels are 0
    return x, y


def _build():
    """RobustScaler -> Dense -> ELU -> Dense -> LeakyReLU -> Dense(sigmoid), stableops layers."""
    scaler = stableops.layers.RobustScaler()
    scaler.adapt(_data()[0])
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            scaler,
            keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
            stableops.layers.ELU(),
            keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed=2)),
            stableops.layers.LeakyReLU(),
            keras.layers.Dense(
                1,
                activation="sigmoid",
                kernel_initializer=keras.initializers.GlorotUniform(seed=3),
                bias_initializer=keras.initializers.Constant(SATURATING_BIAS),
            ),
        ]
    )


def _train(policy, loss, optimizer, steps=STEPS, **compile_kwargs):
    """Per-step losses and final weights of full-batch training under ``policy``."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = _build()
        model.compile(optimizer=optimizer, loss=loss, **compile_kwargs)
        x, y = _data()
        history = model.fit(x, y, batch_size=BATCH, epochs=steps, verbose=0, shuffle=False)
    finally:
        keras.config.set_dtype_policy(previous)
    return np.array(history.history["loss"]), model


@pytest.fixture(scope="module")
def float32_run():
    losses, model = _train(
        "float32", stableops.losses.BinaryCrossentropy(), keras.optimizers.SGD(LEARNING_RATE)
    )
    # The problem is well posed: float32 training starts confidently wrong
    # on half the batch (mean loss ~6) and makes progress.
    assert losses[0] > 4.0 and losses[-1] < losses[0] - 1.0, losses
    return losses, model.get_weights()


def _assert_matches_float32(losses, model, float32_run, policy):
    reference, reference_weights = float32_run
    np.testing.assert_allclose(losses, reference, rtol=TOLERANCE[policy])
    half = "float16" if policy == "mixed_float16" else "bfloat16"
    assert model.layers[-1].compute_dtype == half  # it really ran in half precision
    for got, want in zip(model.get_weights(), reference_weights):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=5 * TOLERANCE[policy], atol=TOLERANCE[policy])


def test_mixed_float16_with_loss_scale_optimizer_matches_float32(float32_run):
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE))
    losses, model = _train("mixed_float16", stableops.losses.BinaryCrossentropy(), optimizer)
    _assert_matches_float32(losses, model, float32_run, "mixed_float16")


@pytest.mark.parametrize("auto_scale_loss", [False, True])
def test_mixed_float16_with_skip_non_finite_around_loss_scale_optimizer(
    float32_run, auto_scale_loss
):
    optimizer = stableops.optimizers.SkipNonFinite(
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE))
    )
    losses, model = _train(
        "mixed_float16", stableops.losses.BinaryCrossentropy(), optimizer,
        auto_scale_loss=auto_scale_loss,
    )
    assert model.optimizer is optimizer  # no second loss scaler around it
    _assert_matches_float32(losses, model, float32_run, "mixed_float16")
    assert int(np.asarray(optimizer.skipped_steps)) == 0


def test_mixed_float16_with_skip_non_finite_inside_the_automatic_loss_scaling(float32_run):
    # The plain form: Keras wraps any optimizer in a LossScaleOptimizer under
    # mixed_float16, so this trains LossScaleOptimizer(SkipNonFinite(SGD)).
    optimizer = stableops.optimizers.SkipNonFinite(keras.optimizers.SGD(LEARNING_RATE))
    losses, model = _train("mixed_float16", stableops.losses.BinaryCrossentropy(), optimizer)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    _assert_matches_float32(losses, model, float32_run, "mixed_float16")


def test_mixed_bfloat16_matches_float32(float32_run):
    losses, model = _train(
        "mixed_bfloat16", stableops.losses.BinaryCrossentropy(), keras.optimizers.SGD(LEARNING_RATE)
    )
    _assert_matches_float32(losses, model, float32_run, "mixed_bfloat16")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_stock_keras_loss_does_not_train_here(float32_run, policy):
    """The control: this is a problem where Keras's own loss fails (loss frozen, gradient 0)."""
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    losses, _ = _train(policy, keras.losses.BinaryCrossentropy(), optimizer)
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)  # no step changed the loss
    assert not np.allclose(losses, float32_run[0], rtol=TOLERANCE[policy])


INITIAL_SCALE = 2.0**20


def test_skip_non_finite_leaves_loss_scale_overflow_recovery_to_the_scaler():
    """An initial loss scale of 2**20 overflows float16 gradients for the first steps.

    LossScaleOptimizer skips those steps and halves its scale until the
    gradients fit. SkipNonFinite around it must not intercept them (or the
    scale never comes down): the run must be step for step the one of the
    LossScaleOptimizer alone, and training must resume.
    """
    steps = 8

    def loss_scaled():
        return keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(LEARNING_RATE), initial_scale=INITIAL_SCALE
        )

    alone, alone_model = _train(
        "mixed_float16", stableops.losses.BinaryCrossentropy(), loss_scaled(), steps=steps
    )
    wrapped_optimizer = stableops.optimizers.SkipNonFinite(loss_scaled())
    wrapped, wrapped_model = _train(
        "mixed_float16", stableops.losses.BinaryCrossentropy(), wrapped_optimizer, steps=steps,
        auto_scale_loss=False,
    )
    # The scaler really had to recover: it lowered its scale ...
    assert float(np.asarray(alone_model.optimizer.dynamic_scale)) < INITIAL_SCALE
    # ... and training then moved.
    assert alone[-1] < alone[0] - 0.5, alone
    np.testing.assert_allclose(wrapped, alone, rtol=1e-6)
    for got, want in zip(wrapped_model.get_weights(), alone_model.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sparse", [False, True], ids=["binary", "sparse"])
def test_a_float16_predictions_gradient_saturates_after_the_mean(regime, sparse):
    """The gradient of a mean over 8 rows for a float16 probability of 1e-5 is -1/(8 p) =
    -12484, in float16's range; -1/p alone is not. Eagerly and in a graph the kernel's
    gradient for a unit upstream saturated at 65504 first and the mean scaled it to -8188
    (XLA: -12484). It is float32 until the product with the upstream, saturated after it:
    the same in every regime, and -65504 where -1/(8 p) itself is beyond the range."""
    rows = 8
    for p, saturated in ((1e-5, False), (1e-6, True)):
        if sparse:
            labels = np.zeros(rows, np.int32)
            predictions = np.tile(np.array([[p, 0.5, 0.5]], np.float16), (rows, 1))
            loss = stableops.losses.SparseCategoricalCrossentropy()
        else:
            labels = np.ones((rows, 1), np.float16)
            predictions = np.full((rows, 1), p, np.float16)
            loss = stableops.losses.BinaryCrossentropy()
        _, (grad,) = regime.value_and_grad(lambda t, q: loss(t, q), labels, predictions, wrt=(1,))
        first = grad[:, 0]
        if saturated:
            assert np.all(first == -np.finfo(np.float16).max), first
        else:
            # d/dp of mean(-log(p / sum)) is -1/(8 p) + 1/(8 sum) for the sparse rows
            p16 = R.mpf(predictions[0, 0])
            want = -1 / (rows * p16) + (1 / (rows * R.mpf(predictions[0].astype(np.float64).sum()))
                                        if sparse else 0)
            R.assert_ulp_within(first, [want] * rows, "float16", 2)


_LABELS = np.int32([0, 0, 1, 1])
_FAR = np.float32([[6e4, 0.0], [-6e4, 0.0], [0.0, 6e4], [0.0, -6e4]])
_NEAR_ZERO = np.float32([[1e-4, 0.0], [0.0, 1e-4], [1e-4, 1e-4], [-1e-4, 2e-4]])
# Each case's exact gradient is beyond float16's largest number, 65504 (printed in the test).
_BEYOND_HALF = {
    # (y - mean) / variance = 3e5
    "GaussianNLL": (stableops.losses.GaussianNLL(), stableops.losses.gaussian_nll,
                    np.float32([[300.0]]), np.float32([[0.0, 1e-3]])),
    # expm1(12) / 2 = 81377
    "GaussianKL": (stableops.losses.GaussianKL(),
                   lambda _, p: stableops.losses.gaussian_kl(p[:, :1], p[:, 1:]),
                   np.float32([[0.0]]), np.float32([[0.5, 12.0]])),
    # exp(12) = 162755
    "PoissonNLL": (stableops.losses.PoissonNLL(), stableops.losses.poisson_nll,
                   np.float32([[0.0]]), np.float32([[12.0]])),
    # squared distances' 2 d / batch for embeddings 1.2e5 apart
    "TripletLoss": (stableops.losses.TripletLoss(distance="squared"),
                    lambda t, p: stableops.losses.triplet_loss(t, p, distance="squared"),
                    _LABELS, _FAR),
    "ContrastiveLoss": (stableops.losses.ContrastiveLoss(), stableops.losses.contrastive_loss,
                        np.zeros(4, np.int32), _FAR),
    # 1 / (t |z|) at t = 0.01 for embeddings of 1e-4
    "NTXent": (stableops.losses.NTXent(temperature=0.01),
               lambda t, p: stableops.losses.nt_xent(t, p, temperature=0.01),
               _LABELS, _NEAR_ZERO),
}


@pytest.mark.parametrize("name", sorted(_BEYOND_HALF))
def test_a_loss_class_saturates_a_float16_gradient_as_its_function(regime, name):
    """Under ``mixed_float16`` a loss class gets float16 predictions. Keras's base casts them
    to float32 with a plain cast, whose gradient overflowed to ``inf`` in float16 where the
    function form's saturates at 65504 (the Gaussian losses had their own fix; the
    metric-learning classes did not). The class and the mean of the function form now
    agree exactly, value and gradient."""
    loss, function, y_true, y_pred = _BEYOND_HALF[name]
    _, (exact,) = regime.value_and_grad(lambda t, p: loss(t, p), y_true, y_pred, wrt=(1,))
    assert np.abs(exact).max() > np.finfo(np.float16).max, np.abs(exact).max()
    half = y_pred.astype(np.float16)
    value, (grad,) = regime.value_and_grad(lambda t, p: loss(t, p), y_true, half, wrt=(1,))
    want_value, (want_grad,) = regime.value_and_grad(
        lambda t, p: keras.ops.mean(keras.ops.cast(function(t, p), "float32")),
        y_true, half, wrt=(1,),
    )
    assert np.isfinite(grad.astype(np.float32)).all(), grad
    assert np.abs(grad.astype(np.float32)).max() == np.finfo(np.float16).max
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(value, want_value)
