"""Evaluation data: decoded once, cached as uint8 tensors, normalized only at use.

Two kinds of sources are understood, both named by one string:

* ``"cifar10"`` - the original CIFAR-10 via :class:`torchvision.datasets.CIFAR10`, downloaded
  into :func:`default_data_dir` on first use when online;
* a directory in :class:`torchvision.datasets.ImageFolder` layout, either a root holding
  ``test/`` (and optionally ``train/``) or a folder of class sub-folders used as-is.

The data-free guarantee lives here too: :func:`load_eval_set` only ever touches the held-out
split, and :func:`load_train_subset` - the one function that reads training images - exists
solely for the clearly labelled real-image baseline (the same recipe on real images, not data-free).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ._files import save_atomically

__all__ = ["ImageSet", "load_eval_set", "load_train_subset", "default_data_dir", "train_split_available"]

_IMAGE_SUFFIXES = tuple(ext.lower() for ext in IMG_EXTENSIONS)


def default_data_dir() -> Path:
    """Where datasets and decoded-tensor caches live: ``$DFKD_DATA_DIR`` or ``~/.cache/dfkd``."""
    return Path(os.environ.get("DFKD_DATA_DIR", Path.home() / ".cache" / "dfkd"))


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 tensors ``(N, 3, H, W)`` in [0, 255] with integer labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str  # human-readable origin, e.g. "CIFAR-10 test" or the folder path

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 of the pixels, labels and class names: the same images give the same value, wherever they lie."""
        digest = hashlib.sha256()
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.to(torch.int64).contiguous().numpy().tobytes())
        digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()

    def stratified_subset(self, per_class: int, seed: int = 0) -> ImageSet:
        """A fixed subset with (up to) ``per_class`` images of every class, chosen by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(len(self.classes)):
            members = torch.nonzero(self.labels == c).flatten()
            picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        index = torch.cat(picks).sort().values
        return ImageSet(self.images[index], self.labels[index], self.classes, f"{self.name} (subset of {len(index)})")


def _is_image(path: str) -> bool:
    return path.lower().endswith(_IMAGE_SUFFIXES)


def _image_files(root: Path) -> list[str]:
    """The image files below ``root`` in sorted order, links followed but every real folder visited once (a link
    loop would never end) and regular files only (a FIFO named ``x.jpg`` would block the read forever)."""
    seen: set[tuple[int, int]] = set()
    folders = []
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        where = os.stat(dirpath)
        if (where.st_dev, where.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((where.st_dev, where.st_ino))
        folders.append((dirpath, sorted(files)))
    return [
        path
        for dirpath, files in sorted(folders)
        for path in (os.path.join(dirpath, f) for f in files if _is_image(f))
        if os.path.isfile(path)
    ]


def _scan_class_folders(folder: Path) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """Class names (sorted sub-folder names) and (file, label) pairs, like ImageFolder.

    Hidden folders (``.ipynb_checkpoints``, ``.git``, ...) are not classes.
    """
    classes = tuple(sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")))
    samples = [(path, label) for label, name in enumerate(classes) for path in _image_files(folder / name)]
    if not classes or not samples:
        raise ValueError(
            f"no images found in {str(folder)!r}: expected class sub-folders (ImageFolder layout, e.g. "
            f"{folder}/cat/0001.jpg) holding files ending in {', '.join(_IMAGE_SUFFIXES)}"
        )
    return classes, samples


def _decode(samples: list[tuple[str, int]], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.empty(len(samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as file:
                image = torch.from_numpy(np.asarray(file.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot decode image {path!r} ({err}); remove or replace the file") from None
        if image.shape[-2:] != (image_size, image_size):
            image = _resize_center_crop(image, image_size)
        images[i] = image
    return images, torch.tensor([label for _, label in samples], dtype=torch.long)


def _resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    resized = F.interpolate(
        image[None].float(),
        size=(max(size, round(h * scale)), max(size, round(w * scale))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0]
    top, left = (resized.shape[1] - size) // 2, (resized.shape[2] - size) // 2
    return resized[:, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def _load_folder(folder: Path, image_size: int, cache: bool) -> ImageSet:
    classes, samples = _scan_class_folders(folder)
    fingerprint = hashlib.sha256(f"{image_size}".encode())
    for path, label in samples:
        stat = os.stat(path)
        fingerprint.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    key = fingerprint.hexdigest()[:20]
    cache_file = default_data_dir() / "decoded" / f"{key}.pt"
    if cache and cache_file.is_file():
        try:
            stored = torch.load(cache_file, weights_only=True)
            result = ImageSet(stored["images"], stored["labels"], tuple(stored["classes"]), str(folder))
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache_file.unlink(missing_ok=True)
        else:
            return result
    images, labels = _decode(samples, image_size)
    result = ImageSet(images, labels, classes, str(folder))
    if cache:  # two threads (or processes) decoding the same folder at once: the last complete file wins
        save_atomically({"images": images, "labels": labels, "classes": list(classes)}, cache_file)
    return result


@functools.cache
def _one_split_cifar10() -> type:
    """torchvision's CIFAR10, hash-checking only the split it reads.

    The stock class hashes all six batch files whichever split is asked for, so loading the test
    split would read every training batch - bytes the data-free path must never touch.
    """
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    class OneSplitCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            files = self.train_list if self.train else self.test_list
            folder = os.path.join(self.root, self.base_folder)
            return all(check_integrity(os.path.join(folder, name), md5) for name, md5 in files)

    return OneSplitCIFAR10


def _cifar10(train: bool, download: bool) -> ImageSet:
    root = default_data_dir() / "cifar10"
    try:
        dataset = _one_split_cifar10()(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:
        raise ValueError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({err}). Connect to the internet, set "
            "DFKD_DATA_DIR to a folder holding cifar10/cifar-10-batches-py, or pass an ImageFolder directory."
        ) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(
        images, torch.tensor(dataset.targets), tuple(dataset.classes), f"CIFAR-10 {'train' if train else 'test'}"
    )


def _split_folder(data: str, split: str) -> Path:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise ValueError(f"data {data!r} is neither 'cifar10' nor an existing directory (ImageFolder root with test/)")
    if (root / split).is_dir():
        return root / split
    if split == "test":
        return root  # a bare folder of class sub-folders is the evaluation set itself
    raise FileNotFoundError(f"{root} has no {split}/ folder")


def load_eval_set(data: str, *, image_size: int = 32, download: bool = True, cache: bool = True) -> ImageSet:
    """The held-out evaluation split named by ``data`` ("cifar10" or an ImageFolder directory).

    Only the test split is read. Decoded folders are cached on disk (keyed by file names, sizes
    and modification times), so repeated evaluation costs no decoding.
    """
    if data.lower() == "cifar10":
        return _cifar10(train=False, download=download)
    return _load_folder(_split_folder(data, "test"), image_size, cache)


def train_split_available(data: str) -> bool:
    """Whether ``data`` has real training images (only the real-image baseline uses them)."""
    return data.lower() == "cifar10" or (Path(data).expanduser() / "train").is_dir()


def load_train_subset(
    data: str, per_class: int, *, seed: int = 0, image_size: int = 32, download: bool = True
) -> ImageSet:
    """``per_class`` real training images of each class - for the real-image baseline only (NOT data-free).

    Never called by the data-free recovery path; it exists to show what real data would buy.
    Only the chosen files are decoded.
    """
    if data.lower() == "cifar10":
        return _cifar10(train=True, download=download).stratified_subset(per_class, seed)
    folder = _split_folder(data, "train")
    classes, samples = _scan_class_folders(folder)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(len(classes)):
        members = [s for s in samples if s[1] == c]
        chosen += [members[i] for i in torch.randperm(len(members), generator=generator)[:per_class].tolist()]
    images, labels = _decode(chosen, image_size)
    return ImageSet(images, labels, classes, f"{folder} (real-image baseline subset of {len(chosen)})")
