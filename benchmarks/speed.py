"""Speed: forward + backward time per case, size, dtype, mode and implementation.

What is timed is one call of ``forward_backward(fn)``: the loss (reduced to a
scalar, Keras's default ``sum_over_batch_size``) or op, and its gradient with
respect to the predictions (logits, or the op's input; for an op, for a fixed
random cotangent, as a training step's upstream gradient: see ``timed_inputs``).
Both value and gradient are returned, so no compiler can drop either. Three modes:

* ``eager``: called eagerly under a ``GradientTape`` (Keras runs op by op;
  stableops runs its XLA kernel, see ``stableops/_internal/kernel.py``);
* ``function``: ``tf.function(forward_backward)`` (Keras runs its graph of TF
  kernels; each stableops kernel call is a nested XLA computation, its
  backward pass another);
* ``xla``: ``tf.function(forward_backward, jit_compile=True)``.

Method (the 2 cores are shared with other work, so absolute times are noisy):
every contestant of one (case, size, dtype) is compiled and warmed up, then
timed in rounds; within a round each contestant is timed once (enough
back-to-back calls to last ``min_sample_s``, time per call), in an order
that alternates forwards and backwards between rounds. A contestant's time is
the median over rounds; the ratio stableops / Keras of one mode is the median
over rounds of the two times measured in the same round (paired, so a burst
of background load hits both sides), with its 25th and 75th percentiles.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np

from benchmarks.cases import BASELINE, Case, available_impls

MODES = ("eager", "function", "xla")
COPY = ("memcpy", "numpy")  # the (impl, mode) key of the memory-copy yardstick
METHOD = (
    "forward + backward per call; contestants of one (case, size, dtype) timed in interleaved "
    "rounds "
    "(order alternating), each sample = back-to-back calls lasting >= min_sample_s; time = median "
    "over "
    "rounds; ratio = median over rounds of the same-round ratio stableops / baseline (q25-q75 "
    "given)"
)


def forward_backward(fn: Callable, wrt: int, cotangent: bool = False) -> Callable:
    """``fb(*inputs) -> (value, gradient of value w.r.t. inputs[wrt])``.

    Without ``cotangent`` a non-scalar value is differentiated with an all-ones
    cotangent (the gradient of the sum of its elements); with it, the last input is
    the value's cotangent (see :func:`timed_inputs`).
    """
    import tensorflow as tf

    def fb(*inputs):
        upstream = None
        if cotangent:
            *inputs, upstream = inputs
        with tf.GradientTape() as tape:
            tape.watch(inputs[wrt])
            value = fn(*inputs)
        return value, tape.gradient(value, inputs[wrt], output_gradients=upstream)

    return fb


def timed_inputs(case: Case, size: int, dtype, rng) -> list:
    """The tensors a timed call takes: the case's inputs and, for an op, its cotangent.

    An op's gradient is taken for a fixed random cotangent (normal, the output's shape and
    dtype), passed in as the last input, as a training step's upstream gradient is. With an
    all-ones cotangent TF's graph optimizer folds Keras's multiplications by it (constant
    folding, which knows that ``ones_like(y)`` has ``y``'s shape), which no training step
    allows: softmax in a plain tf.function, one core, 2^20, Keras's forward and backward
    take 1.70 ms with ones and 2.14 ms with a random cotangent (2.16 with ones and constant
    folding off); stableops's 2.49 and 2.31 ms (its compiled call cannot be folded, and
    the ones are a full-size array to write). The memory section keeps the ones made inside
    the call: a fresh upstream buffer that nothing else reads, which a gradient kernel may
    write its result into, as a training step's.
    """
    import tensorflow as tf

    inputs = [tf.convert_to_tensor(a) for a in case.make_inputs(size, np.dtype(dtype), rng)]
    if case.kind == "op":
        value = case.impl(BASELINE).build(False)(*inputs)
        upstream = rng.normal(0.0, 1.0, tuple(value.shape)).astype(value.dtype.as_numpy_dtype)
        inputs.append(tf.convert_to_tensor(upstream))
    return inputs


def in_mode(fb: Callable, mode: str, example_inputs=None) -> Callable:
    """``fb`` as run in ``mode``; graph modes traced with an unknown batch dimension.

    With ``example_inputs`` the ``tf.function`` gets an input signature whose
    first dimension is ``None`` (as ``model.fit`` traces its train step), so
    it is traced once for every size; XLA still compiles once per shape.
    """
    import tensorflow as tf

    if mode == "eager":
        return fb
    signature = None
    if example_inputs is not None:
        signature = [tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in example_inputs]
    return tf.function(fb, jit_compile=(mode == "xla"), autograph=False, input_signature=signature)


_CONTESTANTS: dict = {}


def _dtypes_key(inputs) -> tuple:
    return tuple((t.dtype.name, len(t.shape)) for t in inputs)


def contestant(case: Case, impl, mode: str, inputs, cotangent: bool = False) -> Callable:
    """The forward + backward of ``impl`` in ``mode``; one per (case, impl, mode, dtypes) a run.

    Reused across sizes and sections: traced once, and a shape compiled is not
    compiled again. ``cotangent``: the last input is the value's cotangent
    (:func:`timed_inputs`).
    """
    key = (case.name, impl.name, mode, _dtypes_key(inputs), cotangent)
    if key not in _CONTESTANTS:
        fb = forward_backward(impl.build(False), case.wrt, cotangent=cotangent)
        _CONTESTANTS[key] = in_mode(fb, mode, inputs)
    return _CONTESTANTS[key]


_WARM: set = set()  # (case, impl, mode, shapes) already run once: compiled, first-call costs paid


def _shape_key(inputs) -> tuple:
    return tuple((tuple(t.shape), t.dtype.name) for t in inputs)


def warm_up(case: Case, impl, mode: str, inputs) -> None:
    """Run the contestant once on these shapes unless the speed run already did."""
    key = (case.name, impl.name, mode, _shape_key(inputs))
    if key not in _WARM:
        contestant(case, impl, mode, inputs)(*inputs)
        _WARM.add(key)


def _time_calls(fn: Callable, inputs, calls: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per call over ``calls`` back-to-back calls.

    CPU eager and ``tf.function`` execution is synchronous: when the call
    returns, the outputs are computed. CPU time (all threads of this process)
    is the work done, which background load inflates much less than wall time.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        out = fn(*inputs)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    del out
    return elapsed / calls, cpu / calls


def tensor_bytes(structure) -> int:
    """The bytes of the tensors in ``structure``."""
    import tensorflow as tf

    return int(
        sum(
            t.shape.num_elements() * t.dtype.size
            for t in tf.nest.flatten(structure)
            if tf.is_tensor(t)
        )
    )


def time_interleaved(contestants: dict, inputs, *, rounds: int, min_sample_s: float):
    """Time ``contestants`` in interleaved rounds.

    Returns wall and CPU samples ``{key: [seconds per call, one per round]}``,
    calls per sample, first-call seconds and output bytes per contestant.

    Each contestant is called once to compile (timed as ``first_call``), once
    more to warm up and size its samples, then once per round.
    """
    first_call, out_bytes, calls = {}, {}, {}
    for key, fn in contestants.items():
        start = time.perf_counter()
        out = fn(*inputs)  # compiles / traces
        first_call[key] = time.perf_counter() - start
        out_bytes[key] = tensor_bytes(out)
        del out
        if key[1] == "eager" and key[0] != "stableops" and first_call[key] > max(min_sample_s, 0.5):
            # Keras and tf.nn compile nothing eagerly (stableops's eager kernels do): a slow first
            # call is a slow call (Keras eager at 2^24 takes seconds); skip the sizing call.
            calls[key] = 1
            continue
        once, _ = _time_calls(fn, inputs, 1)
        calls[key] = int(min(200, max(1, np.ceil(min_sample_s / max(once, 1e-7)))))
    samples = {key: [] for key in contestants}
    cpu_samples = {key: [] for key in contestants}
    keys = list(contestants)
    gc.collect()
    gc.disable()  # as timeit does: no collector pauses inside a sample
    try:
        for r in range(rounds):
            for key in keys if r % 2 == 0 else keys[::-1]:
                wall, cpu = _time_calls(contestants[key], inputs, calls[key])
                samples[key].append(wall)
                cpu_samples[key].append(cpu)
    finally:
        gc.enable()
    return samples, cpu_samples, calls, first_call, out_bytes


def quantiles(values) -> dict:
    """Median and quartiles of ``values`` (a ratio's spread across rounds)."""
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75)}


def _ratio_row(case, dtype, size, mode, impl, baseline, samples, cpu_samples) -> dict:
    wall = np.asarray(samples[(impl, mode)]) / np.asarray(samples[(baseline, mode)])
    cpu = np.asarray(cpu_samples[(impl, mode)]) / np.asarray(cpu_samples[(baseline, mode)])
    return {
        "case": case,
        "dtype": dtype,
        "size": size,
        "mode": mode,
        "impl": impl,
        "baseline": baseline,
        "ratio": quantiles(wall),
        "cpu_ratio": quantiles(cpu),
        "rounds": int(wall.size),
    }


def _copy_reference(n_bytes: int) -> Callable:
    """A numpy copy moving ``n_bytes`` (half read, half written): the memory-limit yardstick."""
    src = np.ones(max(1, n_bytes // 8), dtype=np.float32)
    dst = np.empty_like(src)
    return lambda *inputs: np.copyto(dst, src)


def run_speed(cases, availability, config, log=print) -> dict:
    """Time every available contestant; returns the ``speed`` section (JSON-ready).

    Elementwise cases at ``size >= config.limits_min_size`` (float32) also time
    ``COPY`` in the same rounds: a numpy copy of the case's compulsory traffic,
    the yardstick of ``bandwidth.limits_table``. A size whose inputs have the
    same shapes as a smaller size's (the metric-learning and CTC inputs stop
    growing at a capped batch) is not measured again: it would be the same
    workload, and its ratio one more draw of the same noise.
    """
    timings, ratios = [], []
    for case in cases:
        impls = available_impls(case, availability)
        if not impls:
            continue
        for dtype in config.speed_dtypes:
            sizes = config.sizes if dtype == "float32" else config.half_sizes
            measured_shapes = {}
            for size in sizes:
                inputs = timed_inputs(case, size, dtype, np.random.default_rng(size))
                same_as = measured_shapes.setdefault(_shape_key(inputs), size)
                if same_as != size:
                    log(
                        f"  speed {case.name:<40} {dtype:<8} 2^{int(np.log2(size)):<2} "
                        f"the inputs of 2^{int(np.log2(same_as))}: not measured again"
                    )
                    continue
                contestants = {
                    (i.name, m): contestant(case, i, m, inputs, cotangent=case.kind == "op")
                    for i in impls
                    for m in config.modes
                }
                _WARM.update((case.name, i, m, _shape_key(inputs)) for i, m in contestants)
                with_copy = (
                    case.elementwise and dtype == "float32" and size >= config.limits_min_size
                )
                if with_copy:
                    # inputs read (an op's cotangent too), gradient written, and (an op's) output
                    # written; a loss's value is a scalar
                    traffic = tensor_bytes(inputs) + tensor_bytes(inputs[case.wrt]) * (
                        2 if case.kind == "op" else 1
                    )
                    contestants[COPY] = _copy_reference(traffic)
                start = time.perf_counter()
                samples, cpu_samples, calls, first, out_bytes = time_interleaved(
                    contestants,
                    inputs,
                    rounds=config.rounds_for(size),
                    min_sample_s=config.min_sample_s,
                )
                log(
                    f"  speed {case.name:<40} {dtype:<8} 2^{int(np.log2(size)):<2} "
                    f"{len(contestants)} contestants x {config.rounds_for(size)} rounds "
                    f"in {time.perf_counter() - start:5.1f}s"
                )
                for (impl_name, mode), seconds in samples.items():
                    timings.append(
                        {
                            "case": case.name,
                            "dtype": dtype,
                            "size": size,
                            "mode": mode,
                            "impl": impl_name,
                            "seconds": quantiles(seconds),
                            "samples": [float(s) for s in seconds],
                            "cpu_seconds": quantiles(cpu_samples[(impl_name, mode)]),
                            "cpu_samples": [float(s) for s in cpu_samples[(impl_name, mode)]],
                            "calls_per_sample": calls[(impl_name, mode)],
                            "first_call_seconds": float(first[(impl_name, mode)]),
                            # compulsory traffic: read every input once, write value and gradient
                            # once
                            "bytes": tensor_bytes(inputs) + out_bytes[(impl_name, mode)]
                            if (impl_name, mode) != COPY
                            else 2 * (traffic // 8) * 4,
                        }
                    )
                for mode in config.modes:
                    names = {i.name for i in impls}
                    for impl, baseline in (
                        ("stableops", BASELINE),
                        ("tf.nn", BASELINE),
                        ("stableops", "tf.nn"),
                    ):
                        if impl in names and baseline in names:
                            row = _ratio_row(
                                case.name, dtype, size, mode, impl, baseline, samples, cpu_samples
                            )
                            ratios.append(row)
                del contestants, inputs
    return {"method": METHOD, "timings": timings, "ratios": ratios}
