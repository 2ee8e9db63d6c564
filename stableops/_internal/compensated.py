"""Error-free transformations: a rounded result and its exact rounding error.

TensorFlow's graph optimizer rewrites some patterns that these rely on:
``(c + v) - c`` with a constant ``c`` and a single consumer folds to ``v``,
``log(1 + v)`` becomes ``log1p(v)``, ``exp(x) - 1`` becomes ``expm1(x)``.
So they take tensor operands, and every use is measured in all three
regimes (eager XLA kernels, ``tf.function``, ``jit_compile``). XLA in some
releases (TF 2.16) folds a cast to a narrower type and back into nothing, so
a rounding is split off by arithmetic (``float32_split``), never by casts.
"""

from __future__ import annotations

import math

import tensorflow as tf

from stableops._internal.dtypes import dtype_limits


def two_difference(a, b):
    """``(d, err)`` with ``d = fl(a - b)`` and ``d + err == a - b`` exactly (Knuth's TwoSum).

    Six floating-point operations and no branch; exact for any finite ``a``
    and ``b`` in round-to-nearest (barring overflow). ``err`` is 0 where ``d``
    is not finite (an infinity or NaN makes the error terms NaN; the infinity
    or NaN is carried by ``d``), and where an intermediate sum overflows
    (``|d + b|`` beyond the range, for ``|d|`` near the max: the dropped error
    is then below half an ULP of ``d``). Its gradient is 0: ``d + err`` is ``a - b``.
    An infinite intermediate always meets its own negative in ``err`` (``inf - inf``),
    so ``err`` is finite or NaN, and the guard tests for NaN: ``is_finite`` cost 12% of
    ``exp(x - max)`` with the correction under XLA (one core, 2^20), and up to 10% of
    the row reductions' forward and backward (``log_softmax`` 1.45 -> 1.35x Keras's).
    """
    d = a - b
    a_part = d + b
    b_part = d - a_part
    err = (a - a_part) - (b + b_part)
    return d, tf.where(tf.math.is_nan(err), tf.zeros_like(err), err)


def one_minus(x):
    """``(d, err)`` with ``d = fl(1 - x)`` and ``d + err == 1 - x`` exactly for ``|x| <= 1``.

    Dekker's Fast2Sum, ``err = (1 - d) - x``: three operations where ``two_difference`` takes
    six and a NaN guard (binary cross-entropy from probabilities, one core under XLA at 2^18:
    1.17 -> 1.12x Keras's time). Beyond ``|x| = 1`` ``err`` is approximate and finite for finite
    ``x``; a NaN or infinite ``x`` makes both NaN (callers that mask invalid input anyway).
    """
    one = tf.ones_like(x)  # a tensor: a constant 1 would let the graph optimizer fold 1 - (1 - x)
    d = one - x
    return d, (one - d) - x


def _veltkamp_split(x, bits=None):
    """``(hi, lo)`` with ``hi + lo == x`` exactly and ``hi`` within ``bits`` significant bits
    (by default half the significand, so products of two halves are exact).

    ``hi = c x - (c x - x)`` with ``c = 2^s + 1``, ``s = p - bits`` for a ``p``-bit
    significand (``s = ceil(p/2)`` by default: 4097 in float32, 2^27 + 1 in float64); ``hi``
    is ``x`` rounded to ``bits`` bits. ``|x|`` must stay below ``max / c``.
    """
    precision = round(-math.log2(dtype_limits(x.dtype).eps)) + 1
    shift = (precision + 1) // 2 if bits is None else precision - bits
    scaled = (2.0**shift + 1.0) * x
    hi = scaled - (scaled - x)
    return hi, x - hi


def float32_split(x):
    """``(high, low)`` of a float64 ``x``: ``high`` is ``x`` rounded to float32's 24-bit
    significand (``tf.cast(high, tf.float32)`` is exact) and ``low = x - high`` exactly.

    Veltkamp's split at 24 bits (``c = 2^29 + 1``), for normal float32 magnitudes below
    ``max / c``. Not ``x - float64(float32(x))``: XLA in TF 2.16 folds that pair of converts
    to ``x`` (its simplifier allows excess precision), so the rounding came out 0
    (``logaddexp`` in float32: 1.5 -> 5.5 ULP there).
    """
    return _veltkamp_split(x, bits=24)


def two_product(a, b):
    """``(p, err)`` with ``p = fl(a * b)`` and ``p + err == a * b`` exactly (Dekker).

    17 operations without a fused multiply-add; exact barring overflow and
    underflow of the partial products (TF flushes subnormals). Where an
    optimizer fuses a multiply and add the split is no longer exact and
    ``err`` is only approximate, of the size of the rounding of ``p``: a
    correction built on it then falls back to uncorrected accuracy, no worse.
    """
    p = a * b
    a_hi, a_lo = _veltkamp_split(a)
    b_hi, b_lo = _veltkamp_split(b)
    err = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, err


def fraction_of_one_plus(v, v_error):
    """``w / (1 + w)`` of ``w = v + v_error >= 0`` (an exact pair, ``v_error`` within half an
    ULP of ``v``), to about half an ULP.

    With ``1 + v = d + d_error`` (TwoSum) and ``c = v / d`` rounded, ``w / (1 + w) = c + ((v -
    c d) + v_error (1 - c) - c d_error) / d`` to first order (the rest is of order
    ``eps^2``), ``v - c d`` exact by Dekker's product. ``v / (1 + v)`` rounded twice and
    dropped ``v_error``: about 1.5 ULP, which a power such as the focal factor's
    ``(1 - q)^2`` multiplies.
    """
    d, d_error = two_difference(1.0, -v)
    c = v / d
    product, product_error = two_product(c, d)
    remainder = (v - product) - product_error
    return c + (remainder + v_error * (1.0 - c) - c * d_error) / d

