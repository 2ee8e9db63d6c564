"""`make test` runs the suite in batches of files (tests/conftest.py's ``--file-batch``): the
batches must hold every file once, or tests would silently stop running."""

import random
import re
import types
from pathlib import Path

import pytest

from tests.conftest import files_in_batch, pytest_collection_modifyitems

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_the_batches_partition_the_files(count):
    files = [f"tests/test_{name}.py" for name in "gafbecd"]
    batches = [files_in_batch(files, f"{k}/{count}") for k in range(1, count + 1)]
    assert sorted(f for batch in batches for f in batch) == sorted(files)


def test_a_batch_does_not_depend_on_the_order_the_files_come_in():
    # Each batch runs in its own pytest process, where a set of paths has another order.
    files = [f"tests/test_{name}.py" for name in "abcdefg"]
    shuffled = random.Random(0).sample(files, len(files))
    assert files_in_batch(shuffled, "1/2") == files_in_batch(files, "1/2") == set(files[::2])


def test_the_collection_keeps_the_batch_and_reports_the_rest_deselected():
    items = [types.SimpleNamespace(path=f"tests/test_{name}.py") for name in "abab"]
    deselected = []
    config = types.SimpleNamespace(
        getoption=lambda name: "2/2",
        hook=types.SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)),
    )
    kept = list(items)
    pytest_collection_modifyitems(config, kept)
    assert [item.path for item in kept] == ["tests/test_b.py"] * 2
    assert [item.path for item in deselected] == ["tests/test_a.py"] * 2


@pytest.mark.parametrize("batch", ["0/2", "3/2"])
def test_a_batch_outside_its_count_is_refused(batch):
    with pytest.raises(pytest.UsageError, match="K/N"):
        files_in_batch(["tests/test_a.py"], batch)


def test_make_test_runs_every_batch():
    (line,) = re.findall(r"^TEST_BATCHES :=(.*)$", (ROOT / "Makefile").read_text(), re.M)
    batches = line.split()
    count = len(batches)
    assert batches == [f"{k}/{count}" for k in range(1, count + 1)]
