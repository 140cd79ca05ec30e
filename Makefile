# Two commands on a fresh machine (Python >= 3.10):
#   make main   installs into .venv and runs the built-in study (train/load digits UNet, FID-vs-NFE sweep, report)
#   make test   installs into .venv and runs the test suite (< 15 min on 2 CPU cores)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: install main test test-slow clean

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

clean:
	rm -rf outputs multirun .pytest_cache
