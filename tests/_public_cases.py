"""Every public op and loss function with inputs for one moderate batch (``CASES``).

For tests that run them all alike (``test_float64``, ``test_empty_batch``): a name, the
function, makers of its inputs (``maker(rng)`` gives a float64 or integer array) and the
position of the argument differentiated. ``uncovered()`` names what the table misses.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

import stableops.losses as S
import stableops.ops as O


def _uniform(low, high, *shape):
    return lambda rng: rng.uniform(low, high, shape)


def _labels(classes, *shape):
    return lambda rng: rng.integers(0, classes, shape).astype(np.int32)


def _probabilities(*shape):
    return lambda rng: rng.dirichlet(np.ones(shape[-1]), shape[:-1])


def _logits(rng):
    return rng.normal(0.0, 2.0, (4, 8))


def _mean_and_variance(rng):
    # Variances above the floor (the dtype's eps, so float32's and float64's losses differ
    # below it, by design).
    return np.stack([rng.uniform(-1.0, 1.0, 4), rng.uniform(0.1, 2.0, 4)], axis=-1)


def _label_sequences(rng):
    return np.int32([[1, 2, 0], [3, 3, 1]])


def _from_logits(fn):
    return lambda t, p: fn(t, p, from_logits=True)


_PAIR = (_uniform(0.05, 0.95, 4, 8), _uniform(0.05, 0.95, 4, 8))
_SIGNED_PAIR = (_uniform(-2.0, 2.0, 4, 8), _uniform(-2.0, 2.0, 4, 8))
_DISTRIBUTIONS = (_probabilities(4, 8), _probabilities(4, 8))

# name -> (function, input makers, position of the argument differentiated)
CASES = {
    # ops
    "binary_crossentropy": (O.binary_crossentropy, _PAIR, 1),
    "categorical_crossentropy": (O.categorical_crossentropy, _DISTRIBUTIONS, 1),
    "clip_preserve_gradient": (
        lambda x: O.clip_preserve_gradient(x, -1.0, 1.0), (_uniform(-2.0, 2.0, 16),), 0,
    ),
    "elu": (O.elu, (_uniform(-3.0, 3.0, 16),), 0),
    "l2_normalize": (O.l2_normalize, (_logits,), 0),
    "leaky_relu": (O.leaky_relu, (_uniform(-3.0, 3.0, 16),), 0),
    "log1mexp": (O.log1mexp, (_uniform(-3.0, -0.01, 16),), 0),
    "log_cosh": (O.log_cosh, (_uniform(-3.0, 3.0, 16),), 0),
    "log_sigmoid": (O.log_sigmoid, (_uniform(-5.0, 5.0, 16),), 0),
    "log_softmax": (O.log_softmax, (_logits,), 0),
    "logaddexp": (O.logaddexp, (_uniform(-3.0, 3.0, 16), _uniform(-3.0, 3.0, 16)), 0),
    "logsumexp": (O.logsumexp, (_logits,), 0),
    "safe_divide": (O.safe_divide, (_uniform(-2.0, 2.0, 16), _uniform(0.5, 2.0, 16)), 1),
    "safe_log": (O.safe_log, (_uniform(0.05, 3.0, 16),), 0),
    "safe_norm": (O.safe_norm, (_logits,), 0),
    "safe_sqrt": (O.safe_sqrt, (_uniform(0.05, 3.0, 16),), 0),
    "softmax": (O.softmax, (_logits,), 0),
    "softplus": (O.softplus, (_uniform(-5.0, 5.0, 16),), 0),
    "softplus_inverse": (O.softplus_inverse, (_uniform(0.05, 3.0, 16),), 0),
    "sparse_categorical_crossentropy": (
        _from_logits(O.sparse_categorical_crossentropy), (_labels(8, 4), _logits), 1,
    ),
    "xlogy": (O.xlogy, (_uniform(0.05, 2.0, 16), _uniform(0.05, 2.0, 16)), 1),
    # losses
    "losses.binary_crossentropy": (S.binary_crossentropy, _PAIR, 1),
    "losses.binary_crossentropy/logits": (
        _from_logits(S.binary_crossentropy), (_PAIR[0], _logits), 1,
    ),
    "losses.binary_focal_crossentropy": (S.binary_focal_crossentropy, _PAIR, 1),
    "losses.binary_focal_crossentropy/logits": (
        _from_logits(S.binary_focal_crossentropy), (_PAIR[0], _logits), 1,
    ),
    "losses.categorical_crossentropy": (S.categorical_crossentropy, _DISTRIBUTIONS, 1),
    "losses.categorical_crossentropy/logits": (
        _from_logits(S.categorical_crossentropy), (_DISTRIBUTIONS[0], _logits), 1,
    ),
    "losses.categorical_focal_crossentropy": (S.categorical_focal_crossentropy, _DISTRIBUTIONS, 1),
    "losses.categorical_focal_crossentropy/logits": (
        _from_logits(S.categorical_focal_crossentropy), (_DISTRIBUTIONS[0], _logits), 1,
    ),
    "losses.categorical_hinge": (S.categorical_hinge, _SIGNED_PAIR, 1),
    "losses.contrastive_loss": (S.contrastive_loss, (_labels(4, 16), _uniform(-1, 1, 16, 4)), 1),
    "losses.cosine_similarity": (S.cosine_similarity, _SIGNED_PAIR, 1),
    "losses.ctc": (S.ctc, (_label_sequences, _uniform(-2, 2, 2, 6, 5)), 1),
    "losses.dice": (S.dice, _PAIR, 1),
    "losses.gaussian_kl": (S.gaussian_kl, (_uniform(-1, 1, 4, 8), _uniform(-1, 1, 4, 8)), 1),
    "losses.gaussian_nll": (S.gaussian_nll, (_uniform(-1, 1, 4, 1), _mean_and_variance), 1),
    "losses.hinge": (S.hinge, _SIGNED_PAIR, 1),
    "losses.huber": (S.huber, _SIGNED_PAIR, 1),
    "losses.kl_divergence": (S.kl_divergence, _DISTRIBUTIONS, 1),
    "losses.log_cosh": (S.log_cosh, _SIGNED_PAIR, 1),
    "losses.mean_absolute_error": (S.mean_absolute_error, _SIGNED_PAIR, 1),
    "losses.mean_absolute_percentage_error": (S.mean_absolute_percentage_error, _PAIR, 1),
    "losses.mean_squared_error": (S.mean_squared_error, _SIGNED_PAIR, 1),
    "losses.mean_squared_logarithmic_error": (S.mean_squared_logarithmic_error, _PAIR, 1),
    "losses.nt_xent": (S.nt_xent, (_labels(1, 16), _uniform(-1, 1, 16, 4)), 1),
    "losses.poisson": (S.poisson, _PAIR, 1),
    "losses.poisson_nll": (S.poisson_nll, (_uniform(0, 4, 4, 8), _uniform(-1, 1, 4, 8)), 1),
    "losses.sparse_categorical_crossentropy": (
        S.sparse_categorical_crossentropy, (_labels(8, 4), _probabilities(4, 8)), 1,
    ),
    "losses.sparse_categorical_crossentropy/logits": (
        _from_logits(S.sparse_categorical_crossentropy), (_labels(8, 4), _logits), 1,
    ),
    "losses.squared_hinge": (S.squared_hinge, _SIGNED_PAIR, 1),
    "losses.triplet_loss": (S.triplet_loss, (_labels(4, 16), _uniform(-1, 1, 16, 4)), 1),
    "losses.tversky": (S.tversky, _PAIR, 1),
}

# Public names that are not functions of float tensors.
_NOT_FLOAT_FUNCTIONS = {"DTypeLimits", "dtype_limits", "safe_where"}


def uncovered() -> list:
    """Public ops and loss functions that ``CASES`` misses (or names that are not public)."""
    ops = {n for n in O.__all__ if n not in _NOT_FLOAT_FUNCTIONS}
    losses = {f"losses.{n}" for n in S.__all__ if n[0].islower()}
    covered = {name.split("/")[0] for name in CASES}
    return sorted((ops | losses) ^ covered)


def inputs(name, dtype, rows=None):
    """The case's inputs: floats drawn in float64 and rounded to ``dtype``, integer labels as
    they are; ``rows=0`` keeps none of the leading (batch) axis."""
    _, makers, _ = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    arrays = [make(rng) for make in makers]
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    return arrays if rows is None else [a[:rows] for a in arrays]


@functools.lru_cache(maxsize=None)
def value_shape(name) -> tuple:
    """The shape of the case's value on its float32 inputs (computed once per case)."""
    fn, _, _ = CASES[name]
    return tuple(fn(*inputs(name, np.float32)).shape)


def value_and_gradient(name):
    """``fn(*args)``'s float32 sum and its gradient with respect to the case's argument."""
    fn, _, wrt = CASES[name]

    def value_and_gradient(*args):
        with tf.GradientTape() as tape:
            tape.watch(args[wrt])
            total = tf.reduce_sum(tf.cast(fn(*args), tf.float32))
        return total, tape.gradient(total, args[wrt])

    return value_and_gradient
