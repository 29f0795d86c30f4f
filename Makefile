# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test bench quick-bench dev-up install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/writebus demo

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/writebus bench --json bench/results.json

quick-bench: $(STAMP)
	$(BIN)/writebus bench --quick --json /tmp/writebus-bench-quick.json

dev-up: $(STAMP)
	$(BIN)/writebus dev up

clean:
	rm -rf $(VENV) .pytest_cache
