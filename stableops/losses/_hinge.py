"""Hinge losses: drop-in replacements for Keras 3.15 computed in float32.

Hinge, squared hinge and categorical hinge, each as a function form and a
``keras.losses.Loss`` class with Keras's name, constructor signature and
defaults. Half precision is computed in float32 (Keras's float16 function
forms overflow a squared violation of 300); labels that are all 0 or 1 are
mapped to -1/1 as in Keras; a row with a NaN has a NaN gradient in every
regime. Hinge and squared hinge take two ``tf.RaggedTensor`` as Keras's do.
"""

from __future__ import annotations

import math

import tensorflow as tf

from stableops._internal.clip import clip
from stableops._internal.compensated import two_difference
from stableops._internal.gradients import custom_gradient
from stableops._internal.reductions import float64_mean, float64_sum
from stableops.losses._base import loss_class, plain_loss, public_function
from stableops.losses._inputs import loss_function
from stableops.losses._shared import mean_of_squares

__all__ = [
    "CategoricalHinge",
    "Hinge",
    "SquaredHinge",
    "categorical_hinge",
    "hinge",
    "squared_hinge",
]


# ----------------------------------------------------------------------------
# Hinge losses
# ----------------------------------------------------------------------------


def _signed_labels(y_true):
    """Keras's rule: if every label is 0 or 1 (in the whole tensor), map to -1/1."""
    is_binary = tf.reduce_all(tf.logical_or(tf.equal(y_true, 0.0), tf.equal(y_true, 1.0)))
    return tf.where(is_binary, 2.0 * y_true - 1.0, y_true)


def _margin_violation(y_true, y_pred):
    # clip, not tf.maximum: how its kernel treats a NaN depends on the CPU (contract rule 2).
    return clip(1.0 - _signed_labels(y_true) * y_pred, 0.0)


@public_function
@loss_function(ragged=True, terms_per_element=True)
def hinge(y_true, y_pred):
    """Hinge loss over the last axis.

    Formula:
        ``mean(max(1 - y_true * y_pred, 0), axis=-1)``; labels that are all
        0 or 1 are first mapped to -1 or 1 (as in Keras).

    Numerical stability:
        Piecewise linear; half precision is computed in float32. Gradient
        ``-y_true / n`` where the margin is violated (at the kink, as in
        Keras), 0 elsewhere. Finite while the mean of the violations is below
        the float32 max (summed in float64). NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Args:
        y_true: labels in {-1, 1} or {0, 1}, ``[batch, d0, ..., dN]``.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> hinge([[0.0, 1.0]], [[0.6, 0.4]]).numpy()
        array([1.1], dtype=float32)
    """
    return float64_mean(_margin_violation(y_true, y_pred))


@public_function
@loss_function(ragged=True, terms_per_element=True)
def squared_hinge(y_true, y_pred):
    """Squared hinge loss over the last axis.

    Formula:
        ``mean(max(1 - y_true * y_pred, 0)^2, axis=-1)``; labels that are all
        0 or 1 are first mapped to -1 or 1 (as in Keras).

    Numerical stability:
        Half precision is computed in float32 (Keras's float16 function form
        gives ``inf`` for a margin violation of 300). The squares are summed
        in float64: the result overflows only where their mean exceeds the
        float32 max (a violation beyond about 1.8e19, float32/bfloat16 only);
        the gradient stays finite. NaN gives NaN.
        Error budget: 3 ULP of the float32 result (last axis of up to 8).

    Arguments and result: as :func:`hinge`.

    Example:
        >>> squared_hinge([[0.0, 1.0]], [[0.6, 0.4]]).numpy()
        array([1.46], dtype=float32)
    """
    return mean_of_squares(_margin_violation(y_true, y_pred))


@custom_gradient
def _max_last_axis(x):
    """``reduce_max(x, -1)``; the gradient is split evenly among tied maxima.

    TF's own gradient of ``reduce_max`` is the same on rows without NaN, but on
    a row with NaN, XLA and the TF kernels disagree about where the gradient
    is NaN (NaN comparisons). Here a row with a NaN has a NaN gradient
    everywhere, stated explicitly, so every regime agrees: a NaN entry counts
    as NaN in the count of tied maxima, which makes the whole row's share NaN
    (one reduction for both; a separate NaN test was one more pass over the
    row). A row without NaN has at least one entry equal to its maximum, so
    the count is at least 1.
    """
    largest = tf.reduce_max(x, axis=-1)

    def grad(upstream):
        is_largest = tf.cast(x >= largest[..., None], x.dtype)
        nan = tf.constant(math.nan, x.dtype)
        count = float64_sum(tf.where(tf.math.is_nan(x), nan, is_largest), -1, keepdims=True)
        return upstream[..., None] * (is_largest / count)

    return largest, grad


@public_function
@loss_function()
def categorical_hinge(y_true, y_pred):
    """Categorical hinge loss over the last (class) axis.

    Formula:
        ``max(max((1 - y_true) y_pred) - sum(y_true y_pred) + 1, 0)``

    Numerical stability:
        Piecewise linear; half precision is computed in float32. The
        gradient goes to the true class and the largest other score, as in
        Keras. Finite while ``|y_pred|`` stays below half the range. NaN gives NaN.
        The hinge is formed in float64 from exact products and rounded once, so
        a loss just above the margin keeps its digits (Keras's float32
        ``neg - pos + 1`` cancels: 1.2e-7 for 8.9e-8, 4e6 ULP); float64 inputs
        carry the roundings of ``neg - pos`` and of ``+ 1`` (TwoSum), where Keras's
        gives 1.0014e-13 for 1.0009e-13 (4e12 ULP).
        Error budget: 3 ULP of the float32 result ({0, 1} or {-1, 1} labels), and of
        the float64 result for one-hot labels.

    Args:
        y_true: one-hot (or {-1, 1}) labels, ``[batch, d0, ..., classes]``.
        y_pred: predictions, same shape; real (integers and booleans are cast).

    Returns:
        ``[batch, d0, ..., dN-1]`` in ``y_pred``'s computing dtype.

    Example:
        >>> categorical_hinge([[0.0, 1.0, 0.0]], [[0.2, 0.5, 0.4]]).numpy()
        array([0.9], dtype=float32)
    """
    # float64_sum: XLA forms and sums y_true y_pred in one loop (a float32 sum wrote it out
    # for YNNPACK): one core, alternating with Keras, 1.12 -> 0.74x under XLA at 2^22. The
    # products are exact in float64, and the hinge is formed there from that sum and the
    # largest other score (exact for {0, 1} and {-1, 1} labels), rounded once: formed in
    # float32, negative - positive + 1 cancelled near the margin (8.9e-8 came out 1.2e-7).
    positive = float64_sum(tf.cast(y_true, tf.float64) * tf.cast(y_pred, tf.float64), -1)
    negative = tf.cast(_max_last_axis((1.0 - y_true) * y_pred), tf.float64)
    # Float64 inputs have nothing wider: negative - positive + 1 carries both roundings
    # (TwoSum; -d as a product, which a graph's optimizer does not turn into a sum).
    difference, difference_error = two_difference(negative, positive)
    total, total_error = two_difference(tf.ones_like(difference), difference * -1.0)
    hinge = total + (total_error + difference_error)
    return tf.cast(clip(hinge, 0.0), y_pred.dtype)


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------


@loss_class
class Hinge(plain_loss(hinge, "hinge")):
    """Hinge loss; drop-in for ``keras.losses.Hinge`` (see :func:`hinge`).

    Args:
        {common}

    Example:
        >>> float(Hinge()([[0.0, 1.0]], [[0.6, 0.4]]))
        1.1
    """


@loss_class
class SquaredHinge(plain_loss(squared_hinge, "squared_hinge")):
    """Squared hinge loss; drop-in for ``keras.losses.SquaredHinge`` (see :func:`squared_hinge`).

    Args:
        {common}

    Example:
        >>> float(SquaredHinge()([[0.0, 1.0]], [[0.6, 0.4]]))
        1.46
    """


@loss_class
class CategoricalHinge(plain_loss(categorical_hinge, "categorical_hinge")):
    """Categorical hinge loss; drop-in for ``keras.losses.CategoricalHinge``.

    See :func:`categorical_hinge`.

    Args:
        {common}

    Example:
        >>> float(CategoricalHinge()([[0.0, 1.0, 0.0]], [[0.2, 0.5, 0.4]]))
        0.9
    """
