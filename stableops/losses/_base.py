"""The ``keras.losses.Loss`` classes every stableops loss is built on.

Keras's own ``LossFunctionWrapper`` is private (``keras.src``), so this is the
same small pattern on the public ``keras.losses.Loss``: a loss class names its
per-sample function and that function's arguments (:class:`FunctionLoss`),
and Keras's base keeps reduction, ``sample_weight``, masks and dtype handling
exactly as in Keras. The cross-entropies compute from the inputs as the caller
passed them, before Keras's cast to the loss dtype (:class:`RawInputLoss`); the
likelihood and metric-learning losses cast half-precision predictions themselves,
with a saturating gradient (:class:`SaturatingInputLoss`).

A loss class states its per-sample function, its arguments (the constructor,
with Keras's signature) and its docstring; :func:`loss_class` registers it for
Keras saving. A loss without arguments subclasses :func:`plain_loss`.

The loss modules, by family: ``_binary`` and ``_categorical`` (cross-entropies
and their focal variants), ``_distribution`` (KL divergence, Poisson),
``_regression``, ``_overlap`` (Dice, Tversky), ``_similarity``, ``_hinge``,
``_gaussian``, ``_metric_learning`` and ``_ctc``; ``_inputs`` takes a loss's
inputs to its compiled kernel, and ``_shared`` holds the numerics and arguments
more than one family uses.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from stableops._internal.checks import check_real_dtype
from stableops._internal.dtypes import to_compute_saturating
from stableops._internal.symbolic import functional_node
from stableops.losses._inputs import graph_code

REDUCTION = "sum_over_batch_size"

def dtype_of(x):
    """``x``'s ``tf.DType``, read without a copy where it has one (tensors, arrays).

    ``None`` for what cannot be made one tensor (a dict, a ragged list).
    NumPy strings and objects, which have no ``tf.DType``, are converted.
    """
    if isinstance(x, (dict, tf.RaggedTensor)):
        return None
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        try:
            return tf.as_dtype(dtype)
        except TypeError:
            pass
    try:
        return tf.convert_to_tensor(x).dtype
    except (TypeError, ValueError):
        return None


def check_loss_inputs(y_true, y_pred):
    """Contract rule 6 before Keras's cast to the loss dtype: real numbers only.

    ``TypeError`` naming ``y_true``/``y_pred`` and the dtype for strings and
    complex numbers (Keras's own cast would fail later with
    ``UnimplementedError: Cast string to float``). What has no single dtype
    (a dict, a ragged tensor) is left to the caller.
    """
    for x, name in ((y_true, "y_true"), (y_pred, "y_pred")):
        dtype = dtype_of(x)
        if dtype is not None:
            check_real_dtype(dtype, name)


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------

_COMMON_DOC = """reduction: how per-sample losses are combined, as in Keras:
            ``"sum_over_batch_size"`` (default), ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or ``None``.
        name: the loss name.
        dtype: the dtype of the result; defaults to ``keras.config.floatx()``."""


def loss_class(cls):
    """Register a loss class for Keras saving (``"stableops>Name"``) and complete its docstring.

    ``{common}`` in the docstring's ``Args:`` becomes the entries of
    ``reduction``, ``name`` and ``dtype``, the same for every loss.
    """
    cls.__doc__ = cls.__doc__.replace("{common}", _COMMON_DOC)
    return keras.saving.register_keras_serializable(package="stableops")(cls)


def public_function(function):
    """A public loss function: registered for Keras saving (``"stableops>name"``) and a node
    of the functional graph on symbolic ``keras.Input``s (``functional_node``).

    Unregistered, a model compiled with ``loss=stableops.losses.binary_crossentropy`` saved
    the bare name, and loading it gave Keras's namesake (or failed, where Keras has none).
    """
    return keras.saving.register_keras_serializable(package="stableops")(
        functional_node("losses")(function)
    )


class FunctionLoss(keras.losses.Loss):
    """A ``keras.losses.Loss`` computed by a per-sample function ``fn(y_true, y_pred, **kwargs)``.

    Subclasses pass their constructor arguments through ``fn_kwargs``; each
    becomes a public attribute (``loss.from_logits``, as on Keras's losses),
    and they, with ``name``, ``reduction`` and ``dtype``, make up
    ``get_config``, so ``cls(**obj.get_config())`` rebuilds the same loss.
    """

    def __init__(self, fn, reduction, name, dtype, **fn_kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not tf.as_dtype(self.dtype).is_floating:
            # Keras would cast the predictions to it and fail (or round) later.
            raise ValueError(f"`dtype` must be a floating dtype, got dtype={dtype!r}")
        self.fn = fn
        self._fn_kwargs = fn_kwargs
        for key, value in fn_kwargs.items():
            setattr(self, key, value)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras casts both to the loss dtype before `call` (integer and boolean
        # predictions included, as here); strings and complex numbers get a
        # clear TypeError first (contract rule 6). Only the dtype is read: the
        # inputs (and their Keras masks) are passed on untouched.
        check_loss_inputs(y_true, y_pred)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self.dtype
        config.update(self._fn_kwargs)
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _in_loss_dtype(x, dtype):
    """``x`` as a tensor of the loss dtype, as Keras's base would make it, keeping its Keras mask.

    What cannot be made one tensor (a symbolic KerasTensor) is returned as is.
    """
    try:
        tensor = tf.cast(tf.convert_to_tensor(x), dtype)
    except (TypeError, ValueError):
        return x
    mask = getattr(x, "_keras_mask", None)
    if mask is not None:
        tensor._keras_mask = mask
    return tensor


def _merged_mask(in_mask, out_mask):
    """Keras's rule for the masks of ``y_pred`` and of the per-sample loss: both apply."""
    if in_mask is None or out_mask is None:
        return out_mask if in_mask is None else in_mask
    return in_mask & out_mask


class _Reduction(keras.losses.Loss):
    """Keras's ``Loss.__call__`` (mask, ``sample_weight``, reduction) on per-sample values.

    Its ``call`` returns the values it is given as ``y_pred``: Keras's base
    casts them to the loss dtype, reads their Keras mask, applies it and the
    sample weights, and reduces (scaled for ``tf.distribute`` as in Keras).
    """

    def call(self, y_true, y_pred):
        del y_true  # the values are complete: nothing is compared any more
        return y_pred


class RawInputLoss(FunctionLoss):
    """A ``FunctionLoss`` computed from ``y_true`` and ``y_pred`` as the caller passed them.

    Keras's ``Loss.__call__`` casts both inputs to the loss dtype before
    ``call``. That cast drops the logits a sigmoid/softmax output carries when
    the dtypes differ (``mixed_float16``: Keras then computes from clipped
    float16 probabilities, gradient 0 when saturated), and rounds integer
    labels through float16 with ``dtype="float16"``. So ``__call__`` computes
    the per-sample loss itself, by ``call`` on the inputs as passed (integer
    and boolean predictions cast to the loss dtype, as Keras does; strings and
    complex numbers are a ``TypeError``), then hands the values, carrying the
    Keras mask of ``y_pred`` and the loss's own (``ignore_class``), to Keras's
    base for masks, ``sample_weight`` and reduction (:class:`_Reduction`).
    Dicts of inputs go to Keras's base as they are.
    """

    @graph_code
    def __call__(self, y_true, y_pred, sample_weight=None):
        if isinstance(y_true, dict) or isinstance(y_pred, dict):
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        check_loss_inputs(y_true, y_pred)  # strings, complex numbers: TypeError
        pred_dtype = dtype_of(y_pred)
        if pred_dtype is not None and not pred_dtype.is_floating:
            y_pred = _in_loss_dtype(y_pred, self.dtype)  # as Keras casts them
        values = self.call(y_true, y_pred)
        mask = _merged_mask(getattr(y_pred, "_keras_mask", None),
                            getattr(values, "_keras_mask", None))
        if mask is not None:
            values._keras_mask = mask
        reduction = _Reduction(name=self.name, reduction=self.reduction, dtype=self.dtype)
        return reduction(values, values, sample_weight=sample_weight)


class SaturatingInputLoss(FunctionLoss):
    """A ``FunctionLoss`` whose half-precision predictions keep a finite gradient.

    Keras's ``Loss.__call__`` casts a float16 ``y_pred`` (``mixed_float16``)
    to the loss dtype with a plain cast, whose gradient overflows to ``inf``
    in float16 beyond 65504. The cast is made here first, with the gradient
    saturating at the float16 maximum instead, as the function forms'
    (``_internal.dtypes.to_compute_saturating``); the Keras mask is kept. The
    values stay in the loss dtype (a squared distance of embeddings of 40000 is
    finite there, not in float16). For the losses whose function forms
    saturate and whose values may exceed float16: Gaussian and Poisson
    likelihoods, metric learning.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        if (
            tf.is_tensor(y_pred)
            and not isinstance(y_pred, (tf.RaggedTensor, tf.SparseTensor))
            and y_pred.dtype in (tf.float16, tf.bfloat16)
            and tf.as_dtype(self.dtype) in (tf.float32, tf.float64)
        ):
            mask = getattr(y_pred, "_keras_mask", None)
            y_pred = to_compute_saturating(tf.convert_to_tensor(y_pred))
            if mask is not None:
                y_pred._keras_mask = mask
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)


def plain_loss(fn, default_name, *, base=FunctionLoss):
    """A ``base`` subclass computing ``fn`` with Keras's constructor ``(reduction, name, dtype)``.

    For the losses without arguments of their own: the loss class subclasses
    it and states its docstring,
    ``class MeanSquaredError(plain_loss(mean_squared_error, "mean_squared_error"))``.
    """

    class PlainLoss(base):
        def __init__(self, reduction=REDUCTION, name=default_name, dtype=None):
            super().__init__(fn, reduction, name, dtype)

    return PlainLoss
