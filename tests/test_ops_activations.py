"""Tests for stableops.ops activations: elu and leaky_relu.

Values against 60-digit mpmath references (ULP budgets of the docstrings) and
gradients against mpmath derivatives on an explicit edge grid in float16, bfloat16,
float32 and float64; hypothesis over the whole finite domain; Keras parity; the
three execution regimes; hyperparameter validation.
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
from tests import _reference as ref
from tests._helpers import full_size_arrays, measured_xla_only
from tests._regimes import Regime
from tests._strategies import FLOAT_DTYPES, finite_arrays

ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")
INF, NAN = math.inf, math.nan

# (op name, hyperparameter): alpha 1.67 and slopes 0.2/0.3 are not binary
# fractions, so the references see the exact Python float.
CASES = (("elu", 1.0), ("elu", 1.67), ("leaky_relu", 0.2), ("leaky_relu", 0.3))
# ULP budgets of the result dtype (as in the docstrings); half precision: 1 ULP.
# float32/float64 include up to 1 ULP for rounding a hyperparameter such as 0.3.
BUDGETS = {
    "elu": {"float32": 3.0, "float64": 3.0, "float16": 1.0, "bfloat16": 1.0},
    "leaky_relu": {"float32": 1.5, "float64": 1.5, "float16": 1.0, "bfloat16": 1.0},
}
GRAD_RTOL_EPS = {"float32": 4.0, "float64": 4.0, "float16": 2.0, "bfloat16": 2.0}
_SIZE = 128  # every kernel call is padded to this size: one compile per dtype


def _np_dtype(dtype):
    return ref.to_numpy_dtype(dtype)


def _info(dtype):
    return ml_dtypes.finfo(_np_dtype(dtype))


def _call(name, x, parameter):
    if name == "elu":
        return ops.elu(x, alpha=parameter)
    return ops.leaky_relu(x, negative_slope=parameter)


def _mp_value(name, parameter):
    p = mpmath.mpf(parameter)
    if name == "elu":
        return lambda x: ref.mp_elu(x, p)
    return lambda x: ref.mp_leaky_relu(x, p)


def _mp_derivative(name, parameter):
    p = mpmath.mpf(parameter)

    def derivative(x):
        if mpmath.isnan(x):
            return NAN
        if x > 0:
            return mpmath.mpf(1)
        return p * mpmath.exp(x) if name == "elu" else p

    return derivative


@tf.function(jit_compile=True, autograph=False)
def _kernel(x):
    values, grads = [], []
    for name, parameter in CASES:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = _call(name, x, parameter)
        values.append(value)
        grads.append(tape.gradient(value, x))
    return tf.stack(values), tf.stack(grads)


def _evaluate(x):
    """Values and gradients of every case at ``x`` (1-D, at most _SIZE values)."""
    padded = np.concatenate([x, np.zeros(_SIZE - x.size, x.dtype)])
    values, grads = _kernel(tf.constant(padded))
    return values.numpy()[:, : x.size], grads.numpy()[:, : x.size]


def edge_grid(dtype):
    """Edge values +-1 ULP in magnitude, both signs, with 0, -0, +-inf, nan."""
    info = _info(dtype)
    bases = [
        float(info.tiny),
        float(info.eps),
        1e-8,
        1e-6,
        1e-3,
        0.5,
        1.0 - float(info.eps) / 2,
        1.0,  # expm1's switch from its Taylor polynomial to exp(x) - 1
        2.0,
        10.0,
        17.0,
        math.log(float(info.max)),
        88.72,
        103.0,
        1e4,
        math.sqrt(float(info.max)),
        float(info.max),
    ]
    npdt = _np_dtype(dtype)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[npdt.itemsize]
    a = np.array([b for b in bases if b <= float(info.max)]).astype(npdt)
    a = a[np.isfinite(a.astype(np.float64)) & (a.astype(np.float64) >= float(info.tiny))]
    bits = a.view(uint)
    magnitudes = np.concatenate([a, (bits + uint(1)).view(npdt), (bits - uint(1)).view(npdt)])
    finite = magnitudes.astype(np.float64)
    magnitudes = magnitudes[np.isfinite(finite) & (finite >= float(info.tiny))]  # no subnormals
    values = np.concatenate([np.array([0.0, -0.0, INF, -INF, NAN], npdt), magnitudes, -magnitudes])
    return values


def _ulp_failure(context, actual, reference, dtype, budget):
    errors = ref.ulp_error(actual, reference, dtype)
    worst = int(np.argmax(errors))
    if errors[worst] <= budget:
        return None
    return (
        f"{context}: {errors[worst]:.3g} ULP > {budget} in {dtype}: got "
        f"{float(actual[worst])!r}, want {mpmath.nstr(reference[worst], 17)}"
    )


def _grad_failure(context, actual, expected, dtype):
    actual = actual.astype(np.float64)
    expected = expected.astype(_np_dtype(dtype)).astype(np.float64)  # rounded to the dtype
    rtol = GRAD_RTOL_EPS[dtype] * float(_info(dtype).eps)
    bad = np.isnan(actual) != np.isnan(expected)
    both = np.isfinite(actual) & np.isfinite(expected)
    bad |= both & (np.abs(actual - expected) > rtol * np.abs(expected) + float(_info(dtype).tiny))
    bad |= (np.isinf(actual) | np.isinf(expected)) & (actual != expected) & ~np.isnan(expected)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        return f"{context}: gradient {actual[i]!r}, want {expected[i]!r}"
    return None


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_value_and_gradient_on_edge_grid(dtype):
    x = edge_grid(dtype)
    values, grads = _evaluate(x)
    failures = []
    for (name, parameter), value, grad in zip(CASES, values, grads):
        assert value.dtype == _np_dtype(dtype) == grad.dtype
        context = f"{name}({parameter})"
        failures.append(
            _ulp_failure(
                context,
                value,
                ref.reference_array(_mp_value(name, parameter), x),
                dtype,
                BUDGETS[name][dtype],
            )
        )
        # leaky_relu's gradient at NaN is its slope (autodiff of a select, as tf.nn)
        keep = ~np.isnan(x.astype(np.float64)) if name == "leaky_relu" else slice(None)
        expected = np.array(
            [float(v) for v in ref.reference_array(_mp_derivative(name, parameter), x)]
        )
        failures.append(_grad_failure(context, grad[keep], expected[keep], dtype))
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


def test_elu_extremes_are_finite_and_accurate_near_zero():
    # float16's most negative value: -alpha with gradient 0, no exp overflow anywhere
    x = np.array([-65504.0, -1e-3, 65504.0], np.float16)
    with tf.GradientTape() as tape:
        t = tf.constant(x)
        tape.watch(t)
        value = ops.elu(t, alpha=1.5)
    grad = tape.gradient(value, t).numpy()
    np.testing.assert_array_equal(value.numpy()[[0, 2]], [-1.5, 65504.0])
    np.testing.assert_array_equal(grad[[0, 2]], [0.0, 1.0])
    assert np.isfinite(grad).all()
    # near 0 the expm1 branch keeps relative accuracy (exp(x) - 1 would not)
    tiny = np.array([-1e-8, -3e-5], np.float32)
    ref.assert_ulp_within(
        ops.elu(tiny).numpy(), ref.reference_array(lambda v: mpmath.expm1(v), tiny), "float32", 2
    )


@measured_xla_only
def test_elu_writes_only_its_value_and_slope():
    # One exponential of min(x, 0): the slope alpha e^x is an output and the value below
    # -1 is formed from it (alpha e^x - alpha), so XLA computes the exponential in the
    # slope's loop alone. Shared by the value and the slope, it was written out as a third
    # full-size array (value and slope at 2^20, one core: 1.5 -> 1.13 ms).
    x = tf.constant(np.random.default_rng(0).normal(size=(512, 128)).astype(np.float32))

    def value_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.elu(x)
        return y, tape.gradient(y, x)

    assert full_size_arrays(value_and_gradient, x) == 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_eager_elu_gradient_comes_from_the_input_and_is_the_graphs(dtype):
    # From 2^18 entries an eager call returns the value alone and records a compiled
    # backward call on the input (below, and in a graph, the forward call also returns the
    # slope): the same gradient, alpha exp(x) below 0 to an ULP (float64 closed form of the
    # rounded input), 1 above, 0 at -inf, NaN at NaN.
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 4.0, (2048, 128)).astype(dtype)  # 2^18 entries
    x.flat[:6] = [-np.inf, np.inf, np.nan, 0.0, -1e-30, -100.0]
    upstream = rng.normal(0.0, 1.0, x.shape).astype(dtype)
    x_t, upstream_t = tf.constant(x), tf.constant(upstream)

    def gradient(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = ops.elu(v, alpha=1.5)
        return tape.gradient(y, v, upstream_t)

    eager, graph = gradient(x_t).numpy(), tf.function(gradient)(x_t).numpy()
    np.testing.assert_array_equal(eager, graph)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = upstream.astype(np.float64) * np.where(
            x > 0, 1.0, 1.5 * np.exp(np.minimum(x.astype(np.float64), 0.0))
        )
    # An ULP of exp and one of each product; below the smallest normal TF flushes to 0
    # (1.5 exp(-100) in float32).
    limits = np.finfo(dtype)
    np.testing.assert_allclose(eager, expected, rtol=4 * limits.eps, atol=limits.tiny)
    assert np.isnan(eager.flat[2]) and eager.flat[0] == 0.0


def test_leaky_relu_slopes_zero_and_above_one():
    x = np.array([-4.0, -0.0, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(
        ops.leaky_relu(x, negative_slope=0.0).numpy(), [0.0, 0.0, 0.0, 3.0]
    )
    np.testing.assert_array_equal(
        ops.leaky_relu(x, negative_slope=1.5).numpy(), [-6.0, 0.0, 0.0, 3.0]
    )
    np.testing.assert_array_equal(ops.elu(x, alpha=0.0).numpy(), [0.0, 0.0, 0.0, 3.0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_properties_over_the_finite_domain(dtype, data):
    """Finite value and gradient, accuracy, NaN propagation, Keras parity."""
    x = data.draw(finite_arrays(dtype, (8,)))
    with_nan = x.copy()
    position = data.draw(st.integers(0, 7))
    with_nan[position] = np.nan
    values, grads = _evaluate(np.concatenate([x, with_nan]))
    failures = []
    for (name, parameter), value, grad in zip(CASES, values, grads):
        assert np.isfinite(value[:8].astype(np.float64)).all(), (name, x, value)
        assert np.isfinite(grad[:8].astype(np.float64)).all(), (name, x, grad)
        assert np.isnan(value[8 + position]), (name, "NaN in, NaN out")
        failures.append(
            _ulp_failure(
                f"{name}({parameter})",
                value[:8],
                ref.reference_array(_mp_value(name, parameter), x),
                dtype,
                BUDGETS[name][dtype],
            )
        )
        # elu > -alpha, so its rounded value >= -alpha rounded to the dtype
        lower = float(_np_dtype(dtype).type(-parameter)) if name == "elu" else -INF
        assert (value[:8].astype(np.float64) >= lower).all()
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


@given(x=finite_arrays("float32", (2, 4), min_value=-30.0, max_value=30.0))
def test_parity_with_keras(x):
    t = tf.constant(x)
    for alpha in (1.0, 1.67):
        np.testing.assert_allclose(
            ops.elu(x, alpha=alpha).numpy(),
            keras.activations.elu(t, alpha=alpha).numpy(),
            rtol=2e-6,
            atol=1e-7,
        )
        np.testing.assert_allclose(
            ops.elu(x, alpha=alpha).numpy(),
            keras.layers.ELU(alpha=alpha)(t).numpy(),
            rtol=2e-6,
            atol=1e-7,
        )
    for slope in (0.2, 0.3):
        np.testing.assert_allclose(
            ops.leaky_relu(x, negative_slope=slope).numpy(),
            keras.ops.leaky_relu(t, negative_slope=slope).numpy(),
            rtol=1e-6,
            atol=0,
        )
    np.testing.assert_allclose(
        ops.leaky_relu(x, 0.3).numpy(), keras.layers.LeakyReLU()(t).numpy(), rtol=1e-6, atol=0
    )


_ROWS = np.array(
    [
        [-INF, -1e4, -104.0, -30.0, -1.0, -1e-8, -0.0, 0.0, 1e-30, 1.0, 88.8, INF],
        [NAN, -3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    ],
    np.float32,
)


def _all_cases(*inputs):
    return tf.concat([_call(name, x, p) for (name, p), x in zip(CASES, inputs)], axis=1)


def test_three_regimes_agree(regime):
    inputs = [_ROWS.copy() for _ in CASES]
    wrt = tuple(range(len(inputs)))
    expected_value, expected_grads = Regime("eager").value_and_grad(_all_cases, *inputs, wrt=wrt)
    for unknown_batch in (False, True):
        value, grads = regime.value_and_grad(
            _all_cases, *inputs, wrt=wrt, unknown_batch=unknown_batch
        )
        np.testing.assert_array_equal(np.isnan(value), np.isnan(expected_value))
        np.testing.assert_allclose(value, expected_value, rtol=1e-6, atol=1e-37)
        for (name, parameter), grad, expected in zip(CASES, grads, expected_grads):
            np.testing.assert_array_equal(
                np.isnan(grad), np.isnan(expected), err_msg=f"{name}({parameter}) {regime}"
            )
            np.testing.assert_allclose(
                grad, expected, rtol=1e-6, atol=1e-37, err_msg=f"{name}({parameter}) {regime}"
            )


def test_leaky_relu_casts_integer_and_boolean_input_to_float32(regime):
    # As Keras's leaky_relu: integers and booleans are cast to float32 (exact
    # here: small integers), then -2 * 0.25 = -0.5 exactly.
    for x, expected in (([1, -2, 0], [1.0, -0.5, 0.0]), ([True, False], [1.0, 0.0])):
        value = regime.run(lambda v: ops.leaky_relu(v, negative_slope=0.25), tf.constant(x))
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected)


def test_bad_input():
    with pytest.raises(TypeError, match="floating"):
        ops.elu(tf.constant([1, 2, 3]))
    with pytest.raises(TypeError, match="`x`.*string"):
        ops.leaky_relu(tf.constant(["1"]))
    for bad in (-1.0, NAN, INF, None, "0.5"):
        with pytest.raises(ValueError, match=r"`alpha`.*alpha="):
            ops.elu(tf.constant([1.0]), alpha=bad)
        with pytest.raises(ValueError, match=r"`negative_slope`.*negative_slope="):
            ops.leaky_relu(tf.constant([1.0]), negative_slope=bad)
    with pytest.raises(ValueError, match="negative_slope=-0.1"):
        ops.leaky_relu(tf.constant([1.0]), negative_slope=-0.1)
    # eager scalar tensors and NumPy scalars are accepted as numbers
    np.testing.assert_allclose(
        ops.elu(np.array([-1.0], np.float32), tf.constant(0.5)).numpy(),
        [0.5 * math.expm1(-1.0)],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        ops.leaky_relu(np.array([-1.0], np.float32), np.float32(0.5)), [-0.5]
    )
