"""Autocast policy of every rtseg op (torch.autocast on CPU and CUDA).

Under autocast the floating-point inputs of an op can arrive in a dtype its kernel lacks (CPU
kernels take float32/float64, autocast gives bfloat16) or in mixed dtypes (a bfloat16 conv output
next to a float32 tensor), which the ops' checks refuse. Each op therefore has a rule, applied to
its floating-point tensor inputs (tensor lists included) before the checks and again at the
dispatcher's Autocast keys for direct ``torch.ops.rtseg`` calls:

* CPU, every op: run in the widest input dtype, at least float32 (the CPU kernels' precision),
  so float16/bfloat16 inputs are computed in float32 and the outputs stay float32, as for the
  ops autocast itself runs in float32 on CPU (``grid_sampler``, ``upsample_*``).
* CUDA, ``"promote"`` (the memory-bound ops): run in the widest input dtype, as autocast does for
  ``grid_sampler``; inputs that already share one dtype are used as they are (the CUDA kernels
  take float16, bfloat16, float32 and float64).
* CUDA, ``"lower"`` (``pixel_context_attention``, matmul-like): float32 inputs are cast to the
  autocast dtype, as autocast does for ``scaled_dot_product_attention``.

float64 inputs are never narrowed. The casts are ordinary differentiable ``Tensor.to`` calls, so
gradients reach the original tensors in their dtypes.
"""
import torch

from . import _backend

_POLICIES = ("promote", "lower")
_LIB = torch.library.Library("rtseg", "IMPL")
_CUDA_POLICY = {}


def _floats(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _floats(a)
        elif isinstance(a, torch.Tensor) and a.is_floating_point():
            yield a


def _cast(args, dtype):
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            a = type(a)(_cast(a, dtype))
        elif isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != dtype:
            a = a.to(dtype)
        out.append(a)
    return out


def _target_dtype(policy, device_type, dtypes):
    widest = dtypes[0]
    for d in dtypes[1:]:
        widest = torch.promote_types(widest, d)
    if device_type == "cpu":
        return torch.promote_types(widest, torch.float32)
    if policy == "lower" and widest == torch.float32:
        return torch.get_autocast_dtype("cuda")
    return widest


def cast_inputs(name, *args):
    """`args` as op `name` runs them under the autocast state of their device (unchanged when
    autocast is off there)."""
    if not torch._C._is_any_autocast_enabled():  # the common case, kept cheap (about 0.15 us)
        return args
    floats = list(_floats(args))
    if not floats:
        return args
    device_type = floats[0].device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return args
    dtype = _target_dtype(_CUDA_POLICY[name], device_type, [t.dtype for t in floats])
    return tuple(_cast(args, dtype))


def register(name, cuda_policy):
    """Give op `name` its rule: the public function calls :func:`cast_inputs`; direct calls of
    ``torch.ops.rtseg.<name>`` get it from kernels at the AutocastCPU and AutocastCUDA keys."""
    if cuda_policy not in _POLICIES:
        raise ValueError(f"cuda_policy: expected one of {_POLICIES}, got {cuda_policy!r}")
    _CUDA_POLICY[name] = cuda_policy
    if not _backend.extension_loaded():
        return
    op = getattr(torch.ops.rtseg, name).default
    for key in ("AutocastCPU", "AutocastCUDA"):
        dispatch_key = getattr(torch._C.DispatchKey, key)

        def run(*args, _key=dispatch_key):
            args = cast_inputs(name, *args)  # before the guard, which hides the autocast state
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(*args)

        # py_impl serves tracing (torch.compile), the library kernel eager calls
        op.py_kernels.pop(dispatch_key, None)
        op.py_impl(dispatch_key)(run)
        _LIB.impl(name, lambda _keyset, *args, _run=run: _run(*args), key, with_keyset=True)
