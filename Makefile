# Two commands on a fresh machine (Python >= 3.10):
#   make main   installs into .venv and runs the built-in study (train/load digits UNet, FID-vs-NFE sweep, report)
#   make test   installs into .venv and runs the test suite (< 15 min on 2 CPU cores)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: install main test test-slow mutate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

main: install
	$(VENV)/bin/diffode main

# pytest exits 5 when it collects nothing: that is a failure too, said out loud.
test: install
	@$(PY) -m pytest -q -ra --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-slow: install
	$(PY) -m pytest -q -ra -m slow

# Mutation testing, not part of CI (hours on 2 cores; README.md, "Testing"). Results are kept in mutants/, so a
# re-run tests only mutants whose function changed; `rm -rf mutants` first for a full measurement.
# MUTANTS='diffode.core.grids.*' re-runs just those; MUTATE_JOBS sets the parallel workers.
MUTANTS     ?=
MUTATE_JOBS ?= 2
mutate: install
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q -e ".[dev,mutate]"
	-OMP_NUM_THREADS=1 nice -n 10 $(PY) -m mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(PY) tests/mutation/score.py

clean:
	rm -rf outputs multirun .pytest_cache
