"""Input validation shared by ops, losses and layers (contract rule 6)."""

from __future__ import annotations

import tensorflow as tf


def as_float_tensor(x, name: str) -> tf.Tensor:
    """Convert ``x`` to a tensor and require a floating dtype.

    Python floats become float32; NumPy arrays keep their dtype.

    Raises:
        TypeError: naming ``name`` and the dtype when it is not floating.
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"`{name}` must be a floating tensor, got dtype {x.dtype.name}")
    return x


def check_same_shape(a: tf.Tensor, b: tf.Tensor, a_name: str, b_name: str) -> None:
    """Raise ``ValueError`` naming both shapes when they cannot match statically."""
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same shape, "
            f"got {a.shape} and {b.shape}"
        )


def check_in_range(value, name: str, low=None, high=None, *, low_open=False, high_open=False):
    """Raise ``ValueError`` naming ``name`` and ``value`` when it is outside the range.

    ``low_open``/``high_open`` exclude the bound itself.
    """
    bad = False
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"`{name}` must be in {left}{lo}, {hi}{right}, got {name}={value!r}")
    return value
