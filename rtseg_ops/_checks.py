"""Argument checks shared by the public ops: each error names the argument and what was expected."""
import torch

# Dtypes each device's kernels accept (docs/ops.md, common rules). CUDA also takes float64 so that
# gradcheck can run on the GPU.
SUPPORTED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def check_tensor(t, name, dim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got shape {tuple(t.shape)}")
    supported = SUPPORTED_DTYPES.get(t.device.type)
    if supported is None:
        raise ValueError(f"{name}: device {t.device} is not supported (expected cpu or cuda)")
    if t.dtype not in supported:
        names = ", ".join(str(d).replace("torch.", "") for d in supported)
        raise TypeError(f"{name}: dtype {t.dtype} is not supported on {t.device.type} "
                        f"(expected one of {names})")


def check_like(t, ref, name, ref_name):
    """Same device and dtype as `ref`."""
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (that of {ref_name}), got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {t.dtype}")


def check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def check_bool(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def output_memory_format(t):
    """Layout the kernels give outputs and gradient buffers (csrc/torch_utils.h: output_format)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
