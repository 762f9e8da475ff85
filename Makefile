# Two commands do all of the set-up on a fresh machine:
#   make run    create .venv, install vSL, run the example policies
#   make test   create .venv, install vSL and its test extras, run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vsl lint examples
	$(BIN)/vsl run examples/hello.vsl

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/interp.py
	$(BIN)/python bench/dns_cache.py

lint: $(STAMP)
	$(BIN)/vsl lint examples tests/lang/modules

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
