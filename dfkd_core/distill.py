"""Recovery by knowledge distillation: the pruned student learns to answer like its teacher.

The loss is Hinton et al.'s (2015) softened KL divergence, ``T^2 * KL(p_teacher^T || p_student^T)``,
optionally plus a feature term: the student *is* the teacher with weights removed, so every
BatchNorm output of the student has a counterpart in the teacher, and matching them layer by
layer gives far more signal per image than the ten logits alone. A student that lost whole
channels is matched on the teacher channels it kept (its layers' ``kept_channels``).

Training images are whatever tensor set the caller passes - dreams for recovery, Gaussian
noise or a handful of real images for the baselines. This module never loads data itself.
Pruning masks stay attached, so pruned weights remain exactly zero throughout; with a
:class:`~dfkd_core.prune.GradualPruning` schedule the student loses more of them at the start of each
epoch until it reaches the target sparsity.

BatchNorm policy (``bn_mode``):

* ``"train"`` (default): BatchNorm layers normalize with each dream batch's statistics and
  re-estimate their running averages from the dreams. Pruning shifts every layer's activation
  distribution, so the statistics the teacher stored no longer describe the student; the dreams
  were made to match the teacher's input statistics, which makes them the right data to
  recalibrate on. This alone is worth several points at 75% sparsity.
* ``"frozen"``: BatchNorm layers stay in eval mode with the teacher's running statistics and only
  their affine parameters train (the setting of the paper's reference recipe).

The student's dropout (VGG's classifier, MobileNetV2's) stays off throughout: the teacher's soft labels
on augmented, cutmixed dreams regularise enough, and dropped units at lr 0.1 cost a pruned VGG-11 3.1
points at 50% (``benchmarks/results/vgg11/recovery-dropout-on.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._knobs import knob, require_finite, require_positive_int
from .channels import KEPT
from .events import Event, Metric, MetricLogged, Network, Progress, Stage, StageFinished, StageStarted, drain
from .prune import GradualPruning
from .zoo import Normalization

__all__ = ["DistillConfig", "DistillResult", "augment", "cutmix", "distill", "iter_distill"]

_BN = nn.modules.batchnorm._BatchNorm
_DROPOUT = nn.modules.dropout._DropoutNd  # the student's dropout layers: always off while it distills
BN_MODES = ("train", "frozen")  # recalibrate the student's BatchNorm statistics on the dreams, or keep the teacher's


@dataclass(frozen=True)
class DistillConfig:
    """How to distill; defaults are the recommended recovery recipe."""

    epochs: int = knob(30, "passes over the transfer set")
    batch_size: int = knob(32, "images per SGD step: small, so 1,024 dreams give 32 steps an epoch")
    lr: float = knob(0.1, "SGD peak learning rate, cosine-annealed to zero over all steps")
    momentum: float = knob(0.9, "SGD (Nesterov) momentum")
    weight_decay: float = knob(0.0, "L2 weight decay (the pruned student starts at a good minimum)")
    temperature: float = knob(4.0, "softmax temperature T of the KL loss (scaled by T^2)")
    feature_weight: float = knob(1.0, "weight of the BatchNorm-output matching term (0 = logits only)")
    crop_padding: int = knob(4, "random-crop augmentation: zero-pad by this many pixels, crop back")
    flip: bool = knob(True, "random horizontal flip augmentation")
    bn_mode: str = knob("train", "'train' (recalibrate on dream batches) or 'frozen' (keep the teacher's statistics)")
    cutmix: bool = knob(True, "paste a box of another image of the batch into each image; the teacher labels the blend")
    gradual_epochs: int = knob(
        0, "epochs over which the student is pruned gradually up to the target sparsity (0 = one cut beforehand)"
    )
    gradual_start: float = knob(
        0.5, "sparsity (of weights or of MACs) gradual pruning starts from (at most the target)"
    )
    eval_every: int = knob(1, "epochs between evaluations of the curve (the last epoch is always evaluated)")

    def __post_init__(self) -> None:
        require_positive_int(self, "distill", "epochs", "batch_size", "eval_every")
        require_finite(self, "distill", "lr", "momentum", "weight_decay", "feature_weight")
        require_finite(self, "distill", "temperature", positive=True)
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"distill crop_padding must be a whole number >= 0, got {self.crop_padding!r}")
        if isinstance(self.gradual_epochs, bool) or not isinstance(self.gradual_epochs, int):
            raise ValueError(f"distill gradual_epochs must be a whole number >= 0, got {self.gradual_epochs!r}")
        if not 0 <= self.gradual_epochs <= self.epochs:
            raise ValueError(
                f"distill gradual_epochs must be in [0, {self.epochs}] (the epochs), got {self.gradual_epochs}"
            )
        require_finite(self, "distill", "gradual_start")
        if self.gradual_start >= 1:
            raise ValueError(f"distill gradual_start must be a sparsity in [0, 1), got {self.gradual_start!r}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"distill bn_mode must be one of {', '.join(map(repr, BN_MODES))}, got {self.bn_mode!r}")


@dataclass
class DistillResult:
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, accuracy %) after each evaluation
    final_loss: float = float("nan")
    seconds: float = 0.0


def augment(pixels: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop (after zero padding) and horizontal flip of a ``(N, C, H, W)`` batch."""
    n, _, h, w = pixels.shape
    if padding:
        padded = F.pad(pixels, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator).to(pixels.device)
        dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator).to(pixels.device)
        rows = (dy + torch.arange(h, device=pixels.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=pixels.device))[:, None, None, :]
        batch = torch.arange(n, device=pixels.device)[:, None, None, None]
        channel = torch.arange(pixels.shape[1], device=pixels.device)[None, :, None, None]
        pixels = padded[batch, channel, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(pixels.device)[:, None, None, None]
        pixels = torch.where(mask, pixels.flip(3), pixels)
    return pixels


def cutmix(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Paste into each image a box cut from another image of the batch (one box size per batch).

    Distillation needs no labels - the teacher labels whatever it is shown - so every blend is a new,
    correctly labeled training input, and a small transfer set goes further. Unlike a weighted
    average (mixup), a pasted box keeps the pixel statistics that the student's recalibrated
    BatchNorm layers learn from. An image may be paired with itself (it then stays as it was).
    """
    if len(pixels) < 2:
        return pixels
    partner = pixels[torch.randperm(len(pixels), generator=generator).to(pixels.device)]
    keep = float(torch.rand((), generator=generator))  # share of the image that stays its own
    h, w = pixels.shape[-2:]
    box_h, box_w = round(h * math.sqrt(1 - keep)), round(w * math.sqrt(1 - keep))
    top = int(torch.randint(0, h - box_h + 1, (), generator=generator))
    left = int(torch.randint(0, w - box_w + 1, (), generator=generator))
    mixed = pixels.clone()
    mixed[..., top : top + box_h, left : left + box_w] = partner[..., top : top + box_h, left : left + box_w]
    return mixed


class _FeatureTaps:
    """Forward hooks recording the output of every BatchNorm layer, keyed by module name."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        self.names = names
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._recorder(n)) for n in names]

    def _recorder(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _shared_bn_names(student: nn.Module, teacher: nn.Module) -> dict[str, torch.Tensor | None]:
    """``{BatchNorm layer name: the teacher channels it kept}`` (``None``: all of them) of a student pruned
    from ``teacher``; ``ValueError`` when a layer has no counterpart."""
    teacher_bns = {n: m.num_features for n, m in teacher.named_modules() if isinstance(m, _BN)}
    shared: dict[str, torch.Tensor | None] = {}
    for name, m in student.named_modules():
        if not isinstance(m, _BN):
            continue
        kept = getattr(m, KEPT, None)
        if kept is None and name in teacher_bns and m.num_features < teacher_bns[name]:
            raise ValueError(
                f"feature_weight > 0: BatchNorm layer {name} lost channels but does not say which teacher channels it "
                "kept (a student loaded from a file does not); prune the teacher with "
                "prune_model(..., granularity='channel') in the same session, or set feature_weight to 0"
            )
        full = m.num_features if kept is None else int(kept.max()) + 1 if len(kept) else 0
        if (
            name not in teacher_bns
            or (kept is None and m.num_features != teacher_bns[name])
            or full > teacher_bns[name]
        ):
            shared = {}
            break
        shared[name] = kept
    if not shared or set(shared) != set(teacher_bns):
        raise ValueError(
            "feature_weight > 0 needs student and teacher with the same BatchNorm layers (a pruned copy of the "
            "teacher has them); set feature_weight to 0 for a student of another architecture"
        )
    return shared


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s softened KL divergence, ``T^2 * KL(p_teacher^T || p_student^T)``."""
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


@dataclass
class _Session:
    """What every epoch of one distillation shares."""

    student: nn.Module
    teacher: nn.Module
    images: torch.Tensor
    normalization: Normalization
    config: DistillConfig
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    taps: tuple[_FeatureTaps, _FeatureTaps]  # (student, teacher) BatchNorm outputs
    kept: dict[str, torch.Tensor | None]  # per tapped layer, the teacher channels the student kept (None = all)
    generator: torch.Generator
    device: torch.device
    stage: Stage
    gradual: GradualPruning | None = None  # prune further at the start of each epoch (None = pruned once)

    @property
    def steps_per_epoch(self) -> int:
        return _steps_per_epoch(self.images, self.config)


def _steps_per_epoch(images: torch.Tensor, config: DistillConfig) -> int:
    """One pass over the transfer set."""
    return math.ceil(len(images) / config.batch_size)


def _step_loss(session: _Session, batch: torch.Tensor) -> torch.Tensor:
    """The distillation loss of one augmented batch: KL on the logits plus the feature term."""
    config = session.config
    x = session.normalization.normalize(batch).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        teacher_logits = session.teacher(x)
    loss = _kd_loss(session.student(x), teacher_logits, config.temperature)
    student_taps, teacher_taps = session.taps
    if session.kept:
        feature_loss = sum(
            F.mse_loss(
                student_taps.outputs[n], teacher_taps.outputs[n] if kept is None else teacher_taps.outputs[n][:, kept]
            )
            for n, kept in session.kept.items()
        )
        loss = loss + config.feature_weight * feature_loss / len(session.kept)
    return loss


def _follow_new_shapes(session: _Session) -> None:
    """After channels were removed: the optimizer steps the student's new (smaller) tensors, keeping the momentum
    of the layers that kept their shape, and the feature term pairs the channels that are left."""
    params = list(session.student.parameters())
    alive, state = {id(p) for p in params}, session.optimizer.state
    for gone in [p for p in state if id(p) not in alive]:
        del state[gone]
    session.optimizer.param_groups[0]["params"] = params
    if session.kept:
        session.kept = _shared_bn_names(session.student, session.teacher)


def _epoch(session: _Session, epoch: int) -> Generator[Event, None, float]:
    """One pass over the transfer set in a fresh order; yields per-step progress, returns the mean loss."""
    config, student = session.config, session.student
    shown = {"epoch": epoch}
    if session.gradual is not None:  # before the modes are set: pruning channels runs the model in eval mode
        shown["sparsity"] = session.gradual.step(student, epoch)
        if session.gradual.granularity == "channel":
            _follow_new_shapes(session)
    student.train()
    for m in student.modules():
        if (isinstance(m, _BN) and config.bn_mode == "frozen") or isinstance(m, _DROPOUT):
            m.eval()
    order = torch.randperm(len(session.images), generator=session.generator)
    total = config.epochs * session.steps_per_epoch
    epoch_loss, seen = 0.0, 0
    for i in range(session.steps_per_epoch):
        batch = session.images[order[i * config.batch_size : (i + 1) * config.batch_size]].to(session.device)
        batch = augment(batch, config.crop_padding, config.flip, session.generator)
        if config.cutmix:
            batch = cutmix(batch, session.generator)
        loss = _step_loss(session, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"distillation loss became {value} in epoch {epoch}, step {i + 1}; lower the distill lr "
                f"(now {config.lr}) or the temperature (now {config.temperature})"
            )
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        session.optimizer.step()
        session.schedule.step()
        epoch_loss += value * len(batch)
        seen += len(batch)
        step = (epoch - 1) * session.steps_per_epoch + i + 1
        yield Progress(session.stage, step, total, {"loss": value, **shown})
    return epoch_loss / seen


def _lr_factor(total: int) -> Callable[[int], float]:
    """The learning rate of step ``s`` (from 0) as a fraction of the peak: a cosine decay to zero over all
    ``total`` steps."""

    def factor(s: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * s / total))

    return factor


def _transfer_set(images: torch.Tensor, config: DistillConfig) -> str:
    """What distillation will train on, in words; ``ValueError`` if there is nothing to train on."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"distillation needs a non-empty (N, 3, H, W) image tensor, got shape {tuple(images.shape)}")
    return f"{config.epochs} epochs over {len(images)} images"


def iter_distill(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: DistillConfig = DistillConfig(),
    *,
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: Stage = Stage.DISTILL,
    network: Network = Network.RECOVERED,
    gradual: GradualPruning | None = None,
) -> Generator[Event, None, DistillResult]:
    """Generator form of :func:`distill`: yields per-step progress and, with ``evaluate_fn``, the
    student's accuracy after each evaluated epoch (:attr:`Metric.CURVE_ACCURACY`, step = epoch),
    logged as ``network`` (the recovered student, or the baseline being trained). With ``gradual``,
    the student is pruned further at the start of each epoch (its sparsity joins the progress metrics)."""
    what = _transfer_set(images, config)
    if gradual is not None:
        what += f", pruned from {gradual.first:.0%} to {gradual.target:.0%}"
        what += f"{' of MACs' if gradual.granularity == 'channel' else ''} over {gradual.epochs} epochs"
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    student = student.to(device)
    total = config.epochs * _steps_per_epoch(images, config)
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(total))
    kept = _shared_bn_names(student, teacher) if config.feature_weight > 0 else {}
    taps = (_FeatureTaps(student, list(kept)), _FeatureTaps(teacher, list(kept)))
    session = _Session(
        student,
        teacher,
        images,
        normalization,
        config,
        optimizer,
        schedule,
        taps,
        kept,
        torch.Generator().manual_seed(seed),
        device,
        stage,
        gradual,
    )
    result = DistillResult()
    yield StageStarted(stage, total, what)
    started = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            result.final_loss = yield from _epoch(session, epoch)
            if evaluate_fn is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                accuracy = evaluate_fn(student)
                result.history.append((epoch, accuracy))
                yield MetricLogged(stage, Metric.CURVE_ACCURACY, network, accuracy, epoch)
    finally:
        for tap in taps:
            tap.remove()
        student.eval()
    result.seconds = time.perf_counter() - started
    yield StageFinished(stage, result.seconds, {"final_loss": result.final_loss})
    return result


def distill(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: DistillConfig = DistillConfig(),
    *,
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callback: Callable[[Event], None] | None = None,
    gradual: GradualPruning | None = None,
) -> DistillResult:
    """Train ``student`` in place to match ``teacher`` on ``images`` (pixels in [0, 1]).

    ``evaluate_fn(student) -> accuracy`` is called every ``config.eval_every`` epochs and
    its values form ``DistillResult.history``. ``callback(event)`` sees every event.
    ``gradual`` prunes the student further at the start of each epoch (see :class:`~dfkd_core.prune.GradualPruning`).
    Raises ``FloatingPointError`` as soon as the loss is NaN or infinite.
    """
    events = iter_distill(
        student,
        teacher,
        images,
        normalization,
        config,
        evaluate_fn=evaluate_fn,
        device=device,
        seed=seed,
        gradual=gradual,
    )
    return drain(events, callback)
