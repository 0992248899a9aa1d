"""spatial_aware_pool against five F.avg_pool2d calls (the reference) on the ResNet-18 stage
outputs of a 1024x2048 image, as MSFNet pools them."""
import pytest

import rtseg_ops
from bench_harness import (DEVICES, LAYOUTS, PASSES, parametrize_dtypes, parametrize_impls,
                           parametrize_layouts, resolve_impl, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
from test_spatial_aware_pool import make_inputs

IMPLS = {"rtseg": rtseg_ops.spatial_aware_pool,
         "reference": rtseg_ops.reference.spatial_aware_pool}
LEVELS = 5

# name -> (B, C, H, W)
CASES = {f"ResNet-18 stage {i} B{B} C{C} {H}x{W}": (B, C, H, W)
         for B in (1, 8)
         for i, (C, H, W) in enumerate([(64, 256, 512), (128, 128, 256), (256, 64, 128),
                                        (512, 32, 64)], start=1)}


@pytest.mark.parametrize("device", DEVICES)
@parametrize_dtypes
@parametrize_layouts
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_spatial_aware_pool(benchmark, impl, pass_, case, layout, dtype, device):
    skip_unless_benchmarked(device, dtype, layout, impl)
    B, C, H, W = CASES[case]
    if device == "cpu" and B > 1:
        pytest.skip("batch 8 is too slow for the shared 2-core CPU")
    x = make_inputs(B, C, (H, W), dtype=dtype, device=device, layout=LAYOUTS[layout])
    out_bytes = sum(tensor_bytes(o) for o in rtseg_ops.reference.spatial_aware_pool(x, LEVELS))
    run_benchmark(benchmark, resolve_impl(IMPLS, impl), (x, LEVELS), op="spatial_aware_pool",
                  case=case, impl=impl, pass_=pass_, layout=layout,
                  bytes_moved=tensor_bytes(x) + out_bytes)
