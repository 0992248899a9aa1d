"""Atomic checkpoints: a checkpoint is written to a temporary file in the same folder, flushed
to disk, then renamed over its destination, so a run that dies while saving leaves the previous
checkpoint intact."""
import os
import tempfile

import torch


def save_atomic(obj, path):
    """torch.save(obj) to `path` through a temporary file and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, device="cpu"):
    """A checkpoint written by `save_atomic` (trusted: it holds RNG states and the config)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device, weights_only=False)


def model_state(checkpoint):
    """The model state dict of a training checkpoint or of a bare state dict."""
    return checkpoint["model"] if isinstance(checkpoint, dict) and "model" in checkpoint \
        else checkpoint
