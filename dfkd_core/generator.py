"""Generator synthesis: a small network that dreams a fresh batch at every step of distillation.

DeepInversion (:mod:`dfkd_core.dream`) optimizes every dream's pixels from scratch: 200 teacher
passes buy one batch, which distillation then shows to the student 30 times. A generator
amortizes that cost (Fast-DFKD, Fang et al., AAAI 2022; DFAD and CMI before it): a conditional
convolutional network ``(noise, class) -> image`` is trained against the frozen teacher with the
same losses (BatchNorm statistics, class cross-entropy, optionally the Adaptive DeepInversion
disagreement with the current student), and keeps learning while the student does. After a short
warm-up, each fresh batch costs one generator step, so the student sees tens of thousands of
images instead of a thousand.

:class:`DreamStream` is what :func:`dfkd_core.distill.iter_distill` draws on when it distills
online: every ``distill_steps`` student steps it asks for a fresh batch, which joins a memory
bank of earlier ones that the student's batches are sampled from. Nothing here reads an image
file: the only inputs are the teacher's weights and random noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._knobs import knob, require_finite, require_positive_int
from .dream import IMAGE_SIZE, DreamSet, _balanced_labels, _BNStatisticsLoss, _jittered, _js_disagreement
from .events import Event, ImagesReady, Metric, MetricLogged, Network, Progress, Stage, StageFinished, StageStarted
from .zoo import Teacher

__all__ = ["DreamGenerator", "DreamStream", "GeneratorConfig", "ImageStream", "ReplayStream", "iter_warmup"]

SEED_SIDE = IMAGE_SIZE // 4  # the generator starts from a SEED_SIDE x SEED_SIDE map and doubles it twice


@dataclass(frozen=True)
class GeneratorConfig:
    """How the generator dreams and how often it feeds distillation; defaults are the recommended recipe."""

    latent_dim: int = knob(128, "length of the noise vector each image is generated from")
    width: int = knob(32, "channels of the generator's last block (twice as many before it)")
    batch_size: int = knob(256, "images per generator step; BatchNorm statistics are matched per batch")
    warmup_steps: int = knob(40, "generator steps before distillation starts (its samples are shown as they form)")
    steps_per_batch: int = knob(1, "generator steps for each fresh batch during distillation")
    meta_rate: float = knob(
        1.0, "share of a fresh batch's steps kept in the next batch's start (< 1: a Reptile meta-learned start)"
    )
    distill_steps: int = knob(16, "student steps between two fresh batches")
    batches_per_epoch: int = knob(2, "fresh batches per distillation epoch (2 x 16 steps: as many as 1,024 dreams)")
    bank_size: int = knob(0, "images kept in the memory bank the student samples from (0 = every batch so far)")
    initial_bank: int = knob(1, "batches in the memory bank when distillation starts: the warm-up's last ones")
    lr: float = knob(4e-3, "Adam step size of the generator")
    ce: float = knob(1.0, "weight of the cross-entropy to the target classes")
    r_bn: float = knob(0.1, "weight of the BatchNorm-statistics loss (sum over BatchNorm layers)")
    first_bn_multiplier: float = knob(10.0, "extra weight on the first BatchNorm layer, which sees raw colours")
    jitter: int = knob(2, "random roll of the teacher's input each step, in pixels, at most this far")
    flip: bool = knob(True, "random horizontal flip of the teacher's input each step")
    adi: float = knob(1.0, "weight of the teacher-student disagreement term (dreams where the student is wrong)")
    adi_temperature: float = knob(3.0, "softmax temperature of the disagreement term")
    diversity: float = knob(0.0, "weight of a term that pushes same-class images apart in the teacher's features")
    preview_every: int = knob(5, "warm-up steps between live snapshots of the samples")

    def __post_init__(self) -> None:
        require_positive_int(
            self,
            "generator",
            "latent_dim",
            "width",
            "batch_size",
            "warmup_steps",
            "steps_per_batch",
            "distill_steps",
            "batches_per_epoch",
            "initial_bank",
            "preview_every",
        )
        require_finite(self, "generator", "lr", "ce", "r_bn", "first_bn_multiplier", "adi", "diversity")
        require_finite(self, "generator", "adi_temperature", positive=True)
        for name in ("bank_size", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"generator {name} must be a whole number >= 0, got {value!r}")
        require_finite(self, "generator", "meta_rate", positive=True)
        if self.meta_rate > 1:
            raise ValueError(f"generator meta_rate must be in (0, 1], got {self.meta_rate!r}")
        if self.bank_size and self.bank_size < self.batch_size:
            raise ValueError(
                f"generator bank_size ({self.bank_size}) must hold at least one batch ({self.batch_size}), or be 0"
            )
        if self.initial_bank > self.warmup_steps:
            raise ValueError(
                f"generator initial_bank ({self.initial_bank}) cannot exceed the warm-up's {self.warmup_steps} batches"
            )
        if self.bank_size and self.initial_bank * self.batch_size > self.bank_size:
            raise ValueError(
                f"generator bank_size ({self.bank_size}) must hold the initial_bank's {self.initial_bank} batches "
                f"of {self.batch_size}"
            )


class DreamGenerator(nn.Module):
    """``(noise, class) -> image`` in [0, 1]: a linear seed map, then two upsample-conv-BN blocks (DCGAN style).

    The class enters by scaling the noise with a learned class embedding, so one network dreams
    every class and a batch can be made class-balanced.
    """

    def __init__(self, num_classes: int, latent_dim: int = 128, width: int = 32):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.embedding = nn.Embedding(num_classes, latent_dim)
        self.seed = nn.Linear(latent_dim, 2 * width * SEED_SIDE * SEED_SIDE)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 3, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seed = self.seed(noise * self.embedding(labels))
        return self.body(seed.view(len(noise), 2 * self.width, SEED_SIDE, SEED_SIDE))


def same_class_similarity(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the features of every pair of distinct images with the same label.

    A generator can satisfy the class and BatchNorm losses with a few images per class drawn again
    and again; penalizing this similarity (a batch-local form of CMI's contrastive term, Fang et al.,
    IJCAI 2021) asks it for images the teacher itself tells apart. 0 when no two images share a label.
    """
    unit = F.normalize(features.flatten(1).float(), dim=1)
    pairs = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if not pairs.any():
        return unit.sum() * 0.0
    return (unit @ unit.T)[pairs].mean()


class ImageStream:
    """Fresh batches on request, kept in a memory bank that distillation samples its batches from.

    Subclasses say where a batch comes from (:meth:`step`); the bank, the sampling and the schedule
    (``config.batch_size``, ``distill_steps``, ``batches_per_epoch``, ``bank_size``) are shared, so
    a baseline fed from real images or noise follows exactly the schedule of the generator.
    """

    def __init__(self, teacher: Teacher, config: GeneratorConfig):
        self.teacher, self.config = teacher, config
        self.steps, self.seconds, self.made, self.agreed = 0, 0.0, 0, 0
        self.bank = torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)  # pixels x 255, oldest first
        self.bank_labels = torch.empty(0, dtype=torch.long)

    def step(self, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """A fresh batch: pixels in [0, 1] on the CPU, their labels, and what making it measured."""
        raise NotImplementedError

    @property
    def teacher_top1(self) -> float:
        """% of the images handed out so far that the teacher assigns to their target class."""
        return 100.0 * self.agreed / max(1, self.made)

    def remember(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch to the memory bank (stored as 8-bit pixels, like a saved dream set), dropping the
        oldest images beyond ``config.bank_size``."""
        self.bank = torch.cat([self.bank, (pixels * 255).round().to(torch.uint8)])
        self.bank_labels = torch.cat([self.bank_labels, labels])
        if self.config.bank_size and len(self.bank) > self.config.bank_size:
            self.bank, self.bank_labels = (
                self.bank[-self.config.bank_size :],
                self.bank_labels[-self.config.bank_size :],
            )

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images drawn uniformly (with replacement) from the memory bank, pixels in [0, 1]."""
        index = torch.randint(0, len(self.bank), (n,), generator=generator)
        return self.bank[index].float().div_(255)

    def refill(self, stage: Stage, step: int, total: int) -> Generator[Event, None, None]:
        """A fresh batch (``config.steps_per_batch`` generator steps) into the memory bank; yields its snapshot."""
        pixels, labels, _ = self.fresh_batch()
        self.remember(pixels, labels)
        yield ImagesReady(stage, step, pixels, labels, self.teacher.classes, total)

    def fresh_batch(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The batch distillation asks for: ``config.steps_per_batch`` steps of :meth:`step`."""
        return self.step(self.config.steps_per_batch)

    def settings(self, seed: int) -> dict:
        return {"synthesis": "generator", **asdict(self.config), "seed": seed, "teacher_sha256": self.teacher.sha256}

    def dreams(self, seed: int = 0) -> DreamSet:
        """The memory bank as a dream set: what the student was last sampling from."""
        return DreamSet(
            self.bank.float() / 255,
            self.bank_labels.clone(),
            self.teacher.classes,
            self.teacher_top1,
            self.steps,
            self.seconds,
            self.settings(seed),
        )

    def close(self) -> None:
        """Give back what the stream holds (frozen parameters, hooks)."""


class ReplayStream(ImageStream):
    """Hands out the rows of a fixed image tensor batch by batch (wrapping around), on the generator's
    schedule: the baselines (noise, or real images for the oracle) trained exactly as the dreams are."""

    def __init__(self, teacher: Teacher, config: GeneratorConfig, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(teacher, config)
        if images.dim() != 4 or not len(images):
            raise ValueError(f"a replay stream needs a non-empty (N, 3, H, W) image tensor, got {tuple(images.shape)}")
        self.images, self.labels, self.next = images, labels, 0

    def step(self, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        index = (self.next + torch.arange(self.config.batch_size)) % len(self.images)
        self.next = int(index[-1]) + 1
        self.made += len(index)
        return self.images[index].float(), self.labels[index], {}


class DreamStream(ImageStream):
    """A generator trained against the frozen teacher, which hands out a fresh batch on request.

    The generator is never reset: the one trained so far is each new batch's start, so after the
    warm-up a batch costs ``config.steps_per_batch`` steps. With ``config.meta_rate`` below 1 that
    start is meta-learned (Reptile, as Fast-DFKD); at 1 it is simply the generator that keeps
    learning. ``student`` is only used for the disagreement
    term (``config.adi > 0``). The teacher's parameters are frozen while the stream is open;
    :meth:`close` gives them back.
    """

    def __init__(
        self,
        teacher: Teacher,
        config: GeneratorConfig = GeneratorConfig(),
        *,
        student: nn.Module | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        if config.adi > 0 and student is None:
            raise ValueError("generator adi > 0 needs the current student")
        super().__init__(teacher, config)
        self.device = torch.device(device)
        self.student = student if config.adi > 0 else None
        self.random = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # the seed decides the initial weights; the global generator is left be
            torch.manual_seed(seed)
            self.network = DreamGenerator(teacher.num_classes, config.latent_dim, config.width).to(self.device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, betas=(0.5, 0.999))
        model = teacher.model.to(self.device).eval()
        if config.diversity > 0 and not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise ValueError("generator diversity > 0 needs a teacher whose output layer is an nn.Linear")
        self._frozen = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in self._frozen:
            p.requires_grad_(False)
        self.prior = _BNStatisticsLoss(model, config.first_bn_multiplier)
        self._features: list[torch.Tensor] = []  # the teacher's penultimate features, for the diversity term
        self._feature_hook = None
        if config.diversity > 0:  # the network the loss runs (it may be a BatchNorm-folded copy)
            classifier = [m for m in self.prior.network.modules() if isinstance(m, nn.Linear)][-1]
            self._feature_hook = classifier.register_forward_pre_hook(self._keep_features)
        norm = teacher.normalization
        self._mean = torch.tensor(norm.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(norm.std, device=self.device).view(1, 3, 1, 1)

    def _keep_features(self, _: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if torch.is_grad_enabled():  # the generator's own passes, not distillation's no-grad teacher passes
            self._features = [inputs[0]]

    def _loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config = self.config
        view = ((pixels - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        shift = torch.randint(-config.jitter, config.jitter + 1, (2,), generator=self.random).tolist()
        flip = config.flip and bool(torch.rand((), generator=self.random) < 0.5)
        view = _jittered(view, shift, flip)
        logits = self.prior.network(view)
        ce, bn = F.cross_entropy(logits, labels), self.prior.pop()
        loss = config.ce * ce + config.r_bn * bn
        terms = {"ce": ce.detach(), "bn": bn.detach()}
        if self._feature_hook is not None:
            similarity = same_class_similarity(self._features.pop(), labels)
            loss = loss + config.diversity * similarity
            terms["similarity"] = similarity.detach()
        if self.student is not None:
            was_training = self.student.training
            student_params = [p for p in self.student.parameters() if p.requires_grad]
            for p in student_params:
                p.requires_grad_(False)
            try:
                student_logits = self.student.eval()(view)
            finally:
                for p in student_params:
                    p.requires_grad_(True)
                self.student.train(was_training)
            loss = loss + config.adi * _js_disagreement(logits, student_logits, config.adi_temperature)
        terms["agreed"] = (logits.detach().argmax(1) == labels).sum()
        return loss, terms

    def step(self, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``steps`` generator updates on one batch of fresh noise; returns its images (pixels in [0, 1],
        on the CPU, from the last update's forward pass), their labels and the losses."""
        started = time.perf_counter()
        n = self.config.batch_size
        labels = _balanced_labels(n, self.teacher.num_classes, self.random).to(self.device)
        noise = torch.randn(n, self.config.latent_dim, generator=self.random).to(self.device)
        self.network.train()
        for _ in range(steps):
            pixels = self.network(noise, labels)
            loss, terms = self._loss(pixels, labels)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"generator loss became {value} at step {self.steps + 1}; lower the generator lr (now "
                    f"{self.config.lr}) or r_bn (now {self.config.r_bn})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        self.made += n
        self.agreed += int(terms["agreed"])
        self.seconds += time.perf_counter() - started
        top1 = 100.0 * int(terms["agreed"]) / n
        metrics = {"loss": value, "top1": top1} | {k: float(v) for k, v in terms.items() if k != "agreed"}
        return pixels.detach().float().cpu(), labels.cpu(), metrics

    def fresh_batch(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """A batch made by ``config.steps_per_batch`` steps from the generator's start; with ``meta_rate``
        below 1 the start then moves only that share of the way to where the steps ended (Reptile, as
        Fast-DFKD meta-learns its start): a start good for every batch rather than for the last one."""
        rate = self.config.meta_rate
        start = [p.detach().clone() for p in self.network.parameters()] if rate < 1 else []
        batch = self.step(self.config.steps_per_batch)
        with torch.no_grad():
            for p, p0 in zip(self.network.parameters(), start):
                p.copy_(p0 + rate * (p - p0))
        return batch

    def close(self) -> None:
        self.prior.remove()
        if self._feature_hook is not None:
            self._feature_hook.remove()
        for p, flag in self._frozen:
            p.requires_grad_(flag)


def iter_warmup(stream: ImageStream, *, seed: int = 0, stage: Stage = Stage.DREAM) -> Generator[Event, None, DreamSet]:
    """Train the generator for ``config.warmup_steps`` steps before distillation starts; yields progress
    and snapshots of its samples as they form; its last ``config.initial_bank`` batches start the memory bank,
    returned as a dream set."""
    config = stream.config
    total = config.warmup_steps
    yield StageStarted(stage, total, f"generator warm-up: {config.warmup_steps} steps of {config.batch_size} images")
    started = time.perf_counter()
    kept: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    for t in range(total):
        pixels, labels, metrics = stream.step(1)
        if t >= total - config.initial_bank:
            kept.append((pixels, labels, metrics["top1"]))
        if t == 0 or (t + 1) % config.preview_every == 0 or t + 1 == total:
            yield Progress(stage, t + 1, total, metrics)
            yield ImagesReady(stage, t + 1, pixels, labels, stream.teacher.classes, total)
    stream.made, stream.agreed = 0, 0  # only the kept batches count
    for pixels, labels, top1 in kept:
        stream.made += len(labels)
        stream.agreed += round(len(labels) * top1 / 100)
        stream.remember(pixels, labels)
    seconds = time.perf_counter() - started
    dreams = stream.dreams(seed)
    yield MetricLogged(stage, Metric.DREAM_TOP1, Network.TEACHER, dreams.teacher_top1)
    yield StageFinished(stage, seconds, {"teacher_top1": dreams.teacher_top1, "dreams": dreams})
    return dreams
