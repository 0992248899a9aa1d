"""Augmentation and normalisation of (image, label) pairs, deterministic given a seed.

A training sample's randomness comes from its own generator seeded with (seed, epoch, index),
so a sample is augmented the same way whichever DataLoader worker or process loads it, and a
resumed run sees the same samples as an uninterrupted one.
"""
import numpy as np
import torch
from PIL import Image


def sample_rng(seed, epoch, index):
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def resize(image, label, size):
    """image (bilinear) and label (nearest) resized to size = (height, width)."""
    h, w = size
    image = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((w, h), Image.NEAREST))
    return image, label.astype(np.int64)


def normalize(image, mean, std):
    """HxWx3 uint8 -> 3xHxW float32, (x / 255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def color_jitter(image, strength, rng):
    """Brightness, contrast and saturation, each scaled by a factor in [1-s, 1+s], in a random
    order (float32 HxWx3 in [0, 255])."""
    x = image.astype(np.float32)
    for op in rng.permutation(3):
        f = rng.uniform(1 - strength, 1 + strength)
        if op == 0:
            x = x * f
        elif op == 1:
            x = (x - x.mean()) * f + x.mean()
        else:
            gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            x = (x - gray[..., None]) * f + gray[..., None]
        x = np.clip(x, 0, 255)
    return x.round().astype(np.uint8)


class TrainTransform:
    """Random scale in `scale_range`, random crop of `crop` = (h, w) (padded with 0 after
    normalisation, i.e. the mean colour, and the label with `ignore_index` where the scaled image
    is smaller), horizontal flip with probability 0.5, colour jitter, normalisation."""

    def __init__(self, crop, scale_range=(0.5, 2.0), hflip=True, color_jitter=0.0,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), ignore_index=255):
        self.crop, self.scale_range = tuple(crop), tuple(scale_range)
        self.hflip, self.jitter = hflip, color_jitter
        self.mean, self.std, self.ignore_index = tuple(mean), tuple(std), ignore_index

    def __call__(self, image, label, rng):
        h, w = label.shape
        scale = rng.uniform(*self.scale_range)
        size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
        if size != (h, w):
            image, label = resize(image, label, size)
        ch, cw = self.crop
        top = rng.integers(0, max(size[0] - ch, 0) + 1)
        left = rng.integers(0, max(size[1] - cw, 0) + 1)
        image = image[top:top + ch, left:left + cw]
        label = label[top:top + ch, left:left + cw]
        if self.hflip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.jitter > 0:
            image = color_jitter(image, self.jitter, rng)
        x = normalize(image, self.mean, self.std)
        y = torch.from_numpy(np.ascontiguousarray(label))
        ph, pw = ch - y.shape[0], cw - y.shape[1]
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
            y = torch.nn.functional.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        return x, y


class EvalTransform:
    """Normalisation only: the label stays at its full resolution."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image, label, rng=None):
        return normalize(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(label))


class TransformedDataset(torch.utils.data.Dataset):
    """`base[i]` through `transform`. Training: keys are (index, epoch) pairs from
    `EpochSampler`, and each sample gets the generator `sample_rng(seed, epoch, index)`.
    Evaluation: plain indices; the sample also carries its index (for the PNG previews)."""

    def __init__(self, base, transform, seed=0):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, epoch = key
            image, label = self.base[index]
            return self.transform(image, label, sample_rng(self.seed, epoch, index))
        image, label = self.base[key]
        x, y = self.transform(image, label)
        return x, y, key
