# The README's commands. Everything a developer or CI needs goes through here.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
VENV_AF2 := .venv-af2
PYTEST_ARGS ?=

.PHONY: help install install-airflow2 lock up test test-airflow2 test-celery test-unit lint format clean

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"

# --compile-bytecode: every Airflow task is a new process; without .pyc files (e.g. under
# PYTHONDONTWRITEBYTECODE=1) each one recompiles Airflow and pydantic-ai, ~2x its start-up CPU.
$(VENV)/.installed: $(UV) requirements/airflow3.lock pyproject.toml
	$(UV) venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip install -q --compile-bytecode -p $(VENV)/bin/python -r requirements/airflow3.lock
	$(UV) pip install -q -p $(VENV)/bin/python --no-deps -e .
	touch $@

$(VENV_AF2)/.installed: $(UV) requirements/airflow2.lock pyproject.toml
	$(UV) venv -q --allow-existing --python $(PYTHON) $(VENV_AF2)
	$(UV) pip install -q --compile-bytecode -p $(VENV_AF2)/bin/python -r requirements/airflow2.lock
	$(UV) pip install -q -p $(VENV_AF2)/bin/python --no-deps -e .
	touch $@

install: $(VENV)/.installed ## .venv: locked Airflow 3.3 stack + this provider (editable) + dev tools

install-airflow2: $(VENV_AF2)/.installed ## .venv-af2: the same on Airflow 2.11

lock: $(UV) ## re-resolve both dependency locks from pyproject.toml
	$(UV) pip compile -q --python-version 3.11 pyproject.toml requirements/airflow3.in \
	    --extra dev --extra ssh --extra celery --extra data --extra charts -o requirements/airflow3.lock
	$(UV) pip compile -q --python-version 3.11 pyproject.toml requirements/airflow2.in \
	    --extra dev --extra ssh --extra celery --extra data --extra charts -o requirements/airflow2.lock

up: install ## Airflow standalone with this provider and dags/ on http://localhost:8080
	$(VENV)/bin/python scripts/airflow_up.py

test: install ## the whole suite on Airflow 3.3 (unit + dag.test + e2e)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-unit: install ## the suite without the slow e2e tests
	$(VENV)/bin/python -m pytest -m "not e2e" $(PYTEST_ARGS)

test-celery: install ## the e2e suite on CeleryExecutor: PostgreSQL metadata DB, Redis broker, 2 workers
	ALP_E2E_EXECUTOR=celery $(VENV)/bin/python -m pytest -m e2e --ignore=tests/e2e/test_make_up.py \
	    --ignore=tests/e2e/test_cost_page_ui.py $(PYTEST_ARGS)

test-airflow2: install-airflow2 ## the whole suite on Airflow 2.11
	$(VENV_AF2)/bin/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy on the package
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove virtualenvs and local Airflow state
	rm -rf $(TOOLS) $(VENV) $(VENV_AF2) .airflow .pytest_cache
