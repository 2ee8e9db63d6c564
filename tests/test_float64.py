"""float64 in, float64 out: every public loss function and op computes a float64 input in float64.

Contract rule 4 names half precision; its other side is that float64 is not narrowed. For
each public function, on moderate random inputs (where float32 is accurate too), in three
regimes:

* the value is float64 and carries float64 precision: some entry is not a float32 number
  (a float64 path that ran in float32 and widened its result would pass every other check);
* the value and the gradient are finite;
* both agree with the float32 computation within float32's budget (a float64 path with a
  wrong constant or branch fails here).

MSLE crashed on float64 input (a float32 constant in a select), which no test saw: the
other tests draw float32 and half precision. Accuracy in float64 against mpmath is tested
in each op's own module where float64 has a path of its own (MSLE, CTC, ``logaddexp``, ...).
The cases are ``tests/_public_cases.py``'s.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
from stableops import ops as O
from stableops.ops import dtype_limits
from tests import _reference as ref
from tests._public_cases import CASES, inputs, uncovered, value_shape
from tests._regimes import Regime

# Agreement with float32: 64 float32 ULPs of the larger magnitude. The float32 budgets are
# at most 4 ULP of the result; 64 leaves room for a value that is a difference of larger
# terms (a loss near 0), with the scale taken as the largest entry of the whole output.
_TOLERANCE = 64 * dtype_limits("float32").eps
EAGER = Regime("eager")


def test_every_public_function_is_covered():
    assert not uncovered(), uncovered()


def _assert_close(got, want, what):
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=_TOLERANCE, atol=_TOLERANCE * scale, err_msg=what)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_is_computed_in_float64(name, regime):
    fn, _, wrt = CASES[name]
    # A random upstream gradient: the gradient of the plain sum can be exactly 0 (softmax's),
    # where float64 keeps rounding noise that float32 does not.
    weights = np.random.default_rng(0).uniform(0.5, 1.5, value_shape(name)).astype(np.float32)
    value, (grad,) = regime.value_and_grad(
        fn, *inputs(name, np.float64), wrt=(wrt,), weights=weights
    )
    assert value.dtype == np.float64 and grad.dtype == np.float64
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    narrowed = value.astype(np.float32).astype(np.float64)
    assert np.any(narrowed != value), "every entry is a float32 number: computed in float32?"
    # float32's eagerly (every regime gives the same, contract rule 5, tested elsewhere): its
    # compiled kernels are then cached across this test's three regimes.
    value32, (grad32,) = EAGER.value_and_grad(
        fn, *inputs(name, np.float32), wrt=(wrt,), weights=weights
    )
    _assert_close(value, value32.astype(np.float64), f"{name}: value")
    _assert_close(grad, grad32.astype(np.float64), f"{name}: gradient")


def test_a_float64_loss_class_returns_float64_for_float64_input():
    loss = S.MeanSquaredLogarithmicError(dtype="float64")
    value = loss(tf.constant([[1.0, 2.0]], tf.float64), tf.constant([[1.5, 2.5]], tf.float64))
    assert value.dtype == tf.float64


def test_number_hyperparameters_are_taken_in_float64(regime):
    """A Python number given with float64 inputs is that float64 number: ``tf.cast(0.1,
    tf.float64)`` goes through float32 (0.10000000149), which made Huber's ``delta``, a
    prior's mean, ``safe_divide``'s ``fill`` and ``clip_preserve_gradient``'s bounds
    float32's. Closed forms in exact arithmetic (mpmath) on the float64 numbers."""
    tenth = mpmath.mpf(0.1)  # the float64 nearest 0.1, exactly
    zero, one = np.zeros((1, 1)), np.ones((1, 1))
    huber = regime.run(lambda t, p: S.huber(t, p, delta=0.1), zero, one)
    ref.assert_ulp_within(huber, [tenth * (1 - tenth / 2)], "float64", 1)
    kl = regime.run(lambda m, s: S.gaussian_kl(m, s, prior_mean=0.1), zero, zero)
    ref.assert_ulp_within(kl, [tenth**2 / 2], "float64", 1)
    fill = regime.run(lambda x, y: O.safe_divide(x, y, fill=0.1), one[0], zero[0])
    clipped = regime.run(lambda x: O.clip_preserve_gradient(x, 0.1, 0.9), zero[0])
    np.testing.assert_array_equal(np.concatenate([fill, clipped]), [0.1, 0.1])
