"""The three execution regimes every op is tested in: eager, tf.function, XLA.

XLA differs from eager in ways that matter (dead-branch NaN gradients, asserts
dropped, silent NaN on bad labels), so each op's tests take the ``regime``
fixture instead of copying the test three times.
"""

from __future__ import annotations

import tensorflow as tf

from tests._strategies import ALL_FLOAT_DTYPES

REGIMES = ("eager", "function", "xla")
# The graph regimes, for tests whose reference is the eager result (run eagerly
# inside the test: an eager parameter would compare eager with itself).
GRAPH_REGIMES = REGIMES[1:]


def _unknown_batch_signature(args):
    return [tf.TensorSpec([None] + list(a.shape[1:]), a.dtype) for a in args]


class Regime:
    """Wrap a function for one regime; ``name`` is ``eager``, ``function`` or ``xla``."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Regime({self.name!r})"

    def wrap(self, fn, *example_args, unknown_batch: bool = False):
        """Return ``fn`` compiled for this regime.

        With ``unknown_batch=True`` (graph regimes only) the function is traced
        with the first dimension of every argument unknown, as in ``model.fit``
        with a ``None`` batch size; pass the tensors it will be called with.
        """
        if self.name == "eager":
            return fn
        signature = None
        if unknown_batch:
            signature = _unknown_batch_signature([tf.convert_to_tensor(a) for a in example_args])
        return tf.function(fn, jit_compile=self.name == "xla", input_signature=signature)

    def run(self, fn, *args, unknown_batch: bool = False):
        """Call ``fn(*args)`` in this regime and return NumPy value(s)."""
        args = [tf.convert_to_tensor(a) for a in args]
        out = self.wrap(fn, *args, unknown_batch=unknown_batch)(*args)
        return tf.nest.map_structure(lambda t: t.numpy(), out)

    def value_and_grad(self, fn, *args, wrt=(0,), weights=None, unknown_batch: bool = False):
        """Value of ``fn(*args)`` and the gradient of its sum w.r.t. ``args[i]`` for i in ``wrt``.

        With ``weights`` the gradient is that of ``sum(weights * value)`` (an
        upstream gradient other than ones). Returns ``(value, [grad_i, ...])``
        as NumPy arrays; a ``None`` gradient (no dependence) becomes zeros.
        """
        args = [tf.convert_to_tensor(a) for a in args]

        def value_and_grads(*xs):
            with tf.GradientTape() as tape:
                for i in wrt:
                    tape.watch(xs[i])
                value = fn(*xs)
                weighted = value if weights is None else value * tf.constant(weights, value.dtype)
                total = tf.reduce_sum(
                    tf.cast(weighted, tf.float64 if value.dtype == tf.float64 else tf.float32)
                )
            grads = tape.gradient(total, [xs[i] for i in wrt])
            grads = [tf.zeros_like(xs[i]) if g is None else g for i, g in zip(wrt, grads)]
            return value, grads

        value, grads = self.wrap(value_and_grads, *args, unknown_batch=unknown_batch)(*args)
        return value.numpy(), [g.numpy() for g in grads]


def edge_dtypes(regime: Regime) -> tuple:
    """The dtypes an edge-grid test runs in ``regime``.

    Every dtype eagerly (the public ops run as XLA kernels); all but bfloat16
    in graphs (bfloat16 runs the same float32 graph as float16); float32 and
    float16 under jit_compile, which compiles the same XLA code as the eager
    kernels and adds only the graph around them (unknown batch, tape inside the
    function), which does not depend on the dtype. Each compile costs about a
    second of CPU.
    """
    if regime.name == "xla":
        return ("float32", "float16")
    if regime.name == "function":
        return ("float16", "float32", "float64")
    return ALL_FLOAT_DTYPES
