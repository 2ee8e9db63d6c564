"""mpmath references for every op, and error measured in ULPs of a dtype.

References are computed in 60-digit arithmetic from the mathematical
definition, never from the float64 formula under test (which shares its
cancellation). Inputs are taken exactly: every float16/bfloat16/float32 value
is exactly a float64, which is exactly an mpf.

Each op family owns one section below; add references to your own section.
"""

from __future__ import annotations

import math

import ml_dtypes
import mpmath
import numpy as np

mpmath.mp.dps = 60
mp = mpmath.mp
INF = mpmath.inf
NAN = mpmath.nan


def to_numpy_dtype(dtype):
    """A NumPy dtype (ml_dtypes for bfloat16) from a name, tf.DType or NumPy dtype."""
    name = getattr(dtype, "name", dtype)
    name = getattr(name, "name", name)
    return np.dtype(ml_dtypes.bfloat16) if str(name) == "bfloat16" else np.dtype(str(name))


def mpf(x):
    """An exact mpf of one float (any width); inf and nan map to mpmath's."""
    x = float(x)
    if math.isnan(x):
        return NAN
    return mpmath.mpf(x)


def ulp_of(reference, dtype) -> mpmath.mpf:
    """The spacing of ``dtype`` at ``reference`` (at least the smallest normal).

    TF flushes subnormals to zero, so below the smallest normal ``tiny`` the
    unit is ``tiny`` itself: a flushed result counts as at most 1 ULP off.
    """
    info = ml_dtypes.finfo(to_numpy_dtype(dtype))
    tiny = mpf(info.tiny)
    magnitude = abs(reference)
    if magnitude < tiny:
        return tiny
    exponent = int(mpmath.floor(mpmath.log(magnitude, 2)))
    return mpmath.ldexp(1, exponent - int(info.nmant))


def ulp_error(actual, reference, dtype) -> np.ndarray:
    """Elementwise error of ``actual`` against mpf ``reference`` in ULPs of ``dtype``.

    ``actual`` and ``reference`` are same-shape arrays (reference of mpf).
    NaN against NaN and an infinity against the same infinity are exact (0);
    a reference beyond the dtype's range expects the same-signed infinity;
    any other mismatch of finiteness is ``inf`` ULPs.
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=object)
    largest = mpf(ml_dtypes.finfo(to_numpy_dtype(dtype)).max)
    # Round to nearest: from max + ulp(max)/2 up (the tie rounds to even,
    # away from max's odd significand) the value rounds to infinity.
    overflow = largest + ulp_of(largest, dtype) / 2
    errors = np.empty(actual.shape, dtype=np.float64)
    for index in np.ndindex(actual.shape):
        a, r = actual[index], reference[index]
        if mpmath.isnan(r) or math.isnan(a):
            errors[index] = 0.0 if (mpmath.isnan(r) and math.isnan(a)) else math.inf
            continue
        if abs(r) >= overflow:
            r = INF if r > 0 else -INF  # rounds to infinity in this dtype
        if mpmath.isinf(r) or math.isinf(a):
            errors[index] = 0.0 if mpf(a) == r else math.inf
            continue
        errors[index] = float(abs(mpf(a) - r) / ulp_of(r, dtype))
    return errors


def reference_array(fn, *arrays) -> np.ndarray:
    """Apply an mpmath function elementwise over broadcast float arrays (object array out)."""
    broadcast = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in arrays])
    out = np.empty(broadcast[0].shape, dtype=object)
    for index in np.ndindex(out.shape):
        out[index] = fn(*[mpf(a[index]) for a in broadcast])
    return out


def budget_for(table, dtype):
    """``table[dtype]``, where float16 and bfloat16 share the key ``"half"``."""
    name = to_numpy_dtype(dtype).name
    return table["half" if name in ("float16", "bfloat16") else name]


def assert_ulp_within(actual, reference, dtype, budget, *, context=""):
    """Assert every element of ``actual`` is within ``budget`` ULPs of ``reference``."""
    errors = ulp_error(actual, reference, dtype)
    worst = int(np.argmax(errors)) if errors.size else 0
    assert errors.size == 0 or errors.flat[worst] <= budget, (
        f"{context} {errors.flat[worst]:.3g} ULP > budget {budget} in {to_numpy_dtype(dtype)} "
        f"at flat index {worst}: got {np.asarray(actual, dtype=np.float64).flat[worst]!r}, "
        f"want {mpmath.nstr(np.asarray(reference, dtype=object).flat[worst], 20)}"
    )


# ----------------------------------------------------------------------------
# log/exp family (stableops/ops/_logexp.py, _softmax.py)
# ----------------------------------------------------------------------------


def _mp_max_and_log1p(row):
    """``(top, log1p(sum of exp(v - top) over all but one maximum))`` of a finite-max row.

    Kept apart so that callers add ``top`` last: a tail far below 10**-60
    relative to ``top`` (``log_softmax`` at the maximum of ``[155, 9.6]``,
    ``-4e-64``) is not lost in the 60 digits.
    """
    finite = [v for v in row if v != -INF]
    top = max(finite)
    others = list(finite)
    others.remove(top)
    return top, mpmath.log1p(mpmath.fsum(mpmath.exp(v - top) for v in others))


def mp_logsumexp(row):
    """log(sum(exp(row))) of a sequence of mpf; -inf for an empty or all -inf row."""
    row = list(row)
    if any(mpmath.isnan(v) for v in row):
        return NAN
    if any(v == INF for v in row):
        return INF
    if all(v == -INF for v in row):
        return -INF
    top, tail = _mp_max_and_log1p(row)
    return top + tail


def mp_log_softmax(row):
    """``x - logsumexp(x)`` of a sequence of mpf (list); ``-inf`` where the probability is 0.

    All ``-inf`` (empty) rows give ``-inf``; ``k`` entries at ``+inf`` give ``-log k``
    there and ``-inf`` elsewhere.
    """
    row = list(row)
    if any(mpmath.isnan(v) for v in row):
        return [NAN] * len(row)
    if any(v == INF for v in row):
        k = sum(1 for v in row if v == INF)
        return [-mpmath.log(k) if v == INF else -INF for v in row]
    if all(v == -INF for v in row):
        return [-INF] * len(row)
    top, tail = _mp_max_and_log1p(row)
    return [(v - top) - tail for v in row]


def mp_softmax(row):
    """Softmax of a sequence of mpf (list); all zeros for an empty or all -inf row."""
    return [mpmath.exp(v) if not mpmath.isnan(v) else NAN for v in mp_log_softmax(row)]


def mp_logaddexp(x, y):
    """log(exp(x) + exp(y))."""
    return mp_logsumexp([x, y])


def mp_softplus(x):
    """log(1 + exp(x)), via the exact identity x + log1p(exp(-x)) for x > 0."""
    if mpmath.isnan(x):
        return NAN
    if x > 0:
        return x + mpmath.log1p(mpmath.exp(-x))
    return mpmath.log1p(mpmath.exp(x))


def mp_log_sigmoid(x):
    """log(1 / (1 + exp(-x))) = -softplus(-x)."""
    return -mp_softplus(-x)


def mp_sigmoid(x):
    """1 / (1 + exp(-x))."""
    if mpmath.isnan(x):
        return NAN
    return mpmath.exp(-mp_softplus(-x))


def mp_log1mexp(x):
    """log(1 - exp(-|x|)) (TFP's convention); -inf at 0."""
    if mpmath.isnan(x):
        return NAN
    a = abs(x)
    if a == 0:
        return -INF
    if a > 1:  # log1p keeps the tiny result (-exp(-a)) that log(1 - 10**-70) would lose
        return mpmath.log1p(-mpmath.exp(-a))
    return mpmath.log(-mpmath.expm1(-a))


def mp_softplus_inverse(x):
    """log(exp(x) - 1) for x > 0 (-inf at 0, nan below), via x + log(-expm1(-x))."""
    if mpmath.isnan(x) or x < 0:
        return NAN
    if x == 0:
        return -INF
    if x == INF:
        return INF
    return x + mp_log1mexp(x)


def mp_log1mexp_derivative(x):
    """d/dx log(1 - exp(-|x|)) = sign(x) / expm1(|x|) (the sign of a zero is not kept by mpf)."""
    if mpmath.isnan(x):
        return NAN
    if x == 0:
        return INF  # +0; the op gives -inf at -0 (tested separately)
    return mpmath.sign(x) / mpmath.expm1(abs(x))


def mp_softplus_inverse_derivative(x):
    """d/dx log(expm1(x)) = 1 / (1 - exp(-x)); +inf at 0, nan below 0 (outside the domain)."""
    if mpmath.isnan(x) or x < 0:
        return NAN
    if x == 0:
        return INF
    return 1 / -mpmath.expm1(-x)


def mp_log_cosh(x):
    """log(cosh(x)) = log1p(2 sinh(x/2)^2): exact in 60 digits for tiny and huge x."""
    if mpmath.isnan(x):
        return NAN
    a = abs(x)
    if a == INF:
        return INF
    if a > 50:
        return a - mpmath.log(2) + mpmath.log1p(mpmath.exp(-2 * a))
    return mpmath.log1p(2 * mpmath.sinh(a / 2) ** 2)


# ----------------------------------------------------------------------------
# safe math (stableops/ops/_safe_math.py)
# ----------------------------------------------------------------------------


def mp_safe_divide(x, y, fill):
    """x / y; ``fill`` where y == 0 (x not NaN); NaN if x or y is NaN."""
    if mpmath.isnan(x) or mpmath.isnan(y):
        return NAN
    if y == 0:
        return mpf(fill)
    if mpmath.isinf(x) and mpmath.isinf(y):
        return NAN
    return x / y


def mp_log(x):
    """Natural log with log(0) = -inf, log(inf) = inf, NaN below 0."""
    if mpmath.isnan(x) or x < 0:
        return NAN
    if x == 0:
        return -INF
    return mpmath.log(x)


def mp_sqrt(x):
    if mpmath.isnan(x) or x < 0:
        return NAN
    return mpmath.sqrt(x)


def mp_norm(row):
    """Euclidean norm of a sequence of mpf (inf with an infinite entry, NaN with a NaN)."""
    row = list(row)
    if any(mpmath.isnan(v) for v in row):
        return NAN
    if any(mpmath.isinf(v) for v in row):
        return INF
    return mpmath.sqrt(mpmath.fsum(v * v for v in row))


def mp_l2_normalize(row):
    """row / ||row||; zeros for the zero row; the limit direction for infinite entries."""
    row = list(row)
    if any(mpmath.isnan(v) for v in row):
        return [NAN] * len(row)
    infinite = [v for v in row if mpmath.isinf(v)]
    if infinite:
        k = mpmath.sqrt(len(infinite))
        return [mpmath.sign(v) / k if mpmath.isinf(v) else mpmath.mpf(0) for v in row]
    norm = mp_norm(row)
    if norm == 0:
        return [mpmath.mpf(0)] * len(row)
    return [v / norm for v in row]


def mp_xlogy(x, y):
    """x log y with 0 log y = 0 for every y but NaN (0 log 0 = 0)."""
    if mpmath.isnan(x) or mpmath.isnan(y):
        return NAN
    if x == 0:
        return mpmath.mpf(0)
    return x * mp_log(y)


def mp_xlogy_grad(x, y, tiny):
    """(d/dx, d/dy) of xlogy under the finite-slope convention: y taken as max(y, tiny)."""
    y_eff = max(y, mpf(tiny))
    return mpmath.log(y_eff), (mpmath.mpf(0) if x == 0 else x / y_eff)


# ----------------------------------------------------------------------------
# activations (stableops/ops/_activations.py)
# ----------------------------------------------------------------------------


def mp_elu(x, alpha):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (alpha an mpf)."""
    if mpmath.isnan(x):
        return NAN
    return x if x > 0 else alpha * mpmath.expm1(x)


def mp_leaky_relu(x, negative_slope):
    """x for x > 0, negative_slope * x otherwise."""
    if mpmath.isnan(x):
        return NAN
    return x if x > 0 else negative_slope * x


# ----------------------------------------------------------------------------
# cross-entropies (stableops/ops/_crossentropy.py) and losses
# ----------------------------------------------------------------------------


def mp_binary_crossentropy_logits(z, x):
    """softplus(x) - x z = z softplus(-x) + (1 - z) softplus(x), with 0 * inf = 0."""
    if mpmath.isnan(z) or mpmath.isnan(x):
        return NAN
    terms = [(z, mp_softplus(-x)), (1 - z, mp_softplus(x))]
    return mpmath.fsum(w * v for w, v in terms if w != 0)


def mp_binary_crossentropy_probabilities(z, p, low, high):
    """-(z log max(p, low) + (1 - z) log(1 - min(p, high))): each log clipped only at infinity."""
    if mpmath.isnan(z) or mpmath.isnan(p):
        return NAN
    return -(z * mpmath.log(max(p, mpf(low))) + (1 - z) * mpmath.log1p(-min(p, mpf(high))))


def mp_categorical_crossentropy_logits(z_row, x_row):
    """-sum z_i log_softmax(x)_i with 0 * log 0 = 0 (NaN anywhere gives NaN)."""
    z_row, log_p = list(z_row), mp_log_softmax(x_row)
    if any(mpmath.isnan(v) for v in z_row + log_p):
        return NAN
    return -mpmath.fsum(z * v for z, v in zip(z_row, log_p) if z != 0)


def mp_categorical_crossentropy_probabilities(z_row, p_row, low):
    """-sum z_i log(clip(p_i / sum(p), low, 1)); an all-zero row is not divided."""
    z_row, p_row = list(z_row), list(p_row)
    if any(mpmath.isnan(v) for v in z_row + p_row):
        return NAN
    total = mpmath.fsum(p_row)
    if total != 0:
        p_row = [v / total for v in p_row]
    clipped = [min(max(v, mpf(low)), mpmath.mpf(1)) for v in p_row]
    return -mpmath.fsum(z * mpmath.log(q) for z, q in zip(z_row, clipped))


def one_hot_row(label, num_classes):
    """A one-hot list of mpf (for the sparse cross-entropy references)."""
    return [mpmath.mpf(1) if i == label else mpmath.mpf(0) for i in range(num_classes)]


def reference_cross_entropy_rows(fn, targets, outputs, *args):
    """Apply a row reference (z_row, x_row, *args) over 2-D arrays (object array out)."""
    targets = np.asarray(targets, dtype=np.float64)
    outputs = np.asarray(outputs, dtype=np.float64)
    out = np.empty(outputs.shape[0], dtype=object)
    for i in range(outputs.shape[0]):
        out[i] = fn([mpf(v) for v in targets[i]], [mpf(v) for v in outputs[i]], *args)
    return out


# -- cross-entropy family losses (stableops/losses/_binary.py, _categorical.py, _distribution.py) --


def mp_binary_focal_logits(z, x, gamma, alpha=None):
    """(1 - p_t)^gamma * bce(z, x), 1 - p_t = z sigmoid(-x) + (1 - z) sigmoid(x);
    times alpha z + (1 - alpha)(1 - z) when alpha is given (class balancing)."""
    if mpmath.isnan(z) or mpmath.isnan(x):
        return NAN
    base = z * mp_sigmoid(-x) + (1 - z) * mp_sigmoid(x)
    value = mpmath.power(base, mpf(gamma)) * mp_binary_crossentropy_logits(z, x)
    if alpha is not None:
        value *= mpf(alpha) * z + (1 - mpf(alpha)) * (1 - z)
    return value


def mp_binary_focal_probabilities(z, p, gamma):
    """(z (1 - p) + (1 - z) p)^gamma * -(z log p + (1 - z) log(1 - p)) (0 log 0 = 0)."""
    if mpmath.isnan(z) or mpmath.isnan(p):
        return NAN
    base = z * (1 - p) + (1 - z) * p
    terms = [(z, p), (1 - z, 1 - p)]
    bce = -mpmath.fsum(w * mpmath.log(v) for w, v in terms if w != 0)
    return mpmath.power(base, mpf(gamma)) * bce


def mp_categorical_focal_logits(z_row, x_row, gamma, alpha):
    """sum alpha (1 - p_i)^gamma (-z_i log p_i), p = softmax(x); 1 - p_i as the others' sum."""
    z_row, x_row = list(z_row), list(x_row)
    log_p = mp_log_softmax(x_row)
    p = [mpmath.exp(v) for v in log_p]
    total = mpmath.mpf(0)
    for i, (z, lp) in enumerate(zip(z_row, log_p)):
        if z == 0:
            continue
        rest = mpmath.fsum(v for j, v in enumerate(p) if j != i)
        total += mpf(alpha) * mpmath.power(rest, mpf(gamma)) * (-z * lp)
    return total


def mp_kl_divergence_row(t_row, p_row, low):
    """sum t log(t / p) with t clipped to [0, 1], p to [low, 1]; 0 where t = 0."""
    total = mpmath.mpf(0)
    for t, p in zip(t_row, p_row):
        t = min(max(t, mpmath.mpf(0)), mpmath.mpf(1))
        p = min(max(p, mpf(low)), mpmath.mpf(1))
        if t != 0:
            total += t * mpmath.log(t / p)
    return total


def mp_poisson_row(t_row, p_row, low):
    """mean(p - t log max(p, low)), 0 log(.) = 0."""
    terms = [p - (t * mpmath.log(max(p, mpf(low))) if t != 0 else 0) for t, p in zip(t_row, p_row)]
    return mpmath.fsum(terms) / len(terms)


def mp_sparse_smoothed_logits(label, x_row, smoothing):
    """(1 - s) (-log p_label) + s mean(-log p), p = softmax(x)."""
    log_p = mp_log_softmax(list(x_row))
    s = mpf(smoothing)
    return (1 - s) * -log_p[int(label)] + s * -mpmath.fsum(log_p) / len(log_p)


# -- regression, overlap and hinge losses (losses/_regression.py, _overlap.py, _hinge.py) --
# Row functions take two equal-length lists of mpf (one sample's last axis).


def _mp_row_mean(terms):
    terms = list(terms)
    if any(mpmath.isnan(v) for v in terms):
        return NAN
    return mpmath.fsum(terms) / len(terms)


def mp_mean_squared_error_row(t, p):
    return _mp_row_mean((a - b) ** 2 for a, b in zip(t, p))


def mp_mean_absolute_error_row(t, p):
    return _mp_row_mean(abs(a - b) for a, b in zip(t, p))


def mp_mean_absolute_percentage_error_row(t, p):
    """100 * mean of |t - p| / |t| over the nonzero targets (0 if there are none)."""
    if any(mpmath.isnan(v) for v in list(t) + list(p)):
        return NAN
    terms = [abs(a - b) / abs(a) for a, b in zip(t, p) if a != 0]
    return 100 * mpmath.fsum(terms) / len(terms) if terms else mpmath.mpf(0)


def _mp_log1p_tangent(x):
    """log1p(x) for x >= 0, continued below 0 by its tangent line x."""
    return mpmath.log1p(x) if x >= 0 else x


def mp_mean_squared_logarithmic_error_row(t, p):
    # Targets are clipped at 0 (as in Keras); predictions continue by the tangent.
    return _mp_row_mean((_mp_log1p_tangent(b) - mpmath.log1p(max(a, 0))) ** 2 for a, b in zip(t, p))


def mp_huber_row(t, p, delta):
    delta = mpf(delta)

    def term(a, b):
        e = abs(b - a)
        return e * e / 2 if e <= delta else delta * (e - delta / 2)

    return _mp_row_mean(term(a, b) for a, b in zip(t, p))


def mp_log_cosh_row(t, p):
    # cosh(e) - 1 = 2 sinh(e/2)^2 keeps the 60 digits for tiny e.
    return _mp_row_mean(mpmath.log1p(2 * mpmath.sinh((b - a) / 2) ** 2) for a, b in zip(t, p))


def mp_cosine_similarity_row(t, p):
    """-cos(t, p); 0 when either vector is zero."""
    norm_t = mpmath.sqrt(mpmath.fsum(a * a for a in t))
    norm_p = mpmath.sqrt(mpmath.fsum(b * b for b in p))
    if norm_t == 0 or norm_p == 0:
        return mpmath.mpf(0)
    return -mpmath.fsum(a * b for a, b in zip(t, p)) / (norm_t * norm_p)


def mp_tversky_loss(t, p, alpha, beta, smooth):
    """1 - (TP + s) / (TP + alpha sum(t (1 - p)) + beta sum(p (1 - t)) + s); 0 / 0 -> 0."""
    tp = mpmath.fsum(a * b for a, b in zip(t, p))
    missed = mpmath.fsum(a * (1 - b) for a, b in zip(t, p))
    false_alarm = mpmath.fsum(b * (1 - a) for a, b in zip(t, p))
    denominator = tp + mpf(alpha) * missed + mpf(beta) * false_alarm + mpf(smooth)
    if denominator == 0:
        return mpmath.mpf(0)
    return 1 - (tp + mpf(smooth)) / denominator


def mp_dice_loss(t, p, smooth):
    """1 - (2 TP + s) / (sum(t) + sum(p) + s); two empty masks (0 / 0) -> 0."""
    denominator = mpmath.fsum(t) + mpmath.fsum(p) + mpf(smooth)
    if denominator == 0:
        return mpmath.mpf(0)
    return 1 - (2 * mpmath.fsum(a * b for a, b in zip(t, p)) + mpf(smooth)) / denominator


def mp_hinge_row(signed_t, p):
    """Labels already in {-1, 1}."""
    return _mp_row_mean(max(1 - a * b, mpmath.mpf(0)) for a, b in zip(signed_t, p))


def mp_squared_hinge_row(signed_t, p):
    return _mp_row_mean(max(1 - a * b, mpmath.mpf(0)) ** 2 for a, b in zip(signed_t, p))


def mp_categorical_hinge_row(t, p):
    positive = mpmath.fsum(a * b for a, b in zip(t, p))
    negative = max((1 - a) * b for a, b in zip(t, p))
    return max(negative - positive + 1, mpmath.mpf(0))


def reference_rows(fn, t, p, *args):
    """Apply a row function to each row (last axis) of two 2-D float arrays."""
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    out = np.empty(t.shape[0], dtype=object)
    for i in range(t.shape[0]):
        out[i] = fn([mpf(v) for v in t[i]], [mpf(v) for v in p[i]], *args)
    return out
