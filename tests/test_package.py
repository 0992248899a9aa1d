"""The package as a user installs it: metadata, the wheel, build isolation, optional packages,
backend_table, and the options a timm user types."""
import os
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest
import torch

import rtseg_models
import rtseg_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_matches_the_metadata():
    assert re.fullmatch(r"\d+\.\d+\.\d+", rtseg_ops.__version__)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert set(project["optional-dependencies"]) >= {"export", "train"}
    assert {"onnx", "onnxscript", "onnxruntime"} <= {
        re.split(r"[<>=!~ ]", r)[0] for r in project["optional-dependencies"]["export"]}
    assert os.path.exists(os.path.join(ROOT, "LICENSE"))
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert rtseg_ops.__version__ in f.read()


def test_backend_table_tells_the_truth():
    rows = rtseg_ops.backend_table()
    assert {r["op"] for r in rows} >= {"grouped_flow_warp", "spatial_aware_pool"}
    level = rtseg_ops.cpu_simd_level()
    assert level.split(" ")[0] in ("AVX-512", "AVX2", "baseline")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split())
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512cd"} <= flags:
        assert level.startswith("AVX-512")
    for row in rows:
        if row["cpu"] == "C++":
            assert row["cpu_isa"] == level
        if torch.version.cuda is None:
            assert row["cuda"] == "none (CPU-only torch)"


def test_isolated_build_stops_with_the_reason(tmp_path):
    """setup.py without an importable torch (what pip's build isolation gives it)."""
    env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
    code = textwrap.dedent(f"""
        import builtins, runpy, sys
        real_import = builtins.__import__
        def no_torch(name, *args, **kwargs):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("No module named 'torch'")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = no_torch
        sys.argv = ["setup.py", "--version"]
        runpy.run_path({os.path.join(ROOT, "setup.py")!r}, run_name="__main__")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "pip install --no-build-isolation ." in result.stderr
    assert "ABI" in result.stderr and "No module named 'torch'" not in result.stderr


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    """pip wheel --no-build-isolation . builds the extension (it reuses the objects of an
    earlier `setup.py build_ext --inplace`, which `make build` runs, so here it only links);
    the wheel goes into a fresh venv that sees this torch through a .pth file."""
    wheels = tmp_path / "wheels"
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 1))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "--no-deps", "-w", str(wheels), ROOT], check=True, env=env, timeout=3000)
    wheel, = wheels.glob("rtseg-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # no PYTHONPATH: pip would take the source tree's rtseg.egg-info for an installed rtseg
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=600, env=clean)
    # only now: pip must not see (and skip for, or uninstall) an rtseg installed beside torch
    torch_site = os.path.dirname(os.path.dirname(torch.__file__))
    with open(os.path.join(site, "same_torch.pth"), "w") as f:
        f.write(torch_site + "\n")
    check = textwrap.dedent("""
        import torch, rtseg_ops, rtseg_models
        assert rtseg_ops.__file__.startswith(sys.argv[1]), rtseg_ops.__file__
        assert rtseg_ops.extension_loaded()
        x, flow = torch.randn(1, 4, 6, 7), torch.randn(1, 4, 6, 7)
        y = torch.ops.rtseg.grouped_flow_warp(x, flow, 2, "zeros", True)
        torch.testing.assert_close(y, rtseg_ops.reference.grouped_flow_warp(x, flow, 2))
        print(rtseg_ops.__version__, "ok")
    """)
    result = subprocess.run([python, "-c", "import sys\n" + check, site], cwd=str(tmp_path),
                            env=clean, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{rtseg_ops.__version__} ok"


def test_export_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    model = rtseg_models.create_model("fbsnet")
    with pytest.raises(ImportError, match=r"pip install 'rtseg\[export\]'"):
        rtseg_models.export_onnx(model, "unused.onnx", (1, 3, 32, 32))


@pytest.mark.parametrize("name", rtseg_models.list_models())
def test_timm_style_options_get_clear_errors(name):
    with pytest.raises(TypeError, match="pretrained: expected None or the path"):
        rtseg_models.create_model(name, pretrained=True)
    with pytest.raises(ValueError, match="num_classes: expected an integer >= 1"):
        rtseg_models.create_model(name, num_classes=0)


def test_every_model_takes_pretrained_as_a_path(tmp_path):
    for name in rtseg_models.list_models():
        assert rtseg_models.create_model(name, pretrained=None) is not None
    model = rtseg_models.create_model("fbsnet", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "fbsnet.pth")
    loaded = rtseg_models.create_model("fbsnet", num_classes=3, pretrained=tmp_path / "fbsnet.pth")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_warp_size_argument():
    x, flow = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(rtseg_ops.grouped_flow_warp(x, flow, size=8),
                               rtseg_ops.grouped_flow_warp(x, flow, size=(8, 8)))
    for bad in ("8", (8,), (8, 0), 8.0, True):
        with pytest.raises(ValueError, match="size: expected None, a positive int or an"):
            rtseg_ops.grouped_flow_warp(x, flow, size=bad)
