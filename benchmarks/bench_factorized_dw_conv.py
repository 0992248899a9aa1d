"""factorized_dw_conv (FactorizedDWConv in eval mode) against the unfused eval-mode modules
(Conv2d -> BatchNorm2d -> PReLU, twice) at FBSNet's shapes for a 512x1024 input, NCHW and
channels_last."""
import pytest
import torch

import rtseg_ops
from bench_harness import (DEVICES, PASSES, parametrize_dtypes, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
from test_factorized_dw_conv import _randomise_bn_and_prelu, _unfused

# (C, H, W): the 16-channel stage at 1/2 resolution, the 128-channel stage at 1/8.
SHAPES = {"C16 256x512": (16, 256, 512), "C128 64x128": (128, 64, 128)}
DILATIONS = [1, 2, 5, 9, 17]
BATCHES = {"cpu": [1, 8], "cuda": [1, 8]}
# gpu-check: both FBSNet stages at batch 1, one dilation of the 1/8 stage's range
GPU_CHECK = {"B": 1, "dilation": 5}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.mark.parametrize("device", DEVICES)
@parametrize_dtypes
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("impl", ["rtseg", "unfused", "compiled"])
def test_factorized_dw_conv(benchmark, impl, pass_, layout, dilation, shape, B, dtype, device):
    skip_unless_benchmarked(device, dtype, "NCHW", impl)  # both layouts on the CPU too
    if B not in BATCHES[device]:
        pytest.skip(f"B={B} is not benchmarked on {device}")
    C, H, W = SHAPES[shape]
    module = rtseg_ops.FactorizedDWConv(C, dilation=dilation)
    _randomise_bn_and_prelu(module)
    module = module.to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    if impl == "rtseg":
        fn = module
    elif impl == "unfused":
        fn = lambda t: _unfused(module, t)  # noqa: E731
    else:
        torch._dynamo.reset()
        fn = torch.compile(lambda t: _unfused(module, t), dynamic=False)
    out_bytes = x.numel() * x.element_size()
    run_benchmark(benchmark, fn, (x,), op="factorized_dw_conv",
                  case=f"B{B} {shape} d{dilation} {layout}", impl=impl, pass_=pass_,
                  bytes_moved=tensor_bytes(x) + out_bytes)
