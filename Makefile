# hmic — set-up and pipelines. Every target installs what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HMIC   := $(BIN)/hmic
STAMP  := $(VENV)/.installed

.PHONY: install test demo table1 table1-synth clean help

help:
	@echo "make demo          fresh clone -> stand-in dataset, Table-1-shaped table, predict a 60-s song"
	@echo "make test          install and run the test suite"
	@echo "make table1        the paper's full protocol on the real OpenMIC-2018 with pretrained CNN14"
	@echo "make table1-synth  the same protocol on the stand-in dataset with the light backbone"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps 'tinysoundfont==0.3.7'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
