"""SGCPNet: the paper's sizes and costs, fused vs reference, and the generic model checks."""
import pytest
import torch
import torch.nn.functional as F

import rtseg_models
from model_harness import (check_channels_last, check_compile, check_cuda_low_precision,
                           check_eval_size, check_forward_backward, check_fuse_for_inference,
                           check_fused_matches_reference, check_training_step,
                           conv_macs_by_hooks, make_model)
from op_harness import requires_cuda
from rtseg_models.api import count_parameters

K = 19
SMALL = (64, 128)     # 1/128 is 1x1: every level of the SGCP module is a real map
ODD = (97, 161)       # not a multiple of 128 (nor of 2)
VARIANTS = ["paper", "released"]


def within(value, target, tolerance):
    return abs(value / target - 1) <= tolerance


def test_parameter_counts_match_the_paper():
    """Paper 001: 0.61M in all, trunk ("BK") 0.43M, SGCP + HFR + classifier 0.18M (Table VI, 2%);
    the released code's exact counts: 607,826 in all, 431,180 for the trunk."""
    model = rtseg_models.create_model("sgcpnet", num_classes=K)
    total, trunk = count_parameters(model), count_parameters(model.backbone)
    assert within(total, 0.61e6, 0.02), f"{total / 1e6:.4f}M vs the paper's 0.61M (2%)"
    assert within(trunk, 0.43e6, 0.02), f"trunk {trunk / 1e6:.4f}M vs 0.43M (2%)"
    assert within(total - trunk, 0.18e6, 0.02), f"head {(total - trunk) / 1e6:.4f}M vs 0.18M"
    assert (total, trunk) == (607_826, 431_180)


def test_variants_have_the_same_parameters():
    paper = rtseg_models.create_model("sgcpnet", num_classes=K)
    released = rtseg_models.create_model("sgcpnet", num_classes=K, variant="released")
    assert [p.shape for p in paper.parameters()] == [p.shape for p in released.parameters()]


def test_gmacs_match_the_paper():
    """About 3.3 G conv multiply-accumulates at 1024x2048 (the paper's 4.5 GFLOPs are thop's
    count, which adds BN, activations and pooling): within 3%, and the same count at the
    paper's other resolution ratios (Table II FLOPs scale with the pixel count)."""
    model = rtseg_models.create_model("sgcpnet", num_classes=K)
    full = rtseg_models.profile(model, (1, 3, 1024, 2048))["gmacs"]
    assert within(full, 3.3, 0.03), f"{full:.3f} GMACs vs about 3.3"
    half = rtseg_models.profile(model, (1, 3, 512, 1024))["gmacs"]
    assert within(half, full / 4, 0.01), f"512x1024: {half:.3f} vs {full / 4:.3f}"


def test_profile_counts_every_conv():
    """SW-Sum and pooling have no MACs: profile equals the Conv2d MACs from forward hooks, on
    both paths."""
    for ops in ("fused", "reference"):
        model = rtseg_models.create_model("sgcpnet", num_classes=K, ops=ops)
        size = (1024, 2048)
        assert rtseg_models.profile(model, (1, 3) + size)["macs"] == \
            conv_macs_by_hooks(model, size)


def test_sw_sum_nodes_follow_the_variant():
    """Paper: raw scalars, no activation; released: normalised scalars and swish; 27 scalars
    (4 + 4 two-input nodes on the top-down paths, three 3-input and one 2-input bottom-up)."""
    for variant, normalize, activation in [("paper", False, None), ("released", True, "swish")]:
        model = rtseg_models.create_model("sgcpnet", num_classes=K, variant=variant)
        nodes = [m for m in model.modules() if type(m).__name__ == "ScalarWeightedSum"]
        assert len(nodes) == 12
        assert sum(n.weights.numel() for n in nodes) == 27
        assert all(n.normalize == normalize and n.activation == activation for n in nodes)


def test_paper_fusion_is_the_raw_weighted_sum():
    """An independent check of the paper's Eq. 3 on one bottom-up node: with scalars (a, b, c)
    the node's SW-Sum is a*S + b*F + c*maxpool3x3/2(F_prev)."""
    model = rtseg_models.create_model("sgcpnet", num_classes=K)
    node = model.sgcp.bottom_up[0].fuse
    with torch.no_grad():
        node.weights.copy_(torch.tensor([0.5, -2.0, 3.0]))
    gen = torch.Generator().manual_seed(0)
    skip, same, finer = (torch.randn(1, 4, *s, generator=gen) for s in [(5, 7), (5, 7), (9, 13)])
    expected = 0.5 * skip - 2.0 * same + 3.0 * F.max_pool2d(finer, 3, stride=2, padding=1)
    torch.testing.assert_close(node(skip, same, finer), expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_reference(variant):
    # batch 4: the SE blocks' BNs see one value per image in training, and with 2 images they
    # amplify rounding differences far beyond the gradients they pass on
    check_fused_matches_reference("sgcpnet", SMALL, num_classes=K, variant=variant, batch=4)


@pytest.mark.parametrize("ops, variant", [("fused", "paper"), ("reference", "released")])
def test_forward_backward(ops, variant):
    check_forward_backward(make_model("sgcpnet", ops, num_classes=K, variant=variant), SMALL, K)


@pytest.mark.parametrize("size", [ODD, (1, 1)])
def test_odd_sizes(size):
    check_eval_size(make_model("sgcpnet", num_classes=K), size, K)


def test_fuse_for_inference_keeps_eval_logits():
    for variant in VARIANTS:
        check_fuse_for_inference(make_model("sgcpnet", num_classes=K, variant=variant), SMALL)


def test_channels_last():
    check_channels_last(make_model("sgcpnet", num_classes=K, variant="released"), ODD)


def test_compile_fullgraph():
    check_compile(make_model("sgcpnet", num_classes=K, variant="released"), SMALL)


def test_training_step_lowers_the_loss():
    model = make_model("sgcpnet", num_classes=K)
    check_training_step(model, lambda out, y: F.cross_entropy(out, y, ignore_index=255),
                        SMALL, K)


def test_pretrained_is_loaded_from_a_path(tmp_path):
    source = rtseg_models.MobileNetV3SmallTrunk()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "trunk.pt"
    torch.save(source.state_dict(), path)
    model = rtseg_models.create_model("sgcpnet", num_classes=K, pretrained=str(path))
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], tensor, rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cuda_low_precision(dtype, channels_last, variant):
    check_cuda_low_precision("sgcpnet", (256, 512), dtype, channels_last, num_classes=K,
                             variant=variant)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        rtseg_models.create_model("sgcpnet", variant="v2")
    with pytest.raises(ValueError, match="ops"):
        rtseg_models.create_model("sgcpnet", ops="fast")
