"""stableops.ops safe math: safe_divide, safe_log, safe_sqrt, safe_norm, l2_normalize,
clip_preserve_gradient, xlogy.

Values are checked against mpmath within each op's stated ULP budget, gradients
against their closed forms (including the documented conventions at 0), in all
three regimes with an unknown batch dimension, over explicit edge grids and
hypothesis draws in float16, bfloat16, float32 (and float64 on the grids).
"""

import itertools
import math

import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stableops import ops
from stableops._internal.clip import clip
from tests import _reference as ref
from tests._helpers import as_dtype, is_finite, nan_through_the_clamp_as_one
from tests._regimes import Regime, edge_dtypes
from tests._strategies import FLOAT_DTYPES, finite_arrays

NAN, INF = float("nan"), float("inf")

# Value budgets in ULPs of the result dtype, as stated in the docstrings.
VALUE_BUDGET = {
    "safe_divide": {"float32": 1, "float64": 1, "half": 1},
    "safe_log": {"float32": 3, "float64": 3, "half": 1},
    "safe_sqrt": {"float32": 1, "float64": 1, "half": 1},
    "safe_norm": {"float32": 1, "float64": 2, "half": 1},  # float32: float64 squares
    "l2_normalize": {"float32": 1, "float64": 3, "half": 1},  # float32: float64 squares
    "clip_preserve_gradient": {"float32": 0, "float64": 0, "half": 0},
    "xlogy": {"float32": 3, "float64": 3, "half": 1},
}
# Gradients against their closed forms: a few roundings in float32/float64;
# half precision computes in float32 and rounds once.
GRAD_BUDGET = {"float32": 4, "float64": 4, "half": 1}


_np = ref.to_numpy_dtype
_limits = ops.dtype_limits


# Upstream weights for ops whose output is a vector per row (a plain sum would
# hide part of the Jacobian).
def _weighted(fn, weights):
    def weighted(x):
        value = fn(x)
        wide = tf.float64 if value.dtype == tf.float64 else tf.float32
        return tf.cast(value, wide) * tf.constant(weights, wide)

    return weighted


# ----------------------------------------------------------------------------
# mpmath gradient references (closed forms, including each op's convention)
# ----------------------------------------------------------------------------


def _mp_divide_grads(x, y):
    if y == 0:
        return mpmath.mpf(0), mpmath.mpf(0)
    return 1 / y, -x / (y * y)


def _mp_log_grad(x, tiny):
    if mpmath.isnan(x) or x < 0:
        return ref.NAN
    return 1 / max(x, ref.mpf(tiny))


def _mp_sqrt_grad(x):
    if mpmath.isnan(x) or x < 0:
        return ref.NAN
    return mpmath.mpf(0) if x == 0 else 1 / (2 * mpmath.sqrt(x))


def _mp_l2_normalize_grad(row, weights):
    """(w - y <w, y>) / ||x||; 0 for the zero row."""
    norm = ref.mp_norm(row)
    if norm == 0:
        return [mpmath.mpf(0)] * len(row)
    y = ref.mp_l2_normalize(row)
    inner = mpmath.fsum(w * v for w, v in zip(weights, y))
    return [(w - v * inner) / norm for w, v in zip(weights, y)]


def _rows_reference(fn, x, *extra):
    x = np.asarray(x, dtype=np.float64)
    return np.array([fn([ref.mpf(v) for v in row], *extra) for row in x], dtype=object)


# ----------------------------------------------------------------------------
# Edge grids
# ----------------------------------------------------------------------------


def _specials(dtype):
    lim = _limits(dtype)
    return lim.tiny, lim.eps, lim.max


def _divide_grid(dtype):
    tiny, eps, big = _specials(dtype)
    xs = [0.0, tiny, eps, 1.0, -1.5, 1 - eps / 2, big, -big, INF, -INF, NAN]
    ys = [0.0, tiny, 1.0, -3.0, 0.5, big, INF, NAN]
    pairs = list(itertools.product(xs, ys))
    return as_dtype([p[0] for p in pairs], dtype), as_dtype([p[1] for p in pairs], dtype)


def _nonnegative_grid(dtype):
    tiny, eps, big = _specials(dtype)
    return as_dtype(
        [
            0.0,
            tiny,
            2 * tiny,
            eps,
            0.25,
            0.5,
            1 - eps / 2,
            1.0,
            1 + eps,
            2.0,
            np.e,
            1e4 if dtype != "float16" else 1e3,
            big,
            INF,
            -0.0,
            -tiny,
            -1.0,
            -INF,
            NAN,
        ],
        dtype,
    )


def _rows_grid(dtype):
    tiny, eps, big = _specials(dtype)
    return as_dtype(
        [
            [0.0, 0.0, 0.0, 0.0],
            [3.0, 4.0, 0.0, 0.0],
            [3 * big / 8, -4 * big / 8, 0.0, 0.0],  # naive sum of squares overflows
            [big, big, big, big],  # norm 2 * max: beyond the range, inf
            [3 * tiny, 4 * tiny, 0.0, 0.0],  # naive sum of squares underflows
            [tiny, 0.0, -tiny, tiny],
            [1.0, eps, -eps, eps / 2],
            [big, tiny, 1.0, -1.0],
            [-1.5, 2.25, 0.5, -0.75],
            [INF, 1.0, 0.0, -2.0],
            [-INF, INF, 1.0, 2.0],
            [NAN, 1.0, 0.0, 0.0],
            [NAN, INF, 0.0, 0.0],
        ],
        dtype,
    )


def _xlogy_grid(dtype):
    tiny, eps, big = _specials(dtype)
    xs = [0.0, 1.0, -2.0, tiny, 0.5, big, INF, NAN]
    ys = [0.0, tiny, eps, 0.5, 1.0, 1 + eps, 2.0, big, INF, -1.0, NAN]
    pairs = list(itertools.product(xs, ys))
    return as_dtype([p[0] for p in pairs], dtype), as_dtype([p[1] for p in pairs], dtype)


def _assert_grad(actual, reference, dtype, mask, context):
    """Compare gradients where ``mask`` holds (finite inputs); the reference has the convention."""
    actual = np.asarray(actual, dtype=np.float64)
    ref.assert_ulp_within(
        actual[mask], reference[mask], dtype, ref.budget_for(GRAD_BUDGET, dtype), context=context
    )


def _assert_value(name, value, reference, dtype, context):
    assert value.dtype == _np(dtype), context
    ref.assert_ulp_within(
        value, reference, dtype, ref.budget_for(VALUE_BUDGET[name], dtype), context=context
    )


# Each edge test runs every dtype in one regime: values against mpmath, gradients
# against the closed forms (with each op's convention at 0), NaN positions (a
# NaN reference must be met by NaN), unknown batch dimension in graph regimes.


def test_safe_divide_edges(regime):
    for dtype in edge_dtypes(regime):
        x, y = _divide_grid(dtype)
        fn = lambda a, b: ops.safe_divide(a, b, fill=2.5)  # noqa: E731
        value, (gx, gy) = regime.value_and_grad(fn, x, y, wrt=(0, 1), unknown_batch=True)
        context = f"{dtype} {regime}"
        _assert_value(
            "safe_divide",
            value,
            ref.reference_array(lambda a, b: ref.mp_safe_divide(a, b, 2.5), x, y),
            dtype,
            context,
        )
        finite = is_finite(x) & is_finite(y)
        for grad, i in ((gx, 0), (gy, 1)):
            expected = ref.reference_array(lambda a, b, i=i: _mp_divide_grads(a, b)[i], x, y)
            _assert_grad(grad, expected, dtype, finite, f"d/d{'xy'[i]} {context}")
            assert np.all(grad[(y == 0) & finite] == 0), (
                context
            )  # zero, finite gradients where y == 0


def test_safe_log_edges(regime):
    for dtype in edge_dtypes(regime):
        x = _nonnegative_grid(dtype)
        value, (grad,) = regime.value_and_grad(ops.safe_log, x, unknown_batch=True)
        context = f"{dtype} {regime}"
        _assert_value("safe_log", value, ref.reference_array(ref.mp_log, x), dtype, context)
        tiny = _limits(dtype).tiny
        _assert_grad(
            grad,
            ref.reference_array(lambda v: _mp_log_grad(v, tiny), x),
            dtype,
            is_finite(x),
            context,
        )
        # log(0) = -inf, but its slope is 1/tiny: finite in the input dtype, not inf.
        assert np.all(grad[x == 0] == np.float64(_np(dtype).type(1 / tiny))), context
        assert np.all(np.isnan(grad[x.astype(np.float64) < 0])), context


def test_safe_sqrt_edges(regime):
    for dtype in edge_dtypes(regime):
        x = _nonnegative_grid(dtype)
        value, (grad,) = regime.value_and_grad(ops.safe_sqrt, x, unknown_batch=True)
        context = f"{dtype} {regime}"
        _assert_value("safe_sqrt", value, ref.reference_array(ref.mp_sqrt, x), dtype, context)
        _assert_grad(grad, ref.reference_array(_mp_sqrt_grad, x), dtype, is_finite(x), context)
        assert np.all(grad[x == 0] == 0), context


def test_safe_norm_edges(regime):
    for dtype in edge_dtypes(regime):
        x = _rows_grid(dtype)
        value, (grad,) = regime.value_and_grad(ops.safe_norm, x, unknown_batch=True)
        context = f"{dtype} {regime}"
        assert value.shape == (x.shape[0],)
        _assert_value("safe_norm", value, _rows_reference(ref.mp_norm, x), dtype, context)
        # d||x||/dx = x/||x||: 0 at the zero vector (row 0), bounded by 1 elsewhere.
        finite_rows = np.broadcast_to(np.all(is_finite(x), axis=1)[:, None], x.shape)
        direction = np.array(
            [list(r) for r in _rows_reference(ref.mp_l2_normalize, x)], dtype=object
        )
        _assert_grad(grad, direction, dtype, finite_rows, context)
        assert np.all(grad[0] == 0), context



def test_safe_norm_of_an_infinite_row_is_inf_with_the_limit_direction(regime):
    """A row holding +-inf: norm inf, gradient sign(x) / sqrt(k) at its k infinite entries
    (the direction x / ||x|| tends to), 0 elsewhere; NaN beside inf stays NaN."""
    for dtype in edge_dtypes(regime):
        x = as_dtype([[INF, -INF, 1.0, 0.0], [INF, 2.0, -3.0, 0.0], [-INF, -INF, -INF, INF],
                      [INF, NAN, 1.0, 0.0]], dtype)
        value, (grad,) = regime.value_and_grad(ops.safe_norm, x)
        context = f"{dtype} {regime}"
        assert np.all(np.isposinf(value[:3])) and np.isnan(value[3]), context
        want = [[2**-0.5, -(2**-0.5), 0, 0], [1, 0, 0, 0], [-0.5, -0.5, -0.5, 0.5]]
        np.testing.assert_allclose(
            np.asarray(grad[:3], np.float64), want, rtol=float(np.finfo(np.float16).eps),
            err_msg=context,
        )



def test_safe_norm_nan_does_not_rest_on_the_clamp(monkeypatch, regime):
    # Float32 rows widen through a clamp, which returns a bound for a NaN on some CPUs
    # (_internal/clip.py): with such a clamp, the NaN still reaches its row's norm and
    # gradient (the select in the squares). The other rows stay finite.
    from stableops.ops import _safe_math

    nan_through_the_clamp_as_one(monkeypatch, _safe_math)
    x = np.float32([[1.0, NAN, 2.0], [INF, NAN, 0.0], [3.0, 4.0, 0.0]])
    value, (grad,) = regime.value_and_grad(
        lambda v: _safe_math._norm_with_unit_gradient(v, -1, False), x
    )
    assert np.all(np.isnan(value[:2])) and value[2] == 5.0, value
    assert np.all(np.isnan(grad[:2])) and np.all(np.isfinite(grad[2])), grad

@pytest.mark.parametrize(
    "op,reference", [(ops.safe_norm, ref.mp_norm), (ops.l2_normalize, ref.mp_l2_normalize)],
    ids=["safe_norm", "l2_normalize"],
)
def test_float32_norms_are_rounded_once(op, reference, regime):
    """float32 squares summed in float64 (exact squares, a sum of relative error
    64 * 2^-53 over rows of 64), the unit vector as a float64 product with the reciprocal:
    the exact result rounded once, 0.5 ULP and 2^-22 ULP of float64 roundings. (Squared in
    float32 after exact scaling: the norm 0.83 ULP, the unit vector 1.62 on this sample.)"""
    rng = np.random.default_rng(5)
    scales = np.exp(rng.uniform(-60.0, 60.0, (400, 1)))  # float32 squares under- or overflow
    x = (rng.standard_normal((400, 64)) * scales).astype(np.float32)
    value = regime.run(op, x)
    want = np.array([reference([ref.mpf(v) for v in row]) for row in x.astype(np.float64)],
                    dtype=object)
    errors = ref.ulp_error(value, want, tf.float32)
    assert errors.max() <= 0.5 + 2.0**-22, (errors.max(), regime)


# Powers of two of magnitude >= 1: the weighted output divides back to the
# value exactly (a factor below 1 could flush a tiny unit vector entry to 0).
_L2_WEIGHTS = np.resize([1.0, -2.0, 4.0, -1.0, 2.0], (13, 4))


def test_l2_normalize_edges(regime):
    for dtype in edge_dtypes(regime):
        x = _rows_grid(dtype)
        weighted, (grad,) = regime.value_and_grad(
            _weighted(ops.l2_normalize, _L2_WEIGHTS), x, unknown_batch=True
        )
        value = (weighted / _L2_WEIGHTS).astype(_np(dtype))
        context = f"{dtype} {regime}"
        expected = np.array(
            [list(r) for r in _rows_reference(ref.mp_l2_normalize, x)], dtype=object
        )
        _assert_value("l2_normalize", value, expected, dtype, context)
        # (w - y <w, y>) / ||x|| cancels when y is close to a weighted axis, so
        # the error is measured against the scale of its terms, sum|w| / ||x||.
        finite_rows = np.all(is_finite(x), axis=1)
        for row, w, g in zip(x[finite_rows], _L2_WEIGHTS[finite_rows], grad[finite_rows]):
            mp_row = [ref.mpf(v) for v in row]
            expected = _mp_l2_normalize_grad(mp_row, [ref.mpf(v) for v in w])
            norm = ref.mp_norm(mp_row)
            scale = mpmath.fsum(abs(ref.mpf(v)) for v in w) / norm if norm else mpmath.mpf(0)
            # (plus the smallest normal: results below it are flushed to 0)
            tolerance = ref.budget_for(GRAD_BUDGET, dtype) * ref.ulp_of(scale, dtype) + ref.mpf(
                _limits(dtype).tiny
            )
            # Beyond the range, the largest finite value with the exact one's sign.
            largest = ref.mpf(_limits(dtype).max)
            for actual, want in zip(g, expected):
                assert abs(ref.mpf(actual) - want) <= tolerance or (
                    abs(want) > largest and ref.mpf(actual) == mpmath.sign(want) * largest
                ), (context, row, g)
        assert np.all(value[0] == 0) and np.all(grad[0] == 0), context


def test_a_gradient_beyond_the_range_is_inf_so_skip_non_finite_skips_the_step():
    # The convention (docs/design.md, rule 1): an exact gradient beyond float32's range is
    # inf, which SkipNonFinite and LossScaleOptimizer act on; a saturated 3.4e38 would be
    # applied (Adam: its second moment overflows, the weight is NaN after the next step).
    import keras

    from stableops.optimizers import SkipNonFinite

    divisor = keras.Variable([1e-20, 2.0])
    optimizer = SkipNonFinite(keras.optimizers.Adam(0.1))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ops.safe_divide(tf.constant([1.0, 1.0]), divisor))
    (grad,) = tape.gradient(loss, [divisor])
    assert np.isfinite(loss.numpy()) and grad.numpy()[0] == -np.inf  # exact: -1e40
    assert grad.numpy()[1] == -0.25
    optimizer.apply_gradients([(grad, divisor)])
    assert int(optimizer.skipped_steps.numpy()) == 1
    np.testing.assert_array_equal(divisor.numpy(), np.float32([1e-20, 2.0]))

def test_l2_normalize_gradient_saturates_beyond_the_range(regime):
    # ||x|| at the smallest normal under an upstream of 8 (NT-Xent's 1/t does that): the
    # exact gradient 8 / tiny exceeds the largest float32 and was inf; now the largest.
    tiny = float(np.finfo(np.float32).tiny)
    x = np.float32([[tiny, 0.0, 0.0], [3.0, 4.0, 0.0]])
    weights = np.float32([[0.0, 8.0, -8.0], [0.0, 8.0, -8.0]])
    _, (grad,) = regime.value_and_grad(_weighted(ops.l2_normalize, weights), x)
    largest = np.finfo(np.float32).max
    np.testing.assert_array_equal(grad[0], [0.0, largest, -largest])
    # An ordinary row is unchanged: (w - y <w, y>) / ||x|| = ([0, 8, -8] - 6.4 y) / 5.
    np.testing.assert_allclose(grad[1], [-0.768, 0.576, -1.6], rtol=1e-6)


def _clip_grid(dtype):
    x = _nonnegative_grid(dtype)
    return np.concatenate([x, -x])


def test_clip_preserve_gradient_edges(regime):
    for dtype in edge_dtypes(regime):
        x = _clip_grid(dtype)
        # NumPy scalars become tensors: one kernel for all bounds (Python floats
        # would be traced as constants, one compile per value).
        fn = lambda t: ops.clip_preserve_gradient(t, np.float64(-1.0), np.float64(2.0))  # noqa: E731
        value, (grad,) = regime.value_and_grad(fn, x, unknown_batch=True)
        clip = lambda v: ref.NAN if mpmath.isnan(v) else min(max(v, mpmath.mpf(-1)), mpmath.mpf(2))  # noqa: E731
        _assert_value(
            "clip_preserve_gradient",
            value,
            ref.reference_array(clip, x),
            dtype,
            f"{dtype} {regime}",
        )
        # Straight-through: the gradient is 1 everywhere, clipped or not (NaN included).
        np.testing.assert_array_equal(grad, np.ones_like(grad))


def test_the_internal_clip_has_slope_one_at_both_ends(regime):
    # `_internal.clip.clip` (the NaN-keeping clip every kernel uses) promises the slope of
    # the select, 1 inside the interval with its ends included, as tf.clip_by_value: the
    # hinges at their margin take it (a slope of 0 there made categorical_hinge's gradient
    # at the margin 0 where Keras's is [1, -1]).
    value, (grad,) = regime.value_and_grad(
        lambda t: clip(t, 0.0, 2.0), np.float32([-1.0, 0.0, 1.0, 2.0, 3.0, np.nan])
    )
    np.testing.assert_array_equal(value, np.float32([0.0, 0.0, 1.0, 2.0, 2.0, np.nan]))
    np.testing.assert_array_equal(grad, np.float32([0.0, 1.0, 1.0, 1.0, 0.0, 1.0]))


def test_xlogy_edges(regime):
    for dtype in edge_dtypes(regime):
        x, y = _xlogy_grid(dtype)
        value, (gx, gy) = regime.value_and_grad(ops.xlogy, x, y, wrt=(0, 1), unknown_batch=True)
        context = f"{dtype} {regime}"
        _assert_value("xlogy", value, ref.reference_array(ref.mp_xlogy, x, y), dtype, context)
        tiny = _limits(dtype).tiny
        in_domain = is_finite(x) & is_finite(y) & (y.astype(np.float64) >= 0)
        for grad, i in ((gx, 0), (gy, 1)):
            expected = ref.reference_array(lambda a, b, i=i: ref.mp_xlogy_grad(a, b, tiny)[i], x, y)
            _assert_grad(grad, expected, dtype, in_domain, f"d/d{'xy'[i]} {context}")
        zero_zero = (x == 0) & (y == 0)
        assert np.all(value[zero_zero] == 0) and np.all(gy[zero_zero] == 0), context
        # NaN is never hidden: xlogy(0, nan) is NaN (tf.math.xlogy gives 0).
        assert np.all(np.isnan(value[(x == 0) & np.isnan(y)])), context


# ----------------------------------------------------------------------------
# Hypothesis: finite in -> finite out, accuracy, NaN propagation
# ----------------------------------------------------------------------------

EAGER = Regime("eager")  # the public ops run as XLA kernels when called eagerly
SHAPE = (8,)  # small, fixed: one kernel compile per dtype, fast shrinking


def _zero_mask(shape):
    return hnp.arrays(np.bool_, shape, elements=st.integers(0, 3).map(lambda i: i == 0))  # ~1 in 4


def _with_nans(arrays_strategy, shape):
    """Draw an array and a NaN mask; return the array with NaN where the mask holds."""
    mask = hnp.arrays(
        np.bool_, shape, elements=st.integers(0, 7).map(lambda i: i == 0)
    )  # ~1 in 8 NaN
    return st.tuples(arrays_strategy, mask).map(
        lambda t: np.where(t[1], np.array(NAN, t[0].dtype), t[0])
    )


def _representable(reference, dtype):
    """Elements whose mpmath value is finite and inside the dtype's range."""
    largest = ref.mpf(ml_dtypes.finfo(_np(dtype)).max)
    return np.array([not mpmath.isnan(r) and abs(r) <= largest for r in reference.flat]).reshape(
        reference.shape
    )


def _safe_divide_property(dtype):
    budget = ref.budget_for(VALUE_BUDGET["safe_divide"], dtype)
    shape = SHAPE
    fn = lambda a, b: ops.safe_divide(a, b, fill=2.5)  # noqa: E731

    @given(
        _with_nans(finite_arrays(dtype, shape), shape),
        finite_arrays(dtype, shape),
        _zero_mask(shape),
    )
    def check(x, y, zero):
        y = np.where(zero, np.zeros_like(y), y)  # plenty of exact zeros
        value, (gx, gy) = EAGER.value_and_grad(fn, x, y, wrt=(0, 1))
        ref.assert_ulp_within(
            value,
            ref.reference_array(lambda a, b: ref.mp_safe_divide(a, b, 2.5), x, y),
            dtype,
            budget,
        )
        ok = ~np.isnan(x.astype(np.float64))
        for grad, index in ((gx, 0), (gy, 1)):
            expected = ref.reference_array(lambda a, b, i=index: _mp_divide_grads(a, b)[i], x, y)
            keep = ok & _representable(expected, dtype)
            assert np.all(is_finite(grad[keep])), (x, y, grad)

    check()


def test_safe_divide_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _safe_divide_property(dtype)


def _log_or_sqrt_property(name, dtype):
    fn, mp_fn = {"safe_log": (ops.safe_log, ref.mp_log), "safe_sqrt": (ops.safe_sqrt, ref.mp_sqrt)}[
        name
    ]
    budget = ref.budget_for(VALUE_BUDGET[name], dtype)
    shape = SHAPE

    @given(_with_nans(finite_arrays(dtype, shape, min_value=0.0), shape))
    def check(x):
        value, (grad,) = EAGER.value_and_grad(fn, x)
        ref.assert_ulp_within(value, ref.reference_array(mp_fn, x), dtype, budget)
        ok = ~np.isnan(x.astype(np.float64))
        assert np.all(is_finite(grad[ok])), (x, grad)  # finite at 0 too (the convention)
        assert np.all(np.isnan(grad[~ok]))

    check()


def test_log_and_sqrt_property():
    for name in ("safe_log", "safe_sqrt"):
        for dtype in FLOAT_DTYPES:
            _log_or_sqrt_property(name, dtype)


def _norms_property(dtype):
    shape = (3, 4)
    weights = _L2_WEIGHTS[:3]
    norm_budget = ref.budget_for(VALUE_BUDGET["safe_norm"], dtype)
    unit_budget = ref.budget_for(VALUE_BUDGET["l2_normalize"], dtype)

    @given(_with_nans(finite_arrays(dtype, shape), shape), _zero_mask(shape[:1]))
    def check(x, zero_row):
        x = np.where(zero_row[:, None], np.zeros_like(x), x)
        norm, (norm_grad,) = EAGER.value_and_grad(ops.safe_norm, x)
        weighted, (unit_grad,) = EAGER.value_and_grad(_weighted(ops.l2_normalize, weights), x)
        unit = (weighted / weights).astype(x.dtype)  # exact: power-of-two weights
        ref.assert_ulp_within(norm, _rows_reference(ref.mp_norm, x), dtype, norm_budget)
        expected_unit = np.array(
            [list(r) for r in _rows_reference(ref.mp_l2_normalize, x)], dtype=object
        )
        ref.assert_ulp_within(unit, expected_unit, dtype, unit_budget)
        ok = ~np.any(np.isnan(x.astype(np.float64)), axis=1)
        # d||x||/dx is bounded by 1: finite for every finite row, however large or small.
        assert np.all(is_finite(norm_grad[ok])), (x, norm_grad)
        expected_grad = np.array(
            [
                _mp_l2_normalize_grad([ref.mpf(v) for v in r], [ref.mpf(w) for w in wr])
                for r, wr in zip(x, weights)
            ],
            dtype=object,
        )
        # Finite for every finite row: beyond the dtype's range (a norm near the smallest
        # normal) it saturates at the largest finite value, with the exact one's sign.
        assert np.all(is_finite(unit_grad[ok])), (x, unit_grad)
        beyond = ok[:, None] & ~_representable(expected_grad, dtype)
        largest = float(ml_dtypes.finfo(_np(dtype)).max)
        signs = np.array([float(mpmath.sign(g)) for g in expected_grad[beyond]])
        np.testing.assert_array_equal(unit_grad[beyond].astype(np.float64), signs * largest)
        assert np.all(np.isnan(unit[~ok])) and np.all(np.isnan(norm[~ok]))

    check()


def test_norms_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _norms_property(dtype)


def _clip_preserve_gradient_property(dtype):
    shape = SHAPE

    # Bounds below the smallest normal of the computing dtype (float32 for half precision,
    # whose subnormals are normal there) are drawn as 0: TF flushes a subnormal in arithmetic
    # but a select passes it on (the thorough profile drew a bound of 7.2e-40 in bfloat16,
    # returned as the bfloat16 subnormal 7.3e-40), so neither answer is the contract's.
    flushed_below = _limits("float64" if dtype == "float64" else "float32").tiny

    def normal_or_zero(v):
        return 0.0 if abs(v) < flushed_below else v

    @given(_with_nans(finite_arrays(dtype, shape), shape), st.floats(-10, 10), st.floats(0, 10))
    def check(x, lo, width):
        lo, hi = normal_or_zero(lo), normal_or_zero(normal_or_zero(lo) + width)
        bounds = np.float64(lo), np.float64(hi)  # tensors in the kernel, as in the edge test
        value, (grad,) = EAGER.value_and_grad(lambda t: ops.clip_preserve_gradient(t, *bounds), x)
        lo_d, hi_d = (float(_np(dtype).type(b)) for b in (lo, hi))  # rounded to the dtype
        expected = np.where(
            np.isnan(x.astype(np.float64)), NAN, np.clip(x.astype(np.float64), lo_d, hi_d)
        )
        np.testing.assert_array_equal(value.astype(np.float64), expected)
        np.testing.assert_array_equal(grad, np.ones_like(grad))

    check()


def test_clip_preserve_gradient_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _clip_preserve_gradient_property(dtype)


def _xlogy_property(dtype):
    budget = ref.budget_for(VALUE_BUDGET["xlogy"], dtype)
    tiny = _limits(dtype).tiny
    shape = SHAPE

    @given(
        _with_nans(finite_arrays(dtype, shape), shape),
        _with_nans(finite_arrays(dtype, shape, min_value=0.0), shape),
        _zero_mask(shape),
    )
    def check(x, y, zero):
        x = np.where(zero, np.zeros_like(x), x)
        value, (gx, gy) = EAGER.value_and_grad(ops.xlogy, x, y, wrt=(0, 1))
        ref.assert_ulp_within(value, ref.reference_array(ref.mp_xlogy, x, y), dtype, budget)
        ok = ~np.isnan(x.astype(np.float64)) & ~np.isnan(y.astype(np.float64))
        assert np.all(is_finite(gx[ok])), (x, y, gx)  # log(max(y, tiny)): always finite
        expected_gy = ref.reference_array(lambda a, b: ref.mp_xlogy_grad(a, b, tiny)[1], x, y)
        keep = ok & _representable(expected_gy, dtype)
        assert np.all(is_finite(gy[keep])), (x, y, gy)

    check()


def test_xlogy_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _xlogy_property(dtype)


# ----------------------------------------------------------------------------
# Parity with TensorFlow where it is well conditioned, and where it is not
# ----------------------------------------------------------------------------


_PARITY = [
    ("safe_divide", lambda a, b: ops.safe_divide(a, b), tf.math.divide),
    ("safe_log", lambda a, b: ops.safe_log(b), lambda a, b: tf.math.log(b)),
    ("safe_sqrt", lambda a, b: ops.safe_sqrt(b), lambda a, b: tf.math.sqrt(b)),
    ("safe_norm", lambda a, b: ops.safe_norm(a), lambda a, b: tf.norm(a, axis=-1)),
    (
        "l2_normalize",
        lambda a, b: ops.l2_normalize(a),
        lambda a, b: tf.math.l2_normalize(a, axis=-1),
    ),
    (
        "clip",
        lambda a, b: ops.clip_preserve_gradient(a, -0.5, 0.5),
        lambda a, b: tf.clip_by_value(a, -0.5, 0.5),
    ),
    ("xlogy", ops.xlogy, tf.math.xlogy),
]


def test_matches_tensorflow_where_well_conditioned():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6)).astype(np.float32)
    b = rng.uniform(0.1, 10.0, size=(4, 6)).astype(np.float32)
    for name, ours, theirs in _PARITY:
        np.testing.assert_allclose(
            ours(a, b).numpy(), theirs(a, b).numpy(), rtol=4e-7, atol=0, err_msg=name
        )


def _tf_grads(fn, *args):
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        total = tf.reduce_sum(fn(*args))
    return [g.numpy() for g in tape.gradient(total, args)]


def test_where_tensorflow_fails_we_do_not():
    """The failures the README lists, with TensorFlow's value next to ours."""
    zero = np.float32([0.0])
    # divide_no_nan hides NaN; safe_divide does not.
    assert tf.math.divide_no_nan(np.float32([NAN]), zero).numpy()[0] == 0
    assert np.isnan(ops.safe_divide(np.float32([NAN]), zero).numpy()[0])
    # xlogy: tf's gradient at (1, 0) is (-inf, inf) and at (0, 0.5) d/dx is 0 instead of log(0.5).
    theirs = _tf_grads(tf.math.xlogy, np.float32([1.0, 0.0]), np.float32([0.0, 0.5]))
    ours = _tf_grads(ops.xlogy, np.float32([1.0, 0.0]), np.float32([0.0, 0.5]))
    assert np.isinf(theirs[0][0]) and np.isinf(theirs[1][0]) and theirs[0][1] == 0
    assert np.all(np.isfinite(ours[0])) and np.all(np.isfinite(ours[1]))
    assert ours[0][1] == pytest.approx(np.log(0.5), rel=1e-6)
    # tf.norm: NaN gradient at the zero vector, inf for large entries.
    assert np.all(
        np.isnan(_tf_grads(lambda x: tf.norm(x, axis=-1), np.zeros((1, 3), np.float32))[0])
    )
    assert np.all(_tf_grads(lambda x: ops.safe_norm(x), np.zeros((1, 3), np.float32))[0] == 0)
    big = np.float32([[3e30, 4e30]])
    assert np.isinf(tf.norm(big, axis=-1).numpy()[0])
    assert ops.safe_norm(big).numpy()[0] == pytest.approx(5e30, rel=1e-7)
    # tf.math.l2_normalize clamps the squared norm at 1e-12: tiny vectors do not get unit norm.
    tiny_vector = np.float32([[3e-20, 4e-20]])
    assert np.linalg.norm(tf.math.l2_normalize(tiny_vector, axis=-1).numpy()) < 1e-6
    np.testing.assert_allclose(ops.l2_normalize(tiny_vector).numpy(), [[0.6, 0.8]], rtol=1e-6)
    # tf.sqrt: infinite gradient at 0 (NaN under a zero upstream gradient).
    assert np.isinf(_tf_grads(tf.sqrt, zero)[0][0]) and _tf_grads(ops.safe_sqrt, zero)[0][0] == 0
    # tf.clip_by_value: zero gradient outside the bounds.
    clipped = np.float32([-3.0, 3.0])
    assert np.all(_tf_grads(lambda x: tf.clip_by_value(x, -1.0, 1.0), clipped)[0] == 0)
    assert np.all(_tf_grads(lambda x: ops.clip_preserve_gradient(x, -1.0, 1.0), clipped)[0] == 1)


def test_norm_axis_and_keepdims():
    regime = EAGER
    x = np.float64([[[3.0, 0.0], [4.0, 0.0]], [[0.0, 1e300], [0.0, 1e300]]])  # (2, 2, 2)
    value = regime.run(lambda t: ops.safe_norm(t, axis=1, keepdims=True), x)
    assert value.shape == (2, 1, 2)
    np.testing.assert_allclose(value[:, 0, :], [[5.0, 0.0], [0.0, np.sqrt(2) * 1e300]], rtol=1e-15)
    _, (grad,) = regime.value_and_grad(lambda t: ops.safe_norm(t, axis=(1, 2)), x)
    np.testing.assert_allclose(
        grad, [[[0.6, 0.0], [0.8, 0.0]], [[0.0, 2**-0.5], [0.0, 2**-0.5]]], rtol=1e-15
    )
    unit = regime.run(lambda t: ops.l2_normalize(t, axis=0), x)
    np.testing.assert_allclose(unit[:, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(unit[:, 0, 1], [0.0, 1.0])


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_integer_input_is_a_type_error():
    ints = tf.constant([[1, 2]])
    calls = {
        "safe_divide": lambda: ops.safe_divide(ints, ints),
        "safe_log": lambda: ops.safe_log(ints),
        "safe_sqrt": lambda: ops.safe_sqrt(ints),
        "safe_norm": lambda: ops.safe_norm(ints),
        "l2_normalize": lambda: ops.l2_normalize(ints),
        "clip_preserve_gradient": lambda: ops.clip_preserve_gradient(ints, 0, 1),
        "xlogy": lambda: ops.xlogy(ints, tf.constant([[1.0, 2.0]])),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match="floating"):
            call()
            pytest.fail(name)


def test_mixed_dtypes_are_a_type_error():
    with pytest.raises(TypeError, match="float32 and float64"):
        ops.safe_divide(tf.constant([1.0]), tf.constant([1.0], tf.float64))
    # A Python number takes the tensor's dtype.
    assert ops.xlogy(2.0, tf.constant([1.0], tf.float16)).dtype == tf.float16


def test_clip_bounds_out_of_order_is_a_value_error():
    with pytest.raises(ValueError, match="lo"):
        ops.clip_preserve_gradient(tf.constant([1.0]), 2.0, 1.0)


@pytest.mark.parametrize(
    "op", [ops.safe_norm, ops.l2_normalize, ops.softmax, ops.log_softmax, ops.logsumexp],
    ids=lambda op: op.__name__,
)
def test_reductions_name_an_axis_the_input_does_not_have(op, regime):
    # Rule 6: TF's own reduction fails with "Invalid reduction dimension 5 ... {{node Max}}".
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"`axis` is out of range for a rank-2 `x`.*axis=5"):
        regime.run(lambda v: op(v, axis=5), x)


def test_norms_take_a_list_of_axes_as_a_tuple(regime):
    # A list reached the kernel as a tensor: TypeError in tf.squeeze.
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    norm = regime.run(lambda v: ops.safe_norm(v, axis=[0, 1]), x)
    unit = regime.run(lambda v: ops.l2_normalize(v, axis=[0, 1]), x)
    exact = np.sqrt(55.0)  # 0 + 1 + 4 + 9 + 16 + 25
    np.testing.assert_allclose(norm, exact, rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(unit, x / exact, rtol=3 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["function", "xla"])
@pytest.mark.parametrize(
    "op", [ops.safe_norm, ops.l2_normalize, ops.softmax, ops.log_softmax, ops.logsumexp],
    ids=lambda op: op.__name__,
)
def test_reductions_of_an_unknown_rank_say_the_rank_must_be_known(op, jit_compile):
    # The float64 row sums are built for a static rank; TF said "Cannot take the length of
    # shape with unknown rank" from deep inside them.
    traced = tf.function(
        op, input_signature=[tf.TensorSpec(None, tf.float32)], jit_compile=jit_compile
    )
    with pytest.raises(ValueError, match=r"`x` must have a known rank to reduce `axis=-1`"):
        traced(tf.ones((2, 3)))


def test_clip_preserve_gradient_with_a_broadcast_bound_has_xs_gradient_shape(regime):
    # A bound of shape [2, 1] broadcasts x [3] to [2, 3]: the identity gradient, summed over
    # the added axis (2 per entry), has x's shape. It had the value's shape (a [2, 3] gradient
    # in graphs, an error eagerly).
    x = np.float32([-2.0, 0.5, 3.0])
    lo = np.float32([[0.0], [-5.0]])
    value, (grad,) = regime.value_and_grad(lambda v: ops.clip_preserve_gradient(v, lo, 1.0), x)
    np.testing.assert_array_equal(value, [[0.0, 0.5, 1.0], [-2.0, 0.5, 1.0]])
    np.testing.assert_array_equal(grad, [2.0, 2.0, 2.0])


def test_numpy_scalars_are_numbers():
    # A NumPy scalar takes its partner's dtype as a Python number does (it was made a float64
    # tensor first: a dtype TypeError), and number bounds are checked (lo > hi passed silently).
    x = tf.constant([1.0, 2.0])
    np.testing.assert_array_equal(ops.safe_divide(x, np.float64(2.0)), [0.5, 1.0])
    np.testing.assert_allclose(ops.logaddexp(x, np.float64(np.log(2.0))),
                               np.log(np.exp([1.0, 2.0]) + 2.0), rtol=1e-6)
    assert ops.xlogy(np.float64(0.5), x).dtype == tf.float32
    with pytest.raises(ValueError, match="`lo` must be in"):
        ops.clip_preserve_gradient(x, np.float64(1.0), np.float64(0.0))


# ----------------------------------------------------------------------------
# Second order, subnormals, argument checks
# ----------------------------------------------------------------------------


def _penalty_gradient(fn):
    """d/dx of sum(g * g), g the gradient of sum(fn(x)): a gradient penalty (nested tapes)."""

    def penalty_gradient(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                total = tf.reduce_sum(fn(x))
            g = inner.gradient(total, x)
            penalty = tf.reduce_sum(g * g)
        return outer.gradient(penalty, x)

    return penalty_gradient


def _mp_penalty_gradient(row_gradient, row):
    """mpmath: d/dx_i of sum(g * g) for the closed-form row gradient g, and the scale of its
    terms, 2 sum_j |dg_j/dx_i| |g_j| (what the roundings are relative to)."""
    row = [ref.mpf(v) for v in row]

    def component(j):
        return lambda *r: row_gradient(list(r))[j]

    g = row_gradient(row)
    value, scale = [], []
    for i in range(len(row)):
        order = tuple(int(k == i) for k in range(len(row)))
        slopes = [mpmath.diff(component(j), row, order) for j in range(len(row))]
        value.append(2 * mpmath.fsum(s * v for s, v in zip(slopes, g)))
        scale.append(2 * mpmath.fsum(abs(s * v) for s, v in zip(slopes, g)))
    return value, scale


@pytest.mark.parametrize(
    "op, row_gradient",
    [
        (ops.safe_norm, ref.mp_l2_normalize),  # d||x||/dx = x/||x||: sum(g * g) = 1
        (ops.l2_normalize, lambda r: _mp_l2_normalize_grad(r, [mpmath.mpf(1)] * len(r))),
    ],
    ids=["safe_norm", "l2_normalize"],
)
def test_norms_second_order_is_zero_at_a_zero_row(op, row_gradient, regime):
    # sqrt(sum(u * u)) was not double-where'd: under XLA a zero row's zero upstream met
    # sqrt's infinite slope at 0 (NaN); eagerly and in tf.function it was 0.
    for dtype in ("float32", "float64"):
        x = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=dtype)
        grad = regime.wrap(_penalty_gradient(op))(tf.constant(x)).numpy()
        context = f"{dtype} {regime}"
        np.testing.assert_array_equal(grad[0], [0.0, 0.0], err_msg=context)  # the convention
        expected, scale = _mp_penalty_gradient(row_gradient, x[1])
        # A few roundings (GRAD_BUDGET) of the terms' scale, in the dtype's eps.
        eps = _limits(dtype).eps
        for actual, want, size in zip(grad[1], expected, scale):
            assert abs(ref.mpf(actual) - want) <= GRAD_BUDGET[dtype] * eps * size, (
                context, grad[1], expected
            )


def test_subnormals_count_as_zero_in_safe_sqrt_and_safe_divide(regime):
    # A bfloat16 subnormal gave 1.0 from safe_sqrt(x) and safe_divide(1, x) under a tape
    # (eagerly) and under XLA: the zero test and the computation saw it differently.
    for dtype in ("bfloat16", "float16", "float32", "float64"):
        # TF flushes subnormals of the computing dtype (float32 for half precision) to 0;
        # below its smallest normal a value counts as 0. float16's own subnormals are
        # normal in float32 and are kept.
        flushed_below = _limits("float64" if dtype == "float64" else "float32").tiny
        tiny = _limits(dtype).tiny
        x = as_dtype([4.0, flushed_below / 4, -flushed_below / 4, tiny / 2, tiny], dtype)
        seen = np.where(np.abs(x.astype(np.float64)) < flushed_below, 0.0, x.astype(np.float64))
        context = f"{dtype} {regime}"
        ones = np.ones_like(x)
        value, (grad,) = regime.value_and_grad(ops.safe_sqrt, x)
        _assert_value("safe_sqrt", value, ref.reference_array(ref.mp_sqrt, seen), dtype, context)
        _assert_grad(grad, ref.reference_array(_mp_sqrt_grad, seen), dtype, seen >= 0, context)
        quotient, (to_y,) = regime.value_and_grad(ops.safe_divide, ones, x, wrt=(1,))
        _assert_value(
            "safe_divide",
            quotient,
            ref.reference_array(lambda a, b: ref.mp_safe_divide(a, b, 0.0), ones, seen),
            dtype,
            context,
        )
        _assert_grad(
            to_y,
            ref.reference_array(lambda a, b: _mp_divide_grads(a, b)[1], ones, seen),
            dtype,
            np.ones(x.shape, bool),
            context,
        )
        # Untaped, the same answers.
        np.testing.assert_array_equal(regime.run(ops.safe_sqrt, x), value, err_msg=context)
        np.testing.assert_array_equal(regime.run(ops.safe_divide, ones, x), quotient)


@pytest.mark.parametrize("bad", ["a", None, "0"])
def test_fill_and_bounds_that_are_not_numbers_are_value_errors(bad):
    # Rule 6: an XLA compile error ("unsupported operations") or "None values not supported".
    x = tf.constant([1.0, 2.0])
    with pytest.raises(ValueError, match=rf"`fill` must be a number, got fill={bad!r}"):
        ops.safe_divide(x, tf.constant([0.0, 1.0]), fill=bad)
    with pytest.raises(ValueError, match=rf"`lo` must be a number, got lo={bad!r}"):
        ops.clip_preserve_gradient(x, bad, 1.0)
    with pytest.raises(ValueError, match=rf"`hi` must be a number, got hi={bad!r}"):
        ops.clip_preserve_gradient(x, 0.0, bad)


def test_tensor_fill_and_bounds_still_work(regime):
    x = np.float32([1.0, 2.0, -3.0])
    y = np.float32([0.0, 4.0, 0.0])
    fill = np.float32([5.0, 6.0, 7.0])
    value, (to_fill,) = regime.value_and_grad(
        lambda a, b, c: ops.safe_divide(a, b, fill=c), x, y, fill, wrt=(2,)
    )
    np.testing.assert_array_equal(value, [5.0, 0.5, 7.0])
    np.testing.assert_array_equal(to_fill, [1.0, 0.0, 1.0])
    lo, hi = np.float32([0.0, 0.0, -1.0]), np.float32(1.5)
    clipped = regime.run(lambda a, b, c: ops.clip_preserve_gradient(a, b, c), x, lo, hi)
    np.testing.assert_array_equal(clipped, [1.0, 1.5, -1.0])
    # NaN and infinite number bounds stay valid: NaN leaves x unclipped.
    np.testing.assert_array_equal(ops.clip_preserve_gradient(x, NAN, INF), x)
    assert np.isnan(ops.safe_divide(x, y, fill=NAN).numpy()[0])


def test_xlogy_second_order_at_a_tiny_y(regime):
    # XLA rewrote the backward pass's (x / y) / y as x / (y * y): y * y underflows to 0 at
    # y = 1e-30 (float32), 1e-300 (float64), and the penalty gradient was inf.
    for dtype, small in (("float32", 1e-30), ("float64", 1e-300)):
        x = np.array([small, 4.0], dtype=dtype)
        grad = regime.wrap(_penalty_gradient(lambda v: ops.xlogy(v, v)))(tf.constant(x)).numpy()
        # xlogy(x, x)' = log x + 1 (x above tiny), so d/dx (log x + 1)^2 = 2 (log x + 1) / x.
        expected = ref.reference_array(lambda v: 2 * (mpmath.log(v) + 1) / v, x)
        _assert_grad(grad, expected, dtype, np.ones(x.shape, bool), f"{dtype} {regime}")


@pytest.mark.parametrize("fn", [ops.l2_normalize, ops.safe_norm], ids=["l2_normalize", "safe_norm"])
def test_a_zero_rows_gradient_is_zero_and_keeps_a_nan_upstream(regime, fn):
    """0 for a finite upstream (the convention at the zero vector), NaN for a NaN one: the
    zero row is divided by 1 and by an infinite scale, as an infinite row is, not selected."""
    x = np.zeros((2, 3), np.float32)
    for weight, want in ((1.0, 0.0), (math.nan, math.nan)):
        shape = (2, 3) if fn is ops.l2_normalize else (2,)
        _, (grad,) = regime.value_and_grad(fn, x, weights=np.full(shape, weight, np.float32))
        np.testing.assert_array_equal(grad, np.full_like(x, want), err_msg=str(regime))
