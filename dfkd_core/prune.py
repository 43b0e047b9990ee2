"""Pruning: the teacher loses weights (``granularity="weight"``) or whole channels (``"channel"``).

Weights (the paper's method) go by unstructured L1 magnitude with :mod:`torch.nn.utils.prune`;
``sparsity`` is then the fraction of prunable weights (the ``weight`` of every ``Conv2d`` and
``Linear``; biases and BatchNorm parameters are never pruned) that are zero. The network keeps its
shape, size and speed. Channels go with Torch-Pruning (:mod:`dfkd_core.channels`); ``sparsity`` is
then the fraction of MACs removed, and the network really gets smaller and faster.

* ``scope="global"`` (the paper's method): one magnitude threshold across all layers, so
  layers with many small weights lose more than layers with few large ones.
* ``scope="layerwise"``: every layer loses the same fraction of its own weights.
* ``scope="lamp"``: one threshold over layer-adaptive scores (LAMP, Lee et al., ICLR 2021): a weight's
  squared magnitude over the sum of the squares of the weights of its layer at least as large. Scores
  do not change when a layer is rescaled, so a layer is never emptied because its weights happen to be
  small (a convolution followed by BatchNorm computes the same function at any scale).

For weights, masks stay attached as ``weight_orig * weight_mask`` forward pre-hooks, so recovery training
can never revive a pruned weight; :func:`make_permanent` bakes them in for saving.

Weights or channels can also go gradually (:class:`GradualPruning`, Zhu & Gupta, "To prune, or not to
prune", 2017): the student starts less sparse and loses more at each distillation epoch on a cubic schedule,
so it adapts to each cut before the next; at high sparsity this recovers more than one cut before distillation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    "GRANULARITIES",
    "SCOPES",
    "GradualPruning",
    "LayerSparsity",
    "check_granularity",
    "check_scope",
    "check_sparsity",
    "lamp_scores",
    "clone_model",
    "count_nonzero_parameters",
    "make_permanent",
    "measured_sparsity",
    "prunable_layers",
    "prune_model",
    "sparsity_report",
]

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
# One magnitude threshold over all layers (the paper's), one per layer, or one over scale-free LAMP scores.
SCOPES = ("global", "layerwise", "lamp")
# Unstructured (single weights, the paper's) or structured (whole channels, a smaller and faster network).
GRANULARITIES = ("weight", "channel")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv2d and Linear layer, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float; ``ValueError`` unless it is a number in [0, 1) (the fraction removed)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(
            f"sparsity must be a number in [0, 1), the fraction of weights (or of MACs, for channels) to remove; "
            f"got {sparsity!r}"
        )
    return float(sparsity)


def check_granularity(granularity: str) -> str:
    """``granularity`` itself; ``ValueError`` unless it is one of :data:`GRANULARITIES`."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"pruning granularity must be one of {', '.join(map(repr, GRANULARITIES))}, got {granularity!r}"
        )
    return granularity


def check_scope(scope: str) -> str:
    """``scope`` itself; ``ValueError`` unless it is one of :data:`SCOPES`."""
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}")
    return scope


def prune_model(
    model: nn.Module,
    sparsity: float,
    scope: Literal["global", "layerwise", "lamp"] = "global",
    inplace: bool = False,
    granularity: Literal["weight", "channel"] = "weight",
    input_size: tuple[int, int, int] = (3, 32, 32),
) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude Conv2d/Linear weights, or (``granularity="channel"``)
    remove whole channels until ``sparsity`` of the MACs of a ``input_size`` image are gone.

    Returns the pruned model (a deep copy unless ``inplace``): with masks attached for weights (pruning
    an already-pruned model composes, as :mod:`torch.nn.utils.prune` does), with fewer channels and
    ``kept_channels`` buffers for channels (see :func:`dfkd_core.channels.prune_channels`).
    """
    sparsity = check_sparsity(sparsity)
    check_scope(scope)
    if check_granularity(granularity) == "channel":
        from .channels import prune_channels

        return prune_channels(model, sparsity, scope, input_size, inplace)
    model = model if inplace else copy.deepcopy(model)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    if scope in ("global", "lamp"):
        torch_prune.global_unstructured(
            [(m, "weight") for _, m in layers],
            pruning_method=torch_prune.L1Unstructured,
            amount=sparsity,
            importance_scores={(m, "weight"): lamp_scores(m.weight) for _, m in layers} if scope == "lamp" else None,
        )
    else:
        for _, m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=sparsity)
    _detach_masked_weights(model)
    return model


@torch.no_grad()
def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every weight of a layer: ``w^2 / sum of v^2 over the layer's weights v with |v| >= |w|``.

    The largest weight of every layer scores 1, so a global threshold below 1 never empties a layer.
    """
    squares = weight.detach().flatten().square()
    ordered, order = squares.sort()
    larger_or_equal = ordered.flip(0).cumsum(0).flip(0)  # sum over this weight and every larger one
    scores = torch.empty_like(squares)
    scores[order] = ordered / larger_or_equal.clamp_min(torch.finfo(squares.dtype).tiny)
    return scores.view_as(weight)


def _detach_masked_weights(model: nn.Module) -> None:
    """Drop the autograd graph of each cached ``weight = weight_orig * weight_mask`` (recomputed
    by the mask hook at the next forward anyway), so that the model can be deep-copied."""
    for _, m in prunable_layers(model):
        if hasattr(m, "weight_orig"):
            m.weight = m.weight.detach()


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that also works for a model with pruning masks attached."""
    _detach_masked_weights(model)
    return copy.deepcopy(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight and drop the hooks (in place); returns ``model``."""
    for _, m in prunable_layers(model):
        if torch_prune.is_pruned(m) and hasattr(m, "weight_orig"):
            torch_prune.remove(m, "weight")
    return model


@dataclass(frozen=True)
class GradualPruning:
    """Prune a model in steps, one per epoch, from ``start`` to ``target`` sparsity over ``epochs`` epochs.

    The sparsity before epoch ``e`` (from 1) follows Zhu & Gupta's cubic schedule: it rises fast while the
    network still has many redundant weights and slowly near the target, which it reaches at the start of
    epoch ``epochs + 1``. Each step prunes what survives with the run's ``scope`` and ``granularity``: for
    weights by magnitude (masks compose), for channels until that share of the ``dense_macs`` (the MACs of
    the network before any pruning, of an ``input_size`` image) is gone, so the model's tensors shrink.
    """

    target: float
    start: float
    epochs: int
    scope: Literal["global", "layerwise", "lamp"] = "global"
    granularity: Literal["weight", "channel"] = "weight"
    dense_macs: int = 0  # channels only: the MACs that sparsity is a fraction of
    input_size: tuple[int, int, int] = (3, 32, 32)

    def __post_init__(self) -> None:
        check_sparsity(self.target)
        check_sparsity(self.start)
        check_scope(self.scope)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"gradual pruning needs a whole number of epochs >= 1, got {self.epochs!r}")
        if check_granularity(self.granularity) == "channel" and self.dense_macs <= 0:
            raise ValueError("gradual channel pruning needs dense_macs, the MACs of the network before pruning")

    @property
    def first(self) -> float:
        """The sparsity the student starts from: ``start``, or the target when that is lower."""
        return min(self.start, self.target)

    def sparsity_at(self, epoch: int) -> float:
        """The sparsity the model should have at the start of ``epoch`` (from 1)."""
        left = 1.0 - min(1.0, (epoch - 1) / self.epochs)
        return self.target + (self.first - self.target) * left**3

    def measure(self, model: nn.Module) -> float:
        """The sparsity ``model`` has: the fraction of its weights that are zero, or of the dense MACs removed."""
        if self.granularity == "channel":
            from .channels import count_macs

            return 1.0 - count_macs(model, self.input_size) / self.dense_macs
        return measured_sparsity(model)

    def step(self, model: nn.Module, epoch: int) -> float:
        """Prune ``model`` (in place) up to :meth:`sparsity_at` ``epoch``; returns its sparsity."""
        now = self.measure(model)
        wanted = self.sparsity_at(epoch)
        if wanted > now:
            # each cut is a fraction of what is still alive: weights not yet zero, MACs not yet removed
            more = (wanted - now) / (1.0 - now)
            prune_model(model, more, self.scope, inplace=True, granularity=self.granularity, input_size=self.input_size)
            now = self.measure(model)
        return now


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    kind: str  # "Conv2d" or "Linear"
    total: int  # weights in the layer (of the dense network, when one is given)
    removed: int  # of which zero or gone with a removed channel

    @property
    def sparsity(self) -> float:
        return self.removed / self.total


def sparsity_report(model: nn.Module, dense: nn.Module | None = None) -> list[LayerSparsity]:
    """Per-layer count of removed weights, in definition order: weights that are zero (masked or not) and,
    against the ``dense`` network it was pruned from, weights gone with the channels removed."""
    totals = {name: m.weight.numel() for name, m in prunable_layers(dense)} if dense is not None else {}
    report = []
    for name, m in prunable_layers(model):
        weight = m.weight.detach()
        total = totals.get(name, weight.numel())
        report.append(LayerSparsity(name, type(m).__name__, total, total - int((weight != 0).sum())))
    return report


def measured_sparsity(model: nn.Module, dense: nn.Module | None = None) -> float:
    """Fraction of all prunable weights removed (see :func:`sparsity_report`)."""
    report = sparsity_report(model, dense)
    return sum(r.removed for r in report) / max(1, sum(r.total for r in report))


@torch.no_grad()
def count_nonzero_parameters(model: nn.Module) -> int:
    """Nonzero entries over all parameters (masked weights counted through their mask)."""
    total = 0
    for name, p in model.named_parameters():
        if name.endswith("weight_orig"):
            continue
        total += int((p != 0).sum())
    for _, m in prunable_layers(model):
        if hasattr(m, "weight_orig"):
            total += int((m.weight != 0).sum())
    return total
