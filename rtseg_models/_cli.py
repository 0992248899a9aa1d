"""Argument types shared by the rtseg_models command-line tools."""
import argparse


def parse_size(text):
    """argparse type of an "HxW" size such as 512x1024 -> (512, 1024)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x1024, got {text!r}")
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return h, w
