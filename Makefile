# Everything a fresh machine needs is installed by these targets.
#   make demo   — the main job (today: validate + render the example mesh)
#   make test   — ruff, mypy, the import contract and pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MESH   ?= examples/shop/devmesh.yaml
OUT    ?= out/shop

.PHONY: demo test lint typecheck contracts pytest venv schema clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/devmesh validate -f $(MESH)
	$(BIN)/devmesh render -f $(MESH) --out $(OUT) --check
	$(BIN)/devmesh explain -f $(MESH) GET http://127.0.0.1:8080/catalog/items -H 'x-canary: 1'

test: lint typecheck contracts pytest

lint: venv
	$(BIN)/ruff check devmesh tests bench
	$(BIN)/ruff format --check devmesh tests bench

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

pytest: venv
	$(BIN)/pytest -q

schema: venv
	$(BIN)/devmesh schema > devmesh.schema.json

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache .hypothesis
