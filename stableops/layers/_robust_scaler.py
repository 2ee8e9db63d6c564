"""``RobustScaler``: each feature's median and interquartile range from ``adapt``, then a clip."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from stableops._internal.checks import axis_argument, canonical_axis, number
from stableops._internal.clip import clip
from stableops._internal.dtypes import compute_dtype, dtype_limits

_register = keras.saving.register_keras_serializable(package="stableops")
_CLIP_FORMS = "`clip` must be a positive number or a (low, high) pair"


def _clip_bounds(clip):
    """``clip`` as ``(low, high)`` floats, or ``None`` for no clipping."""
    if clip is None:
        return None
    if isinstance(clip, (list, tuple)):
        if len(clip) != 2:
            raise ValueError(_CLIP_FORMS + f", got clip={clip!r}")
        low, high = clip
    else:
        low, high = None, clip
    # Both ends of a pair are numbers (None is no end: (None, 5) is not [-5, 5]).
    ends = (high,) if not isinstance(clip, (list, tuple)) else (low, high)
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v)
           for v in ends):
        raise ValueError(f"`clip` must hold numbers, got clip={clip!r}")
    if low is None:  # a single number c means [-c, c]
        if not high > 0:
            raise ValueError(_CLIP_FORMS + f", got clip={clip!r}")
        low = -high
    # The median maps to 0; a range that excludes 0 would clip the middle of the data.
    if not low < 0 < high:
        raise ValueError(f"`clip` must satisfy low < 0 < high, got clip={clip!r}")
    return float(low), float(high)


def _quantile_range(quantile_range):
    if not isinstance(quantile_range, (list, tuple)) or len(quantile_range) != 2:
        raise ValueError(
            "`quantile_range` must be a (low, high) pair of percentiles, "
            f"got quantile_range={quantile_range!r}"
        )
    low, high = (number(q, "quantile_range") for q in quantile_range)
    if not 0.0 <= low < 50.0 < high <= 100.0:
        raise ValueError(
            "`quantile_range` must satisfy 0 <= low < 50 < high <= 100, "
            f"got quantile_range={quantile_range!r}"
        )
    return low, high


def _first_component(element):
    # A dataset of (features, labels) pairs: statistics are learned from the features.
    if isinstance(element, (tuple, list)):
        return element[0]
    return element


def _as_numpy(value, where):
    if isinstance(value, dict):  # features by name: not one array
        raise TypeError(
            f"RobustScaler.adapt needs arrays, got a dict of {sorted(value)} ({where}); "
            "adapt it on the one feature it scales (for a dataset: dataset.map(lambda d: d[key]))"
        )
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    return np.asarray(value)


class _Collector:
    """Gathers adapt data as ``(samples, features)`` blocks and checks their rank and width."""

    def __init__(self, layer_rank, axis, n_features):
        self.rank = layer_rank  # None until the first array fixes it
        self.axis = axis
        self.n_features = n_features
        self.blocks = []

    def add_batch(self, batch, where):
        batch = _as_numpy(batch, where)
        if batch.dtype.kind not in "fiub":  # bfloat16 arrays, object arrays, strings
            try:
                batch = batch.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"RobustScaler.adapt needs numeric data, got dtype {batch.dtype} ({where})"
                ) from None
        if self.rank is None:
            self.rank = batch.ndim
        if batch.ndim != self.rank:
            raise ValueError(
                f"RobustScaler.adapt got data of rank {batch.ndim} with shape {batch.shape} "
                f"({where}), "
                f"but the layer expects rank-{self.rank} inputs (batch, ..., features)"
            )
        if self.rank < 2:
            raise ValueError(
                f"RobustScaler.adapt needs data of rank >= 2 (batch, ..., features), got shape "
                f"{batch.shape} ({where}); for one feature use x[:, None]"
            )
        axis = canonical_axis(self.axis, self.rank, of="adapt data")
        width = batch.shape[axis]
        if width == 0:
            raise ValueError(
                f"RobustScaler.adapt got no features: axis {self.axis} of the data has size 0 "
                f"(shape {batch.shape}, {where})"
            )
        if self.n_features is None:
            self.n_features = width
        if width != self.n_features:
            raise ValueError(
                f"RobustScaler.adapt got {width} features on axis {self.axis} ({where}), "
                f"expected {self.n_features}"
            )
        self.blocks.append(np.moveaxis(batch, axis, -1).reshape(-1, width))

    def add_dataset(self, dataset, steps):
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
                raise ValueError(f"`steps` must be a positive integer or None, got steps={steps!r}")
            dataset = dataset.take(steps)
        for index, element in enumerate(dataset):
            where = f"dataset element {index}"
            x = _as_numpy(_first_component(element), where)
            if self.rank is not None and x.ndim == self.rank - 1:
                x = x[None]  # an unbatched sample
            elif self.rank is None and x.ndim == 1:
                x = x[None]  # an unbatched feature vector
            self.add_batch(x, where)

    def checked_blocks(self):
        if sum(b.shape[0] for b in self.blocks) == 0:
            raise ValueError("RobustScaler.adapt got no data (an empty array or dataset)")
        return self.blocks


# Features per np.nanpercentile call: bounds the float64 working copy to
# samples x this many columns, whatever the width of the data.
_FEATURE_CHUNK = 256


def _robust_statistics(blocks, quantile_range):
    """Per-feature median, robust scale and non-missing count of ``(samples, features)`` blocks.

    Non-finite values (NaN, +-inf) are ignored. The scale is the interquartile
    range (``quantile_range``); where that is 0 it is the mean absolute
    deviation from the median; where that is also 0 (a constant feature) it is 1.
    """
    n_features = blocks[0].shape[1]
    median = np.empty(n_features)
    scale = np.empty(n_features)
    count = np.empty(n_features, dtype=np.int64)
    q_low, q_high = quantile_range
    for start in range(0, n_features, _FEATURE_CHUNK):
        cols = slice(start, start + _FEATURE_CHUNK)
        # Only this float64 copy of up to _FEATURE_CHUNK columns is added to the data.
        block = np.concatenate([b[:, cols] for b in blocks], axis=0).astype(np.float64)
        block[~np.isfinite(block)] = np.nan
        present = np.sum(~np.isnan(block), axis=0)
        if np.any(present == 0):
            empty = (np.flatnonzero(present == 0) + start).tolist()
            raise ValueError(
                f"RobustScaler.adapt: feature(s) {empty} have no finite values in the adapt data"
            )
        low, mid, high = np.nanpercentile(block, [q_low, 50.0, q_high], axis=0)
        spread = high - low
        mean_abs_dev = np.nanmean(np.abs(block - mid), axis=0)
        spread = np.where(spread > 0, spread, mean_abs_dev)
        median[cols], scale[cols], count[cols] = mid, np.where(spread > 0, spread, 1.0), present
    return median, scale, count


def _fit_to_dtype(median, scale, dtype):
    """Statistics in the variables' dtype: scale a positive normal number, median finite."""
    limits = dtype_limits(dtype)
    if np.any(np.abs(median) > limits.max):
        bad = np.flatnonzero(np.abs(median) > limits.max).tolist()
        raise ValueError(
            f"RobustScaler.adapt: the median of feature(s) {bad} overflows {limits.dtype.name}; "
            "rescale the data first or use a float64 dtype policy"
        )
    # A scale below the smallest normal number would flush to 0 (division by
    # zero); one above the largest would round to inf (every output 0).
    scale = np.where(scale < limits.tiny, 1.0, np.minimum(scale, limits.max))
    return median.astype(dtype.as_numpy_dtype), scale.astype(dtype.as_numpy_dtype)


def _check_not_batch_axis(axis, given):
    """``ValueError`` where the feature axis is 0, the batch axis: one statistic per sample."""
    if axis == 0:
        raise ValueError(
            f"RobustScaler's `axis` is the feature axis and cannot be the batch axis 0, "
            f"got axis={given!r}"
        )


@_register
class RobustScaler(keras.layers.Layer):
    """Scale features by their median and interquartile range, and clip outliers.

    ``adapt(data)`` learns, per feature (along ``axis``), the median and the
    interquartile range (IQR, the spread between the 25th and 75th
    percentiles); ``call`` maps every value to robust units and clips::

        y = clip((x - median) / iqr, low, high)   # default low, high = -5, 5

    Outliers cannot blow up the statistics (unlike mean and variance), and
    whatever the input, the output stays inside ``[low, high]``: the first
    layer of a model sees bounded values even when the raw features are huge.

    Formula:
        ``clip((x - median) / scale, low, high)`` with ``scale = IQR``.

    Numerical stability:
        - Statistics are exact: ``adapt`` collects all the data and uses
          ``numpy.nanpercentile`` (linear interpolation, as ``numpy.median``
          and scikit-learn's ``RobustScaler``) in float64. Memory: the whole
          adapt data set is held at once (a NumPy array with the features
          last is used in place; a dataset's elements are all materialised
          in their own dtype), plus a float64 working copy of
          ``samples x min(features, 256)`` values. Subsample data sets that
          do not fit in memory before adapting.
        - NaN and +-inf in the adapt data are ignored (treated as missing). A
          feature with no finite value is an error.
        - Constant features: where the IQR is 0 the scale falls back to the
          mean absolute deviation from the median (nonzero when some values
          differ from the median, e.g. a mostly-zero sparse feature), and to 1
          when that is 0 too (a truly constant feature maps to 0). A scale
          below the smallest normal number of the statistics' dtype also
          counts as 0.
        - ``call`` computes in float64 whatever the layer's compute dtype, so
          raw features that would overflow float16 (> 65504) are scaled before
          any cast to half precision, ``x - median`` cannot overflow, and the
          result is rounded once (an interquartile range beyond the
          statistics' dtype is stored as its maximum); the result is returned
          in the layer's compute dtype (float16 under ``mixed_float16``). The
          layer does not autocast its inputs (``autocast=False``) for this
          reason; integer inputs are accepted.
        - NaN inputs give NaN outputs (never a silent finite value); ``+-inf``
          inputs give the clip bounds (they are extreme outliers), or ``+-inf``
          with ``clip=None``.
        - Gradient with respect to the input: ``1 / scale`` inside the clip
          range, 0 outside (the layer has no trainable weights).

    Args:
        axis: integer, the feature axis (default -1, the last). Statistics are
            computed over all other axes.
        clip: a positive number ``c`` for the range ``[-c, c]`` (default 5.0),
            a ``(low, high)`` pair with ``low < 0 < high`` (infinite bounds
            allowed), or ``None`` for no clipping.
        quantile_range: the percentiles whose difference is the scale,
            ``0 <= low < 50 < high <= 100``. Defaults to ``(25.0, 75.0)``, the IQR.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for an invalid ``clip``/``quantile_range``/``axis`` (naming
            it and its value); in ``adapt``, for data of the wrong rank or
            number of features, empty data, or a feature without finite values.
        RuntimeError: when the layer is called with data before ``adapt``.

    State:
        The statistics are non-trainable weights (``median``, ``scale``,
        ``count``, the number of finite values seen per feature), so
        ``model.save``/``keras.saving.load_model`` and ``save_weights`` keep them.

    Example:
        >>> scaler = RobustScaler()
        >>> scaler.adapt(np.array([[1.0], [2.0], [3.0], [4.0], [1e6]]))
        >>> scaler(np.array([[3.0], [1e6]])).numpy()  # median 3, IQR 2; 1e6 is clipped
        array([[0.],
               [5.]], dtype=float32)
    """

    def __init__(self, axis=-1, clip=5.0, quantile_range=(25.0, 75.0), **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.axis = axis_argument(axis)
        _check_not_batch_axis(self.axis, self.axis)
        self._bounds = _clip_bounds(clip)
        # As given (a number or a pair), for get_config; a tuple, not a list, so
        # Keras does not wrap it in a tracked list.
        self.clip = tuple(clip) if isinstance(clip, (list, tuple)) else clip
        if isinstance(self.clip, numbers.Real):
            self.clip = float(self.clip)
        self.quantile_range = _quantile_range(quantile_range)
        self.supports_masking = True
        self._adapted = False
        self.median = self.scale = self.count = None
        self._rank = None

    # -- state -------------------------------------------------------------

    @property
    def _stat_dtype(self):
        # float32 for float16/bfloat16/mixed policies, float64 for a float64 policy.
        return compute_dtype(self.variable_dtype)

    def _feature_axis(self, rank):
        if rank < 2:
            raise ValueError(
                f"RobustScaler needs inputs of rank >= 2 (batch, ..., features), got rank {rank}"
            )
        axis = canonical_axis(self.axis, rank, of="inputs")
        _check_not_batch_axis(axis, self.axis)
        return axis

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        axis = self._feature_axis(len(input_shape))
        n_features = input_shape[axis]
        if n_features is None:
            raise ValueError(
                f"RobustScaler needs a known number of features on axis {self.axis}, "
                f"got input shape {input_shape}"
            )
        weight = dict(shape=(n_features,), dtype=self._stat_dtype, trainable=False, autocast=False)
        self.median = self.add_weight(name="median", initializer="zeros", **weight)
        self.scale = self.add_weight(name="scale", initializer="ones", **weight)
        self.count = self.add_weight(
            name="count", shape=(n_features,), dtype="int64", initializer="zeros",
            trainable=False, autocast=False,
        )
        self._rank = len(input_shape)
        # Any rank from 2 on, as keras.layers.Normalization: the statistics apply
        # along the feature axis, whatever axes come before it.
        self.input_spec = keras.InputSpec(min_ndim=2, axes={self.axis: n_features})

    @property
    def adapted(self):
        """Whether the statistics have been learned (by ``adapt``, loaded, or set as weights)."""
        if not self._adapted and self.built:
            # Loaded or set_weights()-ed statistics count as learned. init_scope
            # reads the variable eagerly even while a tf.function is tracing.
            with tf.init_scope():
                self._adapted = bool(np.any(keras.ops.convert_to_numpy(self.count) > 0))
        return self._adapted

    def adapt(self, data, steps=None):
        """Learn each feature's median and interquartile range from ``data``.

        Args:
            data: a NumPy array or tensor of shape ``(samples, ..., features)``,
                or a ``tf.data.Dataset`` of such batches, or of single samples
                (one rank lower), or of ``(features, labels)`` pairs (the
                labels are ignored). When the layer has not been built, a
                dataset element of rank 1 is taken as one sample and higher
                ranks as batches; build the layer (or adapt on a batched
                dataset) to adapt on unbatched multi-dimensional samples.
            steps: for a dataset, the number of elements to read (default:
                all); a positive int. Must be ``None`` for an array.

        Raises:
            ValueError: on data of the wrong rank or number of features, on
                empty data or data with no features, when a feature has no
                finite value, or on ``steps`` given with an array.
            TypeError: on non-numeric data.
        """
        built_rank = self._rank if self.built else None
        n_features = int(self.median.shape[0]) if self.built else None
        collector = _Collector(built_rank, self.axis, n_features)
        if isinstance(data, tf.data.Dataset):
            collector.add_dataset(data, steps)
        elif steps is not None:
            # An array is read whole; a silently ignored `steps` would hide a bug.
            raise ValueError(
                "`steps` applies to a tf.data.Dataset only (an array is read whole), "
                f"got steps={steps!r} with {type(data).__name__} data"
            )
        else:
            collector.add_batch(data, "the array")
        median, scale, count = _robust_statistics(collector.checked_blocks(), self.quantile_range)
        if not self.built:
            shape = [None] * collector.rank
            shape[self._feature_axis(collector.rank)] = collector.n_features
            self.build(tuple(shape))
        median, scale = _fit_to_dtype(median, scale, self._stat_dtype)
        self.median.assign(median)
        self.scale.assign(scale)
        self.count.assign(count)
        self._adapted = True

    # -- computation ---------------------------------------------------------

    def call(self, inputs):
        if not self.adapted:
            raise RuntimeError(
                f"RobustScaler '{self.name}' has not learned its statistics: call "
                "`layer.adapt(data)` before using it (or load a saved, adapted model)"
            )
        # float64 whatever the dtypes: x - median of float32 numbers near the maximum
        # overflows float32 (-3e38 against a median of 2.2e38 gave -5, the clip, for -4.33),
        # and the result is rounded once.
        work = tf.float64
        x = tf.cast(tf.convert_to_tensor(inputs), work)
        rank = len(x.shape)
        stat_shape = [1] * rank
        stat_shape[self._feature_axis(rank)] = -1
        median = tf.reshape(tf.cast(self.median, work), stat_shape)
        scale = tf.reshape(tf.cast(self.scale, work), stat_shape)
        # scale >= the smallest normal number (see _fit_to_dtype): no 0/0.
        y = (x - median) / scale
        if self._bounds is not None:
            low, high = self._bounds
            y = clip(y, low, high)  # NaN stays NaN (tf.clip_by_value may not keep it)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        clip = list(self.clip) if isinstance(self.clip, tuple) else self.clip
        config.update(axis=self.axis, clip=clip, quantile_range=list(self.quantile_range))
        return config
