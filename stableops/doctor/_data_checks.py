"""The data checks: the inputs and the labels, before any model runs.

Each check turns statistics into :class:`Finding` objects, returns a
(possibly empty) list of them and has no side effects. The numbers they
compare against live in ``_thresholds``, the check ids in ``_registry``.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np

from stableops.doctor import _registry as checks
from stableops.doctor import _thresholds as th
from stableops.doctor._forward import NORMALIZING_LAYERS
from stableops.doctor._loss import named_output_pairs
from stableops.doctor._report import MAX_LISTED, finding, format_number, listed, plural

# Layers that read integers as indices (no magnitude to check), not as numbers.
INDEX_LAYERS = {
    "Embedding", "StringLookup", "IntegerLookup", "CategoryEncoding", "Hashing", "Discretization"
}

# Layers that map the inputs by x * scale + offset, the same for every sample: the
# scale checks look at what they output (scale findings change with the map,
# outlier findings, relative to the data's spread, do not).
RESCALING_LAYERS = {"Rescaling"}

# Losses whose value grows with the size of the regression error (the
# targets' scale). MSE's gradient grows with it too: unscaled targets make its
# gradients that many times larger.
REGRESSION_LOSSES = {"mean_squared_error", "mean_absolute_error", "huber", "log_cosh"}

# Losses whose targets must be >= 0 (counts, rates, probabilities), and what they
# make of negative ones (Keras and stableops alike).
_COUNTS = (
    "a negative count has no best rate: the loss keeps falling as the predicted rate goes to 0, "
    "so training drives the rates to 0 and the loss far below 0"
)
NON_NEGATIVE_TARGETS = {
    "mean_squared_logarithmic_error": "it clips negative targets to 0, so the model silently "
    "learns to predict 0 for all of them",
    "kl_divergence": "its targets are probabilities; it clips them to [0, 1], so negative ones "
    "silently count as 0",
    "poisson": _COUNTS,
    "poisson_nll": _COUNTS,
}

# Regression losses whose gradient is bounded whatever the error (|g| <= 1 per
# value for MAE and log-cosh, <= delta for Huber): unscaled targets do not make
# their gradients larger, but the outputs move towards them a bounded step at a time.
BOUNDED_GRADIENT_LOSSES = {"mean_absolute_error", "huber", "log_cosh"}


def _input_name(index: int, name: str | None, n_inputs: int) -> str:
    if n_inputs == 1:
        return "input"
    return f"input '{name}'" if name else f"input {index}"


# ---------------------------------------------------------------------------
# Inputs


#: The measures of a feature's scale that a scaler divides by (StandardScaler, MinMaxScaler,
#: RobustScaler): data scaled by any of them has no spread between its features' scales.
SCALE_MEASURES = ("standard deviation", "range", "interquartile range")


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
    feature); ``scales`` holds the measures of spread a scaler divides by
    (:data:`SCALE_MEASURES`: StandardScaler's, MinMaxScaler's, RobustScaler's);
    ``max_z`` and ``outliers`` use the robust z-score
    ``|x - median| / sd`` with ``sd = MAD / 0.6745`` (mean absolute deviation
    * 1.2533 when the MAD is 0); an outlier is also more than ``OUTLIER_Z``
    times a typical sample's size (``sample_size``: the median over samples of
    the norm of their deviations from the feature medians) from its median.
    Binary/indicator features (at most two distinct values) and features of
    fewer than ``MIN_OUTLIER_VALUES`` values get no outlier statistics: their
    rare level is not an outlier, and a handful of values shows no outlier.
    ``rows``: the finite values per feature.
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
        "rows": finite.sum(axis=0),
        "sample_size": 0.0,
    }
    if not has_values.any():
        out["scales"] = {name: np.zeros(n_features) for name in SCALE_MEASURES}
        return out
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        absolute = np.abs(clean)
        max_abs = np.nanmax(absolute, axis=0)
        typical = np.nanpercentile(absolute, 75, axis=0)
        quartiles = np.nanpercentile(clean, [25, 75], axis=0)
        measured = (
            np.nanstd(clean, axis=0),
            np.nanmax(clean, axis=0) - np.nanmin(clean, axis=0),
            quartiles[1] - quartiles[0],
        )
        scales = dict(zip(SCALE_MEASURES, measured))
        median = np.nanmedian(clean, axis=0)
        deviation = np.abs(clean - median)
        mad = np.nanmedian(deviation, axis=0)
        mean_ad = np.nanmean(deviation, axis=0)
        sd = np.where(mad > 0, mad / th.MAD_TO_SD, mean_ad * th.MEAN_AD_TO_SD)
        z = deviation / np.where(sd > 0, sd, np.inf)
        samples = int(np.shape(values)[0]) if np.ndim(values) > 1 else matrix.shape[0]
        per_sample = np.where(np.isfinite(deviation), deviation, 0.0).reshape(samples, -1)
        sample_size = float(np.median(np.sqrt(np.sum(np.square(per_sample), axis=1))))
        far = deviation > th.OUTLIER_Z * sample_size
        ordered = np.sort(clean, axis=0)  # NaN sorts last
        distinct = 1 + ((np.diff(ordered, axis=0) != 0) & np.isfinite(ordered[1:])).sum(axis=0)
    out["max_abs"] = np.where(has_values, max_abs, 0.0)
    out["scales"] = {name: np.where(has_values, v, 0.0) for name, v in scales.items()}
    out["magnitude"] = np.where(has_values, np.where(typical > 0, typical, max_abs), 0.0)
    out["sample_size"] = sample_size
    continuous = has_values & (distinct > 2) & (sd > 0) & (out["rows"] >= th.MIN_OUTLIER_VALUES)
    outlying = (z > th.OUTLIER_Z) & far
    out["max_z"] = np.where(continuous, np.nanmax(np.where(outlying, z, 0.0), axis=0), 0.0)
    out["outliers"] = np.where(continuous, outlying.sum(axis=0), 0)
    return out


def check_inputs(
    inputs, *, names=None, consumers=None, layer_stats=None, nonfinite_counts=None
) -> list:
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
            if not readers or any(_reads_indices(layer) for layer in readers):
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
                    checks.INPUT_NON_FINITE,
                    location=f"{where} feature {bad[0]}",
                    message=f"{plural(stats['nonfinite'].sum(), 'input value')} NaN or inf",
                    evidence={
                        "nonfinite_values": int(stats["nonfinite"].sum()),
                        "features": listed(bad),
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
                fix = checks.SCALER_FIX
                if type(layer).__name__ in NORMALIZING_LAYERS | RESCALING_LAYERS:
                    # The normaliser itself casts the raw values: suggesting
                    # it would not help. It must compute in float32.
                    fix = (
                        f"run '{layer.name}' in float32 ({type(layer).__name__}(..., "
                        "dtype='float32'), the layers after it can stay in mixed precision), or "
                        "use stableops.layers.RobustScaler(), which computes in float32 under "
                        "mixed precision"
                    )
                findings.append(
                    finding(
                        checks.INPUT_FLOAT16_OVERFLOW,
                        location=f"{where} feature {feature}",
                        message=f"input values up to {format_number(max_abs)} exceed the float16 "
                        f"maximum {format_number(th.FLOAT16_MAX)}: layer '{layer.name}' casts "
                        "them to float16, where they become inf",
                        evidence={
                            "max_abs": max_abs,
                            "float16_max": th.FLOAT16_MAX,
                            "layer": layer.name,
                        },
                        fix=fix,
                    )
                )
                break
        if normalized:
            continue
        rescaled = _rescaled(values, readers)
        scale_stats = stats if rescaled is None else feature_statistics(rescaled)
        findings.extend(_scale_findings(where, scale_stats))
        findings.extend(_outlier_findings(where, stats))
    return findings


def check_indices(inputs, *, names=None, consumers=None) -> list:
    """Ids outside the table ``[0, input_dim)`` of an ``Embedding`` that reads them directly.

    TF's gather on a CPU raises on such an id (the model cannot run on these
    inputs); on a GPU it reads zeros without a word.
    """
    findings = []
    names = names or [None] * len(inputs)
    consumers = consumers or [[] for _ in inputs]
    for index, values in enumerate(inputs):
        ids = np.asarray(values)
        for layer in consumers[index]:
            if not isinstance(layer, keras.layers.Embedding):
                continue
            size = int(layer.input_dim)
            with np.errstate(invalid="ignore"):  # NaN is no id: input.non_finite names it
                outside = (ids < 0) | (ids >= size)
            if not outside.any():
                continue
            where = _input_name(index, names[index], len(inputs))
            bad = ids[outside]
            findings.append(
                finding(
                    checks.INPUT_INDEX_RANGE,
                    location=f"{where} -> layer '{layer.name}'",
                    message=f"{plural(outside.sum(), 'id')} outside the Embedding's table "
                    f"[0, {size}) (from {format_number(bad.min().item())} to "
                    f"{format_number(bad.max().item())}): TF's gather raises on them on a CPU "
                    "and reads zeros on a GPU",
                    evidence={
                        "input_dim": size,
                        "ids_outside": int(outside.sum()),
                        "id_min": ids.min().item(),
                        "id_max": ids.max().item(),
                        "samples": listed(np.flatnonzero(outside.reshape(len(ids), -1).any(1))),
                    },
                )
            )
    return findings


def _reads_indices(layer) -> bool:
    """Whether ``layer`` is, or holds, a layer that reads integers as indices.

    A custom layer that wraps an Embedding (keras.io's TokenAndPositionEmbedding)
    reads token ids as the Embedding does. Keras has no public list of a layer's
    nested layers; ``_flatten_layers`` (the layer and every layer inside it) is
    the one Keras itself walks.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    layers = flatten() if callable(flatten) else [layer]
    return any(type(inner).__name__ in INDEX_LAYERS for inner in layers)


def _rescaled(values, readers):
    """What a ``Rescaling`` layer reading ``values`` makes of them (``None`` when none does)."""
    if not readers or any(type(layer).__name__ not in RESCALING_LAYERS for layer in readers):
        return None
    layer = readers[0]
    scale = np.asarray(getattr(layer, "scale", 1.0), dtype=np.float64)
    offset = np.asarray(getattr(layer, "offset", 0.0), dtype=np.float64)
    try:
        return np.asarray(values, dtype=np.float64) * scale + offset
    except ValueError:  # per-channel factors that do not broadcast: leave the values as they are
        return None


def _spread(scale: np.ndarray):
    """``(largest / smallest, largest, smallest)`` over the features of positive scale, or None."""
    positive = np.flatnonzero(scale > 0)
    if not positive.size:
        return None
    largest = int(positive[np.argmax(scale[positive])])
    smallest = int(positive[np.argmin(scale[positive])])
    return float(scale[largest] / scale[smallest]), largest, smallest


def _scale_findings(where: str, stats: dict) -> list:
    """Unscaled: a typical magnitude beyond ``UNSCALED_MAGNITUDE``, or feature scales that differ
    by more than ``SCALE_SPREAD`` by *every* measure of scale (data standardized, min-max or
    robustly scaled pass: a sparse standardized feature's typical magnitude is small, its
    standard deviation is 1)."""
    magnitude = stats["magnitude"]
    if not (magnitude > 0).any():
        return []
    largest = int(np.argmax(magnitude))
    enough_rows = stats["rows"] >= th.MIN_SPREAD_ROWS  # fewer: chance spreads (see _thresholds)
    spreads = {
        name: found for name, scale in stats["scales"].items()
        if (found := _spread(np.where(enough_rows, scale, 0.0))) is not None
    }
    measure = min(spreads, key=lambda name: spreads[name][0]) if spreads else None
    spread, widest, narrowest = spreads[measure] if spreads else (1.0, largest, largest)
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
        reasons.append(
            f"feature scales differ by {format_number(spread)}x (by their {measure}s; by the "
            "other measures of scale more)"
        )
    return [
        finding(
            checks.INPUT_SCALE,
            location=f"{where} feature {largest}",
            message="inputs are not scaled: " + "; ".join(reasons),
            evidence={
                "largest_magnitude": float(magnitude[largest]),
                "largest_feature": largest,
                "spread": spread,
                "spread_measure": measure,
                "widest_feature": widest,
                "narrowest_feature": narrowest,
                "unscaled_features": listed(unscaled),
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
            checks.INPUT_OUTLIERS,
            location=f"{where} feature {worst}",
            message=f"outliers: {plural(stats['outliers'].sum(), 'value')} more than "
            f"{format_number(th.OUTLIER_Z)} "
            "robust SDs from the feature median "
            f"(worst: {format_number(stats['max_z'][worst])} SDs)",
            evidence={
                "max_robust_z": float(stats["max_z"][worst]),
                "max_abs": float(stats["max_abs"][worst]),
                "outlier_values": int(stats["outliers"].sum()),
                "features": listed(flagged),
            },
        )
    ]


# ---------------------------------------------------------------------------
# Labels


def _num_classes(y_pred) -> int | None:
    shape = np.shape(y_pred)
    return int(shape[-1]) if len(shape) >= 1 else None


def check_labels(y, y_pred, loss) -> list:
    """Labels valid for the loss: finite, in range, one-hot rows summing to 1.

    Labels for several outputs (a dict or list) are checked per output: Keras
    applies a single loss to each of them.
    """
    if y is None or loss is None:
        return []
    if isinstance(y, (dict, list, tuple)):
        try:
            pairs = named_output_pairs(y, y_pred)
        except ValueError:  # labels that do not match the outputs: diagnose notes it
            return []
        if pairs is None:
            return []
        return check_output_labels([(name, loss, labels, out) for name, labels, out in pairs])
    y = np.asarray(y)
    findings = []
    if np.issubdtype(y.dtype, np.floating):
        nonfinite = ~np.isfinite(y)
        if nonfinite.any():
            bad_rows = nonfinite.reshape(len(y), -1).any(axis=1)
            findings.append(
                finding(
                    checks.LABELS_NON_FINITE,
                    location="labels",
                    message=f"{plural(nonfinite.sum(), 'label')} NaN or inf",
                    evidence={
                        "nonfinite_labels": int(nonfinite.sum()),
                        "samples": listed(np.flatnonzero(bad_rows)),
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
    elif loss.name in NON_NEGATIVE_TARGETS and y.dtype.kind in "iuf":
        findings.extend(_negative_target_findings(y, loss))
    return findings


def check_output_labels(outputs) -> list:
    """``check_labels`` for each output of a model with a loss per output.

    ``outputs``: ``[(output name, LossInfo, labels, predictions)]``
    (``_loss.per_output_losses``); each finding is located at its output's labels.
    """
    findings = []
    for name, loss, y, y_pred in outputs:
        for found in check_labels(y, y_pred, loss):
            findings.append(dataclasses.replace(found, location=f"labels '{name}'"))
    return findings


def _negative_target_findings(y, loss) -> list:
    """A ``labels.range`` finding for negative targets of a loss that needs them >= 0."""
    negative = y < 0
    if not negative.any():
        return []
    return [
        finding(
            checks.LABELS_RANGE,
            location="labels",
            message=f"{plural(negative.sum(), 'target')} below 0 (min "
            f"{format_number(y.min().item())}), but {loss.display} needs non-negative targets: "
            + NON_NEGATIVE_TARGETS[loss.name],
            evidence={
                "negative_targets": int(negative.sum()),
                "target_min": y.min().item(),
                "target_max": y.max().item(),
            },
            fix="pass the targets on their own scale (undo a standardisation that made them "
            "negative), or, for targets that can be negative, use a loss made for them "
            "(MeanSquaredError, Huber)",
        )
    ]


def _target_scale_findings(y, loss) -> list:
    values = np.abs(y.astype(np.float64)).reshape(-1)
    if not values.size:
        return []
    typical = float(np.percentile(values, 75))
    if typical <= th.TARGET_SCALE:
        return []
    return [
        finding(
            checks.LABELS_SCALE,
            location="labels",
            message="regression targets are not scaled: typical magnitude "
            f"{format_number(typical)} (range {format_number(float(y.min()))} .. "
            f"{format_number(float(y.max()))}), while a freshly initialised output is of order 1: "
            + _target_scale_effect(loss, typical),
            fix=_BOUNDED_GRADIENT_FIX if loss.name in BOUNDED_GRADIENT_LOSSES else None,
            evidence={
                "typical_magnitude": typical,
                "target_min": float(y.min()),
                "target_max": float(y.max()),
                "target_mean": float(np.mean(y)),
                "target_std": float(np.std(y)),
            },
        )
    ]


# labels.scale's fix without "lower the learning rate": a bounded gradient's steps would shrink.
_BOUNDED_GRADIENT_FIX = (
    "standardise the targets (subtract the mean, divide by the standard deviation) and undo it "
    "on the predictions"
)


def _target_scale_effect(loss, typical) -> str:
    """What targets ``typical`` times the outputs' size do to ``loss``'s errors and gradients."""
    times = f"{format_number(typical)}x those of standardised targets"
    if loss.name in BOUNDED_GRADIENT_LOSSES:
        return (
            f"{loss.display}'s first errors are {times}, but its gradient is bounded whatever "
            "the error, so the outputs grow to the targets' size only over very many steps"
        )
    return f"{loss.display}'s first errors and gradients are {times}"


def _shaped_for_another_loss(y, y_pred, loss, looks_like, expected, *, fix) -> list:
    """A ``labels.shape`` finding: the labels look like ``looks_like``, the loss expects others."""
    return [
        finding(
            checks.LABELS_SHAPE,
            location="labels",
            message=f"labels have shape {y.shape}, like {looks_like}, but {loss.display} "
            f"expects {expected}",
            evidence={"label_shape": str(y.shape), "prediction_shape": str(np.shape(y_pred))},
            fix=fix,
        )
    ]


def _sparse_label_findings(y, y_pred, loss) -> list:
    classes = _num_classes(y_pred)
    if classes is None:
        return []
    if y.ndim == np.ndim(y_pred) and y.shape[-1] == classes and classes > 1:
        return _shaped_for_another_loss(
            y, y_pred, loss, "one-hot rows", "class indices",
            fix="use CategoricalCrossentropy for one-hot labels, or pass argmax(labels)",
        )
    labels = y.reshape(-1)
    if loss.ignore_class is not None:
        labels = labels[labels != loss.ignore_class]
    not_integer = (
        labels != np.round(labels)
        if np.issubdtype(labels.dtype, np.floating)
        else np.zeros(labels.shape, bool)
    )
    findings = _non_integer_label_findings(labels, not_integer, classes, loss)
    # Whole numbers outside the range: a missing class, or a model with too few outputs.
    out_of_range = ((labels < 0) | (labels >= classes)) & ~not_integer
    if not out_of_range.any():
        return findings
    first, evidence = _bad_labels(labels, out_of_range, classes, "bad_labels")
    return findings + [
        finding(
            checks.LABELS_RANGE,
            location="labels",
            message=f"{plural(out_of_range.sum(), 'label')} outside the valid class range [0, "
            f"{classes}) (e.g. {format_number(first)}); eagerly Keras raises, "
            "under XLA the loss silently becomes NaN",
            evidence=evidence,
            fix=f"fix the labels, give the model {int(np.max(labels)) + 1} outputs if that class "
            "is real, or mark them with ignore_class in "
            "stableops.losses.SparseCategoricalCrossentropy",
        )
    ]


def _bad_labels(labels, bad, classes, count_key):
    """The first of the sparse ``labels[bad]`` and the evidence of their ``labels.range``
    finding (their count under ``count_key``, the first values, the classes, the range)."""
    bad_values = np.unique(labels[bad])
    return bad_values[0].item(), {
        count_key: int(bad.sum()),
        "bad_values": [format_number(v.item()) for v in bad_values[:MAX_LISTED]],
        "num_classes": classes,
        "label_min": labels.min().item(),
        "label_max": labels.max().item(),
    }


def _non_integer_label_findings(labels, not_integer, classes, loss) -> list:
    """A ``labels.range`` finding for sparse labels that are not whole numbers.

    No number of outputs fixes these (0.5 is no class), so the advice differs
    from that for whole numbers out of range.
    """
    if not not_integer.any():
        return []
    first, evidence = _bad_labels(labels, not_integer, classes, "non_integer_labels")
    return [
        finding(
            checks.LABELS_RANGE,
            location="labels",
            message=f"{plural(not_integer.sum(), 'label')} not whole numbers "
            f"(e.g. {format_number(first)}), but {loss.display} takes class "
            "indices: Keras truncates them to whole numbers without a warning (stableops "
            "raises)",
            evidence=evidence,
            fix=f"map the labels to class indices 0..{classes - 1}; labels that are measured "
            "values or probabilities need a regression loss or CategoricalCrossentropy",
        )
    ]


def _categorical_label_findings(y, y_pred, loss) -> list:
    classes = _num_classes(y_pred)
    if y.ndim < np.ndim(y_pred) or (y.shape[-1] == 1 and classes and classes > 1):
        return _shaped_for_another_loss(
            y, y_pred, loss, "class indices", f"one-hot rows of {classes}",
            fix="use SparseCategoricalCrossentropy for integer labels, or one-hot encode them",
        )
    values = y.astype(np.float64)
    findings = _outside_unit_interval(
        values,
        noun="label value",
        count_key="bad_values",
        fix="labels of a categorical cross-entropy are probabilities: one-hot or smoothed rows",
    )
    sums = values.sum(axis=-1)
    tolerance = th.one_hot_sum_tolerance(int(y.shape[-1]))
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        findings.append(
            finding(
                checks.LABELS_ONE_HOT_SUM,
                location="labels",
                message=f"{plural(off.sum(), 'label row')} not summing to 1 "
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
    return _outside_unit_interval(
        y.astype(np.float64),
        noun="label",
        count_key="bad_labels",
        suffix=f" for {loss.display}",
        fix="binary labels are 0/1 (or probabilities); map -1/+1 labels with (y + 1) / 2",
    )


def _outside_unit_interval(values, *, noun, count_key, fix, suffix="") -> list:
    """A ``labels.range`` finding for label values outside [0, 1] (none when all are inside)."""
    outside = (values < 0) | (values > 1)
    if not outside.any():
        return []
    return [
        finding(
            checks.LABELS_RANGE,
            location="labels",
            message=f"{plural(outside.sum(), noun)} outside [0, 1]{suffix}",
            evidence={
                count_key: int(outside.sum()),
                "label_min": float(values.min()),
                "label_max": float(values.max()),
            },
            fix=fix,
        )
    ]
