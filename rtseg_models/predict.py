"""Segment images with an rtseg network and write colour masks and overlays.

    python -m rtseg_models.predict --model fbsnet --checkpoint fbsnet.pth --input img_or_dir \\
        --output out/ [--palette cityscapes|camvid] [--mode whole|slide --crop 512x1024] \\
        [--device cuda --dtype fp16]

For every image (PNG, JPEG, BMP, TIFF, WebP; a directory is searched recursively) it writes
``<output>/<relative path without suffix>_mask.png`` (the predicted class of each pixel in the
palette's colours) and ``..._overlay.png`` (the mask blended over the image, --alpha).
Images are RGB scaled to [0, 1] and normalised with the ImageNet mean and std (the backbones'
pre-training; --mean/--std change it). ``--mode whole`` runs the full image (optionally
zero-padded up to a multiple of --pad-to, the logits cropped back); ``--mode slide`` averages the logits of
--crop windows placed every --stride pixels, as mmsegmentation's slide inference. Needs Pillow.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

from ._cli import parse_size
from .api import create_model, list_models
from .palettes import PALETTES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("rtseg_models.predict reads and writes images with Pillow: "
                          "pip install Pillow (or pip install 'rtseg[train]')") from exc
    return Image


def colorize(labels, palette):
    """(H, W) integer class ids -> (H, W, 3) uint8 colours of `palette` (a name or a list of
    RGB triples); ids beyond the palette are black."""
    colours = torch.tensor(PALETTES[palette] if isinstance(palette, str) else palette,
                           dtype=torch.uint8)
    colours = torch.cat([colours, torch.zeros(1, 3, dtype=torch.uint8)])  # index -1: black
    labels = labels.long()
    labels = torch.where((labels >= 0) & (labels < len(colours) - 1), labels, -1)
    return colours[labels]


def _windows(length, crop, stride):
    starts = list(range(0, max(length - crop, 0) + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)  # the last window ends at the border
    return starts


@torch.inference_mode()
def predict_logits(model, x, mode="whole", crop=None, stride=None, pad_to=1):
    """Logits (B, K, H, W) of `model` on the normalised batch x (B, 3, H, W).

    mode="whole": one forward, x zero-padded at the bottom/right to multiples of `pad_to`.
    mode="slide": windows of `crop` (h, w) every `stride` (h, w) pixels (default: crop * 2/3),
    the image zero-padded up to the crop where it is smaller; overlapping logits are averaged.
    """
    H, W = x.shape[-2:]
    if mode == "whole":
        ph, pw = -H % pad_to, -W % pad_to
        return model(F.pad(x, (0, pw, 0, ph)))[..., :H, :W].float()
    if mode != "slide":
        raise ValueError(f"mode: expected 'whole' or 'slide', got {mode!r}")
    if crop is None:
        raise ValueError("crop: slide mode needs a crop size (h, w)")
    ch, cw = crop
    sh, sw = stride or (max(1, 2 * ch // 3), max(1, 2 * cw // 3))
    x = F.pad(x, (0, max(cw - W, 0), 0, max(ch - H, 0)))
    PH, PW = x.shape[-2:]
    total = counts = None
    for top in _windows(PH, ch, sh):
        for left in _windows(PW, cw, sw):
            out = model(x[..., top:top + ch, left:left + cw]).float()
            if total is None:
                total = out.new_zeros(out.shape[:2] + (PH, PW))
                counts = out.new_zeros((1, 1, PH, PW))
            total[..., top:top + ch, left:left + cw] += out
            counts[..., top:top + ch, left:left + cw] += 1
    return (total / counts)[..., :H, :W]


def find_images(path):
    """[(image path, path relative to `path` or its name)] of an image file or of every image
    under a directory, sorted."""
    if os.path.isfile(path):
        return [(path, os.path.basename(path))]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--input: {path} is neither an image file nor a directory")
    found = []
    for root, _, files in os.walk(path):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                full = os.path.join(root, name)
                found.append((full, os.path.relpath(full, path)))
    if not found:
        raise FileNotFoundError(f"--input: no image ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    return sorted(found)


def load_checkpoint(model, path):
    """Load a state dict saved by torch.save (bare, or under "model", "state_dict" or
    "model_state"), strictly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    model.load_state_dict(state)


def parser():
    p = argparse.ArgumentParser(prog="python -m rtseg_models.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=list_models())
    p.add_argument("--checkpoint", help="state dict to load (default: random weights)")
    p.add_argument("--input", required=True, help="an image or a directory of images")
    p.add_argument("--output", required=True, help="directory for the masks and overlays")
    p.add_argument("--palette", choices=list(PALETTES), default="cityscapes")
    p.add_argument("--num-classes", type=int,
                   help="classes of the model (default: the palette's, 19 or 11)")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--crop", type=parse_size, help="slide window HxW")
    p.add_argument("--stride", type=parse_size, help="slide stride HxW (default 2/3 of --crop)")
    p.add_argument("--pad-to", type=int, default=1,
                   help="whole mode: zero-pad H and W up to a multiple of this (default 1: none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.mode == "slide" and args.crop is None:
        raise SystemExit("--mode slide needs --crop HxW")
    if not 0.0 <= args.alpha <= 1.0:
        raise SystemExit(f"--alpha: expected a value in [0, 1], got {args.alpha}")
    Image = _pil()
    images = find_images(args.input)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    num_classes = args.num_classes or len(PALETTES[args.palette])
    model = create_model(args.model, num_classes=num_classes)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    model = model.fuse_for_inference().to(device=device, dtype=dtype)
    mean = torch.tensor(args.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(args.std, device=device).view(1, 3, 1, 1)
    written = []
    for i, (path, rel) in enumerate(images, 1):
        rgb = Image.open(path).convert("RGB")
        image = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(
            rgb.height, rgb.width, 3)
        x = image.to(device).permute(2, 0, 1)[None].float().div(255)
        x = ((x - mean) / std).to(dtype)
        logits = predict_logits(model, x, args.mode, args.crop, args.stride, args.pad_to)
        mask = colorize(logits.argmax(1)[0].cpu(), args.palette)
        overlay = (image.float() * (1 - args.alpha) + mask.float() * args.alpha).round()
        stem = os.path.join(args.output, os.path.splitext(rel)[0])
        os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
        for suffix, array in (("_mask.png", mask), ("_overlay.png", overlay.to(torch.uint8))):
            Image.fromarray(array.numpy()).save(stem + suffix)
            written.append(stem + suffix)
        print(f"[predict] {i}/{len(images)} {path} -> {stem}_mask.png, {stem}_overlay.png",
              file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
