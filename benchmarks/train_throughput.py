"""Training throughput (images/s) of each model with fused and with reference ops.

    python benchmarks/train_throughput.py [--crop 128] [--batch 4] [--steps 6] [--threads 1]

One step = forward, loss (the config's), backward and optimiser step on a fixed random batch
(data loading excluded), in the config's training mode; the median of `--steps` timed steps
after 2 warm-up steps.
"""
import argparse
import statistics
import time

import torch

from rtseg_train import get_config
from rtseg_train.engine import build_model, build_optimizer
from rtseg_train.losses import SegmentationCriterion


def throughput(name, ops, crop, batch, steps):
    config = get_config(f"{name}_cityscapes", ops=ops)
    model = build_model(config, torch.device("cpu"))
    optimizer, criterion = build_optimizer(config, model), SegmentationCriterion(config)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, crop, crop)
    y = torch.randint(0, config.num_classes, (batch, crop, crop))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss, _ = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--models", default="csfcn,sgcpnet,fbsnet,msfnet")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"crop {args.crop}x{args.crop}, batch {args.batch}, {args.threads} thread(s), "
          f"float32, images/s (median of {args.steps} steps)")
    print(f"{'model':8s} {'fused':>8s} {'reference':>10s} {'speedup':>8s}")
    for name in args.models.split(","):
        fused = throughput(name, "fused", args.crop, args.batch, args.steps)
        ref = throughput(name, "reference", args.crop, args.batch, args.steps)
        print(f"{name:8s} {fused:8.2f} {ref:10.2f} {fused / ref:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
