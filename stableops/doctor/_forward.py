"""Running a model eagerly, layer by layer, and collecting per-layer statistics.

A "probe" model shares the user's layers and weights and returns every
layer's inputs and outputs, so one eager call shows where values first stop
being finite, how close float16 layers are to overflow, and which units are
saturated or dead. Statistics are accumulated batch by batch (nothing but
counters and per-unit flags is kept), so the sample size is bounded by time,
not memory.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import tensorflow as tf

from stableops.doctor import _data
from stableops.doctor import _thresholds as th
from stableops.doctor._quiet import quiet_native_stderr

_MAX_ROWS_KEPT = 64  # sample indices remembered per layer, for evidence only

# Layers that put inputs on a common scale: no per-feature scale or outlier
# warning for an input that feeds one of these directly.
NORMALIZING_LAYERS = {"Normalization", "RobustScaler", "BatchNormalization"}


def activation_name(layer) -> str | None:
    """The nonlinearity of the layer's output: ``"relu"``, ``"sigmoid"``, ``"tanh"``, ..."""
    class_name = type(layer).__name__
    if class_name == "ReLU":
        config = layer.get_config()
        plain = not config.get("negative_slope") and not config.get("threshold")
        return "relu" if plain and config.get("max_value") is None else "relu_variant"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", type(activation).__name__)


@dataclasses.dataclass
class LayerStats:
    """Per-layer accumulators, filled batch by batch."""

    layer: object
    name: str
    class_name: str
    activation: str | None
    compute_dtype: str
    is_output: bool
    count: int = 0
    nonfinite: int = 0
    infinite: int = 0
    max_abs: float = 0.0
    saturated: int = 0
    alive: np.ndarray | None = None
    nonfinite_rows: list = dataclasses.field(default_factory=list)
    input_nonfinite: int = 0
    input_max_abs: float = 0.0
    fully_masked_rows: list = dataclasses.field(default_factory=list)

    @property
    def location(self) -> str:
        return f"layer '{self.name}'"

    @property
    def saturated_fraction(self) -> float:
        return self.saturated / self.count if self.count else 0.0

    @property
    def dead_fraction(self) -> float:
        if self.alive is None or self.alive.size == 0:
            return 0.0
        return float(1.0 - self.alive.mean())

    @property
    def dead_units(self) -> int:
        return 0 if self.alive is None else int((~self.alive).sum())

    @property
    def units(self) -> int:
        return 0 if self.alive is None else int(self.alive.size)


def _rows_with(flags: np.ndarray) -> np.ndarray:
    """Indices of the leading-axis rows where any element of ``flags`` is set."""
    if flags.ndim == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(flags.reshape(flags.shape[0], -1).any(axis=1))


def _float_numpy(tensor) -> np.ndarray | None:
    value = np.asarray(tensor)
    if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
        return None
    return value.astype(np.float32, copy=False) if value.dtype != np.float64 else value


class Probe:
    """The user's model plus every (single-node) layer's inputs and outputs as outputs.

    ``Probe.available`` is False for subclassed models without a layer graph;
    then only the model's own outputs are examined.
    """

    def __init__(self, model):
        self.model = model
        self.layers = []
        self.layer_inputs = []
        self.is_output = []
        self.available = False
        self.output_structure = None
        try:
            model_outputs = list(model.outputs)
            model_inputs = list(model.inputs)
        except (AttributeError, TypeError, ValueError):
            return  # a subclassed model: no layer graph
        try:
            model_input = model.input  # keeps a dict/list structure
        except (AttributeError, ValueError):
            model_input = model_inputs[0] if len(model_inputs) == 1 else model_inputs
        layer_inputs, layer_outputs = [], []
        for layer in model.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            try:
                inputs = [t for t in tf.nest.flatten(layer.input) if t is not None]
                outputs = tf.nest.flatten(layer.output)
            except (AttributeError, ValueError):
                continue  # shared layer (several call sites) or unbuilt
            self.layers.append(layer)
            layer_inputs.append(inputs)
            layer_outputs.append(outputs)
        flat = list(model_outputs)
        self._slices = []
        for inputs, outputs in zip(layer_inputs, layer_outputs):
            start = len(flat)
            flat.extend(inputs)
            middle = len(flat)
            flat.extend(outputs)
            self._slices.append((slice(start, middle), slice(middle, len(flat))))
        self.layer_inputs = layer_inputs
        self._n_model_outputs = len(model_outputs)
        output_ids = {id(t) for t in model_outputs}
        self.is_output = [any(id(t) in output_ids for t in outs) for outs in layer_outputs]
        try:
            self.output_structure = model.output  # keeps a dict/list structure
        except (AttributeError, ValueError):
            self.output_structure = model_outputs[0] if len(model_outputs) == 1 else model_outputs
        try:
            self._probe = keras.Model(model_input, flat)
        except Exception:
            return
        self.available = True

    def __call__(self, x, training):
        """Return ``(y_pred, [(layer_inputs, layer_outputs), ...])`` for a batch."""
        if not self.available:
            return self.model(x, training=training), []
        flat = self._probe(x, training=training)
        flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
        y_pred = tf.nest.pack_sequence_as(self.output_structure, flat[: self._n_model_outputs])
        per_layer = [(flat[a], flat[b]) for a, b in self._slices]
        return y_pred, per_layer


def _accumulate(stats: LayerStats, inputs, outputs, row_offset: int):
    for tensor in inputs:
        values = _float_numpy(tensor)
        if values is not None:
            finite = np.isfinite(values)
            stats.input_nonfinite += int((~finite).sum())
            if finite.any():
                stats.input_max_abs = max(stats.input_max_abs, float(np.abs(values[finite]).max()))
        mask = getattr(tensor, "_keras_mask", None)  # Keras's documented mask attribute
        if mask is not None:
            mask = np.asarray(mask).astype(bool)
            if mask.ndim >= 1:
                empty = ~mask.reshape(mask.shape[0], -1).any(axis=1)
                rows = np.flatnonzero(empty) + row_offset
                stats.fully_masked_rows.extend(rows[:_MAX_ROWS_KEPT].tolist())
    for tensor in outputs:
        values = _float_numpy(tensor)
        if values is None:
            continue
        finite = np.isfinite(values)
        stats.count += values.size
        stats.nonfinite += int((~finite).sum())
        stats.infinite += int(np.isinf(values).sum())
        if (~finite).any() and len(stats.nonfinite_rows) < _MAX_ROWS_KEPT:
            rows = _rows_with(~finite) + row_offset
            stats.nonfinite_rows.extend(rows[: _MAX_ROWS_KEPT - len(stats.nonfinite_rows)].tolist())
        if finite.any():
            stats.max_abs = max(stats.max_abs, float(np.abs(values[finite]).max()))
        if stats.is_output:
            continue
        if stats.activation == "sigmoid":
            margin = th.SATURATION_MARGIN
            stats.saturated += int(((values < margin) | (values > 1.0 - margin)).sum())
        elif stats.activation == "tanh":
            # tanh spans [-1, 1]: 1% of that range is 0.02.
            stats.saturated += int((np.abs(values) > 1.0 - 2.0 * th.SATURATION_MARGIN).sum())
        elif stats.activation == "relu" and values.ndim >= 2:
            positive = (values > 0).reshape(-1, values.shape[-1]).any(axis=0)
            stats.alive = positive if stats.alive is None else (stats.alive | positive)


def trace_forward(model, x, *, batch_size: int, training: bool = True, probe=None):
    """Run ``model`` over the sample ``x`` in batches; return ``(probe, stats, y_pred)``.

    ``y_pred`` is the concatenated model output (NumPy, same structure as the
    model's output); ``stats`` holds one :class:`LayerStats` per probed layer.
    ``probe``: the model's :class:`Probe`, when the caller has built it.
    """
    probe = probe or Probe(model)
    stats = [
        LayerStats(
            layer=layer,
            name=layer.name,
            class_name=type(layer).__name__,
            activation=activation_name(layer),
            compute_dtype=str(getattr(layer, "compute_dtype", "float32")),
            is_output=is_output,
        )
        for layer, is_output in zip(probe.layers, probe.is_output)
    ]
    predictions = []
    for start, xb, _ in _data.batches(x, None, batch_size):
        y_pred, per_layer = probe(xb, training=training)
        predictions.append(tf.nest.map_structure(lambda t: np.asarray(t), y_pred))
        for layer_stats, (inputs, outputs) in zip(stats, per_layer):
            _accumulate(layer_stats, inputs, outputs, start)
    y_pred = tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *predictions)
    return probe, stats, y_pred


# --------------------------------------------------------------------------
# Finding the first op that produced a non-finite value.


def first_non_finite_op(fn) -> str | None:
    """Run ``fn()`` eagerly with ``tf.debugging.enable_check_numerics``; which op went non-finite.

    Returns the type (``"Log"``, ``"RealDiv"``, ...) of the first op whose
    output held inf or NaN, or ``None`` if none did, if that op is a traced
    function's call (an XLA-compiled stableops kernel: no name a user would
    recognise), or if ``fn`` failed otherwise (the caller has already seen
    the values).

    Call it only with inputs ``fn`` has already run on: check-numerics also
    instruments ``tf.function`` graphs *traced* while it is enabled (e.g. the
    XLA kernels of stableops ops), and such a graph would keep raising on
    legitimate NaN afterwards. With the same shapes, every function is
    already traced and cached, so nothing new is instrumented.
    """
    tf.debugging.enable_check_numerics()
    try:
        with quiet_native_stderr():
            fn()
    except Exception as error:  # noqa: BLE001
        op = op_named_by_check_numerics(error)
        return None if op is None or op.startswith("__") else op
    finally:
        tf.debugging.disable_check_numerics()
    return None


_CHECK_NUMERICS_OP = re.compile(r'eagerly-executing op "(?P<op>[\w.]+)"')


def op_named_by_check_numerics(error) -> str | None:
    """The op type in the error ``enable_check_numerics`` raises for an eager op, or None.

    TensorFlow offers no structured form of it: its check-numerics callback
    names the op only in the message of the ``InvalidArgumentError`` it raises
    (the error's ``op`` and ``node_def`` are None eagerly), as
    ``... in output 0 of eagerly-executing op "Log" (# of outputs: 1) ...``.
    The public alternative, ``tf.debugging.experimental.enable_dump_debug_info``,
    writes every op's outputs to files. So the message is read here, and
    nowhere else; should its form change, the doctor reports no op
    ("unknown"), never a wrong one.

    >>> op_named_by_check_numerics(ValueError(
    ...     '!!! Detected Infinity or NaN in output 0 of eagerly-executing op "Log" '
    ...     "(# of outputs: 1) !!!"))
    'Log'
    >>> op_named_by_check_numerics(ValueError("some other error")) is None
    True
    """
    match = _CHECK_NUMERICS_OP.search(str(error))
    return match.group("op") if match else None
