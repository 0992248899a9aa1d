"""Build rtseg_ops._C: CPU kernels always, CUDA kernels when torch and nvcc allow it.

Environment switches:
  RTSEG_NO_EXT=1          build no extension; rtseg_ops then runs on the PyTorch references.
  FORCE_CUDA=1            build the CUDA kernels even when torch.cuda.is_available() is False
                          (needs a CUDA build of torch: the glue includes torch's CUDA headers).
  TORCH_CUDA_ARCH_LIST    GPU targets, default "8.0;9.0+PTX".
  CUDA_HOME               the CUDA toolkit; by default the one holding the nvcc on PATH (symlinks
                          followed), else /usr/local/cuda or the newest /usr/local/cuda-*.
The CUDA library headers torch's CUDA headers include (cusparse.h, cublas_v2.h) are taken from
CUDA_HOME/include or, where the toolkit lacks them, from the nvidia-* pip packages installed with
a CUDA build of torch (site-packages/nvidia/*/include).

Build against the torch already installed: `pip install --no-build-isolation .` (see
_require_torch). Metadata other than the version and dependencies is in pyproject.toml.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"[rtseg setup] {msg}", flush=True)


def _find_cuda_home():
    """The toolkit folder: torch guesses the folder above `which nvcc`, which is wrong where nvcc
    is a wrapper script (such as /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
                os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _cuda_library_includes(cuda_home):
    """Folders with the CUDA library headers torch's CUDA headers include, when the toolkit at
    `cuda_home` lacks them: those of the nvidia-* pip packages."""
    if os.path.exists(os.path.join(cuda_home or "", "include", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package of the nvidia-* wheels torch depends on
    except ImportError:
        return []
    folders = [d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include"))]
    return sorted(d for d in folders if os.path.exists(os.path.join(d, "cusparse.h")))


def _cuda_decision(torch):
    """(build_cuda, reason)."""
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if torch.version.cuda is None:
            raise RuntimeError(
                "FORCE_CUDA=1 but this torch is a CPU-only build (torch.version.cuda is None): the "
                "CUDA glue needs torch's CUDA headers. Install a CUDA build of torch, or unset "
                "FORCE_CUDA (`make cuda-check` compiles the .cu kernels without torch).")
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None or shutil.which("nvcc") is None and not os.path.exists(
            os.path.join(CUDA_HOME, "bin", "nvcc")):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, f"torch {torch.__version__} has CUDA {torch.version.cuda} and nvcc was found"


def _extensions():
    if os.environ.get("RTSEG_NO_EXT", "0") == "1":
        _say("RTSEG_NO_EXT=1: building no extension; every op runs on its PyTorch reference")
        return [], {}
    import torch
    if torch.version.cuda is not None and _find_cuda_home():
        # Before torch.utils.cpp_extension reads it, at import.
        os.environ.setdefault("CUDA_HOME", _find_cuda_home())
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    build_cuda, reason = _cuda_decision(torch)
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp")) + \
        sorted(glob.glob("csrc/autograd/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc")]
    # -fopenmp: at::parallel_for is an inline OpenMP region; without it the kernels run serially.
    # -fno-trapping-math: lets GCC turn selects such as PReLU into vector blends on CPUs without
    # AVX-512 masks; no kernel relies on floating-point traps, and results are unchanged.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-Wall",
                 "-Wno-unused-parameter"]
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*_glue.cpp"))
        from torch.utils.cpp_extension import CUDA_HOME
        library_includes = _cuda_library_includes(CUDA_HOME)
        # After the system folders, so that the toolkit's own CUDA runtime headers stay first;
        # only the glue (g++) includes torch's CUDA headers.
        cxx_flags = cxx_flags + [f for d in library_includes for f in ("-idirafter", d)]
        _say(f"building CPU and CUDA kernels ({reason}); CUDA_HOME={CUDA_HOME}; "
             f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        if library_includes:
            _say(f"CUDA library headers from {', '.join(library_includes)}")
        elif not os.path.exists(os.path.join(CUDA_HOME or "", "include", "cusparse.h")):
            _say("warning: cusparse.h is neither in CUDA_HOME/include nor in an nvidia-* pip "
                 "package; torch's CUDA headers need it (install the toolkit's cuSPARSE and "
                 "cuBLAS headers, or add their folder to CPATH)")
        ext = CUDAExtension(
            "rtseg_ops._C", sources, include_dirs=include_dirs,
            define_macros=[("RTSEG_WITH_CUDA", "1")], extra_link_args=["-fopenmp"],
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": ["-O3", "-std=c++17", "-lineinfo"]})
    else:
        _say(f"building CPU kernels only ({reason})")
        ext = CppExtension("rtseg_ops._C", sources, include_dirs=include_dirs, extra_link_args=["-fopenmp"],
                           extra_compile_args={"cxx": cxx_flags})
    return [ext], {"build_ext": BuildExtension}


def _require_torch():
    """Stop at once, saying why, when torch is not importable (usually pip's build isolation)."""
    if os.environ.get("RTSEG_NO_EXT", "0") == "1":
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        isolated = any("pip-build-env" in p for p in sys.path)
        sys.exit(
            "[rtseg setup] error: torch is not importable "
            + ("in pip's isolated build environment. " if isolated else "in this Python. ")
            + "rtseg's extension must be compiled against the torch you run it with, so build "
            "it with build isolation off:\n"
            "    pip install --no-build-isolation .     (or: pip wheel --no-build-isolation .)\n"
            "after installing torch (pip install torch). An isolated build would compile against "
            "a freshly downloaded torch (several GB of CUDA wheels) whose C++ ABI and version "
            "need not match the installed one, and the extension would then fail to load.")


def _version():
    with open(os.path.join(ROOT, "rtseg_ops", "_version.py")) as f:
        return f.read().split("=")[1].strip().strip('"')


_require_torch()
ext_modules, cmdclass = _extensions()

setup(
    name="rtseg",
    version=_version(),
    packages=find_packages(include=["rtseg_ops", "rtseg_ops.*", "rtseg_models", "rtseg_models.*",
                                    "rtseg_train", "rtseg_train.*"]),
    python_requires=">=3.10",
    # numpy: the Triton kernels of scalar_weighted_sum size their gathers with it
    install_requires=["torch>=2.11", "numpy"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
