
import pytest
import torch

import rtseg_ops
from rtseg_ops import reference
from op_harness import (DEVICES, GPU_LOW_PRECISION, TRITON_DEVICE, backend_row,
                        check_against_reference, check_compile, check_deterministic,
                        check_gradcheck, check_low_precision, check_opcheck,
                        check_reference_fallback, requires_cuda, to_layout)

op = rtseg_ops.pixel_context_attention
ref = reference.pixel_context_attention
triton_kernels = None
try:
    from rtseg_ops.triton import pixel_context_attention as triton_kernels
except ImportError:  # the C++ and reference tests still run; the Triton ones skip
    pass
requires_triton = pytest.mark.skipif(triton_kernels is None, reason="needs triton")


def make_inputs(B=2, Ck=8, Cv=16, M=10, hw=(5, 7), logit_scale=1.0, seed=0,
                dtype=torch.float32, device="cpu", layout="contiguous"):
    """query scaled so that the logits have about `logit_scale` standard deviation."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Ck, *hw, generator=gen, dtype=torch.float64) * logit_scale / Ck ** 0.5
    k = torch.randn(B, Ck, M, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Cv, M, generator=gen, dtype=torch.float64)
    q, k, v = (t.to(dtype=dtype, device=device) for t in (q, k, v))
    q = to_layout(q, layout)
    if layout == "strided":  # key and value as transposed views too
        k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    return q, k, v


# (B, Ck, Cv, M, hw): M from 1 to 256 with non-powers of two, Ck 8 to 128, Cv 16 to 512,
# odd H and W.
SHAPES = [
    (2, 8, 16, 1, (5, 7)),
    (2, 8, 16, 3, (4, 4)),
    (1, 32, 64, 50, (9, 11)),
    (2, 16, 24, 100, (7, 13)),
    (1, 128, 32, 129, (3, 5)),
    (1, 24, 512, 256, (5, 3)),
    (3, 40, 40, 17, (1, 1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,Ck,Cv,M,hw", SHAPES)
def test_matches_reference(device, B, Ck, Cv, M, hw):
    args = make_inputs(B, Ck, Cv, M, hw, logit_scale=3.0, dtype=torch.float64, device=device)
    check_against_reference(op, ref, args + (0.8,), atol=1e-10, rtol=1e-9)


def test_many_tiles_float32():
    """More pixels than one tile of the CPU kernel, so several tiles and partials are summed."""
    args = make_inputs(B=2, Ck=32, Cv=64, M=100, hw=(37, 61), logit_scale=4.0)
    check_against_reference(op, ref, args, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_output_float32(layout):
    """An output over 16 MiB, which the CPU kernel streams out of a tile buffer; odd Cv and N,
    so output rows start unaligned."""
    args = make_inputs(B=1, Ck=8, Cv=65, M=9, hw=(257, 255), layout=layout)
    out = op(*args)
    assert out.numel() * out.element_size() >= 16 << 20
    check_against_reference(op, ref, args, atol=1e-5, rtol=1e-5, backward=False)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_large_logits_do_not_overflow(device):
    """scale 100 on unit logits: exp would overflow without the max subtraction."""
    q, k, v = make_inputs(B=2, Ck=16, Cv=16, M=37, hw=(6, 9), dtype=torch.float64, device=device)
    check_against_reference(op, ref, (q, k, v, 100.0), atol=1e-9, rtol=1e-8)
    out = op(q.float(), k.float(), v.float(), 100.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref(q, k, v, 100.0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(device, layout):
    args = make_inputs(Ck=16, Cv=24, M=20, hw=(7, 9), device=device, layout=layout)
    check_against_reference(op, ref, args, atol=1e-5, rtol=1e-5)
    if layout == "channels_last":
        assert op(*args).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    q, k, v = make_inputs(B=0, device=device)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = op(*leaves)
    assert out.shape == (0, 16, 5, 7)
    out.sum().backward()
    assert all(t.grad.shape == t.shape for t in leaves)


def test_module():
    q, k, v = make_inputs()
    m = rtseg_ops.PixelContextAttention(scale=0.5)
    torch.testing.assert_close(m(q, k, v), ref(q, k, v, 0.5))
    assert "scale=0.5" in repr(m)


def test_gradcheck():
    check_gradcheck(op, None, dict(scale=1.3),
                    make_args=lambda seed: make_inputs(B=1, Ck=4, Cv=5, M=6, hw=(3, 4),
                                                       logit_scale=2.0, seed=seed))


@pytest.mark.parametrize("M,layout", [(10, "contiguous"), (1, "channels_last"),
                                      (33, "strided")])
def test_opcheck(M, layout):
    q, k, v = make_inputs(Ck=8, Cv=12, M=M, hw=(5, 6), layout=layout)
    for t in (q, k, v):
        t.requires_grad_()
    check_opcheck(torch.ops.rtseg.pixel_context_attention.default, (q, k, v, 0.9))
    out, lse = torch.ops.rtseg.pixel_context_attention(q.detach(), k.detach(), v.detach(), 0.9)
    grad = torch.randn_like(out)
    check_opcheck(torch.ops.rtseg.pixel_context_attention_backward.default,
                  (grad, q.detach(), k.detach(), v.detach(), lse, 0.9))


def test_compile_fullgraph():
    q, k, v = make_inputs(Ck=8, Cv=16, M=12, hw=(6, 7))

    def fn(q, k, v):
        return op(q * 2, k, v, 0.5).relu()

    check_compile(fn, (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward(device):
    check_deterministic(op, make_inputs(B=2, Ck=16, Cv=32, M=50, hw=(29, 41), device=device))


# The Triton kernels, run directly (under TRITON_INTERPRET=1 on the CPU): small shapes.
class TritonAttention(torch.autograd.Function):
    splits = None

    @staticmethod
    def forward(ctx, q, k, v, scale):
        out, lse = triton_kernels.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grads = triton_kernels.backward(grad_out, *ctx.saved_tensors, ctx.scale,
                                        splits=TritonAttention.splits)
        return grads + (None,)


def triton_op(q, k, v, scale=1.0):
    return TritonAttention.apply(q, k, v, scale)


TRITON_SHAPES = [
    (2, 8, 16, 1, (5, 7)),
    (1, 24, 40, 100, (9, 11)),
    (1, 72, 80, 33, (4, 3)),
    (1, 8, 16, 200, (3, 3)),
]


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,Ck,Cv,M,hw", TRITON_SHAPES)
def test_triton_matches_reference(dtype, B, Ck, Cv, M, hw):
    args = make_inputs(B, Ck, Cv, M, hw, logit_scale=3.0, dtype=dtype, device=TRITON_DEVICE)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    check_against_reference(triton_op, ref, args + (0.7,), atol=tol, rtol=tol)


@requires_triton
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_triton_layouts_and_many_programs(layout, monkeypatch):
    """Non-NCHW inputs, and programs that each walk several pixel tiles (partials summed)."""
    monkeypatch.setattr(TritonAttention, "splits", 3)
    args = make_inputs(B=2, Ck=16, Cv=32, M=20, hw=(17, 19), device=TRITON_DEVICE,
                       layout=layout)
    check_against_reference(triton_op, ref, args, atol=2e-5, rtol=2e-5)
    if layout == "channels_last":
        assert triton_op(*args).is_contiguous(memory_format=torch.channels_last)


@requires_triton
def test_triton_large_logits():
    args = make_inputs(B=1, Ck=16, Cv=16, M=37, hw=(5, 6), dtype=torch.float64,
                       device=TRITON_DEVICE)
    check_against_reference(triton_op, ref, args + (100.0,), atol=1e-9, rtol=1e-8)


# GPU-only cases (also compiled for sm_90 by tests/test_triton_compile.py): CSFCN's channels,
# M = 50 (square crops), 100 (1024x2048) and 256, then the CSFCN shape itself.
GPU_SHAPES = [(2, 32, 256, M, (33, 65)) for M in (50, 100, 256)] + [(4, 32, 256, 100, (64, 128))]


TRITON_BAD = [
    (lambda q, k, v: (q, k[:, :5], v), ValueError, "key: expected 8 channels"),
    (lambda q, k, v: (q, k, v[..., :4]), ValueError, "value: expected M = 10"),
    (lambda q, k, v: (q, k[:1], v), ValueError, "key: expected batch 2"),
    (lambda q, k, v: (q, k, v.double()), TypeError, "value: expected dtype"),
    (lambda q, k, v: (q[0], k, v), ValueError, "query: expected a 4-D"),
]


@requires_triton
@pytest.mark.parametrize("make,exc,match", TRITON_BAD)
def test_triton_checks_arguments(make, exc, match):
    """A direct torch.ops.rtseg call reaches the Triton launcher unchecked; it must refuse
    mismatched shapes instead of reading out of bounds."""
    q, k, v = make_inputs(device=TRITON_DEVICE)
    with pytest.raises(exc, match=match):
        triton_kernels.forward(*make(q, k, v), 1.0)
    out, lse = triton_kernels.forward(q, k, v, 1.0)
    with pytest.raises(exc, match=match):
        triton_kernels.backward(out, *make(q, k, v), lse, 1.0)


@requires_triton
def test_triton_backward_checks_grad_and_lse():
    q, k, v = make_inputs(device=TRITON_DEVICE)
    out, lse = triton_kernels.forward(q, k, v, 1.0)
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        triton_kernels.backward(out[:, 1:], q, k, v, lse, 1.0)
    with pytest.raises(ValueError, match="lse: expected shape"):
        triton_kernels.backward(out, q, k, v, lse[:, 1:], 1.0)
    with pytest.raises(TypeError, match="lse: expected dtype"):
        triton_kernels.backward(out, q, k, v, lse.double(), 1.0)


@requires_triton
def test_triton_float32_precision_follows_torch_setting():
    """float32 runs on tensor cores: 3xTF32 at torch's default "highest", TF32 below it."""
    previous = torch.get_float32_matmul_precision()
    try:
        assert triton_kernels._precision(torch.float32) == "tf32x3"
        torch.set_float32_matmul_precision("high")
        assert triton_kernels._precision(torch.float32) == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert triton_kernels._precision(torch.float64) == "ieee"


@pytest.mark.gpu  # `make gpu-check` runs the gpu-marked tests
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_on_second_device():
    args = make_inputs(Ck=16, Cv=24, M=20, hw=(7, 9), device="cuda:1")
    with torch.cuda.device(0):
        check_against_reference(op, ref, args, atol=1e-5, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("B,Ck,Cv,M,hw", GPU_SHAPES[:3])
def test_low_precision_cuda(dtype, layout, B, Ck, Cv, M, hw):
    args = make_inputs(B, Ck, Cv, M, hw, logit_scale=3.0, device="cuda", layout=layout)
    check_low_precision(op, ref, args, dtype=dtype)


@requires_cuda
def test_cuda_csfcn_shape():
    args = make_inputs(*GPU_SHAPES[3], logit_scale=3.0, device="cuda")
    check_against_reference(op, ref, args, atol=1e-4, rtol=1e-4)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    check_reference_fallback(monkeypatch, "pixel_context_attention", op, ref, make_inputs())


def test_backend_table_lists_op():
    row = backend_row("pixel_context_attention")
    assert row["cpu"] == "C++"
    if torch.version.cuda is None:  # a CPU-only torch has no CUDA to run the Triton kernel on
        assert row["cuda"] == "none (CPU-only torch)"
    else:
        assert row["cuda"] == ("Triton" if triton_kernels is not None else "reference")


BAD_INPUTS = [
    ("query rank", lambda q, k, v: (q[0], k, v), ValueError, "query: expected a 4-D"),
    ("key rank", lambda q, k, v: (q, k[0], v), ValueError, "key: expected a 3-D"),
    ("Ck mismatch", lambda q, k, v: (q, k[:, :5], v), ValueError, "key: expected 8 channels"),
    ("key batch", lambda q, k, v: (q, k[:1], v), ValueError, "key: expected batch 2"),
    ("value batch", lambda q, k, v: (q, k, v[:1]), ValueError, "value: expected batch 2"),
    ("M zero", lambda q, k, v: (q, k[..., :0], v[..., :0]), ValueError, "M >= 1"),
    ("value M", lambda q, k, v: (q, k, v[..., :4]), ValueError, "value: expected M = 10"),
    ("dtype mismatch", lambda q, k, v: (q, k.double(), v), TypeError, "key: expected dtype"),
    ("device", lambda q, k, v: (q, k, v.to("meta")), ValueError, "value: device meta"),
    ("half on cpu", lambda q, k, v: (q.half(), k.half(), v.half()), TypeError,
     "query: dtype torch.float16"),
    ("scale type", lambda q, k, v: (q, k, v, "1"), TypeError, "scale: expected a real"),
    ("not a tensor", lambda q, k, v: (q.tolist(), k, v), TypeError,
     "query: expected a torch.Tensor"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, make, exc, match):
    with pytest.raises(exc, match=match):
        op(*make(*make_inputs()))


@pytest.mark.parametrize("args,match", [
    (lambda q, k, v: (q, k[:, :5], v), "key: expected 8 channels"),
    (lambda q, k, v: (q, k[..., :0], v[..., :0]), "M >= 1"),
    (lambda q, k, v: (q, k, v[:1]), "value: expected batch 2"),
    (lambda q, k, v: (q, k, v.double()), "value: expected dtype"),
    (lambda q, k, v: (q[0], k, v), "query: expected a 4-D"),
])
def test_direct_op_call_checks(args, match):
    """torch.ops.rtseg.* bypasses the Python checks; the C++ kernels must refuse bad input too."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.pixel_context_attention(*args(*make_inputs()), 1.0)


def test_direct_backward_call_checks():
    q, k, v = make_inputs()
    out, lse = torch.ops.rtseg.pixel_context_attention(q, k, v, 1.0)
    with pytest.raises(RuntimeError, match="lse: expected shape"):
        torch.ops.rtseg.pixel_context_attention_backward(out, q, k, v, lse[:, 1:], 1.0)
    with pytest.raises(RuntimeError, match="grad_output: expected shape"):
        torch.ops.rtseg.pixel_context_attention_backward(out[:, 1:], q, k, v, lse, 1.0)
    with pytest.raises(RuntimeError, match="lse: expected Float"):
        torch.ops.rtseg.pixel_context_attention_backward(out, q, k, v, lse.double(), 1.0)
