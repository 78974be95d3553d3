# EyeTriage: every target bootstraps .venv on a fresh machine (Python 3.11 + pip only).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench demo demo-headless demo-model package lint clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "EyeTriage needs Python 3.11 (found %s); set PYTHON=/path/to/python3.11" % sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,cluster]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/eyetriage

demo-headless: $(STAMP)
	$(VENV)/bin/eyetriage demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

demo: $(STAMP)
	$(VENV)/bin/eyetriage gui --demo

# The bundled demo model: trained on synthetic fundus images only (about 10 minutes on 2 cores).
demo-model: $(STAMP)
	$(PY) -c "from engine.demo import build_demo_model; build_demo_model('resources/demo-model.safetensors')"

lint: $(STAMP)
	$(VENV)/bin/ruff check engine desktop tests benchmarks
	$(VENV)/bin/ruff format --check engine desktop tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

# One-folder PyInstaller bundle: dist/eyetriage/eyetriage (see packaging/README.md).
package: $(STAMP)
	BUILD_PYTHON=$(PY) bash packaging/build.sh

clean-venv:
	rm -rf $(VENV)
