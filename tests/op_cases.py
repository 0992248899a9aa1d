"""One small case of every op, for the tests that check something about all ops at once
(autocast, CUDA graphs, streams, devices, Inductor on CUDA) and for tools/gpu_sanitizer_cases.py.

OPS: op name -> (public function, reference, inputs(device, dtype, layout), direct call of the
``torch.ops.rtseg`` op). Every argument that is not a tensor is bound in the callables, so each
takes the tensors of its inputs only.
"""
import torch

import rtseg_ops
from rtseg_ops import reference
import test_factorized_dw_conv
import test_gated_flow_fusion
import test_grouped_flow_warp
import test_pixel_context_attention
import test_pyramid_pool
import test_scalar_weighted_sum
import test_spatial_aware_pool


def _swsum(*tensors):
    return rtseg_ops.scalar_weighted_sum(list(tensors[:-1]), tensors[-1], normalize=True)


def _swsum_ref(*tensors):
    return reference.scalar_weighted_sum(list(tensors[:-1]), tensors[-1], normalize=True)


def _inputs(make, *args, **kwargs):
    """inputs(device, dtype, layout) of an op test module's make_inputs at fixed sizes."""
    def build(device, dtype, layout="contiguous"):
        out = make(*args, device=device, dtype=dtype, layout=layout, **kwargs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return build


OPS = {
    "grouped_flow_warp": (
        lambda x, f: rtseg_ops.grouped_flow_warp(x, f, 2, (11, 15)),
        lambda x, f: reference.grouped_flow_warp(x, f, 2, (11, 15)),
        _inputs(test_grouped_flow_warp.make_inputs, C=8, groups=2, in_hw=(7, 9),
                out_hw=(11, 15)),
        lambda x, f: torch.ops.rtseg.grouped_flow_warp(x, f, 2, "zeros", True)),
    "gated_flow_fusion": (
        lambda *t: rtseg_ops.gated_flow_fusion(*t, groups=2),
        lambda *t: reference.gated_flow_fusion(*t, groups=2),
        _inputs(test_gated_flow_fusion.make_inputs),
        lambda *t: torch.ops.rtseg.gated_flow_fusion(*t, 2)),
    "pixel_context_attention": (
        rtseg_ops.pixel_context_attention, reference.pixel_context_attention,
        _inputs(test_pixel_context_attention.make_inputs, logit_scale=2.0),
        lambda q, k, v: torch.ops.rtseg.pixel_context_attention(q, k, v, 1.0)[0]),
    "scalar_weighted_sum": (
        _swsum, _swsum_ref,
        _inputs(test_scalar_weighted_sum.make_inputs, [(8, 12), (4, 6), (16, 24)]),
        lambda *t: torch.ops.rtseg.scalar_weighted_sum(list(t[:-1]), t[-1], True, 1e-4, None)),
    "factorized_dw_conv": (
        rtseg_ops.factorized_dw_conv, reference.factorized_dw_conv,
        _inputs(test_factorized_dw_conv.make_inputs, C=6, dilation=2),
        lambda *a: torch.ops.rtseg.factorized_dw_conv(*a)),
    "spatial_aware_pool": (
        rtseg_ops.spatial_aware_pool, reference.spatial_aware_pool,
        _inputs(test_spatial_aware_pool.make_inputs),
        lambda x: list(torch.ops.rtseg.spatial_aware_pool(x, 5, True))),
    "pyramid_pool": (
        rtseg_ops.pyramid_pool, reference.pyramid_pool,
        _inputs(test_pyramid_pool.make_input),
        lambda x: torch.ops.rtseg.pyramid_pool(x, [1, 2, 3, 6], True, True)),
}


def outputs(result):
    """The tensors an op returned, as a list."""
    return list(result) if isinstance(result, (list, tuple)) else [result]
