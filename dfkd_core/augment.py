"""The views distillation shows its networks: random crops, flips and cut-and-paste blends of the dreams.

Distillation needs no labels (the teacher labels whatever it is shown), so every view of a dream is a new,
correctly labelled training input; the held-out check (:mod:`dfkd_core.holdout`) uses fixed views of the same
kinds, where the teacher's answers are softer than on the dreams themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment", "cutmix", "paste"]


def augment(pixels: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop (after zero padding) and horizontal flip of a ``(N, C, H, W)`` batch."""
    n, _, h, w = pixels.shape
    if padding:
        padded = F.pad(pixels, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator).to(pixels.device)
        dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator).to(pixels.device)
        rows = (dy + torch.arange(h, device=pixels.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=pixels.device))[:, None, None, :]
        batch = torch.arange(n, device=pixels.device)[:, None, None, None]
        channel = torch.arange(pixels.shape[1], device=pixels.device)[None, :, None, None]
        pixels = padded[batch, channel, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(pixels.device)[:, None, None, None]
        pixels = torch.where(mask, pixels.flip(3), pixels)
    return pixels


def cutmix(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Paste into each image a box cut from another image of the batch (one box size per batch).

    Distillation needs no labels - the teacher labels whatever it is shown - so every blend is a new,
    correctly labeled training input, and a small transfer set goes further. Unlike a weighted
    average (mixup), a pasted box keeps the pixel statistics that the student's recalibrated
    BatchNorm layers learn from. An image may be paired with itself (it then stays as it was).
    """
    if len(pixels) < 2:
        return pixels
    partner = pixels[torch.randperm(len(pixels), generator=generator).to(pixels.device)]
    keep = float(torch.rand((), generator=generator))  # share of the image that stays its own
    h, w = pixels.shape[-2:]
    box_h, box_w = round(h * math.sqrt(1 - keep)), round(w * math.sqrt(1 - keep))
    top = int(torch.randint(0, h - box_h + 1, (), generator=generator))
    left = int(torch.randint(0, w - box_w + 1, (), generator=generator))
    mixed = pixels.clone()
    mixed[..., top : top + box_h, left : left + box_w] = partner[..., top : top + box_h, left : left + box_w]
    return mixed


def paste(pixels: torch.Tensor, partner: torch.Tensor, share: float) -> torch.Tensor:
    """``pixels`` with a centred square of ``partner`` pasted in, covering ``share`` of each image."""
    h, w = pixels.shape[-2:]
    box_h, box_w = round(h * math.sqrt(share)), round(w * math.sqrt(share))
    top, left = (h - box_h) // 2, (w - box_w) // 2
    mixed = pixels.clone()
    mixed[..., top : top + box_h, left : left + box_w] = partner[..., top : top + box_h, left : left + box_w]
    return mixed
