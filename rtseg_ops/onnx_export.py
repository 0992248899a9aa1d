"""ONNX translations of every ``torch.ops.rtseg`` op, for ``torch.onnx.export(..., dynamo=True)``.

    table = rtseg_ops.onnx_export.translation_table()
    torch.onnx.export(model, (x,), "model.onnx", dynamo=True, custom_translation_table=table,
                      opset_version=OPSET)

Each op becomes a small graph of standard ONNX operators (opset ``OPSET`` = 18, the default of
torch's ONNX exporter and of its torchlib, supported by ONNX Runtime and TensorRT 8.6+), so the
exported file runs anywhere without a custom-op library. The flow warp is a gather-based bilinear
sample (GatherElements of the four corners) rather than ``GridSample``: GridSample's mode was
renamed from "bilinear" to "linear" in opset 20, and runtimes that do not know the other opset's
name have been reported to fall back to nearest sampling (TensorRT, with SFNet's warp).

Shapes: the batch may be dynamic; spatial sizes must be static (the pooling matrices, nearest
indices and sampling grids are constants computed from them). ``rtseg_models.export_onnx`` wraps
this for whole models. Needs ``onnxscript`` (``pip install rtseg[export]``).
"""
from typing import Sequence

import numpy as np
import torch

OPSET = 18
_INSTALL_HINT = ("ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
                 "pip install 'rtseg[export]' (or pip install onnx onnxscript onnxruntime)")


def require_export_packages(*modules):
    """Import and return `modules` (default onnx, onnxscript), or raise ImportError naming the
    packages to install."""
    import importlib
    try:
        return [importlib.import_module(m) for m in modules or ("onnx", "onnxscript")]
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc


def _static(value, axis, what):
    dim = value.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(f"ONNX export of rtseg op: {what} must be static, got the dynamic dim "
                         f"{dim!r}; export with a fixed spatial size (only the batch may vary)")
    return dim


def _np_dtype(value):
    return value.dtype.numpy()


def translation_table():
    """{torch.ops.rtseg.<op>.default: translation} for every rtseg op of this build; pass it as
    ``custom_translation_table`` to ``torch.onnx.export(..., dynamo=True)``."""
    onnx_ir, op = _load_onnxscript()
    from onnxscript.onnx_types import TensorType

    def const(array, like):
        return op.Constant(value=onnx_ir.tensor(np.asarray(array, dtype=_np_dtype(like))))

    def ints(values):
        return op.Constant(value=onnx_ir.tensor(np.asarray(values, dtype=np.int64)))

    def channel_vector(v):  # (C,) -> (C, 1, 1), broadcasting over (B, C, H, W)
        return op.Reshape(v, ints([-1, 1, 1]))

    # --- grouped_flow_warp -----------------------------------------------------------------
    def sample_coordinate(base, delta, size, out_size, padding_mode, align_corners, like):
        """Pixel coordinate of the sample along one axis, clamped as the kernels clamp it."""
        g = op.Add(base, op.Div(delta, const(out_size, like)))
        if align_corners:
            pix = op.Mul(op.Add(g, const(1.0, like)), const(0.5 * (size - 1), like))
        else:
            pix = op.Mul(op.Sub(op.Mul(op.Add(g, const(1.0, like)), const(size, like)),
                                const(1.0, like)), const(0.5, like))
        if padding_mode == "border":
            lo, hi, nan_to = 0.0, float(size - 1), 0.0
        else:  # beyond [-1, size] only zeros are read; NaN samples zero, as in the kernels
            lo, hi, nan_to = -2.0, float(size + 1), -2.0
        pix = op.Clip(pix, const(lo, like), const(hi, like))
        return op.Where(op.IsNaN(pix), const(nan_to, like), pix)

    def warp(input, flow, groups, padding_mode, align_corners, C, h, w, H, W):
        """grouped_flow_warp of input (B, C, h, w) by flow (B, 2*groups, H, W); the sizes are
        given as Python ints, since intermediate values carry no shapes while tracing."""
        cg, n = C // groups, H * W
        planes = op.Reshape(input, ints([-1, cg, h * w]))              # (B*G, Cg, h*w)
        offsets = op.Reshape(flow, ints([-1, 2, n]))                    # (B*G, [dx, dy], H*W)
        dx, dy = op.Split(offsets, num_outputs=2, axis=1)               # (B*G, 1, H*W) each
        base = np.meshgrid(np.linspace(-1.0, 1.0, W), np.linspace(-1.0, 1.0, H))
        ix = sample_coordinate(const(base[0].reshape(1, 1, n), flow), dx, w, W, padding_mode,
                               align_corners, flow)
        iy = sample_coordinate(const(base[1].reshape(1, 1, n), flow), dy, h, H, padding_mode,
                               align_corners, flow)
        fx, fy = op.Floor(ix), op.Floor(iy)
        tx, ty = op.Sub(ix, fx), op.Sub(iy, fy)
        x0, y0 = op.Cast(fx, to=onnx_ir.DataType.INT64), op.Cast(fy, to=onnx_ir.DataType.INT64)
        one = ints(1)
        gather_shape = op.Concat(op.Slice(op.Shape(planes), ints([0]), ints([2])), ints([n]),
                                 axis=0)
        out = None
        for x, y, wx, wy in ((x0, y0, op.Sub(const(1.0, flow), tx), op.Sub(const(1.0, flow), ty)),
                             (op.Add(x0, one), y0, tx, op.Sub(const(1.0, flow), ty)),
                             (x0, op.Add(y0, one), op.Sub(const(1.0, flow), tx), ty),
                             (op.Add(x0, one), op.Add(y0, one), tx, ty)):
            inside = op.And(op.And(op.GreaterOrEqual(x, ints(0)), op.Less(x, ints(w))),
                            op.And(op.GreaterOrEqual(y, ints(0)), op.Less(y, ints(h))))
            index = op.Where(inside, op.Add(op.Mul(y, ints(w)), x), ints(0))
            weight = op.Where(inside, op.Mul(wx, wy), const(0.0, flow))
            values = op.GatherElements(planes, op.Expand(index, gather_shape), axis=2)
            term = op.Mul(values, op.CastLike(weight, input))
            out = term if out is None else op.Add(out, term)
        return op.Reshape(out, ints([-1, C, H, W]))

    def grouped_flow_warp(input, flow, groups: int, padding_mode: str, align_corners: bool):
        C, h, w = (_static(input, a, f"input dim {a}") for a in (1, 2, 3))
        H, W = (_static(flow, a, f"flow dim {a}") for a in (2, 3))
        return warp(input, flow, groups, padding_mode, align_corners, C, h, w, H, W)

    # --- gated_flow_fusion -----------------------------------------------------------------
    def gated_flow_fusion(high, low, flow_high, flow_low, gate_high, gate_low, groups: int):
        C, H, W = (_static(high, a, f"high dim {a}") for a in (1, 2, 3))
        up = op.Resize(low, None, None, ints([H, W]), axes=[2, 3], mode="linear",
                       coordinate_transformation_mode="align_corners")
        one = const(1.0, high)
        sizes = (C, H, W, H, W)
        return op.Add(
            op.Mul(op.Add(one, op.Tanh(gate_low)), warp(up, flow_low, groups, "zeros", True,
                                                        *sizes)),
            op.Mul(op.Add(one, op.Tanh(gate_high)), warp(high, flow_high, groups, "zeros", True,
                                                         *sizes)))

    # --- pyramid_pool ----------------------------------------------------------------------
    def pyramid_pool(x, grids: list[int], keep_aspect_ratio: bool, cascade: bool):
        from .reference import pyramid_level_sizes
        H, W = _static(x, 2, "x's height"), _static(x, 3, "x's width")
        sizes = dict(zip(grids, pyramid_level_sizes(H, W, grids, keep_aspect_ratio)))
        # each level is A_h @ x @ A_w^T with averaging matrices (the cascade multiplies them)
        mats, prev = {}, (np.eye(H), np.eye(W))
        for g in sorted(set(grids), reverse=True):
            oh, ow = sizes[g]
            if cascade:
                prev = mats[g] = (adaptive_pool_matrix(prev[0].shape[0], oh) @ prev[0],
                                  adaptive_pool_matrix(prev[1].shape[0], ow) @ prev[1])
            else:
                mats[g] = (adaptive_pool_matrix(H, oh), adaptive_pool_matrix(W, ow))
        levels = []
        for g in grids:
            a_h, a_w = mats[g]
            level = op.MatMul(const(a_h, x), op.MatMul(x, const(a_w.T, x)))
            levels.append(op.Reshape(level, ints([0, 0, -1])))
        return op.Concat(*levels, axis=2)

    # --- pixel_context_attention -----------------------------------------------------------
    def pixel_context_attention(query, key, value, scale: float):
        q = op.Transpose(op.Reshape(query, ints([0, 0, -1])), perm=[0, 2, 1])   # (B, N, Ck)
        logits = op.Mul(op.MatMul(q, key), const(scale, query))                # (B, N, M)
        probs = op.Softmax(logits, axis=-1)
        out = op.MatMul(value, op.Transpose(probs, perm=[0, 2, 1]))            # (B, Cv, N)
        shape = op.Concat(op.Slice(op.Shape(value), ints([0]), ints([2])),
                          op.Slice(op.Shape(query), ints([2]), ints([4])), axis=0)
        lse = op.ReduceLogSumExp(logits, ints([-1]), keepdims=0)
        return op.Reshape(out, shape), lse

    # --- scalar_weighted_sum ---------------------------------------------------------------
    def resize_to(x, size):
        h, w = _static(x, 2, "an input's height"), _static(x, 3, "an input's width")
        if (h, w) == size:
            return x
        if not (h <= size[0] and w <= size[1]):
            x, _ = op.MaxPool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # (Y, Indices)
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            if (h, w) == size:
                return x
        x = op.Gather(x, ints(nearest_indices(h, size[0])), axis=2)
        return op.Gather(x, ints(nearest_indices(w, size[1])), axis=3)

    def scalar_weighted_sum(inputs: Sequence[TensorType], weights, normalize: bool, eps: float,
                            activation: str = None):
        size = (_static(inputs[0], 2, "inputs[0]'s height"),
                _static(inputs[0], 3, "inputs[0]'s width"))
        if normalize:
            eps = const(eps, weights)  # before `weights` becomes a value without a dtype
            weights = op.Relu(weights)
            weights = op.Div(weights, op.Add(op.ReduceSum(weights, keepdims=0), eps))
        weights = op.CastLike(weights, inputs[0])
        y = None
        for i, x in enumerate(inputs):
            term = op.Mul(op.Gather(weights, ints(i), axis=0), resize_to(x, size))
            y = term if y is None else op.Add(y, term)
        return op.Mul(y, op.Sigmoid(y)) if activation == "swish" else y

    # --- factorized_dw_conv ----------------------------------------------------------------
    def dw_stage(x, weight, channels, vertical, d, scale, shift, prelu):
        y = op.Conv(x, weight, group=channels,
                    pads=[d, 0, d, 0] if vertical else [0, d, 0, d],
                    dilations=[d, 1] if vertical else [1, d])
        if scale is not None:
            y = op.Mul(y, channel_vector(scale))
        if shift is not None:
            y = op.Add(y, channel_vector(shift))
        if prelu is not None:
            y = op.PRelu(y, channel_vector(prelu))
        return y

    def factorized_dw_conv(x, weight_v, weight_h, dilation: int, scale_v=None, shift_v=None,
                           prelu_v=None, scale_h=None, shift_h=None, prelu_h=None,
                           order: str = "vh"):
        C = _static(x, 1, "x's channel count")
        v = (weight_v, C, True, dilation, scale_v, shift_v, prelu_v)
        h = (weight_h, C, False, dilation, scale_h, shift_h, prelu_h)
        first, second = (v, h) if order == "vh" else (h, v)
        return dw_stage(dw_stage(x, *first), *second)

    # --- spatial_aware_pool ----------------------------------------------------------------
    def spatial_aware_pool(x, levels: int, count_include_pad: bool):
        return [op.AveragePool(x, kernel_shape=[2 * s + 1] * 2, strides=[s, s], pads=[s] * 4,
                               count_include_pad=int(count_include_pad))
                for s in (2 ** j for j in range(1, levels + 1))]

    table = {
        "grouped_flow_warp": grouped_flow_warp,
        "gated_flow_fusion": gated_flow_fusion,
        "pyramid_pool": pyramid_pool,
        "pixel_context_attention": pixel_context_attention,
        "scalar_weighted_sum": scalar_weighted_sum,
        "factorized_dw_conv": factorized_dw_conv,
        "spatial_aware_pool": spatial_aware_pool,
    }
    return {getattr(torch.ops.rtseg, name).default: fn for name, fn in table.items()
            if hasattr(torch.ops.rtseg, name)}


def _load_onnxscript():
    onnx_ir, onnxscript = require_export_packages("onnx_ir", "onnxscript")
    return onnx_ir, getattr(onnxscript, f"opset{OPSET}")


def adaptive_pool_matrix(n, out):
    """(out, n) matrix of adaptive average pooling along one axis: row i averages
    [floor(i*n/out), ceil((i+1)*n/out))."""
    m = np.zeros((out, n))
    for i in range(out):
        start, end = (i * n) // out, -((-(i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def nearest_indices(n, out):
    """Source indices of PyTorch's mode="nearest" resize from n to out (float32 scale, floor)."""
    scale = np.float32(n) / np.float32(out)
    return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), n - 1)


__all__ = ["OPSET", "translation_table", "require_export_packages", "adaptive_pool_matrix",
           "nearest_indices"]
