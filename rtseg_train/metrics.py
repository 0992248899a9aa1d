"""Confusion-matrix metrics: per-class IoU and mIoU."""
import math

import torch

from .distributed import all_reduce_sum


class ConfusionMatrix:
    """matrix[t, p] counts pixels of true class t predicted as p; pixels labelled
    `ignore_index` are left out. A class absent from both labels and predictions has no IoU
    (NaN) and does not count in the mean."""

    def __init__(self, num_classes, ignore_index=255, device="cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred, label):
        """pred, label: integer tensors of the same shape."""
        if pred.shape != label.shape:
            raise ValueError(f"pred: shape {tuple(pred.shape)} differs from label "
                             f"{tuple(label.shape)}")
        valid = label != self.ignore_index
        label, pred = label[valid].long(), pred[valid].long()
        if label.numel() and (label.min() < 0 or label.max() >= self.num_classes):
            raise ValueError(f"label: values outside 0..{self.num_classes - 1} and "
                             f"{self.ignore_index}")
        K = self.num_classes
        self.matrix += torch.bincount(label * K + pred, minlength=K * K).view(K, K).to(
            self.matrix.device)
        return self

    def all_reduce(self):
        """Sum the matrices of all processes (a no-op in a single process)."""
        all_reduce_sum(self.matrix)
        return self

    def iou(self):
        """Per-class IoU = TP / (TP + FP + FN), float64, NaN where TP + FP + FN = 0."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def miou(self):
        return self.iou().nanmean().item()

    def pixel_accuracy(self):
        m = self.matrix.double()
        return (m.diag().sum() / m.sum().clamp(min=1)).item()


def iou_table(iou, class_names):
    """Per-class IoU (percent) as a text table; classes without pixels show 'n/a'."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    for name, value in zip(class_names, iou.tolist()):
        lines.append(f"{name:<{width}}  " + ("    n/a" if math.isnan(value) else f"{100 * value:7.2f}"))
    return "\n".join(lines)
