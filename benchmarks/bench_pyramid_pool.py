"""pyramid_pool against four adaptive_avg_pool2d calls (the reference) at CSFCN's CFC shapes."""
import pytest

import rtseg_ops
from bench_harness import (DEVICES, LAYOUTS, PASSES, parametrize_dtypes, parametrize_impls,
                           parametrize_layouts, resolve_impl, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
from test_pyramid_pool import make_input

IMPLS = {"rtseg": rtseg_ops.pyramid_pool, "reference": rtseg_ops.reference.pyramid_pool}

# gpu-check: the CSFCN shape, cascaded as in the paper
GPU_CHECK = {"case": "CFC 1/32 of 1024x2048 B1 C256 32x64", "cascade": True}
# name -> (B, C, (H, W))
CASES = {
    "CFC 1/32 of 1024x2048 B1 C256 32x64": (1, 256, (32, 64)),
    "CFC 1/32 of 1024x2048 B8 C256 32x64": (8, 256, (32, 64)),
    "B2 C128 128x256": (2, 128, (128, 256)),
}


@pytest.mark.parametrize("device", DEVICES)
@parametrize_dtypes
@parametrize_layouts
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cascade", [True, False], ids=["cascade", "parallel"])
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_pyramid_pool(benchmark, impl, pass_, cascade, case, layout, dtype, device):
    skip_unless_benchmarked(device, dtype, layout, impl)
    B, C, hw = CASES[case]
    x = make_input(B, C, hw, dtype=dtype, device=device, layout=LAYOUTS[layout])
    ref = resolve_impl(IMPLS, impl)

    def fn(x):
        return ref(x, (1, 2, 3, 6), True, cascade)

    out_bytes = x.element_size() * B * C * 100
    run_benchmark(benchmark, fn, (x,), op="pyramid_pool",
                  case=f"{case} {'cascade' if cascade else 'parallel'}", impl=impl,
                  pass_=pass_, layout=layout, bytes_moved=tensor_bytes(x) + out_bytes)
