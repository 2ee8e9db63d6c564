"""Gradients against mpmath's derivatives, each case within its budget in three regimes.

The sample, the exact derivatives, the term scales and the budgets (with the measurement each
one comes from) are in ``benchmarks/gradients.py``, which also reports Keras's gradients on the
same sample (the benchmarks' ``gradients`` section). Asserted here for stableops: no non-finite
gradient where the exact one is finite, no dead one, and every checked element within the
case's budget.
"""

from __future__ import annotations

import pytest

from benchmarks.gradients import CASES, describe, measure, sample_of, tape_gradient


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gradient_within_budget_of_mpmath(regime, case):
    sample = sample_of(case)
    got = tape_gradient(case, "stableops", regime.name, sample)
    m = measure(case, sample, got)
    assert not m["nonfinite"].any(), "non-finite: " + describe(sample, m["nonfinite"], got,
                                                               sample.lo)
    assert not m["dead"].any(), "dead: " + describe(sample, m["dead"], got, sample.lo)
    assert not m["over"].any(), f"{m['worst']:.3g} ULP > {case.budget}: " + describe(
        sample, m["over"], got, m["want"], m["errors"]
    )
