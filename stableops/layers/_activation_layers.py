"""``LeakyReLU``, ``ELU`` and ``Softmax``: Keras's layers with ``stableops.ops``'s math."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from stableops import activations, ops
from stableops._internal.checks import activation_scale, axis_argument, canonical_axis

_register = keras.saving.register_keras_serializable(package="stableops")


class _ActivationLayer(keras.layers.Layer):
    """An activation layer: masks pass through, shapes are kept, ``_hyperparameters`` saved."""

    _hyperparameters = ()  # the constructor's scalar arguments, by attribute name

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        # No weights: built at construction, as Keras's activation layers, so that an input
        # of unknown rank is called, not refused by the build's shape check.
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self._hyperparameters})
        return config


@_register
class LeakyReLU(_ActivationLayer):
    """Leaky rectified linear unit layer, a drop-in for ``keras.layers.LeakyReLU``.

    Formula:
        ``f(x) = x`` for ``x >= 0``; ``f(x) = negative_slope * x`` for ``x < 0``.

    Numerical stability:
        Computed by ``stableops.ops.leaky_relu`` (half precision in float32,
        one rounding). Finite for every finite input; NaN stays NaN.

    Args:
        negative_slope: float in ``[0, 3.4e38]``, the slope for negative inputs.
            Defaults to 0.3 (as the Keras layer; the *function*
            ``stableops.activations.leaky_relu`` defaults to 0.2, as Keras's).
        **kwargs: base layer arguments (``name``, ``dtype``, ...). The
            deprecated Keras alias ``alpha`` is accepted with a warning.

    Raises:
        ValueError: naming ``negative_slope`` and its value when it is
            negative, NaN, above float32's maximum or not a number.

    Example:
        >>> import numpy as np
        >>> LeakyReLU(negative_slope=0.5)(np.array([-10.0, 0.0, 10.0])).numpy()
        array([-5.,  0., 10.], dtype=float32)
    """

    _hyperparameters = ("negative_slope",)

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:
            negative_slope = kwargs.pop("alpha")
            warnings.warn(
                "Argument `alpha` is deprecated. Use `negative_slope` instead.", stacklevel=2
            )
        super().__init__(**kwargs)
        self.negative_slope = activation_scale(negative_slope, "negative_slope")

    def call(self, inputs):
        return ops.leaky_relu(inputs, negative_slope=self.negative_slope)


@_register
class ELU(_ActivationLayer):
    """Exponential linear unit layer, a drop-in for ``keras.layers.ELU``.

    Formula:
        ``f(x) = x`` for ``x > 0``; ``f(x) = alpha * (exp(x) - 1)`` for ``x <= 0``.

    Numerical stability:
        Computed by ``stableops.ops.elu`` as ``alpha * expm1(min(x, 0))`` on the
        negative side, so the unselected exponential never overflows and the
        gradient is finite for every finite input (float16 included); for very
        negative ``x`` the value is ``-alpha`` and the gradient underflows to 0.
        NaN stays NaN.

    Args:
        alpha: float in ``[0, 3.4e38]``, the scale of the negative section.
            Defaults to 1.0.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: naming ``alpha`` and its value when it is negative, NaN,
            above float32's maximum or not a number (Keras accepts any value).

    Example:
        >>> import numpy as np
        >>> ELU()(np.array([-1e4, 0.0, 2.0])).numpy()
        array([-1.,  0.,  2.], dtype=float32)
    """

    _hyperparameters = ("alpha",)

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = activation_scale(alpha, "alpha")

    def call(self, inputs):
        return ops.elu(inputs, alpha=self.alpha)


def _check_mask_broadcasts(mask, inputs):
    """The mask rule of ``keras.layers.Softmax``: right-aligned, each dim 1 or equal."""
    if len(mask.shape) > len(inputs.shape):
        raise ValueError(
            "The `mask` must be broadcastable to `inputs` and must not have more "
            f"dimensions. Received: inputs.shape={inputs.shape}, mask.shape={mask.shape}"
        )
    for mask_dim, input_dim in zip(mask.shape[::-1], inputs.shape[::-1]):
        if mask_dim is not None and input_dim is not None and mask_dim not in (1, input_dim):
            raise ValueError(
                "The `mask` must be broadcastable to `inputs`. Each mask dimension must be 1 "
                "or match the corresponding input dimension. "
                f"Received: inputs.shape={inputs.shape}, "
                f"mask.shape={mask.shape}"
            )


@_register
class Softmax(_ActivationLayer):
    """Softmax layer with a NaN-free mask, a drop-in for ``keras.layers.Softmax``.

    Formula:
        ``exp(x - max(x)) / sum(exp(x - max(x)))`` over ``axis``, taken over the
        unmasked entries only; masked entries are 0.

    Numerical stability:
        Computed by ``stableops.ops.softmax``. Half precision is computed in
        float32, so a long float16 axis cannot overflow the sum. Masked
        entries are *excluded* (the op's ``where=``) rather than filled with a
        large negative number, so a fully masked row gives all zeros with a
        zero (not NaN) gradient, and an unmasked logit below Keras's fill
        (-3e4 in float16) still counts. A NaN logit makes the unmasked entries
        of its row NaN; masked entries stay 0 (as in Keras).

    Args:
        axis: integer, or list of integers, the axis (axes) to normalise over,
            or ``None`` for all axes (as Keras). Defaults to -1.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: the logits.
        mask: optional mask broadcastable to ``inputs`` (right-aligned, each
            dimension 1 or equal): ``True`` (or ``> 0.5`` for numeric masks)
            keeps an entry. Filled in from the input's Keras mask when not given.

    Returns:
        Probabilities of the inputs' shape, in the layer's compute dtype.

    Example:
        >>> import numpy as np
        >>> softmax = Softmax()
        >>> softmax(np.array([[1.0, 2.0, 1.0]]), mask=np.array([[True, True, False]])).numpy()
        array([[0.26894143, 0.7310586 , 0.        ]], dtype=float32)
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis_argument(axis, allow_many=True, allow_none=True)

    def call(self, inputs, mask=None):
        # axis=5: a clear error (an unknown rank is left to the op).
        canonical_axis(self.axis, tf.TensorShape(inputs.shape).rank, of="inputs")
        if mask is None:
            return activations.softmax(inputs, axis=self.axis)
        mask = tf.convert_to_tensor(mask)
        _check_mask_broadcasts(mask, inputs)
        if mask.dtype != tf.bool:
            mask = tf.greater(mask, tf.cast(0.5, mask.dtype))
        return ops.softmax(inputs, axis=self.axis, where=mask)

    def get_config(self):
        config = super().get_config()
        config["axis"] = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return config
