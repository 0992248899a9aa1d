"""Command line: `python -m rtseg_train {train,eval,make-synthetic,configs} ...`.

    python -m rtseg_train make-synthetic /tmp/synth
    python -m rtseg_train train --config sgcpnet_cityscapes --data-root /tmp/synth \
        --work-dir /tmp/run --iters 200 --batch-size 8 --crop 64x64
    python -m rtseg_train eval --config sgcpnet_cityscapes --data-root /tmp/synth \
        --checkpoint /tmp/run/latest.pth
    torchrun --nproc_per_node 8 -m rtseg_train train --config csfcn_cityscapes ...
"""
import argparse
import json
import sys

from .configs import DATASET_INFO, get_config, list_configs


def _size(text):
    """'HxW' or 'S' -> (H, W)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers, got {text!r}")
    return tuple(parts)


def _floats(text):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _json_dict(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {e}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


# (flag, config field, argparse options); a flag left unset keeps the config's value
OVERRIDES = (
    ("--iters", "iters", dict(type=int, help="training iterations")),
    ("--batch-size", "batch_size", dict(type=int, help="global batch (split over processes)")),
    ("--crop", "crop", dict(type=_size, help="training crop HxW")),
    ("--scale-range", "scale_range", dict(type=_floats, help="random scale range MIN,MAX")),
    ("--lr", "lr", dict(type=float, help="base learning rate")),
    ("--weight-decay", "weight_decay", dict(type=float)),
    ("--optimizer", "optimizer", dict(choices=("sgd", "adam", "adamw"))),
    ("--schedule", "schedule", dict(choices=("poly", "cosine"))),
    ("--warmup-iters", "warmup_iters", dict(type=int)),
    ("--loss", "loss", dict(choices=("ce", "ohem"))),
    ("--clip-grad", "clip_grad_norm", dict(type=float, help="max gradient norm (0: off)")),
    ("--amp", "amp", dict(choices=("none", "bf16", "fp16"),
                          help="mixed precision (fp16 uses a GradScaler)")),
    ("--ops", "ops", dict(choices=("fused", "reference"),
                          help="rtseg_ops kernels or their PyTorch references")),
    ("--model-options", "model_options", dict(type=_json_dict,
                                              help='JSON keyword arguments of the model, merged into '
                                                   'the config\'s, e.g. \'{"variant": "released"}\'')),
    ("--dataset", "dataset", dict(choices=("cityscapes", "camvid", "folder"))),
    ("--num-classes", "num_classes", dict(type=int)),
    ("--train-split", "train_split", dict()),
    ("--eval-split", "eval_split", dict()),
    ("--workers", "workers", dict(type=int, help="DataLoader worker processes")),
    ("--seed", "seed", dict(type=int)),
    ("--ckpt-interval", "ckpt_interval", dict(type=int)),
    ("--eval-interval", "eval_interval", dict(type=int, help="0: evaluate only at the end, -1: never")),
    ("--log-interval", "log_interval", dict(type=int)),
    ("--eval-mode", "eval_mode", dict(choices=("whole", "slide"))),
    ("--eval-crop", "eval_crop", dict(type=_size, help="sliding window HxW")),
    ("--eval-stride", "eval_stride", dict(type=_size, help="sliding stride HxW")),
    ("--eval-scales", "eval_scales", dict(type=_floats, help="e.g. 0.75,1,1.25")),
)
SWITCHES = (
    ("--channels-last", "channels_last", "run the model in channels_last"),
    ("--sync-bn", "sync_bn", "synchronise BatchNorm statistics over processes"),
    ("--eval-flip", "eval_flip", "average predictions with the flipped image"),
    ("--no-hflip", "hflip", "no random horizontal flip in training"),
)


def _add_config_args(p):
    p.add_argument("--config", required=True, metavar="NAME",
                   help=f"one of: {', '.join(list_configs())}")
    p.add_argument("--data-root", required=True, metavar="DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag, dest, options in OVERRIDES:
        p.add_argument(flag, dest=dest, default=None, **options)
    for flag, dest, text in SWITCHES:
        p.add_argument(flag, dest=dest, action="store_const", const=flag != "--no-hflip",
                       default=None, help=text)


def _config(args):
    overrides = {dest: getattr(args, dest) for _, dest, _ in OVERRIDES + tuple(
        (f, d, None) for f, d, _ in SWITCHES) if getattr(args, dest) is not None}
    if args.dataset in DATASET_INFO and args.num_classes is None:
        overrides["num_classes"] = DATASET_INFO[args.dataset][0]
    if "model_options" in overrides:  # merged into the config's, e.g. MSFNet's CamVid levels
        overrides["model_options"] = {**get_config(args.config).model_options,
                                      **overrides["model_options"]}
    config = get_config(args.config, **overrides)
    if config.dataset == "folder" and args.num_classes is None:
        raise SystemExit("error: --dataset folder needs --num-classes")
    return config


def parser():
    p = argparse.ArgumentParser(prog="python -m rtseg_train",
                                description="Train and evaluate rtseg segmentation networks.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a config (also under torchrun)")
    _add_config_args(t)
    t.add_argument("--work-dir", required=True, metavar="DIR",
                   help="checkpoints (latest.pth, best.pth), train.csv, eval.csv, previews/")
    t.add_argument("--resume", nargs="?", const="auto", default=None, metavar="FILE",
                   help="continue from FILE (default: WORK_DIR/latest.pth)")
    t.add_argument("--stop-at", type=int, default=None, metavar="N",
                   help="end this run after iteration N with a checkpoint (for time-limited "
                        "jobs); the schedule still spans --iters, and --resume continues")
    t.add_argument("--vis-count", type=int, default=4, help="preview PNGs per evaluation")
    e = sub.add_parser("eval", help="evaluate a checkpoint: per-class IoU and mIoU")
    _add_config_args(e)
    e.add_argument("--checkpoint", required=True, metavar="FILE")
    e.add_argument("--split", default=None, help="dataset split (default: the config's)")
    e.add_argument("--vis-dir", default=None, metavar="DIR", help="write preview PNGs here")
    e.add_argument("--vis-count", type=int, default=4)
    s = sub.add_parser("make-synthetic", help="write a small synthetic Cityscapes-layout dataset")
    s.add_argument("root", metavar="DIR")
    s.add_argument("--train", type=int, default=32, help="training images")
    s.add_argument("--val", type=int, default=8, help="validation images")
    s.add_argument("--size", type=_size, default=(64, 128), help="image HxW")
    s.add_argument("--seed", type=int, default=0)
    sub.add_parser("configs", help="list the configs")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from .datasets import DatasetError
    try:
        return _run(args)
    except (DatasetError, FileNotFoundError) as e:  # the message names the path
        print(f"python -m rtseg_train {args.command}: error: {e}", file=sys.stderr)
        return 2


def _run(args):
    if args.command == "configs":
        for name in list_configs():
            c = get_config(name)
            print(f"{name:20s} {c.optimizer} lr {c.lr:g} {c.schedule}, batch {c.batch_size}, "
                  f"crop {c.crop[0]}x{c.crop[1]}, {c.iters} iters, loss {c.loss}")
        return 0
    if args.command == "make-synthetic":
        from .synthetic import make_synthetic_cityscapes
        make_synthetic_cityscapes(args.root, (("train", args.train), ("val", args.val)),
                                  args.size, args.seed)
        print(f"wrote {args.train} train and {args.val} val images to {args.root}")
        return 0
    from . import engine
    from .distributed import is_main
    config = _config(args)
    if args.command == "train":
        result = engine.train(config, args.data_root, args.work_dir, args.device, args.resume,
                              not args.no_progress, args.vis_count, args.stop_at)
        if is_main():
            print(f"iterations: {result['iter']}  loss: {result['loss']:.4f}  "
                  f"final mIoU: {100 * result['miou']:.2f}")
        return 0
    cm, names = engine.run_evaluation(config, args.data_root, args.checkpoint, args.split,
                                      args.device, args.vis_dir, args.vis_count,
                                      not args.no_progress)
    if is_main():
        print(engine.report(cm, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
