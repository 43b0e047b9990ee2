"""Shared fixtures: tiny generated data and checkpoints for fast tests, and the real assets.

Real assets live in ``../shared`` beside the project (override with ``DFKD_SHARED``). Where they
are missing, asset tests skip with the reason - unless ``DFKD_REQUIRE_ASSETS=1`` (set by CI),
where a missing asset fails the run.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfkd_core import create_model, save_checkpoint
from dfkd_core.zoo import CIFAR10, CIFAR10_CLASSES, Teacher

SHARED = Path(os.environ.get("DFKD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REQUIRE_ASSETS = os.environ.get("DFKD_REQUIRE_ASSETS") == "1"


_FORBIDDEN: tuple[str, ...] = ()  # real paths below which no file may be opened or listed (see forbid_reads)
_AUDITED = ("open", "os.listdir", "os.scandir")  # the audit events of every file open and directory listing


def _tripwire(event: str, args: tuple) -> None:
    """Audit hook: refuse any open or listing below a forbidden folder, whichever Python or C API does it
    (``open``, ``io.open``, ``os.open``, ``Path.read_bytes``, PIL, ``torch.load``, ``os.scandir``, ...)."""
    if not _FORBIDDEN or event not in _AUDITED or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if any(path == root or path.startswith(root + os.sep) for root in _FORBIDDEN):
        raise AssertionError(f"the recovery path touched training data: {path} ({event})")


sys.addaudithook(_tripwire)  # audit hooks stay for the process; the hook is idle while nothing is forbidden


def forbid_reads(monkeypatch, *folders: Path) -> None:
    """Until the test ends, every open or listing below ``folders`` raises ``AssertionError``."""
    monkeypatch.setattr(sys.modules[__name__], "_FORBIDDEN", tuple(os.path.realpath(f) for f in folders))


def shared_asset(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        message = f"real asset {path} is missing (set DFKD_SHARED to the shared/ folder)"
        if REQUIRE_ASSETS:
            pytest.fail(message + "; DFKD_REQUIRE_ASSETS=1 makes this an error")
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own dataset cache."""
    monkeypatch.setenv("DFKD_DATA_DIR", str(tmp_path_factory.mktemp("dfkd-cache")))


@pytest.fixture(autouse=True)
def quick_latency(monkeypatch):
    """Runs time their networks at small batches for few rounds: the same code, seconds fewer per run."""
    measuring = importlib.import_module("dfkd_core.evaluate")  # the module, not the function it exports
    monkeypatch.setattr(measuring, "LATENCY_BATCHES", (1, 4))
    monkeypatch.setattr(measuring, "LATENCY_REPEATS", 3)
    monkeypatch.setattr(measuring, "LATENCY_MIN_SECONDS", 0.0)


def write_image_folder(root: Path, per_class: int, classes=CIFAR10_CLASSES, size: int = 32, seed: int = 0) -> Path:
    """Class sub-folders of random PNGs whose mean colour depends on the class."""
    generator = torch.Generator().manual_seed(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = torch.full((3, 1, 1), 25.0 * (c % 10))
            image = (base + 60 * torch.rand(3, size, size, generator=generator)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / name / f"{i:04d}.png")
    return root


@pytest.fixture
def image_root(tmp_path) -> Path:
    """An ImageFolder root with test/ (4 images per class) and train/ (6 per class)."""
    write_image_folder(tmp_path / "data" / "test", 4, seed=1)
    write_image_folder(tmp_path / "data" / "train", 6, seed=2)
    return tmp_path / "data"


@pytest.fixture
def test_only_root(tmp_path) -> Path:
    write_image_folder(tmp_path / "test_only" / "test", 3, seed=3)
    return tmp_path / "test_only"


def tiny_teacher(seed: int = 0) -> Teacher:
    """A randomly initialized ResNet-20 whose BatchNorm layers hold real running statistics."""
    torch.manual_seed(seed)
    model = create_model("resnet20")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # cumulative average: running statistics equal those of the data seen
    model.train()
    with torch.no_grad():
        for _ in range(3):
            smooth = F.interpolate(torch.rand(32, 3, 4, 4), size=32, mode="bilinear")  # image-like, not noise
            model(CIFAR10.normalize(smooth))
    for m in bns:
        m.momentum = 0.1
    return Teacher(model.eval(), "resnet20", CIFAR10, CIFAR10_CLASSES, "tiny")


@pytest.fixture
def teacher() -> Teacher:
    return tiny_teacher()


@pytest.fixture
def teacher_checkpoint(tmp_path, teacher) -> Path:
    return save_checkpoint(tmp_path / "teacher.pt", teacher.model, teacher)
