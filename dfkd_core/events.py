"""Typed progress events, the one currency every client (CLI, notebooks, app) consumes.

Long-running stages are generators: they ``yield`` events as work happens and ``return`` their
result (the Torch-Pruning ``interactive=True`` idiom). Iterate to watch; call the plain
function (which uses :func:`drain`) to just get the result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

__all__ = [
    "Event",
    "Finished",
    "ImagesReady",
    "MetricLogged",
    "Notice",
    "Progress",
    "StageFinished",
    "StageStarted",
    "drain",
]


@dataclass(frozen=True)
class StageStarted:
    stage: str  # "load", "evaluate", "prune", "synthesize", "distill", "baseline_noise", "baseline_real"
    total: int  # steps the stage will take (0 when it is a single operation)
    description: str = ""


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int  # 1-based, counts up to ``total``
    total: int
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. losses at this step


@dataclass(frozen=True)
class ImagesReady:
    """A snapshot of images being synthesized: pixels in [0, 1] on the CPU."""

    stage: str
    step: int
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class MetricLogged:
    stage: str
    name: str  # e.g. "accuracy", "teacher_accuracy", "pruned_accuracy"
    value: float
    step: int = 0  # epoch for distillation curves


@dataclass(frozen=True)
class StageFinished:
    stage: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """Something the user should read: a skipped step, a fallback, a caveat."""

    stage: str
    message: str


@dataclass(frozen=True)
class Finished:
    """Last event of a pipeline run; carries the complete result."""

    result: Any


Event = StageStarted | Progress | ImagesReady | MetricLogged | Notice | StageFinished | Finished
R = TypeVar("R")


def drain(events: Generator[Event, None, R], callback: Callable[[Event], None] | None = None) -> R:
    """Run an event generator to the end, handing each event to ``callback``; return its result."""
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
