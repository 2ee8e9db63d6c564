"""The individual diagnoses: each turns statistics into :class:`Finding` objects.

Every check returns a (possibly empty) list of findings; none has side
effects. The numbers they compare against live in ``_thresholds``.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import tensorflow as tf

from stableops.doctor import _thresholds as th
from stableops.doctor._forward import NORMALIZING_LAYERS
from stableops.doctor._registry import SCALE_INPUTS, SCALER_FIX, finding
from stableops.doctor._report import format_number
from stableops.ops import dtype_limits

_MAX_LISTED = 8  # indices listed in evidence

# Layers that read integers as indices (no magnitude to check), not as numbers.
INDEX_LAYERS = {"Embedding", "StringLookup", "IntegerLookup", "CategoryEncoding", "Hashing", "Discretization"}

# Losses whose value grows with the size of the regression error (the
# targets' scale): unscaled targets make their gradients that many times larger.
REGRESSION_LOSSES = {"mean_squared_error", "mean_absolute_error", "huber", "log_cosh"}



def _n(count, noun: str) -> str:
    """``"1 label"``, ``"3 labels"``."""
    count = int(count)
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _listed(indices) -> list:
    return [int(i) for i in list(indices)[:_MAX_LISTED]]


def _input_name(index: int, name: str | None, n_inputs: int) -> str:
    if n_inputs == 1:
        return "input"
    return f"input '{name}'" if name else f"input {index}"


# ---------------------------------------------------------------------------
# Inputs


def _feature_matrix(values: np.ndarray) -> np.ndarray:
    """Rows x features (the last axis), in float64."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim <= 1:
        return values.reshape(-1, 1)
    return values.reshape(-1, values.shape[-1])


def feature_statistics(values: np.ndarray) -> dict:
    """Per-feature statistics of one float input, NaN/inf excluded (vectorised over features).

    ``magnitude`` is the typical size of a value (the 75th percentile of
    ``|x|``, robust to outliers; the largest ``|x|`` for a mostly-zero
    feature); ``max_z`` and ``outliers`` use the robust z-score
    ``|x - median| / sd`` with ``sd = MAD / 0.6745`` (mean absolute deviation
    * 1.2533 when the MAD is 0). Binary/indicator features (at most two
    distinct values) get no outlier statistics: their rare level is not an
    outlier.
    """
    matrix = _feature_matrix(values)
    n_features = matrix.shape[1]
    finite = np.isfinite(matrix)
    clean = np.where(finite, matrix, np.nan)
    has_values = finite.any(axis=0)
    out = {
        "nonfinite": (~finite).sum(axis=0),
        "magnitude": np.zeros(n_features),
        "max_abs": np.zeros(n_features),
        "max_z": np.zeros(n_features),
        "outliers": np.zeros(n_features, dtype=np.int64),
    }
    if not has_values.any():
        return out
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        absolute = np.abs(clean)
        max_abs = np.nanmax(absolute, axis=0)
        typical = np.nanpercentile(absolute, 75, axis=0)
        median = np.nanmedian(clean, axis=0)
        deviation = np.abs(clean - median)
        mad = np.nanmedian(deviation, axis=0)
        mean_ad = np.nanmean(deviation, axis=0)
        sd = np.where(mad > 0, mad / th.MAD_TO_SD, mean_ad * th.MEAN_AD_TO_SD)
        z = deviation / np.where(sd > 0, sd, np.inf)
        ordered = np.sort(clean, axis=0)  # NaN sorts last
        distinct = 1 + ((np.diff(ordered, axis=0) != 0) & np.isfinite(ordered[1:])).sum(axis=0)
    out["max_abs"] = np.where(has_values, max_abs, 0.0)
    out["magnitude"] = np.where(has_values, np.where(typical > 0, typical, max_abs), 0.0)
    continuous = has_values & (distinct > 2) & (sd > 0)
    out["max_z"] = np.where(continuous, np.nanmax(np.where(np.isfinite(z), z, 0.0), axis=0), 0.0)
    out["outliers"] = np.where(continuous, (z > th.OUTLIER_Z).sum(axis=0), 0)
    return out


def check_inputs(inputs, *, names=None, consumers=None, layer_stats=None, nonfinite_counts=None) -> list:
    """Non-finite values, float16 overflow, feature scale spread and outliers.

    Args:
        inputs: list of NumPy arrays (the model's inputs, flattened).
        names: their names (for locations).
        consumers: per input, the layers that read it directly.
        layer_stats: ``{layer name: LayerStats}`` from the forward trace.
        nonfinite_counts: per input, per-feature counts of NaN/inf over all
            rows (``inputs`` may be a subsample); counted on ``inputs`` if None.
    """
    findings = []
    names = names or [None] * len(inputs)
    consumers = consumers or [[] for _ in inputs]
    layer_stats = layer_stats or {}
    for index, values in enumerate(inputs):
        values = np.asarray(values)
        if not (np.issubdtype(values.dtype, np.floating) or values.dtype.name == "bfloat16"):
            readers = consumers[index]
            if not readers or any(type(layer).__name__ in INDEX_LAYERS for layer in readers):
                continue  # token ids, categorical codes: no scale to check
            if values.dtype.kind not in "iub":
                continue
            values = values.astype(np.float64)  # integer features fed to a Dense layer: numbers
        where = _input_name(index, names[index], len(inputs))
        stats = feature_statistics(values)
        if nonfinite_counts is not None and nonfinite_counts[index] is not None:
            stats["nonfinite"] = np.asarray(nonfinite_counts[index])
        bad = np.flatnonzero(stats["nonfinite"])
        if bad.size:
            findings.append(
                finding(
                    "input.non_finite",
                    location=f"{where} feature {bad[0]}",
                    message=f"{_n(stats['nonfinite'].sum(), 'input value')} NaN or inf",
                    evidence={
                        "nonfinite_values": int(stats["nonfinite"].sum()),
                        "features": _listed(bad),
                    },
                )
            )
        readers = consumers[index]
        normalized = any(type(layer).__name__ in NORMALIZING_LAYERS for layer in readers)
        max_abs = float(stats["max_abs"].max()) if stats["max_abs"].size else 0.0
        for layer in readers:
            reader = layer_stats.get(layer.name)
            if (
                reader is not None
                and reader.compute_dtype == "float16"
                and max_abs > th.FLOAT16_MAX
                and reader.nonfinite
            ):
                feature = int(np.argmax(stats["max_abs"]))
                fix = SCALER_FIX
                if type(layer).__name__ in NORMALIZING_LAYERS:
                    # The normaliser itself casts the raw values: suggesting
                    # it would not help. It must compute in float32.
                    fix = (
                        f"run '{layer.name}' in float32 ({type(layer).__name__}(..., dtype='float32'), "
                        "the layers after it can stay in mixed precision), or use "
                        "stableops.layers.RobustScaler(), which computes in float32 under mixed precision"
                    )
                findings.append(
                    finding(
                        "input.float16_overflow",
                        location=f"{where} feature {feature}",
                        message=f"input values up to {format_number(max_abs)} exceed the float16 "
                        f"maximum {format_number(th.FLOAT16_MAX)}: layer '{layer.name}' casts "
                        "them to float16, where they become inf",
                        evidence={"max_abs": max_abs, "float16_max": th.FLOAT16_MAX, "layer": layer.name},
                        fix=fix,
                    )
                )
                break
        if normalized:
            continue
        findings.extend(_scale_findings(where, stats))
        findings.extend(_outlier_findings(where, stats))
    return findings


def _scale_findings(where: str, stats: dict) -> list:
    magnitude = stats["magnitude"]
    positive = magnitude > 0
    if not positive.any():
        return []
    largest = int(np.argmax(magnitude))
    smallest = int(np.flatnonzero(positive)[np.argmin(magnitude[positive])])
    spread = float(magnitude[largest] / magnitude[smallest])
    unscaled = np.flatnonzero(magnitude > th.UNSCALED_MAGNITUDE)
    if not unscaled.size and spread <= th.SCALE_SPREAD:
        return []
    reasons = []
    if unscaled.size:
        reasons.append(
            f"{unscaled.size} feature(s) have typical magnitude above "
            f"{format_number(th.UNSCALED_MAGNITUDE)} (largest {format_number(magnitude[largest])})"
        )
    if spread > th.SCALE_SPREAD:
        reasons.append(f"feature scales differ by {format_number(spread)}x")
    return [
        finding(
            "input.scale",
            location=f"{where} feature {largest}",
            message="inputs are not scaled: " + "; ".join(reasons),
            evidence={
                "largest_magnitude": float(magnitude[largest]),
                "largest_feature": largest,
                "smallest_magnitude": float(magnitude[smallest]),
                "smallest_feature": smallest,
                "spread": spread,
                "unscaled_features": _listed(unscaled),
            },
        )
    ]


def _outlier_findings(where: str, stats: dict) -> list:
    flagged = np.flatnonzero(stats["outliers"])
    if not flagged.size:
        return []
    worst = int(flagged[np.argmax(stats["max_z"][flagged])])
    return [
        finding(
            "input.outliers",
            location=f"{where} feature {worst}",
            message=f"outliers: {_n(stats['outliers'].sum(), 'value')} more than "
            f"{format_number(th.OUTLIER_Z)} "
            f"robust SDs from the feature median (worst: {format_number(stats['max_z'][worst])} SDs)",
            evidence={
                "max_robust_z": float(stats["max_z"][worst]),
                "max_abs": float(stats["max_abs"][worst]),
                "outlier_values": int(stats["outliers"].sum()),
                "features": _listed(flagged),
            },
        )
    ]


# ---------------------------------------------------------------------------
# Labels


def _num_classes(y_pred) -> int | None:
    shape = np.shape(y_pred)
    return int(shape[-1]) if len(shape) >= 1 else None


def check_labels(y, y_pred, loss) -> list:
    """Labels valid for the loss: finite, in range, one-hot rows summing to 1."""
    if y is None or loss is None or isinstance(y, (dict, list, tuple)):
        return []
    y = np.asarray(y)
    findings = []
    if np.issubdtype(y.dtype, np.floating):
        nonfinite = ~np.isfinite(y)
        if nonfinite.any():
            findings.append(
                finding(
                    "labels.non_finite",
                    location="labels",
                    message=f"{_n(nonfinite.sum(), 'label')} NaN or inf",
                    evidence={
                        "nonfinite_labels": int(nonfinite.sum()),
                        "samples": _listed(np.flatnonzero(nonfinite.reshape(len(y), -1).any(axis=1))),
                    },
                )
            )
            return findings
    if loss.kind == "sparse":
        findings.extend(_sparse_label_findings(y, y_pred, loss))
    elif loss.kind == "categorical":
        findings.extend(_categorical_label_findings(y, y_pred, loss))
    elif loss.kind == "binary":
        findings.extend(_binary_label_findings(y, loss))
    elif loss.name in REGRESSION_LOSSES and y.dtype.kind in "iuf":
        findings.extend(_target_scale_findings(y, loss))
    return findings


def _target_scale_findings(y, loss) -> list:
    values = np.abs(y.astype(np.float64)).reshape(-1)
    if not values.size:
        return []
    typical = float(np.percentile(values, 75))
    if typical <= th.TARGET_SCALE:
        return []
    return [
        finding(
            "labels.scale",
            location="labels",
            message=f"regression targets are not scaled: typical magnitude {format_number(typical)} "
            f"(range {format_number(float(y.min()))} .. {format_number(float(y.max()))}), while a freshly "
            f"initialised output is of order 1: {loss.display}'s first errors and gradients are "
            f"{format_number(typical)}x those of standardised targets",
            evidence={
                "typical_magnitude": typical,
                "target_min": float(y.min()),
                "target_max": float(y.max()),
                "target_mean": float(np.mean(y)),
                "target_std": float(np.std(y)),
            },
        )
    ]


def _sparse_label_findings(y, y_pred, loss) -> list:
    classes = _num_classes(y_pred)
    if classes is None:
        return []
    if y.ndim == np.ndim(y_pred) and y.shape[-1] == classes and classes > 1:
        return [
            finding(
                "labels.shape",
                location="labels",
                message=f"labels have shape {y.shape}, like one-hot rows, but "
                f"{loss.display} expects class indices",
                evidence={"label_shape": str(y.shape), "prediction_shape": str(np.shape(y_pred))},
                fix="use CategoricalCrossentropy for one-hot labels, or pass argmax(labels)",
            )
        ]
    labels = y.reshape(-1)
    if loss.ignore_class is not None:
        labels = labels[labels != loss.ignore_class]
    not_integer = (
        labels != np.round(labels)
        if np.issubdtype(labels.dtype, np.floating)
        else np.zeros(labels.shape, bool)
    )
    out_of_range = (labels < 0) | (labels >= classes) | not_integer
    if not out_of_range.any():
        return []
    bad_values = np.unique(labels[out_of_range])
    return [
        finding(
            "labels.range",
            location="labels",
            message=f"{_n(out_of_range.sum(), 'label')} outside the valid class range [0, {classes}) "
            f"(e.g. {format_number(bad_values[0].item())}); eagerly Keras raises, under XLA "
            "the loss silently becomes NaN",
            evidence={
                "bad_labels": int(out_of_range.sum()),
                "bad_values": [format_number(v.item()) for v in bad_values[:_MAX_LISTED]],
                "num_classes": classes,
                "label_min": labels.min().item(),
                "label_max": labels.max().item(),
            },
            fix=f"fix the labels, give the model {int(np.max(labels)) + 1} outputs if that class is "
            "real, or mark them with ignore_class in stableops.losses.SparseCategoricalCrossentropy",
        )
    ]


def _categorical_label_findings(y, y_pred, loss) -> list:
    classes = _num_classes(y_pred)
    if y.ndim < np.ndim(y_pred) or (y.shape[-1] == 1 and classes and classes > 1):
        return [
            finding(
                "labels.shape",
                location="labels",
                message=f"labels have shape {y.shape}, like class indices, but {loss.display} "
                f"expects one-hot rows of {classes}",
                evidence={"label_shape": str(y.shape), "prediction_shape": str(np.shape(y_pred))},
                fix="use SparseCategoricalCrossentropy for integer labels, or one-hot encode them",
            )
        ]
    findings = []
    values = y.astype(np.float64)
    outside = (values < 0) | (values > 1)
    if outside.any():
        findings.append(
            finding(
                "labels.range",
                location="labels",
                message=f"{_n(outside.sum(), 'label value')} outside [0, 1]",
                evidence={
                    "bad_values": int(outside.sum()),
                    "label_min": float(values.min()),
                    "label_max": float(values.max()),
                },
                fix="labels of a categorical cross-entropy are probabilities: one-hot or smoothed rows",
            )
        )
    sums = values.sum(axis=-1)
    tolerance = th.one_hot_sum_tolerance(int(y.shape[-1]))
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        findings.append(
            finding(
                "labels.one_hot_sum",
                location="labels",
                message=f"{_n(off.sum(), 'label row')} not summing to 1 "
                f"(e.g. {format_number(float(sums[off].flat[0]))})",
                evidence={
                    "bad_rows": int(off.sum()),
                    "min_sum": float(sums.min()),
                    "max_sum": float(sums.max()),
                    "tolerance": tolerance,
                },
            )
        )
    return findings


def _binary_label_findings(y, loss) -> list:
    values = y.astype(np.float64)
    outside = (values < 0) | (values > 1)
    if not outside.any():
        return []
    return [
        finding(
            "labels.range",
            location="labels",
            message=f"{_n(outside.sum(), 'label')} outside [0, 1] for {loss.display}",
            evidence={
                "bad_labels": int(outside.sum()),
                "label_min": float(values.min()),
                "label_max": float(values.max()),
            },
            fix="binary labels are 0/1 (or probabilities); map -1/+1 labels with (y + 1) / 2",
        )
    ]


# ---------------------------------------------------------------------------
# Activations

_OP_CAUSES = {
    "Log": ("log of zero or a negative number", "use stableops.ops.safe_log / xlogy, or a stableops loss"),
    "Log1p": ("log1p of a value <= -1", "use stableops.ops.log1mexp / softplus forms"),
    "Xlogy": ("log of zero or a negative number", "use stableops.ops.xlogy"),
    "RealDiv": ("division by zero", "use stableops.ops.safe_divide (fill value where the divisor is 0)"),
    "Div": ("division by zero", "use stableops.ops.safe_divide (fill value where the divisor is 0)"),
    "Reciprocal": ("division by zero", "use stableops.ops.safe_divide"),
    "Sqrt": ("square root of a negative number", "use stableops.ops.safe_sqrt / safe_norm"),
    "Rsqrt": ("reciprocal square root of 0 or a negative number", "use stableops.ops.safe_sqrt / safe_norm"),
    "Exp": (
        "exp overflow (argument above log(max) of the dtype)",
        "use stableops.ops.logsumexp / softplus / log_sigmoid",
    ),
    "Pow": ("power of a negative or zero base", "clip the base or use a stable form"),
}
_OVERFLOW_OPS = {
    "MatMul",
    "BatchMatMulV2",
    "BiasAdd",
    "AddV2",
    "Add",
    "Mul",
    "Conv2D",
    "Conv1D",
    "Sum",
    "Square",
    "Cast",
    "Einsum",
}


def explain_non_finite(stats, op: str | None):
    """Likely cause and fix for the first layer whose outputs went non-finite."""
    if not all(_all_finite(v) for v in getattr(stats.layer, "weights", [])):
        return (
            "the layer's own weights are NaN or inf (see weights.non_finite)",
            "reload the weights from a checkpoint taken before they went non-finite",
        )
    masked = set(stats.fully_masked_rows)
    rows = set(stats.nonfinite_rows)
    if masked and rows and rows <= masked:
        return (
            "fully masked (all-padding) rows: the layer averages or normalises over zero "
            "unmasked steps (0/0)",
            "compute masked means with stableops.ops.safe_divide(sum, count) (0 for empty rows), "
            "use stableops.layers.Softmax for masked softmax, or drop empty sequences",
        )
    if stats.compute_dtype == "float16" and (
        stats.input_max_abs > th.FLOAT16_MAX or stats.infinite or op == "Cast"
    ):
        return (
            f"float16 overflow: values beyond {format_number(th.FLOAT16_MAX)} become inf "
            "(and inf - inf = NaN in the next sum)",
            SCALER_FIX + "; or keep this layer in float32 (dtype='float32')",
        )
    if op in _OP_CAUSES:
        return _OP_CAUSES[op]
    if op in _OVERFLOW_OPS or stats.infinite:
        return (
            f"overflow: values exceed the {stats.compute_dtype} range",
            SCALE_INPUTS + ", lower the learning rate, or clip gradients",
        )
    return ("an op produced inf or NaN from finite inputs", "inspect the layer's computation")


def check_activations(layer_stats, *, first_op=None) -> list:
    """First non-finite layer; float16 headroom; saturated sigmoid/tanh; dead ReLU."""
    findings = []
    origin = next((s for s in layer_stats if s.nonfinite and not s.input_nonfinite), None)
    if origin is not None:
        op = (first_op or {}).get("op")
        cause, fix = explain_non_finite(origin, op)
        evidence = {
            "layer": origin.name,
            "layer_class": origin.class_name,
            "op": op or "unknown",
            "nonfinite_values": origin.nonfinite,
            "values": origin.count,
            "samples": _listed(sorted(set(origin.nonfinite_rows))),
            "compute_dtype": origin.compute_dtype,
        }
        if origin.fully_masked_rows:
            evidence["fully_masked_rows"] = _listed(sorted(set(origin.fully_masked_rows)))
        findings.append(
            finding(
                "activation.non_finite",
                location=origin.location,
                message=f"first non-finite values: {origin.nonfinite} of {origin.count} outputs of "
                f"{origin.class_name} '{origin.name}'"
                + (f" (op {op})" if op else "")
                + f" from finite inputs; likely cause: {cause}",
                evidence=evidence,
                fix=fix,
            )
        )
    headroom = []
    for stats in layer_stats:
        if stats.nonfinite:
            continue
        headroom.extend(_headroom_findings(stats))
        if stats.saturated_fraction > th.SATURATED_FRACTION:
            findings.append(
                finding(
                    "activation.saturated",
                    location=stats.location,
                    message=f"{100 * stats.saturated_fraction:.0f}% of {stats.activation} outputs are "
                    "saturated (within 1% of an asymptote): they pass almost no gradient",
                    evidence={
                        "saturated_fraction": stats.saturated_fraction,
                        "activation": stats.activation,
                        "max_abs": stats.max_abs,
                    },
                    fix=SCALE_INPUTS + "; use Glorot initialisation; "
                    "or a non-saturating activation (relu, stableops.layers.ELU)",
                )
            )
        if stats.dead_fraction > th.DEAD_FRACTION:
            findings.append(
                finding(
                    "activation.dead_relu",
                    severity="error" if stats.dead_units == stats.units else "warning",
                    location=stats.location,
                    message=f"{stats.dead_units} of {stats.units} ReLU units are dead (zero on every "
                    "sample): they get no gradient and never recover",
                    evidence={
                        "dead_units": stats.dead_units,
                        "units": stats.units,
                        "dead_fraction": stats.dead_fraction,
                    },
                )
            )
    # float16 headroom: every float16 layer close to overflow is a warning;
    # float32 layers that would overflow under mixed precision get one note,
    # at the first of them.
    findings.extend(f for f in headroom if f.severity == "warning")
    would_overflow = [f for f in headroom if f.severity == "info"]
    if would_overflow:
        first = would_overflow[0]
        if len(would_overflow) > 1:
            first = dataclasses.replace(
                first,
                message=first.message + f" (and {len(would_overflow) - 1} later layer(s))",
            )
        findings.append(first)
    return findings


def _headroom_findings(stats) -> list:
    if stats.max_abs <= 0:
        return []
    headroom = th.FLOAT16_MAX / stats.max_abs
    if stats.compute_dtype == "float16" and headroom < th.FLOAT16_MIN_HEADROOM:
        return [
            finding(
                "activation.float16_headroom",
                location=stats.location,
                message=f"float16 activations reach {format_number(stats.max_abs)}, only "
                f"{format_number(headroom)}x below the float16 maximum",
                evidence={"max_abs": stats.max_abs, "float16_max": th.FLOAT16_MAX, "headroom": headroom},
                fix=SCALE_INPUTS + ", or keep this layer in float32 (dtype='float32')",
            )
        ]
    if stats.compute_dtype != "float16" and headroom < 1.0:
        return [
            finding(
                "activation.float16_headroom",
                severity="info",
                location=stats.location,
                message=f"activations reach {format_number(stats.max_abs)}, beyond the float16 maximum: "
                "this layer would overflow under mixed_float16",
                evidence={"max_abs": stats.max_abs, "float16_max": th.FLOAT16_MAX, "headroom": headroom},
                fix=SCALE_INPUTS + " before switching to mixed precision",
            )
        ]
    return []


# ---------------------------------------------------------------------------
# Loss


def check_loss(
    loss, y, y_pred, per_sample, *, error=None, first_op=None, prediction_nonfinite_rows=()
) -> list:
    """Non-finite or raising loss, probabilities clipped at 0/1, Keras loss with a drop-in."""
    findings = []
    if loss is None:
        return findings
    if error is not None:
        findings.append(
            finding(
                "loss.raised",
                location="loss",
                message=f"{loss.display} raised {type(error).__name__}: {_first_line(error)}",
                evidence={"error": type(error).__name__},
                fix="see the labels findings; under jit_compile=True the same input gives NaN instead",
            )
        )
    if per_sample is not None:
        bad = np.flatnonzero(~np.isfinite(per_sample))
        own = np.setdiff1d(bad, np.asarray(list(prediction_nonfinite_rows), dtype=np.int64))
        if own.size:
            op = (first_op or {}).get("op")
            findings.append(
                finding(
                    "loss.non_finite",
                    location="loss",
                    message=f"{loss.display} is non-finite on {_n(own.size, 'sample')} whose predictions "
                    "are finite" + (f" (op {op})" if op else ""),
                    evidence={
                        "samples": _listed(own),
                        "nonfinite_samples": int(own.size),
                        "op": op or "unknown",
                    },
                    fix=_loss_fix(loss),
                )
            )
    if y is not None and not isinstance(y, (dict, list, tuple)) and loss.takes_log_of_probabilities:
        findings.extend(_clipped_probability_findings(loss, np.asarray(y), y_pred))
    if loss.keras_builtin and loss.drop_in:
        findings.append(
            finding(
                "loss.drop_in",
                location="loss",
                message=f"{loss.display} has a stableops drop-in",
                evidence={"keras_loss": loss.display, "drop_in": loss.drop_in},
                fix=f"use {loss.drop_in}: same arguments and results on ordinary inputs, finite "
                "values and gradients where Keras returns inf, NaN, a clipped constant or a zero gradient",
            )
        )
    return findings


def _loss_fix(loss) -> str:
    """Advice for a non-finite loss that does not repeat what the user already does."""
    if loss.drop_in:
        return f"use {loss.drop_in} (finite where {loss.display} is not); check the labels"
    if loss.display.startswith("stableops."):
        return (
            "the loss is finite for finite inputs of a sane size: the predictions or targets are "
            "too large for float32 (see the scale findings); scale the targets, lower the learning "
            "rate, or stop the run early with stableops.callbacks.NaNGuard"
        )
    return "use a stableops.losses loss or compute it with stableops.ops; check the labels"


def _first_line(error) -> str:
    """The first informative sentence of a TensorFlow/Keras error message."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", str(error)).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("{{", "Graph execution", "Detected at")):
            # TF separates sentences with two spaces, then dumps the batch.
            return line.split("  ")[0].split(" [Op:")[0][:200]
    return text[:200]


def _clipped_probability_findings(loss, y, y_pred) -> list:
    if isinstance(y_pred, (dict, list, tuple)):
        return []
    output_dtype = np.asarray(y_pred).dtype.name
    p = np.asarray(y_pred, dtype=np.float64)
    eps = th.PROBABILITY_CLIP_ZONE
    if loss.kind == "binary":
        if y.shape != p.shape:
            y = y.reshape(p.shape) if y.size == p.size else y
        if y.shape != p.shape:
            return []
        clipped = (p <= eps) | (p >= 1.0 - eps)
        # Stuck: saturated on the wrong side of the label (for 0/1 labels,
        # |y - p| is 0 or 1; for soft labels, > 0.5 means the other side).
        stuck = clipped & (np.abs(y - p) > 0.5)
    else:
        if loss.kind == "sparse":
            labels = y.reshape(p.shape[:-1]).astype(np.int64) if y.size == np.prod(p.shape[:-1]) else None
            if labels is None or labels.min() < 0 or labels.max() >= p.shape[-1]:
                return []
            p_true = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
        else:
            if y.shape != p.shape:
                return []
            p_true = (y * p).sum(axis=-1)
        clipped = stuck = p_true <= eps
    if not stuck.any():
        return []
    fix = "output logits (no final sigmoid/softmax) with from_logits=True"
    if loss.drop_in:
        fix += f", or use {loss.drop_in}"
    if output_dtype == "float16":
        # float16 holds no value in (1 - 2**-12, 1): sigmoid(z) rounds to 1.0
        # once exp(-z) < 2**-12, i.e. z > 12 * log(2) = 8.3.
        fix += (
            "; keep the output layer in float32 (dtype='float32'): a float16 sigmoid is exactly 1.0 "
            "from logit 8.3 up"
        )
    return [
        finding(
            "loss.clipped_probabilities",
            location="loss",
            message=f"{_n(stuck.sum(), 'sample')} predicting probability 0 or 1 for the wrong class "
            f"({output_dtype} output): {loss.display} takes log of a clipped value there, so their "
            "loss is a constant and their gradient is 0",
            evidence={
                "stuck_samples": int(stuck.sum()),
                "clipped_predictions": int(clipped.sum()),
                "output_dtype": output_dtype,
                "clip_zone": eps,
            },
            fix=fix,
        )
    ]


# ---------------------------------------------------------------------------
# Gradients


def check_gradients(norms, *, learning_rate, first_op=None, skips_non_finite=False) -> list:
    """Per-layer gradient norms: non-finite, exploding, vanishing.

    One finding per kind, located at the worst layer and listing every layer
    affected.

    Args:
        norms: ``{layer name: {"grad": [per-batch norms], "weight": norm, "dtype": str}}``.
        learning_rate: the optimizer's learning rate (or Keras's default).
    """
    nonfinite, exploding, vanishing = [], [], []
    for name, entry in norms.items():
        grads = np.asarray(entry["grad"], dtype=np.float64)
        weight = float(entry["weight"])
        if not np.isfinite(grads).all():
            nonfinite.append((name, int((~np.isfinite(grads)).sum())))
            continue
        if weight <= 0 or grads.size == 0:
            continue
        largest, typical = float(grads.max()), float(np.median(grads))
        step_ratio = learning_rate * largest / weight
        if step_ratio > th.EXPLODING_STEP_RATIO:
            exploding.append((step_ratio, name, largest, weight))
        elif learning_rate * typical < th.vanishing_step_ratio(entry.get("dtype", "float32")) * weight:
            vanishing.append((learning_rate * typical / weight, name, typical, weight))
    findings = []
    if nonfinite:
        op = (first_op or {}).get("op")
        name = nonfinite[0][0]
        findings.append(
            finding(
                "gradient.non_finite",
                location=f"layer '{name}'",
                message=f"the gradient of {len(nonfinite)} layer(s) is non-finite although the loss is finite"
                + (f" (op {op})" if op else ""),
                evidence={
                    "layer": name,
                    "op": op or "unknown",
                    "layers": [n for n, _ in nonfinite][:_MAX_LISTED],
                },
                fix=("" if skips_non_finite else "wrap the optimizer in stableops.optimizers.SkipNonFinite; ")
                + "find the op (sqrt/norm/divide at 0) and use its stableops.ops safe form",
            )
        )
    if exploding:
        ratio, name, grad, weight = max(exploding)
        findings.append(
            finding(
                "gradient.exploding",
                location=f"layer '{name}'",
                message=f"gradients explode in {len(exploding)} layer(s): one step at learning rate "
                f"{format_number(learning_rate)} would move the weights of '{name}' by "
                f"{format_number(ratio)}x their own norm",
                evidence={
                    "grad_norm": grad,
                    "weight_norm": weight,
                    "learning_rate": learning_rate,
                    "step_ratio": ratio,
                    "layers": [n for _, n, _, _ in sorted(exploding, reverse=True)][:_MAX_LISTED],
                },
                fix=SCALE_INPUTS
                + ", lower the learning rate, clip gradients (global_clipnorm=1.0)"
                + ("" if skips_non_finite else ", and wrap the optimizer in stableops.optimizers.SkipNonFinite"),
            )
        )
    if vanishing:
        ratio, name, grad, weight = min(vanishing)
        findings.append(
            finding(
                "gradient.vanishing",
                location=f"layer '{name}'",
                message=f"gradients vanish in {len(vanishing)} layer(s): at learning rate "
                f"{format_number(learning_rate)} the update of '{name}' is below the rounding unit "
                "of its weights, so they do not change",
                evidence={
                    "grad_norm": grad,
                    "weight_norm": weight,
                    "learning_rate": learning_rate,
                    "step_ratio": ratio,
                    "layers": [n for _, n, _, _ in sorted(vanishing)][:_MAX_LISTED],
                },
            )
        )
    return findings


def tensor_norm(value) -> float:
    """Euclidean norm of a dense tensor or ``tf.IndexedSlices`` (float64)."""
    if isinstance(value, tf.IndexedSlices):
        value = value.values
    array = np.abs(np.asarray(value, dtype=np.float64))
    if array.size == 0:
        return 0.0
    largest = array.max()
    if not np.isfinite(largest) or largest == 0:
        return float(largest)
    # Scaled by the largest entry so that squaring cannot overflow float64.
    return float(largest * np.sqrt(np.sum(np.square(array / largest))))


# ---------------------------------------------------------------------------
# Model state and configuration (no data needed)

_NORMALIZATION_LAYERS = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}


def _all_finite(variable) -> bool:
    value = np.asarray(variable)
    return not (value.dtype.kind == "f" or value.dtype.name == "bfloat16") or bool(
        np.isfinite(value.astype(np.float32, copy=False)).all()
    )


def _layers(model):
    """Every layer, nested ones included (a Sequential inside a Functional model)."""
    seen = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return seen


def check_weights(model) -> list:
    """Trainable weights or non-trainable state (moving statistics) that are already NaN/inf."""
    findings = []
    for check, attribute, what in (
        ("weights.non_finite", "trainable_weights", "weights"),
        ("weights.state_non_finite", "non_trainable_weights", "non-trainable state"),
    ):
        bad = []
        for layer in _layers(model):
            if getattr(layer, "layers", None):
                continue  # its sublayers are listed themselves
            names = [v.path for v in getattr(layer, attribute, []) if not _all_finite(v)]
            if names:
                bad.append((layer, names))
        if not bad:
            continue
        layer, names = bad[0]
        kind = type(layer).__name__
        detail = " (its moving statistics)" if kind == "BatchNormalization" and what != "weights" else ""
        findings.append(
            finding(
                check,
                location=f"layer '{layer.name}'",
                message=f"the {what} of {len(bad)} layer(s) hold NaN or inf, first {kind} "
                f"'{layer.name}'{detail}: every output computed from them is non-finite, whatever the data",
                evidence={
                    "layers": [l.name for l, _ in bad][:_MAX_LISTED],
                    "variables": names[:_MAX_LISTED],
                },
            )
        )
    return findings


def _upcasts(layer) -> bool:
    """Keras's own Layer/Group/BatchNormalization compute in float32 under float16 (Keras >= 3)."""
    return type(layer).__module__.split(".", 1)[0] == "keras"


def check_normalization_epsilon(model) -> list:
    """Layer/Group/BatchNormalization computing in float16 with an epsilon float16 cannot hold.

    Keras's own classes upcast float16 inputs to float32 before normalising,
    so only subclasses (and other implementations) that compute in float16
    are flagged: advice must hold for the model it is given for.
    """
    import keras  # late: the checks module is otherwise Keras-free

    classes = tuple(getattr(keras.layers, name) for name in sorted(_NORMALIZATION_LAYERS))
    tiny = dtype_limits("float16").tiny
    findings = []
    for layer in _layers(model):
        if not isinstance(layer, classes) or _upcasts(layer):
            continue
        epsilon = getattr(layer, "epsilon", None)
        if str(getattr(layer, "compute_dtype", "float32")) != "float16" or epsilon is None:
            continue
        if float(epsilon) < tiny:
            findings.append(
                finding(
                    "activation.norm_epsilon",
                    location=f"layer '{layer.name}'",
                    message=f"{type(layer).__name__} '{layer.name}' computes in float16 with epsilon "
                    f"{format_number(float(epsilon))}, below float16's smallest normal number "
                    f"{format_number(tiny)}: it rounds to a subnormal or to 0, and a constant channel "
                    "then gives 1/sqrt(variance + epsilon) = inf",
                    evidence={"epsilon": float(epsilon), "float16_tiny": tiny, "layer": layer.name},
                )
            )
    return findings


def check_optimizer_epsilon(model) -> list:
    """An Adam-style epsilon below the smallest normal number of the variables' dtype."""
    optimizer = getattr(model, "optimizer", None)
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    epsilon = getattr(optimizer, "epsilon", None)
    if epsilon is None:
        return []
    dtypes = sorted({str(v.dtype) for v in model.trainable_variables if tf.as_dtype(v.dtype).is_floating})
    for dtype in dtypes:
        tiny = dtype_limits(dtype).tiny
        if float(epsilon) < tiny:
            return [
                finding(
                    "optimizer.epsilon",
                    location=f"optimizer {type(optimizer).__name__}",
                    message=f"epsilon {format_number(float(epsilon))} is below the smallest normal "
                    f"{dtype} number {format_number(tiny)}: where a gradient's second moment underflows "
                    f"to 0, the step m / (sqrt(v) + epsilon) is more than {format_number(1 / tiny)}x "
                    "the gradient and overflows",
                    evidence={"epsilon": float(epsilon), "variable_dtype": dtype, "tiny": tiny},
                    fix=f"{type(optimizer).__name__}(epsilon={format_number(tiny)}) or more, or keep the "
                    "variables in float32 (mixed_float16 does)",
                )
            ]
    return []


def check_single_sample_batch(model, n_samples, batch_size) -> list:
    """The last batch holds one sample and the model has BatchNormalization."""
    if n_samples is None or batch_size <= 1 or n_samples % batch_size != 1:
        return []
    norms = [layer for layer in _layers(model) if type(layer).__name__ == "BatchNormalization"]
    if not norms:
        return []
    return [
        finding(
            "input.single_sample_batch",
            location=f"layer '{norms[0].name}'",
            message=f"with batch size {batch_size}, the last batch of the {n_samples} samples holds one "
            f"sample: BatchNormalization '{norms[0].name}' normalises it by a variance of 0 (its output "
            "is the bias alone) and pulls its moving statistics toward that one sample",
            evidence={"samples": n_samples, "batch_size": batch_size, "layers": [l.name for l in norms][:_MAX_LISTED]},
        )
    ]
