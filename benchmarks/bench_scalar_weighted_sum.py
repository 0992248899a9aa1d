"""scalar_weighted_sum against the reference composite (resize_to per input, then the weighted
sum) at SGCPNet's fusion nodes for a 1024x2048 image: C=64, levels 1/8 (128x256) to 1/128 (8x16);
top-down nodes fuse a level with the upsampled coarser one (2 inputs), bottom-up nodes add the
max-pooled finer level (3 inputs). Normalised weights and swish, as the heaviest fused variant."""
import pytest

from bench_harness import (DEVICES, LAYOUTS, PASSES, parametrize_dtypes, parametrize_impls,
                           parametrize_layouts, resolve_impl, run_benchmark,
                           skip_unless_benchmarked, tensor_bytes)
from test_scalar_weighted_sum import make_inputs, op, ref

IMPLS = {"rtseg": op, "reference": ref}
OPTIONS = dict(normalize=True, activation="swish")
LEVELS = {8: (128, 256), 16: (64, 128), 32: (32, 64), 64: (16, 32), 128: (8, 16)}

# name -> (B, C, input sizes; the first is the output's)
CASES = {
    "top-down 2in 1/8 B2 C64": (2, 64, [LEVELS[8], LEVELS[16]]),
    "top-down 2in 1/32 B2 C64": (2, 64, [LEVELS[32], LEVELS[64]]),
    "top-down 2in 1/64 B2 C64": (2, 64, [LEVELS[64], LEVELS[128]]),
    "bottom-up 3in 1/16 B2 C64": (2, 64, [LEVELS[16], LEVELS[16], LEVELS[8]]),
    "bottom-up 3in 1/64 B2 C64": (2, 64, [LEVELS[64], LEVELS[64], LEVELS[32]]),
    "bottom-up 3in 1/128 B2 C64": (2, 64, [LEVELS[128], LEVELS[128], LEVELS[64]]),
}


@pytest.mark.parametrize("device", DEVICES)
@parametrize_dtypes
@parametrize_layouts
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_", PASSES)
@parametrize_impls(IMPLS)
def test_scalar_weighted_sum(benchmark, impl, pass_, case, layout, dtype, device):
    skip_unless_benchmarked(device, dtype, layout, impl)
    B, C, sizes = CASES[case]
    args = make_inputs(sizes, B=B, C=C, dtype=dtype, device=device, layout=LAYOUTS[layout])
    out_bytes = args[0].numel() * args[0].element_size()
    fn = resolve_impl(IMPLS, impl)
    run_benchmark(benchmark, lambda *a: fn(*a, **OPTIONS), args, op="scalar_weighted_sum",
                  case=case, impl=impl, pass_=pass_, layout=layout,
                  bytes_moved=tensor_bytes(*args) + out_bytes)
