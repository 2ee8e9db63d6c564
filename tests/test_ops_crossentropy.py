"""stableops.ops cross-entropies: binary, categorical, sparse categorical.

Values against mpmath within the stated ULP budgets, gradients against their
closed forms (with the documented clip and masking conventions), in all three
regimes with an unknown batch dimension, over explicit edge grids (p exactly
0 and 1, tiny, eps, huge and infinite logits, masked and all -inf rows, zero
probability rows, NaN) and hypothesis draws in float16, bfloat16 and float32;
parity with tf.nn / keras.ops where both are well conditioned; the documented
differences from Keras; label validation; bad-input errors.
"""

import math
import warnings

import keras
import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stableops import ops
from stableops._internal.dtypes import compute_dtype
from tests import _reference as ref
from tests._helpers import as_dtype, is_finite
from tests._regimes import Regime, edge_dtypes
from tests._strategies import FLOAT_DTYPES, finite_arrays

NAN, INF = float("nan"), float("inf")
HALF = ("float16", "bfloat16")
EAGER = Regime("eager")  # the public ops run as XLA kernels when called eagerly

# Value budgets in ULPs of the result dtype (docstrings). From probabilities,
# the categorical losses also allow (n + 2)/2 * eps * sum(z) absolute: the
# rounding of the normalizing row sum.
BUDGET = {"float32": 4, "float64": 4, "half": 1}  # categorical and sparse
BINARY_BUDGET = {"float32": 3, "float64": 3, "half": 1}
# Gradients: ULPs of the scale of their terms (they cancel where the
# prediction matches the target).
GRAD_BUDGET = {"float32": 4, "float64": 4, "half": 1}


_np = ref.to_numpy_dtype


def _limits(dtype):
    return ops.dtype_limits(dtype)


def _value_limits(dtype):
    """The clip's value bounds: the compute dtype's (float32 for half precision)."""
    return ops.dtype_limits(compute_dtype(dtype))


def _assert_scaled(actual, expected, scale, dtype, budget, context):
    """|actual - expected| <= budget ULPs of ``scale`` (+ the smallest normal: flushed results)."""
    tiny = ref.mpf(_limits(dtype).tiny)
    for a, e, s in zip(np.ravel(actual), np.ravel(expected), np.ravel(scale)):
        tolerance = budget * ref.ulp_of(s, dtype) + tiny
        ok = abs(ref.mpf(a) - e) <= tolerance if mpmath.isfinite(e) else ref.mpf(a) == e
        assert ok, f"{context}: got {a!r}, want {mpmath.nstr(e, 17)} (scale {mpmath.nstr(s, 5)})"


def _flushed_terms(num_classes, dtype):
    """The documented allowance for a row's terms ``z_i log p_i`` below the smallest normal of
    the computing dtype (float32 for half precision), which TF flushes to zero: up to that
    ``tiny`` per class (targets near ``tiny``: 1.4 of them lost in a row of four
    ``z = 1.2e-38``, found by the ``thorough`` profile)."""
    return num_classes * ref.mpf(_value_limits(dtype).tiny)


def _assert_loss_values(actual, expected, dtype, budget, context, absolute=0):
    """|actual - expected| <= budget ULPs of ``expected`` + ``absolute``; non-finite values and
    values that round beyond the range as ``ref.ulp_error`` has them."""
    for a, e in zip(np.ravel(actual), np.ravel(expected)):
        if ref.ulp_error(np.array([a]), np.array([e], dtype=object), dtype)[0] <= budget:
            continue
        tolerance = budget * ref.ulp_of(e, dtype) + absolute
        assert mpmath.isfinite(e) and abs(ref.mpf(a) - e) <= tolerance, (
            f"{context}: got {a!r}, want {mpmath.nstr(e, 17)}"
        )


def _assert_normalized_loss(actual, expected, z_sums, num_classes, dtype, context):
    """The from-probabilities budget: ULPs of the result plus the row sum's rounding, and the
    flushed terms' allowance."""
    budget = ref.budget_for(BUDGET, dtype)
    eps = mpmath.mpf(_limits(dtype).eps)
    flushed = _flushed_terms(num_classes, dtype)
    for a, e, zs in zip(actual, expected, z_sums):
        rounding = (num_classes + 2) / 2 * eps * ref.mpf(zs)
        _assert_loss_values([a], [e], dtype, budget, context, rounding + flushed)


def _rows(fn, *arrays):
    """Apply an mpmath function to rows of 2-D arrays (object array of results)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    return [fn(*[[ref.mpf(v) for v in a[i]] for a in arrays]) for i in range(arrays[0].shape[0])]


def _labels_of(one_hot):
    return np.argmax(np.asarray(one_hot, dtype=np.float64), axis=-1).astype(np.int32)


# ----------------------------------------------------------------------------
# Gradient references (closed forms with the documented conventions)
# ----------------------------------------------------------------------------


def _mp_binary_logits_grad(z, x):
    """d/dx (softplus(x) - x z) = sigmoid(x) - z (scale 1)."""
    return ref.mp_sigmoid(x) - z


def _mp_binary_probabilities_grad(z, p, dtype):
    """-z/p' + (1 - z)/(1 - p'), p' = p clipped to the input dtype's slope bounds; and its scale."""
    lim = _limits(dtype)
    q = min(max(p, ref.mpf(lim.tiny)), ref.mpf(lim.largest_below_one))
    a, b = -z / q, (1 - z) / (1 - q)
    return a + b, abs(a) + abs(b)


def _mp_categorical_logits_grad(z_row, x_row):
    """softmax(x) sum(z) - z; scale max(sum z, 1)."""
    total = mpmath.fsum(z_row)
    grads = [p * total - z for p, z in zip(ref.mp_softmax(x_row), z_row)]
    return grads, [max(total, mpmath.mpf(1))] * len(z_row)


def _mp_categorical_probabilities_grad(z_row, o_row, dtype):
    """d/do_j of -sum z_i log(o_i / S): sum(z)/S - z_j/o_j, each 1/o_i taken at max(o_i, tiny).

    tiny is the input dtype's (the straight-through clip); an all-zero row is
    not normalized, so its sum(z)/S term is absent. Returns (gradients, scales).
    """
    tiny = ref.mpf(_limits(dtype).tiny)
    total = mpmath.fsum(o_row)
    points = [max(o, tiny) for o in o_row]
    normalizing = (
        mpmath.fsum(z * o / q for z, o, q in zip(z_row, o_row, points)) / total
        if total
        else mpmath.mpf(0)
    )
    grads = [normalizing - z / q for z, q in zip(z_row, points)]
    return grads, [abs(normalizing) + abs(z / q) for z, q in zip(z_row, points)]


# ----------------------------------------------------------------------------
# Edge grids
# ----------------------------------------------------------------------------


def _binary_logits_grid(dtype):
    lim = _limits(dtype)
    far = 60.0 if dtype == "float16" else 100.0
    xs = [
        0.0,
        lim.tiny,
        -lim.tiny,
        lim.eps,
        -lim.eps,
        1.0,
        -1.0,
        10.0,
        -10.0,
        30.0,
        -30.0,
        far,
        -far,
        lim.max,
        -lim.max,
        INF,
        -INF,
        NAN,
    ]
    zs = [0.0, 1.0, 0.5, 0.25, 1 - lim.eps, NAN]
    pairs = [(z, x) for z in zs for x in xs]
    return as_dtype([p[0] for p in pairs], dtype), as_dtype([p[1] for p in pairs], dtype)


def _binary_probabilities_grid(dtype):
    lim = _limits(dtype)
    ps = [
        0.0,
        lim.tiny,
        2 * lim.tiny,
        lim.eps / 2,
        lim.eps,
        1e-3,
        0.25,
        0.5,
        0.75,
        1 - lim.eps,
        lim.largest_below_one,
        1.0,
        NAN,
    ]
    zs = [0.0, 1.0, 0.5, 0.1, NAN]
    pairs = [(z, p) for z in zs for p in ps]
    return as_dtype([p[0] for p in pairs], dtype), as_dtype([p[1] for p in pairs], dtype)


def _categorical_logits_rows(dtype):
    """(targets, logits): the cases of the docstring, 4 classes."""
    lim = _limits(dtype)
    huge = 3e4 if dtype == "float16" else 1e5  # 1e5: far beyond float16, exact in float32
    half_max = lim.max / 2
    rows = [
        ([0, 0, 1, 0], [1, 2, 3, 4]),
        ([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]),
        ([1, 0, 0, 0], [0, -30, -30, -30]),  # confident and right: 2.8e-13, not 0
        ([0, 1, 0, 0], [huge, 0, -huge, 1]),
        ([0.5, 0.5, 0, 0], [half_max, -half_max, 0, 0]),
        ([0, 0, 0, 1], [5, 5, 5, 5]),  # ties: log 4
        ([0, 0, 0, 0], [1, 2, 3, 4]),  # no target mass: 0
        ([0, 0, 1, 0], [0, -INF, 2, -INF]),  # masked where the target is 0: finite
        ([0, 1, 0, 0], [0, -INF, 2, 0]),  # the target on a masked logit: inf
        ([0, 0, 0, 0], [-INF] * 4),  # all masked, no target mass: 0
        ([1, 0, 0, 0], [-INF] * 4),  # all masked, target mass: inf
        ([1, 0, 0, 0], [INF, 0, -1, 2]),  # the target on a +inf logit: 0, never inf - inf
        ([0.5, 0.5, 0, 0], [INF, INF, 0, 0]),  # two +inf logits share the mass: log 2
        ([1, 0, 0, 0], [NAN, 0, 0, 0]),
        ([0, 0, 0, 0], [0, NAN, 0, 0]),  # NaN is not hidden by a zero target
        ([NAN, 0, 1, 0], [1, 2, 3, 4]),
    ]
    return as_dtype([r[0] for r in rows], dtype), as_dtype([r[1] for r in rows], dtype)


def _categorical_probabilities_rows(dtype):
    lim = _limits(dtype)
    rows = [
        ([0, 0, 1, 0], [0.1, 0.2, 0.3, 0.4]),
        ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]),
        ([0, 0, 1, 0], [1, 2, 3, 4]),  # not normalized: divided by 10
        ([0, 1, 0, 0], [0, 0, 0, 0]),  # all zero: -log(tiny), finite gradient
        ([0, 1, 0, 0], [0, 1, 0, 0]),  # perfect: exactly 0
        ([1, 0, 0, 0], [0, 0.5, 0.5, 0]),  # probability 0 on the target: -log(tiny)
        ([0, 0, 0, 1], [1, 0, 0, 4 * lim.tiny]),  # tiny but exact, not capped
        ([0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]),
        ([1, 0, 0, 0], [NAN, 0.5, 0.5, 0]),
    ]
    return as_dtype([r[0] for r in rows], dtype), as_dtype([r[1] for r in rows], dtype)


def test_binary_from_logits_edges(regime):
    for dtype in edge_dtypes(regime):
        z, x = _binary_logits_grid(dtype)
        fn = lambda t, o: ops.binary_crossentropy(t, o, from_logits=True)  # noqa: E731
        value, (grad,) = regime.value_and_grad(fn, z, x, wrt=(1,), unknown_batch=True)
        context = f"{dtype} {regime}"
        assert value.dtype == _np(dtype), context
        expected = ref.reference_array(ref.mp_binary_crossentropy_logits, z, x)
        ref.assert_ulp_within(
            value, expected, dtype, ref.budget_for(BINARY_BUDGET, dtype), context=context
        )
        finite = is_finite(z) & is_finite(x)
        expected_grad = ref.reference_array(_mp_binary_logits_grad, z[finite], x[finite])
        _assert_scaled(
            grad[finite],
            expected_grad,
            np.full(finite.sum(), mpmath.mpf(1)),
            dtype,
            ref.budget_for(GRAD_BUDGET, dtype),
            context,
        )


def test_binary_from_logits_gradients_at_infinite_logits(regime):
    """Both gradients, written out by the kernel: ``sigmoid(x) - z`` for the logit (its
    limit ``1 - z`` or ``-z`` at ``±inf``) and ``-x`` for the target, except 0 where an
    infinite logit agrees with its target (loss 0 there: the ``0 * inf = 0`` convention)."""
    z = np.float32([1.0, 0.0, 0.5, 0.0, 1.0, 0.5, 0.25, 1.0, 0.0])
    x = np.float32([INF, -INF, INF, INF, -INF, -INF, 3.0, -2.0, 0.0])
    _, (z_grad, x_grad) = regime.value_and_grad(
        lambda t, o: ops.binary_crossentropy(t, o, from_logits=True), z, x, wrt=(0, 1)
    )
    sigmoid = np.array([1 / (1 + math.exp(-v)) if np.isfinite(v) else float(v > 0) for v in x])
    np.testing.assert_allclose(x_grad, sigmoid - z, rtol=2e-7, atol=0)
    agrees = np.isinf(x) & (z == (x > 0))
    np.testing.assert_array_equal(z_grad, np.where(agrees, 0.0, -x))


def test_binary_from_probabilities_edges(regime):
    for dtype in edge_dtypes(regime):
        z, p = _binary_probabilities_grid(dtype)
        value, (grad,) = regime.value_and_grad(
            ops.binary_crossentropy, z, p, wrt=(1,), unknown_batch=True
        )
        context = f"{dtype} {regime}"
        assert value.dtype == _np(dtype), context
        bounds = _value_limits(dtype)
        expected = ref.reference_array(
            lambda a, b: ref.mp_binary_crossentropy_probabilities(
                a, b, bounds.tiny, bounds.largest_below_one
            ),
            z,
            p,
        )
        ref.assert_ulp_within(
            value, expected, dtype, ref.budget_for(BINARY_BUDGET, dtype), context=context
        )
        finite = is_finite(z) & is_finite(p)
        assert np.all(is_finite(value[finite])) and np.all(is_finite(grad[finite])), context
        pairs = [
            _mp_binary_probabilities_grad(ref.mpf(a), ref.mpf(b), dtype)
            for a, b in zip(z[finite], p[finite])
        ]
        _assert_scaled(
            grad[finite],
            [g for g, _ in pairs],
            [s for _, s in pairs],
            dtype,
            ref.budget_for(GRAD_BUDGET, dtype),
            context,
        )
        # Confidently wrong: the gradient is the largest the dtype holds, not 0.
        lim = _limits(dtype)
        assert np.all(grad[(p == 0) & (z == 1)] == _np(dtype).type(-1 / lim.tiny)), context
        assert np.all(grad[(p == 1) & (z == 0)] == _np(dtype).type(2 / lim.eps)), context


def test_categorical_from_logits_edges(regime):
    for dtype in edge_dtypes(regime):
        z, x = _categorical_logits_rows(dtype)
        context = f"{dtype} {regime}"
        fn = lambda t, o: ops.categorical_crossentropy(t, o, from_logits=True)  # noqa: E731
        value, (grad,) = regime.value_and_grad(fn, z, x, wrt=(1,), unknown_batch=True)
        assert value.dtype == _np(dtype) and value.shape == (z.shape[0],), context
        expected = np.array(_rows(ref.mp_categorical_crossentropy_logits, z, x), dtype=object)
        ref.assert_ulp_within(
            value, expected, dtype, ref.budget_for(BUDGET, dtype), context=context
        )
        finite = np.all(is_finite(z) & is_finite(x), axis=1)
        for row in np.flatnonzero(finite):
            grads, scales = _mp_categorical_logits_grad(
                *[[ref.mpf(v) for v in a[row]] for a in (z, x)]
            )
            _assert_scaled(
                grad[row],
                grads,
                scales,
                dtype,
                ref.budget_for(GRAD_BUDGET, dtype),
                f"{context} row {row}",
            )
        no_nan = ~np.any(np.isnan(z.astype(np.float64)) | np.isnan(x.astype(np.float64)), axis=1)
        assert np.all(is_finite(grad[no_nan])), context  # -inf logits included
        # The sparse loss (labels: each row's largest target) equals the dense
        # loss against the one-hot of its label, in value and gradient.
        labels = _labels_of(np.nan_to_num(z.astype(np.float64), nan=-1.0))
        one_hot = np.eye(4)[labels]
        sparse = lambda t, o: ops.sparse_categorical_crossentropy(t, o, from_logits=True)  # noqa: E731
        s_value, (s_grad,) = regime.value_and_grad(sparse, labels, x, wrt=(1,), unknown_batch=True)
        s_expected = np.array(
            _rows(ref.mp_categorical_crossentropy_logits, one_hot, x), dtype=object
        )
        ref.assert_ulp_within(
            s_value, s_expected, dtype, ref.budget_for(BUDGET, dtype), context=f"sparse {context}"
        )
        finite_x = np.all(is_finite(x), axis=1)
        for row in np.flatnonzero(finite_x):
            grads, scales = _mp_categorical_logits_grad(
                *[[ref.mpf(v) for v in a[row]] for a in (one_hot, x)]
            )
            _assert_scaled(
                s_grad[row],
                grads,
                scales,
                dtype,
                ref.budget_for(GRAD_BUDGET, dtype),
                f"sparse {context}",
            )
        # Rows with -inf logits too (a label on one: loss inf, no gradient for
        # the row): the sparse gradient is the dense one against the one-hot,
        # to the rounding of entries <= 1 (an eps of the dtype).
        _, (one_hot_grad,) = regime.value_and_grad(
            fn, as_dtype(one_hot, dtype), x, wrt=(1,), unknown_batch=True
        )
        np.testing.assert_allclose(
            s_grad[no_nan].astype(np.float64),
            one_hot_grad[no_nan].astype(np.float64),
            rtol=0,
            atol=_limits(dtype).eps,
            err_msg=context,
        )


def test_a_dead_rows_logit_gradient_is_zero_and_keeps_a_nan_upstream(regime):
    """A row whose loss is inf (a target on a -inf logit, or a target mass past the float
    range) is a constant: its logits get gradient 0, and a NaN upstream stays NaN. The row's
    upstream is selected per row (``_upstream_unless``), not the gradient along the row."""
    dense = lambda t, o: ops.categorical_crossentropy(t, o, from_logits=True)  # noqa: E731
    sparse = lambda t, o: ops.sparse_categorical_crossentropy(t, o, from_logits=True)  # noqa: E731
    logits = np.float32([[-np.inf, 0.0], [0.0, 1.0]])
    cases = [
        (dense, np.float32([[1.0, 0.0], [3e38, 3e38]])),  # 3e38 + 3e38 overflows
        (sparse, np.int32([0])),  # the label on the -inf logit
    ]
    for fn, target in cases:
        x = logits[: len(target)]
        for weight, want in ((1.0, 0.0), (math.nan, math.nan)):
            value, (grad,) = regime.value_and_grad(
                fn, target, x, wrt=(1,), weights=[weight] * len(target)
            )
            assert np.all(value == np.inf), (regime, value)
            np.testing.assert_array_equal(grad, np.full_like(x, want), err_msg=str(regime))


def test_a_row_with_a_negative_entry_has_no_top_entry(regime):
    # [2, -1] sums to 1: p / S = [2, -1], clipped to [tiny, 1], so the loss of class 0 is
    # -log(1) = 0. The top entry's form (-log1p(rest / p), rest = -1) would give log 2.
    target, output = np.float32([[1.0, 0.0]]), np.float32([[2.0, -1.0]])
    value = regime.run(ops.categorical_crossentropy, target, output)
    assert value[0] == 0.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_top_probability_a_sliver_below_its_row_sum_keeps_its_loss(regime, dtype):
    # The label's probability holds all but a sliver of its row's sum (the loss is 4.8e-8,
    # 3e-9, 4e-8): p / sum rounds within an ULP of 1, and -log(p / sum) came out 0 or an ULP
    # of 1. Dense and sparse, against mpmath.
    p = np.array(
        [[1.48e-26, 1.25e-38, 2.86e-13, 1.36e-20], [1.0, 1e-9, 2e-9, 0.0], [0.25, 1e-8, 0.0, 0.0]],
        dtype,
    )
    labels = np.int32([2, 0, 0])
    z = np.eye(4, dtype=dtype)[labels]
    low = np.finfo(dtype).tiny
    expected = ref.reference_rows(
        lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, low), z, p
    )
    dense = regime.run(ops.categorical_crossentropy, z, p)
    sparse = regime.run(ops.sparse_categorical_crossentropy, labels, p)
    ref.assert_ulp_within(dense, expected, dtype, 4, context="dense")
    ref.assert_ulp_within(sparse, expected, dtype, 4, context="sparse")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_summing_past_the_float_range_keep_their_fractions(regime, dtype):
    # A row of probabilities whose sum overflows (two entries of 2e38 in float32) was
    # normalized by inf: each fraction 0, clipped, and the loss -log(tiny) = 87.3 for ln 2.
    # Such rows are shrunk by a power of two first. Dense and sparse, value and gradient,
    # against mpmath (the gradient -z/p + sum(z)/S in closed form).
    big = np.finfo(dtype).max / 1.7
    p = np.array([[big, big, 0.0], [big, big, big / 2], [0.25, 0.5, 0.25]], dtype)
    labels = np.int32([0, 2, 1])
    z = np.eye(3, dtype=dtype)[labels]
    low = np.finfo(dtype).tiny
    expected = ref.reference_rows(
        lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, low), z, p
    )
    dense, (gradient,) = regime.value_and_grad(ops.categorical_crossentropy, z, p, wrt=(1,))
    sparse = regime.run(ops.sparse_categorical_crossentropy, labels, p)
    ref.assert_ulp_within(dense, expected, dtype, 4, context="dense")
    ref.assert_ulp_within(sparse, expected, dtype, 4, context="sparse")
    for row in range(3):
        total = sum(mpmath.mpf(float(v)) for v in p[row])
        for j in (0, 1):  # the nonzero entries
            want = -z[row, j] / mpmath.mpf(float(p[row, j])) + 1 / total
            ref.assert_ulp_within([gradient[row, j]], [want], dtype, 4, context="gradient")


def test_targets_near_the_smallest_normal_within_the_flush_allowance(regime):
    # Found by the `thorough` profile: targets of 1.2e-38 (float32's smallest normal) make
    # each z_i log p_i with |log p_i| < 1 a subnormal, which TF flushes to zero: 1.4-1.5 tiny
    # lost from losses of 6.6e-38 and 2.1e-36 (3e6 ULP of them), within the documented
    # allowance of tiny per class. Anything more lost fails here.
    tiny = np.finfo(np.float32).tiny
    z = np.full((1, 4), tiny, np.float32)
    logits = np.float32([[0.5, 0.0, 0.0, 0.0]])
    expected = _rows(ref.mp_categorical_crossentropy_logits, z, logits)
    value = regime.run(lambda t, x: ops.categorical_crossentropy(t, x, from_logits=True),
                       z, logits)
    _assert_loss_values(value, expected, "float32", 4, "from logits",
                        _flushed_terms(4, "float32"))
    p = np.float32([[1.0, 1.0, 0.0, 0.0]])
    expected = _rows(lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, tiny), z, p)
    value = regime.run(ops.categorical_crossentropy, z, p)
    _assert_normalized_loss(value, expected, [4 * float(tiny)], 4, "float32", "probabilities")


def test_categorical_from_probabilities_edges(regime):
    for dtype in edge_dtypes(regime):
        z, p = _categorical_probabilities_rows(dtype)
        context = f"{dtype} {regime}"
        value, (grad,) = regime.value_and_grad(
            ops.categorical_crossentropy, z, p, wrt=(1,), unknown_batch=True
        )
        assert value.dtype == _np(dtype), context
        low = _value_limits(dtype).tiny
        expected = _rows(
            lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, low), z, p
        )
        z_sums = np.nan_to_num(z.astype(np.float64).sum(axis=1))
        _assert_normalized_loss(value, expected, z_sums, 4, dtype, context)
        assert value[4] == 0, context  # a perfect prediction costs exactly 0
        finite = np.all(is_finite(z) & is_finite(p), axis=1)
        assert np.all(is_finite(value[finite])) and np.all(is_finite(grad[finite])), context
        for row in np.flatnonzero(finite):
            grads, scales = _mp_categorical_probabilities_grad(
                *[[ref.mpf(v) for v in a[row]] for a in (z, p)], dtype
            )
            _assert_scaled(
                grad[row],
                grads,
                scales,
                dtype,
                ref.budget_for(GRAD_BUDGET, dtype),
                f"{context} row {row}",
            )
        # The sparse loss (labels: each row's largest target) equals the dense
        # loss against the one-hot of its label, in value and gradient.
        labels = _labels_of(np.nan_to_num(z.astype(np.float64), nan=-1.0))
        one_hot = np.eye(4)[labels]
        s_value, (s_grad,) = regime.value_and_grad(
            ops.sparse_categorical_crossentropy, labels, p, wrt=(1,), unknown_batch=True
        )
        s_expected = _rows(
            lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, low), one_hot, p
        )
        _assert_normalized_loss(
            s_value, s_expected, np.ones(len(labels)), 4, dtype, f"sparse {context}"
        )
        for row in np.flatnonzero(np.all(is_finite(p), axis=1)):
            grads, scales = _mp_categorical_probabilities_grad(
                *[[ref.mpf(v) for v in a[row]] for a in (one_hot, p)], dtype
            )
            _assert_scaled(
                s_grad[row],
                grads,
                scales,
                dtype,
                ref.budget_for(GRAD_BUDGET, dtype),
                f"sparse {context}",
            )


# ----------------------------------------------------------------------------
# Sparse labels: validation outside the kernel, NaN inside XLA
# ----------------------------------------------------------------------------


def test_sparse_bad_label_raises_or_is_nan(regime):
    for from_logits in (True, False):
        _check_bad_labels(regime, from_logits)


def _check_bad_labels(regime, from_logits):
    probabilities = np.float32([[0.2, 0.3, 0.5]] * 4)
    fn = lambda t, o: ops.sparse_categorical_crossentropy(t, o, from_logits=from_logits)  # noqa: E731
    for labels, bad in (
        (np.int64([0, 7, -1, 1]), "7"),
        (np.int32([0, 1, -1, 2]), "-1"),
        (np.float32([0, 1, 2, 1.5]), "1.5"),
    ):
        if regime.name == "xla" and labels.dtype == np.int32:
            continue  # one integer case is enough to compile
        if regime.name == "xla":
            # Asserts are dropped under XLA: the bad example is NaN (value and
            # gradient), never the finite loss of some other class.
            value, (grad,) = regime.value_and_grad(
                fn, labels, probabilities, wrt=(1,), unknown_batch=True
            )
            bad_rows = ~np.isin(labels, [0, 1, 2])
            assert np.all(np.isnan(value[bad_rows])) and np.all(is_finite(value[~bad_rows])), (
                labels,
                value,
            )
            assert np.all(np.isnan(grad[bad_rows])) and np.all(is_finite(grad[~bad_rows])), (
                labels,
                grad,
            )
        else:
            with pytest.raises(tf.errors.InvalidArgumentError) as error:
                regime.run(fn, labels, probabilities, unknown_batch=True)
            message = str(error.value)
            assert f"label {bad} is" in message or f"[{bad}]" in message, message
            assert "3 classes" in message or "[3]" in message, message


def test_sparse_labels_are_never_cast_through_a_float():
    # 2**24 + 1 is not a float32: a label cast through float32 would pick class 2**24.
    label = 2**24 + 1
    logits = np.full((1, label + 1), -np.inf, np.float32)  # masked: the row sum stays exact
    logits[0, label - 1], logits[0, label] = 0.0, 5.0
    loss = ops.sparse_categorical_crossentropy(np.int64([label]), logits, from_logits=True)
    expected = np.array(
        [mpmath.log1p(mpmath.exp(-5))], dtype=object
    )  # class 2**24 would give 5.0067
    ref.assert_ulp_within(loss.numpy(), expected, "float32", 4)


@pytest.mark.parametrize(
    "labels, num_classes",
    [
        (np.uint8([3, 255]), 256),  # 256 in uint8 is 0: every label was out of range
        (np.int8([3, 100]), 200),  # 200 in int8 is -56
        (np.array([256.0, 3.0], ml_dtypes.bfloat16), 257),  # 257 in bfloat16 is 256
    ],
    ids=["uint8", "int8", "bfloat16"],
)
def test_sparse_labels_of_a_narrow_dtype_against_many_classes(regime, labels, num_classes):
    """The labels' range was checked in their own dtype, where the class count wraps or
    rounds: an error eagerly, NaN under XLA, for labels that are valid. Zero logits: every
    row's loss is log(num_classes)."""
    for from_logits, output in ((True, 0.0), (False, 1.0 / num_classes)):
        outputs = np.full((2, num_classes), output, np.float32)
        loss = regime.run(
            lambda o, labels=tf.constant(labels), from_logits=from_logits: (
                ops.sparse_categorical_crossentropy(labels, o, from_logits=from_logits)
            ),
            tf.constant(outputs),
        )
        # 1/num_classes is rounded to float32: its own log is the reference.
        want = mpmath.log(num_classes) if from_logits else -mpmath.log(ref.mpf(outputs[0, 0]))
        ref.assert_ulp_within(loss, [want, want], "float32", 4)


def test_sparse_accepts_integral_float_labels_and_trailing_axis():
    logits = np.float32([[1.0, 2.0, 3.0], [0.0, 0.0, 9.0]])
    from_int = ops.sparse_categorical_crossentropy(
        np.int32([2, 0]), logits, from_logits=True
    ).numpy()
    from_float = ops.sparse_categorical_crossentropy(
        np.float32([2.0, 0.0]), logits, from_logits=True
    ).numpy()
    from_column = ops.sparse_categorical_crossentropy(
        np.int32([[2], [0]]), logits, from_logits=True
    ).numpy()
    np.testing.assert_array_equal(from_int, from_float)
    np.testing.assert_array_equal(from_int, from_column)


# ----------------------------------------------------------------------------
# Hypothesis: finite in -> finite out, accuracy, NaN propagation
# ----------------------------------------------------------------------------


def _nan_mask(shape):
    return hnp.arrays(np.bool_, shape, elements=st.integers(0, 7).map(lambda i: i == 0))  # ~1 in 8


def _put_nan(values, mask):
    return np.where(mask, np.array(NAN, values.dtype), values)


def _binary_from_logits_property(dtype):
    shape = (8,)

    @given(finite_arrays(dtype, shape, 0.0, 1.0), finite_arrays(dtype, shape), _nan_mask(shape))
    def check(z, x, nan):
        x = _put_nan(x, nan)
        fn = lambda t, o: ops.binary_crossentropy(t, o, from_logits=True)  # noqa: E731
        value, (grad,) = EAGER.value_and_grad(fn, z, x, wrt=(1,))
        ref.assert_ulp_within(
            value,
            ref.reference_array(ref.mp_binary_crossentropy_logits, z, x),
            dtype,
            ref.budget_for(BINARY_BUDGET, dtype),
        )
        assert np.all(is_finite(grad[~nan])) and np.all(np.isnan(grad[nan])), (z, x, grad)
        expected = ref.reference_array(_mp_binary_logits_grad, z[~nan], x[~nan])
        _assert_scaled(
            grad[~nan],
            expected,
            np.full(expected.shape, mpmath.mpf(1)),
            dtype,
            ref.budget_for(GRAD_BUDGET, dtype),
            "gradient",
        )

    check()


def test_binary_from_logits_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _binary_from_logits_property(dtype)


def _binary_from_probabilities_property(dtype):
    shape = (8,)
    bounds = _value_limits(dtype)

    @given(
        finite_arrays(dtype, shape, 0.0, 1.0),
        finite_arrays(dtype, shape, 0.0, 1.0),
        _nan_mask(shape),
    )
    def check(z, p, nan):
        p = _put_nan(p, nan)
        value, (grad,) = EAGER.value_and_grad(ops.binary_crossentropy, z, p, wrt=(1,))
        expected = ref.reference_array(
            lambda a, b: ref.mp_binary_crossentropy_probabilities(
                a, b, bounds.tiny, bounds.largest_below_one
            ),
            z,
            p,
        )
        ref.assert_ulp_within(value, expected, dtype, ref.budget_for(BINARY_BUDGET, dtype))
        # Finite for every probability, 0 and 1 included: the clip's gradient is finite too.
        assert np.all(is_finite(grad[~nan])) and np.all(np.isnan(grad[nan])), (z, p, grad)

    check()


def test_binary_from_probabilities_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _binary_from_probabilities_property(dtype)


def _categorical_from_logits_property(dtype):
    shape = _categorical_logits_rows("float32")[0].shape  # the edge grid's: its kernels are reused
    # log_softmax(x) reaches min(x) - max(x), beyond the range when the logits
    # span more than it (documented: then the loss overflows); half the range
    # keeps every log-probability finite.
    half = float(ml_dtypes.finfo(_np(dtype)).max) / 2

    @given(
        finite_arrays(dtype, shape, 0.0, 1.0),
        finite_arrays(dtype, shape, -half, half),
        hnp.arrays(np.int32, shape[:1], elements=st.integers(0, shape[1] - 1)),
        _nan_mask(shape),
    )
    def check(z, x, labels, nan):
        x = _put_nan(x, nan)
        nan_rows = np.any(nan, axis=1)
        fn = lambda t, o: ops.categorical_crossentropy(t, o, from_logits=True)  # noqa: E731
        value, (grad,) = EAGER.value_and_grad(fn, z, x, wrt=(1,))
        _assert_loss_values(
            value,
            _rows(ref.mp_categorical_crossentropy_logits, z, x),
            dtype,
            ref.budget_for(BUDGET, dtype),
            "from logits",
            _flushed_terms(shape[1], dtype),
        )
        assert np.all(is_finite(grad[~nan_rows])) and np.all(np.isnan(grad[nan_rows])), (z, x, grad)
        sparse = lambda t, o: ops.sparse_categorical_crossentropy(t, o, from_logits=True)  # noqa: E731
        s_value, (s_grad,) = EAGER.value_and_grad(sparse, labels, x, wrt=(1,))
        one_hot = np.eye(shape[1])[labels]
        ref.assert_ulp_within(
            s_value,
            np.array(_rows(ref.mp_categorical_crossentropy_logits, one_hot, x), dtype=object),
            dtype,
            ref.budget_for(BUDGET, dtype),
        )
        assert np.all(is_finite(s_grad[~nan_rows])), (labels, x, s_grad)

    check()


def test_categorical_from_logits_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _categorical_from_logits_property(dtype)


def _categorical_from_probabilities_property(dtype):
    shape = _categorical_probabilities_rows("float32")[
        0
    ].shape  # the edge grid's: its kernels are reused
    rows, classes = shape
    low = _value_limits(dtype).tiny

    @given(
        finite_arrays(dtype, shape, 0.0, 1.0),
        finite_arrays(dtype, shape, 0.0, 1.0),
        hnp.arrays(np.int32, (rows,), elements=st.integers(0, classes - 1)),
        hnp.arrays(np.bool_, (rows,), elements=st.integers(0, 3).map(lambda i: i == 0)),
    )
    def check(z, p, labels, zero_row):
        p = np.where(zero_row[:, None], np.zeros_like(p), p)  # all-zero rows included
        value, (grad,) = EAGER.value_and_grad(ops.categorical_crossentropy, z, p, wrt=(1,))
        expected = _rows(
            lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, low), z, p
        )
        _assert_normalized_loss(
            value, expected, z.astype(np.float64).sum(axis=1), classes, dtype, "dense"
        )
        assert np.all(is_finite(value)) and np.all(is_finite(grad)), (z, p, grad)
        s_value, (s_grad,) = EAGER.value_and_grad(
            ops.sparse_categorical_crossentropy, labels, p, wrt=(1,)
        )
        one_hot = np.eye(classes)[labels]
        expected = _rows(
            lambda a, b: ref.mp_categorical_crossentropy_probabilities(a, b, low), one_hot, p
        )
        _assert_normalized_loss(s_value, expected, np.ones(rows), classes, dtype, "sparse")
        assert np.all(is_finite(s_value)) and np.all(is_finite(s_grad)), (labels, p, s_grad)

    check()


def test_categorical_from_probabilities_property():
    # One test over the dtypes (each pytest test costs a Keras session reset).
    for dtype in FLOAT_DTYPES:
        _categorical_from_probabilities_property(dtype)


# ----------------------------------------------------------------------------
# Parity with tf.nn and keras.ops where both are well conditioned
# ----------------------------------------------------------------------------


def _parity_cases():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(6, 5)).astype(np.float32)
    soft = rng.dirichlet(np.ones(5), size=6).astype(np.float32)
    labels = rng.integers(0, 5, size=6).astype(np.int32)
    z = rng.uniform(size=(6, 5)).astype(np.float32)
    # Probabilities inside Keras's clip [1e-7, 1 - 1e-7] and normalized rows.
    probabilities = rng.dirichlet(np.ones(5) * 2, size=6).clip(1e-3, None).astype(np.float32)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    sigmoid = (1 / (1 + np.exp(-logits.astype(np.float64)))).clip(1e-3, 1 - 1e-3).astype(np.float32)
    return [
        (
            "binary logits",
            lambda: ops.binary_crossentropy(z, logits, from_logits=True),
            lambda: tf.nn.sigmoid_cross_entropy_with_logits(labels=z, logits=logits),
        ),
        (
            "binary probabilities",
            lambda: ops.binary_crossentropy(z, sigmoid),
            lambda: keras.ops.binary_crossentropy(z, sigmoid),
        ),
        (
            "categorical logits",
            lambda: ops.categorical_crossentropy(soft, logits, from_logits=True),
            lambda: tf.nn.softmax_cross_entropy_with_logits(labels=soft, logits=logits),
        ),
        (
            "categorical probabilities",
            lambda: ops.categorical_crossentropy(soft, probabilities),
            lambda: keras.ops.categorical_crossentropy(soft, probabilities),
        ),
        (
            "sparse logits",
            lambda: ops.sparse_categorical_crossentropy(labels, logits, from_logits=True),
            lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits),
        ),
        (
            "sparse probabilities",
            lambda: ops.sparse_categorical_crossentropy(labels, probabilities),
            lambda: keras.ops.sparse_categorical_crossentropy(labels, probabilities),
        ),
    ]


def test_matches_tf_nn_and_keras_where_well_conditioned():
    for name, ours, theirs in _parity_cases():
        np.testing.assert_allclose(
            ours().numpy(), theirs().numpy(), rtol=2e-6, atol=2e-7, err_msg=name
        )


def _value_and_grad(fn, target, output):
    """Eager value and gradient with respect to ``output``."""
    value, (grad,) = Regime("eager").value_and_grad(fn, target, output, wrt=(1,))
    return value, grad


def test_documented_differences_from_keras():
    """Every Keras-vs-stableops line of the README, with both values."""
    K = keras.ops
    one, zero = np.float32([1.0]), np.float32([0.0])
    # p = 0 for a positive target: Keras caps the loss at 16.1 and its gradient is 0.
    k_value, k_grad = _value_and_grad(K.binary_crossentropy, one, zero)
    o_value, o_grad = _value_and_grad(ops.binary_crossentropy, one, zero)
    assert k_value[0] == pytest.approx(16.118, abs=1e-3) and k_grad[0] == 0
    assert o_value[0] == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)
    assert o_grad[0] == -1 / np.finfo(np.float32).tiny
    # Probabilities below 1e-7 keep their exact loss.
    assert K.binary_crossentropy(one, np.float32([1e-10])).numpy()[0] == pytest.approx(
        16.118, abs=1e-3
    )
    assert ops.binary_crossentropy(one, np.float32([1e-10])).numpy()[0] == pytest.approx(
        -np.log(1e-10), rel=1e-6
    )
    # float16: Keras's 1 - 1e-7 rounds to 1, so p = 1 for a negative target is inf.
    assert np.isinf(K.binary_crossentropy(np.float16([0]), np.float16([1])).numpy()[0])
    assert ops.binary_crossentropy(np.float16([0]), np.float16([1])).numpy()[0] == pytest.approx(
        24 * np.log(2), rel=1e-3
    )
    # An infinite logit that agrees with its target: Keras NaN, ours 0.
    assert np.isnan(K.binary_crossentropy(one, np.float32([INF]), from_logits=True).numpy()[0])
    assert ops.binary_crossentropy(one, np.float32([INF]), from_logits=True).numpy()[0] == 0
    # An all-zero probability row: Keras NaN (value and gradient), ours -log(tiny).
    target, row = np.float32([[0, 1]]), np.float32([[0, 0]])
    k_value, k_grad = _value_and_grad(K.categorical_crossentropy, target, row)
    o_value, o_grad = _value_and_grad(ops.categorical_crossentropy, target, row)
    assert np.isnan(k_value[0]) and np.all(np.isnan(k_grad))
    assert o_value[0] == pytest.approx(87.3365, rel=1e-5) and np.all(np.isfinite(o_grad))
    # A perfect prediction: Keras 1.19e-7 (its clip at 1 - 1e-7), ours 0.
    assert K.categorical_crossentropy(target, target).numpy()[0] == pytest.approx(1.1920929e-07)
    assert ops.categorical_crossentropy(target, target).numpy()[0] == 0
    # A masked -inf logit where the target is 0: Keras NaN, ours finite.
    masked_target, masked = np.float32([[0, 0, 1]]), np.float32([[0, -INF, 2]])
    assert np.isnan(K.categorical_crossentropy(masked_target, masked, from_logits=True).numpy()[0])
    assert ops.categorical_crossentropy(masked_target, masked, from_logits=True).numpy()[
        0
    ] == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
    # A confident correct prediction: Keras 0, ours the exact 9.36e-14.
    confident = np.float32([[0, -30]])
    assert (
        K.categorical_crossentropy(np.float32([[1, 0]]), confident, from_logits=True).numpy()[0]
        == 0
    )
    assert ops.categorical_crossentropy(np.float32([[1, 0]]), confident, from_logits=True).numpy()[
        0
    ] == pytest.approx(float(mpmath.log1p(mpmath.exp(-30))), rel=1e-6)
    # A float label 1.5: Keras truncates it to class 1, ours refuses it.
    logits = np.float32([[1, 2, 3]])
    assert K.sparse_categorical_crossentropy(np.float32([1.5]), logits, from_logits=True).numpy()[
        0
    ] == pytest.approx(
        K.sparse_categorical_crossentropy(np.int32([1]), logits, from_logits=True).numpy()[0]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="label 1.5"):
        ops.sparse_categorical_crossentropy(np.float32([1.5]), logits, from_logits=True)


# ----------------------------------------------------------------------------
# Keras's logits behind sigmoid/softmax outputs
# ----------------------------------------------------------------------------


def test_uses_the_logits_behind_keras_activations():
    logits = np.float32([[-200.0, 50.0, 0.0]])
    probabilities = keras.activations.softmax(tf.constant(logits))  # rounds to [0, 1, 0]
    target = np.float32([[1.0, 0.0, 0.0]])
    expected = ops.categorical_crossentropy(target, logits, from_logits=True).numpy()
    assert expected[0] == pytest.approx(250.0, rel=1e-6)
    np.testing.assert_array_equal(
        ops.categorical_crossentropy(target, probabilities).numpy(), expected
    )
    np.testing.assert_array_equal(
        ops.sparse_categorical_crossentropy(np.int32([0]), probabilities).numpy(), expected
    )
    sigmoid = keras.activations.sigmoid(tf.constant([-200.0]))
    assert ops.binary_crossentropy(np.float32([1.0]), sigmoid).numpy()[0] == pytest.approx(200.0)

    @tf.function
    def in_a_graph(x):  # a Sigmoid/Softmax op in a graph is recognized as Keras does
        return ops.binary_crossentropy(
            tf.ones_like(x), tf.nn.sigmoid(x)
        ), ops.categorical_crossentropy(tf.constant(target), tf.nn.softmax(tf.constant(logits)))

    binary, categorical = in_a_graph(tf.constant([-200.0]))
    assert binary.numpy()[0] == pytest.approx(200.0)
    assert categorical.numpy()[0] == pytest.approx(250.0, rel=1e-6)
    with pytest.warns(UserWarning, match="from_logits=True"):
        ops.binary_crossentropy(np.float32([1.0]), sigmoid, from_logits=True)


def test_plain_tensors_are_not_mistaken_for_activations():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = ops.binary_crossentropy(np.float32([1.0]), np.float32([0.5])).numpy()
    assert value[0] == pytest.approx(np.log(2), rel=1e-6)


# ----------------------------------------------------------------------------
# Half precision, wide rows, axes
# ----------------------------------------------------------------------------


def test_float16_over_100000_classes_does_not_overflow():
    num_classes = 100_000  # a float16 sum of 100,000 ones is inf
    target = np.zeros((2, num_classes), np.float16)
    target[:, 7] = 1
    logits = np.full((2, num_classes), 60000, np.float16)
    probabilities = np.full((2, num_classes), 1e-4, np.float16)
    expected = np.array([mpmath.log(num_classes)] * 2, dtype=object)
    for name, fn, output in [
        ("logits", lambda t, o: ops.categorical_crossentropy(t, o, from_logits=True), logits),
        ("probabilities", ops.categorical_crossentropy, probabilities),
    ]:
        value, grad = _value_and_grad(fn, target, output)
        assert value.dtype == np.float16
        ref.assert_ulp_within(value, expected, "float16", 1, context=name)
        assert np.all(np.isfinite(grad.astype(np.float32))), name


def test_class_axis():
    regime = EAGER
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4)).astype(np.float32)  # classes on axis 1
    labels = np.int32([[0, 2, 1, 1], [2, 2, 0, 1]])
    one_hot = np.moveaxis(np.eye(3, dtype=np.float32)[labels], -1, 1)
    dense = regime.run(
        lambda t, o: ops.categorical_crossentropy(t, o, from_logits=True, axis=1), one_hot, logits
    )
    sparse = regime.run(
        lambda t, o: ops.sparse_categorical_crossentropy(t, o, from_logits=True, axis=1),
        labels,
        logits,
    )
    moved = np.moveaxis(logits, 1, -1).reshape(-1, 3)
    expected = np.array(
        _rows(ref.mp_categorical_crossentropy_logits, np.eye(3)[labels.ravel()], moved),
        dtype=object,
    )
    ref.assert_ulp_within(dense.ravel(), expected, "float32", 4)
    ref.assert_ulp_within(sparse.ravel(), expected, "float32", 4)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    for fn in (ops.binary_crossentropy, ops.categorical_crossentropy):
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
            fn(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 4\)"):
        ops.sparse_categorical_crossentropy(np.int32([0, 1, 2]), np.zeros((2, 4), np.float32))


def test_integer_predictions_are_a_type_error():
    ints = np.int32([[0, 1]])
    for call in (
        lambda: ops.binary_crossentropy(ints, ints),
        lambda: ops.categorical_crossentropy(ints, ints, from_logits=True),
        lambda: ops.sparse_categorical_crossentropy(np.int32([1]), ints),
    ):
        with pytest.raises(TypeError, match="`output` must be a floating"):
            call()
    with pytest.raises(TypeError, match="integer class labels"):
        ops.sparse_categorical_crossentropy(tf.constant(["a"]), np.float32([[0.5, 0.5]]))


def test_bad_axis_is_an_error():
    with pytest.raises(ValueError, match="axis"):
        ops.categorical_crossentropy(
            np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), axis=2
        )
    with pytest.raises(TypeError, match="axis"):
        ops.sparse_categorical_crossentropy(np.int32([0]), np.zeros((1, 3), np.float32), axis=1.0)


def test_half_precision_results_keep_the_input_dtype():
    for dtype in HALF:
        z = as_dtype([[0, 1]], dtype)
        assert ops.binary_crossentropy(z, as_dtype([[0.5, 0.5]], dtype)).dtype == tf.as_dtype(dtype)
        assert ops.categorical_crossentropy(z, as_dtype([[0.5, 0.5]], dtype)).dtype == tf.as_dtype(
            dtype
        )
        assert ops.sparse_categorical_crossentropy(
            np.int32([1]), as_dtype([[0.5, 0.5]], dtype)
        ).dtype == tf.as_dtype(dtype)
        largest = float(ml_dtypes.finfo(_np(dtype)).max)
        assert (
            ops.binary_crossentropy(z, as_dtype([[largest, -largest]], dtype), from_logits=True)
            .numpy()
            .max()
            <= largest
        )


@pytest.mark.parametrize(
    "op", [ops.binary_crossentropy, ops.categorical_crossentropy], ids=["binary", "categorical"]
)
@pytest.mark.parametrize(
    "target", [np.complex64([[1 + 5j, 0]]), np.array([["1", "0"]])], ids=["complex", "string"]
)
def test_a_target_of_complex_numbers_or_strings_is_a_type_error(op, target):
    # Complex targets lost their imaginary part silently; strings failed inside XLA.
    with pytest.raises(TypeError, match="`target` must hold real numbers"):
        op(target, np.float32([[0.5, 0.5]]))
