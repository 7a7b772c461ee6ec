# slmops — make install | protos | test | test-fast | demo | lint | bench
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= agent,controller,foundry,olive,ray,dev
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export OLIVE_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install protos test test-fast demo lint format bench clean

install: $(VENV)/.installed protos

# torch first, pinned, so no other package pulls a newer (CUDA) build. On a machine without a GPU and without
# a local CPU wheel, set TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

protos: $(VENV)/.installed
	$(BIN)/python -m shared.protogen

test: install
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

test-fast: install
	$(BIN)/pytest -q -m "not slow"

demo: install
	$(BIN)/slmops demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/factory.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/telemetry.py

clean:
	rm -rf $(VENV) .cache .slmops shared/pb/slmops shared/pb/_STAMP
