#!/usr/bin/env python3
"""Compile CUDA sources with nvcc and report what ptxas allocated to every kernel.

For each ``.cu`` file this runs one ``nvcc -c`` for the requested architectures (warnings are
errors, as in ``make cuda-check``) with ``-Xptxas -v``, keeps the PTX, and prints, per kernel of
the report architecture (sm_90 by default): registers per thread, spill stores and loads, stack
frame, static shared memory, whether it also uses dynamic shared memory, the block size and the
occupancy that block size gives. No GPU is needed.

The block size is the kernel's ``__launch_bounds__`` (the ``.maxntid`` of its PTX entry): every
kernel must declare one, which also tells ptxas how many registers it may use. The launchers use
that size (``kThreads`` in csrc/cuda/cuda_utils.cuh).

Occupancy is computed as CUDA's occupancy calculator does, from the architecture's limits
(``ARCH_LIMITS``): active blocks per SM are the least of the block limit, the warp limit, the
register limit (registers are allocated per warp, in units of 256, out of 64K) and the shared
memory limit (static shared memory plus the 1 KiB the runtime reserves per block, in 128-byte
units). Dynamic shared memory is sized at launch and is not included; such kernels are marked.

Exit status 1 when a file fails to compile, a kernel spills (any architecture), a kernel has no
``__launch_bounds__``, or its static shared memory exceeds the per-block limit.

Usage:
  tools/cuda_resources.py [--nvcc NVCC] [--arch 80 --arch 90] [--report-arch 90]
                          [--out-dir DIR] [--markdown FILE] [-I DIR ...] FILE.cu ...
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile


@dataclasses.dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources of one compute capability (CUDA C Programming Guide, table 21)."""

    regs_per_sm: int
    reg_unit: int  # registers are allocated per warp in multiples of this
    max_regs_per_thread: int
    warps_per_sm: int
    blocks_per_sm: int
    smem_per_sm: int
    smem_per_block: int  # with the opt-in above 48 KiB
    smem_reserved_per_block: int  # kept by the CUDA runtime for every resident block
    smem_unit: int


ARCH_LIMITS = {
    80: ArchLimits(65536, 256, 255, 64, 32, 164 * 1024, 163 * 1024, 1024, 128),
    90: ArchLimits(65536, 256, 255, 64, 32, 228 * 1024, 227 * 1024, 1024, 128),
}


@dataclasses.dataclass
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # active warps / maximum warps per SM
    limiter: str  # "regs", "smem", "warps" or "blocks"


def occupancy(regs: int, threads: int, smem: int, arch: int = 90) -> Occupancy:
    """Theoretical occupancy of a kernel using `regs` registers per thread and `smem` bytes of
    shared memory per block, launched with `threads` threads per block."""
    lim = ARCH_LIMITS[arch]
    if threads < 1 or threads > 1024:
        raise ValueError(f"threads: expected 1 to 1024, got {threads}")
    warps = math.ceil(threads / 32)
    limits = {"blocks": lim.blocks_per_sm, "warps": lim.warps_per_sm // warps}
    if regs > 0:
        regs_per_warp = math.ceil(regs * 32 / lim.reg_unit) * lim.reg_unit
        limits["regs"] = (lim.regs_per_sm // regs_per_warp) // warps
    smem_block = math.ceil((smem + lim.smem_reserved_per_block) / lim.smem_unit) * lim.smem_unit
    limits["smem"] = lim.smem_per_sm // smem_block
    # The first limiter in this order wins ties, so a kernel is blamed on registers or shared
    # memory only when they alone bound it.
    limiter = min(["warps", "blocks", "regs", "smem"], key=lambda k: limits.get(k, 1 << 30))
    blocks = limits[limiter]
    return Occupancy(blocks, blocks * warps, blocks * warps / lim.warps_per_sm, limiter)


@dataclasses.dataclass
class Kernel:
    file: str
    arch: int
    mangled: str
    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0
    dynamic_smem: bool = False
    threads: int | None = None  # .maxntid
    bounded: bool = True  # whether .maxntid was found
    name: str = ""

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str, file: str) -> list[Kernel]:
    """Kernels of `ptxas -v` output (as nvcc -Xptxas -v prints it)."""
    kernels: list[Kernel] = []
    current: Kernel | None = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = Kernel(file, int(m.group(2)), m.group(1))
            kernels.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current.regs = int(m.group(1))
            s = _SMEM.search(line)
            current.smem = int(s.group(1)) if s else 0
    return kernels


_PTX_ENTRY = re.compile(r"^(?:\.visible\s+|\.weak\s+)?\.entry\s+(\S+)\(", re.M)
_MAXNTID = re.compile(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)")
_EXTERN_SHARED = re.compile(r"^\.extern \.shared .*?\s(\w+)\[\];", re.M)


def parse_ptx(text: str) -> dict[str, tuple[int | None, bool]]:
    """Per PTX entry: (threads per block from .maxntid or None, uses extern shared memory)."""
    externs = _EXTERN_SHARED.findall(text)
    entries = list(_PTX_ENTRY.finditer(text))
    info = {}
    for i, m in enumerate(entries):
        body = text[m.end():entries[i + 1].start() if i + 1 < len(entries) else len(text)]
        header = body[:body.find("{")] if "{" in body else body
        t = _MAXNTID.search(header)
        threads = math.prod(int(v) for v in t.groups()) if t else None
        info[m.group(1)] = (threads, any(re.search(rf"\b{e}\b", body) for e in externs))
    return info


def demangle(names: list[str]) -> dict[str, str]:
    """Short readable kernel names: no namespaces, no parameter list."""
    filt = shutil.which("c++filt")
    out = names
    if filt and names:
        out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    short = {}
    for mangled, full in zip(names, out):
        s = re.sub(r"\(anonymous namespace\)::", "", full)
        depth, cut = 0, len(s)
        for i, ch in enumerate(s):  # drop the parameter list: the first '(' outside <>
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        s = s[:cut].removeprefix("void ")
        s = re.sub(r"\b\w+::", "", s)  # namespaces and nested names
        s = s.replace("__nv_bfloat16", "bf16").replace("__half", "half")
        short[mangled] = s
    return short


def compile_file(nvcc: str, path: str, archs: list[int], includes: list[str], out_dir: str,
                 extra: list[str]) -> tuple[list[Kernel], str]:
    """Compiles one .cu file; returns its kernels and the compiler's error output ("" if ok)."""
    base = os.path.splitext(os.path.basename(path))[0]
    keep = tempfile.mkdtemp(prefix=f"{base}-", dir=out_dir)
    cmd = [nvcc, "-c", "-std=c++17", "-O3", *[f"-I{d}" for d in includes]]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    cmd += ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror", "-Xptxas", "-v",
            "-keep", "-keep-dir", keep, *extra, "-o", os.path.join(out_dir, base + ".o"), path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            return [], proc.stdout + proc.stderr + f"\n[cuda-resources] failed: {' '.join(cmd)}"
        kernels = parse_ptxas(proc.stdout + proc.stderr, path)
        for a in archs:
            # nvcc names the PTX by architecture only when it compiles for several.
            ptx_path = os.path.join(keep, f"{base}.compute_{a}.ptx")
            if len(archs) == 1:
                ptx_path = os.path.join(keep, f"{base}.ptx")
            with open(ptx_path) as f:
                ptx = parse_ptx(f.read())
            for k in kernels:
                if k.arch == a and k.mangled in ptx:
                    k.threads, k.dynamic_smem = ptx[k.mangled]
        return kernels, ""
    finally:
        shutil.rmtree(keep, ignore_errors=True)


def problems(k: Kernel) -> list[str]:
    out = []
    if k.spills:
        out.append(f"spills {k.spill_stores} B stored / {k.spill_loads} B loaded per thread")
    if not k.bounded:
        out.append("no __launch_bounds__ (its block size is unknown to the compiler)")
    if k.smem > ARCH_LIMITS[k.arch].smem_per_block:
        out.append(f"{k.smem} B of static shared memory exceeds the per-block limit")
    return out


def table(kernels: list[Kernel], arch: int) -> list[str]:
    """Markdown rows for the kernels of `arch`."""
    rows = ["| file | kernel | regs | spill st/ld B | stack B | smem B | block | occupancy |",
            "|---|---|---|---|---|---|---|---|"]
    for k in kernels:
        if k.arch != arch:
            continue
        occ = ""
        if k.threads is not None:
            o = occupancy(k.regs, k.threads, k.smem, arch)
            occ = f"{o.fraction:.1%} ({o.limiter})"
        smem = f"{k.smem}{' + dyn' if k.dynamic_smem else ''}"
        rows.append(f"| {os.path.basename(k.file)} | {k.name} | {k.regs} | "
                    f"{k.spill_stores}/{k.spill_loads} | {k.stack} | {smem} | "
                    f"{k.threads or '?'} | {occ} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help=".cu files")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("--arch", type=int, action="append", choices=sorted(ARCH_LIMITS),
                    help="compute capability to compile for, repeatable (default: 80 and 90)")
    ap.add_argument("--report-arch", type=int, default=90, choices=sorted(ARCH_LIMITS))
    ap.add_argument("-I", dest="includes", action="append", default=None,
                    help="include directory (default: csrc)")
    ap.add_argument("--out-dir", default=None, help="where the objects go (default: a temp dir)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument("--assume-threads", type=int, default=None,
                    help="block size to report for kernels without __launch_bounds__ "
                         "(they still fail the check)")
    ap.add_argument("-X", dest="extra", action="append", default=[],
                    help="extra nvcc argument, repeatable")
    args = ap.parse_args(argv)
    archs = args.arch or [80, 90]
    if args.report_arch not in archs:
        ap.error(f"--report-arch {args.report_arch} is not among --arch {archs}")
    includes = args.includes if args.includes is not None else ["csrc"]
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="cuda-resources-")
    os.makedirs(out_dir, exist_ok=True)

    kernels: list[Kernel] = []
    failed = False
    for path in args.files:
        print(f"[cuda-check] {path}", flush=True)
        found, error = compile_file(args.nvcc, path, archs, includes, out_dir, args.extra)
        if error:
            print(error, file=sys.stderr)
            failed = True
        kernels += found
    for k in kernels:
        k.bounded = k.threads is not None
        if not k.bounded:
            k.threads = args.assume_threads
    names = demangle(sorted({k.mangled for k in kernels}))
    for k in kernels:
        k.name = names[k.mangled]
    kernels.sort(key=lambda k: (k.file, k.arch, k.name))

    rows = table(kernels, args.report_arch)
    print(f"[cuda-check] sm_{args.report_arch} resources per kernel "
          f"(occupancy at the __launch_bounds__ block size, static shared memory only):")
    print("\n".join(rows))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(rows) + "\n")
    for k in kernels:
        for p in problems(k):
            print(f"[cuda-check] error: sm_{k.arch} {os.path.basename(k.file)} {k.name}: {p}",
                  file=sys.stderr)
            failed = True
    print(f"[cuda-check] {len(args.files)} files, {len(kernels)} kernel builds "
          f"for sm_{', sm_'.join(map(str, archs))}: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
