"""``stableops.activations``: activation functions for ``activation=`` arguments.

Each function is a thin, named entry point to the matching ``stableops.ops``
kernel (the math and its numerics contract live there), registered with Keras
so that a layer built with ``activation=stableops.activations.elu`` saves to a
``.keras`` file and loads back without ``custom_objects``::

    import keras
    import stableops

    layer = keras.layers.Dense(8, activation=stableops.activations.elu)
    model.save("model.keras")
    keras.saving.load_model("model.keras")  # finds "stableops>elu" by itself

Same names, argument names and defaults as ``keras.activations`` (note that
``leaky_relu`` defaults to ``negative_slope=0.2`` as ``keras.activations.leaky_relu``
does, while the ``LeakyReLU`` *layer* defaults to 0.3, as in Keras).

Keras resolves these through its registry: ``keras.activations.get(fn)``,
``keras.activations.serialize(fn)`` (a dict naming ``"stableops>elu"``) and
``keras.activations.deserialize(that_dict)`` all work. A bare string such as
``activation="elu"`` still means Keras's own function; the string
``"stableops>elu"`` is not looked up by ``keras.activations.get`` (Keras only
resolves its built-in names from strings), so pass the function itself.
"""

from __future__ import annotations

import keras

from stableops import ops
from stableops._internal.symbolic import functional_node

__all__ = ["elu", "leaky_relu", "log_sigmoid", "log_softmax", "softmax", "softplus"]

_register = keras.saving.register_keras_serializable(package="stableops")


def _attach_logits(output, logits, axis):
    """Remember the logits of a softmax output, as ``keras.activations.softmax`` does.

    Keras's cross-entropies look for ``output._keras_logits`` and, when found,
    compute the loss from the logits instead of from the (possibly
    saturated) probabilities. Setting it keeps that behaviour when our softmax
    replaces Keras's. ``_stableops_softmax_axis`` tells stableops's
    cross-entropies that the logits are a softmax's, over ``axis`` (a binary
    loss, or a class axis other than ``axis``, then uses the probabilities).
    A tensor that takes no attributes is returned as it is, as in Keras.
    """
    try:
        output._keras_logits = logits
        output._stableops_softmax_axis = axis
    except AttributeError:
        pass
    return output


@_register
@functional_node("activations")
def elu(x, alpha=1.0):
    """Exponential linear unit, finite in value and gradient for every finite input.

    Formula:
        ``x`` for ``x > 0``; ``alpha * (exp(x) - 1)`` for ``x <= 0``.

    Numerical stability:
        See ``stableops.ops.elu``: the negative branch is computed as
        ``alpha * expm1(min(x, 0))``, so the unselected exponential never
        overflows (Keras/TF evaluate ``exp(x)`` for large positive ``x`` in the
        dead branch). Half precision is computed in float32.

    Args:
        x: floating input tensor.
        alpha: scale of the negative section (``>= 0``). Defaults to 1.0.

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> import tensorflow as tf
        >>> elu(tf.constant([-1e4, 0.0, 2.0])).numpy()
        array([-1.,  0.,  2.], dtype=float32)
    """
    return ops.elu(x, alpha=alpha)


@_register
@functional_node("activations")
def leaky_relu(x, negative_slope=0.2):
    """Leaky rectified linear unit.

    Formula:
        ``x`` for ``x >= 0``; ``negative_slope * x`` for ``x < 0``.

    Numerical stability:
        See ``stableops.ops.leaky_relu``; exact up to the rounding of one
        product, computed in float32 for half precision.

    Args:
        x: floating input tensor.
        negative_slope: slope for negative inputs (``>= 0``). Defaults to 0.2,
            as ``keras.activations.leaky_relu``.

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> import tensorflow as tf
        >>> leaky_relu(tf.constant([-10.0, 5.0])).numpy()
        array([-2.,  5.], dtype=float32)
    """
    return ops.leaky_relu(x, negative_slope=negative_slope)


@_register
@functional_node("activations")
def softplus(x):
    """Softplus, ``log(1 + exp(x))``, without overflow for large ``x``.

    Formula:
        ``log1p(exp(x))``.

    Numerical stability:
        See ``stableops.ops.softplus`` (switch points derived from the dtype).

    Args:
        x: floating input tensor.

    Returns:
        A tensor of ``x``'s dtype and shape.

    Example:
        >>> import tensorflow as tf
        >>> # exp(-100) is below float32's normal range: 0 (TF flushes subnormals)
        >>> softplus(tf.constant([-100.0, 0.0, 100.0])).numpy()
        array([  0.       ,   0.6931472, 100.       ], dtype=float32)
    """
    return ops.softplus(x)


@_register
@functional_node("activations")
def log_sigmoid(x):
    """Logarithm of the sigmoid, ``-softplus(-x)``, accurate for large ``|x|``.

    Formula:
        ``log(1 / (1 + exp(-x)))``.

    Numerical stability:
        See ``stableops.ops.log_sigmoid``.

    Args:
        x: floating input tensor.

    Returns:
        A tensor of ``x``'s dtype and shape (all values ``<= 0``).

    Example:
        >>> import tensorflow as tf
        >>> log_sigmoid(tf.constant([-100.0, 0.0])).numpy()
        array([-100.       ,   -0.6931472], dtype=float32)
    """
    return ops.log_sigmoid(x)


@_register
@functional_node("activations")
def softmax(x, axis=-1):
    """Softmax along ``axis``, float16-safe for long axes.

    Formula:
        ``exp(x - max(x)) / sum(exp(x - max(x)))``.

    Numerical stability:
        See ``stableops.ops.softmax``: half precision is computed in float32,
        so the sum over a long float16 axis cannot overflow. As
        ``keras.activations.softmax`` does, the logits are attached to the
        output so the cross-entropies over ``axis`` can use them directly.

    Args:
        x: floating input tensor.
        axis: the axis to normalise over. Defaults to -1.

    Returns:
        A tensor of ``x``'s dtype and shape; entries sum to 1 along ``axis``.

    Example:
        >>> import tensorflow as tf
        >>> softmax(tf.constant([1.0, 2.0, 1.0])).numpy()
        array([0.21194156, 0.57611686, 0.21194156], dtype=float32)
    """
    return _attach_logits(ops.softmax(x, axis=axis), x, axis)


@_register
@functional_node("activations")
def log_softmax(x, axis=-1):
    """Log of the softmax along ``axis``, ``x - logsumexp(x)``.

    Formula:
        ``x - log(sum(exp(x)))``.

    Numerical stability:
        See ``stableops.ops.log_softmax``: no ``log(0)`` for very negative
        logits; half precision computed in float32.

    Args:
        x: floating input tensor.
        axis: the axis to normalise over. Defaults to -1.

    Returns:
        A tensor of ``x``'s dtype and shape (all values ``<= 0``).

    Example:
        >>> import tensorflow as tf
        >>> log_softmax(tf.constant([0.0, 200.0])).numpy()
        array([-200.,    0.], dtype=float32)
    """
    return ops.log_softmax(x, axis=axis)
