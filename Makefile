# Two commands do everything on a fresh machine with python3.11 + pip:
#   make demo   -- create .venv, install, run the end-to-end demo
#   make test   -- create .venv, install, run the test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-slow lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m ganinv.demo

test: venv
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: venv
	$(BIN)/python -m pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

lint: venv
	$(BIN)/ruff check ganinv tests train.py invert.py

bench: venv
	$(BIN)/python experiments/bench/speed.py

clean:
	rm -rf $(VENV) outputs multirun wandb lightning_logs
