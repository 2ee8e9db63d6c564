"""stableops.optimizers.SkipNonFinite: skip non-finite steps inside the compiled train step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stableops.optimizers import SkipNonFinite

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = RNG.normal(size=(64, 1)).astype(np.float32)
BATCH = 16
BAD_BATCH = 2  # batch 2 of 4 holds a NaN input: its loss and gradients are NaN
X_BAD = X.copy()
X_BAD[BAD_BATCH * BATCH + 5, 1] = np.nan


def model_with(optimizer, jit_compile):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


class WeightsAroundBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.before, self.after = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.before.append([w.copy() for w in self.model.get_weights()])

    def on_train_batch_end(self, batch, logs=None):
        self.after.append([w.copy() for w in self.model.get_weights()])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_non_finite_step_is_skipped_and_counted(jit_compile):
    optimizer = SkipNonFinite(keras.optimizers.Adam(0.01))
    model = model_with(optimizer, jit_compile)
    record = WeightsAroundBatches()
    model.fit(X_BAD, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[record])

    weights = model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    assert int(optimizer.skipped_steps.numpy()) == 2  # once per epoch
    assert int(optimizer.iterations.numpy()) == 8 - 2  # skipped steps do not count
    for step in (BAD_BATCH, 4 + BAD_BATCH):  # the bad batch left every weight exactly as it was
        for before, after in zip(record.before[step], record.after[step]):
            np.testing.assert_array_equal(before, after)
    for before, after in zip(record.before[0], record.after[0]):  # good batches do train
        assert not np.array_equal(before, after)
    # The Adam moments stayed finite too (the next steps would be NaN otherwise).
    assert all(np.isfinite(np.asarray(v)).all() for v in optimizer.inner_optimizer.variables)


def _apply_steps(optimizer, grads_per_step):
    variable = keras.Variable(np.ones((2, 2), np.float32))
    for grad in grads_per_step:
        optimizer.apply([tf.constant(grad, tf.float32)], [variable])
    return variable.numpy()


STEPS = [
    np.full((2, 2), 0.5),
    [[np.nan, 1.0], [1.0, 1.0]],
    np.full((2, 2), -0.25),
    [[np.inf, 0], [0, 0]],
]


def test_without_the_wrapper_the_weights_go_nan():
    # The control: the bare optimizer applies the NaN step and is ruined.
    assert not np.isfinite(_apply_steps(keras.optimizers.SGD(0.1, momentum=0.9), STEPS)).all()


def test_finite_steps_match_the_bare_optimizer():
    finite = [STEPS[0], STEPS[2]]
    bare = _apply_steps(keras.optimizers.SGD(0.1, momentum=0.9), finite)
    optimizer = SkipNonFinite(keras.optimizers.SGD(0.1, momentum=0.9))
    np.testing.assert_array_equal(_apply_steps(optimizer, STEPS), bare)
    assert int(optimizer.skipped_steps.numpy()) == 2
    assert int(optimizer.iterations.numpy()) == 2


def test_a_loss_scale_optimizer_inside_handles_overflow_itself():
    # SkipNonFinite(LossScaleOptimizer(...)): the scaler must see the
    # overflowing scaled gradients, or its scale would never come down.
    inner = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0), initial_scale=2.0**10)
    optimizer = SkipNonFinite(inner)
    variable = keras.Variable(np.ones((2,), np.float32))
    optimizer.apply([tf.constant([np.inf, 1.0])], [variable])
    assert float(np.asarray(inner.dynamic_scale)) == 2.0**9  # the scaler lowered its scale
    np.testing.assert_array_equal(variable.numpy(), [1.0, 1.0])  # and skipped the step
    # A scaled gradient of 1 (the variables named: Keras before 3.12 applies nothing
    # without them after a skipped first step, its own LossScaleOptimizer too).
    optimizer.apply([tf.constant([2.0**9, 0.0])], [variable])
    np.testing.assert_array_equal(variable.numpy(), [0.0, 1.0])
    assert int(optimizer.skipped_steps.numpy()) == 1 and int(optimizer.iterations.numpy()) == 1


def test_around_a_loss_scale_optimizer_it_is_one_and_stays_one_when_saved(tmp_path):
    # keras compile(auto_scale_loss=True) adds a LossScaleOptimizer around any
    # optimizer that is not one; a second scaler would unscale twice.
    scaler = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0**8)
    optimizer = SkipNonFinite(scaler)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer, SkipNonFinite) and optimizer.inner_optimizer is scaler
    plain = SkipNonFinite(keras.optimizers.SGD(0.1))
    assert not isinstance(plain, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.scale_loss(tf.constant(1.0))) == 2.0**8  # the wrapped scaler's scale

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = model_with(optimizer, jit_compile=False)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.optimizer is optimizer
    model.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path).optimizer
    assert type(loaded) is type(optimizer)
    assert isinstance(loaded.inner_optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(np.asarray(loaded.dynamic_scale)) == float(np.asarray(scaler.dynamic_scale))
    assert int(loaded.iterations.numpy()) == len(X) // BATCH


def test_apply_directly_and_indexed_slices():
    variable = keras.Variable(np.ones((3, 2), np.float32))
    optimizer = SkipNonFinite(keras.optimizers.SGD(1.0))
    sparse_nan = tf.IndexedSlices(
        tf.constant([[np.nan, 1.0]]), tf.constant([1]), tf.constant([3, 2])
    )
    optimizer.apply([sparse_nan], [variable])
    np.testing.assert_array_equal(variable.numpy(), np.ones((3, 2)))
    optimizer.apply([tf.fill((3, 2), 0.5)])
    np.testing.assert_array_equal(variable.numpy(), np.full((3, 2), 0.5))
    assert int(optimizer.skipped_steps.numpy()) == 1
    assert int(optimizer.iterations.numpy()) == 1


def test_learning_rate_is_the_inner_optimizers():
    inner = keras.optimizers.Adam(0.01)
    optimizer = SkipNonFinite(inner)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    optimizer.learning_rate = 0.005  # what ReduceLROnPlateau and NaNGuard do
    assert float(inner.learning_rate) == pytest.approx(0.005)


def test_serialization_round_trip(tmp_path):
    optimizer = SkipNonFinite(keras.optimizers.Adam(0.02, clipnorm=1.0), name="guarded")
    config = optimizer.get_config()
    clone = SkipNonFinite.from_config(config)
    assert clone.name == "guarded"
    assert isinstance(clone.inner_optimizer, keras.optimizers.Adam)
    assert clone.inner_optimizer.get_config() == optimizer.inner_optimizer.get_config()
    assert (
        keras.optimizers.deserialize(keras.optimizers.serialize(optimizer)).get_config() == config
    )

    model = model_with(optimizer, jit_compile=False)
    variables = model.trainable_variables
    for value in (1.0, np.nan, -1.0, 0.5):  # three applied steps, one skipped
        optimizer.apply([tf.fill(v.shape, value) for v in variables], variables)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, SkipNonFinite)
    assert isinstance(loaded.optimizer.inner_optimizer, keras.optimizers.Adam)
    assert int(loaded.optimizer.skipped_steps.numpy()) == 1  # state travels with the model
    assert int(loaded.optimizer.iterations.numpy()) == 3
    for ours, theirs in zip(
        optimizer.inner_optimizer.variables, loaded.optimizer.inner_optimizer.variables
    ):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_string_optimizer_and_bad_arguments():
    assert isinstance(SkipNonFinite("adam").inner_optimizer, keras.optimizers.Adam)
    with pytest.raises(ValueError, match="clipnorm"):
        SkipNonFinite("adam", clipnorm=1.0)
    with pytest.raises(ValueError):
        SkipNonFinite("no_such_optimizer")


def test_a_step_where_only_some_gradients_are_non_finite_is_skipped():
    # Two variables, a NaN in the gradient of one only: applying the step would
    # ruin v1 while v2 trains; the whole step must be skipped.
    v1 = keras.Variable(np.ones((2,), np.float32))
    v2 = keras.Variable(np.ones((2,), np.float32))
    optimizer = SkipNonFinite(keras.optimizers.SGD(0.1))
    optimizer.apply([tf.constant([np.nan, 1.0]), tf.constant([1.0, 1.0])], [v1, v2])
    np.testing.assert_array_equal(v1.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(v2.numpy(), [1.0, 1.0])
    assert int(optimizer.skipped_steps.numpy()) == 1


# A weight of 3e19 makes the squared error overflow float32 (9e38 > 3.4e38):
# the loss is inf while every gradient (2 * 3e19 * x) is still finite.
HUGE = 3e19


def overflowing_model(optimizer, jit_compile):
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    model.layers[0].kernel.assign([[HUGE]])
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_step_with_a_non_finite_loss_and_finite_gradients_is_skipped(jit_compile):
    optimizer = SkipNonFinite(keras.optimizers.SGD(1.0))
    model = overflowing_model(optimizer, jit_compile)
    x, y = np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32)
    with tf.GradientTape() as tape:  # the premise: inf loss, finite gradients
        loss = keras.losses.MeanSquaredError()(y, model(x))
    assert np.isinf(float(loss))
    assert all(np.isfinite(g.numpy()).all() for g in tape.gradient(loss, model.trainable_variables))

    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isinf(history.history["loss"][0])
    assert int(optimizer.skipped_steps.numpy()) == 1
    assert model.layers[0].kernel.numpy()[0, 0] == np.float32(HUGE)  # untouched
    assert int(optimizer.iterations.numpy()) == 0


def test_the_loss_check_needs_the_loss_of_the_same_step():
    # A custom loop that calls apply() without scale_loss(): gradients decide.
    variable = keras.Variable(np.ones((2,), np.float32))
    optimizer = SkipNonFinite(keras.optimizers.SGD(1.0))
    optimizer.scale_loss(tf.constant(np.inf))
    optimizer.apply([tf.constant([1.0, 1.0])], [variable])  # skipped: that loss was inf
    optimizer.apply([tf.constant([1.0, 1.0])], [variable])  # applied: no loss seen for it
    np.testing.assert_array_equal(variable.numpy(), [0.0, 0.0])
    assert int(optimizer.skipped_steps.numpy()) == 1


def _fit_weights(optimizer, callbacks=()):
    model = model_with(optimizer, jit_compile=False)
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
              callbacks=list(callbacks))
    return model.get_weights()


def test_exclude_from_weight_decay_reaches_the_wrapped_optimizer():
    # The wrapped optimizer applies the decay: an exclusion set on the wrapper was ignored
    # (the biases decayed as without it).
    def adamw(wrap, exclude):
        optimizer = keras.optimizers.AdamW(0.1, weight_decay=0.5)
        optimizer = SkipNonFinite(optimizer) if wrap else optimizer
        if exclude:
            optimizer.exclude_from_weight_decay(var_names=["bias"])
        return optimizer

    excluded = _fit_weights(adamw(wrap=False, exclude=True))
    decayed = _fit_weights(adamw(wrap=False, exclude=False))
    assert not np.allclose(excluded[1], decayed[1])  # the exclusion matters here
    for got, want in zip(_fit_weights(adamw(wrap=True, exclude=True)), excluded):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_swap_ema_weights_swaps_the_wrapped_optimizers_averages(policy, mixed_precision_policy):
    # Under mixed_float16 Keras puts a LossScaleOptimizer around the wrapper, and
    # SwapEMAWeights looks one level down, at the wrapper: it raised "must be used when
    # use_ema=True". At the end of training it writes the averages into the model.
    mixed_precision_policy(policy)

    def weights(wrap):
        optimizer = keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5)
        optimizer = SkipNonFinite(optimizer) if wrap else optimizer
        return _fit_weights(optimizer, [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])

    plain = weights(wrap=False)
    for got, want in zip(weights(wrap=True), plain):
        np.testing.assert_array_equal(got, want)


def test_the_config_of_a_loss_scaler_makes_a_loss_scaler():
    """``SkipNonFinite`` of a serialized ``LossScaleOptimizer`` was a plain wrapper (the class
    was picked before the config became an optimizer), so ``compile`` under
    ``mixed_float16`` put a second scaler around it: the loss scaled once, the gradients
    unscaled twice. It is the same class as from an instance now."""
    scaler = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=128.0)
    optimizer = SkipNonFinite(keras.optimizers.serialize(scaler))
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert type(optimizer) is type(SkipNonFinite(scaler))
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.LossScaleOptimizer)
