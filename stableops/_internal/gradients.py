"""``custom_gradient``: ``tf.custom_gradient`` without its memory leak in graphs.

In a graph (a ``tf.function`` being traced), ``tf.custom_gradient`` registers each
call's gradient function in TF's global gradient registry under a new name and
never removes it. The function's closure holds the call's tensors, and so the
whole graph: every trace of a ``tf.function`` that called a custom gradient stayed
in memory for the life of the process (a retrace of ``model.fit``'s step, each
trial of a hyperparameter search, each test).

``custom_gradient`` calls ``tf.custom_gradient`` and then moves the registered
function onto the graph that holds the call: the registry keeps a small function
that finds it there by name, and its entry is removed when the graph is freed.
Eagerly, where nothing is registered, it is ``tf.custom_gradient``. Where TF's
internals are not as expected, the registration is left as TF made it.
"""

from __future__ import annotations

import functools
import weakref

import tensorflow as tf

try:  # the registry that tf.custom_gradient adds to (TF 2.16-2.21)
    from tensorflow.python.framework import ops as _tf_ops

    _REGISTRY = _tf_ops._gradient_registry._registry
    _FUNCTION_KEY = "type"  # tensorflow.python.framework.registry._TYPE_TAG
except (ImportError, AttributeError):  # pragma: no cover - a TF without it
    _REGISTRY = None

_GRAPH_ATTRIBUTE = "_stableops_custom_gradients"


def _gradient_kept_on_graph(name, graph_reference, op, *upstreams):
    """The gradient function registered as ``name``, from the graph that holds its call.

    The graph comes from a weak reference, not from ``op``: a SavedModel traces every
    registered gradient function with ``op=None``.
    """
    return getattr(graph_reference(), _GRAPH_ATTRIBUTE)[name](op, *upstreams)


def _keep_on_graph(outputs) -> None:
    """Move the registry's gradient function of the call that made ``outputs`` onto its graph."""
    tensors = [t for t in tf.nest.flatten(outputs) if isinstance(t, tf.Tensor)]
    if _REGISTRY is None or not tensors:
        return
    op = tensors[0].op
    try:
        name = op.get_attr("_gradient_op_type").decode()
    except (ValueError, AttributeError):  # not the IdentityN op that tf.custom_gradient adds
        return
    entry = _REGISTRY.get(name)
    if not isinstance(entry, dict) or _FUNCTION_KEY not in entry:
        return
    graph = op.graph
    if not hasattr(graph, _GRAPH_ATTRIBUTE):
        setattr(graph, _GRAPH_ATTRIBUTE, {})
    getattr(graph, _GRAPH_ATTRIBUTE)[name] = entry[_FUNCTION_KEY]
    entry[_FUNCTION_KEY] = functools.partial(_gradient_kept_on_graph, name, weakref.ref(graph))
    weakref.finalize(graph, _REGISTRY.pop, name, None)


def custom_gradient(f):
    """``tf.custom_gradient(f)`` whose graph calls free their graph with it (module docstring)."""
    decorated = tf.custom_gradient(f)

    @functools.wraps(f)
    def call(*args, **kwargs):
        outputs = decorated(*args, **kwargs)
        if not tf.executing_eagerly():
            _keep_on_graph(outputs)
        return outputs

    return call
