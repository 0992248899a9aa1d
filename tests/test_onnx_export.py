"""ONNX export of every rtseg op and of the four networks, run in ONNX Runtime (CPU) and compared
with eager PyTorch in float32 (max abs error <= 1e-4 + 1e-4 * |eager|)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import rtseg_models
import rtseg_ops

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the `export` extra")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the `export` extra")
pytest.importorskip("onnxscript", reason="the ONNX tests need the `export` extra")

from rtseg_ops import onnx_export  # noqa: E402

ATOL = RTOL = 1e-4


class Call(nn.Module):
    """A module calling `fn(*inputs, **kwargs)`, for exporting one op."""

    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, *inputs):
        return self.fn(*inputs, **self.kwargs)


def run_onnx(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(y) for y in session.run(None, feeds)]


def export_and_run(tmp_path, module, inputs):
    path = tmp_path / "op.onnx"
    program = torch.export.export(module, tuple(inputs))
    torch.onnx.export(program, (), path, dynamo=True, verbose=False,
                      custom_translation_table=onnx_export.translation_table(),
                      opset_version=onnx_export.OPSET)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    op_types = {node.op_type for node in model.graph.node}
    assert not any(node.domain not in ("", "ai.onnx") for node in model.graph.node)
    return run_onnx(path, inputs), op_types


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def randn(*shape):
    return torch.randn(*shape)


WARP_CASES = {
    "g1 same size": dict(shape=(2, 6, 9, 11), groups=1, size=None, scale=3.0),
    "g2 upsample": dict(shape=(1, 8, 5, 7), groups=2, size=(12, 9), scale=4.0),
    "border": dict(shape=(1, 4, 6, 6), groups=2, size=None, scale=8.0, padding_mode="border"),
    "align_corners False": dict(shape=(1, 4, 6, 8), groups=1, size=(7, 5), scale=2.0,
                                align_corners=False),
    "far out": dict(shape=(1, 3, 4, 4), groups=1, size=None, scale=100.0),
}


@pytest.mark.parametrize("case", list(WARP_CASES))
def test_grouped_flow_warp(tmp_path, case):
    torch.manual_seed(0)
    c = dict(WARP_CASES[case])
    shape, groups, size, scale = c.pop("shape"), c.pop("groups"), c.pop("size"), c.pop("scale")
    B, C, h, w = shape
    H, W = size or (h, w)
    x, flow = randn(*shape), randn(B, 2 * groups, H, W) * scale
    fn = Call(rtseg_ops.grouped_flow_warp, groups=groups, size=size, **c)
    (y,), op_types = export_and_run(tmp_path, fn, [x, flow])
    assert "GridSample" not in op_types
    assert_close(y, rtseg_ops.reference.grouped_flow_warp(x, flow, groups, size, **c))


def test_grouped_flow_warp_non_finite_flow(tmp_path):
    """NaN and infinite displacements sample zero, as in the kernels (the reference gives NaN
    for NaN)."""
    x, flow = randn(1, 2, 4, 5), torch.zeros(1, 2, 4, 5)
    flow[0, 0, 1, 1], flow[0, 1, 2, 3], flow[0, 0, 3, 0] = math.nan, math.inf, -math.inf
    (y,), _ = export_and_run(tmp_path, Call(rtseg_ops.grouped_flow_warp), [x, flow])
    kernel = rtseg_ops.grouped_flow_warp(x, flow)
    assert kernel[..., 1, 1].eq(0).all() and kernel[..., 2, 3].eq(0).all()
    assert_close(y, kernel)


def test_gated_flow_fusion(tmp_path):
    torch.manual_seed(1)
    B, C, H, W, h, w, G = 2, 8, 10, 14, 4, 6, 2
    inputs = [randn(B, C, H, W), randn(B, C, h, w), randn(B, 2 * G, H, W) * 3,
              randn(B, 2 * G, H, W) * 3, randn(B, 1, H, W), randn(B, 1, H, W)]
    (y,), _ = export_and_run(tmp_path, Call(rtseg_ops.gated_flow_fusion, groups=G), inputs)
    assert_close(y, rtseg_ops.reference.gated_flow_fusion(*inputs, groups=G))


@pytest.mark.parametrize("shape,kwargs", [
    ((2, 3, 7, 13), dict()),
    ((1, 4, 12, 12), dict(cascade=False)),
    ((1, 2, 9, 20), dict(grids=(1, 3, 4), keep_aspect_ratio=False)),
])
def test_pyramid_pool(tmp_path, shape, kwargs):
    x = randn(*shape)
    (y,), _ = export_and_run(tmp_path, Call(rtseg_ops.pyramid_pool, **kwargs), [x])
    assert_close(y, rtseg_ops.reference.pyramid_pool(x, **kwargs))


def test_pixel_context_attention(tmp_path):
    query, key, value = randn(2, 8, 5, 7), randn(2, 8, 11), randn(2, 6, 11)
    (y,), _ = export_and_run(tmp_path, Call(rtseg_ops.pixel_context_attention, scale=0.5),
                             [query, key, value])
    assert_close(y, rtseg_ops.reference.pixel_context_attention(query, key, value, 0.5))


@pytest.mark.parametrize("kwargs", [dict(), dict(normalize=True, activation="swish")])
def test_scalar_weighted_sum(tmp_path, kwargs):
    # same size, smaller (nearest), larger by 2 (max pool), larger by 3 (max pool, then nearest)
    inputs = [randn(1, 4, 9, 10), randn(1, 4, 4, 3), randn(1, 4, 18, 20), randn(1, 4, 27, 31)]
    weights = torch.tensor([0.5, -1.5, 2.0, 0.25])

    class Sum(nn.Module):
        def forward(self, a, b, c, d, weights):
            return rtseg_ops.scalar_weighted_sum([a, b, c, d], weights, **kwargs)

    (y,), _ = export_and_run(tmp_path, Sum(), inputs + [weights])
    assert_close(y, rtseg_ops.reference.scalar_weighted_sum(inputs, weights, **kwargs))


@pytest.mark.parametrize("order,full", [("vh", True), ("hv", False)])
def test_factorized_dw_conv(tmp_path, order, full):
    C, d = 6, 3
    x, wv, wh = randn(2, C, 11, 9), randn(C, 1, 3, 1), randn(C, 1, 1, 3)
    params = [randn(C) if full else None for _ in range(3)] + [randn(C), randn(C), randn(C)]

    class Conv(nn.Module):
        def forward(self, x, wv, wh, *params):
            it = iter(params)
            given = [next(it) if p is not None else None for p in self.pattern]
            return rtseg_ops.factorized_dw_conv(x, wv, wh, d, *given, order=order)

    conv = Conv()
    conv.pattern = params
    (y,), _ = export_and_run(tmp_path, conv, [x, wv, wh] + [p for p in params if p is not None])
    assert_close(y, rtseg_ops.reference.factorized_dw_conv(x, wv, wh, d, *params, order=order))


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_spatial_aware_pool(tmp_path, count_include_pad):
    x = randn(1, 3, 37, 21)
    ys, _ = export_and_run(tmp_path, Call(rtseg_ops.spatial_aware_pool, levels=4,
                                          count_include_pad=count_include_pad), [x])
    expected = rtseg_ops.reference.spatial_aware_pool(x, 4, count_include_pad)
    assert len(ys) == 4
    for y, e in zip(ys, expected):
        assert_close(y, e)


# The networks at a small input: every fused op of each stays in the file as plain ONNX.
MODEL_INPUTS = {"csfcn": (1, 3, 64, 128), "msfnet": (1, 3, 64, 96), "sgcpnet": (1, 3, 64, 128),
                "fbsnet": (1, 3, 32, 64)}


@pytest.mark.parametrize("name", list(MODEL_INPUTS))
def test_model_onnx_runtime_parity(tmp_path, name):
    torch.manual_seed(0)
    model = rtseg_models.create_model(name, num_classes=5).fuse_for_inference()
    size = MODEL_INPUTS[name]
    path = tmp_path / f"{name}.onnx"
    rtseg_models.export_onnx(model, path, size, dynamic_batch=True)
    x = torch.randn((2,) + size[1:])  # another batch than the export's
    with torch.no_grad():
        expected = model(x)
    y, = run_onnx(path, [x])
    print(f"{name}: max abs diff {(y - expected).abs().max().item():.2e}")
    assert_close(y, expected)


def test_export_onnx_rejects_bad_sizes():
    model = rtseg_models.create_model("fbsnet")
    with pytest.raises(ValueError, match="input_size"):
        rtseg_models.export_onnx(model, "unused.onnx", (1, 32, 32))
