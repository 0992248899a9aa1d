"""MSFNet (paper 003): ResNet-18, Spatial Aware Pooling, Multi-features Fusion Module, two
upsampling branches and Class Boundary Supervision.

The paper released no code; the choices it leaves open are listed in `MSFNet`'s docstring.
"""
import torch
import torch.nn.functional as F
from torch import nn

import rtseg_ops

from .api import register_model
from .layers import ConvBNAct, DepthwiseSeparableConv, SegmentationModel, resolve_op
from .resnet import ResNet18

# Stage i (1-based) of ResNet-18 is at 1/2**(i + 1) of the input.
_STAGE_CHANNELS = ResNet18.channels


class _SpatialAwarePool(nn.Module):
    """Stand-in for rtseg_ops.SpatialAwarePool while this build lacks it."""

    def __init__(self, levels, count_include_pad, ops):
        super().__init__()
        self.levels, self.count_include_pad = levels, count_include_pad
        self.spatial_aware_pool = resolve_op("spatial_aware_pool", ops)

    def forward(self, x):
        return self.spatial_aware_pool(x, self.levels, self.count_include_pad)


def make_spatial_aware_pool(levels, count_include_pad=True, ops="fused"):
    if hasattr(rtseg_ops, "SpatialAwarePool"):
        return rtseg_ops.SpatialAwarePool(levels, count_include_pad, ops=ops)
    return _SpatialAwarePool(levels, count_include_pad, ops)


def mfm_inputs(levels):
    """{r: [(stage, times pooled)]} for every resolution 1/2**r the decoder uses (r = 3 .. 5 +
    levels), in stage order; stage 1 unpooled (1/4) is not used."""
    inputs = {}
    for stage in range(1, 5):
        for j in range(0 if stage > 1 else 1, levels + 1):
            inputs.setdefault(stage + 1 + j, []).append((stage, j))
    return dict(sorted(inputs.items()))


class UpsamplingBranch(nn.Module):
    """From the coarsest MFM output up to 1/8: each stage is a 3x3 ConvBNReLU of
    (bilinear upsampling of the previous stage + the MFM output at its resolution)."""

    def __init__(self, num_stages, channels):
        super().__init__()
        self.stages = nn.ModuleList(ConvBNAct(channels, channels, 3) for _ in range(num_stages))

    def forward(self, fused):  # fused: MFM outputs from coarsest to finest
        x = None
        for feature, stage in zip(fused, self.stages):
            if x is not None:
                feature = feature + F.interpolate(x, feature.shape[-2:], mode="bilinear",
                                                  align_corners=False)
            x = stage(feature)
        return x


@register_model("msfnet")
class MSFNet(SegmentationModel):
    """MSFNet on ResNet-18 (paper 003). Eval mode returns logits at the input resolution;
    training mode with CBS returns (logits, boundary_logits at 1/8) for `msfnet_loss`.

    Args:
        num_classes: K.
        ops: "fused" (rtseg_ops kernels) or "reference" (their PyTorch references).
        pretrained: path of a torchvision-format ResNet-18 state dict for the backbone.
        levels: SAP levels per stage (paper: 5 at 1024x2048, 3 on CamVid).
        channels: width of the MFM outputs and of every upsampling-branch stage.
        cbs: two branches with Class Boundary Supervision (default) or one branch (the paper's
            "without CBS" model).
        count_include_pad: of SAP's average pooling.

    Design choices the paper leaves open (it gives no code):
    - Backbone: torchvision's ResNet-18 with the plain stem (paper: "Resnet-18 ... pre-trained
      on ImageNet").
    - SAP: `spatial_aware_pool` after each of the four stages, pooling level j with stride
      s = 2**j, kernel 2s + 1, padding s (the paper's text says kernel 2**(2j+1) in one
      formula and "stride x 2 + 1" in Table 5; we follow Table 5 and docs/ops.md), average pooling
      counting the padding (PyTorch's default). `levels` is fixed at construction, not derived
      from the input size, so the weights do not depend on it; any input size works since each
      level has ceil(h / s) >= 1 rows, and the sizes of maps meeting at a resolution agree.
    - MFM: at each resolution 1/8 ... 1/2**(5 + levels), the unpooled stage output (stages 2-4)
      and every SAP level of that size are concatenated in stage order and fused by a
      depthwise-separable 3x3 conv (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU) to
      `channels` (128). Stage 1's own 1/4 map is not used (paper, Sec. 3.1). One MFM feeds both
      branches.
    - Branch stage: sum of the bilinearly upsampled (align_corners=False) previous stage and the
      MFM output, then a 3x3 ConvBNReLU; the branches have identical structure and separate
      weights, and share nothing but the MFM outputs.
    - Fusion and classifier: at 1/8 the two branch outputs are concatenated and a
      depthwise-separable conv (depthwise 3x3 + BN + ReLU, pointwise 1x1 to K with bias) gives
      the logits, bilinearly upsampled to the input size (align_corners=False). Without CBS the
      same conv reads the single branch.
    - CBS head: a 1x1 conv with bias on the second branch's 1/8 output to K + 1 classes:
      0 = not a boundary, c + 1 = boundary pixel of class c. The paper labels non-boundary
      pixels 0, which would collide with class 0 (Cityscapes' road), hence the shift.
    - Boundary labels (`class_boundary_labels`): width 1 (the paper's best, Table 4) in
      Chebyshev distance (a 3x3 neighbourhood), computed on the labels resized to the boundary
      logits' size by nearest-neighbour sampling (the paper supervises at 1/8); ignored pixels
      stay ignored and neither they nor the image border make a pixel a boundary.
    - Loss (`msfnet_loss`): CE(logits, labels) + lambda * CE(boundary logits, boundary
      labels), lambda = 1 (paper), both with the ignore index.
    """

    def __init__(self, num_classes=19, ops="fused", pretrained=None, levels=5, channels=128,
                 cbs=True, count_include_pad=True):
        super().__init__(ops)
        self.num_classes, self.levels, self.cbs = num_classes, levels, cbs
        self.backbone = ResNet18(deep_stem=False, pretrained=pretrained)
        self.sap = make_spatial_aware_pool(levels, count_include_pad, ops)
        # (stage, times pooled) of every MFM input, per resolution, coarsest first
        self.mfm_sources = list(reversed(mfm_inputs(levels).values()))
        self.mfm = nn.ModuleList(
            DepthwiseSeparableConv(sum(_STAGE_CHANNELS[s - 1] for s, _ in sources), channels)
            for sources in self.mfm_sources)
        num_branches = 2 if cbs else 1
        self.branches = nn.ModuleList(UpsamplingBranch(len(self.mfm), channels)
                                      for _ in range(num_branches))
        fused_channels = num_branches * channels
        self.classifier = nn.Sequential(
            ConvBNAct(fused_channels, fused_channels, 3, groups=fused_channels),
            nn.Conv2d(fused_channels, num_classes, 1))
        self.boundary_head = nn.Conv2d(channels, num_classes + 1, 1) if cbs else None

    def forward(self, x):
        # pyramids[stage - 1][j]: the stage's output pooled j times (j = 0: as is)
        pyramids = [[feature, *self.sap(feature)] for feature in self.backbone(x)]
        fused = [mfm(torch.cat([pyramids[s - 1][j] for s, j in sources], dim=1))
                 for sources, mfm in zip(self.mfm_sources, self.mfm)]
        outputs = [branch(fused) for branch in self.branches]
        logits = self.classifier(torch.cat(outputs, dim=1))
        logits = F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)
        if self.training and self.cbs:
            return logits, self.boundary_head(outputs[1])
        return logits


def class_boundary_labels(labels, width=1, ignore_index=255):
    """MSFNet's class-boundary targets of integer `labels` (B, H, W): a pixel whose
    (2*width+1)^2 neighbourhood holds another (non-ignored) class gets its class + 1, every other
    pixel 0; pixels equal to `ignore_index` stay `ignore_index`."""
    valid = labels != ignore_index
    values = labels.unsqueeze(1).to(torch.float32)
    window = dict(kernel_size=2 * width + 1, stride=1, padding=width)
    # out-of-image positions are -inf inside max_pool2d, so the border makes no boundary
    highest = F.max_pool2d(torch.where(valid.unsqueeze(1), values, -1.0), **window)
    lowest = -F.max_pool2d(torch.where(valid.unsqueeze(1), -values, -float("inf")), **window)
    boundary = valid & ((highest > values) | (lowest < values)).squeeze(1)
    out = torch.where(boundary, labels + 1, torch.zeros_like(labels))
    return torch.where(valid, out, labels)


def msfnet_loss(outputs, labels, ignore_index=255, boundary_weight=1.0):
    """Training loss of MSFNet's outputs: CE on the logits at full resolution, plus
    `boundary_weight` x CE on the 1/8 boundary logits against `class_boundary_labels` of the
    labels nearest-resized to that size (when the model has CBS)."""
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, labels, ignore_index=ignore_index)
    logits, boundary_logits = outputs
    small = F.interpolate(labels.unsqueeze(1).to(torch.float32), boundary_logits.shape[-2:],
                          mode="nearest").squeeze(1).to(labels.dtype)
    boundary = class_boundary_labels(small, 1, ignore_index)
    return (F.cross_entropy(logits, labels, ignore_index=ignore_index)
            + boundary_weight * F.cross_entropy(boundary_logits, boundary,
                                                ignore_index=ignore_index))
