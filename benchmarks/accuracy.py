"""Accuracy: error in ULPs against mpmath, and non-finite values and gradients.

For every case, dtype and implementation (stableops, Keras, tf.nn/tf.math),
eagerly and under XLA, on the same inputs:

* an **edge grid**: the dtype's extremes (smallest normal, epsilon, the
  largest value below one, log of the largest value, the largest value, ...)
  crossed with the case's label values, restricted to inputs whose exact
  value *and* gradient are finite and representable, so every non-finite
  output is a defect, not the mathematics;
* a **random sample** of ``random_points`` inputs from wide distributions
  (typical values plus log-uniform magnitudes).

Each value's error is measured in ULPs of its output dtype against a 60-digit
(float64: 650-digit, ``reference_digits``) mpmath reference computed from the
rounded inputs (``tests/_reference.py``: ``reference_array``, ``ulp_error``,
``mpf``). Losses are evaluated per sample
(``reduction=None``); elementwise losses use one element per sample, so their
per-sample error is the elementwise error. Batch losses (triplet, contrastive,
NT-Xent), where a sample's loss depends on its whole batch, take one small
batch per input row (``AccuracySpec.batched``): the loss is called once per
batch and each of its samples' values is measured (Dice and Tversky, with
their default ``axis=None``, give one value per batch). Gradients are of the
sum of the outputs with respect to the predictions (logits, or the op's input).

The references are the shared ones of ``tests/_reference.py`` (``mp_*``),
written from the mathematics in cancellation-free forms (``log1p``,
``expm1``, ``sinh`` for ``cosh - 1``, the maximum split off before
``log1p`` of the rest for ``logsumexp``), so 60 digits stay 60 digits for
every input on the grid. They are unclipped: a loss that clips (Keras's
1e-7) shows the clipping as error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable

import ml_dtypes
import mpmath
import numpy as np

from benchmarks.cases import available_impls
from tests import _reference as ref
from tests._reference import mpf, reference_array, to_numpy_dtype, ulp_error

MODES = ("eager", "xla")
METHOD = (
    "max |value - mpmath| in ULPs of the output dtype over an edge grid (inputs whose exact value "
    "and "
    "gradient are finite) and a random sample; non-finite values where the reference is finite; "
    "samples "
    "with any non-finite gradient entry"
)
LABELS = (0.0, 1.0, 0.5, 0.1)
ROW_WIDTH = 4


# ----------------------------------------------------------------------------
# mpmath references: the shared ones in tests/_reference.py, adapted to the
# benchmark's input layouts (elementwise losses: (k, 1) arrays; rows: (k, C)).
# ----------------------------------------------------------------------------

SLOPE = mpmath.mpf("0.2")  # leaky_relu's negative slope in cases.py, as a decimal


def _rowwise(fn, *arrays):
    """An mpmath function of matching rows (lists of mpf; a label stays an int): object array."""
    rows = arrays[0].shape[0]
    out = [fn(*[_as_mp(a[r]) for a in arrays]) for r in range(rows)]
    if out and isinstance(out[0], list):
        array = np.empty((rows, len(out[0])), dtype=object)
        for r, row in enumerate(out):
            array[r, :] = row
        return array
    array = np.empty(rows, dtype=object)
    array[:] = out
    return array


def _as_mp(value):
    if np.ndim(value) == 0:
        return int(value) if np.issubdtype(np.asarray(value).dtype, np.integer) else mpf(value)
    return [mpf(v) for v in np.asarray(value, dtype=np.float64)]


def _elementwise_loss(fn, *args):
    # Loss inputs have shape (k, 1): the per-sample loss is the element's loss.
    return lambda t, p: reference_array(lambda a, b: fn(a, b, *args), t[:, 0], p[:, 0])


def _row_loss(fn, *args):
    return lambda t, p: _rowwise(lambda a, b: fn(a, b, *args), t, p)


def _elementwise_op(fn, *args):
    return lambda x: reference_array(lambda a: fn(a, *args), x)


def _sparse_row(label, x_row):
    return ref.mp_categorical_crossentropy_logits(ref.one_hot_row(label, len(x_row)), x_row)


# ----------------------------------------------------------------------------
# Edge grids and random samples
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    tiny: float
    eps: float
    max: float

    @property
    def log_max(self) -> float:
        return math.log(self.max)


def limits_of(dtype) -> Limits:
    info = ml_dtypes.finfo(to_numpy_dtype(dtype))
    return Limits(float(info.tiny), float(info.eps), float(info.max))


def magnitudes(lim: Limits, upper: float | None = None) -> list[float]:
    """Positive edge magnitudes of a dtype (every one a normal number), up to ``upper``."""
    upper = lim.max if upper is None else upper
    candidates = [
        lim.tiny, 4 * lim.tiny, 1e-30, math.sqrt(lim.tiny), 1e-10,
        lim.eps / 4, lim.eps / 2, lim.eps,
        math.sqrt(lim.eps), 1e-3, 0.1, 0.5, 1.0 - lim.eps / 2, 1.0, 1.0 + lim.eps, 2.0, 10.0,
        lim.log_max / 2, lim.log_max - 1, lim.log_max, lim.log_max + 1, 2 * lim.log_max,
        1e4, 1 / lim.eps,
        math.sqrt(lim.max) / 2, lim.max / 4, lim.max,
    ]  # fmt: skip
    return sorted({v for v in candidates if lim.tiny <= v <= upper})


def _signed(values) -> list[float]:
    return sorted({0.0, *values, *[-v for v in values]})


def _probability_values(lim: Limits) -> list[float]:
    candidates = [
        lim.tiny, 4 * lim.tiny, 1e-30, 1e-20, 1e-10, 5e-8, 1e-7, 2e-7,
        lim.eps / 4, lim.eps / 2, lim.eps,
        math.sqrt(lim.eps), 1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 1 - 1e-3, 1 - math.sqrt(lim.eps),
        1 - 4 * lim.eps, 1 - lim.eps, 1 - lim.eps / 2,
    ]  # fmt: skip
    return sorted({v for v in candidates if lim.tiny <= v < 1})


def _column(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def grid_probabilities(lim: Limits):
    pairs = [(t, p) for t in LABELS for p in _probability_values(lim)]
    pairs += [(0.0, 0.0), (1.0, 1.0)]  # exact zero loss: 0 * log(0) = 0
    t, p = zip(*pairs)
    return _column(t), _column(p)


def random_probabilities(rng, n, lim: Limits):
    half, quarter = n // 2, n // 4
    p = np.concatenate(
        [
            1 / (1 + np.exp(-rng.normal(0, 3, half))),
            10.0 ** rng.uniform(math.log10(lim.tiny), 0, quarter),
            1 - 10.0 ** rng.uniform(math.log10(lim.eps / 2), 0, n - half - quarter),
        ]
    )
    p = np.clip(p, lim.tiny, 1 - lim.eps / 2)
    t = np.where(rng.random(n) < 0.5, rng.integers(0, 2, n), rng.random(n))
    return _column(t), _column(p)


def grid_logits(lim: Limits):
    pairs = [(t, x) for t in LABELS for x in _signed(magnitudes(lim))]
    t, x = zip(*pairs)
    return _column(t), _column(x)


def random_logits(rng, n, lim: Limits):
    half = n // 2
    wide = np.sign(rng.normal(size=n - half)) * 10.0 ** rng.uniform(
        -8, math.log10(lim.max) - 1, n - half
    )
    x = np.concatenate([rng.normal(0, 5, half), wide])
    t = np.where(rng.random(n) < 0.5, rng.integers(0, 2, n), rng.random(n))
    return _column(t), _column(x)


def _regression_grid(lim: Limits, max_diff: float):
    targets = (0.0, 1.0, -3.0, 1e3)
    predictions = _signed(magnitudes(lim, upper=max_diff)) + [
        1 - lim.eps,
        1 + lim.eps,
        2 - lim.eps,
        2 + 2 * lim.eps,
    ]
    pairs = [(t, p) for t in targets for p in predictions if abs(p - t) <= max_diff]
    t, p = zip(*pairs)
    return _column(t), _column(p)


def grid_squared(lim: Limits):
    # (p - t)^2 and its gradient 2 (p - t) representable in the input dtype.
    return _regression_grid(lim, math.sqrt(lim.max) / 2)


def grid_linear(lim: Limits):
    # Huber and log-cosh grow linearly: any |p - t| up to half the range.
    return _regression_grid(lim, lim.max / 2)


def random_regression(rng, n, lim: Limits, max_diff: float | None = None):
    half = n // 2
    t = rng.normal(0, 1, n)
    scale = 10.0 ** rng.uniform(math.log10(lim.eps), 3, n - half) * np.sign(
        rng.normal(size=n - half)
    )
    p = np.concatenate([rng.normal(0, 3, half), t[half:] + scale])
    if max_diff is not None:
        p = np.clip(p, t - max_diff, t + max_diff)
    return _column(t), _column(p)


def grid_elementwise_op(lim: Limits):
    return (np.asarray(_signed(magnitudes(lim)), dtype=np.float64),)


def random_elementwise_op(rng, n, lim: Limits):
    half = n // 2
    wide = np.sign(rng.normal(size=n - half)) * 10.0 ** rng.uniform(
        math.log10(lim.tiny), math.log10(lim.max), n - half
    )
    return (np.concatenate([rng.normal(0, 3, half), wide]),)


_ROW_PATTERNS = (
    (1, 0, 0, 0),
    (0, 0, 0, 1),
    (1, 1, 1, 1),
    (1, -1, 0, 0.5),
    (-1, -1, -1, -1),
    (1, 0.5, 0.25, 0),
)


def _rows_grid(lim: Limits):
    # Entries within max/4 keep logsumexp, and every lse - x_i, below the dtype's max.
    scales = _signed(magnitudes(lim, upper=lim.max / 4))
    rows = [[s * v for v in pattern] for pattern in _ROW_PATTERNS for s in scales]
    rows += [[s, s * (1 - lim.eps), s * (1 - 2 * lim.eps), 0.0] for s in scales]
    rows += [[s, 1.0, 2.0, 3.0] for s in scales]
    return np.asarray(rows, dtype=np.float64)


def _random_rows(rng, n, lim: Limits):
    scale = 10.0 ** rng.uniform(-3, min(4, math.log10(lim.max / 4)), (n, 1))
    return rng.normal(0, 1, (n, ROW_WIDTH)) * scale


_SOFT_LABELS = ((1, 0, 0, 0), (0, 0, 0, 1), (0.25, 0.25, 0.25, 0.25), (0.7, 0.1, 0.1, 0.1))


def grid_categorical(lim: Limits):
    rows = _rows_grid(lim)
    t = np.repeat(np.asarray(_SOFT_LABELS, dtype=np.float64), len(rows), axis=0)
    return t, np.tile(rows, (len(_SOFT_LABELS), 1))


def random_categorical(rng, n, lim: Limits):
    return np.eye(ROW_WIDTH)[rng.integers(0, ROW_WIDTH, n)], _random_rows(rng, n, lim)


def grid_sparse(lim: Limits):
    rows = _rows_grid(lim)
    labels = np.repeat(np.arange(ROW_WIDTH), len(rows))
    return labels.astype(np.int32), np.tile(rows, (ROW_WIDTH, 1))


def random_sparse(rng, n, lim: Limits):
    return rng.integers(0, ROW_WIDTH, n).astype(np.int32), _random_rows(rng, n, lim)


def grid_one_hot(lim: Limits):
    # The sparse grid's rows against the one-hot of their labels. Categorical hinge takes one-hot
    # targets: with soft ones, sum(t * y_pred) of scores near 2^23 weighted by 1/4 rounds in
    # float32 and max(...) - sum(...) + 1 cancels, for Keras and stableops alike.
    labels, rows = grid_sparse(lim)
    return np.eye(ROW_WIDTH)[labels], rows


def grid_rows(lim: Limits):
    return (_rows_grid(lim),)


def random_rows(rng, n, lim: Limits):
    return (_random_rows(rng, n, lim),)


_DIRECTIONS = ((1, 0, 0), (0, 1, 0), (1, 1, 1), (1, -1, 0.5), (-1, -1, -1), (3, 4, 0), (1, 1e-3, 0))


def grid_cosine(lim: Limits):
    # No zero vectors (the cosine is undefined there); every scale a normal number.
    candidates = (lim.tiny, 1e-30, math.sqrt(lim.tiny), 1.0, 1e10, math.sqrt(lim.max), lim.max / 4)
    scales = [s for s in candidates
              if s >= lim.tiny]  # fmt: skip
    units = [list(d) for d in _DIRECTIONS]
    scaled = {s: [[s * v for v in d] for d in _DIRECTIONS] for s in scales}
    pairs = [(a, u) for vs in scaled.values() for a in vs for u in units]
    pairs += [(u, a) for vs in scaled.values() for a in vs for u in units]
    pairs += [(a, b) for vs in scaled.values() for a in vs for b in vs]
    t, p = zip(*pairs)
    return np.asarray(t, dtype=np.float64), np.asarray(p, dtype=np.float64)


def random_cosine(rng, n, lim: Limits):
    t = rng.normal(0, 1, (n, 3)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
    p = rng.normal(0, 1, (n, 3)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
    return t, p


def probability_domain(t, p) -> np.ndarray:
    """Rows whose exact binary cross-entropy is finite.

    ``0 < p < 1``, or ``p`` at the end ``t`` sits on.

    Applied after rounding: a probability like 0.999 rounds to 1 in bfloat16.
    """
    t, p = t[:, 0], p[:, 0]
    return ((p > 0) & (p < 1)) | ((p == 0) & (t == 0)) | ((p == 1) & (t == 1))


# The other Keras drop-ins of stableops.losses: the categorical losses from probabilities and the
# KL divergence (rows of ROW_WIDTH), the Poisson, percentage, logarithmic and hinge losses (one
# element per sample). Where stableops floors a probability or a rate it is at the smallest
# normal of the dtype it computes in: float32's for float32 and half precision (computed in
# float32), float64's for float64; the references floor there too (as the tests do). On the
# domains below (no target mass on a zero probability or rate) that floor only touches a
# normalized probability below the smallest normal, never an exact infinity.
F32_TINY = float(np.finfo(np.float32).tiny)


def computing_dtype(dtype) -> str:
    """The dtype stableops computes ``dtype`` in: float64 for float64, float32 otherwise (half
    precision is computed in float32)."""
    return "float64" if str(dtype) == "float64" else "float32"


def floor_of(dtype) -> float:
    """The smallest normal of the dtype that stableops computes ``dtype`` in (see above)."""
    return float(np.finfo(computing_dtype(dtype)).tiny)


class Floored:
    """A reference that floors at the computing dtype's smallest normal: ``make(floor)`` gives
    the reference for that floor (``AccuracySpec.reference_for`` passes ``floor_of(dtype)``)."""

    def __init__(self, make: Callable[[float], Callable]):
        self.make = make


FOCAL_ALPHA, FOCAL_GAMMA = mpmath.mpf("0.25"), mpmath.mpf(2)  # Keras's defaults


def mp_categorical_focal_probabilities(t_row, p_row, low, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA):
    """Keras's documented ``sum(alpha (1 - q)^gamma (-t log q))``, ``q`` the normalized row.

    As ``stableops.losses.categorical_focal_crossentropy`` defines it from probabilities: zero
    entries floored at the smallest normal ``low``, the row normalized by its sum (Keras's clip
    of ``q`` to ``[1e-7, 1 - 1e-7]`` left out), ``1 - q_i`` as the sum of the other ``q`` (no
    cancellation), floored there too.
    """
    floored = [max(p, mpf(low)) for p in p_row]
    total = mpmath.fsum(floored)
    q = [v / total for v in floored]
    terms = []
    for i, t in enumerate(t_row):
        if t != 0:
            rest = max(mpmath.fsum(v for j, v in enumerate(q) if j != i), mpf(low))
            terms.append(alpha * mpmath.power(rest, gamma) * -t * mpmath.log(q[i]))
    return mpmath.fsum(terms)


def _distribution_rows(lim: Limits) -> np.ndarray:
    """Rows of probabilities: the exact targets (loss 0; Keras's clip at 1 - 1e-7 gives 1.2e-7),
    and for every edge probability ``v`` (tiny ones: Keras clips at 1e-7) a row with zeros, one
    with the rest spread, and, below 1/4, one near the uniform row (KL about 2 v^2)."""
    rows = [list(t) for t in _SOFT_LABELS]
    for v in _probability_values(lim):
        rows += [[v, 0.0, 0.0, 1 - v], [1 - v, v / 3, v / 3, v / 3]]
        if v < 0.25:
            rows.append([0.25 + v, 0.25 - v, 0.25, 0.25])
    return np.asarray(rows, dtype=np.float64)


def grid_distributions(lim: Limits):
    rows = _distribution_rows(lim)
    t = np.repeat(np.asarray(_SOFT_LABELS, dtype=np.float64), len(rows), axis=0)
    return t, np.tile(rows, (len(_SOFT_LABELS), 1))


def random_distributions(rng, n, lim: Limits):
    """One-hot and soft targets; softmax and log-uniform (unnormalized) predictions, shuffled."""

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    half = n // 2
    t = np.concatenate(
        [
            np.eye(ROW_WIDTH)[rng.integers(0, ROW_WIDTH, half)],
            softmax(rng.normal(0, 2, (n - half, ROW_WIDTH))),
        ]
    )
    p = np.concatenate(
        [
            softmax(rng.normal(0, 3, (half, ROW_WIDTH))),
            10.0 ** rng.uniform(math.log10(lim.tiny), 0, (n - half, ROW_WIDTH)),
        ]
    )
    return t, p[rng.permutation(n)]


def distribution_domain(t, p) -> np.ndarray:
    """Rows whose exact loss is finite: no target mass on a zero probability (after rounding)."""
    return ~np.any((t != 0) & (p == 0), axis=1)


def grid_poisson(lim: Limits):
    # Rates up to the largest value, zero with a zero count only; the slope 1 - t/p representable.
    rates = [0.0, *magnitudes(lim)]
    pairs = [
        (t, p)
        for t in (0.0, 1.0, 5.0, 100.0)
        for p in rates
        if t == 0 or (p > 0 and t / p <= lim.max / 4)
    ]
    t, p = zip(*pairs)
    return _column(t), _column(p)


def random_poisson(rng, n, lim: Limits):
    """Counts of typical rates; half the rates those, half log-uniform from 1000 tiny to 1e4."""
    half = n // 2
    typical = np.exp(np.minimum(rng.normal(0.5, 2.0, n), 5.0))
    wide = 10.0 ** rng.uniform(math.log10(lim.tiny) + 3, 4, n - half)
    return _column(rng.poisson(typical)), _column(np.concatenate([typical[:half], wide]))


def rate_domain(t, p) -> np.ndarray:
    """Rows whose exact Poisson loss is finite: a positive rate, or a zero rate with count 0."""
    t, p = t[:, 0], p[:, 0]
    return (p > 0) | ((p == 0) & (t == 0))


def grid_percentage(lim: Limits):
    """Regression pairs with ``100 |p - t| / |t|`` and the slope ``100 / |t|`` within max/4.

    Zero targets with every prediction: left out of the mean (0) by stableops; Keras divides by
    1e-7 (1e9 |p|, ``inf`` beyond 3.4e29 in float32).
    """
    predictions = _signed(magnitudes(lim)) + [
        1 - lim.eps,
        1 + lim.eps,
        2 - lim.eps,
        2 + 2 * lim.eps,
    ]
    pairs = [
        (t, p)
        for t in (0.0, 1e-10, 1.0, -3.0, 1e3)
        for p in predictions
        # as a quotient: |t| max overflows Python's float (float64) for float64's max
        if t == 0 or 100 * max(abs(p - t), 1.0) / abs(t) <= lim.max / 4
    ]
    t, p = zip(*pairs)
    return _column(t), _column(p)


def random_percentage(rng, n, lim: Limits):
    # Targets within 0.01 of zero are zero (left out of the mean); the rest keep 100 / |t| moderate.
    t, p = random_regression(rng, n, lim)
    return np.where(np.abs(t) < 0.01, 0.0, t), p


def grid_logarithmic(lim: Limits):
    """Non-negative pairs (log1p itself, not stableops's tangent below 0): predictions of every
    edge magnitude (below Keras's 1e-7 clip too) and within 2 eps of each target (where Keras's
    difference of logs cancels)."""
    targets = (0.0, 1e-3, 1.0, 1e3)
    near = [t * (1 + k * lim.eps) for t in targets for k in (-2, -1, 1, 2)]
    predictions = sorted({0.0, *magnitudes(lim), *near})
    t, p = zip(*[(t, p) for t in targets for p in predictions])
    return _column(t), _column(p)


def random_nonnegative_regression(rng, n, lim: Limits):
    return tuple(np.abs(a) for a in random_regression(rng, n, lim))


def grid_hinge(lim: Limits, upper: float):
    """Labels -1 and 1 against signed predictions up to ``upper`` (the margin at 1 - eps/2, 1 and
    1 + eps included)."""
    pairs = [(t, p) for t in (-1.0, 1.0) for p in _signed(magnitudes(lim, upper))]
    t, p = zip(*pairs)
    return _column(t), _column(p)


def random_hinge(rng, n, lim: Limits, upper: float):
    _, x = random_logits(rng, n, lim)
    return _column(np.where(rng.random(n) < 0.5, -1.0, 1.0)), np.clip(x, -upper, upper)


# Issue 15's likelihood losses (one element per sample: y (k, 1), stacked y_pred (k, 2)).


def mp_gaussian_nll_log_variance(t, p):
    return (p[1] + (t[0] - p[0]) ** 2 * mpmath.exp(-p[1])) / 2


def mp_gaussian_kl(t, p):
    return (mpmath.expm1(p[1]) - p[1] + p[0] ** 2) / 2


def mp_poisson_nll_log_rate(t, x):
    return mpmath.exp(x) - t * x


def grid_gaussian_nll(lim: Limits):
    # (y - mu)^2 exp(-s) representable: |y - mu| <= 4, s >= -log_max / 2.
    spreads = [
        0.0,
        lim.eps,
        -lim.eps,
        1e-3,
        1.0,
        -1.0,
        5.0,
        -5.0,
        20.0,
        lim.log_max / 2,
        -lim.log_max / 2,
    ]
    rows = [
        (t, m, s) for t in (0.0, 1.0, -3.0) for m in (0.0, 0.5, -1.0 + lim.eps) for s in spreads
    ]
    t, m, s = (np.asarray(c, dtype=np.float64) for c in zip(*rows))
    return _column(t), np.stack([m, s], -1)


def random_gaussian_nll(rng, n, lim: Limits):
    t = rng.normal(0, 1, n)
    return _column(t), np.stack(
        [t + rng.normal(0, 1, n), rng.uniform(-lim.log_max / 4, lim.log_max / 4, n)], -1
    )


def grid_gaussian_kl(lim: Limits):
    # exp(s) / 2 + mu^2 / 2 representable: s <= log_max (computed in float32 for half precision).
    spreads = [
        0.0,
        lim.eps,
        -lim.eps,
        1e-3,
        -1e-3,
        0.5,
        -1.5,
        1.9,
        -2.5,
        10.0,
        11.5,
        30.0,
        -30.0,
        80.0,
    ]
    rows = [(m, s) for m in (0.0, 1e-3, 2.0, -30.0) for s in spreads if s <= 88.0]
    m, s = (np.asarray(c, dtype=np.float64) for c in zip(*rows))
    return np.zeros((len(m), 1)), np.stack([m, s], -1)


def random_gaussian_kl(rng, n, lim: Limits):
    return np.zeros((n, 1)), np.stack([rng.normal(0, 1, n), rng.normal(0, 3, n)], -1)


def grid_poisson_nll(lim: Limits):
    rates = [-20.0, -1.0, 0.0, lim.eps, 1.0, 10.0, 11.5, 50.0, 87.0]
    pairs = [(t, x) for t in (0.0, 1.0, 5.0, 100.0) for x in rates]
    t, x = zip(*pairs)
    return _column(t), _column(x)


def random_poisson_nll(rng, n, lim: Limits):
    x = rng.normal(0.5, 2.0, n)
    return _column(rng.poisson(np.exp(np.minimum(x, 8.0)))), _column(x)


# Issue 15's batch losses: the loss of one sample depends on its whole batch, so one "row" of the
# accuracy inputs is one small batch (AccuracySpec.batched): embeddings (k, BATCH, DIM) with labels
# (k, BATCH), the loss called once per batch, one value per sample of the batch.

BATCH, DIM = 8, 4
MARGIN = mpmath.mpf(1)  # TripletLoss and ContrastiveLoss default
TEMPERATURE = mpmath.mpf("0.1")  # NTXent(temperature=0.1) in cases.py, as a decimal


def _mp_distances(x):
    """Euclidean distances ``||x_i - x_j||`` of a batch of mpf rows, from the differences."""
    n = len(x)
    d = [[mpmath.mpf(0)] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            d[i][j] = d[j][i] = mpmath.sqrt(mpmath.fsum((a - b) ** 2 for a, b in zip(x[i], x[j])))
    return d


def _mp_batch(array):
    return [[mpf(v) for v in row] for row in np.asarray(array, dtype=np.float64)]


def mp_triplet_hard(labels, x, margin=MARGIN):
    """TFA's ``triplet_hard_loss`` per anchor, Euclidean: ``max(d(a, p*) - d(a, n*) + margin, 0)``.

    ``p*`` the farthest positive (none: the anchor itself, distance 0); ``n*`` the nearest
    negative (none: TFA's masked minimum is the row's largest distance).
    """
    labels = [int(v) for v in labels]
    d = _mp_distances(x)
    out = []
    for i, row in enumerate(d):
        positives = [row[j] for j in range(len(row)) if j != i and labels[j] == labels[i]]
        negatives = [row[j] for j in range(len(row)) if labels[j] != labels[i]]
        hardest_positive = max(positives, default=mpmath.mpf(0))
        hardest_negative = min(negatives) if negatives else max(row)
        out.append(max(hardest_positive - hardest_negative + margin, mpmath.mpf(0)))
    return out


def mp_contrastive_batch(labels, x, margin=MARGIN):
    """Batch-form contrastive loss per anchor, as ``stableops.losses.ContrastiveLoss`` documents it.

    The mean over the other rows ``j`` of ``d^2`` (same label) or ``max(margin - d, 0)^2``.
    """
    labels = [int(v) for v in labels]
    n = len(x)
    out = []
    for i in range(n):
        terms = []
        for j in range(n):
            if j == i:
                continue
            squared = mpmath.fsum((a - b) ** 2 for a, b in zip(x[i], x[j]))
            if labels[j] == labels[i]:
                terms.append(squared)
            else:
                terms.append(max(margin - mpmath.sqrt(squared), mpmath.mpf(0)) ** 2)
        out.append(mpmath.fsum(terms) / (n - 1))
    return out


def mp_nt_xent(x, temperature=TEMPERATURE):
    """SimCLR's NT-Xent per row of two stacked views ``[2n, dim]`` (``i``'s positive: ``i + n``).

    ``-log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))`` with cosine similarities ``s``, written
    ``log1p(sum_{k != i, p} exp((s_ik - s_ip) / t))`` (no cancellation when the positive dominates).
    """
    units = [ref.mp_l2_normalize(row) for row in x]
    rows = len(units)
    out = []
    for i in range(rows):
        partner = (i + rows // 2) % rows
        sim = [mpmath.fsum(a * b for a, b in zip(units[i], units[k])) for k in range(rows)]
        gaps = [sim[k] - sim[partner] for k in range(rows) if k not in (i, partner)]
        out.append(mpmath.log1p(mpmath.fsum(mpmath.exp(g / temperature) for g in gaps)))
    return out


def mp_ctc(labels, logits):
    """CTC negative log-likelihood by the forward algorithm (Graves et al. 2006), in Keras's layout.

    ``labels`` ``[L]``: class 0 is the blank and the padding (the label is the non-zero
    entries); ``logits`` ``[T, C]`` unnormalized, every frame used. ``+inf`` when no
    alignment exists.
    """
    label = [int(v) for v in labels if int(v) != 0]
    extended = [0]
    for c in label:
        extended += [c, 0]
    # mpmath.mpf keeps an mpf entry (the gradient audit perturbs them) and is exact on floats.
    probs = [[mpmath.exp(v) for v in ref.mp_log_softmax([mpmath.mpf(v) for v in f])]
             for f in logits]
    states = len(extended)
    alpha = [mpmath.mpf(0)] * states
    alpha[0] = probs[0][0]
    if states > 1:
        alpha[1] = probs[0][extended[1]]
    for frame in probs[1:]:
        previous = alpha
        alpha = []
        for s, c in enumerate(extended):
            total = previous[s] + (previous[s - 1] if s >= 1 else 0)
            if s >= 2 and c != 0 and c != extended[s - 2]:
                total += previous[s - 2]
            alpha.append(total * frame[c])
    likelihood = alpha[-1] + (alpha[-2] if states > 1 else 0)
    return -mpmath.log(likelihood) if likelihood > 0 else mpmath.inf


def _batch_reference(fn):
    """``fn(labels, mpf rows) -> [BATCH]`` over (k, BATCH) labels and (k, BATCH, DIM) embeddings."""

    def reference(t, p):
        out = np.empty(p.shape[:2], dtype=object)
        for r in range(p.shape[0]):
            out[r, :] = fn(t[r], _mp_batch(p[r]))
        return out

    return reference


def _ctc_reference(t, p):
    out = np.empty(p.shape[0], dtype=object)
    for r in range(p.shape[0]):
        out[r] = mp_ctc(t[r], np.asarray(p[r], dtype=np.float64))
    return out


# Embedding patterns, one batch each (entries in [-1, 1], scaled by the grid's magnitudes).
_EMBEDDINGS = {
    "duplicates": ((1.0, -0.5, 0.25, 0.0),) * BATCH,
    "pairs": (
        (1, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 1, 0, 0),
        (-1, 0, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (0.5, 0.5, 0.5, 0.5),
    ),
    "mixed": (
        (1, 0, 0, 0), (1e-3, 0, 0, 0), (0, 1e-3, 0, 0), (1, 1e-3, 0, 0),
        (-1, 0, 0, 0), (0, 0, 1e-3, 1), (1, 1, 1, 1), (1e-3, 1e-3, -1e-3, 1e-3),
    ),
    "fixed": tuple(map(tuple, np.random.default_rng(15).uniform(-1, 1, (BATCH, DIM)).round(6))),
}  # fmt: skip
_CLASS_PATTERNS = ((0, 0, 0, 1, 1, 2, 2, 3), (0, 0, 1, 1, 2, 2, 3, 3), (0, 1, 0, 1, 0, 1, 0, 1))


def _embedding_patterns(lim: Limits) -> list[np.ndarray]:
    near = np.tile([1.0, 1.0, -1.0, 0.5], (BATCH, 1))  # near-duplicates: rows a few eps apart
    near[:, 0] += np.arange(BATCH) * lim.eps
    near[:, 2] += (np.arange(BATCH) % 3) * lim.eps
    return [np.asarray(p, dtype=np.float64) for p in _EMBEDDINGS.values()] + [near]


def _labelled_batches(lim: Limits, upper: float):
    """Every class pattern with every embedding pattern at every magnitude up to ``upper``."""
    scales = magnitudes(lim, upper)
    patterns = _embedding_patterns(lim)
    batches = [(c, s * p) for c in _CLASS_PATTERNS for p in patterns for s in scales]
    labels, x = zip(*batches)
    return np.asarray(labels, dtype=np.int32), np.stack(x)


def _random_labelled_batches(rng, n, upper: float):
    labels = rng.integers(0, 3, (n, BATCH)).astype(np.int32)
    scale = 10.0 ** rng.uniform(-3, min(3, math.log10(upper / 4)), (n, 1, 1))
    x = np.clip(rng.normal(0, 1, (n, BATCH, DIM)), -4, 4)
    # Near-duplicates: every other batch's second half is its first, nudged by 1e-7..1e-3 relative.
    half = (n, BATCH // 2, DIM)
    nudge = 1 + 10.0 ** rng.uniform(-7, -3, half) * np.sign(rng.normal(size=half))
    copies = rng.random(n) < 0.5
    x[copies, BATCH // 2 :] = x[copies, : BATCH // 2] * nudge[copies]
    return labels, x * scale


def _triplet_upper(lim: Limits) -> float:
    # Entries within +-s in 4 dimensions are at most 4 s apart: d and d_ap - d_an + 1 representable.
    return lim.max / 8


def _contrastive_upper(lim: Limits) -> float:
    # d^2 <= 16 s^2 = max / 64: the 7 terms of an anchor's mean, and their sum, stay representable.
    return math.sqrt(lim.max) / 32


def grid_triplet(lim: Limits):
    return _labelled_batches(lim, _triplet_upper(lim))


def random_triplet(rng, n, lim: Limits):
    return _random_labelled_batches(rng, n, _triplet_upper(lim) / 4)


def grid_contrastive(lim: Limits):
    return _labelled_batches(lim, _contrastive_upper(lim))


def random_contrastive(rng, n, lim: Limits):
    return _random_labelled_batches(rng, n, _contrastive_upper(lim) / 4)


# NT-Xent: rows 0..3 one view, rows 4..7 the other (row i's positive is row i + 4 mod 8).
_VIEWS = {
    "identical": ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)) * 2,
    "all_equal": ((1.0, 2.0, -1.0, 0.5),) * BATCH,
    "antiparallel": ((1, 0, 0, 0), (0, 1, 0, 0), (1, 1, 0, 0), (1, -1, 1, -1),
                     (-1, 0, 0, 0), (0, -1, 0, 0), (-1, -1, 0, 0), (-1, 1, -1, 1)),
    "fixed": tuple(map(tuple, np.random.default_rng(16).uniform(-1, 1, (BATCH, DIM)).round(6))),
}  # fmt: skip
_ROW_FACTORS = np.asarray([1.0, 2.0**-6, 2.0**6, 1.0, 2.0**-6, 1.0, 2.0**6, 1.0])[:, None]


def _nt_xent_scales(lim: Limits, low_factor: float, high_factor: float) -> list[float]:
    # Every row keeps an entry of at least 256 / max (>= tiny): no zero row (no cosine there), and
    # the gradient (at most about 90 / ||x|| at t = 0.1) stays representable. Norms stay below max.
    low = max(lim.tiny, 256 / lim.max) / low_factor
    return [s for s in magnitudes(lim, upper=lim.max / 4 / high_factor) if s >= low]


def _view_patterns(lim: Limits) -> list[tuple[np.ndarray, float, float]]:
    patterns = [(np.asarray(p, dtype=np.float64), 1.0, 1.0) for p in _VIEWS.values()]
    near = np.ones((BATCH, DIM))
    near[:, 0] += np.arange(BATCH) * lim.eps  # all eight rows within a few eps of one direction
    near[:, 3] -= (np.arange(BATCH) % 3) * lim.eps
    patterns.append((near, 1.0, 1.0))
    fixed = np.asarray(_VIEWS["fixed"], dtype=np.float64)
    patterns.append((fixed * _ROW_FACTORS, float(_ROW_FACTORS.min()), float(_ROW_FACTORS.max())))
    return patterns


def grid_nt_xent(lim: Limits):
    batches = []
    for pattern, low, high in _view_patterns(lim):
        # Scale from the smallest row maximum: every "fixed" row has an entry of at least 0.2.
        batches += [s * pattern for s in _nt_xent_scales(lim, 0.2 * low, high)]
    x = np.stack(batches)
    return np.zeros(x.shape[:2]), x


def random_nt_xent(rng, n, lim: Limits):
    first = rng.normal(0, 1, (n, BATCH // 2, DIM))
    noise = 10.0 ** rng.uniform(-7, 0, (n, 1, 1)) * rng.normal(0, 1, (n, BATCH // 2, DIM))
    x = np.concatenate([first, first + noise], axis=1) * 10.0 ** rng.uniform(-1, 1, (n, BATCH, 1))
    low = math.log10(max(lim.tiny, 256 / lim.max)) + 3
    x *= 10.0 ** rng.uniform(low, max(low, min(4, math.log10(lim.max) - 4)), (n, 1, 1))
    return np.zeros(x.shape[:2]), x


# CTC: labels [L] (0-padded, 0 is the blank), logits [T, C]; every label aligns with T frames.
CTC_FRAMES, CTC_CLASSES = 5, 4
# (3, 3, 3) needs all 5 frames (one alignment); no label is impossible (its reference is +inf).
_CTC_LABELS = ((1, 2, 3), (1, 2, 1), (1, 1, 0), (3, 3, 3), (2, 0, 0), (0, 0, 0))
_CTC_PATH = (1, 0, 2, 0, 3)


def _ctc_patterns(lim: Limits) -> list[np.ndarray]:
    t, c = np.meshgrid(np.arange(CTC_FRAMES), np.arange(CTC_CLASSES), indexing="ij")
    return [
        (c == np.asarray(_CTC_PATH)[:, None]).astype(np.float64),  # one alignment of (1, 2, 3)
        (c == 0).astype(np.float64),  # blanks favoured
        ((t + 2 * c) % 5 - 2) / 2,
        1 - (t + c) * lim.eps,  # near ties
        np.random.default_rng(17).uniform(-1, 1, (CTC_FRAMES, CTC_CLASSES)).round(6),
    ]


def _ctc_upper(lim: Limits) -> float:
    # -log p <= T (2 s + log C): representable (in float32, the output dtype) for s <= max / (4 T).
    return lim.max / (4 * CTC_FRAMES)


def grid_ctc(lim: Limits):
    scales = _signed(magnitudes(lim, upper=_ctc_upper(lim)))
    rows = [(label, np.zeros((CTC_FRAMES, CTC_CLASSES))) for label in _CTC_LABELS]
    patterns = _ctc_patterns(lim)
    rows += [(label, s * p) for label in _CTC_LABELS for p in patterns for s in scales if s != 0]
    labels, logits = zip(*rows)
    return np.asarray(labels, dtype=np.int32), np.stack(logits)


def random_ctc(rng, n, lim: Limits):
    length = rng.integers(0, len(_CTC_LABELS[0]) + 1, n)
    labels = rng.integers(1, CTC_CLASSES, (n, len(_CTC_LABELS[0])))
    labels = np.where(np.arange(labels.shape[1]) < length[:, None], labels, 0).astype(np.int32)
    scale = 10.0 ** rng.uniform(-2, min(3, math.log10(_ctc_upper(lim))), (n, 1, 1))
    return labels, rng.normal(0, 1, (n, CTC_FRAMES, CTC_CLASSES)) * scale


# Dice and Tversky with axis=None (their default) reduce the whole batch to one value: a batch loss
# (AccuracySpec.batched), one batch of BATCH x DIM mask entries per row, one value per batch.
_MASKS = {
    "empty": np.zeros((BATCH, DIM)),
    "full": np.ones((BATCH, DIM)),
    "single": np.eye(BATCH * DIM)[5].reshape(BATCH, DIM),
    "fixed": (np.random.default_rng(18).random((BATCH, DIM)) < 0.5).astype(np.float64),
}


def grid_overlap(lim: Limits):
    """Every mask against: itself (loss 0; two empty masks are Keras's loss 1), every entry off by
    ``v`` (near-perfect: Keras's ``1 - ratio`` cancels and its 1e-7 moves a small loss), every
    entry wrong by ``1 - v``, and the constant ``v``; ``v`` each edge probability."""
    batches = []
    for m in _MASKS.values():
        batches.append((m, m))
        for v in _probability_values(lim):
            batches += [(m, np.abs(m - v)), (m, np.abs(1 - m - v)), (m, np.full_like(m, v))]
    t, p = zip(*batches)
    return np.stack(t), np.stack(p)


def random_overlap(rng, n, lim: Limits):
    t = (rng.random((n, BATCH, DIM)) < rng.random((n, 1, 1))).astype(np.float64)
    # Per batch an error scale from eps (near-perfect) to 1 (random), per entry a fraction of it.
    error = 10.0 ** rng.uniform(math.log10(lim.eps), 0, (n, 1, 1)) * rng.random((n, BATCH, DIM))
    return t, np.abs(t - error)


def _overlap_reference(fn, *args):
    """``fn(t, p, *args)`` of every batch's flattened masks: one value per batch (row)."""

    def reference(t, p):
        out = np.empty(p.shape[0], dtype=object)
        for r in range(p.shape[0]):
            out[r] = fn(*[[mpf(v) for v in a[r].ravel()] for a in (t, p)], *args)
        return out

    return reference


@dataclasses.dataclass(frozen=True)
class AccuracySpec:
    grid: Callable  # grid(limits) -> input arrays (float64; labels int32)
    random: Callable  # random(rng, n, limits) -> input arrays
    # reference(*rounded float64 arrays) -> object array of mpf; or Floored (see reference_for)
    reference: Callable | Floored
    domain: Callable | None = None  # domain(*rounded float64 arrays) -> rows to keep
    # A batch loss: each row of the inputs is one batch, the loss is called once per row, and its
    # per-sample values (and gradient) are that row's; the reference gives (rows, batch) values,
    # or (rows,) for a loss with one value per batch (Dice and Tversky with axis=None).
    batched: bool = False

    def reference_for(self, dtype) -> Callable:
        """The reference for inputs of ``dtype``: a ``Floored`` one at ``floor_of(dtype)``."""
        if isinstance(self.reference, Floored):
            return self.reference.make(floor_of(dtype))
        return self.reference


SPECS = {
    "binary_crossentropy": AccuracySpec(
        # Focal with gamma = 0 is the unclipped binary cross-entropy, with 0 log 0 = 0.
        grid_probabilities,
        random_probabilities,
        _elementwise_loss(ref.mp_binary_focal_probabilities, 0),
        probability_domain,
    ),
    "binary_crossentropy_logits": AccuracySpec(
        grid_logits, random_logits, _elementwise_loss(ref.mp_binary_crossentropy_logits)
    ),
    "categorical_crossentropy_logits": AccuracySpec(
        grid_categorical, random_categorical, _row_loss(ref.mp_categorical_crossentropy_logits)
    ),
    "sparse_categorical_crossentropy_logits": AccuracySpec(
        grid_sparse, random_sparse, _row_loss(_sparse_row)
    ),
    "binary_focal_crossentropy": AccuracySpec(
        grid_probabilities,
        random_probabilities,
        _elementwise_loss(ref.mp_binary_focal_probabilities, 2),  # Keras's default gamma
        probability_domain,
    ),
    "mean_squared_error": AccuracySpec(
        grid_squared,
        lambda rng, n, lim: random_regression(rng, n, lim, math.sqrt(lim.max) / 2),
        _row_loss(ref.mp_mean_squared_error_row),
    ),
    "huber": AccuracySpec(grid_linear, random_regression, _row_loss(ref.mp_huber_row, 1.0)),
    "log_cosh": AccuracySpec(grid_linear, random_regression, _row_loss(ref.mp_log_cosh_row)),
    "cosine_similarity": AccuracySpec(
        grid_cosine, random_cosine, _row_loss(ref.mp_cosine_similarity_row)
    ),
    "categorical_crossentropy": AccuracySpec(
        grid_distributions,
        random_distributions,
        Floored(lambda low: _row_loss(ref.mp_categorical_crossentropy_probabilities, low)),
        distribution_domain,
    ),
    "categorical_focal_crossentropy": AccuracySpec(
        grid_distributions,
        random_distributions,
        Floored(lambda low: _row_loss(mp_categorical_focal_probabilities, low)),
        distribution_domain,
    ),
    "kl_divergence": AccuracySpec(
        grid_distributions,
        random_distributions,
        Floored(lambda low: _row_loss(ref.mp_kl_divergence_row, low)),
        distribution_domain,
    ),
    "poisson": AccuracySpec(
        grid_poisson,
        random_poisson,
        Floored(lambda low: _row_loss(ref.mp_poisson_row, low)),
        rate_domain,
    ),
    "mean_absolute_error": AccuracySpec(
        grid_linear, random_regression, _row_loss(ref.mp_mean_absolute_error_row)
    ),
    "mean_absolute_percentage_error": AccuracySpec(
        grid_percentage, random_percentage, _row_loss(ref.mp_mean_absolute_percentage_error_row)
    ),
    "mean_squared_logarithmic_error": AccuracySpec(
        grid_logarithmic,
        random_nonnegative_regression,
        _row_loss(ref.mp_mean_squared_logarithmic_error_row),
    ),
    "hinge": AccuracySpec(
        lambda lim: grid_hinge(lim, lim.max / 2),
        lambda rng, n, lim: random_hinge(rng, n, lim, lim.max / 2),
        _row_loss(ref.mp_hinge_row),
    ),
    "squared_hinge": AccuracySpec(
        # (1 - t p)^2 and its slope representable.
        lambda lim: grid_hinge(lim, math.sqrt(lim.max) / 2),
        lambda rng, n, lim: random_hinge(rng, n, lim, math.sqrt(lim.max) / 2),
        _row_loss(ref.mp_squared_hinge_row),
    ),
    "categorical_hinge": AccuracySpec(
        grid_one_hot, random_categorical, _row_loss(ref.mp_categorical_hinge_row)
    ),
    "dice": AccuracySpec(
        grid_overlap, random_overlap, _overlap_reference(ref.mp_dice_loss, 0.0), batched=True
    ),
    "tversky": AccuracySpec(
        grid_overlap,
        random_overlap,
        _overlap_reference(ref.mp_tversky_loss, 0.5, 0.5, 0.0),  # Keras's defaults
        batched=True,
    ),
    "gaussian_nll": AccuracySpec(
        grid_gaussian_nll, random_gaussian_nll, _row_loss(mp_gaussian_nll_log_variance)
    ),
    "gaussian_kl": AccuracySpec(grid_gaussian_kl, random_gaussian_kl, _row_loss(mp_gaussian_kl)),
    "poisson_nll": AccuracySpec(
        grid_poisson_nll, random_poisson_nll, _elementwise_loss(mp_poisson_nll_log_rate)
    ),
    "triplet_loss": AccuracySpec(
        grid_triplet, random_triplet, _batch_reference(mp_triplet_hard), batched=True
    ),
    "contrastive_loss": AccuracySpec(
        grid_contrastive, random_contrastive, _batch_reference(mp_contrastive_batch), batched=True
    ),
    "nt_xent": AccuracySpec(
        grid_nt_xent, random_nt_xent, _batch_reference(lambda t, x: mp_nt_xent(x)), batched=True
    ),
    "ctc": AccuracySpec(grid_ctc, random_ctc, _ctc_reference),
    "logsumexp": AccuracySpec(grid_rows, random_rows, lambda x: _rowwise(ref.mp_logsumexp, x)),
    "softmax": AccuracySpec(grid_rows, random_rows, lambda x: _rowwise(ref.mp_softmax, x)),
    "log_softmax": AccuracySpec(grid_rows, random_rows, lambda x: _rowwise(ref.mp_log_softmax, x)),
    "elu": AccuracySpec(
        grid_elementwise_op, random_elementwise_op, _elementwise_op(ref.mp_elu, mpmath.mpf(1))
    ),
    "leaky_relu": AccuracySpec(
        grid_elementwise_op, random_elementwise_op, _elementwise_op(ref.mp_leaky_relu, SLOPE)
    ),
}


# ----------------------------------------------------------------------------
# Rounding inputs to the dtype, and the measurement
# ----------------------------------------------------------------------------


def round_inputs(arrays, dtype, lim: Limits):
    """Round float arrays to ``dtype`` (subnormals flushed to zero, as TF does); labels unchanged.

    Returns the arrays in ``dtype`` and their exact float64 values (for the reference).
    """
    rounded = []
    for a in arrays:
        if np.issubdtype(a.dtype, np.integer):
            rounded.append(a)
            continue
        r = np.clip(a, -lim.max, lim.max).astype(to_numpy_dtype(dtype))
        wide = r.astype(np.float64)
        r = np.where(np.abs(wide) < lim.tiny, 0.0, wide).astype(to_numpy_dtype(dtype))
        rounded.append(r)
    exact = [a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float64) for a in rounded]
    return rounded, exact


def _sample_inputs(spec: AccuracySpec, dtype: str, random_points: int, grid_stride: int = 1):
    lim = limits_of(dtype)
    grid = [g[::grid_stride] for g in spec.grid(lim)]
    rand = spec.random(np.random.default_rng(1234), random_points, lim)
    joined = [np.concatenate([g, r]) for g, r in zip(grid, rand)]
    rounded, exact = round_inputs(joined, dtype, lim)
    n_grid = len(grid[0])
    if spec.domain is not None:
        keep = spec.domain(*exact)
        n_grid = int(keep[:n_grid].sum())
        rounded, exact = [a[keep] for a in rounded], [a[keep] for a in exact]
    return rounded, exact, n_grid


def _finite_reference_mask(reference, out_dtype) -> np.ndarray:
    largest = mpf(ml_dtypes.finfo(to_numpy_dtype(out_dtype)).max)
    flat = [bool(mpmath.isfinite(r) and abs(r) <= largest) for r in reference.flat]
    return np.asarray(flat, dtype=bool).reshape(reference.shape)


def flush_aware(errors: np.ndarray, reference: np.ndarray, out_dtype) -> np.ndarray:
    """ULP errors with the unit floored at the smallest normal ``tiny``.

    TF and XLA flush subnormal *intermediates* to zero, so a result just above
    ``tiny`` (e.g. ``logsumexp`` of a row whose exponentials are subnormal)
    can be off by up to ``tiny`` in absolute terms: millions of its own ULPs,
    yet one unit of the flushed arithmetic. ``ulp_error`` already floors the
    unit at ``tiny`` for references below ``tiny``; this extends the floor to
    every reference, and changes nothing for ``|reference| >= tiny / eps``.
    """
    info = ml_dtypes.finfo(to_numpy_dtype(out_dtype))
    tiny = float(info.tiny)
    magnitude = np.abs(np.array([float(r) for r in reference.flat], dtype=np.float64)).reshape(
        reference.shape
    )
    _, exponent = np.frexp(magnitude)  # magnitude = m 2^e, m in [0.5, 1): ulp = 2^(e - 1 - nmant)
    ulp = np.where(magnitude < tiny, tiny, np.ldexp(1.0, exponent - 1 - int(info.nmant)))
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(errors), errors * ulp / np.maximum(ulp, tiny), errors)


def _describe_inputs(exact, index) -> list:
    row = index[0]
    return [np.asarray(a[row]).tolist() for a in exact]


def measure_one(case, impl, mode: str, rounded, exact, reference, n_grid: int) -> dict:
    import tensorflow as tf

    from benchmarks.speed import forward_backward, in_mode

    fb = in_mode(forward_backward(impl.build(True), case.wrt), mode)
    spec = SPECS.get(case.name)
    if spec is not None and spec.batched:  # one call per batch (a row); traced and compiled once
        results = [fb(*[tf.convert_to_tensor(a[r]) for a in rounded]) for r in range(len(exact[0]))]
        value = np.stack([v.numpy() for v, _ in results])
        grad = np.stack([g.numpy() for _, g in results])
    else:
        value, grad = fb(*[tf.convert_to_tensor(a) for a in rounded])
        value, grad = value.numpy(), grad.numpy()
    out_dtype = value.dtype
    errors = ulp_error(value, reference, out_dtype)
    finite_ref = _finite_reference_mask(reference, out_dtype)
    on_grid = np.zeros(errors.shape[0], dtype=bool)
    on_grid[:n_grid] = True
    grid_errors = errors[on_grid]
    random_errors = errors[~on_grid]
    flushed = flush_aware(errors, reference, out_dtype)
    worst_index = np.unravel_index(int(np.argmax(errors)), errors.shape)
    grad_rows_bad = ~np.isfinite(grad.astype(np.float64)).reshape(grad.shape[0], -1).all(axis=1)
    return {
        "case": case.name,
        "impl": impl.name,
        "api": impl.api,
        "mode": mode,
        "output_dtype": str(to_numpy_dtype(out_dtype)),
        "grid_points": int(n_grid),
        "random_points": int(errors.shape[0] - n_grid),
        "max_ulp_grid": float(grid_errors.max()) if grid_errors.size else 0.0,
        "max_ulp_random": float(random_errors.max()) if random_errors.size else 0.0,
        "max_ulp_grid_flush_aware": float(flushed[on_grid].max()) if grid_errors.size else 0.0,
        "max_ulp_random_flush_aware": float(flushed[~on_grid].max()) if random_errors.size else 0.0,
        "median_ulp": float(np.median(errors)),
        "nonfinite_values": int(np.sum(~np.isfinite(value.astype(np.float64)) & finite_ref)),
        "nonfinite_grad_samples": int(grad_rows_bad.sum()),
        "worst": {
            "inputs": _describe_inputs(exact, worst_index),
            "got": float(value[worst_index]),
            "want": mpmath.nstr(reference[worst_index], 17),
            "ulp": float(errors[worst_index]),
        },
    }


HALF_DTYPES = ("float16", "bfloat16")


def reference_digits(dtype) -> int:
    """mpmath's working digits for the references of ``dtype``'s inputs.

    60 (``tests/_reference.py``) keep the cancellation-free references exact to far below an
    ULP on float32's and half precision's grids. float64's grids put numbers from its smallest
    normal to 1 in one sum (a probability of 1e-300 beside 1, a Dice overlap of 1 and 31
    entries of 9e-308: 1 - 2I / (T + P) is 1.4e-306): 60 digits round such a sum to its largest
    term and the reference to 0. 650 digits hold any sum of float64 numbers of up to 2^50 terms
    exactly (2^1024 to 2^-1074 is 2098 bits, 632 digits, and 17 to spare).
    """
    return 650 if str(dtype) == "float64" else mpmath.mp.dps


@contextlib.contextmanager
def computing_in(dtype):
    """Keras's floatx set to float64 for float64 inputs, so that a loss class (Keras's or
    stableops's, whose dtype defaults to floatx) computes in float64 and does not round its
    inputs to float32 first; other dtypes keep the default (float32: half precision computed
    in float32, as Keras's loss classes do)."""
    import keras

    previous = keras.config.floatx()
    if str(dtype) == "float64":
        keras.config.set_floatx("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def run_accuracy(cases, availability, config, log=print) -> dict:
    """Measure every available implementation; returns the ``accuracy`` section."""
    rows = []
    for case in cases:
        spec = SPECS.get(case.name)
        impls = available_impls(case, availability)
        if spec is None or not impls:
            continue
        for dtype in config.accuracy_dtypes:
            rounded, exact, n_grid = _sample_inputs(
                spec, dtype, config.random_points, config.grid_stride
            )
            with mpmath.workdps(reference_digits(dtype)):
                reference = spec.reference_for(dtype)(*exact)
            modes = config.accuracy_half_modes if dtype in HALF_DTYPES else MODES
            for impl in impls:
                for mode in modes:
                    try:
                        with computing_in(dtype):
                            row = measure_one(case, impl, mode, rounded, exact, reference, n_grid)
                    except Exception as error:  # noqa: BLE001 - a failing contestant is a finding
                        message = f"{type(error).__name__}: {error}"[:300]
                        row = {"case": case.name, "impl": impl.name, "mode": mode, "error": message}
                    row["dtype"] = dtype
                    rows.append(row)
            log(f"  accuracy {case.name:<40} {dtype:<8} {len(impls)} impls, {len(exact[0])} inputs")
    return {"method": METHOD, "modes": list(MODES), "rows": rows}
