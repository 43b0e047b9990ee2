"""The run side of the app: controls -> :class:`RecoveryConfig`, and the worker that drives the pipeline.

The worker, :func:`stream_run`, is the only code that touches a GPU. It passes on the events of
:func:`dfkd_core.recover` (whose payloads are CPU tensors and plain numbers), thinned to a few
per second so the page stays responsive and a Stop is noticed quickly, and it ends with an
:class:`Outcome` - numbers and file paths - instead of the result object, which holds models.
When the ``spaces`` package is importable (Hugging Face ZeroGPU), the worker is wrapped in
``spaces.GPU`` with a duration sized to the run; elsewhere it runs unchanged.

Errors never leave this module as tracebacks: the worker yields a :class:`Failure` whose
message says, in plain words, what went wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from dfkd_core.cli import write_outputs
from dfkd_core.data import default_data_dir, load_eval_set
from dfkd_core.events import Event, Finished, ImagesReady, Progress
from dfkd_core.pipeline import PRESETS, Recipe, RecoveryConfig, RecoveryResult, recover, with_overrides
from dfkd_core.prune import count_nonzero_parameters
from dfkd_core.zoo import get_pretrained, list_teachers, load_teacher, save_checkpoint

try:  # Hugging Face ZeroGPU: present on Spaces, absent (and not needed) everywhere else
    import spaces
except ImportError:
    spaces = None

__all__ = [
    "BUDGETS",
    "Budget",
    "Failure",
    "InputError",
    "Outcome",
    "RunSettings",
    "find_local_teachers",
    "friendly_error",
    "parse_settings",
    "preparations",
    "stream_run",
    "teacher_choices",
]

log = logging.getLogger("dfkd.demo")

FAMILIES = ("ResNet", "VGG", "MobileNet")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th")
UPDATE_INTERVAL_S = 1.0  # at most one progress and one image update per this many seconds
DREAMS_PER_CLASS = 9  # dreams of each class the page shows (a 3 x 3 tile)
DOWNLOADS = ("student.pt", "dreams.png", "dreams.pt", "report.json")  # offered for download, in this order


@dataclass(frozen=True)
class Budget:
    """A preset of the app: a recipe of :mod:`dfkd_core` plus how finely the live curve is measured."""

    name: str
    recipe: Recipe
    curve_per_class: int  # live accuracy on this many test images per class (the final numbers use all)
    gpu_seconds: int  # ZeroGPU allocation for the preset's own recipe, scaled with the recipe knobs
    purpose: str

    def describe(self) -> str:
        inv, kd = self.recipe.inversion, self.recipe.distill
        return f"{self.name}: {inv.num_images:,} dreams x {inv.steps} steps, {kd.epochs} KD epochs ({self.purpose})"


BUDGETS: dict[str, Budget] = {
    "Quick": Budget("Quick", PRESETS["preview"], 100, 120, "for a CPU"),
    "Standard": Budget("Standard", PRESETS["default"], 200, 300, "the recommended recipe"),
    "Full": Budget("Full", PRESETS["best"], 200, 750, "the most accurate recipe; for a GPU"),
}


class InputError(ValueError):
    """A control holds a value the run cannot use; the message names the control in plain words."""


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, as plain values (picklable, so it can cross into a ZeroGPU worker)."""

    teacher: str  # registry id or local checkpoint path
    data: str  # evaluation data: "cifar10" or an ImageFolder root
    sparsity: float
    budget: str  # a key of BUDGETS
    num_images: int
    steps: int
    epochs: int
    temperature: float
    r_bn: float
    tv: float  # L2 total-variation weight of the dreams
    adi: float  # Adaptive DeepInversion weight
    seed: int
    device: str = "auto"
    preview_every: int = 10  # inversion steps between dream snapshots
    update_interval: float = UPDATE_INTERVAL_S  # seconds between two progress (or two image) updates
    out_dir: str = ""  # where the downloads are written

    def config(self) -> RecoveryConfig:
        """The pipeline configuration: the budget's recipe with the Advanced knobs applied."""
        budget = BUDGETS[self.budget]
        recipe = with_overrides(
            budget.recipe,
            {"num_images": self.num_images, "steps": self.steps, "r_bn": self.r_bn, "tv_l2": self.tv,
             "adi": self.adi, "preview_every": self.preview_every},
            {"epochs": self.epochs, "temperature": self.temperature},
        )  # fmt: skip
        return RecoveryConfig(
            teacher=self.teacher, data=self.data, sparsity=self.sparsity, recipe=recipe, baselines=("noise",),
            curve_per_class=budget.curve_per_class, eval_per_class=0, device=self.device, seed=self.seed,
        )  # fmt: skip


def _number(value: Any, label: str) -> float:
    if value is None or value == "":
        raise InputError(f"{label} is empty: enter a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{label} must be a finite number, got {value!r}.")
    return number


def _whole(value: Any, label: str, low: int, high: int) -> int:
    number = _number(value, label)
    if number != int(number) or not low <= number <= high:
        raise InputError(f"{label} must be a whole number from {low:,} to {high:,}, got {value!r}.")
    return int(number)


def _weight(value: Any, label: str, *, positive: bool = False) -> float:
    number = _number(value, label)
    if number < 0 or (positive and number == 0):
        raise InputError(f"{label} must be {'above' if positive else 'at least'} 0, got {value!r}.")
    return number


def parse_settings(
    teacher: Any, sparsity: Any, budget: Any, num_images: Any, steps: Any, epochs: Any, temperature: Any,
    r_bn: Any, tv: Any, adi: Any, seed: Any, *, allowed_teachers: Iterable[str], data: str, device: str,
    preview_every: int, update_interval: float = UPDATE_INTERVAL_S, out_dir: str = "",
) -> RunSettings:  # fmt: skip
    """Check the controls' values and name the first bad one in plain words (:class:`InputError`)."""
    allowed = list(allowed_teachers)
    if not teacher:
        raise InputError("Pick a teacher from the list first.")
    if teacher not in allowed:
        raise InputError(f"Unknown teacher {teacher!r}: pick one from the list.")
    share = _number(sparsity, "Sparsity")
    if not 0.0 <= share <= 0.95:
        raise InputError(f"Sparsity is the fraction of weights to remove: choose it from 0 to 0.95, got {sparsity!r}.")
    if budget not in BUDGETS:
        raise InputError(f"Unknown budget {budget!r}: choose {', '.join(BUDGETS)}.")
    return RunSettings(
        teacher=teacher, data=data, sparsity=share, budget=budget,
        num_images=_whole(num_images, "Dream count", 1, 65_536), steps=_whole(steps, "Inversion steps", 1, 20_000),
        epochs=_whole(epochs, "KD epochs", 1, 1_000), temperature=_weight(temperature, "KD temperature", positive=True),
        r_bn=_weight(r_bn, "BatchNorm weight (r_bn)"), tv=_weight(tv, "TV weight"), adi=_weight(adi, "ADI weight"),
        seed=_whole(seed, "Seed", 0, 2**31 - 1), device=device, preview_every=preview_every,
        update_interval=update_interval, out_dir=out_dir,
    )  # fmt: skip


# --- teachers --------------------------------------------------------------------------------------------


def find_local_teachers(entries: Iterable[str]) -> list[Path]:
    """Checkpoint files named by ``entries``: files as they are, folders by their *.pt/*.pth/*.th files."""
    found: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            log.warning("teacher path %s does not exist; skipped", path)
    unique = dict.fromkeys(p.resolve() for p in found)
    return list(unique)


def teacher_choices(local: Iterable[Path]) -> list[tuple[str, str]]:
    """Dropdown (label, value) pairs: the registry grouped by family, then local checkpoints."""
    records = sorted((get_pretrained(i) for i in list_teachers()), key=lambda r: (FAMILIES.index(r.family), r.id))
    choices = [(f"{r.family} · {r.id} ({r.reported_acc:.2f}% reported)", r.id) for r in records]
    return choices + [(f"Local · {p.name}", str(p)) for p in local]


def teacher_label(teacher: str) -> str:
    """A short name for titles: the registry id, or a checkpoint's file name."""
    return teacher if teacher in list_teachers() else Path(teacher).name


# --- preparing, running, reporting ----------------------------------------------------------------------


def preparations(settings: RunSettings) -> list[tuple[str, Callable[[], object]]]:
    """Downloads a run needs first, as (message, action): done on the CPU side, before any GPU is taken."""
    steps: list[tuple[str, Callable[[], object]]] = []
    if settings.teacher in list_teachers():
        record = get_pretrained(settings.teacher)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(record.url).path).name
        if not cached.is_file():
            steps.append((
                f"Downloading the weights of {settings.teacher} into {cached.parent} (first use only)...",
                lambda: load_teacher(settings.teacher, progress=False),
            ))  # fmt: skip
    cifar = default_data_dir() / "cifar10"
    if settings.data.lower() == "cifar10" and not (cifar / "cifar-10-batches-py").is_dir():
        steps.append((
            f"Downloading CIFAR-10 (about 170 MB) into {cifar} (first use only)...",
            lambda: load_eval_set("cifar10"),
        ))  # fmt: skip
    return steps


@dataclass(frozen=True)
class Failure:
    """The run failed; ``message`` is for the user."""

    message: str


@dataclass(frozen=True)
class Outcome:
    """What a finished run leaves for the page: the final numbers and the files to download."""

    teacher_acc: float  # full test split
    pruned_acc: float
    recovered_acc: float
    reconstructed_acc: float | None  # after the layer-wise refit, before distillation (None = no refit)
    noise_acc: float | None
    curve: tuple[tuple[int, float], ...]  # (epoch, accuracy on the live subset)
    curve_references: dict[str, float]  # teacher and pruned accuracy on the live subset
    eval_images: int
    full_split: bool
    sparsity: float
    teacher_nonzero: int
    student_nonzero: int
    teacher_bytes: int
    teacher_zipped: int
    student_bytes: int
    student_zipped: int
    files: tuple[str, ...]


def _sizes(path: Path) -> tuple[int, int]:
    """Bytes of a checkpoint file as written and after fast zlib compression (zeros compress)."""
    data = path.read_bytes()
    return len(data), len(zlib.compress(data, 1))


def _outcome(result: RecoveryResult, out_dir: Path) -> Outcome:
    written = {p.name: p for p in write_outputs(result, out_dir)}
    teacher_file = save_checkpoint(out_dir / ".teacher-for-size.pt", result.teacher.model, result.teacher)
    try:
        teacher_bytes, teacher_zipped = _sizes(teacher_file)
    finally:
        teacher_file.unlink(missing_ok=True)
    student_bytes, student_zipped = _sizes(written["student.pt"])
    return Outcome(
        teacher_acc=result.teacher_acc, pruned_acc=result.pruned_acc, recovered_acc=result.recovered_acc,
        reconstructed_acc=result.reconstructed_acc, noise_acc=result.baselines.get("noise"), curve=tuple(result.curve),
        curve_references=dict(result.curve_references), eval_images=int(result.eval_info["num_images"]),
        full_split=bool(result.eval_info["full_split"]), sparsity=result.sparsity,
        teacher_nonzero=count_nonzero_parameters(result.teacher.model),
        student_nonzero=count_nonzero_parameters(result.student), teacher_bytes=teacher_bytes,
        teacher_zipped=teacher_zipped, student_bytes=student_bytes, student_zipped=student_zipped,
        files=tuple(str(written[name]) for name in DOWNLOADS if name in written),
    )  # fmt: skip


class _Thinner:
    """Passes every event on, except that Progress and ImagesReady come at most once per interval each."""

    def __init__(self, interval: float):
        self.interval = interval
        self.last: dict[type, float] = {}

    def keep(self, event: Event) -> bool:
        if not isinstance(event, (Progress, ImagesReady)):
            return True
        now = time.monotonic()
        last_step = isinstance(event, Progress) and event.step == event.total
        if last_step or now - self.last.get(type(event), -math.inf) >= self.interval:
            self.last[type(event)] = now
            return True
        return False


def _latest_dreams(event: ImagesReady, per_class: int = DREAMS_PER_CLASS) -> ImagesReady:
    """The snapshot cut to the newest ``per_class`` dreams of each class: all the page shows, and
    small enough to cross from a ZeroGPU worker several times a second."""
    newest = [torch.nonzero(event.labels == c).flatten()[-per_class:] for c in range(len(event.classes))]
    keep = torch.cat(newest).sort().values
    return dataclasses.replace(event, images=event.images[keep], labels=event.labels[keep])


def friendly_error(err: BaseException) -> str:
    """A plain-words message for the user; the traceback stays in the server log."""
    text = str(err).strip()
    if isinstance(err, InputError):
        return text
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text.lower():
        return "The run ran out of memory. Choose a smaller budget (Quick) or fewer dreams, then press Run again."
    if isinstance(err, FloatingPointError):
        return (
            f"The optimization diverged: {text}. Go back to the budget's values "
            "(pick the budget again) or lower the loss weights, then press Run again."
        )
    if isinstance(err, (ValueError, FileNotFoundError)) and text:
        return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
    first = text.splitlines()[0][:200] if text else ""
    return f"Something unexpected went wrong ({type(err).__name__}: {first}). The server log has the details."


def stream_run(settings: RunSettings) -> Iterator[Event | Outcome | Failure]:
    """Run one recovery: yield its events (CPU data only, thinned) and end with an Outcome or a Failure.

    Closing this generator (Stop, or a closed tab) closes the pipeline's generator, which
    removes its hooks, and frees what the run held, GPU memory included.
    """
    pipeline = None
    try:
        pipeline = recover(settings.config())
        thinner = _Thinner(settings.update_interval)
        for event in pipeline:
            if isinstance(event, Finished):
                yield _outcome(event.result, Path(settings.out_dir))
            elif thinner.keep(event):
                yield _latest_dreams(event) if isinstance(event, ImagesReady) else event
    except Exception as err:  # everything the user should read about; tracebacks go to the log
        expected = isinstance(err, (ValueError, FileNotFoundError, FloatingPointError, MemoryError))
        log.log(logging.INFO if expected else logging.ERROR, "run failed: %s", err, exc_info=not expected)
        yield Failure(friendly_error(err))
    finally:
        if pipeline is not None:
            pipeline.close()
        del pipeline
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _gpu_seconds(settings: RunSettings, *args: Any, **kwargs: Any) -> int:
    """ZeroGPU allocation: the budget's own, scaled by how much more work the Advanced knobs ask for."""
    budget = BUDGETS[settings.budget]
    inv, kd = budget.recipe.inversion, budget.recipe.distill
    planned = settings.num_images * (settings.steps + 2 * settings.epochs)
    preset = inv.num_images * (inv.steps + 2 * kd.epochs)
    return int(min(900, max(60, budget.gpu_seconds * planned / preset)))


# On a ZeroGPU Space (spaces sets SPACES_ZERO_GPU there) the GPU is taken for each run; elsewhere
# spaces.GPU returns the function unchanged.
ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
if spaces is not None:
    stream_run = spaces.GPU(duration=_gpu_seconds)(stream_run)  # type: ignore[assignment]
