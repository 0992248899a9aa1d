"""pyramid_pool against four adaptive_avg_pool2d calls (the reference) at CSFCN's CFC shapes."""
import pytest
import torch

import rtseg_ops
from bench_harness import DEVICES, PASSES, dtypes_for, parametrize_impls, run_benchmark, tensor_bytes
from test_pyramid_pool import make_input

IMPLS = {"rtseg": rtseg_ops.pyramid_pool, "reference": rtseg_ops.reference.pyramid_pool}

# name -> (B, C, (H, W))
CASES = {
    "CFC 1/32 of 1024x2048 B1 C256 32x64": (1, 256, (32, 64)),
    "CFC 1/32 of 1024x2048 B8 C256 32x64": (8, 256, (32, 64)),
    "B2 C128 128x256": (2, 128, (128, 256)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cascade", [True, False], ids=["cascade", "parallel"])
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_pyramid_pool(benchmark, impl, pass_, cascade, case, dtype, device):
    if dtype not in dtypes_for(device):
        pytest.skip(f"{dtype} is not benchmarked on {device}")
    B, C, hw = CASES[case]
    x = make_input(B, C, hw, dtype=dtype, device=device)

    def fn(x):
        return IMPLS[impl](x, (1, 2, 3, 6), True, cascade)

    out_bytes = x.element_size() * B * C * 100
    run_benchmark(benchmark, fn, (x,), op="pyramid_pool",
                  case=f"{case} {'cascade' if cascade else 'parallel'}", impl=impl,
                  pass_=pass_, bytes_moved=tensor_bytes(x) + out_bytes)
