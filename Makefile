# Quickstart: `make run` (the main job on the embedded defaults) and `make test` (the whole suite).
# Both bootstrap .venv from the committed lock when it is missing or stale, and skip that when current.
# `make image` builds the platform image (.ci/image.sh: docker or podman; IMAGE_BASE=local, the
# default, builds on a debootstrap base and needs no registry; IMAGE_BASE=default uses the
# Dockerfile's official python image).
PYTHON ?= python3.11
VENV := .venv
LOCK := requirements.lock
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
IMAGE ?= fraud-platform:dev
IMAGE_BASE ?= local
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0
# Bytecode caches make each `import tensorflow` (one per pipeline step) seconds instead of ~20 s.
unexport PYTHONDONTWRITEBYTECODE
# dvc.yaml stages and the pipeline components call `fraud` and `python3`: use the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test tools image lint format lock bench clean-venv dashboards

# The stamp records the lock and pyproject it was built from, so a changed lock reinstalls.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

# The run directory is named here so the README's `make run` figures come from this run's summary.
# The run renders its Grafana dashboards from a Prometheus scraping it: the Debian package is
# installed when missing; when it cannot be (no root, no sudo), the run goes on and says why.
run: $(STAMP)
	@command -v prometheus >/dev/null || .ci/install-tools.sh prometheus || \
	  echo "make run: could not install prometheus: the run's dashboards will not be rendered" >&2
	run_dir=runs/demo-$$(date +%Y%m%d-%H%M%S) && \
	  $(BIN)/fraud demo --run-dir $$run_dir && \
	  $(BIN)/python -m bench.demo_figures $$run_dir

# The container tests, the workflow lint and the alerting tests need podman & co., actionlint,
# Prometheus and Alertmanager: installed when missing (.ci/install-tools.sh).
tools:
	.ci/install-tools.sh

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --durations=15

image:
	IMAGE_BASE=$(IMAGE_BASE) .ci/image.sh $(IMAGE)

# docs/img's dashboard renders: the newest finished `make run`'s, drawn again from the Prometheus data it
# kept (app/demo_dashboards.py), so they follow the dashboards' JSON.
dashboards: $(STAMP)
	@run=$$(ls -td runs/demo-*/summary.json 2>/dev/null | head -1 | xargs -r dirname); \
	  test -n "$$run" || { echo "make dashboards: no finished runs/demo-*: make run first" >&2; exit 1; }; \
	  echo "$(BIN)/python -m app.demo_dashboards $$run --out docs/img"; \
	  $(BIN)/python -m app.demo_dashboards $$run --out docs/img

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
