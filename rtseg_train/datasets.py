"""Segmentation datasets: Cityscapes, CamVid and a generic image-folder + mask-folder layout.

Every dataset returns (image, label) pairs as an HxWx3 uint8 array and an HxW int64 array of
train ids (0..K-1, `ignore_index` for ignored pixels), after checking each file: a missing or
unreadable file, a mask of another size than its image, or a mask value outside the dataset's
mapping raises `DatasetError` naming the path.
"""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Official Cityscapes label ids of the 19 evaluated classes, in train-id order.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
                  "pedestrian", "bicyclist")


class DatasetError(ValueError):
    """A dataset folder or file is missing, unreadable or inconsistent; the message names it."""


def label_lut(mapping, ignore_index=255):
    """A 256-entry lookup table: lut[value] = train id, ignore_index, or -1 (not allowed)."""
    lut = np.full(256, -1, dtype=np.int64)
    for value, train_id in mapping.items():
        lut[value] = train_id
    return lut


def cityscapes_lut(ignore_index=255):
    """Label ids 0..33 to train ids (the 19 evaluated classes) or `ignore_index`; the value 255
    (id -1, 'license plate', as stored in 8-bit PNGs) is ignored too."""
    mapping = {i: ignore_index for i in range(34)}
    mapping.update({label_id: t for t, label_id in enumerate(CITYSCAPES_EVAL_IDS)})
    mapping[255] = ignore_index
    return label_lut(mapping)


def read_image(path):
    """HxWx3 uint8 RGB array of the image file at `path`."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def read_mask(path):
    """HxW integer array of a single-channel (L, P or I) mask file at `path`."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"mask {path} has mode {img.mode!r}; expected a single-channel "
                                   "(L, P or I) PNG of label values")
            return np.array(img)
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read mask {path}: {e}") from None


def require_dir(path, what):
    if not os.path.isdir(path):
        raise DatasetError(f"{what} folder not found: {path}")
    return path


class SegmentationDataset:
    """A list of (image path, mask path) pairs and a lookup table from stored mask values to
    train ids. `dataset[i]` -> (HxWx3 uint8 image, HxW int64 train ids)."""

    def __init__(self, pairs, lut, class_names, ignore_index=255, root=""):
        if not pairs:
            raise DatasetError(f"no image/mask pairs found under {root}")
        self.pairs, self.lut, self.class_names = pairs, lut, tuple(class_names)
        self.ignore_index = ignore_index
        self.num_classes = len(class_names)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                               f"{image_path} is {image.shape[1]}x{image.shape[0]} (WxH)")
        if mask.min() >= 0 and mask.max() < len(self.lut):
            labels = self.lut[mask]
            if (labels >= 0).all():
                return image, labels
            bad = mask[labels < 0]
        else:
            bad = mask[(mask < 0) | (mask >= len(self.lut))]
        raise DatasetError(f"mask {mask_path} holds values {sorted(set(bad.tolist()))[:10]} outside "
                           f"the label mapping (allowed: {np.flatnonzero(self.lut >= 0).tolist()})")


def _pairs_by_stem(image_dir, mask_dir, image_suffix="", mask_suffix="", recursive=False):
    """(image, mask) paths: every image `<stem><image_suffix>.<ext>` under image_dir needs the
    mask `<stem><mask_suffix>.png` at the same relative place under mask_dir."""
    pairs = []
    for folder, dirs, files in os.walk(image_dir):
        dirs.sort()
        if not recursive and folder != image_dir:
            continue
        rel = os.path.relpath(folder, image_dir)
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS or not stem.endswith(image_suffix):
                continue
            stem = stem[:len(stem) - len(image_suffix)] if image_suffix else stem
            mask = os.path.normpath(os.path.join(mask_dir, rel, stem + mask_suffix + ".png"))
            if not os.path.isfile(mask):
                raise DatasetError(f"mask not found for image {os.path.join(folder, name)}: "
                                   f"expected {mask}")
            pairs.append((os.path.join(folder, name), mask))
    return pairs


def cityscapes(root, split="train", ignore_index=255):
    """Cityscapes: `root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` with
    `root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png` (label ids, mapped to the 19 train
    ids)."""
    images = require_dir(os.path.join(root, "leftImg8bit", split), "Cityscapes image")
    masks = require_dir(os.path.join(root, "gtFine", split), "Cityscapes label")
    pairs = _pairs_by_stem(images, masks, "_leftImg8bit", "_gtFine_labelIds", recursive=True)
    return SegmentationDataset(pairs, cityscapes_lut(ignore_index), CITYSCAPES_CLASSES,
                               ignore_index, images)


def camvid(root, split="train", ignore_index=255):
    """CamVid in the common 11-class layout: `root/<split>/*.png` with masks of the same name in
    `root/<split>annot/`, values 0..10 (classes) and 11 (void, ignored); splits train (367),
    val (101), test (233)."""
    images = require_dir(os.path.join(root, split), "CamVid image")
    masks = require_dir(os.path.join(root, split + "annot"), "CamVid annotation")
    lut = label_lut({**{i: i for i in range(11)}, 11: ignore_index})
    return SegmentationDataset(_pairs_by_stem(images, masks), lut, CAMVID_CLASSES, ignore_index,
                               images)


def folder(root, split="train", num_classes=None, ignore_index=255):
    """A user's own data: `root/images/<split>/<stem>.<ext>` with masks
    `root/masks/<split>/<stem>.png` holding train ids 0..num_classes-1 or `ignore_index`."""
    if not num_classes or num_classes < 1:
        raise DatasetError(f"num_classes: the folder dataset needs a positive number of classes, "
                           f"got {num_classes!r}")
    if num_classes > 255 or ignore_index < num_classes or ignore_index > 255:
        raise DatasetError(f"num_classes/ignore_index: masks are 8-bit, so num_classes <= "
                           f"ignore_index <= 255 is needed (got {num_classes}, {ignore_index})")
    images = require_dir(os.path.join(root, "images", split), "image")
    masks = require_dir(os.path.join(root, "masks", split), "mask")
    lut = label_lut({**{i: i for i in range(num_classes)}, ignore_index: ignore_index})
    return SegmentationDataset(_pairs_by_stem(images, masks), lut,
                               [f"class {i}" for i in range(num_classes)], ignore_index, images)


DATASETS = {"cityscapes": cityscapes, "camvid": camvid, "folder": folder}


def build_dataset(name, root, split, num_classes=None, ignore_index=255):
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {name!r}")
    if not os.path.isdir(root):
        raise DatasetError(f"data root not found: {root}")
    if name == "folder":
        return folder(root, split, num_classes, ignore_index)
    return DATASETS[name](root, split, ignore_index)
