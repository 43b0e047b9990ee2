"""What the page shows, computed from the pipeline's events: dream tiles, plots, status and tables.

:class:`LiveView` keeps the little state a run's display needs (the curve so far, the loss
history, the stage and its clock) and answers each event with only the outputs it changed,
so the page is never re-sent what it already shows. Nothing here computes anything of the
method: every number comes from an event or from the run's :class:`~demo.runner.Outcome`.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from dfkd_core import Metric, Network, Stage
from dfkd_core.events import Event, ImagesReady, MetricLogged, Notice, Progress, StageFinished, StageStarted
from dfkd_core.plots import curves_figure, sparsity_figure

from .runner import DREAMS_PER_CLASS, Outcome

__all__ = [
    "OUTPUTS",
    "STAGES",
    "SUMMARY_HEADERS",
    "LiveView",
    "dream_tiles",
    "format_bytes",
    "format_seconds",
    "loss_figure",
    "output_index",
    "step_caption",
]

# The stages of dfkd_core.recover() in order, as a newcomer would name them.
STAGES: dict[Stage, str] = {
    Stage.LOAD: "Loading the teacher and the test images",
    Stage.PRUNE: "Pruning: removing the smallest weights (or channels)",
    Stage.SHOWCASE: "Showcase: a few dreams forming step by step, out of noise",
    Stage.DREAM: "Dreaming images out of the teacher's BatchNorm statistics",
    Stage.REFIT: "Refit: each pruned layer refit to the teacher's outputs on the dreams",
    Stage.DISTILL: "Distillation: the pruned student learns from the teacher on the dreams",
    Stage.BASELINE: "Baseline: the same recipe on random noise",
    Stage.EVALUATE: "Final accuracy on the full test split",
}
# What a run shows, in the order the Run event returns it: output name -> what it is. The Run button
# comes last: Gradio's API does not send buttons, so every other output keeps its position for clients.
OUTPUTS: dict[str, str] = {
    "status": "the stage, a progress bar, the time and what was found so far",
    "dreams": "one tile per class: the showcase dreams as they form (the latest dreams when there is no showcase)",
    "losses": "the losses of the dreams shown, against the step",
    "accuracy": "the student's live accuracy per distillation epoch, with the teacher, the pruned network and noise",
    "log": "the live accuracy per epoch, as a table",
    "layers": "the share of weights removed per layer",
    "summary": "accuracy, nonzero parameters, MACs, checkpoint size and CPU latency of every network",
    "files": "the downloads",
    "run": "the Run button, disabled while a run goes on",
}
LOSS_NAMES = {"loss": "total", "ce": "class (cross-entropy)", "bn": "BatchNorm statistics"}
LOSS_REFRESH_S = 5.0  # seconds between redraws of the loss plot while dreams form (drawn again at the end)
SUMMARY_HEADERS = ["model", "top-1 accuracy", "nonzero parameters", "MACs", "checkpoint size", "zipped", "CPU latency"]


def output_index(name: str) -> int:
    """Where output ``name`` sits in each streamed step a /run API client receives."""
    if name == "run":
        raise ValueError("the Run button is not sent to API clients")
    return list(OUTPUTS).index(name)


def format_seconds(seconds: float) -> str:
    """``m:ss``, for the elapsed and remaining time."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def format_bytes(count: int) -> str:
    """A file size in kB or MB."""
    return f"{count / 1e6:.2f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def dream_tiles(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    per_class: int = DREAMS_PER_CLASS,
    scale: int = 3,
    caption: str = "",
) -> list[tuple[np.ndarray, str]]:
    """One tile per class with its latest ``per_class`` dreams (as square as they allow), captioned
    with the class name and ``caption``.

    ``images`` are ``(N, 3, H, W)`` pixels in [0, 1]; each dream is enlarged ``scale`` times
    (nearest neighbour) so the 32x32 pictures stay crisp on a projector.
    """
    across = math.ceil(math.sqrt(per_class))
    down = math.ceil(per_class / across)
    h, w = images.shape[-2] * scale, images.shape[-1] * scale
    gap = 2
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels_np = labels.numpy()
    tiles = []
    for c, name in enumerate(classes):
        members = pixels[labels_np == c][-per_class:]
        tile = np.full((down * (h + gap) - gap, across * (w + gap) - gap, 3), 255, dtype=np.uint8)
        for i, image in enumerate(members):
            row, col = divmod(i, across)
            big = image.repeat(scale, axis=0).repeat(scale, axis=1)
            tile[row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = big
        tiles.append((tile, f"{name} · {caption}" if caption else name))
    return tiles


def step_caption(step: int, total: int) -> str:
    """Where a snapshot of dreams stands, for tile captions: ``37/200`` (steps done of the stage's)."""
    return f"{step}/{total}" if total else f"step {step}"


def loss_figure(history: list[tuple[int, dict[str, float]]]) -> Figure:
    """The dreaming losses against the step, on a log scale (they fall by orders of magnitude)."""
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    steps = [s for s, _ in history]
    for key, label in LOSS_NAMES.items():
        values = [max(m[key], 1e-6) for _, m in history if key in m]
        if len(values) == len(steps) and values:
            ax.plot(steps, values, label=label, linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("dreaming step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("Dream losses (lower is better)", fontsize=10)
    ax.grid(alpha=0.3)
    if steps:
        ax.legend(loc="upper right", fontsize=8)
    return fig


class LiveView:
    """The display state of one run. ``apply(item)`` returns ``{output name: new value}`` for what changed.

    Output names: those of :data:`OUTPUTS`, and ``warning`` (a message for a pop-up).
    """

    def __init__(
        self,
        title: str,
        sparsity: float,
        epochs: int,
        device: str,
        refit: bool = True,
        showcase: int = 0,
        granularity: str = "weight",
    ):
        self.title, self.sparsity, self.epochs, self.device = title, sparsity, epochs, device
        self.removed = "the MACs (whole channels)" if granularity == "channel" else "the weights"
        self.stages = tuple(  # those this run has
            s for s in STAGES if (refit or s is not Stage.REFIT) and (showcase or s is not Stage.SHOWCASE)
        )
        self.watched = Stage.SHOWCASE if showcase else Stage.DREAM  # whose dreams the gallery shows
        self.per_class = showcase or DREAMS_PER_CLASS
        self.started = time.perf_counter()
        self.losses_drawn = -math.inf
        self.stage: Stage | None = None
        self.stage_started, self.step, self.total = self.started, 0, 0
        self.note = "Starting..."
        self.story: list[str] = []  # one line per finding, in the order the run makes them
        self.references: dict[Network, float] = {}  # teacher and pruned accuracy on the live subset
        self.curve: list[tuple[int, float]] = []
        self.noise: float | None = None  # the noise baseline's accuracy on the live subset, known at the end
        self.noise_curve: list[tuple[int, float]] = []  # the noise baseline per epoch, as it trains
        self.holdout_agreement: list[tuple[int, float]] = []  # the student's data-free score per epoch
        self.kept_epoch: int | None = None  # the epoch that score kept, once distillation is over
        self.losses: list[tuple[int, dict[str, float]]] = []
        self.curve_images = self.eval_images = 0
        self.state = "running"  # "running", "done", "stopped", "failed" or "example" (a replayed recording)

    # --- events in ---------------------------------------------------------------------------------------

    def apply(self, item: Event | Outcome) -> dict[str, Any]:
        """Take one event (or the final outcome) in; return the outputs it changed."""
        if isinstance(item, Outcome):
            return self._finish(item)
        if isinstance(item, StageStarted):
            self.stage, self.stage_started, self.step, self.total = item.stage, time.perf_counter(), 0, item.total
            self.note = item.description
            return {"status": self.status()}
        if isinstance(item, Progress):
            self.step, self.total = item.step, item.total
            if item.stage is self.watched and item.metrics:
                self.losses.append((item.step, dict(item.metrics)))
            return {"status": self.status()}
        if isinstance(item, ImagesReady):
            if item.stage is not self.watched:
                return {}
            caption = step_caption(item.step, item.total) if self.watched is Stage.SHOWCASE else ""
            tiles = dream_tiles(item.images, item.labels, item.classes, self.per_class, caption=caption)
            changed: dict[str, Any] = {"dreams": tiles}
            if time.perf_counter() - self.losses_drawn >= LOSS_REFRESH_S:  # a figure costs CPU the run needs
                self.losses_drawn = time.perf_counter()
                changed["losses"] = loss_figure(self.losses)
            return changed
        if isinstance(item, MetricLogged):
            return self._metric(item)
        if isinstance(item, StageFinished):
            return self._stage_finished(item)
        if isinstance(item, Notice):
            return {"warning": item.message, "status": self.status()}
        return {}

    def _metric(self, item: MetricLogged) -> dict[str, Any]:
        match (item.metric, item.network):
            case (Metric.CURVE_ACCURACY, Network.TEACHER | Network.PRUNED):
                self.references[item.network] = item.value
                return {}
            case (Metric.DREAM_TOP1, Network.TEACHER):
                which = "showcase dreams" if item.stage is Stage.SHOWCASE else "dreams"
                self.story.append(
                    f"The teacher labels {item.value:.0f}% of the {which} as the class they were dreamed for."
                )
                return {"status": self.status()}
            case (Metric.CURVE_ACCURACY, Network.REFIT):
                pruned = self.references.get(Network.PRUNED)
                before = f" from {pruned:.1f}%" if pruned is not None else ""
                self.story.append(f"The refit of the surviving weights lifted accuracy{before} to {item.value:.1f}%.")
                return {"status": self.status()}
            case (Metric.CURVE_ACCURACY, Network.RECOVERED):
                self.curve.append((item.step, item.value))
                return {"accuracy": self.accuracy_figure(), "log": self.log_rows(), "status": self.status()}
            case (Metric.HOLDOUT_AGREEMENT, Network.RECOVERED):
                self.holdout_agreement.append((item.step, item.value))
                return {"accuracy": self.accuracy_figure()}
            case (Metric.CURVE_ACCURACY, Network.NOISE):  # per epoch on the live subset, like the rest of the plot
                self.noise = item.value
                self.noise_curve = [*(self.noise_curve if item.step else []), (item.step, item.value)]
                return {"accuracy": self.accuracy_figure()}
            case (Metric.ACCURACY, Network.NOISE):
                self.story.append(f"The same recipe on random noise reaches {item.value:.1f}% (full test split).")
                return {"status": self.status()}
        return {}

    def _stage_finished(self, item: StageFinished) -> dict[str, Any]:
        if item.stage is Stage.LOAD:
            self.curve_images = int(item.summary.get("curve_images", 0))
            self.eval_images = int(item.summary.get("eval_images", 0))
            return {"status": self.status()}
        if item.stage is Stage.PRUNE:
            self.sparsity = float(item.summary.get("sparsity", self.sparsity))
            teacher, pruned = self.references.get(Network.TEACHER), self.references.get(Network.PRUNED)
            if teacher is not None and pruned is not None:
                self.story.append(
                    f"Pruning removed {self.sparsity:.0%} of {self.removed}: accuracy fell from {teacher:.1f}% "
                    f"to {pruned:.1f}%."
                )
            changed: dict[str, Any] = {"status": self.status(), "accuracy": self.accuracy_figure()}
            if "layers" in item.summary:
                changed["layers"] = sparsity_figure(item.summary["layers"])
            return changed
        if item.stage is self.watched:
            return {"losses": loss_figure(self.losses)} if self.losses else {}
        if item.stage is Stage.DISTILL and len(self.curve) > 1:
            start, end = self.curve[0][1], self.curve[-1][1]
            self.story.append(
                f"Distillation on the dreams: {start:.1f}% -> {end:.1f}% after {self.curve[-1][0]} epochs."
            )
            self.kept_epoch = item.summary.get("kept_epoch")
            if self.kept_epoch is not None:
                self.story.append(kept_words(self.kept_epoch, self.curve[-1][0]))
            return {"status": self.status(), "accuracy": self.accuracy_figure()}
        return {}

    def _finish(self, outcome: Outcome) -> dict[str, Any]:
        self.state = "done"
        self.noise = outcome.curve_references.get(Network.NOISE)  # on the live subset, like the rest of the plot
        self.curve = list(outcome.curve)
        self.holdout_agreement, self.kept_epoch = list(outcome.holdout_agreement), outcome.kept_epoch
        split = "full test split" if outcome.full_split else "test subset"
        line = (
            f"Final, {split} ({outcome.eval_images:,} images): teacher {outcome.teacher_acc:.2f}%, "
            f"pruned {outcome.pruned_acc:.2f}%, recovered {outcome.recovered_acc:.2f}%"
        )
        self.story.append(
            line + (f", the same recipe on noise {outcome.noise_acc:.2f}%." if outcome.noise_acc is not None else ".")
        )
        speedups = speedup_words(outcome)
        if speedups:
            self.story.append(
                f"On this CPU the recovered student runs {speedups} compared with the teacher"
                + (
                    " (pruned weights are still multiplied: same shape, same speed)."
                    if outcome.granularity == "weight"
                    else "."
                )
            )
        return {
            "accuracy": self.accuracy_figure(),
            "log": self.log_rows(),
            "summary": summary_rows(outcome),
            "files": list(outcome.files),
            "status": self.status(),
        }

    def stopped(self, note: str = "Press Run to start again.") -> dict[str, Any]:
        """The outputs that change when the run is stopped (by the user, or by the app's time limit, said in ``note``)."""
        self.state, self.note = "stopped", note
        return {"status": self.status()}

    def failed(self, message: str) -> dict[str, Any]:
        """The outputs that change when the run fails with ``message`` (plain words)."""
        self.state, self.note = "failed", message
        return {"status": self.status()}

    def recorded(self, note: str) -> str:
        """The status of a replayed recording (the stored example): what it is, then its findings."""
        self.state, self.note = "example", note
        return self.status()

    # --- outputs -----------------------------------------------------------------------------------------

    def accuracy_figure(self) -> Figure | None:
        """The live curve against the teacher and pruned levels and the noise baseline (None until pruning
        measured them)."""
        teacher, pruned = self.references.get(Network.TEACHER), self.references.get(Network.PRUNED)
        if teacher is None or pruned is None:
            return None
        where = f"live accuracy on {self.curve_images:,} test images" if self.curve_images else "live accuracy"
        subtitle = f"{self.title}, {self.sparsity:.0%} of {self.removed} removed, {where}"
        noise = self.noise_curve or self.noise  # a curve while (or once) it trains, else its level, if known
        baselines = None if noise is None else {str(Network.NOISE): noise}
        return curves_figure(
            self.curve,
            teacher,
            pruned,
            baselines,
            epochs=self.epochs,
            subtitle=subtitle,
            holdout_agreement=self.holdout_agreement,
            kept_epoch=self.kept_epoch,
        )

    def log_rows(self) -> list[list[float]]:
        """The live curve as table rows: epoch, accuracy (%)."""
        return [[epoch, round(accuracy, 2)] for epoch, accuracy in self.curve]

    def status(self) -> str:
        """The stage, a progress bar, elapsed and remaining time, what was found so far, and where it runs."""
        now = time.perf_counter()
        elapsed = format_seconds(now - self.started)
        if self.state == "running":
            index = self.stages.index(self.stage) + 1 if self.stage in self.stages else 0
            name = STAGES.get(self.stage, "Preparing")
            head = f"Stage {index} of {len(self.stages)}: {name}" if index else name
            fraction = self.step / self.total if self.total else 0.0
            timing = f"elapsed {elapsed}"
            if self.step and self.total:
                left = (now - self.stage_started) / self.step * (self.total - self.step)
                timing += f" · about {format_seconds(left)} left in this stage"
                head += f" (step {self.step:,} of {self.total:,})"
            bar = f'<progress value="{fraction:.3f}" max="1" style="width:100%"></progress>'
        elif self.state == "example":
            head, timing, bar = "Stored example", "recorded", ""
        else:
            head = {"done": "Done", "stopped": "Stopped", "failed": "Failed"}[self.state]
            timing, bar = f"took {elapsed}", ""
        lines = [f"<b>{html.escape(head)}</b>", bar, f"{html.escape(timing)} · on {html.escape(self.device)}"]
        if self.note and self.state != "done":
            lines.append(html.escape(self.note))
        if self.story:
            lines.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in self.story) + "</ul>")
        if self.curve_images:
            lines.append(
                f"<small>Live accuracy: a fixed stratified subset of {self.curve_images:,} test images. Final "
                f"numbers: the full test split ({self.eval_images:,} images).</small>"
            )
        return '<div class="dfkd-status">' + "".join(f"<div>{line}</div>" for line in lines if line) + "</div>"


def kept_words(kept_epoch: int, epochs: int) -> str:
    """The guard's choice as the story tells it."""
    if kept_epoch == 0:
        return (
            "Recovery did not beat the start: no epoch came closer to the teacher on the held-out dreams, so the "
            "student you get is the pruned one, unchanged by distillation."
        )
    where = "the last epoch" if kept_epoch == epochs else f"epoch {kept_epoch} of {epochs}"
    return f"Judged on held-out dreams alone (no labels), {where} answers most like the teacher: that student is kept."


def speedup_words(outcome: Outcome) -> str:
    """The student's measured CPU speed-up over the teacher, e.g. "1.34x as fast at batch 256, 0.95x at batch 1"."""
    teacher, student = outcome.latency_ms.get("teacher", {}), outcome.latency_ms.get("recovered", {})
    ratios = [(b, teacher[b] / student[b]) for b in sorted(teacher, reverse=True) if student.get(b)]
    return ", ".join(
        f"{x:.2f}x as fast at batch {b}" if i == 0 else f"{x:.2f}x at batch {b}" for i, (b, x) in enumerate(ratios)
    )


def latency_words(per_batch: dict[int, float]) -> str:
    """Median CPU milliseconds per forward pass, by batch size: "1.9 ms (batch 1) · 177 ms (batch 256)"."""
    return " · ".join(f"{ms:.3g} ms (batch {b})" for b, ms in sorted(per_batch.items())) or "-"


def summary_rows(outcome: Outcome) -> list[list[str]]:
    """Teacher, pruned, refit (when the recipe refits), recovered and noise baseline: accuracy,
    nonzero parameters, MACs, size on disk and CPU latency.

    The pruned, recovered and noise students share one shape, mask and file layout, so they share
    the parameter count, MACs, checkpoint size and latency; only the recovered one is saved (and zipped).
    """

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}%"

    def macs(count: int) -> str:
        return f"{count / 1e6:,.1f}M" if count else "-"

    student = [
        f"{outcome.student_nonzero:,}",
        macs(outcome.student_macs),
        format_bytes(outcome.student_bytes),
    ]
    student_latency = latency_words(outcome.latency_ms.get("recovered", {}))
    teacher = [
        f"{outcome.teacher_nonzero:,}",
        macs(outcome.teacher_macs),
        format_bytes(outcome.teacher_bytes),
        format_bytes(outcome.teacher_zipped),
        latency_words(outcome.latency_ms.get("teacher", {})),
    ]
    rows = [
        ["Teacher (dense)", pct(outcome.teacher_acc), *teacher],
        ["Pruned, no recovery", pct(outcome.pruned_acc), *student, "-", student_latency],
    ]
    if outcome.refit_acc is not None:
        rows.append(["Refit on dreams, before distillation", pct(outcome.refit_acc), *student, "-", student_latency])
    recovered_zipped = format_bytes(outcome.student_zipped)
    rows.append(
        ["Recovered: distillation on dreams", pct(outcome.recovered_acc), *student, recovered_zipped, student_latency]
    )
    rows.append(["Baseline: same recipe on noise", pct(outcome.noise_acc), *student, "-", student_latency])
    return rows
