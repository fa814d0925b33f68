# Two commands do all the set-up on a fresh machine:  make demo   and   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ONNX Runtime's package: gpu (onnxruntime-gpu, which also runs on the CPU) or cpu (onnxruntime, the faster 4-bit
# MatMul on a CPU-only box): `make test ORT=cpu`. One per environment; switching needs a fresh .venv.
ORT ?= gpu
# pip's chatter (progress, index and build-backend warnings, the root-user and new-version notices) is nothing a
# user can act on here; its errors still print.
PIP = $(BIN)/pip install -qq --disable-pip-version-check --root-user-action=ignore

.PHONY: setup test demo

# torch first and pinned: the CPU wheel on local disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@echo "installing into $(VENV)/: a few minutes, most of it torch and onnxruntime"
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[build,quant,nvidia,serve,test,$(ORT)]"
	touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -ra

demo: setup
	$(BIN)/python build.py examples/eve-tiny --out out/eve-tiny --force
	$(BIN)/python -m runtime out/eve-tiny --image examples/images/shapes.png --prompt "What colour is the shape?"
