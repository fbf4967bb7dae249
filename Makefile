# hubbub: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 0.0.0.0
PORT   ?= 9502
# Debian packages the test suite needs (headless Chromium for the browser tests).
APT_PACKAGES := chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint system-deps node-deps conformance bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

run: install
	$(BIN)/hubbub serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests examples tools bench

# Debian's chromium (never `playwright install`: nothing is downloaded at run time).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

# The benchmark peers' Node packages (from the lock files; the npm registry only).
node-deps:
	@command -v npm >/dev/null 2>&1 || { echo "needs Node.js and npm (apt-get install nodejs npm)"; exit 1; }
	npm install --prefix bench/peers/node_ws --no-audit --no-fund --silent
	npm install --prefix bench/peers/socketio_node --no-audit --no-fund --silent

test: install system-deps node-deps lint
	$(BIN)/pytest

# Full Autobahn|Testsuite run (sections 1-7, 9, 10, 12, 13) against
# examples/echo_server.py; reports land in reports/conformance/.
conformance: install
	$(BIN)/python -m tools.conformance --all --outdir reports/conformance

# hubbub against Node ws, websockets, aiohttp and picows (seed mode) and Node
# socket.io and python-socketio (chat mode), same generator, same run (about
# 14 minutes); writes docs/benchmarks.md and docs/img/*.png.
# `make bench BENCH_ARGS=--quick` is a 2-minute smoke run into reports/bench/.
BENCH_ARGS ?=
bench: install node-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) reports .pytest_cache
