"""Limits: this machine's memory bandwidth, and how close each elementwise kernel gets to it.

Bandwidth is measured three ways on arrays far larger than the caches, each
counted STREAM-style as bytes read + bytes written:

* ``numpy_copy``: ``np.copyto(dst, src)`` (one thread);
* ``numpy_copy_fresh``: ``np.copy(src)`` into a new array, so the cost of
  faulting in fresh pages (which every new TF output buffer pays) shows;
* ``tf_eager_scale``: ``x * 2`` as one eager TF (Eigen) kernel, all cores;
* ``xla_scale``: ``x * 2`` under ``tf.function(jit_compile=True)``.

The best of them (max over methods of the best repetition, fresh-buffer copy
excluded) is the machine's practical limit. A kernel's *compulsory traffic*
is every input read once plus its value and gradient written once
(``speed.py`` records it per timing); at a large size ``traffic / time``
over that limit is the fraction of the memory limit the kernel reaches.
Because the 2 cores are shared, the speed run also times a numpy copy of the
same traffic in the same rounds as the kernels; ``fraction_of_copy`` is the
paired, noise-robust version. Anything well below 1 is compute- or
overhead-bound (or moves the data more than once).
"""

from __future__ import annotations

import time

import numpy as np

METHOD = (
    "bytes read + bytes written per second on a large float32 array, best of several repetitions; "
    "limit = max over numpy_copy (1 thread), tf_eager_scale and xla_scale (x * 2, all cores)"
)


def _best_and_median(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm: page in, compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def measure_bandwidth(n_bytes: int, repeats: int) -> dict:
    """Copy/scale bandwidth over ``n_bytes`` float32 arrays: the ``bandwidth`` section."""
    import tensorflow as tf

    n = max(1024, n_bytes // 4)
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    moved = 2 * src.nbytes  # one read, one write

    x = tf.convert_to_tensor(src)
    xla_scale = tf.function(lambda t: t * 2.0, jit_compile=True, autograph=False)
    methods = {
        "numpy_copy": lambda: np.copyto(dst, src),
        # np.copy allocates its result: fresh pages are faulted in (and zeroed by the kernel)
        # on first touch, as every new TF output buffer is. Not counted in the limit.
        "numpy_copy_fresh": lambda: np.copy(src),
        "tf_eager_scale": lambda: x * 2.0,
        "xla_scale": lambda: xla_scale(x),
    }
    results = {}
    for name, fn in methods.items():
        best, median = _best_and_median(fn, repeats)
        results[name] = {"best_gbps": moved / best / 1e9, "median_gbps": moved / median / 1e9}
    limit = max(r["best_gbps"] for name, r in results.items() if name != "numpy_copy_fresh")
    return {
        "method": METHOD,
        "array_bytes": int(src.nbytes),
        "methods": results,
        "limit_gbps": limit,
    }


def limits_table(speed: dict, bandwidth: dict | None, cases, min_size: int) -> list[dict]:
    """How close every elementwise timing at ``size >= min_size`` gets to the memory limit.

    ``fraction_of_copy``: the median over rounds of (kernel traffic rate /
    rate of the numpy copy timed in the same round), the noise-robust figure;
    ``fraction_of_limit``: against the start-of-run bandwidth section.
    """
    from benchmarks.speed import COPY

    elementwise = {c.name for c in cases if c.elementwise}
    timings = speed.get("timings", [])
    copies = {
        (t["case"], t["dtype"], t["size"]): t for t in timings if (t["impl"], t["mode"]) == COPY
    }
    limit = bandwidth["limit_gbps"] if bandwidth else None
    rows = []
    for timing in timings:
        if (
            timing["case"] not in elementwise
            or timing["size"] < min_size
            or (timing["impl"], timing["mode"]) == COPY
        ):
            continue
        seconds = timing["seconds"]["median"]
        achieved = timing["bytes"] / seconds / 1e9
        copy = copies.get((timing["case"], timing["dtype"], timing["size"]))
        row = {
            "case": timing["case"],
            "dtype": timing["dtype"],
            "size": timing["size"],
            "mode": timing["mode"],
            "impl": timing["impl"],
            "bytes": timing["bytes"],
            "seconds": seconds,
            "achieved_gbps": achieved,
            "fraction_of_limit": achieved / limit if limit else None,
            "seconds_at_limit": timing["bytes"] / (limit * 1e9) if limit else None,
        }
        if copy:
            per_round = [
                (timing["bytes"] / k) / (copy["bytes"] / c)
                for k, c in zip(timing["samples"], copy["samples"])
            ]
            row["copy_gbps"] = copy["bytes"] / copy["seconds"]["median"] / 1e9
            row["fraction_of_copy"] = float(np.median(per_round))
        rows.append(row)
    return rows
