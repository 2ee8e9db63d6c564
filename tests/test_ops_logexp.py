"""Tests for stableops.ops log/exp family: logsumexp, softmax, log_softmax, logaddexp,
log1mexp, log_sigmoid, softplus, softplus_inverse, log_cosh.

Accuracy is measured in ULPs against 60-digit mpmath references (tests/_reference.py)
on explicit edge grids (zeros, tiny, eps, 1 - eps, switch points +-1 ULP, sigmoid
saturation, log(max), +-max, +-inf, nan) in float16, bfloat16, float32 and float64,
with the budgets stated in each op's docstring. Hypothesis covers the whole finite
domain (finite value and gradient, identities, NaN propagation, parity with TF/Keras).
"""

from __future__ import annotations

import math

import keras
import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from stableops import ops
from stableops.ops._dtypes import compute_dtype
from tests import _reference as ref
from tests._strategies import FLOAT_DTYPES, finite_arrays

ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")
INF, NAN = math.inf, math.nan

# Error budgets in ULPs of the result dtype (the docstrings state the same).
# Half precision is computed in float32, so one rounding to the result: <= 1 ULP.
HALF = {"float16": 1.0, "bfloat16": 1.0}
ELEMENTWISE_BUDGETS = {
    "softplus": {"float32": 3.0, "float64": 3.0, **HALF},
    "log_sigmoid": {"float32": 3.0, "float64": 3.0, **HALF},
    "log1mexp": {"float32": 3.0, "float64": 3.0, **HALF},
    "softplus_inverse": {"float32": 4.0, "float64": 4.0, **HALF},
    "log_cosh": {"float32": 3.0, "float64": 3.0, **HALF},
}
ELEMENTWISE = {
    "softplus": (ops.softplus, ref.mp_softplus),
    "log_sigmoid": (ops.log_sigmoid, ref.mp_log_sigmoid),
    "log1mexp": (ops.log1mexp, ref.mp_log1mexp),
    "softplus_inverse": (ops.softplus_inverse, ref.mp_softplus_inverse),
    "log_cosh": (ops.log_cosh, ref.mp_log_cosh),
}
# logsumexp and logaddexp: ULPs of max(|result|, |max input|) (backward stable:
# m + log1p(s) with m < 0 may cancel; that is the input's conditioning).
SCALED_BUDGETS = {"float32": 3.0, "float64": 3.0, **HALF}
SOFTMAX_BUDGETS = {"float32": 4.0, "float64": 4.0, **HALF}


# ----------------------------------------------------------------------------
# Edge grids
# ----------------------------------------------------------------------------


def _np_dtype(dtype):
    return ref.to_numpy_dtype(dtype)


def _magnitude_neighbours(values, dtype):
    """Each value and the values 1 ULP above and below it in magnitude (finite, nonzero)."""
    npdt = _np_dtype(dtype)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[npdt.itemsize]
    a = np.asarray(values, dtype=np.float64).astype(npdt)
    a = a[np.isfinite(a.astype(np.float64)) & (a.astype(np.float64) != 0)]
    bits = a.view(uint)
    out = [a, (bits + uint(1)).view(npdt), (bits - uint(1)).view(npdt)]
    return np.concatenate(out)


def edge_grid(dtype, switch_points=()):
    """Explicit edge values of ``dtype`` (and of the float32 it computes in), both signs."""
    npdt = _np_dtype(dtype)
    info = ml_dtypes.finfo(npdt)
    work = ml_dtypes.finfo(_np_dtype(compute_dtype(tf.as_dtype(npdt.name))))
    bases = [
        float(info.tiny), float(info.eps), float(work.eps), 1.0 - float(info.eps) / 2, 1.0,
        math.log(2.0), math.log(2.0) / 2, 2 * math.log(2.0),
        # sigmoid saturates (rounds to 1) near log(2/eps), in the dtype and in float32
        math.log(2.0 / float(info.eps)), math.log(2.0 / float(work.eps)),
        # exp overflows above log(max): 11.09 float16, 88.72 float32/bfloat16
        math.log(float(info.max)), math.log(float(work.max)),
        # 1 - exp(-x) rounds to 1 above -log(eps)
        -math.log(float(info.eps)), -math.log(float(work.eps)),
        1e-6, 1e-3, 0.1, 0.5, 2.0, 3.0, 10.0, 30.0, 100.0, 1e4,
        math.sqrt(float(info.max)), float(info.max),
        *switch_points,
    ]
    bases = [b for b in bases if b <= float(info.max)]
    magnitudes = _magnitude_neighbours(bases, dtype).astype(np.float64)
    magnitudes = magnitudes[np.isfinite(magnitudes) & (magnitudes >= float(info.tiny))]
    values = np.concatenate([[0.0, -0.0, INF, -INF, NAN], magnitudes, -magnitudes])
    return values.astype(npdt)


def _eval(fn, *arrays):
    return fn(*[tf.constant(a) for a in arrays]).numpy()


def _scaled_ulp_error(actual, reference, scale, dtype):
    """Like ``ref.ulp_error`` but in ULPs of ``scale`` where both are finite."""
    errors = ref.ulp_error(actual, reference, dtype)
    actual = np.asarray(actual, dtype=np.float64)
    for index in np.ndindex(errors.shape):
        r, s = reference[index], scale[index]
        if np.isfinite(errors[index]) and mpmath.isfinite(r) and mpmath.isfinite(s):
            unit = ref.ulp_of(max(abs(r), abs(s)), dtype)
            errors[index] = float(abs(ref.mpf(actual[index]) - r) / unit)
    return errors


def _assert_scaled_within(actual, reference, scale, dtype, budget):
    errors = _scaled_ulp_error(actual, reference, scale, dtype)
    worst = int(np.argmax(errors))
    assert errors.flat[worst] <= budget, (
        f"{errors.flat[worst]:.3g} ULP (of max(|result|, |max input|)) > {budget} in {dtype} "
        f"at {worst}: got {np.asarray(actual, np.float64).flat[worst]!r}, "
        f"want {mpmath.nstr(reference.flat[worst], 17)}"
    )


# ----------------------------------------------------------------------------
# Accuracy on edge grids
# ----------------------------------------------------------------------------

SOFTPLUS_INVERSE_SWITCHES = (math.log(2.0) * 0.5, math.log(2.0) * 2.0, 15.942385, 36.04365)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_accuracy_on_edge_grid(name, dtype):
    fn, mp_fn = ELEMENTWISE[name]
    x = edge_grid(dtype, switch_points=SOFTPLUS_INVERSE_SWITCHES)
    actual = _eval(fn, x)
    assert actual.dtype == _np_dtype(dtype)
    ref.assert_ulp_within(
        actual, ref.reference_array(mp_fn, x), dtype, ELEMENTWISE_BUDGETS[name][dtype],
        context=name,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_inverse_is_relatively_accurate_next_to_its_root(dtype):
    # softplus_inverse crosses 0 at log 2, where x + log(-expm1(-x)) cancels
    # (hundreds of ULP); the 8 values on each side of log 2 are the hardest.
    npdt = _np_dtype(dtype)
    grid = np.array([math.log(2.0)], dtype=npdt)
    for _ in range(8):
        grid = np.unique(np.concatenate([grid, np.nextafter(grid, npdt.type(0)),
                                         np.nextafter(grid, npdt.type(1))]))
    actual = _eval(ops.softplus_inverse, grid)
    ref.assert_ulp_within(actual, ref.reference_array(ref.mp_softplus_inverse, grid),
                          dtype, ELEMENTWISE_BUDGETS["softplus_inverse"][dtype])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_logaddexp_accuracy_on_edge_grid(dtype):
    x = edge_grid(dtype)[:, None]
    partners = [-INF, -1e4, -30.0, -1.0, -0.0, 1e-3, 0.5, 1.0, 30.0, INF, NAN]
    y = np.array(partners, dtype=np.float64).astype(_np_dtype(dtype))[None, :]
    x, y = np.broadcast_arrays(x, y)
    actual = _eval(ops.logaddexp, x, y)
    reference = ref.reference_array(ref.mp_logaddexp, x, y)
    scale = ref.reference_array(max, x, y)  # only used where the reference is finite
    _assert_scaled_within(actual, reference, scale, dtype, SCALED_BUDGETS[dtype])


def _edge_rows(dtype):
    """Rows of 6: dominant entries, ties, wide spreads, infinities, NaN, extremes."""
    info = ml_dtypes.finfo(_np_dtype(dtype))
    big, lm = float(info.max), math.log(float(info.max))
    rows = [
        [0.0, -30.0, -30.0, -40.0, -50.0, -60.0],       # one dominant logit: tiny tail
        [0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],                 # all tied: x + log 6
        [-0.5, -0.5, -0.7, -0.75, -2.0, -0.69],         # result near 0 (cancellation)
        [1e4, -1e4, 0.0, 3.0, 1e4, 2.0],
        [lm, lm, lm, lm - 1, 0.0, -lm],                 # log(max): exp would overflow
        [big, big, 0.0, -big, 1.0, -1.0],               # +-max
        [-INF, -INF, -INF, -INF, -INF, -INF],           # empty row
        [-INF, 2.0, -INF, 1.0, -INF, 0.0],
        [INF, 1.0, 2.0, -INF, 3.0, INF],                # two +inf share
        [NAN, 1.0, 2.0, 3.0, 4.0, 5.0],
        [1e-6, -1e-6, 2e-6, 0.0, -0.0, 3e-7],
    ]
    return np.array(rows, dtype=np.float64).astype(_np_dtype(dtype))


def _row_refs(mp_fn, x):
    return np.array([mp_fn([ref.mpf(v) for v in row]) for row in x], dtype=object)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_logsumexp_accuracy_on_edge_rows(dtype):
    x = _edge_rows(dtype)
    actual = _eval(ops.logsumexp, x)
    reference = _row_refs(ref.mp_logsumexp, x)
    scale = np.array([ref.mpf(v) for v in np.max(x.astype(np.float64), axis=-1)], dtype=object)
    _assert_scaled_within(actual, reference, scale, dtype, SCALED_BUDGETS[dtype])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_accuracy_on_edge_rows(name, dtype):
    fn, mp_fn = {"softmax": (ops.softmax, ref.mp_softmax),
                 "log_softmax": (ops.log_softmax, ref.mp_log_softmax)}[name]
    x = _edge_rows(dtype)
    ref.assert_ulp_within(_eval(fn, x), _row_refs(mp_fn, x), dtype, SOFTMAX_BUDGETS[dtype],
                          context=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_accuracy_on_random_rows(dtype):
    rng = np.random.default_rng(7)
    scale = 10.0 ** rng.uniform(-3, 2, (64, 1))
    x = (rng.normal(size=(64, 8)) * scale + rng.normal(size=(64, 1)) * 10).astype(dtype)
    scale_ref = np.array([ref.mpf(v) for v in x.max(axis=-1)], dtype=object)
    _assert_scaled_within(_eval(ops.logsumexp, x), _row_refs(ref.mp_logsumexp, x), scale_ref,
                          dtype, SCALED_BUDGETS[dtype])
    ref.assert_ulp_within(_eval(ops.softmax, x), _row_refs(ref.mp_softmax, x), dtype,
                          SOFTMAX_BUDGETS[dtype], context="softmax")
    ref.assert_ulp_within(_eval(ops.log_softmax, x), _row_refs(ref.mp_log_softmax, x), dtype,
                          SOFTMAX_BUDGETS[dtype], context="log_softmax")


# ----------------------------------------------------------------------------
# Special values and conventions (exact closed forms)
# ----------------------------------------------------------------------------


def _value_and_grad(fn, *args, weights=None):
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        for a in args:
            tape.watch(a)
        value = fn(*args)
        total = value if weights is None else value * tf.constant(weights, value.dtype)
    grads = tape.gradient(total, args)
    return value.numpy(), [g.numpy() for g in grads]


def test_logsumexp_empty_and_infinite_rows():
    x = np.array([[-INF, -INF, -INF], [INF, 0.0, INF], [NAN, 0.0, 1.0], [0.0, -30.0, -INF]],
                 np.float32)
    value, (grad,) = _value_and_grad(ops.logsumexp, x)
    assert value[0] == -INF and value[1] == INF and np.isnan(value[2])
    np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])  # empty row: gradient 0
    np.testing.assert_array_equal(grad[1], [0.5, 0.0, 0.5])  # the +inf entries share
    assert np.isnan(grad[2]).all()
    np.testing.assert_array_equal(grad[3][2], 0.0)
    # The tail survives: log(1 + e^-30) = 9.357622968840175e-14 (naive: 0).
    assert ref.ulp_error(value[3:4], [mpmath.log1p(mpmath.exp(-30))], "float32")[0] <= 2


def test_logsumexp_masked_rows_and_where():
    x = np.array([[1.0, NAN, 3.0], [NAN, INF, 2.0]], np.float32)
    where = np.array([[True, False, True], [False, False, False]])
    value, (grad,) = _value_and_grad(lambda t: ops.logsumexp(t, where=where), x)
    expected = float(mpmath.log(mpmath.e + mpmath.e**3))
    assert abs(value[0] - expected) <= 2 * np.spacing(np.float32(expected))
    assert value[1] == -INF  # fully masked: -inf, masked NaN and inf ignored
    np.testing.assert_array_equal(grad[1], [0.0, 0.0, 0.0])
    assert grad[0][1] == 0.0 and np.isfinite(grad).all()


def test_logsumexp_float16_many_classes_does_not_overflow():
    # 100,000 float16 logits of 11.0 (near float16's log(max) = 11.09): the
    # float16 sum of exp would overflow (65504); exact result 11 + log(1e5).
    x = np.full((2, 100_000), 11.0, np.float16)
    value = _eval(ops.logsumexp, x)
    assert value.dtype == np.float16
    expected = [mpmath.mpf(11) + mpmath.log(100_000)] * 2
    ref.assert_ulp_within(value, np.array(expected, dtype=object), "float16", 1.0)


def test_logsumexp_axis_keepdims_and_tuple_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    reference = tf.reduce_logsumexp(tf.constant(x, tf.float64), axis=(1, 2), keepdims=True)
    value = ops.logsumexp(x, axis=(1, 2), keepdims=True)
    assert value.shape == (2, 1, 1)
    np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=3e-7)
    assert ops.logsumexp(x, axis=0).shape == (3, 4)
    assert ops.logsumexp(x, axis=None).shape == ()


def test_softmax_masked_rows_are_zero_with_zero_gradient():
    x = np.array([[1.0, 2.0, 3.0], [NAN, 1e4, -1e4], [-INF, -INF, -INF]], np.float32)
    where = np.array([[True, False, True], [False, False, False], [True, True, True]])
    weights = np.array([[1.0, 2.0, 3.0]] * 3, np.float32)
    value, (grad,) = _value_and_grad(lambda t: ops.softmax(t, where=where), x, weights=weights)
    np.testing.assert_array_equal(value[1:], 0.0)
    np.testing.assert_array_equal(grad[1:], 0.0)
    assert value[0][1] == 0.0 and grad[0][1] == 0.0
    p = float(1 / (1 + mpmath.e**2))  # softmax([1, 3])[0]
    np.testing.assert_allclose(value[0][[0, 2]], [p, 1 - p], rtol=3e-7)
    # gradient of sum(w * softmax): y * (w - <w, y>)
    np.testing.assert_allclose(grad[0][0], p * (1 - (p + 3 * (1 - p))), rtol=1e-6)


def test_log_softmax_masked_entries_are_minus_inf_with_zero_gradient():
    x = np.array([[0.0, NAN, -30.0], [5.0, 1.0, 2.0], [-INF, -INF, -INF]], np.float32)
    where = np.array([[True, False, True], [False, False, False], [True, True, True]])
    value, (grad,) = _value_and_grad(lambda t: ops.log_softmax(t, where=where), x)
    assert value[0][1] == -INF
    np.testing.assert_array_equal(value[1:], -INF)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[1:], 0.0)
    assert grad[0][1] == 0.0
    # one dominant logit: -log1p(e^-30) at the maximum, not 0
    assert ref.ulp_error(value[0, :1], [-mpmath.log1p(mpmath.exp(-30))], "float32")[0] <= 2


def test_softmax_and_log_softmax_plus_inf_entries_share():
    x = np.array([[INF, 0.0, INF, -INF]], np.float32)
    np.testing.assert_array_equal(_eval(ops.softmax, x), [[0.5, 0.0, 0.5, 0.0]])
    np.testing.assert_allclose(_eval(ops.log_softmax, x)[0, [0, 2]], -math.log(2.0), rtol=1e-7)
    assert (_eval(ops.log_softmax, x)[0, [1, 3]] == -INF).all()


def test_logaddexp_infinities_and_gradients():
    x = np.array([-INF, INF, -INF, 1.0, NAN, 3.0], np.float32)
    y = np.array([-INF, INF, 2.0, 1.0, 1.0, INF], np.float32)
    value, (gx, gy) = _value_and_grad(ops.logaddexp, x, y)
    np.testing.assert_array_equal(value[:3], [-INF, INF, 2.0])
    assert value[5] == INF and np.isnan(value[4])
    np.testing.assert_array_equal(gx[[0, 1, 2, 3, 5]], [0.0, 0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(gy[[0, 1, 2, 3, 5]], [0.0, 0.5, 1.0, 0.5, 1.0])
    # broadcasting and Python scalars
    assert ops.logaddexp(np.zeros((2, 3), np.float16), 0.0).dtype == tf.float16
    _, (gb, gs) = _value_and_grad(ops.logaddexp, np.zeros((2, 3), np.float32),
                                  np.zeros((3,), np.float32))
    np.testing.assert_array_equal(gs, [1.0, 1.0, 1.0])  # two rows of 1/2


def test_log1mexp_sign_convention_zero_and_infinity():
    x = np.array([0.0, -0.0, INF, -INF, 1.0, -1.0], np.float32)
    value, (grad,) = _value_and_grad(ops.log1mexp, x)
    np.testing.assert_array_equal(value[:4], [-INF, -INF, 0.0, 0.0])
    assert value[4] == value[5]  # even: log(1 - exp(-|x|))
    assert grad[0] == INF and grad[1] == -INF  # one-sided limits, never NaN
    assert grad[4] == -grad[5] and grad[4] > 0


def test_softplus_inverse_domain():
    x = np.array([0.0, -1.0, INF, NAN, 1e-30], np.float32)
    value, (grad,) = _value_and_grad(ops.softplus_inverse, x)
    assert value[0] == -INF and grad[0] == INF
    assert np.isnan(value[1]) and np.isnan(value[3])
    assert value[2] == INF and grad[2] == 1.0
    assert np.isfinite(grad[4]) and np.isfinite(value[4])


def test_softplus_gradient_is_one_half_at_zero_and_sigmoid_elsewhere():
    x = np.array([0.0, -100.0, 100.0, -INF, INF, 3.0], np.float64)
    value, (grad,) = _value_and_grad(ops.softplus, x)
    assert grad[0] == 0.5
    np.testing.assert_array_equal(grad[3:5], [0.0, 1.0])
    np.testing.assert_array_equal(value[3:5], [0.0, INF])
    expected = ref.reference_array(ref.mp_sigmoid, x[[1, 2, 5]])
    ref.assert_ulp_within(grad[[1, 2, 5]], expected, "float64", 4)
    # full relative accuracy in the left tail: softplus(-100) = e^-100 (naive: 0 or 1 ULP of 1)
    ref.assert_ulp_within(value[1:2], [mpmath.log1p(mpmath.exp(-100))], "float64", 2)


def test_log_cosh_tiny_and_huge_arguments_beat_keras():
    tiny = np.array([1e-6], np.float32)
    ours = _eval(ops.log_cosh, tiny)
    keras_value = keras.ops.log(keras.ops.cosh(tiny)).numpy()
    assert keras_value[0] == 0.0  # Keras: log(cosh(1e-6)) = log(1) = 0
    ref.assert_ulp_within(ours, ref.reference_array(ref.mp_log_cosh, tiny), "float32", 3)
    huge = np.array([1e4, -6e4, 11.5], np.float16)
    assert not np.isfinite(keras.ops.log(keras.ops.cosh(huge)).numpy()).all()
    ours = _eval(ops.log_cosh, huge)
    assert ours.dtype == np.float16
    ref.assert_ulp_within(ours, ref.reference_array(ref.mp_log_cosh, huge), "float16", 1)


# ----------------------------------------------------------------------------
# Gradients against mpmath derivatives
# ----------------------------------------------------------------------------

_DERIVATIVES = {
    "softplus": (ops.softplus, ref.mp_sigmoid),
    "log_sigmoid": (ops.log_sigmoid, lambda x: ref.mp_sigmoid(-x)),
    "log1mexp": (ops.log1mexp, lambda x: mpmath.sign(x) / mpmath.expm1(abs(x))),
    "softplus_inverse": (ops.softplus_inverse, lambda x: 1 / -mpmath.expm1(-x)),
    "log_cosh": (ops.log_cosh, mpmath.tanh),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(_DERIVATIVES))
def test_elementwise_gradient_matches_mpmath_derivative(name, dtype):
    fn, derivative = _DERIVATIVES[name]
    x = np.array([1e-30, 1e-6, 0.3, 0.69, 0.7, 1.0, 5.0, 20.0, 100.0, 1e4], dtype=dtype)
    if name != "softplus_inverse":
        x = np.concatenate([x, -x])
    _, (grad,) = _value_and_grad(fn, x)
    expected = np.array([float(derivative(ref.mpf(v))) for v in x])
    tiny = np.finfo(dtype).tiny  # results below it flush to 0
    np.testing.assert_allclose(grad, expected, rtol=8 * np.finfo(dtype).eps, atol=tiny)


@pytest.mark.parametrize("name", ["logsumexp", "log_softmax", "softmax"])
def test_reduction_gradients_match_mpmath(name):
    x = np.array([[0.0, -30.0, 2.0, 2.0], [1e3, -1e3, 999.0, 0.5], [-1.0, -2.0, -3.0, -4.0]])
    weights = np.array([1.0, -2.0, 0.5, 3.0])
    fn = getattr(ops, name)
    _, (grad,) = _value_and_grad(fn, x, weights=None if name == "logsumexp" else weights)
    expected = np.empty_like(x)
    for i, row in enumerate(x):
        p = ref.mp_softmax([ref.mpf(v) for v in row])
        g = [mpmath.mpf(w) for w in weights]
        for j in range(len(row)):
            if name == "logsumexp":
                expected[i, j] = float(p[j])
            elif name == "log_softmax":  # g_j - p_j * sum(g)
                expected[i, j] = float(g[j] - p[j] * mpmath.fsum(g))
            else:  # p_j (g_j - <g, p>)
                expected[i, j] = float(p[j] * (g[j] - mpmath.fsum(a * b for a, b in zip(g, p))))
    np.testing.assert_allclose(grad, expected, rtol=1e-13, atol=1e-300)


# ----------------------------------------------------------------------------
# Hypothesis: the whole finite domain in float32, float16, bfloat16
# ----------------------------------------------------------------------------

SHAPE = (8,)
def _finite_input(name, x):
    x = np.asarray(x)
    if name == "softplus_inverse":
        x = np.abs(x)
    if name in ("softplus_inverse", "log1mexp"):
        x = np.where(x == 0, np.ones_like(x), x)  # 0 gives the documented -inf
    return x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@given(data=st.data())
def test_elementwise_finite_value_gradient_and_accuracy(name, dtype, data):
    fn, mp_fn = ELEMENTWISE[name]
    x = _finite_input(name, data.draw(finite_arrays(dtype, SHAPE)))
    value, (grad,) = _value_and_grad(fn, x)
    assert np.isfinite(value.astype(np.float64)).all(), (x, value)
    assert np.isfinite(grad.astype(np.float64)).all(), (x, grad)
    ref.assert_ulp_within(value, ref.reference_array(mp_fn, x), dtype,
                          ELEMENTWISE_BUDGETS[name][dtype], context=name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_logaddexp_finite_and_identities(dtype, data):
    x = data.draw(finite_arrays(dtype, SHAPE))
    y = data.draw(finite_arrays(dtype, SHAPE))
    value, (gx, gy) = _value_and_grad(ops.logaddexp, x, y)
    assert np.isfinite(value.astype(np.float64)).all()
    assert np.isfinite(gx.astype(np.float64)).all() and np.isfinite(gy.astype(np.float64)).all()
    np.testing.assert_allclose(gx.astype(np.float64) + gy.astype(np.float64), 1.0,
                               atol=2 * float(ml_dtypes.finfo(_np_dtype(dtype)).eps))
    np.testing.assert_array_equal(value, _eval(ops.logaddexp, y, x))  # symmetric
    # logaddexp(x, x) == x + log 2
    same = _eval(ops.logaddexp, x, x)
    ref.assert_ulp_within(same, ref.reference_array(lambda a: a + mpmath.log(2), x), dtype,
                          SCALED_BUDGETS[dtype])
    scale = ref.reference_array(max, x, y)
    _assert_scaled_within(value, ref.reference_array(ref.mp_logaddexp, x, y), scale, dtype,
                          SCALED_BUDGETS[dtype])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_softplus_log_sigmoid_log_cosh_identities(dtype, data):
    x = data.draw(finite_arrays(dtype, SHAPE))
    unit = np.vectorize(lambda v: float(ref.ulp_of(ref.mpf(v), dtype)))
    budget = ELEMENTWISE_BUDGETS["softplus"][dtype]
    plus, minus = (_eval(ops.softplus, v).astype(np.float64) for v in (x, -x))
    # softplus(x) - softplus(-x) == x, within the budget of both terms
    assert (np.abs(plus - minus - x.astype(np.float64))
            <= budget * (unit(plus) + unit(minus))).all()
    # log_sigmoid(x) == -softplus(-x); log_cosh and log1mexp are even
    np.testing.assert_array_equal(_eval(ops.log_sigmoid, x), -_eval(ops.softplus, -x))
    np.testing.assert_array_equal(_eval(ops.log_cosh, x), _eval(ops.log_cosh, -x))
    np.testing.assert_array_equal(_eval(ops.log1mexp, x), _eval(ops.log1mexp, -x))
    assert (_eval(ops.log_cosh, x).astype(np.float64) >= 0).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_reductions_finite_value_gradient_and_accuracy(dtype, data):
    # Entries within +-max/2: log_softmax's x - max(x) is then representable
    # (a wider spread gives the documented -inf, the true value's rounding).
    half_max = float(ml_dtypes.finfo(_np_dtype(dtype)).max) / 2
    x = data.draw(finite_arrays(dtype, (2, 4), min_value=-half_max, max_value=half_max))
    weights = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    for name in ("logsumexp", "softmax", "log_softmax"):
        fn = getattr(ops, name)
        value, (grad,) = _value_and_grad(fn, x, weights=None if name == "logsumexp" else weights)
        assert np.isfinite(value.astype(np.float64)).all(), (name, x, value)
        assert np.isfinite(grad.astype(np.float64)).all(), (name, x, grad)
        mp_fn = getattr(ref, "mp_" + name)
        if name == "logsumexp":
            scale = np.array([ref.mpf(v) for v in x.astype(np.float64).max(axis=-1)], dtype=object)
            _assert_scaled_within(value, _row_refs(mp_fn, x), scale, dtype, SCALED_BUDGETS[dtype])
        else:
            ref.assert_ulp_within(value, _row_refs(mp_fn, x), dtype, SOFTMAX_BUDGETS[dtype],
                                  context=name)
    probabilities = _eval(ops.softmax, x).astype(np.float64)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0,
                               atol=8 * float(ml_dtypes.finfo(_np_dtype(dtype)).eps))
    assert (_eval(ops.log_softmax, x).astype(np.float64) <= 0).all()


@pytest.mark.parametrize("name", sorted(ELEMENTWISE) + ["logsumexp", "softmax", "log_softmax"])
@given(data=st.data())
def test_nan_propagates(name, data):
    x = data.draw(finite_arrays("float32", (2, 4)))
    position = data.draw(st.integers(0, 3))
    x[0, position] = np.nan
    value = _eval(getattr(ops, name), x)
    if name == "logsumexp":
        assert np.isnan(value[0]) and not np.isnan(value[1])
    elif name in ("softmax", "log_softmax"):
        assert np.isnan(value[0]).all() and not np.isnan(value[1]).any()
    else:
        assert np.isnan(value[0, position])
        assert np.isnan(value).sum() == 1 or name == "softplus_inverse"


_TF_PARITY = {
    "softplus": (ops.softplus, tf.nn.softplus),
    "log_sigmoid": (ops.log_sigmoid, tf.math.log_sigmoid),
    "logsumexp": (ops.logsumexp, lambda t: tf.reduce_logsumexp(t, axis=-1)),
    "softmax": (ops.softmax, tf.nn.softmax),
    "log_softmax": (ops.log_softmax, tf.nn.log_softmax),
    "keras_logsumexp": (ops.logsumexp, lambda t: keras.ops.logsumexp(t, axis=-1)),
    "keras_log_softmax": (ops.log_softmax, keras.ops.log_softmax),
}


@pytest.mark.parametrize("name", sorted(_TF_PARITY))
@given(x=finite_arrays("float32", (2, 4), min_value=-20.0, max_value=20.0))
def test_parity_with_tensorflow_and_keras_where_well_conditioned(name, x):
    ours, theirs = _TF_PARITY[name]
    np.testing.assert_allclose(_eval(ours, x), theirs(tf.constant(x)).numpy(),
                               rtol=1e-5, atol=1e-6)


@given(x=finite_arrays("float32", (2, 4), min_value=-20.0, max_value=20.0),
       y=finite_arrays("float32", (2, 4), min_value=-20.0, max_value=20.0))
def test_logaddexp_parity_with_keras(x, y):
    np.testing.assert_allclose(_eval(ops.logaddexp, x, y),
                               keras.ops.logaddexp(tf.constant(x), tf.constant(y)).numpy(),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Three regimes: eager (XLA kernel), tf.function, tf.function(jit_compile=True)
# ----------------------------------------------------------------------------

_ROWS = np.array([
    [-INF, -1e4, -30.0, -1.0, -0.0, 0.0, 1e-6, 0.6931472, 30.0, 1e4],
    [NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    [-INF] * 10,
    [INF, 1.0, -2.0, 0.5, 0.25, -7.0, 3e3, -3e3, 1e-30, 88.8],
], np.float32)
_WEIGHTS = np.linspace(-1.0, 2.0, 10).astype(np.float32)

_REGIME_CASES = {
    "logsumexp": (lambda x: ops.logsumexp(x), (_ROWS,)),
    "logsumexp_where": (lambda x: ops.logsumexp(x, where=x < 1e3), (_ROWS,)),
    "softmax": (lambda x: ops.softmax(x) * _WEIGHTS, (_ROWS,)),
    "softmax_where": (lambda x: ops.softmax(x, where=x > -5.0) * _WEIGHTS, (_ROWS,)),
    "log_softmax": (lambda x: ops.log_softmax(x, where=x > -5.0) * _WEIGHTS, (_ROWS,)),
    "logaddexp": (ops.logaddexp, (_ROWS, _ROWS[::-1].copy())),
    **{name: (fn, (_ROWS,)) for name, (fn, _) in ELEMENTWISE.items()},
}


@pytest.mark.parametrize("unknown_batch", [False, True])
@pytest.mark.parametrize("name", sorted(_REGIME_CASES))
def test_three_regimes_agree(regime, name, unknown_batch):
    fn, args = _REGIME_CASES[name]
    wrt = tuple(range(len(args)))
    expected_value, expected_grads = _value_and_grad(fn, *args)
    value, grads = regime.value_and_grad(fn, *args, wrt=wrt, unknown_batch=unknown_batch)
    np.testing.assert_array_equal(np.isnan(value), np.isnan(expected_value))
    np.testing.assert_allclose(value, expected_value, rtol=4e-6, atol=1e-37)
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected))
        np.testing.assert_allclose(grad, expected, rtol=4e-6, atol=1e-37)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

_ALL_OPS = sorted(ELEMENTWISE) + ["logsumexp", "softmax", "log_softmax"]


@pytest.mark.parametrize("name", _ALL_OPS)
def test_integer_input_is_a_type_error(name):
    with pytest.raises(TypeError, match="floating"):
        getattr(ops, name)(tf.constant([1, 2, 3]))


def test_logaddexp_bad_inputs():
    with pytest.raises(TypeError, match="floating"):
        ops.logaddexp(tf.constant([1, 2]), tf.constant([1.0, 2.0]))
    with pytest.raises(TypeError, match="float16.*float32"):
        ops.logaddexp(tf.constant([1.0], tf.float16), tf.constant([1.0], tf.float32))


def test_reduction_bad_axis_and_mask():
    with pytest.raises(TypeError, match="axis"):
        ops.logsumexp(tf.constant([1.0]), axis=1.5)
    with pytest.raises(TypeError, match="where"):
        ops.softmax(tf.constant([1.0, 2.0]), where=tf.constant([1.0, 0.0]))
