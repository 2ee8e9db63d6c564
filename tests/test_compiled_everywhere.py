"""Every kernel call is one XLA computation with a compiled backward pass, in every regime.

``model.fit`` without ``jit_compile`` (its default on a machine without a GPU) and a
user's plain ``tf.function`` must call the kernels' compiled functions, not inline
their dozens of small ops; the export test in test_saving checks SavedModels.
"""

import functools
import gc
import weakref

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops
from stableops._internal import gradients
from stableops.layers import ELU, LeakyReLU
from tests._helpers import compiled_calls
from tests._public_cases import CASES, inputs, value_and_gradient


def _model():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            ELU(),
            keras.layers.Dense(8),
            LeakyReLU(),
            keras.layers.Dense(3),
        ]
    )


def _data(n=50):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, :3].argmax(axis=1)).astype("int32")
    return x, y


def _function_names(graph):
    """The compiled functions ``graph`` calls, e.g. ``__inference__elu_kernel_forward_691``."""
    return " ".join(op.node_def.attr["f"].func.name for op in compiled_calls(graph))


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
    # ELU (elementwise) and the loss are row-local: one compiled call each returns
    # the value and its gradient for a unit upstream (ELU's slope; the loss's
    # gradient for the logits, as TF's fused kernel returns its backprop), none for
    # the integer labels; each backward pass is a multiplication, no compiled call.
    for kernel in ("_elu_kernel", "_sparse_categorical_crossentropy_kernel"):
        assert f"{kernel}_forward_" in names and f"{kernel}_backward_" not in names, names
    outputs = {
        op.node_def.attr["f"].func.name.rsplit("_", 1)[0]: len(op.outputs)
        for op in compiled_calls(graph)
    }
    assert outputs == {
        "__inference__elu_kernel_forward": 2,
        "__inference__sparse_categorical_crossentropy_kernel_forward": 2,
    }, outputs
    # LeakyReLU is one TF kernel each way (LeakyRelu, LeakyReluGrad): nothing to fuse.
    assert {"LeakyRelu", "LeakyReluGrad"} <= {op.type for op in graph.get_operations()}
    # ELU's exponential runs inside its compiled call, not in the step's graph.
    assert not [op for op in graph.get_operations() if op.type in ("Exp", "Expm1")]
    loss, grads = step(x, y)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_no_gradient_work_for_inputs_no_tape_watches():
    """Labels and inference inputs get no gradient work: without a tape each kernel is one
    compiled call returning its outputs only; under a tape watching the logits alone, a
    one-hot target gets no gradient from the loss's call."""
    loss_fn = stableops.losses.CategoricalCrossentropy(from_logits=True)
    spec = tf.TensorSpec([None, 3])

    @tf.function
    def inference(y, logits):
        return loss_fn(y, stableops.ops.elu(logits))

    @tf.function
    def training(y, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = loss_fn(y, logits)
        return loss, tape.gradient(loss, logits)

    calls = compiled_calls(inference.get_concrete_function(spec, spec).graph)
    assert [len(op.outputs) for op in calls] == [1, 1], _function_names(
        inference.get_concrete_function(spec, spec).graph
    )
    graph = training.get_concrete_function(spec, spec).graph
    assert [len(op.outputs) for op in compiled_calls(graph)] == [2], _function_names(
        graph
    )  # loss, d/dlogits
    y = tf.one_hot([0, 2], 3)
    logits = tf.constant([[1.0, 2.0, 3.0], [0.0, 0.0, 50.0]])
    _, grad = training(y, logits)
    np.testing.assert_allclose(grad.numpy(), (tf.nn.softmax(logits) - y).numpy() / 2, atol=1e-7)
    # A watched target still gets its gradient, -log_softmax / batch.
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = tf.function(loss_fn)(y, logits)
    np.testing.assert_allclose(
        tape.gradient(loss, y).numpy(), -tf.nn.log_softmax(logits).numpy() / 2, rtol=1e-6, atol=1e-7
    )


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
    assert not compiled_calls(graph), _function_names(graph)
    x, y = _data()
    loss, _ = step(x, y)
    assert np.isfinite(float(loss))


def test_model_fit_default_compile_runs_compiled_kernels_without_retracing():
    from stableops._internal.kernel import xla_kernel

    # A kernel of this test's own, so its trace count is not shared with other tests.
    @xla_kernel
    def shifted_softsign(x):
        return x / (1.0 + tf.abs(x)) + 0.1

    class SoftsignLayer(keras.layers.Layer):
        def call(self, x):
            return shifted_softsign(x)

    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), SoftsignLayer(), keras.layers.Dense(3)]
    )
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


def test_second_order_gradients_flow_through_the_compiled_backward_pass(regime):
    """A gradient penalty (WGAN-GP) differentiates the backward call itself.

    With ``f = elu``: ``y = sum f(x)^2``, ``g = dy/dx = 2 f f'``, ``pen = sum g^2``,
    ``dpen/dx = 4 g (f'^2 + f f'')``; for ``x > 0`` ``f = x``, ``f' = 1``, ``f'' = 0``;
    for ``x < 0`` ``f = e^x - 1``, ``f' = f'' = e^x`` (closed form, in float64).
    """
    x = np.linspace(-2.0, 2.0, 9)
    x = x[x != 0]  # elu is not twice differentiable at 0

    def penalty_gradient(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(stableops.ops.elu(x) ** 2)
            pen = tf.reduce_sum(inner.gradient(y, x) ** 2)
        return outer.gradient(pen, x)

    got = regime.run(penalty_gradient, x.astype(np.float32))
    e = np.exp(np.minimum(x, 0.0))
    f, f1 = np.where(x > 0, x, e - 1.0), np.where(x > 0, 1.0, e)
    f2 = np.where(x > 0, 0.0, e)
    want = 4 * (2 * f * f1) * (f1**2 + f * f2)
    np.testing.assert_allclose(got, want, rtol=8 * np.finfo(np.float32).eps)


def test_a_users_tf_function_traces_stableops_without_autograph(monkeypatch):
    # AutoGraph converts what a user's tf.function calls; stableops is plain graph
    # code, and converting it cost seconds on the first trace (1.7 s for one elu).
    from tensorflow.python.autograph.impl import api

    converted = []
    convert = api._convert_actual

    def recording(entity, program_ctx):
        converted.append(f"{entity.__module__}.{entity.__qualname__}")
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", recording)
    loss = stableops.losses.BinaryCrossentropy(from_logits=True)

    @tf.function  # AutoGraph on, as a user writes it
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(y, stableops.ops.elu(x)) + tf.reduce_sum(stableops.ops.log_softmax(x))
            value += tf.reduce_sum(ELU()(stableops.ops.safe_log(tf.abs(x))))
        return value, tape.gradient(value, x)

    x = tf.constant([[0.5, -2.0], [1.0, 3.0]])
    step(x, tf.constant([[1.0, 0.0], [0.0, 1.0]]))
    assert any(name.endswith("step") for name in converted), converted  # the spy works
    assert not [name for name in converted if name.startswith("stableops")], converted


ELEMENTWISE = {
    "_elu_kernel": stableops.ops.elu,
    "softplus": stableops.ops.softplus,
    "log_sigmoid": stableops.ops.log_sigmoid,
    "log1mexp": lambda x: stableops.ops.log1mexp(-tf.abs(x) - 1.0),
    "softplus_inverse": lambda x: stableops.ops.softplus_inverse(tf.abs(x) + 1.0),
    "log_cosh": stableops.ops.log_cosh,
    "safe_log": stableops.ops.safe_log,
    "safe_sqrt": stableops.ops.safe_sqrt,
}


@pytest.mark.parametrize("kernel", sorted(ELEMENTWISE))
def test_an_elementwise_kernel_in_a_graph_takes_one_axis(kernel):
    # A CNN's activations end in a short axis (16 channels), over which XLA on CPU runs
    # a loop holding a broadcast scalar 2.5-3x slower than over one long axis: in a graph
    # the compiled call gets the input as one axis, forward and backward, and the result
    # comes back in the input's shape, statically known.
    x = tf.zeros([2, 3, 3, 16])

    def value_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ELEMENTWISE[kernel](x)
        return y, tape.gradient(y, x)

    graph = tf.function(value_and_gradient).get_concrete_function(x).graph
    calls = [op for op in compiled_calls(graph) if f"{kernel}_" in op.node_def.attr["f"].func.name]
    assert calls and all(t.shape.as_list() == [288] for op in calls for t in op.inputs)
    assert [t.shape.as_list() for t in graph.outputs] == [[2, 3, 3, 16]] * 2


def test_an_elementwise_kernel_called_by_keyword_in_a_graph():
    # The one-axis reshape takes the positional input; a keyword call runs as it is.
    x = tf.constant([[-1.0, 0.5]])
    value = tf.function(lambda t: stableops.ops.softplus(x=t))(x)
    expected = [[float(mpmath.log1p(mpmath.exp(v))) for v in (-1.0, 0.5)]]
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "loss, axis, merged, value_shape",
    [
        (stableops.losses.dice, None, [2, 32], []),
        (stableops.losses.dice, (1, 2, 3), [2, 32], [2]),
        (stableops.losses.dice, (2, 3), [2, 4, 8], [2, 4]),
        (stableops.losses.tversky, None, [2, 32], []),
        (stableops.losses.dice, -1, [2, 4, 4, 2], [2, 4, 4]),  # one axis: nothing to merge
    ],
    ids=["dice-all", "dice-per-sample", "dice-two-axes", "tversky-all", "dice-last"],
)
def test_the_overlap_losses_merge_their_reduced_trailing_axes(loss, axis, merged, value_shape):
    # A segmentation mask [batch, h, w, 1]: XLA on CPU ran the kernel's loops over it at a
    # fifth of their speed over [batch, h w]. The compiled call gets the reduced trailing
    # axes as one; the value keeps its shape.
    # Traced for another batch size first: the compiled call's trace is then generalized,
    # and the value's static shape comes from the inputs (test order made it [None]).
    other = tf.fill([3, 4, 4, 2], 0.5)
    tf.function(lambda a, b: loss(a, b, axis=axis)).get_concrete_function(other, other)
    x = tf.fill([2, 4, 4, 2], 0.5)
    graph = tf.function(lambda a, b: loss(a, b, axis=axis)).get_concrete_function(x, x).graph
    calls = compiled_calls(graph)
    assert calls and all(t.shape.as_list() == merged for op in calls for t in op.inputs)
    assert graph.outputs[0].shape.as_list() == value_shape


@pytest.mark.parametrize("taped", [False, True], ids=["value", "value-and-gradient"])
@pytest.mark.parametrize(
    "loss",
    [
        stableops.losses.poisson,
        functools.partial(stableops.losses.dice, axis=-1),
        stableops.losses.mean_squared_error,
    ],
    ids=["poisson", "dice", "mse"],
)
def test_a_graph_call_keeps_its_static_shape_after_other_batch_sizes(loss, taped):
    # Traced for two batch sizes, a compiled function is generalized to an unknown batch.
    # TF infers a call's output shapes through its body, but not through a tf.cond in it
    # (Poisson's and Dice's overflow checks): a [5, 8] batch's loss was [None].
    def step(a, b):
        if not taped:
            return (loss(a, b),)
        with tf.GradientTape() as tape:
            tape.watch(b)
            value = loss(a, b)
        return value, tape.gradient(value, b)

    for batch in (3, 2):
        x = tf.fill([batch, 8], 0.5)
        tf.function(step).get_concrete_function(x, x)
    x = tf.fill([5, 8], 0.5)
    graph = tf.function(step).get_concrete_function(x, x).graph
    expected = [[5], [5, 8]] if taped else [[5]]
    assert [o.shape.as_list() for o in graph.outputs] == expected


_PUBLIC_CASES = sorted(name for name, (fn, _, _) in CASES.items() if fn.__name__ != "<lambda>")


@pytest.mark.parametrize("name", _PUBLIC_CASES)
def test_a_public_function_given_to_a_tf_function_runs_as_itself(name):
    """A tf.function follows a Python argument's ``__wrapped__`` links and calls their end:
    through ``functools.wraps`` that was a loss's bare formula (float16 computed in
    float16, no rank alignment, no compiled kernel)."""
    fn, _, _ = CASES[name]
    args = [tf.constant(a) for a in inputs(name, np.float16)]
    step = tf.function(lambda function, *values: function(*values))
    got, want = step(fn, *args), fn(*args)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-6)


def test_a_loss_given_to_a_tf_function_aligns_ranks_as_called():
    # [3, 1] against [3]: Keras's rank alignment, where the bare formula broadcast to [3, 3].
    step = tf.function(lambda function, t, p: function(t, p))
    y_true, y_pred = tf.constant([[1.0], [2.0], [3.0]]), tf.constant([1.5, 2.0, 3.0])
    loss = stableops.losses.mean_squared_error
    np.testing.assert_array_equal(step(loss, y_true, y_pred).numpy(), [0.25, 0.0, 0.0])



def _trace_every_public_function(regime):
    """Weak references to the graphs of tf.functions (dropped) that traced each public
    function with its gradient."""
    graphs = {}
    for name in sorted(CASES):
        args = [tf.constant(a) for a in inputs(name, np.float32)]
        trace = regime.wrap(value_and_gradient(name)).get_concrete_function(*args)
        graphs[name] = weakref.ref(trace.graph)
    del trace
    gc.collect()
    return graphs


def test_a_traced_graph_is_freed_with_its_function(graph_regime):
    """No graph of a dropped tf.function stays in memory. ``tf.custom_gradient`` registered
    each graph call's gradient function in TF's global registry, whose closure held the graph,
    so every trace stayed for the life of the process (each retrace of a training step, each
    trial of a search). The second round traces no kernel's compiled function anew (cached
    per signature, as they should be), so TF's registry must not grow in it either."""
    _trace_every_public_function(graph_regime)
    entries = len(gradients._REGISTRY)
    graphs = _trace_every_public_function(graph_regime)
    assert [name for name, graph in graphs.items() if graph() is not None] == []
    assert len(gradients._REGISTRY) == entries
