"""Pretrained teachers: a registry of checkpoint records, kept apart from the architectures.

A teacher is named either by a registry id (``"akamaster/resnet20"``, ``"chenyaofo/cifar10_vgg11_bn"``)
or by a local checkpoint path. Registry weights load through
:func:`torch.hub.load_state_dict_from_url` with ``check_hash=True`` - the sha256 prefix sits in
each file name - so a pre-populated ``$TORCH_HOME/hub/checkpoints`` works offline. Every load
uses ``weights_only=True``; nothing in a checkpoint is ever executed.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .architectures import create_model, list_architectures

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CIFAR10_CLASSES",
    "FAMILIES",
    "Normalization",
    "PretrainedTeacher",
    "Teacher",
    "cached_weights_path",
    "file_sha256",
    "get_pretrained",
    "list_teachers",
    "load_checkpoint",
    "load_teacher",
    "save_checkpoint",
]

FAMILIES = ("ResNet", "VGG", "MobileNet")  # architecture families of the registry, in the order menus list them
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".tar", ".bin")  # file endings taken for checkpoints
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalization ``(pixels - mean) / std`` for pixels in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        finite = all(math.isfinite(v) for v in (*self.mean, *self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or not finite or min(self.std) <= 0:
            raise ValueError(
                f"normalization needs 3 finite means and 3 finite positive stds, got mean={self.mean} std={self.std}"
            )

    @classmethod
    def parse(cls, spec: str | Normalization | dict[str, Any]) -> Normalization:
        """Accepts ``"imagenet"``, ``"cifar10"``, ``"m1,m2,m3,s1,s2,s3"`` or ``{"mean": ..., "std": ...}``."""
        if isinstance(spec, Normalization):
            return spec
        if isinstance(spec, dict):
            try:
                return cls(tuple(map(float, spec["mean"])), tuple(map(float, spec["std"])))  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"normalization record {spec!r} needs 'mean' and 'std' lists of 3 numbers") from None
        named = {"imagenet": IMAGENET, "cifar10": CIFAR10}
        if spec.lower() in named:
            return named[spec.lower()]
        try:
            numbers = [float(v) for v in spec.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) != 6:
            raise ValueError(
                f"unknown normalization {spec!r}; use 'imagenet', 'cifar10' or six numbers 'm1,m2,m3,s1,s2,s3'"
            )
        return cls(tuple(numbers[:3]), tuple(numbers[3:]))  # type: ignore[arg-type]

    def _shaped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self._shaped(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._shaped(x)
        return x * std + mean

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10 = Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@dataclass(frozen=True)
class PretrainedTeacher:
    """One published checkpoint: where it lives and what it needs, as data (the timm/torchvision way)."""

    id: str  # "<source>/<name>", the one string users type
    arch: str  # an architecture of dfkd_core.architectures
    url: str  # download address; the file name carries the first 8 hex digits of its sha256
    normalization: Normalization  # what the checkpoint was trained with
    reported_acc: float  # top-1 % on the original CIFAR-10 test set, as its authors report it
    num_params: int  # parameter count, checked against the architecture by the tests
    license: str
    homepage: str
    classes: tuple[str, ...] = field(default=CIFAR10_CLASSES)

    @property
    def family(self) -> str:
        return next(f for f in FAMILIES if f.lower() in self.arch.lower())


_REGISTRY: dict[str, PretrainedTeacher] = {}


def _register(record: PretrainedTeacher) -> None:
    if record.id in _REGISTRY:
        raise RuntimeError(f"teacher {record.id!r} is registered twice")
    if record.arch not in list_architectures():
        raise RuntimeError(f"teacher {record.id!r} names unknown architecture {record.arch!r}")
    _REGISTRY[record.id] = record


_CHENYAOFO = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"
for _name, _hash, _params, _acc in (
    ("resnet20", "4118986f", 272474, 92.60),
    ("resnet32", "ef93fc4d", 466906, 93.53),
    ("resnet44", "2a3cabcb", 661338, 94.01),
    ("resnet56", "187c023a", 855770, 94.37),
    ("vgg11_bn", "eaeebf42", 9756426, 92.79),
    ("vgg13_bn", "c01e4a43", 9941322, 94.00),
    ("vgg16_bn", "6ee7ea24", 15253578, 94.16),
    ("vgg19_bn", "57191229", 20565834, 93.91),
    ("mobilenetv2_x0_5", "ca14ced9", 700490, 92.88),
    ("mobilenetv2_x0_75", "a53c314e", 1368234, 93.72),
    ("mobilenetv2_x1_0", "fe6a5b48", 2236682, 93.79),
    ("mobilenetv2_x1_4", "3bbbd6e2", 4333706, 94.22),
):
    _release = _name.split("_")[0].rstrip("0123456789")  # resnet, vgg or mobilenetv
    _release = "mobilenetv2" if _release == "mobilenetv" else _release
    _register(
        PretrainedTeacher(
            id=f"chenyaofo/cifar10_{_name}",
            arch=_name,
            url=f"{_CHENYAOFO}/{_release}/cifar10_{_name}-{_hash}.pt",
            normalization=CIFAR10,
            reported_acc=_acc,
            num_params=_params,
            license="BSD-3-Clause",
            homepage="https://github.com/chenyaofo/pytorch-cifar-models",
        )
    )

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"
for _depth, _hash, _params, _acc in (
    (20, "12fca82f", 269722, 91.73),
    (32, "d509ac18", 464154, 92.63),
    (44, "014dd654", 658586, 93.10),
    (56, "4bfd9763", 853018, 93.39),
):
    _register(
        PretrainedTeacher(
            id=f"akamaster/resnet{_depth}",
            arch=f"akamaster_resnet{_depth}",
            url=f"{_AKAMASTER}/resnet{_depth}-{_hash}.th",
            normalization=IMAGENET,
            reported_acc=_acc,
            num_params=_params,
            license="BSD-2-Clause",
            homepage="https://github.com/akamaster/pytorch_resnet_cifar10",
        )
    )


def cached_weights_path(record: PretrainedTeacher) -> Path:
    """Where :func:`torch.hub.load_state_dict_from_url` keeps (and looks for) a registry checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(record.url).path).name


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in blocks: the identity of a checkpoint or a dream set."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_teachers(pattern: str = "*") -> list[str]:
    """Registry ids matching a shell-style ``pattern``, e.g. ``list_teachers("*resnet*")``."""
    return sorted(t for t in _REGISTRY if fnmatch(t, pattern))


def get_pretrained(teacher_id: str) -> PretrainedTeacher:
    """The registry record for ``teacher_id``; a clear error with close matches otherwise."""
    try:
        return _REGISTRY[teacher_id]
    except KeyError:
        close = get_close_matches(teacher_id, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown teacher {teacher_id!r}: not a registry id and not an existing checkpoint file.{hint} "
            f"Registry ids: {', '.join(list_teachers())} (list them with `dfkd teachers`)."
        ) from None


@dataclass
class Teacher:
    """A loaded, eval-mode classifier together with what is needed to feed it."""

    model: nn.Module
    arch: str
    normalization: Normalization
    classes: tuple[str, ...]
    source: str  # registry id or checkpoint path
    sha256: str | None = None  # of the weights file it was loaded from (None = built in memory)
    named: bool = True  # whether ``classes`` are known names (False: a checkpoint that records none)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _clean_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` containers and strip DataParallel's ``module.`` prefixes."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("file holds no state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, tolerating only absent ``num_batches_tracked`` buffers (old checkpoints)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong)):
            if keys:
                more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
                parts.append(f"{label}: {', '.join(keys[:4])}{more}")
        raise ValueError(f"checkpoint {source} does not match the architecture: " + "; ".join(parts))
    full = {k: state.get(k, expected[k]) for k in expected}
    _check_values(full, source)
    model.load_state_dict(full)


def _check_values(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights no network can compute with (NaN, infinite, a negative BatchNorm variance) at load, naming
    the first bad tensor: found later, they would fail in dreaming and be blamed on its settings."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"checkpoint {source} is damaged: {name} holds NaN or infinite values")
        if name.endswith("running_var") and bool((value < 0).any()):
            raise ValueError(f"checkpoint {source} is damaged: {name} holds a negative variance")


def _widths(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every Conv2d, Linear and BatchNorm layer."""
    return {
        name: int(m.weight.shape[0])
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)) and m.weight is not None
    }


def _reshape_to_record(model: nn.Module, state: dict[str, torch.Tensor], record: Any, path: Path) -> None:
    """Shrink ``model`` to a channel-pruned checkpoint's widths, after checking the file agrees with itself."""
    from .channels import reshape_like

    full = _widths(model)
    if not isinstance(record, dict) or any(
        not isinstance(n, int) or name not in full or not 0 < n <= full[name] for name, n in record.items()
    ):
        raise ValueError(f"checkpoint {str(path)!r} records channel widths that do not fit its architecture")
    saved = {name: int(state[f"{name}.weight"].shape[0]) for name in record if f"{name}.weight" in state}
    if saved != record:
        raise ValueError(f"checkpoint {str(path)!r}: the recorded channel widths disagree with its weights")
    reshape_like(model, state)


def _num_classes_of(state: dict[str, torch.Tensor]) -> int:
    """Output size of the final linear layer: the last 2-D weight in the state dict."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(matrices[-1].shape[0]) if matrices else 10


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, truncated pickle, disallowed global, ...
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: not a valid PyTorch checkpoint or not loadable with "
            f"weights_only=True ({type(err).__name__}: {(str(err).splitlines() or ['empty file?'])[0][:200]})"
        ) from None


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    normalization: str | Normalization | None = None,
    classes: tuple[str, ...] | None = None,
) -> Teacher:
    """A teacher from a local checkpoint file.

    ``arch`` and ``normalization`` may be omitted when the file records them (dfkd's own
    checkpoints and the JPEG teachers do); given explicitly they must agree with the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    raw = _torch_load(path)
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(raw).__name__}, not a state dict")
    state = _clean_state_dict(raw)
    recorded_arch = raw.get("arch") if isinstance(raw.get("arch"), str) else None
    if arch and recorded_arch and arch != recorded_arch:
        raise ValueError(f"--arch {arch!r} conflicts with the architecture recorded in {path.name}: {recorded_arch!r}")
    arch = arch or recorded_arch
    if not arch:
        raise ValueError(
            f"checkpoint {path.name} does not record its architecture; pass one of: {', '.join(list_architectures())}"
        )
    if normalization is None and isinstance(raw.get("normalization"), dict):
        normalization = Normalization.parse(raw["normalization"])
    if normalization is None:
        raise ValueError(
            f"checkpoint {path.name} does not record its input normalization; "
            "pass 'imagenet', 'cifar10' or six numbers 'm1,m2,m3,s1,s2,s3'"
        )
    recorded_classes = raw.get("classes")
    if isinstance(recorded_classes, (list, tuple)) and not all(isinstance(c, str) for c in recorded_classes):
        raise ValueError(
            f"checkpoint {path.name} records classes that are not all names (strings): {recorded_classes!r:.200}"
        )
    classes = classes or (tuple(recorded_classes) if isinstance(recorded_classes, (list, tuple)) else None)
    named = classes is not None
    num_classes = len(classes) if classes else _num_classes_of(state)
    if classes is None:
        classes = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes))
    model = create_model(arch, num_classes=num_classes)
    if raw.get("channels") is not None:  # a student that lost whole channels: its layers take the saved widths
        _reshape_to_record(model, state, raw["channels"], path)
    _load_weights(model, state, str(path))
    norm = Normalization.parse(normalization)
    return Teacher(model.eval(), arch, norm, classes, str(path), file_sha256(path), named)


def load_teacher(
    teacher: str,
    arch: str | None = None,
    normalization: str | Normalization | None = None,
    progress: bool = True,
) -> Teacher:
    """A teacher by registry id (downloaded once, hash-checked) or by checkpoint path.

    Example::

        teacher = load_teacher("akamaster/resnet20")
        logits = teacher.model(teacher.normalization.normalize(pixels))
    """
    if teacher not in _REGISTRY and (Path(teacher).expanduser().is_file() or teacher.endswith(CHECKPOINT_SUFFIXES)):
        return load_checkpoint(teacher, arch, normalization)
    record = get_pretrained(teacher)
    if arch and arch != record.arch:
        raise ValueError(f"teacher {teacher!r} is a {record.arch}; drop --arch or set it to {record.arch!r}")
    try:
        raw = torch.hub.load_state_dict_from_url(
            record.url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch is a RuntimeError
        cache = cached_weights_path(record)
        raise ValueError(
            f"cannot fetch weights for {teacher!r} from {record.url} ({err}). Offline, place the file at {cache} "
            "or use a local checkpoint file instead (with its architecture and input normalization)."
        ) from None
    model = create_model(record.arch, num_classes=len(record.classes))
    _load_weights(model, _clean_state_dict(raw), record.url)
    norm = Normalization.parse(normalization) if normalization else record.normalization
    cached = cached_weights_path(record)
    return Teacher(
        model.eval(), record.arch, norm, record.classes, teacher, file_sha256(cached) if cached.is_file() else None
    )


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, teacher: Teacher, **extra: Any) -> Path:
    """Write ``model`` with everything needed to load it again without flags (arch, normalization,
    classes, and the widths of layers that lost channels), atomically: a crash never leaves a
    half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if any(re.search(r"_(orig|mask)$", k) for k in state):
        raise ValueError("model still carries pruning masks; call make_permanent(model) before saving")
    full = _widths(create_model(teacher.arch, num_classes=teacher.num_classes))
    slimmer = {name: n for name, n in _widths(model).items() if name in full and n != full[name]}
    record = {
        "state_dict": state,
        "arch": teacher.arch,
        "channels": slimmer or None,  # widths of the layers that lost channels (None: the architecture's own)
        "normalization": teacher.normalization.as_dict(),
        "classes": list(teacher.classes),
        **extra,
    }
    partial = path.with_name(f".{path.name}.partial")
    torch.save(record, partial)
    os.replace(partial, path)
    return path
