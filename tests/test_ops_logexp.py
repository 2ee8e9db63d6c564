"""Tests for the stableops.ops log/exp family: logsumexp, softmax, log_softmax,
logaddexp, log1mexp, log_sigmoid, softplus, softplus_inverse, log_cosh.

Accuracy is measured in ULPs against 60-digit mpmath references (tests/_reference.py)
on explicit edge grids (zeros, tiny, eps, 1 - eps, switch points +-1 ULP, sigmoid
saturation, log(max), +-max, +-inf, nan) in float16, bfloat16, float32 and float64,
with the budgets stated in each op's docstring; gradients against mpmath derivatives.
Hypothesis covers the whole finite domain (finite value and gradient, accuracy,
identities, NaN propagation, parity with TF/Keras).

To keep XLA compiles few, the ops of one kind are evaluated together in one compiled
function per dtype (``_elementwise_kernel``, ``_reduction_kernel``); the public eager
path of every op is exercised by the special-value tests and the ``eager`` regime.
"""

from __future__ import annotations

import functools
import math
import re

import keras
import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from stableops import ops
from stableops._internal.dtypes import compute_dtype
from tests import _reference as ref
from tests._regimes import Regime
from tests._strategies import FLOAT_DTYPES, finite_arrays

EAGER = Regime("eager")

ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")
INF, NAN = math.inf, math.nan

# Error budgets in ULPs of the result dtype (each op's docstring states the same),
# for the XLA kernels that eager calls run. Half precision is computed in
# float32 and rounded once: <= 1 ULP. float32/float64: XLA's exp and log are
# 0.5-1.4 ULP off on CPU and log1p is compensated (0.6 ULP), so one exp and
# one log1p stay within 2 ULP (softplus, log_sigmoid; log_cosh is a series);
# log1mexp and softplus_inverse amplify the exp/expm1 error up to 1.4x near
# their switch points: 3 ULP (measured 2.0-2.7 over 60,000 random points).
HALF = {"float16": 1.0, "bfloat16": 1.0}
FULL = {"float32": 4.0, "float64": 4.0}
ELEMENTWISE_BUDGETS = {
    "softplus": {"float32": 2.0, "float64": 2.0, **HALF},
    "log_sigmoid": {"float32": 2.0, "float64": 2.0, **HALF},
    "log_cosh": {"float32": 2.0, "float64": 2.0, **HALF},
    "log1mexp": {"float32": 3.0, "float64": 3.0, **HALF},
    "softplus_inverse": {"float32": 3.0, "float64": 3.0, **HALF},
}
# logsumexp and logaddexp: ULPs of max(|result|, |max input|) (backward stable:
# m + log1p(s) with m < 0 may cancel; that is the input's conditioning).
SCALED_BUDGETS = {**FULL, **HALF}
# logaddexp: float32 is formed in float64 and rounded once, but the float32 exp's ULP is
# amplified where a negative maximum cancels: 3 ULP (2.3 measured). float64 sums the exp
# split to 0.3 ULP and log1p's unrounded parts with the maximum and rounds once: 2 ULP
# (1.04 measured in 4e6 random pairs; 4.7 with XLA's exp, whose 1.7 ULP cancellation doubles).
LOGADDEXP_BUDGETS = {"float32": 3.0, "float64": 2.0, **HALF}
# softmax: each entry rounds once after exp (float64 sums and normalization): 3 ULP.
SOFTMAX_BUDGETS = {"float32": 3.0, "float64": 3.0, **HALF}
# Gradients: relative tolerance in eps of the dtype (XLA's tanh/expm1 are ~4 ULP).
GRAD_RTOL_EPS = {"float32": 8.0, "float64": 8.0, "float16": 2.0, "bfloat16": 2.0}

ELEMENTWISE = {  # name: (op, mpmath value, mpmath derivative)
    "softplus": (ops.softplus, ref.mp_softplus, ref.mp_sigmoid),
    "log_sigmoid": (ops.log_sigmoid, ref.mp_log_sigmoid, lambda x: ref.mp_sigmoid(-x)),
    "log1mexp": (ops.log1mexp, ref.mp_log1mexp, ref.mp_log1mexp_derivative),
    "softplus_inverse": (
        ops.softplus_inverse,
        ref.mp_softplus_inverse,
        ref.mp_softplus_inverse_derivative,
    ),
    "log_cosh": (ops.log_cosh, ref.mp_log_cosh, mpmath.tanh),
}
NAMES = tuple(ELEMENTWISE)


def _np_dtype(dtype):
    return ref.to_numpy_dtype(dtype)


def _eps(dtype):
    return float(ml_dtypes.finfo(_np_dtype(dtype)).eps)


# ----------------------------------------------------------------------------
# Compiled evaluation of several ops at once (one XLA compile per dtype/shape)
# ----------------------------------------------------------------------------


@tf.function(jit_compile=True, autograph=False)
def _elementwise_kernel(x):
    """Values and derivatives of every elementwise op, stacked on a new axis 0."""
    values, grads = [], []
    for name in NAMES:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = ELEMENTWISE[name][0](x)
        values.append(value)
        grads.append(tape.gradient(value, x))
    return tf.stack(values), tf.stack(grads)


# Every call pads to one fixed size, so each kernel compiles once per dtype.
_ELEMENTWISE_SIZE = 256  # >= the edge grids (<= 157 values)
_LOGADDEXP_SIZE = 2048  # >= edge grid x 11 partners
_REDUCTION_ROWS = 24


def _padded(x, size):
    flat = np.asarray(x).reshape(-1)
    assert flat.size <= size, (flat.size, size)
    return np.concatenate([flat, np.zeros(size - flat.size, flat.dtype)])


def _elementwise(x):
    """Values and gradients of every elementwise op at ``x`` (any shape), as dicts."""
    values, grads = _elementwise_kernel(tf.constant(_padded(x, _ELEMENTWISE_SIZE)))
    unpad = lambda t: t[: x.size].reshape(x.shape)  # noqa: E731
    return (
        {n: unpad(v) for n, v in zip(NAMES, values.numpy())},
        {n: unpad(g) for n, g in zip(NAMES, grads.numpy())},
    )


def _logaddexp(x, y):
    """logaddexp(x, y), d/dx, d/dy, logaddexp(y, x), logaddexp(x, x) (same-shape x, y)."""
    out = _logaddexp_kernel(
        tf.constant(_padded(x, _LOGADDEXP_SIZE)), tf.constant(_padded(y, _LOGADDEXP_SIZE))
    )
    return [t.numpy()[: x.size].reshape(x.shape) for t in out]


@tf.function(jit_compile=True, autograph=False)
def _logaddexp_kernel(x, y):
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        value = ops.logaddexp(x, y)
    gx, gy = tape.gradient(value, [x, y])
    return value, gx, gy, ops.logaddexp(y, x), ops.logaddexp(x, x)


@tf.function(jit_compile=True, autograph=False)
def _reduction_kernel(x, where, weights):
    """logsumexp, softmax, log_softmax (plain and masked) with their gradients.

    Gradients are of ``sum(logsumexp)`` and ``sum(weights * y)`` for the others.
    """
    ops_ = {
        "logsumexp": lambda t: ops.logsumexp(t),
        "softmax": lambda t: ops.softmax(t) * weights,
        "log_softmax": lambda t: ops.log_softmax(t) * weights,
        "masked_logsumexp": lambda t: ops.logsumexp(t, where=where),
        "masked_softmax": lambda t: ops.softmax(t, where=where) * weights,
        # masked outputs are -inf: weight them through a where, as callers must
        "masked_log_softmax": lambda t: tf.where(
            where, ops.log_softmax(t, where=where) * weights, tf.zeros_like(t)
        ),
    }
    out = {}
    for name, fn in ops_.items():
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        out[name] = value
        out[name + "_grad"] = tape.gradient(value, x)
    out["log_softmax_raw"] = ops.log_softmax(x)
    out["softmax_raw"] = ops.softmax(x)
    out["masked_log_softmax_raw"] = ops.log_softmax(x, where=where)
    out["masked_softmax_raw"] = ops.softmax(x, where=where)
    return out


def _reductions(x, where, weights):
    """The reduction kernel's outputs for rows ``x`` (padded to 24 rows of 6)."""
    rows = len(x)
    x = np.concatenate([x, np.zeros((_REDUCTION_ROWS - rows, x.shape[1]), x.dtype)])
    where = np.concatenate([where, np.ones((_REDUCTION_ROWS - rows, x.shape[1]), bool)])
    out = _reduction_kernel(tf.constant(x), tf.constant(where), tf.constant(weights, x.dtype))
    return {k: v.numpy()[:rows] for k, v in out.items()}


# ----------------------------------------------------------------------------
# Checks that collect every failure of a test (so one run shows all of them)
# ----------------------------------------------------------------------------


def _scaled_ulp_error(actual, reference, scale, dtype):
    """Like ``ref.ulp_error`` but in ULPs of ``max(|reference|, |scale|)`` where finite."""
    errors = ref.ulp_error(actual, reference, dtype)
    actual = np.asarray(actual, dtype=np.float64)
    for index in np.ndindex(errors.shape):
        r, s = reference[index], scale[index]
        if np.isfinite(errors[index]) and mpmath.isfinite(r) and mpmath.isfinite(s):
            unit = ref.ulp_of(max(abs(r), abs(s)), dtype)
            errors[index] = float(abs(ref.mpf(actual[index]) - r) / unit)
    return errors


def _check_ulp(failures, context, actual, reference, dtype, budget, scale=None, flushed=0):
    """Collect a failure when an error exceeds ``budget`` ULPs.

    ``flushed``: how many terms of a sum may each lose up to ``tiny`` because TF
    and XLA flush subnormals to zero (log_softmax at a maximum whose tail is
    ~1e-38); that much absolute error is forgiven.
    """
    if scale is None:
        errors = ref.ulp_error(actual, reference, dtype)
    else:
        errors = _scaled_ulp_error(actual, reference, scale, dtype)
    if flushed:
        slack = flushed * ref.mpf(ml_dtypes.finfo(_np_dtype(dtype)).tiny)
        values, refs = np.asarray(actual, np.float64), np.asarray(reference, dtype=object)
        for index in np.ndindex(errors.shape):
            r, a = refs[index], values[index]
            if mpmath.isfinite(r) and np.isfinite(a) and abs(ref.mpf(a) - r) <= slack:
                errors[index] = 0.0
    if errors.size and errors.max() > budget:
        worst = int(np.argmax(errors))
        failures.append(
            f"{context}: {errors.flat[worst]:.3g} ULP > {budget} in {dtype} at {worst}: got "
            f"{np.asarray(actual, np.float64).flat[worst]!r}, "
            f"want {mpmath.nstr(np.asarray(reference, dtype=object).flat[worst], 17)}"
        )
    return errors.max() if errors.size else 0.0


def _check_close(failures, context, actual, expected, rtol, atol):
    """NaN positions equal, infinities equal, finite values within rtol/atol."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    bad = np.isnan(actual) != np.isnan(expected)
    infinite = np.isinf(expected) | np.isinf(actual)
    bad |= infinite & (actual != expected) & ~np.isnan(expected)
    finite = np.isfinite(expected) & np.isfinite(actual)
    with np.errstate(invalid="ignore"):  # inf - inf and 0 * inf outside `finite`, masked out
        bad |= finite & (np.abs(actual - expected) > rtol * np.abs(expected) + atol)
    if bad.any():
        index = np.flatnonzero(bad)[0]
        failures.append(
            f"{context}: at {index} got {actual.flat[index]!r}, want {expected.flat[index]!r}"
        )


def _assert_no_failures(failures):
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------
# Edge grids
# ----------------------------------------------------------------------------


def _magnitude_neighbours(values, dtype):
    """Each value and the values 1 ULP above and below it in magnitude (finite, nonzero)."""
    npdt = _np_dtype(dtype)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[npdt.itemsize]
    a = np.asarray(values, dtype=np.float64).astype(npdt)
    a = a[np.isfinite(a.astype(np.float64)) & (a.astype(np.float64) != 0)]
    bits = a.view(uint)
    return np.concatenate([a, (bits + uint(1)).view(npdt), (bits - uint(1)).view(npdt)])


def edge_grid(dtype):
    """Edge values of ``dtype`` and of the float32 it computes in, +-1 ULP, both signs."""
    info = ml_dtypes.finfo(_np_dtype(dtype))
    work = ml_dtypes.finfo(_np_dtype(compute_dtype(tf.as_dtype(_np_dtype(dtype).name))))
    log2 = math.log(2.0)
    bases = [
        float(info.tiny),
        float(info.eps),
        float(work.eps),
        1.0 - float(info.eps) / 2,
        1.0,
        log2,
        log2 / 2,
        2 * log2,  # log1mexp's switch point, softplus_inverse's root
        math.log(1.5),
        math.log(3.0),  # softplus_inverse's window around its root
        # (1.0 below: log_cosh's switch point)
        # sigmoid rounds to 1 above log(2/eps), in the dtype and in float32
        math.log(2.0 / float(info.eps)),
        math.log(2.0 / float(work.eps)),
        # exp overflows above log(max): 11.09 float16, 88.72 float32/bfloat16
        math.log(float(info.max)),
        math.log(float(work.max)),
        # 1 - exp(-x) rounds to 1 above -log(eps): softplus_inverse's large switch
        -math.log(float(info.eps)),
        -math.log(float(work.eps)),
        1e-6,
        1e-3,
        0.1,
        0.5,
        2.0,
        3.0,
        10.0,
        30.0,
        100.0,
        1e4,
        math.sqrt(float(info.max)),
        float(info.max),
    ]
    bases = [b for b in bases if b <= float(info.max)]
    magnitudes = _magnitude_neighbours(bases, dtype).astype(np.float64)
    magnitudes = magnitudes[np.isfinite(magnitudes) & (magnitudes >= float(info.tiny))]
    values = np.concatenate([[0.0, -0.0, INF, -INF, NAN], magnitudes, -magnitudes])
    return values.astype(_np_dtype(dtype))


def _grad_reference(derivative, x, dtype):
    expected = ref.reference_array(derivative, x)
    return (
        np.array([float(v) for v in expected.flat])
        .reshape(x.shape)
        .astype(_np_dtype(dtype))
        .astype(np.float64)
    )


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_elementwise_value_and_gradient_on_edge_grid(dtype):
    x = edge_grid(dtype)
    values, grads = _elementwise(x)
    failures = []
    for name, (_, mp_value, mp_derivative) in ELEMENTWISE.items():
        assert values[name].dtype == _np_dtype(dtype) == grads[name].dtype
        _check_ulp(
            failures,
            name,
            values[name],
            ref.reference_array(mp_value, x),
            dtype,
            ELEMENTWISE_BUDGETS[name][dtype],
        )
        keep = x.astype(np.float64) != 0 if name == "log1mexp" else slice(None)  # +-0: below
        _check_close(
            failures,
            name + " gradient",
            grads[name][keep],
            _grad_reference(mp_derivative, x[keep], dtype),
            rtol=GRAD_RTOL_EPS[dtype] * _eps(dtype),
            atol=float(ml_dtypes.finfo(_np_dtype(dtype)).tiny),
        )
    _assert_no_failures(failures)


# Where the compensated log1p, the log_cosh series and the switch points work
# hardest: (low, high) of a uniform sample per op.
_ACCURACY_RANGES = {
    "softplus": (-6.0, 3.0),
    "log_sigmoid": (-3.0, 6.0),
    "log1mexp": (-2.5, -0.05),
    "softplus_inverse": (0.05, 2.0),
    "log_cosh": (-3.0, 3.0),
}


@functools.lru_cache(maxsize=None)
def _accuracy_sample(name, dtype):
    low, high = _ACCURACY_RANGES[name]
    x = np.random.default_rng(11).uniform(low, high, 1500).astype(dtype)
    return x, ref.reference_array(ELEMENTWISE[name][1], x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_budgets_hold_in_every_regime(regime, dtype):
    # Outside XLA the graph optimizer rewrites patterns (log(1 + v) to log1p,
    # (c + v) - c to v) and TF's own exp/log kernels run: the error-free
    # corrections inside the ops must survive that, within the same budgets.
    failures = []
    for name in _ACCURACY_RANGES:
        x, reference = _accuracy_sample(name, dtype)
        value = regime.run(ELEMENTWISE[name][0], x)
        _check_ulp(
            failures,
            f"{name} ({regime.name})",
            value,
            reference,
            dtype,
            ELEMENTWISE_BUDGETS[name][dtype],
        )
    _assert_no_failures(failures)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_inverse_is_relatively_accurate_next_to_its_root(dtype):
    # softplus_inverse crosses 0 at log 2, where x + log(-expm1(-x)) cancels
    # (hundreds of ULP, as in TFP); the 8 values on each side are the hardest.
    npdt = _np_dtype(dtype)
    grid = np.array([math.log(2.0)], dtype=npdt)
    for _ in range(8):
        grid = np.unique(
            np.concatenate(
                [grid, np.nextafter(grid, npdt.type(0)), np.nextafter(grid, npdt.type(1))]
            )
        )
    failures = []
    _check_ulp(
        failures,
        "softplus_inverse",
        _elementwise(grid)[0]["softplus_inverse"],
        ref.reference_array(ref.mp_softplus_inverse, grid),
        dtype,
        ELEMENTWISE_BUDGETS["softplus_inverse"][dtype],
    )
    _assert_no_failures(failures)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_logaddexp_value_and_gradient_on_edge_grid(dtype):
    partners = [-INF, -1e4, -30.0, -1.0, -0.0, 1e-3, 0.5, 1.0, 30.0, INF, NAN]
    x = np.broadcast_to(edge_grid(dtype)[:, None], (len(edge_grid(dtype)), len(partners)))
    y = np.broadcast_to(np.array(partners).astype(_np_dtype(dtype))[None, :], x.shape)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    value, gx, gy, swapped, _ = _logaddexp(x, y)
    failures = []
    _check_ulp(
        failures,
        "logaddexp",
        value,
        ref.reference_array(ref.mp_logaddexp, x, y),
        dtype,
        LOGADDEXP_BUDGETS[dtype],
        scale=ref.reference_array(max, x, y),
    )
    _check_close(failures, "symmetry", swapped, value, rtol=0, atol=0)
    # d/dx = sigmoid(x - y), 1/2 at x == y, (0, 0) when both are -inf
    both_minus_inf = (x == -INF) & (y == -INF)
    expected = ref.reference_array(
        lambda a, b: mpmath.mpf(0.5) if a == b else ref.mp_sigmoid(a - b), x, y
    )
    expected = np.where(both_minus_inf, 0.0, expected.astype(np.float64))
    # Relative to each weight, the small one included: sigmoid(x - y) of the rounded x - y
    # was |x - y| eps / 2 off (29 ULP at 80.3, 0.7 in float32; 331 at 700.3, 0.7 in float64).
    _check_close(
        failures,
        "d/dx",
        gx,
        expected,
        rtol=GRAD_RTOL_EPS[dtype] * _eps(dtype),
        atol=float(ml_dtypes.finfo(_np_dtype(dtype)).tiny),
    )
    finite = np.isfinite(gx.astype(np.float64)) & np.isfinite(gy.astype(np.float64))
    _check_close(
        failures,
        "d/dx + d/dy",
        (gx.astype(np.float64) + gy)[finite & ~both_minus_inf],
        1.0,
        rtol=0,
        atol=2 * _eps(dtype),
    )
    _assert_no_failures(failures)


# ----------------------------------------------------------------------------
# Reductions: edge rows and random rows (one compile per dtype: shape (24, 6))
# ----------------------------------------------------------------------------

_WEIGHTS = np.array([1.0, -0.5, 0.25, 0.75, -0.125, 0.5])  # |w| <= 1: w * y cannot overflow


def _edge_rows(dtype):
    """12 rows of 6: dominant entries, ties, spreads, infinities, NaN; then 12 random rows."""
    info = ml_dtypes.finfo(_np_dtype(dtype))
    big, lm = float(info.max), math.log(float(info.max))
    rows = [
        [0.0, -30.0, -30.0, -40.0, -50.0, -60.0],  # one dominant logit: tiny tail
        [0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],  # all tied: x + log 6
        [-0.5, -0.5, -0.7, -0.75, -2.0, -0.69],  # logsumexp near 0 (cancellation)
        [1e4, -1e4, 0.0, 3.0, 1e4, 2.0],
        [lm, lm, lm, lm - 1, 0.0, -lm],  # log(max): exp would overflow
        [big / 2, big / 2, 0.0, -big / 2, 1.0, -1.0],  # spread of max
        [-INF, -INF, -INF, -INF, -INF, -INF],  # empty row
        [-INF, 2.0, -INF, 1.0, -INF, 0.0],
        [INF, 1.0, 2.0, -INF, 3.0, INF],  # two +inf share
        [NAN, 1.0, 2.0, 3.0, 4.0, 5.0],
        [1e-6, -1e-6, 2e-6, 0.0, -0.0, 3e-7],
    ]
    rng = np.random.default_rng(7)
    spread = 10.0 ** rng.uniform(-3, 2, (12, 1))
    random_rows = rng.normal(size=(12, 6)) * spread + rng.normal(size=(12, 1)) * 10
    return np.concatenate([np.array(rows), random_rows]).astype(_np_dtype(dtype))


def _edge_mask(x):
    mask = np.ones(x.shape, bool)
    mask[:, 1] = False  # one masked column everywhere (masks the tail, a NaN, a +inf)
    mask[10, 0] = False  # the NaN row: its NaN is masked, so the row is finite
    mask[4, :] = False  # a fully masked row
    return mask


def _row_refs(mp_fn, x, mask=None):
    rows = []
    for i, row in enumerate(x):
        values = [ref.mpf(v) for v in row]
        if mask is not None:  # masked entries take part as -inf
            values = [v if keep else -ref.INF for v, keep in zip(values, mask[i])]
        rows.append(mp_fn(values))
    return np.array(rows, dtype=object)


def _check_reductions(failures, x, mask, out, dtype, grad_rtol):
    """Values (ULP budgets) and gradients (mpmath softmax) of the reduction kernel."""
    tiny = float(ml_dtypes.finfo(_np_dtype(dtype)).tiny)
    for prefix, m in (("", None), ("masked_", mask)):
        kept = np.ones(x.shape, bool) if m is None else m
        row_max = np.where(kept, x.astype(np.float64), -INF).max(axis=-1)
        _check_ulp(
            failures,
            prefix + "logsumexp",
            out[prefix + "logsumexp"],
            _row_refs(ref.mp_logsumexp, x, m),
            dtype,
            SCALED_BUDGETS[dtype],
            scale=np.array([ref.mpf(v) for v in row_max], dtype=object),
        )
        probabilities = _row_refs(ref.mp_softmax, x, m)
        log_probabilities = _row_refs(ref.mp_log_softmax, x, m)
        _check_ulp(
            failures,
            prefix + "softmax",
            out[prefix + "softmax_raw"],
            probabilities,
            dtype,
            SOFTMAX_BUDGETS[dtype],
        )
        _check_ulp(
            failures,
            prefix + "log_softmax",
            out[prefix + "log_softmax_raw"],
            log_probabilities,
            dtype,
            SOFTMAX_BUDGETS[dtype],
            flushed=x.shape[-1],
        )
        # Gradients. logsumexp: softmax. softmax (of sum(w * y)): y (w - <w, y>).
        # log_softmax: g - y sum(g), with g = w where the output is finite and 0
        # where it is -inf (masked, -inf entries, empty rows pass no gradient).
        p = np.array([[float(v) for v in row] for row in probabilities])
        finite_output = np.array(
            [[bool(mpmath.isfinite(v)) for v in row] for row in log_probabilities]
        )
        g = np.where(finite_output, _WEIGHTS, 0.0)
        nan_rows = np.isnan(p).any(axis=-1, keepdims=True)
        expected = {
            "logsumexp_grad": p,
            "softmax_grad": p * (_WEIGHTS - (_WEIGHTS * p).sum(axis=-1, keepdims=True)),
            "log_softmax_grad": np.where(nan_rows, NAN, g - p * g.sum(axis=-1, keepdims=True)),
        }
        for name, want in expected.items():
            # absolute slack: cancellation in w - <w, y> is relative to the weights
            atol = grad_rtol * np.abs(_WEIGHTS).max() * 4 if name != "logsumexp_grad" else tiny
            _check_close(
                failures, prefix + name, out[prefix + name], want, rtol=grad_rtol, atol=atol
            )


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_reductions_value_and_gradient_on_edge_rows(dtype):
    x = _edge_rows(dtype)
    mask = _edge_mask(x)
    out = _reductions(x, mask, _WEIGHTS)
    failures = []
    _check_reductions(
        failures, x, mask, out, dtype, grad_rtol=GRAD_RTOL_EPS[dtype] * _eps(dtype) * 4
    )
    _assert_no_failures(failures)


# ----------------------------------------------------------------------------
# Special values and conventions (exact closed forms), through the eager public ops
# ----------------------------------------------------------------------------


def _value_and_grad(fn, *args, weights=None):
    """Eager value and gradients with respect to every argument."""
    return EAGER.value_and_grad(fn, *args, wrt=tuple(range(len(args))), weights=weights)


def test_logsumexp_empty_infinite_and_masked_rows():
    x = np.array(
        [[-INF, -INF, -INF], [INF, 0.0, INF], [NAN, 0.0, 1.0], [0.0, -30.0, -INF]], np.float32
    )
    value, (grad,) = _value_and_grad(ops.logsumexp, x)
    assert value[0] == -INF and value[1] == INF and np.isnan(value[2])
    np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])  # empty row: gradient 0
    np.testing.assert_array_equal(grad[1], [0.5, 0.0, 0.5])  # the +inf entries share
    assert np.isnan(grad[2]).all() and grad[3][2] == 0.0
    # The tail survives: log(1 + e^-30) = 9.357622968840175e-14 (naive: 0).
    ref.assert_ulp_within(value[3:], [mpmath.log1p(mpmath.exp(-30))], "float32", 2)
    where = np.array(
        [[True, True, True], [False, False, False], [False, True, True], [True, True, True]]
    )
    value, (grad,) = _value_and_grad(lambda t: ops.logsumexp(t, where=where), x)
    assert value[1] == -INF and np.isfinite(value[2])  # fully masked; masked NaN ignored
    np.testing.assert_array_equal(grad[1:3, :1], [[0.0], [0.0]])
    assert np.isfinite(grad[1:]).all()


def test_logsumexp_float16_many_classes_does_not_overflow():
    # 100,000 float16 logits of 11.0 (near float16's log(max) = 11.09): a
    # float16 sum of exp would overflow (65504); exact result 11 + log(1e5).
    x = np.full((2, 100_000), 11.0, np.float16)
    value = ops.logsumexp(x).numpy()
    assert value.dtype == np.float16
    expected = [mpmath.mpf(11) + mpmath.log(100_000)] * 2
    ref.assert_ulp_within(value, np.array(expected, dtype=object), "float16", 1.0)


def test_logsumexp_axis_keepdims_and_tuple_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    expected = tf.reduce_logsumexp(tf.constant(x, tf.float64), axis=(1, 2), keepdims=True)
    value = ops.logsumexp(x, axis=(1, 2), keepdims=True)
    assert value.shape == (2, 1, 1)
    np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=3e-7)
    assert ops.logsumexp(x, axis=0).shape == (3, 4)
    assert ops.logsumexp(x, axis=None).shape == ()
    assert ops.softmax(x, axis=1).shape == (2, 3, 4)
    np.testing.assert_allclose(ops.softmax(x, axis=(1, 2)).numpy().sum(axis=(1, 2)), 1.0, rtol=1e-6)


def test_softmax_fully_masked_row_is_zero_with_zero_gradient():
    x = np.array([[1.0, 2.0, 3.0], [NAN, 1e4, -1e4], [-INF, -INF, -INF]], np.float32)
    where = np.array([[True, False, True], [False, False, False], [True, True, True]])
    weights = np.array([1.0, 2.0, 3.0], np.float32)
    value, (grad,) = _value_and_grad(lambda t: ops.softmax(t, where=where), x, weights=weights)
    np.testing.assert_array_equal(value[1:], 0.0)
    np.testing.assert_array_equal(grad[1:], 0.0)
    assert value[0][1] == 0.0 and grad[0][1] == 0.0
    p = float(1 / (1 + mpmath.e**2))  # softmax([1, 3])[0]
    np.testing.assert_allclose(value[0][[0, 2]], [p, 1 - p], rtol=3e-7)


def test_log_softmax_masked_entries_are_minus_inf_with_zero_gradient():
    x = np.array([[0.0, NAN, -30.0], [5.0, 1.0, 2.0], [-INF, -INF, -INF]], np.float32)
    where = np.array([[True, False, True], [False, False, False], [True, True, True]])
    value, (grad,) = _value_and_grad(lambda t: ops.log_softmax(t, where=where), x)
    assert value[0][1] == -INF
    np.testing.assert_array_equal(value[1:], -INF)
    assert np.isfinite(grad).all()  # no NaN from -inf - (-inf) or the masked NaN
    np.testing.assert_array_equal(grad[1:], 0.0)
    assert grad[0][1] == 0.0
    # one dominant logit: -log1p(e^-30) at the maximum, not 0
    ref.assert_ulp_within(value[0, :1], [-mpmath.log1p(mpmath.exp(-30))], "float32", 2)


def test_masked_entries_stay_masked_when_the_row_holds_a_nan(regime):
    # NaN in, NaN out for the entries that take part; a masked entry is exactly
    # 0 (softmax) or -inf (log_softmax) whatever the rest of its row holds, as
    # in JAX's softmax(where=...).
    x = np.array([[NAN, 1.0, 2.0], [1.0, 2.0, 3.0]], np.float32)
    where = np.array([[True, False, True], [True, False, True]])
    for op, masked_value in ((ops.softmax, 0.0), (ops.log_softmax, -INF)):
        value = regime.run(lambda t: op(t, where=where), x)
        assert np.isnan(value[0, [0, 2]]).all(), (op.__name__, value)
        assert value[0, 1] == masked_value and value[1, 1] == masked_value, (op.__name__, value)
        assert np.isfinite(value[1, [0, 2]]).all()


@pytest.mark.parametrize("rows", [1, 2**16], ids=["one_row", "2^18_entries"])
@pytest.mark.parametrize("op", [ops.softmax, ops.log_softmax])
def test_masked_entries_have_no_gradient_when_the_row_holds_a_nan(regime, op, rows):
    """A masked entry's gradient is 0 whatever its row holds. softmax's gradient from its
    output, ``y (g - <g, y>)``, made it ``0 * NaN`` in a row holding a NaN: NaN in a plain
    tf.function and eagerly from 2^18 entries, 0 elsewhere (rule 5)."""
    x = np.tile(np.float32([[NAN, 1.0, 2.0, 0.0]]), (rows, 1))
    where = np.tile([[True, True, False, True]], (rows, 1))
    weights = np.arange(1.0, 5.0, dtype=np.float32)  # an upstream other than ones
    _, (grad,) = regime.value_and_grad(lambda t: op(t, where=where) * weights, x)
    assert np.all(grad[:, 2] == 0.0), grad[:4]
    assert np.all(np.isnan(grad[:, [0, 1, 3]])), grad[:4]


@pytest.mark.parametrize("op", [ops.logsumexp, ops.softmax, ops.log_softmax])
def test_a_mask_that_widens_x_is_an_error(op, regime):
    """A ``[2, 2]`` mask of a ``[2]`` row broadcast the value, and eagerly and in a
    tf.function the gradient came back summed over the copies, or of the mask's shape
    (logsumexp: [12.69, 0.73] for the exact [10.27, 0.73]). A mask that broadcasts to ``x``
    (smaller) is unchanged."""
    x = np.array([1.0, 2.0], np.float32)
    with pytest.raises(ValueError, match=r"`where` must broadcast to the shape of `x`"):
        regime.run(lambda t: op(t, where=tf.constant([[True, False], [True, True]])), x)
    rows = np.array([[1.0, 2.0, 3.0], [1.0, 5.0, 2.0]], np.float32)
    row_mask = np.array([True, False, True])
    value = regime.run(lambda t: op(t, where=row_mask), rows)
    np.testing.assert_array_equal(value, op(rows, where=np.stack([row_mask, row_mask])).numpy())


def test_softmax_and_log_softmax_plus_inf_entries_share():
    x = np.array([[INF, 0.0, INF, -INF]], np.float32)
    np.testing.assert_array_equal(ops.softmax(x).numpy(), [[0.5, 0.0, 0.5, 0.0]])
    log_p = ops.log_softmax(x).numpy()
    np.testing.assert_allclose(log_p[0, [0, 2]], -math.log(2.0), rtol=1e-7)
    assert (log_p[0, [1, 3]] == -INF).all()


def test_logaddexp_infinities_broadcasting_and_scalars():
    x = np.array([-INF, INF, -INF, 1.0, NAN, 3.0], np.float32)
    y = np.array([-INF, INF, 2.0, 1.0, 1.0, INF], np.float32)
    value, (gx, gy) = _value_and_grad(ops.logaddexp, x, y)
    np.testing.assert_array_equal(value[[0, 1, 2, 5]], [-INF, INF, 2.0, INF])
    assert np.isnan(value[4])
    np.testing.assert_array_equal(gx[[0, 1, 2, 3, 5]], [0.0, 0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(gy[[0, 1, 2, 3, 5]], [0.0, 0.5, 1.0, 0.5, 1.0])
    assert ops.logaddexp(np.zeros((2, 3), np.float16), 0.0).dtype == tf.float16
    # A Python number on the left takes the right's dtype too (an int32 error before).
    swapped = ops.logaddexp(1, tf.constant([1.0], tf.float64))
    assert swapped.dtype == tf.float64
    ref.assert_ulp_within(swapped.numpy(), [1 + mpmath.log(2)], "float64", 2)
    _, (_, g_row) = _value_and_grad(
        ops.logaddexp, np.zeros((2, 3), np.float32), np.zeros((3,), np.float32)
    )
    np.testing.assert_array_equal(g_row, [1.0, 1.0, 1.0])  # two rows of 1/2


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
    # inverse of softplus: softplus(softplus_inverse(y)) == y
    y = np.array([1e-20, 1e-3, 0.5, 0.6931472, 1.0, 20.0, 1e4], np.float64)
    np.testing.assert_allclose(ops.softplus(ops.softplus_inverse(y)).numpy(), y, rtol=1e-15)


def test_softplus_gradient_is_one_half_at_zero_and_tails_are_accurate():
    x = np.array([0.0, -100.0, -INF, INF], np.float64)
    value, (grad,) = _value_and_grad(ops.softplus, x)
    np.testing.assert_array_equal(grad[[0, 2, 3]], [0.5, 0.0, 1.0])
    ref.assert_ulp_within(grad[1:2], [ref.mp_sigmoid(mpmath.mpf(-100))], "float64", 4)
    np.testing.assert_array_equal(value[2:], [0.0, INF])
    # softplus(-100) = e^-100 to full relative accuracy (Keras/tf.nn: also fine in
    # float64; in float32 log(1 + exp(x)) would give 0 below -17)
    ref.assert_ulp_within(value[1:2], [mpmath.log1p(mpmath.exp(-100))], "float64", 2)
    value32 = ops.log_sigmoid(np.array([30.0], np.float32)).numpy()
    ref.assert_ulp_within(value32, [ref.mp_log_sigmoid(mpmath.mpf(30))], "float32", 2)


def _keras_log_cosh(x):
    # keras.losses.log_cosh of y_pred - y_true = x, one element per row
    x = tf.constant(x)[:, None]
    return keras.losses.log_cosh(tf.zeros_like(x), x).numpy()


def test_log_cosh_tiny_and_huge_arguments_beat_keras():
    tiny = np.array([1e-6, 1e-20], np.float32)
    ours = ops.log_cosh(tiny).numpy()
    keras_value = _keras_log_cosh(tiny)  # x + softplus(-2x) - log 2 cancels
    assert (
        ref.ulp_error(keras_value, ref.reference_array(ref.mp_log_cosh, tiny), "float32")[0] > 1e6
    )  # Keras: 0 at 1e-6
    ref.assert_ulp_within(ours, ref.reference_array(ref.mp_log_cosh, tiny), "float32", 2)
    huge = np.array([-4e4, -6e4, 12.0], np.float16)
    assert not np.isfinite(_keras_log_cosh(huge)[:2]).any()  # -2x overflows float16
    assert not np.isfinite(keras.ops.log(keras.ops.cosh(huge)).numpy()).any()
    ours = ops.log_cosh(huge).numpy()
    assert ours.dtype == np.float16
    ref.assert_ulp_within(ours, ref.reference_array(ref.mp_log_cosh, huge), "float16", 1)


# ----------------------------------------------------------------------------
# Hypothesis: the whole finite domain in float32, float16, bfloat16
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_elementwise_properties(dtype, data):
    """Finite value and gradient, accuracy, identities and NaN propagation."""
    x = data.draw(finite_arrays(dtype, (8,)))
    positive = np.abs(x)
    positive[positive == 0] = 1  # softplus_inverse and log1mexp are -inf at 0
    with_nan = x.copy()
    position = data.draw(st.integers(0, 7))
    with_nan[position] = np.nan
    values, grads = _elementwise(np.stack([x, positive, with_nan, -x]))
    failures = []
    for name, (_, mp_value, _) in ELEMENTWISE.items():
        domain = [1] if name in ("softplus_inverse", "log1mexp") else [0, 1]
        value, grad = values[name][domain], grads[name][domain]
        assert np.isfinite(value.astype(np.float64)).all(), (name, x, value)
        assert np.isfinite(grad.astype(np.float64)).all(), (name, x, grad)
        _check_ulp(
            failures,
            name,
            value,
            ref.reference_array(mp_value, np.stack([x, positive])[domain]),
            dtype,
            ELEMENTWISE_BUDGETS[name][dtype],
        )
        assert np.isnan(values[name][2][position]), (name, "NaN in, NaN out")
    _assert_no_failures(failures)
    # softplus(x) - softplus(-x) == x within the budget of both terms
    plus, minus = values["softplus"][0].astype(np.float64), values["softplus"][3].astype(np.float64)
    unit = np.vectorize(lambda v: float(ref.ulp_of(ref.mpf(v), dtype)))
    budget = ELEMENTWISE_BUDGETS["softplus"][dtype]
    assert (
        np.abs(plus - minus - x.astype(np.float64)) <= budget * (unit(plus) + unit(minus))
    ).all(), (x, plus, minus)
    # log_sigmoid(x) == -softplus(-x); log_cosh, log1mexp even; log_cosh >= 0
    np.testing.assert_array_equal(values["log_sigmoid"][0], -values["softplus"][3])
    np.testing.assert_array_equal(values["log_cosh"][0], values["log_cosh"][3])
    np.testing.assert_array_equal(values["log1mexp"][0], values["log1mexp"][3])
    assert (values["log_cosh"][0].astype(np.float64) >= 0).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_logaddexp_properties(dtype, data):
    x = data.draw(finite_arrays(dtype, (8,)))
    y = data.draw(finite_arrays(dtype, (8,)))
    value, gx, gy, swapped, same = _logaddexp(x, y)
    assert np.isfinite(value.astype(np.float64)).all()
    assert np.isfinite(gx.astype(np.float64)).all() and np.isfinite(gy.astype(np.float64)).all()
    np.testing.assert_allclose(
        gx.astype(np.float64) + gy.astype(np.float64), 1.0, atol=2 * _eps(dtype)
    )
    np.testing.assert_array_equal(value, swapped)
    failures = []
    _check_ulp(
        failures,
        "logaddexp(x, x) == x + log 2",
        same,
        ref.reference_array(lambda a: a + mpmath.log(2), x),
        dtype,
        LOGADDEXP_BUDGETS[dtype],
        scale=ref.reference_array(lambda a: a, x),
    )
    _check_ulp(
        failures,
        "logaddexp",
        value,
        ref.reference_array(ref.mp_logaddexp, x, y),
        dtype,
        LOGADDEXP_BUDGETS[dtype],
        scale=ref.reference_array(max, x, y),
    )
    _assert_no_failures(failures)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@given(data=st.data())
def test_reduction_properties(dtype, data):
    # Entries within +-max/2: log_softmax's x - max(x) is then representable
    # (a wider spread gives the documented -inf, the true value's rounding).
    half_max = float(ml_dtypes.finfo(_np_dtype(dtype)).max) / 2
    x = data.draw(finite_arrays(dtype, (3, 6), min_value=-half_max, max_value=half_max))
    position = data.draw(st.integers(0, 5))
    x[2, position] = np.nan
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=18, max_size=18))).reshape(3, 6)
    mask[:, 0] |= ~mask.any(axis=-1)  # at least one entry per row (empty rows: edge tests)
    mask[2, position] = True  # the NaN takes part
    out = _reductions(x, mask, _WEIGHTS)
    for name in (
        "logsumexp",
        "softmax",
        "log_softmax",
        "masked_logsumexp",
        "masked_softmax",
        "masked_log_softmax",
    ):
        # (masked_log_softmax is weighted through a where: masked outputs count 0)
        assert np.isfinite(out[name][:2].astype(np.float64)).all(), (name, x, out[name])
        assert np.isfinite(out[name + "_grad"][:2].astype(np.float64)).all(), (name, x)
        raw = (out[name] if name.endswith("logsumexp") else out[name + "_raw"]).astype(np.float64)
        taking_part = mask[2] if name in ("masked_softmax", "masked_log_softmax") else slice(None)
        assert np.isnan(np.atleast_1d(raw[2])[taking_part]).all(), (name, "NaN in, NaN out", raw[2])
        if name == "masked_softmax":
            assert (raw[2][~mask[2]] == 0.0).all(), (name, "masked entries stay 0", raw[2])
        if name == "masked_log_softmax":
            assert (raw[2][~mask[2]] == -INF).all(), (name, "masked entries stay -inf", raw[2])
    failures = []
    _check_reductions(
        failures,
        x[:2],
        mask[:2],
        {k: v[:2] for k, v in out.items()},
        dtype,
        grad_rtol=GRAD_RTOL_EPS[dtype] * _eps(dtype) * 4,
    )
    _assert_no_failures(failures)
    probabilities = out["softmax_raw"][:2].astype(np.float64)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=8 * _eps(dtype))
    assert (out["log_softmax_raw"][:2].astype(np.float64) <= 0).all()


@given(
    x=finite_arrays("float32", (2, 4), min_value=-20.0, max_value=20.0),
    y=finite_arrays("float32", (2, 4), min_value=-20.0, max_value=20.0),
)
def test_parity_with_tensorflow_and_keras_where_well_conditioned(x, y):
    t, u = tf.constant(x), tf.constant(y)
    pairs = {
        "softplus": (ops.softplus(x), tf.nn.softplus(t)),
        "log_sigmoid": (ops.log_sigmoid(x), tf.math.log_sigmoid(t)),
        "logsumexp": (ops.logsumexp(x), tf.reduce_logsumexp(t, axis=-1)),
        "keras logsumexp": (ops.logsumexp(x), keras.ops.logsumexp(t, axis=-1)),
        "softmax": (ops.softmax(x), tf.nn.softmax(t)),
        "log_softmax": (ops.log_softmax(x), tf.nn.log_softmax(t)),
        "keras log_softmax": (ops.log_softmax(x), keras.ops.log_softmax(t)),
        "logaddexp": (ops.logaddexp(x, y), keras.ops.logaddexp(t, u)),
    }
    for name, (ours, theirs) in pairs.items():
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------
# Three regimes: eager (XLA kernels), tf.function, tf.function(jit_compile=True)
# ----------------------------------------------------------------------------

_ROWS = np.array(
    [
        [-INF, -1e4, -30.0, -1.0, -0.0, 0.0, 1e-6, 0.6931472, 30.0, 1e4],
        [NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        [-INF] * 10,
        [INF, 1.0, -2.0, 0.5, 0.25, -7.0, 3e3, -3e3, 1e-30, 88.8],
    ],
    np.float32,
)
_ROW_WEIGHTS = (np.arange(1, 11) / 4 - 1.1).astype(np.float32)  # no zero weight

_REGIME_CASES = (  # (name, function of its inputs, number of inputs)
    ("logsumexp", ops.logsumexp, 1),
    ("logsumexp where", lambda x: ops.logsumexp(x, where=x < 1e3), 1),
    # (softmax and log_softmax without a mask run the same core: covered by the
    # XLA kernels above and the eager tests)
    ("softmax where", lambda x: ops.softmax(x, where=x > -5.0) * _ROW_WEIGHTS, 1),
    ("log_softmax where", lambda x: ops.log_softmax(x, where=x > -5.0) * _ROW_WEIGHTS, 1),
    ("logaddexp", ops.logaddexp, 2),
    *((name, fn, 1) for name, (fn, _, _) in ELEMENTWISE.items()),
)


def _all_cases(*inputs):
    """Every case's output, flattened per row and concatenated: one function for all."""
    outputs, start = [], 0
    for _, fn, count in _REGIME_CASES:
        out = fn(*inputs[start : start + count])
        start += count
        outputs.append(tf.reshape(out, [tf.shape(out)[0], -1]))
    return tf.concat(outputs, axis=1)


def _regime_inputs():
    inputs = []
    for _, _, count in _REGIME_CASES:
        inputs += [_ROWS.copy(), _ROWS[::-1].copy()][:count]
    return inputs


def test_three_regimes_agree(regime):
    inputs = _regime_inputs()
    wrt = tuple(range(len(inputs)))
    expected_value, expected_grads = Regime("eager").value_and_grad(_all_cases, *inputs, wrt=wrt)
    failures = []
    # XLA with static shapes is what the kernels above run (checked against
    # mpmath); here XLA gets the unknown batch dimension, tf.function both.
    shape_cases = {"eager": (False,), "function": (False, True), "xla": (True,)}[regime.name]
    for unknown_batch in shape_cases:
        value, grads = regime.value_and_grad(
            _all_cases, *inputs, wrt=wrt, unknown_batch=unknown_batch
        )
        context = f"{regime.name} unknown_batch={unknown_batch}"
        _check_close(failures, context + " value", value, expected_value, rtol=1e-6, atol=1e-37)
        for (name, _, _), grad, want in zip(
            [c for c in _REGIME_CASES for _ in range(c[2])], grads, expected_grads
        ):
            _check_close(failures, f"{context} {name} gradient", grad, want, rtol=2e-6, atol=1e-37)
    _assert_no_failures(failures)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_integer_input_is_a_type_error():
    for name in NAMES + ("logsumexp", "softmax", "log_softmax"):
        with pytest.raises(TypeError, match="floating"):
            getattr(ops, name)(tf.constant([1, 2, 3]))
    with pytest.raises(TypeError, match="floating"):
        ops.logaddexp(tf.constant([1, 2]), tf.constant([1.0, 2.0]))
    with pytest.raises(TypeError, match="float16.*float32"):
        ops.logaddexp(tf.constant([1.0], tf.float16), tf.constant([1.0], tf.float32))


def test_reduction_bad_axis_and_mask():
    with pytest.raises(TypeError, match="axis"):
        ops.logsumexp(tf.constant([1.0]), axis=1.5)
    with pytest.raises(TypeError, match="where"):
        ops.softmax(tf.constant([1.0, 2.0]), where=tf.constant([1.0, 0.0]))


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_row_reductions_divide_once_per_row(name):
    """Normalizing by the row sum is one division per row and a multiplication per
    entry (as TF's Softmax kernel), in the value and in the gradient: a division per
    entry cost 0.1x of Keras's time at 2^20. Read from the compiled HLO. The one
    division per entry allowed is the exponentials' ``written_once`` (by an exact 1, in
    the forward pass of softmax and logsumexp, whose gradients read them again)."""
    fn = getattr(ops, name)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x)

    compiled = tf.function(value_and_grad, jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(tf.zeros((8, 16)))(stage="hlo")
    # The shapes of the divisions, in float32 or float64 (softmax normalizes in float64).
    divisions = re.findall(r"f(?:32|64)\[[0-9,]*\]\S* divide\([^\n]*", hlo)
    per_row = [line for line in divisions if re.match(r"f..\[8,1\]", line)]
    per_entry = [line for line in divisions if re.match(r"f..\[8,16\]", line)]
    assert per_row and len(per_row) + len(per_entry) == len(divisions), divisions
    written_once = [line for line in per_entry if "written_once" in line]
    assert written_once == per_entry, per_entry
    assert len(per_entry) == (0 if name == "log_softmax" else 1), per_entry


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_large_eager_gradient_is_the_graphs(name):
    # From 2^18 entries an eager call records its compiled backward pass from the output
    # (below, TF's gradient of the compiled call): the same gradient as in a graph, and as the
    # closed form in float64 (softmax: y (g - sum(g y)); log_softmax: g - softmax sum(g)).
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0.0, 3.0, (2048, 128)).astype(np.float32))  # 2^18 entries
    upstream = tf.constant(rng.normal(0.0, 1.0, (2048, 128)).astype(np.float32))
    fn = getattr(ops, name)

    def gradient(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = fn(v)
        return tape.gradient(y, v, upstream)

    eager, graph = gradient(x), tf.function(gradient)(x)
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), rtol=0, atol=1e-6)
    g, x64 = upstream.numpy().astype(np.float64), x.numpy().astype(np.float64)
    p = np.exp(x64 - x64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if name == "softmax":
        expected = p * (g - (g * p).sum(-1, keepdims=True))
    else:
        expected = g - p * g.sum(-1, keepdims=True)
    np.testing.assert_allclose(eager.numpy(), expected, rtol=1e-4, atol=1e-6)


def _second_derivative(fn, *args, wrt=(0, 0)):
    """``d^2 fn / d args[i] d args[j]`` by nested tapes."""
    first, second = wrt
    with tf.GradientTape() as outer:
        outer.watch(args[second])
        with tf.GradientTape() as inner:
            inner.watch(args[first])
            value = fn(*args)
        slope = inner.gradient(value, args[first])
    return outer.gradient(slope, args[second])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "fn, point, wrt, exact",
    [
        (ops.softplus, (0.0,), (0, 0), 0.25),  # sigmoid(0) (1 - sigmoid(0))
        (ops.log_sigmoid, (0.0,), (0, 0), -0.25),
        (ops.logaddexp, (1.0, 1.0), (0, 0), 0.25),  # sigmoid'(x - y) at a tie
        (ops.logaddexp, (1.0, 1.0), (0, 1), -0.25),
    ],
    ids=["softplus", "log_sigmoid", "logaddexp_xx", "logaddexp_xy"],
)
def test_second_derivative_at_zero_and_at_a_tie(regime, dtype, fn, point, wrt, exact):
    """The slopes came from ``exp(-|x|)`` and, for ``logaddexp``, a tie selected to a
    constant 0: ``abs`` and the constant have slope 0 at 0, so the second derivative there
    was 0 (a gradient penalty at a zero logit, a Hessian at ``logaddexp(x, x)``). Exact:
    ``sigmoid'(0) = 1/4``."""
    args = [tf.constant(v, dtype) for v in point]
    got = regime.wrap(lambda *a: _second_derivative(fn, *a, wrt=wrt), *args)(*args)
    np.testing.assert_allclose(float(got), exact, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_a_nan_beside_minus_infinities_makes_the_row_nan(regime, name):
    # A NaN makes its row NaN (documented), also where every other entry is -inf: XLA's
    # row maximum skips the NaN, so the row looked empty (all -inf) and gave 0 or -inf
    # beside the NaN unless the empty-row test checks for it.
    x = np.float32([[np.nan, -np.inf, -np.inf], [-np.inf, np.nan, -np.inf]])
    value = regime.run(getattr(ops, name), x)
    assert np.isnan(value).all(), value
