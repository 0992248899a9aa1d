"""Compile every Triton kernel configuration the ops launch for sm_90, without a GPU.

The configurations come from the launchers themselves: the public op functions run on meta
tensors (shapes and strides, no memory, no GPU), taken for CUDA tensors (the test tables' cases and the four models at their paper resolutions, forward and
backward), every rtseg Triton op call is recorded, and the op's own `*_launches` function turns
it into the list of launches it would run. Each distinct compilation (kernel, specialisation as
Triton's launcher computes it, constexprs, num_warps, num_stages) is compiled by Triton for
GPUTarget("cuda", 90, 32); ptxas' report gives registers, stack and spills, the kernel's metadata
its shared memory. A configuration fails when it spills, needs more shared memory than an sm_90
block may have (227 KiB), or takes more than a minute to compile.

Results are cached by compilation key and Triton version in build/triton-compile-check/, so a
second run only compiles what changed.

    python tools/triton_compile_check.py [--model-dtypes float32,...] [--table-dtypes ...]
                                         [--one-per-group] [--jobs N] [--no-cache]
"""
import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "build" / "triton-compile-check"
SM90_MAX_SHARED = 227 * 1024  # bytes one block may use (opt-in maximum)
COMPILE_LIMIT_S = 60.0
TARGET_ARCH = 90
DTYPES = ("float32", "float16", "bfloat16", "float64")
# paper resolutions (CSFCN, SGCPNet and MSFNet 1024x2048, FBSNet 512x1024), batch 2: training
MODEL_INPUTS = {"csfcn": (2, 3, 1024, 2048), "sgcpnet": (2, 3, 1024, 2048),
                "msfnet": (2, 3, 1024, 2048), "fbsnet": (2, 3, 512, 1024)}

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton >= 3.9 warns when unset

import torch  # noqa: E402
import triton  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import MockTensor, create_function_from_signature  # noqa: E402

sys.path.insert(0, str(ROOT))
import rtseg_ops  # noqa: E402,F401
from rtseg_ops import _backend, _checks  # noqa: E402
from rtseg_ops.triton import pixel_context_attention as pca  # noqa: E402
from rtseg_ops.triton import scalar_weighted_sum as sws  # noqa: E402


def _pca_forward(query, key, value, scale):
    return pca.forward_launches(query, key, value, scale)[0]


def _pca_backward(grad_output, query, key, value, lse, scale):
    return pca.backward_launches(grad_output, query, key, value, lse, scale)[0]


def _sws_forward(inputs, weights, normalize, eps, activation):
    return sws.forward_launches(inputs, weights, normalize, eps, activation)[0]


def _sws_backward(grad_output, inputs, weights, normalize, eps, activation):
    return sws.backward_launches(grad_output, inputs, weights, normalize, eps, activation)[0]


# rtseg op -> its Triton launcher's plan (the CUDA implementation registered for it)
TRITON_OPS = {
    "pixel_context_attention": _pca_forward,
    "pixel_context_attention_backward": _pca_backward,
    "scalar_weighted_sum": _sws_forward,
    "scalar_weighted_sum_backward": _sws_backward,
}


class _Recorder(TorchDispatchMode):
    """Records the arguments of every rtseg Triton op called inside it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith("rtseg::") and name[len("rtseg::"):] in TRITON_OPS:
            self.calls.append((name[len("rtseg::"):], args))
        return func(*args, **(kwargs or {}))


def record(fn, *args):
    """Run fn(*args) on meta tensors as if they were CUDA tensors, forward and backward
    (through a given gradient and through .sum(), whose gradient has zero strides), with every op
    taking its kernel path (their fake kernels on meta); returns the recorded (op, args) of the
    Triton ops."""
    saved = dict(_backend._AVAILABLE)
    for name in list(_backend._DECLARED):
        _backend._AVAILABLE[(name, "meta")] = True
    _checks.SUPPORTED_DTYPES["meta"] = _checks.SUPPORTED_DTYPES["cuda"]
    try:
        recorder = _Recorder()
        with recorder:
            for how in ("given", "sum"):
                leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and
                          a.is_floating_point() else a for a in args]
                out = fn(*leaves)
                if out.requires_grad:
                    if how == "sum":
                        out.sum().backward()
                    else:
                        out.backward(torch.empty_like(out))
        return recorder.calls
    finally:
        _backend._AVAILABLE.clear()
        _backend._AVAILABLE.update(saved)
        del _checks.SUPPORTED_DTYPES["meta"]


def _to(args, dtype):
    """Floating tensors (also inside lists) to `dtype`."""
    def conv(a):
        if isinstance(a, (list, tuple)):
            return type(a)(conv(x) for x in a)
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.to(dtype)
        return a
    return conv(args)


def _meta(args):
    """CPU tensors to meta tensors with the same shapes and strides (channels_last, views with
    gaps)."""
    return [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
            if isinstance(a, torch.Tensor) else a for a in args]


def table_cases():
    """(label, fn, args) per case of the test tables of the Triton ops, on meta tensors."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_pixel_context_attention as t_pca
    import test_scalar_weighted_sum as t_sws
    cases = []
    pca_shapes = [(s, "contiguous") for s in t_pca.SHAPES + t_pca.TRITON_SHAPES] + \
        [(s, "channels_last") for s in t_pca.GPU_SHAPES]
    for (B, ck, cv, m, hw), layout in pca_shapes:
        args = t_pca.make_inputs(B, ck, cv, m, hw, layout=layout)
        cases.append((f"pca B{B} Ck{ck} Cv{cv} M{m} {hw[0]}x{hw[1]} {layout}",
                      lambda q, k, v: rtseg_ops.pixel_context_attention(q, k, v, 0.7), args))
    sizes = list(t_sws.SIZES.values()) + list(t_sws.TRITON_SIZES.values()) + t_sws.GPU_SIZES
    for sizes_i in sizes:
        for layout in ("contiguous", "channels_last"):
            *xs, w = t_sws.make_inputs(sizes_i, B=1, C=2, layout=layout)
            for opts in t_sws.OPTIONS:
                cases.append((f"sws {sizes_i} {layout} {opts}",
                              lambda *t, o=opts: rtseg_ops.scalar_weighted_sum(list(t[:-1]),
                                                                                t[-1], **o),
                              xs + [w]))
    return cases


def model_cases():
    import rtseg_models
    cases = []
    for name, shape in MODEL_INPUTS.items():
        def run(x, name=name):
            with torch.device("meta"):
                model = rtseg_models.create_model(name)
            out = model(x)
            return out if isinstance(out, torch.Tensor) else out[0]
        cases.append((f"model {name} {shape}", run, (torch.empty(shape, device="meta"),)))
    return cases


def compile_jobs(cases, dtypes=DTYPES):
    """Distinct compilations of the launches the cases make, in every dtype: a dict from cache
    key to a job (kernel module and name, signature, constexprs, attrs, options, a label)."""
    target = GPUTarget("cuda", TARGET_ARCH, 32)
    backend = make_backend(target)
    binders = {}
    jobs = {}
    for label, fn, args in cases:
        for op, call_args in record(fn, *_meta(args)):
            for dtype in dtypes:
                cast = _to(call_args, getattr(torch, dtype))
                if op == "pixel_context_attention_backward":  # lse: float32 or float64
                    cast = cast[:4] + (call_args[4].to(
                        torch.float64 if dtype == "float64" else torch.float32),) + cast[5:]
                _checks.SUPPORTED_DTYPES["meta"] = _checks.SUPPORTED_DTYPES["cuda"]
                try:
                    launches = TRITON_OPS[op](*cast)
                finally:
                    del _checks.SUPPORTED_DTYPES["meta"]
                for launch in launches:
                    kernel = launch.kernel
                    if kernel not in binders:
                        binders[kernel] = create_function_from_signature(
                            kernel.signature, kernel.params, backend)
                    kwargs = dict(launch.constexprs, num_warps=launch.num_warps,
                                  num_stages=launch.num_stages)
                    args = [MockTensor(a.dtype) if isinstance(a, torch.Tensor) else a
                            for a in launch.args]  # specialised as 16-byte aligned pointers
                    bound, spec, opts = binders[kernel](*args, **kwargs)
                    options, signature, constexprs, attrs = kernel._pack_args(
                        backend, kwargs, bound, spec, opts)
                    src = ASTSource(kernel, signature, constexprs, attrs)
                    opt_items = sorted((k, v) for k, v in options.__dict__.items()
                                       if k != "extern_libs")
                    key = hashlib.sha256(f"{src.hash()}-{opt_items}-{triton.__version__}-"
                                         f"sm{TARGET_ARCH}".encode()).hexdigest()[:24]
                    if key not in jobs:
                        shown = {k: v for k, v in launch.constexprs.items()}
                        jobs[key] = dict(
                            module=kernel.fn.__module__, name=kernel.fn.__name__,
                            signature=signature, constexprs=constexprs, attrs=attrs,
                            options=options.__dict__, dtype=dtype,
                            config=_config_text(shown, launch.num_warps, launch.num_stages),
                            example=f"{label}: {op}")
    return jobs


def _config_text(constexprs, num_warps, num_stages):
    def show(v):
        return str(v).replace("triton.language.", "").replace("fp", "f") \
            if not isinstance(v, bool) else str(int(v))
    parts = [f"{k}={show(v)}" for k, v in constexprs.items()]
    return " ".join(parts + [f"w{num_warps}", f"s{num_stages}"])


_PTXAS = [("regs", re.compile(r"Used (\d+) registers")),
          ("stack", re.compile(r"(\d+) bytes stack frame")),
          ("spill_stores", re.compile(r"(\d+) bytes spill stores")),
          ("spill_loads", re.compile(r"(\d+) bytes spill loads"))]


def _compile(job, queue):
    """Worker (a forked process): compile one job, put its resource usage on the queue."""
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # a Triton cache hit would skip ptxas' report
    try:
        import importlib
        kernel = getattr(importlib.import_module(job["module"]), job["name"])
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(kernel, job["signature"], job["constexprs"], job["attrs"]),
                target=GPUTarget("cuda", TARGET_ARCH, 32), options=job["options"])
        seconds = time.perf_counter() - start
        text = log.getvalue()
        result = {k: max((int(v) for v in p.findall(text)), default=0) for k, p in _PTXAS}
        result.update(shared=int(compiled.metadata.shared), seconds=round(seconds, 2),
                      mma=bool(re.search(r"\b(wgmma|mma)\.", compiled.asm["ptx"])))
        queue.put(result)
    except Exception as exc:  # reported as a failure of this configuration
        queue.put({"error": f"{type(exc).__name__}: {str(exc)[:500]}"})


def run_jobs(jobs, n_jobs=2, use_cache=True, progress=True):
    """Compile the jobs (n_jobs at a time, each in its own process, killed past the time limit);
    returns {key: result}."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cache_file = CACHE_DIR / f"triton-{triton.__version__}.json"
    cache = json.loads(cache_file.read_text()) if use_cache and cache_file.exists() else {}
    results = {k: cache[k] for k in jobs if k in cache}
    todo = [k for k in jobs if k not in results]
    ctx = multiprocessing.get_context("fork")
    running = {}
    done, total = 0, len(todo)
    while todo or running:
        while todo and len(running) < n_jobs:
            key = todo.pop(0)
            queue = ctx.Queue()
            proc = ctx.Process(target=_compile, args=(jobs[key], queue), daemon=True)
            proc.start()
            running[key] = (proc, queue, time.perf_counter())
        time.sleep(0.05)
        for key, (proc, queue, start) in list(running.items()):
            result = None
            if not queue.empty():
                result = queue.get()
            elif time.perf_counter() - start > COMPILE_LIMIT_S:
                proc.kill()
                result = {"error": f"compile did not finish in {COMPILE_LIMIT_S:.0f} s",
                          "seconds": round(time.perf_counter() - start, 1)}
            elif not proc.is_alive() and queue.empty():
                result = {"error": f"compiler process died (exit code {proc.exitcode})"}
            if result is None:
                continue
            proc.join(1)
            del running[key]
            results[key] = result
            done += 1
            if "error" not in result:
                cache[key] = result
                cache_file.write_text(json.dumps(cache, indent=0, sort_keys=True))
            if progress:
                print(f"[triton-compile-check] compiled {done}/{total} {jobs[key]['name']} "
                      f"{jobs[key]['dtype']} ({result.get('seconds', '?')} s)", file=sys.stderr,
                      flush=True)
    return results


def problems(job, result):
    """What is wrong with one compiled configuration (empty: nothing)."""
    if "error" in result:
        return [result["error"]]
    out = []
    if result["spill_stores"] or result["spill_loads"]:
        out.append(f"spills {result['spill_stores']} B stores / {result['spill_loads']} B loads")
    if result["shared"] > SM90_MAX_SHARED:
        out.append(f"shared memory {result['shared']} B > {SM90_MAX_SHARED} B")
    if result.get("seconds", 0) > COMPILE_LIMIT_S:
        out.append(f"compile took {result['seconds']} s > {COMPILE_LIMIT_S:.0f} s")
    return out


def _kernel(job):
    return f"{job['module'].rsplit('.', 1)[-1]}.{job['name']}"


def table(jobs, results):
    rows = ["| kernel | config | dtype | regs | spill B (st/ld) | stack B | smem B | compile s |",
            "|---|---|---|---|---|---|---|---|"]
    for key in sorted(jobs, key=lambda k: (_kernel(jobs[k]), jobs[k]["config"],
                                           jobs[k]["dtype"])):
        job, r = jobs[key], results[key]
        if "error" in r:
            rows.append(f"| {_kernel(job)} | {job['config']} | {job['dtype']} | "
                        f"error: {r['error'][:80]} | | | | {r.get('seconds', '')} |")
        else:
            rows.append(f"| {_kernel(job)} | {job['config']} | {job['dtype']} | {r['regs']} | "
                        f"{r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['shared']} "
                        f"| {r['seconds']} |")
    return "\n".join(rows)


def collect(model_dtypes=DTYPES, table_dtypes=DTYPES, one_per_group=False, ops=None):
    """The compile jobs of the models (in `model_dtypes`) and of the test tables (in
    `table_dtypes`; either may be empty). `one_per_group` keeps one integer specialisation per
    (kernel, constexprs, warps, stages, dtype): Triton's specialisations of integer arguments
    (== 1, multiple of 16) change alignment facts, not the kernel's tiles. `ops` keeps only the
    kernels of those op modules (e.g. ["pixel_context_attention"])."""
    jobs = {}
    if model_dtypes:
        jobs.update(compile_jobs(model_cases(), model_dtypes))
    if table_dtypes:
        jobs.update({k: v for k, v in compile_jobs(table_cases(), table_dtypes).items()
                     if k not in jobs})
    if ops:
        jobs = {k: j for k, j in jobs.items() if j["module"].rsplit(".", 1)[-1] in ops}
    if one_per_group:
        first = {}
        for key, job in jobs.items():
            first.setdefault((job["name"], job["config"], job["dtype"]), key)
        jobs = {key: jobs[key] for key in first.values()}
    return jobs


def failures(jobs, results):
    return [f"{_kernel(jobs[k])} [{jobs[k]['config']}] {jobs[k]['dtype']} "
            f"(e.g. {jobs[k]['example']}): {'; '.join(p)}"
            for k in jobs if (p := problems(jobs[k], results[k]))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dtypes", default=",".join(DTYPES),
                        help="dtypes of the models' configurations ('' for none)")
    parser.add_argument("--table-dtypes", default=",".join(DTYPES),
                        help="dtypes of the test tables' configurations ('' for none)")
    parser.add_argument("--one-per-group", action="store_true",
                        help="one integer specialisation per kernel configuration and dtype")
    parser.add_argument("--jobs", type=int, default=2, help="compilations at a time")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--ops", default="", help="only these ops' kernels (comma-separated)")
    parser.add_argument("--json", help="also write the jobs, results and failures here")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels Triton compiles")
    split = lambda text: [d for d in text.split(",") if d]  # noqa: E731
    jobs = collect(split(args.model_dtypes), split(args.table_dtypes), args.one_per_group,
                   split(args.ops))
    results = run_jobs(jobs, n_jobs=args.jobs, use_cache=not args.no_cache)
    failed = failures(jobs, results)
    if args.json:
        keep = ("name", "module", "config", "dtype", "example")
        Path(args.json).write_text(json.dumps(dict(
            triton=triton.__version__, failures=failed, results=results,
            jobs={k: {f: j[f] for f in keep} for k, j in jobs.items()}), indent=1))
    print(f"Triton {triton.__version__}, sm_{TARGET_ARCH}\n\n{table(jobs, results)}\n")
    for f in failed:
        print("FAIL", f)
    print(f"{len(failed)} failing configuration(s) of {len(jobs)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
