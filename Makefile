# Two commands: `make demo` and `make test`. Both create .venv if missing and reinstall only when
# pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.thinwire-installed

.PHONY: demo test test-fast bench clean venv image

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/thinwire simulate --config configs/demo.toml --force

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not docker" tests

# The docker image, with `docker compose` (v2) or `docker-compose` (v1); offline base when the
# registry is unreachable (deploy/build-image.sh).
image:
	deploy/build-image.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
