"""The training loop and the evaluation loop, for one process or one process per device under
torchrun (DistributedDataParallel; logs, previews and checkpoints from rank 0 only)."""
import contextlib
import csv
import math
import os
import random
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import rtseg_models

from . import checkpoint as ckpt
from .datasets import build_dataset
from .distributed import (EpochSampler, ShardSampler, all_reduce_sum, cleanup, convert_sync_batchnorm,
                          is_main, setup, world)
from .inference import predict_probs
from .losses import SegmentationCriterion
from .metrics import ConfusionMatrix, iou_table
from .transforms import EvalTransform, TrainTransform, TransformedDataset
from .visualize import denormalize, save_preview

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(config, device):
    torch.manual_seed(config.seed)
    model = rtseg_models.create_model(config.model, num_classes=config.num_classes, ops=config.ops,
                                      **config.model_options)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(config, model):
    """The config's optimiser; weight decay applies to every parameter, as in the papers."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer: expected 'sgd', 'adam' or 'adamw', got {config.optimizer!r}")


def lr_factor(config):
    """Iteration -> learning-rate factor: linear warm-up from `warmup_ratio` over
    `warmup_iters`, times poly ((1 - t/T)^power) or cosine (from 1 to min_lr / lr)."""
    if config.schedule not in ("poly", "cosine"):
        raise ValueError(f"schedule: expected 'poly' or 'cosine', got {config.schedule!r}")
    total, floor = max(config.iters, 1), config.min_lr / config.lr

    def factor(it):
        t = min(it, total) / total
        if config.schedule == "poly":
            main = (1 - t) ** config.power * (1 - floor) + floor
        else:
            main = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if it < config.warmup_iters:
            main *= config.warmup_ratio + (1 - config.warmup_ratio) * it / config.warmup_iters
        return main
    return factor


def train_loader(config, data_root, start_sample):
    rank, size = world()
    if config.batch_size % size:
        raise ValueError(f"batch_size: the global batch {config.batch_size} must be divisible by "
                         f"the {size} processes")
    base = build_dataset(config.dataset, data_root, config.train_split, config.num_classes,
                         config.ignore_index)
    if base.num_classes != config.num_classes:
        raise ValueError(f"num_classes: config {config.num_classes}, dataset {base.num_classes}")
    transform = TrainTransform(config.crop, config.scale_range, config.hflip, config.color_jitter,
                               config.mean, config.std, config.ignore_index)
    sampler = EpochSampler(len(base), config.seed, start_sample // size)
    return DataLoader(TransformedDataset(base, transform, config.seed),
                      batch_size=config.batch_size // size, sampler=sampler,
                      num_workers=config.workers, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(config.seed))


def eval_loader(config, data_root, split):
    base = build_dataset(config.dataset, data_root, split, config.num_classes, config.ignore_index)
    dataset = TransformedDataset(base, EvalTransform(config.mean, config.std))
    return DataLoader(dataset, batch_size=1, sampler=ShardSampler(len(base)),
                      num_workers=min(config.workers, 2)), base.class_names


def _autocast(device, amp):
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def evaluate(model, loader, config, device, vis_dir=None, vis_count=0, progress=True):
    """Confusion matrix (summed over processes) of eval-mode `model` on `loader`, predictions at
    each label's full resolution with the config's eval mode, scales and flip. With `vis_dir`,
    rank 0 writes input / ground truth / prediction PNGs of its first `vis_count` images."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(config.num_classes, config.ignore_index, device)
    window = tuple(config.eval_crop or config.crop)
    bar = tqdm(loader, desc="eval", disable=not (progress and is_main()), leave=False)
    saved = 0
    for x, y, index in bar:
        x, y = x.to(device), y.to(device)
        if config.channels_last:
            x = x.to(memory_format=torch.channels_last)
        with _autocast(device, config.amp):
            probs = predict_probs(model, x, y.shape[-2:], config.num_classes, config.eval_mode,
                                  window, config.eval_stride, config.eval_scales, config.eval_flip)
        pred = probs.argmax(1)
        cm.update(pred, y)
        if vis_dir and is_main() and saved < vis_count:
            save_preview(os.path.join(vis_dir, f"preview_{int(index[0]):05d}.png"),
                         denormalize(x[0], config.mean, config.std), y[0].cpu().numpy(),
                         pred[0].cpu().numpy(), config.ignore_index)
            saved += 1
    model.train(was_training)
    return cm.all_reduce()


class RunLog:
    """CSV files (train.csv per logged iteration, eval.csv per evaluation) and, when the
    tensorboard package is installed, TensorBoard scalars; rank 0 only."""

    def __init__(self, work_dir, class_names, enabled=True):
        self.enabled, self.work_dir, self.class_names = enabled, work_dir, class_names
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(work_dir, "tensorboard"))
            except ImportError:
                pass

    def _append(self, name, row):
        path = os.path.join(self.work_dir, name)
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def train(self, row):
        if self.enabled:
            self._append("train.csv", row)
            if self.tb:
                for key in ("loss", "lr", "images_per_s"):
                    self.tb.add_scalar(f"train/{key}", row[key], row["iter"])

    def eval(self, it, cm):
        if self.enabled:
            iou = cm.iou().tolist()
            row = {"iter": it, "mIoU": cm.miou(), "pixel_acc": cm.pixel_accuracy()}
            row.update({f"IoU {n}": v for n, v in zip(self.class_names, iou)})
            self._append("eval.csv", row)
            if self.tb:
                self.tb.add_scalar("eval/mIoU", row["mIoU"], it)

    def close(self):
        if self.tb:
            self.tb.close()


def _rng_state():
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config, data_root, work_dir, device="auto", resume=None, progress=True,
          vis_count=4, stop_at=None):
    """Train `config` on `data_root`, writing checkpoints (latest.pth, best.pth), logs and
    previews into `work_dir`. `resume`: a checkpoint path, or "auto" for work_dir/latest.pth
    when it exists. `stop_at`: end this run after that iteration with a checkpoint, as if the
    job's time were up (the schedule still spans `config.iters`; --resume continues).
    Returns dict(iter=, loss=, miou=, best_miou=) (mIoU of the last evaluation, in [0, 1];
    NaN when none ran)."""
    device = setup(device)
    try:
        return _train(config, data_root, work_dir, device, resume, progress, vis_count,
                      min(stop_at or config.iters, config.iters))
    finally:
        cleanup()


def check_amp(config, device):
    if config.amp not in AMP_DTYPES:
        raise ValueError(f"amp: expected one of {sorted(AMP_DTYPES)}, got {config.amp!r}")


def _train(config, data_root, work_dir, device, resume, progress, vis_count, stop_at):
    check_amp(config, device)
    rank, size = world()
    main = rank == 0
    os.makedirs(work_dir, exist_ok=True)
    latest, best_path = os.path.join(work_dir, "latest.pth"), os.path.join(work_dir, "best.pth")
    model = build_model(config, device)
    if config.sync_bn and size > 1:
        model = convert_sync_batchnorm(model, device)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    criterion = SegmentationCriterion(config)

    start, best_miou = 0, -1.0
    if resume == "auto":
        resume = latest if os.path.exists(latest) else None
    if resume:
        state = ckpt.load(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start, best_miou = state["iter"], state["best_miou"]
        if main:
            tqdm.write(f"[rtseg_train] resumed from {resume} at iteration {start}")
            if state["world_size"] != size:
                tqdm.write(f"[rtseg_train] the checkpoint was written by {state['world_size']} "
                           f"processes and this run has {size}: training continues after the "
                           "same number of samples, but not with the very same sample order")
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None) if size > 1 else model
    loader = train_loader(config, data_root, start * config.batch_size)
    val_loader = eval_loader(config, data_root, config.eval_split)[0] \
        if config.eval_interval >= 0 else None
    log = RunLog(work_dir, loader.dataset.base.class_names, main)

    def save(path, it):
        ckpt.save_atomic(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                              scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                              rng=_rng_state(), iter=it, best_miou=best_miou,
                              samples_seen=it * config.batch_size, world_size=size,
                              config=config.to_dict()), path)

    def run_eval(it):
        nonlocal best_miou
        cm = evaluate(model, val_loader, config, device, os.path.join(work_dir, "previews"),
                      vis_count, progress)
        miou = cm.miou()
        log.eval(it, cm)
        if main:
            tqdm.write(f"[rtseg_train] iteration {it}: {config.eval_split} mIoU "
                       f"{100 * miou:.2f}%")
            if miou > best_miou:
                best_miou = miou
                ckpt.save_atomic(dict(model=model.state_dict(), iter=it, miou=miou,
                                      config=config.to_dict()), best_path)
        return miou

    bar = tqdm(total=config.iters, initial=start, desc=config.model, dynamic_ncols=True,
               disable=not (progress and main))
    net.train()
    batches = iter(loader)
    it, loss_value, miou = start, math.nan, math.nan
    tick, tick_it = time.perf_counter(), start
    while it < stop_at:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if config.channels_last:
            x = x.to(memory_format=torch.channels_last)
        with _autocast(device, config.amp):
            outputs = net(x)
        loss, terms = criterion(outputs, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {it + 1}; lower --lr or "
                                     "use --clip-grad")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        it += 1
        bar.update(1)
        if it % config.log_interval == 0 or it == stop_at:
            stats = torch.stack([loss.detach().float(), *(v.float() for v in terms.values())])
            stats = all_reduce_sum(stats) / size
            loss_value = stats[0].item()
            now = time.perf_counter()
            speed = (it - tick_it) * config.batch_size / max(now - tick, 1e-9)
            tick, tick_it = now, it
            row = dict(iter=it, epoch=round(it * config.batch_size / len(loader.dataset), 3),
                       loss=loss_value, lr=lr, images_per_s=round(speed, 2))
            row.update({k: v.item() for k, v in zip(terms, stats[1:])})
            log.train(row)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", img_s=f"{speed:.1f}")
        if config.eval_interval >= 0 and (it == config.iters or (
                config.eval_interval and it % config.eval_interval == 0)):
            miou = run_eval(it)
        if main and (it % config.ckpt_interval == 0 or it == stop_at):
            save(latest, it)
    bar.close()
    log.close()
    return dict(iter=it, loss=loss_value, miou=miou, best_miou=best_miou)


def load_for_eval(config, checkpoint_path, device):
    model = build_model(config, device)
    model.load_state_dict(ckpt.model_state(ckpt.load(checkpoint_path)))
    return model


def run_evaluation(config, data_root, checkpoint_path, split=None, device="auto", vis_dir=None,
                   vis_count=4, progress=True):
    """Evaluate a checkpoint; returns (ConfusionMatrix, class names)."""
    device = setup(device)
    try:
        check_amp(config, device)
        model = load_for_eval(config, checkpoint_path, device)
        loader, class_names = eval_loader(config, data_root, split or config.eval_split)
        return evaluate(model, loader, config, device, vis_dir, vis_count, progress), class_names
    finally:
        cleanup()


def report(cm, class_names):
    """The per-class IoU table, pixel accuracy and the closing `mIoU: <percent>` line."""
    return (f"{iou_table(cm.iou(), class_names)}\n"
            f"pixel accuracy: {100 * cm.pixel_accuracy():.2f}\n"
            f"mIoU: {100 * cm.miou():.2f}")

