"""pixel_context_attention against the reference (bmm, softmax, bmm) and, on CUDA,
F.scaled_dot_product_attention, at CSFCN's CFC shapes."""
import pytest
import torch
import torch.nn.functional as F

import rtseg_ops
from bench_harness import DEVICES, PASSES, dtypes_for, parametrize_impls, run_benchmark, tensor_bytes
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

# name -> (B, Ck, Cv, M, (H, W), devices)
CASES = {
    "CFC 1/32 of 1024x2048 B1 N32x64 M100 Ck32 Cv256": (1, 32, 256, 100, (32, 64), DEVICES),
    "CFC 1/32 of 1024x2048 B16 N32x64 M100 Ck32 Cv256": (16, 32, 256, 100, (32, 64), DEVICES),
    "B4 N64x128 M100 Ck32 Cv256": (4, 32, 256, 100, (64, 128), DEVICES),
    # too slow for the shared CPU's rounds: GPU only
    "large B8 N128x256 M100 Ck32 Cv256": (8, 32, 256, 100, (128, 256), ["cuda"]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_pixel_context_attention(benchmark, impl, pass_, case, dtype, device):
    B, Ck, Cv, M, hw, devices = CASES[case]
    if dtype not in dtypes_for(device) or device not in devices:
        pytest.skip(f"{case} in {dtype} is not benchmarked on {device}")
    if impl == "sdpa" and device != "cuda":
        pytest.skip("SDPA is the CUDA baseline")
    q, k, v = make_inputs(B, Ck, Cv, M, hw, logit_scale=3.0, dtype=dtype, device=device)
    N = hw[0] * hw[1]
    # Output and the float32 log-sum-exp written; query, key and value read.
    written = B * Cv * N * q.element_size() + B * N * 4
    run_benchmark(benchmark, IMPLS[impl], (q, k, v), op="pixel_context_attention", case=case,
                  impl=impl, pass_=pass_, bytes_moved=tensor_bytes(q, k, v) + written)
