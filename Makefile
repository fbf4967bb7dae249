# hubbub: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 0.0.0.0
PORT   ?= 9502

.PHONY: install run test lint conformance clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/hubbub serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests examples

test: install lint
	$(BIN)/pytest

# Full Autobahn|Testsuite run (sections 1-7, 9, 10, 12, 13) against
# examples/echo_server.py; reports land in reports/conformance/.
conformance: install
	$(BIN)/python -m tools.conformance --all --outdir reports/conformance

clean:
	rm -rf $(VENV) reports .pytest_cache
