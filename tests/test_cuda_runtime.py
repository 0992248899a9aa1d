"""Every op in the CUDA runtime situations a user's program puts it in: captured into a CUDA graph
and replayed on new values, compiled by Inductor (default and mode="reduce-overhead", which
replays CUDA graphs), launched from a non-default stream, and given cuda:0 tensors while another
device is current. Each compares with the PyTorch reference on the values the op must have read.
All need a GPU (skipped without CUDA)."""
import pytest
import torch

from op_cases import OPS, outputs
from op_harness import assert_close, check_compile, float_leaves, forward_and_grads, requires_cuda

ATOL = RTOL = 1e-4


def _refill_(args, step):
    """New values in the same tensors (shapes, strides and addresses kept)."""
    with torch.no_grad():
        for a in float_leaves(args):
            a.mul_(-0.5 if step % 2 else 1.5).add_(0.1 * step)


def _is_float(a):
    return isinstance(a, torch.Tensor) and a.is_floating_point()


def _check_outputs(outs, expected, what):
    assert len(outs) == len(expected)
    for i, (o, e) in enumerate(zip(outs, expected)):
        assert_close(o, e, ATOL, RTOL, f"{what}: output {i}")


def _grad_outputs(outs):
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]


@requires_cuda
@pytest.mark.parametrize("name", list(OPS))
def test_cuda_graph_capture_and_replay(name):
    """Forward and backward captured once, replayed on new input values: the results follow
    the values (nothing baked in at capture, e.g. index maps copied from host memory)."""
    fn, ref, make, _ = OPS[name]
    args = list(make("cuda", torch.float32))
    leaves = [a.requires_grad_() if _is_float(a) else a for a in args]
    gos = _grad_outputs(outputs(ref(*args)))

    def step():
        outs = outputs(fn(*leaves))
        return outs, torch.autograd.grad(outs, float_leaves(leaves), gos, allow_unused=True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles, lazy allocations) before capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs, grads = step()
    for k in (1, 2):
        _refill_(leaves, k)
        graph.replay()
        torch.cuda.synchronize()
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in leaves]
        ref_outs, ref_grads = forward_and_grads(ref, plain, {}, gos)
        _check_outputs(outs, ref_outs, f"replay {k}")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            if r is not None:
                assert_close(g, r, ATOL, RTOL, f"replay {k}: grad of input {i}")


@requires_cuda
@pytest.mark.parametrize("name", list(OPS))
def test_cuda_compile_reduce_overhead(name):
    """torch.compile(mode="reduce-overhead", fullgraph=True): Inductor captures the op into its
    CUDA graphs (no cudagraph skip) and replays give the reference's results on new values."""
    from torch._dynamo.utils import counters

    fn, ref, make, _ = OPS[name]
    args = list(make("cuda", torch.float32))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda *a: [o * 2 for o in outputs(fn(*a))],
                             mode="reduce-overhead", fullgraph=True)
    for k in range(4):  # the first calls record, the later ones replay
        _refill_(args, k)
        with torch.no_grad():
            outs = [o.clone() for o in compiled(*args)]
            expected = [2 * o for o in outputs(ref(*args))]
        _check_outputs(outs, expected, f"call {k}")
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


@requires_cuda
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"),
                                          (torch.float16, "channels_last")])
@pytest.mark.parametrize("name", list(OPS))
def test_cuda_compile_inductor(name, dtype, layout):
    """torch.compile(fullgraph=True) with Inductor on CUDA, elementwise work fused around the
    op: the eager outputs and gradients."""
    fn, _, make, _ = OPS[name]
    args = make("cuda", dtype, layout)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    check_compile(lambda *a: [torch.sin(o) * 3 for o in outputs(fn(*a))], args, atol=tol,
                  rtol=tol)


@requires_cuda
@pytest.mark.parametrize("name", list(OPS))
def test_cuda_non_default_stream(name):
    """From a side stream whose inputs are written behind a long sleep, forward and backward
    read the values written there: every kernel runs on the current stream, not the default
    one."""
    fn, ref, make, _ = OPS[name]
    args = make("cuda", torch.float32)
    expected_outs = outputs(ref(*args))
    gos = _grad_outputs(expected_outs)
    _, expected_grads = forward_and_grads(ref, args, {}, gos)
    blank = [torch.zeros_like(a) if _is_float(a) else a for a in args]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s: the default stream would run ahead
        for b, a in zip(blank, args):
            if _is_float(b):
                b.copy_(a)
        outs, grads = forward_and_grads(fn, blank, {}, gos)
    side.synchronize()
    _check_outputs(outs, expected_outs, "side stream")
    for i, (g, r) in enumerate(zip(grads, expected_grads)):
        if r is not None:
            assert_close(g, r, ATOL, RTOL, f"side stream: grad of input {i}")


@requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("name", list(OPS))
def test_cuda0_tensors_while_another_device_is_current(name):
    """With cuda:1 current, cuda:0 inputs give cuda:0 outputs and gradients, equal to the
    reference (the kernels set the device guard from their inputs)."""
    fn, ref, make, _ = OPS[name]
    args = make("cuda:0", torch.float32)
    gos = _grad_outputs(outputs(ref(*args)))
    expected_outs, expected_grads = forward_and_grads(ref, args, {}, gos)
    with torch.cuda.device(1):
        outs, grads = forward_and_grads(fn, args, {}, gos)
        torch.cuda.synchronize(0)
    assert all(o.device == torch.device("cuda:0") for o in outs)
    _check_outputs(outs, expected_outs, "cuda:1 current")
    for i, (g, r) in enumerate(zip(grads, expected_grads)):
        if r is not None:
            assert g.device == torch.device("cuda:0")
            assert_close(g, r, ATOL, RTOL, f"cuda:1 current: grad of input {i}")
