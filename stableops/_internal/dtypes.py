"""Per-dtype limits: the single source of every epsilon and threshold in stableops.

No module in stableops writes a literal such as ``1e-7``; it asks
``dtype_limits(dtype)`` instead, so float16, bfloat16, float32 and float64 each
get thresholds that fit their own precision and range.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import ml_dtypes
import tensorflow as tf

from stableops._internal.clip import clip
from stableops._internal.gradients import custom_gradient

_HALF_DTYPES = (tf.float16, tf.bfloat16)


@dataclasses.dataclass(frozen=True)
class DTypeLimits:
    """Numerical limits of one floating dtype, as Python floats.

    Attributes:
        dtype: the ``tf.DType`` these limits describe.
        eps: machine epsilon, the gap between 1 and the next larger value.
        tiny: the smallest positive *normal* value (TF flushes subnormals on
            CPU and GPU, so this is the smallest value arithmetic keeps).
        max: the largest finite value.
        log_max: ``log(max)``; ``exp(x)`` overflows for ``x > log_max``
            (11.09 in float16, 88.72 in float32 and bfloat16).
        largest_below_one: the largest value below 1, ``1 - eps / 2``; the
            clip bound for probabilities fed to ``log(1 - p)``.
        mask_value: the most negative finite value; the fill for masked logits
            (always written with ``tf.where``, never added, so it cannot
            overflow a sum).
    """

    dtype: tf.DType
    eps: float
    tiny: float
    max: float
    log_max: float
    largest_below_one: float
    mask_value: float


@functools.lru_cache(maxsize=None)
def _limits(dtype: tf.DType) -> DTypeLimits:
    info = ml_dtypes.finfo(dtype.as_numpy_dtype)
    eps = float(info.eps)
    largest = float(info.max)
    return DTypeLimits(
        dtype=dtype,
        eps=eps,
        tiny=float(info.tiny),
        max=largest,
        log_max=math.log(largest),
        largest_below_one=1.0 - eps / 2.0,
        mask_value=-largest,
    )


def dtype_limits(dtype) -> DTypeLimits:
    """Return the :class:`DTypeLimits` of a floating dtype.

    Args:
        dtype: anything ``tf.as_dtype`` accepts (``"float16"``, ``tf.bfloat16``,
            ``np.float32``, ...).

    Returns:
        A frozen :class:`DTypeLimits`.

    Raises:
        TypeError: if ``dtype`` is not a floating dtype.

    Example:
        >>> dtype_limits("float16").log_max  # exp overflows above this
        11.089866488461016
    """
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"dtype_limits needs a floating dtype, got {dtype.name}")
    return _limits(dtype)


def compute_dtype(dtype) -> tf.DType:
    """The dtype a computation on ``dtype`` runs in: float32 for half precision."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in _HALF_DTYPES else dtype


def in_dtype(value, dtype) -> tf.Tensor:
    """``value`` in ``dtype``: a Python number converted directly, a tensor cast.

    ``tf.cast`` of a Python number makes a float32 tensor first: a float64 Huber
    ``delta=0.1`` became 0.10000000149 (9.7e7 ULP of the loss), a ``delta`` below 1e-45 0.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def to_compute(x: tf.Tensor) -> tf.Tensor:
    """Cast a half-precision tensor to float32; leave float32/float64 alone."""
    return tf.cast(x, compute_dtype(x.dtype))


_WIDE, _WIDE_USED = "_stableops_wide", "_stableops_wide_used"


def widened(wide, dtype):
    """``wide`` (float32) cast to the half-precision ``dtype``, for which
    :func:`to_compute_saturating` returns ``wide`` itself.

    A row-local kernel's local gradient (for a unit upstream) is multiplied by the
    upstream outside the kernel. Through ``to_compute_saturating`` it would saturate
    at the half dtype's largest number first, and then be scaled: 65504 / 8 for a mean
    over 8 rows, where the product, saturated, is 65504. With the float32 original the
    kernel's local gradient is float32, saturated after the product
    (:func:`saturating_cast`).
    """
    narrow = tf.cast(wide, dtype)
    setattr(narrow, _WIDE, wide)
    return narrow


def used_wide(narrow) -> bool:
    """Whether :func:`to_compute_saturating` returned ``narrow``'s float32 original."""
    return getattr(narrow, _WIDE_USED, False)


def saturating_cast(x, dtype):
    """``x`` cast to ``dtype``, saturated at its largest finite number (NaN kept)."""
    if x.dtype == dtype:
        return x
    largest = dtype_limits(dtype).max
    return tf.cast(clip(x, -largest, largest), dtype)


def to_compute_saturating(x):
    """``to_compute(x)`` whose gradient saturates at ``x``'s largest finite value (NaN kept).

    A half-precision input is computed in float32, so its gradient is a float32
    number; cast back to float16 it would overflow to ``inf`` beyond 65504
    (``-t/p`` at a float16 probability below 1.5e-5, ``e / v`` at a variance
    floor, a squared distance's ``2 d`` for embeddings of 40000) while the
    loss is finite. It saturates at the dtype's largest finite value instead;
    the selects pass NaN through. float32/float64 tensors are returned as they are.
    """
    dtype = x.dtype
    if compute_dtype(dtype) == dtype:
        return x
    wide = getattr(x, _WIDE, None)
    if wide is not None:  # see widened(): the float32 original, its gradient unsaturated
        setattr(x, _WIDE_USED, True)
        return wide
    largest = dtype_limits(dtype).max

    @custom_gradient
    def cast(v):
        def grad(upstream):
            return tf.cast(clip(upstream, -largest, largest), dtype)

        return tf.cast(v, compute_dtype(dtype)), grad

    return cast(x)


# A product of two float32 entries is exact in float64 and lies in [2^-298, 2^256] (or is 0),
# so float64 sums of them neither overflow nor underflow. An infinite entry's stand-in,
# 2^300, exceeds every finite float32 by 2^172: finite entries beside it fall out of its
# row's direction (below 2^-172 of it), and a row of k stand-ins sums to k 2^600, finite
# for any k below 2^423.
_INFINITY_STAND_IN = 2.0**300


def float64_with_stand_ins(x):
    """Float32 ``x`` in float64 with ``±inf`` as ``±2^300``: a row's direction is then its
    limit direction, ``sign(x)/sqrt(k)`` at its ``k`` infinite entries (to float32
    precision), and its norm rounds to ``inf`` in float32.

    A clamp, which XLA forms again in each loop that reads it (a select was written out as
    a full-size float64 buffer); a NaN may come out as a bound (see ``_internal.clip``):
    the caller carries NaN by a select of its own.
    """
    bound = tf.constant(_INFINITY_STAND_IN, tf.float64)
    return tf.clip_by_value(tf.cast(x, tf.float64), -bound, bound)
