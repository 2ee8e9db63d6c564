"""Memory: peak resident memory of one forward + backward, stableops against Keras.

``tf.config.experimental.get_memory_info`` is not available for the CPU
device (TF raises "Allocator stats not available"), so the peak is measured
on the process instead, with Linux's peak-RSS reset:

1. inputs are created and the contestant is run once at the measured
   shape, unless the speed run already did (compilation is not counted);
2. freed heap memory is handed back to the OS (``malloc_trim``, so the call
   cannot reuse resident pages unseen), ``/proc/self/clear_refs`` gets ``5``,
   which resets ``VmHWM`` (peak RSS) to the current RSS, and the current
   ``VmRSS`` is read;
3. one forward + backward runs; ``VmHWM - VmRSS(before)`` is the peak extra
   memory it needed: every intermediate buffer alive at the worst moment,
   plus the value and gradient it returns.

Freed large buffers go back to the OS (glibc serves them with ``mmap``), and
``malloc_trim`` returns the rest, so one measurement does not hide the next.
Where ``clear_refs`` is not writable the section says so and measures
nothing.
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np

from benchmarks.cases import available_impls
from benchmarks.speed import contestant, warm_up

MODES = ("eager", "xla")
METHOD = (
    "peak RSS of one forward + backward over the RSS just before it (Linux: /proc/self/clear_refs "
    "resets VmHWM); inputs excluded, value and gradient included; warmed up first"
)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_supported() -> bool:
    try:
        _reset_peak()
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    # glibc keeps freed small and medium blocks for reuse; a call that reuses them would not
    # raise the RSS, so hand them back to the OS first (malloc_trim; a no-op elsewhere).
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn, inputs) -> int:
    """Peak RSS above the current RSS while ``fn(*inputs)`` runs (outputs included)."""
    _release_free_heap()
    _reset_peak()
    before = _status_kib("VmRSS")
    out = fn(*inputs)
    peak = _status_kib("VmHWM")
    del out
    return max(0, peak - before) * 1024


def run_memory(cases, availability, config, log=print) -> dict:
    import tensorflow as tf

    if not peak_rss_supported():
        return {"method": METHOD, "supported": False, "rows": []}
    rows = []
    size = config.memory_size
    for case in cases:
        impls = available_impls(case, availability)
        if not impls:
            continue
        arrays = case.make_inputs(size, np.dtype("float32"), np.random.default_rng(7))
        inputs = [tf.convert_to_tensor(a) for a in arrays]
        input_bytes = int(sum(a.nbytes for a in arrays))
        gc.collect()
        for impl in impls:
            for mode in MODES:
                warm_up(case, impl, mode, inputs)  # compile and first-call setup are not counted
                extra = peak_extra_bytes(contestant(case, impl, mode, inputs), inputs)
                rows.append(
                    {
                        "case": case.name,
                        "impl": impl.name,
                        "mode": mode,
                        "size": size,
                        "dtype": "float32",
                        "input_bytes": input_bytes,
                        "peak_extra_bytes": extra,
                    }
                )
        log(f"  memory {case.name:<40} 2^{int(np.log2(size))}")
        del inputs
    return {"method": METHOD, "supported": True, "size": size, "rows": rows}
