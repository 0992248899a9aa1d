"""The CUDA simulator (tools/cuda_sim) in the tests: csrc/cuda's kernels and glue run on CPU tensors.

`build()` turns each csrc/cuda/*.cu into host C++ (only the launch syntax changes, see
`translate`) and compiles it with clang, AddressSanitizer, UBSan and load/store tracing into a
test-only extension, together with the real *_glue.cpp files (built with -DRTSEG_SIM, which
registers them as rtseg_sim::<op> CPU kernels). It runs in a worker process that has the ASan
runtime preloaded, so an out-of-bounds access kills the worker and its report (with the source
line) becomes the failing test's error; the test process itself stays uninstrumented.

`routed()` points the CPU kernels of torch.ops.rtseg.<op> at the worker for as long as it is
active: the public functions, autograd and the backward ops then run the CUDA path on CPU
tensors. Each call runs under two thread-schedule seeds; without atomics the outputs must be
bitwise equal, with them equal within a tolerance.
"""
import contextlib
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from multiprocessing.connection import Connection

import torch

import rtseg_ops  # noqa: F401  (registers the torch.ops.rtseg schemas the worker mirrors)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIM_DIR = os.path.join(ROOT, "tools", "cuda_sim")
BUILD_DIR = os.environ.get("RTSEG_SIM_BUILD_DIR", os.path.join(ROOT, "build", "cuda_sim"))
PLANTED = os.path.join(os.path.dirname(__file__), "planted.cu")
SEEDS = tuple(int(s) for s in os.environ.get("RTSEG_SIM_SEEDS", "1,2").split(","))
CLANG_VERSIONS = ("", "-19", "-18", "-17", "-16", "-15", "-14")
INSTALL_HINT = ("the CUDA simulator needs clang with its sanitizer runtimes: on Debian/Ubuntu "
                "`apt-get install clang libclang-rt-dev` (or clang-14 libclang-rt-14-dev), which "
                "`make sim-deps` (part of `make test`) does when run as root")


class SimulatorError(RuntimeError):
    """The simulated kernels failed: a sanitizer report, a race, a divergent barrier, ..."""


def cu_sources():
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def declared_kernels():
    """{"csrc/cuda/<file>.cu:<kernel>"} for every __global__ function in csrc/cuda."""
    found = set()
    for path in cu_sources():
        with open(path) as f:
            text = f.read()
        rel = os.path.relpath(path, ROOT)
        for m in re.finditer(r"__global__\b", text):
            head = _strip_launch_bounds(text[m.end():m.end() + 2000])
            name = re.match(r"\s*void\s+(\w+)\s*\(", head).group(1)
            found.add(f"{rel}:{name}")
    return found


def _strip_launch_bounds(text):
    """`text` without a leading `__launch_bounds__(...)` (whose arguments may nest)."""
    m = re.match(r"\s*void\s+__launch_bounds__\s*\(", text)
    if not m:
        return text
    depth, i = 1, m.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return " void " + text[i:]


def find_clang():
    """(clang++, ASan runtime, llvm-symbolizer or None); raises with an install hint."""
    override = os.environ.get("RTSEG_SIM_CXX")
    candidates = [override] if override else [f"clang++{v}" for v in CLANG_VERSIONS]
    for name in candidates:
        cxx = shutil.which(name)
        if cxx is None:
            continue
        rt = subprocess.run([cxx, "-print-file-name=libclang_rt.asan-x86_64.so"],
                            capture_output=True, text=True).stdout.strip()
        if os.path.isabs(rt) and os.path.exists(rt):
            version = name[len("clang++"):]
            symbolizer = shutil.which(f"llvm-symbolizer{version}") or shutil.which(
                "llvm-symbolizer")
            llvm_bin = os.path.join(os.path.dirname(os.path.realpath(cxx)), "llvm-symbolizer")
            if symbolizer is None and os.path.exists(llvm_bin):
                symbolizer = llvm_bin
            return cxx, rt, symbolizer
    raise SimulatorError(INSTALL_HINT)


_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;{}()]*>)?)<<<(.*?)>>>", re.S)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([^;]*?)\b(\w+)\s*\[\s*\]\s*;")


def translate(text, rel):
    """Host C++ of a .cu file, line for line; only what a launch configures changes:
    `k<<<config>>>(args)` becomes `::cuda_sim::launcher(k, "k", __FILE__, __LINE__,
    config)(args)`, and the dynamic shared memory `extern __shared__ T name[]` (sized by the
    launch) refers to a definition in the simulator's shared section, put at the start of the
    line that opens its kernel's declaration."""
    defined = set()
    lines_before = text.count("\n")
    for m in reversed(list(_EXTERN_SHARED.finditer(text))):
        type_, name = m.group(1).strip(), m.group(2)
        if name in defined:
            continue
        defined.add(name)
        glob_at = text.rfind("__global__", 0, m.start())
        line_start = text.rfind("\n", 0, glob_at) + 1
        prev_start = text.rfind("\n", 0, max(line_start - 1, 0)) + 1
        if text.startswith("template", prev_start) and line_start > 0:
            line_start = prev_start
        definition = (f"__shared__ {type_} {name}[::cuda_sim::kMaxSharedBytes]; "
                      f"static const bool cuda_sim_registered_{name} = "
                      f"::cuda_sim::register_dynamic_shared({name}); ")
        text = text[:line_start] + definition + text[line_start:]
    text = re.sub(r"extern(\s+)__shared__", r"extern\1CUDA_SIM_EXTERN_SHARED", text)
    text = _LAUNCH.sub(lambda m: f'::cuda_sim::launcher({m.group(1)}, "{m.group(1)}", __FILE__, '
                                 f'__LINE__, {m.group(2)})', text)
    assert text.count("\n") == lines_before
    return ("#define __CUDACC__ 1\n#define __CUDA_ARCH__ 900\n#include \"cuda_sim.h\"\n"
            f'#line 1 "{rel}"\n' + text)


def generate_sources():
    """Writes the translated .cu files into build/cuda_sim/gen (only when they change, so the
    extension's build cache holds); returns every source of the extension."""
    gen = os.path.join(BUILD_DIR, "gen")
    os.makedirs(gen, exist_ok=True)
    sources = []
    for path in cu_sources() + [PLANTED]:
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            out = translate(f.read(), rel)
        target = os.path.join(gen, os.path.basename(path) + ".cpp")
        if not os.path.exists(target) or open(target).read() != out:
            with open(target, "w") as f:
                f.write(out)
        sources.append(target)
    sources += sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_glue.cpp")))
    sources += [os.path.join(SIM_DIR, "runtime.cpp"), os.path.join(SIM_DIR, "bindings.cpp")]
    return sources


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=all"]


def build():
    """Compiles and imports the simulated extension (in the worker: it needs the ASan runtime
    preloaded). Cached in build/cuda_sim: later sessions only relink what changed."""
    from torch.utils import cpp_extension
    cxx, _, _ = find_clang()
    os.environ["CXX"] = cxx
    os.environ.setdefault("MAX_JOBS", "2")
    flags = ["-O1", "-g", "-std=c++17", "-fno-omit-frame-pointer", *SANITIZE,
             "-fsanitize-coverage=func,trace-loads,trace-stores", "-DRTSEG_SIM",
             f"-fdebug-prefix-map={BUILD_DIR}={ROOT}",
             f"-I{os.path.join(SIM_DIR, 'include')}", f"-I{SIM_DIR}",
             f"-I{os.path.join(ROOT, 'csrc')}", "-Wno-undefined-internal",
             "-Wno-unused-parameter", "-Wno-unused-variable"]
    sys.stderr.write("[cuda_sim] building the simulated kernels (the first build takes a few "
                     "minutes; later ones are cached in build/cuda_sim)\n")
    return cpp_extension.load("rtseg_cuda_sim", generate_sources(), extra_cflags=flags,
                              extra_ldflags=["-shared-libasan", *SANITIZE],
                              build_directory=BUILD_DIR, verbose=False)


# ---- tensors between the processes, with their exact storage, offset and strides ----

def pack(obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        storage = t.untyped_storage()
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
        return ("__tensor__", str(t.dtype).replace("torch.", ""), raw.numpy().tobytes(),
                t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack(o) for o in obj)
    return obj


def unpack(obj):
    if isinstance(obj, tuple) and len(obj) == 6 and obj[0] == "__tensor__":
        _, dtype, data, offset, shape, stride = obj
        storage = torch.empty(len(data), dtype=torch.uint8)  # exactly the storage's size
        if data:
            storage.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return torch.empty(0, dtype=getattr(torch, dtype)).set_(
            storage.untyped_storage(), offset, shape, stride)
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack(o) for o in obj)
    return obj


# ---- the worker, seen from the test process ----

class Worker:
    """The sanitized worker process; started on first use and again after a crash."""

    def __init__(self):
        self.proc = None
        self.conn = None
        self.log_path = None
        self.ops = ()
        self.launches = {}  # file:kernel -> launches, over every worker of the session

    def _start(self):
        _, asan_rt, symbolizer = find_clang()
        parent, child = socket.socketpair()
        os.makedirs(BUILD_DIR, exist_ok=True)
        self.log_path = os.path.join(BUILD_DIR, f"worker-{os.getpid()}.log")
        env = dict(os.environ, LD_PRELOAD=asan_rt, PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(__file__)), ROOT, os.environ.get("PYTHONPATH", "")]),
            # every allocation filled with 0xbe bytes: outputs or workspaces a kernel leaves
            # unwritten read as garbage, not as the zeros fresh pages would give
            ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:"
                         "quarantine_size_mb=64:handle_segv=1:print_summary=1:"
                         "max_malloc_fill_size=1073741824:malloc_fill_byte=190",
            UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
        if symbolizer:
            env["ASAN_SYMBOLIZER_PATH"] = symbolizer
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.join(os.path.dirname(__file__), "worker.py"),
                 str(child.fileno())], pass_fds=(child.fileno(),), env=env, stdout=log,
                stderr=subprocess.STDOUT)
        child.close()
        self.conn = Connection(parent.detach())
        schemas = [(name, str(getattr(torch.ops.rtseg, name).default._schema))
                   for name in rtseg_op_names()]
        self.ops = tuple(self._request(("init", schemas)))

    def _crash_report(self):
        """The dead worker's sanitizer report (or the end of its log); the next call starts a
        new worker."""
        code = self.proc.wait()
        with open(self.log_path, errors="replace") as f:
            log = f.read()
        self.proc = self.conn = None
        m = re.search(r"^.*(==\d+==ERROR|runtime error:)", log, re.M)
        start = m.start() if m else max(0, len(log) - 6000)
        return f"the simulator's worker died (exit {code}):\n{log[start:start + 12000]}"

    def _request(self, message):
        try:
            self.conn.send(message)
            status, payload, launches = self.conn.recv()
        except (EOFError, OSError):
            raise SimulatorError(self._crash_report()) from None
        for key, n in launches.items():
            self.launches[key] = self.launches.get(key, 0) + n
        if status == "ok":
            return payload
        kind, text = payload
        raise (SimulatorError if kind == "SimulatorError" else RuntimeError)(text)

    def call(self, message):
        if self.proc is None:
            self._start()
        return self._request(message)

    def close(self):
        if self.proc is not None:
            self.conn.close()
            self.proc.wait()
            self.proc = None


WORKER = Worker()


def write_launch_counts():
    """build/cuda_sim/launches.json: this session's launches per csrc/cuda kernel (0: never)."""
    counts = {k: WORKER.launches.get(k, 0) for k in sorted(declared_kernels())}
    if any(counts.values()):
        with open(os.path.join(BUILD_DIR, "launches.json"), "w") as f:
            json.dump(counts, f, indent=1)


def rtseg_op_names():
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("rtseg::"))


def call(op, *args):
    """torch.ops.rtseg_sim.<op>(*args) in the worker, under every seed of SEEDS and this
    process's deterministic-algorithms setting."""
    return unpack(WORKER.call(("call", op, pack(args), SEEDS,
                               torch.are_deterministic_algorithms_enabled())))


def launch_planted(which, data):
    """Runs tests/cuda_sim/planted.cu's kernel `which` on the float32 tensor `data`; returns
    the data afterwards."""
    return unpack(WORKER.call(("planted", which, pack(data))))


def simulated_ops():
    if WORKER.proc is None:
        WORKER.call(("ping",))
    return WORKER.ops


@contextlib.contextmanager
def routed():
    """While active, torch.ops.rtseg.<op> on CPU tensors runs the simulated CUDA kernels (for
    every op with CUDA C++ glue), and the public functions accept the CUDA dtypes on the CPU.
    Leaving restores the C++ CPU kernels."""
    from rtseg_ops import _checks
    lib = torch.library.Library("rtseg", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": the point
        warnings.simplefilter("ignore", UserWarning)
        for op in simulated_ops():
            lib.impl(op, (lambda name: lambda *args: call(name, *args))(op), "CPU")
    cpu_dtypes = _checks.SUPPORTED_DTYPES["cpu"]
    _checks.SUPPORTED_DTYPES["cpu"] = _checks.SUPPORTED_DTYPES["cuda"]
    try:
        yield
    finally:
        _checks.SUPPORTED_DTYPES["cpu"] = cpu_dtypes
        lib._destroy()
