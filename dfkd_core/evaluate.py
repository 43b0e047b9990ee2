"""Measuring: top-1 accuracy on held-out data (the only place real images meet the models), and what a
network costs to keep and to run (parameters, MACs, bytes, measured latency)."""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from .data import ImageSet
from .zoo import Normalization, Teacher

__all__ = ["LATENCY_BATCHES", "ModelSize", "align_classes", "evaluate", "measure_latency", "measure_size"]

LATENCY_BATCHES = (1, 256)  # one image at a time (an app's request) and a large batch (throughput)
LATENCY_REPEATS = 7  # timed rounds per model; the median is reported
LATENCY_MIN_SECONDS = 0.2  # a timed round repeats the forward pass until it lasts this long (small batches)


def align_classes(data: ImageSet, teacher: Teacher, source: str) -> tuple[ImageSet, str | None]:
    """``data`` labelled in the teacher's output order, and a note when its labels had to be remapped or a class
    has no image.

    Folder labels follow sorted folder names, while a teacher may name its classes in training order:
    the same names in another order are remapped by name; other names are a ``ValueError`` that lists
    both. A teacher whose checkpoint records no names takes the folders in sorted order (with a note).
    """
    aligned, note = _aligned(data, teacher, source)
    counts = torch.bincount(aligned.labels, minlength=len(aligned.classes))
    empty = [name for name, count in zip(aligned.classes, counts.tolist()) if count == 0]
    if empty:
        missing = (
            f"the class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} of {source!r} hold{'' if len(empty) > 1 else 's'} "
            f"no images: accuracy is measured on the other classes only"
        )
        note = f"{note}; {missing}" if note else missing
    return aligned, note


def _aligned(data: ImageSet, teacher: Teacher, source: str) -> tuple[ImageSet, str | None]:
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


@dataclass(frozen=True)
class ModelSize:
    """What a network costs to store and to run, counted (not timed)."""

    params: int  # parameters stored
    nonzero_params: int  # of which not zero (what a sparse format would keep)
    macs: int  # multiply-accumulates of one image's forward pass, as the network runs (zeros included)
    bytes: int  # its state dict saved with torch.save, uncompressed


@torch.no_grad()
def measure_size(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> ModelSize:
    """Parameters, MACs and saved bytes of ``model`` (pruning masks, if any, are folded in on a copy)."""
    from .channels import count_macs
    from .prune import clone_model, make_permanent

    plain = make_permanent(clone_model(model)).cpu().eval()
    buffer = io.BytesIO()
    torch.save(plain.state_dict(), buffer)
    params = list(plain.parameters())
    return ModelSize(
        params=sum(p.numel() for p in params),
        nonzero_params=sum(int((p != 0).sum()) for p in params),
        macs=count_macs(plain, input_size),
        bytes=buffer.getbuffer().nbytes,
    )


@torch.inference_mode()
def measure_latency(
    models: dict[str, nn.Module],
    input_size: tuple[int, int, int] = (3, 32, 32),
    batch_sizes: tuple[int, ...] | None = None,
    repeats: int | None = None,
) -> dict[str, dict[int, float]]:
    """Milliseconds per forward pass on the CPU, ``{name: {batch size: median}}`` (by default over
    :data:`LATENCY_BATCHES` and ``LATENCY_REPEATS`` rounds).

    The models are timed in turns within each round, so a busy moment of the machine slows all of them
    alike and ratios between them stay fair. Copies run in eval mode, channels_last, with masks folded in.
    """
    from .prune import clone_model, make_permanent

    plain = {
        name: make_permanent(clone_model(m)).cpu().eval().to(memory_format=torch.channels_last)
        for name, m in models.items()
    }
    batch_sizes = LATENCY_BATCHES if batch_sizes is None else batch_sizes
    repeats = LATENCY_REPEATS if repeats is None else repeats
    timings: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batch_sizes} for name in plain}
    for batch in batch_sizes:
        x = torch.randn(batch, *input_size).contiguous(memory_format=torch.channels_last)
        calls = {name: _calls_per_round(m, x) for name, m in plain.items()}
        for _ in range(repeats):
            for name, m in plain.items():
                started = time.perf_counter()
                for _ in range(calls[name]):
                    m(x)
                timings[name][batch].append(1000 * (time.perf_counter() - started) / calls[name])
    return {name: {b: statistics.median(t) for b, t in per_batch.items()} for name, per_batch in timings.items()}


def _calls_per_round(model: nn.Module, x: torch.Tensor) -> int:
    """Forward passes per timed round: enough to last ``LATENCY_MIN_SECONDS`` (after two warm-up passes)."""
    model(x)
    started = time.perf_counter()
    model(x)
    once = time.perf_counter() - started
    return max(1, min(1000, round(LATENCY_MIN_SECONDS / max(once, 1e-6))))
