# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: venv demo test test-fast ext bench bench-op bench-models gpu-check clean

venv: $(STAMP)

# Reinstall whenever the dependency pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q -c constraints.txt --no-deps mmagic
	touch $(STAMP)

demo: venv
	$(VENV)/bin/carafe-exp

# The equivalence tests fail instead of skipping when a reference package is missing (tests/reference_packages.py).
test: venv
	CARAFE_EXP_REQUIRE_REFERENCE=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not gpu or gpu" --timeout 900

test-fast: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

ext: venv
	$(PY) -m carafe_exp.ops.extension --verbose

bench: bench-op bench-models

bench-op: venv
	$(PY) scripts/bench_op.py
	$(PY) scripts/bench_upsamplers.py

bench-models: venv
	$(PY) scripts/bench_models.py --threads 1
	$(PY) scripts/bench_peers.py --threads 1
	$(PY) scripts/bench_data.py

# The CUDA kernels on a GPU: build, GPU tests, timing, 64-bit indexing, compute-sanitizer; JSON in
# benchmarks/results/. Needs torch, pytest and ninja only, so it uses the venv when there is one and
# the plain interpreter otherwise. GPU_CHECK_ARGS=--dry-run checks the steps on a CPU.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build dist outputs .pytest_cache
