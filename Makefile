# hubbub: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
HOST   ?= 0.0.0.0
PORT   ?= 9502
# What is installed into $(VENV), one stamp each: `make run` needs only the
# server's own dependencies; `make test` adds the dev and bench extras (the
# test suite drives the benchmark generator too), `make bench` the bench
# extras. Each stamp is redone when pyproject.toml changes.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
BENCH_STAMP   := $(VENV)/.installed-bench
# Debian packages the test suite needs (headless Chromium for the browser tests; gcc and
# libssl-dev build tools/steady_probe.c, the compiled steady-rate receiver).
APT_PACKAGES := chromium nginx haproxy openssl redis-server gcc libssl-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-dev install-bench run test lint system-deps node-deps conformance bench bench-core bench-transports bench-scaleout fuzz soak clean

install: $(RUNTIME_STAMP)
install-dev: $(DEV_STAMP)
install-bench: $(BENCH_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip

# An install with extras also installs the runtime dependencies (and dev
# includes bench): those stamps are touched too, so that `make run` after
# `make test` installs nothing again.
$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[bench]'
	touch $@ $(RUNTIME_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev,bench]'
	touch $@ $(BENCH_STAMP) $(RUNTIME_STAMP)

run: install
	$(BIN)/hubbub serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check src tests examples tools bench

# Debian's chromium (never `playwright install`: nothing is downloaded at run time).
system-deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

# The benchmark peers' Node packages, and the browser tests' (axe-core) when
# tests/browser has a package.json (from the lock files; the npm registry only).
node-deps:
	@command -v npm >/dev/null 2>&1 || { echo "needs Node.js and npm (apt-get install nodejs npm)"; exit 1; }
	npm install --prefix bench/peers/node_ws --no-audit --no-fund --silent
	npm install --prefix bench/peers/socketio_node --no-audit --no-fund --silent
	npm install --prefix bench/peers/uws_node --no-audit --no-fund --silent
	if [ -f tests/browser/package.json ]; then \
		npm install --prefix tests/browser --no-audit --no-fund --silent; \
	fi

test: install-dev system-deps node-deps lint
	$(BIN)/pytest -n 3 --dist loadfile

# Full Autobahn|Testsuite run (sections 1-7, 9, 10, 12, 13) against
# examples/echo_server.py; reports land in reports/conformance/.
conformance: install-dev
	$(BIN)/python -m tools.conformance --all --outdir reports/conformance

# `make bench`: bench-core then bench-scaleout, within 15 minutes on a 2-core
# machine (each keeps to a time budget: 610 s and 255 s); needs Node.js and the
# local PostgreSQL and Redis. Writes docs/benchmarks.md, docs/img/*.png and the
# generated section of docs/scaling.md. `make bench BENCH_ARGS=--quick` is a
# 3-minute smoke run into reports/bench/. Push against polling (about 17
# minutes alone) is `make bench-transports`.
BENCH_ARGS ?=
bench: bench-core bench-scaleout

# hubbub against Node ws and picows (seed mode; websockets, aiohttp with
# --servers) and Node socket.io (chat mode), same generator, same run:
# saturation, steady rates, join and reconnect storms, handshakes (docs/benchmarks.md).
bench-core: install-bench node-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Push vs polling (docs/push-vs-polling.md; about 17 minutes, 3 with --quick).
bench-transports: install-bench
	$(BIN)/hubbub bench --transports --json reports/bench/transports.json $(if $(filter --quick,$(BENCH_ARGS)),--quick --markdown reports/bench/transports.md --plot reports/bench/img,--markdown docs/push-vs-polling.md --plot docs/img)

# --workers 2 against one worker, and the Redis hop (docs/scaling.md; needs the
# local PostgreSQL and Redis). Exits non-zero when a run reports errors.
bench-scaleout: install-bench
	$(BIN)/python bench/scaleout.py $(if $(filter --quick,$(BENCH_ARGS)),--quick --markdown reports/bench/scaleout.md,--docs docs/scaling.md) --json reports/bench/scaleout.json

# The fuzz properties of tests/fuzz, 50x longer than in `make test`
# (FUZZ_ARGS="--examples-scale 200 --seed 1" for a longer, repeatable run).
FUZZ_ARGS ?=
fuzz: install-dev
	$(BIN)/python -m tools.fuzz $(FUZZ_ARGS)

# Mixed load with misbehaving clients against `hubbub serve` (default 10 minutes);
# asserts no loss, bounded latency, flat RSS; writes reports/soak.json.
SOAK_DURATION ?= 600
soak: install
	$(BIN)/python -m tools.soak --duration $(SOAK_DURATION) --json reports/soak.json

clean:
	rm -rf $(VENV) reports .pytest_cache
