# Quickstart targets. The first call creates .venv/ and installs the package with what the tests and
# the demo need; later calls reuse it (the stamp is rebuilt when setup.cfg or constraints change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mspider-installed

.PHONY: demo test install clean-venv

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mspider-jax needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,text,dev]'
	touch $(STAMP)

install: $(STAMP)

# The benchmark on the offline mini zoo with the shipped ranker (data/minizoo_ranker): extracts the
# targets' features into ~/.cache/mspider_jax at first use, prints the summary table, writes
# runs/demo/report.md (a rerun reads the cached scores).
demo: $(STAMP)
	$(VENV)/bin/mspider benchmark --config configs/benchmark_minizoo.py --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
