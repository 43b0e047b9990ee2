"""Channel importance: which ranking of channels recovers best, data-free.

The library ranks channels by their group L1 norm (Torch-Pruning's ``GroupMagnitudeImportance(p=1)``,
each layer's scores divided by their mean, :mod:`dfkd_core.channels`). This study swaps that ranking
for the other criteria Torch-Pruning offers and runs one channels.py row (by default ResNet-20, 50%
of the MACs removed, the default channel recipe: pruned gradually during distillation) with each:

    group-l1      the library's ranking (the row as channels.py runs it)
    group-l2      the group L2 norm, mean-normalized
    group-l1-max  the group L1 norm, each layer's scores divided by their maximum
    bn-scale      the BatchNorm scale |gamma| (network slimming), mean-normalized
    taylor        first-order Taylor |w * dL/dw| of the distillation loss, its gradients gathered on
                  8 batches of 32 dreams before each cut (data-free: dreams only)

The swap patches private functions of the library for the length of one row; nothing here is
part of the product.

Usage (from the repository root; writes importance.json and importance.md):

    python benchmarks/importance.py --shared ../shared --out benchmarks/results --dream-cache /tmp/dfkd-dreams
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import channels as bench  # benchmarks/channels.py: run as `python benchmarks/<script>.py`
import torch
import torch_pruning as tp
from recovery import machine
from tables import write_study

from dfkd_core import channels

distill = sys.modules["dfkd_core.distill"]  # the module (the package's `distill` is the function)

TAYLOR_BATCHES = 8  # dream batches whose loss gradients the Taylor score sums before each cut
TAYLOR_BATCH_SIZE = 32  # the distillation's batch size

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "group-l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, normalizer="mean"),
    "group-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2, normalizer="mean"),
    "group-l1-max": lambda: tp.importance.GroupMagnitudeImportance(p=1, normalizer="max"),
    "bn-scale": lambda: tp.importance.BNScaleImportance(normalizer="mean"),
    "taylor": lambda: tp.importance.GroupTaylorImportance(normalizer="mean"),
}


def _pruner_with(importance: Callable[[], tp.importance.Importance], gathered: list[bool] | None = None):
    """channels._pruner ranking by ``importance``. For Taylor, ``gathered[0]`` says whether gradients were
    gathered; until then (the first cut, before distillation) it ranks by the library's group L1."""

    def pruner(model, ratio, scope, example):
        waiting = gathered is not None and not gathered[0]
        chosen = IMPORTANCES["group-l1"]() if waiting else importance()
        return tp.pruner.BasePruner(
            model,
            example,
            importance=chosen,
            pruning_ratio=ratio,
            ignored_layers=channels._ignored_layers(model),
            global_pruning=scope != "layerwise",
            max_pruning_ratio=channels.MAX_LAYER_RATIO,
        )

    return pruner


def _removed_macs_keeping_gradients(model, ratio, scope, example, dense):
    """channels._removed_macs on a trial copy that keeps the gradients (a deep copy drops them)."""
    trial = copy.deepcopy(model)
    for original, copied in zip(model.parameters(), trial.parameters(), strict=True):
        copied.grad = None if original.grad is None else original.grad.clone()
    channels._prune_in_place(trial, ratio, scope, example)
    return 1 - channels.count_macs(trial, tuple(example.shape[1:])) / dense


def _epoch_gathering_gradients(original_epoch, gradients: list[bool]):
    """distill._epoch that first sums the distillation loss's gradients over a few dream batches when a cut is due."""

    def epoch(session, number):
        gradual = session.gradual
        if gradual is not None and gradual.sparsity_at(number) > gradual.measure(session.student):
            session.student.train()
            session.student.zero_grad()
            generator = torch.Generator().manual_seed(number)
            for _ in range(TAYLOR_BATCHES):
                batch = session.images[torch.randint(len(session.images), (TAYLOR_BATCH_SIZE,), generator=generator)]
                batch = distill.augment(
                    batch.to(session.device), session.config.crop_padding, session.config.flip, generator
                )
                distill._step_loss(session, batch).backward()
            gradients[0] = True
        return (yield from original_epoch(session, number))

    return epoch


@contextlib.contextmanager
def ranking(name: str) -> Iterator[None]:
    """Within the block, channel pruning ranks by ``name`` (one of :data:`IMPORTANCES`)."""
    saved = channels._pruner, channels._removed_macs, distill._epoch
    if name == "taylor":
        gradients = [False]
        channels._pruner = _pruner_with(IMPORTANCES[name], gradients)
        channels._removed_macs = _removed_macs_keeping_gradients
        distill._epoch = _epoch_gathering_gradients(distill._epoch, gradients)
    elif name != "group-l1":
        channels._pruner = _pruner_with(IMPORTANCES[name])
    try:
        yield
    finally:
        channels._pruner, channels._removed_macs, distill._epoch = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--row", default="resnet20-50-gradual", choices=list(bench.ROWS))
    parser.add_argument("--importances", nargs="+", default=list(IMPORTANCES), choices=list(IMPORTANCES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dream-cache", type=Path, help="keep the teacher's dreams here, and reuse them if present")
    args = parser.parse_args(argv)
    command = "python " + " ".join(["benchmarks/importance.py", *(argv if argv is not None else sys.argv[1:])])
    rows, dreams, started = [], {}, time.perf_counter()
    for name in args.importances:
        with ranking(name):
            result = bench._run_row(args.row, args, dreams)
        size = result.report()["size"]["recovered"]
        rows.append(
            {
                "importance": name,
                "pruned_acc": result.pruned_acc,
                "recovered_acc": result.recovered_acc,
                "params": size["params"],
                "macs": size["macs"],
                "distill_s": round(result.timings["distill"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"Channel importance, row `{args.row}` of channels.py; {machine()}; `{command}`",
        "",
        "| importance | params kept | MACs | pruned (first cut) | **recovered** | distill s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['importance']} | {r['params'] / 1e3:.0f}k | {r['macs'] / 1e6:.1f}M | {r['pruned_acc']:.2f} "
            f"| **{r['recovered_acc']:.2f}** | {r['distill_s']} |"
        )
    record = {"command": command, "machine": machine(), "wall_s": round(time.perf_counter() - started), "rows": rows}
    write_study(args.out, "importance", record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
