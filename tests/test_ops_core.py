"""dtype_limits, safe_where and the eager-XLA kernel decorator."""

import math

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf

from stableops import ops as O
from stableops._internal.dtypes import compute_dtype, to_compute
from stableops._internal.kernel import xla_kernel
from stableops.ops import dtype_limits, safe_where
from tests import _reference as ref
from tests._public_cases import CASES, inputs

# Exact closed forms: precision p (stored mantissa bits + 1) and largest exponent.
# eps = 2**(1 - p), tiny = 2**(min_exponent), max = (2 - 2**(1 - p)) * 2**max_exponent.
FORMATS = {
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
    "float32": (24, -126, 127),
    "float64": (53, -1022, 1023),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_dtype_limits_match_the_ieee_closed_forms(name):
    precision, min_exponent, max_exponent = FORMATS[name]
    limits = dtype_limits(name)
    assert limits.dtype == tf.as_dtype(name)
    assert limits.eps == 2.0 ** (1 - precision)
    assert limits.tiny == 2.0**min_exponent
    largest = (2 - mpmath.mpf(2) ** (1 - precision)) * mpmath.mpf(2) ** max_exponent
    assert limits.max == float(largest)
    assert limits.log_max == pytest.approx(float(mpmath.log(largest)), rel=1e-15)
    assert limits.largest_below_one == 1.0 - 2.0**-precision
    assert limits.mask_value == -float(largest)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_largest_below_one_is_the_predecessor_of_one(name):
    limits = dtype_limits(name)
    one = tf.constant(1.0, name)
    below = tf.constant(limits.largest_below_one, name)
    assert float(below) == limits.largest_below_one  # representable exactly
    assert float(below) < float(one)
    # Nothing representable lies between: the midpoint rounds to one of the two.
    midpoint = tf.cast(tf.constant((1.0 + limits.largest_below_one) / 2, tf.float64), name)
    assert float(midpoint) in (limits.largest_below_one, 1.0)


@pytest.mark.parametrize("name", ["float16", "float32", "float64"])
def test_exp_overflows_exactly_above_log_max(name):
    limits = dtype_limits(name)
    dtype = np.dtype(name)
    below = np.nextafter(dtype.type(limits.log_max), dtype.type(0))
    above = np.nextafter(dtype.type(limits.log_max), dtype.type(np.inf))
    assert np.isfinite(tf.exp(tf.constant(below)).numpy())
    assert np.isinf(tf.exp(tf.constant(above)).numpy())


@pytest.mark.parametrize("dtype", [tf.int32, tf.bool, "int64"])
def test_dtype_limits_rejects_non_floating(dtype):
    with pytest.raises(TypeError, match="floating"):
        dtype_limits(dtype)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float16", tf.float32),
        ("bfloat16", tf.float32),
        ("float32", tf.float32),
        ("float64", tf.float64),
    ],
)
def test_half_precision_computes_in_float32(dtype, expected):
    assert compute_dtype(dtype) == expected
    assert to_compute(tf.ones([2], dtype)).dtype == expected


def _naive_pow_where(x):
    # x ** 0.5 on the unselected lanes x <= 0 has a NaN derivative, and
    # tf.where's gradient multiplies it by zero: 0 * nan = nan.
    return tf.where(x > 0, x**0.5, tf.zeros_like(x))


def _safe_pow_where(x):
    return safe_where(x > 0, x, lambda v: v**0.5, 0.0, safe_true=1.0)


def test_naive_where_leaks_nan_gradient_so_the_test_can_fail(regime):
    x = np.array([-1.0, 0.0, 4.0], np.float32)
    _, (grad,) = regime.value_and_grad(_naive_pow_where, x)
    assert np.isnan(grad).any() or np.isinf(grad).any()


def test_safe_where_gradient_is_finite_on_unselected_lanes(regime):
    x = np.array([-1.0, 0.0, 4.0], np.float32)
    value, (grad,) = regime.value_and_grad(_safe_pow_where, x)
    np.testing.assert_array_equal(value, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.25])  # d sqrt(x)/dx = 1 / (2 sqrt 4)


def test_safe_where_propagates_nan_in_a_selected_lane(regime):
    x = np.array([np.nan, 4.0], np.float32)
    value = regime.run(
        lambda t: safe_where(t > 0, t, tf.sqrt, tf.math.log, safe_true=1.0, safe_false=1.0), x
    )
    # nan > 0 is False: the false branch (log) is selected and receives the NaN.
    assert math.isnan(value[0]) and value[1] == 2.0


def test_safe_where_accepts_tensors_as_branches(regime):
    x = np.array([-2.0, 3.0], np.float32)
    value = regime.run(lambda t: safe_where(t > 0, t, lambda v: v * 10, tf.constant(-1.0)), x)
    np.testing.assert_array_equal(value, [-1.0, 30.0])


def test_xla_kernel_does_not_retrace_when_the_batch_size_changes():
    @xla_kernel
    def double(x):
        return 2 * x

    for n in range(3, 9):
        np.testing.assert_array_equal(double(tf.ones([n, 2])).numpy(), 2 * np.ones([n, 2]))
    # One trace for the first concrete shape, one generalized to [None, 2].
    assert double.tracing_count() <= 2


def test_xla_kernel_keeps_each_rank_static_across_rank_changes():
    @xla_kernel
    def rank_of(x):
        return tf.constant(len(x.shape))  # needs a known rank, as canonical axes do

    for shape in ([2, 3], [2, 3, 4], [5, 3], [3], [1, 2, 3, 4], [7, 3, 4], [6, 3]):
        assert int(rank_of(tf.ones(shape))) == len(shape)
    # At most two traces per rank (the first shape, then generalized dimensions).
    assert rank_of.tracing_count() <= 2 * 4


def test_xla_kernel_keeps_the_row_width_static_across_width_changes():
    """Kernels choose their code by the row's width (``reductions.folded_row_sum``); a trace
    generalized over it took the unknown width's path for every later call."""

    @xla_kernel
    def width_of(x):
        return tf.constant(-1 if x.shape[-1] is None else x.shape[-1])

    # Two batch sizes per width, widths interleaved, eagerly and in a graph.
    shapes = ([2, 16], [4, 16], [2, 10], [4, 10], [3, 16], [5, 10])
    graph_width = tf.function(width_of)
    for shape in shapes:
        assert int(width_of(tf.ones(shape))) == shape[-1]
        assert int(graph_width(tf.ones(shape))) == shape[-1]


def _function_call_ops(graph):
    return [
        op
        for op in graph.get_operations()
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
    ]


def test_xla_kernel_is_one_compiled_call_with_a_compiled_backward_in_a_plain_tf_function():
    @xla_kernel
    def square_plus_sin(x):
        return x * x + tf.sin(x)

    @tf.function
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = square_plus_sin(x)
        return y, tape.gradient(y, x)

    x = tf.constant([0.5, -2.0])
    value, grad = value_and_grad(x)
    np.testing.assert_allclose(value.numpy(), x.numpy() ** 2 + np.sin(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), 2 * x.numpy() + np.cos(x.numpy()), rtol=1e-6)
    graph = value_and_grad.get_concrete_function(x).graph
    calls = _function_call_ops(graph)
    # One call for the forward pass, one for its gradient, both XLA-compiled; no
    # elementwise op of the kernel is left in the caller's graph. The backward call
    # recomputes the forward pass, so the forward call returns the kernel's output
    # and nothing else (no intermediates kept alive between the passes).
    assert len(calls) == 2
    assert all(op.get_attr("_XlaMustCompile") for op in calls)
    outputs = {op.node_def.attr["f"].func.name.rsplit("_", 1)[0]: len(op.outputs) for op in calls}
    assert outputs == {
        "__inference_square_plus_sin_forward": 1,
        "__inference_square_plus_sin_backward": 1,
    }, outputs
    assert not [op for op in graph.get_operations() if op.type in ("Sin", "Mul", "Cos")]


def test_xla_kernel_nested_kernels_make_one_computation():
    @xla_kernel
    def inner(x):
        return x + 1

    @xla_kernel
    def outer(x):
        return inner(x) * 2

    graph = tf.function(outer).get_concrete_function(tf.TensorSpec([None])).graph
    assert len(_function_call_ops(graph)) == 1
    assert inner.tracing_count() == 0  # traced inline, inside outer's computation
    assert float(outer(tf.constant([1.0]))[0]) == 4.0


def test_xla_kernel_under_an_outer_jit_compile():
    @xla_kernel
    def square(x):
        return x * x

    fn = tf.function(lambda x: square(x) + 1, jit_compile=True)
    assert float(fn(tf.constant(3.0))) == 10.0


def test_xla_kernel_converts_arrays_so_values_do_not_retrace():
    @xla_kernel
    def total(x):
        return tf.reduce_sum(x)

    for values in ([1.0, 2.0], [3.0, 4.0], np.array([5.0, 6.0], np.float32)):
        assert float(total(values)) == sum(values)
    assert total.tracing_count() == 1


def test_a_numpy_scalar_keeps_its_dtype_alone_and_takes_its_partners(regime):
    """Alone, a NumPy float64 scalar is float64's (``safe_log(1e-300) = -690.8``; it was
    made a Python number, float32's ``-inf``, except under XLA) and a float16 one float16's;
    beside a tensor it takes the tensor's dtype, as a Python number does."""
    tiny = regime.run(lambda: O.safe_log(np.float64(1e-300)))
    assert tiny.dtype == np.float64
    ref.assert_ulp_within([tiny], [mpmath.log(mpmath.mpf(1e-300))], "float64", 1)
    assert regime.run(lambda: O.softplus(np.float16(3.0))).dtype == np.float16
    half = regime.run(lambda x: O.safe_divide(x, np.float64(2.0)), np.array([1.0, 3.0], np.float32))
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half, [0.5, 1.5])


@pytest.mark.parametrize("row_local", [False, True], ids=["recompute", "row_local"])
@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "function"])
def test_xla_kernel_reads_a_variable_and_passes_its_gradient(row_local, in_function):
    """A ``tf.Variable`` argument is read as TF ops read it: the tape watches the
    read, so the variable gets its gradient in every backward path (eagerly, the
    variable once broke the tape check of a row-local kernel)."""

    @xla_kernel(row_local=row_local)
    def cube(x):
        return x * x * x

    v = tf.Variable([2.0, -1.0])

    def gradient():
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(cube(v))
        return tape.gradient(y, v)

    got = tf.function(gradient)() if in_function else gradient()
    np.testing.assert_allclose(got.numpy(), [12.0, 3.0])
    if in_function:
        # The kernel's own backward path, not TF's gradient of the forward call:
        # row-local, one call returning value and slope; else forward + backward.
        calls = _function_call_ops(tf.function(gradient).get_concrete_function().graph)
        expected = [2] if row_local else [1, 1]
        assert sorted(len(op.outputs) for op in calls) == expected


@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("b_shape", [[1, 3], [3]], ids=["broadcast_rows", "lower_rank"])
def test_a_row_local_kernel_with_inputs_broadcast_across_rows(in_function, b_shape):
    """A row-local gradient is per row: an input broadcast across the rows (or of lower
    rank) gets the sum over them, so such calls take the recomputing backward pass."""

    @xla_kernel(row_local=True)
    def weighted_sum(a, b):
        return tf.reduce_sum(a * b, axis=-1)

    a = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = tf.constant(np.reshape([0.5, -1.0, 2.0], b_shape).astype(np.float32))

    def gradients():
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = tf.reduce_sum(weighted_sum(a, b) * tf.constant([1.0, 10.0]))
        return tape.gradient(y, [a, b])

    grad_a, grad_b = tf.function(gradients)() if in_function else gradients()
    np.testing.assert_array_equal(grad_a.numpy(), [[0.5, -1.0, 2.0], [5.0, -10.0, 20.0]])
    np.testing.assert_array_equal(grad_b.numpy(), np.reshape([41.0, 52.0, 63.0], b_shape))


@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize(
    "width, terms_per_element, one_axis",
    [(1, False, True), (10, True, True), (10, False, False), (4, True, False)],
    ids=["columns", "rows_of_terms", "rows", "rows_vectorized"],
)
def test_a_row_local_kernel_takes_its_rows_as_one_axis(in_function, width, terms_per_element,
                                                       one_axis):
    """In a graph, columns (``[rows, 1]``), and rows of 9-32 entries of a kernel of
    per-element terms, reach the compiled call as one axis, where XLA's loops over them ran
    one element at a time; the value keeps its shape and the gradients their inputs'."""

    @xla_kernel(row_local=True, terms_per_element=terms_per_element)
    def weighted_squares(a, b):
        return tf.reduce_sum(a * a * b, axis=-1)

    rng = np.random.default_rng(3)
    a = tf.constant(rng.integers(-4, 5, (3, width)).astype(np.float32))
    b = tf.constant(rng.integers(-4, 5, (3, width)).astype(np.float32))
    weights = tf.constant([1.0, 10.0, 100.0])

    def value_and_gradients():
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            value = weighted_squares(a, b)
            y = tf.reduce_sum(value * weights)
        return value, tape.gradient(y, [a, b])

    value, (grad_a, grad_b) = (
        tf.function(value_and_gradients)() if in_function else value_and_gradients()
    )
    w = weights.numpy()[:, None]
    # Small integers: every product and sum is exact in float32.
    np.testing.assert_array_equal(value.numpy(), (a.numpy() ** 2 * b.numpy()).sum(-1))
    np.testing.assert_array_equal(grad_a.numpy(), 2 * a.numpy() * b.numpy() * w)
    np.testing.assert_array_equal(grad_b.numpy(), a.numpy() ** 2 * w)
    if in_function:
        graph = tf.function(value_and_gradients).get_concrete_function().graph
        (call,) = _function_call_ops(graph)
        assert [t.shape.rank for t in call.inputs] == [1, 1] if one_axis else [2, 2]


@pytest.mark.parametrize(
    "loss, shape, one_axis",
    [
        ("mean_squared_error", [6, 1], True),
        ("binary_crossentropy", [6, 1], True),
        ("mean_absolute_error", [6, 10], True),
        ("huber", [6, 16], True),
        ("log_cosh", [6, 32], True),
        ("squared_hinge", [6, 12], True),
        ("mean_squared_logarithmic_error", [6, 9], True),
        ("binary_crossentropy", [6, 10], True),
        ("binary_focal_crossentropy", [6, 16], True),
        ("kl_divergence", [6, 10], True),
        ("poisson", [6, 12], True),
        (("binary_crossentropy", {"ignore_class": 0.0}), [6, 10], False),
        ("categorical_crossentropy", [6, 10], False),
        ("mean_absolute_error", [6, 64], False),
        ("mean_absolute_error", [3, 4, 1], True),
        ("log_cosh", [3, 2, 10], True),
        ("categorical_crossentropy", [3, 2, 10], False),
    ],
    ids=lambda value: (
        "x".join(map(str, value)) if isinstance(value, list)
        else "-".join([value[0], *(f"{k}={v}" for k, v in value[1].items())])
        if isinstance(value, tuple) else None
    ),
)
def test_a_loss_in_a_graph_takes_rows_as_one_axis_and_matches_eager(loss, shape, one_axis):
    """Columns, and rows of 9-32 entries of the losses that average a term per element, go
    to the compiled call as one axis in a graph, at rank 3 too (a sequence's ``[batch, time,
    1]``); value and gradient are the eager ones (both XLA, the same element-by-element
    arithmetic). Binary cross-entropy with ``ignore_class`` averages over a row's valid
    entries (a row's count) and keeps its rows."""
    import stableops.losses as L

    name, options = loss if isinstance(loss, tuple) else (loss, {})

    rng = np.random.default_rng(7)
    y_true = tf.constant(rng.uniform(0.0, 1.0, shape).astype(np.float32))
    y_pred = tf.constant(rng.uniform(0.05, 0.95, shape).astype(np.float32))

    def value_and_gradient(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = getattr(L, name)(y_true, y_pred, **options)
        return value, tape.gradient(value, y_pred)

    eager_value, eager_gradient = value_and_gradient(y_true, y_pred)
    graph_function = tf.function(value_and_gradient)
    graph_value, graph_gradient = graph_function(y_true, y_pred)
    assert graph_value.shape == shape[:-1] and graph_gradient.shape == shape
    np.testing.assert_array_equal(graph_value.numpy(), eager_value.numpy())
    np.testing.assert_array_equal(graph_gradient.numpy(), eager_gradient.numpy())
    graph = graph_function.get_concrete_function(y_true, y_pred).graph
    forward_calls = [
        op for op in _function_call_ops(graph) if "_forward" in op.node_def.attr["f"].func.name
    ]
    ranks = {t.shape.rank for op in forward_calls for t in op.inputs if t.dtype.is_floating}
    assert ranks == ({1} if one_axis else {len(shape)})


def test_xla_kernel_eager_calls_tell_python_arguments_apart():
    """Eager calls reuse one compiled function per argument signature; Python arguments
    that flatten alike (``3`` and ``(3,)``) are still different calls."""

    @xla_kernel
    def scaled(x, factor):
        return x * (len(factor) if isinstance(factor, tuple) else factor)

    x = tf.constant([1.0, 2.0])
    for factor, want in (((3,), 1.0), (3, 3.0), ((3,), 1.0), (2, 2.0)):
        np.testing.assert_allclose(scaled(x, factor).numpy(), want * x.numpy())


def test_xla_kernel_is_differentiable_eagerly():
    @xla_kernel
    def cube(x):
        return x * x * x

    x = tf.constant([2.0, -1.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = cube(x)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [12.0, 3.0])


def test_xla_kernel_eager_gradient_after_a_graph_gradient():
    """A graph's gradient of a kernel must not change later eager gradients (TF 2.21 ran
    them with mismatched forward intermediates: NaN where a where() guarded 0/0)."""

    @xla_kernel
    def norm(x):
        @tf.custom_gradient
        def norm_fn(v):
            r = tf.sqrt(tf.reduce_sum(v * v, -1, keepdims=True))
            zero = tf.equal(r, 0)
            unit = tf.where(zero, tf.zeros_like(v), v / tf.where(zero, tf.ones_like(r), r))
            return tf.squeeze(r, -1), lambda upstream: upstream[..., None] * unit

        return norm_fn(x)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = norm(x)
        return tape.gradient(y, x)

    graph = tf.function(value_and_grad, input_signature=[tf.TensorSpec([None, 4])])
    np.testing.assert_array_equal(graph(tf.ones([3, 4])).numpy(), np.full([3, 4], 0.5))
    np.testing.assert_array_equal(value_and_grad(tf.zeros([3, 4])).numpy(), np.zeros([3, 4]))
    np.testing.assert_array_equal(graph(tf.zeros([2, 4])).numpy(), np.zeros([2, 4]))


@pytest.mark.parametrize("name", ["safe_divide", "xlogy", "logaddexp"])
def test_a_binary_op_names_shapes_that_do_not_broadcast(name):
    # Contract rule 6: a clear error. TF raised from a graph node ("Dimensions must be
    # equal ... for '{{node LogicalAnd}}'"); broadcastable shapes still work.
    op = getattr(O, name)
    with pytest.raises(ValueError, match=r"`x` and `y` must broadcast together, got shapes "
                                         r"\(2, 3\) and \(2, 4\)"):
        op(tf.ones((2, 3)), tf.ones((2, 4)))
    assert op(tf.ones((2, 3)), tf.ones((1, 3))).shape == (2, 3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_keras_variable_argument_in_a_graph(name):
    """A layer's weight (``keras.Variable``: no ``tf.Variable``) passed to a public function
    in a plain ``tf.function``, as ``model.fit`` runs a custom layer's ``call`` on a CPU: the
    same value and gradient as from a tensor. The softmax family, the norms and the binary
    ops raised "numpy() is only available when eager execution is enabled"."""
    fn, _, wrt = CASES[name]
    args = inputs(name, np.float32)
    variable = keras.Variable(args[wrt])

    @tf.function
    def through_the_variable():
        with tf.GradientTape() as tape:
            value = fn(*args[:wrt], variable, *args[wrt + 1:])
            total = tf.reduce_sum(tf.cast(value, tf.float32))
        return value, tape.gradient(total, variable.value)

    def from_a_tensor():
        x = tf.constant(args[wrt])
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(*args[:wrt], x, *args[wrt + 1:])
            total = tf.reduce_sum(tf.cast(value, tf.float32))
        return value, tape.gradient(total, x)

    (value, grad), (want_value, want_grad) = through_the_variable(), from_a_tensor()
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
