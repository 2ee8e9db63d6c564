"""stableops.callbacks.NaNGuard: restore, re-run, explain, then stop / raise / continue."""

import keras
import numpy as np
import pytest

from stableops.callbacks import NaNGuard, NonFiniteTrainingError

BATCH, BATCHES = 16, 6
BAD_BATCH = 3  # the one batch holding an empty (fully padded) sequence
RNG = np.random.default_rng(0)
TOKENS = RNG.integers(1, 10, size=(BATCH * BATCHES, 6)).astype(np.int32)
TOKENS[BAD_BATCH * BATCH + 7] = 0  # every step is padding: the masked mean is 0/0
LABELS = RNG.integers(0, 2, size=(BATCH * BATCHES, 1)).astype(np.float32)


def masked_model(jit_compile=False, learning_rate=0.01):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(10, 4, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(name="pool"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        jit_compile=jit_compile,
    )
    return model


class Recorder(keras.callbacks.Callback):
    """Weights at the start of every batch, and how many batches finished."""

    def __init__(self):
        super().__init__()
        self.weights, self.finished = [], 0

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])

    def on_train_batch_end(self, batch, logs=None):
        self.finished += 1


def fit(model, guard, epochs=1):
    recorder = Recorder()
    history = model.fit(
        TOKENS,
        LABELS,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, guard],
    )
    return recorder, history


@pytest.mark.parametrize("jit_compile", [False, True])
def test_stop_restores_the_weights_from_before_the_bad_batch_and_names_the_cause(jit_compile):
    model = masked_model(jit_compile)
    guard = NaNGuard(action="stop", verbose=0)
    recorder, _ = fit(model, guard, epochs=2)

    assert recorder.finished == BAD_BATCH + 1  # stopped right at the bad batch
    [event] = guard.events
    # Rolled back to weights a healthy loss vouched for: from before an earlier
    # batch (whose loss was computed with them). The weights before the bad
    # batch had no healthy loss after them.
    assert 0 < event["restored_step"] < BAD_BATCH
    for restored, before in zip(model.get_weights(), recorder.weights[event["restored_step"]]):
        np.testing.assert_array_equal(restored, before)
    assert (event["epoch"], event["batch"], event["step"]) == (0, BAD_BATCH, BAD_BATCH + 1)
    # The batch loss is NaN, or (on CPUs whose clip turns NaN into the clip
    # bound, inside Keras's cross-entropy) finite while the update made the
    # weights NaN: either way the guard catches this batch.
    assert event["trigger"] in ("loss", "weights")
    assert event["layer"] == "pool"
    assert event["op"] in ("RealDiv", "Div")
    assert "fully masked" in event["cause"]
    assert event["action"] == "stop"
    finding = guard.report.find("activation.non_finite")[0]
    assert finding.evidence["samples"] == [7]  # row 7 of the re-run batch
    assert not getattr(model.train_function, "_stableops_nan_guard", False)  # unwrapped again


def test_raise_restores_then_raises_with_the_report(capsys):
    model = masked_model()
    guard = NaNGuard(action="raise", verbose=1)
    with pytest.raises(NonFiniteTrainingError, match="fully masked") as caught:
        fit(model, guard)
    assert caught.value.event["step"] == BAD_BATCH + 1
    assert caught.value.report is guard.report
    assert all(np.isfinite(w).all() for w in model.get_weights())
    out = capsys.readouterr().out
    assert "at epoch 1, batch 3 (step 4); rolled back to the weights of step" in out
    assert "activation.non_finite" in out  # the full report is printed
    assert not getattr(model.train_function, "_stableops_nan_guard", False)


def test_continue_lowers_the_learning_rate_and_stops_after_max_recoveries(capsys):
    model = masked_model(learning_rate=0.01)
    guard = NaNGuard(action="continue", lr_factor=0.5, max_recoveries=1, verbose=1)
    recorder, history = fit(model, guard, epochs=3)
    assert "1 recoveries (rollback and learning-rate cut) did not stop" in capsys.readouterr().out

    first, second = guard.events
    assert first["action"] == "continue" and guard.recoveries == 1
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)  # halved once
    # It carried on through the rest of epoch 1 and into epoch 2 ...
    assert second["step"] == BATCHES + BAD_BATCH + 1
    assert recorder.finished == BATCHES + BAD_BATCH + 1
    # ... where the second bad batch exceeded max_recoveries=1: stop.
    assert second["action"] == "stop"
    assert "as diagnosed at step 4" in second["cause"]
    assert all(np.isfinite(w).all() for w in model.get_weights())
    # The running mean restarted after the recovery, so epoch 1's loss is finite.
    assert np.isfinite(history.history["loss"][0])


def test_weights_that_overflow_with_a_finite_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
    # A learning rate near float32's max: the first update overflows the weights to inf.
    model.compile(optimizer=keras.optimizers.SGD(3e38), loss="mse")
    initial = [w.copy() for w in model.get_weights()]
    x = RNG.normal(size=(32, 3)).astype(np.float32)
    y = 10.0 + RNG.normal(size=(32, 1)).astype(np.float32)
    guard = NaNGuard(action="stop", verbose=0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[guard])

    [event] = guard.events
    assert event["trigger"] == "weights" and event["step"] == 1 and np.isfinite(event["loss"])
    assert "sequential/dense/kernel" in event["nonfinite_weights"][0]
    assert event["layer"] == "layer 'dense'" and event["op"] == "optimizer update"
    assert event["cause"].startswith("gradient.exploding")
    for restored, before in zip(model.get_weights(), initial):
        np.testing.assert_array_equal(restored, before)


def _float16_regression(learning_rate):
    """A float16 Dense regression on targets near 40 (Adam, epsilon float16 can hold)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, epsilon=1e-4), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float16)
    y = (x.astype(np.float32) @ rng.normal(size=(8, 1)) * 10 + 40).astype(np.float16)
    return model, x, y


def test_a_float16_optimizers_second_moment_beyond_sqrt_max_is_not_overflow(
    mixed_precision_policy,
):
    # Adam's velocity is a square: gradients above 16 put it past sqrt(65504) = 256 in
    # healthy training (388 here). The guard stopped this run at step 38 as "weight
    # overflow" when it checked the optimizer's state like the weights.
    mixed_precision_policy("float16")
    model, x, y = _float16_regression(1e-2)
    guard = NaNGuard(action="stop", verbose=0, diagnose=False)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[guard])
    velocity = max(
        float(np.abs(v.numpy()).max()) for v in model.optimizer.variables if "velocity" in v.path
    )
    assert velocity > np.sqrt(np.finfo(np.float16).max)
    assert guard.events == [] and len(history.history["loss"]) == 3


def test_a_float16_weight_beyond_sqrt_max_is_heading_for_overflow(mixed_precision_policy):
    mixed_precision_policy("float16")
    model, x, y = _float16_regression(1e-2)
    # One finite weight beyond 256 on a unit that stays off (a bias of -300 and no inputs):
    # training is unchanged, the weight is what the guard sees.
    hidden = model.layers[0]
    unit_zero = np.arange(16) == 0
    hidden.kernel.assign(np.where(unit_zero, 0.0, hidden.kernel.numpy()))
    hidden.bias.assign(np.where(unit_zero, -300.0, hidden.bias.numpy()))
    guard = NaNGuard(action="stop", verbose=0, diagnose=False)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[guard])
    assert [e["trigger"] for e in guard.events] == ["weight overflow"]


def test_a_layers_statistics_beyond_sqrt_max_are_not_overflow():
    # Millisecond timestamps: a Normalization layer adapted to them holds a variance of 8e19,
    # past sqrt(float32 max) = 1.8e19, in healthy training. The guard stopped this run at
    # step 1 as "weight overflow" when it checked the layer's statistics like its weights.
    rng = np.random.default_rng(0)
    stamps = 1.7e12 + rng.uniform(0.0, 3.15e10, size=256)
    x = np.stack([stamps, rng.normal(size=256)], axis=1).astype(np.float32)
    y = ((stamps - stamps.mean()) / stamps.std() + x[:, 1]).astype(np.float32)[:, None]
    normalization = keras.layers.Normalization()
    normalization.adapt(x)
    assert float(np.max(normalization.variance)) > np.sqrt(np.finfo(np.float32).max)
    model = keras.Sequential([keras.Input((2,)), normalization, keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    guard = NaNGuard(action="stop", verbose=0, diagnose=False)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[guard])
    assert guard.events == [] and len(history.history["loss"]) == 2


def test_steps_are_training_steps_with_steps_per_execution():
    # 9 batches an epoch, run 2 at a time: Keras reports the last, partial execution (batch 8
    # alone) as batch 9, and the steps drifted by one an epoch (6, 16 for 6, 15).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(72, 4)).astype(np.float32)
    y = (x @ np.float32([[1.0], [-2.0], [0.5], [1.5]])).astype(np.float32)
    x[44, 0] = np.nan  # batch 5 of every epoch
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=2)
    guard = NaNGuard(action="continue", verbose=0, diagnose=False)
    model.fit(x, y, batch_size=8, shuffle=False, epochs=2, verbose=0, callbacks=[guard])
    assert [(e["epoch"], e["step"]) for e in guard.events] == [(0, 6), (1, 15)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"action": "explode"}, "action"),
        ({"lr_factor": 0.0}, "lr_factor"),
        ({"lr_factor": 2.0}, "lr_factor"),
        ({"lr_factor": float("nan")}, "lr_factor"),
        ({"lr_factor": "0.5"}, "lr_factor"),
        ({"max_recoveries": -1}, "max_recoveries"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"max_diagnoses": -1}, "max_diagnoses"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NaNGuard(**kwargs)


def test_a_numpy_lr_factor_is_a_number():
    # np.float32(0.1) was refused as "must be in (0, 1]"; NumPy numbers are taken elsewhere.
    assert NaNGuard(lr_factor=np.float32(0.5)).lr_factor == 0.5


# ---------------------------------------------------------------------------
# Rescuing a diverging run: the learning-rate cut persists and compounds.

X_REG = RNG.normal(size=(256, 4)).astype(np.float32)
Y_REG = (X_REG @ np.array([[1.0], [-2.0], [0.5], [1.5]], np.float32)).astype(np.float32)
HUGE_RATE = (
    300.0  # every step overshoots until the rate is cut below ~0.7 (2 / largest Hessian eigenvalue)
)
CUT = 0.1


def regression_model(optimizer, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


@pytest.mark.parametrize("wrap", ["plain", "SkipNonFinite", "mixed_float16"])
def test_continue_cuts_the_learning_rate_persistently_and_compounding(wrap, mixed_precision_policy):
    from stableops.optimizers import SkipNonFinite

    optimizer = keras.optimizers.SGD(HUGE_RATE)
    if wrap == "mixed_float16":  # Keras wraps the optimizer in a LossScaleOptimizer
        mixed_precision_policy("mixed_float16")
    model = regression_model(SkipNonFinite(optimizer) if wrap == "SkipNonFinite" else optimizer)
    guard = NaNGuard(action="continue", lr_factor=CUT, diagnose=False, verbose=0)
    model.fit(X_REG, Y_REG, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[guard])

    rates = [event["learning_rate"] for event in guard.events]
    assert len(rates) >= 3  # 300, 30 and 3 all diverge
    expected = [HUGE_RATE * CUT ** (k + 1) for k in range(len(rates))]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    # The rollback restored weights and slots, not the rate: the last cut stands.
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(expected[-1], rel=1e-6)
    assert not model.stop_training
    assert all(np.isfinite(w).all() for w in model.get_weights())
    final = float(model.evaluate(X_REG, Y_REG, verbose=0))
    assert final < 0.1 * float(np.var(Y_REG))  # and the rescued run learned


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_schedule_is_scaled_not_replaced(jit_compile):
    schedule = keras.optimizers.schedules.ExponentialDecay(
        HUGE_RATE, decay_steps=1000, decay_rate=0.9
    )
    optimizer = keras.optimizers.SGD(schedule)
    model = regression_model(optimizer, jit_compile=jit_compile)
    guard = NaNGuard(action="continue", lr_factor=CUT, diagnose=False, verbose=0)
    model.fit(X_REG, Y_REG, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[guard])

    # The cut reached the compiled step: the divergence stopped, and the run
    # never ran out of recoveries.
    assert 1 <= len(guard.events) <= 3 and not model.stop_training
    assert all(np.isfinite(w).all() for w in model.get_weights())
    # The rate follows the same decay, scaled by the cuts.
    scale = CUT ** len(guard.events)
    step = int(optimizer.iterations.numpy())
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(
        scale * float(schedule(step)), rel=1e-5
    )
    config = keras.optimizers.serialize(optimizer)["config"]["learning_rate"]
    assert config["config"]["schedule"]["class_name"] == "ExponentialDecay"
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert float(np.asarray(clone.learning_rate)) == pytest.approx(
        scale * float(schedule(0)), rel=1e-5
    )


def test_the_rollback_keeps_skip_non_finite_counting():
    from stableops.optimizers import SkipNonFinite

    optimizer = SkipNonFinite(keras.optimizers.Adam(0.01))
    model = masked_model()
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    guard = NaNGuard(action="continue", lr_factor=1.0, diagnose=False, verbose=0)
    fit(model, guard, epochs=2)
    assert len(guard.events) == 2  # the bad batch, once per epoch
    assert int(optimizer.skipped_steps.numpy()) == 2  # not rolled back by the restores


class FailAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            raise RuntimeError("another callback failed")


def test_a_guard_after_an_aborted_fit_still_sees_the_batches():
    model = masked_model()
    with pytest.raises(RuntimeError, match="another callback"):  # Keras skips on_train_end
        model.fit(
            TOKENS,
            LABELS,
            batch_size=BATCH,
            verbose=0,
            shuffle=False,
            callbacks=[NaNGuard(action="stop", verbose=0), FailAt()],
        )
    guard = NaNGuard(action="stop", verbose=0)
    fit(model, guard)
    [event] = guard.events
    assert event["cause"] and "fully masked" in event["cause"]  # the batch was re-run
    assert not getattr(model.train_function, "_stableops_nan_guard", False)


# ---------------------------------------------------------------------------
# Resumed runs, unbuilt models, the epoch's metrics, the rollback's age, callable rates.


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return x, y.astype(np.float32)[:, None]


def test_a_resumed_runs_minibatch_noise_is_no_explosion_but_a_real_one_still_is():
    # A second fit of a trained model: its first batch loss is already low, so it is no
    # ceiling for the noise. Hard batches of 8 (0.4 against a level of 0.02) counted as
    # explosions: the guard cut the learning rate 32x and stopped the healthy run.
    x, y = _breast_cancer()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((30,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    guard = NaNGuard(action="continue", verbose=0, diagnose=False)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[guard])
    assert guard.events == [] and len(history.history["loss"]) == 2
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(1e-2)

    # Fine-tuning the trained model at a rate that overshoots: the loss jumps from 0.2 to 8
    # within 5 batches, then keeps growing; that is caught, and rolled back.
    model.compile(
        optimizer=keras.optimizers.SGD(10.0),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    guard = NaNGuard(action="stop", verbose=0, diagnose=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[guard])
    [event] = guard.events
    assert event["trigger"] == "loss explosion" and event["step"] < 10
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_the_loss_monitor_tells_noise_from_jumps_and_climbs():
    from stableops.doctor import LossMonitor

    def verdicts(losses):
        monitor = LossMonitor()
        return [monitor.observe(loss) for loss in losses]

    level = [0.02, 0.025, 0.03, 0.02, 0.09, 0.01, 0.03]
    # Hard batches 25x the level, even two in a row: noise, in a run that started low.
    assert "exploded" not in verdicts(level + [0.5, 0.001, 0.2, 0.4, 0.02, 0.03])
    # A jump: 10x every recent batch.
    assert verdicts(level + [1.0])[-1] == "exploded"
    # A climb of 2x a batch (0.04, 0.08, ...): no jump of 10x. The reference level is 0.02;
    # 0.32 (k=4) is the first loss above 10x that, and the 8th in a row above it (k=11) is
    # the explosion (the ones before are only "high").
    climb = verdicts(level + [0.02 * 2**k for k in range(1, 12)])
    assert climb[-1] == "exploded" and "exploded" not in climb[:-1]
    assert climb[len(level) + 3 : -1] == ["high"] * 7


class MLP(keras.Model):
    """A subclassed model: not built until its first call (here: the first training step)."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def test_a_model_built_by_its_first_step_is_watched_from_then_on():
    # The guard built the optimizer on the unbuilt model's empty variable list: fit crashed
    # ("This optimizer can only be called for the variables it was originally built with").
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    x[70, 0] = np.nan  # batch 4 (step 5)
    keras.utils.set_random_seed(0)
    model = MLP()
    model.compile(optimizer="adam", loss="mse")
    recorder = Recorder()
    guard = NaNGuard(action="stop", verbose=0, diagnose=False)
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0, callbacks=[recorder, guard])
    [event] = guard.events
    assert event["step"] == 5 and event["trigger"] in ("loss", "weights")
    # The weights after step 1 were the first good snapshot; later ones were confirmed.
    assert 1 <= event["restored_step"] < 5
    for restored, before in zip(model.get_weights(), recorder.weights[event["restored_step"]]):
        np.testing.assert_array_equal(restored, before)


def _digits(rows):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x[:rows] / 16).astype(np.float32), y[:rows]


def _digits_model(learning_rate=1e-2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class LastLogs(keras.callbacks.Callback):
    """The logs of each epoch's batch ``batch``, as this callback saw them."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.logs = batch, []

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.logs.append(dict(logs))


def test_continue_keeps_the_epochs_metrics_of_the_good_batches():
    # A bad sample in the last batch of every epoch: the guard reset the metrics and no batch
    # refilled them, so each epoch logged loss 0.0 and accuracy 0.0 (and EarlyStopping took
    # 0.0 as the best loss).
    x, y = _digits(640)
    x[-1, 10] = np.nan  # batch 9 of 10
    model = _digits_model()
    good = LastLogs(batch=8)  # before the guard: the running values after the 9 good batches
    guard = NaNGuard(action="continue", lr_factor=1.0, verbose=0, diagnose=False)
    history = model.fit(
        x, y, batch_size=64, epochs=2, shuffle=False, verbose=0, callbacks=[good, guard]
    )
    assert [(e["epoch"], e["batch"]) for e in guard.events] == [(0, 9), (1, 9)]
    for epoch, logs in enumerate(good.logs):
        assert history.history["loss"][epoch] == pytest.approx(logs["loss"], rel=1e-6)
        assert history.history["accuracy"][epoch] == pytest.approx(logs["accuracy"], rel=1e-6)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_after_a_recovery_the_callbacks_after_the_guard_see_the_restored_logs():
    # They saw the skipped batch's NaN: TerminateOnNaN stopped the recovered run.
    x, y = _digits(640)
    x[300, 10] = np.nan  # batch 4 of 10
    model = _digits_model()
    good, after = LastLogs(batch=3), LastLogs(batch=4)
    guard = NaNGuard(action="continue", verbose=0, diagnose=False)
    callbacks = [good, guard, after, keras.callbacks.TerminateOnNaN()]
    history = model.fit(
        x, y, batch_size=64, epochs=2, shuffle=False, verbose=0, callbacks=callbacks
    )
    assert len(history.history["loss"]) == 2 and len(guard.events) == 2
    for before, seen in zip(good.logs, after.logs):  # batch 4 taken out: as after batch 3
        assert seen["loss"] == pytest.approx(before["loss"], rel=1e-6)
        assert seen["accuracy"] == pytest.approx(before["accuracy"], rel=1e-6)


def test_the_rollback_goes_back_to_one_of_the_newest_good_snapshots():
    # With a recurring bad sample, the rollback went to the snapshot with the lowest loss
    # after it ever seen, never dropped: comparing batches of different data, it went back
    # further and further (5, 5, 5, 11, ... steps by the fourth epoch, 32 of 44 later).
    x, y = _digits(1400)
    x[123, 10] = np.nan
    model = _digits_model(learning_rate=1e-3)
    for snapshots in (1, 2):
        guard = NaNGuard(
            action="continue",
            lr_factor=1.0,
            max_recoveries=None,
            snapshots=snapshots,
            verbose=0,
            diagnose=False,
        )
        model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[guard])
        assert len(guard.events) == 4  # once an epoch
        # The bad batch's step, its predecessor (pending) and the kept good snapshots.
        assert all(e["step"] - e["restored_step"] <= snapshots + 1 for e in guard.events)


def test_a_callable_learning_rate_is_left_unchanged():
    x = RNG.normal(size=(64, 4)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    x[20, 0] = np.nan  # batch 1
    model = regression_model(keras.optimizers.SGD(learning_rate=lambda: 0.01))
    guard = NaNGuard(action="continue", verbose=0, diagnose=False)
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0, callbacks=[guard])
    [event] = guard.events
    assert event["learning_rate"] == "unchanged (a callable learning rate cannot be scaled)"
    assert len(history.history["loss"]) == 1 and not model.stop_training
