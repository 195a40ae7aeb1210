# The two commands of the README: `make demo` and `make test`. Both create .venv/
# with the full stack on first use (scripts/setup_env.sh; the mmcv build takes about
# 20 minutes on 2 cores the first time, seconds afterwards).
# `make test-compat` runs the suite on the compatibility leg: .venv-torch21/ with
# torch 2.1.2 (requirements/torch21.txt) and its own mmcv build.
# `make lint` checks the code with ruff (pyproject.toml); `make docs` builds the
# documentation site into docs/_build/html, warnings as errors (-E: every page re-read,
# so a warning of an unchanged page still fails the build).
PY := .venv/bin/python
COMPAT_VENV := .venv-torch21

.PHONY: setup demo test setup-compat test-compat lint docs
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests

setup-compat:
	@MMSLORA_VENV=$(COMPAT_VENV) MMSLORA_TORCH_REQUIREMENTS=requirements/torch21.txt \
		bash scripts/setup_env.sh

test-compat: setup-compat
	$(COMPAT_VENV)/bin/python -m pytest tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

docs: setup
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html
