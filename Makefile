# pricectl: `make run` starts the main job, `make demo` the same with a local (simulated)
# exchange, no network needed; `make test` runs every check.
# Both create the virtual environment (.venv) when it is missing.

PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
# System packages the test suite needs (real Redis processes and sentinels, a real
# headless browser, a real terminal for `tail`'s live table).
SYSTEM_PACKAGES := redis-server redis-sentinel chromium tmux

.PHONY: run demo test lint typecheck pytest bench clean system-packages venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/pricectl serve $(ARGS)

# Live prices with no network: the local exchange runs inside serve, and the dashboard
# says the prices are simulated. `make demo ARGS="--port 8080"` passes options on.
demo: $(STAMP)
	$(BIN)/pricectl serve --simulate $(ARGS)

# Installs what is missing with apt-get when running as root; otherwise prints the command.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 2; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check pricectl benchmarks tests
	$(BIN)/ruff format --check pricectl benchmarks tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-packages
	$(BIN)/pytest -q -p no:cacheprovider

test: system-packages lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
