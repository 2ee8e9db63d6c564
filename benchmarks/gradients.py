"""Gradients against mpmath's derivatives, in float32 ULPs of each case's term scale.

The ``gradients`` section of the benchmarks, and the machinery of
``tests/test_gradient_accuracy.py``, which holds stableops to each case's budget.
The accuracy benchmark's cases (benchmarks/accuracy.py), their per-sample form
(benchmarks/cases.py, ``reduction=None``), on a fixed sample of its float32 inputs: every
``stride``-th row of its edge grid and a few seeded random rows (the same rounding, flush and
domain filter as the value benchmark). The gradient measured is the tape's gradient of the sum
of the per-sample losses (softmax and log_softmax: of ``sum(w * out)``, ``w = (1, -0.5, 0.25,
2)``, as the gradient of ``sum(softmax)`` is 0) with respect to the prediction, or the target
where the loss documents one.

The exact derivative is that of the benchmark's own mpmath reference (tests/_reference.py,
benchmarks/accuracy.py), one input element at a time, by differences at 450 bits plus the bits
by which ``|f|`` exceeds ``|x_i|``: step ``h = 2^-150 max(|x_i|, 2^-149)``, the central difference
(truncation ~2^-300 relative) and both one-sided ones. Where the one-sided slopes differ (a
kink: hinge, Huber, a tie in a max) any value between them counts as exact.

The error's unit is the float32 ULP of ``max(|exact|, scale)``, never below the smallest
normal (TF and XLA flush subnormal intermediates), ``scale`` being the largest term the exact
gradient is a sum of (``_pred_scale``): a gradient that is a difference of two terms (``q - t``,
``1 - t/p``) cannot be held to its own ULPs where they cancel, but it can to theirs. A gradient
that is a single product (MSE, Huber, ELU, ...) has ``scale = |exact|``: plain ULPs.

The budgets come from a one-off audit over the full grid and 200-2000 random rows per case,
eagerly and under XLA, after three fixes it prompted (nt_xent's pull towards the positive view,
dice/tversky outside the target near a loss of 1, l2_normalize's saturation); each budget names
its measurement. Also counted: non-finite gradients where the exact one is finite, and dead
ones (see :func:`measure`).
"""

from __future__ import annotations

import dataclasses
import functools

import mpmath
import numpy as np
import tensorflow as tf

from benchmarks import accuracy as acc
from benchmarks.cases import CASES_BY_NAME
from benchmarks.speed import in_mode
from tests import _reference as R

PREC = 450
TINY = float(np.finfo(np.float32).tiny)
MAX = float(np.finfo(np.float32).max)
EPS = float(np.finfo(np.float32).eps)
# Below this an exact gradient (and its term scale) can be a product with a factor under the
# smallest normal, which TF flushes to zero: categorical focal's (1 - q)^2 at losses below 1e-60
# (gradients ~1e-35, 1482 ULP of tiny), softmax's q at [87.7, 0, 0, 0] (-1.2e-38, given as -0).
FLUSH_ZONE = TINY * 2.0**24
W = np.array([1.0, -0.5, 0.25, 2.0])  # softmax / log_softmax cotangent
OPS = {"logsumexp", "softmax", "log_softmax", "elu", "leaky_relu"}
WEIGHTED = {"softmax", "log_softmax"}


# ---------------------------------------------------------------------------------------------
# The functions differentiated: f(t_row, p_row) of lists of mpf (a sparse label stays an int)
# ---------------------------------------------------------------------------------------------


def _elem(fn):
    return lambda t, p: fn(t[0], p[0])


def _wsum(values):
    return mpmath.fsum(mpmath.mpf(w) * v for w, v in zip(W, values))


def _batch_rows(x):
    return [list(x[i * acc.DIM:(i + 1) * acc.DIM]) for i in range(len(x) // acc.DIM)]


FN = {
    "binary_crossentropy": _elem(lambda t, p: R.mp_binary_focal_probabilities(t, p, 0)),
    "binary_crossentropy_logits": _elem(R.mp_binary_crossentropy_logits),
    "categorical_crossentropy_logits": R.mp_categorical_crossentropy_logits,
    "sparse_categorical_crossentropy_logits": lambda lab, x: R.mp_categorical_crossentropy_logits(
        R.one_hot_row(int(lab), len(x)), x
    ),
    "binary_focal_crossentropy": _elem(lambda t, p: R.mp_binary_focal_probabilities(t, p, 2)),
    "mean_squared_error": R.mp_mean_squared_error_row,
    "huber": lambda t, p: R.mp_huber_row(t, p, 1.0),
    "log_cosh": R.mp_log_cosh_row,
    "cosine_similarity": R.mp_cosine_similarity_row,
    "categorical_crossentropy": lambda t, p: R.mp_categorical_crossentropy_probabilities(
        t, p, acc.F32_TINY
    ),
    "categorical_focal_crossentropy": lambda t, p: acc.mp_categorical_focal_probabilities(
        t, p, acc.F32_TINY
    ),
    "kl_divergence": lambda t, p: R.mp_kl_divergence_row(t, p, acc.F32_TINY),
    "poisson": lambda t, p: R.mp_poisson_row(t, p, acc.F32_TINY),
    "mean_absolute_error": R.mp_mean_absolute_error_row,
    "mean_absolute_percentage_error": R.mp_mean_absolute_percentage_error_row,
    "mean_squared_logarithmic_error": R.mp_mean_squared_logarithmic_error_row,
    "hinge": R.mp_hinge_row,
    "squared_hinge": R.mp_squared_hinge_row,
    "categorical_hinge": R.mp_categorical_hinge_row,
    "dice": lambda t, p: R.mp_dice_loss(t, p, 0.0),
    "tversky": lambda t, p: R.mp_tversky_loss(t, p, 0.5, 0.5, 0.0),
    "gaussian_nll": acc.mp_gaussian_nll_log_variance,
    "gaussian_kl": acc.mp_gaussian_kl,
    "poisson_nll": _elem(acc.mp_poisson_nll_log_rate),
    "triplet_loss": lambda t, x: mpmath.fsum(acc.mp_triplet_hard(t, _batch_rows(x))),
    "contrastive_loss": lambda t, x: mpmath.fsum(acc.mp_contrastive_batch(t, _batch_rows(x))),
    "nt_xent": lambda t, x: mpmath.fsum(acc.mp_nt_xent(_batch_rows(x))),
    "ctc": lambda t, x: acc.mp_ctc(
        t, [x[f * acc.CTC_CLASSES:(f + 1) * acc.CTC_CLASSES] for f in range(acc.CTC_FRAMES)]
    ),
    "logsumexp": lambda _, x: R.mp_logsumexp(x),
    "softmax": lambda _, x: _wsum(R.mp_softmax(x)),
    "log_softmax": lambda _, x: _wsum(R.mp_log_softmax(x)),
    "elu": lambda _, x: R.mp_elu(x[0], mpmath.mpf(1)),
    "leaky_relu": lambda _, x: R.mp_leaky_relu(x[0], acc.SLOPE),
}


# ---------------------------------------------------------------------------------------------
# The term scale of each gradient (float64, the gradient's shape (rows, elements))
# ---------------------------------------------------------------------------------------------


def _safe_div(a, b):
    return np.where(a == 0, 0.0, a / np.where(b == 0, np.inf, b))


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def _norm(x):
    big = np.abs(x).max(-1, keepdims=True)
    return np.sqrt(((x / big) ** 2).sum(-1, keepdims=True)) * big


def _focal_scale(t, p):
    b = t * (1 - p) + (1 - t) * p
    lp = np.where(t == 0, 0, -t * np.log(np.maximum(p, 1e-300)))
    lq = np.where(t == 1, 0, -(1 - t) * np.log1p(-np.minimum(p, 1 - 1e-16)))
    return np.maximum.reduce([np.abs(2 * b * (1 - 2 * t) * (lp + lq)), b * b * _safe_div(t, p),
                              b * b * _safe_div(1 - t, 1 - p)])


def _categorical_focal_scale(t, p):
    # |dL/dq_k| bounded term by term (alpha = 1/4, gamma = 2, rest_i = 1 - q_i), pushed through
    # the normalization q = p / P: |dq_i/dp_j| <= (delta_ij + q_i) / P.
    pf = np.maximum(p, acc.F32_TINY)
    total = pf.sum(1, keepdims=True)
    q = pf / total
    rest = np.maximum((q[:, None, :] * (1 - np.eye(q.shape[1]))).sum(-1), acc.F32_TINY)
    cross = 0.25 * 2 * rest * t * np.abs(np.log(q))
    d = 0.25 * rest**2 * _safe_div(t, q) + cross.sum(1, keepdims=True)
    return (d + (d * q).sum(1, keepdims=True)) / total


def _msle_scale(t, p, wrt):
    lp = np.where(p >= 0, np.log1p(np.maximum(p, 0)), p)
    lt = np.log1p(np.maximum(t, 0))
    return 2 * np.maximum(np.abs(lp), np.abs(lt)) / (1 + np.maximum(wrt, 0))


def _pred_scale(name, t, p, a):
    """The scale of the gradient with respect to the prediction; ``a`` = |exact|."""
    if name == "binary_crossentropy":
        return np.maximum(_safe_div(t, p), _safe_div(1 - t, 1 - p))
    if name == "binary_crossentropy_logits":
        return np.maximum(np.abs(t), _sigmoid(p))
    if name == "binary_focal_crossentropy":
        return _focal_scale(t, p)
    if name in ("categorical_crossentropy_logits", "sparse_categorical_crossentropy_logits"):
        tt = np.eye(p.shape[1])[t.astype(int)] if t.ndim == 1 else t
        return np.maximum(_softmax(p) * tt.sum(1, keepdims=True), tt)
    if name == "categorical_crossentropy":
        ratio = np.abs(t.sum(1, keepdims=True) / p.sum(1, keepdims=True))
        return np.maximum(np.abs(_safe_div(t, p)), ratio)
    if name == "categorical_focal_crossentropy":
        return _categorical_focal_scale(t, p)
    if name == "poisson":
        return np.maximum(1.0, np.abs(_safe_div(t, p)))
    if name == "mean_squared_logarithmic_error":
        return _msle_scale(t, p, p)
    if name == "squared_hinge":
        return 2 * np.maximum(1.0, np.abs(t * p))
    if name in ("dice", "tversky"):  # max(2I/D^2, 2 t_k/D)
        d = (t.sum(1) + p.sum(1))[:, None]
        i = (t * p).sum(1)[:, None]
        return np.nan_to_num(np.maximum(2 * i / d**2, 2 * t / d))
    if name == "cosine_similarity":  # orthogonal to p, of norm sin(angle) / |p|
        return np.ones_like(p) / _norm(p)
    if name == "gaussian_nll":  # mean: plain; log-variance: max(1, (y - mu)^2 e^-s) / 2
        sq = (t[:, 0] - p[:, 0]) ** 2 * np.exp(-p[:, 1])
        return np.stack([a[:, 0], np.maximum(1.0, sq) / 2], -1)
    if name == "gaussian_kl":
        return np.stack([a[:, 0], np.maximum(np.exp(p[:, 1]), 1.0) / 2], -1)
    if name == "poisson_nll":
        return np.maximum(np.exp(p), np.abs(t))
    if name == "softmax":
        q = _softmax(p)
        return q * (np.abs(W) + (np.abs(W) * q).sum(1, keepdims=True))
    if name == "log_softmax":
        return np.maximum(np.abs(W), _softmax(p) * abs(W.sum()))
    if name == "nt_xent":  # scale-invariant: 1 / (temperature |x_i|) per embedding
        e = p.reshape(len(p), -1, acc.DIM)
        return np.broadcast_to(10.0 / _norm(e), e.shape).reshape(p.shape)
    if name == "ctc":  # q - occupancy, both in [0, 1]: the larger is at most q + |exact|
        q = _softmax(p.reshape(-1, acc.CTC_CLASSES)).reshape(p.shape)
        return q + a
    if name in ("triplet_loss", "contrastive_loss"):  # the batch's largest entry
        return a.max(axis=1, keepdims=True) * np.ones_like(a)
    return a  # a single product: plain ULPs


def _target_scale(name, t, p, a):
    """The scale of the gradient with respect to the target."""
    if name == "kl_divergence":  # log(t/p) + 1
        return np.maximum.reduce([np.abs(np.log(np.maximum(t, 1e-300))),
                                  np.abs(np.log(np.clip(p, acc.F32_TINY, 1))), np.ones_like(t)])
    if name == "mean_squared_logarithmic_error":
        return _msle_scale(t, p, t)
    if name == "poisson":
        return np.abs(np.log(np.maximum(p, acc.F32_TINY)))
    if name == "cosine_similarity":
        return np.ones_like(t) / _norm(t)
    return a


# ---------------------------------------------------------------------------------------------
# The exact derivative
# ---------------------------------------------------------------------------------------------


def _call(f, t, x):
    try:
        v = f(t, x)
    except (ValueError, ZeroDivisionError, TypeError):
        return None
    return v if mpmath.isfinite(v) else None


def _derivative(f, t_row, x_row, i, wrt_target, value_at):
    """(lo, hi) of d f / d row[i]: lo == hi where f is differentiable; None where undefined.

    ``value_at(prec)`` is f at the row itself, at ``prec`` bits (the same for every i).
    """
    base = list(t_row if wrt_target else x_row)
    xi = base[i]
    floor_x = max(abs(xi), mpmath.ldexp(1, -149))
    h = mpmath.ldexp(floor_x, -150)

    def at(v):
        row = list(base)
        row[i] = v
        return _call(f, row, x_row) if wrt_target else _call(f, t_row, row)

    f0 = value_at(PREC)
    if f0 is None:
        return None
    # f(x +- h) - f(x) must survive the working precision: add the bits by which |f| exceeds
    # |x_i| (a 0 logit in a row of 1e38s: f ~ 2^126, h ~ 2^-299, 275 more bits).
    extra = int(max(0, mpmath.ceil(mpmath.log(abs(f0) + mpmath.ldexp(1, -300), 2)
                                   - mpmath.log(floor_x, 2))))
    prec = PREC + extra + 8
    f0 = value_at(prec)
    with mpmath.workprec(prec):
        fp, fm = at(xi + h), at(xi - h)
        if f0 is None:
            return None
        dp = None if fp is None else (fp - f0) / h
        dm = None if fm is None else (f0 - fm) / h
        if dp is None and dm is None:
            return None
        if dp is None or dm is None:
            d = dp if dm is None else dm
            return d, d
        # A smooth f: dp - dm = h f'' ~ 2^-150 of the slope. (A relative test: the audit's
        # absolute allowance, 2^60 h, took the ties of categorical hinge's maximum at 8.5e37 for
        # smooth points with slope 1/2.)
        if abs(dp - dm) <= mpmath.ldexp(abs(dp) + abs(dm), -60):
            d = (fp - fm) / (2 * h)
            return d, d
        return min(dp, dm), max(dp, dm)


def _value_at(f, t_row, x_row):
    """f(t_row, x_row) at a given precision, each precision computed once."""

    @functools.lru_cache(maxsize=None)
    def value_at(prec):
        with mpmath.workprec(prec):
            return _call(f, t_row, x_row)

    return value_at


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GradCase:
    name: str
    budget: float  # float32 ULPs of max(|exact|, scale)
    wrt: str = "pred"
    stride: int = 1  # every stride-th grid row
    random: int = 32  # seeded random rows

    @property
    def id(self):
        return self.name if self.wrt == "pred" else f"{self.name}-target"


# Each comment: the audit's worst over the full grid and its random rows ("over N": N gradient
# elements), the same eagerly and under XLA, after the fixes; where this module's rules differ
# (kinks, exclusions) the worst measured with them over the same rows. Each budget leaves room
# for another CPU's exp and log1p (the value budgets moved by up to 2 ULP between ISAs).
CASES = [
    # 1.8 over 2094 (1 - t/p and t/p - 1 cancel near p = t).
    GradCase("binary_crossentropy", 3),
    # 1.8 over 2220 (sigmoid(x) - t).
    GradCase("binary_crossentropy_logits", 3),
    # 2.9 over 2094.
    GradCase("binary_focal_crossentropy", 4),
    # 2.2 over 10784 (softmax - t).
    GradCase("categorical_crossentropy_logits", 3, stride=20),
    # 2.0 over 10784.
    GradCase("sparse_categorical_crossentropy_logits", 3, stride=20),
    # 3.1 over 4804; 3.09 over the 4780 off the clip's edge (see _excluded_rows).
    GradCase("categorical_crossentropy", 4, stride=4),
    # 1482 over 4804 from rows with losses below 1e-60 (FLUSH_ZONE); 1.54 over the 4724 others.
    GradCase("categorical_focal_crossentropy", 3, stride=4),
    # 1.2 over 4804.
    GradCase("kl_divergence", 2, stride=4),
    # 0.97 over 2929 (t = 0 left out: the exact slope is -inf, stableops's convention is 0).
    GradCase("kl_divergence", 2, "target", stride=4),
    # 0.74 over 2104.
    GradCase("poisson", 2),
    # 0.94 over 1104.
    GradCase("poisson", 2, "target"),
    # 0.85 over 2036.
    GradCase("poisson_nll", 2),
    # 0.5 over 2219.
    GradCase("mean_squared_error", 1),
    # 0.5 over 1219.
    GradCase("mean_squared_error", 1, "target"),
    # 0.5 over 2228.
    GradCase("huber", 1, stride=2),
    # 0.5 over 1228.
    GradCase("huber", 1, "target", stride=2),
    # 3.6 over 2228.
    GradCase("log_cosh", 4, stride=2),
    # 3.1 over 1228.
    GradCase("log_cosh", 4, "target", stride=2),
    # 0 over 2228 (its sign, or a subgradient at p = t): 0.5, correctly rounded.
    GradCase("mean_absolute_error", 0.5, stride=2),
    # 0 over 1228.
    GradCase("mean_absolute_error", 0.5, "target", stride=2),
    # 1.3 over 2283.
    GradCase("mean_absolute_percentage_error", 2, stride=2),
    # 1.6 over 2156.
    GradCase("mean_squared_logarithmic_error", 2),
    # 3.2 over 1156.
    GradCase("mean_squared_logarithmic_error", 4, "target"),
    # 0 over 2106.
    GradCase("hinge", 0.5),
    # 0.5 over 2102.
    GradCase("squared_hinge", 1),
    # 2.8e6 over 10784 at ties of the maximum the audit took for smooth points; 0 with ties
    # counted as kinks (see _derivative).
    GradCase("categorical_hinge", 1, stride=20),
    # 1.0 over 6087 (1/|p|: the gradient's exactly-zero components).
    GradCase("cosine_similarity", 2, stride=10),
    # 1.0 over 6087.
    GradCase("cosine_similarity", 2, "target", stride=10),
    # 4.0 over 2198 (the log-variance's 1 - (y - mu)^2 e^-s cancels at the optimum).
    GradCase("gaussian_nll", 5, stride=2),
    # 2.8 over 1099.
    GradCase("gaussian_nll", 4, "target", stride=2),
    # 1.7 over 2112 (exp(s)/2 - 1/2 outside |s| < 2^-8, a few ULP of 1/2, documented).
    GradCase("gaussian_kl", 3),
    # 2.5 over the audit's 480 batches of 8x4 (15328 elements), 1.7e7 before the fix.
    GradCase("dice", 4, stride=5, random=12),
    # 3.0 over 480 batches, 1.7e7 before the fix.
    GradCase("tversky", 4, stride=5, random=12),
    # 6.6 over 343 batches of 8x4 (10976 elements), 5.1e6 before the fix.
    GradCase("nt_xent", 8, stride=8, random=16),
    # 4.3 over the audit's 560 batches of 8x4 (17920 elements).
    GradCase("contrastive_loss", 6, stride=12, random=8),
    # 4.2e6 over 18400 at ties and subnormal differences (see _excluded_rows, _measure); 1.77
    # over the 10691 others (575 batches).
    GradCase("triplet_loss", 3, stride=12, random=8),
    # 0.5 over 32833 (the grid and 300 random rows; rows with logits beyond 2^30 apart, see
    # _excluded_rows), 8.5e37 before the forward-backward of its own.
    GradCase("ctc", 2, stride=10, random=16),
    # 2.3 over 5696.
    GradCase("logsumexp", 3, stride=10),
    # 2.3 over 5696 (q_i (w_i - sum w q)).
    GradCase("softmax", 3, stride=10),
    # 2.4 over 5696 (w_i - q_i sum w).
    GradCase("log_softmax", 3, stride=10),
    # 0.9 over 2055.
    GradCase("elu", 1),
    # 0.2 over 2055.
    GradCase("leaky_relu", 1),
]


def _excluded_rows(case, t, p):
    """Rows apart from the budget (still checked for non-finite gradients)."""
    if case.name == "categorical_crossentropy":
        # The clip's edge: p = [2^-126, 0, 0, 1] gives -8.5e37 (the quotient of the entry at the
        # smallest normal), where the reference clips q = p / sum(p), just below it, flat.
        return ((p > 0) & (p < 2 * TINY * p.sum(1, keepdims=True))).any(1)
    if case.name == "triplet_loss":
        # Batches of entries near the smallest normal have subnormal differences (flushed).
        return np.abs(p).max(1) < 2.0**-100
    if case.name == "ctc":
        # Logits beyond 2^30: float64 rounds a log-probability of that size (and an alignment's
        # sum of them) by 2^-23 and more, a float32 ULP of the posterior; at the grid's 9.2e18
        # alignments tied to within their fractions are split by that rounding (1.2e8 ULP).
        return np.abs(p).max(1) > 2.0**30
    return np.zeros(len(p), dtype=bool)


# ---------------------------------------------------------------------------------------------
# Sample and exact derivatives (once per case and worker)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    rounded: list  # the inputs, float32 (labels int)
    t: np.ndarray | None  # exact target (rows, elements) or labels, float64
    p: np.ndarray  # exact prediction or op input (rows, elements), float64
    lo: np.ndarray  # exact derivative interval (rows, elements)
    hi: np.ndarray
    defined: np.ndarray  # finite and within float32's range
    scale: np.ndarray
    excluded: np.ndarray  # (rows,)


# Losses whose probabilities below the smallest normal are floored there with the gradient passed
# straight through (the loss's convention): the reference's floor is flat below it, so the exact
# derivative at such an entry is taken as the unfloored formula's at the floor.
STRAIGHT_THROUGH_FLOORS = {
    "categorical_focal_crossentropy": lambda t, p: acc.mp_categorical_focal_probabilities(t, p, 0),
}


def _floored_straight_through(f, base_row):
    """``f`` with each entry of ``base_row`` below the floor moved up to it by a fixed shift: the
    floored value at the row itself, and ``f``'s slope at the floor along that entry."""
    low = mpmath.mpf(acc.F32_TINY)
    shifts = [low - v if v < low else mpmath.mpf(0) for v in base_row]
    return lambda t, p: f(t, [v + shift for v, shift in zip(p, shifts)])


@functools.lru_cache(maxsize=None)
def sample_of(case: GradCase) -> Sample:
    spec = acc.SPECS[case.name]
    rounded, exact, _ = acc._sample_inputs(spec, "float32", case.random, case.stride)
    k = len(exact[0])
    if case.name in OPS:
        t, p = None, exact[0].reshape(k, -1)
    else:
        t = exact[0] if exact[0].ndim == 1 else exact[0].reshape(k, -1)
        p = exact[1].reshape(k, -1)
    wrt_target = case.wrt == "target"
    w = t if wrt_target else p
    f = FN[case.name]
    lo = np.full(w.shape, np.nan)
    hi = np.full(w.shape, np.nan)
    with mpmath.workprec(PREC):
        for r in range(k):
            if t is None:
                t_row = None
            elif t.ndim == 1:
                t_row = int(t[r])
            else:
                t_row = [mpmath.mpf(float(v)) for v in t[r]]
            p_row = [mpmath.mpf(float(v)) for v in p[r]]
            f_row = f
            if case.name in STRAIGHT_THROUGH_FLOORS and not wrt_target:
                f_row = _floored_straight_through(STRAIGHT_THROUGH_FLOORS[case.name], p_row)
            value_at = _value_at(f_row, t_row, p_row)
            for i in range(w.shape[1]):
                d = _derivative(f_row, t_row, p_row, i, wrt_target, value_at)
                if d is not None:
                    lo[r, i], hi[r, i] = float(d[0]), float(d[1])
    with np.errstate(all="ignore"):
        defined = np.isfinite(lo) & np.isfinite(hi) & (np.abs(lo) <= MAX) & (np.abs(hi) <= MAX)
        if wrt_target and case.name == "kl_divergence":
            defined &= t != 0  # the exact slope is -inf; stableops's convention is 0
        a = np.abs(np.where(np.isfinite(lo), lo, 0.0))
        scale = (_target_scale if wrt_target else _pred_scale)(case.name, t, p, a)
    scale = np.broadcast_to(np.nan_to_num(scale, nan=0.0, posinf=MAX), w.shape)
    return Sample(rounded, t, p, lo, hi, defined, scale, _excluded_rows(case, t, p))


def tape_gradient(case: GradCase, impl: str, mode: str, sample: Sample) -> np.ndarray:
    """The tape's gradient of implementation ``impl`` in ``mode`` (``eager``, ``function`` or
    ``xla``), float64 (rows, elements)."""
    bench = CASES_BY_NAME[case.name]
    fn = bench.impl(impl).build(True)
    index = 0 if (case.name in OPS or case.wrt == "target") else bench.wrt
    weights = tf.constant(W, tf.float32)

    def grad(*inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs[index])
            value = fn(*inputs)
            total = tf.reduce_sum(value * weights if case.name in WEIGHTED else value)
        return tape.gradient(total, inputs[index])

    if acc.SPECS[case.name].batched:  # one call per batch; traced once
        rows = [[tf.convert_to_tensor(a[r]) for a in sample.rounded]
                for r in range(len(sample.p))]
        compiled = in_mode(grad, mode)
        out = np.stack([compiled(*row).numpy() for row in rows])
    else:
        inputs = [tf.convert_to_tensor(a) for a in sample.rounded]
        out = in_mode(grad, mode)(*inputs).numpy()
    return out.astype(np.float64).reshape(sample.lo.shape)


def _ulp(v):
    v = np.abs(v)
    _, e = np.frexp(np.where(v == 0, 1.0, v))
    return np.where(v < TINY, TINY, np.ldexp(1.0, e - 24))


def describe(sample, mask, got, want, errors=None):
    r, i = np.argwhere(mask)[0]
    t = None if sample.t is None else np.asarray(sample.t[r]).tolist()
    extra = "" if errors is None else f", {errors[r, i]:.3g} ULP"
    return (f"{int(mask.sum())} elements, first at row {r} element {i}: t={t} "
            f"p={sample.p[r].tolist()} got={got[r, i]!r} want={want[r, i]!r} "
            f"scale={sample.scale[r, i]:.3g}{extra}")


def measure(case: GradCase, sample: Sample, got: np.ndarray) -> dict:
    """The error of every element and the masks the test asserts on."""
    lo, hi, scale, defined = sample.lo, sample.hi, sample.scale, sample.defined
    kink = lo != hi
    with np.errstate(all="ignore"):
        nearest = np.clip(got, lo, hi)  # the nearest subgradient at a kink
        want = np.where(np.isfinite(nearest), nearest, lo)
        errors = np.abs(got - want) / _ulp(np.maximum(np.abs(want), scale))
    checked = defined & ~sample.excluded[:, None]
    # Where the exact gradient and its scale are within 2^24 of tiny, a factor can flush (an
    # exact 0 stays checked: the tape's must be 0 to within the budget's multiple of tiny).
    magnitude = np.maximum(np.abs(lo), scale)
    checked &= (magnitude == 0) | (magnitude >= FLUSH_ZONE)
    if case.name == "triplet_loss":
        # Ties of several hardest positives or negatives (the grid's symmetric batches): the
        # tape takes a subgradient of each hinge term, and their sum need not lie between the
        # sum's one-sided slopes along one coordinate (-2.12 against [-2, -0.62]).
        checked &= ~kink
    # Dead: an exact zero where the exact gradient is not at a kink, is above FLUSH_ZONE, and is
    # more than 4 eps of its term scale (smaller ones round away in the terms' sum: q - t with
    # q = 1 - 1e-19 in a confident row; the budget covers them).
    dead = checked & ~kink & (got == 0) & (np.abs(lo) > 4 * EPS * np.maximum(scale, np.abs(lo)))
    return {
        "want": want,
        "errors": errors,
        "checked": checked,
        "nonfinite": defined & ~np.isfinite(got),
        "dead": dead,
        "over": checked & ~(errors <= case.budget),
        "worst": float(np.nanmax(np.where(checked, errors, 0.0))),
    }


# ---------------------------------------------------------------------------------------------
# The benchmark section
# ---------------------------------------------------------------------------------------------

METHOD = (
    "max |gradient - d(mpmath reference)| in float32 ULPs of max(|exact|, the largest term of "
    "the gradient's formula), by differences at 450+ bits; a kink's one-sided slopes and "
    "anything between them count as exact; nonfinite: non-finite where the exact gradient is "
    "finite; dead: exactly 0 where the exact one is not (away from kinks and flushed products)"
)
IMPLS = ("stableops", "keras")


def _row(case: GradCase, impl: str, mode: str, sample: Sample) -> dict:
    got = tape_gradient(case, impl, mode, sample)
    m = measure(case, sample, got)
    return {
        "worst_ulp": m["worst"],
        "checked": int(m["checked"].sum()),
        "nonfinite": int(m["nonfinite"].sum()),
        "dead": int(m["dead"].sum()),
        "over_budget": int(m["over"].sum()),
    }


def run_gradients(cases, availability, config, log=print) -> dict:
    """Measure stableops's and Keras's gradients of every case; returns the ``gradients`` section.

    The sample of a case is thinned by the preset (``gradient_stride_scale``, at most
    ``gradient_random`` random rows); the full preset measures the test module's sample.
    """
    from benchmarks.cases import available_impls

    selected = {c.name for c in cases}
    rows = []
    for case in CASES:
        if case.name not in selected:
            continue
        impls = [i.name for i in available_impls(CASES_BY_NAME[case.name], availability)]
        impls = [name for name in IMPLS if name in impls]
        if "stableops" not in impls:
            continue
        thinned = dataclasses.replace(
            case,
            stride=case.stride * config.gradient_stride_scale,
            random=min(case.random, config.gradient_random),
        )
        sample = sample_of(thinned)
        for impl in impls:
            for mode in acc.MODES:
                row = {"case": case.name, "wrt": case.wrt, "impl": impl, "mode": mode,
                       "budget": case.budget}
                try:
                    row.update(_row(thinned, impl, mode, sample))
                except Exception as error:  # noqa: BLE001 - a failing contestant is a finding
                    row["error"] = f"{type(error).__name__}: {error}"[:300]
                rows.append(row)
        log(f"  gradients {case.id:<40} {len(impls)} impls, {sample.lo.size} elements")
    return {"method": METHOD, "modes": list(acc.MODES), "rows": rows}
