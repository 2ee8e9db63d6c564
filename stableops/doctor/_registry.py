"""Every check the doctor runs, written once: id -> stage, severity, what it means, the usual fix.

A finding's id says which check produced it; its stage places it in the data
flow (the report names the earliest error as the likely cause: non-finite
weights or bad data make everything after them non-finite too); its severity
is the default one (a check may raise it, e.g. when the trial run diverged);
the fix is the default advice (a check may replace it with advice fitted to
the model at hand).
"""

from __future__ import annotations

import dataclasses

from stableops.doctor._report import Finding

#: Data-flow order: a finding in an earlier stage explains the later ones.
#: The trial comes last: it is the symptom that the others explain.
STAGES = ("weights", "input", "labels", "activation", "loss", "gradient", "optimizer", "trial")

SCALER_FIX = (
    "put stableops.layers.RobustScaler() first (adapt() it on the training data: median/IQR "
    "scaling that clips outliers, computed in float32 even under mixed precision), or "
    "keras.layers.Normalization() when the data has no outliers"
)
SCALE_INPUTS = "scale the inputs (stableops.layers.RobustScaler)"


@dataclasses.dataclass(frozen=True)
class Check:
    stage: str
    severity: str
    title: str
    fix: str


CHECKS = {
    "weights.non_finite": Check(
        "weights", "error", "trainable weights hold NaN or inf",
        "reload the weights from a checkpoint taken before they went non-finite (NaNGuard keeps "
        "such snapshots during training), or re-initialise the layer",
    ),
    "weights.state_non_finite": Check(
        "weights", "error", "non-trainable state (e.g. BatchNormalization moving statistics) holds NaN or inf",
        "reset the state (re-initialise the layer's moving statistics, or reload a checkpoint) and "
        "find what fed it non-finite batches",
    ),
    "input.non_finite": Check(
        "input", "error", "input values are NaN or inf",
        "impute or drop non-finite values before training (they make every activation, loss and "
        "gradient they touch NaN)",
    ),
    "input.float16_overflow": Check(
        "input", "error", "input values overflow a float16 layer", SCALER_FIX,
    ),
    "input.scale": Check("input", "warning", "features are not scaled", SCALER_FIX),
    "input.outliers": Check(
        "input", "warning", "features have outliers",
        "stableops.layers.RobustScaler() scales by median/IQR and clips outliers (default to +-5 "
        "IQRs); mean/variance Normalization is dominated by them",
    ),
    "input.single_sample_batch": Check(
        "input", "warning", "a batch of one sample reaches BatchNormalization",
        "choose a batch size that does not leave one sample over, or drop the remainder "
        "(tf.data: batch(..., drop_remainder=True))",
    ),
    "labels.non_finite": Check("labels", "error", "labels are NaN or inf", "fix or drop these samples"),
    "labels.range": Check("labels", "error", "labels outside the loss's valid range", "fix the labels"),
    "labels.shape": Check("labels", "error", "labels shaped for another loss", "match the loss to the labels"),
    "labels.one_hot_sum": Check(
        "labels", "error", "one-hot label rows not summing to 1",
        "each row must be a distribution over the classes (one-hot or smoothed); all-zero rows "
        "usually mean a missing class",
    ),
    "labels.scale": Check(
        "labels", "warning", "regression targets are not scaled",
        "standardise the targets (subtract the mean, divide by the standard deviation) and undo it "
        "on the predictions, or lower the learning rate in proportion",
    ),
    "activation.non_finite": Check(
        "activation", "error", "a layer's outputs go non-finite from finite inputs", "see the cause",
    ),
    "activation.float16_headroom": Check(
        "activation", "warning", "float16 activations close to overflow",
        SCALE_INPUTS + ", or keep this layer in float32 (dtype='float32')",
    ),
    "activation.saturated": Check(
        "activation", "warning", "saturated sigmoid/tanh units",
        SCALE_INPUTS + "; use Glorot initialisation; or a non-saturating activation (relu, "
        "stableops.layers.ELU)",
    ),
    "activation.dead_relu": Check(
        "activation", "warning", "dead ReLU units",
        "use stableops.layers.LeakyReLU or stableops.layers.ELU, He initialisation, centred "
        "inputs, or a lower learning rate",
    ),
    "activation.norm_epsilon": Check(
        "activation", "warning", "a normalisation layer's epsilon is below what float16 holds",
        "raise epsilon to at least the float16 smallest normal number (6.1e-5; Keras's default "
        "1e-3 is fine), or run the layer in float32 (dtype='float32')",
    ),
    "loss.raised": Check("loss", "error", "the loss raised an error", "see the labels findings"),
    "loss.non_finite": Check("loss", "error", "the loss is non-finite on finite predictions", "see the cause"),
    "loss.clipped_probabilities": Check(
        "loss", "warning", "probabilities at 0 or 1 fed to a log",
        "output logits (no final sigmoid/softmax) with from_logits=True",
    ),
    "loss.drop_in": Check("loss", "info", "a Keras loss with a stableops drop-in", "use the drop-in"),
    "gradient.non_finite": Check(
        "gradient", "error", "non-finite gradients from a finite loss",
        "wrap the optimizer in stableops.optimizers.SkipNonFinite; find the op (sqrt/norm/divide "
        "at 0) and use its stableops.ops safe form",
    ),
    "gradient.exploding": Check(
        "gradient", "warning", "exploding gradients",
        SCALE_INPUTS + ", lower the learning rate, clip gradients (global_clipnorm=1.0)",
    ),
    "gradient.vanishing": Check(
        "gradient", "warning", "vanishing gradients",
        "look for saturated or dead units upstream; scale the inputs; use relu/ELU and He/Glorot "
        "initialisation",
    ),
    "optimizer.learning_rate": Check(
        "optimizer", "error", "the learning rate makes training diverge",
        "lower the learning rate (or scale the inputs and targets, which lets a larger rate work)",
    ),
    "optimizer.epsilon": Check(
        "optimizer", "warning", "the optimizer's epsilon is below what its variables' dtype holds",
        "raise epsilon to at least the dtype's smallest normal number, or keep the variables in "
        "float32 (mixed_float16 does)",
    ),
    "trial.diverged": Check(
        "trial", "error", "a throwaway copy of the model diverged within a few training steps",
        "see the findings above: they explain it",
    ),
}


def stage_rank(check: str) -> int:
    entry = CHECKS.get(check)
    stage = entry.stage if entry else check.split(".", 1)[0]
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def finding(check, *, location, message, evidence=None, fix=None, severity=None) -> Finding:
    """A :class:`Finding` of a registered check, with its default severity and fix."""
    entry = CHECKS[check]  # KeyError: an unregistered id is a bug
    return Finding(
        check=check,
        severity=severity or entry.severity,
        location=location,
        message=message,
        evidence=dict(evidence or {}),
        fix=fix or entry.fix,
    )
