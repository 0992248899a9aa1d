"""Pure-PyTorch references of every op, written from ../shared/specs/ops.md (the contract).

They are the ground truth of the tests, the baselines of the benchmarks, the fallback when a
kernel is missing and the `ops="reference"` path of the models. Keep them plain and obviously
right rather than fast.
"""
import torch
import torch.nn.functional as F


def grouped_flow_warp(input, flow, groups=1, size=None, padding_mode="zeros", align_corners=True):
    """ops.md section 1: per-group bilinear resampling of `input` displaced by `flow`."""
    B, C, h, w = input.shape
    H, W = flow.shape[-2:] if size is None else size
    xs = torch.linspace(-1.0, 1.0, W, dtype=flow.dtype, device=flow.device)
    ys = torch.linspace(-1.0, 1.0, H, dtype=flow.dtype, device=flow.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, [x, y])
    divisor = torch.tensor([W, H], dtype=flow.dtype, device=flow.device)
    offsets = flow.reshape(B, groups, 2, H, W).permute(0, 1, 3, 4, 2) / divisor
    grid = (base + offsets).reshape(B * groups, H, W, 2)
    out = F.grid_sample(input.reshape(B * groups, C // groups, h, w), grid, mode="bilinear",
                        padding_mode=padding_mode, align_corners=align_corners)
    return out.reshape(B, C, H, W)


def flow_warp(input, flow, size=None):
    """SFNet's flow_warp: grouped_flow_warp with one group."""
    return grouped_flow_warp(input, flow, 1, size)
