
import pytest
import torch
import torch.nn.functional as F

import rtseg_ops
from rtseg_ops import reference
from op_harness import (DEVICES, SIM, SIM_DEVICES, GPU_LOW_PRECISION, backend_row, check_against_reference,
                        check_compile, check_deterministic, check_gradcheck, check_low_precision,
                        check_opcheck, check_reference_fallback, requires_cuda, to_layout)

op = rtseg_ops.gated_flow_fusion
ref = reference.gated_flow_fusion


def make_inputs(B=2, C=8, groups=2, high_hw=(9, 13), low_hw=(5, 7), flow_scale=2.0,
                gate_scale=1.0, seed=0, dtype=torch.float32, device="cpu", layout="contiguous"):
    """(high, low, flow_high, flow_low, gate_high, gate_low). layout "slices" makes the flows and
    gates channel slices of one (B, 4G+2, H, W) conv output in CSFCN's order, "slices_cl" the
    same of a channels_last conv output; other layouts are op_harness.to_layout's."""
    gen = torch.Generator().manual_seed(seed)
    H, W = high_hw
    high = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    low = torch.randn(B, C, *low_hw, generator=gen, dtype=torch.float64)
    offsets = torch.randn(B, 4 * groups + 2, H, W, generator=gen, dtype=torch.float64)
    offsets[:, :4 * groups] *= flow_scale
    offsets[:, 4 * groups:] *= gate_scale
    high, low, offsets = (t.to(dtype=dtype, device=device) for t in (high, low, offsets))
    if layout.startswith("slices"):
        if layout == "slices_cl":
            high, low, offsets = (t.contiguous(memory_format=torch.channels_last)
                                  for t in (high, low, offsets))
        G = groups
        return (high, low, offsets[:, :2 * G], offsets[:, 2 * G:4 * G],
                offsets[:, 4 * G + 1:4 * G + 2], offsets[:, 4 * G:4 * G + 1])
    flow_high, flow_low = offsets[:, :2 * groups], offsets[:, 2 * groups:4 * groups]
    gate_high, gate_low = offsets[:, 4 * groups:4 * groups + 1], offsets[:, 4 * groups + 1:]
    return tuple(to_layout(t, layout) for t in (high, low, flow_high, flow_low, gate_high,
                                                gate_low))


# (groups, channels, high_hw, low_hw, flow_scale, gate_scale): upsampling by 2 and 4 (exact for
# align_corners), non-integer factors, equal sizes, a 1x1 low map, a single output row with a
# larger low map, extreme flows (samples leave the map) and saturated gates.
CASES = [
    (1, 3, (8, 8), (4, 4), 0.0, 1.0),
    (2, 4, (9, 13), (5, 7), 1.5, 1.0),
    (4, 8, (13, 17), (4, 5), 3.0, 2.0),
    (8, 16, (11, 14), (4, 6), 2.0, 1.0),
    (2, 6, (7, 5), (7, 5), 1.0, 1.0),
    (2, 4, (6, 9), (1, 1), 2.0, 1.0),
    (1, 2, (1, 7), (3, 2), 1.0, 1.0),
    (2, 4, (9, 13), (5, 7), 40.0, 10.0),
    (8, 8, (5, 5), (3, 3), 1e4, 50.0),
]


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("groups,C,high_hw,low_hw,flow_scale,gate_scale", CASES)
def test_matches_reference(device, groups, C, high_hw, low_hw, flow_scale, gate_scale):
    args = make_inputs(C=C, groups=groups, high_hw=high_hw, low_hw=low_hw,
                       flow_scale=flow_scale, gate_scale=gate_scale, dtype=torch.float64,
                       device=device)
    check_against_reference(op, ref, args + (groups,), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided", "slices", "slices_cl"])
def test_layouts(device, layout):
    args = make_inputs(C=8, groups=2, high_hw=(11, 9), low_hw=(4, 3), device=device,
                       layout=layout)
    if layout == "slices":
        assert not args[2].is_contiguous() and args[2].data_ptr() != args[3].data_ptr()
    check_against_reference(op, ref, args + (2,), atol=1e-5, rtol=1e-5)
    if layout in ("channels_last", "slices_cl"):
        assert op(*args, 2).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "slices",
                                    "slices_cl"])
@pytest.mark.parametrize("high_hw,low_hw,flow_scale", [((7, 37), (3, 10), 2.0),
                                                       ((5, 19), (5, 19), 30.0)])
def test_float32_rows(device, layout, high_hw, low_hw, flow_scale):
    """float32 in every layout, against the float64 reference: the CPU kernel's vector path (rows
    of 16 pixels plus a tail, channel blocks plus a remainder, samples leaving the map)."""
    args = make_inputs(C=10, groups=2, high_hw=high_hw, low_hw=low_hw, flow_scale=flow_scale,
                       layout=layout, device=device)
    ref64 = lambda *a: ref(*(t.double() if torch.is_tensor(t) else t for t in a)).float()
    check_against_reference(op, ref64, args + (2,), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_zero_flow_and_gate_is_upsample_plus_high(device):
    """An independent composite: with zero offsets the gates are 1 and both warps are
    identities, so the result is interpolate(low) + high."""
    high, low, fh, fl, gh, gl = make_inputs(C=4, groups=2, high_hw=(10, 15), low_hw=(3, 4),
                                            device=device)
    zeros = [torch.zeros_like(t) for t in (fh, fl, gh, gl)]
    expected = F.interpolate(low, (10, 15), mode="bilinear", align_corners=True) + high
    torch.testing.assert_close(op(high, low, *zeros, 2), expected)


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_unused_taps_do_not_leak_inf(device):
    """Samples that leave the map read nothing: an inf stored at pixel (0, 0) of high and low,
    where unused taps point, must not turn their zero weights into nan, in the output or in any
    gradient."""
    high, low, fh, fl, gh, gl = make_inputs(C=4, groups=2, dtype=torch.float64, device=device)
    high[:, :, 0, 0] = float("inf")
    low[:, :, 0, 0] = float("inf")
    for flow in (fh, fl):
        flow[:, :, 3:, 3:] = 1e3  # far outside: every tap of these pixels is unused
    args = [t.clone().requires_grad_() for t in (high, low, fh, fl, gh, gl)]
    out = op(*args, 2)
    assert torch.equal(out[:, :, 3:, 3:], torch.zeros_like(out[:, :, 3:, 3:]))
    grad = torch.zeros_like(out)
    grad[:, :, 3:, 3:] = 1.0
    grads = torch.autograd.grad(out, args, grad)
    # Per-pixel gradients are checked where the samples left the map: elsewhere they may read
    # the inf legitimately (times a zero grad_output, as the reference does).
    for name, g in zip(("high", "low", "flow_high", "flow_low", "gate_high", "gate_low"), grads):
        g = g if name in ("high", "low") else g[:, :, 3:, 3:]
        assert torch.isfinite(g).all(), f"grad of {name} is not finite"


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_empty_batch(device):
    args = [t.requires_grad_() for t in make_inputs(B=0, C=4, groups=2, device=device)]
    out = op(*args, 2)
    assert out.shape == (0, 4, 9, 13)
    out.sum().backward()
    for t in args:
        assert t.grad is not None and t.grad.shape == t.shape


def test_gradcheck():
    check_gradcheck(op, None, dict(groups=2),
                    make_args=lambda seed: make_inputs(B=1, C=4, groups=2, high_hw=(4, 5),
                                                       low_hw=(3, 3), seed=seed))


def test_gradcheck_slices():
    """All six gradients through channel slices of one conv output, as CSFCN calls the op."""
    offsets = torch.randn(1, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    high = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    low = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)

    def fused(high, low, offsets):
        return op(high, low, offsets[:, :2], offsets[:, 2:4], offsets[:, 5:], offsets[:, 4:5], 1)

    assert torch.autograd.gradcheck(fused, (high, low, offsets), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slices"])
def test_opcheck(layout):
    args = make_inputs(C=8, groups=4, high_hw=(7, 9), low_hw=(3, 4), layout=layout)
    leaves = [t.detach().requires_grad_() if t.is_leaf else t for t in args]
    check_opcheck(torch.ops.rtseg.gated_flow_fusion.default, tuple(leaves) + (4,))
    grad = torch.randn(2, 8, 7, 9)
    check_opcheck(torch.ops.rtseg.gated_flow_fusion_backward.default,
                  (grad,) + tuple(t.detach() for t in args) + (4,))


def test_compile_fullgraph():
    args = make_inputs(C=8, groups=2, high_hw=(9, 11), low_hw=(4, 5))

    def fn(high, low, fh, fl, gh, gl):
        return op(high * 2, low, fh, fl, gh, gl, 2).relu()

    check_compile(fn, args)


# Large enough for the CPU kernels to split the work between threads (one batch item and one
# group also splits the backward's channels into slices whose sums are added afterwards).
THREADED = dict(B=1, C=16, groups=1, high_hw=(48, 64), low_hw=(13, 17), flow_scale=5)


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_threaded_matches_reference(device):
    args = make_inputs(**THREADED, dtype=torch.float64, device=device)
    check_against_reference(op, ref, args + (1,), atol=1e-10, rtol=1e-10)


def test_empty_channel_slice():
    """5 channels of one group in slices of 2 for 4 threads: the last slice has no channel."""
    args = make_inputs(B=1, C=5, groups=1, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        check_against_reference(op, ref, args + (1,), atol=1e-10, rtol=1e-10)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("case", [THREADED, dict(B=2, C=16, groups=2, high_hw=(24, 31),
                                                 low_hw=(7, 9), flow_scale=5)])
def test_deterministic_backward(device, case):
    args = make_inputs(**case, device=device)
    check_deterministic(op, args + (case["groups"],))


def test_module():
    args = make_inputs(C=8, groups=4)
    fused = rtseg_ops.GatedFlowFusion(groups=4)
    composite = rtseg_ops.GatedFlowFusion(groups=4, ops="reference")
    torch.testing.assert_close(fused(*args), ref(*args, 4))
    torch.testing.assert_close(composite(*args), ref(*args, 4))
    assert "groups=4" in repr(fused) and "'reference'" in repr(composite)
    with pytest.raises(ValueError, match="ops: expected one of"):
        rtseg_ops.GatedFlowFusion(ops="unfused")


@pytest.mark.parametrize("device", [SIM])
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "slices_cl"])
def test_low_precision_sim(device, dtype, layout):
    """The CUDA kernels in float16/bfloat16 under the CUDA simulator, by the GPU tests' rule."""
    args = make_inputs(B=2, C=8, groups=2, high_hw=(12, 20), low_hw=(4, 6), flow_scale=3,
                       device=device, layout=layout)
    check_low_precision(op, ref, args + (2,), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "slices_cl"])
def test_low_precision_cuda(dtype, layout):
    args = make_inputs(B=2, C=64, groups=2, high_hw=(64, 96), low_hw=(16, 24), flow_scale=3,
                       device="cuda", layout=layout)
    check_low_precision(op, ref, args + (2,), dtype=dtype)


@requires_cuda
def test_cuda_csfcn_shape():
    args = make_inputs(B=2, C=128, groups=2, high_hw=(64, 128), low_hw=(16, 32), flow_scale=4,
                       device="cuda", layout="slices")
    check_against_reference(op, ref, args + (2,), atol=1e-4, rtol=1e-4)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    check_reference_fallback(monkeypatch, "gated_flow_fusion", op, ref, (*make_inputs(), 2))


def test_backend_table_lists_op():
    row = backend_row("gated_flow_fusion")
    assert row["cpu"] == "C++"
    assert row["cuda"] == ("CUDA" if torch.cuda.is_available() else row["cuda"])


def _replace(args, i, value):
    args = list(args)
    args[i] = value
    return args


BAD_INPUTS = [
    # (description, args from the six good tensors, exception, message pattern)
    ("high rank", lambda a: _replace(a, 0, a[0][0]) + [2], ValueError, "high: expected a 4-D"),
    ("gate rank", lambda a: _replace(a, 5, a[5][0]) + [2], ValueError, "gate_low: expected a 4-D"),
    ("groups not dividing C", lambda a: list(a) + [3], ValueError, "not divisible by groups=3"),
    ("low channels", lambda a: _replace(a, 1, a[1][:, :4]) + [2], ValueError,
     "low: expected batch 2 and 8 channels"),
    ("low batch", lambda a: _replace(a, 1, a[1][:1]) + [2], ValueError, "low: expected batch"),
    ("flow_high channels", lambda a: _replace(a, 2, a[2][:, :3]) + [2], ValueError,
     "flow_high: expected shape"),
    ("flow_low size", lambda a: _replace(a, 3, a[3][..., :5]) + [2], ValueError,
     "flow_low: expected shape"),
    ("gate_high channels", lambda a: _replace(a, 4, a[2][:, :2]) + [2], ValueError,
     "gate_high: expected shape"),
    ("empty low", lambda a: _replace(a, 1, a[1][:, :, :0]) + [2], ValueError,
     "low: expected a non-empty"),
    ("dtype mismatch", lambda a: _replace(a, 3, a[3].double()) + [2], TypeError,
     "flow_low: expected dtype"),
    ("half on cpu", lambda a: [t.half() for t in a] + [2], TypeError,
     "high: dtype torch.float16"),
    ("int gate", lambda a: _replace(a, 4, a[4].int()) + [2], TypeError,
     "gate_high: dtype torch.int32"),
    ("groups zero", lambda a: list(a) + [0], ValueError, "groups: expected an integer >= 1"),
    ("not a tensor", lambda a: _replace(a, 1, a[1].tolist()) + [2], TypeError,
     "low: expected a torch.Tensor"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, make, exc, match):
    with pytest.raises(exc, match=match):
        op(*make(make_inputs(C=8, groups=2)))


@pytest.mark.parametrize("make,match", [
    (lambda a: list(a) + [3], "not divisible by groups=3"),
    (lambda a: _replace(a, 1, a[1][:, :4]) + [2], "low: expected batch 2 and 8 channels"),
    (lambda a: _replace(a, 2, a[2][:, :2]) + [2], "flow_high: expected shape"),
    (lambda a: _replace(a, 5, a[5][..., :4]) + [2], "gate_low: expected shape"),
    (lambda a: _replace(a, 4, a[4].double()) + [2], "gate_high: expected dtype"),
    (lambda a: _replace(a, 0, a[0][0]) + [2], "high: expected a 4-D"),
    (lambda a: list(a) + [0], "groups: expected a positive integer"),
])
def test_direct_op_call_checks(make, match):
    """torch.ops.rtseg.* bypasses the Python checks; the C++ kernels must refuse bad input too."""
    args = make(make_inputs(C=8, groups=2))
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.gated_flow_fusion(*args)
    grad = torch.randn(2, 8, 9, 13)
    if args[0].dim() == 4:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.rtseg.gated_flow_fusion_backward(grad, *args)
