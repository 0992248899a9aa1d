import pytest
import torch

import rtseg_ops
from rtseg_ops import reference
from op_harness import (DEVICES, SIM, SIM_DEVICES, GPU_LOW_PRECISION, backend_row, check_against_reference,
                        check_compile, check_deterministic, check_gradcheck, check_low_precision,
                        check_opcheck, check_reference_fallback, requires_cuda, to_layout)

op = rtseg_ops.spatial_aware_pool
ref = reference.spatial_aware_pool


def make_inputs(B=2, C=3, hw=(13, 21), seed=0, dtype=torch.float32, device="cpu",
                layout="contiguous", offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *hw, generator=gen, dtype=torch.float64) + offset
    return to_layout(x.to(dtype=dtype, device=device), layout)


# (hw, levels): multiples of the largest stride, sizes that are not, maps smaller than the largest
# window (down to 1x1), thin maps, and every level count 1..6.
SHAPES = [
    ((64, 64), 5),
    ((13, 21), 5),
    ((37, 70), 6),
    ((1, 1), 6),
    ((3, 5), 5),
    ((2, 67), 4),
    ((33, 1), 3),
    ((17, 9), 2),
    ((10, 12), 1),
    ((31, 33), 6),
]


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("hw,levels", SHAPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_matches_reference(device, hw, levels, count_include_pad):
    x = make_inputs(hw=hw, device=device, dtype=torch.float64)
    check_against_reference(op, ref, (x, levels, count_include_pad), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_float32(device, count_include_pad):
    x = make_inputs(B=2, C=4, hw=(45, 70), device=device)
    check_against_reference(op, ref, (x, 5, count_include_pad), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_large_offset_keeps_float32_precision(device, count_include_pad):
    """1e4 + noise: window sums reach 4e7 and a float32 summed-area table of this map would
    reach 1e9 (error ~100 per lookup); the fused op must stay within a few float32 ulps of 1e4
    (ulp = 1e-3) of the exact float64 result."""
    x = make_inputs(B=1, C=2, hw=(192, 320), device=device, offset=1e4)
    exact = ref(x.double(), 6, count_include_pad)
    for j, (o, e) in enumerate(zip(op(x, 6, count_include_pad), exact)):
        err = (o.double() - e).abs().max().item()
        assert err <= 4e-3, f"level {j + 1}: max error {err:.3g} against float64"


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(device, layout):
    x = make_inputs(C=8, hw=(19, 27), device=device, layout=layout)
    check_against_reference(op, ref, (x, 4, False), atol=1e-5, rtol=1e-5)
    expected = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for o in op(x, 4):
        assert o.is_contiguous(memory_format=expected)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_channels_last(device, dtype, tol, count_include_pad):
    """channels_last input, which the CUDA kernels take channel-fastest in groups of adjacent
    channels: 11 channels leave a partial group, 37 x 45 crosses 16 x 16 tile edges, six levels
    run both the tile and the coarse kernels; the gradients arrive contiguous."""
    x = make_inputs(B=2, C=11, hw=(37, 45), dtype=dtype, device=device, layout="channels_last")
    check_against_reference(op, ref, (x, 6, count_include_pad), atol=tol, rtol=tol)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("B,C", [(0, 3), (2, 0)])
def test_empty(device, B, C):
    x = make_inputs(B=B, C=C, hw=(9, 10), device=device).requires_grad_()
    outs = op(x, 3)
    assert [tuple(o.shape) for o in outs] == [(B, C, 5, 5), (B, C, 3, 3), (B, C, 2, 2)]
    sum(o.sum() for o in outs).backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_unused_levels_get_no_gradient(device):
    """Levels the loss ignores reach the backward as None and must count as zero."""
    x = make_inputs(hw=(23, 18), device=device, dtype=torch.float64)

    def loss(fn):
        leaf = x.clone().requires_grad_()
        (fn(leaf, 4)[1] * torch.arange(30, dtype=x.dtype, device=device).reshape(6, 5)).sum() \
            .backward()
        return leaf.grad

    torch.testing.assert_close(loss(op), loss(ref), atol=1e-12, rtol=1e-12)


def test_module_interface():
    x = make_inputs(hw=(20, 28))
    fused = rtseg_ops.SpatialAwarePool(levels=3, count_include_pad=False)
    plain = rtseg_ops.SpatialAwarePool(3, False, ops="reference")
    for a, b, e in zip(fused(x), plain(x), ref(x, 3, False)):
        torch.testing.assert_close(a, e)
        torch.testing.assert_close(b, e, atol=0, rtol=0)
    assert len(rtseg_ops.SpatialAwarePool()(x)) == 5
    assert repr(fused) == "SpatialAwarePool(levels=3, count_include_pad=False, ops='fused')"
    with pytest.raises(ValueError, match="ops: expected one of 'fused', 'reference'"):
        rtseg_ops.SpatialAwarePool(ops="triton")
    with pytest.raises(ValueError, match="levels"):
        rtseg_ops.SpatialAwarePool(levels=7)


def _as_tuple(x, levels, count_include_pad):
    return tuple(op(x, levels, count_include_pad))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("hw,levels", [((6, 9), 3), ((5, 4), 6)])
def test_gradcheck(hw, levels, count_include_pad):
    check_gradcheck(_as_tuple, None, dict(levels=levels, count_include_pad=count_include_pad),
                    make_args=lambda seed: (make_inputs(B=1, C=1, hw=hw, seed=seed),))


@pytest.mark.parametrize("hw,levels,count_include_pad,layout", [
    ((13, 21), 5, True, "contiguous"),
    ((8, 8), 2, False, "channels_last"),
    ((6, 11), 6, False, "strided"),
])
def test_opcheck(hw, levels, count_include_pad, layout):
    x = make_inputs(hw=hw, layout=layout).requires_grad_()
    check_opcheck(torch.ops.rtseg.spatial_aware_pool.default, (x, levels, count_include_pad))
    grads = [torch.randn(o.shape) for o in ref(x.detach(), levels, count_include_pad)]
    check_opcheck(torch.ops.rtseg.spatial_aware_pool_backward.default,
                  (grads, x.detach(), levels, count_include_pad))


def test_compile_fullgraph():
    x = make_inputs(hw=(22, 30))

    def fn(x):
        return [o.relu() for o in op(x * 2, 4, False)]

    check_compile(fn, (x,))


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_deterministic_backward(device):
    x = make_inputs(B=2, C=8, hw=(40, 56), device=device)
    check_deterministic(op, (x, 5, True))


@pytest.mark.parametrize("device", [SIM])
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("count_include_pad", [False])
def test_low_precision_sim(device, dtype, layout, count_include_pad):
    """The CUDA kernels in float16/bfloat16 under the CUDA simulator, by the GPU tests' rule."""
    x = make_inputs(B=1, C=10, hw=(37, 70), device=device, layout=layout)
    check_low_precision(op, ref, (x, 5, count_include_pad), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_low_precision_cuda(dtype, layout, count_include_pad):
    x = make_inputs(B=2, C=16, hw=(97, 150), device="cuda", layout=layout)
    check_low_precision(op, ref, (x, 5, count_include_pad), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
def test_large_offset_low_precision_cuda(dtype):
    """Half-precision input, float32 sums: the outputs match the float64 result of the same
    (rounded) input to the output dtype's rounding."""
    x = make_inputs(B=1, C=4, hw=(256, 384), device="cuda", offset=1e4).to(dtype)
    for j, (o, e) in enumerate(zip(op(x, 5), ref(x.double(), 5))):
        err = (o.double() - e).abs().max().item()
        assert err <= 1e4 * torch.finfo(dtype).eps, f"level {j + 1}: max error {err:.3g}"


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_large(layout):
    x = make_inputs(B=2, C=64, hw=(130, 260), device="cuda", layout=layout)
    check_against_reference(op, ref, (x, 6, True), atol=1e-4, rtol=1e-4)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    check_reference_fallback(monkeypatch, "spatial_aware_pool", op, ref, (make_inputs(), 3))


def test_backend_table_lists_op():
    row = backend_row("spatial_aware_pool")
    assert row["cpu"] == "C++"
    assert row["cuda"] == ("CUDA" if torch.cuda.is_available() else row["cuda"])


BAD_INPUTS = [
    # (description, args, exception, message pattern)
    ("x rank", lambda x: (x[0],), ValueError, "x: expected a 4-D"),
    ("levels zero", lambda x: (x, 0), ValueError, "levels: expected an integer in \\[1, 6\\]"),
    ("levels seven", lambda x: (x, 7), ValueError, "levels: expected an integer in \\[1, 6\\]"),
    ("levels float", lambda x: (x, 2.0), ValueError, "levels"),
    ("count_include_pad type", lambda x: (x, 3, 1), TypeError, "count_include_pad"),
    ("half on cpu", lambda x: (x.half(),), TypeError, "x: dtype torch.float16"),
    ("int input", lambda x: (x.int(),), TypeError, "x: dtype torch.int32"),
    ("empty map", lambda x: (x[:, :, :0],), ValueError, "x: expected a non-empty spatial size"),
    ("not a tensor", lambda x: (x.tolist(),), TypeError, "x: expected a torch.Tensor"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, make, exc, match):
    with pytest.raises(exc, match=match):
        op(*make(make_inputs()))


@pytest.mark.parametrize("args,match", [
    (lambda x: (x[0], 3, True), "x: expected a 4-D"),
    (lambda x: (x, 0, True), "levels: expected an integer in \\[1, 6\\]"),
    (lambda x: (x, 7, False), "levels: expected an integer in \\[1, 6\\]"),
    (lambda x: (x[:, :, :, :0], 2, True), "x: expected a non-empty spatial size"),
    (lambda x: (x.int(), 2, True), "Int"),
])
def test_direct_op_call_checks(args, match):
    """torch.ops.rtseg.* bypasses the Python checks; the C++ kernels must refuse bad input too."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.spatial_aware_pool(*args(make_inputs()))


@pytest.mark.parametrize("grads,match", [
    (lambda gs, x: gs[:2], "grad_outputs: expected 3 tensors"),
    (lambda gs, x: [gs[0], gs[1][:, :, :1], gs[2]], "grad_outputs\\[1\\]: expected shape"),
    (lambda gs, x: [g.double() for g in gs], "grad_outputs: expected dtype"),
    (lambda gs, x: [gs[0][0]] + gs[1:], "grad_outputs: expected a 4-D"),
])
def test_direct_backward_call_checks(grads, match):
    x = make_inputs()
    gs = [torch.zeros(o.shape) for o in ref(x, 3)]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.spatial_aware_pool_backward(grads(gs, x), x, 3, True)
