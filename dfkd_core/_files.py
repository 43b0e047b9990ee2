"""Files written whole or not at all: what a cache shared by threads, processes and crashes needs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

READABLE = 0o644  # what a plain write leaves under the usual umask (mkstemp's own is 0o600: owner only)


def save_atomically(record: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(record)`` to ``path`` through a temporary file of its own in the same folder, moved into
    place in one step: two writers of the same path never write into, or move away, each other's half-written
    file (the last complete one wins), and a crash leaves the old file or none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    os.chmod(partial, READABLE)
    try:
        torch.save(record, partial)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path
