"""The ULP measure every accuracy test relies on (tests/_reference.py).

Its oracle is NumPy's (IEEE) rounding of float64 values to the narrower
dtype, which is independent of the code under test.
"""

import math

import ml_dtypes
import mpmath
import numpy as np
import pytest

from tests import _reference as ref

NARROW = ("float16", "bfloat16", "float32")


@pytest.mark.parametrize("dtype", NARROW + ("float64",))
def test_ulp_of_is_the_spacing_of_the_dtype(dtype):
    scalar = ref.to_numpy_dtype(dtype).type
    info = ml_dtypes.finfo(scalar)
    for value in (1.0, 1.5, 3.0, float(info.tiny)):
        x = scalar(value)
        spacing = float(np.nextafter(x, scalar(np.inf))) - float(x)
        assert ref.ulp_of(ref.mpf(x), dtype) == ref.mpf(spacing)
    below_max = np.nextafter(scalar(info.max), scalar(0))
    assert ref.ulp_of(ref.mpf(info.max), dtype) == ref.mpf(float(info.max) - float(below_max))
    # Below the smallest normal (flushed by TF) the unit is the smallest normal.
    assert ref.ulp_of(ref.mpf(float(info.tiny)) / 8, dtype) == ref.mpf(float(info.tiny))


@pytest.mark.parametrize("dtype", NARROW)
def test_overflow_boundary_matches_round_to_nearest(dtype):
    numpy_dtype = ref.to_numpy_dtype(dtype)
    largest = float(ml_dtypes.finfo(numpy_dtype).max)
    half_ulp = float(ref.ulp_of(ref.mpf(largest), dtype)) / 2
    # The boundary is exact in float32 for the half types (float64 for
    # float32); the value just below it is taken in that same wider type, as
    # ml_dtypes casts float64 to float16/bfloat16 through float32 (a double
    # rounding that would move a float64 neighbour onto the tie).
    wide = np.float64 if dtype == "float32" else np.float32
    boundary = wide(largest + half_ulp)
    just_below = np.nextafter(boundary, wide(0))
    for reference in (boundary, just_below, -boundary, -just_below):
        with np.errstate(over="ignore"):
            rounded = float(reference.astype(numpy_dtype))  # the oracle
        reference = float(reference)
        errors = ref.ulp_error(
            np.array([rounded, largest * math.copysign(1.0, reference)]),
            np.array([ref.mpf(reference)] * 2, dtype=object),
            dtype,
        )
        assert errors[0] <= 0.5, (dtype, reference, rounded, errors)
        if math.isinf(rounded):
            assert errors[1] == math.inf  # max is not the rounded value of an overflow
        else:
            assert errors[1] <= 0.5


def test_one_step_is_one_ulp_and_nan_and_infinities_match_themselves():
    def errors(actual, reference):
        return list(ref.ulp_error(np.array(actual), np.array(reference, dtype=object), "float32"))

    x = np.float32(1.25)
    assert errors([np.nextafter(x, np.float32(2))], [ref.mpf(x)]) == [1.0]
    references = [mpmath.nan, mpmath.inf, -mpmath.inf, mpmath.mpf(1)]
    assert errors([np.nan, np.inf, -np.inf, np.nan], references) == [0.0, 0.0, 0.0, math.inf]
    assert errors([np.inf], [mpmath.mpf(1)]) == [math.inf]
