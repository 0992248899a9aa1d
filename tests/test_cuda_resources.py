"""tools/cuda_resources.py, the resource report of `make cuda-check`: its occupancy arithmetic, and
that it finds a spilling kernel and a kernel without __launch_bounds__ in a real nvcc build."""
import importlib.util
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_resources",
                                              ROOT / "tools" / "cuda_resources.py")
cuda_resources = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cuda_resources  # dataclasses look their module up
_spec.loader.exec_module(cuda_resources)

NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if pathlib.Path("/usr/local/cuda/bin/nvcc").exists() else None)


@pytest.mark.parametrize("regs, threads, smem, blocks, limiter", [
    # The figures issue 15 quotes for 256-thread blocks on sm_90.
    (171, 256, 0, 1, "regs"),   # 5632 registers per warp: 11 warps fit, one 8-warp block
    (112, 256, 0, 2, "regs"),
    (96, 256, 0, 2, "regs"),
    (71, 256, 0, 3, "regs"),    # 71 * 32 rounds up to 2304 per warp
    (64, 256, 0, 4, "regs"),
    (32, 256, 0, 8, "warps"),
    (16, 32, 0, 32, "blocks"),  # one warp per block: the 32-block limit, 50%
    (32, 256, 46656, 4, "smem"),  # 47680 B per block with the runtime's 1 KiB
    (32, 256, 100 * 1024, 2, "smem"),
    (32, 1024, 0, 2, "warps"),
])
def test_occupancy_sm90(regs, threads, smem, blocks, limiter):
    occ = cuda_resources.occupancy(regs, threads, smem, arch=90)
    assert (occ.blocks_per_sm, occ.limiter) == (blocks, limiter)
    assert occ.fraction == pytest.approx(blocks * ((threads + 31) // 32) / 64)


def test_occupancy_rejects_bad_block():
    with pytest.raises(ValueError, match="threads"):
        cuda_resources.occupancy(32, 2048, 0)


CLEAN = r"""
__global__ void __launch_bounds__(128) clean_kernel(const float* in, float* out) {
  __shared__ float buf[128];
  buf[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = 2.0f * buf[127 - threadIdx.x];
}
"""
PLANTED = CLEAN + r"""
// Every value stays live until their sum is known; 32 registers cannot hold them.
__global__ void __launch_bounds__(1024, 2) spilling_kernel(const float* in, float* out) {
  constexpr int kValues = 96;
  float v[kValues];
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kValues; ++i) {
    v[i] = in[threadIdx.x + i * 1024];
    sum += v[i] * v[i];
  }
#pragma unroll
  for (int i = 0; i < kValues; ++i) out[threadIdx.x + i * 1024] = v[i] / sum;
}

__global__ void unbounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }
"""


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit)")
def test_planted_spill_and_missing_bounds_fail(tmp_path, capsys):
    src = tmp_path / "planted.cu"
    src.write_text(PLANTED)
    md = tmp_path / "table.md"
    rc = cuda_resources.main(["--nvcc", NVCC, "--arch", "90", "-I", str(tmp_path), "--out-dir",
                              str(tmp_path / "out"), "--markdown", str(md), str(src)])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    rows = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[3:-1]]
            for r in md.read_text().splitlines()[2:]}
    assert set(rows) == {"clean_kernel", "spilling_kernel", "unbounded_kernel"}
    regs, spills, stack, smem, block, occ = rows["clean_kernel"]
    assert spills == "0/0" and smem == "512" and block == "128" and 0 < int(regs) <= 32
    assert occ == "100.0% (warps)"
    assert rows["spilling_kernel"][1] != "0/0" and rows["spilling_kernel"][4] == "1024"
    assert "spilling_kernel: spills" in err
    assert "unbounded_kernel: no __launch_bounds__" in err
    assert "clean_kernel" not in err


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit)")
def test_clean_file_passes_for_both_archs(tmp_path, capsys):
    src = tmp_path / "clean.cu"
    src.write_text(CLEAN)
    rc = cuda_resources.main(["--nvcc", NVCC, "--arch", "80", "--arch", "90", "-I",
                              str(tmp_path), "--out-dir", str(tmp_path / "out"), str(src)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "1 files, 2 kernel builds for sm_80, sm_90: ok" in out
