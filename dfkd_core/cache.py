"""Work done once, reused: dream sets, and the noise baseline, keyed by everything they depend on.

Dreams depend on the teacher's weights, the dream recipe and the seed - not on the sparsity, the scope or the
granularity - so every run of one teacher can share them, and a second visitor of the app does not wait for
what the first one dreamed. Dreams with Adaptive DeepInversion on (``adi > 0``) depend on the student too,
and a teacher built in memory has no file to name it by: those are never cached.

Entries live in ``dreams/`` under :func:`~dfkd_core.data.default_data_dir` (``$DFKD_DATA_DIR``, else
``~/.cache/dfkd``; the app points it at a Space's persistent storage), one file per key, named by the key's
sha256. An entry is written whole or not at all, so two runs filling it at once leave one complete file; an
entry that does not load, or that was made with other settings than its name says, is removed and dreamed again.

The noise baseline (the recipe on Gaussian noise instead of dreams) gives the same curve every time for one
teacher, pruning, recipe, seed and evaluation split, and costs a quarter of a Quick run: its result is kept in
``baselines/`` beside the dreams, and shown as stored. The real-image baseline is never stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._files import write_atomically
from .data import default_data_dir
from .dream import DreamConfig, DreamSet
from .zoo import Teacher

__all__ = ["BaselineCache", "DreamCache"]

CACHE_FORMAT = 1  # part of every key: raised whenever dreaming changes what one recipe and seed make


def _name(key: dict[str, Any], suffix: str) -> str:
    """An entry's file name: the sha256 of its key (and of the cache's format)."""
    text = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True)
    return f"{hashlib.sha256(text.encode()).hexdigest()[:32]}{suffix}"


class DreamCache:
    """Dream sets on disk under ``root`` (default: ``dreams/`` of the data folder), found by teacher, recipe and seed."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_data_dir() / "dreams"

    @staticmethod
    def settings(teacher: Teacher, recipe: DreamConfig, seed: int) -> dict[str, Any]:
        """What dreams of ``teacher`` made with ``recipe`` and ``seed`` record as their settings: the key."""
        return {**asdict(recipe), "seed": seed, "teacher_sha256": teacher.sha256}

    @staticmethod
    def holds(teacher: Teacher, recipe: DreamConfig) -> bool:
        """Whether such dreams can be cached: their teacher has a file (a sha256) and no student shaped them."""
        return teacher.sha256 is not None and recipe.adi == 0

    def path(self, teacher: Teacher, recipe: DreamConfig, seed: int) -> Path:
        return self._entry(self.settings(teacher, recipe, seed))

    def _entry(self, settings: dict[str, Any]) -> Path:
        return self.root / _name(settings, ".pt")

    def adopt(self, file: str | Path) -> Path:
        """Put the dream set saved in ``file`` (made elsewhere: the app ships some) where a run of its teacher,
        recipe and seed finds it; returns the entry. ``ValueError`` when ``file`` does not record how it was made."""
        dreams = DreamSet.load(file)
        settings = dreams.settings or {}
        if not settings.get("teacher_sha256") or "seed" not in settings:
            raise ValueError(f"{file} does not record the teacher and seed that made it; it cannot be cached")
        entry = self._entry(settings)
        if not entry.is_file():
            dreams.save(entry)
        return entry

    def get(self, teacher: Teacher, recipe: DreamConfig, seed: int) -> tuple[DreamSet | None, str | None]:
        """The cached dreams, or None; and a sentence for the user when an entry had to be thrown away."""
        path = self.path(teacher, recipe, seed)
        if not path.is_file():
            return None, None
        try:
            dreams = DreamSet.load(path)
        except ValueError as err:
            path.unlink(missing_ok=True)
            return None, f"a cached dream set could not be read and was removed ({err}); dreaming again"
        if dreams.settings != self.settings(teacher, recipe, seed):
            path.unlink(missing_ok=True)
            return None, f"the cached dream set {path} was made with other settings and was removed; dreaming again"
        return dreams, None

    def put(self, teacher: Teacher, recipe: DreamConfig, seed: int, dreams: DreamSet) -> Path:
        """Store ``dreams`` (made by ``teacher`` with ``recipe`` and ``seed``) for the next run."""
        return dreams.save(self.path(teacher, recipe, seed))


class BaselineCache:
    """Noise-baseline results on disk under ``root`` (default: ``baselines/`` of the data folder): a curve (epoch,
    accuracy), the final accuracy and the kept epoch, found by the key of the run that made them."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_data_dir() / "baselines"

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / _name(key, ".json")

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result, or None; an unreadable entry, or one stored under another key, is removed."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text())
            if record["key"] == json.loads(json.dumps(key)):
                return record
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            pass
        path.unlink(missing_ok=True)
        return None

    def put(self, key: dict[str, Any], record: dict[str, Any]) -> Path:
        text = json.dumps({**record, "key": key}) + "\n"
        return write_atomically(self.path(key), lambda name: Path(name).write_text(text))


def age_in_words(path: Path) -> str:
    """How long ago ``path`` was written: "40 s", "3 min", "2 h" or "5 days"."""
    seconds = max(0.0, time.time() - path.stat().st_mtime)
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
