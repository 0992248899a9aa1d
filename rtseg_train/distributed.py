"""torch.distributed plumbing for runs under `torchrun`: process group set-up, the resumable
training sampler, the evaluation shards, and SyncBatchNorm on every device.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything runs as one process.
"""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler


def world():
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main():
    """Rank 0 of the process group, or, outside one, of the torchrun job (RANK), if any."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device):
    """Initialise the process group when launched by torchrun (NCCL for CUDA devices, gloo
    otherwise) and return the torch.device of this process (CUDA: cuda:LOCAL_RANK)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: this torch sees no CUDA device")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return torch.device(device)


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class EpochSampler(Sampler):
    """Endless (index, epoch) keys for `TransformedDataset`: epoch e is this rank's share of a
    `DistributedSampler` permutation seeded with (seed, e), and epochs follow each other
    without a gap. `start` skips that many of this rank's keys: a run resumed after the
    global sample `start * world_size` continues with the very next one. (The DataLoader reads
    keys ahead of the batches it hands out, so the position is derived from the iteration count
    rather than from the sampler.)"""

    def __init__(self, dataset_size, seed=0, start=0):
        rank, size = world()
        self.inner = DistributedSampler(range(dataset_size), num_replicas=size, rank=rank,
                                        shuffle=True, seed=seed, drop_last=True)
        if len(self.inner) == 0:
            raise ValueError(f"dataset: {dataset_size} samples are fewer than the {size} "
                             "processes")
        self.start = start

    def __iter__(self):
        epoch, position = divmod(self.start, len(self.inner))
        while True:
            self.inner.set_epoch(epoch)
            for index in list(self.inner)[position:]:
                yield index, epoch
            epoch, position = epoch + 1, 0


class ShardSampler(Sampler):
    """Rank r of n evaluates samples r, r + n, ...: every sample exactly once over all ranks."""

    def __init__(self, dataset_size):
        rank, size = world()
        self.indices = list(range(rank, dataset_size, size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's input is the sum of the gradients
    of the output over processes."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all processes
    (mean, then the mean squared deviation from it, each summed over processes by a
    differentiable all-reduce). It runs on every device and backend, including gloo on the CPU,
    where `torch.nn.SyncBatchNorm` refuses to. Eval mode and a single process behave as
    BatchNorm2d."""

    def forward(self, x):
        if not self.training or world()[1] == 1:
            return super().forward(x)
        dims = (0, 2, 3)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:-1] / count
        centered = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = centered * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model, device):
    """Every BatchNorm2d of `model` made synchronous: torch.nn.SyncBatchNorm on CUDA,
    `SyncBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=device,
                                   dtype=child.weight.dtype if child.affine else None)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


def all_reduce_sum(tensor):
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor

