# sparsemm: `make demo` runs the main job, `make test` runs every test.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench bench-quick bench-record record check-corpus clean strace browser

# The compiled model core (setup.py, sparsemm/_compiled.py) is rebuilt when its sources change.
CORE   := $(shell $(PYTHON) -c "import ast; t = ast.parse(open('src/sparsemm/_compiled.py').read()); \
            print(*['src/' + m.replace('.', '/') + '.py' for n in t.body if isinstance(n, ast.Assign) \
            and getattr(n.targets[0], 'id', '') == 'COMPILED_MODULES' for m in ast.literal_eval(n.value)])")
# The tests run again with the pure-Python core (SPARSEMM_PURE_PYTHON=1): at least these.
PURE_TESTS := tests/test_model_corpus.py tests/test_model_differential.py tests/test_designs_differential.py \
              tests/test_vma_tree.py tests/test_maple.py tests/test_model_pagetable.py tests/test_compiled.py

$(STAMP): pyproject.toml setup.py src/sparsemm/efence/efence.c src/sparsemm/_compiled.py $(CORE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsemm demo

# sparsemm trace records system calls with Debian's strace: install it where it is missing.
strace:
	@command -v strace >/dev/null 2>&1 || { echo "installing strace (sparsemm trace needs it)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y strace || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y strace; }; }

# analyze --html is tested in a real headless browser: Debian's chromium, installed where it is
# missing (without recommends). Without a package manager or network the browser tests skip,
# saying why; nothing else needs it.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "installing chromium (the analyze --html tests open the page in it; about a minute)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
	  || echo "could not install chromium: the browser tests will skip"; }

# SPARSEMM_REQUIRE_STRACE: the trace tests fail, never skip, if strace is still missing.
# One line per test file with its progress, then the skips and failures with their reasons
# (-ra, pyproject.toml) and the 20 slowest tests. PYTEST_ARGS="-m 'not slow'" skips the slow ones.
PYTEST_ARGS ?=
test: $(STAMP) strace browser
	SPARSEMM_REQUIRE_STRACE=1 $(BIN)/python -m pytest --durations=20 --durations-min=5 $(PYTEST_ARGS)
	SPARSEMM_PURE_PYTHON=1 $(BIN)/python -m pytest -q $(PURE_TESTS)

# Benchmarks write to out/bench/ (untracked); only bench-record rewrites bench/results_*.md
# and bench/RESULTS.md. Qiling (optional): pip install -e '.[qiling]' or QILING_PYTHON=...
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_all.py

bench-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_all.py --quick

bench-record: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_all.py --record

# Re-run the conformance corpus on this kernel and store the records it gives.
record: $(STAMP)
	$(BIN)/sparsemm record tests/conformance

# Compare the stored records with this kernel without writing.
check-corpus: $(STAMP)
	$(BIN)/sparsemm record --check tests/conformance

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
	rm -f src/*__mypyc.*.so src/sparsemm/model/*.so src/sparsemm/_compiled_sources.json
