# Two commands set up and run everything on a fresh machine: `make demo`, `make test`.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv is rebuilt when the pins change.
STAMP := $(VENV)/.installed
PINS := pyproject.toml tools/fbgemm_gpu_shim/pyproject.toml
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# pip's and the build backend's output goes to .venv/install.log, shown only if a step fails
LOG := $(VENV)/install.log
LOGGED = >> $(LOG) 2>&1 || { cat $(LOG); exit 1; }

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): $(PINS)
	@echo "building $(VENV) (torch, fbgemm-gpu-cpu, torchrec, torchx; log: $(LOG))"
	@rm -rf $(VENV)
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip $(LOGGED)
	@# torch first so pip takes the CPU wheel; the shim answers torchrec's `fbgemm-gpu`
	@# requirement with fbgemm-gpu-cpu, so the CUDA wheel is never pulled.
	@$(PIP) torch==2.13.0 ./tools/fbgemm_gpu_shim $(LOGGED)
	@$(PIP) -e ".[test]" $(LOGGED)
	@$(PY) -m pip check $(LOGGED)
	@$(PY) -c "import torchrec, fbgemm_gpu, torchx; print('venv ok: torchrec', torchrec.__version__)"
	@touch $(STAMP)

DEMO_CONFIG ?= configs/dlrm_teacher_synthetic.yaml
TORCHX := $(VENV)/bin/torchx run -s local_cwd

# teacher -> student alone -> distilled student -> quantized students -> report, 2 CPU
# ranks; a second `make demo` skips the steps already done and rewrites the report
demo: $(STAMP)
	$(TORCHX) components/kd.py:experiment -j 1x2 --config $(DEMO_CONFIG)

# lint (ruff), then the tests (tests/test_architecture.py checks the import layers with lint-imports);
# two workers, a test file each at a time (module fixtures are built once): much of a test's time is
# process start-up and collectives waiting, so two overlap well even on 2 cores
test: $(STAMP)
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# the performance suite (training, inference, memory, scale -> benchmarks/results/latest.json),
# then the quality benchmarks: teacher/student/distilled/quantized, the distillation ablation, continual distillation
bench: $(STAMP)
	$(PY) benchmarks/suite.py
	$(PY) benchmarks/distillation.py
	$(PY) benchmarks/ablation.py
	$(PY) benchmarks/continual.py

clean:
	rm -rf $(VENV) outputs
