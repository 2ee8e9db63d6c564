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


def _differentiable(value) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype.is_floating


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

    def forward(args, kwargs):
        return traced(*args, **kwargs)

    def vector_jacobian_product(args, kwargs, upstreams):
        # The forward pass again, with its gradient, as one computation: nothing
        # but the inputs is kept alive between the forward and the backward pass.
        watched = [v for v in (*args, *kwargs.values()) if _differentiable(v)]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            outputs = [o for o in tf.nest.flatten(traced(*args, **kwargs)) if o.dtype.is_floating]
        return tape.gradient(
            outputs, watched, output_gradients=upstreams,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )

    # Graphs name the compiled calls after the kernel: `__inference__elu_kernel_forward_42`.
    forward.__name__ = f"{fn.__name__}_forward"
    vector_jacobian_product.__name__ = f"{fn.__name__}_backward"
    compiled_functions = {}

    def compiled_function(role, args, kwargs):
        key = (
            role,
            # Eager calls and graph calls get separate functions (TF 2.21 once ran
            # eager gradients of a function a graph had differentiated with forward
            # intermediates that did not match it).
            tf.inside_function(),
            tuple(_rank(a) for a in args),
            tuple(sorted((k, _rank(v)) for k, v in kwargs.items())),
        )
        function = compiled_functions.get(key)
        if function is None:
            function = tf.function(
                forward if role == "forward" else vector_jacobian_product,
                jit_compile=True, reduce_retracing=True, autograph=False,
            )
            compiled_functions[key] = function
        return function

    def compiled(*args, **kwargs):
        names = list(kwargs)
        values = [*args, *kwargs.values()]
        positions = [i for i, v in enumerate(values) if _differentiable(v)]

        def split(flat):
            return tuple(flat[: len(args)]), dict(zip(names, flat[len(args):]))

        run_forward = compiled_function("forward", args, kwargs)
        if not positions:
            return run_forward(args, kwargs)

        @tf.custom_gradient
        def call(*inputs):
            flat = list(values)
            for position, tensor in zip(positions, inputs):
                flat[position] = tensor
            call_args, call_kwargs = split(flat)
            outputs = run_forward(call_args, call_kwargs)

            def grad(*upstreams):
                floating = [o for o in tf.nest.flatten(outputs) if o.dtype.is_floating]
                upstreams = [
                    tf.zeros_like(o) if u is None else u for u, o in zip(upstreams, floating)
                ]
                run_backward = compiled_function("backward", call_args, call_kwargs)
                return run_backward(call_args, call_kwargs, upstreams)

            return outputs, grad

        return call(*[values[p] for p in positions])

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
