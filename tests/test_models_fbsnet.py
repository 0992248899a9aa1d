"""FBSNet: the paper's sizes and costs (Table I / II), the released layout, fused vs reference,
and the generic model checks."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtseg_models
from model_harness import (assert_close, check_channels_last, check_compile,
                           check_cuda_low_precision, check_eval_size, check_forward_backward,
                           check_fused_matches_reference, check_training_step, image,
                           make_model)
from op_harness import requires_cuda
from rtseg_models.api import count_parameters
from rtseg_models.fbsnet import BRU, channel_shuffle

K = 19
SMALL = (16, 32)      # 1/8: 2x4
ODD = (45, 67)        # odd at every scale
VARIANTS = ["paper", "released"]


def within(value, target, tolerance):
    return abs(value / target - 1) <= tolerance


def test_parameters_and_gmacs_match_table_ii():
    """Table II (full model): 0.615419M parameters (5%) and 9.7037 G at 512x1024 (10%), the
    same on the fused path (factorized_dw_conv counted by its flop formula)."""
    model = rtseg_models.create_model("fbsnet", num_classes=K)
    cost = rtseg_models.profile(model, (1, 3, 512, 1024))
    reference = rtseg_models.create_model("fbsnet", num_classes=K, ops="reference")
    assert rtseg_models.profile(reference, (1, 3, 512, 1024)) == cost
    assert within(cost["params"], 0.615419e6, 0.05), f"{cost['params'] / 1e6:.4f}M vs 0.6154M"
    assert within(cost["gmacs"], 9.7037, 0.10), f"{cost['gmacs']:.3f} GMACs vs 9.7037"


def test_released_parameter_count():
    """The released code's 607,199 for K = 19 counts a BN + PReLU(32) its forward never uses
    (3 x 32 parameters), which this model does not build."""
    model = rtseg_models.create_model("fbsnet", num_classes=K, variant="released")
    assert count_parameters(model) == 607_199 - 3 * 32


def test_table_i_layout():
    model = rtseg_models.create_model("fbsnet", num_classes=K, ops="reference")
    brus = lambda stage: [m for m in stage if isinstance(m, BRU)]  # noqa: E731
    assert [len(brus(s)) for s in (model.stage0, model.stage1, model.stage2, model.stage3,
                                   model.stage4)] == [3, 3, 20, 3, 3]
    assert [b.right1.dilation for b in brus(model.stage2)] == [1, 2, 5, 9, 17] * 4
    x = torch.zeros(1, 3, 512, 1024, device="meta")
    model = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad():
        x0 = model.initial(x)
        s0 = model.stage0(model.cam0(x0))
        s1 = model.stage1(model.down1(s0))
        s2 = model.stage2(model.down2(s1))
        d1 = model.stage3(model.up1(s2, s1.shape[-2:]))
        d2 = model.stage4(model.up2(d1, s0.shape[-2:]))
    shapes = [tuple(t.shape[1:]) for t in (x0, s0, s1, s2, d1, d2)]
    assert shapes == [(16, 256, 512), (16, 256, 512), (64, 128, 256), (128, 64, 128),
                      (64, 128, 256), (16, 256, 512)]


def test_bru_matches_equations_1_to_7():
    """An independent composition of the BRU from plain convs (paper Eqs. 1-7, BN/PReLU as
    released) equals the module in eval mode."""
    torch.manual_seed(0)
    bru = make_model("fbsnet", num_classes=K).stage1[1].eval()
    x = torch.randn(2, 64, 9, 11)

    def bn_prelu(seq, t):
        return seq[1](seq[0](t))

    def pair(fdw, t):
        d = fdw.dilation
        stages = {"v": (fdw.conv_v, fdw.bn_v, fdw.act_v, (3, 1), (d, 0), (d, 1)),
                  "h": (fdw.conv_h, fdw.bn_h, fdw.act_h, (1, 3), (0, d), (1, d))}
        for key in fdw.order:
            conv, bn, prelu, _, padding, dilation = stages[key]
            t = F.conv2d(t, conv.weight, padding=padding, dilation=dilation, groups=t.shape[1])
            t = prelu(bn(t))
        return t

    def cam(module, t):
        weights = torch.sigmoid(F.conv1d(t.mean((2, 3))[:, None], module.conv.weight, padding=1))
        return t * weights[:, 0, :, None, None]

    with torch.no_grad():
        xo = bru.reduce(bn_prelu(bru.pre, x))
        y11 = cam(bru.cam_left, pair(bru.left1, xo))
        y21 = cam(bru.cam_right, pair(bru.right1, xo))
        y1, y2 = pair(bru.left2, y11), pair(bru.right2, y21)
        y3 = y11 + cam(bru.cam_mid, xo) + y21
        out = cam(bru.cam_out, F.conv2d(bn_prelu(bru.mid, y1 + y2 + y3), bru.expand.weight)) + x
        expected = out.view(2, 32, 2, 9, 11).transpose(1, 2).reshape(2, 64, 9, 11)
        assert_close(bru(x), expected, 1e-5, "BRU")
    assert (bru.left2.order, bru.right2.order) == ("vh", "hv")


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_reference(variant):
    check_fused_matches_reference("fbsnet", SMALL, num_classes=K, variant=variant)


@pytest.mark.parametrize("ops, variant", [("fused", "paper"), ("reference", "released")])
def test_forward_backward(ops, variant):
    check_forward_backward(make_model("fbsnet", ops, num_classes=K, variant=variant), SMALL, K)


@pytest.mark.parametrize("size, variant", [(ODD, "paper"), ((17, 9), "released")])
def test_odd_sizes(size, variant):
    check_eval_size(make_model("fbsnet", num_classes=K, variant=variant), size, K)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fuse_for_inference_keeps_eval_logits(variant):
    """Every BatchNorm that follows a conv or the upsampling transposed convs is folded; those
    of sums and concatenations stay. Eval logits are unchanged."""
    model = make_model("fbsnet", num_classes=K, variant=variant).eval()
    x = image(SMALL)
    with torch.no_grad():
        expected = model(x)
        folded = copy.deepcopy(model)
        assert folded.fuse_for_inference() is folded
        assert_close(folded(x), expected, 1e-4, "logits after fuse_for_inference")
    for module in folded.modules():
        if isinstance(module, rtseg_models.ConvBNAct):
            assert not isinstance(module[1], nn.BatchNorm2d)
    assert not isinstance(folded.up1.bn, nn.BatchNorm2d)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    after = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert after < before


def test_channels_last():
    check_channels_last(make_model("fbsnet", num_classes=K), ODD)


def test_compile_fullgraph():
    check_compile(make_model("fbsnet", num_classes=K), SMALL)


def test_training_step_lowers_the_loss():
    model = make_model("fbsnet", num_classes=K)
    check_training_step(model, lambda out, y: F.cross_entropy(out, y, ignore_index=255),
                        SMALL, K)


@requires_cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cuda_low_precision(dtype, channels_last, variant):
    check_cuda_low_precision("fbsnet", (128, 256), dtype, channels_last, num_classes=K,
                             variant=variant)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        rtseg_models.create_model("fbsnet", variant="table-1")
    with pytest.raises(ValueError, match="ops"):
        rtseg_models.create_model("fbsnet", ops="fast")
