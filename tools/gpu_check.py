"""`make gpu-check`: build, test, sanitize and benchmark every CUDA kernel on this machine's GPU
in one call (target: 8 minutes on an H100/H200 with 16 cores), never touching a package index.

    python tools/gpu_check.py [--phases build,tests,sanitizer,bench,models] [--results DIR]
                              [--budget SECONDS] [--dry-run]

Phases, in order (each prints its time; --phases reruns a subset, e.g. only what failed):
  build      setup.py build_ext --inplace for the visible GPUs' architectures only, all cores
  tests      every CUDA test (pytest -k "gpu or triton": the gpu-marked tests and the Triton
             kernels' tests), in parallel with pytest-xdist when it is installed; JUnit XML
  sanitizer  compute-sanitizer memcheck and racecheck over tools/gpu_sanitizer_cases.py
  bench      the benchmarks marked gpu_check (pytest-benchmark JSON, speedup table)
  models     python -m rtseg_models.benchmark per model at its paper resolution, fp16, batch 1
Everything lands in one results folder (default benchmarks/results/<gpu-name>/): summary.md
(GPU, driver, torch, CUDA, phase times and results), the logs, tests.xml, bench.json, bench.md,
models.md. --dry-run needs no GPU: it lists what each phase would run.
"""
import argparse
import datetime
import glob
import json
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("build", "tests", "sanitizer", "bench", "models")
# A phase may use at most this many seconds, and at most what the budget leaves after keeping
# RESERVE_S for each later phase.
PHASE_CAP_S = {"build": 240, "tests": 240, "sanitizer": 150, "bench": 180, "models": 120}
RESERVE_S = 25
TEST_SELECTION = ["-k", "gpu or triton"]
BENCH_SELECTION = ["-m", "gpu_check"]
SANITIZER_TOOLS = {"memcheck": [], "racecheck": ["--dtypes", "float32"]}
# model -> paper resolution (H, W)
MODELS = {"csfcn": (1024, 2048), "msfnet": (1024, 2048), "sgcpnet": (1024, 2048),
          "fbsnet": (512, 1024)}


def say(msg):
    print(f"[gpu-check] {msg}", flush=True)


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# ---------------------------------------------------------------- environment

def gpu_info():
    """What the summary's header table shows; no CUDA needed."""
    import torch
    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "torch CUDA": torch.version.cuda or "none (CPU build)",
            "CUDA available": torch.cuda.is_available()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as exc:  # a broken triton is worth reporting, not fatal here
        info["triton"] = f"not importable ({exc.__class__.__name__})"
    if torch.cuda.is_available():
        info["GPUs"] = []
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            memory = torch.cuda.get_device_properties(i).total_memory / 2**30
            info["GPUs"].append(f"{torch.cuda.get_device_name(i)} (sm_{major}{minor}, "
                                f"{memory:.0f} GiB)")
        info["GPU"] = torch.cuda.get_device_name(0)
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and \
            out.stdout.strip() else "unknown"
    nvcc = find_tool("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
        info["nvcc"] = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else nvcc
    info["cores"] = os.cpu_count()
    return info


def cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    # the nvcc on PATH may be a wrapper script: trust only a folder that has the headers
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(p)))
                  for p in filter(None, [shutil.which("nvcc")])] + ["/usr/local/cuda"]
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


def find_tool(name):
    home = cuda_home()
    return shutil.which(name) or (home and shutil.which(name, path=os.path.join(home, "bin")))


def build_env(dry_run=False):
    """Environment of the build: this GPU's architectures only and every core. setup.py finds
    the CUDA library headers torch's CUDA headers include (cusparse.h, cuBLAS) by itself."""
    import torch
    env = dict(os.environ)
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i)
                       for i in range(torch.cuda.device_count())})
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
    elif dry_run:
        env["TORCH_CUDA_ARCH_LIST"] = "<compute capability of each visible GPU, e.g. 9.0>"
    env["MAX_JOBS"] = str(os.cpu_count() or 1)
    home = cuda_home()
    if home:
        env["CUDA_HOME"] = home
    return env


# ---------------------------------------------------------------- running commands

def run(cmd, log, timeout, env=None, echo_tail=15):
    """Run `cmd` (output to `log`), within `timeout` seconds (SIGINT, then SIGKILL 20 s later, so
    pytest still writes its reports). Returns (status, seconds)."""
    say("$ " + shlex.join(cmd))
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1, timeout))
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            status = f"timed out after {timeout:.0f}s"
    with open(log) as f:
        tail = f.readlines()[-echo_tail:]
    if status != "ok" and tail:
        print("".join("    " + line for line in tail), end="", flush=True)
    return status, time.time() - start


def test_env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the real GPU kernels, not the interpreter
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic-mode tests use cuBLAS
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "2")  # per xdist worker
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def xdist_workers():
    import importlib.util
    if importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]


# ---------------------------------------------------------------- phases

def phase_build(ctx, timeout):
    env = build_env()
    for key in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "CUDA_HOME"):
        say(f"  {key}={env.get(key, '')}")
    status, secs = run([sys.executable, "setup.py", "build_ext", "--inplace"],
                       os.path.join(ctx.results, "build.log"), timeout, env)
    ninja = glob.glob(os.path.join(ROOT, "build", "temp*", ".ninja_log"))
    if ninja:
        shutil.copy(ninja[0], os.path.join(ctx.results, "ninja_log.txt"))
    if status != "ok":
        return status, secs
    return probe_extension(ctx), secs


def probe_extension(ctx):
    """"ok" when the built extension imports and every op has a CUDA kernel; backend_table.json
    records the table."""
    probe = ("import json, rtseg_ops; assert rtseg_ops.extension_loaded(), "
             "rtseg_ops._backend.EXTENSION_ERROR; print(json.dumps(rtseg_ops.backend_table()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=test_env(),
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:])
        return "failed (the extension does not import)"
    table = json.loads(out.stdout.strip().splitlines()[-1])
    with open(os.path.join(ctx.results, "backend_table.json"), "w") as f:
        json.dump(table, f, indent=1)
    missing = [r["op"] for r in table if r["cuda"] == "reference"]
    if missing:
        return f"failed (no CUDA kernel for {', '.join(missing)})"
    return "ok"


def phase_tests(ctx, timeout):
    cmd = [sys.executable, "-m", "pytest", "tests", *TEST_SELECTION, "-q", "-ra",
           "-p", "no:cacheprovider", f"--junitxml={os.path.join(ctx.results, 'tests.xml')}",
           *xdist_workers()]
    status, secs = run(cmd, os.path.join(ctx.results, "tests.log"), timeout, test_env())
    ctx.notes["tests"] = last_line(os.path.join(ctx.results, "tests.log"))
    return status, secs


def phase_sanitizer(ctx, timeout):
    sanitizer = find_tool("compute-sanitizer")
    if not sanitizer:
        return "failed (compute-sanitizer not found; set CUDA_HOME)", 0.0
    env = test_env()
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # the caching allocator would hide overruns
    statuses, total = [], 0.0
    for i, (tool, extra) in enumerate(SANITIZER_TOOLS.items()):
        share = (timeout - total) / (len(SANITIZER_TOOLS) - i)
        cmd = [sanitizer, "--tool", tool, "--error-exitcode", "1",
               "--target-processes", "application-only", sys.executable,
               "tools/gpu_sanitizer_cases.py", *extra]
        status, secs = run(cmd, os.path.join(ctx.results, f"sanitizer-{tool}.log"), share, env)
        total += secs
        statuses.append(f"{tool} {status}")
        ctx.notes[f"sanitizer {tool}"] = last_line(os.path.join(ctx.results,
                                                                f"sanitizer-{tool}.log"))
    ok = all(s.endswith(" ok") for s in statuses)
    return ("ok" if ok else "failed: " + "; ".join(statuses)), total


def phase_bench(ctx, timeout):
    json_path = os.path.join(ctx.results, "bench.json")
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", *BENCH_SELECTION,
           "-q", "-p", "no:cacheprovider", f"--benchmark-json={json_path}"]
    status, secs = run(cmd, os.path.join(ctx.results, "bench.log"), timeout, test_env())
    if os.path.exists(json_path):
        out = subprocess.run([sys.executable, "benchmarks/make_table.py", json_path], cwd=ROOT,
                             capture_output=True, text=True)
        with open(os.path.join(ctx.results, "bench.md"), "w") as f:
            f.write(out.stdout)
        ctx.notes["bench table"] = out.stdout.strip().splitlines()[-1] if out.stdout else \
            out.stderr[-300:]
    return status, secs


def model_commands(results):
    cmds = []
    for name, (h, w) in MODELS.items():
        for layout in ("nchw", "channels_last"):
            cmd = [sys.executable, "-m", "rtseg_models.benchmark", "--model", name,
                   "--size", f"{h}x{w}", "--batch", "1", "--dtype", "fp16", "--device", "cuda",
                   "--json", os.path.join(results, "models", f"{name}-{layout}.json")]
            cmds.append(cmd + (["--channels-last"] if layout == "channels_last" else []))
    return cmds


def models_cli_present():
    import importlib.util
    sys.path.insert(0, ROOT)
    try:
        return importlib.util.find_spec("rtseg_models.benchmark") is not None
    finally:
        sys.path.remove(ROOT)


def phase_models(ctx, timeout):
    if not models_cli_present():
        msg = "skipped: rtseg_models.benchmark is not in this checkout (no per-model table)"
        say(msg)
        return msg, 0.0
    os.makedirs(os.path.join(ctx.results, "models"), exist_ok=True)
    start, statuses, tables = time.time(), [], []
    for cmd in model_commands(ctx.results):
        left = timeout - (time.time() - start)
        label = os.path.basename(cmd[cmd.index("--json") + 1])[:-5]
        if left < 5:
            statuses.append(f"{label} not run (phase time used up)")
            continue
        log = os.path.join(ctx.results, "models", f"{label}.log")
        status, _ = run(cmd, log, left, test_env())
        if status != "ok":
            statuses.append(f"{label} {status}")
        with open(log) as f:
            tables.append(f"### {label}\n\n{f.read()}\n")
    with open(os.path.join(ctx.results, "models.md"), "w") as f:
        f.write("\n".join(tables))
    return ("ok" if not statuses else "failed: " + "; ".join(statuses)), time.time() - start


RUNNERS = {"build": phase_build, "tests": phase_tests, "sanitizer": phase_sanitizer,
           "bench": phase_bench, "models": phase_models}


# ---------------------------------------------------------------- dry run

def dry_collect(ctx, phase, args, command):
    """Collect what `phase` would run as a GPU machine would (RTSEG_COLLECT_CUDA=1), list it in
    dry-run-<phase>.txt and say how many per file. True when something was collected."""
    env = dict(test_env(), RTSEG_COLLECT_CUDA="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    write_list(ctx, f"dry-run-{phase}.txt", ids)
    say(f"{phase}: {command}: {len(ids)} items ({last_line_of(out.stdout)}); per file: "
        f"{per_file(ids)}")
    return out.returncode == 0 and len(ids) > 0


def per_file(ids):
    counts = {}
    for i in ids:
        counts[i.split("::")[0]] = counts.get(i.split("::")[0], 0) + 1
    return ", ".join(f"{os.path.basename(k)} {v}" for k, v in sorted(counts.items()))


def dry_run(ctx, phases):
    """What each phase would run, with the CUDA tests and benchmarks collected as on a GPU
    (RTSEG_COLLECT_CUDA=1); nothing is built or timed."""
    ok = True
    say(f"dry run: phases {', '.join(phases)}; results would go to {ctx.results}")
    if "build" in phases:
        env = build_env(dry_run=True)
        say("build: " + " ".join(f"{k}={env.get(k, '')}" for k in
                                 ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "CUDA_HOME")))
        say(f"build: {sys.executable} setup.py build_ext --inplace; then import rtseg_ops "
            "and require a CUDA kernel for every op in backend_table()")
    if "tests" in phases:
        ok &= dry_collect(ctx, "tests", ["tests", *TEST_SELECTION], "pytest tests " +
                          shlex.join(TEST_SELECTION + xdist_workers()))
    if "sanitizer" in phases:
        for tool, extra in SANITIZER_TOOLS.items():
            out = subprocess.run([sys.executable, "tools/gpu_sanitizer_cases.py", "--list",
                                  *extra], cwd=ROOT, env=test_env(), capture_output=True,
                                 text=True)
            cases = out.stdout.split()
            write_list(ctx, f"dry-run-sanitizer-{tool}.txt", cases)
            say(f"sanitizer: compute-sanitizer --tool {tool} ... gpu_sanitizer_cases.py "
                f"{' '.join(extra)}: {len(cases)} cases (forward + backward each)"
                f"{'' if find_tool('compute-sanitizer') else '; compute-sanitizer not found here'}")
            ok &= out.returncode == 0 and len(cases) > 0
    if "bench" in phases:
        ok &= dry_collect(ctx, "bench", ["benchmarks", *BENCH_SELECTION],
                          "pytest benchmarks --benchmark-only " + shlex.join(BENCH_SELECTION))
    if "models" in phases:
        present = models_cli_present()
        for cmd in model_commands(ctx.results):
            say("models: " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                                      for c in cmd[1:]))
        if not present:
            say("models: rtseg_models.benchmark is not in this checkout: the phase would say "
                "so and skip")
    say(f"dry run {'passed' if ok else 'FAILED'}; lists in {ctx.results}")
    return 0 if ok else 1


def write_list(ctx, name, items):
    with open(os.path.join(ctx.results, name), "w") as f:
        f.write("\n".join(items) + "\n")


def last_line_of(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else ""


def last_line(path):
    try:
        with open(path) as f:
            return last_line_of(f.read())
    except OSError:
        return ""


# ---------------------------------------------------------------- summary

def write_summary(ctx, info):
    """summary.md from timing.json, which accumulates over reruns of single phases."""
    path = os.path.join(ctx.results, "timing.json")
    lines = [f"# gpu-check on {info.get('GPU', 'no GPU')}", "",
             "| | |", "|---|---|"]
    for key in ("GPU", "GPUs", "driver", "torch", "torch CUDA", "nvcc", "triton", "python",
                "cores"):
        if key in info:
            value = "; ".join(info[key]) if isinstance(info[key], list) else info[key]
            lines.append(f"| {key} | {value} |")
    with open(path) as f:
        phases = json.load(f)
    lines += ["", "| phase | result | seconds | when (UTC) |", "|---|---|---:|---|"]
    for name in PHASES:
        if name in phases:
            p = phases[name]
            lines.append(f"| {name} | {p['status']} | {p['seconds']:.0f} | {p['when']} |")
    total = sum(p["seconds"] for p in phases.values())
    lines += ["", f"Total of the phases above: {total:.0f} s.", ""]
    for name, p in phases.items():
        for key, note in p.get("notes", {}).items():
            lines.append(f"- {key}: {note}")
    for extra in ("bench.md", "models.md"):
        if os.path.exists(os.path.join(ctx.results, extra)):
            lines.append(f"- see {extra}")
    with open(os.path.join(ctx.results, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


class Context:
    def __init__(self, results):
        self.results = results
        self.notes = {}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma- or space-separated subset of {','.join(PHASES)}")
    parser.add_argument("--results", default="", help="results folder")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for all phases together (default 480)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    phases = [p for p in re.split(r"[,\s]+", args.phases) if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        sys.exit(f"gpu-check: unknown phase(s) {unknown}; expected some of {list(PHASES)}")
    phases = [p for p in PHASES if p in phases]
    import torch

    if args.dry_run:
        ctx = Context(args.results or os.path.join(ROOT, "build", "gpu-check-dry-run"))
        os.makedirs(ctx.results, exist_ok=True)
        return dry_run(ctx, phases)
    if torch.version.cuda is None or not torch.cuda.is_available():
        sys.exit(f"gpu-check needs a CUDA GPU and a CUDA build of torch; here torch "
                 f"{torch.__version__} has CUDA {torch.version.cuda} and "
                 f"torch.cuda.is_available() is {torch.cuda.is_available()}. Nothing was run. "
                 f"`make gpu-check DRY_RUN=1` lists what it would run.")
    info = gpu_info()
    ctx = Context(args.results or os.path.join(ROOT, "benchmarks", "results", slug(info["GPU"])))
    os.makedirs(ctx.results, exist_ok=True)
    with open(os.path.join(ctx.results, "env.json"), "w") as f:
        json.dump(info, f, indent=1)
    timing_path = os.path.join(ctx.results, "timing.json")
    timing = {}
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
    start, failed = time.time(), []
    if "build" not in phases:
        status = probe_extension(ctx)
        if status != "ok":
            sys.exit(f"gpu-check: the extension in this checkout is not usable on CUDA: {status}; "
                     "run the build phase first")
    for i, name in enumerate(phases):
        left = args.budget - (time.time() - start) - RESERVE_S * (len(phases) - i - 1)
        timeout = max(30.0, min(PHASE_CAP_S[name], left))
        say(f"{name}: start (at most {timeout:.0f}s)")
        ctx.notes = {}
        status, secs = RUNNERS[name](ctx, timeout)
        say(f"{name}: {status} in {secs:.0f}s")
        timing[name] = dict(status=status, seconds=secs, notes=ctx.notes,
                            when=datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"))
        with open(timing_path, "w") as f:
            json.dump(timing, f, indent=1)
        if status != "ok" and not status.startswith("skipped"):
            failed.append(name)
            if name == "build":
                say("the build failed: later phases would test a stale extension; stopping")
                break
    write_summary(ctx, info)
    say(f"total {time.time() - start:.0f}s; results in {os.path.relpath(ctx.results, ROOT)}"
        f"/summary.md")
    if failed:
        names = " ".join(failed)
        say(f"failed: {names}; rerun them with make gpu-check PHASES=\"{names}\"")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
