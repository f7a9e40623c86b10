# archc developer entry points: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
# The only torch to install: a CPU wheel that pip finds through the machine's
# configured find-links. Any other choice downloads gigabytes of CUDA packages.
TORCH_PIN := torch==2.13.0
PIP := $(BIN)/python -m pip -q

.PHONY: venv system-deps demo test clean gpu-wheels

venv: system-deps $(STAMP)

# Debian's graphviz provides `dot`, which the diagram backend renders with.
system-deps:
	@command -v dot >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) || \
	  echo "WARNING: could not install graphviz (dot); diagram rendering will be unavailable" >&2

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PIN)
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(PIP) install -c $(VENV)/constraints.txt -e ".[test]"
	touch $@

demo: venv
	$(BIN)/archc check specs/models/resnet18.arch
	$(BIN)/python -m archc.demo specs/models/resnet18.arch
	$(BIN)/archc summary specs/models/resnet18.arch --depth 1
	$(BIN)/archc render specs/models/resnet18.arch -o out/resnet18.svg
	@echo "diagram: out/resnet18.svg"

# Two workers on two cores, each torch with one thread: more threads than cores makes OpenMP's
# spinning threads wait on each other (a small training test measured 6 s alone, 38 s so).
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n 2 tests

# For a session lent a GPU machine (bench/gpu_check.sh): the wheels of archc's dependencies that
# the device image lacks, for its Python 3.12 on x86-64, into .whl/ (ignored), carried there.
GPU_WHEELS := lark==1.3.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 graphviz==0.21
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
