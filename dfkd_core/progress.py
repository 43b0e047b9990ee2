"""Events as progress bars and lines of text: what the CLI prints and the notebooks show.

:class:`ProgressBars` is a callback for :func:`dfkd_core.run_recovery` (or any stage's
``callback=``): one tqdm bar per stage that counts steps, one line per measurement or notice.
``tqdm.auto`` draws a widget in a notebook and a text bar in a terminal.
"""

from __future__ import annotations

from typing import IO, Any

from .events import Event, Metric, MetricLogged, Notice, Progress, StageFinished, StageStarted

__all__ = ["ProgressBars", "describe_metric"]


def describe_metric(event: MetricLogged) -> str:
    """One line for a measurement, e.g. ``[distill] recovered curve_accuracy (epoch 3): 81.20``."""
    per_epoch = event.metric in (Metric.CURVE_ACCURACY, Metric.HOLDOUT_AGREEMENT)
    epoch = f" (epoch {event.step})" if per_epoch and event.step else ""
    value = f"{event.value:.2f}"
    return f"[{event.stage}] {event.network} {event.metric}{epoch}: {value}"


class ProgressBars:
    """A callback drawing pipeline events: bars for stages with steps, lines for everything else."""

    def __init__(self, quiet: bool = False, file: IO[str] | None = None):
        from tqdm.auto import tqdm

        self._tqdm, self.quiet, self.file = tqdm, quiet, file
        self.bar: Any = None

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=self.file)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Notice):
            self.write(f"note: {event.message}")
        elif isinstance(event, StageFinished):
            self.close()
        elif self.quiet:
            return
        elif isinstance(event, StageStarted):
            self.close()
            self.write(f"[{event.stage}] {event.description}")
            if event.total:
                self.bar = self._tqdm(
                    total=event.total, desc=str(event.stage), unit="step", file=self.file, dynamic_ncols=True
                )
        elif isinstance(event, Progress) and self.bar is not None:
            if event.total != self.bar.total:  # a stage that learned its length on the way (fewer probes)
                self.bar.total = event.total
            self.bar.update(event.step - self.bar.n)
            if event.metrics:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in event.metrics.items()}, refresh=False)
        elif isinstance(event, MetricLogged):
            self.write(describe_metric(event))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
