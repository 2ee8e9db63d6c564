"""Every kernel call runs as one XLA computation, in every regime.

Keras's losses and layers run op by op in a plain ``tf.function`` (what
``model.fit`` runs without a GPU): one kernel launch and one intermediate
buffer per elementwise op, and a stable formula has several times more ops
than a naive one. ``xla_kernel`` compiles the whole op, with its backward
pass, as one XLA computation instead:

- called eagerly, it runs the compiled function;
- called while a ``tf.function`` is being traced (``model.fit``, a user's
  ``tf.function``, a SavedModel), it calls the same compiled function, which
  becomes one XLA cluster in the caller's graph; its gradient function is
  compiled too;
- called while another kernel or a ``jit_compile=True`` function is being
  traced, it is inlined: nested kernels make one computation, and the caller's
  XLA computation takes the kernel in whole.

Each compiled function is traced once per dtype, non-tensor keyword argument
and *rank* of its tensor arguments: there is one ``tf.function`` per rank
signature (and per context, eager or graph: see ``compiled``), and within it ``reduce_retracing`` generalizes every dimension, so
a changing batch size does not retrace (XLA still compiles each new concrete
shape once) while the rank stays static for the kernel's Python code
(``len(x.shape)``, canonical axes). Arguments of unknown rank (rare, only in
graphs) run the Python function inline.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import tensorflow as tf

try:  # how tf.function itself tells that it is traced inside an XLA computation
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla_context
except ImportError:  # pragma: no cover - a TF without it: treat every graph as plain
    def _in_xla_context(graph):
        return False

_tracing = threading.local()


def _tensor_if_array(value):
    # Lists and NumPy arrays would otherwise be traced as Python constants
    # (one retrace per distinct value); tensors trace once per dtype and rank.
    if isinstance(value, (list, np.ndarray, np.generic)):
        return tf.convert_to_tensor(value)
    return value


def _rank(value):
    """The static rank of a tensor argument, ``-1`` when unknown, ``None`` for non-tensors."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        rank = value.shape.rank
        return -1 if rank is None else rank
    return None


def _inline_here() -> bool:
    """Whether to run the Python function in place: inside another kernel's trace, or
    inside a ``jit_compile=True`` function, whose XLA computation takes the kernel in
    whole. (A nested compiled call there would be inlined by XLA all the same, but XLA
    then treats the arguments behind any dynamic-shape computation in it, such as
    ``tf.gather(..., batch_dims=1)``, as compile-time constants and recompiles the
    caller at every step: 10 s per epoch instead of 0.06 s for a sparse loss.)"""
    if getattr(_tracing, "depth", 0) > 0:
        return True
    return tf.inside_function() and _in_xla_context(tf.compat.v1.get_default_graph())


def xla_kernel(fn):
    """Decorate a pure TF function so that every call runs it XLA-compiled.

    Non-tensor keyword arguments (``axis``, ``from_logits``, ...) are part of
    the compiled function's signature: each distinct value compiles once.
    The undecorated function stays available as ``.python_function``;
    ``.compiled(*args, **kwargs)`` calls the compiled function for the ranks of
    the given tensors, and ``.tracing_count()`` counts its traces (all ranks).
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        _tracing.depth = getattr(_tracing, "depth", 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _tracing.depth -= 1

    # A caller's tf.function converts called code with AutoGraph, which breaks the
    # closures of custom gradients; kernels are plain TF and need no conversion.
    inline = tf.autograph.experimental.do_not_convert(fn)
    compiled_functions = {}

    def compiled(*args, **kwargs):
        key = (
            # Eager calls and graph calls get separate functions: once a graph has
            # taken its gradient, TF (2.21) runs later eager gradients of the same
            # XLA function with forward intermediates that do not match it (NaN
            # where a tf.where guarded a division).
            tf.inside_function(),
            tuple(_rank(a) for a in args),
            tuple(sorted((k, _rank(v)) for k, v in kwargs.items())),
        )
        function = compiled_functions.get(key)
        if function is None:
            function = tf.function(
                traced, jit_compile=True, reduce_retracing=True, autograph=False
            )
            compiled_functions[key] = function
        return function(*args, **kwargs)

    @functools.wraps(fn)
    def kernel(*args, **kwargs):
        if _inline_here():
            return inline(*args, **kwargs)
        args = tuple(_tensor_if_array(a) for a in args)
        kwargs = {k: _tensor_if_array(v) for k, v in kwargs.items()}
        if any(_rank(v) == -1 for v in (*args, *kwargs.values())):
            return inline(*args, **kwargs)
        return compiled(*args, **kwargs)

    def tracing_count():
        return sum(f.experimental_get_tracing_count() for f in compiled_functions.values())

    kernel.python_function = fn
    kernel.compiled = compiled
    kernel.tracing_count = tracing_count
    return kernel
