"""The kernels' XLA programs keep their loops vectorizable on narrow rows.

XLA on CPU (TF 2.21) does not vectorize a loop that broadcasts a row's boolean along the
row (``pred[rows, C] broadcast(pred[rows])``) when the row holds fewer than 32 entries:
the loop runs one element at a time, transcendentals included. Measured on one core,
``[2^17, 8]``, under XLA, forward and backward against Keras's time: categorical
cross-entropy from probabilities 3.2 -> 1.4x, from logits 2.4 -> 1.6x, sparse from logits
2.4 -> 1.3x. A row's condition is applied per row instead (a select on the row's values,
then broadcast as a number) or folded into a per-row threshold an entry is compared with.
Read from the optimized program of every public function's value and gradient
(``tests/_public_cases.py``), on the release the form was measured on.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

from tests._helpers import measured_xla_only, optimized_hlo
from tests._public_cases import CASES, inputs, value_and_gradient

# A boolean broadcast along new axes from a non-scalar operand (a scalar's broadcast is a
# constant, which every loop vectorizes).
ROW_BOOLEAN = re.compile(
    r"= pred\[[0-9,]+\]\{[0-9,]+\} broadcast\(%[\w.]+\), dimensions=\{[0-9,]+\}"
)

# CTC's recursion over time selects by per-sequence lengths along its label axis; not
# measured, and its loops are not the row loops above.
NOT_ROW_KERNELS = {"losses.ctc"}


@measured_xla_only
@pytest.mark.parametrize("name", sorted(set(CASES) - NOT_ROW_KERNELS))
def test_no_loop_broadcasts_a_row_boolean(name):
    args = [tf.constant(a) for a in inputs(name, np.float32)]
    program = optimized_hlo(value_and_gradient(name), *args, entry_only=False)
    assert [line.strip()[:120] for line in program.splitlines() if ROW_BOOLEAN.search(line)] == []


# 1/13, a coefficient of accurate_log1p's series in float32 and float64 alike.
LOG1P_SERIES = re.compile(r"constant\(0\.07692307")
ROW_LOG1P_CASES = [
    "log_softmax",
    "logsumexp",
    "sparse_categorical_crossentropy",
    "losses.categorical_crossentropy/logits",
    "losses.categorical_focal_crossentropy/logits",
    "losses.sparse_categorical_crossentropy/logits",
]


@measured_xla_only
@pytest.mark.parametrize("name", ROW_LOG1P_CASES)
def test_a_row_log1p_series_is_formed_in_one_loop(name):
    """The series of ``log1p(s)`` per row is all cheap instructions, which XLA repeated in
    every loop that broadcasts the result (two or three loops, per element of each);
    ``log1p_once`` writes it out once."""
    args = [tf.constant(a) for a in inputs(name, np.float32)]
    program = optimized_hlo(value_and_gradient(name), *args, entry_only=False)
    computations = re.split(r"\n(?=%|ENTRY)", program)
    assert sum(1 for c in computations if LOG1P_SERIES.search(c)) == 1
