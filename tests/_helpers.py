"""Small helpers the test files share: finiteness checks and dtype casts of NumPy data.

(The execution regimes are in ``_regimes``, the hypothesis data generators in
``_strategies``, the mpmath references in ``_reference``.)
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

from tests._reference import to_numpy_dtype

# The TensorFlow release whose XLA CPU backend the kernels' forms were measured on
# (benchmarks/results): its optimized programs are what the structure tests assert.
MEASURED_TF = (2, 21)

# For tests of how XLA compiles a kernel (which reductions, how many full-size buffers): an
# implementation detail of one XLA version, which other versions do differently (TF 2.16's
# keeps a float64 sum's terms in a buffer and merges a per-sample sum into the batch sum).
# Numerics and speed are tested on every version; these only on the measured one.
measured_xla_only = pytest.mark.skipif(
    tuple(int(part) for part in tf.__version__.split(".")[:2]) != MEASURED_TF,
    reason="asserts the optimized XLA program of TF %d.%d, the version the forms were "
    "measured on" % MEASURED_TF,
)


def is_finite(a) -> np.ndarray:
    """Elementwise ``isfinite`` of any float array (bfloat16 included, via float64)."""
    return np.isfinite(np.asarray(a, dtype=np.float64))


def all_finite(a) -> bool:
    """Whether every element of ``a`` is finite."""
    return bool(np.all(is_finite(a)))


def as_dtype(values, dtype) -> np.ndarray:
    """``values`` rounded once to ``dtype`` (a name, ``tf.DType`` or NumPy dtype)."""
    return np.asarray(values, dtype=np.float64).astype(to_numpy_dtype(dtype))


def compiled_calls(graph):
    """The XLA-compiled function calls in ``graph`` (kernels' forward and backward calls)."""
    return [
        op
        for op in graph.get_operations()
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
        and "_XlaMustCompile" in op.node_def.attr
        and op.get_attr("_XlaMustCompile")
    ]


def compiled_function_names(graph):
    """The names of the compiled functions ``graph`` calls, without their trace numbers
    (``__inference__elu_kernel_forward_691``: ``__inference__elu_kernel_forward``)."""
    return [op.node_def.attr["f"].func.name.rsplit("_", 1)[0] for op in compiled_calls(graph)]


def nan_through_the_clamp_as_one(monkeypatch, module):
    """Patch ``module``'s ``float64_with_stand_ins`` (a clamp) to return 1 for NaN, as a clamp
    may on some CPUs (``_internal/clip.py``): what carries NaN must not rest on it."""
    widened = module.float64_with_stand_ins

    def with_nan_as_one(x):
        wide = widened(x)
        return tf.where(tf.math.is_nan(x), tf.ones_like(wide), wide)

    monkeypatch.setattr(module, "float64_with_stand_ins", with_nan_as_one)


def optimized_hlo(fn, *args, entry_only=True):
    """``fn``'s optimized XLA program for ``args``: its entry computation, or all of it."""
    hlo = tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(
        stage="optimized_hlo"
    )
    return hlo[hlo.index("ENTRY"):] if entry_only else hlo


def full_size_arrays(fn, *args, everywhere=False):
    """How many float32 or float64 arrays of the last argument's shape the entry of
    ``fn``'s optimized XLA program writes (``everywhere``: also its called computations,
    such as a conditional's branches)."""
    program = optimized_hlo(fn, *args, entry_only=not everywhere)
    shape = ",".join(str(d) for d in args[-1].shape)
    return len(re.findall(rf"= f(?:32|64)\[{shape}\][^=]* fusion\(", program))
