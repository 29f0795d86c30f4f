# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test bench quick-bench dev-up install clean lint typecheck

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/writebus demo

# The dashboard's browser test drives Debian's headless Chromium; install it when missing.
BROWSER = /usr/bin/chromium
$(BROWSER):
	@command -v apt-get >/dev/null || { echo "install chromium and chromium-driver"; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test: $(STAMP) $(BROWSER)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/writebus bench --json bench/results.json

quick-bench: $(STAMP)
	$(BIN)/writebus bench --quick --json /tmp/writebus-bench-quick.json

dev-up: $(STAMP)
	$(BIN)/writebus dev up

# mypy sees the installed layout (writebus.client, writebus.bus) through a tree of links.
TYPECHECK_TREE = build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/writebus
	cp -r writebus/. $(TYPECHECK_TREE)/writebus/
	ln -s $(CURDIR)/client $(TYPECHECK_TREE)/writebus/client
	ln -s $(CURDIR)/bus $(TYPECHECK_TREE)/writebus/bus
	cd $(TYPECHECK_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p writebus

lint: $(STAMP)
	$(BIN)/ruff check client bus writebus tests bench examples

clean:
	rm -rf $(VENV) .pytest_cache
