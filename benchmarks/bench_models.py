"""Inference speed of every rtseg_models network: batch 1, eval mode, BatchNorm folded,
ops="fused" (reported as "rtseg") against ops="reference", eager and torch.compile.

To add a network, add a row to MODELS. CUDA runs the paper's resolution in float32 and float16,
contiguous and channels_last; the CPU runs float32 at the reduced `cpu_size` (stated in the case
name), as full-resolution forwards take seconds there. FPS = 1 / median time
(extra_info["fps"]).
"""
import pytest
import torch

import rtseg_models
from bench_harness import DEVICES, dtypes_for, run_benchmark

# name -> paper resolution, CPU resolution, constructor options
MODELS = {
    "csfcn": dict(size=(1024, 2048), cpu_size=(256, 512), options={}),
    "msfnet": dict(size=(1024, 2048), cpu_size=(256, 512), options={}),
}
IMPLS = {"rtseg": "fused", "reference": "reference"}


def build(name, ops, device, dtype, channels_last):
    model = rtseg_models.create_model(name, ops=ops, **MODELS[name]["options"])
    model = model.fuse_for_inference().to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["eager", "compile"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("name", list(MODELS))
def test_model_fps(benchmark, name, impl, mode, layout, dtype, device):
    if dtype not in dtypes_for(device):
        pytest.skip(f"{dtype} is not benchmarked on {device}")
    if device == "cpu" and layout == "channels_last":
        pytest.skip("channels_last is benchmarked on CUDA only")
    size = MODELS[name]["size" if device == "cuda" else "cpu_size"]
    channels_last = layout == "channels_last"
    model = build(name, IMPLS[impl], device, dtype, channels_last)
    if mode == "compile":
        torch._dynamo.reset()  # a fresh compile per case, clear of the recompile limit
        model = torch.compile(model, fullgraph=True)
    x = torch.randn((1, 3) + size, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    case = f"{size[0]}x{size[1]} B1 {mode}" + (" channels_last" if channels_last else "")
    run_benchmark(benchmark, model, (x,), op=f"model {name}", case=case, impl=impl, pass_="fwd")
    benchmark.extra_info["fps"] = 1.0 / benchmark.stats.stats.median
