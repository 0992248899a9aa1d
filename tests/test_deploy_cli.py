"""python -m rtseg_models.predict and python -m rtseg_models.benchmark."""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtseg_models
from rtseg_models import benchmark, predict

Image = pytest.importorskip("PIL.Image", reason="predict needs Pillow")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_palettes():
    cityscapes, camvid = predict.PALETTES["cityscapes"], predict.PALETTES["camvid"]
    assert len(cityscapes) == 19 and len(camvid) == 11
    assert cityscapes[0] == (128, 64, 128) and cityscapes[13] == (0, 0, 142)  # road, car
    assert camvid[0] == (128, 128, 128) and camvid[3] == (128, 64, 128)      # sky, road
    labels = torch.tensor([[0, 13], [18, 40]])
    colours = predict.colorize(labels, "cityscapes")
    assert colours[0, 0].tolist() == [128, 64, 128] and colours[0, 1].tolist() == [0, 0, 142]
    assert colours[1, 0].tolist() == [119, 11, 32] and colours[1, 1].tolist() == [0, 0, 0]


def _write_images(root):
    torch.manual_seed(0)
    images = {"a.png": torch.randint(0, 256, (37, 50, 3), dtype=torch.uint8),
              "sub/b.png": torch.randint(0, 256, (24, 31, 3), dtype=torch.uint8)}
    for rel, array in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array.numpy()).save(root / rel)
    return images


@pytest.mark.parametrize("palette", ["cityscapes", "camvid"])
def test_predict_writes_masks_and_overlays(tmp_path, palette):
    images = _write_images(tmp_path / "in")
    K = len(predict.PALETTES[palette])
    torch.manual_seed(1)
    model = rtseg_models.create_model("fbsnet", num_classes=K)
    torch.save(model.state_dict(), tmp_path / "fbsnet.pth")
    written = predict.main(["--model", "fbsnet", "--checkpoint", str(tmp_path / "fbsnet.pth"),
                            "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                            "--palette", palette, "--device", "cpu"])
    assert len(written) == 4
    model.fuse_for_inference()
    colours = torch.tensor(predict.PALETTES[palette], dtype=torch.uint8)
    for rel, image in images.items():
        stem = tmp_path / "out" / rel.replace(".png", "")
        mask = torch.from_numpy(np.array(Image.open(f"{stem}_mask.png")))
        overlay = torch.from_numpy(np.array(Image.open(f"{stem}_overlay.png")))
        x = image.permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            labels = model(x).argmax(1)[0]
        assert mask.shape == image.shape
        assert torch.equal(mask, colours[labels])
        blend = (image.float() * 0.5 + colours[labels].float() * 0.5).round()
        assert (overlay.float() - blend).abs().max() <= 1


def test_slide_inference_matches_whole_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    x = torch.randn(1, 3, 45, 70)
    whole = predict.predict_logits(model, x, "whole")
    slide = predict.predict_logits(model, x, "slide", crop=(16, 32), stride=(10, 20))
    torch.testing.assert_close(slide, whole)
    small = predict.predict_logits(model, x[..., :10, :20], "slide", crop=(16, 32))
    torch.testing.assert_close(small, whole[..., :10, :20])


def test_slide_window_positions_cover_the_image():
    assert predict._windows(45, 16, 10) == [0, 10, 20, 29]
    assert predict._windows(16, 16, 10) == [0]


def test_predict_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        predict.main(["--model", "fbsnet", "--input", str(tmp_path), "--output", str(tmp_path),
                      "--mode", "slide"])
    with pytest.raises(FileNotFoundError, match="no image"):
        predict.main(["--model", "fbsnet", "--input", str(tmp_path), "--output", str(tmp_path),
                      "--device", "cpu"])


def test_predict_without_pillow_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install Pillow"):
        predict.main(["--model", "fbsnet", "--input", str(tmp_path), "--output", str(tmp_path)])


def test_benchmark_prints_its_table_and_writes_json(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "rows.json"
    impls = "eager-reference,eager-fused,onnxruntime"
    rows = benchmark.main(["--model", "csfcn", "--size", "64x64", "--batch", "1", "--dtype", "fp32",
                           "--device", "cpu", "--warmup", "1", "--iters", "2", "--impls", impls,
                           "--json", str(path)])
    out = capsys.readouterr().out
    assert "### csfcn on " in out and "fp32, 64x64, batch 1" in out
    assert benchmark.device_name(torch.device("cpu")) in out
    for impl in impls.split(","):
        assert f"| {impl} | " in out
    assert [r["impl"] for r in rows] == impls.split(",")
    assert all(r["fps"] > 0 and "error" not in r for r in rows)
    assert json.loads(path.read_text()) == json.loads(json.dumps(rows))


def test_benchmark_reports_a_failing_row_and_goes_on(capsys):
    rows = benchmark.main(["--model", "fbsnet", "--size", "32x32", "--device", "cpu",
                           "--dtype", "fp16", "--warmup", "0", "--iters", "1",
                           "--impls", "onnxruntime"])
    assert "error" in rows[0] and "n/a" in capsys.readouterr().out


def test_benchmark_bad_arguments():
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "fbsnet", "--size", "32", "--device", "cpu"])
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "fbsnet", "--size", "32x32", "--device", "cpu",
                        "--impls", "tensorrt"])


def test_pad_to_crops_back():
    model = nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(1, 3, 20, 30)
    out = predict.predict_logits(model, x, "whole", pad_to=32)
    torch.testing.assert_close(out[..., :19, :29], model(F.pad(x, (0, 2, 0, 12)))[..., :19, :29])
    assert out.shape[-2:] == (20, 30)


def test_benchmark_without_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rows = benchmark.main(["--model", "fbsnet", "--size", "32x32", "--device", "cpu",
                           "--warmup", "0", "--iters", "1", "--impls", "onnxruntime"])
    assert "pip install 'rtseg[export]'" in rows[0]["error"]
