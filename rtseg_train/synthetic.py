"""A small synthetic dataset in the real Cityscapes layout, for tests and first runs.

Images are a road background with rectangles and ellipses of six other Cityscapes classes, each
filled with its class's palette colour plus noise, so a network can learn the class from the
colour. Labels are written as Cityscapes label ids (not train ids) in
`gtFine/<split>/<city>/<name>_gtFine_labelIds.png`; with `void=True` some shapes are label id 0
("unlabeled", ignored in training and evaluation).
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from .datasets import CITYSCAPES_EVAL_IDS
from .visualize import CITYSCAPES_PALETTE

# train ids used: road (background), sidewalk, building, vegetation, sky, person, car
SHAPE_TRAIN_IDS = (1, 2, 8, 10, 11, 13)
BACKGROUND_TRAIN_ID = 0
VOID_LABEL_ID = 0
CITY = "synth"


def _draw_sample(rng, height, width, void):
    label = Image.new("L", (width, height), CITYSCAPES_EVAL_IDS[BACKGROUND_TRAIN_ID])
    draw = ImageDraw.Draw(label)
    for _ in range(rng.integers(3, 7)):
        h = rng.integers(height // 4, height // 2 + 1)
        w = rng.integers(width // 8, width // 3 + 1)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        box = (int(left), int(top), int(left + w - 1), int(top + h - 1))
        value = CITYSCAPES_EVAL_IDS[int(rng.choice(SHAPE_TRAIN_IDS))]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=int(value))
    if void:
        top, left = rng.integers(0, height - height // 6), rng.integers(0, width - width // 6)
        draw.rectangle((int(left), int(top), int(left + width // 6), int(top + height // 6)),
                       fill=VOID_LABEL_ID)
    ids = np.asarray(label)
    colours = np.zeros((256, 3), dtype=np.int16)
    for train_id, label_id in enumerate(CITYSCAPES_EVAL_IDS):
        colours[label_id] = CITYSCAPES_PALETTE[train_id]
    colours[VOID_LABEL_ID] = (30, 30, 30)
    image = colours[ids] + rng.integers(-20, 21, ids.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8), ids


def make_synthetic_cityscapes(root, splits=(("train", 16), ("val", 4)), size=(64, 128), seed=0,
                              void=True):
    """Write the dataset under `root`; `splits` is ((split, images), ...), `size` (height, width).
    Returns root."""
    height, width = size
    if height < 8 or width < 8:
        raise ValueError(f"size: expected at least 8x8, got {size}")
    for split, count in splits:
        rng = np.random.default_rng([seed, sum(map(ord, split))])
        images = os.path.join(root, "leftImg8bit", split, CITY)
        labels = os.path.join(root, "gtFine", split, CITY)
        os.makedirs(images, exist_ok=True)
        os.makedirs(labels, exist_ok=True)
        for i in range(count):
            image, ids = _draw_sample(rng, height, width, void)
            name = f"{CITY}_{i:06d}_000019"
            Image.fromarray(image).save(os.path.join(images, name + "_leftImg8bit.png"))
            Image.fromarray(ids).save(os.path.join(labels, name + "_gtFine_labelIds.png"))
    return root
