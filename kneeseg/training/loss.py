"""Soft Dice + cross-entropy against a label map (B, *spatial) of class indices, summed over the
deep-supervision outputs with halving weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean foreground soft Dice, pooled over the batch (batch Dice: stable with small patches)."""
    probs = torch.softmax(logits.float(), 1)
    onehot = torch.zeros_like(probs).scatter_(1, target[:, None].long(), 1.0)
    dims = (0, *range(2, probs.ndim))
    intersect = (probs * onehot).sum(dims)[1:]
    denom = (probs.sum(dims) + onehot.sum(dims))[1:]
    return 1.0 - ((2 * intersect + smooth) / (denom + smooth)).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long())


class DeepSupervisionLoss(nn.Module):
    """Weights 1, 1/2, 1/4, ... for outputs from full resolution down; the coarsest gets 0 (nnU-Net)."""

    def __init__(self, num_outputs: int):
        super().__init__()
        weights = torch.tensor([1 / 2**i for i in range(num_outputs)])
        if num_outputs > 1:
            weights[-1] = 0
        self.weights = (weights / weights.sum()).tolist()

    def forward(self, outputs: list[torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, out in zip(self.weights, outputs):
            if weight == 0:  # zero, but part of the graph: DistributedDataParallel expects every head used
                total = total + 0.0 * out.float().sum()
                continue
            t = target if out.shape[2:] == target.shape[1:] else downsample_target(target, out.shape[2:])
            total = total + weight * (cross_entropy(out, t) + soft_dice_loss(out, t))
        return total


def downsample_target(target: torch.Tensor, size) -> torch.Tensor:
    """A label map at a coarser deep-supervision resolution (nearest neighbour)."""
    return F.interpolate(target[:, None].float(), size=list(size), mode="nearest")[:, 0].long()
