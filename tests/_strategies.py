"""Hypothesis strategies for float16, bfloat16, float32 and float64 test inputs.

Subnormals are kept out of every draw: TF flushes them to zero on CPU and GPU,
so a subnormal input is not the value the op sees. bfloat16 values are drawn as
float32 (bfloat16 has float32's exponent range) and rounded to bfloat16.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests._reference import to_numpy_dtype

FLOAT_DTYPES = ("float16", "bfloat16", "float32")
ALL_FLOAT_DTYPES = FLOAT_DTYPES + ("float64",)
_WIDTH = {"float16": 16, "float32": 32, "float64": 64, "bfloat16": 32}


def finite_floats(dtype, min_value=None, max_value=None):
    """Finite, normal (or zero) scalars exactly representable in ``dtype``, as Python floats."""
    name = to_numpy_dtype(dtype).name
    largest = float(ml_dtypes.finfo(to_numpy_dtype(dtype)).max)
    low = -largest if min_value is None else max(min_value, -largest)
    high = largest if max_value is None else min(max_value, largest)
    floats = st.floats(
        min_value=low,
        max_value=high,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
        width=_WIDTH[name],
    )
    if name == "bfloat16":
        # Round to bfloat16 and back; clamp so rounding cannot leave [low, high].
        floats = floats.map(lambda v: float(np.clip(np.float32(ml_dtypes.bfloat16(v)), low, high)))
        floats = floats.filter(lambda v: np.isfinite(ml_dtypes.bfloat16(v)))
    return floats


def finite_arrays(dtype, shape, min_value=None, max_value=None):
    """NumPy arrays of ``dtype`` (ml_dtypes.bfloat16 for bfloat16) with finite normal entries."""
    return hnp.arrays(
        dtype=np.float64,
        shape=shape,
        elements=finite_floats(dtype, min_value, max_value),
    ).map(lambda a: a.astype(to_numpy_dtype(dtype)))
