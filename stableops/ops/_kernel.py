"""Eager calls run as XLA-compiled kernels; traced calls fold into the caller.

Keras's losses, called eagerly, run op by op: one kernel launch and one
intermediate buffer per elementwise op. ``xla_kernel`` compiles the whole op
with XLA instead, traced once per dtype and keyword arguments (shapes, rank
included, are generalized with ``reduce_retracing``, so a changing batch size
does not retrace; XLA still compiles each new concrete shape once). Inside a
``tf.function`` or ``model.fit`` the plain Python function is used, so the op
folds into the caller's graph and the caller decides about XLA.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf


def _tensor_if_array(value):
    # Lists and NumPy arrays would otherwise be traced as Python constants
    # (one retrace per distinct value); tensors trace once per dtype and rank.
    if isinstance(value, (list, np.ndarray, np.generic)):
        return tf.convert_to_tensor(value)
    return value


def xla_kernel(fn):
    """Decorate a pure TF function so eager calls run it XLA-compiled.

    Non-tensor keyword arguments (``axis``, ``from_logits``, ...) are part of
    the compiled function's signature: each distinct value compiles once.
    The undecorated function stays available as ``.python_function`` and the
    compiled one as ``.compiled``.
    """
    compiled = tf.function(fn, jit_compile=True, reduce_retracing=True, autograph=False)
    # A caller's tf.function converts called code with AutoGraph, which breaks the
    # closures of custom gradients; kernels are plain TF and need no conversion.
    inline = tf.autograph.experimental.do_not_convert(fn)

    @functools.wraps(fn)
    def kernel(*args, **kwargs):
        if tf.inside_function():
            return inline(*args, **kwargs)
        args = tuple(_tensor_if_array(a) for a in args)
        kwargs = {k: _tensor_if_array(v) for k, v in kwargs.items()}
        return compiled(*args, **kwargs)

    kernel.python_function = fn
    kernel.compiled = compiled
    return kernel
