"""The report: targets checked, and ``summary.md`` built from the section JSON files.

Everything here reads the JSON files of an output directory, so the summary
of a partial rerun still covers every section measured there. Targets are
measured, not asserted: a missed target is listed with the numbers and the
reason (``WHY`` holds the reasons found by reading the kernels; a case with
no entry gets the generic reason of its target).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.cases import CASES, CASES_BY_NAME

COMPILED_MAX = 1.05
EAGER_MIN_SIZE = 2**20
EAGER_MAX = 0.5
EAGER_ELEMENTWISE_LOSS_MAX = 1 / 3
ULP_MAX_FLOAT32 = 2.0
SECTION_FILES = ("bandwidth", "speed", "accuracy", "memory", "end_to_end")
MODES_ORDER = ("eager", "function", "xla")

# Reasons for missed targets, keyed by (target id, case): found by reading the kernels and by the
# CPU-time ratios (which background load barely moves). A case with no entry gets GENERIC_WHY.
_ROW_REDUCTIONS = (
    "the stable row reduction (`_shifted_exponentials`) carries x - max as a TwoSum pair and corrects "
    "exp(z) by (1 + z_low), and makes three reductions per row (max, the sum of the non-maximal exponentials, "
    "the count of ties) where TF's kernel makes two (max, sum); each is a pass over the row, and the backward "
    "pass repeats the work"
)
_CROSS_ENTROPY = (
    "the loss is built on the stable log_softmax (see `log_softmax`): a full log-probability row is "
    "materialized and then reduced (twice the peak memory under XLA, see Memory), where TF's fused kernel "
    "computes the loss and its gradient (softmax - labels) in one pass"
)
WHY: dict[tuple[str, str], str] = {
    ("compiled", "binary_crossentropy"): (
        "`_log1m` evaluates both log1p(-p) and log(1 - p) for every element (a double where switching at "
        "p = 1/4) and the straight-through clips add selects to the gradient; Keras takes one log per side. "
        "If XLA's float32 log1p is accurate on [-1, -1/4] (the switch exists for its float64 log1p), the "
        "float32 path could drop one transcendental"
    ),
    ("compiled", "binary_focal_crossentropy"): "it builds on the stable binary cross-entropy (both logs, see above)",
    ("compiled", "categorical_crossentropy_logits"): _CROSS_ENTROPY,
    ("compiled", "sparse_categorical_crossentropy_logits"): _CROSS_ENTROPY,
    ("compiled", "logsumexp"): _ROW_REDUCTIONS,
    ("compiled", "softmax"): (
        "the stable row reduction (`_shifted_exponentials`) carries x - max as a TwoSum pair and corrects "
        "exp(z) by (1 + z_low): more arithmetic per element than TF's kernel over the same two reductions "
        "(max, sum); the gap is small (1.0-1.25 in CPU time)"
    ),
    ("compiled", "log_softmax"): _ROW_REDUCTIONS,
    ("compiled", "cosine_similarity"): (
        "`l2_normalize` scales each vector by a power of two (an extra max|x| reduction per vector, so four "
        "reductions instead of two) to avoid over- and underflow"
    ),
    ("compiled", "log_cosh"): (
        "both sides of the switch at |x| = log 2 run for every element (double where): a Taylor series for "
        "cosh - 1 and a software log1p series on one side, exp and another log1p series on the other; Keras "
        "computes x + softplus(-2x) - log 2 once"
    ),
    ("compiled", "elu"): (
        "expm1 is a software Taylor polynomial (11 terms in float32) evaluated for every element, plus exp for "
        "the other branch; XLA's expm1 is one call (but up to 4.4 ULP off)"
    ),
    ("ulp", "binary_crossentropy"): (
        "with a soft label the loss is a weighted sum of two logs whose roundings add up: 2.1 ULP at t = 0.48, "
        "p = 0.9999955 (barely over)"
    ),
    ("ulp", "binary_focal_crossentropy"): (
        "about eight float32 roundings (p_t, 1 - p_t, its square, two logs, their weighted sum) accumulate "
        "to 3-4 ULP with soft labels"
    ),
    ("ulp", "log_cosh"): (
        "the loss sees y_pred - y_true rounded to float32; near 0, log cosh d ~ d^2/2 doubles that "
        "rounding's relative error on top of its own; carrying the rounding error of the difference "
        "(TwoSum, then log_cosh(d) + tanh(d) * d_low) would remove it"
    ),
    ("ulp", "mean_squared_error"): (
        "the loss sees y_pred - y_true rounded to float32, and squaring doubles its relative error; "
        "(d + d_low)^2 from TwoSum would remove it"
    ),
}

GENERIC_WHY = {
    "eager": (
        "an eager stableops call runs its forward pass as one XLA kernel, but under a GradientTape TF runs the "
        "gradient as a second function over the forward's materialized intermediates (a 6-op elementwise "
        "chain at 2^20, CPU time: forward kernel 1.2 ms, forward + backward under the tape 13 ms, both "
        "compiled as one XLA program 3.4 ms), and each call pays ~0.3 ms of tf.function dispatch (tf.nn.elu: "
        "0.02 ms); so eager stableops keeps little of XLA's fusion, and where Keras runs one fused TF kernel "
        "it cannot win"
    ),
    "compiled": (
        "both sides are compiled by XLA into fused loops, so the gap is the extra arithmetic of the stable "
        "formula that Keras's kernel skips"
    ),
    "end_to_end": "the loss and activations are a small part of a training step; see the compiled ratios",
    "finite": "see the worst input in accuracy.json",
    "ulp": "see the worst input in accuracy.json",
}


def load_sections(out: Path) -> dict:
    sections = {}
    for name in (*SECTION_FILES, "run"):
        path = out / f"{name}.json"
        if path.exists():
            sections[name] = json.loads(path.read_text())
    return sections


def _num(value) -> float:
    if isinstance(value, str):
        return float(value)  # "inf", "-inf", "nan"
    return float("nan") if value is None else float(value)


def _pow2(size: int) -> str:
    return f"2^{int(round(math.log2(size)))}"


def _fmt_ratio(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2f}"


def _fmt_ulp(value) -> str:
    value = _num(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 1000 else f"{value:.1e}"


def _fmt_bytes(value: float) -> str:
    return f"{value / 2**20:.0f} MiB" if value >= 2**20 else f"{value / 2**10:.0f} KiB"


def _fmt_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def _fmt_spread(quantiles: dict) -> str:
    return f"{quantiles['median']:.2f} ({quantiles['q25']:.2f}-{quantiles['q75']:.2f})"


def _fmt_losses(keras_loss, stableops_loss) -> str:
    if keras_loss is None or stableops_loss is None:
        return "-"
    return f"{keras_loss:.4f} / {stableops_loss:.4f}"


def _find(rows, **where):
    """The first row whose fields equal ``where``, or None."""
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _why(target: str, case: str) -> str:
    """The reason for one case's miss; the target's common reason is printed once above its table."""
    if (target, case) in WHY:
        return WHY[(target, case)]
    if target == "eager" and case in CASES_BY_NAME:
        return f"Keras runs {CASES_BY_NAME[case].keras_note}"
    return "the common reason above"


# ----------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------


def _cpu(row) -> str:
    return f"; CPU time {row['cpu_ratio']['median']:.2f}" if "cpu_ratio" in row else ""


def _ratio_rows(sections, baseline="keras"):
    speed = sections.get("speed", {}).get("data", {})
    return [r for r in speed.get("ratios", []) if r["baseline"] == baseline and r["impl"] == "stableops"]


def evaluate_targets(sections: dict) -> list[dict]:
    """Each target: status "met", "missed" or "not measured", with the misses and why."""
    targets = []
    ratios = [r for r in _ratio_rows(sections) if r["dtype"] == "float32"]
    availability = _availability(sections)

    def unavailable(case_names):
        return sorted(c for c in case_names if availability.get(c, {}).get("stableops", {}).get("status") != "ok")

    # Compiled: ratio <= 1.05 at every size.
    compiled = [r for r in ratios if r["mode"] == "xla"]
    misses = [
        {
            "case": r["case"],
            "detail": f"{_pow2(r['size'])}: {r['ratio']['median']:.2f} (q25 {r['ratio']['q25']:.2f}{_cpu(r)})",
            "within_noise": r["ratio"]["q25"] <= COMPILED_MAX,
            "why": _why("compiled", r["case"]),
        }
        for r in compiled
        if r["ratio"]["median"] > COMPILED_MAX
    ]
    text = f"XLA-compiled forward+backward, stableops/Keras <= {COMPILED_MAX}"
    targets.append(_target("compiled", text, compiled, misses, unavailable))

    # Eager at >= 2^20: 2x faster, 3x on elementwise losses.
    eager = [r for r in ratios if r["mode"] == "eager" and r["size"] >= EAGER_MIN_SIZE]
    misses = []
    for r in eager:
        case = CASES_BY_NAME.get(r["case"])
        limit = EAGER_ELEMENTWISE_LOSS_MAX if case and case.kind == "loss" and case.elementwise else EAGER_MAX
        if r["ratio"]["median"] > limit:
            misses.append(
                {
                    "case": r["case"],
                    "detail": f"{_pow2(r['size'])}: {r['ratio']['median']:.2f} > {limit:.2f} "
                    f"(q25 {r['ratio']['q25']:.2f}{_cpu(r)})",
                    "within_noise": r["ratio"]["q25"] <= limit,
                    "why": _why("eager", r["case"]),
                }
            )
    text = "eager at >= 2^20: stableops/Keras <= 0.50 (<= 0.33 on elementwise losses)"
    targets.append(_target("eager", text, eager, misses, unavailable))

    # End to end.
    e2e_rows = [
        r for r in sections.get("end_to_end", {}).get("data", {}).get("rows", []) if r.get("compile", "xla") == "xla"
    ]
    measured = [r for r in e2e_rows if "ratio" in r]
    misses = [
        {
            "case": r["model"],
            "detail": f"{r['ratio']['median']:.2f} (q25 {r['ratio']['q25']:.2f}{_cpu(r)})",
            "within_noise": r["ratio"]["q25"] <= COMPILED_MAX,
            "why": _why("end_to_end", r["model"]),
        }
        for r in measured
        if r["ratio"]["median"] > COMPILED_MAX
    ]
    status = "not measured" if not measured else ("missed" if misses else "met")
    targets.append(
        {
            "id": "end_to_end",
            "target": f"model.fit(jit_compile=True) step time, stableops/Keras <= {COMPILED_MAX}",
            "status": status,
            "misses": misses,
            "unmeasured": [r["model"] for r in e2e_rows if "ratio" not in r],
        }
    )

    # Accuracy: finite, and <= 2 ULP float32 on elementwise cases (stableops).
    acc = [r for r in sections.get("accuracy", {}).get("data", {}).get("rows", []) if r.get("impl") == "stableops"]
    ok_rows = [r for r in acc if "error" not in r]
    misses = [
        {
            "case": r["case"],
            "detail": f"{r['dtype']} {r['mode']}: {r['nonfinite_values']} non-finite values, "
            f"{r['nonfinite_grad_samples']} samples with non-finite gradients",
            "why": _why("finite", r["case"]) + f" (e.g. inputs {r['worst']['inputs']})",
        }
        for r in ok_rows
        if r["nonfinite_values"] or r["nonfinite_grad_samples"]
    ]
    misses += [
        {"case": r["case"], "detail": f"{r['dtype']} {r['mode']}: {r['error']}", "why": "the call raised"}
        for r in acc
        if "error" in r
    ]
    text = "zero non-finite values or gradients for finite inputs (stableops)"
    targets.append(_target("finite", text, acc, misses, unavailable))

    elementwise_cases = {c.name for c in CASES if c.elementwise}
    elementwise = [r for r in ok_rows if r["dtype"] == "float32" and r["case"] in elementwise_cases]
    misses = []
    for r in elementwise:
        worst = max(_num(r["max_ulp_grid"]), _num(r["max_ulp_random"]))
        if worst > ULP_MAX_FLOAT32:
            misses.append(
                {
                    "case": r["case"],
                    "detail": f"{r['mode']}: {_fmt_ulp(worst)} ULP at inputs {r['worst']['inputs']} "
                    f"(got {r['worst']['got']!r}, want {r['worst']['want']})",
                    "why": _why("ulp", r["case"]),
                }
            )
    text = f"<= {ULP_MAX_FLOAT32:g} ULP in float32 on every elementwise case (stableops)"
    targets.append(_target("ulp", text, elementwise, misses, unavailable))
    return targets


def _target(target_id, text, measured_rows, misses, unavailable):
    cases_measured = {r["case"] for r in measured_rows}
    not_measured = unavailable(c.name for c in CASES if c.name not in cases_measured)
    status = "not measured" if not measured_rows else ("missed" if misses else "met")
    return {"id": target_id, "target": text, "status": status, "misses": misses, "unmeasured": not_measured}


def _availability(sections) -> dict:
    merged = {}
    for name in (*SECTION_FILES, "run"):
        merged.update(sections.get(name, {}).get("availability", {}))
    return merged


# ----------------------------------------------------------------------------
# summary.md
# ----------------------------------------------------------------------------


def _speed_tables(sections) -> list[str]:
    speed = sections.get("speed", {}).get("data")
    if not speed:
        return []
    out = ["## Speed: stableops / Keras, forward + backward", ""]
    out.append(
        "Median over interleaved rounds of the same-round ratio (below 1: stableops faster). "
        f"Marks: `✗` misses its target (XLA > {COMPILED_MAX}; eager at >= 2^20 above 0.50, or 0.33 on "
        "elementwise losses), `~` misses it by less than the round-to-round spread (q25 within target). "
        "`-`: not measured (implementation unavailable). `function` (a `tf.function` without XLA) is what "
        "`model.fit` runs by default on a machine without a GPU or TPU: Keras's `jit_compile=\"auto\"` turns "
        "XLA off there."
    )
    out.append("")
    ratios = _ratio_rows(sections)
    for dtype in sorted({r["dtype"] for r in ratios}, key=lambda d: d != "float32"):
        sizes = sorted({r["size"] for r in ratios if r["dtype"] == dtype})
        if len(sizes) == 1:  # one size (float16): one table, a column per mode
            rows = []
            for case in CASES:
                matches = [_find(ratios, case=case.name, dtype=dtype, mode=m, size=sizes[0]) for m in MODES_ORDER]
                cells = [_mark(r, case, m) if r else "-" for r, m in zip(matches, MODES_ORDER)]
                cells += [_cpu_short(r).strip(" ()") if r else "-" for r in matches]
                if any(c != "-" for c in cells):
                    rows.append([case.name, *cells])
            header = ["case", *MODES_ORDER, *[f"{m} CPU time" for m in MODES_ORDER]]
            out += [f"**{dtype}, {_pow2(sizes[0])}** (wall, then CPU-time ratio)", "", _table(header, rows), ""]
            continue
        for mode in MODES_ORDER:
            rows = []
            for case in CASES:
                cells = []
                for size in sizes:
                    match = _find(ratios, case=case.name, dtype=dtype, mode=mode, size=size)
                    cells.append(_mark(match, case, mode) if match else "-")
                if any(c != "-" for c in cells):
                    rows.append([case.name, *cells])
            if rows:
                out += [f"**{mode}, {dtype}**", "", _table(["case", *[_pow2(s) for s in sizes]], rows), ""]
    big = [r for r in ratios if r["dtype"] == "float32" and r["size"] >= EAGER_MIN_SIZE and "cpu_ratio" in r]
    if big:
        sizes = sorted({r["size"] for r in big})
        rows = []
        for case in CASES:
            cells = []
            for mode in ("eager", "function", "xla"):
                for size in sizes:
                    match = _find(big, case=case.name, mode=mode, size=size)
                    cells.append(_fmt_ratio(match["cpu_ratio"]["median"]) if match else "-")
            if any(c != "-" for c in cells):
                rows.append([case.name, *cells])
        header = ["case"] + [f"{mode} {_pow2(size)}" for mode in ("eager", "function", "xla") for size in sizes]
        out += [
            "**CPU-time ratio stableops / Keras, float32** (process CPU time of the same samples: the work done, "
            "far less sensitive to other processes on the cores than wall time, but blind to how many cores a "
            "kernel keeps busy)",
            "",
            _table(header, rows),
            "",
        ]
    tf_rows = _ratio_rows(sections, baseline="tf.nn")
    if tf_rows:
        largest = max(r["size"] for r in tf_rows if r["dtype"] == "float32")
        rows = []
        for case in CASES:
            cells = []
            for mode in ("eager", "function", "xla"):
                match = _find(tf_rows, case=case.name, dtype="float32", mode=mode, size=largest)
                cells.append(_fmt_ratio(match["ratio"]["median"]) if match else "-")
            if any(c != "-" for c in cells):
                rows.append([case.name, *cells])
        if rows:
            title = f"**stableops / tf.nn (or tf.math), float32, {_pow2(largest)}**"
            out += [title, "", _table(["case", "eager", "function", "xla"], rows), ""]
    out += _absolute_table(speed)
    return out


def _mark(row, case, mode) -> str:
    value, q25 = row["ratio"]["median"], row["ratio"]["q25"]
    if mode == "xla":
        limit = COMPILED_MAX
    elif mode == "eager" and row["size"] >= EAGER_MIN_SIZE and row["dtype"] == "float32":
        limit = EAGER_ELEMENTWISE_LOSS_MAX if case.kind == "loss" and case.elementwise else EAGER_MAX
    else:
        return _fmt_ratio(value)
    if value <= limit:
        return _fmt_ratio(value)
    return _fmt_ratio(value) + (" ~" if q25 <= limit else " ✗")


def _absolute_table(speed) -> list[str]:
    timings = [t for t in speed.get("timings", []) if t["dtype"] == "float32"]
    if not timings:
        return []
    largest = max(t["size"] for t in timings)
    impls, modes = ("stableops", "keras", "tf.nn"), ("eager", "function", "xla")
    header = ["case"] + [f"{impl} {mode}" for impl in impls for mode in modes]
    rows = []
    for case in CASES:
        cells = []
        for impl in ("stableops", "keras", "tf.nn"):
            for mode in ("eager", "function", "xla"):
                match = _find(timings, case=case.name, impl=impl, mode=mode, size=largest)
                cells.append(_fmt_seconds(match["seconds"]["median"]) if match else "-")
        if any(c != "-" for c in cells):
            rows.append([case.name, *cells])
    if not rows:
        return []
    return [f"**Median time per call, float32, {_pow2(largest)} elements**", "", _table(header, rows), ""]


def _limits_tables(sections) -> list[str]:
    from benchmarks.bandwidth import limits_table

    bandwidth = sections.get("bandwidth", {}).get("data")
    speed = sections.get("speed", {}).get("data")
    if not bandwidth and not speed:
        return []
    out = ["## Limits: memory bandwidth", ""]
    if bandwidth:
        rows = [[name, f"{m['best_gbps']:.1f}", f"{m['median_gbps']:.1f}"] for name, m in bandwidth["methods"].items()]
        out += [
            f"Measured at the start of the run on {_fmt_bytes(bandwidth['array_bytes'])} float32 arrays (bytes "
            f"read + written per second); the limit is the best of the in-place methods: "
            f"**{bandwidth['limit_gbps']:.1f} GB/s**. `numpy_copy_fresh` writes into a new array, paying the "
            "first-touch page faults every new TF output buffer pays.",
            "",
            _table(["method", "best GB/s", "median GB/s"], rows),
            "",
        ]
    if speed and speed.get("timings"):
        float32 = [t["size"] for t in speed["timings"] if t["dtype"] == "float32"]
        largest = max(float32) if float32 else 0
        limit_rows = [r for r in limits_table(speed, bandwidth, CASES, largest) if r["dtype"] == "float32"]
        rows = []
        for case in CASES:
            for impl in ("stableops", "keras", "tf.nn"):
                cells = []
                for mode in ("eager", "function", "xla"):
                    r = _find(limit_rows, case=case.name, impl=impl, mode=mode)
                    if r is None:
                        cells.append("-")
                        continue
                    share = r.get("fraction_of_copy", r["fraction_of_limit"])
                    rate = f"{r['achieved_gbps']:.1f} GB/s"
                    cells.append(f"{rate} ({100 * share:.0f}%)" if share is not None else rate)
                if any(c != "-" for c in cells):
                    first = next(r for r in limit_rows if r["case"] == case.name)
                    copy = f"{first['copy_gbps']:.1f} GB/s" if "copy_gbps" in first else "-"
                    rows.append([case.name, impl, _fmt_bytes(first["bytes"]), copy, *cells])
        if rows:
            out += [
                f"Elementwise cases at {_pow2(largest)} float32: compulsory traffic (inputs read once, value and "
                "gradient written once), the rate of a numpy copy of that traffic timed in the same rounds, and "
                "the traffic rate each implementation reaches, in percent of that copy (median of same-round "
                "ratios). Well below 100%: compute- or overhead-bound, or the data crosses memory more than once "
                "(eager: every op writes an intermediate; forward and backward are separate passes).",
                "",
                _table(["case", "impl", "traffic", "copy rate", "eager", "function", "xla"], rows),
                "",
            ]
    return out


def _accuracy_tables(sections) -> list[str]:
    acc = sections.get("accuracy", {}).get("data")
    if not acc or not acc.get("rows"):
        return []
    rows = acc["rows"]
    out = ["## Accuracy: max error in ULPs against mpmath, and non-finite outputs", ""]
    out.append(
        "Same inputs for every implementation: an edge grid (the dtype's extremes; only inputs whose exact "
        "value and gradient are finite) and a random sample. Cells: max ULP on the grid / on the random "
        "sample; `nf` = non-finite values / samples with a non-finite gradient (all should be 0). "
        "A value clipped by an epsilon counts its full error (Keras clips probabilities to [1e-7, 1 - 1e-7]). "
        "In brackets: the max when the unit is floored at the smallest normal number, i.e. when an absolute "
        "error up to that number counts as 1 ULP (TF and XLA flush subnormal intermediates to zero, so a "
        "result just above the smallest normal can be millions of its own ULPs off; the targets use the "
        "strict number)."
    )
    out.append("")
    for dtype in sorted({r["dtype"] for r in rows}, key=lambda d: d != "float32"):
        for mode in acc.get("modes", ("eager", "xla")):
            body = []
            for case in CASES:
                cells, any_row = [], False
                for impl in ("stableops", "keras", "tf.nn"):
                    r = _find(rows, case=case.name, impl=impl, mode=mode, dtype=dtype)
                    if r is None:
                        cells += ["-", "-"]
                        continue
                    any_row = True
                    if "error" in r:
                        cells += ["error", "-"]
                        continue
                    cells += [
                        f"{_ulp_cell(r, 'grid')} / {_ulp_cell(r, 'random')}",
                        f"{r['nonfinite_values']} / {r['nonfinite_grad_samples']}",
                    ]
                if any_row:
                    body.append([case.name, *cells])
            if body:
                header = ["case", "stableops ULP", "nf", "Keras ULP", "nf", "tf.nn ULP", "nf"]
                out += [f"**{dtype}, {mode}**", "", _table(header, body), ""]
    return out


def _ulp_cell(row, part: str) -> str:
    """Max ULP; where flushing subnormal intermediates explains it, the flush-aware max follows in brackets."""
    strict, flushed = row[f"max_ulp_{part}"], row.get(f"max_ulp_{part}_flush_aware")
    cell = _fmt_ulp(strict)
    if flushed is not None and _num(flushed) < _num(strict):
        cell += f" [{_fmt_ulp(flushed)}]"
    return cell


def _memory_table(sections) -> list[str]:
    mem = sections.get("memory", {}).get("data")
    if not mem:
        return []
    out = ["## Memory: peak extra resident memory of one forward + backward", ""]
    if not mem.get("supported"):
        return out + ["Not measured: /proc/self/clear_refs is not writable here.", ""]
    rows = []
    for case in CASES:
        cells = []
        for mode in ("eager", "xla"):
            got = {r["impl"]: r for r in mem["rows"] if (r["case"], r["mode"]) == (case.name, mode)}
            s, k = got.get("stableops"), got.get("keras")
            cells += [
                _fmt_bytes(s["peak_extra_bytes"]) if s else "-",
                _fmt_bytes(k["peak_extra_bytes"]) if k else "-",
                f"{s['peak_extra_bytes'] / k['peak_extra_bytes']:.2f}" if s and k and k["peak_extra_bytes"] else "-",
            ]
        if any(c != "-" for c in cells):
            size = next(r for r in mem["rows"] if r["case"] == case.name)
            rows.append([case.name, _fmt_bytes(size["input_bytes"]), *cells])
    out += [
        f"float32, {_pow2(mem['size'])} elements; {mem['method']}.",
        "",
        _table(
            ["case", "inputs", "stableops eager", "Keras eager", "ratio", "stableops xla", "Keras xla", "ratio"], rows
        ),
        "",
    ]
    return out


def _end_to_end_table(sections) -> list[str]:
    e2e = sections.get("end_to_end", {}).get("data")
    if not e2e or not e2e.get("rows"):
        return []
    names = {"xla": "fit(jit_compile=True)", "graph": "fit(jit_compile=False)", "eager": "fit(run_eagerly=True)"}
    rows = []
    for r in e2e["rows"]:
        s, k = r["flavours"]["stableops"], r["flavours"]["keras"]
        rows.append(
            [
                r["model"],
                names.get(r.get("compile", "xla"), r.get("compile")),
                _fmt_seconds(k["step_seconds"]) if k["step_seconds"] else k["note"],
                _fmt_seconds(s["step_seconds"]) if s["step_seconds"] else s["note"],
                _fmt_spread(r["ratio"]) if "ratio" in r else "-",
                f"{r['cpu_ratio']['median']:.2f}" if "cpu_ratio" in r else "-",
                _fmt_losses(k["final_loss"], s["final_loss"]),
                s["note"],
            ]
        )
    return [
        "## End to end: model.fit",
        "",
        f"{e2e['method']}. The target applies to `jit_compile=True`; `jit_compile=False` is what Keras's "
        "default (`\"auto\"`) uses on a machine without a GPU or TPU, shown for reference.",
        "",
        _table(
            [
                "model", "compile", "Keras step", "stableops step", "ratio (q25-q75)", "CPU ratio",
                "last loss Keras / stableops", "stableops flavour",
            ],  # fmt: skip
            rows,
        ),
        "",
    ]


def _targets_section(targets) -> list[str]:
    rows = []
    for t in targets:
        status = {"met": "met", "missed": "**missed**", "not measured": "not measured"}[t["status"]]
        cases = sorted({m["case"] for m in t["misses"]})
        noisy = sorted(c for c in cases if all(m.get("within_noise") for m in t["misses"] if m["case"] == c))
        detail = ""
        if cases:
            detail = f"{len(cases)} case(s)" + (f", {len(noisy)} only within noise" if noisy else "")
        if t.get("unmeasured"):
            detail += ("; " if detail else "") + "not measured (stableops unavailable): " + ", ".join(t["unmeasured"])
        rows.append([t["target"], status, detail or "-"])
    out = ["## Targets", "", _table(["target", "status", "detail"], rows), ""]
    for t in targets:
        if not t["misses"]:
            continue
        out += [f"**Missed: {t['target']}** (every miss with its numbers: `targets.json`)", ""]
        out += [f"Common reason: {GENERIC_WHY[t['id']]}.", ""]
        body = []
        by_case = {}
        for m in t["misses"]:
            by_case.setdefault(m["case"], []).append(m)
        for case, misses in by_case.items():
            noise = all(m.get("within_noise") for m in misses)
            details = "; ".join(m["detail"] for m in misses[:3])
            details += f"; +{len(misses) - 3} more" if len(misses) > 3 else ""
            body.append([f"`{case}`" + (" ~" if noise else ""), details, misses[0]["why"]])
        out += [_table(["case", "misses", "why"], body), ""]
        if any(all(m.get("within_noise") for m in ms) for ms in by_case.values()):
            out += ["`~`: every miss of that case is within the round-to-round spread (its q25 meets the target).", ""]
    return out


def _header(sections) -> list[str]:
    run = sections.get("run", {})
    env = run.get("environment", {})
    out = ["# stableops benchmarks: summary", ""]
    if env:
        runtime = run.get("runtime_seconds", {}).get("total")
        out += [
            f"Run {run.get('created', '?')} (preset `{run.get('config', {}).get('preset', '?')}`"
            + (f", {runtime / 60:.1f} min" if runtime else "")
            + f"), commit {env.get('commit')}; {env.get('cpu')}, {env.get('usable_cores')} cores, "
            f"{(env.get('memory_gib') or 0):.0f} GiB; TensorFlow {env.get('tensorflow')}, Keras {env.get('keras')}, "
            f"Python {env.get('python')}. Load average at start: {env.get('load_average_at_start')}.",
            "",
            f"float16 on this CPU: {env.get('float16', {}).get('verdict', '?')}.",
            "",
        ]
    other_runs = [
        f"`{name}` ({sections[name].get('created')}, preset `{sections[name].get('preset')}`)"
        for name in SECTION_FILES
        if name in sections and run and sections[name].get("created") != run.get("created")
    ]
    if other_runs:
        out += ["Sections from a later (partial) run than the header's: " + ", ".join(other_runs) + ".", ""]
    unavailable = sorted(
        (case, impl, a["detail"])
        for case, impls in _availability(sections).items()
        for impl, a in impls.items()
        if a["status"] != "ok"
    )
    if unavailable:
        out += ["Not measured (implementation unavailable or failing when the run started):", ""]
        out += [f"- `{case}` {impl}: {detail}" for case, impl, detail in unavailable]
        out.append("")
    return out


HEADLINE_SIZE = 2**20


def _worst_ulp(row, suffix: str = "") -> float:
    return max(_num(row[f"max_ulp_grid{suffix}"]), _num(row[f"max_ulp_random{suffix}"]))


def _cpu_short(row) -> str:
    return f" ({row['cpu_ratio']['median']:.2f})" if "cpu_ratio" in row else ""


def headline_table(sections) -> list[str]:
    """One row per case: ratios at 2^20 in each mode, and float32 accuracy of stableops against Keras."""
    float32 = [r for r in _ratio_rows(sections) if r["dtype"] == "float32"]
    sizes = {r["size"] for r in float32}
    size = HEADLINE_SIZE if HEADLINE_SIZE in sizes or not sizes else max(sizes)
    ratios = [r for r in float32 if r["size"] == size]
    accuracy = sections.get("accuracy", {}).get("data", {}).get("rows", [])
    rows = []
    for case in CASES:
        cells = []
        for mode in ("eager", "function", "xla"):
            match = _find(ratios, case=case.name, mode=mode)
            cells.append(f"{_fmt_ratio(match['ratio']['median'])}{_cpu_short(match)}" if match else "-")
        for impl in ("stableops", "keras"):
            worst, flushed, nonfinite = [], [], 0
            for mode in ("eager", "xla"):
                r = _find(accuracy, case=case.name, impl=impl, mode=mode, dtype="float32")
                if r and "error" not in r:
                    worst.append(_worst_ulp(r))
                    flushed.append(_worst_ulp(r, "_flush_aware") if "max_ulp_grid_flush_aware" in r else worst[-1])
                    nonfinite += r["nonfinite_values"] + r["nonfinite_grad_samples"]
            cell = "-"
            if worst:
                cell = _fmt_ulp(max(worst))
                cell += f" [{_fmt_ulp(max(flushed))}]" if max(flushed) < max(worst) else ""
                cell += f" ({nonfinite} nf)" if nonfinite else ""
            cells.append(cell)
        if any(c != "-" for c in cells):
            rows.append([f"`{case.name}`", *cells])
    if not rows:
        return []
    header = [
        "case", "eager", "tf.function", "XLA", "max ULP stableops", "max ULP Keras",
    ]  # fmt: skip
    return [
        f"## Headline: float32, {_pow2(size)} elements",
        "",
        "Time ratio stableops / Keras of forward + backward, wall time (CPU time in parentheses; below 1: "
        "stableops faster; `tf.function` without XLA is `model.fit`'s default on CPU-only machines), and the "
        "worst float32 error over the edge grid and the random sample, eager or XLA, in ULPs (in brackets: with "
        "the unit floored at the smallest normal number; `nf`: non-finite values or gradients where the exact "
        "ones are finite).",
        "",
        _table(header, rows),
        "",
    ]


def build_summary(sections: dict, targets: list[dict]) -> str:
    parts = _header(sections) + headline_table(sections) + _targets_section(targets)
    parts += _speed_tables(sections) + _limits_tables(sections) + _accuracy_tables(sections)
    parts += _memory_table(sections) + _end_to_end_table(sections)
    plots = [p for p in ("speed_ratio.png", "speed_times.png", "accuracy.png", "bandwidth.png")]
    parts += ["## Plots", "", *[f"- `{p}`" for p in plots], ""]
    return "\n".join(parts)


def write_report(out: Path, plots: bool = True) -> str:
    sections = load_sections(out)
    targets = evaluate_targets(sections)
    (out / "targets.json").write_text(json.dumps(targets, indent=1) + "\n")
    if plots:
        from benchmarks.plots import write_plots

        write_plots(sections, out)
    summary = build_summary(sections, targets)
    (out / "summary.md").write_text(summary)
    return summary
