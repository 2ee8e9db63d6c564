"""stableops.layers: Keras parity, float16-safe activations and masks, RobustScaler, models."""

import inspect
import re

import keras
import ml_dtypes
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from stableops import activations, layers, ops
from stableops.layers import ELU, LeakyReLU, RobustScaler, Softmax
from stableops.ops import dtype_limits
from tests import _reference as ref
from tests._helpers import all_finite
from tests._strategies import FLOAT_DTYPES, finite_arrays
from tests.test_activations import (
    F32_EPS,
    assert_close_to_keras,
    assert_nan_exactly_at,
    compiled_value_and_grad,
    keras_values_and_grads,
    nan_positions,
    stacked,
    weights_like,
    weights_np,
)

rng = np.random.RandomState(0)
X3 = rng.normal(scale=3.0, size=(3, 4, 5)).astype(np.float32)
MASK_BCAST = rng.uniform(size=(3, 1, 5)) > 0.3  # broadcast over axis 1
MASK_FLOAT = (rng.uniform(size=(3, 4, 5)) > 0.3).astype(np.float32)

# (id, ours, Keras's, mask, softmax axes or None for an elementwise layer)
PARITY_CASES = [
    ("leaky_relu_default", LeakyReLU, keras.layers.LeakyReLU, {}, None, None),
    ("leaky_relu_0.05", LeakyReLU, keras.layers.LeakyReLU, {"negative_slope": 0.05}, None, None),
    ("elu_default", ELU, keras.layers.ELU, {}, None, None),
    ("elu_0.5", ELU, keras.layers.ELU, {"alpha": 0.5}, None, None),
    ("softmax_default", Softmax, keras.layers.Softmax, {}, None, -1),
    ("softmax_axis1", Softmax, keras.layers.Softmax, {"axis": 1}, None, 1),
    ("softmax_axes12", Softmax, keras.layers.Softmax, {"axis": [1, 2]}, None, (1, 2)),
    ("softmax_bool_mask", Softmax, keras.layers.Softmax, {}, MASK_BCAST, -1),
    ("softmax_float_mask", Softmax, keras.layers.Softmax, {}, MASK_FLOAT, -1),
]


def _calls(which):
    """One function per parity case, calling a fresh layer of ours (1) or Keras's (2)."""
    fns = []
    for case in PARITY_CASES:
        layer, mask = case[which](**case[3]), case[4]
        fns.append(
            lambda x, layer=layer, mask=mask: (
                layer(x) if mask is None else layer(x, mask=tf.constant(mask))
            )
        )
    return fns


def test_layers_match_keras_on_float32(regime):
    # Finite inputs only: Keras's NaN positions depend on the CPU (see
    # test_activations); NaN inputs are checked against our contract below.
    expected, expected_grad = keras_values_and_grads(_calls(2), X3)
    value, (grad,) = regime.value_and_grad(stacked(_calls(1)), X3, unknown_batch=True)
    value = value / weights_np(value.shape)
    for i, case in enumerate(PARITY_CASES):
        assert_close_to_keras(value[i], expected[i], f"{case[0]} value, {regime}")
        if case[4] is not None:
            assert np.all(value[i][np.broadcast_to(case[4], X3.shape) < 0.5] == 0), case[0]
    assert_close_to_keras(grad, expected_grad, f"gradient, {regime}")


def test_layers_nan_in_nan_out_exactly_where_documented(regime):
    x = X3.copy()
    x[0, 0, 0] = np.nan
    value, (grad,) = regime.value_and_grad(stacked(_calls(1)), x, unknown_batch=True)
    nan_anywhere = np.zeros(x.shape, bool)
    for i, (label, _, _, _, mask, axes) in enumerate(PARITY_CASES):
        expected = nan_positions(x, axes, mask)
        nan_anywhere |= expected
        assert_nan_exactly_at(value[i], expected, f"{label}, {regime}")
    assert np.all(np.isfinite(grad[~nan_anywhere])), f"gradient, {regime}"


@pytest.mark.parametrize(
    "ours, theirs",
    [(LeakyReLU, keras.layers.LeakyReLU), (ELU, keras.layers.ELU), (Softmax, keras.layers.Softmax)],
)
def test_constructor_signature_and_defaults_match_keras(ours, theirs):
    assert inspect.signature(ours.__init__) == inspect.signature(theirs.__init__)
    assert ours().supports_masking and theirs().supports_masking


# ----------------------------------------------------------------------------
# Finite everywhere, in every dtype
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_activation_layers_finite_over_whole_range(dtype):
    leaky, elu = LeakyReLU(dtype=dtype), ELU(dtype=dtype)
    value_and_grad = compiled_value_and_grad(lambda x: tf.stack([leaky(x[0]), elu(x[1])]))

    @given(finite_arrays(dtype, (8,)))
    def check(x):
        values, grads = value_and_grad(np.stack([x, x]))
        assert values.dtype == x.dtype
        assert all_finite(values) and all_finite(grads), (x, values, grads)

    check()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_softmax_layer_finite_over_whole_range(dtype):
    layer = Softmax(dtype=dtype)

    @tf.function(jit_compile=True)
    def value_and_grad(x, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = layer(x, mask=mask)
            total = tf.reduce_sum(tf.cast(value, tf.float32) * weights_like(value))
        return value, tape.gradient(total, x)

    masks = st.lists(st.booleans(), min_size=8, max_size=8).map(lambda b: np.array(b).reshape(2, 4))

    @given(finite_arrays(dtype, (2, 4)), masks)
    def check(x, mask):
        value, grad = (t.numpy() for t in value_and_grad(tf.constant(x), tf.constant(mask)))
        value64 = value.astype(np.float64)
        assert all_finite(value) and all_finite(grad), (x, mask, value, grad)
        assert np.all(value64[~mask] == 0) and np.all(grad[~mask] == 0)
        sums = value64.sum(axis=1)
        kept = mask.any(axis=1)
        np.testing.assert_allclose(
            sums[kept], 1.0, atol=4 * ml_dtypes.finfo(ref.to_numpy_dtype(dtype)).eps
        )
        assert np.all(sums[~kept] == 0)

    check()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_elu_layer_extreme_negatives(dtype):
    np_dtype = ref.to_numpy_dtype(dtype)
    info = ml_dtypes.finfo(np_dtype)
    x = np.array([-float(info.max), -1e4, -100.0, -20.0, -2.0, -float(info.tiny), 0.0]).astype(
        np_dtype
    )
    alpha = 0.75
    value_and_grad = compiled_value_and_grad(ELU(alpha=alpha, dtype=dtype))
    value, grad = value_and_grad(x)
    reference = ref.reference_array(lambda v: ref.mp_elu(v, mpmath.mpf(alpha)), x)
    ref.assert_ulp_within(value, reference, dtype, 2 if dtype == "float32" else 1, context="ELU")
    # d/dx alpha * expm1(x) = alpha * exp(x): finite, >= 0, and 0 once exp underflows.
    weights = weights_np(x.shape)
    grad_reference = np.array(
        [mpmath.mpf(alpha) * mpmath.exp(ref.mpf(v)) * ref.mpf(w) for v, w in zip(x, weights)],
        dtype=object,
    )
    ref.assert_ulp_within(grad, grad_reference, dtype, 2, context="ELU gradient")
    assert grad[0] == 0 and all_finite(grad)


# ----------------------------------------------------------------------------
# Softmax masks and half precision, named cases
# ----------------------------------------------------------------------------


def test_softmax_fully_masked_rows_are_zero_with_zero_gradient(regime):
    x = np.array([[1.0, 2.0, 3.0], [np.nan, 3e38, -3e38], [0.5, -1.0, 2.0]], dtype=np.float32)
    mask = np.array([[True, False, True], [False, False, False], [False, False, False]])
    layer = Softmax()
    fn = lambda t, m: layer(t, mask=m)  # noqa: E731
    value = regime.run(fn, x, mask, unknown_batch=True)
    _, (grad,) = regime.value_and_grad(stacked([fn]), x, mask, unknown_batch=True)
    np.testing.assert_array_equal(value[1:], 0.0)
    np.testing.assert_array_equal(grad[1:], 0.0)  # not NaN, even under a masked NaN / overflow
    e = np.exp(np.float64(-2.0))
    np.testing.assert_allclose(value[0], [e / (1 + e), 0.0, 1 / (1 + e)], rtol=4 * F32_EPS)


def test_softmax_long_float16_axis_does_not_overflow():
    # sum(exp(x - max)) over 2**17 float16 entries is about 1.3e5 > 65504, the float16 maximum.
    n = 2**17
    x = np.zeros((1, n), np.float16)
    x[0, 0] = 8.0
    value = Softmax(dtype="float16")(x).numpy()
    assert value.dtype == np.float16 and all_finite(value)
    denominator = mpmath.exp(8) + (n - 1)
    reference = np.array([[mpmath.exp(8) / denominator, 1 / denominator]], dtype=object)
    ref.assert_ulp_within(value[:, :2], reference, "float16", 1, context="long float16 softmax")
    assert np.all(value[0, 1:] == value[0, 1])


def test_float16_masked_softmax_with_logits_below_the_keras_fill_value():
    # Keras fills masked float16 logits with -3e4; an unmasked logit below that
    # loses to the masked ones and Keras returns an all-zero row. Ours excludes
    # masked entries, so the row is still a distribution.
    x = np.array([[-6e4, -6e4, 0.0]], np.float16)
    mask = np.array([[True, False, False]])
    np.testing.assert_array_equal(Softmax(dtype="float16")(x, mask=mask).numpy(), [[1.0, 0.0, 0.0]])


def test_softmax_rejects_masks_that_do_not_broadcast():
    layer = Softmax()
    with pytest.raises(ValueError, match="broadcastable"):
        layer(np.zeros((2, 3), np.float32), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="more dimensions"):
        layer(np.zeros((2, 3), np.float32), mask=np.ones((1, 2, 3), bool))


# ----------------------------------------------------------------------------
# dtype policies, configs, errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_layers_respect_the_compute_dtype(policy, mixed_precision_policy):
    mixed_precision_policy(policy)
    half = policy.split("_")[1]
    x = np.linspace(-100.0, 100.0, 12, dtype=np.float32).reshape(2, 6)
    for layer in (LeakyReLU(), ELU(), Softmax()):
        assert layer.compute_dtype == half and layer(x).dtype == half, type(layer).__name__
    scaler = RobustScaler()
    scaler.adapt(np.array([[1e6 + i] for i in range(9)]))  # beyond the float16 range
    out = scaler(np.array([[1e6 + 4.0], [1e6 + 6.0]], np.float32))
    assert out.dtype == half and scaler.median.dtype == "float32"
    # Computed in float32 before the cast: (x - 1e6 - 4) / 4 exactly, no float16 overflow.
    np.testing.assert_array_equal(out.numpy().astype(np.float32), [[0.0], [0.5]])


@pytest.mark.parametrize(
    "make",
    [
        lambda: LeakyReLU(0.1, name="lr"),
        lambda: ELU(0.25, dtype="float16"),
        lambda: Softmax(axis=(1, 2)),
        lambda: RobustScaler(axis=1, clip=(-3.0, 8.0), quantile_range=(10, 90)),
    ],
    ids=["leaky_relu", "elu", "softmax", "robust_scaler"],
)
def test_config_round_trip_and_registration(make):
    layer = make()
    config = layer.get_config()
    name = type(layer).__name__
    assert keras.saving.get_registered_name(type(layer)) == f"stableops>{name}"
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    serialized = keras.layers.serialize(layer)
    assert serialized["registered_name"] == f"stableops>{name}"
    again = keras.layers.deserialize(serialized)  # no custom_objects
    assert type(again) is type(layer) and again.get_config() == config
    assert layer.compute_output_shape((None, 4, 5)) == (None, 4, 5)


def test_config_holds_every_hyperparameter():
    assert LeakyReLU(0.1).get_config()["negative_slope"] == 0.1
    assert ELU(0.25).get_config()["alpha"] == 0.25
    assert Softmax(axis=[1, 2]).get_config()["axis"] == [1, 2]
    config = RobustScaler(axis=1, clip=(-3.0, 8.0), quantile_range=(10, 90)).get_config()
    assert (config["axis"], config["clip"], config["quantile_range"]) == (
        1,
        [-3.0, 8.0],
        [10.0, 90.0],
    )


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), None, "0.3", 1e39])
def test_invalid_hyperparameters_name_argument_and_value(bad):
    with pytest.raises(ValueError, match="negative_slope.*" + re.escape(repr(bad))):
        LeakyReLU(negative_slope=bad)
    with pytest.raises(ValueError, match="alpha.*" + re.escape(repr(bad))):
        ELU(alpha=bad)


def test_largest_float32_hyperparameter_stays_finite():
    # 1e39 rounds to inf in float32 (ELU(1e39) at 0 was inf * 0 = NaN; now a ValueError,
    # above); float32's maximum itself is a valid scale: finite at 0 and below.
    big = float(np.finfo(np.float32).max)
    x = tf.constant([-1.0, -1e-30, 0.0, 2.0])
    for layer in (ELU(alpha=big), LeakyReLU(negative_slope=big)):
        assert np.isfinite(layer(x).numpy()).all()


def test_activation_layers_take_inputs_of_unknown_rank():
    # Built at construction, as Keras's: the build's shape check refused an unknown rank.
    x = np.linspace(-3.0, 3.0, 12, dtype=np.float32).reshape(3, 4)
    for layer in (ELU(), LeakyReLU()):
        call = tf.function(layer, input_signature=[tf.TensorSpec(None, tf.float32)])
        np.testing.assert_array_equal(call(x).numpy(), layer(x).numpy())


def test_softmax_axis_named_twice_is_an_error():
    x = np.zeros((2, 3, 4), np.float32)
    for call in (lambda: Softmax(axis=(2, 2))(x), lambda: ops.softmax(x, axis=(1, -2)),
                 lambda: ops.logsumexp(x, axis=(0, -3))):
        with pytest.raises(ValueError, match=r"`axis` names an axis of .* twice"):
            call()


def test_invalid_softmax_axis():
    with pytest.raises(ValueError, match="axis"):
        Softmax(axis=[])
    with pytest.raises(TypeError, match="axis"):  # a wrong type: TypeError, as every axis
        Softmax(axis=1.5)
    x = np.zeros((2, 3), np.float32)
    for call in (lambda: Softmax(axis=5)(x), lambda: Softmax(axis=(0, 5))(x, mask=x > -1)):
        with pytest.raises(
            ValueError,
            match=r"`axis` is out of range for a rank-2 "
            r"`inputs`.*axis=5",
        ):
            call()


def test_robust_scaler_axis_cannot_be_the_batch_axis():
    # Axis 0 learned one statistic per sample of the adapt data: the next batch of another
    # size then failed Keras's input spec.
    with pytest.raises(ValueError, match="batch axis 0, got axis=0"):
        RobustScaler(axis=0)
    scaler = RobustScaler(axis=-2)  # the batch axis of rank-2 data
    with pytest.raises(ValueError, match="batch axis 0, got axis=-2"):
        scaler.adapt(np.ones((4, 3), np.float32))


def test_softmax_axis_none_normalises_over_every_axis(regime):
    # As Keras's Softmax(axis=None): one distribution over all entries.
    # log(1), log(2), log(3), log(4): probabilities k / 10 exactly.
    logits = np.log(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    value = regime.run(Softmax(axis=None), logits)
    # 4 ULP of float32 (the layer's dtype): the logs and the sum round.
    np.testing.assert_allclose(
        value, [[0.1, 0.2], [0.3, 0.4]], rtol=4 * dtype_limits("float32").eps
    )
    assert Softmax(axis=None).get_config()["axis"] is None
    assert Softmax.from_config(Softmax(axis=None).get_config()).axis is None


def test_leaky_relu_layer_takes_integer_input_as_keras(regime):
    # Keras casts integer input to float32 (exact for these), slope 0.25 exact.
    for x in (np.array([[3, -4, 0]]), tf.constant([[3, -4, 0]], tf.int32)):
        value = regime.run(LeakyReLU(negative_slope=0.25), x)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, [[3.0, -1.0, 0.0]])


# ----------------------------------------------------------------------------
# RobustScaler
# ----------------------------------------------------------------------------


def _data_with_outliers(n=400, features=3, seed=1):
    data = np.random.RandomState(seed).normal(
        loc=[10.0, -2.0, 0.0], scale=[2.0, 0.5, 100.0], size=(n, features)
    )
    outliers = np.random.RandomState(seed + 1).choice(n, size=n // 20, replace=False)
    data[outliers[: len(outliers) // 2], 0] = 1e9
    data[outliers[len(outliers) // 2 :], 1] = -1e7
    data[outliers, 2] *= 1e5
    return data.astype(np.float32), outliers


def _numpy_robust(data):
    data = data.astype(np.float64)
    median = np.median(data, axis=0)
    iqr = np.percentile(data, 75, axis=0) - np.percentile(data, 25, axis=0)
    return median, iqr


def test_robust_scaler_matches_numpy_and_bounds_outliers():
    data, outliers = _data_with_outliers()
    scaler = RobustScaler()
    scaler.adapt(data)
    median, iqr = _numpy_robust(data)
    np.testing.assert_allclose(scaler.median.numpy(), median, rtol=F32_EPS)
    np.testing.assert_allclose(scaler.scale.numpy(), iqr, rtol=F32_EPS)
    np.testing.assert_array_equal(scaler.count.numpy(), [len(data)] * 3)
    out = scaler(data).numpy()
    assert out.dtype == np.float32 and np.all(np.abs(out) <= 5.0)
    ordinary = np.setdiff1d(np.arange(len(data)), outliers)
    expected = (data[ordinary].astype(np.float64) - median) / iqr
    inside = np.abs(expected) < 5
    np.testing.assert_allclose(
        out[ordinary][inside], expected[inside], rtol=8 * F32_EPS, atol=8 * F32_EPS
    )
    np.testing.assert_array_equal(out[ordinary][~inside], np.sign(expected[~inside]) * 5.0)
    assert np.all(out[outliers[: len(outliers) // 2], 0] == 5.0)
    assert np.all(out[outliers[len(outliers) // 2 :], 1] == -5.0)


def test_robust_scaler_custom_clip_quantiles_and_no_clip():
    data, _ = _data_with_outliers()
    scaler = RobustScaler(clip=(-2.0, 3.0), quantile_range=(10.0, 90.0))
    scaler.adapt(data)
    d = data.astype(np.float64)
    np.testing.assert_allclose(
        scaler.scale.numpy(), np.percentile(d, 90, 0) - np.percentile(d, 10, 0), rtol=F32_EPS
    )
    out = scaler(data).numpy()
    assert out.min() == -2.0 and out.max() == 3.0
    unclipped = RobustScaler(clip=None)
    unclipped.adapt(data)
    assert unclipped(data).numpy().max() > 1e6


def test_robust_scaler_near_the_float32_maximum():
    """x - median overflowed float32 for x = -3e38 against a median of 2.2e38: -5 (the clip)
    for -4.33, and -inf without a clip. Against mpmath on the stored statistics."""
    data = np.linspace(1e38, 3.4e38, 101, dtype=np.float32)[:, None]
    x = np.array([[-3e38], [3.4e38], [1e38]], np.float32)
    for scaler in (RobustScaler(), RobustScaler(clip=None)):
        scaler.adapt(data)
        median, scale = float(scaler.median.numpy()[0]), float(scaler.scale.numpy()[0])
        want = [float((mpmath.mpf(float(v)) - median) / scale) for v in x[:, 0]]
        np.testing.assert_allclose(scaler(x).numpy()[:, 0], want, rtol=F32_EPS)


def test_robust_scaler_nan_inf_and_constant_features():
    data = np.random.RandomState(2).normal(size=(200, 4))
    data[:5, 0] = np.nan  # ignored in adapt
    data[5:8, 0] = np.inf
    data[:, 1] = 3.0  # constant: scale 1, maps to 0
    data[:, 2] = 0.0
    data[:20, 2] = 7.0  # mostly constant: IQR 0, mean absolute deviation 0.7
    scaler = RobustScaler()
    scaler.adapt(data)
    finite0 = data[8:, 0]
    np.testing.assert_allclose(scaler.median.numpy()[0], np.median(finite0), rtol=F32_EPS)
    assert scaler.count.numpy().tolist() == [192, 200, 200, 200]
    np.testing.assert_allclose(scaler.scale.numpy()[1:3], [1.0, 0.7], rtol=F32_EPS)
    x = np.array([[np.nan, 3.0, 7.0, 0.0], [np.inf, 4.0, 0.0, -np.inf]], np.float32)
    out = scaler(x).numpy()
    assert np.isnan(out[0, 0])  # NaN in, NaN out
    np.testing.assert_allclose(out[0, 1:3], [0.0, 5.0])  # (7 - 0) / 0.7 = 10, clipped to 5
    assert out[1, 0] == 5.0 and out[1, 3] == -5.0  # +-inf are extreme outliers
    np.testing.assert_allclose(out[1, 1:3], [1.0, 0.0])


def test_robust_scaler_gradient_is_finite_and_zero_outside_the_clip():
    scaler = RobustScaler()
    scaler.adapt(np.arange(100.0)[:, None])  # median 49.5, IQR 49.5
    x = tf.constant([[0.0], [49.5], [1e30]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = scaler(x)
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(grad[:2, 0], 1 / 49.5, rtol=F32_EPS)
    assert grad[2, 0] == 0.0


def test_robust_scaler_adapts_on_tf_data_batched_unbatched_and_pairs():
    data, _ = _data_with_outliers(n=100)
    reference = RobustScaler()
    reference.adapt(data)
    labels = np.zeros(len(data))
    datasets = {
        "batched": tf.data.Dataset.from_tensor_slices(data).batch(16),
        "unbatched": tf.data.Dataset.from_tensor_slices(data),
        "pairs": tf.data.Dataset.from_tensor_slices((data, labels)).batch(7),
    }
    for name, dataset in datasets.items():
        scaler = RobustScaler()
        scaler.adapt(dataset)
        np.testing.assert_array_equal(scaler.median.numpy(), reference.median.numpy(), err_msg=name)
        np.testing.assert_array_equal(scaler.scale.numpy(), reference.scale.numpy(), err_msg=name)
    partial = RobustScaler()
    partial.adapt(datasets["batched"], steps=2)
    np.testing.assert_array_equal(partial.count.numpy(), [32] * 3)


def test_robust_scaler_feature_axis_and_higher_rank():
    data = (
        np.random.RandomState(3).normal(size=(6, 3, 5)).astype(np.float32)
        * np.array([1, 10, 100])[None, :, None]
    )
    scaler = RobustScaler(axis=1)
    scaler.adapt(data)
    per_feature = np.moveaxis(data, 1, -1).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(scaler.median.numpy(), np.median(per_feature, axis=0), rtol=F32_EPS)
    # Unbatched rank-2 samples are recognised once the layer knows its rank.
    again = RobustScaler(axis=1)
    again.adapt(tf.data.Dataset.from_tensor_slices(data).batch(2))
    again.adapt(tf.data.Dataset.from_tensor_slices(data))
    np.testing.assert_array_equal(again.median.numpy(), scaler.median.numpy())


def test_robust_scaler_errors():
    scaler = RobustScaler()
    with pytest.raises(RuntimeError, match="adapt"):
        scaler(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="rank >= 2"):
        RobustScaler().adapt(np.arange(10.0))
    built = RobustScaler()
    built.adapt(np.ones((4, 3)))
    with pytest.raises(ValueError, match="rank 3"):
        built.adapt(np.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="2 features"):
        built.adapt(np.ones((4, 2)))
    with pytest.raises(ValueError, match="no finite values"):
        RobustScaler().adapt(np.array([[1.0, np.nan], [2.0, np.nan]]))
    with pytest.raises(ValueError, match="no data"):
        RobustScaler().adapt(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="numeric"):
        RobustScaler().adapt(np.array([["a", "b"]]))
    # Features by name are no array (they were called "dtype object").
    features = {"a": np.ones((4, 3), np.float32)}
    with pytest.raises(TypeError, match=r"got a dict of \['a'\] \(dataset element 0\)"):
        RobustScaler().adapt(tf.data.Dataset.from_tensor_slices(features).batch(2))
    with pytest.raises(TypeError, match=r"got a dict of \['a'\] \(the array\)"):
        RobustScaler().adapt(features)
    with pytest.raises(ValueError, match="no features"):
        RobustScaler().adapt(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="no features"):
        RobustScaler(axis=1).adapt(np.zeros((5, 0, 3)))
    with pytest.raises(ValueError):
        built(np.ones((2, 4), np.float32))  # wrong number of features (Keras InputSpec)


def test_robust_scaler_steps_apply_to_datasets_only():
    data = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ValueError, match=r"`steps` applies to a tf.data.Dataset only.*steps=3"):
        RobustScaler().adapt(data, steps=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"`steps` must be a positive integer"):
            RobustScaler().adapt(tf.data.Dataset.from_tensor_slices(data).batch(2), steps=bad)
    # Honoured for a dataset: 5 batches of one row are rows 0..4, columns
    # (0, 2, 4, 6, 8) and (1, 3, 5, 7, 9): medians 4 and 5 exactly.
    scaler = RobustScaler()
    scaler.adapt(tf.data.Dataset.from_tensor_slices(data).batch(1), steps=5)
    np.testing.assert_array_equal(scaler.median.numpy(), [4.0, 5.0])
    assert scaler.count.numpy().tolist() == [5, 5]


@pytest.mark.parametrize(
    "clip", [0.0, -1.0, float("nan"), (1.0, 2.0), (-1.0, float("nan")), (2.0, -2.0), (1, 2, 3),
             (None, 5.0), (-1.0, None), (None, None)]
)
def test_robust_scaler_invalid_clip(clip):
    with pytest.raises(ValueError, match="clip"):
        RobustScaler(clip=clip)


@pytest.mark.parametrize(
    "quantiles", [(75, 25), (-1, 75), (25, 101), (50, 75), 25, ("25", "75"), (None, 75)]
)
def test_robust_scaler_invalid_quantile_range(quantiles):
    with pytest.raises(ValueError, match="quantile_range"):
        RobustScaler(quantile_range=quantiles)


def test_robust_scaler_statistics_survive_save_and_load(tmp_path):
    data, _ = _data_with_outliers(n=64)
    scaler = RobustScaler(name="scaler", clip=(-3.0, 8.0))
    scaler.adapt(data)
    model = keras.Sequential([keras.Input((3,)), scaler])
    path = tmp_path / "scaler.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.get_layer("scaler")
    assert restored.adapted and restored.get_config() == scaler.get_config()
    np.testing.assert_array_equal(restored.median.numpy(), scaler.median.numpy())
    np.testing.assert_array_equal(restored.scale.numpy(), scaler.scale.numpy())
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), model.predict(data, verbose=0))
    # set_weights counts as adapted too.
    fresh = RobustScaler(clip=(-3.0, 8.0))
    fresh.build((None, 3))
    fresh.set_weights(scaler.get_weights())
    np.testing.assert_array_equal(fresh(data).numpy(), scaler(data).numpy())


# ----------------------------------------------------------------------------
# Models: fit under float32 and mixed_float16, save/load with identical predictions
# ----------------------------------------------------------------------------


def _classification_data(n=128, seed=4):
    r = np.random.RandomState(seed)
    x = r.normal(size=(n, 4)) * np.array([1.0, 1e3, 0.01, 50.0]) + np.array([0.0, 5e3, 0.0, -20.0])
    x[:4, 1] = 1e8  # outliers that would overflow float16
    logits = (x - np.median(x, 0)) / np.array([1.0, 1e3, 0.01, 50.0]) @ r.normal(size=(4, 3))
    y = keras.utils.to_categorical(np.argmax(logits, axis=1), 3)
    return x.astype(np.float32), y.astype(np.float32)


def _sequential(x):
    scaler = RobustScaler()
    scaler.adapt(x)
    return keras.Sequential(
        [
            keras.Input((4,)),
            scaler,
            keras.layers.Dense(16),
            LeakyReLU(),
            keras.layers.Dense(16, activation=activations.elu),
            ELU(alpha=0.5),
            keras.layers.Dense(3),
            Softmax(),
        ]
    )


def _functional(x):
    features = keras.Input((4,), name="features")
    allowed = keras.Input((4,), dtype="bool", name="allowed")
    scaler = RobustScaler()
    scaler.adapt(x)
    scaled = scaler(features)
    h = keras.layers.Dense(16, activation=activations.leaky_relu)(scaled)
    h = ELU()(h)
    # Attention over the scaled features, restricted to the allowed ones (some
    # rows allow none: their weights are 0, and their gradient must not be NaN).
    weights = Softmax()(keras.layers.Dense(4)(h), mask=allowed)
    pooled = keras.layers.Dot(axes=1)([weights, scaled])  # Dot drops the mask
    logits = keras.layers.Dense(3)(keras.layers.Concatenate()([h, pooled]))
    probs = Softmax()(logits)
    return keras.Model({"features": features, "allowed": allowed}, probs)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_models_train_and_round_trip(kind, policy, mixed_precision_policy, tmp_path):
    mixed_precision_policy(policy)
    keras.utils.set_random_seed(0)
    x, y = _classification_data()
    if kind == "sequential":
        model, inputs = _sequential(x), x
    else:
        allowed = np.random.RandomState(5).uniform(size=x.shape) > 0.4
        allowed[::10] = False  # fully masked rows
        model, inputs = _functional(x), {"features": x, "allowed": allowed}
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="categorical_crossentropy")
    losses = model.fit(inputs, y, epochs=4, batch_size=32, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses

    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(
        loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0)
    )


def test_public_module_lists_its_layers():
    assert sorted(layers.__all__) == ["ELU", "LeakyReLU", "RobustScaler", "Softmax"]
