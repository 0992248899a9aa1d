"""CSFCN: the paper's sizes and costs, fused vs reference, and the generic model checks."""
import copy

import pytest
import torch
import torch.nn.functional as F

import rtseg_models
from model_harness import (check_channels_last, check_compile, check_cuda_low_precision,
                           check_eval_size, check_forward_backward, check_fuse_for_inference,
                           check_fused_matches_reference, check_training_step,
                           conv_macs_by_hooks, make_model, randomize_, twin)
from op_harness import requires_cuda
from rtseg_models.api import count_parameters
from rtseg_models.csfcn import ContextFeatureCalibration, SpatialFeatureCalibration

K = 19
SMALL = (32, 64)      # 1/8: 4x8, 1/32: 1x2 (tiny: the CPU is shared)
ODD = (250, 380)      # not a multiple of 32


@pytest.fixture(scope="module")
def model():
    """A CSFCN with random weights and BN statistics; tests that change it take a copy."""
    return make_model("csfcn", num_classes=K).eval()


def within(value, target, tolerance):
    return abs(value / target - 1) <= tolerance


# Paper 000: Table III (CFC with CRB, without DRL 0.25M), Table IV (SFC with DRL, G=2: 0.461M),
# Sec. IV / Table VIII (whole model ~13.5M with the released deep-stem backbone).
@pytest.mark.parametrize("stem_width", [64, 32])
def test_parameter_counts_match_the_paper(stem_width):
    model = rtseg_models.create_model("csfcn", num_classes=K, stem_width=stem_width)
    total = count_parameters(model)
    assert within(total, 13.5e6, 0.01), f"{total / 1e6:.3f}M vs the paper's 13.5M (1%)"
    cfc, sfc = count_parameters(model.cfc), count_parameters(model.sfc)
    assert within(cfc, 0.25e6, 0.02), f"CFC {cfc / 1e6:.4f}M vs 0.25M (2%)"
    assert within(sfc, 0.461e6, 0.02), f"SFC {sfc / 1e6:.4f}M vs 0.461M (2%)"


def test_gmacs_match_the_paper_with_the_v1c_stem():
    """Table VIII: 99.8 G multiply-accumulates at 1024x2048 (also 24.9 at 512x1024 and 56.2 at
    768x1536). The 3->32->32->64 deep stem reproduces them within 5%."""
    model = rtseg_models.create_model("csfcn", num_classes=K, stem_width=32)
    for size, paper in [((1024, 2048), 99.8), ((768, 1536), 56.2), ((512, 1024), 24.9)]:
        gmacs = rtseg_models.profile(model, (1, 3) + size)["gmacs"]
        assert within(gmacs, paper, 0.05), f"{size}: {gmacs:.2f} GMACs vs the paper's {paper}"


def test_gmacs_of_the_spec_stem():
    """The spec's released stem (3->64->64->128 at 1/2 resolution) alone costs 59.9 GMACs at
    1024x2048, so that variant cannot reach Table VIII's 99.8: it measures 154.3 (see the README's
    model table). Pinned so that a change in the count is noticed."""
    model = rtseg_models.create_model("csfcn", num_classes=K, stem_width=64)
    gmacs = rtseg_models.profile(model, (1, 3, 1024, 2048))["gmacs"]
    assert within(gmacs, 154.33, 0.005), f"{gmacs:.2f} GMACs"


@pytest.mark.parametrize("deep_stem", [True, False])
def test_profile_counts_every_conv_and_the_attention(deep_stem):
    """profile = Conv2d MACs from forward hooks + the attention's two products (N*M*(Ck+Cv)),
    at full resolution."""
    model = rtseg_models.create_model("csfcn", num_classes=K, deep_stem=deep_stem)
    size = (1024, 2048)
    n, m = (1024 // 32) * (2048 // 32), 100
    expected = conv_macs_by_hooks(model, size) + n * m * (32 + 256)
    assert rtseg_models.profile(model, (1, 3) + size)["macs"] == expected


def test_profile_computed_equals_shapes_only_for_both_ops_settings(model):
    """The fused path counts the rtseg ops by their flop formulas (computed or through their
    fake kernels), the reference path their references natively: all counts agree."""
    expected = rtseg_models.profile(model, (1, 3) + SMALL)
    for net in (model, twin(model, "csfcn", "reference", num_classes=K)):
        assert rtseg_models.profile(net, (1, 3) + SMALL, compute=True) == expected
        assert rtseg_models.profile(net, (1, 3) + SMALL) == expected


@pytest.mark.parametrize("options", [{}, {"released": True, "deep_stem": False}],
                         ids=["paper", "released-plain-stem"])
def test_fused_matches_reference(options):
    check_fused_matches_reference("csfcn", SMALL, num_classes=K, **options)


def test_forward_backward():
    """(test_fused_matches_reference runs both ops settings forward and backward too.)"""
    check_forward_backward(make_model("csfcn", num_classes=K), SMALL, K)


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
    def loss(logits, labels):
        return F.cross_entropy(logits, labels, ignore_index=255)

    check_training_step(make_model("csfcn", num_classes=5, deep_stem=False), loss, SMALL, 5,
                        steps=2)


def test_sfc_starts_as_plain_fusion():
    """Zero-initialised offset conv: flows 0 and gates 1, so SFC(low, high) = up(low') + high'
    with low', high' its reduction convs' outputs."""
    sfc = SpatialFeatureCalibration(256, 128, 128, 2).eval()
    randomize_(sfc)
    torch.nn.init.zeros_(sfc.offset[-1].weight)
    low, high = torch.randn(2, 256, 3, 5), torch.randn(2, 128, 12, 20)
    with torch.no_grad():
        expected = F.interpolate(sfc.low(low), (12, 20), mode="bilinear", align_corners=True) \
            + sfc.high(high)
        torch.testing.assert_close(sfc(low, high), expected, atol=1e-5, rtol=1e-5)


def test_cfc_attends_over_the_pyramid_contexts():
    """CFC against an independent computation from its weights: adaptive pooling levels 6, 3,
    2, 1 (cascaded), softmax attention, CRB."""
    cfc = randomize_(ContextFeatureCalibration(16, 4)).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        level6 = F.adaptive_avg_pool2d(x, 6)
        levels = {6: level6, 3: F.adaptive_avg_pool2d(level6, 3)}
        levels[2] = F.adaptive_avg_pool2d(levels[3], 2)
        levels[1] = F.adaptive_avg_pool2d(levels[2], 1)
        z = torch.cat([levels[g].flatten(2) for g in (1, 2, 3, 6)], 2).unsqueeze(-1)
        key, value = cfc.key(z).squeeze(-1), cfc.value(z).squeeze(-1)
        q = cfc.query(x).flatten(2)
        attn = torch.einsum("bcn,bcm->bnm", q, key).softmax(-1)
        e = torch.einsum("bcm,bnm->bcn", value, attn).reshape(x.shape)
        alpha = torch.tanh(cfc.crb_expand(cfc.crb_reduce(x + e)))
        torch.testing.assert_close(cfc(x), x + alpha * e + e, atol=1e-5, rtol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="ops"):
        rtseg_models.create_model("csfcn", ops="fast")
    with pytest.raises(ValueError, match="crb_input"):
        ContextFeatureCalibration(crb_input="x")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cuda_low_precision(dtype, channels_last):
    check_cuda_low_precision("csfcn", (256, 512), dtype, channels_last, num_classes=K)
