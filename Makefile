# make test   : set up the environment, build, `make cuda-check` if nvcc exists, then every test
# make bench  : set up, build, run the benchmarks and print the speedup table
# make sim-deps  : install clang and its sanitizer runtimes (the CUDA simulator's tests need them)
# make cuda-check : compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (no GPU needed) and,
#                   with a CPU-only torch, syntax-check every CUDA glue file against stub headers
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# A Python that already imports torch (e.g. a GPU machine's CUDA torch) is used as is;
# otherwise a local .venv gets the pinned CPU build.
TORCH_PIN := torch==2.13.0
DEV_DEPS := triton pytest pytest-benchmark numpy ninja expecttest
PYTHON := $(shell if [ -x .venv/bin/python ]; then echo .venv/bin/python; \
	elif python3 -c 'import torch' >/dev/null 2>&1; then echo python3; \
	else echo .venv/bin/python; fi)
NVCC := $(shell command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
CUDA_INC := $(firstword $(wildcard $(CUDA_HOME)/include/cuda_runtime_api.h /usr/local/cuda/include/cuda_runtime_api.h))
CUDA_ARCHS := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
BUILD_LOG := build/pip-install.log

.PHONY: env build sim-deps test cuda-check glue-check bench clean

env:
	@if [ "$(PYTHON)" = ".venv/bin/python" ] && [ ! -f .venv/.ready ]; then \
		echo "[make] no usable torch found: creating .venv with $(TORCH_PIN)"; \
		python3 -m venv .venv; \
		.venv/bin/python -m pip install -q --upgrade pip; \
		.venv/bin/python -m pip install -q $(TORCH_PIN) $(DEV_DEPS); \
		touch .venv/.ready; \
	fi
	@missing=$$($(PYTHON) -c 'import importlib.util as u; print(" ".join(m for m, i in [("pytest", "pytest"), ("pytest-benchmark", "pytest_benchmark"), ("expecttest", "expecttest")] if u.find_spec(i) is None))'); \
	if [ -n "$$missing" ]; then echo "[make] installing $$missing"; $(PYTHON) -m pip install -q $$missing; fi
	@$(PYTHON) -c 'import torch; print(f"[make] python: $(PYTHON), torch {torch.__version__}, cuda {torch.cuda.is_available()}")'

build: env
	@mkdir -p build
	@if ! $(PYTHON) -m pip install -v --no-build-isolation -e . > $(BUILD_LOG) 2>&1; then \
		cat $(BUILD_LOG); echo "[make] build failed"; exit 1; fi
	@grep -h "\[rtseg setup\]" $(BUILD_LOG) || true

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
	@for f in csrc/cuda/*.cu; do \
		[ -e "$$f" ] || continue; \
		echo "[cuda-check] $$f"; \
		$(NVCC) -c -std=c++17 -O3 -Icsrc $(CUDA_ARCHS) -Werror all-warnings \
			-Xcompiler -Wall,-Wextra,-Werror -o build/cuda-check/$$(basename $$f .cu).o $$f; \
	done
	@echo "[cuda-check] ok"
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

clean:
	rm -rf build *.egg-info rtseg_ops/_C*.so
