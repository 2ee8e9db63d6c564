"""Piecewise activations: ELU and LeakyReLU.

Both take their hyperparameter as a Python number, validated before the
compiled kernel runs (contract rule 6): a negative, NaN or infinite ``alpha`` /
``negative_slope`` raises ``ValueError`` naming the argument and its value.
Half precision is computed in float32 and returned in the input dtype.
"""

from __future__ import annotations

import tensorflow as tf

from stableops._internal.checks import activation_scale, as_float_tensor
from stableops._internal.dtypes import to_compute
from stableops._internal.elementary import expm1_given_exp
from stableops._internal.gradients import custom_gradient
from stableops._internal.kernel import xla_kernel


def _elu_slope(x, alpha):
    """1 for ``x > 0``, ``alpha * exp(x)`` otherwise (``alpha`` at 0 as Keras, 0 at ``-inf``,
    NaN at NaN); the exponential is of ``min(x, 0)`` (NaN kept): it cannot overflow, so
    neither branch is inf where it is not selected."""
    positive = x > 0
    exp_negative = tf.exp(tf.where(positive, tf.zeros_like(x), x))
    return tf.where(positive, tf.ones_like(x), alpha * exp_negative)


def _elu_core(x, alpha):
    @custom_gradient
    def core(x):
        # One exponential for value and slope (measured single core at 2^20: 1.28 ->
        # 1.17x Keras's time in a plain tf.function, 0.89 -> 0.82 under XLA, against a
        # second exp for the slope). The value below -1 is formed from the slope (alpha
        # exp(x) - alpha), so the exponential has one user and XLA computes it in the
        # slope's loop: read by both outputs, it was written out as a pass of its own
        # (value and slope of 2^20 floats, one core: 1.5 -> 1.13 ms).
        slope = _elu_slope(x, alpha)
        value = tf.where(x > 0, x, expm1_given_exp(x, slope, alpha))

        def grad(upstream):
            return upstream * slope

        return value, grad

    return core(x)


def _elu_gradient_from_input(x, upstream, alpha):
    # The row-local gradient's slope, from the input (float32/float64: no cast).
    return upstream * _elu_slope(x, alpha)


# The forward call also returns the slope, but eagerly from 2^18 entries the backward pass
# is a compiled call on the input (see xla_kernel).
@xla_kernel(row_local=True, elementwise=True, gradient_from_input=_elu_gradient_from_input)
def _elu_kernel(x, alpha):
    x = as_float_tensor(x, "x")
    return tf.cast(_elu_core(to_compute(x), alpha), x.dtype)


def _leaky_relu_kernel(x, negative_slope):
    # TF's LeakyRelu kernel computes exactly where(x > 0, x, slope * x) (a select,
    # right for any slope, also > 1) and its gradient LeakyReluGrad from x alone:
    # one kernel each, already one computation in every regime, which XLA lowers
    # to one select under jit_compile. A compiled call around it only adds
    # dispatch (measured: 1.5-3x TF's kernel eagerly and in a plain tf.function).
    x_c = to_compute(x)
    if x_c.dtype == tf.float64:
        # The kernel's slope is a float32 attribute: 0.2 would lose 29 bits.
        value = tf.where(x_c > 0, x_c, negative_slope * x_c)
    else:
        value = tf.nn.leaky_relu(x_c, alpha=negative_slope)
    return tf.cast(value, x.dtype)


def elu(x, alpha=1.0):
    """Exponential linear unit: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise.

    Formula:
        ``where(x > 0, x, alpha * expm1(min(x, 0)))``.

    Numerical stability:
        The exponential branch only sees ``min(x, 0)`` (double where), so the
        unselected ``exp`` never overflows and the gradient is never
        ``0 * inf = nan``; ``expm1`` keeps relative accuracy near 0 (Keras's
        ``exp(x) - 1`` loses it). Gradient (custom): 1 for ``x > 0``,
        ``alpha * exp(min(x, 0))`` otherwise (``alpha`` at 0, as Keras; 0 at
        ``-inf``).
        ``elu(+inf) = inf``, ``elu(-inf) = -alpha``, NaN gives NaN.
        Error budget: 3 ULP in float32/float64 (including the rounding of an
        ``alpha`` such as 1.67 to the computing dtype), 1 ULP of the float32
        result for float16/bfloat16.

    Args:
        x: floating tensor.
        alpha: the negative saturation value, a number in ``[0, 3.4e38]`` (float32's range)
            (Keras's default 1.0).

    Returns:
        A tensor of ``x``'s dtype and shape.

    Raises:
        ValueError: if ``alpha`` is negative, NaN or above float32's maximum.
        TypeError: if ``x`` is not floating.

    Example:
        >>> elu(tf.constant([-1e4, -1e-8, 2.0])).numpy()
        array([-1.e+00, -1.e-08,  2.e+00], dtype=float32)
    """
    return _elu_kernel(x, alpha=activation_scale(alpha, "alpha"))


def leaky_relu(x, negative_slope=0.2):
    """Leaky rectified linear unit: ``x`` for ``x > 0``, ``negative_slope * x`` otherwise.

    Formula:
        ``where(x > 0, x, negative_slope * x)``.

    Numerical stability:
        Both branches are finite for finite ``x`` (with ``negative_slope <= 1``;
        a larger slope can overflow to ``-inf`` only where the true result is
        beyond the dtype's range). Gradient (TF's LeakyReluGrad): 1 for ``x > 0``,
        ``negative_slope`` otherwise (also at 0, as ``tf.nn.leaky_relu``).
        ``±inf`` give ``inf`` and ``-inf`` (0 * -inf is not formed unless
        ``negative_slope == 0``, where ``-inf`` gives NaN as in Keras); NaN
        gives NaN. Half precision multiplies in float32, so the slope is not
        first rounded to float16.
        Error budget: 0.5 ULP (one correctly rounded product) in
        float32/float64 for a slope exact in the computing dtype, 1.5 ULP for
        one that is rounded to it (0.2, 0.3); 1 ULP of the float32 result for
        float16/bfloat16.

    Args:
        x: a real tensor; integer and boolean values are cast to float32
            (as Keras's ``leaky_relu``).
        negative_slope: slope for ``x <= 0``, a number in ``[0, 3.4e38]`` (float32's range)
            (Keras's ``keras.ops.leaky_relu`` default 0.2).

    Returns:
        A tensor of ``x``'s dtype and shape.

    Raises:
        ValueError: if ``negative_slope`` is negative, NaN or above float32's maximum.
        TypeError: if ``x`` holds strings or complex numbers.

    Example:
        >>> leaky_relu(tf.constant([-10.0, 3.0])).numpy()
        array([-2.,  3.], dtype=float32)
    """
    # Integer and boolean input is cast to float32, as Keras's leaky_relu does.
    return _leaky_relu_kernel(
        as_float_tensor(x, "x", tf.float32),
        negative_slope=activation_scale(negative_slope, "negative_slope"),
    )
