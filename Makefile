# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install lint browser test demo bench bench-full clean

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[host,device,dev]'
	touch $(STAMP)

# A second, board-like environment: what `deploy/install-agent.sh` puts on a board without an
# ai-edge-litert wheel -- tflite-runtime 2.14 with numpy<2, paho-mqtt, psutil, no torch. The tests run
# real agents in it, and check that our .tflite files run there unchanged.
BOARD_VENV := .venv-board
BOARD_STAMP := $(BOARD_VENV)/.installed-stamp
$(BOARD_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BOARD_VENV)
	$(BOARD_VENV)/bin/python -m pip install -q --upgrade pip
	$(BOARD_VENV)/bin/python -m pip install -q 'numpy<2' tflite-runtime==2.14.0 'paho-mqtt>=2,<3' \
		psutil msgspec cryptography
	touch $(BOARD_STAMP)

# Debian's Chromium for the browser tests (tests/e2e/dashboard): Playwright drives it and never
# downloads a browser of its own. Installed here when it is missing and this is root with apt;
# elsewhere the browser tests skip and say why, except in CI (CI set), where they fail.
CHROMIUM ?= /usr/bin/chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "no $(CHROMIUM) and no root apt-get: the browser tests will skip (apt install chromium)"; \
	fi

install: $(STAMP)

DOCKERFILES := $(filter-out %.dockerignore,$(wildcard docker/Dockerfile.*))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint $(DOCKERFILES)
	$(VENV)/bin/shellcheck deploy/install-agent.sh deploy/uninstall-agent.sh

# Everything, the light-install test included (fresh venvs, pip from PyPI); locally, skip that
# one with: make test PYTEST_ARGS="-m 'not install'"
# The tests spend most of their time waiting on agents, brokers and subprocesses, so they run on
# PYTEST_WORKERS pytest-xdist workers (more than the cores). Each test file runs whole, in order, on
# one worker (--dist loadfile): module fixtures are built once, and a test may read what an earlier
# one of its file left (tests/e2e/test_search.py). One process: make test PYTEST_WORKERS=0
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 3
test: $(STAMP) $(BOARD_STAMP) lint browser
	EDGETAILOR_BOARD_PYTHON=$(abspath $(BOARD_VENV))/bin/python EDGETAILOR_CHROMIUM=$(CHROMIUM) \
		$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The whole loop, then the dashboard's address; `make demo DEMO_ARGS=--serve` keeps the service,
# agents and broker running (the dashboard open) until Ctrl-C.
DEMO_ARGS ?=
demo: $(STAMP)
	$(VENV)/bin/edgetailor demo $(DEMO_ARGS)

# Every benchmark and one table of goals (bench/__main__.py): quick settings in a few minutes,
# JSON under bench/results/quick/; `make bench-full` runs the README's settings into bench/results/.
bench: $(STAMP)
	$(PY) -m bench

bench-full: $(STAMP)
	$(PY) -m bench --full

clean:
	rm -rf $(VENV) $(BOARD_VENV) .pytest_cache build *.egg-info
