"""The model checks: its activations, layer by layer, and its state and configuration.

Each check turns statistics into :class:`Finding` objects, returns a
(possibly empty) list of them and has no side effects. The numbers they
compare against live in ``_thresholds``, the check ids in ``_registry``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stableops.doctor import _registry as checks
from stableops.doctor import _thresholds as th
from stableops.doctor._report import MAX_LISTED, finding, format_number, listed
from stableops.ops import dtype_limits

# ---------------------------------------------------------------------------
# Activations

_SAFE_DIVIDE = "use stableops.ops.safe_divide (fill value where the divisor is 0)"
_OP_CAUSES = {
    "Log": (
        "log of zero or a negative number",
        "use stableops.ops.safe_log / xlogy, or a stableops loss",
    ),
    "Log1p": ("log1p of a value <= -1", "use stableops.ops.log1mexp / softplus forms"),
    "Xlogy": ("log of zero or a negative number", "use stableops.ops.xlogy"),
    "RealDiv": ("division by zero", _SAFE_DIVIDE),
    "Div": ("division by zero", _SAFE_DIVIDE),
    "Reciprocal": ("division by zero", "use stableops.ops.safe_divide"),
    "Sqrt": ("square root of a negative number", "use stableops.ops.safe_sqrt / safe_norm"),
    "Rsqrt": (
        "reciprocal square root of 0 or a negative number",
        "use stableops.ops.safe_sqrt / safe_norm",
    ),
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


def _fields(stats, *names) -> dict:
    """Evidence: the named attributes of a layer's statistics."""
    return {name: getattr(stats, name) for name in names}


def explain_non_finite(stats, op: str | None):
    """Likely cause and fix for the first layer whose outputs went non-finite."""
    if not all(_all_finite(v) for v in getattr(stats.layer, "weights", [])):
        return (
            f"the layer's own weights are NaN or inf (see {checks.WEIGHTS_NON_FINITE.id})",
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
            checks.SCALER_FIX + "; or keep this layer in float32 (dtype='float32')",
        )
    if op in _OP_CAUSES:
        return _OP_CAUSES[op]
    if op in _OVERFLOW_OPS or stats.infinite:
        return (
            f"overflow: values exceed the {stats.compute_dtype} range",
            checks.SCALE_INPUTS + ", lower the learning rate, or clip gradients",
        )
    return ("an op produced inf or NaN from finite inputs", "inspect the layer's computation")


#: Fewest samples for calling ReLU units dead: 8, the count the scale checks
#: need too (``MIN_SPREAD_ROWS``). A healthy unit is zero on about half the
#: samples (see ``DEAD_FRACTION``): on one sample about half the units of a layer
#: look dead, while on 8 a unit is zero on all of them with probability
#: 2**-8 = 0.4%, and a majority of even a 2-unit layer with 2**-16 = 1.5e-5.
MIN_DEAD_RELU_SAMPLES = th.MIN_SPREAD_ROWS


def check_activations(layer_stats, *, op=None, samples=None) -> list:
    """First non-finite layer; float16 headroom; saturated sigmoid/tanh; dead ReLU.

    ``samples``: how many samples the statistics cover; dead ReLUs are judged
    from ``MIN_DEAD_RELU_SAMPLES`` up (``None``: unknown, judged anyway).
    """
    findings = []
    origin = next((s for s in layer_stats if s.nonfinite and not s.input_nonfinite), None)
    if origin is not None:
        cause, fix = explain_non_finite(origin, op)
        evidence = {
            "layer": origin.name,
            "layer_class": origin.class_name,
            "op": op or "unknown",
            "nonfinite_values": origin.nonfinite,
            "values": origin.count,
            "samples": listed(sorted(set(origin.nonfinite_rows))),
            "compute_dtype": origin.compute_dtype,
        }
        if origin.fully_masked_rows:
            evidence["fully_masked_rows"] = listed(sorted(set(origin.fully_masked_rows)))
        findings.append(
            finding(
                checks.ACTIVATION_NON_FINITE,
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
                    checks.ACTIVATION_SATURATED,
                    location=stats.location,
                    message=f"{100 * stats.saturated_fraction:.0f}% of {stats.activation} outputs "
                    "are saturated (within 1% of an asymptote): they pass almost no gradient",
                    evidence=_fields(stats, "saturated_fraction", "activation", "max_abs"),
                )
            )
        enough_samples = samples is None or samples >= MIN_DEAD_RELU_SAMPLES
        if enough_samples and stats.dead_fraction > th.DEAD_FRACTION:
            findings.append(
                finding(
                    checks.ACTIVATION_DEAD_RELU,
                    severity="error" if stats.dead_units == stats.units else "warning",
                    location=stats.location,
                    message=f"{stats.dead_units} of {stats.units} ReLU units are dead (zero on "
                    "every sample): they get no gradient and never recover",
                    evidence=_fields(stats, "dead_units", "units", "dead_fraction"),
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
    evidence = {"max_abs": stats.max_abs, "float16_max": th.FLOAT16_MAX, "headroom": headroom}
    if stats.compute_dtype == "float16" and headroom < th.FLOAT16_MIN_HEADROOM:
        return [
            finding(
                checks.ACTIVATION_FLOAT16_HEADROOM,
                location=stats.location,
                message=f"float16 activations reach {format_number(stats.max_abs)}, only "
                f"{format_number(headroom)}x below the float16 maximum",
                evidence=evidence,
                fix=checks.SCALE_INPUTS + ", or keep this layer in float32 (dtype='float32')",
            )
        ]
    if stats.compute_dtype != "float16" and headroom < 1.0:
        return [
            finding(
                checks.ACTIVATION_FLOAT16_HEADROOM,
                severity="info",
                location=stats.location,
                message=f"activations reach {format_number(stats.max_abs)}, beyond the float16 "
                "maximum: this layer would overflow under mixed_float16",
                evidence=evidence,
                fix=checks.SCALE_INPUTS + " before switching to mixed precision",
            )
        ]
    return []



# ---------------------------------------------------------------------------
# Model state and configuration (no data needed)

_NORMALIZATION_LAYERS = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}


def _all_finite(variable) -> bool:
    value = np.asarray(variable)
    return not (value.dtype.kind == "f" or value.dtype.name == "bfloat16") or bool(
        np.isfinite(value.astype(np.float32, copy=False)).all()
    )


def all_layers(model):
    """Every layer, nested ones after their parent (a Sequential inside a Functional model),
    in a fixed order."""
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
        (checks.WEIGHTS_NON_FINITE, "trainable_weights", "weights"),
        (checks.WEIGHTS_STATE_NON_FINITE, "non_trainable_weights", "non-trainable state"),
    ):
        bad = []
        for layer in all_layers(model):
            if getattr(layer, "layers", None):
                continue  # its sublayers are listed themselves
            names = [v.path for v in getattr(layer, attribute, []) if not _all_finite(v)]
            if names:
                bad.append((layer, names))
        if not bad:
            continue
        layer, names = bad[0]
        kind = type(layer).__name__
        state = kind == "BatchNormalization" and what != "weights"
        detail = " (its moving statistics)" if state else ""
        findings.append(
            finding(
                check,
                location=f"layer '{layer.name}'",
                message=f"the {what} of {len(bad)} layer(s) hold NaN or inf, first {kind} "
                f"'{layer.name}'{detail}: every output computed from them is non-finite, "
                "whatever the data",
                evidence={
                    "layers": [owner.name for owner, _ in bad][:MAX_LISTED],
                    "variables": names[:MAX_LISTED],
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
    for layer in all_layers(model):
        if not isinstance(layer, classes) or _upcasts(layer):
            continue
        epsilon = getattr(layer, "epsilon", None)
        if str(getattr(layer, "compute_dtype", "float32")) != "float16" or epsilon is None:
            continue
        if float(epsilon) < tiny:
            findings.append(
                finding(
                    checks.ACTIVATION_NORM_EPSILON,
                    location=f"layer '{layer.name}'",
                    message=f"{type(layer).__name__} '{layer.name}' computes in float16 with "
                    f"epsilon {format_number(float(epsilon))}, below float16's smallest normal "
                    f"number {format_number(tiny)}: it rounds to a subnormal or to 0, and a "
                    "constant channel then gives 1/sqrt(variance + epsilon) = inf",
                    evidence={"epsilon": float(epsilon), "float16_tiny": tiny, "layer": layer.name},
                )
            )
    return findings



def check_single_sample_batch(model, batch_size, last_batch, n_samples=None) -> list:
    """The last batch holds one sample and the model has BatchNormalization.

    Args:
        batch_size: rows per batch (a dataset's: its first batch's).
        last_batch: rows in the last batch (``None`` when unknown: no finding).
        n_samples: rows in all, for the message (``None`` when unknown).
    """
    if last_batch != 1 or batch_size is None or batch_size <= 1:
        return []
    norms = [layer for layer in all_layers(model) if type(layer).__name__ == "BatchNormalization"]
    if not norms:
        return []
    of = f" of the {n_samples} samples" if n_samples is not None else ""
    return [
        finding(
            checks.INPUT_SINGLE_SAMPLE_BATCH,
            location=f"layer '{norms[0].name}'",
            message=f"with batch size {batch_size}, the last batch{of} holds one sample: "
            f"BatchNormalization '{norms[0].name}' normalises it by a variance of 0 (its output "
            "is the bias alone) and pulls its moving statistics toward that one sample",
            evidence={
                **({"samples": n_samples} if n_samples is not None else {}),
                "batch_size": batch_size,
                "last_batch": last_batch,
                "layers": [norm.name for norm in norms][:MAX_LISTED],
            },
        )
    ]
