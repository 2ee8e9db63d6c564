"""Run every ```python example of docs/guide.md; each must finish without an error.

The examples run in one fresh Python process (so they meet TensorFlow as a
user's program does, and cannot leak a dtype policy or a distribution
strategy into other tests), each in its own namespace, in a temporary
working directory (they write model files). Their own ``assert`` lines check
the outcome; this test reports each example's traceback under its heading.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"

_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{2,3} (.+)$", re.MULTILINE)


def extract_examples(text: str) -> list[dict]:
    """The ```python blocks of a markdown text, with their heading and first line number."""
    examples = []
    for match in _FENCE.finditer(text):
        headings = _HEADING.findall(text, 0, match.start())
        line = text.count("\n", 0, match.start(1)) + 1
        examples.append(
            {"heading": headings[-1] if headings else "top", "line": line, "code": match.group(1)}
        )
    return examples


EXAMPLES = extract_examples(GUIDE.read_text(encoding="utf-8"))

_RUNNER = r"""
import json, os, sys, time, traceback
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
examples = json.load(open(sys.argv[1]))
results = []
for example in examples:
    # Line numbers in tracebacks are those of docs/guide.md.
    source = "\n" * (example["line"] - 1) + example["code"]
    start, cpu = time.perf_counter(), time.process_time()
    try:
        exec(compile(source, "docs/guide.md", "exec"), {"__name__": "__main__"})
        error = None
    except BaseException:
        error = traceback.format_exc()
    results.append({
        "error": error,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
    })
    try:  # undo what an example may have left behind (a failed one may skip its own reset)
        import keras
        keras.config.set_dtype_policy("float32")
        keras.utils.clear_session()
    except Exception:
        pass
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("guide")
    (workdir / "examples.json").write_text(json.dumps(EXAMPLES))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)  # the multi-worker example runs as one worker
    completed = subprocess.run(
        [sys.executable, "-c", _RUNNER, "examples.json", "results.json"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )
    out = workdir / "results.json"
    assert completed.returncode == 0 and out.exists(), (
        f"the example runner itself failed (exit {completed.returncode}):\n"
        + completed.stdout[-3000:] + completed.stderr[-5000:]
    )
    return json.loads(out.read_text())


def test_guide_has_one_example_per_use():
    """The guide covers every use issue 7 names, each in an example that runs."""
    code = "\n".join(example["code"] for example in EXAMPLES)
    required = {
        "Sequential model": "keras.Sequential(",
        "functional model": "keras.Model(inputs",
        "stableops function on a keras.Input": "stableops.activations.elu(keras.layers",
        "subclassed model": "(keras.Model):",
        "loss as a metric": "keras.metrics.MeanMetricWrapper(stableops.losses",
        "loss dict": "loss={",
        "tf.data": "tf.data.Dataset",
        "GradientTape loop": "tf.GradientTape()",
        "mixed_float16": '"mixed_float16"',
        "mixed_bfloat16": '"mixed_bfloat16"',
        "LossScaleOptimizer": "keras.optimizers.LossScaleOptimizer(",
        "SkipNonFinite": "stableops.optimizers.SkipNonFinite(",
        ".keras save/load": "keras.saving.load_model(",
        "SavedModel export": "model.export(",
        "SavedModel reload": "tf.saved_model.load(",
        "MirroredStrategy": "tf.distribute.MirroredStrategy()",
        "MultiWorkerMirroredStrategy": "tf.distribute.MultiWorkerMirroredStrategy()",
    }
    missing = [use for use, needle in required.items() if needle not in code]
    assert not missing, f"docs/guide.md has no runnable example for: {missing}"


def _slug(heading):
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


@pytest.mark.parametrize(
    "index",
    range(len(EXAMPLES)),
    ids=[f"{i}-{_slug(example['heading'])}" for i, example in enumerate(EXAMPLES)],
)
def test_guide_example_runs(results, index):
    example, result = EXAMPLES[index], results[index]
    assert result["error"] is None, (
        f"docs/guide.md example at line {example['line']} ({example['heading']}) failed:\n"
        + result["error"]
    )


def test_extract_examples_finds_blocks_and_their_headings():
    text = (
        "# T\n\n## One\n\n```python\nx = 1\n```\n\n"
        "```bash\nls\n```\n\n### Two\n```python\ny = 2\n```\n"
    )
    examples = extract_examples(text)
    assert [(e["heading"], e["line"], e["code"]) for e in examples] == [
        ("One", 6, "x = 1\n"),
        ("Two", 15, "y = 2\n"),
    ]
