"""pyramid_pool: CSFCN's cascaded pyramid pooling, every level from one read of the input."""
import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import check_bool, check_tensor, output_memory_format

MAX_LEVELS = 16  # csrc/common/pyramid_pool.h: kMaxPyramidLevels


def _check_grids(grids):
    if not isinstance(grids, (tuple, list)) or not 1 <= len(grids) <= MAX_LEVELS or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grids):
        raise ValueError(f"grids: expected a tuple of 1 to {MAX_LEVELS} positive integers, "
                         f"got {grids!r}")


def _check_args(x, grids, keep_aspect_ratio, cascade):
    check_tensor(x, "x", dim=4)
    _check_grids(grids)
    check_bool(keep_aspect_ratio, "keep_aspect_ratio")
    check_bool(cascade, "cascade")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x: expected a non-empty spatial size, got shape {tuple(x.shape)}")


def pyramid_pool(x, grids=(1, 2, 3, 6), keep_aspect_ratio=True, cascade=True):
    """Pool ``x`` into context vectors at several scales (docs/ops.md section 2).

    Args:
        x: ``(B, C, H, W)``.
        grids: level heights ``g``; the level size is ``(g, max(1, round(g * W / H)))`` when
            ``keep_aspect_ratio``, else ``(g, g)``.
        keep_aspect_ratio: see ``grids``.
        cascade: True (the CSFCN paper's CPP): the largest level is
            ``adaptive_avg_pool2d(x, size)`` and every smaller one is ``adaptive_avg_pool2d`` of
            the next larger level. False (the released code): every level is
            ``adaptive_avg_pool2d(x, size)``.

    Returns:
        ``(B, C, M)``: each level flattened row-major, concatenated in the order of ``grids``
        (``M = sum(oh * ow)``: 50 on a square map with the defaults, 100 on a 1:2 map).
        Differentiable in ``x``.
    """
    x, = _autocast.cast_inputs("pyramid_pool", x)
    _check_args(x, grids, keep_aspect_ratio, cascade)
    if _backend.use_kernel("pyramid_pool", x.device.type):
        return torch.ops.rtseg.pyramid_pool(x, list(grids), keep_aspect_ratio, cascade)
    return reference.pyramid_pool(x, tuple(grids), keep_aspect_ratio, cascade)


class PyramidPool(nn.Module):
    """``nn.Module`` form of :func:`pyramid_pool`."""

    def __init__(self, grids=(1, 2, 3, 6), keep_aspect_ratio=True, cascade=True):
        super().__init__()
        _check_grids(grids)
        check_bool(keep_aspect_ratio, "keep_aspect_ratio")
        check_bool(cascade, "cascade")
        self.grids, self.keep_aspect_ratio, self.cascade = tuple(grids), keep_aspect_ratio, cascade

    def forward(self, x):
        return pyramid_pool(x, self.grids, self.keep_aspect_ratio, self.cascade)

    def extra_repr(self):
        return f"grids={self.grids}, keep_aspect_ratio={self.keep_aspect_ratio}, " \
               f"cascade={self.cascade}"


if _backend.extension_loaded():
    @torch.library.register_fake("rtseg::pyramid_pool")
    def _(x, grids, keep_aspect_ratio, cascade):
        H, W = x.shape[-2:]
        M = sum(oh * ow for oh, ow in reference.pyramid_level_sizes(H, W, grids,
                                                                    keep_aspect_ratio))
        return x.new_empty((x.shape[0], x.shape[1], M))

    @torch.library.register_fake("rtseg::pyramid_pool_backward")
    def _(grad_output, x, grids, keep_aspect_ratio, cascade):
        return torch.empty_like(x, memory_format=output_memory_format(x))

    # The autograd kernel is C++ (csrc/autograd/pyramid_pool.cpp): register_autograd's Python
    # Function cost as much as both kernels at CSFCN's 1/32 map.

_backend.register_op("pyramid_pool", cpu="C++", cuda="CUDA")
_autocast.register("pyramid_pool", cuda_policy="promote")
