"""Inference speed of one rtseg network, measured the way papers report FPS.

    python -m rtseg_models.benchmark --model csfcn --size 1024x2048 --batch 1 --dtype fp16 \\
        --device cuda [--channels-last] [--json rows.json]

Methodology: eval mode, BatchNorms folded (fuse_for_inference), the input already on the device,
`--warmup` untimed forwards (which also absorb torch.compile's compilation), then `--iters`
timed forwards under torch.inference_mode, each between two device synchronisations; the
median is reported, FPS = batch / median. Implementations: eager with the PyTorch references
(ops="reference"), eager with the fused rtseg ops, torch.compile of each, and ONNX Runtime on
the exported file when onnxruntime is installed (float32 only: the export is float32). One
markdown table per run, headed by the device name, dtype, resolution and batch; `--json FILE`
writes the rows. No TensorRT is used.
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch

from ._cli import parse_size
from .api import create_model, list_models

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMPLS = ("eager-reference", "eager-fused", "compile-reference", "compile-fused", "onnxruntime")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(fn, x, warmup, iters, device):
    """Median seconds of `iters` synchronised calls of fn(x) after `warmup` calls."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        _sync(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name, ops, device, dtype, channels_last, num_classes, **options):
    """Model `name` in eval mode with BatchNorms folded, on `device` in `dtype`."""
    model = create_model(name, num_classes=num_classes, ops=ops, **options).fuse_for_inference()
    model = model.to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def onnxruntime_forward(model, x):
    """A callable timing `model` (float32, on the CPU) exported to ONNX, in an ONNX Runtime
    session on x's device; on CUDA the device tensor `x` is bound, so no host copy is timed."""
    import numpy as np

    from rtseg_ops.onnx_export import require_export_packages

    from .export import export_onnx
    onnxruntime, = require_export_packages("onnxruntime")
    cuda = x.device.type == "cuda"
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if providers[0] not in onnxruntime.get_available_providers():
        raise RuntimeError(f"this onnxruntime has no {providers[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        export_onnx(model, path, tuple(x.shape))
        session = onnxruntime.InferenceSession(path, providers=providers)
    name = session.get_inputs()[0].name
    if not cuda:
        return lambda t: session.run(None, {name: t.numpy()})
    binding = session.io_binding()
    index = x.device.index or 0
    binding.bind_input(name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda", index)
    return lambda t: session.run_with_iobinding(binding)


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    x = torch.randn((args.batch, 3) + args.size, device=device, dtype=dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rows, base = [], None
    for impl in args.impls:
        print(f"[benchmark] {impl} ...", file=sys.stderr, flush=True)  # compiling can take minutes
        row = dict(model=args.model, impl=impl, device=device.type,
                   device_name=device_name(device), dtype=args.dtype,
                   size=f"{args.size[0]}x{args.size[1]}", batch=args.batch,
                   channels_last=args.channels_last, torch=torch.__version__)
        try:
            mode, _, ops = impl.partition("-")
            if impl == "onnxruntime":
                if dtype != torch.float32:
                    raise RuntimeError("the ONNX export is float32; run with --dtype fp32")
                model = build(args.model, "fused", "cpu", torch.float32, False, args.num_classes)
                inp = x.contiguous()
                fn = onnxruntime_forward(model, inp)
            else:
                fn = build(args.model, ops, device, dtype, args.channels_last, args.num_classes)
                if mode == "compile":
                    torch._dynamo.reset()
                    fn = torch.compile(fn, fullgraph=True)
                inp = x
            median = time_forward(fn, inp, args.warmup, args.iters, device)
        except Exception as exc:  # one failing row must not hide the others
            row.update(error=f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            print(f"[benchmark] {impl}: {row['error']}", file=sys.stderr)
        else:
            row.update(median_ms=median * 1e3, fps=args.batch / median)
            print(f"[benchmark] {impl}: {median * 1e3:.2f} ms", file=sys.stderr, flush=True)
            if impl == "eager-reference":
                base = median
            if base:
                row["speedup_vs_eager_reference"] = base / median
        rows.append(row)
    return rows


def render(rows, args):
    first = rows[0]
    lines = [f"### {args.model} on {first['device_name']}: {args.dtype}, "
             f"{args.size[0]}x{args.size[1]}, batch {args.batch}"
             f"{', channels_last' if args.channels_last else ''} (torch {torch.__version__}; "
             f"median of {args.iters} after {args.warmup} warm-up)", "",
             "| implementation | median ms | FPS | vs eager reference |", "|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['impl']} | n/a | n/a | {r['error']} |")
            continue
        speedup = f"{r['speedup_vs_eager_reference']:.2f}x" \
            if "speedup_vs_eager_reference" in r else ""
        lines.append(f"| {r['impl']} | {r['median_ms']:.2f} | {r['fps']:.1f} | {speedup} |")
    return "\n".join(lines)


def parser():
    p = argparse.ArgumentParser(prog="python -m rtseg_models.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=list_models())
    p.add_argument("--size", type=parse_size, required=True, help="input HxW, e.g. 1024x2048")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--warmup", type=int, default=10, help="untimed forwards first (default 10)")
    p.add_argument("--iters", type=int, default=50, help="timed forwards (default 50)")
    p.add_argument("--impls", type=lambda s: s.split(","), default=list(IMPLS),
                   help=f"comma-separated subset of {','.join(IMPLS)} (default: all)")
    p.add_argument("--json", metavar="FILE", help="write the rows to FILE")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    unknown = set(args.impls) - set(IMPLS)
    if unknown:
        raise SystemExit(f"--impls: unknown {sorted(unknown)}; expected a subset of {IMPLS}")
    if args.batch < 1 or args.warmup < 0 or args.iters < 1:
        raise SystemExit("--batch and --iters must be >= 1, --warmup >= 0")
    rows = run(args)
    print(render(rows, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
