"""The sm_90 compile check of the Triton kernels (tools/triton_compile_check.py): every
configuration the launchers pick for the four models (every CUDA dtype) and for the test tables
(float32 and float64, the dtypes those tables run in; one integer specialisation per
configuration) is compiled for sm_90 with Triton's own compiler and ptxas, no GPU needed. It
fails on a spill, on more shared memory than an sm_90 block has, or on a compile over a minute.
Compiled results are cached in build/triton-compile-check/ (a fresh clone compiles everything)."""
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton.backends.nvidia")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import triton_compile_check as tcc  # noqa: E402

TABLE_DTYPES = ("float32", "float64")


@pytest.fixture(scope="module")
def compiled():
    jobs = tcc.collect(tcc.DTYPES, TABLE_DTYPES, one_per_group=True)
    results = tcc.run_jobs(jobs, n_jobs=max(1, min(8, os.cpu_count() or 1)))
    text = tcc.table(jobs, results)
    (tcc.CACHE_DIR / "sm90-table.md").write_text(text + "\n")
    print(text)  # shown with pytest -s or on failure
    return jobs, results


def test_sm90_no_spills_shared_memory_or_slow_compiles(compiled):
    jobs, results = compiled
    failed = tcc.failures(jobs, results)
    assert not failed, "\n".join(failed) + f"\n(table: {tcc.CACHE_DIR / 'sm90-table.md'})"


def test_float32_attention_runs_on_tensor_cores(compiled):
    jobs, results = compiled
    fp32 = [k for k, j in jobs.items()
            if j["module"].endswith("pixel_context_attention") and j["dtype"] == "float32"]
    assert fp32 and all(results[k].get("mma") for k in fp32), \
        [jobs[k]["name"] for k in fp32 if not results[k].get("mma")]


def _sws_configs(sizes):
    *xs, w = [torch.randn(1, 2, *hw) for hw in sizes] + [torch.ones(len(sizes))]
    case = ("fan-in", lambda *t: tcc.rtseg_ops.scalar_weighted_sum(list(t[:-1]), t[-1]),
            xs + [w])
    return {j["config"] for j in tcc.compile_jobs([case], ["float16"]).values()
            if j["name"] == "_input_grad_kernel"}


def test_upsampling_ratio_is_not_compiled_in():
    """The nearest-upsampling gradient gathers its fan-in in run-time loops: 2x, 16x and 32x
    ratios launch the same compiled configuration (unrolled, 16x16 took 54 s and 32x32 did not
    finish in 15 minutes)."""
    configs = [_sws_configs([(64, 64), (64 // r, 64 // r)]) for r in (2, 16, 32)]
    assert configs[0] and configs[0] == configs[1] == configs[2], configs
