"""Input validation shared by ops, losses and layers (contract rule 6).

One validator per concern: tensors (:func:`as_float_tensor`), hyperparameters
(:func:`number`, :func:`flag`, :func:`choice`), axes (:func:`axis_argument`,
:func:`canonical_axis`) and shapes (:func:`check_same_shape`). Each error names
the argument and its value; a value of the wrong type is a ``TypeError`` (an
axis that is not an int, a tensor of strings), a value of the right type that
is out of its range a ``ValueError`` (an axis that does not exist, a negative
``gamma``). Hyperparameters are the exception, as the design's contract states:
a string or ``None`` given for a number is a ``ValueError`` naming it.
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


def float_pair(x, y, x_name, y_name):
    """Two floating tensors of one dtype that broadcast together; a Python number takes the
    other's dtype.

    Raises:
        TypeError: naming both for different dtypes.
        ValueError: naming both shapes where they cannot broadcast (TF named a graph node).
    """
    x, y = _same_float_dtype(x, y, x_name, y_name)
    try:
        tf.broadcast_static_shape(x.shape, y.shape)
    except ValueError:
        raise ValueError(
            f"`{x_name}` and `{y_name}` must broadcast together, got shapes {x.shape} and "
            f"{y.shape}"
        ) from None
    return x, y


def _same_float_dtype(x, y, x_name, y_name):
    x_is_number = isinstance(x, (int, float)) and not isinstance(x, bool)
    y_is_number = isinstance(y, (int, float)) and not isinstance(y, bool)
    if x_is_number and not y_is_number:
        y = as_float_tensor(y, y_name)
        return tf.convert_to_tensor(x, dtype=y.dtype), y
    x = as_float_tensor(x, x_name)
    if y_is_number:
        return x, tf.convert_to_tensor(y, dtype=x.dtype)
    y = as_float_tensor(y, y_name)
    if x.dtype != y.dtype:
        raise TypeError(
            f"`{x_name}` and `{y_name}` must have the same dtype, "
            f"got {x.dtype.name} and {y.dtype.name}"
        )
    return x, y


def float_tensor_with_axis(x, axis, name: str = "x") -> tf.Tensor:
    """:func:`as_float_tensor`, after which a reduction's ``axis`` must exist in ``x``.

    Raises:
        ValueError: naming ``axis`` and the rank, where TF's reduction names a graph
            node; or, for ``x`` of unknown rank (a ``tf.function`` traced with
            ``tf.TensorSpec(None)``), saying that the rank must be known.
    """
    x = as_float_tensor(x, name)
    if x.shape.rank is None:
        raise ValueError(
            f"`{name}` must have a known rank to reduce `axis={axis}`, got a tensor of unknown "
            "rank (give the tf.function an input_signature with one, e.g. "
            "tf.TensorSpec([None, None]))"
        )
    canonical_axis(axis, x.shape.rank, of=name)
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

    Example:
        >>> number(0.5, "alpha", 0.0, 1.0)
        0.5
        >>> number(float("inf"), "delta", 0.0, low_open=True, allow_inf=True)
        inf
        >>> number(float("inf"), "gamma", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: `gamma` must be a finite number, got gamma=inf
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


def activation_scale(value, name: str) -> float:
    """An activation's ``alpha`` or slope: a number in ``[0, float32's maximum]``.

    float32 is the computing dtype of every input but float64; a larger value
    rounds to ``inf`` there, and ``inf * 0`` is NaN (ELU at 0). Raises
    ``ValueError`` as :func:`number` does.
    """
    return number(value, name, 0.0, float(np.finfo(np.float32).max))


def flag(value, name: str) -> bool:
    """``value`` as a Python bool: ``True``/``False`` (or NumPy's), or the integers 0 and 1
    (which Keras takes too); nothing else.

    Raises:
        ValueError: naming ``name`` and ``value`` otherwise (``2``, ``"False"``, ``None``).

    Example:
        >>> flag(np.True_, "full"), flag(0, "full")
        (True, False)
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"`{name}` must be True or False, got {name}={value!r}")


def choice(value, name: str, choices):
    """``value`` when it is one of ``choices``.

    Raises:
        ValueError: naming ``name``, ``value`` and the choices otherwise.

    Example:
        >>> choice("hard", "strategy", ("hard", "semi_hard"))
        'hard'
    """
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}, got {name}={value!r}"
        )
    return value


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def axis_argument(axis, *, allow_many=False, allow_none=False):
    """``axis`` as an int (or, as allowed, ``None`` or a tuple of ints): the one axis validator.

    Static and hashable (one compile per value); a list, as a JSON config
    gives back, becomes a tuple. Whether the axis exists in an input is
    :func:`canonical_axis`'s check, once the input's rank is known.

    Raises:
        TypeError: naming ``axis`` and its value when it is of another type
            (a float, a string, ``None`` where it is not allowed, a tuple
            where one int is expected).
        ValueError: naming ``axis`` for an empty tuple.

    Example:
        >>> axis_argument([0, -1], allow_many=True)
        (0, -1)
        >>> axis_argument(1.5)
        Traceback (most recent call last):
        ...
        TypeError: `axis` must be an int, got axis=1.5
    """
    if _is_int(axis):
        return int(axis)
    if allow_none and axis is None:
        return None
    if allow_many and isinstance(axis, (tuple, list)) and all(_is_int(a) for a in axis):
        if not axis:
            raise ValueError(f"`axis` must not be empty, got axis={axis!r}")
        return tuple(int(a) for a in axis)
    expected = " or ".join(
        ["an int"]
        + (["a tuple of ints"] if allow_many else [])
        + (["None"] if allow_none else [])
    )
    raise TypeError(f"`axis` must be {expected}, got axis={axis!r}")


def canonical_axis(axis, rank: int, of: str = "y_pred", name: str = "axis"):
    """``axis`` (an int, a tuple of ints or ``None``) made non-negative for a rank-``rank`` input.

    Raises:
        ValueError: naming ``name``, its value and the rank when an axis is
            out of range (``axis=5`` for a rank-2 ``y_pred``), when a tuple names
            an axis twice (``(1, -2)`` of a rank-3 input), or when the input is a scalar.

    Example:
        >>> canonical_axis(-1, 3)
        2
        >>> canonical_axis((0, -1), 2, of="inputs")
        (0, 1)
    """
    if axis is None or rank is None:
        return axis
    if isinstance(axis, tuple):
        axes = tuple(canonical_axis(a, rank, of, name) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"`{name}` names an axis of `{of}` twice, got {name}={axis}")
        return axes
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


def raise_on_invalid_labels(labels, invalid, num_classes, loss="sparse_categorical_crossentropy"):
    """Raise ``InvalidArgumentError`` naming the first invalid label and the number of classes.

    ``invalid`` is a boolean tensor of ``labels``'s shape. Eagerly the check
    is immediate; in a graph it is an Assert op that runs with the loss (under
    XLA it is dropped and the kernel's NaN takes over). Returns ``labels``,
    made to depend on the check in graphs. ``ops.sparse_categorical_crossentropy``,
    the sparse loss and CTC share it; ``loss`` is the name the message starts with.

    Example:
        >>> import tensorflow as tf
        >>> labels = tf.constant([0, 3])
        >>> raise_on_invalid_labels(labels, labels >= 3, 3)
        Traceback (most recent call last):
        ...
        tensorflow...InvalidArgumentError: ...: label 3 is out of range for 3 classes ...
    """
    flat_invalid = tf.reshape(invalid, [-1])
    flat_labels = tf.reshape(labels, [-1])
    if tf.executing_eagerly():
        if bool(tf.reduce_any(flat_invalid)):
            first_bad = flat_labels.numpy()[np.argmax(flat_invalid.numpy())]
            message = _out_of_range_message(first_bad, num_classes, loss)
            raise tf.errors.InvalidArgumentError(None, None, message)
        return labels
    # A trailing invalid placeholder keeps the gather in range when no label
    # is invalid (and for empty batches); the assert does not fire then.
    padded_invalid = tf.concat([flat_invalid, [True]], axis=0)
    padded_labels = tf.concat([flat_labels, tf.zeros([1], labels.dtype)], axis=0)
    first_bad = tf.gather(padded_labels, tf.argmax(tf.cast(padded_invalid, tf.int32)))
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(flat_invalid)),
        [
            f"{loss}: label",
            first_bad,
            "is out of range for",
            num_classes,
            "classes (labels must be integers in [0, num_classes))",
        ],
        summarize=1,
    )
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def _out_of_range_message(label, num_classes, loss):
    num_classes = int(num_classes)
    return (
        f"{loss}: label {label} is out of range for "
        f"{num_classes} classes (labels must be integers in [0, {num_classes}))"
    )
