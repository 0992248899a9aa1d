"""factorized_dw_conv: FBSNet's BRU branch, a 3x1 and a 1x3 depthwise conv, each followed by a
folded BatchNorm and a PReLU, as one fused op."""
import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import check_choice, check_int, check_like, check_tensor, output_memory_format

ORDERS = ("vh", "hv")
_PARAM_NAMES = ("scale_v", "shift_v", "prelu_v", "scale_h", "shift_h", "prelu_h")


def _check_args(x, weight_v, weight_h, dilation, params, order):
    check_tensor(x, "x", dim=4)
    C = x.shape[1]
    for name, w, shape in (("weight_v", weight_v, (C, 1, 3, 1)),
                           ("weight_h", weight_h, (C, 1, 1, 3))):
        check_tensor(w, name)
        check_like(w, x, name, "x")
        if tuple(w.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} (C = {C} from x), got "
                             f"{tuple(w.shape)}")
    check_int(dilation, "dilation", 1)
    check_choice(order, "order", ORDERS)
    for name, p in zip(_PARAM_NAMES, params):
        if p is None:
            continue
        check_tensor(p, name, dim=1)
        check_like(p, x, name, "x")
        if p.shape[0] != C:
            raise ValueError(f"{name}: expected shape ({C},) (one value per channel of x), got "
                             f"{tuple(p.shape)}")


def factorized_dw_conv(x, weight_v, weight_h, dilation=1, scale_v=None, shift_v=None,
                       prelu_v=None, scale_h=None, shift_h=None, prelu_h=None, order="vh"):
    """Two depthwise 1-D convs, each followed by a per-channel affine and a PReLU (docs/ops.md
    section 6), without materialising the intermediate.

    Args:
        x: ``(B, C, H, W)``.
        weight_v: ``(C, 1, 3, 1)``, the vertical conv (padding ``(d, 0)``, dilation ``(d, 1)``).
        weight_h: ``(C, 1, 1, 3)``, the horizontal conv (padding ``(0, d)``, dilation ``(1, d)``).
        dilation: ``d >= 1``, shared by both convs.
        scale_v, shift_v, prelu_v, scale_h, shift_h, prelu_h: ``(C,)`` or ``None``: the affine
            after each conv (a folded eval-mode BatchNorm, see :func:`fold_batchnorm`; a missing
            scale is 1, a missing shift 0) and the PReLU slopes (``None``: no activation).
        order: ``"vh"`` applies the vertical stage first, ``"hv"`` the horizontal one.

    Returns:
        ``(B, C, H, W)``, channels_last when ``x`` is. For ``order="vh"``:
        ``t = act_v(scale_v * conv_v(x) + shift_v)``, ``y = act_h(scale_h * conv_h(t) + shift_h)``
        with ``act(z) = max(z, 0) + prelu * min(z, 0)`` and zero padding of ``x`` and ``t``.
        Differentiable in every tensor argument.
    """
    params = (scale_v, shift_v, prelu_v, scale_h, shift_h, prelu_h)
    x, weight_v, weight_h, params = _autocast.cast_inputs(
        "factorized_dw_conv", x, weight_v, weight_h, params)
    _check_args(x, weight_v, weight_h, dilation, params, order)
    if _backend.use_kernel("factorized_dw_conv", x.device.type):
        return torch.ops.rtseg.factorized_dw_conv(x, weight_v, weight_h, dilation, *params, order)
    return reference.factorized_dw_conv(x, weight_v, weight_h, dilation, *params, order)


def fold_batchnorm(bn):
    """``(scale, shift)`` of an eval-mode BatchNorm: ``gamma / sqrt(var + eps)`` and
    ``beta - mean * scale`` (affine-less BatchNorm: gamma 1, beta 0). Not differentiable through
    the running statistics; gradients reach gamma and beta."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
        raise TypeError("bn: expected a BatchNorm with running statistics "
                        f"(track_running_stats=True), got {bn!r}")
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = inv_std if bn.weight is None else bn.weight * inv_std
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _cast(p, dtype):
    # No .to() when the dtype already matches: torch.export would record a cast and a metadata
    # assert per parameter (FBSNet: 2048 of its 5336 nodes).
    return p if p is None or p.dtype == dtype else p.to(dtype)


class FactorizedDWConv(nn.Module):
    """FBSNet's depthwise pair: a 3x1 and a 1x3 depthwise conv (bias-free), each followed by
    BatchNorm and PReLU (one slope per channel), applied in ``order`` (``"vh"``: 3x1 first).

    In eval mode (BatchNorms using running statistics) the whole chain runs as one
    :func:`factorized_dw_conv` call with the BatchNorms folded; in training mode it runs the
    plain modules, so batch statistics and running-stat updates behave as in PyTorch.
    ``ops="reference"`` makes eval mode run :func:`rtseg_ops.reference.factorized_dw_conv`.
    """

    def __init__(self, channels, dilation=1, order="vh", bn_eps=1e-3, prelu=True, ops="fused"):
        super().__init__()
        check_int(channels, "channels", 1)
        check_int(dilation, "dilation", 1)
        check_choice(order, "order", ORDERS)
        check_choice(ops, "ops", ("fused", "reference"))
        self.channels, self.dilation, self.order, self.ops = channels, dilation, order, ops
        d = dilation
        self.conv_v = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1),
                                groups=channels, bias=False)
        self.conv_h = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d),
                                groups=channels, bias=False)
        self.bn_v = nn.BatchNorm2d(channels, eps=bn_eps)
        self.bn_h = nn.BatchNorm2d(channels, eps=bn_eps)
        self.act_v = nn.PReLU(channels) if prelu else nn.Identity()
        self.act_h = nn.PReLU(channels) if prelu else nn.Identity()

    def _uses_batch_stats(self):
        return any(bn.training or bn.running_var is None for bn in (self.bn_v, self.bn_h))

    def forward(self, x):
        stages = {"v": (self.conv_v, self.bn_v, self.act_v),
                  "h": (self.conv_h, self.bn_h, self.act_h)}
        if self._uses_batch_stats():
            for conv, bn, act in (stages[self.order[0]], stages[self.order[1]]):
                x = act(bn(conv(x)))
            return x
        args = []
        for _, bn, act in (stages["v"], stages["h"]):
            scale, shift = fold_batchnorm(bn)
            slope = act.weight if isinstance(act, nn.PReLU) else None
            args += [_cast(p, x.dtype) for p in (scale, shift, slope)]
        fn = factorized_dw_conv if self.ops == "fused" else reference.factorized_dw_conv
        return fn(x, _cast(self.conv_v.weight, x.dtype), _cast(self.conv_h.weight, x.dtype),
                  self.dilation, *args, self.order)

    def extra_repr(self):
        return f"{self.channels}, dilation={self.dilation}, order={self.order!r}, ops={self.ops!r}"


if _backend.extension_loaded():
    @torch.library.register_fake("rtseg::factorized_dw_conv")
    def _(x, weight_v, weight_h, dilation, scale_v, shift_v, prelu_v, scale_h, shift_h, prelu_h,
          order):
        return torch.empty_like(x, memory_format=output_memory_format(x))

    @torch.library.register_fake("rtseg::factorized_dw_conv_backward")
    def _(grad_output, x, weight_v, weight_h, dilation, scale_v, shift_v, prelu_v, scale_h,
          shift_h, prelu_h, order):
        C = x.shape[1]
        grad_x = torch.empty_like(x, memory_format=output_memory_format(x))
        per_channel = [x.new_empty((C,)) for _ in range(6)]
        return (grad_x, torch.empty_like(weight_v, memory_format=torch.contiguous_format),
                torch.empty_like(weight_h, memory_format=torch.contiguous_format), *per_channel)

    def _setup_context(ctx, inputs, output):
        x, weight_v, weight_h, dilation, *params, order = inputs
        ctx.save_for_backward(x, weight_v, weight_h, *[
            p if p is not None else torch.empty(0) for p in params])
        ctx.present = [p is not None for p in params]
        ctx.args = (dilation, order)

    def _backward(ctx, grad_output):
        x, weight_v, weight_h, *saved = ctx.saved_tensors
        params = [p if present else None for p, present in zip(saved, ctx.present)]
        dilation, order = ctx.args
        grad_x, grad_wv, grad_wh, *grad_params = torch.ops.rtseg.factorized_dw_conv_backward(
            grad_output, x, weight_v, weight_h, dilation, *params, order)
        needs = ctx.needs_input_grad
        grads = [grad_x, grad_wv, grad_wh, None] + [
            g if present else None for g, present in zip(grad_params, ctx.present)] + [None]
        return tuple(g if need else None for g, need in zip(grads, needs))

    torch.library.register_autograd("rtseg::factorized_dw_conv", _backward,
                                    setup_context=_setup_context)

_backend.register_op("factorized_dw_conv", cpu="C++", cuda="CUDA")
_autocast.register("factorized_dw_conv", cuda_policy="promote")
