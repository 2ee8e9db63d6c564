"""Kernels of the likelihood losses Keras does not ship: Gaussian NLL, Gaussian KL, Poisson NLL.

Private: ``stableops.losses`` (``GaussianNLL``, ``GaussianKL``, ``PoissonNLL``)
validates the arguments and calls these ``@xla_kernel`` functions; nothing here
is exported from ``stableops.ops``. Each kernel computes half precision in
float32, takes its thresholds from ``dtype_limits`` of the computing dtype, and
has custom gradients written from what the forward pass already holds.

The tricks, each where it is used:

* ``e**2 * exp(-s)`` (a squared error scaled by a log-variance ``s``) is
  ``r**2`` with ``r = e * exp(-s/2)``, and ``exp(-s/2)`` is applied as one
  factor, or as two factors ``exp(-s/4)`` where one would overflow or
  underflow (one ``exp`` either way): ``r`` is finite wherever ``r**2`` is,
  and never ``0 * inf`` (:func:`_scaled_square`).
* ``exp(d) - 1 - d`` (the KL's variance term) is a polynomial on
  ``[-1, 2]`` (no cancellation; fitted, degree 8 in float32) and
  ``exp(d) - (1 + d)`` beyond, with ``exp(d) / 2`` as ``exp(d - K) * M``:
  ``d - K`` exact where ``exp`` dominates, and finite while the result is
  (:func:`_half_exp_excess`, :func:`_half_exp`); its slope ``exp(d)/2 - 1/2``
  comes from the same ``exp`` (``d/2 + d^2/4`` near 0), so the polynomial is
  evaluated in the forward pass only.
* ``exp(x) - y x`` (Poisson from a log-rate) is ``scale * (factor - (y / scale) x)``
  with ``exp(x)`` the constant ``exp(shift)`` (``shift`` just below ``k log 2``) times
  ``exp(x - shift)`` above ``log_max - 1``, ``x - shift`` exact
  (``stableops._internal.elementary.scaled_exp``): one ``exp``, no division, finite while
  the result is (:func:`_poisson_log_rate_terms`).
* A variance or a rate is floored at the machine epsilon of the computing
  dtype with a straight-through gradient (:func:`floor_of`).
* A mean over the last axis is a sum of terms weighted by ``1/n`` inside the
  multiplications they already make (:func:`_reciprocal_count`): no overflow
  of the sum where the mean is finite, and no pass of its own.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from stableops._internal.clip import clip
from stableops._internal.compensated import two_difference
from stableops._internal.dtypes import (
    compute_dtype,
    dtype_limits,
    in_dtype,
    to_compute_saturating,
)
from stableops._internal.elementary import exp_minus_log2s, scaled_exp
from stableops._internal.gradients import custom_gradient
from stableops._internal.kernel import xla_kernel
from stableops._internal.polynomials import chebyshev_coefficients, horner, taylor_sum
from stableops._internal.reductions import per_sample_sum
from stableops._internal.where import safe_where

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2PI = math.log(2.0 * math.pi)


def floor_of(dtype) -> float:
    """The variance (Gaussian NLL) and rate (Poisson NLL) floor for inputs of ``dtype``.

    The machine epsilon of the computing dtype: 1.19e-7 for float16, bfloat16
    and float32 inputs (all computed in float32), 2.2e-16 for float64; on the
    scale of PyTorch's fixed ``1e-6``/``1e-8`` but derived from the dtype. Not
    the smallest normal: the gradients ``e**2 / v**2`` and ``y / rate`` at the
    floor must stay finite for ordinary errors and counts (with ``tiny`` an error
    of 2 already overflows ``e**2 / v**2`` in float32; with ``eps`` it takes an
    error of 2.2e12, and the value ``e**2 / v`` one of 6.4e15).
    """
    return dtype_limits(compute_dtype(dtype)).eps


def _floored(x, floor):
    """``max(x, floor)``, NaN kept (``tf.maximum``'s NaN handling depends on the CPU)."""
    return tf.where(x < floor, tf.constant(floor, x.dtype), x)


def _reciprocal_count(x):
    """``1 / n`` for the ``n`` entries of ``x``'s last axis (a Python float where ``n`` is static).

    The losses that average over the last axis fold this weight into the
    multiplications their terms already make and then sum: ``reduce_mean``
    sums first (two terms of -1.7e38 overflowed to ``-inf`` where their mean
    is finite), and a separate multiplication by ``1/n`` before the sum cost a
    sixth of the kernel's time under XLA.
    """
    count = x.shape[-1]
    if count:  # static and not 0 (an empty axis: 1 / 0 = inf in TF, as when not static)
        return 1.0 / count
    return 1.0 / tf.cast(tf.shape(x)[-1], x.dtype)


# ----------------------------------------------------------------------------
# e**2 exp(-s) / 2 without overflow in exp(-s)
# ----------------------------------------------------------------------------


def _exp_half_factors(s):
    """Two factors whose product (applied in order) is ``exp(-s/2)``.

    For ``|s| <= 2 (min(log_max, -log tiny) - 1)`` (172.7 in float32),
    ``(exp(-s/2), 1)``: one normal, finite factor. Beyond, ``(b, b)`` with
    ``b = exp(-s/4)``, its exponent capped at ``log_max - 1`` so that ``b`` is
    finite: ``x * b * b`` then overflows only where ``x exp(-s/2)`` does, and is
    never ``0 * inf``. The cap changes nothing that survives: below it
    (``s < -4 (log_max - 1)``) ``r = e exp(-s/2)`` with a nonzero normal ``e`` is
    beyond the float range either way (``inf``). Above ``s = 4 (-log tiny)``
    ``b`` underflows to 0, where ``r < max exp(-2 (-log tiny))`` is below the
    smallest normal number and ``r**2`` is far below one ULP of ``s/2``.
    The cap is one select (NaN stays NaN); a two-sided clip of ``s`` cost 10%
    of the loss's time under XLA.
    """
    limits = dtype_limits(s.dtype)
    near = tf.abs(s) <= 2.0 * (min(limits.log_max, -math.log(limits.tiny)) - 1.0)
    # One exp: exp(-s/2) where one factor suffices, exp(-s/4) elsewhere.
    exponent = clip(tf.where(near, -0.5 * s, -0.25 * s), high=limits.log_max - 1.0)
    factor = tf.exp(exponent)
    return factor, tf.where(near, tf.ones_like(s), factor)


def _scaled_square(e, s, weight):
    """``weight * e**2 * exp(-s)``, finite wherever the result is (``weight > 0``, a constant).

    Gradient (custom): ``(2 weight e exp(-s), -weight e**2 exp(-s))``, formed as
    ``r = e exp(-s/2)`` times the same factors: finite where the true slopes are
    (``inf`` where they are beyond the float range, never NaN for finite ``e``
    and ``s``).
    """

    @custom_gradient
    def scaled_square(e, s):
        first, second = _exp_half_factors(s)
        r = (e * first) * second  # e exp(-s/2)
        value = weight * (r * r)

        def grad(upstream):
            return upstream * (2.0 * weight) * ((r * first) * second), -upstream * value

        return value, grad

    return scaled_square(e, s)


# ----------------------------------------------------------------------------
# Gaussian negative log-likelihood
# ----------------------------------------------------------------------------


def _nll_variance_terms(error, variance, floor, weight):
    """``weight (log v + e**2 / v)`` with ``v = max(variance, floor)`` (``floor`` a Python float).

    Gradient (custom, straight through the floor, as PyTorch's clamp under
    ``no_grad``): ``weight (2 e / v, (1 - e**2 / v) / v)`` at the floored ``v``;
    a variance below the floor is pushed up whenever ``e**2 > floor``.
    """

    @custom_gradient
    def terms(error, variance):
        v = _floored(variance, floor)
        ratio = error / v
        square = error * ratio  # e**2 / v; e**2 alone overflows first
        value = weight * (tf.math.log(v) + square)

        def grad(upstream):
            return upstream * (2.0 * weight) * ratio, upstream * (weight * (1.0 - square) / v)

        return value, grad

    return terms(error, variance)


@xla_kernel(row_local=True)
def gaussian_nll_kernel(y_true, y_pred, full, log_variance):
    """Per-sample Gaussian NLL; ``y_pred`` holds the means, then the (log-)variances.

    The mean over the last axis of ``0.5 (s + e**2 exp(-s))`` (or of
    ``0.5 (log v + e**2 / v)``), its ``1/n`` folded into the terms' weight.
    """
    dtype = compute_dtype(y_pred.dtype)
    target = tf.cast(y_true, dtype)
    mean, spread = tf.split(to_compute_saturating(y_pred), 2, axis=-1)
    error = target - mean
    weight = 0.5 * _reciprocal_count(spread)
    if log_variance:
        terms = weight * spread + _scaled_square(error, spread, weight)
    else:
        terms = _nll_variance_terms(error, spread, floor_of(y_pred.dtype), weight)
    loss = per_sample_sum(terms)
    return loss + _HALF_LOG_2PI if full else loss


# ----------------------------------------------------------------------------
# KL divergence between diagonal Gaussians
# ----------------------------------------------------------------------------

# The polynomial's interval. Below -1 the direct exp(d) - (1 + d) does not
# cancel: exp(d) < exp(d) - 1 - d, and 1 + d is exact down to -2 (Sterbenz);
# above 2 the cancellation costs at most a factor 2 (2 ULP at d = 2).
_SERIES_LOW, _SERIES_HIGH = -1.0, 2.0
_TAYLOR_RADIUS = max(-_SERIES_LOW, _SERIES_HIGH)  # max |d| on the interval


def _slope_series_radius(dtype: tf.DType) -> float:
    """The power of two ``r`` below which ``expm1(d)/2 = d/2 + d^2/4`` within half an
    ULP of 1/2: the truncation is under ``|d|^3/12 <= eps/4``, so ``r^3 <= 3 eps``
    (2^-8 in float32, 2^-17 in float64)."""
    return 2.0 ** math.floor(math.log2(3.0 * dtype_limits(dtype).eps) / 3.0)


def _half_excess_over_square(d):
    # (exp(d) - 1 - d) / (2 d^2) = sum_k d^k / (2 (k+2)!), in float64: 30
    # terms are exact to 1e-16 for |d| <= 2 (the first omitted is 2^30 / (2 * 32!)).
    return taylor_sum(d, lambda k: 0.5 / math.factorial(k + 2), 30)


@functools.lru_cache(maxsize=None)
def _excess_coefficients(dtype: tf.DType) -> tuple:
    """``c_0, c_1, ...`` with ``(exp(d) - 1 - d)/2 = d^2 (c_0 + c_1 d + ...)`` on ``[-1, 2]``.

    float32 (also for half precision): the fitted polynomial within eps/4
    (degree 8; :mod:`stableops._internal.polynomials`). float64: the Taylor
    coefficients ``1 / (2 (k+2)!)`` up to the degree the tail bound asks for.
    """
    eps = dtype_limits(dtype).eps
    if dtype != tf.float64:
        return chebyshev_coefficients(
            _half_excess_over_square, _SERIES_LOW, _SERIES_HIGH, eps / 4
        )
    # g(d) = (exp(d) - 1 - d) / 2 = sum_{k>=2} d^k / (2 k!). For |d| <= R = 2,
    # g(d) / d^2 is increasing and at least g(-2) / 4 = 0.1419, and the tail
    # after the term k = n is at most R^(n+1) / (2 (n+1)!) / (1 - R/(n+2)); so
    # the relative truncation error is below
    # 3.53 R^(n-1) / ((n+1)! (1 - R/(n+2))). Ask for eps/4: n = 23.
    radius = _TAYLOR_RADIUS
    n = 2
    while 3.53 * radius ** (n - 1) / (math.factorial(n + 1) * (1.0 - radius / (n + 2))) >= eps / 4:
        n += 1
    return tuple(0.5 / math.factorial(k) for k in range(2, n + 1))


@functools.lru_cache(maxsize=None)
def _half_exp_shift(dtype: tf.DType) -> tuple:
    """``(K, M)`` with ``exp(d) / 2 = exp(d - K) * M`` (:func:`_half_exp`).

    ``K`` is ``1 + log 2`` rounded to a multiple of the ULP of the largest
    ``d`` whose ``exp(d) / 2`` is finite (``log_max + log 2``: 2^-17 in
    float32, 2^-43 in float64), so ``d - K`` is exact for every ``d`` from 2
    to there; ``M = exp(K - log 2)``, about ``e``.
    """
    limits = dtype_limits(dtype)
    digits = 1 - round(math.log2(limits.eps))  # 24 (float32), 53 (float64)
    grid = 2.0 ** (math.ceil(math.log2(limits.log_max + math.log(2.0))) - digits)
    shift = round((1.0 + math.log(2.0)) / grid) * grid
    return shift, exp_minus_log2s(shift, 1)


def _half_exp(d):
    """``exp(d) / 2`` as ``exp(d - K) * M`` (:func:`_half_exp_shift`): one ``exp``, no select.

    Finite up to ``d = log_max + log 2``, where ``exp(d) / 2`` overflows, and
    within about 2 ULP from ``d = 2`` up (the argument is exact there; XLA's
    float32 ``exp`` is within 1 ULP below 88, where the argument stays, and up
    to 5 ULP above, TF 2.21 CPU). Below 2 the argument rounds: a relative
    error up to ``|d - K| eps / 2``, which the callers' other terms dwarf
    there (``(1 + d) / 2`` in the value, ``1/2`` in the slope). ``±inf`` and
    NaN pass through.
    """
    shift, factor = _half_exp_shift(d.dtype)
    return tf.exp(d - shift) * factor


@custom_gradient
def _half_exp_excess(d):
    """``(exp(d) - 1 - d) / 2`` to a few ULP for every ``d``; ``inf`` only where the result is.

    A polynomial ``d^2 P(d)`` on ``[-1, 2]`` (no cancellation; fitted in
    float32, Taylor in float64), ``exp(d)/2 - (1 + d)/2`` beyond
    (:func:`_half_exp`), finite up to ``d = log_max + log 2``, where it
    overflows; ``+inf`` at ``d = ±inf`` (``(1 + d)/2`` is capped, so ``+inf``
    never meets ``inf - inf``).
    Gradient (custom): ``expm1(d)/2`` as ``exp(d)/2 - 1/2`` from the value's
    exponential, within a few ULP of the larger of the two terms (of 1/2
    near ``d = 0``, as the hand-written loss's gradient), and ``d/2 + d^2/4``
    below :func:`_slope_series_radius` (2^-8 in float32), so the slope is 0
    at ``d = 0`` and of ``d``'s sign near it. A slope relatively accurate
    everywhere (the value plus ``d/2``) made XLA evaluate the polynomial
    again in the gradient's fusion: 1.09x the hand-written loss's time
    against 1.04x (medians of seven alternating runs in one process, one
    core, 2^20, under XLA; ranges 1.02-1.14 and 1.00-1.06).
    """
    near = tf.logical_and(d >= _SERIES_LOW, d <= _SERIES_HIGH)
    inside = tf.where(near, d, tf.zeros_like(d))
    series = (inside * inside) * horner(inside, _excess_coefficients(d.dtype))
    half_exp = _half_exp(d)
    # Any cap above log_max + log 2 serves (NaN is NaN through half_exp, whatever
    # the CPU's minimum does with it).
    direct = half_exp - 0.5 * (1.0 + tf.minimum(d, 2.0 * dtype_limits(d.dtype).log_max))
    value = tf.where(near, series, direct)
    near_zero = tf.abs(d) < _slope_series_radius(d.dtype)
    slope = tf.where(near_zero, d * (0.5 + 0.25 * d), half_exp - 0.5)

    def grad(upstream):
        return upstream * slope

    return value, grad


@xla_kernel(row_local=True)
def gaussian_kl_kernel(mean, log_variance, prior_mean, prior_log_variance):
    """Per-sample ``KL(N(mean, exp(log_variance)) || N(prior_mean, exp(prior_log_variance)))``."""
    dtype = compute_dtype(mean.dtype)
    mean = to_compute_saturating(mean)
    log_variance = to_compute_saturating(log_variance)
    shape = tf.shape(mean)
    standard_variance = isinstance(prior_log_variance, (int, float)) and prior_log_variance == 0
    prior_mean = tf.broadcast_to(in_dtype(prior_mean, dtype), shape)
    prior_log_variance = tf.broadcast_to(in_dtype(prior_log_variance, dtype), shape)
    if not standard_variance:
        # A constant prior made opaque to XLA (a select on the input, NaN for NaN as before).
        # XLA folds (s - s_p) - K (_half_exp) into s - (s_p + K), a rounding other than the
        # one lo corrects (31 ULP in float64 at s = 29.52, s_p = -3: corrected twice), and
        # _scaled_square's e exp(-s/2) exp(-s/2) into e e exp(-s), which overflows (NaN for
        # e = 1e20 at s = 100, where the term is 49.5).
        prior_log_variance = tf.where(
            tf.math.is_nan(log_variance), log_variance, prior_log_variance
        )
    # 0.5 (exp(d) - 1 - d) + 0.5 (mu - m)^2 exp(-s): both terms >= 0, no cancellation.
    terms = _excess_of_difference(log_variance, prior_log_variance, standard_variance) + (
        _scaled_square(mean - prior_mean, prior_log_variance, 0.5)
    )
    return per_sample_sum(terms)


def _excess_of_difference(log_variance, prior_log_variance, prior_is_zero):
    """:func:`_half_exp_excess` of ``log_variance - prior_log_variance``, the difference exact.

    Rounded, the difference ``d`` carries an error of half its ULP, which ``exp``
    turns into ``|d|`` times as many ULP of the result (64 ULP at ``d = 66``): so
    its rounding ``lo`` (TwoSum) is added back to first order, ``expm1(d) lo / 2``
    (value only; the slope keeps the rounded ``d``). A prior log-variance of the
    number 0 leaves ``d`` exact and skips this.
    """
    if prior_is_zero:
        return _half_exp_excess(log_variance)
    d, lo = two_difference(log_variance, prior_log_variance)
    # expm1(d) / 2, finite up to log_max + log 2 as the value is (expm1(d) is inf past log_max).
    past_range = d > dtype_limits(d.dtype).log_max
    half_expm1 = tf.where(past_range, tf.exp(d - math.log(2.0)), 0.5 * tf.math.expm1(d))
    correction = tf.where(tf.equal(lo, 0.0), tf.zeros_like(lo), half_expm1 * lo)
    return _half_exp_excess(d) + tf.stop_gradient(correction)


# ----------------------------------------------------------------------------
# Poisson negative log-likelihood
# ----------------------------------------------------------------------------


def _poisson_log_rate_terms(count, log_rate, weight):
    """``weight (exp(x) - y x)`` (``weight > 0``, a constant); finite wherever the result is.

    ``exp(x)`` is ``scale * factor`` (:func:`scaled_exp`: the plain ``exp``
    up to ``log_max - 1``, the constant ``exp(shift)`` times ``exp(x - shift)`` above), and
    the terms are ``weight scale (factor - (y / scale) x)``: one ``exp``, no
    division, ``inf`` only where the result is beyond the float range.
    Gradient (custom): ``weight (-x, exp(x) - y)``, the latter formed the same way.
    """

    @custom_gradient
    def terms(count, log_rate):
        exp = scaled_exp(log_rate)
        value = exp.weighted(lambda down: exp.factor - (count * down) * exp.x, weight)
        slope = exp.weighted(lambda down: exp.factor - count * down, weight)

        def grad(upstream):
            return -upstream * (weight * log_rate), upstream * slope

        return value, grad

    return terms(count, log_rate)


def _poisson_rate_terms(count, rate, floor, weight):
    """``weight (rate - y log(max(rate, floor)))``, with ``0 log(.) = 0`` for a zero count.

    Gradient (custom, straight through the floor): ``weight (-log v, 1 - y / v)``,
    ``v = max(rate, floor)``; a rate below the floor with a positive count is
    pushed up.
    """

    @custom_gradient
    def terms(count, rate):
        v = _floored(rate, floor)
        log_v = tf.math.log(v)
        zero = tf.equal(count, 0.0)
        value = weight * (rate - tf.where(zero, tf.zeros_like(log_v), count * log_v))

        def grad(upstream):
            slope = 1.0 - tf.where(zero, tf.zeros_like(v), count / v)
            return -upstream * (weight * log_v), upstream * (weight * slope)

        return value, grad

    return terms(count, rate)


def _stirling(count):
    # PyTorch's Stirling term for counts above 1: y log y - y + log(2 pi y) / 2,
    # written y (log y - 1) + (log y + log 2 pi) / 2 so that 2 pi y cannot overflow.
    def term(y):
        log_y = tf.math.log(y)
        return y * (log_y - 1.0) + 0.5 * (log_y + _LOG_2PI)

    return safe_where(count > 1.0, count, term, 0.0, safe_true=2.0)


@xla_kernel(row_local=True)
def poisson_nll_kernel(y_true, y_pred, log_input, full):
    """Per-sample Poisson NLL from a log-rate (``log_input``) or a rate.

    The mean over the last axis, its ``1/n`` folded into the terms' weight.
    """
    dtype = compute_dtype(y_pred.dtype)
    count = tf.cast(y_true, dtype)
    prediction = to_compute_saturating(y_pred)
    weight = _reciprocal_count(prediction)
    if log_input:
        terms = _poisson_log_rate_terms(count, prediction, weight)
    else:
        terms = _poisson_rate_terms(count, prediction, floor_of(y_pred.dtype), weight)
    if full:
        terms = terms + weight * _stirling(count)
    return per_sample_sum(terms)
