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
import functools
import gc
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfkd_core import (
    Event,
    Finished,
    ImagesReady,
    Network,
    Progress,
    RecoveryConfig,
    RecoveryResult,
    recover,
)
from dfkd_core.architectures import create_model
from dfkd_core.data import default_data_dir, load_eval_set
from dfkd_core.outputs import write_outputs
from dfkd_core.prune import count_nonzero_parameters
from dfkd_core.zoo import (
    CHECKPOINT_SUFFIXES,
    FAMILIES,
    cached_weights_path,
    get_pretrained,
    list_teachers,
    load_teacher,
    save_checkpoint,
)

from .settings import BUDGETS, InputError, Settings
from .startup import Step

try:  # Hugging Face ZeroGPU: present on Spaces, absent (and not needed) everywhere else
    import spaces
except ImportError:
    spaces = None

__all__ = [
    "Failure",
    "Outcome",
    "RunPlan",
    "find_local_teachers",
    "data_label",
    "friendly_error",
    "without_server_paths",
    "local_teacher_names",
    "preparations",
    "stream_run",
    "teacher_choices",
    "teacher_label",
    "teacher_option",
]

log = logging.getLogger("dfkd.demo")

UPDATE_INTERVAL_S = 0.5  # at most one progress and one image update per this many seconds: a lively showcase
DREAMS_PER_CLASS = 9  # dreams of each class the page shows when there is no showcase (a 3 x 3 tile)
CIFAR10_MB = 170  # the CIFAR-10 archive torchvision downloads (train and test together)
REFERENCE_ARCH = "akamaster_resnet20"  # the budgets' GPU seconds are sized for this teacher
MIN_GPU_SECONDS, MAX_GPU_SECONDS = 30, 300  # ZeroGPU requests: room for start-up; the longest Spaces grants
SHOWCASE_PER_CLASS = 2  # showcase dreams per class: 20 x 200 steps take ~8 s for a ResNet-20 on 2 CPU cores
SHOWCASE_CPU_SECONDS = 45  # from Run to a formed showcase, ResNet-20 on 2 CPU cores shared with the browser, at most
DOWNLOADS = ("student.pt", "dreams.png", "dreams.pt", "report.json")  # offered for download, in this order


@dataclass(frozen=True)
class RunPlan:
    """Everything one run needs: the user's settings and where the app runs them.

    Plain values only (picklable), so a plan can cross into a ZeroGPU worker.
    """

    settings: Settings
    data: str  # evaluation data: "cifar10" or an ImageFolder root
    teacher: str = ""  # the registry id or checkpoint path the teacher choice stands for ("" = the choice itself)
    device: str = "auto"
    showcase: int = SHOWCASE_PER_CLASS  # dreams per class formed first for the visitor to watch
    update_interval: float = UPDATE_INTERVAL_S  # seconds between two progress (or two image) updates
    out_dir: str = ""  # where the downloads are written

    def config(self) -> RecoveryConfig:
        """The pipeline configuration: the budget's recipe with the user's controls applied."""
        settings = self.settings
        return RecoveryConfig(
            teacher=self.teacher or settings.teacher,
            data=self.data,
            sparsity=settings.sparsity,
            granularity=settings.granularity,
            recipe=settings.recipe(),
            baselines=("noise",),
            curve_per_class=BUDGETS[settings.budget].curve_per_class,
            eval_per_class=0,
            device=self.device,
            seed=settings.seed,
            showcase=self.showcase,
        )


# --- teachers --------------------------------------------------------------------------------------------


def find_local_teachers(entries: Iterable[str]) -> list[Path]:
    """Checkpoint files named by ``entries``: files as they are, folders by their checkpoint files
    (those ending in one of :data:`dfkd_core.zoo.CHECKPOINT_SUFFIXES`)."""
    found: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.name.endswith(CHECKPOINT_SUFFIXES) and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            log.warning("teacher path %s does not exist; skipped", path)
    unique = dict.fromkeys(p.resolve() for p in found)
    return list(unique)


def local_teacher_names(local: Iterable[Path]) -> dict[str, Path]:
    """Local checkpoints by the name the page shows and sends for them: the file name (with its folder's
    name when two files share one), so no server path ever reaches the page."""
    paths = list(local)
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.name] = counts.get(path.name, 0) + 1
    return {(p.name if counts[p.name] == 1 else f"{p.parent.name}/{p.name}"): p for p in paths}


def teacher_choices(local: Iterable[Path]) -> list[tuple[str, str]]:
    """Dropdown (label, value) pairs: the registry grouped by family, then local checkpoints by name."""
    records = sorted((get_pretrained(i) for i in list_teachers()), key=lambda r: (FAMILIES.index(r.family), r.id))
    choices = [(f"{r.family} · {r.id} ({r.reported_acc:.2f}% reported)", r.id) for r in records]
    return choices + [(f"Local · {name}", name) for name in local_teacher_names(local)]


def teacher_option(teacher: str) -> tuple[tuple[Path, ...], str]:
    """A script's ``--teacher`` (registry id or checkpoint path) as (local checkpoints to offer, the choice)."""
    if Path(teacher).expanduser().is_file():
        local = tuple(find_local_teachers([teacher]))
        return local, next(iter(local_teacher_names(local)))
    return (), teacher


def teacher_label(teacher: str) -> str:
    """A short name for titles: the registry id, or a checkpoint's file name."""
    return teacher if teacher in list_teachers() else Path(teacher).name


# --- preparing, running, reporting ----------------------------------------------------------------------


def data_label(data: str) -> str:
    """The evaluation data in words for the page: no server path, only what it is."""
    return "the CIFAR-10 test split" if data.lower() == "cifar10" else f"the test split of {Path(data).name!r}"


def _downloaded(folder: Path, total_mb: float) -> Callable[[], str]:
    """How much of a download has reached ``folder`` so far, e.g. ``42 of 170 MB``."""

    def progress() -> str:
        size = sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) if folder.is_dir() else 0
        return f"{size / 1e6:.0f} of {total_mb:.0f} MB"

    return progress


def preparations(data: str, teacher: str) -> list[Step]:
    """Downloads a run needs first (each once): done on the CPU side, before any GPU is taken."""
    steps: list[Step] = []
    cifar = default_data_dir() / "cifar10"
    if data.lower() == "cifar10" and not (cifar / "cifar-10-batches-py").is_dir():
        message = "downloading CIFAR-10's test split (first start only)"
        steps.append(Step(message, lambda: load_eval_set("cifar10"), _downloaded(cifar, CIFAR10_MB)))
    if teacher in list_teachers() and not cached_weights_path(get_pretrained(teacher)).is_file():
        steps.append(
            Step(
                f"downloading the weights of {teacher} (first use only)", lambda: load_teacher(teacher, progress=False)
            )
        )
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
    refit_acc: float | None  # after the layer-wise refit, before distillation (None = no refit)
    noise_acc: float | None
    curve: tuple[tuple[int, float], ...]  # (epoch, accuracy on the live subset)
    curve_references: dict[str, float]  # by Network value: teacher, pruned, refit, noise on the live subset
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
    granularity: str = "weight"  # what was pruned: "weight" or "channel"
    teacher_macs: int = 0  # multiply-accumulates of one image's forward pass
    student_macs: int = 0
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # "teacher", "recovered": CPU, by batch
    holdout_agreement: tuple[
        tuple[int, float], ...
    ] = ()  # (epoch, % agreement on held-out dreams): the data-free score
    kept_epoch: int | None = None  # the epoch the score kept (0 = the start: recovery did not beat it)
    lr: float = 0.0  # the distillation's peak learning rate
    lr_probes: int = 0  # how many probe runs chose it (0 = given)


def _sizes(path: Path) -> tuple[int, int]:
    """Bytes of a checkpoint file as written and after fast zlib compression (zeros compress)."""
    data = path.read_bytes()
    return len(data), len(zlib.compress(data, 1))


def _outcome(result: RecoveryResult, out_dir: Path) -> Outcome:
    """The numbers and downloads of a finished run; the teacher is saved once only to measure its size."""
    written = {p.name: p for p in write_outputs(result, out_dir, public=True)}  # a visitor sees no server path
    teacher_file = save_checkpoint(out_dir / ".teacher-for-size.pt", result.teacher.model, result.teacher)
    try:
        teacher_bytes, teacher_zipped = _sizes(teacher_file)
    finally:
        teacher_file.unlink(missing_ok=True)
    student_bytes, student_zipped = _sizes(written["student.pt"])
    return Outcome(
        teacher_acc=result.teacher_acc,
        pruned_acc=result.pruned_acc,
        recovered_acc=result.recovered_acc,
        refit_acc=result.refit_acc,
        noise_acc=result.baselines.get(Network.NOISE),
        curve=tuple(result.curve),
        curve_references=dict(result.curve_references),
        eval_images=int(result.eval_info["num_images"]),
        full_split=bool(result.eval_info["full_split"]),
        sparsity=result.sparsity,
        teacher_nonzero=count_nonzero_parameters(result.teacher.model),
        student_nonzero=count_nonzero_parameters(result.student),
        teacher_bytes=teacher_bytes,
        teacher_zipped=teacher_zipped,
        student_bytes=student_bytes,
        student_zipped=student_zipped,
        files=tuple(str(written[name]) for name in DOWNLOADS if name in written),
        granularity=result.config.granularity,
        teacher_macs=result.sizes["teacher"].macs,
        student_macs=result.sizes["recovered"].macs,
        latency_ms=result.latency_ms,
        holdout_agreement=tuple(result.distilled.holdout_agreement),
        kept_epoch=result.distilled.kept_epoch,
        lr=result.distilled.lr,
        lr_probes=len(result.distilled.lr_probes),
    )


class _Thinner:
    """Passes every event on, except that Progress and ImagesReady come at most once per interval each
    (and always at a stage's last step)."""

    def __init__(self, interval: float):
        self.interval = interval
        self.last: dict[type, float] = {}

    def keep(self, event: Event) -> bool:
        if not isinstance(event, (Progress, ImagesReady)):
            return True
        now = time.monotonic()
        last_step = event.step == event.total
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


_SERVER_PATH = re.compile(r"(?<![^\s'\"(=])/(?:[^\s'\"/)]+/)+([^\s'\"/)]+)")  # /a/b/c.pt, not a URL's //host/x


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part: the page never shows where files are on the server."""
    return _SERVER_PATH.sub(r"\1", text)


def friendly_error(err: BaseException) -> str:
    """A plain-words message for the user, with no server path in it; the traceback stays in the server log."""
    return without_server_paths(_plain_words(err))


def _plain_words(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, InputError):
        return text
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text.lower():
        smallest = next(iter(BUDGETS.values())).label
        return f"The run ran out of memory. Choose a smaller budget ({smallest}) or fewer dreams, then press Run again."
    if isinstance(err, FloatingPointError):
        return (
            f"The optimization diverged: {text}. Go back to the budget's values "
            "(pick the budget again) or lower the loss weights, then press Run again."
        )
    if isinstance(err, (ValueError, FileNotFoundError)) and text:
        return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
    first = text.splitlines()[0][:200] if text else ""
    return f"Something unexpected went wrong ({type(err).__name__}: {first}). The server log has the details."


def stream_run(plan: RunPlan) -> Iterator[Event | Outcome | Failure]:
    """Run one recovery: yield its events (CPU data only, thinned) and end with an Outcome or a Failure.

    Closing this generator (Stop, or a closed tab) closes the pipeline's generator, which
    removes its hooks, and frees what the run held, GPU memory included.
    """
    pipeline = None
    try:
        pipeline = recover(plan.config())
        thinner = _Thinner(plan.update_interval)
        for event in pipeline:
            if isinstance(event, Finished):
                yield _outcome(event.result, Path(plan.out_dir))
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


@functools.lru_cache(maxsize=32)
def _multiply_adds(arch: str) -> int:
    """Multiply-adds of one 32x32 forward pass of ``arch`` (Conv2d and Linear layers)."""
    model = create_model(arch)
    total = 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += module.weight.numel() * (output[0, 0].numel() if output.dim() == 4 else 1)

    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for handle in handles:
        handle.remove()
    return total


def _architecture_cost(plan: RunPlan) -> float:
    """The teacher's cost per image next to a ResNet-20's, which the budgets' GPU seconds are sized for
    (at least 1: small networks on a GPU are bound by launch overheads, not by arithmetic)."""
    teacher = plan.teacher or plan.settings.teacher
    try:
        arch = get_pretrained(teacher).arch if teacher in list_teachers() else load_teacher(teacher).arch
        return max(1.0, _multiply_adds(arch) / _multiply_adds(REFERENCE_ARCH))
    except Exception:  # the run will explain what is wrong with the teacher; ask for the most to be safe
        return MAX_GPU_SECONDS / MIN_GPU_SECONDS


def _gpu_seconds(plan: RunPlan, *args: Any, **kwargs: Any) -> int:
    """ZeroGPU allocation: the budget's own for a ResNet-20, scaled by the teacher's cost per image and by
    how much more work the Advanced controls ask for."""
    settings = plan.settings
    budget = BUDGETS[settings.budget]
    dream, distill = budget.recipe.dream, budget.recipe.distill
    planned = settings.num_images * (settings.steps + 2 * settings.epochs)
    preset = dream.num_images * (dream.steps + 2 * distill.epochs)
    seconds = budget.gpu_seconds * planned / preset * _architecture_cost(plan)
    return int(min(MAX_GPU_SECONDS, max(MIN_GPU_SECONDS, seconds)))


# On a ZeroGPU Space (spaces sets SPACES_ZERO_GPU there) the GPU is taken for each run; elsewhere
# spaces.GPU returns the function unchanged.
ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
if spaces is not None:
    stream_run = spaces.GPU(duration=_gpu_seconds)(stream_run)  # type: ignore[assignment]
