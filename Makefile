# The two commands of the README: `make lab` opens the course, `make test` runs every test.
# Both create the virtual environment in .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test quick lint format clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

# --allow-root only when run as root (containers, CI machines): Jupyter refuses root otherwise.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

test: $(STAMP) lint
	$(BIN)/python -m pytest

# For contributors: lint and the fast unit tests, without notebooks, the browser or slow tests.
quick: $(STAMP) lint
	$(BIN)/python -m pytest tests -m "not slow" --ignore=tests/test_browser.py -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV)
