# sparsemm: `make demo` runs the main job, `make test` runs every test.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench record check-corpus clean

$(STAMP): pyproject.toml setup.py src/sparsemm/efence/efence.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsemm demo

# One line per test file with its progress, then the skips and failures with their reasons
# (-ra, pyproject.toml) and the 20 slowest tests. PYTEST_ARGS="-m 'not slow'" skips the slow ones.
PYTEST_ARGS ?=
test: $(STAMP)
	$(BIN)/python -m pytest --durations=20 --durations-min=5 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_all.py

# Re-run the conformance corpus on this kernel and store the records it gives.
record: $(STAMP)
	$(BIN)/sparsemm record tests/conformance

# Compare the stored records with this kernel without writing.
check-corpus: $(STAMP)
	$(BIN)/sparsemm record --check tests/conformance

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
