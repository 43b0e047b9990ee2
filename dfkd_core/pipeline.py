"""The whole method in one generator: load -> prune -> dream -> refit -> distill -> baselines -> evaluate.

:func:`recover` yields typed events (see :mod:`dfkd_core.events`) and ends with
:class:`Finished` carrying a :class:`RecoveryResult`; :func:`run_recovery` runs it to the end.
The CLI, the notebooks and the app are thin clients of this one function.

Data-free guarantee: the recovery path (prune, dream, refit, distill) receives no dataset at all.
Real images enter in exactly two places, both for measuring only: the held-out evaluation split
(accuracy numbers) and, when explicitly requested, the ``"real"`` baseline - the same recipe on real
images, which shows what as many real training images would have bought.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .cache import BaselineCache, DreamCache, age_in_words
from .data import ImageSet, load_eval_set, load_train_subset, train_split_available
from .device import resolve_device
from .distill import LR_AUTO, DistillConfig, DistillResult, iter_distill
from .dream import HOLDOUT_SEED_OFFSET, DreamConfig, DreamSet, iter_dream, require_batchnorm
from .evaluate import ModelSize, align_classes, evaluate, measure_latency, measure_size
from .events import (
    Event,
    Finished,
    Metric,
    MetricLogged,
    Network,
    Notice,
    Progress,
    Stage,
    StageFinished,
    StageStarted,
    drain,
)
from .prune import (
    GradualPruning,
    LayerSparsity,
    check_granularity,
    check_scope,
    check_sparsity,
    clone_model,
    measured_sparsity,
    prune_model,
    sparsity_report,
)
from .refit import RefitConfig, iter_refit
from .zoo import Teacher, load_teacher

__all__ = [
    "BASELINES",
    "PRESETS",
    "Recipe",
    "RecoveryConfig",
    "RecoveryResult",
    "get_preset",
    "recover",
    "run_recovery",
    "with_overrides",
]

SHOWCASE_STEPS = DreamConfig().steps  # the showcase always gets the recommended step count: dreams that have formed
MAX_SEED = 2**63 - 1  # seeds are given to torch generators, and seed + 1 seeds the noise baseline
BASELINES = (Network.NOISE.value, Network.REAL.value)  # same-budget baselines: distillation on noise, on real images


@dataclass(frozen=True)
class Recipe:
    """How to dream, refit and distill: everything that decides recovered accuracy and time."""

    dream: DreamConfig = field(default_factory=DreamConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    refit: RefitConfig | None = None  # layer-wise refit before distillation (None = skip)


PRESETS: dict[str, Recipe] = {
    # A CPU budget: dreams optimized for fewer steps, the pruned layers refit on them in seconds,
    # then a short distillation.
    "quick": Recipe(DreamConfig(num_images=1024, steps=100), DistillConfig(epochs=14), RefitConfig()),
    # The recommended recipe: the library's defaults.
    "default": Recipe(),
    # The most accurate measured recipe on ResNet-20: twice the dreams and twice the epochs, and the student pruned
    # gradually over the first 50 of them (worth most at high sparsity; gradual pruning costs MobileNetV2 and VGG).
    "best": Recipe(DreamConfig(num_images=2048), DistillConfig(epochs=60, gradual_epochs=50)),
}


# Whole channels go gradually: a student that loses them all at once must re-learn far more than 1,024 dreams teach
# (ResNet-56 at 75% of MACs: 61.76 in one cut, 76.10 gradually). It starts with this share of MACs removed...
CHANNEL_GRADUAL_START = 0.2
CHANNEL_GRADUAL_SHARE = 5 / 6  # ... and reaches the target after this share of the epochs (25 of 30)


def get_preset(name: str, granularity: str = "weight") -> Recipe:
    """The recipe of preset ``name`` for pruning of ``granularity``; ``ValueError`` listing the presets otherwise.

    :data:`PRESETS` are the weight recipes. For channels the student is pruned gradually during distillation
    (from :data:`CHANNEL_GRADUAL_START` of the MACs over :data:`CHANNEL_GRADUAL_SHARE` of the epochs, or over the
    preset's own gradual epochs), without the refit, which fits a student pruned in one cut."""
    try:
        recipe = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    if check_granularity(granularity) == "weight":
        return recipe
    distill = recipe.distill
    epochs = distill.gradual_epochs or max(1, round(CHANNEL_GRADUAL_SHARE * distill.epochs))
    return replace(
        recipe, refit=None, distill=replace(distill, gradual_epochs=epochs, gradual_start=CHANNEL_GRADUAL_START)
    )


def with_overrides(
    recipe: Recipe,
    dream: dict[str, Any] | None = None,
    distill: dict[str, Any] | None = None,
    refit: dict[str, Any] | None = None,
    *,
    use_refit: bool | None = None,
) -> Recipe:
    """A copy of ``recipe`` with some knobs changed, e.g. ``with_overrides(r, {"steps": 50})``.

    ``use_refit`` switches the refit on or off (``None`` keeps the recipe's choice); ``refit``
    knobs need it on. New ``epochs`` keep the recipe's share of them pruned gradually, unless
    ``gradual_epochs`` is given too.
    """
    on = recipe.refit is not None if use_refit is None else use_refit
    if not on and refit:
        raise ValueError(
            f"refit settings ({', '.join(refit)}) given, but this recipe does not refit; switch it on as well "
            "(use_refit=True; --set refit=on on the command line) or use a preset that refits (quick)"
        )
    distill = dict(distill or {})
    if "epochs" in distill and "gradual_epochs" not in distill and recipe.distill.gradual_epochs:
        distill["gradual_epochs"] = max(
            1, round(recipe.distill.gradual_epochs * distill["epochs"] / recipe.distill.epochs)
        )
    refit_config = replace(recipe.refit or RefitConfig(), **(refit or {})) if on else None
    return Recipe(replace(recipe.dream, **(dream or {})), replace(recipe.distill, **distill), refit_config)


@dataclass(frozen=True)
class RecoveryConfig:
    """One recovery run. Only ``teacher`` is required; the rest defaults to the recommended setup."""

    teacher: str  # registry id (see list_teachers()) or a checkpoint path (str or Path)
    data: str = "cifar10"  # evaluation data: "cifar10" or an ImageFolder directory (root with test/)
    sparsity: float = 0.75  # fraction removed: of Conv2d/Linear weights (granularity "weight"), of MACs ("channel")
    scope: str = "global"  # "global" (one ranking over all layers, the paper's), "layerwise" or "lamp"
    granularity: str = "weight"  # "weight" (single weights by L1 magnitude) or "channel" (whole channels: faster)
    recipe: Recipe | None = None  # None: get_preset("default", granularity), set on construction
    baselines: tuple[str, ...] = ("noise",)  # same-budget baselines: "noise" (Gaussian noise), "real" (real images)
    curve_per_class: int = 200  # per-epoch accuracy curve on this many test images per class (0 = full split)
    eval_per_class: int = 0  # reported accuracies on this many test images per class (0 = full split)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    seed: int = 0  # seeds pruning ties, dream initialization, labels and augmentation
    showcase: int = 0  # dreams per class formed first, step by step, to watch (not part of the transfer set)
    arch: str | None = None  # architecture, for checkpoints that do not record it
    normalization: str | None = None  # "imagenet", "cifar10" or "m1,m2,m3,s1,s2,s3", when not recorded
    cache: bool = True  # reuse the dreams, and the noise baseline, of an earlier run where they would come out the same

    def __post_init__(self) -> None:
        for name in ("teacher", "data"):  # paths are welcome; the run (and its report) keeps them as text
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        for name in ("teacher", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must be a registry id or a path (text), got {getattr(self, name)!r}")
        if isinstance(self.baselines, str):
            raise ValueError(
                f"baselines must be a tuple of names, got the text {self.baselines!r}; write ({self.baselines!r},)"
            )
        check_sparsity(self.sparsity)
        check_scope(self.scope)
        check_granularity(self.granularity)
        if self.recipe is None:
            object.__setattr__(self, "recipe", get_preset("default", self.granularity))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED - 1}, got {self.seed!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from: {', '.join(BASELINES)}")
        counts = (self.curve_per_class, self.eval_per_class)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(
                f"curve_per_class and eval_per_class must be whole numbers >= 0 (0 = the full split), got {counts}"
            )
        if not isinstance(self.cache, bool):
            raise ValueError(f"cache must be True or False, got {self.cache!r}")
        if isinstance(self.showcase, bool) or not isinstance(self.showcase, int) or self.showcase < 0:
            raise ValueError(f"showcase must be a whole number of dreams per class >= 0, got {self.showcase!r}")
        if self.recipe.distill.lr == LR_AUTO and not self.recipe.dream.holdout:
            raise ValueError(
                "distill lr 'auto' is chosen on held-out dreams, but dream holdout is 0; dream some "
                "(--set dream.holdout=128) or give the learning rate (--set distill.lr=0.03)"
            )
        if self.recipe.refit is not None and self.recipe.distill.gradual_epochs:
            raise ValueError(
                "the refit fits a student pruned in one cut, but distill gradual_epochs "
                f"({self.recipe.distill.gradual_epochs}) prunes it during distillation; turn one of them off "
                "(--set refit=off, or --set distill.gradual_epochs=0)"
            )


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
    refit_acc: float | None  # after the layer-wise refit, before distillation (None = not run)
    sparsity: float  # measured fraction removed: of prunable weights, or of MACs for channel pruning
    layers: list[LayerSparsity]
    curve: list[tuple[int, float]]  # (epoch, accuracy on the curve subset); epoch 0 = start of distillation
    distilled: DistillResult  # the learning rate used and its probes, the held-out agreement per epoch, the epoch kept
    curve_references: dict[str, float]  # teacher, pruned, refit and baseline accuracy on the curve subset
    baselines: dict[str, float | None]  # "noise", "real": accuracy on the evaluation split (None = not run)
    timings: dict[str, float]  # seconds per stage ("noise"/"real" for the baselines), "total", and the parts of
    # dream and distill that judge the run: "holdout" (dreaming them), "probes" (choosing the lr), "holdout_agreement"
    eval_info: dict[str, Any]
    device: str
    showcase: DreamSet | None = None  # the dreams formed to watch (config.showcase per class), if any
    baseline_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # "noise"/"real" per epoch
    sizes: dict[str, ModelSize] = field(default_factory=dict)  # "teacher" and "recovered": parameters, MACs, bytes
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # the same two, CPU, by batch size
    stored_baselines: tuple[str, ...] = ()  # baselines shown from an identical earlier run (BaselineCache), not run

    @property
    def pruning(self) -> str:
        """What was removed, in words: "75% of the weights removed" or "50% of the MACs removed (whole channels)"."""
        if self.config.granularity == "channel":
            return f"{self.sparsity:.0%} of the MACs removed (whole channels)"
        return f"{self.sparsity:.0%} of the weights removed"

    def speedup(self) -> dict[int, float]:
        """The recovered student's measured speed-up over the teacher, by batch size (1.0 = as fast)."""
        teacher, student = self.latency_ms.get("teacher", {}), self.latency_ms.get("recovered", {})
        return {b: teacher[b] / student[b] for b in teacher if b in student and student[b] > 0}

    @property
    def beat_start(self) -> bool:
        """Whether distillation handed back a trained epoch rather than the start it could not improve on."""
        return self.distilled.kept_epoch != 0

    def distill_record(self) -> dict[str, Any]:
        """The data-free choices of the run: the learning rate (and its probes), the held-out agreement of each
        evaluated epoch and the epoch kept by it (0 = the start: recovery did not beat it)."""
        d = self.distilled
        return {
            "lr": round(d.lr, 6),
            "lr_from": "probes" if d.lr_probes else "recipe",
            "lr_probes": [
                {"lr": round(lr, 6), "holdout_agreement": round(agreement, 2)} for lr, agreement in d.lr_probes
            ],
            "holdout_dreams": None if self.dreams.holdout is None else len(self.dreams.holdout),
            "holdout_agreement": {
                "epochs": [e for e, _ in d.holdout_agreement],
                "percent": [round(v, 2) for _, v in d.holdout_agreement],
            },
            "kept_epoch": d.kept_epoch,
            "beat_start": self.beat_start,
        }

    def report(self) -> dict[str, Any]:
        """A JSON-ready record of the run (what ``dfkd recover`` writes as report.json)."""
        import torchvision

        return {
            "teacher": self.config.teacher,
            "arch": self.teacher.arch,
            "teacher_acc": round(self.teacher_acc, 2),
            "pruned_acc": round(self.pruned_acc, 2),
            "refit_acc": _rounded(self.refit_acc),
            "recovered_acc": round(self.recovered_acc, 2),
            "sparsity": {
                "target": self.config.sparsity,
                "measured": round(self.sparsity, 4),
                "scope": self.config.scope,
                "granularity": self.config.granularity,
                "of": "MACs" if self.config.granularity == "channel" else "weights",
            },
            "size": {name: asdict(size) for name, size in self.sizes.items()},
            "latency_ms": {
                "device": "cpu",
                "threads": torch.get_num_threads(),
                **{name: {str(b): round(ms, 3) for b, ms in per.items()} for name, per in self.latency_ms.items()},
                "speedup": {str(b): round(x, 3) for b, x in self.speedup().items()},
            },
            "baselines": {
                "noise": _rounded(self.baselines.get("noise")),
                "real": _rounded(self.baselines.get("real")),
                "real_note": "the same recipe on as many real training images: NOT data-free",
                "stored": list(self.stored_baselines),  # shown from an identical earlier run, not run again
            },
            "dreams": {
                "count": len(self.dreams),
                "steps": self.dreams.steps,
                "teacher_top1": round(self.dreams.teacher_top1, 2),
                "made": "loaded" if self.dreams.origin else "in this run",
                **(self.dreams.origin or {}),  # file and sha256 of reused dreams
                "settings": self.dreams.settings,  # how the dreams were made, whether here or in an earlier run
            },
            "curve": {
                "epochs": [e for e, _ in self.curve],
                "accuracy": [round(a, 2) for _, a in self.curve],
                "references": {k: round(v, 2) for k, v in self.curve_references.items()},
                "baselines": {k: [round(a, 2) for _, a in v] for k, v in self.baseline_curves.items()},
                "images": self.eval_info["curve_images"],
            },
            "distill": self.distill_record(),
            "layers": [{"name": r.name, "kind": r.kind, "weights": r.total, "removed": r.removed} for r in self.layers],
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "eval": {k: v for k, v in self.eval_info.items() if k != "curve_images"},
            "device": self.device,
            "provenance": {
                "teacher_sha256": self.teacher.sha256,
                "git_commit": _git_commit(),
                "threads": torch.get_num_threads(),
            },
            "versions": {
                "dfkd": __version__,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "numpy": np.__version__,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "settings": asdict(self.config),
        }


def _git_commit() -> str | None:
    """The commit of the source checkout this library runs from (``+dirty`` with local changes), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or a slow file system
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class _Run:
    """What the stages of one :func:`recover` share: settings, where it runs, the data and the measurements."""

    config: RecoveryConfig
    device: torch.device
    teacher: Teacher | None = None
    test_set: ImageSet | None = None
    eval_set: ImageSet | None = None  # the reported accuracies
    curve_set: ImageSet | None = None  # the live curve and its references
    timings: dict[str, float] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)  # accuracy on the curve subset, by Network
    baseline_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # per epoch, like the curve
    sizes: dict[str, ModelSize] = field(default_factory=dict)
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)
    stored_baselines: list[str] = field(default_factory=list)  # shown from the baseline cache, not run
    gradual: GradualPruning | None = None  # pruning during distillation, when the recipe prunes gradually

    @property
    def input_size(self) -> tuple[int, int, int]:
        assert self.test_set is not None
        return tuple(self.test_set.images.shape[1:])  # type: ignore[return-value]

    def measure(self, model: nn.Module, images: ImageSet | None = None) -> float:
        assert self.teacher is not None and self.eval_set is not None
        return evaluate(
            model, self.eval_set if images is None else images, self.teacher.normalization, device=self.device
        )

    def measure_curve(self, model: nn.Module) -> float:
        return self.measure(model, self.curve_set)

    def eval_info(self) -> dict[str, Any]:
        """Which images the reported accuracies and the curve were measured on."""
        assert self.test_set is not None and self.eval_set is not None and self.curve_set is not None
        return {
            "dataset": self.test_set.name,
            "num_images": len(self.eval_set),
            "full_split": len(self.eval_set) == len(self.test_set),
            "curve_images": len(self.curve_set),
            "fingerprint": self.test_set.fingerprint(),  # of the whole split the subsets are drawn from
        }


def _load(run: _Run, dreams: DreamSet | None) -> Generator[Event, None, None]:
    """The teacher and the evaluation data, with every cross-check that needs no computation."""
    config = run.config
    yield StageStarted(Stage.LOAD, 0, f"teacher {config.teacher}, evaluation data {config.data}")
    t0 = time.perf_counter()
    teacher = load_teacher(config.teacher, arch=config.arch, normalization=config.normalization)
    require_batchnorm(teacher.model)
    test_set, note = align_classes(load_eval_set(config.data), teacher, config.data)
    if note:
        yield Notice(Stage.LOAD, note)
    if dreams is not None and dreams.classes != teacher.classes:
        raise ValueError(
            f"the given dreams were made for classes {dreams.classes}, not the teacher's {teacher.classes}"
        )
    made_by = (dreams.settings or {}).get("teacher_sha256") if dreams is not None else None
    if made_by and teacher.sha256 and made_by != teacher.sha256:
        raise ValueError(
            f"the given dreams were made by another teacher (sha256 {made_by[:12]}..., this one "
            f"{teacher.sha256[:12]}...); dream again (leave out --dreams) or pass the teacher that made them"
        )
    if "real" in config.baselines and not train_split_available(config.data):
        yield Notice(
            Stage.LOAD, f"{config.data} has no train/ split: the real-data baseline is skipped (reported as null)"
        )
    run.teacher, run.test_set = teacher, test_set
    run.eval_set = test_set.stratified_subset(config.eval_per_class, config.seed) if config.eval_per_class else test_set
    run.curve_set = (
        test_set.stratified_subset(config.curve_per_class, config.seed) if config.curve_per_class else run.eval_set
    )
    teacher.model.to(run.device)
    run.timings[Stage.LOAD] = time.perf_counter() - t0
    summary = {"eval_images": len(run.eval_set), "curve_images": len(run.curve_set)}
    yield StageFinished(Stage.LOAD, run.timings[Stage.LOAD], summary)


def _prune(run: _Run) -> Generator[Event, None, tuple[nn.Module, list[LayerSparsity], float]]:
    """The pruned network, its per-layer sparsity and overall sparsity (of weights, or of MACs for channels);
    the accuracy cliff on the curve subset."""
    config, teacher = run.config, run.teacher
    assert teacher is not None and run.test_set is not None
    if config.granularity == "channel":
        what = f"{config.scope} channel pruning to {config.sparsity:.0%} of MACs removed"
    else:
        what = f"{config.scope} L1 pruning to {config.sparsity:.0%}"
    yield StageStarted(Stage.PRUNE, 0, what)
    t0 = time.perf_counter()
    input_size = run.input_size
    pruned = prune_model(
        teacher.model, config.sparsity, config.scope, granularity=config.granularity, input_size=input_size
    )
    if config.granularity == "channel":
        run.sizes["teacher"] = measure_size(teacher.model, input_size)
    layers, sparsity = _removed(run, pruned)
    for network, model in ((Network.TEACHER, teacher.model), (Network.PRUNED, pruned)):
        run.references[network] = run.measure_curve(model)
        yield MetricLogged(Stage.PRUNE, Metric.CURVE_ACCURACY, network, run.references[network])
    run.gradual = _gradual(run)
    run.timings[Stage.PRUNE] = time.perf_counter() - t0
    yield StageFinished(Stage.PRUNE, run.timings[Stage.PRUNE], {"sparsity": sparsity, "layers": layers})
    return pruned, layers, sparsity


def _gradual(run: _Run) -> GradualPruning | None:
    """The recipe's gradual pruning for this run: ``None`` when it prunes in one cut, or when the target is no
    higher than where gradual pruning starts."""
    config, epochs = run.config, run.config.recipe.distill.gradual_epochs
    if not epochs or config.sparsity <= config.recipe.distill.gradual_start:
        return None
    channel = config.granularity == "channel"
    return GradualPruning(
        config.sparsity,
        config.recipe.distill.gradual_start,
        epochs,
        config.scope,
        config.granularity,
        dense_macs=run.sizes["teacher"].macs if channel else 0,
        input_size=run.input_size,
    )


def _student(run: _Run, pruned: nn.Module) -> nn.Module:
    """The network distillation starts from: the pruned one, or with gradual pruning the teacher pruned to
    where the schedule starts (the reported pruned accuracy stays the one-cut network's: the cost of pruning)."""
    if run.gradual is None:
        return clone_model(pruned)
    assert run.teacher is not None
    gradual = run.gradual
    return prune_model(
        run.teacher.model, gradual.first, gradual.scope, granularity=gradual.granularity, input_size=gradual.input_size
    )


def _removed(run: _Run, model: nn.Module) -> tuple[list[LayerSparsity], float]:
    """``model``'s per-layer sparsity against the teacher, and what it lacks of the teacher: the fraction of
    weights, or of MACs for channels."""
    assert run.teacher is not None
    layers = sparsity_report(model, dense=run.teacher.model)
    if run.config.granularity == "channel":
        return layers, 1 - measure_size(model, run.input_size).macs / run.sizes["teacher"].macs
    return layers, measured_sparsity(model)


def _showcase(run: _Run) -> Generator[Event, None, DreamSet | None]:
    """A few dreams per class formed with the recommended step count and a snapshot every step, so a
    viewer sees noise turn into pictures within seconds, whatever the transfer set's own recipe."""
    per_class, teacher = run.config.showcase, run.teacher
    assert teacher is not None
    if not per_class:
        return None
    count = per_class * teacher.num_classes
    config = replace(
        run.config.recipe.dream,
        num_images=count,
        batch_size=count,
        steps=SHOWCASE_STEPS,
        preview_every=1,
        adi=0.0,
        holdout=0,
    )
    showcase = yield from iter_dream(teacher, config, device=run.device, seed=run.config.seed, stage=Stage.SHOWCASE)
    run.timings[Stage.SHOWCASE] = showcase.seconds
    return showcase


def _dream(run: _Run, student: nn.Module, dreams: DreamSet | None) -> Generator[Event, None, DreamSet]:
    """The transfer set: the given dreams of an earlier run, else the dream cache's, else dreamed now (and cached).
    Reused dreams report their original wall time. Given dreams without held-out ones get them dreamed now, as the
    recipe's own run would have made them."""
    assert run.teacher is not None
    recipe, seed = run.config.recipe.dream, run.config.seed
    cache = DreamCache() if run.config.cache and DreamCache.holds(run.teacher, recipe) else None
    if dreams is None and cache is not None:
        dreams, note = cache.get(run.teacher, recipe, seed)
        if note:
            yield Notice(Stage.DREAM, note)
    if dreams is None:
        dreams = yield from iter_dream(run.teacher, recipe, student=student, device=run.device, seed=seed)
        run.timings[Stage.DREAM], run.timings["holdout"] = dreams.seconds, dreams.holdout_seconds
        if cache is not None:
            cache.put(run.teacher, recipe, seed, dreams)
        return dreams
    if dreams.holdout is None and recipe.holdout:
        only = replace(recipe, num_images=recipe.holdout, holdout=0)
        held = yield from iter_dream(
            run.teacher, only, student=student, device=run.device, seed=seed + HOLDOUT_SEED_OFFSET
        )
        dreams = replace(
            dreams, holdout=held.images, holdout_seconds=held.seconds, seconds=dreams.seconds + held.seconds
        )
        run.timings["holdout"] = held.seconds
    else:
        yield StageStarted(Stage.DREAM, 0, _reused_words(run.teacher, dreams, cache))
        yield StageFinished(Stage.DREAM, 0.0, {"teacher_top1": dreams.teacher_top1, "reused": True})
    yield MetricLogged(Stage.DREAM, Metric.DREAM_TOP1, Network.TEACHER, dreams.teacher_top1)
    run.timings[Stage.DREAM] = dreams.seconds
    return dreams


def _reused_words(teacher: Teacher, dreams: DreamSet, cache: DreamCache | None) -> str:
    origin = Path((dreams.origin or {}).get("file", ""))
    if cache is not None and origin.parent == cache.root and origin.is_file():
        return f"{len(dreams)} dreams of {teacher.arch}, made {age_in_words(origin)} ago, reused (dream cache)"
    return f"reusing {len(dreams)} dreams made earlier"


def _refit(run: _Run, student: nn.Module, dreams: DreamSet) -> Generator[Event, None, nn.Module | None]:
    """The layer-wise refit of ``student`` on the dreams, when the recipe has one; returns a copy of the refit student."""
    config, teacher = run.config.recipe.refit, run.teacher
    assert teacher is not None
    if config is None:
        return None
    result = yield from iter_refit(
        student,
        teacher.model,
        dreams.images,
        teacher.normalization,
        config,
        evaluate_fn=run.measure_curve,
        device=run.device,
    )
    run.timings[Stage.REFIT] = result.seconds
    assert result.accuracy is not None
    run.references[Network.REFIT] = result.accuracy
    return clone_model(student)


def _distill(
    run: _Run, student: nn.Module, pruned: nn.Module, dreams: DreamSet, start: float
) -> Generator[Event, None, tuple[list[tuple[int, float]], DistillResult]]:
    """Distillation on the dreams, judged on the held-out ones; returns the accuracy curve (epoch 0 being
    ``start``) and the result, whose ``student`` is the network kept."""
    teacher = run.teacher
    assert teacher is not None
    t0 = time.perf_counter()
    yield MetricLogged(Stage.DISTILL, Metric.CURVE_ACCURACY, Network.RECOVERED, start, 0)
    result = yield from iter_distill(
        student,
        teacher.model,
        dreams.images,
        teacher.normalization,
        run.config.recipe.distill,
        holdout=dreams.holdout,
        start=pruned if run.gradual is not None else None,
        evaluate_fn=run.measure_curve,
        device=run.device,
        seed=run.config.seed,
        gradual=run.gradual,
    )
    run.timings[Stage.DISTILL] = time.perf_counter() - t0
    run.timings["probes"], run.timings[str(Metric.HOLDOUT_AGREEMENT)] = result.probe_seconds, result.score_seconds
    return [(0, start), *result.history], result


def _described(events: Generator[Event, None, Any], prefix: str) -> Generator[Event, None, Any]:
    """``events`` with ``prefix`` put before each stage description; returns what ``events`` returns."""
    try:
        while True:
            event = next(events)
            yield (
                replace(event, description=f"{prefix}: {event.description}")
                if isinstance(event, StageStarted)
                else event
            )
    except StopIteration as stop:
        return stop.value
    finally:
        events.close()


def _baseline_images(run: _Run, name: str, count: int, held: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` transfer images and ``held`` held out beside them (``None`` when 0), from the same source:
    Gaussian noise, or real training images for the real-image baseline (class-balanced when they are)."""
    assert run.teacher is not None
    if name == Network.NOISE:
        generator = torch.Generator().manual_seed(run.config.seed + 1)
        noise = torch.randn(count + held, 3, *run.input_size[1:], generator=generator)
        images = run.teacher.normalization.denormalize(noise).clamp(0, 1)
        return images[:count], images[count:] if held else None
    classes = run.teacher.num_classes
    per_class, held_per_class = max(1, count // classes), -(-held // classes)
    real = load_train_subset(run.config.data, per_class + held_per_class, seed=run.config.seed)
    rank = torch.zeros(len(real), dtype=torch.long)  # each image's place among those of its class
    for c in range(len(real.classes)):
        members = (real.labels == c).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    images = real.images.float() / 255
    return images[rank < per_class], images[rank >= per_class] if held else None


def _baseline(run: _Run, name: str, pruned: nn.Module, dreams: DreamSet) -> Generator[Event, None, float]:
    """The recipe's refit and distillation on noise or real images instead of dreams (held out from the same
    source, as the dreams are); returns its accuracy."""
    teacher, recipe = run.teacher, run.config.recipe
    assert teacher is not None
    network = Network(name)
    t0 = time.perf_counter()
    held = len(dreams.holdout) if dreams.holdout is not None else 0
    cache = BaselineCache() if run.config.cache and network is Network.NOISE and teacher.sha256 else None
    key = _baseline_key(run, name, len(dreams), held)
    stored = cache.get(key) if cache is not None else None
    if cache is not None and stored is not None:
        return (yield from _stored_baseline(run, network, stored, cache.path(key)))
    images, holdout = _baseline_images(run, name, len(dreams), held)
    student = _student(run, pruned)
    what = "noise baseline" if network is Network.NOISE else "same recipe on real images (not data-free)"
    start = run.references[Network.PRUNED]
    if recipe.refit is not None:
        yield from _described(
            iter_refit(
                student,
                teacher.model,
                images,
                teacher.normalization,
                recipe.refit,
                device=run.device,
                stage=Stage.BASELINE,
            ),
            what,
        )
        start = run.measure_curve(student)
    yield MetricLogged(Stage.BASELINE, Metric.CURVE_ACCURACY, network, start, 0)
    trained = yield from _described(
        iter_distill(
            student,
            teacher.model,
            images,
            teacher.normalization,
            recipe.distill,
            holdout=holdout,
            start=clone_model(pruned) if run.gradual is not None else None,
            evaluate_fn=run.measure_curve,
            device=run.device,
            seed=run.config.seed,
            stage=Stage.BASELINE,
            network=network,
            gradual=run.gradual,
        ),
        what,
    )
    curve = [(0, start), *trained.history]
    run.baseline_curves[name] = curve
    accuracy = run.measure(trained.student)
    run.references[network] = kept_point(curve, trained.kept_epoch)
    yield MetricLogged(Stage.BASELINE, Metric.ACCURACY, network, accuracy)
    run.timings[name] = time.perf_counter() - t0
    if cache is not None:
        cache.put(key, {"curve": curve, "accuracy": accuracy, "kept_epoch": trained.kept_epoch})
    return accuracy


def _baseline_key(run: _Run, name: str, images: int, held: int) -> dict[str, Any]:
    """Everything a baseline's result depends on: teacher, pruning, recipe, seed, budget and evaluation images."""
    config = run.config
    assert run.teacher is not None and run.test_set is not None
    return {
        "baseline": name,
        "teacher_sha256": run.teacher.sha256,
        "sparsity": config.sparsity,
        "scope": config.scope,
        "granularity": config.granularity,
        "recipe": asdict(config.recipe),
        "seed": config.seed,
        "images": images,
        "held": held,
        "test_split": run.test_set.fingerprint(),
        "curve_per_class": config.curve_per_class,
        "eval_per_class": config.eval_per_class,
        "device": run.device.type,
    }


def _stored_baseline(run: _Run, network: Network, stored: dict[str, Any], path: Path) -> Generator[Event, None, float]:
    """A baseline's stored result, replayed as the events of a run of it (its curve, then its accuracy)."""
    what = f"{network.value} baseline: the stored result of an identical run, made {age_in_words(path)} ago"
    yield StageStarted(Stage.BASELINE, 0, what)
    curve = [(int(epoch), float(accuracy)) for epoch, accuracy in stored["curve"]]
    for epoch, accuracy in curve:
        yield MetricLogged(Stage.BASELINE, Metric.CURVE_ACCURACY, network, accuracy, epoch)
    run.baseline_curves[network.value] = curve
    run.stored_baselines.append(network.value)
    run.references[network] = kept_point(curve, stored["kept_epoch"])
    yield MetricLogged(Stage.BASELINE, Metric.ACCURACY, network, float(stored["accuracy"]))
    yield StageFinished(Stage.BASELINE, 0.0, {"stored": True})
    run.timings[network.value] = 0.0
    return float(stored["accuracy"])


def kept_point(curve: list[tuple[int, float]], kept_epoch: int | None) -> float:
    """The curve's accuracy at the epoch the guard kept (the last point when it kept none)."""
    return dict(curve).get(kept_epoch, curve[-1][1]) if kept_epoch is not None else curve[-1][1]


def _evaluate(run: _Run, models: dict[Network, nn.Module | None]) -> Generator[Event, None, dict[Network, float]]:
    """The reported accuracies of every model given (``None`` entries are skipped), on the evaluation split;
    then the size and CPU latency of the teacher and the recovered student."""
    measured = {network: model for network, model in models.items() if model is not None}
    assert run.eval_set is not None
    yield StageStarted(Stage.EVALUATE, len(measured), f"top-1 on {len(run.eval_set):,} held-out images")
    t0 = time.perf_counter()
    final: dict[Network, float] = {}
    for step, (network, model) in enumerate(measured.items(), 1):
        final[network] = run.measure(model)
        yield MetricLogged(Stage.EVALUATE, Metric.ACCURACY, network, final[network])
        yield Progress(Stage.EVALUATE, step, len(measured))
    timed = {str(n): measured[n] for n in (Network.TEACHER, Network.RECOVERED)}
    for name, model in timed.items():
        run.sizes.setdefault(name, measure_size(model, run.input_size))
    run.latency_ms = measure_latency(timed, run.input_size)
    run.timings[Stage.EVALUATE] = time.perf_counter() - t0
    sizes = {name: asdict(size) for name, size in run.sizes.items()}
    summary = {**{str(k): v for k, v in final.items()}, "sizes": sizes, "latency_ms": run.latency_ms}
    yield StageFinished(Stage.EVALUATE, run.timings[Stage.EVALUATE], summary)
    return final


def recover(config: RecoveryConfig, dreams: DreamSet | None = None) -> Generator[Event, None, RecoveryResult]:
    """Run the full recovery, yielding events; returns (and emits as ``Finished``) the result.

    Stages, in order (:class:`Stage`): load, prune (the accuracy cliff, on the curve subset), showcase
    (when ``config.showcase`` asks for it), dream,
    refit (when the recipe has it), distill (accuracy per epoch on the curve subset), baseline (once
    per requested baseline) and evaluate (the reported numbers, on the full split unless
    ``eval_per_class`` is set). Cheap checks come first and the full-split evaluation last, so
    dreams appear within seconds.

    ``dreams`` reuses a dream set made earlier from the same teacher (dreams do not depend on the
    sparsity unless Adaptive DeepInversion is on); dreaming is then skipped and its original wall
    time reported.
    """
    started = time.perf_counter()
    run = _Run(config, resolve_device(config.device))
    torch.manual_seed(config.seed)
    yield from _load(run, dreams)
    pruned, layers, sparsity = yield from _prune(run)
    student = _student(run, pruned)
    showcase = yield from _showcase(run)
    dreams = yield from _dream(run, student, dreams)
    refit = yield from _refit(run, student, dreams)
    start = run.references[Network.REFIT if refit is not None else Network.PRUNED]
    curve, distilled = yield from _distill(run, student, pruned, dreams, start)
    student = distilled.student
    if run.gradual is not None:  # the student's own sparsity, reached during distillation
        layers, sparsity = _removed(run, student)
    baselines: dict[str, float | None] = dict.fromkeys(BASELINES)
    for name in config.baselines:
        if name != Network.REAL or train_split_available(config.data):
            baselines[name] = yield from _baseline(run, name, pruned, dreams)
    assert run.teacher is not None
    models = {
        Network.TEACHER: run.teacher.model,
        Network.PRUNED: pruned,
        Network.REFIT: refit,
        Network.RECOVERED: student,
    }
    final = yield from _evaluate(run, models)
    run.timings["total"] = time.perf_counter() - started
    result = RecoveryResult(
        config=config,
        teacher=run.teacher,
        student=student,
        dreams=dreams,
        teacher_acc=final[Network.TEACHER],
        pruned_acc=final[Network.PRUNED],
        recovered_acc=final[Network.RECOVERED],
        refit_acc=final.get(Network.REFIT),
        sparsity=sparsity,
        layers=layers,
        curve=curve,
        distilled=distilled,
        curve_references={str(k): v for k, v in run.references.items()},
        baselines=baselines,
        timings={str(k): v for k, v in run.timings.items()},
        eval_info=run.eval_info(),
        device=str(run.device),
        showcase=showcase,
        baseline_curves=dict(run.baseline_curves),
        stored_baselines=tuple(run.stored_baselines),
        sizes=dict(run.sizes),
        latency_ms=run.latency_ms,
    )
    yield Finished(result)
    return result


def run_recovery(
    config: RecoveryConfig, callback: Callable[[Event], None] | None = None, dreams: DreamSet | None = None
) -> RecoveryResult:
    """Run :func:`recover` to the end; ``callback(event)`` sees every event on the way."""
    return drain(recover(config, dreams), callback)
