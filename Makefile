# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv when it is missing and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One matching pair, installed before everything else so no resolver picks
# another torch. On Linux x86_64 this is the CUDA build; elsewhere the
# platform's own build of the same versions.
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
# Offline and private: the embedded model needs no hub.
RUN_ENV := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False

.PHONY: run test lint install install-test browser postgres clean

run: $(VENV)/.installed
	$(RUN_ENV) $(VENV)/bin/atelier serve

test: lint browser postgres
	$(RUN_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# The formatter owns the layout and the linter the rest (pyproject.toml [tool.ruff]); `ruff format .` fixes the first.
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e . $(TORCH_PAIR)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]' $(TORCH_PAIR)
	touch $@

# Playwright drives the system's Chromium; its own browser download is not used.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium for the browser tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

# The storage tests start a throwaway PostgreSQL server of their own from its binaries.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "Installing Debian's postgresql for the storage tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q postgresql; }

clean:
	rm -rf $(VENV) build *.egg-info
