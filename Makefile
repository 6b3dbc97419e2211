# Two commands on a fresh machine: `make demo` and `make test`; `make docs` builds the documentation site.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test docs install clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[test]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(VPY) -m pip install -q -e ".[test,docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

# Trains (or finishes training) the laptop preset on alanine dipeptide, then evaluates it
# against the reference shipped with the package, in the same process (which reuses the
# compiled sampler; `openmm-cmt evaluate runs/demo` evaluates again).
demo: $(STAMP)
	if [ -f runs/demo/checkpoint.pt ]; then resume=--resume; else resume=; fi; \
	$(VENV)/bin/openmm-cmt train alanine-dipeptide --preset laptop --out runs/demo $$resume

test: $(STAMP)
	$(VPY) -m pytest -q tests

# The documentation site, warnings as errors; open docs/_build/html/index.html.
docs: $(DOCS_STAMP)
	$(VPY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build
