"""ResNet-18 backbone (plain or deep stem) returning the four stage features, with loading of a
torchvision-format ImageNet state dict from a local file (nothing is downloaded)."""
import warnings

import torch
from torch import nn

from .api import check_pretrained
from .layers import ConvBNAct


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity (or 1x1 conv + BN projection) shortcut; attribute
    names follow torchvision so its state dicts load as they are."""
    bn_folds = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 without its classifier; forward returns the outputs of layer1..layer4 at 1/4,
    1/8, 1/16 and 1/32 of the input with 64, 128, 256 and 512 channels.

    deep_stem=False: torchvision's stem (7x7/2 conv 3->64, BN, ReLU, 3x3/2 max pool).
    deep_stem=True: three 3x3 ConvBNReLU (3->w stride 2, w->w, w->2w) and the max pool, with
    w = stem_width. w = 64 (default) is CSFCN's released backbone: layer1 starts from 128
    channels with a 1x1 projection to 64. w = 32 is the ResNet-V1c stem (no projection).
    pretrained: path of a torchvision-format state dict, loaded with `load_pretrained`.
    """
    channels = (64, 128, 256, 512)
    bn_folds = (("conv1", "bn1"),)

    def __init__(self, deep_stem=False, pretrained=None, stem_width=64):
        super().__init__()
        self.deep_stem = deep_stem
        if deep_stem:
            w = stem_width
            self.stem = nn.Sequential(ConvBNAct(3, w, 3, stride=2), ConvBNAct(w, w, 3),
                                      ConvBNAct(w, 2 * w, 3))
            stem_channels = 2 * w
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            stem_channels = 64
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = stem_channels
        for i, channels in enumerate(self.channels):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(in_channels, channels, stride),
                                  BasicBlock(channels, channels))
            setattr(self, f"layer{i + 1}", layer)
            in_channels = channels
        self._init_weights()
        check_pretrained(pretrained)
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4

    def load_pretrained(self, path):
        """Copy the tensors of the state dict at `path` whose names and shapes match this
        backbone; the classifier (fc.*) is dropped. Warns listing what stayed at its
        initialisation (missing), what was not used (unexpected) and shape mismatches; raises
        when nothing matched. Returns dict(loaded=, missing=, unexpected=, mismatched=)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        state = {k.removeprefix("module."): v for k, v in state.items()
                 if not k.removeprefix("module.").startswith("fc.")}
        own = self.state_dict()
        loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        report = dict(
            loaded=sorted(loadable),
            missing=sorted(set(own) - set(loadable)),
            unexpected=sorted(set(state) - set(own)),
            mismatched=sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                              for k in set(state) & set(own) if own[k].shape != state[k].shape))
        if not loadable:
            raise ValueError(f"pretrained: no tensor of {path} matches ResNet18(deep_stem="
                             f"{self.deep_stem}); unexpected keys: {report['unexpected'][:8]}")
        self.load_state_dict(loadable, strict=False)
        problems = [f"{name} ({len(report[name])}): {', '.join(report[name])}"
                    for name in ("missing", "unexpected", "mismatched") if report[name]]
        if problems:
            warnings.warn(f"pretrained {path}: loaded {len(loadable)} tensors; "
                          + "; ".join(problems), stacklevel=2)
        return report

