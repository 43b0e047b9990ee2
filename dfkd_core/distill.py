"""Recovery by knowledge distillation: the pruned student learns to answer like its teacher.

The loss is Hinton et al.'s (2015) softened KL divergence, ``T^2 * KL(p_teacher^T || p_student^T)``,
optionally plus a feature term: the student *is* the teacher with weights removed, so every
BatchNorm output of the student has a counterpart in the teacher, and matching them layer by
layer gives far more signal per image than the ten logits alone.

Training images are whatever tensor set the caller passes - dreams for recovery, Gaussian
noise or a handful of real images for the baselines. This module never loads data itself.
Pruning masks stay attached, so pruned weights remain exactly zero throughout - or, with
``prune_ramp > 0``, they close gradually (smallest weights first) and are exactly the given masks
by the end of the ramp.

BatchNorm policy (``bn_mode``):

* ``"train"`` (default): BatchNorm layers normalize with each dream batch's statistics and
  re-estimate their running averages from the dreams. Pruning shifts every layer's activation
  distribution, so the statistics the teacher stored no longer describe the student; the dreams
  were made to match the teacher's input statistics, which makes them the right data to
  recalibrate on. This alone is worth several points at 75% sparsity.
* ``"frozen"``: BatchNorm layers stay in eval mode with the teacher's running statistics and only
  their affine parameters train (the setting of the paper's reference recipe).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .events import Event, MetricLogged, Progress, StageFinished, StageStarted, drain
from .prune import PruningRamp
from .zoo import Normalization

__all__ = ["MIXES", "DistillConfig", "DistillResult", "augment", "distill", "iter_distill", "mix_images"]

_BN = nn.modules.batchnorm._BatchNorm
MIXES = ("none", "mixup", "cutmix")  # ways to blend transfer images into new ones during distillation


@dataclass(frozen=True)
class DistillConfig:
    """KD recipe; defaults are the recommended recovery recipe."""

    epochs: int = 30  # passes over the transfer set
    batch_size: int = 32  # images per SGD step: small, so a 1,024-image transfer set gives 32 steps an epoch
    lr: float = 0.1  # SGD peak learning rate, cosine-annealed to zero over all steps
    momentum: float = 0.9  # SGD (Nesterov) momentum
    weight_decay: float = 0.0  # L2 weight decay (the pruned student starts at a good minimum)
    temperature: float = 4.0  # softmax temperature T of the KD loss (scaled by T^2)
    feature_weight: float = 1.0  # weight of the BatchNorm-output matching term (0 = logits only)
    crop_padding: int = 4  # random-crop augmentation: zero-pad by this many pixels, crop back
    flip: bool = True  # random horizontal flip augmentation
    bn_mode: str = "train"  # "train" (recalibrate on dream batches) or "frozen" (keep the teacher's statistics)
    mix: str = "cutmix"  # "cutmix" or "mixup": blend pairs of images into new ones the teacher labels ("none" = off)
    prune_ramp: float = 0.0  # share of the training over which pruned weights are removed gradually (0 = at once)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"distillation {name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "momentum", "weight_decay", "feature_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"distillation {name} must be a finite number >= 0, got {value!r}")
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.prune_ramp <= 1.0:
            raise ValueError(
                f"distillation prune_ramp must be in [0, 1] (a share of the training), got {self.prune_ramp!r}"
            )
        if self.crop_padding < 0:
            raise ValueError(f"distillation crop_padding must be >= 0, got {self.crop_padding!r}")
        if self.bn_mode not in ("frozen", "train"):
            raise ValueError(f"distillation bn_mode must be 'frozen' or 'train', got {self.bn_mode!r}")
        if self.mix not in MIXES:
            raise ValueError(f"distillation mix must be one of {', '.join(map(repr, MIXES))}, got {self.mix!r}")


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


def mix_images(pixels: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blend each image with another of the batch: ``"mixup"`` (a weighted average) or ``"cutmix"``
    (a box pasted from the other image), with one uniform mixing ratio per batch.

    Distillation needs no labels - the teacher labels whatever it is shown - so every blend is a new,
    correctly labeled training input, and a small transfer set goes further. With ``bn_mode="train"``
    prefer cutmix: a mixup blend has lower pixel variance than either image, which the recalibrated
    BatchNorm statistics would absorb. An image may be paired with itself (it then stays as it was).
    """
    if mode == "none" or len(pixels) < 2:
        return pixels
    partner = pixels[torch.randperm(len(pixels), generator=generator).to(pixels.device)]
    keep = float(torch.rand((), generator=generator))  # share of the image that stays its own
    if mode == "mixup":
        return keep * pixels + (1 - keep) * partner
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
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._recorder(n)) for n in names]

    def _recorder(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _shared_bn_names(student: nn.Module, teacher: nn.Module) -> list[str]:
    student_bns = {n: m.num_features for n, m in student.named_modules() if isinstance(m, _BN)}
    teacher_bns = {n: m.num_features for n, m in teacher.named_modules() if isinstance(m, _BN)}
    if not student_bns or student_bns != teacher_bns:
        raise ValueError(
            "feature_weight > 0 needs student and teacher with the same BatchNorm layers (a pruned copy of the "
            "teacher has them); set feature_weight to 0 for a student of another architecture"
        )
    return list(student_bns)


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
    stage: str = "distill",
) -> Generator[Event, None, DistillResult]:
    """Generator form of :func:`distill`: yields per-step progress and per-epoch accuracy."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"distillation needs a non-empty (N, 3, H, W) image tensor, got shape {tuple(images.shape)}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    teacher = teacher.to(device).eval()
    student = student.to(device)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.momentum > 0, weight_decay=config.weight_decay)  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    names = _shared_bn_names(student, teacher) if config.feature_weight > 0 else []
    student_taps, teacher_taps = _FeatureTaps(student, names), _FeatureTaps(teacher, names)
    ramp = PruningRamp(student) if config.prune_ramp > 0 else None
    ramp_steps = config.prune_ramp * total
    result = DistillResult()
    temperature = config.temperature
    yield StageStarted(stage, total, f"{config.epochs} epochs over {len(images)} images")
    started = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            student.train()
            if config.bn_mode == "frozen":
                for m in student.modules():
                    if isinstance(m, _BN):
                        m.eval()
            order = torch.randperm(len(images), generator=generator)
            epoch_loss, seen = 0.0, 0
            for i in range(steps_per_epoch):
                if ramp is not None:
                    ramp.update(((epoch - 1) * steps_per_epoch + i) / ramp_steps)
                batch = images[order[i * config.batch_size : (i + 1) * config.batch_size]].to(device)
                batch = mix_images(augment(batch, config.crop_padding, config.flip, generator), config.mix, generator)
                x = normalization.normalize(batch).contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    teacher_logits = teacher(x)
                student_logits = student(x)
                loss = (
                    F.kl_div(
                        F.log_softmax(student_logits / temperature, dim=1),
                        F.log_softmax(teacher_logits / temperature, dim=1),
                        log_target=True,
                        reduction="batchmean",
                    )
                    * temperature**2
                )
                if names:
                    feature_loss = sum(F.mse_loss(student_taps.outputs[n], teacher_taps.outputs[n]) for n in names)
                    loss = loss + config.feature_weight * feature_loss / len(names)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"distillation loss became {value} in epoch {epoch}, step {i + 1}; lower the distillation "
                        f"lr (now {config.lr}) or the temperature (now {temperature})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                epoch_loss += value * len(batch)
                seen += len(batch)
                yield Progress(stage, (epoch - 1) * steps_per_epoch + i + 1, total, {"loss": value, "epoch": epoch})
            result.final_loss = epoch_loss / seen
            if evaluate_fn is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                accuracy = evaluate_fn(student)
                result.history.append((epoch, accuracy))
                yield MetricLogged(stage, "accuracy", accuracy, epoch)
    finally:
        if ramp is not None:
            ramp.update(1.0)  # also when stopped early: the student never leaves with weights it should not have
        student_taps.remove()
        teacher_taps.remove()
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
    callback=None,
) -> DistillResult:
    """Train ``student`` in place to match ``teacher`` on ``images`` (pixels in [0, 1]).

    ``evaluate_fn(student) -> accuracy`` is called every ``config.eval_every`` epochs and
    its values form ``DistillResult.history``. ``callback(event)`` sees every event.
    Raises ``FloatingPointError`` as soon as the loss is NaN or infinite.
    """
    events = iter_distill(student, teacher, images, normalization, config,
                          evaluate_fn=evaluate_fn, device=device, seed=seed)  # fmt: skip
    return drain(events, callback)
