"""pixel_context_attention against the reference (bmm, softmax, bmm) and, on CUDA,
F.scaled_dot_product_attention, at CSFCN's CFC shapes."""
import pytest
import torch.nn.functional as F

import rtseg_ops
from bench_harness import (DEVICES, LAYOUTS, PASSES, parametrize_dtypes, parametrize_impls,
                           parametrize_layouts, resolve_impl, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
from test_pixel_context_attention import make_inputs


def sdpa(query, key, value, scale=1.0):
    """The same attention through SDPA (one head), with the layout changes it needs."""
    B, Ck, H, W = query.shape
    q = query.flatten(2).transpose(1, 2).unsqueeze(1)           # (B, 1, N, Ck)
    k = key.transpose(1, 2).unsqueeze(1)                        # (B, 1, M, Ck)
    v = value.transpose(1, 2).unsqueeze(1)                      # (B, 1, M, Cv)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, 1, N, Cv)
    return out.squeeze(1).transpose(1, 2).reshape(B, value.shape[1], H, W)


IMPLS = {"rtseg": rtseg_ops.pixel_context_attention,
         "reference": rtseg_ops.reference.pixel_context_attention, "sdpa": sdpa}

BOTH = ("cpu", "cuda")
# name -> (B, Ck, Cv, M, (H, W), devices)
CASES = {
    "CFC 1/32 of 1024x2048 B1 N32x64 M100 Ck32 Cv256": (1, 32, 256, 100, (32, 64), BOTH),
    "CFC 1/32 of 1024x2048 B16 N32x64 M100 Ck32 Cv256": (16, 32, 256, 100, (32, 64), BOTH),
    "B4 N64x128 M100 Ck32 Cv256": (4, 32, 256, 100, (64, 128), BOTH),
    # too slow for the shared CPU's rounds: GPU only
    "large B8 N128x256 M100 Ck32 Cv256": (8, 32, 256, 100, (128, 256), ("cuda",)),
}
# The CSFCN shape is one tiny launch at batch 1; gpu-check times the batch-16 one.
GPU_CHECK = {"case": "CFC 1/32 of 1024x2048 B16 N32x64 M100 Ck32 Cv256"}


def attention_flops(B, N, M, Ck, Cv):
    """Multiply-adds x 2 of the two matmuls (logits with Ck, output with Cv) and, for the
    backward, of the five (logits again, grad of value and of the probabilities, of query and
    of key)."""
    fwd = 2 * B * N * M * (Ck + Cv)
    return {"fwd": fwd, "fwd+bwd": fwd + 2 * B * N * M * (3 * Ck + 2 * Cv)}


@pytest.mark.parametrize("device", DEVICES)
@parametrize_dtypes
@parametrize_layouts
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_pixel_context_attention(benchmark, impl, pass_, case, layout, dtype, device):
    B, Ck, Cv, M, hw, devices = CASES[case]
    skip_unless_benchmarked(device, dtype, layout, impl)
    if device not in devices:
        pytest.skip(f"{case} is not benchmarked on {device}")
    if impl == "sdpa" and device != "cuda":
        pytest.skip("SDPA is the CUDA baseline")
    q, k, v = make_inputs(B, Ck, Cv, M, hw, logit_scale=3.0, dtype=dtype, device=device,
                          layout=LAYOUTS[layout])
    N = hw[0] * hw[1]
    # Output and the float32 log-sum-exp written; query, key and value read.
    written = B * Cv * N * q.element_size() + B * N * 4
    run_benchmark(benchmark, resolve_impl(IMPLS, impl), (q, k, v), op="pixel_context_attention",
                  case=case, impl=impl, pass_=pass_, layout=layout,
                  bytes_moved=tensor_bytes(q, k, v) + written,
                  flops=attention_flops(B, N, M, Ck, Cv))
