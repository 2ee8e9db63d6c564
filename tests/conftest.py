"""Shared fixtures: hypothesis profiles and the three execution regimes."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests._regimes import GRAPH_REGIMES, REGIMES, Regime  # noqa: E402

# `ci`: what `make test` runs; reproducible, bounded, no flaky deadlines.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# `thorough`: HYPOTHESIS_PROFILE=thorough make test, for long local runs.
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Fewer full garbage collections: a worker holds millions of objects (TF's traced graphs),
# and at Python's default thresholds (700, 10, 10) it spent 5% of its time in them (8-9 s of
# a worker's 170, against 3 s with these).
gc.set_threshold(20_000, 50, 50)


def pytest_addoption(parser):
    parser.addoption(
        "--file-batch",
        default=None,
        metavar="K/N",
        help="run only the K-th of N batches of the collected files (every N-th file in "
        "sorted order); `make test` runs each batch in fresh worker processes",
    )


def files_in_batch(files, batch: str) -> set:
    """The files of batch ``batch`` (``"K/N"``): every N-th of the sorted ``files`` from the
    K-th on, so that the N batches partition them."""
    index, count = (int(part) for part in batch.split("/"))
    if not 1 <= index <= count:
        raise pytest.UsageError(f"--file-batch must be K/N with 1 <= K <= N, got {batch!r}")
    return set(sorted(files)[index - 1 :: count])


def pytest_collection_modifyitems(config, items):
    """Keep the ``--file-batch`` K/N share of the files, whole files at a time.

    TensorFlow never frees the XLA executable a test compiles (a few MiB for a stable
    kernel), so a worker process that runs the whole suite grows to about 12 GiB; two
    workers filled the 24 GiB of a CI machine. ``make test`` runs the suite in two batches,
    each in new worker processes, so memory is returned (about 14.5 GiB at the peak). More
    batches took longer: a worker reuses the kernels its earlier tests compiled
    (``tests/test_float64.py`` took 73 s in a new process, 52 s after two other files).
    """
    batch = config.getoption("--file-batch")
    if not batch:
        return
    kept_files = files_in_batch({item.path for item in items}, batch)
    kept = [item for item in items if item.path in kept_files]
    config.hook.pytest_deselected(items=[item for item in items if item.path not in kept_files])
    items[:] = kept


@pytest.fixture(params=REGIMES)
def regime(request) -> Regime:
    """Run a function eagerly, under ``tf.function``, or under XLA (see tests/_regimes.py)."""
    return Regime(request.param)


@pytest.fixture(params=GRAPH_REGIMES)
def graph_regime(request) -> Regime:
    """``function`` or ``xla``, for a test that checks them against the eager result."""
    return Regime(request.param)


@pytest.fixture
def mixed_precision_policy():
    """Set a Keras dtype policy for one test and restore the old one after it.

    Use as ``mixed_precision_policy("mixed_float16")``.
    """
    previous = keras.config.dtype_policy()

    def set_policy(name):
        keras.config.set_dtype_policy(name)

    yield set_policy
    keras.config.set_dtype_policy(previous)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from a clean Keras session (names, policy leaks).

    ``free_memory=False`` skips a full ``gc.collect()`` per test (0.2-0.8 s each).
    """
    yield
    keras.utils.clear_session(free_memory=False)
    tf.config.run_functions_eagerly(False)
