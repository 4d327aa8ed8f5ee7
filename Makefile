# Two commands for a new user: `make demo` and `make test`. Setup is idempotent: the venv is
# rebuilt only when pyproject.toml or constraints.txt change.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PLASTER_HOME ?= $(CURDIR)/.plaster
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo demo-lake demo-iceberg lint test test-unit bench bench-heavy bench-warm-start bench-soak bench-gate bench-serve bench-scale faults clean-home

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The reference pipelines, two cycles each: the second learns only the data simulated after the
# first (for the lake pipelines, only the table versions appended after it).
demo: pipeline := digits
demo-lake: pipeline := lake
demo-iceberg: pipeline := iceberg
demo demo-lake demo-iceberg: setup
	$(BIN)/plaster simulate pipelines/$(pipeline) --shards 4
	$(BIN)/plaster run pipelines/$(pipeline)
	$(BIN)/plaster simulate pipelines/$(pipeline) --shards 4
	$(BIN)/plaster run pipelines/$(pipeline)
	$(BIN)/plaster status pipelines/$(pipeline)

test: setup
	$(BIN)/python -m pytest -q tests

# ruff as configured in pyproject.toml (pyflakes, pycodestyle, import order, bugbear): no finding left.
lint: setup
	$(BIN)/ruff check orchestrator tests benchmarks pipelines

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/python benchmarks/cycle_time.py --workload digits

bench-heavy: setup
	$(BIN)/python benchmarks/cycle_time.py --workload heavy

bench-warm-start: setup
	$(BIN)/python benchmarks/warm_start.py --workload digits --reps 5
	$(BIN)/python benchmarks/warm_start.py --workload heavy --reps 3
	$(BIN)/python benchmarks/warm_start.py --workload heavy --reps 3 --new-shards 1

bench-soak: setup
	$(BIN)/python benchmarks/soak.py --workload digits --cycles 20

bench-gate: setup
	$(BIN)/python benchmarks/gate_quality.py

bench-serve: setup
	$(BIN)/python benchmarks/serve.py

bench-scale: setup
	$(BIN)/python benchmarks/scale.py

faults: setup
	$(BIN)/python benchmarks/faults.py

clean-home:
	rm -rf $(PLASTER_HOME)
