"""rtseg_train metrics, losses, schedules, inference modes and atomic checkpoints."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtseg_models
from rtseg_train import get_config
from rtseg_train.checkpoint import load, save_atomic
from rtseg_train.engine import lr_factor
from rtseg_train.inference import predict_probs, slide_logits
from rtseg_train.losses import OhemCrossEntropy, SegmentationCriterion
from rtseg_train.metrics import ConfusionMatrix, iou_table


def test_confusion_matrix_against_hand_count():
    # 5 classes; class 3 appears in neither label nor prediction; 255 is ignored
    label = torch.tensor([[0, 0, 1, 1, 255],
                          [2, 2, 4, 4, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 3],
                         [2, 0, 4, 2, 0]])
    # (the prediction 3 sits on an ignored pixel, so class 3 stays absent)
    cm = ConfusionMatrix(5).update(pred, label)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0), (4, 4), (4, 2)]:
        expected[t, p] += 1
    assert torch.equal(cm.matrix, expected)
    # IoU by hand: class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: 2/(2+1) ;
    # class 2: TP 1, FP 1, FN 1 -> 1/3; class 3: no pixel -> NaN; class 4: TP 1, FN 1 -> 1/2
    iou = cm.iou()
    assert torch.allclose(iou[[0, 1, 2, 4]], torch.tensor([1 / 3, 2 / 3, 1 / 3, 1 / 2],
                                                          dtype=torch.float64))
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 3 + 1 / 2) / 4)
    assert cm.pixel_accuracy() == pytest.approx(5 / 8)
    table = iou_table(iou, ["a", "b", "c", "d", "e"])
    assert "33.33" in table and "66.67" in table and table.splitlines()[5].endswith("n/a")
    with pytest.raises(ValueError, match="label: values outside 0..4"):
        ConfusionMatrix(5).update(torch.zeros(3), torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="pred: shape"):
        ConfusionMatrix(5).update(torch.zeros(2), torch.zeros(3))


def test_ohem_keeps_hard_pixels_and_a_minimum():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8) * 3
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, :2] = 255
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    valid = per_pixel[labels != 255]
    prob = torch.exp(-valid)
    hard = valid[prob < 0.7]
    assert OhemCrossEntropy(0.7, 1 / 16)(logits, labels) == pytest.approx(hard.mean().item(),
                                                                          rel=1e-5)
    # a threshold nobody passes: the top min_kept fraction of the valid pixels
    n_min = int(0.25 * valid.numel())
    top = valid.sort(descending=True).values[:n_min]
    assert OhemCrossEntropy(1e-9, 0.25)(logits, labels) == pytest.approx(top.mean().item(),
                                                                         rel=1e-5)
    with pytest.raises(ValueError, match="ohem"):
        OhemCrossEntropy(1.5)


def test_criterion_msfnet_boundary_term_matches_model_loss():
    config = get_config("msfnet_cityscapes", num_classes=3)
    torch.manual_seed(0)
    logits, boundary = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 2, 2)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[:, :3] = 255
    total, terms = SegmentationCriterion(config)((logits, boundary), labels)
    assert total.item() == pytest.approx(rtseg_models.msfnet_loss((logits, boundary),
                                                                  labels).item(), rel=1e-6)
    assert set(terms) == {"seg", "boundary"}
    with pytest.raises(TypeError, match="model outputs"):
        SegmentationCriterion(config)([logits], labels)


def test_schedules():
    poly = get_config("csfcn_cityscapes", iters=100, warmup_iters=10, warmup_ratio=0.1)
    f = lr_factor(poly)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx((1 - 0.05) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert f(50) == pytest.approx(0.5 ** 0.9) and f(100) == 0
    cos = get_config("msfnet_cityscapes", iters=100, warmup_iters=0)
    g = lr_factor(cos)
    assert g(0) == pytest.approx(1) and g(100) == pytest.approx(1e-6 / 1e-4)
    assert g(50) == pytest.approx(0.01 + 0.99 * 0.5)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(poly.replace(schedule="step"))
    with pytest.raises(ValueError, match="unknown fields"):
        poly.replace(learning_rate=1)
    with pytest.raises(ValueError, match="--config: unknown config"):
        get_config("unet_cityscapes")


class _Pointwise(nn.Module):
    """A 1x1 conv: every inference mode must give its whole-image logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_inference_modes():
    model = _Pointwise().eval()
    x = torch.randn(1, 3, 21, 34)
    whole = model(x)
    assert torch.allclose(slide_logits(model, x, (8, 16), (5, 11), 4), whole, atol=1e-6)
    # a window larger than the image: padded, then cropped back
    assert torch.allclose(slide_logits(model, x, (32, 40), (32, 40), 4), whole, atol=1e-6)
    probs = whole.softmax(1)
    assert torch.allclose(predict_probs(model, x, (21, 34), 4, "slide", (8, 16)), probs,
                          atol=1e-6)
    assert torch.allclose(predict_probs(model, x, (21, 34), 4, flip=True), probs, atol=1e-6)
    ms = predict_probs(model, x, (42, 68), 4, scales=(0.5, 1.0, 2.0))
    assert ms.shape == (1, 4, 42, 68)
    assert torch.allclose(ms.sum(1), torch.ones(1, 42, 68), atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        predict_probs(model, x, (21, 34), 4, "tiles")


def test_checkpoint_survives_a_death_mid_write(tmp_path):
    path = str(tmp_path / "latest.pth")
    save_atomic({"iter": 1, "w": torch.arange(4.0)}, path)
    # a second save whose pickling kills the process after part of the file is written
    script = textwrap.dedent(f"""
        import os, torch
        from rtseg_train.checkpoint import save_atomic
        class Die:
            def __reduce__(self):
                os._exit(3)
        save_atomic({{"iter": 2, "w": torch.zeros(1 << 16), "die": Die()}}, {path!r})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 3
    state = load(path)
    assert state["iter"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    killed_leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(killed_leftovers) == 1  # the dead process's partial file, never renamed
    # an exception while saving keeps the checkpoint and removes its own temporary file
    with pytest.raises(RuntimeError, match="boom"):
        _raise_during_save(path)
    assert load(path)["iter"] == 1
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == killed_leftovers
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load(str(tmp_path / "none.pth"))


def _raise_during_save(path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")
    save_atomic({"x": Boom()}, path)


def test_command_line_overrides():
    from rtseg_train.cli import _config, parser
    args = parser().parse_args(
        ["train", "--config", "msfnet_camvid", "--data-root", "d", "--work-dir", "w",
         "--crop", "32x48", "--model-options", '{"cbs": false}', "--eval-flip", "--no-hflip",
         "--eval-scales", "0.5,1", "--dataset", "cityscapes"])
    config = _config(args)
    assert config.crop == (32, 48) and config.eval_scales == (0.5, 1.0)
    assert config.model_options == {"levels": 3, "cbs": False}  # merged with the config's
    assert config.eval_flip and not config.hflip and not config.channels_last
    assert config.num_classes == 19  # follows --dataset
    assert config.lr == get_config("msfnet_camvid").lr
    for bad in (["--crop", "32y48"], ["--eval-scales", "0,1"], ["--model-options", "[1]"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["eval", "--config", "csfcn_camvid", "--data-root", "d",
                                 "--checkpoint", "c", *bad])


def test_command_line_reports_missing_paths(tmp_path, capsys):
    from rtseg_train.cli import main
    nowhere = str(tmp_path / "nowhere")
    assert main(["train", "--config", "sgcpnet_camvid", "--data-root", nowhere, "--work-dir",
                 str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 2
    assert f"train: error: data root not found: {nowhere}" in capsys.readouterr().err
    assert main(["eval", "--config", "sgcpnet_camvid", "--data-root", nowhere, "--checkpoint",
                 str(tmp_path / "none.pth"), "--device", "cpu"]) == 2
    assert "eval: error: checkpoint not found" in capsys.readouterr().err
