"""`make test` runs the suite in batches of files (tests/conftest.py's ``--file-batch``): the
batches must hold every file once, or tests would silently stop running."""

import re
from pathlib import Path

import pytest

from tests.conftest import files_in_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_batches_partition_the_files(count):
    files = [f"tests/test_{name}.py" for name in "gafbecd"]
    batches = [files_in_batch(files, f"{k}/{count}") for k in range(1, count + 1)]
    assert sorted(f for batch in batches for f in batch) == sorted(files)


@pytest.mark.parametrize("batch", ["0/2", "3/2"])
def test_a_batch_outside_its_count_is_refused(batch):
    with pytest.raises(pytest.UsageError, match="K/N"):
        files_in_batch(["tests/test_a.py"], batch)


def test_make_test_runs_every_batch():
    (line,) = re.findall(r"^TEST_BATCHES :=(.*)$", (ROOT / "Makefile").read_text(), re.M)
    batches = line.split()
    count = len(batches)
    assert batches == [f"{k}/{count}" for k in range(1, count + 1)]
