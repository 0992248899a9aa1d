"""rtseg_train: training and evaluation of the rtseg networks (CSFCN, SGCPNet, FBSNet, MSFNet)
on Cityscapes, CamVid or an image-folder + mask-folder dataset, on one device or under torchrun.

    python -m rtseg_train train --config csfcn_cityscapes --data-root DIR --work-dir RUN
    python -m rtseg_train eval --config csfcn_cityscapes --data-root DIR --checkpoint RUN/best.pth

See docs/training.md. Needs Pillow and tqdm (`pip install rtseg[train]`).
"""
from .configs import CONFIGS, TrainConfig, get_config, list_configs
from .datasets import DatasetError, build_dataset
from .metrics import ConfusionMatrix

__all__ = ["CONFIGS", "TrainConfig", "get_config", "list_configs", "DatasetError",
           "build_dataset", "ConfusionMatrix"]
