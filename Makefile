# The two set-up commands of the README: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output
SHARED ?= ../shared/data/KneeBones3Dify

.PHONY: venv demo demo-real test plans model model-any-contrast clean

venv: $(VENV)/.installed

# torch first, pinned, so that pip takes the local CPU wheel instead of a multi-GB CUDA build (setup.cfg
# only asks for a range, so that a torch already installed stays).
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: venv
	$(PY) -m kneeseg.demo --output $(DEMO_DIR)

# The real scan with the half-A / half-B protocol; SHARED may also be the Zenodo download's folder.
REAL_MINUTES ?= 60
demo-real: venv
	$(PY) -m kneeseg.demo --real $(SHARED) --train-minutes $(REAL_MINUTES) --output $(DEMO_DIR)_real

test: venv
	$(PY) -m ruff check kneeseg tests benchmarks
	$(PY) -m mypy kneeseg
	$(PY) -m pytest -q tests

# Regenerate the reference plans in plans/ (tests fail when they drift).
plans: venv
	$(PY) -m kneeseg.reference --write plans --shared $(SHARED)

# Train the built-in model on the whole scan (kneeseg/models/build.py); HOLDOUT: the summary JSON
# of a holdout benchmark run of the same recipe, budget and seed, for the model card's held-out figures;
# MACHINE_FROM: that run's kneesegPlans.json, to plan for the machine profile it recorded;
# ROBUSTNESS: that run's table of benchmarks/robustness_real.py --table, for the card's robustness section.
MODEL_MINUTES ?= 60
MODEL_SEED ?= 0
MODEL_BUILD = $(PY) -m kneeseg.models.build --shared $(SHARED) --train-minutes $(MODEL_MINUTES) --seed $(MODEL_SEED) $(if $(HOLDOUT),--holdout-summary $(HOLDOUT)) $(if $(MACHINE_FROM),--machine-from $(MACHINE_FROM)) $(if $(ROBUSTNESS),--robustness $(ROBUSTNESS))
model: venv
	$(MODEL_BUILD)

# Its any-contrast second reader (kneeseg/models/__init__.py), from a holdout run with -tr kneesegTrainerProtocols.
model-any-contrast: venv
	$(MODEL_BUILD) --trainer kneesegTrainerProtocols --output kneeseg/models/kneebones3dify_any_contrast

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_DIR)_real kneeseg_data .pytest_cache .mypy_cache .ruff_cache
