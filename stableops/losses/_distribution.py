"""KL divergence and Poisson: drop-ins for Keras 3.15 with ``xlogy`` semantics.

Each as a function form (one value per sample) and a ``keras.losses.Loss``
class with Keras's name, constructor signature and defaults. Both use
``xlogy`` semantics (``0 * log 0 = 0``) and floor a zero probability or rate
at the dtype's smallest normal instead of adding ``1e-7``; half precision is
computed in float32.
"""

from __future__ import annotations

import math

import tensorflow as tf

from stableops import ops
from stableops._internal.clip import clip
from stableops._internal.dtypes import dtype_limits
from stableops.losses._base import RawInputLoss, loss_class, plain_loss
from stableops.losses._inputs import loss_function
from stableops.losses._shared import floor_at_tiny

__all__ = ["KLDivergence", "Poisson", "kl_divergence", "poisson"]


# ----------------------------------------------------------------------------
# KL divergence and Poisson
# ----------------------------------------------------------------------------


@tf.custom_gradient
def _log_ratio(target, prediction):
    """``log(t / p)`` for positive arguments, accurate near a ratio of 1: one division, one ``log``.

    Near 1 (``p/2 <= t <= 2p``) it is ``log1p(x)`` with ``x = (t - p) / p``
    (``t - p`` exact by Sterbenz), where ``log(t / p)`` would lose the relative
    accuracy to the rounding of the ratio; elsewhere ``log(t / p)``. Both are
    ``log(w) + c`` with ``w = x + near`` (``1 + x`` near 1, the ratio
    elsewhere) and ``c = (x - (w - near)) (2 - w)``: the rounding error of
    ``1 + x`` (``w - 1`` is exact) over ``w``, with ``2 - w`` for ``1/w``
    (off by ``(w - 1)^2 / w``, a fraction of an ULP of the result on
    ``[1/2, 2]``), and exactly 0 elsewhere, where ``w = x``. ``x`` is
    ``(t - near p) * (1/p)``: XLA keeps a divide with two users out of the
    loss's fused loop (a pass of its own), the reciprocal has one.
    Measured against mpmath (float32, ratios from 1e-5 to 1e5 and near 1, 2
    and 1/2): 2.8 ULP per term, against 3.0 with ``log1p`` and ``log`` both
    evaluated and two divisions; 1.08x Keras's time under XLA against 1.8x
    (one core, 2^20).
    Gradient (custom): ``(1/t, -1/p)``; autodiff of ``t / p`` would form
    ``t / p**2``, which overflows for ``p < 1e-19`` in float32.
    """
    near = tf.where(
        tf.logical_and(target >= 0.5 * prediction, target <= 2.0 * prediction),
        tf.ones_like(target),
        tf.zeros_like(target),
    )
    x = (target - near * prediction) * tf.math.reciprocal(prediction)
    w = x + near
    value = tf.math.log(w) + (x - (w - near)) * (2.0 - w)

    def grad(upstream):
        return upstream / target, -upstream / prediction

    return value, grad


@loss_function(saturate=True)
def kl_divergence(y_true, y_pred):
    """Kullback-Leibler divergence ``sum(t * log(t / p), axis=-1)``.

    Formula:
        ``sum(t * log(t / p), axis=-1)``, ``t = clip(y_true, 0, 1)``,
        ``p = clip(y_pred, tiny, 1)``.

    Numerical stability:
        ``xlogy`` semantics: a zero target contributes exactly 0 with a zero
        gradient (Keras clips it to ``1e-7`` and adds ``1e-7 * log(1e-7 / p)``).
        A zero prediction is floored at the smallest normal of the computing
        dtype (``1.2e-38`` in float32; Keras: ``1e-7``), so the loss stays
        finite: a target of 1 on a zero prediction costs 87.3 (Keras: 16.1).
        ``log(t / p)`` is taken as ``log1p((t - p) / p)`` when ``t/p`` is in
        ``[1/2, 2]``, accurate however close ``p`` is to ``t`` (one division
        and one ``log`` either way, see ``_log_ratio``), and its
        gradient is written out (``-t/p``; autodiff of ``t / p`` would form
        ``t / p**2``, which overflows for ``p < 1e-19`` in float32). Outside
        ``[0, 1]`` and ``[tiny, 1]`` the clips give a zero gradient, as in
        Keras. Half precision is computed in float32. NaN gives NaN: ``0 *
        log 0 = 0`` is for a zero target only, never for a NaN target, nor
        for a NaN prediction where the target is 0.
        Error budget: 4 ULP of the float32 result per term (last axis of 1).

    Args:
        y_true: target distribution, ``[batch, ..., num_classes]``.
        y_pred: predicted distribution, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, ...]`` in ``y_pred``'s computing dtype.

    Example:
        >>> kl_divergence([[0.0, 1.0]], [[0.4, 0.6]]).numpy()
        array([0.510826], dtype=float32)
    """
    # Probabilities: targets in [0, 1] (Keras clips them to [1e-7, 1]),
    # predictions in [tiny, 1] (Keras: [1e-7, 1]).
    target = clip(y_true, 0.0, 1.0)
    prediction = clip(y_pred, dtype_limits(y_pred.dtype).tiny, 1.0)
    # NaN counts as positive: it reaches the result (NaN in, NaN out).
    positive = tf.not_equal(target, 0.0)
    # xlogy semantics: a zero target contributes 0 with a zero gradient; its
    # branch sees 1 in place of the target (finite there). 0 * prediction,
    # not 0, so a NaN prediction at a zero target still gives NaN.
    safe_target = tf.where(positive, target, tf.ones_like(target))
    terms = tf.where(positive, safe_target * _log_ratio(safe_target, prediction), 0.0 * prediction)
    return tf.reduce_sum(terms, axis=-1)


def _poisson_scale(target, rate):
    """Per row, 1, or a power of 2 that keeps every Poisson term and their sum finite.

    ``|log(rate)|`` is at most ``log_max`` (a floored rate: ``-log(tiny)``,
    a little less), so a term ``rate - t log(rate)`` is at most ``max/4 +
    |t| log_max``. A row whose counts stay below ``max / (4 log_max)`` and
    whose rates stay below ``max / 4`` cannot overflow (its results are bit
    for bit unscaled); another is scaled by ``2**-k <= 1 / (4 log_max)``
    (exact: a power of 2) and scaled back after the sum (counts of 4e36 on a
    floored rate overflowed ``t log(tiny)`` to ``inf``, then ``inf - inf``).
    """
    limits = dtype_limits(rate.dtype)
    down = 2.0 ** -math.ceil(math.log2(4.0 * limits.log_max))
    # Both tests in one reduction (|t| >= max / (4 log_max) or |rate| >= max / 4, each scaled
    # up to max): one pass over the inputs, where two maxima took two (under XLA, one core,
    # 2^20: 1.36 -> 1.05x Keras's time). A NaN hidden by tf.maximum only picks the scale; it
    # still reaches the terms.
    largest = tf.reduce_max(
        tf.maximum(tf.abs(target) * (4.0 * limits.log_max), tf.abs(rate) * 4.0), axis=-1
    )
    big = largest >= limits.max
    return tf.where(big, tf.constant(down, rate.dtype), tf.constant(1.0, rate.dtype))


@loss_function(ragged=True, saturate=True)
def poisson(y_true, y_pred):
    """Poisson loss ``mean(y_pred - y_true * log(y_pred), axis=-1)``.

    Formula:
        ``mean(p - xlogy(t, max(p, tiny)), axis=-1)``.

    Numerical stability:
        ``xlogy`` semantics: a zero count contributes exactly ``p``. The log
        is of the rate itself (Keras's ``log(p + 1e-7)`` shifts small rates:
        ``p = 1e-7`` gives ``log(2e-7)``); a zero or negative rate, outside the
        Poisson domain, is floored at the smallest normal of the computing
        dtype inside the log, so value and gradient stay finite (Keras: NaN
        for ``p < -1e-7``); the floored log term has a zero gradient. The
        gradient ``1 - t/p`` is exact: it overflows only where ``t/p`` itself
        leaves the float range. Each term is divided by the count before it
        is formed, and a row whose counts or rates could overflow a term is
        computed scaled by a power of 2 (``_poisson_scale``), so a mean in
        range is finite (counts of 4e36 on a zero rate gave ``inf - inf``).
        Half precision is computed in float32. NaN gives NaN.
        Error budget: 4 ULP of ``max(|p|, |t log p|)`` in float32 (last axis of 1).

    Args:
        y_true: observed counts, ``[batch, d0, ..., dN]``.
        y_pred: predicted rates, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> poisson([[0.0, 1.0]], [[1.0, 2.0]]).numpy()
        array([1.15343], dtype=float32)
    """
    return _poisson_rows(y_true, y_pred)  # counts and rates, in the computing dtype


@tf.custom_gradient
def _poisson_rows(target, rate):
    """Per row ``mean(rate - xlogy(target, max(rate, tiny)))``; see :func:`poisson`.

    Each term is divided by the count ``n`` before it is formed, so neither a
    term nor the sum overflows where the mean does not, except for counts or
    rates near the float range: only where a row's sum is not finite are its
    terms formed again scaled by ``_poisson_scale`` (a ``tf.cond``, so the
    common case reads the inputs once; powers of 2 are exact, so both forms
    give the same finite results). Under XLA, one core, 2^20, against Keras:
    1.26 -> 1.00x (the scale computed first was a pass of its own).
    Gradient (custom, the same in both forms: the scale cancels): ``(1 - t/v)
    / n`` for the rate, with ``v = max(rate, tiny)`` and ``1 / n`` where the
    count is 0 or the rate is floored (the floored log has no slope), and
    ``-log(v) / n`` for the count.
    """
    share = 1.0 / tf.cast(tf.shape(rate)[-1], rate.dtype)

    def mean_of_terms(scale):
        # Floored here, in each branch: the tf.cond's operands are then the
        # inputs themselves, not a floored copy XLA would write out for it.
        scaled = share if scale is None else scale[..., None] * share
        terms = rate * scaled - ops.xlogy(target * scaled, floor_at_tiny(rate))
        summed = tf.reduce_sum(terms, axis=-1)
        return summed if scale is None else summed / scale

    plain = mean_of_terms(None)
    finite = tf.reduce_all(tf.math.is_finite(plain))
    value = tf.cond(finite, lambda: plain, lambda: mean_of_terms(_poisson_scale(target, rate)))

    def grad(upstream):
        upstream = upstream[..., None] * share
        floored = floor_at_tiny(rate)
        counted = tf.logical_and(tf.not_equal(target, 0.0), rate >= floored)
        slope = 1.0 - tf.where(counted, target / floored, tf.zeros_like(rate))
        slope = tf.where(tf.math.is_nan(rate), rate, slope)  # NaN in, NaN out
        return -upstream * tf.math.log(floored), upstream * slope

    return value, grad


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------


@loss_class
class KLDivergence(plain_loss(kl_divergence, "kl_divergence", base=RawInputLoss)):
    """Kullback-Leibler divergence; Keras's ``KLDivergence`` with ``xlogy`` semantics.

    See :func:`kl_divergence`.

    Args:
        {common}
    """


@loss_class
class Poisson(plain_loss(poisson, "poisson", base=RawInputLoss)):
    """Poisson loss; Keras's ``Poisson`` without the ``1e-7`` shift or NaN.

    See :func:`poisson`.

    Args:
        {common}
    """
