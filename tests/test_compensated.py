"""``_internal/compensated``: ``float32_split``, a float64 as its float32 rounding plus the rest.

``high`` must be a float32 number (its cast to float32 exact), ``high + low`` must be the input
exactly, and ``low`` at most half an ULP of float32 at ``high``: in every regime, and on XLA
versions that fold a cast to float32 and back (TF 2.16: ``low`` came out 0 and ``high`` was
the input itself, a float64 that float32 cannot hold).
"""

from __future__ import annotations

import mpmath
import numpy as np

from stableops._internal.compensated import float32_split


def _inputs():
    rng = np.random.default_rng(5)
    # Float32's normal range, both signs, and numbers that are float32 already (low = 0).
    magnitudes = np.exp2(rng.uniform(-120.0, 120.0, 2000))
    values = rng.choice([-1.0, 1.0], 2000) * magnitudes
    exact = rng.normal(size=50).astype(np.float32).astype(np.float64)
    return np.concatenate([values, exact, [0.0, 1.0, -0.5]])


def test_float32_split_is_the_float32_rounding_and_an_exact_rest(regime):
    x = _inputs()
    high, low = (np.asarray(part, np.float64) for part in regime.run(float32_split, x))
    np.testing.assert_array_equal(high.astype(np.float32).astype(np.float64), high)
    for h, lo, v in zip(high, low, x):
        assert mpmath.mpf(h) + mpmath.mpf(lo) == mpmath.mpf(v), (v, h, lo)
    # Half an ULP of float32 at high: 2^-24 of the power of 2 at or below |high|.
    half_ulp = np.exp2(np.floor(np.log2(np.where(high == 0.0, 1.0, np.abs(high)))) - 24)
    assert np.all(np.abs(low) <= half_ulp)
    assert np.all(low[2000:] == 0.0)  # already float32
