"""Every visitor's own run: its Stop flag and its downloads folder, found by Gradio's session hash.

A browser tab (or an API client) is one session. Its run writes the downloads into a folder of
its own under one root per app. The folder goes away when the session ends: Gradio's ``unload``
event fires when a tab closes (its heartbeat drops), and every new run also sweeps the sessions
that have been idle longer than :data:`SESSION_LIFETIME_S` (clients that never said goodbye).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from dfkd_core._files import process_alive

__all__ = ["SESSION_LIFETIME_S", "RunControl", "Sessions", "remove_abandoned_roots"]

SESSION_LIFETIME_S = 3600.0  # a session without a run for this long is over: its files are deleted
ROOT_PREFIX = "dfkd-demo-"  # every app's root folder in the system's temporary folder starts so
OWNER_FILE = "owner.pid"  # in each root: the process id of the app that made it


def remove_abandoned_roots(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete the root folders of apps that ended without cleaning up (killed, SIGTERM): those whose owner
    process is gone, or that name none. Returns what was removed."""
    removed = []
    for root in Path(parent or tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = None
        if root.is_dir() and (owner is None or not process_alive(owner)):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


def forget_served_copies(folder: Path) -> None:
    """Delete the copies of ``folder``'s files in Gradio's cache, where the page's downloads are served from (in a
    folder named by each file's hash): once a tab's run is gone, its files stop being downloadable too."""
    from gradio.processing_utils import hash_file
    from gradio.utils import get_upload_folder

    cache = Path(get_upload_folder())
    for file in folder.iterdir() if folder.is_dir() else ():
        if file.is_file():
            shutil.rmtree(cache / hash_file(file), ignore_errors=True)


class RunControl:
    """One session's state: its Stop flag, whether a run waits in the queue or goes on, and the folder
    holding its downloads."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.queued = False  # admitted to the queue, not yet started
        self.running = False
        self.out_dir: Path | None = None
        self.last_used = time.monotonic()

    def new_run_dir(self, root: Path) -> Path:
        """A fresh folder for this run's downloads (the previous run's is deleted)."""
        self.discard()
        self.last_used = time.monotonic()
        self.out_dir = Path(tempfile.mkdtemp(prefix="run-", dir=root))
        return self.out_dir

    def discard(self) -> None:
        """Delete the current run's downloads, and the copies Gradio's cache serves them from."""
        if self.out_dir is not None:
            forget_served_copies(self.out_dir)
            shutil.rmtree(self.out_dir, ignore_errors=True)
        self.out_dir = None

    def close(self) -> None:
        """The session ended: stop its run and delete its files."""
        self.stop_requested = True
        self.discard()


class Sessions:
    """The app's sessions by Gradio session hash, and the root folder their runs write into."""

    def __init__(self, lifetime: float = SESSION_LIFETIME_S):
        self.lifetime = lifetime
        self._root: Path | None = None
        self._controls: dict[str, RunControl] = {}
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The folder holding every run folder of this app (made at the first run)."""
        if self._root is None:
            remove_abandoned_roots()
            self._root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
            (self._root / OWNER_FILE).write_text(str(os.getpid()))
        return self._root

    def __getitem__(self, session: str) -> RunControl:
        with self._lock:
            control = self._controls.setdefault(session, RunControl())
            control.last_used = time.monotonic()
            return control

    def waiting(self) -> int:
        """How many sessions have a run admitted to the queue and not yet started."""
        with self._lock:
            return sum(control.queued for control in self._controls.values())

    def close(self, session: str) -> None:
        """End a session (its tab closed): stop its run and delete its files."""
        with self._lock:
            control = self._controls.pop(session, None)
        if control is not None:
            control.close()

    def sweep(self) -> list[str]:
        """End every session idle (no run going on) for longer than the lifetime; returns their hashes."""
        now = time.monotonic()
        with self._lock:
            stale = [
                s
                for s, c in self._controls.items()
                if not (c.running or c.queued) and now - c.last_used > self.lifetime
            ]
        for session in stale:
            self.close(session)
        return stale

    def close_all(self) -> None:
        """The app shuts down: end every session and remove the root."""
        for session in list(self._controls):
            self.close(session)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
