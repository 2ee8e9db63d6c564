"""``_internal/elementary``: the compensated ``log1p`` that every log-of-a-sum kernel uses.

``accurate_log1p`` and ``log1p_in_range`` promise 0.6 ULP on ``[-1/2, 1]`` (the
series with the roundings of ``2 + v`` and of its quotient corrected) in every regime;
checked against mpmath in float32 and float64, on a grid dense near 0 (where
``log(1 + v)`` loses everything) and across the interval's ends. ``split_exp_of_negative``
(float64 ``exp(-a)`` as two parts, for ``logaddexp``) is checked the same way.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stableops._internal.elementary import (
    LOG2,
    accurate_log1p,
    log1p_in_range,
    split_exp_of_negative,
)
from tests import _reference as R
from tests._regimes import Regime

# 0.6 ULP is the documented figure; a budget of 1 ULP fails a lost correction
# (1.5-2.6 ULP uncorrected) while leaving room for the rounding of the result.
LOG1P_ULP = 1.0


def _grid(np_dtype):
    rng = np.random.default_rng(3)
    tiny = float(np.finfo(np_dtype).tiny)
    magnitudes = np.exp(rng.uniform(np.log(tiny * 4), 0.0, 400))
    signs = rng.choice([-1.0, 1.0], 400)
    interval = rng.uniform(-0.5, 1.0, 400)
    values = np.concatenate([signs * magnitudes * 0.5, interval, [-0.5, 1.0, 0.0]])
    return values.astype(np_dtype)


@pytest.mark.parametrize(
    "log1p",
    [
        accurate_log1p,
        log1p_in_range,
        # The quotient as a reciprocal times 2v (one more rounding, which the
        # correction term must absorb as well).
        lambda v: log1p_in_range(v, elementwise=True),
    ],
    ids=["accurate_log1p", "log1p_in_range", "log1p_in_range_elementwise"],
)
@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
def test_log1p_within_one_ulp_on_its_series_interval(np_dtype, log1p, regime):
    v = _grid(np_dtype)
    got = regime.run(log1p, v)
    reference = [mpmath.log1p(mpmath.mpf(float(x))) for x in v]
    R.assert_ulp_within(got, reference, np.dtype(np_dtype).name, LOG1P_ULP)


# hi + lo is 0.28 ULP off at worst in 1.2e4 random points (hi alone 0.8: its own rounding);
# half an ULP fails a lost low part (the rounding of 1 + q, or of the reduced argument)
# as well as XLA's float64 exp (1.5-1.7 ULP).
SPLIT_EXP_ULP = 0.5


# Eager and XLA only: in a plain tf.function graph Grappler folds (1 - (1 + q)) + q to 0,
# so the function is for compiled kernels (every public kernel is one).
@pytest.mark.parametrize("regime_name", ["eager", "xla"])
def test_split_exp_of_negative_within_half_an_ulp(regime_name):
    rng = np.random.default_rng(5)
    # Up to 600: beyond it the low part 2^-k w_low falls below the smallest normal.
    k_edges = (np.arange(1, 800) + 0.5) * LOG2
    a = np.concatenate([
        [0.0, 1e-300, 1e-17, 0.5 * LOG2],
        rng.uniform(0.0, 1.0, 300),
        rng.uniform(0.0, 40.0, 300),
        rng.uniform(0.0, 600.0, 200),
        np.nextafter(k_edges[k_edges < 600], 0.0),
        np.nextafter(k_edges[k_edges < 600], np.inf),
    ])
    hi, lo = Regime(regime_name).run(split_exp_of_negative, a)
    errors = [
        abs(R.mpf(float(high)) + R.mpf(float(low)) - mpmath.exp(-R.mpf(float(v))))
        / R.ulp_of(mpmath.exp(-R.mpf(float(v))), "float64")
        for v, high, low in zip(a, hi, lo)
    ]
    worst = int(np.argmax(errors))
    assert errors[worst] <= SPLIT_EXP_ULP, (a[worst], float(errors[worst]))


def test_split_exp_of_negative_at_its_ends():
    hi, lo = Regime("xla").run(
        split_exp_of_negative, np.array([0.0, 745.2, 1100.0, 1e300, np.inf, np.nan])
    )
    assert hi[0] == 1.0 and lo[0] == 0.0
    # exp(-745.2) is subnormal (flushed), beyond 1100 and +inf exactly 0; NaN stays NaN.
    np.testing.assert_array_equal(hi[1:5], 0.0)
    np.testing.assert_array_equal(lo[1:5], 0.0)
    assert np.isnan(hi[5]) and np.isnan(lo[5])
