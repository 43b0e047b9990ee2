"""Structured pruning: remove whole channels with Torch-Pruning, so the network really gets smaller and faster.

Unstructured pruning (:mod:`dfkd_core.prune`) zeroes weights inside tensors that keep their shape, size
and speed. Here whole output channels go: Torch-Pruning (Fang et al., CVPR 2023) traces the model into a
dependency graph, so removing a convolution's channel also removes the matching BatchNorm entries and the
next layer's input channels. ``sparsity`` means the fraction of multiply-accumulates (MACs, batch 1) removed.

* Importance: the group L1 norm (a channel's weights summed over every layer it touches).
* ``scope``: ``"global"`` ranks channels of all layers together, ``"layerwise"`` removes the same fraction of
  every layer, ``"lamp"`` ranks layer-normalized LAMP scores together.
* The classifier's outputs (the classes) are never pruned.
* ResNets with option-A shortcuts (akamaster's) zero-pad the identity to more channels, which the graph cannot
  follow; for them only the channels inside each residual block (the first convolution's outputs) are pruned.

Every layer that lost output channels carries a ``kept_channels`` buffer: the indices, in the teacher's
numbering, of the channels it kept. Distillation's feature term and the refit use it to pair every student
channel with its teacher channel.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from .architectures import OptionABlock, PadShortcut

__all__ = ["KEPT", "count_macs", "is_depthwise", "kept_channels", "prune_channels", "reshape_like"]

KEPT = "kept_channels"  # buffer name: the teacher's indices of the output channels a layer kept
MAX_LAYER_RATIO = 0.9  # most of a layer's channels one pruning may take (a layer is never emptied)
TARGET_TOLERANCE = 0.005  # stop searching the channel ratio once the MACs removed are this close to the target
SCAN_STEPS = 19  # ratios 0.05, 0.10, ..., 0.95 tried in turn until one removes enough MACs
SEARCH_STEPS = 10  # then bisection steps between that ratio and the one before (finer than one channel)
_TRACKED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _example(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.randn(1, *input_size, device=device)


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (Torch-Pruning's counter)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, _example(model, input_size))
    return int(macs)


class _OutOfReach(ValueError):
    """A target channel pruning cannot reach on this model (the user's to change, passed on as is)."""


def is_depthwise(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` filters each input channel on its own (one group per channel, any channel multiplier)."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def _width(layer: nn.Module) -> int:
    """Output channels (features) of a Conv2d, Linear or BatchNorm layer, with or without affine parameters."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return layer.num_features
    return layer.weight.shape[0]


def kept_channels(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: indices of the teacher's channels it kept}`` of a channel-pruned model (empty otherwise)."""
    return {name: getattr(m, KEPT) for name, m in model.named_modules() if hasattr(m, KEPT)}


def _classifier(model: nn.Module) -> nn.Module:
    """The layer that writes the logits: the last Conv2d or Linear in definition order."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    return layers[-1]


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels stay: the classifier, and for option-A ResNets all but each block's first conv."""
    classifier = _classifier(model)
    if not any(isinstance(m, PadShortcut) for m in model.modules()):
        return [classifier]
    inner = {id(b.conv1) for b in model.modules() if isinstance(b, OptionABlock)}
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in inner]


def _pruner(model: nn.Module, ratio: float, scope: str, example: torch.Tensor):
    import torch_pruning as tp

    importance = tp.importance.GroupMagnitudeImportance(p=1, normalizer="lamp" if scope == "lamp" else "mean")
    return tp.pruner.BasePruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        ignored_layers=_ignored_layers(model),
        global_pruning=scope != "layerwise",
        max_pruning_ratio=MAX_LAYER_RATIO,
    )


def _nothing_removable(model: nn.Module) -> ValueError:
    return ValueError(
        f"Torch-Pruning found no channel of {type(model).__name__} it can remove: every layer whose outputs could go "
        "is the classifier or is tied to a hard-coded channel count. Prune weights instead (granularity 'weight')."
    )


def _untraceable(model: nn.Module, err: Exception) -> ValueError:
    return ValueError(
        f"channel pruning cannot follow how the channels of {type(model).__name__} connect ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}). Torch-Pruning traces the forward pass; a hard-coded channel count, a "
        "reshape that mixes channels, or a shortcut that pads channels defeats it. Prune weights instead "
        "(granularity 'weight'), or list such layers as ignored when calling Torch-Pruning yourself."
    )


def _prune_in_place(model: nn.Module, ratio: float, scope: str, example: torch.Tensor) -> dict[nn.Module, set[int]]:
    """Prune ``model`` at one channel ``ratio``; returns the output channels each layer lost."""
    pruner = _pruner(model, ratio, scope, example)
    removed: dict[nn.Module, set[int]] = {}
    for group in pruner.step(interactive=True):
        for dependency, indices in group:
            layer = dependency.target.module
            if isinstance(layer, _TRACKED) and pruner.DG.is_out_channel_pruning_fn(dependency.handler):
                removed.setdefault(layer, set()).update(int(i) for i in indices)
        group.prune()
    return removed


def _removed_macs(model: nn.Module, ratio: float, scope: str, example: torch.Tensor, dense: int) -> float:
    trial = copy.deepcopy(model)
    _prune_in_place(trial, ratio, scope, example)
    return 1 - count_macs(trial, tuple(example.shape[1:])) / dense


def _search_ratio(removed_at: Callable[[float], float], target: float, scope: str) -> float:
    """The channel ratio whose MACs removed come closest to ``target``.

    Torch-Pruning's global ranking is not monotone near its per-layer cap (asking for more channels can remove
    fewer MACs), so a coarse ascending scan finds the first ratio that reaches the target, then bisection refines
    it between that ratio and the one before."""
    measured: dict[float, float] = {}
    low = 0.0
    for step in range(1, SCAN_STEPS + 1):
        ratio = step / (SCAN_STEPS + 1)
        measured[ratio] = removed_at(ratio)
        if measured[ratio] >= target - TARGET_TOLERANCE:
            break
        low = ratio
    else:
        most = max(measured.values())
        if most < TARGET_TOLERANCE:
            raise _OutOfReach("nothing to remove")
        raise _OutOfReach(
            f"channel pruning with scope {scope!r} can remove at most {most:.0%} of this model's MACs (a layer keeps "
            f"at least {1 - MAX_LAYER_RATIO:.0%} of its channels); ask for a sparsity of at most "
            f"{math.floor(100 * most) / 100}" + (", or use scope 'layerwise'" if scope != "layerwise" else "")
        )
    high = ratio
    for _ in range(SEARCH_STEPS):
        if abs(measured[high] - target) <= TARGET_TOLERANCE:
            break
        middle = (low + high) / 2
        measured[middle] = removed_at(middle)
        low, high = (middle, high) if measured[middle] < target else (low, middle)
    return min((r for r in measured if r <= high), key=lambda r: abs(measured[r] - target))


def prune_channels(
    model: nn.Module,
    sparsity: float,
    scope: str = "global",
    input_size: tuple[int, int, int] = (3, 32, 32),
    inplace: bool = False,
) -> nn.Module:
    """Remove whole channels until ``sparsity`` of the MACs are gone; returns the slimmer model.

    The result is a copy (unless ``inplace``) whose layers have fewer channels; every layer that lost output
    channels carries a ``kept_channels`` buffer (see :func:`kept_channels`). ``ValueError`` for a model whose
    channels Torch-Pruning cannot follow, or a target beyond what channel pruning can reach.
    """
    from .prune import check_scope, check_sparsity

    sparsity, scope = check_sparsity(sparsity), check_scope(scope)
    if any(hasattr(m, "weight_mask") for m in model.modules()):
        raise ValueError("the model carries weight-pruning masks; call make_permanent(model) before pruning channels")
    model = model if inplace else copy.deepcopy(model)
    if sparsity == 0:
        return model
    training = model.training
    model.eval()
    example = _example(model, input_size)
    try:
        with torch.no_grad():
            classes = model(example).shape[-1]
        dense = count_macs(model, input_size)
        ratio = _search_ratio(lambda r: _removed_macs(model, r, scope, example, dense), sparsity, scope)
        removed = _prune_in_place(model, ratio, scope, example)
        with torch.no_grad():
            shape = tuple(model(example).shape)
    except _OutOfReach as err:
        raise (_nothing_removable(model) if str(err) == "nothing to remove" else err) from None
    except Exception as err:  # tracing or the pruned forward pass failed: the graph was not what it seemed
        raise _untraceable(model, err) from None
    if shape != (1, classes):
        raise _untraceable(model, RuntimeError(f"the pruned model answers with shape {shape}, not (1, {classes})"))
    for layer, lost in removed.items():
        full = _width(layer) + len(lost)
        kept = torch.tensor([i for i in range(full) if i not in lost], dtype=torch.long, device=example.device)
        earlier = getattr(layer, KEPT, None)  # pruned before: keep numbering the teacher's channels
        layer.register_buffer(KEPT, kept if earlier is None else earlier[kept], persistent=False)
    return model.train(training)


def reshape_like(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink ``model``'s Conv2d, Linear and BatchNorm layers to the shapes in ``state`` (a channel-pruned
    checkpoint's state dict), so that it loads; returns ``model``. Layers already of those shapes stay as they are."""
    for name, layer in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if not isinstance(layer, _TRACKED) or key not in state or state[key].shape == layer.weight.shape:
            continue
        shape = state[key].shape
        if isinstance(layer, nn.Conv2d):
            multiplier = layer.out_channels // layer.groups if is_depthwise(layer) else None
            layer.out_channels = shape[0]
            layer.groups = shape[0] // multiplier if multiplier else layer.groups
            layer.in_channels = shape[1] * layer.groups
        elif isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = shape
        else:
            layer.num_features = shape[0]
        prefix = f"{name}." if name else ""
        for attr, value in list(layer._parameters.items()):
            if value is not None and prefix + attr in state:
                layer._parameters[attr] = nn.Parameter(torch.empty_like(state[prefix + attr]), value.requires_grad)
        for attr, value in list(layer._buffers.items()):
            if value is not None and prefix + attr in state:
                layer._buffers[attr] = torch.empty_like(state[prefix + attr])
    return model
