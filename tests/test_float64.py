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

import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
from stableops.ops import dtype_limits
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
