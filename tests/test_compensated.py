"""``_internal/compensated``: ``two_difference`` (a difference and its exact rounding error),
``one_minus`` (``1 - x`` and its exact rounding error, for ``|x| <= 1``) and
``float32_split``, a float64 as its float32 rounding plus the rest, and ``fraction_of_one_plus``,
``w / (1 + w)`` of a float64 pair.

``two_difference``'s error term must make the difference exact for finite operands, and be 0
(never NaN) wherever the difference is not finite or an intermediate overflows. ``one_minus``'s
must make ``1 - x`` exact wherever ``|x| <= 1`` (soft labels among them), stay finite for any
finite ``x``, and carry NaN for a NaN or infinite ``x``.

``high`` must be a float32 number (its cast to float32 exact), ``high + low`` must be the input
exactly, and ``low`` at most half an ULP of float32 at ``high``: in every regime, and on XLA
versions that fold a cast to float32 and back (TF 2.16: ``low`` came out 0 and ``high`` was
the input itself, a float64 that float32 cannot hold).
"""

from __future__ import annotations

import mpmath
import numpy as np

from stableops._internal.compensated import (
    float32_split,
    fraction_of_one_plus,
    one_minus,
    two_difference,
)


def test_two_difference_is_exact_and_its_error_is_never_nan(regime):
    rng = np.random.default_rng(4)
    # float32 pairs of both signs over most of the normal range, close pairs (the difference
    # exact: error 0), and pairs whose difference or its intermediates are not finite.
    a = rng.choice([-1.0, 1.0], 3000) * np.exp2(rng.uniform(-60.0, 60.0, 3000))
    b = rng.choice([-1.0, 1.0], 3000) * np.exp2(rng.uniform(-60.0, 60.0, 3000))
    b[:500] = a[:500] * (1.0 + rng.uniform(-0.4, 0.4, 500))
    biggest = float(np.finfo(np.float32).max)
    edges = np.array([[np.inf, 1.0], [1.0, np.inf], [-np.inf, -np.inf], [np.inf, np.inf],
                      [np.nan, 1.0], [1.0, np.nan], [biggest, -biggest], [-biggest, biggest],
                      [biggest, -biggest / 2**24]])
    a = np.concatenate([a, edges[:, 0]]).astype(np.float32)
    b = np.concatenate([b, edges[:, 1]]).astype(np.float32)
    d, err = (np.asarray(part, np.float64) for part in regime.run(two_difference, a, b))
    finite = np.isfinite(d)
    assert finite[:3000].all()
    for x, y, high, low in zip(a[:3000], b[:3000], d[:3000], err[:3000]):
        assert mpmath.mpf(high) + mpmath.mpf(low) == mpmath.mpf(float(x)) - mpmath.mpf(float(y))
    assert (err[:500] == 0.0).all()  # Sterbenz: a difference within a factor 2 is exact
    # The edges: the infinity or NaN is the difference's, the error 0 (a NaN error would
    # reach every product it corrects, exp(z) (1 + z_low) with exp(-inf) = 0 among them).
    assert np.isnan(d[3000:]).sum() == 4 and np.isinf(d[3000:]).sum() == 5
    np.testing.assert_array_equal(err[3000:], 0.0)


def test_one_minus_is_exact_up_to_one_and_finite_beyond(regime):
    rng = np.random.default_rng(6)
    # |x| <= 1 over float32's normal range (1 - x inexact below 1/2: the rounding is the
    # error term), x within [1/2, 2] (Sterbenz: exact, error 0), and |x| > 1 (finite).
    inside = rng.choice([-1.0, 1.0], 3000) * np.exp2(rng.uniform(-120.0, 0.0, 3000))
    near_one = rng.uniform(0.5, 2.0, 500)
    outside = rng.choice([-1.0, 1.0], 500) * np.exp2(rng.uniform(0.0, 127.0, 500))
    edges = [0.0, 1.0, -1.0, float(np.finfo(np.float32).max), np.inf, -np.inf, np.nan]
    x = np.concatenate([inside, near_one, outside, edges]).astype(np.float32)
    d, err = (np.asarray(part, np.float64) for part in regime.run(one_minus, x))
    for value, high, low in zip(x[:3000], d[:3000], err[:3000]):
        assert mpmath.mpf(high) + mpmath.mpf(low) == 1 - mpmath.mpf(float(value))
    assert (err[:3000] != 0.0).any()  # some roundings are caught, not all 1 - x exact
    np.testing.assert_array_equal(err[3000:3500], 0.0)
    np.testing.assert_array_equal(d[3000:3500], 1.0 - x[3000:3500].astype(np.float64))
    assert np.isfinite(d[:-3]).all() and np.isfinite(err[:-3]).all()
    assert np.isnan(err[-3:]).all() and not np.isfinite(d[-3:]).any()


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


def test_fraction_of_one_plus_keeps_the_pair_to_half_an_ulp(regime):
    # w = v + v_error over [1e-12, 1e3] with v_error up to half an ULP of v: rounded as
    # v / (1 + v), the result carries v_error, the rounding of 1 + v and of the quotient
    # (over 1 ULP at worst); corrected, the half ULP of its own rounding and second-order
    # terms (0.5 + 2^-50 or so).
    rng = np.random.default_rng(6)
    v = np.exp(rng.uniform(np.log(1e-12), np.log(1e3), 3000))
    v_error = rng.uniform(-0.5, 0.5, 3000) * np.spacing(v)
    value = np.asarray(regime.run(fraction_of_one_plus, v, v_error), np.float64)
    exact = [mpmath.mpf(a) + mpmath.mpf(b) for a, b in zip(v, v_error)]
    errors = [abs(mpmath.mpf(c) - w / (1 + w)) / np.spacing(c) for c, w in zip(value, exact)]
    assert max(errors) <= 0.51, max(errors)
    rounded = v / (1.0 + v)
    naive = [abs(mpmath.mpf(c) - w / (1 + w)) / np.spacing(c) for c, w in zip(rounded, exact)]
    assert max(naive) > 1.0  # the test can tell the two apart

