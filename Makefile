# Every target does its own set-up: a fresh machine needs only Python 3.10+, pip and Debian's apt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/tibetan-demo

.PHONY: test lint typecheck unit fuzz sweep system-deps demo clean

# espeak-ng synthesizes the speech of the Tibetan benchmark.
system-deps:
	@command -v espeak-ng >/dev/null || { \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng >/dev/null; \
	  else echo "install espeak-ng with your package manager" >&2; exit 1; fi; }

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch 2.13.0 lies on this machine's disk; naming it first keeps pip
	# from pulling a multi-GB CUDA build to satisfy the package's `torch>=2.4`.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,plot,index,tibetan,emoji,digits,stitch]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/pytest -q

test: lint typecheck unit

# The property tests of tests/test_fuzz.py and tests/test_fuzz_cli.py (the command line) with
# over 10,000 cases in all (a few hundred in `unit`).
fuzz: $(STAMP)
	VALLAYZ_FUZZ=1 $(BIN)/pytest -q -s tests/test_fuzz.py tests/test_fuzz_cli.py

# Hostile inputs across every command and the Python writers and loaders: a markdown table of
# input | expected | got, and the count of mismatches (RELIABILITY.md holds its last table).
sweep: $(STAMP)
	$(BIN)/python scripts/hostile_sweep.py

# The main job on a CPU-sized subset of the corpus (8,000 pairs, 800 with speech).
demo: $(STAMP) system-deps
	$(BIN)/vallayz bench tibetan --out $(DEMO_OUT) --pairs 8000 --speech 800 --max-steps 300 --quiet

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
