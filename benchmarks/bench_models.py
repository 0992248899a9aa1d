"""Inference speed of every rtseg_models network: batch 1, eval mode, BatchNorm folded,
ops="fused" (reported as "rtseg") against ops="reference", eager and torch.compile, and (float32,
where onnxruntime is installed) the exported ONNX file in ONNX Runtime next to the eager rows.
The same measurement for one network at any size: python -m rtseg_models.benchmark.

To add a network, add a row to MODELS. CUDA runs the paper's resolution in float32 and float16,
contiguous and channels_last; the CPU runs float32 at the reduced `cpu_size` (stated in the case
name), as full-resolution forwards take seconds there. FPS = 1 / median time
(extra_info["fps"]).
"""
import pytest
import torch

import importlib.util

from bench_harness import DEVICES, dtypes_for, run_benchmark
from rtseg_models.benchmark import build as build_model, onnxruntime_forward

# name -> paper resolution, CPU resolution, constructor options (and `model` when the row's name
# is not the registered model name, for a second resolution of one network)
MODELS = {
    "csfcn": dict(size=(1024, 2048), cpu_size=(256, 512), options={}),
    "msfnet": dict(size=(1024, 2048), cpu_size=(256, 512), options={}),
    # SGCPNet's CPU case is the paper's (151 ms on a 10-core Xeon Silver 4210 at 512x1024)
    "sgcpnet": dict(size=(1024, 2048), cpu_size=(512, 1024), options={}),
    "sgcpnet@768x1536": dict(model="sgcpnet", size=(768, 1536), cpu_size=None, options={}),
    "fbsnet": dict(size=(512, 1024), cpu_size=(256, 512), options={}),
}
IMPLS = {"rtseg": "fused", "reference": "reference"}
HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript", "onnx"))


def build(name, ops, device, dtype, channels_last):
    return build_model(MODELS[name].get("model", name), ops, device, dtype, channels_last,
                       num_classes=19, **MODELS[name]["options"])


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
    if size is None:
        pytest.skip(f"{name} is not benchmarked on {device}")
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


@pytest.mark.skipif(not HAVE_ORT, reason="needs the export extra (onnx, onnxscript, onnxruntime)")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODELS))
def test_model_fps_onnxruntime(benchmark, name, device):
    size = MODELS[name]["size" if device == "cuda" else "cpu_size"]
    if size is None:
        pytest.skip(f"{name} is not benchmarked on {device}")
    model = build(name, "fused", "cpu", torch.float32, False)
    x = torch.randn((1, 3) + size, device=device)
    run_benchmark(benchmark, onnxruntime_forward(model, x), (x,), op=f"model {name}",
                  case=f"{size[0]}x{size[1]} B1 eager", impl="onnxruntime", pass_="fwd")
    benchmark.extra_info["fps"] = 1.0 / benchmark.stats.stats.median
