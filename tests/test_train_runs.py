"""rtseg_train end to end on synthetic Cityscapes-layout data: each model learns, fused and
reference ops agree, a crashed run resumes exactly, torchrun DDP (gloo, 2 processes) equals one
process with the same global batch, and the eval command prints per-class IoU and mIoU.

The runs are single-threaded: at these crops a second thread gains little, and OpenMP barriers
stall badly when the CI machine is oversubscribed.
"""
import csv
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

import rtseg_train.engine as engine
from rtseg_train import get_config
from rtseg_train.checkpoint import load
from rtseg_train.synthetic import make_synthetic_cityscapes

# Short runs that learn within a few dozen iterations from scratch. Crops of 128 where a model
# pools to 1/128 (SGCPNet) or deeper (MSFNet): at 64 its coarsest BatchNorms see 1x1 maps, whose
# batch statistics are far from the running ones used at evaluation. Adam where the paper's SGD
# learns too slowly in 30-60 iterations.
RUNS = {
    "sgcpnet": dict(crop=128, batch=4, iters=30, optimizer="sgd", lr=0.1),
    "csfcn": dict(crop=64, batch=8, iters=60, optimizer="adam", lr=1e-3),
    "fbsnet": dict(crop=64, batch=4, iters=30, optimizer="adam", lr=5e-3),
    "msfnet": dict(crop=128, batch=4, iters=30, optimizer="adam", lr=1e-3),
}
MIN_TRAIN_MIOU = 0.30    # chance (everything "road") gives about 0.1
# mean loss of the last 5 iterations below this fraction of that of the first 3; FBSNet's OHEM
# loss is the mean over the pixels still hard, so it falls more slowly than plain CE
LOSS_DROP = {"ce": 0.85, "ohem": 0.93}
REFERENCE_ITERS = 3
REFERENCE_RTOL = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return {size: make_synthetic_cityscapes(str(root / f"s{size}"), (("train", 16), ("val", 2)),
                                            (size, 2 * size)) for size in (64, 128)}


def _config(name, **changes):
    run = RUNS[name]
    fields = dict(iters=run["iters"], batch_size=run["batch"], crop=(run["crop"],) * 2,
                  optimizer=run["optimizer"], lr=run["lr"], scale_range=(0.75, 1.25),
                  color_jitter=0.1, warmup_iters=5, workers=0, eval_split="train",
                  log_interval=1, eval_interval=0, ckpt_interval=1000)
    fields.update(changes)
    return get_config(f"{name}_cityscapes", **fields)


def _losses(work_dir):
    """{iteration: loss} from train.csv (a resumed run's rows replace the crashed run's)."""
    with open(os.path.join(work_dir, "train.csv")) as f:
        return {int(r["iter"]): float(r["loss"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Lazily trains each model once: name -> (work_dir, result)."""
    done = {}

    def get(name):
        if name not in done:
            work = str(tmp_path_factory.mktemp(f"run_{name}"))
            config = _config(name)
            result = engine.train(config, data[RUNS[name]["crop"]], work, "cpu", progress=False,
                                  vis_count=2)
            done[name] = work, result
        return done[name]
    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_model_learns_and_reference_ops_agree(name, trained, data, tmp_path):
    work, result = trained(name)
    losses = _losses(work)
    loss_kind = _config(name).loss
    assert sorted(losses) == list(range(1, RUNS[name]["iters"] + 1))
    first = sum(losses[i] for i in (1, 2, 3)) / 3
    last = sum(losses[i] for i in range(len(losses) - 4, len(losses) + 1)) / 5
    print(f"{name}: loss {first:.3f} -> {last:.3f}, train mIoU {100 * result['miou']:.1f}%")
    assert last < LOSS_DROP[loss_kind] * first
    assert result["miou"] > MIN_TRAIN_MIOU
    assert os.path.isfile(os.path.join(work, "best.pth"))
    assert len(os.listdir(os.path.join(work, "previews"))) == 2
    # the same run on the PyTorch reference ops: the same first losses
    ref = _config(name, ops="reference", eval_interval=-1)
    engine.train(ref, data[RUNS[name]["crop"]], str(tmp_path), "cpu", progress=False,
                 stop_at=REFERENCE_ITERS)
    ref_losses = _losses(str(tmp_path))
    worst = max(abs(ref_losses[i] / losses[i] - 1) for i in range(1, REFERENCE_ITERS + 1))
    print(f"{name}: fused vs reference, first {REFERENCE_ITERS} losses: max relative "
          f"difference {worst:.1e}")
    for i in range(1, REFERENCE_ITERS + 1):
        assert ref_losses[i] == pytest.approx(losses[i], rel=REFERENCE_RTOL), i


def test_eval_command_prints_per_class_iou(trained, data, tmp_path):
    work, result = trained("sgcpnet")
    out = subprocess.run(
        [sys.executable, "-m", "rtseg_train", "eval", "--config", "sgcpnet_cityscapes",
         "--data-root", data[128], "--checkpoint", os.path.join(work, "latest.pth"),
         "--split", "train", "--vis-dir", str(tmp_path), "--vis-count", "3", "--no-progress"],
        env=_env(), capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert out[-1] == f"mIoU: {100 * result['miou']:.2f}"
    rows = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in out[2:21]}
    assert rows["road"] != "n/a" and rows["train"] == "n/a"  # "train" is absent from the data
    assert len(os.listdir(tmp_path)) == 3


class _CrashAt:
    """SegmentationCriterion that raises on its n-th call, as if the machine died there."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, config):
        criterion = self.real(config)
        outer = self

        def forward(outputs, labels):
            outer.calls += 1
            if outer.calls == outer.n:
                raise KeyboardInterrupt("simulated crash")
            return criterion(outputs, labels)
        return forward


def test_resume_after_a_crash_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    config = _config("sgcpnet", iters=6, ckpt_interval=3, crop=(64, 64), batch_size=2,
                     workers=1, eval_interval=-1)
    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    engine.train(config, data[64], straight, "cpu", progress=False)
    crash = _CrashAt(5)
    crash.real = engine.SegmentationCriterion
    monkeypatch.setattr(engine, "SegmentationCriterion", crash)
    with pytest.raises(KeyboardInterrupt):
        engine.train(config, data[64], crashed, "cpu", progress=False)
    monkeypatch.undo()
    assert load(os.path.join(crashed, "latest.pth"))["iter"] == 3  # iteration 4 is lost
    engine.train(config, data[64], crashed, "cpu", resume="auto", progress=False)
    a, b = _losses(straight), _losses(crashed)
    assert list(b) == list(range(1, 7))
    for i in range(1, 7):
        assert b[i] == pytest.approx(a[i], rel=1e-6, abs=0), i
    pa = load(os.path.join(straight, "latest.pth"))["model"]
    pb = load(os.path.join(crashed, "latest.pth"))["model"]
    assert all(torch.allclose(pa[k].double(), pb[k].double(), rtol=0, atol=1e-6) for k in pa)


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ddp_equals_one_process(tmp_path):
    """2 processes x 2 images with --sync-bn against 1 process x 4 images, 2 SGD steps.

    No void pixels and no padding: every process's mean loss is over as many pixels as the
    global mean, so averaging the gradients of the two halves gives the global gradient.
    From-scratch networks with BatchNorms on 1x1 maps amplify float rounding by about 30x per
    step at this learning rate (one process with 1 vs 2 threads differs as much), hence few
    steps and a small learning rate; the parameters still move by about 5e-3.
    """
    root = make_synthetic_cityscapes(str(tmp_path / "data"), (("train", 8), ("val", 2)),
                                     (64, 128), void=False)
    args = ["-m", "rtseg_train", "train", "--config", "sgcpnet_cityscapes", "--data-root", root,
            "--iters", "2", "--batch-size", "4", "--crop", "64x64", "--scale-range", "1,1",
            "--lr", "1e-3", "--warmup-iters", "0", "--sync-bn", "--workers", "0",
            "--eval-interval", "-1", "--no-progress", "--device", "cpu"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run([sys.executable, *args, "--work-dir", one], env=_env(), check=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args,
                    "--work-dir", two], env=_env(), check=True)
    a, b = load(os.path.join(one, "latest.pth")), load(os.path.join(two, "latest.pth"))
    assert a["iter"] == b["iter"] == 2 and b["world_size"] == 2
    init = engine.build_model(get_config("sgcpnet_cityscapes"), torch.device("cpu")).state_dict()
    params = [k for k, v in init.items() if v.is_floating_point() and "running" not in k]
    stats = [k for k in init if "running" in k]

    def largest(values):
        return max(v.abs().max().item() for v in values)
    diff = largest(a["model"][k].double() - b["model"][k].double() for k in params)
    moved = largest(a["model"][k].double() - init[k].double() for k in params)
    stats_diff = largest((a["model"][k].double() - b["model"][k].double()) /
                         (1 + a["model"][k].double().abs()) for k in stats)
    print(f"DDP vs one process after 2 steps: max |param difference| {diff:.2e}, BN running "
          f"statistics {stats_diff:.2e} (relative); max param change from init {moved:.2e}")
    assert moved > 1e-3 and diff < 2e-5 and stats_diff < 2e-5
    # evaluation split over 2 processes (confusion matrices all-reduced) = one process
    evaluation = ["-m", "rtseg_train", "eval", "--config", "sgcpnet_cityscapes", "--data-root",
                  root, "--checkpoint", os.path.join(two, "latest.pth"), "--no-progress",
                  "--device", "cpu", "--split", "train"]
    single = subprocess.run([sys.executable, *evaluation], env=_env(), check=True,
                            capture_output=True, text=True).stdout
    split = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                            "2", "--master_addr", "127.0.0.1", "--master_port",
                            str(_free_port()), *evaluation], env=_env(), check=True,
                           capture_output=True, text=True).stdout
    assert split.count("mIoU: ") == 1  # printed by rank 0 only
    assert split.strip().splitlines()[-21:] == single.strip().splitlines()[-21:]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_channels_last_and_clipping(amp, data, tmp_path):
    config = _config("sgcpnet", iters=2, crop=(64, 64), batch_size=2, amp=amp,
                     channels_last=True, clip_grad_norm=1.0, eval_interval=-1)
    # fused ops under CPU autocast run their kernels in float32 (rtseg_ops' autocast rule)
    result = engine.train(config, data[64], str(tmp_path), "cpu", progress=False)
    state = load(os.path.join(str(tmp_path), "latest.pth"))
    assert result["iter"] == 2 and math.isfinite(result["loss"])
    if amp == "fp16":  # the GradScaler's state is saved (it skips steps whose gradients overflow)
        assert 0 < state["scaler"]["scale"] <= 2.0 ** 16
    else:
        assert state["scaler"] == {} and state["optimizer"]["state"]  # no scaler; it stepped
