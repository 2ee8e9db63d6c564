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
  and never ``0 * inf`` (:func:`_half_scaled_square`).
* ``exp(d) - 1 - d`` (the KL's variance term) is a Taylor series for
  ``|d| <= 2`` (no cancellation) and ``exp(d) - (1 + d)`` beyond, with
  ``exp(d)`` as a power of two times a finite factor above ``log_max - 1``
  (``stableops._internal.elementary.scaled_exp``), finite while the result is
  (:func:`_half_exp_excess`); its slope comes from the value.
* ``exp(x) - y x`` (Poisson from a log-rate) is ``scale * (factor - (y / scale) x)``
  with the same split of ``exp(x)``: one ``exp``, no division, finite while
  the result is (:func:`_poisson_log_rate_terms`).
* A variance or a rate is floored at the machine epsilon of the computing
  dtype with a straight-through gradient (:func:`floor_of`).
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from stableops._internal.clip import clip
from stableops._internal.dtypes import (
    compute_dtype,
    dtype_limits,
    to_compute_saturating,
)
from stableops._internal.elementary import scaled_exp
from stableops._internal.kernel import xla_kernel
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


def _mean_last_axis(terms):
    """The mean over the last axis, each term scaled by ``1/count`` first.

    ``reduce_mean`` sums first: two terms of -1.7e38 overflowed to ``-inf``
    where their mean is finite. A multiplication by the reciprocal, not a
    division per term (a tenth of the kernel's time); it adds at most one
    rounding, none when the count is a power of two.
    """
    return tf.reduce_sum(terms * (1.0 / tf.cast(tf.shape(terms)[-1], terms.dtype)), axis=-1)


# ----------------------------------------------------------------------------
# e**2 exp(-s) / 2 without overflow in exp(-s)
# ----------------------------------------------------------------------------


def _exp_half_factors(s):
    """Two factors whose product (applied in order) is ``exp(-s/2)``.

    For ``|s| <= 2 (min(log_max, -log tiny) - 1)`` (172.7 in float32),
    ``(exp(-s/2), 1)``: one normal, finite factor. Beyond, ``(b, b)`` with
    ``b = exp(-s/4)``, ``s`` clipped to ``[-4 (log_max - 1), 4 (-log tiny - 1)]``
    so that ``b`` is a finite normal number: ``x * b * b`` then overflows or
    underflows only where ``x exp(-s/2)`` does, and is never ``0 * inf``. The
    clip changes nothing that survives: below it ``r = e exp(-s/2)`` with a
    nonzero normal ``e`` is beyond the float range either way (``inf``), above it
    ``r**2 < max**2 exp(-4 (-log tiny - 1))``, far below one ULP of ``s/2``.
    """
    limits = dtype_limits(s.dtype)
    log_tiny = math.log(limits.tiny)
    near = tf.abs(s) <= 2.0 * (min(limits.log_max, -log_tiny) - 1.0)
    clipped = clip(s, -4.0 * (limits.log_max - 1.0), 4.0 * (-log_tiny - 1.0))
    # One exp: exp(-s/2) where one factor suffices, exp(-s/4) elsewhere.
    factor = tf.exp(tf.where(near, -0.5 * s, -0.25 * clipped))
    return factor, tf.where(near, tf.ones_like(s), factor)


@tf.custom_gradient
def _half_scaled_square(e, s):
    """``0.5 * e**2 * exp(-s)``, finite wherever the result is.

    Gradient (custom): ``(e exp(-s), -0.5 e**2 exp(-s))``, formed as ``r``
    times the same factors: finite where the true slopes are (``inf`` where they
    are beyond the float range, never NaN for finite ``e`` and ``s``).
    """
    first, second = _exp_half_factors(s)
    r = (e * first) * second  # e exp(-s/2)
    half_square = 0.5 * (r * r)

    def grad(upstream):
        return upstream * ((r * first) * second), -upstream * half_square

    return half_square, grad


# ----------------------------------------------------------------------------
# Gaussian negative log-likelihood
# ----------------------------------------------------------------------------


def _nll_variance_terms(error, variance, floor):
    """``0.5 (log v + e**2 / v)`` with ``v = max(variance, floor)`` (``floor`` a Python float).

    Gradient (custom, straight through the floor, as PyTorch's clamp under
    ``no_grad``): ``(e / v, 0.5 (1 - e**2 / v) / v)`` at the floored ``v``; a
    variance below the floor is pushed up whenever ``e**2 > floor``.
    """

    @tf.custom_gradient
    def terms(error, variance):
        v = _floored(variance, floor)
        ratio = error / v
        square = error * ratio  # e**2 / v; e**2 alone overflows first
        value = 0.5 * (tf.math.log(v) + square)

        def grad(upstream):
            return upstream * ratio, upstream * (0.5 * (1.0 - square) / v)

        return value, grad

    return terms(error, variance)


@xla_kernel
def gaussian_nll_kernel(y_true, y_pred, full, log_variance):
    """Per-sample Gaussian NLL; ``y_pred`` holds the means, then the (log-)variances."""
    dtype = compute_dtype(y_pred.dtype)
    target = tf.cast(y_true, dtype)
    mean, spread = tf.split(to_compute_saturating(y_pred), 2, axis=-1)
    error = target - mean
    if log_variance:
        terms = 0.5 * spread + _half_scaled_square(error, spread)
    else:
        terms = _nll_variance_terms(error, spread, floor_of(y_pred.dtype))
    if full:
        terms = terms + _HALF_LOG_2PI
    return _mean_last_axis(terms)


# ----------------------------------------------------------------------------
# KL divergence between diagonal Gaussians
# ----------------------------------------------------------------------------

_SERIES_RADIUS = 2.0


@functools.lru_cache(maxsize=None)
def _excess_degree(dtype: tf.DType) -> int:
    # g(d) = (exp(d) - 1 - d) / 2 = sum_{k>=2} d^k / (2 k!). For |d| <= R = 2,
    # g(d) / d^2 is increasing and at least g(-2) / 4 = 0.1419, and the tail
    # after the term k = n is at most R^(n+1) / (2 (n+1)!) / (1 - R/(n+2)); so
    # the relative truncation error is below
    # 3.53 R^(n-1) / ((n+1)! (1 - R/(n+2))). Ask for eps/4:
    # n = 14 (float32), n = 23 (float64).
    eps = dtype_limits(dtype).eps
    radius = _SERIES_RADIUS
    n = 2
    while 3.53 * radius ** (n - 1) / (math.factorial(n + 1) * (1.0 - radius / (n + 2))) >= eps / 4:
        n += 1
    return n


def _excess_series(d):
    # d^2 (c_2 + d (c_3 + ... + d c_n)), c_k = 1 / (2 k!): Horner form, from c_n down.
    coefficients = [0.5 / math.factorial(k) for k in range(_excess_degree(d.dtype), 1, -1)]
    horner = functools.reduce(lambda acc, c: c + d * acc, coefficients[1:], coefficients[0])
    return (d * d) * horner


@tf.custom_gradient
def _half_exp_excess(d):
    """``(exp(d) - 1 - d) / 2`` to a few ULP for every ``d``; ``inf`` only where the result is.

    A Taylor series for ``|d| <= 2`` (no cancellation), ``exp(d)/2 - (1 + d)/2``
    beyond, with ``exp(d)`` as ``scale * factor`` (:func:`scaled_exp`), so the
    value is finite up to ``d = log_max + log 2``, where it overflows.
    Gradient (custom): ``expm1(d)/2``, from what the value holds: the value
    plus ``d/2`` for ``d >= -1`` (no cancellation above 0; at most a factor 2.2
    below), ``(exp(d) - 1)/2`` under -1 (no cancellation there).
    """
    exp = scaled_exp(d)
    near = tf.abs(d) <= _SERIES_RADIUS
    series = _excess_series(tf.where(near, d, tf.zeros_like(d)))
    direct = exp.scale * (0.5 * exp.factor - exp.down * (0.5 * (1.0 + exp.x)))
    value = tf.where(near, series, direct)
    slope = tf.where(d < -1.0, 0.5 * (exp.factor - 1.0), value + 0.5 * d)

    def grad(upstream):
        return upstream * slope

    return value, grad


@xla_kernel
def gaussian_kl_kernel(mean, log_variance, prior_mean, prior_log_variance):
    """Per-sample ``KL(N(mean, exp(log_variance)) || N(prior_mean, exp(prior_log_variance)))``."""
    dtype = compute_dtype(mean.dtype)
    mean = to_compute_saturating(mean)
    log_variance = to_compute_saturating(log_variance)
    shape = tf.shape(mean)
    prior_mean = tf.broadcast_to(tf.cast(prior_mean, dtype), shape)
    prior_log_variance = tf.broadcast_to(tf.cast(prior_log_variance, dtype), shape)
    # 0.5 (exp(d) - 1 - d) + 0.5 (mu - m)^2 exp(-s): both terms >= 0, no cancellation.
    terms = _half_exp_excess(log_variance - prior_log_variance) + _half_scaled_square(
        mean - prior_mean, prior_log_variance
    )
    return tf.reduce_sum(terms, axis=-1)


# ----------------------------------------------------------------------------
# Poisson negative log-likelihood
# ----------------------------------------------------------------------------


@tf.custom_gradient
def _poisson_log_rate_terms(count, log_rate):
    """``exp(x) - y x``; finite wherever the result is.

    ``exp(x)`` is ``scale * factor`` (:func:`scaled_exp`: the plain ``exp``
    up to ``log_max - 1``, a power of two times ``exp(x - k log 2)`` above), and
    the terms are ``scale * (factor - (y / scale) x)``: one ``exp``, no
    division, ``inf`` only where the result is beyond the float range.
    Gradient (custom): ``(-x, exp(x) - y)``, the latter formed the same way.
    """
    exp = scaled_exp(log_rate)
    value = exp.scale * (exp.factor - (count * exp.down) * exp.x)
    slope = exp.scale * (exp.factor - count * exp.down)

    def grad(upstream):
        return -upstream * log_rate, upstream * slope

    return value, grad


def _poisson_rate_terms(count, rate, floor):
    """``rate - y log(max(rate, floor))``, with ``0 log(.) = 0`` for a zero count.

    Gradient (custom, straight through the floor): ``(-log v, 1 - y / v)``,
    ``v = max(rate, floor)``; a rate below the floor with a positive count is
    pushed up.
    """

    @tf.custom_gradient
    def terms(count, rate):
        v = _floored(rate, floor)
        log_v = tf.math.log(v)
        zero = tf.equal(count, 0.0)
        value = rate - tf.where(zero, tf.zeros_like(log_v), count * log_v)

        def grad(upstream):
            slope = 1.0 - tf.where(zero, tf.zeros_like(v), count / v)
            return -upstream * log_v, upstream * slope

        return value, grad

    return terms(count, rate)


def _stirling(count):
    # PyTorch's Stirling term for counts above 1: y log y - y + log(2 pi y) / 2,
    # written y (log y - 1) + (log y + log 2 pi) / 2 so that 2 pi y cannot overflow.
    def term(y):
        log_y = tf.math.log(y)
        return y * (log_y - 1.0) + 0.5 * (log_y + _LOG_2PI)

    return safe_where(count > 1.0, count, term, 0.0, safe_true=2.0)


@xla_kernel
def poisson_nll_kernel(y_true, y_pred, log_input, full):
    """Per-sample Poisson NLL from a log-rate (``log_input``) or a rate."""
    dtype = compute_dtype(y_pred.dtype)
    count = tf.cast(y_true, dtype)
    prediction = to_compute_saturating(y_pred)
    if log_input:
        terms = _poisson_log_rate_terms(count, prediction)
    else:
        terms = _poisson_rate_terms(count, prediction, floor_of(y_pred.dtype))
    if full:
        terms = terms + _stirling(count)
    return _mean_last_axis(terms)
