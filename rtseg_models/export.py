"""Deployment of rtseg networks: torch.export programs (.pt2) and ONNX files, fused ops included.

    ep = rtseg_models.export_program(model, (1, 3, 512, 1024), dynamic=True)
    torch.export.save(ep, "model.pt2")          # torch.export.load("model.pt2").module()(x)
    rtseg_models.export_onnx(model, "model.onnx", (1, 3, 512, 1024))

In a torch.export program the rtseg ops stay ``torch.ops.rtseg.*`` nodes (their fake kernels give
the shapes), so loading it needs ``import rtseg_ops`` first. In an ONNX file each op is rewritten
into standard ONNX operators (``rtseg_ops.onnx_export``), so it runs in ONNX Runtime or TensorRT
without rtseg. TorchScript is not supported (see docs/deploy.md).
"""
import contextlib

import torch

from .csfcn import CSFCN
from .fbsnet import FBSNet
from .msfnet import MSFNet
from .sgcpnet import SGCPNet

# Dynamic height and width must be multiples of this per model: the network's deepest stride,
# at which every feature map's size is an exact fraction of the input, so that maps of
# different paths meeting in a concatenation or sum provably agree.
SIZE_MULTIPLE = {CSFCN: 32, MSFNet: 32, SGCPNet: 128, FBSNet: 8}
MAX_SIZE = 8192


def size_multiple(model):
    """The multiple that dynamic H and W of `model` must respect (SIZE_MULTIPLE)."""
    for cls, multiple in SIZE_MULTIPLE.items():
        if isinstance(model, cls):
            return multiple
    raise TypeError(f"model: expected one of the rtseg_models networks "
                    f"({', '.join(c.__name__ for c in SIZE_MULTIPLE)}), got {type(model).__name__}")


def _check_input_size(input_size, multiple=None):
    size = tuple(input_size)
    if len(size) != 4 or not all(isinstance(s, int) and s >= 1 for s in size) or size[1] != 3:
        raise ValueError(f"input_size: expected (B, 3, H, W) with positive ints, got {input_size!r}")
    if multiple and (size[2] % multiple or size[3] % multiple):
        raise ValueError(f"input_size: dynamic H and W must be multiples of {multiple} for this "
                         f"model, got {size[2]}x{size[3]}")
    return size


def dynamic_shapes(model, dynamic_batch=True, dynamic_size=True):
    """torch.export dynamic_shapes for `model`'s input x: batch 1 to 1024, H and W multiples of
    size_multiple(model) up to MAX_SIZE."""
    spec = {}
    if dynamic_batch:
        spec[0] = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_size:
        m = size_multiple(model)
        spec[2] = m * torch.export.Dim("h_blocks", min=2, max=MAX_SIZE // m)
        spec[3] = m * torch.export.Dim("w_blocks", min=2, max=MAX_SIZE // m)
    return {"x": spec or None}


def export_program(model, input_size, dynamic_batch=False, dynamic_size=False):
    """torch.export.ExportedProgram of `model` in eval mode on a random input of `input_size`,
    with the rtseg ops as custom-op nodes. `dynamic_batch` / `dynamic_size` make the batch and
    H, W dynamic (H, W: multiples of size_multiple(model)). Save with torch.export.save."""
    multiple = size_multiple(model) if dynamic_size else None
    size = _check_input_size(input_size, multiple)
    model.eval()
    param = next(model.parameters())
    x = torch.randn(size, device=param.device, dtype=param.dtype)
    shapes = dynamic_shapes(model, dynamic_batch, dynamic_size)
    # Size-oblivious reasoning: the example's size-1 maps (deep pooling levels) would otherwise
    # specialise to 1 and fail at other sizes (MSFNet's 1/128 level: "Guard failed: ...
    # // 32) == 1" at 320x640 after an export at 128x256).
    oblivious = torch.fx.experimental._config.patch(backed_size_oblivious=True) \
        if dynamic_size or dynamic_batch else contextlib.nullcontext()
    with torch.no_grad(), oblivious:
        return torch.export.export(model, (x,), dynamic_shapes=shapes)


def export_onnx(model, path, input_size, dynamic_batch=False, opset_version=None,
                program=None):
    """Write `model` (eval mode, fused rtseg ops included) to the ONNX file `path` for an input of
    `input_size` (B, 3, H, W); returns torch's ONNXProgram.

    H and W are static in the file (the ops' pooling matrices and sampling grids are constants);
    `dynamic_batch=True` makes the batch dynamic. `opset_version` defaults to
    rtseg_ops.onnx_export.OPSET (18). `program`: an ExportedProgram of `model` to reuse (from
    export_program with the same input size). Needs onnx and onnxscript (pip install
    'rtseg[export]'); raises ImportError naming them otherwise.
    """
    from rtseg_ops import onnx_export
    onnx_export.require_export_packages()
    if program is None:
        program = export_program(model, input_size, dynamic_batch=dynamic_batch)
    return torch.onnx.export(
        program, (), path, dynamo=True, custom_translation_table=onnx_export.translation_table(),
        opset_version=opset_version or onnx_export.OPSET, input_names=["x"],
        output_names=["logits"], verbose=False)
