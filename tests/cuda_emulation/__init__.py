"""Run a .cu file's kernels on the CPU to check their index math where no GPU exists.

`build(cu, driver, workdir)` copies csrc/ to `workdir`, sets kThreads = 1 in cuda/cuda_utils.cuh
(every block-stride loop then covers its items in one thread), rewrites each
`kernel<<<grid, block, smem, stream>>>(args);` into a loop over the grid's blocks, makes
__shared__ arrays statics and __syncthreads() a no-op, and compiles the result with g++ into one
program with `driver` (a C++ file that includes "emulated.cpp", calls the launchers and compares
with its own direct computation). It checks indexing and bounds, not races or warp behaviour.
"""
import os
import re
import shutil
import subprocess

CSRC = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
CUDA_INCLUDE = next((d for d in (os.path.join(os.environ.get("CUDA_HOME", ""), "include"),
                                 "/usr/local/cuda/include")
                     if os.path.exists(os.path.join(d, "cuda_runtime.h"))), None)

PRELUDE = r"""
#include <cuda_runtime.h>
#include <functional>
extern "C" cudaError_t cudaGetLastError() { return cudaSuccess; }
#undef __shared__
#define __shared__ static
#define __syncthreads() ((void)0)
static uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
static dim3 gridDim;
static void emulated_launch(dim3 grid, const std::function<void()>& block) {
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        block();
      }
}
"""
_LAUNCH = re.compile(r"([\w:]+(?:<[^;<>]*>)?)<<<(.*?)>>>\((.*?)\);", re.S)


def available():
    return CUDA_INCLUDE is not None and shutil.which("g++") is not None


def build(cu_name, driver, workdir):
    """Compile csrc/cuda/`cu_name` with `driver`; returns the executable's path."""
    src = os.path.join(workdir, "csrc")
    shutil.copytree(CSRC, src)
    utils = os.path.join(src, "cuda", "cuda_utils.cuh")
    with open(utils) as f:
        text = f.read()
    assert "constexpr int kThreads = " in text
    with open(utils, "w") as f:
        f.write(re.sub(r"constexpr int kThreads = \d+;", "constexpr int kThreads = 1;", text))
    with open(os.path.join(src, "cuda", cu_name)) as f:
        kernels, launches = _LAUNCH.subn(
            lambda m: f"emulated_launch(dim3({m.group(2).rsplit(',', 3)[0]}), "
                      f"[&] {{ {m.group(1)}({m.group(3)}); }});", f.read())
    assert launches > 0, f"no kernel launch found in {cu_name}"
    with open(os.path.join(workdir, "emulated.cpp"), "w") as f:
        f.write(PRELUDE + kernels)
    exe = os.path.join(workdir, "driver")
    result = subprocess.run(["g++", "-std=c++17", "-O1", "-D__launch_bounds__(x)=", f"-I{src}",
                             f"-I{workdir}", f"-I{CUDA_INCLUDE}", driver, "-o", exe],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"emulated build failed:\n{result.stderr[-4000:]}"
    return exe
