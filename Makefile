# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow bench docs fashion-mnist chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,nifti,cluster]'
	touch $(STAMP)

# Fashion-MNIST (real images for the embedded dataset) comes from Debian's package.
fashion-mnist:
	@if ! ls $(FASHION_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Headless Chromium for the report's browser test (tests/report/test_browser.py). Best effort:
# where apt-get cannot install it, the test is skipped and says why.
chromium:
	@if ! command -v chromedriver >/dev/null 2>&1 || ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then \
		echo "installing Debian packages chromium and chromium-driver"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; } \
			|| echo "warning: could not install chromium; the browser test will be skipped"; \
	fi

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/pixcon demo --out runs/demo

test: $(STAMP) fashion-mnist chromium
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/loss.py
	$(PY) bench/train_step.py

docs: $(STAMP)
	$(PY) -m pixcon.config_reference > docs/config.md

clean:
	rm -rf $(VENV) runs .pytest_cache
