# `make lab` launches JupyterLab on the lessons; `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: lab test lock clean

$(READY): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Jupyter refuses to run as root unless told; containers and cloud machines often are root.
AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(READY)
	cd notebooks && ../$(BIN)/jupyter lab --ip=127.0.0.1 $(AS_ROOT) 00_lab.ipynb

test: $(READY)
	$(BIN)/python -m pytest

# Re-pin after changing pyproject.toml: installs the newest allowed versions and records them.
lock:
	rm -rf /tmp/labkit-lock && $(PYTHON) -m venv /tmp/labkit-lock
	/tmp/labkit-lock/bin/pip install --quiet -e '.[test]'
	/tmp/labkit-lock/bin/pip freeze --exclude-editable | grep -v '^labkit' > requirements.lock

clean:
	rm -rf $(VENV) build
