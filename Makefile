# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/openmm-cmt bench energy --system alanine-dipeptide --n 2000 --json runs/demo/bench_energy.json

test: $(STAMP)
	$(VPY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
