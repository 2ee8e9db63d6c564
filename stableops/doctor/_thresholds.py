"""Every threshold the doctor uses, each derived from a dtype limit or justified here.

The doctor reports a finding only when a number crosses one of these lines, so
this module is the whole of its "judgement". Dtype-derived values come from
``stableops.ops.dtype_limits`` (the single source of every epsilon), never from
a literal.
"""

from __future__ import annotations

import math

from stableops.ops import dtype_limits

_F16 = dtype_limits("float16")
_F32 = dtype_limits("float32")

#: The largest finite float16 value (65504). A float16 layer overflows to inf
#: above it, and a raw input above it becomes inf when Keras casts it to the
#: layer's float16 compute dtype.
FLOAT16_MAX = _F16.max

#: Headroom (max representable / max observed) below which a float16 layer is
#: flagged: 2**4 = 16. An activation within 16x of the float16 maximum is one
#: unnormalised sum of 16 such terms away from overflow (the next Dense layer
#: adds ``fan_in`` products), and early training routinely grows activations by
#: that much.
FLOAT16_MIN_HEADROOM = 2.0**4

#: A feature whose typical magnitude exceeds sqrt(float16 max) = 256 is
#: "unscaled": squaring it (a squared-error loss, a variance, the next layer's
#: product with a similarly scaled weight) leaves float16's range, and with
#: Glorot/He initialisation it makes the first layer's pre-activations that
#: large too, saturating sigmoid/tanh units and scaling gradients by its square.
UNSCALED_MAGNITUDE = math.sqrt(_F16.max)

#: Features whose scales differ by more than 1/sqrt(eps(float16)) = 32x are
#: flagged: the smaller feature then contributes less than (1/32)**2 =
#: eps(float16) of a first-layer unit's variance, i.e. it is below the
#: resolution of a half-precision sum and the optimiser effectively ignores it
#: until the inputs are normalised. The scales must differ by every measure a
#: scaler divides by (standard deviation, range, interquartile range): a sparse
#: feature of standardized data has a small typical |x| but a standard
#: deviation of 1, and pixels in [0, 1] a range of at most 1.
SCALE_SPREAD = 1.0 / math.sqrt(_F16.eps)

#: Regression targets whose typical magnitude (75th percentile of |y|) exceeds
#: 1/sqrt(eps(float16)) = 32 are "unscaled". A freshly initialised output layer
#: (Glorot/He, unit-variance inputs) predicts values of order 1, so the first
#: errors are about the targets' size: a squared error and its gradient are
#: then 32x (gradient) to 1000x (loss) those of standardised targets, the same
#: spread at which SCALE_SPREAD flags features, and a learning rate that suits
#: standardised data overshoots.
TARGET_SCALE = SCALE_SPREAD

#: Robust z-score (0.6745 * (x - median) / MAD, Iglewicz & Hoaglin 1993) above
#: which a value is an outlier worth a warning: 10. Their usual cut of 3.5
#: flags ordinary heavy tails (real data sets have many such values and train
#: fine); a squared-error gradient grows with the square of the deviation, so a
#: value 10 robust SDs out pushes one step ~100x harder than a typical sample.
#:
#: And a value is an outlier only if it is also large for the input as a whole: its
#: deviation from its feature's median exceeds OUTLIER_Z times a typical sample's
#: size (the median over samples of the norm of the sample's deviations from the
#: feature medians). The first layer sees a sample through w . x with weights of
#: one scale (Glorot/He), so such a value moves its pre-activations, and a
#: squared-error gradient, OUTLIER_Z (100) times as hard as a typical sample. A
#: feature's robust SD alone is no measure of harm: a mostly-zero pixel's MAD is 0,
#: and its ordinary strokes in [0, 1] would be "hundreds of SDs" out.
OUTLIER_Z = 10.0

#: Fewest values of a feature for an outlier verdict: 102, the smallest n with
#: (n - 1) / sqrt(n) > OUTLIER_Z. No value of n numbers lies more than
#: (n - 1) / sqrt(n) of their standard deviations from their mean (Samuelson
#: 1968), so fewer values cannot show a value OUTLIER_Z SDs out: a robust z-score
#: that large then measures how small the MAD of a handful of values happened to be.
MIN_OUTLIER_VALUES = next(n for n in range(2, 10**6) if (n - 1) / math.sqrt(n) > OUTLIER_Z)

#: Fewest rows for comparing feature scales: 8. Two features of the same scale
#: show sample standard deviations more than SCALE_SPREAD apart with probability
#: P(F(n - 1, n - 1) > SCALE_SPREAD**2) (the ratio of their sample variances is
#: F-distributed): 2e-2 at 2 rows, 5e-5 at 4, 9e-9 at 7, 5e-10 at 8, the fewest
#: rows at which the pairs of 1000 features (5e5 pairs) give a false alarm less
#: than once in 1000 inputs. (A magnitude above UNSCALED_MAGNITUDE needs no count.)
MIN_SPREAD_ROWS = 8

#: 0.6745 = the standard normal's 75th percentile: MAD / 0.6745 estimates the
#: standard deviation of normal data (Iglewicz & Hoaglin's constant).
MAD_TO_SD = 0.6745

#: sqrt(pi / 2): mean absolute deviation * 1.2533 estimates the standard
#: deviation of normal data (the fallback when the MAD is 0).
MEAN_AD_TO_SD = math.sqrt(math.pi / 2.0)

#: A sigmoid/tanh unit is saturated when its output is within 1% of the
#: asymptote range (sigmoid < 0.01 or > 0.99, |tanh| > 0.98): there its slope
#: is under 4% of the peak slope, so each saturated layer divides the gradient
#: by more than 25 (Glorot & Bengio 2010 diagnose saturation the same way).
SATURATION_MARGIN = 0.01

#: Fraction of saturated outputs in a hidden layer above which it is flagged.
#: At a healthy initialisation almost no unit is saturated; a majority means
#: most of the layer passes almost no gradient.
SATURATED_FRACTION = 0.5

#: Fraction of dead ReLU units (zero on every sample of the sample) above which
#: a layer is flagged. With centred inputs and He initialisation a unit is zero
#: on about half the samples, so it is zero on all of >= 32 samples with
#: probability about 2**-32: any dead majority is a real loss of capacity.
DEAD_FRACTION = 0.5

#: Exploding: one plain SGD step of the configured learning rate would move a
#: layer's weights by more than their own norm (lr * |g| > |w|). A healthy step
#: moves them by about a thousandth of it.
EXPLODING_STEP_RATIO = 1.0


def vanishing_step_ratio(dtype="float32") -> float:
    """Vanishing: the step lr * |g| is below the weights' rounding unit.

    ``eps(dtype) / 2 * |w|`` is half an ULP of the weights' norm: an update
    smaller than that is rounded away entirely when it is added to the
    weights, so the layer does not learn at all.
    """
    return dtype_limits(dtype).eps / 2.0


#: The data checks (scale, outliers, labels) examine up to this many rows, and
#: at most DATA_CHECK_VALUES values (rows x features) so that their float64
#: working arrays stay around 16 MB each; sorting that many values per check
#: takes well under a second. (Non-finite values are counted on all rows.)
DATA_CHECK_ROWS = 100_000
DATA_CHECK_VALUES = 2_000_000

#: Learning rate assumed when the model has no optimizer: Keras's default for
#: Adam, RMSprop and the other adaptive optimizers.
DEFAULT_LEARNING_RATE = 1e-3


def one_hot_sum_tolerance(num_classes: int, dtype="float32") -> float:
    """How far a valid one-hot or smoothed label row may sum from 1.

    Summing ``n`` non-negative values that add up to 1 in floating point has a
    rounding error of at most ``(n - 1) * eps / 2`` (Higham, Accuracy and
    Stability, eq. 4.4); twice that covers labels that were themselves rounded
    once (e.g. label smoothing).
    """
    return max(num_classes, 2) * dtype_limits(dtype).eps


#: Probabilities at most this far from 0 or 1 in float32, where Keras's clip
#: bound ``backend.epsilon()`` (1e-7) sits: there Keras's cross-entropies
#: return a clipped constant and a zero gradient. This is float32's epsilon
#: (1.19e-7), the resolution of values just below 1.
PROBABILITY_CLIP_ZONE = _F32.eps

#: How many samples with a clipped probability the doctor differentiates to see whether
#: their gradient reaches the weights (one small batch: the answer is the loss's and the
#: output's, the same for every such sample).
STUCK_SAMPLES_PROBED = 32


# ---------------------------------------------------------------------------
# Divergence: NaNGuard during training and diagnose's trial run share these.

#: A batch loss more than this many times the run's reference level (the
#: lowest median of LOSS_WINDOW consecutive batch losses so far), above the
#: run's first loss, and either this many times every loss of the last
#: LOSS_WINDOW batches (a jump) or preceded by LOSS_WINDOW - 1 losses above
#: this many times the reference too (a climb) is an explosion: the run is
#: diverging. The other conditions keep minibatch noise out. A fresh run's
#: batch losses stay below its untrained, initial loss, however low its level
#: has fallen (a late batch at 10x a level of 0.05 is no explosion); a run that
#: starts trained (resumed, fine-tuned) has no such ceiling, and with small
#: batches a hard one reaches 25x the median (a misclassified sample among 8),
#: but not 10x every recent batch, and the batches after it are ordinary. An
#: order of magnitude in one go is the signature of an update that overshot: a
#: diverging run grows geometrically and jumps 10x within a step or two; a
#: slower climb is caught LOSS_WINDOW batches after it passes 10x, still many
#: orders of magnitude before float32 overflows (3.4e38). Either way the
#: rollback goes to weights a healthy loss vouched for.
LOSS_EXPLOSION = 10.0

#: A snapshot of the weights counts as good when the next batch loss, computed
#: with those weights, is within this factor of the reference level:
#: sqrt(LOSS_EXPLOSION) = 3.2, halfway (on a log scale) between the level and
#: an explosion, above the batch-to-batch noise of an ordinary run. Weights
#: that have started to diverge (the last finite weights are not necessarily
#: good) give a higher loss and are not kept.
LOSS_HEALTHY = math.sqrt(LOSS_EXPLOSION)

#: Batch losses in the running median: 8 batches smooth out single hard
#: batches (the median ignores up to 3 outliers) yet follow a falling loss
#: within an epoch of a few dozen batches.
LOSS_WINDOW = 8
