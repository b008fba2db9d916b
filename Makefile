# siloguard: `make demo`, `make test`.
#
# Both create .venv when it is missing and install the project into it once;
# pip runs again only when pyproject.toml changes (stamp file .venv/.installed).
# torch is installed first and pinned: on these machines pip's find-links holds
# a CPU wheel of torch 2.13.0, while a looser request pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
PYTEST_ARGS ?=

export FLWR_TELEMETRY_ENABLED := 0

.PHONY: demo test venv clean

demo: $(STAMP)
	$(BIN)/siloguard demo

# pytest exits 5 when it collected no tests: that is a failure, say so.
test: $(STAMP)
	@rc=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): nothing ran" >&2; fi; \
	exit $$rc

# Internal: the virtual environment with the project installed (editable, with dev extras).
venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[dev]'
	touch $@

# Outputs and caches; the virtual environment stays (rm -rf .venv to rebuild it).
clean:
	rm -rf runs .pytest_cache build dist src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
