"""Timing helpers shared by every benchmarks/bench_<op>.py.

Each benchmark times one implementation of one op at one case, forward or forward+backward, and
tags itself in `extra_info` so that make_table.py can pair it with its baselines: op, case,
device, dtype, layout, pass, impl, and the bytes the op must move (for the roofline) or its
FLOPs. Implementations: "rtseg", its eager PyTorch "reference" and, on CUDA, "compiled" (the
reference under torch.compile: the baseline a user would otherwise pick).

On CUDA the figure reported is the median of CUDA-event timings of single calls, each after
the L2 cache was flushed (so that inputs come from DRAM, as in a network), after warm-up calls;
pytest-benchmark's own wall-clock rounds are kept in the JSON as well.
"""
import pytest
import torch

from op_harness import COLLECT_CUDA, CUDA_MARKS

DEVICES = ["cpu"] + ([pytest.param("cuda", marks=CUDA_MARKS)] if COLLECT_CUDA else [])
PASSES = ["fwd", "fwd+bwd"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = {"NCHW": "contiguous", "channels_last": "channels_last"}
CUDA_REPS = 25

parametrize_dtypes = pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
parametrize_layouts = pytest.mark.parametrize("layout", list(LAYOUTS))


def dtypes_for(device):
    return [torch.float32] if device == "cpu" else list(DTYPES.values())


def skip_unless_benchmarked(device, dtype, layout="NCHW", impl="rtseg"):
    """The CPU runs float32 NCHW against the eager reference only (as it always has: its rounds
    take long); CUDA runs every combination."""
    if dtype not in dtypes_for(device):
        pytest.skip(f"{dtype} is not benchmarked on {device}")
    if device == "cpu" and layout != "NCHW":
        pytest.skip(f"{layout} is benchmarked on CUDA only")
    if device == "cpu" and impl == "compiled":
        pytest.skip("the compiled reference is benchmarked on CUDA only")


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def tensor_bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def cuda_event_seconds(call, reps=CUDA_REPS, warmup=3):
    """Sorted seconds of `reps` single calls of `call`, timed with CUDA events, the L2 cache
    flushed (overwritten) before each."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    flush = torch.empty(max(2 * getattr(props, "L2_cache_size", 0), 64 << 20), dtype=torch.int8,
                        device="cuda")
    for _ in range(warmup):
        call()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return sorted(start.elapsed_time(end) / 1e3 for start, end in events)


def run_benchmark(benchmark, fn, args, *, op, case, impl, pass_, bytes_moved=None, rounds=None,
                  layout=None, flops=None):
    """Time `fn(*args)` (and its backward for pass_="fwd+bwd"), synchronised, after warm-up.
    `layout` is appended to the case name; `flops` maps a pass to its floating-point operations
    (make_table.py reports TFLOP/s from it)."""
    device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    if layout is not None and layout != "NCHW":
        case = f"{case} {layout}"
    benchmark.group = f"{op} | {case} | {device} | {str(dtype).replace('torch.', '')} | {pass_}"
    benchmark.extra_info.update(op=op, case=case, device=device, impl=impl, pass_=pass_,
                                dtype=str(dtype).replace("torch.", ""))
    if bytes_moved is not None:
        benchmark.extra_info["bytes"] = int(bytes_moved)
    if flops is not None and pass_ in flops:
        benchmark.extra_info["flops"] = int(flops[pass_])
    if device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()

    if pass_ == "fwd":
        def call():
            with torch.no_grad():
                fn(*args)
    else:
        leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and
                  a.is_floating_point() else a for a in args]
        out = fn(*leaves)
        # ops returning a list of tensors get one random gradient per tensor
        grad = [torch.randn_like(o) for o in out] if isinstance(out, (list, tuple)) else \
            torch.randn_like(out)

        def call():
            out = fn(*leaves)
            torch.autograd.backward(out, grad)
            for a in leaves:
                if isinstance(a, torch.Tensor):
                    a.grad = None

    def target():
        call()
        _sync(device)

    for _ in range(2):
        target()
    if device == "cuda":
        seconds = cuda_event_seconds(call)
        benchmark.extra_info.update(cuda_median_s=seconds[len(seconds) // 2],
                                    cuda_min_s=seconds[0], cuda_reps=len(seconds))
    if rounds is None:
        rounds = 5
    benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=1)


def parametrize_impls(impls):
    """Parametrize a benchmark over {name: callable} and "compiled" (see resolve_impl)."""
    names = list(impls) + ["compiled"]
    return pytest.mark.parametrize("impl", names, ids=names)


def resolve_impl(impls, impl):
    """The callable of `impl`: "compiled" is torch.compile of impls["reference"], fresh (a reset
    dynamo, clear of the recompile limit over the many dtypes and layouts)."""
    if impl != "compiled":
        return impls[impl]
    torch._dynamo.reset()
    return torch.compile(impls["reference"], dynamic=False)
