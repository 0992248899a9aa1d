"""pixel_context_attention: CSFCN CFC's attention of every pixel over M context vectors, fused
(softmax and log-sum-exp on chip; the forward never stores the (N x M) attention matrix, the
Triton backward keeps it and its gradient in a float32 scratch for its split-K dK/dV step)."""
import numbers

import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import check_like, check_tensor, output_memory_format

# None without a working triton: CUDA tensors then run the reference, with a warning saying why
triton_kernels = _backend.import_triton_kernels("pixel_context_attention")


def _check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number, got {scale!r}")


def _check_args(query, key, value, scale):
    check_tensor(query, "query", dim=4)
    check_tensor(key, "key", dim=3)
    check_tensor(value, "value", dim=3)
    check_like(key, query, "key", "query")
    check_like(value, query, "value", "query")
    _check_scale(scale)
    B, Ck = query.shape[:2]
    for t, name in ((key, "key"), (value, "value")):
        if t.shape[0] != B:
            raise ValueError(f"{name}: expected batch {B} (that of query), got {t.shape[0]}")
    if key.shape[1] != Ck:
        raise ValueError(f"key: expected {Ck} channels (Ck of query), got {key.shape[1]}")
    if key.shape[2] == 0:
        raise ValueError(f"key: expected at least one context vector (M >= 1), got shape "
                         f"{tuple(key.shape)}")
    if value.shape[2] != key.shape[2]:
        raise ValueError(f"value: expected M = {key.shape[2]} context vectors (that of key), got "
                         f"{value.shape[2]}")


def pixel_context_attention(query, key, value, scale=1.0):
    """Every pixel's query attends over M context vectors (docs/ops.md section 3).

    Args:
        query: ``(B, Ck, H, W)`` (NCHW or channels_last are read in place).
        key: ``(B, Ck, M)``.
        value: ``(B, Cv, M)``.
        scale: multiplies the logits (CSFCN uses none: 1.0).

    Returns:
        ``(B, Cv, H, W)``, channels_last when ``query`` is:
        ``out[b, :, p] = sum_j softmax_j(scale * <query[b, :, p], key[b, :, j]>) * value[b, :, j]``,
        the softmax computed in float32 (float64 for float64 inputs). Differentiable in all three
        tensors.
    """
    query, key, value = _autocast.cast_inputs("pixel_context_attention", query, key, value)
    _check_args(query, key, value, scale)
    if _backend.use_kernel("pixel_context_attention", query.device.type):
        return torch.ops.rtseg.pixel_context_attention(query, key, value, float(scale))[0]
    return reference.pixel_context_attention(query, key, value, scale)


class PixelContextAttention(nn.Module):
    """``nn.Module`` form of :func:`pixel_context_attention`; ``forward(query, key, value)``."""

    def __init__(self, scale=1.0):
        super().__init__()
        _check_scale(scale)
        self.scale = float(scale)

    def forward(self, query, key, value):
        return pixel_context_attention(query, key, value, self.scale)

    def extra_repr(self):
        return f"scale={self.scale}"


def _lse_dtype(query):
    return torch.float64 if query.dtype == torch.float64 else torch.float32


if _backend.extension_loaded():
    if triton_kernels is not None:
        torch.library.register_kernel("rtseg::pixel_context_attention", "cuda",
                                      triton_kernels.forward)
        torch.library.register_kernel("rtseg::pixel_context_attention_backward", "cuda",
                                      triton_kernels.backward)

    @torch.library.register_fake("rtseg::pixel_context_attention")
    def _(query, key, value, scale):
        B, _, H, W = query.shape
        out = query.new_empty((B, value.shape[1], H, W)).contiguous(
            memory_format=output_memory_format(query))
        return out, query.new_empty((B, H * W), dtype=_lse_dtype(query))

    @torch.library.register_fake("rtseg::pixel_context_attention_backward")
    def _(grad_output, query, key, value, lse, scale):
        grad_query = torch.empty_like(query, memory_format=output_memory_format(query))
        return (grad_query, torch.empty_like(key, memory_format=torch.contiguous_format),
                torch.empty_like(value, memory_format=torch.contiguous_format))

    def _setup_context(ctx, inputs, output):
        query, key, value, scale = inputs
        _, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(query, key, value, lse)
        ctx.scale = scale

    def _backward(ctx, grad_output, _grad_lse):
        query, key, value, lse = ctx.saved_tensors
        grads = torch.ops.rtseg.pixel_context_attention_backward(
            grad_output, query, key, value, lse, ctx.scale)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None,)

    torch.library.register_autograd("rtseg::pixel_context_attention", _backward,
                                    setup_context=_setup_context)

_backend.register_op("pixel_context_attention", cpu="C++", cuda="Triton")
_autocast.register("pixel_context_attention", cuda_policy="lower")
