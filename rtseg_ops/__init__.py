"""rtseg_ops: fused kernels for real-time semantic segmentation, as PyTorch autograd ops.

Every op is a ``torch.ops.rtseg`` custom op with CPU (C++) and CUDA (CUDA C++ or Triton) kernels,
a fake kernel for torch.compile, registered autograd, and a PyTorch reference in
``rtseg_ops.reference`` that defines its semantics (docs/ops.md). ``backend_table()`` says which
implementation each op runs on each device in this build, and ``rtseg_ops.onnx_export`` turns
every op into standard ONNX operators.
"""
from . import reference
from ._version import __version__
from ._backend import backend_table, cpu_simd_level, extension_loaded
from .factorized_dw_conv import FactorizedDWConv, factorized_dw_conv, fold_batchnorm
from .gated_flow_fusion import GatedFlowFusion, gated_flow_fusion
from .grouped_flow_warp import GroupedFlowWarp, flow_warp, grouped_flow_warp
from .memory import empty_cpu_cache
from .pixel_context_attention import PixelContextAttention, pixel_context_attention
from .pyramid_pool import PyramidPool, pyramid_pool
from .scalar_weighted_sum import ScalarWeightedSum, scalar_weighted_sum
from .spatial_aware_pool import SpatialAwarePool, spatial_aware_pool

__all__ = [
    "__version__", "reference", "backend_table", "cpu_simd_level", "extension_loaded",
    "empty_cpu_cache",
    "grouped_flow_warp", "flow_warp", "GroupedFlowWarp",
    "gated_flow_fusion", "GatedFlowFusion",
    "spatial_aware_pool", "SpatialAwarePool",
    "scalar_weighted_sum", "ScalarWeightedSum",
    "factorized_dw_conv", "fold_batchnorm", "FactorizedDWConv",
    "pyramid_pool", "PyramidPool",
    "pixel_context_attention", "PixelContextAttention",
]
