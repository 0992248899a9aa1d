"""grouped_flow_warp against the grid_sample reference at the CSFCN SFC and SFNet shapes."""
import pytest

import rtseg_ops
from bench_harness import (DEVICES, LAYOUTS, PASSES, parametrize_dtypes, parametrize_impls,
                           parametrize_layouts, resolve_impl, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
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
@parametrize_dtypes
@parametrize_layouts
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_grouped_flow_warp(benchmark, impl, pass_, case, layout, dtype, device):
    skip_unless_benchmarked(device, dtype, layout, impl)
    B, C, groups, in_hw, out_hw = CASES[case]
    x, flow = make_inputs(B, C, groups, in_hw, out_hw, flow_scale=2.0, dtype=dtype, device=device,
                          layout=LAYOUTS[layout])
    out_bytes = x.element_size() * B * C * out_hw[0] * out_hw[1]
    run_benchmark(benchmark, resolve_impl(IMPLS, impl), (x, flow, groups, out_hw),
                  op="grouped_flow_warp", case=case, impl=impl, pass_=pass_, layout=layout,
                  bytes_moved=tensor_bytes(x, flow) + out_bytes)
