
import pytest
import torch

import rtseg_ops
from rtseg_ops import reference
from op_harness import (DEVICES, SIM, SIM_DEVICES, GPU_LOW_PRECISION, backend_row, check_against_reference,
                        check_compile, check_deterministic, check_gradcheck, check_low_precision,
                        check_opcheck, check_reference_fallback, requires_cuda, to_layout)

op = rtseg_ops.pyramid_pool
ref = reference.pyramid_pool


def make_input(B=2, C=3, hw=(9, 13), seed=0, dtype=torch.float32, device="cpu",
               layout="contiguous"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *hw, generator=gen, dtype=torch.float64)
    return to_layout(x.to(dtype=dtype, device=device), layout)


# (hw, grids, keep_aspect_ratio): bins that divide evenly, overlap (odd sizes), outnumber the
# input cells (3x5 and 1x1 with g=6), unsorted and repeated grids, and a 1:2 CSFCN map.
SHAPES = [
    ((12, 12), (1, 2, 3, 6), True),
    ((32, 64), (1, 2, 3, 6), True),
    ((7, 13), (1, 2, 3, 6), True),
    ((13, 7), (1, 2, 3, 6), False),
    ((3, 5), (1, 2, 3, 6), True),
    ((1, 1), (1, 2, 3, 6), True),
    ((17, 23), (6, 1, 4, 4), True),
    ((11, 9), (5,), False),
    ((20, 31), (2, 7, 3), True),
]


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("hw,grids,keep_aspect_ratio", SHAPES)
@pytest.mark.parametrize("cascade", [True, False])
def test_matches_reference(device, hw, grids, keep_aspect_ratio, cascade):
    x = make_input(hw=hw, device=device, dtype=torch.float64)
    check_against_reference(op, ref, (x, grids, keep_aspect_ratio, cascade), atol=1e-12,
                            rtol=1e-10)


def test_context_vector_counts():
    """docs/ops.md: M = 50 on a square map with the defaults, 100 on a 1:2 map."""
    assert op(make_input(hw=(24, 24))).shape == (2, 3, 50)
    assert op(make_input(hw=(32, 64))).shape == (2, 3, 100)


def test_float32_large_map():
    x = make_input(B=1, C=4, hw=(127, 255))
    check_against_reference(op, ref, (x, (1, 2, 3, 6), True, False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", SIM_DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("cascade", [True, False])
def test_layouts(device, layout, cascade):
    x = make_input(C=5, hw=(11, 19), device=device, layout=layout)
    check_against_reference(op, ref, (x, (1, 2, 3, 6), True, cascade), atol=1e-5, rtol=1e-5)
    if layout == "channels_last":
        x.requires_grad_()
        op(x).sum().backward()
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_empty_batch(device):
    x = make_input(B=0, hw=(8, 16), device=device).requires_grad_()
    out = op(x)
    assert out.shape == (0, 3, 100)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_module():
    x = make_input(hw=(10, 14))
    m = rtseg_ops.PyramidPool(grids=(1, 3), keep_aspect_ratio=False, cascade=False)
    torch.testing.assert_close(m(x), ref(x, (1, 3), False, False))
    assert "grids=(1, 3)" in repr(m)


@pytest.mark.parametrize("cascade", [True, False])
def test_gradcheck(cascade):
    check_gradcheck(op, None, dict(grids=(1, 2, 3, 6), keep_aspect_ratio=True, cascade=cascade),
                    make_args=lambda seed: (make_input(B=2, C=2, hw=(7, 11), seed=seed),))


@pytest.mark.parametrize("hw,grids,keep,cascade,layout", [
    ((7, 11), [1, 2, 3, 6], True, True, "contiguous"),
    ((8, 8), [6, 2], False, False, "channels_last"),
    ((5, 9), [1, 3, 3], True, True, "strided"),
])
def test_opcheck(hw, grids, keep, cascade, layout):
    x = make_input(C=4, hw=hw, layout=layout).requires_grad_()
    check_opcheck(torch.ops.rtseg.pyramid_pool.default, (x, grids, keep, cascade))
    grad = torch.randn(2, 4, ref(x, tuple(grids), keep, cascade).shape[-1])
    check_opcheck(torch.ops.rtseg.pyramid_pool_backward.default,
                  (grad, x.detach(), grids, keep, cascade))


@pytest.mark.parametrize("cascade", [True, False])
def test_compile_fullgraph(cascade):
    x = make_input(C=4, hw=(9, 17))

    def fn(x):
        return op(x * 2, (1, 2, 3, 6), True, cascade).tanh()

    check_compile(fn, (x,))


@pytest.mark.parametrize("device", SIM_DEVICES)
def test_deterministic_backward(device):
    check_deterministic(op, (make_input(C=16, hw=(33, 65), device=device),))


@pytest.mark.parametrize("device", [SIM])
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("cascade", [True])
def test_low_precision_sim(device, dtype, layout, cascade):
    """The CUDA kernels in float16/bfloat16 under the CUDA simulator, by the GPU tests' rule."""
    x = make_input(B=2, C=4, hw=(13, 27), device=device, layout=layout)
    check_low_precision(op, ref, (x, (1, 2, 3, 6), True, cascade), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("cascade", [True, False])
def test_low_precision_cuda(dtype, layout, cascade):
    x = make_input(B=2, C=64, hw=(65, 129), device="cuda", layout=layout)
    check_low_precision(op, ref, (x, (1, 2, 3, 6), True, cascade), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("cascade", [True, False])
def test_cuda_large(cascade):
    x = make_input(B=4, C=96, hw=(129, 257), device="cuda")
    check_against_reference(op, ref, (x, (1, 2, 3, 6), True, cascade), atol=1e-5, rtol=1e-4)


@requires_cuda
@pytest.mark.parametrize("cascade", [True, False])
def test_cuda_graph_capture_and_replay(cascade):
    """The index maps are built on the device, so a captured graph stays right after other calls
    (with other geometries) have run between capture and replay."""
    x = make_input(B=2, C=8, hw=(33, 65), device="cuda").requires_grad_()
    g = torch.randn(2, 8, 100, device="cuda")
    args = ((1, 2, 3, 6), True, cascade)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        op(x, *args).backward(g)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(x, *args)
        y.backward(g)
    for hw in [(7, 13), (129, 257), (12, 12)]:  # other geometries between capture and replay
        op(make_input(B=1, C=2, hw=hw, device="cuda"), *args)
    with torch.no_grad():
        x.copy_(make_input(B=2, C=8, hw=(33, 65), seed=1, device="cuda"))
    x.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    xr = x.detach().clone().requires_grad_()
    yr = ref(xr, *args)
    yr.backward(g)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    check_reference_fallback(monkeypatch, "pyramid_pool", op, ref, (make_input(),))


def test_backend_table_lists_op():
    row = backend_row("pyramid_pool")
    assert row["cpu"] == "C++"


BAD_INPUTS = [
    ("rank", lambda x: (x[0],), ValueError, "x: expected a 4-D"),
    ("half on cpu", lambda x: (x.half(),), TypeError, "x: dtype torch.float16"),
    ("int input", lambda x: (x.int(),), TypeError, "x: dtype torch.int32"),
    ("empty spatial", lambda x: (x[:, :, :0],), ValueError, "x: expected a non-empty spatial"),
    ("grid zero", lambda x: (x, (1, 0)), ValueError, "grids: expected a tuple"),
    ("no grids", lambda x: (x, ()), ValueError, "grids: expected a tuple"),
    ("grid type", lambda x: (x, (1.5,)), ValueError, "grids: expected a tuple"),
    ("keep type", lambda x: (x, (1, 2), 1), TypeError, "keep_aspect_ratio: expected a bool"),
    ("cascade type", lambda x: (x, (1, 2), True, "yes"), TypeError, "cascade: expected a bool"),
    ("not a tensor", lambda x: (x.tolist(),), TypeError, "x: expected a torch.Tensor"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, make, exc, match):
    with pytest.raises(exc, match=match):
        op(*make(make_input()))


@pytest.mark.parametrize("call,match", [
    (lambda x: torch.ops.rtseg.pyramid_pool(x[0], [1, 2], True, True), "x: expected a 4-D"),
    (lambda x: torch.ops.rtseg.pyramid_pool(x, [1, -2], True, True), "grids: expected positive"),
    (lambda x: torch.ops.rtseg.pyramid_pool(x, [], True, True), "grids: expected 1 to"),
    (lambda x: torch.ops.rtseg.pyramid_pool(x[:, :, :, :0], [1], True, True),
     "non-empty spatial"),
    (lambda x: torch.ops.rtseg.pyramid_pool_backward(torch.zeros(2, 3, 4), x, [1, 2], True,
                                                    True), "grad_output: expected shape"),
    (lambda x: torch.ops.rtseg.pyramid_pool_backward(torch.zeros(2, 3, 5).double(), x, [1, 2],
                                                    True, True), "grad_output: expected dtype"),
])
def test_direct_op_call_checks(call, match):
    """torch.ops.rtseg.* bypasses the Python checks; the C++ kernels must refuse bad input too."""
    with pytest.raises(RuntimeError, match=match):
        call(make_input(hw=(4, 4)))
