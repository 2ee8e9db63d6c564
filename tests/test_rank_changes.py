"""Every public op, loss, layer and activation, called eagerly at changing ranks in one process.

The eager kernels are compiled once per rank of their arguments: a kernel
traced with generalized shapes must never see a tensor of unknown rank (which
broke every later call at a new rank: ``len(shape)`` of an unknown shape).

Each callable gets inputs of rank 2, 3, 2 again, 1 and 4 built from one
rank-1 row ``r`` broadcast to ``(2,) * (rank - 1) + r.shape``. Every copy of the
row is the same example, so an op's result at each rank is its result on
``r`` broadcast, and a loss (mean over the batch) has the same value at every
rank: an exact reference, not a recorded value.
"""

import numpy as np
import pytest

import stableops
from stableops import activations, layers, losses, ops

RANKS = (2, 3, 2, 1, 4)
ROW = np.array([-2.5, 0.3, 1.7, -0.01], "float32")
PROBABILITIES = np.array([0.1, 0.6, 0.25, 0.05], "float32")
ONE_HOT = np.array([0.0, 1.0, 0.0, 0.0], "float32")
BINARY = np.array([1.0, 0.0, 1.0, 0.0], "float32")
SIGNS = 2.0 * BINARY - 1.0
POSITIVE = np.array([0.5, 2.0, 3.5, 1.0], "float32")


def _broadcast(row, rank):
    """``row`` (an example of rank ``row.ndim``) as a batch of rank ``rank``."""
    row = np.asarray(row)
    batch = rank - row.ndim
    return np.broadcast_to(row, (2,) * batch + row.shape).copy()


def _numpy(value):
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value, "float64")


# name -> (callable, example rows): each row has rank 1 (rank 0 for class labels)
OPS = {
    "safe_where": (lambda c, x: ops.safe_where(c, x, ops.safe_log, lambda v: v), (ROW > 0, ROW)),
    "safe_divide": (ops.safe_divide, (ROW, POSITIVE)),
    "safe_log": (ops.safe_log, (POSITIVE,)),
    "safe_sqrt": (ops.safe_sqrt, (POSITIVE,)),
    "safe_norm": (ops.safe_norm, (ROW,)),
    "l2_normalize": (ops.l2_normalize, (ROW,)),
    "clip_preserve_gradient": (lambda x: ops.clip_preserve_gradient(x, -1.0, 1.0), (ROW,)),
    "logsumexp": (ops.logsumexp, (ROW,)),
    "softmax": (ops.softmax, (ROW,)),
    "log_softmax": (ops.log_softmax, (ROW,)),
    "logaddexp": (ops.logaddexp, (ROW, POSITIVE)),
    "log1mexp": (ops.log1mexp, (POSITIVE,)),
    "log_sigmoid": (ops.log_sigmoid, (ROW,)),
    "softplus": (ops.softplus, (ROW,)),
    "softplus_inverse": (ops.softplus_inverse, (POSITIVE,)),
    "log_cosh": (ops.log_cosh, (ROW,)),
    "xlogy": (ops.xlogy, (POSITIVE, POSITIVE)),
    "elu": (ops.elu, (ROW,)),
    "leaky_relu": (ops.leaky_relu, (ROW,)),
    "binary_crossentropy": (ops.binary_crossentropy, (BINARY, PROBABILITIES)),
    "categorical_crossentropy": (ops.categorical_crossentropy, (ONE_HOT, PROBABILITIES)),
    "sparse_categorical_crossentropy": (
        ops.sparse_categorical_crossentropy,
        (np.int32(1), PROBABILITIES),
    ),
}
ACTIVATIONS = {
    f"activations.{name}": (getattr(activations, name), (ROW,)) for name in activations.__all__
}
LAYERS = {
    "LeakyReLU": (lambda: layers.LeakyReLU(), (ROW,)),
    "ELU": (lambda: layers.ELU(), (ROW,)),
    "Softmax": (lambda: layers.Softmax(), (ROW,)),
}

# loss class name -> (y_true row, y_pred row); rank-1 rows, rank 0 for sparse labels
LOSS_ROWS = {
    "BinaryCrossentropy": (BINARY, PROBABILITIES),
    "BinaryFocalCrossentropy": (BINARY, PROBABILITIES),
    "CategoricalCrossentropy": (ONE_HOT, PROBABILITIES),
    "CategoricalFocalCrossentropy": (ONE_HOT, PROBABILITIES),
    "SparseCategoricalCrossentropy": (np.int32(1), PROBABILITIES),
    "KLDivergence": (PROBABILITIES[::-1].copy(), PROBABILITIES),
    "Poisson": (POSITIVE, POSITIVE[::-1].copy()),
    "MeanSquaredError": (ROW, POSITIVE),
    "MeanAbsoluteError": (ROW, POSITIVE),
    "MeanAbsolutePercentageError": (POSITIVE, ROW),
    "MeanSquaredLogarithmicError": (POSITIVE, POSITIVE[::-1].copy()),
    "Huber": (ROW, POSITIVE),
    "LogCosh": (ROW, POSITIVE),
    "CosineSimilarity": (ROW, POSITIVE),
    "Dice": (BINARY, PROBABILITIES),
    "Tversky": (BINARY, PROBABILITIES),
    "Hinge": (SIGNS, ROW),
    "SquaredHinge": (SIGNS, ROW),
    "CategoricalHinge": (ONE_HOT, ROW),
}
SNAKE = {
    "KLDivergence": "kl_divergence",
    "MeanSquaredError": "mean_squared_error",
    "MeanAbsoluteError": "mean_absolute_error",
    "MeanAbsolutePercentageError": "mean_absolute_percentage_error",
    "MeanSquaredLogarithmicError": "mean_squared_logarithmic_error",
    "LogCosh": "log_cosh",
}


def _function_form(name):
    snake = SNAKE.get(name) or "".join(
        "_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name)
    )
    return getattr(losses, snake)


def _row_batches(rows, rank):
    """Each example row broadcast to a batch whose prediction has rank ``rank``."""
    prediction_rank = max(np.ndim(row) for row in rows)
    return [_broadcast(row, rank - prediction_rank + np.ndim(row)) for row in rows]


def _assert_results_follow_the_row(fn, rows, ranks=RANKS):
    expected = _numpy(fn(*_row_batches(rows, 2)))[0]
    for rank in ranks:
        result = _numpy(fn(*_row_batches(rows, rank)))
        assert np.all(np.isfinite(result)), (rank, result)
        np.testing.assert_allclose(
            result,
            np.broadcast_to(expected, result.shape),
            rtol=1e-6,
            atol=1e-7,
            err_msg=f"rank {rank}",
        )


@pytest.mark.parametrize("name", sorted({**OPS, **ACTIVATIONS}))
def test_ops_and_activations_at_changing_ranks(name):
    fn, rows = {**OPS, **ACTIVATIONS}[name]
    _assert_results_follow_the_row(fn, rows)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_at_changing_ranks(name):
    make, rows = LAYERS[name]
    _assert_results_follow_the_row(make(), rows)


def test_robust_scaler_at_changing_ranks():
    scaler = layers.RobustScaler()
    scaler.adapt(np.stack([ROW, 2 * ROW, -ROW, ROW + 1]))
    # A layer with a batch axis and a feature axis: rank 1 would be one feature vector
    # without its batch axis, which Keras layers reject.
    _assert_results_follow_the_row(scaler, (ROW,), ranks=(2, 3, 2, 4))


@pytest.mark.parametrize("name", sorted(LOSS_ROWS))
def test_losses_at_changing_ranks(name):
    rows = LOSS_ROWS[name]
    loss_class = getattr(losses, name)
    function_form = _function_form(name)
    expected = None
    for rank in (2, 3, 2, 4):
        y_true, y_pred = _row_batches(rows, rank)
        value = float(loss_class()(y_true, y_pred))
        per_sample = _numpy(function_form(y_true, y_pred))
        if expected is None:
            expected = value
        assert np.isfinite(value)
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=f"rank {rank}")
        np.testing.assert_allclose(per_sample.mean(), expected, rtol=1e-6, err_msg=f"rank {rank}")


def test_diagnose_after_a_rank_change_finds_no_loss_error():
    """A dense model, then a sequence model, in one process: the loss still evaluates."""
    import keras

    for shape in ((6,), (5, 6)):
        inputs = keras.Input(shape)
        outputs = keras.layers.Dense(3, activation="softmax")(inputs)
        model = keras.Model(inputs, outputs)
        loss = stableops.losses.CategoricalCrossentropy()
        model.compile(loss=loss, run_eagerly=True)
        x = np.random.default_rng(0).normal(size=(8,) + shape).astype("float32")
        y = np.eye(3, dtype="float32")[np.zeros((8,) + shape[:-1], int)]
        report = stableops.diagnose(model, x, y, loss=loss)
        assert "loss.raised" not in {finding.check for finding in report.findings}, str(report)
