# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo bench clean

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[host,device,dev]'
	touch $(STAMP)

# tflite-runtime 2.14 (what older boards run) needs numpy<2, so it lives in its own folder; the
# tests put it first on PYTHONPATH in a subprocess to check our .tflite files run there unchanged.
TFLRT := $(VENV)/tflite-runtime-2.14
$(TFLRT)/.stamp: $(STAMP)
	$(PY) -m pip install -q --target $(TFLRT) tflite-runtime==2.14.0 'numpy<2'
	touch $@

install: $(STAMP)

test: $(STAMP) $(TFLRT)/.stamp
	EDGETAILOR_TFLITE_RUNTIME_PATH=$(abspath $(TFLRT)) $(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/edgetailor demo

bench: $(STAMP)
	$(PY) -m bench.compression

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
