# Quickstart: `make run` (the main job on the embedded defaults) and `make test` (the whole suite).
# Both bootstrap .venv from the committed lock when it is missing or stale, and skip that when current.
PYTHON ?= python3.11
VENV := .venv
LOCK := requirements.lock
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0
# Bytecode caches make each `import tensorflow` (one per pipeline step) seconds instead of ~20 s.
unexport PYTHONDONTWRITEBYTECODE
# dvc.yaml stages and the pipeline components call `fraud` and `python3`: use the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test lint format lock bench clean-venv monitoring-tools dashboards

# The stamp records the lock and pyproject it was built from, so a changed lock reinstalls.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

# The run directory is named here so the README's `make run` figures come from this run's summary.
run: $(STAMP)
	run_dir=runs/demo-$$(date +%Y%m%d-%H%M%S) && \
	  $(BIN)/fraud demo --run-dir $$run_dir && \
	  $(BIN)/python -m bench.demo_figures $$run_dir

# The alerting tests run a real Prometheus and Alertmanager: Debian's packages, installed when
# missing (as root, or with sudo).
MONITORING_TOOLS := prometheus promtool prometheus-alertmanager amtool
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
monitoring-tools:
	@for tool in $(MONITORING_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    prometheus prometheus-alertmanager; \
	fi

test: $(STAMP) monitoring-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# docs/img's dashboard renders: the monitoring tests' stack (broker, model server, consumer,
# Prometheus) drawn panel by panel by monitoring/dashboard_render.py.
dashboards: $(STAMP) monitoring-tools
	FRAUD_DASHBOARD_IMG_DIR=docs/img $(BIN)/python -m pytest -q tests/test_monitoring_prometheus.py

bench: $(STAMP)
	$(BIN)/python -m bench.all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Regenerates the fully pinned lock (resolves in seconds; pip's resolver backtracks for hours on this stack).
lock:
	uv pip compile requirements.in --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o $(LOCK)

clean-venv:
	rm -rf $(VENV)
