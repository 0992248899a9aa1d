"""CSFCN (paper 000): ResNet-18 + Context Feature Calibration + Spatial Feature Calibration.

    layer4 (1/32, 512) -> DRL (3x3 ConvBNReLU 512->256) -> CFC -> Y
    SFC(low=Y, high=layer2 (1/8, 128)) -> 3x3 ConvBNReLU 128->128 -> 1x1 128->64K -> PixelShuffle(8)

The fused ops come from rtseg_ops through `resolve_op` (CFC: pyramid_pool and
pixel_context_attention; SFC: gated_flow_fusion), so `ops="reference"` runs their PyTorch
references and the model picks up each kernel as soon as this build exports it.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .api import register_model
from .layers import ConvBNAct, SegmentationModel, resolve_op
from .resnet import ResNet18


class ContextFeatureCalibration(nn.Module):
    """CFC: every pixel attends over M pooled multi-scale contexts, then the Context
    Recalibration Block (CRB) refines the attended context E: Y = X + tanh(W2(W1(X + E))) * E + E.

    Paper defaults; the released code's variants are options:
    cascade=False (every pyramid level pooled from X directly), kv_norm=False (key and value
    are plain biased 1x1 convs instead of conv + BN + ReLU), crb_input="context" (CRB reads E
    alone, with BN + ReLU after W1, instead of X + E).
    """

    def __init__(self, channels=256, key_channels=32, grids=(1, 2, 3, 6), keep_aspect_ratio=True,
                 cascade=True, kv_norm=True, crb_input="sum", ops="fused"):
        super().__init__()
        if crb_input not in ("sum", "context"):
            raise ValueError(f"crb_input: expected 'sum' or 'context', got {crb_input!r}")
        self.grids, self.keep_aspect_ratio, self.cascade = tuple(grids), keep_aspect_ratio, cascade
        self.crb_input = crb_input
        self.query = nn.Conv2d(channels, key_channels, 1)
        kv_act = "relu" if kv_norm else None
        self.key = ConvBNAct(channels, key_channels, 1, norm=kv_norm, act=kv_act)
        self.value = ConvBNAct(channels, channels, 1, norm=kv_norm, act=kv_act)
        crb_mid = channels // 4
        if crb_input == "sum":
            self.crb_reduce = nn.Conv2d(channels, crb_mid, 1)
        else:
            self.crb_reduce = ConvBNAct(channels, crb_mid, 1)
        self.crb_expand = nn.Conv2d(crb_mid, channels, 3, padding=1)
        self.pyramid_pool = resolve_op("pyramid_pool", ops)
        self.pixel_context_attention = resolve_op("pixel_context_attention", ops)

    def forward(self, x):
        contexts = self.pyramid_pool(x, self.grids, self.keep_aspect_ratio, self.cascade)
        contexts = contexts.unsqueeze(-1)  # (B, C, M, 1): the 1x1 convs act per context vector
        key = self.key(contexts).squeeze(-1)
        value = self.value(contexts).squeeze(-1)
        context = self.pixel_context_attention(self.query(x), key, value)
        crb_in = x + context if self.crb_input == "sum" else context
        alpha = torch.tanh(self.crb_expand(self.crb_reduce(crb_in)))
        return x + alpha * context + context


class SpatialFeatureCalibration(nn.Module):
    """SFC with its dimension reduction (DRL): brings the coarse `low` and the fine `high` to
    `channels` with 3x3 ConvBNReLU, predicts per-group offsets and two gates from both, and
    fuses them with `gated_flow_fusion`:
    out = (1 + tanh(gate_low)) * warp(up(low), flow_low)
        + (1 + tanh(gate_high)) * warp(high, flow_high).

    The last conv of the offset block starts at zero, so the module starts as plain
    upsample-and-add fusion (zero offsets, gates 1). The 1x1 reduction of `low` (no bias) is
    applied before its bilinear upsampling rather than after: both are linear and the
    interpolation weights sum to 1, so the result is the same and the upsampled 128-channel map
    is never materialised. Offset channel layout (docs/ops.md): [0, 2G) flow_high,
    [2G, 4G) flow_low, 4G gate_low, 4G + 1 gate_high.
    """

    def __init__(self, low_channels=256, high_channels=128, channels=128, groups=2,
                 reduced_channels=32, ops="fused"):
        super().__init__()
        self.groups = groups
        self.low = ConvBNAct(low_channels, channels, 3)
        self.high = ConvBNAct(high_channels, channels, 3)
        self.reduce_low = nn.Conv2d(channels, reduced_channels, 1, bias=False)
        self.reduce_high = nn.Conv2d(channels, reduced_channels, 1, bias=False)
        self.offset = nn.Sequential(
            ConvBNAct(2 * reduced_channels, 2 * reduced_channels, 1),
            nn.Conv2d(2 * reduced_channels, 4 * groups + 2, 3, padding=1, bias=False))
        nn.init.zeros_(self.offset[-1].weight)
        self.gated_flow_fusion = resolve_op("gated_flow_fusion", ops)

    def forward(self, low, high):
        low, high = self.low(low), self.high(high)
        low_reduced = F.interpolate(self.reduce_low(low), high.shape[-2:], mode="bilinear",
                                    align_corners=True)
        offsets = self.offset(torch.cat([self.reduce_high(high), low_reduced], dim=1))
        G = self.groups
        return self.gated_flow_fusion(high, low, offsets[:, :2 * G], offsets[:, 2 * G:4 * G],
                                      offsets[:, 4 * G + 1:4 * G + 2], offsets[:, 4 * G:4 * G + 1],
                                      G)


@register_model("csfcn")
class CSFCN(SegmentationModel):
    """CSFCN on ResNet-18 (paper 000), logits at the input resolution.

    Args:
        num_classes: K, the number of output classes.
        ops: "fused" (rtseg_ops kernels) or "reference" (their PyTorch references).
        deep_stem: the released backbone's three-conv stem (default) or torchvision's stem.
        stem_width: width w of the deep stem (3->w->w->2w); see `ResNet18`.
        pretrained: path of a torchvision-format ResNet-18 state dict for the backbone.
        released: use the released code's CFC (direct pooling, plain key/value convs, CRB on
            the context alone) instead of the paper's.
        groups: SFC offset groups G.

    Inputs of any size work: the 1/8 logits are PixelShuffled to 8x their size and, when the
    input is not a multiple of 32, bilinearly resized to the input size.
    """

    def __init__(self, num_classes=19, ops="fused", deep_stem=True, stem_width=64,
                 pretrained=None, released=False, groups=2):
        super().__init__(ops)
        self.backbone = ResNet18(deep_stem, pretrained, stem_width)
        self.drl = ConvBNAct(512, 256, 3)
        self.cfc = ContextFeatureCalibration(256, 32, cascade=not released, kv_norm=not released,
                                             crb_input="context" if released else "sum", ops=ops)
        self.sfc = SpatialFeatureCalibration(256, 128, 128, groups, ops=ops)
        self.head = nn.Sequential(ConvBNAct(128, 128, 3), nn.Conv2d(128, 64 * num_classes, 1),
                                  nn.PixelShuffle(8))

    def forward(self, x):
        _, c2, _, c4 = self.backbone(x)
        out = self.head(self.sfc(self.cfc(self.drl(c4)), c2))
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=False)
        return out
