"""Turn a pytest-benchmark JSON into a speedup table (one row per case) under benchmarks/results/.

    python benchmarks/make_table.py benchmarks/results/latest.json [more.json ...]

Several JSONs (runs of different benchmark files on one machine) make one table.

Speedup = baseline median / rtseg median. For CUDA rows with a known byte count, also the
achieved bandwidth and its share of the GPU's peak (the roofline of a memory-bound op).
"""
import json
import os
import platform
import re
import sys

import torch

# Peak DRAM bandwidth in GB/s, by a substring of torch.cuda.get_device_name().
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
             "A100-SXM4-80GB": 2039.0, "A100": 1555.0}


def peak_gbps(gpu_name):
    for key, value in PEAK_GBPS.items():
        if key in gpu_name:
            return value
    return None


def machine_name(benchmarks):
    gpus = {b["extra_info"].get("gpu") for b in benchmarks} - {None}
    if gpus:
        return sorted(gpus)[0]
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def build_rows(benchmarks):
    groups = {}
    for b in benchmarks:
        info = b["extra_info"]
        key = (info["op"], info["case"], info["device"], info["dtype"], info["pass_"])
        # CUDA: the L2-flushed CUDA-event median (bench_harness.py), else the wall clock
        median = info.get("cuda_median_s", b["stats"]["median"])
        groups.setdefault(key, {})[info["impl"]] = (median, info)
    rows = []
    for key, impls in sorted(groups.items()):
        if "rtseg" not in impls:
            continue
        t, info = impls["rtseg"]
        row = dict(zip(("op", "case", "device", "dtype", "pass"), key), rtseg_ms=t * 1e3)
        row["baselines"] = {name: (bt * 1e3, bt / t) for name, (bt, _) in impls.items()
                            if name != "rtseg"}
        if "bytes" in info and info["device"] == "cuda" and row["pass"] == "fwd":
            gbps = info["bytes"] / t / 1e9
            peak = peak_gbps(info.get("gpu", ""))
            row["gbps"] = gbps
            row["roofline"] = gbps / peak if peak else None
        if "flops" in info:
            row["tflops"] = info["flops"] / t / 1e12
        rows.append(row)
    return rows


def render(rows, machine):
    lines = [f"# rtseg_ops benchmarks on {machine}", "",
             f"torch {torch.__version__}; median times; speedup = baseline / rtseg.", "",
             "CUDA times are CUDA-event medians of single calls after an L2 flush; GB/s counts "
             "the bytes a forward must move; TFLOP/s the attention's matmuls.", "",
             "| op | case | device | dtype | pass | rtseg ms | baselines (ms, speedup) | GB/s | "
             "% of peak BW | TFLOP/s |", "|---|---|---|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        base = "; ".join(f"{n} {ms:.3f} ({s:.2f}x)" for n, (ms, s) in sorted(r["baselines"].items()))
        gbps = f"{r['gbps']:.0f}" if "gbps" in r else ""
        roof = f"{100 * r['roofline']:.0f}%" if r.get("roofline") else ""
        tflops = f"{r['tflops']:.1f}" if "tflops" in r else ""
        lines.append(f"| {r['op']} | {r['case']} | {r['device']} | {r['dtype']} | {r['pass']} | "
                     f"{r['rtseg_ms']:.3f} | {base} | {gbps} | {roof} | {tflops} |")
    return "\n".join(lines) + "\n"


def main(paths):
    benchmarks = []
    for path in paths:
        with open(path) as f:
            benchmarks += json.load(f)["benchmarks"]
    machine = machine_name(benchmarks)
    table = render(build_rows(benchmarks), machine)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", machine).strip("-").lower()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{slug}.md")
    with open(out, "w") as f:
        f.write(table)
    print(table)
    print(f"written to {os.path.relpath(out)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["benchmarks/results/latest.json"])
