# Two commands on a fresh machine:
#   make demo   - the quick start on the embedded defaults
#   make test   - install what the tests need (system packages included) and run the whole suite

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint system-deps venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu,dev,docker]'
	touch $@ $(VENV)/.installed-run

venv: $(VENV)/.installed-dev

demo: $(VENV)/.installed-run
	$(PY) scripts/demo.py

system-deps:
	bash scripts/install-system-deps.sh

test: system-deps $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache
