# napari-stexp: `make demo` opens napari with the plugin and sample data; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stexp-installed
# torch/torchvision are pinned to what this kind of machine serves from disk (CPU or CUDA build).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench system-deps screenshot clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,spatialdata]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

# With no display, run under Xvfb so napari's Qt canvas works headless.
RUN_DISPLAY = $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")

demo: $(STAMP) system-deps
	$(RUN_DISPLAY) $(VENV)/bin/napari-stexp demo

screenshot: $(STAMP) system-deps
	$(RUN_DISPLAY) $(VENV)/bin/napari-stexp demo --screenshot docs/images/demo.png

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check src tests benchmarks
	$(RUN_DISPLAY) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	for b in benchmarks/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
