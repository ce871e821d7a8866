# avmech: the two commands a new user needs are `make figures` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.14.1 torchvision==0.29.1
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
# glibc's malloc gives every tensor over 32 MB (a planted model's unembedding, its gradient, its
# optimiser state: 39 MB each) fresh pages from the kernel and hands them back when freed, so a
# training step page-faulted 270 MB anew: a quarter of its time in the kernel. Served from the heap
# and kept, the same build trains 25% faster to the same bits (README, "Planted pathways").
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: install test test-unit test-slow figures bench clean

# qwen-agent ships the real Qwen2.5 vocabulary (qwen.tiktoken) that the embedded models use;
# it is read, never imported, so none of its dependencies are installed.
$(BIN)/avmech: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps qwen-agent==0.0.34
	touch $(BIN)/avmech

install: $(BIN)/avmech

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q -m unit

test-slow: install
	$(BIN)/python -m pytest -q -m slow

figures: install
	$(BIN)/avmech figures

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf results paper_figures/out
