# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install lint test demo bench clean

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

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) $(BOARD_STAMP) lint
	EDGETAILOR_BOARD_PYTHON=$(abspath $(BOARD_VENV))/bin/python $(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/edgetailor demo

bench: $(STAMP)
	$(PY) -m bench.compression
	$(PY) -m bench.models --quick --out bench/results/models-quick.json

clean:
	rm -rf $(VENV) $(BOARD_VENV) .pytest_cache build *.egg-info
