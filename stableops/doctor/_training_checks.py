"""The training checks: the loss, the gradients and the optimizer's settings.

Each check turns values into :class:`Finding` objects, returns a (possibly
empty) list of them and has no side effects. The numbers they compare against
live in ``_thresholds``, the check ids in ``_registry``.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from stableops.doctor import _registry as checks
from stableops.doctor import _thresholds as th
from stableops.doctor._report import MAX_LISTED, finding, format_number, listed, plural
from stableops.ops import dtype_limits

_SKIP_NON_FINITE = "stableops.optimizers.SkipNonFinite"
# gradient.exploding's fix for inputs that are already scaled: the registry's
# without its first piece of advice, to scale them.
_EXPLODING_FIX_SCALED_INPUTS = "lower the learning rate, clip gradients (global_clipnorm=1.0)"

# ---------------------------------------------------------------------------
# Loss


def check_loss(
    loss, y, y_pred, per_sample, *, error=None, op=None, prediction_nonfinite_rows=(),
    stuck_samples_learn=None,
) -> list:
    """Non-finite or raising loss, probabilities clipped at 0/1, Keras loss with a drop-in.

    ``stuck_samples_learn``: a callable of the clipped-probability mask (entries of
    ``y_pred`` for a binary loss, rows for the others) that says whether their loss's
    gradient still reaches the weights; where it does, the loss reads the logits behind
    the probabilities and nothing is stuck.
    """
    findings = []
    if loss is None:
        return findings
    if error is not None:
        findings.append(loss_raised(loss.display, error))
    if per_sample is not None:
        bad = np.flatnonzero(~np.isfinite(per_sample))
        own = np.setdiff1d(bad, np.asarray(list(prediction_nonfinite_rows), dtype=np.int64))
        if own.size:
            findings.append(
                finding(
                    checks.LOSS_NON_FINITE,
                    location="loss",
                    message=f"{loss.display} is non-finite on {plural(own.size, 'sample')} "
                    "whose predictions are finite" + (f" (op {op})" if op else ""),
                    evidence={
                        "samples": listed(own),
                        "nonfinite_samples": int(own.size),
                        "op": op or "unknown",
                    },
                    fix=_loss_fix(loss),
                )
            )
    if y is not None and not isinstance(y, (dict, list, tuple)) and loss.takes_log_of_probabilities:
        findings.extend(
            _clipped_probability_findings(loss, np.asarray(y), y_pred, stuck_samples_learn)
        )
    if loss.keras_builtin and loss.drop_in:
        findings.append(
            finding(
                checks.LOSS_DROP_IN,
                location="loss",
                message=f"{loss.display} has a stableops drop-in",
                evidence={"keras_loss": loss.display, "drop_in": loss.drop_in},
                fix=f"use {loss.drop_in}: same arguments and results on ordinary inputs, finite "
                "values and gradients where Keras returns inf, NaN, a clipped constant or a zero "
                "gradient",
            )
        )
    return findings


def loss_raised(what: str, error) -> object:
    """A ``loss.raised`` finding: computing ``what`` (the loss, by name) raised ``error``."""
    return finding(
        checks.LOSS_RAISED,
        location="loss",
        message=f"{what} raised {type(error).__name__}: {first_line(error)}",
        evidence={"error": type(error).__name__},
        fix="see the labels findings; under jit_compile=True the same input gives NaN instead",
    )


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


def first_line(error) -> str:
    """The first informative sentence of a TensorFlow/Keras error message."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", str(error)).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("{{", "Graph execution", "Detected at")):
            # TF separates sentences with two spaces, then dumps the batch.
            return line.split("  ")[0].split(" [Op:")[0][:200]
    return text[:200]


def _clipped_probability_findings(loss, y, y_pred, stuck_samples_learn=None) -> list:
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
            if y.size != np.prod(p.shape[:-1]):
                return []
            labels = y.reshape(p.shape[:-1]).astype(np.int64)
            if labels.min() < 0 or labels.max() >= p.shape[-1]:
                return []
            p_true = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
        else:
            if y.shape != p.shape:
                return []
            p_true = (y * p).sum(axis=-1)
        clipped = stuck = p_true <= eps
    if not stuck.any() or (stuck_samples_learn is not None and stuck_samples_learn(stuck)):
        return []
    fix = "output logits (no final sigmoid/softmax) with from_logits=True"
    if loss.drop_in:
        fix += f", or use {loss.drop_in}"
    if output_dtype == "float16":
        # float16 holds no value in (1 - 2**-12, 1): sigmoid(z) rounds to 1.0
        # once exp(-z) < 2**-12, i.e. z > 12 * log(2) = 8.3.
        fix += (
            "; keep the output layer in float32 (dtype='float32'): a float16 sigmoid is exactly "
            "1.0 from logit 8.3 up"
        )
    return [
        finding(
            checks.LOSS_CLIPPED_PROBABILITIES,
            location="loss",
            message=f"{plural(stuck.sum(), 'sample')} predicting probability 0 or 1 for the wrong "
            f"class ({output_dtype} output): {loss.display} takes log of a clipped value there, "
            "so their loss is a constant and their gradient is 0",
            evidence={"stuck_samples": int(stuck.sum()), "clipped_predictions": int(clipped.sum()),
                      "output_dtype": output_dtype, "clip_zone": eps},
            fix=fix,
        )
    ]


# ---------------------------------------------------------------------------
# Gradients


def check_gradients(
    norms,
    *,
    learning_rate,
    op=None,
    skips_non_finite=False,
    step_scales_with_gradient=True,
    inputs_scaled=False,
) -> list:
    """Per-layer gradient norms: non-finite, exploding, vanishing.

    One finding per kind, located at the worst layer and listing every layer
    affected.

    Args:
        norms: ``{layer name: {"grad": [per-batch norms], "weight": norm, "dtype": str}}``.
        learning_rate: the optimizer's learning rate (or Keras's default).
        step_scales_with_gradient: the optimizer's step is ``lr * g`` (SGD). An
            adaptive optimizer's (Adam, RMSprop, ...) is about ``lr`` per weight
            whatever ``|g|``: its gradients vanish only where they are 0, and
            ``lr * |g|`` says nothing of its step's size, so no gradient is
            called exploding for it (the trial run shows a rate too large).
        inputs_scaled: the inputs passed the scale checks: the exploding
            gradients' fix then does not start with scaling them.
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
        rounding = th.vanishing_step_ratio(entry.get("dtype", "float32"))
        step_ratio = learning_rate * largest / weight
        if step_scales_with_gradient and step_ratio > th.EXPLODING_STEP_RATIO:
            exploding.append((step_ratio, name, largest, weight))
        elif (
            learning_rate * typical < rounding * weight
            if step_scales_with_gradient
            else largest == 0.0
        ):
            vanishing.append((learning_rate * typical / weight, name, typical, weight))
    wrap = "" if skips_non_finite else f"wrap the optimizer in {_SKIP_NON_FINITE}"
    findings = []
    if nonfinite:
        name = nonfinite[0][0]
        message = f"the gradient of {len(nonfinite)} layer(s) is non-finite although the loss is "
        message += "finite" + (f" (op {op})" if op else "")
        layers = [n for n, _ in nonfinite][:MAX_LISTED]
        evidence = {"layer": name, "op": op or "unknown", "layers": layers}
        fix = "find the op (sqrt/norm/divide at 0) and use its stableops.ops safe form"
        fix = (wrap and wrap + "; ") + fix
        findings.append(_at_layer(checks.GRADIENT_NON_FINITE, name, message, evidence, fix))
    if exploding:
        ranked = sorted(exploding, reverse=True)  # the largest step first
        ratio, name = ranked[0][:2]
        message = (
            f"gradients explode in {len(exploding)} layer(s): one step at learning rate "
            f"{format_number(learning_rate)} would move the weights of '{name}' by "
            f"{format_number(ratio)}x their own norm"
        )
        # Scaled inputs leave the step's size to the learning rate (or the targets).
        fix = _EXPLODING_FIX_SCALED_INPUTS if inputs_scaled else checks.GRADIENT_EXPLODING.fix
        fix += wrap and ", and " + wrap
        evidence = _step_evidence(ranked, learning_rate)
        findings.append(_at_layer(checks.GRADIENT_EXPLODING, name, message, evidence, fix))
    if vanishing:
        ranked = sorted(vanishing)  # the smallest step first
        name = ranked[0][1]
        message = (
            f"gradients vanish in {len(vanishing)} layer(s): at learning rate "
            f"{format_number(learning_rate)} the update of '{name}' is below the rounding unit "
            "of its weights, so they do not change"
            if step_scales_with_gradient
            else f"gradients vanish in {len(vanishing)} layer(s): the gradient of '{name}' is 0 "
            "on every batch, so no optimizer changes its weights"
        )
        evidence = _step_evidence(ranked, learning_rate)
        findings.append(_at_layer(checks.GRADIENT_VANISHING, name, message, evidence))
    return findings


def _at_layer(check, name, message, evidence, fix=None):
    """A finding located at the layer ``name`` (the check's own fix unless ``fix`` is given)."""
    return finding(check, location=f"layer '{name}'", message=message, evidence=evidence, fix=fix)


def _step_evidence(ranked, learning_rate) -> dict:
    """The worst layer's norms and step ratio, and the layers affected, worst first."""
    ratio, _, grad, weight = ranked[0]
    return {
        "grad_norm": grad,
        "weight_norm": weight,
        "learning_rate": learning_rate,
        "step_ratio": ratio,
        "layers": [name for _, name, _, _ in ranked][:MAX_LISTED],
    }


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



def check_optimizer_epsilon(model) -> list:
    """An Adam-style epsilon below the smallest normal number of the variables' dtype."""
    optimizer = getattr(model, "optimizer", None)
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    epsilon = getattr(optimizer, "epsilon", None)
    if epsilon is None:
        return []
    variables = model.trainable_variables
    dtypes = sorted({str(v.dtype) for v in variables if tf.as_dtype(v.dtype).is_floating})
    for dtype in dtypes:
        tiny = dtype_limits(dtype).tiny
        if float(epsilon) < tiny:
            return [
                finding(
                    checks.OPTIMIZER_EPSILON,
                    location=f"optimizer {type(optimizer).__name__}",
                    message=f"epsilon {format_number(float(epsilon))} is below the smallest "
                    f"normal {dtype} number {format_number(tiny)}: where a gradient's second "
                    "moment underflows to 0, the step m / (sqrt(v) + epsilon) is more than "
                    f"{format_number(1 / tiny)}x the gradient and overflows",
                    evidence={"epsilon": float(epsilon), "variable_dtype": dtype, "tiny": tiny},
                    fix=f"{type(optimizer).__name__}(epsilon={format_number(tiny)}) or more, or "
                    "keep the variables in float32 (mixed_float16 does)",
                )
            ]
    return []


