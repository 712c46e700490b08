# soxs_mflat — two commands do everything on a fresh machine:
#   make demo   simulate a SOXS NIR flat set and reduce it (products in demo/out)
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOXSPIPE_VENV := .venv-soxspipe
DEMO := demo

.PHONY: demo test fuzz interop lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/soxspipe simulate $(DEMO)/raw --instrument=soxs --arm=NIR
	$(BIN)/soxspipe mflat $(DEMO)/raw/*.sof -o $(DEMO)/out -s $(DEMO)/raw/soxspipe.yaml
	$(BIN)/soxspipe simulate score $(DEMO)/out/products/soxs_mflat $(DEMO)/raw/truth

test: $(STAMP)
	$(BIN)/ruff check soxs_mflat tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not interop" -q

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/test_fuzz.py

$(SOXSPIPE_VENV)/bin/soxspipe:
	PYENV_VERSION=3.12.1 python3.12 -m venv $(SOXSPIPE_VENV)
	$(SOXSPIPE_VENV)/bin/python -m pip install --quiet soxspipe==0.19.0 six pymysql

interop: $(STAMP) $(SOXSPIPE_VENV)/bin/soxspipe
	$(BIN)/python -m pytest -m interop -v -s

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
