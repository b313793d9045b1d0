# Everything installs itself: a fresh machine needs only python3 (3.10+) and make.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench peer-check system-deps venv

venv: $(VENV)/.installed

# torch first, pinned: it is the CPU wheel this machine carries; a looser spec
# would download a multi-GB CUDA build. The package then finds it satisfied.
$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

# Quick start 1: align a simulated tilt series in a new Scipion project.
demo: venv
	$(PY) -m tiltxcorr_scipion.demo

lint: venv
	$(PY) -m ruff check tiltxcorr_scipion tests benchmarks

# Quick start 2: the whole test suite (lint, engine, Scipion protocol, queue, GUI).
test: venv system-deps lint
	$(PY) -m pytest tests -q

bench: venv
	$(PY) -m pip install -q -e '.[bench]' --config-settings editable_mode=compat
	$(PY) benchmarks/bench_engine.py

# torch-tiltxcorr 0.6.0's own shift tests against our tiltxcorr (import swap). Needs the
# network once (pip download of its sdist), hence not part of `make test`.
peer-check: venv
	$(PY) -m pip install -q -e '.[peer]' --config-settings editable_mode=compat
	$(PY) benchmarks/peer_check.py
