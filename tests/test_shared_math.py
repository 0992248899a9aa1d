"""The csrc/common math the CUDA kernels use where no CPU kernel exercises it the same way:
pyramid_pool's O(1) bin-boundary test (the device builds its atom maps with it) and
gated_flow_fusion's separable low warp (the CUDA kernels' form of the 16 upsampled-warp taps),
each against an independent computation, compiled with g++ and run under ASan and UBSan."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")
def test_shared_math(tmp_path):
    exe = tmp_path / "shared_math_check"
    subprocess.run([CXX, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "native" / "shared_math_check.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
