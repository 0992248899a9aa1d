import itertools

import pytest
import torch

import rtseg_ops
from rtseg_ops import reference
from op_harness import (DEVICES, SIM, SIM_DEVICES, GPU_LOW_PRECISION, backend_row, check_against_reference,
                        check_compile, check_deterministic, check_gradcheck, check_low_precision,
                        check_opcheck, check_reference_fallback, requires_cuda, to_layout)

op = rtseg_ops.grouped_flow_warp
ref = reference.grouped_flow_warp


def make_inputs(B=2, C=8, groups=2, in_hw=(9, 13), out_hw=None, flow_scale=2.0, seed=0,
                dtype=torch.float32, device="cpu", layout="contiguous"):
    gen = torch.Generator().manual_seed(seed)
    H, W = out_hw or in_hw
    x = torch.randn(B, C, *in_hw, generator=gen, dtype=torch.float64)
    flow = torch.randn(B, 2 * groups, H, W, generator=gen, dtype=torch.float64) * flow_scale
    x, flow = (to_layout(t.to(dtype=dtype, device=device), layout) for t in (x, flow))
    return x, flow


# (groups, in_hw, out_hw, flow_scale): equal and larger odd sizes; zero, small and
# far-out-of-range flows (the last samples almost nothing but padding).
SHAPES = [
    (1, (9, 13), None, 0.0),
    (1, (8, 8), (16, 16), 0.0),
    (2, (9, 13), None, 0.7),
    (2, (7, 5), (15, 11), 3.0),
    (4, (6, 10), (13, 21), 1.5),
    (8, (5, 7), None, 40.0),
    (8, (4, 4), (9, 9), 1e4),
]
MODES = list(itertools.product(["zeros", "border"], [True, False]))


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("groups,in_hw,out_hw,flow_scale", SHAPES)
@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_matches_reference(device, groups, in_hw, out_hw, flow_scale, padding_mode, align_corners):
    x, flow = make_inputs(C=2 * groups, groups=groups, in_hw=in_hw, out_hw=out_hw,
                          flow_scale=flow_scale, device=device, dtype=torch.float64)
    check_against_reference(op, ref, (x, flow, groups, out_hw, padding_mode, align_corners),
                            atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_layouts(device, layout, padding_mode, align_corners):
    """float32 in every layout: the CPU kernel's vector path (rows of 16 pixels plus a tail)."""
    x, flow = make_inputs(C=16, groups=4, in_hw=(7, 9), out_hw=(13, 17), device=device,
                          layout=layout)
    check_against_reference(op, ref, (x, flow, 4, (13, 17), padding_mode, align_corners),
                            atol=1e-5, rtol=1e-5)
    if layout == "channels_last":
        assert op(x, flow, 4, (13, 17)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_zero_flow_is_align_corners_upsampling(device):
    x, _ = make_inputs(C=4, groups=1, in_hw=(5, 7), device=device)
    flow = torch.zeros(2, 2, 9, 13, device=device)
    expected = torch.nn.functional.interpolate(x, (9, 13), mode="bilinear", align_corners=True)
    torch.testing.assert_close(rtseg_ops.flow_warp(x, flow, (9, 13)), expected)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unused_corners_do_not_leak_inf(device, padding_mode, dtype):
    """Samples outside the input read nothing: an inf stored at pixel (0, 0) must not turn their
    zero weights into nan, in the output or in either gradient."""
    x, flow = make_inputs(C=4, groups=2, in_hw=(5, 6), device=device, dtype=dtype)
    x[:, :, 0, 0] = float("inf")
    flow[:, :, 2:, 2:] = 1e3  # far outside, so every corner is unused (zeros) or clamped (border)
    out = op(x, flow, 2, None, padding_mode)
    expected = ref(x, flow, 2, None, padding_mode)
    torch.testing.assert_close(out[:, :, 2:, 2:], expected[:, :, 2:, 2:])
    if padding_mode == "zeros":
        assert torch.equal(out[:, :, 2:, 2:], torch.zeros_like(out[:, :, 2:, 2:]))
        x_in = x.clone().requires_grad_()
        f_in = flow.clone().requires_grad_()
        grad = torch.zeros(out.shape, dtype=out.dtype, device=device)
        grad[:, :, 2:, 2:] = 1.0
        gx, gf = torch.autograd.grad(op(x_in, f_in, 2), (x_in, f_in), grad)
        assert torch.isfinite(gf[:, :, 2:, 2:]).all() and torch.isfinite(gx).all()


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_empty_batch(device):
    x, flow = make_inputs(B=0, C=4, groups=2, in_hw=(5, 6), out_hw=(7, 8), device=device)
    x.requires_grad_()
    out = op(x, flow, 2, (7, 8))
    assert out.shape == (0, 4, 7, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_module_and_alias():
    x, flow = make_inputs(C=8, groups=2)
    m = rtseg_ops.GroupedFlowWarp(groups=2, padding_mode="border", align_corners=False)
    torch.testing.assert_close(m(x, flow), ref(x, flow, 2, None, "border", False))
    x1, flow1 = make_inputs(C=3, groups=1)
    torch.testing.assert_close(rtseg_ops.flow_warp(x1, flow1), ref(x1, flow1, 1))
    assert "groups=2" in repr(m)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_gradcheck(padding_mode, align_corners):
    check_gradcheck(op, None, dict(groups=2, size=(7, 9), padding_mode=padding_mode,
                                   align_corners=align_corners),
                    make_args=lambda seed: make_inputs(B=2, C=4, groups=2, in_hw=(5, 6),
                                                       out_hw=(7, 9), seed=seed))


@pytest.mark.parametrize("padding_mode,align_corners,layout",
                         [("zeros", True, "contiguous"), ("border", False, "channels_last"),
                          ("zeros", False, "strided")])
def test_opcheck(padding_mode, align_corners, layout):
    x, flow = make_inputs(C=8, groups=4, in_hw=(5, 6), out_hw=(7, 9), layout=layout)
    x.requires_grad_()
    flow.requires_grad_()
    check_opcheck(torch.ops.rtseg.grouped_flow_warp.default,
                  (x, flow, 4, padding_mode, align_corners))
    grad = torch.randn(2, 8, 7, 9)
    check_opcheck(torch.ops.rtseg.grouped_flow_warp_backward.default,
                  (grad, x.detach(), flow.detach(), 4, padding_mode, align_corners))


def test_compile_fullgraph():
    x, flow = make_inputs(C=8, groups=2, in_hw=(6, 7), out_hw=(11, 13))

    def fn(x, flow):
        return op(x * 2, flow, 2, (11, 13)).relu()

    check_compile(fn, (x, flow))


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_deterministic_backward(device):
    x, flow = make_inputs(B=2, C=16, groups=2, in_hw=(16, 20), out_hw=(31, 39), flow_scale=5,
                          device=device)
    check_deterministic(op, (x, flow, 2, (31, 39)))


@pytest.mark.parametrize("device", [SIM])
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_sim(device, dtype, layout):
    """The CUDA kernels in float16/bfloat16 under the CUDA simulator, by the GPU tests' rule."""
    x, flow = make_inputs(B=2, C=16, groups=4, in_hw=(9, 13), out_hw=(17, 25), flow_scale=3,
                          device=device, layout=layout)
    check_low_precision(op, ref, (x, flow, 4, (17, 25)), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_cuda(dtype, layout):
    x, flow = make_inputs(B=2, C=64, groups=4, in_hw=(33, 47), out_hw=(65, 93), flow_scale=3,
                          device="cuda", layout=layout)
    check_low_precision(op, ref, (x, flow, 4, (65, 93)), dtype=dtype)


@requires_cuda
def test_cuda_large_groups_and_channels():
    x, flow = make_inputs(B=3, C=128, groups=2, in_hw=(40, 72), out_hw=(80, 144), flow_scale=4,
                          device="cuda")
    check_against_reference(op, ref, (x, flow, 2, (80, 144)), atol=1e-4, rtol=1e-4)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    check_reference_fallback(monkeypatch, "grouped_flow_warp", op, ref, (*make_inputs(), 2))


def test_backend_table_lists_op():
    row = backend_row("grouped_flow_warp")
    assert row["cpu"] == "C++"
    assert row["cuda"] == ("CUDA" if torch.cuda.is_available() else row["cuda"])


BAD_INPUTS = [
    # (description, args, exception, message pattern)
    ("input rank", lambda x, f: (x[0], f, 2), ValueError, "input: expected a 4-D"),
    ("flow rank", lambda x, f: (x, f[0], 2), ValueError, "flow: expected a 4-D"),
    ("groups not dividing C", lambda x, f: (x[:, :7], f, 2), ValueError, "not divisible by groups"),
    ("flow channels", lambda x, f: (x, f[:, :3], 2), ValueError, "flow: expected 2\\*groups = 4"),
    ("batch", lambda x, f: (x, f[:1], 2), ValueError, "flow: expected batch 2"),
    ("dtype mismatch", lambda x, f: (x, f.double(), 2), TypeError, "flow: expected dtype"),
    ("half on cpu", lambda x, f: (x.half(), f.half(), 2), TypeError, "input: dtype torch.float16"),
    ("int input", lambda x, f: (x.int(), f, 2), TypeError, "input: dtype torch.int32"),
    ("groups zero", lambda x, f: (x, f, 0), ValueError, "groups: expected an integer >= 1"),
    ("size mismatch", lambda x, f: (x, f, 2, (3, 3)), ValueError, "flow: expected spatial size"),
    ("padding mode", lambda x, f: (x, f, 2, None, "reflection"), ValueError, "padding_mode"),
    ("align_corners type", lambda x, f: (x, f, 2, None, "zeros", 1), TypeError, "align_corners"),
    ("not a tensor", lambda x, f: (x.tolist(), f, 2), TypeError, "input: expected a torch.Tensor"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, make, exc, match):
    x, flow = make_inputs(C=8, groups=2)
    with pytest.raises(exc, match=match):
        op(*make(x, flow))


@pytest.mark.parametrize("args,match", [
    (lambda x, f: (x, f, 3, "zeros", True), "not divisible by groups=3"),
    (lambda x, f: (x, f[:, :2], 2, "zeros", True), "flow: expected 2\\*groups"),
    (lambda x, f: (x, f, 2, "bogus", True), "padding_mode"),
    (lambda x, f: (x, f.double(), 2, "zeros", True), "flow: expected dtype"),
    (lambda x, f: (x[0], f, 2, "zeros", True), "input: expected a 4-D"),
])
def test_direct_op_call_checks(args, match):
    """torch.ops.rtseg.* bypasses the Python checks; the C++ kernels must refuse bad input too."""
    x, flow = make_inputs(C=8, groups=2)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.grouped_flow_warp(*args(x, flow))
