"""Files shared by threads, processes and crashes: written whole or not at all, and folders one run at a time."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

READABLE = 0o644  # what a plain write leaves under the usual umask (mkstemp's own is 0o600: owner only)


def write_atomically(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """``write(name)`` into a temporary file of its own in ``path``'s folder, then moved onto ``path`` in one step:
    two writers of the same path never write into, or move away, each other's half-written file (the last
    complete one wins), and a crash leaves the old file or none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    os.chmod(partial, READABLE)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


def save_atomically(record: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(record)`` to ``path``, whole or not at all (:func:`write_atomically`)."""
    return write_atomically(path, lambda name: torch.save(record, name))


LOCK_FILE = ".dfkd-run"  # in a folder a run writes to: the process id of the run that holds it


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def reserved(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``folder`` (made if missing, and removed again if it stays empty) for this process while the block
    runs: a second run that asks for it meanwhile gets a ``ValueError`` instead of mixing its files with this one's.
    A hold left by a process that died is taken over."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, READABLE)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and process_alive(owner):
                raise ValueError(
                    f"output folder {str(folder)!r} is in use by another run (process {owner}); "
                    "choose another --out, or wait for that run to end"
                ) from None
            lock.unlink(missing_ok=True)  # its run is gone: take the folder over
            continue
        with os.fdopen(handle, "w") as file:
            file.write(str(os.getpid()))
        break
    try:
        yield folder
    finally:
        lock.unlink(missing_ok=True)
        if made and not any(folder.iterdir()):  # a run that failed before writing anything leaves nothing behind
            folder.rmdir()
