"""Generic checks every op's tests reuse: each op supplies a table of cases, not new machinery.

An op is tested through a pair of callables with the same signature, the public function and its
reference from rtseg_ops.reference; inputs are built per case by the op's test module.
"""
import contextlib
import os
import warnings

import pytest
import torch

import rtseg_ops
from rtseg_ops import _backend

# Tests that run on a CUDA device carry the "gpu" mark (`pytest -m gpu`: what `make gpu-check`
# runs) and are skipped without CUDA. RTSEG_COLLECT_CUDA=1 collects them on a machine without
# CUDA too, so that `make gpu-check DRY_RUN=1` can list them.
CUDA_MARKS = (pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
COLLECT_CUDA = torch.cuda.is_available() or os.environ.get("RTSEG_COLLECT_CUDA") == "1"
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=CUDA_MARKS)] if COLLECT_CUDA else [])
# Half-precision dtypes are GPU-only (docs/ops.md, common rules).
# The CUDA C++ kernels under the CUDA simulator (tests/cuda_sim), on CPU tensors: conftest routes
# torch.ops.rtseg to them for tests marked `sim`, which also accept the CUDA dtypes on the CPU.
SIM = pytest.param("cpu", id="sim", marks=pytest.mark.sim)
SIM_DEVICES = ["cpu", SIM] + DEVICES[1:]
GPU_LOW_PRECISION = [torch.float16, torch.bfloat16]


def requires_cuda(test):
    """Decorator of a test that needs a CUDA device: CUDA_MARKS."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


def to_layout(t, layout):
    """The same values as `t` in another memory layout: "contiguous", "channels_last", or
    "strided" (a view into a larger buffer, so neither contiguous nor channels_last)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        big = torch.zeros(t.shape[:-1] + (2 * t.shape[-1] + 1,), dtype=t.dtype, device=t.device)
        view = big[..., 1::2]
        view.copy_(t)
        return view
    raise ValueError(layout)


def float_leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def _clone_leaves(args, requires_grad):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            a = a.detach().clone(memory_format=torch.preserve_format)
            if a.dim() == 4 and not a.is_contiguous() and not a.is_contiguous(
                    memory_format=torch.channels_last):
                # keep non-dense inputs non-dense: clone() would make them dense
                a = to_layout(a, "strided")
            a.requires_grad_(requires_grad)
        out.append(a)
    return out


def _outputs(result):
    return list(result) if isinstance(result, (list, tuple)) else [result]


def forward_and_grads(fn, args, kwargs, grad_outputs=None):
    """Run fn, then backprop `grad_outputs` (None: through .sum(), which hands the backward
    zero-stride gradients). Returns (outputs, grads of the floating-point inputs)."""
    leaves_args = _clone_leaves(args, requires_grad=True)
    outs = _outputs(fn(*leaves_args, **kwargs))
    if grad_outputs is None:
        total = sum(o.sum() for o in outs)
    else:
        total = sum((o * g).sum() for o, g in zip(outs, grad_outputs))
    leaves = float_leaves(leaves_args)
    grads = torch.autograd.grad(total, leaves, allow_unused=True) if total.requires_grad else \
        [None] * len(leaves)
    return [o.detach() for o in outs], list(grads)


def assert_close(actual, expected, atol, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def check_against_reference(op, ref, args, kwargs=None, atol=1e-5, rtol=1e-5, backward=True):
    """Outputs and input gradients of `op` equal those of `ref`, with a random grad_output and
    through .sum()."""
    kwargs = kwargs or {}
    ref_outs, _ = forward_and_grads(ref, args, kwargs)
    for i, o in enumerate(_outputs(op(*args, **kwargs))):
        assert_close(o, ref_outs[i], atol, rtol, f"output {i}")
    if not backward:
        return
    gen = torch.Generator().manual_seed(1)
    grad_outputs = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)
                    for o in ref_outs]
    for gos in (grad_outputs, None):
        _, ref_grads = forward_and_grads(ref, args, kwargs, gos)
        _, op_grads = forward_and_grads(op, args, kwargs, gos)
        how = "random grad_output" if gos is not None else ".sum()"
        for i, (g, r) in enumerate(zip(op_grads, ref_grads)):
            if r is None:
                r = torch.zeros_like(float_leaves(args)[i])
            assert g is not None, f"grad of input {i} is missing ({how})"
            assert_close(g, r, atol, rtol, f"grad of input {i} ({how})")


def check_low_precision(op, ref, args, kwargs=None, dtype=torch.float16, slack=2.0, floor=1e-3):
    """flash-attention's rule: in `dtype`, the op's error against a float64 reference is at most
    `slack` times the error of the reference itself run in `dtype` (plus `floor`), for the
    output and every input gradient. As in flash-attention's tests, the float64 reference runs
    on the same `dtype` inputs (upcast), so both errors measure the computation alone, not the
    inputs' rounding (to which some gradients are more sensitive than to the arithmetic)."""
    kwargs = kwargs or {}
    low = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
           for a in args]
    exact = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
             for a in low]
    gen = torch.Generator().manual_seed(2)
    ref_outs, _ = forward_and_grads(ref, exact, kwargs)
    gos_low = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype).to(o.device)
               for o in ref_outs]
    exact_outs, exact_grads = forward_and_grads(ref, exact, kwargs, [g.double() for g in gos_low])
    base_outs, base_grads = forward_and_grads(ref, low, kwargs, gos_low)
    op_outs, op_grads = forward_and_grads(op, low, kwargs, gos_low)
    pairs = [(f"output {i}", o, b, e) for i, (o, b, e) in
             enumerate(zip(op_outs, base_outs, exact_outs))]
    pairs += [(f"grad of input {i}", o, b, e) for i, (o, b, e) in
              enumerate(zip(op_grads, base_grads, exact_grads)) if e is not None]
    for what, o, b, e in pairs:
        assert o.dtype == dtype, f"{what}: dtype {o.dtype}, expected {dtype}"
        err = (o.double() - e).abs().max().item()
        base_err = (b.double() - e).abs().max().item()
        assert err <= slack * base_err + floor, \
            f"{what}: error {err:.3g} > {slack} x PyTorch's own {dtype} error {base_err:.3g}"


def check_gradcheck(fn, args, kwargs=None, seeds=(0, 1, 2), make_args=None):
    """float64 gradcheck over several seeds; `make_args(seed)` builds fresh inputs per seed."""
    kwargs = kwargs or {}
    for seed in seeds:
        case = make_args(seed) if make_args else args
        leaves = _clone_leaves([a.double() if isinstance(a, torch.Tensor) and
                                a.is_floating_point() else a for a in case], True)
        assert torch.autograd.gradcheck(lambda *xs: fn(*xs, **kwargs), leaves, eps=1e-6,
                                        atol=1e-5, rtol=1e-4)


def check_opcheck(op_overload, args):
    torch.library.opcheck(op_overload, args)


def check_compile(fn, args, kwargs=None, atol=1e-5, rtol=1e-5):
    """torch.compile(fullgraph=True) of a function calling the op: same outputs and gradients
    as eager, with no graph break."""
    kwargs = kwargs or {}
    torch._dynamo.reset()
    compiled = torch.compile(lambda *xs: fn(*xs, **kwargs), fullgraph=True)
    eager_outs, eager_grads = forward_and_grads(fn, args, kwargs)
    outs, grads = forward_and_grads(compiled, args, {})
    for i, (o, e) in enumerate(zip(outs, eager_outs)):
        assert_close(o, e, atol, rtol, f"compiled output {i}")
    for i, (g, e) in enumerate(zip(grads, eager_grads)):
        if e is not None:
            assert_close(g, e, atol, rtol, f"compiled grad of input {i}")


@contextlib.contextmanager
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def check_deterministic(fn, args, kwargs=None):
    """Under use_deterministic_algorithms(True), two backward passes are bitwise identical."""
    kwargs = kwargs or {}
    with deterministic():
        gen = torch.Generator().manual_seed(3)
        outs, _ = forward_and_grads(fn, args, kwargs)
        gos = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]
        _, first = forward_and_grads(fn, args, kwargs, gos)
        _, second = forward_and_grads(fn, args, kwargs, gos)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a is not None and torch.equal(a, b), f"grad of input {i} differs between runs"


def check_reference_fallback(monkeypatch, name, op, ref, args):
    """With op `name`'s CPU kernel marked missing, the public function warns once, naming the op,
    and returns the reference's result."""
    monkeypatch.setitem(_backend._AVAILABLE, (name, "cpu"), False)
    monkeypatch.setattr(_backend, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match=f"{name}.*reference"):
        out = op(*args)
    torch.testing.assert_close(out, ref(*args))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op(*args)


def backend_row(name):
    """Op `name`'s row of rtseg_ops.backend_table()."""
    return next(r for r in rtseg_ops.backend_table() if r["op"] == name)


# Where tests call Triton kernels directly: the GPU, else the CPU under TRITON_INTERPRET=1
# (conftest.py sets it when there is no CUDA).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
