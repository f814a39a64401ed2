# Two commands do all set-up: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv and installs into it on first use; later runs skip the install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOOK := $(VENV)/.torchvision-hook

# Pins torch/torchvision for every pip call, including sam2's isolated sdist build.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export SAM2_BUILD_CUDA := 0

.PHONY: demo test lint bench install

install: $(HOOK)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[all,dev]"
	# Data only: the quokka photo and its polygon, read from the installed files (imgaug is never imported).
	$(PY) -m pip install --no-deps imgaug==0.4.0
	touch $(STAMP)

# The registry's torchvision is a CUDA build whose ops do not load under the CPU torch: a .pth in the
# venv applies tomeplug's fallback on the first `import torchvision` (tomeplug/_torchvision_hook.py).
# Rewritten whenever the venv is (re)installed or the hook changes.
$(HOOK): $(STAMP) tomeplug/_torchvision_hook.py
	$(PY) -m tomeplug._torchvision_hook
	touch $(HOOK)

demo: $(HOOK)
	$(PY) -m tomeplug_eval.demo

test: $(HOOK)
	$(PY) -m pytest -q

lint: $(HOOK)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(HOOK)
	$(PY) bench/encoder_speed.py
