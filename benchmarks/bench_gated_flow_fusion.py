"""gated_flow_fusion against the reference composite (interpolate + two grid_sample warps + gates)
at the CSFCN SFC shape, flows and gates as channel slices of one offset-conv output."""
import pytest

import rtseg_ops
from bench_harness import (DEVICES, PASSES, parametrize_dtypes, parametrize_impls,
                           parametrize_layouts, resolve_impl, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
from test_gated_flow_fusion import make_inputs

IMPLS = {"rtseg": rtseg_ops.gated_flow_fusion, "reference": rtseg_ops.reference.gated_flow_fusion}

# name -> (B, C, groups, high hw, low hw)
CASES = {
    "CSFCN SFC B1 C128 128x256 <- 32x64 G2": (1, 128, 2, (128, 256), (32, 64)),
    "CSFCN SFC B8 C128 128x256 <- 32x64 G2": (8, 128, 2, (128, 256), (32, 64)),
}


@pytest.mark.parametrize("device", DEVICES)
@parametrize_dtypes
@parametrize_layouts
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_gated_flow_fusion(benchmark, impl, pass_, case, layout, dtype, device):
    skip_unless_benchmarked(device, dtype, layout, impl)
    B, C, groups, high_hw, low_hw = CASES[case]
    args = make_inputs(B, C, groups, high_hw, low_hw, flow_scale=2.0, dtype=dtype, device=device,
                       layout="slices" if layout == "NCHW" else "slices_cl")
    out_bytes = args[0].numel() * args[0].element_size()
    run_benchmark(benchmark, resolve_impl(IMPLS, impl), args + (groups,), op="gated_flow_fusion",
                  case=case, impl=impl, pass_=pass_, layout=layout,
                  bytes_moved=tensor_bytes(*args) + out_bytes)
