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
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ._knobs import knob, require_at_most, require_finite, require_positive_int
from .augment import augment, cutmix
from .channels import KEPT
from .events import Event, Metric, MetricLogged, Network, Notice, Progress, Stage, StageFinished, StageStarted, drain
from .holdout import HoldoutAgreement
from .prune import GradualPruning, clone_model
from .zoo import Normalization

__all__ = ["DistillConfig", "DistillResult", "augment", "cutmix", "distill", "iter_distill"]

_BN = nn.modules.batchnorm._BatchNorm
_DROPOUT = nn.modules.dropout._DropoutNd  # the student's dropout layers: always off while it distills
BN_MODES = ("train", "frozen")  # recalibrate the student's BatchNorm statistics on the dreams, or keep the teacher's
LR_AUTO = "auto"  # the learning rate chosen by probe runs scored on the held-out dreams
LR_FIRST_PROBE = 0.1  # the first learning rate tried: SGD's usual peak for a network with BatchNorm
LR_PROBE_FACTOR = 10**0.5  # probes step the learning rate by this factor, two to a decade
LR_MAX_PROBES = 5  # at most this many probes: from 0.1 they reach 0.001 or 1.0
DISTILL_LIMITS = {  # the most of each that can finish within reason on any machine; more is refused up front
    "epochs": 10_000,
    "batch_size": 65_536,
    "eval_every": 10_000,
    "crop_padding": 16,  # half of a 32-pixel image
    "temperature": 1_000.0,  # T^2 scales the loss: far above this it overflows
    "weight_decay": 1.0,
}


@dataclass(frozen=True)
class DistillConfig:
    """How to distill; defaults are the recommended recovery recipe."""

    epochs: int = knob(30, "passes over the transfer set")
    batch_size: int = knob(32, "images per SGD step: small, so 1,024 dreams give 32 steps an epoch")
    lr: float | str = knob(
        "auto",
        "SGD peak learning rate, cosine-annealed to zero; 'auto': chosen by one-epoch probe runs scored on held-out dreams",
    )
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
        require_at_most(self, "distill", DISTILL_LIMITS)
        if self.lr != LR_AUTO:
            require_finite(self, "distill", "lr")
        require_finite(self, "distill", "momentum", "weight_decay", "feature_weight")
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
    """What one distillation measured, and the network it hands back."""

    student: nn.Module  # the network kept: the trained student, or (by held-out agreement) an earlier epoch or start
    lr: float  # the peak learning rate the student was trained with
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, accuracy %) after each evaluation
    holdout_agreement: list[tuple[int, float]] = field(default_factory=list)  # (epoch, %); epoch 0 = the start
    kept_epoch: int | None = None  # the epoch ``student`` is from (0 = the start); None = the last, unjudged
    lr_probes: list[tuple[float, float]] = field(default_factory=list)  # (lr, held-out agreement after its probe)
    final_loss: float = float("nan")
    seconds: float = 0.0
    probe_seconds: float = 0.0  # the part of ``seconds`` the learning-rate probes took
    score_seconds: float = 0.0  # ... and scoring the student on the held-out dreams


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
    first_step: int = 0  # steps of the stage before this session's (the learning-rate probes before training)
    stage_steps: int = 0  # steps of the whole stage, for progress (0 = this session's own)
    probe: bool = False  # a learning-rate probe: its progress names the rate it tries instead of an epoch

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
    shown = {"epoch": epoch} if not session.probe else {"lr_probe": session.optimizer.defaults["lr"]}
    if session.gradual is not None:  # before the modes are set: pruning channels runs the model in eval mode
        shown["sparsity"] = session.gradual.step(student, epoch)
        if session.gradual.granularity == "channel":
            _follow_new_shapes(session)
    student.train()
    for m in student.modules():
        if (isinstance(m, _BN) and config.bn_mode == "frozen") or isinstance(m, _DROPOUT):
            m.eval()
    order = torch.randperm(len(session.images), generator=session.generator)
    total = session.stage_steps or config.epochs * session.steps_per_epoch
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
                f"(now {session.optimizer.defaults['lr']:.3g}) or the temperature (now {config.temperature})"
            )
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        session.optimizer.step()
        session.schedule.step()
        epoch_loss += value * len(batch)
        seen += len(batch)
        step = session.first_step + (epoch - 1) * session.steps_per_epoch + i + 1
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


def _session(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: DistillConfig,
    lr: float,
    seed: int,
    device: torch.device,
    stage: Stage,
    gradual: GradualPruning | None = None,
) -> _Session:
    """A distillation of ``student`` at peak learning rate ``lr``, ready for its first epoch (hooks attached:
    :func:`_close` removes them)."""
    total = config.epochs * _steps_per_epoch(images, config)
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(total))
    kept = _shared_bn_names(student, teacher) if config.feature_weight > 0 else {}
    taps = (_FeatureTaps(student, list(kept)), _FeatureTaps(teacher, list(kept)))
    return _Session(
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


def _close(session: _Session) -> None:
    for tap in session.taps:
        tap.remove()
    session.student.eval()


def _probe(session: _Session) -> Generator[Event, None, None]:
    """One epoch of ``session`` (a whole cosine schedule squeezed into it); a diverging probe just stops."""
    try:
        yield from _epoch(session, 1)
    except FloatingPointError:
        pass
    finally:
        _close(session)


def next_probe(probes: list[tuple[float, float]]) -> float | None:
    """The next learning rate to probe after ``probes`` (``(lr, held-out agreement)`` in the order tried), or
    None when the walk is over.

    The walk starts at :data:`LR_FIRST_PROBE`, tries a factor of :data:`LR_PROBE_FACTOR` lower, and then keeps
    stepping in the direction that scored higher (down on a tie: the safer side) while each step raises the best
    agreement, at most :data:`LR_MAX_PROBES` probes. It stops at the first fall: walking on past it was measured
    not to pay (``benchmarks/README.md``, MobileNetV2 at 50%: the two gentler rates scored lower still).
    """
    if len(probes) < 2:
        return LR_FIRST_PROBE / LR_PROBE_FACTOR ** len(probes)
    values = [agreement for _, agreement in probes]
    if len(probes) >= LR_MAX_PROBES or (len(probes) > 2 and values[-1] <= max(values[:-1])):
        return None
    rates = [lr for lr, _ in probes]
    return min(rates) / LR_PROBE_FACTOR if values[1] >= values[0] else max(rates) * LR_PROBE_FACTOR


def _choose_lr(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: DistillConfig,
    score: HoldoutAgreement,
    seed: int,
    device: torch.device,
    stage: Stage,
    stage_steps: int,
) -> Generator[Event, None, list[tuple[float, float]]]:
    """Probe the learning rates :func:`next_probe` walks to.

    Each probe distills a copy of ``student`` for one epoch, its cosine schedule squeezed into that epoch, so it
    ends annealed like a real run does: what is compared is how far each rate gets, not how noisy it is on the way.
    Returns every ``(lr, held-out agreement)`` in the order tried (a diverging probe scores 0).
    """
    probe_config = replace(config, epochs=1, gradual_epochs=0)
    steps = _steps_per_epoch(images, config)
    tried: list[tuple[float, float]] = []
    while (lr := next_probe(tried)) is not None:
        copy = clone_model(student)
        session = _session(copy, teacher, images, normalization, probe_config, lr, seed, device, stage)
        session.first_step, session.stage_steps, session.probe = len(tried) * steps, stage_steps, True
        yield from _probe(session)
        tried.append((lr, score(copy) if _finite(copy) else 0.0))
    return tried


def _chosen_words(result: DistillResult, margin: float) -> str:
    tried = ", ".join(f"{lr:.3g}: {agreement:.1f}%" for lr, agreement in result.lr_probes)
    return (
        f"learning rate {result.lr:.3g}: the smallest within {margin:.1f} points (one standard error) of the best "
        f"held-out agreement after one probe epoch ({tried})"
    )


def pick_lr(probes: list[tuple[float, float]], views: int) -> tuple[float, float]:
    """The smallest probed rate whose held-out agreement is within one standard error of the best probe's (the
    one-standard-error rule of model selection): a lead that the noise of ``views`` scored images could make is
    no reason to train faster. Returns the rate and the margin, in points."""
    best = max(agreement for _, agreement in probes)
    margin = 100 * math.sqrt(best / 100 * (1 - best / 100) / views)
    return min(lr for lr, agreement in probes if agreement >= best - margin), margin


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class _Keeper:
    """The guard: the best network by held-out agreement among those offered, a copy of each new best kept (a
    tie goes to the later one: it trained longer, its learning rate annealed further)."""

    def __init__(self, score: HoldoutAgreement):
        self.score = score
        self.best: tuple[int, float, nn.Module] | None = None  # (epoch, agreement, network)
        self.seconds = 0.0  # spent scoring and keeping

    def offer(self, epoch: int, model: nn.Module, eligible: bool = True) -> float:
        """Score ``model`` after ``epoch``; keep a copy of it when ``eligible`` and the best so far."""
        started = time.perf_counter()
        try:
            return self._offer(epoch, model, eligible)
        finally:
            self.seconds += time.perf_counter() - started

    def _offer(self, epoch: int, model: nn.Module, eligible: bool) -> float:
        value = self.score(model) if _finite(model) else 0.0  # NaN weights: no decision of the teacher's kept
        if eligible and (self.best is None or value >= self.best[1]):
            self.best = (epoch, value, clone_model(model))
        return value


def iter_distill(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: DistillConfig = DistillConfig(),
    *,
    holdout: torch.Tensor | None = None,
    start: nn.Module | None = None,
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: Stage = Stage.DISTILL,
    network: Network = Network.RECOVERED,
    gradual: GradualPruning | None = None,
) -> Generator[Event, None, DistillResult]:
    """Generator form of :func:`distill`: yields per-step progress and, with ``evaluate_fn``, the
    student's accuracy after each evaluated epoch (:attr:`Metric.CURVE_ACCURACY`, step = epoch),
    logged as ``network`` (the recovered student, or the baseline being trained); with ``holdout``, its
    held-out agreement at the start and after each evaluated epoch (:attr:`Metric.HOLDOUT_AGREEMENT`). With ``gradual``,
    the student is pruned further at the start of each epoch (its sparsity joins the progress metrics)."""
    what = _transfer_set(images, config)
    if gradual is not None:
        what += f", pruned from {gradual.first:.0%} to {gradual.target:.0%}"
        what += f"{' of MACs' if gradual.granularity == 'channel' else ''} over {gradual.epochs} epochs"
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    student = student.to(device)
    if config.lr == LR_AUTO and holdout is None:
        raise ValueError(
            "distill lr 'auto' chooses the learning rate on held-out dreams: pass holdout= (DreamConfig.holdout > 0 "
            "makes them) or give a number"
        )
    score = HoldoutAgreement(teacher, holdout, normalization, device) if holdout is not None else None
    keeper = _Keeper(score) if score is not None else None
    steps = config.epochs * _steps_per_epoch(images, config)
    probe_steps = LR_MAX_PROBES * _steps_per_epoch(images, config) if config.lr == LR_AUTO else 0
    yield StageStarted(stage, probe_steps + steps, what)
    started = time.perf_counter()
    result = DistillResult(student, LR_FIRST_PROBE if config.lr == LR_AUTO else float(config.lr))
    if keeper is not None:
        first = start if start is not None else student  # with gradual pruning, only a given start is at the target
        result.holdout_agreement.append((0, keeper.offer(0, first, eligible=gradual is None or start is not None)))
        yield MetricLogged(stage, Metric.HOLDOUT_AGREEMENT, network, result.holdout_agreement[-1][1], 0)
    if config.lr == LR_AUTO:
        assert score is not None
        probes_started = time.perf_counter()
        result.lr_probes = yield from _choose_lr(
            student, teacher, images, normalization, config, score, seed, device, stage, probe_steps + steps
        )
        result.lr, margin = pick_lr(result.lr_probes, len(score))
        result.probe_seconds = time.perf_counter() - probes_started
        yield Notice(stage, _chosen_words(result, margin))
    session = _session(student, teacher, images, normalization, config, result.lr, seed, device, stage, gradual)
    probed = len(result.lr_probes) * _steps_per_epoch(images, config)  # at most probe_steps: the stage's length now
    session.first_step, session.stage_steps = probed, probed + steps
    try:
        yield from _train(session, result, keeper, evaluate_fn, network)
    finally:
        _close(session)
    if keeper is not None and keeper.best is not None:
        result.kept_epoch, _, kept = keeper.best
        if result.kept_epoch != config.epochs:
            result.student = kept
            yield Notice(stage, _kept_words(result, config.epochs))
    result.seconds = time.perf_counter() - started
    result.score_seconds = keeper.seconds if keeper is not None else 0.0
    yield StageFinished(stage, result.seconds, {"final_loss": result.final_loss, "kept_epoch": result.kept_epoch})
    return result


def _train(
    session: _Session,
    result: DistillResult,
    keeper: _Keeper | None,
    evaluate_fn: Callable[[nn.Module], float] | None,
    network: Network,
) -> Generator[Event, None, None]:
    """Every epoch of ``session``; after each evaluated one, the curve point and the held-out agreement. With held-out
    dreams a diverging loss ends training early (the guard keeps the best epoch so far); without, it raises."""
    config, student, stage = session.config, session.student, session.stage
    for epoch in range(1, config.epochs + 1):
        try:
            result.final_loss = yield from _epoch(session, epoch)
        except FloatingPointError as err:
            if keeper is None or keeper.best is None:
                raise
            yield Notice(stage, f"{err}; training stopped, the best epoch so far is kept")
            return
        if epoch % config.eval_every and epoch != config.epochs:
            continue
        if evaluate_fn is not None:
            result.history.append((epoch, evaluate_fn(student)))
            yield MetricLogged(stage, Metric.CURVE_ACCURACY, network, result.history[-1][1], epoch)
        if keeper is not None:
            gradual = session.gradual  # a student still being pruned is not yet a candidate
            eligible = gradual is None or gradual.sparsity_at(epoch) >= gradual.target or epoch == config.epochs
            result.holdout_agreement.append((epoch, keeper.offer(epoch, student, eligible)))
            yield MetricLogged(stage, Metric.HOLDOUT_AGREEMENT, network, result.holdout_agreement[-1][1], epoch)


def _kept_words(result: DistillResult, epochs: int) -> str:
    """The guard's choice in words, for a run that does not hand back its last epoch."""
    agreement = dict(result.holdout_agreement)
    end = f"{agreement[epochs]:.1f}% at the end" if epochs in agreement else "training stopped before the end"
    if result.kept_epoch == 0:
        return (
            f"recovery did not beat the start: no epoch agreed more often with the teacher on the held-out dreams "
            f"({agreement[0]:.1f}% at the start, {end}); the start is kept"
        )
    return (
        f"epoch {result.kept_epoch} of {epochs} is kept: the best held-out agreement "
        f"({agreement[result.kept_epoch]:.1f}%; {end})"
    )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: DistillConfig = DistillConfig(),
    *,
    holdout: torch.Tensor | None = None,
    start: nn.Module | None = None,
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callback: Callable[[Event], None] | None = None,
    gradual: GradualPruning | None = None,
) -> DistillResult:
    """Train ``student`` in place to match ``teacher`` on ``images`` (pixels in [0, 1]); the network to use is
    the result's ``student``.

    With ``holdout`` (held-out dreams, never trained on), every evaluated epoch is scored by how often it picks
    the teacher's class on blends of them, and the result's ``student`` is the best of the start and those epochs (the guard:
    never worse than the start by that score); ``config.lr = "auto"`` needs them to choose the learning rate.
    ``start`` is the network the guard compares against when it is not ``student`` as given (with ``gradual``,
    the network pruned to the target in one cut). ``evaluate_fn(student) -> accuracy`` is called every
    ``config.eval_every`` epochs and its values form ``DistillResult.history`` (measuring only: it never decides
    anything). ``callback(event)`` sees every event. ``gradual`` prunes the student further at the start of each
    epoch (see :class:`~dfkd_core.prune.GradualPruning`). Raises ``FloatingPointError`` as soon as the loss is
    NaN or infinite, unless held-out dreams let the guard keep an earlier epoch.
    """
    events = iter_distill(
        student,
        teacher,
        images,
        normalization,
        config,
        holdout=holdout,
        start=start,
        evaluate_fn=evaluate_fn,
        device=device,
        seed=seed,
        gradual=gradual,
    )
    return drain(events, callback)
