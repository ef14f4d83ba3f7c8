# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs medxfer with its dev and onnx extras.
# `make test` first builds the documentation (`make docs`, offline, --strict: a broken link fails).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf demo-output
	$(BIN)/python -m medxfer demo --out demo-output

# The site goes to build/site (ignored); the CLI, configuration and preset references are generated
# from the code by docs/hooks.py during the build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir build/site

test: $(STAMP) docs
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-output .pytest_cache build/site
