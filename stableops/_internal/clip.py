"""The NaN-passing clip: ``tf.where`` selects instead of ``max``/``min``.

How TF's ``tf.maximum``/``tf.minimum``/``tf.clip_by_value`` treat a NaN depends on
the kernel: under XLA and with some CPU vector instructions they return the
bound instead of the NaN, hiding a NaN behind a finite value (contract rule 2).
A comparison with NaN is ``False``, so a select on ``x < low`` leaves a NaN as it is.
"""

from __future__ import annotations

import tensorflow as tf


def clip(x, low=None, high=None):
    """``x`` clipped to ``[low, high]`` by selects: NaN stays NaN.

    Formula:
        ``where(x < low, low, where(x > high, high, x))``; a bound that is
        ``None`` is not applied.

    Numerical stability:
        NaN in ``x`` is returned as NaN in every regime (``tf.clip_by_value``
        may turn it into a bound under XLA). A NaN bound leaves ``x``
        unclipped on that side. The gradient is that of the select: 1 inside
        the interval (its ends included), 0 outside, as ``tf.clip_by_value``'s.

    Args:
        x: a floating tensor.
        low: lower bound: a number (converted to ``x``'s dtype directly, never
            through float32) or a tensor of ``x``'s dtype broadcastable with
            ``x``; ``None`` for no lower bound.
        high: upper bound, likewise.

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> import tensorflow as tf
        >>> clip(tf.constant([-2.0, 0.5, float("nan"), 3.0]), 0.0, 1.0).numpy()
        array([0. , 0.5, nan, 1. ], dtype=float32)
    """
    clipped = x
    # Both selects compare the input itself: below `low` gives `low` even
    # where `low > high` (a bound pair the callers never pass).
    if high is not None:
        clipped = tf.where(x > high, tf.convert_to_tensor(high, x.dtype), clipped)
    if low is not None:
        clipped = tf.where(x < low, tf.convert_to_tensor(low, x.dtype), clipped)
    return clipped
