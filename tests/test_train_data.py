"""rtseg_train datasets, augmentation and sampler: layouts, label mappings, every bad input,
determinism."""
import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rtseg_train.datasets import (CITYSCAPES_EVAL_IDS, DatasetError, build_dataset,
                                  cityscapes_lut)
from rtseg_train.distributed import EpochSampler
from rtseg_train.synthetic import make_synthetic_cityscapes
from rtseg_train.transforms import TrainTransform, TransformedDataset


@pytest.fixture
def synth(tmp_path):
    return make_synthetic_cityscapes(str(tmp_path / "cs"), (("train", 4), ("val", 2)), (32, 48))


def _label_path(root, split="train", i=0):
    return os.path.join(root, "gtFine", split, "synth", f"synth_{i:06d}_000019_gtFine_labelIds.png")


def _image_path(root, split="train", i=0):
    return os.path.join(root, "leftImg8bit", split, "synth",
                        f"synth_{i:06d}_000019_leftImg8bit.png")


def test_cityscapes_mapping():
    lut = cityscapes_lut()
    # the official table: these 19 ids in order, all other ids 0..33 and 255 ignored
    for train_id, label_id in enumerate((7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                                         27, 28, 31, 32, 33)):
        assert lut[label_id] == train_id
    others = [i for i in range(34) if i not in CITYSCAPES_EVAL_IDS] + [255]
    assert (lut[others] == 255).all() and (lut[34:255] == -1).all()


def test_synthetic_cityscapes_layout(synth):
    ds = build_dataset("cityscapes", synth, "train")
    assert len(ds) == 4 and ds.num_classes == 19
    image, label = ds[0]
    ids = np.asarray(Image.open(_label_path(synth)))
    assert image.shape == (32, 48, 3) and label.shape == (32, 48)
    # label ids are stored (road = 7, unlabeled = 0), train ids come out
    assert 7 in ids and 0 in ids
    assert (label[ids == 7] == 0).all() and (label[ids == 0] == 255).all()
    assert set(np.unique(label)) <= {0, 1, 2, 8, 10, 11, 13, 255}


def test_camvid_and_folder_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("camvid/train", "camvid/trainannot", "own/images/train", "own/masks/train"):
        os.makedirs(tmp_path / sub)
    img = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "camvid/train/a.png")
    Image.fromarray(np.array([[0, 5, 10, 11]] * 6, dtype=np.uint8).repeat(2, 1)).save(
        tmp_path / "camvid/trainannot/a.png")
    _, label = build_dataset("camvid", str(tmp_path / "camvid"), "train")[0]
    assert label[0].tolist() == [0, 0, 5, 5, 10, 10, 255, 255]
    Image.fromarray(img).save(tmp_path / "own/images/train/b.jpg")
    Image.fromarray(np.array([[0, 2, 255, 1]] * 6, dtype=np.uint8).repeat(2, 1)).save(
        tmp_path / "own/masks/train/b.png")
    ds = build_dataset("folder", str(tmp_path / "own"), "train", num_classes=3)
    assert ds[0][1][0].tolist() == [0, 0, 2, 2, 255, 255, 1, 1]
    with pytest.raises(DatasetError, match=r"values \[2\] outside"):
        build_dataset("folder", str(tmp_path / "own"), "train", num_classes=2)[0]
    with pytest.raises(DatasetError, match="num_classes"):
        build_dataset("folder", str(tmp_path / "own"), "train")
    Image.fromarray(np.full((6, 8), 12, np.uint8)).save(tmp_path / "camvid/trainannot/a.png")
    with pytest.raises(DatasetError, match=r"trainannot/a.png holds values \[12\]"):
        build_dataset("camvid", str(tmp_path / "camvid"), "train")[0]


def test_bad_inputs_name_the_path(synth, tmp_path):
    with pytest.raises(DatasetError, match="data root not found: .*nowhere"):
        build_dataset("cityscapes", str(tmp_path / "nowhere"), "train")
    with pytest.raises(DatasetError, match="Cityscapes image folder not found: .*leftImg8bit/test"):
        build_dataset("cityscapes", synth, "test")
    with pytest.raises(ValueError, match="dataset: expected one of"):
        build_dataset("ade20k", synth, "train")
    # a mask of another size than its image
    Image.fromarray(np.full((31, 48), 7, np.uint8)).save(_label_path(synth, i=1))
    with pytest.raises(DatasetError, match=r"synth_000001_000019_gtFine_labelIds.png is 48x31 but "
                                           r"its image .*leftImg8bit.png is 48x32"):
        build_dataset("cityscapes", synth, "train")[1]
    # label ids outside the mapping (34..254)
    Image.fromarray(np.full((32, 48), 40, np.uint8)).save(_label_path(synth, i=2))
    with pytest.raises(DatasetError, match=r"000002_000019_gtFine_labelIds.png holds values \[40\] "
                                           "outside the label mapping"):
        build_dataset("cityscapes", synth, "train")[2]
    # an RGB mask
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(_label_path(synth, i=3))
    with pytest.raises(DatasetError, match="has mode 'RGB'"):
        build_dataset("cityscapes", synth, "train")[3]
    # unreadable files
    with open(_image_path(synth, i=0), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image .*000000_000019_leftImg8bit.png"):
        build_dataset("cityscapes", synth, "train")[0]
    with open(_label_path(synth, "val", 0), "wb") as f:
        f.write(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="cannot read mask .*val/synth/synth_000000"):
        build_dataset("cityscapes", synth, "val")[0]
    # an image whose mask is missing
    os.remove(_label_path(synth, "val", 1))
    with pytest.raises(DatasetError, match="mask not found for image .*synth_000001_000019_"
                                           "leftImg8bit.png: expected .*gtFine_labelIds.png"):
        build_dataset("cityscapes", synth, "val")
    # a file that vanished after the listing
    ds = build_dataset("cityscapes", synth, "train")
    os.remove(_image_path(synth, i=1))
    with pytest.raises(DatasetError, match="image file not found: .*synth_000001"):
        ds[1]


def _coded_pair(h=20, w=30):
    """An image whose red channel encodes its label, to follow both through the transform."""
    label = np.random.default_rng(1).integers(0, 19, (h, w))
    image = np.stack([label * 10, np.zeros_like(label), np.full_like(label, 77)], -1)
    return image.astype(np.uint8), label


def test_train_transform_crop_pad_flip_follow_the_label():
    image, label = _coded_pair()
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    t = TrainTransform((24, 24), (1.0, 1.0), hflip=True, mean=mean, std=std)
    flips = set()
    for seed in range(12):
        x, y = t(image, label, np.random.default_rng(seed))
        assert x.shape == (3, 24, 24) and y.shape == (24, 24) and y.dtype == torch.int64
        # the crop is padded below (rows 20..23) with the ignore index and zeros
        assert (y[20:] == 255).all() and (x[:, 20:] == 0).all()
        red = (x[0, :20] * 255).round().long()
        assert torch.equal(red // 10, y[:20])
        flips.add(torch.equal(y[:20, :24], torch.from_numpy(label[:, :24])))
        assert any(torch.equal(y[:20], torch.from_numpy(label[:, a:a + 24]).flip(-1)) or
                   torch.equal(y[:20], torch.from_numpy(label[:, a:a + 24])) for a in range(7))
    assert len(flips) == 2  # both flipped and unflipped crops occurred


def test_train_transform_scale_and_jitter_are_seeded():
    image, label = _coded_pair(40, 40)
    t = TrainTransform((16, 16), (0.5, 2.0), color_jitter=0.4)
    a = t(image, label, np.random.default_rng([3, 0, 5]))
    b = t(image, label, np.random.default_rng([3, 0, 5]))
    c = t(image, label, np.random.default_rng([3, 1, 5]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(a[1].unique().tolist()) <= set(range(19)) | {255}


def test_workers_and_resume_see_the_same_samples(synth):
    ds = TransformedDataset(build_dataset("cityscapes", synth, "train"),
                            TrainTransform((16, 16), (0.5, 1.5), color_jitter=0.2), seed=4)

    def batches(workers, start=0, n=5):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers,
                                             sampler=EpochSampler(len(ds), seed=4, start=start))
        return list(itertools.islice(loader, n))

    serial, parallel = batches(0), batches(2)
    resumed = batches(0, start=4, n=3)  # 4 keys = 2 batches already consumed
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(serial[2:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_sampler_permutes_each_epoch():
    keys = list(itertools.islice(EpochSampler(5, seed=1), 10))
    assert sorted(i for i, e in keys[:5]) == list(range(5)) and {e for _, e in keys[:5]} == {0}
    assert sorted(i for i, e in keys[5:]) == list(range(5)) and {e for _, e in keys[5:]} == {1}
    assert list(itertools.islice(EpochSampler(5, seed=1, start=3), 7)) == keys[3:]
