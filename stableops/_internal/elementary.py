"""Elementary functions to about 1 ULP where XLA's are not: ``expm1``, ``log1p``, ``x - log 2``.

XLA's own ``expm1`` is up to 4.4 ULP off in float32 and its float64 ``log1p``
up to 127 ULP (CPU, TF 2.21). These are built on ``exp``, ``log`` and
polynomials whose degrees are derived from the dtype's eps, with the
roundings that matter corrected by error-free transformations
(:mod:`stableops._internal.compensated`). The ops and the loss kernels use them.
"""

from __future__ import annotations

import decimal
import functools
import math
import typing

import numpy as np
import tensorflow as tf

from stableops._internal.clip import clip
from stableops._internal.compensated import two_difference, two_product
from stableops._internal.dtypes import dtype_limits
from stableops._internal.gradients import custom_gradient
from stableops._internal.polynomials import chebyshev_coefficients, horner, taylor_sum
from stableops._internal.where import safe_where

LOG2 = math.log(2.0)
# log 2 to 40 digits, for constants k log 2 split exactly (decimal arithmetic).
_LOG2_DIGITS = decimal.Decimal("0.6931471805599453094172321214581765680755")


def exp_minus_log2s(shift: float, k: int) -> float:
    """``exp(shift - k log 2)`` rounded to a Python float, from 40 digits of log 2.

    For the constants that pair an exact shift with its exponential
    (``exp(x) = exp(x - shift) * 2^k * exp(shift - k log 2)``).
    """
    with decimal.localcontext() as context:
        context.prec = 40
        return float((decimal.Decimal(shift) - k * _LOG2_DIGITS).exp())


@functools.lru_cache(maxsize=None)
def log2_split(dtype: tf.DType):
    """``log 2 = hi + lo`` with ``hi`` exact in ``dtype`` and ``lo`` its remainder."""
    if dtype == tf.float64:
        # hi = log 2 rounded to float64; lo = log 2 - hi (to 53 more bits), so
        # hi + lo is log 2 to 2^-106: enough for x - log 2 when x is the
        # float64 next to log 2 (|x - log 2| ~ 2e-17).
        return LOG2, 2.319046813846299558e-17
    hi = float(dtype.as_numpy_dtype(LOG2))  # float32 rounding of log 2
    return hi, LOG2 - hi  # remainder exact in float64, ample for float32


def minus_log2(x):
    """``x - log 2`` with the constant carried to twice ``x``'s precision.

    ``x - hi`` is exact for ``x`` in ``[hi/2, 2 hi]`` (Sterbenz). ``lo`` enters
    through a data-dependent select so that XLA cannot fold ``(x - hi) - lo``
    into ``x - (hi + lo)`` (it reassociates constants, and ``hi + lo`` rounds
    back to log 2 with the remainder lost). ``±inf`` and NaN pass through.
    """
    hi, lo = log2_split(x.dtype)
    low = tf.where(tf.math.is_finite(x), x * 0.0 + lo, tf.zeros_like(x))
    return (x - hi) - low


@functools.lru_cache(maxsize=None)
def _log2_cody_waite() -> tuple:
    """``log 2 = hi + lo`` with ``hi`` on 42 bits, so that ``k hi`` is exact for ``|k| < 2^11``."""
    hi = math.ldexp(math.floor(math.ldexp(LOG2, 42)), -42)
    return hi, float(_LOG2_DIGITS - decimal.Decimal(hi))


@functools.lru_cache(maxsize=None)
def _reduced_expm1_coefficients() -> tuple:
    # expm1(x) = x (1 + x/2! + ...) for |x| <= log(2)/2 (plus the rounding of k):
    # the remainder after x^n/n! is below 1.1 |x|^(n+1)/(n+1)! and |expm1(x)| >= 0.8 |x|,
    # so the relative truncation error is below 1.4 (0.35)^n / (n+1)!; ask for float64's
    # eps/8: n = 13.
    eps = dtype_limits(tf.float64).eps
    n = 1
    while 1.4 * 0.35**n / math.factorial(n + 1) >= eps / 8.0:
        n += 1
    return tuple(1.0 / math.factorial(k) for k in range(1, n + 1))


# Beyond this a float64 exp(-a) is below the smallest normal number (2^-1022).
_FLOAT64_EXP_END = 1100.0


def split_exp_of_negative(a):
    """``exp(-a)`` of float64 ``a >= 0`` as ``hi + lo``, within about 0.3 ULP of ``hi``.

    XLA's float64 ``exp`` is 1.7 ULP off (CPU, TF 2.21). Here ``a = k log 2 + r``
    with ``|r| <= log(2)/2``: ``k hi`` is exact (``hi`` has 42 bits) and so is
    ``a - k hi`` (Sterbenz); ``r = r_hi + r_low`` exactly (TwoSum with ``k lo``).
    ``exp(-r) = (1 + q) (1 - r_low)`` with ``q = expm1(-r_hi)`` a Taylor polynomial
    (13 terms), ``1 + q = w + w_low`` exactly (Fast2Sum), and ``2^-k`` is built from
    its bits: ``hi = 2^-k w``, ``lo = 2^-k (w_low - w r_low)``. Only the polynomial's
    roundings remain. ``a`` beyond 1100 (``+inf`` included) gives 0; NaN gives NaN.
    Compiled code only: Grappler folds ``(1 - (1 + q)) + q`` to 0 in a plain graph.
    """
    a = tf.where(a > _FLOAT64_EXP_END, tf.constant(_FLOAT64_EXP_END, a.dtype), a)
    log2_hi, log2_lo = _log2_cody_waite()
    k = tf.round(a * (1.0 / LOG2))
    r_hi, r_low = two_difference(a - k * log2_hi, k * log2_lo)
    # q = x + x^2 (1/2! + x/3! + ...) ends in an addition: LLVM may fuse a multiply into
    # it (q only gains), but not into 1 + q, so w_low below is the exact rounding of w.
    x = -r_hi
    q = x + (x * x) * horner(x, _reduced_expm1_coefficients()[1:])
    w = 1.0 + q
    w_low = (1.0 - w) + q
    # 2^-k from its exponent bits; 0 from k = 1023 on (a subnormal: TF flushes them).
    # A NaN k casts to an arbitrary integer: any scale times the NaN w is NaN.
    exponent = tf.maximum(1023 - tf.cast(k, tf.int64), 0)
    scale = tf.bitcast(exponent * (1 << 52), tf.float64)
    return scale * w, scale * (w_low - w * r_low)


# ----------------------------------------------------------------------------
# expm1 and log1p to about 1 ULP
# ----------------------------------------------------------------------------
# XLA's own expm1 is up to 4.4 ULP off in float32 and its float64 log1p up to
# 127 ULP (measured on CPU, TF 2.21, near |v| = 0.41), so the family uses these
# two, built on exp, log and polynomials: expm1 within about 1.6 ULP, log1p
# 0.6 ULP on [-1/2, 1]. They use no tricks that the graph optimizer defeats:
# in tf.function graphs Grappler rewrites log(1 + v) to log1p(v) and folds
# (1 + v) - 1 to v, so Goldberg's log(u) * v / (u - 1) and Kahan's expm1 would
# give different (far worse) answers there than under XLA.


@functools.lru_cache(maxsize=None)
def _expm1_degree(dtype: tf.DType) -> int:
    # For |x| <= 1 the Taylor remainder after x^n/n! is below
    # 1.1 |x|^(n+1)/(n+1)! and |expm1(x)| >= (1 - 1/e)|x|, so the relative
    # truncation error is below 1.74/(n+1)!; ask for eps/4:
    # (n+1)! >= 7/eps gives n = 11 (float32) and n = 18 (float64).
    eps = dtype_limits(dtype).eps
    n = 1
    while math.factorial(n + 1) < 7.0 / eps:
        n += 1
    return n


@functools.lru_cache(maxsize=None)
def _expm1_taylor_coefficients(dtype: tf.DType) -> tuple:
    # 1/1!, 1/2!, ..., 1/n!: expm1(x) = x (1 + x (1/2! + ... + x/n!)).
    return tuple(1.0 / math.factorial(k) for k in range(1, _expm1_degree(dtype) + 1))


def _expm1_taylor(x):
    # Horner form, two operations a term (outside XLA every operation is a
    # pass over the tensor).
    return x * horner(x, _expm1_taylor_coefficients(x.dtype))


def expm1(x):
    """``exp(x) - 1`` to about 1 ULP (|x| <= 1: Taylor polynomial; beyond: exp(x) - 1).

    Above 1 the subtraction loses at most a factor e/(e - 1) = 1.6 of exp's
    error, below -1 nothing. ``+inf`` gives ``inf``, ``-inf`` gives -1, NaN NaN.
    """
    return safe_where(tf.abs(x) <= 1.0, x, _expm1_taylor, lambda t: tf.exp(t) - 1.0)


def _expm1_over_x(x):
    # expm1(x) / x = sum_k x^k / (k+1)!, in float64: 25 terms are exact to
    # 1e-16 for |x| <= 1 (the first omitted is 1 / 26!).
    return taylor_sum(x, lambda k: 1.0 / math.factorial(k + 1), 25)


@functools.lru_cache(maxsize=None)
def _nonpositive_expm1_coefficients(dtype: tf.DType) -> tuple:
    # expm1(x) = x (c_0 + c_1 x + ...) on [-1, 0]: the fitted polynomial within
    # eps/4 in float32 (degree 6, against the Taylor polynomial's 10), the
    # Taylor coefficients in float64.
    if dtype != tf.float64:
        return chebyshev_coefficients(_expm1_over_x, -1.0, 0.0, dtype_limits(dtype).eps / 4)
    return _expm1_taylor_coefficients(dtype)


def expm1_given_exp(x, scaled_exp, scale=1.0):
    """``scale * expm1(x)`` of ``x <= 0`` given ``scaled_exp = scale * exp(x)`` (one exponential
    for value and slope).

    A polynomial on ``[-1, 0]`` (fitted in float32: 7 terms, where the Taylor
    polynomial of :func:`expm1` takes 11 for ``[-1, 1]``), ``scaled_exp - scale``
    below -1 (no cancellation: ``exp(x) < 1/e``), chosen by select: not for differentiating
    through (an overflowing ``scaled_exp`` in the unselected branch would give
    ``0 * inf``), only for kernels that carry their own gradient. Positive
    ``x`` get ``scaled_exp - scale`` (for callers that select them away, as ELU).
    """
    small = tf.logical_and(x >= -1.0, x <= 0.0)
    inside = tf.where(small, x, tf.zeros_like(x))
    polynomial = inside * horner(inside, _nonpositive_expm1_coefficients(x.dtype))
    return tf.where(small, scale * polynomial, scaled_exp - scale)


@functools.lru_cache(maxsize=None)
def _log1p_terms(dtype: tf.DType) -> int:
    # log1p(v) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...), s = v / (2 + v).
    # For v in [-1/2, 1], |s| <= 1/3; the first omitted term relative to the
    # first is below (1/9)^n / (2n + 1); ask for eps/8: n = 7 (float32), 16 (float64).
    eps = dtype_limits(dtype).eps
    n = 1
    while (1.0 / 9.0) ** n / (2 * n + 1) >= eps / 8.0:
        n += 1
    return n


def log1p_as_sum(v, elementwise=False):
    """``log1p(v) = head + rest`` for ``v`` in ``[-1/2, 1]``, unrounded (``|rest| < |head|/20``).

    For a caller that adds ``log1p(v)`` to a number of its size and rounds once
    (``logaddexp`` in float64); :func:`log1p_in_range` is the rounded sum. No gradient.
    """
    # log1p(v) = T (1 + s^2/3 + s^4/5 + ...) with T = 2s = 2v / (2 + v).
    # T is carried as Q + T_low: Q = fl(2v / w) with w = fl(2 + v), and
    # T_low = (rho - Q r) / w, where r = (2 + v) - w and rho = 2v - Q w are
    # exact (TwoSum, Dekker's product), so neither the rounding of 2 + v nor
    # that of the division reaches the result: about 0.6 ULP in every regime
    # (1.5-2.6 ULP without the correction). 2v / w, not 2 (v / w): v / w
    # would underflow for v below 2 tiny. For an elementwise v, Q is 2v times
    # the reciprocal of w (two roundings, which T_low corrects all the same):
    # XLA writes a quotient with several users out as a pass of its own, and
    # fuses a reciprocal with one user. A per-row v keeps the division, which
    # XLA then computes once per row instead of in every element of the row.
    w = 2.0 + v
    rounding = v - (w - 2.0)  # exact: |v| <= 2 (Fast2Sum)
    quotient = (2.0 * v) * tf.math.reciprocal(w) if elementwise else (2.0 * v) / w
    product, product_low = two_product(quotient, w)
    residual = (2.0 * v - product) - product_low  # 2v - Q w, exact
    quotient_low = (residual - quotient * rounding) / w
    tail = atanh_series_tail(0.25 * (quotient * quotient), v.dtype)
    return quotient, quotient * tail + quotient_low * (1.0 + tail)


def _log1p_series(v, elementwise=False):
    head, rest = log1p_as_sum(v, elementwise)
    return head + rest


def atanh_series_tail(s2, dtype):
    """``s^2/3 + s^4/5 + ...`` for ``s^2 <= 1/9``, to ``dtype``'s ``eps / 8`` relative to 1.

    ``log1p(v) = 2s (1 + tail)`` with ``s = v / (2 + v)`` (``v`` in ``[-1/2, 1]``). Horner
    form, two operations a term; ``s2`` may be wider than ``dtype`` (a float64 series to
    float32's precision).
    """
    return s2 * horner(s2, [1.0 / (2 * k + 1) for k in range(1, _log1p_terms(dtype) + 1)])


def log1p_in_range(v, elementwise=False):
    """:func:`accurate_log1p` for ``v`` the caller knows is in ``[-1/2, 1]`` (or NaN).

    The series alone (0.6 ULP), without the range check and the ``log(1 + v)``
    branch that ``accurate_log1p`` evaluates beside it for every element (a
    double where): for ``log1p(exp(-|x|))`` that is one ``log``, a comparison
    and a select per element fewer, and no full-size mask for XLA to write.
    A rounding beyond 1, as ``logaddexp``'s corrected tail can have, changes
    nothing: the series' term count leaves a factor 8 of margin.
    ``elementwise=True`` takes the series' quotient as a reciprocal times the
    numerator, which XLA fuses into the caller's loop, where a divide with
    several users is written out as a pass of its own: binary cross-entropy
    from logits 1.08-1.13 -> 1.01-1.02x Keras's time (under XLA, one core,
    2^20, one process). A measured choice per caller: ``log_cosh`` (through
    ``LogCosh``, one core) 0.79 -> 0.97x at 2^20, where the passes written out
    stay in the cache, and 2.00 -> 0.96x at 2^22, where they do not; per-row
    arguments (the softmax family) keep
    the division, which XLA then computes once per row (fused, the row's
    series joined every element's loop in ``log_softmax``'s HLO).
    Gradient (custom): ``1 / (1 + v)``.
    """

    @custom_gradient
    def core(v):
        def grad(upstream):
            return upstream / (1.0 + v)

        return _log1p_series(v, elementwise), grad

    return core(v)


def accurate_log1p(v):
    """``log(1 + v)``: 0.6 ULP on ``[-1/2, 1]``, in XLA and in TF graphs alike.

    For ``1 + v`` in ``[1/2, 2]``: ``2 atanh(v / (2 + v))`` from its series,
    with the roundings of ``2 + v`` and of the division corrected (see
    :func:`_log1p_series`). Outside, ``log(1 + v)``: the rounding of ``1 + v``
    costs at most ``eps/2`` absolute, under 1 ULP of ``|result| > log 2``.
    ``-1`` gives ``-inf``, ``+inf`` gives ``inf``, below -1 or NaN gives NaN.
    Gradient (custom): ``1 / (1 + v)``, so autodiff never runs through the
    error-free transformations (whose exact-zero derivatives it would
    compute with rounding noise).
    """

    @custom_gradient
    def core(v):
        value = safe_where(
            tf.logical_and(v >= -0.5, v <= 1.0),
            v,
            _log1p_series,
            lambda t: tf.math.log(1.0 + t),
            safe_false=1.0,
        )

        def grad(upstream):
            return upstream / (1.0 + v)

        return value, grad

    return core(v)


# ----------------------------------------------------------------------------
# exp(x) past the overflow threshold, as a power of two times a finite factor
# ----------------------------------------------------------------------------


class ScaledExp(typing.NamedTuple):
    """``exp(x) = scale * factor`` where ``large``, ``factor`` elsewhere."""

    factor: tf.Tensor  # exp(x - shift) where large, exp(x) elsewhere: finite
    large: tf.Tensor  # where x > log_max - 1
    x: tf.Tensor  # x, clamped at 2 shift (where every caller's result is inf)
    scale: float  # exp(shift), at most 2^k: finite
    down: float  # 1 / scale, at least 2^-k: a normal number

    def weighted(self, terms, weight=1.0):
        """``weight * scale * terms(1 / scale)`` where ``large``, ``weight * terms(1)`` elsewhere.

        ``terms(down)`` writes an expression in ``exp(x)`` with ``factor`` for
        ``exp(x)`` and every other term multiplied by ``down``: ``exp(x) - c``
        is ``lambda down: factor - c * down``. Both forms are computed (two
        multiplications more) and one is selected, with the scales as
        constants: cheaper under XLA than selecting the scales per element.
        """
        return tf.where(
            self.large, (weight * self.scale) * terms(self.down), weight * terms(1.0)
        )


@functools.lru_cache(maxsize=None)
def _exp_scaling(dtype: tf.DType):
    """``(shift, scale)``: ``k log 2`` rounded down to ``dtype``, and ``exp(shift)``.

    ``2^-k`` is the smallest normal power of two (``k = 126`` in float32,
    1022 in float64: ``shift`` = 87.3 and 708.4, just below ``log_max``).
    ``x - shift`` is exact (Sterbenz) for ``shift/2 <= x <= 2 shift``, the
    range the large branch of :func:`scaled_exp` covers, so the factor
    ``exp(x - shift)`` has only ``exp``'s own rounding; ``scale`` (from 40
    digits of log 2) is ``2^k exp(shift - k log 2) <= 2^k``, so ``1/scale``
    is a normal number (a subnormal would be flushed to 0).
    """
    limits = dtype_limits(dtype)
    k = round(-math.log2(limits.tiny))
    exact = k * _LOG2_DIGITS
    shift = dtype.as_numpy_dtype(float(exact))
    if decimal.Decimal(float(shift)) > exact:
        shift = np.nextafter(shift, dtype.as_numpy_dtype(0))
    shift = float(shift)
    return shift, exp_minus_log2s(shift, k) * 2.0**k  # exp(shift - k log 2) <= 1


def scaled_exp(x) -> ScaledExp:
    """``exp(x)`` as ``scale * factor`` above ``log_max - 1``; ``factor`` finite up to ``2 shift``.

    Below ``log_max - 1`` (where ``exp`` cannot overflow) ``factor = exp(x)``:
    the plain ``exp``, one rounding. Above, ``factor = exp(x - shift)`` with
    ``x - shift`` exact and ``scale = exp(shift)`` a constant near ``2^k``
    (:func:`_exp_scaling`): within about 1 ULP of ``exp(x) / scale`` (float32,
    measured against mpmath up to ``x = 174``; a Cody-Waite reduction
    ``(x - hi) - lo`` rounded the reduced argument: 52 ULP there, and one
    more multiplication and addition per element). A caller forms
    ``exp(x) - c`` as ``scale (factor - c / scale)``
    (:meth:`ScaledExp.weighted`): finite wherever the result is, with one
    ``exp`` and no division. ``x`` is clamped at ``2 shift`` (174.7 in
    float32), beyond which ``exp(x)`` exceeds the largest float by more than
    any finite ``c x`` can take back; the clamped ``x`` is returned for the
    caller's other terms. NaN stays NaN.
    """
    shift, scale = _exp_scaling(x.dtype)
    limits = dtype_limits(x.dtype)
    x = clip(x, high=2.0 * shift)  # NaN stays NaN
    large = x > limits.log_max - 1.0
    factor = tf.exp(tf.where(large, x - shift, x))
    return ScaledExp(factor, large, x, scale, 1.0 / scale)
