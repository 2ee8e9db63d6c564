# Quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two pytest workers: one per core of the CI machine.
PYTEST_WORKERS ?= 2

.PHONY: test test-other-cpu demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The linter first (ruff, line length 100: pyproject.toml), then the tests and the
# docstring examples of the package (doctests).
test: $(STAMP)
	$(PY) -m ruff check stableops tests benchmarks
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q --durations=15 --doctest-modules stableops tests

# The numerics tests again as on another CPU: how TF's max/min/clip kernels place
# a NaN depends on the vector instructions (AVX2 vs AVX-512) and on oneDNN, so
# this run turns oneDNN off and limits XLA's code to AVX2. `.ci/run` runs both.
# What it reruns: every test of the ops and activations (the kernels that meet
# NaN first), and the NaN tests of the losses (`-k ... or nan`); the whole-range
# property test (test_losses_range.py) is left out for time, to keep CI's two runs
# within 20 minutes on 2 cores.
OTHER_CPU_TESTS := tests/test_ops_*.py tests/test_activations.py tests/test_layers.py \
	tests/test_losses_probabilistic.py tests/test_losses_regression.py \
	tests/test_losses_gaussian.py tests/test_losses_metric.py tests/test_losses_ctc.py
test-other-cpu: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=0 XLA_FLAGS=--xla_cpu_max_isa=AVX2 \
		$(PY) -m pytest -n $(PYTEST_WORKERS) -q --durations=5 $(OTHER_CPU_TESTS) \
		-k "test_ops_ or test_activations.py or nan"

demo: $(STAMP)
	$(VENV)/bin/stableops doctor

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
