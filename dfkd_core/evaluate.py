"""Top-1 accuracy on held-out data: the only place real images meet the models."""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageSet
from .zoo import Normalization, Teacher

__all__ = ["align_classes", "evaluate"]


def align_classes(data: ImageSet, teacher: Teacher, source: str) -> tuple[ImageSet, str | None]:
    """``data`` labelled in the teacher's output order, and a note when its labels had to be remapped.

    Folder labels follow sorted folder names, while a teacher may name its classes in training order:
    the same names in another order are remapped by name; other names are a ``ValueError`` that lists
    both. A teacher whose checkpoint records no names takes the folders in sorted order (with a note).
    """
    if len(data.classes) != teacher.num_classes:
        raise ValueError(
            f"evaluation data {source!r} has {len(data.classes)} classes but the teacher predicts "
            f"{teacher.num_classes}; use data whose class folders match the teacher's outputs"
        )
    if data.classes == teacher.classes:
        return data, None
    if not teacher.named:
        return data, (
            f"the teacher records no class names: the class folders of {source!r}, in sorted order "
            f"({', '.join(data.classes)}), are taken as its outputs 0-{teacher.num_classes - 1}"
        )
    if sorted(data.classes) != sorted(teacher.classes):
        raise ValueError(
            f"the class folders of {source!r} do not match the teacher's classes: folders "
            f"({', '.join(data.classes)}), teacher ({', '.join(teacher.classes)}); rename the folders, or "
            "use a checkpoint that records the right names"
        )
    position = torch.tensor([teacher.classes.index(name) for name in data.classes])
    relabelled = ImageSet(data.images, position[data.labels], teacher.classes, data.name)
    return relabelled, (
        f"the class folders of {source!r} are the teacher's classes in another order: labels remapped by name"
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
