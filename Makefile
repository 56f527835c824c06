# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/bodypart: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/bodypart

demo: setup
	ulimit -s 32768 2>/dev/null; $(BIN)/bodypart demo -o out/demo

test: setup
	ulimit -s 32768 2>/dev/null; $(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf out build *.egg-info
