"""The elementwise log/exp family: log-space sigmoid and softplus, logaddexp, log1mexp, log_cosh.

Every op computes half precision in float32 and returns the input dtype, takes
its switch points from ``dtype_limits`` of the dtype it computes in, guards each
branch with ``safe_where`` and, where autodiff of the stable forward formula
would give NaN/inf or waste work, carries a custom gradient whose convention is
stated in its docstring.

Accuracy: ``expm1`` and ``log1p`` come from ``stableops._internal.elementary``
(Taylor and atanh series with degrees derived from eps) because XLA's are up
to 4.4 ULP (float32) and 127 ULP (float64 log1p) off on CPU; each op's budget
(at most 4 ULP in float32/float64, 1 ULP for half precision) is what two or
three ~1-2 ULP exp/log primitives compose to, and is enforced by
tests/test_ops_logexp.py.

Each op is an ``@xla_kernel`` itself (the row reductions are in ``_softmax``).
"""

from __future__ import annotations

import fractions
import functools
import math

import numpy as np
import tensorflow as tf

from stableops._internal.checks import as_float_tensor, float_pair
from stableops._internal.compensated import float32_split, two_difference
from stableops._internal.dtypes import dtype_limits, to_compute
from stableops._internal.elementary import (
    LOG2,
    accurate_log1p,
    expm1,
    log1p_as_sum,
    log1p_in_range,
    minus_log2,
    split_exp_of_negative,
)
from stableops._internal.gradients import custom_gradient
from stableops._internal.kernel import xla_kernel
from stableops._internal.polynomials import chebyshev_coefficients, horner, taylor_sum
from stableops._internal.where import safe_where


def _sigmoid(x):
    # exp(-|x|) <= 1: neither branch can overflow; accurate in both tails (|x| as a select:
    # with abs, softplus's second derivative at 0 was 0, for 1/4).
    e = tf.exp(-_magnitude(x))
    return tf.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@custom_gradient
def _softplus_core(x):
    # max(x, 0) + log1p(exp(-|x|)): exp(-|x|) <= 1 cannot overflow, and for
    # x << 0 the result is log1p(exp(x)) = exp(x) to full relative accuracy.
    value = tf.maximum(x, 0.0) + log1p_in_range(tf.exp(-tf.abs(x)))

    def grad(upstream):
        return upstream * _sigmoid(x)  # d softplus = sigmoid, 1/2 at 0

    return value, grad


@xla_kernel(elementwise=True)
def softplus(x):
    """``log(1 + exp(x))`` without overflow, accurate in both tails.

    Formula:
        ``max(x, 0) + log1p(exp(-|x|))``.

    Numerical stability:
        ``exp(-|x|)`` is at most 1, so nothing overflows at large ``x``
        (``softplus(1e4) = 1e4``); at very negative ``x`` the result is
        ``exp(x)`` with full relative accuracy (``softplus(-100) = 3.7e-44``
        in float64, not 0). ``softplus(+inf) = inf``, ``softplus(-inf) = 0``,
        NaN gives NaN. Gradient (custom): ``sigmoid(x)``, computed from
        ``exp(-|x|)``; exactly 1/2 at 0 (autodiff of ``max`` would give 1).
        Error budget: 2 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16.

    Args:
        x: floating tensor.

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> softplus(tf.constant([-100.0, 0.0, 100.0], tf.float64)).numpy()
        array([3.72007598e-44, 6.93147181e-01, 1.00000000e+02])
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_softplus_core(to_compute(x)), x.dtype)


@xla_kernel(elementwise=True)
def log_sigmoid(x):
    """``log(sigmoid(x))``, the log-probability of a logit, without ``log(0)``.

    Formula:
        ``-softplus(-x) = min(x, 0) - log1p(exp(-|x|))``.

    Numerical stability:
        As :func:`softplus`: no overflow (``log_sigmoid(-1e4) = -1e4``, where
        ``log(sigmoid(x))`` gives ``-inf``) and ``-exp(-x)`` to full relative
        accuracy for large ``x``. ``log_sigmoid(-inf) = -inf``,
        ``log_sigmoid(+inf) = 0``, NaN gives NaN. Gradient (custom, via
        softplus): ``sigmoid(-x)``, 1/2 at 0.
        Error budget: 2 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16.

    Args:
        x: floating tensor (logits).

    Returns:
        A tensor of ``x``'s dtype and shape, all values ``<= 0``.

    Example:
        >>> log_sigmoid(tf.constant([-200.0, 0.0, 30.0])).numpy()
        array([-2.000000e+02, -6.931472e-01, -9.357623e-14], dtype=float32)
    """
    x = as_float_tensor(x, "x")
    return tf.cast(-_softplus_core(-to_compute(x)), x.dtype)


# ----------------------------------------------------------------------------
# logaddexp, log1mexp, softplus_inverse, log_cosh
# ----------------------------------------------------------------------------


def _logaddexp_weights(difference, tail):
    """``(sigmoid(d), sigmoid(-d))`` from ``d`` and ``tail = exp(-|d|)``: 1/2 each at 0."""
    large = 1.0 / (1.0 + tail)
    small = tail * large
    ahead = difference >= 0
    return tf.where(ahead, large, small), tf.where(ahead, small, large)


def _tie_safe(same, x, y):
    """``x`` and ``y`` with equal infinities replaced by 0: their difference is 0, not
    ``inf - inf = nan``. A finite tie keeps ``x - y`` (0) and its slopes ``1, -1``: a select
    of a constant 0 there made the second derivatives at ``x == y`` 0 (for ``1/4``)."""
    infinite_tie = tf.logical_and(same, tf.math.is_inf(x))
    zero = tf.zeros_like(x)
    return tf.where(infinite_tie, zero, x), tf.where(infinite_tie, zero, y)


def _magnitude(d):
    """``|d|`` as a select, whose slope at 0 is 1 (``abs``'s is 0: a second derivative
    through it lost its term at ``d = 0``)."""
    return tf.where(d >= 0, d, -d)


@custom_gradient
def _logaddexp_core(x, y):
    # float64 inputs; float32 (and half precision) take _logaddexp_float32.
    same = tf.equal(x, y)
    difference, rounding = two_difference(*_tie_safe(same, x, y))
    # |x - y| = |difference| + sign(difference) rounding exactly (TwoSum), and
    # exp(-|x - y|) = tail + tail_low to about 0.3 ULP (XLA's float64 exp: 1.7),
    # with the first-order term of the rounding: it would cost |x - y| eps/2.
    tail, exp_low = split_exp_of_negative(_magnitude(difference))
    rounding = tf.sign(difference) * rounding
    tail_low = exp_low - tail * rounding
    # max + log1p(tail + tail_low) rounded once: the maximum and the series' head
    # summed exactly (TwoSum), every low part added to its rounding error.
    head, rest = log1p_as_sum(tail)  # tail in [0, 1]
    total, total_low = two_difference(tf.maximum(x, y), -head)
    value = total + (total_low + (rest + tail_low / (1.0 + tail)))
    both_minus_inf = tf.logical_and(same, tf.equal(x, tf.constant(-math.inf, x.dtype)))

    def grad(upstream):
        # d/dx = sigmoid(x - y), d/dy = sigmoid(y - x); 1/2 each when x == y,
        # 0 when both are -inf (as logsumexp of an all -inf row).
        # From the tail corrected for the rounding of x - y: sigmoid(difference) is
        # |x - y| eps / 2 off relatively in the small weight (331 ULP at 700.3, 0.7). As a
        # factor: below 1e-292 tail * rounding is subnormal, flushed to 0.
        weight_x, weight_y = _logaddexp_weights(difference, tail * (1.0 - rounding) + exp_low)
        zero = tf.zeros_like(x)
        return (
            upstream * tf.where(both_minus_inf, zero, weight_x),
            upstream * tf.where(both_minus_inf, zero, weight_y),
        )

    return value, grad


@functools.lru_cache(maxsize=None)
def _log1p_over_x_coefficients() -> tuple:
    """float64 monomial coefficients of ``log1p(v) / v`` on ``[0, 1]``, within 2^-30 relative.

    The Chebyshev interpolant of the lowest degree within the tolerance
    (degree 10); ``polynomials.chebyshev_coefficients`` rounds its
    coefficients to float32, too coarse for this one.
    """
    grid = np.linspace(0.0, 1.0, 4097)

    def log1p_over_x(v):
        v = np.asarray(v, np.float64)
        return np.log1p(v) / np.where(v == 0.0, 1.0, v) + (v == 0.0)

    for degree in range(1, 30):
        fitted = np.polynomial.Chebyshev.interpolate(log1p_over_x, degree, domain=[0.0, 1.0])
        coefficients = fitted.convert(
            kind=np.polynomial.Polynomial, domain=[0.0, 1.0], window=[0.0, 1.0]
        ).coef
        fit = np.polynomial.Polynomial(coefficients)(grid)
        if np.max(np.abs(fit / log1p_over_x(grid) - 1.0)) <= 2.0**-30:
            return tuple(float(c) for c in coefficients)
    raise AssertionError("no polynomial of degree < 30 fits log1p(v) / v on [0, 1]")


# Beyond this |x - y| the float32 tail exp(-|x - y|) is 0 (flushed below 1e-38).
_FLOAT32_TAIL_END = 128.0


@custom_gradient
def _logaddexp_float32(x, y):
    """``max + log1p(exp(-|x - y|))`` of float32 inputs, formed in float64, rounded once.

    The float32 formula (``_logaddexp_core``) is 4.5 ULP off at worst (AVX-512;
    x = -5.845205, y = -0.00094287144): ``exp`` (within 1 ULP under XLA) and the
    compensated ``log1p`` series (whose error-free products lose their exactness
    where LLVM fuses a multiply-add) each add about an ULP of the tail, and a
    negative maximum cancels up to half of it. Here ``x - y`` is exact in
    float64, its rounding to float32 (the argument of the float32 ``exp``, split
    off exactly by ``float32_split``) corrects the tail in float64 to first order
    (``exp(-a) = exp(-fl(a)) (1 - (a - fl(a)))``, ``|a - fl(a)| <= 2^-18`` where
    the tail is not 0), and
    ``log1p`` of the tail is a float64 polynomial within 2^-30: only ``exp``'s
    ULP and the final rounding remain (2.3 ULP measured). One float32 ``exp``
    (a float64 ``exp``: 1.45x Keras's time under XLA, a float64 ``log1p``: 4.5x)
    and 11 float64 multiply-adds; value and gradient at 2^20, one core, against
    Keras: under XLA 0.97 -> 1.01x (the float32 formula's time), in a plain
    ``tf.function`` 0.35 -> 0.43x.
    """
    wide = tf.float64
    same = tf.equal(x, y)
    x_wide, y_wide = tf.cast(x, wide), tf.cast(y, wide)
    tie_safe_x, tie_safe_y = _tie_safe(same, x_wide, y_wide)
    exact = tie_safe_x - tie_safe_y
    distance = _magnitude(exact)
    # A select (NaN stays NaN): an infinite distance would make its rounding inf - inf.
    end = tf.constant(_FLOAT32_TAIL_END, wide)
    distance = tf.where(distance > end, end, distance)
    high, low = float32_split(distance)
    tail32 = tf.exp(-tf.cast(high, x.dtype))
    tail = tf.cast(tail32, wide) * (1.0 - low)
    log1p_tail = tail * horner(tail, _log1p_over_x_coefficients())
    value = tf.cast(tf.maximum(x_wide, y_wide) + log1p_tail, x.dtype)
    both_minus_inf = tf.logical_and(same, tf.equal(x, tf.constant(-math.inf, x.dtype)))

    def grad(upstream):
        # sigmoid(x - y) and sigmoid(y - x) from the corrected tail (the float32 one
        # carries the rounding of x - y: 29 ULP of the small weight at 80.3, 0.7); 1/2
        # each when x == y, 0 when both are -inf (as logsumexp of an all -inf row).
        weight_x, weight_y = _logaddexp_weights(tf.cast(exact, x.dtype), tf.cast(tail, x.dtype))
        zero = tf.zeros_like(x)
        return (
            upstream * tf.where(both_minus_inf, zero, weight_x),
            upstream * tf.where(both_minus_inf, zero, weight_y),
        )

    return value, grad


@xla_kernel
def logaddexp(x, y):
    """``log(exp(x) + exp(y))`` without overflow.

    Formula:
        ``max(x, y) + log1p(exp(-|x - y|))``.

    Numerical stability:
        ``exp(-|x - y|)`` is at most 1. ``x == y`` (including both ``+inf`` or
        both ``-inf``) uses difference 0, so ``logaddexp(x, x) = x + log 2``
        and infinities give the same infinity instead of ``inf - inf = nan``.
        ``logaddexp(-inf, y) = y``; NaN in either gives NaN.
        Gradient (custom): ``(sigmoid(x - y), sigmoid(y - x))``; ``(1/2, 1/2)``
        when ``x == y`` and ``(0, 0)`` when both are ``-inf``. Each weight, the
        small one too, within a few ULP of itself: from ``exp(-|x - y|)``
        corrected for the rounding of ``x - y``.
        Error budget, in ULPs of ``max(|result|, |max(x, y)|)`` (cancellation
        between a negative maximum and the ``log1p`` term is the input's
        conditioning): 3 in float32, formed in float64 and rounded once (see
        ``_logaddexp_float32``: 2.3 measured against mpmath in 5e6 random
        pairs, 4.5 with the float32 formula); 2 in float64, where
        ``exp(-|x - y|)`` is a sum of two parts to 0.3 ULP
        (``split_exp_of_negative``; XLA's float64 ``exp`` is 1.7 ULP off)
        and the maximum, ``log1p``'s terms and every low part are summed
        before one rounding (1.04 measured in 4e6 random pairs, 4.7 with
        XLA's ``exp``); 1 ULP of the float32 result for float16/bfloat16.

    Args:
        x: floating tensor.
        y: tensor of the same dtype, broadcastable with ``x`` (a Python number,
            on either side, takes the other's dtype).

    Returns:
        A tensor of the common dtype and the broadcast shape.

    Raises:
        TypeError: if either input is not floating or their dtypes differ.

    Example:
        >>> float(logaddexp(tf.constant(1000.0), tf.constant(1000.0)))
        1000.6931...
    """
    x, y = float_pair(x, y, "x", "y")
    shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
    x_c = tf.broadcast_to(to_compute(x), shape)
    y_c = tf.broadcast_to(to_compute(y), shape)
    core = _logaddexp_core if x_c.dtype == tf.float64 else _logaddexp_float32
    return tf.cast(core(x_c, y_c), x.dtype)


@custom_gradient
def _log1mexp_core(x):
    a = tf.abs(x)
    # Switch at log 2 (Maechler 2012, as TFP's math/generic.py): below it
    # 1 - exp(-a) is small and -expm1(-a) keeps its relative accuracy;
    # above it exp(-a) < 1/2 and log1p(-exp(-a)) keeps the result's.
    # Each branch gets 1 in place of the other side's inputs (finite there).
    value = safe_where(
        a < LOG2,
        a,
        lambda t: tf.math.log(-expm1(-t)),
        lambda t: accurate_log1p(-tf.exp(-t)),
        safe_true=1.0,
        safe_false=1.0,
    )

    def grad(upstream):
        # d/dx log(1 - exp(-|x|)) = sign(x) / expm1(|x|). At x = ±0 the
        # value is -inf and the gradient is 1/x = ±inf (the one-sided
        # limit on the side of the zero's sign), never NaN.
        slope = safe_where(
            tf.equal(a, 0.0),
            x,
            lambda t: 1.0 / t,
            lambda t: tf.sign(t) / tf.math.expm1(tf.abs(t)),
            safe_true=1.0,
            safe_false=1.0,
        )
        return upstream * slope

    return value, grad


@xla_kernel(elementwise=True)
def log1mexp(x):
    """``log(1 - exp(-|x|))``, TFP's convention: an even function of ``x``.

    Formula:
        ``log(-expm1(-|x|))`` for ``|x| < log 2``, ``log1p(-exp(-|x|))`` above.

    Numerical stability:
        Sign convention (TFP, ``tfp.math.log1mexp``): the input's sign is
        ignored, so ``log1mexp(x) = log1mexp(-x)``; to get ``log(1 - exp(v))``
        for a log-probability ``v <= 0`` pass ``v`` itself. The switch at
        ``log 2`` (Maechler 2012) keeps each branch where it is accurate.
        ``log1mexp(0) = -inf`` (``log(1 - 1)``) with gradient ``+inf`` at
        ``+0.`` and ``-inf`` at ``-0.`` (never NaN); ``log1mexp(±inf) = 0``;
        NaN gives NaN. Gradient (custom): ``sign(x) / expm1(|x|)``, finite for
        every finite nonzero ``x``.
        Error budget: 3 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16.

    Args:
        x: floating tensor.

    Returns:
        A tensor of ``x``'s dtype and shape, all values ``<= 0``.

    Example:
        >>> log1mexp(tf.constant([1e-10, 0.5, 40.0], tf.float64)).numpy()
        array([-2.30258509e+01, -9.32752130e-01, -4.24835426e-18])
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_log1mexp_core(to_compute(x)), x.dtype)


@xla_kernel(elementwise=True)
def softplus_inverse(x):
    """The inverse of :func:`softplus`: ``log(exp(x) - 1)`` for ``x > 0``.

    Formula:
        ``log(expm1(x))`` below ``log 1.5``, ``log1p(2 expm1(x - log 2))``
        from ``log 1.5`` to ``log 3`` (around the root ``x = log 2``),
        ``x + log(-expm1(-x))`` above (= ``log(expm1(x))`` without overflow),
        with ``log(x)`` below ``eps`` and ``x`` above ``-log(eps)``.

    Numerical stability:
        ``log(expm1(x))`` overflows for ``x > log(max)``; ``x + log(-expm1(-x))``
        does not. Switch points, from the machine ``eps`` of the computing
        dtype (float32 for half precision), as in TFP's ``math/generic.py``:
          * ``x < eps``: ``log(expm1(x)) = log(x) + x/2 + O(x^2)``; the dropped
            ``x/2 < eps/2`` is below 1/16 ULP of ``|log x| > -log(eps) > 8``.
          * ``x > -log(eps)``: ``log(expm1(x)) = x + log1p(-exp(-x)) = x - exp(-x) + ...``;
            the dropped ``exp(-x) < eps`` is below 1/8 ULP of ``x > 8``.
          * ``log 1.5 <= x <= log 3``: the result crosses 0 at ``log 2``,
            where both other formulas cancel (hundreds of ULP, also in
            TFP); there ``expm1(x) - 1 = 2 expm1(x - log 2)`` with
            ``x - log 2`` exact (Sterbenz, and ``log 2`` split in two parts),
            so the result keeps its relative accuracy through the root; the
            window's edges are where ``2 expm1(x - log 2)`` leaves
            ``[-1/2, 1]``, the range of ``log1p``'s accurate series.
        Each branch gets 1 in place of the other branches' inputs (finite
        there). ``softplus_inverse(0) = -inf`` with gradient
        ``+inf``; ``x < 0`` is outside the range of softplus and gives NaN;
        ``+inf`` gives ``+inf``; NaN gives NaN. Gradient (custom):
        ``1 / (-expm1(-x))``, finite for every finite ``x > 0``, NaN below 0.
        Error budget: 3 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16.

    Args:
        x: floating tensor of positive values.

    Returns:
        A tensor of ``x``'s dtype and shape with ``softplus(result) == x``.

    Example:
        >>> softplus_inverse(tf.constant([1e-20, 0.6931472, 100.0])).numpy()
        array([-4.6051701e+01,  3.8093084e-09,  1.0000000e+02], dtype=float32)
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_softplus_inverse_core(to_compute(x)), x.dtype)


# softplus_inverse's window around its root log 2: there it computes
# log1p(v) with v = 2 expm1(x - log 2) in [-1/2, 1], log1p's series range.
_SOFTPLUS_INVERSE_ROOT_WINDOW = (math.log(1.5), math.log(3.0))


def _softplus_inverse_value(x):
    eps = dtype_limits(x.dtype).eps
    too_large = -math.log(eps)  # 15.9 float32, 36.7 float64
    low, high = _SOFTPLUS_INVERSE_ROOT_WINDOW

    def moderate(t):
        # Below the window log(expm1(t)) (no cancellation: |log| > 0.7 and
        # expm1 has no overflow); above it t + log(-expm1(-t)), which cannot
        # overflow. Each side gets 1 in place of the other's inputs.
        return safe_where(
            t < low,
            t,
            lambda u: tf.math.log(expm1(u)),
            lambda u: safe_where(
                u <= high,
                u,
                lambda v: accurate_log1p(2.0 * expm1(minus_log2(v))),
                lambda v: v + tf.math.log(-expm1(-v)),
                safe_true=LOG2,
                safe_false=2.0,
            ),
            safe_true=1.0,
            safe_false=LOG2,
        )

    return safe_where(
        x < eps,
        x,
        tf.math.log,
        lambda t: safe_where(t > too_large, t, tf.identity, moderate, safe_false=1.0),
        safe_true=1.0,
        safe_false=1.0,
    )


@custom_gradient
def _softplus_inverse_core(x):
    def grad(upstream):
        # d/dx log(expm1(x)) = 1 / (1 - exp(-x)) = 1 / (-expm1(-x)):
        # +inf at 0, 1 at +inf; NaN below 0, where the value is NaN too.
        slope = 1.0 / -tf.math.expm1(-tf.abs(x))  # |x|: +inf at -0. too
        return upstream * tf.where(x < 0, tf.constant(math.nan, x.dtype), slope)

    return _softplus_inverse_value(x), grad


# Where log_cosh switches from its Taylor series to (a - log 2) + log1p(exp(-2a)).
# At a = 1 the series terms still fall by (2/pi)^2 = 0.41 each (17 terms in
# float32, 38 in float64), and above it the second form adds a - log 2 >= 0.31
# and log1p(v) with v = exp(-2a) <= 0.14, where log1p's rounding is small
# against the sum. (Switching at log 2 left 2.2 ULP in float64 just above
# it, where a - log 2 is near 0 and log1p(1/4) carries the whole result.)
_LOG_COSH_SWITCH = 1.0


def _even_bernoulli(count: int) -> list:
    """``[B_0, B_2, ..., B_(2 count)]`` as exact fractions (B_m = -sum C(m+1, k) B_k / (m+1))."""
    numbers = [fractions.Fraction(1)]
    for m in range(1, 2 * count + 1):
        numbers.append(-sum(math.comb(m + 1, k) * numbers[k] for k in range(m)) / (m + 1))
    return numbers[::2]


@functools.lru_cache(maxsize=None)
def _log_cosh_coefficients(dtype: tf.DType) -> tuple:
    """Taylor coefficients of ``log cosh a`` in ``t = a^2``: 1/2, -1/12, 1/45, -17/2520, ...

    ``c_n = 2^(2n) (2^(2n) - 1) B_(2n) / (2n (2n)!)``; the series converges
    for ``|a| < pi/2``. Below the switch point ``_LOG_COSH_SWITCH`` the terms
    fall by about ``(2 a / pi)^2`` each; stop when the first omitted term,
    relative to the first, is below eps/8.
    """
    eps = dtype_limits(dtype).eps
    t = fractions.Fraction(_LOG_COSH_SWITCH**2)
    bernoulli = _even_bernoulli(40)  # float64 needs 38 terms
    coefficients = []
    for n in range(1, 40):
        c = 2 ** (2 * n) * (2 ** (2 * n) - 1) * bernoulli[n] / (2 * n * math.factorial(2 * n))
        if coefficients and abs(c) * t ** (n - 1) / coefficients[0] < eps / 8.0:
            break
        coefficients.append(c)
    else:
        raise AssertionError(f"the log cosh series needs more than 39 terms for {dtype.name}")
    return tuple(float(c) for c in coefficients)


def _log_cosh_over_square(t):
    # log cosh(sqrt t) / t in float64, from float64's Taylor coefficients:
    # within eps64/8 on [0, 1] (the exact side of the float32 fit).
    coefficients = _log_cosh_coefficients(tf.float64)
    return taylor_sum(t, lambda k: coefficients[k], len(coefficients))


@functools.lru_cache(maxsize=None)
def _log_cosh_polynomial(dtype: tf.DType) -> tuple:
    """Coefficients in ``t = a^2`` of ``log cosh a = t (c_0 + c_1 t + ...)`` below the switch.

    float32 (and half precision): the polynomial fitted on ``[0, 1]`` within
    eps/8, the Taylor series' own criterion (8 terms where the series takes
    17; :mod:`stableops._internal.polynomials`). float64: the Taylor
    coefficients.
    """
    if dtype == tf.float64:
        return _log_cosh_coefficients(dtype)
    return chebyshev_coefficients(
        _log_cosh_over_square, 0.0, _LOG_COSH_SWITCH**2, dtype_limits(dtype).eps / 8
    )


def _log_cosh_series(a):
    # t (c_0 + t (c_1 + t (c_2 + ...))), Horner form in t = a^2: the terms
    # alternate but fall by at least 2.4x each, so nothing cancels; the only
    # error that is not from a final rounding is t's (a^2: 1 rounding).
    t = a * a
    return t * horner(t, _log_cosh_polynomial(a.dtype))


@custom_gradient
def _log_cosh_core(x):
    a = tf.abs(x)
    value = safe_where(
        a < _LOG_COSH_SWITCH,
        a,
        # A polynomial in a^2 (log cosh's Taylor series, fitted in
        # float32): full relative accuracy down to 0 (log_cosh(1e-6) =
        # 5e-13, where log(cosh(1e-6)) = 0).
        _log_cosh_series,
        # log(cosh a) = (a - log 2) + log1p(exp(-2a)): cosh never
        # evaluated, so no overflow; for a >= 1 both terms are > 0
        # (no cancellation). log1p's quotient as a reciprocal: exp and the
        # divide fused into one loop (log1p_in_range).
        lambda t: minus_log2(t) + log1p_in_range(tf.exp(-2.0 * t), elementwise=True),
        safe_true=0.0,
        safe_false=1.0,
    )

    def grad(upstream):
        return upstream * tf.tanh(x)  # d log cosh = tanh, saturates at ±1

    return value, grad


@xla_kernel(elementwise=True)
def log_cosh(x):
    """``log(cosh(x))``, accurate for tiny and huge arguments.

    Formula:
        The Taylor series ``x^2/2 - x^4/12 + x^6/45 - ...`` (Bernoulli
        coefficients, degree from the dtype's eps; in float32 the polynomial
        in ``x^2`` fitted to it on ``[0, 1]``, 8 terms for 17) for ``|x| < 1``;
        ``(|x| - log 2) + log1p(exp(-2|x|))`` above.

    Numerical stability:
        The series' terms alternate but fall by at least 2.4x each (no
        cancellation), so tiny arguments keep full relative accuracy
        (``log_cosh(1e-6) = 5e-13``; Keras's ``x + softplus(-2x) - log 2``
        cancels to 0). Above the switch point 1 cosh is never
        evaluated and nothing is doubled, so huge arguments cannot overflow
        (``log_cosh(-4e4) = 39999.3`` for float16 input, where Keras's ``-2x``
        overflows to ``inf``), and both terms are non-negative, so they do
        not cancel. Even function;
        ``log_cosh(±inf) = inf``, NaN gives NaN. Gradient (custom): ``tanh(x)``.
        Error budget: 2 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16.

    Args:
        x: floating tensor.

    Returns:
        A tensor of ``x``'s dtype and shape, all values ``>= 0``.

    Example:
        >>> log_cosh(tf.constant([1e-6, 1.0, 1e4])).numpy()
        array([5.0000000e-13, 4.3378085e-01, 9.9993066e+03], dtype=float32)
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_log_cosh_core(to_compute(x)), x.dtype)
