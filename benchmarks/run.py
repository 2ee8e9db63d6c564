"""Command line of the benchmarks.

``python -m benchmarks [--quick | --smoke] [--only CASES] [--sections ...] [--out DIR]``.

Runs the chosen sections, writes one JSON file per section plus ``run.json``
into ``--out`` (default ``benchmarks/scratch/``; ``benchmarks/results/`` is
the committed run), then writes ``summary.md`` and the PNG plots from every
section file in that directory and prints the summary. A run restricted with
``--only`` or ``--sections`` replaces only the rows it measured, so a
partial rerun updates the committed results in place.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "scratch"


@dataclasses.dataclass
class Config:
    """Everything that sets how long a run takes; ``PRESETS`` holds the named choices."""

    preset: str
    sizes: tuple[int, ...]
    half_sizes: tuple[int, ...]
    speed_dtypes: tuple[str, ...]
    accuracy_dtypes: tuple[str, ...]
    accuracy_half_modes: tuple[
        str, ...
    ]  # float32 is measured eager and under XLA; half dtypes in these
    modes: tuple[str, ...]
    rounds: (
        dict  # {size threshold: rounds} - a size uses the entry of the largest threshold <= size
    )
    min_sample_s: float
    limits_min_size: (
        int  # elementwise cases at >= this size also time a memory copy of their traffic
    )
    random_points: int
    grid_stride: int
    memory_size: int
    bandwidth_bytes: int
    bandwidth_repeats: int
    e2e_models: tuple[str, ...]
    e2e_steps: int
    e2e_batch: int
    e2e_rounds: int
    e2e_compiles: tuple[str, ...] = (
        "graph",
        "xla",
    )  # jit_compile=False (Keras's CPU default); True; "eager"
    e2e_mixed_models: tuple[str, ...] = ("cnn",)  # run again under the mixed_float16 dtype policy
    # The gradients section thins each case's sample (tests/test_gradient_accuracy.py's): every
    # k-th of its grid rows, at most this many of its random rows.
    gradient_stride_scale: int = 1
    gradient_random: int = 32

    def rounds_for(self, size: int) -> int:
        eligible = [t for t in self.rounds if t <= size]
        return self.rounds[max(eligible)] if eligible else self.rounds[min(self.rounds)]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["rounds"] = {f"2^{int(math.log2(k))}": v for k, v in self.rounds.items()}
        return data


PRESETS = {
    # The committed run: about 15 minutes on 2 shared cores (end to end: 8 models x compile modes).
    "full": Config(
        preset="full",
        sizes=tuple(2**k for k in (10, 14, 18, 20, 22, 24)),
        half_sizes=(2**20,),
        speed_dtypes=("float32", "float16"),
        accuracy_dtypes=("float32", "float64", "float16", "bfloat16"),
        accuracy_half_modes=("eager",),
        modes=("eager", "function", "xla"),
        rounds={2**10: 7, 2**20: 5, 2**24: 2},
        min_sample_s=0.02,
        limits_min_size=2**20,
        random_points=512,
        grid_stride=1,
        memory_size=2**24,
        bandwidth_bytes=2**27,
        bandwidth_repeats=5,
        e2e_models=("mlp", "cnn", "gru"),
        e2e_steps=40,
        e2e_batch=128,
        e2e_rounds=5,
    ),
    # A few minutes: the headline sizes, float32 only.
    "quick": Config(
        preset="quick",
        sizes=(2**10, 2**16, 2**20),
        half_sizes=(),
        speed_dtypes=("float32",),
        accuracy_dtypes=("float32",),
        accuracy_half_modes=("eager",),
        modes=("eager", "function", "xla"),
        rounds={2**10: 3},
        min_sample_s=0.01,
        limits_min_size=2**20,
        random_points=128,
        grid_stride=1,
        memory_size=2**20,
        bandwidth_bytes=2**26,
        bandwidth_repeats=3,
        e2e_models=("mlp", "cnn", "gru"),
        e2e_steps=10,
        e2e_batch=64,
        e2e_rounds=2,
        gradient_stride_scale=4,
        gradient_random=8,
    ),
    # The test suite's smoke run: tiny sizes, one round; checks the harness, measures nothing
    # useful.
    "smoke": Config(
        preset="smoke",
        sizes=(2**8,),
        half_sizes=(),
        speed_dtypes=("float32",),
        accuracy_dtypes=("float32",),
        accuracy_half_modes=("eager",),
        modes=("eager", "function", "xla"),
        rounds={2**8: 1},
        min_sample_s=0.0,
        limits_min_size=2**8,
        random_points=8,
        grid_stride=16,
        memory_size=2**8,  # the speed size: reuses its compiled functions
        bandwidth_bytes=2**20,
        bandwidth_repeats=1,
        e2e_models=("mlp", "cnn"),
        e2e_steps=2,
        e2e_batch=16,
        e2e_rounds=1,
        e2e_compiles=("eager",),
        e2e_mixed_models=("cnn",),
        gradient_stride_scale=16,
        gradient_random=2,
    ),
}


def parse_args(argv):
    from benchmarks import SECTIONS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Speed, limits, accuracy, gradient, memory and end-to-end benchmarks: "
        "stableops vs Keras and tf.nn.",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true", help="a few minutes: sizes 2^10, 2^16, 2^20, float32 only"
    )
    preset.add_argument(
        "--smoke", action="store_true", help="seconds: tiny sizes, one round (the test suite's run)"
    )
    parser.add_argument(
        "--only", help="comma-separated case names (or parts of names), e.g. softmax,huber"
    )
    parser.add_argument(
        "--sections",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
        default=",".join(SECTIONS),
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--sizes", help="override the size ladder: comma-separated powers of two, e.g. 10,16,20"
    )
    parser.add_argument(
        "--rounds-scale",
        type=int,
        default=1,
        help="time K times the preset's rounds at every size (and of model.fit): a partial run "
        "(--only) of cases whose ratio spreads more than its target's margin on shared cores",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild summary.md and plots from --out's JSON",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print progress or the summary")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; sections are {', '.join(SECTIONS)}")
    args.sections = sections
    if args.rounds_scale < 1:
        parser.error(f"--rounds-scale must be at least 1, got {args.rounds_scale}")
    return args


def make_config(args) -> Config:
    config = dataclasses.replace(
        PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    )
    if args.sizes:
        config.sizes = tuple(2 ** int(k) for k in args.sizes.split(","))
    config.rounds = {size: n * args.rounds_scale for size, n in config.rounds.items()}
    config.e2e_rounds *= args.rounds_scale
    return config


def _jsonable(value):
    """Non-finite floats become the strings "inf", "-inf", "nan" (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")


# The fields that identify a row of each section (a row lacking one, e.g. a speed timing's
# baseline, has None there): a partial run replaces the old rows with the identities it measured.
# The memory section measures one size per run (its data's "size"), so size is not part of it.
ROW_IDENTITY = {
    "speed": ("case", "dtype", "size", "mode", "impl", "baseline"),
    "accuracy": ("case", "dtype", "mode", "impl"),
    "gradients": ("case", "wrt", "mode", "impl"),
    "memory": ("case", "dtype", "mode", "impl"),
    "end_to_end": ("model", "compile", "policy"),
}


def _merge(old: dict, new: dict, section: str) -> dict:
    """``new``, plus the ``old`` rows whose identity (``ROW_IDENTITY``) it did not measure."""
    fields = ROW_IDENTITY.get(section)
    merged = dict(new)
    if fields is None:  # no rows (bandwidth): the new measurement replaces the old
        return merged

    def identity(row):
        return tuple(row.get(f) for f in fields)

    for key, rows in old.items():
        if isinstance(rows, list) and isinstance(new.get(key), list):
            measured = {identity(r) for r in new[key] if isinstance(r, dict)}
            kept = [r for r in rows if isinstance(r, dict) and identity(r) not in measured]
            merged[key] = kept + new[key]
    return merged


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # tests/_reference.py holds the ULP helpers
    args = parse_args(argv)
    config = make_config(args)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    if args.report_only:
        from benchmarks import report

        log(report.write_report(args.out, plots=not args.no_plots))
        return 0

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices: every size is a new shape, by design

    from benchmarks import SCHEMA, environment, report
    from benchmarks import cases as case_module

    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    selected = case_module.select_cases(args.only)
    env = environment.describe()
    log(f"stableops benchmarks ({config.preset}) -> {out}")
    log(
        f"  {env['cpu']}, {env['usable_cores']} cores; TF {env['tensorflow']}, Keras {env['keras']}"
    )

    availability = {c.name: {i.name: case_module.probe(c, i) for i in c.impls} for c in selected}
    for case in selected:
        missing = [f"{i}: {a.status}" for i, a in availability[case.name].items() if not a.ok]
        if missing:
            log(f"  {case.name}: {'; '.join(missing)}")
    availability_json = {
        c: {i: a.to_dict() for i, a in impls.items()} for c, impls in availability.items()
    }

    runtimes = {}
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for section in args.sections:
        log(f"[{section}]")
        start = time.perf_counter()
        data = _run_section(section, selected, availability, config, log)
        runtimes[section] = time.perf_counter() - start
        path = out / f"{section}.json"
        document = {
            "schema": SCHEMA,
            "section": section,
            "created": created,
            "preset": config.preset,
            "commit": env["commit"],
            "runtime_seconds": runtimes[section],
            "availability": availability_json,
            "data": data,
        }
        if path.exists() and args.only:
            old = json.loads(path.read_text())
            if old.get("schema") == SCHEMA:
                document["data"] = _merge(old["data"], data, section)
                document["availability"] = {**old.get("availability", {}), **availability_json}
        write_json(path, document)
        log(f"  {section}: {runtimes[section]:.1f}s")

    total = time.perf_counter() - started
    write_json(
        out / "run.json",
        {
            "schema": SCHEMA,
            "created": created,
            "environment": env,
            "config": config.to_dict(),
            "only": args.only,
            "rounds_scale": args.rounds_scale,
            "sections_run": list(args.sections),
            "runtime_seconds": {"total": total, **runtimes},
            "availability": availability_json,
        },
    )
    summary = report.write_report(out, plots=not args.no_plots)
    log("")
    log(summary)
    log(f"wrote {out} in {time.perf_counter() - started:.1f}s")
    return 0


def _run_section(section, selected, availability, config, log):
    if section == "bandwidth":
        from benchmarks.bandwidth import measure_bandwidth

        return measure_bandwidth(config.bandwidth_bytes, config.bandwidth_repeats)
    if section == "speed":
        from benchmarks.speed import run_speed

        return run_speed(selected, availability, config, log)
    if section == "accuracy":
        from benchmarks.accuracy import run_accuracy

        return run_accuracy(selected, availability, config, log)
    if section == "gradients":
        from benchmarks.gradients import run_gradients

        return run_gradients(selected, availability, config, log)
    if section == "memory":
        from benchmarks.memory import run_memory

        return run_memory(selected, availability, config, log)
    if section == "end_to_end":
        from benchmarks.end_to_end import run_end_to_end

        return run_end_to_end(config, log)
    raise ValueError(section)
