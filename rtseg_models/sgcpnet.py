"""SGCPNet (paper 001): MobileNetV3-Small trunk, HFR, SGCP decoder with SW-Sum nodes.

Layout, C = 64:
- trunk taps at 1/8, 1/16, 1/32 (24, 48, 96 ch); HFR: biased 1x1 convs to 40, 112, 320 ch;
- SGCP inputs: P3, P4, P5 = 1x1 conv (bias) + BN to C of the HFR maps; P6 = 3x3/2 max pool of
  1x1 conv + BN of HFR-5, P7 = 3x3/2 max pool of P6 (1/128);
- top-down path: T_l = S-Conv(SW-Sum(P_l, T_{l+1})) for l = 6..3 (T_7 = P7);
- bottom-up path: B_l = S-Conv(SW-Sum(skip_l, T_l, B_{l-1})) for l = 4..6, where the skip input
  of levels 4 and 5 is its own 1x1 conv + BN of HFR-4 / HFR-5 and that of level 6 is P6;
  B_7 = S-Conv(SW-Sum(P7, B_6)) (B_3 = T_3);
- second top-down path: U_l = S-Conv(SW-Sum(B_l, U_{l+1})) for l = 6..3 (U_7 = B_7);
- classifier: 1x1 conv C->K with bias on U_3 (1/8), bilinear upsampling to the input size.
SW-Sum (`scalar_weighted_sum`) brings every input to the size of its first input (nearest
upsampling of coarser maps, 3x3/2 max pooling of finer ones). S-Conv is the separable conv:
3x3 depthwise (no bias), 1x1 pointwise (bias), BN.

`variant="paper"` (default) uses the paper's raw learnable scalars (Eq. 2-3), initialised to 1;
`variant="released"` the released code's fusion: weights through ReLU and divided by their sum
+ 1e-4, swish before the S-Conv, initialised to 1. Both have the same parameters.

Parameter count for K = 19: 607,826 (trunk 431,180; HFR 37,528; SGCP 137,883; classifier
1,235), the released code's count and the paper's 0.61M (0.18M outside the trunk). The paper's
text does not mention the separate skip convs of levels 4 and 5 nor the conv biases; without the
skip convs the model would have 0.58M parameters, so they are kept as released.
Convolution MACs at 1024x2048 are about 3.3G (the paper's 4.5 GFLOPs were counted with thop,
which also counts BN, activations and pooling).
"""
from torch import nn
import torch.nn.functional as F

import rtseg_ops

from .api import register_model
from .layers import ConvBNAct, DepthwiseSeparableConv, SegmentationModel
from .mobilenetv3 import MobileNetV3SmallTrunk

HFR_CHANNELS = (40, 112, 320)


def sw_sum(num_inputs, released, ops):
    """The one place that builds SW-Sum nodes."""
    return rtseg_ops.ScalarWeightedSum(num_inputs, normalize=released,
                                       activation="swish" if released else None, ops=ops)


class FusionNode(nn.Module):
    """SW-Sum of 2 or 3 maps (output at the first one's size), then the separable conv."""

    def __init__(self, num_inputs, channels, released, ops):
        super().__init__()
        self.fuse = sw_sum(num_inputs, released, ops)
        self.conv = DepthwiseSeparableConv(channels, channels, dw_norm_act=False, pw_bias=True,
                                           act=None)

    def forward(self, *inputs):
        return self.conv(self.fuse(*inputs))


class SGCPModule(nn.Module):
    """Top-down, bottom-up and second top-down paths over P3..P7; returns the 1/8 map."""

    levels = 5  # P3..P7

    def __init__(self, in_channels=HFR_CHANNELS, channels=64, released=False, ops="fused"):
        super().__init__()
        c3, c4, c5 = in_channels
        self.p3_in = ConvBNAct(c3, channels, 1, act=None, bias=True)
        self.p4_in = ConvBNAct(c4, channels, 1, act=None, bias=True)
        self.p5_in = ConvBNAct(c5, channels, 1, act=None, bias=True)
        self.p6_in = ConvBNAct(c5, channels, 1, act=None, bias=True)
        self.p4_skip = ConvBNAct(c4, channels, 1, act=None, bias=True)
        self.p5_skip = ConvBNAct(c5, channels, 1, act=None, bias=True)
        n = self.levels - 1
        self.top_down = nn.ModuleList(FusionNode(2, channels, released, ops) for _ in range(n))
        self.bottom_up = nn.ModuleList(FusionNode(3 if i < n - 1 else 2, channels, released, ops)
                                       for i in range(n))
        self.top_down2 = nn.ModuleList(FusionNode(2, channels, released, ops) for _ in range(n))

    @staticmethod
    def _pool(x):
        return F.max_pool2d(x, 3, stride=2, padding=1)

    @staticmethod
    def _descend(nodes, features):
        """features: maps from fine (P3) to coarse (P7); nodes[0] fuses the second-coarsest."""
        out = [features[-1]]
        for node, lateral in zip(nodes, reversed(features[:-1])):
            out.append(node(lateral, out[-1]))
        return out[::-1]

    def forward(self, c3, c4, c5):
        p6 = self._pool(self.p6_in(c5))
        p = [self.p3_in(c3), self.p4_in(c4), self.p5_in(c5), p6, self._pool(p6)]
        t = self._descend(self.top_down, p)
        skips = [self.p4_skip(c4), self.p5_skip(c5), p[3]]
        b = [t[0]]
        for i, node in enumerate(self.bottom_up):
            level = i + 1
            if level < self.levels - 1:
                b.append(node(skips[i], t[level], b[-1]))
            else:
                b.append(node(p[-1], b[-1]))
        return self._descend(self.top_down2, b)[0]


@register_model("sgcpnet")
class SGCPNet(SegmentationModel):
    """SGCPNet with K = `num_classes` outputs (paper 001, released layout; see module docstring).

    `variant`: "paper" (raw SW-Sum scalars) or "released" (normalised scalars + swish).
    `ops`: "fused" runs the rtseg_ops kernels, "reference" their PyTorch references.
    `pretrained`: optional path of a state dict for the trunk (loaded strictly).
    forward(x) -> logits (B, K, H, W) at the input size."""

    def __init__(self, num_classes=19, variant="paper", ops="fused", channels=64,
                 pretrained=None):
        super().__init__(ops)
        if variant not in ("paper", "released"):
            raise ValueError(f"variant must be 'paper' or 'released', got {variant!r}")
        self.backbone = MobileNetV3SmallTrunk(pretrained)
        self.hfr = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for c_in, c_out in
                                 zip(self.backbone.out_channels, HFR_CHANNELS))
        self.sgcp = SGCPModule(HFR_CHANNELS, channels, variant == "released", ops)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        features = [hfr(f) for hfr, f in zip(self.hfr, self.backbone(x))]
        logits = self.classifier(self.sgcp(*features))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)
