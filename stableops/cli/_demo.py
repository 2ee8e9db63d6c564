"""The embedded demo of ``stableops doctor``: real NaN causes, stock Keras vs stableops.

Each scenario is a small synthetic data set and model that reproduces a
well-known way to get a NaN loss. It is trained twice from the same seed and
initial weights: once as people write it with stock Keras, once with what the
doctor recommends (stableops layers and losses, ``SkipNonFinite``,
``NaNGuard``). The demo prints a side-by-side table (first NaN step, final
loss), the doctor's diagnosis of the stock model, and plots the loss curves.

Sizes are chosen so that the whole demo (eight short trainings, two of them
XLA-compiled) takes well under two minutes on two CPU cores; ``fast=True``
shrinks them further for tests.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time

import keras
import numpy as np

import stableops
from stableops.callbacks import NaNGuard
from stableops.doctor import checks, quiet_native_stderr
from stableops.optimizers import SkipNonFinite

SEED = 1234
FAST_SAMPLES = 512  # fast mode: enough steps (16 a epoch) for every stableops run to learn


# ---------------------------------------------------------------------------
# Layers the scenarios need


class MaskedMean(keras.layers.Layer):
    """Mean over the unmasked time steps, 0 for a row with none.

    The masked mean Keras's ``GlobalAveragePooling1D`` computes is
    ``sum(x * mask) / sum(mask)``: 0/0 = NaN for a fully padded row (and a NaN
    gradient for every weight). ``stableops.ops.safe_divide`` returns the fill
    value 0 there, with zero (finite) gradients.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return keras.ops.mean(inputs, axis=1)
        weights = keras.ops.cast(mask, inputs.dtype)[..., None]
        total = keras.ops.sum(inputs * weights, axis=1)
        count = keras.ops.sum(weights, axis=1)
        count = keras.ops.broadcast_to(count, keras.ops.shape(total))
        return stableops.ops.safe_divide(total, count)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


# ---------------------------------------------------------------------------
# Scenarios


class Scenario:
    """One reproducible NaN cause; each subclass below is one.

    A subclass gives its texts (``title``, ``story``, ``stableops_changes``),
    its epochs (full, fast), ``make_data(rng, n)``, ``chance_loss(y)``, the
    ``network(x, stable)`` (uncompiled; ``stable``: with what the doctor
    recommends), the optimizer and the loss classes (stock Keras's and
    stableops's). The stableops run wraps the optimizer in ``SkipNonFinite``.
    """

    name: str  # the models are "<name>_stock" and "<name>_stableops"
    title: str
    story: str
    stableops_changes: str
    full_epochs: int
    fast_epochs: int
    losses: tuple  # (the stock Keras loss class, the stableops one)
    loss_arguments: dict = {}
    batch_size = 32
    jit_compile = "auto"  # Keras's default
    mixed_precision = False
    guard: dict = {}  # NaNGuard options of the stableops run, over the defaults

    def __init__(self, fast: bool = False):
        self.epochs = self.fast_epochs if fast else self.full_epochs

    def optimizer(self):
        return keras.optimizers.Adam(0.01)

    def stock_model(self, x, y):
        """The model as people write it with stock Keras: ``(compiled model, None)``."""
        return self._compiled(x, stable=False)

    def stableops_model(self, x, y):
        """The model with stableops: ``(compiled model, its SkipNonFinite optimizer)``."""
        return self._compiled(x, stable=True)

    def _compiled(self, x, *, stable):
        model = self.network(x, stable)
        optimizer = SkipNonFinite(self.optimizer()) if stable else self.optimizer()
        loss = self.losses[stable](**self.loss_arguments)
        # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer:
        # the SkipNonFinite one is returned, not model.optimizer.
        model.compile(optimizer=optimizer, loss=loss, jit_compile=self.jit_compile)
        return model, (optimizer if stable else None)

    def _model_name(self, stable):
        return f"{self.name}_{'stableops' if stable else 'stock'}"


def _dense_stack(inputs, width, depth, activation="relu"):
    h = inputs
    for number in range(1, depth + 1):
        h = keras.layers.Dense(width, activation=activation, name=f"hidden_{number}")(h)
    return h


def _scaled(x, inputs):
    """``inputs`` through a RobustScaler adapted to ``x`` (float64 math, the compute dtype out)."""
    scaler = stableops.layers.RobustScaler(name="robust_scaler")
    scaler.adapt(x)
    return scaler(inputs)


class _Unscaled(Scenario):
    name = "unscaled"
    title = "Unscaled features with outliers"
    story = "regression on raw features spanning 1 .. 2e5 with a few 50x glitches, SGD"
    stableops_changes = (
        "RobustScaler first (median/IQR, clips outliers), "
        "stableops.losses.MeanSquaredError, SkipNonFinite"
    )
    full_epochs, fast_epochs = 6, 4
    losses = (keras.losses.MeanSquaredError, stableops.losses.MeanSquaredError)
    scales = np.array([1.0, 3.0, 30.0, 1e3, 1e4, 2e5, 0.5, 1.0], dtype=np.float32)

    def make_data(self, rng, n):
        z = rng.normal(size=(n, self.scales.size)).astype(np.float32)
        weights = rng.normal(size=(self.scales.size,)).astype(np.float32)
        y = (np.tanh(z) @ weights / np.sqrt(self.scales.size)).astype(np.float32)[:, None]
        x = z * self.scales
        outliers = rng.choice(n, size=max(n // 100, 2), replace=False)
        x[outliers, 5] *= 50.0  # a sensor glitch: a few readings 50x off
        return x, y

    def chance_loss(self, y):
        """Predicting the mean: the variance of the targets."""
        return float(np.var(np.asarray(y, np.float64)))

    def optimizer(self):
        return keras.optimizers.SGD(0.01)

    def network(self, x, stable):
        inputs = keras.Input((x.shape[1],))
        features = _scaled(x, inputs) if stable else inputs
        outputs = keras.layers.Dense(1, name="output")(_dense_stack(features, 32, 2))
        return keras.Model(inputs, outputs, name=self._model_name(stable))


def _binary_chance(y):
    """Predicting the positive rate p: the binary entropy of p (nats)."""
    p = np.array([np.mean(y), 1.0 - np.mean(y)])
    p = p[p > 0]  # 0 log 0 = 0
    return float(-(p * np.log(p)).sum())


class _Masked(Scenario):
    name = "masked"
    title = "Masked sequences, fully padded rows"
    story = "mean-pooled token embeddings; 5% of the documents are empty (all padding)"
    stableops_changes = (
        "masked mean with stableops.ops.safe_divide (0 for empty rows), "
        "stableops.losses.BinaryCrossentropy, SkipNonFinite"
    )
    full_epochs, fast_epochs = 6, 2
    losses = (keras.losses.BinaryCrossentropy, stableops.losses.BinaryCrossentropy)
    vocabulary, steps = 64, 16

    def make_data(self, rng, n):
        lengths = rng.integers(1, self.steps + 1, size=n)
        lengths[rng.choice(n, size=max(n // 20, 2), replace=False)] = 0  # empty documents
        tokens = rng.integers(1, self.vocabulary, size=(n, self.steps))
        tokens[np.arange(self.steps)[None, :] >= lengths[:, None]] = 0  # 0 = padding
        # Label: are most of the real tokens from the lower half of the vocabulary?
        low = ((tokens > 0) & (tokens < self.vocabulary // 2)).sum(axis=1)
        y = (2 * low > np.maximum(lengths, 1)).astype(np.float32)
        return tokens.astype(np.int32), y[:, None]

    chance_loss = staticmethod(_binary_chance)

    def network(self, x, stable):
        if stable:
            pooling = MaskedMean(name="mean_pool")
        else:
            pooling = keras.layers.GlobalAveragePooling1D(name="mean_pool")
        inputs = keras.Input((self.steps,), dtype="int32")
        h = keras.layers.Embedding(self.vocabulary, 16, mask_zero=True, name="embedding")(inputs)
        h = pooling(h)
        h = keras.layers.Dense(16, activation="relu", name="hidden_1")(h)
        outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(h)
        return keras.Model(inputs, outputs, name=self._model_name(stable))


class _Mixed(Scenario):
    name = "mixed"
    title = "Mixed-precision sigmoid classifier"
    story = "mixed_float16 classifier on raw columns (one above float16's 65504)"
    stableops_changes = (
        "RobustScaler first (float32 math), float32 output layer, "
        "stableops.losses.BinaryCrossentropy, SkipNonFinite"
    )
    full_epochs, fast_epochs = 6, 2
    losses = (keras.losses.BinaryCrossentropy, stableops.losses.BinaryCrossentropy)
    mixed_precision = True
    scales = np.array([1.0, 1.0, 40.0, 2e3, 8e4, 1.0, 5.0, 3e4], dtype=np.float32)

    def make_data(self, rng, n):
        z = rng.normal(size=(n, self.scales.size)).astype(np.float32)
        x = z * self.scales
        x[:, 4] = np.abs(x[:, 4]) + 2e4  # e.g. an income column: 20k .. 300k, above 65504
        logits = 2.0 * z[:, 0] - 1.5 * z[:, 3] + z[:, 4]
        y = (logits + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
        return x, y[:, None]

    chance_loss = staticmethod(_binary_chance)

    def network(self, x, stable):
        inputs = keras.Input((x.shape[1],))
        if not stable:
            output = keras.layers.Dense(1, activation="sigmoid", name="output")
            return keras.Model(inputs, output(_dense_stack(inputs, 32, 1)), name="mixed_stock")
        h = _dense_stack(_scaled(x, inputs), 32, 1)
        # The doctor's other advice for mixed precision: the output layer in float32.
        output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="output")
        return keras.Model(inputs, output(h), name="mixed_stableops")


class _Labels(Scenario):
    name = "labels"
    title = "Out-of-range labels under XLA"
    story = "10-class softmax, 3 rows labelled 10, jit_compile=True (XLA drops the range check)"
    stableops_changes = (
        "stableops.losses.SparseCategoricalCrossentropy (NaN under XLA, never a finite wrong "
        "loss), NaNGuard(action='continue') rolls back each NaN batch and names the cause, "
        "SkipNonFinite"
    )
    full_epochs, fast_epochs = 4, 2
    losses = (
        keras.losses.SparseCategoricalCrossentropy,
        stableops.losses.SparseCategoricalCrossentropy,
    )
    loss_arguments = {"from_logits": True}
    jit_compile = True
    guard = {"action": "continue", "lr_factor": 1.0, "max_recoveries": None}
    classes = 10

    def make_data(self, rng, n):
        centers = rng.normal(size=(self.classes, 16)).astype(np.float32) * 2.0
        y = rng.integers(0, self.classes, size=n)
        x = centers[y] + rng.normal(size=(n, 16)).astype(np.float32)
        # A preprocessing bug: a few "unknown" rows got label 10 with 10 classes.
        y[rng.choice(n, size=3, replace=False)] = self.classes
        return x, y.astype(np.int32)

    def chance_loss(self, y):
        """Predicting the class frequencies: their entropy (labels outside the classes left out)."""
        y = np.asarray(y).reshape(-1)
        counts = np.bincount(y[(y >= 0) & (y < self.classes)], minlength=self.classes)
        p = counts[counts > 0].astype(np.float64) / counts.sum()
        return float(-(p * np.log(p)).sum())

    def network(self, x, stable):
        inputs = keras.Input((16,))
        outputs = keras.layers.Dense(self.classes, name="output")(_dense_stack(inputs, 32, 1))
        return keras.Model(inputs, outputs, name=self._model_name(stable))


def scenarios(fast: bool = False):
    """The demo's scenarios, shorter (fewer epochs on half the data) when ``fast``."""
    return [kind(fast) for kind in (_Unscaled, _Masked, _Mixed, _Labels)]


# ---------------------------------------------------------------------------
# What "learned" means

#: A run has learned when its final loss is below this fraction of the chance
#: loss (the loss of the best constant prediction, which needs no input). A
#: model that ignores its inputs cannot beat the chance loss on average; the
#: final loss is a mean over at least a few batches of 32, whose spread around
#: the chance loss is about 1/sqrt(32) = 18% of it, so 0.8 is below what a
#: stuck run reaches by luck.
LEARNED_FRACTION = 0.8


# ---------------------------------------------------------------------------
# Running


class _BatchLosses(keras.callbacks.Callback):
    """Record each batch's own loss (Keras logs the epoch's running mean)."""

    def __init__(self, optimizer=None):
        super().__init__()
        self.optimizer = optimizer
        self.losses, self.skipped, self.epochs = [], [], []
        self._epoch = 0
        self._skips = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.model.reset_metrics()  # so that logs["loss"] is this batch's loss

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(np.asarray((logs or {}).get("loss", np.nan))))
        self.epochs.append(self._epoch)
        skips = int(self.optimizer.skipped_steps.numpy()) if self.optimizer is not None else 0
        self.skipped.append(skips > self._skips)
        self._skips = skips


@dataclasses.dataclass
class RunResult:
    """One training run of one scenario."""

    losses: np.ndarray
    skipped: np.ndarray
    epochs: np.ndarray
    seconds: float
    guard_events: list = dataclasses.field(default_factory=list)
    error: str | None = None
    nonfinite_weights: bool = False

    @property
    def first_nan_step(self):
        bad = np.flatnonzero(~np.isfinite(self.losses))
        return int(bad[0]) + 1 if bad.size else None

    @property
    def dropped(self) -> np.ndarray:
        """Steps SkipNonFinite skipped or NaNGuard rolled back (their update was not kept)."""
        dropped = self.skipped.copy()
        for event in self.guard_events:
            if 1 <= event["step"] <= dropped.size:
                dropped[event["step"] - 1] = True
        return dropped

    @property
    def skipped_steps(self) -> int:
        return int(self.dropped.sum())

    @property
    def final_loss(self) -> float:
        """Mean batch loss over the last epoch, leaving out the dropped steps."""
        if self.losses.size == 0:
            return float("nan")
        last = (self.epochs == self.epochs.max()) & ~self.dropped
        return float(np.mean(self.losses[last])) if last.any() else float("nan")

    def learned(self, chance_loss) -> bool:
        """Finite weights and a final loss below LEARNED_FRACTION of the chance loss."""
        return (
            not self.error
            and not self.nonfinite_weights
            and bool(np.isfinite(self.final_loss))
            and self.final_loss < LEARNED_FRACTION * chance_loss
        )


class _PolicyScope:
    def __init__(self, mixed):
        self.mixed = mixed

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.mixed:
            keras.config.set_dtype_policy("mixed_float16")

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def _train(scenario, build, x, y, *, with_guard):
    # No keras.utils.clear_session() between runs: it garbage-collects the
    # whole heap (most of a second each); the models have distinct names.
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    with _PolicyScope(scenario.mixed_precision), quiet_native_stderr():
        try:
            model, optimizer = build(x, y)
        except Exception as error:  # noqa: BLE001 - shown in the table, the demo goes on
            return RunResult(
                np.zeros(0), np.zeros(0, bool), np.zeros(0, int), 0.0, error=_one_line(error)
            )
        recorder = _BatchLosses(optimizer)
        callbacks = [recorder]
        guard = None
        if with_guard:
            options = {"action": "continue", "lr_factor": 0.5, "verbose": 0}
            options.update(scenario.guard)
            guard = NaNGuard(**options)
            callbacks.append(guard)
        error = None
        try:
            model.fit(
                x,
                y,
                batch_size=scenario.batch_size,
                epochs=scenario.epochs,
                shuffle=True,
                verbose=0,
                callbacks=callbacks,
            )
        except Exception as exc:  # noqa: BLE001
            error = _one_line(exc)
    weights = [
        np.asarray(w, np.float32) for w in model.get_weights() if np.asarray(w).dtype.kind == "f"
    ]
    return RunResult(
        losses=np.asarray(recorder.losses, dtype=np.float64),
        skipped=np.asarray(recorder.skipped, dtype=bool),
        epochs=np.asarray(recorder.epochs, dtype=np.int64),
        seconds=time.perf_counter() - start,
        guard_events=list(guard.events) if guard is not None else [],
        error=error,
        nonfinite_weights=not all(np.isfinite(w).all() for w in weights),
    )


def _diagnose_stock(scenario, x, y):
    keras.utils.set_random_seed(SEED)
    with _PolicyScope(scenario.mixed_precision), quiet_native_stderr():
        model, _ = scenario.stock_model(x, y)
        return stableops.diagnose(model, x, y)


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120] if text else ''}"


@dataclasses.dataclass
class ScenarioResult:
    scenario: Scenario
    stock: RunResult
    stableops: RunResult
    report: object
    chance_loss: float = float("nan")


def run_demo(*, fast=False, out=None, progress=print, width=100):
    """Run every scenario; return the results and write the loss-curve PNG to ``out``."""
    results = []
    all_scenarios = scenarios(fast)
    n_samples = FAST_SAMPLES if fast else 1024
    for number, scenario in enumerate(all_scenarios, 1):
        rng = np.random.default_rng(SEED + number)
        x, y = scenario.make_data(rng, n_samples)
        chance = scenario.chance_loss(y)
        head = f"[{number}/{len(all_scenarios)}] {scenario.title}"
        progress(f"{head}: training with stock Keras ...")
        stock = _train(scenario, scenario.stock_model, x, y, with_guard=False)
        progress(f"{head}: stock Keras done ({stock.seconds:.1f} s); training with stableops ...")
        stable = _train(scenario, scenario.stableops_model, x, y, with_guard=True)
        progress(f"{head}: stableops done ({stable.seconds:.1f} s); diagnosing the stock model ...")
        try:
            report = _diagnose_stock(scenario, x, y)
        except Exception as error:  # noqa: BLE001
            report = _one_line(error)
        result = ScenarioResult(scenario, stock, stable, report, chance)
        progress(
            f"{head}: stock Keras {outcome(result, stock)}; stableops {outcome(result, stable)}"
        )
        results.append(result)
    if out is not None:
        plot_losses(results, out)
    return results


def outcome(result: ScenarioResult, run: RunResult, short: bool = False) -> str:
    """What a run did: failed, learned, went NaN, or silent (finite but stuck).

    A finite loss is not a healthy run: a NaN swallowed by a clip (Keras's
    cross-entropies clip probabilities, and how a clip treats NaN depends on
    the CPU's vector instructions) leaves the loss finite and constant while
    the weights are NaN. So a run counts as learned only when its weights
    are finite and its loss beats the chance loss (``LEARNED_FRACTION``).
    """
    if run.error:
        return "error" if short else f"failed ({run.error})"
    nan = ""
    if run.first_nan_step is not None:
        caught = " (caught)" if run.guard_events or run.skipped_steps else ""
        nan = f"NaN at step {run.first_nan_step}{caught}"
    loss = f"final loss {run.final_loss:.4g}"
    if run.learned(result.chance_loss):
        head = f"learned; {nan}" if nan else "learned"
        return head if short else f"{head}, {loss}"
    if nan:
        return nan if short else f"{nan}, {loss}"
    if short:
        return "silent: stuck"
    hidden = ""
    report = result.report  # the diagnosis of the stock model
    if run.nonfinite_weights:
        hidden = "non-finite weights hidden, "
    elif (
        run is result.stock
        and not isinstance(report, str)
        and report.find(checks.ACTIVATION_NON_FINITE.id)
    ):
        hidden = "non-finite activations hidden, "
    return f"silent: {hidden}loss stuck at {run.final_loss:.4g}"


def _cell_loss(run: RunResult) -> str:
    return "-" if run.error else f"{run.final_loss:.4g}"


def format_table(results) -> str:
    """The side-by-side table: what each run did and its final loss, stock vs stableops."""
    rows = [
        (
            r.scenario.title,
            f"{r.chance_loss:.4g}",
            outcome(r, r.stock, short=True),
            _cell_loss(r.stock),
            outcome(r, r.stableops, short=True),
            _cell_loss(r.stableops),
            str(r.stableops.skipped_steps),
        )
        for r in results
    ]
    header = ("scenario", "chance", "outcome", "final loss", "outcome", "final loss", "skipped")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    groups = ((0, 1), (2, 3), (4, 5, 6))

    def line(cells):
        return " | ".join("  ".join(f"{cells[i]:<{widths[i]}}" for i in group) for group in groups)

    group_width = lambda group: sum(widths[i] for i in group) + 2 * (len(group) - 1)  # noqa: E731
    lines = [
        " | ".join(
            f"{title:<{group_width(group)}}"
            for title, group in zip(("", "stock Keras", "stableops"), groups)
        ).rstrip(),
        line(header).rstrip(),
    ]
    lines.append("-" * len(lines[1]))
    lines.extend(line(row).rstrip() for row in rows)
    note = (
        "chance: the loss of the best constant prediction (no learning); outcome: learned (final "
        f"loss below {LEARNED_FRACTION:g}x chance, finite weights), NaN at step N (the first "
        "NaN/inf batch loss; caught: rolled back or skipped), or silent: stuck (finite loss that "
        "does not fall, e.g. a NaN hidden by Keras's clip); final loss: mean batch loss of the "
        "last epoch over the steps kept; skipped: steps SkipNonFinite skipped or NaNGuard rolled "
        "back."
    )
    lines.extend(textwrap.wrap(note, max(len(lines[1]), 60)))
    return "\n".join(lines)


def _wrap(text, width, indent, hanging):
    """``text`` wrapped to ``width``, the first line indented ``indent`` spaces, the rest
    ``hanging``."""
    return textwrap.wrap(
        text, width, initial_indent=" " * indent, subsequent_indent=" " * hanging
    )


def format_diagnoses(results, width=100) -> str:
    """Per scenario: the story, what stableops changed, and the doctor's main findings."""
    lines = []
    for number, r in enumerate(results, 1):
        s = r.scenario
        lines.append(f"{number}. {s.title}: {s.story}")
        lines.extend(_wrap("stableops run: " + s.stableops_changes, width, 3, 5))
        for run_name, run in (("stock Keras", r.stock), ("stableops", r.stableops)):
            lines.extend(_wrap(f"{run_name}: {outcome(r, run)}", width, 3, 5))
        events = r.stableops.guard_events
        if events:
            first = events[0]
            caught = (
                f"NaNGuard caught {len(events)} non-finite batch(es); first at step "
                f"{first['step']}: {first.get('layer') or '?'}"
                + (f", op {first['op']}" if first.get("op") else "")
                + (f" -- {first['cause']}" if first.get("cause") else "")
            )
            lines.extend(_wrap(caught, width, 3, 5))
        report = r.report
        if isinstance(report, str):
            lines.append(f"   diagnosis failed: {report}")
            continue
        lines.append(f"   stableops.diagnose(stock model) -> {report.summary_line()}")
        for finding in report.problems[:4]:
            headline = (
                f"{finding.severity.upper():<7} {finding.check} @ {finding.location}: "
                f"{finding.message}"
            )
            lines.extend(_wrap(headline, width, 3, 11))
            lines.extend(_wrap("fix: " + finding.fix, width, 11, 13))
        if len(report.problems) > 4:
            lines.append(
                f"   ... and {len(report.problems) - 4} more (stableops.diagnose(model, x, y) "
                "shows all)"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_losses(results, out) -> None:
    """Write one panel per scenario: per-step loss, stock vs stableops, NaN steps marked on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = (len(results) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(11, 3.6 * rows), squeeze=False)
    runs = (("stock Keras", "tab:red", 0.96), ("stableops", "tab:blue", 0.90))
    for ax, r in zip(axes.flat, results):
        top = ax.get_xaxis_transform()  # x in steps, y in axes fraction
        for (label, color, row), run in zip(runs, (r.stock, r.stableops)):
            if run.losses.size == 0:
                continue
            steps = np.arange(1, run.losses.size + 1)
            finite = np.isfinite(run.losses)
            ax.plot(
                steps,
                np.where(finite, run.losses, np.nan),
                color=color,
                lw=1.2,
                marker=".",
                ms=3,
                label=label,
            )
            if (~finite).any():
                ax.plot(
                    steps[~finite],
                    np.full((~finite).sum(), row),
                    "x",
                    color=color,
                    ms=5,
                    transform=top,
                    clip_on=False,
                    label=f"{label}: NaN loss ({(~finite).sum()} steps)",
                )
                ax.axvline(steps[~finite][0], color=color, ls="--", lw=0.8, alpha=0.6)
        ax.set_yscale("log")
        ax.set_title(r.scenario.title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("batch loss (log scale)")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results) :]:
        ax.set_visible(False)
    fig.suptitle(
        "stableops doctor: batch loss, stock Keras vs stableops (x: NaN loss, dashed: first NaN)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
