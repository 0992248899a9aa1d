"""MSFNet: the paper's cost, the class-boundary labels and loss, fused vs reference, and the
generic model checks."""
import copy

import pytest
import torch
import torch.nn.functional as F

import rtseg_models
from model_harness import (check_channels_last, check_compile, check_cuda_low_precision,
                           check_eval_size, check_forward_backward, check_fuse_for_inference,
                           check_fused_matches_reference, check_training_step,
                           conv_macs_by_hooks, make_model)
from op_harness import requires_cuda
from rtseg_models.msfnet import class_boundary_labels, mfm_inputs, msfnet_loss

K = 19
SMALL = (32, 64)      # 1/8: 4x8, coarsest SAP levels 1x1 (tiny: the CPU is shared)
ODD = (250, 380)


@pytest.fixture(scope="module")
def model():
    """An MSFNet with random weights and BN statistics; tests that change it take a copy."""
    return make_model("msfnet", num_classes=K).eval()


# Paper 003, Table 6: 96.8 GFLOPs (multiply-accumulates) at 1024x2048 with CBS, 85.2 without.
@pytest.mark.parametrize("cbs, paper", [(True, 96.8), (False, 85.2)], ids=["cbs", "no-cbs"])
def test_gmacs_match_the_paper(cbs, paper):
    net = rtseg_models.create_model("msfnet", num_classes=K, cbs=cbs)
    gmacs = rtseg_models.profile(net, (1, 3, 1024, 2048))["gmacs"]
    assert abs(gmacs / paper - 1) <= 0.10, f"{gmacs:.2f} GMACs vs the paper's {paper} (10%)"


def test_profile_counts_every_conv():
    net = rtseg_models.create_model("msfnet", num_classes=K)
    size = (1024, 2048)
    assert rtseg_models.profile(net, (1, 3) + size)["macs"] == conv_macs_by_hooks(net, size)


def test_mfm_inputs_follow_the_paper():
    """Stage i (1/2**(i+1)) pooled j times lands at 1/2**(i+1+j); stage 1 unpooled is unused;
    5 levels reach 1/1024."""
    inputs = mfm_inputs(5)
    assert list(inputs) == list(range(3, 11))
    assert inputs[3] == [(1, 1), (2, 0)]
    assert inputs[5] == [(1, 3), (2, 2), (3, 1), (4, 0)]
    assert inputs[10] == [(4, 5)]
    assert sum(map(len, inputs.values())) == 4 * 5 + 3


def naive_class_boundary(labels, width, ignore_index):
    out = labels.clone()
    B, H, W = labels.shape
    for b in range(B):
        for y in range(H):
            for x in range(W):
                c = labels[b, y, x].item()
                if c == ignore_index:
                    continue
                window = labels[b, max(0, y - width):y + width + 1, max(0, x - width):x + width + 1]
                other = ((window != c) & (window != ignore_index)).any().item()
                out[b, y, x] = c + 1 if other else 0
    return out


@pytest.mark.parametrize("width", [1, 2])
def test_class_boundary_labels_against_a_loop(width):
    gen = torch.Generator().manual_seed(width)
    labels = torch.randint(0, 3, (2, 9, 11), generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < 0.15] = 255
    expected = naive_class_boundary(labels, width, 255)
    assert torch.equal(class_boundary_labels(labels, width, 255), expected)


def test_class_boundary_labels_by_hand():
    labels = torch.tensor([[[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [255, 255, 2, 2],
                            [3, 3, 2, 2]]])
    expected = torch.tensor([[[0, 1, 2, 0],
                              [0, 1, 2, 2],
                              [255, 255, 3, 3],
                              [0, 4, 3, 0]]])
    assert torch.equal(class_boundary_labels(labels), expected)


def test_loss_is_segmentation_plus_boundary_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 16, 24, generator=gen)
    boundary_logits = torch.randn(2, K + 1, 2, 3, generator=gen)
    labels = torch.randint(0, K, (2, 16, 24), generator=gen)
    labels[:, :3] = 255
    small = labels[:, ::8, ::8]  # nearest resizing to 1/8 picks the top-left pixel of each cell
    expected = F.cross_entropy(logits, labels, ignore_index=255) + 0.5 * F.cross_entropy(
        boundary_logits, naive_class_boundary(small, 1, 255), ignore_index=255)
    loss = msfnet_loss((logits, boundary_logits), labels, boundary_weight=0.5)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(msfnet_loss(logits, labels),
                               F.cross_entropy(logits, labels, ignore_index=255))


def test_training_outputs():
    net = make_model("msfnet", num_classes=K).train()
    logits, boundary = net(torch.randn(2, 3, *SMALL))
    assert logits.shape == (2, K) + SMALL
    assert boundary.shape == (2, K + 1, SMALL[0] // 8, SMALL[1] // 8)
    assert isinstance(make_model("msfnet", num_classes=K, cbs=False).train()(
        torch.randn(2, 3, *SMALL)), torch.Tensor)


@pytest.mark.parametrize("options", [{}, {"cbs": False, "levels": 3}], ids=["cbs", "no-cbs-3"])
def test_fused_matches_reference(options):
    check_fused_matches_reference("msfnet", SMALL, num_classes=K, **options)


def test_forward_backward():
    """(test_fused_matches_reference runs both ops settings forward and backward too.)"""
    check_forward_backward(make_model("msfnet", num_classes=K), SMALL, K)


@pytest.mark.parametrize("size", [ODD, (33, 65)])
def test_eval_any_size(model, size):
    check_eval_size(model, size, K)


def test_fuse_for_inference_keeps_logits(model):
    check_fuse_for_inference(model, (65, 97))


def test_channels_last(model):
    check_channels_last(model, SMALL)


def test_compile_fullgraph(model):
    check_compile(copy.deepcopy(model).fuse_for_inference(), SMALL)


def test_training_step_lowers_the_loss():
    check_training_step(make_model("msfnet", num_classes=5), msfnet_loss, SMALL, 5, steps=2)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cuda_low_precision(dtype, channels_last):
    check_cuda_low_precision("msfnet", (256, 512), dtype, channels_last, num_classes=K)
