"""Training recipes: one config per paper and dataset (`csfcn_cityscapes`, `fbsnet_camvid`, ...).

Each config holds the paper's optimiser, learning rate, schedule, batch, crop, scale range,
augmentation and loss (see docs/training.md for the sources). Where a paper gives its schedule in
epochs, it is converted to iterations over the usual training split (2975 Cityscapes images, 367
CamVid images) at the paper's batch. Where a paper is silent, the field's usual choice is used:
a linear warm-up over the first 1000 iterations, OHEM keeping pixels whose true-class
probability is below 0.7 and at least 1/16 of the valid pixels, ImageNet mean/std normalisation.
"""
import dataclasses
import math
from dataclasses import dataclass, field

DATASET_INFO = {
    # name: (classes, train images in the usual split, evaluation split)
    "cityscapes": (19, 2975, "val"),
    "camvid": (11, 367, "test"),
}


@dataclass
class TrainConfig:
    """Everything one training or evaluation run needs; every field has a command-line override
    (see `python -m rtseg_train train --help`)."""
    model: str
    dataset: str
    num_classes: int
    model_options: dict = field(default_factory=dict)
    ops: str = "fused"                # "fused" (rtseg_ops kernels) or "reference" (PyTorch)
    # optimisation
    optimizer: str = "sgd"            # "sgd" (momentum, nesterov off) or "adam" (L2 decay) / "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"            # "poly" ((1 - t/T)^power) or "cosine" (down to min_lr)
    power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 1000
    warmup_ratio: float = 1e-3        # lr factor at iteration 0 of the linear warm-up
    iters: int = 80000
    batch_size: int = 8               # global batch (split over the processes of a torchrun job)
    clip_grad_norm: float = 0.0       # 0: no clipping
    # data and augmentation
    crop: tuple = (512, 1024)         # (height, width)
    scale_range: tuple = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.0         # brightness/contrast/saturation factors in [1-j, 1+j]
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    ignore_index: int = 255
    train_split: str = "train"
    eval_split: str = "val"
    workers: int = 4
    # loss
    loss: str = "ce"                  # "ce" or "ohem"
    ohem_thresh: float = 0.7
    ohem_min_kept: float = 1 / 16     # fraction of the batch's valid pixels always kept
    boundary_weight: float = 1.0      # MSFNet's class-boundary loss weight
    # evaluation
    eval_mode: str = "whole"          # "whole" or "slide"
    eval_crop: tuple = None           # sliding-window size (default: the training crop)
    eval_stride: tuple = None         # sliding-window stride (default: 2/3 of the window)
    eval_scales: tuple = (1.0,)
    eval_flip: bool = False
    # run control
    seed: int = 0
    amp: str = "none"                 # "none", "bf16" or "fp16" (fp16 with a GradScaler)
    channels_last: bool = False
    sync_bn: bool = False
    ckpt_interval: int = 1000
    eval_interval: int = 4000         # 0: evaluate only at the end; -1: never
    log_interval: int = 10

    def replace(self, **changes):
        """A copy with `changes` applied; unknown names raise."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)


def _iters(epochs, dataset, batch):
    return math.ceil(epochs * DATASET_INFO[dataset][1] / batch)


def _recipe(model, dataset, **fields):
    classes, _, eval_split = DATASET_INFO[dataset]
    return TrainConfig(model=model, dataset=dataset, num_classes=classes, eval_split=eval_split,
                       **fields)


def _build_configs():
    c = {}
    # CSFCN (paper 000): SGD 0.9, wd 5e-4, lr 1e-2 poly 0.9; colour jitter + flip.
    c["csfcn_cityscapes"] = _recipe("csfcn", "cityscapes", lr=1e-2, weight_decay=5e-4,
                                    iters=120_000, batch_size=12, crop=(1024, 1024),
                                    scale_range=(0.125, 2.0), color_jitter=0.4)
    c["csfcn_camvid"] = _recipe("csfcn", "camvid", lr=1e-2, weight_decay=5e-4, iters=40_000,
                                batch_size=16, crop=(720, 960), scale_range=(0.5, 2.0),
                                color_jitter=0.4)
    # SGCPNet (paper 001): SGD 0.9, wd 1e-5, lr 0.3 poly 0.9; 350 / 250 epochs.
    for dataset, batch, epochs, crop in (("cityscapes", 36, 350, (1024, 1024)),
                                         ("camvid", 48, 250, (720, 720))):
        c[f"sgcpnet_{dataset}"] = _recipe("sgcpnet", dataset, lr=0.3, weight_decay=1e-5,
                                          iters=_iters(epochs, dataset, batch), batch_size=batch,
                                          crop=crop)
    # FBSNet (paper 002): from scratch, 1000 epochs, OHEM; SGD on Cityscapes, Adam on CamVid.
    c["fbsnet_cityscapes"] = _recipe("fbsnet", "cityscapes", lr=4.5e-2, weight_decay=1e-4,
                                     iters=_iters(1000, "cityscapes", 4), batch_size=4,
                                     crop=(512, 1024), loss="ohem")
    c["fbsnet_camvid"] = _recipe("fbsnet", "camvid", optimizer="adam", lr=1e-3,
                                 weight_decay=2e-4, iters=_iters(1000, "camvid", 6),
                                 batch_size=6, crop=(360, 480), loss="ohem")
    # MSFNet (paper 003): Adam, wd 2.5e-5, lr 1e-4 cosine to 1e-6; 350 / 700 epochs; CBS loss;
    # 3 SAP levels on CamVid (paper).
    for dataset, epochs, crop, levels in (("cityscapes", 350, (1024, 1024), 5),
                                          ("camvid", 700, (768, 1024), 3)):
        c[f"msfnet_{dataset}"] = _recipe("msfnet", dataset, optimizer="adam", lr=1e-4,
                                         weight_decay=2.5e-5, schedule="cosine", min_lr=1e-6,
                                         iters=_iters(epochs, dataset, 12), batch_size=12,
                                         crop=crop, model_options=dict(levels=levels))
    return c


CONFIGS = _build_configs()


def list_configs():
    return sorted(CONFIGS)


def get_config(name, **overrides):
    """The config `name` (see `list_configs()`) with `overrides` applied."""
    if name not in CONFIGS:
        raise ValueError(f"--config: unknown config {name!r}; expected one of {list_configs()}")
    return CONFIGS[name].replace(**overrides)
