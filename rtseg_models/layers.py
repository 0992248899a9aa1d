"""Blocks shared by every rtseg model, BatchNorm folding, and the fused/reference op switch."""
import torch
from torch import nn

import rtseg_ops

from .api import check_ops_setting

_ACTIVATIONS = {
    "relu": lambda c: nn.ReLU(inplace=True),
    "relu6": lambda c: nn.ReLU6(inplace=True),
    "prelu": lambda c: nn.PReLU(c),
    "hardswish": lambda c: nn.Hardswish(inplace=True),
    "silu": lambda c: nn.SiLU(inplace=True),
    "sigmoid": lambda c: nn.Sigmoid(),
}


def make_activation(act, channels):
    """`act` is None (identity), a name in _ACTIVATIONS, or a callable channels -> nn.Module."""
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        if act not in _ACTIVATIONS:
            raise ValueError(f"act: expected None, a callable or one of {sorted(_ACTIVATIONS)}, "
                             f"got {act!r}")
        return _ACTIVATIONS[act](channels)
    return act(channels)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias by default) -> BatchNorm2d -> activation; padding keeps the size at
    stride 1 unless given. norm=False drops the BatchNorm (then bias defaults to True)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None,
                 dilation=1, groups=1, bias=None, norm=True, act="relu", bn_eps=1e-5):
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = not norm
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                      bias=bias),
            nn.BatchNorm2d(out_channels, eps=bn_eps) if norm else nn.Identity(),
            make_activation(act, out_channels))


class DepthwiseSeparableConv(nn.Sequential):
    """kxk depthwise conv (+ BN + act when dw_norm_act) then 1x1 pointwise conv + BN + act.

    The defaults are the MobileNet form (BN and activation after both convs). SGCPNet's form is
    dw_norm_act=False, pw_bias=True, act=None (depthwise without bias, pointwise with bias, BN).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1,
                 dw_norm_act=True, pw_bias=False, act="relu", bn_eps=1e-5):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, dilation=dilation,
                      groups=in_channels, bias=False, norm=dw_norm_act,
                      act=act if dw_norm_act else None, bn_eps=bn_eps),
            ConvBNAct(in_channels, out_channels, 1, bias=pw_bias, act=act, bn_eps=bn_eps))


@torch.no_grad()
def _fold_bn(conv, bn):
    """A Conv2d computing bn(conv(x)) with bn's running statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        torch.rsqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(bias * scale + shift)
    return fused


def _conv_bn_pairs(module):
    """(conv name, bn name) pairs of `module`'s direct children where the BN reads only the
    conv's output: consecutive children of an nn.Sequential, or the pairs a module lists in its
    `bn_folds` attribute (for blocks whose forward is not sequential, e.g. ResNet blocks)."""
    pairs = list(getattr(module, "bn_folds", ()))
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        pairs += [(a, b) for a, b in zip(names, names[1:])]
    return [(a, b) for a, b in pairs
            if isinstance(module._modules.get(a), nn.Conv2d)
            and isinstance(module._modules.get(b), nn.BatchNorm2d)]


def fuse_for_inference(model):
    """Fold every BatchNorm2d into the Conv2d that feeds it (in place) and switch to eval mode;
    returns `model`, whose eval outputs are unchanged up to float rounding. BatchNorms that do
    not directly follow a conv are kept."""
    model.eval()
    for module in list(model.modules()):
        for conv_name, bn_name in _conv_bn_pairs(module):
            setattr(module, conv_name, _fold_bn(module._modules[conv_name],
                                                module._modules[bn_name]))
            setattr(module, bn_name, nn.Identity())
    return model


class SegmentationModel(nn.Module):
    """Base of every rtseg network: keeps the `ops` setting and offers fuse_for_inference()."""

    def __init__(self, ops="fused"):
        super().__init__()
        check_ops_setting(ops)
        self.ops = ops

    def fuse_for_inference(self):
        return fuse_for_inference(self)


def resolve_op(name, ops="fused"):
    """The function of op `name` for an `ops` setting: rtseg_ops' (kernels, with their own
    fallback) for "fused" when this build exports it, else the PyTorch reference."""
    check_ops_setting(ops)
    if ops == "reference" or not hasattr(rtseg_ops, name):
        return getattr(rtseg_ops.reference, name)
    return getattr(rtseg_ops, name)
