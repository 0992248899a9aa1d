"""Training throughput (images/s) of each model with fused and with reference ops.

    python benchmarks/train_throughput.py [--crop 128] [--batch 4] [--steps 6] [--threads 1]

One step = forward, loss (the config's), backward and optimiser step on a fixed random batch
(data loading excluded), in the config's training mode; the median of `--steps` timed steps
after 2 warm-up steps, fused and reference steps alternating.
"""
import argparse
import statistics
import time

import torch

from rtseg_train import get_config
from rtseg_train.engine import build_model, build_optimizer
from rtseg_train.losses import SegmentationCriterion


def _step_timer(name, ops, x, y):
    config = get_config(f"{name}_cityscapes", ops=ops)
    model = build_model(config, torch.device("cpu"))
    optimizer, criterion = build_optimizer(config, model), SegmentationCriterion(config)

    def step():
        start = time.perf_counter()
        loss, _ = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start
    return step


def throughput(name, crop, batch, steps):
    """images/s of (fused, reference); their steps alternate, so that a change in the load
    of a shared machine hits both alike."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, crop, crop)
    y = torch.randint(0, 19, (batch, crop, crop))
    fused, ref = _step_timer(name, "fused", x, y), _step_timer(name, "reference", x, y)
    times = {fused: [], ref: []}
    for i in range(steps + 2):
        for step in (fused, ref):
            t = step()
            if i >= 2:
                times[step].append(t)
    return tuple(batch / statistics.median(times[s]) for s in (fused, ref))


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
        fused, ref = throughput(name, args.crop, args.batch, args.steps)
        print(f"{name:8s} {fused:8.2f} {ref:10.2f} {fused / ref:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
