"""Unstructured L1 magnitude pruning with :mod:`torch.nn.utils.prune`.

``sparsity`` always means the fraction of prunable weights (the ``weight`` of every
``Conv2d`` and ``Linear``; biases and BatchNorm parameters are never pruned) that are zero.

* ``scope="global"`` (the paper's method): one magnitude threshold across all layers, so
  layers with many small weights lose more than layers with few large ones.
* ``scope="layerwise"``: every layer loses the same fraction of its own weights.

Masks stay attached as ``weight_orig * weight_mask`` forward pre-hooks, so recovery training
can never revive a pruned weight; :func:`make_permanent` bakes them in for saving.

:class:`PruningRamp` removes a student's pruned weights gradually during recovery instead of all
at once (gradual magnitude pruning, Zhu & Gupta 2017): the student ends with exactly the masks
it was given, but the network adapts while they close.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    "LayerSparsity",
    "PruningRamp",
    "clone_model",
    "count_nonzero_parameters",
    "make_permanent",
    "measured_sparsity",
    "prunable_layers",
    "prune_model",
    "sparsity_report",
]

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv2d and Linear layer, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def _check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), the fraction of weights to remove; got {sparsity!r}")
    return float(sparsity)


def prune_model(
    model: nn.Module,
    sparsity: float,
    scope: Literal["global", "layerwise"] = "global",
    inplace: bool = False,
) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude Conv2d/Linear weights.

    Returns the pruned model (a deep copy unless ``inplace``) with masks attached. Pruning an
    already-pruned model composes, as :mod:`torch.nn.utils.prune` does.
    """
    sparsity = _check_sparsity(sparsity)
    if scope not in ("global", "layerwise"):
        raise ValueError(f"pruning scope must be 'global' or 'layerwise', got {scope!r}")
    model = model if inplace else copy.deepcopy(model)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    if scope == "global":
        torch_prune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=torch_prune.L1Unstructured, amount=sparsity
        )
    else:
        for _, m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=sparsity)
    _detach_masked_weights(model)
    return model


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
class LayerSparsity:
    name: str
    kind: str  # "Conv2d" or "Linear"
    total: int  # weights in the layer
    zeros: int  # of which exactly zero

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total


def sparsity_report(model: nn.Module) -> list[LayerSparsity]:
    """Per-layer count of zero weights (masked or not), in definition order."""
    report = []
    for name, m in prunable_layers(model):
        weight = m.weight.detach()
        report.append(LayerSparsity(name, type(m).__name__, weight.numel(), int((weight == 0).sum())))
    return report


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of all prunable weights that are zero."""
    report = sparsity_report(model)
    return sum(r.zeros for r in report) / max(1, sum(r.total for r in report))


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


class PruningRamp:
    """Lifts a pruned model's masks, then closes them again step by step, smallest weights first.

    ``update(progress)`` (progress in [0, 1]) keeps the share ``1 - (1 - progress)^3`` of the
    originally pruned weights removed - the cubic schedule of Zhu & Gupta (2017): fast early,
    while the removed weights are small, slow late. Among the weights still to go, those with the
    smallest magnitude at that moment go first, so weights that grew during training go last.
    At ``progress = 1`` every mask is the one the model arrived with; nothing outside it is removed.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for _, m in prunable_layers(model) if hasattr(m, "weight_mask")]
        self.targets = [m.weight_mask == 0 for m in self.layers]  # weights that must end up removed
        self.total = sum(int(t.sum()) for t in self.targets)
        self.removed = 0
        with torch.no_grad():
            for m in self.layers:
                m.weight_mask.fill_(1)
        self._refresh()

    @torch.no_grad()
    def update(self, progress: float) -> None:
        progress = min(max(progress, 0.0), 1.0)
        goal = self.total if progress >= 1 else round(self.total * (1 - (1 - progress) ** 3))
        if goal <= self.removed:
            return
        alive = [t & (m.weight_mask != 0) for m, t in zip(self.layers, self.targets)]
        magnitudes = torch.cat([m.weight_orig.detach().abs()[a] for m, a in zip(self.layers, alive)])
        threshold = torch.kthvalue(magnitudes.float().cpu(), goal - self.removed).values
        for m, a in zip(self.layers, alive):
            m.weight_mask[a & (m.weight_orig.detach().abs() <= threshold.to(m.weight_orig.device))] = 0
        self.removed = sum(int(((m.weight_mask == 0) & t).sum()) for m, t in zip(self.layers, self.targets))
        self._refresh()

    def _refresh(self) -> None:
        """Recompute each ``weight`` from its mask now (the mask hook would only do so at the next forward)."""
        for m in self.layers:
            m.weight = (m.weight_orig * m.weight_mask).detach()
