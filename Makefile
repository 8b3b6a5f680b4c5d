# Two commands for a fresh machine with Python 3.11+ and pip:
#   make search   set everything up in .venv/ and run the main job (a search on the built-in SYNTHETIC data)
#   make test     set everything up in .venv/ and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup search test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

search: setup
	$(BIN)/python -m cxr_tune.search --space wide $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
