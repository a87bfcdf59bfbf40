# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: venv demo test test-fast ext bench bench-op bench-models clean

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
	CARAFE_EXP_REQUIRE_REFERENCE=1 $(PY) -m pytest -n $(PYTEST_WORKERS) -m "not gpu or gpu" --timeout 900

test-fast: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

ext: venv
	$(PY) -m carafe_exp.ops.extension --verbose

bench: bench-op bench-models

bench-op: venv
	$(PY) scripts/bench_op.py

bench-models: venv
	$(PY) scripts/bench_models.py --threads 1
	$(PY) scripts/bench_peers.py --threads 1
	$(PY) scripts/bench_data.py

clean:
	rm -rf $(VENV) build dist outputs .pytest_cache
