"""grouped_flow_warp: CSFCN's grouped offset resampling (SFNet's flow_warp generalised)."""
import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import (check_bool, check_choice, check_int, check_like, check_tensor,
                      output_memory_format)

PADDING_MODES = ("zeros", "border")


def _output_size(size):
    """None, an int (square, as F.interpolate takes it) or (H, W) -> None or an (H, W) tuple."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                 for s in pair):
        raise ValueError(f"size: expected None, a positive int or an (H, W) pair of positive "
                         f"ints, got {size!r}")
    return pair


def _check_args(input, flow, groups, size, padding_mode, align_corners):
    check_tensor(input, "input", dim=4)
    check_tensor(flow, "flow", dim=4)
    check_like(flow, input, "flow", "input")
    check_int(groups, "groups", 1)
    check_choice(padding_mode, "padding_mode", PADDING_MODES)
    check_bool(align_corners, "align_corners")
    B, C, h, w = input.shape
    if C % groups:
        raise ValueError(f"input: channel count {C} is not divisible by groups={groups}")
    if h == 0 or w == 0:
        raise ValueError(f"input: expected a non-empty spatial size, got shape {tuple(input.shape)}")
    if flow.shape[0] != B:
        raise ValueError(f"flow: expected batch {B} (that of input), got {flow.shape[0]}")
    if flow.shape[1] != 2 * groups:
        raise ValueError(f"flow: expected 2*groups = {2 * groups} channels, got {flow.shape[1]}")
    out_size = (h, w) if size is None else tuple(size)
    if tuple(flow.shape[-2:]) != out_size:
        what = "the given size" if size is not None else "input's (h, w), as size is None"
        raise ValueError(f"flow: expected spatial size {out_size} ({what}), got "
                         f"{tuple(flow.shape[-2:])}")


def grouped_flow_warp(input, flow, groups=1, size=None, padding_mode="zeros", align_corners=True):
    """Resample `input` at positions displaced by a per-group `flow` (docs/ops.md).

    Args:
        input: ``(B, C, h, w)``; group ``g`` owns channels ``[g*C/groups, (g+1)*C/groups)``.
        flow: ``(B, 2*groups, H, W)``; channel ``2g`` is group ``g``'s horizontal displacement
            ``dx`` and channel ``2g+1`` its vertical ``dy``. Units are SFNet's, not pixels: the
            normalised position moves by ``dx / W``, i.e. by ``dx * (w - 1) / (2 * W)`` input
            pixels with ``align_corners=True`` (``dx * w / (2 * W)`` with False), about half an
            output pixel per unit (``(W - 1) / (2 * W)``; 0.469 at ``w = W = 16``). Ports of
            SFNet code that called ``F.grid_sample`` without ``align_corners`` (default False)
            must pass ``align_corners=False`` to get the same samples. Non-finite values sample
            zero with zeros padding (the reference, ``grid_sample``, gives NaN).
        groups: number of channel groups; must divide ``C``.
        size: output ``(H, W)`` (an int ``s`` means ``(s, s)``); defaults to ``(h, w)`` and
            must equal ``flow.shape[-2:]``.
        padding_mode: ``"zeros"`` or ``"border"``, as in ``F.grid_sample``.
        align_corners: as in ``F.grid_sample``.

    Returns:
        ``(B, C, H, W)``, channels_last when ``input`` is. Output pixel ``(y, x)`` of group ``g``
        is the bilinear sample of the group's channels at the normalised position
        ``(linspace(-1, 1, W)[x] + dx / W, linspace(-1, 1, H)[y] + dy / H)``, i.e.
        ``F.grid_sample(input_g, grid, "bilinear", padding_mode, align_corners)``.
        Differentiable in ``input`` and ``flow``.

    With one group and the defaults this is SFNet's ``flow_warp``; with zero flow and a larger
    ``size`` it is bilinear upsampling with ``align_corners=True``.
    """
    input, flow = _autocast.cast_inputs("grouped_flow_warp", input, flow)
    size = _output_size(size)
    _check_args(input, flow, groups, size, padding_mode, align_corners)
    if _backend.use_kernel("grouped_flow_warp", input.device.type):
        return torch.ops.rtseg.grouped_flow_warp(input, flow, groups, padding_mode, align_corners)
    return reference.grouped_flow_warp(input, flow, groups, size, padding_mode, align_corners)


def flow_warp(input, flow, size=None):
    """SFNet's ``flow_warp(input, flow, size)``: ``grouped_flow_warp`` with one group, zeros
    padding and ``align_corners=True``."""
    return grouped_flow_warp(input, flow, 1, size)


class GroupedFlowWarp(nn.Module):
    """``nn.Module`` form of :func:`grouped_flow_warp`; ``forward(input, flow, size=None)``."""

    def __init__(self, groups=1, padding_mode="zeros", align_corners=True):
        super().__init__()
        check_int(groups, "groups", 1)
        check_choice(padding_mode, "padding_mode", PADDING_MODES)
        self.groups, self.padding_mode, self.align_corners = groups, padding_mode, align_corners

    def forward(self, input, flow, size=None):
        return grouped_flow_warp(input, flow, self.groups, size, self.padding_mode,
                                 self.align_corners)

    def extra_repr(self):
        return f"groups={self.groups}, padding_mode={self.padding_mode!r}, " \
               f"align_corners={self.align_corners}"


if _backend.extension_loaded():
    @torch.library.register_fake("rtseg::grouped_flow_warp")
    def _(input, flow, groups, padding_mode, align_corners):
        B, C = input.shape[:2]
        return input.new_empty((B, C) + tuple(flow.shape[-2:])).contiguous(
            memory_format=output_memory_format(input))

    @torch.library.register_fake("rtseg::grouped_flow_warp_backward")
    def _(grad_output, input, flow, groups, padding_mode, align_corners):
        grad_input = torch.empty_like(input, memory_format=output_memory_format(input))
        return grad_input, torch.empty_like(flow, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        input, flow, groups, padding_mode, align_corners = inputs
        ctx.save_for_backward(input, flow)
        ctx.args = (groups, padding_mode, align_corners)

    def _backward(ctx, grad_output):
        input, flow = ctx.saved_tensors
        grad_input, grad_flow = torch.ops.rtseg.grouped_flow_warp_backward(
            grad_output, input, flow, *ctx.args)
        needs = ctx.needs_input_grad
        return (grad_input if needs[0] else None, grad_flow if needs[1] else None,
                None, None, None)

    torch.library.register_autograd("rtseg::grouped_flow_warp", _backward,
                                    setup_context=_setup_context)

_backend.register_op("grouped_flow_warp", cpu="C++", cuda="CUDA")
_autocast.register("grouped_flow_warp", cuda_policy="promote")
