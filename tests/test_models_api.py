"""The shared model API: registry, ops switch, flop formulas, BN folding, ResNet-18 loading."""
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import rtseg_models
import rtseg_ops
from model_harness import randomize_
from rtseg_models import api
from rtseg_models.layers import ConvBNAct, DepthwiseSeparableConv, fuse_for_inference, resolve_op
from rtseg_models.resnet import BasicBlock, ResNet18


def test_registry():
    assert {"csfcn", "msfnet"} <= set(rtseg_models.list_models())
    assert isinstance(rtseg_models.create_model("msfnet", num_classes=3, ops="reference",
                                                levels=2), rtseg_models.MSFNet)
    with pytest.raises(ValueError, match="name: unknown model 'nope'"):
        rtseg_models.create_model("nope")
    with pytest.raises(ValueError, match="ops: expected one of"):
        rtseg_models.create_model("csfcn", ops="triton")
    with pytest.raises(ValueError, match="already registered"):
        rtseg_models.register_model("csfcn")(nn.Identity)


def test_resolve_op():
    assert resolve_op("pyramid_pool", "reference") is rtseg_ops.reference.pyramid_pool
    assert resolve_op("grouped_flow_warp", "reference") is rtseg_ops.reference.grouped_flow_warp
    assert resolve_op("grouped_flow_warp", "fused") is rtseg_ops.grouped_flow_warp
    for name in ("pyramid_pool", "pixel_context_attention", "gated_flow_fusion",
                 "spatial_aware_pool"):  # whichever this build has, or its reference
        expected = getattr(rtseg_ops, name, getattr(rtseg_ops.reference, name))
        assert resolve_op(name, "fused") is expected
    with pytest.raises(ValueError, match="ops"):
        resolve_op("pyramid_pool", "fast")


def flops_of(fn, *args):
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


FLOP_CASES = {  # op -> (args, the args of its flop formula)
    "pixel_context_attention": lambda: (
        (torch.randn(2, 8, 5, 7), torch.randn(2, 8, 13), torch.randn(2, 24, 13)),
        ((2, 8, 5, 7), (2, 8, 13), (2, 24, 13))),
    "factorized_dw_conv": lambda: (
        (torch.randn(2, 6, 9, 10), torch.randn(6, 1, 3, 1), torch.randn(6, 1, 1, 3), 3),
        ((2, 6, 9, 10), (6, 1, 3, 1), (6, 1, 1, 3), 3)),
}


@pytest.mark.parametrize("name", list(FLOP_CASES))
def test_flop_formulas_equal_the_references_counts(name):
    """Each formula counts what FlopCounterMode counts for the op's reference; where this build
    has the op, its public function (the custom op on CPU) is counted the same."""
    assert set(FLOP_CASES) == set(api._FLOP_FORMULAS)
    args, formula_args = FLOP_CASES[name]()
    expected = flops_of(getattr(rtseg_ops.reference, name), *args)
    assert api._FLOP_FORMULAS[name](*formula_args) == expected
    if hasattr(rtseg_ops, name):
        assert flops_of(getattr(rtseg_ops, name), *args) == expected


def test_profile():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                        nn.Conv2d(8, 4, 1, groups=2))
    net.train()
    result = rtseg_models.profile(net, (2, 3, 10, 12))
    macs = 2 * 10 * 12 * (8 * 3 * 9 + 4 * 4)
    assert result == dict(params=sum(p.numel() for p in net.parameters()), macs=macs,
                          gmacs=macs / 1e9)
    assert net.training, "profile must restore the training mode"
    assert rtseg_models.profile(net, (2, 3, 10, 12), compute=True) == result


def test_fuse_for_inference_folds_conv_bn_pairs_only():
    torch.manual_seed(0)
    net = nn.Sequential(
        ConvBNAct(3, 8, 3, stride=2),
        BasicBlock(8, 16, stride=2),
        DepthwiseSeparableConv(16, 16),
        nn.ReLU(),
        nn.BatchNorm2d(16),  # follows a ReLU: must stay
        ConvBNAct(16, 4, 1, norm=False, act=None))
    randomize_(net).eval()
    x = torch.randn(2, 3, 17, 23)
    with torch.no_grad():
        expected = net(x)
        assert fuse_for_inference(net) is net
        torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    left = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert left == [net[4]]
    assert not net.training


def test_activation_names():
    assert isinstance(ConvBNAct(2, 3, act="prelu")[2], nn.PReLU)
    assert ConvBNAct(2, 3, act="prelu")[2].weight.numel() == 3
    assert isinstance(ConvBNAct(2, 3, act=None)[2], nn.Identity)
    with pytest.raises(ValueError, match="act"):
        ConvBNAct(2, 3, act="gelu2")


def torchvision_resnet18_state(seed=0):
    """A state dict with torchvision's resnet18 names and shapes (written from its layout:
    conv1/bn1, layer1-4 of two BasicBlocks, downsample.0/1 in the first block of layers 2-4,
    fc 512->1000)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean"):
            state[f"{name}.{p}"] = torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for i, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            prefix = f"layer{i}.{b}"
            conv(f"{prefix}.conv1", c, cin if b == 0 else c, 3)
            bn(f"{prefix}.bn1", c)
            conv(f"{prefix}.conv2", c, c, 3)
            bn(f"{prefix}.bn2", c)
            if b == 0 and i > 1:
                conv(f"{prefix}.downsample.0", c, cin, 1)
                bn(f"{prefix}.downsample.1", c)
        cin = c
    state["fc.weight"] = torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


def test_pretrained_plain_stem_loads_every_tensor(tmp_path):
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything loads: nothing to report
        net = ResNet18(pretrained=str(path))
    own = net.state_dict()
    assert set(own) == set(state) - {"fc.weight", "fc.bias"}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    report = ResNet18().load_pretrained(str(wrapped))
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []


def test_pretrained_deep_stem_reports_what_did_not_load(tmp_path):
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = ResNet18(deep_stem=True)
    with pytest.warns(UserWarning, match=r"missing .*stem\.0\.0\.weight.*unexpected .*conv1\.weight"
                      r".*mismatched .*layer1\.0\.conv1\.weight: file \(64, 64, 3, 3\) vs model "
                      r"\(64, 128, 3, 3\)"):
        report = net.load_pretrained(str(path))
    assert "layer1.0.downsample.0.weight" in report["missing"]
    assert torch.equal(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    torch.save({"head.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="pretrained: no tensor"):
        net.load_pretrained(str(tmp_path / "other.pth"))


def test_pretrained_reaches_the_models(tmp_path):
    state = torchvision_resnet18_state()
    torch.save(state, tmp_path / "r18.pth")
    net = rtseg_models.create_model("msfnet", num_classes=3, pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])
