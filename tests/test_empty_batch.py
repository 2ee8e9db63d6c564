"""An empty batch (0 rows) is a batch: every public op and loss function takes one.

The last batch of a filtered dataset, or a replica's share of a small global batch, can be
empty. Each function returns its batch-shaped value with 0 rows (a scalar, finite, for a
loss over the whole batch), and a gradient of its input's shape, in three regimes. Triplet
and contrastive losses failed to compile there: XLA reads a row of their row-by-row branch
as a slice of one row, which 0 rows cannot give, also where that branch is not taken.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests._public_cases import CASES, inputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_empty_batch_gives_an_empty_value_and_gradient(name, regime):
    fn, _, wrt = CASES[name]
    full = fn(*inputs(name, np.float32))
    args = inputs(name, np.float32, rows=0)
    value, (grad,) = regime.value_and_grad(fn, *args, wrt=(wrt,))
    assert grad.shape == args[wrt].shape
    if full.shape.rank == 0:  # one value for the whole batch: finite (0 / 0 is 0 there)
        assert value.shape == () and np.isfinite(value), value
    else:
        assert value.shape == (0, *full.shape[1:]), value.shape
