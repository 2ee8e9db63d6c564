"""Every kernel call is one XLA computation with a compiled backward pass, in every regime.

``model.fit`` without ``jit_compile`` (its default on a machine without a GPU) and a
user's plain ``tf.function`` must call the kernels' compiled functions, not inline
their dozens of small ops; the export test in test_saving checks SavedModels.
"""

import keras
import numpy as np
import tensorflow as tf

import stableops
from stableops.layers import ELU, LeakyReLU


def _model():
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8), ELU(),
        keras.layers.Dense(8), LeakyReLU(),
        keras.layers.Dense(3),
    ])


def _data(n=50):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, :3].argmax(axis=1)).astype("int32")
    return x, y


def _xla_calls(graph):
    """The XLA-compiled function calls in ``graph`` (forward and gradient)."""
    return [
        op for op in graph.get_operations()
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
        and "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")
    ]


def _function_names(graph):
    """The names of the compiled functions ``graph`` calls, e.g. ``__inference__elu_kernel_forward_691``."""
    return " ".join(op.node_def.attr["f"].func.name for op in _xla_calls(graph))


def test_a_plain_tf_function_step_calls_compiled_kernels_forward_and_backward():
    model = _model()
    loss_fn = stableops.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        return loss, tape.gradient(loss, model.trainable_variables)

    x, y = _data()
    graph = step.get_concrete_function(
        tf.TensorSpec([None, 6]), tf.TensorSpec([None], tf.int32)
    ).graph
    names = _function_names(graph)
    # ELU and the loss each run forward and backward as compiled calls.
    for kernel in ("_elu_kernel", "_sparse_categorical_crossentropy_kernel"):
        assert f"{kernel}_forward_" in names and f"{kernel}_backward_" in names, (kernel, names)
    # LeakyReLU is one TF kernel each way (LeakyRelu, LeakyReluGrad): nothing to fuse.
    op_types = {op.type for op in graph.get_operations()}
    assert {"LeakyRelu", "LeakyReluGrad"} <= op_types
    # The forward calls return the kernel's output and nothing else: the backward
    # pass recomputes what it needs from the inputs, so no intermediate stays alive.
    for op in _xla_calls(graph):
        if "_forward_" in op.node_def.attr["f"].func.name:
            assert len(op.outputs) == 1, (op.node_def.attr["f"].func.name, op.outputs)
    # ELU's exponential runs inside its compiled call, not in the step's graph.
    assert not [op for op in graph.get_operations() if op.type in ("Exp", "Expm1")]
    loss, grads = step(x, y)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_under_jit_compile_kernels_are_inlined_into_the_callers_computation():
    """No nested compiled call under an outer jit_compile=True: XLA then treated the
    arguments of a nested call with a dynamic-shape gather (the sparse loss) as
    compile-time constants and recompiled the step at every call (variables baked in)."""
    model = _model()
    loss_fn = stableops.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        return loss, tape.gradient(loss, model.trainable_variables)

    graph = step.get_concrete_function(
        tf.TensorSpec([None, 6]), tf.TensorSpec([None], tf.int32)
    ).graph
    assert not _xla_calls(graph), _function_names(graph)
    x, y = _data()
    loss, _ = step(x, y)
    assert np.isfinite(float(loss))


def test_model_fit_default_compile_runs_compiled_kernels_without_retracing():
    from stableops.ops._kernel import xla_kernel

    # A kernel of this test's own, so its trace count is not shared with other tests.
    @xla_kernel
    def shifted_softsign(x):
        return x / (1.0 + tf.abs(x)) + 0.1

    class SoftsignLayer(keras.layers.Layer):
        def call(self, x):
            return shifted_softsign(x)

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), SoftsignLayer(), keras.layers.Dense(3)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=stableops.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=2,
    )
    x, y = _data(50)  # batches of 16, 16, 16 and a last one of 2
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history
    # Traced from fit's graph (fit makes no eager call), and the changing batch
    # size retraces at most once more (the batch dimension is generalized).
    assert 1 <= shifted_softsign.tracing_count() <= 2, shifted_softsign.tracing_count()
    losses = history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_jit_compiled_fit_matches_the_default_compile():
    x, y = _data(48)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        model = _model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=stableops.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for default, jit in zip(*results):
        np.testing.assert_allclose(default, jit, rtol=1e-5, atol=1e-6)
