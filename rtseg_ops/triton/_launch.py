"""Kernel launches as data: each launcher first builds the list of `Launch`es it will run, so
that tools/triton_compile_check.py can compile exactly those configurations for sm_90 without a
GPU (the launchers and the check share one choice of block sizes and warps)."""
import contextlib
from typing import Any, NamedTuple

import torch


class Launch(NamedTuple):
    kernel: Any  # a triton.JITFunction
    grid: tuple
    args: tuple
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3

    def run(self):
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps,
                               num_stages=self.num_stages)


def run(launches, device):
    """Run the launches in order on `device`'s current stream. Triton launches on the current
    CUDA device, so make it the tensors' one (a no-op for CPU tensors, which run under
    TRITON_INTERPRET=1)."""
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for launch in launches:
            launch.run()
