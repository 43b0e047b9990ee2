"""Top-1 accuracy on held-out data: the only place real images meet the models."""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageSet
from .zoo import Normalization, Teacher

__all__ = ["check_classes", "evaluate"]


def check_classes(data: ImageSet, teacher: Teacher, source: str) -> None:
    """``ValueError`` unless the evaluation data (named ``source``) has as many classes as the teacher predicts."""
    if len(data.classes) != teacher.num_classes:
        raise ValueError(
            f"evaluation data {source!r} has {len(data.classes)} classes but the teacher predicts "
            f"{teacher.num_classes}; use data whose class folders match the teacher's outputs"
        )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageSet,
    normalization: Normalization,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy of ``model`` on ``data`` in percent (eval mode; the model's mode is restored)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(data), batch_size):
            pixels = data.images[start : start + batch_size].to(device, non_blocking=True).float().div_(255)
            x = normalization.normalize(pixels).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(x)
            correct += int((logits.argmax(1).cpu() == data.labels[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return 100.0 * correct / max(1, len(data))
