"""Pictures of a run: accuracy curves and per-layer sparsity (matplotlib, no pyplot state).

Figures are built with :class:`matplotlib.figure.Figure` directly, so they work the same in a
script, a notebook (they display inline) and the Gradio app (``gr.Plot``), and never touch a
global backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from .prune import LayerSparsity

if TYPE_CHECKING:
    from .dream import DreamSet
    from .pipeline import RecoveryResult

__all__ = ["curves_figure", "dream_columns_figure", "dreams_figure", "result_figure", "sparsity_figure"]


def curves_figure(
    curve: Sequence[tuple[int, float]],
    teacher: float,
    pruned: float,
    baselines: Mapping[str, float | Sequence[tuple[int, float]] | None] | None = None,
    epochs: int | None = None,
    subtitle: str = "",
    title: str = "Recovery by data-free distillation",
    holdout_agreement: Sequence[tuple[int, float]] = (),
    kept_epoch: int | None = None,
) -> Figure:
    """Accuracy per distillation epoch against the teacher and pruned levels, and the baselines:
    each one a level, or its own curve per epoch when given as ``(epoch, accuracy)`` pairs. With
    ``holdout_agreement``, the data-free score the run judged itself by, on a second axis; ``kept_epoch`` marks
    the epoch it kept (0: the start)."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    last = epochs or (curve[-1][0] if curve else 1)
    ax.axhline(teacher, color="tab:green", linestyle="--", label=f"teacher {teacher:.1f}%")
    ax.axhline(pruned, color="tab:red", linestyle=":", label=f"pruned, no recovery {pruned:.1f}%")
    styles = {"noise": ("tab:gray", "same recipe on noise"), "real": ("tab:purple", "same recipe on real images")}
    for name, value in (baselines or {}).items():
        if value is None:
            continue
        color, label = styles[name]
        if isinstance(value, (int, float)):
            ax.axhline(value, color=color, linestyle="-.", linewidth=1, label=f"{label} {value:.1f}%")
        elif value:
            xs, ys = zip(*value)
            ax.plot(xs, ys, marker="s", markersize=2, linestyle="-.", color=color, label=f"{label} {ys[-1]:.1f}%")
    if curve:
        xs, ys = zip(*curve)
        ax.plot(xs, ys, marker="o", markersize=3, color="tab:blue", label=f"student on dreams {ys[-1]:.1f}%")
        kept = dict(curve).get(kept_epoch) if kept_epoch is not None else None
        if kept is not None:
            where = "the start" if kept_epoch == 0 else f"epoch {kept_epoch}"
            ax.plot(
                [kept_epoch],
                [kept],
                marker="*",
                markersize=13,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label=f"kept by held-out agreement: {where}",
            )
    if holdout_agreement:
        _holdout_axis(ax, holdout_agreement)
    ax.set_xlim(0, max(1, last))
    ax.set_xlabel("distillation epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _holdout_axis(ax: Any, holdout_agreement: Sequence[tuple[int, float]]) -> None:
    """The held-out agreement per epoch on a right-hand axis of ``ax`` (higher: decides more like the teacher)."""
    twin = ax.twinx()
    xs, ys = zip(*holdout_agreement)
    twin.plot(
        xs, ys, color="tab:orange", linewidth=1, linestyle="--", label="agreement with the teacher, held-out dreams"
    )
    twin.set_ylabel("held-out agreement (%, data-free)", color="tab:orange", fontsize=8)
    twin.tick_params(axis="y", colors="tab:orange", labelsize=7)
    twin.legend(loc="upper right", fontsize=7)


def sparsity_figure(layers: Sequence[LayerSparsity], title: str = "") -> Figure:
    """Bar chart of the fraction of weights removed (zeroed, or gone with their channels) in every prunable layer,
    in network order."""
    fig = Figure(figsize=(max(6.4, 0.22 * len(layers) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:orange" if r.kind == "Linear" else "tab:blue" for r in layers]
    ax.bar(range(len(layers)), [100 * r.sparsity for r in layers], color=colors)
    ax.set_xticks(range(len(layers)), [r.name for r in layers], rotation=90, fontsize=6)
    ax.set_ylim(0, 100)
    ax.set_ylabel("weights pruned (%)")
    total = sum(r.total for r in layers)
    overall = 100 * sum(r.removed for r in layers) / max(1, total)
    ax.set_title(title or f"Per-layer sparsity (overall {overall:.1f}% of {total:,} weights)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def result_figure(result: RecoveryResult, title: str = "Recovery by data-free distillation") -> Figure:
    """The curve of a finished run, every reference measured on the same curve subset; the baselines
    as curves per epoch when the run measured them."""
    refs = result.curve_references
    images = result.eval_info["curve_images"]
    baselines = {name: result.baseline_curves.get(name) or refs.get(name) for name in ("noise", "real")}
    return curves_figure(
        result.curve,
        refs["teacher"],
        refs["pruned"],
        baselines,
        subtitle=f"{result.teacher.arch}, {result.pruning}, accuracy on {images:,} test images",
        title=title,
        holdout_agreement=result.distilled.holdout_agreement,
        kept_epoch=result.distilled.kept_epoch,
    )


def dreams_figure(dreams: DreamSet, per_class: int = 8, title: str = "") -> Figure:
    """The dream grid with one labeled row per class."""
    grid = dreams.grid(per_class).permute(1, 2, 0).numpy()
    rows = len(dreams.classes)
    fig = Figure(figsize=(0.55 * per_class + 1.3, 0.55 * rows + 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    cell = grid.shape[0] / rows
    ax.set_yticks([cell * (r + 0.5) for r in range(rows)], dreams.classes, fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    default = f"{len(dreams):,} dreams, {dreams.steps} steps; teacher top-1 on them {dreams.teacher_top1:.0f}%"
    ax.set_title(title or default, fontsize=9)
    return fig


def dream_columns_figure(sets: Mapping[str, DreamSet], per_class: int = 2, title: str = "") -> Figure:
    """Several dream sets of the same classes side by side, one titled column each and one row per
    class: the same dreams at several steps, or the variants of an ablation."""
    rows = len(next(iter(sets.values())).classes)
    column = max(1.2, 0.55 * per_class + 0.25)  # inches: room for a two-line column title
    fig = Figure(figsize=(len(sets) * column + 1.3, 0.55 * rows + 1.0), layout="constrained")
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for i, (ax, (name, dreams)) in enumerate(zip(axes, sets.items())):
        grid = dreams.grid(per_class).permute(1, 2, 0).numpy()
        ax.imshow(grid, interpolation="nearest")
        cell = grid.shape[0] / rows
        ax.set_yticks([cell * (r + 0.5) for r in range(rows)], dreams.classes if i == 0 else [], fontsize=8)
        ax.set_xticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
