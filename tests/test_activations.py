"""stableops.activations: Keras parity, finiteness over each dtype's range, accuracy, saving."""

import keras
import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given

import stableops
from stableops import activations
from tests import _reference as ref
from tests._helpers import all_finite
from tests._strategies import FLOAT_DTYPES, finite_arrays

NAMES = ("elu", "leaky_relu", "softplus", "log_sigmoid", "softmax", "log_softmax")
# Non-default arguments checked next to the defaults.
OTHER_KWARGS = {
    "elu": {"alpha": 0.5},
    "leaky_relu": {"negative_slope": 0.05},
    "softplus": {},
    "log_sigmoid": {},
    "softmax": {"axis": 0},
    "log_softmax": {"axis": 0},
}
F32_EPS = float(np.finfo(np.float32).eps)


# Upstream weights for gradients: mixed signs (the gradient of a plain sum of
# a softmax is 0, which tests nothing) and powers of two (so value / weight
# recovers the value exactly).
_PATTERN = (1.0, -2.0, 0.5, -1.0, 2.0, -0.5)


def weights_like(y):
    """Weights of ``y``'s (possibly dynamic) shape, varying along every axis."""
    index = tf.range(tf.size(y)) % len(_PATTERN)
    return tf.reshape(tf.gather(tf.constant(_PATTERN, tf.float32), index), tf.shape(y))


def weights_np(shape):
    return np.resize(np.array(_PATTERN, np.float32), shape)


def stacked(fns):
    """``x -> stack([f(x) for f in fns]) * weights``: one compiled function checks many.

    ``Regime.value_and_grad`` of this gives, for every ``f``, ``f(x) * w`` (so
    ``f(x) = value / w`` exactly) and the sum of the weighted gradients.
    """

    def fn(*args):
        y = tf.stack([tf.cast(f(*args), tf.float32) for f in fns])
        return y * weights_like(y)

    return fn


def keras_values_and_grads(fns, x, *extra):
    """Keras reference: each ``f(x)`` and the gradient of ``sum(w_i * f_i(x))`` w.r.t. ``x``."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = stacked(fns)(xt, *[tf.constant(e) for e in extra])
        total = tf.reduce_sum(y)
    return y.numpy() / weights_np(y.shape), tape.gradient(total, xt).numpy()


def assert_close_to_keras(ours, theirs, context):
    # 1e-6 relative; the absolute term (4 float32 eps) covers Keras's own
    # rounding near 0, where its elu computes exp(x) - 1 with cancellation.
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=4 * F32_EPS, err_msg=context)


ROW_OPS = ("softmax", "log_softmax")


def _parity_pairs():
    """``(label, ours, Keras's, softmax axis or None)`` for each activation and arguments."""
    pairs = []
    for name in NAMES:
        for kwargs in ({}, OTHER_KWARGS[name]):
            ours, theirs = getattr(activations, name), getattr(keras.activations, name)
            pairs.append(
                (
                    f"{name}{kwargs}",
                    lambda t, f=ours, k=kwargs: f(t, **k),
                    lambda t, f=theirs, k=kwargs: f(t, **k),
                    kwargs.get("axis", -1) if name in ROW_OPS else None,
                )
            )
    return pairs


def test_matches_keras_activations_on_float32(regime):
    # Finite inputs only: how Keras's kernels place a NaN (one entry or the whole
    # softmax row) depends on the CPU's vector instructions and on oneDNN, so
    # NaN inputs are checked against our contract below, not against Keras.
    x = np.random.RandomState(0).normal(scale=3.0, size=(4, 6)).astype(np.float32)
    pairs = _parity_pairs()
    expected, expected_grad = keras_values_and_grads([p[2] for p in pairs], x)
    value, (grad,) = regime.value_and_grad(stacked([p[1] for p in pairs]), x, unknown_batch=True)
    value = value / weights_np(value.shape)
    for i, (label, *_) in enumerate(pairs):
        assert_close_to_keras(value[i], expected[i], f"{label} value, {regime}")
    assert_close_to_keras(grad, expected_grad, f"gradient, {regime}")


def nan_positions(x, axes=None, mask=None):
    """Where a NaN in ``x`` must show in the output: the NaN entries themselves for an
    elementwise op; every unmasked entry of a row (along ``axes``) holding an unmasked
    NaN for a softmax (the documented "a NaN entry makes its row NaN")."""
    nan = np.isnan(x)
    if axes is None:
        return nan
    unmasked = (
        np.ones_like(nan) if mask is None else np.broadcast_to(np.asarray(mask) > 0.5, x.shape)
    )
    return np.any(nan & unmasked, axis=axes, keepdims=True) & unmasked


def assert_nan_exactly_at(value, expected_nan, context):
    np.testing.assert_array_equal(
        np.isnan(value), expected_nan, err_msg=f"NaN positions, {context}"
    )
    assert np.all(np.isfinite(value[~expected_nan])), context


def test_nan_in_nan_out_exactly_where_documented(regime):
    x = np.random.RandomState(0).normal(scale=3.0, size=(4, 6)).astype(np.float32)
    x[0, 1] = np.nan
    pairs = _parity_pairs()
    value, (grad,) = regime.value_and_grad(stacked([p[1] for p in pairs]), x, unknown_batch=True)
    nan_anywhere = np.zeros(x.shape, bool)
    for i, (label, _, _, axes) in enumerate(pairs):
        expected = nan_positions(x, axes)
        nan_anywhere |= expected
        assert_nan_exactly_at(value[i], expected, f"{label}, {regime}")
    # The gradient is NaN only where some output is NaN: entries outside every
    # NaN row and column keep finite gradients.
    assert np.all(np.isfinite(grad[~nan_anywhere])), f"gradient, {regime}"


def compiled_value_and_grad(fn):
    """``x -> (fn(x), d sum(w * fn(x)) / dx)`` as one XLA-compiled function.

    Property tests call it once per example: one compile per test instead of
    one eager kernel launch per op and per example.
    """

    @tf.function(jit_compile=True)
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = tf.reduce_sum(tf.cast(value, tf.float32) * weights_like(value))
        return value, tape.gradient(total, x)

    return lambda x: tuple(t.numpy() for t in value_and_grad(tf.convert_to_tensor(x)))


ELEMENTWISE = ("elu", "leaky_relu", "softplus", "log_sigmoid")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_elementwise_finite_value_and_gradient_over_whole_range(dtype):
    # One compiled function per dtype evaluates all four, each on its own copy of x.
    fns = [getattr(activations, name) for name in ELEMENTWISE]
    value_and_grad = compiled_value_and_grad(
        lambda x: tf.stack([f(x[i]) for i, f in enumerate(fns)])
    )

    @given(finite_arrays(dtype, (8,)))
    def check(x):
        values, grads = value_and_grad(np.stack([x] * len(fns)))
        for name, value, grad in zip(ELEMENTWISE, values, grads):
            assert value.dtype == x.dtype
            assert all_finite(value), (name, x, value)
            assert all_finite(grad), (name, x, grad)

    check()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", ("softmax", "log_softmax"))
def test_softmax_family_finite_value_and_gradient_over_whole_range(name, dtype):
    value_and_grad = compiled_value_and_grad(getattr(activations, name))
    largest = float(ml_dtypes.finfo(ref.to_numpy_dtype(dtype)).max)
    # log_softmax(x) can be as low as min(x) - max(x), beyond the range when the
    # logits span more than it; half the range keeps the true result finite.
    # softmax is bounded, so it gets the whole range.
    bound = largest / 2 if name == "log_softmax" else None
    low = None if bound is None else -bound

    @given(finite_arrays(dtype, (2, 4), min_value=low, max_value=bound))
    def check(x):
        value, grad = value_and_grad(x)
        assert value.dtype == x.dtype
        assert all_finite(value), (x, value)
        assert all_finite(grad), (x, grad)

    check()


# Budgets: those stated in the stableops.ops docstrings for float32 and
# 1 ULP of the half-precision result (computed in float32, rounded once).
ELEMENTWISE_ACCURACY = {
    "elu": (lambda v: ref.mp_elu(v, mpmath.mpf(1)), 2),
    "leaky_relu": (lambda v: ref.mp_leaky_relu(v, mpmath.mpf("0.2")), 1),
    "softplus": (ref.mp_softplus, 2),
    "log_sigmoid": (ref.mp_log_sigmoid, 2),
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE_ACCURACY))
def test_elementwise_accuracy_against_mpmath(name, dtype):
    reference_fn, budget = ELEMENTWISE_ACCURACY[name]
    np_dtype = ref.to_numpy_dtype(dtype)
    largest = float(ml_dtypes.finfo(np_dtype).max)
    grid = np.array(
        [
            -largest,
            -1e4,
            -100.0,
            -20.0,
            -3.0,
            -1.0,
            -1e-3,
            -1e-6,
            0.0,
            1e-6,
            1e-3,
            1.0,
            3.0,
            20.0,
            100.0,
            1e4,
            largest,
        ]
    ).astype(np_dtype)
    tiny = float(ml_dtypes.finfo(np_dtype).tiny)
    grid = grid[
        (grid == 0) | (np.abs(grid.astype(np.float64)) >= tiny)
    ]  # no subnormals (TF flushes them)
    value = getattr(activations, name)(grid).numpy()
    reference = ref.reference_array(reference_fn, grid)
    ref.assert_ulp_within(
        value, reference, dtype, budget if dtype == "float32" else 1, context=name
    )


def test_softmax_accuracy_against_mpmath():
    # x - max(x) is exact for these rows: the budget is for the op, not for the
    # conditioning of exp(x - m) (relative error |x - m| * eps when x - m rounds).
    x = np.array([[0.0, -30.0, 5.0, 5.0, -1e4], [0.25, 0.5, -0.25, 0.0, 40.0]], dtype=np.float32)
    value = activations.softmax(x).numpy()
    reference = np.array([ref.mp_softmax([ref.mpf(v) for v in row]) for row in x], dtype=object)
    ref.assert_ulp_within(value, reference, "float32", 3, context="softmax")
    value = activations.log_softmax(x).numpy()
    reference = np.array([ref.mp_log_softmax([ref.mpf(v) for v in row]) for row in x], dtype=object)
    ref.assert_ulp_within(value, reference, "float32", 2, context="log_softmax")


def test_elu_near_zero_is_accurate_where_keras_cancels():
    # alpha * expm1(x): full relative accuracy at x = -1e-3 in float16, where
    # exp(x) - 1 loses most digits.
    x = np.array([-1e-3, -1e-2, -0.1], dtype=np.float16)
    reference = ref.reference_array(lambda v: ref.mp_elu(v, mpmath.mpf(1)), x)
    ref.assert_ulp_within(activations.elu(x).numpy(), reference, "float16", 1, context="elu")


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_resolved_by_keras_without_custom_objects(name):
    fn = getattr(activations, name)
    assert keras.saving.get_registered_name(fn) == f"stableops>{name}"
    assert keras.saving.get_registered_object(f"stableops>{name}") is fn
    config = keras.activations.serialize(fn)
    assert config["config"] == f"stableops>{name}"
    assert keras.activations.deserialize(config) is fn
    assert keras.activations.get(config) is fn
    assert keras.activations.get(fn) is fn
    # ... and as a layer's activation, through the layer's config.
    layer = keras.layers.Dense(3, activation=fn)
    rebuilt = keras.layers.Dense.from_config(layer.get_config())
    assert rebuilt.activation is fn


def test_model_with_every_activation_round_trips_through_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = inputs
    for name in NAMES:
        x = keras.layers.Dense(5, activation=getattr(activations, name), name=f"dense_{name}")(x)
    model = keras.Model(inputs, x)
    data = np.random.RandomState(1).normal(size=(8, 5)).astype(np.float32)
    path = tmp_path / "activations.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    for name in NAMES:
        assert loaded.get_layer(f"dense_{name}").activation is getattr(activations, name)
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), model.predict(data, verbose=0))


def test_softmax_keeps_logits_for_keras_crossentropy_in_graphs():
    # As keras.activations.softmax: in a graph the logits ride along, so a
    # Keras cross-entropy on the probabilities uses them (exact loss 200 + log1p(e^-200),
    # not the clipped -log(1e-7) = 16.1).
    logits = tf.constant([[0.0, -200.0]])
    target = tf.constant([[0.0, 1.0]])

    @tf.function
    def loss(activation):
        return keras.losses.categorical_crossentropy(target, activation(logits))

    assert loss(activations.softmax).numpy()[0] == pytest.approx(200.0, rel=1e-6)
    assert loss(keras.activations.softmax).numpy()[0] == pytest.approx(200.0, rel=1e-6)


def test_bad_hyperparameters_and_inputs():
    x = tf.constant([-1.0, 1.0])
    with pytest.raises(ValueError, match=r"negative_slope.*-0\.5"):
        activations.leaky_relu(x, negative_slope=-0.5)
    with pytest.raises(ValueError, match=r"alpha.*nan"):
        activations.elu(x, alpha=float("nan"))
    with pytest.raises(TypeError, match="floating"):
        activations.softplus(tf.constant([1, 2]))


def test_public_module_lists_its_functions():
    assert sorted(stableops.activations.__all__) == sorted(NAMES)
