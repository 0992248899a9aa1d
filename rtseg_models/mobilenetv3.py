"""MobileNetV3-Small truncated after its 11th bottleneck: SGCPNet's trunk (paper 001).

The layout is the one of SGCPNet's released code: 431,180 parameters,
the paper's "BK 0.43M". It returns the features at 1/8 (24 ch), 1/16 (48 ch) and 1/32 (96 ch).
"""
import torch
from torch import nn

from .api import check_pretrained
from .layers import ConvBNAct

# kernel, in, expand, out, activation, squeeze-excite, stride
BOTTLENECKS = (
    (3, 16, 16, 16, "relu", True, 2),
    (3, 16, 72, 24, "relu", False, 2),
    (3, 24, 88, 24, "relu", False, 1),
    (5, 24, 96, 40, "hardswish", True, 2),
    (5, 40, 240, 40, "hardswish", True, 1),
    (5, 40, 240, 40, "hardswish", True, 1),
    (5, 40, 120, 48, "hardswish", True, 1),
    (5, 48, 144, 48, "hardswish", True, 1),
    (5, 48, 288, 96, "hardswish", True, 2),
    (5, 96, 576, 96, "hardswish", True, 1),
    (5, 96, 576, 96, "hardswish", True, 1),
)
# indices of the bottlenecks whose outputs are the 1/8, 1/16 and 1/32 features
TAPS = (2, 7, 10)


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(BN(W2 relu(BN(W1 gap(x))))), reduction 4, as in the released trunk."""

    def __init__(self, channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = ConvBNAct(channels, channels // 4, 1, act="relu")
        self.expand = ConvBNAct(channels // 4, channels, 1, act=lambda c: nn.Hardsigmoid())

    def forward(self, x):
        return x * self.expand(self.reduce(self.pool(x)))


class Bottleneck(nn.Module):
    """1x1 expand, kxk depthwise (stride), 1x1 project, SE after the projection; residual when
    stride is 1 (a 1x1 conv + BN when the channel count changes)."""

    def __init__(self, kernel, in_channels, expand, out_channels, act, se, stride):
        super().__init__()
        self.expand = ConvBNAct(in_channels, expand, 1, act=act)
        self.depthwise = ConvBNAct(expand, expand, kernel, stride=stride, groups=expand, act=act)
        self.project = ConvBNAct(expand, out_channels, 1, act=None)
        self.se = SqueezeExcite(out_channels) if se else nn.Identity()
        if stride != 1:
            self.shortcut = None
        elif in_channels != out_channels:
            self.shortcut = ConvBNAct(in_channels, out_channels, 1, act=None)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        y = self.se(self.project(self.depthwise(self.expand(x))))
        return y if self.shortcut is None else y + self.shortcut(x)


class MobileNetV3SmallTrunk(nn.Module):
    """Stem (3x3/2 conv 3->16, BN, hardswish) and the first 11 bottlenecks of MobileNetV3-Small.

    `pretrained`: optional path of a state dict with this module's parameter names (loaded
    strictly); nothing is downloaded. forward(x) -> (1/8 24-ch, 1/16 48-ch, 1/32 96-ch)."""

    out_channels = (24, 48, 96)

    def __init__(self, pretrained=None):
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, stride=2, act="hardswish")
        self.blocks = nn.ModuleList(Bottleneck(*row) for row in BOTTLENECKS)
        check_pretrained(pretrained)
        if pretrained is not None:
            self.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=True))

    def forward(self, x):
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                taps.append(x)
        return tuple(taps)
