"""rtseg_models: CSFCN, SGCPNet, FBSNet and MSFNet built from rtseg_ops.

    model = rtseg_models.create_model("csfcn", num_classes=19, ops="fused")
    model.fuse_for_inference()
    rtseg_models.profile(model, (1, 3, 1024, 2048))

`ops="reference"` swaps every fused op for its PyTorch reference (rtseg_ops.reference).
"""
from .api import create_model, list_models, profile, register_model
from .layers import (ConvBNAct, DepthwiseSeparableConv, SegmentationModel, fuse_for_inference,
                     resolve_op)
from .resnet import ResNet18
from .csfcn import CSFCN, ContextFeatureCalibration, SpatialFeatureCalibration
from .msfnet import MSFNet, class_boundary_labels, msfnet_loss
from .mobilenetv3 import MobileNetV3SmallTrunk
from .sgcpnet import SGCPNet
from .fbsnet import FBSNet
from .export import export_onnx, export_program

__all__ = [
    "create_model", "list_models", "profile", "register_model",
    "ConvBNAct", "DepthwiseSeparableConv", "SegmentationModel", "fuse_for_inference", "resolve_op",
    "ResNet18", "CSFCN", "ContextFeatureCalibration", "SpatialFeatureCalibration",
    "MSFNet", "class_boundary_labels", "msfnet_loss",
    "MobileNetV3SmallTrunk", "SGCPNet", "FBSNet", "export_onnx", "export_program",
]
