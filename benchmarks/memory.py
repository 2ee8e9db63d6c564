"""Memory: peak memory of one forward + backward, stableops against Keras.

Eager, plain ``tf.function`` and ``tf.function(jit_compile=True)`` (the
targets: under XLA at most 1.25x Keras's, in a plain ``tf.function`` at most
Keras's). Inputs are created and the contestant is run once at the measured
shape first, unless the speed run already did (compilation is not counted).
``peak_extra_bytes`` then measures one call with the first method that works:

* ``allocator``: TensorFlow's CPU allocator statistics. With oneDNN on (on Linux
  TF's default on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX; see
  ``environment.onednn_enabled``), ``tf.config.experimental.reset_memory_stats("CPU:0")``
  and ``get_memory_info("CPU:0")`` work: the peak bytes held by TF tensors
  during the call over those held before it, XLA's temporary buffers
  included (checked: a jit-compiled matmul-exp-sum shows its 4 MiB
  temporary). oneDNN's allocator pools freed buffers, which hides them from
  the process's resident set, so this is the method that sees small models.
* ``rss``: with oneDNN off TF has no CPU allocator statistics ("Cannot reset
  memory stats"); Linux's peak-RSS reset instead: freed heap memory is handed
  back to the OS (``malloc_trim``), ``/proc/self/clear_refs`` gets ``5``
  (resets ``VmHWM`` to the current RSS), one call runs, and ``VmHWM`` minus
  the RSS before it is the peak. Sound for large buffers (glibc serves them
  with ``mmap`` and unmaps them when freed); a pool that keeps freed memory
  resident makes it read low.

Either way the peak covers every buffer alive at the worst moment, the value
and gradient returned included, the inputs not. Where neither works the
section says so and measures nothing.
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np

from benchmarks.cases import available_impls
from benchmarks.speed import contestant, warm_up

MODES = ("eager", "function", "xla")
METHODS = {
    "allocator": "peak bytes held by TF's CPU allocator during the call over those held before it "
    "(tf.config.experimental.get_memory_info; XLA temporaries included)",
    "rss": "peak RSS during the call over the RSS just before it (Linux: /proc/self/clear_refs "
    "resets VmHWM)",
}
METHOD = "{}; inputs excluded, value and gradient included; warmed up first"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _allocator_bytes() -> int:
    """Bytes TF's CPU allocator holds now; resets its peak to that."""
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("CPU:0")
    return tf.config.experimental.get_memory_info("CPU:0")["current"]


def peak_method() -> str | None:
    """The first of ``METHODS`` that works in this process, or None."""
    try:
        _allocator_bytes()
        return "allocator"
    except ValueError:  # "Cannot reset memory stats for device 'CPU:0'" (oneDNN off)
        pass
    try:
        _reset_peak()
        _status_kib("VmHWM")
        return "rss"
    except OSError:
        return None


def _release_free_heap() -> None:
    # glibc keeps freed small and medium blocks for reuse; a call that reuses them would not
    # raise the RSS, so hand them back to the OS first (malloc_trim; a no-op elsewhere).
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn, inputs, method: str) -> int:
    """Peak memory above the current while ``fn(*inputs)`` runs (outputs included)."""
    if method == "allocator":
        import tensorflow as tf

        before = _allocator_bytes()
        out = fn(*inputs)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        del out
        return max(0, peak - before)
    _release_free_heap()
    _reset_peak()
    before = _status_kib("VmRSS")
    out = fn(*inputs)
    peak = _status_kib("VmHWM")
    del out
    return max(0, peak - before) * 1024


def run_memory(cases, availability, config, log=print) -> dict:
    import tensorflow as tf

    method = peak_method()
    if method is None:
        return {"method": "none", "supported": False, "rows": []}
    rows = []
    size = config.memory_size
    for case in cases:
        impls = available_impls(case, availability)
        if not impls:
            continue
        # An op's gradient is the gradient of its sum (see speed.timed_inputs).
        arrays = case.make_inputs(size, np.dtype("float32"), np.random.default_rng(7))
        inputs = [tf.convert_to_tensor(a) for a in arrays]
        input_bytes = int(sum(a.nbytes for a in arrays))
        gc.collect()
        for impl in impls:
            for mode in MODES:
                warm_up(case, impl, mode, inputs)  # compile and first-call setup are not counted
                extra = peak_extra_bytes(contestant(case, impl, mode, inputs), inputs, method)
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
    method_text = METHOD.format(METHODS[method])
    return {
        "method": method_text,
        "peak_method": method,
        "supported": True,
        "size": size,
        "rows": rows,
    }
