"""Timing helpers shared by every benchmarks/bench_<op>.py.

Each benchmark times one implementation ("rtseg" or a baseline) of one op at one case, forward or
forward+backward, and tags itself in `extra_info` so that make_table.py can pair it with its
baseline: op, case, device, dtype, pass, impl, and the bytes the op must move (for the roofline).
"""
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PASSES = ["fwd", "fwd+bwd"]


def dtypes_for(device):
    return [torch.float32] if device == "cpu" else [torch.float32, torch.float16]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def tensor_bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def run_benchmark(benchmark, fn, args, *, op, case, impl, pass_, bytes_moved=None, rounds=None):
    """Time `fn(*args)` (and its backward for pass_="fwd+bwd"), synchronised, after warm-up."""
    device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    benchmark.group = f"{op} | {case} | {device} | {str(dtype).replace('torch.', '')} | {pass_}"
    benchmark.extra_info.update(op=op, case=case, device=device, impl=impl, pass_=pass_,
                                dtype=str(dtype).replace("torch.", ""))
    if bytes_moved is not None:
        benchmark.extra_info["bytes"] = int(bytes_moved)
    if device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()

    if pass_ == "fwd":
        def target():
            with torch.no_grad():
                fn(*args)
            _sync(device)
    else:
        leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and
                  a.is_floating_point() else a for a in args]
        out = fn(*leaves)
        # ops returning a list of tensors get one random gradient per tensor
        grad = [torch.randn_like(o) for o in out] if isinstance(out, (list, tuple)) else \
            torch.randn_like(out)

        def target():
            out = fn(*leaves)
            torch.autograd.backward(out, grad)
            _sync(device)
            for a in leaves:
                if isinstance(a, torch.Tensor):
                    a.grad = None

    for _ in range(2):
        target()
    if rounds is None:
        rounds = 5 if device == "cpu" else 50
    benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=1)


def parametrize_impls(impls):
    """Parametrize a benchmark over {name: callable}."""
    return pytest.mark.parametrize("impl", list(impls), ids=list(impls))
