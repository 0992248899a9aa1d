"""tools/gpu_check.py (`make gpu-check`) and tools/gpu_sanitizer_cases.py on a machine without a
GPU: the refusal, the dry run's listing, and the sanitizer cases themselves on the CPU kernels."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_at_once_without_cuda(tmp_path):
    out = _run("tools/gpu_check.py", "--results", str(tmp_path))
    assert out.returncode != 0
    assert "needs a CUDA GPU and a CUDA build of torch" in out.stderr
    assert "Nothing was run" in out.stderr and "DRY_RUN=1" in out.stderr
    assert not os.listdir(tmp_path)


def test_dry_run_lists_sanitizer_cases_and_model_runs(tmp_path):
    out = _run("tools/gpu_check.py", "--dry-run", "--phases", "sanitizer models",
               "--results", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dry run passed" in out.stdout
    cases = (tmp_path / "dry-run-sanitizer-memcheck.txt").read_text().split()
    ops = {c.split("/")[0] for c in cases}
    assert len(ops) == 7 and len(cases) == 7 * 3 * 2 * 2  # ops x dtypes x layouts x modes
    assert out.stdout.count("rtseg_models.benchmark --model") == 8  # 4 models x 2 layouts


def test_dry_run_rejects_unknown_phase():
    out = _run("tools/gpu_check.py", "--dry-run", "--phases", "tests,typo")
    assert out.returncode != 0 and "unknown phase" in out.stderr


def test_sanitizer_cases_run_on_the_cpu_kernels():
    """The same cases the sanitizer phase launches on CUDA, run here on the CPU kernels and
    compared with the reference: they build valid inputs for every op, layout and mode."""
    out = _run("tools/gpu_sanitizer_cases.py", "--device", "cpu")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count(" ok (") == 7 * 2 * 2 * 2  # ops x (float32, float64) x layouts x modes
