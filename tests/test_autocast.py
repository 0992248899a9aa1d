"""torch.autocast: every op's policy (rtseg_ops/_autocast.py) and the four fused models.

CPU: float16/bfloat16 inputs run in float32 (the CPU kernels' precision) and give float32
outputs, so the op under autocast equals its reference run in float32 on the same (rounded)
values. CUDA: memory-bound ops promote mixed inputs to the widest dtype and keep a shared one;
pixel_context_attention casts float32 inputs to the autocast dtype.
"""
import pytest
import torch

import rtseg_ops
from rtseg_ops import reference
from model_harness import assert_close as assert_close_scaled
from model_harness import image, make_model, twin
import test_grouped_flow_warp
from op_cases import OPS, outputs as _outputs
from op_harness import assert_close, float_leaves, forward_and_grads, requires_cuda
def _as(args, dtype):
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


def _grad_outputs(outs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]


@pytest.mark.parametrize("name", list(OPS))
def test_cpu_bfloat16_autocast(name):
    """bfloat16 inputs under CPU autocast: float32 outputs equal to the reference in float32 on
    the same values, bfloat16 gradients equal to the reference's rounded to bfloat16."""
    fn, ref, make, _ = OPS[name]
    args = _as(make("cpu", torch.float32), torch.bfloat16)
    exact = _as(args, torch.float32)
    ref_outs = _outputs(ref(*exact))
    gos = _grad_outputs(ref_outs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs, grads = forward_and_grads(fn, args, {}, gos)
    _, ref_grads = forward_and_grads(ref, exact, {}, gos)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.dtype == torch.float32, f"output {i}: dtype {o.dtype}"
        assert_close(o, r, 1e-5, 1e-5, f"output {i}")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g is not None and g.dtype == torch.bfloat16, f"grad of input {i}"
        # the reference's float32 gradient, rounded as the bfloat16 leaf's gradient is
        assert_close(g.float(), r.to(torch.bfloat16).float(), 1e-2, 1e-2, f"grad of input {i}")


@pytest.mark.parametrize("name", list(OPS))
def test_cpu_autocast_direct_op_and_mixed_dtypes(name):
    """A direct torch.ops.rtseg call gets the same rule at the AutocastCPU key, and inputs of
    mixed dtypes (bfloat16 next to float32) are accepted."""
    fn, _, make, direct = OPS[name]
    args = make("cpu", torch.float32)
    low = _as(args, torch.bfloat16)
    mixed = (low[0],) + tuple(args[1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        public = _outputs(fn(*mixed))
        raw = _outputs(direct(*low))
    expected_mixed = _outputs(fn(*_as(mixed, torch.float32)))
    expected_raw = _outputs(fn(*_as(low, torch.float32)))
    for i, (p, e) in enumerate(zip(public, expected_mixed)):
        assert p.dtype == torch.float32
        assert_close(p, e, 0, 0, f"mixed-dtype output {i}")
    for i, (r, e) in enumerate(zip(raw, expected_raw)):
        assert r.dtype == torch.float32
        assert_close(r, e, 0, 0, f"direct-call output {i}")


def test_cpu_bfloat16_still_refused_outside_autocast():
    x, flow = test_grouped_flow_warp.make_inputs(dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="input: dtype torch.bfloat16 is not supported on cpu"):
        rtseg_ops.grouped_flow_warp(x, flow, 2)


def test_cpu_autocast_compile_fullgraph():
    x, flow = test_grouped_flow_warp.make_inputs(C=8, groups=2, dtype=torch.bfloat16)
    fn = torch.compile(lambda a, b: rtseg_ops.grouped_flow_warp(a, b, 2).relu(), fullgraph=True,
                       backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, flow)
    expected = reference.grouped_flow_warp(x.float(), flow.float(), 2).relu()
    torch.testing.assert_close(out, expected)


# name -> (input size, constructor options): the models' SMALL test sizes
MODELS = {"csfcn": ((32, 64), {}), "msfnet": ((32, 64), {}), "sgcpnet": ((64, 128), {}),
          "fbsnet": ((16, 32), {})}
# bfloat16 has an 8-bit mantissa: logits of these random networks differ by about 1% of their
# scale between any two bfloat16 evaluation orders.
MODEL_RTOL = 3e-2


@pytest.mark.parametrize("name", list(MODELS))
def test_model_cpu_bfloat16_autocast(name):
    """ops="fused" under CPU bfloat16 autocast runs, matches ops="reference" under the same
    autocast within MODEL_RTOL of the logits' scale, is no further from the float32 logits than
    twice the reference's own autocast error, and trains: every parameter gets a finite
    gradient."""
    size, options = MODELS[name]
    fused = make_model(name, "fused", num_classes=19, **options).eval()
    ref = twin(fused, name, "reference", num_classes=19, **options).eval()
    x = image(size)
    with torch.no_grad():
        exact = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, ref_out = fused(x), ref(x)
    assert out.dtype == ref_out.dtype
    assert_close_scaled(out.float(), ref_out.float(), MODEL_RTOL, "autocast logits")
    err = (out.float() - exact).abs().max().item()
    ref_err = (ref_out.float() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-3 * exact.abs().max().item(), (err, ref_err)

    fused.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = fused(image(size, 2))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    missing = [n for n, p in fused.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in fused.parameters() if p.grad is not None)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(OPS))
def test_cuda_autocast(name, dtype):
    """CUDA autocast: inputs of one low dtype stay in it, mixed inputs promote to float32,
    float32 attention inputs are cast to the autocast dtype; values match the float64 reference
    within the dtype's tolerance and gradients reach every input."""
    fn, ref, make, direct = OPS[name]
    low = _as(make("cuda", torch.float32), dtype)
    mixed = (low[0].float(),) + tuple(low[1:])
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    with torch.autocast("cuda", dtype=dtype):
        outs, grads = forward_and_grads(fn, low, {})
        mixed_outs = _outputs(fn(*mixed))
        f32_outs = _outputs(fn(*_as(low, torch.float32)))
        raw = _outputs(direct(*mixed))
    expected = _outputs(ref(*_as(low, torch.float64)))
    attention = name == "pixel_context_attention"
    for i, (o, m, f, r, e) in enumerate(zip(outs, mixed_outs, f32_outs, raw, expected)):
        assert o.dtype == dtype, f"output {i}: {o.dtype}"
        assert m.dtype == r.dtype == (dtype if attention else torch.float32), f"output {i}"
        assert f.dtype == (dtype if attention else torch.float32), f"output {i}"
        assert_close(o.double(), e, tol, tol, f"output {i}")
        assert_close(m.double(), e, tol, tol, f"mixed output {i}")
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert len(grads) == len(float_leaves(low))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(MODELS))
def test_model_cuda_autocast(name, dtype):
    """ops="fused" under CUDA autocast matches ops="reference" under the same autocast (within
    MODEL_RTOL of the logits' scale in float16, twice that in bfloat16) and trains."""
    size, options = MODELS[name]
    fused = make_model(name, "fused", num_classes=19, **options).eval().cuda()
    ref = twin(fused, name, "reference", num_classes=19, **options).eval().cuda()
    x = image(size).cuda()
    rtol = MODEL_RTOL if dtype == torch.float16 else 2 * MODEL_RTOL
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        out, ref_out = fused(x), ref(x)
    assert out.dtype == ref_out.dtype
    assert_close_scaled(out.float(), ref_out.float(), rtol, "CUDA autocast logits")
    fused.train()
    with torch.autocast("cuda", dtype=dtype):
        outputs = fused(image(size, 2).cuda())
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in fused.parameters() if p.requires_grad)
