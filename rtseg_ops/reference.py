"""Pure-PyTorch references of every op, written from docs/ops.md (the contract).

They are the ground truth of the tests, the baselines of the benchmarks, the fallback when a
kernel is missing and the `ops="reference"` path of the models. Keep them plain and obviously
right rather than fast.
"""
import torch
import torch.nn.functional as F


def grouped_flow_warp(input, flow, groups=1, size=None, padding_mode="zeros", align_corners=True):
    """docs/ops.md section 1: per-group bilinear resampling of `input` displaced by `flow`."""
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


def pyramid_level_sizes(height, width, grids=(1, 2, 3, 6), keep_aspect_ratio=True):
    """docs/ops.md section 2: the (oh, ow) of each level, in the order of `grids`."""
    if keep_aspect_ratio:
        return [(g, max(1, round(g * width / height))) for g in grids]
    return [(g, g) for g in grids]


def pyramid_pool(x, grids=(1, 2, 3, 6), keep_aspect_ratio=True, cascade=True):
    """docs/ops.md section 2: pooled levels flattened and concatenated to (B, C, M)."""
    sizes = dict(zip(grids, pyramid_level_sizes(*x.shape[-2:], grids, keep_aspect_ratio)))
    if cascade:  # the largest level from x, every smaller one from the next larger level
        pooled, prev = {}, x
        for g in sorted(set(grids), reverse=True):
            prev = pooled[g] = F.adaptive_avg_pool2d(prev, sizes[g])
    else:
        pooled = {g: F.adaptive_avg_pool2d(x, sizes[g]) for g in grids}
    return torch.cat([pooled[g].flatten(2) for g in grids], dim=2)


def pixel_context_attention(query, key, value, scale=1.0):
    """docs/ops.md section 3: every pixel's query attends over M context vectors (softmax in fp32,
    or in float64 for float64 inputs)."""
    B, Ck, H, W = query.shape
    q = query.flatten(2).transpose(1, 2)                      # (B, N, Ck)
    logits = torch.bmm(q, key)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) * scale  # (B, N, M)
    probs = logits.softmax(dim=-1).to(value.dtype)
    out = torch.bmm(value, probs.transpose(1, 2))             # (B, Cv, N)
    return out.reshape(B, value.shape[1], H, W)


def gated_flow_fusion(high, low, flow_high, flow_low, gate_high, gate_low, groups=2):
    """docs/ops.md section 4: CSFCN SFC fusion of the fine `high` and the upsampled coarse `low`."""
    size = tuple(high.shape[-2:])
    up = F.interpolate(low, size, mode="bilinear", align_corners=True)
    return ((1 + torch.tanh(gate_low)) * grouped_flow_warp(up, flow_low, groups)
            + (1 + torch.tanh(gate_high)) * grouped_flow_warp(high, flow_high, groups))


def resize_to(x, size):
    """docs/ops.md section 5: bring x to `size` (same: as is; smaller in both dims: nearest;
    otherwise 3x3/2 max pooling, then nearest if the pooled size still differs)."""
    size = tuple(size)
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h <= size[0] and w <= size[1]:
        return F.interpolate(x, size, mode="nearest")
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size, mode="nearest")


def scalar_weighted_sum(inputs, weights, normalize=False, eps=1e-4, activation=None):
    """docs/ops.md section 5: SGCPNet's SW-Sum of 1 to 4 maps resized to inputs[0]'s size."""
    size = inputs[0].shape[-2:]
    if normalize:
        weights = F.relu(weights)
        weights = weights / (weights.sum() + eps)
    y = sum(weights[i] * resize_to(x, size) for i, x in enumerate(inputs))
    return y * torch.sigmoid(y) if activation == "swish" else y


def _dw_stage(x, weight, padding, dilation, scale, shift, prelu):
    y = F.conv2d(x, weight, padding=padding, dilation=dilation, groups=x.shape[1])
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1)
    if prelu is not None:
        y = torch.clamp(y, min=0) + prelu.view(1, -1, 1, 1) * torch.clamp(y, max=0)
    return y


def factorized_dw_conv(x, weight_v, weight_h, dilation=1, scale_v=None, shift_v=None,
                       prelu_v=None, scale_h=None, shift_h=None, prelu_h=None, order="vh"):
    """docs/ops.md section 6: 3x1 then 1x3 depthwise convs (or 1x3 then 3x1 for order="hv"), each
    with a per-channel affine (folded BN) and PReLU."""
    d = dilation
    v = (weight_v, (d, 0), (d, 1), scale_v, shift_v, prelu_v)
    h = (weight_h, (0, d), (1, d), scale_h, shift_h, prelu_h)
    first, second = (v, h) if order == "vh" else (h, v)
    return _dw_stage(_dw_stage(x, *first), *second)


def spatial_aware_pool(x, levels=5, count_include_pad=True):
    """docs/ops.md section 7: level j (1-based) is avg_pool2d with stride s = 2**j, kernel 2s+1,
    padding s."""
    return [F.avg_pool2d(x, 2 * s + 1, stride=s, padding=s, count_include_pad=count_include_pad)
            for s in (2 ** j for j in range(1, levels + 1))]
