"""A persistent tape and nested tapes get the gradients a plain tape gets (contract rules 1, 5).

Eagerly, under more than one tape or a persistent one, TF differentiates a compiled call in
its higher-order form, which passes a zero upstream through every intermediate of the forward
pass: a norm's ``sqrt`` at 0 times 0 made a zero row's gradient NaN (``safe_norm``,
``l2_normalize``), and a softmax target's gradient in distillation NaN everywhere. Once a
kernel had run so, the same kernel's plain-tape gradients were NaN too. The kernels take
their compiled backward pass there instead (``_internal/kernel``).
"""

from __future__ import annotations

import functools

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import stableops.losses as S
import stableops.ops as O
from tests._public_cases import CASES, inputs

# The tapes' paths differ (TF's gradient of the compiled call, a row-local product, the
# compiled backward pass): the same formulas, rounded in other orders. 8 float32 ULPs of the
# largest entry of the gradient.
_TOLERANCE = 8 * np.finfo(np.float32).eps


def _float_inputs(name):
    return [
        tf.constant(a) if a.dtype.kind != "f" else tf.constant(a, tf.float32)
        for a in inputs(name, np.float32)
    ]


def _watched(values):
    return [v for v in values if v.dtype.is_floating]


def _plain(fn, values):
    with tf.GradientTape() as tape:
        tape.watch(_watched(values))
        total = tf.reduce_sum(fn(*values))
    return tape.gradient(total, _watched(values))


def _persistent(fn, values):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(_watched(values))
        total = tf.reduce_sum(fn(*values))
    gradients = tape.gradient(total, _watched(values))
    del tape
    return gradients


def _nested(fn, values):
    """The inner tape's gradient, both tapes watching the inputs (as in a gradient penalty)."""
    with tf.GradientTape() as outer:
        outer.watch(_watched(values))
        with tf.GradientTape() as inner:
            inner.watch(_watched(values))
            total = tf.reduce_sum(fn(*values))
        return inner.gradient(total, _watched(values))


@pytest.mark.parametrize("tapes", [_persistent, _nested], ids=["persistent", "nested"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_public_function_has_the_plain_tapes_gradient_under_other_tapes(name, tapes):
    fn, _, _ = CASES[name]
    values = _float_inputs(name)
    # Under the other tapes first: it left the kernel's later plain-tape gradients NaN.
    got = [g.numpy() for g in tapes(fn, values)]
    want = [g.numpy() for g in _plain(fn, values)]
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g)), (name, g)
        scale = np.max(np.abs(w))
        np.testing.assert_allclose(g, w, rtol=_TOLERANCE, atol=_TOLERANCE * scale)


@pytest.mark.parametrize("tapes", [_plain, _persistent, _nested])
def test_a_zero_rows_norm_has_gradient_zero_under_any_tape(tapes):
    x = tf.constant([[0.0, 0.0], [3.0, 4.0]])
    (norm,) = tapes(O.safe_norm, [x])
    (unit,) = tapes(lambda v: O.l2_normalize(v) * [[1.0, 2.0]], [x])
    np.testing.assert_array_equal(norm.numpy()[0], [0.0, 0.0])
    np.testing.assert_allclose(norm.numpy()[1], [0.6, 0.8], rtol=_TOLERANCE)
    np.testing.assert_array_equal(unit.numpy()[0], [0.0, 0.0])


@pytest.mark.parametrize("tapes", [_plain, _persistent, _nested])
def test_one_tensor_passed_twice_gets_its_gradient_once(tapes):
    """The entropy ``-sum(xlogy(p, p))`` has gradient ``-(log p + 1)`` and ``logaddexp(p, p) =
    p + log 2`` gradient 1 (closed forms). Under a persistent tape or nested tapes the eager
    backward pass watched the one tensor at both positions, and each got the whole gradient:
    twice it, summed."""
    p = np.array([0.2, 0.8])
    (entropy,) = tapes(lambda v: -O.xlogy(v, v), [tf.constant(p, tf.float32)])
    np.testing.assert_allclose(entropy.numpy(), -(np.log(p) + 1.0), rtol=_TOLERANCE)
    (doubled,) = tapes(lambda v: O.logaddexp(v, v), [tf.constant(p, tf.float32)])
    np.testing.assert_array_equal(doubled.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("tapes", [_plain, _persistent, _nested])
def test_distillation_targets_get_their_gradient_under_any_tape(tapes):
    """d/d(teacher logits) of the cross-entropy from logits against the teacher's softmax:
    ``-J_softmax(t)^T log_softmax(s)``, closed form in float64."""
    teacher = np.array([[1.0, 2.0, 0.5]])
    student = np.array([[0.3, -1.0, 2.0]])

    def loss(t, s):
        return S.categorical_crossentropy(tf.nn.softmax(t), s, from_logits=True)

    got, _ = tapes(loss, [tf.constant(teacher, tf.float32), tf.constant(student, tf.float32)])
    q = np.exp(teacher) / np.exp(teacher).sum()
    log_p = student - np.log(np.exp(student).sum())
    want = -(q * log_p - q * (q * log_p).sum())
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=_TOLERANCE)


@pytest.mark.parametrize("tapes", [_plain, _persistent, _nested])
def test_a_quotients_gradient_at_a_denominator_below_the_range_is_minus_infinity(tapes):
    # safe_divide's documented gradient: d(x / y)/dy = -x / y^2 = -1e40, beyond float32.
    _, to_y = tapes(O.safe_divide, [tf.constant(1.0), tf.constant(1e-20)])
    assert to_y.numpy() == -np.inf


@pytest.mark.parametrize(
    "loss, y_true, y_pred",
    [
        # An earlier call without a tape, then a persistent one: TF's gradient of the
        # compiled call met the tf.cond of the overlap kernels (OptionalNone: XLA failed).
        (S.Dice(), [[0.0, 1.0, 1.0, 0.0]], [[0.3, 0.2, 0.8, 0.5]]),
        (S.Tversky(), [[0.0, 1.0, 1.0, 0.0]], [[0.3, 0.2, 0.8, 0.5]]),
        # In-domain inputs whose plain-tape gradients are finite and were NaN.
        (S.KLDivergence(), [[0.5, 0.5]], [[1e-37, 0.5]]),
        (S.SparseCategoricalCrossentropy(label_smoothing=0.1), [1],
         [[1e-30, 1.18e-38, 1e-30, 1e-30]]),
    ],
    ids=["dice", "tversky", "kl_divergence", "sparse_smoothed"],
)
@pytest.mark.parametrize("tapes", [_persistent, _nested], ids=["persistent", "nested"])
def test_loss_classes_after_an_untaped_call_get_the_plain_tapes_gradient(
    loss, y_true, y_pred, tapes
):
    values = [tf.constant(y_true), tf.constant(y_pred, tf.float32)]
    loss(*values)  # compiles the kernel with no tape watching

    def prediction_only(y):
        return loss(values[0], y)

    (got,) = tapes(prediction_only, values[1:])
    (want,) = _plain(prediction_only, values[1:])
    assert np.all(np.isfinite(want.numpy()))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=_TOLERANCE)


def _penalty_gradient(fn, values):
    """d/d inputs of the squared norm of fn's gradient: a gradient penalty's second order."""
    with tf.GradientTape() as outer:
        outer.watch(_watched(values))
        with tf.GradientTape() as inner:
            inner.watch(_watched(values))
            total = tf.reduce_sum(fn(*values))
        gradients = inner.gradient(total, _watched(values))
        penalty = tf.add_n([tf.reduce_sum(g * g) for g in gradients])
    return outer.gradient(penalty, _watched(values))


_SECOND_ORDER = [
    "categorical_crossentropy", "elu", "log_softmax", "logsumexp", "softmax",
    "losses.binary_crossentropy/logits", "losses.categorical_crossentropy/logits",
    "losses.kl_divergence", "losses.sparse_categorical_crossentropy/logits",
]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["function", "xla"])
@pytest.mark.parametrize("name", _SECOND_ORDER)
def test_a_gradient_penalty_in_a_graph_has_the_eager_second_order_gradient(name, jit_compile):
    # In a plain tf.function the kernels took the single-tape path under nested tapes too:
    # the second order was TF's gradient of the compiled call, NaN for categorical
    # cross-entropy (d penalty / d target all NaN, distillation with a gradient penalty).
    fn, _, _ = CASES[name]
    values = _float_inputs(name)
    want = [g.numpy() for g in _penalty_gradient(fn, values)]
    graph = tf.function(lambda *v: _penalty_gradient(fn, v), jit_compile=jit_compile)
    got = [g.numpy() for g in graph(*values)]
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g)), (name, g)
        scale = np.max(np.abs(w))
        np.testing.assert_allclose(g, w, rtol=_TOLERANCE, atol=_TOLERANCE * scale)


@pytest.mark.parametrize("name", _SECOND_ORDER)
def test_a_gradient_penalty_around_a_tf_function_has_the_eager_second_order_gradient(name):
    # Both tapes outside the tf.function: while it is traced no tape watches its inputs, and
    # the kernels called the compiled forward pass alone, leaving its gradient to TF, whose
    # second order raised "out of scope" (logsumexp, softmax, the cross-entropies).
    fn, _, _ = CASES[name]
    values = _float_inputs(name)
    want = [g.numpy() for g in _penalty_gradient(fn, values)]
    total = tf.function(lambda *v: tf.reduce_sum(fn(*v)))
    got = [g.numpy() for g in _penalty_gradient(total, values)]
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g)), (name, g)
        scale = np.max(np.abs(w))
        np.testing.assert_allclose(g, w, rtol=_TOLERANCE, atol=_TOLERANCE * scale)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_tape_around_a_tf_function_gets_the_eager_gradient(name):
    """No tape watches a tf.function's inputs while it is traced, so a kernel cannot tell
    whether a gradient will be asked for: it takes its compiled backward pass (once TF's
    gradient of the compiled forward call), for every input, labels included."""
    fn, _, _ = CASES[name]
    values = _float_inputs(name)
    graph = tf.function(lambda *v: fn(*v))
    got = [g.numpy() for g in _plain(graph, values)]
    want = [g.numpy() for g in _plain(fn, values)]
    for g, w in zip(got, want):
        scale = np.max(np.abs(w))
        np.testing.assert_allclose(g, w, rtol=_TOLERANCE, atol=_TOLERANCE * scale)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["function", "xla"])
@pytest.mark.parametrize("scale", [1.0, 1e200], ids=["plain", "normalized"])
def test_float64_cosine_similaritys_gradient_penalty_in_a_graph(scale, jit_compile):
    # The normalized form's gradient was a gradient tape inside a tf.cond: in a plain
    # tf.function its second order raised an AssertionError (cond_v2), both inputs watched.
    # One row of norm 1e200 sends the whole batch to the normalized form (its own penalty
    # gradient, of order |x|^-3, is 0).
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(3, 4)) for _ in range(2)]
    rows[0][0] *= scale
    values = [tf.constant(r, tf.float64) for r in rows]
    want = [g.numpy() for g in _penalty_gradient(S.cosine_similarity, values)]
    penalty = functools.partial(_penalty_gradient, S.cosine_similarity)
    graph = tf.function(lambda *v: penalty(v), jit_compile=jit_compile)
    for g, w in zip(graph(*values), want):
        g = g.numpy()
        assert np.all(np.isfinite(g)) and np.any(g != 0)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12 * np.max(np.abs(w)))


def test_vectorized_map_keeps_categorical_crossentropys_target_gradient_finite():
    # tf.vectorized_map drops custom gradients, so TF differentiates the kernel's own ops:
    # the unselected empty-row loss `mass * inf` sent 0 * inf = NaN to every target
    # (distillation: targets that are a softmax of the same logits).
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 4)), tf.float32)

    def distillation(v):
        return O.categorical_crossentropy(tf.nn.softmax(v), v, from_logits=True)

    gradients = []
    for apply in (distillation, lambda v: tf.vectorized_map(distillation, v)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(apply(x))
        gradients.append(tape.gradient(total, x).numpy())
    direct, mapped = gradients
    assert np.all(np.isfinite(mapped))
    scale = np.abs(direct).max()
    np.testing.assert_allclose(mapped, direct, rtol=_TOLERANCE, atol=_TOLERANCE * scale)


@pytest.mark.parametrize("jit_compile", [None, False, True], ids=["eager", "function", "xla"])
def test_binary_focal_second_derivative_at_a_zero_logit(jit_compile):
    """The focal terms took exp(-|x|), and abs's slope at 0 is 0: the second derivative at
    x = 0 was 0 (mpmath: 0.399). Against mpmath's second derivative of the definition,
    (1 - p_t)^2 softplus(-+x) (gamma 2, no class balancing: the defaults)."""
    x = tf.constant([[0.0], [1e-3], [-2.0]])
    t = tf.constant([[1.0], [1.0], [0.0]])

    def second_derivative(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(S.binary_focal_crossentropy(t, x, from_logits=True))
            slope = tf.reduce_sum(inner.gradient(loss, x))  # elementwise: the sum is the slope
        return outer.gradient(slope, x)

    run = second_derivative if jit_compile is None else tf.function(
        second_derivative, jit_compile=jit_compile
    )
    got = run(x).numpy().ravel()

    def focal(z, v):
        sign = 1 if z == 1 else -1  # p_t = sigmoid(sign x)
        return (1 - mpmath.sigmoid(sign * v)) ** 2 * mpmath.log1p(mpmath.exp(-sign * v))

    want = [
        float(mpmath.diff(lambda v, z=z: focal(z, v), mpmath.mpf(float(v)), 2))
        for z, v in zip(t.numpy().ravel(), x.numpy().ravel())
    ]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _near_pair(name, dtype):
    """The case's inputs with the second float input a relative ``2^-12`` (float32) or
    ``2^-30`` (float64) from the first, where a loss of the two cancels; ``None`` for a case
    without two float inputs of one shape."""
    arrays = inputs(name, dtype)
    floats = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    if len(floats) < 2 or arrays[floats[0]].shape != arrays[floats[1]].shape:
        return None
    first, second = floats[:2]
    step = 2.0**-12 if dtype == np.float32 else 2.0**-30
    jitter = np.random.default_rng(0).uniform(-1.0, 1.0, arrays[first].shape)
    arrays[second] = (arrays[first] * (1.0 + step * jitter)).astype(dtype)
    return [tf.constant(a) for a in arrays]


_NEAR_PAIRS = [name for name in sorted(CASES) if _near_pair(name, np.float32) is not None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", _NEAR_PAIRS)
def test_a_persistent_tape_in_a_graph_keeps_the_value(name, dtype):
    """In a ``tf.function`` under a persistent tape a kernel is traced in place, into a graph
    that TF's optimizer rewrites: ``log(1 + q)`` became ``log1p(q)`` in the compensated log of
    MSLE, which then added the rounding of ``1 + q`` twice (2e3 ULP in float32 and 6e8 in
    float64 on nearly equal rows). The value there is the eager one, within 8 ULP of each
    entry (the two paths round in other orders)."""
    fn, _, _ = CASES[name]
    values = _near_pair(name, dtype)

    def under_a_persistent_tape(*values):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(_watched(values))
            value = fn(*values)
        return value

    got = tf.function(under_a_persistent_tape)(*values).numpy()
    want = fn(*values).numpy()
    tolerance = 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=0)
