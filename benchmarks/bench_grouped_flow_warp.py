"""grouped_flow_warp against the grid_sample reference at the CSFCN SFC and SFNet shapes."""
import pytest
import torch

import rtseg_ops
from bench_harness import DEVICES, PASSES, dtypes_for, parametrize_impls, run_benchmark, tensor_bytes
from test_grouped_flow_warp import make_inputs

IMPLS = {"rtseg": rtseg_ops.grouped_flow_warp, "reference": rtseg_ops.reference.grouped_flow_warp}

# name -> (B, C, groups, input hw, output hw)
CASES = {
    "CSFCN SFC B2 C128 128x256 G2": (2, 128, 2, (128, 256), (128, 256)),
    "CSFCN SFC B8 C128 128x256 G2": (8, 128, 2, (128, 256), (128, 256)),
    "SFNet B2 C128 64x128->128x256 G1": (2, 128, 1, (64, 128), (128, 256)),
    "SFNet B8 C128 64x128->128x256 G1": (8, 128, 1, (64, 128), (128, 256)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_grouped_flow_warp(benchmark, impl, pass_, case, dtype, device):
    if dtype not in dtypes_for(device):
        pytest.skip(f"{dtype} is not benchmarked on {device}")
    B, C, groups, in_hw, out_hw = CASES[case]
    x, flow = make_inputs(B, C, groups, in_hw, out_hw, flow_scale=2.0, dtype=dtype, device=device)
    out_bytes = x.element_size() * B * C * out_hw[0] * out_hw[1]
    run_benchmark(benchmark, IMPLS[impl], (x, flow, groups, out_hw), op="grouped_flow_warp",
                  case=case, impl=impl, pass_=pass_,
                  bytes_moved=tensor_bytes(x, flow) + out_bytes)
