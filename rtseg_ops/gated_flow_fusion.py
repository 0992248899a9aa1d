"""gated_flow_fusion: the body of CSFCN's Spatial Feature Calibration after its offset conv."""
import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import check_choice, check_int, check_like, check_tensor, output_memory_format

OPS = ("fused", "reference")
_NAMES = ("high", "low", "flow_high", "flow_low", "gate_high", "gate_low")


def _check_args(high, low, flow_high, flow_low, gate_high, gate_low, groups):
    tensors = (high, low, flow_high, flow_low, gate_high, gate_low)
    for t, name in zip(tensors, _NAMES):
        check_tensor(t, name, dim=4)
    for t, name in zip(tensors[1:], _NAMES[1:]):
        check_like(t, high, name, "high")
    check_int(groups, "groups", 1)
    B, C, H, W = high.shape
    if C % groups:
        raise ValueError(f"high: channel count {C} is not divisible by groups={groups}")
    if H == 0 or W == 0:
        raise ValueError(f"high: expected a non-empty spatial size, got shape {tuple(high.shape)}")
    if tuple(low.shape[:2]) != (B, C):
        raise ValueError(f"low: expected batch {B} and {C} channels (those of high), got shape "
                         f"{tuple(low.shape)}")
    if low.shape[2] == 0 or low.shape[3] == 0:
        raise ValueError(f"low: expected a non-empty spatial size, got shape {tuple(low.shape)}")
    for t, name, channels in ((flow_high, "flow_high", 2 * groups),
                              (flow_low, "flow_low", 2 * groups),
                              (gate_high, "gate_high", 1), (gate_low, "gate_low", 1)):
        if tuple(t.shape) != (B, channels, H, W):
            raise ValueError(f"{name}: expected shape {(B, channels, H, W)} (batch and H, W of "
                             f"high{', 2*groups channels' if channels > 1 else ''}), got "
                             f"{tuple(t.shape)}")


def gated_flow_fusion(high, low, flow_high, flow_low, gate_high, gate_low, groups=2):
    """CSFCN's gated fusion of a fine and a coarse feature map (docs/ops.md section 4), in one pass.

    Args:
        high: ``(B, C, H, W)``, the fine (1/8) feature.
        low: ``(B, C, h, w)``, the coarse feature; any ``h, w >= 1``.
        flow_high, flow_low: ``(B, 2*groups, H, W)`` per-group displacements, channel ``2g``
            ``dx`` and ``2g+1`` ``dy``, in :func:`grouped_flow_warp`'s units (not pixels: the
            normalised position moves by ``dx / W``, about half an output pixel per unit, with
            ``align_corners=True``); non-finite values sample zero.
        gate_high, gate_low: ``(B, 1, H, W)`` gate logits.
        groups: number of channel groups; must divide ``C``.

    Returns:
        ``(B, C, H, W)``, channels_last when ``high`` is::

            up = F.interpolate(low, (H, W), mode="bilinear", align_corners=True)
            out = (1 + tanh(gate_low)) * grouped_flow_warp(up, flow_low, groups)
                + (1 + tanh(gate_high)) * grouped_flow_warp(high, flow_high, groups)

        with zeros padding and ``align_corners=True``. ``up`` is never stored: the kernels read
        it at each warp sample's four neighbours from ``low`` (up to 16 taps). Flows and gates
        may be channel slices of one conv output (no copies are made). Differentiable in all
        six tensors.
    """
    high, low, flow_high, flow_low, gate_high, gate_low = _autocast.cast_inputs(
        "gated_flow_fusion", high, low, flow_high, flow_low, gate_high, gate_low)
    _check_args(high, low, flow_high, flow_low, gate_high, gate_low, groups)
    if _backend.use_kernel("gated_flow_fusion", high.device.type):
        return torch.ops.rtseg.gated_flow_fusion(high, low, flow_high, flow_low, gate_high,
                                                 gate_low, groups)
    return reference.gated_flow_fusion(high, low, flow_high, flow_low, gate_high, gate_low, groups)


class GatedFlowFusion(nn.Module):
    """``nn.Module`` form of :func:`gated_flow_fusion`;
    ``forward(high, low, flow_high, flow_low, gate_high, gate_low)``. ``ops="reference"`` runs
    the PyTorch composite (``rtseg_ops.reference.gated_flow_fusion``) instead of the fused op."""

    def __init__(self, groups=2, ops="fused"):
        super().__init__()
        check_int(groups, "groups", 1)
        check_choice(ops, "ops", OPS)
        self.groups, self.ops = groups, ops

    def forward(self, high, low, flow_high, flow_low, gate_high, gate_low):
        fn = gated_flow_fusion if self.ops == "fused" else reference.gated_flow_fusion
        return fn(high, low, flow_high, flow_low, gate_high, gate_low, self.groups)

    def extra_repr(self):
        return f"groups={self.groups}, ops={self.ops!r}"


if _backend.extension_loaded():
    @torch.library.register_fake("rtseg::gated_flow_fusion")
    def _(high, low, flow_high, flow_low, gate_high, gate_low, groups):
        return torch.empty_like(high, memory_format=output_memory_format(high))

    @torch.library.register_fake("rtseg::gated_flow_fusion_backward")
    def _(grad_output, high, low, flow_high, flow_low, gate_high, gate_low, groups):
        dense = [torch.empty_like(t, memory_format=output_memory_format(t)) for t in (high, low)]
        rest = [torch.empty_like(t, memory_format=torch.contiguous_format)
                for t in (flow_high, flow_low, gate_high, gate_low)]
        return tuple(dense + rest)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:6])
        ctx.groups = inputs[6]

    def _backward(ctx, grad_output):
        grads = torch.ops.rtseg.gated_flow_fusion_backward(grad_output, *ctx.saved_tensors,
                                                           ctx.groups)
        return tuple(g if needed else None
                     for g, needed in zip(grads, ctx.needs_input_grad[:6])) + (None,)

    torch.library.register_autograd("rtseg::gated_flow_fusion", _backward,
                                    setup_context=_setup_context)

_backend.register_op("gated_flow_fusion", cpu="C++", cuda="CUDA")
_autocast.register("gated_flow_fusion", cuda_policy="promote")
