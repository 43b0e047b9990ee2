"""Refit: solve each pruned layer's surviving weights so that the layer answers like the teacher's.

Pruning zeroes weights and leaves the survivors as they were, although the best values for the
survivors of a row change once its neighbours are gone. With the pruning mask held fixed, the best
survivors are the solution of a small least-squares problem per output unit: on the dreams, make
the student's layer output, computed from the *student's own* input to that layer, match the
teacher's output of the same layer (of the channels it kept, for a student that lost channels).
Layers are refit in forward order, so each one also absorbs
the error its pruned predecessors left in its input (the fixed-mask weight update of Optimal Brain
Compression, Frantar & Alistarh 2022, with the mask left as global L1 pruning chose it).

For a layer ``y = W x + b`` (a convolution is the same over image patches), with ``x`` the
student's input, ``x'`` the teacher's and ``W'`` its weights, each output row ``w`` minimizes
``sum ||w x - w' x'||^2 + damping * mean(diag H) * ||w||^2`` over the weights its mask keeps, which
needs only the Gram matrices ``H = sum x x^T`` and ``G = sum x x'^T``. All rows of a layer are solved
at once by conjugate gradients on the masked system, warm-started at the pruned weights.

This costs seconds to a minute on a CPU and, at 75% sparsity, recovers nearly what a full
distillation would - the reason the ``quick`` preset uses it. A long distillation does not gain from
starting here (at 90% it ends lower; see ``benchmarks/README.md``), so the default recipe skips it.
Only the dreams (or whatever images the caller passes) are read - this module never loads data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from ._knobs import knob, require_finite, require_positive_int
from .channels import KEPT, is_depthwise
from .events import Event, Metric, MetricLogged, Network, Progress, Stage, StageFinished, StageStarted, drain
from .prune import prunable_layers
from .zoo import Normalization

__all__ = ["RefitConfig", "RefitResult", "iter_refit", "masked_least_squares", "refit"]


@dataclass(frozen=True)
class RefitConfig:
    """How to refit the pruned layers; defaults are the recommended recipe."""

    num_images: int = knob(1024, "dreams used to build each layer's Gram matrices (the first ones of the set)")
    batch_size: int = knob(128, "images per forward pass while collecting Gram matrices")
    damping: float = knob(0.01, "ridge term as a share of the mean input energy, for badly conditioned layers")
    iterations: int = knob(300, "most conjugate-gradient iterations per layer (stops earlier at the tolerance)")
    tolerance: float = knob(1e-5, "stop when every row's residual norm is below this share of its starting value")

    def __post_init__(self) -> None:
        require_positive_int(self, "refit", "num_images", "batch_size", "iterations")
        require_finite(self, "refit", "damping", "tolerance", positive=True)


class _Reached(Exception):
    """Raised by a forward pre-hook to stop a forward pass once the layer's input is known."""


def _layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` receives when ``model`` sees ``x``; the forward pass stops there."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append(inputs[0])
        raise _Reached

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(layer).__name__} is never called in the forward pass of {type(model).__name__}")
    return seen[0]


def _conv_padding(layer: nn.Conv2d) -> tuple[int, ...]:
    """Explicit zero padding of a convolution, also for ``padding="same"``/``"valid"``."""
    if layer.padding_mode != "zeros":
        raise ValueError(
            f"refit supports zero-padded convolutions only, not padding_mode={layer.padding_mode!r} "
            f"in {layer}; turn the refit off for this model (Recipe(refit=None), --set refit=off)"
        )
    if layer.padding == "valid":
        return (0, 0)
    if layer.padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"refit does not support padding='same' with an even kernel in {layer}")
        return tuple(t // 2 for t in total)
    return tuple(layer.padding)  # type: ignore[arg-type]


def _features(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as ``(groups, positions, features)``: image patches for a convolution, one
    row per sample for a linear layer; with a trailing column of ones when the layer has a bias."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, _conv_padding(layer), layer.stride)  # (N, C*k*k, L)
        n, d, positions = cols.shape
        cols = cols.view(n, layer.groups, d // layer.groups, positions).permute(1, 0, 3, 2)
        cols = cols.reshape(layer.groups, n * positions, d // layer.groups)
    else:
        cols = x.reshape(1, -1, x.shape[-1])
    if layer.bias is not None:
        cols = torch.cat([cols, cols.new_ones(*cols.shape[:2], 1)], dim=2)
    return cols


def _rows(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Weights (and bias, as a last column) as ``(groups, rows per group, features)``, in float64."""
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    rows = weight.detach().reshape(weight.shape[0], -1).double()
    if bias is not None:
        rows = torch.cat([rows, bias.detach().reshape(-1, 1).double()], dim=1)
    return rows.reshape(groups, weight.shape[0] // groups, rows.shape[1])


def masked_least_squares(
    gram: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, iterations: int, tolerance: float
) -> torch.Tensor:
    """Solve ``w @ gram = target`` for every row ``w``, over the entries ``mask`` keeps.

    Shapes: ``gram`` ``(g, d, d)`` symmetric positive definite; ``target``, ``mask`` and ``start``
    ``(g, r, d)``. Jacobi-preconditioned conjugate gradients on all rows in parallel, each row with
    its own step sizes; entries outside the mask stay exactly zero.
    """
    tiny = torch.finfo(gram.dtype).tiny
    mask = mask.to(gram.dtype)
    inverse_diagonal = 1.0 / gram.diagonal(dim1=1, dim2=2).unsqueeze(1)
    w = start * mask
    residual = (target - torch.bmm(w, gram)) * mask
    z = residual * inverse_diagonal
    direction = z
    rz = (residual * z).sum(-1, keepdim=True)
    stop = tolerance * residual.norm(dim=-1)
    for _ in range(iterations):
        if bool((residual.norm(dim=-1) <= stop).all()):
            break
        product = torch.bmm(direction, gram) * mask
        step = rz / (direction * product).sum(-1, keepdim=True).clamp_min(tiny)
        w = w + step * direction
        residual = residual - step * product
        z = residual * inverse_diagonal
        rz_next = (residual * z).sum(-1, keepdim=True)
        direction = z + rz_next / rz.clamp_min(tiny) * direction
        rz = rz_next
    return w


def _select_kept(layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """The teacher's ``(groups, rows, features)`` restricted to the output channels ``layer`` kept, if it lost any."""
    kept = getattr(layer, KEPT, None)
    if kept is None:
        return rows
    return rows[kept] if rows.shape[1] == 1 and rows.shape[0] > 1 else rows[:, kept]  # depthwise: one row per group


@torch.no_grad()
def _refit_layer(
    student: nn.Module,
    teacher: nn.Module,
    layer: nn.Module,
    reference: nn.Module,
    inputs: torch.Tensor,
    config: RefitConfig,
) -> None:
    """Refit one pruned ``layer`` of ``student`` in place against its counterpart ``reference`` in ``teacher``."""
    gram = cross = None
    for start in range(0, len(inputs), config.batch_size):
        x = inputs[start : start + config.batch_size]
        own = _features(layer, _layer_input(student, layer, x)).transpose(1, 2)
        theirs = _features(reference, _layer_input(teacher, reference, x))
        if theirs.shape[0] != own.shape[0]:  # a depthwise convolution that lost channels: one group per channel
            theirs = theirs[getattr(layer, KEPT)]
        batch_gram = torch.bmm(own, own.transpose(1, 2)).double()  # batch sums in float32, totals in float64
        batch_cross = torch.bmm(own, theirs).double()
        gram = batch_gram if gram is None else gram + batch_gram
        cross = batch_cross if cross is None else cross + batch_cross
    assert gram is not None and cross is not None  # inputs is never empty
    reference_rows = _select_kept(layer, _rows(reference, reference.weight, reference.bias))
    target = torch.bmm(reference_rows, cross.transpose(1, 2))
    masked = hasattr(layer, "weight_mask")
    weight_mask = layer.weight_mask if masked else torch.ones_like(layer.weight)
    mask = _rows(layer, weight_mask, None if layer.bias is None else torch.ones_like(layer.bias))
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    energy = gram.diagonal(dim1=1, dim2=2).mean(1)  # per group; a depthwise channel that never fires has none
    alive = energy != 0  # NaN stays "alive", so bad inputs still end in a clear error
    scale = energy[alive].mean() if bool(alive.any()) else energy.new_ones(())
    damped = gram + config.damping * torch.where(alive, energy, scale).view(-1, 1, 1) * identity
    start = _rows(layer, layer.weight, layer.bias)
    refit = masked_least_squares(damped, target, mask, start, config.iterations, config.tolerance)
    refit = torch.where(alive.view(-1, 1, 1), refit, start)  # a group whose input is always zero: nothing to fit
    refit = refit.reshape(layer.weight.shape[0], -1).to(layer.weight.dtype)
    if not torch.isfinite(refit).all():
        raise FloatingPointError(
            f"refit produced non-finite weights; raise the refit damping (now {config.damping}) "
            "or turn the refit off (--set refit=off)"
        )
    if layer.bias is not None:
        layer.bias.copy_(refit[:, -1])
        refit = refit[:, :-1]
    if not masked:  # a layer that lost whole channels: every weight it has left is free
        layer.weight.copy_(refit.view_as(layer.weight))
        return
    kept = layer.weight_mask.bool()
    layer.weight_orig.copy_(torch.where(kept, refit.view_as(layer.weight_orig), layer.weight_orig))
    layer.weight = layer.weight_orig * layer.weight_mask


def _slimmer(layer: nn.Module, reference: nn.Module | None) -> bool:
    """Whether ``layer`` lost channels (of its inputs or outputs) against its ``reference`` in the teacher."""
    return reference is not None and reference.weight.shape != layer.weight.shape


def _counterpart(layer: nn.Module, reference: nn.Module | None) -> bool:
    """Whether ``reference`` is what ``layer`` was pruned from: the same shape, or the same kind with channels
    removed (a depthwise convolution stays depthwise)."""
    if reference is None or type(reference) is not type(layer):
        return False
    if reference.weight.shape == layer.weight.shape:
        return True
    if isinstance(layer, nn.Conv2d) and reference.groups != layer.groups and not is_depthwise(reference):
        return False
    return all(mine <= theirs for mine, theirs in zip(layer.weight.shape, reference.weight.shape))


@dataclass
class RefitResult:
    seconds: float
    accuracy: float | None = None  # of the refit student, when an evaluate_fn was given


def iter_refit(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: RefitConfig = RefitConfig(),
    *,
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    device: str | torch.device = "cpu",
    stage: Stage = Stage.REFIT,
) -> Generator[Event, None, RefitResult]:
    """Generator form of :func:`refit`: one progress event per refit layer, then the refit student's
    accuracy (a :class:`MetricLogged` of :attr:`Metric.CURVE_ACCURACY`) when ``evaluate_fn`` is given."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"refit needs a non-empty (N, 3, H, W) image tensor, got shape {tuple(images.shape)}")
    device = torch.device(device)
    references = dict(prunable_layers(teacher))
    layers = [
        (name, m)
        for name, m in prunable_layers(student)
        if torch_prune.is_pruned(m) or _slimmer(m, references.get(name))
    ]
    missing = [name for name, m in layers if not _counterpart(m, references.get(name))]
    unpaired = [
        name
        for name, m in layers
        if name not in missing and m.weight.shape[0] < references[name].weight.shape[0] and not hasattr(m, KEPT)
    ]
    if unpaired:
        raise ValueError(
            f"refit: layer(s) {', '.join(unpaired[:4])} lost output channels but do not say which teacher channels "
            "they kept (a student loaded from a file does not); prune the teacher with "
            "prune_model(..., granularity='channel') in the same session, or turn the refit off"
        )
    if missing:
        raise ValueError(
            f"refit needs the student to be a pruned copy of the teacher; layer(s) {', '.join(missing)} "
            "have no counterpart in the teacher (the same shape, or the same layer with channels removed)"
        )
    inputs = normalization.normalize(images[: config.num_images].to(device))
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    student_mode, teacher_mode = student.training, teacher.training
    student.to(device).eval()
    teacher.to(device).eval()
    yield StageStarted(stage, len(layers), f"{len(layers)} pruned layers refit on {len(inputs)} images")
    started = time.perf_counter()
    try:
        for i, (name, layer) in enumerate(layers, 1):
            _refit_layer(student, teacher, layer, references[name], inputs, config)
            yield Progress(stage, i, len(layers))
    finally:
        student.train(student_mode)
        teacher.train(teacher_mode)
    result = RefitResult(time.perf_counter() - started)
    if evaluate_fn is not None:
        result.accuracy = evaluate_fn(student)
        yield MetricLogged(stage, Metric.CURVE_ACCURACY, Network.REFIT, result.accuracy)
    yield StageFinished(stage, result.seconds, {"layers": len(layers)})
    return result


def refit(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: RefitConfig = RefitConfig(),
    *,
    device: str | torch.device = "cpu",
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    callback: Callable[[Event], None] | None = None,
) -> RefitResult:
    """Refit the surviving weights of every pruned layer of ``student`` in place (pixels in [0, 1]).

    ``student`` must be a pruned copy of ``teacher``: with masks attached, or with channels removed by
    :func:`dfkd_core.prune_model` in this session (its layers know which teacher channels they kept). ``evaluate_fn(student) ->
    accuracy`` is called once at the end; ``callback(event)`` sees every event.
    """
    events = iter_refit(student, teacher, images, normalization, config, evaluate_fn=evaluate_fn, device=device)
    return drain(events, callback)
