"""Every kernel call runs as one XLA computation, in every regime.

Keras's losses and layers run op by op in a plain ``tf.function`` (what
``model.fit`` runs without a GPU): one kernel launch and one intermediate
buffer per elementwise op, and a stable formula has several times more ops
than a naive one. ``xla_kernel`` compiles the whole op, with its backward
pass, as one XLA computation instead:

- called eagerly, it runs its compiled function (through a cached concrete
  function per argument signature), and under a single gradient tape TF
  differentiates the compiled call; a *row-local* kernel (below) takes its
  row-local path instead, with the compiled call hidden from the tape
  (measured faster at 2^20). Under a persistent tape or nested tapes every
  kernel takes the *recompute* path below, its backward pass run op by op
  where an outer tape records it (a second-order gradient): TF's gradient of
  a compiled call there is its higher-order form, which sent a zero upstream
  through every intermediate (NaN gradients at a zero row's norm, in
  distillation's targets) or failed to compile (the ``tf.cond`` of Dice);
- called while a ``tf.function`` is being traced (``model.fit``, a user's
  ``tf.function``, a SavedModel), it calls a compiled *forward* function under
  a ``tf.custom_gradient``; each compiled call is one XLA cluster in the
  caller's graph. Only inputs a gradient tape watches get gradient work, and
  the backward pass is one of the three below; where no tape in the graph watches
  any input (a tape around the ``tf.function``, or none: an inference), every
  floating input gets the *recompute* path, which an inference pays one identity
  op for (TF's own gradient of the compiled call kept every intermediate alive,
  and its second order raised "out of scope"):

  * *recompute* (the default): a compiled *backward* function runs the
    forward pass again with its vector-Jacobian product, one XLA
    computation; nothing but the inputs stays alive between the passes
    (TF's own gradient of a compiled call makes the forward call return
    every intermediate the backward pass needs: 2-6x Keras's peak memory);
  * *row-local* (``row_local=True``, the losses and ``elu``): the forward call also
    returns the gradient for a unit upstream, and the backward pass is one
    multiplication, as TF's fused cross-entropy kernels do;
  * *from the output* (``gradient_from_output``, softmax and log-softmax):
    a compiled call on the output and the upstream gradient;
  * eagerly, from 2^18 entries, *from the input* (``gradient_from_input``,
    ``elu``): a compiled call on the input and the upstream gradient, the forward
    call returning the value alone;
- an *elementwise* kernel of one input (``elementwise=True``) gets that input as
  one axis in a graph, reshaped before and after the compiled call (see
  :func:`xla_kernel`);
- in a graph, a call's outputs keep the static shapes that its inputs' shapes
  give them, also after the compiled function was generalized for other batch
  sizes (``with_static_shapes`` inside :func:`xla_kernel`);
- called while another kernel or a ``jit_compile=True`` function is being
  traced, it is inlined: nested kernels make one computation, and the caller's
  XLA computation takes the kernel in whole.

Each compiled function is traced once per dtype, non-tensor keyword argument,
*rank* of its tensor arguments and static size of their axes after the first:
there is one ``tf.function`` per role (forward, backward), such shape signature
and context (eager or graph), and within it ``reduce_retracing`` generalizes the
first axis, so a changing batch size does not retrace (XLA still compiles each
new concrete shape once) while the rank and the row's width stay static for the
kernel's Python code (``len(x.shape)``, canonical axes, ``_trace_shape``); a kernel
declared ``any_length`` is traced for the ranks alone (its other axes generalize too).
Arguments of unknown rank (rare, only in graphs) run the Python function inline.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import tensorflow as tf

from stableops._internal.clip import clip
from stableops._internal.dtypes import (
    compute_dtype,
    dtype_limits,
    saturating_cast,
    used_wide,
    widened,
)
from stableops._internal.gradients import custom_gradient
from stableops._internal.wrapping import wraps_public

try:  # how tf.function itself tells that it is traced inside an XLA computation
    from tensorflow.python.ops.control_flow_util import (
        GraphOrParentsInXlaContext as _in_xla_context,
    )
except ImportError:  # pragma: no cover - a TF without it: treat every graph as plain
    def _in_xla_context(graph):
        return False

try:  # how TF's own ops tell whether a gradient tape records them
    from tensorflow.python.eager.record import should_record_backprop as _taped
except ImportError:  # pragma: no cover - a TF without it: assume every input is taped
    def _taped(tensors):
        return True

try:  # how tf.custom_gradient records an eager operation on the tapes, without its checks
    from tensorflow.python.eager.record import record_operation as _record_operation
except ImportError:  # pragma: no cover - a TF without it: eager calls keep TF's gradient
    _record_operation = None

try:  # how TF's function calls tell a single tape from nested ones (higher order)
    from tensorflow.python.ops import gradients_util as _gradients_util
except ImportError:  # pragma: no cover - a TF without it: eager calls keep TF's gradient
    _gradients_util = None


def _single_tape(tensors) -> bool:
    """Whether exactly one gradient tape watches ``tensors`` (first-order gradients only)."""
    if _gradients_util is None:
        return False
    order = _gradients_util.PossibleTapeGradientTypes(tensors)
    return order == _gradients_util.POSSIBLE_GRADIENT_TYPES_FIRST_ORDER


_tracing = threading.local()


_ARRAYS = (list, np.ndarray, tf.Variable)


def _is_array(value) -> bool:
    """A list, NumPy array or variable: TF's, or Keras 3's (``keras.Variable``, a layer's
    weight), which is no ``tf.Variable`` but converts itself (``__tf_tensor__``). Passed on
    as it is, a Keras variable reached a ``tf.function`` traced in a graph, which asked it
    for ``numpy()``."""
    return isinstance(value, _ARRAYS) or (
        hasattr(value, "__tf_tensor__") and hasattr(value, "assign")
    )


def _tensor_if_array(value, partnered):
    # Lists and NumPy arrays would otherwise be traced as Python constants
    # (one retrace per distinct value); tensors trace once per dtype and rank.
    # A variable is read here, as a TF op reads it: the tape sees the read (and
    # watches a trainable variable), and the kernel gets a tensor.
    # A NumPy scalar is the Python number it holds, as the kernels' number arguments are,
    # where a tensor argument gives it a dtype (`safe_divide(x, np.float64(2))` takes x's);
    # a floating one with no such partner keeps its own (`safe_log(np.float64(1e-300))`
    # is float64's, -690.8, where the number gave float32's -inf).
    if isinstance(value, np.generic):
        if partnered or not isinstance(value, np.floating):
            return value.item()
        return tf.convert_to_tensor(value)
    if _is_array(value):
        return tf.convert_to_tensor(value)
    return value


def _tensors_if_arrays(args, kwargs):
    """:func:`_tensor_if_array` of every argument."""
    partnered = any(
        isinstance(v, tf.Tensor) or _is_array(v) for v in (*args, *kwargs.values())
    )
    return (
        tuple(_tensor_if_array(a, partnered) for a in args),
        {k: _tensor_if_array(v, partnered) for k, v in kwargs.items()},
    )


def _watched_by_nested_tapes(args, kwargs) -> bool:
    """Whether a persistent tape or nested tapes watch a floating tensor argument."""
    watched = [v for v in (*args, *kwargs.values()) if _differentiable(v)]
    return bool(watched) and not _single_tape(watched)


def _rank(value):
    """The static rank of a tensor argument, ``-1`` when unknown, ``None`` for non-tensors."""
    if isinstance(value, tf.Tensor):
        rank = value.shape.rank
        return -1 if rank is None else rank
    return None


def _trace_shape(value):
    """What a compiled function is traced for, per tensor argument: its rank and the static
    sizes of its axes after the first (``-1`` for an unknown rank, ``None`` for non-tensors).

    Only the first axis (the batch) is left to ``reduce_retracing`` to generalize. A trace
    generalized over the row's width too took the width-independent paths
    (``reductions.folded_row_sum``'s folds for a row of 10): ``log_cosh`` of ``[104857, 10]``
    in a plain ``tf.function`` after a call at width 16, one core, 16 against 5 ms.
    """
    rank = _rank(value)
    if rank is None or rank == -1:
        return rank
    return (rank, tuple(value.shape[1:]))


def _call_signature(value):
    """A hashable key for a call's arguments: dtype and shape of each tensor, Python values
    with their types, nesting kept (``axis=(0,)`` and ``axis=0`` differ)."""
    if isinstance(value, tf.Tensor):
        return ("tensor", value.dtype, tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *map(_call_signature, value))
    if isinstance(value, dict):
        return ("dict", *((k, _call_signature(v)) for k, v in sorted(value.items())))
    return (type(value), value)  # 1, 1.0 and True are equal, but not the same argument


def _floating_tensor(value) -> bool:
    return isinstance(value, tf.Tensor) and value.dtype.is_floating


def _differentiable(value) -> bool:
    """A floating tensor that a gradient tape watches (labels and inference inputs are not:
    no gradient work is done for them)."""
    return _floating_tensor(value) and _taped([value])


def _floating(outputs):
    """A kernel's floating outputs, in ``tf.nest.flatten`` order (the ones with a gradient)."""
    return [o for o in tf.nest.flatten(outputs) if o.dtype.is_floating]


def _floating_upstreams(upstreams, outputs):
    """The upstream gradients of the floating outputs (one per flat output is given;
    zeros where an output was not used)."""
    return [
        tf.zeros_like(o) if u is None else u
        for u, o in zip(upstreams, tf.nest.flatten(outputs))
        if o.dtype.is_floating
    ]


def _reduced_axes(axis, rank):
    """The non-negative axes that ``axis`` (an int, a tuple of ints, or ``None``: every
    axis) reduces in a tensor of ``rank``; ``None`` for any other ``axis``."""
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, tuple) else (axis,)
    if not all(isinstance(a, int) for a in axes):
        return None
    return tuple(sorted({a % rank for a in axes}))


def _rows_align(tensors, axis) -> bool:
    """Whether the tensors have one rank and the same static dimensions outside ``axis``
    (no broadcasting across rows, where a local gradient would have summed over rows)."""
    rank = tensors[0].shape.rank
    if any(t.shape.rank != rank for t in tensors) or not rank:
        return False
    reduced = _reduced_axes(axis, rank)
    if reduced is None:
        return False
    keep = [i for i in range(rank) if i not in reduced]
    return all(
        [t.shape[i] for i in keep] == [tensors[0].shape[i] for i in keep] for t in tensors
    )


# XLA on CPU (TF 2.21) runs a loop over an innermost axis of 1 entry, or of 9 to 32, one
# element at a time (LLVM's <1 x float>); it vectorizes across rows up to 8 entries and along
# the row from 33 (a log of 2^20 floats, one core: 0.5-0.6 ms over rows of 2-8 and 40-1024
# entries or over one axis, 1.2-1.4 ms over rows of 9-32).
SCALAR_LOOP_WIDTHS = range(9, 33)


def _width_as_one_axis(args, kwargs, axis, terms_per_element):
    """The row width ``w`` when a row-local call's rows go to the compiled call as one axis
    (:func:`_as_one_axis`), else ``None``.

    Every tensor argument must be ``[batch, ..., w]`` with the same static sizes after the
    batch, reduced along its last axis (rows of ``w``). Columns
    (``w = 1``: a regression's or a binary classifier's targets and predictions) always
    go; rows XLA loops over one element at a time (``SCALAR_LOOP_WIDTHS``) go for a kernel
    of per-element terms, whose local gradient is then one loop over one axis. In a plain
    ``tf.function``, one core, 2^20, against Keras: ``mean_squared_error`` over columns
    1.33 -> 1.23 (2^18: 1.47 -> 1.33); ``mean_absolute_error`` over rows of 10 1.02 ->
    0.81, of 16 1.14 -> 0.88; ``log_cosh`` over rows of 10 1.02 -> 0.90; binary cross-entropy
    from logits over rows of 16 0.61 -> 0.55, ``kl_divergence`` over rows of 10 0.55 -> 0.49.
    A kernel whose gradient holds a row's values (the categorical cross-entropies, cosine
    similarity) loses: a loop over one axis reads them by ``i / w`` (categorical
    cross-entropy from logits over rows of 32 0.80 -> 1.03); rows of 2-8 and from 33 lose a
    little (``mean_absolute_error`` over rows of 4 0.55 -> 0.59).
    """
    tensors = [v for v in tf.nest.flatten((args, kwargs)) if isinstance(v, tf.Tensor)]
    shapes = {tuple(t.shape[1:]) if t.shape.rank else None for t in tensors}
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    if not shape or None in shape or axis not in (-1, len(shape)):
        return None
    width = shape[-1]
    if width == 1 or (terms_per_element and width in SCALAR_LOOP_WIDTHS):
        return width
    return None


def _for_call(flag, kwargs) -> bool:
    """A kernel's flag for one call: ``flag``, or ``flag(**kwargs)`` where it is a function of
    the call's keyword arguments (``xla_kernel``'s ``saturating``, ``terms_per_element``)."""
    return flag(**kwargs) if callable(flag) else flag


def _as_one_axis(value):
    """A tensor reshaped to one axis (free: no copy); other values as they are."""
    return tf.reshape(value, [-1]) if isinstance(value, tf.Tensor) else value


def _widest_floating(values) -> list:
    """The floating tensor argument with the most rows (a list of it, or empty).

    A taped input the rows of a wider, untaped one broadcast over (a learned prior
    beside a batch of means) has no row-local gradient: the rows are the wider one's.
    Unknown dimensions count as the widest.
    """
    floating = [v for v in values if isinstance(v, tf.Tensor) and v.dtype.is_floating]
    if not floating or any(v.shape.rank is None for v in floating):
        return []

    def size(tensor):
        return (tensor.shape.rank, [math.inf if d is None else d for d in tensor.shape])

    return [max(floating, key=size)]


def _upstream_per_element(upstream, local_gradient, axis):
    """``upstream`` with the reduced ``axis`` restored (size 1), in ``local_gradient``'s dtype."""
    if upstream.shape.rank < local_gradient.shape.rank:
        for reduced in _reduced_axes(axis, local_gradient.shape.rank):
            upstream = tf.expand_dims(upstream, reduced)
    return tf.cast(upstream, local_gradient.dtype)


def _times_upstream(upstream, local_gradient, dtype):
    """``upstream * local_gradient`` in the input's ``dtype`` (a half input's float32 local
    gradient saturates there; a float32/float64 product keeps IEEE overflow)."""
    return saturating_cast(upstream * local_gradient, dtype)


def _saturating_times_upstream(upstream, local_gradient, dtype):
    """``upstream * local_gradient`` saturated at ``dtype``'s largest number (NaN kept)."""
    largest = dtype_limits(dtype).max
    return tf.cast(clip(upstream * local_gradient, -largest, largest), dtype)


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


def xla_kernel(
    fn=None, *, row_local=False, gradient_from_output=None, gradient_from_input=None,
    elementwise=False, saturating=False, terms_per_element=False, any_length=False,
):
    """Decorate a pure TF function so that every call runs it XLA-compiled.

    ``gradient_from_output(output, upstream, **kwargs)``, where given, is the
    gradient with respect to the first argument computed from the output alone
    (softmax: ``y (g - <g, y>)``): for a float32/float64 first argument that is
    the only taped input, the backward pass is one compiled call of it on the
    output (alive anyway) instead of recomputing the forward pass.

    ``gradient_from_input(x, upstream, **kwargs)``, where given, is the gradient with
    respect to the first argument computed from that argument (elu: ``upstream`` times
    ``exp(min(x, 0))``): eagerly, for a float32/float64 first argument of 2^18 entries or
    more that is the only taped input, the forward call returns the value alone and the
    backward pass is one compiled call of it on the input, which the caller holds anyway.
    A row-local kernel otherwise writes its local gradient beside the value (a full-size
    stream more, alive until the backward pass): ``elu`` eagerly, forward and backward,
    one core, against Keras: 2^20 1.37 -> 1.18-1.23x, 2^22 1.30 -> 0.86-0.88x (2^16 and 2^18 the
    same; below, the second compiled call's dispatch costs more). In a graph the
    row-local path stays: its product is written into the upstream gradient's buffer,
    where the compiled backward call writes a buffer of its own while the upstream is
    alive. From the input there, two cores, a random upstream, against Keras: 2^20
    1.18-1.21 -> 1.05-1.07x, 2^22 1.15-1.25 -> 0.87-0.93x, but a small CNN's ``model.fit``
    peaked at 18-24 MiB against 16-19 (Keras 13-15).

    ``row_local=True`` declares a kernel with one output in which each element
    of every floating input reaches exactly one output element: elementwise,
    or a reduction over the ``axis`` keyword argument (the last axis without
    one; a tuple of axes, or ``None`` for every axis), as the losses'
    per-sample reductions. Its gradient for an upstream
    ``u`` is then ``u``, broadcast over the reduced axis, times the gradient
    for ``u = 1``; the forward call computes that local gradient in the same
    XLA computation as the value (as TF's fused cross-entropy kernels return
    their backprop), and the backward pass is one multiplication. Inputs whose
    static shapes differ outside the reduced axis (broadcasting across rows)
    take the recomputing backward pass instead. In a graph, a row-local call on columns
    (``[..., 1]``) passes them to its compiled call as one axis, and so do rows of 9-32
    entries with ``terms_per_element=True`` (or a function of a call's keyword arguments
    that says whether that call's is): a row-local kernel whose value sums or averages a
    term per element, each of the inputs' entries at that position alone (the regression
    losses, binary cross-entropy without ``ignore_class``), so its local gradient holds no
    row's value (:func:`_width_as_one_axis`).

    ``elementwise=True`` declares a kernel of one tensor argument computed element by
    element: in a graph its compiled call takes that argument as one axis (reshaped
    before and after the call, which copies nothing). XLA on CPU (TF 2.21) runs an
    elementwise loop that holds a broadcast scalar 2.5-3x slower over an innermost axis
    of 16 or 32 (a CNN's channels) than over one of 64 or more, or over one axis
    (``exp(x * 0.5)`` of 2^20 floats, one core: 1.36-1.41 against 0.52-0.53 ms). Reshaped
    inside the compiled call, XLA moves the reshape back onto the operands; eagerly the
    two reshapes cost more than they saved (``elu`` at [16384, 64], 2^20: 2.03 -> 2.4 ms);
    a caller's XLA computation that inlines the kernel keeps the caller's shapes.

    ``saturating=True`` (or a function of a call's keyword arguments that says whether
    that call is) declares a row-local kernel whose local gradient can be the largest
    number of the input's dtype: the straight-through slope ``1/tiny`` of a probability
    floored at ``tiny`` (a confidently wrong prediction's, the cross-entropies from
    probabilities). Its product with the upstream saturates there, in one compiled call,
    as the kernel's own gradient saturates where the kernel is inlined (under
    ``jit_compile=True``): a sample weight of 8 gave ``-inf`` outside XLA, and ``0 * -inf
    = NaN`` through a raw sigmoid before the loss. Other kernels' products keep IEEE
    overflow (docs/design.md, rule 1). The compiled product costs the from-probabilities
    losses 0-5% of their forward and backward time at 2^20 (sparse 10-15%), one core,
    where two selects in the graph cost 25-65%.

    ``any_length=True`` declares a kernel whose Python code reads no static size (only
    ``tf.shape``): it is traced for the ranks of its arguments alone, so that calls at new
    lengths (CTC's frames and labels) share a trace, generalized by ``reduce_retracing``
    after the second; XLA still compiles each new concrete shape. A new length's first
    call then costs the compile alone (CTC, value and gradient, a batch of 16 with 20
    classes, 2 cores, past the first two lengths: 1.1-1.7 -> 0.9-1.0 s eagerly, 1.7-2.4 ->
    1.1-1.2 s in a ``tf.function``).

    Non-tensor keyword arguments (``axis``, ``from_logits``, ...) are part of
    the compiled function's signature: each distinct value compiles once.
    The undecorated function stays available as ``.python_function``;
    ``.compiled(*args, **kwargs)`` calls the compiled function for the ranks of
    the given tensors, and ``.tracing_count()`` counts its traces (all ranks).
    """

    if fn is None:
        return functools.partial(
            xla_kernel,
            row_local=row_local,
            gradient_from_output=gradient_from_output,
            gradient_from_input=gradient_from_input,
            elementwise=elementwise,
            saturating=saturating,
            terms_per_element=terms_per_element,
            any_length=any_length,
        )

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

    def _taped_call(args, kwargs, positions, widen=False):
        """The kernel's outputs, under a tape watching the inputs at ``positions``.

        Each position is watched as a copy of its own: one tensor passed twice
        (``xlogy(p, p)``) would otherwise get the whole gradient at each position, twice
        its gradient once the caller sums them (eagerly under nested tapes). With
        ``widen``, a half-precision input is also watched as its float32 original
        (``widened``; ``None`` for the others)."""
        names, values = list(kwargs), [*args, *kwargs.values()]
        watched = [tf.identity(values[p]) for p in positions]
        wide = [
            tf.cast(copy, tf.float32) if widen and compute_dtype(copy.dtype) != copy.dtype else None
            for copy in watched
        ]
        watched = [c if w is None else widened(w, c.dtype) for c, w in zip(watched, wide)]
        for position, copy in zip(positions, watched):
            values[position] = copy
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched + [w for w in wide if w is not None])
            outputs = traced(*values[: len(args)], **dict(zip(names, values[len(args):])))
        return tape, outputs, watched, wide

    def backward(args, kwargs, positions, upstreams):
        # The forward pass again, with its gradient, as one computation: nothing
        # but the inputs is kept alive between the forward and the backward pass.
        tape, outputs, watched, _ = _taped_call(args, kwargs, positions)
        return tape.gradient(
            _floating(outputs), watched, output_gradients=upstreams,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )

    def forward_with_local_gradient(args, kwargs, positions):
        # The value and its gradient for a unit upstream, in one computation; a half input
        # the kernel computed from its float32 original (to_compute_saturating) gets its
        # gradient in float32, saturated after the product with the upstream.
        tape, outputs, watched, wide = _taped_call(args, kwargs, positions, widen=True)
        (loss,) = _floating(outputs)  # one floating output (a loss may add its boolean mask)
        widened_used = [w is not None and used_wide(c) for c, w in zip(watched, wide)]
        sources = watched + [w for w, used in zip(wide, widened_used) if used]
        gradients = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        wide_gradients = iter(gradients[len(watched):])
        return outputs, [
            next(wide_gradients) + tf.cast(g, tf.float32) if used else g
            for g, used in zip(gradients[: len(watched)], widened_used)
        ]

    def forward_with_local_gradient_of_rows(args, kwargs, positions, width):
        # forward_with_local_gradient of rows of `width` passed as one axis, with the local
        # gradients returned so: XLA's loops then run over one axis (_width_as_one_axis).
        def as_rows(value):
            return tf.reshape(value, [-1, width]) if isinstance(value, tf.Tensor) else value

        args, kwargs = tf.nest.map_structure(as_rows, (args, kwargs))
        outputs, gradients = forward_with_local_gradient(args, kwargs, positions)
        return outputs, [tf.reshape(g, [-1]) for g in gradients]

    def backward_from_output(output, upstream, kwargs):
        return gradient_from_output(output, upstream, **kwargs)

    def backward_from_input(x, upstream, kwargs):
        return gradient_from_input(x, upstream, **kwargs)

    # Graphs name the compiled calls after the kernel: `__inference__elu_kernel_forward_42`.
    forward.__name__ = forward_with_local_gradient.__name__ = f"{fn.__name__}_forward"
    forward_with_local_gradient_of_rows.__name__ = f"{fn.__name__}_forward"
    backward.__name__ = backward_from_output.__name__ = backward_from_input.__name__ = (
        f"{fn.__name__}_backward"
    )
    roles = {
        "forward": forward,
        "backward": backward,
        "forward_with_local_gradient": forward_with_local_gradient,
        "forward_with_local_gradient_of_rows": forward_with_local_gradient_of_rows,
        "backward_from_output": backward_from_output,
        "backward_from_input": backward_from_input,
        "saturating_times_upstream": _saturating_times_upstream,
    }
    compiled_functions = {}
    trace_shape = _rank if any_length else _trace_shape

    def compiled_function(role, args, kwargs):
        key = (
            role,
            # Eager calls and graph calls get separate functions (TF 2.21 once ran
            # eager gradients of a function a graph had differentiated with forward
            # intermediates that did not match it).
            tf.inside_function(),
            tuple(trace_shape(a) for a in args),
            tuple(sorted((k, trace_shape(v)) for k, v in kwargs.items())),
        )
        function = compiled_functions.get(key)
        if function is None:
            function = tf.function(
                roles[role], jit_compile=True, reduce_retracing=True, autograph=False
            )
            compiled_functions[key] = function
        return function

    concrete_functions = {}

    def call_eagerly(function, *call_args):
        """``function(*call_args)`` through its concrete function for these exact input
        signatures: matching the arguments to a trace costs a polymorphic ``tf.function``
        call about 100 us per call eagerly, a concrete one a third of that."""
        key = (function, _call_signature(call_args))
        try:
            concrete = concrete_functions.get(key)
        except TypeError:  # an unhashable Python argument: the polymorphic call
            return function(*call_args)
        if concrete is None:
            if len(concrete_functions) >= 1024:  # many input shapes: start over, stay bounded
                concrete_functions.clear()
            concrete = concrete_functions[key] = function.get_concrete_function(*call_args)
        return concrete(*call_args)

    def compiled(*args, **kwargs):
        eager = not tf.inside_function()
        names, values = list(kwargs), [*args, *kwargs.values()]
        # Only the inputs a gradient tape watches get gradient work (not labels,
        # not inference inputs); the others are passed through unwatched.
        positions = tuple(i for i, v in enumerate(values) if _differentiable(v))
        # Eagerly under a persistent tape or nested tapes the compiled backward call
        # (below), as in a graph: TF's gradient of the compiled call is then its
        # higher-order form, which differentiates every intermediate of the forward pass
        # with a zero upstream (sqrt's slope at 0 times 0: NaN for a zero row's norm).
        single_tape = not eager or not positions or _single_tape([values[p] for p in positions])
        if eager and single_tape and not (row_local or gradient_from_output is not None):
            # Eagerly under one tape, TF's own gradient of the compiled call (its
            # forward pass saving what the backward needs).
            return call_eagerly(compiled_function("forward", args, kwargs), args, kwargs)
        reduced_axis = kwargs.get("axis", -1)
        local = row_local and bool(positions) and _rows_align(
            [values[p] for p in positions] + _widest_floating(values), reduced_axis
        )
        one_float_input = positions == (0,) and values[0].dtype in (tf.float32, tf.float64)
        from_output = gradient_from_output is not None and one_float_input
        # Eagerly a kernel with its gradient from the output or the input records its
        # compiled backward call from 2^18 entries up; below, the two compiled calls'
        # dispatch costs more than TF's gradient of one (softmax, one core, against Keras:
        # 2^14 1.43 -> 1.70x, 2^18 1.37 -> 1.41x, 2^20 1.55-1.66 -> 1.20-1.45x) or than the
        # row-local path (elu).
        large = eager and one_float_input and (values[0].shape.num_elements() or 0) >= 2**18
        from_input = large and gradient_from_input is not None
        recorded = _record_operation is not None and (
            local or (large and (from_output or from_input))
        )
        if eager and single_tape and not recorded:
            # A row-local kernel, or a large one with its gradient from the output or the
            # input, takes its own path below under a single tape (one core, 2^20:
            # categorical cross-entropy from logits 1.15 -> 0.78x Keras, elu 2.06 -> 1.83x,
            # logsumexp 1.4 -> 1.3x); TF's gradient of the compiled call otherwise.
            return call_eagerly(compiled_function("forward", args, kwargs), args, kwargs)
        if not positions:
            floating = tuple(i for i, v in enumerate(values) if _floating_tensor(v))
            if eager or not floating:
                return compiled_function("forward", args, kwargs)(args, kwargs)
            # In a graph no tape watches the inputs while it is traced, but a tape around the
            # tf.function may still differentiate the call: it gets the compiled backward call
            # (`call` below), which costs an inference one identity op. TF's own gradient of the
            # compiled call kept every intermediate of the forward pass alive, and under two
            # tapes it failed ("out of scope": logsumexp, softmax, the cross-entropies).
            positions = floating

        def with_inputs(inputs):
            flat = list(values)
            for position, tensor in zip(positions, inputs):
                flat[position] = tensor
            return tuple(flat[: len(args)]), dict(zip(names, flat[len(args):]))

        def recorded_value_alone(backward_role):
            # Eagerly, from the output or the input (positions == (0,)): the compiled forward
            # call on the untaped input, and on the tape (directly, as the row-local path
            # below) one compiled backward call on the output or the input.
            x = values[0]
            call_args, call_kwargs = with_inputs((tf.stop_gradient(x),))
            forward = compiled_function("forward", args, kwargs)
            output = call_eagerly(forward, call_args, call_kwargs)
            saved = output if backward_role == "backward_from_output" else x
            run_backward = compiled_function(backward_role, args, kwargs)
            _record_operation(
                fn.__name__,
                [output],
                [x],
                lambda upstream: [call_eagerly(run_backward, saved, upstream, call_kwargs)],
            )
            return output

        if from_input and single_tape:
            return recorded_value_alone("backward_from_input")

        if local and single_tape:
            # In a graph: eagerly the two reshapes cost more than they save (as for
            # elementwise kernels, below).
            width = None if eager else _width_as_one_axis(
                args, kwargs, reduced_axis, _for_call(terms_per_element, kwargs)
            )

            def run(call_args, call_kwargs):
                """The compiled forward call: outputs and local gradients."""
                if width is None:
                    function = compiled_function(
                        "forward_with_local_gradient", call_args, call_kwargs
                    )
                    if eager:
                        return call_eagerly(function, call_args, call_kwargs, positions)
                    return function(call_args, call_kwargs, positions)
                call_args, call_kwargs = tf.nest.map_structure(
                    _as_one_axis, (call_args, call_kwargs)
                )
                function = compiled_function(
                    "forward_with_local_gradient_of_rows", call_args, call_kwargs
                )
                outputs, gradients = function(call_args, call_kwargs, positions, width)
                shapes = [tf.shape(values[p]) for p in positions]
                if len(values[positions[0]].shape) > 2:  # one output per row: its rows' shape
                    outputs = tf.nest.map_structure(
                        lambda o: tf.reshape(o, shapes[0][:-1]), outputs
                    )
                return outputs, [tf.reshape(g, s) for g, s in zip(gradients, shapes)]

            saturate = _for_call(saturating, kwargs)

            def product(upstream, local_gradient, dtype):
                if not saturate:
                    return _times_upstream(upstream, local_gradient, dtype)
                call_args = (upstream, local_gradient, dtype)
                saturated = compiled_function("saturating_times_upstream", call_args, {})
                return call_eagerly(saturated, *call_args) if eager else saturated(*call_args)

            def times_upstream(outputs, local_gradients):
                def grad(*upstreams):
                    (upstream,) = _floating_upstreams(upstreams, outputs)
                    return [
                        product(_upstream_per_element(upstream, g, reduced_axis), g,
                                values[p].dtype)
                        for g, p in zip(local_gradients, positions)
                    ]

                return grad

            if eager:
                # The tape records the product with the local gradients, not the compiled
                # call: recording the call would make TF run a forward pass that also
                # returns every intermediate for its own gradient, so the call gets inputs
                # the tape does not watch. (Not stop_recording: the call's first trace,
                # inside it, would lose its own tape and return zero gradients.) Recorded
                # as tf.custom_gradient records, without its checks for variables and its
                # identity ops: 600 -> 450 us per forward and backward of a [4, 4] elu.
                inputs = [values[p] for p in positions]
                untaped = [tf.stop_gradient(t) for t in inputs]
                outputs, local_gradients = run(*with_inputs(untaped))
                _record_operation(
                    fn.__name__,
                    tf.nest.flatten(outputs),
                    inputs,
                    times_upstream(outputs, local_gradients),
                )
                return outputs

            @custom_gradient
            def call_row_local(*inputs):
                outputs, local_gradients = run(*with_inputs(inputs))
                return outputs, times_upstream(outputs, local_gradients)

            return call_row_local(*[values[p] for p in positions])

        if from_output and single_tape:
            if eager:
                return recorded_value_alone("backward_from_output")

            @custom_gradient
            def call_from_output(x):
                call_args, call_kwargs = with_inputs((x,))
                output = compiled_function("forward", args, kwargs)(call_args, call_kwargs)

                def grad(upstream):
                    run_backward = compiled_function("backward_from_output", args, kwargs)
                    return run_backward(output, upstream, call_kwargs)

                return output, grad

            return call_from_output(values[0])

        @custom_gradient
        def call(*inputs):
            # Eagerly (under several tapes) the forward call gets inputs no tape watches:
            # recorded, it would be TF's higher-order gradient of the call all the same,
            # and a later first-order gradient of that compiled function was NaN too.
            untaped = [tf.stop_gradient(t) for t in inputs] if eager else inputs
            outputs = compiled_function("forward", args, kwargs)(*with_inputs(untaped))

            def grad(*upstreams):
                upstreams = _floating_upstreams(upstreams, outputs)
                backward_args = (*with_inputs(inputs), positions, upstreams)
                if eager and _taped([*inputs, *upstreams]):
                    # An outer tape records this backward pass (a second-order gradient):
                    # op by op, which TF differentiates whatever the kernel holds (its
                    # gradient of a compiled call whose loops or conditionals keep
                    # intermediates fails: CTC, the metric-learning losses).
                    return backward(*backward_args)
                return compiled_function("backward", args, kwargs)(*backward_args)

            return outputs, grad

        return call(*[values[p] for p in positions])

    static_shapes = {}

    def with_static_shapes(outputs, args, kwargs):
        """A graph call's ``outputs`` with the static shapes the inputs' shapes give them.

        TF infers a call's output shapes by running the shape functions of the compiled
        function's body on the inputs' shapes, but a ``tf.cond`` in it keeps the shapes of
        the trace: a trace generalized for other batch sizes gave a loss with a ``tf.cond``
        (Poisson, Dice) an unknown batch dimension for inputs of known shape. The shapes
        then come from a trace of the Python function for these exact shapes, once per
        input signature; nothing is traced where the outputs' shapes are fully known, or
        where an input's is not (an unknown batch stays unknown).
        """
        flat = tf.nest.flatten(outputs)
        inputs = [v for v in tf.nest.flatten((args, kwargs)) if isinstance(v, tf.Tensor)]
        if all(o.shape.is_fully_defined() for o in flat) or not all(
            t.shape.is_fully_defined() for t in inputs
        ):
            return outputs
        try:
            key = _call_signature((args, kwargs))
            shapes = static_shapes.get(key)
        except TypeError:  # an unhashable Python argument: leave the shapes as they are
            return outputs
        if shapes is None:
            if len(static_shapes) >= 1024:  # many input shapes: start over, stay bounded
                static_shapes.clear()
            specs = tf.nest.map_structure(
                lambda v: tf.TensorSpec(v.shape, v.dtype) if isinstance(v, tf.Tensor) else v,
                (args, kwargs),
            )
            trace = tf.function(traced, autograph=False).get_concrete_function(
                *specs[0], **specs[1]
            )
            shapes = [o.shape for o in tf.nest.flatten(trace.structured_outputs)]
            static_shapes[key] = shapes
        for output, shape in zip(flat, shapes):
            output.set_shape(shape)
        return outputs

    @tf.autograph.experimental.do_not_convert
    @wraps_public(fn)
    def kernel(*args, **kwargs):
        args, kwargs = _tensors_if_arrays(args, kwargs)
        if _inline_here():
            return inline(*args, **kwargs)
        if any(_rank(v) == -1 for v in (*args, *kwargs.values())):
            return inline(*args, **kwargs)
        if not tf.inside_function():
            return compiled(*args, **kwargs)
        if _watched_by_nested_tapes(args, kwargs):
            # A graph under a persistent tape or nested tapes (a gradient penalty): the
            # kernel traced in place, as under jit_compile, so that the second-order gradient
            # is TF's of the kernel's own ops. TF's gradient of a compiled call (or of the
            # row-local product with the local gradients it returns) there is its
            # higher-order form, which sends a zero upstream through every intermediate:
            # NaN for categorical cross-entropy's gradient penalty.
            return inline(*args, **kwargs)
        if elementwise and len(args) == 1:
            (x,) = args
            return tf.reshape(compiled(tf.reshape(x, [-1]), **kwargs), tf.shape(x))
        return with_static_shapes(compiled(*args, **kwargs), args, kwargs)

    def tracing_count():
        return sum(f.experimental_get_tracing_count() for f in compiled_functions.values())

    kernel.python_function = fn
    kernel.compiled = compiled
    kernel.tracing_count = tracing_count
    return kernel
