"""FBSNet (paper 002): semantic information branch of BRUs, spatial detail branch, FAM.

`variant="paper"` (default) follows the paper's Table I; `variant="released"` the released code's
layout. See `FBSNet` for the numbers.
"""
import torch
from torch import nn
import torch.nn.functional as F

import rtseg_ops

from .api import check_pretrained, register_model
from .layers import ConvBNAct, SegmentationModel

BN_EPS = 1e-3


def factorized_dw(channels, dilation, order, ops):
    """The one place that builds the BRU's paired depthwise convs."""
    return rtseg_ops.FactorizedDWConv(channels, dilation, order=order, bn_eps=BN_EPS, prelu=True,
                                      ops=ops)


def conv_bn_prelu(in_channels, out_channels, kernel_size, stride=1, groups=1):
    return ConvBNAct(in_channels, out_channels, kernel_size, stride=stride, groups=groups,
                     act="prelu", bn_eps=BN_EPS)


def bn_prelu(channels):
    return nn.Sequential(nn.BatchNorm2d(channels, eps=BN_EPS), nn.PReLU(channels))


class ChannelAttention(nn.Module):
    """CAM (ECA): x * sigmoid(conv1d_k3(gap(x)) over channels)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).unsqueeze(1))  # (B, 1, C)
        return x * torch.sigmoid(y).squeeze(1)[:, :, None, None]


class SpatialAttention(nn.Module):
    """SAM: a = sigmoid(7x7 conv of [channel mean, channel max]); returns x * a (paper) or a
    (released)."""

    def __init__(self, multiply=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.multiply = multiply

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        attention = torch.sigmoid(self.conv(pooled))
        # released: the branch output is the 1-channel map alone, broadcast-added to the SIB
        return x * attention if self.multiply else attention


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class BRU(nn.Module):
    """Bottleneck Residual Unit (paper Eqs. 1-7; BN + PReLU placed as in the released code),
    C channels, dilation d of the right branch:
    x' = 1x1 conv C->C/2 (BN, PReLU) of BN-PReLU(x);
    left: y11 = CAM(FDW_vh(x')), y1 = FDW_<left_order>(y11);
    right: y21 = CAM(FDW_vh,d(x')), y2 = FDW_hv,d(y21);
    out = shuffle(CAM(1x1 conv C/2->C (BN-PReLU(y1 + y2 + y11 + CAM(x') + y21))) + x), with
    C/2 shuffle groups. FDW_vh is the 3x1 then 1x3 depthwise pair (each with BN and PReLU),
    FDW_hv the 1x3 then 3x1 pair. Eq. 3 gives left_order "vh"; the released code uses "hv"."""

    def __init__(self, channels, dilation=1, left_order="vh", ops="fused"):
        super().__init__()
        half = channels // 2
        self.pre = bn_prelu(channels)
        self.reduce = conv_bn_prelu(channels, half, 1)
        self.left1 = factorized_dw(half, 1, "vh", ops)
        self.left2 = factorized_dw(half, 1, left_order, ops)
        self.right1 = factorized_dw(half, dilation, "vh", ops)
        self.right2 = factorized_dw(half, dilation, "hv", ops)
        self.cam_left, self.cam_mid, self.cam_right, self.cam_out = (ChannelAttention()
                                                                     for _ in range(4))
        self.mid = bn_prelu(half)
        self.expand = nn.Conv2d(half, channels, 1, bias=False)
        self.shuffle_groups = half

    def forward(self, x):
        x_half = self.reduce(self.pre(x))
        y11 = self.cam_left(self.left1(x_half))
        y21 = self.cam_right(self.right1(x_half))
        y = self.left2(y11) + self.right2(y21) + y11 + self.cam_mid(x_half) + y21
        return channel_shuffle(self.cam_out(self.expand(self.mid(y))) + x, self.shuffle_groups)


class Downsample(nn.Module):
    """ENet-style: concat(3x3/2 conv in -> out-in, 2x2 max pool), BN, PReLU."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1,
                              bias=False)
        self.act = bn_prelu(out_channels)

    def forward(self, x):
        # ceil_mode keeps the pooled size equal to the strided conv's on odd sizes
        return self.act(torch.cat([self.conv(x), F.max_pool2d(x, 2, ceil_mode=True)], 1))


class Upsample(nn.Module):
    """3x3/2 transposed conv (bias) to an explicit output size, BN, ReLU (ReLU6 released)."""

    def __init__(self, in_channels, out_channels, relu6=False):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                                         output_padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.relu6 = relu6

    def forward(self, x, size):
        y = self.bn(self.deconv(x, output_size=size))
        return F.relu6(y) if self.relu6 else F.relu(y)

    @torch.no_grad()
    def fold_bn(self):
        """Fold the eval BatchNorm into the transposed conv (its output channels are dim 1)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            scale, shift = rtseg_ops.fold_batchnorm(self.bn)
            self.deconv.weight.mul_(scale.view(1, -1, 1, 1))
            self.deconv.bias.mul_(scale).add_(shift)
            self.bn = nn.Identity()


class DetailResidualModule(nn.Module):
    """DRM on a C-channel input, every conv followed by BN + PReLU.

    Paper: 3x3 conv C->4C, two depthwise-separable 3x3 convs 4C->4C (3x3 depthwise + 1x1
    pointwise), 1x1 conv 4C->C, plus the input. This reads Table I's "16, 64, 64, 16" as the
    input and the layer widths and the text's "second and third convolutional layers" with 4C
    channels as their input and output: it has 20.6k parameters and 2.7 GMACs at 512x1024,
    close to the spatial detail branch's cost in Table II (22.5k, 2.95 GFLOPs), whereas a first
    conv C->C would give 9.9k and 1.3G. Released: plain 3x3 convs C->2C->8C->2C, no residual."""

    def __init__(self, channels, released=False):
        super().__init__()
        c = channels
        if released:
            self.layers = nn.Sequential(conv_bn_prelu(c, 2 * c, 3), conv_bn_prelu(2 * c, 8 * c, 3),
                                        conv_bn_prelu(8 * c, 2 * c, 3))
        else:
            self.layers = nn.Sequential(
                conv_bn_prelu(c, 4 * c, 3),
                conv_bn_prelu(4 * c, 4 * c, 3, groups=4 * c), conv_bn_prelu(4 * c, 4 * c, 1),
                conv_bn_prelu(4 * c, 4 * c, 3, groups=4 * c), conv_bn_prelu(4 * c, 4 * c, 1),
                conv_bn_prelu(4 * c, c, 1))
        self.residual = not released

    def forward(self, x):
        y = self.layers(x)
        return y + x if self.residual else y


class FeatureAggregation(nn.Module):
    """FAM (paper Eqs. 10-13) on X = BN-PReLU(X1 + X2): coordinate attention with `mid` reduced
    channels: F = hardswish(BN(1x1 conv [avg over W, avg over H])), K^h = sigmoid(T_h F^h),
    K^w = sigmoid(T_w F^w), Y = X * K^h * K^w."""

    def __init__(self, channels, mid):
        super().__init__()
        self.pre = bn_prelu(channels)
        self.squeeze = ConvBNAct(channels, mid, 1, act="hardswish", bias=True)
        self.to_h = nn.Conv2d(mid, channels, 1)
        self.to_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x1, x2):
        x = self.pre(x1 + x2)
        h, w = x.shape[-2:]
        pooled = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], 2)
        f_h, f_w = self.squeeze(pooled).split([h, w], 2)
        return x * torch.sigmoid(self.to_h(f_h)) * torch.sigmoid(self.to_w(f_w).transpose(2, 3))


class BRUStage(nn.Sequential):
    """BRUs with the given dilations, then BN + PReLU and CAM."""

    def __init__(self, channels, dilations, left_order, ops):
        super().__init__(*(BRU(channels, d, left_order, ops) for d in dilations),
                         bn_prelu(channels), ChannelAttention())


VARIANTS = {
    "paper": dict(widths=(16, 64, 128, 64, 16),
                  dilations=((1,) * 3, (1,) * 3, (1, 2, 5, 9, 17) * 4, (1,) * 3, (1,) * 3),
                  left_order="vh", fam_mid=4, released=False),
    "released": dict(widths=(16, 64, 128, 64, 32),
                     dilations=((1,) * 5, (1, 2, 5, 9, 17),
                                (1, 2, 5, 9, 1, 2, 5, 9, 2, 5, 9, 17, 2, 5, 9, 17),
                                (1,) * 3, (1,) * 3),
                     left_order="hv", fam_mid=8, released=True),
}


@register_model("fbsnet")
class FBSNet(SegmentationModel):
    """FBSNet (paper 002) with K = `num_classes` outputs.

    Semantic information branch: initial block (three 3x3 convs 3->16, the first stride 2, BN +
    PReLU), BN-PReLU, CAM, BRU stage at 1/2, downsample, BRU stage at 1/4, downsample, BRU stage
    at 1/8; decoder: upsample, BRU stage at 1/4, upsample, BRU stage at 1/2 (each stage ends with
    BN-PReLU and CAM). Spatial detail branch on the initial block's output: DRM, SAM. FAM fuses
    both at 1/2; a 2x2/2 transposed conv projects to K classes at full resolution (cropped to
    the input size when it is odd). Where the paper is silent (BN/PReLU placement, biases,
    ReLU6, the projection) the released code fills the gap.

    `variant="paper"` (Table I): 3 / 3 / 20 encoder BRUs at 16 / 64 / 128 ch (the 128-ch
    dilations (1, 2, 5, 9, 17) x 4), 3 + 3 decoder BRUs at 64 / 16 ch, DRM 16->64->64->64->16
    with separable middle convs, SAM multiplied, FAM at 16 ch with reduction 4. K = 19: 601,235
    parameters (Table II: 0.615419M, -2.3%) and 9.08 GMACs at 512x1024 (Table II: 9.7037
    GFLOPs, -6.4%). The rest is not recoverable from the text: Table II's SDB costs 22.5k
    parameters and 2.95 GFLOPs against this DRM's 20.6k and 2.7 GMACs, and Table II is
    measured on CamVid (K = 11), which only widens the gap.
    `variant="released"`: 5 / 5 / 16 encoder BRUs (64-ch dilations 1, 2, 5, 9, 17; 128-ch
    dilations 1, 2, 5, 9 twice then 2, 5, 9, 17 twice), 32-ch decoder tail and FAM (8 reduced
    channels), plain 3x3 DRM 16->32->128->32 whose SAM map (1 channel) is broadcast-added to
    the SIB, ReLU6 after the upsampling convs, the left branch's second pair 1x3 first. K = 19:
    607,103 parameters; the released code reports 607,199 because it also builds a BN + PReLU
    on 32 channels (96 parameters) that its forward never uses, left out here.
    `ops`: "fused" runs the rtseg_ops kernels, "reference" their PyTorch references.
    `pretrained`: optional path of a state dict of the whole network (loaded strictly); FBSNet
    trains from scratch, so there is no backbone checkpoint.
    forward(x) -> logits (B, K, H, W); any input size works.
    """

    def __init__(self, num_classes=19, variant="paper", ops="fused", pretrained=None):
        super().__init__(ops)
        check_pretrained(pretrained)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        cfg = VARIANTS[variant]
        c1, c2, c3, c4, c5 = cfg["widths"]
        stage = lambda c, i: BRUStage(c, cfg["dilations"][i], cfg["left_order"], ops)  # noqa
        self.initial = nn.Sequential(conv_bn_prelu(3, c1, 3, stride=2), conv_bn_prelu(c1, c1, 3),
                                     conv_bn_prelu(c1, c1, 3), bn_prelu(c1))
        self.cam0 = ChannelAttention()
        self.stage0 = stage(c1, 0)
        self.down1, self.stage1 = Downsample(c1, c2), stage(c2, 1)
        self.down2, self.stage2 = Downsample(c2, c3), stage(c3, 2)
        self.up1, self.stage3 = Upsample(c3, c4, cfg["released"]), stage(c4, 3)
        self.up2, self.stage4 = Upsample(c4, c5, cfg["released"]), stage(c5, 4)
        self.drm = DetailResidualModule(c1, cfg["released"])
        self.sam = SpatialAttention(multiply=not cfg["released"])
        self.fam = FeatureAggregation(c5, cfg["fam_mid"])
        self.project = nn.ConvTranspose2d(c5, num_classes, 2, stride=2)
        if pretrained is not None:
            self.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=True))

    def fuse_for_inference(self):
        """Fold every BatchNorm that follows a conv or transposed conv (the BRUs' depthwise
        pairs fold theirs on each eval call); the BNs of sums and concatenations stay."""
        super().fuse_for_inference()
        self.up1.fold_bn()
        self.up2.fold_bn()
        return self

    def forward(self, x):
        x0 = self.initial(x)
        s0 = self.stage0(self.cam0(x0))
        s1 = self.stage1(self.down1(s0))
        s2 = self.stage2(self.down2(s1))
        d1 = self.stage3(self.up1(s2, s1.shape[-2:]))
        d2 = self.stage4(self.up2(d1, s0.shape[-2:]))
        y = self.project(self.fam(d2, self.sam(self.drm(x0))))
        return y[..., :x.shape[-2], :x.shape[-1]]
