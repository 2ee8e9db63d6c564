"""Gradient-safety primitives: the double-where helper.

``tf.where(c, f(x), g(x))`` evaluates both branches everywhere, and its
gradient multiplies the *unselected* branch's derivative by zero; ``0 * inf`` and
``0 * nan`` are NaN. The fix ("double where") is to feed each branch only inputs
from its own side, replacing the others by a value at which the branch is finite.
"""

from __future__ import annotations

import tensorflow as tf

from stableops._internal.dtypes import in_dtype


def _apply(branch, x):
    return branch(x) if callable(branch) else branch


def safe_where(condition, x, if_true, if_false, *, safe_true=0.0, safe_false=0.0):
    """``where(condition, if_true(x), if_false(x))`` with NaN-free gradients.

    Formula:
        ``where(c, if_true(where(c, x, safe_true)), if_false(where(c, safe_false, x)))``

    Numerical stability:
        Each branch sees only the elements it is selected for; the others are
        replaced by ``safe_true``/``safe_false``, points where that branch and its
        derivative are finite. So neither the value nor the gradient of an
        unselected branch can leak ``inf`` or ``nan``. NaN in a *selected*
        element still propagates (the contract's "NaN in, NaN out").

    Args:
        condition: boolean tensor, broadcastable with ``x``.
        x: the input tensor.
        if_true: a callable applied to ``x`` where ``condition`` holds, or a
            tensor/number used as is.
        if_false: the same for where ``condition`` does not hold.
        safe_true: a harmless input for ``if_true`` (default 0).
        safe_false: a harmless input for ``if_false`` (default 0).

    Returns:
        A tensor of the branches' dtype and the broadcast shape.

    Example:
        >>> x = tf.constant([-1.0, 4.0])
        >>> safe_where(x > 0, x, tf.sqrt, 0.0, safe_true=1.0).numpy()  # gradient 0, not nan, at -1
        array([0., 2.], dtype=float32)
    """
    x = tf.convert_to_tensor(x)
    safe_true = in_dtype(safe_true, x.dtype)
    safe_false = in_dtype(safe_false, x.dtype)
    true_value = _apply(if_true, tf.where(condition, x, safe_true))
    false_value = _apply(if_false, tf.where(condition, safe_false, x))
    return tf.where(condition, true_value, false_value)


def weight_times(weight, value):
    """``weight * value`` with ``0 * ±inf = 0`` (the ``0 * log 0 = 0`` convention).

    Double where: the infinite factor is replaced by 0 before the product, so
    neither the value nor the gradient with respect to ``weight`` is NaN. A NaN
    ``value`` or ``weight`` still gives NaN.
    """
    drop = tf.logical_and(tf.equal(weight, 0), tf.math.is_inf(value))
    return weight * tf.where(drop, tf.zeros_like(value), value)
