"""``_internal/polynomials``: the fitted polynomials the float32 kernels evaluate.

Each fit (the KL excess, ELU's expm1, log cosh) is checked against mpmath (60
digits) off its own checking grid: the polynomial with its float32
coefficients, evaluated exactly, within the tolerance it was fitted to; and it
must take fewer terms than the Taylor polynomial that meets the same tolerance
(the reason the fits exist).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf

from stableops._internal.elementary import _nonpositive_expm1_coefficients
from stableops._internal.polynomials import chebyshev_coefficients, horner
from stableops.losses._distribution import _atanh_tail_coefficients
from stableops.losses._gaussian_kernels import _excess_coefficients
from stableops.ops._logexp import _log_cosh_polynomial

EPS32 = float(np.finfo(np.float32).eps)


def _mp_half_excess_over_square(d):
    return (mpmath.exp(d) - 1 - d) / (2 * d * d) if d != 0 else mpmath.mpf(1) / 4


def _mp_expm1_over_x(x):
    return mpmath.expm1(x) / x if x != 0 else mpmath.mpf(1)


def _mp_log_cosh_over_square(t):  # in t = a^2
    return mpmath.log(mpmath.cosh(mpmath.sqrt(t))) / t if t != 0 else mpmath.mpf(1) / 2


def _mp_atanh_tail(q):  # (atanh(s)/s - 1)/s^2 in q = s^2
    if q == 0:
        return mpmath.mpf(1) / 3
    s = mpmath.sqrt(q)
    return (mpmath.atanh(s) / s - 1) / q


def _log_cosh_taylor(k):
    # log cosh a = sum_{n>=1} 2^(2n) (2^(2n) - 1) B_(2n) / (2n (2n)!) a^(2n); t^k has n = k + 1.
    n = k + 1
    return 4**n * (4**n - 1) * mpmath.bernoulli(2 * n) / (2 * n * mpmath.factorial(2 * n))


FITS = {
    # name: (coefficients, exact function, interval, Taylor coefficient k, tolerance asked for)
    "kl_excess": (
        _excess_coefficients(tf.float32),
        _mp_half_excess_over_square,
        (-1.0, 2.0),
        lambda k: mpmath.mpf(1) / (2 * mpmath.factorial(k + 2)),
        EPS32 / 4,
    ),
    "kl_divergence_atanh_tail": (
        _atanh_tail_coefficients(tf.float32),
        _mp_atanh_tail,
        (0.0, 1.0 / 9.0),
        lambda k: mpmath.mpf(1) / (2 * k + 3),
        EPS32 / 4,
    ),
    "elu_expm1": (
        _nonpositive_expm1_coefficients(tf.float32),
        _mp_expm1_over_x,
        (-1.0, 0.0),
        lambda k: 1 / mpmath.factorial(k + 1),
        EPS32 / 4,
    ),
    "log_cosh": (
        _log_cosh_polynomial(tf.float32),
        _mp_log_cosh_over_square,
        (0.0, 1.0),
        _log_cosh_taylor,
        EPS32 / 8,
    ),
}


def _points(low, high):
    # Random points (off the fit's grid), the ends, and tiny arguments of both signs.
    rng = np.random.default_rng(0)
    tiny = [s * 10.0**-e for e in (3, 8, 20) for s in (-1.0, 1.0)]
    points = np.concatenate([rng.uniform(low, high, 2000), [low, high], tiny])
    return [float(np.float32(p)) for p in points if low <= p <= high]


@pytest.mark.parametrize("name", sorted(FITS))
def test_fitted_polynomial_within_its_tolerance_against_mpmath(name):
    coefficients, exact, (low, high), _, tolerance = FITS[name]
    assert all(float(np.float32(c)) == c for c in coefficients)  # float32 values
    with mpmath.workdps(60):
        exact_coefficients = [mpmath.mpf(c) for c in coefficients]
        worst = max(
            abs(horner(mpmath.mpf(x), exact_coefficients) / exact(mpmath.mpf(x)) - 1)
            for x in _points(low, high)
        )
    # 5% over the tolerance: between the fit's grid points the error can rise a little.
    assert worst <= 1.05 * tolerance, (name, float(worst))


@pytest.mark.parametrize("name", sorted(FITS))
def test_fit_takes_fewer_terms_than_the_taylor_polynomial(name):
    coefficients, exact, (low, high), taylor, tolerance = FITS[name]
    ends = [mpmath.mpf(low), mpmath.mpf(high)]  # the truncation error is largest at an end
    terms = 1
    with mpmath.workdps(40):
        while any(
            abs(sum(taylor(k) * x**k for k in range(terms)) / exact(x) - 1) > tolerance
            for x in ends
            if x != 0
        ):
            terms += 1
    assert len(coefficients) < terms, (name, len(coefficients), terms)


def test_no_fit_within_an_impossible_tolerance():
    with pytest.raises(ValueError, match="no degree"):
        chebyshev_coefficients(np.exp, 0.0, 1.0, 1e-30)


def test_horner_evaluates_in_increasing_powers():
    # 1 + 2x + 3x^2 at x = 10: exact in integers.
    assert horner(10.0, (1.0, 2.0, 3.0)) == 321.0
    assert math.isclose(horner(np.float64(0.5), (1.0, 2.0, 3.0)), 2.75)
