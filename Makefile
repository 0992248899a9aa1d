# make test   : set up the environment, build, `make cuda-check` if nvcc exists, then every test
# make bench  : set up, build, run the benchmarks and print the speedup table
# make sim-deps  : install clang and its sanitizer runtimes (the CUDA simulator's tests need them)
# make cuda-check : compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (no GPU needed), print
#                   each kernel's sm_90 registers, spills, stack, shared memory and occupancy
#                   (tools/cuda_resources.py; fails on any spill) and, with a CPU-only torch,
#                   syntax-check every CUDA glue file against stub headers
# make gpu-check  : on a CUDA machine, build for its GPU and run every CUDA test, compute-sanitizer
#                   and the GPU benchmarks (tools/gpu_check.py); DRY_RUN=1 lists what it would run,
#                   PHASES="tests bench" reruns a subset, RESULTS=dir picks the results folder
#
# Another torch: `make test TORCH_PIN=torch==2.11.0 VENV=/path/to/venv` uses (creating it if
# needed) that venv and installs the pin there unless its torch already has that version.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# A Python that already imports torch (e.g. a GPU machine's CUDA torch) is used as is;
# otherwise a local .venv gets the pinned CPU build.
TORCH_PIN := torch==2.13.0
DEV_DEPS := triton pytest pytest-benchmark numpy ninja pillow tqdm
VENV :=
ifneq ($(VENV),)
PYTHON := $(VENV)/bin/python
else
PYTHON := $(shell if [ -x .venv/bin/python ]; then echo .venv/bin/python; \
	elif python3 -c 'import torch' >/dev/null 2>&1; then echo python3; \
	else echo .venv/bin/python; fi)
endif
# torch version the environment must have: only when TORCH_PIN is given explicitly
PIN_VERSION := $(if $(filter command line environment,$(origin TORCH_PIN)),$(patsubst torch==%,%,$(TORCH_PIN)))
NVCC := $(shell command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
CUDA_INC := $(firstword $(wildcard $(CUDA_HOME)/include/cuda_runtime_api.h /usr/local/cuda/include/cuda_runtime_api.h))
CUDA_ARCHS := --arch 80 --arch 90
BUILD_LOG := build/pip-install.log
# The `export` and `train` extras, so that the ONNX, predict and wheel tests run in CI too.
DEV_DEPS += onnx onnxscript onnxruntime pillow tqdm

.PHONY: env build sim-deps test cuda-check glue-check bench gpu-check clean

# Installs only what is missing: nothing on a machine that has torch, pytest and pytest-benchmark.
env:
	@venv=$$(dirname $$(dirname $(PYTHON))); \
	if [ "$(PYTHON)" != python3 ] && [ ! -x $(PYTHON) ]; then \
		echo "[make] creating $$venv"; \
		python3 -m venv $$venv; \
		$(PYTHON) -m pip install -q --upgrade pip; \
	fi; \
	if ! $(PYTHON) -c 'import torch' 2>/dev/null; then \
		echo "[make] no importable torch: installing $(TORCH_PIN) $(DEV_DEPS) into $$venv"; \
		$(PYTHON) -m pip install -q $(TORCH_PIN) $(DEV_DEPS); \
	elif [ -n "$(PIN_VERSION)" ] && ! $(PYTHON) -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "$(PIN_VERSION)")' 2>/dev/null; then \
		echo "[make] installing $(TORCH_PIN) into $$venv"; \
		$(PYTHON) -m pip install -q $(TORCH_PIN); \
	fi
	@missing=$$($(PYTHON) -c 'import importlib.util as u; print(" ".join(m for m, i in [("pytest", "pytest"), ("pytest-benchmark", "pytest_benchmark"), ("pillow", "PIL"), ("tqdm", "tqdm"), ("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")] if u.find_spec(i) is None))'); \
	if [ -n "$$missing" ]; then echo "[make] installing $$missing"; $(PYTHON) -m pip install -q $$missing; fi
	@$(PYTHON) -c 'import torch; print(f"[make] python: $(PYTHON), torch {torch.__version__}, cuda {torch.cuda.is_available()}")'

build: env
	@mkdir -p build
	@# build_ext keeps the objects in build/temp.* (--force: ninja, which tracks headers, decides
	@# what to recompile), so tests/test_package.py's `pip wheel` reuses them. The editable install
	@# only registers the packages (RTSEG_NO_EXT=1): it would otherwise compile everything again
	@# in a temporary folder; the in-place extension is what the source tree imports.
	@if ! $(PYTHON) setup.py build_ext --inplace --force > build/build-ext.log 2>&1; then \
		cat build/build-ext.log; echo "[make] build failed"; exit 1; fi
	@if ! RTSEG_NO_EXT=1 $(PYTHON) -m pip install -v --no-build-isolation --no-deps -e . > $(BUILD_LOG) 2>&1; then \
		cat $(BUILD_LOG); echo "[make] build failed"; exit 1; fi
	@grep -h "\[rtseg setup\]" build/build-ext.log || true
# Triton <= 3.6 (torch 2.11's pin) breaks under TRITON_INTERPRET=1 (the CPU tests) with numpy 2.4;
# later Tritons work with it (triton-lang/triton#9172)
	@if $(PYTHON) -c 'import sys, numpy, torch, triton; v = lambda s: tuple(int(x) for x in s.split(".")[:2]); sys.exit(not (v(triton.__version__) < (3, 7) and v(numpy.__version__) >= (2, 4) and not torch.cuda.is_available()))' 2>/dev/null; then \
		echo "[make] Triton <= 3.6's interpreter (the CPU tests) fails with numpy >= 2.4: installing numpy<2.4"; \
		$(PYTHON) -m pip install -q "numpy<2.4"; fi

# tests/cuda_sim compiles csrc/cuda for the CUDA simulator with clang, ASan and UBSan.
SIM_CLANGS := clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14
sim-deps:
	@for c in $(SIM_CLANGS); do \
		command -v $$c >/dev/null && [ -f "$$($$c -print-file-name=libclang_rt.asan-x86_64.so)" ] && exit 0; \
	done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "[make] installing clang and its sanitizer runtimes for the CUDA simulator"; \
		apt-get update -q >/dev/null; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q clang libclang-rt-dev llvm >/dev/null || \
			apt-get install -y -q clang llvm >/dev/null; \
	else \
		echo "[make] the CUDA simulator's tests need clang with its ASan runtime:" \
			"apt-get install clang libclang-rt-dev llvm (as root)"; exit 1; \
	fi

# cuda-check first, so that pytest's summary is the run's closing line.
test: build sim-deps
	@if [ -n "$(NVCC)" ]; then $(MAKE) --no-print-directory cuda-check; \
	else echo "[make] nvcc not found: skipping cuda-check"; fi
	$(PYTHON) -m pytest tests -q -ra

cuda-check:
	@test -n "$(NVCC)" || { echo "cuda-check needs nvcc"; exit 1; }
	@mkdir -p build/cuda-check
	python3 tools/cuda_resources.py --nvcc $(NVCC) $(CUDA_ARCHS) --report-arch 90 \
		--out-dir build/cuda-check --markdown build/cuda-check/resources_sm90.md csrc/cuda/*.cu
	@if $(PYTHON) -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then \
		$(MAKE) --no-print-directory glue-check; fi

# The glue is compiled for real only against a CUDA torch; with a CPU torch, tools/cuda_stubs
# stands in for the CUDA library headers torch's CUDA headers include, so the glue still gets
# type-checked here and in CI.
glue-check:
	@inc=$$($(PYTHON) -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-isystem ' + p for p in include_paths()))"); \
	for f in csrc/cuda/*_glue.cpp; do \
		[ -e "$$f" ] || continue; \
		echo "[glue-check] $$f"; \
		g++ -std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Werror -Icsrc \
			-isystem tools/cuda_stubs $$inc -isystem $(dir $(CUDA_INC)) -DRTSEG_WITH_CUDA $$f; \
	done
	@echo "[glue-check] ok"

bench: build
	@mkdir -p benchmarks/results
	$(PYTHON) -m pytest benchmarks --benchmark-only -q --benchmark-json=benchmarks/results/latest.json
	$(PYTHON) benchmarks/make_table.py benchmarks/results/latest.json

# No `env` or `build` prerequisite: it must never reach a package index, and its build phase
# builds for the local GPU only.
gpu-check:
	@$(PYTHON) tools/gpu_check.py $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) \
		$(if $(PHASES),--phases "$(PHASES)") $(if $(RESULTS),--results "$(RESULTS)") \
		$(if $(BUDGET),--budget $(BUDGET))

clean:
	rm -rf build *.egg-info rtseg_ops/_C*.so
