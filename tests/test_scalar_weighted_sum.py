
import pytest
import torch

import rtseg_ops
from rtseg_ops import reference
from op_harness import (DEVICES, GPU_LOW_PRECISION, TRITON_DEVICE, backend_row,
                        check_against_reference, check_compile, check_deterministic,
                        check_gradcheck, check_low_precision, check_opcheck,
                        check_reference_fallback, requires_cuda, to_layout)


# The harness passes tensors as top-level arguments; these spread the input list out:
# (x_0, ..., x_{n-1}, weights).
def op(*tensors, **kwargs):
    return rtseg_ops.scalar_weighted_sum(list(tensors[:-1]), tensors[-1], **kwargs)


def ref(*tensors, **kwargs):
    return reference.scalar_weighted_sum(list(tensors[:-1]), tensors[-1], **kwargs)


def make_inputs(sizes, B=2, C=3, seed=0, dtype=torch.float32, device="cpu", layout="contiguous",
                ties=False, weights=None):
    """One (B, C, h, w) tensor per size in `sizes` (the first is the output size) and the
    weights. `ties` draws small integers so that max windows hold equal values."""
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for hw in sizes:
        if ties:
            x = torch.randint(0, 3, (B, C) + tuple(hw), generator=gen).to(torch.float64)
        else:
            x = torch.randn((B, C) + tuple(hw), generator=gen, dtype=torch.float64)
        xs.append(to_layout(x.to(dtype=dtype, device=device), layout))
    w = torch.randn(len(sizes), generator=gen, dtype=torch.float64) if weights is None else \
        torch.tensor(weights, dtype=torch.float64)
    return xs + [w.to(dtype=dtype, device=device)]


# name -> input sizes, the first being the output size
SIZES = {
    "one input": [(9, 13)],
    "same size": [(9, 13), (9, 13)],
    "smaller by 2": [(16, 20), (8, 10)],
    "smaller non-integer": [(17, 23), (7, 10)],
    "larger by 2": [(8, 10), (16, 20)],
    "larger odd 33->17": [(17, 17), (33, 33)],
    "larger, pooled then nearest down": [(10, 12), (33, 41)],
    "larger, pooled then nearest up": [(20, 20), (30, 30)],
    "mixed: one dim smaller, one larger": [(10, 10), (6, 25)],
    "three levels (SGCPNet node)": [(16, 20), (8, 10), (32, 40)],
    "four inputs": [(12, 16), (6, 8), (24, 32), (13, 15)],
}
OPTIONS = [dict(normalize=n, activation=a) for n in (False, True) for a in (None, "swish")]
OPTION_IDS = ["raw", "raw-swish", "normalized", "normalized-swish"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_matches_reference(device, name, options):
    args = make_inputs(SIZES[name], device=device, dtype=torch.float64)
    check_against_reference(op, ref, args, options, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_negative_and_zero_weights(device, options):
    """Normalisation clips negative (and zero) scalars: their gradients are 0 as in relu."""
    args = make_inputs(SIZES["three levels (SGCPNet node)"], device=device, dtype=torch.float64,
                       weights=[-0.7, 0.0, 1.3])
    check_against_reference(op, ref, args, options, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["larger by 2", "larger odd 33->17",
                                  "larger, pooled then nearest down", "four inputs"])
def test_ties_in_max_windows(device, name):
    """Equal values in a pooling window: the gradient goes where F.max_pool2d sends it (the first
    maximum in row-major order)."""
    args = make_inputs(SIZES[name], device=device, dtype=torch.float64, ties=True)
    check_against_reference(op, ref, args, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_constant_and_infinite_windows(device):
    x0, x1, w = make_inputs([(5, 6), (10, 12)], device=device, dtype=torch.float64)
    x1 = torch.full_like(x1, 2.0)
    x1[:, :, ::3, ::3] = -float("inf")  # in every window, never a whole one
    check_against_reference(op, ref, (x0, x1, w), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_max_windows(device):
    """max_pool2d passes NaN on and sends a window's gradient to its last NaN."""
    x0, x1, w = make_inputs([(5, 6), (10, 12)], device=device, dtype=torch.float64, ties=True)
    x1[0, 0, 1, 2] = x1[0, 0, 2, 1] = x1[1, 2, 4, 4] = float("nan")
    results = []
    for fn in (op, ref):
        leaves = [t.clone().requires_grad_() for t in (x0, x1, w)]
        y = fn(*leaves)
        y.backward(torch.ones_like(y))
        results.append((y.detach(), leaves[0].grad, leaves[1].grad))
    for i, (actual, expected) in enumerate(zip(*results)):
        torch.testing.assert_close(actual, expected, equal_nan=True, msg=lambda m: f"{i}: {m}")


def test_float32_follows_interpolate_index_rounding():
    """F.interpolate computes nearest indices in float32; at 2 -> 164 rows that rounding decides
    which source row output row 82 reads."""
    args = make_inputs([(164, 166), (2, 3)], B=1, C=2)
    check_against_reference(op, ref, args, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(device, layout):
    args = make_inputs(SIZES["four inputs"], device=device, layout=layout)
    check_against_reference(op, ref, args, dict(normalize=True, activation="swish"),
                            atol=1e-5, rtol=1e-5)
    out = op(*args)
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                             else torch.contiguous_format)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_layouts_and_strided_weights(device):
    x0, x1, x2, w = make_inputs(SIZES["three levels (SGCPNet node)"], device=device)
    args = (to_layout(x0, "channels_last"), to_layout(x1, "strided"), x2.transpose(2, 3)
            .contiguous().transpose(2, 3), torch.stack([w, w], 1)[:, 0])
    check_against_reference(op, ref, args, dict(normalize=True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    xs = make_inputs(SIZES["three levels (SGCPNet node)"], B=0, device=device)
    for t in xs:
        t.requires_grad_()
    out = op(*xs, activation="swish")
    assert out.shape == (0, 3, 16, 20)
    out.sum().backward()
    for t in xs:
        assert t.grad.shape == t.shape and not t.grad.any()


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_gradcheck(options):
    # every resize kind: same, nearest up by 2, pooled by 2, nearest up by a non-integer ratio
    sizes = [(4, 6), (2, 3), (8, 12), (3, 5)]
    check_gradcheck(op, None, options,
                    make_args=lambda seed: make_inputs(sizes, B=1, C=2, seed=seed))


@pytest.mark.parametrize("name,layout,options", [
    ("three levels (SGCPNet node)", "contiguous", dict(normalize=False, activation=None)),
    ("four inputs", "channels_last", dict(normalize=True, activation="swish")),
    ("larger, pooled then nearest down", "strided", dict(normalize=True, activation=None)),
    ("one input", "contiguous", dict(normalize=False, activation="swish")),
])
def test_opcheck(name, layout, options):
    *xs, w = make_inputs(SIZES[name], layout=layout)
    for t in xs + [w]:
        t.requires_grad_()
    args = (options["normalize"], 1e-4, options["activation"])
    check_opcheck(torch.ops.rtseg.scalar_weighted_sum.default, (xs, w) + args)
    grad = torch.randn(xs[0].shape)
    check_opcheck(torch.ops.rtseg.scalar_weighted_sum_backward.default,
                  (grad, [x.detach() for x in xs], w.detach()) + args)


def test_compile_fullgraph():
    args = make_inputs(SIZES["three levels (SGCPNet node)"])

    def fn(x0, x1, x2, w):
        return op(x0 * 2, x1, x2, w, normalize=True, activation="swish").relu()

    check_compile(fn, args)


def test_module_compiles_fullgraph():
    m = rtseg_ops.ScalarWeightedSum(3, normalize=True, activation="swish")
    xs = make_inputs(SIZES["three levels (SGCPNet node)"])[:-1]
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(*xs), m(*xs))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward(device):
    args = make_inputs([(32, 40), (16, 20), (64, 80)], B=2, C=8, device=device)
    check_deterministic(op, args, dict(normalize=True, activation="swish"))


@pytest.mark.parametrize("normalize,activation", [(False, None), (True, "swish")])
def test_module(normalize, activation):
    xs = make_inputs(SIZES["three levels (SGCPNet node)"])[:-1]
    fused = rtseg_ops.ScalarWeightedSum(3, normalize=normalize, activation=activation)
    plain = rtseg_ops.ScalarWeightedSum(3, normalize=normalize, activation=activation,
                                        ops="reference")
    with torch.no_grad():
        for m in (fused, plain):
            m.weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
    y_fused, y_plain = fused(*xs), plain(xs)  # varargs and a list are both accepted
    torch.testing.assert_close(y_fused, y_plain)
    y_fused.square().sum().backward()
    y_plain.square().sum().backward()
    torch.testing.assert_close(fused.weights.grad, plain.weights.grad)
    assert "normalize=" in repr(fused) and "ops='reference'" in repr(plain)


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="ops: expected one of"):
        rtseg_ops.ScalarWeightedSum(2, ops="eager")
    with pytest.raises(ValueError, match="num_inputs: expected 1 to 4"):
        rtseg_ops.ScalarWeightedSum(5)
    with pytest.raises(ValueError, match="activation"):
        rtseg_ops.ScalarWeightedSum(2, activation="relu")


# GPU-only cases (also compiled for sm_90 by tests/test_triton_compile.py)
GPU_SIZES = [[(64, 96), (32, 48), (128, 192)]]


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_cuda(dtype, layout):
    args = make_inputs(GPU_SIZES[0], B=2, C=32, device="cuda", layout=layout)
    check_low_precision(op, ref, args, dict(normalize=True, activation="swish"), dtype=dtype)


@requires_cuda
@pytest.mark.parametrize("name", list(SIZES))
def test_cuda_float32(name):
    args = make_inputs(SIZES[name], B=3, C=40, device="cuda")
    check_against_reference(op, ref, args, dict(normalize=True, activation="swish"),
                            atol=1e-5, rtol=1e-4)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    check_reference_fallback(monkeypatch, "scalar_weighted_sum", op, ref, make_inputs(SIZES["smaller by 2"]))


def test_backend_table_lists_op():
    row = backend_row("scalar_weighted_sum")
    assert row["cpu"] == "C++"
    # registered whenever triton imports; a CPU-only torch has no CUDA to run it on
    assert row["cuda"] == ("Triton" if torch.version.cuda else "none (CPU-only torch)")


BAD_INPUTS = [
    # (description, args from (x0, x1, w), exception, message pattern)
    ("not a list", lambda x0, x1, w: (x0, w), TypeError, "inputs: expected a list or tuple"),
    ("no inputs", lambda x0, x1, w: ([], w[:0]), ValueError, "inputs: expected 1 to 4"),
    ("five inputs", lambda x0, x1, w: ([x0] * 5, w.repeat(3)[:5]), ValueError,
     "inputs: expected 1 to 4"),
    ("weights too short", lambda x0, x1, w: ([x0, x1], w[:1]), ValueError,
     "weights: expected 2 scalars"),
    ("weights rank", lambda x0, x1, w: ([x0, x1], w[None]), ValueError,
     "weights: expected a 1-D"),
    ("batch mismatch", lambda x0, x1, w: ([x0, x1[:1]], w), ValueError,
     "inputs\\[1\\]: expected batch and channels"),
    ("channel mismatch", lambda x0, x1, w: ([x0, x1[:, :2]], w), ValueError,
     "inputs\\[1\\]: expected batch and channels"),
    ("input rank", lambda x0, x1, w: ([x0, x1[0]], w), ValueError, "inputs\\[1\\]: expected a 4-D"),
    ("dtype mismatch", lambda x0, x1, w: ([x0, x1.double()], w), TypeError,
     "inputs\\[1\\]: expected dtype"),
    ("weights dtype", lambda x0, x1, w: ([x0, x1], w.double()), TypeError,
     "weights: expected dtype"),
    ("half on cpu", lambda x0, x1, w: ([x0.half(), x1.half()], w.half()), TypeError,
     "inputs\\[0\\]: dtype torch.float16"),
    ("empty spatial", lambda x0, x1, w: ([x0, x1[:, :, :0]], w), ValueError, "non-empty spatial"),
    ("activation", lambda x0, x1, w: ([x0, x1], w, False, 1e-4, "relu"), ValueError,
     "activation: expected one of None, 'swish'"),
    ("normalize type", lambda x0, x1, w: ([x0, x1], w, 1), TypeError, "normalize: expected a bool"),
    ("eps negative", lambda x0, x1, w: ([x0, x1], w, True, -1.0), ValueError,
     "eps: expected a non-negative number"),
    ("not a tensor", lambda x0, x1, w: ([x0, x1.tolist()], w), TypeError,
     "inputs\\[1\\]: expected a torch.Tensor"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, make, exc, match):
    x0, x1, w = make_inputs(SIZES["smaller by 2"])
    with pytest.raises(exc, match=match):
        rtseg_ops.scalar_weighted_sum(*make(x0, x1, w))


DIRECT_BAD = [
    (lambda x0, x1, w: ([x0, x1], w[:1], False, 1e-4, None), "weights: expected shape \\[2\\]"),
    (lambda x0, x1, w: ([x0, x1[:1]], w, False, 1e-4, None), "inputs\\[1\\]: expected batch"),
    (lambda x0, x1, w: ([x0, x1[:, :2]], w, False, 1e-4, None), "inputs\\[1\\]: expected batch"),
    (lambda x0, x1, w: ([x0, x1], w, False, 1e-4, "relu"), "activation: expected None or"),
    (lambda x0, x1, w: ([x0, x1.double()], w, False, 1e-4, None), "inputs\\[1\\]: expected dtype"),
    (lambda x0, x1, w: ([x0, x1[0]], w, False, 1e-4, None), "inputs\\[1\\]: expected a 4-D"),
    (lambda x0, x1, w: ([], w, False, 1e-4, None), "inputs: expected 1 to 4"),
    (lambda x0, x1, w: ([x0, x1[:, :, :0]], w, False, 1e-4, None), "non-empty spatial"),
]


@pytest.mark.parametrize("make,match", DIRECT_BAD)
def test_direct_op_call_checks(make, match):
    """torch.ops.rtseg.* bypasses the Python checks; the C++ kernels must refuse bad input too."""
    x0, x1, w = make_inputs(SIZES["smaller by 2"])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.scalar_weighted_sum(*make(x0, x1, w))
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rtseg.scalar_weighted_sum_backward(torch.zeros_like(x0), *make(x0, x1, w))


def test_direct_backward_checks_grad_shape():
    x0, x1, w = make_inputs(SIZES["smaller by 2"])
    with pytest.raises(RuntimeError, match="grad_output: expected shape"):
        torch.ops.rtseg.scalar_weighted_sum_backward(x1, [x0, x1], w, False, 1e-4, None)


# The Triton kernels (the CUDA implementation), called directly: on CUDA tensors where there is
# a GPU, else on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py); the interpreter is
# slow, so the shapes are small.
TRITON_SIZES = {
    "every kind": [(6, 8), (3, 4), (12, 16), (5, 7)],
    "one input": [(5, 6)],
    "odd, pooled then nearest down": [(5, 6), (17, 13)],
    "pooled then nearest up": [(8, 8), (12, 12)],
    "mixed: one dim smaller, one larger": [(6, 6), (4, 13)],
    "upsampled 16x by 32x": [(32, 64), (2, 2)],
}


def _check_triton(args, normalize=False, activation=None, atol=1e-10, rtol=1e-10):
    """Triton forward and backward against the reference's output and autograd gradients, with a
    random grad_output and with .sum()'s zero-stride one."""
    from rtseg_ops.triton import scalar_weighted_sum as kernels
    *xs, w = args
    options = (normalize, 1e-4, activation)
    out = kernels.scalar_weighted_sum_forward(xs, w, *options)
    leaves = [t.detach().clone().requires_grad_() for t in args]
    expected = ref(*leaves, normalize=normalize, activation=activation)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    gen = torch.Generator().manual_seed(1)
    for grad in (torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device),
                 torch.ones((), dtype=out.dtype, device=out.device).expand(out.shape)):
        expected_grads = torch.autograd.grad(expected, leaves, grad, retain_graph=True)
        grads, grad_w = kernels.scalar_weighted_sum_backward(grad, xs, w, *options)
        for i, (g, e) in enumerate(zip(grads + [grad_w], expected_grads)):
            torch.testing.assert_close(g, e, atol=atol, rtol=rtol,
                                       msg=lambda m: f"grad of tensor {i}: {m}")
    return out


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_triton_options(options):
    _check_triton(make_inputs(TRITON_SIZES["every kind"], B=1, C=2, dtype=torch.float64,
                              device=TRITON_DEVICE), **options)


@pytest.mark.parametrize("name", list(TRITON_SIZES)[1:])
def test_triton_resize_cases(name):
    _check_triton(make_inputs(TRITON_SIZES[name], B=1, C=2, dtype=torch.float64,
                              device=TRITON_DEVICE), normalize=True, activation="swish")


@pytest.mark.parametrize("name", ["every kind", "odd, pooled then nearest down"])
def test_triton_ties_and_negative_weights(name):
    sizes = TRITON_SIZES[name]
    weights = [-0.5, 0.0, 2.0, 1.0][:len(sizes)]
    args = make_inputs(sizes, B=1, C=2, dtype=torch.float64, ties=True, weights=weights,
                       device=TRITON_DEVICE)
    _check_triton(args)
    _check_triton(args, normalize=True)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_triton_layouts(layout):
    args = make_inputs(TRITON_SIZES["every kind"], B=2, C=3, layout=layout, device=TRITON_DEVICE)
    out = _check_triton(args, normalize=True, activation="swish", atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                             else torch.contiguous_format)


def test_triton_float32_index_rounding_and_empty_batch():
    from rtseg_ops.triton import scalar_weighted_sum as kernels
    *xs, w = make_inputs([(164, 3), (2, 3)], B=1, C=1, device=TRITON_DEVICE)
    torch.testing.assert_close(kernels.scalar_weighted_sum_forward(xs, w, False, 1e-4, None),
                               ref(*xs, w))
    *xs, w = make_inputs(TRITON_SIZES["every kind"], B=0, device=TRITON_DEVICE)
    grads, grad_w = kernels.scalar_weighted_sum_backward(torch.zeros_like(xs[0]), xs, w, True,
                                                         1e-4, "swish")
    assert [g.shape for g in grads] == [x.shape for x in xs] and not grad_w.any()


def test_triton_registered_as_cuda_kernel():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("rtseg::scalar_weighted_sum", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("rtseg::scalar_weighted_sum_backward",
                                                          "CUDA")


def test_triton_index_64_near_2_31():
    """A program's positions run up to BLOCK - 1 past the last element: int32 positions would
    wrap for a tensor within BLOCK of 2**31 elements."""
    from rtseg_ops.triton import scalar_weighted_sum as kernels
    assert kernels._index_64([torch.empty(2**31 - kernels.BLOCK + 1, device="meta")])
    assert not kernels._index_64([torch.empty(2**31 - kernels.BLOCK, device="meta")])
    # an offset, not the element count, can be what reaches 2**31
    assert kernels._index_64([torch.empty(1, device="meta").expand(2, 2**30).as_strided(
        (2, 2), (2**31 - 1, 1))])
