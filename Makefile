# The README's two commands: `make serve` (set up and run) and `make test` (set up and run every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint test-fast bench instructions fairness ledger-cost soak audit system-deps clean

serve: $(STAMP)
	$(BIN)/sluice serve

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest

# Style (ruff.toml) and types (setup.cfg's [mypy]): part of `make test`, so CI fails on either.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Unit tests only: no gunicorn, Redis, nginx or engine.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# The gateway against its references (docs/benchmarks.md), then the usage ledger's cost (docs/usage.md).
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(MAKE) ledger-cost

# Instructions per request of the app in-process, by feature, counted by callgrind: the same on a
# noisy machine (docs/benchmarks.md, "What each feature costs"). Needs valgrind. A few minutes.
instructions: $(STAMP) system-deps
	$(BIN)/python -m bench.instructions --out docs/benchmarks/instructions.json $(BENCH_ARGS)

# Replica capacity shared by the fair queue against FIFO, on the simulator (docs/scaling.md). A few minutes.
fairness: $(STAMP) system-deps
	$(BIN)/python -m bench.fairness $(BENCH_ARGS)

# The usage ledger's CPU cost per request: SLUICE_LEDGER off and on, rounds alternated (docs/usage.md).
ledger-cost: $(STAMP) system-deps
	$(BIN)/python -m bench.ledger_cost --rounds 4 --duration 6 --out docs/usage/ledger-cost.json $(BENCH_ARGS)

# 50,000 mixed requests through one worker, keys and limits in Redis: memory must settle, fds come
# back (docs/reliability.md).
# Minutes, not seconds: not part of `make test`.
soak: $(STAMP)
	$(BIN)/python -m bench.soak

# Known vulnerabilities in the pinned packages (docs/security.md, "Dependency audit"); --strict:
# a package the vulnerability service cannot look up fails the audit instead of passing unchecked.
audit: $(STAMP)
	$(BIN)/pip-audit --requirement requirements.txt --no-deps --strict --progress-spinner off

$(STAMP): requirements.txt setup.cfg
	@echo "==> creating the gateway's environment in $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# From Debian's packages, for the tests that start or run them for real: Redis, nginx, openssl
# (the nginx tests' throwaway certificate), headless Chromium (renders /docs) and systemd's
# systemd-analyze (verifies the units in deploy/systemd/) and PostgreSQL's server (the ledger's tests start
# a throwaway cluster with its initdb; as root they run it as the package's `postgres` user).
SYSTEM_COMMANDS := redis-server nginx openssl chromium systemd-analyze /usr/lib/postgresql/15/bin/initdb
SYSTEM_PACKAGES := redis-server nginx openssl chromium systemd postgresql
system-deps:
	@missing=; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "==> missing:$$missing; installing $(SYSTEM_PACKAGES) (apt)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
