"""Training losses: cross-entropy with an ignore index, OHEM cross-entropy, and the criterion
that maps each model's training outputs to its loss (MSFNet adds its class-boundary term)."""
import torch
import torch.nn.functional as F
from torch import nn

from rtseg_models import class_boundary_labels


class OhemCrossEntropy(nn.Module):
    """Online hard example mining: the mean cross-entropy over the pixels whose predicted
    probability of their true class is below `thresh`, or, when fewer are, over the
    `min_kept` fraction of the batch's valid pixels with the largest losses."""

    def __init__(self, thresh=0.7, min_kept=1 / 16, ignore_index=255):
        super().__init__()
        if not 0 < thresh <= 1 or not 0 <= min_kept <= 1:
            raise ValueError(f"ohem: expected 0 < thresh <= 1 and 0 <= min_kept <= 1, got "
                             f"{thresh}, {min_kept}")
        self.loss_thresh = -torch.log(torch.tensor(thresh)).item()
        self.min_kept, self.ignore_index = min_kept, ignore_index

    def forward(self, logits, labels):
        losses = F.cross_entropy(logits, labels, ignore_index=self.ignore_index,
                                 reduction="none").flatten()
        valid = labels.flatten() != self.ignore_index
        losses = losses[valid]
        if losses.numel() == 0:
            return logits.sum() * 0.0
        n_min = int(self.min_kept * losses.numel())
        hard = losses[losses > self.loss_thresh]
        if hard.numel() < n_min:
            hard = losses.topk(n_min).values
        return hard.mean() if hard.numel() else losses.mean() * 0.0


def build_pixel_loss(config):
    if config.loss == "ce":
        return nn.CrossEntropyLoss(ignore_index=config.ignore_index)
    if config.loss == "ohem":
        return OhemCrossEntropy(config.ohem_thresh, config.ohem_min_kept, config.ignore_index)
    raise ValueError(f"loss: expected 'ce' or 'ohem', got {config.loss!r}")


class SegmentationCriterion(nn.Module):
    """loss(outputs, labels) for the training-mode outputs of an rtseg model: a logits tensor
    (CSFCN, SGCPNet, FBSNet, and MSFNet without CBS), or MSFNet's (logits, boundary_logits at 1/8),
    whose second term is `boundary_weight` x CE against `class_boundary_labels` of the labels
    nearest-resized to the boundary logits' size. Returns (total, {term name: value})."""

    def __init__(self, config):
        super().__init__()
        self.pixel_loss = build_pixel_loss(config)
        self.boundary_weight, self.ignore_index = config.boundary_weight, config.ignore_index

    def forward(self, outputs, labels):
        if isinstance(outputs, torch.Tensor):
            loss = self.pixel_loss(outputs.float(), labels)
            return loss, {"seg": loss.detach()}
        if not (isinstance(outputs, tuple) and len(outputs) == 2):
            raise TypeError(f"model outputs: expected logits or (logits, boundary_logits), got "
                            f"{type(outputs).__name__}")
        logits, boundary_logits = outputs
        seg = self.pixel_loss(logits.float(), labels)
        small = F.interpolate(labels[:, None].float(), boundary_logits.shape[-2:],
                              mode="nearest")[:, 0].long()
        boundary = F.cross_entropy(boundary_logits.float(),
                                   class_boundary_labels(small, 1, self.ignore_index),
                                   ignore_index=self.ignore_index)
        return seg + self.boundary_weight * boundary, {"seg": seg.detach(),
                                                       "boundary": boundary.detach()}
