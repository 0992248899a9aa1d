"""Launch every CUDA kernel of rtseg_ops once on a small case, for compute-sanitizer.

    compute-sanitizer --tool memcheck python tools/gpu_sanitizer_cases.py
    python tools/gpu_sanitizer_cases.py --list         # the cases, without running them
    python tools/gpu_sanitizer_cases.py --device cpu   # the same cases on the CPU kernels

A case is one op (tests/op_cases.py) in one dtype and layout, forward and backward, with default
or deterministic algorithms (the deterministic backward kernels are separate). On CUDA it stops
with an error if an op has no CUDA kernel in this build, so the sanitizer never checks the
PyTorch reference by mistake. Each case is also compared with the reference (a sanitizer run
that 'passes' on wrong results would hide a bug).
"""
import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("contiguous", "channels_last")
MODES = ("default", "deterministic")


def cases(ops, dtypes=DTYPES):
    return [f"{op}/{dtype}/{layout}/{mode}"
            for op, dtype, layout, mode in itertools.product(ops, dtypes, LAYOUTS, MODES)]


def run_case(case, device):
    import torch
    from op_cases import OPS, outputs
    from op_harness import deterministic, forward_and_grads

    name, dtype, layout, mode = case.split("/")
    fn, ref, make, _ = OPS[name]
    dtype = getattr(torch, dtype)
    args = make(device, dtype, layout)
    gen = torch.Generator().manual_seed(0)
    exact = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
             for a in args]
    expected = outputs(ref(*exact))
    gos = [torch.randn(e.shape, generator=gen).to(device, dtype) for e in expected]
    if mode == "deterministic":
        with deterministic():
            outs, grads = forward_and_grads(fn, args, {}, gos)
    else:
        outs, grads = forward_and_grads(fn, args, {}, gos)
    if device == "cuda":
        torch.cuda.synchronize()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for o, e in zip(outs, expected):
        err = (o.double() - e).abs().max().item() if o.numel() else 0.0
        if not err <= tol * (1 + e.abs().max().item()):
            raise AssertionError(f"{case}: output differs from the reference by {err:.3g}")
    if any(g is not None and not torch.isfinite(g).all() for g in grads):
        raise AssertionError(f"{case}: non-finite gradient")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="comma-separated subset of " + ",".join(DTYPES))
    args = parser.parse_args(argv)
    from op_cases import OPS

    dtypes = [d for d in args.dtypes.split(",") if d]
    if args.device == "cpu":
        dtypes = [d for d in dtypes if d == "float32"] + ["float64"]  # the CPU kernels' dtypes
    selected = cases(list(OPS), dtypes)
    if args.list:
        print("\n".join(selected))
        return 0
    import torch
    import rtseg_ops

    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("gpu_sanitizer_cases: no CUDA device")
        missing = [r["op"] for r in rtseg_ops.backend_table() if r["cuda"] == "reference"]
        if missing:
            sys.exit(f"gpu_sanitizer_cases: no CUDA kernel in this build for {missing}")
    start = time.time()
    for i, case in enumerate(selected, 1):
        run_case(case, args.device)
        print(f"[{i}/{len(selected)}] {case} ok ({time.time() - start:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
