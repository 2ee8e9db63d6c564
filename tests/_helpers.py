"""Small helpers the test files share: finiteness checks and dtype casts of NumPy data.

(The execution regimes are in ``_regimes``, the hypothesis data generators in
``_strategies``, the mpmath references in ``_reference``.)
"""

from __future__ import annotations

import numpy as np

from tests._reference import to_numpy_dtype


def is_finite(a) -> np.ndarray:
    """Elementwise ``isfinite`` of any float array (bfloat16 included, via float64)."""
    return np.isfinite(np.asarray(a, dtype=np.float64))


def all_finite(a) -> bool:
    """Whether every element of ``a`` is finite."""
    return bool(np.all(is_finite(a)))


def as_dtype(values, dtype) -> np.ndarray:
    """``values`` rounded once to ``dtype`` (a name, ``tf.DType`` or NumPy dtype)."""
    return np.asarray(values, dtype=np.float64).astype(to_numpy_dtype(dtype))
