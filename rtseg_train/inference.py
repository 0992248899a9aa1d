"""Inference at a label's full resolution: whole-image or sliding-window, optional horizontal
flip and multi-scale averaging of the softmax probabilities."""
import math

import torch
import torch.nn.functional as F


def _forward(model, x):
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def slide_logits(model, x, window, stride, num_classes):
    """Logits of `x` (B, 3, H, W) from windows of size `window` = (h, w) every `stride`,
    averaged where windows overlap; an image smaller than the window is padded with zeros (the
    mean colour) and the padding cropped off again."""
    wh, ww = window
    sh, sw = stride
    B, _, H, W = x.shape
    ph, pw = max(wh - H, 0), max(ww - W, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    Hp, Wp = x.shape[-2:]
    rows = max(math.ceil((Hp - wh) / sh), 0) + 1
    cols = max(math.ceil((Wp - ww) / sw), 0) + 1
    logits = x.new_zeros(B, num_classes, Hp, Wp, dtype=torch.float32)
    count = x.new_zeros(1, 1, Hp, Wp, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            top, left = min(r * sh, Hp - wh), min(c * sw, Wp - ww)
            logits[..., top:top + wh, left:left + ww] += \
                _forward(model, x[..., top:top + wh, left:left + ww]).float()
            count[..., top:top + wh, left:left + ww] += 1
    return (logits / count)[..., :H, :W]


@torch.no_grad()
def predict_probs(model, x, out_size, num_classes, mode="whole", window=None, stride=None,
                  scales=(1.0,), flip=False):
    """Softmax probabilities (B, K, *out_size) of eval-mode `model` on normalised images `x`,
    averaged over `scales` (the input resized bilinearly by each) and, with `flip`, over the
    horizontally flipped input; `mode` is "whole" or "slide" (windows `window`, default stride
    2/3 of the window)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"eval mode: expected 'whole' or 'slide', got {mode!r}")
    if mode == "slide":
        if window is None:
            raise ValueError("eval mode 'slide' needs a window size")
        stride = stride or tuple(max(1, 2 * s // 3) for s in window)
    probs = 0
    for scale in scales:
        xs = x if scale == 1 else F.interpolate(
            x, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = xs.flip(-1) if flipped else xs
            logits = (slide_logits(model, xi, window, stride, num_classes) if mode == "slide"
                      else _forward(model, xi).float())
            if flipped:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, out_size, mode="bilinear", align_corners=False)
            probs = probs + logits.softmax(1)
    return probs / (len(scales) * (2 if flip else 1))
