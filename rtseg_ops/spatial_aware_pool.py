"""spatial_aware_pool: MSFNet's Spatial Aware Pooling, every pooling level from one read."""
import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import check_bool, check_choice, check_tensor, output_memory_format

MAX_LEVELS = 6  # csrc/common/spatial_aware_pool.h: kSapMaxLevels
OPS = ("fused", "reference")


def _check_levels(levels):
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels: expected an integer in [1, {MAX_LEVELS}], got {levels!r}")


def _check_args(x, levels, count_include_pad):
    check_tensor(x, "x", dim=4)
    _check_levels(levels)
    check_bool(count_include_pad, "count_include_pad")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x: expected a non-empty spatial size, got shape {tuple(x.shape)}")


def _level_shape(x, level):
    s = 2 ** level
    B, C, H, W = x.shape
    return (B, C, -(-H // s), -(-W // s))


def spatial_aware_pool(x, levels=5, count_include_pad=True):
    """Average-pool `x` at strides 2, 4, ..., 2**levels in one pass (docs/ops.md section 7).

    Args:
        x: ``(B, C, H, W)``.
        levels: number of pooling levels, 1 to 6.
        count_include_pad: as in ``F.avg_pool2d``: divide by the full window ``(2s+1)**2``
            (True) or by the number of pixels of the window inside the map (False).

    Returns:
        A list of ``levels`` tensors, channels_last when ``x`` is. Level ``j`` (1-based) is
        ``F.avg_pool2d(x, 2*s + 1, stride=s, padding=s, count_include_pad=count_include_pad)``
        with ``s = 2**j``, of size ``(B, C, ceil(H/s), ceil(W/s))``. Differentiable in ``x``.
        The kernels sum in float32 (float64 for float64 input) without subtracting prefix sums,
        so large offsets such as ``1e4 + noise`` keep float32 precision.
    """
    x, = _autocast.cast_inputs("spatial_aware_pool", x)
    _check_args(x, levels, count_include_pad)
    if _backend.use_kernel("spatial_aware_pool", x.device.type):
        return list(torch.ops.rtseg.spatial_aware_pool(x, levels, count_include_pad))
    return reference.spatial_aware_pool(x, levels, count_include_pad)


class SpatialAwarePool(nn.Module):
    """``nn.Module`` form of :func:`spatial_aware_pool`; ``forward(x)`` returns the list of
    levels. ``ops="reference"`` runs ``rtseg_ops.reference.spatial_aware_pool`` instead of the
    fused op (same results, for comparisons)."""

    def __init__(self, levels=5, count_include_pad=True, *, ops="fused"):
        super().__init__()
        _check_levels(levels)
        check_bool(count_include_pad, "count_include_pad")
        check_choice(ops, "ops", OPS)
        self.levels, self.count_include_pad, self.ops = levels, count_include_pad, ops

    def forward(self, x):
        fn = spatial_aware_pool if self.ops == "fused" else reference.spatial_aware_pool
        return fn(x, self.levels, self.count_include_pad)

    def extra_repr(self):
        return f"levels={self.levels}, count_include_pad={self.count_include_pad}, " \
               f"ops={self.ops!r}"


if _backend.extension_loaded():
    @torch.library.register_fake("rtseg::spatial_aware_pool")
    def _(x, levels, count_include_pad):
        fmt = output_memory_format(x)
        return [x.new_empty(_level_shape(x, j)).contiguous(memory_format=fmt)
                for j in range(1, levels + 1)]

    @torch.library.register_fake("rtseg::spatial_aware_pool_backward")
    def _(grad_outputs, x, levels, count_include_pad):
        return torch.empty_like(x, memory_format=output_memory_format(x))

    def _setup_context(ctx, inputs, output):
        x, levels, count_include_pad = inputs
        ctx.save_for_backward(x)
        ctx.args = (levels, count_include_pad)

    def _backward(ctx, grad_outputs):
        x, = ctx.saved_tensors
        levels = ctx.args[0]
        # Levels the loss does not use arrive as None: they contribute nothing.
        grads = [g if g is not None else x.new_zeros(()).expand(_level_shape(x, j + 1))
                 for j, g in enumerate(grad_outputs)]
        grad_x = torch.ops.rtseg.spatial_aware_pool_backward(grads, x, levels, ctx.args[1])
        return grad_x, None, None

    torch.library.register_autograd("rtseg::spatial_aware_pool", _backward,
                                    setup_context=_setup_context)

_backend.register_op("spatial_aware_pool", cpu="C++", cuda="CUDA")
_autocast.register("spatial_aware_pool", cuda_policy="promote")
