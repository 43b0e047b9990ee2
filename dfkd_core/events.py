"""Typed progress events, the one currency every client (CLI, notebooks, app) consumes.

Long-running stages are generators: they ``yield`` events as work happens and ``return`` their
result (the Torch-Pruning ``interactive=True`` idiom). Iterate to watch; call the plain
function (which uses :func:`drain`) to just get the result.

Every event names its :class:`Stage`; a :class:`MetricLogged` also names the :class:`Metric` and
the :class:`Network` it measured. Clients switch on these enums, never on string surgery.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import torch

__all__ = [
    "Event",
    "Finished",
    "ImagesReady",
    "Metric",
    "MetricLogged",
    "Network",
    "Notice",
    "Progress",
    "Stage",
    "StageFinished",
    "StageStarted",
    "drain",
]


class _Name(str, Enum):
    """A string enum (``enum.StrEnum`` before Python 3.11): compares, hashes and prints as its value."""

    def __str__(self) -> str:
        return self.value


class Stage(_Name):
    """The stages of :func:`dfkd_core.recover`, in the order they run."""

    LOAD = "load"  # the teacher and the evaluation data
    PRUNE = "prune"  # remove weights: the student is born, and its accuracy falls
    SHOWCASE = "showcase"  # a few dreams formed step by step with the recommended steps, to watch (when asked for)
    DREAM = "dream"  # DeepInversion synthesizes the transfer set out of the teacher's BatchNorm statistics
    REFIT = "refit"  # layer-wise least-squares refit of the pruned layers on the dreams (when the recipe has it)
    DISTILL = "distill"  # knowledge distillation from teacher to student on the dreams
    BASELINE = "baseline"  # the same refit and distillation on noise (or real images: not data-free), for comparison
    EVALUATE = "evaluate"  # the reported accuracies, on the evaluation split


class Metric(_Name):
    """What a :class:`MetricLogged` measured."""

    ACCURACY = "accuracy"  # top-1 % on the evaluation split: the reported numbers
    CURVE_ACCURACY = "curve_accuracy"  # top-1 % on the fixed curve subset: the live curve and its references
    DREAM_TOP1 = "dream_top1"  # % of dreams the teacher assigns to the class they were dreamed for
    HOLDOUT_AGREEMENT = (
        "holdout_agreement"  # % of blended held-out dreams where the student picks the teacher's class (data-free)
    )


class Network(_Name):
    """Whose metric it is: the teacher, or the student at one point of its recovery."""

    TEACHER = "teacher"  # the dense, pretrained network
    PRUNED = "pruned"  # the student right after pruning, no recovery
    REFIT = "refit"  # the student after the layer-wise refit, before distillation
    RECOVERED = "recovered"  # the student after distillation on the dreams
    NOISE = "noise"  # baseline: the same recipe on Gaussian noise instead of dreams
    REAL = "real"  # the same recipe on as many real training images (not data-free)


@dataclass(frozen=True)
class StageStarted:
    stage: Stage
    total: int  # steps the stage will take (0 when it is a single operation)
    description: str = ""


@dataclass(frozen=True)
class Progress:
    stage: Stage
    step: int  # 1-based, counts up to ``total``
    total: int
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. losses at this step


@dataclass(frozen=True)
class ImagesReady:
    """A snapshot of images being dreamed: pixels in [0, 1] on the CPU."""

    stage: Stage
    step: int  # 1-based, counts up to ``total`` like :class:`Progress`
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    total: int = 0  # steps of the stage


@dataclass(frozen=True)
class MetricLogged:
    stage: Stage
    metric: Metric
    network: Network
    value: float
    step: int = 0  # the distillation epoch, for points of the accuracy curve


@dataclass(frozen=True)
class StageFinished:
    stage: Stage
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """Something the user should read: a skipped step, a fallback, a caveat."""

    stage: Stage
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
