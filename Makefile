# The README's two commands: `make serve` (set up and run) and `make test` (set up and run every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast bench system-deps clean

serve: $(STAMP)
	$(BIN)/sluice serve

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# Unit tests only: no gunicorn, Redis, nginx or engine.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

$(STAMP): requirements.txt setup.cfg
	@echo "==> creating the gateway's environment in $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Redis and nginx from Debian's packages, for the tests that start them for real.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v nginx >/dev/null; then \
		echo "==> installing redis-server and nginx (apt)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server nginx; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
