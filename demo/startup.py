"""Start-up that never blocks the page: first-use downloads run in the background after launch.

A Space must answer within its start-up limit, and a visitor should see the page at once, while
CIFAR-10 (170 MB, from a host that can be slow) and the default teacher download. The app
launches first; :class:`Preparation` works through its steps in a thread, says where it is in
plain words (the page polls :meth:`Preparation.status`), and a Run waits for it to finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Preparation", "Step"]

log = logging.getLogger("dfkd.demo")


@dataclass(frozen=True)
class Step:
    """One thing to get ready: what the page says while it runs, the work, and how far it is (optional)."""

    message: str
    action: Callable[[], object]
    progress: Callable[[], str] | None = None  # e.g. "42 of 170 MB", asked for each time the page polls


class Preparation:
    """Runs its steps once, in order, in a background thread; a failed step ends the preparation."""

    def __init__(self, steps: Sequence[Step], explain: Callable[[BaseException], str] = str):
        self.steps = tuple(steps)
        self.explain = explain  # a failure in plain words
        self.current: Step | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name="dfkd-preparation", daemon=True)
        if not self.steps:
            self._done.set()

    def start(self) -> Preparation:
        """Begin in the background (once); returns self."""
        if self.steps and self.started_at is None:
            self.started_at = time.monotonic()
            self._thread.start()
        return self

    def _work(self) -> None:
        for step in self.steps:
            self.current = step
            log.info("start-up: %s", step.message)
            try:
                step.action()
            except Exception as err:  # the page and every Run show it; the log keeps the traceback
                log.exception("start-up step failed: %s", step.message)
                self.error = self.explain(err)
                break
        self.current = None
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the preparation has ended (True) or ``timeout`` seconds passed (False)."""
        return self._done.wait(timeout)

    def status(self) -> str:
        """Where the preparation is, in plain words ("" once it finished well)."""
        if self.error:
            return f"Getting ready failed: {self.error}"
        if self.done:
            return ""
        step = self.current
        if step is None:
            return "Getting ready..."
        elapsed = time.monotonic() - (self.started_at or time.monotonic())
        progress = step.progress() if step.progress else ""
        return f"Getting ready: {step.message}" + (f" ({progress})" if progress else "") + f", {elapsed:.0f} s so far."
