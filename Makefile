# The two commands of the README: `make demo` and `make test`. Both create .venv/
# with the full stack on first use (scripts/setup_env.sh; the mmcv build takes about
# 20 minutes on 2 cores the first time, seconds afterwards).
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests
