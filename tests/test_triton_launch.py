"""rtseg_ops/triton/_launch.py: launches run on their tensors' device."""
import contextlib

import pytest
import torch

pytest.importorskip("triton")
from rtseg_ops.triton import _launch  # noqa: E402


def test_run_makes_the_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device: with tensors on cuda:1 while cuda:0 is
    current, run() must switch to cuda:1 around the launches (checked here with a stand-in for
    torch.cuda.device, which needs no GPU)."""
    events = []

    @contextlib.contextmanager
    def device(d):
        events.append(("enter", torch.device(d)))
        yield
        events.append(("exit", torch.device(d)))

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: events.append(("launch", grid))

    monkeypatch.setattr(torch.cuda, "device", device)
    launches = [_launch.Launch(Kernel(), (3,), (), {}), _launch.Launch(Kernel(), (1, 2), (), {})]
    _launch.run(launches, torch.device("cuda", 1))
    assert events == [("enter", torch.device("cuda", 1)), ("launch", (3,)), ("launch", (1, 2)),
                      ("exit", torch.device("cuda", 1))]
    events.clear()
    _launch.run(launches, torch.device("cpu"))  # the interpreter: no CUDA device to set
    assert events == [("launch", (3,)), ("launch", (1, 2))]
