"""Dream: a transfer set made out of a teacher's BatchNorm statistics (DeepInversion).

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR 2020.
A batch of images is optimized with Adam, in the teacher's normalized input space, so that

* the teacher classifies it as class-balanced targets (cross-entropy);
* the mean and variance of every BatchNorm layer's input over the batch match the running
  statistics stored in that layer (the "BN prior": the teacher remembers its training data);
* neighbouring pixels agree (total variation, L1 and L2) and pixel energy stays small (L2);
* optionally (Adaptive DeepInversion) the current student disagrees with the teacher on it,
  so dreams land where the student still has something to learn (Jensen-Shannon term).

A few more dreams are made apart, from another seed, and never trained on (``holdout``): a data-free
user has no labelled images, so these are what a run checks its student on (:mod:`dfkd_core.holdout`).

Each step sees a randomly rolled and flipped view (jitter), the step size follows a cosine,
pixels are clipped to the valid range, and the lowest-loss iterate of each batch is kept. Finished dreams
are images with 8 bits per channel, like any saved image: a run trains on exactly the pixels a saved or
cached dream set gives back.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._files import save_atomically
from ._knobs import knob, require_at_most, require_finite, require_positive_int
from .events import (
    Event,
    ImagesReady,
    Metric,
    MetricLogged,
    Network,
    Progress,
    Stage,
    StageFinished,
    StageStarted,
    drain,
)
from .zoo import Teacher, file_sha256

log = logging.getLogger(__name__)

IMAGE_SIZE = 32  # side of the dreams in pixels (CIFAR)
LEVELS = 255  # finished dreams have 8 bits per channel: saved, cached and fresh dreams are the same pixels
HOLDOUT_SEED_OFFSET = 1_000_003  # the held-out dreams' seed is the run's plus this: other noise, other labels
DREAM_LIMITS = {  # the most of each that can finish within reason on any machine; more is refused up front
    "num_images": 1_000_000,  # 20x CIFAR-10's training set
    "holdout": 100_000,
    "batch_size": 65_536,
    "steps": 100_000,  # 500x the recipe's 200
    "jitter": IMAGE_SIZE // 2,
    "adi_temperature": 1_000.0,
}

__all__ = ["DreamConfig", "DreamSet", "batchnorm_layers", "dream", "iter_dream", "require_batchnorm", "total_variation"]


@dataclass(frozen=True)
class DreamConfig:
    """How to dream; defaults follow the CIFAR settings of Yin et al. (2020)."""

    num_images: int = knob(1024, "dreams to synthesize, class-balanced")
    holdout: int = knob(128, "dreams made apart (another seed) and never trained on: the run scores itself on them")
    batch_size: int = knob(256, "images optimized jointly; BatchNorm statistics are matched per batch")
    steps: int = knob(200, "Adam steps per batch")
    lr: float = knob(0.1, "Adam step size in normalized-pixel units, cosine-annealed to zero")
    ce: float = knob(1.0, "weight of the cross-entropy to the target classes (0 = BatchNorm statistics only)")
    r_bn: float = knob(0.05, "weight of the BatchNorm-statistics loss (sum over BatchNorm layers)")
    first_bn_multiplier: float = knob(10.0, "extra weight on the first BatchNorm layer, which sees raw colours")
    tv_l1: float = knob(0.0, "weight of the L1 total-variation prior (mean absolute pixel difference)")
    tv_l2: float = knob(2.5e-5, "weight of the L2 total-variation prior (norm of pixel differences)")
    l2: float = knob(0.0, "weight of the L2 norm of the image (keeps pixel energy small)")
    jitter: int = knob(2, "random roll of the input each step, in pixels, at most this far")
    flip: bool = knob(True, "random horizontal flip of the input each step")
    adi: float = knob(0.0, "Adaptive DeepInversion: weight of the teacher-student disagreement term")
    adi_temperature: float = knob(3.0, "softmax temperature of the disagreement term")
    preview_every: int = knob(10, "steps between live snapshots of the dreams and losses (and after each first step)")

    def __post_init__(self) -> None:
        require_positive_int(self, "dream", "num_images", "batch_size", "steps", "preview_every")
        require_at_most(self, "dream", DREAM_LIMITS)
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int) or self.holdout < 0:
            raise ValueError(f"dream holdout must be a whole number of dreams >= 0, got {self.holdout!r}")
        require_finite(self, "dream", "lr", "ce", "r_bn", "first_bn_multiplier", "tv_l1", "tv_l2", "l2", "adi")
        require_finite(self, "dream", "adi_temperature", positive=True)
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int) or self.jitter < 0:
            raise ValueError(f"dream jitter must be a whole number of pixels >= 0, got {self.jitter!r}")


@dataclass
class DreamSet:
    """Dreamed images in [0, 1] pixel space (CPU, float32) with the labels they were dreamed for, and the
    held-out dreams made beside them (never trained on; ``None`` when none were made)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    teacher_top1: float = float("nan")  # % of dreams the teacher assigns to their target class
    steps: int = 0  # optimization steps each dream received
    seconds: float = float("nan")  # wall time the dreaming took
    settings: dict[str, Any] | None = None  # the DreamConfig (and seed) that made them, when known
    origin: dict[str, str] | None = None  # the file they were loaded from and its sha256 (None = made in this process)
    holdout: torch.Tensor | None = None  # held-out dreams in [0, 1], never trained on: what the run scores itself on
    holdout_seconds: float = 0.0  # the part of ``seconds`` spent dreaming the held-out dreams

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set to ``path`` (pixels as 8-bit integers), whole or not at all."""
        record = {
            "images": (self.images * LEVELS).round().to(torch.uint8),
            "labels": self.labels,
            "classes": list(self.classes),
            "teacher_top1": self.teacher_top1,
            "steps": self.steps,
            "seconds": self.seconds,
            "settings": self.settings or {},
        }
        if self.holdout is not None:
            record["holdout"] = (self.holdout * LEVELS).round().to(torch.uint8)
            record["holdout_seconds"] = self.holdout_seconds
        return save_atomically(record, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DreamSet:
        """The dream set saved at ``path``; ``ValueError`` naming the problem if it is not one, or its
        images are not ``(N, 3, 32, 32)`` with one label per image among its classes."""
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            dreams = cls(
                record["images"].float() / LEVELS,
                record["labels"].long(),
                tuple(record["classes"]),
                float(record["teacher_top1"]),
                int(record.get("steps", 0)),
                float(record.get("seconds", float("nan"))),
                dict(record.get("settings") or {}) or None,
                {"file": os.fspath(path), "sha256": file_sha256(path)},
                record["holdout"].float() / LEVELS if "holdout" in record else None,
                float(record.get("holdout_seconds", 0.0)),
            )
        except Exception as err:
            raise ValueError(
                f"{str(path)!r} is not a dream set saved by DreamSet.save ({type(err).__name__}: {err})"
            ) from None
        shape = tuple(dreams.images.shape)
        if len(shape) != 4 or shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE) or not shape[0]:
            raise ValueError(
                f"the dreams in {str(path)!r} have shape {shape}; dreams are (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE})"
            )
        held = dreams.holdout
        if held is not None and (held.dim() != 4 or tuple(held.shape[1:]) != shape[1:] or not len(held)):
            raise ValueError(
                f"the held-out dreams in {str(path)!r} have shape {tuple(held.shape)}; they must be like the dreams, "
                f"(N, 3, {IMAGE_SIZE}, {IMAGE_SIZE})"
            )
        labels = dreams.labels
        if labels.shape != (shape[0],) or int(labels.min()) < 0 or int(labels.max()) >= len(dreams.classes):
            raise ValueError(
                f"the dreams in {str(path)!r} need one label per image in 0..{len(dreams.classes) - 1} "
                f"({len(dreams.classes)} classes); found {labels.numel()} labels for {shape[0]} images"
            )
        return dreams

    def grid(self, per_class: int = 8) -> torch.Tensor:
        """A ``(3, H, W)`` image grid: one row per class, ``per_class`` dreams across."""
        from torchvision.utils import make_grid

        rows = []
        for c in range(len(self.classes)):
            members = self.images[self.labels == c][:per_class]
            pad = torch.ones(per_class - len(members), *self.images.shape[1:])
            rows.append(torch.cat([members, pad]))
        return make_grid(torch.cat(rows), nrow=per_class, padding=1, pad_value=1.0)

    def save_grid(self, path: str | os.PathLike[str], per_class: int = 8) -> Path:
        from torchvision.utils import save_image

        path = Path(path)
        save_image(self.grid(per_class), path)
        return path


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model``, in definition order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def require_batchnorm(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model``; ``ValueError`` if there are none, or one keeps no running statistics.

    DeepInversion dreams by matching the running mean and variance stored in BatchNorm layers,
    so a model without them cannot be recovered data-free.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            f"the teacher ({type(model).__name__}) has no BatchNorm layer; DeepInversion dreams by matching the "
            "running mean and variance stored in BatchNorm layers, so this model cannot be recovered data-free"
        )
    if any(m.running_mean is None for m in layers):
        raise ValueError("a BatchNorm layer of the teacher tracks no running statistics (track_running_stats=False)")
    return layers


def _neighbour_differences(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pixel differences to the horizontal, vertical and both diagonal neighbours."""
    return (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )


def total_variation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, L2) total variation over horizontal, vertical and both diagonal neighbours."""
    diffs = _neighbour_differences(x)
    l1 = sum(d.abs().mean() for d in diffs)
    l2 = sum(torch.linalg.vector_norm(d) for d in diffs)
    return l1, l2  # type: ignore[return-value]


def _smoothness_prior(x: torch.Tensor, tv_l1: float, tv_l2: float) -> torch.Tensor:
    """``tv_l1 * L1 + tv_l2 * L2`` total variation, computing (and back-propagating) only the weighted terms."""
    diffs = _neighbour_differences(x)
    loss = x.new_zeros(())
    if tv_l1:
        loss = loss + tv_l1 * sum(d.abs().mean() for d in diffs)
    if tv_l2:
        loss = loss + tv_l2 * sum(torch.linalg.vector_norm(d) for d in diffs)
    return loss


def _jittered(x: torch.Tensor, shift: list[int], flip: bool) -> torch.Tensor:
    """``x`` rolled by ``shift`` pixels (rows, columns) and optionally mirrored, keeping its memory format.

    Only the dimensions that move are rolled: ``torch.roll`` over a dimension with a zero shift
    returns a plain contiguous tensor, which would run that step's whole network out of channels_last.
    """
    moved = [(s, d) for s, d in zip(shift, (2, 3)) if s]
    if moved:
        x = torch.roll(x, shifts=[s for s, _ in moved], dims=[d for _, d in moved])
    return torch.flip(x, dims=(3,)) if flip else x


class _Ones:
    """Vectors of ones by length, made once per dreaming run (summing by matrix-vector product must not
    refill one every step)."""

    def __init__(self) -> None:
        self._vectors: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.device, like.dtype)
        if key not in self._vectors:
            self._vectors[key] = torch.ones(n, device=like.device, dtype=like.dtype)
        return self._vectors[key]


class _ChannelMoments(torch.autograd.Function):
    """Per-channel (variance, mean) over all but dim 1, with a one-pass analytic backward.

    Several times faster on CPU than ``torch.var_mean`` and its autograd: with the channels
    last, the sums are a matrix-vector product and the sums of squares the diagonal of a small
    ``C x C`` Gram matrix, both BLAS calls at full memory speed; the backward is a single fused
    multiply-add, ``dx = a_c * x + b_c``. The one-pass variance is accurate for inputs whose
    mean is small next to their spread, such as the centred outputs of a folded convolution.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, ones: _Ones) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rows = x.movedim(1, -1).reshape(-1, x.shape[1])  # a view when x is channels_last
        n = rows.shape[0]
        mean = torch.mv(rows.t(), ones(n, x)) / n
        var = (rows.t() @ rows).diagonal() / n - mean.square()
        ctx.save_for_backward(x, mean)
        ctx.n = n
        return var.clamp_min(0), mean

    @staticmethod
    def backward(ctx, grad_var: torch.Tensor, grad_mean: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = (2 * grad_var / ctx.n).view(shape)
        shift = ((grad_mean - 2 * grad_var * mean) / ctx.n).view(shape)
        return torch.addcmul(shift, x, scale), None


def _bn_distance(mean: torch.Tensor, var: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    return torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)


class _FoldedBatchNorm(nn.Module):
    """Stands where a BatchNorm was after it is folded into the convolution before it.

    The folded convolution outputs ``u = f * (y - running_mean)`` per channel (``y`` the BatchNorm's
    input), with ``f`` the BatchNorm's scale ``a = gamma / sqrt(running_var + eps)`` - or 1 in the
    rare channel where ``a`` is ~0 and folding it would erase ``y``. The BatchNorm's output is then
    ``u + beta`` (times ``a`` in those channels only), and the statistics of ``y`` follow from those
    of ``u``: ``mean_y - running_mean = mean_u / f`` and ``var_y = var_u / f^2``. The loss is the one
    of the unfolded teacher; the BatchNorm's own forward and backward passes are saved. ``u`` is
    centred, so its one-pass variance is as accurate in float32 as that of ``y``.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, weight: float, prior: _BNStatisticsLoss):
        super().__init__()
        scale = _bn_scale(bn).detach()
        unfolded = _unfoldable_channels(scale)
        self.register_buffer("inv_fold", 1.0 / torch.where(unfolded, torch.ones_like(scale), scale))
        self.register_buffer("beta", (bn.bias if bn.affine else torch.zeros_like(scale)).detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("unfolded", unfolded.nonzero().flatten())
        self.register_buffer("unfolded_scale", scale[unfolded].clone())
        self.weight, self.prior = weight, prior

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        var, mean = _ChannelMoments.apply(u, self.prior.ones)
        distance = torch.linalg.vector_norm(mean * self.inv_fold) + torch.linalg.vector_norm(
            var * self.inv_fold.square() - self.running_var
        )
        self.prior.terms.append(self.weight * distance)
        shape = (1, -1, *([1] * (u.dim() - 2)))
        out = u + self.beta.view(shape)  # a fresh tensor: later in-place ops keep u intact
        if len(self.unfolded):
            out[:, self.unfolded] = u[:, self.unfolded] * self.unfolded_scale.view(shape) + self.beta[
                self.unfolded
            ].view(shape)
        return out


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    return torch.rsqrt(bn.running_var + bn.eps) * (bn.weight if bn.affine else 1.0)


def _unfoldable_channels(scale: torch.Tensor) -> torch.Tensor:
    """Channels whose BatchNorm scale is too close to 0 to fold (it stays a multiply after the fold)."""
    return scale.abs() < 1e-4


class _OneThreadTracer(torch.fx.Tracer):
    """A ``torch.fx`` tracer that leaves other threads alone. While it traces, fx patches ``nn.Module.__call__``
    and ``__getattr__`` for the whole process; a module called from another thread then (the app dreams for two
    sessions at once) runs as usual instead of being recorded into this trace."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


# fx restores what it patched when a trace ends; two traces at once would restore each other's patches
_TRACING = threading.Lock()


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    """``model`` as a ``torch.fx`` graph, traced safely while other threads run models."""
    with _TRACING:
        tracer = _OneThreadTracer()
        graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _fold_for_dreaming(model: nn.Module, prior: _BNStatisticsLoss) -> nn.Module:
    """``model`` as a ``torch.fx`` graph whose Conv2d -> BatchNorm2d pairs are folded (new modules
    in place of each pair; every other module is shared with ``model``).

    Raises if the model cannot be traced or a BatchNorm is not fed by a convolution of its own.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    graph = _trace(model)
    modules = dict(graph.named_modules())
    originals = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        bn, source = modules[node.target], node.args[0]
        conv = modules.get(source.target) if getattr(source, "op", None) == "call_module" else None
        if not (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and calls[source.target] == 1
            and calls[node.target] == 1
            and len(source.users) == 1
        ):
            raise ValueError(f"BatchNorm {node.target!r} is not fed by a Conv2d of its own")
        scale = _bn_scale(bn).detach()
        std = torch.sqrt(bn.running_var + bn.eps)
        fold_gamma = torch.where(_unfoldable_channels(scale), std, scale * std)  # folds f: 1 where a is ~0, else a
        fused = copy.deepcopy(conv)
        fused.weight, fused.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, fold_gamma, None
        )
        _set_submodule(graph, source.target, fused.requires_grad_(False))
        _set_submodule(graph, node.target, _FoldedBatchNorm(bn, prior.weights[originals[node.target]], prior))
    return graph


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class _BNStatisticsLoss:
    """The BN prior: per BatchNorm layer, the distance of its input's batch statistics to its running ones.

    ``network`` is the module to run: the teacher with each Conv2d -> BatchNorm2d pair folded
    (the same loss at the cost of a plain forward and backward) when the model allows it exactly,
    else the teacher itself with forward hooks on its BatchNorm layers.
    """

    def __init__(self, model: nn.Module, first_multiplier: float, fold: bool = True):
        self.layers = require_batchnorm(model)
        self.ones = _Ones()
        self.weights = {m: first_multiplier if i == 0 else 1.0 for i, m in enumerate(self.layers)}
        self.terms: list[torch.Tensor] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.network, self.folded = model, False
        if fold and not any(m.training for m in self.layers):
            try:
                folded = _fold_for_dreaming(model, self)
                self._check_agreement(model, folded)
                self.network, self.folded = folded, True
            except Exception as err:  # untraceable, unusual wiring, in-place surprises: hooks compute the same loss
                log.info("dreaming runs the unfolded teacher (%s: %s)", type(err).__name__, err)
                self.terms.clear()
        if not self.folded:
            self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _check_agreement(self, model: nn.Module, folded: nn.Module) -> None:
        """Run both networks forward and backward on a small probe; raise unless they agree."""
        reference = next(model.parameters())
        probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        probe = probe.to(reference.device, reference.dtype)
        outcomes = []
        for network in (model, folded):
            handles = [m.register_forward_hook(self._hook) for m in self.layers] if network is model else []
            x = probe.clone().requires_grad_(True)
            try:
                logits = network(x)
                prior = self.pop()
                (grad,) = torch.autograd.grad(logits.logsumexp(1).sum() + prior, x)
            finally:
                for handle in handles:
                    handle.remove()
            outcomes.append((logits.detach(), prior.detach(), grad))
        for name, a, b in zip(("logits", "BN loss", "input gradient"), *outcomes):
            if not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max())):
                raise ValueError(f"the folded teacher's {name} differs from the teacher's")

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        var, mean = _ChannelMoments.apply(inputs[0], self.ones)
        self.terms.append(self.weights[module] * _bn_distance(mean, var, module))  # type: ignore[arg-type]

    def pop(self) -> torch.Tensor:
        loss = sum(self.terms)
        self.terms.clear()
        return loss  # type: ignore[return-value]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _js_disagreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """1 - Jensen-Shannon divergence of the two softened predictions (0 = they disagree fully)."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


def _balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator)]


@dataclass
class _Canvas:
    """What every batch of one dreaming run shares: the networks, the prior and the valid pixel range."""

    teacher: Teacher
    config: DreamConfig
    prior: _BNStatisticsLoss
    student: nn.Module | None  # for the Adaptive DeepInversion term only
    low: torch.Tensor  # normalized value of a black pixel, per channel
    high: torch.Tensor  # normalized value of a white pixel, per channel
    generator: torch.Generator
    stage: Stage


def _dream_loss(canvas: _Canvas, view: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The DeepInversion objective of one jittered view, and its terms for the live plot."""
    config = canvas.config
    logits = canvas.prior.network(view)
    ce = F.cross_entropy(logits, targets)
    bn = canvas.prior.pop()
    loss = config.ce * ce + config.r_bn * bn
    if config.tv_l1 or config.tv_l2:
        loss = loss + _smoothness_prior(view, config.tv_l1, config.tv_l2)
    if config.l2:
        loss = loss + config.l2 * torch.linalg.vector_norm(view)
    if canvas.student is not None:
        loss = loss + config.adi * _js_disagreement(logits, canvas.student(view), config.adi_temperature)
    return loss, {"ce": ce, "bn": bn}  # type: ignore[dict-item]


def _dream_batch(
    canvas: _Canvas,
    n: int,
    first_step: int,
    total: int,
    earlier: list[torch.Tensor],
    earlier_labels: list[torch.Tensor],
) -> Generator[Event, None, tuple[torch.Tensor, torch.Tensor]]:
    """Optimize one batch of ``n`` dreams; yields progress and snapshots, returns (best pixels, targets).

    ``earlier`` holds the finished batches' pixels, shown beside this batch in each snapshot.
    """
    config, norm = canvas.config, canvas.teacher.normalization
    device = canvas.low.device
    targets = _balanced_labels(n, canvas.teacher.num_classes, canvas.generator).to(device)
    x = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=canvas.generator).to(device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=config.lr, betas=(0.5, 0.9))
    best_x, best_loss = x.detach().clone(), torch.tensor(float("inf"), device=device)
    shifts = torch.randint(-config.jitter, config.jitter + 1, (config.steps, 2), generator=canvas.generator).tolist()
    flips = (
        (torch.rand(config.steps, generator=canvas.generator) < 0.5).tolist() if config.flip else [False] * config.steps
    )
    for t in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * t / config.steps))
        loss, terms = _dream_loss(canvas, _jittered(x, shifts[t], flips[t]), targets)
        with torch.no_grad():
            better = loss < best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_x = torch.where(better, x.detach(), best_x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, canvas.high), canvas.low))
        if t == 0 or (t + 1) % config.preview_every == 0 or t + 1 == config.steps:  # first: still close to the noise
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"dream loss became {value} at step {t + 1}; lower the dream lr (now {config.lr}) "
                    f"or r_bn (now {config.r_bn})"
                )
            metrics = {"loss": value, **{k: float(v.detach()) for k, v in terms.items()}}
            yield Progress(canvas.stage, first_step + t, total, metrics)
            shown = torch.cat(earlier + [norm.denormalize(x.detach()).clamp(0, 1).cpu()])
            labels = torch.cat(earlier_labels + [targets.cpu()])
            yield ImagesReady(canvas.stage, first_step + t, shown, labels, canvas.teacher.classes, total)
    return best_x, targets


def iter_dream(
    teacher: Teacher,
    config: DreamConfig = DreamConfig(),
    *,
    student: nn.Module | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: Stage = Stage.DREAM,
) -> Generator[Event, None, DreamSet]:
    """Generator form of :func:`dream`: yields progress and image snapshots, returns the DreamSet."""
    if config.adi > 0 and student is None:
        raise ValueError("dream adi > 0 needs the current student (Adaptive DeepInversion)")
    device = torch.device(device)
    model = teacher.model.to(device).eval()
    student = student.to(device).eval() if student is not None and config.adi > 0 else None
    norm = teacher.normalization
    sizes = _batch_sizes(config.num_images, config.batch_size)
    held_sizes = _batch_sizes(config.holdout, config.batch_size)
    total = (len(sizes) + len(held_sizes)) * config.steps
    held = f" (and {config.holdout} held out)" if config.holdout else ""
    yield StageStarted(stage, total, f"{config.num_images} dreams{held} x {config.steps} steps")
    started = time.perf_counter()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    frozen += [(p, p.requires_grad) for p in student.parameters()] if student is not None else []
    for p, _ in frozen:
        p.requires_grad_(False)
    prior = _BNStatisticsLoss(model, config.first_bn_multiplier)
    canvas = _Canvas(
        teacher,
        config,
        prior,
        student,
        norm.normalize(torch.zeros(1, 3, 1, 1, device=device)),
        norm.normalize(torch.ones(1, 3, 1, 1, device=device)),
        torch.Generator().manual_seed(seed),
        stage,
    )
    shown: list[torch.Tensor] = []  # every finished batch, for the snapshots
    shown_labels: list[torch.Tensor] = []
    try:
        images, labels, correct = yield from _dream_batches(canvas, sizes, 0, total, shown, shown_labels)
        held_started = time.perf_counter()
        canvas = replace(canvas, generator=torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET))
        holdout, _, _ = yield from _dream_batches(canvas, held_sizes, len(sizes), total, shown, shown_labels)
        held_seconds = time.perf_counter() - held_started
    finally:
        prior.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    seconds = time.perf_counter() - started
    top1 = 100.0 * correct / config.num_images
    made = {**asdict(config), "seed": seed, "teacher_sha256": teacher.sha256}
    dreams = DreamSet(images, labels, teacher.classes, top1, config.steps, seconds, made)
    if len(holdout):
        dreams.holdout, dreams.holdout_seconds = holdout, held_seconds
    yield MetricLogged(stage, Metric.DREAM_TOP1, Network.TEACHER, top1)
    yield StageFinished(stage, seconds, {"teacher_top1": dreams.teacher_top1, "dreams": dreams})
    return dreams


def _eight_bit(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` in [0, 1] rounded to the nearest of :data:`LEVELS` + 1 levels, as a saved image keeps them."""
    return (pixels * LEVELS).round() / LEVELS


def _batch_sizes(count: int, batch_size: int) -> list[int]:
    """``count`` images in batches of at most ``batch_size``."""
    return [min(batch_size, count - start) for start in range(0, count, batch_size)]


def _dream_batches(
    canvas: _Canvas,
    sizes: list[int],
    done: int,
    total: int,
    shown: list[torch.Tensor],
    shown_labels: list[torch.Tensor],
) -> Generator[Event, None, tuple[torch.Tensor, torch.Tensor, int]]:
    """Dream one batch of each of ``sizes`` after ``done`` batches of the stage; returns their pixels in [0, 1] and
    labels, and how many of them the teacher assigns to their target class. Finished batches join ``shown``."""
    model, norm, steps = canvas.teacher.model, canvas.teacher.normalization, canvas.config.steps
    images: list[torch.Tensor] = [torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE)]
    labels: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)]
    correct = 0
    for b, n in enumerate(sizes):
        best, targets = yield from _dream_batch(canvas, n, (done + b) * steps + 1, total, shown, shown_labels)
        with torch.no_grad():
            correct += int((model(best).argmax(1) == targets).sum())
            canvas.prior.pop()
        images.append(_eight_bit(norm.denormalize(best).clamp(0, 1).float().cpu().contiguous()))
        labels.append(targets.cpu())
        shown.append(images[-1])
        shown_labels.append(labels[-1])
    return torch.cat(images), torch.cat(labels), correct


def dream(
    teacher: Teacher,
    config: DreamConfig = DreamConfig(),
    *,
    student: nn.Module | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callback: Callable[[Event], None] | None = None,
) -> DreamSet:
    """Dream ``config.num_images`` class-balanced images out of ``teacher`` (DeepInversion).

    ``callback(event)`` receives :class:`Progress` and :class:`ImagesReady` events every
    ``config.preview_every`` steps - hand it to a plot to watch the dreams form. ``student``
    is only used when ``config.adi > 0``. Raises ``ValueError`` if the teacher has no
    BatchNorm layer and ``FloatingPointError`` if the loss stops being finite.
    """
    return drain(iter_dream(teacher, config, student=student, device=device, seed=seed), callback)
