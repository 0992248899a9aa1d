"""Which implementation runs each op: the extension's kernel for the tensor's device or the
PyTorch reference.

Kernels are whatever is registered on `torch.ops.rtseg.<op>` for a dispatch key: C++ (CPU),
CUDA C++ (CUDA) or Triton (registered as the CUDA implementation from Python). Availability is
read once, when the op module registers itself, so the per-call decision is a dict lookup that
torch.compile traces without a graph break.
"""
import importlib
import warnings

import torch

try:
    from . import _C  # noqa: F401  (importing it registers the schemas and C++/CUDA kernels)
    EXTENSION_ERROR = None
except ImportError as exc:  # not built, or built with RTSEG_NO_EXT=1
    EXTENSION_ERROR = exc

_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
# op -> {device type: kernel kind ("C++", "CUDA", "Triton")} as declared by the op module.
_DECLARED = {}
# (op, device type) -> kernel registered in this build
_AVAILABLE = {}
_WARNED = set()
# (op, device type) -> why a declared kernel could not be registered (e.g. triton failed to import)
_MISSING = {}


def extension_loaded():
    return EXTENSION_ERROR is None


def import_triton_kernels(name):
    """Import ``rtseg_ops.triton.<name>`` (which registers op `name`'s Triton kernels as its CUDA
    implementation) and return it, or None when triton or the module fails to import (triton
    missing or broken, numpy missing); the error is then kept for backend_table() and for the
    op's warning."""
    if not extension_loaded():
        return None
    try:
        return importlib.import_module(f"{__package__}.triton.{name}")
    except Exception as exc:  # a broken triton raises more than ImportError
        _MISSING[(name, "cuda")] = f"its Triton kernel could not be imported ({exc!r})"
        return None


def register_op(name, **kinds):
    """Declare op `name`'s kernel kind per device type, e.g. register_op("x", cpu="C++",
    cuda="Triton"), and record which of them this build actually registered."""
    _DECLARED[name] = dict(kinds)
    for device_type, key in _DEVICE_KEYS.items():
        _AVAILABLE[(name, device_type)] = extension_loaded() and device_type in kinds and \
            torch._C._dispatch_has_kernel_for_dispatch_key(f"rtseg::{name}", key)


def use_kernel(name, device_type):
    """True when op `name` has a kernel for `device_type`; otherwise warn once and return False
    so the caller runs the reference."""
    if _AVAILABLE.get((name, device_type), False):
        return True
    if (name, device_type) not in _WARNED:
        _WARNED.add((name, device_type))
        if not extension_loaded():
            why = f"the rtseg_ops._C extension is not importable ({EXTENSION_ERROR})"
        elif (name, device_type) in _MISSING:
            why = f"this build has no {_DECLARED[name][device_type]} kernel for {device_type}: " \
                  f"{_MISSING[(name, device_type)]}"
        elif device_type in _DECLARED.get(name, {}):
            why = f"this build has no {_DECLARED[name][device_type]} kernel for {device_type}"
        else:
            why = f"rtseg has no kernel for {device_type}"
        warnings.warn(f"rtseg_ops.{name}: {why}; running the PyTorch reference instead",
                      RuntimeWarning, stacklevel=3)
    return False


def cpu_simd_level():
    """The instruction set the extension's dispatched CPU loops picked on this CPU (None without
    the extension)."""
    return _C.cpu_simd_level() if extension_loaded() else None


def backend_table():
    """One row per op: the implementation each device uses in this build ("reference" where
    there is no kernel), under "missing" why a declared kernel is absent, and under "cpu_isa"
    the instruction set of its C++ kernels. On a CPU-only torch the CUDA column says so, even
    for Triton kernels (registered for CUDA from Python, they run only under TRITON_INTERPRET=1
    on CPU tensors there)."""
    rows = []
    for name, kinds in _DECLARED.items():
        row = {"op": name}
        for device_type in _DEVICE_KEYS:
            if device_type == "cuda" and torch.version.cuda is None:
                row[device_type] = "none (CPU-only torch)"
            elif _AVAILABLE[(name, device_type)]:
                row[device_type] = kinds[device_type]
            else:
                row[device_type] = "reference"
        missing = {d: why for (op, d), why in _MISSING.items() if op == name}
        if missing:
            row["missing"] = missing
        if row["cpu"] == "C++":
            row["cpu_isa"] = cpu_simd_level()
        rows.append(row)
    return rows
