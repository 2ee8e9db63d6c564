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
    errors = np.empty(actual.shape, dtype=np.float64)
    for index in np.ndindex(actual.shape):
        a, r = actual[index], reference[index]
        if mpmath.isnan(r) or math.isnan(a):
            errors[index] = 0.0 if (mpmath.isnan(r) and math.isnan(a)) else math.inf
            continue
        if abs(r) > largest * (1 + mpmath.ldexp(1, -int(ml_dtypes.finfo(to_numpy_dtype(dtype)).nmant) - 1)):
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
# log/exp family (stableops/ops/_logexp.py)
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# safe math (stableops/ops/_safe_math.py)
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# activations (stableops/ops/_activations.py)
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# cross-entropies (stableops/ops/_crossentropy.py) and losses
# ----------------------------------------------------------------------------
