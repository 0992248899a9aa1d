"""The sm_90 compile check of the Triton kernels (tools/triton_compile_check.py): every
configuration the launchers pick for the four models (every CUDA dtype) and for the test tables
(float32 and float64, the dtypes those tables run in; one integer specialisation per
configuration) is compiled for sm_90 with Triton's own compiler and ptxas, no GPU needed. It
fails on a spill, on more shared memory than an sm_90 block has, or on a compile over a minute.
It runs as a subprocess without TRITON_INTERPRET (conftest.py sets it on machines without CUDA,
and the interpreter replaces the kernels). Compiled results are cached in
build/triton-compile-check/; a fresh clone compiles about 150 configurations."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton.backends.nvidia")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-compile") / "check.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "triton_compile_check.py"), "--table-dtypes",
         "float32,float64", "--one-per-group", "--jobs", str(max(1, min(8, os.cpu_count() or 1))),
         "--json", str(out)], env=env, capture_output=True, text=True, timeout=3600)
    print(proc.stdout)  # the table; shown with pytest -s or on failure
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_sm90_no_spills_shared_memory_or_slow_compiles(compiled):
    assert compiled["jobs"] and not compiled["failures"], "\n".join(compiled["failures"])


def test_float32_attention_runs_on_tensor_cores(compiled):
    jobs, results = compiled["jobs"], compiled["results"]
    fp32 = [k for k, j in jobs.items()
            if j["module"].endswith("pixel_context_attention") and j["dtype"] == "float32"]
    assert fp32 and all(results[k].get("mma") for k in fp32), \
        [jobs[k]["name"] for k in fp32 if not results[k].get("mma")]


def test_upsampling_ratio_is_not_compiled_in():
    """The nearest-upsampling gradient gathers its fan-in in run-time loops: 2x, 16x and 32x
    ratios launch the same kernel configuration (unrolled, a 16x16 fan-in took 54 s to compile
    and 32x32 did not finish in 15 minutes). The compile check above compiles such a ratio."""
    from rtseg_ops.triton import scalar_weighted_sum as kernels
    configs = []
    for r in (2, 16, 32):
        xs = [torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64 // r, 64 // r)]
        launches, _, _ = kernels.backward_launches(torch.randn(1, 2, 64, 64), xs, torch.ones(2),
                                                   False, 1e-4, None)
        configs.append([(l.constexprs, l.num_warps) for l in launches
                        if l.kernel is kernels._input_grad_kernel])
    assert configs[0] and configs[0] == configs[1] == configs[2], configs
