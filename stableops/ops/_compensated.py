"""Error-free transformations: a rounded result and its exact rounding error.

Grappler folds expressions such as ``(1 + v) - 1`` when one operand is a
constant, so these are only used with two tensor operands, where every
regime (eager XLA kernels, ``tf.function``, ``jit_compile``) keeps them.
"""

from __future__ import annotations

import tensorflow as tf


def two_difference(a, b):
    """``(d, err)`` with ``d = fl(a - b)`` and ``d + err == a - b`` exactly (Knuth's TwoSum).

    Six floating-point operations and no branch; exact for any finite ``a``
    and ``b`` in round-to-nearest (barring overflow). ``err`` is 0 where ``d``
    is not finite (an infinity or NaN makes the error terms NaN; the infinity
    or NaN is carried by ``d``). Its gradient is 0: ``d + err`` is ``a - b``.
    """
    d = a - b
    a_part = d + b
    b_part = d - a_part
    err = (a - a_part) - (b + b_part)
    return d, tf.where(tf.math.is_finite(d), err, tf.zeros_like(err))
