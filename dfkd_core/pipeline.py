"""The whole method in one generator: teacher -> prune -> invert -> reconstruct -> distill -> evaluate.

:func:`recover` yields typed events (see :mod:`dfkd_core.events`) and ends with
:class:`Finished` carrying a :class:`RecoveryResult`; :func:`run_recovery` runs it to the end.
The CLI, the notebooks and the app are thin clients of this one function.

Data-free guarantee: the recovery path (prune, synthesize, reconstruct, distill) receives no dataset at all.
Real images enter in exactly two places, both for measuring only: the held-out evaluation split
(accuracy numbers) and, when explicitly requested, the ``"real"`` baseline - an oracle that shows
what a few real training images would have bought.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .data import ImageSet, load_eval_set, load_train_subset, train_split_available
from .distill import DistillConfig, iter_distill
from .evaluate import evaluate
from .events import Event, Finished, MetricLogged, Notice, Progress, StageFinished, StageStarted, drain
from .invert import DreamSet, InversionConfig, iter_synthesize
from .prune import LayerSparsity, clone_model, measured_sparsity, prune_model, sparsity_report
from .reconstruct import ReconstructionConfig, iter_reconstruct
from .zoo import Teacher, load_teacher

__all__ = [
    "PRESETS",
    "Recipe",
    "RecoveryConfig",
    "RecoveryResult",
    "get_preset",
    "recover",
    "resolve_device",
    "run_recovery",
]

BASELINES = ("noise", "real")


@dataclass(frozen=True)
class Recipe:
    """How to dream, refit and distill: everything that decides recovered accuracy and time."""

    inversion: InversionConfig = field(default_factory=InversionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    reconstruction: ReconstructionConfig | None = None  # layer-wise refit before distillation (None = skip)


PRESETS: dict[str, Recipe] = {
    # The recommended recipe (the library defaults): about 7 minutes for a ResNet-20 on two CPU cores.
    "default": Recipe(),
    # A CPU budget, under 4 minutes for a ResNet-20 on two cores: dreams optimized for fewer steps, the
    # pruned layers refit on them in seconds, then a short distillation.
    "quick": Recipe(InversionConfig(num_images=1024, steps=100), DistillConfig(epochs=14), ReconstructionConfig()),
    # The most accurate measured recipe: twice the dreams and twice the epochs of the default (worth most at
    # high sparsity; about 17 minutes for a ResNet-20 on two CPU cores).
    "best": Recipe(InversionConfig(num_images=2048), DistillConfig(epochs=60)),
    # The app's CPU budget: dreams on screen within seconds and the whole run in about 2.5 minutes.
    "preview": Recipe(InversionConfig(num_images=512, steps=40), DistillConfig(epochs=12), ReconstructionConfig()),
    # The reference recipe of the paper: 1,024 dreams x 200 steps, logits-only KD for 30 epochs with
    # the teacher's BatchNorm statistics kept.
    "paper": Recipe(
        InversionConfig(num_images=1024, steps=200),
        DistillConfig(epochs=30, batch_size=128, lr=0.01, feature_weight=0.0, bn_mode="frozen", mix="none"),
    ),
}


def get_preset(name: str) -> Recipe:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class RecoveryConfig:
    """One recovery run. Only ``teacher`` is required; the rest defaults to the recommended setup."""

    teacher: str  # registry id (see list_teachers()) or a checkpoint path
    data: str = "cifar10"  # evaluation data: "cifar10" or an ImageFolder directory (root with test/)
    sparsity: float = 0.75  # fraction of Conv2d/Linear weights removed by L1 magnitude
    scope: str = "global"  # "global" (one threshold over all layers, the paper's) or "layerwise"
    recipe: Recipe = field(default_factory=Recipe)
    baselines: tuple[str, ...] = ("noise",)  # same-budget baselines: "noise" (KD on Gaussian noise), "real" (oracle)
    curve_per_class: int = 200  # per-epoch accuracy curve on this many test images per class (0 = full split)
    eval_per_class: int = 0  # reported accuracies on this many test images per class (0 = full split)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    seed: int = 0  # seeds pruning ties, dream initialization, labels and augmentation
    arch: str | None = None  # architecture, for checkpoints that do not record it
    normalization: str | None = None  # "imagenet", "cifar10" or "m1,m2,m3,s1,s2,s3", when not recorded

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights to remove), got {self.sparsity!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from: {', '.join(BASELINES)}")
        if self.scope not in ("global", "layerwise"):
            raise ValueError(f"pruning scope must be 'global' or 'layerwise', got {self.scope!r}")
        if self.curve_per_class < 0 or self.eval_per_class < 0:
            raise ValueError("curve_per_class and eval_per_class must be >= 0 (0 = the full split)")


@dataclass
class RecoveryResult:
    """Everything a run measured and produced."""

    config: RecoveryConfig
    teacher: Teacher
    student: nn.Module  # the recovered student, pruning masks still attached
    dreams: DreamSet
    teacher_acc: float
    pruned_acc: float
    recovered_acc: float
    reconstructed_acc: float | None  # after layer-wise reconstruction, before distillation (None = not run)
    sparsity: float  # measured fraction of zero prunable weights
    layers: list[LayerSparsity]
    curve: list[tuple[int, float]]  # (epoch, accuracy on the curve subset); epoch 0 = start of distillation
    curve_references: dict[str, float]  # teacher, pruned and baseline accuracy on the curve subset
    baselines: dict[str, float | None]
    timings: dict[str, float]
    eval_info: dict[str, Any]
    device: str

    def report(self) -> dict[str, Any]:
        """A JSON-ready record of the run (what ``dfkd recover`` writes as report.json)."""
        settings = asdict(self.config)
        return {
            "teacher": self.config.teacher,
            "arch": self.teacher.arch,
            "teacher_acc": round(self.teacher_acc, 2),
            "pruned_acc": round(self.pruned_acc, 2),
            "reconstructed_acc": _rounded(self.reconstructed_acc),
            "recovered_acc": round(self.recovered_acc, 2),
            "sparsity": {
                "target": self.config.sparsity,
                "measured": round(self.sparsity, 4),
                "scope": self.config.scope,
            },
            "baselines": {
                "noise_kd": _rounded(self.baselines.get("noise")),
                "real_data": _rounded(self.baselines.get("real")),
                "real_data_note": "ORACLE: KD on real training images (same count and recipe); not data-free",
            },
            "dreams": {
                "count": len(self.dreams),
                "steps": self.dreams.steps,
                "teacher_top1": round(self.dreams.teacher_top1, 2),
            },
            "curve": {
                "epochs": [e for e, _ in self.curve],
                "accuracy": [round(a, 2) for _, a in self.curve],
                "references": {k: round(v, 2) for k, v in self.curve_references.items()},
                "images": self.eval_info["curve_images"],
            },  # fmt: skip
            "layers": [{"name": r.name, "kind": r.kind, "weights": r.total, "zeros": r.zeros} for r in self.layers],
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "eval": {k: v for k, v in self.eval_info.items() if k != "curve_images"},
            "device": self.device,
            "versions": {
                "dfkd": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "torchvision": _torchvision_version(),
                "platform": platform.platform(),
            },  # fmt: skip
            "settings": settings,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return resolved


_TEACHER_ACCURACY: dict[tuple[Any, ...], float] = {}  # a teacher's full-split accuracy, measured once per process


def _fingerprint(teacher: str) -> tuple[str, int]:
    """A teacher's identity for the accuracy cache: the id or path, and the file's modification time."""
    path = Path(teacher).expanduser()
    return teacher, path.stat().st_mtime_ns if path.is_file() else 0


def _check_batchnorm(model: nn.Module) -> None:
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(
            f"the teacher ({type(model).__name__}) has no BatchNorm layer; DeepInversion needs the running "
            "statistics of BatchNorm layers to dream from, so this model cannot be recovered data-free"
        )


def recover(config: RecoveryConfig, dreams: DreamSet | None = None) -> Generator[Event, None, RecoveryResult]:
    """Run the full recovery, yielding events; returns (and emits as ``Finished``) the result.

    Stages, in order: ``load``, ``prune`` (the accuracy cliff, on the curve subset), ``synthesize``,
    ``reconstruct`` (unless the recipe turns it off), ``distill`` (accuracy per epoch on the curve
    subset), ``baseline_noise``/``baseline_real`` and ``evaluate`` (the reported numbers, on the full
    split unless ``eval_per_class`` is set).
    Cheap checks come first and the full-split evaluation last, so dreams appear within seconds.

    ``dreams`` reuses a dream set synthesized earlier from the same teacher (dreams do not
    depend on the sparsity unless Adaptive DeepInversion is on); the synthesis is then skipped
    and its original wall time reported.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    recipe = config.recipe
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    yield StageStarted("load", 0, f"teacher {config.teacher}, evaluation data {config.data}")
    t0 = time.perf_counter()
    teacher = load_teacher(config.teacher, arch=config.arch, normalization=config.normalization)
    _check_batchnorm(teacher.model)
    test_set = load_eval_set(config.data)
    if len(test_set.classes) != teacher.num_classes:
        raise ValueError(
            f"evaluation data {config.data!r} has {len(test_set.classes)} classes but the teacher predicts "
            f"{teacher.num_classes}; use data whose class folders match the teacher's outputs"
        )
    if dreams is not None and dreams.classes != teacher.classes:
        raise ValueError(
            f"the given dreams were made for classes {dreams.classes}, not the teacher's {teacher.classes}"
        )
    if "real" in config.baselines and not train_split_available(config.data):
        yield Notice("load", f"{config.data} has no train/ split: the real-data baseline is skipped (reported as null)")
    eval_set = test_set.stratified_subset(config.eval_per_class, config.seed) if config.eval_per_class else test_set
    curve_set = test_set.stratified_subset(config.curve_per_class, config.seed) if config.curve_per_class else eval_set
    teacher.model.to(device)
    timings["load"] = time.perf_counter() - t0
    yield StageFinished("load", timings["load"], {"eval_images": len(eval_set), "curve_images": len(curve_set)})

    def measure(model: nn.Module, images: ImageSet = eval_set) -> float:
        return evaluate(model, images, teacher.normalization, device=device)

    yield StageStarted("prune", 0, f"{config.scope} L1 pruning to {config.sparsity:.0%}")
    t0 = time.perf_counter()
    pruned = prune_model(teacher.model, config.sparsity, config.scope)
    layers = sparsity_report(pruned)
    sparsity = measured_sparsity(pruned)
    references = {"teacher": measure(teacher.model, curve_set), "pruned": measure(pruned, curve_set)}
    yield MetricLogged("prune", "teacher_curve_accuracy", references["teacher"])
    yield MetricLogged("prune", "pruned_curve_accuracy", references["pruned"])
    timings["prune"] = time.perf_counter() - t0
    yield StageFinished("prune", timings["prune"], {"sparsity": sparsity, "layers": layers})

    student = clone_model(pruned)
    if dreams is None:
        dreams = yield from iter_synthesize(teacher, recipe.inversion, student=student, device=device, seed=config.seed)
    else:
        yield StageStarted("synthesize", 0, f"reusing {len(dreams)} dreams synthesized earlier")
        yield StageFinished("synthesize", 0.0, {"teacher_top1": dreams.teacher_top1, "reused": True})
    timings["synthesis"] = dreams.seconds
    yield MetricLogged("synthesize", "teacher_top1_on_dreams", dreams.teacher_top1)

    start_accuracy = references["pruned"]
    reconstructed: nn.Module | None = None
    if recipe.reconstruction is not None:
        refit = yield from iter_reconstruct(student, teacher.model, dreams.images, teacher.normalization,
                                            recipe.reconstruction, evaluate_fn=lambda m: measure(m, curve_set),
                                            device=device)  # fmt: skip
        timings["reconstruction"] = refit.seconds
        reconstructed = clone_model(student)
        start_accuracy = references["reconstructed"] = refit.accuracy

    t0 = time.perf_counter()
    yield MetricLogged("distill", "accuracy", start_accuracy, 0)
    distilled = yield from iter_distill(
        student, teacher.model, dreams.images, teacher.normalization, recipe.distill,
        evaluate_fn=lambda m: measure(m, curve_set), device=device, seed=config.seed,
    )  # fmt: skip
    timings["distillation"] = time.perf_counter() - t0

    baselines: dict[str, float | None] = {"noise": None, "real": None}
    for name in config.baselines:
        if name == "real" and not train_split_available(config.data):
            continue
        t0 = time.perf_counter()
        if name == "noise":
            generator = torch.Generator().manual_seed(config.seed + 1)
            noise = torch.randn(len(dreams), 3, *dreams.images.shape[-2:], generator=generator)
            images = teacher.normalization.denormalize(noise).clamp(0, 1)
        else:  # the oracle: real training images, same count as the dreams
            per_class = max(1, len(dreams) // teacher.num_classes)
            images = load_train_subset(config.data, per_class, seed=config.seed).images.float() / 255
        baseline_student = clone_model(pruned)
        if recipe.reconstruction is not None:
            yield from iter_reconstruct(baseline_student, teacher.model, images, teacher.normalization,
                                        recipe.reconstruction, device=device, stage=f"baseline_{name}_reconstruct")  # fmt: skip
        yield from iter_distill(baseline_student, teacher.model, images, teacher.normalization, recipe.distill,
                                device=device, seed=config.seed, stage=f"baseline_{name}")  # fmt: skip
        baselines[name] = measure(baseline_student)
        references[name] = measure(baseline_student, curve_set) if curve_set is not eval_set else baselines[name]
        yield MetricLogged(f"baseline_{name}", f"{name}_curve_accuracy", references[name])
        yield MetricLogged(f"baseline_{name}", f"{name}_accuracy", baselines[name])
        timings[f"baseline_{name}"] = time.perf_counter() - t0
        del baseline_student

    measured = [
        ("teacher", teacher.model),
        ("pruned", pruned),
        ("reconstructed", reconstructed),
        ("recovered", student),
    ]
    measured = [(name, model) for name, model in measured if model is not None]
    yield StageStarted("evaluate", len(measured), f"top-1 on {len(eval_set):,} held-out images")
    t0 = time.perf_counter()
    final = {}
    teacher_key = (_fingerprint(config.teacher), teacher.arch, teacher.normalization, test_set.name, len(test_set),
                   len(eval_set), config.seed, str(device))  # fmt: skip
    for step, (name, model) in enumerate(measured, 1):
        if name == "teacher":
            final[name] = _TEACHER_ACCURACY.get(teacher_key) or measure(model)
            _TEACHER_ACCURACY[teacher_key] = final[name]
        else:
            final[name] = measure(model)
        yield MetricLogged("evaluate", f"{name}_accuracy", final[name])
        yield Progress("evaluate", step, len(measured))
    timings["evaluation"] = time.perf_counter() - t0
    yield StageFinished("evaluate", timings["evaluation"], final)

    timings["total"] = time.perf_counter() - started
    result = RecoveryResult(
        config=config, teacher=teacher, student=student, dreams=dreams,
        teacher_acc=final["teacher"], pruned_acc=final["pruned"], recovered_acc=final["recovered"],
        reconstructed_acc=final.get("reconstructed"),
        sparsity=sparsity, layers=layers, curve=[(0, start_accuracy)] + distilled.history,
        curve_references=references, baselines=baselines, timings=timings,
        eval_info={"dataset": test_set.name, "num_images": len(eval_set), "full_split": len(eval_set) == len(test_set),
                   "curve_images": len(curve_set)},
        device=str(device),
    )  # fmt: skip
    yield Finished(result)
    return result


def run_recovery(config: RecoveryConfig, callback=None, dreams: DreamSet | None = None) -> RecoveryResult:
    """Run :func:`recover` to the end; ``callback(event)`` sees every event on the way."""
    return drain(recover(config, dreams), callback)


def with_overrides(
    recipe: Recipe,
    inversion: dict[str, Any] | None = None,
    distill: dict[str, Any] | None = None,
    reconstruction: dict[str, Any] | None = None,
    *,
    reconstruct: bool | None = None,
) -> Recipe:
    """A copy of ``recipe`` with some knobs changed, e.g. ``with_overrides(r, {"steps": 50})``.

    ``reconstruct`` switches layer-wise reconstruction on or off (``None`` keeps the recipe's choice);
    ``reconstruction`` knobs need it on.
    """
    on = recipe.reconstruction is not None if reconstruct is None else reconstruct
    if not on and reconstruction:
        raise ValueError(
            f"reconstruction settings ({', '.join(reconstruction)}) given, but this recipe does not reconstruct; "
            "switch it on as well (reconstruct=True; --reconstruction on the command line) or use a preset that refits"
        )
    refit = replace(recipe.reconstruction or ReconstructionConfig(), **(reconstruction or {})) if on else None
    return Recipe(replace(recipe.inversion, **(inversion or {})), replace(recipe.distill, **(distill or {})), refit)
