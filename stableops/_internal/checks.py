"""Input validation shared by ops, losses and layers (contract rule 6).

One validator per concern: tensors (:func:`as_float_tensor`), hyperparameters
(:func:`number`), axes (:func:`axis_argument`, :func:`canonical_axis`) and
shapes (:func:`check_same_shape`). Each error names the argument and its value.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf


def check_real_dtype(dtype: tf.DType, name: str) -> None:
    """``TypeError`` naming ``name`` and ``dtype`` unless it is floating, integer or boolean."""
    if not (dtype.is_floating or dtype.is_integer or dtype == tf.bool):
        raise TypeError(
            f"`{name}` must hold real numbers (a floating, integer or boolean tensor), "
            f"got dtype {dtype.name}"
        )


def check_real(x: tf.Tensor, name: str) -> tf.Tensor:
    """Return ``x`` when it holds real numbers (floating, integer or boolean).

    Raises:
        TypeError: naming ``name`` and the dtype (strings, complex numbers, ...).
    """
    check_real_dtype(x.dtype, name)
    return x


def real_tensor(x, name: str, dtype_hint=None) -> tf.Tensor:
    """``tf.convert_to_tensor(x, dtype_hint=dtype_hint)``, checked by :func:`check_real`.

    A NumPy array of strings is refused before the conversion, which with a
    float ``dtype_hint`` would parse ``"1"`` as 1.0 silently.
    """
    if isinstance(x, (np.ndarray, np.generic)) and x.dtype.kind in "USOc":
        # Strings, objects, complex: checked as they are, without the hint.
        check_real(tf.convert_to_tensor(x), name)
    return check_real(tf.convert_to_tensor(x, dtype_hint=dtype_hint), name)


def as_float_tensor(x, name: str, integer_dtype=None) -> tf.Tensor:
    """Convert ``x`` to a floating tensor.

    Python floats become float32; floating arrays keep their dtype. Integer
    and boolean values are cast to ``integer_dtype`` where the caller gives
    one (a loss: its dtype, as Keras casts predictions; ``leaky_relu``:
    float32, as Keras's), and are a ``TypeError`` otherwise (Keras's
    ``softplus``, ``elu``, ``softmax``, ... fail on them too, less clearly).

    Raises:
        TypeError: naming ``name`` and the dtype when it is not floating (or,
            with ``integer_dtype``, not a real number type: strings, complex).
    """
    x = real_tensor(x, name) if integer_dtype is not None else tf.convert_to_tensor(x)
    if x.dtype.is_floating:
        return x
    if integer_dtype is None:
        raise TypeError(f"`{name}` must be a floating tensor, got dtype {x.dtype.name}")
    return tf.cast(x, integer_dtype)


def check_same_shape(a: tf.Tensor, b: tf.Tensor, a_name: str, b_name: str) -> None:
    """Raise ``ValueError`` naming both shapes when they cannot match statically."""
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same shape, "
            f"got {a.shape} and {b.shape}"
        )


def check_in_range(value, name: str, low=None, high=None, *, low_open=False, high_open=False):
    """Raise ``ValueError`` naming ``name`` and ``value`` when it is outside the range.

    ``low_open``/``high_open`` exclude the bound itself; a missing bound is
    shown as an open ``-inf``/``inf`` end (``(0.0, inf)``).
    """
    bad = False
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"`{name}` must be in {left}{lo}, {hi}{right}, got {name}={value!r}")
    return value


def _python_scalar(value, name):
    """A 0-d NumPy value or eager tensor as a Python scalar; anything else as is."""
    if isinstance(value, (tf.Tensor, np.ndarray, np.generic)) and np.ndim(value) == 0:
        try:
            value = value.numpy() if isinstance(value, tf.Tensor) else value
        except AttributeError:  # a symbolic tensor: its value is unknown here
            raise TypeError(f"`{name}` must be a Python number, got a symbolic tensor") from None
        value = value.item() if hasattr(value, "item") else value
    return value


def number(value, name: str, low=None, high=None, *, low_open=False, allow_inf=False) -> float:
    """``value`` as a Python float, checked: the one validator of float hyperparameters.

    Accepts Python and NumPy real numbers and 0-d eager tensors. Strings are
    refused, not converted (Keras fails on them too, later and less clearly),
    so a config never stores one.

    Raises:
        ValueError: naming ``name`` and ``value`` when it is not a real number
            (a string, ``None``, a bool), NaN, infinite (unless ``allow_inf``)
            or outside ``[low, high]`` (``low_open`` excludes ``low``).
    """
    value = _python_scalar(value, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number, got {name}={value!r}")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"`{name}` must not be NaN, got {name}={value!r}")
    if math.isinf(result) and not allow_inf:
        raise ValueError(f"`{name}` must be a finite number, got {name}={value!r}")
    # An allowed infinity is a closed upper end of the range: (0.0, inf].
    check_in_range(result, name, low, math.inf if allow_inf and high is None else high,
                   low_open=low_open)
    return result


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def axis_argument(axis, *, allow_many=False, allow_none=False):
    """``axis`` as an int (or, as allowed, ``None`` or a tuple of ints).

    Static and hashable (one compile per value); a list, as a JSON config
    gives back, becomes a tuple.

    Raises:
        ValueError: naming ``axis`` and its value otherwise.
    """
    if _is_int(axis):
        return int(axis)
    if allow_none and axis is None:
        return None
    if allow_many and isinstance(axis, (tuple, list)) and axis and all(_is_int(a) for a in axis):
        return tuple(int(a) for a in axis)
    expected = " or ".join(
        ["an int"] + (["a non-empty tuple of ints"] if allow_many else []) + (["None"] if allow_none else [])
    )
    raise ValueError(f"`axis` must be {expected}, got axis={axis!r}")


def canonical_axis(axis, rank: int, of: str = "y_pred", name: str = "axis"):
    """``axis`` (an int, a tuple of ints or ``None``) made non-negative for a rank-``rank`` input.

    Raises:
        ValueError: naming ``name``, its value and the rank when an axis is
            out of range (``axis=5`` for a rank-2 ``y_pred``).
    """
    if axis is None or rank is None:
        return axis
    if isinstance(axis, tuple):
        return tuple(canonical_axis(a, rank, of, name) for a in axis)
    if rank == 0:
        raise ValueError(
            f"`{of}` must have rank >= 1 to reduce `{name}={axis}`, got a scalar (rank 0)"
        )
    if not -rank <= axis < rank:
        raise ValueError(
            f"`{name}` is out of range for a rank-{rank} `{of}` "
            f"(valid: {-rank} to {rank - 1}), got {name}={axis}"
        )
    return axis % rank
