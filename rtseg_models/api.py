"""The model API every rtseg network shares: a name registry, `create_model`, and `profile`.

    model = rtseg_models.create_model("csfcn", num_classes=19, ops="fused", deep_stem=True)
    rtseg_models.profile(model, (1, 3, 1024, 2048))  # {"params": ..., "gmacs": ...}

GMACs are multiply-accumulates of convolutions and matrix products counted by
`torch.utils.flop_counter.FlopCounterMode` (flops / 2 / 1e9). The rtseg custom ops present in this
build get flop formulas here, equal to what FlopCounterMode counts for their references, so the
fused and the reference path of a model report the same number.
"""
import contextlib
import math
import os

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

import rtseg_ops  # noqa: F401  (loads the extension, so torch.ops.rtseg holds this build's ops)

OPS_SETTINGS = ("fused", "reference")
_MODELS = {}


def register_model(name):
    """Class or function decorator: make `create_model(name, ...)` call it."""
    def decorator(constructor):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name]!r})")
        _MODELS[name] = constructor
        return constructor
    return decorator


def list_models():
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name, num_classes=19, ops="fused", **options):
    """Build model `name` with `num_classes` (>= 1) outputs; `ops="fused"` runs the rtseg_ops
    kernels, `ops="reference"` their PyTorch references; `options` go to the model's constructor
    (every model takes `pretrained`: None or the path of a local backbone state dict)."""
    if name not in _MODELS:
        raise ValueError(f"name: unknown model {name!r}; expected one of {list_models()}")
    check_ops_setting(ops)
    check_num_classes(num_classes)
    return _MODELS[name](num_classes=num_classes, ops=ops, **options)


def check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes!r} (rtseg "
                         f"models always end in a K-class classifier; there is no "
                         f"num_classes=0 feature-extractor mode)")


def check_pretrained(pretrained):
    """`pretrained` must be None or the path of a local state dict (nothing is downloaded)."""
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained: expected None or the path of a local state dict file, got "
                        f"{pretrained!r}; rtseg downloads no weights, so pretrained=True has "
                        f"nothing to load: pass pretrained='resnet18.pth' (a torchvision-format "
                        f"state dict, or the model's own for SGCPNet's trunk)")


def check_ops_setting(ops):
    if ops not in OPS_SETTINGS:
        raise ValueError(f"ops: expected one of {OPS_SETTINGS}, got {ops!r}")


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def profile(model, input_size, compute=False):
    """Parameters and GMACs of one eval-mode forward of `model` on an input of `input_size`.

    By default the forward runs under FakeTensorMode: shapes only, so full-resolution counts
    are instant, on the model's own device and through its own ops (the rtseg custom ops run
    their fake kernels and are counted by their flop formulas). compute=True runs the real
    forward on a zero input. Returns dict(params=int, macs=int, gmacs=float).
    """
    like = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    fake = contextlib.nullcontext() if compute else FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with torch.no_grad(), fake:
            x = torch.zeros(tuple(input_size), device=like.device, dtype=like.dtype)
            with counter:
                model(x)
    finally:
        model.train(was_training)
    macs = counter.get_total_flops() // 2
    return dict(params=count_parameters(model), macs=macs, gmacs=macs / 1e9)


# --- flop formulas of the rtseg custom ops (2 flops per multiply-accumulate) ------------------
# Pooling, resampling and elementwise ops count 0, as their references do.

def _numel(shape):
    return math.prod(shape)


def _pixel_context_attention_flop(query_shape, key_shape, value_shape, *args, **kwargs):
    B, Ck, H, W = query_shape
    M, Cv = key_shape[-1], value_shape[1]
    return 2 * B * H * W * M * (Ck + Cv)  # query.key logits, then probs.value


def _factorized_dw_conv_flop(x_shape, *args, **kwargs):
    return 2 * 2 * 3 * _numel(x_shape)  # two depthwise 3-tap convs, same-size outputs


_FLOP_FORMULAS = {
    "pixel_context_attention": _pixel_context_attention_flop,
    "factorized_dw_conv": _factorized_dw_conv_flop,
}


def _register_flop_formulas():
    for name, formula in _FLOP_FORMULAS.items():
        if hasattr(torch.ops.rtseg, name):
            register_flop_formula(getattr(torch.ops.rtseg, name))(formula)


_register_flop_formulas()
