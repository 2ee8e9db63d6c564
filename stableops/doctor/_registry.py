"""Every check the doctor runs, written once: id -> stage, severity, what it means, the usual fix.

A finding's id says which check produced it; its stage (the id's first part)
places it in the data flow (the report names the earliest error as the likely
cause: non-finite weights or bad data make everything after them non-finite
too); its severity is the default one (a check may raise it, e.g. when the
trial run diverged); the fix is the default advice (a check may replace it with
advice fitted to the model at hand). The checks refer to an entry by its name
here (``LABELS_RANGE``), so an id string is written in this module only.

>>> LABELS_RANGE.id, LABELS_RANGE.stage, LABELS_RANGE.severity
('labels.range', 'labels', 'error')
>>> CHECKS["input.scale"] is INPUT_SCALE
True
>>> [check.id for check in ORIGIN_CHECKS][:2]
['input.non_finite', 'input.float16_overflow']
"""

from __future__ import annotations

import dataclasses

#: Data-flow order: a finding in an earlier stage explains the later ones.
#: The trial comes last: it is the symptom that the others explain.
STAGES = ("weights", "input", "labels", "activation", "loss", "gradient", "optimizer", "trial")

SCALER_FIX = (
    "put stableops.layers.RobustScaler() first (adapt() it on the training data: median/IQR "
    "scaling that clips outliers, computed in float64 even under mixed precision), or "
    "keras.layers.Normalization() when the data has no outliers"
)
SCALE_INPUTS = "scale the inputs (stableops.layers.RobustScaler)"
IN_FLOAT32 = "keep this layer in float32 (dtype='float32')"


@dataclasses.dataclass(frozen=True)
class Check:
    """One check: its id (``"<stage>.<what>"``), default severity, title and fix.

    ``names_origin``: its findings say where values first went non-finite
    (NaNGuard reports their layer and op). ``explains_divergence``: a warning
    that becomes an error when the trial run diverges.
    """

    id: str
    severity: str
    title: str
    fix: str
    names_origin: bool = False
    explains_divergence: bool = False

    @property
    def stage(self) -> str:
        return self.id.split(".", 1)[0]


WEIGHTS_NON_FINITE = Check(
    "weights.non_finite", "error", "trainable weights hold NaN or inf",
    "reload the weights from a checkpoint taken before they went non-finite (NaNGuard keeps "
    "such snapshots during training), or re-initialise the layer",
)
WEIGHTS_STATE_NON_FINITE = Check(
    "weights.state_non_finite", "error",
    "non-trainable state (e.g. BatchNormalization moving statistics) holds NaN or inf",
    "reset the state (re-initialise the layer's moving statistics, or reload a checkpoint) and "
    "find what fed it non-finite batches",
)
INPUT_NON_FINITE = Check(
    "input.non_finite", "error", "input values are NaN or inf",
    "impute or drop non-finite values before training (they make every activation, loss and "
    "gradient they touch NaN)",
    names_origin=True,
)
INPUT_INDEX_RANGE = Check(
    "input.index_range", "error", "ids outside an Embedding's table",
    "map the ids into [0, input_dim) (IntegerLookup or StringLookup give unknown ids an "
    "out-of-vocabulary index) or give the Embedding a larger input_dim",
)
INPUT_FLOAT16_OVERFLOW = Check(
    "input.float16_overflow", "error", "input values overflow a float16 layer", SCALER_FIX,
    names_origin=True,
)
INPUT_SCALE = Check(
    "input.scale", "warning", "features are not scaled", SCALER_FIX, explains_divergence=True
)
INPUT_OUTLIERS = Check(
    "input.outliers", "warning", "features have outliers",
    "stableops.layers.RobustScaler() scales by median/IQR and clips outliers (default to +-5 "
    "IQRs); mean/variance Normalization is dominated by them",
    explains_divergence=True,
)
INPUT_SINGLE_SAMPLE_BATCH = Check(
    "input.single_sample_batch", "warning", "a batch of one sample reaches BatchNormalization",
    "choose a batch size that does not leave one sample over, or drop the remainder "
    "(tf.data: batch(..., drop_remainder=True))",
)
LABELS_NON_FINITE = Check(
    "labels.non_finite", "error", "labels are NaN or inf", "fix or drop these samples"
)
LABELS_RANGE = Check(
    "labels.range", "error", "labels outside the loss's valid range", "fix the labels"
)
LABELS_SHAPE = Check(
    "labels.shape", "error", "labels shaped for another loss", "match the loss to the labels"
)
LABELS_ONE_HOT_SUM = Check(
    "labels.one_hot_sum", "error", "one-hot label rows not summing to 1",
    "each row must be a distribution over the classes (one-hot or smoothed); all-zero rows "
    "usually mean a missing class",
)
LABELS_SCALE = Check(
    "labels.scale", "warning", "regression targets are not scaled",
    "standardise the targets (subtract the mean, divide by the standard deviation) and undo it "
    "on the predictions, or lower the learning rate in proportion",
    explains_divergence=True,
)
ACTIVATION_NON_FINITE = Check(
    "activation.non_finite", "error", "a layer's outputs go non-finite from finite inputs",
    "see the cause",
    names_origin=True,
)
ACTIVATION_FLOAT16_HEADROOM = Check(
    "activation.float16_headroom", "warning", "float16 activations close to overflow",
    f"{SCALE_INPUTS}, or {IN_FLOAT32}",
    explains_divergence=True,
)
ACTIVATION_SATURATED = Check(
    "activation.saturated", "warning", "saturated sigmoid/tanh units",
    SCALE_INPUTS + "; use Glorot initialisation; or a non-saturating activation (relu, "
    "stableops.layers.ELU)",
)
ACTIVATION_DEAD_RELU = Check(
    "activation.dead_relu", "warning", "dead ReLU units",
    "use stableops.layers.LeakyReLU or stableops.layers.ELU, He initialisation, centred "
    "inputs, or a lower learning rate",
)
ACTIVATION_NORM_EPSILON = Check(
    "activation.norm_epsilon", "warning",
    "a normalisation layer's epsilon is below what float16 holds",
    "raise epsilon to at least the float16 smallest normal number (6.1e-5; Keras's default "
    "1e-3 is fine), or run the layer in float32 (dtype='float32')",
)
LOSS_NON_FINITE = Check(
    "loss.non_finite", "error", "the loss is non-finite on finite predictions", "see the cause",
    names_origin=True,
)
LOSS_RAISED = Check(
    "loss.raised", "error", "the loss raised an error", "see the labels findings",
    names_origin=True,
)
LOSS_CLIPPED_PROBABILITIES = Check(
    "loss.clipped_probabilities", "warning", "probabilities at 0 or 1 fed to a log",
    "output logits (no final sigmoid/softmax) with from_logits=True",
)
LOSS_DROP_IN = Check(
    "loss.drop_in", "info", "a Keras loss with a stableops drop-in", "use the drop-in"
)
GRADIENT_NON_FINITE = Check(
    "gradient.non_finite", "error", "non-finite gradients from a finite loss",
    "wrap the optimizer in stableops.optimizers.SkipNonFinite; find the op (sqrt/norm/divide "
    "at 0) and use its stableops.ops safe form",
    names_origin=True,
)
GRADIENT_EXPLODING = Check(
    "gradient.exploding", "warning", "exploding gradients",
    SCALE_INPUTS + ", lower the learning rate, clip gradients (global_clipnorm=1.0)",
    explains_divergence=True,
)
GRADIENT_VANISHING = Check(
    "gradient.vanishing", "warning", "vanishing gradients",
    "look for saturated or dead units upstream; scale the inputs; use relu/ELU and He/Glorot "
    "initialisation",
)
OPTIMIZER_LEARNING_RATE = Check(
    "optimizer.learning_rate", "error", "the learning rate makes training diverge",
    "lower the learning rate (or scale the inputs and targets, which lets a larger rate work)",
)
OPTIMIZER_EPSILON = Check(
    "optimizer.epsilon", "warning",
    "the optimizer's epsilon is below what its variables' dtype holds",
    "raise epsilon to at least the dtype's smallest normal number, or keep the variables in "
    "float32 (mixed_float16 does)",
)
TRIAL_DIVERGED = Check(
    "trial.diverged", "error",
    "a throwaway copy of the model diverged within a few training steps",
    "see the findings above: they explain it",
)

#: Every check by id, in data-flow order.
CHECKS = {check.id: check for check in globals().values() if isinstance(check, Check)}
assert all(check.stage in STAGES for check in CHECKS.values())

#: The checks that say where values first went non-finite, in data-flow order.
ORIGIN_CHECKS = tuple(check for check in CHECKS.values() if check.names_origin)

#: The warnings that explain a diverging trial run (they become errors then).
EXPLAINS_DIVERGENCE = frozenset(check.id for check in CHECKS.values() if check.explains_divergence)


def stage_rank(check_id: str) -> int:
    """Place of a check id in the data flow (``STAGES``); unknown stages last."""
    stage = check_id.split(".", 1)[0]
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
