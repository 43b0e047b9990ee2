"""What the four tutorial notebooks share, defined once: the SMOKE budget, the recipe for the
device, the SMOKE mark on figure titles, one way to show a run's events, and stage-by-stage runs.

``DFKD_SMOKE=1`` shrinks every budget so that each notebook runs top to bottom in about a minute
on a CPU (the tests and ``notebook_tools.py execute --smoke`` use it). Numbers measured in SMOKE
mode (a handful of dreams, 20 test images per class) only show that the code runs; they say
nothing about the method, so every figure title of a SMOKE run carries :data:`SMOKE_MARK`.
The notebooks import this module from their own folder.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection, Generator
from typing import Any

import torch

import dfkd_core as dfkd

SMOKE = os.environ.get("DFKD_SMOKE", "0") == "1"
EVAL_PER_CLASS = 20  # test images per class behind every accuracy in SMOKE mode
SMOKE_MARK = "SMOKE run: tiny budget, the numbers mean nothing"
LIVE_SCALE = 3  # the live dream widget enlarges each 32x32 pixel to a 3x3 block


def marked(title: str) -> str:
    """``title`` as a figure must show it: under the SMOKE mark in a SMOKE run, as it is otherwise."""
    return f"[{SMOKE_MARK}]\n{title}" if SMOKE else title


def smoke_recipe(recipe: dfkd.Recipe) -> dfkd.Recipe:
    """``recipe`` on the SMOKE budget: 60 dreams x 40 steps, then 5 epochs of distillation in batches
    of 30; every other setting (the refit included) stays the recipe's own."""
    return dfkd.with_overrides(
        recipe,
        dream={"num_images": 60, "batch_size": 60, "steps": 40, "preview_every": 10, "holdout": 30},
        distill={"epochs": 5, "batch_size": 30},
    )


def chosen_recipe(
    device: torch.device, cpu_preset: str = "quick", granularity: str = "weight"
) -> tuple[str, dfkd.Recipe]:
    """The preset named by ``DFKD_PRESET``, else ``default`` on a GPU and ``cpu_preset`` on a CPU, and
    its recipe for pruning of ``granularity`` (on the SMOKE budget in a SMOKE run)."""
    name = os.environ.get("DFKD_PRESET") or ("default" if device.type == "cuda" else cpu_preset)
    recipe = dfkd.get_preset(name, granularity)
    return name, smoke_recipe(recipe) if SMOKE else recipe


def binomial_error(accuracy: float, images: int) -> float:
    """Half-width, in points, of the 95% interval of a top-1 accuracy (%) measured on ``images`` images: an
    interval this wide around the measurement holds the network's accuracy on all such images 95% of the time.
    (Two draws of as many images differ by more: this far or closer only about 83% of the time.)"""
    p = accuracy / 100
    return 100 * 1.96 * (p * (1 - p) / max(1, images)) ** 0.5


class Watch:
    """The one event callback of the notebooks: the library's progress bars (as the ``dfkd`` command
    line draws them), plus a widget where the dreams form, one row per class, repainted at every
    snapshot. ``keep`` names the steps whose snapshots are kept in :attr:`snapshots` (a
    :class:`dfkd.DreamSet` each), for pictures that survive output stripping."""

    def __init__(self, per_class: int = 8, keep: Collection[int] = ()):
        self.bars = dfkd.ProgressBars()
        self.per_class, self.keep = per_class, set(keep)
        self.events: list[dfkd.Event] = []
        self.snapshots: dict[int, dfkd.DreamSet] = {}
        self._status: Any = None
        self._image: Any = None

    def __call__(self, event: dfkd.Event) -> None:
        self.events.append(event)
        self.bars(event)
        if isinstance(event, dfkd.Progress) and event.metrics and self._status is not None:
            terms = ", ".join(f"{k} {v:.3g}" for k, v in event.metrics.items())
            self._status.value = f"[{event.stage}] step {event.step}/{event.total}: {terms}"
        elif isinstance(event, dfkd.ImagesReady):
            shown = dfkd.DreamSet(event.images, event.labels, event.classes, steps=event.step)
            if event.step in self.keep:
                self.snapshots[event.step] = shown
            self._paint(shown)

    def _paint(self, dreams: dfkd.DreamSet) -> None:
        from IPython.display import display
        from ipywidgets import HTML, Image, VBox
        from torchvision.transforms.functional import to_pil_image

        if self._image is None:
            self._status, self._image = HTML(), Image(format="png")
            display(VBox([self._status, self._image]))
        picture = to_pil_image(dreams.grid(self.per_class))
        picture = picture.resize((picture.width * LIVE_SCALE, picture.height * LIVE_SCALE), resample=0)  # nearest
        buffer = io.BytesIO()
        picture.save(buffer, format="png")
        self._image.value = buffer.getvalue()

    def last(self, kind: type, **fields: Any) -> Any:
        """The latest event of type ``kind`` whose attributes equal ``fields``, e.g.
        ``watch.last(dfkd.MetricLogged, network=dfkd.Network.PRUNED)``."""
        return next(
            e
            for e in reversed(self.events)
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
        )


class StageByStage:
    """A :func:`dfkd.recover` run taken one stage at a time, so that each cell runs one stage.

    ``until(stage)`` runs the pipeline until ``stage`` has finished and returns its
    :class:`dfkd.StageFinished`; asked again (a cell run twice) it returns the same event and runs
    nothing. ``until()`` runs to the end and returns the :class:`dfkd.RecoveryResult`.
    """

    def __init__(self, run: Generator[dfkd.Event, None, dfkd.RecoveryResult], callback: Watch):
        self.run, self.callback = run, callback
        self.finished: dict[dfkd.Stage, dfkd.StageFinished] = {}
        self.result: dfkd.RecoveryResult | None = None

    def until(self, stage: dfkd.Stage | None = None) -> Any:
        if stage is None and self.result is not None:
            return self.result
        if stage in self.finished:
            return self.finished[stage]
        if self.result is not None:
            raise ValueError(f"this run has ended without a {stage} stage (the recipe skips it)")
        for event in self.run:
            self.callback(event)
            if isinstance(event, dfkd.StageFinished):
                self.finished.setdefault(event.stage, event)
                if event.stage == stage:
                    return event
            elif isinstance(event, dfkd.Finished):
                self.result = event.result
        if stage is None:
            return self.result
        raise ValueError(f"this run has ended without a {stage} stage (the recipe skips it)")
