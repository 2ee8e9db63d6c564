"""The machine and software a run measured: CPU, cores, memory, versions, float16 support,
whether TF runs oneDNN's kernels."""

from __future__ import annotations

import os
import platform
import subprocess

HALF_PRECISION_FLAGS = ("f16c", "avx512_fp16", "avx512fp16", "amx_fp16", "avx512_bf16", "amx_bf16")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if flags and model:
                    break
    except OSError:
        pass
    return model, flags


def float16_support(flags: set[str]) -> dict:
    """What this CPU does for float16: native arithmetic, conversion only, or software."""
    native = bool(flags & {"avx512_fp16", "avx512fp16", "amx_fp16"})
    convert = "f16c" in flags
    if native:
        verdict = "native float16 arithmetic (AVX512-FP16/AMX-FP16)"
    elif convert:
        verdict = (
            "conversion only (F16C): no float16 arithmetic units; TF and XLA compute float16 by "
            "converting "
            "to float32 and back, so float16 saves memory traffic, not arithmetic"
        )
    else:
        verdict = "no hardware float16 support: conversions are done in software"
    return {"native_arithmetic": native, "hardware_conversion": convert, "verdict": verdict}


def onednn_enabled() -> bool | None:
    """Whether TF runs oneDNN's CPU kernels in this process (None: unknown).

    On Linux TF turns them on by default only on CPUs with AVX-512 VNNI/BF16,
    AVX-VNNI or AMX (``TF_ENABLE_ONEDNN_OPTS`` overrides that). They change
    Keras's side of a ratio (``softmax`` is one oneDNN pass over each row with
    them, Eigen's kernel without) and which memory method works
    (``memory.peak_method``).
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _git_commit() -> str:
    import stableops

    # The commit of the stableops being measured (the harness may run from a copy elsewhere).
    here = os.path.dirname(os.path.dirname(os.path.abspath(stableops.__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--", "stableops"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' + uncommitted stableops changes' if dirty else ''}" if commit else "unknown"


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return None


def describe() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    import stableops

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "simd": sorted(flags & {"avx", "avx2", "fma", "avx512f", *HALF_PRECISION_FLAGS}),
        "float16": float16_support(flags),
        "onednn": onednn_enabled(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "stableops": stableops.__version__,
        "commit": _git_commit(),
        "tf_threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
