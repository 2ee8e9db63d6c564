"""Second-order gradients (nested tapes: a gradient penalty) where a row's maximum is tied.

The max-shifted row reductions take ``x - m`` at the maxima as a constant 0 and count the
maxima as a constant; differentiated again, a row whose maximum is tied saw the maxima's
dependence on ``x`` only through ``reduce_max``'s ``1/k`` split of ``m``'s slope. The Hessian
of a cross-entropy from logits ``[1, 1, 0]`` was ``[[.033, .033, -.066], ...]`` where the exact
one, ``diag(p) - p p^T``, is ``[[.244, -.178, -.066], ...]``, and a row ``[0, 0, 0, -80]`` got
zeros, in every regime. The gradient functions now declare the slope of the softmax they read
(``ops._softmax.with_softmax_slope``).

References: closed forms in the softmax ``p`` computed by mpmath (the Hessian of
``logsumexp`` is ``diag(p) - p p^T``), and mpmath's numerical derivative of the focal loss's
definition; never the code under test. First-order values and gradients on the same rows
are checked against mpmath too (they are unchanged by the fix).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
import stableops.ops as O
from tests import _reference as ref

# Rows of equal width are one batch (one trace per width). A single maximum is a control:
# its Hessian was right before.
ROWS = {
    3: [[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [1.0, 0.5, 0.0]],
    4: [[0.0, 0.0, 0.0, -80.0], [-3.0, -3.0, -3.0, -3.0], [5.0, 5.0, -1.0, 5.0]],
}
# Targets for the losses: a soft, unnormalized one (mass 1.5) and a class per row for the
# sparse loss (a tied maximum among them).
TARGETS = {3: [0.5, 0.0, 1.0], 4: [0.0, 0.25, 1.0, 0.25]}
LABELS = {3: [2, 0, 1], 4: [3, 0, 2]}
WEIGHTS = {3: [1.0, -2.0, 0.5], 4: [1.0, -2.0, 0.5, 3.0]}  # softmax/log_softmax: sum(w * f(x))
DTYPES = ["float32", "float64"]

mpmath.mp.dps = 60


def _p(row):
    return [mpmath.exp(v) for v in ref.mp_log_softmax([ref.mpf(v) for v in row])]


def _jacobian(p):
    """d softmax_i / dx_j = p_i ([i = j] - p_j): also the Hessian of logsumexp."""
    n = len(p)
    return [[p[i] * ((1 if i == j else 0) - p[j]) for j in range(n)] for i in range(n)]


def _hessian_logsumexp(row, width):
    return _jacobian(_p(row))


def _hessian_weighted_softmax(row, width):
    # d^2 p_i / dx_j dx_k = p_i ([i=k] - p_k)([i=j] - p_j) - p_i p_j ([j=k] - p_k)
    p, w, n = _p(row), WEIGHTS[width], width

    def second(i, j, k):
        d = [[1 if a == b else 0 for b in range(n)] for a in range(n)]
        return p[i] * (d[i][k] - p[k]) * (d[i][j] - p[j]) - p[i] * p[j] * (d[j][k] - p[k])

    return [[mpmath.fsum(w[i] * second(i, j, k) for i in range(n)) for k in range(n)]
            for j in range(n)]


def _hessian_weighted_log_softmax(row, width):
    # sum w_i (x_i - logsumexp(x)): -sum(w) times logsumexp's Hessian
    total = mpmath.fsum(ref.mpf(v) for v in WEIGHTS[width])
    return [[-total * h for h in line] for line in _jacobian(_p(row))]


def _hessian_categorical(row, width):
    # sum(t) logsumexp(x) - <t, x>
    mass = mpmath.fsum(ref.mpf(v) for v in TARGETS[width])
    return [[mass * h for h in line] for line in _jacobian(_p(row))]


def _hessian_sparse(row, width):
    return _jacobian(_p(row))  # logsumexp(x) - x_label


def _hessian_focal(row, width):
    # Keras's defaults: gamma 2, alpha 0.25; mpmath's derivative of the definition.
    target = [ref.mpf(v) for v in TARGETS[width]]

    def loss(*x):
        return ref.mp_categorical_focal_logits(target, list(x), 2.0, 0.25)

    point = [ref.mpf(v) for v in row]
    n = len(point)
    hessian = [[None] * n for _ in range(n)]
    for j in range(n):
        for k in range(j, n):
            orders = [0] * n
            orders[j] += 1
            orders[k] += 1
            hessian[j][k] = hessian[k][j] = mpmath.diff(loss, point, orders)
    return hessian


def _weights(width, dtype):
    return tf.constant([WEIGHTS[width]], dtype)


FUNCTIONS = {
    "logsumexp": (lambda x, w: O.logsumexp(x), _hessian_logsumexp),
    "softmax": (lambda x, w: _weights(w, x.dtype) * O.softmax(x), _hessian_weighted_softmax),
    "log_softmax": (
        lambda x, w: _weights(w, x.dtype) * O.log_softmax(x), _hessian_weighted_log_softmax
    ),
    "categorical_crossentropy": (
        lambda x, w: S.categorical_crossentropy(
            tf.constant([TARGETS[w]] * x.shape[0], x.dtype), x, from_logits=True
        ),
        _hessian_categorical,
    ),
    "sparse_categorical_crossentropy": (
        lambda x, w: S.sparse_categorical_crossentropy(
            tf.constant(LABELS[w]), x, from_logits=True
        ),
        _hessian_sparse,
    ),
    "categorical_focal_crossentropy": (
        lambda x, w: S.categorical_focal_crossentropy(
            tf.constant([TARGETS[w]] * x.shape[0], x.dtype), x, from_logits=True
        ),
        _hessian_focal,
    ),
}


def _row_hessians(regime, fn, x, width):
    """Per row, the Hessian of ``sum(fn(x))`` by nested tapes (rows are independent)."""

    def hessians(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                total = tf.reduce_sum(fn(x, width))
            gradient = inner.gradient(total, x)
        return outer.batch_jacobian(gradient, x)

    return regime.run(hessians, x)


def _tolerance(dtype):
    # Measured: at most 1.9 eps of the Hessian's largest entry (softmax), in every regime.
    return 8 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_second_order_gradient_at_tied_maxima(regime, name, dtype):
    fn, exact = FUNCTIONS[name]
    for width, rows in ROWS.items():
        got = _row_hessians(regime, fn, tf.constant(rows, dtype), width)
        for row, hessian in zip(rows, got):
            want = np.array([[float(v) for v in line] for line in exact(row, width)])
            assert np.all(np.isfinite(hessian)), (name, row, hessian)
            tol = _tolerance(dtype)
            np.testing.assert_allclose(
                hessian, want, rtol=tol, atol=tol * np.max(np.abs(want)),
                err_msg=f"{name} {dtype} {regime.name} row {row}",
            )


@pytest.mark.parametrize("dtype", DTYPES)
def test_second_order_gradient_of_infinite_and_nan_rows(regime, dtype):
    # The values and first-order gradients of such rows are conventions (k entries at +inf
    # share the probability; an all -inf row has gradient 0): the second order is the
    # softmax Jacobian of that probability (the limit of the finite rows' Hessians), 0 for
    # an empty row, NaN for a row with a NaN; never NaN from inf - inf.
    inf, nan = np.inf, np.nan
    rows = [[inf, inf, 0.0], [-inf, -inf, -inf], [-inf, 1.0, 1.0], [nan, 0.0, 1.0]]
    probabilities = [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.5], None]
    got = _row_hessians(regime, FUNCTIONS["logsumexp"][0], tf.constant(rows, dtype), 3)
    for row, p, hessian in zip(rows, probabilities, got):
        if p is None:
            assert np.all(np.isnan(hessian)), (row, hessian)
        else:
            want = np.diag(p) - np.outer(p, p)
            np.testing.assert_array_equal(hessian, want, err_msg=f"{dtype} row {row}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_target_gradients_slope_at_tied_maxima(regime, dtype):
    # d loss / d t_i = -log softmax(x)_i, formed from the pieces (log1p(s) - z): its slope
    # with respect to the logits, softmax(x)_j - [i = j], is a second-order term of a
    # gradient penalty where the targets are watched too (distillation).
    def slopes(t, x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(t)
                total = tf.reduce_sum(S.categorical_crossentropy(t, x, from_logits=True))
            target_gradient = inner.gradient(total, t)
        return outer.batch_jacobian(target_gradient, x)

    for width, rows in ROWS.items():
        targets = tf.constant([TARGETS[width]] * len(rows), dtype)
        got = regime.run(slopes, targets, tf.constant(rows, dtype))
        for row, slope in zip(rows, got):
            p = _p(row)
            want = np.array([[float(p[j] - (1 if i == j else 0)) for j in range(width)]
                             for i in range(width)])
            tol = _tolerance(dtype)
            np.testing.assert_allclose(
                slope, want, rtol=tol, atol=tol, err_msg=f"{dtype} {regime.name} row {row}"
            )


# First order on the same rows: unchanged by the fix, within the ops' budgets against mpmath.

def _first_order_reference(name, row, width, label):
    p = _p(row)
    x = [ref.mpf(v) for v in row]
    if name == "logsumexp":
        return ref.mp_logsumexp(x), p
    if name == "softmax":
        w = [ref.mpf(v) for v in WEIGHTS[width]]
        mean = mpmath.fsum(a * b for a, b in zip(w, p))
        return [a * b for a, b in zip(w, p)], [pi * (wi - mean) for pi, wi in zip(p, w)]
    if name == "log_softmax":
        w = [ref.mpf(v) for v in WEIGHTS[width]]
        total = mpmath.fsum(w)
        log_p = ref.mp_log_softmax(x)
        return [a * b for a, b in zip(w, log_p)], [wi - pi * total for pi, wi in zip(p, w)]
    if name == "categorical_crossentropy":
        t = [ref.mpf(v) for v in TARGETS[width]]
        mass = mpmath.fsum(t)
        return ref.mp_categorical_crossentropy_logits(t, x), [
            mass * pi - ti for pi, ti in zip(p, t)
        ]
    if name == "sparse_categorical_crossentropy":
        t = ref.one_hot_row(label, width)
        return ref.mp_categorical_crossentropy_logits(t, x), [pi - ti for pi, ti in zip(p, t)]
    t = [ref.mpf(v) for v in TARGETS[width]]  # focal: the value and mpmath's gradient

    def loss(*v):
        return ref.mp_categorical_focal_logits(t, list(v), 2.0, 0.25)

    gradient = []
    for j in range(width):
        orders = [0] * width
        orders[j] = 1
        gradient.append(mpmath.diff(loss, x, orders))
    return loss(*x), gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_first_order_value_and_gradient_at_tied_maxima(regime, name, dtype):
    fn, _ = FUNCTIONS[name]
    for width, rows in ROWS.items():
        value, (gradient,) = regime.value_and_grad(
            lambda x, width=width: fn(x, width), tf.constant(rows, dtype)
        )
        for i, row in enumerate(rows):
            want_value, want_gradient = _first_order_reference(name, row, width, LABELS[width][i])
            want_value = np.array(want_value, dtype=object)
            ref.assert_ulp_within(
                value[i], want_value, dtype, 4, context=f"{name} value {regime.name} {row}"
            )
            want = np.array([float(v) for v in want_gradient])
            tol = 4 * np.finfo(dtype).eps
            np.testing.assert_allclose(
                gradient[i], want, rtol=tol, atol=tol * np.max(np.abs(want)),
                err_msg=f"{name} gradient {dtype} {regime.name} row {row}",
            )
