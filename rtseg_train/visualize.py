"""PNG previews of input / ground truth / prediction in the Cityscapes palette."""
import os

import numpy as np
import torch
from PIL import Image

from rtseg_models.palettes import PALETTES

CITYSCAPES_PALETTE = np.array(PALETTES["cityscapes"], dtype=np.uint8)


def colorize(train_ids, ignore_index=255):
    """HxW train ids -> HxWx3 uint8 in the Cityscapes palette (ignored pixels black; ids past
    the palette's 19 colours get fixed pseudo-random colours)."""
    ids = np.asarray(train_ids)
    top = int(ids[ids != ignore_index].max(initial=0)) + 1
    palette = CITYSCAPES_PALETTE
    if top > len(palette):
        extra = np.random.default_rng(0).integers(0, 256, (top - len(palette), 3), dtype=np.uint8)
        palette = np.concatenate([palette, extra])
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    valid = ids != ignore_index
    out[valid] = palette[ids[valid]]
    return out


def denormalize(x, mean, std):
    """3xHxW normalised float tensor -> HxWx3 uint8."""
    img = x.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def save_preview(path, image, label, pred, ignore_index=255):
    """One PNG: input | ground truth | prediction side by side."""
    panel = np.concatenate([image, colorize(label, ignore_index), colorize(pred, ignore_index)],
                           axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(panel).save(path)
