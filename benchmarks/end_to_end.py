"""End to end: three model shapes trained with ``model.fit``, stableops against Keras.

Each model is built twice from the same seed, once with Keras's loss and
activation layers and once with stableops's (same class names, same
defaults):

* ``mlp``: tabular data, Dense(64) - LeakyReLU - Dense(64) - ELU -
  Dense(1, sigmoid), ``BinaryCrossentropy()`` on probabilities. The data is
  scikit-learn's ``load_breast_cancer`` (569 x 30) standardized with numpy
  and resampled to the run's size when scikit-learn is importable, random
  data of that shape otherwise (the row's ``data`` says which);
* ``cnn``: random 28x28x1 images, Conv2D(16, 3) - ELU - Conv2D(32, 3,
  strides 2) - LeakyReLU - Flatten - Dense(10),
  ``SparseCategoricalCrossentropy(from_logits=True)``;
* ``gru``: Embedding(1000, 32) - GRU(64) - Dense(64) - LeakyReLU - Dense(1)
  on sequences of 24 tokens, ``BinaryCrossentropy(from_logits=True)``.

Compile modes: ``graph`` is ``jit_compile=False``, which Keras's default
``"auto"`` picks on a machine without accelerators (a plain ``tf.function``,
in which every stableops kernel call is a nested XLA computation); ``xla`` is
``jit_compile=True``; ``eager`` (``run_eagerly``) is for the smoke run only.
The models of ``e2e_mixed_models`` run again under the ``mixed_float16``
dtype policy (set while the model is built, then restored; the last layer
stays float32, as Keras's mixed-precision guide recommends).

Per row and flavour, on one ``tf.data`` dataset of ``steps`` ready-made
batches:

0. a **warm-up fit** of a throw-away Keras-flavour model of the row's kind
   (same model, compile mode and policy), not timed: the process's
   first-use costs (TF's runtime, thread pools, the kernels of the layers
   both flavours share) land there, not on whichever flavour fits first
   (measured: about 0.25 s of a CNN's first fit went to the flavour that
   ran first). It is Keras's flavour, so Keras's own activation and loss
   kernels are warm too: if anything, a bias against stableops. The first
   fits then run in ``FLAVOURS``' order;
1. the **first fit** traces and compiles (its time is kept);
2. ``rounds`` timed fits, interleaved, order alternating: step time = fit
   time / steps, ratio = median of the same-round ratios (process CPU time
   is recorded too);
3. **first-fit compile overhead** = first fit time - median warm fit time;
   the target compares stableops's with Keras's. Each model traces and
   compiles its own functions; the warm-up paid what the process caches for
   both flavours, while stableops's own compiled kernels, also cached per
   process, are still paid by stableops's first fit (as by a user's first
   model);
4. **peak memory**: the median of three more warm fits per flavour (alternating;
   one fit's peak moved by 0.9-1.36x Keras's between runs of unchanged code)
   under ``memory.peak_extra_bytes``
   (TF's CPU allocator statistics where TF keeps them, the peak-RSS reset
   otherwise; ``tracemalloc`` sees no TF tensor): the memory the fit adds
   at its worst moment over what is held before it, i.e. activations,
   gradients, optimizer and kernel temporaries, not the weights, the data
   or compiled code (already held).

If stableops's layers have not landed, the stableops flavour uses Keras's
and says so.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from benchmarks.memory import METHODS, peak_extra_bytes, peak_method
from benchmarks.speed import quantiles

MEMORY_REPEATS = 3  # warm fits measured for peak memory, per flavour
METHOD = (
    "model.fit on a tf.data dataset of ready-made batches; an untimed warm-up fit of a "
    "throw-away Keras model of the same kind (the process's first-use costs), then per flavour "
    "one first fit (traces, compiles), then "
    "`rounds` "
    "interleaved timed fits of `steps` steps per flavour; step time = fit time / steps; ratio = "
    "median of "
    "same-round ratios; compile overhead = first fit - median warm fit; peak memory: median of "
    f"{MEMORY_REPEATS} more warm fits "
    "(see memory_method)"
)

MODELS = ("mlp", "cnn", "gru")
FLAVOURS = ("stableops", "keras")
MIXED = "mixed_float16"


def _flavour_parts(flavour: str):
    """(losses module, layers module, note) for a flavour; raises without stableops's losses."""
    import keras

    if flavour == "keras":
        return keras.losses, keras.layers, "keras losses and layers"
    import stableops.layers
    import stableops.losses

    layers, note = stableops.layers, "stableops losses and layers"
    try:
        for name in ("LeakyReLU", "ELU"):
            getattr(stableops.layers, name)()(np.zeros((1, 2), np.float32))
    except (AttributeError, NotImplementedError):
        layers, note = keras.layers, "stableops losses, keras layers (stableops.layers not landed)"
    return stableops.losses, layers, note


def _tabular(n: int, rng) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        x = rng.normal(size=(n, 30))
        y = x @ rng.normal(size=30) > 0
        return (
            x.astype(np.float32),
            y.astype(np.float32)[:, None],
            "random normal (n x 30), scikit-learn missing",
        )
    data = load_breast_cancer()
    x = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
    rows = rng.integers(0, len(x), n)
    source = f"scikit-learn load_breast_cancer ({len(x)} x 30), standardized, resampled to n rows"
    return x[rows].astype(np.float32), data.target[rows].astype(np.float32)[:, None], source


def _data(model_name: str, n: int, rng) -> tuple[np.ndarray, np.ndarray, str]:
    if model_name == "mlp":
        return _tabular(n, rng)
    if model_name == "cnn":
        x = rng.random((n, 28, 28, 1)).astype(np.float32)
        return (
            x,
            rng.integers(0, 10, n).astype(np.int32),
            "random 28x28x1 images in [0, 1), labels 0-9",
        )
    if model_name == "gru":
        x = rng.integers(0, 1000, (n, 24)).astype(np.int32)
        return (
            x,
            (rng.random((n, 1)) < 0.5).astype(np.float32),
            "random tokens 0-999, length 24; random labels",
        )
    raise ValueError(f"unknown model {model_name!r}; models are {MODELS}")


def _network(model_name: str, act, losses):
    """The model (built under the current dtype policy) and its loss."""
    import keras

    if model_name == "mlp":
        inputs = keras.Input((30,))
        h = act.LeakyReLU()(keras.layers.Dense(64)(inputs))
        h = act.ELU()(keras.layers.Dense(64)(h))
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(h)
        return keras.Model(inputs, outputs), losses.BinaryCrossentropy()
    if model_name == "cnn":
        inputs = keras.Input((28, 28, 1))
        h = act.ELU()(keras.layers.Conv2D(16, 3)(inputs))
        h = act.LeakyReLU()(keras.layers.Conv2D(32, 3, strides=2)(h))
        outputs = keras.layers.Dense(10, dtype="float32")(keras.layers.Flatten()(h))
        return keras.Model(inputs, outputs), losses.SparseCategoricalCrossentropy(from_logits=True)
    inputs = keras.Input((24,), dtype="int32")
    h = keras.layers.GRU(64)(keras.layers.Embedding(1000, 32)(inputs))
    h = act.LeakyReLU()(keras.layers.Dense(64)(h))
    outputs = keras.layers.Dense(1, dtype="float32")(h)
    return keras.Model(inputs, outputs), losses.BinaryCrossentropy(from_logits=True)


def _build(model_name: str, flavour: str, config, compile_mode: str, policy: str = "float32"):
    """(model, dataset, flavour note, data source): compiled, not yet fitted."""
    import keras
    import tensorflow as tf

    losses, act, note = _flavour_parts(flavour)
    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, loss = _network(model_name, act, losses)
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=loss,
        jit_compile=compile_mode
        == "xla",  # "graph": tf.function without XLA, Keras's default on CPU
        run_eagerly=compile_mode == "eager",  # the smoke preset: no tracing, no compiling
    )
    steps, batch = config.e2e_steps, config.e2e_batch
    x, y, source = _data(model_name, steps * batch, np.random.default_rng(0))
    # One dataset element per step, batched once here: no per-fit conversion or slicing of the
    # arrays.
    batches = (x.reshape(steps, batch, *x.shape[1:]), y.reshape(steps, batch, *y.shape[1:]))
    return model, tf.data.Dataset.from_tensor_slices(batches), note, source


def _fit_seconds(model, dataset) -> tuple[float, float, float]:
    """Wall seconds, process CPU seconds and the last loss of one fit over ``dataset``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    return (
        time.perf_counter() - start,
        time.process_time() - start_cpu,
        float(history.history["loss"][-1]),
    )


def _median_peaks(built: dict, method: str) -> dict:
    """Per flavour, the median peak of ``MEMORY_REPEATS`` warm fits, the flavours alternating."""
    samples = {f: [] for f in built}
    for r in range(MEMORY_REPEATS):
        for flavour in list(built) if r % 2 == 0 else list(built)[::-1]:
            samples[flavour].append(peak_extra_bytes(_fit_seconds, built[flavour], method))
    return {f: int(np.median(v)) for f, v in samples.items()}


def _warm_up(model_name: str, compile_mode: str, policy: str, config) -> None:
    """One untimed fit of a throw-away Keras-flavour model of this kind (module docstring, 0.)."""
    try:
        model, dataset, _, _ = _build(model_name, "keras", config, compile_mode, policy)
        _fit_seconds(model, dataset)
    except Exception:  # noqa: BLE001 - the Keras flavour's own first fit below reports it
        return
    # Freed now, not in the middle of a measured fit (which would lower its peak memory).
    del model, dataset
    gc.collect()


def _measure(model_name: str, compile_mode: str, policy: str, config, log) -> dict:
    built, notes, first, source = {}, {}, {}, None
    _warm_up(model_name, compile_mode, policy, config)
    for flavour in FLAVOURS:
        start = time.perf_counter()
        try:
            model, dataset, note, source = _build(model_name, flavour, config, compile_mode, policy)
            first[flavour] = _fit_seconds(model, dataset)[0]  # traces, compiles, warms up
        except (AttributeError, NotImplementedError, ImportError) as error:
            notes[flavour] = f"unavailable: {type(error).__name__}: {error}"[:300]
            continue
        except Exception as error:  # noqa: BLE001 - reported, not raised
            notes[flavour] = f"error: {type(error).__name__}: {error}"[:300]
            continue
        built[flavour] = (model, dataset)
        notes[flavour] = note
        log(
            f"  end_to_end {model_name} {compile_mode} {policy} {flavour}: ready in "
            f"{time.perf_counter() - start:.1f}s ({note})"
        )
    wall = {f: [] for f in built}
    cpu = {f: [] for f in built}
    losses = {}
    for r in range(config.e2e_rounds):
        for flavour in list(built) if r % 2 == 0 else list(built)[::-1]:
            seconds, cpu_seconds, losses[flavour] = _fit_seconds(*built[flavour])
            wall[flavour].append(seconds)
            cpu[flavour].append(cpu_seconds)
    method = peak_method()
    peak = _median_peaks(built, method) if method else {}
    steps = config.e2e_steps
    row = {
        "model": model_name,
        "compile": compile_mode,
        "policy": policy,
        "data": source,
        "steps": steps,
        "batch": config.e2e_batch,
        "rounds": config.e2e_rounds,
        "memory_method": f"median of {MEMORY_REPEATS} warm fits: {METHODS[method]}"
        if method
        else "not measured (no method works here)",
        "flavours": {
            f: {
                "note": notes[f],
                "step_seconds": float(np.median(wall[f])) / steps if f in wall else None,
                "step_cpu_seconds": float(np.median(cpu[f])) / steps if f in cpu else None,
                "samples": [s / steps for s in wall.get(f, [])],
                "first_fit_seconds": first.get(f),
                "compile_overhead_seconds": first[f] - float(np.median(wall[f]))
                if f in wall
                else None,
                "peak_extra_bytes": peak.get(f),
                "final_loss": losses.get(f),
            }
            for f in FLAVOURS
        },
    }
    if len(built) == len(FLAVOURS):
        s, k = row["flavours"]["stableops"], row["flavours"]["keras"]
        row["ratio"] = quantiles(np.asarray(wall["stableops"]) / np.asarray(wall["keras"]))
        row["cpu_ratio"] = quantiles(np.asarray(cpu["stableops"]) / np.asarray(cpu["keras"]))
        row["compile_overhead_extra_seconds"] = (
            s["compile_overhead_seconds"] - k["compile_overhead_seconds"]
        )
        if peak.get("keras"):
            row["memory_ratio"] = peak["stableops"] / peak["keras"]
    return row


def run_end_to_end(config, log=print) -> dict:
    variants = [(m, c, "float32") for m in config.e2e_models for c in config.e2e_compiles]
    variants += [(m, c, MIXED) for m in config.e2e_mixed_models for c in config.e2e_compiles]
    return {"method": METHOD, "rows": [_measure(m, c, p, config, log) for m, c, p in variants]}
