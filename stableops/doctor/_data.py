"""Taking a small, deterministic sample of the user's data.

The doctor runs eagerly, outside XLA, layer by layer; a sample of a few
batches is enough to see scale, outliers, saturation and gradient size, and
keeps ``diagnose`` fast on any data set.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from stableops.doctor._quiet import quiet_native_stderr


def to_numpy(value):
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)


def flatten(structure):
    """Leaves of a nested structure (dict/list/tuple), ``None`` dropped."""
    return [leaf for leaf in tf.nest.flatten(structure) if leaf is not None]


def _num_samples(x) -> int:
    leaves = flatten(x)
    if not leaves:
        raise ValueError("diagnose needs at least one input array, got x=None")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if -1 in sizes:
        raise ValueError("every input array needs a leading batch dimension")
    if len(sizes) != 1:
        raise ValueError(f"input arrays have different numbers of samples: {sorted(sizes)}")
    return sizes.pop()


def _unpack(element):
    """(x, y) from a dataset element: ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, w)``."""
    if isinstance(element, tuple):
        if len(element) == 1:
            return element[0], None
        return element[0], element[1]
    return element, None


def _concat(parts):
    return tf.nest.map_structure(lambda *leaves: np.concatenate(leaves, axis=0), *parts)


def _check_batched(x, y):
    """``ValueError`` unless a dataset element is a batch: every leaf has rows, as many in each.

    ``model.fit`` does not batch a dataset: one that yields single samples
    (``from_tensor_slices`` without ``.batch``) fails there with a shape error.
    """
    leaves = flatten(x) + flatten(y)
    rows = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in leaves}
    if None in rows or len(rows) > 1:
        shapes = ", ".join(str(np.shape(leaf)) for leaf in leaves)
        raise ValueError(
            "the dataset yields single samples, not batches (an element's arrays have shapes "
            f"{shapes}): batch it, e.g. dataset.batch(32); model.fit takes each element as a batch"
        )


def sample_from_dataset(dataset, max_samples):
    """Concatenate the first batches of a ``tf.data.Dataset`` up to ``max_samples``.

    Returns ``(x, y, sizes, ended)``: the rows of each batch read, and whether
    they are all of the dataset's batches.
    """
    xs, ys, sizes, ended = [], [], [], True
    for element in dataset:
        x, y = _unpack(element)
        xs.append(tf.nest.map_structure(to_numpy, x))
        ys.append(None if y is None else tf.nest.map_structure(to_numpy, y))
        _check_batched(xs[-1], ys[-1])
        sizes.append(_num_samples(xs[-1]))
        if sum(sizes) >= max_samples:
            ended = False
            break
    if not xs:
        raise ValueError("the dataset is empty")
    x = _concat(xs)
    y = None if any(part is None for part in ys) else _concat(ys)
    return x, y, sizes, ended


def _last_batch_rows(dataset, sizes, ended):
    """Rows in the dataset's last batch: read, or fetched by its index; ``None`` if unknown.

    A dataset longer than the sample is read at its last index only where tf.data
    has random access to it (sliced tensors, batched, ...: no element before it is
    produced). It is not read to its end for this: for a pipeline that maps its
    elements that is a whole epoch. An infinite (repeated) dataset has no last batch.
    """
    if ended:
        return sizes[-1]
    count = int(dataset.cardinality())
    if count < 1:  # tf.data.INFINITE_CARDINALITY (-1) or UNKNOWN_CARDINALITY (-2)
        return None
    try:
        with quiet_native_stderr():
            last = tf.data.experimental.at(dataset, count - 1)
    except (tf.errors.OpError, AttributeError, TypeError):  # no random access to this one
        return None
    return _num_samples(tf.nest.map_structure(to_numpy, _unpack(last)[0]))


def sample_dataset(dataset, y, *, max_samples: int):
    """``take_sample`` for a ``tf.data.Dataset``, and its batches as fit() sees them.

    Returns ``(x, y, n_sampled, (batch_size, last_batch_rows, n_total))``: the
    first batch's rows, the last batch's (``None`` when unknown) and the
    dataset's rows (``None`` unless the sample holds them all).
    """
    if y is not None:
        raise ValueError(
            "pass the labels inside the dataset, not as `y`, when `x` is a tf.data.Dataset"
        )
    x, y, sizes, ended = sample_from_dataset(dataset, max_samples)
    n = _num_samples(x)
    batching = (sizes[0], _last_batch_rows(dataset, sizes, ended), n if ended else None)
    return x, y, n, batching


def take_sample(x, y, *, max_samples: int, seed: int = 0, keep=(), return_rows: bool = False):
    """Return ``(x_sample, y_sample, n_total)`` with at most ``max_samples`` rows.

    Arrays (NumPy, tensors, lists; nested in dicts/lists) are subsampled
    without replacement with a fixed seed (so repeated calls see the same
    rows), keeping the original order; the rows ``keep`` (up to half the
    sample) are always in it. A ``tf.data.Dataset`` contributes its first
    batches; it must then carry the labels itself.

    With ``return_rows=True``, also the row of ``x`` each sample row came from
    (a dataset's rows counted in the order it yields them), as a fourth value:
    findings name samples by these, the user's rows, not by their place in
    the sample.

    >>> _, _, n, rows = take_sample(np.arange(10.0), None, max_samples=4, keep=[7],
    ...                             return_rows=True)
    >>> n, 7 in rows, len(rows)
    (10, True, 4)
    """
    if isinstance(x, tf.data.Dataset):
        x, y, n_total, _ = sample_dataset(x, y, max_samples=max_samples)
    else:
        x = tf.nest.map_structure(to_numpy, x)
        y = None if y is None else tf.nest.map_structure(to_numpy, y)
        n_total = _num_samples(x)
        if y is not None and _num_samples(y) != n_total:
            raise ValueError(f"x has {n_total} samples but y has {_num_samples(y)}")
        if n_total == 0:
            raise ValueError("x is empty (0 samples): diagnose needs at least one")
    n = _num_samples(x)
    rows = np.arange(n, dtype=np.int64)
    if n > max_samples:
        rows = _sample_rows(n, max_samples, seed, keep)
        pick = lambda leaf: leaf[rows]  # noqa: E731
        x = tf.nest.map_structure(pick, x)
        y = None if y is None else tf.nest.map_structure(pick, y)
    if return_rows:
        return x, y, n_total, rows
    return x, y, n_total


def _sample_rows(n, size, seed, keep) -> np.ndarray:
    """``size`` of ``n`` row indices, sorted: the first of ``keep`` (up to half), then random."""
    keep = np.unique(np.asarray(keep, dtype=np.int64))[: size // 2]
    rng = np.random.default_rng(seed)
    if not keep.size:
        return np.sort(rng.choice(n, size=size, replace=False))
    rest = rng.choice(np.setdiff1d(np.arange(n), keep), size=size - keep.size, replace=False)
    return np.sort(np.concatenate([keep, rest]))


def nonfinite_rows(structure) -> np.ndarray:
    """Sorted indices of the rows where any floating-point leaf of ``structure`` is NaN or inf."""
    rows = set()
    for leaf in flatten(structure):
        leaf = np.asarray(leaf)
        if is_float(leaf) and leaf.ndim:
            bad = ~np.isfinite(leaf.astype(np.float32))
            rows.update(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)).tolist())
    return np.asarray(sorted(rows), dtype=np.int64)


def batches(x, y, batch_size: int):
    """Yield ``(start, x_batch, y_batch)`` slices of a sample."""
    n = _num_samples(x)
    for start in range(0, n, batch_size):
        part = lambda leaf: leaf[start : start + batch_size]  # noqa: E731
        yield (
            start,
            tf.nest.map_structure(part, x),
            None if y is None else tf.nest.map_structure(part, y),
        )


def num_samples(x) -> int:
    return _num_samples(x)


def is_float(values) -> bool:
    dtype = np.asarray(values).dtype
    return bool(np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16")


def values_per_row(x) -> int:
    """Values in one sample across all inputs (for sizing the data-check sample)."""
    total = 0
    for leaf in flatten(x):
        shape = np.shape(leaf)
        total += int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return max(total, 1)


def count_nonfinite(x, chunk_rows: int = 65536):
    """Per input leaf, per feature (last axis): how many values are NaN or inf.

    Scans every row, a chunk at a time (so no full-size temporary); ``None``
    for inputs that are not floating point.
    """
    counts = []
    for leaf in flatten(x):
        if not is_float(leaf):
            counts.append(None)
            continue
        n = int(np.shape(leaf)[0])
        total = None
        for start in range(0, n, chunk_rows):
            chunk = np.asarray(leaf[start : start + chunk_rows], dtype=np.float32)
            bad = ~np.isfinite(chunk)
            bad = bad.reshape(-1, bad.shape[-1] if bad.ndim > 1 else 1).sum(axis=0)
            total = bad if total is None else total + bad
        counts.append(total if total is not None else np.zeros(1, np.int64))
    return counts
