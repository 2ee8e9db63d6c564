"""End to end: small models trained with ``model.fit(jit_compile=True)``, stableops against Keras.

Two models, each built twice from the same seed, once with Keras's loss and
activation layers and once with stableops's (same class names, same
defaults):

* ``mlp``: Dense(256) - LeakyReLU - Dense(256) - ELU - Dense(10) on 32
  features, ``SparseCategoricalCrossentropy(from_logits=True)``;
* ``gru``: Embedding(1000, 32) - GRU(64) - Dense(64) - LeakyReLU - Dense(1)
  on sequences of 24 tokens, ``BinaryCrossentropy(from_logits=True)``.

Both flavours are compiled (Adam) and warmed up with one ``fit``; then one
timed ``fit`` of ``steps`` steps per flavour per round, interleaved, order
alternating. The step time is fit time / steps (the small per-``fit``
overhead is the same on both sides); the ratio is the median of the
same-round ratios (process CPU time is recorded too). Compile modes:
``xla`` is ``jit_compile=True`` (the issue's target); ``graph`` is
``jit_compile=False``, which is what Keras's default ``"auto"`` picks on a
machine without accelerators; ``eager`` (``run_eagerly``) is for the smoke
run only. If ``stableops.layers`` has not landed, the stableops flavour uses
Keras's layers and says so.
"""

from __future__ import annotations

import time

import numpy as np

METHOD = (
    "model.fit, one warm-up fit, then `rounds` interleaved timed fits of `steps` steps per flavour; "
    "step time = fit time / steps; ratio = median of same-round ratios"
)

MODELS = ("mlp", "gru")


def _flavour_parts(flavour: str):
    """(losses module, layers module, note) for a flavour; raises if stableops losses are missing."""
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


def _build(model_name: str, flavour: str, batch: int, steps: int, compile_mode: str):
    import keras

    losses, act, note = _flavour_parts(flavour)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = batch * steps
    if model_name == "mlp":
        inputs = keras.Input((32,))
        h = act.LeakyReLU()(keras.layers.Dense(256)(inputs))
        h = act.ELU()(keras.layers.Dense(256)(h))
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        loss = losses.SparseCategoricalCrossentropy(from_logits=True)
        x = rng.normal(size=(n, 32)).astype(np.float32)
        y = rng.integers(0, 10, n).astype(np.int32)
    elif model_name == "gru":
        inputs = keras.Input((24,), dtype="int32")
        h = keras.layers.GRU(64)(keras.layers.Embedding(1000, 32)(inputs))
        h = act.LeakyReLU()(keras.layers.Dense(64)(h))
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        loss = losses.BinaryCrossentropy(from_logits=True)
        x = rng.integers(0, 1000, (n, 24)).astype(np.int32)
        y = (rng.random((n, 1)) < 0.5).astype(np.float32)
    else:
        raise ValueError(f"unknown model {model_name!r}; models are {MODELS}")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=loss,
        jit_compile=compile_mode == "xla",  # "graph": tf.function without XLA, Keras's default on CPU
        run_eagerly=compile_mode == "eager",  # the smoke preset: no tracing, no compiling
    )
    return model, x, y, note


def _fit_seconds(model, x, y, batch: int) -> tuple[float, float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - start, time.process_time() - start_cpu, float(history.history["loss"][-1])


def _quantiles(values) -> dict:
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75)}


def _measure(model_name: str, compile_mode: str, config, log) -> dict:
    built, notes = {}, {}
    for flavour in ("stableops", "keras"):
        start = time.perf_counter()
        try:
            model, x, y, note = _build(model_name, flavour, config.e2e_batch, config.e2e_steps, compile_mode)
            _fit_seconds(model, x, y, config.e2e_batch)  # trace, compile, warm up
        except (AttributeError, NotImplementedError, ImportError) as error:
            notes[flavour] = f"unavailable: {type(error).__name__}: {error}"[:300]
            continue
        except Exception as error:  # noqa: BLE001 - reported, not raised
            notes[flavour] = f"error: {type(error).__name__}: {error}"[:300]
            continue
        built[flavour] = (model, x, y)
        notes[flavour] = note
        log(f"  end_to_end {model_name} {compile_mode} {flavour}: ready in {time.perf_counter() - start:.1f}s ({note})")
    wall = {f: [] for f in built}
    cpu = {f: [] for f in built}
    losses = {}
    for r in range(config.e2e_rounds):
        for flavour in list(built) if r % 2 == 0 else list(built)[::-1]:
            model, x, y = built[flavour]
            seconds, cpu_seconds, losses[flavour] = _fit_seconds(model, x, y, config.e2e_batch)
            wall[flavour].append(seconds / config.e2e_steps)
            cpu[flavour].append(cpu_seconds / config.e2e_steps)
    row = {
        "model": model_name,
        "compile": compile_mode,
        "steps": config.e2e_steps,
        "batch": config.e2e_batch,
        "rounds": config.e2e_rounds,
        "flavours": {
            f: {
                "note": notes[f],
                "step_seconds": float(np.median(wall[f])) if f in wall else None,
                "step_cpu_seconds": float(np.median(cpu[f])) if f in cpu else None,
                "samples": [float(s) for s in wall.get(f, [])],
                "final_loss": losses.get(f),
            }
            for f in ("stableops", "keras")
        },
    }
    if "stableops" in wall and "keras" in wall:
        row["ratio"] = _quantiles(np.asarray(wall["stableops"]) / np.asarray(wall["keras"]))
        row["cpu_ratio"] = _quantiles(np.asarray(cpu["stableops"]) / np.asarray(cpu["keras"]))
    return row


def run_end_to_end(config, log=print) -> dict:
    rows = [_measure(m, c, config, log) for m in config.e2e_models for c in config.e2e_compiles]
    return {"method": METHOD, "rows": rows}
