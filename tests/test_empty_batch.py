"""An empty batch (0 rows) is a batch: every public op and loss function takes one.

The last batch of a filtered dataset, or a replica's share of a small global batch, can be
empty. Each function returns its batch-shaped value with 0 rows (a scalar, finite, for a
loss over the whole batch), and a gradient of its input's shape, in three regimes. Triplet
and contrastive losses failed to compile there: XLA reads a row of their row-by-row branch
as a slice of one row, which 0 rows cannot give, also where that branch is not taken.
Rows of no entries (an empty last axis) are checked too.
"""

from __future__ import annotations

import numpy as np
import pytest

from stableops import ops
from tests._public_cases import CASES, inputs, value_shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_empty_batch_gives_an_empty_value_and_gradient(name, regime):
    fn, _, wrt = CASES[name]
    full = value_shape(name)
    args = inputs(name, np.float32, rows=0)
    value, (grad,) = regime.value_and_grad(fn, *args, wrt=(wrt,))
    assert grad.shape == args[wrt].shape
    if full == ():  # one value for the whole batch: finite (0 / 0 is 0 there)
        assert value.shape == () and np.isfinite(value), value
    else:
        assert value.shape == (0, *full[1:]), value.shape


def _takes_an_empty_last_axis(name):
    """Cases whose every float input is a batch of rows that can be cut to 0 entries (not the
    embeddings, label sequences, stacked mean and variance or sparse labels' class axis)."""
    floats = [a for a in inputs(name, np.float32) if a.dtype.kind == "f"]
    special = ("ctc", "triplet", "contrastive", "nt_xent", "gaussian_nll", "sparse")
    return all(a.ndim >= 2 for a in floats) and not any(s in name for s in special)


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if _takes_an_empty_last_axis(n)])
def test_an_empty_last_axis_keeps_the_shapes(name, regime):
    # Rows of no entries: a mean over them is NaN (as Keras's), a sum 0, a norm 0. What is
    # checked is that nothing raises (PoissonNLL's static 1 / n was a ZeroDivisionError) and
    # the shapes: the value's batch shape and the gradient of the input's shape.
    fn, _, wrt = CASES[name]
    args = [a[..., :0] if a.dtype.kind == "f" else a for a in inputs(name, np.float32)]
    value, (grad,) = regime.value_and_grad(fn, *args, wrt=(wrt,))
    assert grad.shape == args[wrt].shape
    # A reduced last axis keeps the full batch's value shape; a kept one is the input's.
    assert value.shape in (value_shape(name), args[wrt].shape), value.shape


def test_the_norm_of_an_empty_vector_is_zero(regime):
    # sqrt of an empty sum; the power-of-two scale took the empty row's maximum, -inf, and
    # gave inf * 0 = NaN.
    value, (grad,) = regime.value_and_grad(ops.safe_norm, np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(value, np.zeros(3, np.float32))
    assert grad.shape == (3, 0)
