"""stableops under ``tf.distribute``: same steps as one device, on the same global batch.

The CPU is split into two logical devices so ``MirroredStrategy`` runs two
replicas without a GPU. Logical devices can only be configured before
TensorFlow initialises its runtime, so this module configures them when it is
imported (pytest imports every test module before it runs any test). If some
other module already initialised the runtime in this process, the in-process
tests are skipped and ``test_distribute_suite_in_a_fresh_process`` runs this
whole file again in a fresh interpreter instead, so the checks still run.

What is compared (one device vs two replicas, same global batch):

* every stableops loss and every reduction (see ``_GRID``), with
  ``sample_weight``, in a custom training loop (``strategy.run``): per-step
  loss and trained weights;
* ``model.fit`` with a loss dict under ``MirroredStrategy``;
* ``SkipNonFinite`` and ``NaNGuard`` when only one replica sees a NaN;
* ``MultiWorkerMirroredStrategy`` with two worker processes on localhost (slow).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import stableops
from tests._ecosystem import (
    CASES_BY_NAME,
    LOSS_CASES,
    REDUCTIONS,
    multi_head_model,
    targets_for,
)

N_REPLICAS = 2
_CHILD_ENV = "STABLEOPS_DISTRIBUTE_CHILD"


def _split_cpu(n: int) -> bool:
    """Split the CPU into ``n`` logical devices if the runtime allows; True if there are ``n``."""
    (cpu,) = tf.config.list_physical_devices("CPU")[:1]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        pass  # the runtime is already initialised; keep its devices
    return len(tf.config.list_logical_devices("CPU")) >= n


HAVE_REPLICAS = _split_cpu(N_REPLICAS)
needs_replicas = pytest.mark.skipif(
    not HAVE_REPLICAS,
    reason="TensorFlow was initialised before the CPU could be split; "
    "test_distribute_suite_in_a_fresh_process runs these tests instead",
)

FEATURES = 4
GLOBAL_BATCH = 8
STEPS = 2
RTOL, ATOL = 2e-5, 2e-6  # float32 summation order differs between 1 and 2 replicas
# Each replica's half of the batch has the same weight sum (4.0). Keras's
# "mean_with_sample_weight" divides by the weight sum *of each replica's
# shard*; only with equal shard sums is that the global weighted mean.
SAMPLE_WEIGHT = np.array([0.5, 1.5, 1.2, 0.8, 0.7, 1.3, 0.6, 1.4], "float32")


@pytest.fixture(scope="module")
def mirrored():
    # One strategy for the whole module: MirroredStrategy numbers its
    # collective all-reduce instances per strategy object, and a second
    # strategy in the same process reuses the numbers with other shapes
    # ("Shape mismatch in the collective instance 100").
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(N_REPLICAS)])


def _features(seed=0, n=GLOBAL_BATCH):
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype("float32")


def _close(a, b):
    return np.allclose(a, b, rtol=RTOL, atol=ATOL)


def _head_weights(model):
    return {v.path: np.asarray(v) for v in model.weights}


def _replica_copies_agree(model):
    """Every mirrored variable holds the same value on every replica."""
    for variable in model.weights:
        copies = [np.asarray(c) for c in getattr(variable, "values", (variable,))]
        assert all(np.array_equal(copies[0], c) for c in copies[1:]), variable.path


# ----------------------------------------------------------------------------
# Every loss and every reduction, custom training loop
# ----------------------------------------------------------------------------

# Which (loss, reduction) pairs are trained. Tracing all 19 x 5 pairs on two
# replicas takes minutes, so every loss gets one reduction, rotating through
# the five. Reductions are applied by keras.losses.Loss for every class, and
# the rotation gives each reduction both a cross-entropy-family loss (whose
# class hands Keras's raw inputs to ``call``) and a regression-family loss;
# "none" compares the per-sample values of four losses exactly, "sum" checks
# four losses without Keras's 1/replicas scaling.
_GRID = [(case.name, REDUCTIONS[i % len(REDUCTIONS)]) for i, case in enumerate(LOSS_CASES)]
_PROBABILISTIC = {
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalCrossentropy",
    "KLDivergence",
    "Poisson",
}


def _train_custom_loop(strategy, x, targets):
    """SGD on the global batch for STEPS steps; returns (per-step values, weights).

    Each replica computes every (loss, reduction) on its shard. Keras's
    ``Loss`` pre-divides the mean-type reductions by the number of replicas,
    so summing across replicas gives the global-batch value for every
    reduction except "none", whose per-sample values are gathered instead.
    """
    with strategy.scope():
        model = multi_head_model(LOSS_CASES, FEATURES)
        optimizer = keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)
    losses = {
        (name, reduction): CASES_BY_NAME[name].make(reduction=reduction)
        for name, reduction in _GRID
    }

    def replica_step(x, y, sample_weight):
        with tf.GradientTape() as tape:
            predictions = model(x, training=True)
            values = {
                key: loss(y[key[0]], predictions[key[0]], sample_weight=sample_weight)
                for key, loss in losses.items()
            }
            total = tf.add_n([tf.reduce_sum(v) for v in values.values()])
        gradients = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return values

    @tf.function
    def step(batch):
        values = strategy.run(replica_step, args=batch)
        return {
            key: (
                strategy.gather(value, axis=0)
                if key[1] == "none"
                else strategy.reduce("SUM", value, axis=None)
            )
            for key, value in values.items()
        }

    dataset = tf.data.Dataset.from_tensor_slices((x, targets, SAMPLE_WEIGHT))
    dataset = dataset.batch(GLOBAL_BATCH).repeat(STEPS)
    history = [
        {key: np.asarray(v) for key, v in step(batch).items()}
        for batch in strategy.experimental_distribute_dataset(dataset)
    ]
    return history, model


# Losses outside the grid of per-sample losses on a Dense head: the metric-learning
# losses couple the batch (each replica mines its own share of it, so they cannot
# match one device: the guide says so), and CTC takes label and logit sequences.
_NOT_IN_GRID = {"ContrastiveLoss", "NTXent", "TripletLoss", "CTC"}


@needs_replicas
def test_every_loss_and_reduction_matches_single_device(mirrored):
    every_loss = {n for n in stableops.losses.__all__ if n[0].isupper()}
    assert {name for name, _ in _GRID} == every_loss - _NOT_IN_GRID
    for reduction in REDUCTIONS:
        names = {name for name, r in _GRID if r == reduction}
        assert names & _PROBABILISTIC and names - _PROBABILISTIC, reduction
    x = _features()
    targets = targets_for(LOSS_CASES, GLOBAL_BATCH)
    single, single_model = _train_custom_loop(tf.distribute.get_strategy(), x, targets)
    replicated, replicated_model = _train_custom_loop(mirrored, x, targets)

    assert len(single) == len(replicated) == STEPS
    mismatches = [
        f"step {step}, {name}, reduction={reduction}: one device {single[step][name, reduction]}"
        f" vs {N_REPLICAS} replicas {replicated[step][name, reduction]}"
        for step in range(STEPS)
        for name, reduction in single[step]
        if not _close(single[step][name, reduction], replicated[step][name, reduction])
    ]
    # The trained weights: one Dense head per loss.
    single_weights = _head_weights(single_model)
    mismatches += [
        f"weights {path}: max difference "
        f"{np.abs(value - _head_weights(replicated_model)[path]).max()}"
        for path, value in single_weights.items()
        if not _close(value, _head_weights(replicated_model)[path])
    ]
    assert not mismatches, "\n".join(mismatches)
    # The step really trained (a loop that never updated would also "match").
    initial = _head_weights(multi_head_model(LOSS_CASES, FEATURES))
    assert all(not np.allclose(initial[p], v) for p, v in single_weights.items() if "kernel" in p)
    _replica_copies_agree(replicated_model)
    for values in replicated[-1].values():
        assert np.all(np.isfinite(values))


# ----------------------------------------------------------------------------
# model.fit with a loss dict
# ----------------------------------------------------------------------------

_FIT_HEADS = {
    # head name: (case, reduction)
    "bce": ("BinaryCrossentropy", "sum_over_batch_size"),
    "sparse": ("SparseCategoricalCrossentropy", "sum"),
    "huber": ("Huber", "mean_with_sample_weight"),
}


def _fit(strategy, x, targets):
    cases = [CASES_BY_NAME[case] for case, _ in _FIT_HEADS.values()]
    names = list(_FIT_HEADS)
    with strategy.scope():
        model = multi_head_model(cases, FEATURES, head_names=names)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss={
                name: CASES_BY_NAME[case].make(reduction=reduction)
                for name, (case, reduction) in _FIT_HEADS.items()
            },
        )
    dataset = tf.data.Dataset.from_tensor_slices((x, targets, SAMPLE_WEIGHT)).batch(GLOBAL_BATCH)
    # One batch per epoch: each epoch's logged loss is that step's loss.
    history = model.fit(dataset, epochs=STEPS, verbose=0).history
    return history, model


@needs_replicas
def test_model_fit_with_a_loss_dict_matches_single_device(mirrored):
    x = _features(seed=1)
    cases = [CASES_BY_NAME[case] for case, _ in _FIT_HEADS.values()]
    targets = targets_for(cases, GLOBAL_BATCH, seed=1, head_names=list(_FIT_HEADS))
    single, single_model = _fit(tf.distribute.get_strategy(), x, targets)
    replicated, replicated_model = _fit(mirrored, x, targets)

    for key in ["loss"] + [f"{name}_loss" for name in _FIT_HEADS]:
        np.testing.assert_allclose(replicated[key], single[key], rtol=RTOL, atol=ATOL, err_msg=key)
    assert single["loss"][1] < single["loss"][0]
    for path, value in _head_weights(single_model).items():
        np.testing.assert_allclose(
            _head_weights(replicated_model)[path], value, rtol=RTOL, atol=ATOL, err_msg=path
        )
    _replica_copies_agree(replicated_model)


# ----------------------------------------------------------------------------
# SkipNonFinite and NaNGuard when one replica sees a NaN
# ----------------------------------------------------------------------------


def _one_bad_replica_data(bad_replica=1):
    """Two global batches of 8; the first has an ``inf`` feature in one sample.

    The bad sample lies in ``bad_replica``'s shard (samples 0-3 go to replica
    0, 4-7 to replica 1), so only that replica computes a non-finite loss and
    gradient on the first step.
    """
    x = _features(seed=2, n=2 * GLOBAL_BATCH)
    x[2 + 4 * bad_replica, 1] = np.inf
    y = np.random.default_rng(3).normal(size=(2 * GLOBAL_BATCH, 1)).astype("float32")
    return x, y


def _regressor(seed=5):
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(
                1, kernel_initializer=keras.initializers.RandomNormal(seed=seed), name="dense"
            ),
        ]
    )


def _one_sgd_step_reference(x, y, initial_weights, learning_rate):
    """Weights after one plain SGD step on (x, y) on one device."""
    model = _regressor()
    model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate), loss=stableops.losses.MeanSquaredError()
    )
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return model.get_weights()


def _fit_one_epoch_skipping(mirrored, x, y, loss_scaler=False):
    """A regressor with ``SkipNonFinite(SGD(0.1))`` (around a ``LossScaleOptimizer`` with
    ``loss_scaler``) fitted for one epoch of two global batches; returns ``(model, optimizer,
    initial weights)`` after checking the replicas agree."""
    with mirrored.scope():
        model = _regressor()
        inner = keras.optimizers.SGD(0.1)
        if loss_scaler:  # scaling by a power of 2 is exact: the good step is SGD's
            inner = keras.optimizers.LossScaleOptimizer(inner)
        optimizer = stableops.optimizers.SkipNonFinite(inner)
        model.compile(optimizer=optimizer, loss=stableops.losses.MeanSquaredError())
    initial = model.get_weights()
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0, shuffle=False)
    _replica_copies_agree(model)
    return model, optimizer, initial


@needs_replicas
@pytest.mark.parametrize("loss_scaler", [False, True], ids=["plain", "loss_scaler"])
@pytest.mark.parametrize("bad_replica", [0, 1])
def test_skip_non_finite_skips_the_step_on_every_replica(mirrored, bad_replica, loss_scaler):
    # Around a LossScaleOptimizer the scaler decided from its replica's local gradients:
    # with the NaN on replica 1 the step was applied and the weights went NaN.
    x, y = _one_bad_replica_data(bad_replica)
    model, optimizer, initial = _fit_one_epoch_skipping(mirrored, x, y, loss_scaler)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert int(np.asarray(optimizer.skipped_steps)) == 1
    # The bad step changed nothing; the good step is one ordinary SGD step.
    expected = _one_sgd_step_reference(x[GLOBAL_BATCH:], y[GLOBAL_BATCH:], initial, 0.1)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@needs_replicas
@pytest.mark.parametrize("loss_scaler", [False, True], ids=["plain", "loss_scaler"])
@pytest.mark.parametrize("bad_replica", [0, 1])
def test_skip_non_finite_skips_an_inf_loss_with_finite_gradients_on_every_replica(
    mirrored, bad_replica, loss_scaler
):
    # One target of 3e19 in one replica's shard: its squared error (9e38)
    # overflows float32, so that replica's loss is inf while its gradients
    # (2 * 3e19 / 4 * x) are finite.
    x = _features(seed=2, n=2 * GLOBAL_BATCH)
    y = np.random.default_rng(3).normal(size=(2 * GLOBAL_BATCH, 1)).astype("float32")
    y[2 + 4 * bad_replica] = 3e19
    model, optimizer, initial = _fit_one_epoch_skipping(mirrored, x, y, loss_scaler)
    assert int(np.asarray(optimizer.skipped_steps)) == 1
    expected = _one_sgd_step_reference(x[GLOBAL_BATCH:], y[GLOBAL_BATCH:], initial, 0.1)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@needs_replicas
def test_nan_guard_restores_weights_when_one_replica_goes_nan(mirrored):
    x, y = _one_bad_replica_data()
    # Two good batches (the same one twice), then the bad one: the guard must
    # restore the weights after the first good step, the newest ones a healthy
    # loss (the second batch's) vouched for.
    x = np.concatenate([x[GLOBAL_BATCH:], x[GLOBAL_BATCH:], x[:GLOBAL_BATCH]])
    y = np.concatenate([y[GLOBAL_BATCH:], y[GLOBAL_BATCH:], y[:GLOBAL_BATCH]])
    with mirrored.scope():
        model = _regressor()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=stableops.losses.MeanSquaredError())
    initial = model.get_weights()
    guard = stableops.callbacks.NaNGuard(action="stop", verbose=0)
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[guard])

    _replica_copies_agree(model)
    expected = _one_sgd_step_reference(x[:GLOBAL_BATCH], y[:GLOBAL_BATCH], initial, 0.1)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert model.stop_training
    assert len(guard.events) == 1
    assert guard.events[0]["batch"] == 2 and guard.events[0]["trigger"] == "loss"
    assert guard.events[0]["restored_step"] == 1


# ----------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two worker processes on localhost
# ----------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf, keras, stableops

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    data = np.load(sys.argv[1])
    x, y, sw, global_batch = data["x"], data["y"], data["sw"], int(data["batch"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
        model.set_weights([data["kernel"], data["bias"]])
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    loss_fn = stableops.losses.SparseCategoricalCrossentropy(from_logits=True)

    def dataset_fn(context):
        ds = tf.data.Dataset.from_tensor_slices((x, y, sw))
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        return ds.batch(context.get_per_replica_batch_size(global_batch)).repeat(2)

    def replica_step(x, y, sw):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True), sample_weight=sw)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def step(batch):
        return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)

    losses = [float(step(b)) for b in strategy.distribute_datasets_from_function(dataset_fn)]
    np.savez(sys.argv[2], losses=np.array(losses), kernel=model.get_weights()[0],
             bias=model.get_weights()[1], replicas=strategy.num_replicas_in_sync)
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_replicas  # not needed in-process, but the fresh-process fallback runs it then
def test_multi_worker_mirrored_strategy_on_localhost(tmp_path):
    rng = np.random.default_rng(7)
    data = dict(
        x=rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype("float32"),
        y=rng.integers(0, 3, (GLOBAL_BATCH,)).astype("int32"),
        sw=SAMPLE_WEIGHT,
        batch=GLOBAL_BATCH,
        kernel=rng.normal(size=(FEATURES, 3)).astype("float32"),
        bias=np.zeros(3, "float32"),
    )
    np.savez(tmp_path / "data.npz", **data)
    cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        task = {"type": "worker", "index": index}
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": task}))
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, tmp_path / "data.npz", tmp_path / f"w{index}.npz"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=240)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]

    # Single-device reference: the same SGD steps on the whole global batch.
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(3)])
    model.set_weights([data["kernel"], data["bias"]])
    loss_fn = stableops.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.1)
    reference_losses = []
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(data["y"], model(data["x"]), sample_weight=data["sw"])
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        reference_losses.append(float(loss))

    results = [np.load(tmp_path / f"w{i}.npz") for i in range(2)]
    for result in results:
        assert int(result["replicas"]) == 2
        np.testing.assert_allclose(result["losses"], reference_losses, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(result["kernel"], model.get_weights()[0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(result["bias"], model.get_weights()[1], rtol=RTOL, atol=ATOL)
    assert reference_losses[1] < reference_losses[0]


# ----------------------------------------------------------------------------
# Fallback: the runtime was initialised before this module could split the CPU
# ----------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_REPLICAS, reason="the CPU is split in this process; the tests ran here")
def test_distribute_suite_in_a_fresh_process():
    assert os.environ.get(_CHILD_ENV) != "1", "a fresh process could not split the CPU either"
    env = dict(os.environ, **{_CHILD_ENV: "1"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
