"""The log/exp family: logsumexp, softmax, log-space sigmoid and softplus, log1mexp, log_cosh.

Every op computes half precision in float32 and returns the input dtype, takes
its switch points from ``dtype_limits`` of the dtype it computes in, guards each
branch with ``safe_where`` and, where autodiff of the stable forward formula
would give NaN/inf or waste work, carries a custom gradient whose convention is
stated in its docstring.

Accuracy: ``expm1`` and ``log1p`` are computed here (Taylor and atanh series
with degrees derived from eps) because XLA's are up to 4.4 ULP (float32) and
127 ULP (float64 log1p) off on CPU; each op's budget (at most 4 ULP in
float32/float64, 1 ULP for half precision) is what two or three ~1-2 ULP
exp/log primitives compose to, and is enforced by tests/test_ops_logexp.py.

``logsumexp``/``softmax``/``log_softmax`` check ``axis`` and ``where`` in
Python and then call their ``@xla_kernel``; the elementwise ops are kernels
themselves.
"""

from __future__ import annotations

import fractions
import functools
import math
import numbers
import typing

import tensorflow as tf

from stableops.ops._checks import as_float_tensor
from stableops.ops._compensated import two_difference, two_product
from stableops.ops._dtypes import dtype_limits, to_compute
from stableops.ops._kernel import xla_kernel
from stableops.ops._where import safe_where

_LOG2 = math.log(2.0)


@functools.lru_cache(maxsize=None)
def _log2_split(dtype: tf.DType):
    """``log 2 = hi + lo`` with ``hi`` exact in ``dtype`` and ``lo`` its remainder."""
    if dtype == tf.float64:
        # hi = log 2 rounded to float64; lo = log 2 - hi (to 53 more bits), so
        # hi + lo is log 2 to 2^-106: enough for x - log 2 when x is the
        # float64 next to log 2 (|x - log 2| ~ 2e-17).
        return _LOG2, 2.319046813846299558e-17
    hi = float(dtype.as_numpy_dtype(_LOG2))  # float32 rounding of log 2
    return hi, _LOG2 - hi  # remainder exact in float64, ample for float32


def _minus_log2(x):
    """``x - log 2`` with the constant carried to twice ``x``'s precision.

    ``x - hi`` is exact for ``x`` in ``[hi/2, 2 hi]`` (Sterbenz). ``lo`` enters
    through a data-dependent select so that XLA cannot fold ``(x - hi) - lo``
    into ``x - (hi + lo)`` (it reassociates constants, and ``hi + lo`` rounds
    back to log 2 with the remainder lost). ``±inf`` and NaN pass through.
    """
    hi, lo = _log2_split(x.dtype)
    low = tf.where(tf.math.is_finite(x), x * 0.0 + lo, tf.zeros_like(x))
    return (x - hi) - low


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


def _expm1_taylor(x):
    # x (1 + x (1/2! + x (1/3! + ... + x/n!))): Horner form, two operations a
    # term (outside XLA every operation is a pass over the tensor).
    n = _expm1_degree(x.dtype)
    acc = 1.0 / math.factorial(n)
    for k in range(n - 1, 0, -1):
        acc = 1.0 / math.factorial(k) + x * acc
    return x * acc


def _expm1(x):
    """``exp(x) - 1`` to about 1 ULP (|x| <= 1: Taylor polynomial; beyond: exp(x) - 1).

    Above 1 the subtraction loses at most a factor e/(e - 1) = 1.6 of exp's
    error, below -1 nothing. ``+inf`` gives ``inf``, ``-inf`` gives -1, NaN NaN.
    """
    return safe_where(tf.abs(x) <= 1.0, x, _expm1_taylor, lambda t: tf.exp(t) - 1.0)


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


def _log1p_series(v):
    # log1p(v) = T (1 + s^2/3 + s^4/5 + ...) with T = 2s = 2v / (2 + v).
    # T is carried as Q + T_low: Q = fl(2v / w) with w = fl(2 + v), and
    # T_low = (rho - Q r) / w, where r = (2 + v) - w and rho = 2v - Q w are
    # exact (TwoSum, Dekker's product), so neither the rounding of 2 + v nor
    # that of the division reaches the result: about 0.6 ULP in every regime
    # (1.5-2.6 ULP without the correction). 2v / w, not 2 (v / w): v / w
    # would underflow for v below 2 tiny.
    w = 2.0 + v
    rounding = v - (w - 2.0)  # exact: |v| <= 2 (Fast2Sum)
    quotient = (2.0 * v) / w
    product, product_low = two_product(quotient, w)
    residual = (2.0 * v - product) - product_low  # 2v - Q w, exact
    quotient_low = (residual - quotient * rounding) / w
    s2 = 0.25 * (quotient * quotient)
    # s^2/3 + s^4/5 + ...: Horner form, two operations a term.
    n = _log1p_terms(v.dtype)
    acc = 1.0 / (2 * n + 1)
    for k in range(n - 1, 0, -1):
        acc = 1.0 / (2 * k + 1) + s2 * acc
    tail = s2 * acc
    return quotient + (quotient * tail + quotient_low * (1.0 + tail))


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

    @tf.custom_gradient
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
# Argument checks (static, outside the compiled kernels)
# ----------------------------------------------------------------------------


def _normalize_axis(axis):
    """``axis`` as ``None``, an int or a tuple of ints (static, hashable: one compile each)."""
    if axis is None:
        return None
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool):
        return int(axis)
    if isinstance(axis, (tuple, list)) and all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axis
    ):
        return tuple(int(a) for a in axis)
    raise TypeError(f"`axis` must be an int, a tuple of ints or None, got axis={axis!r}")


def _as_mask(where):
    """The ``where`` mask as a boolean tensor (``None`` stays ``None``)."""
    if where is None:
        return None
    where = tf.convert_to_tensor(where)
    if where.dtype != tf.bool:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype.name}")
    return where


def _mask_out(x, where):
    # Masked entries become -inf: they contribute exp(-inf) = 0 to every sum,
    # and tf.where gives them a zero gradient.
    if where is None:
        return x
    return tf.where(where, x, tf.constant(-math.inf, x.dtype))


# ----------------------------------------------------------------------------
# logsumexp, softmax, log_softmax
# ----------------------------------------------------------------------------


class _Shifted(typing.NamedTuple):
    """Max-shifted pieces of a row (all with ``keepdims=True`` reductions)."""

    m: tf.Tensor  # the row maximum
    z: tf.Tensor  # x - m rounded; exactly 0 at the maxima
    z_low: tf.Tensor  # the rounding error: z + z_low == x - m exactly
    p: tf.Tensor  # exp(x - m) from (z, z_low); exactly 1 at the maxima
    total: tf.Tensor  # sum(p) >= 1 (the softmax denominator)
    s: typing.Optional[tf.Tensor]  # sum(p) - 1 without the cancellation (if asked for)
    empty: tf.Tensor  # rows whose maximum is -inf (all -inf or fully masked)


def _shifted_exponentials(x, axis, with_tail):
    """The pieces every max-shifted reduction needs (see :class:`_Shifted`).

    * ``x - m`` is carried as ``z + z_low`` (TwoSum), so ``exp(x - m)`` is
      ``exp(z) * (1 + z_low)`` to full relative accuracy: the rounding of
      ``x - m`` alone would cost ``|x - m| * eps / 2`` relative (60 ULP of
      softmax at ``x - m = -100`` in float32).
    * ``z`` is exactly 0 at the maxima, so a ``+inf`` maximum gives 0 there and
      ``-inf`` elsewhere instead of ``inf - inf = nan``.
    * ``with_tail``: also ``s = sum(p) - 1``, which skips the maxima and adds
      ``(number of maxima - 1)``, so ``log1p(s)`` stays accurate when one
      logit dominates (``logsumexp([0, -30]) = 9.4e-14``, not 0). It costs
      one more reduction, so softmax (which only divides by ``sum(p)``)
      does without.
    NaN anywhere in a row makes ``total`` (and ``s``) NaN for that row.
    """
    m = tf.reduce_max(x, axis=axis, keepdims=True)
    is_max = tf.equal(x, m)
    zero = tf.zeros_like(x)
    difference, error = two_difference(x, m)
    z = tf.where(is_max, zero, difference)
    z_low = tf.where(is_max, zero, error)
    p = tf.exp(z) * (1.0 + z_low)  # z_low <= ulp(z)/2: first order is exact enough
    if with_tail:
        others = tf.reduce_sum(tf.where(is_max, zero, p), axis=axis, keepdims=True)
        ties = tf.reduce_sum(tf.cast(is_max, x.dtype), axis=axis, keepdims=True)
        s = others + (ties - 1.0)
        total = 1.0 + s
    else:
        s, total = None, tf.reduce_sum(p, axis=axis, keepdims=True)
    # reduce_max may skip NaN (XLA does): a row of NaN and -inf has m = -inf
    # but a NaN sum, and must stay NaN, not count as empty.
    empty = tf.logical_and(tf.equal(m, tf.constant(-math.inf, x.dtype)),
                           tf.logical_not(tf.math.is_nan(total)))
    return _Shifted(m, z, z_low, p, total, s, empty)


def _softmax_from_pieces(pieces):
    # p <= 1 and sum(p) >= 1 for a non-empty row: no overflow, no 0/0.
    # Empty rows give zeros (their denominator is replaced by 1).
    denominator = tf.where(pieces.empty, tf.ones_like(pieces.total), pieces.total)
    return tf.where(pieces.empty, tf.zeros_like(pieces.p), pieces.p) / denominator


def _logsumexp_core(x, axis, keepdims):
    @tf.custom_gradient
    def core(x):
        pieces = _shifted_exponentials(x, axis, with_tail=True)
        value = pieces.m + accurate_log1p(pieces.s)  # -inf for empty rows, +inf with a +inf entry
        if not keepdims:
            value = tf.reshape(value, tf.shape(tf.reduce_max(x, axis=axis)))

        def grad(upstream):
            # d logsumexp / dx = softmax(x); zero for empty rows.
            upstream = tf.reshape(upstream, tf.shape(pieces.m))
            return upstream * _softmax_from_pieces(pieces)

        return value, grad

    return core(x)


def _softmax_core(x, axis):
    @tf.custom_gradient
    def core(x):
        y = _softmax_from_pieces(_shifted_exponentials(x, axis, with_tail=False))

        def grad(upstream):
            # Jacobian-vector product of softmax: y * (g - <g, y>); zero where y is.
            return y * (upstream - tf.reduce_sum(upstream * y, axis=axis, keepdims=True))

        return y, grad

    return core(x)


def _log_softmax_core(x, axis):
    @tf.custom_gradient
    def core(x):
        pieces = _shifted_exponentials(x, axis, with_tail=True)
        # (x - m) - log1p(s) = z + (z_low - log1p(s)): exactly -log1p(s) at the
        # maximum (no cancellation), and x - m's rounding error kept.
        shifted = pieces.z + (pieces.z_low - accurate_log1p(pieces.s))
        value = tf.where(pieces.empty, tf.constant(-math.inf, x.dtype), shifted)

        def grad(upstream):
            # d/dx_j sum_i g_i (x_i - logsumexp(x)) = g_j - softmax_j * sum(g).
            # Outputs at -inf (masked or -inf entries, empty rows) are constants:
            # their upstream is dropped, so they pass no gradient (and no NaN).
            y = _softmax_from_pieces(pieces)
            minus_inf = tf.equal(value, tf.constant(-math.inf, x.dtype))
            upstream = tf.where(minus_inf, tf.zeros_like(upstream), upstream)
            return upstream - y * tf.reduce_sum(upstream, axis=axis, keepdims=True)

        return value, grad

    return core(x)


@xla_kernel(row_local=True)
def _logsumexp_kernel(x, axis, keepdims, where):
    x = as_float_tensor(x, "x")
    value = _logsumexp_core(_mask_out(to_compute(x), where), axis, keepdims)
    return tf.cast(value, x.dtype)


def _fill_masked(value, where, fill):
    # A NaN in a row's unmasked part makes the whole row NaN inside the core;
    # masked entries keep their fixed value all the same (as in JAX).
    if where is None:
        return value
    return tf.where(where, value, tf.constant(fill, value.dtype))


def _softmax_gradient(y, upstream, axis, where):
    # The Jacobian-vector product of softmax from its output: y (g - <g, y>)
    # (masked entries and empty rows have y = 0: no gradient).
    return y * (upstream - tf.reduce_sum(upstream * y, axis=axis, keepdims=True))


def _log_softmax_gradient(y, upstream, axis, where):
    # g - softmax sum(g), softmax = exp(y); outputs at -inf (masked or -inf
    # entries, empty rows) are constants: their upstream is dropped.
    upstream = tf.where(tf.equal(y, tf.constant(-math.inf, y.dtype)), tf.zeros_like(upstream), upstream)
    return upstream - tf.exp(y) * tf.reduce_sum(upstream, axis=axis, keepdims=True)


@xla_kernel(gradient_from_output=_softmax_gradient)
def _softmax_kernel(x, axis, where):
    x = as_float_tensor(x, "x")
    value = _softmax_core(_mask_out(to_compute(x), where), axis)
    return tf.cast(_fill_masked(value, where, 0.0), x.dtype)


@xla_kernel(gradient_from_output=_log_softmax_gradient)
def _log_softmax_kernel(x, axis, where):
    x = as_float_tensor(x, "x")
    value = _log_softmax_core(_mask_out(to_compute(x), where), axis)
    return tf.cast(_fill_masked(value, where, -math.inf), x.dtype)


def logsumexp(x, axis=-1, keepdims=False, where=None):
    """``log(sum(exp(x)))`` along ``axis``, without overflow or underflow.

    Formula:
        ``m + log1p(sum_{x_i != m} exp(x_i - m) + (k - 1))`` with ``m = max(x)``
        and ``k`` the number of entries equal to ``m``.

    Numerical stability:
        Shifting by the row maximum keeps every ``exp`` in ``[0, 1]`` (no
        overflow, at least one term is exactly 1). Leaving the maxima out of the
        sum and using ``log1p`` keeps the result accurate when one entry
        dominates: ``logsumexp([0., -30.])`` is ``9.36e-14`` (the naive
        ``log(1 + 9.36e-14)`` rounds to 0). float16/bfloat16 are computed in
        float32, so 100,000 float16 classes cannot overflow the sum.
        A row of only ``-inf`` (or fully masked) gives ``-inf`` with gradient 0;
        a ``+inf`` entry gives ``+inf``; a NaN entry (not masked) gives NaN.
        Gradient (custom): ``softmax(x)`` with zeros for masked entries and
        empty rows; with ``k`` entries at ``+inf`` each of them gets ``1/k``.
        Error budget: 4 ULP of ``max(|result|, |max(x)|)`` in float32/float64
        (the result itself when the maximum is 0 or dominates; cancellation
        between ``m < 0`` and the ``log1p`` term is the input's conditioning),
        and 1 ULP of the float32 result for float16/bfloat16.

    Args:
        x: floating tensor (float16, bfloat16, float32, float64).
        axis: int, tuple of ints or ``None`` (all axes) to reduce over.
        keepdims: keep the reduced axes with length 1.
        where: optional boolean mask broadcastable to ``x``; ``True`` entries
            take part, ``False`` entries are ignored (their NaN too).

    Returns:
        A tensor of ``x``'s dtype with ``axis`` reduced.

    Example:
        >>> logsumexp(tf.constant([1000.0, 1000.0]))  # 1000.6931, not inf
    """
    return _logsumexp_kernel(
        x, axis=_normalize_axis(axis), keepdims=bool(keepdims), where=_as_mask(where)
    )


def softmax(x, axis=-1, where=None):
    """``exp(x) / sum(exp(x))`` along ``axis``, mask-safe.

    Formula:
        ``exp(x - m) / sum(exp(x - m))`` with ``m = max(x)``.

    Numerical stability:
        Max-shifted (every ``exp`` in ``[0, 1]``, denominator ``>= 1``), with
        ``x - m`` carried exactly (TwoSum), so entries far below the maximum
        keep their relative accuracy (``tf.nn.softmax`` loses
        ``|x - m| * eps / 2``: 60 ULP at ``x - m = -100`` in float32).
        Masked entries are exactly 0 (even in a row with a NaN); a fully
        masked (or all ``-inf``) row is all zeros with zero gradient, not
        ``0/0 = nan``. ``-inf`` entries give
        0; ``k`` entries at ``+inf`` share probability ``1/k``; a NaN entry
        (not masked) makes its row NaN.
        Gradient (custom): ``y * (g - sum(g * y))``, zero wherever ``y`` is 0.
        Error budget: 4 ULP in float32/float64, 1 ULP of the float32 result
        for float16/bfloat16.

    Args:
        x: floating tensor.
        axis: int or tuple of ints to normalize over.
        where: optional boolean mask broadcastable to ``x`` (``True`` = include).

    Returns:
        A tensor of ``x``'s dtype and shape; each unmasked row sums to 1.

    Example:
        >>> mask = tf.constant([[True, True], [False, False]])
        >>> softmax(tf.constant([[1.0, 2.0], [3.0, 4.0]]), where=mask)  # [[0.269, 0.731], [0., 0.]]
    """
    return _softmax_kernel(x, axis=_normalize_axis(axis), where=_as_mask(where))


def log_softmax(x, axis=-1, where=None):
    """``x - logsumexp(x)`` along ``axis``, mask-safe.

    Formula:
        ``(x - m) - log1p(s)`` with ``m = max(x)`` and ``1 + s = sum(exp(x - m))``.

    Numerical stability:
        Exactly ``-log1p(s)`` at the maximum (no cancellation), so the
        cross-entropy of a confident correct prediction stays accurate.
        Masked entries give ``-inf`` (``log`` of their softmax probability 0,
        as in JAX), even in a row with a NaN; multiply them by targets with a
        ``where``, never directly.
        A fully masked or all ``-inf`` row gives ``-inf`` everywhere with zero
        gradient. ``k`` entries at ``+inf`` give ``-log(k)`` there and ``-inf``
        elsewhere; a NaN entry (not masked) makes its row NaN. Entries more
        than the dtype's ``max`` below the row maximum give ``-inf`` (the true
        value rounds there).
        Gradient (custom): ``g - softmax(x) * sum(g)``, where outputs at
        ``-inf`` (masked or ``-inf`` entries, empty rows) count as constants:
        they neither receive nor pass gradient, so empty rows get 0.
        Error budget: 4 ULP in float32/float64 (``x - m`` is carried exactly),
        1 ULP of the float32 result for float16/bfloat16; plus up to ``tiny``
        per entry where tail terms below ``tiny`` are flushed to zero.

    Args:
        x: floating tensor.
        axis: int or tuple of ints to normalize over.
        where: optional boolean mask broadcastable to ``x`` (``True`` = include).

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> log_softmax(tf.constant([0.0, -30.0]))  # [-9.357623e-14, -30.]
    """
    return _log_softmax_kernel(x, axis=_normalize_axis(axis), where=_as_mask(where))


# ----------------------------------------------------------------------------
# softplus, log_sigmoid
# ----------------------------------------------------------------------------


def _sigmoid(x):
    # exp(-|x|) <= 1: neither branch can overflow; accurate in both tails.
    e = tf.exp(-tf.abs(x))
    return tf.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus_core(x):
    @tf.custom_gradient
    def core(x):
        # max(x, 0) + log1p(exp(-|x|)): exp(-|x|) <= 1 cannot overflow, and for
        # x << 0 the result is log1p(exp(x)) = exp(x) to full relative accuracy.
        value = tf.maximum(x, 0.0) + accurate_log1p(tf.exp(-tf.abs(x)))

        def grad(upstream):
            return upstream * _sigmoid(x)  # d softplus = sigmoid, 1/2 at 0

        return value, grad

    return core(x)


@xla_kernel
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
        >>> softplus(tf.constant([-100.0, 0.0, 100.0], tf.float64))  # [3.72e-44, 0.693, 100.]
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_softplus_core(to_compute(x)), x.dtype)


@xla_kernel
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
        >>> log_sigmoid(tf.constant([-200.0, 0.0, 30.0]))  # [-200., -0.6931472, -9.357623e-14]
    """
    x = as_float_tensor(x, "x")
    return tf.cast(-_softplus_core(-to_compute(x)), x.dtype)


# ----------------------------------------------------------------------------
# logaddexp, log1mexp, softplus_inverse, log_cosh
# ----------------------------------------------------------------------------


def _logaddexp_core(x, y):
    @tf.custom_gradient
    def core(x, y):
        same = tf.equal(x, y)
        # x == y (±inf included) gives difference 0: no inf - inf = nan.
        rounded, rounding = two_difference(x, y)
        difference = tf.where(same, tf.zeros_like(x), rounded)
        # x - y is carried as difference + rounding (TwoSum), so
        # exp(-|x - y|) = exp(-|difference|) (1 - sign(difference) rounding):
        # the rounding of x - y would cost |x - y| eps/2 relative.
        tail = tf.exp(-tf.abs(difference)) * (1.0 - tf.sign(difference) * rounding)
        value = tf.maximum(x, y) + accurate_log1p(tail)
        both_minus_inf = tf.logical_and(same, tf.equal(x, tf.constant(-math.inf, x.dtype)))

        def grad(upstream):
            # d/dx = sigmoid(x - y), d/dy = sigmoid(y - x); 1/2 each when x == y,
            # 0 when both are -inf (as logsumexp of an all -inf row).
            weight_x = tf.where(both_minus_inf, tf.zeros_like(x), _sigmoid(difference))
            weight_y = tf.where(both_minus_inf, tf.zeros_like(x), _sigmoid(-difference))
            return upstream * weight_x, upstream * weight_y

        return value, grad

    return core(x, y)


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
        when ``x == y`` and ``(0, 0)`` when both are ``-inf``.
        Error budget: 4 ULP of ``max(|result|, |max(x, y)|)`` in
        float32/float64 (cancellation between a negative maximum and the
        ``log1p`` term is the input's conditioning), 1 ULP of the float32
        result for float16/bfloat16.

    Args:
        x: floating tensor.
        y: tensor of the same dtype, broadcastable with ``x`` (Python numbers
            take ``x``'s dtype).

    Returns:
        A tensor of the common dtype and the broadcast shape.

    Raises:
        TypeError: if either input is not floating or their dtypes differ.

    Example:
        >>> logaddexp(tf.constant(1000.0), tf.constant(1000.0))  # 1000.6931
    """
    x = as_float_tensor(x, "x")
    y = as_float_tensor(tf.convert_to_tensor(y, dtype_hint=x.dtype), "y")
    if x.dtype != y.dtype:
        raise TypeError(
            f"`x` and `y` must have the same dtype, got {x.dtype.name} and {y.dtype.name}"
        )
    shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
    x_c = tf.broadcast_to(to_compute(x), shape)
    y_c = tf.broadcast_to(to_compute(y), shape)
    return tf.cast(_logaddexp_core(x_c, y_c), x.dtype)


def _log1mexp_core(x):
    @tf.custom_gradient
    def core(x):
        a = tf.abs(x)
        # Switch at log 2 (Maechler 2012, as TFP's math/generic.py): below it
        # 1 - exp(-a) is small and -expm1(-a) keeps its relative accuracy;
        # above it exp(-a) < 1/2 and log1p(-exp(-a)) keeps the result's.
        # Each branch gets 1 in place of the other side's inputs (finite there).
        value = safe_where(
            a < _LOG2,
            a,
            lambda t: tf.math.log(-_expm1(-t)),
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

    return core(x)


@xla_kernel
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
        >>> log1mexp(tf.constant([1e-10, 0.5, 40.0], tf.float64))  # [-23.03, -0.9327, -4.248e-18]
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_log1mexp_core(to_compute(x)), x.dtype)


@xla_kernel
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
        >>> softplus_inverse(tf.constant([1e-20, 0.6931472, 100.0]))  # [-46.05, 3.8e-09, 100.]
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
            lambda u: tf.math.log(_expm1(u)),
            lambda u: safe_where(
                u <= high,
                u,
                lambda v: accurate_log1p(2.0 * _expm1(_minus_log2(v))),
                lambda v: v + tf.math.log(-_expm1(-v)),
                safe_true=_LOG2,
                safe_false=2.0,
            ),
            safe_true=1.0,
            safe_false=_LOG2,
        )

    return safe_where(
        x < eps,
        x,
        tf.math.log,
        lambda t: safe_where(t > too_large, t, tf.identity, moderate, safe_false=1.0),
        safe_true=1.0,
        safe_false=1.0,
    )


def _softplus_inverse_core(x):
    @tf.custom_gradient
    def core(x):
        def grad(upstream):
            # d/dx log(expm1(x)) = 1 / (1 - exp(-x)) = 1 / (-expm1(-x)):
            # +inf at 0, 1 at +inf; NaN below 0, where the value is NaN too.
            slope = 1.0 / -tf.math.expm1(-tf.abs(x))  # |x|: +inf at -0. too
            return upstream * tf.where(x < 0, tf.constant(math.nan, x.dtype), slope)

        return _softplus_inverse_value(x), grad

    return core(x)


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


def _log_cosh_series(a):
    # t (c_1 + t (c_2 + t (c_3 + ...))), Horner form in t = a^2: the terms
    # alternate but fall by at least 2.4x each, so nothing cancels; the only
    # error that is not from a final rounding is t's (a^2: 1 rounding).
    t = a * a
    coefficients = _log_cosh_coefficients(a.dtype)
    acc = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = c + t * acc
    return t * acc


def _log_cosh_core(x):
    @tf.custom_gradient
    def core(x):
        a = tf.abs(x)
        value = safe_where(
            a < _LOG_COSH_SWITCH,
            a,
            # The Taylor series of log cosh: full relative accuracy down to
            # 0 (log_cosh(1e-6) = 5e-13, where log(cosh(1e-6)) = 0).
            _log_cosh_series,
            # log(cosh a) = (a - log 2) + log1p(exp(-2a)): cosh never
            # evaluated, so no overflow; for a >= 1 both terms are > 0
            # (no cancellation).
            lambda t: _minus_log2(t) + accurate_log1p(tf.exp(-2.0 * t)),
            safe_true=0.0,
            safe_false=1.0,
        )

        def grad(upstream):
            return upstream * tf.tanh(x)  # d log cosh = tanh, saturates at ±1

        return value, grad

    return core(x)


@xla_kernel
def log_cosh(x):
    """``log(cosh(x))``, accurate for tiny and huge arguments.

    Formula:
        The Taylor series ``x^2/2 - x^4/12 + x^6/45 - ...`` (Bernoulli
        coefficients, degree from the dtype's eps) for ``|x| < 1``;
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
        >>> log_cosh(tf.constant([1e-6, 1.0, 1e4]))  # [5e-13, 0.4337808, 9999.307]
    """
    x = as_float_tensor(x, "x")
    return tf.cast(_log_cosh_core(to_compute(x)), x.dtype)
