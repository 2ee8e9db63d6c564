"""GaussianNLL, GaussianKL and PoissonNLL (issue 15): the losses users write by hand.

* parity with the published definitions (PyTorch's ``GaussianNLLLoss`` and
  ``PoissonNLLLoss`` formulas, the closed-form KL of two normals), written here
  in float64 NumPy on inputs where they are finite;
* accuracy against mpmath (60 digits) on edge grids, values and gradients, in
  the three regimes (eager, ``tf.function``, XLA with an unknown batch);
* hypothesis: finite values and gradients in float32, float16 and bfloat16;
* NaN in, NaN out; the motivating hand-written NaN/inf cases shown finite;
* input conventions and errors; ``get_config`` and a ``.keras`` round trip.
"""

from __future__ import annotations

import math

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import stableops.losses as S
from stableops._internal.elementary import scaled_exp
from stableops.ops import dtype_limits
from tests import _reference as R
from tests._regimes import Regime, edge_dtypes
from tests._strategies import FLOAT_DTYPES, finite_arrays

F32 = dtype_limits("float32")
FLOOR32 = F32.eps  # the documented variance/rate floor for float16/bfloat16/float32 inputs
BUDGET = 4  # ULP, as the docstrings state
SHAPE = (3, 2)

# ----------------------------------------------------------------------------
# mpmath references (from the definitions, exact inputs)
# ----------------------------------------------------------------------------

HALF_LOG_2PI = mpmath.log(2 * mpmath.pi) / 2


def mp_nll_variance(y, mu, v, floor, full=False):
    v = max(v, mpmath.mpf(floor))
    return (mpmath.log(v) + (y - mu) ** 2 / v) / 2 + (HALF_LOG_2PI if full else 0)


def mp_nll_log_variance(y, mu, s, full=False):
    return (s + (y - mu) ** 2 * mpmath.exp(-s)) / 2 + (HALF_LOG_2PI if full else 0)


def mp_kl(mu, s, m=0, p=0):
    d = s - p
    return (mpmath.exp(d) - 1 - d + (mu - m) ** 2 * mpmath.exp(-p)) / 2


def mp_stirling(y):
    return y * mpmath.log(y) - y + mpmath.log(2 * mpmath.pi * y) / 2 if y > 1 else 0


def mp_poisson_log(y, x, full=False):
    return mpmath.exp(x) - y * x + (mp_stirling(y) if full else 0)


def mp_poisson_rate(y, p, floor, full=False):
    log_term = 0 if y == 0 else y * mpmath.log(max(p, mpmath.mpf(floor)))
    return p - log_term + (mp_stirling(y) if full else 0)


def _scaled_errors(actual, reference, scale, dtype="float32"):
    """``|actual - reference|`` in ULPs of ``max(|scale|, |reference|)`` (``scale``: the size
    of the terms that cancel). A reference beyond the dtype's range expects the same infinity."""
    largest = R.mpf(dtype_limits(dtype).max)
    overflow = largest + R.ulp_of(largest, dtype) / 2
    out = []
    for a, r, s in zip(
        np.asarray(actual, np.float64).ravel(),
        np.asarray(reference, object).ravel(),
        np.asarray(scale, object).ravel(),
    ):
        if abs(r) >= overflow:
            r = mpmath.inf if r > 0 else -mpmath.inf
        if mpmath.isinf(r) or not math.isfinite(a):
            out.append(0.0 if mpf_equal(a, r) else math.inf)
        else:
            out.append(float(abs(R.mpf(a) - r) / R.ulp_of(max(abs(s), abs(r)), dtype)))
    return np.array(out)


def mpf_equal(a, r):
    return (math.isinf(a) and mpmath.isinf(r) and (a > 0) == (r > 0)) or R.mpf(a) == r


# ----------------------------------------------------------------------------
# Parity with the published definitions (float64, ordinary inputs)
# ----------------------------------------------------------------------------


def torch_gaussian_nll(input, target, var, full=False, eps=1e-6):
    """PyTorch's documented ``GaussianNLLLoss`` (reduction="mean"), in float64."""
    var = np.maximum(var, eps)
    loss = 0.5 * (np.log(var) + (input - target) ** 2 / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return loss.mean()


def torch_poisson_nll(log_input, target, input, full=False, eps=1e-8):
    """PyTorch's documented ``PoissonNLLLoss`` (reduction="mean"), in float64."""
    loss = np.exp(input) - target * input if log_input else input - target * np.log(input + eps)
    if full:
        safe = np.where(target > 1, target, 2.0)
        stirling = safe * np.log(safe) - safe + 0.5 * np.log(2 * math.pi * safe)
        loss = loss + np.where(target > 1, stirling, 0.0)
    return loss.mean()


def normal_kl(mu, var, mu0, var0):
    """KL(N(mu, var) || N(mu0, var0)), the textbook closed form, summed over the last axis."""
    return (0.5 * np.log(var0 / var) + (var + (mu - mu0) ** 2) / (2 * var0) - 0.5).sum(-1)


@pytest.mark.parametrize("full", [False, True])
def test_gaussian_nll_matches_pytorch_definition(full):
    rng = np.random.default_rng(0)
    y, mu = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    var = rng.uniform(1e-3, 4.0, (8, 3))  # above PyTorch's 1e-6 clamp and our floor
    expected = torch_gaussian_nll(mu, y, var, full)
    ours = S.GaussianNLL(full=full, dtype="float64")(y, np.concatenate([mu, var], -1))
    np.testing.assert_allclose(float(ours), expected, rtol=1e-13)
    ours_log = S.GaussianNLL(full=full, variance="log_variance", dtype="float64")(
        y, np.concatenate([mu, np.log(var)], -1)
    )
    np.testing.assert_allclose(float(ours_log), expected, rtol=1e-13)


@pytest.mark.parametrize("full", [False, True])
def test_poisson_nll_matches_pytorch_definition(full):
    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, (8, 4)).astype(np.float64)
    log_rate = rng.normal(1.0, 1.0, (8, 4))
    ours = S.PoissonNLL(full=full, dtype="float64")(counts, log_rate)
    np.testing.assert_allclose(
        float(ours), torch_poisson_nll(True, counts, log_rate, full), rtol=1e-13
    )
    rate = np.exp(log_rate)  # >= 0.02: PyTorch's 1e-8 shift moves the log by < 1e-6 relative
    ours = S.PoissonNLL(log_input=False, full=full, dtype="float64")(counts, rate)
    np.testing.assert_allclose(float(ours), torch_poisson_nll(False, counts, rate, full), rtol=1e-6)


def test_gaussian_kl_matches_the_closed_form():
    rng = np.random.default_rng(2)
    mu, log_var = rng.normal(size=(8, 5)), rng.normal(0.0, 2.0, (8, 5))
    expected = normal_kl(mu, np.exp(log_var), 0.0, 1.0)
    np.testing.assert_allclose(S.gaussian_kl(mu, log_var).numpy(), expected, rtol=1e-12)
    stacked = np.concatenate([mu, log_var], -1)
    np.testing.assert_allclose(
        float(S.GaussianKL(dtype="float64")(None, stacked)), expected.mean(), rtol=1e-12
    )
    # Against another normal: numbers, and tensors broadcast from a row.
    prior = S.GaussianKL(prior_mean=0.5, prior_log_variance=-1.0, dtype="float64")(
        np.zeros((8, 1)), stacked
    )
    np.testing.assert_allclose(
        float(prior), normal_kl(mu, np.exp(log_var), 0.5, math.exp(-1.0)).mean(), rtol=1e-12
    )
    m0, lv0 = rng.normal(size=(1, 5)), rng.normal(size=(1, 5))
    value = S.gaussian_kl(
        mu, log_var, prior_mean=tf.constant(m0), prior_log_variance=tf.constant(lv0)
    )
    np.testing.assert_allclose(
        value.numpy(), normal_kl(mu, np.exp(log_var), m0, np.exp(lv0)), rtol=1e-12
    )


def test_the_forms_agree_with_each_other():
    rng = np.random.default_rng(3)
    y, mu, s = (rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3))
    variance = S.gaussian_nll(y, np.concatenate([mu, np.exp(s)], -1))
    log_variance = S.gaussian_nll(y, np.concatenate([mu, s], -1), variance="log_variance")
    np.testing.assert_allclose(variance, log_variance, rtol=4 * F32.eps, atol=4 * F32.eps)
    counts = rng.poisson(2.0, (4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        S.poisson_nll(counts, s),
        S.poisson_nll(counts, np.exp(s), log_input=False),
        rtol=4 * F32.eps,
        atol=4 * F32.eps,
    )
    stacked = np.concatenate([mu, s], -1)
    np.testing.assert_allclose(
        float(S.GaussianKL()(np.zeros_like(stacked), stacked)),
        S.gaussian_kl(mu, s).numpy().mean(),
        rtol=1e-6,
    )


# ----------------------------------------------------------------------------
# Accuracy against mpmath on edge grids, values and gradients, every regime
# ----------------------------------------------------------------------------

_KL_MU = [0.0, 1e-20, 0.5, -3.0, 1e3, 1e18]
_KL_S = [
    0.0,
    1e-8,
    -1e-8,
    1e-4,
    -1e-4,
    0.3,
    -0.9999,  # the polynomial's lower end
    -1.0,
    -1.0001,
    -1.5,
    1.9999,
    2.0001,
    -2.0001,
    10.0,
    50.0,
    87.0,
    88.5,
    89.3,
    89.41,  # exp(s)/2 overflows float32 at log_max + log 2 = 89.4159: finite below,
    89.42,  # inf above (the reference's own overflow)
    -100.0,
    -1e6,
    -1e30,
]
_LOG_VARIANCE = [0.0, 1e-6, -3.0, 5.0, -60.0, -150.0, -200.0, 100.0, 180.0, 400.0, 1e30, -1e30]
_ERRORS = [0.0, 1e-30, 1e-3, 1.0, -7.5, 1e10]
_LOG_RATE = [-1e30, -50.0, -1.0, 0.0, 1e-7, 1.0, 10.0, 87.0, 88.0, 88.5, 89.0, 92.0, 200.0]
_COUNTS = [0.0, 1.0, 2.0, 7.0, 1e4, 2e36]
_RATES = [-1e3, -1.0, 0.0, 1e-30, 1e-7, 1e-3, 1.0, 3.5, 1e6, 3e38]
_VARIANCES = [-2.0, 0.0, 1e-30, 1e-7, 1e-3, 1.0, 3.5, 1e6, 3e38]


def _grid(*axes):
    mesh = np.meshgrid(*axes, indexing="ij")
    return [m.ravel().astype(np.float32)[:, None] for m in mesh]


def _floored(v):
    return max(v, mpmath.mpf(FLOOR32))


def _accuracy_cases():
    """name -> (fn of (a, b) columns, a, b, value, value scale, d value / d b, slope scale).

    The scales are the sizes of the terms that cancel (the error budget is in
    ULPs of them); slopes at the floors are the slopes at the floor (straight through).
    """
    e, s = _grid(_ERRORS, _LOG_VARIANCE)
    v_err, v = _grid(_ERRORS, _VARIANCES)
    kl_mu, kl_s = _grid(_KL_MU, _KL_S)
    counts, log_rate = _grid(_COUNTS, _LOG_RATE)
    rate_counts, rates = _grid(_COUNTS, _RATES)

    def stacked(b):
        return tf.concat([tf.zeros_like(b), b], -1)

    return {
        "nll_log_variance": (
            lambda a, b: S.gaussian_nll(a, stacked(b), variance="log_variance"),
            e,
            s,
            lambda a, b: mp_nll_log_variance(a, 0, b),
            lambda a, b: max(abs(b), a * a * mpmath.exp(-b)) / 2,
            lambda a, b: (1 - a * a * mpmath.exp(-b)) / 2,
            lambda a, b: max(1, a * a * mpmath.exp(-b)) / 2,
        ),
        "nll_variance": (
            lambda a, b: S.gaussian_nll(a, stacked(b)),
            v_err,
            v,
            lambda a, b: mp_nll_variance(a, 0, b, FLOOR32),
            lambda a, b: max(abs(mpmath.log(_floored(b))), a * a / _floored(b)) / 2,
            lambda a, b: (1 / _floored(b) - a * a / _floored(b) ** 2) / 2,
            lambda a, b: max(1 / _floored(b), a * a / _floored(b) ** 2) / 2,
        ),
        "kl": (
            lambda a, b: S.gaussian_kl(a, b),
            kl_mu,
            kl_s,
            mp_kl,
            mp_kl,
            lambda a, b: mpmath.expm1(b) / 2,
            # exp(b)/2 and 1/2 cancel in the slope (near b = 0 within an ULP of 1/2).
            lambda a, b: max(1, mpmath.exp(b)) / 2,
        ),
        "poisson_log_rate": (
            lambda a, b: S.poisson_nll(a, b),
            counts,
            log_rate,
            mp_poisson_log,
            lambda a, b: max(mpmath.exp(b), abs(a * b)),
            lambda a, b: mpmath.exp(b) - a,
            lambda a, b: max(mpmath.exp(b), a),
        ),
        "poisson_rate": (
            lambda a, b: S.poisson_nll(a, b, log_input=False),
            rate_counts,
            rates,
            lambda a, b: mp_poisson_rate(a, b, FLOOR32),
            lambda a, b: max(abs(b), abs(a * mpmath.log(_floored(b)))),
            lambda a, b: 1 - a / _floored(b),
            lambda a, b: max(1, a / _floored(b)),
        ),
    }


ACCURACY = _accuracy_cases()


@pytest.mark.parametrize("name", sorted(ACCURACY))
def test_values_and_gradients_are_accurate_in_every_regime(name, regime):
    fn, a, b, mp_value, value_scale, mp_slope, slope_scale = ACCURACY[name]
    value, (grad,) = regime.value_and_grad(fn, a, b, wrt=(1,), unknown_batch=regime.name != "eager")
    columns = a[:, 0], b[:, 0]
    errors = _scaled_errors(
        value, R.reference_array(mp_value, *columns), R.reference_array(value_scale, *columns)
    )
    worst = int(np.argmax(errors))
    assert errors[worst] <= BUDGET, (name, a[worst, 0], b[worst, 0], value[worst], errors[worst])
    # Slopes: never NaN; the exact one (inf where it is beyond the range) within
    # 8 ULP of the size of the terms that cancel in it.
    grad = grad.ravel().astype(np.float64)
    assert not np.isnan(grad).any(), (name, a[np.isnan(grad), 0], b[np.isnan(grad), 0])
    errors = _scaled_errors(
        grad, R.reference_array(mp_slope, *columns), R.reference_array(slope_scale, *columns)
    )
    worst = int(np.argmax(errors))
    assert errors[worst] <= 2 * BUDGET, (name, a[worst, 0], b[worst, 0], grad[worst], errors[worst])


def test_gradients_at_the_floors_are_the_slopes_at_the_floor():
    """Straight-through floors: a zero or negative variance/rate gets the slope at the floor."""
    e = np.float32([[1.0], [1.0], [1e-5]])
    v = np.float32([[0.0], [-3.0], [-3.0]])
    value, (grad,) = _value_and_grad(
        lambda a, b: S.gaussian_nll(a, tf.concat([tf.zeros_like(b), b], -1)), e, v
    )
    floor = np.float64(FLOOR32)
    expected = 0.5 * (1.0 - e.astype(np.float64) ** 2 / floor) / floor
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    assert grad[0, 0] < 0 and grad[1, 0] < 0  # pushed up
    counts, rates = np.float32([[3.0], [0.0]]), np.float32([[-1.0], [-1.0]])
    _, (grad,) = _value_and_grad(lambda a, b: S.poisson_nll(a, b, log_input=False), counts, rates)
    np.testing.assert_allclose(grad[:, 0], [1.0 - 3.0 / floor, 1.0], rtol=1e-6)


def test_the_mean_over_the_last_axis_is_finite_where_its_sum_is_not(regime):
    """Three terms near -1.6e38 (or +1.6e38): their sum is beyond float32, their mean is not."""
    columns = 3
    counts = np.full((1, columns), 2e36, np.float32)
    log_rate = np.full((1, columns), 85.0, np.float32)
    errors, variances = np.full((1, columns), 1.8e19, np.float32), np.ones((1, columns), np.float32)
    cases = [
        (lambda a, b: S.poisson_nll(a, b), counts, log_rate, mp_poisson_log),
        (
            lambda a, b: S.gaussian_nll(a, tf.concat([tf.zeros_like(b), b], -1)),
            errors,
            variances,
            lambda a, b: mp_nll_variance(a, 0, b, FLOOR32),
        ),
        (
            lambda a, b: S.gaussian_nll(
                a, tf.concat([tf.zeros_like(b), b - 1.0], -1), variance="log_variance"
            ),
            errors,
            variances,
            lambda a, b: mp_nll_log_variance(a, 0, b - 1),
        ),
    ]
    for fn, a, b, mp_term in cases:
        value = regime.run(fn, a, b, unknown_batch=regime.name != "eager")
        term = mp_term(R.mpf(float(a[0, 0])), R.mpf(float(b[0, 0])))
        assert abs(term) * columns > R.mpf(dtype_limits("float32").max)  # the sum overflows
        assert _scaled_errors(value, [term], [term])[0] <= BUDGET, (value, term)


def _value_and_grad(fn, a, b):
    """Eager value and gradient with respect to ``b``."""
    return Regime("eager").value_and_grad(fn, a, b, wrt=(1,))


# ----------------------------------------------------------------------------
# Hypothesis: finite values and gradients for finite inputs
# ----------------------------------------------------------------------------


def _stack(a, b):
    return np.concatenate([a, b], -1)


# Each: (function of (y_true, y_pred), how to draw y_true, how to draw y_pred), in
# domains where the exact value and gradient are representable in float32.
PROPERTIES = {
    "gaussian_nll": (
        lambda t, p, full: S.gaussian_nll(t, p, full),
        lambda dtype: finite_arrays(dtype, SHAPE, -1e3, 1e3),
        # any variance: negative, zero and huge ones included
        lambda dtype: st.tuples(
            finite_arrays(dtype, SHAPE, -1e3, 1e3), finite_arrays(dtype, SHAPE)
        ).map(lambda pair: _stack(*pair)),
    ),
    "gaussian_nll_log_variance": (
        lambda t, p, full: S.gaussian_nll(t, p, full, variance="log_variance"),
        lambda dtype: finite_arrays(dtype, SHAPE, -1e3, 1e3),
        # e^2 exp(-s) <= 4e6 exp(70) = 1e37
        lambda dtype: st.tuples(
            finite_arrays(dtype, SHAPE, -1e3, 1e3), finite_arrays(dtype, SHAPE, -70.0)
        ).map(lambda pair: _stack(*pair)),
    ),
    "gaussian_kl": (
        lambda t, p, full: S.GaussianKL(reduction=None)(t, p),
        lambda dtype: finite_arrays(dtype, SHAPE),  # ignored
        # exp(s)/2 <= exp(88)/2; two terms of -s/2 <= max/4 each
        lambda dtype: st.tuples(
            finite_arrays(dtype, SHAPE, -(2.0**60), 2.0**60),
            finite_arrays(dtype, SHAPE, -F32.max / 4, 88.0),
        ).map(lambda pair: _stack(*pair)),
    ),
    "poisson_nll": (
        lambda t, p, full: S.poisson_nll(t, p, full=full),
        lambda dtype: finite_arrays(dtype, SHAPE, 0.0, 1e4),
        lambda dtype: finite_arrays(dtype, SHAPE, -(2.0**100), 88.0),
    ),
    "poisson_nll_rate": (
        lambda t, p, full: S.poisson_nll(t, p, log_input=False, full=full),
        lambda dtype: finite_arrays(dtype, SHAPE, 0.0, 1e4),
        lambda dtype: finite_arrays(dtype, SHAPE),  # any rate, negative ones included
    ),
}


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_finite_values_and_gradients_for_finite_inputs(name):
    fn, true_strategy, pred_strategy = PROPERTIES[name]
    for dtype in FLOAT_DTYPES:

        @given(t=true_strategy(dtype), p=pred_strategy(dtype), full=st.booleans())
        def check(t, p, full):
            p_tensor = tf.constant(p)
            with tf.GradientTape() as tape:
                tape.watch(p_tensor)
                value = fn(tf.constant(t), p_tensor, full)
                total = tf.reduce_sum(value)
            grad = tape.gradient(total, p_tensor)
            assert value.dtype == tf.float32
            assert np.all(np.isfinite(value.numpy())), (dtype, t, p, value)
            assert np.all(np.isfinite(grad.numpy().astype(np.float64))), (dtype, t, p, grad)

        check()


# ----------------------------------------------------------------------------
# NaN in, NaN out (every regime)
# ----------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
NAN_CASES = {
    # name -> (fn, y_true, y_pred): row 0 has no NaN, rows 1.. have one NaN each
    "gaussian_nll": (
        lambda t, p: S.gaussian_nll(t, p),
        np.float32([[0.5], [NAN], [0.5], [0.5]]),
        np.float32([[0.0, 1.0], [0.0, 1.0], [NAN, 1.0], [0.0, NAN]]),
    ),
    "gaussian_nll_log_variance": (
        lambda t, p: S.gaussian_nll(t, p, variance="log_variance"),
        np.float32([[0.5], [NAN], [0.5], [0.5]]),
        np.float32([[0.0, -200.0], [0.0, 1.0], [NAN, 1.0], [0.0, NAN]]),
    ),
    "gaussian_kl": (
        lambda t, p: S.GaussianKL(reduction=None)(t, p),
        np.zeros((3, 2), np.float32),
        np.float32([[0.0, 1.0], [NAN, 1.0], [0.0, NAN]]),
    ),
    "poisson_nll": (
        lambda t, p: S.poisson_nll(t, p, full=True),
        np.float32([[0.0], [NAN], [3.0], [0.0]]),
        np.float32([[95.0], [1.0], [NAN], [NAN]]),
    ),
    "poisson_nll_rate": (
        lambda t, p: S.poisson_nll(t, p, log_input=False),
        np.float32([[0.0], [NAN], [3.0], [0.0]]),
        np.float32([[0.0], [1.0], [NAN], [NAN]]),
    ),
}


@pytest.mark.parametrize("name", sorted(NAN_CASES))
def test_nan_in_nan_out(name, regime):
    fn, y_true, y_pred = NAN_CASES[name]
    value = regime.run(fn, y_true, y_pred).ravel()
    assert np.isnan(value[1:]).all(), (name, value)
    assert not np.isnan(value[0]), (name, value)


def test_gaussian_kl_gradients_reach_a_learned_prior(regime):
    """A prior that is trained too (``prior_mean`` broadcast over the batch,
    ``prior_log_variance`` per example): every input gets the closed-form gradient,
    whether the kernel's backward pass is the row-local one (inputs of one shape)
    or the recomputing one (a broadcast input). Closed form, float64:
    with ``w`` the upstream per example and ``q = exp(-s_p)``,
    ``d/dmu = w (mu - m) q``, ``d/ds = w (exp(s) q - 1) / 2``,
    ``d/dm = -sum_rows w (mu - m) q``, ``d/ds_p = w (1 - (exp(s) + (mu - m)^2) q) / 2``."""
    rng = np.random.default_rng(7)
    mu, s, ps = (rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3))
    pm = rng.normal(size=(3,)).astype(np.float32)
    w = np.arange(1.0, 5.0)[:, None]
    cases = (
        ((mu, s, pm, ps), (0, 1, 2, 3)),
        ((mu, s, ps, ps), (0, 1, 3)),
        # Only the broadcast priors watched (a frozen encoder): the rows are the means',
        # which the taped inputs alone do not show (the gradient had the means' shape, or
        # the broadcast failed).
        ((mu, s, pm, ps[0]), (2, 3)),
        ((mu, s, pm[None], ps[:1]), (2, 3)),
    )
    for args, wrt in cases:
        _, grads = regime.value_and_grad(
            lambda a, b, c, d: S.gaussian_kl(a, b, prior_mean=c, prior_log_variance=d),
            *args,
            wrt=wrt,
            weights=w[:, 0].astype(np.float32),
        )
        m, d = (np.float64(a) for a in (args[2], args[3]))
        mu64, s64 = np.float64(mu), np.float64(s)
        q = np.exp(-d)
        want = {
            0: w * (mu64 - m) * q,
            1: w * (np.exp(s64) * q - 1) / 2,
            2: w * -(mu64 - m) * q,
            3: w * (1 - (np.exp(s64) + (mu64 - m) ** 2) * q) / 2,
        }
        for i, grad in zip(wrt, grads):
            # A broadcast input's gradient is the sum over the rows it was broadcast to.
            expected = want[i] if args[i].shape == mu.shape else np.sum(
                want[i], axis=0, keepdims=args[i].ndim == 2)
            np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6, err_msg=str(i))


def test_nan_prior_tensor_gives_nan():
    value = S.gaussian_kl([[0.0, 1.0]], [[0.0, 0.0]], prior_log_variance=tf.constant([[0.0, NAN]]))
    assert np.isnan(value.numpy()).all()


def test_kl_at_infinite_log_variance_is_inf_with_its_limit_slope(regime):
    # KL -> inf as s -> +-inf; the slope expm1(s)/2 -> inf and -1/2. Never
    # inf - inf = NaN (exp(s)/2 against (1 + s)/2 at s = +inf).
    mu = np.zeros((2, 1), np.float32)
    log_var = np.array([[INF], [-INF]], np.float32)
    value, (grad,) = regime.value_and_grad(lambda a, b: S.gaussian_kl(a, b), mu, log_var, wrt=(1,))
    np.testing.assert_array_equal(value, [INF, INF])
    np.testing.assert_array_equal(grad, [[INF], [-0.5]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kl_value_on_both_sides_of_the_series_range(dtype, regime):
    """At a zero mean the KL is (exp(s) - 1 - s)/2, a polynomial on [-1, 2] and exp(s)/2 -
    (1 + s)/2 beyond: within the budget on both sides of both switches and far from them
    (a polynomial used past its range is not)."""
    edges = [-1.0, 2.0]
    near = [e * f for e in edges for f in (0.999, 1.0, 1.001)]
    s = np.array([[v] for v in near + [-4.0, -1.5, 0.5, 2.5, 3.0, 4.0, 6.0, 10.0]], dtype)
    value = regime.run(lambda a, b: S.gaussian_kl(a, b), np.zeros_like(s), s)
    reference = R.reference_array(lambda b: (mpmath.exp(b) - 1 - b) / 2, s[:, 0])
    R.assert_ulp_within(value, reference, dtype, BUDGET)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("prior", [-3.0, -10.0, "tensor"])
def test_kl_against_a_prior_log_variance_is_within_budget(prior, dtype, regime):
    """s - s_p is rounded before exp amplifies its error |s - s_p|-fold (64 ULP at s = 63.54,
    s_p = -3): the rounding is added back. Large, small and cancelling differences, against
    mpmath on the exact inputs. In float64 a number prior was corrected twice under XLA,
    which had folded s - s_p - K into s - (s_p + K) (31 ULP at s = 29.52)."""
    s = np.array([[63.538036], [60.000797], [40.123456], [29.519400273113224], [2.7182817],
                  [-2.9999998], [0.3]], dtype)
    prior_values = np.full_like(s, -3.0) if prior == "tensor" else None
    if prior == "tensor":
        prior_values[1::2] = np.array(-10.000001, dtype)  # a prior per example
    value = regime.run(
        lambda a, b, p: S.gaussian_kl(a, b, prior_log_variance=p if prior == "tensor" else prior),
        np.zeros_like(s), s, prior_values if prior == "tensor" else np.zeros_like(s),
    )
    priors = prior_values[:, 0] if prior == "tensor" else np.full(len(s), prior)
    reference = np.array([
        (mpmath.exp(R.mpf(v) - R.mpf(p)) - 1 - (R.mpf(v) - R.mpf(p))) / 2
        for v, p in zip(s[:, 0], priors)
    ], dtype=object)
    R.assert_ulp_within(value, reference, dtype, BUDGET)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kl_slope_near_zero_log_variance(dtype, regime):
    """The log-variance slope expm1(s)/2 is exp(s)/2 - 1/2 from the value's exponential
    (within a few ULP of 1/2, the terms that cancel) and d/2 + d^2/4 close to 0: 0 at the
    optimum s = 0, of s's sign and within 8 ULP of 1/2 around it, both sides of the
    switch (2^-8 in float32, 2^-17 in float64)."""
    radius = 2.0 ** {"float32": -8, "float64": -17}[dtype]
    near = [0.0, 1e-30, 1e-12, 1e-7, radius * 0.99, radius * 1.01, 1e-3, 0.01, 0.05, 0.1, 0.3, 1.5]
    s = np.array([[v] for v in near + [-v for v in near[1:]]], dtype)
    mu = np.zeros_like(s)
    _, (grad,) = regime.value_and_grad(lambda a, b: S.gaussian_kl(a, b), mu, s, wrt=(1,))
    grad = grad[:, 0].astype(np.float64)
    assert grad[0] == 0.0
    np.testing.assert_array_equal(np.sign(grad), np.sign(s[:, 0]))
    errors = _scaled_errors(
        grad,
        R.reference_array(lambda b: mpmath.expm1(b) / 2, s[:, 0]),
        R.reference_array(lambda b: max(1, mpmath.exp(b)) / 2, s[:, 0]),
        dtype,
    )
    assert errors.max() <= 2 * BUDGET, (s[np.argmax(errors), 0], errors.max())


# ----------------------------------------------------------------------------
# The motivating cases: hand-written forms give inf/NaN, ours are finite
# ----------------------------------------------------------------------------


def test_vae_kl_in_float16_at_log_variance_12():
    mu = tf.constant([[0.5, -1.0]], tf.float16)
    log_var = tf.constant([[12.0, 0.0]], tf.float16)
    hand_written = -0.5 * tf.reduce_sum(1 + log_var - mu**2 - tf.exp(log_var), axis=-1)
    assert np.isinf(hand_written.numpy()).all()
    with tf.GradientTape() as tape:
        tape.watch(log_var)
        ours = S.gaussian_kl(mu, log_var)
    grad = tape.gradient(ours, log_var).numpy().astype(np.float64)
    expected = R.reference_array(lambda m, s: mp_kl(m, s), [0.5, -1.0], [12.0, 0.0])
    np.testing.assert_allclose(ours.numpy(), [float(sum(expected))], rtol=1e-6)
    # The slope expm1(12)/2 = 81377 is beyond float16: it saturates at 65504 (documented).
    np.testing.assert_array_equal(grad, [[65504.0, 0.0]])
    log_var32 = tf.cast(log_var, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(log_var32)
        ours32 = S.gaussian_kl(tf.cast(mu, tf.float32), log_var32)
    np.testing.assert_allclose(ours32, ours, rtol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(ours32, log_var32), [[0.5 * math.expm1(12.0), 0.0]], rtol=1e-6
    )


@pytest.mark.parametrize("variance", [0.0, -0.1])
def test_gaussian_nll_zero_or_negative_variance(variance):
    y, mu = np.float32([[1.0]]), np.float32([[0.0]])
    var = tf.constant([[variance]])
    hand_written = 0.5 * (tf.math.log(var) + (y - mu) ** 2 / var)
    assert not np.isfinite(hand_written.numpy()).any()
    value, (grad,) = _value_and_grad(lambda a, b: S.gaussian_nll(a, tf.concat([mu, b], -1)), y, var)
    np.testing.assert_allclose(value, [0.5 * (math.log(FLOOR32) + 1.0 / FLOOR32)], rtol=1e-6)
    assert np.isfinite(grad).all() and grad[0, 0] < 0


def test_gaussian_nll_log_variance_far_below_the_exponent_range():
    y = np.float32([[0.0], [1.0]])
    s = tf.constant([[-1000.0], [-1000.0]])
    hand_written = 0.5 * (s + (y - 0.0) ** 2 * tf.exp(-s))
    assert np.isnan(hand_written.numpy()[0, 0])  # 0 * inf
    value, (grad,) = _value_and_grad(
        lambda a, b: S.gaussian_nll(
            a, tf.concat([tf.zeros_like(b), b], -1), variance="log_variance"
        ),
        y,
        s,
    )
    np.testing.assert_array_equal(value, [-500.0, np.inf])  # the true +inf, documented
    assert not np.isnan(grad).any()
    assert grad[0, 0] == 0.5 and grad[1, 0] == -np.inf


def test_poisson_log_rate_beyond_the_exponent_range():
    counts, log_rate = np.float32([[2e36]]), np.float32([[89.0]])
    hand_written = tf.exp(log_rate) - counts * log_rate
    assert np.isinf(hand_written.numpy()).all()
    value, (grad,) = _value_and_grad(lambda a, b: S.poisson_nll(a, b), counts, log_rate)
    expected = float(mp_poisson_log(R.mpf(2e36), R.mpf(89.0)))
    np.testing.assert_allclose(value, [expected], rtol=1e-6)
    assert (
        grad[0, 0] == np.inf
    )  # exp(89) - 2e36 = 4.5e38: the true slope is beyond float32, not NaN


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_past_the_overflow_threshold_keeps_the_accuracy_of_exp(dtype, regime):
    """The Poisson kernel's ``exp(x) = scale * factor`` above ``log_max - 1``, up to its clamp.

    ``factor`` times the (float64) ``scale`` within 2 ULP of mpmath's ``exp(x)``:
    ``exp``'s own rounding, its argument ``x - shift`` being exact. A rounded
    reduced argument (``(x - hi) - lo``) was 3.5 ULP off at 92 and 52 ULP near
    the clamp in float32.
    """
    limits = dtype_limits(dtype)
    at_clamp = scaled_exp(tf.constant([np.inf], dtype))
    x = np.linspace(limits.log_max - 0.9, float(at_clamp.x[0]), 61).astype(dtype)
    factor = regime.wrap(lambda v: scaled_exp(v).factor, tf.constant(x))(tf.constant(x))
    assert bool(tf.reduce_all(scaled_exp(tf.constant(x)).large))
    digits = np.finfo(dtype).nmant
    for xi, fi in zip(x, factor.numpy()):
        want = mpmath.exp(R.mpf(float(xi)))
        ulp = mpmath.mpf(2) ** (mpmath.floor(mpmath.log(want, 2)) - digits)
        error = abs(R.mpf(float(fi)) * R.mpf(at_clamp.scale) - want) / ulp
        assert error <= 2, f"exp({xi}): {float(error):.1f} ULP"


def test_poisson_negative_rate_is_finite():
    counts, rates = np.float32([[1.0]]), np.float32([[-0.5]])
    hand_written = rates - counts * tf.math.log(rates + 1e-8)
    assert np.isnan(hand_written.numpy()).all()
    value, (grad,) = _value_and_grad(
        lambda a, b: S.poisson_nll(a, b, log_input=False), counts, rates
    )
    np.testing.assert_allclose(value, [-0.5 - math.log(FLOOR32)], rtol=1e-6)
    assert grad[0, 0] < 0  # pushed up into the Poisson domain


# ----------------------------------------------------------------------------
# Input conventions and errors
# ----------------------------------------------------------------------------


def test_rank_one_targets_are_one_output():
    y = np.float32([0.5, 1.0])
    p = np.float32([[0.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(S.gaussian_nll(y, p), S.gaussian_nll(y[:, None], p))


def test_half_precision_computes_in_float32():
    # Hand-written float16 overflows e^2 at an error of 256.
    y, p = np.float16([[300.0]]), np.float16([[0.0, 1.0]])
    value = S.gaussian_nll(y, p)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value, [0.5 * 300.0**2], rtol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: S.gaussian_nll(np.zeros((2, 2)), np.zeros((2, 3))),
        lambda: S.gaussian_nll(np.zeros((2, 2)), np.zeros((2, 2))),
        lambda: S.gaussian_nll(np.zeros((3, 1)), np.zeros((2, 2))),
        lambda: S.GaussianKL()(np.zeros((2, 3)), np.zeros((2, 3))),
        lambda: S.gaussian_kl(np.zeros((2, 3)), np.zeros((2, 2))),
        lambda: S.poisson_nll(np.zeros((2, 3)), np.zeros((2, 2))),
    ],
)
def test_shape_mismatches_are_value_errors_naming_the_shapes(call):
    with pytest.raises(ValueError, match=r"\(2, "):
        call()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: S.GaussianNLL(variance="std"), "variance"),
        (lambda: S.GaussianNLL(full="yes"), "full"),
        (lambda: S.PoissonNLL(log_input=2), "log_input"),  # 0 and 1: Keras takes them
        (lambda: S.GaussianKL(prior_mean=float("nan")), "prior_mean"),
        (lambda: S.GaussianKL(prior_log_variance="1"), "prior_log_variance"),
        (lambda: S.GaussianKL(prior_log_variance=float("inf")), "prior_log_variance"),
    ],
)
def test_bad_hyperparameters_are_value_errors_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_integer_predictions_are_cast_and_strings_refused():
    counts = np.float32([[1.0, 2.0]])
    np.testing.assert_array_equal(
        S.PoissonNLL()(counts, np.int32([[0, 1]])), S.PoissonNLL()(counts, np.float32([[0, 1]]))
    )
    with pytest.raises(TypeError, match="y_pred"):
        S.GaussianNLL()(counts, np.complex64([[0, 1, 1, 1]]))
    with pytest.raises(TypeError, match="ragged"):
        S.gaussian_nll(tf.ragged.constant([[1.0]]), tf.ragged.constant([[1.0, 1.0]]))


# ----------------------------------------------------------------------------
# Configuration and saving
# ----------------------------------------------------------------------------

CONFIGS = {
    "GaussianNLL": ({"full": True, "variance": "log_variance"}, 2),
    "GaussianKL": ({"prior_mean": 0.5, "prior_log_variance": -1.0}, 4),
    "PoissonNLL": ({"log_input": False, "full": True}, 1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_get_config_lists_every_constructor_argument(name):
    kwargs, _ = CONFIGS[name]
    loss = getattr(S, name)(**kwargs, reduction="sum", name="mine", dtype="float64")
    config = loss.get_config()
    import inspect

    assert set(config) == set(inspect.signature(getattr(S, name)).parameters)
    assert config == {**kwargs, "reduction": "sum", "name": "mine", "dtype": "float64"}
    rebuilt = getattr(S, name).from_config(config)
    assert rebuilt.get_config() == config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keras_file_round_trip(name, tmp_path):
    kwargs, units = CONFIGS[name]
    keras.utils.set_random_seed(0)
    activation = "softplus" if name == "PoissonNLL" else None
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(units, activation=activation)])
    model.compile(optimizer="sgd", loss=getattr(S, name)(**kwargs))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (
        rng.poisson(2.0, (16, 1)).astype(np.float32)
        if name != "GaussianKL"
        else np.zeros((16, 1), np.float32)
    )
    model.fit(x, y, epochs=1, verbose=0)
    before = model.evaluate(x, y, verbose=0)
    assert math.isfinite(before)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: registered
    assert type(loaded.loss) is getattr(S, name)
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), before, rtol=1e-6)


def test_edge_grid_dtypes_are_finite(regime):
    """Every loss at zero/negative variances, extreme log-variances and log-rates, in each dtype."""
    for dtype in edge_dtypes(regime):
        np_dtype = R.to_numpy_dtype(dtype)
        largest = float(dtype_limits(dtype).max)
        y = np.array([[0.0], [1.0], [-2.0], [1.0]], np_dtype)
        cases = (
            # (fn, y_pred): mean and variance / log-variance / mean and log-variance / log-rate /
            # rate
            (
                lambda a, b: S.gaussian_nll(a, b),
                [[0.0, 0.0], [1.0, -1.0], [0.0, largest], [-3.0, -largest]],
            ),
            (
                lambda a, b: S.gaussian_nll(a, b, variance="log_variance"),
                [[0.0, -largest], [1.0, -1.0], [0.0, largest], [-3.0, -20.0]],
            ),
            (
                lambda a, b: S.gaussian_kl(b[:, :1], b[:, 1:]),
                [[0.0, -largest / 4], [1.0, -1.0], [-100.0, 10.0], [-3.0, 80.0]],
            ),
            (
                lambda a, b: S.poisson_nll(tf.abs(a), b, full=True),
                [[-largest / 4], [0.0], [10.0], [85.0]],
            ),
            (
                lambda a, b: S.poisson_nll(tf.abs(a), b, log_input=False),
                [[-largest], [0.0], [1e-3], [largest / 2]],
            ),
        )
        for fn, p in cases:
            value, (grad,) = regime.value_and_grad(fn, y, np.array(p, np_dtype), wrt=(1,))
            assert np.isfinite(value).all(), (dtype, p, value)
            assert np.isfinite(grad.astype(np.float64)).all(), (dtype, p, grad)


@pytest.mark.parametrize(
    "dtype, log_variance, prior_log_variance",
    [("float32", 88.75, -1.2345e-5), ("float32", 89.0, -0.1234567), ("float64", 710.0, -1.2345e-9)],
)
def test_gaussian_kl_just_past_log_max_with_a_prior_is_finite(regime, dtype, log_variance,
                                                              prior_log_variance):
    """``d = s - s_p`` between ``log_max`` and ``log_max + log 2``: the value ``exp(d) / 2``
    is finite, but the first-order correction of d's rounding took ``expm1(d) = inf``
    (``-inf`` for 1.748e38)."""
    prior = np.array(prior_log_variance, dtype)  # the number the loss receives, as rounded
    mean, s = np.array([[0.0]], dtype), np.array([[log_variance]], dtype)
    value = regime.run(lambda m, v: S.gaussian_kl(m, v, prior_log_variance=float(prior)), mean, s)
    expected = R.reference_array(
        lambda m, v: mp_kl(m, v, p=mpmath.mpf(float(prior))), mean[0], s[0]
    )
    R.assert_ulp_within(value, expected, dtype, 4)


@pytest.mark.parametrize("mean, prior_log_variance", [(1e20, 100.0), (2e19, 2.0), (3e38, 100.0)])
def test_gaussian_kl_with_a_number_prior_where_the_squared_error_overflows(
    regime, mean, prior_log_variance
):
    """A number prior is a constant, and XLA folded ``e exp(-s/2) exp(-s/2)`` into ``e e
    exp(-s)``: ``e**2`` overflowed and ``exp(-100)`` flushed to 0 (NaN for 49.5, ``inf`` for
    2.7e37), where a tensor prior gave the value. The prior is now opaque to XLA."""
    means, log_variances = np.float32([[mean]]), np.float32([[0.0]])
    value = regime.run(
        lambda m, s: S.gaussian_kl(m, s, prior_log_variance=prior_log_variance),
        means, log_variances,
    )
    expected = R.reference_array(
        lambda m, s: mp_kl(m, s, p=mpmath.mpf(prior_log_variance)), means[0], log_variances[0]
    )
    R.assert_ulp_within(value, expected, "float32", 4)
