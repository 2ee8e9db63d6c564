"""Polynomials fitted on an interval: fewer terms than a Taylor series for the same error.

A Taylor polynomial is exact at its centre and worst at the ends of its
interval; the Chebyshev interpolant of the same function spreads its error
over the whole interval and reaches a given relative error with a lower degree
(the kernels evaluate every term for every element, so each term saved is an
operation per element in every fusion that evaluates the polynomial). For
float32 at eps/4: ``(exp(d) - 1 - d) / (2 d^2)`` on ``[-1, 2]`` needs degree 8
where its Taylor polynomial needs 12, ``expm1(x) / x`` on ``[-1, 0]`` degree 6
where its Taylor polynomial needs 10, and at eps/8 ``log cosh(a) / a^2`` in
``a^2`` on ``[0, 1]`` degree 7 where the Taylor series needs 16.

The coefficients are computed once per function, interval and tolerance, in
float64 with numpy, from a float64 evaluation of the function that is exact to
about 1e-16 on the interval (its Taylor series with enough terms), and chosen
as the lowest degree whose coefficients, rounded to float32, stay within the
tolerance of the function on a dense grid of the interval (the tests check them
against mpmath). For float32 only: a fit computed in float64 cannot promise
float64's eps/4, so float64 keeps the Taylor series (the callers choose).
"""

from __future__ import annotations

import functools
import typing

import numpy as np
from numpy.polynomial import Chebyshev, Polynomial

_GRID_POINTS = 16385  # checking grid: a spacing of 1/5000 on an interval of length 3
_MAX_DEGREE = 30


@functools.lru_cache(maxsize=None)
def chebyshev_coefficients(
    function: typing.Callable[[np.ndarray], np.ndarray], low: float, high: float, tolerance: float
) -> tuple:
    """Monomial coefficients ``c_0, c_1, ...`` (float32 values) of a fitted polynomial.

    ``function`` maps a float64 array to float64 values, exact to about 1e-16
    and nonzero on ``[low, high]``. The result is the Chebyshev interpolant of
    the lowest degree whose float32-rounded coefficients stay within the
    relative ``tolerance`` of ``function`` on a dense grid of the interval.
    """
    grid = np.linspace(low, high, _GRID_POINTS)
    exact = function(grid)
    for degree in range(1, _MAX_DEGREE + 1):
        fitted = Chebyshev.interpolate(function, degree, domain=[low, high])
        monomial = fitted.convert(kind=Polynomial, domain=[low, high], window=[low, high])
        coefficients = monomial.coef.astype(np.float32).astype(np.float64)
        if np.max(np.abs(Polynomial(coefficients)(grid) / exact - 1.0)) <= tolerance:
            return tuple(float(c) for c in coefficients)
    raise ValueError(f"no degree <= {_MAX_DEGREE} is within {tolerance} on [{low}, {high}]")


def horner(x, coefficients):
    """``c_0 + x (c_1 + x (c_2 + ...))``: two operations a term."""
    return functools.reduce(lambda acc, c: c + x * acc, coefficients[-2::-1], coefficients[-1])


def taylor_sum(x: np.ndarray, coefficient: typing.Callable[[int], float], terms: int) -> np.ndarray:
    """``sum_{k < terms} coefficient(k) x^k`` in float64 (the exact side of a fit)."""
    return horner(np.asarray(x, np.float64), [coefficient(k) for k in range(terms)])
